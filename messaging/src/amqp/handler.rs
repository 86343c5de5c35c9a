//! What a handler sees and answers: the delivered [`Message`], the
//! [`Handler`] trait and its verdict ([`HandleError`]), and the flag by
//! which the inbox reports a duplicate ([`note_duplicate`]).

use std::collections::BTreeMap;
use std::future::Future;

use lapin::types::AMQPValue;

use crate::classify::{Disposition, classify};
use crate::redelivery;

/// A delivered event, as the handler sees it.
#[derive(Debug, Clone)]
pub struct Message {
    /// The AMQP `message_id`: the outbox event id, the deduplication key.
    pub id: String,
    /// The AMQP `type`: the protobuf message name.
    pub event_type: String,
    /// The key the event was published with, also after a retry or replay
    /// (which travel by queue name).
    pub routing_key: String,
    pub payload: Vec<u8>,
    /// String-valued AMQP headers (e.g. `traceparent`).
    pub headers: BTreeMap<String, String>,
    pub redelivered: bool,
}

impl Message {
    pub(super) fn from_delivery(delivery: &lapin::message::Delivery) -> Result<Self, String> {
        let props = &delivery.properties;
        let id = props
            .message_id()
            .as_ref()
            .map(|s| s.as_str().to_owned())
            .filter(|s| !s.is_empty())
            .ok_or("message has no message_id")?;
        let event_type = props
            .kind()
            .as_ref()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default();
        let headers = props
            .headers()
            .as_ref()
            .map(|table| {
                table
                    .inner()
                    .iter()
                    .filter_map(|(k, v)| {
                        let value = match v {
                            AMQPValue::LongString(s) => {
                                String::from_utf8(s.as_bytes().to_vec()).ok()?
                            }
                            AMQPValue::ShortString(s) => s.as_str().to_owned(),
                            _ => return None,
                        };
                        Some((k.as_str().to_owned(), value))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            id,
            event_type,
            routing_key: redelivery::original_route(delivery).1,
            payload: delivery.data.clone(),
            headers,
            redelivered: delivery.redelivered,
        })
    }
}

/// Why a handler did not apply a message.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The message can never be applied (undecodable, unknown type): it is
    /// dead-lettered at once, the reason recorded.
    #[error("poison message: {0}")]
    Poison(String),
    /// Applying failed for a reason that may pass (database unavailable):
    /// the message comes back after a growing pause, and is dead-lettered
    /// once it has failed [`redelivery::RetryPolicy::max_attempts`] times.
    #[error("transient failure: {0:#}")]
    Transient(#[from] anyhow::Error),
}

impl HandleError {
    /// The verdict on a failed apply by the one classification
    /// ([`classify`]): data the database refuses is poison, dead-lettered
    /// at once with its class in the reason; anything else is transient.
    pub fn classified(error: anyhow::Error) -> Self {
        match classify(&error) {
            Disposition::Poison(class) => Self::Poison(format!(
                "the database rejects the event ({class}): {error:#}"
            )),
            Disposition::Transient => Self::Transient(error),
        }
    }
}

/// Applies one message. Returning `Ok` acknowledges it.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, message: Message) -> impl Future<Output = Result<(), HandleError>> + Send;
}

tokio::task_local! {
    /// Set by [`note_duplicate`] while a handler runs inside the consumer loop.
    static DUPLICATE: std::cell::Cell<bool>;
}

/// Runs `handling` with a fresh duplicate flag; returns its output and
/// whether the handler reported the message as already applied.
pub(super) async fn inbox_scope<F: Future>(handling: F) -> (F::Output, bool) {
    DUPLICATE
        .scope(std::cell::Cell::new(false), async move {
            let output = handling.await;
            (output, DUPLICATE.with(std::cell::Cell::get))
        })
        .await
}

/// Tells the consumer loop that the message being handled was applied
/// before, so it is counted as a duplicate rather than as processed.
/// [`crate::inbox::record`] calls this; outside a consumer it does nothing.
pub fn note_duplicate() {
    let _ = DUPLICATE.try_with(|d| d.set(true));
}
