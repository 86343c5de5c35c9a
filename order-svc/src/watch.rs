//! WatchOrder: one LISTEN connection per process fans order changes out to
//! every open stream, so a watcher costs a map entry, not a connection.
//!
//! - The trigger of `migrations/V3__order_watch_notify.sql` NOTIFYs
//!   [`CHANNEL`] with the order id when an order's version changes, but only
//!   while someone holds the shared advisory lock ([`LOCK_CLASS`], bucket)
//!   of the order's bucket, `hashtext(order_id) & 1023`: a NOTIFY serialises
//!   commits cluster-wide, so unwatched orders must not pay for it.
//! - [`WatchHub`] owns two connections ([`APPLICATION_NAME`],
//!   [`LOCK_APPLICATION_NAME`]): on one it LISTENs
//!   ([`ordermesh_runtime::listen`]), on the other it holds the lock of
//!   every bucket with a watched order ([`BucketLocks`]; released with the
//!   bucket's last watcher; a lock that waits for writers never holds back
//!   a notification), and on each notification wakes the order's watchers
//!   through a `tokio::sync::watch` channel (`watch/state.rs` keeps these books).
//!   When a connection is lost it reconnects with backoff, LISTENs,
//!   re-takes the locks and then wakes every watcher, since changes may
//!   have gone unnotified meanwhile.
//! - A stream ([`WatchHub::open`], `watch/stream.rs`) registers first, waits until
//!   its bucket is locked, then reads the order; after each wake-up it
//!   re-reads it and sends it when its version is newer than the last one
//!   sent.
//!
//! Its SQL is in [`crate::store::watch`].

mod state;
mod stream;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::collections::hash_map::Entry as MapEntry;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use ordermesh_proto::order::v1 as pb;
use ordermesh_runtime::db::DbConfig;
use ordermesh_runtime::listen::Listener;
use tokio::sync::{Notify, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::store::Store;
use crate::store::watch::BucketLocks;
pub use crate::store::watch::{BUCKETS, CHANNEL, LOCK_APPLICATION_NAME, LOCK_CLASS};
use state::{Bucket, Lock, Shared, State, Watched, wait_in};
use stream::Watcher;

/// How the hub's LISTEN connection shows in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "ordermesh-order-watch";
/// How long a new watcher waits for its bucket lock (e.g. while the hub
/// reconnects) before the call fails with UNAVAILABLE.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an idle hub checks that its connections still answer, so a
/// silently dead peer is noticed without waiting for TCP keepalives.
const HEARTBEAT: Duration = Duration::from_secs(30);
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);

/// The stream `WatchOrder` answers with.
pub type WatchStream =
    Pin<Box<dyn futures::Stream<Item = Result<pb::WatchOrderResponse, Status>> + Send>>;

/// The process's watch fan-out. Cheap to clone; [`WatchHub::run`] drives it.
#[derive(Clone)]
pub struct WatchHub {
    shared: Arc<Shared>,
}

impl WatchHub {
    /// A hub for the service's `database`; it connects once [`run`] runs.
    ///
    /// [`run`]: WatchHub::run
    pub fn new(database: &DbConfig, shutdown: CancellationToken) -> Self {
        let mut database = database.clone();
        database.application_name(APPLICATION_NAME);
        if database.get_connect_timeout().is_none() {
            database.connect_timeout(Duration::from_secs(5));
        }
        Self {
            shared: Arc::new(Shared {
                database,
                shutdown,
                state: Mutex::new(State {
                    orders: HashMap::new(),
                    buckets: (0..BUCKETS).map(|_| Bucket::default()).collect(),
                    unplaced: Vec::new(),
                }),
                work: Notify::new(),
                connected: Arc::new(AtomicBool::new(false)),
            }),
        }
    }

    /// True while the hub listens and holds the locks it should.
    pub fn connected(&self) -> Arc<AtomicBool> {
        self.shared.connected.clone()
    }

    /// Keeps the LISTEN connection up until shutdown, handing each
    /// notification to the order's watchers and running a
    /// session (below) beside each connection.
    pub async fn run(self) -> anyhow::Result<()> {
        let shared = self.shared.clone();
        Listener::new(self.shared.database.clone(), &[CHANNEL], "order watch")
            .heartbeat(HEARTBEAT, HEARTBEAT_TIMEOUT)
            .run(
                &self.shared.shutdown,
                move |n| shared.notified(n.payload()),
                |_| self.session(),
            )
            .await;
        Ok(())
    }

    /// One LISTEN connection's life, beside it: open the bucket-lock
    /// connection, take the locks of the watched buckets, then wake every
    /// watcher to re-read what it may have missed; then keep the locks in
    /// line with the watched buckets and check the connection now and then.
    /// It ends with an error (or is dropped with the LISTEN connection);
    /// its locks go with it.
    async fn session(&self) -> anyhow::Result<()> {
        let _lost = Disconnected(&self.shared);
        let locks = BucketLocks::connect(&self.shared.database).await?;
        let mut listening = false;
        let mut heartbeat = tokio::time::interval_at(Instant::now() + HEARTBEAT, HEARTBEAT);
        loop {
            tokio::select! {
                biased;
                e = locks.closed() => return Err(e),
                done = self.reconcile(&locks) => done?,
            }
            if !listening {
                listening = true;
                self.shared.connected.store(true, Ordering::SeqCst);
                let woken = self.shared.wake_all();
                tracing::info!(channel = CHANNEL, woken, "order watch listening");
            }
            tokio::select! {
                biased;
                e = locks.closed() => return Err(e),
                () = self.shared.work.notified() => {}
                _ = heartbeat.tick() => locks.ping(HEARTBEAT_TIMEOUT).await?,
            }
        }
    }

    /// Brings the held locks in line with the watched buckets, looking up
    /// the buckets of newly watched orders first; repeats until nothing
    /// changed meanwhile.
    async fn reconcile(&self, locks: &BucketLocks) -> anyhow::Result<()> {
        loop {
            let unplaced = self.shared.take_unplaced();
            if !unplaced.is_empty() {
                self.shared.place(locks.buckets(&unplaced).await?);
            }
            let plan = self.shared.plan();
            if plan.lock.is_empty() && plan.unlock.is_empty() {
                if unplaced.is_empty() {
                    return Ok(());
                }
                continue;
            }
            if !plan.lock.is_empty() {
                // Watchers read after this returns.
                locks.lock(&plan.lock).await?;
            }
            if !plan.unlock.is_empty() {
                locks.unlock(&plan.unlock).await?;
            }
            self.shared.settle(&plan);
        }
    }

    /// Registers a watcher of `order_id`; it is woken by every change
    /// committed once [`Subscription::ready`] has returned.
    pub fn subscribe(&self, order_id: &str) -> Subscription {
        let mut state = self.shared.lock();
        let State {
            orders,
            buckets,
            unplaced,
        } = &mut *state;
        let watched = match orders.entry(order_id.to_owned()) {
            MapEntry::Occupied(o) => o.into_mut(),
            MapEntry::Vacant(v) => {
                unplaced.push(order_id.to_owned());
                v.insert(Watched {
                    changed: watch::Sender::new(()),
                    watchers: 0,
                    bucket: None,
                    waiting: Vec::new(),
                })
            }
        };
        watched.watchers += 1;
        let changes = watched.changed.subscribe();
        let ready = match watched.bucket {
            Some(b) if buckets[b].lock == Lock::Held => None,
            Some(b) => Some(wait_in(&mut buckets[b].waiting)),
            None => Some(wait_in(&mut watched.waiting)),
        };
        drop(state);
        if ready.is_some() {
            self.shared.work.notify_one();
        }
        Subscription {
            hub: self.clone(),
            order_id: order_id.to_owned(),
            changes,
            ready,
        }
    }

    /// Starts a watch: registers, waits for the bucket lock, reads the
    /// order (NOT_FOUND if there is none) and returns the stream that sends
    /// it and then each newer version, ending after a terminal status, at
    /// `deadline` (DEADLINE_EXCEEDED) or at shutdown (UNAVAILABLE).
    pub async fn open(
        &self,
        store: Store,
        order_id: String,
        deadline: Option<Instant>,
    ) -> Result<WatchStream, Status> {
        let mut watcher = Watcher {
            sub: self.subscribe(&order_id),
            store,
            order_id,
            deadline,
            shutdown: self.shared.shutdown.clone(),
            last_version: 0,
        };
        let first = watcher.first().await?;
        let stream = futures::stream::unfold(Some((watcher, Some(first))), |state| async move {
            let (mut watcher, first) = state?;
            let next = match first {
                Some(order) => Ok(order),
                None => watcher.next_version().await,
            };
            match next {
                Ok(order) => {
                    let more = !order.status.is_terminal();
                    let response = pb::WatchOrderResponse {
                        order: Some(order.into()),
                    };
                    // Dropping the watcher after the last message releases
                    // its registration at once.
                    Some((Ok(response), more.then_some((watcher, None))))
                }
                Err(status) => Some((Err(status), None)),
            }
        });
        Ok(stream.boxed())
    }
}

/// Marks the hub disconnected when a session ends, however it ends.
struct Disconnected<'a>(&'a Shared);

impl Drop for Disconnected<'_> {
    fn drop(&mut self) {
        self.0.disconnected();
    }
}

/// A registration with the hub; dropping it unregisters.
pub struct Subscription {
    hub: WatchHub,
    order_id: String,
    changes: watch::Receiver<()>,
    /// Set until the bucket lock is known to be held.
    ready: Option<oneshot::Receiver<()>>,
}

impl Subscription {
    /// Waits until the order's bucket lock is held: every change committed
    /// after this returns is notified (earlier ones are visible to a read).
    pub async fn ready(&mut self) {
        if let Some(ready) = &mut self.ready {
            // The sender lives in the hub's state until the lock is held.
            let _ = ready.await;
            self.ready = None;
        }
    }

    /// Marks the changes so far as seen.
    pub fn mark_seen(&mut self) {
        self.changes.borrow_and_update();
    }

    /// Waits for a change after the last one seen, and marks it seen.
    pub async fn changed(&mut self) {
        if self.changes.changed().await.is_err() {
            // The sender lives as long as a subscription does.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.shared.unsubscribe(&self.order_id);
    }
}
