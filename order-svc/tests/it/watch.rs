//! WatchOrder: the current state, then each change until a terminal status,
//! over gRPC and REST (NDJSON); one LISTEN connection per process whatever
//! the number of watchers; NOTIFY only for watched buckets; the stream
//! outlives the loss of that connection, and ends at the deadline and at
//! shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use order_svc::watch::{APPLICATION_NAME, CHANNEL, LOCK_APPLICATION_NAME, LOCK_CLASS};
use ordermesh_auth::Role;
use ordermesh_proto::order::v1 as pb;
use ordermesh_runtime::db::{DbConfig, Dedicated};
use ordermesh_runtime::listen::notifications;
use ordermesh_testkit::eventually;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use tonic::Streaming;

use crate::helpers::{PATIENCE, TestApp, assert_invalid, order_request, spawn_app, token};

const PENDING: i32 = pb::OrderStatus::Pending as i32;
const PAID: i32 = pb::OrderStatus::Paid as i32;
const FAILED: i32 = pb::OrderStatus::Failed as i32;

async fn watch(
    app: &TestApp,
    order_id: &str,
) -> Result<Streaming<pb::WatchOrderResponse>, tonic::Status> {
    let request = pb::WatchOrderRequest {
        order_id: order_id.into(),
    };
    let mut client = app.client.clone();
    Ok(timeout(PATIENCE, client.watch_order(request))
        .await
        .expect("WatchOrder answers in time")?
        .into_inner())
}

/// The next order on the stream; `None` once it ended cleanly.
async fn next(stream: &mut Streaming<pb::WatchOrderResponse>) -> Option<pb::Order> {
    let message = timeout(PATIENCE, stream.message())
        .await
        .expect("the stream moves within the patience")
        .expect("the stream does not fail");
    message.map(|m| m.order.expect("each message carries the order"))
}

/// Pids of the hub's LISTEN connections on the app's database.
async fn hub_pids(sql: &tokio_postgres::Client) -> Vec<i32> {
    pids_named(sql, APPLICATION_NAME).await
}

/// Pids of the hub's bucket-lock connections on the app's database.
async fn lock_pids(sql: &tokio_postgres::Client) -> Vec<i32> {
    pids_named(sql, LOCK_APPLICATION_NAME).await
}

async fn pids_named(sql: &tokio_postgres::Client, name: &str) -> Vec<i32> {
    sql.query(
        r#"SELECT pid FROM pg_stat_activity
           WHERE datname = current_database() AND application_name = $1"#,
        &[&name],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// The bucket locks (shared advisory locks of the watch class) `pid` holds.
async fn bucket_locks(sql: &tokio_postgres::Client, pid: Option<i32>) -> Vec<i32> {
    sql.query(
        r#"SELECT objid::text::int4 FROM pg_locks
           WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database
                                                       WHERE datname = current_database())
             AND classid::text::int4 = $1 AND objsubid = 2 AND mode = 'ShareLock' AND granted
             AND ($2::int4 IS NULL OR pid = $2)
           ORDER BY 1"#,
        &[&LOCK_CLASS, &pid],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

async fn bucket_of(sql: &tokio_postgres::Client, order_id: &str) -> i32 {
    sql.query_one("SELECT hashtext($1) & 1023", &[&order_id])
        .await
        .unwrap()
        .get(0)
}

/// A plain connection LISTENing on the watch channel: the payloads, in
/// commit order.
async fn listen(app: &TestApp) -> (Dedicated, mpsc::UnboundedReceiver<String>) {
    let config: DbConfig = app.db.url.parse().unwrap();
    notifications(&config, CHANNEL)
        .await
        .expect("LISTEN on the watch channel")
}

/// The payloads notified before a marker NOTIFYed now. Notifications come
/// in commit order, so this is everything committed before the call.
async fn notified_so_far(app: &TestApp, rx: &mut mpsc::UnboundedReceiver<String>) -> Vec<String> {
    let marker = format!("marker-{}", uuid::Uuid::new_v4().simple());
    app.sql()
        .await
        .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &marker])
        .await
        .unwrap();
    let mut seen = Vec::new();
    loop {
        let payload = timeout(PATIENCE, rx.recv())
            .await
            .expect("the marker arrives")
            .expect("the listener is up");
        if payload == marker {
            return seen;
        }
        seen.push(payload);
    }
}

#[tokio::test]
async fn a_watch_sends_the_current_state_then_the_terminal_one_and_ends() {
    let app = spawn_app().await;
    app.create(order_request("ord-1", "alice")).await.unwrap();
    let mut stream = watch(&app, "ord-1").await.unwrap();
    let first = next(&mut stream).await.unwrap();
    assert_eq!((first.status, first.version), (PENDING, 1));
    assert_eq!(first.order_id, "ord-1");

    app.publish_succeeded("msg-1", "ord-1").await;
    let paid = next(&mut stream).await.unwrap();
    assert_eq!((paid.status, paid.version), (PAID, 2));
    assert_eq!(paid, app.get("ord-1").await.unwrap());
    assert_eq!(next(&mut stream).await, None, "the stream ends after PAID");
}

#[tokio::test]
async fn an_already_terminal_order_sends_one_message_and_ends() {
    let app = spawn_app().await;
    app.create(order_request("ord-1", "alice")).await.unwrap();
    app.publish_failed("msg-1", "ord-1", "insufficient funds")
        .await;
    app.wait_for_order("ord-1", |o| o.status == FAILED).await;

    let mut stream = watch(&app, "ord-1").await.unwrap();
    let only = next(&mut stream).await.unwrap();
    assert_eq!((only.status, only.version), (FAILED, 2));
    assert_eq!(only.failure_reason, "insufficient funds");
    assert_eq!(next(&mut stream).await, None);
}

#[tokio::test]
async fn unknown_orders_and_bad_ids_are_refused() {
    let app = spawn_app().await;
    let status = watch(&app, "no-such-order").await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    for bad in ["", "has space", &"o".repeat(129)] {
        let status = watch(&app, bad).await.unwrap_err();
        assert_invalid(&status, "order_id");
    }
    // A refused watch leaves nothing behind.
    let sql = app.sql().await;
    let left = eventually(PATIENCE, || async {
        bucket_locks(&sql, None).await.is_empty().then_some(())
    })
    .await;
    assert!(left.is_some(), "a bucket lock outlived the refused watch");
}

#[tokio::test]
async fn a_deadline_ends_the_stream() {
    let app = spawn_app().await;
    app.create(order_request("ord-1", "alice")).await.unwrap();
    let started = Instant::now();
    let mut request = tonic::Request::new(pb::WatchOrderRequest {
        order_id: "ord-1".into(),
    });
    request.set_timeout(Duration::from_millis(500));
    let mut stream = app
        .client
        .clone()
        .watch_order(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut stream).await.unwrap().status, PENDING);
    let status = timeout(PATIENCE, stream.message())
        .await
        .expect("the deadline ends the stream")
        .unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(
        elapsed >= Duration::from_millis(450) && elapsed < Duration::from_secs(5),
        "ended after {elapsed:?}"
    );
}

#[tokio::test]
async fn shutdown_ends_open_streams_without_waiting_for_the_grace() {
    let app = spawn_app().await;
    app.create(order_request("ord-1", "alice")).await.unwrap();
    let mut stream = watch(&app, "ord-1").await.unwrap();
    assert_eq!(next(&mut stream).await.unwrap().status, PENDING);
    let reader = tokio::spawn(async move { stream.message().await });

    let started = Instant::now();
    app.stop().await.expect("clean shutdown");
    let took = started.elapsed();
    // The test app's grace is 5 s; a held stream would use it all.
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
    let status = timeout(PATIENCE, reader)
        .await
        .expect("the stream ended")
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("shutting down"), "{status:?}");
}

async fn next_line<S, E>(body: &mut S, buffer: &mut Vec<u8>) -> Option<Value>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Debug,
{
    loop {
        if let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            return Some(serde_json::from_slice(&line[..end]).expect("each line is JSON"));
        }
        let chunk = timeout(PATIENCE, body.next())
            .await
            .expect("the body moves within the patience");
        match chunk {
            Some(chunk) => buffer.extend_from_slice(&chunk.expect("the body reads")),
            None => {
                assert!(buffer.is_empty(), "a partial line at the end");
                return None;
            }
        }
    }
}

/// A second replica of the app, on the same database and queue, serving
/// on a port this test knows.
async fn second_replica(
    app: &TestApp,
) -> (
    SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(order_svc::run(
        app.config.clone(),
        listener,
        shutdown.clone(),
    ));
    (addr, shutdown, task)
}

#[tokio::test]
async fn a_watch_over_rest_streams_ndjson_until_the_terminal_state() {
    let app = spawn_app().await;
    app.create(order_request("ord-1", "alice")).await.unwrap();
    // REST is served on the gRPC port; the test app does not say which, so
    // a second replica on a known port serves this watch (the payment may
    // be applied by either: both hubs get the NOTIFY).
    let (addr, shutdown, task) = second_replica(&app).await;
    let http = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let admin = format!("Bearer {}", token("test-admin", Role::Admin));
    let get = |path: String| {
        let request = http::Request::get(format!("http://{addr}{path}"))
            .header("authorization", admin.as_str())
            .body(Empty::new())
            .unwrap();
        http.request(request)
    };
    let ready = eventually(PATIENCE, || async {
        let response = get("/readyz".into()).await.ok()?;
        (response.status() == http::StatusCode::OK).then_some(())
    })
    .await;
    assert!(ready.is_some(), "the second replica did not become ready");

    let missing = timeout(PATIENCE, get("/v1/orders/nope:watch".into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(missing.status(), http::StatusCode::NOT_FOUND);

    let response = timeout(PATIENCE, get("/v1/orders/ord-1:watch".into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), http::StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let mut body = response.into_body().into_data_stream();
    let mut buffer = Vec::new();
    let first = next_line(&mut body, &mut buffer).await.unwrap();
    assert_eq!(first["result"]["order"]["orderId"], "ord-1", "{first}");
    assert_eq!(
        first["result"]["order"]["status"], "ORDER_STATUS_PENDING",
        "{first}"
    );

    app.publish_succeeded("msg-1", "ord-1").await;
    let paid = next_line(&mut body, &mut buffer).await.unwrap();
    assert_eq!(
        paid["result"]["order"]["status"], "ORDER_STATUS_PAID",
        "{paid}"
    );
    assert_eq!(paid["result"]["order"]["version"], "2", "{paid}");
    assert_eq!(
        next_line(&mut body, &mut buffer).await,
        None,
        "the body ends after PAID"
    );

    shutdown.cancel();
    timeout(PATIENCE, task).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn a_thousand_watchers_share_one_listen_connection() {
    const N: usize = 1000;
    let app = &spawn_app().await;
    let ids: Vec<String> = (0..N).map(|i| format!("w-{i:04}")).collect();
    futures::stream::iter(&ids)
        .for_each_concurrent(32, |id| async move {
            app.create(order_request(id, "alice")).await.unwrap();
        })
        .await;

    let started = Instant::now();
    let mut streams: Vec<(String, Streaming<pb::WatchOrderResponse>)> = futures::stream::iter(&ids)
        .map(|id| async move {
            let mut stream = watch(app, id).await.unwrap();
            let first = next(&mut stream).await.unwrap();
            assert_eq!(
                (first.order_id.as_str(), first.status),
                (id.as_str(), PENDING)
            );
            (id.clone(), stream)
        })
        .buffer_unordered(100)
        .collect()
        .await;
    eprintln!(
        "{N} watches open, first message each, in {:?}",
        started.elapsed()
    );

    let sql = app.sql().await;
    let pids = hub_pids(&sql).await;
    assert_eq!(
        pids.len(),
        1,
        "one LISTEN connection for {N} watchers: {pids:?}"
    );
    let buckets: i64 = sql
        .query_one(
            "SELECT count(DISTINCT hashtext(order_id) & 1023) FROM orders WHERE order_id LIKE 'w-%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let lockers = lock_pids(&sql).await;
    assert_eq!(lockers.len(), 1, "one lock connection: {lockers:?}");
    assert_eq!(
        bucket_locks(&sql, Some(lockers[0])).await.len() as i64,
        buckets
    );

    let started = Instant::now();
    futures::stream::iter(&ids)
        .for_each_concurrent(64, |id| async move {
            app.publish_succeeded(&format!("msg-{id}"), id).await;
        })
        .await;
    let readers: Vec<_> = streams
        .drain(..)
        .map(|(id, mut stream)| {
            tokio::spawn(async move {
                let paid = next(&mut stream).await.unwrap();
                assert_eq!((paid.order_id.as_str(), paid.status), (id.as_str(), PAID));
                assert_eq!(next(&mut stream).await, None);
            })
        })
        .collect();
    for reader in readers {
        reader.await.expect("every watcher got PAID, then the end");
    }
    eprintln!(
        "{N} payments applied and PAID received by every watcher in {:?}",
        started.elapsed()
    );

    assert_eq!(hub_pids(&sql).await, pids, "still the same one connection");
    let released = eventually(PATIENCE, || async {
        bucket_locks(&sql, None).await.is_empty().then_some(())
    })
    .await;
    assert!(released.is_some(), "bucket locks outlived their watchers");
}

#[tokio::test]
async fn order_changes_notify_only_while_watched() {
    let app = spawn_app().await;
    let (_listener, mut notifications) = listen(&app).await;
    for id in ["ord-1", "ord-2", "ord-3"] {
        app.create(order_request(id, "alice")).await.unwrap();
    }

    // Nobody watches: the payment commits without a NOTIFY.
    app.publish_succeeded("msg-1", "ord-1").await;
    app.wait_for_order("ord-1", |o| o.status == PAID).await;
    assert!(notified_so_far(&app, &mut notifications).await.is_empty());

    // A watcher's bucket is locked, so its order's change is notified.
    let mut stream = watch(&app, "ord-2").await.unwrap();
    assert_eq!(next(&mut stream).await.unwrap().status, PENDING);
    let sql = app.sql().await;
    assert_eq!(
        bucket_locks(&sql, None).await,
        [bucket_of(&sql, "ord-2").await]
    );
    app.publish_succeeded("msg-2", "ord-2").await;
    assert_eq!(next(&mut stream).await.unwrap().status, PAID);
    assert_eq!(notified_so_far(&app, &mut notifications).await, ["ord-2"]);

    // The watch ended and released its lock: quiet again.
    assert_eq!(next(&mut stream).await, None);
    let released = eventually(PATIENCE, || async {
        bucket_locks(&sql, None).await.is_empty().then_some(())
    })
    .await;
    assert!(released.is_some(), "the bucket lock outlived its watcher");
    app.publish_succeeded("msg-3", "ord-3").await;
    app.wait_for_order("ord-3", |o| o.status == PAID).await;
    assert!(notified_so_far(&app, &mut notifications).await.is_empty());
}

#[tokio::test]
async fn a_watch_survives_the_loss_of_the_listen_connection() {
    let app = spawn_app().await;
    for id in ["ord-1", "ord-2"] {
        app.create(order_request(id, "alice")).await.unwrap();
    }
    let mut one = watch(&app, "ord-1").await.unwrap();
    let mut two = watch(&app, "ord-2").await.unwrap();
    assert_eq!(next(&mut one).await.unwrap().status, PENDING);
    assert_eq!(next(&mut two).await.unwrap().status, PENDING);
    let sql = app.sql().await;
    let terminate = |pid: i32| {
        let sql = &sql;
        async move {
            let done: bool = sql
                .query_one("SELECT pg_terminate_backend($1)", &[&pid])
                .await
                .unwrap()
                .get(0);
            assert!(done);
        }
    };

    // Changed while the hub is away: no NOTIFY can reach it, the re-read
    // after reconnecting does.
    let [old] = hub_pids(&sql).await[..] else {
        panic!("one hub connection")
    };
    terminate(old).await;
    sql.execute(
        "UPDATE orders SET status = 'PAID', version = version + 1 WHERE order_id = 'ord-2'",
        &[],
    )
    .await
    .unwrap();
    let paid = next(&mut two).await.unwrap();
    assert_eq!((paid.status, paid.version), (PAID, 2));
    assert_eq!(next(&mut two).await, None);

    // Changed after the hub is back: LISTEN and the bucket lock were taken
    // again, so the NOTIFY reaches it.
    let bucket = bucket_of(&sql, "ord-1").await;
    let new = eventually(PATIENCE, || async {
        let [pid] = hub_pids(&sql).await[..] else {
            return None;
        };
        let [locker] = lock_pids(&sql).await[..] else {
            return None;
        };
        (pid != old && bucket_locks(&sql, Some(locker)).await == [bucket]).then_some(pid)
    })
    .await
    .expect("the hub reconnected and locked the bucket again");
    app.publish_succeeded("msg-1", "ord-1").await;
    let paid = next(&mut one).await.unwrap();
    assert_eq!((paid.status, paid.version), (PAID, 2));
    assert_eq!(next(&mut one).await, None);
    assert_eq!(hub_pids(&sql).await, [new]);
}
