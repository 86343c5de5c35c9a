//! Property tests ("fuzz targets") of the gateway's decoders of untrusted
//! input, against the real ordermesh descriptors and `google.api.http`
//! bindings: REST request decoding (arbitrary body bytes, JSON-ish text,
//! structured-but-wrong JSON, query strings, path values), path template
//! matching and routing, and page tokens.
//!
//! Properties: nothing panics; every refusal is a 400 INVALID_ARGUMENT (a
//! structured body's names the field); what has a canonical form round
//! trips. Each target runs a bounded number of cases in the normal test
//! run (`PROPTEST_CASES=n` runs more); a failing case is saved in
//! `tests/proptest-regressions/fuzz.txt` and replayed first ever after, so
//! commit that file with the fix.

use std::sync::LazyLock;

use axum::body::Body;
use http::{Method, Request, StatusCode};
use ordermesh_gateway::rest::http_rule::{self, Binding, Captured};
use ordermesh_gateway::rest::{Gateway, RestConfig, RestError, json};
use ordermesh_proto::order::v1 as order_pb;
use ordermesh_proto::payment::v1 as payment_pb;
use ordermesh_testkit::fuzz::proptest_config as config;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use proptest::prelude::*;
use prost::Message as _;
use prost_reflect::DescriptorPool;
use serde_json::{Map, Value};
use tonic::Code;

const SERVICES: [&str; 2] = [
    "ordermesh.order.v1.OrderService",
    "ordermesh.payment.v1.AccountService",
];

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    ordermesh_gateway::rest::descriptor_pool(ordermesh_proto::FILE_DESCRIPTOR_SET)
        .expect("the ordermesh descriptor set decodes")
});

static BINDINGS: LazyLock<Vec<Binding>> = LazyLock::new(|| {
    let services: Vec<String> = SERVICES.iter().map(|s| (*s).to_owned()).collect();
    http_rule::bindings(&POOL, &services).expect("the ordermesh rules are valid")
});

/// The binding of the RPC `method` (its rule, not an additional binding).
fn binding(method: &str) -> &'static Binding {
    BINDINGS
        .iter()
        .find(|b| b.method.name() == method && b.index == 0)
        .unwrap_or_else(|| panic!("{method} has a REST binding"))
}

/// The RPCs whose whole request message is the body.
const WHOLE_BODY: [&str; 4] = ["CreateOrder", "CancelOrder", "CreateAccount", "Deposit"];

/// The field a 400 names in its `google.rpc.BadRequest` detail.
fn named_field(err: &RestError) -> Option<String> {
    let detail: Value = serde_json::from_str(err.details.first()?).ok()?;
    detail["fieldViolations"][0]["field"]
        .as_str()
        .map(str::to_owned)
}

/// A refusal must be a 400 INVALID_ARGUMENT that says something.
fn check_refusal(err: &RestError) -> Result<(), TestCaseError> {
    prop_assert_eq!(err.http, StatusCode::BAD_REQUEST, "{:?}", err);
    prop_assert_eq!(err.code, Code::InvalidArgument, "{:?}", err);
    prop_assert!(!err.message.is_empty(), "{:?}", err);
    if let Some(field) = named_field(err) {
        prop_assert!(
            err.message.starts_with(&format!("invalid {field}: ")),
            "{:?}",
            err
        );
    }
    Ok(())
}

/// Path values for `binding`'s variables, in order.
fn captured(binding: &Binding, values: &[String]) -> Vec<Captured> {
    (0..binding.variables.len())
        .map(|variable| Captured {
            variable,
            value: values.get(variable).cloned().unwrap_or_default(),
        })
        .collect()
}

/// Bits of JSON and of what breaks JSON parsers, for text that is almost
/// JSON.
fn json_fragment() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::sample::select(vec![
            "{",
            "}",
            "[",
            "]",
            "\"",
            ":",
            ",",
            " ",
            "\n",
            "\\",
            "null",
            "true",
            "false",
            "0",
            "-0",
            "1",
            "-1",
            "1.5",
            "1e400",
            "-1e400",
            "9223372036854775808",
            "1e-400",
            "NaN",
            "\"NaN\"",
            "\"Infinity\"",
            "\"\\u0000\"",
            "\"\\ud800\"",
            "\"\\udc00x\"",
            "\"\\uZZZZ\"",
            "\"items\"",
            "\"orderId\"",
            "\"order_id\"",
            "\"customerId\"",
            "\"quantity\"",
            "\"unitPriceMinor\"",
            "\"amountMinor\"",
            "\"sku\"",
            "\"reason\"",
            "\"2\"",
            "\"-12\"",
            "\"1.0\"",
            "\"0x10\"",
            "\"  3\"",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        any::<u8>().prop_map(|b| vec![b]),
        "[a-zA-Z0-9 _é€]{0,6}".prop_map(|s| format!("\"{s}\"").into_bytes()),
    ]
}

fn json_text() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(json_fragment(), 0..40).prop_map(|parts| parts.concat())
}

/// Every field name (proto and JSON spelling) of the whole-body requests
/// and the messages inside them, plus names no message has.
fn field_names() -> Vec<String> {
    let mut names = vec![String::new(), "unknown".into(), "orderID".into()];
    let mut pending: Vec<_> = WHOLE_BODY
        .iter()
        .map(|m| binding(m).method.input())
        .collect();
    let mut seen = Vec::new();
    while let Some(message) = pending.pop() {
        if seen.contains(&message) {
            continue;
        }
        for field in message.fields() {
            names.push(field.name().to_owned());
            names.push(field.json_name().to_owned());
            if let prost_reflect::Kind::Message(inner) = field.kind() {
                pending.push(inner);
            }
        }
        seen.push(message);
    }
    names.sort();
    names.dedup();
    names
}

/// JSON values of every type, with object keys from `keys`.
fn json_value(keys: Vec<String>) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop::sample::select(vec![
            0i64,
            1,
            -1,
            2_147_483_647,
            2_147_483_648,
            -2_147_483_649
        ])
        .prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        any::<String>().prop_map(Value::String),
        prop::sample::select(vec![
            "",
            "0",
            "-1",
            "1.5",
            "1e3",
            "9223372036854775808",
            "-9223372036854775809",
            "NaN",
            "ORDER_STATUS_PAID",
            "ORDER_STATUS_NOPE",
            "USD",
            "true",
            " 1",
            "\u{0}",
        ])
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(keys.clone()), inner), 0..5)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

/// A JSON object with keys from `keys`: right names, wrong shapes.
fn json_object(keys: Vec<String>) -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::vec((prop::sample::select(keys.clone()), json_value(keys)), 0..8)
        .prop_map(|entries| entries.into_iter().collect())
}

/// Request paths: pieces of the real routes, percent escapes (valid,
/// truncated, invalid UTF-8), separators and any character.
fn path() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        prop::sample::select(vec![
            "/",
            "/",
            "/",
            "v1",
            "orders",
            "accounts",
            "transactions",
            ":cancel",
            ":watch",
            ":deposit",
            ":",
            "%",
            "%2",
            "%2F",
            "%2f",
            "%3A",
            "%25",
            "%FF",
            "%C3%A9",
            "%E2%82",
            "%00",
            ".",
            "..",
            "~",
            "*",
            "**",
            "{order_id}",
            "?",
            "#",
            " ",
            "é",
        ])
        .prop_map(str::to_owned),
        "[a-zA-Z0-9_-]{1,8}",
        any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(piece, 0..12).prop_map(|pieces| pieces.concat())
}

/// `binding`'s template with `values` percent-encoded in its variables.
fn render(binding: &Binding, values: &[String]) -> String {
    let template = binding.template.to_string();
    let mut out = String::new();
    let mut rest = template.as_str();
    let mut values = values.iter();
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = open + rest[open..].find('}').expect("balanced braces");
        let value = values.next().expect("a value per variable");
        out.extend(utf8_percent_encode(value, NON_ALPHANUMERIC));
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
});

/// The REST gateway over the real bindings, in front of a gRPC server that
/// answers every call UNAVAILABLE with the method's path as the message: a
/// 503 means the request was decoded and routed, and says where.
static GATEWAY: LazyLock<axum::Router> = LazyLock::new(|| {
    let backend = axum::Router::new().fallback(|request: Request<Body>| async move {
        tonic::Status::unavailable(request.uri().path().to_owned()).into_http::<Body>()
    });
    let services: Vec<String> = SERVICES.iter().map(|s| (*s).to_owned()).collect();
    let gateway = Gateway::new(
        POOL.clone(),
        &services,
        backend.clone(),
        RestConfig::default(),
    )
    .expect("the ordermesh rules are valid");
    gateway.attach(backend)
});

/// Sends one request through the gateway: status and `google.rpc.Status`.
fn call(request: Request<Body>) -> (StatusCode, Value) {
    use tower::ServiceExt as _;
    RUNTIME.block_on(async {
        let response = GATEWAY.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let bytes = ordermesh_testkit::body_bytes(response.into_body()).await;
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {bytes:?}"));
        (status, body)
    })
}

fn order_item() -> impl Strategy<Value = order_pb::OrderItem> {
    (any::<String>(), any::<i32>(), any::<i64>()).prop_map(|(sku, quantity, unit_price_minor)| {
        order_pb::OrderItem {
            sku,
            quantity,
            unit_price_minor,
        }
    })
}

fn create_order() -> impl Strategy<Value = order_pb::CreateOrderRequest> {
    (
        any::<String>(),
        any::<String>(),
        any::<String>(),
        prop::collection::vec(order_item(), 0..4),
    )
        .prop_map(|(order_id, customer_id, currency_code, items)| {
            order_pb::CreateOrderRequest {
                order_id,
                customer_id,
                currency_code,
                items,
            }
        })
}

/// Canonical proto3 JSON of a prost message of the pool.
fn canonical_json<M: prost::Message + prost::Name>(message: &M) -> Vec<u8> {
    let desc = POOL
        .get_message_by_name(&M::full_name())
        .expect("the message is in the pool");
    let dynamic = prost_reflect::DynamicMessage::decode(desc, message.encode_to_vec().as_slice())
        .expect("prost's bytes decode");
    serde_json::to_vec(&dynamic).expect("JSON serializes")
}

proptest! {
    #![proptest_config(config(1000))]

    /// Any path against every real binding: no panic, one value per
    /// variable, and a matched value re-encoded matches to itself.
    #[test]
    fn path_templates_match_arbitrary_paths_consistently(path in path()) {
        for b in BINDINGS.iter() {
            let Some(captured) = b.template.matches(&path) else { continue };
            prop_assert_eq!(captured.len(), b.variables.len());
            let values: Vec<String> = captured.iter().map(|c| c.value.clone()).collect();
            prop_assert!(values.iter().all(|v| !v.is_empty()), "{} matched {:?}", path, values);
            let again = b.template.matches(&render(b, &values)).map(|c| {
                c.into_iter().map(|c| c.value).collect::<Vec<_>>()
            });
            prop_assert_eq!(again, Some(values), "{} {}", b.template, path);
        }
    }

    /// Any path either matches no binding of an HTTP method or one that is
    /// more specific than every other match: routing is never a tie.
    #[test]
    fn routing_is_never_ambiguous(path in path()) {
        let mut matching: Vec<&Binding> =
            BINDINGS.iter().filter(|b| b.template.matches(&path).is_some()).collect();
        if matching.iter().any(|b| b.template.verb().is_some()) {
            matching.retain(|b| b.template.verb().is_some());
        }
        for a in &matching {
            let ties = matching.iter().filter(|b| {
                b.http_method == a.http_method
                    && b.template.specificity() == a.template.specificity()
            });
            prop_assert_eq!(ties.count(), 1, "{} is ambiguous", path);
        }
    }

    /// Any value in a path variable, percent-encoded, reaches its binding's
    /// own RPC through the gateway, decoded to exactly that value.
    #[test]
    fn path_values_round_trip_through_the_real_routes(
        which in any::<prop::sample::Index>(),
        value in ".+",
    ) {
        let with_variables: Vec<&Binding> =
            BINDINGS.iter().filter(|b| !b.variables.is_empty()).collect();
        let b = with_variables[which.index(with_variables.len())];
        let values = vec![value.clone()];
        let path = render(b, &values);
        let expected = b.template.matches(&path).map(|c| c[0].value.clone());
        prop_assert_eq!(expected.as_deref(), Some(value.as_str()), "{}", path);
        let request = Request::builder()
            .method(b.http_method.clone())
            .uri(&path)
            .body(Body::empty())
            .unwrap();
        let (status, body) = call(request);
        prop_assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{} {}: {}", b.http_method, path, body);
        let rpc = format!("/{}/{}", b.method.parent_service().full_name(), b.method.name());
        prop_assert_eq!(body["message"].as_str(), Some(rpc.as_str()));
    }
}

proptest! {
    #![proptest_config(config(1000))]

    /// Arbitrary bytes as the body of every whole-body RPC.
    #[test]
    fn json_bodies_of_arbitrary_bytes_are_decoded_or_a_400(
        body in prop::collection::vec(any::<u8>(), 0..256),
        value in any::<String>(),
    ) {
        for method in WHOLE_BODY {
            let b = binding(method);
            if let Err(err) = json::request_message(b, &captured(b, std::slice::from_ref(&value)), None, &body) {
                check_refusal(&err)?;
            }
        }
    }

    /// Almost-JSON (lone surrogates, huge numbers, NULs, stray bytes) as
    /// the body of every whole-body RPC.
    #[test]
    fn json_bodies_of_json_fragments_are_decoded_or_a_400(body in json_text()) {
        for method in WHOLE_BODY {
            let b = binding(method);
            if let Err(err) = json::request_message(b, &captured(b, &["x".into()]), None, &body) {
                check_refusal(&err)?;
            }
        }
    }

    /// JSON objects with the real field names and values of the wrong
    /// type, range or shape: a refusal names a field the body has.
    #[test]
    fn structured_but_wrong_json_names_the_field(
        object in json_object(field_names()),
        which in any::<prop::sample::Index>(),
    ) {
        let b = binding(WHOLE_BODY[which.index(WHOLE_BODY.len())]);
        let body = serde_json::to_vec(&object).unwrap();
        let Err(err) = json::request_message(b, &captured(b, &["x".into()]), None, &body) else {
            return Ok(());
        };
        check_refusal(&err)?;
        let field = named_field(&err);
        prop_assert!(field.is_some(), "{}: no field named in {:?}", b.method.name(), err);
        let field = field.unwrap();
        let root = field.split(['.', '[']).next().unwrap_or_default();
        prop_assert!(object.contains_key(root), "{:?} names {:?}, not a key of the body", err, field);
    }

    /// Arbitrary query strings on the GET RPCs: decoded or a 400 naming
    /// the parameter.
    #[test]
    fn query_strings_are_decoded_or_a_400_naming_the_parameter(
        key in prop::sample::select(vec![
            "customer_id", "customerId", "status", "page_size", "pageSize", "page_token",
            "pageToken", "order_id", "items", "items.sku", "status.x", "", "unknown", "a.b",
        ]),
        value in prop_oneof![
            any::<String>(),
            prop::sample::select(vec![
                "ORDER_STATUS_PAID", "2", "99", "-1", "2147483648", "1e3", "true", "",
            ]).prop_map(str::to_owned),
        ],
        noise in "[a-zA-Z0-9%&=._+-]{0,24}",
        method in prop::sample::select(vec!["ListOrders", "ListTransactions", "GetOrder", "WatchOrder"]),
    ) {
        let b = binding(method);
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair(key, &value)
            .finish();
        for query in [query.clone(), format!("{query}&{noise}"), noise.clone()] {
            if let Err(err) = json::request_message(b, &captured(b, &["c".into()]), Some(&query), b"") {
                check_refusal(&err)?;
                prop_assert!(named_field(&err).is_some(), "{} ?{}: {:?}", method, query, err);
            }
        }
    }
}

proptest! {
    #![proptest_config(config(1000))]

    /// A `grpc-timeout` header (visible ASCII, all a header value can
    /// carry): 1 to 8 digits and a unit, or nothing.
    #[test]
    fn grpc_timeouts_parse_exactly_their_grammar(
        text in prop_oneof!["[ -~]{0,12}", "[0-9]{0,10}[HMSmunx ]"],
    ) {
        let expected = text.split_at_checked(text.len().saturating_sub(1)).and_then(|(digits, unit)| {
            let n: u64 = (!digits.is_empty() && digits.len() <= 8 && digits.bytes().all(|b| b.is_ascii_digit()))
                .then(|| digits.parse().ok())??;
            Some(match unit {
                "H" => std::time::Duration::from_secs(n * 3600),
                "M" => std::time::Duration::from_secs(n * 60),
                "S" => std::time::Duration::from_secs(n),
                "m" => std::time::Duration::from_millis(n),
                "u" => std::time::Duration::from_micros(n),
                "n" => std::time::Duration::from_nanos(n),
                _ => return None,
            })
        });
        prop_assert_eq!(ordermesh_gateway::rest::parse_grpc_timeout(&text), expected);
    }

    /// Hostile `grpc-timeout` and `grpc-metadata-*` headers: a 400 naming
    /// the header, or passed on (the backend's 503, or 504 when the
    /// deadline is that short).
    #[test]
    fn hostile_headers_are_refused_or_passed_on(
        timeout in prop_oneof!["[ -~]{0,12}", "[0-9]{1,9}[HMSmun]"],
        name in prop_oneof![
            "[a-z0-9_-]{0,12}",
            prop::sample::select(vec![
                "content-length", "content-type", "content-encoding", "connection", "te",
                "transfer-encoding", "grpc-status", "grpc-encoding", "grpc-timeout", "host",
                "authorization", "trailer", "upgrade",
            ]).prop_map(str::to_owned),
        ],
        value in "[ -~]{0,16}",
    ) {
        let request = Request::builder()
            .method(Method::GET)
            .uri("/v1/orders/o-1")
            .header("grpc-timeout", timeout.as_str())
            .header(format!("grpc-metadata-{name}"), value.as_str())
            .body(Body::empty());
        let Ok(request) = request else { return Ok(()) };
        let (status, reply) = call(request);
        prop_assert!([400, 503, 504].contains(&status.as_u16()), "{}: {}", status, reply);
        if status == StatusCode::BAD_REQUEST {
            prop_assert_eq!(
                reply["details"][0]["fieldViolations"][0]["field"].as_str(),
                Some("grpc-timeout"),
                "{}", reply
            );
        }
    }
}

proptest! {
    #![proptest_config(config(512))]

    /// A request in canonical proto3 JSON decodes to the very message.
    #[test]
    fn canonical_json_round_trips(request in create_order()) {
        let body = canonical_json(&request);
        let decoded = json::request_message(binding("CreateOrder"), &[], None, &body)
            .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        let back = order_pb::CreateOrderRequest::decode(decoded.encode_to_vec().as_slice()).unwrap();
        prop_assert_eq!(back, request);
    }

    /// Path variable plus body, and path variable plus query parameters,
    /// decode to the message they describe.
    #[test]
    fn path_body_and_query_round_trip(
        customer_id in ".+",
        amount_minor in any::<i64>(),
        deposit_id in any::<String>(),
        page_size in any::<i32>(),
        page_token in any::<String>(),
    ) {
        let deposit = payment_pb::DepositRequest { customer_id: customer_id.clone(), amount_minor, deposit_id };
        let mut body: Value = serde_json::from_slice(&canonical_json(&deposit)).unwrap();
        body.as_object_mut().unwrap().remove("customerId");
        let b = binding("Deposit");
        let decoded = json::request_message(
            b,
            &captured(b, std::slice::from_ref(&customer_id)),
            None,
            &serde_json::to_vec(&body).unwrap(),
        ).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        let back = payment_pb::DepositRequest::decode(decoded.encode_to_vec().as_slice()).unwrap();
        prop_assert_eq!(back, deposit);

        let list = payment_pb::ListTransactionsRequest { customer_id: customer_id.clone(), page_size, page_token };
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("pageSize", &list.page_size.to_string())
            .append_pair("page_token", &list.page_token)
            .finish();
        let b = binding("ListTransactions");
        let decoded = json::request_message(b, &captured(b, &[customer_id]), Some(&query), b"")
            .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        let back = payment_pb::ListTransactionsRequest::decode(decoded.encode_to_vec().as_slice()).unwrap();
        prop_assert_eq!(back, list);
    }

    /// The whole REST pipeline (routing, body limit, JSON, query, path)
    /// with hostile requests: never a 5xx of its own, never a panic; an
    /// answer is a 400, 404, 405 or the backend's 503 (decoded and routed).
    #[test]
    fn the_gateway_answers_hostile_requests_with_client_errors(
        method in prop::sample::select(vec![Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::PATCH]),
        path in path(),
        query in "[a-zA-Z0-9%&=._+-]{0,32}",
        body in prop_oneof![json_text(), json_object(field_names()).prop_map(|o| serde_json::to_vec(&o).unwrap())],
    ) {
        let uri = if query.is_empty() { path.clone() } else { format!("{path}?{query}") };
        let request = Request::builder().method(method.clone()).uri(&uri).body(Body::from(body));
        // What `http` cannot even parse never reaches a server.
        let Ok(request) = request else { return Ok(()) };
        let (status, reply) = call(request);
        prop_assert!(
            [400, 404, 405, 503].contains(&status.as_u16()),
            "{} {} answered {}: {}", method, uri, status, reply
        );
        prop_assert!(reply["code"].is_i64() && reply["message"].is_string(), "{}", reply);
    }
}
