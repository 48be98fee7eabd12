//! `tej-hub-bench` (also run as `tej-hub bench`): measurements of a hub over loopback TCP, one
//! workload per subcommand. A crate of its own, so the hub's library and binary do not compile
//! the load generators.
//!
//! This module owns what every workload shares: the subcommand group, the flags naming the hub to
//! measure ([`Common`]: a child `tej-hub serve` spawned from the `tej-hub` binary, or a running one
//! given by address), byte-size and count arguments, the runtime and the run on it
//! ([`measure_on`]), bounded waits ([`before`]), subscribing ([`confirm_sub`]) and the units. The
//! workloads live beside it:
//! - [`big_file`]: one frame carrying one large file, relayed to a few subscribers.
//! - [`load`]: many messages from P publishers to S subscribers (`throughput`, `latency`,
//!   `matrix`), against a plain forwarder as the yardstick.
//! - [`connections`]: the hub's memory per idle subscriber, and one publication's fan-out.
//! - [`soak`]: a mixed, misbehaving workload held for a while, checked for loss, order and leaks.
//!
//! Helper: [`hub`] starts (or finds) the hub and samples its memory.

mod big_file;
mod connections;
mod durable;
mod hub;
mod load;
mod soak;

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::builder::RangedU64ValueParser;
use clap::{Args, Parser, Subcommand};
use tej_hub::hub::HubClient;
use tej_hub::Status;
use tokio::io::{AsyncRead, AsyncWrite};

use hub::RunningHub;

/// A kibibyte.
const KIB: u64 = 1024;
/// A mebibyte.
const MIB: u64 = 1024 * KIB;
/// A gibibyte.
const GIB: u64 = 1024 * MIB;

/// Measure a tej-hub over loopback TCP (workloads: big-file, throughput, latency, matrix,
/// connections, soak, group, durable).
#[derive(Parser)]
#[command(name = "tej-hub-bench", version, about)]
struct Bench {
    /// The workload to run.
    #[command(subcommand)]
    workload: Workload,
}

/// The workloads `bench` can run.
#[derive(Subcommand)]
enum Workload {
    /// Relay one frame carrying one large file from 1 publisher to S subscribers.
    ///
    /// The file is generated on the fly (no disk), hashed (xxh3) by the publisher as it is sent
    /// and by every subscriber as it arrives; no side holds the frame in memory. Also measures
    /// plain loopback TCP of the same size as a yardstick, and samples the hub's resident memory
    /// (VmRSS, VmHWM) when its process id is known. --slow-rate and --stuck add a subscriber
    /// that reads slowly or not at all, to measure the hub's slow-consumer policies. Prints a
    /// table, or one JSON object with --json. Exit status: 0 when every subscriber (but a stuck
    /// one) got the file intact; 1 on a hash mismatch, a failure or the --timeout; 2 for bad
    /// usage.
    BigFile(big_file::BigFile),
    /// P publishers send frames as fast as they can to S subscribers: delivered frames/s and
    /// MB/s, publish rate, loss and reordering.
    ///
    /// Every frame is a message-only TEJ frame whose message carries a sequence number, the
    /// publisher's id and a send time. With --yardstick the same load also runs through a plain
    /// forwarder and the hub's figures are given as a ratio of its; with --cross-hub it also runs
    /// across two hubs joined through NATS (cross-hub ÷ one hub). Prints a table, or one JSON
    /// object with --json. Exit status: 0 when nothing was lost or reordered; 1 on loss,
    /// reordering, a failure or the --timeout; 2 for bad usage.
    Throughput(load::Throughput),
    /// Publishes at a fixed rate for a while: one-way latency p50/p90/p99/p99.9/max.
    ///
    /// Output, --yardstick and exit status as for `throughput`.
    Latency(load::Latency),
    /// The reference cells of `throughput` and `latency`, as Markdown tables.
    ///
    /// Five throughput cells (1→1, 1→10 and 10→10 with 128 B; 1→1 with 1 MiB; 1→10 with 64 KiB)
    /// and latency 1→1 with 128 B at --rate, each on a fresh hub and, with --yardstick, on the
    /// forwarder: every figure with its ratio, or one JSON object per cell with --json. The
    /// reference run is `bench matrix --embedded --yardstick`. Exit status: 0 when no cell lost
    /// or reordered a frame; 1 otherwise or on a failure; 2 for bad usage.
    Matrix(load::Matrix),
    /// Open N idle connections subscribed to one code; measure the hub's memory per connection
    /// and one publication's fan-out to all of them.
    ///
    /// Each connection sends `SUB <code>` and waits for `OK SUB <code>`; the hub's VmRSS is read
    /// before the first and after the last (from /proc/PID/status). Then one frame is published on
    /// the code and every connection must receive it. Raises this process's open-files limit
    /// first. Prints a table, or one JSON object with --json. Exit status: 0 when every
    /// connection received the publication; 1 otherwise, on a failure or the --timeout; 2 for
    /// bad usage.
    Connections(connections::Connections),
    /// Hold a mixed, misbehaving workload for --duration seconds and check the hub stays correct
    /// and does not leak.
    ///
    /// P publishers send frames of 16 B to 64 MiB; one more dies mid-frame now and then; S
    /// subscribers use every slow-consumer policy (some read slowly, some reconnect); hostile
    /// connections send garbage. Checks: every frame intact; each `block` subscriber that stayed
    /// got every frame exactly once and in order; each `drop` subscriber missed exactly its
    /// `dropped_frames`; the hub closed the protocol violators; the hub's RSS (sampled every
    /// second): after warm-up (the first third), the last third's floor is at most 1.1 x the
    /// middle third's (no verdict under 180 s); its connections and file descriptors are back to
    /// the start after the run. A spawned hub gets
    /// --max-pending-bytes=1MiB unless --serve-arg sets it. Prints a table, or one JSON object
    /// with --json. Exit status: 0 when nothing was violated; 1 on a violation, a failure or the
    /// timeout (at least --duration + 180 s); 2 for bad usage.
    Soak(soak::Soak),
    /// Durable codes beside NATS JetStream (file storage) and the disk itself, interleaved:
    /// publish with acknowledgements and durable consume with acknowledgements.
    ///
    /// Spawns `tej-hub serve --durable 5 --store-dir DIR --store-sync always|os` and
    /// `nats-server -js -sd DIR` (the Debian package) in turn for each payload size, on stores in a
    /// temporary directory, and measures the disk there (sequential write + fdatasync, small
    /// synced writes). A hub without durable codes is reported as such and JetStream still runs.
    /// Every run is printed, then the medians of --rounds with the ratios hub ÷ JetStream and
    /// their targets; or one JSON object with --json. Exit status: 0 when every cell ran (stalls
    /// are reported, not failures); 1 when a cell failed or the --timeout passed; 2 for bad usage.
    Durable(durable::Durable),
    /// One publisher to a queue group of subscribers (`SUB <code> group=workers`) beside the same
    /// hub 1→1 and NATS's queue group (`queue_subscribe`), in one run.
    ///
    /// For each --sizes: throughput of the hub 1→1, the hub 1→group of --members, NATS 1→queue
    /// group; then latency at --rate of the hub 1→1 and 1→group. Prints the ratios group ÷ 1→1
    /// and group ÷ NATS, the spread of the members' shares and the p99 ratio with their targets,
    /// or one JSON object with --json. A hub that refuses the group subscription is reported as
    /// having no queue groups, the other cells still run. Exit status: 0 when no run lost,
    /// reordered or duplicated a frame; 1 otherwise or on a failure; 2 for bad usage.
    Group(load::Group),
}

/// Flags every workload takes: which hub, how long at most, how to print.
#[derive(Args)]
struct Common {
    /// Measure the hub already listening on ADDR (loopback only) instead of spawning
    /// `tej-hub serve --listen 127.0.0.1:0` with default settings as a child process.
    #[arg(long, value_name = "ADDR", value_parser = loopback_addr)]
    hub: Option<SocketAddr>,
    /// With --hub: the hub's process id, so its memory (/proc/PID/status) can be reported.
    #[arg(long, value_name = "PID", requires = "hub")]
    hub_pid: Option<u32>,
    /// An extra flag for the spawned hub's `serve` (repeatable), e.g.
    /// --serve-arg=--max-frame-bytes=1000000000. The default measures the default settings.
    #[arg(
        long = "serve-arg",
        value_name = "ARG",
        allow_hyphen_values = true,
        conflicts_with = "hub"
    )]
    serve_args: Vec<String>,
    /// Give up (exit 1) when the whole run, hub start included, takes longer than this.
    #[arg(long, value_name = "SECS", default_value_t = 600, value_parser = one_to(86_400))]
    timeout: u64,
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    json: bool,
}

/// Why a run failed.
enum Failure {
    /// Bad arguments: exit status 2.
    Usage(String),
    /// Anything else: exit status 1.
    Failed(String),
}

fn main() -> ExitCode {
    match run(&Bench::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("tej-hub-bench: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Failed(message)) => {
            eprintln!("tej-hub-bench: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the workload `args` names.
fn run(args: &Bench) -> Result<(), Failure> {
    match &args.workload {
        Workload::BigFile(workload) => big_file::run(workload),
        Workload::Throughput(workload) => load::throughput(workload),
        Workload::Latency(workload) => load::latency(workload),
        Workload::Matrix(workload) => load::matrix(workload),
        Workload::Connections(workload) => connections::run(workload),
        Workload::Soak(workload) => soak::run(workload),
        Workload::Durable(workload) => durable::run(workload),
        Workload::Group(workload) => load::group(workload),
    }
}

/// The runtime the workloads run their sockets on: multi-threaded, one worker per core.
fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| Failure::Failed(format!("cannot start the runtime: {error}")))
}

/// Runs `measuring` on a fresh [`runtime`] until it ends or `deadline` (`--timeout`) passes. The
/// runtime, with every socket the run left open, is gone before `hub` is. A failure reads
/// `bench <name>: <error>` followed by what a spawned hub's exit and last log lines say.
fn measure_on<T>(
    name: &str,
    hub: &mut RunningHub,
    common: &Common,
    deadline: Instant,
    measuring: impl Future<Output = Result<T, String>>,
) -> Result<T, Failure> {
    let runtime = runtime()?;
    let measured = runtime.block_on(async {
        tokio::time::timeout_at(deadline.into(), measuring)
            .await
            .unwrap_or_else(|_| Err(format!("gave up after --timeout {}s", common.timeout)))
    });
    drop(runtime);
    measured.map_err(|error| Failure::Failed(format!("bench {name}: {error}{}", hub.explain())))
}

/// `future`'s output, or the error `timed out <what>` once `limit` has passed.
async fn before<T>(
    limit: Instant,
    what: &str,
    future: impl Future<Output = T>,
) -> Result<T, String> {
    tokio::time::timeout_at(limit.into(), future)
        .await
        .map_err(|_| format!("timed out {what}"))
}

/// When a step started now that may take `wait` must be done: `wait` from now, at the latest at
/// `deadline`.
fn limit(deadline: Instant, wait: Duration) -> Instant {
    deadline.min(Instant::now() + wait)
}

/// Sends `SUB <code>` on `client` and waits until `limit` for the hub's `OK SUB <code>`.
async fn confirm_sub<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut HubClient<S>,
    code: Status,
    limit: Instant,
) -> Result<(), String> {
    let code = code.to_string();
    let codes = before(limit, "waiting for OK SUB", client.subscribe(&code))
        .await?
        .map_err(|error| format!("SUB {code}: {error}"))?;
    if codes.to_string() == code {
        Ok(())
    } else {
        Err(format!("the hub acknowledged SUB {code} with {codes}"))
    }
}

/// How a bench reaches the hub over TLS (`--tls-ca`, `--tls-server-name`).
#[derive(Args)]
struct TlsTarget {
    /// Reach the hub over TLS, trusting the CA in FILE (PEM); start a TLS hub with
    /// `--serve-arg=--tls-cert=...` and `--serve-arg=--tls-key=...`, or give one with --hub.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
    /// With --tls-ca: the name the hub's certificate must carry.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "localhost",
        requires = "tls_ca"
    )]
    tls_server_name: String,
}

impl TlsTarget {
    /// Whether the hub is reached over TLS.
    fn is_on(&self) -> bool {
        self.tls_ca.is_some()
    }

    /// The client's TLS settings and the hub's name, if TLS is on.
    fn client(&self) -> Result<Option<(tej_hub::ClientTls, String)>, Failure> {
        let Some(ca) = &self.tls_ca else {
            return Ok(None);
        };
        let tls = tej_hub::ClientTls::with_ca_file(ca)
            .map_err(|error| Failure::Usage(format!("--tls-ca: {error}")))?;
        Ok(Some((tls, self.tls_server_name.clone())))
    }
}

/// Descriptors a bench process needs besides its connections (pipes, runtime, spare sockets).
const SPARE_FILES: u64 = 64;

/// Raises this process's open-files limit (children started afterwards inherit it); fails when it
/// cannot hold `count` connections. Returns the soft limit.
fn enough_open_files(count: u64) -> Result<u64, Failure> {
    let (soft, hard) = tej_hub::hub::raise_open_files_limit()
        .map_err(|error| Failure::Failed(format!("cannot raise the open files limit: {error}")))?;
    let needed = count + SPARE_FILES;
    if soft < needed {
        return Err(Failure::Failed(format!(
            "{count} connections need {needed} open files; the limit is {soft} (hard {hard})"
        )));
    }
    Ok(soft)
}

/// A whole number from 1 to `max`, for a count or a number of seconds.
fn one_to(max: u64) -> RangedU64ValueParser<u64> {
    clap::value_parser!(u64).range(1..=max)
}

/// A socket address on the loopback interface (the bench sends traffic nowhere else).
fn loopback_addr(text: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = text
        .parse()
        .map_err(|_| format!("{text:?} is not an address like 127.0.0.1:8000"))?;
    if addr.ip().is_loopback() {
        Ok(addr)
    } else {
        Err(format!(
            "{addr} is not a loopback address; the bench only talks to this machine"
        ))
    }
}

/// A byte count: a whole number with an optional unit, case-insensitive: `B`; `K`, `KiB`, `M`,
/// `MiB`, `G`, `GiB`, `T`, `TiB` (powers of 1024); `KB`, `MB`, `GB`, `TB` (powers of 1000).
/// At least 1.
fn byte_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '_')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .replace('_', "")
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 4GiB, 256MiB or 1048576"))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => KIB,
        "m" | "mib" => MIB,
        "g" | "gib" => GIB,
        "t" | "tib" => 1024 * GIB,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => return Err(format!("unknown unit {other:?} in {text:?}")),
    };
    match number.checked_mul(scale) {
        Some(0) => Err("a size must be at least 1 byte".to_owned()),
        Some(bytes) => Ok(bytes),
        None => Err(format!("{text:?} is too large")),
    }
}

/// `bytes` for people: `4.00 GiB`, `256.00 MiB`, `512 B`.
fn human_bytes(bytes: u64) -> String {
    // Display only: the precision lost converting to f64 does not show.
    let value = bytes as f64;
    if bytes >= GIB {
        format!("{:.2} GiB", value / GIB as f64)
    } else if bytes >= MIB {
        format!("{:.2} MiB", value / MIB as f64)
    } else if bytes >= KIB {
        format!("{:.2} KiB", value / KIB as f64)
    } else {
        format!("{bytes} B")
    }
}

/// Throughput in MB/s (10^6 bytes per second, as docs/benchmarks.md counts); 0 for no time.
fn mb_per_s(bytes: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        bytes as f64 / 1e6 / seconds
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(byte_size("1"), Ok(1));
        assert_eq!(byte_size("1048576"), Ok(MIB));
        assert_eq!(byte_size("256MiB"), Ok(256 * MIB));
        assert_eq!(byte_size("4GiB"), Ok(4 * GIB));
        assert_eq!(byte_size("4gib"), Ok(4 * GIB));
        assert_eq!(byte_size("16G"), Ok(16 * GIB));
        assert_eq!(byte_size("64 MiB"), Ok(64 * MIB));
        assert_eq!(byte_size("2GB"), Ok(2_000_000_000));
        assert_eq!(byte_size("1_000kb"), Ok(1_000_000));
        assert_eq!(byte_size("3B"), Ok(3));
        assert_eq!(byte_size("1TiB"), Ok(1024 * GIB));
        for bad in [
            "",
            "0",
            "0GiB",
            "GiB",
            "-1",
            "1.5GiB",
            "4XB",
            "99999999999TiB",
        ] {
            assert!(byte_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn loopback_only() {
        assert!(loopback_addr("127.0.0.1:8000").is_ok());
        assert!(loopback_addr("[::1]:8000").is_ok());
        assert!(loopback_addr("10.0.0.1:8000").is_err());
        assert!(loopback_addr("localhost").is_err());
    }

    #[test]
    fn units() {
        assert_eq!(human_bytes(4 * GIB), "4.00 GiB");
        assert_eq!(human_bytes(256 * MIB), "256.00 MiB");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(mb_per_s(2_000_000, 2.0), 1.0);
        assert_eq!(mb_per_s(1, 0.0), 0.0);
    }
}
