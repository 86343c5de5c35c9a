//! The system under test: order-svc, processor-svc and relay on free ports,
//! with fresh databases (`om_test_*`) and a fresh exchange and queues
//! (`om-test-*`), all removed when the mesh is dropped. Their `AMQP_URL`
//! points at the fault-injecting [`Proxy`]; the harness itself talks to the
//! broker directly. Each binary can be killed and started again any number
//! of times; every start is a new incarnation (for the metrics sums) and
//! appends to the same log file.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use ordermesh_platform::testing::{TestBroker, TestDatabase};
use tokio::process::{Child, Command};

use crate::proxy::Proxy;

/// The three binaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Binary {
    OrderSvc,
    ProcessorSvc,
    Relay,
}

impl Binary {
    pub const ALL: [Binary; 3] = [Binary::OrderSvc, Binary::ProcessorSvc, Binary::Relay];

    pub fn name(self) -> &'static str {
        match self {
            Binary::OrderSvc => "order-svc",
            Binary::ProcessorSvc => "processor-svc",
            Binary::Relay => "relay",
        }
    }
}

/// The processor's fault-injection knob (see `processor-svc/src/lib.rs`).
pub const ENV_PROCESSOR_ABORT: &str = "PROCESSOR_CHAOS_ABORT_AFTER_COMMIT_PERMILLE";
/// `application_name` of the harness's own database connections, which
/// the connection killer spares.
pub const HARNESS_APP_NAME: &str = "ordermesh-chaos";

struct Running {
    child: Child,
    incarnation: u32,
    started: Instant,
}

/// A binary that exited without being asked to.
#[derive(Debug)]
pub struct Exit {
    pub binary: Binary,
    pub incarnation: u32,
    pub status: ExitStatus,
    /// How long it had run.
    pub uptime: Duration,
}

pub struct Mesh {
    // First, so the processes are killed before the databases and queues
    // they use are dropped.
    running: HashMap<Binary, Running>,
    pub orders_db: TestDatabase,
    pub processor_db: TestDatabase,
    pub broker: TestBroker,
    /// Between the binaries and RabbitMQ.
    pub proxy: Proxy,
    pub order_addr: SocketAddr,
    pub processor_addr: SocketAddr,
    pub order_queue: String,
    pub processor_queue: String,
    /// `AUTH_JWT_SECRET` of both services, for the harness's own tokens.
    pub jwt_secret: String,
    pub log_dir: PathBuf,
    env: HashMap<String, String>,
    bin_dir: PathBuf,
    /// Starts so far per binary; the current incarnation is the last one.
    starts: HashMap<Binary, u32>,
    processor_abort_permille: u16,
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

impl Mesh {
    /// Names everything and starts the broker proxy; starts no binary yet.
    pub async fn prepare(bin_dir: &Path, log_dir: &Path) -> anyhow::Result<Self> {
        for b in Binary::ALL {
            let path = bin_dir.join(b.name());
            if !path.exists() {
                bail!(
                    "{} is missing: build the binaries first (cargo build --bins)",
                    path.display()
                );
            }
        }
        std::fs::create_dir_all(log_dir)
            .with_context(|| format!("create {}", log_dir.display()))?;
        no_core_files();
        let orders_db = TestDatabase::new();
        let processor_db = TestDatabase::new();
        let broker = TestBroker::new();
        let broker_url = broker.config.url.expose().to_owned();
        let proxy = Proxy::start(authority(&broker_url)?).await?;
        let proxied_url = with_authority(&broker_url, &proxy.addr().to_string())?;
        let order_addr = free_addr()?;
        let processor_addr = free_addr()?;
        let order_queue = broker.queue("order-svc.payment-results");
        let processor_queue = broker.queue("processor-svc.order-created");
        let jwt_secret = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let env: HashMap<String, String> = [
            ("ORDER_SVC_ADDR", order_addr.to_string()),
            ("PROCESSOR_SVC_ADDR", processor_addr.to_string()),
            ("RELAY_ADMIN_ADDR", free_addr()?.to_string()),
            ("ORDER_DATABASE_URL", orders_db.url.clone()),
            ("PROCESSOR_DATABASE_URL", processor_db.url.clone()),
            (
                "RELAY_SOURCES",
                format!("{},{}", orders_db.url, processor_db.url),
            ),
            ("AMQP_URL", proxied_url),
            ("AMQP_EXCHANGE", broker.config.exchange.clone()),
            ("ORDER_QUEUE", order_queue.clone()),
            ("PROCESSOR_QUEUE", processor_queue.clone()),
            (ordermesh_platform::auth::ENV_JWT_SECRET, jwt_secret.clone()),
            // Other test runs share the server's 100 connections.
            ("DB_POOL_SIZE", "8".to_owned()),
            ("SHUTDOWN_GRACE_MS", "5000".to_owned()),
            ("RUST_LOG", "info".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        Ok(Self {
            running: HashMap::new(),
            orders_db,
            processor_db,
            broker,
            proxy,
            order_addr,
            processor_addr,
            order_queue,
            processor_queue,
            jwt_secret,
            log_dir: log_dir.to_owned(),
            env,
            bin_dir: bin_dir.to_owned(),
            starts: HashMap::new(),
            processor_abort_permille: 0,
        })
    }

    /// Starts both services, waits until they serve, then the relay, and
    /// waits until it leases every partition of both databases.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        self.spawn(Binary::OrderSvc)?;
        self.spawn(Binary::ProcessorSvc)?;
        crate::client::healthy_channel(self.order_addr).await?;
        crate::client::healthy_channel(self.processor_addr).await?;
        self.spawn(Binary::Relay)?;
        for (name, url) in [
            (self.orders_db.name.clone(), self.orders_db.url.clone()),
            (
                self.processor_db.name.clone(),
                self.processor_db.url.clone(),
            ),
        ] {
            let deadline = Instant::now() + Duration::from_secs(60);
            while leased_partitions(&url).await.unwrap_or(0) < 64 {
                if Instant::now() > deadline {
                    bail!("the relay never leased the partitions of {name}");
                }
                if let Some(e) = self.reap()?.into_iter().next() {
                    bail!("{} exited during start ({})", e.binary.name(), e.status);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// The queues messages wait in before a consumer applies them: each
    /// service's work queue and its retry queues (under the retry policy
    /// the binaries read from this environment).
    pub fn waiting_queues(&self) -> anyhow::Result<Vec<String>> {
        use ordermesh_platform::redelivery::{RetryPolicy, retry_queue};
        let policy = RetryPolicy::from_env(&self.env)?;
        let mut queues = Vec::new();
        for queue in [&self.processor_queue, &self.order_queue] {
            queues.push(queue.clone());
            queues.extend(policy.delays().into_iter().map(|d| retry_queue(queue, d)));
        }
        Ok(queues)
    }

    /// The processor's abort knob for its next start (0: off).
    pub fn set_processor_abort(&mut self, permille: u16) {
        self.processor_abort_permille = permille;
    }

    /// Starts `binary` (a new incarnation).
    pub fn spawn(&mut self, binary: Binary) -> anyhow::Result<()> {
        let incarnation = {
            let n = self.starts.entry(binary).or_insert(0);
            *n += 1;
            *n
        };
        let path = self.log_path(binary);
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("open {}", path.display()))?;
        std::io::Write::write_all(
            &mut log,
            format!("---- chaos: starting {} #{incarnation}\n", binary.name()).as_bytes(),
        )?;
        let mut command = Command::new(self.bin_dir.join(binary.name()));
        command
            .envs(&self.env)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        if binary == Binary::ProcessorSvc && self.processor_abort_permille > 0 {
            command.env(
                ENV_PROCESSOR_ABORT,
                self.processor_abort_permille.to_string(),
            );
        }
        let child = command
            .spawn()
            .with_context(|| format!("start {}", binary.name()))?;
        self.running.insert(
            binary,
            Running {
                child,
                incarnation,
                started: Instant::now(),
            },
        );
        Ok(())
    }

    /// The current incarnation of `binary`, when it runs.
    pub fn incarnation(&self, binary: Binary) -> Option<u32> {
        self.running.get(&binary).map(|r| r.incarnation)
    }

    /// How many times `binary` was started.
    pub fn starts(&self, binary: Binary) -> u32 {
        self.starts.get(&binary).copied().unwrap_or(0)
    }

    pub fn log_path(&self, binary: Binary) -> PathBuf {
        self.log_dir.join(format!("{}.log", binary.name()))
    }

    /// The binaries that exited since the last call.
    pub fn reap(&mut self) -> anyhow::Result<Vec<Exit>> {
        let mut exited = Vec::new();
        for (b, r) in &mut self.running {
            if let Some(status) = r.child.try_wait()? {
                exited.push(Exit {
                    binary: *b,
                    incarnation: r.incarnation,
                    status,
                    uptime: r.started.elapsed(),
                });
            }
        }
        for e in &exited {
            self.running.remove(&e.binary);
        }
        exited.sort_by_key(|e| e.binary);
        Ok(exited)
    }

    /// SIGKILL, and wait for the process to be gone.
    pub async fn kill(&mut self, binary: Binary) -> anyhow::Result<()> {
        if let Some(mut r) = self.running.remove(&binary) {
            r.child.kill().await.context("SIGKILL")?;
        }
        Ok(())
    }

    /// SIGTERM, then up to `grace` for a clean exit, then SIGKILL; the
    /// exit status when it exited by itself.
    pub async fn terminate(&mut self, binary: Binary, grace: Duration) -> Option<ExitStatus> {
        let mut r = self.running.remove(&binary)?;
        if let Some(pid) = r.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        match tokio::time::timeout(grace, r.child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                eprintln!(
                    "chaos: {} did not stop within {grace:?} of SIGTERM; killing it",
                    binary.name()
                );
                let _ = r.child.kill().await;
                None
            }
        }
    }

    /// Stops everything: the relay first (it drains its batch), then the
    /// services.
    pub async fn stop(&mut self) {
        self.terminate(Binary::Relay, Duration::from_secs(15)).await;
        self.terminate(Binary::ProcessorSvc, Duration::from_secs(15))
            .await;
        self.terminate(Binary::OrderSvc, Duration::from_secs(15))
            .await;
    }
}

/// A plain client on the database at `url`, named so the connection killer
/// spares it.
pub async fn harness_client(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let mut config: tokio_postgres::Config = url.parse().context("database URL")?;
    config
        .application_name(HARNESS_APP_NAME)
        .connect_timeout(Duration::from_secs(5));
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .context("connect to PostgreSQL")?;
    tokio::spawn(connection);
    Ok(client)
}

/// Partitions leased by any relay on the database at `url` (the relay's
/// lease locks: class 1869414401, see `relay/src/lease.rs`).
async fn leased_partitions(url: &str) -> anyhow::Result<i64> {
    let client = harness_client(url).await?;
    let row = client
        .query_one(
            r#"SELECT count(*) FROM pg_locks
               WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND classid = 1869414401
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"#,
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// `host:port` of an AMQP URL (port 5672 when absent).
fn authority(url: &str) -> anyhow::Result<String> {
    let rest = url
        .split_once("://")
        .context("AMQP URL without a scheme")?
        .1;
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host_port.is_empty() {
        bail!("AMQP URL without a host");
    }
    Ok(if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5672")
    })
}

/// `url` with its `host:port` replaced, user, path and query kept.
fn with_authority(url: &str, host_port: &str) -> anyhow::Result<String> {
    let (scheme, rest) = url.split_once("://").context("AMQP URL without a scheme")?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let user = authority
        .rsplit_once('@')
        .map(|(u, _)| format!("{u}@"))
        .unwrap_or_default();
    Ok(format!("{scheme}://{user}{host_port}{tail}"))
}

/// The processor's injected aborts would otherwise leave core files where
/// the system writes them; the children inherit this limit.
fn no_core_files() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_CORE) {
        let _ = setrlimit(Resource::RLIMIT_CORE, 0, hard);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amqp_urls_are_pointed_at_the_proxy() {
        let url = "amqp://guest:guest@127.0.0.1:5672/%2f";
        assert_eq!(authority(url).unwrap(), "127.0.0.1:5672");
        assert_eq!(
            with_authority(url, "127.0.0.1:4000").unwrap(),
            "amqp://guest:guest@127.0.0.1:4000/%2f"
        );
        assert_eq!(authority("amqp://broker").unwrap(), "broker:5672");
        assert_eq!(
            with_authority("amqp://broker?heartbeat=5", "h:1").unwrap(),
            "amqp://h:1?heartbeat=5"
        );
    }
}
