//! `spawn_app()` and what tests need around it: a client, a publisher on
//! the test's exchange, and direct reads of the test database (the relay
//! is not running, so outbox rows stay where the service wrote them).

use std::collections::HashMap;
use std::net::SocketAddr;

use lapin::options::{BasicGetOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection};
use ordermesh_proto::events::v1::{OrderCancelled, OrderCreated};
use ordermesh_proto::order::v1::OrderItem;
use ordermesh_proto::payment::v1::account_service_client::AccountServiceClient;
use ordermesh_proto::payment::v1::{
    Account, CreateAccountRequest, DepositRequest, GetAccountRequest,
};
use ordermesh_testkit::{TestBroker, TestDatabase, eventually};
use processor_svc::Config;
use processor_svc::store::Store;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// How long a test waits for something asynchronous to happen.
pub use ordermesh_testkit::PATIENCE as WAIT;

use ordermesh_testkit::tokens::{Authed, authed};
/// The HS256 secret the test services verify tokens with, and tokens
/// signed with it: for `subject` as `role`, and for the test admin.
pub use ordermesh_testkit::tokens::{TEST_SECRET as AUTH_SECRET, admin_token, token};

/// An AccountService client that sends a bearer token on every call.
pub type Client = AccountServiceClient<Authed>;

/// A client on `channel` sending `token` (the test admin's: every
/// customer's account).
pub fn client_with_token(channel: Channel, token: &str) -> Client {
    AccountServiceClient::new(authed(channel, token))
}

/// A running processor-svc with its own database, exchange and queue.
pub struct TestApp {
    /// Acts as the test admin ([`admin_token`]).
    pub client: Client,
    /// The client's connection, for other services on the same server.
    pub channel: Channel,
    /// Where the service listens (gRPC and REST).
    pub addr: SocketAddr,
    /// The queue bound to `order.created` and `order.cancelled` (dead
    /// letters: `<queue>.dlq`).
    pub queue: String,
    pub exchange: String,
    sql: tokio_postgres::Client,
    publisher: lapin::Channel,
    _amqp: Connection,
    shutdown: CancellationToken,
    server: Option<JoinHandle<anyhow::Result<()>>>,
    // Last, so they are removed after everything that uses them is dropped.
    _broker: TestBroker,
    _db: TestDatabase,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Like [`spawn_app`], after `customize` had a go at the configuration.
pub async fn spawn_app_with(customize: impl FnOnce(&mut Config)) -> TestApp {
    // Spans get trace ids, so trace context can be followed through.
    ordermesh_testkit::init_tracing();
    let db = TestDatabase::new();
    let broker = TestBroker::new();
    let queue = broker.queue("order-created");
    let env: HashMap<&str, String> = HashMap::from([
        ("PROCESSOR_DATABASE_URL", db.url.clone()),
        ("AMQP_URL", broker.config.url.expose().to_owned()),
        ("AMQP_EXCHANGE", broker.config.exchange.clone()),
        ("PROCESSOR_QUEUE", queue.clone()),
        ("DB_POOL_SIZE", "4".to_owned()),
        ("SHUTDOWN_GRACE_MS", "5000".to_owned()),
        ("AUTH_JWT_SECRET", AUTH_SECRET.to_owned()),
    ]);
    let mut config = Config::from_env(&env).expect("test configuration is valid");
    config.retry = ordermesh_testkit::fast_retry_policy();
    customize(&mut config);

    // Declare the topology up front (as the service will), so messages
    // published before the consumer is up wait in the queue.
    let (amqp, publisher) = broker.confirmed_channel().await;
    ordermesh_messaging::amqp::declare_queue(&publisher, &config.broker, &config.queue_spec())
        .await
        .expect("declare the test queue");

    // Serving health means the database is migrated, gRPC is up and the
    // consumer is connected (readiness).
    let app = ordermesh_testkit::app::serve(
        "127.0.0.1:0".parse().unwrap(),
        processor_svc::GRPC_SERVICE,
        WAIT,
        |listener, shutdown| processor_svc::run(config, listener, shutdown),
    )
    .await;
    let (addr, channel, shutdown, server) = (app.addr, app.channel, app.shutdown, app.task);
    let client = client_with_token(channel.clone(), &admin_token());
    let sql = db.client().await;

    TestApp {
        client,
        channel,
        addr,
        queue,
        exchange: broker.config.exchange.clone(),
        sql,
        publisher,
        _amqp: amqp,
        shutdown,
        server: Some(server),
        _broker: broker,
        _db: db,
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An outbox row as the relay would read it.
#[derive(Debug)]
pub struct OutboxRow {
    pub aggregate_id: String,
    pub routing_key: String,
    pub event_type: String,
    pub payload: Vec<u8>,
    pub headers: serde_json::Value,
}

/// A row of the `transactions` ledger.
#[derive(Debug, PartialEq, Eq)]
pub struct LedgerRow {
    pub kind: String,
    pub amount_minor: i64,
    pub balance_after_minor: i64,
    pub order_id: Option<String>,
}

/// A `payments` row.
#[derive(Debug, PartialEq, Eq)]
pub struct PaymentRow {
    pub status: String,
    pub reason: Option<String>,
    pub amount_minor: i64,
    pub message_id: String,
}

impl TestApp {
    /// Asks the service to stop and returns what `run` returned.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let server = self.server.take().expect("the service is running");
        ordermesh_testkit::app::stop(&self.shutdown, server).await
    }

    /// Opens an account and deposits `amount_minor` into it.
    pub async fn fund(&self, customer_id: &str, currency_code: &str, amount_minor: i64) {
        let mut client = self.client.clone();
        client
            .create_account(CreateAccountRequest {
                customer_id: customer_id.into(),
                currency_code: currency_code.into(),
            })
            .await
            .expect("create the account");
        if amount_minor > 0 {
            client
                .deposit(DepositRequest {
                    customer_id: customer_id.into(),
                    amount_minor,
                    deposit_id: String::new(),
                })
                .await
                .expect("deposit");
        }
    }

    pub async fn balance(&self, customer_id: &str) -> i64 {
        self.account(customer_id).await.balance_minor
    }

    /// `customer_id`'s account, read as the admin.
    pub async fn account(&self, customer_id: &str) -> Account {
        self.client
            .clone()
            .get_account(GetAccountRequest {
                customer_id: customer_id.into(),
            })
            .await
            .expect("get the account")
            .into_inner()
            .account
            .expect("an account")
    }

    /// Publishes `order` as `order.created` the way the relay does.
    pub async fn publish_order(&self, message_id: &str, order: &OrderCreated) {
        self.publish_event(message_id, "order.created", order).await;
    }

    /// Publishes `cancel` as `order.cancelled` the way the relay does.
    pub async fn publish_cancel(&self, message_id: &str, cancel: &OrderCancelled) {
        self.publish_event(message_id, "order.cancelled", cancel)
            .await;
    }

    /// Publishes `event` under `routing_key` the way the relay does.
    pub async fn publish_event<M: prost::Name>(
        &self,
        message_id: &str,
        routing_key: &str,
        event: &M,
    ) {
        let mut headers = FieldTable::default();
        headers.insert(
            "traceparent".into(),
            AMQPValue::LongString(TRACEPARENT.into()),
        );
        let props = BasicProperties::default()
            .with_message_id(message_id.into())
            .with_type(M::full_name().into())
            .with_content_type("application/x-protobuf".into())
            .with_delivery_mode(2)
            .with_headers(headers);
        self.publish(&self.exchange, routing_key, props, &event.encode_to_vec())
            .await;
    }

    /// Publishes raw bytes and waits for the broker's confirm.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        properties: BasicProperties,
        payload: &[u8],
    ) {
        let confirm = self
            .publisher
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                payload,
                properties,
            )
            .await
            .expect("publish")
            .await
            .expect("publisher confirm");
        assert!(confirm.is_ack(), "the broker did not confirm");
    }

    /// Waits until the order has a `payments` row.
    pub async fn wait_for_payment(&self, order_id: &str) -> PaymentRow {
        eventually(WAIT, || self.payment(order_id))
            .await
            .unwrap_or_else(|| panic!("no payment decided for {order_id} within {WAIT:?}"))
    }

    pub async fn payment(&self, order_id: &str) -> Option<PaymentRow> {
        self.sql
            .query_opt(
                "SELECT status, reason, amount_minor, message_id FROM payments WHERE order_id = $1",
                &[&order_id],
            )
            .await
            .expect("read payments")
            .map(|row| PaymentRow {
                status: row.get(0),
                reason: row.get(1),
                amount_minor: row.get(2),
                message_id: row.get(3),
            })
    }

    pub async fn payment_count(&self) -> i64 {
        self.sql
            .query_one("SELECT count(*) FROM payments", &[])
            .await
            .expect("count payments")
            .get(0)
    }

    /// The outbox rows about `order_id`, oldest first.
    pub async fn outbox(&self, order_id: &str) -> Vec<OutboxRow> {
        self.sql
            .query(
                "SELECT aggregate_id, routing_key, event_type, payload, headers
                 FROM outbox WHERE aggregate_id = $1 ORDER BY id",
                &[&order_id],
            )
            .await
            .expect("read the outbox")
            .into_iter()
            .map(|row| OutboxRow {
                aggregate_id: row.get(0),
                routing_key: row.get(1),
                event_type: row.get(2),
                payload: row.get(3),
                headers: row.get(4),
            })
            .collect()
    }

    /// The customer's ledger, oldest first.
    pub async fn ledger(&self, customer_id: &str) -> Vec<LedgerRow> {
        self.sql
            .query(
                "SELECT kind, amount_minor, balance_after_minor, order_id
                 FROM transactions WHERE customer_id = $1 ORDER BY seq",
                &[&customer_id],
            )
            .await
            .expect("read the ledger")
            .into_iter()
            .map(|row| LedgerRow {
                kind: row.get(0),
                amount_minor: row.get(1),
                balance_after_minor: row.get(2),
                order_id: row.get(3),
            })
            .collect()
    }

    /// Waits until the consumer's inbox holds `message_id`: the message was
    /// applied (or found to change nothing).
    pub async fn wait_for_inbox(&self, message_id: &str) {
        eventually(WAIT, || async {
            self.inbox()
                .await
                .iter()
                .any(|id| id == message_id)
                .then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("{message_id} was not applied within {WAIT:?}"));
    }

    /// A store on the service's database, to drive it directly (e.g. many
    /// calls at once) besides the running consumer.
    pub fn store(&self) -> Store {
        let config = self._db.url.parse().expect("test URL parses");
        Store::new(ordermesh_runtime::db::pool(config, 16).expect("build a pool"))
    }

    /// Message ids in the consumer's inbox.
    pub async fn inbox(&self) -> Vec<String> {
        self.sql
            .query(
                "SELECT message_id FROM inbox WHERE consumer = 'processor-svc' ORDER BY message_id",
                &[],
            )
            .await
            .expect("read the inbox")
            .into_iter()
            .map(|row| row.get(0))
            .collect()
    }

    /// Waits for a message in the dead-letter queue and returns its id.
    pub async fn wait_for_dead_letter(&self) -> String {
        let dlq = ordermesh_messaging::amqp::dead_letter_queue(&self.queue);
        eventually(WAIT, || async {
            let got = self
                .publisher
                .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .expect("read the dead-letter queue")?;
            Some(
                got.delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|id| id.as_str().to_owned())
                    .unwrap_or_default(),
            )
        })
        .await
        .unwrap_or_else(|| panic!("nothing reached {dlq} within {WAIT:?}"))
    }
}

/// The trace context the tests' events carry.
pub const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// An `OrderCreated` whose total is the sum of `items` (sku, quantity, unit price).
pub fn order(
    order_id: &str,
    customer_id: &str,
    currency_code: &str,
    items: &[(&str, i32, i64)],
) -> OrderCreated {
    let items: Vec<OrderItem> = items
        .iter()
        .map(|(sku, quantity, unit_price_minor)| OrderItem {
            sku: (*sku).into(),
            quantity: *quantity,
            unit_price_minor: *unit_price_minor,
        })
        .collect();
    let total_minor = items
        .iter()
        .map(|i| i64::from(i.quantity) * i.unit_price_minor)
        .sum();
    OrderCreated {
        order_id: order_id.into(),
        customer_id: customer_id.into(),
        currency_code: currency_code.into(),
        items,
        total_minor,
    }
}

/// An `OrderCancelled` for `order_id` of `customer_id`.
pub fn cancel(order_id: &str, customer_id: &str) -> OrderCancelled {
    OrderCancelled {
        order_id: order_id.into(),
        customer_id: customer_id.into(),
        reason: "changed my mind".into(),
    }
}

/// A fresh message id, as the outbox would assign.
pub fn message_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
