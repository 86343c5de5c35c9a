//! Throw-away resources for integration tests, so tests run in parallel
//! against the real local servers without seeing each other: a fresh
//! database per [`TestDatabase`], a unique exchange and queue prefix per
//! [`TestBroker`]. Both are removed when dropped (even when a test panics).
//! Names start with `om_test_` / `om-test-` so a sweep can find leftovers of
//! a killed run.

use std::sync::Mutex;

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};

use crate::amqp::{BrokerConfig, dead_letter_queue};
use crate::config::Secret;
use crate::redelivery::{RetryPolicy, retry_queue};

/// Retries for tests: quick, and enough of them to ride out a brief
/// conflict (10 attempts, 25 ms doubling up to 200 ms).
pub fn fast_retry_policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 10,
        base_delay: std::time::Duration::from_millis(25),
        max_delay: std::time::Duration::from_millis(200),
    }
}

/// PostgreSQL server used by tests: `TEST_PG_URL` (any database on it), or
/// the local server.
pub fn server_url() -> String {
    std::env::var("TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// RabbitMQ used by tests: `TEST_AMQP_URL` or the local broker.
pub fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL").unwrap_or_else(|_| crate::amqp::DEFAULT_URL.into())
}

fn short_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// A database that exists for one test. The service under test creates and
/// migrates it on start, as in production; [`TestDatabase::create`] makes it
/// up front for tests that talk SQL first.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    /// A unique name; nothing is created yet.
    pub fn new() -> Self {
        let name = format!("om_test_{}", short_id());
        let url = rebuild_url(&server_url(), &name);
        Self { name, url }
    }

    /// A unique, created (empty) database.
    pub async fn create() -> Self {
        let db = Self::new();
        let config: crate::db::DbConfig = db.url.parse().expect("test URL parses");
        crate::db::ensure_database(&config)
            .await
            .expect("create the test database");
        db
    }

    /// A plain client on this database (TLS as the URL's `sslmode` says).
    pub async fn client(&self) -> tokio_postgres::Client {
        let config: crate::db::DbConfig = self.url.parse().expect("test URL parses");
        let (client, connection) = config
            .connect()
            .await
            .expect("connect to the test database");
        tokio::spawn(connection);
        client
    }
}

impl Default for TestDatabase {
    fn default() -> Self {
        Self::new()
    }
}

/// `url` with its database path replaced by `name`.
fn rebuild_url(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_end = base[scheme_end..]
        .find('/')
        .map(|i| i + scheme_end)
        .unwrap_or(base.len());
    let mut out = format!("{}/{}", &base[..host_end], name);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        run_blocking(async move {
            let config: crate::db::DbConfig = server_url().parse()?;
            let (client, connection) = config.connect().await?;
            tokio::spawn(connection);
            client
                .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .await?;
            anyhow::Ok(())
        });
    }
}

/// A unique exchange and queue prefix on the local broker.
pub struct TestBroker {
    pub config: BrokerConfig,
    /// Prefix for this test's queue names.
    pub prefix: String,
    queues: Mutex<Vec<String>>,
    /// Policies whose retry queues are deleted with each queue.
    retry_policies: Mutex<Vec<RetryPolicy>>,
}

impl TestBroker {
    pub fn new() -> Self {
        let prefix = format!("om-test-{}", short_id());
        Self {
            config: BrokerConfig {
                url: Secret::new(amqp_url()),
                exchange: format!("{prefix}.events"),
                queue_type: crate::amqp::QueueType::Classic,
                tls: Default::default(),
            },
            prefix,
            queues: Mutex::new(Vec::new()),
            retry_policies: Mutex::new(vec![RetryPolicy::default(), fast_retry_policy()]),
        }
    }

    /// A queue name under this broker's prefix, deleted (with its dead-letter
    /// queue, and its retry queues under the default policy,
    /// [`fast_retry_policy`] and any [`TestBroker::track_retry_policy`]) when
    /// the broker is dropped.
    pub fn queue(&self, name: &str) -> String {
        let full = format!("{}.{name}", self.prefix);
        self.queues.lock().unwrap().push(full.clone());
        full
    }

    /// Registers a queue created by something else for deletion.
    pub fn track_queue(&self, full_name: &str) {
        self.queues.lock().unwrap().push(full_name.to_owned());
    }

    /// Deletes the retry queues of `policy` too when the broker is dropped.
    pub fn track_retry_policy(&self, policy: &RetryPolicy) {
        self.retry_policies.lock().unwrap().push(policy.clone());
    }
}

impl Default for TestBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let queues = std::mem::take(&mut *self.queues.lock().unwrap());
        let mut delays: Vec<_> = self
            .retry_policies
            .lock()
            .unwrap()
            .iter()
            .flat_map(RetryPolicy::delays)
            .collect();
        delays.sort();
        delays.dedup();
        let config = self.config.clone();
        run_blocking(async move {
            let conn = lapin::Connection::connect(config.url.expose(), Default::default()).await?;
            let channel = conn.create_channel().await?;
            for q in &queues {
                let retries = delays.iter().map(|d| retry_queue(q, *d));
                for name in [q.clone(), dead_letter_queue(q)].into_iter().chain(retries) {
                    channel
                        .queue_delete(name.into(), QueueDeleteOptions::default())
                        .await?;
                }
            }
            for ex in [config.exchange.clone(), config.dead_letter_exchange()] {
                channel
                    .exchange_delete(ex.into(), ExchangeDeleteOptions::default())
                    .await?;
            }
            let _ = conn.close(200, "test done".into()).await;
            anyhow::Ok(())
        });
    }
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

#[cfg(test)]
mod tests {
    #[test]
    fn rebuild_url_swaps_the_database() {
        assert_eq!(
            super::rebuild_url("postgres://u@h:1/postgres", "x"),
            "postgres://u@h:1/x"
        );
        assert_eq!(
            super::rebuild_url("postgres://u@h:1/p?sslmode=disable", "x"),
            "postgres://u@h:1/x?sslmode=disable"
        );
        assert_eq!(
            super::rebuild_url("postgres://u@h:1", "x"),
            "postgres://u@h:1/x"
        );
    }
}

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
    use http_body_util::{BodyExt as _, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    if let Some(token) = bearer {
        request = request.header("authorization", format!("Bearer {token}"));
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
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("read the body")
        .to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
    });
    RestAnswer {
        status,
        headers,
        body,
    }
}

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

/// A tonic codec that sends bytes as they are and reads the answer's bytes
/// back: for tests that put hand-made (or broken) protobuf on the wire, e.g.
/// `tonic::client::Grpc::unary(request, path, RawCodec)`.
#[derive(Debug, Clone, Copy)]
pub struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

/// A TCP proxy in front of the broker that a test can break in the two ways
/// a network does: [`BrokerProxy::cut`] closes every connection and drops
/// new ones (the client sees errors at once); [`BrokerProxy::freeze`] keeps
/// every connection open but forwards nothing (a black hole: the client
/// only notices by its own timeouts). [`BrokerProxy::restore`] forwards
/// again.
pub struct BrokerProxy {
    pub addr: std::net::SocketAddr,
    state: tokio::sync::watch::Sender<ProxyState>,
    conns: std::sync::Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProxyState {
    Open,
    Cut,
    Frozen,
}

impl BrokerProxy {
    /// Listens on a free local port and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the broker proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (state, _) = tokio::sync::watch::channel(ProxyState::Open);
        let conns: std::sync::Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Default::default();
        let accept = {
            let (state, conns) = (state.clone(), conns.clone());
            tokio::spawn(async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    if *state.borrow() == ProxyState::Cut {
                        continue; // dropped: the client sees the connection close
                    }
                    let upstream = upstream.clone();
                    let state = state.subscribe();
                    let task = tokio::spawn(async move {
                        if let Ok(outbound) = tokio::net::TcpStream::connect(upstream).await {
                            let (ri, wi) = inbound.into_split();
                            let (ro, wo) = outbound.into_split();
                            tokio::select! {
                                () = pipe(ri, wo, state.clone()) => {}
                                () = pipe(ro, wi, state) => {}
                            }
                        }
                    });
                    conns.lock().unwrap().push(task.abort_handle());
                }
            })
        };
        Self {
            addr,
            state,
            conns,
            accept,
        }
    }

    /// Closes every connection and drops new ones until [`Self::restore`].
    pub fn cut(&self) {
        self.state.send_replace(ProxyState::Cut);
        for conn in self.conns.lock().unwrap().drain(..) {
            conn.abort();
        }
    }

    /// Stops forwarding bytes, connections stay open, until [`Self::restore`].
    pub fn freeze(&self) {
        self.state.send_replace(ProxyState::Frozen);
    }

    pub fn restore(&self) {
        self.state.send_replace(ProxyState::Open);
    }

    /// `url` (`amqp://user:pass@host:port/vhost`) pointing at this proxy.
    pub fn url(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("a URL");
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let creds = authority
            .rsplit_once('@')
            .map(|(c, _)| format!("{c}@"))
            .unwrap_or_default();
        format!("{scheme}://{creds}{}/{path}", self.addr)
    }
}

/// `host:port` of an AMQP URL (port 5672 unless it names one).
pub fn amqp_authority(url: &str) -> String {
    let rest = url.split_once("://").expect("a URL").1;
    let authority = rest.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5672")
    }
}

/// Copies `from` to `to` while the proxy is open; holds the bytes while it
/// is frozen.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut state: tokio::sync::watch::Receiver<ProxyState>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if state.wait_for(|s| *s == ProxyState::Open).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Drop for BrokerProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// Messages ready in `queue` (a passive declare: the queue must exist).
pub async fn queue_depth(channel: &lapin::Channel, queue: &str) -> u32 {
    channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("inspect queue {queue}: {e}"))
        .message_count()
}
