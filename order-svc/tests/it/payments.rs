//! The payment-result consumer: results move PENDING orders exactly once,
//! never backwards; poison goes to the dead-letter queue without blocking
//! the queue.

use ordermesh_proto::order::v1 as pb;
use ordermesh_testkit::eventually;

use crate::helpers::{PATIENCE, order_request, spawn_app};

fn is(status: pb::OrderStatus) -> impl Fn(&pb::Order) -> bool {
    move |o| o.status == status as i32
}

#[tokio::test]
async fn payment_succeeded_marks_the_order_paid() {
    let app = spawn_app().await;
    let order = app.create(order_request("ord-1", "alice")).await.unwrap();
    app.publish_succeeded("msg-1", "ord-1").await;

    let paid = app.wait_for_order("ord-1", is(pb::OrderStatus::Paid)).await;
    assert_eq!(paid.version, 2);
    assert_eq!(paid.failure_reason, "");
    assert_eq!(paid.total_minor, order.total_minor);
    let (before, after) = (order.update_time.unwrap(), paid.update_time.unwrap());
    assert!((after.seconds, after.nanos) >= (before.seconds, before.nanos));
    assert_eq!(paid.create_time, order.create_time);
}

#[tokio::test]
async fn payment_failed_records_the_reason() {
    let app = spawn_app().await;
    app.create(order_request("ord-1", "alice")).await.unwrap();
    app.publish_failed("msg-1", "ord-1", "embargo: teapot")
        .await;

    let failed = app
        .wait_for_order("ord-1", is(pb::OrderStatus::Failed))
        .await;
    assert_eq!(failed.version, 2);
    assert_eq!(failed.failure_reason, "embargo: teapot");
}

#[tokio::test]
async fn a_redelivered_message_id_is_applied_once() {
    let app = spawn_app().await;
    app.create(order_request("ord-1", "alice")).await.unwrap();
    app.create(order_request("ord-2", "alice")).await.unwrap();
    app.publish_succeeded("msg-1", "ord-1").await;
    app.wait_for_order("ord-1", is(pb::OrderStatus::Paid)).await;

    // The same message id again, once as it was and once (as a relay could
    // never send, but the inbox must not care) about another order.
    app.publish_succeeded("msg-1", "ord-1").await;
    app.publish_failed("msg-1", "ord-2", "should be ignored")
        .await;
    app.sync_consumer().await;

    let one = app.get("ord-1").await.unwrap();
    assert_eq!(one.status, pb::OrderStatus::Paid as i32);
    assert_eq!(one.version, 2);
    let two = app.get("ord-2").await.unwrap();
    assert_eq!(two.status, pb::OrderStatus::Pending as i32);
    assert_eq!(two.version, 1);
    assert_eq!(app.dead_letters().await, 0);
}

#[tokio::test]
async fn a_late_result_never_moves_an_order_back() {
    let app = spawn_app().await;
    app.create(order_request("ord-1", "alice")).await.unwrap();
    app.publish_succeeded("msg-1", "ord-1").await;
    let paid = app.wait_for_order("ord-1", is(pb::OrderStatus::Paid)).await;

    app.publish_failed("msg-2", "ord-1", "insufficient funds")
        .await;
    app.publish_succeeded("msg-3", "ord-1").await;
    app.sync_consumer().await;

    let order = app.get("ord-1").await.unwrap();
    assert_eq!(order, paid, "a decided order keeps its state and version");

    // Both were handled (recorded in the inbox) and acknowledged.
    let handled: i64 = app
        .sql()
        .await
        .query_one(
            "SELECT count(*) FROM inbox WHERE message_id IN ('msg-2', 'msg-3')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(handled, 2);
    assert_eq!(app.dead_letters().await, 0);
}

#[tokio::test]
async fn a_result_for_an_unknown_order_is_acknowledged() {
    let app = spawn_app().await;
    app.publish_succeeded("msg-1", "no-such-order").await;
    app.sync_consumer().await;

    let recorded: i64 = app
        .sql()
        .await
        .query_one("SELECT count(*) FROM inbox WHERE message_id = 'msg-1'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(recorded, 1);
    assert_eq!(app.dead_letters().await, 0);
    assert_eq!(
        app.get("no-such-order").await.unwrap_err().code(),
        tonic::Code::NotFound
    );
}

#[tokio::test]
async fn poison_is_dead_lettered_and_later_messages_still_apply() {
    let app = spawn_app().await;
    app.create(order_request("ord-1", "alice")).await.unwrap();

    app.publish(
        "payment.succeeded",
        "poison-1",
        "",
        b"\xff\xff\xff not protobuf",
    )
    .await;
    let parked = eventually(PATIENCE, || async {
        (app.dead_letters().await == 1).then_some(())
    })
    .await;
    assert!(parked.is_some(), "the poison message was not dead-lettered");

    app.publish_succeeded("msg-1", "ord-1").await;
    let paid = app.wait_for_order("ord-1", is(pb::OrderStatus::Paid)).await;
    assert_eq!(paid.version, 2);

    // The poison left no trace in the inbox: it was never applied.
    let recorded: i64 = app
        .sql()
        .await
        .query_one(
            "SELECT count(*) FROM inbox WHERE message_id = 'poison-1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(recorded, 0);
    assert_eq!(app.dead_letters().await, 1);
}

#[tokio::test]
async fn a_failure_whose_reason_text_cannot_be_stored_still_ends_the_order() {
    let app = spawn_app().await;
    app.create(order_request("ord-1", "alice")).await.unwrap();
    // PostgreSQL text cannot hold NUL: stored without it, not retried.
    app.publish_failed("msg-1", "ord-1", "embargo: tea\0pot")
        .await;
    let failed = app
        .wait_for_order("ord-1", is(pb::OrderStatus::Failed))
        .await;
    assert_eq!(failed.failure_reason, "embargo: tea\u{fffd}pot");
    assert_eq!(app.dead_letters().await, 0);
}

#[tokio::test]
async fn a_result_the_database_refuses_is_dead_lettered_at_once_not_retried() {
    let app = spawn_app().await;
    // No order id holds a NUL (CreateOrder refuses it) and the database
    // refuses one in a query: the same message can never apply.
    app.publish_succeeded("msg-1", "ord\0-1").await;
    let parked = eventually(PATIENCE, || async {
        (app.dead_letters().await == 1).then_some(())
    })
    .await;
    assert!(parked.is_some(), "the message was not dead-lettered");
    // At once: no retry was scheduled for it.
    let retries = format!(
        "ordermesh_consumer_retries_total{{queue=\"{}\"}}",
        app.config.queue
    );
    let metrics = ordermesh_runtime::metrics::render();
    assert!(!metrics.contains(&retries), "{metrics}");
    app.sync_consumer().await;
}
