//! Accounts as the service sees them, and the checks applied to what
//! clients send before anything reaches the store.

use chrono::{DateTime, Utc};

use crate::Error;

/// Currency of an account opened without one.
pub const DEFAULT_CURRENCY: &str = "USD";
/// Longest customer id or deposit id accepted, in characters.
pub const MAX_ID_CHARS: usize = 128;

/// A customer's account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub customer_id: String,
    pub currency_code: String,
    /// Minor units; never negative (the schema enforces it too).
    pub balance_minor: i64,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
}

/// A validated request to open an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAccount {
    pub customer_id: String,
    pub currency_code: String,
}

impl NewAccount {
    pub fn parse(customer_id: String, currency_code: String) -> Result<Self, Error> {
        Ok(Self {
            customer_id: parse_customer_id(customer_id)?,
            currency_code: parse_currency_code(currency_code)?,
        })
    }
}

/// A validated deposit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deposit {
    /// Idempotency key: applied at most once.
    pub deposit_id: String,
    pub customer_id: String,
    pub amount_minor: i64,
}

impl Deposit {
    /// Validates the fields; an empty `deposit_id` gets a fresh UUIDv7, so
    /// such a deposit is never deduplicated.
    pub fn parse(
        customer_id: String,
        amount_minor: i64,
        deposit_id: String,
    ) -> Result<Self, Error> {
        let customer_id = parse_customer_id(customer_id)?;
        if amount_minor <= 0 {
            return Err(Error::invalid("amount_minor", "must be greater than 0"));
        }
        let deposit_id = if deposit_id.is_empty() {
            uuid::Uuid::now_v7().to_string()
        } else {
            parse_id("deposit_id", deposit_id)?
        };
        Ok(Self {
            deposit_id,
            customer_id,
            amount_minor,
        })
    }
}

/// A customer id: required, at most [`MAX_ID_CHARS`] characters.
pub fn parse_customer_id(value: String) -> Result<String, Error> {
    // Blank is missing, as order-svc has it: "  " is nobody's id.
    if value.trim().is_empty() {
        return Err(Error::invalid("customer_id", "is required"));
    }
    parse_id("customer_id", value)
}

fn parse_id(field: &'static str, value: String) -> Result<String, Error> {
    if value.chars().count() > MAX_ID_CHARS {
        return Err(Error::invalid(
            field,
            format!("must be at most {MAX_ID_CHARS} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(value)
}

/// An ISO 4217-shaped code: three uppercase ASCII letters; empty means
/// [`DEFAULT_CURRENCY`].
pub fn parse_currency_code(value: String) -> Result<String, Error> {
    if value.is_empty() {
        return Ok(DEFAULT_CURRENCY.to_owned());
    }
    if value.len() == 3 && value.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(value)
    } else {
        Err(Error::invalid(
            "currency_code",
            "must be three uppercase letters (ISO 4217), e.g. USD",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(err: Error) -> &'static str {
        match err {
            Error::InvalidArgument { field, .. } => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn currency_defaults_to_usd() {
        let a = NewAccount::parse("c".into(), String::new()).unwrap();
        assert_eq!(a.currency_code, "USD");
    }

    #[test]
    fn currency_must_be_three_uppercase_letters() {
        for bad in ["usd", "US", "EURO", "U5D", "ÜSD"] {
            let err = NewAccount::parse("c".into(), bad.into()).unwrap_err();
            assert_eq!(field(err), "currency_code", "{bad}");
        }
        assert!(NewAccount::parse("c".into(), "EUR".into()).is_ok());
    }

    #[test]
    fn customer_id_is_required_and_bounded() {
        assert_eq!(
            field(parse_customer_id(String::new()).unwrap_err()),
            "customer_id"
        );
        assert_eq!(
            field(parse_customer_id(" \t ".into()).unwrap_err()),
            "customer_id"
        );
        assert!(parse_customer_id("é".repeat(MAX_ID_CHARS)).is_ok());
        let long = "x".repeat(MAX_ID_CHARS + 1);
        assert_eq!(field(parse_customer_id(long).unwrap_err()), "customer_id");
        assert_eq!(
            field(parse_customer_id("a\nb".into()).unwrap_err()),
            "customer_id"
        );
    }

    #[test]
    fn deposit_amount_must_be_positive() {
        for amount in [0, -1, i64::MIN] {
            let err = Deposit::parse("c".into(), amount, "d".into()).unwrap_err();
            assert_eq!(field(err), "amount_minor");
        }
    }

    #[test]
    fn an_empty_deposit_id_gets_a_fresh_uuid() {
        let a = Deposit::parse("c".into(), 1, String::new()).unwrap();
        let b = Deposit::parse("c".into(), 1, String::new()).unwrap();
        assert_ne!(a.deposit_id, b.deposit_id);
        let id: uuid::Uuid = a.deposit_id.parse().unwrap();
        assert_eq!(id.get_version_num(), 7);
    }

    #[test]
    fn a_long_deposit_id_is_rejected() {
        let err = Deposit::parse("c".into(), 1, "d".repeat(MAX_ID_CHARS + 1)).unwrap_err();
        assert_eq!(field(err), "deposit_id");
    }
}
