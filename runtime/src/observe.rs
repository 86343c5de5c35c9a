//! A tower layer around everything a service port serves: each gRPC call
//! gets a server span (a child of the caller's `traceparent`, named
//! `package.Service/Method`, with the RPC semantic-convention attributes)
//! and the per-RPC metrics of [`crate::metrics`]; other HTTP requests (REST)
//! get an HTTP server span. Every traced response carries the trace id back
//! in `x-trace-id` and `traceparent`. Health checks, reflection and the
//! operational routes (`/metrics`, `/healthz`, `/readyz`) are not traced.
//! An oversized request message is answered RESOURCE_EXHAUSTED here.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tower::{Layer, Service};
use tracing::Instrument as _;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::propagation;

/// Paths of the operational HTTP routes, which are neither traced nor counted.
pub const OPS_PATHS: [&str; 3] = ["/metrics", "/healthz", "/readyz"];

/// Adds [`Observe`] to a service.
#[derive(Debug, Clone, Copy, Default)]
pub struct ObserveLayer;

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe { inner }
    }
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
}

/// What a request is, as far as observing it goes.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Ops,
    Grpc { service: String, method: String },
    Http,
}

impl Kind {
    fn of<B>(request: &http::Request<B>) -> Self {
        let path = request.uri().path();
        if OPS_PATHS.contains(&path) {
            return Self::Ops;
        }
        let grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        if !grpc {
            return Self::Http;
        }
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or((path, ""));
        Self::Grpc {
            service: service.to_owned(),
            method: method.to_owned(),
        }
    }
}

/// Services probed and browsed by tools, too frequent and dull to trace.
fn is_infrastructure(service: &str) -> bool {
    service == "grpc.health.v1.Health" || service.starts_with("grpc.reflection.")
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> Service<http::Request<B>> for Observe<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    RB: Send + 'static,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The clone is fresh (not ready); keep the driven one for this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        match Kind::of(&request) {
            Kind::Ops => Box::pin(inner.call(request)),
            Kind::Grpc { service, method } => {
                let span = if is_infrastructure(&service) {
                    tracing::Span::none()
                } else {
                    tracing::info_span!(
                        "grpc.server",
                        otel.name = %format_args!("{service}/{method}"),
                        otel.kind = "server",
                        otel.status_code = Empty,
                        rpc.system = "grpc",
                        rpc.service = %service,
                        rpc.method = %method,
                        rpc.grpc.status_code = Empty,
                    )
                };
                propagation::set_remote_parent(&span, propagation::extract_http(request.headers()));
                let start = Instant::now();
                let call = span.in_scope(|| inner.call(request));
                Box::pin(async move {
                    let mut result = call.instrument(span.clone()).await;
                    if let Ok(response) = &mut result {
                        oversized_is_resource_exhausted(response.headers_mut());
                    }
                    let code = match &result {
                        Ok(response) => grpc_code(response.headers()),
                        Err(_) => 2, // UNKNOWN: the transport failed
                    };
                    span.record("rpc.grpc.status_code", code);
                    if is_server_error(code) {
                        span.record("otel.status_code", "error");
                    }
                    record_rpc(&service, &method, code, start);
                    if let Ok(response) = &mut result {
                        add_trace_headers(&span, response.headers_mut());
                    }
                    result
                })
            }
            Kind::Http => {
                let method = request.method().as_str().to_owned();
                let span = tracing::info_span!(
                    "http.server",
                    otel.name = %method,
                    otel.kind = "server",
                    otel.status_code = Empty,
                    http.request.method = %method,
                    url.path = %request.uri().path(),
                    http.response.status_code = Empty,
                );
                propagation::set_remote_parent(&span, propagation::extract_http(request.headers()));
                let call = span.in_scope(|| inner.call(request));
                Box::pin(async move {
                    let mut result = call.instrument(span.clone()).await;
                    if let Ok(response) = &mut result {
                        let status = response.status();
                        span.record("http.response.status_code", status.as_u16());
                        if status.is_server_error() {
                            span.record("otel.status_code", "error");
                        }
                        add_trace_headers(&span, response.headers_mut());
                    }
                    result
                })
            }
        }
    }
}

/// The gRPC status of a response: `grpc-status` in the headers (a
/// trailers-only error response, which is how tonic answers an `Err`), or
/// OK when the status is left to the trailers.
fn grpc_code(headers: &http::HeaderMap) -> i32 {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// tonic refuses a request message over the service's
/// `max_decoding_message_size` with OUT_OF_RANGE; gRPC's code for it is
/// RESOURCE_EXHAUSTED, which clients and retry policies expect. Every call
/// passes here, so this is where it is corrected.
fn oversized_is_resource_exhausted(headers: &mut http::HeaderMap) {
    let Some(status) = tonic::Status::from_header_map(headers) else {
        return;
    };
    if status.code() == tonic::Code::OutOfRange
        && status
            .message()
            .starts_with("Error, decoded message length too large")
    {
        let _ = tonic::Status::resource_exhausted(status.message()).add_header(headers);
    }
}

/// Codes that mean the server failed, per the RPC semantic conventions.
fn is_server_error(code: i32) -> bool {
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

/// The canonical name of a gRPC status code, for metric labels.
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

fn record_rpc(service: &str, method: &str, code: i32, start: Instant) {
    use crate::metrics::{RPC_DURATION, RPC_ERRORS, RPC_REQUESTS};
    let (service, method, code) = (service.to_owned(), method.to_owned(), code_name(code));
    ::metrics::counter!(RPC_REQUESTS, "service" => service.clone(), "method" => method.clone(), "code" => code)
        .increment(1);
    if code != "OK" {
        ::metrics::counter!(RPC_ERRORS, "service" => service.clone(), "method" => method.clone(), "code" => code)
            .increment(1);
    }
    ::metrics::histogram!(RPC_DURATION, "service" => service, "method" => method)
        .record(start.elapsed().as_secs_f64());
}

/// `x-trace-id` and `traceparent` of `span` on a response.
fn add_trace_headers(span: &tracing::Span, headers: &mut http::HeaderMap) {
    let cx = span.context();
    let trace_id = propagation::trace_id(span).and_then(|id| http::HeaderValue::from_str(&id).ok());
    if let Some(value) = trace_id {
        headers.insert(propagation::TRACE_ID_HEADER, value);
    }
    propagation::inject_http(&cx, headers);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str, content_type: Option<&str>) -> http::Request<()> {
        let mut b = http::Request::builder().uri(path);
        if let Some(ct) = content_type {
            b = b.header("content-type", ct);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn requests_are_classified() {
        assert_eq!(Kind::of(&request("/metrics", None)), Kind::Ops);
        assert_eq!(
            Kind::of(&request("/v1/orders", Some("application/json"))),
            Kind::Http
        );
        assert_eq!(
            Kind::of(&request(
                "/ordermesh.order.v1.OrderService/CreateOrder",
                Some("application/grpc+proto")
            )),
            Kind::Grpc {
                service: "ordermesh.order.v1.OrderService".into(),
                method: "CreateOrder".into()
            }
        );
        assert!(is_infrastructure("grpc.health.v1.Health"));
        assert!(is_infrastructure(
            "grpc.reflection.v1alpha.ServerReflection"
        ));
    }

    #[test]
    fn an_oversized_message_is_resource_exhausted() {
        let too_large = tonic::Status::out_of_range(
            "Error, decoded message length too large: found 5 bytes, the limit is: 4 bytes",
        );
        let mut headers = http::HeaderMap::new();
        too_large.add_header(&mut headers).unwrap();
        oversized_is_resource_exhausted(&mut headers);
        let status = tonic::Status::from_header_map(&headers).unwrap();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(status.message(), too_large.message());

        let mut headers = http::HeaderMap::new();
        tonic::Status::out_of_range("page 9 of 3")
            .add_header(&mut headers)
            .unwrap();
        oversized_is_resource_exhausted(&mut headers);
        assert_eq!(code_name(grpc_code(&headers)), "OUT_OF_RANGE");
    }

    #[test]
    fn the_status_comes_from_a_trailers_only_response() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(grpc_code(&headers), 0);
        headers.insert("grpc-status", http::HeaderValue::from_static("5"));
        assert_eq!(code_name(grpc_code(&headers)), "NOT_FOUND");
        assert!(!is_server_error(5) && is_server_error(13));
    }
}
