//! Several relays on one source, and a relay cut off from both servers:
//! under load nothing is lost, no aggregate's events are reordered, a killed
//! relay's partitions are taken over quickly, and a relay whose broker and
//! database connections die reconnects and drains everything.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use ordermesh_testkit::{BrokerProxy, amqp_authority, eventually};

use crate::helpers::{Harness, Writer, seq};

const AGGREGATES: u64 = 400;

/// Checks that the first delivery of every event comes in write order per
/// aggregate (redeliveries of a batch cut short may repeat earlier events,
/// never skip ahead) and returns the distinct events seen.
fn assert_per_aggregate_order(deliveries: &[(Instant, lapin::message::Delivery)]) -> usize {
    let mut last: HashMap<u64, u64> = HashMap::new();
    let mut first_seen = HashSet::new();
    for (_, d) in deliveries {
        let s = seq(d);
        if !first_seen.insert(s) {
            continue;
        }
        let agg = s % AGGREGATES;
        if let Some(prev) = last.insert(agg, s) {
            assert!(prev < s, "aggregate {agg}: {s} published after {prev}");
        }
    }
    first_seen.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_relays_share_the_partitions_and_take_over_a_killed_one() {
    let mut h = Harness::new().await;
    let partition_of = h.partitions(AGGREGATES).await;
    let relay_env = |name: &str| {
        let mut env = h.env(1000);
        env.insert("RELAY_INSTANCE", name.to_owned());
        env.insert("RELAY_REBALANCE_MS", "200".to_owned());
        env
    };
    let names = ["relay-a", "relay-b", "relay-c"];
    let mut relays: Vec<_> = names
        .iter()
        .map(|n| h.spawn_binary_with(relay_env(n)))
        .collect();

    // Every relay gets its share: 22, 21 or 22 of the 64 partitions.
    let spread = eventually(Duration::from_secs(20), || async {
        let leases = h.leases().await;
        let sizes: Vec<usize> = names
            .iter()
            .map(|n| leases.get(*n).map_or(0, Vec::len))
            .collect();
        (sizes.iter().sum::<usize>() == 64 && sizes.iter().all(|s| (20..=22).contains(s)))
            .then_some(leases)
    })
    .await;
    let Some(leases) = spread else {
        panic!("leases never spread: {:?}", h.leases().await);
    };

    // Load: 20 events every 10 ms (about 2,000/s) over 400 aggregates.
    let writer = Writer::start(h.pool.clone(), AGGREGATES, 20, Duration::from_millis(10));
    let mut deliveries = h.receive_timed(1_000, Duration::from_secs(20)).await;
    assert_eq!(deliveries.len(), 1_000, "relaying under load");

    let victim = &leases[names[0]];
    let killed_at = Instant::now();
    kill(Pid::from_raw(relays[0].id() as i32), Signal::SIGKILL).unwrap();
    relays[0].wait().unwrap();
    // Events from here on were written after the victim died: whoever
    // publishes them took its partitions over.
    let written_after_kill = writer.next_seq();

    // Keep the load on while the others take over, then drain.
    let more = h.receive_timed(4_000, Duration::from_secs(30)).await;
    deliveries.extend(more);
    let total = writer.stop().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen: HashSet<u64> = deliveries.iter().map(|(_, d)| seq(d)).collect();
    while (seen.len() as u64) < total && Instant::now() < deadline {
        let more = h.receive_timed(2_000, Duration::from_secs(2)).await;
        seen.extend(more.iter().map(|(_, d)| seq(d)));
        deliveries.extend(more);
    }

    assert_eq!(seen.len() as u64, total, "every event published");
    assert_eq!(assert_per_aggregate_order(&deliveries), total as usize);
    let taken_over = deliveries
        .iter()
        .filter(|(_, d)| {
            let s = seq(d);
            s >= written_after_kill && victim.contains(&partition_of[(s % AGGREGATES) as usize])
        })
        .map(|(at, _)| at.duration_since(killed_at))
        .min()
        .expect("events of the killed relay's partitions were published");
    eprintln!(
        "killed {} holding {} partitions; first publish of one of them by another relay after {taken_over:?}; {} deliveries for {total} events",
        names[0],
        victim.len(),
        deliveries.len()
    );
    assert!(
        taken_over <= Duration::from_secs(5),
        "takeover took {taken_over:?}"
    );
    let leases = h.leases().await;
    assert!(!leases.contains_key(names[0]));
    assert_eq!(leases.values().map(Vec::len).sum::<usize>(), 64);
    assert_eq!(h.outbox_len().await, 0, "outbox drained");

    for relay in &mut relays[1..] {
        kill(Pid::from_raw(relay.id() as i32), Signal::SIGTERM).unwrap();
        assert!(relay.wait().unwrap().success(), "SIGTERM exits 0");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_cut_off_from_broker_and_database_reconnects_and_drains_everything() {
    let mut h = Harness::new().await;
    let broker_url = h.broker.config.url.expose().to_owned();
    let proxy = BrokerProxy::start(amqp_authority(&broker_url)).await;
    let mut env = h.env(500);
    env.insert("AMQP_URL", proxy.url(&broker_url));
    env.insert("RELAY_REBALANCE_MS", "200".to_owned());
    let stop = h.spawn_relay_with(env).await;

    let writer = Writer::start(h.pool.clone(), AGGREGATES, 10, Duration::from_millis(10));
    let mut deliveries = h.receive_timed(500, Duration::from_secs(20)).await;
    assert_eq!(deliveries.len(), 500, "relaying under load");

    // Both connections die mid-load.
    proxy.cut();
    let terminated = h.terminate_relay_connections().await;
    assert!(
        terminated >= 3,
        "lease, LISTEN and claim connections, got {terminated}"
    );
    let cut_at = writer.next_seq();
    // While the broker is unreachable rows pile up in the outbox.
    let piled = eventually(Duration::from_secs(20), || async {
        (h.outbox_len().await >= 500).then_some(())
    })
    .await;
    assert!(piled.is_some(), "rows are written while the relay is down");
    let written_while_down = writer.next_seq() - cut_at;
    proxy.restore();

    // The relay is back: events written after the restore arrive too.
    let back = writer.next_seq();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !deliveries.iter().any(|(_, d)| seq(d) >= back + 200) {
        assert!(Instant::now() < deadline, "the relay never came back");
        let more = h.receive_timed(1_000, Duration::from_secs(1)).await;
        deliveries.extend(more);
    }
    let total = writer.stop().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen: HashSet<u64> = deliveries.iter().map(|(_, d)| seq(d)).collect();
    while (seen.len() as u64) < total && Instant::now() < deadline {
        let more = h.receive_timed(2_000, Duration::from_secs(2)).await;
        seen.extend(more.iter().map(|(_, d)| seq(d)));
        deliveries.extend(more);
    }
    assert_eq!(
        seen.len() as u64,
        total,
        "every event published, including {written_while_down} written while it was down"
    );
    assert_eq!(assert_per_aggregate_order(&deliveries), total as usize);
    let emptied = eventually(Duration::from_secs(10), || async {
        (h.outbox_len().await == 0).then_some(())
    })
    .await;
    assert!(emptied.is_some(), "outbox drained");
    stop.cancel();
}
