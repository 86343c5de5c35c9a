//! Who is calling, and how often.
//!
//! - Every gRPC call carries `authorization: Bearer <jwt>` ([`Claims`]:
//!   `sub`, `role`, `iss` and `aud` = `ordermesh`, `iat`, `exp`). REST calls
//!   are gRPC calls too: the gateway forwards the HTTP `Authorization`
//!   header as metadata and calls the router in-process, through the same
//!   layer.
//! - [`Verifier`] checks a token against the configured keys: an HS256
//!   shared secret (`AUTH_JWT_SECRET`), RS256 / EdDSA public keys in PEM
//!   files (`AUTH_JWT_PUBLIC_KEYS`), a JWKS file (`AUTH_JWKS_FILE`) and a
//!   JWKS URL (`AUTH_JWKS_URL`, see [`jwks`]: fetched at start, cached for
//!   its `max-age`, refetched on an unknown `kid`, the last good set kept).
//! - [`protect`] puts [`AuthLayer`] on a service's routes: it lets health,
//!   reflection and the operational routes through, authenticates the rest
//!   (UNAUTHENTICATED with `www-authenticate: Bearer`), puts the [`Caller`]
//!   into the request extensions, and applies a token bucket per caller
//!   (RESOURCE_EXHAUSTED with `google.rpc.RetryInfo` and `retry-after`).
//!   `ordermesh.auth.v1.AuthService` (register, log in) needs no token; its
//!   anonymous callers are limited per client address (an IPv6 client per
//!   /64). That address is the TCP peer's, unless the peer is one of the
//!   [`TrustedProxies`] (`AUTH_TRUSTED_PROXIES`, e.g. the ingress): then it
//!   is the right-most address of `X-Forwarded-For` that is not a trusted
//!   proxy itself, so a client cannot pick its own bucket by sending the
//!   header. Handlers find it as [`ClientIp`] in the request extensions.
//! - Handlers authorize with [`Caller::of`] and [`Caller::may_act_for`].
//! - [`Signer`] issues tokens (processor-svc); [`mint_hs256`] is the short
//!   way for test harnesses; [`Bearer`] is a tonic interceptor sending one.
//!
//! Tokens and secrets never reach a log line: nothing here formats them,
//! and [`Secret`](ordermesh_runtime::config::Secret), [`Bearer`] and
//! [`Issued`] print redacted.
//!
//! Layout: [`claims`] (what a token says), [`config`] (where the keys come
//! from), `keys` and [`jwks`] (PEM and JWKS keys, the JWKS URL),
//! [`verify`] (the [`Verifier`]), [`signer`], [`bearer`] (the header),
//! [`caller`], [`client_ip`] (trusted proxies), [`rate_limit`], [`layer`]
//! ([`protect`]) and [`status`] (the refusals). Everything a service uses
//! is re-exported here.

pub mod bearer;
pub mod caller;
pub mod claims;
pub mod client_ip;
pub mod config;
pub mod jwks;
mod keys;
pub mod layer;
pub mod rate_limit;
pub mod signer;
pub mod status;
pub mod verify;

#[cfg(test)]
mod test_support;

pub use bearer::Bearer;
pub use caller::Caller;
pub use claims::{AUDIENCE, Claims, ISSUER, LEEWAY, Role, mint_hs256};
pub use client_ip::{ClientIp, ENV_TRUSTED_PROXIES, IpNet, TrustedProxies};
pub use config::{
    AuthConfig, ENV_JWKS_FILE, ENV_JWKS_REFRESH_MAX_S, ENV_JWKS_REFRESH_MIN_S, ENV_JWKS_URL,
    ENV_JWT_PUBLIC_KEYS, ENV_JWT_SECRET, MIN_SECRET_BYTES,
};
pub use jwks::{JwksRefresh, JwksUrl};
pub use layer::{AUTH_SERVICE, Auth, AuthLayer, Authenticate, protect};
pub use rate_limit::{
    DEFAULT_RATE_LIMIT_ADMIN, DEFAULT_RATE_LIMIT_BURST, DEFAULT_RATE_LIMIT_PER_S,
    ENV_RATE_LIMIT_ADMIN, ENV_RATE_LIMIT_BURST, ENV_RATE_LIMIT_PER_S, RateLimitConfig, RateLimiter,
};
pub use signer::{
    DEFAULT_TOKEN_TTL, ENV_SIGNING_KEY_FILE, ENV_TOKEN_TTL_S, Issued, Signer, TokenConfig,
};
pub use status::{permission_denied, rate_limited, retry_later, unauthenticated};
pub use verify::{TokenError, Verifier};
