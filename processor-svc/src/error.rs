//! The one error type of the service's domain and store. gRPC handlers turn
//! it into a `tonic::Status` (see `grpc.rs`); the consumer treats every
//! variant it can meet as transient.

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
    #[error("database: {0}")]
    Database(#[from] tokio_postgres::Error),
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
}

impl Error {
    /// Whether the database refused the data itself (SQLSTATE class 22,
    /// e.g. a NUL character in text): retrying the same input cannot help.
    pub fn is_data_rejected(&self) -> bool {
        match self {
            Self::Database(e) => e.code().is_some_and(|c| c.code().starts_with("22")),
            _ => false,
        }
    }

    pub(crate) fn invalid(field: &'static str, description: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            description: description.into(),
        }
    }
}
