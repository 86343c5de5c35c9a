use std::collections::{BTreeMap, HashMap};

use super::super::stores::{Account, OrderRow, PaymentRow, Stores};
use super::super::{Consumer, RunFacts};
use super::judge;
use crate::faults::FaultCounts;
use crate::load::{LoadReport, Plan};
use crate::mesh::Binary;
use crate::metrics::Counters;

/// What a mesh that lost nothing holds after `plan`: every third order
/// FAILED, the rest PAID and debited once, the poison dead-lettered (one id
/// twice).
fn clean_stores(plan: &Plan) -> Stores {
    let mut orders = HashMap::new();
    let mut payments = HashMap::new();
    let mut debits = HashMap::new();
    for (i, o) in plan.orders.iter().enumerate() {
        let paid = i % 3 != 0;
        let status = if paid { "PAID" } else { "FAILED" };
        let row = OrderRow {
            customer: plan.customers[o.customer].id.clone(),
            status: status.into(),
            total: o.total_minor,
            reason: if paid { "" } else { "insufficient funds" }.into(),
        };
        orders.insert(o.order_id.clone(), row);
        let payment = PaymentRow {
            status: if paid { "SUCCEEDED" } else { "FAILED" }.into(),
            amount: o.total_minor,
        };
        payments.insert(o.order_id.clone(), payment);
        if paid {
            debits.insert(o.order_id.clone(), (1, o.total_minor));
        }
    }
    let mut accounts = BTreeMap::new();
    for c in &plan.customers {
        let deposits = c.deposits.iter().sum();
        let account = Account {
            balance: deposits,
            deposits,
            deposit_count: 2,
            debits: 0,
            refunds: 0,
            ledger: deposits,
        };
        accounts.insert(c.id.clone(), account);
    }
    Stores {
        orders,
        payments,
        debits,
        refunds: HashMap::new(),
        accounts,
        outbox_orders: 0,
        outbox_processor: 0,
        inbox_orders: plan.orders.len() as i64,
        inbox_processor: plan.orders.len() as i64,
        processor_queue: 0,
        order_queue: 0,
        retrying: Vec::new(),
        processor_dlq: vec!["p1".into(), "p2".into(), "p2".into()],
        order_dlq: Vec::new(),
    }
}

fn consumer(binary: Binary, logged_duplicates: u64) -> Consumer {
    Consumer {
        binary,
        metrics: Counters {
            processed: 10,
            duplicates: 4,
            retries: 2,
            dead_lettered: 1,
        },
        processes: 2,
        logged_duplicates,
    }
}

fn facts<'a>(plan: &'a Plan, load: &'a LoadReport, faults: &'a FaultCounts) -> RunFacts<'a> {
    RunFacts {
        plan,
        load,
        faults,
        consumers: [
            consumer(Binary::ProcessorSvc, 5),
            consumer(Binary::OrderSvc, 4),
        ],
        quiet_after: Ok(1.5),
        total_seconds: 12.0,
    }
}

fn faults() -> FaultCounts {
    FaultCounts {
        relay_kills: 3,
        poison_ids: vec!["p1".into(), "p2".into()],
        ..Default::default()
    }
}

#[test]
fn a_run_that_lost_nothing_is_clean() {
    let plan = Plan::new(60, 5, 7);
    let load = LoadReport {
        accepted: 60,
        ..Default::default()
    };
    let faults = faults();
    let ledger = judge(&clean_stores(&plan), &facts(&plan, &load, &faults));
    assert!(ledger.is_clean(), "{}", ledger.table());
    let table = ledger.table();
    assert!(table.contains("extra copies of a poison message in the DLQ"));
    assert!(table.contains("nothing lost, nothing applied twice, nothing stuck"));
}

#[test]
fn each_kind_of_damage_fails_its_check() {
    let plan = Plan::new(60, 5, 7);
    let load = LoadReport {
        accepted: 60,
        ..Default::default()
    };
    let faults = faults();
    let mut s = clean_stores(&plan);
    let (lost, twice) = (&plan.orders[1].order_id, &plan.orders[2].order_id);
    s.orders.remove(lost);
    s.payments.remove(lost);
    s.debits.remove(lost);
    s.inbox_processor -= 1;
    let debit = s.debits.get_mut(twice).expect("PAID");
    *debit = (2, 2 * debit.1);
    s.outbox_processor = 1;
    s.processor_dlq.pop();
    s.processor_dlq.pop();
    let mut run = facts(&plan, &load, &faults);
    run.quiet_after = Err(90.0);
    let ledger = judge(&s, &run);
    let failed: Vec<&str> = ledger
        .violations()
        .iter()
        .map(|l| l.what.as_str())
        .collect();
    assert_eq!(
        failed,
        [
            "orders stored in the orders database, as sent",
            "order.created events applied by the processor (its inbox)",
            "orders debited more than once",
            "debits other than: PAID once for its total, FAILED never",
            "sum of debits (processor) = sum of PAID totals (order-svc)",
            "outbox rows left, processor database",
            "processor DLQ: exactly the injected poison (distinct ids)",
            "quiet (all settled, outboxes and queues empty) within the bound",
        ],
        "{}",
        ledger.table()
    );
}
