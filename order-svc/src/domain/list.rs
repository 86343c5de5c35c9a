//! Listing orders: the validated `ListOrders` request and its page tokens.

use ordermesh_proto::order::v1 as pb;
use ordermesh_runtime::page_token;

use super::{
    DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, OrderStatus, ValidationError, check_customer_id, invalid,
};

/// Which orders a `ListOrders` call covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    pub customer_id: Option<String>,
    pub status: Option<OrderStatus>,
}

/// What a `ListOrders` page token is bound to, besides the filter.
const PAGE_TOKEN_SCOPE: &str = "ordermesh.order.v1.ListOrders/page_token/v1";

impl ListFilter {
    /// A token is refused with other filters (see `ordermesh_runtime::page_token`).
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
