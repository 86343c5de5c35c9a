//! The relay's SQL. Outbox: claim a batch of the leased partitions' rows in
//! id order, delete the rows the broker confirmed, probe for pending rows.
//! Leases: count the relays connected to a source, try-lock and unlock
//! partitions, and pass the writers' gate. The relay treats rows as opaque:
//! routing key, type, payload and headers. The outbox statements run often
//! and are prepared once per connection (the pool's statement cache).

use std::collections::BTreeMap;

use deadpool_postgres::GenericClient as Pooled;
use ordermesh_messaging::outbox::{GATE_LOCK_CLASS, PARTITIONS};
use tokio_postgres::{Client, GenericClient, Statement};

/// Advisory lock class (first key; the second is the partition) of a
/// partition lease, held on the relay's lease connection.
pub const LEASE_LOCK_CLASS: i32 = 1_869_414_401;

/// `application_name` prefix of lease connections: one per relay per
/// source, so counting them counts the live relays.
pub const LEASE_APPLICATION_PREFIX: &str = "ordermesh-relay-lease/";

/// The `WHERE` clause of the rows [`claim`] and [`pending`] may take
/// (`outbox o`, partitions in `$1`): rows not waiting for a retry, and not
/// behind a row of their aggregate that is.
macro_rules! due_rows {
    () => {
        r#"WHERE o.partition = ANY($1)
             AND (o.retry_time IS NULL OR o.retry_time <= now())
             AND NOT EXISTS (SELECT 1 FROM outbox w
                             WHERE w.retry_time IS NOT NULL
                               AND w.retry_time > now()
                               AND w.aggregate_id = o.aggregate_id AND w.id < o.id)"#
    };
}

/// One outbox row, as published.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: i64,
    pub event_id: uuid::Uuid,
    pub aggregate_id: String,
    pub routing_key: String,
    pub event_type: String,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
    pub create_time: chrono::DateTime<chrono::Utc>,
    /// Times the broker refused it so far.
    pub attempts: i32,
    /// An earlier row of its aggregate is parked: publishing this one
    /// would overtake it.
    pub behind_parked: bool,
}

/// Locks and returns up to `limit` of the oldest rows of `partitions` that
/// are due: not waiting for a retry, and not behind a row of their
/// aggregate that is (that one goes first).
///
/// `FOR UPDATE` without `SKIP LOCKED`: while a lease changes hands, the
/// previous holder may still be publishing a batch of the same partition;
/// waiting for its rows (and skipping them once it deleted them) keeps the
/// partition in id order, where skipping them would publish later rows
/// first. The relay's connections set a `lock_timeout`.
// Debug level: a batch serves many orders' traces, and an idle relay claims
// every tick; at info each claim would be a root trace of its own.
#[tracing::instrument(level = "debug", skip(tx, partitions), fields(partitions = partitions.len()))]
pub async fn claim(
    tx: &impl Pooled,
    partitions: &[i16],
    limit: i64,
) -> Result<Vec<OutboxRow>, tokio_postgres::Error> {
    // The two subqueries probe indexes that are empty unless a row waits
    // for a retry (`outbox_retrying`) or is parked (`outbox_parked_aggregate`).
    let claim = tx
        .prepare_cached(concat!(
            r#"SELECT o.id, o.event_id, o.aggregate_id, o.routing_key, o.event_type,
                          o.payload, o.headers, o.create_time, o.attempts,
                          EXISTS (SELECT 1 FROM outbox_parked p
                                  WHERE p.aggregate_id = o.aggregate_id) AS behind_parked
                   FROM outbox o "#,
            due_rows!(),
            r#" ORDER BY o.id LIMIT $2 FOR UPDATE OF o"#
        ))
        .await?;
    let rows = tx.query(&claim, &[&partitions, &limit]).await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let headers: serde_json::Value = r.get("headers");
            OutboxRow {
                id: r.get("id"),
                event_id: r.get("event_id"),
                aggregate_id: r.get("aggregate_id"),
                routing_key: r.get("routing_key"),
                event_type: r.get("event_type"),
                payload: r.get("payload"),
                headers: string_map(&headers),
                create_time: r.get("create_time"),
                attempts: r.get("attempts"),
                behind_parked: r.get("behind_parked"),
            }
        })
        .collect())
}

/// A refused row to try again later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    pub id: i64,
    /// Its attempts, this one counted.
    pub attempts: i32,
    /// How long until it is due again.
    pub delay_ms: i64,
}

/// Records one more refused attempt of each row and when it is due again.
#[tracing::instrument(level = "debug", skip_all, fields(count = retries.len()))]
pub async fn retry_later(
    tx: &impl Pooled,
    retries: &[Retry],
) -> Result<u64, tokio_postgres::Error> {
    let ids: Vec<i64> = retries.iter().map(|r| r.id).collect();
    let attempts: Vec<i32> = retries.iter().map(|r| r.attempts).collect();
    let delays: Vec<i64> = retries.iter().map(|r| r.delay_ms).collect();
    tx.execute(
        r#"UPDATE outbox o
           SET attempts = r.attempts,
               retry_time = clock_timestamp() + r.delay_ms * interval '1 millisecond'
           FROM unnest($1::int8[], $2::int4[], $3::int8[]) AS r(id, attempts, delay_ms)
           WHERE o.id = r.id"#,
        &[&ids, &attempts, &delays],
    )
    .await
}

/// A row that can never be published, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Park {
    pub id: i64,
    pub attempts: i32,
    pub reason: String,
}

/// Moves rows from the outbox to `outbox_parked`, with their reasons, in
/// the caller's transaction.
#[tracing::instrument(level = "debug", skip_all, fields(count = parked.len()))]
pub async fn park(tx: &impl Pooled, parked: &[Park]) -> Result<u64, tokio_postgres::Error> {
    let ids: Vec<i64> = parked.iter().map(|p| p.id).collect();
    let attempts: Vec<i32> = parked.iter().map(|p| p.attempts).collect();
    let reasons: Vec<&str> = parked.iter().map(|p| p.reason.as_str()).collect();
    tx.execute(
        r#"WITH moved AS (
               DELETE FROM outbox o
               USING unnest($1::int8[], $2::int4[], $3::text[]) AS r(id, attempts, reason)
               WHERE o.id = r.id
               RETURNING o.id, o.event_id, o.aggregate_id, o.routing_key, o.event_type,
                         o.payload, o.headers, o.create_time, r.attempts, r.reason)
           INSERT INTO outbox_parked (id, event_id, aggregate_id, routing_key, event_type,
                                      payload, headers, create_time, attempts, reason)
           SELECT * FROM moved"#,
        &[&ids, &attempts, &reasons],
    )
    .await
}

/// Which of `aggregates` still have parked rows, locked (`FOR KEY SHARE`)
/// until the caller commits, so a replay cannot move them back meanwhile.
pub async fn lock_parked_aggregates(
    tx: &impl Pooled,
    aggregates: &[&str],
) -> Result<std::collections::HashSet<String>, tokio_postgres::Error> {
    let rows = tx
        .query(
            r#"SELECT aggregate_id FROM outbox_parked
               WHERE aggregate_id = ANY($1)
               FOR KEY SHARE"#,
            &[&aggregates],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Deletes published rows with `statement` ([`delete_statement`]); the
/// caller prepares it first, so this can go out with the COMMIT behind it.
#[tracing::instrument(level = "debug", skip_all, fields(count = ids.len()))]
pub async fn delete(
    tx: &impl Pooled,
    statement: &Statement,
    ids: &[i64],
) -> Result<u64, tokio_postgres::Error> {
    tx.execute(statement, &[&ids]).await
}

/// The statement of [`delete`], prepared once per connection.
pub async fn delete_statement(tx: &impl Pooled) -> Result<Statement, tokio_postgres::Error> {
    tx.prepare_cached(r#"DELETE FROM outbox WHERE id = ANY($1)"#)
        .await
}

/// Whether any row of `partitions` is due (as [`claim`] means it): one
/// cheap round trip, so a polling relay opens a transaction only when there
/// is work. It walks the primary key like the claim does, so the dead
/// entries deleted rows leave behind are skipped (and marked dead) instead
/// of scanned in the heap.
pub async fn pending(
    client: &deadpool_postgres::Client,
    partitions: &[i16],
) -> Result<bool, tokio_postgres::Error> {
    let probe = client
        .prepare_cached(concat!(
            "SELECT o.id FROM outbox o ",
            due_rows!(),
            " ORDER BY o.id LIMIT 1"
        ))
        .await?;
    let row = client.query_opt(&probe, &[&partitions]).await?;
    Ok(row.is_some())
}

/// Vacuums the outbox (skipped when another vacuum holds it). Deleted rows
/// leave dead entries that every claim walks until a vacuum removes them;
/// under load autovacuum's once a minute lets tens of thousands pile up.
/// Without ownership of the table PostgreSQL only warns and skips it.
pub async fn vacuum(client: &Client) -> Result<(), tokio_postgres::Error> {
    client.batch_execute("VACUUM (SKIP_LOCKED) outbox").await
}

/// Relays with a lease connection to this database, this one included.
pub async fn live_relays(client: &Client) -> Result<i64, tokio_postgres::Error> {
    let row = client
        .query_one(
            r#"SELECT count(*) FROM pg_stat_activity
               WHERE datname = current_database()
                 AND starts_with(application_name, $1)"#,
            &[&LEASE_APPLICATION_PREFIX],
        )
        .await?;
    Ok(row.get(0))
}

/// Tries the session advisory locks `(class, p)` for the `candidates` in
/// order and stops after `limit` successes; returns the partitions locked.
/// Never pass a partition this session holds already: the locks nest.
pub async fn try_lock(
    client: &Client,
    class: i32,
    candidates: &[i16],
    limit: i64,
) -> Result<Vec<i16>, tokio_postgres::Error> {
    // unnest keeps array order and LIMIT stops evaluating the filter once
    // it has enough rows, so no lock is taken beyond `limit`.
    let rows = client
        .query(
            r#"SELECT p FROM unnest($2::int2[]) AS p
               WHERE pg_try_advisory_lock($1, p)
               LIMIT $3"#,
            &[&class, &candidates, &limit],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Releases the session advisory locks `(class, p)`.
pub async fn unlock(
    client: &Client,
    class: i32,
    partitions: &[i16],
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            r#"SELECT pg_advisory_unlock($1, p) FROM unnest($2::int2[]) AS p"#,
            &[&class, &partitions],
        )
        .await?;
    Ok(())
}

/// Waits until every outbox writer in flight has committed or rolled back
/// (they hold the gate shared), bounded by the connection's `lock_timeout`.
pub async fn pass_gate(client: &Client) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(&format!(
            "SELECT pg_advisory_lock({GATE_LOCK_CLASS}, 0); \
             SELECT pg_advisory_unlock({GATE_LOCK_CLASS}, 0)"
        ))
        .await
}

/// Every partition number.
pub fn all_partitions() -> impl Iterator<Item = i16> {
    0..PARTITIONS
}

/// How far the relay is behind on one source.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backlog {
    pub rows: i64,
    /// Age of the oldest row; 0 when the outbox is empty.
    pub oldest_age_seconds: f64,
    /// Rows in `outbox_parked`, waiting for an operator.
    pub parked: i64,
}

/// Rows waiting in the outbox, the age of the oldest, and parked rows.
pub async fn backlog(client: &impl GenericClient) -> Result<Backlog, tokio_postgres::Error> {
    let row = client
        .query_one(
            r#"SELECT count(*),
                      COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - min(create_time)), 0)::float8,
                      (SELECT count(*) FROM outbox_parked)
               FROM outbox"#,
            &[],
        )
        .await?;
    Ok(Backlog {
        rows: row.get(0),
        oldest_age_seconds: row.get::<_, f64>(1).max(0.0),
        parked: row.get(2),
    })
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

    /// The outbox trigger (the messaging crate's V2 migration) cannot
    /// import the lock classes, the channel or the partition count: it must
    /// spell them as the constants the relay locks and listens with.
    #[test]
    fn the_outbox_trigger_uses_the_relays_lock_classes_and_partitions() {
        use ordermesh_messaging::outbox::{NOTIFY_CHANNEL, WARM_LOCK_CLASS};

        use super::{GATE_LOCK_CLASS, LEASE_LOCK_CLASS, PARTITIONS};

        let runner = ordermesh_messaging::migrations();
        let sql = runner
            .get_migrations()
            .iter()
            .find(|m| m.name() == "outbox_partitions")
            .and_then(|m| m.sql())
            .expect("the V2 outbox migration is embedded");
        for expected in [
            format!("(hashtext(aggregate_id) & {})", PARTITIONS - 1),
            format!("pg_try_advisory_xact_lock_shared({GATE_LOCK_CLASS}, 0)"),
            format!("pg_try_advisory_lock_shared({WARM_LOCK_CLASS}, NEW.partition)"),
            format!("pg_advisory_unlock_shared({WARM_LOCK_CLASS}, NEW.partition)"),
            format!("pg_notify('{NOTIFY_CHANNEL}', NEW.partition::text)"),
        ] {
            assert!(sql.contains(&expected), "V2 does not say {expected}");
        }
        assert_eq!(
            PARTITIONS.count_ones(),
            1,
            "`& (PARTITIONS - 1)` is a modulo"
        );
        let classes = [LEASE_LOCK_CLASS, WARM_LOCK_CLASS, GATE_LOCK_CLASS];
        assert!(
            classes
                .iter()
                .enumerate()
                .all(|(i, c)| !classes[..i].contains(c)),
            "two lock classes share a number"
        );
    }
}
