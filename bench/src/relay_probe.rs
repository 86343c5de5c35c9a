//! The relay alone, on the bench's own source database (the relay under
//! test serves it beside the two service databases):
//!
//! - commit-to-publish: one outbox row per transaction at a steady rate;
//!   from the moment COMMIT returns to the writer until the message arrives
//!   at the bench's queue;
//! - drain rate: a backlog of rows committed at once, until the last one
//!   arrived.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail};
use ordermesh_messaging::outbox::{self, OutboxEvent};

use crate::observe::{Probe, Registry, now_ns};
use crate::stats::{Summary, r3, summarize};

pub const PROBE_KEY: &str = "bench.probe";
pub const DRAIN_KEY: &str = "bench.drain";

/// Writes `rate` single-row transactions per second for `seconds`.
pub async fn commit_to_publish(
    url: &str,
    registry: &Registry,
    rate: f64,
    seconds: f64,
) -> anyhow::Result<Summary> {
    let pool = ordermesh_runtime::db::pool(url.parse()?, 4)?;
    let n = (rate * seconds) as usize;
    let probe = Arc::new(Probe::new(n));
    registry.add_probe(PROBE_KEY, probe.clone());
    let committed: Arc<Vec<std::sync::atomic::AtomicU64>> =
        Arc::new((0..n).map(|_| Default::default()).collect());
    let origin = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..n {
        tokio::time::sleep_until(origin + Duration::from_secs_f64(i as f64 / rate)).await;
        let (pool, committed) = (pool.clone(), committed.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            outbox::enqueue(&tx, &probe_event(PROBE_KEY, i as u64)).await?;
            tx.commit().await?;
            committed[i].store(now_ns(), Ordering::SeqCst);
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    wait_for(&probe, n, Duration::from_secs(30)).await?;
    let mut lat: Vec<f64> = (0..n)
        .map(|i| {
            let c = committed[i].load(Ordering::SeqCst) as f64;
            let a = probe.arrived[i].load(Ordering::SeqCst) as f64;
            (a - c) / 1e6
        })
        .collect();
    pool.close();
    Ok(summarize(&mut lat))
}

/// Commits `rows` rows at once and returns the rows per second the relay
/// published them at (commit → last arrival).
pub async fn drain_rate(url: &str, registry: &Registry, rows: usize) -> anyhow::Result<f64> {
    let probe = Arc::new(Probe::new(rows));
    registry.add_probe(DRAIN_KEY, probe.clone());
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(connection);
    client
        .execute(
            r#"INSERT INTO outbox (event_id, aggregate_id, routing_key, event_type, payload, headers)
               SELECT gen_random_uuid(), 'drain-' || (g % 1000), $1, 'bench.Drain',
                      int8send(g), '{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}'
               FROM generate_series(0::int8, $2::int8 - 1) g"#,
            &[&DRAIN_KEY, &(rows as i64)],
        )
        .await
        .context("write the backlog")?;
    let committed = now_ns();
    wait_for(&probe, rows, Duration::from_secs(120)).await?;
    let last = probe
        .arrived
        .iter()
        .map(|a| a.load(Ordering::SeqCst))
        .max()
        .unwrap_or(committed);
    drop(client);
    driver.abort();
    Ok(r3(rows as f64 / ((last - committed) as f64 / 1e9)))
}

async fn wait_for(probe: &Probe, n: usize, timeout: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    while probe.count.load(Ordering::SeqCst) < n {
        if tokio::time::Instant::now() > deadline {
            bail!(
                "only {} of {n} probe rows arrived within {timeout:?}",
                probe.count.load(Ordering::SeqCst)
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

fn probe_event(key: &str, i: u64) -> OutboxEvent {
    OutboxEvent {
        event_id: uuid::Uuid::now_v7(),
        aggregate_id: format!("probe-{}", i % 1000),
        routing_key: key.to_owned(),
        event_type: "bench.Probe".into(),
        payload: i.to_be_bytes().to_vec(),
        headers: Default::default(),
    }
}
