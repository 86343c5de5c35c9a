//! The variables this crate reads, as a binary's `--help` lists them
//! ([`ordermesh_runtime::config::Var`]): the broker's, read by
//! [`crate::broker::BrokerConfig::from_env`], and a consumer's (prefetch,
//! retries, inbox retention), read by the services' configuration.

use ordermesh_runtime::config::Var;

/// The broker ([`crate::broker::BrokerConfig`]).
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

/// A service's consumer and inbox ([`crate::amqp`], [`crate::redelivery`],
/// [`crate::inbox`]).
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
