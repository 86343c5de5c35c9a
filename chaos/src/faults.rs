//! The faults, injected from one loop while the load runs:
//!
//! - the relay is SIGKILLed and started again (every `relay_kill_every`,
//!   jittered ±50%), so outbox rows it published but had not deleted yet
//!   are published again;
//! - the processor aborts on its own between a settlement's commit and its
//!   ack (`PROCESSOR_CHAOS_ABORT_AFTER_COMMIT_PERMILLE`); the loop starts it
//!   again as soon as it is gone;
//! - every broker connection of the mesh is reset by the [`Proxy`]
//!   (every `broker_cut_every`);
//! - every PostgreSQL connection to the mesh's two databases except the
//!   harness's own is terminated with `pg_terminate_backend` (every
//!   `pg_terminate_every`);
//! - `poison` undecodable messages with a message id are published to the
//!   processor's queue, spread over the run.
//!
//! [`Supervisor`] restarts any binary that exits and scrapes the services'
//! `/metrics` while the faults run and afterwards.
//!
//! [`Proxy`]: crate::proxy::Proxy

use std::os::unix::process::ExitStatusExt as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::load::Progress;
use crate::mesh::{Binary, HARNESS_APP_NAME, Mesh, harness_client};
use crate::metrics::Scraper;

/// What to inject; a `None` interval turns that fault off.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    pub relay_kill_every: Option<Duration>,
    pub broker_cut_every: Option<Duration>,
    pub pg_terminate_every: Option<Duration>,
    /// The processor's abort knob while faults run (0: off).
    pub processor_abort_permille: u16,
    pub poison: usize,
    /// How long the fault phase is expected to last, to spread the poison.
    pub expected: Duration,
    pub seed: u64,
}

/// What was injected, and what exited without being asked to.
#[derive(Debug, Clone, Default)]
pub struct FaultCounts {
    pub relay_kills: u32,
    /// Processor exits by SIGABRT: the knob fired.
    pub processor_aborts: u32,
    /// Exits with an error status: a binary that gave up on a fault (e.g.
    /// its start-up migration lost its connection) and was restarted, as an
    /// orchestrator would. Designed behaviour, reported.
    pub error_exits: Vec<String>,
    /// Panics (status 101) and deaths by a signal nobody sent: bugs.
    pub crashes: Vec<String>,
    pub broker_cuts: u32,
    pub broker_connections_cut: usize,
    pub pg_kills: u32,
    pub pg_backends_terminated: i64,
    /// Message ids of the poison published (and confirmed).
    pub poison_ids: Vec<String>,
    pub seconds: f64,
}

/// Restarts what exits and keeps the metrics sums.
pub struct Supervisor {
    pub scraper: Scraper,
    pub counts: FaultCounts,
    next_scrape: Instant,
}

impl Default for Supervisor {
    fn default() -> Self {
        Self {
            scraper: Scraper::default(),
            counts: FaultCounts::default(),
            next_scrape: Instant::now(),
        }
    }
}

/// How often the services' counters are read.
const SCRAPE_EVERY: Duration = Duration::from_millis(200);

impl Supervisor {
    /// Starts again whatever exited, and scrapes when due.
    pub async fn tend(&mut self, mesh: &mut Mesh) -> anyhow::Result<()> {
        for exit in mesh.reap()? {
            let binary = exit.binary;
            let signal = exit.status.signal();
            if binary == Binary::ProcessorSvc && signal == Some(SIGABRT) {
                self.counts.processor_aborts += 1;
            } else {
                let what = format!(
                    "{} #{}: {} after {:.1} s",
                    binary.name(),
                    exit.incarnation,
                    exit.status,
                    exit.uptime.as_secs_f64(),
                );
                eprintln!(
                    "chaos: {what} (see {}); starting it again",
                    mesh.log_path(binary).display()
                );
                if signal.is_some() || exit.status.code() == Some(PANIC_EXIT_CODE) {
                    self.counts.crashes.push(what);
                } else {
                    self.counts.error_exits.push(what);
                }
            }
            mesh.spawn(binary)?;
        }
        if Instant::now() >= self.next_scrape {
            self.scrape(mesh).await;
            self.next_scrape = Instant::now() + SCRAPE_EVERY;
        }
        Ok(())
    }

    /// Reads the counters of both services' current incarnations.
    pub async fn scrape(&mut self, mesh: &Mesh) {
        for (binary, addr) in [
            (Binary::OrderSvc, mesh.order_addr),
            (Binary::ProcessorSvc, mesh.processor_addr),
        ] {
            if let Some(incarnation) = mesh.incarnation(binary) {
                self.scraper.scrape(binary, incarnation, addr).await;
            }
        }
    }
}

const SIGABRT: i32 = nix::sys::signal::Signal::SIGABRT as i32;
/// What a Rust binary exits with when a panic unwinds out of `main`.
const PANIC_EXIT_CODE: i32 = 101;

/// `every`, jittered uniformly by ±50%.
fn jittered(rng: &mut StdRng, every: Duration) -> Duration {
    every.mul_f64(rng.random_range(0.5..1.5))
}

/// Injects the faults of `plan` until `stop` fires, then publishes the
/// poison still due, restarts the processor without its abort knob and
/// returns. Progress goes to stderr every 5 s.
pub async fn run(
    mesh: &mut Mesh,
    supervisor: &mut Supervisor,
    broker: &Broker,
    plan: &FaultPlan,
    progress: &Arc<Progress>,
    orders: usize,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut injector = Injector::new(mesh, plan);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => break,
        }
        supervisor.tend(mesh).await?;
        let now = Instant::now();
        injector.inject_due(now, mesh, supervisor, broker).await?;
        injector
            .report_progress(now, mesh, supervisor, progress, orders)
            .await;
    }
    while supervisor.counts.poison_ids.len() < plan.poison {
        poison(broker, supervisor).await?;
    }
    restart_processor_without_aborts(mesh, supervisor).await?;
    supervisor.counts.seconds = injector.started.elapsed().as_secs_f64();
    Ok(())
}

/// The state of the fault loop: when each fault is next due, and the
/// harness's own database connections.
struct Injector<'a> {
    plan: &'a FaultPlan,
    started: Instant,
    rng: StdRng,
    /// `None`: that fault is off.
    next_relay_kill: Option<Instant>,
    next_broker_cut: Option<Instant>,
    next_pg_kill: Option<Instant>,
    poison_every: Duration,
    next_poison: Instant,
    next_progress: Instant,
    /// The connection that terminates the others, made when first needed.
    killer: Option<tokio_postgres::Client>,
    /// The connection that counts settled orders for the progress line.
    orders_db: Option<tokio_postgres::Client>,
    /// The mesh's two databases, whose backends are terminated.
    databases: Vec<String>,
}

impl<'a> Injector<'a> {
    fn new(mesh: &Mesh, plan: &'a FaultPlan) -> Self {
        let started = Instant::now();
        let mut rng = StdRng::seed_from_u64(plan.seed ^ 0xc4a0_5eed);
        let next_relay_kill = next(&mut rng, plan.relay_kill_every);
        let next_broker_cut = next(&mut rng, plan.broker_cut_every);
        let next_pg_kill = next(&mut rng, plan.pg_terminate_every);
        let poison_every = plan.expected / (plan.poison as u32 + 1);
        Self {
            plan,
            started,
            rng,
            next_relay_kill,
            next_broker_cut,
            next_pg_kill,
            poison_every,
            next_poison: started + poison_every,
            next_progress: started + PROGRESS_EVERY,
            killer: None,
            orders_db: None,
            databases: vec![mesh.orders_db.name.clone(), mesh.processor_db.name.clone()],
        }
    }

    /// Injects every fault that is due and draws its next time.
    async fn inject_due(
        &mut self,
        now: Instant,
        mesh: &mut Mesh,
        supervisor: &mut Supervisor,
        broker: &Broker,
    ) -> anyhow::Result<()> {
        if self.next_relay_kill.is_some_and(|t| now >= t) {
            mesh.kill(Binary::Relay).await?;
            supervisor.counts.relay_kills += 1;
            tokio::time::sleep(Duration::from_millis(self.rng.random_range(0..300))).await;
            mesh.spawn(Binary::Relay)?;
            self.next_relay_kill = next(&mut self.rng, self.plan.relay_kill_every);
        }
        if self.next_broker_cut.is_some_and(|t| now >= t) {
            supervisor.counts.broker_connections_cut += mesh.proxy.cut();
            supervisor.counts.broker_cuts += 1;
            self.next_broker_cut = next(&mut self.rng, self.plan.broker_cut_every);
        }
        if self.next_pg_kill.is_some_and(|t| now >= t) {
            match terminate_backends(&mut self.killer, &self.databases).await {
                Ok(n) => {
                    supervisor.counts.pg_kills += 1;
                    supervisor.counts.pg_backends_terminated += n;
                }
                Err(e) => eprintln!("chaos: pg_terminate_backend failed: {e:#}"),
            }
            self.next_pg_kill = next(&mut self.rng, self.plan.pg_terminate_every);
        }
        if supervisor.counts.poison_ids.len() < self.plan.poison && now >= self.next_poison {
            poison(broker, supervisor).await?;
            self.next_poison = now + self.poison_every;
        }
        Ok(())
    }

    /// The progress line, every [`PROGRESS_EVERY`].
    async fn report_progress(
        &mut self,
        now: Instant,
        mesh: &Mesh,
        supervisor: &Supervisor,
        progress: &Progress,
        orders: usize,
    ) {
        if now < self.next_progress {
            return;
        }
        let settled = settled_orders(&mut self.orders_db, &mesh.orders_db.url).await;
        let counts = &supervisor.counts;
        eprintln!(
            "chaos: {:>4.0} s  sent {}/{orders}  accepted {}  settled {}  | relay kills {}, processor aborts {}, broker cuts {}, pg kills {}, poison {}/{}",
            self.started.elapsed().as_secs_f64(),
            progress.sent.load(Ordering::Relaxed),
            progress.accepted.load(Ordering::Relaxed),
            settled.map_or("?".to_owned(), |n| n.to_string()),
            counts.relay_kills,
            counts.processor_aborts,
            counts.broker_cuts,
            counts.pg_kills,
            counts.poison_ids.len(),
            self.plan.poison,
        );
        self.next_progress = now + PROGRESS_EVERY;
    }
}

/// How often the fault loop prints its progress line.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// When a fault that is on (`every`) is next due.
fn next(rng: &mut StdRng, every: Option<Duration>) -> Option<Instant> {
    every.map(|e| Instant::now() + jittered(rng, e))
}

/// The abort knob is read at start: the processor runs without it from
/// now on. An abort while it is being stopped still counts.
async fn restart_processor_without_aborts(
    mesh: &mut Mesh,
    supervisor: &mut Supervisor,
) -> anyhow::Result<()> {
    supervisor.scrape(mesh).await;
    mesh.set_processor_abort(0);
    let status = mesh
        .terminate(Binary::ProcessorSvc, Duration::from_secs(10))
        .await;
    if status.and_then(|s| s.signal()) == Some(SIGABRT) {
        supervisor.counts.processor_aborts += 1;
    }
    mesh.spawn(Binary::ProcessorSvc)?;
    Ok(())
}

async fn poison(broker: &Broker, supervisor: &mut Supervisor) -> anyhow::Result<()> {
    let id = format!(
        "chaos-poison-{}-{}",
        supervisor.counts.poison_ids.len() + 1,
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    broker.publish_poison(&id).await.context("publish poison")?;
    supervisor.counts.poison_ids.push(id);
    Ok(())
}

/// Terminates every backend on `databases` but the harness's; returns how
/// many. Connects (to the server's `postgres` database) when needed.
async fn terminate_backends(
    killer: &mut Option<tokio_postgres::Client>,
    databases: &[String],
) -> anyhow::Result<i64> {
    if killer.as_ref().is_none_or(|c| c.is_closed()) {
        *killer = Some(harness_client(&ordermesh_testkit::server_url()).await?);
    }
    let client = killer.as_ref().expect("connected above");
    let row = client
        .query_one(
            r#"SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
               FROM pg_stat_activity
               WHERE datname = ANY($1) AND pid <> pg_backend_pid()
                 AND application_name <> $2"#,
            &[&databases, &HARNESS_APP_NAME],
        )
        .await?;
    Ok(row.get(0))
}

/// Orders PAID or FAILED so far, for the progress line.
async fn settled_orders(client: &mut Option<tokio_postgres::Client>, url: &str) -> Option<i64> {
    if client.as_ref().is_none_or(|c| c.is_closed()) {
        *client = harness_client(url).await.ok();
    }
    client
        .as_ref()?
        .query_one(
            r#"SELECT count(*) FROM orders WHERE status IN ('PAID', 'FAILED')"#,
            &[],
        )
        .await
        .ok()
        .map(|r| r.get(0))
}
