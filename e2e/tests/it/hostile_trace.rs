//! A caller's trace context cannot stall the mesh (issue 13). A request
//! with a valid `traceparent` and a 32-member `tracestate` of 256-byte keys
//! and values (16 KB+) used to be accepted, its `tracestate` stored in the
//! outbox row and sent on in the AMQP properties, where it exceeded the
//! connection's 16 KiB frame: RabbitMQ closed the relay's connection and no
//! later order was ever published. Extraction now bounds the `tracestate`
//! as W3C allows, so over REST (HTTP/1.1) and gRPC alike such a request is
//! answered and the orders after it are paid at once.

use std::time::Duration;

use http::Method;
use ordermesh_proto::order::v1::OrderStatus;
use serde_json::json;

use crate::mesh::Mesh;
use crate::pipeline::{item, open_account, order, settled};
use crate::rest::{http1, send};

/// How long an order may take from creation to PAID.
const PAID_WITHIN: Duration = Duration::from_secs(2);

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// 32 members, each a 256-byte key and a 256-byte value: 16,447 bytes.
fn hostile_tracestate() -> String {
    let members: Vec<String> = (0..32)
        .map(|i| format!("{:k<256}={:v<256}", format!("vendor{i:02}"), i))
        .collect();
    members.join(",")
}

async fn assert_paid(mesh: &Mesh, order_id: &str) {
    let mut orders = mesh.orders().await;
    let got = settled(&mut orders, order_id, PAID_WITHIN).await;
    assert_eq!(
        got.status,
        OrderStatus::Paid as i32,
        "{order_id} not PAID within {PAID_WITHIN:?}: {got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_tracestate_is_answered_and_later_orders_are_paid() {
    let tracestate = hostile_tracestate();
    assert!(tracestate.len() > 16_384, "{}", tracestate.len());
    let mesh = Mesh::start(&[]).await;
    open_account(&mesh, "mallory", 1_000_000).await;
    let mut orders = mesh.orders().await;

    // REST over HTTP/1.1.
    let answer = send(
        &http1(),
        &mesh.order_addr,
        Method::POST,
        "/v1/orders",
        &[("traceparent", TRACEPARENT), ("tracestate", &tracestate)],
        Some(
            json!({
                "orderId": "hostile-rest",
                "customerId": "mallory",
                "currencyCode": "USD",
                "items": [{"sku": "pen", "quantity": 1, "unitPriceMinor": "100"}],
            })
            .to_string(),
        ),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    orders
        .create_order(order("after-rest", "mallory", vec![item("pen", 1, 100)]))
        .await
        .expect("create the order after the REST one");
    assert_paid(&mesh, "after-rest").await;
    assert_paid(&mesh, "hostile-rest").await;

    // gRPC.
    let mut request =
        tonic::Request::new(order("hostile-grpc", "mallory", vec![item("pen", 2, 100)]));
    let metadata = request.metadata_mut();
    metadata.insert("traceparent", TRACEPARENT.parse().unwrap());
    metadata.insert("tracestate", tracestate.parse().unwrap());
    orders
        .create_order(request)
        .await
        .expect("a hostile tracestate is answered OK over gRPC");
    orders
        .create_order(order("after-grpc", "mallory", vec![item("pen", 3, 100)]))
        .await
        .expect("create the order after the gRPC one");
    assert_paid(&mesh, "after-grpc").await;
    assert_paid(&mesh, "hostile-grpc").await;
}
