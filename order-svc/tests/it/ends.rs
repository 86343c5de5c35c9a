//! Every accepted order ends: an order whose `order.created` the processor
//! rejected as poison gets `payment.failed` with the reason `rejected:
//! <class>` (see processor-svc `tests/it/poison.rs`), becomes FAILED with
//! it and its WatchOrder streams end; the age of the oldest PENDING order
//! is a gauge, so one that does not end shows.

use std::time::Duration;

use order_svc::store::Store;
use ordermesh_proto::order::v1 as pb;
use ordermesh_runtime::metrics::ORDERS_OLDEST_PENDING;
use ordermesh_testkit::{eventually, rest_call};
use tokio::time::timeout;

use crate::helpers::{PATIENCE, order_request, spawn_app, spawn_app_with};

fn is(status: pb::OrderStatus) -> impl Fn(&pb::Order) -> bool {
    move |o| o.status == status as i32
}

#[tokio::test]
async fn an_order_the_processor_rejected_as_poison_ends_failed_and_its_watch_ends() {
    let app = spawn_app().await;
    app.create(order_request("ord-1", "alice")).await.unwrap();
    let mut stream = app
        .client
        .clone()
        .watch_order(pb::WatchOrderRequest {
            order_id: "ord-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut next = async || {
        timeout(PATIENCE, stream.message())
            .await
            .expect("the stream moves within the patience")
            .expect("the stream does not fail")
            .map(|m| m.order.expect("each message carries the order"))
    };
    assert_eq!(
        next().await.map(|o| o.status),
        Some(pb::OrderStatus::Pending as i32)
    );

    // What the processor answers when the database refuses to settle it.
    app.publish_failed("msg-1", "ord-1", "rejected: check violation")
        .await;

    let failed = next().await.expect("the decision is streamed");
    assert_eq!(failed.status, pb::OrderStatus::Failed as i32);
    assert_eq!(failed.failure_reason, "rejected: check violation");
    assert_eq!(next().await, None, "the stream ends at the terminal status");
    assert_eq!(app.get("ord-1").await.unwrap(), failed);
    assert_eq!(app.dead_letters().await, 0);
}

/// The gauge's value in a `/metrics` text, if it is there.
fn gauge(metrics: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line
            .strip_prefix(ORDERS_OLDEST_PENDING)?
            .strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

#[tokio::test]
async fn the_oldest_pending_order_s_age_is_measured_until_every_order_ended() {
    let app = spawn_app_with(|c| c.pending_age_interval = Duration::from_millis(50)).await;
    let pool = ordermesh_runtime::db::pool(app.config.database.clone(), 1).unwrap();
    let store = Store::new(pool);
    assert_eq!(store.oldest_pending_age().await.unwrap(), None);

    app.create(order_request("ord-1", "alice")).await.unwrap();
    app.create(order_request("ord-2", "alice")).await.unwrap();
    app.create(order_request("ord-3", "alice")).await.unwrap();
    // The age grows while the orders wait.
    let waited = Duration::from_millis(300);
    eventually(PATIENCE, || async {
        let age = store.oldest_pending_age().await.unwrap()?;
        (age >= waited).then_some(())
    })
    .await
    .expect("the oldest pending order ages");
    // And the service publishes it (the recorder is process-wide: another
    // test's service in this process may publish too, so only look for
    // an age as old as ours).
    eventually(PATIENCE, || async {
        let answer = rest_call(app.addr, http::Method::GET, "/metrics", None, None).await;
        let text = answer.body.as_str()?.to_owned();
        (gauge(&text)? >= waited.as_secs_f64()).then_some(())
    })
    .await
    .expect("/metrics shows the oldest pending order's age");

    // Orders that ended, however they ended, no longer count.
    app.publish_succeeded("msg-1", "ord-1").await;
    app.wait_for_order("ord-1", is(pb::OrderStatus::Paid)).await;
    app.publish_failed("msg-2", "ord-2", "rejected: check violation")
        .await;
    app.wait_for_order("ord-2", is(pb::OrderStatus::Failed))
        .await;
    assert!(store.oldest_pending_age().await.unwrap().is_some());
    app.client
        .clone()
        .cancel_order(pb::CancelOrderRequest {
            order_id: "ord-3".into(),
            reason: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(store.oldest_pending_age().await.unwrap(), None);
}
