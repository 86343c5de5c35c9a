//! Who is calling, and how often.
//!
//! - Every gRPC call carries `authorization: Bearer <jwt>` ([`Claims`]:
//!   `sub`, `role`, `iss` and `aud` = `ordermesh`, `iat`, `exp`). REST calls
//!   are gRPC calls too: the gateway forwards the HTTP `Authorization`
//!   header as metadata and calls the router in-process, through the same
//!   layer.
//! - [`Verifier`] checks a token against the configured keys: an HS256
//!   shared secret (`AUTH_JWT_SECRET`), RS256 / EdDSA public keys in PEM
//!   files (`AUTH_JWT_PUBLIC_KEYS`), a JWKS file (`AUTH_JWKS_FILE`) and a
//!   JWKS URL (`AUTH_JWKS_URL`, see [`jwks`]: fetched at start, cached for
//!   its `max-age`, refetched on an unknown `kid`, the last good set kept).
//! - [`protect`] puts [`AuthLayer`] on a service's routes: it lets health,
//!   reflection and the operational routes through, authenticates the rest
//!   (UNAUTHENTICATED with `www-authenticate: Bearer`), puts the [`Caller`]
//!   into the request extensions, and applies a token bucket per caller
//!   (RESOURCE_EXHAUSTED with `google.rpc.RetryInfo` and `retry-after`).
//!   `ordermesh.auth.v1.AuthService` (register, log in) needs no token; its
//!   anonymous callers are limited per client address (an IPv6 client per
//!   /64). That address is the TCP peer's, unless the peer is one of the
//!   [`TrustedProxies`] (`AUTH_TRUSTED_PROXIES`, e.g. the ingress): then it
//!   is the right-most address of `X-Forwarded-For` that is not a trusted
//!   proxy itself, so a client cannot pick its own bucket by sending the
//!   header. Handlers find it as [`ClientIp`] in the request extensions.
//! - Handlers authorize with [`Caller::of`] and [`Caller::may_act_for`].
//! - [`Signer`] issues tokens (processor-svc); [`mint_hs256`] is the short
//!   way for test harnesses; [`Bearer`] is a tonic interceptor sending one.
//!
//! Tokens and secrets never reach a log line: nothing here formats them,
//! and [`Secret`], [`Bearer`] and [`Issued`] print redacted.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use governor::clock::Clock as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tonic::Status;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::service::Routes;
use tower::{Layer, Service};

use crate::config::{self, ConfigError, Env, Secret};

pub mod jwks;
pub use jwks::{JwksRefresh, JwksUrl};

/// The `iss` every ordermesh token carries and every service requires.
pub const ISSUER: &str = "ordermesh";
/// The `aud` every ordermesh token carries and every service requires.
pub const AUDIENCE: &str = "ordermesh";
/// The gRPC service that hands out tokens; it needs none itself.
pub const AUTH_SERVICE: &str = "ordermesh.auth.v1.AuthService";

pub const ENV_JWT_SECRET: &str = "AUTH_JWT_SECRET";
pub const ENV_JWT_PUBLIC_KEYS: &str = "AUTH_JWT_PUBLIC_KEYS";
pub const ENV_JWKS_FILE: &str = "AUTH_JWKS_FILE";
/// An identity provider's JWKS endpoint (https, or http to loopback).
pub const ENV_JWKS_URL: &str = "AUTH_JWKS_URL";
/// Floor of the JWKS `max-age`, and the interval of unknown-`kid` refetches.
pub const ENV_JWKS_REFRESH_MIN_S: &str = "AUTH_JWKS_REFRESH_MIN_S";
/// Ceiling of the JWKS `max-age`.
pub const ENV_JWKS_REFRESH_MAX_S: &str = "AUTH_JWKS_REFRESH_MAX_S";
pub const ENV_SIGNING_KEY_FILE: &str = "AUTH_JWT_SIGNING_KEY_FILE";
pub const ENV_TOKEN_TTL_S: &str = "AUTH_TOKEN_TTL_S";
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
pub const ENV_RATE_LIMIT_PER_S: &str = "RATE_LIMIT_PER_S";
pub const DEFAULT_RATE_LIMIT_PER_S: u32 = 50;
pub const ENV_RATE_LIMIT_BURST: &str = "RATE_LIMIT_BURST";
pub const DEFAULT_RATE_LIMIT_BURST: u32 = 100;
pub const ENV_RATE_LIMIT_ADMIN: &str = "RATE_LIMIT_ADMIN";
pub const DEFAULT_RATE_LIMIT_ADMIN: bool = false;
/// CIDRs of the proxies whose `X-Forwarded-For` is believed; none by default.
pub const ENV_TRUSTED_PROXIES: &str = "AUTH_TRUSTED_PROXIES";
/// Shortest HS256 secret accepted: the hash's output size (RFC 7518 3.2).
pub const MIN_SECRET_BYTES: usize = 32;
/// Clock skew tolerated on `exp`.
pub const LEEWAY: Duration = Duration::from_secs(30);

/// What a caller may do: a customer acts for itself, an admin for everyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Customer,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Customer => "customer",
            Self::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "customer" => Ok(Self::Customer),
            "admin" => Ok(Self::Admin),
            other => Err(format!(
                "unknown role {other:?}: expected customer or admin"
            )),
        }
    }
}

/// The claims of an ordermesh token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The customer id (for an admin: who the operator is).
    pub sub: String,
    pub role: Role,
    pub iss: String,
    pub aud: String,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Expires at, seconds since the Unix epoch.
    pub exp: u64,
}

impl Claims {
    /// Claims for `subject` as `role`, valid from now for `ttl`.
    pub fn new(subject: &str, role: Role, ttl: Duration) -> Self {
        let iat = unix_now();
        Self {
            sub: subject.to_owned(),
            role,
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
            iat,
            exp: iat.saturating_add(ttl.as_secs()),
        }
    }
}

/// A token for `subject` as `role`, signed HS256 with `secret`, valid for
/// `ttl`: what test harnesses, the bench and the README smoke use.
pub fn mint_hs256(secret: &str, subject: &str, role: Role, ttl: Duration) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &Claims::new(subject, role, ttl),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing of plain claims cannot fail")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Configuration

/// Token verification and rate limits, as both services read them.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// HS256 shared secret (`AUTH_JWT_SECRET`), at least [`MIN_SECRET_BYTES`].
    pub secret: Option<Secret>,
    /// PEM public keys, RS256 or EdDSA (`AUTH_JWT_PUBLIC_KEYS`).
    pub public_key_files: Vec<PathBuf>,
    /// A JWKS document of public keys (`AUTH_JWKS_FILE`).
    pub jwks_file: Option<PathBuf>,
    /// An identity provider's rotating keys (`AUTH_JWKS_URL`).
    pub jwks_url: Option<JwksUrl>,
    /// How often those are fetched again (`AUTH_JWKS_REFRESH_*_S`).
    pub jwks_refresh: JwksRefresh,
    pub rate_limit: RateLimitConfig,
    /// Proxies whose `X-Forwarded-For` names the caller for rate limits
    /// (`AUTH_TRUSTED_PROXIES`); behind an ingress, without them every
    /// anonymous caller would share the ingress's bucket.
    pub trusted_proxies: TrustedProxies,
}

/// The token bucket every caller gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Tokens added per second (`RATE_LIMIT_PER_S`); 0 turns limits off.
    pub per_second: u32,
    /// Bucket size (`RATE_LIMIT_BURST`); 0 turns limits off.
    pub burst: u32,
    /// Whether admins are limited too (`RATE_LIMIT_ADMIN`).
    pub limit_admins: bool,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_second: DEFAULT_RATE_LIMIT_PER_S,
            burst: DEFAULT_RATE_LIMIT_BURST,
            limit_admins: DEFAULT_RATE_LIMIT_ADMIN,
        }
    }
}

impl RateLimitConfig {
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        Ok(Self {
            per_second: config::parse(env, ENV_RATE_LIMIT_PER_S, DEFAULT_RATE_LIMIT_PER_S)?,
            burst: config::parse(env, ENV_RATE_LIMIT_BURST, DEFAULT_RATE_LIMIT_BURST)?,
            limit_admins: config::parse(env, ENV_RATE_LIMIT_ADMIN, DEFAULT_RATE_LIMIT_ADMIN)?,
        })
    }

    pub fn is_enabled(&self) -> bool {
        self.per_second > 0 && self.burst > 0
    }
}

impl AuthConfig {
    /// Reads the variables; key files are read later, by
    /// [`Verifier::from_config`], so `migrate` needs none of them.
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        let secret = match env.var(ENV_JWT_SECRET) {
            Some(s) if !s.trim().is_empty() => {
                let s = s.trim();
                if s.len() < MIN_SECRET_BYTES {
                    return Err(config::invalid(
                        ENV_JWT_SECRET,
                        "***",
                        format!("must be at least {MIN_SECRET_BYTES} bytes"),
                    ));
                }
                Some(Secret::new(s))
            }
            _ => None,
        };
        let public_key_files = config::list(env, ENV_JWT_PUBLIC_KEYS, &[])
            .into_iter()
            .map(PathBuf::from)
            .collect();
        let jwks_file = Some(config::string(env, ENV_JWKS_FILE, ""))
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        let jwks_url = match config::string(env, ENV_JWKS_URL, "") {
            url if url.is_empty() => None,
            url => Some(
                JwksUrl::parse(&url)
                    .map_err(|reason| config::invalid(ENV_JWKS_URL, &url, reason))?,
            ),
        };
        let min_s = config::parse(
            env,
            ENV_JWKS_REFRESH_MIN_S,
            jwks::DEFAULT_REFRESH_MIN.as_secs(),
        )?;
        let max_s = config::parse(
            env,
            ENV_JWKS_REFRESH_MAX_S,
            jwks::DEFAULT_REFRESH_MAX.as_secs(),
        )?;
        if min_s == 0 {
            return Err(config::invalid(
                ENV_JWKS_REFRESH_MIN_S,
                0,
                "must be at least 1",
            ));
        }
        if max_s < min_s {
            return Err(config::invalid(
                ENV_JWKS_REFRESH_MAX_S,
                max_s,
                format!("must be at least {ENV_JWKS_REFRESH_MIN_S} ({min_s})"),
            ));
        }
        Ok(Self {
            secret,
            public_key_files,
            jwks_file,
            jwks_url,
            jwks_refresh: JwksRefresh {
                min: Duration::from_secs(min_s),
                max: Duration::from_secs(max_s),
            },
            rate_limit: RateLimitConfig::from_env(env)?,
            trusted_proxies: TrustedProxies::from_env(env)?,
        })
    }

    /// Verification with the HS256 `secret` only, limits at their defaults.
    pub fn with_secret(secret: &str) -> Self {
        Self {
            secret: Some(Secret::new(secret)),
            ..Self::default()
        }
    }
}

/// How processor-svc signs the tokens it issues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenConfig {
    /// PEM private key, Ed25519 or RSA (`AUTH_JWT_SIGNING_KEY_FILE`); when
    /// unset, tokens are HS256 with `AUTH_JWT_SECRET`.
    pub signing_key_file: Option<PathBuf>,
    /// Lifetime of an issued token (`AUTH_TOKEN_TTL_S`).
    pub ttl: Duration,
}

impl Default for TokenConfig {
    fn default() -> Self {
        Self {
            signing_key_file: None,
            ttl: DEFAULT_TOKEN_TTL,
        }
    }
}

impl TokenConfig {
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        let ttl_s = config::parse(env, ENV_TOKEN_TTL_S, DEFAULT_TOKEN_TTL.as_secs())?;
        if ttl_s == 0 {
            return Err(config::invalid(ENV_TOKEN_TTL_S, 0, "must be at least 1"));
        }
        let signing_key_file = Some(config::string(env, ENV_SIGNING_KEY_FILE, ""))
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        Ok(Self {
            signing_key_file,
            ttl: Duration::from_secs(ttl_s),
        })
    }
}

fn read_key_file(variable: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| config::invalid(variable, path.display(), e))
}

// ---------------------------------------------------------------------------
// Verification

/// A verified caller, in the request extensions of every authenticated
/// call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's `sub`: a customer id, or an admin's name.
    pub subject: String,
    pub role: Role,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Whether the caller may see and act on `customer_id`'s resources.
    pub fn may_act_for(&self, customer_id: &str) -> bool {
        self.is_admin() || self.subject == customer_id
    }

    /// The caller [`AuthLayer`] verified. UNAUTHENTICATED when there is
    /// none, which only happens when a service was served unprotected.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Self, Status> {
        request
            .extensions()
            .get::<Self>()
            .cloned()
            .ok_or_else(|| unauthenticated(TokenError::Missing))
    }
}

/// Why a token was refused. The messages never include the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("missing bearer token")]
    Missing,
    #[error("the authorization header is not `Bearer <token>`")]
    NotBearer,
    #[error("the bearer token has expired")]
    Expired,
    #[error("invalid bearer token: {0}")]
    Invalid(&'static str),
}

/// One key a token may be signed with.
struct VerifyingKey {
    algorithm: Algorithm,
    /// The JWK `kid`; a token naming a kid is checked against it only.
    kid: Option<String>,
    key: DecodingKey,
}

/// Checks bearer tokens against the configured keys.
pub struct Verifier {
    keys: Vec<VerifyingKey>,
    /// The keys behind `AUTH_JWKS_URL`, which change while we run.
    remote: Option<Arc<jwks::Remote>>,
}

/// The reason [`Verifier::verify_fresh`] refetches the JWKS for.
const UNKNOWN_KID: &str = "unknown key id";

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let algorithms: Vec<_> = self.keys.iter().map(|k| k.algorithm).collect();
        f.debug_struct("Verifier")
            .field("algorithms", &algorithms)
            .field("remote", &self.remote)
            .finish()
    }
}

impl Verifier {
    /// Loads every configured key. None at all is an error naming
    /// `AUTH_JWT_SECRET`: a service never runs open by accident.
    pub fn from_config(config: &AuthConfig) -> Result<Self, ConfigError> {
        let mut keys = Vec::new();
        if let Some(secret) = &config.secret {
            keys.push(VerifyingKey {
                algorithm: Algorithm::HS256,
                kid: None,
                key: DecodingKey::from_secret(secret.expose().as_bytes()),
            });
        }
        for path in &config.public_key_files {
            let pem = read_key_file(ENV_JWT_PUBLIC_KEYS, path)?;
            let (algorithm, key) = if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                (Algorithm::RS256, key)
            } else if let Ok(key) = DecodingKey::from_ed_pem(&pem) {
                (Algorithm::EdDSA, key)
            } else {
                return Err(config::invalid(
                    ENV_JWT_PUBLIC_KEYS,
                    path.display(),
                    "not an RSA or Ed25519 public key in PEM form",
                ));
            };
            keys.push(VerifyingKey {
                algorithm,
                kid: None,
                key,
            });
        }
        if let Some(path) = &config.jwks_file {
            keys.extend(jwks_keys(path)?);
        }
        let remote = match &config.jwks_url {
            Some(url) => Some(Arc::new(jwks::Remote::new(
                url.clone(),
                config.jwks_refresh,
            )?)),
            None => None,
        };
        if keys.is_empty() && remote.is_none() {
            return Err(config::invalid(
                ENV_JWT_SECRET,
                "",
                format!(
                    "no token verification key is configured: set {ENV_JWT_SECRET} (HS256, at least \
                     {MIN_SECRET_BYTES} bytes), {ENV_JWT_PUBLIC_KEYS} (PEM files), {ENV_JWKS_FILE} \
                     or {ENV_JWKS_URL}"
                ),
            ));
        }
        Ok(Self { keys, remote })
    }

    /// [`Verifier::from_config`], then the first fetch of `AUTH_JWKS_URL`
    /// when it is set: a provider that does not answer at start is an error
    /// naming the variable (fail fast; the orchestrator's restarts retry).
    /// `from_config` alone leaves that fetch to the first token.
    pub async fn load(config: &AuthConfig) -> Result<Self, ConfigError> {
        let verifier = Self::from_config(config)?;
        if let Some(remote) = &verifier.remote {
            remote.fetch_now().await.map_err(|reason| {
                config::invalid(
                    ENV_JWKS_URL,
                    remote.url(),
                    format!("the first fetch of the key set failed: {reason}"),
                )
            })?;
        }
        Ok(verifier)
    }

    /// The caller a token stands for, if one of the keys signed it and its
    /// claims hold (issuer, audience, not expired, a known role). Uses the
    /// JWKS keys at hand; [`Verifier::verify_fresh`] also fetches new ones.
    pub fn verify(&self, token: &str) -> Result<Caller, TokenError> {
        match &self.remote {
            Some(remote) => self.check(token, &remote.snapshot().0),
            None => self.check(token, &[]),
        }
    }

    /// [`Verifier::verify`], but a token naming a `kid` nobody knows makes
    /// the JWKS be fetched again first (at most once per
    /// `AUTH_JWKS_REFRESH_MIN_S`): how a rotated key is picked up.
    pub async fn verify_fresh(&self, token: &str) -> Result<Caller, TokenError> {
        let Some(remote) = &self.remote else {
            return self.check(token, &[]);
        };
        let (keys, generation) = remote.snapshot();
        match self.check(token, &keys) {
            Err(TokenError::Invalid(UNKNOWN_KID)) => {
                if remote.refresh_for_unknown_kid(generation).await {
                    self.check(token, &remote.snapshot().0)
                } else {
                    Err(TokenError::Invalid(UNKNOWN_KID))
                }
            }
            other => other,
        }
    }

    fn check(&self, token: &str, remote: &[VerifyingKey]) -> Result<Caller, TokenError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid("malformed"))?;
        let mut tried = false;
        for candidate in self.keys.iter().chain(remote).filter(|k| {
            k.algorithm == header.alg
                && match (&header.kid, &k.kid) {
                    (Some(wanted), Some(kid)) => wanted == kid,
                    _ => true,
                }
        }) {
            tried = true;
            let mut validation = Validation::new(candidate.algorithm);
            validation.set_issuer(&[ISSUER]);
            validation.set_audience(&[AUDIENCE]);
            validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            validation.leeway = LEEWAY.as_secs();
            match jsonwebtoken::decode::<Claims>(token, &candidate.key, &validation) {
                Ok(data) => {
                    let claims = data.claims;
                    if claims.sub.trim().is_empty() {
                        return Err(TokenError::Invalid("empty subject"));
                    }
                    return Ok(Caller {
                        subject: claims.sub,
                        role: claims.role,
                    });
                }
                // Signed by another key of the same kind: try the next.
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => continue,
                Err(e) => return Err(token_error(e.kind())),
            }
        }
        Err(TokenError::Invalid(if tried {
            "bad signature"
        } else if header.kid.is_some() && self.remote.is_some() {
            // Maybe a key the provider has published since the last fetch.
            UNKNOWN_KID
        } else {
            "no key for its algorithm"
        }))
    }
}

fn token_error(kind: &ErrorKind) -> TokenError {
    TokenError::Invalid(match kind {
        ErrorKind::ExpiredSignature => return TokenError::Expired,
        ErrorKind::InvalidAudience => "wrong audience",
        ErrorKind::InvalidIssuer => "wrong issuer",
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::ImmatureSignature => "not valid yet",
        ErrorKind::MissingRequiredClaim(_) => "a required claim is missing",
        ErrorKind::InvalidAlgorithm => "unexpected algorithm",
        ErrorKind::Json(_) => "unexpected claims",
        _ => "malformed",
    })
}

/// The RS256 and EdDSA keys of a JWKS file.
fn jwks_keys(path: &Path) -> Result<Vec<VerifyingKey>, ConfigError> {
    let bytes = read_key_file(ENV_JWKS_FILE, path)?;
    jwks_from_bytes(&bytes, ENV_JWKS_FILE, path.display(), false)
}

/// The RS256 and EdDSA keys of a JWKS document from `source`, named by
/// `variable` in errors. `lenient` (an identity provider's set) skips
/// encryption keys and other algorithms instead of refusing the set.
fn jwks_from_bytes(
    bytes: &[u8],
    variable: &str,
    source: impl std::fmt::Display,
    lenient: bool,
) -> Result<Vec<VerifyingKey>, ConfigError> {
    let set: JwkSet = serde_json::from_slice(bytes)
        .map_err(|e| config::invalid(variable, &source, format!("not a JWKS: {e}")))?;
    let mut keys = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let bad = |reason: String| config::invalid(variable, &source, format!("key {i}: {reason}"));
        if lenient
            && (jwk.common.public_key_use == Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
                || !matches!(
                    (&jwk.algorithm, jwk.common.key_algorithm),
                    (
                        AlgorithmParameters::RSA(_),
                        None | Some(KeyAlgorithm::RS256)
                    ) | (
                        AlgorithmParameters::OctetKeyPair(_),
                        None | Some(KeyAlgorithm::EdDSA)
                    )
                ))
        {
            tracing::debug!(key = i, kid = ?jwk.common.key_id, "JWKS key skipped: not an RS256 or EdDSA signing key");
            continue;
        }
        let algorithm = match (&jwk.algorithm, jwk.common.key_algorithm) {
            (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
            (AlgorithmParameters::OctetKeyPair(_), None | Some(KeyAlgorithm::EdDSA)) => {
                Algorithm::EdDSA
            }
            _ => {
                return Err(bad(
                    "only RSA keys for RS256 and OKP (Ed25519) keys for EdDSA are accepted".into(),
                ));
            }
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| bad(e.to_string()))?;
        keys.push(VerifyingKey {
            algorithm,
            kid: jwk.common.key_id.clone(),
            key,
        });
    }
    if keys.is_empty() {
        return Err(config::invalid(
            variable,
            source,
            "holds no RS256 or EdDSA signing key",
        ));
    }
    Ok(keys)
}

/// The token of an `authorization: Bearer <token>` value.
fn bearer_token(metadata: &http::HeaderMap) -> Result<&str, TokenError> {
    let value = metadata
        .get(http::header::AUTHORIZATION)
        .ok_or(TokenError::Missing)?;
    let value = value.to_str().map_err(|_| TokenError::NotBearer)?;
    let (scheme, token) = value.trim().split_once(' ').ok_or(TokenError::NotBearer)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(TokenError::NotBearer);
    }
    Ok(token)
}

// ---------------------------------------------------------------------------
// Issuing

/// A freshly signed token. Its `Debug` leaves the token out.
#[derive(Clone)]
pub struct Issued {
    pub token: String,
    pub expires_at: SystemTime,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("token", &"***")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Signs the tokens processor-svc issues.
pub struct Signer {
    algorithm: Algorithm,
    key: EncodingKey,
    ttl: Duration,
    /// The variable the key came from, for error messages.
    source: &'static str,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("algorithm", &self.algorithm)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl Signer {
    /// The key of `AUTH_JWT_SIGNING_KEY_FILE` (Ed25519 or RSA, PEM), or
    /// else HS256 with `AUTH_JWT_SECRET`.
    pub fn from_config(auth: &AuthConfig, tokens: &TokenConfig) -> Result<Self, ConfigError> {
        let (algorithm, key, source) = match (&tokens.signing_key_file, &auth.secret) {
            (Some(path), _) => {
                let pem = read_key_file(ENV_SIGNING_KEY_FILE, path)?;
                if let Ok(key) = EncodingKey::from_ed_pem(&pem) {
                    (Algorithm::EdDSA, key, ENV_SIGNING_KEY_FILE)
                } else if let Ok(key) = EncodingKey::from_rsa_pem(&pem) {
                    (Algorithm::RS256, key, ENV_SIGNING_KEY_FILE)
                } else {
                    return Err(config::invalid(
                        ENV_SIGNING_KEY_FILE,
                        path.display(),
                        "not an Ed25519 or RSA private key in PEM form",
                    ));
                }
            }
            (None, Some(secret)) => (
                Algorithm::HS256,
                EncodingKey::from_secret(secret.expose().as_bytes()),
                ENV_JWT_SECRET,
            ),
            (None, None) => {
                return Err(config::invalid(
                    ENV_JWT_SECRET,
                    "",
                    format!(
                        "no key to sign tokens with: set {ENV_JWT_SECRET} or {ENV_SIGNING_KEY_FILE}"
                    ),
                ));
            }
        };
        Ok(Self {
            algorithm,
            key,
            ttl: tokens.ttl,
            source,
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The lifetime of [`Signer::issue`]'s tokens.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A token for `subject` as `role`, valid for the configured lifetime.
    pub fn issue(&self, subject: &str, role: Role) -> Issued {
        self.issue_for(subject, role, self.ttl)
    }

    /// A token for `subject` as `role`, valid for `ttl`.
    pub fn issue_for(&self, subject: &str, role: Role, ttl: Duration) -> Issued {
        let claims = Claims::new(subject, role, ttl);
        let token = jsonwebtoken::encode(&Header::new(self.algorithm), &claims, &self.key)
            .expect("signing with a loaded key cannot fail");
        Issued {
            token,
            expires_at: UNIX_EPOCH + Duration::from_secs(claims.exp),
        }
    }

    /// Fails unless `verifier` accepts this signer's tokens, so a service
    /// never hands out tokens nobody (itself included) would take.
    pub fn check_against(&self, verifier: &Verifier) -> Result<(), ConfigError> {
        let probe = self.issue_for(
            "ordermesh-self-check",
            Role::Customer,
            Duration::from_secs(60),
        );
        verifier.verify(&probe.token).map(drop).map_err(|e| {
            config::invalid(
                self.source,
                if self.source == ENV_JWT_SECRET {
                    "***"
                } else {
                    "(key file)"
                },
                format!(
                    "tokens signed with it do not verify ({e}): configure its public key in \
                     {ENV_JWT_PUBLIC_KEYS} or {ENV_JWKS_FILE}"
                ),
            )
        })
    }
}

/// A tonic interceptor sending `authorization: Bearer <token>` on every
/// call. Its `Debug` leaves the token out.
#[derive(Clone)]
pub struct Bearer(AsciiMetadataValue);

impl Bearer {
    /// Panics if `token` cannot be a header value (a JWT always can).
    pub fn new(token: &str) -> Self {
        let mut value: AsciiMetadataValue = format!("Bearer {token}")
            .parse()
            .expect("a JWT is a valid header value");
        value.set_sensitive(true);
        Self(value)
    }
}

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bearer(***)")
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

// ---------------------------------------------------------------------------
// Client addresses

/// An IP network: an address and how many of its leading bits count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

/// An address as a number, and its width in bits.
fn ip_bits(ip: IpAddr) -> (u128, u32) {
    match ip {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
        IpAddr::V6(v6) => (u128::from(v6), 128),
    }
}

/// The low `n` bits set (`n` up to 128).
fn low_bits(n: u32) -> u128 {
    u128::MAX.checked_shr(128 - n).unwrap_or(0)
}

/// An IPv4-mapped IPv6 address (`::ffff:192.0.2.7`, what a dual-stack
/// listener reports for IPv4 peers) as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

impl IpNet {
    /// Whether `ip` is in this network; an address of the other family
    /// never is.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        if self.addr.is_ipv4() != ip.is_ipv4() {
            return false;
        }
        let (net, width) = ip_bits(self.addr);
        let (ip, _) = ip_bits(ip);
        (net ^ ip) & !low_bits(width - u32::from(self.prefix)) == 0
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl std::str::FromStr for IpNet {
    type Err = String;

    /// `10.0.0.0/8`, `fd00::/8`, or one address (`192.0.2.7`, `::1`).
    /// Bits past the prefix must be zero: `10.0.0.1/8` is likely a typo.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or a CIDR"))?;
        let (bits, width) = ip_bits(addr);
        let prefix = match prefix {
            None => width,
            Some(p) => match p.parse::<u32>() {
                Ok(n) if n <= width && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => {
                    return Err(format!(
                        "{text:?}: the prefix length must be a number from 0 to {width}"
                    ));
                }
            },
        };
        let host = low_bits(width - prefix);
        if bits & host != 0 {
            let network = match addr {
                IpAddr::V4(_) => IpAddr::from(std::net::Ipv4Addr::from((bits & !host) as u32)),
                IpAddr::V6(_) => IpAddr::from(std::net::Ipv6Addr::from(bits & !host)),
            };
            return Err(format!(
                "{text:?} has bits set past its prefix: did you mean {network}/{prefix}?"
            ));
        }
        // An IPv4-mapped network is kept as the IPv4 one, as peers are.
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), prefix - 96),
                None => (addr, prefix),
            },
            _ => (addr, prefix),
        };
        Ok(Self {
            addr,
            prefix: u8::try_from(prefix).expect("at most 128"),
        })
    }
}

/// The proxies (an ingress, a load balancer) whose `X-Forwarded-For` is
/// believed. Empty by default: then the TCP peer is the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

/// How many `X-Forwarded-For` entries are looked at, from the right: a
/// request passes through a few proxies, not dozens.
const MAX_FORWARDED_HOPS: usize = 16;

impl TrustedProxies {
    pub fn new(networks: Vec<IpNet>) -> Self {
        Self(networks)
    }

    /// `AUTH_TRUSTED_PROXIES`: a comma-separated list of CIDRs or single
    /// addresses; a bad entry is an error naming the variable.
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        config::list(env, ENV_TRUSTED_PROXIES, &[])
            .iter()
            .map(|entry| {
                entry
                    .parse()
                    .map_err(|reason| config::invalid(ENV_TRUSTED_PROXIES, entry, reason))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    pub fn networks(&self) -> &[IpNet] {
        &self.0
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(ip))
    }

    /// Who a request that came from `peer` was sent by. An untrusted peer
    /// is the caller itself, whatever it claims. A trusted one passed on
    /// `X-Forwarded-For` (all of `headers`' values, in order, are one
    /// list): walking it from the right, the first address that is not a
    /// trusted proxy is the caller, as everything left of it was written
    /// by that caller. An entry that is not an address ends the walk at
    /// the last trusted hop, as does running out of entries.
    pub fn client_ip(&self, peer: IpAddr, headers: &http::HeaderMap) -> IpAddr {
        let mut client = canonical(peer);
        if !self.contains(client) {
            return client;
        }
        let values: Vec<&http::HeaderValue> = headers.get_all("x-forwarded-for").iter().collect();
        let hops = values
            .iter()
            .rev()
            .flat_map(|value| match value.to_str() {
                Ok(text) => text.rsplit(',').map(Some).collect::<Vec<_>>(),
                Err(_) => vec![None],
            })
            .take(MAX_FORWARDED_HOPS);
        for hop in hops {
            if hop.is_some_and(|h| h.trim().is_empty()) {
                continue;
            }
            let Some(ip) = hop.and_then(parse_forwarded_hop) else {
                break;
            };
            client = canonical(ip);
            if !self.contains(client) {
                return client;
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: an address, maybe with a port
/// (`192.0.2.7:4711`, `[2001:db8::1]:443`) or in brackets.
fn parse_forwarded_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = hop.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    hop.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

/// The address a call came from (see [`TrustedProxies::client_ip`]), in the
/// request extensions of every call but the open routes, when the server
/// knows its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// The rate-limit bucket of an anonymous caller: its IPv4 address, or its
/// IPv6 /64 (one subscriber's usual share, which it can fill with
/// addresses at will).
fn client_bucket(ip: IpAddr) -> String {
    match canonical(ip) {
        IpAddr::V4(v4) => format!("ip:{v4}"),
        IpAddr::V6(v6) => {
            let network = std::net::Ipv6Addr::from(u128::from(v6) & !low_bits(64));
            format!("ip:{network}/64")
        }
    }
}

// ---------------------------------------------------------------------------
// Rate limits

/// A token bucket per key (a caller's subject, or an anonymous peer's IP).
pub struct RateLimiter {
    limiter: Option<governor::DefaultKeyedRateLimiter<String>>,
    limit_admins: bool,
    /// Calls since the start, to forget idle keys now and then.
    checks: AtomicU64,
}

/// Idle keys are forgotten every this many checks.
const SWEEP_EVERY: u64 = 4096;

impl RateLimiter {
    pub fn new(config: RateLimitConfig) -> Self {
        let limiter = config.is_enabled().then(|| {
            let per_second = std::num::NonZeroU32::new(config.per_second).expect("checked above");
            let burst = std::num::NonZeroU32::new(config.burst).expect("checked above");
            governor::RateLimiter::keyed(governor::Quota::per_second(per_second).allow_burst(burst))
        });
        Self {
            limiter,
            limit_admins: config.limit_admins,
            checks: AtomicU64::new(0),
        }
    }

    /// Takes one token from `key`'s bucket, or says how long until one is
    /// there.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            limiter.retain_recent();
        }
        limiter
            .check_key(&key.to_owned())
            .map_err(|not_until| not_until.wait_time_from(limiter.clock().now()))
    }

    fn applies_to(&self, caller: Option<&Caller>) -> bool {
        self.limit_admins || !caller.is_some_and(Caller::is_admin)
    }
}

// ---------------------------------------------------------------------------
// The layer

/// Verification and rate limits of one server.
pub struct Auth {
    verifier: Verifier,
    limiter: RateLimiter,
    trusted_proxies: TrustedProxies,
}

impl Auth {
    pub fn new(verifier: Verifier, rate_limit: RateLimitConfig) -> Self {
        Self {
            verifier,
            limiter: RateLimiter::new(rate_limit),
            trusted_proxies: TrustedProxies::default(),
        }
    }

    /// Believes `X-Forwarded-For` from these peers (see [`TrustedProxies`]).
    pub fn with_trusted_proxies(mut self, trusted_proxies: TrustedProxies) -> Self {
        self.trusted_proxies = trusted_proxies;
        self
    }

    /// Loads the keys of `config` (see [`Verifier::from_config`]).
    pub fn from_config(config: &AuthConfig) -> Result<Self, ConfigError> {
        Ok(Self::new(Verifier::from_config(config)?, config.rate_limit)
            .with_trusted_proxies(config.trusted_proxies.clone()))
    }

    /// Loads the keys of `config` and fetches `AUTH_JWKS_URL` (see
    /// [`Verifier::load`]): what a service calls at start.
    pub async fn load(config: &AuthConfig) -> Result<Self, ConfigError> {
        Ok(Self::new(Verifier::load(config).await?, config.rate_limit)
            .with_trusted_proxies(config.trusted_proxies.clone()))
    }

    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// Lets `request` in (with its [`Caller`] in the extensions) or says
    /// why not.
    async fn admit<B>(&self, request: &mut http::Request<B>) -> Result<(), Status> {
        let path = request.uri().path();
        let access = access(path);
        if access == Access::Open {
            return Ok(());
        }
        let verified = match bearer_token(request.headers()) {
            Ok(token) => self.verifier.verify_fresh(token).await,
            Err(e) => Err(e),
        };
        let caller = match (access, verified) {
            (_, Ok(caller)) => Some(caller),
            // Registering and logging in need no token; a bad one is ignored.
            (Access::Public, Err(_)) => None,
            (_, Err(e)) => {
                tracing::debug!(reason = %e, path, "call refused: no valid bearer token");
                return Err(unauthenticated(e));
            }
        };
        let client = peer_ip(request.extensions())
            .map(|peer| self.trusted_proxies.client_ip(peer, request.headers()));
        if self.limiter.applies_to(caller.as_ref()) {
            let key = match (&caller, client) {
                (Some(c), _) => format!("sub:{}", c.subject),
                (None, Some(ip)) => client_bucket(ip),
                (None, None) => "ip:unknown".to_owned(),
            };
            if let Err(wait) = self.limiter.check(&key) {
                tracing::debug!(path, "call refused: rate limit");
                return Err(rate_limited(wait));
            }
        }
        if let Some(ip) = client {
            request.extensions_mut().insert(ClientIp(ip));
        }
        if let Some(caller) = caller {
            request.extensions_mut().insert(caller);
        }
        Ok(())
    }
}

/// Whether a path needs a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Health, reflection, `/metrics`, `/healthz`, `/readyz`, the API docs.
    Open,
    /// AuthService: a token is optional, limits apply per peer without one.
    Public,
    /// Everything else.
    Protected,
}

fn access(path: &str) -> Access {
    if crate::observe::OPS_PATHS.contains(&path)
        || path == "/openapi.json"
        || path == "/docs"
        || path.starts_with("/docs/")
    {
        return Access::Open;
    }
    // The router routes on the first segment: so does this.
    let service = path.strip_prefix('/').unwrap_or(path);
    let service = service.split('/').next().unwrap_or("");
    if service == "grpc.health.v1.Health" || service.starts_with("grpc.reflection.") {
        Access::Open
    } else if service == AUTH_SERVICE {
        Access::Public
    } else {
        Access::Protected
    }
}

/// The peer's address: from tonic's connection info, which the REST
/// gateway carries over into its in-process calls.
fn peer_ip(extensions: &http::Extensions) -> Option<IpAddr> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let tcp = extensions.get::<TcpConnectInfo>().or_else(|| {
        extensions
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .map(TlsConnectInfo::get_ref)
    })?;
    tcp.remote_addr().map(|addr| addr.ip())
}

/// UNAUTHENTICATED with the `www-authenticate: Bearer` challenge (RFC 6750).
pub fn unauthenticated(error: TokenError) -> Status {
    let challenge = match error {
        TokenError::Missing => r#"Bearer realm="ordermesh""#,
        _ => r#"Bearer realm="ordermesh", error="invalid_token""#,
    };
    let mut metadata = MetadataMap::new();
    metadata.insert(
        "www-authenticate",
        AsciiMetadataValue::from_static(challenge),
    );
    Status::with_metadata(tonic::Code::Unauthenticated, error.to_string(), metadata)
}

/// RESOURCE_EXHAUSTED with a `google.rpc.RetryInfo` detail and a
/// `retry-after` entry in whole seconds (at least 1).
pub fn rate_limited(wait: Duration) -> Status {
    retry_later("rate limit exceeded", wait)
}

/// RESOURCE_EXHAUSTED saying `what` and when to try again: `wait` rounded
/// up to whole seconds (at least 1), as a `google.rpc.RetryInfo` detail and
/// a `retry-after` entry (the REST gateway's `Retry-After` header).
pub fn retry_later(what: &str, wait: Duration) -> Status {
    use tonic_types::{ErrorDetails, StatusExt as _};
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let seconds = seconds.max(1);
    let mut metadata = MetadataMap::new();
    metadata.insert(
        "retry-after",
        seconds
            .to_string()
            .parse()
            .expect("digits are a valid header"),
    );
    Status::with_error_details_and_metadata(
        tonic::Code::ResourceExhausted,
        format!("{what}; retry in {seconds} s"),
        ErrorDetails::with_retry_info(Some(Duration::from_secs(seconds))),
        metadata,
    )
}

/// PERMISSION_DENIED naming `field`: the caller may not act for the
/// customer the request names.
pub fn permission_denied(field: &str, value: &str) -> Status {
    Status::permission_denied(format!(
        "permission denied: {field} {value:?} is not the caller's own"
    ))
}

/// Adds [`Authenticate`] to a service.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Auth>,
}

impl AuthLayer {
    pub fn new(auth: Arc<Auth>) -> Self {
        Self { auth }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticate {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// See the module documentation.
#[derive(Clone)]
pub struct Authenticate<S> {
    inner: S,
    auth: Arc<Auth>,
}

impl<S, B, RB> Service<http::Request<B>> for Authenticate<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    B: Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone is fresh (not ready); keep the driven one for this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        // Admission only waits when a token names a kid the JWKS lacks.
        Box::pin(async move {
            match auth.admit(&mut request).await {
                Ok(()) => inner.call(request).await,
                Err(status) => Ok(status.into_http::<RB>()),
            }
        })
    }
}

/// `routes` behind [`AuthLayer`]: every call but health, reflection,
/// AuthService and the operational routes needs a valid bearer token.
/// Routes added later (reflection, by `grpc::serve`; the REST gateway's
/// own pages) are not behind it; the gateway's calls into these routes are.
pub fn protect(routes: Routes, auth: Arc<Auth>) -> Routes {
    Routes::from(routes.into_axum_router().layer(AuthLayer::new(auth)))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tonic_types::StatusExt as _;

    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn env(pairs: &[(&'static str, &str)]) -> HashMap<&'static str, String> {
        pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
    }

    fn hs256_verifier() -> Verifier {
        Verifier::from_config(&AuthConfig::with_secret(SECRET)).unwrap()
    }

    fn sign(claims: &impl Serialize, secret: &str) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn config_defaults_and_names() {
        let c = AuthConfig::from_env(&env(&[])).unwrap();
        assert!(c.secret.is_none() && c.public_key_files.is_empty() && c.jwks_file.is_none());
        assert_eq!(c.rate_limit, RateLimitConfig::default());
        assert_eq!((c.rate_limit.per_second, c.rate_limit.burst), (50, 100));
        assert!(!c.rate_limit.limit_admins);
        let err = Verifier::from_config(&c).unwrap_err();
        assert_eq!(err.name, ENV_JWT_SECRET);
        assert!(err.to_string().contains(ENV_JWT_SECRET), "{err}");

        let c = AuthConfig::from_env(&env(&[
            (ENV_JWT_SECRET, SECRET),
            (ENV_JWT_PUBLIC_KEYS, "a.pem, b.pem"),
            (ENV_JWKS_FILE, "keys.json"),
            (ENV_RATE_LIMIT_PER_S, "0"),
            (ENV_RATE_LIMIT_ADMIN, "true"),
        ]))
        .unwrap();
        assert_eq!(c.secret.as_ref().map(Secret::expose), Some(SECRET));
        assert_eq!(
            c.public_key_files,
            [PathBuf::from("a.pem"), PathBuf::from("b.pem")]
        );
        assert_eq!(c.jwks_file, Some(PathBuf::from("keys.json")));
        assert!(!c.rate_limit.is_enabled() && c.rate_limit.limit_admins);

        for (name, value) in [
            (ENV_JWT_SECRET, "short"),
            (ENV_RATE_LIMIT_PER_S, "-1"),
            (ENV_RATE_LIMIT_BURST, "many"),
            (ENV_RATE_LIMIT_ADMIN, "yes please"),
        ] {
            let err = AuthConfig::from_env(&env(&[(name, value)])).unwrap_err();
            assert_eq!(err.name, name);
            assert!(
                !err.to_string().contains("short"),
                "the secret is not echoed: {err}"
            );
        }
        let err = TokenConfig::from_env(&env(&[(ENV_TOKEN_TTL_S, "0")])).unwrap_err();
        assert_eq!(err.name, ENV_TOKEN_TTL_S);
        assert_eq!(
            TokenConfig::from_env(&env(&[])).unwrap(),
            TokenConfig::default()
        );
        let err = Verifier::from_config(&AuthConfig {
            public_key_files: vec!["/nonexistent/key.pem".into()],
            ..AuthConfig::default()
        })
        .unwrap_err();
        assert_eq!(err.name, ENV_JWT_PUBLIC_KEYS);
    }

    #[test]
    fn minted_tokens_verify() {
        let verifier = hs256_verifier();
        let token = mint_hs256(SECRET, "alice", Role::Customer, Duration::from_secs(60));
        let caller = verifier.verify(&token).unwrap();
        assert_eq!(
            caller,
            Caller {
                subject: "alice".into(),
                role: Role::Customer
            }
        );
        assert!(caller.may_act_for("alice") && !caller.may_act_for("bob"));
        let admin = verifier
            .verify(&mint_hs256(
                SECRET,
                "ops",
                Role::Admin,
                Duration::from_secs(60),
            ))
            .unwrap();
        assert!(admin.is_admin() && admin.may_act_for("bob"));
    }

    #[test]
    fn bad_tokens_are_refused_with_a_reason() {
        let verifier = hs256_verifier();
        let other = mint_hs256(
            "another-secret-of-32-bytes-or-more!",
            "alice",
            Role::Customer,
            Duration::from_secs(60),
        );
        assert_eq!(
            verifier.verify(&other),
            Err(TokenError::Invalid("bad signature"))
        );
        assert_eq!(
            verifier.verify("not.a.jwt"),
            Err(TokenError::Invalid("malformed"))
        );

        let mut claims = Claims::new("alice", Role::Customer, Duration::from_secs(60));
        claims.exp = unix_now() - 600;
        assert_eq!(
            verifier.verify(&sign(&claims, SECRET)),
            Err(TokenError::Expired)
        );
        let mut claims = Claims::new("alice", Role::Customer, Duration::from_secs(60));
        claims.aud = "someone-else".into();
        assert_eq!(
            verifier.verify(&sign(&claims, SECRET)),
            Err(TokenError::Invalid("wrong audience"))
        );
        let mut claims = Claims::new("alice", Role::Customer, Duration::from_secs(60));
        claims.iss = "someone-else".into();
        assert_eq!(
            verifier.verify(&sign(&claims, SECRET)),
            Err(TokenError::Invalid("wrong issuer"))
        );
        let unknown_role = serde_json::json!({
            "sub": "alice", "role": "root", "iss": ISSUER, "aud": AUDIENCE,
            "iat": unix_now(), "exp": unix_now() + 60,
        });
        assert_eq!(
            verifier.verify(&sign(&unknown_role, SECRET)),
            Err(TokenError::Invalid("unexpected claims"))
        );
        // Another algorithm than the keys': no key is tried, "none" is not
        // even an algorithm.
        use base64::Engine as _;
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let claims =
            serde_json::to_value(Claims::new("alice", Role::Admin, Duration::from_secs(60)))
                .unwrap();
        for (alg, reason) in [("RS256", "no key for its algorithm"), ("none", "malformed")] {
            let forged = format!(
                "{}.{}.c2ln",
                b64(serde_json::json!({"alg": alg})),
                b64(claims.clone())
            );
            assert_eq!(
                verifier.verify(&forged),
                Err(TokenError::Invalid(reason)),
                "{alg}"
            );
        }
    }

    #[test]
    fn ed25519_keys_from_pem_and_jwks() {
        use base64::Engine as _;
        use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
        use ed25519_dalek::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};

        let dir = std::env::temp_dir().join(format!("om-auth-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let signing = ed25519_dalek::SigningKey::from_bytes(&rand::random::<[u8; 32]>());
        let private = dir.join("private.pem");
        let public = dir.join("public.pem");
        let jwks = dir.join("jwks.json");
        std::fs::write(
            &private,
            signing.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes(),
        )
        .unwrap();
        std::fs::write(
            &public,
            signing
                .verifying_key()
                .to_public_key_pem(LineEnding::LF)
                .unwrap(),
        )
        .unwrap();
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(signing.verifying_key().as_bytes());
        std::fs::write(
            &jwks,
            serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1", "alg": "EdDSA"}]})
                .to_string(),
        )
        .unwrap();

        let tokens = TokenConfig {
            signing_key_file: Some(private),
            ttl: Duration::from_secs(60),
        };
        let signer = Signer::from_config(&AuthConfig::default(), &tokens).unwrap();
        assert_eq!(signer.algorithm(), Algorithm::EdDSA);
        let issued = signer.issue("alice", Role::Customer);
        assert!(!format!("{issued:?}").contains(&issued.token));

        let from_pem = Verifier::from_config(&AuthConfig {
            public_key_files: vec![public],
            ..AuthConfig::default()
        })
        .unwrap();
        assert_eq!(from_pem.verify(&issued.token).unwrap().subject, "alice");
        signer.check_against(&from_pem).unwrap();
        let from_jwks = Verifier::from_config(&AuthConfig {
            jwks_file: Some(jwks),
            ..AuthConfig::default()
        })
        .unwrap();
        assert_eq!(from_jwks.verify(&issued.token).unwrap().subject, "alice");
        // The HS256 verifier does not take EdDSA tokens, and the signer
        // refuses to start against it.
        assert!(hs256_verifier().verify(&issued.token).is_err());
        let err = signer.check_against(&hs256_verifier()).unwrap_err();
        assert_eq!(err.name, ENV_SIGNING_KEY_FILE);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bearer_headers() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(bearer_token(&headers), Err(TokenError::Missing));
        headers.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer_token(&headers), Err(TokenError::NotBearer));
        headers.insert("authorization", "bearer  abc ".parse().unwrap());
        assert_eq!(bearer_token(&headers), Ok("abc"));
        assert_eq!(format!("{:?}", Bearer::new("abc")), "Bearer(***)");
    }

    #[test]
    fn paths_are_classified() {
        for open in [
            "/metrics",
            "/healthz",
            "/readyz",
            "/openapi.json",
            "/docs",
            "/docs/swagger-ui.css",
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ] {
            assert_eq!(access(open), Access::Open, "{open}");
        }
        assert_eq!(
            access("/ordermesh.auth.v1.AuthService/Login"),
            Access::Public
        );
        for protected in [
            "/ordermesh.order.v1.OrderService/GetOrder",
            "/ordermesh.auth.v1.AuthServiceX/Login",
            "//grpc.health.v1.Health/Check",
            "/docsx",
            "/grpc.health.v1.HealthX/Check",
            "/",
        ] {
            assert_eq!(access(protected), Access::Protected, "{protected}");
        }
    }

    #[test]
    fn buckets_run_out_per_key() {
        let limiter = RateLimiter::new(RateLimitConfig {
            per_second: 1,
            burst: 2,
            limit_admins: false,
        });
        assert!(limiter.check("a").is_ok() && limiter.check("a").is_ok());
        let wait = limiter.check("a").unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(
            limiter.check("b").is_ok(),
            "other keys have their own bucket"
        );
        let admin = Caller {
            subject: "ops".into(),
            role: Role::Admin,
        };
        assert!(!limiter.applies_to(Some(&admin)) && limiter.applies_to(None));
        let off = RateLimiter::new(RateLimitConfig {
            per_second: 0,
            ..RateLimitConfig::default()
        });
        assert!((0..1000).all(|_| off.check("a").is_ok()));
    }

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_and_match() {
        let private = net("10.0.0.0/8");
        assert!(private.contains(ip("10.255.1.2")) && !private.contains(ip("11.0.0.1")));
        assert_eq!(private.to_string(), "10.0.0.0/8");
        let one = net("192.0.2.7");
        assert_eq!(one.to_string(), "192.0.2.7/32");
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        // IPv4 peers of a dual-stack listener arrive IPv4-mapped.
        assert!(one.contains(ip("::ffff:192.0.2.7")));
        assert_eq!(net("::ffff:10.0.0.0/104"), private);
        let v6 = net("2001:db8::/32");
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("10.0.0.1")) && !private.contains(ip("::a00:1")));
        assert!(net("::1").contains(ip("::1")) && !net("::1").contains(ip("::2")));
        for everything in ["0.0.0.0/0", "::/0"] {
            let all = net(everything);
            let family = if everything.contains(':') {
                "2001:db8::9"
            } else {
                "203.0.113.9"
            };
            assert!(all.contains(ip(family)), "{everything}");
        }
        assert!(!net("0.0.0.0/0").contains(ip("2001:db8::9")));

        for (bad, says) in [
            ("10.0.0.1/8", "did you mean 10.0.0.0/8"),
            ("2001:db8::1/32", "did you mean 2001:db8::/32"),
            ("10.0.0.0/33", "0 to 32"),
            ("::/129", "0 to 128"),
            ("10.0.0.0/+8", "0 to 32"),
            ("10.0.0.0/", "0 to 32"),
            ("10.0.0/8", "not an IP address"),
            ("ingress", "not an IP address"),
            ("", "not an IP address"),
        ] {
            let err = bad.parse::<IpNet>().unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn trusted_proxies_come_from_one_variable() {
        let none = AuthConfig::from_env(&env(&[])).unwrap().trusted_proxies;
        assert_eq!(none, TrustedProxies::default());
        assert!(!none.contains(ip("127.0.0.1")));
        let c = AuthConfig::from_env(&env(&[(
            ENV_TRUSTED_PROXIES,
            " 10.0.0.0/8, ,fd00::/8,192.0.2.7 ",
        )]))
        .unwrap();
        assert_eq!(
            c.trusted_proxies.networks(),
            [net("10.0.0.0/8"), net("fd00::/8"), net("192.0.2.7/32")]
        );
        for bad in ["10.0.0.0/8,nonsense", "10.0.0.1/8", "10.0.0.0/40"] {
            let err = AuthConfig::from_env(&env(&[(ENV_TRUSTED_PROXIES, bad)])).unwrap_err();
            assert_eq!(err.name, ENV_TRUSTED_PROXIES, "{bad}");
            assert!(err.to_string().contains(ENV_TRUSTED_PROXIES), "{err}");
        }
    }

    fn forwarded(values: &[&str]) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn the_caller_is_the_right_most_untrusted_forwarded_address() {
        let proxies = TrustedProxies::new(vec![net("10.0.0.0/8"), net("fd00::/8")]);
        let client = |peer: &str, values: &[&str]| proxies.client_ip(ip(peer), &forwarded(values));
        let ingress = "10.0.0.5";

        // An untrusted peer is the caller, whatever it forwards.
        assert_eq!(client("203.0.113.9", &["198.51.100.1"]), ip("203.0.113.9"));
        assert_eq!(client("::ffff:203.0.113.9", &[]), ip("203.0.113.9"));
        // A trusted one without the header: itself.
        assert_eq!(client(ingress, &[]), ip(ingress));
        // The ingress appended the address it saw; what the caller wrote to
        // its left (a spoof) is not believed.
        assert_eq!(client(ingress, &["198.51.100.1"]), ip("198.51.100.1"));
        assert_eq!(
            client(ingress, &["1.1.1.1, 198.51.100.1"]),
            ip("198.51.100.1")
        );
        assert_eq!(
            client(ingress, &["1.1.1.1", "198.51.100.1"]),
            ip("198.51.100.1"),
            "several headers are one list"
        );
        // Trusted hops (a second proxy) are skipped.
        assert_eq!(
            client(ingress, &["1.1.1.1, 198.51.100.1, 10.9.9.9 , fd00::7"]),
            ip("198.51.100.1")
        );
        // Ports, brackets and IPv4-mapped addresses.
        assert_eq!(client(ingress, &["198.51.100.1:4711"]), ip("198.51.100.1"));
        assert_eq!(client(ingress, &["[2001:db8::1]:443"]), ip("2001:db8::1"));
        assert_eq!(client(ingress, &["[2001:db8::1]"]), ip("2001:db8::1"));
        assert_eq!(
            client(ingress, &["::ffff:198.51.100.1"]),
            ip("198.51.100.1")
        );
        // Garbage ends the walk at the last trusted hop: never further left.
        assert_eq!(client(ingress, &["1.1.1.1, unknown"]), ip(ingress));
        assert_eq!(
            client(ingress, &["1.1.1.1, bogus, 10.1.1.1"]),
            ip("10.1.1.1")
        );
        assert_eq!(client(ingress, &["198.51.100.1, "]), ip("198.51.100.1"));
        let mut opaque = http::HeaderMap::new();
        opaque.append(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(b"\xff1.1.1.1").unwrap(),
        );
        assert_eq!(proxies.client_ip(ip(ingress), &opaque), ip(ingress));
        // Only so many hops are walked.
        let chain = vec!["10.0.0.1"; MAX_FORWARDED_HOPS + 1].join(",");
        let chain = format!("198.51.100.1,{chain}");
        assert_eq!(client(ingress, &[&chain]), ip("10.0.0.1"));
        // Nobody trusted: the header is ignored.
        let none = TrustedProxies::default();
        assert_eq!(
            none.client_ip(ip("127.0.0.1"), &forwarded(&["198.51.100.1"])),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn anonymous_buckets_are_per_ipv4_address_and_ipv6_64() {
        assert_eq!(client_bucket(ip("192.0.2.7")), "ip:192.0.2.7");
        assert_eq!(client_bucket(ip("::ffff:192.0.2.7")), "ip:192.0.2.7");
        assert_eq!(
            client_bucket(ip("2001:db8:1:2:aaaa::1")),
            client_bucket(ip("2001:db8:1:2:bbbb::9"))
        );
        assert_eq!(client_bucket(ip("2001:db8:1:2::1")), "ip:2001:db8:1:2::/64");
        assert_ne!(
            client_bucket(ip("2001:db8:1:2::1")),
            client_bucket(ip("2001:db8:1:3::1"))
        );
    }

    #[test]
    fn refusals_carry_their_hints() {
        let status = unauthenticated(TokenError::Missing);
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(
            status
                .metadata()
                .get("www-authenticate")
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("Bearer")
        );
        let status = rate_limited(Duration::from_millis(1500));
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(status.metadata().get("retry-after").unwrap(), "2");
        let retry = status.get_details_retry_info().unwrap();
        assert_eq!(retry.retry_delay, Some(Duration::from_secs(2)));
        let http = rate_limited(Duration::ZERO).into_http::<()>();
        assert_eq!(http.headers()["retry-after"], "1");
        let status = retry_later("too many failed logins", Duration::from_secs(30));
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(status.message(), "too many failed logins; retry in 30 s");
        assert_eq!(status.metadata().get("retry-after").unwrap(), "30");
    }
}
