//! The relay's HTTP admin listener: `GET /healthz` (alive), `GET /readyz`
//! (every source database and the broker reachable) and `GET /metrics`
//! (Prometheus), from [`ordermesh_platform::health`]; over TLS only when
//! the relay has a certificate (`TLS_CERT_FILE`, `TLS_KEY_FILE`).

use anyhow::Context;
use ordermesh_platform::health::{Readiness, ops_router};
use ordermesh_platform::tls::{ServerTls, TlsIncoming};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves the admin routes until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    tls: Option<ServerTls>,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let routes = ops_router(readiness);
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
