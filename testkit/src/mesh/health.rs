//! Waiting for a gRPC server to serve.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::bail;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// How long a binary may take to serve: a first start creates and migrates
/// its database.
pub const START_PATIENCE: Duration = Duration::from_secs(90);

/// The endpoint harnesses use for `addr`: plain HTTP/2, 1 s to connect.
pub fn endpoint(addr: SocketAddr) -> Endpoint {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("a socket address is a valid URI")
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
}

/// A channel to `endpoint` once its gRPC health check says SERVING,
/// retrying for up to [`START_PATIENCE`]. The channel reconnects by itself
/// later, so a restarted server is found again.
pub async fn healthy(endpoint: Endpoint) -> anyhow::Result<Channel> {
    let deadline = Instant::now() + START_PATIENCE;
    let mut last_error = String::new();
    while Instant::now() < deadline {
        match serving(&endpoint, "").await {
            Ok(channel) => return Ok(channel),
            Err(e) => last_error = e,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{} never became healthy: {last_error}", endpoint.uri())
}

/// One try: a channel to `endpoint` if its gRPC health check says
/// `service` (`""`: the whole server) is SERVING, else why not.
pub async fn serving(endpoint: &Endpoint, service: &str) -> Result<Channel, String> {
    let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
    let check = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map_err(|e| e.to_string())?;
    match check.get_ref().status {
        s if s == ServingStatus::Serving as i32 => Ok(channel),
        s => Err(format!("status {s:?}")),
    }
}

/// [`healthy`] on the harnesses' [`endpoint`] for `addr`.
pub async fn healthy_channel(addr: SocketAddr) -> anyhow::Result<Channel> {
    healthy(endpoint(addr)).await
}
