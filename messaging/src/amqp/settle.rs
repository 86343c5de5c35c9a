//! Settling one delivery: run the handler inside a consumer span, then
//! acknowledge it, send a copy to its retry queue, or park a copy in the
//! dead-letter queue ([`crate::redelivery`]), counting the outcome. Copies
//! are confirmed by the broker before the original is acknowledged.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use tracing::Instrument as _;
use tracing::field::Empty;

use ordermesh_runtime::metrics::{
    CONSUMER_DEAD_LETTERED, CONSUMER_DUPLICATES, CONSUMER_DURATION, CONSUMER_PROCESSED,
    CONSUMER_RETRIES,
};

use super::handler::{HandleError, Handler, Message, inbox_scope};
use super::topology::dead_letter_queue;
use crate::redelivery::{self, DeadLetterReason, Failure, RetryPolicy};

/// Settles the deliveries of one consumer channel.
pub(super) struct Settler<'a> {
    /// In confirm mode: retry and dead-letter copies go out on it.
    pub channel: &'a Channel,
    /// The connection's frame size, which bounds a copy's properties
    /// ([`redelivery::failure_properties`]).
    pub frame_max: u32,
    /// The work queue: names the retry and dead-letter queues and labels
    /// the metrics.
    pub queue: &'a str,
    pub retry: &'a RetryPolicy,
}

impl Settler<'_> {
    /// Settles `delivery` within `timeout`. A run that takes longer is
    /// abandoned and counted as a failed attempt
    /// ([`Settler::count_unsettled`]). Returns `false` when even that could
    /// not be done in time: the connection is presumed broken.
    pub async fn settle_within<H: Handler>(
        &self,
        handler: &H,
        delivery: &Delivery,
        timeout: Duration,
    ) -> bool {
        match tokio::time::timeout(timeout, self.settle(handler, delivery)).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "could not settle a delivery; the broker will redeliver it"
                );
                true
            }
            Err(_) => self.count_in_time(delivery, timeout).await,
        }
    }

    /// [`Settler::count_unsettled`], bounded like the run itself: the copy
    /// may hang on a broken connection too. `false` if it failed.
    async fn count_in_time(&self, delivery: &Delivery, timeout: Duration) -> bool {
        let counted = tokio::time::timeout(timeout, self.count_unsettled(delivery, timeout)).await;
        let error = match counted {
            Ok(Ok(())) => return true,
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => format!("no answer within {timeout:?}"),
        };
        tracing::error!(
            queue = %self.queue,
            timeout = ?timeout,
            error,
            "a delivery did not settle in time and could not be sent on; reconnecting (the broker redelivers it)"
        );
        false
    }

    /// Counts a run that did not settle within `timeout` as a failed
    /// attempt: copies the delivery to the retry queue of that attempt, or
    /// after the last one to the dead-letter queue, and acknowledges it once
    /// the copy is confirmed. A crash in between only duplicates it (the
    /// inbox absorbs that). Does nothing if the delivery was settled before
    /// the run hung.
    async fn count_unsettled(&self, delivery: &Delivery, timeout: Duration) -> anyhow::Result<()> {
        if !delivery.acker.usable() {
            return Ok(());
        }
        let attempt = redelivery::attempts(&delivery.properties).saturating_add(1);
        let error = format!("the delivery did not settle within {timeout:?}");
        let (target, reason, counter) = if attempt >= self.retry.max_attempts {
            let reason = Some(DeadLetterReason::MaxAttempts);
            (
                dead_letter_queue(self.queue),
                reason,
                CONSUMER_DEAD_LETTERED,
            )
        } else {
            let delay = self.retry.delay_after(attempt);
            let target = redelivery::retry_queue(self.queue, delay);
            (target, None, CONSUMER_RETRIES)
        };
        let failure = self.failure(attempt, &error, reason);
        self.copy(delivery, &target, &failure).await?;
        ack(delivery).await?;
        ::metrics::counter!(counter, "queue" => self.queue.to_owned()).increment(1);
        tracing::error!(
            queue = %self.queue,
            message_id = message_id(delivery),
            attempt,
            timeout = ?timeout,
            to = %target,
            "a delivery did not settle in time; counted as a failed attempt"
        );
        Ok(())
    }

    /// Runs the handler on one delivery and settles it, inside a consumer
    /// span that continues the trace of the message's `traceparent` header,
    /// and counts the outcome: success is acknowledged; a transient failure
    /// goes to the retry queue of its attempt, or once attempts run out to
    /// the dead-letter queue, as poison does at once. Those copies are
    /// confirmed before the original is acknowledged.
    async fn settle<H: Handler>(&self, handler: &H, delivery: &Delivery) -> anyhow::Result<()> {
        // Attempts that failed before this one, plus this one.
        let attempt = redelivery::attempts(&delivery.properties).saturating_add(1);
        let message = match Message::from_delivery(delivery) {
            Ok(m) => m,
            Err(reason) => {
                tracing::error!(queue = %self.queue, reason, "dead-lettering a message without identity");
                let reason_kind = DeadLetterReason::NoMessageId;
                return self.park(delivery, reason_kind, attempt, &reason).await;
            }
        };
        let span = self.process_span(delivery, &message, attempt);
        let id = message.id.clone();
        let (result, duplicate) = self.run(handler, message).instrument(span.clone()).await;
        self.answer(delivery, &id, attempt, result, duplicate)
            .instrument(span)
            .await
    }

    /// The consumer span of one run, a child of the message's trace.
    fn process_span(&self, delivery: &Delivery, message: &Message, attempt: u32) -> tracing::Span {
        let (exchange, _) = redelivery::original_route(delivery);
        let queue = self.queue;
        let span = tracing::info_span!(
            "amqp.process",
            otel.name = %format_args!("{queue} process"),
            otel.kind = "consumer",
            otel.status_code = Empty,
            messaging.system = "rabbitmq",
            messaging.operation.type = "process",
            messaging.operation.name = "process",
            messaging.destination.name = %exchange,
            messaging.rabbitmq.destination.routing_key = %message.routing_key,
            messaging.message.id = %message.id,
            messaging.consumer.group.name = %queue,
            ordermesh.attempt = attempt,
            ordermesh.outcome = Empty,
            ordermesh.retry_delay_ms = Empty,
            ordermesh.dead_letter_reason = Empty,
        );
        ordermesh_runtime::propagation::set_remote_parent(
            &span,
            ordermesh_runtime::propagation::extract_map(&message.headers),
        );
        span
    }

    /// Runs the handler, timed; returns its verdict and whether the inbox
    /// found the message applied before.
    async fn run<H: Handler>(
        &self,
        handler: &H,
        message: Message,
    ) -> (Result<(), HandleError>, bool) {
        let start = Instant::now();
        let outcome = inbox_scope(handler.handle(message)).await;
        ::metrics::histogram!(CONSUMER_DURATION, "queue" => self.queue.to_owned())
            .record(start.elapsed().as_secs_f64());
        outcome
    }

    /// Maps the handler's verdict onto ack, a retry or the dead-letter
    /// queue.
    async fn answer(
        &self,
        delivery: &Delivery,
        id: &str,
        attempt: u32,
        result: Result<(), HandleError>,
        duplicate: bool,
    ) -> anyhow::Result<()> {
        let queue = self.queue;
        match result {
            Ok(()) => self.applied(delivery, duplicate).await,
            Err(HandleError::Poison(reason)) => {
                tracing::error!(
                    queue,
                    message_id = id,
                    reason,
                    "dead-lettering a poison message"
                );
                self.park(delivery, DeadLetterReason::Poison, attempt, &reason)
                    .await
            }
            Err(HandleError::Transient(e)) if attempt >= self.retry.max_attempts => {
                let error = format!("{e:#}");
                tracing::error!(
                    queue,
                    message_id = id,
                    attempt,
                    error,
                    "handler failed on the last attempt; dead-lettering"
                );
                self.park(delivery, DeadLetterReason::MaxAttempts, attempt, &error)
                    .await
            }
            Err(HandleError::Transient(e)) => {
                let error = format!("{e:#}");
                let delay = self.retry.delay_after(attempt);
                tracing::warn!(queue, message_id = id, attempt, retry_in = ?delay, error, "handler failed; retrying later");
                self.send_to_retry(delivery, attempt, delay, &error).await
            }
        }
    }

    /// Counts an applied message (processed, or a duplicate the inbox
    /// skipped) and acknowledges it.
    async fn applied(&self, delivery: &Delivery, duplicate: bool) -> anyhow::Result<()> {
        let (outcome, counter) = if duplicate {
            ("duplicate", CONSUMER_DUPLICATES)
        } else {
            ("processed", CONSUMER_PROCESSED)
        };
        tracing::Span::current().record("ordermesh.outcome", outcome);
        ::metrics::counter!(counter, "queue" => self.queue.to_owned()).increment(1);
        ack(delivery).await
    }

    /// Sends a transiently failed delivery to the retry queue for `delay`
    /// and acknowledges it once the broker confirmed the copy. If the copy
    /// fails, requeues the original after a pause instead.
    async fn send_to_retry(
        &self,
        delivery: &Delivery,
        attempts: u32,
        delay: Duration,
        error: &str,
    ) -> anyhow::Result<()> {
        let span = tracing::Span::current();
        span.record("ordermesh.outcome", "retried");
        span.record("ordermesh.retry_delay_ms", delay.as_millis() as u64);
        span.record("otel.status_code", "error");
        ::metrics::counter!(CONSUMER_RETRIES, "queue" => self.queue.to_owned()).increment(1);
        let target = redelivery::retry_queue(self.queue, delay);
        let failure = self.failure(attempts, error, None);
        if let Err(e) = self.copy(delivery, &target, &failure).await {
            tracing::warn!(queue = %self.queue, error = format!("{e:#}"), "could not send a message to its retry queue; requeueing it after a pause");
            tokio::time::sleep(delay.min(self.retry.base_delay)).await;
            let requeue = BasicNackOptions {
                requeue: true,
                ..Default::default()
            };
            delivery.acker.nack(requeue).await.context("requeue")?;
            return Ok(());
        }
        ack(delivery).await
    }

    /// Copies a delivery into the dead-letter queue with why it is there
    /// and acknowledges it once the broker confirmed the copy. If the copy
    /// fails, rejects the original, which the queue's dead-letter exchange
    /// then parks (without the failure headers).
    async fn park(
        &self,
        delivery: &Delivery,
        reason: DeadLetterReason,
        attempts: u32,
        error: &str,
    ) -> anyhow::Result<()> {
        let span = tracing::Span::current();
        span.record("ordermesh.outcome", "dead_lettered");
        span.record("ordermesh.dead_letter_reason", reason.as_str());
        span.record("otel.status_code", "error");
        ::metrics::counter!(CONSUMER_DEAD_LETTERED, "queue" => self.queue.to_owned()).increment(1);
        let dlq = dead_letter_queue(self.queue);
        let failure = self.failure(attempts, error, Some(reason));
        if let Err(e) = self.copy(delivery, &dlq, &failure).await {
            tracing::warn!(queue = %self.queue, error = format!("{e:#}"), "could not copy a message to the dead-letter queue; rejecting it there instead");
            let reject = BasicRejectOptions { requeue: false };
            delivery.acker.reject(reject).await.context("reject")?;
            return Ok(());
        }
        ack(delivery).await
    }

    fn failure<'a>(
        &'a self,
        attempts: u32,
        error: &'a str,
        reason: Option<DeadLetterReason>,
    ) -> Failure<'a> {
        Failure {
            queue: self.queue,
            attempts,
            error,
            reason,
        }
    }

    /// Publishes a copy of `delivery` recording `failure` to `target` and
    /// waits for the broker's confirm.
    async fn copy(
        &self,
        delivery: &Delivery,
        target: &str,
        failure: &Failure<'_>,
    ) -> anyhow::Result<()> {
        let properties = redelivery::failure_properties(delivery, failure, self.frame_max);
        redelivery::publish_confirmed(self.channel, target, &delivery.data, properties).await
    }
}

async fn ack(delivery: &Delivery) -> anyhow::Result<()> {
    delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .context("ack")?;
    Ok(())
}

fn message_id(delivery: &Delivery) -> String {
    delivery
        .properties
        .message_id()
        .as_ref()
        .map(|s| s.as_str().to_owned())
        .unwrap_or_default()
}
