//! WatchOrder: one LISTEN connection per process fans order changes out to
//! every open stream, so a watcher costs a map entry, not a connection.
//!
//! - The trigger of `migrations/V3__order_watch_notify.sql` NOTIFYs
//!   [`CHANNEL`] with the order id when an order's version changes, but only
//!   while someone holds the shared advisory lock ([`LOCK_CLASS`], bucket)
//!   of the order's bucket, `hashtext(order_id) & 1023`: a NOTIFY serialises
//!   commits cluster-wide, so unwatched orders must not pay for it.
//! - [`WatchHub`] owns two connections ([`APPLICATION_NAME`],
//!   [`LOCK_APPLICATION_NAME`]): on one it
//!   LISTENs, on the other it holds the lock of every bucket with a watched
//!   order (released with the bucket's last watcher; a lock that waits for
//!   writers never holds back a notification), and on each notification
//!   wakes the order's
//!   watchers through a `tokio::sync::watch` channel. When the connection is
//!   lost it reconnects with backoff, LISTENs, re-takes the locks and then
//!   wakes every watcher, since changes may have gone unnotified meanwhile.
//! - A stream ([`WatchHub::open`]) registers first, waits until its bucket is
//!   locked, then reads the order; after each wake-up it re-reads it and
//!   sends it when its version is newer than the last one sent.

use std::collections::HashMap;
use std::collections::hash_map::Entry as MapEntry;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use ordermesh_platform::db::{DbConfig, PgConnection};
use ordermesh_proto::order::v1 as pb;
use tokio::sync::{Notify, oneshot, watch};
use tokio::time::Instant;
use tokio_postgres::{AsyncMessage, Client, Statement};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::domain::Order;
use crate::store::Store;

/// The channel the trigger notifies, with the order id as payload.
pub const CHANNEL: &str = "ordermesh_order_changes";
/// First key of the bucket locks (the second is the bucket); the same
/// constant is in the V3 migration.
pub const LOCK_CLASS: i32 = 1_869_414_410;
/// Orders are spread over this many buckets (`hashtext(order_id) & 1023`).
pub const BUCKETS: usize = 1024;
/// How the hub's LISTEN connection shows in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "ordermesh-order-watch";
/// How the hub's bucket-lock connection shows in `pg_stat_activity`.
pub const LOCK_APPLICATION_NAME: &str = "ordermesh-order-watch-locks";
/// How long a new watcher waits for its bucket lock (e.g. while the hub
/// reconnects) before the call fails with UNAVAILABLE.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an idle hub checks that its connection still answers, so a
/// silently dead peer is noticed without waiting for TCP keepalives.
const HEARTBEAT: Duration = Duration::from_secs(30);
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);

/// The stream `WatchOrder` answers with.
pub type WatchStream =
    Pin<Box<dyn futures::Stream<Item = Result<pb::WatchOrderResponse, Status>> + Send>>;

/// The process's watch fan-out. Cheap to clone; [`WatchHub::run`] drives it.
#[derive(Clone)]
pub struct WatchHub {
    shared: Arc<Shared>,
}

struct Shared {
    /// The service's database, under [`APPLICATION_NAME`].
    database: DbConfig,
    /// The service's shutdown: the hub stops and open streams end.
    shutdown: CancellationToken,
    state: Mutex<State>,
    /// Wakes the hub when a bucket may need its lock taken or released.
    work: Notify,
    /// Whether the hub is listening with its locks taken (a readiness flag).
    connected: Arc<AtomicBool>,
}

struct State {
    orders: HashMap<String, Watched>,
    /// Indexed by bucket, [`BUCKETS`] long.
    buckets: Vec<Bucket>,
    /// Watched orders whose bucket the hub has yet to look up.
    unplaced: Vec<String>,
}

/// One watched order.
struct Watched {
    /// Ticks on every notification about the order (and after reconnects).
    changed: watch::Sender<()>,
    watchers: usize,
    /// Known once the hub asked the database for `hashtext`.
    bucket: Option<usize>,
    /// Watchers waiting for the lock while the bucket is unknown.
    waiting: Vec<oneshot::Sender<()>>,
}

#[derive(Default)]
struct Bucket {
    /// Watched orders in the bucket; the lock is wanted while above 0.
    orders: usize,
    lock: Lock,
    /// Watchers to tell once the lock is held.
    waiting: Vec<oneshot::Sender<()>>,
}

/// The bucket's shared advisory lock on the hub's current connection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Lock {
    #[default]
    Unheld,
    Acquiring,
    Held,
    Releasing,
}

/// Lock changes one hub round makes.
#[derive(Debug, Default)]
struct Plan {
    lock: Vec<i32>,
    unlock: Vec<i32>,
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

    /// Keeps the LISTEN connection up until shutdown, reconnecting with
    /// backoff.
    pub async fn run(self) -> anyhow::Result<()> {
        let mut retry = FIRST_RETRY;
        while !self.shared.shutdown.is_cancelled() {
            let result = self.session(&mut retry).await;
            self.shared.disconnected();
            match result {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), retry_in = ?retry, "order watch connection lost; reconnecting");
                    tokio::select! {
                        () = tokio::time::sleep(retry) => {}
                        () = self.shared.shutdown.cancelled() => break,
                    }
                    retry = (retry * 2).min(MAX_RETRY);
                }
            }
        }
        Ok(())
    }

    /// One connection's life. `Ok` means shutdown.
    async fn session(&self, retry: &mut Duration) -> anyhow::Result<()> {
        let shutdown = &self.shared.shutdown;
        let (listener, connection) = self.shared.database.connect().await.context("connect")?;
        // The connection must be polled for queries to run; this also
        // yields the notifications.
        let mut driver = tokio::spawn(drive(connection, self.shared.clone()));
        let _stop_driver = AbortOnDrop(driver.abort_handle());
        listener
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .context("LISTEN")?;
        // The bucket locks live on a second connection: PostgreSQL delivers
        // a notification only to a backend between statements, and taking
        // a lock waits for the bucket's writers, which would hold back every
        // notification meanwhile.
        let mut locks = self.shared.database.clone();
        locks.application_name(LOCK_APPLICATION_NAME);
        let (client, connection) = locks.connect().await.context("connect the lock session")?;
        let mut locker = tokio::spawn(connection);
        let _stop_locker = AbortOnDrop(locker.abort_handle());
        let statements = Statements::prepare(&client).await?;
        *retry = FIRST_RETRY;

        let mut listening = false;
        let mut heartbeat = tokio::time::interval_at(Instant::now() + HEARTBEAT, HEARTBEAT);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                ended = &mut driver => return Err(connection_ended(ended)),
                ended = &mut locker => return Err(connection_ended(ended)),
                done = self.reconcile(&client, &statements) => done?,
            }
            if !listening {
                listening = true;
                self.shared.connected.store(true, Ordering::SeqCst);
                // Locks are held again: watchers re-read whatever they may
                // have missed while there was no connection.
                let woken = self.shared.wake_all();
                tracing::info!(channel = CHANNEL, woken, "order watch listening");
            }
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                ended = &mut driver => return Err(connection_ended(ended)),
                ended = &mut locker => return Err(connection_ended(ended)),
                () = self.shared.work.notified() => {}
                _ = heartbeat.tick() => {
                    let both = async {
                        listener.simple_query("SELECT 1").await?;
                        client.simple_query("SELECT 1").await
                    };
                    tokio::time::timeout(HEARTBEAT_TIMEOUT, both)
                        .await
                        .context("heartbeat: no answer")?
                        .context("heartbeat")?;
                }
            }
        }
    }

    /// Brings the held locks in line with the watched buckets, looking up
    /// the buckets of newly watched orders first; repeats until nothing
    /// changed meanwhile.
    async fn reconcile(&self, client: &Client, statements: &Statements) -> anyhow::Result<()> {
        loop {
            let unplaced = self.shared.take_unplaced();
            if !unplaced.is_empty() {
                let rows = client
                    .query(&statements.buckets, &[&unplaced])
                    .await
                    .context("look up buckets")?;
                let placed = rows
                    .iter()
                    .map(|row| {
                        let bucket: i32 = row.try_get(1)?;
                        Ok((row.try_get::<_, String>(0)?, bucket as usize % BUCKETS))
                    })
                    .collect::<Result<Vec<_>, tokio_postgres::Error>>()
                    .context("read buckets")?;
                self.shared.place(placed);
            }
            let plan = self.shared.plan();
            if plan.lock.is_empty() && plan.unlock.is_empty() {
                if unplaced.is_empty() {
                    return Ok(());
                }
                continue;
            }
            if !plan.lock.is_empty() {
                // Waits for writers of these buckets that skipped the NOTIFY
                // to commit: watchers read after this returns.
                client
                    .execute(&statements.lock, &[&LOCK_CLASS, &plan.lock])
                    .await
                    .context("take bucket locks")?;
            }
            if !plan.unlock.is_empty() {
                client
                    .execute(&statements.unlock, &[&LOCK_CLASS, &plan.unlock])
                    .await
                    .context("release bucket locks")?;
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

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("the watch state is never poisoned")
    }

    fn unsubscribe(&self, order_id: &str) {
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
    fn notified(&self, order_id: &str) {
        if let Some(watched) = self.lock().orders.get(order_id) {
            watched.changed.send_modify(|()| {});
        }
    }

    /// Wakes every watcher; returns how many orders are watched.
    fn wake_all(&self) -> usize {
        let state = self.lock();
        for watched in state.orders.values() {
            watched.changed.send_modify(|()| {});
        }
        state.orders.len()
    }

    fn take_unplaced(&self) -> Vec<String> {
        let mut state = self.lock();
        let mut ids = std::mem::take(&mut state.unplaced);
        ids.retain(|id| state.orders.get(id).is_some_and(|w| w.bucket.is_none()));
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    fn place(&self, placed: Vec<(String, usize)>) {
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
    fn plan(&self) -> Plan {
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
    fn settle(&self, plan: &Plan) {
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
    fn disconnected(&self) {
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
fn wait_in(list: &mut Vec<oneshot::Sender<()>>) -> oneshot::Receiver<()> {
    if list.len() >= 64 && list.len().is_power_of_two() {
        list.retain(|s| !s.is_closed());
    }
    let (tx, rx) = oneshot::channel();
    list.push(tx);
    rx
}

fn release(waiting: Vec<oneshot::Sender<()>>) {
    for tx in waiting {
        let _ = tx.send(());
    }
}

/// The hub's statements, prepared once per connection.
struct Statements {
    buckets: Statement,
    lock: Statement,
    unlock: Statement,
}

impl Statements {
    async fn prepare(client: &Client) -> anyhow::Result<Self> {
        Ok(Self {
            buckets: client
                .prepare(r#"SELECT id, hashtext(id) & 1023 FROM unnest($1::text[]) AS id"#)
                .await
                .context("prepare the bucket lookup")?,
            lock: client
                .prepare(
                    r#"SELECT pg_advisory_lock_shared($1::int4, b)
                       FROM unnest($2::int4[]) AS b"#,
                )
                .await
                .context("prepare the lock statement")?,
            unlock: client
                .prepare(
                    r#"SELECT pg_advisory_unlock_shared($1::int4, b)
                       FROM unnest($2::int4[]) AS b"#,
                )
                .await
                .context("prepare the unlock statement")?,
        })
    }
}

/// Polls the connection, handing each notification to the hub.
async fn drive(
    mut connection: PgConnection,
    shared: Arc<Shared>,
) -> Result<(), tokio_postgres::Error> {
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    while let Some(message) = messages.next().await {
        if let AsyncMessage::Notification(n) = message? {
            shared.notified(n.payload());
        }
    }
    Ok(())
}

fn connection_ended(
    ended: Result<Result<(), tokio_postgres::Error>, tokio::task::JoinError>,
) -> anyhow::Error {
    match ended {
        Ok(Ok(())) => anyhow::anyhow!("the connection closed"),
        Ok(Err(e)) => anyhow::Error::new(e).context("the connection failed"),
        Err(e) => anyhow::Error::new(e).context("the connection task ended"),
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One open stream.
struct Watcher {
    sub: Subscription,
    store: Store,
    order_id: String,
    deadline: Option<Instant>,
    shutdown: CancellationToken,
    /// Version of the last order sent.
    last_version: i64,
}

impl Watcher {
    /// The order once changes to it are sure to be notified.
    async fn first(&mut self) -> Result<Order, Status> {
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
    async fn next_version(&mut self) -> Result<Order, Status> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> WatchHub {
        let config: DbConfig = "postgres://u@h/db".parse().unwrap();
        WatchHub::new(&config, CancellationToken::new())
    }

    fn bucket_of(hub: &WatchHub, b: usize) -> (usize, Lock, usize) {
        let state = hub.shared.lock();
        let bucket = &state.buckets[b];
        (bucket.orders, bucket.lock, bucket.waiting.len())
    }

    #[test]
    fn the_hub_connects_under_its_own_name() {
        assert_eq!(
            hub().shared.database.get_application_name(),
            Some(APPLICATION_NAME)
        );
    }

    #[tokio::test]
    async fn a_watcher_is_ready_once_its_bucket_is_locked() {
        let hub = hub();
        let mut a = hub.subscribe("ord-1");
        assert_eq!(hub.shared.take_unplaced(), ["ord-1"]);
        hub.shared.place(vec![("ord-1".into(), 7)]);
        assert_eq!(bucket_of(&hub, 7), (1, Lock::Unheld, 1));

        let plan = hub.shared.plan();
        assert_eq!((plan.lock.as_slice(), plan.unlock.len()), (&[7][..], 0));
        // Joining while the lock is being taken waits too.
        let mut b = hub.subscribe("ord-1");
        assert_eq!(bucket_of(&hub, 7), (1, Lock::Acquiring, 2));
        hub.shared.settle(&plan);
        a.ready().await;
        b.ready().await;

        // A later watcher of a held bucket is ready at once.
        let c = hub.subscribe("ord-1");
        assert!(c.ready.is_none());
        assert!(hub.shared.take_unplaced().is_empty());
    }

    #[tokio::test]
    async fn the_last_watcher_of_a_bucket_releases_its_lock() {
        let hub = hub();
        let a = hub.subscribe("ord-1");
        let b = hub.subscribe("ord-2");
        hub.shared.take_unplaced();
        hub.shared
            .place(vec![("ord-1".into(), 3), ("ord-2".into(), 3)]);
        let plan = hub.shared.plan();
        hub.shared.settle(&plan);
        assert_eq!(bucket_of(&hub, 3), (2, Lock::Held, 0));

        drop(a);
        assert!(hub.shared.plan().unlock.is_empty());
        drop(b);
        let plan = hub.shared.plan();
        assert_eq!(plan.unlock, [3]);
        hub.shared.settle(&plan);
        assert_eq!(bucket_of(&hub, 3), (0, Lock::Unheld, 0));
        assert!(hub.shared.lock().orders.is_empty());
    }

    #[tokio::test]
    async fn notifications_and_reconnects_wake_watchers() {
        let hub = hub();
        let mut a = hub.subscribe("ord-1");
        hub.shared.take_unplaced();
        hub.shared.place(vec![("ord-1".into(), 1)]);
        hub.shared.settle(&hub.shared.plan());
        a.ready().await;
        a.mark_seen();

        hub.shared.notified("ord-2");
        assert!(!a.changes.has_changed().unwrap());
        hub.shared.notified("ord-1");
        a.changed().await;

        // A lost connection loses the locks; the next one takes them again
        // and wakes everyone.
        hub.shared.disconnected();
        assert_eq!(bucket_of(&hub, 1), (1, Lock::Unheld, 0));
        let mut late = hub.subscribe("ord-1");
        assert!(late.ready.is_some());
        let plan = hub.shared.plan();
        assert_eq!(plan.lock, [1]);
        hub.shared.settle(&plan);
        late.ready().await;
        assert_eq!(hub.shared.wake_all(), 1);
        a.changed().await;
    }

    #[tokio::test]
    async fn a_lookup_lost_with_the_connection_is_retried() {
        let hub = hub();
        let _a = hub.subscribe("ord-1");
        assert_eq!(hub.shared.take_unplaced(), ["ord-1"]);
        hub.shared.disconnected();
        assert_eq!(hub.shared.take_unplaced(), ["ord-1"]);
    }
}
