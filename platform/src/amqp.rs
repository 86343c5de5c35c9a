//! RabbitMQ topology and the consumer loop shared by the services.
//!
//! Topology: one durable topic exchange for events (`ordermesh.events` by
//! default); per consumer a durable queue bound to its routing keys, whose
//! dead letters go through `<exchange>.dlx` to `<queue>.dlq`, and retry
//! queues `<queue>.retry.<ms>ms` that hold a message for their delay and
//! then dead-letter it back to the queue ([`crate::redelivery`]).
//!
//! The consumer loop ([`run_consumer`]) acknowledges manually with bounded
//! prefetch, runs the handler for up to `prefetch` deliveries at once, and
//! reconnects with backoff when the broker goes away. The handler owns the
//! exactly-once part (inbox + effect + outbox in one transaction); the loop
//! only maps its verdict onto ack, a retry queue or the dead-letter queue.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use tracing::field::Empty;

use crate::config::Secret;
use crate::redelivery::{self, DeadLetterReason, Failure, RetryPolicy};

/// Default URL of the local broker.
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Default name of the events exchange.
pub const DEFAULT_EXCHANGE: &str = "ordermesh.events";

/// Where the broker is and which exchange carries the events.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub url: Secret,
    /// The events exchange; tests use a unique name per test.
    pub exchange: String,
    /// Type of the queues consumers declare: quorum queues replicate across
    /// a RabbitMQ cluster; classic suits a single node.
    pub queue_type: QueueType,
    /// For `amqps://`: the PEM of `AMQP_CA_FILE`, trusted besides the system
    /// roots. Read once, at start, by [`BrokerConfig::from_env`].
    pub tls: lapin::tcp::OwnedTLSConfig,
}

/// The `x-queue-type` of consumer and dead-letter queues. A queue keeps the
/// type it was created with: switching needs new (or deleted) queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    #[default]
    Classic,
    Quorum,
}

impl std::str::FromStr for QueueType {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "classic" => Ok(Self::Classic),
            "quorum" => Ok(Self::Quorum),
            _ => Err("expected classic or quorum"),
        }
    }
}

impl QueueType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Classic => "classic",
            Self::Quorum => "quorum",
        }
    }
}

impl BrokerConfig {
    /// Reads `AMQP_URL`, `AMQP_EXCHANGE`, `AMQP_QUEUE_TYPE` and
    /// `AMQP_CA_FILE` (a bad CA file is an error naming it).
    pub fn from_env(env: &impl crate::config::Env) -> Result<Self, crate::config::ConfigError> {
        Ok(Self {
            url: Secret::new(crate::config::string(env, "AMQP_URL", DEFAULT_URL)),
            exchange: crate::config::string(env, "AMQP_EXCHANGE", DEFAULT_EXCHANGE),
            queue_type: crate::config::parse(env, "AMQP_QUEUE_TYPE", QueueType::Classic)?,
            tls: crate::tls::amqp_tls(env)?,
        })
    }

    /// The dead-letter exchange paired with the events exchange.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.exchange)
    }
}

/// Name of the dead-letter queue of `queue`.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dlq")
}

/// Largest frame ordermesh asks for unless the URL sets `frame_max`. lapin
/// sizes each connection's two I/O buffers at 32 frames and zero-fills them,
/// so the broker's default of 128 KiB costs 8 MiB of resident memory per
/// connection; ordermesh's events are a few hundred bytes.
pub const FRAME_MAX: u32 = 16_384;

/// The broker URL, with [`FRAME_MAX`] unless it sets its own. `amqps://`
/// connects with TLS (port 5671 unless the URL names one).
pub fn uri(config: &BrokerConfig) -> anyhow::Result<lapin::uri::AMQPUri> {
    let mut uri: lapin::uri::AMQPUri = config
        .url
        .expose()
        .parse()
        .map_err(|e: String| anyhow::anyhow!("invalid AMQP_URL: {e}"))?;
    if uri.query.frame_max.is_none() {
        uri.query.frame_max = Some(FRAME_MAX);
    }
    Ok(uri)
}

/// Opens one connection (TLS for `amqps://`: the system roots plus
/// [`BrokerConfig::tls`]), without retrying.
pub async fn connect_once(config: &BrokerConfig, name: &str) -> anyhow::Result<Connection> {
    let uri = uri(config)?;
    Ok(open(uri, config.tls.clone(), name).await?)
}

async fn open(
    uri: lapin::uri::AMQPUri,
    tls: lapin::tcp::OwnedTLSConfig,
    name: &str,
) -> lapin::Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect_uri_with_config(uri, props, tls, lapin::runtime::default_runtime()?).await
}

/// Opens a connection as [`connect_once`] does, retrying with backoff until
/// it succeeds or `shutdown` fires.
pub async fn connect(
    config: &BrokerConfig,
    name: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<Connection> {
    let mut delay = Duration::from_millis(100);
    let uri = uri(config)?;
    loop {
        match open(uri.clone(), config.tls.clone(), name).await {
            Ok(conn) => return Ok(conn),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "RabbitMQ not reachable; retrying");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => anyhow::bail!("shut down while connecting to RabbitMQ"),
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Declares the events exchange and the dead-letter exchange (idempotent).
pub async fn declare_exchanges(channel: &Channel, config: &BrokerConfig) -> lapin::Result<()> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            config.exchange.as_str().into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            config.dead_letter_exchange().into(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await
}

/// A consumer's durable queue and the routing keys it is bound to.
#[derive(Debug, Clone)]
pub struct QueueSpec {
    pub name: String,
    pub routing_keys: Vec<String>,
}

/// Declares `spec` with its dead-letter queue and bindings (idempotent).
/// The consumer loop also declares the retry queues
/// ([`redelivery::declare_retry_queues`]) before it consumes.
pub async fn declare_queue(
    channel: &Channel,
    config: &BrokerConfig,
    spec: &QueueSpec,
) -> lapin::Result<()> {
    declare_exchanges(channel, config).await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let dlq = dead_letter_queue(&spec.name);
    let mut dlq_args = FieldTable::default();
    dlq_args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(config.queue_type.as_str().into()),
    );
    channel
        .queue_declare(dlq.as_str().into(), durable, dlq_args)
        .await?;
    channel
        .queue_bind(
            dlq.as_str().into(),
            config.dead_letter_exchange().into(),
            spec.name.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(config.queue_type.as_str().into()),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(config.dead_letter_exchange().into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(spec.name.as_str().into()),
    );
    channel
        .queue_declare(spec.name.as_str().into(), durable, args)
        .await?;
    for key in &spec.routing_keys {
        channel
            .queue_bind(
                spec.name.as_str().into(),
                config.exchange.as_str().into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// A delivered event, as the handler sees it.
#[derive(Debug, Clone)]
pub struct Message {
    /// The AMQP `message_id`: the outbox event id, the deduplication key.
    pub id: String,
    /// The AMQP `type`: the protobuf message name.
    pub event_type: String,
    /// The key the event was published with, also after a retry or replay
    /// (which travel by queue name).
    pub routing_key: String,
    pub payload: Vec<u8>,
    /// String-valued AMQP headers (e.g. `traceparent`).
    pub headers: BTreeMap<String, String>,
    pub redelivered: bool,
}

impl Message {
    fn from_delivery(delivery: &lapin::message::Delivery) -> Result<Self, String> {
        let props = &delivery.properties;
        let id = props
            .message_id()
            .as_ref()
            .map(|s| s.as_str().to_owned())
            .filter(|s| !s.is_empty())
            .ok_or("message has no message_id")?;
        let event_type = props
            .kind()
            .as_ref()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default();
        let headers = props
            .headers()
            .as_ref()
            .map(|table| {
                table
                    .inner()
                    .iter()
                    .filter_map(|(k, v)| {
                        let value = match v {
                            AMQPValue::LongString(s) => {
                                String::from_utf8(s.as_bytes().to_vec()).ok()?
                            }
                            AMQPValue::ShortString(s) => s.as_str().to_owned(),
                            _ => return None,
                        };
                        Some((k.as_str().to_owned(), value))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            id,
            event_type,
            routing_key: redelivery::original_route(delivery).1,
            payload: delivery.data.clone(),
            headers,
            redelivered: delivery.redelivered,
        })
    }
}

/// Why a handler did not apply a message.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The message can never be applied (undecodable, unknown type): it is
    /// dead-lettered at once, the reason recorded.
    #[error("poison message: {0}")]
    Poison(String),
    /// Applying failed for a reason that may pass (database unavailable):
    /// the message comes back after a growing pause, and is dead-lettered
    /// once it has failed [`RetryPolicy::max_attempts`] times.
    #[error("transient failure: {0:#}")]
    Transient(#[from] anyhow::Error),
}

/// Applies one message. Returning `Ok` acknowledges it.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, message: Message) -> impl Future<Output = Result<(), HandleError>> + Send;
}

/// How a consumer runs.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub broker: BrokerConfig,
    pub queue: QueueSpec,
    /// Unacknowledged deliveries in flight, and handlers run at once.
    pub prefetch: u16,
    /// When a transiently failed message is tried again, and how often.
    pub retry: RetryPolicy,
}

/// Whether a consumer is connected and consuming, for readiness.
#[derive(Debug, Clone)]
pub struct ConsumerStatus {
    queue: Arc<str>,
    connected: Arc<AtomicBool>,
}

impl ConsumerStatus {
    /// A status for the consumer of `queue`, not connected yet.
    pub fn new(queue: &str) -> Self {
        Self {
            queue: queue.into(),
            connected: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// True between a successful `basic.consume` and the loss of the
    /// connection (or shutdown).
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    fn set(&self, connected: bool) {
        self.connected.store(connected, Ordering::SeqCst);
    }
}

/// Consumes `config.queue` until `shutdown` fires, reconnecting after any
/// broker failure. On shutdown it stops taking deliveries, lets in-flight
/// handlers finish and returns; unacknowledged prefetched messages go back
/// to the queue when the channel closes.
pub async fn run_consumer<H: Handler>(
    config: ConsumerConfig,
    handler: Arc<H>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let status = ConsumerStatus::new(&config.queue.name);
    run_consumer_with_status(config, handler, status, shutdown).await
}

/// [`run_consumer`], keeping `status` up to date for readiness checks.
pub async fn run_consumer_with_status<H: Handler>(
    config: ConsumerConfig,
    handler: Arc<H>,
    status: ConsumerStatus,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    run_consumer_with_settle_timeout(config, handler, status, DEFAULT_SETTLE_TIMEOUT, shutdown)
        .await
}

/// [`run_consumer_with_status`] with a settle timeout other than
/// [`DEFAULT_SETTLE_TIMEOUT`] (tests use a short one).
pub async fn run_consumer_with_settle_timeout<H: Handler>(
    config: ConsumerConfig,
    handler: Arc<H>,
    status: ConsumerStatus,
    settle_timeout: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    const FIRST_DELAY: Duration = Duration::from_millis(200);
    let mut delay = FIRST_DELAY;
    while !shutdown.is_cancelled() {
        let result = consume_once(&config, &handler, &status, settle_timeout, &shutdown).await;
        // A connection that got as far as consuming was a success: the
        // backoff starts over, so one cut costs the first delay, not the
        // longest one reached by earlier outages.
        if status.is_connected() {
            delay = FIRST_DELAY;
        }
        status.set(false);
        match result {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(queue = %config.queue.name, error = format!("{e:#}"), retry_in = ?delay, "consumer lost its broker connection; reconnecting");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => break,
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    tracing::info!(queue = %config.queue.name, "consumer stopped");
    Ok(())
}

/// Longest one delivery may take from arrival to ack (or retry copy). A
/// handler or broker operation that hangs longer (a half-dead connection,
/// a confirm that never comes) would otherwise hold its prefetch slot
/// forever and, once all are held, stop the consumer without any error.
/// Instead the run is abandoned and counted as a failed attempt: the
/// delivery goes to its retry queue, or after the last attempt to the
/// dead-letter queue, like any transient failure. Only if that copy cannot
/// be made either does the consumer reconnect, and the broker redeliver
/// what was not acknowledged (the inbox absorbs any duplicate).
pub const DEFAULT_SETTLE_TIMEOUT: Duration = Duration::from_secs(15);

/// One connection's worth of consuming. `Ok` means shutdown was requested.
async fn consume_once<H: Handler>(
    config: &ConsumerConfig,
    handler: &Arc<H>,
    status: &ConsumerStatus,
    settle_timeout: Duration,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let conn = connect(&config.broker, &config.queue.name, shutdown).await?;
    // Every retry or dead-letter copy must fit one frame of this size.
    let frame_max = conn.configuration().frame_max();
    let channel = conn.create_channel().await.context("open a channel")?;
    channel
        .basic_qos(config.prefetch, BasicQosOptions::default())
        .await
        .context("set prefetch")?;
    // Retry and dead-letter copies are confirmed before the original is
    // acknowledged.
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .context("enable publisher confirms")?;
    declare_queue(&channel, &config.broker, &config.queue)
        .await
        .context("declare the queue")?;
    redelivery::declare_retry_queues(&channel, &config.broker, &config.queue.name, &config.retry)
        .await
        .context("declare the retry queues")?;
    let consumer = channel
        .basic_consume(
            config.queue.name.as_str().into(),
            ShortString::from(format!("{}-{}", config.queue.name, uuid::Uuid::now_v7())),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("start consuming")?;
    tracing::info!(queue = %config.queue.name, prefetch = config.prefetch, "consuming");
    status.set(true);

    let mut failure: Option<anyhow::Error> = None;
    let out = Outlet {
        channel: &channel,
        frame_max,
    };
    let out = &out;
    // Set when a delivery that did not settle in time cannot be copied
    // either: the connection is presumed broken, so stop taking deliveries
    // and reconnect.
    let stuck = CancellationToken::new();
    let stop = async {
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = stuck.cancelled() => {}
        }
    };
    let deliveries = tokio_stream::StreamExt::map_while(consumer.take_until(stop), |d| match d {
        Ok(d) => Some(d),
        Err(e) => {
            failure = Some(anyhow::Error::new(e).context("delivery stream failed"));
            None
        }
    });
    deliveries
        .for_each_concurrent(usize::from(config.prefetch.max(1)), |delivery| {
            let stuck = &stuck;
            async move {
                let settled = tokio::time::timeout(
                    settle_timeout,
                    settle(config, out, handler.as_ref(), &delivery),
                )
                .await;
                match settled {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(
                        error = format!("{e:#}"),
                        "could not settle a delivery; the broker will redeliver it"
                    ),
                    Err(_) => {
                        // Bounded like the run itself: the copy may hang
                        // on a broken connection too.
                        let counted = tokio::time::timeout(
                            settle_timeout,
                            count_unsettled(config, out, &delivery, settle_timeout),
                        )
                        .await;
                        let error = match counted {
                            Ok(Ok(())) => return,
                            Ok(Err(e)) => format!("{e:#}"),
                            Err(_) => format!("no answer within {settle_timeout:?}"),
                        };
                        tracing::error!(
                            queue = %config.queue.name,
                            timeout = ?settle_timeout,
                            error,
                            "a delivery did not settle in time and could not be sent on; reconnecting (the broker redelivers it)"
                        );
                        stuck.cancel();
                    }
                }
            }
        })
        .await;
    if let Some(e) = failure {
        return Err(e);
    }
    if stuck.is_cancelled() {
        anyhow::bail!("a delivery did not settle within {settle_timeout:?}");
    }
    if !shutdown.is_cancelled() {
        anyhow::bail!("the broker ended the consumer");
    }
    let _ = channel.close(200, "shutting down".into()).await;
    let _ = conn.close(200, "shutting down".into()).await;
    Ok(())
}

/// Where a consumer sends retry and dead-letter copies: its channel (in
/// confirm mode), and the connection's frame size, which bounds a copy's
/// properties ([`redelivery::failure_properties`]).
struct Outlet<'a> {
    channel: &'a Channel,
    frame_max: u32,
}

/// Counts a run that did not settle within `timeout` as a failed attempt:
/// copies the delivery to the retry queue of that attempt, or after the
/// last one to the dead-letter queue, and acknowledges it once the copy is
/// confirmed. A crash in between only duplicates it (the inbox absorbs
/// that). Does nothing if the delivery was settled before the run hung.
async fn count_unsettled(
    config: &ConsumerConfig,
    out: &Outlet<'_>,
    delivery: &lapin::message::Delivery,
    timeout: Duration,
) -> anyhow::Result<()> {
    use crate::metrics::{CONSUMER_DEAD_LETTERED, CONSUMER_RETRIES};
    if !delivery.acker.usable() {
        return Ok(());
    }
    let queue = &config.queue.name;
    let attempt = redelivery::attempts(&delivery.properties).saturating_add(1);
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|s| s.as_str().to_owned())
        .unwrap_or_default();
    let error = format!("the delivery did not settle within {timeout:?}");
    let last = attempt >= config.retry.max_attempts;
    let (target, reason, counter) = if last {
        let reason = DeadLetterReason::MaxAttempts;
        (
            dead_letter_queue(queue),
            Some(reason),
            CONSUMER_DEAD_LETTERED,
        )
    } else {
        let delay = config.retry.delay_after(attempt);
        (
            redelivery::retry_queue(queue, delay),
            None,
            CONSUMER_RETRIES,
        )
    };
    let failure = Failure {
        queue,
        attempts: attempt,
        error: &error,
        reason,
    };
    let copy = redelivery::failure_properties(delivery, &failure, out.frame_max);
    redelivery::publish_confirmed(out.channel, &target, &delivery.data, copy).await?;
    delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .context("ack")?;
    ::metrics::counter!(counter, "queue" => queue.clone()).increment(1);
    tracing::error!(
        queue = %queue,
        message_id,
        attempt,
        timeout = ?timeout,
        to = %target,
        "a delivery did not settle in time; counted as a failed attempt"
    );
    Ok(())
}

/// Runs the handler on one delivery and settles it, inside a consumer span
/// that continues the trace of the message's `traceparent` header, and
/// counts the outcome: success is acknowledged; a transient failure goes to
/// the retry queue of its attempt, or once attempts run out to the
/// dead-letter queue, as poison does at once. Those copies are confirmed
/// before the original is acknowledged.
async fn settle<H: Handler>(
    config: &ConsumerConfig,
    out: &Outlet<'_>,
    handler: &H,
    delivery: &lapin::message::Delivery,
) -> anyhow::Result<()> {
    use crate::metrics::{CONSUMER_DUPLICATES, CONSUMER_DURATION, CONSUMER_PROCESSED};
    let queue = config.queue.name.clone();
    // Attempts that failed before this one, plus this one.
    let attempt = redelivery::attempts(&delivery.properties).saturating_add(1);
    let message = match Message::from_delivery(delivery) {
        Ok(m) => m,
        Err(reason) => {
            tracing::error!(queue = %config.queue.name, reason, "dead-lettering a message without identity");
            return park(
                config,
                out,
                delivery,
                DeadLetterReason::NoMessageId,
                attempt,
                &reason,
            )
            .await;
        }
    };
    let (exchange, _) = redelivery::original_route(delivery);
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
    crate::propagation::set_remote_parent(&span, crate::propagation::extract_map(&message.headers));
    let id = message.id.clone();
    let start = Instant::now();
    let (result, duplicate) = inbox_scope(handler.handle(message))
        .instrument(span.clone())
        .await;
    ::metrics::histogram!(CONSUMER_DURATION, "queue" => queue.clone())
        .record(start.elapsed().as_secs_f64());
    async move {
        match result {
            Ok(()) => {
                let (outcome, counter) = if duplicate {
                    ("duplicate", CONSUMER_DUPLICATES)
                } else {
                    ("processed", CONSUMER_PROCESSED)
                };
                tracing::Span::current().record("ordermesh.outcome", outcome);
                ::metrics::counter!(counter, "queue" => queue).increment(1);
                delivery.acker.ack(BasicAckOptions::default()).await.context("ack")?;
                Ok(())
            }
            Err(HandleError::Poison(reason)) => {
                tracing::error!(queue = %config.queue.name, message_id = %id, reason, "dead-lettering a poison message");
                park(config, out, delivery, DeadLetterReason::Poison, attempt, &reason).await
            }
            Err(HandleError::Transient(e)) if attempt >= config.retry.max_attempts => {
                let error = format!("{e:#}");
                tracing::error!(queue = %config.queue.name, message_id = %id, attempt, error, "handler failed on the last attempt; dead-lettering");
                park(config, out, delivery, DeadLetterReason::MaxAttempts, attempt, &error).await
            }
            Err(HandleError::Transient(e)) => {
                let error = format!("{e:#}");
                let delay = config.retry.delay_after(attempt);
                tracing::warn!(queue = %config.queue.name, message_id = %id, attempt, retry_in = ?delay, error, "handler failed; retrying later");
                retry(config, out, delivery, attempt, delay, &error).await
            }
        }
    }
    .instrument(span)
    .await
}

/// Sends a transiently failed delivery to the retry queue for `delay` and
/// acknowledges it once the broker confirmed the copy. If the copy fails,
/// requeues the original after a pause instead.
async fn retry(
    config: &ConsumerConfig,
    out: &Outlet<'_>,
    delivery: &lapin::message::Delivery,
    attempts: u32,
    delay: Duration,
    error: &str,
) -> anyhow::Result<()> {
    let span = tracing::Span::current();
    span.record("ordermesh.outcome", "retried");
    span.record("ordermesh.retry_delay_ms", delay.as_millis() as u64);
    span.record("otel.status_code", "error");
    ::metrics::counter!(crate::metrics::CONSUMER_RETRIES, "queue" => config.queue.name.clone())
        .increment(1);
    let failure = Failure {
        queue: &config.queue.name,
        attempts,
        error,
        reason: None,
    };
    let target = redelivery::retry_queue(&config.queue.name, delay);
    let copy = redelivery::failure_properties(delivery, &failure, out.frame_max);
    match redelivery::publish_confirmed(out.channel, &target, &delivery.data, copy).await {
        Ok(()) => {
            delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .context("ack")?;
        }
        Err(e) => {
            tracing::warn!(queue = %config.queue.name, error = format!("{e:#}"), "could not send a message to its retry queue; requeueing it after a pause");
            tokio::time::sleep(delay.min(config.retry.base_delay)).await;
            delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await
                .context("requeue")?;
        }
    }
    Ok(())
}

/// Copies a delivery into the dead-letter queue with why it is there and
/// acknowledges it once the broker confirmed the copy. If the copy fails,
/// rejects the original, which the queue's dead-letter exchange then parks
/// (without the failure headers).
async fn park(
    config: &ConsumerConfig,
    out: &Outlet<'_>,
    delivery: &lapin::message::Delivery,
    reason: DeadLetterReason,
    attempts: u32,
    error: &str,
) -> anyhow::Result<()> {
    let span = tracing::Span::current();
    span.record("ordermesh.outcome", "dead_lettered");
    span.record("ordermesh.dead_letter_reason", reason.as_str());
    span.record("otel.status_code", "error");
    ::metrics::counter!(crate::metrics::CONSUMER_DEAD_LETTERED, "queue" => config.queue.name.clone())
        .increment(1);
    let failure = Failure {
        queue: &config.queue.name,
        attempts,
        error,
        reason: Some(reason),
    };
    let dlq = dead_letter_queue(&config.queue.name);
    let copy = redelivery::failure_properties(delivery, &failure, out.frame_max);
    match redelivery::publish_confirmed(out.channel, &dlq, &delivery.data, copy).await {
        Ok(()) => {
            delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .context("ack")?;
        }
        Err(e) => {
            tracing::warn!(queue = %config.queue.name, error = format!("{e:#}"), "could not copy a message to the dead-letter queue; rejecting it there instead");
            delivery
                .acker
                .reject(BasicRejectOptions { requeue: false })
                .await
                .context("reject")?;
        }
    }
    Ok(())
}

tokio::task_local! {
    /// Set by [`note_duplicate`] while a handler runs inside [`settle`].
    static DUPLICATE: std::cell::Cell<bool>;
}

/// Runs `handling` with a fresh duplicate flag; returns its output and
/// whether the handler reported the message as already applied.
async fn inbox_scope<F: Future>(handling: F) -> (F::Output, bool) {
    DUPLICATE
        .scope(std::cell::Cell::new(false), async move {
            let output = handling.await;
            (output, DUPLICATE.with(std::cell::Cell::get))
        })
        .await
}

/// Tells the consumer loop that the message being handled was applied
/// before, so it is counted as a duplicate rather than as processed.
/// [`crate::inbox::record`] calls this; outside a consumer it does nothing.
pub fn note_duplicate() {
    let _ = DUPLICATE.try_with(|d| d.set(true));
}
