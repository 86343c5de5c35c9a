//! What the unit tests share.

use std::collections::HashMap;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use crate::{AuthConfig, Verifier};

pub(crate) const SECRET: &str = "0123456789abcdef0123456789abcdef";

pub(crate) fn env(pairs: &[(&'static str, &str)]) -> HashMap<&'static str, String> {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

pub(crate) fn hs256_verifier() -> Verifier {
    Verifier::from_config(&AuthConfig::with_secret(SECRET)).unwrap()
}

pub(crate) fn sign(claims: &impl Serialize, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}
