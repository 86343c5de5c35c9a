//! Server-streaming rules: newline-delimited JSON, or server-sent events
//! when `Accept` asks for `text/event-stream` (one `data:` event per
//! message, a final `event: error` with the `google.rpc.Status` if the
//! stream fails, and a comment line while it is idle).

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE, VARY};
use http::{HeaderMap, HeaderValue};
use prost_reflect::DescriptorPool;

use super::errors::RestError;
use super::http_rule::Binding;
use super::invoke::Frames;
use super::json;

/// The media type of server-sent events, which `Accept` may ask for on a
/// server-streaming rule.
pub const EVENT_STREAM: &str = "text/event-stream";

/// The answer to a server-streaming call that has started: `headers` is
/// its response metadata, `frames` its messages. Waits for the first
/// message, so a call that fails at once gets its own HTTP status rather
/// than a 200 with an error line.
pub(super) async fn respond(
    mut frames: Frames,
    headers: HeaderMap,
    binding: &Binding,
    pool: &DescriptorPool,
    sse: bool,
    keepalive: Duration,
) -> Result<Response, RestError> {
    let first = match frames.next_message().await {
        Some(Ok(m)) => m,
        Some(Err(s)) => return Err(RestError::from_status(&s, pool)),
        None => {
            frames
                .finish()
                .map_err(|s| RestError::from_status(&s, pool))?;
            return Ok(streaming(Body::empty(), headers, sse));
        }
    };
    let binding = binding.clone();
    let pool = pool.clone();
    // Each message as JSON, or the failure as a `google.rpc.Status` body.
    let rendered = futures::stream::once(async { Ok(first) })
        .chain(frames.into_stream())
        .map(move |item| {
            item.map_err(|s| RestError::from_status(&s, &pool))
                .and_then(|m| json::response_json(&binding, &m))
                .map_err(|err| err.body_bytes())
        });
    let body = if sse {
        event_stream_body(rendered, keepalive)
    } else {
        ndjson_body(rendered)
    };
    Ok(streaming(body, headers, sse))
}

/// Server-sent events: a `data:` event per message, `event: error` for a
/// failure, keep-alive comments every `keepalive` while idle.
fn event_stream_body<S>(rendered: S, keepalive: Duration) -> Body
where
    S: Stream<Item = Result<Vec<u8>, Vec<u8>>> + Send + 'static,
{
    let events = rendered.map(|item| match item {
        Ok(result) => sse_event(None, &result),
        Err(status) => sse_event(Some("error"), &status),
    });
    Body::from_stream(with_keepalive(events, keepalive).map(Ok::<_, Infallible>))
}

/// Newline-delimited JSON: `{"result":...}` per message, `{"error":...}`
/// for a failure.
fn ndjson_body<S>(rendered: S) -> Body
where
    S: Stream<Item = Result<Vec<u8>, Vec<u8>>> + Send + 'static,
{
    Body::from_stream(rendered.map(|item| {
        let (key, body) = match item {
            Ok(result) => (&b"{\"result\":"[..], result),
            Err(status) => (&b"{\"error\":"[..], status),
        };
        let mut line = Vec::with_capacity(key.len() + body.len() + 2);
        line.extend_from_slice(key);
        line.extend_from_slice(&body);
        line.extend_from_slice(b"}\n");
        Ok::<_, Infallible>(Bytes::from(line))
    }))
}

/// A streaming answer with the response metadata: server-sent events or
/// (the default) newline-delimited JSON.
fn streaming(body: Body, metadata: HeaderMap, sse: bool) -> Response {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.extend(metadata);
    headers.insert(VARY, HeaderValue::from_static("accept"));
    if sse {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(EVENT_STREAM));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    } else {
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
    }
    response
}

/// True when `Accept` asks for server-sent events: it lists
/// `text/event-stream` with a q-value above that of NDJSON (wildcards
/// never choose SSE, so NDJSON stays the default).
pub fn wants_event_stream(headers: &HeaderMap) -> bool {
    let mut sse = 0.0_f32;
    let mut ndjson = 0.0_f32;
    for value in headers.get_all(ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for range in value.split(',') {
            let mut params = range.split(';');
            let media = params.next().unwrap_or_default().trim();
            let q = params
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            if media.eq_ignore_ascii_case(EVENT_STREAM) {
                sse = sse.max(q);
            } else if media.eq_ignore_ascii_case("application/x-ndjson") {
                ndjson = ndjson.max(q);
            }
        }
    }
    sse > 0.0 && sse > ndjson
}

/// One server-sent event: an optional `event:` name and the data, which is
/// one line (serialized JSON escapes line breaks).
fn sse_event(event: Option<&str>, data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + 32);
    if let Some(event) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(event.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// `events`, with a comment line (`: keep-alive`) whenever none came for
/// `every`.
fn with_keepalive<S>(events: S, every: Duration) -> impl futures::Stream<Item = Bytes> + Send
where
    S: futures::Stream<Item = Bytes> + Send + 'static,
{
    futures::stream::unfold(Box::pin(events), move |mut events| async move {
        // Dropping `next()` on a timeout loses nothing: the stream keeps
        // its place.
        match tokio::time::timeout(every, events.next()).await {
            Ok(Some(event)) => Some((event, events)),
            Ok(None) => None,
            Err(_) => Some((Bytes::from_static(b": keep-alive\n\n"), events)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_chooses_event_streams_only_when_named() {
        let accept = |v: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(ACCEPT, HeaderValue::from_str(v).unwrap());
            wants_event_stream(&headers)
        };
        assert!(!wants_event_stream(&HeaderMap::new()));
        assert!(accept("text/event-stream"));
        assert!(accept("Text/Event-Stream"));
        assert!(accept("application/json, text/event-stream;q=0.5"));
        assert!(accept("application/x-ndjson;q=0.2, text/event-stream"));
        assert!(!accept("*/*"));
        assert!(!accept("text/*"));
        assert!(!accept("application/x-ndjson"));
        assert!(!accept("text/event-stream;q=0"));
        assert!(!accept("text/event-stream;q=0.5, application/x-ndjson"));
        assert!(!accept("text/event-stream, application/x-ndjson"));
    }

    #[test]
    fn events_are_one_data_line_with_an_optional_name() {
        assert_eq!(sse_event(None, br#"{"n":1}"#), "data: {\"n\":1}\n\n");
        assert_eq!(
            sse_event(Some("error"), br#"{"code":14}"#),
            "event: error\ndata: {\"code\":14}\n\n"
        );
    }

    /// The next item of `events` that is not a keep-alive comment, and how
    /// many comments came before it.
    async fn next_event<S: futures::Stream<Item = Bytes> + Unpin>(
        events: &mut S,
    ) -> (usize, Option<Bytes>) {
        let mut comments = 0;
        loop {
            let item = tokio::time::timeout(Duration::from_secs(10), events.next())
                .await
                .expect("an item or the end within 10 s");
            match item {
                Some(item) if item == ": keep-alive\n\n" => comments += 1,
                other => return (comments, other),
            }
        }
    }

    #[tokio::test]
    async fn idle_event_streams_get_keepalive_comments() {
        let (tx, rx) = futures::channel::mpsc::unbounded::<Bytes>();
        let mut events = Box::pin(with_keepalive(rx, Duration::from_millis(20)));
        tx.unbounded_send(Bytes::from_static(b"data: 1\n\n"))
            .unwrap();
        let (_, first) = next_event(&mut events).await;
        assert_eq!(first.unwrap(), "data: 1\n\n");
        // Idle: comments until the next event.
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            tx.unbounded_send(Bytes::from_static(b"data: 2\n\n"))
                .unwrap();
        });
        let (comments, second) = next_event(&mut events).await;
        assert!(comments >= 1, "no keep-alive while idle");
        assert_eq!(second.unwrap(), "data: 2\n\n");
        sender.await.unwrap();
        // The sender is gone: the stream ends.
        assert_eq!(next_event(&mut events).await.1, None);
    }
}
