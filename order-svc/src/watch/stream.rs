//! One open WatchOrder stream: the order once its changes are sure to be
//! notified, then each newer version, bounded by the call's deadline and
//! the server's shutdown.

use std::future::Future;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::{READY_TIMEOUT, Subscription};
use crate::domain::Order;
use crate::store::Store;

/// One open stream.
pub(super) struct Watcher {
    pub(super) sub: Subscription,
    pub(super) store: Store,
    pub(super) order_id: String,
    pub(super) deadline: Option<Instant>,
    pub(super) shutdown: CancellationToken,
    /// Version of the last order sent.
    pub(super) last_version: i64,
}

impl Watcher {
    /// The order once changes to it are sure to be notified.
    pub(super) async fn first(&mut self) -> Result<Order, Status> {
        let ready = tokio::time::timeout(READY_TIMEOUT, self.sub.ready());
        if bounded(&self.shutdown, self.deadline, ready)
            .await?
            .is_err()
        {
            tracing::warn!(order_id = %self.order_id, timeout = ?READY_TIMEOUT, "order watch not ready in time");
            return Err(Status::unavailable(
                "watching orders is temporarily unavailable; retry later",
            ));
        }
        self.sub.mark_seen();
        let order = bounded(
            &self.shutdown,
            self.deadline,
            self.store.get_order(&self.order_id),
        )
        .await??;
        self.last_version = order.version;
        Ok(order)
    }

    /// The order after its next change to a newer version.
    pub(super) async fn next_version(&mut self) -> Result<Order, Status> {
        loop {
            bounded(&self.shutdown, self.deadline, self.sub.changed()).await?;
            let order = bounded(
                &self.shutdown,
                self.deadline,
                self.store.get_order(&self.order_id),
            )
            .await??;
            if order.version > self.last_version {
                self.last_version = order.version;
                return Ok(order);
            }
        }
    }
}

/// `f`, unless the server shuts down or the deadline passes first.
async fn bounded<F: Future>(
    shutdown: &CancellationToken,
    deadline: Option<Instant>,
    f: F,
) -> Result<F::Output, Status> {
    let deadline = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        () = shutdown.cancelled() => Err(Status::unavailable("shutting down")),
        () = deadline => Err(Status::deadline_exceeded("deadline exceeded")),
        out = f => Ok(out),
    }
}
