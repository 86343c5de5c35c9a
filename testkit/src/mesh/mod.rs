//! One launcher for the three real binaries (order-svc, processor-svc,
//! relay), shared by the end-to-end tests, the bench and the chaos harness:
//! free ports, a fresh database per service, a fresh exchange and queues,
//! and the environment a user would give them, all removed when the mesh is
//! dropped. [`MeshOptions`] holds what differs between harnesses: where the
//! binaries are, where their output goes, the log level, the token secret,
//! more relay sources, extra environment, and whether the relay starts only
//! once the services serve and is awaited until it leases every partition.

mod health;
mod processes;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use anyhow::bail;
use ordermesh_messaging::outbox::PARTITIONS;

pub use self::health::{START_PATIENCE, endpoint, healthy, healthy_channel, serving};
use self::processes::Processes;
pub use self::processes::{Exit, Output};
use crate::leases::LeaseLocks;
use crate::{TestBroker, TestDatabase};

/// The binaries a mesh runs, in start order.
pub const BINARIES: [&str; 3] = ["order-svc", "processor-svc", "relay"];

/// How long the relay may take to lease every partition of every source.
pub const LEASE_PATIENCE: Duration = Duration::from_secs(60);

/// What differs between the harnesses that start a mesh.
#[derive(Debug, Clone)]
pub struct MeshOptions {
    /// Where order-svc, processor-svc and relay are (a debug or a release
    /// build).
    pub bin_dir: PathBuf,
    /// The command that builds them, said when one is missing.
    pub build_hint: &'static str,
    pub output: Output,
    /// `RUST_LOG` of every binary.
    pub rust_log: &'static str,
    /// `AUTH_JWT_SECRET` of both services, for the harness's own tokens.
    pub jwt_secret: String,
    /// More databases the relay serves (`RELAY_SOURCES`), after the two
    /// services' own.
    pub extra_sources: Vec<String>,
    /// Environment on top of the mesh's own; the last value of a name wins.
    pub env: Vec<(String, String)>,
    /// `Some`: [`Mesh::start`] starts the relay only once both services
    /// serve, then waits until it leases every partition of every source.
    /// `None`: all three start at once, and only the services are awaited.
    pub relay_leases: Option<LeaseLocks>,
}

impl MeshOptions {
    /// The binaries in `bin_dir`, their stderr inherited, `RUST_LOG=info`,
    /// a fresh token secret, nothing more.
    pub fn new(bin_dir: PathBuf) -> Self {
        Self {
            bin_dir,
            build_hint: "cargo build --bins",
            output: Output::Inherit,
            rust_log: "info",
            jwt_secret: crate::tokens::random_secret(),
            extra_sources: Vec::new(),
            env: Vec::new(),
            relay_leases: None,
        }
    }

    /// Where `cargo build --bins` put the binaries, seen from a test binary
    /// (`target/<profile>/deps/<test>`): `target/<profile>`.
    pub fn test_bin_dir() -> PathBuf {
        let exe = std::env::current_exe().expect("test binary path");
        exe.parent()
            .and_then(|deps| deps.parent())
            .expect("target/<profile>")
            .to_owned()
    }
}

/// The three binaries and what they run on. Each can be stopped and started
/// again any number of times; every start is a new incarnation.
pub struct Mesh {
    // First, so the processes are killed before the databases and queues
    // they use are dropped.
    processes: Processes,
    pub orders_db: TestDatabase,
    pub processor_db: TestDatabase,
    pub broker: TestBroker,
    pub order_addr: SocketAddr,
    pub processor_addr: SocketAddr,
    pub order_queue: String,
    pub processor_queue: String,
    /// `AUTH_JWT_SECRET` of both services.
    pub jwt_secret: String,
    /// What every binary starts with; a change applies to the next starts.
    pub env: HashMap<String, String>,
    /// What one binary starts with on top of [`Mesh::env`], by its name
    /// (chaos's fault knobs); a change applies to its next starts.
    pub env_of: HashMap<String, HashMap<String, String>>,
    /// Every database the relay serves.
    sources: Vec<String>,
    relay_leases: Option<LeaseLocks>,
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

impl Mesh {
    /// Names everything; starts nothing yet.
    pub fn prepare(options: MeshOptions) -> anyhow::Result<Self> {
        for name in BINARIES {
            let path = options.bin_dir.join(name);
            if !path.exists() {
                bail!(
                    "{} is missing: run `{}` first",
                    path.display(),
                    options.build_hint
                );
            }
        }
        let orders_db = TestDatabase::new();
        let processor_db = TestDatabase::new();
        let broker = TestBroker::new();
        let order_addr = free_addr()?;
        let processor_addr = free_addr()?;
        let order_queue = broker.queue("order-svc.payment-results");
        let processor_queue = broker.queue("processor-svc.order-created");
        let mut sources = vec![orders_db.url.clone(), processor_db.url.clone()];
        sources.extend(options.extra_sources);
        let mut env: HashMap<String, String> = [
            ("ORDER_SVC_ADDR", order_addr.to_string()),
            ("PROCESSOR_SVC_ADDR", processor_addr.to_string()),
            ("RELAY_ADMIN_ADDR", free_addr()?.to_string()),
            ("ORDER_DATABASE_URL", orders_db.url.clone()),
            ("PROCESSOR_DATABASE_URL", processor_db.url.clone()),
            ("RELAY_SOURCES", sources.join(",")),
            ("AMQP_URL", broker.config.url.expose().to_owned()),
            ("AMQP_EXCHANGE", broker.config.exchange.clone()),
            ("ORDER_QUEUE", order_queue.clone()),
            ("PROCESSOR_QUEUE", processor_queue.clone()),
            ("RUST_LOG", options.rust_log.to_owned()),
            (ordermesh_auth::ENV_JWT_SECRET, options.jwt_secret.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        env.extend(options.env);
        Ok(Self {
            processes: Processes::new(options.bin_dir, options.output)?,
            orders_db,
            processor_db,
            broker,
            order_addr,
            processor_addr,
            order_queue,
            processor_queue,
            jwt_secret: options.jwt_secret,
            env,
            env_of: HashMap::new(),
            sources,
            relay_leases: options.relay_leases,
        })
    }

    /// Starts the services and the relay, and waits as the options say:
    /// until both services serve, and (with `relay_leases`) until the
    /// relay, started after them, leases every partition of every source.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        self.spawn("order-svc")?;
        self.spawn("processor-svc")?;
        if self.relay_leases.is_none() {
            self.spawn("relay")?;
        }
        healthy_channel(self.order_addr).await?;
        healthy_channel(self.processor_addr).await?;
        if let Some(locks) = self.relay_leases {
            self.spawn("relay")?;
            self.wait_for_leases(locks).await?;
        }
        Ok(())
    }

    /// Waits until the relays lease every partition of every source,
    /// failing early when a binary exits.
    pub async fn wait_for_leases(&mut self, locks: LeaseLocks) -> anyhow::Result<()> {
        for url in self.sources.clone() {
            let deadline = Instant::now() + LEASE_PATIENCE;
            while leased(locks, &url).await.unwrap_or(0) < PARTITIONS as i64 {
                if Instant::now() > deadline {
                    bail!("the relay never leased the partitions of {url}");
                }
                self.check_alive()?;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// Starts `binary` (a new incarnation) with [`Mesh::env`].
    pub fn spawn(&mut self, binary: &str) -> anyhow::Result<()> {
        self.spawn_as(binary, binary, &[])
    }

    /// Starts `binary` under `label` (e.g. a second relay) with
    /// [`Mesh::env`], then [`Mesh::env_of`] the binary, then `overrides`.
    pub fn spawn_as(
        &mut self,
        label: &str,
        binary: &str,
        overrides: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let env = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        let own = self.env_of.get(binary).into_iter().flatten();
        let own = own.map(|(k, v)| (k.as_str(), v.as_str()));
        self.processes.spawn(
            label,
            binary,
            env.chain(own).chain(overrides.iter().copied()),
        )
    }

    /// The processes that exited since the last call.
    pub fn reap(&mut self) -> anyhow::Result<Vec<Exit>> {
        self.processes.reap()
    }

    /// Fails when a process exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.processes.check_alive()
    }

    /// SIGKILL, and wait for the process to be gone.
    pub async fn kill(&mut self, label: &str) -> anyhow::Result<()> {
        self.processes.kill(label).await
    }

    /// SIGTERM, then up to `grace` for a clean exit, then SIGKILL; the
    /// exit status when it exited by itself.
    pub async fn terminate(&mut self, label: &str, grace: Duration) -> Option<ExitStatus> {
        self.processes.terminate(label, grace).await
    }

    /// Terminates everything, 15 s each: the relays first (they drain their
    /// batch), then the services.
    pub async fn stop(&mut self) {
        self.processes.stop(Duration::from_secs(15)).await;
    }

    /// Labels and pids of the running processes.
    pub fn pids(&self) -> Vec<(&str, u32)> {
        self.processes.pids()
    }

    /// The current incarnation of `label`, when it runs.
    pub fn incarnation(&self, label: &str) -> Option<u32> {
        self.processes.incarnation(label)
    }

    /// How many times `label` was started.
    pub fn starts(&self, label: &str) -> u32 {
        self.processes.starts(label)
    }

    /// The log file of `label`, with [`Output::LogFiles`].
    pub fn log_path(&self, label: &str) -> Option<PathBuf> {
        self.processes.log_path(label)
    }
}

/// Partitions leased by any relay on the database at `url`.
async fn leased(locks: LeaseLocks, url: &str) -> anyhow::Result<i64> {
    let db = crate::database::connect(url).await?;
    Ok(locks.count(&db).await?)
}

/// `Deref` and `DerefMut` from a harness's own mesh type to the test kit's
/// [`Mesh`] held in its field `$field`: the harness adds what is its own
/// and reaches the rest (databases, broker, addresses, processes) as is.
#[macro_export]
macro_rules! extends_mesh {
    ($wrapper:ty, $field:ident) => {
        impl ::std::ops::Deref for $wrapper {
            type Target = $crate::mesh::Mesh;
            fn deref(&self) -> &$crate::mesh::Mesh {
                &self.$field
            }
        }

        impl ::std::ops::DerefMut for $wrapper {
            fn deref_mut(&mut self) -> &mut $crate::mesh::Mesh {
                &mut self.$field
            }
        }
    };
}
