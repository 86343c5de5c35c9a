//! The events order-svc exchanges over RabbitMQ, as domain values: the
//! `order.created` and `order.cancelled` outbox events it writes, and the
//! payment results and refunds it reads (decoded by routing key; anything
//! else is refused).

use ordermesh_messaging::outbox::OutboxEvent;
use ordermesh_proto::events::v1 as events;
use ordermesh_proto::order::v1 as pb;
use prost::{Message as _, Name};

use crate::domain::{NewOrder, Order, PaymentEvent, PaymentOutcome, PaymentResult, Refund};

/// Routing keys of the processor's answers the order queue is bound to.
pub const PAYMENT_RESULT_KEYS: [&str; 3] = [
    events::PAYMENT_SUCCEEDED,
    events::PAYMENT_FAILED,
    events::PAYMENT_REFUNDED,
];

/// Stored when a `payment.failed` event gives no reason.
const UNSPECIFIED_FAILURE: &str = "payment failed";

/// The `order.created` outbox event of a new order.
pub fn order_created(order: &NewOrder) -> OutboxEvent {
    let message = events::OrderCreated {
        order_id: order.order_id.clone(),
        customer_id: order.customer_id.clone(),
        currency_code: order.currency_code.clone(),
        items: order
            .items
            .iter()
            .map(|i| pb::OrderItem {
                sku: i.sku.clone(),
                quantity: i.quantity,
                unit_price_minor: i.unit_price_minor,
            })
            .collect(),
        total_minor: order.total_minor,
    };
    OutboxEvent::protobuf(&order.order_id, events::ORDER_CREATED, &message)
}

/// The `order.cancelled` outbox event of an order just cancelled.
pub fn order_cancelled(order: &Order) -> OutboxEvent {
    let message = events::OrderCancelled {
        order_id: order.order_id.clone(),
        customer_id: order.customer_id.clone(),
        reason: order.cancel_reason.clone().unwrap_or_default(),
    };
    OutboxEvent::protobuf(&order.order_id, events::ORDER_CANCELLED, &message)
}

/// Decodes what the processor reports: a payment result or a refund.
/// `event_type`, when set, must agree with the routing key. The error says
/// why the message can never be applied.
pub fn decode_payment_event(
    routing_key: &str,
    event_type: &str,
    payload: &[u8],
) -> Result<PaymentEvent, String> {
    fn check_type<M: Name>(event_type: &str) -> Result<(), String> {
        let expected = M::full_name();
        if event_type.is_empty() || event_type == expected {
            Ok(())
        } else {
            Err(format!("type {event_type:?} does not match {expected}"))
        }
    }

    let event = match routing_key {
        events::PAYMENT_SUCCEEDED => {
            check_type::<events::PaymentSucceeded>(event_type)?;
            let m = events::PaymentSucceeded::decode(payload)
                .map_err(|e| format!("undecodable PaymentSucceeded: {e}"))?;
            PaymentEvent::Decided(PaymentResult {
                order_id: m.order_id,
                outcome: PaymentOutcome::Succeeded,
            })
        }
        events::PAYMENT_FAILED => {
            check_type::<events::PaymentFailed>(event_type)?;
            let m = events::PaymentFailed::decode(payload)
                .map_err(|e| format!("undecodable PaymentFailed: {e}"))?;
            let reason = if m.reason.trim().is_empty() {
                UNSPECIFIED_FAILURE.to_owned()
            } else {
                // PostgreSQL text cannot hold NUL: the failure must still be
                // recorded, or the order would never end.
                m.reason.replace('\0', "\u{fffd}")
            };
            PaymentEvent::Decided(PaymentResult {
                order_id: m.order_id,
                outcome: PaymentOutcome::Failed { reason },
            })
        }
        events::PAYMENT_REFUNDED => {
            check_type::<events::PaymentRefunded>(event_type)?;
            let m = events::PaymentRefunded::decode(payload)
                .map_err(|e| format!("undecodable PaymentRefunded: {e}"))?;
            if m.amount_minor <= 0 {
                return Err(format!("refund of {} is not positive", m.amount_minor));
            }
            PaymentEvent::Refunded(Refund {
                order_id: m.order_id,
                amount_minor: m.amount_minor,
            })
        }
        other => return Err(format!("unexpected routing key {other:?}")),
    };
    if event.order_id().is_empty() {
        return Err("the event names no order".into());
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decided(event: PaymentEvent) -> PaymentResult {
        match event {
            PaymentEvent::Decided(r) => r,
            other => panic!("not a payment decision: {other:?}"),
        }
    }

    #[test]
    fn refunds_decode_and_must_be_positive() {
        let refund = |amount_minor| {
            events::PaymentRefunded {
                order_id: "o".into(),
                amount_minor,
                ..Default::default()
            }
            .encode_to_vec()
        };
        let event = decode_payment_event("payment.refunded", "", &refund(500)).unwrap();
        assert_eq!(
            event,
            PaymentEvent::Refunded(Refund {
                order_id: "o".into(),
                amount_minor: 500
            })
        );
        assert!(decode_payment_event("payment.refunded", "", &refund(0)).is_err());
        assert!(
            decode_payment_event(
                "payment.refunded",
                "ordermesh.events.v1.PaymentSucceeded",
                &refund(5)
            )
            .is_err()
        );
    }

    #[test]
    fn order_created_carries_the_computed_total() {
        let order = NewOrder::try_from(pb::CreateOrderRequest {
            order_id: "o-1".into(),
            customer_id: "c".into(),
            currency_code: String::new(),
            items: vec![pb::OrderItem {
                sku: "s".into(),
                quantity: 2,
                unit_price_minor: 250,
            }],
        })
        .unwrap();
        let event = order_created(&order);
        assert_eq!(event.routing_key, "order.created");
        assert_eq!(event.aggregate_id, "o-1");
        assert_eq!(event.event_type, "ordermesh.events.v1.OrderCreated");
        let decoded = events::OrderCreated::decode(event.payload.as_slice()).unwrap();
        assert_eq!(decoded.total_minor, 500);
        assert_eq!(decoded.currency_code, "USD");
    }

    #[test]
    fn payment_results_decode_by_routing_key() {
        let ok = events::PaymentSucceeded {
            order_id: "o".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let r = decided(decode_payment_event("payment.succeeded", "", &ok).unwrap());
        assert_eq!(r.outcome, PaymentOutcome::Succeeded);

        let failed = events::PaymentFailed {
            order_id: "o".into(),
            reason: "embargo: teapot".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let r = decided(
            decode_payment_event(
                "payment.failed",
                "ordermesh.events.v1.PaymentFailed",
                &failed,
            )
            .unwrap(),
        );
        assert_eq!(
            r.outcome,
            PaymentOutcome::Failed {
                reason: "embargo: teapot".into()
            }
        );
    }

    #[test]
    fn anything_else_is_refused() {
        let ok = events::PaymentSucceeded {
            order_id: "o".into(),
            ..Default::default()
        }
        .encode_to_vec();
        assert!(decode_payment_event("order.created", "", &ok).is_err());
        assert!(
            decode_payment_event(
                "payment.succeeded",
                "ordermesh.events.v1.PaymentFailed",
                &ok
            )
            .is_err()
        );
        assert!(decode_payment_event("payment.succeeded", "", &[0xff, 0xff, 0xff]).is_err());
        let no_order = events::PaymentSucceeded::default().encode_to_vec();
        assert!(decode_payment_event("payment.succeeded", "", &no_order).is_err());
    }

    #[test]
    fn a_failure_reason_loses_what_text_columns_cannot_hold() {
        let failed = events::PaymentFailed {
            order_id: "o".into(),
            reason: "bad\0sku".into(),
            ..Default::default()
        };
        let event = decode_payment_event("payment.failed", "", &failed.encode_to_vec()).unwrap();
        assert_eq!(
            decided(event).outcome.failure_reason(),
            Some("bad\u{fffd}sku")
        );
    }

    #[test]
    fn an_empty_failure_reason_is_filled_in() {
        let failed = events::PaymentFailed {
            order_id: "o".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let r = decided(decode_payment_event("payment.failed", "", &failed).unwrap());
        assert_eq!(r.outcome.failure_reason(), Some(UNSPECIFIED_FAILURE));
    }
}
