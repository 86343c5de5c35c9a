//! The `ordermesh-*` headers a retry or dead-letter copy carries, and how
//! to read a delivery's history back: its failed attempts and the route it
//! was first published with.

use std::collections::BTreeMap;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

/// Failed handler attempts so far (an integer): set on retry and
/// dead-letter copies, removed by a replay.
pub const HEADER_ATTEMPTS: &str = "ordermesh-attempts";
/// The last failure's error text, cut to [`MAX_ERROR_LEN`] bytes.
pub const HEADER_ERROR: &str = "ordermesh-error";
/// When the last attempt failed (RFC 3339, UTC).
pub const HEADER_FAILED_AT: &str = "ordermesh-failed-at";
/// Why a message was parked: a [`DeadLetterReason`].
pub const HEADER_REASON: &str = "ordermesh-dead-letter-reason";
/// The work queue that failed to process the message.
pub const HEADER_QUEUE: &str = "ordermesh-original-queue";
/// The exchange and routing key the message was first published with. The
/// copies travel through the default exchange, keyed by queue name, so the
/// consumer restores the event's routing key from here.
pub const HEADER_EXCHANGE: &str = "ordermesh-original-exchange";
pub const HEADER_ROUTING_KEY: &str = "ordermesh-original-routing-key";
/// When the message was last replayed from the dead-letter queue.
pub const HEADER_REPLAYED_AT: &str = "ordermesh-replayed-at";
/// The broker's own dead-letter history. Not copied: each copy is a new
/// publish, and its history is in the headers above.
pub(super) const BROKER_DEATH_HEADERS: &[&str] = &[
    "x-death",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-first-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
    "x-last-death-exchange",
];
/// Error text kept in [`HEADER_ERROR`]: all properties must fit in one
/// frame ([`crate::broker::FRAME_MAX`]).
pub const MAX_ERROR_LEN: usize = 1024;
/// How many of the message's own headers a copy left out to fit its frame
/// (an integer; absent when none was).
pub const HEADER_DROPPED: &str = "ordermesh-dropped-headers";
/// Largest header (name and encoded value) copied from a message when
/// ordermesh did not write it; larger ones are dropped.
pub const MAX_FOREIGN_HEADER_LEN: usize = 1024;

/// Why a message went to the dead-letter queue ([`HEADER_REASON`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// The handler said it can never be applied.
    Poison,
    /// It failed transiently on every allowed attempt.
    MaxAttempts,
    /// It has no `message_id`, so it cannot be deduplicated.
    NoMessageId,
}

impl DeadLetterReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Poison => "poison",
            Self::MaxAttempts => "max-attempts",
            Self::NoMessageId => "no-message-id",
        }
    }
}

/// A header as text: strings as they are, numbers formatted.
pub fn header_text(headers: &FieldTable, name: &str) -> Option<String> {
    headers.inner().get(name).and_then(value_text)
}

/// An AMQP value as text, for strings, numbers and booleans.
pub fn value_text(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        AMQPValue::Float(n) => n.to_string(),
        AMQPValue::Double(n) => n.to_string(),
        _ => return None,
    })
}

/// A message's headers as text ([`value_text`]), without those that have
/// none (tables, arrays, bytes): for inspecting parked messages, and tests.
pub fn header_texts(properties: &BasicProperties) -> BTreeMap<String, String> {
    properties
        .headers()
        .as_ref()
        .map(|h| {
            h.inner()
                .iter()
                .filter_map(|(k, v)| Some((k.as_str().to_owned(), value_text(v)?)))
                .collect()
        })
        .unwrap_or_default()
}

/// Failed attempts recorded on a message ([`HEADER_ATTEMPTS`]); 0 when none.
pub fn attempts(properties: &BasicProperties) -> u32 {
    properties
        .headers()
        .as_ref()
        .and_then(|h| header_text(h, HEADER_ATTEMPTS))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// The exchange and routing key a delivery was first published with: from
/// our headers, else from the broker's `x-death` history (a message the
/// broker dead-lettered itself), else the delivery's own.
pub fn original_route(delivery: &lapin::message::Delivery) -> (String, String) {
    let headers = delivery.properties.headers().clone().unwrap_or_default();
    let death = oldest_death(&headers);
    let exchange = header_text(&headers, HEADER_EXCHANGE)
        .or_else(|| death.and_then(|d| header_text(d, "exchange")))
        .unwrap_or_else(|| delivery.exchange.as_str().to_owned());
    let routing_key = header_text(&headers, HEADER_ROUTING_KEY)
        .or_else(|| {
            death.and_then(|d| match d.inner().get("routing-keys") {
                Some(AMQPValue::FieldArray(keys)) => keys.as_slice().first().and_then(value_text),
                _ => None,
            })
        })
        .unwrap_or_else(|| delivery.routing_key.as_str().to_owned());
    (exchange, routing_key)
}

/// The first (oldest) entry of `x-death`, which the broker keeps newest first.
fn oldest_death(headers: &FieldTable) -> Option<&FieldTable> {
    match headers.inner().get("x-death") {
        Some(AMQPValue::FieldArray(deaths)) => {
            deaths.as_slice().iter().rev().find_map(|d| match d {
                AMQPValue::FieldTable(t) => Some(t),
                _ => None,
            })
        }
        _ => None,
    }
}
