//! Where the broker is and how to reach it: [`BrokerConfig`] from the
//! environment (URL, exchange, queue type, the CA of `amqps://`), the URL
//! with ordermesh's frame size ([`uri`]), and connections, once
//! ([`connect_once`]) or retried with jittered backoff ([`connect`]).
//!
//! The base of the crate's AMQP modules: it imports none of them.

use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;

use ordermesh_runtime::backoff::Backoff;
use ordermesh_runtime::config::{self, ConfigError, Env, Secret};

/// Default URL of the local broker.
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Default name of the events exchange.
pub const DEFAULT_EXCHANGE: &str = "ordermesh.events";
/// PEM CA certificate(s) trusted for `amqps://` besides the system roots.
pub const ENV_AMQP_CA_FILE: &str = "AMQP_CA_FILE";

/// Largest frame ordermesh asks for unless the URL sets `frame_max`. lapin
/// sizes each connection's two I/O buffers at 32 frames and zero-fills them,
/// so the broker's default of 128 KiB costs 8 MiB of resident memory per
/// connection; ordermesh's events are a few hundred bytes.
pub const FRAME_MAX: u32 = 16_384;

/// First pause of [`connect`] after a failed attempt; it doubles up to
/// [`CONNECT_MAX_DELAY`].
const CONNECT_FIRST_DELAY: Duration = Duration::from_millis(100);
const CONNECT_MAX_DELAY: Duration = Duration::from_secs(5);

/// Where the broker is and which exchange carries the events.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub url: Secret,
    /// The events exchange; tests use a unique name per test.
    pub exchange: String,
    /// Type of the queues consumers declare: quorum queues replicate across
    /// a RabbitMQ cluster; classic suits a single node.
    pub queue_type: QueueType,
    /// For `amqps://`: the PEM of `AMQP_CA_FILE`, trusted besides the system
    /// roots. Read once, at start, by [`BrokerConfig::from_env`].
    pub tls: lapin::tcp::OwnedTLSConfig,
}

/// The `x-queue-type` of consumer and dead-letter queues. A queue keeps the
/// type it was created with: switching needs new (or deleted) queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    #[default]
    Classic,
    Quorum,
}

impl std::str::FromStr for QueueType {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "classic" => Ok(Self::Classic),
            "quorum" => Ok(Self::Quorum),
            _ => Err("expected classic or quorum"),
        }
    }
}

impl QueueType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Classic => "classic",
            Self::Quorum => "quorum",
        }
    }
}

impl BrokerConfig {
    /// Reads `AMQP_URL`, `AMQP_EXCHANGE`, `AMQP_QUEUE_TYPE` and
    /// `AMQP_CA_FILE` (a bad CA file is an error naming it).
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        Ok(Self {
            url: Secret::new(config::string(env, "AMQP_URL", DEFAULT_URL)),
            exchange: config::string(env, "AMQP_EXCHANGE", DEFAULT_EXCHANGE),
            queue_type: config::parse(env, "AMQP_QUEUE_TYPE", QueueType::Classic)?,
            tls: tls_config(env)?,
        })
    }

    /// The dead-letter exchange paired with the events exchange.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.exchange)
    }
}

/// lapin's TLS settings for `amqps://`: the system roots (lapin's
/// `rustls-native-certs`) plus the CA of `AMQP_CA_FILE` when set.
pub fn tls_config(env: &impl Env) -> Result<lapin::tcp::OwnedTLSConfig, ConfigError> {
    ordermesh_runtime::tls::provider();
    let path = config::string(env, ENV_AMQP_CA_FILE, "");
    if path.is_empty() {
        return Ok(lapin::tcp::OwnedTLSConfig::default());
    }
    // Checked here, so a bad file fails at start with the variable's name
    // rather than at every connection attempt.
    ordermesh_runtime::tls::read_certs(ENV_AMQP_CA_FILE, &path)?;
    let pem = std::fs::read_to_string(&path)
        .map_err(|e| config::invalid(ENV_AMQP_CA_FILE, &path, format!("cannot read: {e}")))?;
    Ok(lapin::tcp::OwnedTLSConfig {
        identity: None,
        cert_chain: Some(pem),
    })
}

/// The broker URL, with [`FRAME_MAX`] unless it sets its own. `amqps://`
/// connects with TLS (port 5671 unless the URL names one).
pub fn uri(config: &BrokerConfig) -> anyhow::Result<lapin::uri::AMQPUri> {
    let mut uri: lapin::uri::AMQPUri = config
        .url
        .expose()
        .parse()
        .map_err(|e: String| anyhow::anyhow!("invalid AMQP_URL: {e}"))?;
    if uri.query.frame_max.is_none() {
        uri.query.frame_max = Some(FRAME_MAX);
    }
    Ok(uri)
}

/// Opens one connection (TLS for `amqps://`: the system roots plus
/// [`BrokerConfig::tls`]), without retrying.
pub async fn connect_once(config: &BrokerConfig, name: &str) -> anyhow::Result<Connection> {
    let uri = uri(config)?;
    Ok(open(uri, config.tls.clone(), name).await?)
}

/// Opens a connection as [`connect_once`] does, retrying with jittered
/// backoff ([`Backoff`]) until it succeeds or `shutdown` fires.
pub async fn connect(
    config: &BrokerConfig,
    name: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<Connection> {
    let mut backoff = Backoff::new(CONNECT_FIRST_DELAY, CONNECT_MAX_DELAY);
    let uri = uri(config)?;
    loop {
        match open(uri.clone(), config.tls.clone(), name).await {
            Ok(conn) => return Ok(conn),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff.step(), "RabbitMQ not reachable; retrying");
                if !backoff.wait(shutdown).await {
                    anyhow::bail!("shut down while connecting to RabbitMQ");
                }
            }
        }
    }
}

async fn open(
    uri: lapin::uri::AMQPUri,
    tls: lapin::tcp::OwnedTLSConfig,
    name: &str,
) -> lapin::Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect_uri_with_config(uri, props, tls, lapin::runtime::default_runtime()?).await
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn the_ca_file_is_optional_and_checked() {
        let env = |path: &str| HashMap::from([(ENV_AMQP_CA_FILE, path.to_owned())]);
        let none = tls_config(&env("")).unwrap();
        assert_eq!(none, lapin::tcp::OwnedTLSConfig::default());
        let err = tls_config(&env("/nonexistent/ca.pem")).unwrap_err();
        assert_eq!(err.name, ENV_AMQP_CA_FILE);
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        let garbage = std::env::temp_dir().join(format!("om-amqp-ca-{}.pem", uuid::Uuid::new_v4()));
        std::fs::write(&garbage, "junk").unwrap();
        let err = tls_config(&env(garbage.to_str().unwrap())).unwrap_err();
        std::fs::remove_file(&garbage).unwrap();
        assert_eq!(err.name, ENV_AMQP_CA_FILE, "{err}");
    }
}
