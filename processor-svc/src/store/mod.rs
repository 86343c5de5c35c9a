//! All SQL of the service: [`Store`] owns the connection pool and has one
//! method per operation. Methods that change money run in one transaction
//! and lock the account row first, then touch `payments`, so concurrent
//! deposits, payments and refunds of one customer serialise on it (and
//! cannot deadlock). Each movement of a balance also writes a row of the
//! `transactions` ledger in the same transaction, with the balance it left.
//!
//! The `payments` row of an order is its one decision: SUCCEEDED or FAILED
//! by [`Store::settle_order`], or CANCELLED (a tombstone) when
//! [`Store::cancel_order`] came first; a cancel turns SUCCEEDED into
//! REFUNDED. Whoever inserts the row first decides; the primary key and the
//! guarded status update make every later message a no-op.
//!
//! The methods are grouped by what they touch, one file each: `accounts`
//! (open, read, deposit, the ledger), `settle` (an `order.created`),
//! `cancel` (an `order.cancelled`) and `credentials` (Register, Login and
//! its throttle).

use deadpool_postgres::Pool;
use tokio_postgres::Row;

use crate::account::Account;

mod accounts;
mod cancel;
mod credentials;
mod settle;

pub use accounts::TransactionPage;
pub use cancel::{CancelOutcome, Refund};
pub use settle::Settlement;

/// History table of this service's migrations.
const HISTORY_TABLE: &str = "processor_schema_history";

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// The database's migrations: the outbox and inbox, then the service's own.
pub fn migrations() -> Vec<refinery::Runner> {
    let mut own = embedded::migrations::runner();
    own.set_migration_table_name(HISTORY_TABLE);
    vec![ordermesh_messaging::migrations(), own]
}

/// The processor's database.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("pool", &self.pool.status())
            .finish()
    }
}

impl Store {
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }
}

fn account_from_row(row: Row) -> Account {
    Account {
        customer_id: row.get("customer_id"),
        currency_code: row.get("currency_code"),
        balance_minor: row.get("balance_minor"),
        create_time: row.get("create_time"),
        update_time: row.get("update_time"),
    }
}
