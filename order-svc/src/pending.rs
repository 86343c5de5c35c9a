//! Makes a stuck order visible: every few seconds the age of the oldest
//! PENDING order goes into the gauge [`ORDERS_OLDEST_PENDING`] (0 when none is PENDING). Every accepted order should leave PENDING
//! within seconds, paid or failed; a gauge that keeps growing means one
//! did not (its event parked, dead-lettered or lost).

use std::time::Duration;

use ordermesh_runtime::metrics::ORDERS_OLDEST_PENDING;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// How often the age is sampled unless the configuration says otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// Samples the oldest PENDING order's age every `interval` until
/// `shutdown`. A failed query is logged at debug level (readiness reports
/// the database) and the gauge keeps its last value.
pub async fn run(
    store: Store,
    interval: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Installs the recorder first, so the description is kept.
    ordermesh_runtime::metrics::handle();
    ::metrics::describe_gauge!(
        ORDERS_OLDEST_PENDING,
        ::metrics::Unit::Seconds,
        "age of the oldest order still waiting for its payment decision"
    );
    let gauge = ::metrics::gauge!(ORDERS_OLDEST_PENDING);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return Ok(()),
        }
        match store.oldest_pending_age().await {
            Ok(age) => gauge.set(age.map_or(0.0, |age| age.as_secs_f64())),
            Err(e) => {
                tracing::debug!(
                    error = format!("{e:#}"),
                    "cannot sample the oldest pending order"
                );
            }
        }
    }
}
