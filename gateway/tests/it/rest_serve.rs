//! REST over the network: HTTP/1.1 and HTTP/2 (cleartext, prior knowledge)
//! and gRPC on one port, served the way `grpc::serve` serves.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use ordermesh_gateway::rest::RestConfig;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::rest_support::{SERVICE, app_with, echoed};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn http1() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn http2() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

async fn send(
    client: &HttpClient,
    method: Method,
    url: String,
    body: &str,
) -> (StatusCode, http::Version, String) {
    let request = Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .expect("answered in time")
        .expect("a response");
    let status = response.status();
    let version = response.version();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, version, String::from_utf8(bytes.to_vec()).unwrap())
}

/// Serves `router` as `grpc::serve` does (tonic, HTTP/1.1 accepted) on a
/// free port until the token is cancelled.
async fn serve(router: axum::Router) -> (SocketAddr, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let token = shutdown.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .accept_http1(true)
            .add_routes(tonic::service::Routes::from(router))
            .serve_with_incoming_shutdown(incoming, token.cancelled_owned())
            .await
    });
    (addr, shutdown)
}

#[tokio::test]
async fn http1_and_http2_reach_the_same_methods() {
    let (app, _) = app_with(RestConfig::default());
    let (addr, shutdown) = serve(app).await;
    for (client, version) in [
        (http1(), http::Version::HTTP_11),
        (http2(), http::Version::HTTP_2),
    ] {
        let (status, got, body) = send(
            &client,
            Method::POST,
            format!("http://{addr}/v1/shelves/a/books/b:echo"),
            r#"{"big": 1}"#,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(got, version);
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            body["request"],
            echoed(json!({"name": "shelves/a/books/b", "big": "1"}))
        );

        let (status, _, body) =
            send(&client, Method::GET, format!("http://{addr}/nowhere"), "").await;
        assert_eq!(status, 404);
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["code"], 5);
    }
    shutdown.cancel();
}

#[tokio::test]
async fn serve_puts_grpc_and_rest_on_one_port() {
    // The runtime's own serve(), with a server that has no ordermesh
    // service: gRPC works, and REST exposes nothing it does not serve.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_reporter, health) = ordermesh_runtime::grpc::health(SERVICE).await;
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(ordermesh_runtime::grpc::serve(
        listener,
        tonic::service::Routes::new(health),
        None,
        shutdown.clone(),
    ));

    // serve() builds the gateway before it accepts: poll until it does.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let channel = loop {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap();
        match endpoint.connect().await {
            Ok(channel) => break channel,
            Err(e) if tokio::time::Instant::now() > deadline => panic!("no connection: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: SERVICE.into(),
        })
        .await
        .expect("gRPC health check")
        .into_inner()
        .status;
    assert_eq!(status, 1, "SERVING");

    let (status, version, body) = send(
        &http1(),
        Method::GET,
        format!("http://{addr}/openapi.json"),
        "",
    )
    .await;
    assert_eq!((status, version), (StatusCode::OK, http::Version::HTTP_11));
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        doc["paths"],
        json!({}),
        "no ordermesh service is registered here"
    );

    let (status, version, body) = send(
        &http2(),
        Method::GET,
        format!("http://{addr}/v1/orders/x"),
        "",
    )
    .await;
    assert_eq!(
        (status, version),
        (StatusCode::NOT_FOUND, http::Version::HTTP_2)
    );
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["code"], 5);

    let (status, _, body) = send(&http1(), Method::GET, format!("http://{addr}/docs"), "").await;
    assert_eq!(status, 200);
    assert!(body.contains("swagger-ui"));

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("serve returns after shutdown")
        .unwrap()
        .unwrap();
}
