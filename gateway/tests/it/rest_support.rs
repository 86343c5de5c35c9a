//! A test gRPC service for the REST gateway, built at test time from
//! `tests/protos/ordermesh/resttest/v1/rest_test.proto` with protox and
//! served by tonic with a codec on `DynamicMessage`, plus helpers to call
//! the gateway in-process.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Buf;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use ordermesh_gateway::rest::{Gateway, RestConfig};
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, Value as PValue};
use serde_json::Value;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::NamedService;
use tonic::{Code, Status};
use tower::ServiceExt as _;

pub const SERVICE: &str = "ordermesh.resttest.v1.TestService";
/// Request metadata the Echo method reports back.
const ECHOED: &[&str] = &[
    "authorization",
    "traceparent",
    "tracestate",
    "x-request-id",
    "tenant",
    "grpc-timeout",
];

/// The test contract plus google.rpc, as the gateway sees it.
pub fn pool() -> DescriptorPool {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut compiler = protox::Compiler::new([root.join("tests/protos"), root.join("../proto")])
        .expect("protox compiler");
    compiler.include_imports(true).include_source_info(true);
    compiler
        .open_files(["ordermesh/resttest/v1/rest_test.proto"])
        .expect("compile the test proto");
    let mut pool =
        DescriptorPool::decode(compiler.encode_file_descriptor_set().as_slice()).expect("decode");
    pool.decode_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .expect("add google.rpc");
    pool
}

/// Encodes and decodes `DynamicMessage`s of one request type.
#[derive(Clone)]
struct DynamicCodec(MessageDescriptor);

struct DynEncoder;
struct DynDecoder(MessageDescriptor);

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynEncoder;
    type Decoder = DynDecoder;
    fn encoder(&mut self) -> DynEncoder {
        DynEncoder
    }
    fn decoder(&mut self) -> DynDecoder {
        DynDecoder(self.0.clone())
    }
}

impl Encoder for DynEncoder {
    type Item = DynamicMessage;
    type Error = Status;
    fn encode(&mut self, item: DynamicMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

impl Decoder for DynDecoder {
    type Item = DynamicMessage;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DynamicMessage>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        DynamicMessage::decode(self.0.clone(), bytes)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

/// The test service, dispatching on the method name.
#[derive(Clone)]
pub struct TestServer {
    pool: DescriptorPool,
}

impl NamedService for TestServer {
    const NAME: &'static str = SERVICE;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower::Service<http::Request<tonic::body::Body>> for TestServer {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let service = self
            .pool
            .get_service_by_name(SERVICE)
            .expect("the test service");
        let name = request
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let Some(method) = service.methods().find(|m| m.name() == name) else {
            return Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) });
        };
        let output = method.output();
        let mut grpc = tonic::server::Grpc::new(DynamicCodec(method.input()));
        Box::pin(async move {
            let response = match name.as_str() {
                "Count" => {
                    let handler = tower::service_fn(move |r| count(r, output.clone()));
                    grpc.server_streaming(handler, request).await
                }
                _ => {
                    let handler =
                        tower::service_fn(move |r| unary(name.clone(), r, output.clone()));
                    grpc.unary(handler, request).await
                }
            };
            Ok(response)
        })
    }
}

fn field_i32(m: &DynamicMessage, name: &str) -> i32 {
    m.get_field_by_name(name)
        .and_then(|v| v.as_i32())
        .unwrap_or_default()
}

async fn unary(
    name: String,
    request: tonic::Request<DynamicMessage>,
    output: MessageDescriptor,
) -> Result<tonic::Response<DynamicMessage>, Status> {
    let metadata = request.metadata().clone().into_headers();
    let message = request.into_inner();
    let mut answer = DynamicMessage::new(output);
    match name.as_str() {
        "Echo" | "GetPayload" => {
            let seen: HashMap<prost_reflect::MapKey, PValue> = ECHOED
                .iter()
                .filter_map(|k| {
                    let v = metadata.get(*k)?.to_str().ok()?;
                    Some((
                        prost_reflect::MapKey::String((*k).to_owned()),
                        PValue::String(v.to_owned()),
                    ))
                })
                .collect();
            if message.has_field_by_name("payload")
                && let Some(payload) = message.get_field_by_name("payload")
            {
                answer.set_field_by_name("payload", payload.into_owned());
            }
            answer.set_field_by_name("request", PValue::Message(message));
            answer.set_field_by_name("metadata", PValue::Map(seen));
            let mut response = tonic::Response::new(answer);
            response
                .metadata_mut()
                .insert("x-echo", "echoed".parse().expect("ascii"));
            Ok(response)
        }
        "Fail" => {
            let code = Code::from_i32(field_i32(&message, "code"));
            let text = message
                .get_field_by_name("message")
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let with_details = message
                .get_field_by_name("with_details")
                .and_then(|v| v.as_bool())
                .unwrap_or_default();
            if code == Code::Ok {
                return Ok(tonic::Response::new(answer));
            }
            if with_details {
                return Err(ordermesh_runtime::grpc::invalid_field("title", text));
            }
            Err(Status::new(code, text))
        }
        "Sleep" | "Purge" | "Hidden" => {
            let millis = field_i32(&message, "millis").max(0) as u64;
            tokio::time::sleep(Duration::from_millis(millis)).await;
            Ok(tonic::Response::new(answer))
        }
        other => Err(Status::unimplemented(other.to_owned())),
    }
}

type CountStream = Pin<Box<dyn futures::Stream<Item = Result<DynamicMessage, Status>> + Send>>;

async fn count(
    request: tonic::Request<DynamicMessage>,
    output: MessageDescriptor,
) -> Result<tonic::Response<CountStream>, Status> {
    let message = request.into_inner();
    let count = field_i32(&message, "count");
    let fail = Code::from_i32(field_i32(&message, "fail_code"));
    if count == 0 && fail != Code::Ok {
        return Err(Status::new(fail, "failed before the first message"));
    }
    let items: Vec<Result<DynamicMessage, Status>> = (1..=count)
        .map(|n| {
            let mut m = DynamicMessage::new(output.clone());
            m.set_field_by_name("n", PValue::I32(n));
            Ok(m)
        })
        .chain((fail != Code::Ok).then(|| Err(Status::new(fail, "failed mid-stream"))))
        .collect();
    let stream: CountStream = Box::pin(futures::stream::iter(items));
    Ok(tonic::Response::new(stream))
}

/// The gRPC routes of the test server.
pub fn grpc_router(pool: &DescriptorPool) -> axum::Router {
    tonic::service::Routes::new(TestServer { pool: pool.clone() }).into_axum_router()
}

/// The test service with REST in front of it, configured by `config`.
pub fn app_with(config: RestConfig) -> (axum::Router, Gateway) {
    let pool = pool();
    let grpc = grpc_router(&pool);
    let gateway = Gateway::new(pool, &[SERVICE.to_owned()], grpc.clone(), config)
        .expect("the test rules are valid");
    (gateway.clone().attach(grpc), gateway)
}

pub fn app() -> axum::Router {
    app_with(RestConfig::default()).0
}

/// What a REST call answered.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }

    pub fn content_type(&self) -> &str {
        self.headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// Asserts an error answer: the status, a JSON `google.rpc.Status` body
    /// with `code`, and returns the body.
    pub fn assert_error(&self, status: u16, code: Code) -> Value {
        assert_eq!(self.status.as_u16(), status, "{self:?}");
        assert_eq!(self.content_type(), "application/json", "{self:?}");
        let body = self.json();
        assert_eq!(body["code"], code as i32, "{self:?}");
        assert!(body["message"].is_string(), "{self:?}");
        assert!(body["details"].is_array(), "{self:?}");
        body
    }
}

/// Calls `app` in-process.
pub async fn call(
    app: &axum::Router,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Answer {
    let mut request = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request
        .body(Body::from(body.unwrap_or_default().to_owned()))
        .expect("a valid request");
    let response = app.clone().oneshot(request).await.expect("infallible");
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("read the body").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        text: String::from_utf8(bytes.to_vec()).expect("UTF-8 body"),
    }
}

/// An `EchoRequest` as the gateway writes it: every field without presence
/// at its default value, then the fields of `set` (an object; nested
/// messages given whole).
pub fn echoed(set: Value) -> Value {
    let mut all = serde_json::json!({
        "name": "",
        "big": "0",
        "ubig": "0",
        "small": 0,
        "flag": false,
        "ratio": 0.0,
        "color": "COLOR_UNSPECIFIED",
        "tags": [],
        "colors": [],
        "blob": "",
        "counts": {},
        "list": [],
    });
    let Value::Object(set) = set else {
        panic!("echoed() takes an object")
    };
    all.as_object_mut().expect("an object").extend(set);
    all
}
