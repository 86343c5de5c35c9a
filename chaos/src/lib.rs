//! `make chaos`: ordermesh's "nothing lost, nothing twice" under faults.
//!
//! The harness starts the three real binaries on free ports with fresh
//! databases and exchange ([`mesh`]), their broker connections running
//! through a fault-injecting TCP proxy ([`proxy`]). It opens and funds
//! customer accounts, then sends orders open-loop at a fixed rate
//! ([`load`]) while it kills the relay, lets the processor crash between
//! commit and ack, resets every broker connection, terminates the
//! services' PostgreSQL connections and publishes poison ([`faults`]).
//! Once the faults stop and the mesh is quiet (bounded), it stops the
//! binaries and checks the stores against what it sent ([`ledger`]): no
//! order lost, none debited twice, nothing stuck in an outbox or a queue,
//! only the poison dead-lettered, and how many duplicate deliveries the
//! inboxes absorbed ([`metrics`]). [`run`] prints the ledger and returns
//! it; any failed check makes [`Ledger::is_clean`] false.
//!
//! The harness's own connections go straight to the servers ([`broker`],
//! [`mesh::harness_client`]); its gRPC clients are made in one place
//! ([`client`]).

pub mod broker;
pub mod client;
pub mod faults;
pub mod ledger;
pub mod load;
pub mod mesh;
pub mod metrics;
pub mod proxy;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::faults::{FaultPlan, Supervisor};
pub use crate::ledger::Ledger;
use crate::load::{Plan, Progress};
use crate::mesh::{Binary, Mesh, harness_client};

/// Runs the real binaries under load and faults, then checks the ledger.
#[derive(Debug, Clone, Parser)]
#[command(version)]
pub struct Args {
    /// Where order-svc, processor-svc and relay are (default: beside this
    /// binary).
    #[arg(long, env = "CHAOS_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Where the binaries' logs go (default: <target>/chaos).
    #[arg(long, env = "CHAOS_OUT")]
    pub out: Option<PathBuf>,
    /// Orders to send.
    #[arg(long, env = "CHAOS_ORDERS", default_value_t = 5_000)]
    pub orders: usize,
    /// Offered rate, orders/s.
    #[arg(long, env = "CHAOS_RATE", default_value_t = 100.0)]
    pub rate: f64,
    /// Customers the orders are spread over.
    #[arg(long, env = "CHAOS_CUSTOMERS", default_value_t = 50)]
    pub customers: usize,
    /// How long faults are injected, in seconds (default: until every
    /// order is accepted).
    #[arg(long, env = "CHAOS_FAULT_SECONDS")]
    pub fault_seconds: Option<f64>,
    /// Mean seconds between relay SIGKILLs (0: never).
    #[arg(long, env = "CHAOS_RELAY_KILL_EVERY", default_value_t = 5.0)]
    pub relay_kill_every: f64,
    /// Mean seconds between resets of every broker connection (0: never).
    #[arg(long, env = "CHAOS_BROKER_CUT_EVERY", default_value_t = 4.0)]
    pub broker_cut_every: f64,
    /// Mean seconds between terminations of the mesh's PostgreSQL
    /// connections (0: never).
    #[arg(long, env = "CHAOS_PG_TERMINATE_EVERY", default_value_t = 3.0)]
    pub pg_terminate_every: f64,
    /// The processor aborts after this many of every 1,000 committed
    /// settlements, before the ack (0: never).
    #[arg(long, env = "CHAOS_PROCESSOR_ABORT_PERMILLE", default_value_t = 3)]
    pub processor_abort_permille: u16,
    /// Undecodable messages published to the processor's queue.
    #[arg(long, env = "CHAOS_POISON", default_value_t = 10)]
    pub poison: usize,
    /// After the faults, how long the mesh may take to go quiet (s).
    #[arg(long, env = "CHAOS_QUIESCE_SECONDS", default_value_t = 90.0)]
    pub quiesce_seconds: f64,
    /// Bound on the load: orders not accepted by then count as refused (s).
    #[arg(long, env = "CHAOS_DEADLINE_SECONDS", default_value_t = 300.0)]
    pub deadline_seconds: f64,
    /// Seed of the order plan and the fault timing (default: random).
    #[arg(long, env = "CHAOS_SEED")]
    pub seed: Option<u64>,
}

fn say(text: &str) {
    eprintln!("chaos: {text}");
}

fn every(seconds: f64) -> Option<Duration> {
    (seconds > 0.0).then(|| Duration::from_secs_f64(seconds))
}

/// Runs the whole thing, prints the ledger and returns it. The mesh, its
/// databases and its queues are removed whatever happens.
pub async fn run(args: Args) -> anyhow::Result<Ledger> {
    let started = Instant::now();
    let seed = args.seed.unwrap_or_else(rand::random);
    let exe_dir = std::env::current_exe()?
        .parent()
        .context("binary directory")?
        .to_owned();
    let bin_dir = args.bin_dir.clone().unwrap_or_else(|| exe_dir.clone());
    let out = args.out.clone().unwrap_or_else(|| {
        exe_dir
            .parent()
            .map_or_else(|| PathBuf::from("chaos"), |t| t.join("chaos"))
    });
    let log_dir = out.join(format!("logs-{seed}"));
    say(&format!(
        "{} orders at {}/s, seed {seed}; binaries from {}, logs in {}",
        args.orders,
        args.rate,
        bin_dir.display(),
        log_dir.display()
    ));

    let mut mesh = Mesh::prepare(&bin_dir, &log_dir).await?;
    let broker = Broker::connect(&mesh.broker.config).await?;
    let result = chaos(&args, seed, started, &mut mesh, &broker).await;
    mesh.stop().await;
    let result = match result {
        Ok(facts) => ledger::collect(&mesh, &broker, &facts.as_run_facts(started)).await,
        Err(e) => Err(e),
    };
    broker.close().await;
    let ledger = result?;
    println!("{}", ledger.table());
    say(&format!("logs of this run: {}", log_dir.display()));
    Ok(ledger)
}

/// What [`chaos`] leaves for the ledger.
struct Facts {
    plan: Arc<Plan>,
    load: load::LoadReport,
    supervisor: Supervisor,
    /// Processor, then order-svc: processes started, duplicates logged.
    consumers: [(Binary, u32, u64); 2],
    quiet_after: Result<f64, f64>,
}

impl Facts {
    fn as_run_facts(&self, started: Instant) -> ledger::RunFacts<'_> {
        ledger::RunFacts {
            plan: &self.plan,
            load: &self.load,
            faults: &self.supervisor.counts,
            consumers: self
                .consumers
                .map(|(binary, processes, logged_duplicates)| ledger::Consumer {
                    binary,
                    metrics: self.supervisor.scraper.total(binary),
                    processes,
                    logged_duplicates,
                }),
            quiet_after: self.quiet_after,
            total_seconds: started.elapsed().as_secs_f64(),
        }
    }
}

/// Starts the mesh and funds the accounts, sends the orders while the
/// faults run, stops the faults (after `--fault-seconds`, or once the load
/// is done), waits (bounded) for the mesh to go quiet and gathers what the
/// ledger needs besides the stores.
async fn chaos(
    args: &Args,
    seed: u64,
    started: Instant,
    mesh: &mut Mesh,
    broker: &Broker,
) -> anyhow::Result<Facts> {
    let deadline = started + Duration::from_secs_f64(args.deadline_seconds);
    let (clients, plan, progress) = start(args, seed, deadline, mesh).await?;
    let load_done = CancellationToken::new();
    let load = spawn_load(&clients, &plan, args.rate, deadline, &progress, &load_done);
    let fault_plan = fault_plan(args, seed);
    let stop = CancellationToken::new();
    let mut supervisor = Supervisor::default();
    let (faulted, ()) = tokio::join!(
        faults::run(
            mesh,
            &mut supervisor,
            broker,
            &fault_plan,
            &progress,
            args.orders,
            stop.clone()
        ),
        stop_faults(args.fault_seconds, deadline, load_done, stop)
    );
    if let Err(e) = faulted {
        load.abort();
        return Err(e);
    }
    say("faults stopped; waiting for the load, then for quiet");
    let load = load.await.context("the load task")?;
    let quiet_after = wait_for_quiet(mesh, broker, &mut supervisor, args.quiesce_seconds).await?;
    supervisor.scrape(mesh).await;
    let consumers = [
        consumer(mesh, Binary::ProcessorSvc)?,
        consumer(mesh, Binary::OrderSvc)?,
    ];
    Ok(Facts {
        plan,
        load,
        consumers,
        supervisor,
        quiet_after,
    })
}

/// Starts the three binaries, connects the harness's clients and opens and
/// funds the plan's accounts.
async fn start(
    args: &Args,
    seed: u64,
    deadline: Instant,
    mesh: &mut Mesh,
) -> anyhow::Result<(client::Clients, Arc<Plan>, Arc<Progress>)> {
    say("starting order-svc, processor-svc and relay");
    mesh.set_processor_abort(args.processor_abort_permille);
    mesh.start().await?;
    let clients = client::connect(mesh.order_addr, mesh.processor_addr, &mesh.jwt_secret).await?;
    let plan = Arc::new(Plan::new(args.orders, args.customers, seed));
    let progress = Arc::new(Progress::default());
    load::open_accounts(&clients, &plan, deadline, &progress).await?;
    say(&format!(
        "{} accounts funded; load and faults start",
        plan.customers.len()
    ));
    Ok((clients, plan, progress))
}

/// Sends the plan's orders on a task of its own; `done` fires when it ends.
fn spawn_load(
    clients: &client::Clients,
    plan: &Arc<Plan>,
    rate: f64,
    deadline: Instant,
    progress: &Arc<Progress>,
    done: &CancellationToken,
) -> tokio::task::JoinHandle<load::LoadReport> {
    let (clients, plan, progress, done) = (
        clients.clone(),
        plan.clone(),
        progress.clone(),
        done.clone(),
    );
    tokio::spawn(async move {
        let report = load::run(&clients, &plan, rate, deadline, &progress).await;
        done.cancel();
        report
    })
}

fn fault_plan(args: &Args, seed: u64) -> FaultPlan {
    FaultPlan {
        relay_kill_every: every(args.relay_kill_every),
        broker_cut_every: every(args.broker_cut_every),
        pg_terminate_every: every(args.pg_terminate_every),
        processor_abort_permille: args.processor_abort_permille,
        poison: args.poison,
        expected: args
            .fault_seconds
            .map(Duration::from_secs_f64)
            .unwrap_or_else(|| Duration::from_secs_f64(args.orders as f64 / args.rate.max(0.001))),
        seed,
    }
}

/// Fires `stop` after `fault_seconds`, or (without it) once the load is
/// done; at the load's deadline in any case.
async fn stop_faults(
    fault_seconds: Option<f64>,
    deadline: Instant,
    load_done: CancellationToken,
    stop: CancellationToken,
) {
    let until = tokio::time::sleep_until(deadline);
    match fault_seconds {
        Some(s) => tokio::select! {
            () = tokio::time::sleep(Duration::from_secs_f64(s)) => {}
            () = until => {}
        },
        None => tokio::select! {
            () = load_done.cancelled() => {}
            () = until => {}
        },
    }
    stop.cancel();
}

/// Tends the mesh until it is quiet ([`is_quiet`]) or `quiesce_seconds`
/// have passed; returns after how long, `Err` if it never was.
async fn wait_for_quiet(
    mesh: &mut Mesh,
    broker: &Broker,
    supervisor: &mut Supervisor,
    quiesce_seconds: f64,
) -> anyhow::Result<Result<f64, f64>> {
    let quiet_from = Instant::now();
    let quiet_deadline = quiet_from + Duration::from_secs_f64(quiesce_seconds);
    let quiet_after = loop {
        supervisor.tend(mesh).await?;
        if is_quiet(mesh, broker, supervisor.counts.poison_ids.len())
            .await
            .unwrap_or(false)
        {
            break Ok(quiet_from.elapsed().as_secs_f64());
        }
        if Instant::now() >= quiet_deadline {
            break Err(quiet_from.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    match quiet_after {
        Ok(t) => say(&format!("quiet after {t:.1} s; stopping the mesh")),
        Err(t) => say(&format!(
            "NOT quiet after {t:.0} s; stopping the mesh anyway"
        )),
    }
    Ok(quiet_after)
}

/// A consuming service: how many processes it took, and the duplicates
/// their logs show.
fn consumer(mesh: &Mesh, binary: Binary) -> anyhow::Result<(Binary, u32, u64)> {
    Ok((
        binary,
        mesh.starts(binary),
        metrics::logged_duplicates(binary, &mesh.log_path(binary))?,
    ))
}

/// Every order terminal, both outboxes empty, no message waiting in a work
/// or retry queue, and the processor's dead-letter queue holding (at least:
/// dead-lettering is at least once) the `poison` messages.
async fn is_quiet(mesh: &Mesh, broker: &Broker, poison: usize) -> anyhow::Result<bool> {
    let orders = harness_client(&mesh.orders_db.url).await?;
    let open: i64 = orders
        .query_one(
            r#"SELECT (SELECT count(*) FROM orders WHERE status NOT IN ('PAID', 'FAILED'))
                    + (SELECT count(*) FROM outbox)"#,
            &[],
        )
        .await?
        .get(0);
    if open > 0 {
        return Ok(false);
    }
    let processor = harness_client(&mesh.processor_db.url).await?;
    let outbox: i64 = processor
        .query_one(r#"SELECT count(*) FROM outbox"#, &[])
        .await?
        .get(0);
    let dlq = ordermesh_messaging::amqp::dead_letter_queue(&mesh.processor_queue);
    Ok(outbox == 0
        && broker.waiting(&mesh.waiting_queues()?).await?.is_empty()
        && broker.ready(&dlq).await? as usize >= poison)
}
