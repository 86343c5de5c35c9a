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
