//! All SQL of the service: [`Store`] owns the connection pool and has one
//! method per operation. Methods that change money run in one transaction
//! and lock the account row first, then touch `payments`, so concurrent
//! deposits, payments and refunds of one customer serialise on it (and
//! cannot deadlock). Each movement of a balance also writes a row of the
//! `transactions` ledger in the same transaction, with the balance it left.
//!
//! The `payments` row of an order is its one decision: SUCCEEDED or FAILED
//! by [`Store::settle_order`], or CANCELLED (a tombstone) when
//! [`Store::cancel_order`] came first; a cancel turns SUCCEEDED into
//! REFUNDED. Whoever inserts the row first decides; the primary key and the
//! guarded status update make every later message a no-op.

use std::time::Duration;
use tracing::Instrument as _;

use deadpool_postgres::Pool;
use ordermesh_platform::auth::Role;
use ordermesh_platform::outbox::{self, OutboxEvent};
use tokio_postgres::Row;

use crate::Error;
use crate::account::{Account, Deposit, NewAccount};
use crate::auth::{Admission, Throttle, ThrottleState};
use crate::ledger::{self, TransactionKind, TransactionQuery};
use crate::rules::{self, AccountSnapshot, Cancellation, Decision, Embargo, Order};

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
    /// The order was cancelled before it was charged; nothing changed.
    Cancelled,
    /// The order was decided now, and the outcome enqueued.
    Decided(Decision),
}

/// What happened to an `order.cancelled` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// This message id was applied before; nothing changed.
    Duplicate,
    /// The order had no payment yet: a tombstone now makes a later
    /// `order.created` a no-op.
    NeverCharged,
    /// The debit was given back now, and `payment.refunded` enqueued.
    Refunded { amount_minor: i64 },
    /// Another cancel message already gave the debit back; nothing changed.
    AlreadyRefunded,
    /// Another cancel message already stopped the charge; nothing changed.
    AlreadyCancelled,
    /// The order's payment failed, so nothing was taken; nothing changed.
    NothingToRefund,
    /// The order was charged to another customer than the event names.
    /// Nothing changed and the message id was not recorded: the event
    /// contradicts the ledger, so no money moves on it.
    CustomerMismatch { charged_customer_id: String },
}

/// A refund just given, for the event that reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    pub order_id: String,
    pub customer_id: String,
    pub amount_minor: i64,
    /// The debit's currency.
    pub currency_code: String,
}

/// One page of [`Store::list_transactions`], newest first.
#[derive(Debug, Clone)]
pub struct TransactionPage {
    pub transactions: Vec<ledger::Transaction>,
    /// Whether older transactions follow.
    pub more: bool,
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

    /// Applies `deposit` unless its id was applied before, with its DEPOSIT
    /// ledger row. A known id with the same customer and amount returns the
    /// account as it is now; with other content it is `DepositConflict`.
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
        tx.execute(
            r#"INSERT INTO transactions
                   (customer_id, kind, amount_minor, balance_after_minor, deposit_id)
               VALUES ($1, 'DEPOSIT', $2, $3, $4)"#,
            &[
                &deposit.customer_id,
                &deposit.amount_minor,
                &balance,
                &deposit.deposit_id,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(account_from_row(row))
    }

    /// Settles `order` exactly once, in one transaction: records
    /// `message_id` in the inbox of `consumer` (a known id changes nothing),
    /// locks the customer's account, decides with [`rules::decide`], records
    /// the decision in `payments` (an order decided or cancelled before
    /// changes nothing), debits on success (with a DEBIT ledger row) and
    /// enqueues the outcome built by `outcome_event`.
    ///
    /// Four round trips: BEGIN; the inbox insert and the account lock,
    /// pipelined; the decision's writes as one statement; COMMIT.
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
        // The hot path's statements are prepared once per connection.
        let lock_account = tx
            .prepare_cached(
                r#"SELECT currency_code, balance_minor
                   FROM accounts
                   WHERE customer_id = $1
                   FOR UPDATE"#,
            )
            .await?;
        // Sent together: a duplicate only took the account lock for nothing.
        let customer: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&order.customer_id];
        let (fresh, account) = tokio::try_join!(
            ordermesh_platform::inbox::record(&tx, consumer, message_id),
            tx.query_opt(&lock_account, &customer),
        )?;
        if !fresh {
            tx.commit().await?;
            return Ok(Settlement::Duplicate);
        }
        let account = account.map(|row| AccountSnapshot {
            currency_code: row.get(0),
            balance_minor: row.get(1),
        });
        let decision = rules::decide(order, account.as_ref(), embargo);

        let (status, reason, amount_minor, debit) = match &decision {
            Decision::Pay { amount_minor } => ("SUCCEEDED", None, *amount_minor, true),
            Decision::Fail { reason } => {
                ("FAILED", Some(reason.as_str()), order.total_minor, false)
            }
        };
        let event = outcome_event(&decision);
        let headers = event.headers_json();
        // The payment row decides: it waits for a concurrent transaction
        // deciding the same order and then does nothing. Only a new
        // payment debits (the balance was checked under the account's lock),
        // writes the ledger row and enqueues the outcome (the outbox columns
        // are platform::outbox::enqueue's).
        let decide = tx
            .prepare_cached(
                r#"WITH payment AS (
                       INSERT INTO payments
                           (order_id, customer_id, amount_minor, currency_code, status, reason,
                            message_id)
                       VALUES ($1, $2, $3, $4, $5, $6, $7)
                       ON CONFLICT (order_id) DO NOTHING
                       RETURNING order_id
                   ), debit AS (
                       UPDATE accounts
                       SET balance_minor = balance_minor - $3, update_time = now()
                       WHERE customer_id = $2 AND balance_minor >= $3 AND $8
                         AND EXISTS (SELECT 1 FROM payment)
                       RETURNING balance_minor
                   ), ledger AS (
                       INSERT INTO transactions
                           (customer_id, kind, amount_minor, balance_after_minor, order_id)
                       SELECT $2, 'DEBIT', -$3, balance_minor, $1 FROM debit
                   ), event AS (
                       INSERT INTO outbox (event_id, aggregate_id, routing_key, event_type,
                                           payload, headers)
                       SELECT $9, $10, $11, $12, $13, $14 FROM payment
                   )
                   SELECT EXISTS (SELECT 1 FROM payment) AS decided,
                          EXISTS (SELECT 1 FROM debit) AS debited,
                          (SELECT status FROM payments WHERE order_id = $1) AS previous"#,
            )
            .await?;
        let span = outbox::write_span(
            "INSERT payments outbox",
            "payments accounts transactions outbox",
        );
        let row = tx
            .query_one(
                &decide,
                &[
                    &order.order_id,
                    &order.customer_id,
                    &amount_minor,
                    &order.currency_code,
                    &status,
                    &reason,
                    &message_id,
                    &debit,
                    &event.event_id,
                    &event.aggregate_id,
                    &event.routing_key,
                    &event.event_type,
                    &event.payload,
                    &headers,
                ],
            )
            .instrument(span)
            .await?;
        if !row.get::<_, bool>("decided") {
            // The snapshot's row, or (when a concurrent decision committed
            // while this one waited) the committed one.
            let previous: Option<String> = match row.get("previous") {
                Some(status) => Some(status),
                None => tx
                    .query_opt(
                        r#"SELECT status FROM payments WHERE order_id = $1"#,
                        &[&order.order_id],
                    )
                    .await?
                    .map(|r| r.get(0)),
            };
            tx.commit().await?;
            return Ok(if previous.as_deref() == Some("CANCELLED") {
                Settlement::Cancelled
            } else {
                Settlement::AlreadySettled
            });
        }
        if debit && !row.get::<_, bool>("debited") {
            // The balance was checked under the account's row lock, so this
            // cannot happen; never commit a payment without its debit.
            return Err(Error::Internal(format!(
                "the debit of order {} found no balance to take",
                order.order_id
            )));
        }
        tx.commit().await?;
        Ok(Settlement::Decided(decision))
    }

    /// Fails `order` with `reason` after [`Store::settle_order`] was refused
    /// by the database (the event is poison: the same data would be refused
    /// again), in a fresh transaction: records `message_id` in the inbox of
    /// `consumer` (a known id changes nothing), records the FAILED decision
    /// in `payments` unless the order was decided or cancelled before, and
    /// enqueues the `payment.failed` built by `outcome_event`, so the order
    /// ends instead of waiting for ever. Nothing is debited. When the
    /// database refuses the `payments` row as well, the event is sent
    /// without it.
    #[tracing::instrument(skip(self, order, outcome_event), fields(order_id = %order.order_id))]
    pub async fn reject_order(
        &self,
        consumer: &str,
        message_id: &str,
        order: &Order,
        reason: &str,
        outcome_event: impl FnOnce(&Decision) -> OutboxEvent,
    ) -> Result<Settlement, Error> {
        let mut conn = self.pool.get().await?;
        let mut tx = conn.transaction().await?;
        if !ordermesh_platform::inbox::record(&tx, consumer, message_id).await? {
            tx.commit().await?;
            return Ok(Settlement::Duplicate);
        }

        // No account lock: nothing is debited, and the payments primary key
        // alone serialises this with a concurrent settle or cancel.
        let recorded = {
            let savepoint = tx.transaction().await?;
            let inserted = savepoint
                .execute(
                    r#"INSERT INTO payments
                           (order_id, customer_id, amount_minor, currency_code, status, reason, message_id)
                       VALUES ($1, $2, $3, $4, 'FAILED', $5, $6)
                       ON CONFLICT (order_id) DO NOTHING"#,
                    &[
                        &order.order_id,
                        &order.customer_id,
                        &order.total_minor,
                        &order.currency_code,
                        &reason,
                        &message_id,
                    ],
                )
                .await;
            match inserted.map_err(Error::from) {
                Ok(inserted) => {
                    savepoint.commit().await?;
                    Some(inserted == 1)
                }
                Err(e) if e.is_data_rejected() => {
                    savepoint.rollback().await?;
                    let error = format!("{:#}", anyhow::Error::from(e));
                    tracing::warn!(
                        error,
                        "the database refuses the failed payment too; reporting the failure without it"
                    );
                    None
                }
                Err(e) => return Err(e),
            }
        };
        if recorded == Some(false) {
            let status: String = tx
                .query_one(
                    r#"SELECT status FROM payments WHERE order_id = $1"#,
                    &[&order.order_id],
                )
                .await?
                .get(0);
            tx.commit().await?;
            return Ok(if status == "CANCELLED" {
                Settlement::Cancelled
            } else {
                Settlement::AlreadySettled
            });
        }
        let decision = Decision::Fail {
            reason: reason.to_owned(),
        };
        outbox::enqueue(&tx, &outcome_event(&decision)).await?;
        tx.commit().await?;
        Ok(Settlement::Decided(decision))
    }

    /// Cancels an order exactly once, in one transaction: records
    /// `message_id` in the inbox of `consumer` (a known id changes nothing),
    /// locks the customer's account if there is one, then either leaves a
    /// CANCELLED tombstone (the order had no payment, and now never will) or
    /// refunds a SUCCEEDED payment: REFUNDED, the balance credited, a REFUND
    /// ledger row and the event built by `refund_event`. Any other payment
    /// changes nothing.
    #[tracing::instrument(skip(self, cancellation, refund_event), fields(order_id = %cancellation.order_id))]
    pub async fn cancel_order(
        &self,
        consumer: &str,
        message_id: &str,
        cancellation: &Cancellation,
        refund_event: impl FnOnce(&Refund) -> OutboxEvent,
    ) -> Result<CancelOutcome, Error> {
        let mut conn = self.pool.get().await?;
        let tx = conn.transaction().await?;
        if !ordermesh_platform::inbox::record(&tx, consumer, message_id).await? {
            tx.commit().await?;
            return Ok(CancelOutcome::Duplicate);
        }

        // The lock order of settle_order: account, then payments. A cancel
        // and a charge of one order serialise here when the account exists,
        // and on the payments primary key when it does not.
        tx.execute(
            r#"SELECT 1 FROM accounts WHERE customer_id = $1 FOR UPDATE"#,
            &[&cancellation.customer_id],
        )
        .await?;
        let inserted = tx
            .execute(
                r#"INSERT INTO payments
                       (order_id, customer_id, amount_minor, currency_code, status, message_id)
                   VALUES ($1, $2, 0, 'XXX', 'CANCELLED', $3)
                   ON CONFLICT (order_id) DO NOTHING"#,
                &[
                    &cancellation.order_id,
                    &cancellation.customer_id,
                    &message_id,
                ],
            )
            .await?;
        if inserted == 1 {
            tx.commit().await?;
            return Ok(CancelOutcome::NeverCharged);
        }

        // Only a SUCCEEDED payment is refunded, and only once: a concurrent
        // cancel waits for this row and then no longer matches.
        let refunded = tx
            .query_opt(
                r#"UPDATE payments
                   SET status = 'REFUNDED'
                   WHERE order_id = $1 AND customer_id = $2 AND status = 'SUCCEEDED'
                   RETURNING amount_minor, currency_code"#,
                &[&cancellation.order_id, &cancellation.customer_id],
            )
            .await?;
        let Some(refunded) = refunded else {
            let payment = tx
                .query_one(
                    r#"SELECT status, customer_id FROM payments WHERE order_id = $1"#,
                    &[&cancellation.order_id],
                )
                .await?;
            let outcome = match payment.get::<_, &str>(0) {
                "SUCCEEDED" => CancelOutcome::CustomerMismatch {
                    charged_customer_id: payment.get(1),
                },
                "FAILED" => CancelOutcome::NothingToRefund,
                "CANCELLED" => CancelOutcome::AlreadyCancelled,
                // REFUNDED, the only other status the CHECK allows.
                _ => CancelOutcome::AlreadyRefunded,
            };
            if matches!(outcome, CancelOutcome::CustomerMismatch { .. }) {
                tx.rollback().await?;
            } else {
                tx.commit().await?;
            }
            return Ok(outcome);
        };

        let refund = Refund {
            order_id: cancellation.order_id.clone(),
            customer_id: cancellation.customer_id.clone(),
            amount_minor: refunded.get(0),
            currency_code: refunded.get(1),
        };
        // The account is locked above; a balance that would overflow fails
        // the statement (SQLSTATE 22003), which rolls everything back.
        let balance: i64 = tx
            .query_one(
                r#"UPDATE accounts
                   SET balance_minor = balance_minor + $2, update_time = now()
                   WHERE customer_id = $1
                   RETURNING balance_minor"#,
                &[&refund.customer_id, &refund.amount_minor],
            )
            .await?
            .get(0);
        tx.execute(
            r#"INSERT INTO transactions
                   (customer_id, kind, amount_minor, balance_after_minor, order_id)
               VALUES ($1, 'REFUND', $2, $3, $4)"#,
            &[
                &refund.customer_id,
                &refund.amount_minor,
                &balance,
                &refund.order_id,
            ],
        )
        .await?;
        outbox::enqueue(&tx, &refund_event(&refund)).await?;
        tx.commit().await?;
        Ok(CancelOutcome::Refunded {
            amount_minor: refund.amount_minor,
        })
    }

    /// One page of the customer's ledger, newest first, older than
    /// `query.before_seq` when set; `AccountNotFound` for an unknown account.
    #[tracing::instrument(skip(self))]
    pub async fn list_transactions(
        &self,
        query: &TransactionQuery,
    ) -> Result<TransactionPage, Error> {
        let conn = self.pool.get().await?;
        // One row more than asked tells whether another page follows.
        let limit = i64::try_from(query.page_size)
            .unwrap_or(i64::MAX)
            .saturating_add(1);
        let rows = conn
            .query(
                r#"SELECT seq, customer_id, kind, amount_minor, balance_after_minor,
                          order_id, deposit_id, create_time
                   FROM transactions
                   WHERE customer_id = $1 AND ($2::bigint IS NULL OR seq < $2)
                   ORDER BY seq DESC
                   LIMIT $3"#,
                &[&query.customer_id, &query.before_seq, &limit],
            )
            .await?;
        // Accounts are never deleted, so asking afterwards is as good.
        if rows.is_empty()
            && conn
                .query_opt(
                    r#"SELECT 1 FROM accounts WHERE customer_id = $1"#,
                    &[&query.customer_id],
                )
                .await?
                .is_none()
        {
            return Err(Error::AccountNotFound(query.customer_id.clone()));
        }
        let more = rows.len() > query.page_size;
        let transactions = rows
            .into_iter()
            .take(query.page_size)
            .map(transaction_from_row)
            .collect();
        Ok(TransactionPage { transactions, more })
    }

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

fn transaction_from_row(row: Row) -> ledger::Transaction {
    let kind: &str = row.get("kind");
    ledger::Transaction {
        seq: row.get("seq"),
        customer_id: row.get("customer_id"),
        kind: TransactionKind::from_column(kind).expect("the kind CHECK allows only known kinds"),
        amount_minor: row.get("amount_minor"),
        balance_after_minor: row.get("balance_after_minor"),
        order_id: row.get("order_id"),
        deposit_id: row.get("deposit_id"),
        create_time: row.get("create_time"),
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
