//! The harness's own view of RabbitMQ, straight to the broker (not through
//! the proxy): it publishes the poison messages and counts what waits in
//! the mesh's queues and dead-letter queues.

use anyhow::{Context, bail};
use lapin::options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use ordermesh_messaging::amqp::BrokerConfig;
use ordermesh_proto::events::v1::ORDER_CREATED;

pub struct Broker {
    config: BrokerConfig,
    connection: Connection,
    /// In confirm mode, for the poison.
    publisher: Channel,
}

impl Broker {
    pub async fn connect(config: &BrokerConfig) -> anyhow::Result<Self> {
        let uri = ordermesh_messaging::amqp::uri(config)?;
        let connection = Connection::connect_uri(
            uri,
            lapin::ConnectionProperties::default().with_connection_name("ordermesh-chaos".into()),
        )
        .await
        .context("connect to RabbitMQ")?;
        let publisher = connection.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            config: config.clone(),
            connection,
            publisher,
        })
    }

    /// Publishes a message the processor can never decode, under the
    /// `order.created` routing key and with `message_id`, and waits until
    /// the broker confirms it reached a queue.
    pub async fn publish_poison(&self, message_id: &str) -> anyhow::Result<()> {
        let props = BasicProperties::default()
            .with_message_id(message_id.into())
            .with_delivery_mode(2);
        let confirm = self
            .publisher
            .basic_publish(
                self.config.exchange.as_str().into(),
                ORDER_CREATED.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                b"\xff\xff\xff chaos poison: not an OrderCreated",
                props,
            )
            .await?
            .await?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => bail!("poison {message_id} was unroutable"),
            other => bail!("poison {message_id} not confirmed: {other:?}"),
        }
    }

    /// Messages ready in `queue` (unacknowledged ones are not counted); a
    /// queue nobody declared holds none.
    pub async fn ready_if_declared(&self, queue: &str) -> anyhow::Result<u32> {
        match self.ready(queue).await {
            Ok(n) => Ok(n),
            Err(e) if is_not_found(&e) => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Messages ready in `queue` (unacknowledged ones are not counted).
    pub async fn ready(&self, queue: &str) -> anyhow::Result<u32> {
        // A passive declare of a missing queue closes the channel: one
        // channel per question.
        let channel = self.connection.create_channel().await?;
        let ready = ordermesh_messaging::amqp::ready_count(&channel, queue)
            .await
            .with_context(|| format!("look at queue {queue}"))?;
        let _ = channel.close(200, "done".into()).await;
        Ok(ready)
    }

    /// Takes every message out of `queue` and returns their message ids.
    pub async fn drain_ids(&self, queue: &str) -> anyhow::Result<Vec<String>> {
        let channel = self.connection.create_channel().await?;
        let mut ids = Vec::new();
        while let Some(m) = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await?
        {
            ids.push(
                m.delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_default(),
            );
        }
        let _ = channel.close(200, "done".into()).await;
        Ok(ids)
    }

    /// Messages ready in all of `queues`, per queue, leaving out empty ones.
    pub async fn waiting(&self, queues: &[String]) -> anyhow::Result<Vec<(String, u32)>> {
        let mut waiting = Vec::new();
        for q in queues {
            let n = self.ready_if_declared(q).await?;
            if n > 0 {
                waiting.push((q.clone(), n));
            }
        }
        Ok(waiting)
    }

    pub async fn close(self) {
        let _ = self.connection.close(200, "chaos done".into()).await;
    }
}

/// Whether `e` is the broker's 404 NOT_FOUND (a passive declare of a
/// missing queue).
fn is_not_found(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<lapin::Error>())
        .any(|e| e.to_string().contains("NOT_FOUND"))
}
