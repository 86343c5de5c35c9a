//! Property tests ("fuzz targets") of order-svc's decoders of untrusted
//! input: payment events from the broker (any routing key, `type` and
//! payload bytes), and the request fields checked before anything reaches
//! the store (order ids, customer ids, SKUs, cancel reasons, `ListOrders`
//! filters and page tokens).
//!
//! Properties: nothing panics; each outcome is the one a small model of the
//! rules predicts, down to the field and the reason; valid values round
//! trip unchanged. Each target runs a bounded number of cases in the normal
//! test run (`PROPTEST_CASES=n` runs more); a failing case is saved in
//! `tests/proptest-regressions/fuzz.txt` and replayed first ever after, so
//! commit that file with the fix. No service is started.

use order_svc::domain::{
    CancelRequest, ListFilter, ListQuery, MAX_CANCEL_REASON_LEN, MAX_ID_LEN, MAX_SKU_LEN, NewOrder,
    OrderStatus, PaymentEvent, PaymentOutcome, PaymentResult, Refund, ValidationError,
    check_order_id,
};
use order_svc::events::{PAYMENT_RESULT_KEYS, decode_payment_event};
use ordermesh_proto::events::v1 as events;
use ordermesh_proto::order::v1 as pb;
use ordermesh_testkit::fuzz::{edit_one_char, proptest_config as config, sometimes_broken};
use proptest::prelude::*;
use prost::{Message as _, Name};

fn invalid(field: &str, reason: impl Into<String>) -> ValidationError {
    ValidationError {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// Strings that stress validators: any Unicode, control characters, the
/// id alphabet, whitespace, and lengths around the limits.
fn hostile_string() -> BoxedStrategy<String> {
    prop_oneof![
        any::<String>(),
        "[A-Za-z0-9._:~-]{0,140}",
        "[ \t\n\r\u{0}\u{7f}\u{85}\u{a0}\u{200b}\u{feff}a]{0,8}",
        "[a-zé€😀]{120,140}",
        "[a-z]{250,260}",
        prop::sample::select(vec![
            "'; DROP TABLE orders; --",
            "\\' OR 1=1",
            "$1",
            "%",
            "_",
            "\\",
            "\u{0}",
            "a\u{0}b",
        ])
        .prop_map(str::to_owned),
    ]
    .boxed()
}

/// What the payment results look like on the wire, sometimes broken.
fn payment_payload() -> BoxedStrategy<Vec<u8>> {
    let succeeded = (
        hostile_string(),
        hostile_string(),
        any::<i64>(),
        hostile_string(),
    )
        .prop_map(|(order_id, customer_id, amount_minor, currency_code)| {
            events::PaymentSucceeded {
                order_id,
                customer_id,
                amount_minor,
                currency_code,
            }
            .encode_to_vec()
        });
    let failed = (hostile_string(), hostile_string(), hostile_string()).prop_map(
        |(order_id, customer_id, reason)| {
            events::PaymentFailed {
                order_id,
                customer_id,
                reason,
            }
            .encode_to_vec()
        },
    );
    let refunded = (
        hostile_string(),
        hostile_string(),
        any::<i64>(),
        hostile_string(),
    )
        .prop_map(|(order_id, customer_id, amount_minor, currency_code)| {
            events::PaymentRefunded {
                order_id,
                customer_id,
                amount_minor,
                currency_code,
            }
            .encode_to_vec()
        });
    // Any bytes, a valid message, or one with a byte changed or cut short.
    sometimes_broken(prop_oneof![succeeded, failed, refunded].boxed())
}

fn routing_key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            events::PAYMENT_SUCCEEDED,
            events::PAYMENT_FAILED,
            events::PAYMENT_REFUNDED,
            events::ORDER_CREATED,
            events::ORDER_CANCELLED,
            "payment.succeeded ",
            "PAYMENT.SUCCEEDED",
            "payment.*",
            "",
        ])
        .prop_map(str::to_owned),
        any::<String>(),
    ]
}

fn event_type() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        prop::sample::select(vec![
            events::PaymentSucceeded::full_name(),
            events::PaymentFailed::full_name(),
            events::PaymentRefunded::full_name(),
            events::OrderCreated::full_name(),
            "ordermesh.events.v1.paymentsucceeded".to_owned(),
        ]),
        any::<String>(),
    ]
}

/// What `decode_payment_event` must answer, from the rules in its docs.
fn expected_payment_event(
    routing_key: &str,
    event_type: &str,
    payload: &[u8],
) -> Result<PaymentEvent, String> {
    fn type_ok<M: Name>(event_type: &str) -> Result<(), String> {
        let expected = M::full_name();
        if event_type.is_empty() || event_type == expected {
            Ok(())
        } else {
            Err(format!("type {event_type:?} does not match {expected}"))
        }
    }
    let event = match routing_key {
        events::PAYMENT_SUCCEEDED => {
            type_ok::<events::PaymentSucceeded>(event_type)?;
            let m = events::PaymentSucceeded::decode(payload)
                .map_err(|e| format!("undecodable PaymentSucceeded: {e}"))?;
            PaymentEvent::Decided(PaymentResult {
                order_id: m.order_id,
                outcome: PaymentOutcome::Succeeded,
            })
        }
        events::PAYMENT_FAILED => {
            type_ok::<events::PaymentFailed>(event_type)?;
            let m = events::PaymentFailed::decode(payload)
                .map_err(|e| format!("undecodable PaymentFailed: {e}"))?;
            let reason = if m.reason.trim().is_empty() {
                "payment failed".to_owned()
            } else {
                m.reason.replace('\0', "\u{fffd}")
            };
            PaymentEvent::Decided(PaymentResult {
                order_id: m.order_id,
                outcome: PaymentOutcome::Failed { reason },
            })
        }
        events::PAYMENT_REFUNDED => {
            type_ok::<events::PaymentRefunded>(event_type)?;
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

/// The order id rule: 1 to 128 of `A-Z a-z 0-9 - _ . : ~`.
fn expected_order_id(id: &str) -> Result<(), ValidationError> {
    if id.is_empty() {
        Err(invalid("order_id", "must not be empty"))
    } else if id.len() > MAX_ID_LEN {
        Err(invalid(
            "order_id",
            format!("must be at most {MAX_ID_LEN} characters"),
        ))
    } else if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.:~".contains(c))
    {
        Err(invalid(
            "order_id",
            "may contain only letters, digits and - _ . : ~",
        ))
    } else {
        Ok(())
    }
}

/// The customer id rule: not blank (when required), at most 128
/// characters, no control characters.
fn expected_customer_id(id: &str, required: bool) -> Result<(), ValidationError> {
    if required && id.trim().is_empty() {
        Err(invalid("customer_id", "must not be empty"))
    } else if id.chars().count() > MAX_ID_LEN {
        Err(invalid(
            "customer_id",
            format!("must be at most {MAX_ID_LEN} characters"),
        ))
    } else if id.chars().any(char::is_control) {
        Err(invalid(
            "customer_id",
            "must not contain control characters",
        ))
    } else {
        Ok(())
    }
}

fn create_request(customer_id: &str, sku: &str) -> pb::CreateOrderRequest {
    pb::CreateOrderRequest {
        order_id: String::new(),
        customer_id: customer_id.to_owned(),
        currency_code: String::new(),
        items: vec![pb::OrderItem {
            sku: sku.to_owned(),
            quantity: 1,
            unit_price_minor: 100,
        }],
    }
}

fn list(customer_id: &str, status: i32, page_size: i32, page_token: &str) -> pb::ListOrdersRequest {
    pb::ListOrdersRequest {
        customer_id: customer_id.to_owned(),
        status,
        page_size,
        page_token: page_token.to_owned(),
    }
}

/// A filter a client can send: a valid customer (or none) and a status.
fn filter() -> impl Strategy<Value = (String, i32)> {
    (
        prop_oneof![
            Just(String::new()),
            "[^\\p{Cc}]{1,128}",
            prop::sample::select(vec!["'; DROP TABLE orders; --", "%", "$1", " "])
                .prop_map(str::to_owned),
        ],
        0..=4i32,
    )
}

fn status_of(value: i32) -> Option<OrderStatus> {
    match value {
        1 => Some(OrderStatus::Pending),
        2 => Some(OrderStatus::Paid),
        3 => Some(OrderStatus::Failed),
        4 => Some(OrderStatus::Cancelled),
        _ => None,
    }
}

proptest! {
    #![proptest_config(config(1000))]

    /// Any message on the payment-result queue is decoded exactly as the
    /// rules say, or refused with the reason they give.
    #[test]
    fn payment_events_decode_as_the_rules_say(
        routing_key in routing_key(),
        event_type in event_type(),
        payload in payment_payload(),
    ) {
        let actual = decode_payment_event(&routing_key, &event_type, &payload);
        prop_assert_eq!(actual, expected_payment_event(&routing_key, &event_type, &payload));
    }

    /// Valid events with any content round trip, whatever the other keys
    /// the queue is not bound to would say.
    #[test]
    fn valid_payment_events_round_trip(
        order_id in "[^\\p{Cc}]{1,64}",
        reason in hostile_string(),
        amount_minor in 1..=i64::MAX,
        key in prop::sample::select(PAYMENT_RESULT_KEYS.to_vec()),
        typed in any::<bool>(),
    ) {
        let (payload, event_type, expected) = match key {
            events::PAYMENT_SUCCEEDED => (
                events::PaymentSucceeded { order_id: order_id.clone(), ..Default::default() }.encode_to_vec(),
                events::PaymentSucceeded::full_name(),
                PaymentEvent::Decided(PaymentResult { order_id, outcome: PaymentOutcome::Succeeded }),
            ),
            events::PAYMENT_FAILED => (
                events::PaymentFailed { order_id: order_id.clone(), reason: reason.clone(), ..Default::default() }.encode_to_vec(),
                events::PaymentFailed::full_name(),
                PaymentEvent::Decided(PaymentResult {
                    order_id,
                    outcome: PaymentOutcome::Failed {
                        reason: if reason.trim().is_empty() {
                            "payment failed".into()
                        } else {
                            reason.replace('\0', "\u{fffd}")
                        },
                    },
                }),
            ),
            _ => (
                events::PaymentRefunded { order_id: order_id.clone(), amount_minor, ..Default::default() }.encode_to_vec(),
                events::PaymentRefunded::full_name(),
                PaymentEvent::Refunded(Refund { order_id, amount_minor }),
            ),
        };
        let event_type = if typed { event_type } else { String::new() };
        prop_assert_eq!(decode_payment_event(key, &event_type, &payload), Ok(expected));
    }

    #[test]
    fn order_ids_are_checked_precisely(id in hostile_string()) {
        prop_assert_eq!(check_order_id("order_id", &id), expected_order_id(&id));
    }

    /// CreateOrder's customer id: refused with the precise reason, or kept
    /// byte for byte.
    #[test]
    fn customer_ids_are_checked_precisely_and_kept_verbatim(id in hostile_string()) {
        let result = NewOrder::try_from(create_request(&id, "sku"));
        match expected_customer_id(&id, true) {
            Ok(()) => prop_assert_eq!(result.map(|o| o.customer_id), Ok(id)),
            Err(e) => prop_assert_eq!(result.map(|o| o.customer_id), Err(e)),
        }
    }

    #[test]
    fn skus_are_checked_precisely_and_kept_verbatim(sku in hostile_string()) {
        let result = NewOrder::try_from(create_request("alice", &sku)).map(|o| o.items[0].sku.clone());
        let chars = sku.chars().count();
        if chars == 0 || chars > MAX_SKU_LEN {
            prop_assert_eq!(result, Err(invalid("items[0].sku", format!("must be 1 to {MAX_SKU_LEN} characters"))));
        } else if sku.chars().any(char::is_control) {
            prop_assert_eq!(result, Err(invalid("items[0].sku", "must not contain control characters")));
        } else {
            prop_assert_eq!(result, Ok(sku));
        }
    }

    /// A cancel reason: at most 256 characters, no control characters;
    /// kept as sent, less surrounding whitespace.
    #[test]
    fn cancel_reasons_are_checked_precisely(order_id in hostile_string(), reason in hostile_string()) {
        let result = CancelRequest::try_from(pb::CancelOrderRequest {
            order_id: order_id.clone(),
            reason: reason.clone(),
        });
        let expected = expected_order_id(&order_id).and_then(|()| {
            if reason.chars().count() > MAX_CANCEL_REASON_LEN {
                Err(invalid("reason", format!("must be at most {MAX_CANCEL_REASON_LEN} characters")))
            } else if reason.chars().any(char::is_control) {
                Err(invalid("reason", "must not contain control characters"))
            } else {
                Ok(CancelRequest { order_id, reason: reason.trim().to_owned() })
            }
        });
        prop_assert_eq!(result, expected);
    }

    /// Every field of ListOrders, checked in order: customer, status, page
    /// size, page token. Arbitrary text is never a page token.
    #[test]
    fn list_queries_are_checked_precisely(
        customer_id in hostile_string(),
        status in prop_oneof![0..=4i32, any::<i32>()],
        page_size in prop_oneof![-2..=1002i32, any::<i32>()],
        page_token in prop_oneof![any::<String>(), "[A-Za-z0-9_-]{22,24}"],
    ) {
        let result = ListQuery::try_from(list(&customer_id, status, page_size, &page_token));
        let expected = expected_customer_id(&customer_id, false)
            .and_then(|()| match status {
                0..=4 => Ok(()),
                other => Err(invalid("status", format!("unknown status {other}"))),
            })
            .and_then(|()| match page_size {
                n if n < 0 => Err(invalid("page_size", "must not be negative")),
                _ if page_token.is_empty() => Ok(()),
                _ => Err(invalid("page_token", "not a page token of this query")),
            });
        match expected {
            Err(e) => prop_assert_eq!(result, Err(e)),
            Ok(()) => {
                let q = result.map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                let size = match page_size { 0 => 50, n => (n as usize).min(1000) };
                prop_assert_eq!(q.page_size, size);
                prop_assert_eq!(q.before_seq, None);
                prop_assert_eq!(q.filter.customer_id, (!customer_id.is_empty()).then_some(customer_id));
                prop_assert_eq!(q.filter.status, status_of(status));
            }
        }
    }

    /// A token round trips with its own filter only, and any one-character
    /// edit of it is refused.
    #[test]
    fn page_tokens_round_trip_only_with_their_filter(
        (customer_id, status) in filter(),
        (other_customer, other_status) in filter(),
        seq in any::<i64>(),
        at in any::<prop::sample::Index>(),
        replacement in any::<char>(),
        edit in 0..3u8,
    ) {
        let filter = ListFilter {
            customer_id: (!customer_id.is_empty()).then(|| customer_id.clone()),
            status: status_of(status),
        };
        let token = filter.page_token(seq);
        let q = ListQuery::try_from(list(&customer_id, status, 10, &token))
            .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        prop_assert_eq!(q.before_seq, Some(seq));
        prop_assert_eq!(q.filter, filter);

        let refused = Err(invalid("page_token", "not a page token of this query"));
        if (other_customer.as_str(), other_status) != (customer_id.as_str(), status) {
            prop_assert_eq!(ListQuery::try_from(list(&other_customer, other_status, 10, &token)), refused.clone());
        }
        let edited = edit_one_char(&token, at, replacement, edit)?;
        prop_assert_eq!(ListQuery::try_from(list(&customer_id, status, 10, &edited)), refused);
    }
}
