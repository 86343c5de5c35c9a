//! The harness's gRPC clients. [`connect`] is the only place they are made:
//! it mints an admin bearer token with the mesh's `AUTH_JWT_SECRET`
//! ([`ordermesh_platform::auth::mint_hs256`]; admins may act for every
//! customer and are not rate limited) and sends it on every call.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::bail;
use ordermesh_platform::auth::{Bearer, Role, mint_hs256};
use ordermesh_proto::order::v1::order_service_client::OrderServiceClient;
use ordermesh_proto::payment::v1::account_service_client::AccountServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

pub type OrderClient = OrderServiceClient<InterceptedService<Channel, Bearer>>;
pub type AccountClient = AccountServiceClient<InterceptedService<Channel, Bearer>>;

/// Longer than any run.
const TOKEN_TTL: Duration = Duration::from_secs(4 * 3600);

/// Clients of both services; cheap to clone (one HTTP/2 connection each).
#[derive(Debug, Clone)]
pub struct Clients {
    pub orders: OrderClient,
    pub accounts: AccountClient,
}

/// Connects to order-svc and processor-svc once both report SERVING, as an
/// admin with a token signed by `jwt_secret`.
pub async fn connect(
    order_addr: SocketAddr,
    processor_addr: SocketAddr,
    jwt_secret: &str,
) -> anyhow::Result<Clients> {
    let bearer = Bearer::new(&mint_hs256(
        jwt_secret,
        "ordermesh-chaos",
        Role::Admin,
        TOKEN_TTL,
    ));
    let orders = healthy_channel(order_addr).await?;
    let accounts = healthy_channel(processor_addr).await?;
    Ok(Clients {
        orders: OrderServiceClient::with_interceptor(orders, bearer.clone()),
        accounts: AccountServiceClient::with_interceptor(accounts, bearer),
    })
}

/// A channel to `addr` once its gRPC health check says SERVING, retrying
/// for up to 90 s (a first start creates and migrates its database). The
/// channel reconnects by itself later, so a restarted server is found again.
pub async fn healthy_channel(addr: SocketAddr) -> anyhow::Result<Channel> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last_error = String::new();
    while Instant::now() < deadline {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true);
        match endpoint.connect().await {
            Ok(channel) => {
                let check = HealthClient::new(channel.clone())
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await;
                match check {
                    Ok(r) if r.get_ref().status == ServingStatus::Serving as i32 => {
                        return Ok(channel);
                    }
                    Ok(r) => last_error = format!("status {:?}", r.get_ref().status),
                    Err(e) => last_error = e.to_string(),
                }
            }
            Err(e) => last_error = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{addr} never became healthy: {last_error}")
}
