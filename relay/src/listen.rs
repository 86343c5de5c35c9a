//! One dedicated LISTEN connection per source: a NOTIFY from the outbox
//! trigger (payload: the row's partition) wakes that source's worker when
//! the relay holds the partition's lease. After (re)connecting it wakes the
//! worker once, covering notifications missed while disconnected.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use ordermesh_platform::db::DbConfig;
use ordermesh_platform::outbox::NOTIFY_CHANNEL;
use tokio::sync::{Notify, mpsc};
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

/// Listens until `shutdown`, reconnecting with backoff.
pub async fn run_listener(
    source: String,
    config: DbConfig,
    wake: Arc<Notify>,
    held: Arc<AtomicU64>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut delay = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        match listen_once(&source, &config, &wake, &held, &shutdown).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(%source, error = format!("{e:#}"), retry_in = ?delay, "LISTEN connection lost; reconnecting");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => break,
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    Ok(())
}

/// One connection's worth of listening. `Ok` means shutdown.
async fn listen_once(
    source: &str,
    config: &DbConfig,
    wake: &Notify,
    held: &AtomicU64,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let (client, mut connection) = config.connect().await.context("connect")?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    // The connection must be polled for the client's queries to run; this
    // poll also yields the notifications.
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().parse::<u32>().ok()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    });
    let result = async {
        client
            .batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
            .await
            .context("LISTEN")?;
        tracing::info!(%source, channel = NOTIFY_CHANNEL, "listening");
        wake.notify_one();
        loop {
            tokio::select! {
                woken = rx.recv() => match woken {
                    // Another relay's partition: not ours to wake for.
                    Some(Some(p)) if p < 64 && held.load(Ordering::Relaxed) & (1 << p) == 0 => {}
                    Some(_) => wake.notify_one(),
                    None => anyhow::bail!("the connection closed"),
                },
                () = shutdown.cancelled() => return Ok(()),
            }
        }
    }
    .await;
    drop(client);
    driver.abort();
    result
}
