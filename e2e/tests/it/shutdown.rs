//! SIGTERM: each binary stops taking work, finishes what is in flight and
//! exits 0; nothing accepted before the signal is lost.

use std::time::Duration;

use ordermesh_proto::order::v1::OrderStatus;

use crate::mesh::{BINARIES, Mesh};
use crate::pipeline::{item, open_account, order, settled};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_each_binary_and_exits_zero_without_losing_orders() {
    let mut mesh = Mesh::start(&[]).await;
    open_account(&mesh, "bob", 10_000_000).await;

    // Orders in flight while order-svc is told to stop.
    let orders = mesh.orders().await;
    let mut calls = Vec::new();
    for i in 0..200 {
        let mut client = orders.clone();
        calls.push(tokio::spawn(async move {
            let id = format!("s-{i}");
            client
                .create_order(order(&id, "bob", vec![item("book", 1, 1_000)]))
                .await
                .map(|_| id)
        }));
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    let status = mesh.terminate("order-svc", Duration::from_secs(15)).await;
    assert!(status.success(), "order-svc exited with {status}");
    let mut accepted = Vec::new();
    for call in calls {
        if let Ok(id) = call.await.unwrap() {
            accepted.push(id);
        }
    }
    assert!(
        !accepted.is_empty(),
        "some orders were accepted before the signal"
    );

    for name in ["processor-svc", "relay"] {
        let status = mesh.terminate(name, Duration::from_secs(15)).await;
        assert!(status.success(), "{name} exited with {status}");
    }

    // Start everything again: every accepted order reaches a final state.
    for name in BINARIES {
        mesh.spawn(name);
    }
    let mut orders = mesh.orders().await;
    for id in &accepted {
        let o = settled(&mut orders, id, Duration::from_secs(30)).await;
        assert_eq!(o.status, OrderStatus::Paid as i32, "{id}: {o:?}");
    }
}
