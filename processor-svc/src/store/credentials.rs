//! Credentials and the login throttle: what Register and Login store.

use std::time::Duration;

use ordermesh_auth::Role;
use tokio_postgres::Row;

use super::Store;
use crate::Error;
use crate::auth::{Admission, Throttle, ThrottleState};

impl Store {
    /// Whether `customer_id` has credentials or an account: Register
    /// refuses it. A cheap first check; [`Store::register`] checks again.
    #[tracing::instrument(skip(self))]
    pub async fn customer_id_taken(&self, customer_id: &str) -> Result<bool, Error> {
        let conn = self.pool.get().await?;
        let row = conn
            .query_one(
                r#"SELECT EXISTS (SELECT 1 FROM credentials WHERE customer_id = $1)
                       OR EXISTS (SELECT 1 FROM accounts WHERE customer_id = $1)"#,
                &[&customer_id],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Stores the credentials of a new customer; `AlreadyRegistered` if the
    /// id has some (the primary key decides between concurrent Registers)
    /// or has an account (an admin opened it: it is not for the taking).
    /// A CreateAccount committing while this runs is as if it came after.
    #[tracing::instrument(skip(self, password_hash))]
    pub async fn register(
        &self,
        customer_id: &str,
        password_hash: &str,
        role: Role,
    ) -> Result<(), Error> {
        let conn = self.pool.get().await?;
        let inserted = conn
            .execute(
                r#"INSERT INTO credentials (customer_id, password_hash, role)
                   SELECT $1::text, $2::text, $3::text
                   WHERE NOT EXISTS (SELECT 1 FROM accounts WHERE customer_id = $1::text)
                   ON CONFLICT (customer_id) DO NOTHING"#,
                &[&customer_id, &password_hash, &role.as_str()],
            )
            .await?;
        if inserted == 0 {
            return Err(Error::AlreadyRegistered(customer_id.to_owned()));
        }
        Ok(())
    }

    /// The password hash and role of a registered customer.
    #[tracing::instrument(skip(self))]
    pub async fn credentials(&self, customer_id: &str) -> Result<Option<(String, Role)>, Error> {
        let conn = self.pool.get().await?;
        let row = conn
            .query_opt(
                r#"SELECT password_hash, role FROM credentials WHERE customer_id = $1"#,
                &[&customer_id],
            )
            .await?;
        Ok(row.map(|row| {
            let role: &str = row.get("role");
            let role = role
                .parse()
                .expect("the role CHECK allows only known roles");
            (row.get("password_hash"), role)
        }))
    }

    /// How long logins of `customer_id` stay refused, if they are locked
    /// (a read only: [`Store::count_login_attempt`] decides).
    #[tracing::instrument(skip(self))]
    pub async fn login_locked_for(&self, customer_id: &str) -> Result<Option<Duration>, Error> {
        let conn = self.pool.get().await?;
        let row = conn
            .query_opt(
                r#"SELECT failures, last_failure_time, locked_until, forget_time, now() AS now
                   FROM login_throttle
                   WHERE customer_id = $1"#,
                &[&customer_id],
            )
            .await?;
        Ok(
            row.and_then(|row| {
                Throttle::locked_for(Some(&throttle_from_row(&row)), row.get("now"))
            }),
        )
    }

    /// Counts one login attempt of `customer_id`, unless `throttle` says its
    /// logins are locked: in one transaction holding the id's
    /// `login_throttle` row, so concurrent attempts (on any replica) are
    /// counted one after the other. Counting also deletes a few rows that
    /// have been forgotten, which keeps the table to the ids failing now.
    #[tracing::instrument(skip(self, throttle))]
    pub async fn count_login_attempt(
        &self,
        customer_id: &str,
        throttle: &Throttle,
    ) -> Result<Admission, Error> {
        let mut conn = self.pool.get().await?;
        let tx = conn.transaction().await?;
        // A new row is born forgotten (forget_time = now): a fresh start.
        let row = tx
            .query_one(
                r#"INSERT INTO login_throttle (customer_id, failures, last_failure_time, forget_time)
                   VALUES ($1, 1, now(), now())
                   ON CONFLICT (customer_id) DO UPDATE SET customer_id = EXCLUDED.customer_id
                   RETURNING failures, last_failure_time, locked_until, forget_time, now() AS now"#,
                &[&customer_id],
            )
            .await?;
        let admission = throttle.admit(Some(&throttle_from_row(&row)), row.get("now"));
        if let Admission::Counted(state) = &admission {
            let failures = i32::try_from(state.failures).unwrap_or(i32::MAX);
            tx.execute(
                r#"UPDATE login_throttle
                   SET failures = $2, last_failure_time = $3, locked_until = $4, forget_time = $5
                   WHERE customer_id = $1"#,
                &[
                    &customer_id,
                    &failures,
                    &state.last_failure,
                    &state.locked_until,
                    &state.forget_time,
                ],
            )
            .await?;
            tx.execute(
                r#"DELETE FROM login_throttle
                   WHERE customer_id IN (
                       SELECT customer_id FROM login_throttle
                       WHERE forget_time < now() AND customer_id <> $1
                       ORDER BY forget_time
                       LIMIT 16
                       FOR UPDATE SKIP LOCKED)"#,
                &[&customer_id],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(admission)
    }

    /// A successful login: the id's failures are forgotten.
    #[tracing::instrument(skip(self))]
    pub async fn login_succeeded(&self, customer_id: &str) -> Result<(), Error> {
        let conn = self.pool.get().await?;
        conn.execute(
            r#"DELETE FROM login_throttle WHERE customer_id = $1"#,
            &[&customer_id],
        )
        .await?;
        Ok(())
    }
}

fn throttle_from_row(row: &Row) -> ThrottleState {
    let failures: i32 = row.get("failures");
    ThrottleState {
        failures: u32::try_from(failures).unwrap_or(0),
        last_failure: row.get("last_failure_time"),
        locked_until: row.get("locked_until"),
        forget_time: row.get("forget_time"),
    }
}
