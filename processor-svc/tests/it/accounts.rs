//! AccountService over gRPC: opening accounts, idempotent deposits and
//! validation errors that name the offending field.

use ordermesh_proto::payment::v1::{CreateAccountRequest, DepositRequest, GetAccountRequest};
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::spawn_app;

fn create(customer_id: &str, currency_code: &str) -> CreateAccountRequest {
    CreateAccountRequest {
        customer_id: customer_id.into(),
        currency_code: currency_code.into(),
    }
}

fn deposit(customer_id: &str, amount_minor: i64, deposit_id: &str) -> DepositRequest {
    DepositRequest {
        customer_id: customer_id.into(),
        amount_minor,
        deposit_id: deposit_id.into(),
    }
}

/// Asserts `status` is INVALID_ARGUMENT with a BadRequest violation on `field`.
fn assert_invalid_field(status: &tonic::Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let bad_request = status
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("no BadRequest detail in {status:?}"));
    let fields: Vec<&str> = bad_request
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert_eq!(fields, [field], "{status:?}");
    assert!(status.message().contains(field), "{status:?}");
}

#[tokio::test]
async fn a_created_account_starts_empty_in_usd_and_can_be_read() {
    let app = spawn_app().await;
    let mut client = app.client.clone();

    let created = client
        .create_account(create("alice", ""))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    assert_eq!(created.customer_id, "alice");
    assert_eq!(created.currency_code, "USD");
    assert_eq!(created.balance_minor, 0);
    assert!(created.create_time.is_some() && created.update_time.is_some());

    let read = client
        .get_account(GetAccountRequest {
            customer_id: "alice".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    assert_eq!(read, created);

    let eur = client
        .create_account(create("bob", "EUR"))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    assert_eq!(eur.currency_code, "EUR");
}

#[tokio::test]
async fn creating_an_account_twice_is_already_exists() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    client.create_account(create("alice", "USD")).await.unwrap();
    let err = client
        .create_account(create("alice", "USD"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
}

#[tokio::test]
async fn an_unknown_account_is_not_found() {
    let app = spawn_app().await;
    let err = app
        .client
        .clone()
        .get_account(GetAccountRequest {
            customer_id: "nobody".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}

#[tokio::test]
async fn invalid_requests_name_the_field() {
    let app = spawn_app().await;
    let mut client = app.client.clone();

    let err = client.create_account(create("", "USD")).await.unwrap_err();
    assert_invalid_field(&err, "customer_id");
    let err = client
        .create_account(create(&"x".repeat(129), "USD"))
        .await
        .unwrap_err();
    assert_invalid_field(&err, "customer_id");
    for bad in ["usd", "US", "EURO", "12$"] {
        let err = client
            .create_account(create("alice", bad))
            .await
            .unwrap_err();
        assert_invalid_field(&err, "currency_code");
    }
    let err = client
        .get_account(GetAccountRequest {
            customer_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_invalid_field(&err, "customer_id");

    client.create_account(create("alice", "USD")).await.unwrap();
    for amount in [0, -5] {
        let err = client
            .deposit(deposit("alice", amount, "d"))
            .await
            .unwrap_err();
        assert_invalid_field(&err, "amount_minor");
    }
    let err = client.deposit(deposit("", 5, "d")).await.unwrap_err();
    assert_invalid_field(&err, "customer_id");
    let err = client
        .deposit(deposit("alice", 5, &"d".repeat(129)))
        .await
        .unwrap_err();
    assert_invalid_field(&err, "deposit_id");
    assert_eq!(app.balance("alice").await, 0);
}

#[tokio::test]
async fn deposits_add_to_the_balance() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    client.create_account(create("alice", "USD")).await.unwrap();

    let after = client
        .deposit(deposit("alice", 1_000, "d-1"))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    assert_eq!(after.balance_minor, 1_000);
    client.deposit(deposit("alice", 250, "d-2")).await.unwrap();
    assert_eq!(app.balance("alice").await, 1_250);
}

#[tokio::test]
async fn a_deposit_id_is_applied_once() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    client.create_account(create("alice", "USD")).await.unwrap();

    let first = client
        .deposit(deposit("alice", 700, "d-1"))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    let again = client
        .deposit(deposit("alice", 700, "d-1"))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    assert_eq!(first.balance_minor, 700);
    assert_eq!(again.balance_minor, 700);
    assert_eq!(app.balance("alice").await, 700);
}

#[tokio::test]
async fn concurrent_deposits_with_one_id_apply_once() {
    let app = spawn_app().await;
    app.client
        .clone()
        .create_account(create("alice", "USD"))
        .await
        .unwrap();

    let calls = (0..8).map(|_| {
        let mut client = app.client.clone();
        tokio::spawn(async move { client.deposit(deposit("alice", 300, "same")).await })
    });
    for call in calls.collect::<Vec<_>>() {
        let account = call.await.unwrap().unwrap().into_inner().account.unwrap();
        assert_eq!(account.balance_minor, 300);
    }
    assert_eq!(app.balance("alice").await, 300);
}

#[tokio::test]
async fn reusing_a_deposit_id_for_other_content_is_already_exists() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    client.create_account(create("alice", "USD")).await.unwrap();
    client.create_account(create("bob", "USD")).await.unwrap();
    client.deposit(deposit("alice", 700, "d-1")).await.unwrap();

    let err = client
        .deposit(deposit("alice", 701, "d-1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    let err = client
        .deposit(deposit("bob", 700, "d-1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");

    assert_eq!(app.balance("alice").await, 700);
    assert_eq!(app.balance("bob").await, 0);
}

#[tokio::test]
async fn deposits_without_an_id_are_never_deduplicated() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    client.create_account(create("alice", "USD")).await.unwrap();
    client.deposit(deposit("alice", 100, "")).await.unwrap();
    client.deposit(deposit("alice", 100, "")).await.unwrap();
    assert_eq!(app.balance("alice").await, 200);
}

#[tokio::test]
async fn a_deposit_to_an_unknown_account_is_not_found() {
    let app = spawn_app().await;
    let err = app
        .client
        .clone()
        .deposit(deposit("nobody", 100, "d-1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}

#[tokio::test]
async fn a_deposit_that_would_overflow_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    client.create_account(create("alice", "USD")).await.unwrap();
    client
        .deposit(deposit("alice", i64::MAX - 1, "big"))
        .await
        .unwrap();

    let err = client
        .deposit(deposit("alice", 2, "over"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(app.balance("alice").await, i64::MAX - 1);

    // The refused deposit left no trace: its id can be used for a sum that fits.
    let ok = client
        .deposit(deposit("alice", 1, "over"))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    assert_eq!(ok.balance_minor, i64::MAX);
}
