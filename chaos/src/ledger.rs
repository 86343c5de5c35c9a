//! The ledger: after the faults stopped, the mesh went quiet and was shut
//! down, what the databases and the broker hold is compared with what the
//! harness sent. Three questions, each a set of checks:
//!
//! - **lost**: every order accepted, stored, decided once by the processor
//!   and terminal (PAID or FAILED) in the order service, in agreement;
//! - **applied twice**: no order debited more than once, the debits add up
//!   to the PAID orders' totals, every balance is its deposits minus its
//!   debits plus its refunds;
//! - **stuck**: both outboxes empty, both work queues empty, the
//!   dead-letter queues hold exactly the injected poison.
//!
//! Besides: how many duplicate deliveries each inbox absorbed (from the
//! services' `/metrics`, see [`crate::metrics`]), the faults injected and
//! the times.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use crate::broker::Broker;
use crate::faults::FaultCounts;
use crate::load::{LoadReport, Plan};
use crate::mesh::{Binary, Mesh, harness_client};
use crate::metrics::Counters;

/// A line of the ledger: a check (with a verdict) or a figure.
#[derive(Debug, Clone)]
pub struct Line {
    pub section: &'static str,
    pub what: String,
    pub expected: String,
    pub actual: String,
    /// `None` for a figure that is reported, not checked.
    pub ok: Option<bool>,
    /// For a failed check: which orders, accounts or messages.
    pub detail: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Ledger {
    pub title: String,
    pub lines: Vec<Line>,
}

impl Ledger {
    fn check(
        &mut self,
        section: &'static str,
        what: impl Into<String>,
        expected: impl ToString,
        actual: impl ToString,
        detail: Vec<String>,
    ) {
        let (expected, actual) = (expected.to_string(), actual.to_string());
        let ok = expected == actual && detail.is_empty();
        self.lines.push(Line {
            section,
            what: what.into(),
            expected,
            actual,
            ok: Some(ok),
            detail,
        });
    }

    fn figure(&mut self, section: &'static str, what: impl Into<String>, value: impl ToString) {
        self.lines.push(Line {
            section,
            what: what.into(),
            expected: String::new(),
            actual: value.to_string(),
            ok: None,
            detail: Vec::new(),
        });
    }

    /// The checks that failed.
    pub fn violations(&self) -> Vec<&Line> {
        self.lines.iter().filter(|l| l.ok == Some(false)).collect()
    }

    pub fn is_clean(&self) -> bool {
        self.violations().is_empty()
    }

    /// The ledger as a table, with the details of every violation below.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let width = 72;
        let rule = "-".repeat(width + 32);
        let _ = writeln!(out, "{}", self.title);
        let _ = writeln!(out, "{rule}");
        let _ = writeln!(
            out,
            "{:<width$} {:>12} {:>12}  verdict",
            "", "expected", "actual"
        );
        let mut section = "";
        for l in &self.lines {
            if l.section != section {
                section = l.section;
                let _ = writeln!(out, "{}", section.to_uppercase());
            }
            let verdict = match l.ok {
                Some(true) => "ok",
                Some(false) => "VIOLATION",
                None => "",
            };
            let _ = writeln!(
                out,
                "  {:<w$} {:>12} {:>12}  {verdict}",
                l.what,
                l.expected,
                l.actual,
                w = width - 2
            );
        }
        let _ = writeln!(out, "{rule}");
        let violations = self.violations();
        if violations.is_empty() {
            let _ = writeln!(
                out,
                "verdict: nothing lost, nothing applied twice, nothing stuck"
            );
        } else {
            let _ = writeln!(out, "verdict: {} VIOLATION(S)", violations.len());
            for l in violations {
                let _ = writeln!(out, "  {}:", l.what);
                for d in l.detail.iter().take(10) {
                    let _ = writeln!(out, "    {d}");
                }
                if l.detail.len() > 10 {
                    let _ = writeln!(out, "    ... and {} more", l.detail.len() - 10);
                }
            }
        }
        out
    }
}

/// Everything the run produced besides the stores, for the ledger.
pub struct RunFacts<'a> {
    pub plan: &'a Plan,
    pub load: &'a LoadReport,
    pub faults: &'a FaultCounts,
    /// Per service: its counters from `/metrics` summed over its
    /// processes, how many processes, and the duplicates its log shows.
    pub consumers: [Consumer; 2],
    /// Whether the mesh went quiet before the deadline, and after how long.
    pub quiet_after: Result<f64, f64>,
    pub total_seconds: f64,
}

/// One consuming service's figures.
pub struct Consumer {
    pub binary: Binary,
    pub metrics: Counters,
    pub processes: u32,
    pub logged_duplicates: u64,
}

struct OrderRow {
    customer: String,
    status: String,
    total: i64,
    reason: String,
}

struct PaymentRow {
    status: String,
    amount: i64,
}

/// What the databases and queues hold, read after the mesh stopped.
struct Stores {
    orders: HashMap<String, OrderRow>,
    payments: HashMap<String, PaymentRow>,
    /// Per order: (DEBIT rows, sum debited), and the same for REFUND rows.
    debits: HashMap<String, (i64, i64)>,
    refunds: HashMap<String, (i64, i64)>,
    /// Per customer: balance, Σ deposits (count), Σ debits, Σ refunds, Σ ledger.
    accounts: BTreeMap<String, Account>,
    outbox_orders: i64,
    outbox_processor: i64,
    inbox_orders: i64,
    inbox_processor: i64,
    processor_queue: u32,
    order_queue: u32,
    /// Retry queues still holding messages.
    retrying: Vec<(String, u32)>,
    processor_dlq: Vec<String>,
    order_dlq: Vec<String>,
}

#[derive(Default)]
struct Account {
    balance: i64,
    deposits: i64,
    deposit_count: i64,
    debits: i64,
    refunds: i64,
    ledger: i64,
}

async fn read_stores(mesh: &Mesh, broker: &Broker) -> anyhow::Result<Stores> {
    let orders_db = harness_client(&mesh.orders_db.url).await?;
    let processor_db = harness_client(&mesh.processor_db.url).await?;
    let orders = orders_db
        .query(
            r#"SELECT order_id, customer_id, status, total_minor, coalesce(failure_reason, '')
               FROM orders"#,
            &[],
        )
        .await?
        .into_iter()
        .map(|r| {
            (
                r.get(0),
                OrderRow {
                    customer: r.get(1),
                    status: r.get(2),
                    total: r.get(3),
                    reason: r.get(4),
                },
            )
        })
        .collect();
    let payments = processor_db
        .query(
            r#"SELECT order_id, status, amount_minor FROM payments"#,
            &[],
        )
        .await?
        .into_iter()
        .map(|r| {
            (
                r.get(0),
                PaymentRow {
                    status: r.get(1),
                    amount: r.get(2),
                },
            )
        })
        .collect();
    let per_order = |kind: &'static str| {
        let db = &processor_db;
        async move {
            anyhow::Ok(
                db.query(
                    r#"SELECT order_id, count(*), (-sum(amount_minor))::bigint
                       FROM transactions WHERE kind = $1 GROUP BY order_id"#,
                    &[&kind],
                )
                .await?
                .into_iter()
                .map(|r| (r.get::<_, String>(0), (r.get(1), r.get::<_, i64>(2))))
                .collect::<HashMap<String, (i64, i64)>>(),
            )
        }
    };
    let debits = per_order("DEBIT").await?;
    let refunds = per_order("REFUND")
        .await?
        .into_iter()
        .map(|(k, (n, s))| (k, (n, -s)))
        .collect();
    let mut accounts: BTreeMap<String, Account> = BTreeMap::new();
    for r in processor_db
        .query(r#"SELECT customer_id, balance_minor FROM accounts"#, &[])
        .await?
    {
        accounts.entry(r.get(0)).or_default().balance = r.get(1);
    }
    for r in processor_db
        .query(
            r#"SELECT customer_id, count(*), sum(amount_minor)::bigint
               FROM deposits GROUP BY customer_id"#,
            &[],
        )
        .await?
    {
        let a = accounts.entry(r.get(0)).or_default();
        a.deposit_count = r.get(1);
        a.deposits = r.get(2);
    }
    for r in processor_db
        .query(
            r#"SELECT customer_id,
                      coalesce(-sum(amount_minor) FILTER (WHERE kind = 'DEBIT'), 0)::bigint,
                      coalesce(sum(amount_minor) FILTER (WHERE kind = 'REFUND'), 0)::bigint,
                      sum(amount_minor)::bigint
               FROM transactions GROUP BY customer_id"#,
            &[],
        )
        .await?
    {
        let a = accounts.entry(r.get(0)).or_default();
        a.debits = r.get(1);
        a.refunds = r.get(2);
        a.ledger = r.get(3);
    }
    let dlq = ordermesh_platform::amqp::dead_letter_queue;
    Ok(Stores {
        orders,
        payments,
        debits,
        refunds,
        accounts,
        outbox_orders: count(&orders_db, r#"SELECT count(*) FROM outbox"#).await?,
        outbox_processor: count(&processor_db, r#"SELECT count(*) FROM outbox"#).await?,
        inbox_orders: count(&orders_db, r#"SELECT count(*) FROM inbox"#).await?,
        inbox_processor: count(&processor_db, r#"SELECT count(*) FROM inbox"#).await?,
        processor_queue: broker.ready(&mesh.processor_queue).await?,
        order_queue: broker.ready(&mesh.order_queue).await?,
        retrying: broker
            .waiting(&mesh.waiting_queues()?)
            .await?
            .into_iter()
            .filter(|(q, _)| *q != mesh.processor_queue && *q != mesh.order_queue)
            .collect(),
        processor_dlq: broker.drain_ids(&dlq(&mesh.processor_queue)).await?,
        order_dlq: broker.drain_ids(&dlq(&mesh.order_queue)).await?,
    })
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> anyhow::Result<i64> {
    Ok(client.query_one(sql, &[]).await?.get(0))
}

/// Reads the stores of the (stopped) mesh and checks them against the run.
pub async fn collect(mesh: &Mesh, broker: &Broker, run: &RunFacts<'_>) -> anyhow::Result<Ledger> {
    let s = read_stores(mesh, broker).await?;
    let plan = run.plan;
    let n = plan.orders.len();
    let mut l = Ledger {
        title: format!(
            "ordermesh chaos ledger: {n} orders, {} customers, seed {}",
            plan.customers.len(),
            plan.seed
        ),
        ..Default::default()
    };

    // Faults first: what the checks below survived.
    let f = run.faults;
    let sec = "faults injected";
    l.figure(sec, "relay SIGKILLed and restarted", f.relay_kills);
    l.figure(
        sec,
        "processor aborted between commit and ack (restarted)",
        f.processor_aborts,
    );
    l.figure(
        sec,
        format!(
            "broker connections reset by the proxy ({} cuts)",
            f.broker_cuts
        ),
        f.broker_connections_cut,
    );
    l.figure(
        sec,
        format!("PostgreSQL backends terminated ({} rounds)", f.pg_kills),
        f.pg_backends_terminated,
    );
    l.figure(sec, "poison messages published", f.poison_ids.len());
    l.figure(
        sec,
        "CreateOrder/Deposit attempts failed and retried",
        run.load.retries,
    );
    l.figure(
        sec,
        "exits with an error status, restarted (gave up on a fault)",
        f.error_exits.len(),
    );
    for e in &f.error_exits {
        l.figure(sec, format!("  {e}"), "");
    }
    l.check(
        sec,
        "crashes: panics, or signals the harness did not send",
        0,
        f.crashes.len(),
        f.crashes.clone(),
    );

    // Lost.
    let sec = "lost";
    l.check(
        sec,
        "orders accepted by CreateOrder",
        n,
        run.load.accepted,
        run.load
            .refused
            .iter()
            .map(|(id, why)| format!("{id}: {why}"))
            .collect(),
    );
    let deposits_expected = 2 * plan.customers.len();
    let deposits_applied: i64 = s.accounts.values().map(|a| a.deposit_count).sum();
    l.check(
        sec,
        "deposits applied (idempotent deposit_id, retried)",
        deposits_expected,
        deposits_applied,
        run.load
            .deposits_failed
            .iter()
            .map(|(id, why)| format!("{id}: {why}"))
            .collect(),
    );
    let mut missing = Vec::new();
    let mut wrong_content = Vec::new();
    for o in &plan.orders {
        match s.orders.get(&o.order_id) {
            None => missing.push(o.order_id.clone()),
            Some(row)
                if row.total != o.total_minor || row.customer != plan.customers[o.customer].id =>
            {
                wrong_content.push(format!(
                    "{}: total {} (planned {})",
                    o.order_id, row.total, o.total_minor
                ));
            }
            Some(_) => {}
        }
    }
    missing.extend(wrong_content);
    l.check(
        sec,
        "orders stored in the orders database, as sent",
        n,
        s.orders.len(),
        missing,
    );
    let not_terminal: Vec<String> = sorted(
        s.orders
            .iter()
            .filter(|(_, o)| o.status != "PAID" && o.status != "FAILED")
            .map(|(id, o)| format!("{id}: {}", o.status)),
    );
    l.check(
        sec,
        "orders not terminal (not PAID or FAILED)",
        0,
        not_terminal.len(),
        not_terminal,
    );
    let undecided: Vec<String> = sorted(
        s.orders
            .keys()
            .filter(|id| !s.payments.contains_key(*id))
            .cloned(),
    );
    l.check(
        sec,
        "orders without a payment decision in the processor",
        0,
        undecided.len(),
        undecided,
    );
    let disagree: Vec<String> = sorted(s.orders.iter().filter_map(|(id, o)| {
        let p = s.payments.get(id)?;
        let agrees = match o.status.as_str() {
            "PAID" => p.status == "SUCCEEDED" && p.amount == o.total,
            "FAILED" => p.status == "FAILED",
            _ => true,
        };
        (!agrees).then(|| {
            format!(
                "{id}: order {} {}, payment {} {}",
                o.status, o.total, p.status, p.amount
            )
        })
    }));
    l.check(
        sec,
        "orders whose status disagrees with the processor's decision",
        0,
        disagree.len(),
        disagree,
    );
    l.check(
        sec,
        "order.created events applied by the processor (its inbox)",
        n,
        s.inbox_processor,
        Vec::new(),
    );
    l.check(
        sec,
        "payment results applied by order-svc (its inbox)",
        n,
        s.inbox_orders,
        Vec::new(),
    );
    let paid: Vec<&OrderRow> = s.orders.values().filter(|o| o.status == "PAID").collect();
    let failed: Vec<&OrderRow> = s.orders.values().filter(|o| o.status == "FAILED").collect();
    let embargo = failed
        .iter()
        .filter(|o| o.reason.starts_with("embargo"))
        .count();
    let funds = failed
        .iter()
        .filter(|o| o.reason.contains("insufficient funds"))
        .count();
    l.figure(sec, "orders PAID", paid.len());
    l.figure(
        sec,
        format!(
            "orders FAILED (embargo {embargo}, insufficient funds {funds}, other {})",
            failed.len() - embargo - funds
        ),
        failed.len(),
    );

    // Applied twice.
    let sec = "applied twice";
    let twice: Vec<String> = sorted(
        s.debits
            .iter()
            .filter(|(_, (count, _))| *count > 1)
            .map(|(id, (count, _))| format!("{id}: {count} debits")),
    );
    l.check(sec, "orders debited more than once", 0, twice.len(), twice);
    let misdebited: Vec<String> = sorted(
        s.orders
            .iter()
            .filter_map(|(id, o)| {
                let debited = s.debits.get(id).map_or(0, |(_, sum)| *sum);
                let want = if o.status == "PAID" { o.total } else { 0 };
                (debited != want)
                    .then(|| format!("{id}: {} {}, debited {debited}", o.status, o.total))
            })
            .chain(
                s.debits
                    .keys()
                    .filter(|id| !s.orders.contains_key(*id))
                    .map(|id| format!("{id}: debited, unknown to order-svc")),
            ),
    );
    l.check(
        sec,
        "debits other than: PAID once for its total, FAILED never",
        0,
        misdebited.len(),
        misdebited,
    );
    let paid_total: i64 = paid.iter().map(|o| o.total).sum();
    let debited_total: i64 = s.debits.values().map(|(_, sum)| sum).sum();
    l.check(
        sec,
        "sum of debits (processor) = sum of PAID totals (order-svc)",
        paid_total,
        debited_total,
        Vec::new(),
    );
    let refunded: i64 = s.refunds.values().map(|(_, sum)| sum).sum();
    l.check(
        sec,
        "sum of refunds (no order was cancelled)",
        0,
        refunded,
        Vec::new(),
    );
    let planned_deposits: i64 = plan.customers.iter().flat_map(|c| c.deposits).sum();
    let deposited: i64 = s.accounts.values().map(|a| a.deposits).sum();
    l.check(
        sec,
        "sum of deposits = sum the harness paid in",
        planned_deposits,
        deposited,
        Vec::new(),
    );
    let off_balance: Vec<String> = s
        .accounts
        .iter()
        .filter(|(_, a)| a.balance != a.deposits - a.debits + a.refunds)
        .map(|(id, a)| {
            format!(
                "{id}: balance {} != deposits {} - debits {} + refunds {}",
                a.balance, a.deposits, a.debits, a.refunds
            )
        })
        .collect();
    l.check(
        sec,
        "accounts whose balance != deposits - debits + refunds",
        0,
        off_balance.len(),
        off_balance,
    );
    let off_ledger: Vec<String> = s
        .accounts
        .iter()
        .filter(|(_, a)| a.balance != a.ledger)
        .map(|(id, a)| format!("{id}: balance {} != ledger {}", a.balance, a.ledger))
        .collect();
    l.check(
        sec,
        "accounts whose balance != the sum of their transactions",
        0,
        off_ledger.len(),
        off_ledger,
    );

    // Stuck.
    let sec = "stuck";
    l.check(
        sec,
        "outbox rows left, orders database",
        0,
        s.outbox_orders,
        Vec::new(),
    );
    l.check(
        sec,
        "outbox rows left, processor database",
        0,
        s.outbox_processor,
        Vec::new(),
    );
    l.check(
        sec,
        "messages left in the processor's queue",
        0,
        s.processor_queue,
        Vec::new(),
    );
    l.check(
        sec,
        "messages left in order-svc's queue",
        0,
        s.order_queue,
        Vec::new(),
    );
    l.check(
        sec,
        "messages waiting in retry queues",
        0,
        s.retrying.iter().map(|(_, n)| n).sum::<u32>(),
        s.retrying
            .iter()
            .map(|(q, n)| format!("{q}: {n}"))
            .collect(),
    );
    // Dead-lettering is at least once, like every publish: a consumer
    // whose ack is lost (a broker cut) after the broker confirmed the
    // dead-letter copy dead-letters the redelivery again. So the check is
    // on distinct message ids; extra copies are counted beside it.
    let injected: BTreeSet<&String> = f.poison_ids.iter().collect();
    let dead: BTreeSet<&String> = s.processor_dlq.iter().collect();
    let mut dlq_detail: Vec<String> = dead
        .difference(&injected)
        .map(|id| format!("{id}: dead-lettered, not injected"))
        .collect();
    dlq_detail.extend(
        injected
            .difference(&dead)
            .map(|id| format!("{id}: injected, not dead-lettered")),
    );
    l.check(
        sec,
        "processor DLQ: exactly the injected poison (distinct ids)",
        injected.len(),
        dead.len(),
        dlq_detail,
    );
    l.figure(
        sec,
        "  extra copies of a poison message in the DLQ",
        s.processor_dlq.len() - dead.len(),
    );
    l.check(
        sec,
        "order-svc DLQ",
        0,
        s.order_dlq.len(),
        s.order_dlq.clone(),
    );
    l.lines.push(Line {
        section: sec,
        what: "quiet (all settled, outboxes and queues empty) within the bound".into(),
        expected: "yes".into(),
        actual: match run.quiet_after {
            Ok(t) => format!("{t:.1} s"),
            Err(t) => format!("no ({t:.0} s)"),
        },
        ok: Some(run.quiet_after.is_ok()),
        detail: Vec::new(),
    });

    // Redeliveries the inboxes absorbed.
    let sec = "redeliveries absorbed by the inboxes";
    for c in &run.consumers {
        let name = c.binary.name();
        l.figure(
            sec,
            format!("{name}: duplicates skipped, counted in its log"),
            c.logged_duplicates,
        );
        l.figure(
            sec,
            format!(
                "{name}: the same from /metrics, {} process(es){}",
                c.processes,
                if c.processes > 1 {
                    " (lower bound)"
                } else {
                    ""
                }
            ),
            c.metrics.duplicates,
        );
        l.figure(
            sec,
            format!("{name}: deliveries applied / requeued (/metrics)"),
            format!("{} / {}", c.metrics.processed, c.metrics.retries),
        );
        // The log line is written before the counter moves, so the log
        // can only count more; fewer means the harness reads the wrong
        // line.
        if c.logged_duplicates < c.metrics.duplicates {
            l.check(
                sec,
                format!("{name}: log count >= /metrics count (harness sanity)"),
                format!(">= {}", c.metrics.duplicates),
                c.logged_duplicates,
                vec!["the duplicate log line changed? see chaos/src/metrics.rs".into()],
            );
        }
    }

    let sec = "times";
    l.figure(
        sec,
        "load: first request to last order accepted (s)",
        format!("{:.1}", run.load.seconds),
    );
    l.figure(sec, "faults injected for (s)", format!("{:.1}", f.seconds));
    l.figure(
        sec,
        "whole run, start to ledger (s)",
        format!("{:.1}", run.total_seconds),
    );
    Ok(l)
}

fn sorted(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = items.collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_check_is_a_violation_and_is_detailed() {
        let mut l = Ledger {
            title: "t".into(),
            ..Default::default()
        };
        l.check("lost", "orders", 3, 3, Vec::new());
        l.figure("lost", "figure", 7);
        assert!(l.is_clean());
        l.check("stuck", "outbox", 0, 2, vec!["row 1".into()]);
        assert_eq!(l.violations().len(), 1);
        let table = l.table();
        assert!(table.contains("VIOLATION"), "{table}");
        assert!(table.contains("row 1"), "{table}");
        // Equal numbers with a detail are still a violation.
        l.check(
            "stuck",
            "dlq",
            1,
            1,
            vec!["x: injected, not dead-lettered".into()],
        );
        assert_eq!(l.violations().len(), 2);
    }
}
