//! `latency.svg`: end-to-end latency percentiles against the offered rate
//! (left), and the latency distribution of the fixed-rate steps (right).

use std::fmt::Write as _;

use super::Run;
use crate::load::StepReport;
use crate::stats::quantile;

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 420.0;
/// Where both plots' frames start, and how tall they are.
const TOP: f64 = 40.0;
const PLOT_HEIGHT: f64 = 320.0;
const PLOT_WIDTH: f64 = 380.0;
/// Left edges of the two plots.
const RATE_LEFT: f64 = 60.0;
const CDF_LEFT: f64 = 540.0;

impl Run {
    /// The latency plot: percentiles against offered rate (left, log
    /// scale) and the distribution of the fixed-rate steps (right).
    pub fn svg(&self) -> String {
        let mut s = String::new();
        header(&mut s, &self.date);
        self.percentiles_plot(&mut s);
        self.distribution_plot(&mut s);
        s.push_str("</svg>\n");
        s
    }

    /// Left: p50, p99 and p99.9 of every step against its offered rate;
    /// hollow points were not sustained.
    fn percentiles_plot(&self, s: &mut String) {
        let mut steps: Vec<&StepReport> = self.fixed.iter().chain(&self.search).collect();
        steps.sort_by(|a, b| a.offered_per_s.total_cmp(&b.offered_per_s));
        steps.dedup_by(|a, b| a.offered_per_s == b.offered_per_s);
        let plot = RatePlot {
            max_rate: steps.iter().map(|s| s.offered_per_s).fold(100.0, f64::max) * 1.05,
        };
        axes(s, RATE_LEFT, TOP, PLOT_WIDTH, PLOT_HEIGHT);
        plot.grid(s);
        for (name, color, pick) in [
            ("p50", "#1f77b4", 0usize),
            ("p99", "#ff7f0e", 1),
            ("p99.9", "#d62728", 2),
        ] {
            plot.series(s, &steps, name, color, pick);
        }
        let _ = write!(
            s,
            r#"<text x="{}" y="{}">hollow: not sustained; max sustained {:.0}/s</text>"#,
            RATE_LEFT + 10.0,
            TOP + 66.0,
            self.max_sustained
        );
    }

    /// Right: distribution (CDF) of the fixed-rate steps.
    fn distribution_plot(&self, s: &mut String) {
        axes(s, CDF_LEFT, TOP, PLOT_WIDTH, PLOT_HEIGHT);
        let max_ms = self
            .fixed
            .iter()
            .map(|st| quantile(&sorted(&st.e2e_samples), 0.999))
            .fold(10.0, f64::max);
        // Log scale from 1 ms to the next power of ten above the p99.9.
        let plot = CdfPlot {
            decades: max_ms.log10().ceil().max(1.0),
        };
        plot.grid(s);
        let colors = ["#2ca02c", "#9467bd", "#8c564b", "#e377c2"];
        for (k, st) in self.fixed.iter().enumerate() {
            plot.curve(s, st, k, colors[k % colors.len()]);
        }
    }
}

fn header(s: &mut String, date: &str) {
    let (w, h) = (WIDTH, HEIGHT);
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = write!(
        s,
        r#"<text x="{}" y="20" text-anchor="middle" font-size="14">ordermesh create→PAID latency ({})</text>"#,
        w / 2.0,
        xml(date)
    );
}

/// The left plot: offered rate (linear) against latency (log, 0.1 ms to
/// 10 s).
struct RatePlot {
    max_rate: f64,
}

impl RatePlot {
    fn x(&self, rate: f64) -> f64 {
        RATE_LEFT + rate / self.max_rate * PLOT_WIDTH
    }

    fn y(&self, ms: f64) -> f64 {
        let (lo, hi) = (0.1f64.log10(), 10_000f64.log10());
        TOP + PLOT_HEIGHT - (ms.max(0.1).log10() - lo) / (hi - lo) * PLOT_HEIGHT
    }

    /// Latency lines at every decade, rate ticks and the axis titles.
    fn grid(&self, s: &mut String) {
        let (x0, y0, pw, ph) = (RATE_LEFT, TOP, PLOT_WIDTH, PLOT_HEIGHT);
        for ms in [0.1, 1.0, 10.0, 100.0, 1000.0, 10_000.0] {
            let y = self.y(ms);
            let _ = write!(
                s,
                r##"<line x1="{x0}" x2="{}" y1="{y}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{ms}</text>"##,
                x0 + pw,
                x0 - 4.0,
                y + 4.0
            );
        }
        let tick = [100.0, 200.0, 250.0, 500.0, 1000.0, 2000.0]
            .into_iter()
            .find(|t| self.max_rate / t <= 6.0)
            .unwrap_or(5000.0);
        let mut r = 0.0;
        while r <= self.max_rate {
            let _ = write!(
                s,
                r#"<text x="{}" y="{}" text-anchor="middle">{:.0}</text>"#,
                self.x(r),
                y0 + ph + 16.0,
                r
            );
            r += tick;
        }
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">offered orders/s (open loop)</text><text transform="translate(16 {}) rotate(-90)" text-anchor="middle">e2e ms (log)</text>"#,
            x0 + pw / 2.0,
            y0 + ph + 34.0,
            y0 + ph / 2.0
        );
    }

    /// One percentile (`pick`: p50, p99, p99.9) over `steps`: a line,
    /// a point per step, and its legend entry.
    fn series(&self, s: &mut String, steps: &[&StepReport], name: &str, color: &str, pick: usize) {
        let value = |st: &StepReport| [st.e2e_ms.p50, st.e2e_ms.p99, st.e2e_ms.p999][pick];
        let pts: Vec<String> = steps
            .iter()
            .map(|st| format!("{:.1},{:.1}", self.x(st.offered_per_s), self.y(value(st))))
            .collect();
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            pts.join(" ")
        );
        for st in steps {
            let fill = if st.sustained { color } else { "white" };
            let _ = write!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{fill}" stroke="{color}"/>"#,
                self.x(st.offered_per_s),
                self.y(value(st))
            );
        }
        legend(s, RATE_LEFT, pick, color, name);
    }
}

/// The right plot: latency (log, 1 ms to 10^decades ms) against the
/// fraction of orders.
struct CdfPlot {
    decades: f64,
}

impl CdfPlot {
    fn max_ms(&self) -> f64 {
        10f64.powf(self.decades)
    }

    fn x(&self, ms: f64) -> f64 {
        CDF_LEFT + ms.max(1.0).log10() / self.decades * PLOT_WIDTH
    }

    fn y(&self, q: f64) -> f64 {
        TOP + PLOT_HEIGHT - q * PLOT_HEIGHT
    }

    /// Latency lines at every decade, fraction ticks and the axis titles.
    fn grid(&self, s: &mut String) {
        let (x1, y0, pw1, ph) = (CDF_LEFT, TOP, PLOT_WIDTH, PLOT_HEIGHT);
        for d in 0..=self.decades as i32 {
            let ms = 10f64.powi(d);
            let _ = write!(
                s,
                r##"<line x1="{x}" x2="{x}" y1="{y0}" y2="{}" stroke="#eee"/><text x="{x}" y="{}" text-anchor="middle">{ms}</text>"##,
                y0 + ph,
                y0 + ph + 16.0,
                x = self.x(ms),
            );
        }
        for i in 0..=5 {
            let q = f64::from(i) / 5.0;
            let _ = write!(
                s,
                r#"<text x="{}" y="{}" text-anchor="end">{:.1}</text>"#,
                x1 - 4.0,
                self.y(q) + 4.0,
                q
            );
        }
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">e2e ms (log, to p99.9)</text><text transform="translate({} {}) rotate(-90)" text-anchor="middle">fraction of orders</text>"#,
            x1 + pw1 / 2.0,
            y0 + ph + 34.0,
            x1 - 36.0,
            y0 + ph / 2.0
        );
    }

    /// The `k`th fixed step's distribution (about 400 points) and its
    /// legend entry.
    fn curve(&self, s: &mut String, st: &StepReport, k: usize, color: &str) {
        let v = sorted(&st.e2e_samples);
        if v.is_empty() {
            return;
        }
        let n = v.len();
        let step = (n / 400).max(1);
        let pts: Vec<String> = (0..n)
            .step_by(step)
            .chain(std::iter::once(n - 1))
            .filter(|i| v[*i] <= self.max_ms())
            .map(|i| {
                format!(
                    "{:.1},{:.1}",
                    self.x(v[i]),
                    self.y((i + 1) as f64 / n as f64)
                )
            })
            .collect();
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            pts.join(" ")
        );
        let label = format!(
            "{:.0}/s: p50 {:.2} ms, p99 {:.2} ms",
            st.offered_per_s, st.e2e_ms.p50, st.e2e_ms.p99
        );
        legend(s, CDF_LEFT, k, color, &label);
    }
}

/// The `row`th legend entry of the plot at `left`: a short line and its
/// label.
fn legend(s: &mut String, left: f64, row: usize, color: &str, label: &str) {
    let ly_legend = TOP + 14.0 + 16.0 * row as f64;
    let _ = write!(
        s,
        r#"<line x1="{}" x2="{}" y1="{ly_legend}" y2="{ly_legend}" stroke="{color}" stroke-width="2"/><text x="{}" y="{}">{label}</text>"#,
        left + 10.0,
        left + 30.0,
        left + 36.0,
        ly_legend + 4.0
    );
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

fn axes(s: &mut String, x: f64, y: f64, w: f64, h: f64) {
    let _ = write!(
        s,
        r##"<rect x="{x}" y="{y}" width="{w}" height="{h}" fill="none" stroke="#888"/>"##
    );
}

fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
