//! Keys from a JWKS URL (`AUTH_JWKS_URL`) served by a local HTTP server:
//! rotation without a restart, the last good set kept while the provider
//! is down, and unknown kids refetching at most once per interval.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::IntoResponse;
use base64::Engine as _;
use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ordermesh_auth::{
    Auth, AuthConfig, AuthLayer, Claims, ENV_JWKS_URL, JwksRefresh, JwksUrl, Role, TokenError,
    Verifier,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// An Ed25519 key pair published under `kid`.
struct Key {
    kid: String,
    signing: ed25519_dalek::SigningKey,
}

impl Key {
    fn new(kid: &str) -> Self {
        Self {
            kid: kid.to_owned(),
            signing: ed25519_dalek::SigningKey::from_bytes(&rand::random::<[u8; 32]>()),
        }
    }

    fn jwk(&self) -> serde_json::Value {
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(self.signing.verifying_key().as_bytes());
        serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": self.kid, "alg": "EdDSA", "use": "sig"})
    }

    /// A token for `subject` signed with this key, naming `kid`.
    fn token_as(&self, kid: &str, subject: &str) -> String {
        let pem = self.signing.to_pkcs8_pem(LineEnding::LF).unwrap();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(
            &header,
            &Claims::new(subject, Role::Customer, Duration::from_secs(300)),
            &EncodingKey::from_ed_pem(pem.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    fn token(&self, subject: &str) -> String {
        self.token_as(&self.kid, subject)
    }
}

/// What the provider serves, and how often it was asked.
struct Provider {
    body: Mutex<String>,
    cache_control: String,
    /// Answer 503, as a provider in trouble does.
    failing: AtomicBool,
    requests: AtomicUsize,
}

async fn serve_jwks(State(provider): State<Arc<Provider>>) -> axum::response::Response {
    provider.requests.fetch_add(1, Ordering::SeqCst);
    if provider.failing.load(Ordering::SeqCst) {
        return http::StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let body = provider.body.lock().unwrap().clone();
    (
        [
            (http::header::CONTENT_TYPE, "application/jwk-set+json"),
            (http::header::CACHE_CONTROL, provider.cache_control.as_str()),
        ],
        body,
    )
        .into_response()
}

/// A JWKS endpoint on a free loopback port until `stop` is cancelled.
struct JwksServer {
    provider: Arc<Provider>,
    url: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(keys: &[&Key], cache_control: &str) -> Self {
        let provider = Arc::new(Provider {
            body: Mutex::new(jwks(keys)),
            cache_control: cache_control.to_owned(),
            failing: AtomicBool::new(false),
            requests: AtomicUsize::new(0),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/realms/test/protocol/openid-connect/certs",
            listener.local_addr().unwrap()
        );
        let router = axum::Router::new()
            .route(
                "/realms/test/protocol/openid-connect/certs",
                axum::routing::get(serve_jwks),
            )
            .with_state(provider.clone());
        let stop = CancellationToken::new();
        let shutdown = stop.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
                .unwrap();
        });
        Self {
            provider,
            url,
            stop,
            task,
        }
    }

    fn publish(&self, keys: &[&Key]) {
        *self.provider.body.lock().unwrap() = jwks(keys);
    }

    fn requests(&self) -> usize {
        self.provider.requests.load(Ordering::SeqCst)
    }

    async fn take_down(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

fn jwks(keys: &[&Key]) -> String {
    let keys: Vec<_> = keys.iter().map(|k| k.jwk()).collect();
    serde_json::json!({ "keys": keys }).to_string()
}

fn config(url: &str, min: Duration) -> AuthConfig {
    AuthConfig {
        jwks_url: Some(JwksUrl::parse(url).unwrap()),
        jwks_refresh: JwksRefresh {
            min,
            max: Duration::from_secs(3600),
        },
        ..AuthConfig::default()
    }
}

/// Polls `condition` every 20 ms until it holds or 15 s have passed.
async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const UNKNOWN_KID: TokenError = TokenError::Invalid("unknown key id");

#[tokio::test]
async fn rotated_keys_are_fetched_and_the_last_good_set_outlives_the_provider() {
    let (k1, k2) = (Key::new("k1"), Key::new("k2"));
    let server = JwksServer::start(&[&k1], "public, max-age=3600").await;
    // Refetches on unknown kids at most once a second.
    let interval = Duration::from_secs(1);
    let verifier = Verifier::load(&config(&server.url, interval))
        .await
        .unwrap();
    assert_eq!(server.requests(), 1, "fetched once at start");
    let caller = verifier.verify_fresh(&k1.token("alice")).await.unwrap();
    assert_eq!(caller.subject, "alice");
    for _ in 0..20 {
        verifier.verify_fresh(&k1.token("alice")).await.unwrap();
    }
    assert_eq!(
        server.requests(),
        1,
        "max-age=3600: known kids fetch nothing"
    );

    // The provider rotates to k2; its tokens are taken without a restart,
    // once the interval since the start's fetch has passed.
    server.publish(&[&k2]);
    let t2 = k2.token("bob");
    eventually("a token of the rotated key to verify", || async {
        match verifier.verify_fresh(&t2).await {
            Ok(caller) => caller.subject == "bob",
            Err(e) => {
                assert_eq!(e, UNKNOWN_KID);
                false
            }
        }
    })
    .await;
    // k1 left the set.
    assert_eq!(verifier.verify(&k1.token("alice")), Err(UNKNOWN_KID));

    // A flood of forged kids: every token refused, and the provider asked
    // at most once per interval while it lasts.
    let before = server.requests();
    let started = Instant::now();
    let forged: Vec<String> = (0..300)
        .map(|i| k2.token_as(&format!("forged-{i}"), "mallory"))
        .collect();
    let results = futures::future::join_all(forged.iter().map(|t| verifier.verify_fresh(t))).await;
    let elapsed = started.elapsed();
    assert!(results.iter().all(|r| *r == Err(UNKNOWN_KID)));
    let fetches = server.requests() - before;
    let allowed = 1 + (elapsed.as_millis() / interval.as_millis()) as usize;
    assert!(
        fetches <= allowed,
        "{fetches} fetches for 300 forged kids in {elapsed:?} (at most {allowed})"
    );
    assert!(verifier.verify_fresh(&t2).await.is_ok());

    // The provider fails: a refetch is tried (an unknown kid, after the
    // interval), fails, and k2 still verifies.
    server.provider.failing.store(true, Ordering::SeqCst);
    let asked = server.requests();
    let unknown = k2.token_as("k3", "mallory");
    eventually("a refetch against the failing provider", || async {
        assert_eq!(verifier.verify_fresh(&unknown).await, Err(UNKNOWN_KID));
        server.requests() > asked
    })
    .await;
    assert_eq!(verifier.verify_fresh(&t2).await.unwrap().subject, "bob");

    // Gone altogether: the last good keys still verify.
    server.take_down().await;
    tokio::time::sleep(interval).await;
    assert_eq!(verifier.verify_fresh(&unknown).await, Err(UNKNOWN_KID));
    assert_eq!(verifier.verify_fresh(&t2).await.unwrap().subject, "bob");
    assert_eq!(verifier.verify(&t2).unwrap().subject, "bob");
}

/// The status a call through [`AuthLayer`] got: `None` when it reached the
/// service behind it.
async fn call_through_layer(auth: &Arc<Auth>, token: &str) -> Option<String> {
    use tower::{Layer as _, ServiceExt as _};
    let inner = tower::service_fn(|_: http::Request<()>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
    });
    let request = http::Request::post("/ordermesh.order.v1.OrderService/GetOrder")
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .unwrap();
    let response = AuthLayer::new(auth.clone())
        .layer(inner)
        .oneshot(request)
        .await
        .unwrap();
    response
        .headers()
        .get("grpc-message")
        .map(|m| m.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn the_auth_layer_takes_a_rotated_key_without_a_restart() {
    let (k1, k2) = (Key::new("k1"), Key::new("k2"));
    let server = JwksServer::start(&[&k1], "max-age=600").await;
    let auth = Arc::new(
        Auth::load(&config(&server.url, Duration::from_millis(200)))
            .await
            .unwrap(),
    );
    assert_eq!(call_through_layer(&auth, &k1.token("alice")).await, None);
    server.publish(&[&k1, &k2]);
    let t2 = k2.token("bob");
    eventually("the layer to admit the rotated key", || async {
        match call_through_layer(&auth, &t2).await {
            None => true,
            Some(refused) => {
                assert!(refused.contains("unknown%20key%20id"), "{refused}");
                false
            }
        }
    })
    .await;
    server.take_down().await;
    assert_eq!(call_through_layer(&auth, &t2).await, None);
    assert_eq!(call_through_layer(&auth, &k1.token("alice")).await, None);
}

#[tokio::test]
async fn an_expired_max_age_refreshes_in_the_background() {
    let (k1, k2) = (Key::new("k1"), Key::new("k2"));
    // no-store: the set is used for the shortest interval only.
    let server = JwksServer::start(&[&k1], "no-store").await;
    let verifier = Verifier::load(&config(&server.url, Duration::from_millis(200)))
        .await
        .unwrap();
    server.publish(&[&k1, &k2]);
    // Known kids only: the refresh comes from the set running out, and the
    // call that notices it is answered with the keys at hand.
    let t1 = k1.token("alice");
    eventually("a background refresh", || async {
        assert!(verifier.verify(&t1).is_ok());
        server.requests() >= 2
    })
    .await;
    let t2 = k2.token("bob");
    eventually("the refreshed set to hold k2", || async {
        verifier.verify(&t2).is_ok()
    })
    .await;
    server.take_down().await;
}

#[tokio::test]
async fn a_provider_down_at_start_is_an_error_naming_the_variable() {
    // A port nobody listens on.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    drop(listener);
    let err = Verifier::load(&config(&url, Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert_eq!(err.name, ENV_JWKS_URL);
    assert!(err.to_string().contains("first fetch"), "{err}");

    // A provider answering something else than a JWKS.
    let server = JwksServer::start(&[], "max-age=60").await;
    let err = Verifier::load(&config(&server.url, Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert_eq!(err.name, ENV_JWKS_URL);
    assert!(err.to_string().contains("no RS256 or EdDSA"), "{err}");
    server.take_down().await;
}

#[test]
fn the_url_and_bounds_are_checked_by_name() {
    let env = |pairs: &[(&'static str, &str)]| -> HashMap<&'static str, String> {
        pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
    };
    let c = AuthConfig::from_env(&env(&[
        (
            ENV_JWKS_URL,
            "https://idp.example.com/realms/x/protocol/openid-connect/certs",
        ),
        ("AUTH_JWKS_REFRESH_MIN_S", "10"),
        ("AUTH_JWKS_REFRESH_MAX_S", "600"),
    ]))
    .unwrap();
    assert!(c.jwks_url.is_some());
    assert_eq!(
        c.jwks_refresh,
        JwksRefresh {
            min: Duration::from_secs(10),
            max: Duration::from_secs(600)
        }
    );
    assert_eq!(
        AuthConfig::from_env(&env(&[])).unwrap().jwks_refresh,
        JwksRefresh::default()
    );
    for (name, pairs) in [
        (
            ENV_JWKS_URL,
            vec![(ENV_JWKS_URL, "http://idp.example.com/jwks")],
        ),
        (ENV_JWKS_URL, vec![(ENV_JWKS_URL, "idp.example.com/jwks")]),
        (
            "AUTH_JWKS_REFRESH_MIN_S",
            vec![("AUTH_JWKS_REFRESH_MIN_S", "0")],
        ),
        (
            "AUTH_JWKS_REFRESH_MAX_S",
            vec![
                ("AUTH_JWKS_REFRESH_MIN_S", "60"),
                ("AUTH_JWKS_REFRESH_MAX_S", "30"),
            ],
        ),
    ] {
        let err = AuthConfig::from_env(&env(&pairs)).unwrap_err();
        assert_eq!(err.name, name, "{err}");
    }
    // A URL alone is enough key configuration.
    let c = AuthConfig::from_env(&env(&[(ENV_JWKS_URL, "http://127.0.0.1:9/jwks")])).unwrap();
    assert!(Verifier::from_config(&c).is_ok());
}
