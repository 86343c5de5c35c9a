//! The one error type of the service's operations. `grpc.rs` turns it into a
//! `tonic::Status`; the payment consumer into a retry verdict.

use crate::domain::ValidationError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request names a field that cannot be accepted.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("order {0} not found")]
    NotFound(String),
    /// The order id is taken by an order with other content.
    #[error("order {0} already exists with different content")]
    AlreadyExists(String),
    /// The order is in a state that does not allow the operation.
    #[error("{0}")]
    FailedPrecondition(String),
    /// No database connection could be had in time; worth retrying.
    #[error("database unavailable: {0:#}")]
    Unavailable(anyhow::Error),
    /// Anything else: a bug or a failed query. Logged, never shown.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}
