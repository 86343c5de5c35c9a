//! Relay partition leases as PostgreSQL shows them (`pg_locks`). The lock
//! class and connection names are the relay's own constants, passed in by
//! the caller (`relay::store`), so the test kit depends on no service.

use std::collections::HashSet;

use tokio_postgres::Client;

/// How the relay names its leases: session advisory locks `(class,
/// partition)` held on connections named `application_prefix + instance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseLocks {
    /// `relay::store::LEASE_LOCK_CLASS`.
    pub class: i32,
    /// `relay::store::LEASE_APPLICATION_PREFIX`.
    pub application_prefix: &'static str,
}

impl LeaseLocks {
    /// Partitions leased by any relay on `db`'s database.
    pub async fn count(&self, db: &Client) -> Result<i64, tokio_postgres::Error> {
        let row = db
            .query_one(
                r#"SELECT count(*) FROM pg_locks
                   WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND classid = $1
                     AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"#,
                &[&self.oid()],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Partitions of `db`'s database leased by relay `instance`
    /// (its `RELAY_INSTANCE`).
    pub async fn of_instance(
        &self,
        db: &Client,
        instance: &str,
    ) -> Result<HashSet<i16>, tokio_postgres::Error> {
        let rows = db
            .query(
                r#"SELECT l.objid::int8::int2 FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                   WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                     AND l.classid = $1 AND a.application_name = $2
                     AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"#,
                &[
                    &self.oid(),
                    &format!("{}{instance}", self.application_prefix),
                ],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// The class as PostgreSQL stores it in `pg_locks.classid` (an `oid`).
    fn oid(&self) -> u32 {
        self.class as u32
    }
}
