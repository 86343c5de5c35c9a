//! What the relay promises: every row published once confirmed, in outbox
//! order, with its identity and headers; woken by NOTIFY; nothing lost when
//! it is killed mid-batch or when no queue is bound yet.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use ordermesh_testkit::eventually;

use crate::helpers::{Harness, seq};

#[tokio::test]
async fn publishes_every_row_in_order_with_its_identity_then_deletes_it() {
    let mut h = Harness::new().await;
    let events = h.write(0, 1200, 7).await;
    let stop = h.spawn_relay(1000).await;

    let got = h.receive(events.len(), Duration::from_secs(20)).await;
    assert_eq!(got.len(), events.len());
    for (event, delivery) in events.iter().zip(&got) {
        let p = &delivery.properties;
        assert_eq!(
            p.message_id().as_ref().unwrap().as_str(),
            event.event_id.to_string()
        );
        assert_eq!(p.kind().as_ref().unwrap().as_str(), "test.Event");
        assert_eq!(
            p.content_type().as_ref().unwrap().as_str(),
            "application/x-protobuf"
        );
        assert_eq!(*p.delivery_mode(), Some(2), "persistent");
        assert_eq!(delivery.routing_key.as_str(), "test.event");
        assert_eq!(delivery.data, event.payload, "in outbox order");
        let headers = p.headers().as_ref().unwrap();
        assert!(headers.inner().contains_key("traceparent"));
    }
    let emptied = eventually(Duration::from_secs(5), || async {
        (h.outbox_len().await == 0).then_some(())
    })
    .await;
    assert!(emptied.is_some(), "published rows are deleted");
    stop.cancel();
}

#[tokio::test]
async fn notify_wakes_a_cold_relay_long_before_the_fallback_tick() {
    let mut h = Harness::new().await;
    let mut env = h.env(60_000);
    env.insert("RELAY_IDLE_AFTER_MS", "50".to_owned());
    let stop = h.spawn_relay_with(env).await;
    // Let the worker take its leases and the listener connect.
    h.write(0, 1, 1).await;
    assert_eq!(h.receive(1, Duration::from_secs(5)).await.len(), 1);

    for i in 1..=5 {
        // Once the relay stops polling, only a NOTIFY can wake it in time.
        let cold = eventually(Duration::from_secs(5), || async {
            (h.warm_locks().await == 0).then_some(())
        })
        .await;
        assert!(cold.is_some(), "the relay stops polling when idle");
        let start = Instant::now();
        h.write(i, 1, 1).await;
        let got = h.receive(1, Duration::from_secs(1)).await;
        assert_eq!(
            got.len(),
            1,
            "event {i} not relayed within 1 s with a 60 s fallback tick"
        );
        assert!(start.elapsed() < Duration::from_secs(1));
    }
    stop.cancel();
}

#[tokio::test]
async fn writers_skip_the_notify_while_the_relay_polls() {
    let mut h = Harness::new().await;
    let mut env = h.env(60_000);
    env.insert("RELAY_IDLE_AFTER_MS", "60000".to_owned());
    env.insert("RELAY_WARM_ROWS", "1".to_owned());
    let stop = h.spawn_relay_with(env).await;
    h.write(0, 1, 7).await;
    assert_eq!(h.receive(1, Duration::from_secs(5)).await.len(), 1);
    let warm = eventually(Duration::from_secs(5), || async {
        (h.warm_locks().await == 64).then_some(())
    })
    .await;
    assert!(
        warm.is_some(),
        "a relay that just saw rows polls every partition"
    );

    let (_listening, mut notifications) = h.listen().await;
    for i in 1..=50 {
        h.write(i, 1, 7).await;
    }
    let got = h.receive(50, Duration::from_secs(5)).await;
    assert_eq!(
        got.iter().map(seq).collect::<Vec<_>>(),
        (1..=50).collect::<Vec<_>>()
    );
    assert!(
        notifications.try_recv().is_err(),
        "no writer notified while the relay polled"
    );
    stop.cancel();
}

#[tokio::test]
async fn rows_nobody_can_receive_yet_stay_in_the_outbox() {
    let mut h = Harness::with_binding(false).await;
    let stop = h.spawn_relay(200).await;
    h.write(0, 3, 1).await;
    // Unroutable publishes are confirmed but returned: the rows must stay.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.outbox_len().await, 3);

    h.bind("#").await;
    let got = h.receive(3, Duration::from_secs(10)).await;
    assert_eq!(got.iter().map(seq).collect::<Vec<_>>(), [0, 1, 2]);
    stop.cancel();
}

#[tokio::test]
async fn a_relay_killed_mid_batch_and_restarted_loses_nothing_and_keeps_order() {
    const TOTAL: u64 = 20_000;
    const AGGREGATES: u64 = 50;
    let mut h = Harness::new().await;
    for chunk in 0..(TOTAL / 2_000) {
        h.write(chunk * 2_000, 2_000, AGGREGATES).await;
    }

    let mut relay = h.spawn_binary(1000);
    let mut deliveries = h.receive(2_000, Duration::from_secs(30)).await;
    assert!(
        !deliveries.is_empty(),
        "the relay published before the kill"
    );
    kill(Pid::from_raw(relay.id() as i32), Signal::SIGKILL).unwrap();
    relay.wait().unwrap();

    let mut relay = h.spawn_binary(1000);
    let mut seen: HashSet<u64> = deliveries.iter().map(seq).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (seen.len() as u64) < TOTAL && Instant::now() < deadline {
        let more = h.receive(1_000, Duration::from_secs(2)).await;
        seen.extend(more.iter().map(seq));
        deliveries.extend(more);
    }
    kill(Pid::from_raw(relay.id() as i32), Signal::SIGTERM).unwrap();
    let status = relay.wait().unwrap();
    assert!(status.success(), "SIGTERM exits 0, got {status}");

    assert_eq!(seen.len() as u64, TOTAL, "every event published");
    assert_eq!(h.outbox_len().await, 0, "outbox drained");
    // Per aggregate, first deliveries come in write order (duplicates from the
    // replayed batch may repeat earlier events, never skip ahead).
    let mut last: HashMap<u64, u64> = HashMap::new();
    let mut first_seen = HashSet::new();
    for d in &deliveries {
        let s = seq(d);
        if !first_seen.insert(s) {
            continue;
        }
        let agg = s % AGGREGATES;
        if let Some(prev) = last.insert(agg, s) {
            assert!(prev < s, "aggregate {agg}: {s} published before {prev}");
        }
    }
    eprintln!(
        "killed mid-run: {} deliveries for {TOTAL} events ({} duplicates absorbed downstream)",
        deliveries.len(),
        deliveries.len() as u64 - TOTAL
    );
}
