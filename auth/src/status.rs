//! The refusals: UNAUTHENTICATED, RESOURCE_EXHAUSTED and PERMISSION_DENIED.

use std::time::Duration;

use tonic::Status;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};

use crate::verify::TokenError;

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

#[cfg(test)]
mod tests {
    use tonic_types::StatusExt as _;

    use super::*;

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
