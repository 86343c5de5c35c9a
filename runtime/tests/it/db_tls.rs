//! PostgreSQL over TLS under each `sslmode`, against the local server. It
//! must have `ssl = on` (Debian's default, with its self-signed "snakeoil"
//! certificate for `localhost`); these tests change nothing on the server.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ordermesh_runtime::db::{self, DbConfig, ENV_PG_CA_FILE, SslMode};
use ordermesh_testkit::TestDatabase;
use tokio_util::sync::CancellationToken;

/// `url` with `param` added to its query string.
fn with(url: &str, param: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{param}")
}

/// Whether this connection is encrypted, as the server sees it.
async fn is_ssl(client: &tokio_postgres::Client) -> bool {
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("read pg_stat_ssl")
        .get(0)
}

/// The server's certificate file, after checking that TLS is on.
async fn server_certificate(db: &TestDatabase) -> String {
    let config: DbConfig = with(&db.url, "sslmode=disable").parse().unwrap();
    let (client, connection) = config.connect().await.expect("connect");
    tokio::spawn(connection);
    let ssl: String = client.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    assert_eq!(
        ssl, "on",
        "these tests need the local PostgreSQL to have ssl = on (postgresql.conf); \
         the tests never change the server's configuration"
    );
    client
        .query_one("SHOW ssl_cert_file", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn each_sslmode_encrypts_as_libpq_would() {
    let db = TestDatabase::create().await;
    server_certificate(&db).await;
    for (mode, encrypted) in [
        ("sslmode=disable", false),
        // prefer, the default: TLS when the server offers it.
        ("application_name=om-test", true),
        ("sslmode=prefer", true),
        ("sslmode=require", true),
    ] {
        let config: DbConfig = with(&db.url, mode).parse().unwrap();
        let pool = db::pool(config, 1).unwrap();
        let client = pool.get().await.expect(mode);
        assert_eq!(is_ssl(&client).await, encrypted, "{mode}");
    }
}

#[tokio::test]
async fn a_service_starts_on_an_encrypted_pool_with_sslmode_require() {
    let db = TestDatabase::new();
    let env: HashMap<&str, String> = HashMap::new();
    let config = db::parse_url(&env, "DB", &with(&db.url, "sslmode=require")).unwrap();
    assert_eq!(config.sslmode(), SslMode::Require);
    // ensure_database, await_database and migrate all go through TLS.
    let pool = db::connect_and_migrate(
        &config,
        2,
        vec![ordermesh_messaging::migrations()],
        &CancellationToken::new(),
    )
    .await
    .expect("start over TLS");
    assert!(is_ssl(&pool.get().await.unwrap()).await);
}

#[tokio::test]
async fn verify_full_refuses_an_untrusted_certificate_at_once_and_says_why() {
    let db = TestDatabase::create().await;
    server_certificate(&db).await;
    // Only the system roots: the server's self-signed certificate is not
    // among them.
    let env: HashMap<&str, String> = HashMap::new();
    let config = db::parse_url(&env, "DB", &with(&db.url, "sslmode=verify-full")).unwrap();
    let started = Instant::now();
    let err = db::await_database(&config, &CancellationToken::new())
        .await
        .expect_err("an untrusted certificate must not connect");
    let message = format!("{err:#}");
    assert!(message.contains("certificate was rejected"), "{message}");
    assert!(message.contains("sslmode=verify-full"), "{message}");
    assert!(message.contains(ENV_PG_CA_FILE), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "retried a certificate error: {message}"
    );
}

#[tokio::test]
async fn verify_ca_and_verify_full_connect_once_pg_ca_file_trusts_the_server() {
    let db = TestDatabase::create().await;
    let cert = server_certificate(&db).await;
    let env = HashMap::from([(ENV_PG_CA_FILE, cert.clone())]);

    // verify-ca: the chain is checked, the host name is not.
    let config = db::parse_url(&env, "DB", &with(&db.url, "sslmode=verify-ca")).unwrap();
    let (client, connection) = config.connect().await.unwrap_or_else(|e| {
        panic!(
            "verify-ca with {ENV_PG_CA_FILE}={cert}: {e:?} (the tests expect \
             a self-signed server certificate, as Debian's snakeoil is)"
        )
    });
    tokio::spawn(connection);
    assert!(is_ssl(&client).await);

    // verify-full by IP: the certificate names localhost only.
    let config = db::parse_url(&env, "DB", &with(&db.url, "sslmode=verify-full")).unwrap();
    let err = db::await_database(&config, &CancellationToken::new())
        .await
        .expect_err("127.0.0.1 is not the certificate's name");
    assert!(
        format!("{err:#}").contains("certificate was rejected"),
        "{err:#}"
    );

    // verify-full by the name on the certificate (hostaddr keeps IPv4).
    let by_name = with(
        &db.url.replacen("127.0.0.1", "localhost", 1),
        "hostaddr=127.0.0.1&sslmode=verify-full",
    );
    let config = db::parse_url(&env, "DB", &by_name).unwrap();
    let (client, connection) = config
        .connect()
        .await
        .unwrap_or_else(|e| panic!("verify-full as localhost: {e:?}"));
    tokio::spawn(connection);
    assert!(is_ssl(&client).await);
}
