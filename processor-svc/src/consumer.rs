//! The `order.created` consumer: decodes the event into an [`Order`], lets
//! the store settle it exactly once (inbox, rules, payment, outbox in one
//! transaction) and answers with `payment.succeeded` or `payment.failed`.
//! A message that can never be applied (undecodable, or data the database
//! refuses) is poison and dead-lettered at once; any other database failure
//! is transient and the message is requeued.

use ordermesh_platform::amqp::{HandleError, Handler, Message};
use ordermesh_platform::outbox::OutboxEvent;
use ordermesh_proto::events::v1 as events;
use prost::{Message as _, Name as _};

use crate::rules::{Decision, Embargo, Item, Order};
use crate::store::{Settlement, Store};

/// The inbox name of this consumer.
pub const CONSUMER: &str = "processor-svc";

/// Pays for new orders.
#[derive(Debug, Clone)]
pub struct OrderCreatedHandler {
    store: Store,
    embargo: Embargo,
}

impl OrderCreatedHandler {
    pub fn new(store: Store, embargo: Embargo) -> Self {
        Self { store, embargo }
    }
}

impl Handler for OrderCreatedHandler {
    // A child of the platform's consumer span (`<queue> process`), which
    // carries the messaging attributes and continues the message's trace.
    #[tracing::instrument(
        name = "settle order",
        skip_all,
        fields(message_id = %message.id, order_id = tracing::field::Empty)
    )]
    async fn handle(&self, message: Message) -> Result<(), HandleError> {
        let order = decode(&message).map_err(HandleError::Poison)?;
        tracing::Span::current().record("order_id", order.order_id.as_str());
        let settlement = self
            .store
            .settle_order(CONSUMER, &message.id, &order, &self.embargo, |decision| {
                outcome_event(&order, decision)
            })
            .await
            .map_err(|e| {
                if e.is_data_rejected() {
                    HandleError::Poison(format!("the database rejects the event: {e}"))
                } else {
                    HandleError::Transient(e.into())
                }
            })?;
        match settlement {
            Settlement::Decided(Decision::Pay { amount_minor }) => {
                tracing::info!(amount_minor, "payment succeeded");
            }
            Settlement::Decided(Decision::Fail { reason }) => {
                tracing::info!(reason, "payment failed");
            }
            Settlement::Duplicate => tracing::info!("message already applied; skipped"),
            Settlement::AlreadySettled => {
                tracing::info!("order already settled by another message; skipped");
            }
        }
        Ok(())
    }
}

/// The order an `order.created` message carries, or why there is none.
pub fn decode(message: &Message) -> Result<Order, String> {
    if message.routing_key != events::ORDER_CREATED {
        return Err(format!("unexpected routing key {:?}", message.routing_key));
    }
    let expected = events::OrderCreated::full_name();
    if !message.event_type.is_empty() && message.event_type != expected {
        return Err(format!(
            "unexpected type {:?}, want {expected}",
            message.event_type
        ));
    }
    let event = events::OrderCreated::decode(message.payload.as_slice())
        .map_err(|e| format!("undecodable {expected}: {e}"))?;
    if event.order_id.is_empty() {
        return Err(format!("{expected} without order_id"));
    }
    Ok(Order {
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
    })
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

#[cfg(test)]
mod tests {
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

    #[test]
    fn decodes_an_order_created_event() {
        let m = message(
            events::ORDER_CREATED,
            "ordermesh.events.v1.OrderCreated",
            created().encode_to_vec(),
        );
        let order = decode(&m).unwrap();
        assert_eq!(order.order_id, "o-1");
        assert_eq!(order.items[0].quantity, 2);
        assert_eq!(order.total_minor, 300);
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
    fn outcome_events_carry_the_decision() {
        let m = message(events::ORDER_CREATED, "", created().encode_to_vec());
        let order = decode(&m).unwrap();

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
}
