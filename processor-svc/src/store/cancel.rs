//! Cancelling an order: a tombstone before the charge, a refund after it.

use deadpool_postgres::Transaction;
use ordermesh_messaging::outbox::{self, OutboxEvent};

use super::Store;
use crate::Error;
use crate::rules::Cancellation;

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

impl Store {
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
        if !ordermesh_messaging::inbox::record(&tx, consumer, message_id).await? {
            tx.commit().await?;
            return Ok(CancelOutcome::Duplicate);
        }
        lock_account(&tx, &cancellation.customer_id).await?;
        if leave_tombstone(&tx, message_id, cancellation).await? {
            tx.commit().await?;
            return Ok(CancelOutcome::NeverCharged);
        }
        let Some(refund) = mark_refunded(&tx, cancellation).await? else {
            let outcome = why_no_refund(&tx, &cancellation.order_id).await?;
            if matches!(outcome, CancelOutcome::CustomerMismatch { .. }) {
                tx.rollback().await?;
            } else {
                tx.commit().await?;
            }
            return Ok(outcome);
        };
        credit_refund(&tx, &refund).await?;
        outbox::enqueue(&tx, &refund_event(&refund)).await?;
        tx.commit().await?;
        Ok(CancelOutcome::Refunded {
            amount_minor: refund.amount_minor,
        })
    }
}

/// Locks the account of `customer_id`, if there is one.
///
/// The lock order of settle_order: account, then payments. A cancel and a
/// charge of one order serialise here when the account exists, and on the
/// payments primary key when it does not.
async fn lock_account(tx: &Transaction<'_>, customer_id: &str) -> Result<(), Error> {
    tx.execute(
        r#"SELECT 1 FROM accounts WHERE customer_id = $1 FOR UPDATE"#,
        &[&customer_id],
    )
    .await?;
    Ok(())
}

/// Inserts a CANCELLED payment unless the order has one: whether it did
/// (the order was never charged, and now never will be).
async fn leave_tombstone(
    tx: &Transaction<'_>,
    message_id: &str,
    cancellation: &Cancellation,
) -> Result<bool, Error> {
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
    Ok(inserted == 1)
}

/// Turns the order's SUCCEEDED payment by the customer into REFUNDED: the
/// refund to give, or `None` if there is no such payment.
///
/// Only a SUCCEEDED payment is refunded, and only once: a concurrent cancel
/// waits for this row and then no longer matches.
async fn mark_refunded(
    tx: &Transaction<'_>,
    cancellation: &Cancellation,
) -> Result<Option<Refund>, Error> {
    let refunded = tx
        .query_opt(
            r#"UPDATE payments
               SET status = 'REFUNDED'
               WHERE order_id = $1 AND customer_id = $2 AND status = 'SUCCEEDED'
               RETURNING amount_minor, currency_code"#,
            &[&cancellation.order_id, &cancellation.customer_id],
        )
        .await?;
    Ok(refunded.map(|refunded| Refund {
        order_id: cancellation.order_id.clone(),
        customer_id: cancellation.customer_id.clone(),
        amount_minor: refunded.get(0),
        currency_code: refunded.get(1),
    }))
}

/// Why the payment of `order_id` (there is one) was not refunded.
async fn why_no_refund(tx: &Transaction<'_>, order_id: &str) -> Result<CancelOutcome, Error> {
    let payment = tx
        .query_one(
            r#"SELECT status, customer_id FROM payments WHERE order_id = $1"#,
            &[&order_id],
        )
        .await?;
    Ok(match payment.get::<_, &str>(0) {
        "SUCCEEDED" => CancelOutcome::CustomerMismatch {
            charged_customer_id: payment.get(1),
        },
        "FAILED" => CancelOutcome::NothingToRefund,
        "CANCELLED" => CancelOutcome::AlreadyCancelled,
        // REFUNDED, the only other status the CHECK allows.
        _ => CancelOutcome::AlreadyRefunded,
    })
}

/// Credits `refund` to the (locked) account, with its REFUND ledger row.
///
/// A balance that would overflow fails the statement (SQLSTATE 22003),
/// which rolls everything back.
async fn credit_refund(tx: &Transaction<'_>, refund: &Refund) -> Result<(), Error> {
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
    Ok(())
}
