//! Relay integration tests against the local PostgreSQL and RabbitMQ. Each
//! test has its own database and exchange.

mod helpers;
mod relay;
mod replicas;
