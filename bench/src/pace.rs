//! When each request of an open-loop step goes out. tokio's timers tick in
//! whole milliseconds, so `sleep_until(due)` sends a request up to a
//! millisecond (and on average about half of one) after it was due, and
//! the latency counted from the due time included that wait of the load
//! generator's own. A thread of its own sleeps with the OS's finer timer
//! instead and hands each index over when it is due; `send_late_ms` in the
//! report shows how late the requests really went out.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

/// Yields `0..n` at `origin`, `origin + interval`, ... from a thread that
/// ends when the receiver is dropped or after the last index.
pub fn ticks(n: usize, interval: Duration, origin: Instant) -> mpsc::UnboundedReceiver<usize> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("bench-pace".to_owned())
        .spawn(move || {
            for i in 0..n {
                let at = origin + interval.mul_f64(i as f64);
                let now = Instant::now();
                if at > now {
                    std::thread::sleep(at - now);
                }
                if tx.send(i).is_err() {
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
        let origin = Instant::now() + Duration::from_millis(5);
        let interval = Duration::from_micros(500);
        let mut rx = ticks(20, interval, origin);
        let mut seen = Vec::new();
        while let Some(i) = rx.recv().await {
            assert!(Instant::now() >= origin + interval.mul_f64(i as f64));
            seen.push(i);
        }
        assert_eq!(seen, (0..20).collect::<Vec<_>>());
    }
}
