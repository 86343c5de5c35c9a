//! The variables several binaries share, as their `--help` lists them
//! ([`crate::config::Var`]). A binary's list is its own variables followed
//! by the groups here it reads; each binary's tests hold its list against
//! its readers ([`crate::config::check_listed`]). The broker, consumer and
//! auth groups are read by `ordermesh-messaging` and `ordermesh-auth`,
//! which build on this crate; they are listed here so that every binary
//! draws them from one place.

use crate::config::Var;

/// What every gRPC service reads through [`super::ServiceConfig`], and the
/// REST body limit [`crate::grpc::serve_with`] reads when it starts.
pub const SERVICE: &[Var] = &[
    Var::new(
        super::ENV_DB_POOL_SIZE,
        "16",
        "connections",
        "pooled connections to its database",
    ),
    Var::new(
        crate::grpc::ENV_MAX_MESSAGE_BYTES,
        "4194304",
        "bytes",
        "larger gRPC request messages get RESOURCE_EXHAUSTED",
    ),
    Var::new(
        crate::grpc::ENV_REST_MAX_BODY_BYTES,
        "4194304",
        "bytes",
        "larger REST and Connect request bodies get 413",
    ),
    Var::unset(
        crate::grpc::ENV_CORS_ALLOWED_ORIGINS,
        "no CORS headers",
        "list",
        "browser origins allowed to call gRPC-Web, Connect and REST, comma-separated exact origins (no *)",
    ),
];

/// Read by every binary that serves (a service, or the relay's admin port)
/// and drains on shutdown.
pub const SERVER: &[Var] = &[
    Var::unset(
        crate::tls::ENV_CERT_FILE,
        "plaintext",
        "path",
        "PEM certificate chain: the port serves TLS only; set with TLS_KEY_FILE or not at all",
    ),
    Var::unset(
        crate::tls::ENV_KEY_FILE,
        "plaintext",
        "path",
        "PEM private key of TLS_CERT_FILE",
    ),
    Var::unset(
        crate::db::ENV_PG_CA_FILE,
        "system roots",
        "path",
        "PEM CA certificates trusted for PostgreSQL (sslmode=verify-ca, verify-full) besides the system's",
    ),
    Var::new(
        super::ENV_SHUTDOWN_GRACE_MS,
        "10000",
        "ms",
        "how long in-flight work may drain after SIGTERM",
    ),
];

/// The broker (`ordermesh_messaging::amqp::BrokerConfig`).
pub const BROKER: &[Var] = &[
    Var::new(
        "AMQP_URL",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
        "URL",
        "the broker; amqps:// for TLS",
    ),
    Var::new(
        "AMQP_EXCHANGE",
        "ordermesh.events",
        "name",
        "the events exchange (dead letters: <exchange>.dlx)",
    ),
    Var::new(
        "AMQP_QUEUE_TYPE",
        "classic",
        "classic or quorum",
        "x-queue-type of the queues the services declare; a queue keeps the type it was created with",
    ),
    Var::unset(
        "AMQP_CA_FILE",
        "system roots",
        "path",
        "PEM CA certificates trusted for amqps:// besides the system's",
    ),
];

/// A service's consumer and inbox (`ordermesh_messaging`'s `amqp`,
/// `redelivery` and `inbox`).
pub const CONSUMER: &[Var] = &[
    Var::new(
        "AMQP_PREFETCH",
        "64",
        "messages",
        "deliveries handled at once (unacknowledged in flight)",
    ),
    Var::new(
        "AMQP_MAX_ATTEMPTS",
        "5",
        "count",
        "handler runs per message before it is parked in <queue>.dlq (1: no retries; at most 100)",
    ),
    Var::new(
        "AMQP_RETRY_BASE_MS",
        "1000",
        "ms",
        "pause after the first transient failure; doubles after each further one",
    ),
    Var::new("AMQP_RETRY_MAX_MS", "60000", "ms", "cap on that pause"),
    Var::new(
        "INBOX_RETENTION_HOURS",
        "168",
        "hours",
        "inbox entries (deduplication) older than this are deleted; at least 1",
    ),
];

/// Bearer token verification and rate limits (`ordermesh_auth::AuthConfig`).
/// At least one key variable is needed for a service to start.
pub const AUTH: &[Var] = &[
    Var::unset(
        "AUTH_JWT_SECRET",
        "no HS256 key",
        "text",
        "HS256 verification (and signing) secret, at least 32 bytes",
    ),
    Var::unset(
        "AUTH_JWT_PUBLIC_KEYS",
        "none",
        "paths",
        "PEM public keys (RS256 or EdDSA), comma-separated",
    ),
    Var::unset("AUTH_JWKS_FILE", "none", "path", "a JWKS document"),
    Var::unset(
        "AUTH_JWKS_URL",
        "none",
        "URL",
        "an identity provider's JWKS endpoint (https://, or http:// to loopback only)",
    ),
    Var::new(
        "AUTH_JWKS_REFRESH_MIN_S",
        "30",
        "s",
        "floor of the JWKS max-age, and the interval of unknown-kid refetches",
    ),
    Var::new(
        "AUTH_JWKS_REFRESH_MAX_S",
        "3600",
        "s",
        "ceiling of the JWKS max-age",
    ),
    Var::new(
        "RATE_LIMIT_PER_S",
        "50",
        "requests/s",
        "per-caller token bucket refill (0: no limit)",
    ),
    Var::new("RATE_LIMIT_BURST", "100", "requests", "bucket size"),
    Var::new("RATE_LIMIT_ADMIN", "false", "bool", "limit admins too"),
    Var::unset(
        "AUTH_TRUSTED_PROXIES",
        "none",
        "CIDRs",
        "proxies whose X-Forwarded-For names the caller for rate limits",
    ),
];

/// Logs and traces ([`crate::telemetry::init`]; the OpenTelemetry SDK
/// reads the standard `OTEL_` variables itself).
pub const TELEMETRY: &[Var] = &[
    Var::new(
        "RUST_LOG",
        "info",
        "filter",
        "log filter (JSON logs when stderr is not a terminal)",
    ),
    Var::new(
        "OTEL_TRACES_FILTER",
        "info",
        "filter",
        "which spans are traced, in RUST_LOG syntax (RUST_LOG filters only the logs)",
    ),
    Var::unset(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "no export",
        "URL",
        "the trace collector, OTLP/gRPC (e.g. http://127.0.0.1:4317)",
    ),
    Var::unset(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "URL",
        "the trace collector, for traces only",
    ),
    Var::unset(
        "OTEL_SERVICE_NAME",
        "the binary's name",
        "name",
        "service.name of the spans",
    ),
    Var::unset(
        "OTEL_RESOURCE_ATTRIBUTES",
        "none",
        "list",
        "more resource attributes, k=v,k2=v2",
    ),
    Var::new(
        "OTEL_TRACES_SAMPLER",
        "parentbased_always_on",
        "name",
        "the sampler, e.g. parentbased_traceidratio",
    ),
    Var::unset(
        "OTEL_TRACES_SAMPLER_ARG",
        "the sampler's own",
        "text",
        "the sampler's argument, e.g. 0.1",
    ),
    Var::new(
        "OTEL_BSP_SCHEDULE_DELAY",
        "5000",
        "ms",
        "batch export delay",
    ),
    Var::new(
        "OTEL_BSP_MAX_QUEUE_SIZE",
        "2048",
        "spans",
        "export queue bound; spans beyond it are dropped",
    ),
    Var::new(
        "OTEL_EXPORTER_OTLP_TIMEOUT",
        "10000",
        "ms",
        "one export call",
    ),
];

/// The listed variables a binary reads as it starts rather than in its
/// `Config::from_env` ([`crate::config::check_listed`]'s `read_elsewhere`):
/// telemetry's, and for a service the REST body limit.
pub fn read_at_start() -> Vec<&'static str> {
    let telemetry = TELEMETRY.iter().map(|v| v.name);
    telemetry
        .chain([crate::grpc::ENV_REST_MAX_BODY_BYTES])
        .collect()
}
