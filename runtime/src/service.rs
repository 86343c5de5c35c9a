//! The start-up every ordermesh gRPC service shares, so a service's own
//! crate holds only its routes, its consumer and its own variables:
//!
//! - [`ServiceConfig`]: the address, database, pool, TLS, CORS, message
//!   limit and shutdown grace every service reads, under the service's own
//!   names for the address and the database ([`Names`]), with the
//!   service's own part ([`OwnConfig`]) and the `--help` of all of them;
//! - [`Service`]: prepares the database, tracks readiness from probes, runs
//!   the service's tasks beside gRPC (with health, reflection and
//!   `/healthz`, `/readyz`, `/metrics` on the same port) and drains them;
//! - [`config_or_exit`] and [`exit`]: how every `main` reports a bad
//!   configuration and a failed run;
//! - [`vars`]: the variables several binaries share, for `--help`.

pub mod vars;

use std::future::Future;
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::Pool;
use ordermesh_gateway::cors::CorsConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

use crate::config::{self, ConfigError, Env, Var};
use crate::db::DbConfig;
use crate::health::{Probe, Readiness};
use crate::tasks::Tasks;
use crate::tls::ServerTls;

pub const ENV_DB_POOL_SIZE: &str = "DB_POOL_SIZE";
pub const DEFAULT_DB_POOL_SIZE: usize = 16;
pub const ENV_SHUTDOWN_GRACE_MS: &str = "SHUTDOWN_GRACE_MS";
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Async worker threads of the binary's runtime ([`runtime`]).
pub const ENV_WORKER_THREADS: &str = "TOKIO_WORKER_THREADS";
pub const DEFAULT_WORKER_THREADS: usize = 1;

/// A service's own names for the variables every service has.
#[derive(Debug, Clone, Copy)]
pub struct Names {
    /// Its listen address (`ORDER_SVC_ADDR`, ...) and that's default.
    pub addr: (&'static str, &'static str),
    /// Its database URL (`ORDER_DATABASE_URL`, ...) and that's default.
    pub database_url: (&'static str, &'static str),
}

impl Names {
    /// The two variables, as `--help` lists them.
    pub const fn vars(self) -> [Var; 2] {
        [
            Var::new(
                self.addr.0,
                self.addr.1,
                "address",
                "gRPC, REST and /healthz, /readyz, /metrics, all on one port",
            ),
            Var::new(
                self.database_url.0,
                self.database_url.1,
                "URL",
                "its database, created when missing; sslmode as libpq",
            ),
        ]
    }
}

/// The part of a service's configuration that is its own: what
/// [`ServiceConfig`] holds besides what every service reads.
pub trait OwnConfig: Sized {
    /// Its names for the address and database variables.
    const NAMES: Names;
    /// Its own variables, as `--help` lists them.
    const VARS: &'static [Var];
    /// The groups of variables of other crates its `from_env` reads
    /// (`ordermesh_messaging::vars::BROKER`, `ordermesh_auth::config::VARS`),
    /// listed after its own.
    const USES: &'static [&'static [Var]];
    /// Reads its own variables; a bad value is an error naming it.
    fn from_env(env: &impl Env) -> Result<Self, ConfigError>;
}

/// A service's configuration: what every service reads, and its own part
/// `T`, whose fields it reaches through `Deref` (`config.queue`).
#[derive(Debug, Clone)]
pub struct ServiceConfig<T> {
    /// Where `main` binds the gRPC listener ([`Service::serve`] takes it
    /// bound, so tests bind port 0).
    pub addr: SocketAddr,
    /// The service's own database (and its `sslmode`); created at start
    /// when missing.
    pub database: DbConfig,
    pub db_pool_size: usize,
    /// TLS for the gRPC/REST port (`TLS_CERT_FILE`, `TLS_KEY_FILE`);
    /// `None` serves plaintext.
    pub tls: Option<ServerTls>,
    /// Browser origins allowed to call the port (`CORS_ALLOWED_ORIGINS`);
    /// none by default.
    pub cors: CorsConfig,
    /// Larger gRPC request messages are refused (`GRPC_MAX_MESSAGE_BYTES`).
    pub max_message_bytes: usize,
    /// How long the tasks get to drain after shutdown is requested.
    pub shutdown_grace: Duration,
    pub own: T,
}

impl<T> Deref for ServiceConfig<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.own
    }
}

impl<T> DerefMut for ServiceConfig<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.own
    }
}

impl<T: OwnConfig> ServiceConfig<T> {
    /// Reads the variables of [`Self::vars`] but telemetry's (`main` starts
    /// it) and the REST body limit ([`crate::grpc::serve_with`] reads it);
    /// a bad value is an error naming the variable.
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        let (addr_var, default_addr) = T::NAMES.addr;
        let default_addr = default_addr.parse().expect("the default address parses");
        let (url_var, default_url) = T::NAMES.database_url;
        let url = config::string(env, url_var, default_url);
        Ok(Self {
            addr: config::parse(env, addr_var, default_addr)?,
            database: crate::db::parse_url(env, url_var, &url)?,
            db_pool_size: config::at_least_one(env, ENV_DB_POOL_SIZE, DEFAULT_DB_POOL_SIZE)?,
            tls: ServerTls::from_env(env)?,
            cors: crate::grpc::cors_config(env)?,
            max_message_bytes: crate::grpc::max_message_bytes(env)?,
            shutdown_grace: config::millis(env, ENV_SHUTDOWN_GRACE_MS, DEFAULT_SHUTDOWN_GRACE)?,
            own: T::from_env(env)?,
        })
    }

    /// Every variable the service reads, as its `--help` lists them: its
    /// address and database, its own, the groups of the crates it uses,
    /// then the groups of [`vars`] every service reads.
    pub fn vars() -> Vec<Var> {
        let shared = [vars::SERVICE, vars::SERVER, vars::TELEMETRY];
        let names = T::NAMES.vars();
        [&names[..], T::VARS]
            .into_iter()
            .chain(T::USES.iter().copied())
            .chain(shared)
            .flatten()
            .copied()
            .collect()
    }

    /// The `--help` section listing [`Self::vars`].
    pub fn help() -> String {
        config::help(&Self::vars())
    }
}

impl<T> ServiceConfig<T> {
    /// Creates the database if missing and applies `migrations` (a
    /// service's `migrate` command).
    pub async fn migrate(&self, migrations: Vec<refinery::Runner>) -> anyhow::Result<()> {
        let none = CancellationToken::new();
        let pool = crate::db::connect_and_migrate(&self.database, 1, migrations, &none).await?;
        pool.close();
        Ok(())
    }
}

/// A service starting up: its database is ready, and its probes and tasks
/// are gathered until [`Service::serve`] runs them beside gRPC.
pub struct Service {
    tls: Option<ServerTls>,
    cors: CorsConfig,
    grace: Duration,
    /// The health service with `/healthz`, `/readyz` and `/metrics`.
    routes: Routes,
    readiness: Readiness,
    probes: Vec<Probe>,
    tasks: Tasks,
    shutdown: CancellationToken,
}

impl Service {
    /// Waits for the database, migrates it and builds the pool; then
    /// reports `grpc_service` ready (gRPC health SERVING, `/readyz` 200)
    /// while every probe passes, the database's being the first.
    pub async fn start<T>(
        config: &ServiceConfig<T>,
        grpc_service: &str,
        migrations: Vec<refinery::Runner>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<(Self, Pool)> {
        let database = &config.database;
        let pool =
            crate::db::connect_and_migrate(database, config.db_pool_size, migrations, shutdown)
                .await
                .context("prepare the database")?;
        let (reporter, health) = crate::grpc::health(grpc_service).await;
        let readiness = Readiness::with_grpc(reporter, &[grpc_service]).await;
        let routes = crate::health::with_ops_routes(Routes::new(health), &readiness);
        let name = database.get_dbname().unwrap_or_default().to_owned();
        let service = Self {
            tls: config.tls.clone(),
            cors: config.cors.clone(),
            grace: config.shutdown_grace,
            routes,
            readiness,
            probes: vec![Probe::Database {
                name,
                pool: pool.clone(),
            }],
            tasks: Tasks::new(shutdown.clone()),
            shutdown: shutdown.clone(),
        };
        Ok((service, pool))
    }

    /// The token every task must stop on.
    pub fn shutdown(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Ready only while `probe` passes too.
    pub fn probe(&mut self, probe: Probe) -> &mut Self {
        self.probes.push(probe);
        self
    }

    /// Runs `task` beside gRPC; it must return once shutdown fires.
    pub fn spawn(
        &mut self,
        name: &'static str,
        task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) -> &mut Self {
        self.tasks.spawn(name, task);
        self
    }

    /// Serves on `listener` the routes `routes` makes of the health and
    /// operational ones (adding the service's APIs and its auth layer),
    /// with the readiness probes and the tasks, until shutdown; then drains
    /// within the configured grace.
    pub async fn serve(
        mut self,
        listener: TcpListener,
        routes: impl FnOnce(Routes) -> Routes,
    ) -> anyhow::Result<()> {
        let shutdown = self.shutdown;
        let routes = routes(self.routes);
        let grpc = crate::grpc::serve_with(listener, routes, self.tls, self.cors, shutdown.clone());
        self.tasks.spawn("grpc", grpc);
        let readiness = crate::health::watch(self.readiness, self.probes, shutdown);
        self.tasks.spawn("readiness", readiness);
        self.tasks.join(self.grace).await
    }
}

/// Binds `addr` (a service's gRPC port, the relay's admin port) and logs
/// where `binary` listens.
pub async fn bind(binary: &str, addr: SocketAddr, tls: bool) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, tls, "{binary} listening");
    Ok(listener)
}

/// The tokio runtime every binary runs on: [`ENV_WORKER_THREADS`] worker
/// threads, [`DEFAULT_WORKER_THREADS`] unless set (exits 2 on a value that
/// is not a positive count).
///
/// One by default: each service is I/O-bound and its requests are small,
/// and with more workers than it keeps busy, every message, query and
/// answer hops between threads that park and wake. On the 2-core bench
/// machine one worker took 15–25 % less CPU per order at 200/s in each
/// binary than two (docs/BENCH.md). Blocking work (password hashing) runs
/// on tokio's blocking pool, and lapin's I/O on its own thread, so a
/// service still uses more than one core; past that, add replicas, or
/// raise the count for a pod given several cores.
pub fn runtime() -> tokio::runtime::Runtime {
    let workers = config_or_exit(config::at_least_one(
        &config::ProcessEnv,
        ENV_WORKER_THREADS,
        DEFAULT_WORKER_THREADS,
    ));
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap_or_else(|e| {
            eprintln!("error: cannot start the tokio runtime: {e}");
            std::process::exit(1);
        })
}

/// The configuration, or — for a bad one — `error: <what is wrong, naming
/// the variable>` on stderr and exit code 2. Every binary's `main` reads
/// its configuration through this, before anything starts.
pub fn config_or_exit<T>(config: Result<T, ConfigError>) -> T {
    config.unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2);
    })
}

/// The end of every `main`: exports the spans still queued, then exits 0,
/// or 1 after logging why `binary` failed (on stderr as `error: ...` when
/// the command started no telemetry, as `relay dlq` does not).
pub async fn exit(binary: &str, result: anyhow::Result<()>) -> ExitCode {
    crate::telemetry::shutdown().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if tracing::dispatcher::has_been_set() => {
            tracing::error!(error = format!("{e:#}"), "{binary} failed");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A service with no variables of its own.
    #[derive(Debug, Clone)]
    struct Own;

    impl OwnConfig for Own {
        const NAMES: Names = Names {
            addr: ("X_ADDR", "127.0.0.1:50051"),
            database_url: ("X_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/x"),
        };
        const VARS: &'static [Var] = &[];
        const USES: &'static [&'static [Var]] = &[];
        fn from_env(_: &impl Env) -> Result<Self, ConfigError> {
            Ok(Own)
        }
    }

    type Config = ServiceConfig<Own>;

    #[test]
    fn the_shared_variables_are_listed_with_their_defaults() {
        let elsewhere = vars::read_at_start();
        config::check_listed(&Config::vars(), &elsewhere, Config::from_env).unwrap();
        let help = Config::help();
        assert!(
            help.contains("  X_ADDR (address, default 127.0.0.1:50051)"),
            "{help}"
        );
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (name, value) in [
            ("X_ADDR", "localhost"),
            ("X_DATABASE_URL", "postgres://u@h:5432"),
            (ENV_DB_POOL_SIZE, "0"),
            (ENV_DB_POOL_SIZE, "lots"),
            (ENV_SHUTDOWN_GRACE_MS, "-1"),
        ] {
            let env = HashMap::from([(name, value.to_owned())]);
            let err = Config::from_env(&env).unwrap_err();
            assert_eq!(err.name, name, "{err}");
        }
    }

    #[test]
    fn defaults_are_the_contract() {
        let c = Config::from_env(&HashMap::<&str, String>::new()).unwrap();
        assert_eq!(c.addr.to_string(), "127.0.0.1:50051");
        assert_eq!(c.db_pool_size, 16);
        assert_eq!(c.shutdown_grace, Duration::from_secs(10));
        assert!(c.tls.is_none());
    }

    #[test]
    fn one_worker_thread_unless_a_positive_count_is_set() {
        let threads = |env: &HashMap<&str, String>| {
            config::at_least_one(env, ENV_WORKER_THREADS, DEFAULT_WORKER_THREADS)
        };
        assert_eq!(threads(&HashMap::new()).unwrap(), DEFAULT_WORKER_THREADS);
        let four = HashMap::from([(ENV_WORKER_THREADS, "4".to_owned())]);
        assert_eq!(threads(&four).unwrap(), 4);
        for bad in ["0", "-1", "two"] {
            let env = HashMap::from([(ENV_WORKER_THREADS, bad.to_owned())]);
            let err = threads(&env).unwrap_err();
            assert_eq!(err.name, ENV_WORKER_THREADS, "{err}");
        }
    }
}
