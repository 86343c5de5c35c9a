//! REST/JSON on the real binaries. `every_http_rule_is_called_over_rest`
//! walks every `google.api.http` rule in the descriptor set and calls it:
//! a newly annotated RPC fails it until [`cases`] has an entry for it. The
//! other tests check WatchOrder as server-sent events, the real services'
//! errors as `google.rpc.Status` JSON, the OpenAPI document of each service,
//! HTTP/2, and the body limit setting.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use ordermesh_gateway::rest::{self, Binding};
use serde_json::{Value, json};

use crate::mesh::{Mesh, admin_token};

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// How long an asynchronous result (an order paid) may take.
const PATIENCE: Duration = Duration::from_secs(20);

/// One REST answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// Asserts a `google.rpc.Status` error answer and returns its body.
    pub fn error(&self, status: u16, code: i32) -> Value {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.content_type, "application/json", "{self:?}");
        let body = self.json();
        assert_eq!(body["code"], code, "{self:?}");
        assert!(
            body["message"].is_string() && body["details"].is_array(),
            "{self:?}"
        );
        body
    }
}

/// Pass in `send`'s headers for a request without `Authorization`.
pub const NO_TOKEN: (&str, &str) = ("authorization", "");

/// One REST call. It carries an admin bearer token unless `headers` has an
/// `authorization` of its own, or [`NO_TOKEN`].
pub async fn send(
    client: &HttpClient,
    addr: &str,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<String>,
) -> Answer {
    let mut request = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    let mut authorized = false;
    for (k, v) in headers {
        if k.eq_ignore_ascii_case("authorization") {
            authorized = true;
            if v.is_empty() {
                continue;
            }
        }
        request = request.header(*k, *v);
    }
    if !authorized {
        request = request.header("authorization", format!("Bearer {}", admin_token()));
    }
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let request = request
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .unwrap_or_else(|_| panic!("{path}: no answer within 10 s"))
        .unwrap_or_else(|e| panic!("{path}: {e:?}"));
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    // A stream (a watch) may never end: the first line is enough.
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Ok(Some(frame)) = tokio::time::timeout_at(deadline, body.frame()).await {
        if let Ok(data) = frame.expect("read the body").into_data() {
            bytes.extend_from_slice(&data);
        }
        if content_type == "application/x-ndjson" && bytes.contains(&b'\n') {
            break;
        }
    }
    Answer {
        status,
        content_type,
        headers,
        body: String::from_utf8(bytes).expect("UTF-8"),
    }
}

pub fn http1() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn http2() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// True when every key of `expected` is in `actual` with a matching value
/// (recursively; arrays match element by element, as a prefix). The string
/// `"*"` matches any value but null.
fn contains(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (actual, Value::String(any)) if any == "*" => !actual.is_null(),
        (Value::Object(a), Value::Object(e)) => e
            .iter()
            .all(|(k, v)| a.get(k).is_some_and(|av| contains(av, v))),
        (Value::Array(a), Value::Array(e)) => {
            a.len() >= e.len() && a.iter().zip(e).all(|(av, ev)| contains(av, ev))
        }
        _ => actual == expected,
    }
}

/// A REST call that exercises one http rule.
struct Case {
    /// The RPC, `package.Service.Method`.
    rpc: &'static str,
    /// The binding: HTTP method and path template as in the proto.
    method: &'static str,
    template: &'static str,
    /// The concrete request.
    path: String,
    body: Option<Value>,
    /// A subset of the JSON answer (for a stream: of its first line).
    expect: Value,
    /// Retry until the answer matches, for results that arrive later.
    eventually: bool,
}

/// One case per http rule, in the order they run (later ones use what
/// earlier ones created). A new annotated RPC needs an entry here.
fn cases(customer: &str, order: &str) -> Vec<Case> {
    vec![
        // AuthService is called without a token.
        Case {
            rpc: "ordermesh.auth.v1.AuthService.Register",
            method: "POST",
            template: "/v1/auth:register",
            path: "/v1/auth:register".into(),
            body: Some(json!({"customerId": customer, "password": "rest walk-through"})),
            expect: json!({"accessToken": "*", "expireTime": "*"}),
            eventually: false,
        },
        Case {
            rpc: "ordermesh.auth.v1.AuthService.Login",
            method: "POST",
            template: "/v1/auth:login",
            path: "/v1/auth:login".into(),
            body: Some(json!({"customerId": customer, "password": "rest walk-through"})),
            expect: json!({"accessToken": "*", "expireTime": "*"}),
            eventually: false,
        },
        Case {
            rpc: "ordermesh.payment.v1.AccountService.CreateAccount",
            method: "POST",
            template: "/v1/accounts",
            path: "/v1/accounts".into(),
            body: Some(json!({"customerId": customer, "currencyCode": "USD"})),
            expect: json!({"account": {"customerId": customer, "currencyCode": "USD"}}),
            eventually: false,
        },
        Case {
            rpc: "ordermesh.payment.v1.AccountService.Deposit",
            method: "POST",
            template: "/v1/accounts/{customer_id}:deposit",
            path: format!("/v1/accounts/{customer}:deposit"),
            // snake_case and a 64-bit number are accepted too
            body: Some(json!({"amount_minor": 5000, "depositId": "dep-1"})),
            expect: json!({"account": {"customerId": customer, "balanceMinor": "5000"}}),
            eventually: false,
        },
        Case {
            rpc: "ordermesh.order.v1.OrderService.CreateOrder",
            method: "POST",
            template: "/v1/orders",
            path: "/v1/orders".into(),
            body: Some(json!({
                "orderId": order,
                "customerId": customer,
                "items": [{"sku": "book", "quantity": 2, "unitPriceMinor": "600"}],
            })),
            // Fields at their default value are written too.
            expect: json!({"order": {
                "orderId": order, "totalMinor": "1200", "status": "ORDER_STATUS_PENDING",
                "items": [{"sku": "book", "quantity": 2, "unitPriceMinor": "600"}],
                "failureReason": "", "cancelReason": "", "refundedMinor": "0",
            }}),
            eventually: false,
        },
        Case {
            rpc: "ordermesh.order.v1.OrderService.GetOrder",
            method: "GET",
            template: "/v1/orders/{order_id}",
            path: format!("/v1/orders/{order}"),
            body: None,
            expect: json!({"order": {"orderId": order, "status": "ORDER_STATUS_PAID"}}),
            eventually: true,
        },
        Case {
            rpc: "ordermesh.payment.v1.AccountService.GetAccount",
            method: "GET",
            template: "/v1/accounts/{customer_id}",
            path: format!("/v1/accounts/{customer}"),
            body: None,
            expect: json!({"account": {"customerId": customer, "balanceMinor": "3800"}}),
            eventually: false,
        },
        Case {
            rpc: "ordermesh.order.v1.OrderService.ListOrders",
            method: "GET",
            template: "/v1/orders",
            path: format!("/v1/orders?customer_id={customer}&status=ORDER_STATUS_PAID&pageSize=10"),
            body: None,
            expect: json!({"orders": [{"orderId": order, "customerId": customer}]}),
            eventually: false,
        },
        Case {
            rpc: "ordermesh.order.v1.OrderService.WatchOrder",
            method: "GET",
            template: "/v1/orders/{order_id}:watch",
            path: format!("/v1/orders/{order}:watch"),
            body: None,
            // PAID is terminal: the stream sends it and ends.
            expect: json!({"order": {"orderId": order, "status": "ORDER_STATUS_PAID"}}),
            eventually: false,
        },
        Case {
            rpc: "ordermesh.payment.v1.AccountService.ListTransactions",
            method: "GET",
            template: "/v1/accounts/{customer_id}/transactions",
            path: format!("/v1/accounts/{customer}/transactions?pageSize=10"),
            body: None,
            expect: json!({"transactions": [
                {"kind": "TRANSACTION_KIND_DEBIT", "amountMinor": "-1200",
                 "balanceAfterMinor": "3800", "orderId": order},
                {"kind": "TRANSACTION_KIND_DEPOSIT", "amountMinor": "5000",
                 "balanceAfterMinor": "5000", "depositId": "dep-1"},
            ]}),
            eventually: false,
        },
        Case {
            rpc: "ordermesh.order.v1.OrderService.CancelOrder",
            method: "POST",
            template: "/v1/orders/{order_id}:cancel",
            path: format!("/v1/orders/{order}:cancel"),
            body: Some(json!({"reason": "rest walk-through"})),
            expect: json!({"order": {
                "orderId": order, "status": "ORDER_STATUS_CANCELLED",
                "cancelReason": "rest walk-through",
            }}),
            eventually: false,
        },
    ]
}

/// Every http rule of the descriptor set, with the services that carry one.
fn all_bindings() -> Vec<Binding> {
    let pool = rest::descriptor_pool(ordermesh_proto::FILE_DESCRIPTOR_SET)
        .expect("the descriptor set decodes");
    let services: Vec<String> = pool.services().map(|s| s.full_name().to_owned()).collect();
    rest::http_rule::bindings(&pool, &services).expect("the http rules are valid")
}

fn rpc_name(binding: &Binding) -> String {
    format!(
        "{}.{}",
        binding.method.parent_service().full_name(),
        binding.method.name()
    )
}

/// The binary that serves `service`.
fn address<'a>(mesh: &'a Mesh, service: &str) -> &'a str {
    match service {
        "ordermesh.order.v1.OrderService" => &mesh.order_addr,
        "ordermesh.payment.v1.AccountService" | "ordermesh.auth.v1.AuthService" => {
            &mesh.processor_addr
        }
        other => panic!("no binary known to serve {other}: add it to rest.rs address()"),
    }
}

#[tokio::test]
async fn every_http_rule_is_called_over_rest() {
    let bindings = all_bindings();
    assert!(!bindings.is_empty());
    let customer = format!("rest-{}", uuid::Uuid::new_v4().simple());
    let order = format!("{customer}-order");
    let cases = cases(&customer, &order);

    // Every rule has a case, every case a rule.
    let key = |rpc: &str, method: &str, template: &str| format!("{rpc} {method} {template}");
    let rules: Vec<String> = bindings
        .iter()
        .map(|b| {
            key(
                &rpc_name(b),
                b.http_method.as_str(),
                &b.template.to_string(),
            )
        })
        .collect();
    let covered: Vec<String> = cases
        .iter()
        .map(|c| key(c.rpc, c.method, c.template))
        .collect();
    let missing: Vec<&String> = rules.iter().filter(|r| !covered.contains(r)).collect();
    assert!(
        missing.is_empty(),
        "http rules without a REST case in e2e/tests/it/rest.rs cases(): {missing:#?}"
    );
    let stale: Vec<&String> = covered.iter().filter(|c| !rules.contains(c)).collect();
    assert!(
        stale.is_empty(),
        "cases for rules that no longer exist: {stale:#?}"
    );

    let mesh = Mesh::start(&[]).await;
    let client = http1();
    for case in &cases {
        let binding = bindings
            .iter()
            .find(|b| {
                key(
                    &rpc_name(b),
                    b.http_method.as_str(),
                    &b.template.to_string(),
                ) == key(case.rpc, case.method, case.template)
            })
            .expect("checked above");
        let path_only = case.path.split('?').next().unwrap();
        assert!(
            binding.template.matches(path_only).is_some(),
            "{}: {} does not match {}",
            case.rpc,
            case.path,
            case.template
        );
        let addr = address(&mesh, binding.method.parent_service().full_name());
        let method = Method::from_bytes(case.method.as_bytes()).unwrap();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let headers: &[(&str, &str)] = if case.rpc.starts_with("ordermesh.auth.") {
            &[NO_TOKEN]
        } else {
            &[]
        };
        loop {
            let answer = send(
                &client,
                addr,
                method.clone(),
                &case.path,
                headers,
                case.body.as_ref().map(Value::to_string),
            )
            .await;
            let json = if binding.method.is_server_streaming() {
                assert_eq!(answer.content_type, "application/x-ndjson", "{answer:?}");
                let first = answer.body.lines().next().unwrap_or_default();
                serde_json::from_str::<Value>(first).map(|v| v["result"].clone())
            } else {
                assert_eq!(answer.content_type, "application/json", "{answer:?}");
                serde_json::from_str::<Value>(&answer.body)
            };
            let ok = answer.status == 200 && json.as_ref().is_ok_and(|j| contains(j, &case.expect));
            if ok {
                break;
            }
            assert!(
                case.eventually && tokio::time::Instant::now() < deadline,
                "{} {} {}: expected 200 with {}, got {answer:?}",
                case.rpc,
                case.method,
                case.path,
                case.expect
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A server-sent-events answer read to its end (or [`PATIENCE`]): the
/// response head and the events, each as its `event:` name ("message" when
/// unnamed) and data; comment lines are skipped.
async fn watch_events(
    client: &HttpClient,
    addr: &str,
    path: &str,
) -> (u16, String, Vec<(String, String)>) {
    let request = Request::get(format!("http://{addr}{path}"))
        .header("accept", "text/event-stream")
        .header("authorization", format!("Bearer {}", admin_token()))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .unwrap_or_else(|_| panic!("{path}: no answer within 10 s"))
        .unwrap_or_else(|e| panic!("{path}: {e:?}"));
    let status = response.status().as_u16();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    let mut body = response.into_body();
    let mut text = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => panic!("{path}: the stream did not end within {PATIENCE:?}"),
            Ok(None) => break,
            Ok(Some(frame)) => {
                if let Ok(data) = frame.expect("read the body").into_data() {
                    text.extend_from_slice(&data);
                }
            }
        }
    }
    let text = String::from_utf8(text).expect("UTF-8");
    let events = text
        .split_terminator("\n\n")
        .filter_map(|block| {
            let mut name = "message".to_owned();
            let mut data = None;
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_owned();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = Some(d.to_owned());
                }
            }
            data.map(|d| (name, d))
        })
        .collect();
    (status, content_type, events)
}

#[tokio::test]
async fn watch_order_over_server_sent_events() {
    let mesh = Mesh::start(&[]).await;
    let client = http1();
    let customer = format!("sse-{}", uuid::Uuid::new_v4().simple());
    let order = format!("{customer}-order");
    let calls = [
        (
            &mesh.processor_addr,
            "/v1/accounts".to_owned(),
            json!({"customerId": customer}),
        ),
        (
            &mesh.processor_addr,
            format!("/v1/accounts/{customer}:deposit"),
            json!({"amountMinor": "1000", "depositId": "d1"}),
        ),
        (
            &mesh.order_addr,
            "/v1/orders".to_owned(),
            json!({"orderId": order, "customerId": customer,
                   "items": [{"sku": "pen", "quantity": 1, "unitPriceMinor": "300"}]}),
        ),
    ];
    for (addr, path, body) in calls {
        let answer = send(
            &client,
            addr,
            Method::POST,
            &path,
            &[],
            Some(body.to_string()),
        )
        .await;
        assert_eq!(answer.status, 200, "{answer:?}");
    }

    // One `data:` event per WatchOrder message; the stream ends at PAID.
    let (status, content_type, events) = watch_events(
        &client,
        &mesh.order_addr,
        &format!("/v1/orders/{order}:watch"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "text/event-stream");
    assert!(!events.is_empty());
    let mut statuses = Vec::new();
    for (name, data) in &events {
        assert_eq!(name, "message", "{events:?}");
        let message: Value = serde_json::from_str(data).expect("JSON data");
        assert_eq!(message["order"]["orderId"], order.as_str());
        assert_eq!(
            message["order"]["refundedMinor"], "0",
            "defaults are written"
        );
        statuses.push(message["order"]["status"].as_str().unwrap().to_owned());
    }
    assert_eq!(statuses.last().unwrap(), "ORDER_STATUS_PAID", "{events:?}");
    assert!(
        statuses[..statuses.len() - 1]
            .iter()
            .all(|s| s == "ORDER_STATUS_PENDING"),
        "{statuses:?}"
    );

    // A watch that fails before its first message keeps its HTTP status
    // and google.rpc.Status body, as without SSE.
    let (status, content_type, events) =
        watch_events(&client, &mesh.order_addr, "/v1/orders/no-such-order:watch").await;
    assert_eq!((status, content_type.as_str()), (404, "application/json"));
    assert!(events.is_empty());
}

#[tokio::test]
async fn real_service_errors_are_status_json() {
    let mesh = Mesh::start(&[("REST_MAX_BODY_BYTES", "4096")]).await;
    let client = http1();
    let orders = mesh.order_addr.as_str();
    let accounts = mesh.processor_addr.as_str();

    // INVALID_ARGUMENT from the service, with its BadRequest detail.
    let answer = send(
        &client,
        orders,
        Method::POST,
        "/v1/orders",
        &[],
        Some(r#"{"customerId": "c", "items": []}"#.into()),
    )
    .await;
    let body = answer.error(400, 3);
    assert_eq!(
        body["details"],
        json!([{
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{"field": "items", "description": body["details"][0]["fieldViolations"][0]["description"]}],
        }])
    );

    // NOT_FOUND and ALREADY_EXISTS.
    let answer = send(
        &client,
        orders,
        Method::GET,
        "/v1/orders/no-such-order",
        &[],
        None,
    )
    .await;
    assert_eq!(
        answer.error(404, 5)["message"],
        "order no-such-order not found"
    );
    let create = r#"{"customerId": "twice"}"#.to_owned();
    let answer = send(
        &client,
        accounts,
        Method::POST,
        "/v1/accounts",
        &[],
        Some(create.clone()),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let answer = send(
        &client,
        accounts,
        Method::POST,
        "/v1/accounts",
        &[],
        Some(create),
    )
    .await;
    answer.error(409, 6);

    // The gateway's own: malformed JSON, unknown field, wrong type.
    let answer = send(
        &client,
        orders,
        Method::POST,
        "/v1/orders",
        &[],
        Some("{".into()),
    )
    .await;
    answer.error(400, 3);
    let answer = send(
        &client,
        orders,
        Method::POST,
        "/v1/orders",
        &[],
        Some(r#"{"colour": 1}"#.into()),
    )
    .await;
    assert_eq!(
        answer.error(400, 3)["details"][0]["fieldViolations"][0]["field"],
        "colour"
    );
    let answer = send(
        &client,
        orders,
        Method::POST,
        "/v1/orders",
        &[],
        Some(r#"{"customerId": "c", "items": [{"sku": "a", "quantity": "two"}]}"#.into()),
    )
    .await;
    assert_eq!(
        answer.error(400, 3)["details"][0]["fieldViolations"][0]["field"],
        "items[0].quantity"
    );
    let answer = send(
        &client,
        orders,
        Method::GET,
        "/v1/orders?page_size=lots",
        &[],
        None,
    )
    .await;
    assert_eq!(
        answer.error(400, 3)["details"][0]["fieldViolations"][0]["field"],
        "page_size"
    );

    // Unknown path, wrong method, a body over REST_MAX_BODY_BYTES.
    send(&client, orders, Method::GET, "/v1/nothing", &[], None)
        .await
        .error(404, 5);
    // AccountService is not on the order service's port.
    send(
        &client,
        orders,
        Method::GET,
        "/v1/accounts/alice",
        &[],
        None,
    )
    .await
    .error(404, 5);
    let answer = send(&client, orders, Method::DELETE, "/v1/orders/x", &[], None).await;
    answer.error(405, 12);
    assert_eq!(answer.headers["allow"], "GET");
    let big = format!(r#"{{"customerId": "{}"}}"#, "x".repeat(5000));
    send(&client, orders, Method::POST, "/v1/orders", &[], Some(big))
        .await
        .error(413, 8);

    // A deadline that cannot be met: 504, still JSON (not tonic's gRPC form).
    send(
        &client,
        orders,
        Method::GET,
        "/v1/orders/x",
        &[("grpc-timeout", "1n")],
        None,
    )
    .await
    .error(504, 4);

    // HTTP/2 (prior knowledge) on the same port.
    let answer = send(
        &http2(),
        orders,
        Method::GET,
        "/v1/orders/no-such-order",
        &[],
        None,
    )
    .await;
    answer.error(404, 5);
}

#[tokio::test]
async fn each_service_documents_only_its_own_rules() {
    let mesh = Mesh::start(&[]).await;
    let client = http1();
    let bindings = all_bindings();
    let processor: &[&str] = &[
        "ordermesh.payment.v1.AccountService",
        "ordermesh.auth.v1.AuthService",
    ];
    for (addr, services) in [
        (&mesh.order_addr, &["ordermesh.order.v1.OrderService"][..]),
        (&mesh.processor_addr, processor),
    ] {
        // The documentation needs no token.
        let answer = send(
            &client,
            addr,
            Method::GET,
            "/openapi.json",
            &[NO_TOKEN],
            None,
        )
        .await;
        assert_eq!(answer.status, 200);
        let doc = answer.json();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut documented: Vec<String> = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                documented.push(format!("{} {path}", method.to_uppercase()));
            }
        }
        let mut expected: Vec<String> = bindings
            .iter()
            .filter(|b| services.contains(&b.method.parent_service().full_name()))
            .map(|b| format!("{} {}", b.http_method, b.template.openapi_path()))
            .collect();
        documented.sort();
        expected.sort();
        assert_eq!(documented, expected, "{services:?}");

        let answer = send(&client, addr, Method::GET, "/docs", &[NO_TOKEN], None).await;
        assert_eq!(answer.status, 200);
        assert!(answer.body.contains("/openapi.json"));
    }
}
