//! Starts the three binaries on free ports with a fresh pair of databases
//! and a unique exchange, and connects gRPC clients to them. The services
//! verify bearer tokens with [`AUTH_SECRET`]; [`Mesh::orders`] and
//! [`Mesh::accounts`] act as an admin.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use ordermesh_platform::auth::{Bearer, Role};
use ordermesh_platform::testing::{TestBroker, TestDatabase};
use ordermesh_proto::order::v1::order_service_client::OrderServiceClient;
use ordermesh_proto::payment::v1::account_service_client::AccountServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub const BINARIES: [&str; 3] = ["order-svc", "processor-svc", "relay"];

/// The HS256 secret (`AUTH_JWT_SECRET`) of every binary the mesh starts.
pub const AUTH_SECRET: &str = "e2e-tests-hs256-secret-0123456789abcdef";

/// An OrderService client sending a bearer token.
pub type Orders = OrderServiceClient<InterceptedService<Channel, Bearer>>;
/// An AccountService client sending a bearer token.
pub type Accounts = AccountServiceClient<InterceptedService<Channel, Bearer>>;

/// A token for `subject` as `role`, signed with [`AUTH_SECRET`].
pub fn token(subject: &str, role: Role) -> String {
    ordermesh_platform::auth::mint_hs256(AUTH_SECRET, subject, role, Duration::from_secs(3600))
}

/// A token that acts for every customer.
pub fn admin_token() -> String {
    token("e2e-admin", Role::Admin)
}

/// The built binary `name`, next to this test's own `deps` directory.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --bins` first",
        path.display()
    );
    path
}

fn free_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

pub struct Mesh {
    // Held so the databases and broker names are removed when the mesh is;
    // tests may look into them.
    _orders_db: TestDatabase,
    pub processor_db: TestDatabase,
    _broker: TestBroker,
    pub env: HashMap<&'static str, String>,
    pub order_addr: String,
    pub processor_addr: String,
    pub children: HashMap<&'static str, Child>,
}

impl Mesh {
    /// Starts all three binaries with `extra` environment on top, and waits
    /// until both services answer.
    pub async fn start(extra: &[(&'static str, &str)]) -> Self {
        let orders_db = TestDatabase::new();
        let processor_db = TestDatabase::new();
        let broker = TestBroker::new();
        let order_addr = free_addr();
        let processor_addr = free_addr();
        let mut env = HashMap::from([
            ("ORDER_SVC_ADDR", order_addr.clone()),
            ("PROCESSOR_SVC_ADDR", processor_addr.clone()),
            ("RELAY_ADMIN_ADDR", free_addr()),
            ("ORDER_DATABASE_URL", orders_db.url.clone()),
            ("PROCESSOR_DATABASE_URL", processor_db.url.clone()),
            (
                "RELAY_SOURCES",
                format!("{},{}", orders_db.url, processor_db.url),
            ),
            ("AMQP_URL", broker.config.url.expose().to_owned()),
            ("AMQP_EXCHANGE", broker.config.exchange.clone()),
            ("ORDER_QUEUE", broker.queue("order-svc.payment-results")),
            (
                "PROCESSOR_QUEUE",
                broker.queue("processor-svc.order-created"),
            ),
            ("RUST_LOG", "warn".to_owned()),
            ("AUTH_JWT_SECRET", AUTH_SECRET.to_owned()),
        ]);
        for (k, v) in extra {
            env.insert(k, (*v).to_owned());
        }
        let mut mesh = Self {
            _orders_db: orders_db,
            processor_db,
            _broker: broker,
            env,
            order_addr,
            processor_addr,
            children: HashMap::new(),
        };
        for name in BINARIES {
            mesh.spawn(name);
        }
        mesh.orders().await;
        mesh.accounts().await;
        mesh
    }

    pub fn spawn(&mut self, name: &'static str) {
        let child = Command::new(binary(name))
            .envs(&self.env)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        self.children.insert(name, child);
    }

    /// Sends SIGTERM to `name` and waits for it to exit, up to `timeout`.
    pub fn terminate(&mut self, name: &str, timeout: Duration) -> ExitStatus {
        let mut child = self.children.remove(name).expect("running");
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{name} did not exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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
        OrderServiceClient::with_interceptor(connect(&self.order_addr).await, Bearer::new(token))
    }

    /// An AccountService client sending `token`.
    pub async fn accounts_as(&self, token: &str) -> Accounts {
        AccountServiceClient::with_interceptor(
            connect(&self.processor_addr).await,
            Bearer::new(token),
        )
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for (_, mut child) in self.children.drain() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Connects to `addr` once its gRPC health check says SERVING, retrying
/// while the binary starts (up to 60 s: the first start creates and
/// migrates its database).
async fn connect(addr: &str) -> Channel {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last_error = String::new();
    while Instant::now() < deadline {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(2));
        match endpoint.connect().await {
            Ok(channel) => {
                let check = HealthClient::new(channel.clone())
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await;
                match check {
                    Ok(r) if r.get_ref().status == ServingStatus::Serving as i32 => return channel,
                    Ok(r) => last_error = format!("status {:?}", r.get_ref().status),
                    Err(e) => last_error = e.to_string(),
                }
            }
            Err(e) => last_error = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{addr} never became healthy: {last_error}");
}
