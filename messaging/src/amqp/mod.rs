//! RabbitMQ topology and the consumer loop shared by the services.
//!
//! Topology ([`topology`]): one durable topic exchange for events
//! (`ordermesh.events` by default); per consumer a durable queue bound to
//! its routing keys, whose dead letters go through `<exchange>.dlx` to
//! `<queue>.dlq`, and retry queues `<queue>.retry.<ms>ms` that hold a
//! message for their delay and then dead-letter it back to the queue
//! ([`crate::redelivery`]).
//!
//! The consumer loop ([`run_consumer`], in [`consumer`]) acknowledges
//! manually with bounded prefetch, runs the handler ([`handler`]) for up to
//! `prefetch` deliveries at once, and reconnects with backoff when the
//! broker goes away. The handler owns the exactly-once part (inbox, effect
//! and outbox in one transaction); the loop only maps its verdict onto ack,
//! a retry queue or the dead-letter queue (`settle.rs`).
//!
//! Imports go one way: [`crate::broker`] ← [`crate::redelivery`] ← this
//! module. The broker's settings and connections are re-exported here, as
//! the services reach them.

pub mod consumer;
pub mod handler;
mod settle;
pub mod topology;

pub use crate::broker::{
    BrokerConfig, DEFAULT_EXCHANGE, DEFAULT_URL, ENV_AMQP_CA_FILE, FRAME_MAX, QueueType, connect,
    connect_once, tls_config, uri,
};
pub use consumer::{
    ConsumerConfig, ConsumerStatus, DEFAULT_SETTLE_TIMEOUT, run_consumer,
    run_consumer_with_settle_timeout, run_consumer_with_status,
};
pub use handler::{HandleError, Handler, Message, note_duplicate};
pub use topology::{QueueSpec, dead_letter_queue, declare_exchanges, declare_queue, ready_count};
