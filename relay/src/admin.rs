//! The relay's HTTP admin listener: `GET /healthz` (alive), `GET /readyz`
//! (every source database and the broker reachable) and `GET /metrics`
//! (Prometheus), from [`ordermesh_runtime::health`], and `GET
//! /asyncapi.json`, the events' contract ([`crate::asyncapi`]); over TLS
//! only when the relay has a certificate (`TLS_CERT_FILE`, `TLS_KEY_FILE`).

use anyhow::Context;
use ordermesh_runtime::health::{Readiness, ops_router};
use ordermesh_runtime::tls::{ServerTls, TlsIncoming};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves the admin routes until `shutdown`; `exchange` is the events
/// exchange the AsyncAPI document names.
pub async fn serve(
    listener: TcpListener,
    tls: Option<ServerTls>,
    readiness: Readiness,
    exchange: String,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let asyncapi = crate::asyncapi::route(&exchange).context("build the AsyncAPI document")?;
    let routes = ops_router(readiness).route(crate::asyncapi::PATH, asyncapi);
    match tls {
        None => {
            axum::serve(listener, routes)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        }
        Some(tls) => {
            let incoming = TlsIncoming::new(listener, &tls).context("listen for TLS")?;
            axum::serve(incoming, routes)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        }
    }
    .context("serve the admin listener")
}
