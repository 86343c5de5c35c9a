//! Authentication, authorization and rate limits of order-svc: bearer
//! tokens on every OrderService call (gRPC and REST), customers confined to
//! their own orders, admins acting for all, tokens kept out of the logs.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ordermesh_platform::auth::{Claims, RateLimitConfig, Role};
use ordermesh_platform::testing::{CapturedLogs, RestAnswer as Answer, rest_call};
use ordermesh_proto::order::v1 as pb;
use pb::order_service_client::OrderServiceClient;
use serde_json::{Value, json};
use tonic::Code;
use tonic_types::StatusExt as _;

use crate::helpers::{
    AUTH_SECRET, Client, TestApp, client_with_token, order_request, spawn_app, spawn_app_with,
    token,
};

async fn rest(
    app: &TestApp,
    method: http::Method,
    path: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> Answer {
    rest_call(app.addr, method, path, bearer, body).await
}

/// Asserts a `google.rpc.Status` JSON error body with `code`.
fn assert_status_json(answer: &Answer, http: u16, code: Code) {
    assert_eq!(answer.status, http, "{:?}", answer.body);
    assert_eq!(answer.body["code"], code as i32, "{:?}", answer.body);
    assert!(answer.body["message"].is_string(), "{:?}", answer.body);
    assert!(answer.body["details"].is_array(), "{:?}", answer.body);
}

fn customer(app: &TestApp, customer_id: &str) -> Client {
    client_with_token(app.channel.clone(), &token(customer_id, Role::Customer))
}

fn get(order_id: &str) -> pb::GetOrderRequest {
    pb::GetOrderRequest {
        order_id: order_id.into(),
    }
}

fn list(customer_id: &str) -> pb::ListOrdersRequest {
    pb::ListOrdersRequest {
        customer_id: customer_id.into(),
        status: 0,
        page_size: 100,
        page_token: String::new(),
    }
}

fn signed(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn claims(sub: &str) -> Value {
    serde_json::to_value(Claims::new(sub, Role::Admin, Duration::from_secs(600))).unwrap()
}

#[tokio::test]
async fn calls_without_a_valid_token_are_unauthenticated() {
    let app = spawn_app().await;
    let status = OrderServiceClient::new(app.channel.clone())
        .get_order(get("o-1"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let challenge = status.metadata().get("www-authenticate").unwrap();
    assert!(challenge.to_str().unwrap().starts_with("Bearer"));
    let answer = rest(&app, http::Method::GET, "/v1/orders/o-1", None, None).await;
    assert_status_json(&answer, 401, Code::Unauthenticated);
    assert!(
        answer.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut expired = claims("ops");
    expired["iat"] = json!(now - 7200);
    expired["exp"] = json!(now - 3600);
    let mut wrong_audience = claims("ops");
    wrong_audience["aud"] = json!("payments");
    for (what, token) in [
        (
            "bad signature",
            signed(&claims("ops"), "not-the-secret-but-32-bytes-long!!!"),
        ),
        ("expired", signed(&expired, AUTH_SECRET)),
        ("wrong audience", signed(&wrong_audience, AUTH_SECRET)),
    ] {
        let status = client_with_token(app.channel.clone(), &token)
            .list_orders(list(""))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
        let answer = rest(&app, http::Method::GET, "/v1/orders", Some(&token), None).await;
        assert_status_json(&answer, 401, Code::Unauthenticated);
    }
}

#[tokio::test]
async fn customers_reach_only_their_own_orders() {
    let app = spawn_app().await;
    let mut alice = customer(&app, "alice");
    alice
        .create_order(order_request("alice-1", "alice"))
        .await
        .unwrap();
    // An admin orders for bob.
    app.create(order_request("bob-1", "bob")).await.unwrap();

    // Creating for someone else.
    let status = alice
        .create_order(order_request("alice-2", "bob"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("customer_id"), "{status:?}");

    // Her own order, yes; bob's is as missing as a missing one.
    let own = alice.get_order(get("alice-1")).await.unwrap().into_inner();
    assert_eq!(own.order.unwrap().customer_id, "alice");
    let missing = alice.get_order(get("no-such-order")).await.unwrap_err();
    let expected = missing.message().replace("no-such-order", "bob-1");
    let refused = [
        alice.get_order(get("bob-1")).await.unwrap_err(),
        alice
            .cancel_order(pb::CancelOrderRequest {
                order_id: "bob-1".into(),
                reason: String::new(),
            })
            .await
            .unwrap_err(),
        alice
            .watch_order(pb::WatchOrderRequest {
                order_id: "bob-1".into(),
            })
            .await
            .unwrap_err(),
    ];
    for status in refused {
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        assert_eq!(status.message(), expected);
    }
    let bobs = app.get("bob-1").await.unwrap();
    assert_eq!(
        bobs.status,
        pb::OrderStatus::Pending as i32,
        "not cancelled"
    );

    // Listing: her own with or without the filter, never bob's.
    for filter in ["", "alice"] {
        let listed = alice.list_orders(list(filter)).await.unwrap().into_inner();
        let ids: Vec<&str> = listed.orders.iter().map(|o| o.order_id.as_str()).collect();
        assert_eq!(ids, ["alice-1"], "filter {filter:?}");
    }
    let status = alice.list_orders(list("bob")).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("customer_id"), "{status:?}");

    // Over REST, the same.
    let alice_token = token("alice", Role::Customer);
    let answer = rest(
        &app,
        http::Method::GET,
        "/v1/orders/bob-1",
        Some(&alice_token),
        None,
    )
    .await;
    assert_status_json(&answer, 404, Code::NotFound);
    let answer = rest(
        &app,
        http::Method::GET,
        "/v1/orders?customerId=bob",
        Some(&alice_token),
        None,
    )
    .await;
    assert_status_json(&answer, 403, Code::PermissionDenied);
    let answer = rest(
        &app,
        http::Method::POST,
        "/v1/orders/alice-1:cancel",
        Some(&alice_token),
        Some(json!({"reason": "changed my mind"})),
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["order"]["status"], "ORDER_STATUS_CANCELLED");

    // The admin sees everyone's.
    let all = app.list(list("")).await.unwrap();
    let mut ids: Vec<&str> = all.orders.iter().map(|o| o.order_id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["alice-1", "bob-1"]);
    assert_eq!(app.get("alice-1").await.unwrap().customer_id, "alice");
}

#[tokio::test]
async fn health_reflection_and_metrics_need_no_token() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let app = spawn_app().await;
    let health = HealthClient::new(app.channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: pb::order_service_server::SERVICE_NAME.into(),
        })
        .await
        .unwrap();
    assert_eq!(health.into_inner().status, 1, "SERVING");
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(app.channel.clone())
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("not a service list: {response:?}");
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == pb::order_service_server::SERVICE_NAME)
    );
    for path in ["/metrics", "/healthz", "/readyz", "/openapi.json", "/docs"] {
        let answer = rest(&app, http::Method::GET, path, None, None).await;
        assert_eq!(answer.status, 200, "{path}: {:?}", answer.body);
    }
    // AuthService is not here: an unknown service, not a missing token.
    let answer = rest(
        &app,
        http::Method::POST,
        "/v1/auth:login",
        None,
        Some(json!({})),
    )
    .await;
    assert_eq!(answer.status, 404, "{:?}", answer.body);
}

#[tokio::test]
async fn over_the_limit_is_resource_exhausted_with_retry_info() {
    let app = spawn_app_with(|c| {
        c.auth.rate_limit = RateLimitConfig {
            per_second: 1,
            burst: 2,
            limit_admins: true,
        }
    })
    .await;
    let mut codes = Vec::new();
    let mut refused = None;
    let mut alice = customer(&app, "alice");
    for _ in 0..5 {
        match alice.get_order(get("nothing")).await {
            Ok(_) => codes.push(Code::Ok),
            Err(status) => {
                codes.push(status.code());
                if status.code() == Code::ResourceExhausted {
                    refused = Some(status);
                }
            }
        }
    }
    assert_eq!(&codes[..2], [Code::NotFound; 2], "{codes:?}");
    assert!(codes[2..].contains(&Code::ResourceExhausted), "{codes:?}");
    let refused = refused.unwrap();
    assert!(
        refused
            .get_details_retry_info()
            .unwrap()
            .retry_delay
            .is_some()
    );
    assert!(refused.metadata().contains_key("retry-after"));
    let answer = rest(
        &app,
        http::Method::GET,
        "/v1/orders/nothing",
        Some(&token("alice", Role::Customer)),
        None,
    )
    .await;
    assert_status_json(&answer, 429, Code::ResourceExhausted);
    let seconds: u64 = answer.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(seconds >= 1);

    // RATE_LIMIT_ADMIN=true: admins have buckets too.
    let mut admin_codes = Vec::new();
    for _ in 0..5 {
        admin_codes.push(app.get("nothing").await.unwrap_err().code());
    }
    assert!(
        admin_codes.contains(&Code::ResourceExhausted),
        "{admin_codes:?}"
    );
}

#[tokio::test]
async fn tokens_never_reach_the_logs() {
    let logs = CapturedLogs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(logs.clone())
        .finish();
    // The test runs on one thread, and so does the service it spawns.
    let _guard = tracing::subscriber::set_default(subscriber);
    let app = spawn_app().await;
    let alice_token = token("alice", Role::Customer);
    let mut alice = client_with_token(app.channel.clone(), &alice_token);
    alice
        .create_order(order_request("logged-1", "alice"))
        .await
        .unwrap();
    alice.get_order(get("logged-1")).await.unwrap();
    alice.list_orders(list("bob")).await.unwrap_err();
    let forged = signed(&claims("ops"), "a-forged-secret-of-at-least-32-bytes!");
    client_with_token(app.channel.clone(), &forged)
        .get_order(get("logged-1"))
        .await
        .unwrap_err();
    let answer = rest(
        &app,
        http::Method::GET,
        "/v1/orders/logged-1",
        Some(&alice_token),
        None,
    )
    .await;
    assert_eq!(answer.status, 200);
    drop(app);

    let text = logs.text();
    assert!(text.contains("order created"), "the logs were captured");
    for secret in [alice_token.as_str(), forged.as_str(), AUTH_SECRET] {
        assert!(!text.contains(secret), "{secret} is in the logs");
        let signature = secret.rsplit('.').next().unwrap();
        assert!(!text.contains(signature), "part of {secret} is in the logs");
    }
}
