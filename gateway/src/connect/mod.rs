//! The Connect protocol (connectrpc.com/docs/protocol) on a service port,
//! beside gRPC, gRPC-Web and REST: unary calls (`POST /<pkg.Service>/<Method>`
//! with `application/proto` or `application/json`, errors as Connect error
//! JSON with the protocol's HTTP status) and server streams
//! (`application/connect+proto` / `connect+json` enveloped messages ending
//! in an end-of-stream message with the error and trailers).
//!
//! No Connect crate fits prost and tonic, so this is built on the REST
//! gateway's machinery: the descriptor set gives each method's types,
//! prost-reflect decodes and encodes proto and proto3 JSON, and the call
//! goes into the server's own router in-process as a gRPC request, so auth,
//! rate limits, deadlines (`connect-timeout-ms`) and validation are exactly
//! gRPC's. Client and bidirectional streams, unary GET and compression are
//! not served (answered `unimplemented`).
//!
//! - [`error`]: code names, HTTP statuses and the error JSON.
//! - `codec`: binary protobuf or proto3 JSON.
//! - `envelope`: the framing of streamed messages.
//! - `stream`: the answer of a server-streaming call.

mod codec;
mod envelope;
pub mod error;
mod stream;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::BodyExt as _;
use prost_reflect::{DescriptorPool, MethodDescriptor};
use tokio::time::Instant;
use tonic::Code;
use tower::ServiceExt as _;

pub use codec::Codec;
pub use error::{ConnectError, code_name};

use crate::rest::invoke::{Invoker, forwarded_extensions};
use codec::{decode, encode};
use stream::{end_of_stream, messages};

/// The protocol version header; when sent it must be `1`.
pub const PROTOCOL_VERSION_HEADER: &str = "connect-protocol-version";
/// The deadline header: milliseconds, 1 to 10 digits.
pub const TIMEOUT_HEADER: &str = "connect-timeout-ms";
const STREAM_ENCODING_HEADER: &str = "connect-content-encoding";

/// Request headers that are protocol, not metadata for the service;
/// response metadata by these names is never copied either.
pub(crate) const RESERVED_METADATA: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "content-type",
    "content-length",
    "content-encoding",
    "accept",
    "accept-encoding",
    "cookie",
    "origin",
    "referer",
    "date",
    "server",
    "connect-protocol-version",
    "connect-timeout-ms",
    "connect-content-encoding",
    "connect-accept-encoding",
];

/// How a Connect call is framed and encoded, from its content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `application/proto` or `application/json`: one bare message each way.
    Unary(Codec),
    /// `application/connect+proto` or `connect+json`: enveloped messages.
    Streaming(Codec),
}

impl Kind {
    /// The Connect kind of a request's `content-type`, if it is one.
    pub fn of(headers: &HeaderMap) -> Option<Self> {
        let value = headers.get(CONTENT_TYPE)?.to_str().ok()?;
        let essence = value.split(';').next()?.trim().to_ascii_lowercase();
        Some(match essence.as_str() {
            "application/proto" => Kind::Unary(Codec::Proto),
            "application/json" => Kind::Unary(Codec::Json),
            "application/connect+proto" => Kind::Streaming(Codec::Proto),
            "application/connect+json" => Kind::Streaming(Codec::Json),
            _ => return None,
        })
    }

    fn content_type(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Kind::Unary(Codec::Proto) => "application/proto",
            Kind::Unary(Codec::Json) => "application/json",
            Kind::Streaming(Codec::Proto) => "application/connect+proto",
            Kind::Streaming(Codec::Json) => "application/connect+json",
        })
    }
}

/// Connect for a set of gRPC services.
#[derive(Clone)]
pub struct Connect {
    inner: Arc<Inner>,
}

struct Inner {
    pool: DescriptorPool,
    services: Vec<String>,
    invoker: Invoker,
    max_body_bytes: usize,
}

impl Connect {
    /// Connect for the `services` of `pool`, calling them through `grpc`;
    /// larger request bodies than `max_body_bytes` are refused.
    pub fn new(
        pool: DescriptorPool,
        services: &[String],
        grpc: axum::Router,
        max_body_bytes: usize,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                services: services.to_vec(),
                invoker: Invoker::new(grpc),
                max_body_bytes,
            }),
        }
    }

    /// Whether `request` is a Connect call to one of the services: a POST
    /// with a Connect content type to `/<service>/<method>`.
    pub fn accepts<B>(&self, request: &Request<B>) -> bool {
        request.method() == Method::POST
            && Kind::of(request.headers()).is_some()
            && split_path(request.uri().path())
                .is_some_and(|(service, _)| self.inner.services.iter().any(|s| s == service))
    }

    /// A router that answers Connect calls itself and hands every other
    /// request to `app`.
    pub fn wrap(self, app: axum::Router) -> axum::Router {
        let service = tower::service_fn(move |request: Request<Body>| {
            let connect = self.clone();
            let app = app.clone();
            async move {
                if connect.accepts(&request) {
                    Ok::<_, Infallible>(connect.handle(request).await)
                } else {
                    app.oneshot(request).await
                }
            }
        });
        axum::Router::new().fallback_service(service)
    }

    /// Answers one Connect call (see [`Connect::accepts`]).
    pub async fn handle(&self, request: Request<Body>) -> Response {
        let Some(kind) = Kind::of(request.headers()) else {
            return unsupported_media_type(None);
        };
        let method = split_path(request.uri().path()).and_then(|(service, method)| {
            self.inner
                .pool
                .get_service_by_name(service)
                .and_then(|s| s.methods().find(|m| m.name() == method))
        });
        let Some(method) = method else {
            let error = ConnectError::new(
                Code::Unimplemented,
                format!("no method {}", request.uri().path()),
            );
            return self.fail(kind, error);
        };
        if method.is_client_streaming() {
            let error = ConnectError::new(
                Code::Unimplemented,
                "client and bidirectional streams are served over gRPC only",
            );
            return self.fail(kind, error);
        }
        match (kind, method.is_server_streaming()) {
            (Kind::Unary(codec), false) => match self.unary(&method, codec, request).await {
                Ok(response) => response,
                Err(error) => self.fail(kind, error),
            },
            (Kind::Streaming(codec), true) => match self.streaming(&method, codec, request).await {
                Ok(response) => response,
                Err(error) => self.fail(kind, error),
            },
            (_, streams) => unsupported_media_type(Some(streams)),
        }
    }

    /// An error in the form `kind` answers with.
    fn fail(&self, kind: Kind, error: ConnectError) -> Response {
        match kind {
            Kind::Unary(_) => error.into_unary_response(&self.inner.pool),
            Kind::Streaming(_) => {
                let mut response = Response::new(Body::from(end_of_stream(
                    Some(&error),
                    &HeaderMap::new(),
                    &self.inner.pool,
                )));
                response.headers_mut().extend(*error.metadata);
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, kind.content_type());
                response
            }
        }
    }

    async fn unary(
        &self,
        method: &MethodDescriptor,
        codec: Codec,
        request: Request<Body>,
    ) -> Result<Response, ConnectError> {
        let (parts, body) = request.into_parts();
        check_version(&parts.headers)?;
        check_identity(&parts.headers, CONTENT_ENCODING)?;
        let deadline = deadline(&parts.headers)?;
        let work = async {
            let body = self.read_body(&parts.headers, body).await?;
            let message = decode(&method.input(), codec, &body)?;
            let answer = self
                .inner
                .invoker
                .unary(
                    method,
                    &message,
                    request_metadata(&parts.headers),
                    forwarded_extensions(&parts.extensions),
                    deadline,
                )
                .await
                .map_err(|s| ConnectError::from_status(&s))?;
            let mut response = Response::new(Body::from(encode(&answer.message, codec)?));
            response
                .headers_mut()
                .extend(error::metadata_headers(&answer.metadata));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, Kind::Unary(codec).content_type());
            Ok(response)
        };
        within(deadline, work).await
    }

    async fn streaming(
        &self,
        method: &MethodDescriptor,
        codec: Codec,
        request: Request<Body>,
    ) -> Result<Response, ConnectError> {
        let (parts, body) = request.into_parts();
        check_version(&parts.headers)?;
        check_identity(
            &parts.headers,
            HeaderName::from_static(STREAM_ENCODING_HEADER),
        )?;
        let deadline = deadline(&parts.headers)?;
        let start = async {
            let body = self.read_body(&parts.headers, body).await?;
            let (flags, payload) =
                envelope::single(&body).map_err(ConnectError::invalid_argument)?;
            if flags & envelope::FLAG_COMPRESSED != 0 {
                return Err(ConnectError::invalid_argument(
                    "a compressed message without connect-content-encoding",
                ));
            }
            let message = decode(&method.input(), codec, &payload)?;
            self.inner
                .invoker
                .server_streaming(
                    method,
                    &message,
                    request_metadata(&parts.headers),
                    forwarded_extensions(&parts.extensions),
                    deadline,
                )
                .await
                .map_err(|s| ConnectError::from_status(&s))
        };
        let (headers, frames) = within(deadline, start).await?;
        let pool = self.inner.pool.clone();
        let mut response = Response::new(Body::from_stream(messages(frames, codec, pool)));
        response
            .headers_mut()
            .extend(error::metadata_headers(&headers));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, Kind::Streaming(codec).content_type());
        Ok(response)
    }

    async fn read_body(&self, headers: &HeaderMap, body: Body) -> Result<Bytes, ConnectError> {
        let limit = self.inner.max_body_bytes;
        let too_large = || {
            ConnectError::new(
                Code::ResourceExhausted,
                format!("the request body is larger than {limit} bytes"),
            )
        };
        let declared = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        match http_body_util::Limited::new(body, limit).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
            Err(e) => Err(ConnectError::invalid_argument(format!(
                "cannot read the request body: {e}"
            ))),
        }
    }
}

/// `(service, method)` of `/<service>/<method>`.
fn split_path(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/'))
        .then_some((service, method))
}

/// 415, naming the content types the method takes (`streams`), when known.
fn unsupported_media_type(streams: Option<bool>) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
    let accepted = match streams {
        Some(true) => "application/connect+proto, application/connect+json",
        Some(false) => "application/proto, application/json",
        None => {
            "application/proto, application/json, application/connect+proto, application/connect+json"
        }
    };
    response
        .headers_mut()
        .insert("accept-post", HeaderValue::from_static(accepted));
    response
}

fn check_version(headers: &HeaderMap) -> Result<(), ConnectError> {
    match headers.get(PROTOCOL_VERSION_HEADER) {
        None => Ok(()),
        Some(v) if v == "1" => Ok(()),
        Some(v) => Err(ConnectError::invalid_argument(format!(
            "{PROTOCOL_VERSION_HEADER} must be 1, not {}",
            String::from_utf8_lossy(v.as_bytes())
        ))),
    }
}

/// Only uncompressed requests are taken.
fn check_identity(
    headers: &HeaderMap,
    name: impl http::header::AsHeaderName,
) -> Result<(), ConnectError> {
    match headers.get(name) {
        None => Ok(()),
        Some(v) if v.as_bytes().eq_ignore_ascii_case(b"identity") => Ok(()),
        Some(v) => Err(ConnectError::new(
            Code::Unimplemented,
            format!(
                "compression {} is not supported; send identity",
                String::from_utf8_lossy(v.as_bytes())
            ),
        )),
    }
}

/// The deadline `connect-timeout-ms` sets, counted from now.
fn deadline(headers: &HeaderMap) -> Result<Option<Instant>, ConnectError> {
    let Some(value) = headers.get(TIMEOUT_HEADER) else {
        return Ok(None);
    };
    parse_timeout(value.as_bytes())
        .map(|t| Some(Instant::now() + t))
        .ok_or_else(|| {
            ConnectError::invalid_argument(format!("{TIMEOUT_HEADER} must be 1 to 10 digits"))
        })
}

/// A `connect-timeout-ms` value: 1 to 10 ASCII digits of milliseconds.
pub fn parse_timeout(value: &[u8]) -> Option<Duration> {
    if value.is_empty() || value.len() > 10 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let millis: u64 = std::str::from_utf8(value).ok()?.parse().ok()?;
    Some(Duration::from_millis(millis))
}

async fn within<T>(
    deadline: Option<Instant>,
    work: impl Future<Output = Result<T, ConnectError>>,
) -> Result<T, ConnectError> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, work).await.unwrap_or_else(|_| {
            Err(ConnectError::new(
                Code::DeadlineExceeded,
                "deadline exceeded",
            ))
        }),
        None => work.await,
    }
}

/// The gRPC metadata of a Connect request: every header but the protocol's
/// own (and `grpc-*`, which the in-process call sets itself).
fn request_metadata(headers: &HeaderMap) -> HeaderMap {
    headers
        .iter()
        .filter(|(name, _)| {
            let name = name.as_str();
            !RESERVED_METADATA.contains(&name)
                && !name.starts_with("grpc-")
                && !name.starts_with("access-control-")
                && !name.starts_with("sec-")
        })
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_from_content_types() {
        let kind = |ct: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            Kind::of(&headers)
        };
        assert_eq!(kind("application/proto"), Some(Kind::Unary(Codec::Proto)));
        assert_eq!(
            kind("Application/JSON; charset=utf-8"),
            Some(Kind::Unary(Codec::Json))
        );
        assert_eq!(
            kind("application/connect+proto"),
            Some(Kind::Streaming(Codec::Proto))
        );
        assert_eq!(
            kind("application/connect+json"),
            Some(Kind::Streaming(Codec::Json))
        );
        for other in [
            "application/grpc",
            "application/grpc-web+proto",
            "text/plain",
        ] {
            assert_eq!(kind(other), None, "{other}");
        }
    }

    #[test]
    fn timeouts_and_paths() {
        assert_eq!(parse_timeout(b"250"), Some(Duration::from_millis(250)));
        assert_eq!(
            parse_timeout(b"9999999999"),
            Some(Duration::from_millis(9_999_999_999))
        );
        for bad in [&b""[..], b"12345678901", b"-1", b"1.5", b"10s"] {
            assert_eq!(parse_timeout(bad), None);
        }
        assert_eq!(split_path("/a.B/C"), Some(("a.B", "C")));
        for bad in ["/a.B", "/a.B/", "//C", "/a/B/C", "a.B/C"] {
            assert_eq!(split_path(bad), None, "{bad}");
        }
    }
}
