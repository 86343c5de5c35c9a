//! processor-svc: holds customer accounts, pays for orders and refunds
//! cancelled ones.
//!
//! It serves `ordermesh.payment.v1.AccountService` over gRPC ([`grpc`]:
//! accounts from [`account`], their ledger from [`ledger`]) and consumes
//! `order.created` and `order.cancelled` events ([`consumer`]). Each order
//! is settled exactly once: the inbox entry, the rules' decision ([`rules`],
//! a pure function), the debit, the `payments` row, the ledger row and the
//! outcome event in the outbox are written in one transaction ([`store`],
//! the only module with SQL). A cancel is applied the same way: before the
//! charge it leaves a tombstone so the order is never charged; after it, the
//! debit is refunded once and `payment.refunded` enqueued. The relay later
//! publishes the outbox to the order service.
//!
//! It also serves `ordermesh.auth.v1.AuthService` ([`auth`]: register and
//! log in for a bearer token). Every other call needs a token; a customer
//! token reaches only its own account (see [`grpc`]).
//!
//! [`Config`], [`migrate`], [`run`] and [`issue_token`] are what `main.rs`
//! and the integration tests use.

pub mod account;
pub mod auth;
pub mod consumer;
mod error;
pub mod grpc;
pub mod ledger;
pub mod rules;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ordermesh_platform::amqp::{BrokerConfig, ConsumerConfig, ConsumerStatus, QueueSpec};
use ordermesh_platform::auth::{Auth, AuthConfig, Role, Signer, TokenConfig};
use ordermesh_platform::config::{self, ConfigError, Env};
use ordermesh_platform::health::{Probe, Readiness};
use ordermesh_platform::redelivery::RetryPolicy;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;

pub use error::Error;

use crate::auth::{AuthApi, LoginPolicy};
use crate::consumer::{AbortAfterCommit, OrderEventHandler};
use crate::grpc::AccountApi;
use crate::rules::Embargo;
use crate::store::Store;

pub const ENV_ADDR: &str = "PROCESSOR_SVC_ADDR";
pub const DEFAULT_ADDR: &str = "127.0.0.1:50052";
pub const ENV_DATABASE_URL: &str = "PROCESSOR_DATABASE_URL";
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/ordermesh_processor";
pub const ENV_QUEUE: &str = "PROCESSOR_QUEUE";
/// Named before the queue also took `order.cancelled`; kept, so a deployed
/// queue (and what waits in it) stays in use.
pub const DEFAULT_QUEUE: &str = "ordermesh.processor-svc.order-created";
pub const ENV_EMBARGOED_SKUS: &str = "EMBARGOED_SKUS";
pub const DEFAULT_EMBARGOED_SKUS: &[&str] = &["pineapple_pizza", "teapot"];
pub const ENV_PREFETCH: &str = "AMQP_PREFETCH";
pub const DEFAULT_PREFETCH: u16 = 64;
pub const ENV_DB_POOL_SIZE: &str = "DB_POOL_SIZE";
pub const DEFAULT_DB_POOL_SIZE: usize = 16;
pub const ENV_SHUTDOWN_GRACE_MS: &str = "SHUTDOWN_GRACE_MS";
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Fault injection, for chaos runs only (`make chaos`): the process aborts
/// after this many of every 1,000 committed settlements, between the commit
/// and the ack, so the broker redelivers a message whose effect is already
/// in the database. Off (0) unless set; never set it in production.
pub const ENV_CHAOS_ABORT_AFTER_COMMIT_PERMILLE: &str =
    "PROCESSOR_CHAOS_ABORT_AFTER_COMMIT_PERMILLE";
pub const DEFAULT_CHAOS_ABORT_AFTER_COMMIT_PERMILLE: u16 = 0;

/// The gRPC service name, as health checks and reflection know it.
pub const GRPC_SERVICE: &str =
    <ordermesh_proto::payment::v1::account_service_server::AccountServiceServer<AccountApi> as NamedService>::NAME;

/// Everything the service reads from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where `main` binds gRPC; tests bind their own listener.
    pub addr: SocketAddr,
    /// The processor's database (and its `sslmode`; created when missing).
    pub database: ordermesh_platform::db::DbConfig,
    /// TLS for the gRPC/REST port (`TLS_CERT_FILE`, `TLS_KEY_FILE`);
    /// `None` serves plaintext.
    pub tls: Option<ordermesh_platform::tls::ServerTls>,
    /// Browser origins allowed to call the port (`CORS_ALLOWED_ORIGINS`);
    /// none by default.
    pub cors: ordermesh_platform::cors::CorsConfig,
    pub db_pool_size: usize,
    pub broker: BrokerConfig,
    /// The queue bound to `order.created` and `order.cancelled`; dead
    /// letters go to `<queue>.dlq`.
    pub queue: String,
    /// Deliveries in flight at once.
    pub prefetch: u16,
    pub embargo: Embargo,
    /// How long in-flight work may take to finish after shutdown.
    pub shutdown_grace: Duration,
    /// Inbox entries older than this are deleted (`INBOX_RETENTION_HOURS`).
    pub inbox_retention: Duration,
    /// Larger gRPC request messages are refused (`GRPC_MAX_MESSAGE_BYTES`).
    pub max_message_bytes: usize,
    /// Retries of a transiently failed event (`AMQP_MAX_ATTEMPTS`,
    /// `AMQP_RETRY_BASE_MS`, `AMQP_RETRY_MAX_MS`).
    pub retry: RetryPolicy,
    /// Fault injection (`PROCESSOR_CHAOS_ABORT_AFTER_COMMIT_PERMILLE`):
    /// abort after a committed settlement, before its ack. 0 in production.
    pub chaos_abort_after_commit: AbortAfterCommit,
    /// Bearer token verification and rate limits (`AUTH_JWT_SECRET`,
    /// `AUTH_JWT_PUBLIC_KEYS`, `AUTH_JWKS_FILE`, `RATE_LIMIT_*`).
    pub auth: AuthConfig,
    /// How issued tokens are signed (`AUTH_JWT_SIGNING_KEY_FILE`,
    /// `AUTH_TOKEN_TTL_S`).
    pub tokens: TokenConfig,
    /// Hashing waits and the per-customer login throttle
    /// (`AUTH_HASH_WAIT_MS`, `AUTH_LOGIN_*`).
    pub login: LoginPolicy,
}

impl Config {
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        let addr = config::parse(env, ENV_ADDR, default_addr())?;
        let url = config::string(env, ENV_DATABASE_URL, DEFAULT_DATABASE_URL);
        let database = ordermesh_platform::db::parse_url(env, ENV_DATABASE_URL, &url)?;
        let db_pool_size = config::parse(env, ENV_DB_POOL_SIZE, DEFAULT_DB_POOL_SIZE)?;
        if db_pool_size == 0 {
            return Err(config::invalid(ENV_DB_POOL_SIZE, 0, "must be at least 1"));
        }
        let prefetch = config::parse(env, ENV_PREFETCH, DEFAULT_PREFETCH)?;
        if prefetch == 0 {
            return Err(config::invalid(ENV_PREFETCH, 0, "must be at least 1"));
        }
        let embargo = Embargo::new(config::list(
            env,
            ENV_EMBARGOED_SKUS,
            DEFAULT_EMBARGOED_SKUS,
        ));
        let abort_permille = config::parse(
            env,
            ENV_CHAOS_ABORT_AFTER_COMMIT_PERMILLE,
            DEFAULT_CHAOS_ABORT_AFTER_COMMIT_PERMILLE,
        )?;
        if abort_permille > 1000 {
            return Err(config::invalid(
                ENV_CHAOS_ABORT_AFTER_COMMIT_PERMILLE,
                abort_permille,
                "must be at most 1000",
            ));
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
            embargo,
            shutdown_grace: config::millis(env, ENV_SHUTDOWN_GRACE_MS, DEFAULT_SHUTDOWN_GRACE)?,
            inbox_retention: ordermesh_platform::inbox::retention_from_env(env)?,
            max_message_bytes: ordermesh_platform::grpc::max_message_bytes(env)?,
            retry: RetryPolicy::from_env(env)?,
            chaos_abort_after_commit: AbortAfterCommit::new(abort_permille),
            auth: AuthConfig::from_env(env)?,
            tokens: TokenConfig::from_env(env)?,
            login: LoginPolicy::from_env(env)?,
        })
    }

    /// The consumer's queue, bound to both events of an order. Handlers run
    /// concurrently, so a cancel may be applied before its order's charge;
    /// the store gives the same result either way.
    pub fn queue_spec(&self) -> QueueSpec {
        use ordermesh_proto::events::v1::{ORDER_CANCELLED, ORDER_CREATED};
        QueueSpec {
            name: self.queue.clone(),
            routing_keys: vec![ORDER_CREATED.to_owned(), ORDER_CANCELLED.to_owned()],
        }
    }
}

fn default_addr() -> SocketAddr {
    DEFAULT_ADDR.parse().expect("the default address parses")
}

/// A token for `subject` as `role`, signed with the configured key
/// (`processor-svc token`); `ttl` overrides `AUTH_TOKEN_TTL_S`.
pub fn issue_token(
    config: &Config,
    subject: &str,
    role: Role,
    ttl: Option<Duration>,
) -> Result<String, ConfigError> {
    let signer = Signer::from_config(&config.auth, &config.tokens)?;
    let ttl = ttl.unwrap_or(signer.ttl());
    Ok(signer.issue_for(subject, role, ttl).token)
}

/// Creates the database if missing and applies the migrations.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    let pool = ordermesh_platform::db::connect_and_migrate(
        &config.database,
        1,
        store::migrations(),
        &CancellationToken::new(),
    )
    .await?;
    pool.close();
    Ok(())
}

/// Runs the service on `listener` until `shutdown` fires, then drains
/// within `config.shutdown_grace`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // The token keys first: without them the service does not start.
    let auth = Arc::new(Auth::load(&config.auth).await?);
    let signer = Arc::new(Signer::from_config(&config.auth, &config.tokens)?);
    signer.check_against(auth.verifier())?;
    let pool = ordermesh_platform::db::connect_and_migrate(
        &config.database,
        config.db_pool_size,
        store::migrations(),
        &shutdown,
    )
    .await
    .context("prepare the database")?;
    let store = Store::new(pool.clone());
    let expiry_pool = pool.clone();

    let (health_reporter, health) = ordermesh_platform::grpc::health(GRPC_SERVICE).await;
    // Ready (gRPC health SERVING, /readyz 200) while the database answers
    // and the consumer is connected.
    let readiness = Readiness::with_grpc(health_reporter, &[GRPC_SERVICE]).await;
    let consumer_status = ConsumerStatus::new(&config.queue);
    let probes = vec![
        Probe::Database {
            name: config.database.get_dbname().unwrap_or_default().to_owned(),
            pool,
        },
        Probe::Consumer(consumer_status.clone()),
    ];
    let routes = tonic::service::Routes::new(health).add_service(
        AccountApi::new(store.clone())
            .into_server()
            .max_decoding_message_size(config.max_message_bytes),
    );
    // /healthz, /readyz and /metrics on the gRPC port.
    let routes = ordermesh_platform::health::with_ops_routes(routes, &readiness)
        .add_service(AuthApi::new(store.clone(), signer, config.login).into_server());
    // Bearer tokens on every call but health, reflection, AuthService and
    // the operational routes; rate limits per caller.
    let routes = ordermesh_platform::auth::protect(routes, auth);

    let consumer = ConsumerConfig {
        broker: config.broker.clone(),
        queue: config.queue_spec(),
        prefetch: config.prefetch,
        retry: config.retry.clone(),
    };
    let handler = Arc::new(
        OrderEventHandler::new(store, config.embargo.clone())
            .with_abort_after_commit(config.chaos_abort_after_commit),
    );
    if config.chaos_abort_after_commit.is_enabled() {
        tracing::warn!(
            permille = config.chaos_abort_after_commit.permille(),
            "fault injection on ({ENV_CHAOS_ABORT_AFTER_COMMIT_PERMILLE}): the process will abort between settlement commits and their acks"
        );
    }
    tracing::info!(
        queue = %config.queue,
        embargoed_skus = ?config.embargo.skus().collect::<Vec<_>>(),
        "processor-svc starting"
    );

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
    tasks.spawn(
        "order-events consumer",
        ordermesh_platform::amqp::run_consumer_with_status(
            consumer,
            handler,
            consumer_status,
            shutdown.clone(),
        ),
    );
    tasks.spawn(
        "inbox expiry",
        ordermesh_platform::inbox::run_expiry(
            expiry_pool,
            config.inbox_retention,
            shutdown.clone(),
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
        assert_eq!(c.database.get_dbname(), Some("ordermesh_processor"));
        assert_eq!(c.queue, DEFAULT_QUEUE);
        assert_eq!(c.prefetch, 64);
        assert_eq!(c.db_pool_size, 16);
        assert_eq!(c.shutdown_grace, Duration::from_secs(10));
        assert_eq!(c.broker.exchange, "ordermesh.events");
        assert!(c.embargo.contains("teapot") && c.embargo.contains("pineapple_pizza"));
        assert_eq!(
            c.queue_spec().routing_keys,
            ["order.created", "order.cancelled"]
        );
        assert!(!c.chaos_abort_after_commit.is_enabled());
    }

    #[test]
    fn values_are_read() {
        let c = Config::from_env(&env(&[
            (ENV_ADDR, "0.0.0.0:7000"),
            (ENV_EMBARGOED_SKUS, "anvil, dynamite"),
            (ENV_PREFETCH, "8"),
            (ENV_SHUTDOWN_GRACE_MS, "250"),
            ("AMQP_EXCHANGE", "x"),
            (ENV_CHAOS_ABORT_AFTER_COMMIT_PERMILLE, "5"),
        ]))
        .unwrap();
        assert_eq!(c.chaos_abort_after_commit.permille(), 5);
        assert_eq!(c.addr.port(), 7000);
        assert!(c.embargo.contains("dynamite") && !c.embargo.contains("teapot"));
        assert_eq!(c.prefetch, 8);
        assert_eq!(c.shutdown_grace, Duration::from_millis(250));
        assert_eq!(c.broker.exchange, "x");
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (name, value) in [
            (ENV_ADDR, "nowhere"),
            (ENV_DATABASE_URL, "postgres://u@h:5432"),
            (ENV_PREFETCH, "0"),
            (ENV_PREFETCH, "70000"),
            (ENV_DB_POOL_SIZE, "0"),
            (ENV_SHUTDOWN_GRACE_MS, "soon"),
            (ENV_CHAOS_ABORT_AFTER_COMMIT_PERMILLE, "1001"),
            (ENV_CHAOS_ABORT_AFTER_COMMIT_PERMILLE, "often"),
        ] {
            let err = Config::from_env(&env(&[(name, value)])).unwrap_err();
            assert_eq!(err.name, name, "{value}");
        }
    }

    #[test]
    fn the_health_name_is_the_grpc_service() {
        assert_eq!(GRPC_SERVICE, "ordermesh.payment.v1.AccountService");
    }
}
