//! The tower layer: who may call what, and how often.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use ordermesh_runtime::config::ConfigError;
use tonic::Status;
use tonic::service::Routes;
use tower::{Layer, Service};

use crate::bearer::bearer_token;
use crate::caller::Caller;
use crate::client_ip::{ClientIp, TrustedProxies, client_bucket};
use crate::config::AuthConfig;
use crate::rate_limit::{RateLimitConfig, RateLimiter};
use crate::status::{rate_limited, unauthenticated};
use crate::verify::Verifier;

/// The gRPC service that hands out tokens; it needs none itself.
pub const AUTH_SERVICE: &str = "ordermesh.auth.v1.AuthService";

// The layer

/// Verification and rate limits of one server.
pub struct Auth {
    verifier: Verifier,
    limiter: RateLimiter,
    trusted_proxies: TrustedProxies,
}

impl Auth {
    pub fn new(verifier: Verifier, rate_limit: RateLimitConfig) -> Self {
        Self {
            verifier,
            limiter: RateLimiter::new(rate_limit),
            trusted_proxies: TrustedProxies::default(),
        }
    }

    /// Believes `X-Forwarded-For` from these peers (see [`TrustedProxies`]).
    pub fn with_trusted_proxies(mut self, trusted_proxies: TrustedProxies) -> Self {
        self.trusted_proxies = trusted_proxies;
        self
    }

    /// Loads the keys of `config` (see [`Verifier::from_config`]).
    pub fn from_config(config: &AuthConfig) -> Result<Self, ConfigError> {
        Ok(Self::new(Verifier::from_config(config)?, config.rate_limit)
            .with_trusted_proxies(config.trusted_proxies.clone()))
    }

    /// Loads the keys of `config` and fetches `AUTH_JWKS_URL` (see
    /// [`Verifier::load`]): what a service calls at start.
    pub async fn load(config: &AuthConfig) -> Result<Self, ConfigError> {
        Ok(Self::new(Verifier::load(config).await?, config.rate_limit)
            .with_trusted_proxies(config.trusted_proxies.clone()))
    }

    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// Lets `request` in (with its [`Caller`] and [`ClientIp`] in the
    /// extensions) or says why not: open paths pass, the rest are
    /// authenticated, then rate-limited.
    async fn admit<B>(&self, request: &mut http::Request<B>) -> Result<(), Status> {
        let access = access(request.uri().path());
        if access == Access::Open {
            return Ok(());
        }
        let caller = self
            .authenticate(access, request.headers(), request.uri().path())
            .await?;
        let client = peer_ip(request.extensions())
            .map(|peer| self.trusted_proxies.client_ip(peer, request.headers()));
        self.limit(caller.as_ref(), client, request.uri().path())?;
        if let Some(ip) = client {
            request.extensions_mut().insert(ClientIp(ip));
        }
        if let Some(caller) = caller {
            request.extensions_mut().insert(caller);
        }
        Ok(())
    }

    /// The caller the bearer token stands for; none on a public path
    /// without a valid one.
    async fn authenticate(
        &self,
        access: Access,
        headers: &http::HeaderMap,
        path: &str,
    ) -> Result<Option<Caller>, Status> {
        let verified = match bearer_token(headers) {
            Ok(token) => self.verifier.verify_fresh(token).await,
            Err(e) => Err(e),
        };
        match (access, verified) {
            (_, Ok(caller)) => Ok(Some(caller)),
            // Registering and logging in need no token; a bad one is ignored.
            (Access::Public, Err(_)) => Ok(None),
            (_, Err(e)) => {
                tracing::debug!(reason = %e, path, "call refused: no valid bearer token");
                Err(unauthenticated(e))
            }
        }
    }

    /// Takes a token from the caller's bucket (its subject's, or else its
    /// address's), unless limits do not apply to it.
    fn limit(
        &self,
        caller: Option<&Caller>,
        client: Option<IpAddr>,
        path: &str,
    ) -> Result<(), Status> {
        if !self.limiter.applies_to(caller) {
            return Ok(());
        }
        let key = match (caller, client) {
            (Some(c), _) => format!("sub:{}", c.subject),
            (None, Some(ip)) => client_bucket(ip),
            (None, None) => "ip:unknown".to_owned(),
        };
        self.limiter.check(&key).map_err(|wait| {
            tracing::debug!(path, "call refused: rate limit");
            rate_limited(wait)
        })
    }
}

/// Whether a path needs a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Health, reflection, `/metrics`, `/healthz`, `/readyz`, the API docs.
    Open,
    /// AuthService: a token is optional, limits apply per peer without one.
    Public,
    /// Everything else.
    Protected,
}

fn access(path: &str) -> Access {
    if ordermesh_runtime::observe::OPS_PATHS.contains(&path)
        || path == "/openapi.json"
        || path == "/docs"
        || path.starts_with("/docs/")
    {
        return Access::Open;
    }
    // The router routes on the first segment: so does this.
    let service = path.strip_prefix('/').unwrap_or(path);
    let service = service.split('/').next().unwrap_or("");
    if service == "grpc.health.v1.Health" || service.starts_with("grpc.reflection.") {
        Access::Open
    } else if service == AUTH_SERVICE {
        Access::Public
    } else {
        Access::Protected
    }
}

/// The peer's address: from tonic's connection info, which the REST
/// gateway carries over into its in-process calls.
fn peer_ip(extensions: &http::Extensions) -> Option<IpAddr> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let tcp = extensions.get::<TcpConnectInfo>().or_else(|| {
        extensions
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .map(TlsConnectInfo::get_ref)
    })?;
    tcp.remote_addr().map(|addr| addr.ip())
}

/// Adds [`Authenticate`] to a service.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Auth>,
}

impl AuthLayer {
    pub fn new(auth: Arc<Auth>) -> Self {
        Self { auth }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticate {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// See the module documentation.
#[derive(Clone)]
pub struct Authenticate<S> {
    inner: S,
    auth: Arc<Auth>,
}

impl<S, B, RB> Service<http::Request<B>> for Authenticate<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    B: Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone is fresh (not ready); keep the driven one for this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        // Admission only waits when a token names a kid the JWKS lacks.
        Box::pin(async move {
            match auth.admit(&mut request).await {
                Ok(()) => inner.call(request).await,
                Err(status) => Ok(status.into_http::<RB>()),
            }
        })
    }
}

/// `routes` behind [`AuthLayer`]: every call but health, reflection,
/// AuthService and the operational routes needs a valid bearer token.
/// Routes added later (reflection, by `grpc::serve`; the REST gateway's
/// own pages) are not behind it; the gateway's calls into these routes are.
pub fn protect(routes: Routes, auth: Arc<Auth>) -> Routes {
    Routes::from(routes.into_axum_router().layer(AuthLayer::new(auth)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_classified() {
        for open in [
            "/metrics",
            "/healthz",
            "/readyz",
            "/openapi.json",
            "/docs",
            "/docs/swagger-ui.css",
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ] {
            assert_eq!(access(open), Access::Open, "{open}");
        }
        assert_eq!(
            access("/ordermesh.auth.v1.AuthService/Login"),
            Access::Public
        );
        for protected in [
            "/ordermesh.order.v1.OrderService/GetOrder",
            "/ordermesh.auth.v1.AuthServiceX/Login",
            "//grpc.health.v1.Health/Check",
            "/docsx",
            "/grpc.health.v1.HealthX/Check",
            "/",
        ] {
            assert_eq!(access(protected), Access::Protected, "{protected}");
        }
    }
}
