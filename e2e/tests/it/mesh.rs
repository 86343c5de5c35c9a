//! Starts the three binaries on free ports with a fresh pair of databases
//! and a unique exchange, and connects gRPC clients to them.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use ordermesh_platform::testing::{TestBroker, TestDatabase};
use ordermesh_proto::order::v1::order_service_client::OrderServiceClient;
use ordermesh_proto::payment::v1::account_service_client::AccountServiceClient;
use tonic::transport::Channel;

pub const BINARIES: [&str; 3] = ["order-svc", "processor-svc", "relay"];

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

    pub async fn orders(&self) -> OrderServiceClient<Channel> {
        OrderServiceClient::new(connect(&self.order_addr).await)
    }

    pub async fn accounts(&self) -> AccountServiceClient<Channel> {
        AccountServiceClient::new(connect(&self.processor_addr).await)
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
