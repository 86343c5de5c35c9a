//! TLS listeners (`grpc::serve` with a [`TestPki`] certificate) and
//! `amqps://` through a TLS-terminating proxy in front of the local broker
//! (which has no TLS listener of its own).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ordermesh_messaging::amqp::{self, BrokerConfig, ENV_AMQP_CA_FILE};
use ordermesh_runtime::config::Secret;
use ordermesh_runtime::tls::{self, ENV_CERT_FILE, ENV_KEY_FILE, ServerTls};
use ordermesh_testkit::TestPki;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

fn path(p: &std::path::Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

#[test]
fn the_key_of_another_certificate_is_rejected_by_name() {
    let (a, b) = (TestPki::new(), TestPki::new());
    let err = ServerTls::from_pem_files(path(&a.cert_file), path(&b.key_file)).unwrap_err();
    assert_eq!(err.name, ENV_KEY_FILE, "{err}");
    assert!(err.to_string().contains(path(&b.key_file)), "{err}");
    assert!(err.to_string().contains("is not the key"), "{err}");
}

#[test]
fn swapped_files_are_rejected_by_name() {
    let pki = TestPki::new();
    let err = ServerTls::from_pem_files(path(&pki.key_file), path(&pki.cert_file)).unwrap_err();
    assert_eq!(err.name, ENV_CERT_FILE, "{err}");
    assert!(err.to_string().contains(path(&pki.key_file)), "{err}");
}

#[test]
fn from_env_loads_both_files() {
    let pki = TestPki::new();
    let env: HashMap<&str, String> = pki.env().into_iter().collect();
    assert!(ServerTls::from_env(&env).unwrap().is_some());
}

/// Serves health (and the REST gateway) over TLS; returns the address.
async fn serve_tls(pki: &TestPki, shutdown: &CancellationToken) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_reporter, health) = ordermesh_runtime::grpc::health("test").await;
    tokio::spawn(ordermesh_runtime::grpc::serve(
        listener,
        tonic::service::Routes::new(health),
        Some(pki.server_tls()),
        shutdown.clone(),
    ));
    addr
}

async fn tls_connect(
    pki: &TestPki,
    addr: SocketAddr,
    alpn: &[u8],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(pki.client_config(&[alpn])));
    let tcp = TcpStream::connect(addr).await?;
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

#[tokio::test]
async fn the_grpc_port_speaks_tls_with_h2_and_http1_and_refuses_plaintext() {
    let pki = TestPki::new();
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let addr = serve_tls(&pki, &shutdown).await;

    // serve() builds the REST gateway before it accepts: poll.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut h2 = loop {
        match tls_connect(&pki, addr, b"h2").await {
            Ok(stream) => break stream,
            Err(e) if tokio::time::Instant::now() > deadline => panic!("no TLS connection: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    h2.shutdown().await.ok();

    // HTTP/1.1 over TLS, as curl --http1.1 or Prometheus would.
    let mut http1 = tls_connect(&pki, addr, b"http/1.1").await.unwrap();
    assert_eq!(http1.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    http1
        .write_all(b"GET /openapi.json HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    http1.read_to_string(&mut response).await.ok();
    assert!(response.starts_with("HTTP/1.1 200"), "{response:.200}");

    // A tonic client trusting the test CA.
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&pki.ca_pem)),
        )
        .unwrap()
        .connect()
        .await
        .expect("TLS channel");
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "test".into(),
        })
        .await
        .expect("health over TLS")
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // Plaintext gets no HTTP answer at all.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /openapi.json HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plaintext was answered: {:?}",
        String::from_utf8_lossy(&answer)
    );
    let plain_grpc = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plain_grpc {
        let check = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: "test".into(),
            })
            .await;
        assert!(check.is_err(), "plaintext gRPC was served: {check:?}");
    }
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_ca_is_refused() {
    let (pki, stranger) = (TestPki::new(), TestPki::new());
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let addr = serve_tls(&pki, &shutdown).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tls_connect(&pki, addr, b"h2").await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let err = tls_connect(&stranger, addr, b"h2").await.unwrap_err();
    assert!(
        matches!(
            tls::rustls_error(&err),
            Some(rustls::Error::InvalidCertificate(_))
        ),
        "{err}"
    );
}

#[test]
fn amqps_urls_default_to_port_5671_and_keep_the_frame_limit() {
    let config = |url: &str| BrokerConfig {
        url: Secret::new(url),
        exchange: "x".into(),
        queue_type: Default::default(),
        tls: Default::default(),
    };
    let uri = amqp::uri(&config("amqps://u:p@broker.example/%2f")).unwrap();
    assert_eq!(uri.scheme, lapin::uri::AMQPScheme::AMQPS);
    assert_eq!(uri.authority.port, 5671);
    assert_eq!(uri.authority.host, "broker.example");
    assert_eq!(uri.query.frame_max, Some(amqp::FRAME_MAX));
    let uri = amqp::uri(&config("amqps://u:p@broker.example:5999/v?frame_max=4096")).unwrap();
    assert_eq!(uri.authority.port, 5999);
    assert_eq!(uri.vhost, "v");
    assert_eq!(uri.query.frame_max, Some(4096));
    let uri = amqp::uri(&config("amqp://u:p@broker.example/%2f")).unwrap();
    assert_eq!(uri.scheme, lapin::uri::AMQPScheme::AMQP);
    assert_eq!(uri.authority.port, 5672);
}

#[test]
fn amqp_ca_file_is_handed_to_lapin_as_pem() {
    let pki = TestPki::new();
    let env = HashMap::from([(ENV_AMQP_CA_FILE, pki.ca_file.display().to_string())]);
    let config = ordermesh_messaging::amqp::tls_config(&env).unwrap();
    assert_eq!(config.cert_chain.as_deref(), Some(pki.ca_pem.as_str()));
    assert!(config.identity.is_none());
}

/// Terminates TLS with `pki`'s certificate and forwards to `upstream`.
async fn tls_proxy(pki: &TestPki, upstream: String) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = pki.server_tls().acceptor();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut up) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn amqps_with_the_private_ca_reaches_the_broker() {
    let pki = TestPki::new();
    let plain: lapin::uri::AMQPUri = ordermesh_testkit::amqp_url().parse().unwrap();
    let proxy = tls_proxy(
        &pki,
        format!("{}:{}", plain.authority.host, plain.authority.port),
    )
    .await;
    let user = &plain.authority.userinfo;
    let config = BrokerConfig {
        url: Secret::new(format!(
            "amqps://{}:{}@127.0.0.1:{}/%2f",
            user.username,
            user.password,
            proxy.port()
        )),
        exchange: "x".into(),
        queue_type: Default::default(),
        tls: Default::default(),
    };
    let uri = amqp::uri(&config).unwrap();
    let connect = |tls: lapin::tcp::OwnedTLSConfig| {
        lapin::Connection::connect_uri_with_config(
            uri.clone(),
            lapin::ConnectionProperties::default().with_connection_name("om-test-amqps".into()),
            tls,
            lapin::runtime::default_runtime().unwrap(),
        )
    };

    // Without the CA: the system roots do not know the test CA.
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        connect(ordermesh_messaging::amqp::tls_config(&HashMap::<&str, String>::new()).unwrap()),
    )
    .await
    .expect("an answer");
    assert!(refused.is_err(), "connected without trusting the CA");

    let env = HashMap::from([(ENV_AMQP_CA_FILE, pki.ca_file.display().to_string())]);
    let conn = tokio::time::timeout(
        Duration::from_secs(10),
        connect(ordermesh_messaging::amqp::tls_config(&env).unwrap()),
    )
    .await
    .expect("an answer")
    .expect("amqps through the TLS proxy");
    let channel = conn.create_channel().await.expect("a channel over TLS");
    let queue = channel
        .queue_declare(
            "".into(),
            lapin::options::QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .expect("declare over TLS");
    assert!(queue.name().as_str().starts_with("amq.gen-"));
    conn.close(0, "done".into()).await.ok();
}
