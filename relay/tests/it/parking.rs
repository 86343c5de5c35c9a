//! No row blocks another: rows the broker can never take are parked beside
//! the outbox while every other order's rows flow; and a relay cut off from
//! the broker hands its partitions to the others.

use std::collections::{BTreeMap, HashMap};

use std::time::Duration;

use ordermesh_messaging::outbox::{self, OutboxEvent};
use ordermesh_testkit::{BrokerProxy, amqp_authority, eventually};

use crate::helpers::{Harness, seq};

/// A tracestate of 32 members of 256-byte keys and values: 16 KB of
/// headers, more than the frame ordermesh negotiates.
fn huge_tracestate() -> String {
    (0..32)
        .map(|i| format!("k{i:0>255}={:v>256}", ""))
        .collect::<Vec<_>>()
        .join(",")
}

async fn enqueue(
    h: &Harness,
    aggregate: &str,
    routing_key: &str,
    headers: BTreeMap<String, String>,
) {
    let mut client = h.pool.get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    let event = OutboxEvent {
        event_id: uuid::Uuid::now_v7(),
        aggregate_id: aggregate.to_owned(),
        routing_key: routing_key.to_owned(),
        event_type: "test.Event".to_owned(),
        payload: u64::MAX.to_be_bytes().to_vec(),
        headers,
    };
    outbox::enqueue(&tx, &event).await.unwrap();
    tx.commit().await.unwrap();
}

/// `(aggregate_id, reason)` of every parked row, in id order.
async fn parked(h: &Harness) -> Vec<(String, String)> {
    let client = h.pool.get().await.unwrap();
    client
        .query(
            "SELECT aggregate_id, reason FROM outbox_parked ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_the_broker_never_takes_are_parked_and_hold_up_no_other_order() {
    let mut h = Harness::with_binding(false).await;
    h.bind("test.event").await;
    let mut env = h.env(200);
    env.insert("RELAY_MAX_ATTEMPTS", "3".to_owned());
    env.insert("RELAY_RETRY_MS", "100".to_owned());
    let stop = h.spawn_relay_with(env).await;

    // An oversized row and an unroutable one come first...
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    enqueue(
        &h,
        "big",
        "test.event",
        BTreeMap::from([
            ("traceparent".to_owned(), traceparent.to_owned()),
            ("tracestate".to_owned(), huge_tracestate()),
        ]),
    )
    .await;
    enqueue(&h, "lost", "nobody.listens", BTreeMap::new()).await;
    // ... and other orders' rows after them are published within 2 s.
    h.write(0, 20, 5).await;
    let got = h.receive(20, Duration::from_secs(2)).await;
    let mut seqs: Vec<u64> = got.iter().map(seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..20).collect::<Vec<_>>(), "others' rows published");
    let others_gone = eventually(Duration::from_secs(2), || async {
        let client = h.pool.get().await.unwrap();
        let left: i64 = client
            .query_one(
                "SELECT count(*) FROM outbox WHERE aggregate_id LIKE 'agg-%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (left == 0).then_some(())
    })
    .await;
    assert!(others_gone.is_some(), "others' rows deleted within 2 s");

    // Both bad rows end up parked with their reasons, the outbox empty.
    let both = eventually(Duration::from_secs(10), || async {
        let p = parked(&h).await;
        (p.len() == 2).then_some(p)
    })
    .await
    .expect("both rows parked");
    assert_eq!(both[0].0, "big");
    assert!(both[0].1.starts_with("too large"), "{}", both[0].1);
    assert_eq!(both[1].0, "lost");
    assert!(
        both[1].1.starts_with("unroutable") && both[1].1.contains("3 attempts"),
        "{}",
        both[1].1
    );
    assert_eq!(h.outbox_len().await, 0);

    // A later event of a parked aggregate waits behind it, parked too.
    enqueue(&h, "big", "test.event", BTreeMap::new()).await;
    let behind = eventually(Duration::from_secs(5), || async {
        let p = parked(&h).await;
        (p.len() == 3).then_some(p)
    })
    .await
    .expect("the later row is parked behind the first");
    assert!(behind[2].1.starts_with("behind parked"), "{}", behind[2].1);

    // Once its cause is gone, a replay publishes the unroutable row.
    h.bind("nobody.listens").await;
    let lost_id: i64 = {
        let client = h.pool.get().await.unwrap();
        client
            .query_one(
                "SELECT id FROM outbox_parked WHERE aggregate_id = 'lost'",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    };
    let replay = std::process::Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(["outbox", "replay", &lost_id.to_string()])
        .env("RELAY_SOURCES", &h.db.url)
        .output()
        .expect("run relay outbox replay");
    assert!(
        replay.status.success(),
        "relay outbox replay: {}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let replayed = h.receive(1, Duration::from_secs(5)).await;
    assert_eq!(replayed.len(), 1, "the replayed row is published");
    assert_eq!(seq(&replayed[0]), u64::MAX);
    let left = parked(&h).await;
    assert_eq!(left.len(), 2, "the oversized rows stay parked: {left:?}");
    stop.cancel();
}

/// Partitions held per relay instance.
async fn lease_counts(h: &Harness) -> HashMap<String, usize> {
    h.leases()
        .await
        .into_iter()
        .map(|(k, v)| (k, v.len()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_cut_off_from_the_broker_hands_its_partitions_over_and_rejoins() {
    let mut h = Harness::new().await;
    let broker_url = h.broker.config.url.expose().to_owned();
    let proxy = BrokerProxy::start(amqp_authority(&broker_url)).await;
    let fast = [
        ("RELAY_REBALANCE_MS", "200"),
        ("RELAY_PUBLISH_TIMEOUT_MS", "1000"),
        ("RELAY_HANDOVER_AFTER_MS", "1000"),
    ];
    let mut cut_env = h.env(200);
    let mut direct_env = h.env(200);
    for (k, v) in fast {
        cut_env.insert(k, v.to_owned());
        direct_env.insert(k, v.to_owned());
    }
    cut_env.insert("AMQP_URL", proxy.url(&broker_url));
    cut_env.insert("RELAY_INSTANCE", "cut".to_owned());
    direct_env.insert("RELAY_INSTANCE", "direct".to_owned());
    let stop_cut = h.spawn_relay_with(cut_env).await;
    let stop_direct = h.spawn_relay_with(direct_env).await;

    let shared = eventually(Duration::from_secs(10), || async {
        let c = lease_counts(&h).await;
        (c.get("cut") == Some(&32) && c.get("direct") == Some(&32)).then_some(())
    })
    .await;
    assert!(shared.is_some(), "the relays share the partitions");

    // A black hole: connections stay open, nothing gets through, so the
    // cut relay only learns of it from its own timeouts.
    proxy.freeze();
    h.write(0, 200, 64).await;
    let got = h.receive(200, Duration::from_secs(15)).await;
    let mut seqs: Vec<u64> = got.iter().map(seq).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(
        seqs.len(),
        200,
        "every event is published by the other relay"
    );
    let c = lease_counts(&h).await;
    assert_eq!(c.get("direct"), Some(&64), "all partitions moved: {c:?}");
    assert_eq!(c.get("cut"), None, "the cut relay holds none: {c:?}");

    proxy.restore();
    let rejoined = eventually(Duration::from_secs(20), || async {
        let c = lease_counts(&h).await;
        (c.get("cut") == Some(&32) && c.get("direct") == Some(&32)).then_some(())
    })
    .await;
    assert!(
        rejoined.is_some(),
        "the cut relay rejoins once the broker is back"
    );
    h.write(200, 100, 64).await;
    let more = h.receive(100, Duration::from_secs(10)).await;
    assert_eq!(more.len(), 100, "both relays publish again");
    stop_cut.cancel();
    stop_direct.cancel();
}
