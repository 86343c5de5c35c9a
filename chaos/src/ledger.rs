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

mod checks;
mod stores;

use std::fmt::Write as _;

use crate::broker::Broker;
use crate::faults::FaultCounts;
use crate::load::{LoadReport, Plan};
use crate::mesh::{Binary, Mesh};
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
/// Reads the stores of the (stopped) mesh and checks them against the run.
pub async fn collect(mesh: &Mesh, broker: &Broker, run: &RunFacts<'_>) -> anyhow::Result<Ledger> {
    let stores = stores::read(mesh, broker).await?;
    Ok(checks::judge(&stores, run))
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
