//! What every ordermesh binary shares, so the services hold only their own
//! rules: configuration from the environment ([`config`]), PostgreSQL pools
//! and migrations ([`db`]), the transactional outbox ([`outbox`]) and
//! consumer inbox ([`inbox`]), RabbitMQ topology and the consumer loop
//! ([`amqp`]) with its retries and dead letters ([`redelivery`]), gRPC
//! serving with reflection and health ([`grpc`]), bearer tokens, the
//! caller's identity and rate limits on every call ([`auth`]), REST/JSON
//! transcoded from
//! the `google.api.http` annotations ([`rest`]), Connect ([`connect`]) and
//! CORS for browsers ([`cors`]), signals ([`shutdown`]),
//! supervised tasks ([`tasks`]), TLS for listeners and clients ([`tls`]),
//! and observability: logs
//! and traces ([`telemetry`]), W3C trace context across gRPC, outbox rows
//! and AMQP ([`propagation`]), a server span and RPC metrics per request
//! ([`observe`]), Prometheus metrics ([`metrics`]), liveness and readiness
//! ([`health`]).
//!
//! It imports no service; services import it and `ordermesh-proto`.

pub mod amqp;
pub mod auth;
pub mod config;
pub mod connect;
pub mod cors;
pub mod db;
pub mod grpc;
pub mod health;
pub mod inbox;
pub mod metrics;
pub mod observe;
pub mod outbox;
pub mod page_token;
pub mod propagation;
pub mod redelivery;
pub mod rest;
pub mod shutdown;
pub mod tasks;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;
