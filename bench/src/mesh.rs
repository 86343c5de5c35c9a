//! The system under test: the three release binaries on free ports, with
//! fresh databases (`om_test_*`), a fresh exchange and queues
//! (`om-test-*`), the way `deploy/local/readme-smoke.sh` runs them. A third
//! source database, the probe database, is the bench's own: the relay
//! serves it too, so relay latency and drain rate are measured on the same
//! relay process. Everything is removed when the mesh is dropped.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use ordermesh_platform::auth::{Bearer, Role, mint_hs256};
use ordermesh_platform::testing::{TestBroker, TestDatabase};
use ordermesh_proto::order::v1::order_service_client::OrderServiceClient;
use ordermesh_proto::payment::v1::account_service_client::AccountServiceClient;
use tokio::process::{Child, Command};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

pub const BINARIES: [&str; 3] = ["order-svc", "processor-svc", "relay"];

pub type Orders = OrderServiceClient<InterceptedService<Channel, Bearer>>;
pub type Accounts = AccountServiceClient<InterceptedService<Channel, Bearer>>;

pub struct Mesh {
    pub orders_db: TestDatabase,
    pub processor_db: TestDatabase,
    /// The bench's own outbox, relayed by the same relay.
    pub probe_db: TestDatabase,
    pub broker: TestBroker,
    pub order_addr: SocketAddr,
    pub processor_addr: SocketAddr,
    pub env: HashMap<String, String>,
    /// The bench's admin token, sent with every call of its clients (admin
    /// tokens are not rate limited, so the load is what the bench offers).
    pub bearer: Bearer,
    children: Vec<(&'static str, Child)>,
    bin_dir: PathBuf,
    log_dir: PathBuf,
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

impl Mesh {
    /// Names everything; starts nothing yet.
    pub async fn prepare(
        bin_dir: &Path,
        log_dir: &Path,
        extra_env: &[(String, String)],
    ) -> anyhow::Result<Self> {
        for name in BINARIES {
            let path = bin_dir.join(name);
            if !path.exists() {
                bail!(
                    "{} is missing: run `cargo build --release --bins` first",
                    path.display()
                );
            }
        }
        std::fs::create_dir_all(log_dir)?;
        let orders_db = TestDatabase::new();
        let processor_db = TestDatabase::new();
        let probe_db = TestDatabase::create().await;
        let broker = TestBroker::new();
        let order_addr = free_addr()?;
        let processor_addr = free_addr()?;
        let secret = format!("bench-{}", uuid::Uuid::new_v4().simple());
        let token = mint_hs256(
            &secret,
            "bench",
            Role::Admin,
            Duration::from_secs(24 * 3600),
        );
        let bearer = Bearer::new(&token);
        let mut env: HashMap<String, String> = [
            ("ORDER_SVC_ADDR", order_addr.to_string()),
            ("PROCESSOR_SVC_ADDR", processor_addr.to_string()),
            ("RELAY_ADMIN_ADDR", free_addr()?.to_string()),
            ("ORDER_DATABASE_URL", orders_db.url.clone()),
            ("PROCESSOR_DATABASE_URL", processor_db.url.clone()),
            (
                "RELAY_SOURCES",
                format!("{},{},{}", orders_db.url, processor_db.url, probe_db.url),
            ),
            ("AMQP_URL", broker.config.url.expose().to_owned()),
            ("AMQP_EXCHANGE", broker.config.exchange.clone()),
            ("ORDER_QUEUE", broker.queue("order-svc.payment-results")),
            (
                "PROCESSOR_QUEUE",
                broker.queue("processor-svc.order-created"),
            ),
            ("RUST_LOG", "info".to_owned()),
            ("AUTH_JWT_SECRET", secret),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        for (k, v) in extra_env {
            env.insert(k.clone(), v.clone());
        }
        Ok(Self {
            orders_db,
            processor_db,
            probe_db,
            broker,
            order_addr,
            processor_addr,
            env,
            bearer,
            children: Vec::new(),
            bin_dir: bin_dir.to_owned(),
            log_dir: log_dir.to_owned(),
        })
    }

    /// Migrates the probe database, starts the services, waits until they
    /// serve, then starts the relay and waits until it leases every
    /// partition of every source.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        let probe = ordermesh_platform::db::pool(self.probe_db.url.parse()?, 1)?;
        ordermesh_platform::db::migrate(&probe, refinery::Runner::new(&[]))
            .await
            .context("migrate the probe database")?;
        probe.close();
        self.spawn("order-svc")?;
        self.spawn("processor-svc")?;
        connect(self.order_addr).await?;
        connect(self.processor_addr).await?;
        self.spawn("relay")?;
        let dbs: Vec<(String, String)> = [&self.orders_db, &self.processor_db, &self.probe_db]
            .iter()
            .map(|d| (d.name.clone(), d.url.clone()))
            .collect();
        for (name, url) in dbs {
            let deadline = Instant::now() + Duration::from_secs(60);
            while leased_partitions(&url).await.unwrap_or(0) < 64 {
                if Instant::now() > deadline {
                    bail!("the relay never leased the partitions of {name}");
                }
                self.check_alive()?;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    fn spawn(&mut self, name: &'static str) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.log_dir.join(format!("{name}.log")))?;
        let child = Command::new(self.bin_dir.join(name))
            .envs(&self.env)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {name}"))?;
        self.children.push((name, child));
        Ok(())
    }

    /// Fails when a binary exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for (name, child) in &mut self.children {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{name} exited ({status}); see {}/{name}.log",
                    self.log_dir.display()
                );
            }
        }
        Ok(())
    }

    pub fn orders(&self, channel: Channel) -> Orders {
        OrderServiceClient::with_interceptor(channel, self.bearer.clone())
    }

    pub fn accounts(&self, channel: Channel) -> Accounts {
        AccountServiceClient::with_interceptor(channel, self.bearer.clone())
    }

    /// Pids of the running binaries.
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        self.children
            .iter()
            .filter_map(|(n, c)| Some((*n, c.id()?)))
            .collect()
    }

    /// SIGTERM, then up to 15 s for a clean exit, then SIGKILL.
    pub async fn stop(&mut self) {
        for (_, child) in &self.children {
            if let Some(pid) = child.id() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            }
        }
        for (name, child) in &mut self.children {
            match tokio::time::timeout(Duration::from_secs(15), child.wait()).await {
                Ok(_) => {}
                Err(_) => {
                    eprintln!("{name} did not stop within 15 s of SIGTERM; killing it");
                    let _ = child.kill().await;
                }
            }
        }
        self.children.clear();
    }
}

/// A channel to a gRPC server once its health check says SERVING.
pub async fn connect(addr: SocketAddr) -> anyhow::Result<Channel> {
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

/// Partitions leased by any relay on the database at `url`.
pub async fn leased_partitions(url: &str) -> anyhow::Result<i64> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT count(*) FROM pg_locks
             WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND classid = 1869414401
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[],
        )
        .await?;
    drop(client);
    driver.abort();
    Ok(row.get(0))
}
