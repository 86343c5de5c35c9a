//! Publishing outbox rows to RabbitMQ with publisher confirms. A batch is
//! pipelined: every message is sent, then all confirms are awaited together,
//! so a batch costs one round trip, not one per message.
//!
//! Each row gets a producer span `<exchange> publish`, a child of the trace
//! context stored in the row's headers, lasting until its confirm; the
//! message carries that span's `traceparent`, so the consumer continues the
//! trace from the publish.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Context;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use ordermesh_messaging::amqp::{self, BrokerConfig};
use ordermesh_messaging::outbox::CONTENT_TYPE_PROTOBUF;
use ordermesh_runtime::metrics::RELAY_CONFIRM_DURATION;
use ordermesh_runtime::propagation;
use tracing::field::Empty;

use crate::store::OutboxRow;

/// Longest wait for the broker to acknowledge a close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// A connection with a confirm-mode channel.
pub struct Publisher {
    connection: Connection,
    channel: Channel,
    exchange: String,
    limits: Limits,
}

/// What the broker accepts in one message. A message whose properties do
/// not fit in one frame makes RabbitMQ close the whole connection, and the
/// batch with it, so such a row is refused before anything is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The frame size negotiated for this connection: the content header
    /// (all properties and headers) must fit in one frame.
    pub frame_max: u32,
    /// The broker's `max_message_size` (not negotiated in AMQP 0-9-1, so
    /// configured: `RELAY_MAX_MESSAGE_BYTES`).
    pub max_message_bytes: usize,
}

/// What became of each row of a batch, in batch order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Confirmed and routed to at least one queue.
    Confirmed,
    /// Confirmed but no queue is bound for the routing key yet.
    Unroutable,
    /// The broker refused it.
    Nacked,
    /// Not sent: the broker could never take it (the reason says why).
    Unpublishable(String),
    /// Not sent: an earlier row of its aggregate is parked or unpublishable,
    /// and this one must not overtake it.
    Held,
}

impl Publisher {
    /// Connects once, within `timeout`, declares the exchanges and enables
    /// confirms. The caller retries: a relay that cannot reach the broker
    /// has to notice, to hand its partitions over.
    pub async fn connect(
        config: &BrokerConfig,
        name: &str,
        timeout: Duration,
        max_message_bytes: usize,
    ) -> anyhow::Result<Self> {
        let open = async {
            let connection = amqp::connect_once(config, name).await?;
            let channel = connection
                .create_channel()
                .await
                .context("open a channel")?;
            amqp::declare_exchanges(&channel, config)
                .await
                .context("declare the exchanges")?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .context("enable publisher confirms")?;
            anyhow::Ok((connection, channel))
        };
        let (connection, channel) = tokio::time::timeout(timeout, open)
            .await
            .map_err(|_| anyhow::anyhow!("RabbitMQ did not answer within {timeout:?}"))??;
        let limits = Limits {
            frame_max: connection.configuration().frame_max(),
            max_message_bytes,
        };
        Ok(Self {
            connection,
            channel,
            exchange: config.exchange.clone(),
            limits,
        })
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether the connection and channel are still usable.
    pub fn is_open(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }

    /// Publishes every row the broker can take (persistent, mandatory) and
    /// waits for all their confirms. A row that breaks a broker limit is not
    /// sent ([`Outcome::Unpublishable`]), and neither are the later rows of
    /// its aggregate or rows behind a parked one ([`Outcome::Held`]). An
    /// error means the channel failed; no row may be deleted.
    pub async fn publish(&self, rows: &[OutboxRow]) -> anyhow::Result<Vec<Outcome>> {
        let start = Instant::now();
        let mut outcomes: Vec<Option<Outcome>> = vec![None; rows.len()];
        let mut pending = Vec::with_capacity(rows.len());
        let mut spans = Vec::with_capacity(rows.len());
        // Aggregates whose earlier row is not going out in this batch.
        let mut held: HashSet<&str> = HashSet::new();
        for (i, row) in rows.iter().enumerate() {
            if row.behind_parked || held.contains(row.aggregate_id.as_str()) {
                held.insert(&row.aggregate_id);
                outcomes[i] = Some(Outcome::Held);
                continue;
            }
            let span = publish_span(&self.exchange, row);
            let properties = properties(row, &span);
            if let Err(reason) = self.limits.check(row, &properties) {
                held.insert(&row.aggregate_id);
                outcomes[i] = Some(Outcome::Unpublishable(reason));
                continue;
            }
            let confirm = self
                .channel
                .basic_publish(
                    self.exchange.as_str().into(),
                    row.routing_key.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &row.payload,
                    properties.properties,
                )
                .await
                .context("publish")?;
            pending.push((i, confirm));
            spans.push(span);
        }
        let sent = pending.len();
        for ((i, confirm), span) in pending.into_iter().zip(&spans) {
            let confirmation = confirm.await.context("await a publisher confirm")?;
            let outcome = match confirmation {
                Confirmation::Ack(None) => Outcome::Confirmed,
                Confirmation::Ack(Some(_)) => Outcome::Unroutable,
                Confirmation::Nack(_) => Outcome::Nacked,
                Confirmation::NotRequested => {
                    anyhow::bail!("the channel is not in confirm mode")
                }
            };
            if outcome != Outcome::Confirmed {
                span.record("otel.status_code", "error");
                span.record("ordermesh.outcome", format!("{outcome:?}").to_lowercase());
            }
            outcomes[i] = Some(outcome);
        }
        if sent > 0 {
            ::metrics::histogram!(RELAY_CONFIRM_DURATION).record(start.elapsed().as_secs_f64());
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.expect("every row has an outcome"))
            .collect())
    }

    /// Closes the channel and connection, waiting at most
    /// `CLOSE_TIMEOUT` for the broker (which may be unreachable).
    pub async fn close(self) {
        let close = async {
            let _ = self.channel.close(200, "relay stopping".into()).await;
            let _ = self.connection.close(200, "relay stopping".into()).await;
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, close).await;
    }
}

/// The producer span of one row: semantic-convention messaging attributes,
/// parent taken from the row's stored trace context.
fn publish_span(exchange: &str, row: &OutboxRow) -> tracing::Span {
    let span = tracing::info_span!(
        "amqp.publish",
        otel.name = %format_args!("{exchange} publish"),
        otel.kind = "producer",
        otel.status_code = Empty,
        messaging.system = "rabbitmq",
        messaging.operation.type = "publish",
        messaging.operation.name = "publish",
        messaging.destination.name = %exchange,
        messaging.rabbitmq.destination.routing_key = %row.routing_key,
        messaging.message.id = %row.event_id,
        ordermesh.outcome = Empty,
    );
    propagation::set_remote_parent(&span, propagation::extract_map(&row.headers));
    span
}

/// The `app_id` property of every message the relay publishes.
const APP_ID: &str = "ordermesh-relay";

/// A row's AMQP properties, with what the limits check needs to see.
struct Properties {
    properties: BasicProperties,
    message_id: String,
    headers: BTreeMap<String, String>,
}

/// AMQP properties of a row: the event id as `message_id` (the consumers'
/// deduplication key), the protobuf name as `type`, persistent delivery,
/// the row's headers with the trace context replaced by `span`'s.
fn properties(row: &OutboxRow, span: &tracing::Span) -> Properties {
    let mut row_headers = row.headers.clone();
    propagation::inject_span(span, &mut row_headers);
    let mut headers = FieldTable::default();
    for (k, v) in &row_headers {
        headers.insert(k.as_str().into(), AMQPValue::LongString(v.as_str().into()));
    }
    let message_id = row.event_id.to_string();
    let properties = BasicProperties::default()
        .with_message_id(message_id.as_str().into())
        .with_type(row.event_type.as_str().into())
        .with_content_type(CONTENT_TYPE_PROTOBUF.into())
        .with_delivery_mode(2)
        .with_timestamp(row.create_time.timestamp().max(0) as u64)
        .with_app_id(APP_ID.into())
        .with_headers(headers);
    Properties {
        properties,
        message_id,
        headers: row_headers,
    }
}

/// Longest AMQP short string (routing key, type, header name).
const SHORT_STRING_MAX: usize = 255;
/// A frame's own bytes around its payload: type, channel, size; frame end.
const FRAME_OVERHEAD: usize = 8;
/// A content header's bytes before the properties: class, weight, body
/// size, property flags.
const CONTENT_HEADER_FIXED: usize = 14;

impl Limits {
    /// Why the broker could never take this row, if it could not.
    fn check(&self, row: &OutboxRow, properties: &Properties) -> Result<(), String> {
        for (what, value) in [
            ("routing key", row.routing_key.as_str()),
            ("event type", row.event_type.as_str()),
        ] {
            if value.len() > SHORT_STRING_MAX {
                return Err(format!(
                    "invalid: {what} is {} bytes, AMQP allows {SHORT_STRING_MAX}",
                    value.len()
                ));
            }
        }
        if let Some(name) = properties
            .headers
            .keys()
            .find(|k| k.len() > SHORT_STRING_MAX)
        {
            return Err(format!(
                "invalid: a header name is {} bytes, AMQP allows {SHORT_STRING_MAX}",
                name.len()
            ));
        }
        let header = content_header_len(row, properties);
        let room = (self.frame_max as usize).saturating_sub(FRAME_OVERHEAD);
        if header > room {
            return Err(format!(
                "too large: properties and headers take {header} bytes, the broker's frame holds {room}"
            ));
        }
        if row.payload.len() > self.max_message_bytes {
            return Err(format!(
                "too large: payload is {} bytes, the broker takes {}",
                row.payload.len(),
                self.max_message_bytes
            ));
        }
        Ok(())
    }
}

/// Bytes of the content header frame's payload for the properties that
/// [`properties`] sets: short strings are a length byte and the bytes; the
/// header table a 4-byte length, then per entry the name as a short string,
/// a type byte and a long string (4-byte length and the bytes).
fn content_header_len(row: &OutboxRow, properties: &Properties) -> usize {
    let short = |s: &str| 1 + s.len();
    let table: usize = properties
        .headers
        .iter()
        .map(|(k, v)| short(k) + 1 + 4 + v.len())
        .sum();
    CONTENT_HEADER_FIXED
        + short(&properties.message_id)
        + short(&row.event_type)
        + short(CONTENT_TYPE_PROTOBUF)
        + 1 // delivery mode
        + 8 // timestamp
        + short(APP_ID)
        + 4
        + table
}
