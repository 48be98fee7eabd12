//! `tej-hub bench durable`: the hub's durable codes (publish with acknowledgements, durable
//! consume with acknowledgements) beside NATS JetStream with file storage and the disk's own
//! figures, interleaved in one run, as issue 22's "Performance" section asks.
//!
//! Each round measures the disk ([`disk`]), then for each payload size, in turn: the hub at
//! `--store-sync always`, JetStream, the hub at `--store-sync os` (each on a fresh server and
//! store): every publisher count (a window of outstanding acknowledgements each, for
//! `--seconds`), then every consumer count (each consumer a durable cursor of its own reading
//! everything stored from the start, acknowledging). Every run is reported, then the medians
//! over the rounds with the ratios hub ÷ JetStream and their targets. Every wait is bounded by
//! `--stall`: a stalled JetStream pull (or hub) is reported as a stall with what arrived before
//! it. A hub without durable codes (it refuses `--durable` or `PUBACK on`) is reported as such
//! and only the JetStream side runs.
//!
//! Beside it: [`disk`] (the disk baseline), [`jetstream`] (the yardstick), [`hub_side`] (the
//! hub's durable protocol).

mod disk;
mod hub_side;
mod jetstream;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{json, Value};

use super::{byte_size, human_bytes, one_to, Failure, MIB};
use disk::Disk;
use hub_side::{DurableHub, Missing, Sync};
use jetstream::JetStream;

/// `bench durable` flags.
#[derive(Args)]
pub(crate) struct Durable {
    /// Rounds; the tables give every run and the medians over the rounds.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = one_to(99))]
    rounds: u64,
    /// How long each publish cell publishes, and the most a consume cell reads.
    #[arg(long, value_name = "SECS", default_value_t = 3, value_parser = one_to(600))]
    seconds: u64,
    /// Payload sizes, comma-separated (bytes or with a unit, 16 B to 8 MiB).
    #[arg(long, value_name = "SIZES", value_delimiter = ',', default_value = "128,64KiB,1MiB", value_parser = payload_size)]
    sizes: Vec<usize>,
    /// Publisher counts of the publish cells, comma-separated.
    #[arg(long, value_name = "N,..", value_delimiter = ',', default_value = "1,4", value_parser = one_to(64))]
    publishers: Vec<u64>,
    /// Consumer counts of the consume cells, comma-separated (each a durable cursor of its own).
    #[arg(long, value_name = "N,..", value_delimiter = ',', default_value = "1,4", value_parser = one_to(64))]
    consumers: Vec<u64>,
    /// Acknowledgements a publisher may have outstanding.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = one_to(65_536))]
    window: u64,
    /// The hub's sync policies measured, comma-separated (`always`, `os`).
    #[arg(long, value_name = "POLICIES", value_delimiter = ',', default_value = "always,os", value_parser = sync_policy)]
    sync: Vec<Sync>,
    /// Give up a wait (an acknowledgement, a pulled message, a reply) after this long and report
    /// the cell as stalled.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = one_to(600))]
    stall: u64,
    /// Bytes the disk baseline writes sequentially before its `fdatasync`.
    #[arg(long, value_name = "SIZE", default_value = "512MiB", value_parser = byte_size)]
    disk_bytes: u64,
    /// How long the disk baseline makes small synced writes.
    #[arg(long, value_name = "SECS", default_value_t = 3, value_parser = one_to(600))]
    disk_seconds: u64,
    /// Skip the disk baseline.
    #[arg(long)]
    no_disk: bool,
    /// Where the stores and the disk baseline's file go (a directory `tej-hub-bench-durable-PID`
    /// inside it, removed afterwards) [default: the temporary directory].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Give up (exit 1) when the whole run takes longer than this.
    #[arg(long, value_name = "SECS", default_value_t = 3600, value_parser = one_to(86_400))]
    timeout: u64,
    /// Print one JSON object on stdout instead of tables.
    #[arg(long)]
    json: bool,
}

/// A payload size: 16 B to 8 MiB (JetStream's server is configured for up to 8 MiB).
fn payload_size(text: &str) -> Result<usize, String> {
    match byte_size(text)? {
        bytes @ 16..=8_388_608 => usize::try_from(bytes).map_err(|_| "too large".to_owned()),
        _ => Err("a payload size must be between 16 B and 8 MiB".to_owned()),
    }
}

/// `always` or `os`.
fn sync_policy(text: &str) -> Result<Sync, String> {
    match text {
        "always" => Ok(Sync::Always),
        "os" => Ok(Sync::Os),
        other => Err(format!("unknown sync policy {other:?} (always, os)")),
    }
}

/// What went wrong in a cell.
#[derive(Debug, thiserror::Error)]
pub(super) enum DurableError {
    /// A socket failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The NATS client failed.
    #[error("NATS: {what}: {error}")]
    Nats {
        /// What was being done.
        what: &'static str,
        /// The client's error.
        error: String,
    },
    /// A setup step took too long.
    #[error("timed out {0}")]
    Timeout(&'static str),
    /// A read waited longer than `--stall`.
    #[error("nothing arrived for {}s", .0.as_secs_f64())]
    Stalled(Duration),
    /// The hub refused a command.
    #[error("the hub answered {command} with {reply:?}")]
    Refused {
        /// The command.
        command: &'static str,
        /// Its reply.
        reply: String,
    },
    /// The hub sent what the protocol does not allow.
    #[error("protocol: {0}")]
    Protocol(String),
    /// A task of the cell panicked or was cancelled.
    #[error("a bench task failed: {0}")]
    Task(String),
}

impl DurableError {
    /// [`DurableError::Nats`].
    fn nats(what: &'static str, error: impl std::fmt::Display) -> DurableError {
        DurableError::Nats {
            what,
            error: error.to_string(),
        }
    }
}

/// A publish cell's load.
pub(super) struct Publish {
    pub(super) publishers: usize,
    pub(super) size: usize,
    pub(super) window: usize,
    pub(super) seconds: Duration,
    pub(super) stall: Duration,
}

/// A consume cell's load.
pub(super) struct Consume {
    pub(super) consumers: usize,
    pub(super) size: usize,
    /// Frames each consumer reads at most: what the publish cells stored.
    pub(super) expect: u64,
    pub(super) seconds: Duration,
    pub(super) stall: Duration,
}

/// What one publisher or consumer did.
#[derive(Debug, Default)]
pub(super) struct Part {
    /// Messages acknowledged (publish: PubAcks; consume: received and acked).
    pub(super) frames: u64,
    /// When the last one was.
    pub(super) last: Option<Instant>,
    /// Why it stopped before its end, if it stalled.
    pub(super) stalled: Option<String>,
    /// Negative answers (publish: a PubAck with an error, the hub's `ERR` but store full;
    /// consume: a frame not as published).
    pub(super) errors: u64,
    /// The hub's `ERR store full` replies.
    pub(super) refused: u64,
}

/// What one cell on one side did, all its peers together.
#[derive(Debug, Clone, Default)]
pub(super) struct Outcome {
    /// Payload bytes per frame.
    size: usize,
    /// Frames acknowledged (publish) or received and acknowledged (consume).
    frames: u64,
    /// From the cell's start to its last acknowledgement.
    seconds: f64,
    /// Stalls, one line per peer that stalled.
    stalled: Vec<String>,
    /// Negative replies but `store full`, and frames not as published.
    errors: u64,
    /// `ERR store full` replies.
    refused: u64,
}

impl Outcome {
    fn new(size: usize) -> Outcome {
        Outcome {
            size,
            ..Outcome::default()
        }
    }

    /// The parts of every peer of a cell, started at `start`, as they end.
    ///
    /// # Errors
    /// The first peer's error, or [`DurableError::Task`] when a peer's task panicked.
    pub(super) async fn gather(
        mut peers: tokio::task::JoinSet<Result<Part, DurableError>>,
        size: usize,
        start: Instant,
    ) -> Result<Outcome, DurableError> {
        let mut outcome = Outcome::new(size);
        while let Some(done) = peers.join_next().await {
            let done = done.map_err(|error| DurableError::Task(error.to_string()))?;
            outcome.add(done?, start);
        }
        Ok(outcome)
    }

    /// Adds one peer's part, its times counted from `start`.
    fn add(&mut self, part: Part, start: Instant) {
        self.frames += part.frames;
        self.errors += part.errors;
        self.refused += part.refused;
        if let Some(last) = part.last {
            self.seconds = self.seconds.max(last.duration_since(start).as_secs_f64());
        }
        self.stalled.extend(part.stalled);
    }

    fn frames_per_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.frames as f64 / self.seconds
        } else {
            0.0
        }
    }

    fn mb_per_s(&self) -> f64 {
        self.frames_per_s() * self.size as f64 / 1e6
    }
}

/// Publish or consume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Publish,
    Consume,
}

/// A cell: what, with how many peers, at what size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Cell {
    size: usize,
    kind: Kind,
    peers: u64,
}

impl Cell {
    /// `publish 4, 64 KiB`.
    fn label(&self) -> String {
        let kind = match self.kind {
            Kind::Publish => "publish+ack",
            Kind::Consume => "consume+ack",
        };
        let size = human_bytes(self.size as u64).replace(".00", "");
        format!("{kind} {}×, {size}", self.peers)
    }
}

/// Who was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Hub(Sync),
    JetStream,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Hub(Sync::Always) => "hub_always",
            Side::Hub(Sync::Os) => "hub_os",
            Side::JetStream => "jetstream",
        }
    }
}

/// One cell on one side in one round.
struct Run {
    round: u64,
    cell: Cell,
    side: Side,
    outcome: Result<Outcome, String>,
}

impl Run {
    fn json(&self) -> Value {
        let mut object = json!({
            "round": self.round,
            "cell": self.cell.label(),
            "kind": match self.cell.kind { Kind::Publish => "publish", Kind::Consume => "consume" },
            "peers": self.cell.peers,
            "size_bytes": self.cell.size,
            "side": self.side.name(),
        });
        match &self.outcome {
            Ok(outcome) => {
                object["frames"] = json!(outcome.frames);
                object["seconds"] = json!(round(outcome.seconds, 4));
                object["frames_per_s"] = json!(round(outcome.frames_per_s(), 0));
                object["mb_per_s"] = json!(round(outcome.mb_per_s(), 1));
                object["stalled"] = json!(outcome.stalled);
                object["errors"] = json!(outcome.errors);
                object["store_full"] = json!(outcome.refused);
            }
            Err(error) => object["error"] = json!(error),
        }
        object
    }
}

/// `value` rounded to `places` decimals.
fn round(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}

/// The median of `values` (the mean of the middle two for an even count); `None` when empty.
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// What the hub side could do.
enum HubState {
    /// Durable codes work (so far).
    Durable,
    /// It has none: why.
    Missing(String),
}

/// `bench durable`.
pub(crate) fn run(args: &Durable) -> Result<(), Failure> {
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let work = base.join(format!("tej-hub-bench-durable-{}", std::process::id()));
    std::fs::create_dir_all(&work)
        .map_err(|error| Failure::Failed(format!("cannot create {}: {error}", work.display())))?;
    let result = measure(args, &work, deadline);
    let _ = std::fs::remove_dir_all(&work);
    let (runs, disks, hub) = result?;
    let report = Report {
        args,
        dir: base,
        runs,
        disks,
        hub,
    };
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.table());
    }
    let failed: Vec<String> = report
        .runs
        .iter()
        .filter_map(|run| {
            run.outcome.as_ref().err().map(|error| {
                format!(
                    "round {} {} {}: {error}",
                    run.round,
                    run.cell.label(),
                    run.side.name()
                )
            })
        })
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::Failed(format!(
            "bench durable: {}",
            failed.join("; ")
        )))
    }
}

/// Every round: the disk, then each size on each side in turn.
fn measure(
    args: &Durable,
    work: &std::path::Path,
    deadline: Instant,
) -> Result<(Vec<Run>, Vec<Disk>, HubState), Failure> {
    let mut runs = Vec::new();
    let mut disks = Vec::new();
    let mut hub = HubState::Durable;
    let mut sides: Vec<Side> = Vec::new();
    for (index, sync) in args.sync.iter().enumerate() {
        // JetStream between the hub's policies: each hub run is next to a JetStream one.
        if index == 1 {
            sides.push(Side::JetStream);
        }
        sides.push(Side::Hub(*sync));
    }
    if args.sync.len() < 2 {
        sides.push(Side::JetStream);
    }
    for round in 1..=args.rounds {
        if !args.no_disk {
            eprintln!("tej-hub bench durable: round {round}: the disk baseline");
            let disk = Disk::measure(
                work,
                args.disk_bytes,
                Duration::from_secs(args.disk_seconds),
            )
            .map_err(|error| Failure::Failed(format!("the disk baseline failed: {error}")))?;
            disks.push(disk);
        }
        for &size in &args.sizes {
            for &side in &sides {
                if matches!(side, Side::Hub(_)) && matches!(hub, HubState::Missing(_)) {
                    continue;
                }
                if Instant::now() >= deadline {
                    return Err(Failure::Failed(format!(
                        "bench durable: gave up after --timeout {}s",
                        args.timeout
                    )));
                }
                eprintln!(
                    "tej-hub bench durable: round {round}: {} on {}",
                    human_bytes(size as u64),
                    side.name()
                );
                let store = work.join(format!("{round}-{size}-{}", side.name()));
                let cells = run_side(args, side, size, &store, deadline);
                let _ = std::fs::remove_dir_all(&store);
                match cells? {
                    SideResult::Measured(cells) => {
                        runs.extend(cells.into_iter().map(|(cell, outcome)| Run {
                            round,
                            cell,
                            side,
                            outcome,
                        }));
                    }
                    SideResult::NoDurability(reason) => {
                        eprintln!("tej-hub bench durable: hub has no durable codes: {reason}");
                        hub = HubState::Missing(reason);
                    }
                }
            }
        }
    }
    Ok((runs, disks, hub))
}

/// What one side did at one size.
enum SideResult {
    /// Each cell's outcome.
    Measured(Vec<(Cell, Result<Outcome, String>)>),
    /// The hub has no durable codes.
    NoDurability(String),
}

/// The server of one side, started for one size.
enum Server {
    Hub(DurableHub),
    JetStream(JetStream),
}

impl Server {
    async fn publish(&self, spec: &Publish) -> Result<Outcome, DurableError> {
        match self {
            Server::Hub(hub) => hub.publish(spec).await,
            Server::JetStream(js) => js.publish(spec).await,
        }
    }

    async fn consume(&self, spec: &Consume, prefix: &str) -> Result<Outcome, DurableError> {
        match self {
            Server::Hub(hub) => hub.consume(spec, prefix).await,
            Server::JetStream(js) => js.consume(spec, prefix).await,
        }
    }

    fn explain(&mut self) -> String {
        match self {
            Server::Hub(hub) => hub.explain(),
            Server::JetStream(js) => js.explain(),
        }
    }
}

/// Starts `side`'s server on a store in `store`, and runs every publish cell then every consume
/// cell at `size`.
fn run_side(
    args: &Durable,
    side: Side,
    size: usize,
    store: &std::path::Path,
    deadline: Instant,
) -> Result<SideResult, Failure> {
    let stall = Duration::from_secs(args.stall);
    let mut server = match side {
        Side::Hub(sync) => match DurableHub::spawn(store, sync, deadline) {
            Ok(hub) => Server::Hub(hub),
            Err(Missing::NoDurability(reason)) => return Ok(SideResult::NoDurability(reason)),
            Err(Missing::Failed(failure)) => return Err(failure),
        },
        Side::JetStream => Server::JetStream(JetStream::spawn(store, deadline)?),
    };
    let runtime = super::runtime()?;
    let measured = runtime.block_on(async {
        let within = tokio::time::timeout_at(deadline.into(), async {
            match &server {
                Server::Hub(hub) => {
                    if let Some(reply) = hub.probe(stall).await.map_err(|e| e.to_string())? {
                        return Ok(SideResult::NoDurability(format!(
                            "PUBACK on answered {reply:?}"
                        )));
                    }
                }
                Server::JetStream(js) => {
                    js.create_stream(stall).await.map_err(|e| e.to_string())?
                }
            }
            let mut cells = Vec::new();
            let mut stored = 0u64;
            for &publishers in &args.publishers {
                let spec = Publish {
                    publishers: publishers as usize,
                    size,
                    window: args.window as usize,
                    seconds: Duration::from_secs(args.seconds),
                    stall,
                };
                let outcome = server.publish(&spec).await.map_err(|e| e.to_string());
                if let Ok(outcome) = &outcome {
                    stored += outcome.frames;
                }
                let cell = Cell {
                    size,
                    kind: Kind::Publish,
                    peers: publishers,
                };
                cells.push((cell, outcome));
            }
            for &consumers in &args.consumers {
                let cell = Cell {
                    size,
                    kind: Kind::Consume,
                    peers: consumers,
                };
                if stored == 0 {
                    cells.push((cell, Err("nothing was stored to consume".to_owned())));
                    continue;
                }
                let spec = Consume {
                    consumers: consumers as usize,
                    size,
                    expect: stored,
                    seconds: Duration::from_secs(args.seconds),
                    stall,
                };
                let prefix = format!("bench{consumers}c");
                let outcome = server.consume(&spec, &prefix).await;
                cells.push((cell, outcome.map_err(|e| e.to_string())));
            }
            Ok::<_, String>(SideResult::Measured(cells))
        });
        within
            .await
            .unwrap_or_else(|_| Err(format!("gave up after --timeout {}s", args.timeout)))
    });
    // The clients close before the server is stopped.
    drop(runtime);
    measured.map_err(|error| {
        Failure::Failed(format!(
            "bench durable: {}: {error}{}",
            side.name(),
            server.explain()
        ))
    })
}

/// What `bench durable` prints.
struct Report<'a> {
    args: &'a Durable,
    dir: PathBuf,
    runs: Vec<Run>,
    disks: Vec<Disk>,
    hub: HubState,
}

/// A target for a cell's median: hub ÷ JetStream at least this much.
const JETSTREAM_TARGET: f64 = 2.0;
/// The hub's 1 MiB publish bandwidth at `always` ÷ the disk's sequential fdatasync bandwidth, at
/// least this much.
const DISK_TARGET: f64 = 0.8;

/// The medians of one cell.
struct Medians {
    cell: Cell,
    /// Frames/s per side, by side name.
    frames_per_s: Vec<(Side, f64)>,
    /// MB/s per side.
    mb_per_s: Vec<(Side, f64)>,
    /// Runs that stalled, per side.
    stalls: Vec<(Side, usize)>,
}

impl Medians {
    fn of(&self, side: Side) -> Option<f64> {
        self.frames_per_s
            .iter()
            .find(|(s, _)| *s == side)
            .map(|(_, v)| *v)
    }

    fn mb_of(&self, side: Side) -> Option<f64> {
        self.mb_per_s
            .iter()
            .find(|(s, _)| *s == side)
            .map(|(_, v)| *v)
    }

    /// `side ÷ JetStream`.
    fn ratio(&self, side: Side) -> Option<f64> {
        let js = self.of(Side::JetStream)?;
        (js > 0.0).then(|| self.of(side).unwrap_or(0.0) / js)
    }

    /// Whether the issue sets a JetStream target for this cell: publish at 128 B and 1 MiB,
    /// consume at every size.
    fn has_target(&self) -> bool {
        self.cell.kind == Kind::Consume || self.cell.size == 128 || self.cell.size == MIB as usize
    }
}

impl Report<'_> {
    fn cells(&self) -> Vec<Cell> {
        let mut cells: Vec<Cell> = self.runs.iter().map(|run| run.cell).collect();
        cells.sort();
        cells.dedup();
        cells
    }

    fn sides(&self) -> Vec<Side> {
        let mut sides = Vec::new();
        for run in &self.runs {
            if !sides.contains(&run.side) {
                sides.push(run.side);
            }
        }
        sides
    }

    fn medians(&self) -> Vec<Medians> {
        self.cells()
            .into_iter()
            .map(|cell| {
                let mut medians = Medians {
                    cell,
                    frames_per_s: Vec::new(),
                    mb_per_s: Vec::new(),
                    stalls: Vec::new(),
                };
                for side in self.sides() {
                    let outcomes: Vec<&Outcome> = self
                        .runs
                        .iter()
                        .filter(|run| run.cell == cell && run.side == side)
                        .filter_map(|run| run.outcome.as_ref().ok())
                        .collect();
                    let rates = outcomes.iter().map(|o| o.frames_per_s()).collect();
                    let mbs = outcomes.iter().map(|o| o.mb_per_s()).collect();
                    if let (Some(rate), Some(mb)) = (median(rates), median(mbs)) {
                        medians.frames_per_s.push((side, rate));
                        medians.mb_per_s.push((side, mb));
                    }
                    let stalls = outcomes.iter().filter(|o| !o.stalled.is_empty()).count();
                    medians.stalls.push((side, stalls));
                }
                medians
            })
            .collect()
    }

    /// The disk's median sequential MB/s and synced writes/s.
    fn disk_medians(&self) -> Option<(f64, f64)> {
        let seq = median(self.disks.iter().map(|d| d.sequential_mb_per_s).collect())?;
        let small = median(self.disks.iter().map(|d| d.synced_writes_per_s).collect())?;
        Some((seq, small))
    }

    fn hub_missing(&self) -> Option<&str> {
        match &self.hub {
            HubState::Durable => None,
            HubState::Missing(reason) => Some(reason),
        }
    }

    fn json(&self) -> Value {
        let disk = self.disk_medians();
        let medians: Vec<Value> = self
            .medians()
            .iter()
            .map(|m| {
                let mut object = json!({
                    "cell": m.cell.label(),
                    "kind": match m.cell.kind { Kind::Publish => "publish", Kind::Consume => "consume" },
                    "peers": m.cell.peers,
                    "size_bytes": m.cell.size,
                });
                for (side, rate) in &m.frames_per_s {
                    object[side.name()] = json!({
                        "frames_per_s": round(*rate, 0),
                        "mb_per_s": round(m.mb_of(*side).unwrap_or(0.0), 1),
                    });
                }
                for (side, stalls) in &m.stalls {
                    object[format!("{}_stalled_runs", side.name())] = json!(stalls);
                }
                for sync in [Sync::Always, Sync::Os] {
                    let side = Side::Hub(sync);
                    object[format!("ratio_{}_to_jetstream", side.name())] =
                        json!(m.ratio(side).map(|r| round(r, 3)));
                }
                if m.has_target() {
                    object["target_to_jetstream"] = json!(JETSTREAM_TARGET);
                }
                if m.cell.kind == Kind::Publish && m.cell.size == MIB as usize {
                    let to_disk = disk.and_then(|(seq, _)| {
                        m.mb_of(Side::Hub(Sync::Always)).map(|mb| mb / seq)
                    });
                    object["ratio_hub_always_to_disk"] = json!(to_disk.map(|r| round(r, 3)));
                    object["target_to_disk"] = json!(DISK_TARGET);
                }
                object
            })
            .collect();
        json!({
            "bench": "durable",
            "rounds": self.args.rounds,
            "seconds": self.args.seconds,
            "window": self.args.window,
            "stall_seconds": self.args.stall,
            "dir": self.dir.display().to_string(),
            "hub": {
                "durable": self.hub_missing().is_none(),
                "missing": self.hub_missing(),
            },
            "disk": self.disks.iter().map(Disk::json).collect::<Vec<_>>(),
            "disk_median": disk.map(|(seq, small)| json!({
                "sequential_fdatasync_mb_per_s": round(seq, 1),
                "synced_4k_writes_per_s": round(small, 0),
            })),
            "runs": self.runs.iter().map(Run::json).collect::<Vec<_>>(),
            "medians": medians,
            "ok": self.runs.iter().all(|run| run.outcome.is_ok()),
        })
    }

    fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "tej-hub bench durable: {} round(s), {} s per cell, window {}, stores in {}",
            self.args.rounds,
            self.args.seconds,
            self.args.window,
            self.dir.display()
        );
        if let Some(reason) = self.hub_missing() {
            let _ = writeln!(out, "hub has no durable codes ({reason}): JetStream only");
        }
        for (index, disk) in self.disks.iter().enumerate() {
            let _ = writeln!(
                out,
                "disk, round {}: sequential {} MiB + fdatasync: {:.1} MB/s; 4 KiB write + fdatasync: {:.0}/s",
                index + 1,
                disk.sequential_bytes / MIB,
                disk.sequential_mb_per_s,
                disk.synced_writes_per_s
            );
        }
        let _ = writeln!(out, "\nEvery run:\n");
        let _ = writeln!(
            out,
            "| round | cell | side | frames/s | MB/s | frames | notes |"
        );
        let _ = writeln!(out, "|---|---|---|---:|---:|---:|---|");
        for run in &self.runs {
            let (rate, mb, frames, notes) = match &run.outcome {
                Ok(o) => {
                    let mut notes = o.stalled.join("; ");
                    if o.errors + o.refused > 0 {
                        let _ = write!(notes, " errors {} store-full {}", o.errors, o.refused);
                    }
                    (
                        format!("{:.0}", o.frames_per_s()),
                        format!("{:.1}", o.mb_per_s()),
                        o.frames.to_string(),
                        notes,
                    )
                }
                Err(error) => (
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    format!("failed: {error}"),
                ),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {rate} | {mb} | {frames} | {notes} |",
                run.round,
                run.cell.label(),
                run.side.name()
            );
        }
        let _ = writeln!(out, "\nMedians of {} round(s) (frames/s; ratio hub ÷ JetStream, target ≥ {JETSTREAM_TARGET} where set):\n", self.args.rounds);
        let _ = writeln!(out, "| cell | hub always | hub os | JetStream | always ÷ JS | os ÷ JS | target | JS stalls |");
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|---:|");
        let disk = self.disk_medians();
        for m in self.medians() {
            let shown = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"));
            let ratio = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
            let mut target = if m.has_target() {
                format!("≥ {JETSTREAM_TARGET}")
            } else {
                "-".to_owned()
            };
            if m.cell.kind == Kind::Publish && m.cell.size == MIB as usize {
                if let (Some((seq, _)), Some(mb)) = (disk, m.mb_of(Side::Hub(Sync::Always))) {
                    let _ = write!(
                        target,
                        "; always {mb:.0} MB/s = {:.2}× disk (≥ {DISK_TARGET})",
                        mb / seq
                    );
                } else {
                    let _ = write!(target, "; ≥ {DISK_TARGET}× disk");
                }
            }
            let stalls = m
                .stalls
                .iter()
                .find(|(s, _)| *s == Side::JetStream)
                .map_or(0, |(_, n)| *n);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {target} | {stalls} |",
                m.cell.label(),
                shown(m.of(Side::Hub(Sync::Always))),
                shown(m.of(Side::Hub(Sync::Os))),
                shown(m.of(Side::JetStream)),
                ratio(
                    m.ratio(Side::Hub(Sync::Always))
                        .filter(|_| m.of(Side::Hub(Sync::Always)).is_some())
                ),
                ratio(
                    m.ratio(Side::Hub(Sync::Os))
                        .filter(|_| m.of(Side::Hub(Sync::Os)).is_some())
                ),
            );
        }
        if let Some((seq, small)) = disk {
            let _ = writeln!(out, "\ndisk (median): {seq:.1} MB/s sequential with fdatasync, {small:.0} synced 4 KiB writes/s");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_sizes() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(payload_size("128"), Ok(128));
        assert_eq!(payload_size("1MiB"), Ok(1 << 20));
        assert!(payload_size("15").is_err());
        assert!(payload_size("9MiB").is_err());
        assert!(sync_policy("interval").is_err());
    }
}
