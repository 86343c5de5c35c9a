//! The system under test: order-svc, processor-svc and relay started by
//! the test kit's launcher ([`ordermesh_testkit::mesh`]) on free ports,
//! with fresh databases (`om_test_*`) and a fresh exchange and queues
//! (`om-test-*`), all removed when the mesh is dropped. Their `AMQP_URL`
//! points at the fault-injecting [`Proxy`]; the harness itself talks to the
//! broker directly. Each binary can be killed and started again any number
//! of times; every start is a new incarnation (for the metrics sums) and
//! appends to the same log file.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::Context;
use ordermesh_testkit::mesh::{self, MeshOptions, Output};
use ordermesh_testkit::{AmqpUrl, LeaseLocks};

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

    fn named(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.name() == name)
    }
}

/// The processor's fault-injection knob (see `processor-svc/src/lib.rs`).
pub const ENV_PROCESSOR_ABORT: &str = "PROCESSOR_CHAOS_ABORT_AFTER_COMMIT_PERMILLE";
/// `application_name` of the harness's own database connections, which
/// the connection killer spares.
pub const HARNESS_APP_NAME: &str = "ordermesh-chaos";

/// A binary that exited without being asked to.
#[derive(Debug)]
pub struct Exit {
    pub binary: Binary,
    pub incarnation: u32,
    pub status: ExitStatus,
    /// How long it had run.
    pub uptime: Duration,
}

/// The test kit's mesh (databases, broker, queues, addresses, through
/// `Deref`) with the binaries named by [`Binary`], behind a broker proxy.
pub struct Mesh {
    // First, so the processes are killed before the proxy goes.
    mesh: mesh::Mesh,
    /// Between the binaries and RabbitMQ.
    pub proxy: Proxy,
    pub log_dir: PathBuf,
}

impl Mesh {
    /// Names everything and starts the broker proxy; starts no binary yet.
    pub async fn prepare(bin_dir: &Path, log_dir: &Path) -> anyhow::Result<Self> {
        let mut mesh = mesh::Mesh::prepare(MeshOptions {
            output: Output::LogFiles {
                dir: log_dir.to_owned(),
                banner: "chaos",
            },
            env: [
                // Other test runs share the server's 100 connections.
                ("DB_POOL_SIZE", "8"),
                ("SHUTDOWN_GRACE_MS", "5000"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .to_vec(),
            relay_leases: Some(LeaseLocks {
                class: relay::store::LEASE_LOCK_CLASS,
                application_prefix: relay::store::LEASE_APPLICATION_PREFIX,
            }),
            ..MeshOptions::new(bin_dir.to_owned())
        })?;
        no_core_files();
        let broker_url = AmqpUrl::parse(mesh.broker.config.url.expose())?;
        let proxy = Proxy::start(broker_url.authority()).await?;
        let proxied_url = broker_url.with_authority(proxy.addr());
        mesh.env.insert("AMQP_URL".to_owned(), proxied_url);
        Ok(Self {
            mesh,
            proxy,
            log_dir: log_dir.to_owned(),
        })
    }

    /// The queues messages wait in before a consumer applies them: each
    /// service's work queue and its retry queues (under the retry policy
    /// the binaries read from this environment).
    pub fn waiting_queues(&self) -> anyhow::Result<Vec<String>> {
        use ordermesh_messaging::redelivery::{RetryPolicy, retry_queue};
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
        let knob = (ENV_PROCESSOR_ABORT.to_owned(), permille.to_string());
        let processor = Binary::ProcessorSvc.name().to_owned();
        self.mesh.env_of.insert(processor, [knob].into());
    }

    /// Starts `binary` (a new incarnation).
    pub fn spawn(&mut self, binary: Binary) -> anyhow::Result<()> {
        self.mesh.spawn(binary.name())
    }

    /// The current incarnation of `binary`, when it runs.
    pub fn incarnation(&self, binary: Binary) -> Option<u32> {
        self.mesh.incarnation(binary.name())
    }

    /// How many times `binary` was started.
    pub fn starts(&self, binary: Binary) -> u32 {
        self.mesh.starts(binary.name())
    }

    pub fn log_path(&self, binary: Binary) -> PathBuf {
        self.log_dir.join(format!("{}.log", binary.name()))
    }

    /// The binaries that exited since the last call.
    pub fn reap(&mut self) -> anyhow::Result<Vec<Exit>> {
        let exits = self.mesh.reap()?.into_iter().filter_map(|e| {
            Some(Exit {
                binary: Binary::named(&e.label)?,
                incarnation: e.incarnation,
                status: e.status,
                uptime: e.uptime,
            })
        });
        Ok(exits.collect())
    }

    /// SIGKILL, and wait for the process to be gone.
    pub async fn kill(&mut self, binary: Binary) -> anyhow::Result<()> {
        self.mesh.kill(binary.name()).await
    }

    /// SIGTERM, then up to `grace` for a clean exit, then SIGKILL; the
    /// exit status when it exited by itself.
    pub async fn terminate(&mut self, binary: Binary, grace: Duration) -> Option<ExitStatus> {
        self.mesh.terminate(binary.name(), grace).await
    }
}

ordermesh_testkit::extends_mesh!(Mesh, mesh);

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

/// The processor's injected aborts would otherwise leave core files where
/// the system writes them; the children inherit this limit.
fn no_core_files() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_CORE) {
        let _ = setrlimit(Resource::RLIMIT_CORE, 0, hard);
    }
}
