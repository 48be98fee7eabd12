//! `tej-hub bench throughput`, `bench latency`, `bench matrix` and `bench group`: many small or large messages
//! from P publishers to S subscribers through a hub, in the spirit of `nats bench`, and the same
//! bytes through a plain forwarder as the yardstick (`--yardstick`), through a real NATS
//! server (`--nats`), and across two hubs joined in a cluster (`--cross-hub`).
//!
//! This module owns the flags, the hub being measured ([`RunningHub`]: in-process with
//! `--embedded`, a running one with `--hub`, else a spawned `tej-hub serve`), the run of one
//! workload against the hub, then across two hubs, then the forwarder, then NATS
//! ([`run_workload`]), and the matrix of reference cells. Beside it:
//! - [`wire`]: the frames and their stamps, the boundary finder, the subscribers' parser;
//! - [`generator`]: publishers and subscribers (the load), on a runtime of their own;
//! - [`forwarder`]: the yardstick, on a runtime of its own;
//! - [`nats`]: the NATS yardstick: `nats-server` and its async-nats clients;
//! - [`cross_hub`]: the cluster of two hubs and its `nats-server` for `--cross-hub`;
//! - [`group`]: `bench group`, a queue group of subscribers beside 1→1 and NATS's queue group;
//! - [`report`]: the figures, as tables or JSON.

mod cross_hub;
mod forwarder;
mod generator;
mod group;
pub(crate) mod nats;
mod report;
mod stamp;

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Args;
use tej_hub::hub::control::CONTROL;
use tej_hub::Status;

use super::hub::{HubChoice, RunningHub};
use super::{
    byte_size, enough_open_files, human_bytes, loopback_addr, one_to, Common, TlsTarget, KIB, MIB,
};
use crate::Failure;
use cross_hub::{CrossHub, CrossHubInfo};
use forwarder::Forwarder;
use generator::{measure, Endpoint, HubAddrs, HubTls, Measured};
pub(crate) use group::{group, Group};
use nats::{NatsServer, NatsTarget};
use report::{grouped, matrix_table, Figures, NatsInfo, Report};
/// A message-only frame's bytes, for the durable bench too.
pub(crate) use stamp::frame;
use stamp::{StampError, MAX_MESSAGE, STAMP_LEN};

/// Most publishers.
const MAX_PUBLISHERS: u64 = 256;
/// Most subscribers (issue 10's widest cell is 1→1,000).
const MAX_SUBSCRIBERS: u64 = 1000;
/// What the default `--frames` aims to deliver in all (frames, and bytes), shared among
/// publishers × subscribers: a few seconds on a two-core machine.
const DEFAULT_DELIVERIES: u64 = 8_000_000;
const DEFAULT_DELIVERED_BYTES: u64 = 8 * 1024 * MIB;

/// `bench throughput` flags.
#[derive(Args)]
pub(crate) struct Throughput {
    #[command(flatten)]
    peers: Peers,
    /// Frames each publisher sends [default: 8,000,000 deliveries or 8 GiB delivered in all,
    /// whichever is fewer, shared among publishers × subscribers].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    frames: Option<u64>,
    /// Stop publishing after this many seconds even if --frames are not all sent.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = one_to(3_600))]
    seconds: u64,
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    nats: Nats,
    #[command(flatten)]
    cluster: Cluster,
}

/// `bench latency` flags.
#[derive(Args)]
pub(crate) struct Latency {
    #[command(flatten)]
    peers: Peers,
    #[command(flatten)]
    paced: Paced,
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    nats: Nats,
    #[command(flatten)]
    cluster: Cluster,
}

/// The NATS yardstick's flags (`throughput` and `latency`).
#[derive(Args)]
struct Nats {
    /// Also run the same workload through a NATS server (async-nats clients, one per publisher
    /// and per subscriber, subject `bench.<code>`) and print the hub's figures as a ratio of its.
    /// The bench spawns `nats-server -a 127.0.0.1 -p -1` (the Debian package) unless --nats-url
    /// is given.
    #[arg(long)]
    nats: bool,
    /// With --nats (implied): measure the NATS server already listening there instead
    /// (nats://127.0.0.1:PORT, loopback only).
    #[arg(long, value_name = "URL", value_parser = nats_url)]
    nats_url: Option<SocketAddr>,
}

/// The cross-hub flag (`throughput` and `latency`).
#[derive(Args)]
struct Cluster {
    /// Also run the same workload across two hubs joined through NATS: the bench spawns
    /// `nats-server -a 127.0.0.1 -p -1` and two `tej-hub serve --cluster nats://... --hub-name
    /// bench-a|bench-b` (default settings plus any --serve-arg), waits until each hub's INFO shows
    /// the other, connects the publishers to bench-a and the subscribers to bench-b, and prints
    /// the figures beside the one-hub run's with the ratio cross-hub ÷ one hub. With --nats, the
    /// latency report also gives the p50 the second hub adds, as a multiple of NATS's own p50.
    #[arg(long, conflicts_with_all = ["embedded", "hub", "tls_ca"])]
    cross_hub: bool,
}

/// `nats://127.0.0.1:4222` (or the address alone) on the loopback interface.
fn nats_url(text: &str) -> Result<SocketAddr, String> {
    loopback_addr(text.strip_prefix("nats://").unwrap_or(text))
}

/// `bench matrix` flags: the reference cells' sizes and peers are fixed.
#[derive(Args)]
pub(crate) struct Matrix {
    #[command(flatten)]
    paced: Paced,
    #[command(flatten)]
    target: Target,
}

/// A paced load: `bench latency`, and the matrix's latency cell.
#[derive(Args)]
struct Paced {
    /// Frames per second, all publishers together (each sends its share).
    #[arg(long, value_name = "FRAMES", default_value_t = 10_000, value_parser = one_to(10_000_000))]
    rate: u64,
    /// How long to publish (`matrix`: also how long each throughput cell may publish, on the hub
    /// and on the forwarder each).
    #[arg(long, value_name = "SECS", default_value_t = 5, value_parser = one_to(3_600))]
    seconds: u64,
}

/// Who publishes and subscribes, with what.
#[derive(Args)]
struct Peers {
    /// Publishers (1-256).
    #[arg(long, value_name = "P", default_value_t = 1, value_parser = one_to(MAX_PUBLISHERS))]
    publishers: u64,
    /// Subscribers (1-1000); each receives every publisher's frames.
    #[arg(long, value_name = "S", default_value_t = 1, value_parser = one_to(MAX_SUBSCRIBERS))]
    subscribers: u64,
    /// Message size: bytes, or with a unit (128, 64KiB, 1MiB); 20 B (the stamp) to 64 MiB.
    #[arg(long, value_name = "SIZE", default_value = "128", value_parser = message_size)]
    size: usize,
    /// The status code the frames are published on (0-126 except 2).
    #[arg(long, value_name = "CODE", default_value = "5", value_parser = relay_code)]
    code: Status,
}

/// What to measure: the hub (in-process, running, or spawned) and, with --yardstick, the
/// forwarder.
#[derive(Args)]
struct Target {
    /// Run the hub in this process (`tej_hub::hub::spawn` on 127.0.0.1:0, default settings)
    /// instead of spawning `tej-hub serve`.
    #[arg(long, conflicts_with_all = ["hub", "serve_args", "tls_ca"])]
    embedded: bool,
    /// Also run the same workload through a plain forwarder (built into the bench) and print
    /// the hub's figures as a ratio of its.
    #[arg(long)]
    yardstick: bool,
    /// TLS to the hub (the forwarder stays plain).
    #[command(flatten)]
    tls: TlsTarget,
    #[command(flatten)]
    common: Common,
}

impl Target {
    /// How the load reaches the hub over TLS, if it does.
    fn hub_tls(&self) -> Result<Option<HubTls>, Failure> {
        Ok(self
            .tls
            .client()?
            .map(|(tls, server_name)| HubTls { tls, server_name }))
    }
}

/// A message size: 20 B to 64 MiB.
fn message_size(text: &str) -> Result<usize, String> {
    let bytes = byte_size(text)?;
    if (STAMP_LEN as u64..=MAX_MESSAGE).contains(&bytes) {
        usize::try_from(bytes).map_err(|_| format!("{bytes} does not fit in memory"))
    } else {
        Err(format!(
            "the message size must be between {STAMP_LEN} B (the stamp) and 64MiB"
        ))
    }
}

/// A code the hub relays: 0..=126 except 2 (ping).
fn relay_code(text: &str) -> Result<Status, String> {
    text.parse()
        .ok()
        .and_then(Status::new)
        .filter(|status| *status != CONTROL && *status != Status::PING)
        .ok_or_else(|| "relayed codes are 0-126 except 2".to_owned())
}

/// What went wrong measuring.
#[derive(Debug, thiserror::Error)]
enum LoadError {
    /// A connection could not be made.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// Where to.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// A socket or the runtime failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        source: io::Error,
    },
    /// Asking a hub `INFO` failed.
    #[error("INFO: {what}: {source}")]
    Info {
        /// What was being done.
        what: &'static str,
        /// The hub client's error.
        source: tej_hub::hub::HubError,
    },
    /// The two hubs of `--cross-hub` did not see each other in time.
    #[error(
        "the hubs did not see each other within {seconds}s (INFO cluster.remote_hubs: {} and {})",
        shown(.remote_hubs[0]),
        shown(.remote_hubs[1])
    )]
    NotJoined {
        /// How long the bench waited.
        seconds: u64,
        /// What each hub's `INFO` said last (`None`: no number).
        remote_hubs: [Option<u64>; 2],
    },
    /// The NATS client failed.
    #[error("NATS: {what}: {error}")]
    Nats {
        /// What was being done.
        what: &'static str,
        /// The client's error.
        error: String,
    },
    /// A step took too long.
    #[error("timed out {0}")]
    Timeout(&'static str),
    /// The whole run took longer than --timeout.
    #[error("gave up after --timeout {seconds}s")]
    GaveUp {
        /// The --timeout.
        seconds: u64,
    },
    /// The peer sent what the bench never sends.
    #[error(transparent)]
    Wire(#[from] StampError),
    /// The hub answered `SUB` with `ERR`.
    #[error("the hub refused SUB {code}: {reason}")]
    Refused {
        /// The code.
        code: u8,
        /// The hub's reason.
        reason: String,
    },
    /// The hub answered `SUB` with something else.
    #[error("the hub answered SUB {code} with {reply:?}")]
    UnexpectedReply {
        /// The code.
        code: u8,
        /// The reply.
        reply: String,
    },
    /// The peer closed the connection, after saying why (the hub's `ERR <reason>`) or not.
    #[error("the connection was closed{}", .reason.as_ref().map_or_else(String::new, |r| format!(": {r}")))]
    Closed {
        /// The hub's reason.
        reason: Option<String>,
    },
    /// A frame stamped by a publisher that is not part of the run.
    #[error(
        "a frame from publisher {id} but only {publishers} publish: another client publishes \
         on this code (try --code)"
    )]
    UnknownPublisher {
        /// The stamp's publisher id.
        id: u32,
        /// Publishers in the run.
        publishers: usize,
    },
    /// A publication arrived before `OK SUB`, when none of the run's publishers had started.
    #[error(
        "a frame on code {code} arrived before OK SUB: another client publishes on it (try --code)"
    )]
    Foreign {
        /// The code.
        code: u8,
    },
    /// Something the run waits for went away.
    #[error("{0} ended early")]
    Gone(&'static str),
    /// A task of the run panicked or was cancelled.
    #[error("a bench task failed: {0}")]
    Task(String),
    /// Which peer failed (numbered from 1).
    #[error("{role} {number}: {source}")]
    At {
        /// `publisher` or `subscriber`.
        role: &'static str,
        /// Its number, from 1.
        number: usize,
        /// What happened to it.
        source: Box<LoadError>,
    },
}

/// A count from `INFO`, or `none` when it had none.
fn shown(count: Option<u64>) -> String {
    count.map_or_else(|| "none".to_owned(), |count| count.to_string())
}

impl LoadError {
    /// [`LoadError::Io`].
    pub(super) fn io(what: &'static str, source: io::Error) -> LoadError {
        LoadError::Io { what, source }
    }

    /// This error, as what happened to the `role` with 0-based `index`.
    pub(super) fn at(self, role: &'static str, index: usize) -> LoadError {
        LoadError::At {
            role,
            number: index + 1,
            source: Box::new(self),
        }
    }
}

/// How publishers pace themselves.
#[derive(Debug, Clone, Copy)]
pub(super) enum Pace {
    /// `throughput`: this many frames each, as fast as the socket takes them.
    Frames(u64),
    /// `latency`: this many frames per second, all publishers together.
    Rate(f64),
}

/// One run's load.
#[derive(Debug, Clone)]
pub(super) struct Workload {
    /// Publishers.
    pub(super) publishers: usize,
    /// Subscribers.
    pub(super) subscribers: usize,
    /// Message bytes per frame.
    pub(super) size: usize,
    /// The code published on.
    pub(super) status: Status,
    /// How publishers pace themselves.
    pub(super) pace: Pace,
    /// The cap on publishing (`throughput`) or how long to publish (`latency`).
    pub(super) seconds: Duration,
    /// The subscribers form one queue group (`SUB <code> group=workers`, NATS
    /// `queue_subscribe`): each frame goes to one of them, not to each.
    pub(super) group: bool,
}

impl Workload {
    /// The subcommand's name.
    fn name(&self) -> &'static str {
        match self.pace {
            Pace::Frames(_) => "throughput",
            Pace::Rate(_) => "latency",
        }
    }

    /// `throughput` with `frames` per publisher, or the default count.
    fn throughput(peers: &Peers, frames: Option<u64>, seconds: u64) -> Workload {
        let (publishers, subscribers) = (peers.publishers, peers.subscribers);
        let frames = frames.unwrap_or_else(|| {
            let deliveries = DEFAULT_DELIVERIES.min(DEFAULT_DELIVERED_BYTES / peers.size as u64);
            (deliveries / (publishers * subscribers)).max(1)
        });
        Workload::new(peers, Pace::Frames(frames), seconds)
    }

    /// `latency` at `rate` frames per second in all.
    fn latency(peers: &Peers, rate: u64, seconds: u64) -> Workload {
        Workload::new(peers, Pace::Rate(rate as f64), seconds)
    }

    fn new(peers: &Peers, pace: Pace, seconds: u64) -> Workload {
        // Both are at most MAX_SUBSCRIBERS.
        Workload {
            publishers: peers.publishers as usize,
            subscribers: peers.subscribers as usize,
            size: peers.size,
            status: peers.code,
            pace,
            seconds: Duration::from_secs(seconds),
            group: false,
        }
    }

    /// A line for people: `1 publisher(s) -> 10 subscriber(s), 128 B messages`.
    fn describe(&self) -> String {
        format!(
            "{} publisher(s) -> {} subscriber(s), {} messages",
            self.publishers,
            self.subscribers,
            human_bytes(self.size as u64)
        )
    }
}

/// Cores on this machine: the forwarder's workers, as the hub's default.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// Runs `measure` against `endpoint` on `runtime`, giving up at `deadline`.
fn run_on(
    runtime: &tokio::runtime::Runtime,
    workload: &Workload,
    endpoint: &Endpoint,
    deadline: Instant,
    timeout: u64,
) -> Result<Measured, LoadError> {
    runtime.block_on(async {
        tokio::time::timeout_at(deadline.into(), measure(workload, endpoint))
            .await
            .unwrap_or(Err(LoadError::GaveUp { seconds: timeout }))
    })
}

/// Which NATS server the NATS yardstick measures.
#[derive(Debug, Clone, Copy)]
enum NatsChoice {
    /// One the bench spawns (`nats-server -a 127.0.0.1 -p -1`).
    Spawned,
    /// One already running there (`--nats-url`).
    Given(SocketAddr),
}

impl NatsChoice {
    /// What the flags ask for: `None` without `--nats` or `--nats-url`.
    fn new(flags: &Nats) -> Option<NatsChoice> {
        match flags.nats_url {
            Some(addr) => Some(NatsChoice::Given(addr)),
            None => flags.nats.then_some(NatsChoice::Spawned),
        }
    }
}

/// What runs besides the hub: the yardsticks and the cross-hub run.
#[derive(Debug, Clone, Copy)]
struct Extras {
    /// The plain forwarder (`--yardstick`).
    yardstick: bool,
    /// A NATS server (`--nats`, `--nats-url`).
    nats: Option<NatsChoice>,
    /// Two hubs joined through NATS (`--cross-hub`).
    cross_hub: bool,
}

/// Runs `workload` against the hub `choice` names, then (with `cross_hub`) across two clustered
/// hubs, then (with `yardstick`) the forwarder, then (with `nats`) a NATS server; each on a
/// fresh runtime, and the processes of one run stopped before the next one runs.
fn run_workload(
    workload: &Workload,
    choice: &HubChoice,
    tls: Option<HubTls>,
    extras: Extras,
    deadline: Instant,
    timeout: u64,
) -> Result<Report, Failure> {
    let Extras {
        yardstick,
        nats,
        cross_hub,
    } = extras;
    let name = workload.name();
    let failed = |what: &str, error: LoadError, explain: String| {
        Failure::Failed(format!("bench {name}: {what}: {error}{explain}"))
    };
    // Every peer is a connection of this process, and of the forwarder's or an embedded hub's
    // in this process too. Raised before a hub or nats-server is spawned: they inherit it.
    let peers = (workload.publishers + workload.subscribers) as u64;
    enough_open_files(2 * peers)?;
    let runtime = super::runtime()?;
    let mut hub = RunningHub::start(choice, deadline)?;
    let info = hub.info();
    eprintln!(
        "tej-hub bench {name}: hub at {} ({}); {}",
        info.addr,
        info.origin.name(),
        workload.describe()
    );
    let measured = run_on(
        &runtime,
        workload,
        &Endpoint::Hub(HubAddrs::one(info.addr), tls),
        deadline,
        timeout,
    );
    drop(runtime);
    let measured = measured.map_err(|error| failed("hub", error, hub.explain()))?;
    hub.stop();
    let mut report = Report::new(workload.clone(), info, Figures::new(workload, &measured));
    if cross_hub {
        let extra = match choice {
            HubChoice::Spawned(extra) => extra.as_slice(),
            HubChoice::Embedded | HubChoice::Given(..) => &[],
        };
        report.cross_hub = Some(run_cross_hub(workload, extra, deadline, timeout)?);
    }
    if yardstick {
        eprintln!("tej-hub bench {name}: the same through the plain forwarder");
        let forwarder =
            Forwarder::start(cores()).map_err(|error| failed("forwarder", error, String::new()))?;
        let endpoint = Endpoint::Forwarder(forwarder.ports());
        let runtime = super::runtime()?;
        let measured = run_on(&runtime, workload, &endpoint, deadline, timeout);
        // Aborted tasks let go of their sockets before the forwarder's runtime goes.
        drop(runtime);
        drop(forwarder);
        let measured = measured.map_err(|error| failed("forwarder", error, String::new()))?;
        report.forwarder = Some(Figures::new(workload, &measured));
    }
    if let Some(nats) = nats {
        let mut server = match nats {
            NatsChoice::Spawned => NatsServer::spawn(workload.size as u64, deadline)?,
            NatsChoice::Given(addr) => NatsServer::Given(addr),
        };
        let info = NatsInfo {
            addr: server.addr(),
            pid: server.pid(),
            spawned: matches!(nats, NatsChoice::Spawned),
        };
        eprintln!(
            "tej-hub bench {name}: the same through NATS at {}",
            info.addr
        );
        let target = NatsTarget::new(info.addr, workload.status);
        let runtime = super::runtime()?;
        let measured = run_on(
            &runtime,
            workload,
            &Endpoint::Nats(target.clone()),
            deadline,
            timeout,
        );
        // The clients close before the server is stopped.
        drop(runtime);
        for event in target.events() {
            eprintln!("tej-hub bench {name}: a NATS client reported: {event}");
        }
        let measured = measured.map_err(|error| failed("nats", error, server.explain()))?;
        drop(server);
        report.nats = Some((info, Figures::new(workload, &measured)));
    }
    Ok(report)
}

/// Runs `workload` with the publishers on one hub and the subscribers on another, the two
/// joined through a `nats-server`, all three spawned for the run (`extra`: flags for both hubs'
/// `serve`) and stopped after it.
fn run_cross_hub(
    workload: &Workload,
    extra: &[String],
    deadline: Instant,
    timeout: u64,
) -> Result<(CrossHubInfo, Figures), Failure> {
    let name = workload.name();
    let mut cluster = CrossHub::start(extra, deadline)?;
    eprintln!(
        "tej-hub bench {name}: the same across two hubs: publishers on {}, subscribers on {}",
        cluster.publishers(),
        cluster.subscribers()
    );
    let endpoint = Endpoint::Hub(
        HubAddrs {
            publishers: cluster.publishers(),
            subscribers: cluster.subscribers(),
        },
        None,
    );
    let runtime = super::runtime()?;
    let measured = runtime.block_on(async {
        let run = async {
            cluster.joined().await?;
            let clock = cluster.cpu_clock();
            let measured = measure(workload, &endpoint).await?;
            let cpu = clock.read();
            let state = cluster.state().await?;
            Ok((measured, cpu, state))
        };
        tokio::time::timeout_at(deadline.into(), run)
            .await
            .unwrap_or(Err(LoadError::GaveUp { seconds: timeout }))
    });
    drop(runtime);
    let (measured, cpu, state) = measured.map_err(|error: LoadError| {
        Failure::Failed(format!(
            "bench {name}: cross-hub: {error}{}",
            cluster.explain()
        ))
    })?;
    let info = cluster.info(cpu, state);
    drop(cluster);
    Ok((info, Figures::new(workload, &measured)))
}

/// Prints `report` and fails when it saw loss, reordering or duplicates.
fn finish(report: &Report, json: bool) -> Result<(), Failure> {
    if json {
        println!("{}", report.json());
    } else {
        print!("{}", report.table());
    }
    match report.problem() {
        None => Ok(()),
        Some(problem) => Err(Failure::Failed(format!(
            "bench {}: {problem}",
            report.name()
        ))),
    }
}

/// `bench throughput`.
pub(crate) fn throughput(args: &Throughput) -> Result<(), Failure> {
    let workload = Workload::throughput(&args.peers, args.frames, args.seconds);
    run_one(&workload, &args.target, &args.nats, &args.cluster)
}

/// `bench latency`.
pub(crate) fn latency(args: &Latency) -> Result<(), Failure> {
    let workload = Workload::latency(&args.peers, args.paced.rate, args.paced.seconds);
    run_one(&workload, &args.target, &args.nats, &args.cluster)
}

/// Runs one workload as `target` says and prints it.
fn run_one(
    workload: &Workload,
    target: &Target,
    nats: &Nats,
    cluster: &Cluster,
) -> Result<(), Failure> {
    let extras = Extras {
        yardstick: target.yardstick,
        nats: NatsChoice::new(nats),
        cross_hub: cluster.cross_hub,
    };
    let timeout = target.common.timeout;
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let choice = HubChoice::new(&target.common, target.embedded);
    let tls = target.hub_tls()?;
    let report = run_workload(workload, &choice, tls, extras, deadline, timeout)?;
    finish(&report, target.common.json)
}

/// What a matrix cell reads off its report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Figure {
    /// Delivered frames per second (higher is better).
    FramesPerSecond,
    /// Delivered MB per second (higher is better).
    MegabytesPerSecond,
    /// 99th percentile one-way latency (lower is better).
    P99,
}

/// One cell of the reference matrix.
pub(super) struct Cell {
    /// `1→10, 128 B`.
    pub(super) label: String,
    /// The figure it is judged by.
    pub(super) figure: Figure,
    /// The hub ÷ forwarder ratio it aims for: at least (throughput), at most (latency).
    pub(super) target: f64,
}

/// The reference cells: the five throughput cells and the latency cell.
fn cells(seconds: u64, rate: u64) -> Vec<(Cell, Workload)> {
    let peers = |publishers, subscribers, size: u64| Peers {
        publishers,
        subscribers,
        size: size as usize,
        code: Status::new(5).unwrap_or_default(),
    };
    let throughput = |publishers, subscribers, size: u64, figure, target| {
        let label = format!(
            "{publishers}→{subscribers}, {}",
            human_bytes(size).replace(".00", "")
        );
        let workload = Workload::throughput(&peers(publishers, subscribers, size), None, seconds);
        (
            Cell {
                label,
                figure,
                target,
            },
            workload,
        )
    };
    let latency = Workload::latency(&peers(1, 1, 128), rate, seconds);
    vec![
        throughput(1, 1, 128, Figure::FramesPerSecond, 0.70),
        throughput(1, 10, 128, Figure::FramesPerSecond, 0.70),
        throughput(10, 10, 128, Figure::FramesPerSecond, 0.70),
        throughput(1, 1, MIB, Figure::MegabytesPerSecond, 0.95),
        throughput(1, 10, 64 * KIB, Figure::MegabytesPerSecond, 0.95),
        (
            Cell {
                label: format!("latency 1→1, 128 B at {} frames/s", grouped(rate as f64)),
                figure: Figure::P99,
                target: 1.5,
            },
            latency,
        ),
    ]
}

/// `bench matrix`: every reference cell on the hub `--embedded` or `--hub` name (a fresh one per
/// cell unless given), and with `--yardstick` on the forwarder.
pub(crate) fn matrix(args: &Matrix) -> Result<(), Failure> {
    let (target, common) = (&args.target, &args.target.common);
    let deadline = Instant::now() + Duration::from_secs(common.timeout);
    let choice = HubChoice::new(&target.common, target.embedded);
    let cells = cells(args.paced.seconds, args.paced.rate);
    let count = cells.len();
    let mut done = Vec::new();
    let mut problems = Vec::new();
    for (number, (cell, workload)) in cells.into_iter().enumerate() {
        eprintln!(
            "tej-hub bench matrix: cell {}/{count}: {}",
            number + 1,
            cell.label
        );
        let report = run_workload(
            &workload,
            &choice,
            target.hub_tls()?,
            Extras {
                yardstick: target.yardstick,
                nats: None,
                cross_hub: false,
            },
            deadline,
            common.timeout,
        )?;
        if common.json {
            println!("{}", report.json());
        }
        if let Some(problem) = report.problem() {
            problems.push(format!("{}: {problem}", cell.label));
        }
        done.push((cell, report));
    }
    if !common.json {
        print!("{}", matrix_table(&done));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Failure::Failed(format!(
            "bench matrix: {}",
            problems.join("; ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_codes() {
        assert_eq!(message_size("128"), Ok(128));
        assert_eq!(message_size("20"), Ok(20));
        assert_eq!(message_size("64MiB"), Ok(64 * 1024 * 1024));
        assert!(message_size("19").is_err());
        assert!(message_size("65MiB").is_err());
        assert_eq!(relay_code("5"), Ok(Status::new(5).expect("5")));
        for bad in ["2", "127", "128", "x"] {
            assert!(relay_code(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn default_frames_share_the_budget() {
        let peers = |publishers, subscribers, size| Peers {
            publishers,
            subscribers,
            size,
            code: Status::new(5).expect("5"),
        };
        let frames = |peers: &Peers| match Workload::throughput(peers, None, 5).pace {
            Pace::Frames(frames) => frames,
            Pace::Rate(_) => 0,
        };
        assert_eq!(frames(&peers(1, 1, 128)), 8_000_000);
        assert_eq!(frames(&peers(1, 10, 128)), 800_000);
        assert_eq!(frames(&peers(10, 10, 128)), 80_000);
        assert_eq!(frames(&peers(1, 1, 1 << 20)), 8192);
        assert_eq!(frames(&peers(1, 10, 64 << 10)), 13_107);
        assert_eq!(frames(&peers(256, 256, 64 << 20)), 1);
        let cells = cells(5, 10_000);
        assert_eq!(cells.len(), 6);
        assert_eq!(cells[0].0.label, "1→1, 128 B");
        assert_eq!(cells[3].0.label, "1→1, 1 MiB");
        assert_eq!(cells[4].0.label, "1→10, 64 KiB");
    }
}
