//! The payment rules, as a pure function: given a new order, the customer's
//! account as it stands (locked by the caller) and the embargo list, decide
//! whether to debit the order's total or to fail it, and why.
//!
//! The rules apply in a fixed order, and the first that fails names the
//! reason: embargoed SKU, inconsistent order (no items, an invalid item, a
//! total that disagrees with the items or is not positive), no account,
//! currency, funds. An order the rules let through but the database then
//! refuses is failed too (`rejected: <class>`, see `consumer.rs`).
//! A [`Cancellation`] needs no rule: it always stops a charge that has not
//! happened and gives back one that has (see `Store::cancel_order`).

use std::collections::BTreeSet;

/// Reason when the account does not exist.
pub const NO_ACCOUNT: &str = "no account";
/// Reason when the account holds another currency than the order.
pub const CURRENCY_MISMATCH: &str = "currency mismatch";
/// Reason when the balance is below the order's total.
pub const INSUFFICIENT_FUNDS: &str = "insufficient funds";
/// Reason when the items do not add up to the order's total.
pub const TOTAL_MISMATCH: &str = "total mismatch";
/// Reason when the order has no items.
pub const NO_ITEMS: &str = "no items";
/// Reason when the order's total is 0 (a debit of nothing is no payment;
/// order-svc refuses such orders, so this is defence in depth).
pub const NON_POSITIVE_TOTAL: &str = "total not positive";
/// Prefix of the reason when the database refused to apply an order (see
/// [`rejected`]).
pub const REJECTED_PREFIX: &str = "rejected: ";

/// The failure reason of an order the database refused to settle, naming
/// only the short class of what was wrong (`rejected: check violation`).
pub fn rejected(class: &str) -> String {
    format!("{REJECTED_PREFIX}{class}")
}

/// A new order, as the processor needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub order_id: String,
    pub customer_id: String,
    pub currency_code: String,
    pub items: Vec<Item>,
    /// The total the order service computed; checked, never trusted.
    pub total_minor: i64,
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub sku: String,
    pub quantity: i32,
    pub unit_price_minor: i64,
}

/// A cancelled order, as the processor needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancellation {
    pub order_id: String,
    /// Must be the customer a payment of the order charged.
    pub customer_id: String,
    /// The caller's reason, possibly empty; only logged.
    pub reason: String,
}

/// The part of an account the rules look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountSnapshot {
    pub currency_code: String,
    pub balance_minor: i64,
}

/// SKUs that may not be sold, compared without regard to ASCII case so a
/// differently spelled SKU cannot slip through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Embargo(BTreeSet<String>);

impl Embargo {
    pub fn new<I, S>(skus: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self(
            skus.into_iter()
                .map(|s| s.as_ref().trim().to_ascii_lowercase())
                .filter(|s| !s.is_empty())
                .collect(),
        )
    }

    pub fn contains(&self, sku: &str) -> bool {
        self.0.contains(&sku.trim().to_ascii_lowercase())
    }

    pub fn skus(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }
}

/// What to do with an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Debit `amount_minor` (in the order's currency) from the account.
    Pay { amount_minor: i64 },
    /// Debit nothing; tell the order service why.
    Fail { reason: String },
}

impl Decision {
    fn fail(reason: impl Into<String>) -> Self {
        Self::Fail {
            reason: reason.into(),
        }
    }
}

/// Decides how to settle `order`. `account` is the customer's account, if
/// any, read under a row lock so the balance cannot change meanwhile.
pub fn decide(order: &Order, account: Option<&AccountSnapshot>, embargo: &Embargo) -> Decision {
    if let Some(item) = order.items.iter().find(|i| embargo.contains(&i.sku)) {
        return Decision::fail(format!("embargo: {}", item.sku));
    }
    if order.items.is_empty() {
        return Decision::fail(NO_ITEMS);
    }
    if let Some(item) = order
        .items
        .iter()
        .find(|i| i.quantity < 1 || i.unit_price_minor < 0)
    {
        return Decision::fail(format!("invalid item: {}", item.sku));
    }
    // A sum that does not fit in i64 cannot equal the i64 the order claims.
    let total = match items_total(&order.items) {
        Some(total) if total == order.total_minor => total,
        _ => return Decision::fail(TOTAL_MISMATCH),
    };
    if total <= 0 {
        return Decision::fail(NON_POSITIVE_TOTAL);
    }
    let Some(account) = account else {
        return Decision::fail(NO_ACCOUNT);
    };
    if account.currency_code != order.currency_code {
        return Decision::fail(CURRENCY_MISMATCH);
    }
    if account.balance_minor < total {
        return Decision::fail(INSUFFICIENT_FUNDS);
    }
    Decision::Pay {
        amount_minor: total,
    }
}

/// Sum of quantity × unit price, or `None` on overflow.
pub fn items_total(items: &[Item]) -> Option<i64> {
    items.iter().try_fold(0i64, |sum, item| {
        item.unit_price_minor
            .checked_mul(i64::from(item.quantity))
            .and_then(|line| sum.checked_add(line))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(sku: &str, quantity: i32, unit_price_minor: i64) -> Item {
        Item {
            sku: sku.into(),
            quantity,
            unit_price_minor,
        }
    }

    fn order(items: Vec<Item>) -> Order {
        let total_minor = items_total(&items).unwrap_or(0);
        Order {
            order_id: "o-1".into(),
            customer_id: "c-1".into(),
            currency_code: "USD".into(),
            items,
            total_minor,
        }
    }

    fn account(currency_code: &str, balance_minor: i64) -> AccountSnapshot {
        AccountSnapshot {
            currency_code: currency_code.into(),
            balance_minor,
        }
    }

    fn embargo() -> Embargo {
        Embargo::new(["pineapple_pizza", "teapot"])
    }

    fn reason(d: Decision) -> String {
        match d {
            Decision::Fail { reason } => reason,
            Decision::Pay { .. } => panic!("expected a failure, got {d:?}"),
        }
    }

    #[test]
    fn a_funded_order_pays_its_total() {
        let o = order(vec![item("widget", 3, 250), item("gadget", 1, 1000)]);
        let d = decide(&o, Some(&account("USD", 10_000)), &embargo());
        assert_eq!(d, Decision::Pay { amount_minor: 1750 });
    }

    #[test]
    fn an_exact_balance_is_enough() {
        let o = order(vec![item("widget", 2, 500)]);
        let d = decide(&o, Some(&account("USD", 1000)), &embargo());
        assert_eq!(d, Decision::Pay { amount_minor: 1000 });
    }

    #[test]
    fn an_embargoed_sku_fails_naming_it() {
        let o = order(vec![item("widget", 1, 100), item("teapot", 1, 100)]);
        let d = decide(&o, Some(&account("USD", 10_000)), &embargo());
        assert_eq!(reason(d), "embargo: teapot");
    }

    #[test]
    fn the_embargo_ignores_ascii_case() {
        let o = order(vec![item("Pineapple_Pizza", 1, 100)]);
        let d = decide(&o, Some(&account("USD", 10_000)), &embargo());
        assert_eq!(reason(d), "embargo: Pineapple_Pizza");
    }

    #[test]
    fn the_embargo_comes_before_every_other_rule() {
        let o = order(vec![item("teapot", 1, 100)]);
        assert_eq!(reason(decide(&o, None, &embargo())), "embargo: teapot");
    }

    #[test]
    fn a_total_that_disagrees_with_the_items_fails() {
        let mut o = order(vec![item("widget", 2, 500)]);
        o.total_minor = 1;
        let d = decide(&o, Some(&account("USD", 10_000)), &embargo());
        assert_eq!(reason(d), TOTAL_MISMATCH);
    }

    #[test]
    fn an_overflowing_item_sum_is_a_total_mismatch() {
        let mut o = order(vec![item("a", 2, i64::MAX / 2 + 1)]);
        o.total_minor = i64::MAX;
        let d = decide(&o, Some(&account("USD", i64::MAX)), &embargo());
        assert_eq!(reason(d), TOTAL_MISMATCH);
        assert_eq!(items_total(&o.items), None);
    }

    #[test]
    fn invalid_items_fail() {
        let o = order(vec![item("widget", 0, 100)]);
        let d = decide(&o, Some(&account("USD", 10_000)), &embargo());
        assert_eq!(reason(d), "invalid item: widget");
        let o = order(vec![item("widget", 1, -100)]);
        let d = decide(&o, Some(&account("USD", 10_000)), &embargo());
        assert_eq!(reason(d), "invalid item: widget");
    }

    #[test]
    fn a_total_of_zero_fails_and_is_never_debited() {
        let o = order(vec![item("gift", 3, 0)]);
        assert_eq!(o.total_minor, 0);
        let d = decide(&o, Some(&account("USD", 10_000)), &embargo());
        assert_eq!(reason(d), NON_POSITIVE_TOTAL);
        // Without an account too: the order itself is wrong, whoever pays.
        assert_eq!(reason(decide(&o, None, &embargo())), NON_POSITIVE_TOTAL);
    }

    #[test]
    fn rejections_name_only_the_class() {
        assert_eq!(rejected("check violation"), "rejected: check violation");
    }

    #[test]
    fn an_order_without_items_fails() {
        let o = order(vec![]);
        assert_eq!(
            reason(decide(&o, Some(&account("USD", 1)), &embargo())),
            NO_ITEMS
        );
    }

    #[test]
    fn a_missing_account_fails() {
        let o = order(vec![item("widget", 1, 100)]);
        assert_eq!(reason(decide(&o, None, &embargo())), NO_ACCOUNT);
    }

    #[test]
    fn another_currency_fails() {
        let o = order(vec![item("widget", 1, 100)]);
        let d = decide(&o, Some(&account("EUR", 10_000)), &embargo());
        assert_eq!(reason(d), CURRENCY_MISMATCH);
    }

    #[test]
    fn a_short_balance_fails() {
        let o = order(vec![item("widget", 1, 100)]);
        let d = decide(&o, Some(&account("USD", 99)), &embargo());
        assert_eq!(reason(d), INSUFFICIENT_FUNDS);
    }

    #[test]
    fn an_empty_embargo_blocks_nothing() {
        let o = order(vec![item("teapot", 1, 100)]);
        let d = decide(&o, Some(&account("USD", 100)), &Embargo::default());
        assert_eq!(d, Decision::Pay { amount_minor: 100 });
    }

    #[test]
    fn embargo_entries_are_normalised() {
        let e = Embargo::new([" TeaPot ", ""]);
        assert!(e.contains("teapot"));
        assert_eq!(e.skus().collect::<Vec<_>>(), ["teapot"]);
    }
}
