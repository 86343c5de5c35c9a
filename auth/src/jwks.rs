//! Verification keys behind a URL (`AUTH_JWKS_URL`), as identity providers
//! (Keycloak, Auth0, any OIDC provider) publish and rotate them.
//!
//! [`Remote`] holds the last good key set. It is fetched at start
//! ([`Remote::fetch_now`]), again once the response's `Cache-Control:
//! max-age` has run out (bounded by [`JwksRefresh`]; in the background, the
//! call that notices goes on with the keys at hand), and when a token names
//! a `kid` the set does not hold: at most once per `min` interval, so forged
//! kids cannot make us hammer the provider. A failed fetch keeps the keys
//! we have. One fetch runs at a time; callers that waited for it use its
//! result.
//!
//! The client is hyper's HTTP/1.1 connection API over a tokio socket, with
//! rustls for `https://` (system roots); `http://` is for loopback only.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::config::ENV_JWKS_URL;
use crate::keys::{VerifyingKey, jwks_from_bytes};
use ordermesh_runtime::config::{self, ConfigError};

/// Longest one fetch may take, connect to last byte.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest JWKS document accepted.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// How long a set is kept when the response says nothing about caching.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);

/// Bounds on how often the key set is fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JwksRefresh {
    /// Shortest time between two fetches (`AUTH_JWKS_REFRESH_MIN_S`): the
    /// floor of `max-age` and the interval of refetches on unknown kids.
    pub min: Duration,
    /// Longest a set is used before it is fetched again
    /// (`AUTH_JWKS_REFRESH_MAX_S`): the ceiling of `max-age`.
    pub max: Duration,
}

pub const DEFAULT_REFRESH_MIN: Duration = Duration::from_secs(30);
pub const DEFAULT_REFRESH_MAX: Duration = Duration::from_secs(3600);

impl Default for JwksRefresh {
    fn default() -> Self {
        Self {
            min: DEFAULT_REFRESH_MIN,
            max: DEFAULT_REFRESH_MAX,
        }
    }
}

impl JwksRefresh {
    /// How long a set fetched with this `Cache-Control` is used.
    pub fn ttl(&self, cache_control: Option<&str>) -> Duration {
        let age = cache_control.map_or(Some(DEFAULT_MAX_AGE), max_age);
        age.unwrap_or(DEFAULT_MAX_AGE)
            .clamp(self.min, self.max.max(self.min))
    }
}

/// The `max-age` of a `Cache-Control` value; `no-store` and `no-cache` are
/// zero, and `None` means it says nothing usable.
pub fn max_age(cache_control: &str) -> Option<Duration> {
    let mut age = None;
    for directive in cache_control.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(Duration::ZERO);
        }
        if let Some(value) = lower.strip_prefix("max-age=") {
            age = value
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    age
}

/// Where the keys are: checked when the configuration is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksUrl {
    uri: http::Uri,
    host: String,
    port: u16,
    https: bool,
}

impl JwksUrl {
    /// `https://` anywhere, `http://` to a loopback host only; no user
    /// name or password in the URL.
    pub fn parse(text: &str) -> Result<Self, String> {
        let uri: http::Uri = text.parse().map_err(|e| format!("not a URL: {e}"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("the scheme must be https (or http to a loopback host)".into()),
        };
        let authority = uri.authority().ok_or("the URL has no host")?;
        if authority.as_str().contains('@') {
            return Err("a user name or password in the URL is not supported".into());
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err("the URL has no host".into());
        }
        if !https && !is_loopback(&host) {
            return Err(format!(
                "http:// is only allowed to a loopback host, not {host:?}: use https://"
            ));
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        Ok(Self {
            uri,
            host,
            port,
            https,
        })
    }
}

impl std::fmt::Display for JwksUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.uri.fmt(f)
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// The key set and when to fetch it again.
struct State {
    keys: Arc<[VerifyingKey]>,
    /// Bumped by every successful fetch, so a caller that waited for a
    /// fetch knows whether it brought new keys.
    generation: u64,
    /// When the set runs out (`max-age`); `None` before the first fetch.
    stale_at: Option<Instant>,
    /// When the last fetch started, successful or not.
    last_attempt: Option<Instant>,
    /// A background refresh is under way.
    refreshing: bool,
}

/// The keys behind `AUTH_JWKS_URL`. See the module documentation.
pub struct Remote {
    url: JwksUrl,
    refresh: JwksRefresh,
    tls: Option<tokio_rustls::TlsConnector>,
    state: RwLock<State>,
    /// Held while fetching: one fetch at a time.
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("url", &self.url.to_string())
            .field("refresh", &self.refresh)
            .finish()
    }
}

impl Remote {
    /// No keys yet: [`Remote::fetch_now`] gets the first ones (or the
    /// first token with a kid does).
    pub fn new(url: JwksUrl, refresh: JwksRefresh) -> Result<Self, ConfigError> {
        let tls = if url.https {
            let config = ordermesh_runtime::tls::client_config(
                ordermesh_runtime::tls::Verify::Full,
                ordermesh_runtime::tls::roots(&[]),
            )
            .map_err(|e| config::invalid(ENV_JWKS_URL, &url, e))?;
            Some(tokio_rustls::TlsConnector::from(Arc::new(config)))
        } else {
            None
        };
        Ok(Self {
            url,
            refresh,
            tls,
            state: RwLock::new(State {
                keys: Arc::from(Vec::new()),
                generation: 0,
                stale_at: None,
                last_attempt: None,
                refreshing: false,
            }),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    pub fn url(&self) -> &JwksUrl {
        &self.url
    }

    /// The current keys and their generation. Starts a background fetch
    /// when they have run out or were never fetched (inside a tokio
    /// runtime; at most once per `min` interval).
    pub(super) fn snapshot(self: &Arc<Self>) -> (Arc<[VerifyingKey]>, u64) {
        let now = Instant::now();
        let (keys, generation, due) = {
            let state = self.state.read().unwrap_or_else(|e| e.into_inner());
            let due = !state.refreshing
                // Never fetched (a verifier made by `from_config`) or run out.
                && state.stale_at.is_none_or(|at| now >= at)
                && self.may_fetch(&state, now);
            (state.keys.clone(), state.generation, due)
        };
        if due && let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            if !state.refreshing {
                state.refreshing = true;
                let remote = self.clone();
                runtime.spawn(async move {
                    let _ = remote.refresh(None).await;
                    remote
                        .state
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .refreshing = false;
                });
            }
        }
        (keys, generation)
    }

    fn may_fetch(&self, state: &State, now: Instant) -> bool {
        state
            .last_attempt
            .is_none_or(|last| now.duration_since(last) >= self.refresh.min)
    }

    /// Fetches the set now, whatever the interval: the first fetch at start.
    pub async fn fetch_now(&self) -> Result<(), String> {
        let _one = self.fetching.lock().await;
        self.fetch_and_store().await
    }

    /// A token named a kid that generation `seen` of the set lacks: fetch
    /// again unless the last fetch was less than `min` ago. True when the
    /// set now is newer than `seen` (someone else's fetch counts).
    pub(super) async fn refresh_for_unknown_kid(&self, seen: u64) -> bool {
        self.refresh(Some(seen)).await
    }

    async fn refresh(&self, seen: Option<u64>) -> bool {
        let _one = self.fetching.lock().await;
        {
            let state = self.state.read().unwrap_or_else(|e| e.into_inner());
            if seen.is_some_and(|seen| state.generation != seen) {
                return true;
            }
            if !self.may_fetch(&state, Instant::now()) {
                return false;
            }
        }
        match self.fetch_and_store().await {
            Ok(()) => true,
            Err(reason) => {
                tracing::warn!(
                    url = %self.url,
                    error = %reason,
                    "fetching the JWKS failed; keeping the last good keys"
                );
                false
            }
        }
    }

    /// One fetch; the caller holds `fetching`.
    async fn fetch_and_store(&self) -> Result<(), String> {
        let started = Instant::now();
        self.state
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .last_attempt = Some(started);
        let (body, cache_control) = tokio::time::timeout(FETCH_TIMEOUT, self.get())
            .await
            .map_err(|_| format!("no answer within {FETCH_TIMEOUT:?}"))??;
        let keys = jwks_from_bytes(&body, ENV_JWKS_URL, &self.url, true).map_err(|e| e.reason)?;
        let ttl = self.refresh.ttl(cache_control.as_deref());
        let count = keys.len();
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        state.keys = Arc::from(keys);
        state.generation += 1;
        state.stale_at = Some(started + ttl);
        drop(state);
        tracing::info!(url = %self.url, keys = count, ttl_s = ttl.as_secs(), "fetched the JWKS");
        Ok(())
    }

    /// GET the URL: the body of a 200 answer and its `Cache-Control`.
    async fn get(&self) -> Result<(Vec<u8>, Option<String>), String> {
        let tcp = tokio::net::TcpStream::connect((self.url.host.as_str(), self.url.port))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from(self.url.host.clone())
                    .map_err(|e| format!("not a TLS server name: {e}"))?;
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS handshake: {e}"))?;
                self.exchange(stream).await
            }
            None => self.exchange(tcp).await,
        }
    }

    async fn exchange<S>(&self, io: S) -> Result<(Vec<u8>, Option<String>), String>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
        // Drives the connection; it ends when the answer is read and the
        // sender dropped.
        let driver = tokio::spawn(connection);
        let path = self
            .url
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let host = self
            .url
            .uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default();
        let request = http::Request::get(path)
            .header(http::header::HOST, host)
            .header(
                http::header::ACCEPT,
                "application/jwk-set+json, application/json",
            )
            .header(http::header::USER_AGENT, "ordermesh")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let result = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("HTTP request: {e}"))?;
            if response.status() != http::StatusCode::OK {
                return Err(format!("answered {}", response.status()));
            }
            let cache_control = response
                .headers()
                .get_all(http::header::CACHE_CONTROL)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect::<Vec<_>>()
                .join(", ");
            let body = http_body_util::Limited::new(response.into_body(), MAX_BODY_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading the answer (at most {MAX_BODY_BYTES} bytes): {e}"))?
                .to_bytes();
            Ok((body.to_vec(), Some(cache_control).filter(|c| !c.is_empty())))
        }
        .await;
        drop(sender);
        driver.abort();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read_and_bounded() {
        assert_eq!(
            max_age("public, max-age=600"),
            Some(Duration::from_secs(600))
        );
        assert_eq!(max_age("Max-Age=\"60\""), Some(Duration::from_secs(60)));
        assert_eq!(max_age("no-cache, max-age=600"), Some(Duration::ZERO));
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=soon"), None);
        let bounds = JwksRefresh {
            min: Duration::from_secs(30),
            max: Duration::from_secs(3600),
        };
        assert_eq!(bounds.ttl(Some("max-age=600")), Duration::from_secs(600));
        assert_eq!(bounds.ttl(Some("max-age=1")), Duration::from_secs(30));
        assert_eq!(bounds.ttl(Some("max-age=86400")), Duration::from_secs(3600));
        assert_eq!(bounds.ttl(Some("no-store")), Duration::from_secs(30));
        assert_eq!(bounds.ttl(None), DEFAULT_MAX_AGE);
        assert_eq!(bounds.ttl(Some("private")), DEFAULT_MAX_AGE);
    }

    #[test]
    fn a_providers_set_keeps_its_signing_keys_only() {
        use base64::Engine as _;
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 32]);
        // Keycloak publishes an RSA-OAEP encryption key beside its signing
        // keys; other providers add ES256 keys.
        let set = serde_json::json!({"keys": [
            {"kty": "RSA", "use": "enc", "alg": "RSA-OAEP", "kid": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "crv": "P-256", "alg": "ES256", "kid": "ec", "x": x, "y": x},
            {"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": "sig", "x": x, "use": "sig"},
        ]})
        .to_string();
        let keys =
            crate::keys::jwks_from_bytes(set.as_bytes(), ENV_JWKS_URL, "test", true).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("sig"));
        // A file is ours: anything unusable in it is an error.
        let err = crate::keys::jwks_from_bytes(set.as_bytes(), "AUTH_JWKS_FILE", "f", false)
            .map(|_| ())
            .unwrap_err();
        assert_eq!(err.name, "AUTH_JWKS_FILE");
    }

    #[test]
    fn urls_are_https_or_loopback() {
        for ok in [
            "https://idp.example.com/realms/x/protocol/openid-connect/certs",
            "https://idp.example.com:8443/jwks.json",
            "http://127.0.0.1:8080/jwks.json",
            "http://[::1]:8080/jwks.json",
            "http://localhost/jwks.json",
        ] {
            JwksUrl::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let url = JwksUrl::parse("http://[::1]:8080/k").unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.https),
            ("::1", 8080, false)
        );
        assert_eq!(JwksUrl::parse("https://idp/k").unwrap().port, 443);
        for (bad, says) in [
            ("http://idp.example.com/jwks.json", "loopback"),
            ("http://10.0.0.1/jwks.json", "loopback"),
            ("ftp://127.0.0.1/jwks.json", "scheme"),
            ("/jwks.json", "scheme"),
            ("https://user:pw@idp.example.com/k", "password"),
            ("not a url", "not a URL"),
        ] {
            let err = JwksUrl::parse(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
