//! One plain HTTP/1.1 call, for tests of the REST gateway and the probes.

use http_body_util::{BodyExt as _, Full};

/// A REST answer as [`rest_call`] returns it: the body as JSON when it is
/// JSON, else as a JSON string of its text.
#[derive(Debug)]
pub struct RestAnswer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: serde_json::Value,
}

/// One HTTP/1.1 call to `http://{addr}{path}`, with `authorization: Bearer
/// <bearer>` when given and a JSON `body` when given.
pub async fn rest_call(
    addr: impl std::fmt::Display,
    method: http::Method,
    path: &str,
    bearer: Option<&str>,
    body: Option<serde_json::Value>,
) -> RestAnswer {
    let authorization = bearer.map(|token| format!("Bearer {token}"));
    let headers: Vec<(&str, &str)> = authorization
        .as_deref()
        .map(|value| ("authorization", value))
        .into_iter()
        .collect();
    rest_call_with(addr, method, path, &headers, body).await
}

/// Like [`rest_call`], with `headers` (e.g. `authorization`,
/// `x-forwarded-for`) instead of a bearer token.
pub async fn rest_call_with(
    addr: impl std::fmt::Display,
    method: http::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<serde_json::Value>,
) -> RestAnswer {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let response = client
        .request(
            request
                .body(Full::new(bytes::Bytes::from(body)))
                .expect("a valid request"),
        )
        .await
        .expect("REST call");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = body_bytes(response.into_body()).await;
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
    });
    RestAnswer {
        status,
        headers,
        body,
    }
}

/// All of an HTTP body's bytes (panics if it cannot be read).
pub async fn body_bytes<B>(body: B) -> bytes::Bytes
where
    B: hyper::body::Body,
    B::Error: std::fmt::Debug,
{
    body.collect().await.expect("read the body").to_bytes()
}

/// `GET http://{addr}{path}` ([`rest_call`] without a body).
pub async fn rest_get(
    addr: impl std::fmt::Display,
    path: &str,
    bearer: Option<&str>,
) -> RestAnswer {
    rest_call(addr, http::Method::GET, path, bearer, None).await
}

/// `POST http://{addr}{path}` with the JSON `body` ([`rest_call`]).
pub async fn rest_post(
    addr: impl std::fmt::Display,
    path: &str,
    bearer: Option<&str>,
    body: serde_json::Value,
) -> RestAnswer {
    rest_call(addr, http::Method::POST, path, bearer, Some(body)).await
}
