//! The hub a workload measures: a `tej-hub serve` child started from this very binary
//! ([`HubProcess`]), and the sampling of a hub's memory from `/proc/PID/status` ([`RssSampler`]).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::Failure;

/// How long the child may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How many of the child's last log lines are kept to explain a failure.
const KEPT_LOG_LINES: usize = 20;
/// How often [`RssSampler`] reads `/proc/PID/status`.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// A `tej-hub serve --listen 127.0.0.1:0` child process; killed when dropped.
pub(super) struct HubProcess {
    child: Child,
    /// Where it listens, from its `tej-hub listening on ADDR` line.
    addr: SocketAddr,
    /// Its last log lines (stderr), oldest first.
    logs: Arc<Mutex<VecDeque<String>>>,
}

impl HubProcess {
    /// Starts `<this binary> serve --listen 127.0.0.1:0 <extra>` and waits (at most
    /// [`START_TIMEOUT`], and not past `deadline`) for the line that gives its address.
    pub(super) fn start(extra: &[String], deadline: Instant) -> Result<HubProcess, Failure> {
        let exe = std::env::current_exe()
            .map_err(|error| Failure::Failed(format!("cannot find this program: {error}")))?;
        let mut child = Command::new(&exe)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|error| {
                Failure::Failed(format!("cannot start {} serve: {error}", exe.display()))
            })?;
        let logs = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(stderr) = child.stderr.take() {
            let sink = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Ok(mut logs) = sink.lock() {
                        if logs.len() == KEPT_LOG_LINES {
                            logs.pop_front();
                        }
                        logs.push_back(line);
                    }
                }
            });
        }
        let (lines, first) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            // Keeps draining stdout after the first line so the hub never writes to a closed pipe.
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let _ = lines.send(line);
                }
            });
        }
        let mut hub = HubProcess {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            logs,
        };
        let wait = START_TIMEOUT.min(deadline.saturating_duration_since(Instant::now()));
        let line = match first.recv_timeout(wait) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(Failure::Failed(format!(
                    "the hub printed no address within {}s{}",
                    wait.as_secs(),
                    hub.explain()
                )))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // Its stdout closed: it has exited or is about to; give it a moment to be reaped.
                let _ = hub.wait_exit(Duration::from_secs(1));
                return Err(Failure::Failed(format!(
                    "the hub closed its output without printing its address{}",
                    hub.explain()
                )));
            }
        };
        hub.addr = line
            .strip_prefix("tej-hub listening on ")
            .and_then(|addr| addr.trim().parse().ok())
            .ok_or_else(|| {
                Failure::Failed(format!("unexpected first line from the hub: {line:?}"))
            })?;
        Ok(hub)
    }

    /// Where the hub listens.
    pub(super) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The hub's process id.
    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `limit` for the child to exit.
    fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Whether the child has exited and how, and its last log lines, for an error message (empty
    /// when there is nothing to say).
    pub(super) fn explain(&mut self) -> String {
        let mut text = String::new();
        if let Ok(Some(status)) = self.child.try_wait() {
            text.push_str(&format!("; the hub exited ({status})"));
        }
        if let Ok(logs) = self.logs.lock() {
            if !logs.is_empty() {
                text.push_str("; its last log lines:");
                for line in logs.iter() {
                    text.push_str("\n  ");
                    text.push_str(line);
                }
            }
        }
        text
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What [`RssSampler`] saw, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct RssStats {
    /// `VmHWM` (the kernel's peak resident set size) at the last successful read.
    pub(super) hwm_kib: Option<u64>,
    /// The largest `VmRSS` sampled.
    pub(super) max_rss_kib: Option<u64>,
    /// `VmRSS` at the first sample (before the workload, when started early).
    pub(super) first_rss_kib: Option<u64>,
    /// How many reads of `/proc/PID/status` succeeded.
    pub(super) samples: u64,
}

impl RssStats {
    /// Adds one reading of `/proc/PID/status`.
    fn add(&mut self, status: &str) {
        let rss = field_kib(status, "VmRSS:");
        if let Some(rss) = rss {
            self.first_rss_kib.get_or_insert(rss);
            self.max_rss_kib = Some(self.max_rss_kib.map_or(rss, |max| max.max(rss)));
        }
        if let Some(hwm) = field_kib(status, "VmHWM:") {
            self.hwm_kib = Some(hwm);
        }
        if rss.is_some() {
            self.samples += 1;
        }
    }
}

/// Field `name` (e.g. `VmRSS:`) of process `pid`'s `/proc/PID/status` now, in KiB.
pub(super) fn status_kib(pid: u32, name: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    field_kib(&status, name)
}

/// A `/proc/PID/status` field given in kB (`VmHWM:    1234 kB`).
fn field_kib(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Reads a process's `VmRSS` and `VmHWM` every [`SAMPLE_EVERY`] on a thread of its own, until
/// [`finish`](Self::finish) or a deadline.
pub(super) struct RssSampler {
    /// Dropped to stop the thread (it waits on the other end between samples).
    stop: mpsc::Sender<()>,
    /// The sampling thread; returns what it saw.
    thread: JoinHandle<RssStats>,
}

impl RssSampler {
    /// Starts sampling process `pid`; the thread stops by itself at `deadline`.
    pub(super) fn start(pid: u32, deadline: Instant) -> RssSampler {
        let (stop, stopped) = mpsc::channel::<()>();
        let path = format!("/proc/{pid}/status");
        let thread = std::thread::spawn(move || {
            let mut stats = RssStats::default();
            loop {
                if let Ok(status) = std::fs::read_to_string(&path) {
                    stats.add(&status);
                }
                if Instant::now() >= deadline {
                    return stats;
                }
                match stopped.recv_timeout(SAMPLE_EVERY) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                        // One last reading, after the workload.
                        if let Ok(status) = std::fs::read_to_string(&path) {
                            stats.add(&status);
                        }
                        return stats;
                    }
                }
            }
        });
        RssSampler { stop, thread }
    }

    /// Stops sampling (after one last read) and returns what was seen.
    pub(super) fn finish(self) -> RssStats {
        drop(self.stop);
        self.thread.join().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields() {
        let status =
            "Name:\ttej-hub\nVmPeak:\t  200000 kB\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(field_kib(status, "VmHWM:"), Some(20480));
        assert_eq!(field_kib(status, "VmRSS:"), Some(10240));
        assert_eq!(field_kib(status, "VmSwap:"), None);
        let mut stats = RssStats::default();
        stats.add(status);
        stats.add(&status.replace("10240", "30000"));
        stats.add(&status.replace("10240", "5000"));
        assert_eq!(stats.first_rss_kib, Some(10240));
        assert_eq!(stats.max_rss_kib, Some(30000));
        assert_eq!(stats.hwm_kib, Some(20480));
        assert_eq!(stats.samples, 3);
    }
}
