//! Authentication, authorization and rate limits of processor-svc: bearer
//! tokens on every AccountService call (gRPC and REST), AuthService
//! (register, log in), customers confined to their own account, keys from
//! PEM and JWKS files, tokens and passwords kept out of the logs.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use ordermesh_auth::{Claims, Role};
use ordermesh_proto::auth::v1 as auth_pb;
use ordermesh_proto::payment::v1::account_service_client::AccountServiceClient;
use ordermesh_proto::payment::v1::{
    CreateAccountRequest, DepositRequest, GetAccountRequest, ListTransactionsRequest,
};
use ordermesh_testkit::auth_cases::{
    assert_bad_tokens_refused, assert_not_logged, assert_open_without_token, assert_rate_limited,
    assert_refused_without_token, assert_status_json, capture_logs, forged_token, now,
    one_per_second, reflected_services_v1alpha, retry_after,
};
use ordermesh_testkit::{RestAnswer as Answer, rest_call_with, rest_get, rest_post};
use serde_json::json;
use tonic::Code;
use tonic_types::StatusExt as _;

use crate::helpers::{AUTH_SECRET, TestApp, client_with_token, spawn_app, spawn_app_with, token};

type AuthClient = auth_pb::auth_service_client::AuthServiceClient<tonic::transport::Channel>;

fn auth_client(app: &TestApp) -> AuthClient {
    auth_pb::auth_service_client::AuthServiceClient::new(app.channel.clone())
}

fn get_account(customer_id: &str) -> GetAccountRequest {
    GetAccountRequest {
        customer_id: customer_id.into(),
    }
}

/// GetAccount of `customer_id`'s account, sending `token`.
async fn account_as(app: &TestApp, token: String, customer_id: &str) -> Result<(), tonic::Status> {
    let mut client = client_with_token(app.channel.clone(), &token);
    client.get_account(get_account(customer_id)).await.map(drop)
}

#[tokio::test]
async fn calls_without_a_token_are_unauthenticated() {
    let app = spawn_app().await;
    let status = AccountServiceClient::new(app.channel.clone())
        .get_account(get_account("alice"))
        .await
        .unwrap_err();
    assert_refused_without_token(&status, app.addr, "/v1/accounts/alice").await;
    // A malformed header is refused the same way.
    let answer = rest_get(app.addr, "/v1/accounts/alice", Some("")).await;
    assert_status_json(&answer, 401, Code::Unauthenticated);
}

#[tokio::test]
async fn bad_tokens_are_unauthenticated() {
    let app = spawn_app().await;
    let get_alices = |token| account_as(&app, token, "alice");
    assert_bad_tokens_refused(app.addr, "/v1/accounts/alice", Role::Customer, get_alices).await;
}

#[tokio::test]
async fn registered_customers_reach_only_their_own_account() {
    let app = spawn_app().await;
    let mut auth = auth_client(&app);
    let register = |customer_id: &str, password: &str| auth_pb::RegisterRequest {
        customer_id: customer_id.into(),
        password: password.into(),
    };
    let registered = auth
        .register(register("alice", "correct horse battery"))
        .await
        .unwrap()
        .into_inner();
    assert!(!registered.access_token.is_empty());
    let expires = registered.expire_time.unwrap().seconds as u64;
    assert!(
        expires > now() + 3500 && expires <= now() + 3601,
        "{expires}"
    );

    // Taken ids, weak and oversized passwords.
    let status = auth
        .register(register("alice", "another password"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    for password in ["short", &"p".repeat(257)] {
        let status = auth.register(register("bob", password)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("password"), "{status:?}");
        let fields: Vec<String> = status
            .get_details_bad_request()
            .unwrap()
            .field_violations
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(fields, ["password"]);
    }

    // A wrong password and an unknown id are one and the same answer.
    let login = |customer_id: &str, password: &str| auth_pb::LoginRequest {
        customer_id: customer_id.into(),
        password: password.into(),
    };
    let wrong = auth
        .login(login("alice", "wrong password"))
        .await
        .unwrap_err();
    let unknown = auth
        .login(login("nobody", "correct horse battery"))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    assert_eq!(unknown.code(), Code::Unauthenticated);
    assert_eq!(wrong.message(), unknown.message());
    let alice_token = auth
        .login(login("alice", "correct horse battery"))
        .await
        .unwrap()
        .into_inner()
        .access_token;

    // Alice's own account: open it, pay in, read it and its ledger.
    let mut alice = client_with_token(app.channel.clone(), &alice_token);
    alice
        .create_account(CreateAccountRequest {
            customer_id: "alice".into(),
            currency_code: String::new(),
        })
        .await
        .unwrap();
    alice
        .deposit(DepositRequest {
            customer_id: "alice".into(),
            amount_minor: 500,
            deposit_id: String::new(),
        })
        .await
        .unwrap();
    let account = alice.get_account(get_account("alice")).await.unwrap();
    assert_eq!(account.into_inner().account.unwrap().balance_minor, 500);

    // Bob's (opened by an admin) is as good as missing to her.
    let status = alice
        .create_account(CreateAccountRequest {
            customer_id: "bob".into(),
            currency_code: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("customer_id"), "{status:?}");
    app.fund("bob", "USD", 900).await;
    let missing = app
        .client
        .clone()
        .get_account(get_account("carol"))
        .await
        .unwrap_err();
    let missing_message = missing.message().replace("carol", "bob");
    let bobs = [
        alice.get_account(get_account("bob")).await.unwrap_err(),
        alice
            .deposit(DepositRequest {
                customer_id: "bob".into(),
                amount_minor: 1,
                deposit_id: String::new(),
            })
            .await
            .unwrap_err(),
        alice
            .list_transactions(ListTransactionsRequest {
                customer_id: "bob".into(),
                page_size: 10,
                page_token: String::new(),
            })
            .await
            .unwrap_err(),
    ];
    for status in bobs {
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        assert_eq!(status.message(), missing_message);
    }
    assert_eq!(app.balance("bob").await, 900, "her deposit did not land");

    // Over REST, the same rules.
    let answer = rest_get(app.addr, "/v1/accounts/bob", Some(&alice_token)).await;
    assert_status_json(&answer, 404, Code::NotFound);
    let answer = rest_get(app.addr, "/v1/accounts/alice", Some(&alice_token)).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["account"]["balanceMinor"], "500");

    // An admin sees both.
    assert_eq!(app.balance("alice").await, 500);
    assert_eq!(app.balance("bob").await, 900);
}

#[tokio::test]
async fn register_and_login_over_rest() {
    let app = spawn_app().await;
    let body = json!({"customerId": "dora", "password": "a long enough password"});
    let answer = rest_post(app.addr, "/v1/auth:register", None, body.clone()).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert!(answer.body["accessToken"].is_string());
    assert!(answer.body["expireTime"].is_string());
    let answer = rest_post(app.addr, "/v1/auth:register", None, body).await;
    assert_status_json(&answer, 409, Code::AlreadyExists);
    let answer = rest_post(
        app.addr,
        "/v1/auth:login",
        None,
        json!({"customerId": "dora", "password": "a long enough password"}),
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let dora = answer.body["accessToken"].as_str().unwrap().to_owned();
    let answer = rest_post(
        app.addr,
        "/v1/auth:login",
        None,
        json!({"customerId": "dora", "password": "not the password"}),
    )
    .await;
    assert_status_json(&answer, 401, Code::Unauthenticated);
    let answer = rest_post(
        app.addr,
        "/v1/accounts",
        Some(&dora),
        json!({"customerId": "dora"}),
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let answer = rest_post(
        app.addr,
        "/v1/accounts",
        Some(&dora),
        json!({"customerId": "eve"}),
    )
    .await;
    assert_status_json(&answer, 403, Code::PermissionDenied);
}

#[tokio::test]
async fn health_reflection_and_metrics_need_no_token() {
    let app = spawn_app().await;
    let service = processor_svc::GRPC_SERVICE;
    assert_open_without_token(app.channel.clone(), app.addr, service).await;
    let names = reflected_services_v1alpha(app.channel.clone()).await;
    assert!(
        names.contains(&"ordermesh.auth.v1.AuthService".to_owned()),
        "{names:?}"
    );
}

#[tokio::test]
async fn over_the_limit_is_resource_exhausted_with_retry_info() {
    let app = spawn_app_with(|c| c.auth.rate_limit = one_per_second(3, false)).await;
    let alice = token("alice", Role::Customer);
    // Three calls reach the service (the account does not exist), then
    // the bucket is empty.
    let get_alices = || account_as(&app, alice.clone(), "alice");
    let refused = assert_rate_limited(6, 3, Code::NotFound, get_alices).await;
    let retry = refused
        .get_details_retry_info()
        .expect("a RetryInfo detail");
    assert!(
        retry
            .retry_delay
            .is_some_and(|d| d >= Duration::from_secs(1))
    );
    let seconds: u64 = refused
        .metadata()
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(seconds >= 1);

    let answer = rest_get(app.addr, "/v1/accounts/alice", Some(&alice)).await;
    assert_status_json(&answer, 429, Code::ResourceExhausted);
    assert!(retry_after(&answer.headers) >= 1);
    assert_eq!(
        answer.body["details"][0]["@type"],
        "type.googleapis.com/google.rpc.RetryInfo"
    );

    // Another customer has a bucket of its own; admins are not limited.
    let mut bob = client_with_token(app.channel.clone(), &token("bob", Role::Customer));
    assert_eq!(
        bob.get_account(get_account("bob"))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    for _ in 0..10 {
        let status = app
            .client
            .clone()
            .get_account(get_account("bob"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
    }

    // Without a token, AuthService calls share a bucket per peer address.
    let mut auth = auth_client(&app);
    let mut anonymous = Vec::new();
    for _ in 0..6 {
        let login = auth_pb::LoginRequest {
            customer_id: "nobody".into(),
            password: "whatever it is".into(),
        };
        anonymous.push(auth.login(login).await.unwrap_err().code());
    }
    assert_eq!(&anonymous[..3], [Code::Unauthenticated; 3], "{anonymous:?}");
    assert!(
        anonymous[3..].contains(&Code::ResourceExhausted),
        "{anonymous:?}"
    );
}

#[tokio::test]
async fn tokens_and_passwords_never_reach_the_logs() {
    // The test runs on one thread, and so does the service it spawns.
    let (logs, _guard) = capture_logs();

    let app = spawn_app().await;
    let password = "the-password-that-must-not-be-logged";
    let registered = auth_client(&app)
        .register(auth_pb::RegisterRequest {
            customer_id: "frank".into(),
            password: password.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .access_token;
    let mut frank = client_with_token(app.channel.clone(), &registered);
    frank
        .create_account(CreateAccountRequest {
            customer_id: "frank".into(),
            currency_code: String::new(),
        })
        .await
        .unwrap();
    frank.get_account(get_account("frank")).await.unwrap();
    frank.get_account(get_account("bob")).await.unwrap_err();
    let forged = forged_token("frank", Role::Customer);
    account_as(&app, forged.clone(), "frank").await.unwrap_err();
    let answer = rest_get(app.addr, "/v1/accounts/frank", Some(&registered)).await;
    assert_eq!(answer.status, 200);
    auth_client(&app)
        .login(auth_pb::LoginRequest {
            customer_id: "frank".into(),
            password: format!("{password}-wrong"),
        })
        .await
        .unwrap_err();
    drop(app);

    let text = logs.text();
    assert!(
        text.contains("customer registered"),
        "the logs were captured"
    );
    // Nor their signatures alone.
    assert_not_logged(
        &text,
        &[registered.as_str(), forged.as_str(), password, AUTH_SECRET],
    );
}

/// An Ed25519 key pair in files: the private key (PEM), the public key
/// (PEM) and a JWKS with the public key under `kid`.
struct KeyFiles {
    dir: PathBuf,
    private_pem: PathBuf,
    public_pem: PathBuf,
    jwks: PathBuf,
    encoding: jsonwebtoken::EncodingKey,
}

impl KeyFiles {
    fn new(kid: &str) -> Self {
        use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
        use ed25519_dalek::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};
        let dir = std::env::temp_dir().join(format!("om-keys-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = ed25519_dalek::SigningKey::from_bytes(&rand::random::<[u8; 32]>());
        let private = key.to_pkcs8_pem(LineEnding::LF).unwrap();
        let public = key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let x =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes());
        let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"}]});
        let files = Self {
            private_pem: dir.join("private.pem"),
            public_pem: dir.join("public.pem"),
            jwks: dir.join("jwks.json"),
            encoding: jsonwebtoken::EncodingKey::from_ed_pem(private.as_bytes()).unwrap(),
            dir,
        };
        std::fs::File::create(&files.private_pem)
            .unwrap()
            .write_all(private.as_bytes())
            .unwrap();
        std::fs::write(&files.public_pem, public).unwrap();
        std::fs::write(&files.jwks, jwks.to_string()).unwrap();
        files
    }

    fn sign(&self, subject: &str, role: Role, kid: Option<&str>) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(
            &header,
            &Claims::new(subject, role, Duration::from_secs(600)),
            &self.encoding,
        )
        .unwrap()
    }
}

impl Drop for KeyFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn eddsa_tokens_verify_with_pem_and_jwks_keys() {
    let pem_keys = KeyFiles::new("pem-key");
    let jwks_keys = KeyFiles::new("jwks-key");
    let (public_pem, jwks, private_pem) = (
        pem_keys.public_pem.clone(),
        jwks_keys.jwks.clone(),
        pem_keys.private_pem.clone(),
    );
    // Verification by both files (and the HS256 secret); issued tokens are
    // EdDSA, signed with the PEM pair's private key.
    let app = spawn_app_with(move |c| {
        c.auth.public_key_files = vec![public_pem];
        c.auth.jwks_file = Some(jwks);
        c.tokens.signing_key_file = Some(private_pem);
    })
    .await;

    for token in [
        pem_keys.sign("alice", Role::Customer, None),
        jwks_keys.sign("alice", Role::Customer, Some("jwks-key")),
        jwks_keys.sign("alice", Role::Customer, None),
    ] {
        let status = client_with_token(app.channel.clone(), &token)
            .get_account(get_account("alice"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "authenticated: {status:?}");
    }
    // A kid the JWKS does not have, a key nobody configured.
    for token in [
        jwks_keys.sign("alice", Role::Customer, Some("other-key")),
        KeyFiles::new("stranger").sign("alice", Role::Admin, None),
    ] {
        let status = client_with_token(app.channel.clone(), &token)
            .get_account(get_account("alice"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }

    // Issued tokens are signed with AUTH_JWT_SIGNING_KEY_FILE's key.
    let issued = auth_client(&app)
        .register(auth_pb::RegisterRequest {
            customer_id: "grace".into(),
            password: "grace's password".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .access_token;
    let header = jsonwebtoken::decode_header(&issued).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
    client_with_token(app.channel.clone(), &issued)
        .create_account(CreateAccountRequest {
            customer_id: "grace".into(),
            currency_code: String::new(),
        })
        .await
        .unwrap();
}

/// A configuration on nothing (the service fails before connecting).
fn offline_config(pairs: &[(&'static str, String)]) -> processor_svc::Config {
    let env: HashMap<&str, String> = pairs.iter().cloned().collect();
    processor_svc::Config::from_env(&env).unwrap()
}

#[tokio::test]
async fn the_service_refuses_to_start_without_usable_keys() {
    let listener = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap() };
    let run = |config| async move {
        let shutdown = tokio_util::sync::CancellationToken::new();
        tokio::time::timeout(
            Duration::from_secs(10),
            processor_svc::run(config, listener().await, shutdown),
        )
        .await
        .expect("fails at once")
        .unwrap_err()
    };

    let err = run(offline_config(&[])).await;
    assert!(format!("{err:#}").contains("AUTH_JWT_SECRET"), "{err:#}");

    // Tokens signed with a key whose public half nobody verifies with.
    let keys = KeyFiles::new("k");
    let err = run(offline_config(&[
        ("AUTH_JWT_SECRET", AUTH_SECRET.to_owned()),
        (
            "AUTH_JWT_SIGNING_KEY_FILE",
            keys.private_pem.display().to_string(),
        ),
    ]))
    .await;
    assert!(
        format!("{err:#}").contains("AUTH_JWT_SIGNING_KEY_FILE"),
        "{err:#}"
    );
    assert!(!format!("{err:#}").contains(AUTH_SECRET));

    let err = processor_svc::Config::from_env(&HashMap::from([(
        "AUTH_JWT_SECRET",
        "too short".to_owned(),
    )]))
    .unwrap_err();
    assert_eq!(err.name, "AUTH_JWT_SECRET");
    assert!(!err.to_string().contains("too short"), "{err}");
}

/// `POST /v1/auth:login` as sent through a proxy that saw `forwarded_for`.
async fn login_via(
    app: &TestApp,
    forwarded_for: &str,
    customer_id: &str,
    password: &str,
) -> Answer {
    rest_call_with(
        app.addr,
        http::Method::POST,
        "/v1/auth:login",
        &[("x-forwarded-for", forwarded_for)],
        Some(json!({"customerId": customer_id, "password": password})),
    )
    .await
}

async fn register(
    app: &TestApp,
    customer_id: &str,
    password: &str,
) -> Result<String, tonic::Status> {
    auth_client(app)
        .register(auth_pb::RegisterRequest {
            customer_id: customer_id.into(),
            password: password.into(),
        })
        .await
        .map(|r| r.into_inner().access_token)
}

/// `message` as sent through a proxy that saw `forwarded_for`.
fn via<T>(forwarded_for: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-forwarded-for", forwarded_for.parse().unwrap());
    request
}

fn login_request(customer_id: &str, password: &str) -> auth_pb::LoginRequest {
    auth_pb::LoginRequest {
        customer_id: customer_id.into(),
        password: password.into(),
    }
}

#[tokio::test]
async fn register_refuses_an_id_an_admin_opened_an_account_for() {
    let app = spawn_app().await;
    // An admin opens and funds carol's account; carol has no password.
    app.fund("carol", "USD", 900).await;
    assert_eq!(app.ledger("carol").await.len(), 1);

    // Whoever tries to register as carol is refused, before any hashing
    // and over REST alike; no password of theirs was kept.
    let status = register(&app, "carol", "the attacker's password")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    let answer = rest_post(
        app.addr,
        "/v1/auth:register",
        None,
        json!({"customerId": "carol", "password": "the attacker's password"}),
    )
    .await;
    assert_status_json(&answer, 409, Code::AlreadyExists);
    let status = auth_client(&app)
        .login(login_request("carol", "the attacker's password"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    // The insert itself refuses too (a CreateAccount that came after the
    // first check): the store, without that check.
    let hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";
    let err = app
        .store()
        .register("carol", hash, Role::Customer)
        .await
        .unwrap_err();
    assert!(
        matches!(err, processor_svc::Error::AlreadyRegistered(_)),
        "{err:?}"
    );

    // The only token the attacker can get is for another id: carol's
    // balance and ledger are out of its reach, as if missing.
    let mallory = register(&app, "mallory", "mallory's password")
        .await
        .unwrap();
    let mut as_mallory = client_with_token(app.channel.clone(), &mallory);
    let status = as_mallory
        .get_account(get_account("carol"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = as_mallory
        .list_transactions(ListTransactionsRequest {
            customer_id: "carol".into(),
            page_size: 10,
            page_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    for path in ["/v1/accounts/carol", "/v1/accounts/carol/transactions"] {
        let answer = rest_get(app.addr, path, Some(&mallory)).await;
        assert_status_json(&answer, 404, Code::NotFound);
    }
    assert_eq!(app.balance("carol").await, 900);
    assert_eq!(app.ledger("carol").await.len(), 1);
}

#[tokio::test]
async fn concurrent_registers_of_one_id_leave_one_winner() {
    let app = spawn_app().await;
    let attempts = (0..6).map(|i| {
        let app = &app;
        async move { register(app, "zoe", &format!("zoe's password {i}")).await }
    });
    let results = futures::future::join_all(attempts).await;
    let won = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 1, "{results:?}");
    for result in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(result.code(), Code::AlreadyExists, "{result:?}");
    }
}

/// A test service behind a proxy at 127.0.0.1 (the test's own address):
/// per-caller buckets of 1/s with a burst of 3, and `throttle`.
async fn spawn_behind_proxy(throttle: processor_svc::auth::Throttle) -> TestApp {
    spawn_app_with(move |c| {
        c.auth.trusted_proxies =
            ordermesh_auth::TrustedProxies::new(vec!["127.0.0.1".parse().unwrap()]);
        c.auth.rate_limit = one_per_second(3, false);
        c.login.throttle = throttle;
    })
    .await
}

/// The RESOURCE_EXHAUSTED answer of a locked customer id, over REST: its
/// message without the seconds, and the `Retry-After` seconds.
fn locked_answer(answer: &Answer, lockout: Duration) -> (String, u64) {
    assert_status_json(answer, 429, Code::ResourceExhausted);
    assert_eq!(
        answer.body["details"][0]["@type"], "type.googleapis.com/google.rpc.RetryInfo",
        "{:?}",
        answer.body
    );
    let message = answer.body["message"].as_str().unwrap();
    assert!(message.starts_with("too many failed logins"), "{message}");
    let seconds: u64 = answer.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=lockout.as_secs()).contains(&seconds),
        "{seconds} s for a lock of {lockout:?}"
    );
    (message.split(';').next().unwrap().to_owned(), seconds)
}

#[tokio::test]
async fn password_guessing_is_throttled_per_customer_across_addresses() {
    let lockout = Duration::from_secs(3);
    let throttle = processor_svc::auth::Throttle {
        max_failures: 5,
        lockout,
        max_lockout: lockout,
        window: Duration::from_secs(60),
    };
    let app = spawn_behind_proxy(throttle).await;
    let password = "victor's real password";
    register(&app, "victor", password).await.unwrap();
    register(&app, "dora", "dora's password").await.unwrap();
    // A fresh address per call, as a botnet behind the ingress would have.
    let mut addresses = (1..).map(|i: u32| format!("198.51.{}.{}", i / 250, i % 250 + 1));

    // 20 guesses from 20 addresses: the first 5 are checked, then the id is
    // locked; a lock ends after 3 s, so a slow run may check one more per
    // 3 s it took, never more.
    let started = std::time::Instant::now();
    let mut answers = Vec::new();
    for i in 0..20 {
        let xff = addresses.next().unwrap();
        answers.push(login_via(&app, &xff, "victor", &format!("guess {i}")).await);
    }
    let took = started.elapsed();
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(&statuses[..5], [401; 5], "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    let checked = statuses.iter().filter(|s| **s == 401).count() as u64;
    assert!(
        checked <= 5 + took.as_secs() / lockout.as_secs() + 1,
        "{checked} guesses checked in {took:?}: {statuses:?}"
    );
    let limited: Vec<&Answer> = answers.iter().filter(|a| a.status == 429).collect();
    assert!(!limited.is_empty(), "{statuses:?}");
    let (locked_message, _) = locked_answer(limited[0], lockout);
    for answer in &limited {
        // The customer's lock, not a per-address bucket.
        assert_eq!(locked_answer(answer, lockout).0, locked_message);
    }
    // While locked, the right password is refused the same way.
    let answer = login_via(&app, &addresses.next().unwrap(), "victor", password).await;
    if answer.status == 429 {
        locked_answer(&answer, lockout);
    }

    // Another customer logs in meanwhile, over REST and gRPC.
    let answer = login_via(&app, &addresses.next().unwrap(), "dora", "dora's password").await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    auth_client(&app)
        .login(via(
            &addresses.next().unwrap(),
            login_request("dora", "dora's password"),
        ))
        .await
        .unwrap();

    // An id nobody registered locks the same way, word for word.
    let mut unknown = Vec::new();
    for i in 0..12 {
        let xff = addresses.next().unwrap();
        let answer = login_via(&app, &xff, "nobody", &format!("guess {i}")).await;
        let locked = answer.status == 429;
        unknown.push(answer);
        if locked {
            break;
        }
    }
    let statuses: Vec<u16> = unknown.iter().map(|a| a.status).collect();
    assert_eq!(&statuses[..5], [401; 5], "{statuses:?}");
    let locked = unknown.last().unwrap();
    assert_eq!(
        locked.status, 429,
        "an unknown id was not locked: {statuses:?}"
    );
    assert_eq!(locked_answer(locked, lockout).0, locked_message);
    // Over gRPC: RESOURCE_EXHAUSTED with RetryInfo and retry-after.
    let status = auth_client(&app)
        .login(via(
            &addresses.next().unwrap(),
            login_request("nobody", "one more"),
        ))
        .await
        .unwrap_err();
    if status.code() == Code::ResourceExhausted {
        assert!(status.get_details_retry_info().is_some(), "{status:?}");
        assert!(status.metadata().contains_key("retry-after"), "{status:?}");
        assert!(status.message().starts_with(&locked_message), "{status:?}");
    } else {
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }

    // Once the lock is over the right password works again. Attempts
    // while locked count for nothing, so polling cannot extend the lock.
    let token = ordermesh_testkit::eventually(Duration::from_secs(30), || {
        let xff = addresses.next().unwrap();
        let app = &app;
        async move {
            let answer = login_via(app, &xff, "victor", password).await;
            match answer.status {
                200 => Some(answer.body["accessToken"].as_str().unwrap().to_owned()),
                429 => None,
                other => panic!("{other}: {:?}", answer.body),
            }
        }
    })
    .await
    .expect("the right password works once the lock is over");
    client_with_token(app.channel.clone(), &token)
        .create_account(CreateAccountRequest {
            customer_id: "victor".into(),
            currency_code: String::new(),
        })
        .await
        .unwrap();

    // A success forgets the failures: twice 4 wrong and then the right one
    // would be 8 failures in a row otherwise.
    for _ in 0..2 {
        for i in 0..4 {
            let answer = login_via(
                &app,
                &addresses.next().unwrap(),
                "victor",
                &format!("typo {i}"),
            )
            .await;
            assert_eq!(answer.status, 401, "{:?}", answer.body);
        }
        let answer = login_via(&app, &addresses.next().unwrap(), "victor", password).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
    }
}

#[tokio::test]
async fn forwarded_for_names_the_caller_only_from_a_trusted_proxy() {
    // Every call is an unknown id of its own: only the per-caller buckets
    // (1/s, burst 3) can refuse them.
    let ids = std::sync::atomic::AtomicU32::new(0);
    let next_id = || {
        format!(
            "someone-{}",
            ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        )
    };
    let rate_limited = |answer: &Answer| {
        if answer.status == 429 {
            let message = answer.body["message"].as_str().unwrap();
            assert!(message.starts_with("rate limit exceeded"), "{message}");
            true
        } else {
            assert_eq!(answer.status, 401, "{:?}", answer.body);
            false
        }
    };

    // Trusted: each forwarded address has a bucket of its own...
    let app = spawn_behind_proxy(Default::default()).await;
    for i in 0..8 {
        let answer = login_via(&app, &format!("203.0.113.{i}"), &next_id(), "a password").await;
        assert!(!rate_limited(&answer), "call {i}");
    }
    // ... which what the caller writes left of the proxy's entry does not
    // change, and which runs out.
    let mut limited = false;
    for i in 0..6 {
        let spoofed = format!("192.0.2.{i}, 203.0.113.200");
        limited |= rate_limited(&login_via(&app, &spoofed, &next_id(), "a password").await);
    }
    assert!(limited, "one address, six calls, a burst of 3");
    // Nor can a REST caller pass its own as gRPC metadata.
    let mut limited = false;
    for i in 0..6 {
        let answer = rest_call_with(
            app.addr,
            http::Method::POST,
            "/v1/auth:login",
            &[
                ("x-forwarded-for", "203.0.113.201"),
                ("grpc-metadata-x-forwarded-for", &format!("192.0.2.{i}")),
            ],
            Some(json!({"customerId": next_id(), "password": "a password"})),
        )
        .await;
        limited |= rate_limited(&answer);
    }
    assert!(limited, "grpc-metadata-x-forwarded-for is not believed");
    // gRPC carries the header as metadata, the same way.
    let mut auth = auth_client(&app);
    for i in 0..6 {
        let request = via(
            &format!("203.0.114.{i}"),
            login_request(&next_id(), "a password"),
        );
        let status = auth.login(request).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "call {i}: {status:?}");
    }
    drop(app);

    // Untrusted (the proxy list names another network): the header is
    // ignored and all calls share the peer's bucket.
    let app = spawn_app_with(|c| {
        c.auth.trusted_proxies =
            ordermesh_auth::TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]);
        c.auth.rate_limit = one_per_second(3, false);
    })
    .await;
    let mut limited = false;
    for i in 0..6 {
        let answer = login_via(&app, &format!("203.0.113.{i}"), &next_id(), "a password").await;
        limited |= rate_limited(&answer);
    }
    assert!(limited, "six calls from one peer, a burst of 3");
}
