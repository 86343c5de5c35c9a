//! Every accepted order ends, on the real binaries: an order whose
//! `order.created` the processor's database refuses to settle (poison) is
//! answered with `payment.failed` and ends FAILED with a short reason,
//! instead of waiting PENDING behind a dead letter; the queue goes on; and
//! order-svc's gauge of the oldest PENDING order goes back to 0.

use std::time::{Duration, Instant};

use ordermesh_proto::order::v1::OrderStatus;
use ordermesh_runtime::metrics::{CONSUMER_DEAD_LETTERED, ORDERS_OLDEST_PENDING};

use crate::mesh::Mesh;
use crate::ops::{metrics, sample};
use crate::pipeline::{balance, item, open_account, order, settled};

const PATIENCE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_the_processor_cannot_settle_ends_failed_with_a_reason() {
    let mesh = Mesh::start(&[]).await;
    let mut orders = mesh.orders().await;
    open_account(&mesh, "alice", 100_000).await;
    // A ledger rule the processor's own rules do not know (no debit of
    // 10,000 or more): the database, not the rules, refuses the piano.
    mesh.processor_db
        .client()
        .await
        .batch_execute(
            "ALTER TABLE transactions ADD CONSTRAINT e2e_small_debits \
             CHECK (amount_minor > -10000)",
        )
        .await
        .unwrap();

    let accepted = orders
        .create_order(order("piano", "alice", vec![item("piano", 1, 50_000)]))
        .await
        .expect("the order is valid and accepted")
        .into_inner()
        .order
        .unwrap();
    assert_eq!(accepted.status, OrderStatus::Pending as i32);
    orders
        .create_order(order("pen", "alice", vec![item("pen", 1, 100)]))
        .await
        .unwrap();

    let piano = settled(&mut orders, "piano", PATIENCE).await;
    assert_eq!(piano.status, OrderStatus::Failed as i32, "{piano:?}");
    assert_eq!(piano.failure_reason, "rejected: check violation");
    let pen = settled(&mut orders, "pen", PATIENCE).await;
    assert_eq!(pen.status, OrderStatus::Paid as i32, "{pen:?}");
    assert_eq!(
        balance(&mesh, "alice").await,
        100_000 - 100,
        "only the pen was debited"
    );

    // Nothing was dead-lettered by either consumer.
    for addr in [&mesh.order_addr, &mesh.processor_addr] {
        let text = metrics(addr).await;
        let parked = sample(&text, CONSUMER_DEAD_LETTERED, &[]).unwrap_or(0.0);
        assert_eq!(parked, 0.0, "{addr}: {text}");
    }
    // No order is PENDING any more, and the gauge says so once sampled.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let age = sample(&metrics(&mesh.order_addr).await, ORDERS_OLDEST_PENDING, &[]);
        if age == Some(0.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{ORDERS_OLDEST_PENDING} is {age:?}, not 0"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
