//! Retry, dead-letter and replay copies of a delivery: their properties,
//! bounded to fit one frame ([`bound_headers`]), and their confirmed
//! publication ([`publish_confirmed`]).

use std::collections::BTreeMap;

use anyhow::Context as _;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation};

use super::headers::*;

/// Bytes of a content-header frame besides the properties: the frame's
/// header and end octet (8), then class, weight, body size and property
/// flags (14).
const HEADER_FRAME_OVERHEAD: usize = 8 + 14;

/// What a failed delivery's copy should say about it.
#[derive(Debug, Clone)]
pub struct Failure<'a> {
    /// The work queue that failed it.
    pub queue: &'a str,
    /// Failed attempts, this one included.
    pub attempts: u32,
    pub error: &'a str,
    /// Set for a copy bound for the dead-letter queue.
    pub reason: Option<DeadLetterReason>,
}

/// The properties of a retry or dead-letter copy of `delivery`: its own,
/// persistent, with the failure recorded in the headers, all of it within
/// one frame of `frame_max` bytes (the connection's negotiated size).
pub fn failure_properties(
    delivery: &lapin::message::Delivery,
    failure: &Failure<'_>,
    frame_max: u32,
) -> BasicProperties {
    let (exchange, routing_key) = original_route(delivery);
    let mut headers = copied_headers(&delivery.properties);
    headers.remove(HEADER_REASON);
    let text = |s: &str| AMQPValue::LongString(s.into());
    let mut ours = BTreeMap::new();
    ours.insert(HEADER_QUEUE.into(), text(failure.queue));
    ours.insert(HEADER_EXCHANGE.into(), text(&exchange));
    ours.insert(HEADER_ROUTING_KEY.into(), text(&routing_key));
    ours.insert(
        HEADER_ATTEMPTS.into(),
        AMQPValue::LongLongInt(i64::from(failure.attempts)),
    );
    ours.insert(
        HEADER_ERROR.into(),
        text(truncate(failure.error, MAX_ERROR_LEN)),
    );
    ours.insert(HEADER_FAILED_AT.into(), text(&now_rfc3339()));
    if let Some(reason) = failure.reason {
        ours.insert(HEADER_REASON.into(), text(reason.as_str()));
    }
    bounded_properties(delivery, headers, ours, frame_max)
}

/// The properties of a message replayed from a dead-letter queue: its own,
/// persistent, with its original route kept, the attempt count and failure
/// details dropped, and the replay time recorded; within one frame of
/// [`crate::broker::FRAME_MAX`] bytes.
pub fn replay_properties(delivery: &lapin::message::Delivery, queue: &str) -> BasicProperties {
    let (exchange, routing_key) = original_route(delivery);
    let mut headers = copied_headers(&delivery.properties);
    for name in [
        HEADER_ATTEMPTS,
        HEADER_ERROR,
        HEADER_FAILED_AT,
        HEADER_REASON,
    ] {
        headers.remove(name);
    }
    let text = |s: &str| AMQPValue::LongString(s.into());
    let mut ours = BTreeMap::new();
    ours.insert(HEADER_QUEUE.into(), text(queue));
    ours.insert(HEADER_EXCHANGE.into(), text(&exchange));
    ours.insert(HEADER_ROUTING_KEY.into(), text(&routing_key));
    ours.insert(HEADER_REPLAYED_AT.into(), text(&now_rfc3339()));
    bounded_properties(delivery, headers, ours, crate::broker::FRAME_MAX)
}

/// `delivery`'s properties, persistent, with `copied` and `ours` as headers
/// bounded by [`bound_headers`] to fit one frame of `frame_max` bytes.
fn bounded_properties(
    delivery: &lapin::message::Delivery,
    copied: BTreeMap<ShortString, AMQPValue>,
    ours: BTreeMap<ShortString, AMQPValue>,
    frame_max: u32,
) -> BasicProperties {
    let properties = delivery.properties.clone().with_delivery_mode(2);
    let budget = header_budget(&properties, frame_max);
    let (headers, dropped) = bound_headers(copied, ours, budget);
    if dropped > 0 {
        tracing::warn!(
            message_id = ?properties.message_id().as_ref().map(ShortString::as_str),
            dropped,
            "left headers out of a copy to fit the frame"
        );
    }
    properties.with_headers(FieldTable::from(headers))
}

/// Bytes the header table may take in a content-header frame of
/// `frame_max` bytes beside the other properties of `properties`.
fn header_budget(properties: &BasicProperties, frame_max: u32) -> usize {
    let frame_max = if frame_max == 0 {
        usize::MAX
    } else {
        frame_max as usize
    };
    let short = |s: &Option<ShortString>| s.as_ref().map_or(0, |s| 1 + s.as_str().len());
    let others = [
        properties.content_type(),
        properties.content_encoding(),
        properties.correlation_id(),
        properties.reply_to(),
        properties.expiration(),
        properties.message_id(),
        properties.kind(),
        properties.user_id(),
        properties.app_id(),
        properties.cluster_id(),
    ]
    .into_iter()
    .map(short)
    .sum::<usize>()
        + usize::from(properties.delivery_mode().is_some())
        + usize::from(properties.priority().is_some())
        + properties.timestamp().map_or(0, |_| 8);
    frame_max.saturating_sub(HEADER_FRAME_OVERHEAD + others)
}

/// The headers of a copy: `ours` (written by the consumer, each bounded
/// where it is made) over `copied` (the message's own), so that the
/// encoded table takes at most `budget` bytes; returns them and how many
/// of `copied` were left out.
///
/// The `tracestate` is bounded as W3C allows
/// ([`ordermesh_runtime::propagation::bound_tracestate`]); any other copied header over
/// [`MAX_FOREIGN_HEADER_LEN`] is dropped; then, while the table is too
/// large, the largest copied header goes, the trace context last, and
/// finally the error text is cut. [`HEADER_DROPPED`] records the count
/// (added to an earlier copy's).
pub fn bound_headers(
    mut copied: BTreeMap<ShortString, AMQPValue>,
    ours: BTreeMap<ShortString, AMQPValue>,
    budget: usize,
) -> (BTreeMap<ShortString, AMQPValue>, usize) {
    use ordermesh_runtime::propagation::{TRACEPARENT, TRACESTATE, bound_tracestate};
    let before = copied.len();
    for name in ours.keys() {
        copied.remove(name);
    }
    // Counted before, by an earlier copy: the count goes on.
    let earlier = copied
        .remove(HEADER_DROPPED)
        .and_then(|v| value_text(&v))
        .and_then(|t| t.trim().parse::<i64>().ok())
        .unwrap_or(0)
        .max(0);
    let ours_count = before - copied.len();
    if let Some(state) = copied.get(TRACESTATE) {
        match value_text(state).as_deref().and_then(bound_tracestate) {
            Some(bounded) => {
                copied.insert(TRACESTATE.into(), AMQPValue::LongString(bounded.into()));
            }
            None => {
                copied.remove(TRACESTATE);
            }
        }
    }
    copied.retain(|k, v| entry_len(k, v) <= MAX_FOREIGN_HEADER_LEN);

    // The count's own entry is reserved whether or not it is needed.
    let count_len = entry_len(&HEADER_DROPPED.into(), &AMQPValue::LongLongInt(0));
    let ours_len: usize = ours.iter().map(|(k, v)| entry_len(k, v)).sum();
    let mut total =
        4 + count_len + ours_len + copied.iter().map(|(k, v)| entry_len(k, v)).sum::<usize>();
    while total > budget {
        let trace = |k: &ShortString| k.as_str() == TRACEPARENT || k.as_str() == TRACESTATE;
        let Some(name) = copied
            .iter()
            .max_by_key(|(k, v)| (!trace(k), entry_len(k, v)))
            .map(|(k, _)| k.clone())
        else {
            break;
        };
        let value = copied.remove(&name).expect("present");
        total -= entry_len(&name, &value);
    }
    let dropped = before - ours_count - copied.len();
    let mut headers = copied;
    headers.extend(ours);
    if total > budget {
        // Only ours left and still too large (a tiny frame): cut the error.
        let excess = total - budget;
        if let Some(error) = headers.get(HEADER_ERROR).and_then(value_text) {
            let cut = truncate(&error, error.len().saturating_sub(excess)).to_owned();
            headers.insert(HEADER_ERROR.into(), AMQPValue::LongString(cut.into()));
        }
    }
    let count = earlier.saturating_add(dropped as i64);
    if count > 0 {
        headers.insert(HEADER_DROPPED.into(), AMQPValue::LongLongInt(count));
    }
    (headers, dropped)
}

/// Encoded size of a header table entry: name and typed value.
fn entry_len(name: &ShortString, value: &AMQPValue) -> usize {
    1 + name.as_str().len() + value_len(value)
}

/// Encoded size of an AMQP field value, its type octet included.
fn value_len(value: &AMQPValue) -> usize {
    1 + match value {
        AMQPValue::Void => 0,
        AMQPValue::Boolean(_) | AMQPValue::ShortShortInt(_) | AMQPValue::ShortShortUInt(_) => 1,
        AMQPValue::ShortInt(_) | AMQPValue::ShortUInt(_) => 2,
        AMQPValue::LongInt(_) | AMQPValue::LongUInt(_) | AMQPValue::Float(_) => 4,
        AMQPValue::DecimalValue(_) => 5,
        AMQPValue::LongLongInt(_) | AMQPValue::Double(_) | AMQPValue::Timestamp(_) => 8,
        AMQPValue::ShortString(s) => 1 + s.as_str().len(),
        AMQPValue::LongString(s) => 4 + s.as_bytes().len(),
        AMQPValue::ByteArray(a) => 4 + a.len(),
        AMQPValue::FieldArray(a) => 4 + a.as_slice().iter().map(value_len).sum::<usize>(),
        AMQPValue::FieldTable(t) => {
            4 + t
                .inner()
                .iter()
                .map(|(k, v)| entry_len(k, v))
                .sum::<usize>()
        }
    }
}

fn copied_headers(properties: &BasicProperties) -> BTreeMap<ShortString, AMQPValue> {
    let mut headers = properties
        .headers()
        .as_ref()
        .map(|h| h.inner().clone())
        .unwrap_or_default();
    for name in BROKER_DEATH_HEADERS {
        headers.remove(*name);
    }
    headers
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `s` cut to at most `max` bytes on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Publishes `payload` straight to `queue` (default exchange, mandatory)
/// and waits for the broker's confirm. `channel` must be in confirm mode.
/// An error means the broker did not take the message.
pub async fn publish_confirmed(
    channel: &Channel,
    queue: &str,
    payload: &[u8],
    properties: BasicProperties,
) -> anyhow::Result<()> {
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            payload,
            properties,
        )
        .await
        .with_context(|| format!("publish to {queue}"))?;
    match confirm
        .await
        .with_context(|| format!("await the confirm from {queue}"))?
    {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(returned)) => anyhow::bail!(
            "{queue} does not exist: the broker returned the message ({})",
            returned.reply_text
        ),
        Confirmation::Nack(_) => anyhow::bail!("the broker refused the message for {queue}"),
        Confirmation::NotRequested => anyhow::bail!("the channel is not in confirm mode"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_len(headers: &BTreeMap<ShortString, AMQPValue>) -> usize {
        4 + headers.iter().map(|(k, v)| entry_len(k, v)).sum::<usize>()
    }

    fn long(s: impl Into<String>) -> AMQPValue {
        AMQPValue::LongString(s.into().into())
    }

    fn ours(error: &str) -> BTreeMap<ShortString, AMQPValue> {
        BTreeMap::from([
            (HEADER_QUEUE.into(), long("q")),
            (HEADER_ATTEMPTS.into(), AMQPValue::LongLongInt(2)),
            (HEADER_ERROR.into(), long(truncate(error, MAX_ERROR_LEN))),
        ])
    }

    fn text_of(headers: &BTreeMap<ShortString, AMQPValue>, name: &str) -> Option<String> {
        headers.get(name).and_then(value_text)
    }

    #[test]
    fn a_copy_of_a_message_with_huge_headers_fits_its_frame() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let hostile_state: Vec<String> = (0..32)
            .map(|i| format!("{:a<256}={:v<256}", format!("k{i:02}"), i))
            .collect();
        let mut copied = BTreeMap::from([
            ("traceparent".into(), long(parent)),
            ("tracestate".into(), long(hostile_state.join(","))),
            ("x-huge".into(), long("h".repeat(20_000))),
            ("x-small".into(), AMQPValue::LongInt(7)),
            // Stale, replaced by ours.
            (HEADER_ERROR.into(), long("e".repeat(5_000))),
        ]);
        for i in 0..20 {
            copied.insert(format!("x-mid-{i:02}").into(), long("m".repeat(900)));
        }
        let error = "é".repeat(100_000);
        let properties = BasicProperties::default()
            .with_message_id("m-1".into())
            .with_type("test.Event".into())
            .with_delivery_mode(2);
        let budget = header_budget(&properties, crate::broker::FRAME_MAX);
        assert!(budget < crate::broker::FRAME_MAX as usize);
        let (headers, dropped) = bound_headers(copied, ours(&error), budget);

        assert!(
            table_len(&headers) <= budget,
            "{} > {budget}",
            table_len(&headers)
        );
        let kept_error = text_of(&headers, HEADER_ERROR).unwrap();
        assert!(kept_error.len() <= MAX_ERROR_LEN && kept_error.len() >= MAX_ERROR_LEN - 1);
        assert!(kept_error.chars().all(|c| c == 'é'));
        assert_eq!(text_of(&headers, "traceparent").as_deref(), Some(parent));
        assert!(
            !headers.contains_key("tracestate"),
            "no member fits 512 bytes"
        );
        assert!(!headers.contains_key("x-huge"));
        assert_eq!(text_of(&headers, "x-small").as_deref(), Some("7"));
        let mids = headers
            .keys()
            .filter(|k| k.as_str().starts_with("x-mid-"))
            .count();
        assert!(0 < mids && mids < 20, "{mids} of the 900-byte headers kept");
        // tracestate, x-huge and the mids that did not fit.
        assert_eq!(dropped, 2 + (20 - mids));
        assert_eq!(text_of(&headers, HEADER_DROPPED), Some(dropped.to_string()));
    }

    #[test]
    fn trace_context_goes_last_and_then_the_error_is_cut() {
        let copied = BTreeMap::from([
            (
                "traceparent".into(),
                long("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ),
            ("tracestate".into(), long("a=1,b=2")),
            ("x-other".into(), long("o".repeat(100))),
        ]);
        let error = "x".repeat(MAX_ERROR_LEN);
        let all = table_len(&ours(&error)) + 200;
        let (headers, dropped) = bound_headers(copied.clone(), ours(&error), all);
        assert_eq!(dropped, 1, "{headers:?}");
        assert!(headers.contains_key("traceparent") && headers.contains_key("tracestate"));
        assert_eq!(text_of(&headers, "tracestate").as_deref(), Some("a=1,b=2"));
        assert!(table_len(&headers) <= all);

        let tiny = 300;
        let (headers, dropped) = bound_headers(copied, ours(&error), tiny);
        assert_eq!(dropped, 3);
        assert!(table_len(&headers) <= tiny, "{}", table_len(&headers));
        assert!(text_of(&headers, HEADER_ERROR).unwrap().len() < 200);
        assert_eq!(text_of(&headers, HEADER_ATTEMPTS).as_deref(), Some("2"));
    }

    #[test]
    fn the_dropped_count_adds_up_over_copies_and_a_malformed_tracestate_goes() {
        let copied = BTreeMap::from([
            (HEADER_DROPPED.into(), AMQPValue::LongLongInt(3)),
            ("tracestate".into(), long("Bad Member")),
            ("x-ok".into(), long("fine")),
        ]);
        let (headers, dropped) = bound_headers(copied, ours("boom"), 16_000);
        assert_eq!(dropped, 1);
        assert_eq!(text_of(&headers, HEADER_DROPPED).as_deref(), Some("4"));
        assert!(!headers.contains_key("tracestate"));
        assert_eq!(text_of(&headers, "x-ok").as_deref(), Some("fine"));

        let (headers, dropped) = bound_headers(BTreeMap::new(), ours("boom"), 16_000);
        assert_eq!(dropped, 0);
        assert!(!headers.contains_key(HEADER_DROPPED));
    }

    #[test]
    fn error_text_is_cut_on_a_character_boundary() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("aé", 2), "a");
    }
}
