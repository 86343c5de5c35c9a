//! Serving a gRPC service the ordermesh way: reflection (v1 and v1alpha,
//! since grpcurl 1.8 speaks only v1alpha), `grpc.health.v1`, REST/JSON
//! transcoding on the same port ([`crate::rest`]), a server span and RPC
//! metrics per call ([`crate::observe`]), and graceful shutdown on a token,
//! on a listener the caller bound. HTTP/1.1 is accepted beside HTTP/2 for
//! REST and the operational routes ([`crate::health::with_ops_routes`]),
//! in plaintext or, given a [`ServerTls`], over TLS only.

use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

use crate::tls::{ServerTls, TlsIncoming};

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
/// `tls`, every connection must be TLS (ALPN `h2` or `http/1.1`).
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    tls: Option<ServerTls>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let routes = reflection_routes(routes)?;
    // REST/JSON for the annotated methods, /openapi.json and /docs, as the
    // fallback of the same router (see crate::rest).
    let rest_config = crate::rest::RestConfig::from_env(&crate::config::ProcessEnv)?;
    let routes = Routes::from(
        crate::rest::with_rest(routes.into_axum_router(), rest_config)
            .await
            .context("build the REST gateway")?,
    );
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .tcp_nodelay(true)
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        // HTTP/1.1 too: Prometheus and probes call /metrics, /readyz over it.
        .accept_http1(true)
        // A server span, RPC metrics and the trace id on every response.
        .layer(crate::observe::ObserveLayer)
        .add_routes(routes);
    match tls {
        None => {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
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
