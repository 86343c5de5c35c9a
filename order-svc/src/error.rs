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

impl Error {
    /// Whether the database refused the data itself (SQLSTATE class 22 or
    /// 23, but not a 23505 unique violation, which a retry resolves): the
    /// same message would be refused again, so retrying cannot help.
    pub fn is_data_rejected(&self) -> bool {
        let Self::Internal(e) = self else {
            return false;
        };
        e.chain()
            .filter_map(|cause| cause.downcast_ref::<tokio_postgres::Error>())
            .filter_map(tokio_postgres::Error::code)
            .any(|code| {
                let code = code.code();
                (code.starts_with("22") || code.starts_with("23")) && code != "23505"
            })
    }
}
