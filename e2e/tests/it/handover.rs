//! Two relays, one of them cut off from RabbitMQ alone (a black hole: its
//! connections stay open, nothing gets through): every order still reaches
//! PAID through the other relay, and cancelling a PENDING order does not
//! wait for the cut relay's batch.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use ordermesh_proto::order::v1::{CancelOrderRequest, OrderStatus};
use ordermesh_testkit::{BrokerProxy, LeaseLocks, amqp_authority, eventually};

use crate::mesh::Mesh;
use crate::pipeline::{item, open_account, order, settled};

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the orders database");
    tokio::spawn(connection);
    client
}

/// The relay's partition leases, by its own names.
const LEASES: LeaseLocks = LeaseLocks {
    class: relay::store::LEASE_LOCK_CLASS,
    application_prefix: relay::store::LEASE_APPLICATION_PREFIX,
};

/// Partitions of the orders database leased by relay `instance`.
async fn leased(db: &tokio_postgres::Client, instance: &str) -> HashSet<i16> {
    LEASES.of_instance(db, instance).await.unwrap()
}

async fn partition(db: &tokio_postgres::Client, order_id: &str) -> i16 {
    db.query_one("SELECT (hashtext($1) & 63)::int2", &[&order_id])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_cut_off_from_the_broker_delays_no_order_and_no_cancel() {
    let mut mesh = Mesh::start(&[
        ("RELAY_REBALANCE_MS", "200"),
        ("RELAY_PUBLISH_TIMEOUT_MS", "3000"),
        ("RELAY_HANDOVER_AFTER_MS", "1000"),
    ])
    .await;
    let broker_url = mesh.env["AMQP_URL"].clone();
    let proxy = BrokerProxy::start(amqp_authority(&broker_url)).await;
    mesh.env
        .insert("RELAY_INSTANCE".to_owned(), "direct".to_owned());
    mesh.terminate("relay", Duration::from_secs(15)).await;
    mesh.spawn("relay");
    mesh.spawn_as(
        "relay-cut",
        "relay",
        &[
            ("AMQP_URL", &proxy.url(&broker_url)),
            ("RELAY_INSTANCE", "cut"),
            ("RELAY_ADMIN_ADDR", "127.0.0.1:0"),
        ],
    )
    .expect("start the second relay");
    let db = connect(&mesh.env["ORDER_DATABASE_URL"]).await;
    let cut_share = eventually(Duration::from_secs(20), || async {
        let cut = leased(&db, "cut").await;
        (cut.len() == 32 && leased(&db, "direct").await.len() == 32).then_some(cut)
    })
    .await
    .expect("the two relays share the partitions");
    open_account(&mesh, "hana", 1_000_000).await;
    let mut orders = mesh.orders().await;

    // An order the cut relay is responsible for, to cancel while PENDING.
    let mut doomed = None;
    for i in 0.. {
        let id = format!("handover-cancel-{i}");
        if cut_share.contains(&partition(&db, &id).await) {
            doomed = Some(id);
            break;
        }
    }
    let doomed = doomed.expect("an order id in the cut relay's share");

    proxy.freeze();
    orders
        .create_order(order(&doomed, "hana", vec![item("sku-1", 1, 100)]))
        .await
        .expect("create the order to cancel");
    let mut cancel = tonic::Request::new(CancelOrderRequest {
        order_id: doomed.clone(),
        reason: "changed my mind".to_owned(),
    });
    cancel.set_timeout(Duration::from_secs(1));
    let start = Instant::now();
    let cancelled = orders
        .cancel_order(cancel)
        .await
        .expect("CancelOrder answers within its 1 s deadline")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(cancelled.status, OrderStatus::Cancelled as i32);
    assert!(start.elapsed() < Duration::from_secs(1));

    // Orders in both relays' shares are paid through the one that works.
    let ids: Vec<String> = (0..10).map(|i| format!("handover-{i}")).collect();
    for id in &ids {
        orders
            .create_order(order(id, "hana", vec![item("sku-1", 1, 100)]))
            .await
            .expect("create");
    }
    for id in &ids {
        let o = settled(&mut orders, id, Duration::from_secs(30)).await;
        assert_eq!(o.status, OrderStatus::Paid as i32, "{id}: {o:?}");
    }
    assert_eq!(
        leased(&db, "direct").await.len(),
        64,
        "all partitions moved"
    );
    assert!(leased(&db, "cut").await.is_empty());
    proxy.restore();
}
