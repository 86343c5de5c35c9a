//! The consumer inbox: remembers which message ids a consumer has applied,
//! in the same transaction as the effect, so a redelivered message is
//! recognised and skipped. Entries older than the retention window
//! (`INBOX_RETENTION_HOURS`, default a week: far longer than any redelivery)
//! are deleted by [`run_expiry`], so the table does not grow without bound.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use ordermesh_runtime::config::{self, ConfigError, Env};

pub const ENV_RETENTION_HOURS: &str = "INBOX_RETENTION_HOURS";
pub const DEFAULT_RETENTION_HOURS: u64 = 168;
/// How often expired entries are looked for.
pub const EXPIRY_INTERVAL: Duration = Duration::from_secs(60);
/// Entries deleted per statement, so expiry never holds long locks.
pub const EXPIRY_BATCH: i64 = 5_000;

/// The retention window from `INBOX_RETENTION_HOURS` (at least one hour).
pub fn retention_from_env(env: &impl Env) -> Result<Duration, ConfigError> {
    let hours: u64 = config::parse(env, ENV_RETENTION_HOURS, DEFAULT_RETENTION_HOURS)?;
    if hours == 0 {
        return Err(config::invalid(
            ENV_RETENTION_HOURS,
            0,
            "must be at least 1",
        ));
    }
    Ok(Duration::from_secs(hours * 3600))
}

/// Records `message_id` for `consumer`. Returns `false` when it was already
/// recorded: the caller must then skip the effect and acknowledge (the
/// consumer loop then counts the delivery as a duplicate).
#[tracing::instrument(
    skip(tx),
    fields(
        otel.name = "INSERT inbox",
        otel.kind = "client",
        db.system.name = "postgresql",
        db.operation.name = "INSERT",
        db.collection.name = "inbox",
    )
)]
pub async fn record(
    tx: &impl deadpool_postgres::GenericClient,
    consumer: &str,
    message_id: &str,
) -> Result<bool, tokio_postgres::Error> {
    // Prepared once per connection (the pool's statement cache).
    let insert = tx
        .prepare_cached(
            r#"INSERT INTO inbox (consumer, message_id) VALUES ($1, $2)
               ON CONFLICT DO NOTHING"#,
        )
        .await?;
    let inserted = tx.execute(&insert, &[&consumer, &message_id]).await?;
    if inserted == 0 {
        crate::amqp::note_duplicate();
    }
    Ok(inserted == 1)
}

/// Deletes up to `batch` entries received more than `retention` ago, oldest
/// first; returns how many.
pub async fn expire(
    client: &impl tokio_postgres::GenericClient,
    retention: Duration,
    batch: i64,
) -> Result<u64, tokio_postgres::Error> {
    let seconds = retention.as_secs_f64();
    client
        .execute(
            r#"DELETE FROM inbox WHERE ctid = ANY (ARRAY(
                   SELECT ctid FROM inbox
                   WHERE received_time < now() - make_interval(secs => $1)
                   ORDER BY received_time
                   LIMIT $2))"#,
            &[&seconds, &batch],
        )
        .await
}

/// Every [`EXPIRY_INTERVAL`] until `shutdown`, deletes expired entries in
/// batches. Failures are logged and retried at the next interval.
pub async fn run_expiry(
    pool: deadpool_postgres::Pool,
    retention: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    while !shutdown.is_cancelled() {
        let result = async {
            let client = pool.get().await?;
            let mut total = 0;
            loop {
                let n = expire(&**client, retention, EXPIRY_BATCH).await?;
                total += n;
                if n < EXPIRY_BATCH as u64 || shutdown.is_cancelled() {
                    return anyhow::Ok(total);
                }
            }
        }
        .await;
        match result {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, ?retention, "expired inbox entries"),
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "inbox expiry failed; retrying later"
            ),
        }
        tokio::select! {
            () = tokio::time::sleep(EXPIRY_INTERVAL) => {}
            () = shutdown.cancelled() => {}
        }
    }
    Ok(())
}
