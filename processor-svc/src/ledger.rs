//! The ledger as the service sees it: every movement of a balance
//! ([`Transaction`]: deposits, order debits, refunds), and the checks
//! applied to a `ListTransactions` request, page token included, before
//! anything reaches the store.

use chrono::{DateTime, Utc};

use ordermesh_runtime::page_token;

use crate::Error;
use crate::account::parse_customer_id;

/// Page size of a `ListTransactions` call that names none.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Larger page sizes are served as this many.
pub const MAX_PAGE_SIZE: usize = 1000;

/// What moved the money.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionKind {
    Deposit,
    Debit,
    Refund,
}

impl TransactionKind {
    /// The value of the `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deposit => "DEPOSIT",
            Self::Debit => "DEBIT",
            Self::Refund => "REFUND",
        }
    }

    /// The kind a `kind` column value names.
    pub fn from_column(value: &str) -> Option<Self> {
        [Self::Deposit, Self::Debit, Self::Refund]
            .into_iter()
            .find(|k| k.as_str() == value)
    }
}

/// One movement of a customer's balance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// Position in the ledger, increasing with time; the API's
    /// `transaction_id`, and what page tokens point at.
    pub seq: i64,
    pub customer_id: String,
    pub kind: TransactionKind,
    /// Signed change of the balance: negative for a debit.
    pub amount_minor: i64,
    /// The balance right after this movement.
    pub balance_after_minor: i64,
    /// Set for debits and refunds.
    pub order_id: Option<String>,
    /// Set for deposits.
    pub deposit_id: Option<String>,
    pub create_time: DateTime<Utc>,
}

/// A validated `ListTransactions` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionQuery {
    pub customer_id: String,
    /// 1 to [`MAX_PAGE_SIZE`].
    pub page_size: usize,
    /// Only transactions older than this `seq` (from the page token).
    pub before_seq: Option<i64>,
}

/// What a `ListTransactions` page token is bound to, besides the customer.
const PAGE_TOKEN_SCOPE: &str = "ordermesh.payment.v1.ListTransactions/page_token/v1";

impl TransactionQuery {
    /// Validates the request: `customer_id` as for `GetAccount`, a
    /// `page_size` of 0 is [`DEFAULT_PAGE_SIZE`], and a `page_token` must
    /// be one this customer's listing handed out.
    pub fn parse(customer_id: String, page_size: i32, page_token: &str) -> Result<Self, Error> {
        let customer_id = parse_customer_id(customer_id)?;
        let page_size = match page_size {
            n if n < 0 => return Err(Error::invalid("page_size", "must not be negative")),
            0 => DEFAULT_PAGE_SIZE,
            n => usize::try_from(n).map_or(MAX_PAGE_SIZE, |n| n.min(MAX_PAGE_SIZE)),
        };
        let before_seq = if page_token.is_empty() {
            None
        } else {
            Some(parse_page_token(&customer_id, page_token)?)
        };
        Ok(Self {
            customer_id,
            page_size,
            before_seq,
        })
    }

    /// The opaque token for the page after the transaction at `seq`.
    pub fn page_token(&self, seq: i64) -> String {
        page_token::encode(&[PAGE_TOKEN_SCOPE, &self.customer_id], seq)
    }
}

/// The `seq` a token of `customer_id`'s listing points after.
fn parse_page_token(customer_id: &str, token: &str) -> Result<i64, Error> {
    page_token::decode(&[PAGE_TOKEN_SCOPE, customer_id], token)
        .ok_or_else(|| Error::invalid("page_token", "not a page token of this account's listing"))
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

    fn query(customer_id: &str, page_size: i32, token: &str) -> Result<TransactionQuery, Error> {
        TransactionQuery::parse(customer_id.into(), page_size, token)
    }

    #[test]
    fn kinds_round_trip_through_the_column() {
        for kind in [
            TransactionKind::Deposit,
            TransactionKind::Debit,
            TransactionKind::Refund,
        ] {
            assert_eq!(TransactionKind::from_column(kind.as_str()), Some(kind));
        }
        assert_eq!(TransactionKind::from_column("deposit"), None);
    }

    #[test]
    fn page_size_defaults_clamps_and_refuses_negatives() {
        assert_eq!(query("c", 0, "").unwrap().page_size, DEFAULT_PAGE_SIZE);
        assert_eq!(query("c", 1, "").unwrap().page_size, 1);
        assert_eq!(query("c", 1000, "").unwrap().page_size, 1000);
        assert_eq!(query("c", i32::MAX, "").unwrap().page_size, MAX_PAGE_SIZE);
        for bad in [-1, i32::MIN] {
            assert_eq!(field(query("c", bad, "").unwrap_err()), "page_size");
        }
    }

    #[test]
    fn the_customer_id_is_checked_like_get_account() {
        assert_eq!(field(query("", 0, "").unwrap_err()), "customer_id");
        let long = "x".repeat(crate::account::MAX_ID_CHARS + 1);
        assert_eq!(field(query(&long, 0, "").unwrap_err()), "customer_id");
    }

    #[test]
    fn page_tokens_round_trip_only_for_their_customer() {
        let alice = query("alice", 10, "").unwrap();
        assert_eq!(alice.before_seq, None);
        for seq in [1, 42, i64::MAX] {
            let token = alice.page_token(seq);
            assert_eq!(query("alice", 10, &token).unwrap().before_seq, Some(seq));
            assert_eq!(field(query("bob", 10, &token).unwrap_err()), "page_token");
        }
    }

    #[test]
    fn edited_or_garbage_tokens_are_refused() {
        let token = query("alice", 10, "").unwrap().page_token(1000);
        assert_eq!(token.len(), 23);
        for i in 0..token.len() {
            let mut edited = token.clone().into_bytes();
            edited[i] = if edited[i] == b'A' { b'B' } else { b'A' };
            let edited = String::from_utf8(edited).unwrap();
            assert_eq!(
                field(query("alice", 10, &edited).unwrap_err()),
                "page_token",
                "{edited}"
            );
        }
        let long = format!("{token}A");
        for garbage in ["x", "!!!!", "AAAAAAAAAAAAAAAAAAAAAAA", &long, "AQ=="] {
            assert_eq!(
                field(query("alice", 10, garbage).unwrap_err()),
                "page_token"
            );
        }
    }
}
