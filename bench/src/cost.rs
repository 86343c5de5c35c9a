//! What one order costs PostgreSQL at a trickle: SQL statements and commits
//! per order in each service's database, orders sent one at a time.
//!
//! Statements come from the server's log with `log_statement = all`,
//! switched on for the measurement (`ALTER SYSTEM`, then reset): one
//! `statement:` or `execute` line per statement, attributed by the
//! `user@database` of the log line prefix. Commits too: each `COMMIT`, and
//! each statement a backend runs outside `BEGIN ... COMMIT` (its own
//! transaction). Without the log, commits come from
//! `pg_stat_database.xact_commit`, which lags up to 10 s per backend. The
//! log file is `BENCH_PG_LOG` or Debian's `/var/log/postgresql/
//! postgresql-*-main.log`; when it cannot be read, statements are not
//! counted. Background work (readiness probes, the relay's backlog gauge and
//! rebalancing) is measured in an idle window as long as the busy one and
//! subtracted.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::mesh::Orders;
use crate::observe::{Registry, Step};

/// PostgreSQL 15 flushes a backend's statistics up to 10 s after its last
/// transaction: wait that long before reading them.
const STATS_LAG: Duration = Duration::from_millis(11_000);

/// The pause between two orders of the trickle, longer than the relay's
/// `RELAY_IDLE_AFTER_MS`.
const TRICKLE_GAP: Duration = Duration::from_millis(300);

/// One database's share of an order.
#[derive(Debug, Clone, Serialize)]
pub struct DbCost {
    pub database: String,
    /// SQL statements per order (`None`: the server log was not readable).
    pub statements: Option<f64>,
    pub commits: f64,
}

/// Per order, per database, and the sum.
#[derive(Debug, Clone, Serialize)]
pub struct Cost {
    pub orders: usize,
    pub per_database: Vec<DbCost>,
    pub statements: Option<f64>,
    pub commits: f64,
}

/// Counters of the databases at one moment.
struct Snapshot {
    commits: Vec<i64>,
    log_len: Option<u64>,
}

/// Sends `orders` orders one at a time (each waits for its payment result)
/// and returns what they cost `databases` (label, database name).
pub async fn trickle(
    server_url: &str,
    clients: &[Orders],
    registry: &Arc<Registry>,
    step_id: u32,
    databases: &[(&str, &str)],
    orders: usize,
) -> anyhow::Result<Cost> {
    let (admin, driver) = connect(server_url).await?;
    let log = log_file();
    // One statement each: ALTER SYSTEM refuses to run in the implicit
    // transaction of a multi-statement query.
    admin
        .batch_execute("ALTER SYSTEM SET log_statement = 'all'")
        .await
        .context("turn the statement log on")?;
    admin.batch_execute("SELECT pg_reload_conf()").await?;
    let result = async {
        let windows = Windows {
            admin: &admin,
            databases,
            log: log.as_ref(),
        };
        let (busy, idle) = windows
            .measure(|| send(clients, registry, step_id, orders))
            .await?;
        let per_database = databases
            .iter()
            .enumerate()
            .map(|(i, (label, name))| db_cost(label, name, i, &busy, &idle, orders))
            .collect();
        anyhow::Ok(Cost::sum(orders, per_database))
    }
    .await;
    admin
        .batch_execute("ALTER SYSTEM RESET log_statement")
        .await
        .context("turn the statement log off")?;
    admin.batch_execute("SELECT pg_reload_conf()").await?;
    driver.abort();
    result
}

/// What the databases did over a stretch of time: their counters at both
/// ends, and the server log written meanwhile (when it can be read).
struct Window {
    from: Snapshot,
    to: Snapshot,
    lines: Option<String>,
}

impl Window {
    /// Commits in database `i` by the statistics.
    fn stat_commits(&self, i: usize) -> f64 {
        (self.to.commits[i] - self.from.commits[i]) as f64
    }
}

/// Reads the counters of `databases` around a busy and an idle window.
struct Windows<'a> {
    admin: &'a tokio_postgres::Client,
    databases: &'a [(&'a str, &'a str)],
    log: Option<&'a PathBuf>,
}

impl Windows<'_> {
    /// Busy: `work`, then the stragglers' statistics. Then idle as long,
    /// for the background.
    async fn measure<F, Fut>(&self, work: F) -> anyhow::Result<(Window, Window)>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>>,
    {
        // The statistics of the steps before must land before the first
        // snapshot, not in the busy window.
        tokio::time::sleep(STATS_LAG).await;
        let before = self.snapshot().await?;
        let started = Instant::now();
        work().await?;
        // order-svc applies the result just after the bench sees it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let busy_for = started.elapsed();
        let busy_log = log_len(self.log);
        tokio::time::sleep(STATS_LAG).await;
        let after = self.snapshot().await?;
        let idle_from = self.snapshot().await?;
        tokio::time::sleep(busy_for).await;
        let idle_log = log_len(self.log);
        tokio::time::sleep(STATS_LAG).await;
        let idle_to = self.snapshot().await?;
        let busy = self.window(before, after, busy_log);
        let idle = self.window(idle_from, idle_to, idle_log);
        Ok((busy, idle))
    }

    async fn snapshot(&self) -> anyhow::Result<Snapshot> {
        snapshot(self.admin, self.databases, self.log).await
    }

    /// The window from `from` to `to`, its log read up to `log_end`.
    fn window(&self, from: Snapshot, to: Snapshot, log_end: Option<u64>) -> Window {
        let lines = read_between(self.log, from.log_len, log_end);
        Window { from, to, lines }
    }
}

/// Database `i`'s share of an order: busy minus idle, per order.
fn db_cost(
    label: &str,
    name: &str,
    i: usize,
    busy: &Window,
    idle: &Window,
    orders: usize,
) -> DbCost {
    let (commits, statements) = match (&busy.lines, &idle.lines) {
        // The log's count where it can be read: the statistics reach
        // pg_stat_database up to 10 s late, per backend.
        (Some(busy), Some(idle)) => (
            count_commits(busy, name) as f64 - count_commits(idle, name) as f64,
            Some(count_statements(busy, name) as f64 - count_statements(idle, name) as f64),
        ),
        _ => (busy.stat_commits(i) - idle.stat_commits(i), None),
    };
    DbCost {
        database: label.to_owned(),
        statements: statements.map(|s| crate::stats::r3(s / orders as f64)),
        commits: crate::stats::r3(commits / orders as f64),
    }
}

impl Cost {
    /// The databases' shares and their sum (no statements when any
    /// database's are unknown).
    fn sum(orders: usize, per_database: Vec<DbCost>) -> Self {
        let statements = per_database
            .iter()
            .map(|d| d.statements)
            .sum::<Option<f64>>()
            .map(crate::stats::r3);
        let commits = crate::stats::r3(per_database.iter().map(|d| d.commits).sum());
        Cost {
            orders,
            per_database,
            statements,
            commits,
        }
    }
}

async fn connect(
    url: &str,
) -> anyhow::Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>)> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .context("connect to PostgreSQL as its administrator")?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((client, driver))
}

async fn send(
    clients: &[Orders],
    registry: &Arc<Registry>,
    step_id: u32,
    orders: usize,
) -> anyhow::Result<()> {
    let step = Arc::new(Step::new(orders));
    registry.add_step(step_id, step.clone());
    let mut client = clients[0].clone();
    for i in 0..orders {
        let id = format!("s{step_id}-{i}");
        client
            .create_order(crate::load::order(id, i))
            .await
            .context("CreateOrder")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while step.slots[i].settled.load(Ordering::SeqCst) == 0 {
            anyhow::ensure!(Instant::now() < deadline, "order {i} did not settle");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // A trickle: the relay stays in its idle, NOTIFY-driven mode.
        tokio::time::sleep(TRICKLE_GAP).await;
    }
    Ok(())
}

async fn snapshot(
    admin: &tokio_postgres::Client,
    databases: &[(&str, &str)],
    log: Option<&PathBuf>,
) -> anyhow::Result<Snapshot> {
    admin
        .batch_execute("SELECT pg_stat_clear_snapshot()")
        .await?;
    let mut commits = Vec::new();
    for (_, name) in databases {
        let row = admin
            .query_one(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = $1",
                &[name],
            )
            .await
            .with_context(|| format!("read the commits of {name}"))?;
        commits.push(row.get(0));
    }
    Ok(Snapshot {
        commits,
        log_len: log_len(log),
    })
}

/// The server log: `BENCH_PG_LOG`, else Debian's cluster log.
fn log_file() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("BENCH_PG_LOG") {
        return Some(PathBuf::from(path));
    }
    std::fs::read_dir("/var/log/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("postgresql-") && n.ends_with("-main.log"))
        })
}

fn log_len(log: Option<&PathBuf>) -> Option<u64> {
    std::fs::metadata(log?).ok().map(|m| m.len())
}

/// The log between two lengths, when all three are known.
fn read_between(log: Option<&PathBuf>, from: Option<u64>, to: Option<u64>) -> Option<String> {
    read_range(log?, from?, to?)
}

fn read_range(log: &PathBuf, from: u64, to: u64) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(log).ok()?;
    file.seek(SeekFrom::Start(from)).ok()?;
    let mut buf = vec![0; to.saturating_sub(from) as usize];
    file.read_exact(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// The SQL of each statement the log shows for `database` (the prefix
/// `user@database `), with the backend's pid.
fn statements<'a>(log: &'a str, database: &str) -> impl Iterator<Item = (&'a str, &'a str)> {
    let tag = format!("@{database} ");
    log.lines().filter_map(move |l| {
        if !l.contains(&tag) {
            return None;
        }
        let sql = match l.split_once(" LOG:  statement: ") {
            Some((_, sql)) => sql,
            None => l.split_once(" LOG:  execute ")?.1.split_once(": ")?.1,
        };
        let pid = l.split_once(" [")?.1.split_once(']')?.0;
        Some((pid, sql))
    })
}

/// Statements the log shows for `database`.
fn count_statements(log: &str, database: &str) -> usize {
    statements(log, database).count()
}

/// Transactions committed in `database`, as the log shows them: each
/// `COMMIT`, and each statement outside `BEGIN ... COMMIT` (its own
/// transaction), per backend.
fn count_commits(log: &str, database: &str) -> usize {
    let mut in_transaction: std::collections::HashMap<&str, bool> = Default::default();
    let mut commits = 0;
    for (pid, sql) in statements(log, database) {
        let word = sql
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .trim_end_matches(';')
            .to_ascii_uppercase();
        let open = in_transaction.entry(pid).or_default();
        match word.as_str() {
            "BEGIN" | "START" => *open = true,
            "COMMIT" | "END" => {
                commits += 1;
                *open = false;
            }
            "ROLLBACK" | "ABORT" => *open = false,
            _ if !*open => commits += 1,
            _ => {}
        }
    }
    commits
}

#[cfg(test)]
mod tests {
    #[test]
    fn statements_are_counted_per_database() {
        let log = "\
2026-12-04 19:00:00.000 UTC [1] postgres@om_test_a LOG:  statement: BEGIN
2026-12-04 19:00:00.001 UTC [1] postgres@om_test_a LOG:  execute s0: INSERT INTO orders
\tVALUES ($1)
2026-12-04 19:00:00.002 UTC [1] postgres@om_test_a DETAIL:  parameters: $1 = 'x'
2026-12-04 19:00:00.003 UTC [2] postgres@om_test_b LOG:  execute <unnamed>: SELECT 1
2026-12-04 19:00:00.004 UTC [1] postgres@om_test_ab LOG:  statement: COMMIT
";
        assert_eq!(super::count_statements(log, "om_test_a"), 2);
        assert_eq!(super::count_statements(log, "om_test_b"), 1);
        // om_test_a: BEGIN, INSERT and no COMMIT yet; om_test_b: one
        // statement of its own.
        assert_eq!(super::count_commits(log, "om_test_a"), 0);
        assert_eq!(super::count_commits(log, "om_test_b"), 1);
        let more = format!(
            "{log}2026-12-04 19:00:00.005 UTC [1] postgres@om_test_a LOG:  statement: COMMIT\n2026-12-04 19:00:00.006 UTC [3] postgres@om_test_a LOG:  execute s1: WITH x AS (INSERT ...) SELECT 1\n"
        );
        assert_eq!(super::count_commits(&more, "om_test_a"), 2);
    }
}
