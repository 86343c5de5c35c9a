//! One relay worker per source database. It holds the relay's partition
//! leases on that source ([`crate::lease`]) and drains only those
//! partitions: claim a batch in id order, publish it with confirms, delete
//! what the broker took, commit; repeat while batches come back full.
//!
//! Waking up: once at least `RELAY_WARM_ROWS` rows came within
//! `RELAY_IDLE_AFTER_MS`, the worker is *warm*: it holds its partitions'
//! warm locks and polls every `RELAY_POLL_MS`, and writers skip their
//! NOTIFY (under load a NOTIFY per commit would serialize the writers'
//! commits). Once nothing came for `RELAY_IDLE_AFTER_MS` it turns *cold*:
//! releases the warm locks, passes the writers' gate, claims once more and
//! then sleeps until a NOTIFY for one of its partitions, the fallback tick,
//! the next rebalance or shutdown. A trickle of rows never warms it: a
//! NOTIFY per commit is cheap then, and polling is not.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use deadpool_postgres::Pool;
use ordermesh_platform::amqp::BrokerConfig;
use ordermesh_platform::metrics::{RELAY_PARKED, RELAY_PUBLISH_FAILURES};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::lease::{self, Lease};
use crate::publisher::{Outcome, Publisher};
use crate::store::{self, OutboxRow, Park, Retry};

/// What one [`drain_once`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Claimed a batch: `published` rows were confirmed and deleted,
    /// `retrying` refused ones wait for their next attempt, `parked` went
    /// to `outbox_parked`; `full` when the batch was full, so more rows are
    /// likely waiting.
    Drained {
        published: usize,
        retrying: usize,
        parked: usize,
        full: bool,
    },
    /// Nothing to publish.
    Empty,
}

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("database: {0}")]
    Database(#[from] deadpool_postgres::PoolError),
    #[error("database: {0}")]
    Query(#[from] tokio_postgres::Error),
    /// The broker connection or channel failed, or did not confirm in
    /// time: reconnect before retrying. Nothing of the batch was deleted.
    #[error("broker: {0:#}")]
    Broker(anyhow::Error),
}

/// How [`drain_once`] treats a batch.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The source database's name, for logs and metrics.
    pub source: String,
    /// Rows claimed per transaction.
    pub batch_size: i64,
    /// Longest wait for a batch's publishes and confirms; the claim
    /// transaction (and its row locks) lasts no longer than this plus two
    /// statements.
    pub publish_timeout: Duration,
    /// A row the broker refused this many times is parked.
    pub max_attempts: i32,
    /// Wait before the first retry of a refused row; it doubles with each
    /// attempt, up to [`MAX_RETRY_DELAY`].
    pub retry_delay: Duration,
}

/// The longest wait between two attempts of a refused row.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

impl Policy {
    /// The wait after a row's `attempts`-th refusal.
    pub fn retry_delay(&self, attempts: i32) -> Duration {
        let doublings = attempts.saturating_sub(1).clamp(0, 20) as u32;
        self.retry_delay
            .saturating_mul(1 << doublings)
            .min(MAX_RETRY_DELAY)
    }
}

/// Claims up to `batch_size` due rows of `partitions`, publishes them and,
/// in the same transaction, deletes what the broker confirmed and routed,
/// schedules a retry of what it refused, and parks what it can never take
/// (after `max_attempts` refusals, at once when it breaks a broker limit,
/// and every later row of such a row's aggregate). A refused row holds
/// back only the later rows of its own aggregate, and only until its retry
/// time. A crash after the confirms and before the commit publishes those
/// rows again; consumers deduplicate on the message id.
pub async fn drain_once(
    pool: &Pool,
    publisher: &Publisher,
    policy: &Policy,
    partitions: &[i16],
) -> Result<Step, DrainError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let rows = store::claim(&tx, partitions, policy.batch_size).await?;
    if rows.is_empty() {
        tx.commit().await?;
        return Ok(Step::Empty);
    }
    let outcomes = tokio::time::timeout(policy.publish_timeout, publisher.publish(&rows))
        .await
        .map_err(|_| {
            DrainError::Broker(anyhow::anyhow!(
                "no publisher confirm within {:?}",
                policy.publish_timeout
            ))
        })?
        .map_err(DrainError::Broker)?;
    let mut settled = Settled::sort(policy, &rows, outcomes);
    settled.unpark_replayed(&tx, &rows).await?;
    if !settled.published.is_empty() {
        store::delete(&tx, &settled.published).await?;
    }
    if !settled.retries.is_empty() {
        store::retry_later(&tx, &settled.retries).await?;
    }
    if !settled.parked.is_empty() {
        store::park(&tx, &settled.parked).await?;
    }
    tx.commit().await?;
    settled.report(policy, &rows);
    Ok(Step::Drained {
        published: settled.published.len(),
        retrying: settled.retries.len(),
        parked: settled.parked.len(),
        full: rows.len() as i64 >= policy.batch_size,
    })
}

/// A batch's rows by what happens to them next.
#[derive(Debug, Default)]
struct Settled {
    /// Confirmed and routed: deleted.
    published: Vec<i64>,
    /// Refused, attempts left.
    retries: Vec<Retry>,
    /// Never publishable: moved to `outbox_parked`.
    parked: Vec<Park>,
    /// Refusals by the broker in this batch (retried or parked).
    unroutable: usize,
    nacked: usize,
}

impl Settled {
    fn sort(policy: &Policy, rows: &[OutboxRow], outcomes: Vec<Outcome>) -> Self {
        let mut settled = Self::default();
        for (row, outcome) in rows.iter().zip(outcomes) {
            let refused = |what: String| {
                let attempts = row.attempts.saturating_add(1);
                if attempts >= policy.max_attempts {
                    Err(Park {
                        id: row.id,
                        attempts,
                        reason: format!("{what} ({attempts} attempts)"),
                    })
                } else {
                    Ok(Retry {
                        id: row.id,
                        attempts,
                        delay_ms: policy.retry_delay(attempts).as_millis() as i64,
                    })
                }
            };
            let next = match outcome {
                Outcome::Confirmed => {
                    settled.published.push(row.id);
                    continue;
                }
                Outcome::Unroutable => {
                    settled.unroutable += 1;
                    refused(format!(
                        "unroutable: no queue is bound for routing key {:?}",
                        row.routing_key
                    ))
                }
                Outcome::Nacked => {
                    settled.nacked += 1;
                    refused("nacked: the broker refused it".to_owned())
                }
                Outcome::Unpublishable(reason) => Err(Park {
                    id: row.id,
                    attempts: row.attempts,
                    reason,
                }),
                Outcome::Held => Err(Park {
                    id: row.id,
                    attempts: row.attempts,
                    reason: format!(
                        "behind parked: an earlier event of aggregate {:?} is parked",
                        row.aggregate_id
                    ),
                }),
            };
            match next {
                Ok(retry) => settled.retries.push(retry),
                Err(park) => settled.parked.push(park),
            }
        }
        settled
    }

    /// Rows held behind a parked row of their aggregate stay in the outbox
    /// (for the next claim) if `relay outbox replay` moved that row back
    /// meanwhile: the replay locks the parked rows, so this waits for it
    /// and then finds them gone.
    async fn unpark_replayed(
        &mut self,
        tx: &deadpool_postgres::Transaction<'_>,
        rows: &[OutboxRow],
    ) -> Result<(), tokio_postgres::Error> {
        let behind = |id: i64| rows.iter().find(|r| r.id == id && r.behind_parked);
        let aggregates: Vec<&str> = self
            .parked
            .iter()
            .filter_map(|p| behind(p.id).map(|r| r.aggregate_id.as_str()))
            .collect();
        if aggregates.is_empty() {
            return Ok(());
        }
        let still = store::lock_parked_aggregates(tx, &aggregates).await?;
        self.parked
            .retain(|p| behind(p.id).is_none_or(|r| still.contains(r.aggregate_id.as_str())));
        Ok(())
    }

    /// Counts the refusals; logs each parked row once, at ERROR, and counts
    /// it.
    fn report(&self, policy: &Policy, rows: &[OutboxRow]) {
        for (reason, count) in [("unroutable", self.unroutable), ("nacked", self.nacked)] {
            if count > 0 {
                ::metrics::counter!(
                    RELAY_PUBLISH_FAILURES,
                    "source" => policy.source.clone(),
                    "reason" => reason
                )
                .increment(count as u64);
            }
        }
        for park in &self.parked {
            let Some(row) = rows.iter().find(|r| r.id == park.id) else {
                continue;
            };
            tracing::error!(
                source = %policy.source,
                id = row.id,
                event_id = %row.event_id,
                aggregate_id = %row.aggregate_id,
                routing_key = %row.routing_key,
                attempts = park.attempts,
                reason = %park.reason,
                "outbox row parked: it is not published until `relay outbox replay`"
            );
            ::metrics::counter!(
                RELAY_PARKED,
                "source" => policy.source.clone(),
                "reason" => reason_label(&park.reason)
            )
            .increment(1);
        }
        if !self.retries.is_empty() {
            tracing::warn!(
                source = %policy.source,
                rows = self.retries.len(),
                "the broker refused rows; each is retried after its delay"
            );
        }
    }
}

/// The metric label of a park reason: the words before its colon.
fn reason_label(reason: &str) -> &'static str {
    match reason.split(':').next().unwrap_or_default() {
        "too large" => "too_large",
        "invalid" => "invalid",
        "unroutable" => "unroutable",
        "nacked" => "nacked",
        "behind parked" => "behind_parked",
        _ => "other",
    }
}

/// Rows deleted before the relay vacuums the outbox itself...
const VACUUM_ROWS: usize = 2_000;
/// ... at most this often.
const VACUUM_INTERVAL: Duration = Duration::from_secs(2);

/// How a source worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The source database, for the lease connection.
    pub database: ordermesh_platform::db::DbConfig,
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
    /// Turn cold after this long without rows.
    pub idle_after: Duration,
    /// Turn warm once this many rows came within `idle_after`.
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
    Worker::new(config, pool, wake, held, shutdown).run().await;
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
    /// Rows published within the last `idle_after`, by batch.
    recent: VecDeque<(Instant, usize)>,
    /// Whether the last claim came back full: then claim again at once.
    last_full: bool,
    /// Probe for due rows before claiming: the last wait ended without a
    /// NOTIFY.
    probe_first: bool,
    backoff: Duration,
}

const FIRST_BACKOFF: Duration = Duration::from_millis(100);

impl Worker {
    fn new(
        config: WorkerConfig,
        pool: Pool,
        wake: Arc<Notify>,
        held: Arc<AtomicU64>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
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
            recent: VecDeque::new(),
            last_full: false,
            probe_first: false,
            backoff: FIRST_BACKOFF,
        }
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
            self.vacuum_now_and_then().await;
            self.drain_and_wait(&partitions, polling).await;
        }
        if let Some(p) = self.publisher.take() {
            p.close().await;
        }
        drop(self.leases.take());
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
                    retry_in = ?self.backoff,
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
                    tracing::warn!(source = self.source(), error = %e, retry_in = ?self.backoff, "cannot open the lease connection; retrying");
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
        let idle_after = self.config.idle_after;
        while self
            .recent
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > idle_after)
        {
            self.recent.pop_front();
        }
        let rows: usize = self.recent.iter().map(|(_, n)| n).sum();
        let source = self.config.policy.source.clone();
        let lease = self.leases.as_mut()?;
        // Hysteresis: warm at `warm_rows` per window, cold below a quarter.
        let threshold = if lease.is_warm() {
            (self.config.warm_rows / 4).max(1)
        } else {
            self.config.warm_rows
        };
        let polling = !self.config.poll_interval.is_zero()
            && (rows >= threshold || self.warm_until.is_some_and(|t| now < t));
        if polling {
            if let Err(e) = lease.warm().await {
                tracing::warn!(source, error = %e, "taking the warm locks failed; reconnecting the lease connection");
                self.leases = None;
                return None;
            }
        } else if lease.is_warm() {
            // Just went idle: from now on writers notify; claim once more
            // after the writers in flight are done.
            if let Err(e) = lease.cool().await {
                tracing::warn!(source, error = %e, "releasing the warm locks failed; reconnecting the lease connection");
                self.leases = None;
            }
            return None;
        }
        Some(polling)
    }

    /// Step 4: keep the outbox's dead rows few: every claim and probe walks
    /// them in the primary key, and autovacuum comes once a minute.
    async fn vacuum_now_and_then(&mut self) {
        if self.deleted_since_vacuum >= VACUUM_ROWS && self.last_vacuum.elapsed() >= VACUUM_INTERVAL
        {
            if let Ok(client) = self.pool.get().await
                && let Err(e) = store::vacuum(&client).await
            {
                tracing::debug!(source = self.source(), error = %e, "vacuuming the outbox failed");
            }
            self.deleted_since_vacuum = 0;
            self.last_vacuum = Instant::now();
        }
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
                self.backoff = FIRST_BACKOFF;
                self.broker_lost_since = None;
                self.recent.push_back((Instant::now(), published));
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
                self.backoff = FIRST_BACKOFF;
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
                tracing::warn!(source = self.source(), error = %e, retry_in = ?self.backoff, "drain failed; retrying");
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

    async fn pause(&mut self) {
        tokio::select! {
            () = tokio::time::sleep(self.backoff) => {}
            () = self.shutdown.cancelled() => {}
        }
        self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            source: "test".to_owned(),
            batch_size: 10,
            publish_timeout: Duration::from_secs(1),
            max_attempts: 3,
            retry_delay: Duration::from_millis(100),
        }
    }

    #[test]
    fn retry_delays_double_up_to_a_minute() {
        let p = policy();
        assert_eq!(p.retry_delay(1), Duration::from_millis(100));
        assert_eq!(p.retry_delay(2), Duration::from_millis(200));
        assert_eq!(p.retry_delay(4), Duration::from_millis(800));
        assert_eq!(p.retry_delay(i32::MAX), MAX_RETRY_DELAY);
    }

    #[test]
    fn park_reasons_have_metric_labels() {
        for (reason, label) in [
            ("too large: payload is 9 bytes", "too_large"),
            ("invalid: routing key is 300 bytes", "invalid"),
            ("unroutable: no queue (3 attempts)", "unroutable"),
            ("nacked: the broker refused it (3 attempts)", "nacked"),
            ("behind parked: an earlier event", "behind_parked"),
        ] {
            assert_eq!(reason_label(reason), label);
        }
    }

    fn row(id: i64, aggregate: &str, attempts: i32) -> OutboxRow {
        OutboxRow {
            id,
            event_id: uuid::Uuid::now_v7(),
            aggregate_id: aggregate.to_owned(),
            routing_key: "k".to_owned(),
            event_type: "t".to_owned(),
            payload: vec![],
            headers: Default::default(),
            create_time: chrono::Utc::now(),
            attempts,
            behind_parked: false,
        }
    }

    #[test]
    fn refused_rows_retry_until_their_last_attempt_then_park() {
        let rows = [
            row(1, "a", 0),
            row(2, "b", 2),
            row(3, "c", 0),
            row(4, "c", 0),
        ];
        let outcomes = vec![
            Outcome::Unroutable,
            Outcome::Nacked,
            Outcome::Unpublishable("too large: x".to_owned()),
            Outcome::Held,
        ];
        let s = Settled::sort(&policy(), &rows, outcomes);
        assert!(s.published.is_empty());
        assert_eq!(
            s.retries,
            [Retry {
                id: 1,
                attempts: 1,
                delay_ms: 100
            }]
        );
        let parked: Vec<_> = s.parked.iter().map(|p| (p.id, p.attempts)).collect();
        assert_eq!(parked, [(2, 3), (3, 0), (4, 0)]);
        assert!(s.parked[0].reason.starts_with("nacked"));
        assert!(s.parked[2].reason.starts_with("behind parked"));
    }
}
