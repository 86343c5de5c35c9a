//! The one error classification against the local PostgreSQL: the SQLSTATE
//! of a real refusal, found wherever it sits in an error's chain.

use ordermesh_messaging::amqp::HandleError;
use ordermesh_messaging::classify::{Disposition, classify};

/// A service's error type, wrapping the database error as its source.
#[derive(Debug, thiserror::Error)]
enum StoreError {
    #[error("database: {0}")]
    Database(#[from] tokio_postgres::Error),
}

async fn refusal(client: &tokio_postgres::Client, sql: &str) -> anyhow::Error {
    let e = client.batch_execute(sql).await.unwrap_err();
    anyhow::Error::from(StoreError::from(e)).context("apply the event")
}

#[tokio::test]
async fn refused_data_is_poison_and_a_duplicate_key_is_not() {
    let url = ordermesh_testkit::server_url();
    let client = ordermesh_testkit::database::connect(&url).await.unwrap();
    client
        .batch_execute(
            "CREATE TEMP TABLE t (id int PRIMARY KEY CHECK (id > 0)); INSERT INTO t VALUES (1)",
        )
        .await
        .unwrap();

    let check = refusal(&client, "INSERT INTO t VALUES (-1)").await;
    assert_eq!(classify(&check), Disposition::Poison("check violation"));
    let text = refusal(&client, "SELECT 'x'::int").await;
    assert_eq!(classify(&text), Disposition::Poison("invalid value"));
    let duplicate = refusal(&client, "INSERT INTO t VALUES (1)").await;
    assert_eq!(classify(&duplicate), Disposition::Transient);
    let syntax = refusal(&client, "SELEC 1").await;
    assert_eq!(classify(&syntax), Disposition::Transient);

    match HandleError::classified(check) {
        HandleError::Poison(reason) => assert!(
            reason.starts_with("the database rejects the event (check violation): apply the event"),
            "{reason}"
        ),
        other => panic!("expected poison, got {other:?}"),
    }
    assert!(matches!(
        HandleError::classified(duplicate),
        HandleError::Transient(_)
    ));
}
