//! A test database with the platform outbox, a test exchange with a queue
//! bound to everything, and a relay running against them (in-process or as
//! the real binary).

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use ordermesh_platform::amqp::{self, QueueSpec};
use ordermesh_platform::outbox::{self, OutboxEvent};
use ordermesh_platform::testing::{TestBroker, TestDatabase};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub struct Harness {
    pub db: TestDatabase,
    pub broker: TestBroker,
    pub pool: deadpool_postgres::Pool,
    pub queue: String,
    _consumer: lapin::Connection,
    pub received: mpsc::UnboundedReceiver<lapin::message::Delivery>,
}

impl Harness {
    /// A migrated database and a queue bound to every routing key.
    pub async fn new() -> Self {
        Self::with_binding(true).await
    }

    /// As [`Harness::new`], optionally without binding the queue yet.
    pub async fn with_binding(bind: bool) -> Self {
        let db = TestDatabase::create().await;
        let pool = ordermesh_platform::db::pool(db.url.parse().unwrap(), 4).unwrap();
        ordermesh_platform::db::migrate(&pool, refinery::Runner::new(&[]))
            .await
            .unwrap();
        let broker = TestBroker::new();
        let queue = broker.queue("all");
        let conn = lapin::Connection::connect(broker.config.url.expose(), Default::default())
            .await
            .unwrap();
        let channel = conn.create_channel().await.unwrap();
        let routing_keys = if bind { vec!["#".to_owned()] } else { vec![] };
        amqp::declare_queue(
            &channel,
            &broker.config,
            &QueueSpec {
                name: queue.clone(),
                routing_keys,
            },
        )
        .await
        .unwrap();
        let (tx, received) = mpsc::unbounded_channel();
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "test".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .unwrap();
                if tx.send(delivery).is_err() {
                    break;
                }
            }
        });
        Self {
            db,
            broker,
            pool,
            queue,
            _consumer: conn,
            received,
        }
    }

    /// Environment for a relay on this harness.
    pub fn env(&self, tick_ms: u64) -> HashMap<&'static str, String> {
        HashMap::from([
            ("RELAY_SOURCES", self.db.url.clone()),
            ("AMQP_URL", self.broker.config.url.expose().to_owned()),
            ("AMQP_EXCHANGE", self.broker.config.exchange.clone()),
            ("RELAY_FALLBACK_TICK_MS", tick_ms.to_string()),
            ("RELAY_ADMIN_ADDR", "127.0.0.1:0".to_owned()),
            ("RUST_LOG", "warn,relay=info".to_owned()),
        ])
    }

    /// Runs the relay in-process until the returned token is cancelled.
    pub async fn spawn_relay(&self, tick_ms: u64) -> CancellationToken {
        let config = relay::Config::from_env(&self.env(tick_ms)).unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(relay::run(config, admin, shutdown.clone()));
        shutdown
    }

    /// Starts the real `relay` binary.
    pub fn spawn_binary(&self, tick_ms: u64) -> Child {
        Command::new(env!("CARGO_BIN_EXE_relay"))
            .envs(self.env(tick_ms))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the relay binary")
    }

    /// Writes `count` events in one transaction: aggregate `agg-{i % aggregates}`,
    /// payload = the big-endian sequence number `first + i`.
    pub async fn write(&self, first: u64, count: u64, aggregates: u64) -> Vec<OutboxEvent> {
        let mut client = self.pool.get().await.unwrap();
        let tx = client.transaction().await.unwrap();
        let mut events = Vec::new();
        for i in 0..count {
            let seq = first + i;
            let event = OutboxEvent {
                event_id: uuid::Uuid::now_v7(),
                aggregate_id: format!("agg-{}", seq % aggregates),
                routing_key: "test.event".to_owned(),
                event_type: "test.Event".to_owned(),
                payload: seq.to_be_bytes().to_vec(),
                headers: [(
                    "traceparent".to_owned(),
                    format!("00-{:032x}-{:016x}-01", seq + 1, seq + 1),
                )]
                .into(),
            };
            outbox::enqueue(&tx, &event).await.unwrap();
            events.push(event);
        }
        tx.commit().await.unwrap();
        events
    }

    pub async fn outbox_len(&self) -> i64 {
        let client = self.pool.get().await.unwrap();
        client
            .query_one("SELECT count(*) FROM outbox", &[])
            .await
            .unwrap()
            .get(0)
    }

    /// Receives until `n` deliveries arrived or `timeout` passed.
    pub async fn receive(&mut self, n: usize, timeout: Duration) -> Vec<lapin::message::Delivery> {
        let mut out = Vec::with_capacity(n);
        let deadline = tokio::time::Instant::now() + timeout;
        while out.len() < n {
            match tokio::time::timeout_at(deadline, self.received.recv()).await {
                Ok(Some(d)) => out.push(d),
                _ => break,
            }
        }
        out
    }
}

/// The sequence number a test event carries.
pub fn seq(delivery: &lapin::message::Delivery) -> u64 {
    u64::from_be_bytes(delivery.data[..8].try_into().unwrap())
}
