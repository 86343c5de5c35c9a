//! What a REST request passes on to the gRPC call: metadata from its
//! headers, and the deadline of `grpc-timeout`.

use std::time::Duration;

use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderName};
use tokio::time::Instant;

use super::errors::RestError;

/// Request headers passed on to the service as gRPC metadata (`authorization`
/// carries the bearer token; besides
/// `grpc-metadata-<name>`, passed on as `<name>`).
pub const FORWARDED_HEADERS: &[&str] = &[
    "authorization",
    "traceparent",
    "tracestate",
    "x-request-id",
    "x-forwarded-for",
];
/// The deadline header, in gRPC's `grpc-timeout` format (`100m`, `5S`).
pub const TIMEOUT_HEADER: &str = "grpc-timeout";
const METADATA_PREFIX: &str = "grpc-metadata-";
/// How much earlier than `grpc-timeout` the gateway gives up (see
/// `Gateway::handle`): more than tokio's 1 ms timer tick, so the gateway's
/// timer fires in an earlier tick than tonic's.
const OUTER_TIMEOUT_MARGIN: Duration = Duration::from_millis(5);

/// Whether a request is a gRPC call (of any gRPC content type).
pub(super) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The gRPC metadata and deadline a REST request carries.
pub(super) fn request_metadata(
    headers: &HeaderMap,
) -> Result<(HeaderMap, Option<Instant>), RestError> {
    let mut metadata = HeaderMap::new();
    for (name, value) in headers {
        if FORWARDED_HEADERS.contains(&name.as_str()) {
            metadata.append(name.clone(), value.clone());
        } else if let Some(key) = name.as_str().strip_prefix(METADATA_PREFIX) {
            // x-forwarded-for only ever comes from the proxy in front.
            if key.is_empty()
                || key.starts_with("grpc-")
                || key == "content-type"
                || key == "te"
                || key == "x-forwarded-for"
            {
                continue;
            }
            if let Ok(key) = HeaderName::from_bytes(key.as_bytes()) {
                metadata.append(key, value.clone());
            }
        }
    }
    Ok((metadata, request_deadline(headers)?))
}

/// The deadline `grpc-timeout` sets, counted from now and
/// [`OUTER_TIMEOUT_MARGIN`] early (see [`super::Gateway::handle`]).
pub(super) fn request_deadline(headers: &HeaderMap) -> Result<Option<Instant>, RestError> {
    let Some(value) = headers.get(TIMEOUT_HEADER) else {
        return Ok(None);
    };
    let timeout = value
        .to_str()
        .ok()
        .and_then(parse_grpc_timeout)
        .ok_or_else(|| {
            RestError::bad_field(
                TIMEOUT_HEADER,
                "expected 1 to 8 digits and a unit: H, M, S, m (ms), u (µs) or n (ns)",
            )
        })?;
    Ok(Some(
        Instant::now() + timeout.saturating_sub(OUTER_TIMEOUT_MARGIN),
    ))
}

/// Parses a `grpc-timeout` value: up to 8 digits and a unit.
pub fn parse_grpc_timeout(text: &str) -> Option<Duration> {
    // ASCII only, so the unit is the last byte (and splitting cannot land
    // inside a character).
    if !text.is_ascii() {
        return None;
    }
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use http::{HeaderValue, StatusCode};

    use super::*;

    #[test]
    fn grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("5é"), None);
        assert_eq!(parse_grpc_timeout("é"), None);
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        for bad in ["", "m", "100", "123456789m", "1.5S", "-1S", "10x"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }

    #[test]
    fn metadata_from_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("Bearer t"));
        headers.insert("x-request-id", HeaderValue::from_static("r1"));
        headers.insert("grpc-metadata-tenant", HeaderValue::from_static("acme"));
        headers.insert("grpc-metadata-grpc-status", HeaderValue::from_static("0"));
        headers.insert("cookie", HeaderValue::from_static("secret"));
        headers.insert("grpc-timeout", HeaderValue::from_static("2S"));
        let (metadata, deadline) = request_metadata(&headers).unwrap();
        assert_eq!(metadata["authorization"], "Bearer t");
        assert_eq!(metadata["x-request-id"], "r1");
        assert_eq!(metadata["tenant"], "acme");
        assert!(!metadata.contains_key("cookie"));
        assert!(!metadata.contains_key("grpc-status"));
        assert!(deadline.is_some());
        headers.insert("grpc-timeout", HeaderValue::from_static("soon"));
        let err = request_metadata(&headers).unwrap_err();
        assert_eq!(err.http, StatusCode::BAD_REQUEST);
        assert!(err.message.contains("grpc-timeout"));
    }
}
