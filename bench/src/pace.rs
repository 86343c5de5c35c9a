//! When each request of an open-loop step goes out. tokio's timers tick in
//! whole milliseconds, so `sleep_until(due)` sends a request up to a
//! millisecond (and on average about half of one) after it was due, and
//! the latency counted from the due time included that wait of the load
//! generator's own. A thread of its own sleeps with the OS's finer timer
//! instead and hands each index over when it is due; `send_late_ms` in the
//! report shows how late the requests really went out.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::observe::now_ns;

/// How long after the call the first request is due.
const LEAD: Duration = Duration::from_millis(20);

/// Yields `(i, due)` for `i` in `0..n`, `rate` per second, each when it is
/// due (`due` in [`now_ns`] time), from a thread that ends when the
/// receiver is dropped or after the last one.
pub fn ticks(n: usize, rate: f64) -> mpsc::UnboundedReceiver<(usize, u64)> {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let (origin, start) = (Instant::now() + LEAD, now_ns() + LEAD.as_nanos() as u64);
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("bench-pace".to_owned())
        .spawn(move || {
            for i in 0..n {
                let offset = interval.mul_f64(i as f64);
                let at = origin + offset;
                let now = Instant::now();
                if at > now {
                    std::thread::sleep(at - now);
                }
                if tx.send((i, start + offset.as_nanos() as u64)).is_err() {
                    return;
                }
            }
        })
        .expect("start the pacing thread");
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ticks_come_in_order_and_not_before_they_are_due() {
        let mut rx = ticks(20, 2000.0);
        let mut seen = Vec::new();
        let mut last_due = 0;
        while let Some((i, due)) = rx.recv().await {
            assert!(now_ns() >= due);
            assert!(due > last_due);
            last_due = due;
            seen.push(i);
        }
        assert_eq!(seen, (0..20).collect::<Vec<_>>());
    }
}
