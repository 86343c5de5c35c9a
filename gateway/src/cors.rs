//! CORS for browser clients of a service port (gRPC-Web, Connect, REST),
//! from an explicit allow-list of origins. With none configured (the
//! default) no CORS header is ever sent, so browsers on other origins are
//! refused by their own same-origin policy.

use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// Request headers a browser may send: the bearer token, the three
/// protocols' own headers and trace context.
pub const ALLOWED_HEADERS: &[&str] = &[
    "authorization",
    "content-type",
    "connect-protocol-version",
    "connect-timeout-ms",
    "grpc-timeout",
    "x-grpc-web",
    "x-user-agent",
    "traceparent",
    "tracestate",
    "x-request-id",
];

/// Response headers a page's script may read: gRPC-Web puts the status in
/// headers when there is no message, and the trace id links a call to
/// its trace.
pub const EXPOSED_HEADERS: &[&str] = &[
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "x-trace-id",
    "traceparent",
];

/// How long a browser may cache a preflight answer.
const MAX_AGE: Duration = Duration::from_secs(2 * 60 * 60);

/// Which origins may call from a browser.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CorsConfig {
    /// Exact origins (scheme, host and port as a browser sends them).
    pub allowed_origins: Vec<HeaderValue>,
}

impl CorsConfig {
    /// Parses a comma-separated list
    /// (`https://app.example.com,http://localhost:5173`); every entry must be
    /// an origin
    /// (`http` or `https`, a host, an optional port, nothing after).
    /// The error names the entry refused and why.
    pub fn parse(list: &str) -> Result<Self, (String, String)> {
        let allowed_origins = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|origin| {
                parse_origin(origin).map_err(|reason| (origin.to_owned(), reason.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { allowed_origins })
    }

    /// The CORS layer, or `None` when no origin is allowed.
    pub fn layer(&self) -> Option<CorsLayer> {
        if self.allowed_origins.is_empty() {
            return None;
        }
        let names = |list: &[&'static str]| -> Vec<HeaderName> {
            list.iter().map(|h| HeaderName::from_static(h)).collect()
        };
        Some(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(self.allowed_origins.clone()))
                .allow_methods([Method::GET, Method::POST])
                .allow_headers(names(ALLOWED_HEADERS))
                .expose_headers(names(EXPOSED_HEADERS))
                .max_age(MAX_AGE),
        )
    }
}

fn parse_origin(origin: &str) -> Result<HeaderValue, &'static str> {
    if origin == "*" {
        return Err("list the origins; a wildcard is not accepted");
    }
    let uri: http::Uri = origin
        .parse()
        .map_err(|_| "expected an origin such as https://app.example.com")?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err("an origin starts with http:// or https://");
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("an origin names a host");
    }
    // Nothing after the authority: `https://a.example/` is not an origin a
    // browser sends.
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    if origin != format!("{}://{authority}", uri.scheme_str().unwrap_or_default()) {
        return Err("an origin has no path (and no trailing slash)");
    }
    HeaderValue::from_str(origin).map_err(|_| "not a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_from_a_list() {
        let none = CorsConfig::parse("").unwrap();
        assert!(none.allowed_origins.is_empty());
        assert!(none.layer().is_none());

        let two = CorsConfig::parse(" https://app.example.com, http://localhost:5173 ,").unwrap();
        assert_eq!(
            two.allowed_origins,
            ["https://app.example.com", "http://localhost:5173"]
        );
        assert!(two.layer().is_some());

        for bad in [
            "*",
            "app.example.com",
            "ftp://app.example.com",
            "https://app.example.com/",
            "https://app.example.com/path",
            "https://",
        ] {
            let (entry, _) = CorsConfig::parse(bad).unwrap_err();
            assert_eq!(entry, bad, "{bad}");
        }
    }
}
