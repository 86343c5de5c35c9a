//! What the kernel says about processes: resident memory of a pid
//! (`/proc/<pid>/status`) and CPU time per command name (`/proc/*/stat`),
//! so a run can say where the machine's cores went.

use std::collections::BTreeMap;

/// `VmRSS` and `VmHWM` (peak) of `pid`, in MiB.
pub fn rss_mib(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Clock ticks per second of `/proc/*/stat` times (`USER_HZ`, 100 on
/// every Linux this runs on).
fn ticks_per_second() -> f64 {
    100.0
}

/// CPU seconds (user + system) used so far by every process, summed per
/// command name (`postgres`, `beam.smp`, `relay`, ...).
pub fn cpu_by_command() -> BTreeMap<String, f64> {
    let tps = ticks_per_second();
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // comm is in parentheses and may contain spaces.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_owned();
        let rest: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        // Fields 14 and 15 (utime, stime) are at 11 and 12 after the comm.
        let (Some(u), Some(s)) = (rest.get(11), rest.get(12)) else {
            continue;
        };
        let ticks = u.parse::<f64>().unwrap_or(0.0) + s.parse::<f64>().unwrap_or(0.0);
        *out.entry(comm).or_insert(0.0) += ticks / tps;
    }
    out
}

/// Busy and total jiffies of all CPUs (`/proc/stat`).
pub fn cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    // idle + iowait
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// CPU use between two snapshots: busy share of the machine (0..1) and CPU
/// seconds per command, largest first, small ones folded into `other`.
pub struct CpuWindow {
    jiffies: (u64, u64),
    by_command: BTreeMap<String, f64>,
}

impl CpuWindow {
    pub fn start() -> Self {
        Self {
            jiffies: cpu_jiffies(),
            by_command: cpu_by_command(),
        }
    }

    pub fn finish(&self) -> (f64, Vec<(String, f64)>) {
        let (busy, total) = cpu_jiffies();
        let share = if total > self.jiffies.1 {
            (busy - self.jiffies.0) as f64 / (total - self.jiffies.1) as f64
        } else {
            0.0
        };
        let now = cpu_by_command();
        let mut deltas: Vec<(String, f64)> = now
            .into_iter()
            .map(|(k, v)| {
                let before = self.by_command.get(&k).copied().unwrap_or(0.0);
                (k, (v - before).max(0.0))
            })
            .filter(|(_, d)| *d > 0.0)
            .collect();
        deltas.sort_by(|a, b| b.1.total_cmp(&a.1));
        let mut out: Vec<(String, f64)> = Vec::new();
        let mut other = 0.0;
        for (k, d) in deltas {
            if out.len() < 7 {
                out.push((k, d));
            } else {
                other += d;
            }
        }
        if other > 0.0 {
            out.push(("other".to_owned(), other));
        }
        (share, out)
    }
}
