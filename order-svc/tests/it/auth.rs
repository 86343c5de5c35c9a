//! Authentication, authorization and rate limits of order-svc: bearer
//! tokens on every OrderService call (gRPC and REST), customers confined to
//! their own orders, admins acting for all, tokens kept out of the logs.

use ordermesh_auth::Role;
use ordermesh_proto::order::v1 as pb;
use ordermesh_testkit::auth_cases::{
    assert_bad_tokens_refused, assert_not_logged, assert_open_without_token, assert_rate_limited,
    assert_refused_without_token, assert_status_json, capture_logs, forged_token, one_per_second,
    reflected_services_v1, retry_after,
};
use ordermesh_testkit::{rest_call, rest_get, rest_post};
use pb::order_service_client::OrderServiceClient;
use serde_json::json;
use tonic::Code;
use tonic_types::StatusExt as _;

use crate::helpers::{
    AUTH_SECRET, Client, TestApp, client_with_token, order_request, spawn_app, spawn_app_with,
    token,
};

fn customer(app: &TestApp, customer_id: &str) -> Client {
    client_with_token(app.channel.clone(), &token(customer_id, Role::Customer))
}

fn get(order_id: &str) -> pb::GetOrderRequest {
    pb::GetOrderRequest {
        order_id: order_id.into(),
    }
}

/// GetOrder of `order_id`, sending `token`.
async fn get_as(app: &TestApp, token: String, order_id: &str) -> Result<(), tonic::Status> {
    let mut client = client_with_token(app.channel.clone(), &token);
    client.get_order(get(order_id)).await.map(drop)
}

/// ListOrders of every customer's orders, sending `token`.
async fn list_all_as(app: &TestApp, token: String) -> Result<Vec<pb::Order>, tonic::Status> {
    let mut client = client_with_token(app.channel.clone(), &token);
    Ok(client.list_orders(list("")).await?.into_inner().orders)
}

fn list(customer_id: &str) -> pb::ListOrdersRequest {
    pb::ListOrdersRequest {
        customer_id: customer_id.into(),
        status: 0,
        page_size: 100,
        page_token: String::new(),
    }
}

#[tokio::test]
async fn calls_without_a_valid_token_are_unauthenticated() {
    let app = spawn_app().await;
    let status = OrderServiceClient::new(app.channel.clone())
        .get_order(get("o-1"))
        .await
        .unwrap_err();
    assert_refused_without_token(&status, app.addr, "/v1/orders/o-1").await;

    // Bad signature, expired, wrong audience or issuer, not a JWT.
    let list_all = |token| list_all_as(&app, token);
    assert_bad_tokens_refused(app.addr, "/v1/orders", Role::Admin, list_all).await;
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
    let answer = rest_get(app.addr, "/v1/orders/bob-1", Some(&alice_token)).await;
    assert_status_json(&answer, 404, Code::NotFound);
    let answer = rest_get(app.addr, "/v1/orders?customerId=bob", Some(&alice_token)).await;
    assert_status_json(&answer, 403, Code::PermissionDenied);
    let answer = rest_post(
        app.addr,
        "/v1/orders/alice-1:cancel",
        Some(&alice_token),
        json!({"reason": "changed my mind"}),
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
    let app = spawn_app().await;
    let service = pb::order_service_server::SERVICE_NAME;
    assert_open_without_token(app.channel.clone(), app.addr, service).await;
    let services = reflected_services_v1(app.channel.clone()).await;
    assert!(services.iter().any(|s| s == service), "{services:?}");
    // AuthService is not here: an unknown service, not a missing token.
    let answer = rest_post(app.addr, "/v1/auth:login", None, json!({})).await;
    assert_eq!(answer.status, 404, "{:?}", answer.body);
}

#[tokio::test]
async fn over_the_limit_is_resource_exhausted_with_retry_info() {
    let app = spawn_app_with(|c| c.auth.rate_limit = one_per_second(2, true)).await;
    let alice = token("alice", Role::Customer);
    let get_nothing = || get_as(&app, alice.clone(), "nothing");
    let refused = assert_rate_limited(5, 2, Code::NotFound, get_nothing).await;
    assert!(
        refused
            .get_details_retry_info()
            .unwrap()
            .retry_delay
            .is_some()
    );
    assert!(refused.metadata().contains_key("retry-after"));
    let answer = rest_call(
        app.addr,
        http::Method::GET,
        "/v1/orders/nothing",
        Some(&alice),
        None,
    )
    .await;
    assert_status_json(&answer, 429, Code::ResourceExhausted);
    assert!(retry_after(&answer.headers) >= 1);

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
    // The test runs on one thread, and so does the service it spawns.
    let (logs, _guard) = capture_logs();
    let app = spawn_app().await;
    let forged = forged_token("ops", Role::Admin);
    get_as(&app, forged.clone(), "logged-1").await.unwrap_err();
    let alice_token = token("alice", Role::Customer);
    let mut alice = client_with_token(app.channel.clone(), &alice_token);
    alice
        .create_order(order_request("logged-1", "alice"))
        .await
        .unwrap();
    get_as(&app, alice_token.clone(), "logged-1").await.unwrap();
    alice.list_orders(list("bob")).await.unwrap_err();
    let answer = rest_get(app.addr, "/v1/orders/logged-1", Some(&alice_token)).await;
    assert_eq!(answer.status, 200);
    drop(app);

    let text = logs.text();
    assert!(text.contains("order created"), "the logs were captured");
    assert_not_logged(&text, &[alice_token.as_str(), forged.as_str(), AUTH_SECRET]);
}
