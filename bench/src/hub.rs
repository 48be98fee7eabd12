//! The hub a workload measures: which one the flags name ([`HubChoice`]), that hub started or
//! found ([`RunningHub`]: in this process, a `tej-hub serve` child started from this very binary
//! ([`ServerProcess`], which also runs `nats-server` for the NATS yardstick), or someone
//! else's), where it is ([`HubInfo`]), and the sampling of a hub's memory from
//! `/proc/PID/status` ([`RssSampler`]).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tej_hub::hub::config::HubConfig;
use tej_hub::hub::HubHandle;

use super::Common;
use crate::Failure;

/// How long a server child may take to announce its address.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How many of the child's last log lines are kept to explain a failure.
const KEPT_LOG_LINES: usize = 20;
/// How often [`RssSampler`] reads `/proc/PID/status`.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// Which hub to measure.
#[derive(Debug, Clone)]
pub(super) enum HubChoice {
    /// In this process, default settings.
    Embedded,
    /// A `tej-hub serve` child with these extra flags.
    Spawned(Vec<String>),
    /// Already running there (with its pid, when given).
    Given(SocketAddr, Option<u32>),
}

impl HubChoice {
    /// The hub `common` names; `embedded` (`--embedded`, which conflicts with `--hub` and
    /// `--serve-arg`) runs it in this process.
    pub(super) fn new(common: &Common, embedded: bool) -> HubChoice {
        match (embedded, common.hub) {
            (true, _) => HubChoice::Embedded,
            (false, Some(addr)) => HubChoice::Given(addr, common.hub_pid),
            (false, None) => HubChoice::Spawned(common.serve_args.clone()),
        }
    }
}

/// Where the measured hub was.
#[derive(Debug, Clone, Copy)]
pub(super) struct HubInfo {
    /// Its address.
    pub(super) addr: SocketAddr,
    /// Where it came from.
    pub(super) origin: Origin,
    /// Its process id, when known (this process for an embedded hub).
    pub(super) pid: Option<u32>,
}

/// `127.0.0.1:4000 (pid 12)`.
impl std::fmt::Display for HubInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.addr)?;
        match self.pid {
            Some(pid) => write!(f, " (pid {pid})"),
            None => Ok(()),
        }
    }
}

/// Where the measured hub came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// Run in this process (`--embedded`).
    Embedded,
    /// Spawned as a child process.
    Spawned,
    /// Given with `--hub`.
    Given,
}

impl Origin {
    /// `embedded`, `spawned` or `given`.
    pub(super) fn name(self) -> &'static str {
        match self {
            Origin::Embedded => "embedded",
            Origin::Spawned => "spawned",
            Origin::Given => "given",
        }
    }
}

impl HubInfo {
    /// Whether the bench spawned it.
    pub(super) fn spawned(&self) -> bool {
        self.origin == Origin::Spawned
    }

    /// For a table: `127.0.0.1:4000, pid 12 (spawned: serve --listen 127.0.0.1:0)`.
    pub(super) fn described(&self) -> String {
        let origin = match self.origin {
            Origin::Embedded => "embedded",
            Origin::Spawned => "spawned: serve --listen 127.0.0.1:0",
            Origin::Given => "given with --hub",
        };
        let pid = self.pid.map(|pid| format!(", pid {pid}"));
        format!("{}{} ({origin})", self.addr, pid.unwrap_or_default())
    }
}

/// The hub a run measures.
pub(super) enum RunningHub {
    /// In this process, on a thread of its own.
    Embedded(HubHandle),
    /// A child process.
    Spawned(ServerProcess),
    /// Someone else's.
    Given(SocketAddr, Option<u32>),
}

impl RunningHub {
    /// Starts (or finds) the hub `choice` names.
    pub(super) fn start(choice: &HubChoice, deadline: Instant) -> Result<RunningHub, Failure> {
        match choice {
            HubChoice::Embedded => {
                let listener = TcpListener::bind("127.0.0.1:0").map_err(|error| {
                    Failure::Failed(format!("cannot listen on 127.0.0.1:0: {error}"))
                })?;
                let listen = listener.local_addr().map_err(|error| {
                    Failure::Failed(format!("no address for the hub's listener: {error}"))
                })?;
                let config = HubConfig {
                    listen,
                    ..HubConfig::default()
                };
                tej_hub::hub::spawn(listener, config)
                    .map(RunningHub::Embedded)
                    .map_err(|error| Failure::Failed(format!("cannot start the hub: {error}")))
            }
            HubChoice::Spawned(extra) => {
                ServerProcess::hub(extra, deadline).map(RunningHub::Spawned)
            }
            HubChoice::Given(addr, pid) => Ok(RunningHub::Given(*addr, *pid)),
        }
    }

    /// Where it is and where it came from.
    pub(super) fn info(&self) -> HubInfo {
        match self {
            RunningHub::Embedded(handle) => HubInfo {
                addr: handle.local_addr(),
                origin: Origin::Embedded,
                pid: Some(std::process::id()),
            },
            RunningHub::Spawned(child) => HubInfo {
                addr: child.addr(),
                origin: Origin::Spawned,
                pid: Some(child.pid()),
            },
            RunningHub::Given(addr, pid) => HubInfo {
                addr: *addr,
                origin: Origin::Given,
                pid: *pid,
            },
        }
    }

    /// What a spawned hub's exit and last log lines say, for an error message.
    pub(super) fn explain(&mut self) -> String {
        match self {
            RunningHub::Spawned(child) => child.explain(),
            RunningHub::Embedded(_) | RunningHub::Given(..) => String::new(),
        }
    }

    /// Stops a hub this run started (an embedded one waits for its sessions to close).
    pub(super) fn stop(self) {
        match self {
            RunningHub::Embedded(handle) => {
                // It was measured already; a failure to stop cleanly changes no figure.
                let _ = handle.shutdown();
            }
            RunningHub::Spawned(child) => drop(child),
            RunningHub::Given(..) => {}
        }
    }
}

/// Which output of a [`ServerProcess`] announces its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Announces {
    /// Its first line on stdout (`tej-hub listening on ADDR`).
    Stdout,
    /// One of its first [`ANNOUNCE_LINES`] log lines on stderr (`nats-server`'s `Listening for
    /// client connections on ADDR`).
    Stderr,
}

/// How many log lines a server may print before the one with its address.
const ANNOUNCE_LINES: usize = 100;

/// A server child process (the hub, or `nats-server` for the NATS yardstick) and the address it
/// announced; killed when dropped.
pub(super) struct ServerProcess {
    child: Child,
    /// What it is, for messages: `the hub`, `nats-server`.
    name: &'static str,
    /// Where it listens, from its announcement.
    addr: SocketAddr,
    /// Its last log lines (stderr, and stdout but for an announcement there), oldest first.
    logs: Arc<Mutex<VecDeque<String>>>,
}

impl ServerProcess {
    /// Starts `command` with its output piped and waits (at most [`START_TIMEOUT`], and not past
    /// `deadline`) for the line `announces` names to give its address (`address` reads it off a
    /// line). `name` says what it is in messages.
    pub(super) fn start(
        mut command: Command,
        name: &'static str,
        announces: Announces,
        address: fn(&str) -> Option<SocketAddr>,
        deadline: Instant,
    ) -> Result<ServerProcess, Failure> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|error| {
                let program = command.get_program().to_string_lossy().into_owned();
                Failure::Failed(match error.kind() {
                    std::io::ErrorKind::NotFound => format!("{program} is not installed"),
                    _ => format!("cannot start {program}: {error}"),
                })
            })?;
        let logs = Arc::new(Mutex::new(VecDeque::new()));
        let (lines, announced) = mpsc::channel();
        // Both outputs are drained until the child closes them, so it never writes to a full or
        // closed pipe.
        let outputs: [(Option<Box<dyn Read + Send>>, bool); 2] = [
            (
                child
                    .stdout
                    .take()
                    .map(|out| Box::new(out) as Box<dyn Read + Send>),
                announces == Announces::Stdout,
            ),
            (
                child
                    .stderr
                    .take()
                    .map(|err| Box::new(err) as Box<dyn Read + Send>),
                announces == Announces::Stderr,
            ),
        ];
        for (output, announcing) in outputs {
            let Some(output) = output else { continue };
            let (sink, lines) = (logs.clone(), lines.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(output).lines().map_while(Result::ok) {
                    if announcing {
                        let _ = lines.send(line.clone());
                    }
                    if announces == Announces::Stdout && announcing {
                        continue;
                    }
                    if let Ok(mut logs) = sink.lock() {
                        if logs.len() == KEPT_LOG_LINES {
                            logs.pop_front();
                        }
                        logs.push_back(line);
                    }
                }
            });
        }
        drop(lines);
        let mut server = ServerProcess {
            child,
            name,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            logs,
        };
        let limit = deadline.min(Instant::now() + START_TIMEOUT);
        let most = match announces {
            Announces::Stdout => 1,
            Announces::Stderr => ANNOUNCE_LINES,
        };
        for _ in 0..most {
            let line = match announced.recv_timeout(limit.saturating_duration_since(Instant::now()))
            {
                Ok(line) => line,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(Failure::Failed(format!(
                        "{name} gave no address within {}s{}",
                        START_TIMEOUT.as_secs(),
                        server.explain()
                    )))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // Its output closed: it has exited or is about to; give it a moment to be
                    // reaped.
                    let _ = server.wait_exit(Duration::from_secs(1));
                    return Err(Failure::Failed(format!(
                        "{name} closed its output without giving its address{}",
                        server.explain()
                    )));
                }
            };
            if let Some(addr) = address(&line) {
                server.addr = addr;
                return Ok(server);
            }
            if announces == Announces::Stdout {
                return Err(Failure::Failed(format!(
                    "unexpected first line from {name}: {line:?}"
                )));
            }
        }
        Err(Failure::Failed(format!(
            "{name} gave no address in its first {most} lines{}",
            server.explain()
        )))
    }

    /// `tej-hub serve --listen 127.0.0.1:0 <extra>` (the binary [`hub_binary`] finds), as
    /// [`start`](Self::start)ed.
    pub(super) fn hub(extra: &[String], deadline: Instant) -> Result<ServerProcess, Failure> {
        let mut command = Command::new(hub_binary()?);
        command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra);
        let address = |line: &str| {
            line.strip_prefix("tej-hub listening on ")
                .and_then(|addr| addr.trim().parse().ok())
        };
        ServerProcess::start(command, "the hub", Announces::Stdout, address, deadline)
    }

    /// Where the server listens.
    pub(super) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's process id.
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
            text.push_str(&format!("; {} exited ({status})", self.name));
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

impl Drop for ServerProcess {
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

/// Entries in `/proc/PID/fd`.
pub(super) fn count_fds(pid: u32) -> Option<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|entries| entries.count() as u64)
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

/// The `tej-hub` binary to spawn: `$TEJ_HUB_BIN` (which `tej-hub bench` sets to itself), else
/// the `tej-hub` beside this binary (cargo builds both into the same folder).
fn hub_binary() -> Result<PathBuf, Failure> {
    if let Some(path) = std::env::var_os(HUB_BIN_VAR) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()
        .map_err(|error| Failure::Failed(format!("cannot find this program: {error}")))?;
    let beside = exe.with_file_name("tej-hub");
    if beside.is_file() {
        Ok(beside)
    } else {
        Err(Failure::Failed(format!(
            "no tej-hub binary at {} (build it: cargo build --release; or set {HUB_BIN_VAR})",
            beside.display()
        )))
    }
}

/// Names the `tej-hub` binary a spawned hub runs.
const HUB_BIN_VAR: &str = "TEJ_HUB_BIN";

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
