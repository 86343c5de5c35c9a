//! Property tests ("fuzz targets") of processor-svc's decoders of untrusted
//! input: order events from the broker (any routing key, `type` and
//! payload bytes) and the request fields checked before anything reaches
//! the store (customer ids, deposit ids, currencies, `ListTransactions`
//! page sizes and page tokens).
//!
//! Properties: nothing panics; each outcome is the one a small model of the
//! rules predicts, down to the field and the reason; valid values round
//! trip unchanged. Each target runs a bounded number of cases in the normal
//! test run (`PROPTEST_CASES=n` runs more); a failing case is saved in
//! `tests/proptest-regressions/fuzz.txt` and replayed first ever after, so
//! commit that file with the fix. No service is started.

use std::collections::BTreeMap;

use ordermesh_messaging::amqp::Message;
use ordermesh_proto::events::v1 as events;
use ordermesh_proto::order::v1::OrderItem;
use ordermesh_testkit::fuzz::{edit_one_char, proptest_config as config, sometimes_broken};
use processor_svc::Error;
use processor_svc::account::{Deposit, MAX_ID_CHARS, NewAccount, parse_customer_id};
use processor_svc::consumer::{OrderEvent, decode};
use processor_svc::ledger::TransactionQuery;
use processor_svc::rules::{Cancellation, Item, Order};
use proptest::prelude::*;
use prost::{Message as _, Name};

/// A validation outcome in comparable form: the field and the reason.
fn checked<T>(result: Result<T, Error>) -> Result<T, (&'static str, String)> {
    result.map_err(|e| match e {
        Error::InvalidArgument { field, description } => (field, description),
        other => panic!("a check failed with {other:?}"),
    })
}

fn refused<T>(field: &'static str, reason: impl Into<String>) -> Result<T, (&'static str, String)> {
    Err((field, reason.into()))
}

/// Strings that stress validators: any Unicode, control characters,
/// whitespace, SQL-looking text and lengths around the limits.
fn hostile_string() -> BoxedStrategy<String> {
    prop_oneof![
        any::<String>(),
        "[ \t\n\r\u{0}\u{7f}\u{85}\u{a0}\u{200b}\u{feff}a]{0,8}",
        "[a-zé€😀]{120,140}",
        prop::sample::select(vec![
            "'; DROP TABLE accounts; --",
            "\\' OR 1=1",
            "$1",
            "%",
            "\u{0}",
        ])
        .prop_map(str::to_owned),
    ]
    .boxed()
}

fn order_created() -> impl Strategy<Value = events::OrderCreated> {
    let item = (hostile_string(), any::<i32>(), any::<i64>()).prop_map(
        |(sku, quantity, unit_price_minor)| OrderItem {
            sku,
            quantity,
            unit_price_minor,
        },
    );
    (
        hostile_string(),
        hostile_string(),
        hostile_string(),
        prop::collection::vec(item, 0..4),
        any::<i64>(),
    )
        .prop_map(
            |(order_id, customer_id, currency_code, items, total_minor)| events::OrderCreated {
                order_id,
                customer_id,
                currency_code,
                items,
                total_minor,
            },
        )
}

fn order_cancelled() -> impl Strategy<Value = events::OrderCancelled> {
    (hostile_string(), hostile_string(), hostile_string()).prop_map(
        |(order_id, customer_id, reason)| events::OrderCancelled {
            order_id,
            customer_id,
            reason,
        },
    )
}

/// What order events look like on the wire, sometimes broken.
fn order_payload() -> BoxedStrategy<Vec<u8>> {
    let valid = prop_oneof![
        order_created().prop_map(|m| m.encode_to_vec()),
        order_cancelled().prop_map(|m| m.encode_to_vec()),
    ]
    .boxed();
    sometimes_broken(valid)
}

fn message(routing_key: &str, event_type: &str, payload: Vec<u8>) -> Message {
    Message {
        id: "m-1".into(),
        event_type: event_type.into(),
        routing_key: routing_key.into(),
        payload,
        headers: BTreeMap::new(),
        redelivered: false,
    }
}

fn created_event(m: events::OrderCreated) -> OrderEvent {
    OrderEvent::Created(Order {
        order_id: m.order_id,
        customer_id: m.customer_id,
        currency_code: m.currency_code,
        items: m
            .items
            .into_iter()
            .map(|i| Item {
                sku: i.sku,
                quantity: i.quantity,
                unit_price_minor: i.unit_price_minor,
            })
            .collect(),
        total_minor: m.total_minor,
    })
}

fn cancelled_event(m: events::OrderCancelled) -> OrderEvent {
    OrderEvent::Cancelled(Cancellation {
        order_id: m.order_id,
        customer_id: m.customer_id,
        reason: m.reason,
    })
}

/// What `consumer::decode` must answer, from the rules in its docs: the
/// routing key picks the type, a `type` property must agree, the payload
/// must decode and name an order.
fn expected_event(
    routing_key: &str,
    event_type: &str,
    payload: &[u8],
) -> Result<OrderEvent, String> {
    fn payload_of<M: prost::Message + Name + Default>(
        event_type: &str,
        payload: &[u8],
    ) -> Result<M, String> {
        let expected = M::full_name();
        if !event_type.is_empty() && event_type != expected {
            return Err(format!("unexpected type {event_type:?}, want {expected}"));
        }
        M::decode(payload).map_err(|e| format!("undecodable {expected}: {e}"))
    }
    match routing_key {
        events::ORDER_CREATED => {
            let m: events::OrderCreated = payload_of(event_type, payload)?;
            if m.order_id.is_empty() {
                return Err(format!(
                    "{} without order_id",
                    events::OrderCreated::full_name()
                ));
            }
            Ok(created_event(m))
        }
        events::ORDER_CANCELLED => {
            let m: events::OrderCancelled = payload_of(event_type, payload)?;
            if m.order_id.is_empty() {
                return Err(format!(
                    "{} without order_id",
                    events::OrderCancelled::full_name()
                ));
            }
            Ok(cancelled_event(m))
        }
        other => Err(format!("unexpected routing key {other:?}")),
    }
}

/// The customer id rule: required (not blank), at most 128 characters, no
/// control characters; kept byte for byte.
fn expected_customer_id(id: &str) -> Result<String, (&'static str, String)> {
    expected_id("customer_id", id, true)
}

fn expected_id(
    field: &'static str,
    id: &str,
    required: bool,
) -> Result<String, (&'static str, String)> {
    if required && id.trim().is_empty() {
        refused(field, "is required")
    } else if id.chars().count() > MAX_ID_CHARS {
        refused(field, format!("must be at most {MAX_ID_CHARS} characters"))
    } else if id.chars().any(char::is_control) {
        refused(field, "must not contain control characters")
    } else {
        Ok(id.to_owned())
    }
}

proptest! {
    #![proptest_config(config(1000))]

    /// Any message on the order-event queue is decoded exactly as the rules
    /// say, or refused (dead-lettered) with the reason they give.
    #[test]
    fn order_events_decode_as_the_rules_say(
        routing_key in prop_oneof![
            prop::sample::select(vec![
                events::ORDER_CREATED,
                events::ORDER_CANCELLED,
                events::PAYMENT_SUCCEEDED,
                "order.created ",
                "ORDER.CREATED",
                "order.#",
                "",
            ]).prop_map(str::to_owned),
            any::<String>(),
        ],
        event_type in prop_oneof![
            Just(String::new()),
            prop::sample::select(vec![
                events::OrderCreated::full_name(),
                events::OrderCancelled::full_name(),
                events::PaymentSucceeded::full_name(),
            ]),
            any::<String>(),
        ],
        payload in order_payload(),
    ) {
        let actual = decode(&message(&routing_key, &event_type, payload.clone()));
        prop_assert_eq!(actual, expected_event(&routing_key, &event_type, &payload));
    }

    /// Valid events with any content round trip.
    #[test]
    fn valid_order_events_round_trip(
        created in order_created(),
        cancelled in order_cancelled(),
        typed in any::<bool>(),
    ) {
        prop_assume!(!created.order_id.is_empty() && !cancelled.order_id.is_empty());
        let type_of = |name: String| if typed { name } else { String::new() };
        let m = message(
            events::ORDER_CREATED,
            &type_of(events::OrderCreated::full_name()),
            created.encode_to_vec(),
        );
        prop_assert_eq!(decode(&m), Ok(created_event(created)));
        let m = message(
            events::ORDER_CANCELLED,
            &type_of(events::OrderCancelled::full_name()),
            cancelled.encode_to_vec(),
        );
        prop_assert_eq!(decode(&m), Ok(cancelled_event(cancelled)));
    }

    #[test]
    fn customer_ids_are_checked_precisely_and_kept_verbatim(id in hostile_string()) {
        prop_assert_eq!(checked(parse_customer_id(id.clone())), expected_customer_id(&id));
    }

    /// A deposit: customer, then a positive amount, then the deposit id
    /// (none gets a fresh UUIDv7).
    #[test]
    fn deposits_are_checked_precisely(
        customer_id in hostile_string(),
        amount_minor in prop_oneof![any::<i64>(), -1..=1i64],
        deposit_id in prop_oneof![Just(String::new()), hostile_string()],
    ) {
        let result = checked(Deposit::parse(customer_id.clone(), amount_minor, deposit_id.clone()));
        let expected = expected_customer_id(&customer_id).and_then(|customer_id| {
            if amount_minor <= 0 {
                return refused("amount_minor", "must be greater than 0");
            }
            Ok((customer_id, expected_id("deposit_id", &deposit_id, false)?))
        });
        match (result, expected) {
            (Ok(d), Ok((customer_id, id))) => {
                prop_assert_eq!(&d.customer_id, &customer_id);
                prop_assert_eq!(d.amount_minor, amount_minor);
                if deposit_id.is_empty() {
                    let uuid: uuid::Uuid = d.deposit_id.parse().unwrap();
                    prop_assert_eq!(uuid.get_version_num(), 7);
                } else {
                    prop_assert_eq!(d.deposit_id, id);
                }
            }
            (result, expected) => prop_assert_eq!(result.map(|_| ()), expected.map(|_| ())),
        }
    }

    #[test]
    fn currencies_are_checked_precisely(currency in prop_oneof![hostile_string(), "[A-Za-z]{0,4}"]) {
        let result = checked(NewAccount::parse("c".into(), currency.clone())).map(|a| a.currency_code);
        let expected = if currency.is_empty() {
            Ok("USD".to_owned())
        } else if currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_uppercase()) {
            Ok(currency)
        } else {
            refused("currency_code", "must be three uppercase letters (ISO 4217), e.g. USD")
        };
        prop_assert_eq!(result, expected);
    }

    /// ListTransactions: customer, page size, then page token; arbitrary
    /// text is never a page token.
    #[test]
    fn transaction_queries_are_checked_precisely(
        customer_id in hostile_string(),
        page_size in prop_oneof![-2..=1002i32, any::<i32>()],
        page_token in prop_oneof![any::<String>(), "[A-Za-z0-9_-]{22,24}"],
    ) {
        let result = checked(TransactionQuery::parse(customer_id.clone(), page_size, &page_token));
        let expected = expected_customer_id(&customer_id).and_then(|customer_id| {
            if page_size < 0 {
                return refused("page_size", "must not be negative");
            }
            if !page_token.is_empty() {
                return refused("page_token", "not a page token of this account's listing");
            }
            Ok(TransactionQuery {
                customer_id,
                page_size: match page_size { 0 => 50, n => (n as usize).min(1000) },
                before_seq: None,
            })
        });
        prop_assert_eq!(result, expected);
    }

    /// A token round trips for its own customer only, and any
    /// one-character edit of it is refused.
    #[test]
    fn page_tokens_round_trip_only_for_their_customer(
        customer_id in "[^\\p{Cc}]{1,128}",
        other in "[^\\p{Cc}]{1,128}",
        seq in any::<i64>(),
        at in any::<prop::sample::Index>(),
        replacement in any::<char>(),
        edit in 0..3u8,
    ) {
        // A blank id is nobody's (refused as `customer_id`, see the id rule).
        prop_assume!(!customer_id.trim().is_empty());
        let token = checked(TransactionQuery::parse(customer_id.clone(), 10, ""))
            .unwrap()
            .page_token(seq);
        let q = checked(TransactionQuery::parse(customer_id.clone(), 10, &token)).unwrap();
        prop_assert_eq!(q.before_seq, Some(seq));

        let not_ours = refused::<TransactionQuery>("page_token", "not a page token of this account's listing");
        if other != customer_id && !other.trim().is_empty() {
            prop_assert_eq!(checked(TransactionQuery::parse(other, 10, &token)), not_ours.clone());
        }
        let edited = edit_one_char(&token, at, replacement, edit)?;
        prop_assert_eq!(checked(TransactionQuery::parse(customer_id, 10, &edited)), not_ours);
    }
}
