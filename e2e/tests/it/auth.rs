//! Authentication across the real binaries: a customer registered on
//! processor-svc orders on order-svc with its token and reaches only its
//! own resources; `processor-svc token` prints a token both services take;
//! rate limits answer 429 with Retry-After; an account an admin opened
//! cannot be claimed by registering; password guessing behind a trusted
//! proxy is throttled per customer id; a service without a key, or with a
//! bad trusted-proxy list, does not start.

use std::process::{Command, Stdio};
use std::time::Duration;

use http::Method;
use ordermesh_proto::order::v1::{GetOrderRequest, ListOrdersRequest, OrderStatus};
use ordermesh_proto::payment::v1::{CreateAccountRequest, DepositRequest, GetAccountRequest};
use serde_json::json;
use tonic::Code;

use crate::mesh::{AUTH_SECRET, Mesh, binary};
use crate::pipeline::{item, open_account, order, settled};
use crate::rest::{NO_TOKEN, http1, send};

#[tokio::test]
async fn a_registered_customer_orders_for_itself_only() {
    let mesh = Mesh::start(&[]).await;
    let http = http1();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let (me, other) = (format!("me-{suffix}"), format!("other-{suffix}"));

    // Register over REST without a token, then log in.
    let register = json!({"customerId": me, "password": "my own password"});
    let answer = send(
        &http,
        &mesh.processor_addr,
        Method::POST,
        "/v1/auth:register",
        &[NO_TOKEN],
        Some(register.to_string()),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let answer = send(
        &http,
        &mesh.processor_addr,
        Method::POST,
        "/v1/auth:login",
        &[NO_TOKEN],
        Some(register.to_string()),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let token = answer.json()["accessToken"].as_str().unwrap().to_owned();

    // With it: an account, money, an order that gets paid.
    let mut accounts = mesh.accounts_as(&token).await;
    accounts
        .create_account(CreateAccountRequest {
            customer_id: me.clone(),
            currency_code: "USD".into(),
        })
        .await
        .unwrap();
    accounts
        .deposit(DepositRequest {
            customer_id: me.clone(),
            amount_minor: 1000,
            deposit_id: String::new(),
        })
        .await
        .unwrap();
    let mut orders = mesh.orders_as(&token).await;
    let mine = format!("{me}-order");
    orders
        .create_order(order(&mine, &me, vec![item("book", 1, 400)]))
        .await
        .unwrap();
    let paid = settled(&mut orders, &mine, Duration::from_secs(20)).await;
    assert_eq!(paid.status, OrderStatus::Paid as i32, "{paid:?}");

    // Somebody else's, opened by an admin: out of reach.
    open_account(&mesh, &other, 1000).await;
    let theirs = format!("{other}-order");
    mesh.orders()
        .await
        .create_order(order(&theirs, &other, vec![item("book", 1, 400)]))
        .await
        .unwrap();
    let status = orders
        .get_order(GetOrderRequest {
            order_id: theirs.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = orders
        .create_order(order(&format!("{me}-2"), &other, vec![item("book", 1, 1)]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = accounts
        .get_account(GetAccountRequest {
            customer_id: other.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let listed = orders
        .list_orders(ListOrdersRequest::default())
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = listed.orders.iter().map(|o| o.order_id.as_str()).collect();
    assert_eq!(ids, [mine.as_str()]);

    // The same over REST on order-svc; no token is 401 with a challenge.
    let bearer = format!("Bearer {token}");
    let mine_path = format!("/v1/orders/{mine}");
    let answer = send(
        &http,
        &mesh.order_addr,
        Method::GET,
        &mine_path,
        &[("authorization", &bearer)],
        None,
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    send(
        &http,
        &mesh.order_addr,
        Method::GET,
        &format!("/v1/orders/{theirs}"),
        &[("authorization", &bearer)],
        None,
    )
    .await
    .error(404, 5);
    let answer = send(
        &http,
        &mesh.order_addr,
        Method::GET,
        &mine_path,
        &[NO_TOKEN],
        None,
    )
    .await;
    answer.error(401, 16);
    assert!(
        answer.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    send(
        &http,
        &mesh.order_addr,
        Method::POST,
        "/v1/orders",
        &[("authorization", &bearer)],
        Some(json!({"customerId": other, "items": [{"sku": "a", "quantity": 1, "unitPriceMinor": 1}]}).to_string()),
    )
    .await
    .error(403, 7);

    // `processor-svc token` signs with the configured key: both services
    // take its admin token.
    let output = Command::new(binary("processor-svc"))
        .args([
            "token",
            "--subject",
            "e2e-operator",
            "--role",
            "admin",
            "--ttl-s",
            "60",
        ])
        .env("AUTH_JWT_SECRET", AUTH_SECRET)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let admin = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let all = mesh
        .orders_as(&admin)
        .await
        .list_orders(ListOrdersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(all.orders.len() >= 2, "{all:?}");
    mesh.accounts_as(&admin)
        .await
        .get_account(GetAccountRequest { customer_id: me })
        .await
        .unwrap();
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after() {
    let mesh = Mesh::start(&[("RATE_LIMIT_PER_S", "1"), ("RATE_LIMIT_BURST", "2")]).await;
    let http = http1();
    let bearer = format!(
        "Bearer {}",
        crate::mesh::token("limited", ordermesh_auth::Role::Customer)
    );
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..5 {
        let answer = send(
            &http,
            &mesh.order_addr,
            Method::GET,
            "/v1/orders/nothing",
            &[("authorization", &bearer)],
            None,
        )
        .await;
        statuses.push(answer.status);
        if answer.status == 429 {
            limited = Some(answer);
        }
    }
    assert_eq!(&statuses[..2], [404, 404], "{statuses:?}");
    let limited = limited.unwrap_or_else(|| panic!("never limited: {statuses:?}"));
    let body = limited.error(429, 8);
    assert_eq!(
        body["details"][0]["@type"],
        "type.googleapis.com/google.rpc.RetryInfo"
    );
    let seconds: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(seconds >= 1, "{limited:?}");

    // Anonymous logins are limited per address.
    let mut logins = Vec::new();
    for _ in 0..5 {
        let answer = send(
            &http,
            &mesh.processor_addr,
            Method::POST,
            "/v1/auth:login",
            &[NO_TOKEN],
            Some(json!({"customerId": "nobody", "password": "whatever"}).to_string()),
        )
        .await;
        logins.push(answer.status);
    }
    assert_eq!(&logins[..2], [401, 401], "{logins:?}");
    assert!(logins.contains(&429), "{logins:?}");
}

#[test]
fn services_without_a_verification_key_refuse_to_start() {
    for (name, addr_var) in [
        ("order-svc", "ORDER_SVC_ADDR"),
        ("processor-svc", "PROCESSOR_SVC_ADDR"),
    ] {
        let mut child = Command::new(binary(name))
            .env_remove("AUTH_JWT_SECRET")
            .env_remove("AUTH_JWT_PUBLIC_KEYS")
            .env_remove("AUTH_JWKS_FILE")
            .env_remove("AUTH_JWT_SIGNING_KEY_FILE")
            .env(addr_var, "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // It fails before touching the database or the broker.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("{name} started without a verification key");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(!status.success(), "{name}: {status:?}");
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(stderr.contains("AUTH_JWT_SECRET"), "{name}: {stderr}");
    }
}

#[tokio::test]
async fn registering_and_guessing_behind_an_ingress() {
    // The test is the ingress: its address is a trusted proxy.
    let mesh = Mesh::start(&[
        ("AUTH_TRUSTED_PROXIES", "127.0.0.1/32"),
        ("RATE_LIMIT_PER_S", "1"),
        ("RATE_LIMIT_BURST", "3"),
        ("AUTH_LOGIN_MAX_FAILURES", "3"),
        ("AUTH_LOGIN_LOCKOUT_MS", "60000"),
    ])
    .await;
    let http = http1();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let (funded, mine) = (format!("funded-{suffix}"), format!("mine-{suffix}"));
    let mut addresses = (1..).map(|i: u32| format!("198.51.100.{i}"));
    let mut post = async |path: &str, body: serde_json::Value| {
        let xff = addresses.next().unwrap();
        send(
            &http,
            &mesh.processor_addr,
            Method::POST,
            path,
            &[NO_TOKEN, ("x-forwarded-for", &xff)],
            Some(body.to_string()),
        )
        .await
    };

    // An admin opened and funded this account: registering as it is 409.
    open_account(&mesh, &funded, 1000).await;
    post(
        "/v1/auth:register",
        json!({"customerId": funded, "password": "the attacker's password"}),
    )
    .await
    .error(409, 6);
    let answer = post(
        "/v1/auth:register",
        json!({"customerId": mine, "password": "my own password"}),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");

    // Guesses from ever new addresses: each has a bucket of its own, but
    // the customer id is locked after 3.
    let mut statuses = Vec::new();
    let mut locked = None;
    for i in 0..8 {
        let answer = post(
            "/v1/auth:login",
            json!({"customerId": mine, "password": format!("guess {i}")}),
        )
        .await;
        statuses.push(answer.status);
        if answer.status == 429 {
            locked = Some(answer);
        }
    }
    assert_eq!(statuses[..3], [401; 3], "{statuses:?}");
    assert_eq!(statuses[3..], [429; 5], "{statuses:?}");
    let locked = locked.unwrap();
    let body = locked.error(429, 8);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("too many failed logins"),
        "{body}"
    );
    let seconds: u64 = locked.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&seconds), "{seconds}");
    // Even the right password waits; nobody else does.
    post(
        "/v1/auth:login",
        json!({"customerId": mine, "password": "my own password"}),
    )
    .await
    .error(429, 8);
    let other = format!("other-{suffix}");
    let answer = post(
        "/v1/auth:register",
        json!({"customerId": other, "password": "another password"}),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let answer = post(
        "/v1/auth:login",
        json!({"customerId": other, "password": "another password"}),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
}

#[test]
fn a_bad_trusted_proxy_list_stops_the_start() {
    for (name, addr_var) in [
        ("order-svc", "ORDER_SVC_ADDR"),
        ("processor-svc", "PROCESSOR_SVC_ADDR"),
    ] {
        let mut child = Command::new(binary(name))
            .env("AUTH_JWT_SECRET", AUTH_SECRET)
            .env("AUTH_TRUSTED_PROXIES", "10.0.0.0/8, the-ingress")
            .env(addr_var, "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // It fails reading its configuration, before anything else.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("{name} started with a bad AUTH_TRUSTED_PROXIES");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(!status.success(), "{name}: {status:?}");
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(stderr.contains("AUTH_TRUSTED_PROXIES"), "{name}: {stderr}");
    }
}
