//! What the databases and queues hold, read after the mesh stopped: the
//! raw material of the ledger's checks ([`super::checks`]).

use std::collections::{BTreeMap, HashMap};

use tokio_postgres::Client;

use crate::broker::Broker;
use crate::mesh::{Mesh, harness_client};

pub(super) struct OrderRow {
    pub customer: String,
    pub status: String,
    pub total: i64,
    pub reason: String,
}

pub(super) struct PaymentRow {
    pub status: String,
    pub amount: i64,
}

/// What the databases and queues hold, read after the mesh stopped.
pub(super) struct Stores {
    pub orders: HashMap<String, OrderRow>,
    pub payments: HashMap<String, PaymentRow>,
    /// Per order: (DEBIT rows, sum debited), and the same for REFUND rows.
    pub debits: HashMap<String, (i64, i64)>,
    pub refunds: HashMap<String, (i64, i64)>,
    /// Per customer: balance, Σ deposits (count), Σ debits, Σ refunds, Σ ledger.
    pub accounts: BTreeMap<String, Account>,
    pub outbox_orders: i64,
    pub outbox_processor: i64,
    pub inbox_orders: i64,
    pub inbox_processor: i64,
    pub processor_queue: u32,
    pub order_queue: u32,
    /// Retry queues still holding messages.
    pub retrying: Vec<(String, u32)>,
    pub processor_dlq: Vec<String>,
    pub order_dlq: Vec<String>,
}

#[derive(Default)]
pub(super) struct Account {
    pub balance: i64,
    pub deposits: i64,
    pub deposit_count: i64,
    pub debits: i64,
    pub refunds: i64,
    pub ledger: i64,
}

/// Reads both databases, then the queues (draining the dead-letter queues).
pub(super) async fn read(mesh: &Mesh, broker: &Broker) -> anyhow::Result<Stores> {
    let orders_db = harness_client(&mesh.orders_db.url).await?;
    let processor_db = harness_client(&mesh.processor_db.url).await?;
    let dlq = ordermesh_messaging::amqp::dead_letter_queue;
    Ok(Stores {
        orders: orders(&orders_db).await?,
        payments: payments(&processor_db).await?,
        debits: per_order(&processor_db, "DEBIT").await?,
        refunds: negated(per_order(&processor_db, "REFUND").await?),
        accounts: accounts(&processor_db).await?,
        outbox_orders: count(&orders_db, r#"SELECT count(*) FROM outbox"#).await?,
        outbox_processor: count(&processor_db, r#"SELECT count(*) FROM outbox"#).await?,
        inbox_orders: count(&orders_db, r#"SELECT count(*) FROM inbox"#).await?,
        inbox_processor: count(&processor_db, r#"SELECT count(*) FROM inbox"#).await?,
        processor_queue: broker.ready(&mesh.processor_queue).await?,
        order_queue: broker.ready(&mesh.order_queue).await?,
        retrying: retrying(mesh, broker).await?,
        processor_dlq: broker.drain_ids(&dlq(&mesh.processor_queue)).await?,
        order_dlq: broker.drain_ids(&dlq(&mesh.order_queue)).await?,
    })
}

/// order-svc's orders, by order id.
async fn orders(db: &Client) -> anyhow::Result<HashMap<String, OrderRow>> {
    let rows = db
        .query(
            r#"SELECT order_id, customer_id, status, total_minor, coalesce(failure_reason, '')
               FROM orders"#,
            &[],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let row = OrderRow {
                customer: r.get(1),
                status: r.get(2),
                total: r.get(3),
                reason: r.get(4),
            };
            (r.get(0), row)
        })
        .collect())
}

/// The processor's payment decisions, by order id.
async fn payments(db: &Client) -> anyhow::Result<HashMap<String, PaymentRow>> {
    let rows = db
        .query(
            r#"SELECT order_id, status, amount_minor FROM payments"#,
            &[],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let row = PaymentRow {
                status: r.get(1),
                amount: r.get(2),
            };
            (r.get(0), row)
        })
        .collect())
}

/// Per order: how many transactions of `kind`, and minus their sum.
async fn per_order(db: &Client, kind: &str) -> anyhow::Result<HashMap<String, (i64, i64)>> {
    let rows = db
        .query(
            r#"SELECT order_id, count(*), (-sum(amount_minor))::bigint
               FROM transactions WHERE kind = $1 GROUP BY order_id"#,
            &[&kind],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.get::<_, String>(0), (r.get(1), r.get::<_, i64>(2))))
        .collect())
}

/// The same counts with the sums' sign turned (refunds are credits).
fn negated(per_order: HashMap<String, (i64, i64)>) -> HashMap<String, (i64, i64)> {
    per_order
        .into_iter()
        .map(|(k, (n, s))| (k, (n, -s)))
        .collect()
}

/// Every customer's balance beside its deposits and transactions.
async fn accounts(db: &Client) -> anyhow::Result<BTreeMap<String, Account>> {
    let mut accounts: BTreeMap<String, Account> = BTreeMap::new();
    for r in db
        .query(r#"SELECT customer_id, balance_minor FROM accounts"#, &[])
        .await?
    {
        accounts.entry(r.get(0)).or_default().balance = r.get(1);
    }
    for r in db
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
    for r in db
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
    Ok(accounts)
}

/// The retry queues still holding messages (the work queues are checked
/// on their own).
async fn retrying(mesh: &Mesh, broker: &Broker) -> anyhow::Result<Vec<(String, u32)>> {
    Ok(broker
        .waiting(&mesh.waiting_queues()?)
        .await?
        .into_iter()
        .filter(|(q, _)| *q != mesh.processor_queue && *q != mesh.order_queue)
        .collect())
}

async fn count(client: &Client, sql: &str) -> anyhow::Result<i64> {
    Ok(client.query_one(sql, &[]).await?.get(0))
}
