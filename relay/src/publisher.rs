//! Publishing outbox rows to RabbitMQ with publisher confirms. A batch is
//! pipelined: every message is sent, then all confirms are awaited together,
//! so a batch costs one round trip, not one per message.
//!
//! Each row gets a producer span `<exchange> publish`, a child of the trace
//! context stored in the row's headers, lasting until its confirm; the
//! message carries that span's `traceparent`, so the consumer continues the
//! trace from the publish.

use std::time::Instant;

use anyhow::Context;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use ordermesh_platform::amqp::{self, BrokerConfig};
use ordermesh_platform::metrics::RELAY_CONFIRM_DURATION;
use ordermesh_platform::outbox::CONTENT_TYPE_PROTOBUF;
use ordermesh_platform::propagation;
use tokio_util::sync::CancellationToken;
use tracing::field::Empty;

use crate::store::OutboxRow;

/// A connection with a confirm-mode channel.
pub struct Publisher {
    connection: Connection,
    channel: Channel,
    exchange: String,
}

/// What the broker said about each row of a batch, in batch order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Confirmed and routed to at least one queue.
    Confirmed,
    /// Confirmed but no queue is bound for the routing key yet.
    Unroutable,
    /// The broker refused it.
    Nacked,
}

impl Publisher {
    /// Connects (retrying until `shutdown`), declares the exchanges and
    /// enables confirms.
    pub async fn connect(
        config: &BrokerConfig,
        name: &str,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Self> {
        let connection = amqp::connect(config, name, shutdown).await?;
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
        Ok(Self {
            connection,
            channel,
            exchange: config.exchange.clone(),
        })
    }

    /// Whether the connection and channel are still usable.
    pub fn is_open(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }

    /// Publishes every row (persistent, mandatory) and waits for all their
    /// confirms. An error means the channel failed; no row may be deleted.
    pub async fn publish(&self, rows: &[OutboxRow]) -> anyhow::Result<Vec<Outcome>> {
        let start = Instant::now();
        let mut pending = Vec::with_capacity(rows.len());
        let mut spans = Vec::with_capacity(rows.len());
        for row in rows {
            let span = publish_span(&self.exchange, row);
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
                    properties(row, &span),
                )
                .await
                .context("publish")?;
            pending.push(confirm);
            spans.push(span);
        }
        let mut outcomes = Vec::with_capacity(pending.len());
        for (confirm, span) in pending.into_iter().zip(&spans) {
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
            outcomes.push(outcome);
        }
        if !rows.is_empty() {
            ::metrics::histogram!(RELAY_CONFIRM_DURATION).record(start.elapsed().as_secs_f64());
        }
        Ok(outcomes)
    }

    pub async fn close(self) {
        let _ = self.channel.close(200, "relay stopping".into()).await;
        let _ = self.connection.close(200, "relay stopping".into()).await;
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

/// AMQP properties of a row: the event id as `message_id` (the consumers'
/// deduplication key), the protobuf name as `type`, persistent delivery,
/// the row's headers with the trace context replaced by `span`'s.
fn properties(row: &OutboxRow, span: &tracing::Span) -> BasicProperties {
    let mut row_headers = row.headers.clone();
    propagation::inject_span(span, &mut row_headers);
    let mut headers = FieldTable::default();
    for (k, v) in &row_headers {
        headers.insert(k.as_str().into(), AMQPValue::LongString(v.as_str().into()));
    }
    BasicProperties::default()
        .with_message_id(row.event_id.to_string().into())
        .with_type(row.event_type.as_str().into())
        .with_content_type(CONTENT_TYPE_PROTOBUF.into())
        .with_delivery_mode(2)
        .with_timestamp(row.create_time.timestamp().max(0) as u64)
        .with_app_id("ordermesh-relay".into())
        .with_headers(headers)
}
