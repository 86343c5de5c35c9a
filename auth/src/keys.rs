//! Verification keys: PEM files and JWKS documents.

use std::path::Path;

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};
use ordermesh_runtime::config::{self, ConfigError};

use ordermesh_runtime::config::Secret;

use crate::config::{ENV_JWKS_FILE, ENV_JWT_PUBLIC_KEYS, read_key_file};

/// One key a token may be signed with.
pub(crate) struct VerifyingKey {
    pub(crate) algorithm: Algorithm,
    /// The JWK `kid`; a token naming a kid is checked against it only.
    pub(crate) kid: Option<String>,
    pub(crate) key: DecodingKey,
}

/// The HS256 shared secret.
pub(crate) fn secret_key(secret: &Secret) -> VerifyingKey {
    VerifyingKey {
        algorithm: Algorithm::HS256,
        kid: None,
        key: DecodingKey::from_secret(secret.expose().as_bytes()),
    }
}

/// The RS256 or EdDSA public key of a PEM file.
pub(crate) fn pem_key(path: &Path) -> Result<VerifyingKey, ConfigError> {
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
    Ok(VerifyingKey {
        algorithm,
        kid: None,
        key,
    })
}

/// The RS256 and EdDSA keys of a JWKS file.
pub(crate) fn jwks_keys(path: &Path) -> Result<Vec<VerifyingKey>, ConfigError> {
    let bytes = read_key_file(ENV_JWKS_FILE, path)?;
    jwks_from_bytes(&bytes, ENV_JWKS_FILE, path.display(), false)
}

/// The RS256 and EdDSA keys of a JWKS document from `source`, named by
/// `variable` in errors. `lenient` (an identity provider's set) skips
/// encryption keys and other algorithms instead of refusing the set.
pub(crate) fn jwks_from_bytes(
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
