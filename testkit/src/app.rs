//! A service run in-process, the way each service's `spawn_app()` starts
//! it: on its own listener, stopped by a cancellation token, awaited until
//! its gRPC health check says SERVING (its database migrated, its consumer
//! connected).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use crate::eventually;
use crate::mesh::serving;

/// A service task and how to reach and stop it.
pub struct RunningApp {
    /// Where it listens.
    pub addr: SocketAddr,
    /// A connection to it, SERVING when returned.
    pub channel: Channel,
    /// Cancelled to stop it.
    pub shutdown: CancellationToken,
    /// What its `run` returns.
    pub task: JoinHandle<anyhow::Result<()>>,
}

/// Binds `addr` (port 0: a free one), spawns `run(listener, shutdown)` and
/// waits up to `patience` until `service` (its name in gRPC health) is
/// SERVING. Panics, with how `run` ended, if it stops first.
pub async fn serve<F>(
    addr: SocketAddr,
    service: &str,
    patience: Duration,
    run: impl FnOnce(TcpListener, CancellationToken) -> F,
) -> RunningApp
where
    F: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let listener = TcpListener::bind(addr).await.expect("bind a port");
    let addr = listener.local_addr().expect("the bound address");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run(listener, shutdown.clone()));
    let endpoint = Endpoint::from_shared(format!("http://{addr}")).expect("a valid URI");
    let channel = eventually(patience, || async {
        if task.is_finished() {
            return Some(None);
        }
        let attempt = tokio::time::timeout(Duration::from_secs(2), serving(&endpoint, service));
        attempt.await.ok()?.ok().map(Some)
    })
    .await;
    match channel {
        Some(Some(channel)) => RunningApp {
            addr,
            channel,
            shutdown,
            task,
        },
        Some(None) => panic!("{service} stopped while starting: {:?}", task.await),
        None => panic!("{service} did not become healthy within {patience:?}"),
    }
}

/// Cancels `shutdown` and returns what the service's `run` returned
/// (waiting up to 15 s for it).
pub async fn stop(
    shutdown: &CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("run returns after shutdown")
        .expect("run does not panic")
}
