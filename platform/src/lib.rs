//! What every ordermesh binary shares, so the services hold only their own
//! rules: configuration from the environment ([`config`]), PostgreSQL pools
//! and migrations ([`db`]), the transactional outbox ([`outbox`]) and
//! consumer inbox ([`inbox`]), RabbitMQ topology and the consumer loop
//! ([`amqp`]), gRPC serving with reflection and health ([`grpc`]), signals
//! ([`shutdown`]), supervised tasks ([`tasks`]) and logging ([`telemetry`]).
//!
//! It imports no service; services import it and `ordermesh-proto`.

pub mod amqp;
pub mod config;
pub mod db;
pub mod grpc;
pub mod inbox;
pub mod outbox;
pub mod shutdown;
pub mod tasks;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
