//! Checking a bearer token against the configured keys.

use std::sync::Arc;

use jsonwebtoken::Validation;
use jsonwebtoken::errors::ErrorKind;
use ordermesh_runtime::config::{self, ConfigError};

use crate::caller::Caller;
use crate::claims::{AUDIENCE, Claims, ISSUER, LEEWAY};
use crate::config::{
    AuthConfig, ENV_JWKS_FILE, ENV_JWKS_URL, ENV_JWT_PUBLIC_KEYS, ENV_JWT_SECRET, MIN_SECRET_BYTES,
};
use crate::jwks;
use crate::keys::{self, VerifyingKey};

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
        let mut keys: Vec<_> = config.secret.iter().map(keys::secret_key).collect();
        for path in &config.public_key_files {
            keys.push(keys::pem_key(path)?);
        }
        if let Some(path) = &config.jwks_file {
            keys.extend(keys::jwks_keys(path)?);
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::claims::{Role, mint_hs256, unix_now};
    use crate::test_support::{SECRET, hs256_verifier, sign};

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
}
