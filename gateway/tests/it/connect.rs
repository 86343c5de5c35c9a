//! Connect (`ordermesh_gateway::connect`) against the test service: unary calls in
//! proto and JSON, the error JSON and its HTTP statuses, server streams
//! and their end-of-stream message, deadlines and metadata; then the
//! runtime's `serve_with` over the network: gRPC-Web (binary and text)
//! beside REST on HTTP/1.1, and CORS.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use base64::Engine as _;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use ordermesh_gateway::connect::Connect;
use ordermesh_gateway::cors::CorsConfig;
use prost::Message as _;
use prost_reflect::DynamicMessage;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::rest_support::{SERVICE, grpc_router, pool};

const MAX_BODY: usize = 64 * 1024;

fn app() -> axum::Router {
    let pool = pool();
    let grpc = grpc_router(&pool);
    Connect::new(pool, &[SERVICE.to_owned()], grpc.clone(), MAX_BODY).wrap(grpc)
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    fn content_type(&self) -> &str {
        self.headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// A unary Connect error: the HTTP status, JSON, and the code name.
    fn assert_error(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status.as_u16(), status, "{:?}", self.body);
        assert_eq!(self.content_type(), "application/json");
        let body = self.json();
        assert_eq!(body["code"], code, "{body}");
        body
    }

    /// The envelopes of a streamed answer: (flags, payload).
    fn envelopes(&self) -> Vec<(u8, Bytes)> {
        let mut buf = self.body.clone();
        let mut out = Vec::new();
        while buf.has_remaining() {
            assert!(buf.len() >= 5, "a truncated envelope: {buf:?}");
            let flags = buf.get_u8();
            let len = buf.get_u32() as usize;
            out.push((flags, buf.split_to(len)));
        }
        out
    }
}

async fn post(app: &axum::Router, path: &str, headers: &[(&str, &str)], body: Bytes) -> Answer {
    let mut request = Request::builder().method(Method::POST).uri(path);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request.body(Body::from(body)).expect("a valid request");
    let response = app.clone().oneshot(request).await.expect("infallible");
    let (parts, body) = response.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.expect("read the body").to_bytes(),
    }
}

fn method_path(method: &str) -> String {
    format!("/{SERVICE}/{method}")
}

async fn json_call(app: &axum::Router, method: &str, body: Value) -> Answer {
    post(
        app,
        &method_path(method),
        &[
            ("content-type", "application/json"),
            ("connect-protocol-version", "1"),
        ],
        Bytes::from(body.to_string()),
    )
    .await
}

fn envelope(flags: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(flags);
    out.put_u32(payload.len() as u32);
    out.put_slice(payload);
    out.freeze()
}

#[tokio::test]
async fn unary_json_and_proto() {
    let app = app();
    let answer = post(
        &app,
        &method_path("Echo"),
        &[
            ("content-type", "application/json; charset=utf-8"),
            ("connect-protocol-version", "1"),
            ("authorization", "Bearer t"),
            ("tenant", "acme"),
            ("connect-timeout-ms", "5000"),
        ],
        Bytes::from(r#"{"name": "n", "big": "9007199254740993", "color": "COLOR_RED"}"#),
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.content_type(), "application/json");
    assert_eq!(answer.headers["x-echo"], "echoed", "response metadata");
    let body = answer.json();
    assert_eq!(body["request"]["name"], "n");
    assert_eq!(body["request"]["big"], "9007199254740993");
    assert_eq!(body["request"]["color"], "COLOR_RED");
    // Metadata reaches the service; the timeout arrives as grpc-timeout.
    assert_eq!(body["metadata"]["authorization"], "Bearer t");
    assert_eq!(body["metadata"]["tenant"], "acme");
    assert!(body["metadata"]["grpc-timeout"].is_string(), "{body}");

    let pool = pool();
    let input = pool
        .get_message_by_name("ordermesh.resttest.v1.EchoRequest")
        .unwrap();
    let output = pool
        .get_message_by_name("ordermesh.resttest.v1.EchoResponse")
        .unwrap();
    let mut request = DynamicMessage::new(input);
    request.set_field_by_name("name", prost_reflect::Value::String("p".into()));
    let answer = post(
        &app,
        &method_path("Echo"),
        &[("content-type", "application/proto")],
        Bytes::from(request.encode_to_vec()),
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.content_type(), "application/proto");
    let response = DynamicMessage::decode(output, answer.body.clone()).unwrap();
    let echoed = response.get_field_by_name("request").unwrap();
    let echoed = echoed.as_message().unwrap();
    assert_eq!(
        echoed.get_field_by_name("name").unwrap().as_str(),
        Some("p")
    );
}

#[tokio::test]
async fn errors_are_connect_json_with_the_protocols_status() {
    let app = app();
    for (code, status, name) in [
        (5, 404, "not_found"),
        (16, 401, "unauthenticated"),
        (8, 429, "resource_exhausted"),
        (9, 400, "failed_precondition"),
        (12, 501, "unimplemented"),
        (14, 503, "unavailable"),
        (1, 499, "canceled"),
    ] {
        let answer = json_call(&app, "Fail", json!({"code": code, "message": "nope"})).await;
        let body = answer.assert_error(status, name);
        assert_eq!(body["message"], "nope");
        assert!(body.get("details").is_none(), "{body}");
    }

    let answer = json_call(
        &app,
        "Fail",
        json!({"code": 3, "message": "empty", "withDetails": true}),
    )
    .await;
    let body = answer.assert_error(400, "invalid_argument");
    let detail = &body["details"][0];
    assert_eq!(detail["type"], "google.rpc.BadRequest", "{body}");
    let value = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(detail["value"].as_str().unwrap())
        .expect("unpadded base64");
    assert!(!value.is_empty());
    assert_eq!(detail["debug"]["fieldViolations"][0]["field"], "title");

    // Requests the gateway itself refuses.
    json_call(&app, "Echo", json!({"nope": 1}))
        .await
        .assert_error(400, "invalid_argument");
    post(
        &app,
        &method_path("Echo"),
        &[("content-type", "application/json")],
        Bytes::from_static(b"{not json"),
    )
    .await
    .assert_error(400, "invalid_argument");
    post(
        &app,
        &method_path("Echo"),
        &[("content-type", "application/proto")],
        Bytes::from_static(b"\xff\xff\xff"),
    )
    .await
    .assert_error(400, "invalid_argument");
    json_call(&app, "NoSuchMethod", json!({}))
        .await
        .assert_error(501, "unimplemented");
    post(
        &app,
        &method_path("Echo"),
        &[
            ("content-type", "application/json"),
            ("connect-protocol-version", "2"),
        ],
        Bytes::from_static(b"{}"),
    )
    .await
    .assert_error(400, "invalid_argument");
    post(
        &app,
        &method_path("Echo"),
        &[
            ("content-type", "application/json"),
            ("content-encoding", "br"),
        ],
        Bytes::from_static(b"{}"),
    )
    .await
    .assert_error(501, "unimplemented");
    post(
        &app,
        &method_path("Echo"),
        &[("content-type", "application/json")],
        Bytes::from(vec![b' '; MAX_BODY + 1]),
    )
    .await
    .assert_error(429, "resource_exhausted");
    // A unary content type on a streaming method, and the reverse.
    let answer = json_call(&app, "Count", json!({"count": 1})).await;
    assert_eq!(answer.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(
        answer.headers["accept-post"]
            .to_str()
            .unwrap()
            .contains("connect+json")
    );
    let answer = post(
        &app,
        &method_path("Echo"),
        &[("content-type", "application/connect+json")],
        envelope(0, b"{}"),
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Client streams are gRPC only.
    json_call(&app, "Upload", json!({}))
        .await
        .assert_error(501, "unimplemented");
}

#[tokio::test]
async fn deadlines_are_deadline_exceeded() {
    let app = app();
    let answer = post(
        &app,
        &method_path("Sleep"),
        &[
            ("content-type", "application/json"),
            ("connect-timeout-ms", "50"),
        ],
        Bytes::from(json!({"millis": 30_000}).to_string()),
    )
    .await;
    answer.assert_error(504, "deadline_exceeded");
    post(
        &app,
        &method_path("Sleep"),
        &[
            ("content-type", "application/json"),
            ("connect-timeout-ms", "soon"),
        ],
        Bytes::from_static(b"{}"),
    )
    .await
    .assert_error(400, "invalid_argument");
}

async fn stream_call(app: &axum::Router, codec: &str, payload: &[u8]) -> Answer {
    post(
        app,
        &method_path("Count"),
        &[
            ("content-type", &format!("application/connect+{codec}")),
            ("connect-protocol-version", "1"),
        ],
        envelope(0, payload),
    )
    .await
}

#[tokio::test]
async fn server_streams_end_with_an_end_of_stream_message() {
    let app = app();
    // JSON: three messages, then an end message without an error.
    let answer = stream_call(&app, "json", br#"{"count": 3}"#).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.content_type(), "application/connect+json");
    let frames = answer.envelopes();
    assert_eq!(frames.len(), 4, "{frames:?}");
    for (i, (flags, payload)) in frames[..3].iter().enumerate() {
        assert_eq!(*flags, 0);
        let message: Value = serde_json::from_slice(payload).unwrap();
        assert_eq!(message, json!({"n": i + 1}));
    }
    let (flags, end) = &frames[3];
    assert_eq!(*flags, 0x02, "end-of-stream flag");
    let end: Value = serde_json::from_slice(end).unwrap();
    assert!(end.get("error").is_none(), "{end}");

    // Failing mid-stream: the messages, then the error in the end message.
    let answer = stream_call(&app, "json", br#"{"count": 2, "failCode": 10}"#).await;
    assert_eq!(answer.status, 200);
    let frames = answer.envelopes();
    assert_eq!(frames.len(), 3, "{frames:?}");
    let end: Value = serde_json::from_slice(&frames[2].1).unwrap();
    assert_eq!(frames[2].0, 0x02);
    assert_eq!(end["error"]["code"], "aborted", "{end}");
    assert_eq!(end["error"]["message"], "failed mid-stream");

    // Failing before the first message: HTTP 200 and only the end message.
    let answer = stream_call(&app, "json", br#"{"failCode": 7}"#).await;
    assert_eq!(answer.status, 200);
    let frames = answer.envelopes();
    assert_eq!(frames.len(), 1, "{frames:?}");
    let end: Value = serde_json::from_slice(&frames[0].1).unwrap();
    assert_eq!(end["error"]["code"], "permission_denied", "{end}");

    // Proto: binary messages, the end message is JSON all the same.
    let pool = pool();
    let input = pool
        .get_message_by_name("ordermesh.resttest.v1.CountRequest")
        .unwrap();
    let output = pool
        .get_message_by_name("ordermesh.resttest.v1.CountResponse")
        .unwrap();
    let mut request = DynamicMessage::new(input);
    request.set_field_by_name("count", prost_reflect::Value::I32(2));
    let answer = stream_call(&app, "proto", &request.encode_to_vec()).await;
    assert_eq!(answer.content_type(), "application/connect+proto");
    let frames = answer.envelopes();
    assert_eq!(frames.len(), 3, "{frames:?}");
    let second = DynamicMessage::decode(output, frames[1].1.clone()).unwrap();
    assert_eq!(second.get_field_by_name("n").unwrap().as_i32(), Some(2));
    assert_eq!(frames[2].0, 0x02);

    // A body that is not one envelope is refused in the end message.
    let answer = post(
        &app,
        &method_path("Count"),
        &[("content-type", "application/connect+json")],
        Bytes::from_static(b"{}"),
    )
    .await;
    assert_eq!(answer.status, 200);
    let frames = answer.envelopes();
    let end: Value = serde_json::from_slice(&frames[0].1).unwrap();
    assert_eq!(end["error"]["code"], "invalid_argument", "{end}");
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// The runtime's `serve_with` (`ordermesh_runtime::grpc`) on a free port, serving the test
/// service, with CORS for one origin.
async fn serve(origin: &str) -> (SocketAddr, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let pool = pool();
    let routes = tonic::service::Routes::from(grpc_router(&pool));
    let shutdown = CancellationToken::new();
    let cors = CorsConfig {
        allowed_origins: vec![origin.parse().unwrap()],
    };
    tokio::spawn(ordermesh_runtime::grpc::serve_with(
        listener,
        routes,
        None,
        cors,
        shutdown.clone(),
    ));
    (addr, shutdown)
}

async fn send(client: &HttpClient, request: Request<Full<Bytes>>) -> Answer {
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .expect("answered in time")
        .expect("a response");
    let (parts, body) = response.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.expect("read the body").to_bytes(),
    }
}

/// gRPC frames of a gRPC-Web body: (flags, payload); flag 0x80 marks the
/// trailers frame.
fn grpc_frames(mut body: Bytes) -> Vec<(u8, Bytes)> {
    let mut out = Vec::new();
    while body.len() >= 5 {
        let flags = body.get_u8();
        let len = body.get_u32() as usize;
        out.push((flags, body.split_to(len)));
    }
    out
}

#[tokio::test]
async fn grpc_web_and_rest_share_http1_with_cors() {
    let origin = "http://app.test:8080";
    let (addr, shutdown) = serve(origin).await;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();

    let pool = pool();
    let mut echo = DynamicMessage::new(
        pool.get_message_by_name("ordermesh.resttest.v1.EchoRequest")
            .unwrap(),
    );
    echo.set_field_by_name("name", prost_reflect::Value::String("web".into()));
    let frame = {
        let message = echo.encode_to_vec();
        let mut f = BytesMut::new();
        f.put_u8(0);
        f.put_u32(message.len() as u32);
        f.put_slice(&message);
        f.freeze()
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    for (content_type, body) in [
        ("application/grpc-web+proto", frame.clone()),
        ("application/grpc-web-text", Bytes::from(b64.encode(&frame))),
    ] {
        let request = Request::post(format!("http://{addr}/{SERVICE}/Echo"))
            .header("content-type", content_type)
            // tonic-web answers in text when asked to, as grpc-web clients do.
            .header("accept", content_type)
            .header("x-grpc-web", "1")
            .header("origin", origin)
            .body(Full::new(body))
            .unwrap();
        let answer = send(&client, request).await;
        assert_eq!(answer.status, 200, "{content_type}: {:?}", answer.body);
        assert_eq!(answer.headers["access-control-allow-origin"], origin);
        assert!(
            answer.content_type().starts_with(content_type),
            "{content_type}: {:?}",
            answer.headers
        );
        let raw = if content_type.ends_with("-text") {
            // Chunks are encoded one by one (padding may sit in between),
            // so decode group by group of four characters.
            let mut bytes = Vec::new();
            for group in answer.body.chunks(4) {
                bytes.extend(b64.decode(group).expect("base64 frames"));
            }
            Bytes::from(bytes)
        } else {
            answer.body.clone()
        };
        let frames = grpc_frames(raw);
        assert_eq!(frames.len(), 2, "{content_type}: message and trailers");
        assert_eq!(frames[1].0 & 0x80, 0x80, "trailers frame");
        let trailers = String::from_utf8_lossy(&frames[1].1).to_lowercase();
        assert!(trailers.contains("grpc-status:0"), "{trailers}");
    }

    // REST's pages still answer HTTP/1.1 (tonic-web alone would say 400).
    let request = Request::get(format!("http://{addr}/openapi.json"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = send(&client, request).await;
    assert_eq!(answer.status, 200);

    // CORS: a preflight from the allowed origin, then from another one.
    let preflight = |from: &str| {
        Request::builder()
            .method(Method::OPTIONS)
            .uri(format!("http://{addr}/{SERVICE}/Echo"))
            .header("origin", from)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type,x-grpc-web,connect-protocol-version",
            )
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let answer = send(&client, preflight(origin)).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.headers["access-control-allow-origin"], origin);
    let allowed = answer.headers["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_owned();
    for name in ["authorization", "x-grpc-web", "connect-protocol-version"] {
        assert!(allowed.contains(name), "{allowed}");
    }
    let answer = send(&client, preflight("http://elsewhere.test")).await;
    assert!(
        !answer.headers.contains_key("access-control-allow-origin"),
        "{:?}",
        answer.headers
    );
    shutdown.cancel();
}
