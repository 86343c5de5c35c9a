//! Hostile input against the real service, over gRPC and REST on one
//! port: oversized messages, deeply nested JSON, huge strings, invalid
//! UTF-8 (in JSON and in hand-encoded protobuf), and SQL-looking text in
//! every free-text field. Each is refused with a client error or stored
//! and read back byte for byte, and the service keeps serving after each.

use std::collections::HashMap;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use ordermesh_proto::order::v1 as pb;
use ordermesh_testkit::hostile::SQL_LOOKING;
use ordermesh_testkit::{assert_undecodable, eventually, raw_unary_refused};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use order_svc::domain::check_order_id;

use crate::helpers::{
    Client, PATIENCE, TestApp, admin_client, admin_token, assert_invalid, item, order_request,
    spawn_app,
};

/// The service under attack: where it listens, an admin client (hostile
/// input is tested past authentication) and a plain HTTP client.
struct Target {
    addr: SocketAddr,
    client: Client,
    channel: Channel,
    http: HttpClient<HttpConnector, Full<Bytes>>,
    /// Set for an instance this test started itself.
    instance: Option<(CancellationToken, JoinHandle<anyhow::Result<()>>)>,
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some((shutdown, _)) = &self.instance {
            shutdown.cancel();
        }
    }
}

fn target(app: &TestApp) -> Target {
    Target {
        addr: app.addr,
        client: app.client.clone(),
        channel: app.channel.clone(),
        http: HttpClient::builder(TokioExecutor::new()).build_http(),
        instance: None,
    }
}

/// Another instance on the test's database and queue, with `config`.
async fn instance(config: order_svc::Config) -> Target {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(order_svc::run(config, listener, shutdown.clone()));
    let channel = eventually(PATIENCE, || async {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .ok()?;
        serving(&channel).await.then_some(channel)
    })
    .await
    .expect("the instance did not become healthy");
    Target {
        addr,
        client: admin_client(channel.clone()),
        channel,
        http: HttpClient::builder(TokioExecutor::new()).build_http(),
        instance: Some((shutdown, task)),
    }
}

async fn serving(channel: &Channel) -> bool {
    let mut health = HealthClient::new(channel.clone());
    let check = health.check(tonic_health::pb::HealthCheckRequest {
        service: pb::order_service_server::SERVICE_NAME.into(),
    });
    matches!(
        tokio::time::timeout(std::time::Duration::from_secs(2), check).await,
        Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32
    )
}

/// What a REST call answered: the status and the JSON body.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    body: Value,
}

impl Answer {
    /// A 400 INVALID_ARGUMENT `google.rpc.Status`; returns its message.
    fn assert_bad_request(&self) -> &str {
        assert_eq!(self.status, StatusCode::BAD_REQUEST, "{self:?}");
        assert_eq!(self.body["code"], Code::InvalidArgument as i32, "{self:?}");
        self.body["message"].as_str().expect("a message")
    }

    /// The field a 400 names in its `google.rpc.BadRequest` detail.
    fn violated_field(&self) -> &str {
        self.assert_bad_request();
        self.body["details"][0]["fieldViolations"][0]["field"]
            .as_str()
            .unwrap_or_else(|| panic!("no field violation in {self:?}"))
    }
}

impl Target {
    async fn rest(&self, method: Method, path: &str, body: impl Into<Bytes>) -> Answer {
        let request = http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr))
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {}", admin_token()))
            .body(Full::new(body.into()))
            .unwrap();
        let response = tokio::time::timeout(PATIENCE, self.http.request(request))
            .await
            .expect("the REST call answers in time")
            .expect("the REST call gets an answer");
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {bytes:?}"));
        Answer { status, body }
    }

    /// Sends `message` as the request of `method`, bytes as they are.
    async fn raw_grpc(&self, method: &'static str, message: Vec<u8>) -> tonic::Status {
        raw_unary_refused(self.channel.clone(), &admin_token(), method, message).await
    }

    /// Health says SERVING, and an order can be created and read over
    /// both gRPC and REST.
    async fn assert_still_serving(&self) {
        assert!(serving(&self.channel).await, "health is no longer SERVING");
        let id = format!("after-{}", uuid::Uuid::new_v4().simple());
        let created = self
            .client
            .clone()
            .create_order(order_request(&id, "alice"))
            .await
            .expect("CreateOrder still works")
            .into_inner();
        assert_eq!(created.order.unwrap().order_id, id);
        let answer = self
            .rest(Method::GET, &format!("/v1/orders/{id}"), "")
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        assert_eq!(answer.body["order"]["orderId"], id.as_str());
    }

    /// Stops an instance the test started (and checks it stopped cleanly).
    async fn stop(mut self) {
        let Some((shutdown, task)) = self.instance.take() else {
            return;
        };
        shutdown.cancel();
        tokio::time::timeout(PATIENCE, task)
            .await
            .expect("the instance stops in time")
            .expect("the instance did not panic")
            .expect("the instance stopped cleanly");
    }
}

const CREATE_ORDER: &str = "/ordermesh.order.v1.OrderService/CreateOrder";

/// `text` percent-encoded for a URL path segment or query value.
fn escape(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A protobuf length-delimited field, encoded by hand.
fn field(number: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_key(number, prost::encoding::WireType::LengthDelimited, &mut out);
    prost::encoding::encode_varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

#[tokio::test]
async fn oversized_grpc_messages_are_resource_exhausted() {
    let app = spawn_app().await;
    let target = target(&app);

    // ~5 MiB: over the default GRPC_MAX_MESSAGE_BYTES of 4 MiB.
    let mut request = order_request("big", "alice");
    request.items[0].sku = "s".repeat(5 * 1024 * 1024);
    let status = target
        .client
        .clone()
        .create_order(request)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");
    target.assert_still_serving().await;

    // Under the limit it is decoded, and the field rules refuse it.
    let mut request = order_request("big", "alice");
    request.items[0].sku = "s".repeat(3 * 1024 * 1024);
    let status = target
        .client
        .clone()
        .create_order(request)
        .await
        .unwrap_err();
    assert_invalid(&status, "items[0].sku");
    target.assert_still_serving().await;
    target.stop().await;
}

#[tokio::test]
async fn the_message_limit_is_configurable() {
    let env = |value: &str| HashMap::from([("GRPC_MAX_MESSAGE_BYTES", value.to_owned())]);
    let limit = |value: &str| order_svc::Config::from_env(&env(value)).map(|c| c.max_message_bytes);
    assert_eq!(limit("").unwrap(), 4 * 1024 * 1024);
    assert_eq!(limit("65536").unwrap(), 65536);
    for bad in ["0", "-1", "4MiB"] {
        assert_eq!(limit(bad).unwrap_err().name, "GRPC_MAX_MESSAGE_BYTES");
    }

    let app = spawn_app().await;
    let mut config = app.config.clone();
    config.max_message_bytes = 64 * 1024;
    let target = instance(config).await;
    let mut request = order_request("big", "alice");
    request.items[0].sku = "s".repeat(100 * 1024);
    let status = target
        .client
        .clone()
        .create_order(request)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    target.assert_still_serving().await;
    target.stop().await;
}

#[tokio::test]
async fn invalid_protobuf_is_refused_without_harm() {
    let app = spawn_app().await;
    let target = target(&app);
    let item = field(1, b"apple")
        .into_iter()
        .chain([0x10, 0x01, 0x18, 0x64]) // quantity 1, unit_price_minor 100
        .collect::<Vec<u8>>();

    // A customer_id that is not UTF-8, hand-encoded: prost refuses to
    // decode the message (gRPC's code for that is INTERNAL), so nothing of
    // it reaches the store.
    let mut message = field(2, b"\xff\xfe\xfd");
    message.extend(field(4, &item));
    let status = target.raw_grpc(CREATE_ORDER, message).await;
    assert!(
        matches!(status.code(), Code::InvalidArgument | Code::Internal),
        "{status:?}"
    );
    assert!(status.message().contains("UTF-8"), "{status:?}");
    target.assert_still_serving().await;

    // Length prefixes that lie, truncated varints, 100 000 nested groups.
    let mut lying = vec![0x12, 0xff, 0xff, 0xff, 0xff, 0x0f];
    lying.extend_from_slice(b"alice");
    for message in [lying, vec![0x12], vec![0x10, 0xff], vec![0x7b; 100_000]] {
        assert_undecodable(&target.raw_grpc(CREATE_ORDER, message.clone()).await);
        target.assert_still_serving().await;
    }

    let orders: i64 = app
        .sql()
        .await
        .query_one(
            "SELECT count(*) FROM orders WHERE order_id NOT LIKE 'after-%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(orders, 0, "nothing undecodable was stored");
    target.stop().await;
}

#[tokio::test]
async fn deeply_nested_json_is_a_400() {
    let app = spawn_app().await;
    let target = target(&app);
    let deep = 100_000;
    let bodies = [
        "[".repeat(deep),
        format!("{}{}", "[".repeat(deep), "]".repeat(deep)),
        format!("{{\"items\":{}", "[".repeat(deep)),
        format!("{}1{}", "{\"a\":".repeat(deep), "}".repeat(deep)),
        format!("{{\"customerId\":{}", "{\"x\":".repeat(deep)),
    ];
    for body in bodies {
        let answer = target.rest(Method::POST, "/v1/orders", body).await;
        let message = answer.assert_bad_request();
        assert!(
            message.starts_with("malformed JSON in the request body"),
            "{message}"
        );
        assert!(message.contains("recursion limit"), "{message}");
        target.assert_still_serving().await;
    }
    // Deep but within serde_json's limit: refused by the field rules.
    let nested = format!("{}1{}", "[".repeat(100), "]".repeat(100));
    let body = format!(r#"{{"customerId":"c","items":[{{"sku":{nested}}}]}}"#);
    let answer = target.rest(Method::POST, "/v1/orders", body).await;
    assert_eq!(answer.violated_field(), "items[0].sku", "{answer:?}");
    target.assert_still_serving().await;
    target.stop().await;
}

#[tokio::test]
async fn huge_json_strings_are_a_validation_error_naming_the_field() {
    let app = spawn_app().await;
    let target = target(&app);
    // ~3 MiB strings, under REST_MAX_BODY_BYTES (4 MiB).
    let huge = "x".repeat(3 * 1024 * 1024);
    let cases = [
        (
            json!({"customerId": huge, "items": [{"sku": "a", "quantity": 1}]}),
            "customer_id",
        ),
        (
            json!({"customerId": "c", "items": [{"sku": huge, "quantity": 1}]}),
            "items[0].sku",
        ),
        (
            json!({"orderId": huge, "customerId": "c", "items": [{"sku": "a", "quantity": 1}]}),
            "order_id",
        ),
        (
            json!({"customerId": "c", "currencyCode": huge, "items": [{"sku": "a", "quantity": 1}]}),
            "currency_code",
        ),
    ];
    for (body, field) in cases {
        let answer = target
            .rest(
                Method::POST,
                "/v1/orders",
                serde_json::to_vec(&body).unwrap(),
            )
            .await;
        assert_eq!(answer.violated_field(), field, "{answer:?}");
        target.assert_still_serving().await;
    }
    let answer = target
        .rest(
            Method::POST,
            "/v1/orders/o-1:cancel",
            serde_json::to_vec(&json!({"reason": huge})).unwrap(),
        )
        .await;
    assert_eq!(answer.violated_field(), "reason", "{answer:?}");
    // A URL cannot be that long; 8 KiB is plenty for a 128-character id.
    let long = "x".repeat(8 * 1024);
    let answer = target
        .rest(Method::GET, &format!("/v1/orders?customerId={long}"), "")
        .await;
    assert_eq!(answer.violated_field(), "customer_id", "{answer:?}");
    target.assert_still_serving().await;
    target.stop().await;
}

#[tokio::test]
async fn invalid_utf8_in_json_is_a_400() {
    let app = spawn_app().await;
    let target = target(&app);
    let bodies: [&[u8]; 4] = [
        b"{\"customerId\":\"\xff\xfe\",\"items\":[{\"sku\":\"a\",\"quantity\":1}]}",
        b"{\"customerId\":\"c\",\"items\":[{\"sku\":\"\xc3\x28\",\"quantity\":1}]}",
        b"{\"\xed\xa0\x80\":1}",
        b"\xef\xbb\xbf{}",
    ];
    for body in bodies {
        let answer = target
            .rest(Method::POST, "/v1/orders", Bytes::from_static(body))
            .await;
        let message = answer.assert_bad_request();
        assert!(
            message.starts_with("malformed JSON in the request body"),
            "{message}"
        );
        target.assert_still_serving().await;
    }
    // JSON escapes of what is not a character, and of NUL.
    for (body, field) in [
        (
            r#"{"customerId":"\ud800","items":[{"sku":"a","quantity":1}]}"#,
            None,
        ),
        (
            r#"{"customerId":"a\u0000b","items":[{"sku":"a","quantity":1}]}"#,
            Some("customer_id"),
        ),
    ] {
        let answer = target.rest(Method::POST, "/v1/orders", body).await;
        match field {
            Some(field) => assert_eq!(answer.violated_field(), field, "{answer:?}"),
            None => {
                answer.assert_bad_request();
            }
        }
    }
    // Invalid UTF-8 in a path segment matches no route; in a query value
    // it is a 400 naming the parameter, never replaced with U+FFFD.
    let answer = target.rest(Method::GET, "/v1/orders/%FF%FE", "").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND, "{answer:?}");
    let answer = target
        .rest(Method::GET, "/v1/orders?customerId=%FF", "")
        .await;
    assert_eq!(answer.violated_field(), "customerId", "{answer:?}");
    target.assert_still_serving().await;
    target.stop().await;
}

/// A SQL-looking order id is refused by the id rule, naming it; the one
/// that is valid (`_`) is a key like any other, never a pattern.
#[tokio::test]
async fn sql_looking_order_ids_are_refused_by_the_id_rule() {
    let app = spawn_app().await;
    let target = target(&app);
    target
        .client
        .clone()
        .create_order(order_request("a", "alice"))
        .await
        .unwrap();
    let status = target
        .client
        .clone()
        .get_order(pb::GetOrderRequest {
            order_id: "_".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    for text in SQL_LOOKING
        .iter()
        .filter(|t| check_order_id("order_id", t).is_err())
    {
        let status = target
            .client
            .clone()
            .get_order(pb::GetOrderRequest {
                order_id: (*text).to_owned(),
            })
            .await
            .unwrap_err();
        assert_invalid(&status, "order_id");
        let status = target
            .client
            .clone()
            .create_order(order_request(text, "alice"))
            .await
            .unwrap_err();
        assert_invalid(&status, "order_id");
        let answer = target
            .rest(Method::GET, &format!("/v1/orders/{}", escape(text)), "")
            .await;
        assert_eq!(answer.violated_field(), "order_id", "{answer:?}");
    }
    target.assert_still_serving().await;
    target.stop().await;
}

/// SQL-looking customer ids, SKUs and cancel reasons are valid text: stored
/// verbatim, read back byte for byte, and a list filtered by such a
/// customer returns exactly that customer's order (no `%` or `_` pattern).
#[tokio::test]
async fn sql_looking_text_is_stored_verbatim_and_never_interpreted() {
    let app = spawn_app().await;
    let target = target(&app);
    let client = || target.client.clone();
    let mut ids = Vec::new();
    for (i, text) in SQL_LOOKING.iter().enumerate() {
        let id = format!("sql-{i}");
        let mut request = order_request(&id, text);
        request.items = vec![item(text, 1, 100)];
        let order = client().create_order(request).await.unwrap().into_inner();
        let order = order.order.unwrap();
        assert_eq!(order.customer_id, *text);
        assert_eq!(order.items[0].sku, *text);

        let cancel = pb::CancelOrderRequest {
            order_id: id.clone(),
            reason: (*text).to_owned(),
        };
        let cancelled = client().cancel_order(cancel).await.unwrap().into_inner();
        assert_eq!(cancelled.order.unwrap().cancel_reason, *text);
        ids.push(id);
    }
    // The same over REST, as JSON.
    let body = json!({
        "orderId": "sql-rest",
        "customerId": "'; DROP TABLE orders; --",
        "items": [{"sku": "\\' OR 1=1", "quantity": 1, "unitPriceMinor": "5"}],
    });
    let answer = target
        .rest(
            Method::POST,
            "/v1/orders",
            serde_json::to_vec(&body).unwrap(),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert_eq!(
        answer.body["order"]["customerId"],
        "'; DROP TABLE orders; --"
    );
    assert_eq!(answer.body["order"]["items"][0]["sku"], "\\' OR 1=1");

    for (i, text) in SQL_LOOKING.iter().enumerate() {
        let order = app.get(&ids[i]).await.unwrap();
        assert_eq!(order.customer_id.as_bytes(), text.as_bytes());
        assert_eq!(order.items[0].sku.as_bytes(), text.as_bytes());
        assert_eq!(order.cancel_reason.as_bytes(), text.as_bytes());

        let listed = client()
            .list_orders(pb::ListOrdersRequest {
                customer_id: (*text).to_owned(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut listed: Vec<_> = listed.orders.into_iter().map(|o| o.order_id).collect();
        listed.sort();
        let mut expected = vec![ids[i].clone()];
        if *text == "'; DROP TABLE orders; --" {
            expected.push("sql-rest".to_owned());
        }
        assert_eq!(listed, expected, "customer {text:?}");

        let answer = target
            .rest(
                Method::GET,
                &format!("/v1/orders?customerId={}", escape(text)),
                "",
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        let mut listed: Vec<_> = answer.body["orders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["orderId"].as_str().unwrap().to_owned())
            .collect();
        listed.sort();
        assert_eq!(listed, expected, "customer {text:?} over REST");
    }

    // The database holds the very bytes, and every table is still there.
    let sql = app.sql().await;
    for (i, text) in SQL_LOOKING.iter().enumerate() {
        let row = sql
            .query_one(
                "SELECT convert_to(customer_id, 'UTF8'), convert_to(cancel_reason, 'UTF8')
                 FROM orders WHERE order_id = $1",
                &[&ids[i]],
            )
            .await
            .unwrap();
        let customer: Vec<u8> = row.get(0);
        let reason: Vec<u8> = row.get(1);
        assert_eq!(customer, text.as_bytes());
        assert_eq!(reason, text.as_bytes());
    }
    let cancelled: i64 = sql
        .query_one(
            "SELECT count(*) FROM outbox WHERE routing_key = 'order.cancelled'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(cancelled, SQL_LOOKING.len() as i64);
    target.assert_still_serving().await;
    target.stop().await;
}
