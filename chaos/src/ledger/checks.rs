//! The ledger's sections, in the order they are printed: the faults
//! injected, then lost, applied twice, stuck, the redeliveries the inboxes
//! absorbed, and the times. Each check compares what the run sent
//! ([`RunFacts`]) with what the stores hold ([`Stores`]).

use std::collections::BTreeSet;

use super::stores::{OrderRow, Stores};
use super::{Consumer, Ledger, Line, RunFacts};
use crate::load::Plan;

/// Checks the stores against the run, section by section.
pub(super) fn judge(s: &Stores, run: &RunFacts<'_>) -> Ledger {
    let plan = run.plan;
    let mut l = Ledger {
        title: format!(
            "ordermesh chaos ledger: {} orders, {} customers, seed {}",
            plan.orders.len(),
            plan.customers.len(),
            plan.seed
        ),
        ..Default::default()
    };
    // Faults first: what the checks below survived.
    faults(&mut l, run);
    lost_at_the_door(&mut l, s, run);
    lost_on_the_way(&mut l, s, plan.orders.len());
    outcomes(&mut l, s);
    debited_twice(&mut l, s);
    sums(&mut l, s, plan);
    stuck_in_stores(&mut l, s);
    stuck_in_dead_letters(&mut l, s, run);
    for c in &run.consumers {
        redeliveries(&mut l, c);
    }
    times(&mut l, run);
    l
}

const FAULTS: &str = "faults injected";
const LOST: &str = "lost";
const TWICE: &str = "applied twice";
const STUCK: &str = "stuck";
const REDELIVERIES: &str = "redeliveries absorbed by the inboxes";
const TIMES: &str = "times";

/// What was injected, and whether anything crashed on its own.
fn faults(l: &mut Ledger, run: &RunFacts<'_>) {
    let f = run.faults;
    l.figure(FAULTS, "relay SIGKILLed and restarted", f.relay_kills);
    l.figure(
        FAULTS,
        "processor aborted between commit and ack (restarted)",
        f.processor_aborts,
    );
    l.figure(
        FAULTS,
        format!(
            "broker connections reset by the proxy ({} cuts)",
            f.broker_cuts
        ),
        f.broker_connections_cut,
    );
    l.figure(
        FAULTS,
        format!("PostgreSQL backends terminated ({} rounds)", f.pg_kills),
        f.pg_backends_terminated,
    );
    l.figure(FAULTS, "poison messages published", f.poison_ids.len());
    l.figure(
        FAULTS,
        "CreateOrder/Deposit attempts failed and retried",
        run.load.retries,
    );
    l.figure(
        FAULTS,
        "exits with an error status, restarted (gave up on a fault)",
        f.error_exits.len(),
    );
    for e in &f.error_exits {
        l.figure(FAULTS, format!("  {e}"), "");
    }
    l.check(
        FAULTS,
        "crashes: panics, or signals the harness did not send",
        0,
        f.crashes.len(),
        f.crashes.clone(),
    );
}

/// Every order and deposit accepted, and every order stored as sent.
fn lost_at_the_door(l: &mut Ledger, s: &Stores, run: &RunFacts<'_>) {
    let plan = run.plan;
    l.check(
        LOST,
        "orders accepted by CreateOrder",
        plan.orders.len(),
        run.load.accepted,
        refusals(&run.load.refused),
    );
    let deposits_applied: i64 = s.accounts.values().map(|a| a.deposit_count).sum();
    l.check(
        LOST,
        "deposits applied (idempotent deposit_id, retried)",
        2 * plan.customers.len(),
        deposits_applied,
        refusals(&run.load.deposits_failed),
    );
    l.check(
        LOST,
        "orders stored in the orders database, as sent",
        plan.orders.len(),
        s.orders.len(),
        missing_or_altered(plan, s),
    );
}

/// Every stored order decided by the processor, terminal and in agreement
/// with the decision, and every event applied once by its consumer.
fn lost_on_the_way(l: &mut Ledger, s: &Stores, orders: usize) {
    let not_terminal = not_terminal(s);
    l.check(
        LOST,
        "orders not terminal (not PAID or FAILED)",
        0,
        not_terminal.len(),
        not_terminal,
    );
    let undecided = undecided(s);
    l.check(
        LOST,
        "orders without a payment decision in the processor",
        0,
        undecided.len(),
        undecided,
    );
    let disagree = disagreeing(s);
    l.check(
        LOST,
        "orders whose status disagrees with the processor's decision",
        0,
        disagree.len(),
        disagree,
    );
    l.check(
        LOST,
        "order.created events applied by the processor (its inbox)",
        orders,
        s.inbox_processor,
        Vec::new(),
    );
    l.check(
        LOST,
        "payment results applied by order-svc (its inbox)",
        orders,
        s.inbox_orders,
        Vec::new(),
    );
}

/// How many orders ended PAID and FAILED, and why they failed.
fn outcomes(l: &mut Ledger, s: &Stores) {
    let failed: Vec<&OrderRow> = s.orders.values().filter(|o| o.status == "FAILED").collect();
    let embargo = failed
        .iter()
        .filter(|o| o.reason.starts_with("embargo"))
        .count();
    let funds = failed
        .iter()
        .filter(|o| o.reason.contains("insufficient funds"))
        .count();
    l.figure(LOST, "orders PAID", paid(s).count());
    l.figure(
        LOST,
        format!(
            "orders FAILED (embargo {embargo}, insufficient funds {funds}, other {})",
            failed.len() - embargo - funds
        ),
        failed.len(),
    );
}

/// No order debited more than once, and debits only for PAID orders.
fn debited_twice(l: &mut Ledger, s: &Stores) {
    let twice: Vec<String> = sorted(
        s.debits
            .iter()
            .filter(|(_, (count, _))| *count > 1)
            .map(|(id, (count, _))| format!("{id}: {count} debits")),
    );
    l.check(
        TWICE,
        "orders debited more than once",
        0,
        twice.len(),
        twice,
    );
    let misdebited = misdebited(s);
    l.check(
        TWICE,
        "debits other than: PAID once for its total, FAILED never",
        0,
        misdebited.len(),
        misdebited,
    );
}

/// The money adds up: debits to PAID totals, deposits to what the harness
/// paid in, and every account's balance to its history.
fn sums(l: &mut Ledger, s: &Stores, plan: &Plan) {
    let paid_total: i64 = paid(s).map(|o| o.total).sum();
    let debited_total: i64 = s.debits.values().map(|(_, sum)| sum).sum();
    l.check(
        TWICE,
        "sum of debits (processor) = sum of PAID totals (order-svc)",
        paid_total,
        debited_total,
        Vec::new(),
    );
    let refunded: i64 = s.refunds.values().map(|(_, sum)| sum).sum();
    l.check(
        TWICE,
        "sum of refunds (no order was cancelled)",
        0,
        refunded,
        Vec::new(),
    );
    let planned_deposits: i64 = plan.customers.iter().flat_map(|c| c.deposits).sum();
    let deposited: i64 = s.accounts.values().map(|a| a.deposits).sum();
    l.check(
        TWICE,
        "sum of deposits = sum the harness paid in",
        planned_deposits,
        deposited,
        Vec::new(),
    );
    let off_balance = off_balance(s);
    l.check(
        TWICE,
        "accounts whose balance != deposits - debits + refunds",
        0,
        off_balance.len(),
        off_balance,
    );
    let off_ledger = off_ledger(s);
    l.check(
        TWICE,
        "accounts whose balance != the sum of their transactions",
        0,
        off_ledger.len(),
        off_ledger,
    );
}

/// Both outboxes, both work queues and every retry queue empty.
fn stuck_in_stores(l: &mut Ledger, s: &Stores) {
    for (what, left) in [
        ("outbox rows left, orders database", s.outbox_orders),
        ("outbox rows left, processor database", s.outbox_processor),
        (
            "messages left in the processor's queue",
            i64::from(s.processor_queue),
        ),
        (
            "messages left in order-svc's queue",
            i64::from(s.order_queue),
        ),
    ] {
        l.check(STUCK, what, 0, left, Vec::new());
    }
    l.check(
        STUCK,
        "messages waiting in retry queues",
        0,
        s.retrying.iter().map(|(_, n)| n).sum::<u32>(),
        s.retrying
            .iter()
            .map(|(q, n)| format!("{q}: {n}"))
            .collect(),
    );
}

/// Only the poison dead-lettered, and the mesh quiet within the bound.
fn stuck_in_dead_letters(l: &mut Ledger, s: &Stores, run: &RunFacts<'_>) {
    // Dead-lettering is at least once, like every publish: a consumer
    // whose ack is lost (a broker cut) after the broker confirmed the
    // dead-letter copy dead-letters the redelivery again. So the check is
    // on distinct message ids; extra copies are counted beside it.
    let injected: BTreeSet<&String> = run.faults.poison_ids.iter().collect();
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
        STUCK,
        "processor DLQ: exactly the injected poison (distinct ids)",
        injected.len(),
        dead.len(),
        dlq_detail,
    );
    l.figure(
        STUCK,
        "  extra copies of a poison message in the DLQ",
        s.processor_dlq.len() - dead.len(),
    );
    l.check(
        STUCK,
        "order-svc DLQ",
        0,
        s.order_dlq.len(),
        s.order_dlq.clone(),
    );
    l.lines.push(Line {
        section: STUCK,
        what: "quiet (all settled, outboxes and queues empty) within the bound".into(),
        expected: "yes".into(),
        actual: match run.quiet_after {
            Ok(t) => format!("{t:.1} s"),
            Err(t) => format!("no ({t:.0} s)"),
        },
        ok: Some(run.quiet_after.is_ok()),
        detail: Vec::new(),
    });
}

/// The duplicate deliveries one consumer's inbox absorbed, from its log
/// and from its `/metrics`.
fn redeliveries(l: &mut Ledger, c: &Consumer) {
    let name = c.binary.name();
    l.figure(
        REDELIVERIES,
        format!("{name}: duplicates skipped, counted in its log"),
        c.logged_duplicates,
    );
    l.figure(
        REDELIVERIES,
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
        REDELIVERIES,
        format!("{name}: deliveries applied / requeued (/metrics)"),
        format!("{} / {}", c.metrics.processed, c.metrics.retries),
    );
    // The log line is written before the counter moves, so the log
    // can only count more; fewer means the harness reads the wrong
    // line.
    if c.logged_duplicates < c.metrics.duplicates {
        l.check(
            REDELIVERIES,
            format!("{name}: log count >= /metrics count (harness sanity)"),
            format!(">= {}", c.metrics.duplicates),
            c.logged_duplicates,
            vec!["the duplicate log line changed? see chaos/src/metrics.rs".into()],
        );
    }
}

fn times(l: &mut Ledger, run: &RunFacts<'_>) {
    l.figure(
        TIMES,
        "load: first request to last order accepted (s)",
        format!("{:.1}", run.load.seconds),
    );
    l.figure(
        TIMES,
        "faults injected for (s)",
        format!("{:.1}", run.faults.seconds),
    );
    l.figure(
        TIMES,
        "whole run, start to ledger (s)",
        format!("{:.1}", run.total_seconds),
    );
}

fn refusals(refused: &[(String, String)]) -> Vec<String> {
    refused
        .iter()
        .map(|(id, why)| format!("{id}: {why}"))
        .collect()
}

/// Planned orders not stored, then those stored with another total or
/// customer.
fn missing_or_altered(plan: &Plan, s: &Stores) -> Vec<String> {
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
    missing
}

fn not_terminal(s: &Stores) -> Vec<String> {
    sorted(
        s.orders
            .iter()
            .filter(|(_, o)| o.status != "PAID" && o.status != "FAILED")
            .map(|(id, o)| format!("{id}: {}", o.status)),
    )
}

/// Orders the processor holds no payment for.
fn undecided(s: &Stores) -> Vec<String> {
    sorted(
        s.orders
            .keys()
            .filter(|id| !s.payments.contains_key(*id))
            .cloned(),
    )
}

/// Orders whose terminal status is not what the processor decided: PAID
/// needs a payment SUCCEEDED for the total, FAILED a payment FAILED.
fn disagreeing(s: &Stores) -> Vec<String> {
    sorted(s.orders.iter().filter_map(|(id, o)| {
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
    }))
}

/// Orders debited other than their total if PAID or nothing otherwise,
/// then debits of orders order-svc does not know.
fn misdebited(s: &Stores) -> Vec<String> {
    sorted(
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
    )
}

fn off_balance(s: &Stores) -> Vec<String> {
    s.accounts
        .iter()
        .filter(|(_, a)| a.balance != a.deposits - a.debits + a.refunds)
        .map(|(id, a)| {
            format!(
                "{id}: balance {} != deposits {} - debits {} + refunds {}",
                a.balance, a.deposits, a.debits, a.refunds
            )
        })
        .collect()
}

fn off_ledger(s: &Stores) -> Vec<String> {
    s.accounts
        .iter()
        .filter(|(_, a)| a.balance != a.ledger)
        .map(|(id, a)| format!("{id}: balance {} != ledger {}", a.balance, a.ledger))
        .collect()
}

fn paid(s: &Stores) -> impl Iterator<Item = &OrderRow> {
    s.orders.values().filter(|o| o.status == "PAID")
}

fn sorted(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = items.collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests;
