//! REST/JSON for every RPC that has a `google.api.http` annotation,
//! transcoded at run time from the descriptor set (grpc-gateway style), on
//! the same port as gRPC, calling the gRPC service in-process.
//!
//! - [`http_rule`]: rules from the method options; path templates
//!   (`{var}`, `{name=accounts/*}`, `*`, `**`, `:verb`) parsed and matched.
//! - [`json`]: the request message from body, path and query; proto3 JSON
//!   out.
//! - `invoke`: the in-process gRPC call (frames in, frames and trailers out).
//! - [`metadata`]: the gRPC metadata and deadline a request's headers carry.
//! - [`stream`]: server-streaming answers, NDJSON or server-sent events.
//! - [`errors`]: `google.rpc.Status` bodies, gRPC code → HTTP status.
//! - [`openapi`]: the OpenAPI 3.1 document at `/openapi.json`.
//! - [`docs`]: Swagger UI at `/docs`, bundled into the binary.
//!
//! [`crate::attach`] puts it all on a server's router: it finds which services
//! of the descriptor set the router serves, and answers every request that
//! is not gRPC and matches no other route.
//!
//! Server-streaming rules answer newline-delimited JSON, or server-sent
//! events when `Accept` asks for `text/event-stream` (browsers'
//! `EventSource`): one `data:` event per message, a final `event: error`
//! with the `google.rpc.Status` if the stream fails, and a comment line
//! while it is idle.

pub mod docs;
pub mod errors;
pub mod http_rule;
pub(crate) mod invoke;
pub mod json;
pub mod metadata;
pub mod openapi;
pub mod stream;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::BodyExt as _;
use prost_reflect::{DescriptorError, DescriptorPool, DynamicMessage};
use serde_json::Value;
use tokio::time::Instant;
use tower::ServiceExt as _;

pub use errors::RestError;
pub use http_rule::{Binding, BodyMapping, PathTemplate};
use invoke::{Invoker, forwarded_extensions};
pub use metadata::{FORWARDED_HEADERS, TIMEOUT_HEADER, parse_grpc_timeout};
use metadata::{is_grpc, request_deadline, request_metadata};
pub use stream::{EVENT_STREAM, wants_event_stream};

pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// What the OpenAPI document says of the bearer token unless the service
/// says more.
pub const DEFAULT_BEARER_DESCRIPTION: &str =
    "A JWT sent as `Authorization: Bearer <token>`; missing or invalid: 401.";

/// How long an SSE stream may stay silent before the gateway sends a
/// comment line, so proxies and browsers do not drop an idle watch.
pub const DEFAULT_SSE_KEEPALIVE: Duration = Duration::from_secs(15);

/// How the REST gateway behaves.
#[derive(Debug, Clone)]
pub struct RestConfig {
    /// Larger request bodies are refused with 413.
    pub max_body_bytes: usize,
    /// The OpenAPI document's title, before the served services' names.
    pub title: String,
    /// Services whose operations need no bearer token (a login service):
    /// their OpenAPI operations say so.
    pub public_services: Vec<String>,
    /// How the OpenAPI document describes the bearer token: where to get
    /// one, what a refusal looks like.
    pub bearer_description: String,
    /// The keep-alive interval of SSE streams (see [`DEFAULT_SSE_KEEPALIVE`]);
    /// a field so tests can shorten it.
    pub sse_keepalive: Duration,
}

impl Default for RestConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            title: "API".to_owned(),
            public_services: Vec::new(),
            bearer_description: DEFAULT_BEARER_DESCRIPTION.to_owned(),
            sse_keepalive: DEFAULT_SSE_KEEPALIVE,
        }
    }
}

/// Why the gateway cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("decode the descriptor set: {0}")]
    Descriptors(#[from] DescriptorError),
    #[error("invalid google.api.http rule: {0}")]
    Rule(#[from] http_rule::RuleError),
}

/// The contracts of an encoded `FileDescriptorSet` plus `google.rpc`
/// (status and error details, to render error details).
pub fn descriptor_pool(descriptor_set: &[u8]) -> Result<DescriptorPool, DescriptorError> {
    let mut pool = DescriptorPool::decode(descriptor_set)?;
    pool.decode_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)?;
    Ok(pool)
}

/// A method name no service declares, to ask a router which services it
/// has.
const UNKNOWN_METHOD: &str = "RestGatewayProbeOfAnUnknownMethod";

/// The services of `pool` that `grpc` routes, found by asking it for a
/// method no service has: a registered service answers that itself, an
/// unknown one reaches the router's fallback.
pub async fn served_services(pool: &DescriptorPool, grpc: &axum::Router) -> Vec<String> {
    #[derive(Clone, Copy)]
    struct Unrouted;
    let probe = grpc.clone().fallback(|| async {
        let mut response = StatusCode::NOT_FOUND.into_response();
        response.extensions_mut().insert(Unrouted);
        response
    });
    let mut served = Vec::new();
    for service in pool.services() {
        let request = Request::post(format!("/{}/{UNKNOWN_METHOD}", service.full_name()))
            .header(CONTENT_TYPE, "application/grpc")
            .body(Body::empty())
            .expect("a valid probe request");
        let Ok(response) = probe.clone().oneshot(request).await;
        if response.extensions().get::<Unrouted>().is_none() {
            served.push(service.full_name().to_owned());
        }
    }
    served
}

/// The REST face of a set of gRPC services.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    pool: DescriptorPool,
    bindings: Vec<Binding>,
    invoker: Invoker,
    config: RestConfig,
    openapi: Bytes,
}

impl Gateway {
    /// REST for the `services` of `pool`, calling them through `grpc`.
    pub fn new(
        pool: DescriptorPool,
        services: &[String],
        grpc: axum::Router,
        config: RestConfig,
    ) -> Result<Self, BuildError> {
        let bindings = http_rule::bindings(&pool, services)?;
        let mut names: Vec<&str> = services
            .iter()
            .filter(|s| {
                bindings
                    .iter()
                    .any(|b| b.method.parent_service().full_name() == *s)
            })
            .map(|s| s.rsplit('.').next().unwrap_or(s))
            .collect();
        names.sort_unstable();
        let title = if names.is_empty() {
            config.title.clone()
        } else {
            format!("{} {}", config.title, names.join(", "))
        };
        let document = openapi::document(&pool, &bindings, &title, &config);
        let openapi = Bytes::from(serde_json::to_vec_pretty(&document).expect("JSON serializes"));
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                bindings,
                invoker: Invoker::new(grpc),
                config,
                openapi,
            }),
        })
    }

    pub fn bindings(&self) -> &[Binding] {
        &self.inner.bindings
    }

    /// The OpenAPI document served at `/openapi.json`.
    pub fn openapi(&self) -> Value {
        serde_json::from_slice(&self.inner.openapi).expect("the document is JSON")
    }

    /// `router` with this gateway answering whatever it does not route.
    pub fn attach(self, router: axum::Router) -> axum::Router {
        router.fallback(move |request: Request<Body>| {
            let gateway = self.clone();
            async move { gateway.handle(request).await }
        })
    }

    /// Answers one HTTP request.
    pub async fn handle(&self, request: Request<Body>) -> Response {
        if is_grpc(request.headers()) {
            // A gRPC call for a service this server does not have.
            let (parts, ()) = tonic::Status::unimplemented("unknown service")
                .into_http::<()>()
                .into_parts();
            return Response::from_parts(parts, Body::empty());
        }
        // The deadline bounds the whole request, body reading included.
        // tonic's server runs the same `grpc-timeout` around this handler
        // and would answer in gRPC form; this deadline is a little earlier
        // and tonic polls the handler before its own timer, so whenever
        // tonic's has passed, this one has too and the JSON 504 wins.
        let deadline = match request_deadline(request.headers()) {
            Ok(deadline) => deadline,
            Err(err) => return err.into_response(),
        };
        let expired = || {
            Err(RestError::from_status(
                &tonic::Status::deadline_exceeded("deadline exceeded"),
                &self.inner.pool,
            ))
        };
        let routed = match deadline {
            // No time left (a timeout shorter than the margin): answer now,
            // before any timer, so tonic's cannot fire first.
            Some(deadline) if deadline <= Instant::now() => expired(),
            Some(deadline) => match tokio::time::timeout_at(deadline, self.route(request)).await {
                Ok(routed) => routed,
                Err(_) => expired(),
            },
            None => self.route(request).await,
        };
        match routed {
            Ok(response) => response,
            Err(err) => err.into_response(),
        }
    }

    /// Serves the gateway's own pages, or else calls the method whose rule
    /// matches the request best, with the message built from its path,
    /// query and body.
    async fn route(&self, request: Request<Body>) -> Result<Response, RestError> {
        let path = request.uri().path().to_owned();
        let method = request.method().clone();
        if let Some(page) = self.own_page(&method, &path) {
            return Ok(page);
        }
        let (binding, captured) = self.binding_for(&method, &path)?;
        let (parts, body) = request.into_parts();
        let body = read_body(body, &parts.headers, self.inner.config.max_body_bytes).await?;
        let message = json::request_message(binding, &captured, parts.uri.query(), &body)?;
        let (metadata, deadline) = request_metadata(&parts.headers)?;
        let extensions = forwarded_extensions(&parts.extensions);
        if binding.method.is_server_streaming() {
            let sse = wants_event_stream(&parts.headers);
            self.server_streaming(binding, &message, metadata, extensions, deadline, sse)
                .await
        } else {
            self.unary(binding, &message, metadata, extensions, deadline)
                .await
        }
    }

    /// `GET /openapi.json` and the docs page.
    fn own_page(&self, method: &Method, path: &str) -> Option<Response> {
        if method != Method::GET {
            return None;
        }
        if path == "/openapi.json" {
            let mut response = (StatusCode::OK, self.inner.openapi.clone()).into_response();
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            return Some(response);
        }
        docs::page(path)
    }

    /// The rule for `method` whose template matches `path` most
    /// specifically (the first on a tie), and what it captured; else 404,
    /// or 405 naming the methods the path has.
    fn binding_for(
        &self,
        method: &Method,
        path: &str,
    ) -> Result<(&Binding, Vec<http_rule::Captured>), RestError> {
        // A template with a `:verb` owns the paths ending in it:
        // `/v1/accounts/a:deposit` is not also `GET /v1/accounts/{customer_id}`
        // with the id `a:deposit`.
        let mut matches: Vec<(&Binding, Vec<http_rule::Captured>)> = self
            .inner
            .bindings
            .iter()
            .filter_map(|b| b.template.matches(path).map(|c| (b, c)))
            .collect();
        if matches.iter().any(|(b, _)| b.template.verb().is_some()) {
            matches.retain(|(b, _)| b.template.verb().is_some());
        }
        let mut allowed: Vec<Method> = Vec::new();
        for (b, _) in &matches {
            if !allowed.contains(&b.http_method) {
                allowed.push(b.http_method.clone());
            }
        }
        let best = matches
            .into_iter()
            .rev()
            .filter(|(b, _)| b.http_method == method)
            .max_by_key(|(b, _)| b.template.specificity());
        if let Some(best) = best {
            return Ok(best);
        }
        if path == "/openapi.json" || docs::page(path).is_some() {
            allowed.push(Method::GET);
        }
        if allowed.is_empty() {
            return Err(RestError::not_found(method, path));
        }
        Err(RestError::method_not_allowed(method, path, &allowed))
    }

    /// Calls a unary method: its answer as JSON, with the response metadata
    /// as headers.
    async fn unary(
        &self,
        binding: &Binding,
        message: &DynamicMessage,
        metadata: HeaderMap,
        extensions: http::Extensions,
        deadline: Option<Instant>,
    ) -> Result<Response, RestError> {
        let answer = self
            .inner
            .invoker
            .unary(&binding.method, message, metadata, extensions, deadline)
            .await
            .map_err(|s| RestError::from_status(&s, &self.inner.pool))?;
        let body = json::response_json(binding, &answer.message)?;
        let mut response = (StatusCode::OK, body).into_response();
        response.headers_mut().extend(answer.metadata);
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Ok(response)
    }

    /// Calls a server-streaming method (see [`stream`]).
    async fn server_streaming(
        &self,
        binding: &Binding,
        message: &DynamicMessage,
        metadata: HeaderMap,
        extensions: http::Extensions,
        deadline: Option<Instant>,
        sse: bool,
    ) -> Result<Response, RestError> {
        let pool = &self.inner.pool;
        let (headers, frames) = self
            .inner
            .invoker
            .server_streaming(&binding.method, message, metadata, extensions, deadline)
            .await
            .map_err(|s| RestError::from_status(&s, pool))?;
        let keepalive = self.inner.config.sse_keepalive;
        stream::respond(frames, headers, binding, pool, sse, keepalive).await
    }
}

/// The request body, at most `limit` bytes (413 beyond, whether declared
/// by `Content-Length` or found while reading).
async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, RestError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(RestError::payload_too_large(limit));
    }
    let collected = http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                RestError::payload_too_large(limit)
            } else {
                RestError::bad_request(format!("cannot read the request body: {e}"))
            }
        })?;
    Ok(collected.to_bytes())
}
