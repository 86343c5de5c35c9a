//! The write side of the transactional outbox. A service calls [`enqueue`]
//! inside the transaction that changes its state; the relay publishes the
//! row after commit. The table and its NOTIFY trigger are created by this
//! crate's migrations (`migrations/V1__outbox_inbox.sql`, run through
//! [`crate::migrations`]).

use std::collections::BTreeMap;

use tokio_postgres::types::ToSql;
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
            headers: ordermesh_runtime::propagation::span_headers(&tracing::Span::current()),
        }
    }
}

impl OutboxEvent {
    /// The `headers` column's value (JSONB), for statements that insert
    /// outbox rows themselves (a data-modifying CTE beside the state change,
    /// saving [`enqueue`]'s round trip).
    pub fn headers_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.headers).expect("string map serializes")
    }

    /// The values of the outbox row, in the order of its insert columns
    /// (`event_id, aggregate_id, routing_key, event_type, payload,
    /// headers`), with `headers` from [`OutboxEvent::headers_json`]: for
    /// [`enqueue`] and for the statements that write the row beside the
    /// state change it belongs to.
    pub fn columns<'a>(&'a self, headers: &'a serde_json::Value) -> [&'a (dyn ToSql + Sync); 6] {
        [
            &self.event_id,
            &self.aggregate_id,
            &self.routing_key,
            &self.event_type,
            &self.payload,
            headers,
        ]
    }
}

/// The database client span of a statement that writes outbox rows
/// together with the state change they belong to (a data-modifying CTE
/// instead of [`enqueue`]): `name` is its span name (`INSERT orders
/// outbox`), `collections` the tables it writes.
pub fn write_span(name: &'static str, collections: &'static str) -> tracing::Span {
    tracing::info_span!(
        "outbox write",
        otel.name = name,
        otel.kind = "client",
        db.system.name = "postgresql",
        db.operation.name = "INSERT",
        db.collection.name = collections,
    )
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
    let headers = event.headers_json();
    let insert = tx
        .prepare_cached(
            r#"INSERT INTO outbox (event_id, aggregate_id, routing_key, event_type, payload, headers)
               VALUES ($1, $2, $3, $4, $5, $6)"#,
        )
        .await?;
    tx.execute(&insert, &event.columns(&headers)).await?;
    Ok(())
}

/// What [`withdraw`] found of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withdrawal {
    /// Deleted unpublished, in the caller's transaction: once that commits,
    /// the event is never published.
    Removed,
    /// Locked by a relay batch that is publishing it right now; left alone,
    /// so it will be published (unless the batch fails, then later).
    InFlight,
    /// Not in the outbox: published already, or never written.
    Absent,
}

/// Withdraws the unpublished event `event_id` in the caller's transaction,
/// without ever waiting for the relay: the row is found through the
/// `event_id` unique index and taken `FOR UPDATE SKIP LOCKED`. A row a relay
/// batch holds is being published, so it is left to be published
/// ([`Withdrawal::InFlight`]): an event is either withdrawn unseen or
/// published, never both, and the caller must be ready for either (the
/// consumers of `order.created` and `order.cancelled` make the two commute).
/// An event the relay parked (`outbox_parked`) is withdrawn too: it would
/// only be published by an operator's replay.
pub async fn withdraw(
    tx: &deadpool_postgres::Transaction<'_>,
    event_id: uuid::Uuid,
) -> Result<Withdrawal, tokio_postgres::Error> {
    // The EXISTS reads the snapshot the DELETE started from, so it sees a
    // row this statement deletes as well as one it skipped.
    let row = tx
        .query_one(
            r#"WITH target AS (
                   SELECT id FROM outbox WHERE event_id = $1 FOR UPDATE SKIP LOCKED
               ), removed AS (
                   DELETE FROM outbox o USING target t WHERE o.id = t.id RETURNING o.id
               ), unparked AS (
                   DELETE FROM outbox_parked WHERE event_id = $1 RETURNING id
               )
               SELECT EXISTS (SELECT 1 FROM removed) OR EXISTS (SELECT 1 FROM unparked) AS removed,
                      EXISTS (SELECT 1 FROM outbox WHERE event_id = $1) AS present"#,
            &[&event_id],
        )
        .await?;
    Ok(withdrawal(row.get("removed"), row.get("present")))
}

/// [`withdraw`] for an event whose id the caller did not keep: every event
/// of `aggregate_id` under `routing_key`, with the same never-wait rule
/// ([`Withdrawal::Removed`] if any was deleted). No index serves this (an
/// index on `aggregate_id` would tax every insert), so it scans the outbox:
/// keep it for rows written before their ids were kept.
pub async fn withdraw_unindexed(
    tx: &deadpool_postgres::Transaction<'_>,
    aggregate_id: &str,
    routing_key: &str,
) -> Result<Withdrawal, tokio_postgres::Error> {
    let row = tx
        .query_one(
            r#"WITH target AS (
                   SELECT id FROM outbox
                   WHERE aggregate_id = $1 AND routing_key = $2
                   FOR UPDATE SKIP LOCKED
               ), removed AS (
                   DELETE FROM outbox o USING target t WHERE o.id = t.id RETURNING o.id
               )
               SELECT EXISTS (SELECT 1 FROM removed) AS removed,
                      EXISTS (SELECT 1 FROM outbox
                              WHERE aggregate_id = $1 AND routing_key = $2) AS present"#,
            &[&aggregate_id, &routing_key],
        )
        .await?;
    Ok(withdrawal(row.get("removed"), row.get("present")))
}

fn withdrawal(removed: bool, present: bool) -> Withdrawal {
    match (removed, present) {
        (true, _) => Withdrawal::Removed,
        (false, true) => Withdrawal::InFlight,
        (false, false) => Withdrawal::Absent,
    }
}
