//! Small clients for the operational surface of the binaries: an HTTP GET
//! (`/metrics`, `/readyz`), a Prometheus text lookup and gRPC health. (The
//! broker proxy a test cuts is the test kit's `BrokerProxy`.)

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `GET path` on `addr` over HTTP/1.0: the status code and the body.
pub async fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// `/metrics` of `addr`, panicking when it does not answer 200.
pub async fn metrics(addr: &str) -> String {
    let (status, body) = http_get(addr, "/metrics").await.expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of the sample `name{labels}` in a Prometheus text exposition;
/// `labels` must all be present (others may be too).
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            (metric == name
                && labels
                    .iter()
                    .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse().ok())?
        })
        .next()
}

/// The `grpc.health.v1` status of `service` at `addr` (`""`: the server).
pub async fn grpc_health(addr: &str, service: &str) -> Option<i32> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(std::time::Duration::from_secs(1))
        .timeout(std::time::Duration::from_secs(2))
        .connect()
        .await
        .ok()?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .ok()?;
    Some(response.into_inner().status)
}

#[cfg(test)]
mod tests {
    #[test]
    fn samples_are_found_by_name_and_labels() {
        let text =
            "# TYPE a_total counter\na_total{q=\"x\",r=\"y\"} 3\na_total{q=\"z\"} 4\nb 1.5\n";
        assert_eq!(super::sample(text, "a_total", &[("q", "z")]), Some(4.0));
        assert_eq!(super::sample(text, "a_total", &[("r", "y")]), Some(3.0));
        assert_eq!(super::sample(text, "b", &[]), Some(1.5));
        assert_eq!(super::sample(text, "a_total", &[("q", "w")]), None);
    }
}
