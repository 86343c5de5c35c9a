//! ListOrders: filters, newest-first keyset pages, and page tokens bound to
//! their query.

use ordermesh_proto::order::v1 as pb;

use crate::helpers::{TestApp, assert_invalid, order_request, spawn_app};

fn query(customer_id: &str, status: pb::OrderStatus, page_size: i32) -> pb::ListOrdersRequest {
    pb::ListOrdersRequest {
        customer_id: customer_id.into(),
        status: status as i32,
        page_size,
        page_token: String::new(),
    }
}

/// Follows next_page_token to the end; returns the ids and the page count.
async fn list_all(app: &TestApp, mut req: pb::ListOrdersRequest) -> (Vec<String>, usize) {
    let mut ids = Vec::new();
    let mut pages = 0;
    loop {
        let page = app.list(req.clone()).await.unwrap();
        pages += 1;
        let limit = if req.page_size == 0 {
            50
        } else {
            req.page_size as usize
        };
        assert!(page.orders.len() <= limit);
        ids.extend(page.orders.into_iter().map(|o| o.order_id));
        if page.next_page_token.is_empty() {
            return (ids, pages);
        }
        req.page_token = page.next_page_token;
        assert!(pages < 100, "pagination does not end");
    }
}

#[tokio::test]
async fn list_by_customer_pages_through_exactly_their_orders() {
    let app = spawn_app().await;
    let mut alice = Vec::new();
    for i in 0..7 {
        alice.push(
            app.create(order_request(&format!("a-{i}"), "alice"))
                .await
                .unwrap()
                .order_id,
        );
        app.create(order_request(&format!("b-{i}"), "bob"))
            .await
            .unwrap();
    }
    alice.reverse(); // newest first

    let (ids, pages) = list_all(&app, query("alice", pb::OrderStatus::Unspecified, 3)).await;
    assert_eq!(ids, alice);
    assert_eq!(pages, 3);

    // A page size that divides evenly still ends with an empty token.
    let (ids, _) = list_all(&app, query("alice", pb::OrderStatus::Unspecified, 7)).await;
    assert_eq!(ids, alice);

    let (everyone, _) = list_all(&app, query("", pb::OrderStatus::Unspecified, 4)).await;
    assert_eq!(everyone.len(), 14);
    assert_eq!(everyone[0], "b-6");

    let (nobody, pages) = list_all(&app, query("carol", pb::OrderStatus::Unspecified, 0)).await;
    assert!(nobody.is_empty());
    assert_eq!(pages, 1);
}

#[tokio::test]
async fn list_filters_by_status() {
    let app = spawn_app().await;
    for i in 0..4 {
        app.create(order_request(&format!("o-{i}"), "alice"))
            .await
            .unwrap();
    }
    app.publish_succeeded("m-1", "o-1").await;
    app.publish_failed("m-3", "o-3", "insufficient funds").await;
    app.wait_for_order("o-3", |o| o.status == pb::OrderStatus::Failed as i32)
        .await;
    app.wait_for_order("o-1", |o| o.status == pb::OrderStatus::Paid as i32)
        .await;

    let (paid, _) = list_all(&app, query("alice", pb::OrderStatus::Paid, 10)).await;
    assert_eq!(paid, ["o-1"]);
    let (failed, _) = list_all(&app, query("", pb::OrderStatus::Failed, 10)).await;
    assert_eq!(failed, ["o-3"]);
    let (pending, _) = list_all(&app, query("alice", pb::OrderStatus::Pending, 1)).await;
    assert_eq!(pending, ["o-2", "o-0"]);
    let (all, _) = list_all(&app, query("alice", pb::OrderStatus::Unspecified, 0)).await;
    assert_eq!(all, ["o-3", "o-2", "o-1", "o-0"]);
}

#[tokio::test]
async fn list_rejects_bad_arguments_and_foreign_or_tampered_tokens() {
    let app = spawn_app().await;
    for i in 0..3 {
        app.create(order_request(&format!("o-{i}"), "alice"))
            .await
            .unwrap();
    }
    let first = app
        .list(query("alice", pb::OrderStatus::Unspecified, 1))
        .await
        .unwrap();
    let token = first.next_page_token;
    assert!(!token.is_empty());

    let with_token = |customer: &str, status: pb::OrderStatus, token: &str| {
        let mut q = query(customer, status, 1);
        q.page_token = token.into();
        q
    };
    // The token works with its own query, whatever the page size.
    let mut same = with_token("alice", pb::OrderStatus::Unspecified, &token);
    same.page_size = 50;
    assert_eq!(app.list(same).await.unwrap().orders.len(), 2);

    // Other filters.
    for (customer, status) in [
        ("bob", pb::OrderStatus::Unspecified),
        ("", pb::OrderStatus::Unspecified),
        ("alice", pb::OrderStatus::Pending),
    ] {
        let status = app
            .list(with_token(customer, status, &token))
            .await
            .unwrap_err();
        assert_invalid(&status, "page_token");
    }
    // Edited or made up.
    let mut tampered = token.clone().into_bytes();
    tampered[12] = if tampered[12] == b'x' { b'y' } else { b'x' };
    let tampered = String::from_utf8(tampered).unwrap();
    for bad in [
        tampered.as_str(),
        "not-a-token",
        "%%%",
        &token[..token.len() - 1],
    ] {
        let status = app
            .list(with_token("alice", pb::OrderStatus::Unspecified, bad))
            .await
            .unwrap_err();
        assert_invalid(&status, "page_token");
    }

    let status = app
        .list(query("alice", pb::OrderStatus::Unspecified, -1))
        .await
        .unwrap_err();
    assert_invalid(&status, "page_size");
    let mut unknown_status = query("", pb::OrderStatus::Unspecified, 1);
    unknown_status.status = 42;
    assert_invalid(&app.list(unknown_status).await.unwrap_err(), "status");
    assert_invalid(
        &app.list(query(&"c".repeat(200), pb::OrderStatus::Unspecified, 1))
            .await
            .unwrap_err(),
        "customer_id",
    );

    // An oversized page is capped, not refused.
    let big = app
        .list(query("alice", pb::OrderStatus::Unspecified, 100_000))
        .await
        .unwrap();
    assert_eq!(big.orders.len(), 3);
    assert!(big.next_page_token.is_empty());
}
