//! A test database with the messaging outbox, a test exchange with a queue
//! bound to everything, and relays running against them (in-process or as
//! the real binary); a writer that keeps writing.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use ordermesh_messaging::amqp::{self, QueueSpec};
use ordermesh_messaging::outbox::{self, OutboxEvent};
use ordermesh_runtime::db::{DbConfig, Dedicated};
use ordermesh_runtime::listen;
use ordermesh_testkit::{TestBroker, TestDatabase};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub struct Harness {
    pub db: TestDatabase,
    pub broker: TestBroker,
    pub pool: deadpool_postgres::Pool,
    pub queue: String,
    _consumer: lapin::Connection,
    /// Deliveries with the time they arrived.
    pub received: mpsc::UnboundedReceiver<(Instant, lapin::message::Delivery)>,
}

impl Harness {
    /// A migrated database and a queue bound to every routing key.
    pub async fn new() -> Self {
        Self::with_binding(true).await
    }

    /// As [`Harness::new`], optionally without binding the queue yet.
    pub async fn with_binding(bind: bool) -> Self {
        let db = TestDatabase::create().await;
        let pool = ordermesh_runtime::db::pool(db.url.parse().unwrap(), 4).unwrap();
        ordermesh_runtime::db::migrate(&pool, vec![ordermesh_messaging::migrations()])
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
                if tx.send((Instant::now(), delivery)).is_err() {
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
        self.spawn_relay_with(self.env(tick_ms)).await
    }

    /// Runs the relay in-process with `env` until the token is cancelled.
    pub async fn spawn_relay_with(&self, env: HashMap<&'static str, String>) -> CancellationToken {
        let config = relay::Config::from_env(&env).unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(relay::run(config, admin, shutdown.clone()));
        shutdown
    }

    /// Starts the real `relay` binary.
    pub fn spawn_binary(&self, tick_ms: u64) -> Child {
        self.spawn_binary_with(self.env(tick_ms))
    }

    /// Starts the real `relay` binary with `env`.
    pub fn spawn_binary_with(&self, env: HashMap<&'static str, String>) -> Child {
        Command::new(env!("CARGO_BIN_EXE_relay"))
            .envs(env)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the relay binary")
    }

    /// Writes `count` events in one transaction: aggregate `agg-{i % aggregates}`,
    /// payload = the big-endian sequence number `first + i`.
    pub async fn write(&self, first: u64, count: u64, aggregates: u64) -> Vec<OutboxEvent> {
        write(&self.pool, first, count, aggregates).await
    }

    /// Binds the harness queue to `routing_key` as well.
    pub async fn bind(&self, routing_key: &str) {
        let conn = lapin::Connection::connect(self.broker.config.url.expose(), Default::default())
            .await
            .unwrap();
        let channel = conn.create_channel().await.unwrap();
        channel
            .queue_bind(
                self.queue.as_str().into(),
                self.broker.config.exchange.as_str().into(),
                routing_key.into(),
                Default::default(),
                Default::default(),
            )
            .await
            .unwrap();
    }

    pub async fn outbox_len(&self) -> i64 {
        let client = self.pool.get().await.unwrap();
        client
            .query_one("SELECT count(*) FROM outbox", &[])
            .await
            .unwrap()
            .get(0)
    }

    /// The outbox partition of each aggregate `agg-0 .. agg-{aggregates-1}`,
    /// as PostgreSQL computes it.
    pub async fn partitions(&self, aggregates: u64) -> Vec<i16> {
        let client = self.pool.get().await.unwrap();
        let names: Vec<String> = (0..aggregates).map(|a| format!("agg-{a}")).collect();
        client
            .query(
                "SELECT (hashtext(a) & 63)::int2 FROM unnest($1::text[]) WITH ORDINALITY AS t(a, n) ORDER BY n",
                &[&names],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// Partition leases per relay instance (`RELAY_INSTANCE`), from pg_locks.
    pub async fn leases(&self) -> HashMap<String, Vec<i16>> {
        let client = self.pool.get().await.unwrap();
        let rows = client
            .query(
                "SELECT substr(a.application_name, length($2) + 1),
                        l.objid::int8::int2
                 FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                   AND l.classid = $1 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                 ORDER BY 2",
                &[
                    &(relay::store::LEASE_LOCK_CLASS as u32),
                    &relay::store::LEASE_APPLICATION_PREFIX,
                ],
            )
            .await
            .unwrap();
        let mut out: HashMap<String, Vec<i16>> = HashMap::new();
        for r in rows {
            out.entry(r.get(0)).or_default().push(r.get(1));
        }
        out
    }

    /// Warm locks held on the test database (a polling relay holds one per
    /// partition).
    pub async fn warm_locks(&self) -> i64 {
        let client = self.pool.get().await.unwrap();
        client
            .query_one(
                "SELECT count(*) FROM pg_locks
                 WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND classid = $1
                   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                &[&(outbox::WARM_LOCK_CLASS as u32)],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// LISTENs on the outbox channel: every notification's payload goes to
    /// the receiver while the returned client lives.
    pub async fn listen(&self) -> (Dedicated, mpsc::UnboundedReceiver<String>) {
        let config: DbConfig = self.db.url.parse().unwrap();
        listen::notifications(&config, outbox::NOTIFY_CHANNEL)
            .await
            .expect("LISTEN on the outbox channel")
    }

    /// Terminates every relay connection to the test database; returns how
    /// many there were.
    pub async fn terminate_relay_connections(&self) -> usize {
        let client = self.pool.get().await.unwrap();
        client
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = current_database() AND application_name LIKE 'ordermesh-relay%'",
                &[],
            )
            .await
            .unwrap()
            .len()
    }

    /// Receives until `n` deliveries arrived or `timeout` passed.
    pub async fn receive(&mut self, n: usize, timeout: Duration) -> Vec<lapin::message::Delivery> {
        self.receive_timed(n, timeout)
            .await
            .into_iter()
            .map(|(_, d)| d)
            .collect()
    }

    /// As [`Harness::receive`], with arrival times.
    pub async fn receive_timed(
        &mut self,
        n: usize,
        timeout: Duration,
    ) -> Vec<(Instant, lapin::message::Delivery)> {
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

/// Writes `count` events in one transaction: aggregate `agg-{seq % aggregates}`,
/// payload = the big-endian sequence number `seq` (from `first`).
pub async fn write(
    pool: &deadpool_postgres::Pool,
    first: u64,
    count: u64,
    aggregates: u64,
) -> Vec<OutboxEvent> {
    let mut client = pool.get().await.unwrap();
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

/// Writes events in the background: `per_tick` rows in one transaction
/// every `tick`, sequence numbers counting up from 0, until stopped.
pub struct Writer {
    next: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    pub fn start(
        pool: deadpool_postgres::Pool,
        aggregates: u64,
        per_tick: u64,
        tick: Duration,
    ) -> Self {
        let next = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (next, stop) = (next.clone(), stop.clone());
            tokio::spawn(async move {
                let mut interval = tokio::time::interval(tick);
                while !stop.load(Ordering::SeqCst) {
                    interval.tick().await;
                    let first = next.fetch_add(per_tick, Ordering::SeqCst);
                    write(&pool, first, per_tick, aggregates).await;
                }
            })
        };
        Self { next, stop, task }
    }

    /// Every event numbered at least this was written after this call.
    pub fn next_seq(&self) -> u64 {
        self.next.load(Ordering::SeqCst)
    }

    /// Stops and returns how many events were written.
    pub async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        self.next.load(Ordering::SeqCst)
    }
}

/// The sequence number a test event carries.
pub fn seq(delivery: &lapin::message::Delivery) -> u64 {
    u64::from_be_bytes(delivery.data[..8].try_into().unwrap())
}
