//! How every reconnect loop waits between attempts: doubling delays up to a
//! cap, each drawn at random from its upper half ("equal jitter"), so the
//! replicas that lost the same server do not all come back in the same
//! millisecond.
//!
//! Written here rather than taken from a retry crate: the loops that use it
//! select on a shutdown token and on other work between attempts, which a
//! wrapper that retries one future does not fit.

use std::time::Duration;

use rand::Rng as _;
use tokio_util::sync::CancellationToken;

/// Delays for one reconnect loop. [`Backoff::reset`] after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `first` and doubles up to `max`.
    pub const fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            next: first,
        }
    }

    /// The delay before the next attempt: between half and all of the
    /// current step; the step then doubles (up to the cap).
    pub fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (step * 2).min(self.max);
        let half = step / 2;
        half + rand::rng().random_range(Duration::ZERO..=step - half)
    }

    /// The current step, before jitter (for log lines: "retry in").
    pub fn step(&self) -> Duration {
        self.next
    }

    /// Back to the first delay, after an attempt that succeeded.
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// Sleeps for [`Backoff::next_delay`]; `false` when `shutdown` fired
    /// first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = shutdown.cancelled() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_to_the_cap_with_jitter_and_reset() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(100), ms(400));
        for (low, high) in [(50, 100), (100, 200), (200, 400), (200, 400)] {
            let delay = backoff.next_delay();
            assert!((ms(low)..=ms(high)).contains(&delay), "{delay:?}");
        }
        backoff.reset();
        assert!(backoff.next_delay() <= ms(100));
    }

    #[tokio::test]
    async fn waiting_stops_at_shutdown() {
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let mut backoff = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        assert!(!backoff.wait(&shutdown).await);
    }
}
