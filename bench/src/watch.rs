//! Create→PAID latency as a client sees it through `WatchOrder`: each order
//! is created when due (open loop, like the steps), then watched; the
//! latency runs from the due time to the arrival of the PAID message on the
//! order's stream. This is what an application waiting on its order sees,
//! including order-svc's own commit of the status and the NOTIFY fan-out,
//! which the event-based steps do not include.

use std::sync::Arc;
use std::time::Duration;

use ordermesh_proto::order::v1::{OrderStatus, WatchOrderRequest};
use serde::Serialize;
use tokio::sync::Mutex;

use crate::load;
use crate::mesh::Orders;
use crate::observe::now_ns;
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
}

/// Creates and watches `rate` orders/s for `seconds`.
pub async fn run(clients: &[Orders], rate: f64, seconds: f64) -> anyhow::Result<WatchReport> {
    let n = (rate * seconds).round() as usize;
    let e2e = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let first = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let origin = tokio::time::Instant::now() + Duration::from_millis(20);
    let start = now_ns() + 20_000_000;
    let interval_ns = 1e9 / rate;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let offset = (i as f64 * interval_ns) as u64;
        tokio::time::sleep_until(origin + Duration::from_nanos(offset)).await;
        let due = start + offset;
        let mut client = clients[i % clients.len()].clone();
        let (e2e, first) = (e2e.clone(), first.clone());
        tasks.spawn(async move {
            let order_id = format!("watch-{i}");
            let watched = tokio::time::timeout(PATIENCE, async {
                client
                    .create_order(load::order(order_id.clone(), i))
                    .await?;
                let mut stream = client
                    .watch_order(WatchOrderRequest { order_id })
                    .await?
                    .into_inner();
                let mut seen_first = false;
                while let Some(message) = stream.message().await? {
                    let ms = now_ns().saturating_sub(due) as f64 / 1e6;
                    if !seen_first {
                        seen_first = true;
                        first.lock().await.push(ms);
                    }
                    let status = message.order.map(|o| o.status);
                    if status == Some(OrderStatus::Paid as i32) {
                        e2e.lock().await.push(ms);
                        return Ok::<bool, tonic::Status>(true);
                    }
                }
                Ok(false)
            })
            .await;
            matches!(watched, Ok(Ok(true)))
        });
    }
    let mut paid = 0;
    let mut errors = 0;
    while let Some(done) = tasks.join_next().await {
        if done.unwrap_or(false) {
            paid += 1;
        } else {
            errors += 1;
        }
    }
    let mut e2e = std::mem::take(&mut *e2e.lock().await);
    let mut first = std::mem::take(&mut *first.lock().await);
    Ok(WatchReport {
        offered_per_s: rate,
        orders: n,
        paid,
        errors,
        e2e_ms: summarize(&mut e2e),
        first_message_ms: summarize(&mut first),
    })
}
