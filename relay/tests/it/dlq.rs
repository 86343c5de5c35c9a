//! `relay dlq`, run as the real binary against messages a messaging consumer
//! parked: `list` shows them and leaves them in place and in order, `show`
//! prints one, `replay` sends them back to their work queue, where an
//! inbox-backed handler applies each exactly once.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation, Connection};
use ordermesh_messaging::amqp::{self, ConsumerConfig, HandleError, Handler, Message, QueueSpec};
use ordermesh_messaging::inbox;
use ordermesh_messaging::redelivery::RetryPolicy;
use ordermesh_testkit::{PATIENCE, eventually, spawn_consumer};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::helpers::Harness;

const ROUTING_KEY: &str = "dlq.event";

/// Applies a message by recording it in `applied`, deduplicated by the
/// inbox in the same transaction; fails transiently while `failing`.
struct Applier {
    pool: deadpool_postgres::Pool,
    failing: AtomicBool,
    /// Every message id the handler was called with.
    seen: Mutex<Vec<String>>,
}

impl Handler for Applier {
    async fn handle(&self, message: Message) -> Result<(), HandleError> {
        self.seen.lock().unwrap().push(message.id.clone());
        if self.failing.load(Ordering::SeqCst) {
            return Err(HandleError::Transient(anyhow::anyhow!(
                "the ledger is unavailable"
            )));
        }
        let result = async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            if inbox::record(&tx, "dlq-test", &message.id).await? {
                tx.execute(
                    "INSERT INTO applied (message_id, routing_key) VALUES ($1, $2)",
                    &[&message.id, &message.routing_key],
                )
                .await?;
            }
            tx.commit().await?;
            anyhow::Ok(())
        }
        .await;
        result.map_err(HandleError::Transient)
    }
}

struct Rig {
    h: Harness,
    /// The consumer's work queue, and a second (idle) one, standing in for
    /// the two services' queues.
    work: String,
    other: String,
    applier: Arc<Applier>,
    channel: lapin::Channel,
    shutdown: CancellationToken,
    _conn: Connection,
}

impl Rig {
    async fn start() -> Self {
        let h = Harness::new().await;
        h.pool
            .get()
            .await
            .unwrap()
            .batch_execute(
                "CREATE TABLE applied (message_id TEXT NOT NULL, routing_key TEXT NOT NULL)",
            )
            .await
            .unwrap();
        let work = h.broker.queue("payments");
        let other = h.broker.queue("orders");
        let policy = RetryPolicy {
            max_attempts: 2,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(20),
        };
        h.broker.track_retry_policy(&policy);
        let (conn, channel) = h.broker.confirmed_channel().await;
        amqp::declare_queue(
            &channel,
            &h.broker.config,
            &QueueSpec {
                name: other.clone(),
                routing_keys: vec![],
            },
        )
        .await
        .unwrap();
        let applier = Arc::new(Applier {
            pool: h.pool.clone(),
            failing: AtomicBool::new(true),
            seen: Mutex::default(),
        });
        let config = ConsumerConfig {
            broker: h.broker.config.clone(),
            queue: QueueSpec {
                name: work.clone(),
                routing_keys: vec![ROUTING_KEY.into()],
            },
            prefetch: 4,
            retry: policy,
        };
        let shutdown = spawn_consumer(&work, PATIENCE, |status, shutdown| {
            amqp::run_consumer_with_status(config, applier.clone(), status, shutdown)
        })
        .await;
        Self {
            h,
            work,
            other,
            applier,
            channel,
            shutdown,
            _conn: conn,
        }
    }

    /// Publishes to `exchange` with `routing_key`, confirmed and routed.
    async fn publish(&self, exchange: &str, routing_key: &str, id: &str, headers: FieldTable) {
        let confirm = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                format!("payload of {id}").as_bytes(),
                BasicProperties::default()
                    .with_message_id(id.into())
                    .with_type("test.Event".into())
                    .with_delivery_mode(2)
                    .with_headers(headers),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(confirm, Confirmation::Ack(None));
    }

    async fn publish_event(&self, id: &str) {
        let exchange = self.h.broker.config.exchange.clone();
        self.publish(&exchange, ROUTING_KEY, id, FieldTable::default())
            .await;
    }

    async fn len(&self, queue: &str) -> u32 {
        ordermesh_testkit::queue_depth(&self.channel, queue).await
    }

    fn dlq(&self) -> String {
        amqp::dead_letter_queue(&self.work)
    }

    async fn wait_parked(&self, n: u32) {
        let dlq = self.dlq();
        let parked = eventually(PATIENCE, || async {
            (self.len(&dlq).await == n).then_some(())
        })
        .await;
        assert!(
            parked.is_some(),
            "{n} parked in {dlq}, found {}",
            self.len(&dlq).await
        );
    }

    /// Runs `relay dlq <args>` and returns its stdout; panics unless it
    /// exits as `success` says.
    async fn relay(&self, args: &[&str], success: bool) -> String {
        let env = HashMap::from([
            ("AMQP_URL", self.h.broker.config.url.expose().to_owned()),
            ("AMQP_EXCHANGE", self.h.broker.config.exchange.clone()),
            ("ORDER_QUEUE", self.work.clone()),
            ("PROCESSOR_QUEUE", self.other.clone()),
        ]);
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_relay"))
            .arg("dlq")
            .args(args)
            .envs(env)
            .output()
            .await
            .expect("run relay dlq");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.success(),
            success,
            "relay dlq {args:?}: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            output.status
        );
        stdout + &stderr
    }

    /// The parked message ids, in queue order, from `list --json`.
    async fn parked_ids(&self) -> Vec<(String, bool)> {
        self.relay(&["list", "--json", "--queue", &self.work], true)
            .await
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                (
                    v["message_id"].as_str().unwrap().to_owned(),
                    v["redelivered"].as_bool().unwrap(),
                )
            })
            .collect()
    }

    async fn applied(&self, id: &str) -> (i64, Vec<String>) {
        let client = self.h.pool.get().await.unwrap();
        let rows = client
            .query(
                "SELECT routing_key FROM applied WHERE message_id = $1",
                &[&id],
            )
            .await
            .unwrap();
        (rows.len() as i64, rows.iter().map(|r| r.get(0)).collect())
    }

    fn seen(&self, id: &str) -> usize {
        self.applier
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| *s == id)
            .count()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[tokio::test]
async fn list_show_and_replay_dead_letters() {
    let rig = Rig::start().await;
    let ids = ["m-1", "m-2", "m-3"];
    for id in ids {
        rig.publish_event(id).await;
        // One at a time, so they are parked in this order.
        rig.wait_parked(rig.len(&rig.dlq()).await + 1).await;
    }
    for id in ids {
        assert_eq!(rig.seen(id), 2, "{id}: tried max_attempts times");
    }

    // list, over both queues by default: all three, in order, still there.
    let table = rig.relay(&["list"], true).await;
    assert!(
        table.contains(&format!("{}: 3 parked", rig.dlq())),
        "{table}"
    );
    assert!(
        table.contains(&format!(
            "{}: 0 parked",
            amqp::dead_letter_queue(&rig.other)
        )),
        "{table}"
    );
    let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("m-")).collect();
    assert_eq!(rows.len(), 3, "{table}");
    for (row, id) in rows.iter().zip(ids) {
        assert!(row.starts_with(id), "{table}");
        assert!(row.contains("max-attempts"), "{row}");
        assert!(row.contains(ROUTING_KEY), "{row}");
        assert!(row.contains("the ledger is unavailable"), "{row}");
    }
    assert_eq!(rig.len(&rig.dlq()).await, 3, "listing leaves them parked");
    let listed = rig.parked_ids().await;
    assert_eq!(
        listed,
        ids.iter()
            .map(|i| ((*i).to_owned(), true))
            .collect::<Vec<_>>(),
        "same order; a listing marks them redelivered"
    );

    // show: one message with its history.
    let shown = rig
        .relay(&["show", "m-2", "--queue", &rig.work], true)
        .await;
    for expected in [
        "message_id:   m-2",
        "attempts:     2",
        "reason:       max-attempts",
        "error:        the ledger is unavailable",
        &format!(
            "published to: {} / {ROUTING_KEY}",
            rig.h.broker.config.exchange
        ),
        "ordermesh-original-queue",
        "base64 cGF5bG9hZCBvZiBtLTI=",
    ] {
        assert!(shown.contains(expected), "{expected:?} in\n{shown}");
    }
    let detail: Value = serde_json::from_str(
        rig.relay(&["show", "m-2", "--json", "--queue", &rig.work], true)
            .await
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(detail["attempts"], 2);
    assert_eq!(detail["headers"]["ordermesh-attempts"], 2);
    let missing = rig.relay(&["show", "m-9"], false).await;
    assert!(missing.contains("no message m-9"), "{missing}");
    assert_eq!(rig.len(&rig.dlq()).await, 3, "show leaves them parked");

    // replay one: back to its work queue, applied once, under its own
    // routing key; the others stay, in order.
    rig.applier.failing.store(false, Ordering::SeqCst);
    let out = rig
        .relay(&["replay", "m-2", "--queue", &rig.work], true)
        .await;
    assert!(
        out.contains(&format!("replayed m-2 to {}", rig.work)),
        "{out}"
    );
    let applied = eventually(PATIENCE, || async {
        let (n, keys) = rig.applied("m-2").await;
        (n > 0).then_some(keys)
    })
    .await;
    assert_eq!(applied.unwrap(), [ROUTING_KEY]);
    assert_eq!(
        rig.parked_ids()
            .await
            .into_iter()
            .map(|(id, _)| id)
            .collect::<Vec<_>>(),
        ["m-1", "m-3"]
    );
    // Nothing went to the events exchange's other subscribers.
    assert_eq!(rig.len(&rig.other).await, 0);

    // A second copy of m-2 gets parked (a duplicate): replaying everything
    // applies m-1 and m-3, and the inbox absorbs m-2.
    let mut headers = FieldTable::default();
    headers.insert(
        "ordermesh-original-routing-key".into(),
        AMQPValue::LongString(ROUTING_KEY.into()),
    );
    let dlq = rig.dlq();
    rig.publish("", &dlq, "m-2", headers).await;
    let seen_m2 = rig.seen("m-2");
    let out = rig.relay(&["replay", "--all"], true).await;
    assert!(out.contains("replayed 3 message(s)"), "{out}");
    let handled = eventually(PATIENCE, || async {
        (rig.seen("m-2") > seen_m2
            && rig.applied("m-1").await.0 == 1
            && rig.applied("m-3").await.0 == 1)
            .then_some(())
    })
    .await;
    assert!(handled.is_some(), "replayed messages are handled");
    let empty = eventually(PATIENCE, || async {
        (rig.len(&rig.work).await == 0 && rig.len(&dlq).await == 0).then_some(())
    })
    .await;
    assert!(empty.is_some());
    for id in ids {
        assert_eq!(rig.applied(id).await.0, 1, "{id} applied exactly once");
    }
    let out = rig.relay(&["replay", "m-1"], false).await;
    assert!(out.contains("no message m-1"), "{out}");
}
