//! Evidence for what limits a run: a system-wide `perf record` (Debian's
//! linux-perf) during a step, folded and drawn as a flamegraph with the
//! `inferno` library, plus each process's share of the samples.

use std::collections::BTreeMap;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, bail};
use inferno::collapse::Collapse;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// A `perf record -a -g` running in the background.
pub struct Recording {
    child: Child,
    data: PathBuf,
    name: String,
}

/// Whether `perf` is installed and allowed to record.
pub async fn available() -> bool {
    Command::new("perf")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

/// Records `pid` (every CPU when `None`) for `seconds` into
/// `<dir>/perf-<name>.data`.
pub fn start(dir: &Path, name: &str, pid: Option<u32>, seconds: f64) -> anyhow::Result<Recording> {
    let data = dir.join(format!("perf-{name}.data"));
    let target = match pid {
        Some(pid) => vec!["-p".to_owned(), pid.to_string()],
        None => vec!["-a".to_owned()],
    };
    let child = Command::new("perf")
        .arg("record")
        .args(target)
        .args(["-g", "-F", "499", "-o"])
        .arg(&data)
        .args(["--", "sleep", &format!("{seconds:.1}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("start perf record")?;
    Ok(Recording {
        child,
        data,
        name: name.to_owned(),
    })
}

impl Recording {
    /// Waits for the recording, writes `<dir>/flamegraph-<name>.svg` and
    /// returns the share of samples per process name.
    pub async fn finish(mut self, dir: &Path, title: &str) -> anyhow::Result<Value> {
        let status = self.child.wait().await?;
        if !status.success() {
            bail!("perf record exited {status}");
        }
        let script = Command::new("perf")
            .args(["script", "-i"])
            .arg(&self.data)
            .stderr(Stdio::null())
            .output()
            .await
            .context("perf script")?;
        let svg = dir.join(format!("flamegraph-{}.svg", self.name));
        let folded_path = dir.join(format!("perf-{}.folded", self.name));
        let title = title.to_owned();
        let shares = tokio::task::spawn_blocking(move || -> anyhow::Result<Value> {
            let mut folded = Vec::new();
            inferno::collapse::perf::Folder::default()
                .collapse(BufReader::new(&script.stdout[..]), &mut folded)?;
            let text = String::from_utf8_lossy(&folded).into_owned();
            std::fs::write(&folded_path, &folded)?;
            let mut per_comm: BTreeMap<String, u64> = BTreeMap::new();
            let mut total = 0u64;
            for line in text.lines() {
                let Some((stack, count)) = line.rsplit_once(' ') else {
                    continue;
                };
                let count: u64 = count.parse().unwrap_or(0);
                let comm = stack.split(';').next().unwrap_or("?").to_owned();
                *per_comm.entry(comm).or_default() += count;
                total += count;
            }
            let mut options = inferno::flamegraph::Options::default();
            options.title = title;
            options.count_name = "samples".into();
            let file = std::fs::File::create(&svg)?;
            inferno::flamegraph::from_lines(&mut options, text.lines(), file)?;
            let mut shares: Vec<(String, u64)> = per_comm.into_iter().collect();
            shares.sort_by_key(|s| std::cmp::Reverse(s.1));
            Ok(json!({
                "flamegraph": svg.display().to_string(),
                "samples": total,
                "share_by_process": shares.iter().take(10).map(|(k, v)| (k.clone(), json!(crate::stats::r3(*v as f64 / total.max(1) as f64)))).collect::<serde_json::Map<String, Value>>(),
            }))
        })
        .await??;
        let _ = std::fs::remove_file(&self.data);
        Ok(shares)
    }
}
