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
    /// How long after its due time each request went out (the load
    /// generator's own delay, included in the latencies above).
    pub send_late_ms: Summary,
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

/// Runs a bench's load steps: its clients, where the results arrive and
/// how a step is judged. Steps are numbered 1, 2, ... in the registry.
pub struct Stepper {
    pub clients: Vec<Orders>,
    pub registry: Arc<Registry>,
    pub bounds: Bounds,
    /// No progress bar (stderr is not a terminal).
    pub quiet: bool,
    steps: u32,
}

impl Stepper {
    pub fn new(clients: Vec<Orders>, registry: Arc<Registry>, bounds: Bounds, quiet: bool) -> Self {
        Self {
            clients,
            registry,
            bounds,
            quiet,
            steps: 0,
        }
    }

    /// Runs one step: `rate` orders/s for `seconds`, then waits for the
    /// results (up to `bounds.drain`, and for a failed step until the
    /// backlog is gone so the next step starts clean).
    pub async fn run_step(
        &mut self,
        rate: f64,
        seconds: f64,
        label: &str,
    ) -> anyhow::Result<StepReport> {
        self.steps += 1;
        let n = (rate * seconds).round() as usize;
        let step = Arc::new(Step::new(n));
        self.registry.add_step(self.steps, step.clone());
        let run = StepRun {
            id: self.steps,
            rate,
            seconds,
            bounds: self.bounds,
            step,
            n,
            errors: Arc::new(AtomicUsize::new(0)),
            bar: progress_bar(n, label, self.quiet),
        };
        settle().await;
        let cpu = CpuWindow::start();
        let schedule = run.send(&self.clients).await?;
        let bound = schedule.last_due + self.bounds.drain.as_nanos() as u64;
        let settled_all = run.wait_for_results(bound).await;
        let cpu = cpu.finish();
        let end = run.last_settled();
        if !settled_all {
            run.drain_backlog().await;
        }
        let tally = run.tally(bound);
        Ok(run.report(&schedule, settled_all, end, tally, cpu))
    }
}

/// One step under way.
struct StepRun {
    id: u32,
    /// Offered orders/s, for `seconds`.
    rate: f64,
    seconds: f64,
    bounds: Bounds,
    /// Where the observer stamps each order's results.
    step: Arc<Step>,
    /// Orders to send.
    n: usize,
    /// CreateOrder calls that failed.
    errors: Arc<AtomicUsize>,
    bar: ProgressBar,
}

/// When the step's requests were due (ns, [`now_ns`]).
struct Schedule {
    start: u64,
    last_due: u64,
}

/// The step's orders as counted after it: latencies of those settled within
/// the bound, and of every answered CreateOrder.
struct Tally {
    e2e: Vec<f64>,
    rpc: Vec<f64>,
    late: Vec<f64>,
    settled: usize,
    paid: usize,
}

fn progress_bar(n: usize, label: &str, quiet: bool) -> ProgressBar {
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
    bar
}

impl StepRun {
    /// Sends the orders open-loop, each when due whatever the answers do,
    /// round-robin over `clients`.
    async fn send(&self, clients: &[Orders]) -> anyhow::Result<Schedule> {
        let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let step_id = self.id;
        let mut ticks = crate::pace::ticks(self.n, self.rate);
        let (mut start, mut last_due) = (None, 0);
        while let Some((i, due)) = ticks.recv().await {
            start.get_or_insert(due);
            last_due = due;
            let permit = in_flight.clone().acquire_owned().await?;
            let slot = &self.step.slots[i];
            slot.due.store(due, Ordering::SeqCst);
            slot.sent.store(now_ns(), Ordering::SeqCst);
            let client = clients[i % clients.len()].clone();
            let (step, errors) = (self.step.clone(), self.errors.clone());
            tokio::spawn(async move {
                create(client, &step, &errors, step_id, i).await;
                drop(permit);
            });
            if i % 64 == 0 {
                self.bar
                    .set_position(self.step.settled.load(Ordering::Relaxed) as u64);
            }
        }
        Ok(Schedule {
            start: start.unwrap_or(last_due),
            last_due,
        })
    }

    /// Orders settled or failed so far.
    fn done(&self) -> (usize, usize) {
        (
            self.step.settled.load(Ordering::SeqCst),
            self.errors.load(Ordering::SeqCst),
        )
    }

    /// Waits until every order settled or failed (true), or until `bound`.
    async fn wait_for_results(&self, bound: u64) -> bool {
        loop {
            let (settled, errors) = self.done();
            self.bar.set_position(settled as u64);
            if settled + errors >= self.n {
                return true;
            }
            if now_ns() > bound {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// When the last order settled (ns).
    fn last_settled(&self) -> u64 {
        (0..self.n)
            .map(|i| self.step.slots[i].settled.load(Ordering::SeqCst))
            .max()
            .unwrap_or(0)
    }

    /// Lets the backlog go before the next step (up to 60 s), without
    /// counting it.
    async fn drain_backlog(&self) {
        let deadline = now_ns() + 60_000_000_000;
        loop {
            let (settled, errors) = self.done();
            if settled + errors >= self.n || now_ns() >= deadline {
                return;
            }
            self.bar.set_position(settled as u64);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Counts the orders settled by `bound` and their latencies.
    fn tally(&self, bound: u64) -> Tally {
        let ms = |a: u64, b: u64| (b as f64 - a as f64) / 1e6;
        let mut tally = Tally {
            e2e: Vec::with_capacity(self.n),
            rpc: Vec::with_capacity(self.n),
            late: Vec::with_capacity(self.n),
            settled: 0,
            paid: 0,
        };
        for s in &self.step.slots {
            let due = s.due.load(Ordering::SeqCst);
            let answered = s.answered.load(Ordering::SeqCst);
            let done = s.settled.load(Ordering::SeqCst);
            if answered != 0 {
                tally.rpc.push(ms(due, answered));
            }
            let sent = s.sent.load(Ordering::SeqCst);
            if sent != 0 {
                tally.late.push(ms(due, sent));
            }
            if done != 0 && done <= bound {
                tally.settled += 1;
                tally.e2e.push(ms(due, done));
                if s.outcome.load(Ordering::SeqCst) == 1 {
                    tally.paid += 1;
                }
            }
        }
        tally
    }

    /// Why the step is not sustained (empty: it is).
    fn failures(
        &self,
        errors: usize,
        settled_all: bool,
        tally: &Tally,
        e2e_ms: &Summary,
    ) -> Vec<String> {
        let (n, bounds) = (self.n, self.bounds);
        let mut verdict = Vec::new();
        if errors > 0 {
            verdict.push(format!("{errors} CreateOrder errors"));
        }
        if !settled_all {
            verdict.push(format!(
                "{} of {n} not settled {:.0} s after the last request",
                n - tally.settled,
                bounds.drain.as_secs_f64()
            ));
        }
        if e2e_ms.p99 > bounds.p99_ms {
            verdict.push(format!(
                "p99 {:.1} ms > {:.0} ms",
                e2e_ms.p99, bounds.p99_ms
            ));
        }
        if tally.paid < tally.settled {
            verdict.push(format!("{} orders FAILED", tally.settled - tally.paid));
        }
        verdict
    }

    /// The step's figures and verdict; ends the progress bar.
    fn report(
        &self,
        schedule: &Schedule,
        settled_all: bool,
        end: u64,
        mut tally: Tally,
        (cpu_busy, cpu_by_command): (f64, Vec<(String, f64)>),
    ) -> StepReport {
        let e2e_samples = tally.e2e.clone();
        let e2e_ms = summarize(&mut tally.e2e);
        let errors = self.errors.load(Ordering::SeqCst);
        let span_s = end.saturating_sub(schedule.start) as f64 / 1e9;
        let completed_per_s = if span_s > 0.0 {
            tally.settled as f64 / span_s
        } else {
            0.0
        };
        let not_sustained = self.failures(errors, settled_all, &tally, &e2e_ms);
        let sustained = not_sustained.is_empty();
        self.bar.finish_with_message(format!(
            "p50 {:.2} ms p99 {:.2} ms {}",
            e2e_ms.p50,
            e2e_ms.p99,
            if sustained { "ok" } else { "NOT sustained" }
        ));
        let per_1k = (tally.settled.max(1) as f64) / 1000.0;
        StepReport {
            offered_per_s: self.rate,
            seconds: self.seconds,
            sent: self.n,
            errors,
            settled: tally.settled,
            paid: tally.paid,
            completed_per_s: r3(completed_per_s),
            e2e_ms,
            create_rpc_ms: summarize(&mut tally.rpc),
            send_late_ms: summarize(&mut tally.late),
            drain_s: r3(end.saturating_sub(schedule.last_due) as f64 / 1e9),
            sustained,
            verdict: if sustained {
                "sustained".into()
            } else {
                not_sustained.join("; ")
            },
            cpu_busy: r3(cpu_busy),
            cpu_s_per_1k_orders: cpu_by_command
                .into_iter()
                .map(|(k, v)| (k, r3(v / per_1k)))
                .collect(),
            e2e_samples,
        }
    }
}

/// Step `step_id`'s order `i`: stamps its answer or counts its error.
async fn create(mut client: Orders, step: &Step, errors: &AtomicUsize, step_id: u32, i: usize) {
    let request = order(format!("s{step_id}-{i}"), i);
    match client.create_order(request).await {
        Ok(_) => step.slots[i].answered.store(now_ns(), Ordering::SeqCst),
        Err(_) => {
            errors.fetch_add(1, Ordering::SeqCst);
        }
    }
}
