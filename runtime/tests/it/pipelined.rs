//! `PipelinedTx` against the local server: BEGIN and COMMIT sent with the
//! statements beside them still make one transaction, and an unfinished
//! one never reaches the pool.

use deadpool_postgres::Pool;
use ordermesh_runtime::db::{self, PipelinedTx};
use ordermesh_testkit::TestDatabase;
use tokio_postgres::Statement;

async fn setup(pool_size: usize) -> (TestDatabase, Pool) {
    let db = TestDatabase::create().await;
    let pool = db::pool(db.url.parse().unwrap(), pool_size).unwrap();
    pool.get()
        .await
        .unwrap()
        .batch_execute("CREATE TABLE t (id INT PRIMARY KEY)")
        .await
        .unwrap();
    (db, pool)
}

/// The ids committed, as another connection sees them.
async fn committed(db: &TestDatabase) -> Vec<i32> {
    let rows = db
        .client()
        .await
        .query("SELECT id FROM t ORDER BY id", &[])
        .await;
    rows.unwrap().iter().map(|r| r.get(0)).collect()
}

async fn backend_pid(client: &deadpool_postgres::Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

/// A transaction on `pool` begun in the same flight as inserting 1, and the
/// prepared insert.
async fn begun_with_an_insert(pool: &Pool) -> (PipelinedTx, Statement) {
    let tx = PipelinedTx::new(pool.get().await.unwrap());
    let insert = tx
        .client()
        .prepare_cached("INSERT INTO t (id) VALUES ($1)")
        .await
        .unwrap();
    let first = tx.client().execute(&insert, &[&1i32]);
    let ((), n) = tokio::try_join!(biased; tx.begin(), first).unwrap();
    assert_eq!(n, 1);
    (tx, insert)
}

#[tokio::test]
async fn begin_and_commit_sent_with_statements_make_one_transaction() {
    let (db, pool) = setup(2).await;
    let (tx, insert) = begun_with_an_insert(&pool).await;
    assert!(
        committed(&db).await.is_empty(),
        "the insert behind BEGIN is not visible before the COMMIT"
    );
    let second = tx.client().execute(&insert, &[&2i32]);
    tokio::try_join!(biased; second, tx.commit()).unwrap();
    assert_eq!(committed(&db).await, [1, 2]);
}

#[tokio::test]
async fn a_failed_statement_before_the_commit_commits_nothing() {
    let (db, pool) = setup(1).await;
    let (tx, insert) = begun_with_an_insert(&pool).await;
    let again = tx.client().execute(&insert, &[&1i32]);
    let err = tokio::try_join!(biased; again, tx.commit()).unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
    );
    drop(tx);
    assert!(committed(&db).await.is_empty());
}

#[tokio::test]
async fn an_uncommitted_transaction_closes_its_connection_instead_of_pooling_it() {
    let (db, pool) = setup(1).await;
    let tx = PipelinedTx::new(pool.get().await.unwrap());
    let pid = backend_pid(tx.client()).await;
    let insert = tx.client().execute("INSERT INTO t (id) VALUES (1)", &[]);
    tokio::try_join!(biased; tx.begin(), insert).unwrap();
    drop(tx);

    let next = pool.get().await.unwrap();
    assert_ne!(backend_pid(&next).await, pid, "a new connection");
    let open: i64 = next
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(open, 0);
    drop(next);
    assert!(committed(&db).await.is_empty());
}
