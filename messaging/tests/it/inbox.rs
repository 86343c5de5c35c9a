//! Inbox expiry against the local PostgreSQL: entries older than the
//! retention window go, in batches, newer ones stay.

use std::time::Duration;

use ordermesh_messaging::inbox;
use ordermesh_runtime::db;

/// A migrated scratch database, dropped at the end of the test.
async fn scratch() -> (String, deadpool_postgres::Pool) {
    let server = std::env::var("TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!(
        "om_test_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let mut config: db::DbConfig = server.parse().unwrap();
    config.dbname(&name);
    db::ensure_database(&config).await.unwrap();
    let pool = db::pool(config, 2).unwrap();
    db::migrate(&pool, vec![ordermesh_messaging::migrations()])
        .await
        .unwrap();
    (name, pool)
}

async fn drop_database(name: &str) {
    let server = std::env::var("TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let config: db::DbConfig = server.parse().unwrap();
    let (client, connection) = config.connect().await.unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await
        .unwrap();
}

#[tokio::test]
async fn expiry_deletes_only_entries_older_than_the_window_in_batches() {
    let (name, pool) = scratch().await;
    let client = pool.get().await.unwrap();
    client
        .batch_execute(
            "INSERT INTO inbox (consumer, message_id, received_time)
             SELECT 'c', 'old-' || g, now() - interval '8 days' FROM generate_series(1, 250) g;
             INSERT INTO inbox (consumer, message_id, received_time)
             SELECT 'c', 'new-' || g, now() - interval '6 days' FROM generate_series(1, 50) g;",
        )
        .await
        .unwrap();
    let week = Duration::from_secs(168 * 3600);
    assert_eq!(inbox::expire(&**client, week, 100).await.unwrap(), 100);
    assert_eq!(inbox::expire(&**client, week, 100).await.unwrap(), 100);
    assert_eq!(inbox::expire(&**client, week, 100).await.unwrap(), 50);
    assert_eq!(inbox::expire(&**client, week, 100).await.unwrap(), 0);
    let left: i64 = client
        .query_one(
            "SELECT count(*) FROM inbox WHERE message_id LIKE 'new-%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let total: i64 = client
        .query_one("SELECT count(*) FROM inbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!((left, total), (50, 50));
    drop(client);
    pool.close();
    drop_database(&name).await;
}

#[test]
fn retention_is_read_from_the_environment() {
    use std::collections::HashMap;
    let none: HashMap<&str, String> = HashMap::new();
    assert_eq!(
        inbox::retention_from_env(&none).unwrap(),
        Duration::from_secs(7 * 24 * 3600)
    );
    let two = HashMap::from([(inbox::ENV_RETENTION_HOURS, "2".to_owned())]);
    assert_eq!(
        inbox::retention_from_env(&two).unwrap(),
        Duration::from_secs(7200)
    );
    let zero = HashMap::from([(inbox::ENV_RETENTION_HOURS, "0".to_owned())]);
    let err = inbox::retention_from_env(&zero).unwrap_err();
    assert!(err.to_string().contains(inbox::ENV_RETENTION_HOURS));
}
