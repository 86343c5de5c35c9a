//! order-svc: the `ordermesh.order.v1.OrderService`. It accepts orders over
//! gRPC, stores each with an `order.created` outbox event in one transaction,
//! and consumes `payment.succeeded` / `payment.failed` to move orders from
//! PENDING to PAID or FAILED exactly once.
//!
//! Layout: [`domain`] (types and validation), [`store`] (all SQL),
//! [`grpc`] (handlers), [`events`] (event codec), [`consumer`] (payment
//! results), [`watch`] (WatchOrder's LISTEN fan-out), [`pending`] (the
//! oldest-PENDING gauge), [`error`]. This file holds the configuration and
//! [`run`], which `main.rs` and the integration tests both call. Every call
//! needs a bearer token (see `ordermesh_platform::auth`); a customer reaches
//! only its own orders ([`grpc`]).

pub mod consumer;
pub mod domain;
pub mod error;
pub mod events;
pub mod grpc;
pub mod pending;
pub mod store;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ordermesh_platform::amqp::{BrokerConfig, ConsumerConfig, ConsumerStatus, QueueSpec};
use ordermesh_platform::auth::{Auth, AuthConfig};
use ordermesh_platform::config::{self, ConfigError, Env};
use ordermesh_platform::health::{Probe, Readiness};
use ordermesh_platform::redelivery::RetryPolicy;
use ordermesh_proto::order::v1::order_service_server::SERVICE_NAME;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

mod embedded {
    refinery::embed_migrations!("migrations");
}

pub const ENV_ADDR: &str = "ORDER_SVC_ADDR";
pub const DEFAULT_ADDR: &str = "127.0.0.1:50051";
pub const ENV_DATABASE_URL: &str = "ORDER_DATABASE_URL";
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/ordermesh_orders";
pub const ENV_QUEUE: &str = "ORDER_QUEUE";
pub const DEFAULT_QUEUE: &str = "ordermesh.order-svc.payment-results";
pub const ENV_PREFETCH: &str = "AMQP_PREFETCH";
pub const DEFAULT_PREFETCH: u16 = 64;
pub const ENV_POOL_SIZE: &str = "DB_POOL_SIZE";
pub const DEFAULT_POOL_SIZE: usize = 16;
pub const ENV_SHUTDOWN_GRACE: &str = "SHUTDOWN_GRACE_MS";
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_millis(10_000);

/// Everything order-svc needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where `main` binds the gRPC listener (`run` takes it bound).
    pub addr: SocketAddr,
    /// The service's own database (and its `sslmode`); created at start
    /// when missing.
    pub database: ordermesh_platform::db::DbConfig,
    /// TLS for the gRPC/REST port (`TLS_CERT_FILE`, `TLS_KEY_FILE`);
    /// `None` serves plaintext.
    pub tls: Option<ordermesh_platform::tls::ServerTls>,
    /// Browser origins allowed to call the port (`CORS_ALLOWED_ORIGINS`);
    /// none by default.
    pub cors: ordermesh_platform::cors::CorsConfig,
    pub db_pool_size: usize,
    pub broker: BrokerConfig,
    /// Durable queue of payment results, bound to both result keys.
    pub queue: String,
    /// Payment results handled at once (and unacknowledged in flight).
    pub prefetch: u16,
    /// Retries of a transiently failed payment result (`AMQP_MAX_ATTEMPTS`,
    /// `AMQP_RETRY_BASE_MS`, `AMQP_RETRY_MAX_MS`).
    pub retry: RetryPolicy,
    /// How long the tasks get to drain after shutdown is requested.
    pub shutdown_grace: Duration,
    /// Inbox entries older than this are deleted (`INBOX_RETENTION_HOURS`).
    pub inbox_retention: Duration,
    /// Larger gRPC request messages are refused (`GRPC_MAX_MESSAGE_BYTES`).
    pub max_message_bytes: usize,
    /// Bearer token verification and rate limits (`AUTH_JWT_SECRET`,
    /// `AUTH_JWT_PUBLIC_KEYS`, `AUTH_JWKS_FILE`, `RATE_LIMIT_*`).
    pub auth: AuthConfig,
    /// How often the oldest PENDING order's age is sampled into its gauge
    /// ([`pending::DEFAULT_INTERVAL`]; tests shorten it).
    pub pending_age_interval: Duration,
}

impl Config {
    /// Reads the variables of the README's configuration table; a bad
    /// value is an error naming the variable.
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        let addr_text = config::string(env, ENV_ADDR, DEFAULT_ADDR);
        let addr = addr_text
            .parse()
            .map_err(|e| config::invalid(ENV_ADDR, &addr_text, e))?;
        let url = config::string(env, ENV_DATABASE_URL, DEFAULT_DATABASE_URL);
        let database = ordermesh_platform::db::parse_url(env, ENV_DATABASE_URL, &url)?;
        let db_pool_size = config::parse(env, ENV_POOL_SIZE, DEFAULT_POOL_SIZE)?;
        if db_pool_size == 0 {
            return Err(config::invalid(ENV_POOL_SIZE, 0, "must be at least 1"));
        }
        let prefetch = config::parse(env, ENV_PREFETCH, DEFAULT_PREFETCH)?;
        if prefetch == 0 {
            return Err(config::invalid(ENV_PREFETCH, 0, "must be at least 1"));
        }
        Ok(Self {
            addr,
            database,
            tls: ordermesh_platform::tls::ServerTls::from_env(env)?,
            cors: ordermesh_platform::cors::CorsConfig::from_env(env)?,
            db_pool_size,
            broker: BrokerConfig::from_env(env)?,
            queue: config::string(env, ENV_QUEUE, DEFAULT_QUEUE),
            prefetch,
            retry: RetryPolicy::from_env(env)?,
            shutdown_grace: config::millis(env, ENV_SHUTDOWN_GRACE, DEFAULT_SHUTDOWN_GRACE)?,
            inbox_retention: ordermesh_platform::inbox::retention_from_env(env)?,
            max_message_bytes: ordermesh_platform::grpc::max_message_bytes(env)?,
            auth: AuthConfig::from_env(env)?,
            pending_age_interval: pending::DEFAULT_INTERVAL,
        })
    }

    /// How the payment-result consumer runs, including its queue topology.
    pub fn consumer_config(&self) -> ConsumerConfig {
        ConsumerConfig {
            broker: self.broker.clone(),
            queue: QueueSpec {
                name: self.queue.clone(),
                routing_keys: events::PAYMENT_RESULT_KEYS
                    .iter()
                    .map(|k| (*k).to_owned())
                    .collect(),
            },
            prefetch: self.prefetch,
            retry: self.retry.clone(),
        }
    }
}

/// Creates the database if missing and applies the migrations.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    ordermesh_platform::db::connect_and_migrate(
        &config.database,
        1,
        embedded::migrations::runner(),
        &CancellationToken::new(),
    )
    .await?;
    Ok(())
}

/// Runs the service on `listener` until `shutdown` fires: migrates, serves
/// gRPC (with health and reflection) and consumes payment results, then
/// drains within `config.shutdown_grace`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // The token keys first: without them the service does not start.
    let auth = Arc::new(Auth::load(&config.auth).await?);
    let pool = ordermesh_platform::db::connect_and_migrate(
        &config.database,
        config.db_pool_size,
        embedded::migrations::runner(),
        &shutdown,
    )
    .await
    .context("prepare the database")?;
    let store = store::Store::new(pool.clone());
    let expiry_pool = pool.clone();
    let pending_store = store.clone();
    let watch_hub = watch::WatchHub::new(&config.database, shutdown.clone());

    let (health_reporter, health) = ordermesh_platform::grpc::health(SERVICE_NAME).await;
    // Ready (gRPC health SERVING, /readyz 200) while the database answers,
    // the consumer is connected and WatchOrder's LISTEN connection is up.
    let readiness = Readiness::with_grpc(health_reporter, &[SERVICE_NAME]).await;
    let consumer_status = ConsumerStatus::new(&config.queue);
    let probes = vec![
        Probe::Database {
            name: config.database.get_dbname().unwrap_or_default().to_owned(),
            pool,
        },
        Probe::Consumer(consumer_status.clone()),
        Probe::Flag {
            name: "order watch LISTEN connection".to_owned(),
            up: watch_hub.connected(),
        },
    ];
    let routes = tonic::service::Routes::new(health).add_service(
        grpc::OrderApi::new(store.clone(), watch_hub.clone())
            .into_server()
            .max_decoding_message_size(config.max_message_bytes),
    );
    // /healthz, /readyz and /metrics on the gRPC port.
    let routes = ordermesh_platform::health::with_ops_routes(routes, &readiness);
    // Bearer tokens on every call but health, reflection and the
    // operational routes; rate limits per caller.
    let routes = ordermesh_platform::auth::protect(routes, auth);

    let mut tasks = ordermesh_platform::tasks::Tasks::new(shutdown.clone());
    tasks.spawn(
        "grpc",
        ordermesh_platform::grpc::serve_with(
            listener,
            routes,
            config.tls.clone(),
            config.cors.clone(),
            shutdown.clone(),
        ),
    );
    tasks.spawn(
        "readiness",
        ordermesh_platform::health::watch(readiness, probes, shutdown.clone()),
    );
    tasks.spawn("order watch", watch_hub.run());
    tasks.spawn(
        "inbox expiry",
        ordermesh_platform::inbox::run_expiry(
            expiry_pool,
            config.inbox_retention,
            shutdown.clone(),
        ),
    );
    tasks.spawn(
        "oldest pending order",
        pending::run(pending_store, config.pending_age_interval, shutdown.clone()),
    );
    tasks.spawn(
        "payment-results",
        ordermesh_platform::amqp::run_consumer_with_status(
            config.consumer_config(),
            Arc::new(consumer::PaymentResults::new(store)),
            consumer_status,
            shutdown,
        ),
    );
    tasks.join(config.shutdown_grace).await
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&'static str, &str)]) -> HashMap<&'static str, String> {
        pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = Config::from_env(&env(&[])).unwrap();
        assert_eq!(c.addr.to_string(), DEFAULT_ADDR);
        assert_eq!(c.database.get_dbname(), Some("ordermesh_orders"));
        assert_eq!(c.queue, DEFAULT_QUEUE);
        assert_eq!(c.prefetch, 64);
        assert_eq!(c.db_pool_size, 16);
        assert_eq!(c.shutdown_grace, Duration::from_secs(10));
        assert_eq!(c.broker.exchange, "ordermesh.events");
        let spec = c.consumer_config().queue;
        assert_eq!(
            spec.routing_keys,
            ["payment.succeeded", "payment.failed", "payment.refunded"]
        );
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (name, value) in [
            (ENV_ADDR, "localhost"),
            (ENV_DATABASE_URL, "postgres://u@h:5432"),
            (ENV_POOL_SIZE, "0"),
            (ENV_POOL_SIZE, "lots"),
            (ENV_PREFETCH, "0"),
            (ENV_PREFETCH, "70000"),
            (ENV_SHUTDOWN_GRACE, "-1"),
        ] {
            let err = Config::from_env(&env(&[(name, value)])).unwrap_err();
            assert_eq!(err.name, name, "{err}");
        }
    }
}
