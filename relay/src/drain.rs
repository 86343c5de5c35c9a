//! One relay worker per source database: claim a batch, publish it with
//! confirms, delete what the broker took, commit; repeat while batches come
//! back full, otherwise sleep until a NOTIFY, the fallback tick or shutdown.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use ordermesh_platform::amqp::BrokerConfig;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

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

/// Claims up to `batch_size` rows, publishes them and deletes the longest
/// prefix the broker confirmed and routed. Deleting only a prefix keeps the
/// outbox order: a refused row is retried before anything written after it.
/// A crash after the confirms and before the commit publishes those rows
/// again; consumers deduplicate on the message id.
pub async fn drain_once(
    pool: &Pool,
    publisher: &Publisher,
    batch_size: i64,
) -> Result<Step, DrainError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let rows = store::claim(&tx, batch_size).await?;
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

/// How a source worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Label for logs: the database name, never the URL.
    pub source: String,
    pub broker: BrokerConfig,
    pub batch_size: i64,
    /// Drain this often even without a NOTIFY.
    pub fallback_tick: Duration,
}

/// Drains one source until `shutdown`. A batch in progress is finished
/// before returning.
pub async fn run_worker(
    config: WorkerConfig,
    pool: Pool,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut publisher: Option<Publisher> = None;
    let mut backoff = Duration::from_millis(100);
    let name = format!("relay:{}", config.source);
    while !shutdown.is_cancelled() {
        let current = match publisher.take() {
            Some(p) if p.is_open() => p,
            _ => match Publisher::connect(&config.broker, &name, &shutdown).await {
                Ok(p) => {
                    tracing::info!(source = %config.source, "publisher connected");
                    p
                }
                Err(_) if shutdown.is_cancelled() => break,
                Err(e) => return Err(e),
            },
        };
        let result = drain_once(&pool, &current, config.batch_size).await;
        match result {
            Ok(Step::Drained { full: true, .. }) => {
                backoff = Duration::from_millis(100);
                publisher = Some(current);
                continue;
            }
            Ok(_) => {
                backoff = Duration::from_millis(100);
                publisher = Some(current);
                tokio::select! {
                    () = wake.notified() => {}
                    () = tokio::time::sleep(config.fallback_tick) => {}
                    () = shutdown.cancelled() => {}
                }
                continue;
            }
            Err(DrainError::Broker(e)) => {
                tracing::warn!(source = %config.source, error = format!("{e:#}"), "publishing failed; reconnecting to the broker");
                current.close().await;
            }
            Err(e) => {
                tracing::warn!(source = %config.source, error = %e, retry_in = ?backoff, "drain failed; retrying");
                publisher = Some(current);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shutdown.cancelled() => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    if let Some(p) = publisher {
        p.close().await;
    }
    tracing::info!(source = %config.source, "worker stopped");
    Ok(())
}
