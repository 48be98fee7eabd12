//! `tej-hub bench group`: one publisher to a queue group of subscribers (`SUB <code>
//! group=workers`: each frame to exactly one member), side by side in one run with the same hub
//! fanning out to one subscriber and with NATS's queue group (async-nats `queue_subscribe` on a
//! `nats-server` the bench spawns), as issue 21's "Performance" section asks.
//!
//! For each size: the hub 1→1, the hub 1→group, NATS 1→queue group (throughput, as
//! `bench throughput` measures it, each on a fresh server); then latency at `--rate`: the hub
//! 1→1 and 1→group. Printed: group ÷ 1→1 (target ≥ [`TARGET_ONE`]), group ÷ NATS (≥
//! [`TARGET_NATS`]), the spread of the members' shares (largest deviation from the mean, within
//! ±[`TARGET_SPREAD_PCT`] %), and p99 group ÷ p99 1→1 (≤ [`TARGET_P99`]). A hub that answers the
//! group subscription with `ERR` is reported as having no queue groups; the other cells still run.

use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{json, Value};
use tej_hub::Status;

use super::super::hub::{HubChoice, RunningHub};
use super::generator::{Endpoint, HubAddrs};
use super::nats::{NatsServer, NatsTarget};
use super::report::{round, Figures};
use super::{message_size, run_on, LoadError, Pace, Peers, Workload, MAX_SUBSCRIBERS};
use crate::{human_bytes, one_to, Common, Failure};

/// Group throughput ÷ 1→1 throughput, at least.
const TARGET_ONE: f64 = 0.9;
/// Group throughput ÷ NATS queue-group throughput, at least.
const TARGET_NATS: f64 = 3.0;
/// The members' shares' largest deviation from their mean, in percent, at most.
const TARGET_SPREAD_PCT: f64 = 10.0;
/// Group p99 ÷ 1→1 p99, at most.
const TARGET_P99: f64 = 1.2;

/// `bench group` flags.
#[derive(Args)]
pub(crate) struct Group {
    /// Members of the queue group.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u64).range(2..=MAX_SUBSCRIBERS))]
    members: u64,
    /// Message sizes, comma-separated.
    #[arg(long, value_name = "SIZES", value_delimiter = ',', default_value = "128,64KiB", value_parser = message_size)]
    sizes: Vec<usize>,
    /// Frames the publisher sends per throughput run [default: as `bench throughput` 1→1].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    frames: Option<u64>,
    /// The cap on each throughput run's publishing, and how long each latency run publishes.
    #[arg(long, value_name = "SECS", default_value_t = 5, value_parser = one_to(3_600))]
    seconds: u64,
    /// The latency runs' rate, frames per second (128 B frames).
    #[arg(long, value_name = "FRAMES", default_value_t = 10_000, value_parser = one_to(10_000_000))]
    rate: u64,
    /// Leave out NATS's queue group.
    #[arg(long)]
    no_nats: bool,
    /// Leave out the latency runs.
    #[arg(long)]
    no_latency: bool,
    #[command(flatten)]
    common: Common,
}

/// One size's throughput runs.
struct SizeCell {
    size: usize,
    one: Figures,
    /// `None` when the hub has no queue groups.
    group: Option<Figures>,
    nats: Option<Figures>,
}

/// `bench group`.
pub(crate) fn group(args: &Group) -> Result<(), Failure> {
    let deadline = Instant::now() + Duration::from_secs(args.common.timeout);
    let choice = HubChoice::new(&args.common, false);
    let code = Status::new(5).unwrap_or_default();
    let members = args.members as usize;
    let workload = |size: usize, subscribers: usize, group: bool, pace: Pace| Workload {
        publishers: 1,
        subscribers,
        size,
        status: code,
        pace,
        seconds: Duration::from_secs(args.seconds),
        group,
    };
    let mut no_groups: Option<String> = None;
    let mut cells = Vec::new();
    for &size in &args.sizes {
        let peers = Peers {
            publishers: 1,
            subscribers: 1,
            size,
            code,
        };
        let frames = Workload::throughput(&peers, args.frames, args.seconds).pace;
        eprintln!("tej-hub bench group: {}: hub 1→1", human_bytes(size as u64));
        let one = on_hub(&workload(size, 1, false, frames), &choice, deadline, args)?
            .map_err(|error| failed("hub 1→1", &error))?;
        let group = if no_groups.is_none() {
            eprintln!(
                "tej-hub bench group: {}: hub 1→group of {members}",
                human_bytes(size as u64)
            );
            match on_hub(
                &workload(size, members, true, frames),
                &choice,
                deadline,
                args,
            )? {
                Ok(figures) => Some(figures),
                Err(error) => match refusal(&error) {
                    Some(reason) => {
                        eprintln!("tej-hub bench group: hub has no queue groups: {reason}");
                        no_groups = Some(reason);
                        None
                    }
                    None => return Err(failed("hub 1→group", &error)),
                },
            }
        } else {
            None
        };
        let nats = if args.no_nats {
            None
        } else {
            eprintln!(
                "tej-hub bench group: {}: NATS 1→queue group of {members}",
                human_bytes(size as u64)
            );
            let figures = on_nats(&workload(size, members, true, frames), deadline, args)?;
            Some(figures.map_err(|error| failed("NATS queue group", &error))?)
        };
        cells.push(SizeCell {
            size,
            one,
            group,
            nats,
        });
    }
    let mut latency = None;
    if !args.no_latency {
        let pace = Pace::Rate(args.rate as f64);
        eprintln!("tej-hub bench group: latency 1→1 at {} frames/s", args.rate);
        let one = on_hub(&workload(128, 1, false, pace), &choice, deadline, args)?
            .map_err(|error| failed("latency 1→1", &error))?;
        let group = if no_groups.is_none() {
            eprintln!(
                "tej-hub bench group: latency 1→group of {members} at {} frames/s",
                args.rate
            );
            let run = on_hub(&workload(128, members, true, pace), &choice, deadline, args)?;
            match run {
                Ok(figures) => Some(figures),
                Err(error) => match refusal(&error) {
                    Some(reason) => {
                        no_groups = Some(reason);
                        None
                    }
                    None => return Err(failed("latency 1→group", &error)),
                },
            }
        } else {
            None
        };
        latency = Some((one, group));
    }
    let report = GroupReport {
        members,
        rate: args.rate,
        no_groups,
        cells,
        latency,
    };
    if args.common.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.table());
    }
    match report.problem() {
        None => Ok(()),
        Some(problem) => Err(Failure::Failed(format!("bench group: {problem}"))),
    }
}

/// `bench group: <what>: <error>`.
fn failed(what: &str, error: &LoadError) -> Failure {
    Failure::Failed(format!("bench group: {what}: {error}"))
}

/// The hub's reason when it refused the group subscription (a subscriber's `ERR`).
fn refusal(error: &LoadError) -> Option<String> {
    match error {
        LoadError::At { source, .. } => refusal(source),
        LoadError::Refused { reason, .. } => Some(reason.clone()),
        LoadError::UnexpectedReply { reply, .. } => Some(format!("it answered {reply:?}")),
        _ => None,
    }
}

/// Runs `workload` on a fresh hub as `choice` says; the outer error is the hub's start.
fn on_hub(
    workload: &Workload,
    choice: &HubChoice,
    deadline: Instant,
    args: &Group,
) -> Result<Result<Figures, LoadError>, Failure> {
    let mut hub = RunningHub::start(choice, deadline)?;
    let endpoint = Endpoint::Hub(HubAddrs::one(hub.info().addr), None);
    let runtime = crate::runtime()?;
    let measured = run_on(&runtime, workload, &endpoint, deadline, args.common.timeout);
    drop(runtime);
    if measured.is_err() {
        let explained = hub.explain();
        if !explained.is_empty() {
            eprintln!("tej-hub bench group: the hub:{explained}");
        }
    }
    hub.stop();
    Ok(measured.map(|measured| Figures::new(workload, &measured)))
}

/// Runs `workload` on a fresh `nats-server`; the outer error is the server's start.
fn on_nats(
    workload: &Workload,
    deadline: Instant,
    args: &Group,
) -> Result<Result<Figures, LoadError>, Failure> {
    let server = NatsServer::spawn(workload.size as u64, deadline)?;
    let target = NatsTarget::new(server.addr(), workload.status);
    let runtime = crate::runtime()?;
    let endpoint = Endpoint::Nats(target.clone());
    let measured = run_on(&runtime, workload, &endpoint, deadline, args.common.timeout);
    // The clients close before the server is stopped.
    drop(runtime);
    for event in target.events() {
        eprintln!("tej-hub bench group: a NATS client reported: {event}");
    }
    drop(server);
    Ok(measured.map(|measured| Figures::new(workload, &measured)))
}

/// The members' shares: the largest deviation from their mean, in percent of it.
fn spread_pct(shares: &[u64]) -> Option<f64> {
    let total: u64 = shares.iter().sum();
    if shares.is_empty() || total == 0 {
        return None;
    }
    let mean = total as f64 / shares.len() as f64;
    let deviation = shares
        .iter()
        .map(|&share| (share as f64 - mean).abs())
        .fold(0.0, f64::max);
    Some(deviation / mean * 100.0)
}

/// `ours ÷ theirs`, when both are there and `theirs` is not 0.
fn ratio(ours: Option<f64>, theirs: Option<f64>) -> Option<f64> {
    match (ours, theirs) {
        (Some(ours), Some(theirs)) if theirs > 0.0 => Some(ours / theirs),
        _ => None,
    }
}

/// What `bench group` prints.
struct GroupReport {
    members: usize,
    rate: u64,
    no_groups: Option<String>,
    cells: Vec<SizeCell>,
    /// Latency 1→1 and 1→group (when the hub has groups).
    latency: Option<(Figures, Option<Figures>)>,
}

impl GroupReport {
    /// Loss, reordering or duplicates in any run.
    fn problem(&self) -> Option<String> {
        let mut problems = Vec::new();
        for cell in &self.cells {
            let size = human_bytes(cell.size as u64);
            for (name, figures) in [
                ("hub 1→1", Some(&cell.one)),
                ("hub 1→group", cell.group.as_ref()),
                ("NATS queue group", cell.nats.as_ref()),
            ] {
                if let Some(problem) = figures.and_then(Figures::problem) {
                    problems.push(format!("{size} {name}: {problem}"));
                }
            }
        }
        if let Some((one, group)) = &self.latency {
            for (name, figures) in [
                ("latency 1→1", Some(one)),
                ("latency 1→group", group.as_ref()),
            ] {
                if let Some(problem) = figures.and_then(Figures::problem) {
                    problems.push(format!("{name}: {problem}"));
                }
            }
        }
        (!problems.is_empty()).then(|| problems.join("; "))
    }

    fn json(&self) -> Value {
        let cells: Vec<Value> = self
            .cells
            .iter()
            .map(|cell| {
                let group = cell.group.as_ref().map(Figures::frames_per_s);
                json!({
                    "size_bytes": cell.size,
                    "hub_one": cell.one.json(),
                    "hub_group": cell.group.as_ref().map(Figures::json),
                    "nats_group": cell.nats.as_ref().map(Figures::json),
                    "ratio_group_to_one": ratio(group, Some(cell.one.frames_per_s())).map(|r| round(r, 3)),
                    "ratio_group_to_nats": ratio(group, cell.nats.as_ref().map(Figures::frames_per_s)).map(|r| round(r, 3)),
                    "spread_pct": cell.group.as_ref().and_then(|g| spread_pct(g.per_subscriber())).map(|s| round(s, 2)),
                    "nats_spread_pct": cell.nats.as_ref().and_then(|n| spread_pct(n.per_subscriber())).map(|s| round(s, 2)),
                })
            })
            .collect();
        let latency = self.latency.as_ref().map(|(one, group)| {
            json!({
                "rate": self.rate,
                "hub_one": one.json(),
                "hub_group": group.as_ref().map(Figures::json),
                "ratio_p99_group_to_one": ratio(group.as_ref().and_then(Figures::p99), one.p99()).map(|r| round(r, 3)),
                "target": TARGET_P99,
            })
        });
        json!({
            "bench": "group",
            "members": self.members,
            "hub_groups": self.no_groups.is_none(),
            "hub_no_groups_reason": self.no_groups,
            "cells": cells,
            "latency": latency,
            "targets": {
                "group_to_one": TARGET_ONE,
                "group_to_nats": TARGET_NATS,
                "spread_pct": TARGET_SPREAD_PCT,
                "p99_group_to_one": TARGET_P99,
            },
            "ok": self.problem().is_none(),
        })
    }

    fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let shown = |v: Option<f64>, places: usize| {
            v.map_or_else(|| "-".to_owned(), |v| format!("{v:.places$}"))
        };
        if let Some(reason) = &self.no_groups {
            let _ = writeln!(
                out,
                "hub has no queue groups ({reason}): its group cells are left out"
            );
        }
        let members = self.members;
        let _ = writeln!(out, "| size | hub 1→1 frames/s | hub 1→group of {members} | NATS queue group of {members} | group ÷ 1→1 (≥ {TARGET_ONE}) | group ÷ NATS (≥ {TARGET_NATS}) | spread (± {TARGET_SPREAD_PCT} %) | NATS spread |");
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
        for cell in &self.cells {
            let group = cell.group.as_ref().map(Figures::frames_per_s);
            let nats = cell.nats.as_ref().map(Figures::frames_per_s);
            let spread = cell
                .group
                .as_ref()
                .and_then(|g| spread_pct(g.per_subscriber()));
            let nats_spread = cell
                .nats
                .as_ref()
                .and_then(|n| spread_pct(n.per_subscriber()));
            let _ = writeln!(
                out,
                "| {} | {:.0} | {} | {} | {} | {} | {} | {} |",
                human_bytes(cell.size as u64).replace(".00", ""),
                cell.one.frames_per_s(),
                shown(group, 0),
                shown(nats, 0),
                shown(ratio(group, Some(cell.one.frames_per_s())), 2),
                shown(ratio(group, nats), 2),
                shown(spread, 1),
                shown(nats_spread, 1),
            );
        }
        if let Some((one, group)) = &self.latency {
            let group_p99 = group.as_ref().and_then(Figures::p99);
            let _ = writeln!(
                out,
                "\nlatency at {} frames/s, 128 B: p99 1→1 {} µs, 1→group of {members} {} µs, ratio {} (≤ {TARGET_P99})",
                self.rate,
                shown(one.p99(), 1),
                shown(group_p99, 1),
                shown(ratio(group_p99, one.p99()), 2),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use bytes::{Bytes, BytesMut};
    use tej_hub::hub::control::CONTROL;
    use tej_hub::{Limits, TejCodec};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;
    use tokio_util::codec::Decoder;

    use super::super::generator::measure;
    use super::super::stamp::frame;
    use super::*;

    /// The members of the fake hub's one group, each a queue to its connection's writer.
    type Members = Arc<std::sync::Mutex<Vec<mpsc::UnboundedSender<Bytes>>>>;

    /// A fake hub with one queue group on code 5 as issue 21 describes it (`SUB 5 group=workers`
    /// answered `OK SUB 5 group=workers`, each frame to one member, in turn), or (without
    /// `groups`) answering it with `ERR` as a hub without queue groups does.
    async fn fake_hub(groups: bool) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("an address");
        let members = Members::default();
        let turn = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, members.clone(), turn.clone(), groups));
            }
        });
        addr
    }

    async fn serve(stream: TcpStream, members: Members, turn: Arc<AtomicUsize>, groups: bool) {
        let (mut read, mut write) = stream.into_split();
        let (queue, mut out) = mpsc::unbounded_channel::<Bytes>();
        tokio::spawn(async move {
            while let Some(bytes) = out.recv().await {
                if write.write_all(&bytes).await.is_err() {
                    return;
                }
            }
        });
        let mut codec = TejCodec::new(Limits::default());
        let mut buf = BytesMut::new();
        while matches!(read.read_buf(&mut buf).await, Ok(1..)) {
            while let Ok(Some(incoming)) = codec.decode(&mut buf) {
                if incoming.status == CONTROL {
                    let text = String::from_utf8_lossy(&incoming.message).into_owned();
                    let reply = if text == "SUB 5 group=workers" && groups {
                        members.lock().expect("members").push(queue.clone());
                        "OK SUB 5 group=workers".to_owned()
                    } else {
                        format!("ERR bad code {:?}", "group=workers")
                    };
                    let _ = queue.send(Bytes::from(frame(CONTROL, reply.as_bytes())));
                    continue;
                }
                let members = members.lock().expect("members").clone();
                if !members.is_empty() {
                    let member = turn.fetch_add(1, Ordering::Relaxed) % members.len();
                    let bytes = frame(incoming.status, &incoming.message);
                    let _ = members[member].send(Bytes::from(bytes));
                }
            }
        }
    }

    fn group_workload(subscribers: usize) -> Workload {
        Workload {
            publishers: 1,
            subscribers,
            size: 64,
            status: Status::new(5).expect("5"),
            pace: Pace::Frames(4_000),
            seconds: Duration::from_secs(10),
            group: true,
        }
    }

    /// The generator's group run: the members subscribe with `group=workers`, the run ends when
    /// the group has every frame, and loss and duplicates are counted over the group.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_run_counts_over_the_group() {
        let addr = fake_hub(true).await;
        let workload = group_workload(4);
        let endpoint = Endpoint::Hub(HubAddrs::one(addr), None);
        let measured = measure(&workload, &endpoint).await.expect("measures");
        let figures = Figures::new(&workload, &measured);
        assert_eq!(figures.problem(), None);
        assert_eq!(figures.per_subscriber(), [1_000; 4]);
        assert_eq!(spread_pct(figures.per_subscriber()), Some(0.0));
        assert!(measured.tallies.iter().all(|tally| tally.drained));
    }

    /// A hub without queue groups is found from its `ERR`, not waited for.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hub_without_groups_is_found() {
        let addr = fake_hub(false).await;
        let endpoint = Endpoint::Hub(HubAddrs::one(addr), None);
        let error = measure(&group_workload(2), &endpoint)
            .await
            .err()
            .expect("refused");
        assert_eq!(
            refusal(&error).as_deref(),
            Some("bad code \"group=workers\"")
        );
    }

    #[test]
    fn spread_of_shares() {
        assert_eq!(spread_pct(&[]), None);
        assert_eq!(spread_pct(&[0, 0]), None);
        assert_eq!(spread_pct(&[25, 25, 25, 25]), Some(0.0));
        assert_eq!(spread_pct(&[30, 20, 25, 25]), Some(20.0));
    }

    #[test]
    fn a_refused_group_is_found_inside_its_peer() {
        let refused = LoadError::Refused {
            code: 5,
            reason: "unknown argument group=workers".to_owned(),
        }
        .at("subscriber", 0);
        assert_eq!(
            refusal(&refused).as_deref(),
            Some("unknown argument group=workers")
        );
        assert_eq!(refusal(&LoadError::Timeout("x")), None);
    }
}
