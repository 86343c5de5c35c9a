//! Throw-away PostgreSQL databases: a fresh `om_test_*` database per
//! [`TestDatabase`], dropped (even when a test panics) with it.

use crate::{run_blocking, short_id};

/// PostgreSQL server used by tests: `TEST_PG_URL` (any database on it), or
/// the local server.
pub fn server_url() -> String {
    std::env::var("TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database that exists for one test. The service under test creates and
/// migrates it on start, as in production; [`TestDatabase::create`] makes it
/// up front for tests that talk SQL first.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    /// A unique name; nothing is created yet.
    pub fn new() -> Self {
        let name = format!("om_test_{}", short_id());
        let url = rebuild_url(&server_url(), &name);
        Self { name, url }
    }

    /// A unique, created (empty) database.
    pub async fn create() -> Self {
        let db = Self::new();
        let config: ordermesh_runtime::db::DbConfig = db.url.parse().expect("test URL parses");
        ordermesh_runtime::db::ensure_database(&config)
            .await
            .expect("create the test database");
        db
    }

    /// A plain client on this database (TLS as the URL's `sslmode` says).
    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url)
            .await
            .expect("connect to the test database")
    }
}

impl Default for TestDatabase {
    fn default() -> Self {
        Self::new()
    }
}

/// A plain client on the database at `url` (TLS as its `sslmode` says).
pub async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let config: ordermesh_runtime::db::DbConfig = url.parse()?;
    let (client, connection) = config.connect().await?;
    tokio::spawn(connection);
    Ok(client)
}

/// `url` with its database path replaced by `name`.
fn rebuild_url(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_end = base[scheme_end..]
        .find('/')
        .map(|i| i + scheme_end)
        .unwrap_or(base.len());
    let mut out = format!("{}/{}", &base[..host_end], name);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        run_blocking(async move {
            let client = connect(&server_url()).await?;
            client
                .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .await?;
            anyhow::Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rebuild_url_swaps_the_database() {
        assert_eq!(
            super::rebuild_url("postgres://u@h:1/postgres", "x"),
            "postgres://u@h:1/x"
        );
        assert_eq!(
            super::rebuild_url("postgres://u@h:1/p?sslmode=disable", "x"),
            "postgres://u@h:1/x?sslmode=disable"
        );
        assert_eq!(
            super::rebuild_url("postgres://u@h:1", "x"),
            "postgres://u@h:1/x"
        );
    }
}
