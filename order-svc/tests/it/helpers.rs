//! `spawn_app()` and what tests do with a running service: build requests,
//! call the API, publish payment results, look at the database.

use std::collections::HashMap;
use std::net::SocketAddr;

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Confirmation, Connection};
use order_svc::Config;
use ordermesh_proto::events::v1 as events;
use ordermesh_proto::order::v1 as pb;
use ordermesh_testkit::{TestBroker, TestDatabase, eventually};
use pb::order_service_client::OrderServiceClient;
use prost::{Message as _, Name};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic_types::StatusExt;

/// How long a test waits for something asynchronous to happen.
pub use ordermesh_testkit::PATIENCE;

use ordermesh_testkit::tokens::{Authed, authed};
/// The HS256 secret the test services verify tokens with, and tokens
/// signed with it: for `subject` as `role`, and for the test admin.
pub use ordermesh_testkit::tokens::{TEST_SECRET as AUTH_SECRET, admin_token, token};

/// An OrderService client that sends a bearer token on every call.
pub type Client = OrderServiceClient<Authed>;

/// A client on `channel` sending `token`.
pub fn client_with_token(channel: Channel, token: &str) -> Client {
    OrderServiceClient::new(authed(channel, token))
}

/// A client on `channel` acting as an admin (every customer's orders).
pub fn admin_client(channel: Channel) -> Client {
    client_with_token(channel, &admin_token())
}

/// A running order-svc and its private resources. Dropping it stops the
/// service, then removes the database and the broker names.
pub struct TestApp {
    /// Acts as an admin (see [`admin_client`]).
    pub client: Client,
    /// The connection of `client`, for other clients (other tokens, none,
    /// health, reflection).
    pub channel: Channel,
    /// Where the service listens (gRPC and REST).
    pub addr: SocketAddr,
    pub config: Config,
    /// A publisher channel (with confirms) on the test broker.
    pub amqp: lapin::Channel,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    _amqp_conn: Connection,
    // Dropped last, after the service has been told to stop.
    pub broker: TestBroker,
    pub db: TestDatabase,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Like [`spawn_app`], after `customize` had a go at the configuration.
pub async fn spawn_app_with(customize: impl FnOnce(&mut Config)) -> TestApp {
    let db = TestDatabase::new();
    let broker = TestBroker::new();
    let queue = broker.queue("payment-results");
    let env: HashMap<&str, String> = [
        ("ORDER_SVC_ADDR", "127.0.0.1:0".to_owned()),
        ("ORDER_DATABASE_URL", db.url.clone()),
        ("AMQP_URL", broker.config.url.expose().to_owned()),
        ("AMQP_EXCHANGE", broker.config.exchange.clone()),
        ("ORDER_QUEUE", queue),
        // One delivery at a time, so results apply in publish order and a
        // test can wait on a later message to know an earlier one was seen.
        ("AMQP_PREFETCH", "1".to_owned()),
        ("DB_POOL_SIZE", "4".to_owned()),
        ("SHUTDOWN_GRACE_MS", "5000".to_owned()),
        ("AUTH_JWT_SECRET", AUTH_SECRET.to_owned()),
    ]
    .into_iter()
    .collect();
    let mut config = Config::from_env(&env).expect("test configuration");
    config.retry = ordermesh_testkit::fast_retry_policy();
    customize(&mut config);

    // The queue exists before anything is published, so a message sent
    // before the consumer is up waits in it instead of being dropped.
    let (amqp_conn, amqp) = broker.confirmed_channel().await;
    ordermesh_messaging::amqp::declare_queue(
        &amqp,
        &broker.config,
        &config.consumer_config().queue,
    )
    .await
    .expect("declare the test queue");

    let app = ordermesh_testkit::app::serve(
        config.addr,
        pb::order_service_server::SERVICE_NAME,
        PATIENCE,
        |listener, shutdown| order_svc::run(config.clone(), listener, shutdown),
    )
    .await;
    let (addr, channel, shutdown, task) = (app.addr, app.channel, app.shutdown, app.task);

    TestApp {
        client: admin_client(channel.clone()),
        channel,
        addr,
        config,
        amqp,
        shutdown,
        task: Some(task),
        _amqp_conn: amqp_conn,
        broker,
        db,
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn item(sku: &str, quantity: i32, unit_price_minor: i64) -> pb::OrderItem {
    pb::OrderItem {
        sku: sku.into(),
        quantity,
        unit_price_minor,
    }
}

/// A valid request: two lines, 2 * 250 + 1 * 199 = 699 USD minor units.
pub fn order_request(order_id: &str, customer_id: &str) -> pb::CreateOrderRequest {
    pb::CreateOrderRequest {
        order_id: order_id.into(),
        customer_id: customer_id.into(),
        currency_code: String::new(),
        items: vec![item("apple", 2, 250), item("pear", 1, 199)],
    }
}

/// Asserts `status` is INVALID_ARGUMENT naming `field`, in the message and in
/// a `google.rpc.BadRequest` detail.
pub fn assert_invalid(status: &tonic::Status, field: &str) {
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains(field), "{status:?}");
    let bad_request = status
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("no BadRequest detail in {status:?}"));
    let fields: Vec<_> = bad_request
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert_eq!(fields, [field], "{status:?}");
}

impl TestApp {
    pub async fn create(&self, req: pb::CreateOrderRequest) -> Result<pb::Order, tonic::Status> {
        let resp = self.client.clone().create_order(req).await?;
        Ok(resp.into_inner().order.expect("response carries the order"))
    }

    pub async fn get(&self, order_id: &str) -> Result<pb::Order, tonic::Status> {
        let resp = self
            .client
            .clone()
            .get_order(pb::GetOrderRequest {
                order_id: order_id.into(),
            })
            .await?;
        Ok(resp.into_inner().order.expect("response carries the order"))
    }

    pub async fn list(
        &self,
        req: pb::ListOrdersRequest,
    ) -> Result<pb::ListOrdersResponse, tonic::Status> {
        Ok(self.client.clone().list_orders(req).await?.into_inner())
    }

    /// Publishes `payload` to the test exchange and waits for the broker to
    /// confirm it was queued.
    pub async fn publish(
        &self,
        routing_key: &str,
        message_id: &str,
        event_type: &str,
        payload: &[u8],
    ) {
        let props = BasicProperties::default()
            .with_message_id(message_id.into())
            .with_type(event_type.into())
            .with_content_type("application/x-protobuf".into())
            .with_delivery_mode(2);
        let confirm = self
            .amqp
            .basic_publish(
                self.broker.config.exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                payload,
                props,
            )
            .await
            .expect("publish")
            .await
            .expect("publisher confirm");
        assert!(
            matches!(confirm, Confirmation::Ack(None)),
            "message not queued: {confirm:?}"
        );
    }

    pub async fn publish_succeeded(&self, message_id: &str, order_id: &str) {
        let event = events::PaymentSucceeded {
            order_id: order_id.into(),
            customer_id: String::new(),
            amount_minor: 0,
            currency_code: "USD".into(),
        };
        self.publish(
            events::PAYMENT_SUCCEEDED,
            message_id,
            &events::PaymentSucceeded::full_name(),
            &event.encode_to_vec(),
        )
        .await;
    }

    pub async fn publish_failed(&self, message_id: &str, order_id: &str, reason: &str) {
        let event = events::PaymentFailed {
            order_id: order_id.into(),
            customer_id: String::new(),
            reason: reason.into(),
        };
        self.publish(
            events::PAYMENT_FAILED,
            message_id,
            &events::PaymentFailed::full_name(),
            &event.encode_to_vec(),
        )
        .await;
    }

    /// Polls until the order satisfies `check`, returning it.
    pub async fn wait_for_order(
        &self,
        order_id: &str,
        check: impl Fn(&pb::Order) -> bool,
    ) -> pb::Order {
        let check = &check;
        eventually(PATIENCE, || async move {
            let order = self.get(order_id).await.ok()?;
            check(&order).then_some(order)
        })
        .await
        .unwrap_or_else(|| panic!("order {order_id} never reached the expected state"))
    }

    /// Waits until every payment result published so far was handled: with
    /// prefetch 1 the queue is FIFO, so once a fresh order paid through a
    /// message published now is PAID, everything before it was handled.
    pub async fn sync_consumer(&self) {
        let marker = format!("marker-{}", uuid::Uuid::new_v4().simple());
        self.create(order_request(&marker, "marker-customer"))
            .await
            .expect("create the marker order");
        self.publish_succeeded(&format!("{marker}-msg"), &marker)
            .await;
        self.wait_for_order(&marker, |o| o.status == pb::OrderStatus::Paid as i32)
            .await;
    }

    /// Messages waiting in the dead-letter queue of the order queue.
    pub async fn dead_letters(&self) -> u32 {
        let dlq = ordermesh_messaging::amqp::dead_letter_queue(&self.config.queue);
        ordermesh_testkit::queue_depth(&self.amqp, &dlq).await
    }

    /// Stops the service and returns how `run` ended.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let task = self.task.take().expect("running");
        ordermesh_testkit::app::stop(&self.shutdown, task).await
    }

    /// A plain SQL client on the service's database.
    pub async fn sql(&self) -> tokio_postgres::Client {
        self.db.client().await
    }
}
