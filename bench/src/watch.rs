//! Create→PAID latency as a client sees it through `WatchOrder`: each order
//! is created when due (open loop, like the steps), then watched; the
//! latency runs from the due time to the arrival of the PAID message on the
//! order's stream. This is what an application waiting on its order sees,
//! including order-svc's own commit of the status and the NOTIFY fan-out,
//! which the event-based steps do not include. The same orders' events are
//! stamped too, so the step also says what the stream adds to them under
//! the same load.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ordermesh_proto::order::v1::{OrderStatus, WatchOrderRequest};
use serde::Serialize;

use crate::load;
use crate::mesh::Orders;
use crate::observe::{Registry, Step, now_ns};
use crate::stats::{Summary, summarize};

/// Longest one order may take before it counts as an error.
const PATIENCE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Serialize)]
pub struct WatchReport {
    pub offered_per_s: f64,
    pub orders: usize,
    pub paid: usize,
    pub errors: usize,
    /// Request due → PAID received on the order's WatchOrder stream.
    pub e2e_ms: Summary,
    /// Request due → the stream's first message (the order as created).
    pub first_message_ms: Summary,
    /// The same orders, request due → their `payment.succeeded` in the
    /// bench's queue (as the event-based steps measure, under this step's
    /// load).
    pub event_ms: Summary,
    /// Per order, PAID on its stream less its event's arrival.
    pub stream_after_event_ms: Summary,
}

/// Creates and watches `rate` orders/s for `seconds`; `step_id` names the
/// orders in `registry`, which stamps their events.
pub async fn run(
    clients: &[Orders],
    registry: &Registry,
    step_id: u32,
    rate: f64,
    seconds: f64,
) -> anyhow::Result<WatchReport> {
    let n = (rate * seconds).round() as usize;
    let step = Arc::new(Step::new(n));
    registry.add_step(step_id, step.clone());
    // Per order, when the stream's first message and its PAID arrived.
    let first_at: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| Default::default()).collect());
    let paid_at: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| Default::default()).collect());
    let mut tasks = tokio::task::JoinSet::new();
    let mut ticks = crate::pace::ticks(n, rate);
    while let Some((i, due)) = ticks.recv().await {
        step.slots[i].due.store(due, Ordering::SeqCst);
        let mut client = clients[i % clients.len()].clone();
        let (first_at, paid_at) = (first_at.clone(), paid_at.clone());
        tasks.spawn(async move {
            let order_id = format!("s{step_id}-{i}");
            let watched = tokio::time::timeout(PATIENCE, async {
                client
                    .create_order(load::order(order_id.clone(), i))
                    .await?;
                let mut stream = client
                    .watch_order(WatchOrderRequest { order_id })
                    .await?
                    .into_inner();
                while let Some(message) = stream.message().await? {
                    let now = now_ns();
                    let _ =
                        first_at[i].compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst);
                    if message.order.map(|o| o.status) == Some(OrderStatus::Paid as i32) {
                        paid_at[i].store(now, Ordering::SeqCst);
                        return Ok::<bool, tonic::Status>(true);
                    }
                }
                Ok(false)
            })
            .await;
            matches!(watched, Ok(Ok(true)))
        });
    }
    let (mut paid, mut errors) = (0, 0);
    while let Some(done) = tasks.join_next().await {
        if done.unwrap_or(false) {
            paid += 1;
        } else {
            errors += 1;
        }
    }
    let since_due = |at: &[AtomicU64]| -> Vec<f64> {
        step.slots
            .iter()
            .zip(at)
            .map(|(slot, at)| (slot.due.load(Ordering::SeqCst), at.load(Ordering::SeqCst)))
            .filter(|(_, at)| *at != 0)
            .map(|(due, at)| at.saturating_sub(due) as f64 / 1e6)
            .collect()
    };
    let (mut e2e, mut first) = (since_due(&paid_at), since_due(&first_at));
    let (mut event, mut after) = against_events(&step, &paid_at);
    Ok(WatchReport {
        offered_per_s: rate,
        orders: n,
        paid,
        errors,
        e2e_ms: summarize(&mut e2e),
        first_message_ms: summarize(&mut first),
        event_ms: summarize(&mut event),
        stream_after_event_ms: summarize(&mut after),
    })
}

/// Per order with a stamped event: due → event, and the stream's PAID
/// (`paid_at`, 0 if none) less the event.
fn against_events(step: &Step, paid_at: &[AtomicU64]) -> (Vec<f64>, Vec<f64>) {
    let (mut event, mut after) = (Vec::new(), Vec::new());
    for (slot, paid) in step.slots.iter().zip(paid_at) {
        let settled = slot.settled.load(Ordering::SeqCst);
        if settled == 0 {
            continue;
        }
        let due = slot.due.load(Ordering::SeqCst);
        event.push(settled.saturating_sub(due) as f64 / 1e6);
        let paid = paid.load(Ordering::SeqCst);
        if paid != 0 {
            after.push((paid as f64 - settled as f64) / 1e6);
        }
    }
    (event, after)
}
