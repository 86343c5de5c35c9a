//! CreateOrder: validation, the stored order, its outbox event, idempotency
//! and atomicity.

use ordermesh_auth::Role;
use ordermesh_proto::events::v1 as events;
use ordermesh_proto::order::v1 as pb;
use ordermesh_testkit::rest_call;
use prost::Message as _;

use crate::helpers::{assert_invalid, item, order_request, spawn_app, token};

#[tokio::test]
async fn invalid_requests_name_the_field() {
    let app = spawn_app().await;
    type Mutation = Box<dyn Fn(&mut pb::CreateOrderRequest)>;
    let cases: Vec<(&str, Mutation)> = vec![
        ("customer_id", Box::new(|r| r.customer_id.clear())),
        ("customer_id", Box::new(|r| r.customer_id = "c".repeat(129))),
        ("order_id", Box::new(|r| r.order_id = "o".repeat(129))),
        ("order_id", Box::new(|r| r.order_id = "has space".into())),
        (
            "currency_code",
            Box::new(|r| r.currency_code = "usd".into()),
        ),
        ("currency_code", Box::new(|r| r.currency_code = "US".into())),
        ("items", Box::new(|r| r.items.clear())),
        ("items", Box::new(|r| r.items = vec![item("x", 1, 1); 101])),
        ("items[0].quantity", Box::new(|r| r.items[0].quantity = 0)),
        ("items[1].quantity", Box::new(|r| r.items[1].quantity = -1)),
        (
            "items[1].unit_price_minor",
            Box::new(|r| r.items[1].unit_price_minor = -5),
        ),
        ("items[0].sku", Box::new(|r| r.items[0].sku.clear())),
        (
            "items[1].sku",
            Box::new(|r| r.items[1].sku = "s".repeat(65)),
        ),
        (
            "items",
            Box::new(|r| r.items = vec![item("a", 1, i64::MAX), item("b", 1, 1)]),
        ),
        (
            "items[0]",
            Box::new(|r| r.items[0] = item("a", 3, i64::MAX / 2)),
        ),
        // Free items only: nothing to pay, so no payment would ever end it.
        (
            "items",
            Box::new(|r| r.items = vec![item("gift", 2, 0), item("card", 1, 0)]),
        ),
    ];
    for (field, mutate) in cases {
        let mut req = order_request("", "alice");
        mutate(&mut req);
        let status = app.create(req).await.unwrap_err();
        assert_invalid(&status, field);
    }

    let orders: i64 = app
        .sql()
        .await
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(orders, 0, "a rejected request stored nothing");
}

#[tokio::test]
async fn a_free_item_is_accepted_but_a_free_order_is_not_over_rest_either() {
    let app = spawn_app().await;
    let token = token("test-admin", Role::Admin);
    let body =
        |items: serde_json::Value| Some(serde_json::json!({"customerId": "alice", "items": items}));

    let answer = rest_call(
        app.addr,
        http::Method::POST,
        "/v1/orders",
        Some(&token),
        body(serde_json::json!([{"sku": "gift", "quantity": 1, "unitPriceMinor": "0"}])),
    )
    .await;
    assert_eq!(answer.status, 400, "{:?}", answer.body);
    assert_eq!(
        answer.body["code"],
        tonic::Code::InvalidArgument as i32,
        "{:?}",
        answer.body
    );
    let violation = &answer.body["details"][0]["fieldViolations"][0];
    assert_eq!(violation["field"], "items", "{:?}", answer.body);
    assert!(
        violation["description"]
            .as_str()
            .is_some_and(|d| d.contains("greater than 0")),
        "{:?}",
        answer.body
    );

    // A free item beside a paid one is fine: the total is what is paid.
    let answer = rest_call(
        app.addr,
        http::Method::POST,
        "/v1/orders",
        Some(&token),
        body(serde_json::json!([
            {"sku": "gift", "quantity": 1, "unitPriceMinor": "0"},
            {"sku": "lamp", "quantity": 1, "unitPriceMinor": "4000"}
        ])),
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["order"]["totalMinor"], "4000");
}

#[tokio::test]
async fn create_stores_a_pending_order_with_its_outbox_event() {
    let app = spawn_app().await;
    let order = app.create(order_request("", "alice")).await.unwrap();

    assert!(uuid::Uuid::parse_str(&order.order_id).is_ok(), "{order:?}");
    assert_eq!(order.customer_id, "alice");
    assert_eq!(order.currency_code, "USD");
    assert_eq!(order.total_minor, 2 * 250 + 199);
    assert_eq!(order.status, pb::OrderStatus::Pending as i32);
    assert_eq!(order.version, 1);
    assert_eq!(order.items.len(), 2);
    assert!(order.create_time.is_some() && order.update_time.is_some());

    assert_eq!(app.get(&order.order_id).await.unwrap(), order);

    let rows = app
        .sql()
        .await
        .query(
            "SELECT aggregate_id, routing_key, event_type, payload FROM outbox",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.get::<_, String>("aggregate_id"), order.order_id);
    assert_eq!(row.get::<_, String>("routing_key"), events::ORDER_CREATED);
    assert_eq!(
        row.get::<_, String>("event_type"),
        "ordermesh.events.v1.OrderCreated"
    );
    let event = events::OrderCreated::decode(row.get::<_, &[u8]>("payload")).unwrap();
    assert_eq!(event.order_id, order.order_id);
    assert_eq!(event.customer_id, "alice");
    assert_eq!(event.currency_code, "USD");
    assert_eq!(event.total_minor, 699);
    assert_eq!(event.items, order.items);
}

#[tokio::test]
async fn get_unknown_order_is_not_found_and_bad_id_is_invalid() {
    let app = spawn_app().await;
    let status = app.get("no-such-order").await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    assert_invalid(&app.get("").await.unwrap_err(), "order_id");
    assert_invalid(&app.get("a/b").await.unwrap_err(), "order_id");
}

async fn outbox_rows(app: &crate::helpers::TestApp) -> i64 {
    app.sql()
        .await
        .query_one("SELECT count(*) FROM outbox", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn same_id_same_content_returns_the_stored_order_once() {
    let app = spawn_app().await;
    let first = app.create(order_request("ord-1", "alice")).await.unwrap();
    let again = app.create(order_request("ord-1", "alice")).await.unwrap();
    assert_eq!(first, again);

    // An empty currency is USD: still the same content.
    let mut explicit = order_request("ord-1", "alice");
    explicit.currency_code = "USD".into();
    assert_eq!(app.create(explicit).await.unwrap(), first);

    assert_eq!(outbox_rows(&app).await, 1);
}

#[tokio::test]
async fn same_id_other_content_is_already_exists() {
    let app = spawn_app().await;
    app.create(order_request("ord-1", "alice")).await.unwrap();

    let mut other_items = order_request("ord-1", "alice");
    other_items.items[0].quantity = 3;
    let mut other_customer = order_request("ord-1", "bob");
    other_customer.customer_id = "bob".into();
    let mut other_currency = order_request("ord-1", "alice");
    other_currency.currency_code = "EUR".into();
    for req in [other_items, other_customer, other_currency] {
        let status = app.create(req).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::AlreadyExists, "{status:?}");
    }

    let stored = app.get("ord-1").await.unwrap();
    assert_eq!(stored.customer_id, "alice");
    assert_eq!(stored.total_minor, 699);
    assert_eq!(outbox_rows(&app).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_creates_make_one_order() {
    let app = spawn_app().await;
    let calls = (0..16).map(|_| app.create(order_request("race-1", "alice")));
    let results = futures::future::join_all(calls).await;
    let orders: Vec<_> = results.into_iter().map(Result::unwrap).collect();
    assert!(orders.iter().all(|o| *o == orders[0]), "{orders:#?}");

    let client = app.sql().await;
    let count: i64 = client
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 1);
    assert_eq!(outbox_rows(&app).await, 1);
}

#[tokio::test]
async fn a_failing_outbox_insert_leaves_no_order() {
    let app = spawn_app().await;
    let sql = app.sql().await;
    sql.batch_execute(
        r#"CREATE FUNCTION refuse_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN RAISE EXCEPTION 'outbox is broken (test)'; END $$;
           CREATE TRIGGER refuse_outbox BEFORE INSERT ON outbox
               FOR EACH ROW EXECUTE FUNCTION refuse_outbox();"#,
    )
    .await
    .unwrap();

    let status = app
        .create(order_request("ord-1", "alice"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
    assert!(
        !status.message().contains("outbox"),
        "internal detail leaked: {status:?}"
    );
    let orders: i64 = sql
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(orders, 0);
    assert_eq!(
        app.get("ord-1").await.unwrap_err().code(),
        tonic::Code::NotFound
    );

    // The id was not used up: once the outbox works, the same request works.
    sql.batch_execute("DROP TRIGGER refuse_outbox ON outbox")
        .await
        .unwrap();
    let order = app.create(order_request("ord-1", "alice")).await.unwrap();
    assert_eq!(order.order_id, "ord-1");
    assert_eq!(outbox_rows(&app).await, 1);
}
