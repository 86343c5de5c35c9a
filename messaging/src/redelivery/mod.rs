//! Retries and dead letters for the consumer loop ([`crate::amqp`]).
//!
//! A transient failure is retried after a growing delay: the consumer
//! publishes a copy of the message to the retry queue of that delay,
//! `<queue>.retry.<ms>ms`, whose queue-level TTL is the delay and whose dead
//! letters go back to the work queue through the default exchange. There is
//! one queue per delay because a per-message TTL only expires at the head of
//! a queue; naming it by its delay means a changed policy declares new
//! queues instead of failing on the old ones' arguments. After
//! [`RetryPolicy::max_attempts`] failures, or at once for a poison message,
//! the copy goes to `<queue>.dlq` instead. Each copy records its history in
//! `ordermesh-*` headers ([`HEADER_ATTEMPTS`] and the others below).
//!
//! The broker must confirm a copy before the original is acknowledged: a
//! crash in between delivers the original again (at worst a duplicate,
//! which the inbox absorbs), never loses it.
//!
//! A copy's properties must fit in one frame of the connection, or the
//! broker closes it and the message comes back for ever. So every header a
//! copy carries is bounded ([`bound_headers`]): the error text is cut, the
//! trace context bounded as W3C allows, foreign headers over
//! [`MAX_FOREIGN_HEADER_LEN`] dropped, and while the whole still does not
//! fit the largest foreign ones go first; [`HEADER_DROPPED`] counts them.
//!
//! Layout: [`policy`] (the retry policy and its queues), [`headers`] (what
//! a copy records and how to read it back), [`copy`] (building copies that
//! fit a frame, and publishing them with a confirm). It builds on
//! [`crate::broker`] and knows nothing of the consumer loop, which uses it.

pub mod copy;
pub mod headers;
pub mod policy;

pub use copy::{Failure, bound_headers, failure_properties, publish_confirmed, replay_properties};
pub use headers::{
    DeadLetterReason, HEADER_ATTEMPTS, HEADER_DROPPED, HEADER_ERROR, HEADER_EXCHANGE,
    HEADER_FAILED_AT, HEADER_QUEUE, HEADER_REASON, HEADER_REPLAYED_AT, HEADER_ROUTING_KEY,
    MAX_ERROR_LEN, MAX_FOREIGN_HEADER_LEN, attempts, header_text, header_texts, original_route,
    value_text,
};
pub use policy::{
    DEFAULT_MAX_ATTEMPTS, DEFAULT_RETRY_BASE, DEFAULT_RETRY_MAX, ENV_MAX_ATTEMPTS,
    ENV_RETRY_BASE_MS, ENV_RETRY_MAX_MS, MAX_ATTEMPTS_LIMIT, MAX_DELAY, RetryPolicy,
    declare_retry_queues, retry_queue,
};
