//! Readiness follows the dependencies: the three binaries reach RabbitMQ
//! through a TCP proxy the test cuts; `/readyz` and `grpc.health.v1` go
//! not-ready, naming the broker but no error text, come back once the
//! broker is reachable again, and the order taken during the outage is paid
//! exactly once.

use std::time::Duration;

use ordermesh_proto::order::v1::OrderStatus;
use ordermesh_testkit::{BrokerProxy, amqp_authority, amqp_url, eventually};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::mesh::Mesh;
use crate::ops::{grpc_health, http_get};
use crate::pipeline::{balance, item, open_account, order, settled};

const PATIENCE: Duration = Duration::from_secs(30);

/// Whether every binary's `/readyz` and both services' gRPC health say `ready`.
async fn all_ready(mesh: &Mesh, ready: bool) -> bool {
    let want_http = if ready { 200 } else { 503 };
    let want_grpc = if ready {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    } as i32;
    let relay = &mesh.env["RELAY_ADMIN_ADDR"];
    for addr in [&mesh.order_addr, &mesh.processor_addr, relay] {
        match http_get(addr, "/readyz").await {
            Ok((status, _)) if status == want_http => {}
            _ => return false,
        }
    }
    for (addr, service) in [
        (&mesh.order_addr, "ordermesh.order.v1.OrderService"),
        (&mesh.processor_addr, "ordermesh.payment.v1.AccountService"),
    ] {
        for name in [service, ""] {
            if grpc_health(addr, name).await != Some(want_grpc) {
                return false;
            }
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_broker_flips_readiness_and_recovery_loses_no_order() {
    let broker = amqp_url();
    let proxy = BrokerProxy::start(amqp_authority(&broker)).await;
    let proxied = proxy.url(&broker);
    let mesh = Mesh::start(&[("AMQP_URL", proxied.as_str())]).await;
    assert!(all_ready(&mesh, true).await, "ready after start");
    let (status, body) = http_get(&mesh.order_addr, "/healthz").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    open_account(&mesh, "carol", 10_000).await;
    let mut orders = mesh.orders().await;
    orders
        .create_order(order("before", "carol", vec![item("pen", 1, 1_000)]))
        .await
        .unwrap();
    let before = settled(&mut orders, "before", PATIENCE).await;
    assert_eq!(before.status, OrderStatus::Paid as i32, "{before:?}");

    proxy.cut();
    let down = eventually(PATIENCE, || async {
        all_ready(&mesh, false).await.then_some(())
    })
    .await;
    assert!(down.is_some(), "not every binary reported not-ready");
    // Every port names the dependency, never its error: no address, URL
    // or error text reaches whoever asks.
    for addr in [&mesh.order_addr, &mesh.processor_addr, relay_admin(&mesh)] {
        let (status, body) = http_get(addr, "/readyz").await.unwrap();
        assert_eq!(status, 503, "{addr}: {body}");
        assert_names_only(&body, &proxy.addr.to_string());
    }
    // Still alive, and still taking orders: they wait in the outbox.
    let (status, _) = http_get(&mesh.processor_addr, "/healthz").await.unwrap();
    assert_eq!(status, 200);
    orders
        .create_order(order("during", "carol", vec![item("pen", 2, 1_000)]))
        .await
        .unwrap();

    proxy.restore();
    let up = eventually(PATIENCE, || async {
        all_ready(&mesh, true).await.then_some(())
    })
    .await;
    assert!(up.is_some(), "not every binary became ready again");
    let during = settled(&mut orders, "during", PATIENCE).await;
    assert_eq!(during.status, OrderStatus::Paid as i32, "{during:?}");
    assert_eq!(
        balance(&mesh, "carol").await,
        10_000 - 1_000 - 2_000,
        "each order paid once"
    );
}

fn relay_admin(mesh: &Mesh) -> &String {
    &mesh.env["RELAY_ADMIN_ADDR"]
}

/// A not-ready `/readyz` body that names `broker` among known dependency
/// kinds and holds nothing else (`broker_addr` least of all).
fn assert_names_only(body: &str, broker_addr: &str) {
    let names = body
        .strip_prefix("not ready: ")
        .and_then(|rest| rest.strip_suffix('\n'))
        .unwrap_or_else(|| panic!("{body:?}"));
    let names: Vec<&str> = names.split(", ").collect();
    assert!(names.contains(&"broker"), "{body:?}");
    for name in &names {
        assert!(
            ["broker", "database", "order watch LISTEN connection"].contains(name),
            "{name:?} in {body:?}"
        );
    }
    for secret in [broker_addr, "127.0.0.1", "amqp", "refused", "error"] {
        assert!(!body.contains(secret), "{secret:?} in {body:?}");
    }
}

#[test]
fn a_body_of_names_passes_and_error_text_fails() {
    assert_names_only("not ready: broker\n", "127.0.0.1:1");
    assert_names_only("not ready: database, broker\n", "127.0.0.1:1");
    let leaked = std::panic::catch_unwind(|| {
        assert_names_only(
            "not ready: broker: connection refused (127.0.0.1:1)\n",
            "127.0.0.1:1",
        );
    });
    assert!(leaked.is_err());
}
