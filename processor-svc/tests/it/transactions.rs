//! ListTransactions over gRPC: every movement of a balance, newest first,
//! in pages whose tokens belong to one account; and the migration that
//! backfills the ledger of an existing database.

use ordermesh_proto::payment::v1::{
    DepositRequest, ListTransactionsRequest, ListTransactionsResponse, Transaction, TransactionKind,
};
use ordermesh_testkit::TestDatabase;
use processor_svc::ledger::{self, TransactionQuery};
use processor_svc::store::{self, Store};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::{TestApp, cancel, message_id, order, spawn_app};

fn list(customer_id: &str, page_size: i32, page_token: &str) -> ListTransactionsRequest {
    ListTransactionsRequest {
        customer_id: customer_id.into(),
        page_size,
        page_token: page_token.into(),
    }
}

async fn list_page(
    app: &TestApp,
    request: ListTransactionsRequest,
) -> Result<ListTransactionsResponse, tonic::Status> {
    app.client
        .clone()
        .list_transactions(request)
        .await
        .map(tonic::Response::into_inner)
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
}

async fn deposit(app: &TestApp, customer_id: &str, amount_minor: i64, deposit_id: &str) {
    app.client
        .clone()
        .deposit(DepositRequest {
            customer_id: customer_id.into(),
            amount_minor,
            deposit_id: deposit_id.into(),
        })
        .await
        .expect("deposit");
}

/// Alice: deposits of 10 000 and 5 000, orders of 3 000 and 2 000 paid,
/// the first then cancelled and refunded. Balance 13 000.
async fn alice_with_history(app: &TestApp) {
    app.fund("alice", "USD", 0).await;
    deposit(app, "alice", 10_000, "d-1").await;
    deposit(app, "alice", 5_000, "d-2").await;
    for (order_id, price) in [("order-1", 3_000), ("order-2", 2_000)] {
        app.publish_order(
            &message_id(),
            &order(order_id, "alice", "USD", &[("widget", 1, price)]),
        )
        .await;
        assert_eq!(app.wait_for_payment(order_id).await.status, "SUCCEEDED");
    }
    let id = message_id();
    app.publish_cancel(&id, &cancel("order-1", "alice")).await;
    app.wait_for_inbox(&id).await;
    assert_eq!(app.balance("alice").await, 13_000);
}

/// (kind, amount, balance after, order id, deposit id) of each transaction.
fn summary(transactions: &[Transaction]) -> Vec<(TransactionKind, i64, i64, &str, &str)> {
    transactions
        .iter()
        .map(|t| {
            (
                t.kind(),
                t.amount_minor,
                t.balance_after_minor,
                t.order_id.as_str(),
                t.deposit_id.as_str(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_ledger_lists_every_movement_newest_first() {
    let app = spawn_app().await;
    alice_with_history(&app).await;

    let page = list_page(&app, list("alice", 0, "")).await.unwrap();
    assert_eq!(page.next_page_token, "");
    use TransactionKind::{Debit, Deposit, Refund};
    assert_eq!(
        summary(&page.transactions),
        [
            (Refund, 3_000, 13_000, "order-1", ""),
            (Debit, -2_000, 10_000, "order-2", ""),
            (Debit, -3_000, 12_000, "order-1", ""),
            (Deposit, 5_000, 15_000, "", "d-2"),
            (Deposit, 10_000, 10_000, "", "d-1"),
        ]
    );
    let total: i64 = page.transactions.iter().map(|t| t.amount_minor).sum();
    assert_eq!(total, app.balance("alice").await);

    let ids: Vec<i64> = page
        .transactions
        .iter()
        .map(|t| t.transaction_id.parse().expect("a decimal id"))
        .collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");
    let times: Vec<_> = page
        .transactions
        .iter()
        .map(|t| t.create_time.expect("a create_time"))
        .map(|t| (t.seconds, t.nanos))
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
    assert!(page.transactions.iter().all(|t| t.customer_id == "alice"));
}

#[tokio::test]
async fn paging_walks_every_transaction_once() {
    let app = spawn_app().await;
    alice_with_history(&app).await;
    let all = list_page(&app, list("alice", 1000, "")).await.unwrap();
    assert_eq!(all.transactions.len(), 5);

    for page_size in [1, 2] {
        let (mut seen, mut token, mut pages) = (Vec::new(), String::new(), 0);
        loop {
            let page = list_page(&app, list("alice", page_size, &token))
                .await
                .unwrap();
            assert!(page.transactions.len() <= page_size as usize);
            seen.extend(page.transactions);
            pages += 1;
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(seen, all.transactions, "page size {page_size}");
        assert_eq!(pages, 5usize.div_ceil(page_size as usize));
    }
}

#[tokio::test]
async fn page_tokens_belong_to_their_account() {
    let app = spawn_app().await;
    alice_with_history(&app).await;
    app.fund("bob", "USD", 500).await;

    let token = list_page(&app, list("alice", 1, ""))
        .await
        .unwrap()
        .next_page_token;
    assert!(!token.is_empty());

    let err = list_page(&app, list("bob", 1, &token)).await.unwrap_err();
    assert_invalid_field(&err, "page_token");
    let mut tampered = token.clone().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let err = list_page(&app, list("alice", 1, &tampered))
        .await
        .unwrap_err();
    assert_invalid_field(&err, "page_token");
    let err = list_page(&app, list("alice", 1, "not a token"))
        .await
        .unwrap_err();
    assert_invalid_field(&err, "page_token");

    // Bob's own listing works, and so does Alice's token for Alice.
    let bob = list_page(&app, list("bob", 0, "")).await.unwrap();
    assert_eq!(summary(&bob.transactions).len(), 1);
    assert_eq!(bob.transactions[0].balance_after_minor, 500);
    assert!(list_page(&app, list("alice", 1, &token)).await.is_ok());
}

#[tokio::test]
async fn an_unknown_account_is_not_found_and_a_new_one_is_empty() {
    let app = spawn_app().await;
    let err = list_page(&app, list("nobody", 0, "")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    app.fund("alice", "USD", 0).await;
    let page = list_page(&app, list("alice", 0, "")).await.unwrap();
    assert!(page.transactions.is_empty());
    assert_eq!(page.next_page_token, "");
}

#[tokio::test]
async fn invalid_list_requests_name_the_field() {
    let app = spawn_app().await;
    app.fund("alice", "USD", 100).await;

    for page_size in [-1, i32::MIN] {
        let err = list_page(&app, list("alice", page_size, ""))
            .await
            .unwrap_err();
        assert_invalid_field(&err, "page_size");
    }
    let err = list_page(&app, list("", 0, "")).await.unwrap_err();
    assert_invalid_field(&err, "customer_id");
    let err = list_page(&app, list(&"x".repeat(129), 0, ""))
        .await
        .unwrap_err();
    assert_invalid_field(&err, "customer_id");
    // Above the maximum is served as the maximum.
    let page = list_page(&app, list("alice", 5_000, "")).await.unwrap();
    assert_eq!(page.transactions.len(), 1);
}

/// A database at version 1 of the migrations, with `history` run on it.
async fn database_at_v1(history: &str) -> TestDatabase {
    let db = TestDatabase::create().await;
    let mut client = db.client().await;
    let own = store::migrations().pop().expect("messaging's, then ours");
    own.set_target(refinery::Target::Version(1))
        .run_async(&mut client)
        .await
        .expect("migrate to version 1");
    client.batch_execute(history).await.expect("write history");
    db
}

async fn migrate(db: &TestDatabase) -> anyhow::Result<Store> {
    let config = db.url.parse().expect("test URL parses");
    let pool = ordermesh_runtime::db::connect_and_migrate(
        &config,
        2,
        store::migrations(),
        &CancellationToken::new(),
    )
    .await?;
    Ok(Store::new(pool))
}

#[tokio::test]
async fn existing_history_is_backfilled_into_the_ledger() {
    let db = database_at_v1(
        r#"INSERT INTO accounts (customer_id, currency_code, balance_minor)
           VALUES ('alice', 'USD', 700), ('bob', 'USD', 50);
           INSERT INTO deposits (deposit_id, customer_id, amount_minor, create_time)
           VALUES ('d-1', 'alice', 1000, '2024-01-01'), ('d-2', 'alice', 500, '2024-01-03'),
                  ('d-3', 'bob', 50, '2024-01-02');
           -- At the deposit's time: deposits come first.
           INSERT INTO payments
               (order_id, customer_id, amount_minor, currency_code, status, reason, message_id, create_time)
           VALUES ('o-1', 'alice', 800, 'USD', 'SUCCEEDED', NULL, 'm-1', '2024-01-01'),
                  ('o-2', 'alice', 9000, 'USD', 'FAILED', 'insufficient funds', 'm-2', '2024-01-02');"#,
    )
    .await;
    let store = migrate(&db).await.expect("migrate to the latest version");

    let page = store
        .list_transactions(&TransactionQuery::parse("alice".into(), 0, "").unwrap())
        .await
        .unwrap();
    let rows: Vec<_> = page
        .transactions
        .iter()
        .map(|t| (t.kind, t.amount_minor, t.balance_after_minor))
        .collect();
    use ledger::TransactionKind::{Debit, Deposit};
    assert_eq!(
        rows,
        [
            (Deposit, 500, 700),
            (Debit, -800, 200),
            (Deposit, 1000, 1000)
        ]
    );
    assert_eq!(page.transactions[1].order_id.as_deref(), Some("o-1"));
    assert_eq!(page.transactions[2].deposit_id.as_deref(), Some("d-1"));
    let bob = store
        .list_transactions(&TransactionQuery::parse("bob".into(), 0, "").unwrap())
        .await
        .unwrap();
    assert_eq!(bob.transactions.len(), 1);
    assert_eq!(bob.transactions[0].balance_after_minor, 50);
}

#[tokio::test]
async fn a_balance_the_history_does_not_explain_stops_the_migration() {
    let db = database_at_v1(
        r#"INSERT INTO accounts (customer_id, currency_code, balance_minor)
           VALUES ('alice', 'USD', 1);"#,
    )
    .await;
    let err = migrate(&db)
        .await
        .expect_err("the backfill does not add up");
    let text = format!("{err:#}");
    assert!(text.contains("alice"), "{text}");

    // Nothing of version 2 was applied.
    let client = db.client().await;
    let ledger = client
        .query_opt("SELECT to_regclass('transactions')::text", &[])
        .await
        .unwrap()
        .and_then(|row| row.get::<_, Option<String>>(0));
    assert_eq!(ledger, None);
}
