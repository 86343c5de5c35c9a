//! The exchanges and queues ordermesh declares: the events exchange and its
//! dead-letter exchange, and per consumer a durable queue bound to its
//! routing keys with its dead-letter queue. All declarations are idempotent.
//! The retry queues are the redelivery's
//! ([`crate::redelivery::declare_retry_queues`]).

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

use crate::broker::BrokerConfig;

/// A consumer's durable queue and the routing keys it is bound to.
#[derive(Debug, Clone)]
pub struct QueueSpec {
    pub name: String,
    pub routing_keys: Vec<String>,
}

/// Name of the dead-letter queue of `queue`.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dlq")
}

/// Declares the events exchange and the dead-letter exchange (idempotent).
pub async fn declare_exchanges(channel: &Channel, config: &BrokerConfig) -> lapin::Result<()> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            config.exchange.as_str().into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            config.dead_letter_exchange().into(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await
}

/// Declares `spec` with its dead-letter queue and bindings (idempotent).
/// The consumer loop also declares the retry queues
/// ([`crate::redelivery::declare_retry_queues`]) before it consumes.
pub async fn declare_queue(
    channel: &Channel,
    config: &BrokerConfig,
    spec: &QueueSpec,
) -> lapin::Result<()> {
    declare_exchanges(channel, config).await?;
    declare_dead_letter_queue(channel, config, &spec.name).await?;
    let mut args = typed(config);
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(config.dead_letter_exchange().into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(spec.name.as_str().into()),
    );
    channel
        .queue_declare(spec.name.as_str().into(), durable(), args)
        .await?;
    for key in &spec.routing_keys {
        channel
            .queue_bind(
                spec.name.as_str().into(),
                config.exchange.as_str().into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Declares `<queue>.dlq`, bound to the dead-letter exchange by the name of
/// `queue`.
async fn declare_dead_letter_queue(
    channel: &Channel,
    config: &BrokerConfig,
    queue: &str,
) -> lapin::Result<()> {
    let dlq = dead_letter_queue(queue);
    channel
        .queue_declare(dlq.as_str().into(), durable(), typed(config))
        .await?;
    channel
        .queue_bind(
            dlq.as_str().into(),
            config.dead_letter_exchange().into(),
            queue.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// Queue arguments with the configured `x-queue-type`.
fn typed(config: &BrokerConfig) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(config.queue_type.as_str().into()),
    );
    args
}

/// The messages ready in `queue` (unacknowledged ones are not counted),
/// by a passive declare: the broker closes the channel when the queue does
/// not exist, so use a channel of its own.
pub async fn ready_count(channel: &Channel, queue: &str) -> lapin::Result<u32> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let declared = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await?;
    Ok(declared.message_count())
}
