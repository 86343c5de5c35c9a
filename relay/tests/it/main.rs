//! Relay integration tests against the local PostgreSQL and RabbitMQ. Each
//! test has its own database and exchange.

mod asyncapi;
mod dlq;
mod helpers;
mod parked;
mod parking;
mod relay;
mod replicas;
mod tls;
