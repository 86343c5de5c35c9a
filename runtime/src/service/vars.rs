//! The variables this crate reads for several binaries, as their `--help`
//! lists them ([`crate::config::Var`]). A binary's list is its own
//! variables, the groups of the crates it uses (`ordermesh_messaging::vars`,
//! `ordermesh_auth::config::VARS`) and the groups here it reads; each
//! binary's tests hold its list against its readers
//! ([`crate::config::check_listed`]).

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
        super::ENV_WORKER_THREADS,
        "1",
        "threads",
        "async worker threads (blocking work, e.g. password hashing, has its own); raise for a pod given more than one core",
    ),
    Var::new(
        super::ENV_SHUTDOWN_GRACE_MS,
        "10000",
        "ms",
        "how long in-flight work may drain after SIGTERM",
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
/// telemetry's, the runtime's worker threads, and for a service the REST
/// body limit.
pub fn read_at_start() -> Vec<&'static str> {
    let telemetry = TELEMETRY.iter().map(|v| v.name);
    telemetry
        .chain([
            super::ENV_WORKER_THREADS,
            crate::grpc::ENV_REST_MAX_BODY_BYTES,
        ])
        .collect()
}
