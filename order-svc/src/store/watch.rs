//! The statements of WatchOrder's hub (`crate::watch`): the channel its
//! LISTEN connection listens on, and the shared advisory locks of the
//! watched buckets, held on a connection of their own ([`BucketLocks`]).
//! The trigger of `migrations/V3__order_watch_notify.sql` uses the same
//! numbers; a unit test holds it to these constants.

use std::time::Duration;

use anyhow::Context as _;
use ordermesh_runtime::db::{DbConfig, Dedicated};
use tokio_postgres::Statement;

/// The channel the trigger notifies, with the order id as payload.
pub const CHANNEL: &str = "ordermesh_order_changes";
/// First key of the bucket locks (the second is the bucket).
pub const LOCK_CLASS: i32 = 1_869_414_410;
/// Orders are spread over this many buckets (`hashtext(order_id) & 1023`).
pub const BUCKETS: usize = 1024;
/// How the hub's bucket-lock connection shows in `pg_stat_activity`.
pub const LOCK_APPLICATION_NAME: &str = "ordermesh-order-watch-locks";

/// Each order id's bucket, as the trigger computes it.
const BUCKET_OF: &str = r#"SELECT id, hashtext(id) & 1023 FROM unnest($1::text[]) AS id"#;

/// The hub's bucket-lock connection and its statements, prepared once per
/// connection. Dropping it closes the connection, releasing every lock.
pub struct BucketLocks {
    conn: Dedicated,
    buckets: Statement,
    lock: Statement,
    unlock: Statement,
}

impl BucketLocks {
    /// Connects to `database` under [`LOCK_APPLICATION_NAME`].
    #[tracing::instrument(skip_all)]
    pub async fn connect(database: &DbConfig) -> anyhow::Result<Self> {
        let mut config = database.clone();
        config.application_name(LOCK_APPLICATION_NAME);
        let conn = Dedicated::connect(&config)
            .await
            .context("connect the lock session")?;
        Ok(Self {
            buckets: conn
                .prepare(BUCKET_OF)
                .await
                .context("prepare the bucket lookup")?,
            lock: conn
                .prepare(
                    r#"SELECT pg_advisory_lock_shared($1::int4, b)
                       FROM unnest($2::int4[]) AS b"#,
                )
                .await
                .context("prepare the lock statement")?,
            unlock: conn
                .prepare(
                    r#"SELECT pg_advisory_unlock_shared($1::int4, b)
                       FROM unnest($2::int4[]) AS b"#,
                )
                .await
                .context("prepare the unlock statement")?,
            conn,
        })
    }

    /// The bucket of each order id.
    #[tracing::instrument(skip_all, fields(orders = ids.len()))]
    pub async fn buckets(&self, ids: &[String]) -> anyhow::Result<Vec<(String, usize)>> {
        let rows = self
            .conn
            .query(&self.buckets, &[&ids])
            .await
            .context("look up buckets")?;
        rows.iter()
            .map(|row| {
                let bucket: i32 = row.try_get(1)?;
                Ok((row.try_get::<_, String>(0)?, bucket as usize % BUCKETS))
            })
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()
            .context("read buckets")
    }

    /// Takes the shared locks of `buckets`. Waits for writers of these
    /// buckets that skipped the NOTIFY to commit.
    #[tracing::instrument(skip_all, fields(buckets = buckets.len()))]
    pub async fn lock(&self, buckets: &[i32]) -> anyhow::Result<()> {
        self.conn
            .execute(&self.lock, &[&LOCK_CLASS, &buckets])
            .await
            .context("take bucket locks")?;
        Ok(())
    }

    /// Releases the shared locks of `buckets`.
    #[tracing::instrument(skip_all, fields(buckets = buckets.len()))]
    pub async fn unlock(&self, buckets: &[i32]) -> anyhow::Result<()> {
        self.conn
            .execute(&self.unlock, &[&LOCK_CLASS, &buckets])
            .await
            .context("release bucket locks")?;
        Ok(())
    }

    /// Resolves once the connection ended (and the locks with it).
    pub async fn closed(&self) -> anyhow::Error {
        self.conn.closed().await
    }

    /// Checks that the connection answers within `timeout`.
    pub async fn ping(&self, timeout: Duration) -> anyhow::Result<()> {
        self.conn.ping(timeout).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The trigger cannot import these constants: it must spell them the
    /// same.
    #[test]
    fn the_v3_trigger_uses_the_hubs_lock_class_buckets_and_channel() {
        let sql = include_str!("../../migrations/V3__order_watch_notify.sql");
        let gate = format!(
            "pg_try_advisory_xact_lock({LOCK_CLASS}, hashtext(NEW.order_id) & {})",
            BUCKETS - 1
        );
        assert!(sql.contains(&gate), "the trigger's lock is not {gate}");
        assert!(BUCKET_OF.contains(&format!("hashtext(id) & {}", BUCKETS - 1)));
        let notify = format!("pg_notify('{CHANNEL}', NEW.order_id)");
        assert!(sql.contains(&notify), "the trigger does not {notify}");
        assert!(BUCKETS.is_power_of_two());
    }
}
