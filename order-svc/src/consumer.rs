//! The payment-result consumer: decodes each delivery and applies it through
//! the store, where the inbox makes it exactly-once. The platform loop turns
//! the verdict into ack (`Ok`), dead-letter (`Poison`) or requeue
//! (`Transient`).

use ordermesh_platform::amqp::{HandleError, Handler, Message};

use crate::error::Error;
use crate::events::decode_payment_result;
use crate::store::{Applied, Store};

/// Applies `payment.succeeded` / `payment.failed` events to orders.
pub struct PaymentResults {
    store: Store,
}

impl PaymentResults {
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

impl Handler for PaymentResults {
    // A child of the platform's consumer span (`<queue> process`).
    #[tracing::instrument(
        name = "apply payment result",
        skip_all,
        fields(message_id = %message.id, routing_key = %message.routing_key)
    )]
    async fn handle(&self, message: Message) -> Result<(), HandleError> {
        let result =
            decode_payment_result(&message.routing_key, &message.event_type, &message.payload)
                .map_err(HandleError::Poison)?;
        let applied = self
            .store
            .apply_payment_result(&message.id, &result)
            .await
            .map_err(|e| match e {
                Error::Unavailable(e) | Error::Internal(e) => HandleError::Transient(e),
                other => HandleError::Transient(other.into()),
            })?;
        let order_id = result.order_id.as_str();
        match applied {
            Applied::Moved { version } => {
                tracing::info!(order_id, status = %result.outcome.status(), version, "applied payment result");
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
}
