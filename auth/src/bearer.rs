//! The `authorization: Bearer <token>` header: read by the layer, sent
//! by clients through [`Bearer`].

use tonic::Status;
use tonic::metadata::AsciiMetadataValue;

use crate::verify::TokenError;

/// The token of an `authorization: Bearer <token>` value.
pub(crate) fn bearer_token(metadata: &http::HeaderMap) -> Result<&str, TokenError> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
