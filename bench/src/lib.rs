//! `make bench`: ordermesh against this machine's own limits.
//!
//! The bench starts the three release binaries on free ports with fresh
//! databases and exchange ([`mesh`]), funds customers and drives
//! `CreateOrder` open-loop at fixed offered rates, then searches for the
//! highest rate it sustains ([`load`]). Latencies come from events: the
//! bench's own queue on the mesh's exchange stamps every `order.created` and
//! payment result as it arrives ([`observe`]). In the same run it measures
//! the relay alone on a probe database ([`relay_probe`]), the raw capacity
//! of PostgreSQL and RabbitMQ ([`limits`]), each binary's memory and where
//! the CPU went ([`procfs`]), optionally a system-wide profile
//! ([`profile`]), and writes `report.json`, a table and `latency.svg`
//! ([`report`]).

pub mod cost;
pub mod limits;
pub mod load;
pub mod mesh;
pub mod observe;
pub mod pace;
pub mod procfs;
pub mod profile;
pub mod relay_probe;
pub mod report;
pub mod stats;
pub mod watch;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use serde_json::json;
use tonic::transport::Endpoint;

use crate::load::{Bounds, StepReport, Stepper};

/// Drives the real binaries and measures them; see `docs/BENCH.md`.
#[derive(Debug, Clone, Parser)]
#[command(version)]
pub struct Args {
    /// Where order-svc, processor-svc and relay are (default: beside this
    /// binary).
    #[arg(long, env = "BENCH_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Where report.json, latency.svg, logs and flamegraphs go (default:
    /// <target>/bench).
    #[arg(long, env = "BENCH_OUT")]
    pub out: Option<PathBuf>,
    /// Fixed offered rates, orders/s.
    #[arg(
        long,
        env = "BENCH_RATES",
        value_delimiter = ',',
        default_value = "200,1000"
    )]
    pub rates: Vec<f64>,
    /// Seconds of load per step.
    #[arg(long, env = "BENCH_STEP_SECONDS", default_value_t = 10.0)]
    pub step_seconds: f64,
    /// Steps of the search for the maximum sustained rate (0: no search).
    #[arg(long, env = "BENCH_SEARCH_STEPS", default_value_t = 6)]
    pub search_steps: usize,
    /// A step is sustained only if end-to-end p99 stays under this.
    #[arg(long, env = "BENCH_P99_BOUND_MS", default_value_t = 100.0)]
    pub p99_bound_ms: f64,
    /// ... and every order settles within this after the last request.
    #[arg(long, env = "BENCH_DRAIN_BOUND_S", default_value_t = 3.0)]
    pub drain_bound_s: f64,
    /// Record a system-wide perf profile at the highest sustained rate and
    /// draw flamegraphs (needs Debian's linux-perf).
    #[arg(long, env = "BENCH_PROFILE", value_parser = clap::builder::BoolishValueParser::new())]
    pub profile: bool,
    /// Extra environment for the three binaries (KEY=VALUE, repeatable),
    /// e.g. RELAY_POLL_MS=0 to compare before/after a change.
    #[arg(long = "env", value_parser = parse_kv)]
    pub env: Vec<(String, String)>,
    /// Also copy latency.svg here (e.g. docs/img).
    #[arg(long, env = "BENCH_PUBLISH_DIR")]
    pub publish_dir: Option<PathBuf>,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

/// Runs the whole bench; the mesh is torn down whatever happens.
pub async fn run(args: Args) -> anyhow::Result<report::Run> {
    let started = Instant::now();
    let exe_dir = std::env::current_exe()?
        .parent()
        .context("binary directory")?
        .to_owned();
    let bin_dir = args.bin_dir.clone().unwrap_or_else(|| exe_dir.clone());
    let out = args.out.clone().unwrap_or_else(|| {
        exe_dir
            .parent()
            .map_or_else(|| PathBuf::from("bench"), |t| t.join("bench"))
    });
    std::fs::create_dir_all(&out)?;
    let quiet = !std::io::IsTerminal::is_terminal(&std::io::stderr());
    say(&format!(
        "binaries from {}, results to {}",
        bin_dir.display(),
        out.display()
    ));

    let mut mesh = mesh::Mesh::prepare(&bin_dir, &out.join("logs"), &args.env).await?;
    let registry = Arc::new(observe::Registry::default());
    let observer = observe::start(&mesh.broker.config, registry.clone()).await?;
    let result = measure(&args, &mut mesh, &registry, &out, quiet).await;
    mesh.stop().await;
    let _ = observer.close(200, "bench done".into()).await;
    let (mut run, pg_version) = result?;
    run.seconds = started.elapsed().as_secs_f64();
    run.machine["rabbitmq"] = json!(rabbitmq_version().await);
    run.machine["postgresql"] = json!(pg_version);
    let report = run.json();
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&report)? + "\n",
    )?;
    let svg = run.svg();
    std::fs::write(out.join("latency.svg"), &svg)?;
    if let Some(dir) = &args.publish_dir {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("bench-latency.svg"), &svg)?;
    }
    println!("{}", run.table());
    say(&format!(
        "wrote {}/report.json and {}/latency.svg",
        out.display(),
        out.display()
    ));
    Ok(run)
}

/// The registry's step id of the cost measurement's orders, apart from the
/// load steps' (1, 2, ...).
const COST_STEP: u32 = 10_000;
/// The registry's step id of the WatchOrder step's orders.
const WATCH_STEP: u32 = 10_001;

fn say(text: &str) {
    eprintln!("bench: {text}");
}

/// Starts the mesh and funds the customers; measures this machine's limits
/// and the relay alone; warms up; measures a WatchOrder stream and the
/// cost of one order on a quiet mesh; runs the fixed-rate steps, searches
/// for the maximum sustained rate and profiles it; and reads each binary's
/// memory. Returns the run (without its total time) and PostgreSQL's
/// version.
async fn measure(
    args: &Args,
    mesh: &mut mesh::Mesh,
    registry: &Arc<observe::Registry>,
    out: &std::path::Path,
    quiet: bool,
) -> anyhow::Result<(report::Run, String)> {
    say("starting order-svc, processor-svc and relay");
    mesh.start().await?;
    let clients = connect_and_fund(mesh).await?;
    let limits = measure_limits(mesh).await?;
    let (commit_to_publish, drain_rows_per_s) = measure_relay(mesh, registry).await?;
    let bounds = Bounds {
        drain: Duration::from_secs_f64(args.drain_bound_s),
        p99_ms: args.p99_bound_ms,
    };
    let mut stepper = Stepper::new(clients, registry.clone(), bounds, quiet);
    stepper.run_step(200.0, 3.0, "warm-up 200/s").await?;
    mesh.check_alive()?;
    // On a quiet mesh, before any overload step can leave work behind.
    let watch = measure_watch(&stepper.clients, registry).await?;
    mesh.check_alive()?;
    let cost = measure_cost(mesh, &stepper.clients, registry).await?;
    mesh.check_alive()?;
    let fixed = fixed_steps(args, mesh, &mut stepper).await?;
    let (search, max_sustained) = search(args, mesh, &mut stepper, &fixed).await?;
    let profile = if args.profile {
        profile(mesh, &mut stepper, out, max_sustained).await?
    } else {
        None
    };
    let pg_version = pg_version(&mesh.probe_db.url).await.unwrap_or_default();
    Ok((
        report::Run {
            date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
            machine: machine(),
            fixed,
            search,
            watch,
            max_sustained,
            commit_to_publish,
            drain_rows_per_s,
            limits,
            rss_mib: rss_mib(mesh),
            profile,
            cost,
            seconds: 0.0,
        },
        pg_version,
    ))
}

/// Connects the load's clients (four HTTP/2 connections) and funds the
/// customers.
async fn connect_and_fund(mesh: &mesh::Mesh) -> anyhow::Result<Vec<mesh::Orders>> {
    let mut clients = Vec::new();
    for _ in 0..4 {
        let channel = Endpoint::from_shared(format!("http://{}", mesh.order_addr))?
            .tcp_nodelay(true)
            .connect()
            .await?;
        clients.push(mesh.orders(channel));
    }
    let accounts = Endpoint::from_shared(format!("http://{}", mesh.processor_addr))?
        .connect()
        .await?;
    load::fund(mesh.accounts(accounts)).await?;
    say(&format!("{} customers funded", load::CUSTOMERS));
    Ok(clients)
}

/// PostgreSQL's and RabbitMQ's own capacity, without ordermesh.
async fn measure_limits(mesh: &mesh::Mesh) -> anyhow::Result<limits::Limits> {
    say("limits: PostgreSQL order+outbox transactions");
    let (pg_tx, pg_tx_notify, pg_commit) = limits::postgres(4.0).await?;
    say("limits: RabbitMQ persistent publishes with confirms");
    let (amqp_rate, amqp_confirm) =
        limits::rabbitmq(&mesh.broker.config, &mesh.broker.queue("limits"), 4.0).await?;
    let limits = limits::Limits {
        pg_order_tx_per_s: pg_tx,
        pg_order_tx_per_s_notify_each: pg_tx_notify,
        pg_commit_ms: pg_commit,
        amqp_confirmed_publish_per_s: amqp_rate,
        amqp_confirm_ms: amqp_confirm,
    };
    say(&format!(
        "limits: PostgreSQL {pg_tx:.0} tx/s ({pg_tx_notify:.0} with NOTIFY each), commit p50 {:.2} ms; RabbitMQ {amqp_rate:.0} msg/s, confirm p50 {:.2} ms",
        limits.pg_commit_ms.p50, limits.amqp_confirm_ms.p50
    ));
    Ok(limits)
}

/// The relay alone on the probe database: commit-to-publish latency, and
/// how fast it drains a backlog (rows/s).
async fn measure_relay(
    mesh: &mesh::Mesh,
    registry: &Arc<observe::Registry>,
) -> anyhow::Result<(stats::Summary, f64)> {
    say("relay: commit-to-publish at 200 rows/s, then a 30,000-row backlog");
    let commit_to_publish =
        relay_probe::commit_to_publish(&mesh.probe_db.url, registry, 200.0, 5.0).await?;
    let drain_rows_per_s = relay_probe::drain_rate(&mesh.probe_db.url, registry, 30_000).await?;
    say(&format!(
        "relay: commit->publish p50 {:.3} ms p99 {:.3} ms; drain {drain_rows_per_s:.0} rows/s",
        commit_to_publish.p50, commit_to_publish.p99
    ));
    Ok((commit_to_publish, drain_rows_per_s))
}

/// Create->PAID as a WatchOrder stream sees it, once the machine is quiet.
async fn measure_watch(
    clients: &[mesh::Orders],
    registry: &observe::Registry,
) -> anyhow::Result<watch::WatchReport> {
    say("watch: create->PAID as a WatchOrder stream sees it, 200 orders/s for 3 s");
    load::settle().await;
    let watch = watch::run(clients, registry, WATCH_STEP, 200.0, 3.0).await?;
    say(&format!(
        "watch: {} of {} PAID on their stream, e2e p50 {:.2} ms p99 {:.2} ms; first message p50 {:.2} ms; \
         the same orders' events p50 {:.2} ms, the stream {:.2} ms after its event (p50)",
        watch.paid,
        watch.orders,
        watch.e2e_ms.p50,
        watch.e2e_ms.p99,
        watch.first_message_ms.p50,
        watch.event_ms.p50,
        watch.stream_after_event_ms.p50
    ));
    Ok(watch)
}

/// Statements and commits per order, 20 orders one at a time.
async fn measure_cost(
    mesh: &mesh::Mesh,
    clients: &[mesh::Orders],
    registry: &Arc<observe::Registry>,
) -> anyhow::Result<cost::Cost> {
    say("cost: 20 orders one at a time, statements and commits per order");
    let cost = cost::trickle(
        &ordermesh_testkit::server_url(),
        clients,
        registry,
        COST_STEP,
        &[
            ("orders", mesh.orders_db.name.as_str()),
            ("processor", mesh.processor_db.name.as_str()),
        ],
        20,
    )
    .await?;
    say(&format!(
        "cost: {} statements, {:.1} commits per order",
        cost.statements
            .map_or_else(|| "?".to_owned(), |s| format!("{s:.1}")),
        cost.commits
    ));
    Ok(cost)
}

/// A step at each of `--rates`.
async fn fixed_steps(
    args: &Args,
    mesh: &mut mesh::Mesh,
    stepper: &mut Stepper,
) -> anyhow::Result<Vec<StepReport>> {
    let mut fixed = Vec::new();
    for &rate in &args.rates {
        let r = stepper
            .run_step(rate, args.step_seconds, &format!("{rate:.0}/s"))
            .await?;
        say(&line(&r));
        mesh.check_alive()?;
        fixed.push(r);
    }
    Ok(fixed)
}

/// The search for the maximum sustained rate: grow past the best sustained
/// fixed rate until a step fails, then bisect, for at most
/// `--search-steps` steps. Returns the steps and the highest rate
/// sustained.
async fn search(
    args: &Args,
    mesh: &mut mesh::Mesh,
    stepper: &mut Stepper,
    fixed: &[StepReport],
) -> anyhow::Result<(Vec<StepReport>, f64)> {
    let mut lo = fixed
        .iter()
        .filter(|r| r.sustained)
        .map(|r| r.offered_per_s)
        .fold(0.0, f64::max);
    let mut hi = fixed
        .iter()
        .filter(|r| !r.sustained && r.offered_per_s > lo)
        .map(|r| r.offered_per_s)
        .fold(f64::INFINITY, f64::min);
    let mut search = Vec::new();
    for _ in 0..args.search_steps {
        let rate = if hi.is_infinite() {
            (lo.max(100.0) * 1.4).round()
        } else {
            if hi / lo.max(1.0) <= 1.08 {
                break;
            }
            ((lo + hi) / 2.0).round()
        };
        let r = stepper
            .run_step(rate, args.step_seconds, &format!("search {rate:.0}/s"))
            .await?;
        say(&line(&r));
        mesh.check_alive()?;
        if r.sustained {
            lo = lo.max(rate);
        } else {
            hi = hi.min(rate);
        }
        search.push(r);
    }
    Ok((search, lo))
}

/// System-wide and per-binary perf flamegraphs during a step at the
/// highest sustained rate (at least 200/s); `None` without perf.
async fn profile(
    mesh: &mesh::Mesh,
    stepper: &mut Stepper,
    out: &std::path::Path,
    max_sustained: f64,
) -> anyhow::Result<Option<serde_json::Value>> {
    if !profile::available().await {
        say("profile: perf not found (apt-get install linux-perf); skipped");
        return Ok(None);
    }
    let rate = max_sustained.max(200.0);
    say(&format!(
        "profile: perf record -a during a {rate:.0}/s step"
    ));
    let mut recordings = vec![(
        "all CPUs".to_owned(),
        profile::start(out, "system", None, 6.0)?,
    )];
    for (name, pid) in mesh.pids() {
        recordings.push((name.to_owned(), profile::start(out, name, Some(pid), 6.0)?));
    }
    let r = stepper
        .run_step(rate, 6.0, &format!("profile {rate:.0}/s"))
        .await?;
    let mut perf = serde_json::Map::new();
    for (name, rec) in recordings {
        let title = format!("{name} at {rate:.0} orders/s");
        perf.insert(name, rec.finish(out, &title).await?);
    }
    Ok(Some(json!({"rate": rate, "step": r.verdict, "perf": perf})))
}

/// Each binary's resident memory now and at its peak (MiB).
fn rss_mib(mesh: &mesh::Mesh) -> Vec<(String, f64, f64)> {
    mesh.pids()
        .into_iter()
        .map(|(name, pid)| {
            let (rss, hwm) = procfs::rss_mib(pid).unwrap_or((0.0, 0.0));
            (name.to_owned(), rss, hwm)
        })
        .collect()
}

fn line(r: &StepReport) -> String {
    format!(
        "{:.0}/s offered: {:.1}/s completed, e2e p50 {:.2} ms p99 {:.2} ms p99.9 {:.2} ms, cpu {:.0}%: {}",
        r.offered_per_s,
        r.completed_per_s,
        r.e2e_ms.p50,
        r.e2e_ms.p99,
        r.e2e_ms.p999,
        r.cpu_busy * 100.0,
        r.verdict
    )
}

async fn pg_version(url: &str) -> anyhow::Result<String> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(connection);
    let v: String = client.query_one("SHOW server_version", &[]).await?.get(0);
    drop(client);
    driver.abort();
    Ok(v)
}

/// `rabbitmqctl version`, when the broker is local and the tool is there.
async fn rabbitmq_version() -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new("rabbitmqctl")
            .arg("version")
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await;
    match out {
        Ok(Ok(o)) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        _ => String::new(),
    }
}

/// CPU model, cores, memory and kernel of this machine.
fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kb| stats::r3(kb / 1024.0 / 1024.0));
    json!({
        "cpu": model,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "memory_gib": mem_gib,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    })
}
