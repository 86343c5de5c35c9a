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

use std::sync::Arc;
use std::time::Duration;

use ordermesh_auth::{Auth, AuthConfig, Role, Signer, TokenConfig};
use ordermesh_messaging::amqp::{BrokerConfig, ConsumerConfig, ConsumerStatus, QueueSpec};
use ordermesh_messaging::redelivery::RetryPolicy;
use ordermesh_runtime::config::{self, ConfigError, Env, Var};
use ordermesh_runtime::service::{Names, OwnConfig, Service, ServiceConfig};
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
/// Fault injection, for chaos runs only (`make chaos`): the process aborts
/// after this many of every 1,000 committed settlements, between the commit
/// and the ack, so the broker redelivers a message whose effect is already
/// in the database. Off (0) unless set; never set it in production.
pub const ENV_CHAOS_ABORT_AFTER_COMMIT_PERMILLE: &str =
    "PROCESSOR_CHAOS_ABORT_AFTER_COMMIT_PERMILLE";
pub const DEFAULT_CHAOS_ABORT_AFTER_COMMIT_PERMILLE: u16 = 0;

/// processor-svc's own variables, as `--help` and docs/CONFIGURATION.md
/// list them (besides its address and database).
const OWN_VARS: &[Var] = &[
    Var::new(
        ENV_QUEUE,
        DEFAULT_QUEUE,
        "name",
        "its work queue (order.created and order.cancelled)",
    ),
    Var::new(
        ENV_EMBARGOED_SKUS,
        "pineapple_pizza,teapot",
        "list",
        "SKUs an order may not contain, comma-separated",
    ),
    Var::unset(
        ordermesh_auth::ENV_SIGNING_KEY_FILE,
        "signs with AUTH_JWT_SECRET",
        "path",
        "PEM private key (RS256 or EdDSA) for the tokens it issues",
    ),
    Var::new(
        ordermesh_auth::ENV_TOKEN_TTL_S,
        "3600",
        "s",
        "lifetime of the tokens it issues",
    ),
    Var::new(
        auth::ENV_HASH_WAIT_MS,
        "2000",
        "ms",
        "longest wait for a password-hashing slot, then RESOURCE_EXHAUSTED",
    ),
    Var::new(
        auth::ENV_LOGIN_MAX_FAILURES,
        "5",
        "count",
        "failed logins before a customer id is locked",
    ),
    Var::new(
        auth::ENV_LOGIN_LOCKOUT_MS,
        "30000",
        "ms",
        "first lock; doubles after each further failure",
    ),
    Var::new(
        auth::ENV_LOGIN_LOCKOUT_MAX_MS,
        "900000",
        "ms",
        "longest lock",
    ),
    Var::new(
        auth::ENV_LOGIN_FAILURE_WINDOW_MS,
        "3600000",
        "ms",
        "failures are forgotten after this long without one",
    ),
    Var::new(
        ENV_CHAOS_ABORT_AFTER_COMMIT_PERMILLE,
        "0",
        "permille",
        "fault injection for make chaos only: abort after this many of 1,000 settlements, between commit and ack. Never in production",
    ),
];

/// The gRPC service name, as health checks and reflection know it.
pub const GRPC_SERVICE: &str =
    <ordermesh_proto::payment::v1::account_service_server::AccountServiceServer<AccountApi> as NamedService>::NAME;

/// Everything processor-svc needs to start: what every service reads, and
/// [`ProcessorConfig`] (`config.queue`, ...). `Config::help()` lists it all.
pub type Config = ServiceConfig<ProcessorConfig>;

/// What processor-svc reads besides what every service reads.
#[derive(Debug, Clone)]
pub struct ProcessorConfig {
    pub broker: BrokerConfig,
    /// The queue bound to `order.created` and `order.cancelled`; dead
    /// letters go to `<queue>.dlq`.
    pub queue: String,
    /// Deliveries in flight at once.
    pub prefetch: u16,
    pub embargo: Embargo,
    /// Inbox entries older than this are deleted (`INBOX_RETENTION_HOURS`).
    pub inbox_retention: Duration,
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

impl OwnConfig for ProcessorConfig {
    const NAMES: Names = Names {
        addr: (ENV_ADDR, DEFAULT_ADDR),
        database_url: (ENV_DATABASE_URL, DEFAULT_DATABASE_URL),
    };
    const VARS: &'static [Var] = OWN_VARS;
    const USES: &'static [&'static [Var]] = &[
        ordermesh_messaging::vars::CONSUMER,
        ordermesh_auth::config::VARS,
        ordermesh_messaging::vars::BROKER,
    ];

    fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        let skus = config::list(env, ENV_EMBARGOED_SKUS, DEFAULT_EMBARGOED_SKUS);
        Ok(Self {
            prefetch: config::at_least_one(env, ENV_PREFETCH, DEFAULT_PREFETCH)?,
            chaos_abort_after_commit: abort_after_commit(env)?,
            embargo: Embargo::new(skus),
            broker: BrokerConfig::from_env(env)?,
            queue: config::string(env, ENV_QUEUE, DEFAULT_QUEUE),
            inbox_retention: ordermesh_messaging::inbox::retention_from_env(env)?,
            retry: RetryPolicy::from_env(env)?,
            auth: AuthConfig::from_env(env)?,
            tokens: TokenConfig::from_env(env)?,
            login: LoginPolicy::from_env(env)?,
        })
    }
}

impl ProcessorConfig {
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

    /// How the order-event consumer runs, including its queue topology.
    pub fn consumer_config(&self) -> ConsumerConfig {
        ConsumerConfig {
            broker: self.broker.clone(),
            queue: self.queue_spec(),
            prefetch: self.prefetch,
            retry: self.retry.clone(),
        }
    }
}

/// [`ENV_CHAOS_ABORT_AFTER_COMMIT_PERMILLE`]: at most 1000.
fn abort_after_commit(env: &impl Env) -> Result<AbortAfterCommit, ConfigError> {
    let name = ENV_CHAOS_ABORT_AFTER_COMMIT_PERMILLE;
    let permille = config::parse(env, name, DEFAULT_CHAOS_ABORT_AFTER_COMMIT_PERMILLE)?;
    if permille > 1000 {
        return Err(config::invalid(name, permille, "must be at most 1000"));
    }
    Ok(AbortAfterCommit::new(permille))
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
    config.migrate(store::migrations()).await
}

/// Runs the service on `listener` until `shutdown` fires: loads the token
/// keys, migrates, serves AccountService and AuthService and consumes
/// order events, then drains within `config.shutdown_grace`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // The token keys first: without them the service does not start.
    let auth = Arc::new(Auth::load(&config.auth).await?);
    let signer = Arc::new(Signer::from_config(&config.auth, &config.tokens)?);
    signer.check_against(auth.verifier())?;
    let (mut service, pool) =
        Service::start(&config, GRPC_SERVICE, store::migrations(), &shutdown).await?;
    let store = Store::new(pool.clone());
    consume(&mut service, &config, &store, pool);
    let accounts = AccountApi::new(store.clone())
        .into_server()
        .max_decoding_message_size(config.max_message_bytes);
    let login = AuthApi::new(store, signer, config.login).into_server();
    // Bearer tokens on every call but health, reflection, AuthService and
    // the operational routes; rate limits per caller.
    let routes = |routes: tonic::service::Routes| {
        let routes = routes.add_service(accounts).add_service(login);
        ordermesh_auth::protect(routes, auth)
    };
    service.serve(listener, routes).await
}

/// The order-event consumer and the inbox expiry; ready only while the
/// consumer is connected (and the database answers).
fn consume(service: &mut Service, config: &Config, store: &Store, pool: deadpool_postgres::Pool) {
    let chaos = config.chaos_abort_after_commit;
    if chaos.is_enabled() {
        tracing::warn!(
            permille = chaos.permille(),
            "fault injection on ({ENV_CHAOS_ABORT_AFTER_COMMIT_PERMILLE}): the process will abort between settlement commits and their acks"
        );
    }
    tracing::info!(
        queue = %config.queue,
        embargoed_skus = ?config.embargo.skus().collect::<Vec<_>>(),
        "processor-svc starting"
    );
    let handler = OrderEventHandler::new(store.clone(), config.embargo.clone());
    let handler = Arc::new(handler.with_abort_after_commit(chaos));
    let status = ConsumerStatus::new(&config.queue);
    let shutdown = service.shutdown();
    let consumer = ordermesh_messaging::amqp::run_consumer_with_status(
        config.consumer_config(),
        handler,
        status.clone(),
        shutdown.clone(),
    );
    let expiry = ordermesh_messaging::inbox::run_expiry(pool, config.inbox_retention, shutdown);
    service
        .probe(ordermesh_messaging::probe::consumer(status))
        .spawn("order-events consumer", consumer)
        .spawn("inbox expiry", expiry);
}

#[cfg(test)]
mod tests {
    use ordermesh_runtime::service;

    use super::*;

    #[test]
    fn defaults_match_the_contract() {
        let c = Config::from_env(&config::Recording::default()).unwrap();
        assert_eq!(c.addr.to_string(), DEFAULT_ADDR);
        assert_eq!(c.database.get_dbname(), Some("ordermesh_processor"));
        assert_eq!(c.queue, DEFAULT_QUEUE);
        assert_eq!(c.prefetch, 64);
        // The shared part (pool, grace, TLS) is runtime::service's test.
        assert!(c.embargo.contains("teapot") && c.embargo.contains("pineapple_pizza"));
        assert_eq!(
            c.queue_spec().routing_keys,
            ["order.created", "order.cancelled"]
        );
        assert!(!c.chaos_abort_after_commit.is_enabled());
    }

    #[test]
    fn values_are_read() {
        let c = Config::from_env(&[
            (ENV_ADDR, "0.0.0.0:7000"),
            (ENV_EMBARGOED_SKUS, "anvil, dynamite"),
            (ENV_PREFETCH, "8"),
            (service::ENV_SHUTDOWN_GRACE_MS, "250"),
            ("AMQP_EXCHANGE", "x"),
            (ENV_CHAOS_ABORT_AFTER_COMMIT_PERMILLE, "5"),
        ])
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
        let refused = [
            (ENV_ADDR, "nowhere"),
            (ENV_DATABASE_URL, "postgres://u@h:5432"),
            (ENV_PREFETCH, "0"),
            (ENV_PREFETCH, "70000"),
            (ENV_CHAOS_ABORT_AFTER_COMMIT_PERMILLE, "1001"),
            (ENV_CHAOS_ABORT_AFTER_COMMIT_PERMILLE, "often"),
        ];
        config::check_refused(&refused, Config::from_env).unwrap();
    }

    #[test]
    fn the_health_name_is_the_grpc_service() {
        assert_eq!(GRPC_SERVICE, "ordermesh.payment.v1.AccountService");
    }

    #[test]
    fn help_lists_every_variable_read_with_its_default() {
        let elsewhere = service::vars::read_at_start();
        config::check_listed(&Config::vars(), &elsewhere, Config::from_env).unwrap();
    }
}
