//! The `order.cancelled` consumer end to end: a cancel before the charge
//! leaves a tombstone so the order is never charged; after it, the debit is
//! refunded exactly once, however often and however concurrently the
//! cancel arrives.

use lapin::BasicProperties;
use ordermesh_proto::events::v1::{OrderCancelled, PaymentRefunded};
use processor_svc::consumer::{CONSUMER, outcome_event, refund_event};
use processor_svc::rules::{Cancellation, Embargo, Item, Order};
use processor_svc::store::{CancelOutcome, Settlement};
use prost::Message as _;

use crate::helpers::{
    LedgerRow, PaymentRow, TRACEPARENT, TestApp, cancel, message_id, order, spawn_app,
    spawn_app_with,
};

fn ledger_row(
    kind: &str,
    amount_minor: i64,
    balance_after_minor: i64,
    order_id: Option<&str>,
) -> LedgerRow {
    LedgerRow {
        kind: kind.into(),
        amount_minor,
        balance_after_minor,
        order_id: order_id.map(Into::into),
    }
}

/// Publishes `order-1` of alice for 3 000 and waits until it is paid.
async fn pay_order_1(app: &TestApp) {
    app.publish_order(
        &message_id(),
        &order("order-1", "alice", "USD", &[("widget", 1, 3_000)]),
    )
    .await;
    assert_eq!(app.wait_for_payment("order-1").await.status, "SUCCEEDED");
    assert_eq!(app.balance("alice").await, 7_000);
}

/// Asserts order-1 was refunded once: REFUNDED, the balance back, one
/// `payment.refunded` after the `payment.succeeded`, DEBIT then REFUND.
async fn assert_refunded_once(app: &TestApp) {
    let payment = app.payment("order-1").await.expect("a payment row");
    assert_eq!(payment.status, "REFUNDED");
    assert_eq!(payment.amount_minor, 3_000);
    assert_eq!(app.balance("alice").await, 10_000);

    let outbox = app.outbox("order-1").await;
    let keys: Vec<&str> = outbox.iter().map(|r| r.routing_key.as_str()).collect();
    assert_eq!(
        keys,
        ["payment.succeeded", "payment.refunded"],
        "{outbox:?}"
    );
    let row = &outbox[1];
    assert_eq!(row.aggregate_id, "order-1");
    assert_eq!(row.event_type, "ordermesh.events.v1.PaymentRefunded");
    assert_eq!(
        PaymentRefunded::decode(row.payload.as_slice()).unwrap(),
        PaymentRefunded {
            order_id: "order-1".into(),
            customer_id: "alice".into(),
            amount_minor: 3_000,
            currency_code: "USD".into(),
        }
    );

    assert_eq!(
        app.ledger("alice").await,
        [
            ledger_row("DEPOSIT", 10_000, 10_000, None),
            ledger_row("DEBIT", -3_000, 7_000, Some("order-1")),
            ledger_row("REFUND", 3_000, 10_000, Some("order-1")),
        ]
    );
}

#[tokio::test]
async fn an_order_cancelled_before_it_is_created_is_never_charged() {
    let app = spawn_app().await;
    app.fund("alice", "USD", 10_000).await;

    let cancelled = message_id();
    app.publish_cancel(&cancelled, &cancel("order-1", "alice"))
        .await;
    let tombstone = app.wait_for_payment("order-1").await;
    assert_eq!(
        tombstone,
        PaymentRow {
            status: "CANCELLED".into(),
            reason: None,
            amount_minor: 0,
            message_id: cancelled.clone(),
        }
    );

    let created = message_id();
    app.publish_order(
        &created,
        &order("order-1", "alice", "USD", &[("widget", 1, 3_000)]),
    )
    .await;
    app.wait_for_inbox(&created).await;

    assert_eq!(app.payment("order-1").await, Some(tombstone));
    assert_eq!(app.balance("alice").await, 10_000);
    assert!(app.outbox("order-1").await.is_empty());
    assert_eq!(
        app.ledger("alice").await,
        [ledger_row("DEPOSIT", 10_000, 10_000, None)]
    );
}

#[tokio::test]
async fn a_cancel_for_a_customer_without_an_account_leaves_a_tombstone() {
    let app = spawn_app().await;

    app.publish_cancel(&message_id(), &cancel("order-1", "nobody"))
        .await;
    assert_eq!(app.wait_for_payment("order-1").await.status, "CANCELLED");

    // Without the tombstone this would fail as "no account" and answer.
    let created = message_id();
    app.publish_order(
        &created,
        &order("order-1", "nobody", "USD", &[("widget", 1, 100)]),
    )
    .await;
    app.wait_for_inbox(&created).await;
    assert_eq!(app.payment("order-1").await.unwrap().status, "CANCELLED");
    assert!(app.outbox("order-1").await.is_empty());
    assert_eq!(app.payment_count().await, 1);
}

#[tokio::test]
async fn a_paid_order_that_is_cancelled_is_refunded() {
    let app = spawn_app().await;
    app.fund("alice", "USD", 10_000).await;
    pay_order_1(&app).await;

    let id = message_id();
    app.publish_cancel(&id, &cancel("order-1", "alice")).await;
    app.wait_for_inbox(&id).await;
    assert_refunded_once(&app).await;

    // The refund continues the cancel's trace from the consume span.
    let outbox = app.outbox("order-1").await;
    let traceparent = outbox[1].headers["traceparent"]
        .as_str()
        .expect("a traceparent");
    let incoming: Vec<&str> = TRACEPARENT.split('-').collect();
    let outgoing: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(outgoing[1], incoming[1], "same trace: {traceparent}");
    assert_ne!(
        outgoing[2], incoming[2],
        "a span of the processor: {traceparent}"
    );
}

#[tokio::test]
async fn a_redelivered_or_repeated_cancel_refunds_once() {
    // One delivery at a time, so the last message being applied means
    // every earlier one was handled too.
    let app = spawn_app_with(|c| c.prefetch = 1).await;
    app.fund("alice", "USD", 10_000).await;
    pay_order_1(&app).await;

    let first = message_id();
    app.publish_cancel(&first, &cancel("order-1", "alice"))
        .await;
    app.publish_cancel(&first, &cancel("order-1", "alice"))
        .await; // the relay again
    let second = message_id();
    app.publish_cancel(&second, &cancel("order-1", "alice"))
        .await; // another event
    let last = message_id();
    app.publish_cancel(&last, &cancel("order-2", "alice")).await;
    app.wait_for_inbox(&last).await;

    assert!(app.inbox().await.contains(&second));
    assert_refunded_once(&app).await;
}

#[tokio::test]
async fn concurrent_cancels_refund_once() {
    // Prefetch 64: the consumer handles these at the same time.
    let app = spawn_app().await;
    app.fund("alice", "USD", 10_000).await;
    pay_order_1(&app).await;

    let ids: Vec<String> = (0..8).map(|_| message_id()).collect();
    for id in &ids {
        app.publish_cancel(id, &cancel("order-1", "alice")).await;
    }
    for id in &ids {
        app.wait_for_inbox(id).await;
    }
    assert_refunded_once(&app).await;
}

#[tokio::test]
async fn concurrent_cancels_through_the_store_refund_once() {
    let app = spawn_app().await;
    app.fund("alice", "USD", 10_000).await;
    pay_order_1(&app).await;

    let store = app.store();
    let cancellation = Cancellation {
        order_id: "order-1".into(),
        customer_id: "alice".into(),
        reason: String::new(),
    };
    let calls: Vec<_> = (0..16)
        .map(|_| {
            let (store, cancellation) = (store.clone(), cancellation.clone());
            tokio::spawn(async move {
                store
                    .cancel_order(CONSUMER, &message_id(), &cancellation, refund_event)
                    .await
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for call in calls {
        outcomes.push(call.await.unwrap().expect("cancel"));
    }
    let refunded = outcomes
        .iter()
        .filter(|o| {
            **o == CancelOutcome::Refunded {
                amount_minor: 3_000,
            }
        })
        .count();
    assert_eq!(refunded, 1, "{outcomes:?}");
    assert!(
        outcomes.iter().all(|o| matches!(
            o,
            CancelOutcome::Refunded { .. } | CancelOutcome::AlreadyRefunded
        )),
        "{outcomes:?}"
    );
    assert_refunded_once(&app).await;
}

#[tokio::test]
async fn a_cancel_racing_its_order_leaves_the_balance_whole() {
    let app = spawn_app().await;
    app.fund("alice", "USD", 100_000).await;
    let store = app.store();
    let embargo = Embargo::default();

    // Each order's created and cancelled events race; whichever wins, the
    // order ends either never charged or charged and refunded.
    let mut calls = Vec::new();
    for n in 0..20 {
        let order = Order {
            order_id: format!("order-{n}"),
            customer_id: "alice".into(),
            currency_code: "USD".into(),
            items: vec![Item {
                sku: "widget".into(),
                quantity: 1,
                unit_price_minor: 1_000,
            }],
            total_minor: 1_000,
        };
        let cancellation = Cancellation {
            order_id: order.order_id.clone(),
            customer_id: "alice".into(),
            reason: String::new(),
        };
        let (settle_store, embargo) = (store.clone(), embargo.clone());
        calls.push(tokio::spawn(async move {
            let settled = settle_store
                .settle_order(CONSUMER, &message_id(), &order, &embargo, |d| {
                    outcome_event(&order, d)
                })
                .await
                .expect("settle");
            assert!(
                matches!(settled, Settlement::Decided(_) | Settlement::Cancelled),
                "{settled:?}"
            );
        }));
        let cancel_store = store.clone();
        calls.push(tokio::spawn(async move {
            let outcome = cancel_store
                .cancel_order(CONSUMER, &message_id(), &cancellation, refund_event)
                .await
                .expect("cancel");
            assert!(
                matches!(
                    outcome,
                    CancelOutcome::NeverCharged
                        | CancelOutcome::Refunded {
                            amount_minor: 1_000
                        }
                ),
                "{outcome:?}"
            );
        }));
    }
    for call in calls {
        call.await.unwrap();
    }

    assert_eq!(app.balance("alice").await, 100_000);
    let ledger = app.ledger("alice").await;
    let debits = ledger.iter().filter(|r| r.kind == "DEBIT").count();
    let refunds = ledger.iter().filter(|r| r.kind == "REFUND").count();
    assert_eq!(debits, refunds, "{ledger:?}");
    assert_eq!(ledger.iter().map(|r| r.amount_minor).sum::<i64>(), 100_000);
    for n in 0..20 {
        let order_id = format!("order-{n}");
        let status = app.payment(&order_id).await.unwrap().status;
        let keys: Vec<String> = app
            .outbox(&order_id)
            .await
            .into_iter()
            .map(|r| r.routing_key)
            .collect();
        match status.as_str() {
            "CANCELLED" => assert!(keys.is_empty(), "{order_id}: {keys:?}"),
            "REFUNDED" => assert_eq!(keys, ["payment.succeeded", "payment.refunded"]),
            other => panic!("{order_id} ended {other}"),
        }
    }
}

#[tokio::test]
async fn a_cancel_after_a_failed_payment_refunds_nothing() {
    let app = spawn_app().await;
    app.fund("alice", "USD", 1_000).await;
    app.publish_order(
        &message_id(),
        &order("order-1", "alice", "USD", &[("widget", 1, 3_000)]),
    )
    .await;
    let failed = app.wait_for_payment("order-1").await;
    assert_eq!(failed.status, "FAILED");

    let id = message_id();
    app.publish_cancel(&id, &cancel("order-1", "alice")).await;
    app.wait_for_inbox(&id).await;

    assert_eq!(app.payment("order-1").await, Some(failed));
    assert_eq!(app.balance("alice").await, 1_000);
    let outbox = app.outbox("order-1").await;
    assert_eq!(outbox.len(), 1, "{outbox:?}");
    assert_eq!(outbox[0].routing_key, "payment.failed");
    assert_eq!(
        app.ledger("alice").await,
        [ledger_row("DEPOSIT", 1_000, 1_000, None)]
    );
}

#[tokio::test]
async fn a_cancel_naming_another_customer_is_dead_lettered_and_changes_nothing() {
    let app = spawn_app().await;
    app.fund("alice", "USD", 10_000).await;
    app.fund("mallory", "USD", 0).await;
    pay_order_1(&app).await;

    let id = message_id();
    app.publish_cancel(&id, &cancel("order-1", "mallory")).await;
    assert_eq!(app.wait_for_dead_letter().await, id);

    assert_eq!(app.payment("order-1").await.unwrap().status, "SUCCEEDED");
    assert_eq!(
        (app.balance("alice").await, app.balance("mallory").await),
        (7_000, 0)
    );
    assert_eq!(app.outbox("order-1").await.len(), 1);
    assert!(!app.inbox().await.contains(&id));
}

#[tokio::test]
async fn a_poison_cancel_is_dead_lettered_and_later_messages_are_still_processed() {
    let app = spawn_app().await;
    app.fund("alice", "USD", 10_000).await;
    pay_order_1(&app).await;

    let undecodable = message_id();
    let props = BasicProperties::default()
        .with_message_id(undecodable.as_str().into())
        .with_delivery_mode(2);
    app.publish(
        &app.exchange,
        "order.cancelled",
        props,
        b"not protobuf \xff\xff",
    )
    .await;
    assert_eq!(app.wait_for_dead_letter().await, undecodable);

    let anonymous = message_id();
    let event = OrderCancelled {
        order_id: String::new(),
        ..cancel("order-1", "alice")
    };
    app.publish_cancel(&anonymous, &event).await;
    assert_eq!(app.wait_for_dead_letter().await, anonymous);

    let id = message_id();
    app.publish_cancel(&id, &cancel("order-1", "alice")).await;
    app.wait_for_inbox(&id).await;
    let inbox = app.inbox().await;
    assert!(!inbox.contains(&undecodable) && !inbox.contains(&anonymous));
    assert_refunded_once(&app).await;
}
