//! The order pipeline end to end: account, deposit, orders paid or failed
//! by the processor's rules, over the relay and RabbitMQ.

use std::time::{Duration, Instant};

use ordermesh_proto::order::v1::{
    CreateOrderRequest, GetOrderRequest, ListOrdersRequest, Order, OrderItem, OrderStatus,
};
use ordermesh_proto::payment::v1::{CreateAccountRequest, DepositRequest, GetAccountRequest};

use crate::mesh::{Mesh, Orders};

pub fn item(sku: &str, quantity: i32, unit_price_minor: i64) -> OrderItem {
    OrderItem {
        sku: sku.to_owned(),
        quantity,
        unit_price_minor,
    }
}

pub fn order(order_id: &str, customer: &str, items: Vec<OrderItem>) -> CreateOrderRequest {
    CreateOrderRequest {
        order_id: order_id.to_owned(),
        customer_id: customer.to_owned(),
        currency_code: "USD".to_owned(),
        items,
    }
}

/// Polls GetOrder until the order leaves PENDING or `timeout` passes.
pub async fn settled(client: &mut Orders, order_id: &str, timeout: Duration) -> Order {
    let deadline = Instant::now() + timeout;
    loop {
        let order = client
            .get_order(GetOrderRequest {
                order_id: order_id.to_owned(),
            })
            .await
            .expect("get order")
            .into_inner()
            .order
            .expect("order");
        if order.status != OrderStatus::Pending as i32 || Instant::now() > deadline {
            return order;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub async fn open_account(mesh: &Mesh, customer: &str, deposit_minor: i64) {
    let mut accounts = mesh.accounts().await;
    accounts
        .create_account(CreateAccountRequest {
            customer_id: customer.to_owned(),
            currency_code: "USD".to_owned(),
        })
        .await
        .expect("create account");
    accounts
        .deposit(DepositRequest {
            customer_id: customer.to_owned(),
            amount_minor: deposit_minor,
            deposit_id: format!("{customer}-initial"),
        })
        .await
        .expect("deposit");
}

/// `customer`'s balance, read as an admin.
pub async fn balance(mesh: &Mesh, customer: &str) -> i64 {
    let mut accounts = mesh.accounts().await;
    accounts
        .get_account(GetAccountRequest {
            customer_id: customer.to_owned(),
        })
        .await
        .expect("get account")
        .into_inner()
        .account
        .expect("account")
        .balance_minor
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_are_paid_or_failed_by_the_rules_within_a_second_woken_by_notify() {
    // A 60 s fallback tick: only NOTIFY can make the relay this fast.
    let mesh = Mesh::start(&[("RELAY_FALLBACK_TICK_MS", "60000")]).await;
    let mut orders = mesh.orders().await;
    open_account(&mesh, "alice", 100_000).await;
    open_account(&mesh, "warmup", 100).await;

    // The first order after start also waits for the consumers' queues.
    orders
        .create_order(order("warm", "warmup", vec![item("pen", 1, 1)]))
        .await
        .unwrap();
    let warm = settled(&mut orders, "warm", Duration::from_secs(20)).await;
    assert_eq!(warm.status, OrderStatus::Paid as i32, "{warm:?}");

    let laptop = order(
        "o-1",
        "alice",
        vec![item("laptop", 1, 12_000), item("mouse", 2, 2_500)],
    );
    let start = Instant::now();
    let created = orders
        .create_order(laptop.clone())
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(created.total_minor, 17_000);
    assert_eq!(created.status, OrderStatus::Pending as i32);
    let paid = settled(&mut orders, "o-1", Duration::from_secs(1)).await;
    let elapsed = start.elapsed();
    assert_eq!(
        paid.status,
        OrderStatus::Paid as i32,
        "not PAID within 1 s: {paid:?}"
    );
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    assert_eq!(balance(&mesh, "alice").await, 83_000);

    // The same request again: the same order, no second debit.
    let again = orders
        .create_order(laptop)
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(again.order_id, "o-1");
    assert_eq!(again.status, OrderStatus::Paid as i32);

    let teapot = order("o-2", "alice", vec![item("teapot", 1, 1_000)]);
    orders.create_order(teapot).await.unwrap();
    let failed = settled(&mut orders, "o-2", Duration::from_secs(5)).await;
    assert_eq!(failed.status, OrderStatus::Failed as i32);
    assert!(
        failed.failure_reason.contains("embargo") && failed.failure_reason.contains("teapot"),
        "{failed:?}"
    );

    let big = order("o-3", "alice", vec![item("yacht", 1, 1_000_000)]);
    orders.create_order(big).await.unwrap();
    let failed = settled(&mut orders, "o-3", Duration::from_secs(5)).await;
    assert_eq!(failed.status, OrderStatus::Failed as i32);
    assert!(
        failed.failure_reason.contains("insufficient funds"),
        "{failed:?}"
    );

    let stranger = order("o-4", "mallory", vec![item("pen", 1, 100)]);
    orders.create_order(stranger).await.unwrap();
    let failed = settled(&mut orders, "o-4", Duration::from_secs(5)).await;
    assert_eq!(failed.status, OrderStatus::Failed as i32);
    assert!(failed.failure_reason.contains("no account"), "{failed:?}");

    // Everything after o-1 has been processed: a second debit would show.
    assert_eq!(balance(&mesh, "alice").await, 83_000);

    let listed = orders
        .list_orders(ListOrdersRequest {
            customer_id: "alice".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut ids: Vec<_> = listed.orders.iter().map(|o| o.order_id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["o-1", "o-2", "o-3"]);
    assert!(listed.orders.iter().all(|o| o.customer_id == "alice"));
}
