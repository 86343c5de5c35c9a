//! Every order the processor is told of ends: an `order.created` the
//! database refuses to settle (poison: the same data would be refused
//! again) is answered with `payment.failed` and a short reason, with its
//! inbox entry, instead of waiting in the dead-letter queue while the order
//! stays PENDING. Failures that may pass are still retried.

use ordermesh_proto::events::v1::PaymentFailed;
use ordermesh_runtime::db::DbConfig;
use prost::Message as _;

use crate::helpers::{LedgerRow, PaymentRow, TestApp, message_id, order, spawn_app_with};

/// A service with one delivery at a time (so a later message being settled
/// means the earlier one was handled), and a SQL client on its database
/// for the schema changes that make the database refuse what it would
/// otherwise accept.
async fn spawn_app_with_sql() -> (TestApp, tokio_postgres::Client) {
    let mut database: Option<DbConfig> = None;
    let app = spawn_app_with(|c| {
        c.prefetch = 1;
        database = Some(c.database.clone());
    })
    .await;
    let (client, connection) = database
        .expect("the configuration was seen")
        .connect()
        .await
        .expect("connect to the test database");
    tokio::spawn(connection);
    (app, client)
}

/// Messages waiting in the dead-letter queue of the service's queue.
async fn dead_letters(app: &TestApp) -> u32 {
    let connection = lapin::Connection::connect(&ordermesh_testkit::amqp_url(), Default::default())
        .await
        .expect("connect to RabbitMQ");
    let channel = connection.create_channel().await.expect("open a channel");
    let dlq = ordermesh_messaging::amqp::dead_letter_queue(&app.queue);
    let count = ordermesh_testkit::queue_depth(&channel, &dlq).await;
    let _ = connection.close(0, "done".into()).await;
    count
}

/// The one outbox row about `order_id`: a `payment.failed`, decoded.
async fn the_failure(app: &TestApp, order_id: &str) -> PaymentFailed {
    let outbox = app.outbox(order_id).await;
    assert_eq!(outbox.len(), 1, "{outbox:?}");
    assert_eq!(outbox[0].routing_key, "payment.failed");
    assert_eq!(outbox[0].event_type, "ordermesh.events.v1.PaymentFailed");
    PaymentFailed::decode(outbox[0].payload.as_slice()).expect("a PaymentFailed")
}

/// Publishes a fundable order and waits for its debit: every message
/// published before it (one delivery at a time) has been handled.
async fn settle_a_later_order(app: &TestApp, order_id: &str) {
    app.publish_order(
        &message_id(),
        &order(order_id, "alice", "USD", &[("widget", 1, 100)]),
    )
    .await;
    assert_eq!(app.wait_for_payment(order_id).await.status, "SUCCEEDED");
}

#[tokio::test]
async fn an_amount_the_ledger_refuses_fails_the_order_instead_of_dead_lettering_it() {
    let (app, sql) = spawn_app_with_sql().await;
    app.fund("alice", "USD", 10_000).await;
    // A ledger rule the processor's own rules do not know: no debit of
    // 1,000 or more. The debit of the order below breaks it.
    sql.batch_execute(
        "ALTER TABLE transactions ADD CONSTRAINT test_small_debits CHECK (amount_minor > -1000)",
    )
    .await
    .unwrap();

    let id = message_id();
    let event = order("order-1", "alice", "USD", &[("piano", 1, 5_000)]);
    app.publish_order(&id, &event).await;

    let payment = app.wait_for_payment("order-1").await;
    assert_eq!(
        payment,
        PaymentRow {
            status: "FAILED".into(),
            reason: Some("rejected: check violation".into()),
            amount_minor: 5_000,
            message_id: id.clone(),
        }
    );
    let failed = the_failure(&app, "order-1").await;
    assert_eq!(
        failed,
        PaymentFailed {
            order_id: "order-1".into(),
            customer_id: "alice".into(),
            // No constraint, table or value names: only the class.
            reason: "rejected: check violation".into(),
        }
    );
    assert_eq!(app.inbox().await, std::slice::from_ref(&id));
    // Nothing was debited, and the ledger shows only the deposit.
    assert_eq!(app.balance("alice").await, 10_000);
    assert_eq!(
        app.ledger("alice").await,
        [LedgerRow {
            kind: "DEPOSIT".into(),
            amount_minor: 10_000,
            balance_after_minor: 10_000,
            order_id: None,
        }]
    );

    // The queue moves on, and the order's event is not a dead letter.
    settle_a_later_order(&app, "order-2").await;
    assert_eq!(dead_letters(&app).await, 0);

    // Redelivered (the relay publishing again): the inbox knows it.
    app.publish_order(&id, &event).await;
    settle_a_later_order(&app, "order-3").await;
    assert_eq!(app.outbox("order-1").await.len(), 1);
    assert_eq!(app.balance("alice").await, 10_000 - 200);
    assert_eq!(dead_letters(&app).await, 0);
}

#[tokio::test]
async fn a_reason_the_database_cannot_store_is_replaced_by_the_rejection() {
    let (app, _sql) = spawn_app_with_sql().await;
    app.fund("alice", "USD", 10_000).await;

    // The rules fail it as "invalid item: <sku>", and PostgreSQL text
    // cannot hold the NUL that reason would carry into `payments`.
    let id = message_id();
    app.publish_order(
        &id,
        &order("order-1", "alice", "USD", &[("bad\0sku", 0, 100)]),
    )
    .await;

    let payment = app.wait_for_payment("order-1").await;
    assert_eq!(payment.status, "FAILED");
    assert_eq!(payment.reason.as_deref(), Some("rejected: invalid text"));
    assert_eq!(
        the_failure(&app, "order-1").await.reason,
        "rejected: invalid text"
    );
    assert_eq!(app.inbox().await, [id]);
    settle_a_later_order(&app, "order-2").await;
    assert_eq!(dead_letters(&app).await, 0);
}

#[tokio::test]
async fn a_failure_that_may_pass_is_retried_not_turned_into_a_payment_failure() {
    let (app, sql) = spawn_app_with_sql().await;
    app.fund("alice", "USD", 10_000).await;
    // The first three attempts at a payment meet a serialization failure
    // (a sequence counts them: it is not rolled back with the attempt).
    sql.batch_execute(
        r#"CREATE SEQUENCE test_attempts;
           CREATE FUNCTION test_flaky() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
               IF nextval('test_attempts') <= 3 THEN
                   RAISE EXCEPTION 'flaky (test)' USING ERRCODE = '40001';
               END IF;
               RETURN NEW;
           END $$;
           CREATE TRIGGER test_flaky BEFORE INSERT ON payments
               FOR EACH ROW EXECUTE FUNCTION test_flaky();"#,
    )
    .await
    .unwrap();

    let id = message_id();
    app.publish_order(
        &id,
        &order("order-1", "alice", "USD", &[("widget", 2, 1_000)]),
    )
    .await;

    let payment = app.wait_for_payment("order-1").await;
    assert_eq!(payment.status, "SUCCEEDED");
    assert_eq!(payment.message_id, id);
    assert_eq!(app.balance("alice").await, 8_000);
    let outbox = app.outbox("order-1").await;
    assert_eq!(outbox.len(), 1, "{outbox:?}");
    assert_eq!(outbox[0].routing_key, "payment.succeeded");
    let attempts: i64 = sql
        .query_one("SELECT last_value FROM test_attempts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(attempts, 4, "three failed attempts, then the one that paid");
    assert_eq!(dead_letters(&app).await, 0);
}
