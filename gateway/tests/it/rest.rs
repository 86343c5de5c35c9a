//! The REST gateway against a test gRPC service (see `rest_support`):
//! path templates and body mappings, the JSON mapping both ways, every
//! error case with its status code and JSON body, metadata, deadlines,
//! server streaming, the OpenAPI document and the docs page, and HTTP/1.1,
//! HTTP/2 and gRPC on one port.

use http::Method;
use ordermesh_gateway::rest::{BodyMapping, RestConfig};
use serde_json::json;
use tonic::Code;

use crate::rest_support::{app, app_with, call, echoed};

#[tokio::test]
async fn multi_segment_variable_with_verb_and_whole_body() {
    let app = app();
    let answer = call(
        &app,
        Method::POST,
        "/v1/shelves/s1/books/b%201:echo",
        &[],
        Some(r#"{"small": 7, "name": "ignored: the path wins"}"#),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.content_type(), "application/json");
    assert_eq!(
        answer.json()["request"],
        echoed(json!({"name": "shelves/s1/books/b 1", "small": 7}))
    );
    // The same rule does not match other shapes.
    call(&app, Method::POST, "/v1/shelves/s1:echo", &[], Some("{}"))
        .await
        .assert_error(404, Code::NotFound);
}

#[tokio::test]
async fn additional_bindings_double_wildcard_and_body_field() {
    let app = app();
    let answer = call(&app, Method::GET, "/v1/echo/a/b/c.txt", &[], None).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json()["request"]["name"], "a/b/c.txt");

    // body: "payload", a nested path variable, query parameters for the rest.
    let answer = call(
        &app,
        Method::PUT,
        "/v1/echo/n1/heavy?nested.weight=12&small=3",
        &[],
        Some(r#"{"title": "Dune", "pages": 412}"#),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        answer.json()["request"],
        echoed(json!({
            "name": "n1",
            "small": 3,
            "nested": {"label": "heavy", "weight": "12", "color": "COLOR_UNSPECIFIED"},
            "payload": {"title": "Dune", "pages": "412"},
        }))
    );
}

#[tokio::test]
async fn response_body_sends_one_field() {
    let app = app();
    let answer = call(
        &app,
        Method::GET,
        "/v1/payloads/p1?payload.title=T&payload.pages=3",
        &[],
        None,
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json(), json!({"title": "T", "pages": "3"}));
    // Fields at their default are written; unset, the field is a message
    // at its defaults.
    let answer = call(
        &app,
        Method::GET,
        "/v1/payloads/p1?payload.title=T",
        &[],
        None,
    )
    .await;
    assert_eq!(answer.json(), json!({"title": "T", "pages": "0"}));
    let answer = call(&app, Method::GET, "/v1/payloads/p1", &[], None).await;
    assert_eq!(answer.json(), json!({"title": "", "pages": "0"}));
}

#[tokio::test]
async fn default_values_are_written_and_unset_messages_left_out() {
    let app = app();
    let answer = call(
        &app,
        Method::POST,
        "/v1/shelves/s/books/b:echo",
        &[],
        Some("{}"),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let body = answer.json();
    assert_eq!(
        body["request"],
        echoed(json!({"name": "shelves/s/books/b"}))
    );
    // Fields with presence (messages, wrappers, Timestamps) stay out when
    // unset; the empty map is written.
    let request = body["request"].as_object().unwrap();
    for unset in ["nested", "when", "maybe", "payload"] {
        assert!(!request.contains_key(unset), "{unset} in {body}");
    }
    assert!(body.get("payload").is_none(), "{body}");
    assert_eq!(body["metadata"], json!({}));
    // Unknown request fields are still refused.
    call(
        &app,
        Method::POST,
        "/v1/shelves/s/books/b:echo",
        &[],
        Some(r#"{"nope": 0}"#),
    )
    .await
    .assert_error(400, Code::InvalidArgument);
}

#[tokio::test]
async fn custom_method_and_verb() {
    let app = app();
    let purge = Method::from_bytes(b"PURGE").unwrap();
    let answer = call(&app, purge, "/v1/cache/anything:purge", &[], None).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json(), json!({}));
    let answer = call(&app, Method::GET, "/v1/cache/5", &[], None).await;
    assert_eq!(answer.status, 200, "{answer:?}");
}

#[tokio::test]
async fn proto3_json_both_ways() {
    let app = app();
    let body = json!({
        "big": 9007199254740993u64,          // a number above 2^53 is read exactly
        "ubig": "18446744073709551615",      // 64-bit as a string
        "small": "-5",                       // 32-bit as a string
        "flag": true,
        "ratio": 0.25,
        "color": "COLOR_RED",                // enum by name
        "colors": ["COLOR_BLUE", 1],         // ... or number
        "tags": ["x", "y"],
        "nested": {"label": "l", "weight": -3, "color": 2},
        "when": "2024-02-29T12:30:00.5+01:00",
        "maybe": 0,
        "blob": "aGk=",
        "counts": {"a": 1, "b": "2"},
        "list": [{"label": "one"}],
        "payload": {"title": "t"},
    });
    let answer = call(
        &app,
        Method::POST,
        "/v1/shelves/s/books/b:echo",
        &[],
        Some(&body.to_string()),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        answer.json()["request"],
        json!({
            "name": "shelves/s/books/b",
            "big": "9007199254740993",
            "ubig": "18446744073709551615",
            "small": -5,
            "flag": true,
            "ratio": 0.25,
            "color": "COLOR_RED",
            "colors": ["COLOR_BLUE", "COLOR_RED"],
            "tags": ["x", "y"],
            "nested": {"label": "l", "weight": "-3", "color": "COLOR_BLUE"},
            "when": "2024-02-29T11:30:00.500Z",
            "maybe": 0,
            "blob": "aGk=",
            "counts": {"a": "1", "b": "2"},
            "list": [{"label": "one", "weight": "0", "color": "COLOR_UNSPECIFIED"}],
            "payload": {"title": "t", "pages": "0"},
        })
    );
    // Snake-case names are accepted too; output stays camelCase.
    let answer = call(
        &app,
        Method::POST,
        "/v1/fail/3",
        &[],
        Some(r#"{"message": "m", "with_details": true}"#),
    )
    .await;
    assert_eq!(answer.json()["details"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn query_parameters_nested_repeated_and_both_names() {
    let app = app();
    let answer = call(
        &app,
        Method::GET,
        "/v1/echo/q?big=5&ubig=6&small=-1&flag=true&ratio=1.5&color=COLOR_BLUE\
         &tags=a&tags=b%20c&colors=COLOR_RED&colors=2&nested.label=n&nested.weight=9\
         &nested.color=1&when=2024-01-01T00:00:00Z&maybe=4&blob=aGk%3D",
        &[],
        None,
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        answer.json()["request"],
        json!({
            "name": "q",
            "big": "5",
            "ubig": "6",
            "small": -1,
            "flag": true,
            "ratio": 1.5,
            "color": "COLOR_BLUE",
            "tags": ["a", "b c"],
            "colors": ["COLOR_RED", "COLOR_BLUE"],
            "nested": {"label": "n", "weight": "9", "color": "COLOR_RED"},
            "when": "2024-01-01T00:00:00Z",
            "maybe": 4,
            "blob": "aGk=",
            "counts": {},
            "list": [],
        })
    );
    // camelCase and snake_case parameter names (Count's fail_code).
    for query in ["failCode=5", "fail_code=5"] {
        let answer = call(
            &app,
            Method::GET,
            &format!("/v1/count/0?{query}"),
            &[],
            None,
        )
        .await;
        answer.assert_error(404, Code::NotFound);
    }
}

#[tokio::test]
async fn every_grpc_code_maps_to_its_http_status_with_a_status_body() {
    let app = app();
    let table = [
        (Code::Cancelled, 499),
        (Code::Unknown, 500),
        (Code::InvalidArgument, 400),
        (Code::DeadlineExceeded, 504),
        (Code::NotFound, 404),
        (Code::AlreadyExists, 409),
        (Code::PermissionDenied, 403),
        (Code::ResourceExhausted, 429),
        (Code::FailedPrecondition, 400),
        (Code::Aborted, 409),
        (Code::OutOfRange, 400),
        (Code::Unimplemented, 501),
        (Code::Internal, 500),
        (Code::Unavailable, 503),
        (Code::DataLoss, 500),
        (Code::Unauthenticated, 401),
    ];
    for (code, http) in table {
        let answer = call(
            &app,
            Method::POST,
            &format!("/v1/fail/{}", code as i32),
            &[],
            Some(r#"{"message": "it went wrong"}"#),
        )
        .await;
        let body = answer.assert_error(http, code);
        assert_eq!(
            body,
            json!({"code": code as i32, "message": "it went wrong", "details": []}),
            "{code:?}"
        );
    }
}

#[tokio::test]
async fn error_details_are_decoded_with_their_type_urls() {
    let app = app();
    let answer = call(
        &app,
        Method::POST,
        "/v1/fail/3",
        &[],
        Some(r#"{"message": "too short", "withDetails": true}"#),
    )
    .await;
    let body = answer.assert_error(400, Code::InvalidArgument);
    assert_eq!(
        body,
        json!({
            "code": 3,
            "message": "invalid title: too short",
            "details": [{
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": "title", "description": "too short"}],
            }],
        })
    );
    // Keys in google.rpc.Status order.
    assert!(
        answer.text.starts_with(r#"{"code":3,"message":"#),
        "{}",
        answer.text
    );
}

#[tokio::test]
async fn malformed_json_is_a_400() {
    let app = app();
    for bad in [r#"{"small": 1,"#, "not json", r#"{"small": 1} trailing"#] {
        let answer = call(
            &app,
            Method::POST,
            "/v1/shelves/s/books/b:echo",
            &[],
            Some(bad),
        )
        .await;
        let body = answer.assert_error(400, Code::InvalidArgument);
        let message = body["message"].as_str().unwrap();
        assert!(
            message.starts_with("malformed JSON in the request body"),
            "{message}"
        );
    }
    // A body that is JSON but not an object.
    let answer = call(
        &app,
        Method::POST,
        "/v1/shelves/s/books/b:echo",
        &[],
        Some("[1]"),
    )
    .await;
    let body = answer.assert_error(400, Code::InvalidArgument);
    assert_eq!(body["message"], "the request body must be a JSON object");
}

/// The field a 400 names, from its `google.rpc.BadRequest` detail.
fn violated_field(body: &serde_json::Value) -> &str {
    assert_eq!(
        body["details"][0]["@type"], "type.googleapis.com/google.rpc.BadRequest",
        "{body}"
    );
    body["details"][0]["fieldViolations"][0]["field"]
        .as_str()
        .unwrap()
}

#[tokio::test]
async fn unknown_fields_are_a_400_naming_the_field() {
    let app = app();
    for (body, field) in [
        (r#"{"colour": "red"}"#, "colour"),
        (r#"{"nested": {"label": "x", "size": 1}}"#, "nested.size"),
        (r#"{"list": [{}, {"weigth": 1}]}"#, "list[1].weigth"),
        (r#"{"maybe": 1, "flag": false, "smallish": 2}"#, "smallish"),
    ] {
        let answer = call(
            &app,
            Method::POST,
            "/v1/shelves/s/books/b:echo",
            &[],
            Some(body),
        )
        .await;
        let json = answer.assert_error(400, Code::InvalidArgument);
        assert_eq!(violated_field(&json), field, "{body}");
        assert!(json["message"].as_str().unwrap().contains(field), "{json}");
    }
    // The same field under both its names.
    let answer = call(
        &app,
        Method::POST,
        "/v1/fail/3",
        &[],
        Some(r#"{"with_details": true, "withDetails": false}"#),
    )
    .await;
    let json = answer.assert_error(400, Code::InvalidArgument);
    assert_eq!(violated_field(&json), "withDetails");
    assert!(
        json["message"]
            .as_str()
            .unwrap()
            .contains("both withDetails and with_details")
    );
    let answer = call(
        &app,
        Method::GET,
        "/v1/count/1?fail_code=1&failCode=2",
        &[],
        None,
    )
    .await;
    let json = answer.assert_error(400, Code::InvalidArgument);
    assert_eq!(violated_field(&json), "failCode");
    // Unknown query parameters, and ones the path already sets.
    for (query, field) in [
        ("colour=red", "colour"),
        ("nested.size=1", "nested.size"),
        ("name=x", "name"),
        ("payload=x", "payload"),
        ("list.label=x", "list.label"),
        ("counts=1", "counts"),
    ] {
        let answer = call(&app, Method::GET, &format!("/v1/echo/e?{query}"), &[], None).await;
        let json = answer.assert_error(400, Code::InvalidArgument);
        assert_eq!(violated_field(&json), field, "{query}");
    }
    // With body "*" every field is in the body: no query at all.
    let answer = call(&app, Method::POST, "/v1/fail/1?message=x", &[], Some("{}")).await;
    assert_eq!(
        violated_field(&answer.assert_error(400, Code::InvalidArgument)),
        "message"
    );
}

#[tokio::test]
async fn wrong_types_are_a_400_naming_the_field() {
    let app = app();
    for (body, field) in [
        (r#"{"small": "many"}"#, "small"),
        (r#"{"small": 1.5}"#, "small"),
        (r#"{"small": 3000000000}"#, "small"),
        (r#"{"big": "12x"}"#, "big"),
        (r#"{"flag": "yes"}"#, "flag"),
        (r#"{"color": "COLOR_GREEN"}"#, "color"),
        (r#"{"tags": "a"}"#, "tags"),
        (r#"{"tags": [1]}"#, "tags[0]"),
        (r#"{"nested": {"weight": true}}"#, "nested.weight"),
        (r#"{"nested": 5}"#, "nested"),
        (r#"{"when": "yesterday"}"#, "when"),
        (r#"{"blob": "***"}"#, "blob"),
        (r#"{"counts": {"a": "x"}}"#, "counts.a"),
        (r#"{"list": [{"color": "PURPLE"}]}"#, "list[0].color"),
    ] {
        let answer = call(
            &app,
            Method::POST,
            "/v1/shelves/s/books/b:echo",
            &[],
            Some(body),
        )
        .await;
        let json = answer.assert_error(400, Code::InvalidArgument);
        assert_eq!(violated_field(&json), field, "{body}: {json}");
    }
    // Query parameters and path variables are named as the client wrote them.
    for (uri, field) in [
        ("/v1/echo/e?small=lots", "small"),
        ("/v1/echo/e?flag=maybe", "flag"),
        ("/v1/echo/e?nested.weight=heavy", "nested.weight"),
        ("/v1/echo/e?colors=RED", "colors[0]"),
        ("/v1/count/many", "count"),
        ("/v1/fail/x", "code"),
    ] {
        let body = if uri.starts_with("/v1/fail") {
            Some("{}")
        } else {
            None
        };
        let method = if body.is_some() {
            Method::POST
        } else {
            Method::GET
        };
        let answer = call(&app, method, uri, &[], body).await;
        let json = answer.assert_error(400, Code::InvalidArgument);
        assert_eq!(violated_field(&json), field, "{uri}: {json}");
    }
}

#[tokio::test]
async fn unknown_paths_are_a_404_and_wrong_methods_a_405() {
    let app = app();
    for (method, uri) in [
        (Method::GET, "/v2/echo/x"),
        (Method::GET, "/"),
        (Method::GET, "/v1/payloads"),
        (Method::GET, "/v1/payloads/a/b"),
        (Method::POST, "/v1/upload"), // client streaming: not exposed
        (Method::GET, "/v1/cache/x/y:flush"),
    ] {
        let answer = call(&app, method.clone(), uri, &[], None).await;
        let body = answer.assert_error(404, Code::NotFound);
        assert_eq!(body["message"], format!("no REST route for {method} {uri}"));
    }
    for (method, uri, allow) in [
        (Method::DELETE, "/v1/payloads/p", "GET"),
        (Method::GET, "/v1/fail/3", "POST"),
        (Method::POST, "/v1/echo/x", "GET"),
        (Method::POST, "/v1/echo/x/y", "GET, PUT"),
        (Method::POST, "/openapi.json", "GET"),
        (Method::DELETE, "/docs", "GET"),
        // A `:verb` template owns its paths: not GET /v1/cache/{millis}.
        (Method::GET, "/v1/cache/5:purge", "PURGE"),
    ] {
        let answer = call(&app, method.clone(), uri, &[], Some("{}")).await;
        let body = answer.assert_error(405, Code::Unimplemented);
        assert_eq!(answer.headers["allow"], allow, "{method} {uri}");
        assert!(body["message"].as_str().unwrap().contains(uri));
    }
}

#[tokio::test]
async fn bodies_over_the_limit_are_a_413() {
    let (app, _) = app_with(RestConfig {
        max_body_bytes: 1024,
        ..RestConfig::default()
    });
    let big = format!(r#"{{"name": "{}"}}"#, "x".repeat(2000));
    // Without a length (read up to the limit) and with one (refused at once).
    let answer = call(
        &app,
        Method::POST,
        "/v1/shelves/s/books/b:echo",
        &[],
        Some(&big),
    )
    .await;
    answer.assert_error(413, Code::ResourceExhausted);
    let length = big.len().to_string();
    let answer = call(
        &app,
        Method::POST,
        "/v1/shelves/s/books/b:echo",
        &[("content-length", &length)],
        Some(&big),
    )
    .await;
    let body = answer.assert_error(413, Code::ResourceExhausted);
    assert_eq!(body["message"], "request body larger than 1024 bytes");
    // Just under the limit is fine.
    let fits = format!(r#"{{"tags": ["{}"]}}"#, "x".repeat(1000));
    let answer = call(
        &app,
        Method::POST,
        "/v1/shelves/s/books/b:echo",
        &[],
        Some(&fits),
    )
    .await;
    assert_eq!(answer.status, 200);
    // The default is 4 MiB.
    assert_eq!(RestConfig::default().max_body_bytes, 4 * 1024 * 1024);
}

#[tokio::test]
async fn headers_become_metadata_and_metadata_headers() {
    let app = app();
    let answer = call(
        &app,
        Method::GET,
        "/v1/echo/m",
        &[
            ("authorization", "Bearer token-1"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("tracestate", "vendor=1"),
            ("x-request-id", "req-42"),
            ("grpc-metadata-tenant", "acme"),
            ("cookie", "not forwarded"),
            ("grpc-timeout", "10S"),
        ],
        None,
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let seen = &answer.json()["metadata"];
    assert_eq!(seen["authorization"], "Bearer token-1");
    assert_eq!(
        seen["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert_eq!(seen["tracestate"], "vendor=1");
    assert_eq!(seen["x-request-id"], "req-42");
    assert_eq!(seen["tenant"], "acme");
    // The deadline travels as grpc-timeout (what is left of it).
    let timeout = seen["grpc-timeout"].as_str().unwrap();
    let millis: u64 = timeout.strip_suffix('m').unwrap().parse().unwrap();
    assert!((9_000..=10_000).contains(&millis), "{timeout}");
    assert!(seen.get("cookie").is_none());
    // Response metadata comes back as headers; gRPC's own do not.
    assert_eq!(answer.headers["x-echo"], "echoed");
    assert!(!answer.headers.contains_key("grpc-status"));
    assert!(!answer.headers.contains_key("grpc-message"));
}

#[tokio::test]
async fn deadlines_from_the_grpc_timeout_header() {
    let app = app();
    let started = std::time::Instant::now();
    let answer = call(
        &app,
        Method::GET,
        "/v1/sleep?millis=5000",
        &[("grpc-timeout", "100m")],
        None,
    )
    .await;
    let body = answer.assert_error(504, Code::DeadlineExceeded);
    assert_eq!(body["message"], "deadline exceeded");
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    // Enough time: fine.
    let answer = call(
        &app,
        Method::GET,
        "/v1/sleep?millis=10",
        &[("grpc-timeout", "5S")],
        None,
    )
    .await;
    assert_eq!(answer.status, 200);
    // A malformed deadline.
    let answer = call(
        &app,
        Method::GET,
        "/v1/sleep",
        &[("grpc-timeout", "soon")],
        None,
    )
    .await;
    let body = answer.assert_error(400, Code::InvalidArgument);
    assert_eq!(violated_field(&body), "grpc-timeout");
}

#[tokio::test]
async fn server_streaming_is_newline_delimited_json() {
    let app = app();
    let answer = call(&app, Method::GET, "/v1/count/3", &[], None).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.content_type(), "application/x-ndjson");
    assert_eq!(
        answer.text,
        "{\"result\":{\"n\":1}}\n{\"result\":{\"n\":2}}\n{\"result\":{\"n\":3}}\n"
    );
    // A failure mid-stream is the last line, a google.rpc.Status.
    let answer = call(&app, Method::GET, "/v1/count/2?fail_code=14", &[], None).await;
    assert_eq!(answer.status, 200);
    let lines: Vec<serde_json::Value> = answer
        .text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines,
        [
            json!({"result": {"n": 1}}),
            json!({"result": {"n": 2}}),
            json!({"error": {"code": 14, "message": "failed mid-stream", "details": []}}),
        ]
    );
    // A failure before the first message is an ordinary error answer.
    let answer = call(&app, Method::GET, "/v1/count/0?fail_code=7", &[], None).await;
    answer.assert_error(403, Code::PermissionDenied);
    // An empty stream is an empty 200.
    let answer = call(&app, Method::GET, "/v1/count/0", &[], None).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text, "");
}

#[tokio::test]
async fn server_streaming_answers_server_sent_events_when_asked() {
    let app = app();
    let sse = [("accept", "text/event-stream")];
    let answer = call(&app, Method::GET, "/v1/count/3", &sse, None).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.content_type(), "text/event-stream");
    assert_eq!(answer.headers["cache-control"], "no-cache");
    assert_eq!(answer.headers["vary"], "accept");
    assert_eq!(
        answer.text,
        "data: {\"n\":1}\n\ndata: {\"n\":2}\n\ndata: {\"n\":3}\n\n"
    );
    // A failure mid-stream is a last event named `error` whose data is
    // the google.rpc.Status the gateway answers errors with.
    let answer = call(&app, Method::GET, "/v1/count/1?fail_code=14", &sse, None).await;
    assert_eq!(answer.status, 200);
    let events: Vec<&str> = answer.text.split_terminator("\n\n").collect();
    assert_eq!(events.len(), 2, "{answer:?}");
    assert_eq!(events[0], "data: {\"n\":1}");
    let data = events[1]
        .strip_prefix("event: error\ndata: ")
        .unwrap_or_else(|| panic!("not an error event: {answer:?}"));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(data).unwrap(),
        json!({"code": 14, "message": "failed mid-stream", "details": []})
    );
    // A failure before the first message keeps its HTTP status (EventSource
    // then stops instead of reconnecting).
    let answer = call(&app, Method::GET, "/v1/count/0?fail_code=5", &sse, None).await;
    answer.assert_error(404, Code::NotFound);
    // An empty stream: an empty event stream.
    let answer = call(&app, Method::GET, "/v1/count/0", &sse, None).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.content_type(), "text/event-stream");
    assert_eq!(answer.text, "");
    // NDJSON stays the default: no Accept, wildcards, or NDJSON preferred.
    for accept in [
        "*/*",
        "application/json",
        "text/event-stream;q=0.5, application/x-ndjson",
    ] {
        let answer = call(
            &app,
            Method::GET,
            "/v1/count/1",
            &[("accept", accept)],
            None,
        )
        .await;
        assert_eq!(answer.content_type(), "application/x-ndjson", "{accept}");
        assert_eq!(answer.text, "{\"result\":{\"n\":1}}\n", "{accept}");
    }
    // A unary rule ignores the wish.
    let answer = call(&app, Method::GET, "/v1/cache/1", &sse, None).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.content_type(), "application/json");
}

#[tokio::test]
async fn openapi_document_covers_every_binding() {
    let (app, gateway) = app_with(RestConfig::default());
    let answer = call(&app, Method::GET, "/openapi.json", &[], None).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.content_type(), "application/json");
    let doc = answer.json();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc, gateway.openapi());

    // One operation per binding; client streaming and unannotated left out.
    let bindings = gateway.bindings();
    assert_eq!(
        bindings.len(),
        9,
        "Echo x3, GetPayload, Fail, Sleep, Count, Purge x2"
    );
    let paths = doc["paths"].as_object().unwrap();
    let operations: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(operations, bindings.len());
    for b in bindings {
        let op = &doc["paths"][b.template.openapi_path()][b.http_method.as_str().to_lowercase()];
        assert!(op.is_object(), "{} {}", b.http_method, b.template);
        assert_eq!(op["tags"], json!(["TestService"]));
        assert_eq!(
            op["responses"]["default"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/google.rpc.Status"
        );
        assert!(matches!(b.body, BodyMapping::None) || op["requestBody"].is_object());
    }
    assert!(!paths.contains_key("/v1/upload"));

    let echo = &doc["paths"]["/v1/{name}:echo"]["post"];
    assert_eq!(echo["operationId"], "TestService_Echo");
    assert_eq!(
        echo["summary"],
        "Echoes the request and the metadata it arrived with."
    );
    assert_eq!(
        echo["parameters"][0],
        json!({
            "name": "name", "in": "path", "required": true,
            "schema": {"type": "string", "pattern": "^shelves/[^/]+/books/[^/]+$"},
        })
    );
    // The body of a "*" rule leaves out the path fields.
    let body = &echo["requestBody"]["content"]["application/json"]["schema"];
    assert!(body["properties"].get("name").is_none());
    assert!(body["properties"]["nested"]["$ref"].is_string());

    // Query parameters: the remaining fields, nested with dots, repeated.
    let get = &doc["paths"]["/v1/echo/{name}"]["get"];
    assert_eq!(get["operationId"], "TestService_Echo_1");
    let names: Vec<&str> = get["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for expected in [
        "name",
        "big",
        "tags",
        "nested.label",
        "nested.weight",
        "when",
        "maybe",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    for absent in ["list", "counts", "payload", "nested"] {
        assert!(!names.contains(&absent), "{absent} in {names:?}");
    }
    let put = &doc["paths"]["/v1/echo/{name}/{nested.label}"]["put"];
    assert_eq!(
        put["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ordermesh.resttest.v1.Payload"
    );

    // Schemas from messages, with the proto comments and JSON forms.
    let schemas = &doc["components"]["schemas"];
    let response = &schemas["ordermesh.resttest.v1.EchoResponse"];
    assert_eq!(
        response["properties"]["request"]["description"],
        "The request as the service decoded it."
    );
    let request = &schemas["ordermesh.resttest.v1.EchoRequest"];
    assert_eq!(
        request["description"],
        "One field of every kind the JSON mapping treats differently."
    );
    assert_eq!(request["properties"]["big"]["type"], "string");
    assert_eq!(request["properties"]["when"]["format"], "date-time");
    assert_eq!(
        request["properties"]["maybe"]["type"],
        json!(["integer", "null"])
    );
    assert_eq!(
        request["properties"]["counts"]["additionalProperties"]["type"],
        "string"
    );
    let color = &schemas["ordermesh.resttest.v1.Color"];
    assert_eq!(
        color["enum"],
        json!(["COLOR_UNSPECIFIED", "COLOR_RED", "COLOR_BLUE"])
    );
    assert!(
        color["description"]
            .as_str()
            .unwrap()
            .contains("`COLOR_RED`: Like a tomato.")
    );

    // response_body and streaming responses.
    let payload = &doc["paths"]["/v1/payloads/{name}"]["get"]["responses"]["200"];
    assert_eq!(
        payload["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ordermesh.resttest.v1.Payload"
    );
    let count = &doc["paths"]["/v1/count/{count}"]["get"]["responses"]["200"];
    assert!(count["content"]["application/x-ndjson"]["schema"]["properties"]["result"].is_object());
    assert_eq!(
        count["content"]["text/event-stream"]["schema"]["type"],
        "string"
    );
    // Unary operations answer JSON only.
    assert!(payload["content"].get("text/event-stream").is_none());
    assert_eq!(doc["tags"][0]["name"], "TestService");
    assert_eq!(doc["tags"][0]["description"], "Answers what it was sent.");
}

#[tokio::test]
async fn docs_page_and_assets_are_bundled() {
    let app = app();
    let page = call(&app, Method::GET, "/docs", &[], None).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.content_type(), "text/html; charset=utf-8");
    assert!(page.text.contains("/openapi.json"));
    // The online validator (the page's one outside address) is off.
    assert!(page.text.contains("validatorUrl: null"));
    for asset in [
        "/docs/swagger-ui-bundle.js",
        "/docs/swagger-ui.css",
        "/docs/LICENSE",
    ] {
        assert!(page.text.contains(asset) || asset.ends_with("LICENSE"));
        let answer = call(&app, Method::GET, asset, &[], None).await;
        assert_eq!(answer.status, 200, "{asset}");
        assert!(answer.text.len() > 1000, "{asset}");
    }
    call(&app, Method::GET, "/docs/nope.js", &[], None)
        .await
        .assert_error(404, Code::NotFound);
}

#[tokio::test]
async fn grpc_calls_for_unknown_services_stay_grpc() {
    let app = app();
    let answer = call(
        &app,
        Method::POST,
        "/acme.Nope/Call",
        &[("content-type", "application/grpc")],
        None,
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.headers["grpc-status"], "12");
}
