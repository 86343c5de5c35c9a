//! Settling an `order.created`: the decision, the debit and the outcome
//! event in one transaction; and rejecting an order the database refuses.

use deadpool_postgres::{Client, Transaction};
use ordermesh_messaging::outbox::{self, OutboxEvent};
use ordermesh_runtime::db::PipelinedTx;
use tokio_postgres::types::ToSql;
use tracing::Instrument as _;

use super::Store;
use crate::Error;
use crate::rules::{self, AccountSnapshot, Decision, Embargo, Order};

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

impl Settlement {
    /// An order whose payment row, with `status`, was written before.
    fn earlier(status: Option<&str>) -> Self {
        if status == Some("CANCELLED") {
            Self::Cancelled
        } else {
            Self::AlreadySettled
        }
    }
}

/// What the decision statement of [`Store::settle_order`] found.
struct Written {
    /// This transaction inserted the payment row.
    decided: bool,
    /// This transaction debited the account.
    debited: bool,
    /// The payment's status as the statement's snapshot saw it.
    previous: Option<String>,
}

impl Store {
    /// Settles `order` exactly once, in one transaction: records
    /// `message_id` in the inbox of `consumer` (a known id changes nothing),
    /// locks the customer's account, decides with [`rules::decide`], records
    /// the decision in `payments` (an order decided or cancelled before
    /// changes nothing), debits on success (with a DEBIT ledger row) and
    /// enqueues the outcome built by `outcome_event`.
    ///
    /// Three round trips: BEGIN, the inbox insert and the account lock,
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
        let tx = PipelinedTx::new(self.pool.get().await?);
        let Some(account) =
            record_and_lock_account(&tx, consumer, message_id, &order.customer_id).await?
        else {
            tx.commit().await?;
            return Ok(Settlement::Duplicate);
        };
        let decision = rules::decide(order, account.as_ref(), embargo);
        let event = outcome_event(&decision);
        let written = write_decision(tx.client(), message_id, order, &decision, &event).await?;
        if !written.decided {
            let previous = decided_before(tx.client(), &order.order_id, written.previous).await?;
            tx.commit().await?;
            return Ok(Settlement::earlier(previous.as_deref()));
        }
        if matches!(decision, Decision::Pay { .. }) && !written.debited {
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
        if !ordermesh_messaging::inbox::record(&tx, consumer, message_id).await? {
            tx.commit().await?;
            return Ok(Settlement::Duplicate);
        }
        if record_failure(&mut tx, message_id, order, reason).await? == Some(false) {
            let status: String = tx
                .query_one(
                    r#"SELECT status FROM payments WHERE order_id = $1"#,
                    &[&order.order_id],
                )
                .await?
                .get(0);
            tx.commit().await?;
            return Ok(Settlement::earlier(Some(&status)));
        }
        let decision = Decision::Fail {
            reason: reason.to_owned(),
        };
        outbox::enqueue(&tx, &outcome_event(&decision)).await?;
        tx.commit().await?;
        Ok(Settlement::Decided(decision))
    }
}

/// Begins `tx` and, in the same flight, records `message_id` in the inbox
/// of `consumer` and locks the account of `customer_id` (a duplicate only
/// took the account lock for nothing): `None` for a known message id, else
/// the account if it exists.
async fn record_and_lock_account(
    tx: &PipelinedTx,
    consumer: &str,
    message_id: &str,
    customer_id: &str,
) -> Result<Option<Option<AccountSnapshot>>, Error> {
    let client = tx.client();
    // The hot path's statements are prepared once per connection.
    let lock_account = client
        .prepare_cached(
            r#"SELECT currency_code, balance_minor
               FROM accounts
               WHERE customer_id = $1
               FOR UPDATE"#,
        )
        .await?;
    let customer: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&customer_id];
    let ((), fresh, account) = tokio::try_join!(
        biased;
        tx.begin(),
        ordermesh_messaging::inbox::record(client, consumer, message_id),
        client.query_opt(&lock_account, &customer),
    )?;
    Ok(fresh.then(|| {
        account.map(|row| AccountSnapshot {
            currency_code: row.get(0),
            balance_minor: row.get(1),
        })
    }))
}

/// Writes `decision` in one statement: the payment row, and only if that
/// is new, the debit of a payment, its DEBIT ledger row and `event` in the
/// outbox.
async fn write_decision(
    tx: &Client,
    message_id: &str,
    order: &Order,
    decision: &Decision,
    event: &OutboxEvent,
) -> Result<Written, Error> {
    let (status, reason, amount_minor, debit) = match decision {
        Decision::Pay { amount_minor } => ("SUCCEEDED", None, *amount_minor, true),
        Decision::Fail { reason } => ("FAILED", Some(reason.as_str()), order.total_minor, false),
    };
    let headers = event.headers_json();
    // The payment row decides: it waits for a concurrent transaction
    // deciding the same order and then does nothing. Only a new
    // payment debits (the balance was checked under the account's lock),
    // writes the ledger row and enqueues the outcome (the outbox columns
    // are ordermesh_messaging::outbox::enqueue's).
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
    let params: Vec<&(dyn ToSql + Sync)> = [
        &order.order_id as &(dyn ToSql + Sync),
        &order.customer_id,
        &amount_minor,
        &order.currency_code,
        &status,
        &reason,
        &message_id,
        &debit,
    ]
    .into_iter()
    .chain(event.columns(&headers))
    .collect();
    let span = outbox::write_span(
        "INSERT payments outbox",
        "payments accounts transactions outbox",
    );
    let row = tx.query_one(&decide, &params).instrument(span).await?;
    Ok(Written {
        decided: row.get("decided"),
        debited: row.get("debited"),
        previous: row.get("previous"),
    })
}

/// The status of the payment that decided `order_id` before: the
/// snapshot's row (`previous`), or (when a concurrent decision committed
/// while this one waited) the committed one.
async fn decided_before(
    tx: &Client,
    order_id: &str,
    previous: Option<String>,
) -> Result<Option<String>, Error> {
    Ok(match previous {
        Some(status) => Some(status),
        None => tx
            .query_opt(
                r#"SELECT status FROM payments WHERE order_id = $1"#,
                &[&order_id],
            )
            .await?
            .map(|r| r.get(0)),
    })
}

/// Records the FAILED decision on `order` in a savepoint: whether the row
/// is new (`Some(false)`: the order was decided or cancelled before), or
/// `None` when the database refuses the row too.
///
/// No account lock: nothing is debited, and the payments primary key alone
/// serialises this with a concurrent settle or cancel.
async fn record_failure(
    tx: &mut Transaction<'_>,
    message_id: &str,
    order: &Order,
    reason: &str,
) -> Result<Option<bool>, Error> {
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
            Ok(Some(inserted == 1))
        }
        Err(e) if e.is_data_rejected() => {
            savepoint.rollback().await?;
            let error = format!("{:#}", anyhow::Error::from(e));
            tracing::warn!(
                error,
                "the database refuses the failed payment too; reporting the failure without it"
            );
            Ok(None)
        }
        Err(e) => Err(e),
    }
}
