//! Issuing tokens: the signing key, their lifetime, the [`Signer`].

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ordermesh_runtime::config::{self, ConfigError, Env};

use crate::claims::{Claims, Role};
use crate::config::{
    AuthConfig, ENV_JWKS_FILE, ENV_JWT_PUBLIC_KEYS, ENV_JWT_SECRET, read_key_file,
};
use crate::verify::Verifier;

pub const ENV_SIGNING_KEY_FILE: &str = "AUTH_JWT_SIGNING_KEY_FILE";
pub const ENV_TOKEN_TTL_S: &str = "AUTH_TOKEN_TTL_S";
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::hs256_verifier;

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
}
