//! CancelOrder through the three real binaries: an order cancelled before
//! the relay carried it is never charged; a paid order cancelled is refunded
//! exactly once and the ledger shows the debit and the refund.

use std::time::Duration;

use ordermesh_proto::order::v1::{CancelOrderRequest, GetOrderRequest, Order, OrderStatus};
use ordermesh_proto::payment::v1::{ListTransactionsRequest, Transaction, TransactionKind};
use ordermesh_testkit::eventually;

use crate::mesh::Mesh;
use crate::pipeline::{item, open_account, order, settled};

const PATIENCE: Duration = Duration::from_secs(20);

async fn cancel(mesh: &Mesh, order_id: &str) -> Order {
    mesh.orders()
        .await
        .cancel_order(CancelOrderRequest {
            order_id: order_id.to_owned(),
            reason: "e2e".to_owned(),
        })
        .await
        .expect("cancel")
        .into_inner()
        .order
        .expect("order")
}

async fn get(mesh: &Mesh, order_id: &str) -> Order {
    mesh.orders()
        .await
        .get_order(GetOrderRequest {
            order_id: order_id.to_owned(),
        })
        .await
        .expect("get order")
        .into_inner()
        .order
        .expect("order")
}

async fn ledger(mesh: &Mesh, customer: &str) -> Vec<Transaction> {
    mesh.accounts()
        .await
        .list_transactions(ListTransactionsRequest {
            customer_id: customer.to_owned(),
            page_size: 1000,
            page_token: String::new(),
        })
        .await
        .expect("list transactions")
        .into_inner()
        .transactions
}

/// What the processor recorded for `order_id` (`payments.status`), once it
/// has recorded anything.
async fn processor_decision(mesh: &Mesh, order_id: &str) -> Option<String> {
    let sql = mesh.processor_db.client().await;
    let sql = &sql;
    eventually(PATIENCE, || async move {
        sql.query_opt(
            "SELECT status FROM payments WHERE order_id = $1",
            &[&order_id],
        )
        .await
        .ok()
        .flatten()
        .map(|row| row.get::<_, String>(0))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_cancelled_before_it_was_relayed_is_never_charged() {
    let mut mesh = Mesh::start(&[]).await;
    open_account(&mesh, "alice", 10_000).await;

    // The relay is down: the order and its event wait in the outbox.
    mesh.terminate("relay", Duration::from_secs(15)).await;
    let mut orders = mesh.orders().await;
    orders
        .create_order(order("c-1", "alice", vec![item("lamp", 1, 4_000)]))
        .await
        .unwrap();
    let cancelled = cancel(&mesh, "c-1").await;
    assert_eq!(cancelled.status, OrderStatus::Cancelled as i32);

    mesh.spawn("relay");
    // The processor hears only of the cancellation, and remembers it.
    assert_eq!(
        processor_decision(&mesh, "c-1").await.as_deref(),
        Some("CANCELLED")
    );
    // A later order of the same customer is paid normally.
    orders
        .create_order(order("c-2", "alice", vec![item("pen", 1, 100)]))
        .await
        .unwrap();
    let paid = settled(&mut orders, "c-2", PATIENCE).await;
    assert_eq!(paid.status, OrderStatus::Paid as i32, "{paid:?}");

    let entries = ledger(&mesh, "alice").await;
    assert!(
        entries.iter().all(|t| t.order_id != "c-1"),
        "c-1 was charged: {entries:?}"
    );
    assert_eq!(entries[0].balance_after_minor, 9_900, "{entries:?}");
    assert_eq!(get(&mesh, "c-1").await, cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_order_cancelled_is_refunded_once_and_the_ledger_reconciles() {
    let mesh = Mesh::start(&[]).await;
    open_account(&mesh, "bob", 10_000).await;
    let mut orders = mesh.orders().await;
    orders
        .create_order(order("p-1", "bob", vec![item("chair", 2, 1_500)]))
        .await
        .unwrap();
    let paid = settled(&mut orders, "p-1", PATIENCE).await;
    assert_eq!(paid.status, OrderStatus::Paid as i32, "{paid:?}");

    let cancelled = cancel(&mesh, "p-1").await;
    assert_eq!(cancelled.status, OrderStatus::Cancelled as i32);
    let refunded = {
        let mesh = &mesh;
        eventually(PATIENCE, || async move {
            let o = get(mesh, "p-1").await;
            (o.refunded_minor != 0).then_some(o)
        })
        .await
        .expect("the refund is recorded on the order")
    };
    assert_eq!(refunded.refunded_minor, 3_000);
    assert_eq!(refunded.status, OrderStatus::Cancelled as i32);
    assert_eq!(
        processor_decision(&mesh, "p-1").await.as_deref(),
        Some("REFUNDED")
    );

    // Newest first: refund, debit, deposit; the balance is whole again and
    // the movements add up to it.
    let entries = ledger(&mesh, "bob").await;
    let kinds: Vec<i32> = entries.iter().map(|t| t.kind).collect();
    assert_eq!(
        kinds,
        [
            TransactionKind::Refund as i32,
            TransactionKind::Debit as i32,
            TransactionKind::Deposit as i32
        ],
        "{entries:?}"
    );
    assert_eq!(entries[0].amount_minor, 3_000);
    assert_eq!(entries[1].amount_minor, -3_000);
    assert_eq!(entries[0].balance_after_minor, 10_000);
    assert_eq!(entries.iter().map(|t| t.amount_minor).sum::<i64>(), 10_000);
}
