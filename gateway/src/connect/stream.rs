//! The answer of a server-streaming call: each message in an envelope,
//! then the end-of-stream message.

use std::convert::Infallible;

use bytes::Bytes;
use futures::Stream;
use http::HeaderMap;
use prost_reflect::DescriptorPool;
use serde_json::{Map, Value};

use super::codec::{Codec, encode};
use super::{ConnectError, envelope, error};
use crate::rest::invoke::Frames;

/// The streamed answer: each message in an envelope, then the
/// end-of-stream message with the error (if the call failed) and the
/// trailers.
pub(super) fn messages(
    frames: Frames,
    codec: Codec,
    pool: DescriptorPool,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
    futures::stream::unfold(Some(frames), move |state| {
        let pool = pool.clone();
        async move {
            let mut frames = state?;
            let end = match frames.next_message().await {
                Some(Ok(message)) => match encode(&message, codec) {
                    Ok(payload) => {
                        return Some((Ok(envelope::encode(0, &payload)), Some(frames)));
                    }
                    Err(error) => end_of_stream(Some(&error), &HeaderMap::new(), &pool),
                },
                Some(Err(status)) => end_of_stream(
                    Some(&ConnectError::from_status(&status)),
                    &HeaderMap::new(),
                    &pool,
                ),
                None => match frames.finish() {
                    Ok(trailers) => end_of_stream(None, &trailers, &pool),
                    Err(status) => end_of_stream(
                        Some(&ConnectError::from_status(&status)),
                        &HeaderMap::new(),
                        &pool,
                    ),
                },
            };
            Some((Ok(end), None))
        }
    })
}

/// The end-of-stream envelope: `{"error": {..}, "metadata": {name: [values]}}`,
/// the metadata being the trailers (or the failed call's metadata).
pub(super) fn end_of_stream(
    error: Option<&ConnectError>,
    trailers: &HeaderMap,
    pool: &DescriptorPool,
) -> Bytes {
    let mut end = Map::new();
    let metadata = match error {
        Some(error) => {
            end.insert("error".into(), error.to_json(pool));
            (*error.metadata).clone()
        }
        None => error::metadata_headers(trailers),
    };
    let mut values: Map<String, Value> = Map::new();
    for (name, value) in &metadata {
        let Ok(value) = value.to_str() else { continue };
        if let Value::Array(list) = values
            .entry(name.as_str().to_owned())
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            list.push(Value::String(value.to_owned()));
        }
    }
    if !values.is_empty() {
        end.insert("metadata".into(), Value::Object(values));
    }
    let payload = serde_json::to_vec(&Value::Object(end)).expect("JSON serializes");
    envelope::encode(envelope::FLAG_END_STREAM, &payload)
}
