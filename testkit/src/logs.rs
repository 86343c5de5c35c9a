//! What tests see of tracing: log output captured in memory, and span ids
//! without an exporter.

/// Log output collected in memory: `tracing_subscriber::fmt().with_writer(
/// logs.clone())`, then [`CapturedLogs::text`] (e.g. to check that no secret
/// was logged).
#[derive(Clone, Default)]
pub struct CapturedLogs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl CapturedLogs {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("not poisoned")).into_owned()
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("not poisoned").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLogs {
    type Writer = CapturedLogs;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Installs (once per test process) a subscriber that gives spans
/// OpenTelemetry ids, without exporting or printing anything, so tests can
/// check that trace context travels through a service run in-process.
pub fn init_tracing() {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        // Another global subscriber may be installed already; then ids are
        // whatever it makes of spans.
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}
