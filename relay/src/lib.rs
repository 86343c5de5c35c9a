//! The outbox relay: moves rows from the `outbox` table of each source
//! database to the RabbitMQ events exchange, woken by PostgreSQL
//! `LISTEN/NOTIFY` ([`listen`]) with a fallback tick. Each source has one
//! worker ([`drain`]) that claims a batch in id order with
//! `FOR UPDATE SKIP LOCKED`, publishes it with pipelined publisher confirms
//! ([`publisher`]), deletes what the broker confirmed and commits ([`store`]).
//!
//! The relay knows no business rules: rows are opaque (routing key, type,
//! payload, headers), so it serves any database with the platform outbox.
//! Delivery is at least once; consumers deduplicate on the message id.

pub mod admin;
pub mod drain;
pub mod listen;
pub mod publisher;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ordermesh_platform::amqp::BrokerConfig;
use ordermesh_platform::config::{self, ConfigError, Env};
use ordermesh_platform::db;
use ordermesh_platform::tasks::Tasks;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub const ENV_SOURCES: &str = "RELAY_SOURCES";
pub const DEFAULT_SOURCES: &[&str] = &[
    "postgres://postgres@127.0.0.1:5432/ordermesh_orders",
    "postgres://postgres@127.0.0.1:5432/ordermesh_processor",
];
pub const ENV_BATCH_SIZE: &str = "RELAY_BATCH_SIZE";
pub const DEFAULT_BATCH_SIZE: i64 = 500;
pub const ENV_FALLBACK_TICK_MS: &str = "RELAY_FALLBACK_TICK_MS";
pub const DEFAULT_FALLBACK_TICK: Duration = Duration::from_secs(1);
pub const ENV_ADMIN_ADDR: &str = "RELAY_ADMIN_ADDR";
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9100";
pub const ENV_SHUTDOWN_GRACE_MS: &str = "SHUTDOWN_GRACE_MS";
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// One database whose outbox the relay drains.
#[derive(Debug, Clone)]
pub struct Source {
    /// The database name, for logs.
    pub name: String,
    pub config: tokio_postgres::Config,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub sources: Vec<Source>,
    pub broker: BrokerConfig,
    /// Rows claimed and published per transaction.
    pub batch_size: i64,
    /// Drain this often even when no NOTIFY arrives.
    pub fallback_tick: Duration,
    pub admin_addr: SocketAddr,
    /// How long in-flight batches get to finish after shutdown.
    pub shutdown_grace: Duration,
}

impl Config {
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        let mut sources = Vec::new();
        for url in config::list(env, ENV_SOURCES, DEFAULT_SOURCES) {
            let config = db::parse_url(ENV_SOURCES, &url)?;
            let name = config.get_dbname().unwrap_or_default().to_owned();
            sources.push(Source { name, config });
        }
        if sources.is_empty() {
            return Err(config::invalid(
                ENV_SOURCES,
                "",
                "at least one database URL is needed",
            ));
        }
        let batch_size = config::parse(env, ENV_BATCH_SIZE, DEFAULT_BATCH_SIZE)?;
        if !(1..=10_000).contains(&batch_size) {
            return Err(config::invalid(
                ENV_BATCH_SIZE,
                batch_size,
                "must be between 1 and 10000",
            ));
        }
        let fallback_tick = config::millis(env, ENV_FALLBACK_TICK_MS, DEFAULT_FALLBACK_TICK)?;
        if fallback_tick.is_zero() {
            return Err(config::invalid(ENV_FALLBACK_TICK_MS, 0, "must be positive"));
        }
        Ok(Self {
            sources,
            broker: BrokerConfig::from_env(env),
            batch_size,
            fallback_tick,
            admin_addr: config::parse(
                env,
                ENV_ADMIN_ADDR,
                DEFAULT_ADMIN_ADDR.parse().expect("valid default"),
            )?,
            shutdown_grace: config::millis(env, ENV_SHUTDOWN_GRACE_MS, DEFAULT_SHUTDOWN_GRACE)?,
        })
    }
}

/// Runs the relay: the admin listener, and per source a LISTEN connection
/// and a drain worker, until `shutdown`; then finishes in-flight batches.
pub async fn run(
    config: Config,
    admin: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut tasks = Tasks::new(shutdown.clone());
    tasks.spawn("admin", admin::serve(admin, shutdown.clone()));
    for source in &config.sources {
        let wake = Arc::new(Notify::new());
        let pool = db::pool(source.config.clone(), 2)?;
        tasks.spawn(
            "listener",
            listen::run_listener(
                source.name.clone(),
                source.config.clone(),
                wake.clone(),
                shutdown.clone(),
            ),
        );
        let worker = drain::WorkerConfig {
            source: source.name.clone(),
            broker: config.broker.clone(),
            batch_size: config.batch_size,
            fallback_tick: config.fallback_tick,
        };
        tasks.spawn(
            "worker",
            drain::run_worker(worker, pool, wake, shutdown.clone()),
        );
        tracing::info!(source = %source.name, "relaying");
    }
    tasks.join(config.shutdown_grace).await
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn defaults_cover_both_service_databases() {
        let config = Config::from_env(&HashMap::<&str, String>::new()).unwrap();
        let names: Vec<_> = config.sources.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["ordermesh_orders", "ordermesh_processor"]);
        assert_eq!(config.batch_size, 500);
        assert_eq!(config.fallback_tick, Duration::from_secs(1));
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, value) in [
            (ENV_BATCH_SIZE, "0"),
            (ENV_BATCH_SIZE, "lots"),
            (ENV_FALLBACK_TICK_MS, "0"),
            (ENV_SOURCES, "postgres://h"),
            (ENV_ADMIN_ADDR, "nowhere"),
        ] {
            let env = HashMap::from([(var, value.to_owned())]);
            let err = Config::from_env(&env).unwrap_err();
            assert!(err.to_string().contains(var), "{var}={value}: {err}");
        }
    }
}
