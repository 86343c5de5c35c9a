//! Running a binary's tasks side by side: each task is named, the first to
//! end (or fail) is logged, and the others are told to stop through the
//! shared token and given a bounded grace period to drain.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

type Task = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// A set of named tasks sharing one shutdown token.
pub struct Tasks {
    shutdown: CancellationToken,
    set: JoinSet<(&'static str, anyhow::Result<()>)>,
}

impl Tasks {
    pub fn new(shutdown: CancellationToken) -> Self {
        Self {
            shutdown,
            set: JoinSet::new(),
        }
    }

    /// Spawns `task`, which must return once the shutdown token fires.
    pub fn spawn(
        &mut self,
        name: &'static str,
        task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        let task: Task = Box::pin(task);
        self.set.spawn(async move { (name, task.await) });
    }

    /// Waits until every task has ended. The first task to end cancels the
    /// token (a service is not useful with a part missing); the rest then
    /// have `grace` to finish. Fails if a task failed or the grace ran out.
    pub async fn join(mut self, grace: Duration) -> anyhow::Result<()> {
        let mut failed = false;
        if let Some(first) = self.set.join_next().await {
            failed |= report(first);
            if !self.shutdown.is_cancelled() {
                tracing::error!("a task ended before shutdown was requested; stopping the others");
                failed = true;
                self.shutdown.cancel();
            }
        }
        let drain = async {
            let mut failed = false;
            while let Some(next) = self.set.join_next().await {
                failed |= report(next);
            }
            failed
        };
        match tokio::time::timeout(grace, drain).await {
            Ok(f) => failed |= f,
            Err(_) => {
                tracing::error!(?grace, "tasks did not drain within the grace period");
                anyhow::bail!("shutdown grace period of {grace:?} exceeded");
            }
        }
        if failed {
            anyhow::bail!("a task failed; see the log above");
        }
        tracing::info!("drained; bye");
        Ok(())
    }
}

/// Logs how a task ended; returns whether it failed.
fn report(joined: Result<(&'static str, anyhow::Result<()>), tokio::task::JoinError>) -> bool {
    match joined {
        Ok((name, Ok(()))) => {
            tracing::info!(task = name, "task stopped");
            false
        }
        Ok((name, Err(e))) => {
            tracing::error!(task = name, error = format!("{e:#}"), "task failed");
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "task panicked");
            true
        }
    }
}
