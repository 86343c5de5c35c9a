//! The events order-svc exchanges over RabbitMQ, as domain values: the
//! `order.created` outbox event it writes, and the payment results it reads
//! (decoded by routing key; anything else is refused).

use ordermesh_platform::outbox::OutboxEvent;
use ordermesh_proto::events::v1 as events;
use ordermesh_proto::order::v1 as pb;
use prost::{Message as _, Name};

use crate::domain::{NewOrder, PaymentOutcome, PaymentResult};

/// Routing keys of the results the order queue is bound to.
pub const PAYMENT_RESULT_KEYS: [&str; 2] = [events::PAYMENT_SUCCEEDED, events::PAYMENT_FAILED];

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

/// Decodes a payment result. `event_type`, when set, must agree with the
/// routing key. The error says why the message can never be applied.
pub fn decode_payment_result(
    routing_key: &str,
    event_type: &str,
    payload: &[u8],
) -> Result<PaymentResult, String> {
    fn check_type<M: Name>(event_type: &str) -> Result<(), String> {
        let expected = M::full_name();
        if event_type.is_empty() || event_type == expected {
            Ok(())
        } else {
            Err(format!("type {event_type:?} does not match {expected}"))
        }
    }

    let result = match routing_key {
        events::PAYMENT_SUCCEEDED => {
            check_type::<events::PaymentSucceeded>(event_type)?;
            let m = events::PaymentSucceeded::decode(payload)
                .map_err(|e| format!("undecodable PaymentSucceeded: {e}"))?;
            PaymentResult {
                order_id: m.order_id,
                outcome: PaymentOutcome::Succeeded,
            }
        }
        events::PAYMENT_FAILED => {
            check_type::<events::PaymentFailed>(event_type)?;
            let m = events::PaymentFailed::decode(payload)
                .map_err(|e| format!("undecodable PaymentFailed: {e}"))?;
            let reason = if m.reason.trim().is_empty() {
                UNSPECIFIED_FAILURE.to_owned()
            } else {
                m.reason
            };
            PaymentResult {
                order_id: m.order_id,
                outcome: PaymentOutcome::Failed { reason },
            }
        }
        other => return Err(format!("unexpected routing key {other:?}")),
    };
    if result.order_id.is_empty() {
        return Err("the event names no order".into());
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let r = decode_payment_result("payment.succeeded", "", &ok).unwrap();
        assert_eq!(r.outcome, PaymentOutcome::Succeeded);

        let failed = events::PaymentFailed {
            order_id: "o".into(),
            reason: "embargo: teapot".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let r = decode_payment_result(
            "payment.failed",
            "ordermesh.events.v1.PaymentFailed",
            &failed,
        )
        .unwrap();
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
        assert!(decode_payment_result("order.created", "", &ok).is_err());
        assert!(
            decode_payment_result(
                "payment.succeeded",
                "ordermesh.events.v1.PaymentFailed",
                &ok
            )
            .is_err()
        );
        assert!(decode_payment_result("payment.succeeded", "", &[0xff, 0xff, 0xff]).is_err());
        let no_order = events::PaymentSucceeded::default().encode_to_vec();
        assert!(decode_payment_result("payment.succeeded", "", &no_order).is_err());
    }

    #[test]
    fn an_empty_failure_reason_is_filled_in() {
        let failed = events::PaymentFailed {
            order_id: "o".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let r = decode_payment_result("payment.failed", "", &failed).unwrap();
        assert_eq!(r.outcome.failure_reason(), Some(UNSPECIFIED_FAILURE));
    }
}
