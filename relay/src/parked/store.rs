//! The statements of `relay outbox` on a source's `outbox_parked` table.

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_postgres::{GenericClient, Row, Transaction};
use uuid::Uuid;

use super::RowKey;

/// A parked row without its payload and headers, as `list` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedRow {
    pub id: i64,
    pub event_id: Uuid,
    pub aggregate_id: String,
    pub routing_key: String,
    pub event_type: String,
    /// Times the broker refused it before it was parked.
    pub attempts: i32,
    /// Why the relay parked it.
    pub reason: String,
    pub create_time: DateTime<Utc>,
    pub park_time: DateTime<Utc>,
    pub payload_bytes: i32,
    /// The headers' size as JSON: a row too large for the broker's frame
    /// may owe it to them.
    pub headers_bytes: i32,
}

impl ParkedRow {
    fn from_row(r: &Row) -> Self {
        Self {
            id: r.get("id"),
            event_id: r.get("event_id"),
            aggregate_id: r.get("aggregate_id"),
            routing_key: r.get("routing_key"),
            event_type: r.get("event_type"),
            attempts: r.get("attempts"),
            reason: r.get("reason"),
            create_time: r.get("create_time"),
            park_time: r.get("park_time"),
            payload_bytes: r.get("payload_bytes"),
            headers_bytes: r.get("headers_bytes"),
        }
    }
}

/// A parked row with its headers and payload, as `show` and `drop` print it.
#[derive(Debug, Clone, PartialEq)]
pub struct ParkedDetail {
    pub row: ParkedRow,
    pub headers: Value,
    pub payload: Vec<u8>,
}

impl ParkedDetail {
    fn from_row(r: &Row) -> Self {
        Self {
            row: ParkedRow::from_row(r),
            headers: r.get("headers"),
            payload: r.get("payload"),
        }
    }
}

/// A row moved back into the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    pub id: i64,
    pub event_id: Uuid,
    pub aggregate_id: String,
}

/// Up to `limit` parked rows in id order, and how many there are in all.
pub async fn list_parked(
    client: &impl GenericClient,
    limit: i64,
) -> Result<(Vec<ParkedRow>, i64), tokio_postgres::Error> {
    let rows = client
        .query(
            r#"SELECT id, event_id, aggregate_id, routing_key, event_type, attempts, reason,
                      create_time, park_time, octet_length(payload) AS payload_bytes,
                      octet_length(headers::text) AS headers_bytes,
                      count(*) OVER () AS total
               FROM outbox_parked
               ORDER BY id
               LIMIT $1"#,
            &[&limit],
        )
        .await?;
    let total = rows.first().map_or(0, |r| r.get("total"));
    Ok((rows.iter().map(ParkedRow::from_row).collect(), total))
}

/// The parked row with this id or event id.
pub async fn find_parked(
    client: &impl GenericClient,
    key: RowKey,
) -> Result<Option<ParkedDetail>, tokio_postgres::Error> {
    let (id, event_id) = match key {
        RowKey::Id(id) => (Some(id), None),
        RowKey::Event(event_id) => (None, Some(event_id)),
    };
    let row = client
        .query_opt(
            r#"SELECT id, event_id, aggregate_id, routing_key, event_type, attempts, reason,
                      create_time, park_time, octet_length(payload) AS payload_bytes,
                      octet_length(headers::text) AS headers_bytes, headers, payload
               FROM outbox_parked
               WHERE id = $1 OR event_id = $2"#,
            &[&id, &event_id],
        )
        .await?;
    Ok(row.as_ref().map(ParkedDetail::from_row))
}

/// The ids of an aggregate's parked rows, in order.
pub async fn parked_ids_of(
    client: &impl GenericClient,
    aggregate_id: &str,
) -> Result<Vec<i64>, tokio_postgres::Error> {
    let rows = client
        .query(
            r#"SELECT id FROM outbox_parked WHERE aggregate_id = $1 ORDER BY id"#,
            &[&aggregate_id],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Locks the rows [`move_back`] moves (`from`: that row and the later
/// parked rows of its aggregate; `None`: all) and returns their ids. A
/// row deleted meanwhile is skipped, so an empty result means `from` is
/// no longer parked.
pub async fn lock_for_replay(
    tx: &Transaction<'_>,
    from: Option<i64>,
) -> Result<Vec<i64>, tokio_postgres::Error> {
    let rows = tx
        .query(
            r#"SELECT id FROM outbox_parked
               WHERE $1::int8 IS NULL
                  OR (aggregate_id = (SELECT aggregate_id FROM outbox_parked WHERE id = $1)
                      AND id >= $1)
               ORDER BY id
               FOR UPDATE"#,
            &[&from],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Moves parked rows back into the outbox with their ids (so they keep
/// their places in id order), attempts 0 and no retry time: `from` and the
/// later parked rows of its aggregate, or every parked row for `None`.
/// `partition` is generated from the aggregate id.
pub async fn move_back(
    tx: &Transaction<'_>,
    from: Option<i64>,
) -> Result<Vec<Replayed>, tokio_postgres::Error> {
    let rows = tx
        .query(
            r#"WITH moved AS (
                   DELETE FROM outbox_parked
                   WHERE $1::int8 IS NULL
                      OR (aggregate_id = (SELECT aggregate_id FROM outbox_parked WHERE id = $1)
                          AND id >= $1)
                   RETURNING id, event_id, aggregate_id, routing_key, event_type, payload,
                             headers, create_time)
               INSERT INTO outbox (id, event_id, aggregate_id, routing_key, event_type, payload,
                                   headers, create_time, attempts, retry_time)
               OVERRIDING SYSTEM VALUE
               SELECT id, event_id, aggregate_id, routing_key, event_type, payload, headers,
                      create_time, 0, NULL
               FROM moved
               RETURNING id, event_id, aggregate_id"#,
            &[&from],
        )
        .await?;
    let mut moved: Vec<Replayed> = rows
        .iter()
        .map(|r| Replayed {
            id: r.get("id"),
            event_id: r.get("event_id"),
            aggregate_id: r.get("aggregate_id"),
        })
        .collect();
    moved.sort_by_key(|r| r.id);
    Ok(moved)
}

/// Deletes one parked row, returning it.
pub async fn delete_parked(
    tx: &Transaction<'_>,
    id: i64,
) -> Result<Option<ParkedDetail>, tokio_postgres::Error> {
    let row = tx
        .query_opt(
            r#"DELETE FROM outbox_parked
               WHERE id = $1
               RETURNING id, event_id, aggregate_id, routing_key, event_type, attempts, reason,
                         create_time, park_time, octet_length(payload) AS payload_bytes,
                         octet_length(headers::text) AS headers_bytes, headers, payload"#,
            &[&id],
        )
        .await?;
    Ok(row.as_ref().map(ParkedDetail::from_row))
}
