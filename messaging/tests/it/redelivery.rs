//! Retries and dead letters of the consumer loop against the local
//! RabbitMQ: transient failures come back after growing delays through the
//! retry queues, then succeed or are parked with their history; poison is
//! parked at once; other messages keep flowing meanwhile. Copies of a
//! message with huge headers fit the frame; a handler that hangs past the
//! settle timeout counts as a failed attempt and ends in the DLQ.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::options::{BasicGetOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation, Connection};
use ordermesh_messaging::amqp::{self, ConsumerConfig, HandleError, Handler, Message, QueueSpec};
use ordermesh_messaging::redelivery::{self, RetryPolicy};
use ordermesh_testkit::{PATIENCE, TestBroker, eventually, spawn_consumer};
use tokio_util::sync::CancellationToken;

const ROUTING_KEY: &str = "test.event";

/// One handler run.
#[derive(Debug, Clone)]
struct Call {
    id: String,
    routing_key: String,
    at: Instant,
    /// Set when the broker delivered it again after a lost connection.
    redelivered: bool,
}

/// Acts on the payload: `ok`; `transient:N` fails the first N attempts;
/// `always` always fails transiently; `huge` too, with a 100 KB error;
/// `poison` is poison; `hang` never returns. Records each run.
#[derive(Default)]
struct Scripted {
    calls: Mutex<Vec<Call>>,
}

impl Scripted {
    fn calls(&self, id: &str) -> Vec<Call> {
        let calls = self.calls.lock().unwrap();
        calls.iter().filter(|c| c.id == id).cloned().collect()
    }
}

impl Handler for Scripted {
    async fn handle(&self, message: Message) -> Result<(), HandleError> {
        let attempt = {
            let mut calls = self.calls.lock().unwrap();
            calls.push(Call {
                id: message.id.clone(),
                routing_key: message.routing_key.clone(),
                at: Instant::now(),
                redelivered: message.redelivered,
            });
            calls.iter().filter(|c| c.id == message.id).count()
        };
        let payload = String::from_utf8_lossy(&message.payload).into_owned();
        let fail_first = match payload.split_once(':') {
            Some(("transient", n)) => n.parse().unwrap(),
            _ if payload == "always" => usize::MAX,
            _ => 0,
        };
        if payload == "poison" {
            return Err(HandleError::Poison("undecodable payload".into()));
        }
        if payload == "hang" {
            std::future::pending::<()>().await;
        }
        if payload == "huge" {
            let error = format!("database is down: {}", "données ".repeat(10_000));
            return Err(HandleError::Transient(anyhow::anyhow!(error)));
        }
        if attempt <= fail_first {
            return Err(HandleError::Transient(anyhow::anyhow!(
                "database is down (attempt {attempt})"
            )));
        }
        Ok(())
    }
}

/// A consumer running the scripted handler on its own queue, and a
/// publisher with confirms.
struct Rig {
    broker: TestBroker,
    queue: String,
    handler: Arc<Scripted>,
    policy: RetryPolicy,
    channel: lapin::Channel,
    shutdown: CancellationToken,
    _conn: Connection,
}

impl Rig {
    async fn start(policy: RetryPolicy, prefetch: u16) -> Self {
        Self::start_with(policy, prefetch, amqp::DEFAULT_SETTLE_TIMEOUT).await
    }

    async fn start_with(policy: RetryPolicy, prefetch: u16, settle_timeout: Duration) -> Self {
        let broker = TestBroker::new();
        broker.track_retry_policy(&policy);
        let queue = broker.queue("work");
        let config = ConsumerConfig {
            broker: broker.config.clone(),
            queue: QueueSpec {
                name: queue.clone(),
                routing_keys: vec!["test.#".into()],
            },
            prefetch,
            retry: policy.clone(),
        };
        let (conn, channel) = broker.confirmed_channel().await;
        let handler = Arc::new(Scripted::default());
        let shutdown = spawn_consumer(&queue, PATIENCE, |status, shutdown| {
            amqp::run_consumer_with_settle_timeout(
                config,
                handler.clone(),
                status,
                settle_timeout,
                shutdown,
            )
        })
        .await;
        Self {
            broker,
            queue,
            handler,
            policy,
            channel,
            shutdown,
            _conn: conn,
        }
    }

    /// Publishes `payload` to the events exchange, confirmed.
    async fn publish(&self, id: Option<&str>, payload: &str) {
        self.publish_with(id, payload, FieldTable::default()).await;
    }

    /// [`Rig::publish`] with `headers` besides the `traceparent`.
    async fn publish_with(&self, id: Option<&str>, payload: &str, mut headers: FieldTable) {
        headers.insert(
            "traceparent".into(),
            AMQPValue::LongString("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        );
        let mut props = BasicProperties::default()
            .with_type("test.Event".into())
            .with_delivery_mode(2)
            .with_headers(headers);
        if let Some(id) = id {
            props = props.with_message_id(id.into());
        }
        let confirm = self
            .channel
            .basic_publish(
                self.broker.config.exchange.as_str().into(),
                ROUTING_KEY.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                payload.as_bytes(),
                props,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(confirm, Confirmation::Ack(None), "routed to the work queue");
    }

    async fn len(&self, queue: &str) -> u32 {
        ordermesh_testkit::queue_depth(&self.channel, queue).await
    }

    fn dlq(&self) -> String {
        amqp::dead_letter_queue(&self.queue)
    }

    /// Waits until the dead-letter queue holds `n` messages, then takes them.
    async fn take_dead_letters(&self, n: u32) -> Vec<lapin::message::Delivery> {
        let dlq = self.dlq();
        let filled = eventually(PATIENCE, || async {
            (self.len(&dlq).await >= n).then_some(())
        })
        .await;
        assert!(filled.is_some(), "{n} message(s) reach {dlq}");
        let mut out = Vec::new();
        while let Some(m) = self
            .channel
            .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            out.push(m.delivery);
        }
        assert_eq!(out.len(), n as usize, "exactly {n} dead letter(s)");
        out
    }

    /// Waits until the handler ran `n` times on `id`.
    async fn wait_calls(&self, id: &str, n: usize) -> Vec<Call> {
        let calls = eventually(PATIENCE, || async {
            let calls = self.handler.calls(id);
            (calls.len() >= n).then_some(calls)
        })
        .await;
        calls.unwrap_or_else(|| panic!("{id} handled {n} times: {:?}", self.handler.calls(id)))
    }

    /// Every retry queue of the policy, with its length.
    async fn retry_lengths(&self) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        for delay in self.policy.delays() {
            let name = redelivery::retry_queue(&self.queue, delay);
            out.push((name.clone(), self.len(&name).await));
        }
        out
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn headers(delivery: &lapin::message::Delivery) -> BTreeMap<String, String> {
    redelivery::header_texts(&delivery.properties)
}

fn text(headers: &BTreeMap<String, String>, name: &str) -> String {
    headers
        .get(name)
        .cloned()
        .unwrap_or_else(|| panic!("header {name} in {headers:?}"))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[tokio::test]
async fn transient_failures_are_retried_with_growing_delays_then_succeed() {
    let policy = RetryPolicy {
        max_attempts: 5,
        base_delay: ms(100),
        max_delay: ms(1000),
    };
    let rig = Rig::start(policy, 4).await;
    rig.publish(Some("m-1"), "transient:3").await;

    let calls = rig.wait_calls("m-1", 4).await;
    let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1].at - w[0].at).collect();
    // Each pause lasts at least its retry queue's TTL: 100, 200, 400 ms.
    for (gap, min) in gaps.iter().zip([ms(100), ms(200), ms(400)]) {
        assert!(*gap >= min - ms(5), "gaps {gaps:?}");
    }
    assert!(gaps[0] < gaps[1] && gaps[1] < gaps[2], "growing: {gaps:?}");
    assert!(
        calls.iter().all(|c| c.routing_key == ROUTING_KEY),
        "the handler sees the event's routing key on retries too: {calls:?}"
    );

    // Succeeded on the fourth attempt: nothing waits anywhere any more.
    let settled = eventually(PATIENCE, || async {
        let idle = rig.len(&rig.queue).await == 0
            && rig.len(&rig.dlq()).await == 0
            && rig.retry_lengths().await.iter().all(|(_, n)| *n == 0);
        idle.then_some(())
    })
    .await;
    assert!(
        settled.is_some(),
        "retry queues: {:?}",
        rig.retry_lengths().await
    );
    assert_eq!(rig.handler.calls("m-1").len(), 4);
}

#[tokio::test]
async fn after_the_last_attempt_the_message_is_parked_with_its_history() {
    let policy = RetryPolicy {
        max_attempts: 3,
        base_delay: ms(50),
        max_delay: ms(60),
    };
    let rig = Rig::start(policy, 4).await;
    let before = chrono::Utc::now();
    rig.publish(Some("m-2"), "always").await;

    let parked = rig.take_dead_letters(1).await;
    assert_eq!(
        rig.handler.calls("m-2").len(),
        3,
        "tried max_attempts times"
    );
    let m = &parked[0];
    let p = &m.properties;
    assert_eq!(p.message_id().as_ref().unwrap().as_str(), "m-2");
    assert_eq!(p.kind().as_ref().unwrap().as_str(), "test.Event");
    assert_eq!(*p.delivery_mode(), Some(2));
    assert_eq!(m.data, b"always");
    let h = headers(m);
    assert_eq!(text(&h, redelivery::HEADER_ATTEMPTS), "3");
    assert_eq!(text(&h, redelivery::HEADER_REASON), "max-attempts");
    assert!(text(&h, redelivery::HEADER_ERROR).contains("database is down (attempt 3)"));
    assert_eq!(text(&h, redelivery::HEADER_QUEUE), rig.queue);
    assert_eq!(text(&h, redelivery::HEADER_ROUTING_KEY), ROUTING_KEY);
    assert_eq!(
        text(&h, redelivery::HEADER_EXCHANGE),
        rig.broker.config.exchange
    );
    let failed_at =
        chrono::DateTime::parse_from_rfc3339(&text(&h, redelivery::HEADER_FAILED_AT)).unwrap();
    assert!(failed_at >= before - chrono::Duration::seconds(1) && failed_at <= chrono::Utc::now());
    assert!(
        h.contains_key("traceparent"),
        "the message's own headers stay"
    );
    assert!(
        !h.contains_key("x-death"),
        "the broker's history is not copied"
    );
    assert!(rig.retry_lengths().await.iter().all(|(_, n)| *n == 0));
}

#[tokio::test]
async fn poison_and_messages_without_identity_are_parked_at_once_with_their_reason() {
    let rig = Rig::start(ordermesh_testkit::fast_retry_policy(), 4).await;
    rig.publish(Some("m-3"), "poison").await;
    rig.publish(None, "ok").await;

    let parked = rig.take_dead_letters(2).await;
    assert_eq!(rig.handler.calls("m-3").len(), 1, "poison is not retried");
    let by_reason: BTreeMap<String, _> = parked
        .iter()
        .map(|m| (text(&headers(m), redelivery::HEADER_REASON), m))
        .collect();
    let poison = headers(by_reason["poison"]);
    assert_eq!(text(&poison, redelivery::HEADER_ATTEMPTS), "1");
    assert!(text(&poison, redelivery::HEADER_ERROR).contains("undecodable payload"));
    assert_eq!(text(&poison, redelivery::HEADER_ROUTING_KEY), ROUTING_KEY);
    let anonymous = headers(by_reason["no-message-id"]);
    assert!(text(&anonymous, redelivery::HEADER_ERROR).contains("message_id"));
    assert_eq!(text(&anonymous, redelivery::HEADER_QUEUE), rig.queue);
}

#[tokio::test]
async fn later_messages_keep_flowing_while_one_waits_for_its_retry() {
    let policy = RetryPolicy {
        max_attempts: 3,
        base_delay: ms(1500),
        max_delay: ms(1500),
    };
    // One delivery at a time: a message that waited in the queue would
    // hold up every other.
    let rig = Rig::start(policy, 1).await;
    rig.publish(Some("slow"), "always").await;
    let ids: Vec<String> = (0..5).map(|i| format!("fast-{i}")).collect();
    for id in &ids {
        rig.publish(Some(id), "ok").await;
    }
    for id in &ids {
        rig.wait_calls(id, 1).await;
    }
    assert_eq!(
        rig.handler.calls("slow").len(),
        1,
        "the others went by while it waited for its first retry"
    );
    let parked = rig.take_dead_letters(1).await;
    assert_eq!(
        parked[0].properties.message_id().as_ref().unwrap().as_str(),
        "slow"
    );
    assert_eq!(rig.handler.calls("slow").len(), 3);
    for id in &ids {
        assert_eq!(rig.handler.calls(id).len(), 1);
    }
}

/// Encoded size of a long-string header entry.
fn entry_len(name: &str, value: &str) -> usize {
    1 + name.len() + 1 + 4 + value.len()
}

#[tokio::test]
async fn copies_of_a_message_with_huge_headers_and_a_huge_error_fit_the_frame() {
    let policy = RetryPolicy {
        max_attempts: 3,
        base_delay: ms(50),
        max_delay: ms(60),
    };
    let rig = Rig::start(policy, 4).await;
    // Headers filling nearly all of a 16 KiB frame (the consumer's): any
    // copy that kept them and added a 1 KiB error would not fit, and the
    // broker would close the connection for it.
    let tracestate: Vec<String> = (0..24)
        .map(|i| format!("{:k<32}={:v<256}", format!("vendor{i:02}"), i))
        .collect();
    let tracestate = tracestate.join(",");
    let mut sent = FieldTable::default();
    sent.insert(
        "tracestate".into(),
        AMQPValue::LongString(tracestate.as_str().into()),
    );
    sent.insert("x-count".into(), AMQPValue::LongInt(7));
    let used = 4
        + entry_len("tracestate", &tracestate)
        + entry_len("traceparent", &"0".repeat(55))
        + 1
        + "x-count".len()
        + 5;
    let blob = "b".repeat(amqp::FRAME_MAX as usize - 200 - used - entry_len("x-blob", ""));
    sent.insert("x-blob".into(), AMQPValue::LongString(blob.as_str().into()));
    rig.publish_with(Some("big-1"), "huge", sent).await;

    let parked = rig.take_dead_letters(1).await;
    let calls = rig.handler.calls("big-1");
    assert_eq!(calls.len(), 3, "tried max_attempts times: {calls:?}");
    assert!(
        calls.iter().all(|c| !c.redelivered),
        "no connection was lost on the way: {calls:?}"
    );
    let h = headers(&parked[0]);
    assert_eq!(text(&h, redelivery::HEADER_ATTEMPTS), "3");
    assert_eq!(text(&h, redelivery::HEADER_REASON), "max-attempts");
    let error = text(&h, redelivery::HEADER_ERROR);
    assert!(error.starts_with("database is down: données"), "{error}");
    assert!(error.len() <= redelivery::MAX_ERROR_LEN, "{}", error.len());
    assert!(h.contains_key("traceparent"), "the trace context stays");
    let kept_state = text(&h, "tracestate");
    assert!(
        kept_state.len() <= 512 && tracestate.starts_with(&kept_state),
        "{kept_state}"
    );
    assert!(
        !h.contains_key("x-blob"),
        "the oversize foreign header went"
    );
    assert_eq!(text(&h, "x-count"), "7");
    assert_eq!(text(&h, redelivery::HEADER_DROPPED), "1");
    assert_eq!(parked[0].data, b"huge");

    // The consumer is still at work on the same connection.
    rig.publish(Some("after-big"), "ok").await;
    let after = rig.wait_calls("after-big", 1).await;
    assert!(!after[0].redelivered);
}

#[tokio::test]
async fn a_delivery_that_hangs_counts_as_an_attempt_and_ends_in_the_dlq() {
    let policy = RetryPolicy {
        max_attempts: 3,
        base_delay: ms(50),
        max_delay: ms(60),
    };
    let rig = Rig::start_with(policy, 4, ms(300)).await;
    rig.publish(Some("stuck"), "hang").await;
    rig.publish(Some("beside"), "ok").await;
    rig.wait_calls("beside", 1).await;

    let parked = rig.take_dead_letters(1).await;
    let m = &parked[0];
    assert_eq!(
        m.properties.message_id().as_ref().unwrap().as_str(),
        "stuck"
    );
    let h = headers(m);
    assert_eq!(text(&h, redelivery::HEADER_ATTEMPTS), "3");
    assert_eq!(text(&h, redelivery::HEADER_REASON), "max-attempts");
    assert!(
        text(&h, redelivery::HEADER_ERROR).contains("did not settle"),
        "{h:?}"
    );
    assert_eq!(text(&h, redelivery::HEADER_ROUTING_KEY), ROUTING_KEY);
    let calls = rig.handler.calls("stuck");
    assert_eq!(calls.len(), 3, "one run per attempt: {calls:?}");
    assert!(
        calls.iter().all(|c| !c.redelivered),
        "each attempt came from a retry queue, not a reconnect: {calls:?}"
    );
    assert!(rig.retry_lengths().await.iter().all(|(_, n)| *n == 0));
    assert_eq!(rig.len(&rig.queue).await, 0);

    // The consumer goes on.
    rig.publish(Some("later"), "ok").await;
    rig.wait_calls("later", 1).await;
    assert_eq!(rig.handler.calls("beside").len(), 1);
}
