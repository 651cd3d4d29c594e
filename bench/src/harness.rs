//! What the benchmark programs share: percentiles, a process's CPU time and (peak) RSS from
//! `/proc`, and the service binaries they run as child processes. The private nats-server and
//! the throwaway database are `klinebus_testkit`'s `NatsServer::try_start` and
//! `TestDb::try_named`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

/// The value at quantile `p` (0-1) of ascending `sorted` (nearest rank); NaN when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A process's resource use, read from `/proc`.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// User + system CPU seconds since it started.
    pub cpu_secs: f64,
    /// Resident set size now, MiB (`VmRSS`).
    pub rss_mib: f64,
    /// Peak resident set size, MiB (`VmHWM`).
    pub peak_rss_mib: f64,
}

impl Usage {
    /// Of the process `pid`; an error once it has exited.
    pub fn of(pid: u32) -> anyhow::Result<Self> {
        Self::read(&pid.to_string())
    }

    /// Of this process.
    pub fn own() -> anyhow::Result<Self> {
        Self::read("self")
    }

    fn read(pid: &str) -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading /proc/{pid}/stat"))?;
        // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        let mib = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
                / 1024.0
        };
        Ok(Self {
            // Linux reports in USER_HZ, 100 on every mainstream configuration.
            cpu_secs: (ticks(11) + ticks(12)) / 100.0,
            rss_mib: mib("VmRSS:"),
            peak_rss_mib: mib("VmHWM:"),
        })
    }
}

/// The processes for which `keep(comm, parent pid, command line)` is true, from `/proc` (what
/// cannot be read, e.g. a process that just exited, is skipped).
pub fn pids_where(keep: impl Fn(&str, u32, &str) -> bool) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat.get(open + 1..close).unwrap_or("");
        let ppid = stat
            .get(close + 1..)
            .and_then(|r| r.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        if keep(comm, ppid, &cmdline) {
            out.push(pid);
        }
    }
    out
}

/// CPU seconds a set of processes spent during a measurement, sampled now and then from
/// `/proc` (a process that exits between two samples counts until the last one).
#[derive(Debug, Default)]
pub struct CpuTracker {
    /// Per pid: CPU seconds when first seen (or 0) and when last seen.
    seen: HashMap<u32, (f64, f64)>,
}

impl CpuTracker {
    /// Samples `pids`. A pid not seen before counts from its CPU time now when `existing`
    /// (it ran before the measurement began), from 0 otherwise (it started during it).
    pub fn sample(&mut self, pids: &[u32], existing: bool) {
        for &pid in pids {
            let Ok(u) = Usage::of(pid) else { continue };
            let e = self
                .seen
                .entry(pid)
                .or_insert((if existing { u.cpu_secs } else { 0.0 }, u.cpu_secs));
            e.1 = u.cpu_secs;
        }
    }

    /// CPU seconds spent since each process was first counted.
    pub fn seconds(&self) -> f64 {
        self.seen.values().map(|(first, last)| last - first).sum()
    }

    /// Processes counted.
    pub fn processes(&self) -> usize {
        self.seen.len()
    }
}

/// Resets this process's peak RSS to its current RSS (`/proc/self/clear_refs`), so a later
/// [`Usage::own`] tells the peak of what ran since. Best effort: the figure stays the
/// whole-process peak where the kernel refuses.
pub fn reset_own_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// A binary next to the running one: the service binaries `cargo build --release` put beside
/// the benchmarks in `target/release`.
pub fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    Ok(std::env::current_exe()?
        .parent()
        .context("no directory for the current executable")?
        .join(name))
}

/// Sends SIGTERM to a child (a graceful stop, as in production) and waits up to 15 s; prints
/// how it ended.
pub async fn terminate(child: &mut tokio::process::Child, name: &str) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    match tokio::time::timeout(Duration::from_secs(15), child.wait()).await {
        Ok(Ok(s)) => println!("{name} exit after SIGTERM: {s}"),
        _ => println!("{name} did not exit within 15 s of SIGTERM"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 51.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn own_usage_is_read() -> anyhow::Result<()> {
        let u = Usage::own()?;
        assert!(u.rss_mib > 0.0 && u.peak_rss_mib >= u.rss_mib);
        Ok(())
    }
}
