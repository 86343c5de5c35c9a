//! All SQL of the service: [`Store`] owns the connection pool and has one
//! method per operation. Methods that change money run in one transaction
//! and lock the account row first, so concurrent deposits and payments of
//! one customer serialise on it.

use deadpool_postgres::Pool;
use ordermesh_platform::outbox::{self, OutboxEvent};
use tokio_postgres::Row;

use crate::Error;
use crate::account::{Account, Deposit, NewAccount};
use crate::rules::{self, AccountSnapshot, Decision, Embargo, Order};

/// History table of this service's migrations.
const HISTORY_TABLE: &str = "processor_schema_history";

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// The service's migrations (the platform adds the outbox and inbox).
pub fn migrations() -> refinery::Runner {
    let mut runner = embedded::migrations::runner();
    runner.set_migration_table_name(HISTORY_TABLE);
    runner
}

/// What happened to an `order.created` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// This message id was applied before; nothing changed.
    Duplicate,
    /// Another message already decided this order; nothing changed.
    AlreadySettled,
    /// The order was decided now, and the outcome enqueued.
    Decided(Decision),
}

/// The processor's database.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("pool", &self.pool.status())
            .finish()
    }
}

impl Store {
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// Opens an account with a zero balance; `AccountExists` if it is open.
    #[tracing::instrument(skip(self))]
    pub async fn create_account(&self, new: &NewAccount) -> Result<Account, Error> {
        let conn = self.pool.get().await?;
        let row = conn
            .query_opt(
                r#"INSERT INTO accounts (customer_id, currency_code)
                   VALUES ($1, $2)
                   ON CONFLICT (customer_id) DO NOTHING
                   RETURNING customer_id, currency_code, balance_minor, create_time, update_time"#,
                &[&new.customer_id, &new.currency_code],
            )
            .await?;
        row.map(account_from_row)
            .ok_or_else(|| Error::AccountExists(new.customer_id.clone()))
    }

    #[tracing::instrument(skip(self))]
    pub async fn get_account(&self, customer_id: &str) -> Result<Account, Error> {
        let conn = self.pool.get().await?;
        let row = conn
            .query_opt(
                r#"SELECT customer_id, currency_code, balance_minor, create_time, update_time
                   FROM accounts
                   WHERE customer_id = $1"#,
                &[&customer_id],
            )
            .await?;
        row.map(account_from_row)
            .ok_or_else(|| Error::AccountNotFound(customer_id.to_owned()))
    }

    /// Applies `deposit` unless its id was applied before. A known id with
    /// the same customer and amount returns the account as it is now; with
    /// other content it is `DepositConflict`.
    #[tracing::instrument(skip(self))]
    pub async fn deposit(&self, deposit: &Deposit) -> Result<Account, Error> {
        let mut conn = self.pool.get().await?;
        let tx = conn.transaction().await?;
        let account = tx
            .query_opt(
                r#"SELECT customer_id, currency_code, balance_minor, create_time, update_time
                   FROM accounts
                   WHERE customer_id = $1
                   FOR UPDATE"#,
                &[&deposit.customer_id],
            )
            .await?
            .map(account_from_row)
            .ok_or_else(|| Error::AccountNotFound(deposit.customer_id.clone()))?;

        // Waits for a concurrent transaction holding the same id, then sees it.
        let inserted = tx
            .execute(
                r#"INSERT INTO deposits (deposit_id, customer_id, amount_minor)
                   VALUES ($1, $2, $3)
                   ON CONFLICT (deposit_id) DO NOTHING"#,
                &[
                    &deposit.deposit_id,
                    &deposit.customer_id,
                    &deposit.amount_minor,
                ],
            )
            .await?;
        if inserted == 0 {
            let earlier = tx
                .query_one(
                    r#"SELECT customer_id, amount_minor FROM deposits WHERE deposit_id = $1"#,
                    &[&deposit.deposit_id],
                )
                .await?;
            let same = earlier.get::<_, String>(0) == deposit.customer_id
                && earlier.get::<_, i64>(1) == deposit.amount_minor;
            tx.rollback().await?;
            return if same {
                Ok(account)
            } else {
                Err(Error::DepositConflict(deposit.deposit_id.clone()))
            };
        }

        let balance = account
            .balance_minor
            .checked_add(deposit.amount_minor)
            .ok_or(Error::BalanceOverflow)?;
        let row = tx
            .query_one(
                r#"UPDATE accounts
                   SET balance_minor = $2, update_time = now()
                   WHERE customer_id = $1
                   RETURNING customer_id, currency_code, balance_minor, create_time, update_time"#,
                &[&deposit.customer_id, &balance],
            )
            .await?;
        tx.commit().await?;
        Ok(account_from_row(row))
    }

    /// Settles `order` exactly once, in one transaction: records
    /// `message_id` in the inbox of `consumer` (a known id changes nothing),
    /// locks the customer's account, decides with [`rules::decide`], records
    /// the decision in `payments` (an order decided before changes nothing),
    /// debits on success and enqueues the outcome built by `outcome_event`.
    #[tracing::instrument(skip(self, order, embargo, outcome_event), fields(order_id = %order.order_id))]
    pub async fn settle_order(
        &self,
        consumer: &str,
        message_id: &str,
        order: &Order,
        embargo: &Embargo,
        outcome_event: impl FnOnce(&Decision) -> OutboxEvent,
    ) -> Result<Settlement, Error> {
        let mut conn = self.pool.get().await?;
        let tx = conn.transaction().await?;
        if !ordermesh_platform::inbox::record(&tx, consumer, message_id).await? {
            tx.commit().await?;
            return Ok(Settlement::Duplicate);
        }

        // The hot path's statements are prepared once per connection.
        let lock_account = tx
            .prepare_cached(
                r#"SELECT currency_code, balance_minor
                   FROM accounts
                   WHERE customer_id = $1
                   FOR UPDATE"#,
            )
            .await?;
        let account = tx
            .query_opt(&lock_account, &[&order.customer_id])
            .await?
            .map(|row| AccountSnapshot {
                currency_code: row.get(0),
                balance_minor: row.get(1),
            });
        let decision = rules::decide(order, account.as_ref(), embargo);

        let (status, reason, amount_minor) = match &decision {
            Decision::Pay { amount_minor } => ("SUCCEEDED", None, *amount_minor),
            Decision::Fail { reason } => ("FAILED", Some(reason.as_str()), order.total_minor),
        };
        // Waits for a concurrent transaction deciding the same order, then
        // sees its row: whoever inserts first decides, the other does nothing.
        let insert_payment = tx
            .prepare_cached(
                r#"INSERT INTO payments
                       (order_id, customer_id, amount_minor, currency_code, status, reason, message_id)
                   VALUES ($1, $2, $3, $4, $5, $6, $7)
                   ON CONFLICT (order_id) DO NOTHING"#,
            )
            .await?;
        let inserted = tx
            .execute(
                &insert_payment,
                &[
                    &order.order_id,
                    &order.customer_id,
                    &amount_minor,
                    &order.currency_code,
                    &status,
                    &reason,
                    &message_id,
                ],
            )
            .await?;
        if inserted == 0 {
            tx.commit().await?;
            return Ok(Settlement::AlreadySettled);
        }

        if let Decision::Pay { amount_minor } = decision {
            // Exactly one row, or the transaction fails and rolls back.
            let debit = tx
                .prepare_cached(
                    r#"UPDATE accounts
                       SET balance_minor = balance_minor - $2, update_time = now()
                       WHERE customer_id = $1 AND balance_minor >= $2
                       RETURNING balance_minor"#,
                )
                .await?;
            tx.query_one(&debit, &[&order.customer_id, &amount_minor])
                .await?;
        }
        outbox::enqueue(&tx, &outcome_event(&decision)).await?;
        tx.commit().await?;
        Ok(Settlement::Decided(decision))
    }
}

fn account_from_row(row: Row) -> Account {
    Account {
        customer_id: row.get("customer_id"),
        currency_code: row.get("currency_code"),
        balance_minor: row.get("balance_minor"),
        create_time: row.get("create_time"),
        update_time: row.get("update_time"),
    }
}
