//! The test kit's mesh launcher ([`ordermesh_testkit::mesh`]) as the
//! end-to-end tests use it: the three debug binaries started at once on free
//! ports with a fresh pair of databases and a unique exchange, `RUST_LOG`
//! at `warn`, stderr into the test's own. The services verify bearer tokens
//! with [`AUTH_SECRET`]; [`Mesh::orders`] and [`Mesh::accounts`] act as an
//! admin. Failures panic, as a test's should.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use ordermesh_auth::{Bearer, Role};
use ordermesh_proto::order::v1::order_service_client::OrderServiceClient;
use ordermesh_proto::payment::v1::account_service_client::AccountServiceClient;
use ordermesh_testkit::MeshOptions;
use ordermesh_testkit::mesh::{self, endpoint, healthy};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub use ordermesh_testkit::mesh::BINARIES;
/// The HS256 secret (`AUTH_JWT_SECRET`) of every binary the mesh starts.
pub use ordermesh_testkit::tokens::TEST_SECRET as AUTH_SECRET;
/// A token for `subject` as `role`, signed with [`AUTH_SECRET`].
pub use ordermesh_testkit::tokens::token;

/// An OrderService client sending a bearer token.
pub type Orders = OrderServiceClient<InterceptedService<Channel, Bearer>>;
/// An AccountService client sending a bearer token.
pub type Accounts = AccountServiceClient<InterceptedService<Channel, Bearer>>;

/// A token that acts for every customer.
pub fn admin_token() -> String {
    token("e2e-admin", Role::Admin)
}

/// The built binary `name` (`cargo build --bins`), beside this test's own
/// `deps` directory.
pub fn binary(name: &str) -> PathBuf {
    let path = MeshOptions::test_bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --bins` first",
        path.display()
    );
    path
}

/// A running mesh; the test kit's (databases, broker, environment,
/// processes) through `Deref`, with the services' addresses as text.
pub struct Mesh {
    mesh: mesh::Mesh,
    pub order_addr: String,
    pub processor_addr: String,
}

impl Mesh {
    /// Starts all three binaries with `extra` environment on top, and waits
    /// until both services answer.
    pub async fn start(extra: &[(&str, &str)]) -> Self {
        let mut mesh = mesh::Mesh::prepare(MeshOptions {
            rust_log: "warn",
            jwt_secret: AUTH_SECRET.to_owned(),
            env: extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..MeshOptions::new(MeshOptions::test_bin_dir())
        })
        .expect("name the mesh");
        mesh.start().await.expect("start the mesh");
        Self {
            order_addr: mesh.order_addr.to_string(),
            processor_addr: mesh.processor_addr.to_string(),
            mesh,
        }
    }

    /// Starts `name` again, with [`mesh::Mesh::env`] as it is now.
    pub fn spawn(&mut self, name: &str) {
        self.mesh
            .spawn(name)
            .unwrap_or_else(|e| panic!("start {name}: {e:#}"));
    }

    /// Sends SIGTERM to `name` and waits for it to exit, up to `timeout`.
    pub async fn terminate(&mut self, name: &str, timeout: Duration) -> ExitStatus {
        self.mesh
            .terminate(name, timeout)
            .await
            .unwrap_or_else(|| panic!("{name} did not exit within {timeout:?} of SIGTERM"))
    }

    /// An OrderService client acting as an admin.
    pub async fn orders(&self) -> Orders {
        self.orders_as(&admin_token()).await
    }

    /// An AccountService client acting as an admin.
    pub async fn accounts(&self) -> Accounts {
        self.accounts_as(&admin_token()).await
    }

    /// An OrderService client sending `token`.
    pub async fn orders_as(&self, token: &str) -> Orders {
        let channel = connect(self.mesh.order_addr).await;
        OrderServiceClient::with_interceptor(channel, Bearer::new(token))
    }

    /// An AccountService client sending `token`.
    pub async fn accounts_as(&self, token: &str) -> Accounts {
        let channel = connect(self.mesh.processor_addr).await;
        AccountServiceClient::with_interceptor(channel, Bearer::new(token))
    }
}

ordermesh_testkit::extends_mesh!(Mesh, mesh);

/// A channel to `addr` once its gRPC health check says SERVING; every call
/// on it times out after 2 s.
async fn connect(addr: std::net::SocketAddr) -> Channel {
    healthy(endpoint(addr).timeout(Duration::from_secs(2)))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
}
