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
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::lease::{self, Lease};
use crate::publisher::{Outcome, Publisher};
use crate::store;

/// What one [`drain_once`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Published and deleted `published` rows; `full` when the batch was
    /// full, so more rows are likely waiting.
    Drained { published: usize, full: bool },
    /// Nothing to publish.
    Empty,
}

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("database: {0}")]
    Database(#[from] deadpool_postgres::PoolError),
    #[error("database: {0}")]
    Query(#[from] tokio_postgres::Error),
    /// The broker connection or channel failed: reconnect before retrying.
    #[error("broker: {0:#}")]
    Broker(anyhow::Error),
    /// The broker refused or could not route some rows; they stay in the
    /// outbox and are retried after a pause.
    #[error("{kept} of {claimed} rows were not accepted by the broker ({reason}); kept for retry")]
    Refused {
        kept: usize,
        claimed: usize,
        reason: &'static str,
    },
}

/// Claims up to `batch_size` rows of `partitions`, publishes them and
/// deletes the longest prefix the broker confirmed and routed. Deleting
/// only a prefix keeps the outbox order: a refused row is retried before
/// anything written after it. A crash after the confirms and before the
/// commit publishes those rows again; consumers deduplicate on the message
/// id.
pub async fn drain_once(
    pool: &Pool,
    publisher: &Publisher,
    batch_size: i64,
    partitions: &[i16],
) -> Result<Step, DrainError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let rows = store::claim(&tx, partitions, batch_size).await?;
    if rows.is_empty() {
        tx.commit().await?;
        return Ok(Step::Empty);
    }
    let outcomes = publisher.publish(&rows).await.map_err(DrainError::Broker)?;
    let accepted = outcomes
        .iter()
        .take_while(|o| **o == Outcome::Confirmed)
        .count();
    let ids: Vec<i64> = rows[..accepted].iter().map(|r| r.id).collect();
    if !ids.is_empty() {
        store::delete(&tx, &ids).await?;
    }
    tx.commit().await?;
    if accepted < rows.len() {
        let reason = match outcomes[accepted] {
            Outcome::Unroutable => "no queue is bound for a routing key",
            _ => "the broker nacked a message",
        };
        return Err(DrainError::Refused {
            kept: rows.len() - accepted,
            claimed: rows.len(),
            reason,
        });
    }
    tracing::debug!(published = accepted, "drained a batch");
    Ok(Step::Drained {
        published: accepted,
        full: rows.len() as i64 >= batch_size,
    })
}

/// Rows deleted before the relay vacuums the outbox itself...
const VACUUM_ROWS: usize = 2_000;
/// ... at most this often.
const VACUUM_INTERVAL: Duration = Duration::from_secs(2);

/// How a source worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Label for logs: the database name, never the URL.
    pub source: String,
    /// The source database, for the lease connection.
    pub database: ordermesh_platform::db::DbConfig,
    /// This relay's name in `pg_stat_activity`.
    pub instance: String,
    pub broker: BrokerConfig,
    pub batch_size: i64,
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
    let mut publisher: Option<Publisher> = None;
    // Broker connections opened so far; all but the first are reconnects.
    let mut connects = 0u64;
    let mut leases: Option<Lease> = None;
    let mut next_rebalance = Instant::now();
    // The worker polls at least until then: set when it gains partitions.
    let mut warm_until: Option<Instant> = None;
    // Rows deleted since the relay last vacuumed the outbox.
    let mut deleted_since_vacuum = 0usize;
    let mut last_vacuum = Instant::now();
    // Rows published within the last `idle_after`, by batch.
    let mut recent: VecDeque<(Instant, usize)> = VecDeque::new();
    // Whether the last claim came back full: then claim again at once.
    let mut last_full = false;
    let mut backoff = Duration::from_millis(100);
    let name = format!("relay:{}", config.source);
    let source = config.source.as_str();
    while !shutdown.is_cancelled() {
        // 1. The lease connection, and this relay's share of partitions.
        if leases.as_ref().is_some_and(Lease::is_closed) {
            tracing::warn!(source, "lease connection lost; its partitions are released");
            leases = None;
        }
        let lease = match leases.as_mut() {
            Some(l) => l,
            None => match Lease::connect(&config.database, &config.instance, held.clone()).await {
                Ok(l) => {
                    next_rebalance = Instant::now();
                    leases.insert(l)
                }
                Err(e) => {
                    tracing::warn!(source, error = %e, retry_in = ?backoff, "cannot open the lease connection; retrying");
                    pause(&mut backoff, &shutdown).await;
                    continue;
                }
            },
        };
        if Instant::now() >= next_rebalance {
            next_rebalance = Instant::now() + config.rebalance_interval;
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
                        warm_until = Some(Instant::now() + config.idle_after);
                    }
                }
                Err(e) => {
                    tracing::warn!(source, error = %e, "rebalancing failed; reconnecting the lease connection");
                    leases = None;
                    continue;
                }
            }
        }
        if lease.held() == 0 {
            tokio::select! {
                () = tokio::time::sleep_until(next_rebalance) => {}
                () = shutdown.cancelled() => {}
            }
            continue;
        }
        let partitions = lease::partitions(lease.held());

        // 2. The broker.
        let current = match publisher.take() {
            Some(p) if p.is_open() => p,
            _ => match Publisher::connect(&config.broker, &name, &shutdown).await {
                Ok(p) => {
                    tracing::info!(source, "publisher connected");
                    connects += 1;
                    if connects > 1 {
                        crate::stats::record_reconnect(source);
                    }
                    p
                }
                Err(_) if shutdown.is_cancelled() => break,
                Err(e) => return Err(e),
            },
        };

        // 3. Warm or cold.
        let now = Instant::now();
        while recent
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > config.idle_after)
        {
            recent.pop_front();
        }
        let rows: usize = recent.iter().map(|(_, n)| n).sum();
        // Hysteresis: warm at `warm_rows` per window, cold below a quarter.
        let threshold = if lease.is_warm() {
            (config.warm_rows / 4).max(1)
        } else {
            config.warm_rows
        };
        let polling = !config.poll_interval.is_zero()
            && (rows >= threshold || warm_until.is_some_and(|t| now < t));
        if polling {
            if let Err(e) = lease.warm().await {
                tracing::warn!(source, error = %e, "taking the warm locks failed; reconnecting the lease connection");
                leases = None;
                publisher = Some(current);
                continue;
            }
        } else if lease.is_warm() {
            // Just went idle: from now on writers notify; claim once more
            // after the writers in flight are done.
            let cooled = lease.cool().await;
            publisher = Some(current);
            if let Err(e) = cooled {
                tracing::warn!(source, error = %e, "releasing the warm locks failed; reconnecting the lease connection");
                leases = None;
            }
            continue;
        }

        // 4. Keep the outbox's dead rows few: every claim and probe walks
        // them in the primary key, and autovacuum comes once a minute.
        if deleted_since_vacuum >= VACUUM_ROWS && last_vacuum.elapsed() >= VACUUM_INTERVAL {
            if let Ok(client) = pool.get().await
                && let Err(e) = store::vacuum(&client).await
            {
                tracing::debug!(source, error = %e, "vacuuming the outbox failed");
            }
            deleted_since_vacuum = 0;
            last_vacuum = Instant::now();
        }

        // 5. Drain.
        // While polling, a one-round-trip probe is cheaper than an empty
        // claim transaction.
        let result = if polling && !last_full {
            match pool.get().await {
                Ok(client) => match store::pending(&client, &partitions).await {
                    Ok(false) => Ok(Step::Empty),
                    Ok(true) => drain_once(&pool, &current, config.batch_size, &partitions).await,
                    Err(e) => Err(e.into()),
                },
                Err(e) => Err(e.into()),
            }
        } else {
            drain_once(&pool, &current, config.batch_size, &partitions).await
        };
        publisher = Some(current);
        last_full = matches!(result, Ok(Step::Drained { full: true, .. }));
        crate::stats::record_step(source, &result);
        match result {
            Ok(Step::Drained { full, published }) => {
                backoff = Duration::from_millis(100);
                recent.push_back((Instant::now(), published));
                deleted_since_vacuum += published;
                if full || config.poll_interval.is_zero() {
                    continue;
                }
                sleep_or_wake(config.poll_interval, &wake, &shutdown).await;
                continue;
            }
            Ok(Step::Empty) => {
                backoff = Duration::from_millis(100);
                if polling {
                    sleep_or_wake(config.poll_interval, &wake, &shutdown).await;
                } else {
                    tokio::select! {
                        () = wake.notified() => {}
                        () = tokio::time::sleep(config.fallback_tick) => {}
                        () = tokio::time::sleep_until(next_rebalance) => {}
                        () = shutdown.cancelled() => {}
                    }
                }
                continue;
            }
            Err(DrainError::Broker(e)) => {
                tracing::warn!(
                    source,
                    error = format!("{e:#}"),
                    "publishing failed; reconnecting to the broker"
                );
                if let Some(p) = publisher.take() {
                    p.close().await;
                }
            }
            Err(e) => {
                tracing::warn!(source, error = %e, retry_in = ?backoff, "drain failed; retrying");
            }
        }
        pause(&mut backoff, &shutdown).await;
    }
    if let Some(p) = publisher {
        p.close().await;
    }
    drop(leases);
    tracing::info!(source, "worker stopped");
    Ok(())
}

async fn sleep_or_wake(interval: Duration, wake: &Notify, shutdown: &CancellationToken) {
    tokio::select! {
        () = tokio::time::sleep(interval) => {}
        () = wake.notified() => {}
        () = shutdown.cancelled() => {}
    }
}

async fn pause(backoff: &mut Duration, shutdown: &CancellationToken) {
    tokio::select! {
        () = tokio::time::sleep(*backoff) => {}
        () = shutdown.cancelled() => {}
    }
    *backoff = (*backoff * 2).min(Duration::from_secs(5));
}
