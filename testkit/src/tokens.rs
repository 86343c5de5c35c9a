//! Bearer tokens for tests and harnesses: HS256 tokens the services under
//! test accept with their `AUTH_JWT_SECRET`, valid longer than any run.

use std::time::Duration;

use ordermesh_auth::{Bearer, Role, mint_hs256};

/// The HS256 secret (`AUTH_JWT_SECRET`) the services under test verify
/// tokens with, unless a harness picks its own ([`random_secret`]).
pub const TEST_SECRET: &str = "ordermesh-tests-hs256-secret-0123456789abcdef";

/// How long every token minted here is valid: longer than any test, bench
/// or chaos run.
pub const TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// A token for `subject` as `role`, signed with [`TEST_SECRET`].
pub fn token(subject: &str, role: Role) -> String {
    token_signed(TEST_SECRET, subject, role)
}

/// A token for `subject` as `role`, signed with `secret`.
pub fn token_signed(secret: &str, subject: &str, role: Role) -> String {
    mint_hs256(secret, subject, role, TOKEN_TTL)
}

/// An interceptor sending an admin token for `subject` signed with
/// `secret`: admins act for every customer and are not rate limited.
pub fn admin_bearer(secret: &str, subject: &str) -> Bearer {
    Bearer::new(&token_signed(secret, subject, Role::Admin))
}

/// A fresh secret, 64 hex digits, for a harness that starts its own mesh.
pub fn random_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// A token for `test-admin` as an admin, signed with [`TEST_SECRET`]: what
/// the services' test clients act as unless a test says otherwise.
pub fn admin_token() -> String {
    token("test-admin", Role::Admin)
}

/// A channel sending a bearer token on every call: what a generated
/// client is built on (`FooServiceClient::new(authed(channel, token))`).
pub type Authed =
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>;

/// `channel` sending `token` on every call.
pub fn authed(channel: tonic::transport::Channel, token: &str) -> Authed {
    tonic::service::interceptor::InterceptedService::new(channel, Bearer::new(token))
}
