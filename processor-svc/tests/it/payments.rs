//! The `order.created` consumer end to end: events published to the test
//! exchange, decisions read back from `payments`, balances and the outbox.

use lapin::BasicProperties;
use ordermesh_proto::events::v1::{PaymentFailed, PaymentSucceeded};
use ordermesh_testkit::eventually;
use processor_svc::rules::Embargo;
use prost::Message as _;

use crate::helpers::{PaymentRow, TRACEPARENT, WAIT, message_id, order, spawn_app, spawn_app_with};

#[tokio::test]
async fn a_funded_order_is_debited_and_reported_as_succeeded() {
    let app = spawn_app().await;
    app.fund("alice", "USD", 10_000).await;

    let id = message_id();
    let event = order(
        "order-1",
        "alice",
        "USD",
        &[("widget", 2, 1_500), ("gadget", 1, 500)],
    );
    app.publish_order(&id, &event).await;

    let payment = app.wait_for_payment("order-1").await;
    assert_eq!(
        payment,
        PaymentRow {
            status: "SUCCEEDED".into(),
            reason: None,
            amount_minor: 3_500,
            message_id: id.clone(),
        }
    );
    assert_eq!(app.balance("alice").await, 6_500);
    assert_eq!(app.inbox().await, [id]);

    let outbox = app.outbox("order-1").await;
    assert_eq!(outbox.len(), 1, "{outbox:?}");
    let row = &outbox[0];
    assert_eq!(row.aggregate_id, "order-1");
    assert_eq!(row.routing_key, "payment.succeeded");
    assert_eq!(row.event_type, "ordermesh.events.v1.PaymentSucceeded");
    // The outcome continues the order's trace from the consume span: the
    // incoming trace id, a parent span of the processor's own.
    let traceparent = row.headers["traceparent"].as_str().expect("a traceparent");
    let incoming: Vec<&str> = TRACEPARENT.split('-').collect();
    let outgoing: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(outgoing.len(), 4, "{traceparent}");
    assert_eq!(outgoing[1], incoming[1], "same trace: {traceparent}");
    assert_ne!(
        outgoing[2], incoming[2],
        "a span of the processor: {traceparent}"
    );
    let paid = PaymentSucceeded::decode(row.payload.as_slice()).unwrap();
    assert_eq!(
        paid,
        PaymentSucceeded {
            order_id: "order-1".into(),
            customer_id: "alice".into(),
            amount_minor: 3_500,
            currency_code: "USD".into(),
        }
    );
}

#[tokio::test]
async fn a_redelivered_or_repeated_order_is_debited_once() {
    // One delivery at a time, so the last message being settled means
    // every earlier one was handled too.
    let app = spawn_app_with(|c| c.prefetch = 1).await;
    app.fund("alice", "USD", 10_000).await;

    let event = order("order-1", "alice", "USD", &[("widget", 1, 3_000)]);
    let first = message_id();
    let second = message_id();
    app.publish_order(&first, &event).await;
    app.publish_order(&first, &event).await; // the relay publishing again
    app.publish_order(&second, &event).await; // another event, same order
    let last = message_id();
    app.publish_order(
        &last,
        &order("order-2", "nobody", "USD", &[("widget", 1, 1)]),
    )
    .await;
    app.wait_for_payment("order-2").await;

    let payment = app.wait_for_payment("order-1").await;
    assert_eq!(payment.status, "SUCCEEDED");
    assert_eq!(payment.message_id, first);
    assert_eq!(app.balance("alice").await, 7_000);
    assert_eq!(app.outbox("order-1").await.len(), 1);
    let mut seen = vec![first, second, last];
    seen.sort();
    assert_eq!(app.inbox().await, seen);

    // The consumer loop counted the redelivery as a duplicate (the inbox
    // said so) and the other three as processed.
    let counted = |name: &str| format!("{name}{{queue=\"{}\"}}", app.queue);
    let (duplicates, processed) = (
        counted("ordermesh_consumer_duplicates_total"),
        counted("ordermesh_consumer_processed_total"),
    );
    let text = eventually(WAIT, || async {
        let text = ordermesh_runtime::metrics::render();
        text.contains(&format!("{processed} 3")).then_some(text)
    })
    .await
    .expect("three deliveries counted as processed");
    assert!(text.contains(&format!("{duplicates} 1")), "{text}");
}

#[tokio::test]
async fn concurrent_events_for_one_order_debit_once() {
    let app = spawn_app().await;
    app.fund("alice", "USD", 10_000).await;

    let event = order("order-1", "alice", "USD", &[("widget", 1, 3_000)]);
    let ids: Vec<String> = (0..8).map(|_| message_id()).collect();
    for id in &ids {
        app.publish_order(id, &event).await;
    }
    eventually(WAIT, || async {
        (app.inbox().await.len() == ids.len()).then_some(())
    })
    .await
    .expect("every event was handled");

    assert_eq!(app.balance("alice").await, 7_000);
    assert_eq!(app.payment_count().await, 1);
    assert_eq!(app.outbox("order-1").await.len(), 1);
}

/// Publishes an order, waits for its decision and returns the failure
/// reason from the `payment.failed` outbox row.
async fn failure_reason(
    app: &crate::helpers::TestApp,
    event: &ordermesh_proto::events::v1::OrderCreated,
) -> String {
    app.publish_order(&message_id(), event).await;
    let payment = app.wait_for_payment(&event.order_id).await;
    assert_eq!(payment.status, "FAILED");

    let outbox = app.outbox(&event.order_id).await;
    assert_eq!(outbox.len(), 1, "{outbox:?}");
    assert_eq!(outbox[0].routing_key, "payment.failed");
    assert_eq!(outbox[0].event_type, "ordermesh.events.v1.PaymentFailed");
    let failed = PaymentFailed::decode(outbox[0].payload.as_slice()).unwrap();
    assert_eq!(failed.order_id, event.order_id);
    assert_eq!(failed.customer_id, event.customer_id);
    assert_eq!(Some(&failed.reason), payment.reason.as_ref());
    failed.reason
}

#[tokio::test]
async fn an_embargoed_sku_fails_the_order_without_a_debit() {
    let app = spawn_app().await;
    app.fund("alice", "USD", 10_000).await;

    let event = order(
        "order-1",
        "alice",
        "USD",
        &[("widget", 1, 100), ("teapot", 1, 2_000)],
    );
    let reason = failure_reason(&app, &event).await;
    assert!(
        reason.contains("embargo") && reason.contains("teapot"),
        "{reason}"
    );
    assert_eq!(app.balance("alice").await, 10_000);
}

#[tokio::test]
async fn the_embargo_list_comes_from_the_configuration() {
    let app = spawn_app_with(|c| c.embargo = Embargo::new(["anvil"])).await;
    app.fund("alice", "USD", 10_000).await;

    let reason = failure_reason(&app, &order("order-1", "alice", "USD", &[("anvil", 1, 10)])).await;
    assert_eq!(reason, "embargo: anvil");
    app.publish_order(
        &message_id(),
        &order("order-2", "alice", "USD", &[("teapot", 1, 10)]),
    )
    .await;
    assert_eq!(app.wait_for_payment("order-2").await.status, "SUCCEEDED");
    assert_eq!(app.balance("alice").await, 9_990);
}

#[tokio::test]
async fn insufficient_funds_fail_the_order_without_a_debit() {
    let app = spawn_app().await;
    app.fund("alice", "USD", 1_000).await;

    let reason = failure_reason(
        &app,
        &order("order-1", "alice", "USD", &[("widget", 3, 500)]),
    )
    .await;
    assert_eq!(reason, "insufficient funds");
    assert_eq!(app.balance("alice").await, 1_000);
}

#[tokio::test]
async fn an_order_without_an_account_fails() {
    let app = spawn_app().await;
    let reason = failure_reason(
        &app,
        &order("order-1", "nobody", "USD", &[("widget", 1, 100)]),
    )
    .await;
    assert_eq!(reason, "no account");
}

#[tokio::test]
async fn an_order_in_another_currency_fails_without_a_debit() {
    let app = spawn_app().await;
    app.fund("alice", "EUR", 10_000).await;

    let reason = failure_reason(
        &app,
        &order("order-1", "alice", "USD", &[("widget", 1, 100)]),
    )
    .await;
    assert_eq!(reason, "currency mismatch");
    assert_eq!(app.balance("alice").await, 10_000);
}

#[tokio::test]
async fn an_order_whose_total_disagrees_with_its_items_fails() {
    let app = spawn_app().await;
    app.fund("alice", "USD", 10_000).await;

    let mut event = order("order-1", "alice", "USD", &[("widget", 2, 1_000)]);
    event.total_minor = 1;
    let reason = failure_reason(&app, &event).await;
    assert_eq!(reason, "total mismatch");
    assert_eq!(app.balance("alice").await, 10_000);
}

#[tokio::test]
async fn poison_is_dead_lettered_and_later_messages_are_still_processed() {
    let app = spawn_app().await;
    app.fund("alice", "USD", 10_000).await;

    let poison = message_id();
    let props = BasicProperties::default()
        .with_message_id(poison.as_str().into())
        .with_delivery_mode(2);
    app.publish(
        &app.exchange,
        "order.created",
        props,
        b"not protobuf \xff\xff",
    )
    .await;
    app.publish_order(
        &message_id(),
        &order("order-1", "alice", "USD", &[("widget", 1, 100)]),
    )
    .await;

    assert_eq!(app.wait_for_payment("order-1").await.status, "SUCCEEDED");
    assert_eq!(app.wait_for_dead_letter().await, poison);
    assert!(!app.inbox().await.contains(&poison));
    assert_eq!(app.balance("alice").await, 9_900);
}

#[tokio::test]
async fn an_event_under_another_routing_key_is_dead_lettered() {
    let app = spawn_app().await;
    app.fund("alice", "USD", 10_000).await;

    // Straight into the queue through the default exchange: the routing
    // key is then the queue's name, not `order.created`.
    let id = message_id();
    let event = order("order-1", "alice", "USD", &[("widget", 1, 100)]);
    let props = BasicProperties::default().with_message_id(id.as_str().into());
    app.publish("", &app.queue, props, &event.encode_to_vec())
        .await;

    assert_eq!(app.wait_for_dead_letter().await, id);
    assert_eq!(app.payment("order-1").await, None);
    assert_eq!(app.balance("alice").await, 10_000);
}

#[tokio::test]
async fn an_event_the_database_refuses_fails_the_order_not_retried_forever() {
    let app = spawn_app().await;
    // PostgreSQL text cannot hold NUL; retrying would fail the same way.
    // The order is failed instead, without a payments row (whose customer
    // id the database refuses as well).
    let id = message_id();
    app.publish_order(
        &id,
        &order("order-1", "al\0ice", "USD", &[("widget", 1, 100)]),
    )
    .await;
    app.wait_for_inbox(&id).await;
    let outbox = app.outbox("order-1").await;
    assert_eq!(outbox.len(), 1, "{outbox:?}");
    assert_eq!(outbox[0].routing_key, "payment.failed");
    let failed = PaymentFailed::decode(outbox[0].payload.as_slice()).unwrap();
    assert_eq!(failed.reason, "rejected: invalid text");
    assert_eq!(app.payment("order-1").await, None);
}

#[tokio::test]
async fn an_order_totalling_zero_fails_without_a_debit() {
    let app = spawn_app().await;
    app.fund("alice", "USD", 10_000).await;

    let event = order("order-1", "alice", "USD", &[("gift", 2, 0)]);
    assert_eq!(event.total_minor, 0);
    let reason = failure_reason(&app, &event).await;
    assert_eq!(reason, "total not positive");
    assert_eq!(app.balance("alice").await, 10_000);
    assert_eq!(app.ledger("alice").await.len(), 1, "only the deposit");
}
