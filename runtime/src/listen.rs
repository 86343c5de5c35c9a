//! A LISTEN connection that stays up, for the relay (woken by the outbox
//! trigger) and order-svc's WatchOrder hub (woken by the orders trigger).
//!
//! [`Listener::run`] connects with a [`DbConfig`], LISTENs on its channels
//! and hands every notification to a callback as it arrives. Meanwhile it
//! runs the caller's *session*, started anew on every connection with
//! [`Listening`], which says whether this is a reconnection: notifications
//! sent while there was no connection are lost, so the session reconciles
//! (re-reads, re-takes its locks, wakes its workers). When the connection
//! fails, stops answering the heartbeat, or the session returns an error,
//! the session is dropped and the listener reconnects after a
//! [`Backoff`] delay (with jitter), until shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use tokio::sync::mpsc::{self, UnboundedReceiver};
use tokio_postgres::{AsyncMessage, Notification};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::db::{DbConfig, Dedicated, PgConnection};

/// The first wait before reconnecting; it doubles up to [`MAX_RETRY`].
pub const FIRST_RETRY: Duration = Duration::from_millis(100);
/// The longest wait before reconnecting.
pub const MAX_RETRY: Duration = Duration::from_secs(5);

/// Told to the session each time the listener has (re)connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listening {
    /// An earlier connection was lost: notifications may have been missed.
    pub reconnected: bool,
}

/// A LISTEN connection and how to keep it up; [`Listener::run`] drives it.
#[derive(Debug, Clone)]
pub struct Listener {
    config: DbConfig,
    channels: Vec<String>,
    /// What the logs call it (a source database, "order watch").
    name: String,
    /// How often to check an idle connection still answers, and how long
    /// to wait for the answer.
    heartbeat: Option<(Duration, Duration)>,
    backoff: Backoff,
}

impl Listener {
    /// Listens on `channels` (SQL identifiers, as the triggers name them)
    /// of the database of `config`; `name` labels the logs.
    pub fn new(config: DbConfig, channels: &[&str], name: impl Into<String>) -> Self {
        Self {
            config,
            channels: channels.iter().map(|c| (*c).to_owned()).collect(),
            name: name.into(),
            heartbeat: None,
            backoff: Backoff::new(FIRST_RETRY, MAX_RETRY),
        }
    }

    /// Sends `SELECT 1` every `every` while connected; no answer within
    /// `timeout` counts as a lost connection, so a silently dead peer is
    /// noticed without waiting for TCP keepalives.
    pub fn heartbeat(mut self, every: Duration, timeout: Duration) -> Self {
        self.heartbeat = Some((every, timeout));
        self
    }

    /// Keeps listening until `shutdown` (or until a session returns `Ok`),
    /// calling `notify` with each notification, in commit order, from the
    /// task that polls the connection, and running `session` alongside each
    /// connection. A session error reconnects, like a lost connection.
    pub async fn run<S, F>(
        mut self,
        shutdown: &CancellationToken,
        notify: impl Fn(&Notification) + Send + Sync + 'static,
        mut session: S,
    ) where
        S: FnMut(Listening) -> F,
        F: Future<Output = anyhow::Result<()>>,
    {
        let notify: Arc<dyn Fn(&Notification) + Send + Sync> = Arc::new(notify);
        let mut reconnected = false;
        while !shutdown.is_cancelled() {
            let result = self
                .connection(shutdown, &notify, &mut session, reconnected)
                .await;
            let Err(e) = result else { break };
            reconnected = true;
            tracing::warn!(
                listener = %self.name,
                error = format!("{e:#}"),
                retry_in = ?self.backoff.step(),
                "LISTEN connection lost; reconnecting"
            );
            if !self.backoff.wait(shutdown).await {
                break;
            }
        }
    }

    /// One connection's life. `Ok` means shutdown (or the session ended).
    async fn connection<S, F>(
        &mut self,
        shutdown: &CancellationToken,
        notify: &Arc<dyn Fn(&Notification) + Send + Sync>,
        session: &mut S,
        reconnected: bool,
    ) -> anyhow::Result<()>
    where
        S: FnMut(Listening) -> F,
        F: Future<Output = anyhow::Result<()>>,
    {
        let (client, connection) = self.config.connect().await.context("connect")?;
        let conn = Dedicated::new(client, deliver(connection, notify.clone()));
        let statements: Vec<String> = self
            .channels
            .iter()
            .map(|c| format!("LISTEN {c}"))
            .collect();
        conn.batch_execute(&statements.join("; "))
            .await
            .context("LISTEN")?;
        self.backoff.reset();
        tracing::info!(listener = %self.name, channels = ?self.channels, reconnected, "listening");
        let session = session(Listening { reconnected });
        tokio::pin!(session);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                e = conn.closed() => return Err(e),
                done = &mut session => return done,
                checked = heartbeat(&conn, self.heartbeat) => checked?,
            }
        }
    }
}

/// One LISTEN connection on `channel`, without reconnects: the payloads,
/// in commit order, while the returned connection lives. For tests and
/// tools that watch what the triggers send.
pub async fn notifications(
    config: &DbConfig,
    channel: &str,
) -> Result<(Dedicated, UnboundedReceiver<String>), tokio_postgres::Error> {
    let (client, connection) = config.connect().await?;
    let (tx, rx) = mpsc::unbounded_channel();
    let send = move |n: &Notification| {
        let _ = tx.send(n.payload().to_owned());
    };
    let conn = Dedicated::new(client, deliver(connection, Arc::new(send)));
    conn.batch_execute(&format!("LISTEN {channel}")).await?;
    Ok((conn, rx))
}

/// Polls the connection (which runs the client's queries), handing each
/// notification to `notify`.
async fn deliver(
    mut connection: PgConnection,
    notify: Arc<dyn Fn(&Notification) + Send + Sync>,
) -> Result<(), tokio_postgres::Error> {
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    while let Some(message) = messages.next().await {
        if let AsyncMessage::Notification(n) = message? {
            notify(&n);
        }
    }
    Ok(())
}

/// After `every`, checks that the connection answers within the timeout;
/// never resolves without a heartbeat.
async fn heartbeat(conn: &Dedicated, every: Option<(Duration, Duration)>) -> anyhow::Result<()> {
    let Some((every, timeout)) = every else {
        return std::future::pending().await;
    };
    tokio::time::sleep(every).await;
    conn.ping(timeout).await.context("heartbeat")
}
