//! Whether a source worker polls, from the rows it published lately.
//!
//! A NOTIFY per commit is cheap while few writers commit: it wakes the relay
//! at once, and costs nothing between rows. But PostgreSQL serialises
//! notifying commits through their WAL flush (a cluster-wide lock), so as
//! the rate grows the writers queue behind each other and one slow flush
//! stalls them all. Polling costs a probe per interval whatever the rate,
//! and a wait of up to one interval per row. So the worker polls only from
//! `warm_rows` rows per `window` up:
//!
//! - it turns warm once `warm_rows` rows came within `window`, or a tenth
//!   of them within a tenth of it (a step up in the rate warms it within
//!   a few tens of milliseconds, before the notifying writers queue up);
//! - once warm it stays warm for at least `window`, and then while at least
//!   three quarters of `warm_rows` come within `window` (a narrow band, so
//!   a rate that settles below the threshold goes back to NOTIFY, and one
//!   near it switches at most once per `window`).

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// The recent rows of one worker, and since when it polls.
#[derive(Debug)]
pub struct Warmth {
    window: Duration,
    warm_rows: usize,
    /// Rows published within the last `window`, by batch.
    recent: VecDeque<(Instant, usize)>,
    /// When the worker last turned warm.
    warm_since: Option<Instant>,
}

impl Warmth {
    pub fn new(window: Duration, warm_rows: usize) -> Self {
        Self {
            window,
            warm_rows,
            recent: VecDeque::new(),
            warm_since: None,
        }
    }

    /// Notes a batch of `rows` published at `at`.
    pub fn record(&mut self, at: Instant, rows: usize) {
        self.recent.push_back((at, rows));
    }

    /// Whether to poll at `now`, for a worker that polls already or not.
    pub fn wants_poll(&mut self, now: Instant, polling: bool) -> bool {
        let window = self.window;
        while self
            .recent
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > window)
        {
            self.recent.pop_front();
        }
        let within = |span: Duration| -> usize {
            self.recent
                .iter()
                .rev()
                .take_while(|(t, _)| now.duration_since(*t) <= span)
                .map(|(_, n)| n)
                .sum()
        };
        if !polling {
            self.warm_since = None;
            let burst = within(window / 10).saturating_mul(10);
            let warm = within(window).max(burst) >= self.warm_rows;
            if warm {
                self.warm_since = Some(now);
            }
            return warm;
        }
        let since = *self.warm_since.get_or_insert(now);
        now.duration_since(since) < window
            || within(window).saturating_mul(4) >= self.warm_rows.saturating_mul(3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_millis(250);

    /// `rate` rows per second, one per batch, from `start` for `span`.
    fn feed(w: &mut Warmth, start: Instant, rate: u64, span: Duration) -> Instant {
        let step = Duration::from_nanos(1_000_000_000 / rate);
        let mut t = start;
        while t < start + span {
            w.record(t, 1);
            t += step;
        }
        t
    }

    #[test]
    fn a_trickle_never_polls_and_a_steady_rate_at_the_threshold_does() {
        let t0 = Instant::now();
        let mut w = Warmth::new(WINDOW, 75);
        let t = feed(&mut w, t0, 200, Duration::from_secs(1));
        assert!(!w.wants_poll(t, false), "200/s stays below 75 per 250 ms");
        let mut w = Warmth::new(WINDOW, 75);
        let t = feed(&mut w, t0, 320, Duration::from_millis(300));
        assert!(w.wants_poll(t, false), "320/s is 80 per 250 ms");
    }

    #[test]
    fn a_burst_warms_within_a_tenth_of_the_window() {
        let t0 = Instant::now();
        let mut w = Warmth::new(WINDOW, 75);
        // 400/s for 20 ms: 8 rows, below 75 in the window, above 7.5 in 25 ms.
        let t = feed(&mut w, t0, 400, Duration::from_millis(20));
        assert!(w.wants_poll(t, false));
    }

    #[test]
    fn warm_stays_for_a_window_and_then_while_three_quarters_come() {
        let t0 = Instant::now();
        let mut w = Warmth::new(WINDOW, 100);
        let t = feed(&mut w, t0, 1000, Duration::from_millis(30));
        assert!(w.wants_poll(t, false), "30 rows in 30 ms is a burst");
        // Nothing more: still warm within the window it turned warm in...
        assert!(w.wants_poll(t + Duration::from_millis(200), true));
        // ... and cold after it.
        assert!(!w.wants_poll(t + Duration::from_millis(260), true));

        // A rate between three quarters and the threshold keeps it warm.
        let mut w = Warmth::new(WINDOW, 100);
        let t = feed(&mut w, t0, 500, Duration::from_millis(300));
        assert!(w.wants_poll(t, false));
        let t = feed(&mut w, t, 340, Duration::from_millis(600));
        assert!(w.wants_poll(t, true), "85 per window stays warm");
        let t = feed(&mut w, t, 200, Duration::from_millis(600));
        assert!(!w.wants_poll(t, true), "50 per window goes back to NOTIFY");
    }

    #[test]
    fn zero_warm_rows_always_polls() {
        let mut w = Warmth::new(WINDOW, 0);
        assert!(w.wants_poll(Instant::now(), false));
    }
}
