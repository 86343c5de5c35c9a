//! The claims an ordermesh token carries, and the short way to mint one.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

/// The `iss` every ordermesh token carries and every service requires.
pub const ISSUER: &str = "ordermesh";
/// The `aud` every ordermesh token carries and every service requires.
pub const AUDIENCE: &str = "ordermesh";
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

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}
