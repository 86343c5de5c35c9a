//! The one error type of the service's domain and store. gRPC handlers turn
//! it into a `tonic::Status` (see `grpc.rs`); the consumer treats data the
//! database rejects ([`Error::is_data_rejected`], by
//! `ordermesh_messaging::classify`) as poison and every other variant it can
//! meet as transient.

use ordermesh_messaging::classify::{Disposition, classify_db};

/// Why an operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is missing or malformed; `field` is its proto name.
    #[error("invalid {field}: {description}")]
    InvalidArgument {
        field: &'static str,
        description: String,
    },
    #[error("account {0:?} not found")]
    AccountNotFound(String),
    #[error("account {0:?} already exists")]
    AccountExists(String),
    /// The deposit id was already used for another customer or amount.
    #[error("deposit {0:?} was already applied with other content")]
    DepositConflict(String),
    #[error("the deposit would overflow the balance")]
    BalanceOverflow,
    /// Register: the customer id already has credentials.
    #[error("customer {0:?} is already registered")]
    AlreadyRegistered(String),
    /// Login: an unknown customer id or a wrong password, told apart
    /// nowhere, so callers cannot probe for registered ids.
    #[error("wrong customer id or password")]
    WrongCredentials,
    /// Hashing a password failed (not the caller's fault).
    #[error("password hashing: {0}")]
    PasswordHash(String),
    /// A state the code's own checks rule out; the transaction is rolled
    /// back and the message retried.
    #[error("internal: {0}")]
    Internal(String),
    #[error("database: {0}")]
    Database(#[from] tokio_postgres::Error),
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
}

impl Error {
    /// Whether the database refused the data itself, so that retrying the
    /// same input cannot help: poison by the one classification of
    /// `ordermesh_messaging::classify` (SQLSTATE class 22 or 23, except
    /// 23505 unique violations, which the idempotency keys expect).
    pub fn is_data_rejected(&self) -> bool {
        matches!(
            self,
            Self::Database(e) if matches!(classify_db(e), Disposition::Poison(_))
        )
    }

    pub(crate) fn invalid(field: &'static str, description: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            description: description.into(),
        }
    }
}
