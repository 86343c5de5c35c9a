//! Publishing outbox rows to RabbitMQ with publisher confirms. A batch is
//! pipelined: every message is sent, then all confirms are awaited together,
//! so a batch costs one round trip, not one per message.

use anyhow::Context;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use ordermesh_platform::amqp::{self, BrokerConfig};
use ordermesh_platform::outbox::CONTENT_TYPE_PROTOBUF;
use tokio_util::sync::CancellationToken;

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
        let mut pending = Vec::with_capacity(rows.len());
        for row in rows {
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
                    properties(row),
                )
                .await
                .context("publish")?;
            pending.push(confirm);
        }
        let mut outcomes = Vec::with_capacity(pending.len());
        for confirm in pending {
            let confirmation = confirm.await.context("await a publisher confirm")?;
            outcomes.push(match confirmation {
                Confirmation::Ack(None) => Outcome::Confirmed,
                Confirmation::Ack(Some(_)) => Outcome::Unroutable,
                Confirmation::Nack(_) => Outcome::Nacked,
                Confirmation::NotRequested => {
                    anyhow::bail!("the channel is not in confirm mode")
                }
            });
        }
        Ok(outcomes)
    }

    pub async fn close(self) {
        let _ = self.channel.close(200, "relay stopping".into()).await;
        let _ = self.connection.close(200, "relay stopping".into()).await;
    }
}

/// AMQP properties of a row: the event id as `message_id` (the consumers'
/// deduplication key), the protobuf name as `type`, persistent delivery.
fn properties(row: &OutboxRow) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (k, v) in &row.headers {
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
