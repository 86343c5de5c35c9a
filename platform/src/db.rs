//! PostgreSQL plumbing shared by the services: parse a database URL with its
//! TLS settings ([`DbConfig`]), create the service's database when missing,
//! build a pool once the server answers, and apply the embedded migrations
//! (the platform's outbox/inbox tables, then the service's own) under an
//! advisory lock so replicas starting together do not race.
//!
//! TLS follows the URL's `sslmode` as libpq does ([`SslMode`]): `disable`;
//! `prefer` (the default: TLS when the server offers it); `require` (TLS,
//! certificate not checked); `verify-ca` (the chain must lead to a trusted
//! root); `verify-full` (and name the host). Trusted roots are the
//! system's plus the PEM file of `PG_CA_FILE`. Every connection, pooled or
//! dedicated (LISTEN, leases), goes through [`DbConfig::connect`] or
//! [`DbConfig::connector`].

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use rustls::pki_types::CertificateDer;
use tokio_postgres::Socket;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, Env, invalid};
use crate::tls::Verify;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// History table of the platform migrations, apart from the service's own.
const PLATFORM_HISTORY_TABLE: &str = "ordermesh_platform_schema_history";
/// Key of the advisory lock held while migrating.
const MIGRATION_LOCK_KEY: i64 = 0x6f72_6465_726d_6573; // "ordermes"

/// PEM CA certificate(s) trusted for PostgreSQL besides the system roots.
pub const ENV_PG_CA_FILE: &str = "PG_CA_FILE";

/// The TLS stream of a connection made through [`DbConfig`].
pub type PgStream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;
/// A connection made by [`DbConfig::connect`], to be polled or spawned.
pub type PgConnection = tokio_postgres::Connection<Socket, PgStream>;

/// libpq's `sslmode`. tokio-postgres parses only the first three; the URL
/// parser here also takes `verify-ca` and `verify-full`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// How much of the server's certificate is checked.
    pub fn verify(self) -> Verify {
        match self {
            Self::Disable | Self::Prefer | Self::Require => Verify::Nothing,
            Self::VerifyCa => Verify::Chain,
            Self::VerifyFull => Verify::Full,
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A database to connect to: tokio-postgres's settings (it derefs to
/// them) and the TLS connector its `sslmode` calls for. Cheap to clone.
#[derive(Clone)]
pub struct DbConfig {
    config: tokio_postgres::Config,
    sslmode: SslMode,
    tls: MakeRustlsConnect,
}

impl DbConfig {
    /// Parses `url`, trusting `ca` besides the system roots; `var` names
    /// the URL in errors.
    pub fn new(var: &str, url: &str, ca: &[CertificateDer<'static>]) -> Result<Self, ConfigError> {
        let (rewritten, sslmode) = take_sslmode(url).map_err(|e| invalid(var, redact(url), e))?;
        let config: tokio_postgres::Config = rewritten
            .parse()
            .map_err(|e: tokio_postgres::Error| invalid(var, redact(url), e))?;
        if config.get_dbname().is_none() {
            return Err(invalid(var, redact(url), "the URL names no database"));
        }
        let sslmode = sslmode.unwrap_or_else(|| from_driver(config.get_ssl_mode()));
        let roots = match sslmode.verify() {
            Verify::Nothing => rustls::RootCertStore::empty(),
            Verify::Chain | Verify::Full => {
                let roots = crate::tls::roots(ca);
                if roots.is_empty() {
                    return Err(invalid(
                        ENV_PG_CA_FILE,
                        "",
                        format!("sslmode={sslmode} needs a trusted CA and the system has none"),
                    ));
                }
                roots
            }
        };
        let client = crate::tls::client_config(sslmode.verify(), roots)
            .map_err(|e| invalid(var, redact(url), e))?;
        Ok(Self {
            config,
            sslmode,
            tls: MakeRustlsConnect::new(client),
        })
    }

    pub fn sslmode(&self) -> SslMode {
        self.sslmode
    }

    /// The TLS connector for this database (for `tokio_postgres` and
    /// deadpool).
    pub fn connector(&self) -> MakeRustlsConnect {
        self.tls.clone()
    }

    /// Opens a dedicated connection; the caller polls or spawns it.
    pub async fn connect(
        &self,
    ) -> Result<(tokio_postgres::Client, PgConnection), tokio_postgres::Error> {
        self.config.connect(self.tls.clone()).await
    }
}

fn from_driver(mode: tokio_postgres::config::SslMode) -> SslMode {
    match mode {
        tokio_postgres::config::SslMode::Disable => SslMode::Disable,
        tokio_postgres::config::SslMode::Prefer => SslMode::Prefer,
        _ => SslMode::Require,
    }
}

/// Finds the URL's `sslmode` (the last one wins, as in libpq) and turns
/// `verify-ca` and `verify-full`, which tokio-postgres rejects, into
/// `require` (TLS on). Both the URL form (`?a=b&sslmode=...`) and the
/// `key=value` form count. An unknown mode is an error: tokio-postgres's
/// own says only "invalid connection string" for the URL form.
fn take_sslmode(url: &str) -> Result<(String, Option<SslMode>), String> {
    let is_uri = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let query_start = match (is_uri, url.find('?')) {
        (true, Some(q)) => q,
        (true, None) => return Ok((url.to_owned(), None)),
        (false, _) => 0,
    };
    let ends_value = |c: char| {
        if is_uri {
            c == '&' || c == '#'
        } else {
            c.is_whitespace()
        }
    };
    let mut out = String::with_capacity(url.len());
    let mut copied = 0;
    let mut mode = None;
    for (at, needle) in url[query_start..].match_indices("sslmode=") {
        let at = query_start + at;
        let before = url[..at].chars().next_back();
        let whole = if is_uri {
            matches!(before, Some('?' | '&'))
        } else {
            before.is_none_or(char::is_whitespace)
        };
        if !whole {
            continue;
        }
        let value_start = at + needle.len();
        let value_end = url[value_start..]
            .find(ends_value)
            .map_or(url.len(), |i| value_start + i);
        let value = &url[value_start..value_end];
        mode = Some(match value.trim_matches('\'') {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => {
                return Err(format!(
                    "sslmode={value}: expected disable, prefer, require, verify-ca or verify-full"
                ));
            }
        });
        if matches!(mode, Some(SslMode::VerifyCa | SslMode::VerifyFull)) {
            out.push_str(&url[copied..value_start]);
            out.push_str("require");
            copied = value_end;
        }
    }
    out.push_str(&url[copied..]);
    Ok((out, mode))
}

/// The URL alone, trusting the system roots only (tests and tools; the
/// services use [`parse_url`], which reads `PG_CA_FILE`).
impl std::str::FromStr for DbConfig {
    type Err = ConfigError;
    fn from_str(url: &str) -> Result<Self, Self::Err> {
        Self::new("database URL", url, &[])
    }
}

/// tokio-postgres's settings as they are: its `sslmode` (disable, prefer
/// or require) never checks the certificate.
impl From<tokio_postgres::Config> for DbConfig {
    fn from(config: tokio_postgres::Config) -> Self {
        let sslmode = from_driver(config.get_ssl_mode());
        let client = crate::tls::client_config(Verify::Nothing, rustls::RootCertStore::empty())
            .expect("the ring provider supports the default protocol versions");
        Self {
            config,
            sslmode,
            tls: MakeRustlsConnect::new(client),
        }
    }
}

impl Deref for DbConfig {
    type Target = tokio_postgres::Config;
    fn deref(&self) -> &Self::Target {
        &self.config
    }
}

impl DerefMut for DbConfig {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.config
    }
}

impl fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // tokio-postgres's Debug redacts the password.
        f.debug_struct("DbConfig")
            .field("config", &self.config)
            .field("sslmode", &self.sslmode)
            .finish_non_exhaustive()
    }
}

/// Parses a `postgres://` URL (or `key=value` string), naming `var` in the
/// error, with the CA of `PG_CA_FILE` trusted when set.
pub fn parse_url(env: &impl Env, var: &str, url: &str) -> Result<DbConfig, ConfigError> {
    let ca_file = crate::config::string(env, ENV_PG_CA_FILE, "");
    let ca = if ca_file.is_empty() {
        Vec::new()
    } else {
        crate::tls::read_certs(ENV_PG_CA_FILE, &ca_file)?
    };
    DbConfig::new(var, url, &ca)
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
pub async fn ensure_database(config: &DbConfig) -> anyhow::Result<()> {
    let name = config
        .get_dbname()
        .context("the database URL names no database")?;
    let mut admin = config.clone();
    admin.dbname("postgres");
    let (client, connection) = admin
        .connect()
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
pub fn pool(config: DbConfig, max_size: usize) -> anyhow::Result<Pool> {
    let tls = config.connector();
    let manager = Manager::from_config(
        config.config,
        tls,
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
pub async fn await_database(config: &DbConfig, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let mut delay = Duration::from_millis(100);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let result = async {
            ensure_database(config).await?;
            let (client, connection) = config.connect().await?;
            let driver = tokio::spawn(connection);
            client.simple_query("SELECT 1").await?;
            drop(client);
            driver.abort();
            anyhow::Ok(())
        }
        .await;
        match result {
            Ok(()) => return Ok(()),
            // The server answered but its certificate is not the one
            // sslmode asks for: retrying will not change that.
            Err(e) if certificate_rejected(&e) => {
                return Err(e).with_context(|| {
                    format!(
                        "PostgreSQL's TLS certificate was rejected (sslmode={}): \
                         trust its CA with {ENV_PG_CA_FILE}, connect by a name the \
                         certificate holds, or relax sslmode",
                        config.sslmode()
                    )
                });
            }
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

/// Whether `error` is a TLS handshake that failed on the server's
/// certificate (untrusted, expired, wrong name).
fn certificate_rejected(error: &anyhow::Error) -> bool {
    error.chain().any(|e| {
        matches!(
            crate::tls::rustls_error(e),
            Some(rustls::Error::InvalidCertificate(_))
        )
    })
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
    config: &DbConfig,
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
    use std::collections::HashMap;

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

    fn env(pairs: &[(&'static str, &str)]) -> HashMap<&'static str, String> {
        pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
    }

    #[test]
    fn a_url_without_database_is_rejected_by_name() {
        let err = parse_url(&env(&[]), "ORDER_DATABASE_URL", "postgres://u@h:5432").unwrap_err();
        assert!(err.to_string().contains("ORDER_DATABASE_URL"));
    }

    #[test]
    fn sslmode_defaults_to_prefer_and_takes_every_libpq_mode() {
        let parse = |url: &str| parse_url(&env(&[]), "DB", url).unwrap();
        assert_eq!(parse("postgres://u@h/db").sslmode(), SslMode::Prefer);
        for mode in ["disable", "prefer", "require", "verify-ca", "verify-full"] {
            let config = parse(&format!("postgres://u@h/db?sslmode={mode}"));
            assert_eq!(config.sslmode().as_str(), mode);
            let config = parse(&format!("host=h dbname=db sslmode={mode} user=u"));
            assert_eq!(config.sslmode().as_str(), mode);
            assert_eq!(config.get_user(), Some("u"));
        }
        // verify-* reach tokio-postgres as require: TLS or no connection.
        let config = parse("postgres://u@h/db?application_name=a&sslmode=verify-full");
        assert_eq!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        assert_eq!(config.get_application_name(), Some("a"));
    }

    #[test]
    fn an_unknown_sslmode_names_the_variable_and_the_choices() {
        let err = parse_url(&env(&[]), "DB", "postgres://u:pw@h/db?sslmode=verify").unwrap_err();
        assert_eq!(err.name, "DB");
        assert!(err.to_string().contains("verify-full"), "{err}");
        assert!(!err.to_string().contains("pw"), "{err}");
    }

    #[test]
    fn only_a_whole_sslmode_parameter_counts() {
        let take = |url: &str| take_sslmode(url).unwrap();
        assert_eq!(
            take("postgres://u@h/db?xsslmode=verify-full"),
            ("postgres://u@h/db?xsslmode=verify-full".to_owned(), None)
        );
        assert_eq!(
            take("postgres://u:sslmode=verify-ca@h/db"),
            ("postgres://u:sslmode=verify-ca@h/db".to_owned(), None)
        );
        assert_eq!(
            take("dbname=d sslmode=verify-ca"),
            (
                "dbname=d sslmode=require".to_owned(),
                Some(SslMode::VerifyCa)
            )
        );
        assert_eq!(
            take("postgres://h/d?sslmode=verify-ca&sslmode=disable#x"),
            (
                "postgres://h/d?sslmode=require&sslmode=disable#x".to_owned(),
                Some(SslMode::Disable)
            )
        );
        assert!(take_sslmode("postgres://u@h/db?sslmode=verify-cax").is_err());
    }

    #[test]
    fn a_bad_pg_ca_file_names_the_variable_and_the_path() {
        let err = parse_url(
            &env(&[(ENV_PG_CA_FILE, "/nonexistent/ca.pem")]),
            "DB",
            "postgres://u@h/db?sslmode=verify-full",
        )
        .unwrap_err();
        assert_eq!(err.name, ENV_PG_CA_FILE);
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}
