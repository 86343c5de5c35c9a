//! Accounts: opening, reading, deposits and the ledger.

use crate::Error;
use crate::account::{Account, Deposit, NewAccount};
use crate::ledger::{self, TransactionKind, TransactionQuery};

use super::{Store, account_from_row};
use tokio_postgres::Row;

/// One page of [`Store::list_transactions`], newest first.
#[derive(Debug, Clone)]
pub struct TransactionPage {
    pub transactions: Vec<ledger::Transaction>,
    /// Whether older transactions follow.
    pub more: bool,
}

impl Store {
    /// Opens an account with a zero balance; `AccountExists` if it is open.
    #[tracing::instrument(skip(self))]
    pub async fn create_account(&self, new: &NewAccount) -> Result<Account, Error> {
        let conn = self.pool.get().await?;
        let row = conn
            .query_opt(
                r#"INSERT INTO accounts (customer_id, currency_code)
                   VALUES ($1, $2)
                   ON CONFLICT (customer_id) DO NOTHING
                   RETURNING customer_id, currency_code, balance_minor, create_time, update_time"#,
                &[&new.customer_id, &new.currency_code],
            )
            .await?;
        row.map(account_from_row)
            .ok_or_else(|| Error::AccountExists(new.customer_id.clone()))
    }

    #[tracing::instrument(skip(self))]
    pub async fn get_account(&self, customer_id: &str) -> Result<Account, Error> {
        let conn = self.pool.get().await?;
        let row = conn
            .query_opt(
                r#"SELECT customer_id, currency_code, balance_minor, create_time, update_time
                   FROM accounts
                   WHERE customer_id = $1"#,
                &[&customer_id],
            )
            .await?;
        row.map(account_from_row)
            .ok_or_else(|| Error::AccountNotFound(customer_id.to_owned()))
    }

    /// Applies `deposit` unless its id was applied before, with its DEPOSIT
    /// ledger row. A known id with the same customer and amount returns the
    /// account as it is now; with other content it is `DepositConflict`.
    #[tracing::instrument(skip(self))]
    pub async fn deposit(&self, deposit: &Deposit) -> Result<Account, Error> {
        let mut conn = self.pool.get().await?;
        let tx = conn.transaction().await?;
        let account = tx
            .query_opt(
                r#"SELECT customer_id, currency_code, balance_minor, create_time, update_time
                   FROM accounts
                   WHERE customer_id = $1
                   FOR UPDATE"#,
                &[&deposit.customer_id],
            )
            .await?
            .map(account_from_row)
            .ok_or_else(|| Error::AccountNotFound(deposit.customer_id.clone()))?;

        // Waits for a concurrent transaction holding the same id, then sees it.
        let inserted = tx
            .execute(
                r#"INSERT INTO deposits (deposit_id, customer_id, amount_minor)
                   VALUES ($1, $2, $3)
                   ON CONFLICT (deposit_id) DO NOTHING"#,
                &[
                    &deposit.deposit_id,
                    &deposit.customer_id,
                    &deposit.amount_minor,
                ],
            )
            .await?;
        if inserted == 0 {
            let earlier = tx
                .query_one(
                    r#"SELECT customer_id, amount_minor FROM deposits WHERE deposit_id = $1"#,
                    &[&deposit.deposit_id],
                )
                .await?;
            let same = earlier.get::<_, String>(0) == deposit.customer_id
                && earlier.get::<_, i64>(1) == deposit.amount_minor;
            tx.rollback().await?;
            return if same {
                Ok(account)
            } else {
                Err(Error::DepositConflict(deposit.deposit_id.clone()))
            };
        }

        let balance = account
            .balance_minor
            .checked_add(deposit.amount_minor)
            .ok_or(Error::BalanceOverflow)?;
        let row = tx
            .query_one(
                r#"UPDATE accounts
                   SET balance_minor = $2, update_time = now()
                   WHERE customer_id = $1
                   RETURNING customer_id, currency_code, balance_minor, create_time, update_time"#,
                &[&deposit.customer_id, &balance],
            )
            .await?;
        tx.execute(
            r#"INSERT INTO transactions
                   (customer_id, kind, amount_minor, balance_after_minor, deposit_id)
               VALUES ($1, 'DEPOSIT', $2, $3, $4)"#,
            &[
                &deposit.customer_id,
                &deposit.amount_minor,
                &balance,
                &deposit.deposit_id,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(account_from_row(row))
    }

    /// One page of the customer's ledger, newest first, older than
    /// `query.before_seq` when set; `AccountNotFound` for an unknown account.
    #[tracing::instrument(skip(self))]
    pub async fn list_transactions(
        &self,
        query: &TransactionQuery,
    ) -> Result<TransactionPage, Error> {
        let conn = self.pool.get().await?;
        // One row more than asked tells whether another page follows.
        let limit = i64::try_from(query.page_size)
            .unwrap_or(i64::MAX)
            .saturating_add(1);
        let rows = conn
            .query(
                r#"SELECT seq, customer_id, kind, amount_minor, balance_after_minor,
                          order_id, deposit_id, create_time
                   FROM transactions
                   WHERE customer_id = $1 AND ($2::bigint IS NULL OR seq < $2)
                   ORDER BY seq DESC
                   LIMIT $3"#,
                &[&query.customer_id, &query.before_seq, &limit],
            )
            .await?;
        // Accounts are never deleted, so asking afterwards is as good.
        if rows.is_empty()
            && conn
                .query_opt(
                    r#"SELECT 1 FROM accounts WHERE customer_id = $1"#,
                    &[&query.customer_id],
                )
                .await?
                .is_none()
        {
            return Err(Error::AccountNotFound(query.customer_id.clone()));
        }
        let more = rows.len() > query.page_size;
        let transactions = rows
            .into_iter()
            .take(query.page_size)
            .map(transaction_from_row)
            .collect();
        Ok(TransactionPage { transactions, more })
    }
}

fn transaction_from_row(row: Row) -> ledger::Transaction {
    let kind: &str = row.get("kind");
    ledger::Transaction {
        seq: row.get("seq"),
        customer_id: row.get("customer_id"),
        kind: TransactionKind::from_column(kind).expect("the kind CHECK allows only known kinds"),
        amount_minor: row.get("amount_minor"),
        balance_after_minor: row.get("balance_after_minor"),
        order_id: row.get("order_id"),
        deposit_id: row.get("deposit_id"),
        create_time: row.get("create_time"),
    }
}
