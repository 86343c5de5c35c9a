//! The harness's gRPC clients. [`connect`] is the only place they are made:
//! it mints an admin bearer token with the mesh's `AUTH_JWT_SECRET`
//! ([`ordermesh_testkit::tokens::admin_bearer`]; admins may act for every
//! customer and are not rate limited) and sends it on every call.

use std::net::SocketAddr;

use ordermesh_auth::Bearer;
use ordermesh_proto::order::v1::order_service_client::OrderServiceClient;
use ordermesh_proto::payment::v1::account_service_client::AccountServiceClient;
use ordermesh_testkit::mesh::healthy_channel;
use ordermesh_testkit::tokens::admin_bearer;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub type OrderClient = OrderServiceClient<InterceptedService<Channel, Bearer>>;
pub type AccountClient = AccountServiceClient<InterceptedService<Channel, Bearer>>;

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
    let bearer = admin_bearer(jwt_secret, "ordermesh-chaos");
    let orders = healthy_channel(order_addr).await?;
    let accounts = healthy_channel(processor_addr).await?;
    Ok(Clients {
        orders: OrderServiceClient::with_interceptor(orders, bearer.clone()),
        accounts: AccountServiceClient::with_interceptor(accounts, bearer),
    })
}
