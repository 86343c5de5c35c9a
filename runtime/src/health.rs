//! Liveness and readiness.
//!
//! - `GET /healthz`: 200 while the process serves HTTP at all (alive).
//! - `GET /readyz`: 200 when every dependency is reachable, else 503 naming
//!   the kinds that are not (`not ready: database, broker`). The port may be
//!   public, so the answer carries no error text, host or database name:
//!   the detail is logged instead. The same verdict drives `grpc.health.v1`
//!   (`SERVING` / `NOT_SERVING`, for the service names and `""`).
//! - `GET /metrics`: the Prometheus text of [`crate::metrics`].
//!
//! [`watch`] probes the dependencies (a PostgreSQL pool answers `SELECT 1`,
//! a consumer is connected to its broker, ...) every [`WATCH_INTERVAL`] and
//! flips [`Readiness`] when the verdict changes; when shutdown starts it
//! reports not-ready, so load balancers stop sending work while in-flight
//! work drains.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use deadpool_postgres::Pool;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// How often [`watch`] probes the dependencies.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(500);
/// How long one probe may take before it counts as failed.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether the process is ready, shared by `/readyz`, gRPC health and the
/// watcher. Starts not ready.
#[derive(Clone)]
pub struct Readiness {
    inner: Arc<Inner>,
}

struct Inner {
    ready: AtomicBool,
    /// What is not ready, for the `/readyz` body: dependency kinds only.
    reason: Mutex<String>,
    /// Why, with the errors: logged when it changes, never served.
    detail: Mutex<String>,
    /// gRPC health names to keep in step (`""` is added).
    grpc: Option<(HealthReporter, Vec<String>)>,
}

impl Readiness {
    /// Readiness that also drives `grpc.health.v1` for `services` and the
    /// whole server (`""`); both are set to `NOT_SERVING` until the first
    /// successful probe.
    pub async fn with_grpc(reporter: HealthReporter, services: &[&str]) -> Self {
        let mut names: Vec<String> = services.iter().map(|s| (*s).to_owned()).collect();
        names.push(String::new());
        let readiness = Self::build(Some((reporter, names)));
        readiness.report(false).await;
        readiness
    }

    /// Readiness for a process without gRPC (the relay).
    pub fn http_only() -> Self {
        Self::build(None)
    }

    fn build(grpc: Option<(HealthReporter, Vec<String>)>) -> Self {
        Self {
            inner: Arc::new(Inner {
                ready: AtomicBool::new(false),
                reason: Mutex::new("starting".to_owned()),
                detail: Mutex::new(String::new()),
                grpc,
            }),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::SeqCst)
    }

    /// What is not ready, as `/readyz` says it (empty when ready).
    pub fn reason(&self) -> String {
        self.inner.reason.lock().expect("not poisoned").clone()
    }

    /// Sets the verdict; `failing` names what is unreachable, and is served
    /// by `/readyz`: no error text. Logs changes.
    pub async fn set(&self, ready: bool, failing: &str) {
        self.update(ready, failing, failing).await;
    }

    /// [`Readiness::set`], with `detail` (the errors) logged when it
    /// changes while not ready, and never served.
    async fn update(&self, ready: bool, failing: &str, detail: &str) {
        *self.inner.reason.lock().expect("not poisoned") = failing.to_owned();
        let detail_changed = {
            let mut last = self.inner.detail.lock().expect("not poisoned");
            let changed = *last != detail;
            detail.clone_into(&mut last);
            changed
        };
        let was = self.inner.ready.swap(ready, Ordering::SeqCst);
        if ready && !was {
            tracing::info!("ready: every dependency is reachable");
        } else if !ready && (was || detail_changed) {
            tracing::warn!(failing, detail, "not ready");
        }
        if was != ready {
            self.report(ready).await;
        }
        ::metrics::gauge!(crate::metrics::READY).set(if ready { 1.0 } else { 0.0 });
    }

    async fn report(&self, ready: bool) {
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if let Some((reporter, names)) = &self.inner.grpc {
            for name in names {
                reporter.set_service_status(name, status).await;
            }
        }
    }
}

/// A dependency the watcher checks.
pub enum Probe {
    /// The pool hands out a connection that answers `SELECT 1`; its usage is
    /// published as the pool gauges under `name`.
    Database { name: String, pool: Pool },
    /// Something the caller keeps up to date (e.g. a publisher connection).
    Flag { name: String, up: Arc<AtomicBool> },
    /// A check of another crate's (the broker: `ordermesh_messaging`).
    Check(Box<dyn Check>),
}

/// A dependency checked by its own code.
pub trait Check: Send + Sync {
    /// Whether the dependency answers, within [`PROBE_TIMEOUT`].
    fn check(&self) -> BoxFuture<'_, Result<(), Failing>>;

    /// Releases what the check holds open, at shutdown.
    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

/// What `/readyz` names for a database that does not answer.
const DATABASE: &str = "database";
/// What `/readyz` names for a broker connection that is down (a consumer's
/// or the probe's own).
pub const BROKER: &str = "broker";

/// A probe that failed: the dependency `/readyz` may name, and the error,
/// which is only logged.
#[derive(Debug)]
pub struct Failing {
    dependency: String,
    detail: String,
}

impl Failing {
    /// `dependency` is what `/readyz` names ([`BROKER`], ...); `detail`,
    /// the error, is only logged.
    pub fn new(dependency: &str, detail: String) -> Self {
        Self {
            dependency: dependency.to_owned(),
            detail,
        }
    }
}

/// `error` and its sources, for the log (a pool error alone says only
/// `db error`).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// The public and the logged sides of the failures of one round of probes:
/// the distinct dependencies in probe order, and every detail.
fn summarize(failing: &[Failing]) -> (String, String) {
    let mut names: Vec<&str> = Vec::new();
    for f in failing {
        if !names.contains(&f.dependency.as_str()) {
            names.push(&f.dependency);
        }
    }
    let details: Vec<&str> = failing.iter().map(|f| f.detail.as_str()).collect();
    (names.join(", "), details.join("; "))
}

impl Probe {
    async fn check(&self) -> Result<(), Failing> {
        match self {
            Self::Database { name, pool } => {
                let status = pool.status();
                crate::metrics::record_pool(name, status);
                // Every connection busy: the database is evidently in use;
                // waiting for one would only measure load.
                if status.size >= status.max_size && status.available == 0 {
                    return Ok(());
                }
                let ping = async {
                    let client = pool.get().await.map_err(|e| error_chain(&e))?;
                    client
                        .simple_query("SELECT 1")
                        .await
                        .map_err(|e| error_chain(&e))?;
                    Ok::<(), String>(())
                };
                match tokio::time::timeout(PROBE_TIMEOUT, ping).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(Failing::new(DATABASE, format!("database {name}: {e}"))),
                    Err(_) => Err(Failing::new(
                        DATABASE,
                        format!("database {name}: no answer within {PROBE_TIMEOUT:?}"),
                    )),
                }
            }
            Self::Check(check) => check.check().await,
            Self::Flag { name, up } => {
                if up.load(Ordering::SeqCst) {
                    Ok(())
                } else {
                    // The name is the caller's constant, not an error.
                    Err(Failing::new(name, format!("{name}: down")))
                }
            }
        }
    }
}

/// Probes `probes` every [`WATCH_INTERVAL`] and sets `readiness`, until
/// `shutdown`; then reports not-ready and returns.
pub async fn watch(
    readiness: Readiness,
    probes: Vec<Probe>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => break,
        }
        let mut failing = Vec::new();
        for probe in &probes {
            if let Err(e) = probe.check().await {
                failing.push(e);
            }
        }
        let (public, detail) = summarize(&failing);
        readiness.update(failing.is_empty(), &public, &detail).await;
        crate::metrics::handle().run_upkeep();
    }
    readiness.set(false, "shutting down").await;
    for probe in probes {
        if let Probe::Check(check) = probe {
            check.close().await;
        }
    }
    Ok(())
}

/// `/healthz`, `/readyz` and `/metrics`.
pub fn ops_router(readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(readiness)
}

/// `routes` with the [`ops_router`] beside them, on the same port.
pub fn with_ops_routes(
    routes: tonic::service::Routes,
    readiness: &Readiness,
) -> tonic::service::Routes {
    tonic::service::Routes::from(
        routes
            .into_axum_router()
            .merge(ops_router(readiness.clone())),
    )
}

/// `ready`, or `not ready: ` and the failing dependencies' kinds
/// ([`Readiness::reason`]), never an error text.
async fn readyz(State(readiness): State<Readiness>) -> impl IntoResponse {
    if readiness.is_ready() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", readiness.reason()),
        )
    }
}

async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn readiness_drives_grpc_health() {
        let (reporter, _server) = tonic_health::server::health_reporter();
        let readiness = Readiness::with_grpc(reporter.clone(), &["x.v1.S"]).await;
        assert!(!readiness.is_ready());
        // The gRPC side is checked on the real binaries (e2e readiness test).
        readiness.set(true, "").await;
        assert!(readiness.is_ready());
        readiness.set(false, "database d: refused").await;
        assert_eq!(readiness.reason(), "database d: refused");
    }

    #[tokio::test]
    async fn readyz_names_what_is_down_without_its_error_text() {
        use tower::ServiceExt as _;
        let server = std::env::var("TEST_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let mut config: tokio_postgres::Config = server.parse().unwrap();
        let missing = format!("ordermesh_missing_{}", uuid::Uuid::now_v7().simple());
        config.dbname(&missing);
        let pool = crate::db::pool(config.into(), 1).unwrap();
        let readiness = Readiness::http_only();
        let shutdown = CancellationToken::new();
        let probes = vec![
            Probe::Database {
                name: missing.clone(),
                pool,
            },
            Probe::Flag {
                name: "publisher".into(),
                up: Arc::new(AtomicBool::new(false)),
            },
        ];
        let task = tokio::spawn(watch(readiness.clone(), probes, shutdown.clone()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while readiness.reason() == "starting" {
            assert!(tokio::time::Instant::now() < deadline, "never probed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(readiness.reason(), "database, publisher");
        let detail = readiness.inner.detail.lock().unwrap().clone();
        assert!(
            detail.contains(&missing) && detail.contains("does not exist"),
            "the detail is kept for the log: {detail}"
        );

        let request = http::Request::get("/readyz")
            .body(axum::body::Body::empty())
            .unwrap();
        let response = ops_router(readiness.clone())
            .oneshot(request)
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert_eq!(body, "not ready: database, publisher\n");
        for secret in [missing.as_str(), "does not exist", "db error", "127.0.0.1"] {
            assert!(!body.contains(secret), "{secret:?} in {body:?}");
        }
        shutdown.cancel();
        task.await.unwrap().unwrap();
    }

    #[test]
    fn failures_are_summarized_by_kind_once_each() {
        let failing = [
            Failing::new(DATABASE, "database a: refused".into()),
            Failing::new(BROKER, "broker: refused".into()),
            Failing::new(DATABASE, "database b: timed out".into()),
        ];
        let (public, detail) = summarize(&failing);
        assert_eq!(public, "database, broker");
        assert_eq!(
            detail,
            "database a: refused; broker: refused; database b: timed out"
        );
        assert_eq!(summarize(&[]), (String::new(), String::new()));
    }

    #[tokio::test]
    async fn watch_reports_flags_and_stops_not_ready() {
        let readiness = Readiness::http_only();
        let up = Arc::new(AtomicBool::new(true));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(watch(
            readiness.clone(),
            vec![Probe::Flag {
                name: "publisher".into(),
                up: up.clone(),
            }],
            shutdown.clone(),
        ));
        let became = |want: bool| {
            let r = readiness.clone();
            async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                while r.is_ready() != want {
                    assert!(tokio::time::Instant::now() < deadline, "still {}", !want);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        became(true).await;
        up.store(false, Ordering::SeqCst);
        became(false).await;
        assert!(
            readiness.reason().contains("publisher"),
            "{}",
            readiness.reason()
        );
        up.store(true, Ordering::SeqCst);
        became(true).await;
        shutdown.cancel();
        task.await.unwrap().unwrap();
        assert!(!readiness.is_ready());
    }
}
