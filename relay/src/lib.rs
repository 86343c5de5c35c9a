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
//! payload, headers), so it serves any database with the messaging outbox tables.
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

use ordermesh_messaging::amqp::BrokerConfig;
use ordermesh_runtime::config::{self, ConfigError, Env, Var};
use ordermesh_runtime::db;
use ordermesh_runtime::health::{Probe, Readiness};
use ordermesh_runtime::service::{self, vars};
use ordermesh_runtime::tasks::Tasks;
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
pub const DEFAULT_WARM_ROWS: usize = 75;
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
/// The host part of [`ENV_INSTANCE`]'s default.
pub const ENV_HOSTNAME: &str = "HOSTNAME";

/// The relay's own variables (and those of `relay dlq`), as `--help` and
/// docs/CONFIGURATION.md list them.
pub const VARS: &[Var] = &[
    Var::new(
        ENV_SOURCES,
        "postgres://postgres@127.0.0.1:5432/ordermesh_orders,postgres://postgres@127.0.0.1:5432/ordermesh_processor",
        "URLs",
        "the databases whose outbox it drains, comma-separated",
    ),
    Var::new(
        ENV_ADMIN_ADDR,
        DEFAULT_ADMIN_ADDR,
        "address",
        "/healthz, /readyz, /metrics, /asyncapi.json",
    ),
    Var::unset(
        ENV_INSTANCE,
        "<host name>-<pid>",
        "name",
        "its name in pg_stat_activity: ordermesh-relay/<instance>, lease connection ordermesh-relay-lease/<instance>",
    ),
    Var::unset(
        ENV_HOSTNAME,
        "/proc/sys/kernel/hostname",
        "name",
        "the host name in RELAY_INSTANCE's default",
    ),
    Var::new(
        ENV_BATCH_SIZE,
        "500",
        "rows",
        "rows claimed and published per transaction (1 to 10000)",
    ),
    Var::new(
        ENV_FALLBACK_TICK_MS,
        "1000",
        "ms",
        "drain at least this often, even when no NOTIFY came",
    ),
    Var::new(
        ENV_POLL_MS,
        "1",
        "ms",
        "poll interval while rows keep coming (0: never poll, every writer notifies)",
    ),
    Var::new(
        ENV_WARM_ROWS,
        "75",
        "rows",
        "poll from this many rows per RELAY_IDLE_AFTER_MS up (or a tenth of them in a tenth of it); below, writers notify",
    ),
    Var::new(
        ENV_IDLE_AFTER_MS,
        "250",
        "ms",
        "the window rows are counted in: polling stops once it held fewer than 3/4 of RELAY_WARM_ROWS",
    ),
    Var::new(
        ENV_REBALANCE_MS,
        "500",
        "ms",
        "how often relays recount each other and move partition leases",
    ),
    Var::new(
        ENV_PUBLISH_TIMEOUT_MS,
        "5000",
        "ms",
        "longest wait for a batch's publisher confirms, and for a broker connection",
    ),
    Var::new(
        ENV_HANDOVER_AFTER_MS,
        "10000",
        "ms",
        "a relay that could not publish for this long gives up its partition leases until the broker answers again",
    ),
    Var::new(
        ENV_MAX_ATTEMPTS,
        "10",
        "count",
        "a row the broker refused (unroutable, nacked) this many times is parked",
    ),
    Var::new(
        ENV_RETRY_MS,
        "1000",
        "ms",
        "wait before retrying a refused row; doubles per attempt, at most 60 s",
    ),
    Var::new(
        ENV_MAX_MESSAGE_BYTES,
        "134217728",
        "bytes",
        "the broker's max_message_size; a larger payload is parked",
    ),
    Var::new(
        dlq::ENV_ORDER_QUEUE,
        dlq::DEFAULT_ORDER_QUEUE,
        "name",
        "order-svc's work queue, which relay dlq works on without --queue",
    ),
    Var::new(
        dlq::ENV_PROCESSOR_QUEUE,
        dlq::DEFAULT_PROCESSOR_QUEUE,
        "name",
        "processor-svc's work queue, which relay dlq works on without --queue",
    ),
];

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
    pub tls: Option<ordermesh_runtime::tls::ServerTls>,
    /// How long in-flight batches get to finish after shutdown.
    pub shutdown_grace: Duration,
}

impl Config {
    /// Every variable the relay reads (`relay dlq` and `relay outbox`
    /// included), as its `--help` lists them: its own, then the shared
    /// groups.
    pub fn vars() -> Vec<Var> {
        [
            VARS,
            ordermesh_messaging::vars::BROKER,
            vars::SERVER,
            vars::TELEMETRY,
        ]
        .concat()
    }

    /// The `--help` section listing [`Config::vars`].
    pub fn help() -> String {
        config::help(&Self::vars())
    }

    /// Reads the relay's variables of [`Config::vars`] but telemetry's and
    /// those of `relay dlq`; a bad value is an error naming the variable.
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        let batch_size = config::parse(env, ENV_BATCH_SIZE, DEFAULT_BATCH_SIZE)?;
        if !(1..=10_000).contains(&batch_size) {
            let reason = "must be between 1 and 10000";
            return Err(config::invalid(ENV_BATCH_SIZE, batch_size, reason));
        }
        let max_attempts = config::parse(env, ENV_MAX_ATTEMPTS, DEFAULT_MAX_ATTEMPTS)?;
        if max_attempts < 1 {
            let reason = "must be at least 1";
            return Err(config::invalid(ENV_MAX_ATTEMPTS, max_attempts, reason));
        }
        let admin_addr = DEFAULT_ADMIN_ADDR.parse().expect("valid default");
        let grace = (
            service::ENV_SHUTDOWN_GRACE_MS,
            service::DEFAULT_SHUTDOWN_GRACE,
        );
        Ok(Self {
            sources: sources(env)?,
            batch_size,
            fallback_tick: positive_millis(env, ENV_FALLBACK_TICK_MS, DEFAULT_FALLBACK_TICK)?,
            rebalance_interval: positive_millis(env, ENV_REBALANCE_MS, DEFAULT_REBALANCE)?,
            publish_timeout: positive_millis(env, ENV_PUBLISH_TIMEOUT_MS, DEFAULT_PUBLISH_TIMEOUT)?,
            max_attempts,
            max_message_bytes: config::at_least_one(
                env,
                ENV_MAX_MESSAGE_BYTES,
                DEFAULT_MAX_MESSAGE_BYTES,
            )?,
            broker: BrokerConfig::from_env(env)?,
            poll_interval: config::millis(env, ENV_POLL_MS, DEFAULT_POLL)?,
            idle_after: config::millis(env, ENV_IDLE_AFTER_MS, DEFAULT_IDLE_AFTER)?,
            warm_rows: config::parse(env, ENV_WARM_ROWS, DEFAULT_WARM_ROWS)?,
            handover_after: config::millis(env, ENV_HANDOVER_AFTER_MS, DEFAULT_HANDOVER_AFTER)?,
            retry_delay: config::millis(env, ENV_RETRY_MS, DEFAULT_RETRY)?,
            instance: config::string(env, ENV_INSTANCE, &default_instance(env)),
            admin_addr: config::parse(env, ENV_ADMIN_ADDR, admin_addr)?,
            tls: ordermesh_runtime::tls::ServerTls::from_env(env)?,
            shutdown_grace: config::millis(env, grace.0, grace.1)?,
        })
    }

    /// How the drain worker of `source` runs.
    fn worker_config(&self, source: &Source) -> drain::WorkerConfig {
        drain::WorkerConfig {
            database: source.config.clone(),
            instance: self.instance.clone(),
            broker: self.broker.clone(),
            policy: drain::Policy {
                source: source.name.clone(),
                batch_size: self.batch_size,
                publish_timeout: self.publish_timeout,
                max_attempts: self.max_attempts,
                retry_delay: self.retry_delay,
            },
            max_message_bytes: self.max_message_bytes,
            fallback_tick: self.fallback_tick,
            poll_interval: self.poll_interval,
            idle_after: self.idle_after,
            warm_rows: self.warm_rows,
            rebalance_interval: self.rebalance_interval,
            handover_after: self.handover_after,
        }
    }
}

/// [`ENV_SOURCES`]: at least one database URL.
pub(crate) fn sources(env: &impl Env) -> Result<Vec<Source>, ConfigError> {
    let mut sources = Vec::new();
    for url in config::list(env, ENV_SOURCES, DEFAULT_SOURCES) {
        let config = db::parse_url(env, ENV_SOURCES, &url)?;
        let name = config.get_dbname().unwrap_or_default().to_owned();
        sources.push(Source { name, config });
    }
    if sources.is_empty() {
        let reason = "at least one database URL is needed";
        return Err(config::invalid(ENV_SOURCES, "", reason));
    }
    Ok(sources)
}

/// A duration in milliseconds that must not be zero.
fn positive_millis(env: &impl Env, name: &str, default: Duration) -> Result<Duration, ConfigError> {
    let value = config::millis(env, name, default)?;
    if value.is_zero() {
        return Err(config::invalid(name, 0, "must be positive"));
    }
    Ok(value)
}

/// Runs the relay: the admin listener, and per source a LISTEN connection
/// and a drain worker, until `shutdown`; then finishes in-flight batches.
/// Ready (/readyz 200) while the broker and every source answer.
pub async fn run(
    config: Config,
    admin: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut tasks = Tasks::new(shutdown.clone());
    let readiness = Readiness::http_only();
    let broker = config.broker.clone();
    let name = format!("relay-readiness/{}", config.instance);
    let mut probes = vec![ordermesh_messaging::probe::broker(broker, name)];
    let exchange = config.broker.exchange.clone();
    let tls = config.tls.clone();
    let admin = admin::serve(admin, tls, readiness.clone(), exchange, shutdown.clone());
    tasks.spawn("admin", admin);
    for source in &config.sources {
        probes.push(relay_source(&mut tasks, &config, source, &shutdown)?);
    }
    let readiness = ordermesh_runtime::health::watch(readiness, probes, shutdown);
    tasks.spawn("readiness", readiness);
    tasks.join(config.shutdown_grace).await
}

/// Spawns the tasks of one source: its backlog monitor, its LISTEN
/// connection and its drain worker. Returns the probe of the source.
fn relay_source(
    tasks: &mut Tasks,
    config: &Config,
    source: &Source,
    shutdown: &CancellationToken,
) -> anyhow::Result<Probe> {
    let wake = Arc::new(Notify::new());
    // The partitions this relay holds on the source, for the listener.
    let held = Arc::new(AtomicU64::new(0));
    let mut named = source.config.clone();
    named.application_name(format!("{APPLICATION_PREFIX}{}", config.instance));
    // The worker uses one connection at a time; the probes and the backlog
    // monitor get their own, so a slow count under a backlog never holds up
    // the drain.
    let pool = db::pool(claiming(config, source, &named), 1)?;
    let observing = db::pool(named.clone(), 1)?;
    let name = source.name.clone();
    let backlog = stats::run_monitor(name.clone(), observing.clone(), shutdown.clone());
    tasks.spawn("backlog", backlog);
    let listener = listen::run_listener(
        name.clone(),
        named,
        wake.clone(),
        held.clone(),
        shutdown.clone(),
    );
    tasks.spawn("listener", listener);
    let worker = config.worker_config(source);
    let worker = drain::run_worker(worker, pool, wake, held, shutdown.clone());
    tasks.spawn("worker", worker);
    tracing::info!(source = %source.name, instance = %config.instance, "relaying");
    Ok(Probe::Database {
        name,
        pool: observing,
    })
}

/// The settings of the claiming connection of `source`. Losing a delete to
/// a crash only republishes (consumers dedupe), so the relay's commits need
/// not wait for the WAL flush. The lock timeout bounds a claim waiting on a
/// previous lease holder's batch; the idle timeout ends a claim transaction
/// whose relay stopped answering (its publish is bounded by
/// `publish_timeout` already).
fn claiming(config: &Config, source: &Source, named: &db::DbConfig) -> db::DbConfig {
    let mut claiming = named.clone();
    let idle_timeout = config.publish_timeout.as_millis() * 2 + 5_000;
    claiming.options(format!(
        "{} -c synchronous_commit=off -c lock_timeout=5000 \
         -c idle_in_transaction_session_timeout={idle_timeout}",
        source.config.get_options().unwrap_or_default()
    ));
    claiming
}

/// `<host name>-<pid>`: unique per process, and readable in
/// `pg_stat_activity`.
fn default_instance(env: &impl Env) -> String {
    let host = env
        .var(ENV_HOSTNAME)
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

    #[test]
    fn help_lists_every_variable_read_with_its_default() {
        let read = |env: &config::Recording| {
            let relay = Config::from_env(env)?;
            Ok((
                relay,
                dlq::Config::from_env(env)?,
                parked::Config::from_env(env)?,
            ))
        };
        config::check_listed(&Config::vars(), &vars::read_at_start(), read).unwrap();
    }
}
