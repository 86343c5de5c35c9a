//! Hostile input against the real AccountService over gRPC: oversized
//! messages, invalid UTF-8 in hand-encoded protobuf, and SQL-looking text
//! as customer and deposit ids. Each is refused with a client error or
//! stored and read back byte for byte, and the service keeps serving.

use ordermesh_proto::payment::v1::{
    CreateAccountRequest, DepositRequest, GetAccountRequest, ListTransactionsRequest,
};
use ordermesh_testkit::hostile::SQL_LOOKING;
use ordermesh_testkit::{assert_undecodable, raw_unary_refused};
use tonic::Code;

use crate::helpers::{TestApp, admin_token, spawn_app};

async fn raw_create_account(app: &TestApp, message: Vec<u8>) -> tonic::Status {
    let admin = admin_token();
    let path = "/ordermesh.payment.v1.AccountService/CreateAccount";
    raw_unary_refused(app.channel.clone(), &admin, path, message).await
}

/// An account can still be opened and read.
async fn assert_still_serving(app: &TestApp) {
    let customer_id = format!("after-{}", uuid::Uuid::new_v4().simple());
    app.fund(&customer_id, "USD", 5).await;
    assert_eq!(app.balance(&customer_id).await, 5);
}

#[tokio::test]
async fn oversized_and_undecodable_messages_are_refused() {
    let app = spawn_app().await;
    let status = app
        .client
        .clone()
        .create_account(CreateAccountRequest {
            customer_id: "c".repeat(5 * 1024 * 1024),
            currency_code: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_still_serving(&app).await;

    // customer_id (field 1) that is not UTF-8, a lying length, a
    // truncated varint, 100 000 nested groups.
    for message in [
        vec![0x0a, 0x02, 0xff, 0xfe],
        vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, b'a'],
        vec![0x0a, 0x80],
        vec![0x7b; 100_000],
    ] {
        assert_undecodable(&raw_create_account(&app, message).await);
        assert_still_serving(&app).await;
    }
}

/// SQL-looking customer and deposit ids are stored verbatim, read back
/// byte for byte, and select exactly their own account and ledger.
#[tokio::test]
async fn sql_looking_ids_are_stored_verbatim_and_never_interpreted() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let status = client
        .get_account(GetAccountRequest {
            customer_id: "%".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    for (i, text) in SQL_LOOKING.iter().enumerate() {
        let amount_minor = 100 + i as i64;
        let created = client
            .create_account(CreateAccountRequest {
                customer_id: (*text).to_owned(),
                currency_code: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .account
            .unwrap();
        assert_eq!(created.customer_id, *text);
        client
            .deposit(DepositRequest {
                customer_id: (*text).to_owned(),
                amount_minor,
                deposit_id: (*text).to_owned(),
            })
            .await
            .unwrap();
    }
    for (i, text) in SQL_LOOKING.iter().enumerate() {
        let account = app.account(text).await;
        assert_eq!(account.customer_id.as_bytes(), text.as_bytes());
        assert_eq!(account.balance_minor, 100 + i as i64);

        let listed = client
            .list_transactions(ListTransactionsRequest {
                customer_id: (*text).to_owned(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.transactions.len(), 1, "customer {text:?}");
        let deposit = &listed.transactions[0];
        assert_eq!(deposit.customer_id.as_bytes(), text.as_bytes());
        assert_eq!(deposit.deposit_id.as_bytes(), text.as_bytes());
        assert_eq!(deposit.amount_minor, 100 + i as i64);
    }
    assert_still_serving(&app).await;
}
