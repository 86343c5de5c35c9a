//! Prometheus metrics: every metric name the binaries record, with its help
//! text, and the process-wide recorder that `/metrics` renders. The recorder
//! is installed on first use ([`handle`]); recording before that (or in a
//! process that never serves `/metrics`) is a no-op.
//!
//! Names follow Prometheus practice: `ordermesh_` prefix, `_total` on
//! counters, base units (`_seconds`) with real histogram buckets.

use std::sync::OnceLock;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// gRPC calls served; labels `service`, `method`, `code` (e.g. `OK`).
pub const RPC_REQUESTS: &str = "ordermesh_rpc_requests_total";
/// gRPC calls that ended with a code other than `OK`; same labels.
pub const RPC_ERRORS: &str = "ordermesh_rpc_errors_total";
/// Time from request to response headers; labels `service`, `method`.
pub const RPC_DURATION: &str = "ordermesh_rpc_duration_seconds";

/// Deliveries a consumer applied (acknowledged, not duplicates); label `queue`.
pub const CONSUMER_PROCESSED: &str = "ordermesh_consumer_processed_total";
/// Deliveries skipped because the inbox had seen their id; label `queue`.
pub const CONSUMER_DUPLICATES: &str = "ordermesh_consumer_duplicates_total";
/// Deliveries sent to a retry queue after a transient failure; label `queue`.
pub const CONSUMER_RETRIES: &str = "ordermesh_consumer_retries_total";
/// Deliveries parked in the dead-letter queue (poison, out of attempts, or
/// without a message id); label `queue`.
pub const CONSUMER_DEAD_LETTERED: &str = "ordermesh_consumer_dead_lettered_total";
/// Handler time per delivery; label `queue`.
pub const CONSUMER_DURATION: &str = "ordermesh_consumer_handle_duration_seconds";

/// Outbox rows waiting to be published; label `source` (the database).
pub const RELAY_BACKLOG: &str = "ordermesh_relay_outbox_backlog_rows";
/// Age of the oldest unpublished outbox row, 0 when empty; label `source`.
pub const RELAY_OLDEST_AGE: &str = "ordermesh_relay_outbox_oldest_age_seconds";
/// Rows published, confirmed and deleted; label `source`.
pub const RELAY_PUBLISHED: &str = "ordermesh_relay_published_total";
/// Time from sending a batch to its last publisher confirm; label `source`.
pub const RELAY_CONFIRM_DURATION: &str = "ordermesh_relay_confirm_duration_seconds";
/// Rows (or batches, for `reason="broker"`) that failed to publish; labels
/// `source`, `reason` (`nacked`, `unroutable`, `broker`).
pub const RELAY_PUBLISH_FAILURES: &str = "ordermesh_relay_publish_failures_total";
/// Broker connections a relay worker opened after its first; label `source`.
pub const RELAY_RECONNECTS: &str = "ordermesh_relay_reconnects_total";
/// Rows moved to `outbox_parked` because they can never be published;
/// labels `source`, `reason` (`too_large`, `invalid`, `unroutable`,
/// `nacked`, `behind_parked`).
pub const RELAY_PARKED: &str = "ordermesh_relay_parked_total";
/// Rows waiting in `outbox_parked` for an operator; label `source`.
pub const RELAY_PARKED_ROWS: &str = "ordermesh_relay_parked_rows";

/// Connections of a PostgreSQL pool; labels `pool`, `state` (`in_use`, `idle`).
pub const DB_POOL_CONNECTIONS: &str = "ordermesh_db_pool_connections";
/// Size limit of a pool; label `pool`.
pub const DB_POOL_MAX: &str = "ordermesh_db_pool_max_connections";
/// Callers waiting for a pooled connection; label `pool`.
pub const DB_POOL_WAITING: &str = "ordermesh_db_pool_waiting";

/// Age of the oldest PENDING order, 0 when none (order-svc samples it every
/// few seconds); one that keeps growing is a stuck order.
pub const ORDERS_OLDEST_PENDING: &str = "ordermesh_orders_oldest_pending_seconds";

/// 1 when the process is ready (dependencies reachable), else 0.
pub const READY: &str = "ordermesh_ready";

/// Every metric above, for checks that dashboards and docs name real ones.
pub const ALL: &[&str] = &[
    RPC_REQUESTS,
    RPC_ERRORS,
    RPC_DURATION,
    CONSUMER_PROCESSED,
    CONSUMER_DUPLICATES,
    CONSUMER_RETRIES,
    CONSUMER_DEAD_LETTERED,
    CONSUMER_DURATION,
    RELAY_BACKLOG,
    RELAY_OLDEST_AGE,
    RELAY_PUBLISHED,
    RELAY_CONFIRM_DURATION,
    RELAY_PUBLISH_FAILURES,
    RELAY_RECONNECTS,
    RELAY_PARKED,
    RELAY_PARKED_ROWS,
    DB_POOL_CONNECTIONS,
    DB_POOL_MAX,
    DB_POOL_WAITING,
    ORDERS_OLDEST_PENDING,
    READY,
];

/// Histogram buckets for every `_seconds` metric: 0.5 ms to 10 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's Prometheus recorder, installed on first call.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .expect("the bucket list is not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed; /metrics stays empty");
        }
        describe();
        handle
    })
}

/// The current metrics in the Prometheus text format.
pub fn render() -> String {
    let handle = handle();
    handle.run_upkeep();
    handle.render()
}

/// Content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Publishes a pool's usage under `pool`.
pub fn record_pool(pool: &str, status: deadpool_postgres::Status) {
    let in_use = status.size.saturating_sub(status.available);
    let name = pool.to_owned();
    metrics::gauge!(DB_POOL_CONNECTIONS, "pool" => name.clone(), "state" => "in_use")
        .set(in_use as f64);
    metrics::gauge!(DB_POOL_CONNECTIONS, "pool" => name.clone(), "state" => "idle")
        .set(status.available as f64);
    metrics::gauge!(DB_POOL_MAX, "pool" => name.clone()).set(status.max_size as f64);
    metrics::gauge!(DB_POOL_WAITING, "pool" => name).set(status.waiting as f64);
}

fn describe() {
    describe_counter!(
        RPC_REQUESTS,
        "gRPC calls served, by service, method and status code"
    );
    describe_counter!(RPC_ERRORS, "gRPC calls that did not end OK, by status code");
    describe_histogram!(RPC_DURATION, Unit::Seconds, "gRPC call latency");
    describe_counter!(CONSUMER_PROCESSED, "deliveries applied and acknowledged");
    describe_counter!(
        CONSUMER_DUPLICATES,
        "deliveries skipped as already applied (inbox)"
    );
    describe_counter!(
        CONSUMER_RETRIES,
        "deliveries sent to a retry queue after a transient failure"
    );
    describe_counter!(
        CONSUMER_DEAD_LETTERED,
        "deliveries sent to the dead-letter queue"
    );
    describe_histogram!(
        CONSUMER_DURATION,
        Unit::Seconds,
        "time to apply one delivery"
    );
    describe_gauge!(RELAY_BACKLOG, "outbox rows not yet published");
    describe_gauge!(
        RELAY_OLDEST_AGE,
        Unit::Seconds,
        "age of the oldest unpublished outbox row"
    );
    describe_counter!(
        RELAY_PUBLISHED,
        "outbox rows published with a broker confirm"
    );
    describe_histogram!(
        RELAY_CONFIRM_DURATION,
        Unit::Seconds,
        "batch send to last confirm"
    );
    describe_counter!(
        RELAY_PUBLISH_FAILURES,
        "rows nacked or unroutable, batches lost to broker errors"
    );
    describe_counter!(RELAY_RECONNECTS, "broker reconnections of relay workers");
    describe_counter!(
        RELAY_PARKED,
        "outbox rows parked because they can never be published"
    );
    describe_gauge!(RELAY_PARKED_ROWS, "rows waiting in outbox_parked");
    describe_gauge!(
        DB_POOL_CONNECTIONS,
        "pooled PostgreSQL connections by state"
    );
    describe_gauge!(DB_POOL_MAX, "pool size limit");
    describe_gauge!(DB_POOL_WAITING, "callers waiting for a pooled connection");
    describe_gauge!(READY, "1 when the process is ready to serve");
}

#[cfg(test)]
mod tests {
    #[test]
    fn recorded_values_render_in_the_text_format() {
        let handle = super::handle();
        metrics::counter!(super::RELAY_PUBLISHED, "source" => "unit-test").increment(3);
        metrics::histogram!(super::RPC_DURATION, "service" => "s", "method" => "m").record(0.002);
        let text = handle.render();
        assert!(
            text.contains(r#"ordermesh_relay_published_total{source="unit-test"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"ordermesh_rpc_duration_seconds_bucket{service="s",method="m",le="0.0025"} 1"#
            ),
            "{text}"
        );
    }
}
