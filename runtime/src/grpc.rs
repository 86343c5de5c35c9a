//! Serving a gRPC service the ordermesh way: reflection (v1 and v1alpha,
//! since grpcurl 1.8 speaks only v1alpha), `grpc.health.v1`, REST/JSON
//! transcoding on the same port ([`ordermesh_gateway::rest`]), a server span and RPC
//! metrics per call ([`crate::observe`]), and graceful shutdown on a token,
//! on a listener the caller bound. HTTP/1.1 is accepted beside HTTP/2 for
//! REST and the operational routes ([`crate::health::with_ops_routes`]),
//! in plaintext or, given a [`ServerTls`], over TLS only.
//!
//! One port speaks every protocol a client may use; requests are told
//! apart by their content type:
//!
//! - `application/grpc*`: gRPC, served by tonic.
//! - `application/grpc-web*` (binary and `-text`): gRPC-Web, translated to
//!   gRPC by `tonic-web` before the call is observed and routed.
//! - `application/proto`, `application/json`, `application/connect+*`
//!   POSTed to `/<pkg.Service>/<Method>`: Connect ([`ordermesh_gateway::connect`]).
//! - anything else: REST/JSON, `/openapi.json`, `/docs` and the
//!   operational routes.
//!
//! CORS ([`ordermesh_gateway::cors`]) answers preflights in front of all of them.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tower::{Layer, Service};

use crate::tls::{ServerTls, TlsIncoming};
use ordermesh_gateway::cors::CorsConfig;

/// Largest header block an HTTP/2 request may carry. hyper's default,
/// 16 KiB, refuses the largest valid W3C `tracestate` (32 members of
/// 256-byte keys and values, 16,447 bytes) with a bare 431, which gRPC
/// clients see as UNKNOWN, while HTTP/1.1 takes it. 64 KiB admits any valid
/// trace context and still bounds a request; what is kept of the trace
/// context is bounded again ([`crate::propagation::bound_tracestate`]).
pub const MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;

/// Reflection services over the ordermesh descriptor set.
pub fn reflection_routes(routes: Routes) -> anyhow::Result<Routes> {
    let v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ordermesh_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("build reflection v1")?;
    let v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ordermesh_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("build reflection v1alpha")?;
    Ok(routes.add_service(v1).add_service(v1alpha))
}

/// Serves `routes` (plus reflection) on `listener` until `shutdown` fires,
/// then stops accepting and waits for in-flight calls to finish. With
/// `tls`, every connection must be TLS (ALPN `h2` or `http/1.1`). No CORS:
/// see [`serve_with`].
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    tls: Option<ServerTls>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve_with(listener, routes, tls, CorsConfig::default(), shutdown).await
}

/// [`serve`], with CORS headers for the origins `cors` allows.
pub async fn serve_with(
    listener: TcpListener,
    routes: Routes,
    tls: Option<ServerTls>,
    cors: CorsConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let routes = reflection_routes(routes)?;
    let grpc = routes.into_axum_router();
    // REST/JSON for the annotated methods, /openapi.json and /docs as the
    // fallback of the same router, Connect in front (ordermesh_gateway).
    let rest_config = rest_config(&crate::config::ProcessEnv)?;
    let app = ordermesh_gateway::attach(grpc, ordermesh_proto::FILE_DESCRIPTOR_SET, rest_config)
        .await
        .context("build the REST gateway and Connect")?;
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .tcp_nodelay(true)
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        // HTTP/1.1 too: Prometheus and probes call /metrics, /readyz over it,
        // browsers call gRPC-Web, Connect and REST over it.
        .accept_http1(true)
        // Preflights and CORS headers, outermost, when origins are allowed.
        .layer(tower::util::option_layer(cors.layer()))
        // gRPC-Web becomes gRPC here, so it is observed and routed as gRPC.
        .layer(GrpcWebLayer)
        // A server span, RPC metrics and the trace id on every response.
        .layer(crate::observe::ObserveLayer)
        .add_routes(Routes::from(app));
    match tls {
        None => {
            // tonic's own handling of accept errors is to retry at once.
            let incoming = futures::stream::unfold(listener, |listener| async move {
                loop {
                    if let Some((tcp, _)) = accepted(listener.accept().await).await {
                        return Some((Ok::<_, std::io::Error>(tcp), listener));
                    }
                }
            });
            router
                .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
                .await
        }
        Some(tls) => {
            let incoming = TlsIncoming::new(listener, &tls).context("listen for TLS")?;
            router
                .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
                .await
        }
    }
    .context("serve gRPC")
}

/// One `accept` as both listeners (plaintext here, TLS in
/// [`crate::tls`]) take it: the connection, or `None` to accept again.
///
/// - `TCP_NODELAY`: tonic's `tcp_nodelay` applies only to a listener it
///   opens itself, not to connections handed in. Without it, Nagle's
///   algorithm holds a stream's next message until the client's ACK,
///   several milliseconds on a quiet connection (measured: WatchOrder's
///   PAID reached the client 6 ms, p50, after the server sent it).
/// - A failed accept pauses, as hyper's does: accepting again at once, out
///   of file descriptors (a flood of connections), would spin on both
///   cores until one frees. A peer that gave up before it was accepted is
///   no reason to pause.
pub(crate) async fn accepted(
    result: std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)>,
) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionReset};
    match result {
        Ok((tcp, peer)) => {
            let _ = tcp.set_nodelay(true);
            Some((tcp, peer))
        }
        Err(e) if matches!(e.kind(), ConnectionAborted | ConnectionReset) => None,
        Err(e) => {
            tracing::warn!(error = %e, "accepting a connection failed; pausing");
            tokio::time::sleep(Duration::from_millis(100)).await;
            None
        }
    }
}

/// Largest REST or Connect request body; a larger one is refused with 413.
pub const ENV_REST_MAX_BODY_BYTES: &str = "REST_MAX_BODY_BYTES";
/// Comma-separated origins (`https://app.example.com,http://localhost:5173`)
/// whose pages may call the port from a browser; none by default.
pub const ENV_CORS_ALLOWED_ORIGINS: &str = "CORS_ALLOWED_ORIGINS";

/// The REST gateway of an ordermesh service: its body limit from
/// [`ENV_REST_MAX_BODY_BYTES`]; AuthService's operations need no token.
pub fn rest_config(
    env: &impl crate::config::Env,
) -> Result<ordermesh_gateway::rest::RestConfig, crate::config::ConfigError> {
    use ordermesh_gateway::rest::{DEFAULT_MAX_BODY_BYTES, RestConfig};
    use ordermesh_proto::auth::v1::auth_service_server::SERVICE_NAME as AUTH_SERVICE;
    let max_body_bytes =
        crate::config::parse(env, ENV_REST_MAX_BODY_BYTES, DEFAULT_MAX_BODY_BYTES)?;
    if max_body_bytes == 0 {
        let reason = "must be at least 1";
        return Err(crate::config::invalid(ENV_REST_MAX_BODY_BYTES, 0, reason));
    }
    Ok(RestConfig {
        max_body_bytes,
        title: "ordermesh".to_owned(),
        public_services: vec![AUTH_SERVICE.to_owned()],
        bearer_description:
            "A token from AuthService (`/v1/auth:login`) or `processor-svc token`; \
            missing or invalid: 401, over the rate limit: 429 with `Retry-After`."
                .to_owned(),
        ..RestConfig::default()
    })
}

/// The origins of [`ENV_CORS_ALLOWED_ORIGINS`].
pub fn cors_config(
    env: &impl crate::config::Env,
) -> Result<CorsConfig, crate::config::ConfigError> {
    let list = crate::config::string(env, ENV_CORS_ALLOWED_ORIGINS, "");
    CorsConfig::parse(&list).map_err(|(origin, reason)| {
        crate::config::invalid(ENV_CORS_ALLOWED_ORIGINS, origin, reason)
    })
}

/// Sends gRPC-Web requests (`application/grpc-web`, `+proto`, `-text`)
/// through `tonic-web`'s translation and every other request straight on.
/// (`tonic-web` on its own answers 400 to any other HTTP/1.1 request, which
/// would take REST and the operational routes off HTTP/1.1.)
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcWebLayer;

impl<S> Layer<S> for GrpcWebLayer {
    type Service = GrpcWeb<S>;

    fn layer(&self, inner: S) -> GrpcWeb<S> {
        GrpcWeb { inner }
    }
}

/// See [`GrpcWebLayer`].
#[derive(Debug, Clone)]
pub struct GrpcWeb<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, RB> Service<http::Request<tonic::body::Body>> for GrpcWeb<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<RB>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
    RB::Error: Into<tower::BoxError> + std::fmt::Display,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        // The clone is fresh (not ready); keep the driven one for this call.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let grpc_web = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc-web"));
        if grpc_web {
            let mut web = tonic_web::GrpcWebLayer::new().layer(inner);
            Box::pin(web.call(request))
        } else {
            let mut inner = inner;
            let call = inner.call(request);
            Box::pin(async move {
                call.await
                    .map(|response| response.map(tonic::body::Body::new))
            })
        }
    }
}

/// `INVALID_ARGUMENT` naming `field`, with a `google.rpc.BadRequest` detail
/// so clients can point at the field.
pub fn invalid_field(field: &str, description: impl Into<String>) -> tonic::Status {
    use tonic_types::{ErrorDetails, StatusExt};
    let description = description.into();
    let details = ErrorDetails::with_bad_request_violation(field, description.clone());
    tonic::Status::with_error_details(
        tonic::Code::InvalidArgument,
        format!("invalid {field}: {description}"),
        details,
    )
}

/// A health reporter with `service` (and the overall server, "") serving.
pub async fn health(
    service: &str,
) -> (
    tonic_health::server::HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    let (reporter, server) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(service, tonic_health::ServingStatus::Serving)
        .await;
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    (reporter, server)
}

/// Largest request message a service decodes; a larger one is refused with
/// RESOURCE_EXHAUSTED (tonic says OUT_OF_RANGE; [`crate::observe`] fixes it).
pub const ENV_MAX_MESSAGE_BYTES: &str = "GRPC_MAX_MESSAGE_BYTES";
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// [`ENV_MAX_MESSAGE_BYTES`]: a positive number of bytes.
pub fn max_message_bytes(
    env: &impl crate::config::Env,
) -> Result<usize, crate::config::ConfigError> {
    let limit = crate::config::parse(env, ENV_MAX_MESSAGE_BYTES, DEFAULT_MAX_MESSAGE_BYTES)?;
    if limit == 0 {
        return Err(crate::config::invalid(
            ENV_MAX_MESSAGE_BYTES,
            0,
            "must be at least 1",
        ));
    }
    Ok(limit)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(name: &str, value: &str) -> HashMap<String, String> {
        HashMap::from([(name.to_owned(), value.to_owned())])
    }

    #[test]
    fn rest_body_limit_from_env() {
        let limit = |v| rest_config(&env(ENV_REST_MAX_BODY_BYTES, v)).map(|c| c.max_body_bytes);
        assert_eq!(limit("").unwrap(), 4 * 1024 * 1024);
        assert_eq!(limit("1024").unwrap(), 1024);
        for bad in ["0", "-1", "lots"] {
            assert_eq!(limit(bad).unwrap_err().name, ENV_REST_MAX_BODY_BYTES);
        }
        let config = rest_config(&env(ENV_REST_MAX_BODY_BYTES, "")).unwrap();
        assert_eq!(config.public_services, ["ordermesh.auth.v1.AuthService"]);
    }

    #[test]
    fn cors_origins_from_env() {
        let origins = |v| cors_config(&env(ENV_CORS_ALLOWED_ORIGINS, v));
        assert!(origins("").unwrap().allowed_origins.is_empty());
        assert_eq!(
            origins("http://localhost:5173")
                .unwrap()
                .allowed_origins
                .len(),
            1
        );
        let err = origins("https://a.example, *").unwrap_err();
        assert_eq!(
            (err.name.as_str(), err.value.as_str()),
            (ENV_CORS_ALLOWED_ORIGINS, "*")
        );
    }

    #[tokio::test]
    async fn accepted_connections_send_at_once_and_failed_accepts_pause() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (tcp, peer) = listener.accept().await.unwrap();
        assert!(
            !tcp.nodelay().unwrap(),
            "accepted sockets start with Nagle on"
        );
        let (tcp, _) = accepted(Ok((tcp, peer))).await.unwrap();
        assert!(tcp.nodelay().unwrap());

        let start = tokio::time::Instant::now();
        let gave_up = std::io::Error::from(std::io::ErrorKind::ConnectionAborted);
        assert!(accepted(Err(gave_up)).await.is_none());
        assert!(start.elapsed() < Duration::from_millis(50));
        let out_of_files = std::io::Error::from_raw_os_error(24); // EMFILE
        assert!(accepted(Err(out_of_files)).await.is_none());
        assert!(start.elapsed() >= Duration::from_millis(100));
    }
}
