//! The one error type of the service's domain and store. gRPC handlers turn
//! it into a `tonic::Status` (see `grpc.rs`); the consumer treats data the
//! database rejects ([`Error::rejection`]) as poison and every other
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
    /// same input cannot help: SQLSTATE class 22 (data exception, e.g. a NUL
    /// character in text, a number out of range) or 23 (integrity
    /// constraint, e.g. a CHECK), except 23505 unique violations, which the
    /// idempotency keys expect and a retry resolves as a duplicate.
    pub fn is_data_rejected(&self) -> bool {
        self.rejection().is_some()
    }

    /// For data the database refused (see [`Error::is_data_rejected`]), a
    /// short name of what was wrong, fit for a reason a customer may read:
    /// no value, table or constraint names.
    pub fn rejection(&self) -> Option<&'static str> {
        let Self::Database(e) = self else {
            return None;
        };
        let code = e.code()?.code();
        let class = match code {
            "23505" => return None,
            "22001" => "value too long",
            "22003" => "number out of range",
            "22012" => "division by zero",
            "22021" | "22P05" => "invalid text",
            "22P02" => "invalid value",
            "23502" => "missing value",
            "23503" => "unknown reference",
            "23514" => "check violation",
            "23P01" => "exclusion violation",
            c if c.starts_with("22") => "invalid data",
            c if c.starts_with("23") => "integrity violation",
            _ => return None,
        };
        Some(class)
    }

    pub(crate) fn invalid(field: &'static str, description: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            description: description.into(),
        }
    }
}
