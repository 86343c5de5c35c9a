//! What the tests of every crate share, so tests run in parallel against
//! the real local servers without seeing each other:
//!
//! - [`app`]: a service run in-process on a free port until it serves
//!   (what each service's `spawn_app()` builds on);
//! - [`database`]: a fresh database per [`TestDatabase`];
//! - [`broker`]: a unique exchange and queue prefix per [`TestBroker`];
//! - [`amqp_url`]: where an AMQP URL points, and the same URL pointed at a
//!   [`BrokerProxy`] ([`broker_proxy`]) that cuts or freezes the broker;
//! - [`mesh`]: the three real binaries on free ports, for the end-to-end
//!   tests, the bench and the chaos harness; [`leases`] reads the relay's
//!   partition leases; [`tokens`] mints the bearer tokens they accept;
//! - [`logs`] (log capture, span ids), [`rest`] (one HTTP call), [`codec`]
//!   (raw protobuf over gRPC) and [`pki`] (certificates made at test time);
//! - [`auth_cases`]: what every service's authentication tests check alike
//!   (tokens to refuse, refusals, open endpoints, secrets kept out of logs);
//! - [`fuzz`]: the proptest configuration and strategies of every crate's
//!   property tests; [`hostile`]: hostile input for every service.
//!
//! Databases and broker names are removed when dropped (even when a test
//! panics). Names start with `om_test_` / `om-test-` so a sweep can find
//! leftovers of a killed run. Every item is also re-exported here.

pub mod amqp_url;
pub mod app;
pub mod auth_cases;
pub mod broker;
pub mod broker_proxy;
pub mod codec;
pub mod database;
pub mod fuzz;
pub mod hostile;
pub mod leases;
pub mod logs;
pub mod mesh;
pub mod pki;
pub mod rest;
pub mod tokens;

pub use amqp_url::{AmqpUrl, amqp_authority};
pub use broker::{TestBroker, amqp_url, fast_retry_policy, queue_depth, spawn_consumer};
pub use broker_proxy::BrokerProxy;
pub use codec::{RawCodec, assert_undecodable, raw_unary_refused};
pub use database::{TestDatabase, server_url};
pub use leases::LeaseLocks;
pub use logs::{CapturedLogs, init_tracing};
pub use mesh::{Mesh, MeshOptions};
pub use pki::TestPki;
pub use rest::{RestAnswer, body_bytes, rest_call, rest_call_with, rest_get, rest_post};

/// How long a test waits for something asynchronous to happen.
pub const PATIENCE: std::time::Duration = std::time::Duration::from_secs(20);

/// Polls `check` every 20 ms until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: std::time::Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Twelve hex digits, unique enough for a test's resource names.
fn short_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// Runs cleanup on its own thread and runtime, so `Drop` works inside and
/// outside an async test. Failures are printed, never panicked on.
fn run_blocking<F>(future: F)
where
    F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let joined = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(future)
    })
    .join();
    match joined {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("test cleanup failed: {e:#}"),
        Err(_) => eprintln!("test cleanup panicked"),
    }
}
