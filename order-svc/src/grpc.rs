//! The `ordermesh.order.v1.OrderService` handlers: decode the request into a
//! domain value, check the caller may act for its customer, call the store,
//! encode the answer. Errors become a `tonic::Status` in one place
//! ([`From<Error>`] below).
//!
//! Authorization: a customer token reaches only its own orders. Another
//! customer's order is NOT_FOUND with the missing order's message (ids
//! cannot be probed); creating an order for, or listing the orders of,
//! another customer is PERMISSION_DENIED naming `customer_id`; ListOrders
//! without `customer_id` lists the caller's own. An admin token acts for
//! every customer.

use ordermesh_auth::{self as auth, Caller};
use ordermesh_proto::order::v1 as pb;
use ordermesh_runtime::grpc::invalid_field;
use pb::order_service_server::OrderService;
use tonic::{Request, Response, Status};

use crate::domain::{
    CancelRequest, ListQuery, NewOrder, Order, OrderItem, OrderStatus, check_order_id,
};
use crate::error::Error;
use crate::events;
use crate::store::{Created, Store};
use crate::watch::{WatchHub, WatchStream};

/// The gRPC face of the order service.
#[derive(Clone)]
pub struct OrderApi {
    store: Store,
    /// The process's one LISTEN connection, shared by every WatchOrder.
    watch: WatchHub,
}

impl OrderApi {
    pub fn new(store: Store, watch: WatchHub) -> Self {
        Self { store, watch }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> pb::order_service_server::OrderServiceServer<Self> {
        pb::order_service_server::OrderServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl OrderService for OrderApi {
    #[tracing::instrument(skip_all, fields(order_id))]
    async fn create_order(
        &self,
        request: Request<pb::CreateOrderRequest>,
    ) -> Result<Response<pb::CreateOrderResponse>, Status> {
        let caller = Caller::of(&request)?;
        let order = NewOrder::try_from(request.into_inner()).map_err(Error::from)?;
        tracing::Span::current().record("order_id", order.order_id.as_str());
        if !caller.may_act_for(&order.customer_id) {
            return Err(auth::permission_denied("customer_id", &order.customer_id));
        }
        let created = self
            .store
            .create_order(&order, &events::order_created(&order))
            .await?;
        if let Created::Inserted(_) = created {
            tracing::debug!(order_id = %order.order_id, total_minor = order.total_minor, "order created");
        }
        Ok(Response::new(pb::CreateOrderResponse {
            order: Some(created.into_order().into()),
        }))
    }

    #[tracing::instrument(skip_all, fields(order_id = %request.get_ref().order_id))]
    async fn get_order(
        &self,
        request: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::GetOrderResponse>, Status> {
        let caller = Caller::of(&request)?;
        let order_id = request.into_inner().order_id;
        check_order_id("order_id", &order_id).map_err(Error::from)?;
        let order = self.owned_order(&caller, &order_id).await?;
        Ok(Response::new(pb::GetOrderResponse {
            order: Some(order.into()),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_orders(
        &self,
        request: Request<pb::ListOrdersRequest>,
    ) -> Result<Response<pb::ListOrdersResponse>, Status> {
        let caller = Caller::of(&request)?;
        let mut request = request.into_inner();
        // A customer lists its own orders, with or without the filter.
        if !caller.is_admin() {
            if request.customer_id.is_empty() {
                request.customer_id = caller.subject;
            } else if request.customer_id != caller.subject {
                return Err(auth::permission_denied("customer_id", &request.customer_id));
            }
        }
        let query = ListQuery::try_from(request).map_err(Error::from)?;
        let page = self.store.list_orders(&query).await?;
        let next_page_token = match page.orders.last() {
            Some(last) if page.more => query.filter.page_token(last.seq),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListOrdersResponse {
            orders: page.orders.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, fields(order_id = %request.get_ref().order_id))]
    async fn cancel_order(
        &self,
        request: Request<pb::CancelOrderRequest>,
    ) -> Result<Response<pb::CancelOrderResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = CancelRequest::try_from(request.into_inner()).map_err(Error::from)?;
        // An order's customer never changes: checked once, before the cancel.
        self.owned_order(&caller, &request.order_id).await?;
        let order = self
            .store
            .cancel_order(&request, events::order_cancelled)
            .await?;
        tracing::debug!(order_id = %order.order_id, version = order.version, "order cancelled");
        Ok(Response::new(pb::CancelOrderResponse {
            order: Some(order.into()),
        }))
    }

    type WatchOrderStream = WatchStream;

    #[tracing::instrument(skip_all, fields(order_id = %request.get_ref().order_id))]
    async fn watch_order(
        &self,
        request: Request<pb::WatchOrderRequest>,
    ) -> Result<Response<Self::WatchOrderStream>, Status> {
        let deadline = deadline(&request);
        let caller = Caller::of(&request)?;
        let order_id = request.into_inner().order_id;
        check_order_id("order_id", &order_id).map_err(Error::from)?;
        self.owned_order(&caller, &order_id).await?;
        let stream = self
            .watch
            .open(self.store.clone(), order_id, deadline)
            .await?;
        Ok(Response::new(stream))
    }
}

impl OrderApi {
    /// The order, or NOT_FOUND (as for a missing one) unless `caller` may
    /// act for its customer.
    async fn owned_order(&self, caller: &Caller, order_id: &str) -> Result<Order, Error> {
        let order = self.store.get_order(order_id).await?;
        if caller.may_act_for(&order.customer_id) {
            Ok(order)
        } else {
            Err(Error::NotFound(order_id.to_owned()))
        }
    }
}

/// When the caller's `grpc-timeout` runs out. tonic enforces it only until
/// the response starts, so a stream has to end itself. An unreadable value
/// is ignored, as tonic ignores it.
fn deadline<T>(request: &Request<T>) -> Option<tokio::time::Instant> {
    let timeout = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let timeout = ordermesh_gateway::rest::parse_grpc_timeout(timeout)?;
    tokio::time::Instant::now().checked_add(timeout)
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match error {
            Error::Invalid(v) => invalid_field(&v.field, v.reason),
            Error::NotFound(id) => Status::not_found(format!("order {id} not found")),
            Error::FailedPrecondition(why) => Status::failed_precondition(why),
            Error::AlreadyExists(id) => {
                Status::already_exists(format!("order {id} already exists with different content"))
            }
            Error::Unavailable(e) => {
                tracing::warn!(error = format!("{e:#}"), "database unavailable");
                Status::unavailable("the service is temporarily unavailable; retry later")
            }
            Error::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "request failed");
                Status::internal("internal error")
            }
        }
    }
}

impl From<Order> for pb::Order {
    fn from(o: Order) -> Self {
        Self {
            order_id: o.order_id,
            customer_id: o.customer_id,
            currency_code: o.currency_code,
            items: o.items.into_iter().map(Into::into).collect(),
            total_minor: o.total_minor,
            status: pb::OrderStatus::from(o.status).into(),
            failure_reason: o.failure_reason.unwrap_or_default(),
            cancel_reason: o.cancel_reason.unwrap_or_default(),
            refunded_minor: o.refunded_minor,
            version: o.version,
            create_time: Some(timestamp(o.create_time)),
            update_time: Some(timestamp(o.update_time)),
        }
    }
}

impl From<OrderItem> for pb::OrderItem {
    fn from(i: OrderItem) -> Self {
        Self {
            sku: i.sku,
            quantity: i.quantity,
            unit_price_minor: i.unit_price_minor,
        }
    }
}

impl From<OrderStatus> for pb::OrderStatus {
    fn from(s: OrderStatus) -> Self {
        match s {
            OrderStatus::Pending => Self::Pending,
            OrderStatus::Paid => Self::Paid,
            OrderStatus::Failed => Self::Failed,
            OrderStatus::Cancelled => Self::Cancelled,
        }
    }
}

fn timestamp(t: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}
