//! A new order: the validation of a `CreateOrder` request, its total and
//! the fingerprint that tells a retry from another order under the same id.

use ordermesh_proto::order::v1 as pb;
use sha2::{Digest, Sha256};

use super::{
    DEFAULT_CURRENCY, MAX_ITEMS, MAX_SKU_LEN, OrderItem, ValidationError, check_customer_id,
    check_order_id, invalid,
};

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

    /// Checks the fields in the order the request lists them and prices
    /// the items; an empty `order_id` gets a fresh UUIDv7, an empty
    /// `currency_code` the [`DEFAULT_CURRENCY`].
    fn try_from(req: pb::CreateOrderRequest) -> Result<Self, Self::Error> {
        let order_id = order_id_or_new(req.order_id)?;
        check_customer_id("customer_id", &req.customer_id, true)?;
        let currency_code = currency_or_default(req.currency_code)?;
        let (items, total_minor) = priced_items(req.items)?;
        Ok(Self {
            order_id,
            customer_id: req.customer_id,
            currency_code,
            items,
            total_minor,
        })
    }
}

/// The caller's order id, checked, or a new UUIDv7 when it is empty.
fn order_id_or_new(order_id: String) -> Result<String, ValidationError> {
    if order_id.is_empty() {
        return Ok(uuid::Uuid::now_v7().to_string());
    }
    check_order_id("order_id", &order_id)?;
    Ok(order_id)
}

/// The caller's currency, an ISO 4217 code, or [`DEFAULT_CURRENCY`] when
/// it is empty.
fn currency_or_default(currency_code: String) -> Result<String, ValidationError> {
    if currency_code.is_empty() {
        Ok(DEFAULT_CURRENCY.to_owned())
    } else if currency_code.len() == 3 && currency_code.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(currency_code)
    } else {
        Err(invalid(
            "currency_code",
            "must be an ISO 4217 code of 3 uppercase letters",
        ))
    }
}

/// The checked items and the order's total: 1 to [`MAX_ITEMS`] of them,
/// costing more than 0 together.
fn priced_items(items: Vec<pb::OrderItem>) -> Result<(Vec<OrderItem>, i64), ValidationError> {
    if items.is_empty() {
        return Err(invalid("items", "an order needs at least one item"));
    }
    if items.len() > MAX_ITEMS {
        return Err(invalid(
            "items",
            format!("an order holds at most {MAX_ITEMS} items"),
        ));
    }
    let mut total: i64 = 0;
    let mut checked = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let line = line_total(i, &item)?;
        total = total
            .checked_add(line)
            .ok_or_else(|| invalid("items", "order total is too large"))?;
        checked.push(OrderItem {
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
    Ok((checked, total))
}

/// Checks `items[i]` and returns its quantity times its unit price.
fn line_total(i: usize, item: &pb::OrderItem) -> Result<i64, ValidationError> {
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
    item.unit_price_minor
        .checked_mul(i64::from(item.quantity))
        .ok_or_else(|| invalid(format!("items[{i}]"), "line total is too large"))
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
}
