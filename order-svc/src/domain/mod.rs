//! The order domain: validated requests ([`NewOrder`], [`ListQuery`]), stored
//! orders ([`Order`], [`OrderStatus`]) and payment results. Wire requests
//! enter through `TryFrom` here, which is where every field is checked; no
//! prost type goes deeper than this module and `grpc.rs`.
//!
//! A new order's checks and fingerprint live in `new_order.rs`, a
//! listing's filter and page tokens in `list.rs`.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use ordermesh_proto::order::v1 as pb;
use serde::{Deserialize, Serialize};

mod list;
mod new_order;

pub use list::{ListFilter, ListQuery};
pub use new_order::NewOrder;

/// Longest `order_id` and `customer_id`, in characters.
pub const MAX_ID_LEN: usize = 128;
/// Most items in one order.
pub const MAX_ITEMS: usize = 100;
/// Longest SKU, in characters.
pub const MAX_SKU_LEN: usize = 64;
/// Currency of an order whose request names none.
pub const DEFAULT_CURRENCY: &str = "USD";
/// Page size of a `ListOrders` request that names none.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Larger page sizes are lowered to this.
pub const MAX_PAGE_SIZE: usize = 1000;
/// Longest cancellation reason, in characters.
pub const MAX_CANCEL_REASON_LEN: usize = 256;

/// A request field that cannot be accepted, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct ValidationError {
    /// Path of the field as the client wrote it, e.g. `items[0].sku`.
    pub field: String,
    pub reason: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ValidationError {
    ValidationError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// One line of an order. Stored as JSON, so it is (de)serializable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderItem {
    pub sku: String,
    pub quantity: i32,
    pub unit_price_minor: i64,
}

/// An order id is at most [`MAX_ID_LEN`] characters of `A-Z a-z 0-9 - _ . : ~`,
/// so it is safe in a URL path and a log line.
pub fn check_order_id(field: &str, id: &str) -> Result<(), ValidationError> {
    if id.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if id.len() > MAX_ID_LEN {
        return Err(invalid(
            field,
            format!("must be at most {MAX_ID_LEN} characters"),
        ));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'~'))
    {
        return Err(invalid(
            field,
            "may contain only letters, digits and - _ . : ~",
        ));
    }
    Ok(())
}

/// A customer id is not blank, at most [`MAX_ID_LEN`] characters, and has
/// no control characters. `required` is false for the list filter, where
/// empty means "any customer".
fn check_customer_id(field: &str, id: &str, required: bool) -> Result<(), ValidationError> {
    if required && id.trim().is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if id.chars().count() > MAX_ID_LEN {
        return Err(invalid(
            field,
            format!("must be at most {MAX_ID_LEN} characters"),
        ));
    }
    if id.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// Where an order is in its life. `Pending` moves to exactly one of the
/// others and never back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderStatus {
    Pending,
    Paid,
    Failed,
    Cancelled,
}

impl OrderStatus {
    /// The name stored in the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Paid => "PAID",
            Self::Failed => "FAILED",
            Self::Cancelled => "CANCELLED",
        }
    }

    /// PAID, FAILED and CANCELLED: the order has been decided. (A PAID order
    /// can still be cancelled, and a cancelled one refunded, but no payment
    /// decision will move it again.)
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Pending)
    }

    /// The status a list filter asks for; `None` for UNSPECIFIED (any).
    pub fn from_filter(value: i32) -> Result<Option<Self>, ValidationError> {
        match pb::OrderStatus::try_from(value) {
            Ok(pb::OrderStatus::Unspecified) => Ok(None),
            Ok(pb::OrderStatus::Pending) => Ok(Some(Self::Pending)),
            Ok(pb::OrderStatus::Paid) => Ok(Some(Self::Paid)),
            Ok(pb::OrderStatus::Failed) => Ok(Some(Self::Failed)),
            Ok(pb::OrderStatus::Cancelled) => Ok(Some(Self::Cancelled)),
            Err(_) => Err(invalid("status", format!("unknown status {value}"))),
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `status` column value that is not one of ours.
#[derive(Debug, thiserror::Error)]
#[error("unknown order status {0:?}")]
pub struct UnknownStatus(String);

impl FromStr for OrderStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "PENDING" => Ok(Self::Pending),
            "PAID" => Ok(Self::Paid),
            "FAILED" => Ok(Self::Failed),
            "CANCELLED" => Ok(Self::Cancelled),
            other => Err(UnknownStatus(other.to_owned())),
        }
    }
}

/// A stored order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub order_id: String,
    pub customer_id: String,
    pub currency_code: String,
    pub items: Vec<OrderItem>,
    pub total_minor: i64,
    pub status: OrderStatus,
    pub failure_reason: Option<String>,
    /// The caller's reason, when the order was cancelled.
    pub cancel_reason: Option<String>,
    /// Given back after a charged order was cancelled; 0 otherwise.
    pub refunded_minor: i64,
    /// Incremented on every state change.
    pub version: i64,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    /// Position in the listing (higher is newer); page tokens point at it.
    /// Never shown to clients.
    pub seq: i64,
}

/// A validated `CancelOrder` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelRequest {
    pub order_id: String,
    /// Empty when the caller gave none.
    pub reason: String,
}

impl TryFrom<pb::CancelOrderRequest> for CancelRequest {
    type Error = ValidationError;

    fn try_from(req: pb::CancelOrderRequest) -> Result<Self, Self::Error> {
        check_order_id("order_id", &req.order_id)?;
        if req.reason.chars().count() > MAX_CANCEL_REASON_LEN {
            return Err(invalid(
                "reason",
                format!("must be at most {MAX_CANCEL_REASON_LEN} characters"),
            ));
        }
        if req.reason.chars().any(char::is_control) {
            return Err(invalid("reason", "must not contain control characters"));
        }
        Ok(Self {
            order_id: req.order_id,
            reason: req.reason.trim().to_owned(),
        })
    }
}

/// What the processor reports about an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentEvent {
    /// The payment decision (`payment.succeeded` / `payment.failed`).
    Decided(PaymentResult),
    /// The debit of a cancelled order was given back (`payment.refunded`).
    Refunded(Refund),
}

impl PaymentEvent {
    pub fn order_id(&self) -> &str {
        match self {
            Self::Decided(r) => &r.order_id,
            Self::Refunded(r) => &r.order_id,
        }
    }
}

/// A refund the processor made for a cancelled order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    pub order_id: String,
    pub amount_minor: i64,
}

/// The decision a payment result carries for one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentResult {
    pub order_id: String,
    pub outcome: PaymentOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentOutcome {
    Succeeded,
    Failed { reason: String },
}

impl PaymentOutcome {
    /// The status a pending order moves to.
    pub fn status(&self) -> OrderStatus {
        match self {
            Self::Succeeded => OrderStatus::Paid,
            Self::Failed { .. } => OrderStatus::Failed,
        }
    }

    pub fn failure_reason(&self) -> Option<&str> {
        match self {
            Self::Succeeded => None,
            Self::Failed { reason } => Some(reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_round_trip() {
        for s in [
            OrderStatus::Pending,
            OrderStatus::Paid,
            OrderStatus::Failed,
            OrderStatus::Cancelled,
        ] {
            assert_eq!(s.as_str().parse::<OrderStatus>().unwrap(), s);
        }
        assert!("paid".parse::<OrderStatus>().is_err());
    }
}
