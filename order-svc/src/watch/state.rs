//! The hub's books: which orders are watched, in which bucket, whether
//! each bucket's lock is held, and who waits for it. Plain data behind a
//! mutex, so the rules are tested without a database.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ordermesh_runtime::db::DbConfig;
use tokio::sync::{Notify, oneshot, watch};
use tokio_util::sync::CancellationToken;

pub(super) struct Shared {
    /// The service's database, under [`APPLICATION_NAME`].
    pub(super) database: DbConfig,
    /// The service's shutdown: the hub stops and open streams end.
    pub(super) shutdown: CancellationToken,
    pub(super) state: Mutex<State>,
    /// Wakes the hub when a bucket may need its lock taken or released.
    pub(super) work: Notify,
    /// Whether the hub is listening with its locks taken (a readiness flag).
    pub(super) connected: Arc<AtomicBool>,
}

pub(super) struct State {
    pub(super) orders: HashMap<String, Watched>,
    /// Indexed by bucket, [`BUCKETS`] long.
    pub(super) buckets: Vec<Bucket>,
    /// Watched orders whose bucket the hub has yet to look up.
    pub(super) unplaced: Vec<String>,
}

/// One watched order.
pub(super) struct Watched {
    /// Ticks on every notification about the order (and after reconnects).
    pub(super) changed: watch::Sender<()>,
    pub(super) watchers: usize,
    /// Known once the hub asked the database for `hashtext`.
    pub(super) bucket: Option<usize>,
    /// Watchers waiting for the lock while the bucket is unknown.
    pub(super) waiting: Vec<oneshot::Sender<()>>,
}

#[derive(Default)]
pub(super) struct Bucket {
    /// Watched orders in the bucket; the lock is wanted while above 0.
    pub(super) orders: usize,
    pub(super) lock: Lock,
    /// Watchers to tell once the lock is held.
    pub(super) waiting: Vec<oneshot::Sender<()>>,
}

/// The bucket's shared advisory lock on the hub's current connection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lock {
    #[default]
    Unheld,
    Acquiring,
    Held,
    Releasing,
}

/// Lock changes one hub round makes.
#[derive(Debug, Default)]
pub(super) struct Plan {
    pub(super) lock: Vec<i32>,
    pub(super) unlock: Vec<i32>,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("the watch state is never poisoned")
    }

    pub(super) fn unsubscribe(&self, order_id: &str) {
        let mut state = self.lock();
        let Some(watched) = state.orders.get_mut(order_id) else {
            return;
        };
        watched.watchers -= 1;
        if watched.watchers > 0 {
            return;
        }
        let bucket = watched.bucket;
        state.orders.remove(order_id);
        if let Some(b) = bucket {
            let bucket = &mut state.buckets[b];
            bucket.orders -= 1;
            if bucket.orders == 0 {
                drop(state);
                self.work.notify_one();
            }
        }
    }

    /// A notification: wakes the order's watchers, if any.
    pub(super) fn notified(&self, order_id: &str) {
        if let Some(watched) = self.lock().orders.get(order_id) {
            watched.changed.send_modify(|()| {});
        }
    }

    /// Wakes every watcher; returns how many orders are watched.
    pub(super) fn wake_all(&self) -> usize {
        let state = self.lock();
        for watched in state.orders.values() {
            watched.changed.send_modify(|()| {});
        }
        state.orders.len()
    }

    pub(super) fn take_unplaced(&self) -> Vec<String> {
        let mut state = self.lock();
        let mut ids = std::mem::take(&mut state.unplaced);
        ids.retain(|id| state.orders.get(id).is_some_and(|w| w.bucket.is_none()));
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    pub(super) fn place(&self, placed: Vec<(String, usize)>) {
        let mut state = self.lock();
        let State {
            orders, buckets, ..
        } = &mut *state;
        for (id, b) in placed {
            let Some(watched) = orders.get_mut(&id) else {
                continue;
            };
            if watched.bucket.is_some() {
                continue;
            }
            watched.bucket = Some(b);
            let bucket = &mut buckets[b];
            bucket.orders += 1;
            let waiting = std::mem::take(&mut watched.waiting);
            if bucket.lock == Lock::Held {
                release(waiting);
            } else {
                bucket.waiting.extend(waiting);
            }
        }
    }

    /// The locks to take and release, marked as in progress.
    pub(super) fn plan(&self) -> Plan {
        let mut state = self.lock();
        let mut plan = Plan::default();
        for (b, bucket) in state.buckets.iter_mut().enumerate() {
            match (bucket.orders > 0, bucket.lock) {
                (true, Lock::Unheld) => {
                    bucket.lock = Lock::Acquiring;
                    plan.lock.push(b as i32);
                }
                (false, Lock::Held) => {
                    bucket.lock = Lock::Releasing;
                    plan.unlock.push(b as i32);
                }
                _ => {}
            }
        }
        plan
    }

    /// Records a plan as done and tells the watchers of newly held buckets.
    pub(super) fn settle(&self, plan: &Plan) {
        let mut state = self.lock();
        for &b in &plan.lock {
            let bucket = &mut state.buckets[b as usize];
            bucket.lock = Lock::Held;
            release(std::mem::take(&mut bucket.waiting));
        }
        for &b in &plan.unlock {
            state.buckets[b as usize].lock = Lock::Unheld;
        }
    }

    /// The connection is gone and its locks with it; what is watched stays
    /// watched, to be locked again on the next connection.
    pub(super) fn disconnected(&self) {
        self.connected.store(false, Ordering::SeqCst);
        let mut state = self.lock();
        let State {
            orders,
            buckets,
            unplaced,
        } = &mut *state;
        for bucket in buckets.iter_mut() {
            bucket.lock = Lock::Unheld;
        }
        // A bucket lookup in flight was lost with the connection.
        unplaced.clear();
        unplaced.extend(
            orders
                .iter()
                .filter(|(_, w)| w.bucket.is_none())
                .map(|(id, _)| id.clone()),
        );
    }
}

/// A new waiter in `list`, dropping those that gave up when it grows.
pub(super) fn wait_in(list: &mut Vec<oneshot::Sender<()>>) -> oneshot::Receiver<()> {
    if list.len() >= 64 && list.len().is_power_of_two() {
        list.retain(|s| !s.is_closed());
    }
    let (tx, rx) = oneshot::channel();
    list.push(tx);
    rx
}

pub(super) fn release(waiting: Vec<oneshot::Sender<()>>) {
    for tx in waiting {
        let _ = tx.send(());
    }
}
