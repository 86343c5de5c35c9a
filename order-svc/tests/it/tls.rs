//! order-svc with `TLS_CERT_FILE` / `TLS_KEY_FILE` (a CA and certificate
//! made at test time): grpcurl, a tonic client and curl reach gRPC, REST
//! and the operational routes over TLS with the CA; plaintext is refused.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use order_svc::Config;
use ordermesh_auth::Role;
use ordermesh_proto::order::v1 as pb;
use ordermesh_testkit::TestPki;
use ordermesh_testkit::{TestBroker, TestDatabase, eventually};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::{AUTH_SECRET, PATIENCE, admin_client, order_request, token};

struct TlsApp {
    addr: SocketAddr,
    channel: Channel,
    pki: TestPki,
    shutdown: CancellationToken,
    _task: JoinHandle<anyhow::Result<()>>,
    _broker: TestBroker,
    _db: TestDatabase,
}

impl Drop for TlsApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn tls_endpoint(addr: SocketAddr, pki: &TestPki) -> Endpoint {
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&pki.ca_pem)))
        .unwrap()
}

/// order-svc serving TLS only, once it reports SERVING over TLS.
async fn spawn_tls_app() -> TlsApp {
    let pki = TestPki::new();
    let db = TestDatabase::new();
    let broker = TestBroker::new();
    let mut env: HashMap<&str, String> = [
        ("ORDER_SVC_ADDR", "127.0.0.1:0".to_owned()),
        ("ORDER_DATABASE_URL", db.url.clone()),
        ("AMQP_URL", broker.config.url.expose().to_owned()),
        ("AMQP_EXCHANGE", broker.config.exchange.clone()),
        ("ORDER_QUEUE", broker.queue("payment-results")),
        ("DB_POOL_SIZE", "2".to_owned()),
        ("SHUTDOWN_GRACE_MS", "5000".to_owned()),
        ("AUTH_JWT_SECRET", AUTH_SECRET.to_owned()),
    ]
    .into_iter()
    .collect();
    env.extend(pki.env());
    let config = Config::from_env(&env).expect("test configuration");
    assert!(config.tls.is_some());

    let listener = tokio::net::TcpListener::bind(config.addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(order_svc::run(config, listener, shutdown.clone()));
    let endpoint = tls_endpoint(addr, &pki);
    let channel = {
        let (task, endpoint) = (&task, &endpoint);
        eventually(PATIENCE, || async move {
            if task.is_finished() {
                return Some(None);
            }
            let channel = endpoint.connect().await.ok()?;
            let mut health = HealthClient::new(channel.clone());
            let check = health.check(HealthCheckRequest {
                service: pb::order_service_server::SERVICE_NAME.into(),
            });
            let status = tokio::time::timeout(Duration::from_secs(1), check)
                .await
                .ok()?
                .ok()?
                .into_inner()
                .status;
            (status == ServingStatus::Serving as i32).then_some(Some(channel))
        })
        .await
    };
    let channel = match channel {
        Some(Some(channel)) => channel,
        Some(None) => panic!("order-svc stopped while starting: {:?}", task.await),
        None => panic!("order-svc did not become healthy over TLS within {PATIENCE:?}"),
    };
    TlsApp {
        addr,
        channel,
        pki,
        shutdown,
        _task: task,
        _broker: broker,
        _db: db,
    }
}

/// grpcurl from `.tools/bin` (deploy/local/tools.sh installs it). Missing
/// is a failure, not a skip: the test is what shows grpcurl works.
fn grpcurl() -> PathBuf {
    let path = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../.tools/bin/grpcurl"
    ));
    assert!(
        path.is_file(),
        "grpcurl is missing at {}: install it with `bash deploy/local/tools.sh grpcurl` \
         (make test does)",
        path.display()
    );
    path
}

/// Runs `program` and returns its stdout, failing with its stderr.
fn run(program: &mut Command) -> String {
    let output = program
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program:?}: {e}"));
    assert!(
        output.status.success(),
        "{program:?} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

#[tokio::test]
async fn grpcurl_and_tonic_call_the_service_over_tls() {
    let app = spawn_tls_app().await;
    let grpcurl = grpcurl();
    let ca = app.pki.ca_file.display().to_string();
    let target = app.addr.to_string();

    // Reflection over TLS, checked against the CA (no -insecure).
    let services = tokio::task::spawn_blocking({
        let (grpcurl, ca, target) = (grpcurl.clone(), ca.clone(), target.clone());
        move || run(Command::new(grpcurl).args(["-cacert", &ca, &target, "list"]))
    })
    .await
    .unwrap();
    assert!(
        services
            .lines()
            .any(|l| l == "ordermesh.order.v1.OrderService"),
        "{services}"
    );

    // A tonic client with the CA creates an order ...
    let created = admin_client(app.channel.clone())
        .create_order(order_request("tls-order-1", "tls-customer"))
        .await
        .expect("CreateOrder over TLS")
        .into_inner()
        .order
        .expect("the order");
    assert_eq!(created.order_id, "tls-order-1");

    // ... which grpcurl reads back.
    let bearer = format!("authorization: Bearer {}", token("tls-test", Role::Admin));
    let body = tokio::task::spawn_blocking(move || {
        run(Command::new(grpcurl).args([
            "-cacert",
            &ca,
            "-H",
            &bearer,
            "-d",
            r#"{"orderId": "tls-order-1"}"#,
            &target,
            "ordermesh.order.v1.OrderService/GetOrder",
        ]))
    })
    .await
    .unwrap();
    assert!(body.contains(r#""orderId": "tls-order-1""#), "{body}");
}

#[tokio::test]
async fn curl_gets_ops_and_rest_routes_over_https_with_h2_and_http1() {
    let app = spawn_tls_app().await;
    admin_client(app.channel.clone())
        .create_order(order_request("tls-rest-1", "tls-customer"))
        .await
        .expect("CreateOrder over TLS");
    let ca = app.pki.ca_file.display().to_string();
    let base = format!("https://{}", app.addr);
    let bearer = format!("Authorization: Bearer {}", token("tls-test", Role::Admin));
    let output = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        for version in ["--http2", "--http1.1"] {
            for path in ["/healthz", "/readyz", "/metrics", "/v1/orders/tls-rest-1"] {
                let out = run(Command::new("curl").args([
                    "--silent",
                    "--show-error",
                    "--fail",
                    version,
                    "--cacert",
                    &ca,
                    "--header",
                    &bearer,
                    "--write-out",
                    "\n%{http_version} %{http_code}",
                    &format!("{base}{path}"),
                ]));
                seen.push((version, path, out));
            }
        }
        seen
    })
    .await
    .unwrap();
    for (version, path, out) in output {
        let status = out.lines().last().unwrap_or_default();
        let expected = if version == "--http2" {
            "2 200"
        } else {
            "1.1 200"
        };
        assert_eq!(status, expected, "{version} {path}: {out}");
        if path.starts_with("/v1/orders/") {
            assert!(out.contains(r#""orderId":"tls-rest-1""#), "{out}");
        }
    }
}

#[tokio::test]
async fn plaintext_clients_are_refused() {
    let app = spawn_tls_app().await;
    // gRPC without TLS.
    let plain = Endpoint::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(5));
    if let Ok(channel) = plain.connect().await {
        let check = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await;
        assert!(check.is_err(), "plaintext gRPC was served: {check:?}");
    }
    // HTTP without TLS.
    let url = format!("http://{}/healthz", app.addr);
    let output = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args([
                "--silent",
                "--max-time",
                "10",
                "--write-out",
                "%{http_code}",
                &url,
            ])
            .output()
            .expect("run curl")
    })
    .await
    .unwrap();
    assert!(!output.status.success(), "plaintext HTTP was served");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "000");
    // TLS with a CA that did not sign the certificate.
    let stranger = TestPki::new();
    let refused = tls_endpoint(app.addr, &stranger).connect().await;
    assert!(refused.is_err(), "an untrusted certificate was accepted");
}
