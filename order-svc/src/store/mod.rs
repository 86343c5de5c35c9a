//! All SQL of order-svc, behind [`Store`]: one method per operation, each in
//! its own transaction. The schema is in `migrations/`; the outbox and inbox
//! tables and their helpers come from ordermesh-messaging.

pub mod watch;

use anyhow::Context;
use deadpool_postgres::{Object, Pool};
use ordermesh_messaging::outbox::Withdrawal;
use ordermesh_messaging::{inbox, outbox};
use ordermesh_proto::events::v1::ORDER_CREATED;
use tokio_postgres::Row;
use tokio_postgres::types::{Json, ToSql};
use tracing::Instrument as _;

use crate::domain::{
    CancelRequest, ListQuery, NewOrder, Order, OrderItem, OrderStatus, PaymentResult, Refund,
};
use crate::error::Error;

/// Name under which the payment consumer records applied message ids.
pub const INBOX_CONSUMER: &str = "order-svc";

/// The orders database.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
}

/// What `create_order` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// A new order, stored with its outbox event.
    Inserted(Order),
    /// The same order was created before; nothing was written.
    Existing(Order),
}

impl Created {
    pub fn into_order(self) -> Order {
        match self {
            Self::Inserted(o) | Self::Existing(o) => o,
        }
    }
}

/// One page of `list_orders`.
#[derive(Debug, Clone)]
pub struct Page {
    pub orders: Vec<Order>,
    /// Whether older orders match the filter.
    pub more: bool,
}

/// What `apply_refund` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundApplied {
    /// The refund is recorded on the order; this is its new version.
    Recorded { version: i64 },
    /// The message id was applied before.
    Duplicate,
    /// A refund is recorded already (another message of the same refund).
    AlreadyRecorded,
    /// The order is not CANCELLED (or unknown), so no refund belongs to it.
    NotCancelled(Option<OrderStatus>),
}

/// What `apply_payment_result` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The order left PENDING; this is its new version.
    Moved { version: i64 },
    /// The message id was applied before.
    Duplicate,
    /// The order had already left PENDING; it keeps its state.
    NotPending(OrderStatus),
    /// No such order.
    UnknownOrder,
}

impl Store {
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    async fn client(&self) -> Result<Object, Error> {
        self.pool
            .get()
            .await
            .map_err(|e| Error::Unavailable(anyhow::Error::new(e).context("get a connection")))
    }

    /// Stores `order` (PENDING, version 1) and `event` atomically, in one
    /// statement and one round trip: the outbox insert is a data-modifying
    /// CTE of the order insert, and a single statement is its own
    /// transaction. When the order id exists, returns the stored order if
    /// its content fingerprint matches and `AlreadyExists` otherwise; a
    /// concurrent duplicate waits on the first insert and then takes that
    /// branch.
    #[tracing::instrument(skip_all, fields(order_id = %order.order_id))]
    pub async fn create_order(
        &self,
        order: &NewOrder,
        event: &outbox::OutboxEvent,
    ) -> Result<Created, Error> {
        let fingerprint = order.fingerprint();
        let client = self.client().await?;
        // The outbox columns are ordermesh_messaging::outbox::enqueue's;
        // the statement is prepared once per connection.
        let insert = client
            .prepare_cached(
                r#"WITH created AS (
                       INSERT INTO orders (order_id, customer_id, currency_code, items,
                                           total_minor, status, version, request_fingerprint,
                                           created_event_id)
                       VALUES ($1, $2, $3, $4, $5, 'PENDING', 1, $6, $7)
                       ON CONFLICT (order_id) DO NOTHING
                       RETURNING order_id, seq, customer_id, currency_code, items, total_minor,
                                 status, failure_reason, version, create_time, update_time,
                                 cancel_reason, refunded_minor
                   ), event AS (
                       INSERT INTO outbox (event_id, aggregate_id, routing_key, event_type,
                                           payload, headers)
                       SELECT $7, $8, $9, $10, $11, $12 FROM created
                   )
                   SELECT * FROM created"#,
            )
            .await
            .context("prepare the order insert")?;
        let headers = event.headers_json();
        let items = Json(&order.items);
        let params: Vec<&(dyn ToSql + Sync)> = [
            &order.order_id as &(dyn ToSql + Sync),
            &order.customer_id,
            &order.currency_code,
            &items,
            &order.total_minor,
            &fingerprint,
        ]
        .into_iter()
        .chain(event.columns(&headers))
        .collect();
        let span = outbox::write_span("INSERT orders outbox", "orders outbox");
        let inserted = client
            .query_opt(&insert, &params)
            .instrument(span)
            .await
            .context("insert the order and its order.created event")?;
        if let Some(row) = inserted {
            return Ok(Created::Inserted(order_from_row(&row)?));
        }

        let row = client
            .query_one(
                r#"SELECT order_id, seq, customer_id, currency_code, items, total_minor,
                          status, failure_reason, version, create_time, update_time,
                          cancel_reason, refunded_minor,
                          request_fingerprint
                   FROM orders WHERE order_id = $1"#,
                &[&order.order_id],
            )
            .await
            .context("read the existing order")?;
        let stored: Vec<u8> = row
            .try_get("request_fingerprint")
            .context("read request_fingerprint")?;
        if stored != fingerprint {
            return Err(Error::AlreadyExists(order.order_id.clone()));
        }
        Ok(Created::Existing(order_from_row(&row)?))
    }

    #[tracing::instrument(skip(self))]
    pub async fn get_order(&self, order_id: &str) -> Result<Order, Error> {
        let client = self.client().await?;
        // GetOrder and every WatchOrder read: prepared once per connection,
        // so a read is one round trip, not a parse and then an execute.
        let read = client
            .prepare_cached(
                r#"SELECT order_id, seq, customer_id, currency_code, items, total_minor,
                          status, failure_reason, version, create_time, update_time,
                          cancel_reason, refunded_minor
                   FROM orders WHERE order_id = $1"#,
            )
            .await
            .context("prepare the order read")?;
        let row = client
            .query_opt(&read, &[&order_id])
            .await
            .context("read the order")?;
        match row {
            Some(row) => order_from_row(&row),
            None => Err(Error::NotFound(order_id.to_owned())),
        }
    }

    /// Newest first, at most `query.page_size` orders older than the cursor.
    #[tracing::instrument(skip(self))]
    pub async fn list_orders(&self, query: &ListQuery) -> Result<Page, Error> {
        let client = self.client().await?;
        let customer_id = query.filter.customer_id.as_deref();
        let status = query.filter.status.map(OrderStatus::as_str);
        // One row more than asked tells whether another page follows.
        let limit = i64::try_from(query.page_size).context("page size")? + 1;
        let rows = client
            .query(
                r#"SELECT order_id, seq, customer_id, currency_code, items, total_minor,
                          status, failure_reason, version, create_time, update_time,
                          cancel_reason, refunded_minor
                   FROM orders
                   WHERE ($1::text IS NULL OR customer_id = $1)
                     AND ($2::text IS NULL OR status = $2)
                     AND ($3::bigint IS NULL OR seq < $3)
                   ORDER BY seq DESC
                   LIMIT $4"#,
                &[&customer_id, &status, &query.before_seq, &limit],
            )
            .await
            .context("list orders")?;
        let more = rows.len() > query.page_size;
        let orders = rows
            .iter()
            .take(query.page_size)
            .map(order_from_row)
            .collect::<Result<_, _>>()?;
        Ok(Page { orders, more })
    }

    /// Cancels a PENDING or PAID order in one transaction with the event
    /// `cancelled_event` builds from it (an `order.cancelled` outbox row).
    /// A PENDING order's `order.created` event still in the outbox is
    /// withdrawn in the same transaction, so an order cancelled before the
    /// relay carried it is never seen, let alone charged, by the processor
    /// (which still gets `order.cancelled` and remembers it). The withdraw
    /// never waits for the relay: an event a relay batch is publishing right
    /// now is left to it, and the processor, seeing both events, charges
    /// nothing or refunds.
    /// The row lock serialises concurrent cancels and payment results: the
    /// first cancel wins, a later one finds CANCELLED and is refused like a
    /// FAILED order is.
    #[tracing::instrument(skip(self, cancelled_event), fields(order_id = %request.order_id))]
    pub async fn cancel_order(
        &self,
        request: &CancelRequest,
        cancelled_event: impl FnOnce(&Order) -> outbox::OutboxEvent,
    ) -> Result<Order, Error> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.context("begin")?;
        let current = tx
            .query_opt(
                r#"SELECT status, created_event_id FROM orders WHERE order_id = $1 FOR UPDATE"#,
                &[&request.order_id],
            )
            .await
            .context("lock the order")?
            .ok_or_else(|| Error::NotFound(request.order_id.clone()))?;
        let status = parse_status(&current)?;
        let created_event_id: Option<uuid::Uuid> = current
            .try_get("created_event_id")
            .context("read created_event_id")?;
        if !matches!(status, OrderStatus::Pending | OrderStatus::Paid) {
            return Err(Error::FailedPrecondition(format!(
                "order {} is {status}; only PENDING or PAID orders can be cancelled",
                request.order_id
            )));
        }
        let reason = (!request.reason.is_empty()).then_some(request.reason.as_str());
        let row = tx
            .query_one(
                r#"UPDATE orders
                   SET status = 'CANCELLED', cancel_reason = $2, version = version + 1,
                       update_time = now()
                   WHERE order_id = $1
                   RETURNING order_id, seq, customer_id, currency_code, items, total_minor,
                             status, failure_reason, version, create_time, update_time,
                             cancel_reason, refunded_minor"#,
                &[&request.order_id, &reason],
            )
            .await
            .context("cancel the order")?;
        let order = order_from_row(&row)?;
        if status == OrderStatus::Pending {
            // Not relayed yet: the processor will never hear of the order.
            let withdrawal = match created_event_id {
                Some(event_id) => outbox::withdraw(&tx, event_id).await,
                // Created before the event id was kept on the order.
                None => outbox::withdraw_unindexed(&tx, &order.order_id, ORDER_CREATED).await,
            }
            .context("withdraw the unpublished order.created event")?;
            match withdrawal {
                Withdrawal::Removed => {
                    tracing::debug!(order_id = %order.order_id, "withdrew the unpublished order.created event");
                }
                Withdrawal::InFlight => {
                    tracing::debug!(order_id = %order.order_id, "order.created is being published; the processor will see the cancel too");
                }
                Withdrawal::Absent => {}
            }
        }
        outbox::enqueue(&tx, &cancelled_event(&order))
            .await
            .context("enqueue the order.cancelled event")?;
        tx.commit().await.context("commit the cancellation")?;
        Ok(order)
    }

    /// Records the refund of a cancelled order delivered as `message_id`,
    /// once: the inbox row and the update commit together, and only an
    /// order without a recorded refund takes it.
    #[tracing::instrument(skip(self, refund), fields(order_id = %refund.order_id))]
    pub async fn apply_refund(
        &self,
        message_id: &str,
        refund: &Refund,
    ) -> Result<RefundApplied, Error> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.context("begin")?;
        if !inbox::record(&tx, INBOX_CONSUMER, message_id)
            .await
            .context("record the message in the inbox")?
        {
            tx.commit().await.context("end the transaction")?;
            return Ok(RefundApplied::Duplicate);
        }
        let updated = tx
            .query_opt(
                r#"UPDATE orders
                   SET refunded_minor = $2, version = version + 1, update_time = now()
                   WHERE order_id = $1 AND status = 'CANCELLED' AND refunded_minor = 0
                   RETURNING version"#,
                &[&refund.order_id, &refund.amount_minor],
            )
            .await
            .context("record the refund")?;
        let applied = match updated {
            Some(row) => RefundApplied::Recorded {
                version: row.try_get("version").context("read version")?,
            },
            None => {
                let row = tx
                    .query_opt(
                        r#"SELECT status, refunded_minor FROM orders WHERE order_id = $1"#,
                        &[&refund.order_id],
                    )
                    .await
                    .context("read the order status")?;
                match row {
                    Some(row) => match parse_status(&row)? {
                        OrderStatus::Cancelled => RefundApplied::AlreadyRecorded,
                        other => RefundApplied::NotCancelled(Some(other)),
                    },
                    None => RefundApplied::NotCancelled(None),
                }
            }
        };
        tx.commit().await.context("commit the refund")?;
        Ok(applied)
    }

    /// Applies a payment result delivered as `message_id`, once: the inbox
    /// row and the state change commit together, in one statement (its own
    /// transaction) and one round trip. Only a PENDING order moves, so a
    /// late or repeated result never undoes a decision.
    #[tracing::instrument(skip(self, result), fields(order_id = %result.order_id))]
    pub async fn apply_payment_result(
        &self,
        message_id: &str,
        result: &PaymentResult,
    ) -> Result<Applied, Error> {
        let client = self.client().await?;
        // The inbox insert is ordermesh_messaging::inbox::record's. The
        // last column reads the statement's snapshot: the status before the
        // update.
        let apply = client
            .prepare_cached(
                r#"WITH fresh AS (
                       INSERT INTO inbox (consumer, message_id) VALUES ($1, $2)
                       ON CONFLICT DO NOTHING
                       RETURNING 1
                   ), moved AS (
                       UPDATE orders
                       SET status = $4, failure_reason = $5, version = version + 1,
                           update_time = now()
                       WHERE order_id = $3 AND status = 'PENDING'
                         AND EXISTS (SELECT 1 FROM fresh)
                       RETURNING version
                   )
                   SELECT EXISTS (SELECT 1 FROM fresh) AS fresh,
                          (SELECT version FROM moved) AS version,
                          (SELECT status FROM orders WHERE order_id = $3) AS status"#,
            )
            .await
            .context("prepare the payment result")?;
        let row = client
            .query_one(
                &apply,
                &[
                    &INBOX_CONSUMER,
                    &message_id,
                    &result.order_id,
                    &result.outcome.status().as_str(),
                    &result.outcome.failure_reason(),
                ],
            )
            .await
            .context("apply the payment result")?;
        if !row.try_get::<_, bool>("fresh").context("read fresh")? {
            ordermesh_messaging::amqp::note_duplicate();
            return Ok(Applied::Duplicate);
        }
        if let Some(version) = row
            .try_get::<_, Option<i64>>("version")
            .context("read version")?
        {
            return Ok(Applied::Moved { version });
        }
        let status: Option<String> = row.try_get("status").context("read status")?;
        match status.as_deref() {
            None => Ok(Applied::UnknownOrder),
            // PENDING in the snapshot, yet not moved: a concurrent change
            // (a cancel) won the row lock. Read what it left.
            Some("PENDING") => {
                let row = client
                    .query_opt(
                        r#"SELECT status FROM orders WHERE order_id = $1"#,
                        &[&result.order_id],
                    )
                    .await
                    .context("read the order status")?;
                match row {
                    Some(row) => Ok(Applied::NotPending(parse_status(&row)?)),
                    None => Ok(Applied::UnknownOrder),
                }
            }
            Some(_) => Ok(Applied::NotPending(parse_status(&row)?)),
        }
    }

    /// How long the oldest PENDING order has waited for its payment
    /// decision, or `None` when no order is PENDING. Oldest by `seq`, which
    /// the `(status, seq)` index finds at once; `seq` follows `create_time`
    /// to within the creating transactions' length.
    #[tracing::instrument(skip(self))]
    pub async fn oldest_pending_age(&self) -> Result<Option<std::time::Duration>, Error> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                r#"SELECT EXTRACT(EPOCH FROM clock_timestamp() - create_time)::float8 AS age
                   FROM orders
                   WHERE status = 'PENDING'
                   ORDER BY seq
                   LIMIT 1"#,
                &[],
            )
            .await
            .context("read the oldest pending order")?;
        let Some(row) = row else {
            return Ok(None);
        };
        let seconds: f64 = row.try_get("age").context("read age")?;
        // A clock step back could make it negative.
        Ok(Some(
            std::time::Duration::try_from_secs_f64(seconds.max(0.0)).unwrap_or_default(),
        ))
    }
}

fn parse_status(row: &Row) -> Result<OrderStatus, Error> {
    let status: &str = row.try_get("status").context("read status")?;
    Ok(status.parse().context("parse status")?)
}

fn order_from_row(row: &Row) -> Result<Order, Error> {
    let read = || -> Result<Order, anyhow::Error> {
        let Json(items): Json<Vec<OrderItem>> = row.try_get("items")?;
        Ok(Order {
            order_id: row.try_get("order_id")?,
            customer_id: row.try_get("customer_id")?,
            currency_code: row.try_get("currency_code")?,
            items,
            total_minor: row.try_get("total_minor")?,
            status: row.try_get::<_, &str>("status")?.parse()?,
            failure_reason: row.try_get("failure_reason")?,
            cancel_reason: row.try_get("cancel_reason")?,
            refunded_minor: row.try_get("refunded_minor")?,
            version: row.try_get("version")?,
            create_time: row.try_get("create_time")?,
            update_time: row.try_get("update_time")?,
            seq: row.try_get("seq")?,
        })
    };
    Ok(read().context("read an order row")?)
}
