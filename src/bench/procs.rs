//! Child processes of the harness (upstream, server, agent, raw transport
//! peers) and what /proc says about them: CPU seconds and resident memory.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::io::{AsyncBufReadExt, BufReader};

use super::error::BenchError;

/// A child process, killed when dropped.
pub struct Proc {
    child: tokio::process::Child,
    pub pid: u32,
    /// Its first stdout lines, up to the ones waited for.
    pub lines: Vec<String>,
}

impl Proc {
    /// Starts `bin args…` and waits until stdout has shown every `ready` text.
    /// Standard error goes to `log`.
    pub async fn spawn(
        bin: &Path,
        args: &[String],
        log: &Path,
        ready: &[&str],
    ) -> Result<Proc, BenchError> {
        let stderr = std::fs::File::create(log)
            .map_err(|e| BenchError::new(format!("{}: {e}", log.display())))?;
        let mut child = tokio::process::Command::new(bin)
            .args(args)
            .env("WARREN_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| BenchError::new(format!("starting {}: {e}", bin.display())))?;
        let pid = child.id().unwrap_or(0);
        let mut out = BufReader::new(child.stdout.take().expect("piped")).lines();
        let mut lines = Vec::new();
        let mut pending: Vec<&str> = ready.to_vec();
        let waited = tokio::time::timeout(Duration::from_secs(30), async {
            while !pending.is_empty() {
                match out.next_line().await {
                    Ok(Some(line)) => {
                        pending.retain(|needle| !line.contains(needle));
                        lines.push(line);
                    }
                    _ => return false,
                }
            }
            true
        })
        .await;
        if !matches!(waited, Ok(true)) {
            return Err(BenchError::new(format!(
                "{} {} did not become ready (see {})",
                bin.display(),
                args.join(" "),
                log.display()
            )));
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = out.next_line().await {} });
        Ok(Proc { child, pid, lines })
    }

    /// The text after `prefix` on the first stdout line containing it.
    pub fn value_after(&self, prefix: &str) -> Option<String> {
        self.lines.iter().find_map(|l| {
            l.find(prefix).map(|i| {
                l[i + prefix.len()..]
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
        })
    }

    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.pid)
    }

    pub fn rss(&self) -> u64 {
        rss_bytes(self.pid)
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// User + system CPU seconds of a process so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields overall, i.e. the 12th and 13th after it.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / clock_ticks()
}

/// Resident set size in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:") * 1024
}

/// A `/proc/PID/status` field in KiB (0 when the process is gone).
fn status_kib(pid: u32, field: &str) -> u64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .unwrap_or(0)
}

/// Peak RSS of some processes over a stretch of the run, from the kernel's
/// own high-water mark (`VmHWM`, reset through `clear_refs` at the start),
/// so no short peak is missed between samples.
pub struct PeakRss {
    pids: Vec<u32>,
}

impl PeakRss {
    pub fn start(pids: &[u32]) -> PeakRss {
        for pid in pids {
            // "5" resets the peak RSS to the current RSS (Linux ≥ 4.0).
            let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
        }
        PeakRss {
            pids: pids.to_vec(),
        }
    }

    /// Peak RSS per process since `start`, in the order given to it.
    pub async fn finish(self) -> Vec<u64> {
        self.pids
            .iter()
            .map(|pid| status_kib(*pid, "VmHWM:") * 1024)
            .collect()
    }
}

/// A scratch directory for one run's databases, certificates and logs.
pub fn scratch_dir(out: &Path) -> Result<PathBuf, BenchError> {
    let dir = out.join("run");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("logs"))
        .map_err(|e| BenchError::new(format!("{}: {e}", dir.display())))?;
    Ok(dir)
}
