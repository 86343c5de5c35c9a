//! The load: funded customers, and open-loop steps of CreateOrder at a fixed
//! offered rate. Requests are sent when due whatever the answers do
//! (latency counts from the due time, so a stalled server cannot hide its
//! queue), spread over a few HTTP/2 connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use ordermesh_proto::order::v1::{CreateOrderRequest, OrderItem};
use ordermesh_proto::payment::v1::{CreateAccountRequest, DepositRequest};
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::mesh::{Accounts, Orders};
use crate::observe::{Registry, Step, now_ns};
use crate::procfs::CpuWindow;
use crate::stats::{Summary, r3, summarize};

/// Customers orders are spread over (each account row is locked per debit).
pub const CUSTOMERS: usize = 200;
/// Requests in flight at most; beyond it the generator waits (the due-time
/// latency still counts the wait).
const MAX_IN_FLIGHT: usize = 8192;

/// The order every bench step sends: one widget at 1.00.
pub fn order(order_id: String, i: usize) -> CreateOrderRequest {
    CreateOrderRequest {
        order_id,
        customer_id: customer(i % CUSTOMERS),
        currency_code: "USD".into(),
        items: vec![OrderItem {
            sku: "widget".into(),
            quantity: 1,
            unit_price_minor: 100,
        }],
    }
}

pub fn customer(i: usize) -> String {
    format!("bench-customer-{i}")
}

/// Opens and funds every customer's account with far more than a run spends.
pub async fn fund(mut accounts: Accounts) -> anyhow::Result<()> {
    for i in 0..CUSTOMERS {
        accounts
            .create_account(CreateAccountRequest {
                customer_id: customer(i),
                currency_code: "USD".into(),
            })
            .await
            .context("CreateAccount")?;
        accounts
            .deposit(DepositRequest {
                customer_id: customer(i),
                amount_minor: 1_000_000_000_000,
                deposit_id: format!("bench-deposit-{i}"),
            })
            .await
            .context("Deposit")?;
    }
    Ok(())
}

/// How a step is judged sustained.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Every order must be settled this long after the last request.
    pub drain: Duration,
    /// End-to-end p99 must stay under this.
    pub p99_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub offered_per_s: f64,
    pub seconds: f64,
    pub sent: usize,
    pub errors: usize,
    pub settled: usize,
    pub paid: usize,
    pub completed_per_s: f64,
    /// Request due → payment result published (the order is PAID).
    pub e2e_ms: Summary,
    /// CreateOrder latency as the client saw it (from due time).
    pub create_rpc_ms: Summary,
    /// After the last request, until every order settled (or the bound).
    pub drain_s: f64,
    pub sustained: bool,
    pub verdict: String,
    /// Busy share of all cores during the step (0..1).
    pub cpu_busy: f64,
    /// CPU seconds per 1,000 orders, per process name.
    pub cpu_s_per_1k_orders: Vec<(String, f64)>,
    #[serde(skip)]
    pub e2e_samples: Vec<f64>,
}

/// Waits (up to 30 s) until the machine is quiet: after an overloaded step
/// PostgreSQL keeps vacuuming for a while, and a step started meanwhile
/// would measure that instead (under 25 % CPU busy for a second is quiet).
pub async fn settle() {
    for _ in 0..30 {
        let window = CpuWindow::start();
        tokio::time::sleep(Duration::from_secs(1)).await;
        if window.finish().0 < 0.25 {
            return;
        }
    }
}

/// Runs one step: `rate` orders/s for `seconds`, then waits for the
/// results (up to `bounds.drain`, and for a failed step until the backlog
/// is gone so the next step starts clean).
#[allow(clippy::too_many_arguments)]
pub async fn run_step(
    clients: &[Orders],
    registry: &Arc<Registry>,
    step_id: u32,
    rate: f64,
    seconds: f64,
    bounds: Bounds,
    label: &str,
    quiet: bool,
) -> anyhow::Result<StepReport> {
    let n = (rate * seconds).round() as usize;
    let step = Arc::new(Step::new(n));
    registry.add_step(step_id, step.clone());
    let errors = Arc::new(AtomicUsize::new(0));
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));

    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(n as u64)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>14} [{bar:30.cyan/blue}] {pos:>6}/{len:6} settled {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(label.to_owned());

    settle().await;
    let cpu = CpuWindow::start();
    let interval_ns = 1e9 / rate;
    let start = now_ns() + 20_000_000;
    let origin = tokio::time::Instant::now() + Duration::from_millis(20);
    for i in 0..n {
        let offset = (i as f64 * interval_ns) as u64;
        let due = start + offset;
        tokio::time::sleep_until(origin + Duration::from_nanos(offset)).await;
        let permit = in_flight.clone().acquire_owned().await?;
        let mut client = clients[i % clients.len()].clone();
        let slots = step.clone();
        let errors = errors.clone();
        step.slots[i].due.store(due, Ordering::SeqCst);
        tokio::spawn(async move {
            let step = slots;
            let request = order(format!("s{step_id}-{i}"), i);
            match client.create_order(request).await {
                Ok(_) => step.slots[i].answered.store(now_ns(), Ordering::SeqCst),
                Err(_) => {
                    errors.fetch_add(1, Ordering::SeqCst);
                }
            }
            drop(permit);
        });
        if i % 64 == 0 {
            bar.set_position(step.settled.load(Ordering::Relaxed) as u64);
        }
    }
    let last_due = start + ((n.max(1) - 1) as f64 * interval_ns) as u64;
    // Wait for every result, up to the drain bound.
    let bound_ns = bounds.drain.as_nanos() as u64;
    let settled_all = loop {
        let settled = step.settled.load(Ordering::SeqCst);
        let errs = errors.load(Ordering::SeqCst);
        bar.set_position(settled as u64);
        if settled + errs >= n {
            break true;
        }
        if now_ns() > last_due + bound_ns {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let (cpu_busy, cpu_by_command) = cpu.finish();
    let end = (0..n)
        .map(|i| step.slots[i].settled.load(Ordering::SeqCst))
        .max()
        .unwrap_or(0);
    let drain_s = end.saturating_sub(last_due) as f64 / 1e9;
    if !settled_all {
        // Let the backlog go before the next step, without counting it.
        let deadline = now_ns() + 60_000_000_000;
        while step.settled.load(Ordering::SeqCst) + errors.load(Ordering::SeqCst) < n
            && now_ns() < deadline
        {
            bar.set_position(step.settled.load(Ordering::SeqCst) as u64);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let ms = |a: u64, b: u64| (b as f64 - a as f64) / 1e6;
    let mut e2e = Vec::with_capacity(n);
    let mut rpc = Vec::with_capacity(n);
    let mut paid = 0;
    let mut settled = 0;
    for s in &step.slots {
        let due = s.due.load(Ordering::SeqCst);
        let answered = s.answered.load(Ordering::SeqCst);
        let done = s.settled.load(Ordering::SeqCst);
        if answered != 0 {
            rpc.push(ms(due, answered));
        }
        if done != 0 && done <= last_due + bound_ns {
            settled += 1;
            e2e.push(ms(due, done));
            if s.outcome.load(Ordering::SeqCst) == 1 {
                paid += 1;
            }
        }
    }
    let e2e_samples = e2e.clone();
    let e2e_ms = summarize(&mut e2e);
    let errors = errors.load(Ordering::SeqCst);
    let span_s = end.saturating_sub(start) as f64 / 1e9;
    let completed_per_s = if span_s > 0.0 {
        settled as f64 / span_s
    } else {
        0.0
    };
    let mut verdict = Vec::new();
    if errors > 0 {
        verdict.push(format!("{errors} CreateOrder errors"));
    }
    if !settled_all {
        verdict.push(format!(
            "{} of {n} not settled {:.0} s after the last request",
            n - settled,
            bounds.drain.as_secs_f64()
        ));
    }
    if e2e_ms.p99 > bounds.p99_ms {
        verdict.push(format!(
            "p99 {:.1} ms > {:.0} ms",
            e2e_ms.p99, bounds.p99_ms
        ));
    }
    if paid < settled {
        verdict.push(format!("{} orders FAILED", settled - paid));
    }
    let sustained = verdict.is_empty();
    bar.finish_with_message(format!(
        "p50 {:.2} ms p99 {:.2} ms {}",
        e2e_ms.p50,
        e2e_ms.p99,
        if sustained { "ok" } else { "NOT sustained" }
    ));
    let per_1k = (settled.max(1) as f64) / 1000.0;
    Ok(StepReport {
        offered_per_s: rate,
        seconds,
        sent: n,
        errors,
        settled,
        paid,
        completed_per_s: r3(completed_per_s),
        e2e_ms,
        create_rpc_ms: summarize(&mut rpc),
        drain_s: r3(drain_s),
        sustained,
        verdict: if sustained {
            "sustained".into()
        } else {
            verdict.join("; ")
        },
        cpu_busy: r3(cpu_busy),
        cpu_s_per_1k_orders: cpu_by_command
            .into_iter()
            .map(|(k, v)| (k, r3(v / per_1k)))
            .collect(),
        e2e_samples,
    })
}
