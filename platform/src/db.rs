//! PostgreSQL plumbing shared by the services: create the service's database
//! when missing, build a pool once the server answers, and apply the embedded
//! migrations (the platform's outbox/inbox tables, then the service's own)
//! under an advisory lock so replicas starting together do not race.

use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// History table of the platform migrations, apart from the service's own.
const PLATFORM_HISTORY_TABLE: &str = "ordermesh_platform_schema_history";
/// Key of the advisory lock held while migrating.
const MIGRATION_LOCK_KEY: i64 = 0x6f72_6465_726d_6573; // "ordermes"

/// Parses a `postgres://` URL, naming `var` in the error.
pub fn parse_url(
    var: &str,
    url: &str,
) -> Result<tokio_postgres::Config, crate::config::ConfigError> {
    let config: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| crate::config::invalid(var, redact(url), e))?;
    if config.get_dbname().is_none() {
        return Err(crate::config::invalid(
            var,
            redact(url),
            "the URL names no database",
        ));
    }
    Ok(config)
}

/// The URL with any password replaced, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &creds[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Creates the database named in `config` if it does not exist, connecting
/// to the server's `postgres` database to do so.
pub async fn ensure_database(config: &tokio_postgres::Config) -> anyhow::Result<()> {
    let name = config
        .get_dbname()
        .context("the database URL names no database")?;
    let mut admin = config.clone();
    admin.dbname("postgres");
    let (client, connection) = admin
        .connect(NoTls)
        .await
        .context("connect to the postgres database")?;
    let driver = tokio::spawn(connection);
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .context("look up the database")?
        .is_some();
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        match client
            .batch_execute(&format!("CREATE DATABASE {quoted}"))
            .await
        {
            Ok(()) => tracing::info!(database = name, "created database"),
            // Another process created it between our check and our CREATE.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {}
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {}
            Err(e) => return Err(e).with_context(|| format!("create database {name}")),
        }
    }
    drop(client);
    driver.abort();
    Ok(())
}

/// Builds a pool of at most `max_size` connections.
pub fn pool(config: tokio_postgres::Config, max_size: usize) -> anyhow::Result<Pool> {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(max_size)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .context("build the connection pool")
}

/// Waits until the server accepts a connection (creating the database when
/// missing), retrying with backoff so start order does not matter.
pub async fn await_database(
    config: &tokio_postgres::Config,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut delay = Duration::from_millis(100);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let result = async {
            ensure_database(config).await?;
            let (client, connection) = config.connect(NoTls).await?;
            let driver = tokio::spawn(connection);
            client.simple_query("SELECT 1").await?;
            drop(client);
            driver.abort();
            anyhow::Ok(())
        }
        .await;
        match result {
            Ok(()) => return Ok(()),
            Err(e) if attempt >= 30 => return Err(e).context("PostgreSQL is not reachable"),
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    attempt,
                    "PostgreSQL not reachable yet; retrying"
                );
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => anyhow::bail!("shut down while waiting for PostgreSQL"),
                }
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Applies the platform migrations (outbox, inbox) and then the service's
/// own, holding an advisory lock for the duration.
pub async fn migrate(pool: &Pool, service: refinery::Runner) -> anyhow::Result<()> {
    let mut conn = pool.get().await.context("get a connection to migrate")?;
    conn.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .context("take the migration lock")?;
    let client: &mut tokio_postgres::Client = &mut conn;
    let result = async {
        let platform = embedded::migrations::runner()
            .set_migration_table_name(PLATFORM_HISTORY_TABLE)
            .run_async(client)
            .await
            .context("apply the platform migrations")?;
        let own = service
            .run_async(client)
            .await
            .context("apply the service migrations")?;
        let applied = platform.applied_migrations().len() + own.applied_migrations().len();
        tracing::info!(applied, "database migrated");
        anyhow::Ok(())
    }
    .await;
    conn.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .context("release the migration lock")?;
    result
}

/// Connects (waiting for the server), builds the pool and migrates: what a
/// service does at start.
pub async fn connect_and_migrate(
    config: &tokio_postgres::Config,
    max_size: usize,
    service: refinery::Runner,
    shutdown: &CancellationToken,
) -> anyhow::Result<Pool> {
    await_database(config, shutdown).await?;
    let pool = pool(config.clone(), max_size)?;
    migrate(&pool, service).await?;
    Ok(pool)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_the_password() {
        assert_eq!(
            redact("postgres://u:pw@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("host=h dbname=d"), "host=h dbname=d");
    }

    #[test]
    fn a_url_without_database_is_rejected_by_name() {
        let err = parse_url("ORDER_DATABASE_URL", "postgres://u@h:5432").unwrap_err();
        assert!(err.to_string().contains("ORDER_DATABASE_URL"));
    }
}
