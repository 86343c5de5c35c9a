//! Retries and dead letters for the consumer loop ([`crate::amqp`]).
//!
//! A transient failure is retried after a growing delay: the consumer
//! publishes a copy of the message to the retry queue of that delay,
//! `<queue>.retry.<ms>ms`, whose queue-level TTL is the delay and whose dead
//! letters go back to the work queue through the default exchange. There is
//! one queue per delay because a per-message TTL only expires at the head of
//! a queue; naming it by its delay means a changed policy declares new
//! queues instead of failing on the old ones' arguments. After
//! [`RetryPolicy::max_attempts`] failures, or at once for a poison message,
//! the copy goes to `<queue>.dlq` instead. Each copy records its history in
//! `ordermesh-*` headers ([`HEADER_ATTEMPTS`] and the others below).
//!
//! The broker must confirm a copy before the original is acknowledged: a
//! crash in between delivers the original again (at worst a duplicate,
//! which the inbox absorbs), never loses it.
//!
//! A copy's properties must fit in one frame of the connection, or the
//! broker closes it and the message comes back for ever. So every header a
//! copy carries is bounded ([`bound_headers`]): the error text is cut, the
//! trace context bounded as W3C allows, foreign headers over
//! [`MAX_FOREIGN_HEADER_LEN`] dropped, and while the whole still does not
//! fit the largest foreign ones go first; [`HEADER_DROPPED`] counts them.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation};

use crate::amqp::{BrokerConfig, QueueType};
use crate::config::{self, ConfigError, Env};

pub const ENV_MAX_ATTEMPTS: &str = "AMQP_MAX_ATTEMPTS";
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
pub const ENV_RETRY_BASE_MS: &str = "AMQP_RETRY_BASE_MS";
pub const DEFAULT_RETRY_BASE: Duration = Duration::from_secs(1);
pub const ENV_RETRY_MAX_MS: &str = "AMQP_RETRY_MAX_MS";
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(60);
/// Most attempts a policy may allow.
pub const MAX_ATTEMPTS_LIMIT: u32 = 100;
/// Longest delay: RabbitMQ's `x-message-ttl` is a signed 32-bit count of ms.
pub const MAX_DELAY: Duration = Duration::from_millis(i32::MAX as u64);

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
const BROKER_DEATH_HEADERS: &[&str] = &[
    "x-death",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-first-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
    "x-last-death-exchange",
];
/// Error text kept in [`HEADER_ERROR`]: all properties must fit in one
/// frame ([`crate::amqp::FRAME_MAX`]).
pub const MAX_ERROR_LEN: usize = 1024;
/// How many of the message's own headers a copy left out to fit its frame
/// (an integer; absent when none was).
pub const HEADER_DROPPED: &str = "ordermesh-dropped-headers";
/// Largest header (name and encoded value) copied from a message when
/// ordermesh did not write it; larger ones are dropped.
pub const MAX_FOREIGN_HEADER_LEN: usize = 1024;
/// Bytes of a content-header frame besides the properties: the frame's
/// header and end octet (8), then class, weight, body size and property
/// flags (14).
const HEADER_FRAME_OVERHEAD: usize = 8 + 14;

/// How often, and after what pauses, a transiently failing message is
/// tried again before it is parked in the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Handler runs a message gets, the first included (1: no retries).
    pub max_attempts: u32,
    /// Pause after the first failure; it doubles after each further one.
    pub base_delay: Duration,
    /// Cap on the pause.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            base_delay: DEFAULT_RETRY_BASE,
            max_delay: DEFAULT_RETRY_MAX,
        }
    }
}

impl RetryPolicy {
    /// Reads `AMQP_MAX_ATTEMPTS`, `AMQP_RETRY_BASE_MS` and `AMQP_RETRY_MAX_MS`.
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        let max_attempts = config::parse(env, ENV_MAX_ATTEMPTS, DEFAULT_MAX_ATTEMPTS)?;
        if !(1..=MAX_ATTEMPTS_LIMIT).contains(&max_attempts) {
            return Err(config::invalid(
                ENV_MAX_ATTEMPTS,
                max_attempts,
                format!("must be between 1 and {MAX_ATTEMPTS_LIMIT}"),
            ));
        }
        let base_delay = config::millis(env, ENV_RETRY_BASE_MS, DEFAULT_RETRY_BASE)?;
        if base_delay.is_zero() || base_delay > MAX_DELAY {
            return Err(config::invalid(
                ENV_RETRY_BASE_MS,
                base_delay.as_millis(),
                format!("must be between 1 and {}", MAX_DELAY.as_millis()),
            ));
        }
        let max_delay = config::millis(env, ENV_RETRY_MAX_MS, DEFAULT_RETRY_MAX.max(base_delay))?;
        if max_delay < base_delay || max_delay > MAX_DELAY {
            return Err(config::invalid(
                ENV_RETRY_MAX_MS,
                max_delay.as_millis(),
                format!(
                    "must be between {ENV_RETRY_BASE_MS} ({}) and {}",
                    base_delay.as_millis(),
                    MAX_DELAY.as_millis()
                ),
            ));
        }
        Ok(Self {
            max_attempts,
            base_delay,
            max_delay,
        })
    }

    /// The pause after the `attempt`-th failure (1-based): the base delay
    /// doubled `attempt - 1` times, at most the maximum.
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let factor = 1u64
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u64::MAX);
        let ms = (self.base_delay.as_millis() as u64).saturating_mul(factor);
        Duration::from_millis(ms).min(self.max_delay)
    }

    /// The distinct pauses a message can wait, shortest first: one retry
    /// queue each.
    pub fn delays(&self) -> Vec<Duration> {
        let mut delays: Vec<Duration> = (1..self.max_attempts)
            .map(|a| self.delay_after(a))
            .collect();
        delays.dedup();
        delays
    }
}

/// Name of the retry queue of `queue` that holds messages for `delay`.
pub fn retry_queue(queue: &str, delay: Duration) -> String {
    format!("{queue}.retry.{}ms", delay.as_millis())
}

/// Declares the retry queues of `queue` under `policy` (idempotent): each
/// holds messages for its delay, then dead-letters them through the default
/// exchange back to `queue`.
pub async fn declare_retry_queues(
    channel: &Channel,
    config: &BrokerConfig,
    queue: &str,
    policy: &RetryPolicy,
) -> lapin::Result<()> {
    for delay in policy.delays() {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(config.queue_type.as_str().into()),
        );
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongInt(delay.as_millis().min(MAX_DELAY.as_millis()) as i32),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(queue.into()),
        );
        if config.queue_type == QueueType::Quorum {
            // Quorum queues dead-letter at most once unless told otherwise.
            args.insert(
                "x-dead-letter-strategy".into(),
                AMQPValue::LongString("at-least-once".into()),
            );
            args.insert(
                "x-overflow".into(),
                AMQPValue::LongString("reject-publish".into()),
            );
        }
        channel
            .queue_declare(
                retry_queue(queue, delay).into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await?;
    }
    Ok(())
}

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
/// [`crate::amqp::FRAME_MAX`] bytes.
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
    bounded_properties(delivery, headers, ours, crate::amqp::FRAME_MAX)
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
/// ([`crate::propagation::bound_tracestate`]); any other copied header over
/// [`MAX_FOREIGN_HEADER_LEN`] is dropped; then, while the table is too
/// large, the largest copied header goes, the trace context last, and
/// finally the error text is cut. [`HEADER_DROPPED`] records the count
/// (added to an earlier copy's).
pub fn bound_headers(
    mut copied: BTreeMap<ShortString, AMQPValue>,
    ours: BTreeMap<ShortString, AMQPValue>,
    budget: usize,
) -> (BTreeMap<ShortString, AMQPValue>, usize) {
    use crate::propagation::{TRACEPARENT, TRACESTATE, bound_tracestate};
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
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&'static str, &str)]) -> HashMap<&'static str, String> {
        pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn defaults_are_five_attempts_from_one_second_doubling() {
        let p = RetryPolicy::from_env(&env(&[])).unwrap();
        assert_eq!(p, RetryPolicy::default());
        assert_eq!(p.delays(), [ms(1000), ms(2000), ms(4000), ms(8000)]);
    }

    #[test]
    fn delays_double_up_to_the_cap_and_share_queues_there() {
        let p = RetryPolicy::from_env(&env(&[
            (ENV_MAX_ATTEMPTS, "8"),
            (ENV_RETRY_BASE_MS, "100"),
            (ENV_RETRY_MAX_MS, "500"),
        ]))
        .unwrap();
        let each: Vec<_> = (1..8).map(|a| p.delay_after(a)).collect();
        assert_eq!(
            each,
            [
                ms(100),
                ms(200),
                ms(400),
                ms(500),
                ms(500),
                ms(500),
                ms(500)
            ]
        );
        assert_eq!(p.delays(), [ms(100), ms(200), ms(400), ms(500)]);
        assert_eq!(p.delay_after(200), ms(500), "no overflow");
        assert_eq!(retry_queue("q", ms(400)), "q.retry.400ms");
    }

    #[test]
    fn one_attempt_means_no_retry_queues() {
        let p = RetryPolicy::from_env(&env(&[(ENV_MAX_ATTEMPTS, "1")])).unwrap();
        assert!(p.delays().is_empty());
    }

    #[test]
    fn a_base_above_the_default_cap_raises_the_cap() {
        let p = RetryPolicy::from_env(&env(&[(ENV_RETRY_BASE_MS, "120000")])).unwrap();
        assert_eq!(p.max_delay, ms(120_000));
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, pairs) in [
            (ENV_MAX_ATTEMPTS, vec![(ENV_MAX_ATTEMPTS, "0")]),
            (ENV_MAX_ATTEMPTS, vec![(ENV_MAX_ATTEMPTS, "many")]),
            (ENV_MAX_ATTEMPTS, vec![(ENV_MAX_ATTEMPTS, "101")]),
            (ENV_RETRY_BASE_MS, vec![(ENV_RETRY_BASE_MS, "0")]),
            (ENV_RETRY_BASE_MS, vec![(ENV_RETRY_BASE_MS, "-1")]),
            (ENV_RETRY_MAX_MS, vec![(ENV_RETRY_MAX_MS, "10")]),
            (ENV_RETRY_MAX_MS, vec![(ENV_RETRY_MAX_MS, "99999999999")]),
        ] {
            let err = RetryPolicy::from_env(&env(&pairs)).unwrap_err();
            assert!(err.to_string().contains(var), "{pairs:?}: {err}");
        }
    }

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
        let budget = header_budget(&properties, crate::amqp::FRAME_MAX);
        assert!(budget < crate::amqp::FRAME_MAX as usize);
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
