//! CancelOrder: PENDING and PAID orders become CANCELLED at once with one
//! `order.cancelled` event; decided-against orders are FAILED_PRECONDITION;
//! payment results after a cancel never move it; the processor's refund is
//! recorded once.

use futures::future::join_all;
use ordermesh_proto::events::v1 as events;
use ordermesh_proto::order::v1 as pb;
use prost::{Message as _, Name as _};

use crate::helpers::{PATIENCE, TestApp, assert_invalid, order_request, spawn_app};

fn is(status: pb::OrderStatus) -> impl Fn(&pb::Order) -> bool {
    move |o| o.status == status as i32
}

async fn cancel(app: &TestApp, order_id: &str, reason: &str) -> Result<pb::Order, tonic::Status> {
    let resp = app
        .client
        .clone()
        .cancel_order(pb::CancelOrderRequest {
            order_id: order_id.into(),
            reason: reason.into(),
        })
        .await?;
    Ok(resp.into_inner().order.expect("response carries the order"))
}

async fn publish_refunded(app: &TestApp, message_id: &str, order_id: &str, amount_minor: i64) {
    let event = events::PaymentRefunded {
        order_id: order_id.into(),
        customer_id: "alice".into(),
        amount_minor,
        currency_code: "USD".into(),
    };
    app.publish(
        events::PAYMENT_REFUNDED,
        message_id,
        &events::PaymentRefunded::full_name(),
        &event.encode_to_vec(),
    )
    .await;
}

/// The `order.cancelled` events in the outbox, decoded.
async fn cancelled_events(app: &TestApp) -> Vec<events::OrderCancelled> {
    let rows = app
        .sql()
        .await
        .query(
            "SELECT aggregate_id, event_type, payload FROM outbox
             WHERE routing_key = 'order.cancelled' ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|row| {
            let event_type: String = row.get("event_type");
            assert_eq!(event_type, events::OrderCancelled::full_name());
            let payload: Vec<u8> = row.get("payload");
            let event = events::OrderCancelled::decode(payload.as_slice()).unwrap();
            assert_eq!(row.get::<_, String>("aggregate_id"), event.order_id);
            event
        })
        .collect()
}

#[tokio::test]
async fn a_pending_order_is_cancelled_at_once_with_one_event() {
    let app = spawn_app().await;
    let created = app.create(order_request("ord-1", "alice")).await.unwrap();

    let cancelled = cancel(&app, "ord-1", "  changed my mind ").await.unwrap();
    assert_eq!(cancelled.status, pb::OrderStatus::Cancelled as i32);
    assert_eq!(cancelled.cancel_reason, "changed my mind");
    assert_eq!(cancelled.version, created.version + 1);
    assert_eq!(cancelled.refunded_minor, 0);
    assert_eq!(app.get("ord-1").await.unwrap(), cancelled);

    let events = cancelled_events(&app).await;
    assert_eq!(
        events,
        [events::OrderCancelled {
            order_id: "ord-1".into(),
            customer_id: "alice".into(),
            reason: "changed my mind".into(),
        }]
    );
    // No relay runs here, so order.created was still in the outbox: it is
    // withdrawn with the cancel, and the processor never hears of the order.
    assert_eq!(outbox_keys(&app).await, ["order.cancelled"]);
}

#[tokio::test]
async fn cancelling_an_order_whose_event_the_relay_parked_withdraws_it_from_the_parked_table() {
    let app = spawn_app().await;
    app.create(order_request("ord-parked", "alice"))
        .await
        .unwrap();
    // As the relay parks a row it can never publish: same id, with a reason.
    app.sql()
        .await
        .batch_execute(
            "WITH moved AS (DELETE FROM outbox WHERE aggregate_id = 'ord-parked' RETURNING *)
             INSERT INTO outbox_parked (id, event_id, aggregate_id, routing_key, event_type,
                                        payload, headers, create_time, attempts, reason)
             SELECT id, event_id, aggregate_id, routing_key, event_type, payload, headers,
                    create_time, 10, 'unroutable: test' FROM moved",
        )
        .await
        .unwrap();

    let cancelled = cancel(&app, "ord-parked", "stuck").await.unwrap();
    assert_eq!(cancelled.status, pb::OrderStatus::Cancelled as i32);
    let parked: i64 = app
        .sql()
        .await
        .query_one("SELECT count(*) FROM outbox_parked", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(parked, 0, "the parked order.created is withdrawn");
    assert_eq!(outbox_keys(&app).await, ["order.cancelled"]);
}

/// The routing keys left in the outbox, oldest first.
async fn outbox_keys(app: &TestApp) -> Vec<String> {
    app.sql()
        .await
        .query("SELECT routing_key FROM outbox ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Cancels `order_id` while a transaction holds its `order.created` outbox
/// row `FOR UPDATE`, as a relay batch publishing it does (for as long as
/// the broker takes: a relay cut off from it holds the row for seconds).
/// The cancel must not wait for that lock: it is bounded here only by a
/// generous deadline, far longer than the 1 s it is meant to take, so a
/// slow machine does not fail it. Then the "relay" lets go.
async fn cancel_while_the_relay_holds_the_event(app: &TestApp, order_id: &str) -> pb::Order {
    let mut relay = app.sql().await;
    let batch = relay.transaction().await.unwrap();
    let held = batch
        .query(
            "SELECT id FROM outbox WHERE aggregate_id = $1 AND routing_key = 'order.created'
             FOR UPDATE",
            &[&order_id],
        )
        .await
        .unwrap();
    assert_eq!(held.len(), 1);

    let cancelled = tokio::time::timeout(PATIENCE, cancel(app, order_id, "too slow"))
        .await
        .expect("CancelOrder waited for the relay's lock")
        .unwrap();
    batch.rollback().await.unwrap();
    cancelled
}

#[tokio::test]
async fn cancel_leaves_an_event_being_published_to_the_relay_without_waiting() {
    let app = spawn_app().await;
    let created = app.create(order_request("ord-1", "alice")).await.unwrap();
    // The order keeps its event's id, so the withdraw finds it by index.
    let sql = app.sql().await;
    let kept: Option<uuid::Uuid> = sql
        .query_one(
            "SELECT created_event_id FROM orders WHERE order_id = 'ord-1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let written: uuid::Uuid = sql
        .query_one("SELECT event_id FROM outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, Some(written));

    let cancelled = cancel_while_the_relay_holds_the_event(&app, "ord-1").await;
    assert_eq!(cancelled.status, pb::OrderStatus::Cancelled as i32);
    assert_eq!(cancelled.version, created.version + 1);
    assert_eq!(app.get("ord-1").await.unwrap(), cancelled);
    // The relay was publishing order.created: it is left to be published,
    // and the processor, seeing the cancel after it, refunds or never
    // charges.
    assert_eq!(
        outbox_keys(&app).await,
        ["order.created", "order.cancelled"]
    );
}

#[tokio::test]
async fn orders_from_before_the_event_id_was_kept_are_withdrawn_by_a_scan() {
    let app = spawn_app().await;
    app.create(order_request("ord-1", "alice")).await.unwrap();
    app.create(order_request("ord-2", "alice")).await.unwrap();
    app.sql()
        .await
        .execute("UPDATE orders SET created_event_id = NULL", &[])
        .await
        .unwrap();

    // Unpublished: withdrawn.
    let cancelled = cancel(&app, "ord-1", "").await.unwrap();
    assert_eq!(cancelled.status, pb::OrderStatus::Cancelled as i32);
    // Being published: left alone, without waiting either.
    let cancelled = cancel_while_the_relay_holds_the_event(&app, "ord-2").await;
    assert_eq!(cancelled.status, pb::OrderStatus::Cancelled as i32);

    let left: Vec<(String, String)> = app
        .sql()
        .await
        .query(
            "SELECT aggregate_id, routing_key FROM outbox ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let pair = |o: &str, k: &str| (o.to_owned(), k.to_owned());
    assert_eq!(
        left,
        [
            pair("ord-2", "order.created"),
            pair("ord-1", "order.cancelled"),
            pair("ord-2", "order.cancelled"),
        ]
    );
}

#[tokio::test]
async fn a_payment_result_after_the_cancel_never_moves_it_and_the_refund_lands_once() {
    let app = spawn_app().await;
    let created = app.create(order_request("ord-1", "alice")).await.unwrap();
    let cancelled = cancel(&app, "ord-1", "").await.unwrap();
    assert_eq!(cancelled.cancel_reason, "");

    // The processor had charged it before it saw the cancel: its success
    // arrives late, then its refund.
    app.publish_succeeded("msg-paid", "ord-1").await;
    app.sync_consumer().await;
    assert_eq!(app.get("ord-1").await.unwrap(), cancelled);

    publish_refunded(&app, "msg-refund", "ord-1", created.total_minor).await;
    let refunded = app.wait_for_order("ord-1", |o| o.refunded_minor != 0).await;
    assert_eq!(refunded.status, pb::OrderStatus::Cancelled as i32);
    assert_eq!(refunded.refunded_minor, created.total_minor);
    assert_eq!(refunded.version, cancelled.version + 1);

    // The same refund redelivered, and another message of a refund: nothing.
    publish_refunded(&app, "msg-refund", "ord-1", created.total_minor).await;
    publish_refunded(&app, "msg-refund-2", "ord-1", 1).await;
    app.sync_consumer().await;
    assert_eq!(app.get("ord-1").await.unwrap(), refunded);
    assert_eq!(app.dead_letters().await, 0);
}

#[tokio::test]
async fn a_paid_order_is_cancelled_and_its_refund_recorded() {
    let app = spawn_app().await;
    let created = app.create(order_request("ord-1", "alice")).await.unwrap();
    app.publish_succeeded("msg-1", "ord-1").await;
    let paid = app.wait_for_order("ord-1", is(pb::OrderStatus::Paid)).await;

    let cancelled = cancel(&app, "ord-1", "returned").await.unwrap();
    assert_eq!(cancelled.status, pb::OrderStatus::Cancelled as i32);
    assert_eq!(cancelled.version, paid.version + 1);
    assert_eq!(cancelled_events(&app).await.len(), 1);

    publish_refunded(&app, "msg-2", "ord-1", created.total_minor).await;
    let refunded = app
        .wait_for_order("ord-1", |o| o.refunded_minor == created.total_minor)
        .await;
    assert_eq!(refunded.cancel_reason, "returned");
}

#[tokio::test]
async fn failed_or_cancelled_orders_are_a_failed_precondition() {
    let app = spawn_app().await;
    app.create(order_request("ord-failed", "alice"))
        .await
        .unwrap();
    app.publish_failed("msg-1", "ord-failed", "insufficient funds")
        .await;
    let failed = app
        .wait_for_order("ord-failed", is(pb::OrderStatus::Failed))
        .await;
    let err = cancel(&app, "ord-failed", "").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("FAILED"), "{err:?}");
    assert_eq!(app.get("ord-failed").await.unwrap(), failed);

    app.create(order_request("ord-2", "alice")).await.unwrap();
    let cancelled = cancel(&app, "ord-2", "").await.unwrap();
    let err = cancel(&app, "ord-2", "again").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("CANCELLED"), "{err:?}");
    assert_eq!(app.get("ord-2").await.unwrap(), cancelled);
    assert_eq!(cancelled_events(&app).await.len(), 1);
}

#[tokio::test]
async fn concurrent_cancels_cancel_once() {
    let app = spawn_app().await;
    app.create(order_request("ord-1", "alice")).await.unwrap();

    let results = join_all((0..10).map(|i| {
        let app = &app;
        async move { cancel(app, "ord-1", &format!("attempt {i}")).await }
    }))
    .await;
    let won: Vec<&pb::Order> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(won.len(), 1, "{results:?}");
    for lost in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(lost.code(), tonic::Code::FailedPrecondition, "{lost:?}");
    }
    let stored = app.get("ord-1").await.unwrap();
    assert_eq!(&stored, won[0]);
    assert_eq!(stored.version, 2);
    let events = cancelled_events(&app).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].reason, stored.cancel_reason);
}

#[tokio::test]
async fn bad_requests_name_the_field_and_unknown_orders_are_not_found() {
    let app = spawn_app().await;
    let err = cancel(&app, "no-such-order", "").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");

    assert_invalid(&cancel(&app, "", "").await.unwrap_err(), "order_id");
    assert_invalid(&cancel(&app, "bad id!", "").await.unwrap_err(), "order_id");
    app.create(order_request("ord-1", "alice")).await.unwrap();
    let long = "x".repeat(257);
    assert_invalid(&cancel(&app, "ord-1", &long).await.unwrap_err(), "reason");
    assert_invalid(&cancel(&app, "ord-1", "a\nb").await.unwrap_err(), "reason");
    // Nothing was written by the refused calls.
    assert_eq!(
        app.get("ord-1").await.unwrap().status,
        pb::OrderStatus::Pending as i32
    );
    assert!(cancelled_events(&app).await.is_empty());
}

#[tokio::test]
async fn refunds_for_orders_that_are_not_cancelled_are_acknowledged_and_ignored() {
    let app = spawn_app().await;
    let created = app.create(order_request("ord-1", "alice")).await.unwrap();
    publish_refunded(&app, "msg-1", "ord-1", 100).await;
    publish_refunded(&app, "msg-2", "no-such-order", 100).await;
    app.sync_consumer().await;
    assert_eq!(app.get("ord-1").await.unwrap(), created);
    assert_eq!(app.dead_letters().await, 0);
}
