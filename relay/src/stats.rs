//! The relay's metrics (names in [`ordermesh_runtime::metrics`]), per
//! source database:
//!
//! - the outbox backlog as gauges, rows waiting and the age of the oldest,
//!   refreshed every [`INTERVAL`] by [`run_monitor`]. Both go back to 0 once
//!   the relay has caught up; a growing age means events are stuck;
//! - what each drain step did ([`record_step`]): rows published, batches
//!   lost to broker errors; and reconnections. Rows the broker refused and
//!   rows parked are counted where the batch is settled (`drain.rs`);
//! - rows waiting in `outbox_parked`, as a gauge.

use std::time::Duration;

use deadpool_postgres::Pool;
use ordermesh_runtime::metrics::{
    RELAY_BACKLOG, RELAY_OLDEST_AGE, RELAY_PARKED_ROWS, RELAY_PUBLISH_FAILURES, RELAY_PUBLISHED,
    RELAY_RECONNECTS,
};
use tokio_util::sync::CancellationToken;

use crate::drain::{DrainError, Step};
use crate::store;

/// Counts the outcome of one drain step of `source`.
pub fn record_step(source: &str, result: &Result<Step, DrainError>) {
    let source = source.to_owned();
    let (published, failure) = match result {
        Ok(Step::Drained { published, .. }) => (*published, None),
        Ok(Step::Empty) => (0, None),
        Err(DrainError::Broker(_)) => (0, Some("broker")),
        // Database trouble: nothing was published, nothing refused.
        Err(_) => (0, None),
    };
    if published > 0 {
        ::metrics::counter!(RELAY_PUBLISHED, "source" => source.clone())
            .increment(published as u64);
    }
    if let Some(reason) = failure {
        ::metrics::counter!(RELAY_PUBLISH_FAILURES, "source" => source, "reason" => reason)
            .increment(1);
    }
}

/// Counts a broker connection of `source`'s worker after its first.
pub fn record_reconnect(source: &str) {
    ::metrics::counter!(RELAY_RECONNECTS, "source" => source.to_owned()).increment(1);
}

/// How often the backlog is measured.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Measures the backlog of `source` until `shutdown`. A failed query is
/// logged at debug level (readiness reports the database) and retried.
pub async fn run_monitor(
    source: String,
    pool: Pool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let rows = ::metrics::gauge!(RELAY_BACKLOG, "source" => source.clone());
    let age = ::metrics::gauge!(RELAY_OLDEST_AGE, "source" => source.clone());
    let parked = ::metrics::gauge!(RELAY_PARKED_ROWS, "source" => source.clone());
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return Ok(()),
        }
        let measured = async {
            let client = pool.get().await.map_err(|e| e.to_string())?;
            store::backlog(&**client).await.map_err(|e| e.to_string())
        };
        match measured.await {
            Ok(backlog) => {
                rows.set(backlog.rows as f64);
                age.set(backlog.oldest_age_seconds);
                parked.set(backlog.parked as f64);
            }
            Err(e) => tracing::debug!(source, error = e, "cannot measure the outbox backlog"),
        }
    }
}
