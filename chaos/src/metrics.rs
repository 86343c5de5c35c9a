//! The consumers' counters from the services' `/metrics`, summed over every
//! process incarnation. A counter starts at 0 in each new process, so the
//! harness keeps the last value it saw per (binary, incarnation) and adds
//! them up. It scrapes every few hundred milliseconds and right before it
//! stops a process itself; what a process counted after its last scrape
//! and before it crashed (the processor's injected aborts) is not seen, so
//! the sums are lower bounds when a process died on its own.
//!
//! [`logged_duplicates`] counts the same events exactly, in the log lines
//! the consumers write for each duplicate (stderr is unbuffered, and the
//! line is written before the handler returns, so an abort loses none).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use ordermesh_runtime::metrics::{
    CONSUMER_DEAD_LETTERED, CONSUMER_DUPLICATES, CONSUMER_PROCESSED, CONSUMER_RETRIES,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::mesh::Binary;

/// One consumer's counters (all series of each metric summed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub processed: u64,
    /// Deliveries the inbox recognised as already applied.
    pub duplicates: u64,
    pub retries: u64,
    pub dead_lettered: u64,
}

impl Counters {
    fn max(self, other: Self) -> Self {
        Self {
            processed: self.processed.max(other.processed),
            duplicates: self.duplicates.max(other.duplicates),
            retries: self.retries.max(other.retries),
            dead_lettered: self.dead_lettered.max(other.dead_lettered),
        }
    }

    fn add(self, other: Self) -> Self {
        Self {
            processed: self.processed + other.processed,
            duplicates: self.duplicates + other.duplicates,
            retries: self.retries + other.retries,
            dead_lettered: self.dead_lettered + other.dead_lettered,
        }
    }
}

/// The last counters seen per process incarnation.
#[derive(Debug, Default)]
pub struct Scraper {
    seen: HashMap<(Binary, u32), Counters>,
}

impl Scraper {
    /// Reads `/metrics` of incarnation `incarnation` of `binary` at `addr`;
    /// a process that does not answer (dying, starting) is skipped.
    pub async fn scrape(&mut self, binary: Binary, incarnation: u32, addr: SocketAddr) {
        if let Ok(text) = get_metrics(addr).await {
            let now = parse(&text);
            let entry = self.seen.entry((binary, incarnation)).or_default();
            *entry = entry.max(now);
        }
    }

    /// The sum over every incarnation of `binary`.
    pub fn total(&self, binary: Binary) -> Counters {
        self.seen
            .iter()
            .filter(|((b, _), _)| *b == binary)
            .fold(Counters::default(), |sum, (_, c)| sum.add(*c))
    }
}

/// What each service logs when its inbox skips a delivery (see the
/// `Duplicate` arms in `processor-svc/src/consumer.rs` and
/// `order-svc/src/consumer.rs`).
fn duplicate_log_lines(binary: Binary) -> &'static [&'static str] {
    match binary {
        Binary::ProcessorSvc => &["message already applied; skipped"],
        Binary::OrderSvc => &[
            "payment result already applied; skipping",
            "refund already applied; skipping",
        ],
        Binary::Relay => &[],
    }
}

/// Duplicates `binary` logged in `log` (every incarnation appends to it).
pub fn logged_duplicates(binary: Binary, log: &std::path::Path) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(log).with_context(|| format!("read {}", log.display()))?;
    let needles = duplicate_log_lines(binary);
    Ok(text
        .lines()
        .filter(|l| needles.iter().any(|n| l.contains(n)))
        .count() as u64)
}

/// Sums every series of the consumer metrics in Prometheus text.
pub fn parse(text: &str) -> Counters {
    let mut c = Counters::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = series.split('{').next().unwrap_or_default();
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let value = value as u64;
        match name {
            CONSUMER_PROCESSED => c.processed += value,
            CONSUMER_DUPLICATES => c.duplicates += value,
            CONSUMER_RETRIES => c.retries += value,
            CONSUMER_DEAD_LETTERED => c.dead_lettered += value,
            _ => {}
        }
    }
    c
}

/// `GET /metrics` over HTTP/1.1, bounded to 2 s.
async fn get_metrics(addr: SocketAddr) -> anyhow::Result<String> {
    tokio::time::timeout(Duration::from_secs(2), async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(
                format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        let response = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = response
            .split_once("\r\n\r\n")
            .context("no end of headers")?;
        if !head.starts_with("HTTP/1.1 200") {
            bail!("{}", head.lines().next().unwrap_or_default());
        }
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            return Ok(dechunk(body));
        }
        Ok(body.to_owned())
    })
    .await
    .context("scrape timed out")?
}

/// The payload of a chunked body.
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP ordermesh_consumer_duplicates_total x\n\
        # TYPE ordermesh_consumer_duplicates_total counter\n\
        ordermesh_consumer_duplicates_total{queue=\"q\"} 7\n\
        ordermesh_consumer_processed_total{queue=\"q\"} 120\n\
        ordermesh_consumer_processed_total{queue=\"r\"} 3\n\
        ordermesh_consumer_retries_total{queue=\"q\"} 2\n\
        ordermesh_rpc_requests_total{service=\"s\",method=\"m\",code=\"OK\"} 99\n";

    #[test]
    fn parses_the_consumer_counters() {
        assert_eq!(
            parse(TEXT),
            Counters {
                processed: 123,
                duplicates: 7,
                retries: 2,
                dead_lettered: 0
            }
        );
    }

    #[test]
    fn sums_incarnations_and_keeps_the_highest_value_of_each() {
        let mut s = Scraper::default();
        let c = |d| Counters {
            duplicates: d,
            ..Default::default()
        };
        s.seen.insert((Binary::ProcessorSvc, 1), c(5));
        s.seen.insert((Binary::ProcessorSvc, 2), c(3).max(c(2)));
        s.seen.insert((Binary::OrderSvc, 1), c(100));
        assert_eq!(s.total(Binary::ProcessorSvc).duplicates, 8);
        assert_eq!(s.total(Binary::OrderSvc).duplicates, 100);
    }

    #[test]
    fn counts_duplicates_in_the_logs() {
        let dir = std::env::temp_dir().join(format!("chaos-log-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("processor-svc.log");
        std::fs::write(
            &log,
            "{\"fields\":{\"message\":\"message already applied; skipped\"}}\n\
             {\"fields\":{\"message\":\"payment succeeded\"}}\n\
             ---- chaos: starting processor-svc #2\n\
             {\"fields\":{\"message\":\"message already applied; skipped\"}}\n",
        )
        .unwrap();
        assert_eq!(logged_duplicates(Binary::ProcessorSvc, &log).unwrap(), 2);
        assert_eq!(logged_duplicates(Binary::OrderSvc, &log).unwrap(), 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn dechunks() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
    }
}
