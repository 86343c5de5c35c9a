//! PostgreSQL plumbing shared by the services: parse a database URL with its
//! TLS settings ([`DbConfig`]), create the service's database when missing,
//! build a pool once the server answers, and apply the embedded migrations
//! (the messaging crate's outbox/inbox tables, then the service's own)
//! under an advisory lock ([`MIGRATION_LOCK_KEY`]) so replicas starting
//! together do not race. Dedicated connections (LISTEN, leases, locks) run
//! their driver as a task through [`Dedicated`].
//!
//! TLS follows the URL's `sslmode` as libpq does ([`SslMode`]): `disable`;
//! `prefer` (the default: TLS when the server offers it); `require` (TLS,
//! certificate not checked); `verify-ca` (the chain must lead to a trusted
//! root); `verify-full` (and name the host). Trusted roots are the
//! system's plus the PEM file of `PG_CA_FILE`. Every connection, pooled or
//! dedicated (LISTEN, leases), goes through [`DbConfig::connect`] or
//! [`DbConfig::connector`].

use std::fmt;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use rustls::pki_types::CertificateDer;
use tokio::task::JoinHandle;
use tokio_postgres::Socket;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::{ConfigError, Env, invalid};
use crate::tls::Verify;

/// Key of the advisory lock (one `bigint` key) held while migrating; the
/// only lock in this range, which the two-key classes of the services do
/// not use.
pub const MIGRATION_LOCK_KEY: i64 = 0x6f72_6465_726d_6573; // "ordermes"

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

    /// Opens a dedicated connection; the caller polls or spawns it (or
    /// wraps it in a [`Dedicated`]).
    pub async fn connect(
        &self,
    ) -> Result<(tokio_postgres::Client, PgConnection), tokio_postgres::Error> {
        self.config.connect(self.tls.clone()).await
    }
}

/// A dedicated connection whose driver runs as a task: the client derefs
/// to `tokio_postgres::Client`; dropping it stops the task (and closes the
/// connection, releasing its session locks).
pub struct Dedicated {
    client: tokio_postgres::Client,
    /// Why the connection ended, once it has.
    ended: tokio::sync::watch::Receiver<Option<String>>,
    driver: JoinHandle<()>,
}

impl Dedicated {
    /// Opens a connection and spawns its driver.
    pub async fn connect(config: &DbConfig) -> Result<Self, tokio_postgres::Error> {
        let (client, connection) = config.connect().await?;
        Ok(Self::new(client, connection))
    }

    /// `client`, with `driver` (its connection, or a future that polls it)
    /// spawned.
    pub fn new(
        client: tokio_postgres::Client,
        driver: impl Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
    ) -> Self {
        let (tx, ended) = tokio::sync::watch::channel(None);
        let driver = tokio::spawn(async move {
            let why = match driver.await {
                Ok(()) => "the connection closed".to_owned(),
                Err(e) => format!("the connection failed: {e}"),
            };
            tx.send_replace(Some(why));
        });
        Self {
            client,
            ended,
            driver,
        }
    }

    /// Resolves once the connection ended, with why.
    pub async fn closed(&self) -> anyhow::Error {
        let mut ended = self.ended.clone();
        match ended.wait_for(Option::is_some).await {
            Ok(why) => anyhow::anyhow!("{}", why.as_deref().unwrap_or_default()),
            Err(_) => anyhow::anyhow!("the connection task ended"),
        }
    }

    /// Checks that the server answers `SELECT 1` within `timeout`.
    pub async fn ping(&self, timeout: Duration) -> anyhow::Result<()> {
        tokio::time::timeout(timeout, self.client.simple_query("SELECT 1"))
            .await
            .context("no answer")?
            .context("SELECT 1")?;
        Ok(())
    }
}

impl Deref for Dedicated {
    type Target = tokio_postgres::Client;
    fn deref(&self) -> &Self::Target {
        &self.client
    }
}

impl Drop for Dedicated {
    fn drop(&mut self) {
        self.driver.abort();
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
    let client = Dedicated::connect(&admin)
        .await
        .context("connect to the postgres database")?;
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
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let result = async {
            ensure_database(config).await?;
            Dedicated::connect(config)
                .await?
                .simple_query("SELECT 1")
                .await?;
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
                    retry_in = ?backoff.step(),
                    "PostgreSQL not reachable yet; retrying"
                );
                if !backoff.wait(shutdown).await {
                    anyhow::bail!("shut down while waiting for PostgreSQL");
                }
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

/// Applies each set of migrations in turn (the messaging tables', then the
/// service's own; each keeps its own history table), holding an advisory
/// lock for the duration.
pub async fn migrate(pool: &Pool, sets: Vec<refinery::Runner>) -> anyhow::Result<()> {
    let mut conn = pool.get().await.context("get a connection to migrate")?;
    conn.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .context("take the migration lock")?;
    let client: &mut tokio_postgres::Client = &mut conn;
    let result = async {
        let mut applied = 0;
        for set in sets {
            let report = set
                .run_async(client)
                .await
                .context("apply the migrations")?;
            applied += report.applied_migrations().len();
        }
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
    migrations: Vec<refinery::Runner>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Pool> {
    await_database(config, shutdown).await?;
    let pool = pool(config.clone(), max_size)?;
    migrate(&pool, migrations).await?;
    Ok(pool)
}

mod pipelined;
#[cfg(test)]
mod tests;

pub use pipelined::PipelinedTx;
