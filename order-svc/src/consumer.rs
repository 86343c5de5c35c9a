//! The consumer of the processor's answers: decodes each delivery (a payment
//! result or a refund) and applies it through the store, where the inbox
//! makes it exactly-once. The messaging crate's consumer loop turns the
//! verdict into ack (`Ok`), dead-letter at once (`Poison`: undecodable, or
//! data the database refuses, by the one classification of
//! `ordermesh_messaging::classify`) or retry (`Transient`: anything else,
//! e.g. a lost connection), then dead-letter after the last attempt.

use ordermesh_messaging::amqp::{HandleError, Handler, Message};

use crate::domain::{PaymentEvent, PaymentResult, Refund};
use crate::error::Error;
use crate::events::decode_payment_event;
use crate::store::{Applied, RefundApplied, Store};

/// Applies `payment.succeeded` / `payment.failed` / `payment.refunded`
/// events to orders.
pub struct PaymentResults {
    store: Store,
}

impl PaymentResults {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    async fn apply_result(&self, message_id: &str, result: &PaymentResult) -> Result<(), Error> {
        let applied = self.store.apply_payment_result(message_id, result).await?;
        let order_id = result.order_id.as_str();
        match applied {
            Applied::Moved { version } => {
                tracing::debug!(order_id, status = %result.outcome.status(), version, "applied payment result");
            }
            Applied::Duplicate => {
                tracing::info!(order_id, "payment result already applied; skipping");
            }
            Applied::NotPending(status) => {
                tracing::warn!(order_id, %status, ignored = %result.outcome.status(), "order already decided; ignoring payment result");
            }
            Applied::UnknownOrder => {
                tracing::warn!(order_id, "payment result for an unknown order; dropping it");
            }
        }
        Ok(())
    }

    async fn apply_refund(&self, message_id: &str, refund: &Refund) -> Result<(), Error> {
        let applied = self.store.apply_refund(message_id, refund).await?;
        let order_id = refund.order_id.as_str();
        match applied {
            RefundApplied::Recorded { version } => {
                tracing::debug!(
                    order_id,
                    amount_minor = refund.amount_minor,
                    version,
                    "recorded refund"
                );
            }
            RefundApplied::Duplicate => {
                tracing::info!(order_id, "refund already applied; skipping")
            }
            RefundApplied::AlreadyRecorded => {
                tracing::warn!(order_id, "a refund is recorded already; ignoring this one");
            }
            RefundApplied::NotCancelled(status) => {
                tracing::warn!(order_id, status = ?status, "refund for an order that is not cancelled; dropping it");
            }
        }
        Ok(())
    }
}

impl Handler for PaymentResults {
    // A child of the consumer loop's span (`<queue> process`).
    #[tracing::instrument(
        name = "apply payment result",
        skip_all,
        fields(message_id = %message.id, routing_key = %message.routing_key)
    )]
    async fn handle(&self, message: Message) -> Result<(), HandleError> {
        let event =
            decode_payment_event(&message.routing_key, &message.event_type, &message.payload)
                .map_err(HandleError::Poison)?;
        let applied = match &event {
            PaymentEvent::Decided(result) => self.apply_result(&message.id, result).await,
            PaymentEvent::Refunded(refund) => self.apply_refund(&message.id, refund).await,
        };
        applied.map_err(|e| {
            HandleError::classified(match e {
                Error::Unavailable(e) | Error::Internal(e) => e,
                other => other.into(),
            })
        })
    }
}
