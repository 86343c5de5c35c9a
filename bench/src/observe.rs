//! Timing from events, not polling: the bench binds its own queue to the
//! mesh's exchange (`payment.*`, `bench.#`) and stamps
//! each arrival. A step's orders and a probe's rows are registered as slot
//! tables; a message finds its slot by the order id (`s<step>-<i>`) or the
//! probe row's payload.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;

use anyhow::Context;
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use ordermesh_messaging::amqp::BrokerConfig;
use ordermesh_proto::events::v1 as events;
use prost::Message as _;

/// Nanoseconds since the bench started; 0 means "not yet".
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    epoch.elapsed().as_nanos() as u64 + 1
}

/// What the bench knows about one order.
#[derive(Default)]
pub struct OrderSlot {
    /// When the request was due (open loop: latency counts from here).
    pub due: AtomicU64,
    /// When the request went out (the pacing thread's tick handled).
    pub sent: AtomicU64,
    /// When CreateOrder answered (the order and its outbox row committed).
    pub answered: AtomicU64,
    /// When `payment.succeeded` / `payment.failed` arrived.
    pub settled: AtomicU64,
    /// 1 paid, 2 failed.
    pub outcome: AtomicU64,
}

/// A step's orders.
pub struct Step {
    pub slots: Vec<OrderSlot>,
    pub settled: AtomicUsize,
}

impl Step {
    pub fn new(n: usize) -> Self {
        Self {
            slots: (0..n).map(|_| OrderSlot::default()).collect(),
            settled: AtomicUsize::new(0),
        }
    }
}

/// Arrival times of probe rows (payload = index), per routing key.
pub struct Probe {
    pub arrived: Vec<AtomicU64>,
    pub count: AtomicUsize,
}

impl Probe {
    pub fn new(n: usize) -> Self {
        Self {
            arrived: (0..n).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicUsize::new(0),
        }
    }
}

#[derive(Default)]
pub struct Registry {
    steps: RwLock<HashMap<u32, Arc<Step>>>,
    probes: RwLock<HashMap<String, Arc<Probe>>>,
    pub unknown: AtomicUsize,
}

impl Registry {
    pub fn add_step(&self, id: u32, step: Arc<Step>) {
        self.steps.write().unwrap().insert(id, step);
    }

    pub fn add_probe(&self, routing_key: &str, probe: Arc<Probe>) {
        self.probes
            .write()
            .unwrap()
            .insert(routing_key.to_owned(), probe);
    }

    fn order(&self, order_id: &str) -> Option<(Arc<Step>, usize)> {
        let (step, i) = order_id.strip_prefix('s')?.split_once('-')?;
        let step: u32 = step.parse().ok()?;
        let i: usize = i.parse().ok()?;
        let s = self.steps.read().unwrap().get(&step)?.clone();
        (i < s.slots.len()).then_some((s, i))
    }

    fn on_message(&self, routing_key: &str, data: &[u8], at: u64) {
        match routing_key {
            events::PAYMENT_SUCCEEDED | events::PAYMENT_FAILED => {
                let (order_id, outcome) = if routing_key == events::PAYMENT_SUCCEEDED {
                    (
                        events::PaymentSucceeded::decode(data).map(|e| e.order_id),
                        1,
                    )
                } else {
                    (events::PaymentFailed::decode(data).map(|e| e.order_id), 2)
                };
                if let Some((step, i)) = order_id.ok().and_then(|id| self.order(&id)) {
                    let slot = &step.slots[i];
                    if slot
                        .settled
                        .compare_exchange(0, at, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                    {
                        slot.outcome.store(outcome, Ordering::SeqCst);
                        step.settled.fetch_add(1, Ordering::SeqCst);
                    }
                    return;
                }
            }
            key => {
                let probe = self.probes.read().unwrap().get(key).cloned();
                if let (Some(probe), Ok(bytes)) = (probe, <[u8; 8]>::try_from(data)) {
                    let i = u64::from_be_bytes(bytes) as usize;
                    if let Some(slot) = probe.arrived.get(i) {
                        if slot
                            .compare_exchange(0, at, Ordering::SeqCst, Ordering::SeqCst)
                            .is_ok()
                        {
                            probe.count.fetch_add(1, Ordering::SeqCst);
                        }
                        return;
                    }
                }
            }
        }
        self.unknown.fetch_add(1, Ordering::Relaxed);
    }
}

/// Binds an exclusive, auto-deleted queue to the exchange and stamps every
/// delivery until the connection closes. Returns the connection (close it
/// to stop).
pub async fn start(
    broker: &BrokerConfig,
    registry: Arc<Registry>,
) -> anyhow::Result<lapin::Connection> {
    let conn = lapin::Connection::connect(broker.url.expose(), Default::default())
        .await
        .context("connect the observer to RabbitMQ")?;
    let channel = conn.create_channel().await?;
    ordermesh_messaging::amqp::declare_exchanges(&channel, broker).await?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    // Not `order.created`: a second copy of every order's first event would
    // load the broker the bench measures; the relay probe times that hop.
    for key in ["payment.*", "bench.#"] {
        channel
            .queue_bind(
                queue.name().clone(),
                broker.exchange.as_str().into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    let mut consumer = channel
        .basic_consume(
            queue.name().clone(),
            "bench-observer".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let at = now_ns();
            registry.on_message(delivery.routing_key.as_str(), &delivery.data, at);
        }
    });
    Ok(conn)
}
