//! The loop of one source: broker and lease connections, warm or cold, one
//! batch ([`super::drain_once`]) at a time.
//!
//! Waking up: from `RELAY_WARM_ROWS` rows per `RELAY_IDLE_AFTER_MS` up
//! (when and for how long: [`Warmth`]) the worker is *warm*: it holds its
//! partitions' warm locks and polls every `RELAY_POLL_MS`, and writers skip
//! their NOTIFY (under load a NOTIFY per commit would serialize the
//! writers' commits). Below that it turns *cold*: releases the warm locks,
//! passes the writers' gate, claims once more and then sleeps until a
//! NOTIFY for one of its partitions, the fallback tick, the next rebalance
//! or shutdown. A trickle, or a moderate rate, never warms it: a NOTIFY per
//! commit is cheap then and wakes the relay at once, and polling is not.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use deadpool_postgres::Pool;
use ordermesh_messaging::amqp::BrokerConfig;
use ordermesh_runtime::backoff::Backoff;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::warmth::Warmth;
use super::{DrainError, Policy, Step, drain_once};
use crate::lease::{self, Lease};
use crate::publisher::Publisher;
use crate::store;

/// Rows deleted before the relay vacuums the outbox itself...
const VACUUM_ROWS: usize = 2_000;
/// ... at most this often.
const VACUUM_INTERVAL: Duration = Duration::from_secs(2);

/// How a source worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The source database, for the lease connection.
    pub database: ordermesh_runtime::db::DbConfig,
    /// This relay's name in `pg_stat_activity`.
    pub instance: String,
    pub broker: BrokerConfig,
    /// How each batch is published; `policy.source` labels logs.
    pub policy: Policy,
    /// The broker's `max_message_size`.
    pub max_message_bytes: usize,
    /// Drain this often even without a NOTIFY.
    pub fallback_tick: Duration,
    /// Poll this often while warm; zero never polls (every writer notifies).
    pub poll_interval: Duration,
    /// The window rows are counted in ([`Warmth`]).
    pub idle_after: Duration,
    /// Poll from this many rows within `idle_after` up ([`Warmth`]).
    pub warm_rows: usize,
    /// Recount the relays and move leases this often.
    pub rebalance_interval: Duration,
    /// Give the partitions up after the broker was unusable this long.
    pub handover_after: Duration,
}

/// Drains one source until `shutdown`. A batch in progress is finished
/// before returning; the leases are released on return.
pub async fn run_worker(
    config: WorkerConfig,
    pool: Pool,
    wake: Arc<Notify>,
    held: Arc<AtomicU64>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    Worker::new(config, pool, wake, held, shutdown)?.run().await;
    Ok(())
}

/// One source's worker. Each turn of its loop:
///
/// 1. makes sure it has a broker connection: without one it holds no
///    partition (after `handover_after` it drops its leases, so the other
///    relays take them within a rebalance interval; it rejoins once the
///    broker answers again);
/// 2. makes sure it has its lease connection and, every rebalance interval,
///    its share of the partitions;
/// 3. decides between polling (warm) and sleeping until a NOTIFY (cold);
/// 4. vacuums the outbox now and then;
/// 5. drains one batch and then waits as the result says.
struct Worker {
    config: WorkerConfig,
    pool: Pool,
    wake: Arc<Notify>,
    /// The held partitions, shared with the LISTEN task's filter.
    held: Arc<AtomicU64>,
    shutdown: CancellationToken,
    publisher: Option<Publisher>,
    /// Broker connections opened so far; all but the first are reconnects.
    connects: u64,
    /// Since when the broker has been unusable (no connection, or a batch
    /// failed), if it is.
    broker_lost_since: Option<Instant>,
    leases: Option<Lease>,
    next_rebalance: Instant,
    /// The worker polls at least until then: set when it gains partitions.
    warm_until: Option<Instant>,
    /// Rows deleted since the relay last vacuumed the outbox.
    deleted_since_vacuum: usize,
    last_vacuum: Instant,
    /// The vacuum's own connection, so the drain never waits for it...
    vacuum_pool: Pool,
    /// ... and the vacuum in progress, if one is.
    vacuuming: Option<tokio::task::JoinHandle<()>>,
    /// Rows published lately: whether to poll.
    warmth: Warmth,
    /// Whether the last claim came back full: then claim again at once.
    last_full: bool,
    /// Probe for due rows before claiming: the last wait ended without a
    /// NOTIFY.
    probe_first: bool,
    /// Delays after a failed connection or batch.
    backoff: Backoff,
}

/// The first pause after a failure; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Worker {
    fn new(
        config: WorkerConfig,
        pool: Pool,
        wake: Arc<Notify>,
        held: Arc<AtomicU64>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let warmth = Warmth::new(config.idle_after, config.warm_rows);
        let vacuum_pool = ordermesh_runtime::db::pool(config.database.clone(), 1)?;
        Ok(Self {
            config,
            pool,
            wake,
            held,
            shutdown,
            publisher: None,
            connects: 0,
            broker_lost_since: None,
            leases: None,
            next_rebalance: Instant::now(),
            warm_until: None,
            deleted_since_vacuum: 0,
            last_vacuum: Instant::now(),
            vacuum_pool,
            vacuuming: None,
            warmth,
            last_full: false,
            probe_first: false,
            backoff: Backoff::new(FIRST_BACKOFF, MAX_BACKOFF),
        })
    }

    fn source(&self) -> &str {
        &self.config.policy.source
    }

    async fn run(mut self) {
        while !self.shutdown.is_cancelled() {
            if !self.ensure_broker().await {
                continue;
            }
            let Some(partitions) = self.ensure_partitions().await else {
                continue;
            };
            let Some(polling) = self.choose_mode().await else {
                continue;
            };
            self.vacuum_now_and_then();
            self.drain_and_wait(&partitions, polling).await;
        }
        if let Some(p) = self.publisher.take() {
            p.close().await;
        }
        drop(self.leases.take());
        if let Some(vacuum) = self.vacuuming.take() {
            let _ = vacuum.await;
        }
        tracing::info!(source = self.source(), "worker stopped");
    }

    /// Step 1: a usable publisher, or `false` after a pause. A relay that
    /// has had no usable broker for `handover_after` drops its leases.
    async fn ensure_broker(&mut self) -> bool {
        if self.publisher.as_ref().is_some_and(Publisher::is_open) {
            return true;
        }
        if let Some(p) = self.publisher.take() {
            p.close().await;
        }
        let name = format!("relay:{}", self.source());
        match Publisher::connect(
            &self.config.broker,
            &name,
            self.config.policy.publish_timeout,
            self.config.max_message_bytes,
        )
        .await
        {
            Ok(p) => {
                tracing::info!(source = self.source(), "publisher connected");
                self.connects += 1;
                if self.connects > 1 {
                    crate::stats::record_reconnect(self.source());
                }
                self.publisher = Some(p);
                true
            }
            Err(e) => {
                tracing::warn!(
                    source = self.source(),
                    error = format!("{e:#}"),
                    retry_in = ?self.backoff.step(),
                    "RabbitMQ not reachable; retrying"
                );
                self.broker_lost();
                self.pause().await;
                false
            }
        }
    }

    /// Notes that the broker failed; hands the partitions over once it has
    /// been failing for `handover_after`.
    fn broker_lost(&mut self) {
        let since = *self.broker_lost_since.get_or_insert_with(Instant::now);
        if self.leases.is_some() && since.elapsed() >= self.config.handover_after {
            tracing::warn!(
                source = self.source(),
                unusable_for = ?since.elapsed(),
                "the broker has been unusable too long; handing the partitions over to other relays"
            );
            self.leases = None;
        }
    }

    /// Step 2: the lease connection and this relay's share of partitions;
    /// `None` when it holds none (after waiting) or the connection failed.
    async fn ensure_partitions(&mut self) -> Option<Vec<i16>> {
        if self.leases.as_ref().is_some_and(Lease::is_closed) {
            tracing::warn!(
                source = self.source(),
                "lease connection lost; its partitions are released"
            );
            self.leases = None;
        }
        if self.leases.is_none() {
            match Lease::connect(
                &self.config.database,
                &self.config.instance,
                self.held.clone(),
            )
            .await
            {
                Ok(l) => {
                    self.next_rebalance = Instant::now();
                    self.leases = Some(l);
                }
                Err(e) => {
                    tracing::warn!(source = self.source(), error = %e, retry_in = ?self.backoff.step(), "cannot open the lease connection; retrying");
                    self.pause().await;
                    return None;
                }
            }
        }
        if Instant::now() >= self.next_rebalance {
            self.rebalance().await?;
        }
        let lease = self.leases.as_ref()?;
        if lease.held() == 0 {
            tokio::select! {
                () = tokio::time::sleep_until(self.next_rebalance) => {}
                () = self.shutdown.cancelled() => {}
            }
            return None;
        }
        Some(lease::partitions(lease.held()))
    }

    async fn rebalance(&mut self) -> Option<()> {
        self.next_rebalance = Instant::now() + self.config.rebalance_interval;
        let source = self.config.policy.source.clone();
        let lease = self.leases.as_mut()?;
        match lease.rebalance().await {
            Ok(change) => {
                if change.gained != 0 || change.released != 0 {
                    tracing::info!(
                        source,
                        relays = change.relays,
                        gained = ?lease::partitions(change.gained),
                        released = ?lease::partitions(change.released),
                        holding = lease.held().count_ones(),
                        "partition leases moved"
                    );
                }
                if change.gained != 0 {
                    // Rows may be waiting in the new partitions, and
                    // writers that counted on their last holder polling
                    // may still commit: poll for a while.
                    self.warm_until = Some(Instant::now() + self.config.idle_after);
                }
                Some(())
            }
            Err(e) => {
                tracing::warn!(source, error = %e, "rebalancing failed; reconnecting the lease connection");
                self.leases = None;
                None
            }
        }
    }

    /// Step 3: whether to poll; `None` to start the turn over (the worker
    /// just turned cold, or the lease connection failed).
    async fn choose_mode(&mut self) -> Option<bool> {
        let now = Instant::now();
        let source = self.config.policy.source.as_str();
        let lease = self.leases.as_mut()?;
        let polling = !self.config.poll_interval.is_zero()
            && (self.warmth.wants_poll(now, lease.is_warm())
                || self.warm_until.is_some_and(|t| now < t));
        if polling {
            if !lease.is_warm() {
                tracing::debug!(source, "rows come fast: polling, writers skip their NOTIFY");
            }
            if let Err(e) = lease.warm().await {
                tracing::warn!(source, error = %e, "taking the warm locks failed; reconnecting the lease connection");
                self.leases = None;
                return None;
            }
        } else if lease.is_warm() {
            // Just went idle: from now on writers notify; claim once more
            // after the writers in flight are done.
            tracing::debug!(source, "rows come slowly: back to NOTIFY");
            if let Err(e) = lease.cool().await {
                tracing::warn!(source, error = %e, "releasing the warm locks failed; reconnecting the lease connection");
                self.leases = None;
            }
            return None;
        }
        Some(polling)
    }

    /// Step 4: keep the outbox's dead rows few: every claim and probe walks
    /// them in the primary key, and autovacuum comes once a minute. The
    /// vacuum runs beside the drain (it takes a lock that does not conflict
    /// with the claims and deletes); at most one at a time.
    fn vacuum_now_and_then(&mut self) {
        if self.vacuuming.as_ref().is_some_and(|v| !v.is_finished())
            || self.deleted_since_vacuum < VACUUM_ROWS
            || self.last_vacuum.elapsed() < VACUUM_INTERVAL
        {
            return;
        }
        let pool = self.vacuum_pool.clone();
        let source = self.source().to_owned();
        self.vacuuming = Some(tokio::spawn(async move {
            let vacuumed = async { anyhow::Ok(store::vacuum(&*pool.get().await?).await?) };
            if let Err(e) = vacuumed.await {
                tracing::debug!(
                    source,
                    error = format!("{e:#}"),
                    "vacuuming the outbox failed"
                );
            }
        }));
        self.deleted_since_vacuum = 0;
        self.last_vacuum = Instant::now();
    }

    /// Step 5: one batch, then the wait its result calls for.
    async fn drain_and_wait(&mut self, partitions: &[i16], polling: bool) {
        let Some(publisher) = self.publisher.as_ref() else {
            return;
        };
        // While polling, or after a wait no NOTIFY ended, a one-round-trip
        // probe is cheaper than an empty claim transaction.
        let probe = (polling || std::mem::take(&mut self.probe_first)) && !self.last_full;
        let probed = if probe {
            self.probe(partitions).await
        } else {
            Ok(true)
        };
        let result = match probed {
            Ok(true) => drain_once(&self.pool, publisher, &self.config.policy, partitions).await,
            Ok(false) => Ok(Step::Empty),
            Err(e) => Err(e),
        };
        self.last_full = matches!(result, Ok(Step::Drained { full: true, .. }));
        crate::stats::record_step(self.source(), &result);
        match result {
            Ok(Step::Drained {
                full, published, ..
            }) => {
                self.backoff.reset();
                self.broker_lost_since = None;
                self.warmth.record(Instant::now(), published);
                self.deleted_since_vacuum += published;
                if full {
                    return;
                }
                if polling {
                    self.sleep_or_wake(self.config.poll_interval).await;
                } else {
                    // Cold: a row committed since the claim notified, so
                    // wait for that instead of claiming again to find
                    // nothing (a transaction of three round trips per
                    // order at a trickle).
                    self.wait_cold().await;
                }
            }
            Ok(Step::Empty) => {
                self.backoff.reset();
                self.broker_lost_since = None;
                if polling {
                    self.sleep_or_wake(self.config.poll_interval).await;
                } else {
                    self.wait_cold().await;
                }
            }
            Err(DrainError::Broker(e)) => {
                tracing::warn!(
                    source = self.source(),
                    error = format!("{e:#}"),
                    "publishing failed; reconnecting to the broker"
                );
                if let Some(p) = self.publisher.take() {
                    p.close().await;
                }
                self.broker_lost();
                self.pause().await;
            }
            Err(e) => {
                tracing::warn!(source = self.source(), error = %e, retry_in = ?self.backoff.step(), "drain failed; retrying");
                self.pause().await;
            }
        }
    }

    /// Whether rows are due; the pooled connection is back in the pool
    /// before the claim takes it.
    async fn probe(&self, partitions: &[i16]) -> Result<bool, DrainError> {
        let client = self.pool.get().await?;
        Ok(store::pending(&client, partitions).await?)
    }

    /// Sleeps until a NOTIFY for a held partition, the fallback tick, the
    /// next rebalance or shutdown.
    /// Woken by anything but a NOTIFY, the next turn probes before it
    /// claims (one round trip instead of an empty transaction's three).
    async fn wait_cold(&mut self) {
        self.probe_first = tokio::select! {
            () = self.wake.notified() => false,
            () = tokio::time::sleep(self.config.fallback_tick) => true,
            () = tokio::time::sleep_until(self.next_rebalance) => true,
            () = self.shutdown.cancelled() => true,
        };
    }

    async fn sleep_or_wake(&self, interval: Duration) {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = self.wake.notified() => {}
            () = self.shutdown.cancelled() => {}
        }
    }

    /// Waits after a failure (a [`Backoff`] delay), or until shutdown.
    async fn pause(&mut self) {
        self.backoff.wait(&self.shutdown).await;
    }
}
