//! The write side of the transactional outbox. A service calls [`enqueue`]
//! inside the transaction that changes its state; the relay publishes the
//! row after commit. The table and its NOTIFY trigger are created by the
//! platform migrations (`migrations/V1__outbox_inbox.sql`).

use std::collections::BTreeMap;

use uuid::Uuid;

/// The channel the outbox trigger notifies on commit.
pub const NOTIFY_CHANNEL: &str = "ordermesh_outbox";

/// Content type of every ordermesh event payload.
pub const CONTENT_TYPE_PROTOBUF: &str = "application/x-protobuf";

/// Outbox partitions: a row's `partition` column is
/// `hashtext(aggregate_id) & 63` (`migrations/V2__outbox_partitions.sql`),
/// so all events of one aggregate share a partition.
pub const PARTITIONS: i16 = 64;
/// Advisory lock class (first key; the second is the partition) that a relay
/// holds while it polls a partition; the outbox trigger skips its NOTIFY then.
pub const WARM_LOCK_CLASS: i32 = 1_869_414_402;
/// Advisory lock class (second key 0) every outbox writer holds shared until
/// it commits; a relay takes it exclusively once when it stops polling.
pub const GATE_LOCK_CLASS: i32 = 1_869_414_403;

/// An event to publish once the surrounding transaction commits.
#[derive(Debug, Clone)]
pub struct OutboxEvent {
    /// Becomes the AMQP `message_id`; consumers deduplicate on it.
    pub event_id: Uuid,
    /// The entity the event is about (an order id); events of one aggregate
    /// are published in the order they were written.
    pub aggregate_id: String,
    pub routing_key: String,
    /// Fully qualified protobuf message name, the AMQP `type` property.
    pub event_type: String,
    pub payload: Vec<u8>,
    /// Extra AMQP headers; [`OutboxEvent::protobuf`] puts the W3C
    /// `traceparent` (and `tracestate`) of the writing span here, which the
    /// relay's publish span continues.
    pub headers: BTreeMap<String, String>,
}

impl OutboxEvent {
    /// An event carrying a protobuf message, with a fresh UUIDv7 id and the
    /// trace context of the current span.
    pub fn protobuf<M: prost::Name>(
        aggregate_id: impl Into<String>,
        routing_key: &str,
        message: &M,
    ) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            aggregate_id: aggregate_id.into(),
            routing_key: routing_key.to_owned(),
            event_type: M::full_name(),
            payload: message.encode_to_vec(),
            headers: crate::propagation::span_headers(&tracing::Span::current()),
        }
    }
}

/// Inserts the event into the outbox of the transaction's database.
#[tracing::instrument(
    skip_all,
    fields(
        otel.name = "INSERT outbox",
        otel.kind = "client",
        db.system.name = "postgresql",
        db.operation.name = "INSERT",
        db.collection.name = "outbox",
        event_id = %event.event_id,
        routing_key = %event.routing_key,
    )
)]
///
/// The statement is prepared once per connection (the pool's statement
/// cache): one round trip per call and no parsing or planning.
pub async fn enqueue(
    tx: &deadpool_postgres::Transaction<'_>,
    event: &OutboxEvent,
) -> Result<(), tokio_postgres::Error> {
    let headers = serde_json::to_value(&event.headers).expect("string map serializes");
    let insert = tx
        .prepare_cached(
            r#"INSERT INTO outbox (event_id, aggregate_id, routing_key, event_type, payload, headers)
               VALUES ($1, $2, $3, $4, $5, $6)"#,
        )
        .await?;
    tx.execute(
        &insert,
        &[
            &event.event_id,
            &event.aggregate_id,
            &event.routing_key,
            &event.event_type,
            &event.payload,
            &headers,
        ],
    )
    .await?;
    Ok(())
}

/// Withdraws the events of `aggregate_id` under `routing_key` that are still
/// in the outbox, in the caller's transaction, and returns how many. An
/// event the relay has published is gone from the table already; one it is
/// publishing right now is locked by its batch, so this waits for that
/// batch and then finds nothing to delete: an event is either withdrawn
/// unseen or published, never both.
///
/// No index serves this (the outbox is meant to be near empty, and an index
/// would tax every insert), so keep it off hot paths.
pub async fn withdraw(
    tx: &deadpool_postgres::Transaction<'_>,
    aggregate_id: &str,
    routing_key: &str,
) -> Result<u64, tokio_postgres::Error> {
    tx.execute(
        r#"DELETE FROM outbox WHERE aggregate_id = $1 AND routing_key = $2"#,
        &[&aggregate_id, &routing_key],
    )
    .await
}
