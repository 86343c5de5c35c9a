//! The mesh's child processes: each started under a label (the binary's
//! name, or another for a second copy), counted per start (incarnations),
//! its output kept as [`Output`] says, killed when dropped.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

/// Where a binary's stdout and stderr go.
#[derive(Debug, Clone)]
pub enum Output {
    /// stdout discarded, stderr into the caller's own (a test shows it when
    /// it fails).
    Inherit,
    /// Both into `<dir>/<label>.log`: emptied at the label's first start,
    /// appended to by later ones, each start opened by a line
    /// `---- <banner>: starting <label> #<incarnation>`.
    LogFiles { dir: PathBuf, banner: &'static str },
}

/// A process that exited without being asked to.
#[derive(Debug)]
pub struct Exit {
    pub label: String,
    pub incarnation: u32,
    pub status: ExitStatus,
    /// How long it had run.
    pub uptime: Duration,
}

struct Running {
    label: String,
    binary: String,
    child: Child,
    incarnation: u32,
    started: Instant,
}

pub(super) struct Processes {
    bin_dir: PathBuf,
    output: Output,
    /// In start order.
    running: Vec<Running>,
    /// Starts so far per label; the current incarnation is the last one.
    starts: HashMap<String, u32>,
}

impl Processes {
    pub(super) fn new(bin_dir: PathBuf, output: Output) -> anyhow::Result<Self> {
        if let Output::LogFiles { dir, .. } = &output {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        Ok(Self {
            bin_dir,
            output,
            running: Vec::new(),
            starts: HashMap::new(),
        })
    }

    /// Starts `binary` as `label` (a new incarnation) with `env`.
    pub(super) fn spawn<'a>(
        &mut self,
        label: &str,
        binary: &str,
        env: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> anyhow::Result<()> {
        let incarnation = {
            let n = self.starts.entry(label.to_owned()).or_insert(0);
            *n += 1;
            *n
        };
        let (stdout, stderr) = self.output(label, incarnation)?;
        let child = Command::new(self.bin_dir.join(binary))
            .envs(env)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {label}"))?;
        self.running.push(Running {
            label: label.to_owned(),
            binary: binary.to_owned(),
            child,
            incarnation,
            started: Instant::now(),
        });
        Ok(())
    }

    /// stdout and stderr of the `incarnation`th start of `label`.
    fn output(&self, label: &str, incarnation: u32) -> anyhow::Result<(Stdio, Stdio)> {
        let Output::LogFiles { banner, .. } = &self.output else {
            return Ok((Stdio::null(), Stdio::inherit()));
        };
        let path = self.log_path(label).expect("log files");
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(incarnation > 1)
            .truncate(incarnation == 1)
            .open(&path)
            .with_context(|| format!("open {}", path.display()))?;
        std::io::Write::write_all(
            &mut log,
            format!("---- {banner}: starting {label} #{incarnation}\n").as_bytes(),
        )?;
        Ok((log.try_clone()?.into(), log.into()))
    }

    pub(super) fn log_path(&self, label: &str) -> Option<PathBuf> {
        match &self.output {
            Output::LogFiles { dir, .. } => Some(dir.join(format!("{label}.log"))),
            Output::Inherit => None,
        }
    }

    pub(super) fn incarnation(&self, label: &str) -> Option<u32> {
        self.find(label).map(|i| self.running[i].incarnation)
    }

    pub(super) fn starts(&self, label: &str) -> u32 {
        self.starts.get(label).copied().unwrap_or(0)
    }

    pub(super) fn pids(&self) -> Vec<(&str, u32)> {
        self.running
            .iter()
            .filter_map(|r| Some((r.label.as_str(), r.child.id()?)))
            .collect()
    }

    fn find(&self, label: &str) -> Option<usize> {
        self.running.iter().position(|r| r.label == label)
    }

    /// The processes that exited since the last call, by label.
    pub(super) fn reap(&mut self) -> anyhow::Result<Vec<Exit>> {
        let mut exited = Vec::new();
        let mut i = 0;
        while i < self.running.len() {
            let r = &mut self.running[i];
            if let Some(status) = r.child.try_wait()? {
                exited.push(Exit {
                    label: r.label.clone(),
                    incarnation: r.incarnation,
                    status,
                    uptime: r.started.elapsed(),
                });
                self.running.remove(i);
            } else {
                i += 1;
            }
        }
        exited.sort_by(|a, b| a.label.cmp(&b.label));
        Ok(exited)
    }

    /// Fails when a process exited, naming it (and its log).
    pub(super) fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(e) = self.reap()?.into_iter().next() {
            let log = self
                .log_path(&e.label)
                .map(|p| format!("; see {}", p.display()))
                .unwrap_or_default();
            bail!("{} exited ({}){log}", e.label, e.status);
        }
        Ok(())
    }

    /// SIGKILL, and wait for the process to be gone.
    pub(super) async fn kill(&mut self, label: &str) -> anyhow::Result<()> {
        if let Some(i) = self.find(label) {
            let mut r = self.running.remove(i);
            r.child.kill().await.context("SIGKILL")?;
        }
        Ok(())
    }

    /// SIGTERM, then up to `grace` for a clean exit, then SIGKILL; the
    /// exit status when it exited by itself.
    pub(super) async fn terminate(&mut self, label: &str, grace: Duration) -> Option<ExitStatus> {
        let mut r = self.running.remove(self.find(label)?);
        if let Some(pid) = r.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        match tokio::time::timeout(grace, r.child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                eprintln!("{label} did not stop within {grace:?} of SIGTERM; killing it");
                let _ = r.child.kill().await;
                None
            }
        }
    }

    /// Terminates everything, each with `grace`: relays first (they drain
    /// their batch), then the rest, last started first.
    pub(super) async fn stop(&mut self, grace: Duration) {
        let mut order: Vec<(bool, String)> = self
            .running
            .iter()
            .rev()
            .map(|r| (r.binary != "relay", r.label.clone()))
            .collect();
        order.sort_by_key(|(not_relay, _)| *not_relay);
        for (_, label) in order {
            self.terminate(&label, grace).await;
        }
    }
}
