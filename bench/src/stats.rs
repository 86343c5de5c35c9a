//! Percentiles of latency samples (milliseconds), nearest-rank.

use serde::Serialize;

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Summary {
    pub count: usize,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// Sorts `samples` and summarizes them.
pub fn summarize(samples: &mut [f64]) -> Summary {
    if samples.is_empty() {
        return Summary::default();
    }
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    Summary {
        count: n,
        mean: samples.iter().sum::<f64>() / n as f64,
        p50: quantile(samples, 0.50),
        p90: quantile(samples, 0.90),
        p99: quantile(samples, 0.99),
        p999: quantile(samples, 0.999),
        max: samples[n - 1],
    }
}

/// The `q` quantile of sorted samples (nearest rank).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Rounds to 3 decimals, for reports.
pub fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<f64> = (1..=1000).map(f64::from).collect();
        v.reverse();
        let s = summarize(&mut v);
        assert_eq!((s.p50, s.p99, s.p999, s.max), (500.0, 990.0, 999.0, 1000.0));
        assert_eq!(summarize(&mut []).count, 0);
    }
}
