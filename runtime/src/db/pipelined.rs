//! A transaction whose BEGIN and COMMIT travel with its statements.
//!
//! `tokio_postgres::Client::transaction` waits for BEGIN's answer before
//! the first statement can be sent, and `commit` consumes the transaction,
//! so it cannot go out with the last statement either: two round trips of
//! their own per transaction. [`PipelinedTx`] sends them in the same flight
//! as the statements beside them (`tokio::try_join!(biased; tx.begin(),
//! ...)`, `tokio::try_join!(biased; ..., tx.commit())`): the connection
//! sends requests in the order they are first polled, and a `biased`
//! `try_join!` polls in the order written.
//!
//! What a pipelined statement may rely on:
//!
//! - BEGIN can fail only with the connection, and the statements after it
//!   then fail too.
//! - A statement joined with COMMIT must be prepared before the join: one
//!   prepared inside it would be parsed first and executed after the
//!   COMMIT had gone out.
//! - A failed statement aborts the transaction, so a COMMIT sent behind it
//!   only rolls back, and `try_join!` returns that statement's error.
//! - Dropped without a successful [`PipelinedTx::commit`] (an error, a
//!   cancelled future), the transaction's connection is closed, which
//!   rolls it back, instead of going back to the pool.

use std::sync::atomic::{AtomicBool, Ordering};

use deadpool_postgres::{Client, Object};

/// An open transaction on a pooled connection: [`PipelinedTx::begin`]
/// first, statements on [`PipelinedTx::client`], then
/// [`PipelinedTx::commit`].
pub struct PipelinedTx {
    /// `None` only while dropping.
    client: Option<Object>,
    committed: AtomicBool,
}

impl PipelinedTx {
    /// Takes `client` for one transaction; sends nothing yet.
    pub fn new(client: Object) -> Self {
        Self {
            client: Some(client),
            committed: AtomicBool::new(false),
        }
    }

    /// The connection, for the transaction's statements.
    pub fn client(&self) -> &Client {
        self.client.as_ref().expect("present until dropped")
    }

    /// BEGIN; poll it before the statements that belong to the transaction.
    pub async fn begin(&self) -> Result<(), tokio_postgres::Error> {
        self.client().batch_execute("BEGIN").await
    }

    /// COMMIT; poll it after the statements it commits.
    pub async fn commit(&self) -> Result<(), tokio_postgres::Error> {
        self.client().batch_execute("COMMIT").await?;
        self.committed.store(true, Ordering::Release);
        Ok(())
    }
}

impl Drop for PipelinedTx {
    fn drop(&mut self) {
        // Not committed (an error, a cancelled future): the connection may
        // be inside the transaction, so it is closed, not pooled; closing
        // rolls back. Errors are rare enough that a new connection costs
        // less than a ROLLBACK round trip on every path.
        if let Some(client) = self.client.take()
            && !self.committed.load(Ordering::Acquire)
        {
            drop(Object::take(client));
        }
    }
}
