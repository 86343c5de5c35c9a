//! What a run leaves behind: `report.json` (the keys the scale issue asks
//! for, and more), a human table on stdout, and `latency.svg`: end-to-end
//! latency percentiles against the offered rate, and the latency
//! distribution of the fixed-rate steps.

mod svg;

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::load::StepReport;

/// The run's figures in the shape of `target/bench/report.json`.
pub struct Run {
    pub date: String,
    pub machine: Value,
    pub fixed: Vec<StepReport>,
    pub search: Vec<StepReport>,
    pub watch: crate::watch::WatchReport,
    pub max_sustained: f64,
    pub commit_to_publish: crate::stats::Summary,
    pub drain_rows_per_s: f64,
    pub limits: crate::limits::Limits,
    pub rss_mib: Vec<(String, f64, f64)>,
    pub profile: Option<Value>,
    /// Statements and commits per order at a trickle.
    pub cost: crate::cost::Cost,
    pub seconds: f64,
}

/// CPU milliseconds per order of everything but the load generator (the
/// bench's own process): `cpu_s_per_1k_orders` summed.
fn mesh_cpu_ms_per_order(s: &StepReport) -> f64 {
    crate::stats::r3(
        s.cpu_s_per_1k_orders
            .iter()
            .filter(|(name, _)| !name.starts_with("ordermesh-bench"))
            .map(|(_, v)| v)
            .sum(),
    )
}

fn rate_json(s: &StepReport) -> Value {
    json!({
        "offered_per_s": s.offered_per_s,
        "completed_per_s": s.completed_per_s,
        "e2e_ms": {"p50": s.e2e_ms.p50, "p99": s.e2e_ms.p99, "p999": s.e2e_ms.p999,
                   "p90": s.e2e_ms.p90, "mean": s.e2e_ms.mean, "max": s.e2e_ms.max},
        "sustained": s.sustained,
        "verdict": s.verdict,
        "sent": s.sent,
        "settled": s.settled,
        "paid": s.paid,
        "errors": s.errors,
        "drain_s": s.drain_s,
        "create_rpc_ms": s.create_rpc_ms,
        "send_late_ms": s.send_late_ms,
        "cpu_busy": s.cpu_busy,
        "cpu_ms_per_order_mesh": mesh_cpu_ms_per_order(s),
        "cpu_s_per_1k_orders": s.cpu_s_per_1k_orders.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<String, Value>>(),
    })
}

impl Run {
    pub fn json(&self) -> Value {
        let limits = &self.limits;
        let ratio = |a: f64, b: f64| {
            if b > 0.0 {
                crate::stats::r3(a / b)
            } else {
                0.0
            }
        };
        json!({
            "date": self.date,
            "machine": self.machine,
            "run_seconds": crate::stats::r3(self.seconds),
            "pipeline": {
                "max_sustained_orders_per_s": self.max_sustained,
                "rates": self.fixed.iter().map(rate_json).collect::<Vec<_>>(),
                "search": self.search.iter().map(rate_json).collect::<Vec<_>>(),
                "watch": self.watch,
            },
            "relay": {
                "commit_to_publish_ms": {
                    "p50": self.commit_to_publish.p50, "p99": self.commit_to_publish.p99,
                    "p90": self.commit_to_publish.p90, "p999": self.commit_to_publish.p999,
                    "max": self.commit_to_publish.max,
                },
                "drain_rows_per_s": self.drain_rows_per_s,
            },
            "per_order": self.cost,
            "targets": self.targets(),
            "limits": {
                "floor_ms": crate::stats::r3(self.floor_ms()),
                "pg_order_tx_per_s": limits.pg_order_tx_per_s,
                "pg_order_tx_per_s_notify_each": limits.pg_order_tx_per_s_notify_each,
                "pg_commit_ms": limits.pg_commit_ms,
                "amqp_confirmed_publish_per_s": limits.amqp_confirmed_publish_per_s,
                "amqp_confirm_ms": limits.amqp_confirm_ms,
            },
            "ratios": {
                "max_sustained_orders_vs_pg_order_tx": ratio(self.max_sustained, limits.pg_order_tx_per_s),
                "relay_drain_vs_amqp_confirmed_publish": ratio(self.drain_rows_per_s, limits.amqp_confirmed_publish_per_s),
                "max_sustained_messages_vs_amqp_confirmed_publish": ratio(2.0 * self.max_sustained, limits.amqp_confirmed_publish_per_s),
            },
            "rss_mib": self.rss_mib.iter().map(|(n, _, hwm)| (n.clone(), json!(crate::stats::r3(*hwm)))).collect::<serde_json::Map<String, Value>>(),
            "rss_mib_at_end": self.rss_mib.iter().map(|(n, rss, _)| (n.clone(), json!(crate::stats::r3(*rss)))).collect::<serde_json::Map<String, Value>>(),
            "profile": self.profile,
        })
    }

    /// The physical floor of one order's latency: three durable commits
    /// (create, settle, apply) and two confirmed publishes.
    pub fn floor_ms(&self) -> f64 {
        3.0 * self.limits.pg_commit_ms.p50 + 2.0 * self.limits.amqp_confirm_ms.p50
    }

    /// The performance targets, each a figure of this run against a limit
    /// measured in the same run (issue 14).
    pub fn targets(&self) -> Value {
        let l = &self.limits;
        let ratio = |a: f64, b: f64| {
            if b > 0.0 {
                crate::stats::r3(a / b)
            } else {
                0.0
            }
        };
        let floor = self.floor_ms();
        let at_200 = self.fixed.iter().find(|s| s.offered_per_s == 200.0);
        let at_max = self
            .fixed
            .iter()
            .chain(&self.search)
            .filter(|s| s.sustained)
            .max_by(|a, b| a.offered_per_s.total_cmp(&b.offered_per_s));
        json!({
            "max_sustained_vs_pg_order_tx": {
                "value": ratio(self.max_sustained, l.pg_order_tx_per_s), "target": ">= 0.2"},
            "e2e_p50_vs_floor_at_200": {
                "value": at_200.map(|s| ratio(s.e2e_ms.p50, floor)), "target": "<= 1.3"},
            "e2e_p99_vs_floor_at_200": {
                "value": at_200.map(|s| ratio(s.e2e_ms.p99, floor)), "target": "<= 2.5"},
            "create_rpc_p50_vs_pg_commit_at_200": {
                "value": at_200.map(|s| ratio(s.create_rpc_ms.p50, l.pg_commit_ms.p50)),
                "target": "<= 1.5"},
            "cpu_ms_per_order_at_200": {
                "value": at_200.map(mesh_cpu_ms_per_order), "target": "<= 3.0"},
            "cpu_ms_per_order_at_max_sustained": {
                "value": at_max.map(mesh_cpu_ms_per_order), "target": "<= 2.0"},
            "relay_commit_to_publish_p50_ms": {
                "value": self.commit_to_publish.p50, "target": "<= 1"},
            "watch_p50_minus_e2e_p50_at_200_ms": {
                "value": at_200.map(|s| crate::stats::r3(self.watch.e2e_ms.p50 - s.e2e_ms.p50)),
                "target": "<= 1"},
            // The same comparison on the watched orders themselves: their
            // stream's PAID less their event's arrival, per order.
            "watch_stream_after_event_p50_ms": {
                "value": self.watch.stream_after_event_ms.p50, "target": "<= 1"},
            "statements_per_order": {"value": self.cost.statements, "target": "<= 20"},
            "commits_per_order": {"value": self.cost.commits, "target": "<= 7"},
        })
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "\nordermesh bench, {} ({:.0} s)",
            self.date, self.seconds
        );
        let _ = writeln!(t, "machine: {}", self.machine);
        self.steps_table(&mut t);
        self.headlines(&mut t);
        self.limits_table(&mut t);
        self.cost_table(&mut t);
        self.targets_and_ratios(&mut t);
        t
    }

    /// One row per load step, fixed then search.
    fn steps_table(&self, t: &mut String) {
        let _ = writeln!(
            t,
            "\n{:>9} {:>11} {:>9} {:>9} {:>9} {:>10} {:>8} {:>6}  verdict",
            "offered/s",
            "completed/s",
            "e2e p50",
            "e2e p99",
            "e2e p999",
            "rpc p50",
            "drain s",
            "cpu"
        );
        for s in self.fixed.iter().chain(&self.search) {
            let _ = writeln!(
                t,
                "{:>9.0} {:>11.1} {:>7.2}ms {:>7.2}ms {:>7.2}ms {:>8.2}ms {:>8.2} {:>5.0}%  {}",
                s.offered_per_s,
                s.completed_per_s,
                s.e2e_ms.p50,
                s.e2e_ms.p99,
                s.e2e_ms.p999,
                s.create_rpc_ms.p50,
                s.drain_s,
                s.cpu_busy * 100.0,
                s.verdict
            );
        }
    }

    /// The figures with a target: throughput, latencies, memory.
    fn headlines(&self, t: &mut String) {
        let _ = writeln!(
            t,
            "\nmax sustained create->PAID: {:.0} orders/s  (target >= 800)",
            self.max_sustained
        );
        if let Some(s) = self.fixed.iter().find(|s| s.offered_per_s == 200.0) {
            let _ = writeln!(
                t,
                "e2e at 200/s: p50 {:.2} ms (target <= 3.5), p99 {:.2} ms (target <= 10)",
                s.e2e_ms.p50, s.e2e_ms.p99
            );
        }
        let w = &self.watch;
        let _ = writeln!(
            t,
            "create->PAID on a WatchOrder stream at {:.0}/s: p50 {:.2} ms, p99 {:.2} ms ({} of {} seen PAID); \
             the same orders' events p50 {:.2} ms, the stream {:.2} ms after its event (p50)",
            w.offered_per_s,
            w.e2e_ms.p50,
            w.e2e_ms.p99,
            w.paid,
            w.orders,
            w.event_ms.p50,
            w.stream_after_event_ms.p50
        );
        let _ = writeln!(
            t,
            "relay commit->publish: p50 {:.3} ms (target <= 1), p99 {:.3} ms; drain {:.0} rows/s",
            self.commit_to_publish.p50, self.commit_to_publish.p99, self.drain_rows_per_s
        );
        for (name, rss, hwm) in &self.rss_mib {
            let _ = writeln!(
                t,
                "RSS {name:<14} peak {hwm:6.1} MiB, at end {rss:6.1} MiB (target <= 64)"
            );
        }
    }

    fn limits_table(&self, t: &mut String) {
        let l = &self.limits;
        let _ = writeln!(
            t,
            "\nlimits of this machine, same run:\n  PostgreSQL order+outbox tx: {:.0}/s (with a NOTIFY in every tx: {:.0}/s); one commit p50 {:.2} ms\n  RabbitMQ persistent publish+confirm: {:.0} msg/s; one confirm p50 {:.2} ms",
            l.pg_order_tx_per_s,
            l.pg_order_tx_per_s_notify_each,
            l.pg_commit_ms.p50,
            l.amqp_confirmed_publish_per_s,
            l.amqp_confirm_ms.p50
        );
    }

    /// Statements and commits per order, in all and per database.
    fn cost_table(&self, t: &mut String) {
        let c = &self.cost;
        let _ = writeln!(
            t,
            "\nper order at a trickle ({} orders): {} statements, {:.1} commits",
            c.orders,
            c.statements.map_or_else(
                || "? (server log not readable)".to_owned(),
                |s| format!("{s:.1}")
            ),
            c.commits
        );
        for d in &c.per_database {
            let _ = writeln!(
                t,
                "  {:<10} {:>6} statements {:>5.1} commits",
                d.database,
                d.statements
                    .map_or_else(|| "?".to_owned(), |s| format!("{s:.1}")),
                d.commits
            );
        }
    }

    fn targets_and_ratios(&self, t: &mut String) {
        let l = &self.limits;
        let _ = writeln!(
            t,
            "targets (value vs limit in this run): {}",
            serde_json::to_string_pretty(&self.targets()).unwrap_or_default()
        );
        let pct = |a: f64, b: f64| if b > 0.0 { 100.0 * a / b } else { 0.0 };
        let _ = writeln!(
            t,
            "ratios: max sustained orders/s = {:.0}% of PostgreSQL order tx/s (each order costs 3 service tx + relay tx); \
             {:.0}% of RabbitMQ confirmed msg/s in messages (2 per order); relay drain = {:.0}% of RabbitMQ confirmed msg/s",
            pct(self.max_sustained, l.pg_order_tx_per_s),
            pct(2.0 * self.max_sustained, l.amqp_confirmed_publish_per_s),
            pct(self.drain_rows_per_s, l.amqp_confirmed_publish_per_s),
        );
    }
}
