//! One dedicated LISTEN connection per source ([`ordermesh_runtime::listen`]):
//! a NOTIFY from the outbox trigger (payload: the row's partition) wakes
//! that source's worker when the relay holds the partition's lease. After
//! (re)connecting it wakes the worker once, covering notifications missed
//! while disconnected.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ordermesh_messaging::outbox::NOTIFY_CHANNEL;
use ordermesh_runtime::db::DbConfig;
use ordermesh_runtime::listen::Listener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Listens until `shutdown`, reconnecting with backoff.
pub async fn run_listener(
    source: String,
    config: DbConfig,
    wake: Arc<Notify>,
    held: Arc<AtomicU64>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let on_notify = {
        let wake = wake.clone();
        move |n: &tokio_postgres::Notification| {
            if wanted(n.payload(), held.load(Ordering::Relaxed)) {
                wake.notify_one();
            }
        }
    };
    Listener::new(config, &[NOTIFY_CHANNEL], source)
        .run(&shutdown, on_notify, |_| {
            wake.notify_one();
            std::future::pending()
        })
        .await;
    Ok(())
}

/// Whether a NOTIFY with `payload` concerns a partition of `held` (or
/// names none it knows: then better wake than miss a row).
fn wanted(payload: &str, held: u64) -> bool {
    match payload.parse::<u32>() {
        // Another relay's partition: not ours to wake for.
        Ok(p) if p < 64 => held & (1 << p) != 0,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_held_partitions_and_unknown_payloads_wake() {
        let held = 1 << 3 | 1 << 63;
        assert!(wanted("3", held));
        assert!(wanted("63", held));
        assert!(!wanted("4", held));
        assert!(wanted("64", held));
        assert!(wanted("x", held));
    }
}
