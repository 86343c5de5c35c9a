//! The consumer loop: connect, declare the topology, consume with bounded
//! prefetch, settle up to `prefetch` deliveries at once (`settle.rs`),
//! and reconnect with jittered backoff when the broker goes away.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection};
use tokio_util::sync::CancellationToken;

use ordermesh_runtime::backoff::Backoff;

use super::handler::Handler;
use super::settle::Settler;
use super::topology::{QueueSpec, declare_queue};
use crate::broker::{BrokerConfig, connect};
use crate::redelivery::{self, RetryPolicy};

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

/// First pause before reconnecting after a lost connection; it doubles up
/// to [`RECONNECT_MAX_DELAY`], and starts over once a connection consumed.
const RECONNECT_FIRST_DELAY: Duration = Duration::from_millis(200);
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(5);

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
    let mut backoff = Backoff::new(RECONNECT_FIRST_DELAY, RECONNECT_MAX_DELAY);
    while !shutdown.is_cancelled() {
        let result = consume_once(&config, &handler, &status, settle_timeout, &shutdown).await;
        // A connection that got as far as consuming was a success: the
        // backoff starts over, so one cut costs the first delay, not the
        // longest one reached by earlier outages.
        if status.is_connected() {
            backoff.reset();
        }
        status.set(false);
        let Err(e) = result else { break };
        tracing::warn!(queue = %config.queue.name, error = format!("{e:#}"), retry_in = ?backoff.step(), "consumer lost its broker connection; reconnecting");
        if !backoff.wait(&shutdown).await {
            break;
        }
    }
    tracing::info!(queue = %config.queue.name, "consumer stopped");
    Ok(())
}

/// One connection's worth of consuming: connect, set up a channel and start
/// consuming, then settle deliveries until shutdown (`Ok`) or a failure.
async fn consume_once<H: Handler>(
    config: &ConsumerConfig,
    handler: &Arc<H>,
    status: &ConsumerStatus,
    settle_timeout: Duration,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let conn = connect(&config.broker, &config.queue.name, shutdown).await?;
    let channel = open_channel(&conn, config).await?;
    let consumer = start_consuming(&channel, config).await?;
    status.set(true);
    let settler = Settler {
        channel: &channel,
        // Every retry or dead-letter copy must fit one frame of this size.
        frame_max: conn.configuration().frame_max(),
        queue: &config.queue.name,
        retry: &config.retry,
    };
    let limit = usize::from(config.prefetch.max(1));
    settle_deliveries(
        &settler,
        consumer,
        handler.as_ref(),
        limit,
        settle_timeout,
        shutdown,
    )
    .await?;
    let _ = channel.close(200, "shutting down".into()).await;
    let _ = conn.close(200, "shutting down".into()).await;
    Ok(())
}

/// A channel with the prefetch bound and publisher confirms (retry and
/// dead-letter copies are confirmed before the original is acknowledged),
/// after declaring the queue and its retry queues.
async fn open_channel(conn: &Connection, config: &ConsumerConfig) -> anyhow::Result<Channel> {
    let channel = conn.create_channel().await.context("open a channel")?;
    channel
        .basic_qos(config.prefetch, BasicQosOptions::default())
        .await
        .context("set prefetch")?;
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
    Ok(channel)
}

async fn start_consuming(
    channel: &Channel,
    config: &ConsumerConfig,
) -> anyhow::Result<lapin::Consumer> {
    let tag = format!("{}-{}", config.queue.name, uuid::Uuid::now_v7());
    let consumer = channel
        .basic_consume(
            config.queue.name.as_str().into(),
            ShortString::from(tag),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("start consuming")?;
    tracing::info!(queue = %config.queue.name, prefetch = config.prefetch, "consuming");
    Ok(consumer)
}

/// Settles deliveries, `limit` at once, until shutdown (`Ok`), or an error:
/// the delivery stream failed or ended, or a delivery could neither be
/// settled nor counted in time (the connection is presumed broken). Either
/// way the caller reconnects.
async fn settle_deliveries<H: Handler>(
    settler: &Settler<'_>,
    consumer: lapin::Consumer,
    handler: &H,
    limit: usize,
    settle_timeout: Duration,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut failure: Option<anyhow::Error> = None;
    // Set when a delivery is stuck: stop taking deliveries.
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
        .for_each_concurrent(limit, |delivery| {
            let stuck = &stuck;
            async move {
                if !settler
                    .settle_within(handler, &delivery, settle_timeout)
                    .await
                {
                    stuck.cancel();
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
    Ok(())
}
