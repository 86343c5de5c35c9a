//! Relay integration tests against the local PostgreSQL and RabbitMQ. Each
//! test has its own database and exchange.

mod dlq;
mod helpers;
mod relay;
mod replicas;
mod tls;
