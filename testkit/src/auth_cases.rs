//! What the authentication tests of every service check the same way:
//! the tokens a service must refuse, the shape of a refusal over gRPC and
//! REST, the endpoints open without a token, rate-limit probes, and that
//! no secret reaches the logs.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ordermesh_auth::{Claims, RateLimitConfig, Role};
use serde_json::{Value, json};
use tonic::Code;

use crate::logs::CapturedLogs;
use crate::rest::{RestAnswer, rest_get};
use crate::tokens::TEST_SECRET;

/// The paths every service serves without a token.
pub const OPEN_PATHS: [&str; 5] = ["/metrics", "/healthz", "/readyz", "/openapi.json", "/docs"];

/// Per-caller buckets of one call a second with a burst of `burst`, for
/// admins too when `limit_admins`.
pub fn one_per_second(burst: u32, limit_admins: bool) -> RateLimitConfig {
    RateLimitConfig {
        per_second: 1,
        burst,
        limit_admins,
    }
}

/// Asserts that a service serves without a token: gRPC health says
/// `service` is SERVING, and [`OPEN_PATHS`] answer 200.
pub async fn assert_open_without_token(
    channel: tonic::transport::Channel,
    addr: SocketAddr,
    service: &str,
) {
    assert_health_serving(channel, service).await;
    assert_open_paths(addr).await;
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// The claims of a valid 10-minute token for `subject` as `role`, as JSON
/// to edit before [`signed`].
pub fn claims(subject: &str, role: Role) -> Value {
    serde_json::to_value(Claims::new(subject, role, Duration::from_secs(600)))
        .expect("claims are JSON")
}

/// `claims` as an HS256 token signed with `secret`.
pub fn signed(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("an HS256 token")
}

/// A token for `subject` as `role` signed with a secret no service has.
pub fn forged_token(subject: &str, role: Role) -> String {
    signed(
        &claims(subject, role),
        "a-forged-secret-of-at-least-32-bytes!",
    )
}

/// Tokens for `subject` as `role` that a service verifying with
/// [`TEST_SECRET`] must refuse, each with what is wrong with it: a bad
/// signature, expired, the wrong audience, the wrong issuer, not a JWT.
pub fn bad_tokens(subject: &str, role: Role) -> Vec<(&'static str, String)> {
    let mut expired = claims(subject, role);
    expired["iat"] = json!(now() - 7200);
    expired["exp"] = json!(now() - 3600);
    let mut wrong_audience = claims(subject, role);
    wrong_audience["aud"] = json!("someone-else");
    let mut wrong_issuer = claims(subject, role);
    wrong_issuer["iss"] = json!("someone-else");
    vec![
        (
            "bad signature",
            signed(
                &claims(subject, role),
                "another-secret-that-is-32-bytes-long!!",
            ),
        ),
        ("expired", signed(&expired, TEST_SECRET)),
        ("wrong audience", signed(&wrong_audience, TEST_SECRET)),
        ("wrong issuer", signed(&wrong_issuer, TEST_SECRET)),
        ("garbage", "not-a-jwt".to_owned()),
    ]
}

/// Asserts a `google.rpc.Status` JSON error body with `code`, answered
/// with HTTP status `http`.
pub fn assert_status_json(answer: &RestAnswer, http: u16, code: Code) {
    assert_eq!(answer.status, http, "{:?}", answer.body);
    assert_eq!(answer.body["code"], code as i32, "{:?}", answer.body);
    assert!(answer.body["message"].is_string(), "{:?}", answer.body);
    assert!(answer.body["details"].is_array(), "{:?}", answer.body);
}

/// Asserts UNAUTHENTICATED with a `www-authenticate: Bearer...` challenge.
pub fn assert_challenged(status: &tonic::Status) {
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let challenge = status
        .metadata()
        .get("www-authenticate")
        .expect("a challenge");
    assert!(
        challenge.to_str().expect("ASCII").starts_with("Bearer"),
        "{challenge:?}"
    );
}

/// Asserts a 401 UNAUTHENTICATED JSON error with a `Bearer` challenge.
pub fn assert_challenged_rest(answer: &RestAnswer) {
    assert_status_json(answer, 401, Code::Unauthenticated);
    let challenge = answer.headers["www-authenticate"].to_str().expect("ASCII");
    assert!(challenge.starts_with("Bearer"), "{challenge}");
}

/// Asserts that a gRPC call without a token was refused with a challenge
/// ([`assert_challenged`]), and that so is `GET http://{addr}{rest_path}`
/// ([`assert_challenged_rest`]).
pub async fn assert_refused_without_token(
    status: &tonic::Status,
    addr: SocketAddr,
    rest_path: &str,
) {
    assert_challenged(status);
    assert_challenged_rest(&rest_get(addr, rest_path, None).await);
}

/// Asserts that every one of [`bad_tokens`] is refused as UNAUTHENTICATED
/// with a challenge by `grpc` (a call sending the token) and with a 401 by
/// `GET http://{addr}{rest_path}`.
pub async fn assert_bad_tokens_refused<T, F, Fut>(
    addr: SocketAddr,
    rest_path: &str,
    role: Role,
    mut grpc: F,
) where
    T: std::fmt::Debug,
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    for (what, token) in bad_tokens("alice", role) {
        let status = grpc(token.clone()).await.expect_err(what);
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
        assert!(status.metadata().contains_key("www-authenticate"), "{what}");
        let answer = rest_get(addr, rest_path, Some(&token)).await;
        assert_status_json(&answer, 401, Code::Unauthenticated);
    }
}

/// Asserts that [`OPEN_PATHS`] answer 200 without a token.
pub async fn assert_open_paths(addr: SocketAddr) {
    for path in OPEN_PATHS {
        let answer = rest_get(addr, path, None).await;
        assert_eq!(answer.status, 200, "{path}: {:?}", answer.body);
    }
}

/// Asserts that gRPC health says `service` is SERVING, asked without a
/// token.
pub async fn assert_health_serving(channel: tonic::transport::Channel, service: &str) {
    use tonic_health::pb::health_client::HealthClient;
    let health = HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("a health answer");
    assert_eq!(health.into_inner().status, 1, "SERVING");
}

/// Defines `$name(channel)`: the services gRPC reflection (the API version
/// `$version` of it) lists, asked without a token.
macro_rules! reflected_services {
    ($(#[$doc:meta])* $name:ident, $version:ident) => {
        $(#[$doc])*
        pub async fn $name(channel: tonic::transport::Channel) -> Vec<String> {
            use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
            use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
            use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
            let request = tonic_reflection::pb::$version::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            };
            let mut responses = ServerReflectionClient::new(channel)
                .server_reflection_info(futures::stream::iter([request]))
                .await
                .expect("a reflection stream")
                .into_inner();
            let response = responses
                .message()
                .await
                .expect("a reflection answer")
                .expect("one answer");
            let Some(MessageResponse::ListServicesResponse(list)) = response.message_response
            else {
                panic!("not a service list: {response:?}");
            };
            list.service.into_iter().map(|s| s.name).collect()
        }
    };
}

reflected_services!(
    /// The services listed by gRPC reflection `v1`.
    reflected_services_v1,
    v1
);
reflected_services!(
    /// The services listed by gRPC reflection `v1alpha`.
    reflected_services_v1alpha,
    v1alpha
);

/// Makes `calls` calls with `call` and asserts that the first `burst` of
/// them answered `first` (they reached the service) and that a later one
/// was RESOURCE_EXHAUSTED; returns the last such refusal.
pub async fn assert_rate_limited<T, F, Fut>(
    calls: usize,
    burst: usize,
    first: Code,
    mut call: F,
) -> tonic::Status
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let mut codes = Vec::new();
    let mut refused = None;
    for _ in 0..calls {
        match call().await {
            Ok(_) => codes.push(Code::Ok),
            Err(status) => {
                codes.push(status.code());
                if status.code() == Code::ResourceExhausted {
                    refused = Some(status);
                }
            }
        }
    }
    assert!(codes[..burst].iter().all(|c| *c == first), "{codes:?}");
    assert!(
        codes[burst..].contains(&Code::ResourceExhausted),
        "{codes:?}"
    );
    refused.expect("a RESOURCE_EXHAUSTED refusal")
}

/// The seconds of a `retry-after` header.
pub fn retry_after(headers: &http::HeaderMap) -> u64 {
    headers["retry-after"]
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("whole seconds")
}

/// Captures every log line (TRACE and up) of this thread, until the guard
/// is dropped. Tests using it run on one thread, as does the service they
/// spawn.
pub fn capture_logs() -> (CapturedLogs, tracing::subscriber::DefaultGuard) {
    let logs = CapturedLogs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(logs.clone())
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    (logs, guard)
}

/// Asserts that none of `secrets`, nor the last `.`-separated part of one
/// (a token's signature alone), is in `text`.
pub fn assert_not_logged(text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(!text.contains(secret), "{secret} is in the logs");
        let signature = secret.rsplit('.').next().expect("a last part");
        assert!(!text.contains(signature), "part of {secret} is in the logs");
    }
}
