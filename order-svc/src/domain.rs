//! The order domain: validated requests ([`NewOrder`], [`ListQuery`]), stored
//! orders ([`Order`], [`OrderStatus`]) and payment results. Wire requests
//! enter through `TryFrom` here, which is where every field is checked; no
//! prost type goes deeper than this module and `grpc.rs`.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use ordermesh_platform::page_token;
use ordermesh_proto::order::v1 as pb;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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

/// A validated `CreateOrder` request, with the server-side total.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    pub order_id: String,
    pub customer_id: String,
    pub currency_code: String,
    pub items: Vec<OrderItem>,
    pub total_minor: i64,
}

impl NewOrder {
    /// Digest of the content that makes two requests "the same order":
    /// customer, currency and items (the id is the key, the total follows
    /// from the items). Stored with the order and compared when the same
    /// `order_id` is created again.
    pub fn fingerprint(&self) -> Vec<u8> {
        let mut h = Sha256::new();
        put_str(&mut h, "ordermesh.order.v1.CreateOrder/v1");
        put_str(&mut h, &self.customer_id);
        put_str(&mut h, &self.currency_code);
        h.update((self.items.len() as u64).to_be_bytes());
        for item in &self.items {
            put_str(&mut h, &item.sku);
            h.update(item.quantity.to_be_bytes());
            h.update(item.unit_price_minor.to_be_bytes());
        }
        h.finalize().to_vec()
    }
}

/// Feeds a length-prefixed string, so field boundaries are unambiguous.
fn put_str(h: &mut Sha256, s: &str) {
    h.update((s.len() as u64).to_be_bytes());
    h.update(s.as_bytes());
}

impl TryFrom<pb::CreateOrderRequest> for NewOrder {
    type Error = ValidationError;

    fn try_from(req: pb::CreateOrderRequest) -> Result<Self, Self::Error> {
        let order_id = if req.order_id.is_empty() {
            uuid::Uuid::now_v7().to_string()
        } else {
            check_order_id("order_id", &req.order_id)?;
            req.order_id
        };
        check_customer_id("customer_id", &req.customer_id, true)?;
        let currency_code = if req.currency_code.is_empty() {
            DEFAULT_CURRENCY.to_owned()
        } else if req.currency_code.len() == 3
            && req.currency_code.bytes().all(|b| b.is_ascii_uppercase())
        {
            req.currency_code
        } else {
            return Err(invalid(
                "currency_code",
                "must be an ISO 4217 code of 3 uppercase letters",
            ));
        };

        if req.items.is_empty() {
            return Err(invalid("items", "an order needs at least one item"));
        }
        if req.items.len() > MAX_ITEMS {
            return Err(invalid(
                "items",
                format!("an order holds at most {MAX_ITEMS} items"),
            ));
        }
        let mut total: i64 = 0;
        let mut items = Vec::with_capacity(req.items.len());
        for (i, item) in req.items.into_iter().enumerate() {
            let sku_len = item.sku.chars().count();
            if sku_len == 0 || sku_len > MAX_SKU_LEN {
                return Err(invalid(
                    format!("items[{i}].sku"),
                    format!("must be 1 to {MAX_SKU_LEN} characters"),
                ));
            }
            if item.sku.chars().any(char::is_control) {
                return Err(invalid(
                    format!("items[{i}].sku"),
                    "must not contain control characters",
                ));
            }
            if item.quantity < 1 {
                return Err(invalid(
                    format!("items[{i}].quantity"),
                    "must be at least 1",
                ));
            }
            if item.unit_price_minor < 0 {
                return Err(invalid(
                    format!("items[{i}].unit_price_minor"),
                    "must not be negative",
                ));
            }
            let line = item
                .unit_price_minor
                .checked_mul(i64::from(item.quantity))
                .ok_or_else(|| invalid(format!("items[{i}]"), "line total is too large"))?;
            total = total
                .checked_add(line)
                .ok_or_else(|| invalid("items", "order total is too large"))?;
            items.push(OrderItem {
                sku: item.sku,
                quantity: item.quantity,
                unit_price_minor: item.unit_price_minor,
            });
        }
        // A free item may ride along, but an order must cost something: the
        // processor pays by debiting the total, and a debit of 0 is none.
        if total == 0 {
            return Err(invalid("items", "order total must be greater than 0"));
        }

        Ok(Self {
            order_id,
            customer_id: req.customer_id,
            currency_code,
            items,
            total_minor: total,
        })
    }
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

/// Which orders a `ListOrders` call covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    pub customer_id: Option<String>,
    pub status: Option<OrderStatus>,
}

/// What a `ListOrders` page token is bound to, besides the filter.
const PAGE_TOKEN_SCOPE: &str = "ordermesh.order.v1.ListOrders/page_token/v1";

impl ListFilter {
    /// A token is refused with other filters (see `platform::page_token`).
    fn token_scope(&self) -> [&str; 3] {
        [
            PAGE_TOKEN_SCOPE,
            self.customer_id.as_deref().unwrap_or(""),
            self.status.map_or("", OrderStatus::as_str),
        ]
    }

    /// The opaque token for the page after the order at `seq`.
    pub fn page_token(&self, seq: i64) -> String {
        page_token::encode(&self.token_scope(), seq)
    }

    /// The `seq` a token of this filter points after.
    fn parse_page_token(&self, token: &str) -> Result<i64, ValidationError> {
        page_token::decode(&self.token_scope(), token)
            .ok_or_else(|| invalid("page_token", "not a page token of this query"))
    }
}

/// A validated `ListOrders` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub filter: ListFilter,
    /// 1 to [`MAX_PAGE_SIZE`].
    pub page_size: usize,
    /// Only orders older than this `seq` (from the page token).
    pub before_seq: Option<i64>,
}

impl TryFrom<pb::ListOrdersRequest> for ListQuery {
    type Error = ValidationError;

    fn try_from(req: pb::ListOrdersRequest) -> Result<Self, Self::Error> {
        check_customer_id("customer_id", &req.customer_id, false)?;
        let filter = ListFilter {
            customer_id: (!req.customer_id.is_empty()).then_some(req.customer_id),
            status: OrderStatus::from_filter(req.status)?,
        };
        let page_size = match req.page_size {
            n if n < 0 => return Err(invalid("page_size", "must not be negative")),
            0 => DEFAULT_PAGE_SIZE,
            n => (n as usize).min(MAX_PAGE_SIZE),
        };
        let before_seq = if req.page_token.is_empty() {
            None
        } else {
            Some(filter.parse_page_token(&req.page_token)?)
        };
        Ok(Self {
            filter,
            page_size,
            before_seq,
        })
    }
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

    fn item(sku: &str, quantity: i32, unit_price_minor: i64) -> pb::OrderItem {
        pb::OrderItem {
            sku: sku.into(),
            quantity,
            unit_price_minor,
        }
    }

    fn request() -> pb::CreateOrderRequest {
        pb::CreateOrderRequest {
            order_id: "ord-1".into(),
            customer_id: "alice".into(),
            currency_code: "EUR".into(),
            items: vec![item("apple", 3, 150), item("pear", 1, 99)],
        }
    }

    type Mutation = Box<dyn Fn(&mut pb::CreateOrderRequest)>;

    fn field_of(req: pb::CreateOrderRequest) -> String {
        NewOrder::try_from(req).unwrap_err().field
    }

    #[test]
    fn a_valid_request_gets_its_total_computed() {
        let order = NewOrder::try_from(request()).unwrap();
        assert_eq!(order.order_id, "ord-1");
        assert_eq!(order.currency_code, "EUR");
        assert_eq!(order.total_minor, 3 * 150 + 99);
        assert_eq!(order.items.len(), 2);
    }

    #[test]
    fn defaults_fill_order_id_and_currency() {
        let mut req = request();
        req.order_id.clear();
        req.currency_code.clear();
        let order = NewOrder::try_from(req).unwrap();
        assert_eq!(order.currency_code, "USD");
        let id = uuid::Uuid::parse_str(&order.order_id).unwrap();
        assert_eq!(id.get_version_num(), 7);
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases: Vec<(&str, Mutation)> = vec![
            ("customer_id", Box::new(|r| r.customer_id.clear())),
            ("customer_id", Box::new(|r| r.customer_id = "  ".into())),
            ("customer_id", Box::new(|r| r.customer_id = "c".repeat(129))),
            ("order_id", Box::new(|r| r.order_id = "o".repeat(129))),
            ("order_id", Box::new(|r| r.order_id = "a/b".into())),
            ("order_id", Box::new(|r| r.order_id = "ünï".into())),
            (
                "currency_code",
                Box::new(|r| r.currency_code = "usd".into()),
            ),
            (
                "currency_code",
                Box::new(|r| r.currency_code = "USDX".into()),
            ),
            (
                "currency_code",
                Box::new(|r| r.currency_code = "ÜSD".into()),
            ),
            ("items", Box::new(|r| r.items.clear())),
            ("items", Box::new(|r| r.items = vec![item("x", 1, 1); 101])),
            ("items[1].sku", Box::new(|r| r.items[1].sku.clear())),
            (
                "items[0].sku",
                Box::new(|r| r.items[0].sku = "s".repeat(65)),
            ),
            ("items[0].sku", Box::new(|r| r.items[0].sku = "a\nb".into())),
            ("items[1].quantity", Box::new(|r| r.items[1].quantity = 0)),
            ("items[0].quantity", Box::new(|r| r.items[0].quantity = -4)),
            (
                "items[0].unit_price_minor",
                Box::new(|r| r.items[0].unit_price_minor = -1),
            ),
            (
                "items[0]",
                Box::new(|r| r.items[0] = item("big", 2, i64::MAX / 2 + 1)),
            ),
            (
                "items",
                Box::new(|r| r.items = vec![item("a", 1, i64::MAX), item("b", 1, 1)]),
            ),
        ];
        for (field, mutate) in cases {
            let mut req = request();
            mutate(&mut req);
            assert_eq!(field_of(req.clone()), field, "{req:?}");
        }
    }

    #[test]
    fn limits_are_inclusive() {
        let mut req = request();
        req.order_id = "o".repeat(128);
        req.customer_id = "c".repeat(128);
        req.items = vec![item(&"s".repeat(64), 1, 0); 100];
        req.items[99].unit_price_minor = 1;
        let order = NewOrder::try_from(req).unwrap();
        assert_eq!(order.total_minor, 1);
    }

    #[test]
    fn free_items_are_fine_but_a_free_order_is_not() {
        let mut req = request();
        req.items[0].unit_price_minor = 0;
        assert_eq!(NewOrder::try_from(req).unwrap().total_minor, 99);

        let mut req = request();
        req.items = vec![item("gift", 3, 0)];
        let err = NewOrder::try_from(req).unwrap_err();
        assert_eq!(err.field, "items");
        assert!(err.reason.contains("greater than 0"), "{err}");
    }

    #[test]
    fn fingerprint_covers_content_not_id() {
        let a = NewOrder::try_from(request()).unwrap();
        let mut other_id = request();
        other_id.order_id = "ord-2".into();
        assert_eq!(
            a.fingerprint(),
            NewOrder::try_from(other_id).unwrap().fingerprint()
        );

        let changes: Vec<Mutation> = vec![
            Box::new(|r| r.customer_id = "bob".into()),
            Box::new(|r| r.currency_code = "USD".into()),
            Box::new(|r| r.items[0].quantity = 4),
            Box::new(|r| r.items[1].unit_price_minor = 100),
            Box::new(|r| r.items[0].sku = "apples".into()),
            Box::new(|r| r.items.reverse()),
            Box::new(|r| {
                r.items.pop();
            }),
        ];
        for change in changes {
            let mut req = request();
            change(&mut req);
            let b = NewOrder::try_from(req).unwrap();
            assert_ne!(a.fingerprint(), b.fingerprint(), "{b:?}");
        }
    }

    #[test]
    fn empty_currency_is_the_same_content_as_usd() {
        let mut implicit = request();
        implicit.currency_code.clear();
        let mut explicit = request();
        explicit.currency_code = "USD".into();
        assert_eq!(
            NewOrder::try_from(implicit).unwrap().fingerprint(),
            NewOrder::try_from(explicit).unwrap().fingerprint()
        );
    }

    fn list(customer: &str, status: i32, size: i32, token: &str) -> pb::ListOrdersRequest {
        pb::ListOrdersRequest {
            customer_id: customer.into(),
            status,
            page_size: size,
            page_token: token.into(),
        }
    }

    #[test]
    fn page_size_defaults_and_is_capped() {
        let q = |size| ListQuery::try_from(list("", 0, size, "")).map(|q| q.page_size);
        assert_eq!(q(0).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(q(7).unwrap(), 7);
        assert_eq!(q(5000).unwrap(), MAX_PAGE_SIZE);
        assert_eq!(q(-1).unwrap_err().field, "page_size");
    }

    #[test]
    fn status_filter_maps_unspecified_to_any() {
        let q = ListQuery::try_from(list("", 0, 0, "")).unwrap();
        assert_eq!(q.filter, ListFilter::default());
        let q = ListQuery::try_from(list("bob", 2, 0, "")).unwrap();
        assert_eq!(q.filter.status, Some(OrderStatus::Paid));
        assert_eq!(q.filter.customer_id.as_deref(), Some("bob"));
        let err = ListQuery::try_from(list("", 99, 0, "")).unwrap_err();
        assert_eq!(err.field, "status");
    }

    #[test]
    fn page_tokens_round_trip_only_with_their_filter() {
        let filter = ListFilter {
            customer_id: Some("alice".into()),
            status: Some(OrderStatus::Pending),
        };
        let token = filter.page_token(42);
        let q = ListQuery::try_from(list("alice", 1, 10, &token)).unwrap();
        assert_eq!(q.before_seq, Some(42));

        for (customer, status) in [("bob", 1), ("alice", 0), ("", 1), ("alice", 2)] {
            let err = ListQuery::try_from(list(customer, status, 10, &token)).unwrap_err();
            assert_eq!(err.field, "page_token");
        }
    }

    #[test]
    fn edited_or_garbage_tokens_are_refused() {
        let filter = ListFilter::default();
        let token = filter.page_token(1000);
        let mut edited = token.clone().into_bytes();
        for i in 0..edited.len() {
            let original = edited[i];
            edited[i] = if original == b'A' { b'B' } else { b'A' };
            let text = String::from_utf8(edited.clone()).unwrap();
            assert!(
                ListQuery::try_from(list("", 0, 0, &text)).is_err(),
                "edit at {i} accepted"
            );
            edited[i] = original;
        }
        for garbage in ["x", "!!!!", "AAAAAAAAAAAAAAAAAAAAAAA", &format!("{token}A")] {
            let err = ListQuery::try_from(list("", 0, 0, garbage)).unwrap_err();
            assert_eq!(err.field, "page_token");
        }
    }

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
