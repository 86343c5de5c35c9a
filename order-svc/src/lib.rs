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
//! needs a bearer token (see `ordermesh_auth`); a customer reaches
//! only its own orders ([`grpc`]).

pub mod consumer;
pub mod domain;
pub mod error;
pub mod events;
pub mod grpc;
pub mod pending;
pub mod store;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use ordermesh_auth::{Auth, AuthConfig};
use ordermesh_messaging::amqp::{BrokerConfig, ConsumerConfig, ConsumerStatus, QueueSpec};
use ordermesh_messaging::redelivery::RetryPolicy;
use ordermesh_proto::order::v1::order_service_server::SERVICE_NAME;
use ordermesh_runtime::config::{self, ConfigError, Env, Var};
use ordermesh_runtime::health::Probe;
use ordermesh_runtime::service::{Names, OwnConfig, Service, ServiceConfig};
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

/// Everything order-svc needs to start: what every service reads, and
/// [`OrderConfig`] (`config.queue`, ...). `Config::help()` lists it all.
pub type Config = ServiceConfig<OrderConfig>;

/// What order-svc reads besides what every service reads.
#[derive(Debug, Clone)]
pub struct OrderConfig {
    pub broker: BrokerConfig,
    /// Durable queue of payment results, bound to both result keys.
    pub queue: String,
    /// Payment results handled at once (and unacknowledged in flight).
    pub prefetch: u16,
    /// Retries of a transiently failed payment result (`AMQP_MAX_ATTEMPTS`,
    /// `AMQP_RETRY_BASE_MS`, `AMQP_RETRY_MAX_MS`).
    pub retry: RetryPolicy,
    /// Inbox entries older than this are deleted (`INBOX_RETENTION_HOURS`).
    pub inbox_retention: Duration,
    /// Bearer token verification and rate limits (`AUTH_JWT_SECRET`,
    /// `AUTH_JWT_PUBLIC_KEYS`, `AUTH_JWKS_FILE`, `RATE_LIMIT_*`).
    pub auth: AuthConfig,
    /// How often the oldest PENDING order's age is sampled into its gauge
    /// ([`pending::DEFAULT_INTERVAL`]; tests shorten it).
    pub pending_age_interval: Duration,
}

impl OwnConfig for OrderConfig {
    const NAMES: Names = Names {
        addr: (ENV_ADDR, DEFAULT_ADDR),
        database_url: (ENV_DATABASE_URL, DEFAULT_DATABASE_URL),
    };
    const VARS: &'static [Var] = &[Var::new(
        ENV_QUEUE,
        DEFAULT_QUEUE,
        "name",
        "its work queue (payment results); retry and dead-letter queues are named after it",
    )];
    const USES: &'static [&'static [Var]] = &[
        ordermesh_messaging::vars::CONSUMER,
        ordermesh_auth::config::VARS,
        ordermesh_messaging::vars::BROKER,
    ];

    fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        Ok(Self {
            queue: config::string(env, ENV_QUEUE, DEFAULT_QUEUE),
            broker: BrokerConfig::from_env(env)?,
            prefetch: config::at_least_one(env, ENV_PREFETCH, DEFAULT_PREFETCH)?,
            retry: RetryPolicy::from_env(env)?,
            inbox_retention: ordermesh_messaging::inbox::retention_from_env(env)?,
            auth: AuthConfig::from_env(env)?,
            pending_age_interval: pending::DEFAULT_INTERVAL,
        })
    }
}

impl OrderConfig {
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

/// The database's migrations: the outbox and inbox, then the service's own.
fn migrations() -> Vec<refinery::Runner> {
    vec![
        ordermesh_messaging::migrations(),
        embedded::migrations::runner(),
    ]
}

/// Creates the database if missing and applies the migrations.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    config.migrate(migrations()).await
}

/// Runs the service on `listener` until `shutdown` fires: loads the token
/// keys, migrates, serves gRPC (with health and reflection) and consumes
/// payment results, then drains within `config.shutdown_grace`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // The token keys first: without them the service does not start.
    let auth = Arc::new(Auth::load(&config.auth).await?);
    let (mut service, pool) =
        Service::start(&config, SERVICE_NAME, migrations(), &shutdown).await?;
    let store = store::Store::new(pool.clone());
    let watch_hub = watch::WatchHub::new(&config.database, shutdown.clone());
    add_tasks(&mut service, &config, &store, &watch_hub, pool);
    let api = grpc::OrderApi::new(store, watch_hub)
        .into_server()
        .max_decoding_message_size(config.max_message_bytes);
    // Bearer tokens on every call but health, reflection and the
    // operational routes; rate limits per caller.
    let routes =
        |routes: tonic::service::Routes| ordermesh_auth::protect(routes.add_service(api), auth);
    service.serve(listener, routes).await
}

/// order-svc's own tasks and probes: ready while the database answers, the
/// consumer is connected and WatchOrder's LISTEN connection is up.
fn add_tasks(
    service: &mut Service,
    config: &Config,
    store: &store::Store,
    watch_hub: &watch::WatchHub,
    pool: deadpool_postgres::Pool,
) {
    let shutdown = service.shutdown();
    let consumer_status = ConsumerStatus::new(&config.queue);
    let payment_results = ordermesh_messaging::amqp::run_consumer_with_status(
        config.consumer_config(),
        Arc::new(consumer::PaymentResults::new(store.clone())),
        consumer_status.clone(),
        shutdown.clone(),
    );
    let retention = config.inbox_retention;
    let pending_age = pending::run(store.clone(), config.pending_age_interval, shutdown.clone());
    service
        .probe(ordermesh_messaging::probe::consumer(consumer_status))
        .probe(Probe::Flag {
            name: "order watch LISTEN connection".to_owned(),
            up: watch_hub.connected(),
        })
        .spawn("order watch", watch_hub.clone().run())
        .spawn(
            "inbox expiry",
            ordermesh_messaging::inbox::run_expiry(pool, retention, shutdown),
        )
        .spawn("oldest pending order", pending_age)
        .spawn("payment-results", payment_results);
}

#[cfg(test)]
mod tests {
    use ordermesh_runtime::service;

    use super::*;

    #[test]
    fn defaults_match_the_contract() {
        let c = Config::from_env(&config::Recording::default()).unwrap();
        assert_eq!(c.addr.to_string(), DEFAULT_ADDR);
        assert_eq!(c.database.get_dbname(), Some("ordermesh_orders"));
        assert_eq!(c.queue, DEFAULT_QUEUE);
        assert_eq!(c.prefetch, 64);
        // The shared part (pool, grace, TLS) is runtime::service's test.
        let spec = c.consumer_config().queue;
        assert_eq!(
            spec.routing_keys,
            ["payment.succeeded", "payment.failed", "payment.refunded"]
        );
    }

    #[test]
    fn bad_values_name_their_variable() {
        let refused = [
            (ENV_ADDR, "localhost"),
            (ENV_DATABASE_URL, "postgres://u@h:5432"),
            (ENV_PREFETCH, "0"),
            (ENV_PREFETCH, "70000"),
        ];
        config::check_refused(&refused, Config::from_env).unwrap();
    }

    #[test]
    fn help_lists_every_variable_read_with_its_default() {
        let elsewhere = service::vars::read_at_start();
        config::check_listed(&Config::vars(), &elsewhere, Config::from_env).unwrap();
    }
}
