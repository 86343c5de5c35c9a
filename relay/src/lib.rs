//! The outbox relay: moves rows from the `outbox` table of each source
//! database to the RabbitMQ events exchange. Several relays may serve the
//! same sources: the outbox is split into 64 partitions by aggregate id and
//! each relay leases its share of them ([`lease`]). Per source, one worker
//! ([`drain`]) claims batches of its partitions in id order, publishes them
//! with pipelined publisher confirms ([`publisher`]), deletes what the
//! broker confirmed and commits ([`store`]). It polls while rows keep
//! coming and otherwise sleeps until `LISTEN/NOTIFY` ([`listen`]) or a
//! fallback tick wakes it.
//!
//! The relay knows no business rules: rows are opaque (routing key, type,
//! payload, headers), so it serves any database with the platform outbox.
//! Delivery is at least once; consumers deduplicate on the message id.
//!
//! No row blocks another: a row the broker can never take (too large for
//! its frame, or refused `RELAY_MAX_ATTEMPTS` times) is moved to the
//! `outbox_parked` table, and so are the later rows of its aggregate; a
//! relay that cannot reach the broker hands its partitions over.
//!
//! `relay dlq` ([`dlq`]) lists, shows and replays the messages the
//! consumers parked in their dead-letter queues; `relay outbox`
//! ([`parked`]) does the same for parked outbox rows.

pub mod admin;
pub mod asyncapi;
pub mod dlq;
pub mod drain;
pub mod lease;
pub mod listen;
pub mod parked;
pub mod publisher;
pub mod stats;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use ordermesh_platform::amqp::BrokerConfig;
use ordermesh_platform::config::{self, ConfigError, Env};
use ordermesh_platform::db;
use ordermesh_platform::health::{BrokerProbe, Probe, Readiness};
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
pub const ENV_POLL_MS: &str = "RELAY_POLL_MS";
pub const DEFAULT_POLL: Duration = Duration::from_millis(1);
pub const ENV_IDLE_AFTER_MS: &str = "RELAY_IDLE_AFTER_MS";
pub const DEFAULT_IDLE_AFTER: Duration = Duration::from_millis(250);
pub const ENV_WARM_ROWS: &str = "RELAY_WARM_ROWS";
pub const DEFAULT_WARM_ROWS: usize = 20;
pub const ENV_REBALANCE_MS: &str = "RELAY_REBALANCE_MS";
pub const DEFAULT_REBALANCE: Duration = Duration::from_millis(500);
pub const ENV_PUBLISH_TIMEOUT_MS: &str = "RELAY_PUBLISH_TIMEOUT_MS";
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
pub const ENV_HANDOVER_AFTER_MS: &str = "RELAY_HANDOVER_AFTER_MS";
pub const DEFAULT_HANDOVER_AFTER: Duration = Duration::from_secs(10);
pub const ENV_MAX_ATTEMPTS: &str = "RELAY_MAX_ATTEMPTS";
pub const DEFAULT_MAX_ATTEMPTS: i32 = 10;
pub const ENV_RETRY_MS: &str = "RELAY_RETRY_MS";
pub const DEFAULT_RETRY: Duration = Duration::from_secs(1);
pub const ENV_MAX_MESSAGE_BYTES: &str = "RELAY_MAX_MESSAGE_BYTES";
/// RabbitMQ's default `max_message_size` (128 MiB).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 128 << 20;
pub const ENV_INSTANCE: &str = "RELAY_INSTANCE";
/// Application name of the relay's claim and LISTEN connections (the lease
/// connection's is `store::LEASE_APPLICATION_PREFIX` + instance).
pub const APPLICATION_PREFIX: &str = "ordermesh-relay/";
pub const ENV_SHUTDOWN_GRACE_MS: &str = "SHUTDOWN_GRACE_MS";
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// One database whose outbox the relay drains.
#[derive(Debug, Clone)]
pub struct Source {
    /// The database name, for logs.
    pub name: String,
    /// Its URL's settings, `sslmode` included.
    pub config: db::DbConfig,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub sources: Vec<Source>,
    pub broker: BrokerConfig,
    /// Rows claimed and published per transaction.
    pub batch_size: i64,
    /// Drain this often even when no NOTIFY arrives.
    pub fallback_tick: Duration,
    /// Poll this often while rows keep coming (zero: never poll, every
    /// writer notifies).
    pub poll_interval: Duration,
    /// Stop polling after this long without rows.
    pub idle_after: Duration,
    /// Start polling once this many rows came within `idle_after`.
    pub warm_rows: usize,
    /// Recount the relays and move partition leases this often.
    pub rebalance_interval: Duration,
    /// Longest wait for a batch's confirms (and for a broker connection).
    pub publish_timeout: Duration,
    /// Hand the partitions over after the broker was unusable this long.
    pub handover_after: Duration,
    /// Park a row the broker refused this many times.
    pub max_attempts: i32,
    /// First wait before retrying a refused row; doubles per attempt.
    pub retry_delay: Duration,
    /// The broker's `max_message_size`: larger payloads are parked.
    pub max_message_bytes: usize,
    /// This relay's name in `pg_stat_activity` (default: host name and pid).
    pub instance: String,
    pub admin_addr: SocketAddr,
    /// TLS for the admin port (`TLS_CERT_FILE`, `TLS_KEY_FILE`); `None`
    /// serves plaintext.
    pub tls: Option<ordermesh_platform::tls::ServerTls>,
    /// How long in-flight batches get to finish after shutdown.
    pub shutdown_grace: Duration,
}

impl Config {
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        let mut sources = Vec::new();
        for url in config::list(env, ENV_SOURCES, DEFAULT_SOURCES) {
            let config = db::parse_url(env, ENV_SOURCES, &url)?;
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
        let rebalance_interval = config::millis(env, ENV_REBALANCE_MS, DEFAULT_REBALANCE)?;
        if rebalance_interval.is_zero() {
            return Err(config::invalid(ENV_REBALANCE_MS, 0, "must be positive"));
        }
        let publish_timeout = config::millis(env, ENV_PUBLISH_TIMEOUT_MS, DEFAULT_PUBLISH_TIMEOUT)?;
        if publish_timeout.is_zero() {
            return Err(config::invalid(
                ENV_PUBLISH_TIMEOUT_MS,
                0,
                "must be positive",
            ));
        }
        let max_attempts = config::parse(env, ENV_MAX_ATTEMPTS, DEFAULT_MAX_ATTEMPTS)?;
        if max_attempts < 1 {
            return Err(config::invalid(
                ENV_MAX_ATTEMPTS,
                max_attempts,
                "must be at least 1",
            ));
        }
        let max_message_bytes =
            config::parse(env, ENV_MAX_MESSAGE_BYTES, DEFAULT_MAX_MESSAGE_BYTES)?;
        if max_message_bytes == 0 {
            return Err(config::invalid(
                ENV_MAX_MESSAGE_BYTES,
                0,
                "must be positive",
            ));
        }
        Ok(Self {
            sources,
            broker: BrokerConfig::from_env(env)?,
            batch_size,
            fallback_tick,
            poll_interval: config::millis(env, ENV_POLL_MS, DEFAULT_POLL)?,
            idle_after: config::millis(env, ENV_IDLE_AFTER_MS, DEFAULT_IDLE_AFTER)?,
            warm_rows: config::parse(env, ENV_WARM_ROWS, DEFAULT_WARM_ROWS)?,
            rebalance_interval,
            publish_timeout,
            handover_after: config::millis(env, ENV_HANDOVER_AFTER_MS, DEFAULT_HANDOVER_AFTER)?,
            max_attempts,
            retry_delay: config::millis(env, ENV_RETRY_MS, DEFAULT_RETRY)?,
            max_message_bytes,
            instance: config::string(env, ENV_INSTANCE, &default_instance()),
            admin_addr: config::parse(
                env,
                ENV_ADMIN_ADDR,
                DEFAULT_ADMIN_ADDR.parse().expect("valid default"),
            )?,
            tls: ordermesh_platform::tls::ServerTls::from_env(env)?,
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
    // Ready (/readyz 200) while the broker and every source answer.
    let readiness = Readiness::http_only();
    let mut probes = vec![Probe::Broker(BrokerProbe::new(
        config.broker.clone(),
        format!("relay-readiness/{}", config.instance),
    ))];
    tasks.spawn(
        "admin",
        admin::serve(
            admin,
            config.tls.clone(),
            readiness.clone(),
            config.broker.exchange.clone(),
            shutdown.clone(),
        ),
    );
    for source in &config.sources {
        let wake = Arc::new(Notify::new());
        // The partitions this relay holds on the source, for the listener.
        let held = Arc::new(AtomicU64::new(0));
        let mut named = source.config.clone();
        named.application_name(format!("{APPLICATION_PREFIX}{}", config.instance));
        let mut claiming = named.clone();
        // Losing a delete to a crash only republishes (consumers dedupe), so
        // the relay's commits need not wait for the WAL flush. The lock
        // timeout bounds a claim waiting on a previous lease holder's batch;
        // the idle timeout ends a claim transaction whose relay stopped
        // answering (its publish is bounded by `publish_timeout` already).
        let idle_timeout = config.publish_timeout.as_millis() * 2 + 5_000;
        claiming.options(format!(
            "{} -c synchronous_commit=off -c lock_timeout=5000 \
             -c idle_in_transaction_session_timeout={idle_timeout}",
            source.config.get_options().unwrap_or_default()
        ));
        // The worker uses one connection at a time; the probes and the
        // backlog monitor get their own, so a slow count under a backlog
        // never holds up the drain.
        let pool = db::pool(claiming, 1)?;
        let observing = db::pool(named.clone(), 1)?;
        probes.push(Probe::Database {
            name: source.name.clone(),
            pool: observing.clone(),
        });
        tasks.spawn(
            "backlog",
            stats::run_monitor(source.name.clone(), observing, shutdown.clone()),
        );
        tasks.spawn(
            "listener",
            listen::run_listener(
                source.name.clone(),
                named,
                wake.clone(),
                held.clone(),
                shutdown.clone(),
            ),
        );
        let worker = drain::WorkerConfig {
            database: source.config.clone(),
            instance: config.instance.clone(),
            broker: config.broker.clone(),
            policy: drain::Policy {
                source: source.name.clone(),
                batch_size: config.batch_size,
                publish_timeout: config.publish_timeout,
                max_attempts: config.max_attempts,
                retry_delay: config.retry_delay,
            },
            max_message_bytes: config.max_message_bytes,
            fallback_tick: config.fallback_tick,
            poll_interval: config.poll_interval,
            idle_after: config.idle_after,
            warm_rows: config.warm_rows,
            rebalance_interval: config.rebalance_interval,
            handover_after: config.handover_after,
        };
        tasks.spawn(
            "worker",
            drain::run_worker(worker, pool, wake, held, shutdown.clone()),
        );
        tracing::info!(source = %source.name, instance = %config.instance, "relaying");
    }
    tasks.spawn(
        "readiness",
        ordermesh_platform::health::watch(readiness, probes, shutdown.clone()),
    );
    tasks.join(config.shutdown_grace).await
}

/// `<host name>-<pid>`: unique per process, and readable in
/// `pg_stat_activity`.
fn default_instance() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "relay".to_owned());
    format!("{host}-{}", std::process::id())
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
            (ENV_REBALANCE_MS, "0"),
            (ENV_PUBLISH_TIMEOUT_MS, "0"),
            (ENV_MAX_ATTEMPTS, "0"),
            (ENV_MAX_MESSAGE_BYTES, "0"),
            (ENV_HANDOVER_AFTER_MS, "later"),
            (ENV_POLL_MS, "soon"),
            (ENV_SOURCES, "postgres://h"),
            (ENV_ADMIN_ADDR, "nowhere"),
        ] {
            let env = HashMap::from([(var, value.to_owned())]);
            let err = Config::from_env(&env).unwrap_err();
            assert!(err.to_string().contains(var), "{var}={value}: {err}");
        }
    }
}
