//! One relay worker per source database. It holds the relay's partition
//! leases on that source ([`crate::lease`]) and drains only those
//! partitions: claim a batch in id order, publish it with confirms, delete
//! what the broker took, commit; repeat while batches come back full.
//!
//! [`run_worker`] runs this in a loop, and decides when to poll and when to
//! sleep (`drain/worker.rs`).

mod warmth;
mod worker;

use std::time::Duration;

use deadpool_postgres::Pool;
use ordermesh_runtime::db::PipelinedTx;
use ordermesh_runtime::metrics::{RELAY_PARKED, RELAY_PUBLISH_FAILURES};

pub use self::worker::{WorkerConfig, run_worker};
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
    // BEGIN goes out with the claim, and the COMMIT with the delete.
    let tx = PipelinedTx::new(pool.get().await?);
    let claim = store::claim(tx.client(), partitions, policy.batch_size);
    let ((), rows) = tokio::try_join!(biased; tx.begin(), claim)?;
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
    let client = tx.client();
    settled.unpark_replayed(client, &rows).await?;
    if !settled.retries.is_empty() {
        store::retry_later(client, &settled.retries).await?;
    }
    if !settled.parked.is_empty() {
        store::park(client, &settled.parked).await?;
    }
    if settled.published.is_empty() {
        tx.commit().await?;
    } else {
        let statement = store::delete_statement(client).await?;
        let delete = store::delete(client, &statement, &settled.published);
        tokio::try_join!(biased; delete, tx.commit())?;
    }
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
        tx: &deadpool_postgres::Client,
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
