//! Whether a failure to apply a message may pass: the one rule every
//! consumer uses.
//!
//! The database refusing the data itself would refuse it again on every
//! retry, so the message is poison: SQLSTATE class 22 (data exception, e.g.
//! a NUL character in text, a number out of range) or 23 (integrity
//! constraint, e.g. a CHECK), except 23505 unique violations, which the
//! idempotency keys expect and a retry resolves as a duplicate. Anything
//! else (a lost connection, a serialization failure, a deadlock, a pool
//! timeout) may pass: it is transient.
//!
//! What a consumer does with poison is its own business: dead-letter it at
//! once ([`crate::amqp::HandleError::classified`]), or end what the message
//! was about some other way (the processor fails the order).

/// What a failure calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// The same input would be refused again. The class is a short name of
    /// what was wrong, fit for a reason a customer may read: no value,
    /// table or constraint names.
    Poison(&'static str),
    /// It may pass: try again later.
    Transient,
}

/// The disposition of `error` by the SQLSTATE of the first database error
/// in its chain that refuses the data; transient when there is none.
pub fn classify(error: &anyhow::Error) -> Disposition {
    error
        .chain()
        .filter_map(|cause| cause.downcast_ref::<tokio_postgres::Error>())
        .map(classify_db)
        .find(|d| *d != Disposition::Transient)
        .unwrap_or(Disposition::Transient)
}

/// The disposition of one database error, by its SQLSTATE.
pub fn classify_db(error: &tokio_postgres::Error) -> Disposition {
    error
        .code()
        .map_or(Disposition::Transient, |code| sqlstate(code.code()))
}

/// The disposition of a SQLSTATE code.
pub fn sqlstate(code: &str) -> Disposition {
    let class = match code {
        "23505" => return Disposition::Transient,
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
        _ => return Disposition::Transient,
    };
    Disposition::Poison(class)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_the_database_refuses_is_poison_by_class() {
        for (code, class) in [
            ("23514", "check violation"),
            ("22021", "invalid text"),
            ("22P05", "invalid text"),
            ("22003", "number out of range"),
            ("22999", "invalid data"),
            ("23999", "integrity violation"),
        ] {
            assert_eq!(sqlstate(code), Disposition::Poison(class), "{code}");
        }
    }

    #[test]
    fn unique_violations_and_other_classes_are_transient() {
        // 23505: a retry resolves it as a duplicate. 40001 serialization
        // failure, 40P01 deadlock, 08006 connection failure, 57P01 admin
        // shutdown, 53300 too many connections: all may pass.
        for code in [
            "23505", "40001", "40P01", "08006", "57P01", "53300", "XX000",
        ] {
            assert_eq!(sqlstate(code), Disposition::Transient, "{code}");
        }
    }

    #[test]
    fn errors_without_a_database_error_are_transient() {
        let error = anyhow::anyhow!("connection reset").context("apply the event");
        assert_eq!(classify(&error), Disposition::Transient);
    }
}
