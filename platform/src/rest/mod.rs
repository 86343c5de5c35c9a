//! REST/JSON for every RPC that has a `google.api.http` annotation,
//! transcoded at run time from the descriptor set (grpc-gateway style), on
//! the same port as gRPC, calling the gRPC service in-process.
//!
//! - [`http_rule`]: rules from the method options; path templates
//!   (`{var}`, `{name=accounts/*}`, `*`, `**`, `:verb`) parsed and matched.
//! - [`json`]: the request message from body, path and query; proto3 JSON
//!   out.
//! - `invoke`: the in-process gRPC call (frames in, frames and trailers out).
//! - [`errors`]: `google.rpc.Status` bodies, gRPC code → HTTP status.
//! - [`openapi`]: the OpenAPI 3.1 document at `/openapi.json`.
//! - [`docs`]: Swagger UI at `/docs`, bundled into the binary.
//!
//! [`with_rest`] puts it all on a server's router: it finds which services
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
pub mod openapi;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt as _;
use http::header::{ACCEPT, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, VARY};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::BodyExt as _;
use prost_reflect::{DescriptorError, DescriptorPool};
use serde_json::Value;
use tokio::time::Instant;
use tower::ServiceExt as _;

use crate::config::{self, ConfigError, Env};
pub use errors::RestError;
pub use http_rule::{Binding, BodyMapping, PathTemplate};
use invoke::{Invoker, forwarded_extensions};

pub const ENV_MAX_BODY_BYTES: &str = "REST_MAX_BODY_BYTES";
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Request headers passed on to the service as gRPC metadata (`authorization`
/// carries the bearer token, see [`crate::auth`]; besides
/// `grpc-metadata-<name>`, passed on as `<name>`).
pub const FORWARDED_HEADERS: &[&str] = &[
    "authorization",
    "traceparent",
    "tracestate",
    "x-request-id",
    "x-forwarded-for",
];
/// The deadline header, in gRPC's `grpc-timeout` format (`100m`, `5S`).
pub const TIMEOUT_HEADER: &str = "grpc-timeout";
const METADATA_PREFIX: &str = "grpc-metadata-";
/// The media type of server-sent events, which `Accept` may ask for on a
/// server-streaming rule.
pub const EVENT_STREAM: &str = "text/event-stream";
/// How much earlier than `grpc-timeout` the gateway gives up (see
/// `Gateway::handle`): more than tokio's 1 ms timer tick, so the gateway's
/// timer fires in an earlier tick than tonic's.
const OUTER_TIMEOUT_MARGIN: Duration = Duration::from_millis(5);

/// How long an SSE stream may stay silent before the gateway sends a
/// comment line, so proxies and browsers do not drop an idle watch.
pub const DEFAULT_SSE_KEEPALIVE: Duration = Duration::from_secs(15);

/// How the REST gateway behaves.
#[derive(Debug, Clone)]
pub struct RestConfig {
    /// Larger request bodies are refused with 413.
    pub max_body_bytes: usize,
    /// The keep-alive interval of SSE streams (see [`DEFAULT_SSE_KEEPALIVE`]);
    /// a field so tests can shorten it.
    pub sse_keepalive: Duration,
}

impl Default for RestConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            sse_keepalive: DEFAULT_SSE_KEEPALIVE,
        }
    }
}

impl RestConfig {
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        let max_body_bytes = config::parse(env, ENV_MAX_BODY_BYTES, DEFAULT_MAX_BODY_BYTES)?;
        if max_body_bytes == 0 {
            return Err(config::invalid(ENV_MAX_BODY_BYTES, 0, "must be at least 1"));
        }
        Ok(Self {
            max_body_bytes,
            ..Self::default()
        })
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

/// The ordermesh contracts plus `google.rpc` (status and error details, to
/// render error details).
pub fn descriptor_pool() -> Result<DescriptorPool, DescriptorError> {
    let mut pool = DescriptorPool::decode(ordermesh_proto::FILE_DESCRIPTOR_SET)?;
    pool.decode_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)?;
    Ok(pool)
}

/// Adds REST for the services `grpc` serves from the ordermesh descriptor
/// set, plus `/openapi.json` and `/docs`, as `grpc`'s fallback.
pub async fn with_rest(grpc: axum::Router, config: RestConfig) -> Result<axum::Router, BuildError> {
    let pool = descriptor_pool()?;
    let services = served_services(&pool, &grpc).await;
    let gateway = Gateway::new(pool, &services, grpc.clone(), config)?;
    tracing::info!(
        services = ?services,
        routes = gateway.bindings().len(),
        "REST gateway ready"
    );
    Ok(gateway.attach(grpc))
}

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
        let request = Request::post(format!("/{}/ordermesh.rest.Probe", service.full_name()))
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
            "ordermesh".to_owned()
        } else {
            format!("ordermesh {}", names.join(", "))
        };
        let document = openapi::document(&pool, &bindings, &title);
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

    async fn route(&self, request: Request<Body>) -> Result<Response, RestError> {
        let path = request.uri().path().to_owned();
        let method = request.method().clone();
        if method == Method::GET {
            if path == "/openapi.json" {
                let mut response = (StatusCode::OK, self.inner.openapi.clone()).into_response();
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                return Ok(response);
            }
            if let Some(response) = docs::page(&path) {
                return Ok(response);
            }
        }

        // The templates the path matches. A template with a `:verb` owns
        // the paths ending in it: `/v1/accounts/a:deposit` is not also
        // `GET /v1/accounts/{customer_id}` with the id `a:deposit`.
        let mut matches: Vec<(&Binding, Vec<http_rule::Captured>)> = self
            .inner
            .bindings
            .iter()
            .filter_map(|b| b.template.matches(&path).map(|c| (b, c)))
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
        // The most specific template for the method; the first on a tie.
        let best = matches
            .into_iter()
            .rev()
            .filter(|(b, _)| b.http_method == method)
            .max_by_key(|(b, _)| b.template.specificity());
        let Some((binding, captured)) = best else {
            if path == "/openapi.json" || docs::page(&path).is_some() {
                allowed.push(Method::GET);
            }
            if allowed.is_empty() {
                return Err(RestError::not_found(&method, &path));
            }
            return Err(RestError::method_not_allowed(&method, &path, &allowed));
        };

        let (parts, body) = request.into_parts();
        let limit = self.inner.config.max_body_bytes;
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(RestError::payload_too_large(limit));
        }
        let body = http_body_util::Limited::new(body, limit)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    RestError::payload_too_large(limit)
                } else {
                    RestError::bad_request(format!("cannot read the request body: {e}"))
                }
            })?
            .to_bytes();

        let message = json::request_message(binding, &captured, parts.uri.query(), &body)?;
        let (metadata, deadline) = request_metadata(&parts.headers)?;
        let extensions = forwarded_extensions(&parts.extensions);
        let pool = &self.inner.pool;
        let invoker = &self.inner.invoker;

        if binding.method.is_server_streaming() {
            let sse = wants_event_stream(&parts.headers);
            let (headers, mut frames) = invoker
                .server_streaming(&binding.method, &message, metadata, extensions, deadline)
                .await
                .map_err(|s| RestError::from_status(&s, pool))?;
            // Wait for the first message, so a call that fails at once gets
            // its own HTTP status rather than a 200 with an error line.
            let first = match frames.next_message().await {
                Some(Ok(m)) => m,
                Some(Err(s)) => return Err(RestError::from_status(&s, pool)),
                None => {
                    frames
                        .finish()
                        .map_err(|s| RestError::from_status(&s, pool))?;
                    return Ok(streaming(Body::empty(), headers, sse));
                }
            };
            let binding = binding.clone();
            let pool = pool.clone();
            let rendered = futures::stream::once(async { Ok(first) })
                .chain(frames.into_stream())
                .map(move |item| {
                    item.map_err(|s| RestError::from_status(&s, &pool))
                        .and_then(|m| json::response_json(&binding, &m))
                        .map_err(|err| err.body_bytes())
                });
            let body = if sse {
                let events = rendered.map(|item| match item {
                    Ok(result) => sse_event(None, &result),
                    Err(status) => sse_event(Some("error"), &status),
                });
                Body::from_stream(
                    with_keepalive(events, self.inner.config.sse_keepalive)
                        .map(Ok::<_, std::convert::Infallible>),
                )
            } else {
                Body::from_stream(rendered.map(|item| {
                    let (key, body) = match item {
                        Ok(result) => (&b"{\"result\":"[..], result),
                        Err(status) => (&b"{\"error\":"[..], status),
                    };
                    let mut line = Vec::with_capacity(key.len() + body.len() + 2);
                    line.extend_from_slice(key);
                    line.extend_from_slice(&body);
                    line.extend_from_slice(b"}\n");
                    Ok::<_, std::convert::Infallible>(Bytes::from(line))
                }))
            };
            return Ok(streaming(body, headers, sse));
        }

        let answer = invoker
            .unary(&binding.method, &message, metadata, extensions, deadline)
            .await
            .map_err(|s| RestError::from_status(&s, pool))?;
        let body = json::response_json(binding, &answer.message)?;
        let mut response = (StatusCode::OK, body).into_response();
        response.headers_mut().extend(answer.metadata);
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Ok(response)
    }
}

/// A streaming answer with the response metadata: server-sent events or
/// (the default) newline-delimited JSON.
fn streaming(body: Body, metadata: HeaderMap, sse: bool) -> Response {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.extend(metadata);
    headers.insert(VARY, HeaderValue::from_static("accept"));
    if sse {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(EVENT_STREAM));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    } else {
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
    }
    response
}

/// True when `Accept` asks for server-sent events: it lists
/// `text/event-stream` with a q-value above that of NDJSON (wildcards
/// never choose SSE, so NDJSON stays the default).
pub fn wants_event_stream(headers: &HeaderMap) -> bool {
    let mut sse = 0.0_f32;
    let mut ndjson = 0.0_f32;
    for value in headers.get_all(ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for range in value.split(',') {
            let mut params = range.split(';');
            let media = params.next().unwrap_or_default().trim();
            let q = params
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            if media.eq_ignore_ascii_case(EVENT_STREAM) {
                sse = sse.max(q);
            } else if media.eq_ignore_ascii_case("application/x-ndjson") {
                ndjson = ndjson.max(q);
            }
        }
    }
    sse > 0.0 && sse > ndjson
}

/// One server-sent event: an optional `event:` name and the data, which is
/// one line (serialized JSON escapes line breaks).
fn sse_event(event: Option<&str>, data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + 32);
    if let Some(event) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(event.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// `events`, with a comment line (`: keep-alive`) whenever none came for
/// `every`.
fn with_keepalive<S>(events: S, every: Duration) -> impl futures::Stream<Item = Bytes> + Send
where
    S: futures::Stream<Item = Bytes> + Send + 'static,
{
    futures::stream::unfold(Box::pin(events), move |mut events| async move {
        // Dropping `next()` on a timeout loses nothing: the stream keeps
        // its place.
        match tokio::time::timeout(every, events.next()).await {
            Ok(Some(event)) => Some((event, events)),
            Ok(None) => None,
            Err(_) => Some((Bytes::from_static(b": keep-alive\n\n"), events)),
        }
    })
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The gRPC metadata and deadline a REST request carries.
fn request_metadata(headers: &HeaderMap) -> Result<(HeaderMap, Option<Instant>), RestError> {
    let mut metadata = HeaderMap::new();
    for (name, value) in headers {
        if FORWARDED_HEADERS.contains(&name.as_str()) {
            metadata.append(name.clone(), value.clone());
        } else if let Some(key) = name.as_str().strip_prefix(METADATA_PREFIX) {
            // x-forwarded-for only ever comes from the proxy in front.
            if key.is_empty()
                || key.starts_with("grpc-")
                || key == "content-type"
                || key == "te"
                || key == "x-forwarded-for"
            {
                continue;
            }
            if let Ok(key) = HeaderName::from_bytes(key.as_bytes()) {
                metadata.append(key, value.clone());
            }
        }
    }
    Ok((metadata, request_deadline(headers)?))
}

/// The deadline `grpc-timeout` sets, counted from now and
/// [`OUTER_TIMEOUT_MARGIN`] early (see [`Gateway::handle`]).
fn request_deadline(headers: &HeaderMap) -> Result<Option<Instant>, RestError> {
    let Some(value) = headers.get(TIMEOUT_HEADER) else {
        return Ok(None);
    };
    let timeout = value
        .to_str()
        .ok()
        .and_then(parse_grpc_timeout)
        .ok_or_else(|| {
            RestError::bad_field(
                TIMEOUT_HEADER,
                "expected 1 to 8 digits and a unit: H, M, S, m (ms), u (µs) or n (ns)",
            )
        })?;
    Ok(Some(
        Instant::now() + timeout.saturating_sub(OUTER_TIMEOUT_MARGIN),
    ))
}

/// Parses a `grpc-timeout` value: up to 8 digits and a unit.
pub fn parse_grpc_timeout(text: &str) -> Option<Duration> {
    // ASCII only, so the unit is the last byte (and splitting cannot land
    // inside a character).
    if !text.is_ascii() {
        return None;
    }
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("5é"), None);
        assert_eq!(parse_grpc_timeout("é"), None);
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        for bad in ["", "m", "100", "123456789m", "1.5S", "-1S", "10x"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }

    #[test]
    fn accept_chooses_event_streams_only_when_named() {
        let accept = |v: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(ACCEPT, HeaderValue::from_str(v).unwrap());
            wants_event_stream(&headers)
        };
        assert!(!wants_event_stream(&HeaderMap::new()));
        assert!(accept("text/event-stream"));
        assert!(accept("Text/Event-Stream"));
        assert!(accept("application/json, text/event-stream;q=0.5"));
        assert!(accept("application/x-ndjson;q=0.2, text/event-stream"));
        assert!(!accept("*/*"));
        assert!(!accept("text/*"));
        assert!(!accept("application/x-ndjson"));
        assert!(!accept("text/event-stream;q=0"));
        assert!(!accept("text/event-stream;q=0.5, application/x-ndjson"));
        assert!(!accept("text/event-stream, application/x-ndjson"));
    }

    #[test]
    fn events_are_one_data_line_with_an_optional_name() {
        assert_eq!(sse_event(None, br#"{"n":1}"#), "data: {\"n\":1}\n\n");
        assert_eq!(
            sse_event(Some("error"), br#"{"code":14}"#),
            "event: error\ndata: {\"code\":14}\n\n"
        );
    }

    /// The next item of `events` that is not a keep-alive comment, and how
    /// many comments came before it.
    async fn next_event<S: futures::Stream<Item = Bytes> + Unpin>(
        events: &mut S,
    ) -> (usize, Option<Bytes>) {
        let mut comments = 0;
        loop {
            let item = tokio::time::timeout(Duration::from_secs(10), events.next())
                .await
                .expect("an item or the end within 10 s");
            match item {
                Some(item) if item == ": keep-alive\n\n" => comments += 1,
                other => return (comments, other),
            }
        }
    }

    #[tokio::test]
    async fn idle_event_streams_get_keepalive_comments() {
        let (tx, rx) = futures::channel::mpsc::unbounded::<Bytes>();
        let mut events = Box::pin(with_keepalive(rx, Duration::from_millis(20)));
        tx.unbounded_send(Bytes::from_static(b"data: 1\n\n"))
            .unwrap();
        let (_, first) = next_event(&mut events).await;
        assert_eq!(first.unwrap(), "data: 1\n\n");
        // Idle: comments until the next event.
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            tx.unbounded_send(Bytes::from_static(b"data: 2\n\n"))
                .unwrap();
        });
        let (comments, second) = next_event(&mut events).await;
        assert!(comments >= 1, "no keep-alive while idle");
        assert_eq!(second.unwrap(), "data: 2\n\n");
        sender.await.unwrap();
        // The sender is gone: the stream ends.
        assert_eq!(next_event(&mut events).await.1, None);
    }

    #[test]
    fn body_limit_from_env() {
        let env = |v: &str| {
            std::collections::HashMap::from([(ENV_MAX_BODY_BYTES.to_owned(), v.to_owned())])
        };
        assert_eq!(
            RestConfig::from_env(&env("")).unwrap().max_body_bytes,
            4 * 1024 * 1024
        );
        assert_eq!(
            RestConfig::from_env(&env("1024")).unwrap().max_body_bytes,
            1024
        );
        for bad in ["0", "-1", "lots"] {
            let err = RestConfig::from_env(&env(bad)).unwrap_err();
            assert_eq!(err.name, ENV_MAX_BODY_BYTES);
        }
    }

    #[test]
    fn metadata_from_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("Bearer t"));
        headers.insert("x-request-id", HeaderValue::from_static("r1"));
        headers.insert("grpc-metadata-tenant", HeaderValue::from_static("acme"));
        headers.insert("grpc-metadata-grpc-status", HeaderValue::from_static("0"));
        headers.insert("cookie", HeaderValue::from_static("secret"));
        headers.insert("grpc-timeout", HeaderValue::from_static("2S"));
        let (metadata, deadline) = request_metadata(&headers).unwrap();
        assert_eq!(metadata["authorization"], "Bearer t");
        assert_eq!(metadata["x-request-id"], "r1");
        assert_eq!(metadata["tenant"], "acme");
        assert!(!metadata.contains_key("cookie"));
        assert!(!metadata.contains_key("grpc-status"));
        assert!(deadline.is_some());
        headers.insert("grpc-timeout", HeaderValue::from_static("soon"));
        let err = request_metadata(&headers).unwrap_err();
        assert_eq!(err.http, StatusCode::BAD_REQUEST);
        assert!(err.message.contains("grpc-timeout"));
    }
}
