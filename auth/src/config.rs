//! Where the verification keys come from: the variables both services read.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ordermesh_runtime::config::{self, ConfigError, Env, Secret, Var};

use crate::client_ip::TrustedProxies;
use crate::jwks::{self, JwksRefresh, JwksUrl};
use crate::rate_limit::RateLimitConfig;

pub const ENV_JWT_SECRET: &str = "AUTH_JWT_SECRET";
pub const ENV_JWT_PUBLIC_KEYS: &str = "AUTH_JWT_PUBLIC_KEYS";
pub const ENV_JWKS_FILE: &str = "AUTH_JWKS_FILE";
/// An identity provider's JWKS endpoint (https, or http to loopback).
pub const ENV_JWKS_URL: &str = "AUTH_JWKS_URL";
/// Floor of the JWKS `max-age`, and the interval of unknown-`kid` refetches.
pub const ENV_JWKS_REFRESH_MIN_S: &str = "AUTH_JWKS_REFRESH_MIN_S";
/// Ceiling of the JWKS `max-age`.
pub const ENV_JWKS_REFRESH_MAX_S: &str = "AUTH_JWKS_REFRESH_MAX_S";
/// Shortest HS256 secret accepted: the hash's output size (RFC 7518 3.2).
pub const MIN_SECRET_BYTES: usize = 32;

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

impl AuthConfig {
    /// Reads the variables; key files are read later, by
    /// [`Verifier::from_config`](crate::Verifier::from_config), so `migrate` needs none of them.
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        Ok(Self {
            secret: secret_from_env(env)?,
            public_key_files: config::list(env, ENV_JWT_PUBLIC_KEYS, &[])
                .into_iter()
                .map(PathBuf::from)
                .collect(),
            jwks_file: Some(config::string(env, ENV_JWKS_FILE, ""))
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
            jwks_url: jwks_url_from_env(env)?,
            jwks_refresh: jwks_refresh_from_env(env)?,
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

/// `AUTH_JWT_SECRET`, trimmed; blank is none, short is an error that does
/// not echo it.
fn secret_from_env(env: &impl Env) -> Result<Option<Secret>, ConfigError> {
    let Some(s) = env.var(ENV_JWT_SECRET).filter(|s| !s.trim().is_empty()) else {
        return Ok(None);
    };
    let s = s.trim();
    if s.len() < MIN_SECRET_BYTES {
        return Err(config::invalid(
            ENV_JWT_SECRET,
            "***",
            format!("must be at least {MIN_SECRET_BYTES} bytes"),
        ));
    }
    Ok(Some(Secret::new(s)))
}

fn jwks_url_from_env(env: &impl Env) -> Result<Option<JwksUrl>, ConfigError> {
    match config::string(env, ENV_JWKS_URL, "") {
        url if url.is_empty() => Ok(None),
        url => JwksUrl::parse(&url)
            .map(Some)
            .map_err(|reason| config::invalid(ENV_JWKS_URL, &url, reason)),
    }
}

/// `AUTH_JWKS_REFRESH_MIN_S` (at least 1) and `..._MAX_S` (at least min).
fn jwks_refresh_from_env(env: &impl Env) -> Result<JwksRefresh, ConfigError> {
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
    Ok(JwksRefresh {
        min: Duration::from_secs(min_s),
        max: Duration::from_secs(max_s),
    })
}

pub(crate) fn read_key_file(variable: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| config::invalid(variable, path.display(), e))
}

/// The variables of [`AuthConfig`] (verification and rate limits), as a
/// service's `--help` lists them.
/// At least one key variable is needed for a service to start.
pub const VARS: &[Var] = &[
    Var::unset(
        "AUTH_JWT_SECRET",
        "no HS256 key",
        "text",
        "HS256 verification (and signing) secret, at least 32 bytes",
    ),
    Var::unset(
        "AUTH_JWT_PUBLIC_KEYS",
        "none",
        "paths",
        "PEM public keys (RS256 or EdDSA), comma-separated",
    ),
    Var::unset("AUTH_JWKS_FILE", "none", "path", "a JWKS document"),
    Var::unset(
        "AUTH_JWKS_URL",
        "none",
        "URL",
        "an identity provider's JWKS endpoint (https://, or http:// to loopback only)",
    ),
    Var::new(
        "AUTH_JWKS_REFRESH_MIN_S",
        "30",
        "s",
        "floor of the JWKS max-age, and the interval of unknown-kid refetches",
    ),
    Var::new(
        "AUTH_JWKS_REFRESH_MAX_S",
        "3600",
        "s",
        "ceiling of the JWKS max-age",
    ),
    Var::new(
        "RATE_LIMIT_PER_S",
        "50",
        "requests/s",
        "per-caller token bucket refill (0: no limit)",
    ),
    Var::new("RATE_LIMIT_BURST", "100", "requests", "bucket size"),
    Var::new("RATE_LIMIT_ADMIN", "false", "bool", "limit admins too"),
    Var::unset(
        "AUTH_TRUSTED_PROXIES",
        "none",
        "CIDRs",
        "proxies whose X-Forwarded-For names the caller for rate limits",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::{
        ENV_RATE_LIMIT_ADMIN, ENV_RATE_LIMIT_BURST, ENV_RATE_LIMIT_PER_S, RateLimitConfig,
    };
    use crate::signer::{ENV_TOKEN_TTL_S, TokenConfig};
    use crate::test_support::{SECRET, env};
    use crate::verify::Verifier;

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
}
