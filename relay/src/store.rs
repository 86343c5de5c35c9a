//! The relay's SQL: claim a batch of outbox rows in id order, skipping rows
//! another relay holds, and delete the rows the broker confirmed. The relay
//! treats rows as opaque: routing key, type, payload and headers.

use std::collections::BTreeMap;

use tokio_postgres::Transaction;

/// One outbox row, as published.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: i64,
    pub event_id: uuid::Uuid,
    pub routing_key: String,
    pub event_type: String,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
    pub create_time: chrono::DateTime<chrono::Utc>,
}

/// Locks and returns up to `limit` of the oldest unlocked rows.
#[tracing::instrument(skip(tx))]
pub async fn claim(
    tx: &Transaction<'_>,
    limit: i64,
) -> Result<Vec<OutboxRow>, tokio_postgres::Error> {
    let rows = tx
        .query(
            r#"SELECT id, event_id, routing_key, event_type, payload, headers, create_time
               FROM outbox
               ORDER BY id
               LIMIT $1
               FOR UPDATE SKIP LOCKED"#,
            &[&limit],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let headers: serde_json::Value = r.get("headers");
            OutboxRow {
                id: r.get("id"),
                event_id: r.get("event_id"),
                routing_key: r.get("routing_key"),
                event_type: r.get("event_type"),
                payload: r.get("payload"),
                headers: string_map(&headers),
                create_time: r.get("create_time"),
            }
        })
        .collect())
}

/// Deletes published rows.
#[tracing::instrument(skip(tx, ids), fields(count = ids.len()))]
pub async fn delete(tx: &Transaction<'_>, ids: &[i64]) -> Result<u64, tokio_postgres::Error> {
    tx.execute(r#"DELETE FROM outbox WHERE id = ANY($1)"#, &[&ids])
        .await
}

/// The string-valued entries of a JSON object; other values are skipped.
fn string_map(value: &serde_json::Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_string_headers_are_kept() {
        let v = serde_json::json!({"traceparent": "00-ab-cd-01", "n": 1});
        let m = super::string_map(&v);
        assert_eq!(m.len(), 1);
        assert_eq!(m["traceparent"], "00-ab-cd-01");
    }
}
