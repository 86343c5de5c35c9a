//! The consumer of order events. Its queue is bound to `order.created` and
//! `order.cancelled`; [`decode`] turns a message into an [`OrderEvent`] by
//! its routing key, and the handler lets the store apply it exactly once
//! (inbox, effect and outbox row in one transaction):
//!
//! - `order.created`: the rules decide, the store debits, and the answer is
//!   `payment.succeeded` or `payment.failed`. An order cancelled before is
//!   not charged and gets no answer.
//! - `order.cancelled`: an order not charged yet never will be (a
//!   tombstone); a paid one is refunded once and `payment.refunded` sent.
//!
//! The two events of one order may arrive in either order, or at once.
//! An `order.created` the database refuses to settle (data it rejects: a
//! CHECK, a value out of range, text it cannot store; the one
//! classification of `ordermesh_messaging::classify`) is poison, but it has
//! an order to end: it is answered with `payment.failed` and the reason
//! `rejected: <class>` in a fresh transaction ([`Store::reject_order`]), so
//! the order becomes FAILED instead of waiting in the dead-letter queue.
//! A message that can never be applied and has no order to fail (unknown
//! routing key, undecodable, no order id; a cancel the database refuses or
//! naming another customer than the one charged; an order whose failure the
//! database refuses too) is dead-lettered at once. Any other database
//! failure (connection lost, serialization failure, deadlock) is transient
//! and the message is retried, then dead-lettered.
//!
//! [`AbortAfterCommit`] is a fault-injection knob for chaos runs
//! (`PROCESSOR_CHAOS_ABORT_AFTER_COMMIT_PERMILLE`, off by default): it
//! crashes the process between a settlement's commit and its ack.

use ordermesh_messaging::amqp::{HandleError, Handler, Message};
use ordermesh_messaging::classify::{Disposition, classify};
use ordermesh_messaging::outbox::OutboxEvent;
use ordermesh_proto::events::v1 as events;

use crate::Error;
use crate::rules::{self, Cancellation, Decision, Embargo, Item, Order};
use crate::store::{CancelOutcome, Refund, Settlement, Store};

/// The inbox name of this consumer.
pub const CONSUMER: &str = "processor-svc";

/// What a message on the processor's queue asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderEvent {
    /// `order.created`: pay for the order.
    Created(Order),
    /// `order.cancelled`: never charge it, or refund it.
    Cancelled(Cancellation),
}

/// Fault injection for chaos runs: after a committed settlement (or
/// cancel), abort the process with this probability, before the handler
/// returns and so before the message is acknowledged. The broker then
/// redelivers a message whose effect is already committed, which is the
/// case the inbox exists for. Off (0 per mille) by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AbortAfterCommit {
    permille: u16,
}

impl AbortAfterCommit {
    /// Aborts after `permille` of every 1,000 commits (capped at 1,000).
    pub fn new(permille: u16) -> Self {
        Self {
            permille: permille.min(1000),
        }
    }

    pub fn permille(self) -> u16 {
        self.permille
    }

    pub fn is_enabled(self) -> bool {
        self.permille > 0
    }

    /// Called right after a commit: maybe `std::process::abort()` (no
    /// unwinding, no drain, no ack), as a crash at the worst moment would.
    fn after_commit(self, message_id: &str) {
        if self.permille > 0 && rand::random_range(0..1000u16) < self.permille {
            tracing::error!(
                message_id,
                permille = self.permille,
                "fault injection: aborting after the commit, before the ack"
            );
            std::process::abort();
        }
    }
}

/// Pays for new orders and refunds cancelled ones.
#[derive(Debug, Clone)]
pub struct OrderEventHandler {
    store: Store,
    embargo: Embargo,
    abort_after_commit: AbortAfterCommit,
}

impl OrderEventHandler {
    pub fn new(store: Store, embargo: Embargo) -> Self {
        Self {
            store,
            embargo,
            abort_after_commit: AbortAfterCommit::default(),
        }
    }

    /// Turns on the fault-injection knob (chaos runs only).
    pub fn with_abort_after_commit(mut self, knob: AbortAfterCommit) -> Self {
        self.abort_after_commit = knob;
        self
    }

    // The spans below are children of the consumer loop's span
    // (`<queue> process`), which carries the messaging attributes and
    // continues the message's trace.
    #[tracing::instrument(
        name = "settle order",
        skip_all,
        fields(message_id = %message_id, order_id = %order.order_id)
    )]
    async fn settle(&self, message_id: &str, order: Order) -> Result<(), HandleError> {
        let settled = self
            .store
            .settle_order(CONSUMER, message_id, &order, &self.embargo, |decision| {
                outcome_event(&order, decision)
            })
            .await;
        let settlement = match settled {
            Ok(settlement) => settlement,
            Err(e) => {
                let error = anyhow::Error::from(e);
                // The same data would be refused again: fail the order.
                let Disposition::Poison(class) = classify(&error) else {
                    return Err(HandleError::Transient(error));
                };
                tracing::warn!(
                    error = format!("{error:#}"),
                    class,
                    "the database refuses the order; failing it"
                );
                self.store
                    .reject_order(
                        CONSUMER,
                        message_id,
                        &order,
                        &rules::rejected(class),
                        |decision| outcome_event(&order, decision),
                    )
                    .await
                    .map_err(store_error)?
            }
        };
        // Committed; the ack comes after this handler returns.
        self.abort_after_commit.after_commit(message_id);
        match settlement {
            Settlement::Decided(Decision::Pay { amount_minor }) => {
                tracing::debug!(amount_minor, "payment succeeded");
            }
            Settlement::Decided(Decision::Fail { reason }) => {
                tracing::debug!(reason, "payment failed");
            }
            Settlement::Duplicate => tracing::info!("message already applied; skipped"),
            Settlement::AlreadySettled => {
                tracing::info!("order already settled by another message; skipped");
            }
            Settlement::Cancelled => {
                tracing::info!("order was cancelled before it was charged; skipped");
            }
        }
        Ok(())
    }

    #[tracing::instrument(
        name = "cancel order",
        skip_all,
        fields(message_id = %message_id, order_id = %cancellation.order_id)
    )]
    async fn cancel(
        &self,
        message_id: &str,
        cancellation: Cancellation,
    ) -> Result<(), HandleError> {
        let outcome = self
            .store
            .cancel_order(CONSUMER, message_id, &cancellation, refund_event)
            .await
            .map_err(store_error)?;
        self.abort_after_commit.after_commit(message_id);
        match outcome {
            CancelOutcome::Refunded { amount_minor } => {
                tracing::debug!(
                    amount_minor,
                    reason = cancellation.reason,
                    "payment refunded"
                );
            }
            CancelOutcome::NeverCharged => {
                tracing::debug!(
                    reason = cancellation.reason,
                    "order cancelled before it was charged; it never will be"
                );
            }
            CancelOutcome::Duplicate => tracing::info!("message already applied; skipped"),
            CancelOutcome::AlreadyRefunded => {
                tracing::info!("order already refunded by another message; skipped");
            }
            CancelOutcome::AlreadyCancelled => {
                tracing::info!("order already cancelled by another message; skipped");
            }
            CancelOutcome::NothingToRefund => {
                tracing::debug!("order's payment had failed; nothing to refund");
            }
            CancelOutcome::CustomerMismatch {
                charged_customer_id,
            } => {
                return Err(HandleError::Poison(format!(
                    "the order was charged to customer {charged_customer_id:?}, \
                     not {:?}",
                    cancellation.customer_id
                )));
            }
        }
        Ok(())
    }
}

impl Handler for OrderEventHandler {
    async fn handle(&self, message: Message) -> Result<(), HandleError> {
        match decode(&message).map_err(HandleError::Poison)? {
            OrderEvent::Created(order) => self.settle(&message.id, order).await,
            OrderEvent::Cancelled(cancellation) => self.cancel(&message.id, cancellation).await,
        }
    }
}

/// Data the database refuses is poison, dead-lettered at once; any other
/// failure may pass ([`HandleError::classified`]).
fn store_error(e: Error) -> HandleError {
    HandleError::classified(e.into())
}

/// The event a message carries, by its routing key, or why there is none.
pub fn decode(message: &Message) -> Result<OrderEvent, String> {
    match message.routing_key.as_str() {
        events::ORDER_CREATED => {
            let event: events::OrderCreated = decode_payload(message)?;
            Ok(OrderEvent::Created(Order {
                order_id: event.order_id,
                customer_id: event.customer_id,
                currency_code: event.currency_code,
                items: event
                    .items
                    .into_iter()
                    .map(|i| Item {
                        sku: i.sku,
                        quantity: i.quantity,
                        unit_price_minor: i.unit_price_minor,
                    })
                    .collect(),
                total_minor: event.total_minor,
            }))
        }
        events::ORDER_CANCELLED => {
            let event: events::OrderCancelled = decode_payload(message)?;
            Ok(OrderEvent::Cancelled(Cancellation {
                order_id: event.order_id,
                customer_id: event.customer_id,
                reason: event.reason,
            }))
        }
        other => Err(format!("unexpected routing key {other:?}")),
    }
}

/// Order events all carry an order id; `order_id` reads it.
trait AboutOrder: prost::Name + Default {
    fn order_id(&self) -> &str;
}

impl AboutOrder for events::OrderCreated {
    fn order_id(&self) -> &str {
        &self.order_id
    }
}

impl AboutOrder for events::OrderCancelled {
    fn order_id(&self) -> &str {
        &self.order_id
    }
}

/// The payload as `M`, checking the `type` property when there is one.
fn decode_payload<M: AboutOrder>(message: &Message) -> Result<M, String> {
    let expected = M::full_name();
    if !message.event_type.is_empty() && message.event_type != expected {
        return Err(format!(
            "unexpected type {:?}, want {expected}",
            message.event_type
        ));
    }
    let event = M::decode(message.payload.as_slice())
        .map_err(|e| format!("undecodable {expected}: {e}"))?;
    if event.order_id().is_empty() {
        return Err(format!("{expected} without order_id"));
    }
    Ok(event)
}

/// The `payment.succeeded` / `payment.failed` outbox row for a decision.
/// It carries the trace context of the current span (the settlement, under
/// the consumer span), so the answer stays in the order's trace.
pub fn outcome_event(order: &Order, decision: &Decision) -> OutboxEvent {
    match decision {
        Decision::Pay { amount_minor } => OutboxEvent::protobuf(
            order.order_id.clone(),
            events::PAYMENT_SUCCEEDED,
            &events::PaymentSucceeded {
                order_id: order.order_id.clone(),
                customer_id: order.customer_id.clone(),
                amount_minor: *amount_minor,
                currency_code: order.currency_code.clone(),
            },
        ),
        Decision::Fail { reason } => OutboxEvent::protobuf(
            order.order_id.clone(),
            events::PAYMENT_FAILED,
            &events::PaymentFailed {
                order_id: order.order_id.clone(),
                customer_id: order.customer_id.clone(),
                reason: reason.clone(),
            },
        ),
    }
}

/// The `payment.refunded` outbox row for a refund, in the trace of the
/// current span (the cancellation, under the consumer span).
pub fn refund_event(refund: &Refund) -> OutboxEvent {
    OutboxEvent::protobuf(
        refund.order_id.clone(),
        events::PAYMENT_REFUNDED,
        &events::PaymentRefunded {
            order_id: refund.order_id.clone(),
            customer_id: refund.customer_id.clone(),
            amount_minor: refund.amount_minor,
            currency_code: refund.currency_code.clone(),
        },
    )
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    fn message(routing_key: &str, event_type: &str, payload: Vec<u8>) -> Message {
        Message {
            id: "m-1".into(),
            event_type: event_type.into(),
            routing_key: routing_key.into(),
            payload,
            headers: [("traceparent".to_owned(), "00-abc-def-01".to_owned())].into(),
            redelivered: false,
        }
    }

    fn created() -> events::OrderCreated {
        events::OrderCreated {
            order_id: "o-1".into(),
            customer_id: "c-1".into(),
            currency_code: "USD".into(),
            items: vec![ordermesh_proto::order::v1::OrderItem {
                sku: "widget".into(),
                quantity: 2,
                unit_price_minor: 150,
            }],
            total_minor: 300,
        }
    }

    fn cancelled() -> events::OrderCancelled {
        events::OrderCancelled {
            order_id: "o-1".into(),
            customer_id: "c-1".into(),
            reason: "changed my mind".into(),
        }
    }

    fn order(m: &Message) -> Order {
        match decode(m).unwrap() {
            OrderEvent::Created(order) => order,
            other => panic!("expected an order, got {other:?}"),
        }
    }

    #[test]
    fn decodes_an_order_created_event() {
        let m = message(
            events::ORDER_CREATED,
            "ordermesh.events.v1.OrderCreated",
            created().encode_to_vec(),
        );
        let order = order(&m);
        assert_eq!(order.order_id, "o-1");
        assert_eq!(order.items[0].quantity, 2);
        assert_eq!(order.total_minor, 300);
    }

    #[test]
    fn decodes_an_order_cancelled_event() {
        let m = message(
            events::ORDER_CANCELLED,
            "ordermesh.events.v1.OrderCancelled",
            cancelled().encode_to_vec(),
        );
        assert_eq!(
            decode(&m).unwrap(),
            OrderEvent::Cancelled(Cancellation {
                order_id: "o-1".into(),
                customer_id: "c-1".into(),
                reason: "changed my mind".into(),
            })
        );
    }

    #[test]
    fn rejects_what_is_not_an_order_created_event() {
        let payload = created().encode_to_vec();
        assert!(decode(&message("payment.failed", "", payload.clone())).is_err());
        assert!(decode(&message(events::ORDER_CREATED, "x.Y", payload)).is_err());
        assert!(
            decode(&message(
                events::ORDER_CREATED,
                "",
                b"\xff\xff\xff".to_vec()
            ))
            .is_err()
        );
        let mut anonymous = created();
        anonymous.order_id.clear();
        let m = message(events::ORDER_CREATED, "", anonymous.encode_to_vec());
        assert!(decode(&m).unwrap_err().contains("order_id"));
    }

    #[test]
    fn rejects_what_is_not_an_order_cancelled_event() {
        let payload = cancelled().encode_to_vec();
        // The routing key decides the type, so the `type` property must agree.
        let m = message(
            events::ORDER_CANCELLED,
            "ordermesh.events.v1.OrderCreated",
            payload,
        );
        assert!(decode(&m).unwrap_err().contains("unexpected type"));
        let m = message(events::ORDER_CANCELLED, "", b"\xff\xff\xff".to_vec());
        assert!(decode(&m).unwrap_err().contains("undecodable"));
        let mut anonymous = cancelled();
        anonymous.order_id.clear();
        let m = message(events::ORDER_CANCELLED, "", anonymous.encode_to_vec());
        assert!(decode(&m).unwrap_err().contains("order_id"));
    }

    #[test]
    fn outcome_events_carry_the_decision() {
        let m = message(events::ORDER_CREATED, "", created().encode_to_vec());
        let order = order(&m);

        let ok = outcome_event(&order, &Decision::Pay { amount_minor: 300 });
        assert_eq!(ok.routing_key, events::PAYMENT_SUCCEEDED);
        assert_eq!(ok.aggregate_id, "o-1");
        assert_eq!(ok.event_type, "ordermesh.events.v1.PaymentSucceeded");
        // Not the incoming header: the context of the span writing the event
        // (none here, without a tracer).
        assert!(!ok.headers.contains_key("traceparent"));
        let paid = events::PaymentSucceeded::decode(ok.payload.as_slice()).unwrap();
        assert_eq!(
            (paid.amount_minor, paid.currency_code.as_str()),
            (300, "USD")
        );

        let reason = "embargo: teapot".to_owned();
        let failed = outcome_event(&order, &Decision::Fail { reason });
        assert_eq!(failed.routing_key, events::PAYMENT_FAILED);
        let body = events::PaymentFailed::decode(failed.payload.as_slice()).unwrap();
        assert_eq!(body.reason, "embargo: teapot");
        assert_eq!(body.customer_id, "c-1");
    }

    #[test]
    fn the_abort_knob_is_off_by_default_and_capped() {
        assert!(!AbortAfterCommit::default().is_enabled());
        assert_eq!(AbortAfterCommit::new(5000).permille(), 1000);
        // Off, it never aborts (the test process would die otherwise).
        for _ in 0..10_000 {
            AbortAfterCommit::new(0).after_commit("m-1");
        }
    }

    #[test]
    fn refund_events_carry_the_refund() {
        let event = refund_event(&Refund {
            order_id: "o-1".into(),
            customer_id: "c-1".into(),
            amount_minor: 300,
            currency_code: "USD".into(),
        });
        assert_eq!(event.routing_key, events::PAYMENT_REFUNDED);
        assert_eq!(event.aggregate_id, "o-1");
        assert_eq!(event.event_type, "ordermesh.events.v1.PaymentRefunded");
        let body = events::PaymentRefunded::decode(event.payload.as_slice()).unwrap();
        assert_eq!(
            body,
            events::PaymentRefunded {
                order_id: "o-1".into(),
                customer_id: "c-1".into(),
                amount_minor: 300,
                currency_code: "USD".into(),
            }
        );
    }
}
