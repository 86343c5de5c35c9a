//! Throw-away broker names: a unique `om-test-*` exchange and queue prefix
//! per [`TestBroker`], deleted (even when a test panics) with it.

use std::sync::Mutex;

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use ordermesh_messaging::amqp::{BrokerConfig, dead_letter_queue};
use ordermesh_messaging::redelivery::{RetryPolicy, retry_queue};
use ordermesh_runtime::config::Secret;

use crate::{run_blocking, short_id};

/// Retries for tests: quick, and enough of them to ride out a brief
/// conflict (10 attempts, 25 ms doubling up to 200 ms).
pub fn fast_retry_policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 10,
        base_delay: std::time::Duration::from_millis(25),
        max_delay: std::time::Duration::from_millis(200),
    }
}

/// RabbitMQ used by tests: `TEST_AMQP_URL` or the local broker.
pub fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL").unwrap_or_else(|_| ordermesh_messaging::amqp::DEFAULT_URL.into())
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
    /// A connection to the test broker and a channel on it with publisher
    /// confirms on (keep the connection as long as the channel is used).
    pub async fn confirmed_channel(&self) -> (lapin::Connection, lapin::Channel) {
        let conn = lapin::Connection::connect(self.config.url.expose(), Default::default())
            .await
            .expect("connect to RabbitMQ");
        let channel = conn.create_channel().await.expect("open a channel");
        channel
            .confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await
            .expect("enable publisher confirms");
        (conn, channel)
    }

    pub fn new() -> Self {
        let prefix = format!("om-test-{}", short_id());
        Self {
            config: BrokerConfig {
                url: Secret::new(amqp_url()),
                exchange: format!("{prefix}.events"),
                queue_type: ordermesh_messaging::amqp::QueueType::Classic,
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

/// Spawns the consumer `run(status, shutdown)` builds for `queue` and
/// waits up to `patience` until it is connected (panics if not); returns
/// what stops it.
pub async fn spawn_consumer<F>(
    queue: &str,
    patience: std::time::Duration,
    run: impl FnOnce(
        ordermesh_messaging::amqp::ConsumerStatus,
        tokio_util::sync::CancellationToken,
    ) -> F,
) -> tokio_util::sync::CancellationToken
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let status = ordermesh_messaging::amqp::ConsumerStatus::new(queue);
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(run(status.clone(), shutdown.clone()));
    let up = crate::eventually(patience, || async { status.is_connected().then_some(()) }).await;
    assert!(up.is_some(), "the consumer connects");
    shutdown
}
