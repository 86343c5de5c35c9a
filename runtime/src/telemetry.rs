//! Logging and tracing for every binary, set up once by [`init`] and
//! flushed by [`shutdown`].
//!
//! - Logs: JSON lines when stderr is not a terminal (collected logs), human
//!   readable on a terminal; `RUST_LOG` filters them (default `info`). A JSON
//!   line written inside a traced span carries `trace_id` and `span_id`.
//! - Traces: `tracing` spans become OpenTelemetry spans. They are exported
//!   over OTLP/gRPC only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; without it ids are still
//!   made (for logs and propagation) and nothing is sent. The SDK reads the
//!   standard variables: `OTEL_SERVICE_NAME` (default: the binary's name),
//!   `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER(_ARG)`,
//!   `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_MAX_QUEUE_SIZE`,
//!   `OTEL_EXPORTER_OTLP_TIMEOUT`. Spans go through a batch processor with a
//!   bounded queue on its own thread: a slow or absent collector costs
//!   dropped spans, never request latency. `RUST_LOG` does not filter spans;
//!   `OTEL_TRACES_FILTER` does (default `info`, in `RUST_LOG` syntax).
//! - Metrics: the Prometheus recorder of [`crate::metrics`] is installed.

use std::fmt;
use std::io::IsTerminal;
use std::sync::OnceLock;

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_subscriber::fmt::format::{Format, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{Env, ProcessEnv};

/// Variables naming the collector; exporting is on when one is set.
const ENV_ENDPOINTS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];
/// Which spans become OpenTelemetry spans, in `RUST_LOG` syntax.
const ENV_TRACES_FILTER: &str = "OTEL_TRACES_FILTER";
/// Spans of the transport crates say nothing a reader of a trace needs.
const DEFAULT_TRACES_FILTER: &str = "info,h2=off,hyper=off,tower=off,tonic=off,lapin=off";

/// The installed tracer provider, flushed by [`shutdown`].
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Installs the global subscriber (logs and traces) and the metrics
/// recorder. Call once, first thing in `main`, inside the tokio runtime (the
/// OTLP exporter's channel lives on it).
pub fn init() {
    let env = ProcessEnv;
    let (provider, exporter_error) = tracer_provider(&env);
    let tracer = provider.tracer("ordermesh");
    let traces_directives = crate::config::string(&env, ENV_TRACES_FILTER, DEFAULT_TRACES_FILTER);
    let (traces_filter, filter_error) = match EnvFilter::try_new(&traces_directives) {
        Ok(filter) => (filter, None),
        Err(e) => (EnvFilter::new(DEFAULT_TRACES_FILTER), Some(e.to_string())),
    };
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_filter(traces_filter);
    let log_filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(otel);
    if std::io::stderr().is_terminal() {
        let logs = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(log_filter);
        registry.with(logs).init();
    } else {
        let format = tracing_subscriber::fmt::format()
            .json()
            .flatten_event(true)
            .with_current_span(false);
        let logs = tracing_subscriber::fmt::layer()
            .fmt_fields(JsonFields::new())
            .event_format(WithTraceIds(format))
            .with_writer(std::io::stderr)
            .with_filter(log_filter);
        registry.with(logs).init();
    }
    if let Some(error) = exporter_error {
        tracing::error!(error, "cannot export traces; running without an exporter");
    }
    if let Some(error) = filter_error {
        tracing::warn!(
            error,
            value = traces_directives,
            "invalid {ENV_TRACES_FILTER}; using {DEFAULT_TRACES_FILTER:?}"
        );
    }
    let _ = PROVIDER.set(provider);
    crate::metrics::handle();
}

/// Exports the spans still queued and stops the exporter. Call at the end of
/// `main`; it gives up after 5 s (a collector that is down costs no more).
pub async fn shutdown() {
    let Some(provider) = PROVIDER.get().cloned() else {
        return;
    };
    // The batch processor blocks while it flushes; keep that off the
    // runtime's worker threads, which drive the exporter's connection.
    let flushed = tokio::task::spawn_blocking(move || {
        provider.shutdown_with_timeout(std::time::Duration::from_secs(5))
    })
    .await;
    match flushed {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "could not flush traces"),
        Err(e) => tracing::warn!(error = %e, "trace flush panicked"),
    }
}

/// A tracer provider exporting over OTLP/gRPC when an endpoint is set, and
/// the reason it does not export when building the exporter failed.
fn tracer_provider(env: &impl Env) -> (SdkTracerProvider, Option<String>) {
    let builder = SdkTracerProvider::builder().with_resource(resource(env));
    let wanted = ENV_ENDPOINTS
        .iter()
        .any(|name| env.var(name).is_some_and(|v| !v.trim().is_empty()));
    if !wanted {
        return (builder.build(), None);
    }
    use opentelemetry_otlp::WithExportConfig as _;
    match opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_protocol(opentelemetry_otlp::Protocol::Grpc)
        .build()
    {
        Ok(exporter) => (builder.with_batch_exporter(exporter).build(), None),
        Err(e) => (
            builder.build(),
            Some(format!("invalid OTEL_EXPORTER_OTLP_ENDPOINT: {e}")),
        ),
    }
}

/// The SDK's resource (`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_SERVICE_NAME`),
/// named after the binary when neither names the service.
fn resource(env: &impl Env) -> Resource {
    let named = env
        .var("OTEL_SERVICE_NAME")
        .is_some_and(|v| !v.trim().is_empty())
        || env
            .var("OTEL_RESOURCE_ATTRIBUTES")
            .is_some_and(|v| v.contains("service.name="));
    if named {
        return Resource::builder().build();
    }
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "ordermesh".to_owned());
    Resource::builder().with_service_name(binary).build()
}

/// The ids of the innermost entered span with an OpenTelemetry context.
fn current_ids() -> Option<(String, String)> {
    let cx = opentelemetry::Context::current();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

/// The JSON event format with `trace_id` and `span_id` added to every line
/// written inside a traced span.
struct WithTraceIds<T>(Format<tracing_subscriber::fmt::format::Json, T>);

impl<S, N, T> FormatEvent<S, N> for WithTraceIds<T>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    Format<tracing_subscriber::fmt::format::Json, T>: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let Some((trace_id, span_id)) = current_ids() else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_suffix("}\n") {
            Some(object) => writeln!(
                writer,
                r#"{object},"trace_id":"{trace_id}","span_id":"{span_id}"}}"#
            ),
            None => writer.write_str(&line),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A log sink the test can read.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(sink: &Sink) -> Vec<serde_json::Value> {
        String::from_utf8(sink.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    #[test]
    fn json_lines_in_a_span_carry_its_trace_and_span_id() {
        let provider = SdkTracerProvider::builder().build();
        let sink = Sink::default();
        let writer = sink.clone();
        let format = tracing_subscriber::fmt::format()
            .json()
            .flatten_event(true)
            .with_current_span(false);
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(
                tracing_subscriber::fmt::layer()
                    .fmt_fields(JsonFields::new())
                    .event_format(WithTraceIds(format))
                    .with_writer(move || writer.clone()),
            );
        let (trace_id, span_id) = tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside");
            let span = tracing::info_span!("work", order_id = "o-1");
            let _entered = span.enter();
            tracing::info!(answer = 42, "inside");
            current_ids().expect("the span has ids")
        });
        let lines = lines(&sink);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].get("trace_id").is_none(), "{}", lines[0]);
        assert_eq!(lines[1]["message"], "inside");
        assert_eq!(lines[1]["answer"], 42);
        assert_eq!(lines[1]["trace_id"], trace_id.as_str());
        assert_eq!(lines[1]["span_id"], span_id.as_str());
        assert_eq!(trace_id.len(), 32);
        assert_eq!(lines[1]["spans"][0]["order_id"], "o-1");
    }

    #[test]
    fn the_service_is_named_after_the_binary_unless_configured() {
        use std::collections::HashMap;
        let key = opentelemetry::Key::new("service.name");
        let named = HashMap::from([("OTEL_SERVICE_NAME", "x".to_owned())]);
        // The SDK reads the process environment itself; only the fallback is ours.
        let r = resource(&HashMap::<&str, String>::new());
        let name = r.get(&key).expect("a service name").to_string();
        assert!(!name.starts_with("unknown_service"), "{name}");
        assert!(resource(&named).get(&key).is_some());
    }
}
