//! What every ordermesh process runs on: configuration from the
//! environment ([`config`]), PostgreSQL pools and migrations ([`db`]), a
//! LISTEN connection that reconnects by itself ([`listen`]), TLS for listeners and clients ([`tls`]), gRPC serving with reflection,
//! health, gRPC-Web, REST and Connect on one port ([`grpc`]), logs and
//! traces ([`telemetry`]), W3C trace context across hops ([`propagation`]),
//! a server span and RPC metrics per request ([`observe`]), signed
//! page cursors ([`page_token`]), Prometheus
//! metrics ([`metrics`]), liveness and readiness ([`health`]), supervised
//! tasks ([`tasks`]), signals ([`shutdown`]), the delays of every reconnect
//! loop ([`backoff`]), and the start-up every gRPC service shares with the
//! variables `--help` lists ([`service`]).
//!
//! It imports no service, and no messaging or auth code: those build on it.

pub mod backoff;
pub mod config;
pub mod db;
pub mod grpc;
pub mod health;
pub mod listen;
pub mod metrics;
pub mod observe;
pub mod page_token;
pub mod propagation;
pub mod service;
pub mod shutdown;
pub mod tasks;
pub mod telemetry;
pub mod tls;
