//! The relay's HTTP admin listener: `GET /healthz` (alive), `GET /readyz`
//! (every source database and the broker reachable) and `GET /metrics`
//! (Prometheus), from [`ordermesh_platform::health`].

use anyhow::Context;
use ordermesh_platform::health::{Readiness, ops_router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves the admin routes until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    axum::serve(listener, ops_router(readiness))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .context("serve the admin listener")
}
