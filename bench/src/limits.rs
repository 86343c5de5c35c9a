//! This machine's own limits, measured in the same run on the same servers:
//! PostgreSQL order+outbox insert transactions per second (the write the
//! order service does per order, without gRPC), RabbitMQ persistent
//! publishes with confirms per second (the relay's publish, without the
//! database), and the latency of one of each, which bounds any pipeline
//! that makes several of them in a row.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation};
use ordermesh_messaging::amqp::BrokerConfig;
use ordermesh_messaging::outbox::{self, OutboxEvent, PARTITIONS, WARM_LOCK_CLASS};
use ordermesh_testkit::TestDatabase;
use serde::Serialize;

use crate::stats::{Summary, r3, summarize};

#[derive(Debug, Clone, Default, Serialize)]
pub struct Limits {
    /// Order + outbox row per transaction, 16 connections, the outbox's
    /// NOTIFY skipped as when a relay polls: the ceiling of order creation.
    pub pg_order_tx_per_s: f64,
    /// The same with a NOTIFY in every transaction (what every write paid
    /// before relays polled): PostgreSQL serializes notifying commits.
    pub pg_order_tx_per_s_notify_each: f64,
    /// One such transaction at a time: the commit (WAL flush) latency.
    pub pg_commit_ms: Summary,
    /// Persistent messages to a durable queue, confirms pipelined 500 at a
    /// time on one channel.
    pub amqp_confirmed_publish_per_s: f64,
    /// One persistent publish and its confirm at a time.
    pub amqp_confirm_ms: Summary,
}

const SCHEMA: &str = r#"
CREATE TABLE orders (
    order_id      TEXT PRIMARY KEY,
    seq           BIGINT GENERATED ALWAYS AS IDENTITY,
    customer_id   TEXT NOT NULL,
    currency_code TEXT NOT NULL,
    items         JSONB NOT NULL,
    total_minor   BIGINT NOT NULL,
    status        TEXT NOT NULL,
    version       BIGINT NOT NULL,
    create_time   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX orders_customer ON orders (customer_id, seq DESC);
"#;

/// Measures PostgreSQL: a scratch database with the messaging crate's
/// outbox and an orders table shaped like order-svc's.
pub async fn postgres(seconds: f64) -> anyhow::Result<(f64, f64, Summary)> {
    let db = TestDatabase::create().await;
    let pool = ordermesh_runtime::db::pool(db.url.parse()?, 17)?;
    ordermesh_runtime::db::migrate(&pool, vec![ordermesh_messaging::migrations()])
        .await
        .context("migrate the scratch database")?;
    pool.get().await?.batch_execute(SCHEMA).await?;
    let seq = Arc::new(AtomicU64::new(0));

    // One latency sample stream, sequential, no relay warm: it notifies,
    // as a lone order at low load does.
    let mut lat = Vec::new();
    let until = Instant::now() + Duration::from_secs_f64(seconds.min(3.0));
    while Instant::now() < until {
        let t = Instant::now();
        insert_order(&pool, seq.fetch_add(1, Ordering::Relaxed)).await?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let commit = summarize(&mut lat);

    let notify_each = throughput(&pool, &seq, seconds).await?;
    // Hold every partition's warm lock, as a polling relay does.
    let warm = pool.get().await?;
    warm.execute(
        "SELECT pg_advisory_lock($1, p) FROM generate_series(0, $2 - 1) p",
        &[&WARM_LOCK_CLASS, &i32::from(PARTITIONS)],
    )
    .await?;
    let skipped = throughput(&pool, &seq, seconds).await?;
    drop(warm);
    pool.close();
    Ok((r3(skipped), r3(notify_each), commit))
}

async fn throughput(
    pool: &deadpool_postgres::Pool,
    seq: &Arc<AtomicU64>,
    seconds: f64,
) -> anyhow::Result<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..16 {
        let (pool, seq, stop, done) = (pool.clone(), seq.clone(), stop.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                insert_order(&pool, seq.fetch_add(1, Ordering::Relaxed)).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

async fn insert_order(pool: &deadpool_postgres::Pool, n: u64) -> anyhow::Result<()> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let order_id = format!("limit-{n}");
    tx.execute(
        r#"INSERT INTO orders (order_id, customer_id, currency_code, items, total_minor, status, version)
           VALUES ($1, $2, 'USD', '[{"sku": "widget", "quantity": 1, "unit_price_minor": 100}]', 100, 'PENDING', 1)"#,
        &[&order_id, &format!("c-{}", n % 200)],
    )
    .await?;
    let event = OutboxEvent {
        event_id: uuid::Uuid::now_v7(),
        aggregate_id: order_id,
        routing_key: "order.created".into(),
        event_type: "ordermesh.events.v1.OrderCreated".into(),
        payload: vec![0; 60],
        headers: [(
            "traceparent".to_owned(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
        )]
        .into(),
    };
    outbox::enqueue(&tx, &event).await?;
    tx.commit().await?;
    Ok(())
}

/// Measures RabbitMQ on a scratch durable queue (no consumer), deleted after.
pub async fn rabbitmq(
    broker: &BrokerConfig,
    queue: &str,
    seconds: f64,
) -> anyhow::Result<(f64, Summary)> {
    let conn = lapin::Connection::connect(broker.url.expose(), Default::default()).await?;
    let channel = conn.create_channel().await?;
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let payload = vec![7u8; 120];
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id("bench".into());
    let publish = || async {
        channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &payload,
                props.clone(),
            )
            .await
    };

    let mut lat = Vec::new();
    let until = Instant::now() + Duration::from_secs_f64(seconds.min(3.0));
    while Instant::now() < until {
        let t = Instant::now();
        let confirm = publish().await?.await?;
        anyhow::ensure!(matches!(confirm, Confirmation::Ack(_)), "nacked");
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }

    let start = Instant::now();
    let until = start + Duration::from_secs_f64(seconds);
    let mut confirmed = 0u64;
    while Instant::now() < until {
        let mut pending = Vec::with_capacity(500);
        for _ in 0..500 {
            pending.push(publish().await?);
        }
        for p in pending {
            anyhow::ensure!(matches!(p.await?, Confirmation::Ack(_)), "nacked");
            confirmed += 1;
        }
    }
    let rate = confirmed as f64 / start.elapsed().as_secs_f64();
    channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await?;
    let _ = conn.close(200, "done".into()).await;
    Ok((r3(rate), summarize(&mut lat)))
}
