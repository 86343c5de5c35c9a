//! The relay over TLS: its admin port with a certificate made at test time
//! (`TLS_CERT_FILE`, `TLS_KEY_FILE`), and every connection to its source
//! (claim pool, LISTEN, lease) encrypted under `sslmode=require`.

use std::process::Command;
use std::time::Duration;

use ordermesh_testkit::TestPki;
use ordermesh_testkit::eventually;
use tokio_util::sync::CancellationToken;

use crate::helpers::Harness;

/// curl's `<http_version> <status>` for `url`, trusting `ca`; "000" when
/// no HTTP answer came.
async fn curl(args: &[&str], url: String) -> String {
    let mut command = Command::new("curl");
    command
        .args(["--silent", "--max-time", "10", "--output", "/dev/null"])
        .args(["--write-out", "%{http_version} %{http_code}"])
        .args(args)
        .arg(url);
    tokio::task::spawn_blocking(move || {
        let output = command.output().expect("run curl");
        String::from_utf8_lossy(&output.stdout).into_owned()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn admin_port_serves_https_only_and_source_connections_are_encrypted() {
    let mut h = Harness::new().await;
    let pki = TestPki::new();
    let mut env = h.env(1000);
    let sep = if h.db.url.contains('?') { '&' } else { '?' };
    env.insert("RELAY_SOURCES", format!("{}{sep}sslmode=require", h.db.url));
    env.extend(pki.env());
    let config = relay::Config::from_env(&env).unwrap();
    assert!(config.tls.is_some());
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = admin.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    tokio::spawn(relay::run(config, admin, shutdown.clone()));

    // Rows get published: the pool, the lease and the LISTEN connection work.
    h.write(0, 3, 1).await;
    assert_eq!(h.receive(3, Duration::from_secs(20)).await.len(), 3);
    let connections = eventually(Duration::from_secs(10), || async {
        let client = h.pool.get().await.ok()?;
        let rows = client
            .query(
                r#"SELECT a.application_name, s.ssl
                   FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
                   WHERE a.datname = current_database()
                     AND a.application_name LIKE 'ordermesh-relay%'"#,
                &[],
            )
            .await
            .ok()?;
        let rows: Vec<(String, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        // The claim pool and the listener share a name; the lease has its own.
        let lease = rows
            .iter()
            .any(|(name, _)| name.starts_with("ordermesh-relay-lease/"));
        (lease && rows.len() >= 3).then_some(rows)
    })
    .await
    .expect("the relay's pool, LISTEN and lease connections");
    assert!(
        connections.iter().all(|(_, ssl)| *ssl),
        "unencrypted relay connections: {connections:?}"
    );

    // The admin port over TLS, with HTTP/2 and HTTP/1.1.
    let ca = pki.ca_file.display().to_string();
    for version in ["--http2", "--http1.1"] {
        let expected = if version == "--http2" {
            "2 200"
        } else {
            "1.1 200"
        };
        for path in ["/healthz", "/metrics"] {
            let got = curl(&[version, "--cacert", &ca], format!("https://{addr}{path}")).await;
            assert_eq!(got, expected, "{version} {path}");
        }
    }
    let ready = eventually(Duration::from_secs(20), || async {
        let got = curl(&["--cacert", &ca], format!("https://{addr}/readyz")).await;
        (got == "2 200").then_some(())
    })
    .await;
    assert!(ready.is_some(), "/readyz never answered 200 over TLS");

    // Plaintext, and TLS without trusting the CA, get no answer.
    let plain = curl(&[], format!("http://{addr}/healthz")).await;
    assert!(plain.ends_with("000"), "plaintext was served: {plain}");
    let untrusted = curl(&[], format!("https://{addr}/healthz")).await;
    assert!(
        untrusted.ends_with("000"),
        "an untrusted certificate was accepted: {untrusted}"
    );
}
