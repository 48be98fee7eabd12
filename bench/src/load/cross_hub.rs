//! The cross-hub run (`--cross-hub`): the same workload with the publishers on one hub and the
//! subscribers on another, the two joined through NATS (`tej-hub serve --cluster`).
//!
//! - [`CrossHub`]: what the run measures: a `nats-server` on a free loopback port and two
//!   `tej-hub serve` children (`bench-a` for the publishers, `bench-b` for the subscribers), each
//!   with the default settings (plus any `--serve-arg`) and `--cluster nats://... --hub-name ...`;
//!   all three killed when dropped. [`CrossHub::joined`] waits until each hub's `INFO` shows the
//!   other (`cluster.remote_hubs` = 1).
//! - [`CpuClock`]: the CPU time each of the three processes and the bench itself used during the
//!   run (`/proc/PID/stat`), to see where the time goes.
//! - [`ClusterState`]: each hub's `cluster` object from `INFO` after the run (messages and bytes
//!   through NATS, drops, gaps, slow-consumer events).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tej_hub::hub::HubClient;

use super::super::hub::ServerProcess;
use super::nats::NatsServer;
use super::LoadError;
use crate::Failure;

/// The hubs' names in the cluster.
pub(super) const NAMES: [&str; 2] = ["bench-a", "bench-b"];
/// How long the two hubs may take to see each other once both are listening.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `INFO` is asked while waiting for them.
const JOIN_POLL: Duration = Duration::from_millis(50);
/// How long one connect and `INFO` may take.
const INFO_TIMEOUT: Duration = Duration::from_secs(5);
/// nats-server's default payload limit: the hubs cut what they send to fit it.
const CLUSTER_MAX_PAYLOAD: u64 = 1024 * 1024;

/// The cluster a cross-hub run measures; every process is killed when dropped.
pub(super) struct CrossHub {
    /// The NATS server joining the hubs.
    nats: NatsServer,
    /// `bench-a` (publishers) and `bench-b` (subscribers).
    hubs: [ServerProcess; 2],
}

/// Where the cluster's processes were, for the report.
#[derive(Debug, Clone)]
pub(super) struct CrossHubInfo {
    /// The NATS server joining the hubs.
    pub(super) nats: SocketAddr,
    /// Its process id.
    pub(super) nats_pid: Option<u32>,
    /// The hubs (publishers' first): address and process id.
    pub(super) hubs: [(SocketAddr, u32); 2],
    /// CPU seconds each process used during the run.
    pub(super) cpu: CpuSeconds,
    /// Each hub's `cluster` object from `INFO` after the run.
    pub(super) state: ClusterState,
}

impl CrossHubInfo {
    /// The cluster as a JSON object.
    pub(super) fn json(&self) -> Value {
        let hub = |index: usize| {
            let (addr, pid) = self.hubs[index];
            json!({ "name": NAMES[index], "addr": addr.to_string(), "pid": pid })
        };
        json!({
            "nats": { "addr": self.nats.to_string(), "pid": self.nats_pid },
            "publishers_hub": hub(0),
            "subscribers_hub": hub(1),
            "cpu_seconds": self.cpu.json(),
            "cluster_after": {
                NAMES[0]: self.state.0[0],
                NAMES[1]: self.state.0[1],
            },
        })
    }
}

impl CrossHub {
    /// Spawns the NATS server, then `bench-a`, then `bench-b`, each waited for (its address
    /// line; a hub prints it once it has heard the hubs already up). `extra` goes to both hubs'
    /// `serve`.
    ///
    /// # Errors
    /// [`Failure`] when `nats-server` is not installed or a process does not start.
    pub(super) fn start(extra: &[String], deadline: Instant) -> Result<CrossHub, Failure> {
        let nats = NatsServer::spawn(CLUSTER_MAX_PAYLOAD, deadline)
            .map_err(|failure| cross_hub_failure("the cluster's nats-server", failure))?;
        let url = format!("nats://{}", nats.addr());
        let hub = |name: &str| {
            let mut args = extra.to_vec();
            args.extend([
                "--cluster".to_owned(),
                url.clone(),
                "--hub-name".to_owned(),
                name.to_owned(),
            ]);
            ServerProcess::hub(&args, deadline)
                .map_err(|failure| cross_hub_failure(&format!("hub {name}"), failure))
        };
        let a = hub(NAMES[0])?;
        let b = hub(NAMES[1])?;
        Ok(CrossHub { nats, hubs: [a, b] })
    }

    /// The publishers' hub (`bench-a`).
    pub(super) fn publishers(&self) -> SocketAddr {
        self.hubs[0].addr()
    }

    /// The subscribers' hub (`bench-b`).
    pub(super) fn subscribers(&self) -> SocketAddr {
        self.hubs[1].addr()
    }

    /// Waits until each hub's `INFO` shows one remote hub, asking every [`JOIN_POLL`] for at most
    /// [`JOIN_TIMEOUT`].
    ///
    /// # Errors
    /// [`LoadError::NotJoined`] with what each hub saw last, or a connection's failure.
    pub(super) async fn joined(&self) -> Result<(), LoadError> {
        let limit = Instant::now() + JOIN_TIMEOUT;
        let mut clients = Vec::new();
        for hub in &self.hubs {
            clients.push(connect(hub.addr()).await?);
        }
        loop {
            let mut seen = [None; 2];
            for (index, client) in clients.iter_mut().enumerate() {
                seen[index] = cluster_of(client).await?["remote_hubs"].as_u64();
            }
            if seen == [Some(1); 2] {
                return Ok(());
            }
            if Instant::now() >= limit {
                return Err(LoadError::NotJoined {
                    seconds: JOIN_TIMEOUT.as_secs(),
                    remote_hubs: seen,
                });
            }
            tokio::time::sleep(JOIN_POLL).await;
        }
    }

    /// Each hub's `cluster` object from `INFO` now.
    ///
    /// # Errors
    /// A connection's or `INFO`'s failure.
    pub(super) async fn state(&self) -> Result<ClusterState, LoadError> {
        let mut state = [Value::Null, Value::Null];
        for (index, hub) in self.hubs.iter().enumerate() {
            let mut client = connect(hub.addr()).await?;
            state[index] = cluster_of(&mut client).await?;
        }
        Ok(ClusterState(state))
    }

    /// A clock on the CPU time of the three processes and of this one, started now.
    pub(super) fn cpu_clock(&self) -> CpuClock {
        CpuClock::start(self.pids())
    }

    /// The process ids: NATS (when known), `bench-a`, `bench-b`, this process.
    fn pids(&self) -> [Option<u32>; 4] {
        [
            self.nats.pid(),
            Some(self.hubs[0].pid()),
            Some(self.hubs[1].pid()),
            Some(std::process::id()),
        ]
    }

    /// Where everything is, with the run's CPU time and the hubs' state after it.
    pub(super) fn info(&self, cpu: CpuSeconds, state: ClusterState) -> CrossHubInfo {
        CrossHubInfo {
            nats: self.nats.addr(),
            nats_pid: self.nats.pid(),
            hubs: [
                (self.hubs[0].addr(), self.hubs[0].pid()),
                (self.hubs[1].addr(), self.hubs[1].pid()),
            ],
            cpu,
            state,
        }
    }

    /// What the processes' exits and last log lines say, for an error message.
    pub(super) fn explain(&mut self) -> String {
        let mut text = self.nats.explain();
        for (name, hub) in NAMES.iter().zip(&mut self.hubs) {
            let more = hub.explain();
            if !more.is_empty() {
                text.push_str(&format!(" [{name}]{more}"));
            }
        }
        text
    }
}

/// `failure` with `what` in front, so a message says which of the three processes failed.
fn cross_hub_failure(what: &str, failure: Failure) -> Failure {
    match failure {
        Failure::Failed(error) => Failure::Failed(format!("--cross-hub: {what}: {error}")),
        other => other,
    }
}

/// A control connection to the hub at `addr`, within [`INFO_TIMEOUT`].
async fn connect(addr: SocketAddr) -> Result<HubClient, LoadError> {
    tokio::time::timeout(INFO_TIMEOUT, HubClient::connect(addr))
        .await
        .map_err(|_| LoadError::Timeout("connecting to ask INFO"))?
        .map_err(|source| LoadError::Info {
            what: "cannot connect",
            source,
        })
}

/// The `cluster` object of the hub's `INFO` reply (`null` on a hub outside a cluster).
async fn cluster_of(client: &mut HubClient) -> Result<Value, LoadError> {
    let info = tokio::time::timeout(INFO_TIMEOUT, client.info())
        .await
        .map_err(|_| LoadError::Timeout("waiting for INFO"))?
        .map_err(|source| LoadError::Info {
            what: "INFO failed",
            source,
        })?;
    // The report carries it as JSON; a plain struct always serializes.
    Ok(serde_json::to_value(info.cluster).unwrap_or_default())
}

/// Each hub's `cluster` object from `INFO` (publishers' hub first).
#[derive(Debug, Clone, Default)]
pub(super) struct ClusterState(pub(super) [Value; 2]);

/// CPU seconds (user + system) per process: NATS, `bench-a`, `bench-b`, the bench (the load).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct CpuSeconds(pub(super) [Option<f64>; 4]);

impl CpuSeconds {
    /// The names the report gives the four processes.
    const NAMES: [&'static str; 4] = ["nats_server", "publishers_hub", "subscribers_hub", "load"];

    /// `{"nats_server": 1.2, ...}`.
    fn json(&self) -> Value {
        let mut object = json!({});
        for (name, seconds) in Self::NAMES.into_iter().zip(self.0) {
            object[name] = json!(seconds.map(|s| (s * 1000.0).round() / 1000.0));
        }
        object
    }

    /// For a table: `nats-server 1.20 s, bench-a 0.80 s, ...`.
    pub(super) fn described(&self) -> String {
        let names = ["nats-server", NAMES[0], NAMES[1], "load (bench)"];
        names
            .into_iter()
            .zip(self.0)
            .map(|(name, seconds)| match seconds {
                Some(seconds) => format!("{name} {seconds:.2} s"),
                None => format!("{name} -"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// CPU time used by some processes since [`start`](Self::start).
pub(super) struct CpuClock {
    pids: [Option<u32>; 4],
    at_start: [Option<f64>; 4],
}

impl CpuClock {
    fn start(pids: [Option<u32>; 4]) -> CpuClock {
        CpuClock {
            pids,
            at_start: pids.map(|pid| pid.and_then(cpu_seconds)),
        }
    }

    /// CPU seconds each process used since the start.
    pub(super) fn read(&self) -> CpuSeconds {
        let now = self.pids.map(|pid| pid.and_then(cpu_seconds));
        let mut used = [None; 4];
        for (index, slot) in used.iter_mut().enumerate() {
            if let (Some(before), Some(after)) = (self.at_start[index], now[index]) {
                *slot = Some(after - before);
            }
        }
        CpuSeconds(used)
    }
}

/// User + system CPU seconds process `pid` has used so far (`/proc/PID/stat`, fields 14 and 15).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat).map(|ticks| ticks as f64 / ticks_per_second())
}

/// `utime + stime` in clock ticks from a `/proc/PID/stat` line. The command name (field 2) is in
/// parentheses and may hold spaces: fields are counted after its closing parenthesis.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The kernel's clock ticks per second (`sysconf(_SC_CLK_TCK)`).
fn ticks_per_second() -> f64 {
    rustix::param::clock_ticks_per_second() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_from_stat() {
        let stat = "1234 (tej hub) S 1 1234 1234 0 -1 4194560 500 0 0 0 150 25 0 0 20 0 3 0 99";
        assert_eq!(parse_cpu_ticks(stat), Some(175));
        assert_eq!(parse_cpu_ticks("1234 (x"), None);
        assert!(cpu_seconds(std::process::id()).is_some());
    }
}
