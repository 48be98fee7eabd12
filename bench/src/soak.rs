//! `tej-hub bench soak`: a mixed, misbehaving workload held for a while against a hub, checked
//! for correctness and for leaks rather than measured for speed.
//!
//! P publishers send frames of 16 B to 64 MiB (the large ones streamed by the hub) on two codes;
//! one more publisher dies in the middle of a frame now and then (a whole one, or a streamed one
//! on a third code) and comes back under a new id; S subscribers take the roles of
//! [`clients::Role`] in turn: `block` (fast), `block` reading at most 30 MB/s, `drop` with pauses,
//! `disconnect` with long pauses (reconnecting when dropped), and a `block` one that connects and
//! disconnects every few seconds; hostile connections send garbage. The run checks:
//! - every frame's file matches the hash in its message, and no subscriber gets a publisher's
//!   frames duplicated or out of order;
//! - each `block` subscriber that stayed connected got every frame exactly once, in order;
//! - each `drop` subscriber missed exactly its `dropped_frames` (from `INFO`);
//! - the hub closed every connection that broke the protocol, and answered a bad command `ERR`;
//! - the hub's RSS, sampled every second from `/proc/PID/status`: after warm-up (the first third
//!   of the run), the last third's floor stays within 1.1 times the middle third's; runs shorter
//!   than 3 minutes get no verdict ([`rss`]);
//! - after the run, the hub's open connections (`INFO`) and file descriptors (`/proc/PID/fd`) are
//!   back to what they were before it.
//!
//! Beside it: [`clients`] (the frames, publishers, subscribers and hostile connections).

mod clients;
mod rss;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{json, Value};
use tej_hub::hub::HubClient;

use super::hub::{count_fds, status_kib, HubChoice, HubInfo, RunningHub};
use super::{before, human_bytes, limit, measure_on, one_to, Common, MIB};
use crate::Failure;
use clients::{Completed, Hostile, Phases, Published, Role, Seen};

/// The spawned hub's `--max-pending-bytes` unless a `--serve-arg` sets it: small, so that the
/// slow-consumer policies act often.
const MAX_PENDING: u64 = MIB;
/// How long the hub may take to close connections and descriptors after the run.
const SETTLE: Duration = Duration::from_secs(10);
/// How long before the run's deadline the clients give up draining.
const CLIENT_MARGIN: Duration = Duration::from_secs(30);
/// Time allowed beyond --duration for draining and checks when --timeout is shorter.
const DRAIN: u64 = 180;

/// `bench soak` flags.
#[derive(Args)]
pub(crate) struct Soak {
    /// How long the publishers publish, in seconds (draining and checks come after).
    #[arg(long, value_name = "SECS", default_value_t = 600, value_parser = one_to(86_400))]
    duration: u64,
    /// Number of regular publishers (1-16); a publisher that dies mid-frame comes on top.
    #[arg(long, value_name = "P", default_value_t = 3, value_parser = one_to(16))]
    publishers: u64,
    /// Number of subscribers (5-64); roles block, block-slow, drop, disconnect, churn in turn.
    #[arg(long, value_name = "S", default_value_t = 5, value_parser = clap::value_parser!(u64).range(5..=64))]
    subscribers: u64,
    #[command(flatten)]
    common: Common,
}

/// `bench soak`: starts (or finds) the hub, runs the workload, prints the report; exit 1 on any
/// violation.
pub(crate) fn run(args: &Soak) -> Result<(), Failure> {
    let timeout = args.common.timeout.max(args.duration + DRAIN);
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let choice = match HubChoice::new(&args.common, false) {
        HubChoice::Spawned(mut serve_args) => {
            if !serve_args
                .iter()
                .any(|arg| arg.starts_with("--max-pending-bytes"))
            {
                serve_args.push(format!("--max-pending-bytes={MAX_PENDING}"));
            }
            HubChoice::Spawned(serve_args)
        }
        other => other,
    };
    let mut running = RunningHub::start(&choice, deadline)?;
    let hub = running.info();
    eprintln!(
        "tej-hub bench: hub at {hub}; soaking for {}s with {} publishers (+1 dying) and {} subscribers",
        args.duration, args.publishers, args.subscribers
    );
    let soaking = soak(args, hub, deadline);
    let report = measure_on("soak", &mut running, &args.common, deadline, soaking)?;
    running.stop();
    if args.common.json {
        println!("{}", report.json);
    } else {
        print!("{}", report.table);
    }
    if report.violations.is_empty() {
        Ok(())
    } else {
        Err(Failure::Failed(format!(
            "bench soak: {} violation(s):\n  {}",
            report.violations.len(),
            report.violations.join("\n  ")
        )))
    }
}

/// The run's outcome.
struct Report {
    json: Value,
    table: String,
    violations: Vec<String>,
}

/// The hub's state a run compares before and after.
#[derive(Debug, Clone, Copy)]
struct HubState {
    /// `open_connections` from `INFO`, the asking connection included.
    connections: Option<u64>,
    /// Entries in `/proc/PID/fd`.
    fds: Option<u64>,
}

/// The workload, then the checks.
async fn soak(args: &Soak, hub: HubInfo, deadline: Instant) -> Result<Report, String> {
    let addr = hub.addr;
    // A first connection warms the hub up (its worker threads open their descriptors lazily).
    hub_state(addr, hub.pid, deadline).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before_run = hub_state(addr, hub.pid, deadline).await?;
    let started = Instant::now();
    let stop = started + Duration::from_secs(args.duration);
    // The clients give up a little before the run's deadline, so that the report still comes.
    let deadline = deadline.checked_sub(CLIENT_MARGIN).unwrap_or(deadline);
    let sampling = hub
        .pid
        .map(|pid| tokio::spawn(sample_rss(pid, started, stop)));

    let (ready, mut readiness) = tokio::sync::mpsc::channel(64);
    let (publish_done, expected) = tokio::sync::watch::channel(None::<Arc<Completed>>);
    let (all_routed, routed) = tokio::sync::watch::channel(false);
    let phases = Phases { expected, routed };
    let subscribers: Vec<_> = (0..args.subscribers)
        .map(|index| {
            let (ready, phases) = (ready.clone(), phases.clone());
            tokio::spawn(clients::subscriber(
                addr, index, ready, stop, phases, deadline,
            ))
        })
        .collect();
    drop(ready);
    for _ in 0..args.subscribers {
        before(
            limit(deadline, Duration::from_secs(30)),
            "subscribing",
            readiness.recv(),
        )
        .await?;
    }

    let publishers: Vec<_> = (1..=args.publishers)
        .map(|id| tokio::spawn(clients::publisher(addr, id, stop, deadline)))
        .collect();
    let dying = tokio::spawn(clients::dying_publisher(addr, 1_000_000, stop, deadline));
    let hostile = tokio::spawn(clients::hostile(addr, stop, deadline));

    let mut published = Published::default();
    for publisher in publishers.into_iter().chain([dying]) {
        let result = publisher
            .await
            .map_err(|error| format!("a publisher failed: {error}"))?;
        published.merge(result.map_err(|error| format!("a publisher: {error}"))?);
    }
    let completed = Arc::new(published.completed.clone());
    let _ = publish_done.send(Some(completed.clone()));
    let hostile = hostile.await.map_err(|error| format!("hostile: {error}"))?;
    // The `block` subscribers first: once they have everything, the hub has routed everything,
    // and the `drop` ones may ask for their count.
    let (blocking, others): (Vec<_>, Vec<_>) =
        subscribers.into_iter().enumerate().partition(|(index, _)| {
            matches!(Role::of(*index as u64), Role::BlockFast | Role::BlockSlow)
        });
    let mut seen = Vec::new();
    for group in [blocking, others] {
        for (index, subscriber) in group {
            let result = subscriber.await;
            seen.push((
                index,
                result.map_err(|error| format!("a subscriber failed: {error}"))?,
            ));
        }
        let _ = all_routed.send(true);
    }
    seen.sort_by_key(|(index, _)| *index);
    let seen: Vec<Seen> = seen.into_iter().map(|(_, seen)| seen).collect();
    let rss = match sampling {
        Some(sampling) => sampling.await.unwrap_or_default(),
        None => Vec::new(),
    };
    let after_run = settled_state(addr, hub.pid, before_run, deadline).await?;
    Ok(report(
        args,
        hub,
        &published,
        &seen,
        &hostile,
        &rss,
        (before_run, after_run),
    ))
}

/// `VmRSS` of `pid` every second until `stop`, as (seconds since `started`, KiB).
async fn sample_rss(pid: u32, started: Instant, stop: Instant) -> Vec<(f64, u64)> {
    let mut samples = Vec::new();
    // Bounded by `stop`: one sample a second.
    while Instant::now() < stop {
        if let Some(kib) = status_kib(pid, "VmRSS:") {
            samples.push((started.elapsed().as_secs_f64(), kib));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    samples
}

/// The hub's open connections (asked with `INFO`) and file descriptors now.
async fn hub_state(
    addr: SocketAddr,
    pid: Option<u32>,
    deadline: Instant,
) -> Result<HubState, String> {
    let fds = pid.and_then(count_fds);
    let wait = limit(deadline, Duration::from_secs(10));
    let mut probe = before(wait, "connecting", HubClient::connect(addr))
        .await?
        .map_err(|error| format!("cannot connect: {error}"))?;
    let info = before(wait, "INFO", probe.info())
        .await?
        .map_err(|error| format!("INFO: {error}"))?;
    Ok(HubState {
        connections: Some(info.hub.open_connections),
        fds,
    })
}

/// The hub's state once it matches `before` or [`SETTLE`] has passed.
async fn settled_state(
    addr: SocketAddr,
    pid: Option<u32>,
    before_run: HubState,
    deadline: Instant,
) -> Result<HubState, String> {
    let until = limit(deadline, SETTLE);
    // Bounded by `until`: 10 polls a second.
    loop {
        // The probe of the last poll is closed by now only if the hub noticed; give it a moment.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let state = hub_state(addr, pid, deadline).await?;
        let same = state.connections == before_run.connections && state.fds == before_run.fds;
        if same || Instant::now() >= until {
            return Ok(state);
        }
    }
}

/// Checks everything and lays out the report.
fn report(
    args: &Soak,
    hub: HubInfo,
    published: &Published,
    seen: &[Seen],
    hostile: &Hostile,
    rss: &[(f64, u64)],
    (before_run, after_run): (HubState, HubState),
) -> Report {
    let mut violations = Vec::new();
    let mut subscribers = Vec::new();
    for (index, seen) in seen.iter().enumerate() {
        let role = seen.role.unwrap_or(Role::BlockFast);
        let mut own: Vec<String> = seen.violations.clone();
        let mut missed = None;
        if role.stays() && !seen.stayed {
            own.push("did not stay connected to the end".to_owned());
        }
        if role.stays() && seen.stayed {
            let expected = role.frames_in(&published.completed);
            let got = role.frames_in(&seen.received);
            if role == Role::Drop {
                let lost = expected.saturating_sub(got);
                missed = Some(lost);
                if seen.dropped_frames != Some(lost) {
                    own.push(format!(
                        "missed {lost} frames but INFO says dropped_frames {:?}",
                        seen.dropped_frames
                    ));
                }
            } else if got != expected {
                own.push(format!("received {got} frames of {expected}"));
            }
        }
        violations.extend(
            own.iter()
                .map(|v| format!("subscriber {index} ({}): {v}", role.name())),
        );
        subscribers.push(json!({
            "index": index,
            "role": role.name(),
            "frames": seen.frames,
            "connections": seen.connections,
            "closed_by_hub": seen.closed_by_hub,
            "stayed": seen.stayed,
            "dropped_frames": seen.dropped_frames,
            "missed": missed,
            "violations": own,
        }));
    }
    violations.extend(hostile.violations.iter().map(|v| format!("hostile: {v}")));

    // The lowest and highest sample of each tenth of the run, for people to read.
    let tenths: Vec<Value> = (0..10)
        .map(|tenth| {
            let from = args.duration as f64 * f64::from(tenth) / 10.0;
            let to = from + args.duration as f64 / 10.0;
            let kib = || {
                rss.iter()
                    .filter(move |(at, _)| (from..to).contains(at))
                    .map(|(_, kib)| *kib)
            };
            json!({"from_s": from, "min": kib().min(), "max": kib().max()})
        })
        .collect();
    let judged = rss::judge(rss, args.duration as f64);
    violations.extend(judged.violation());
    if after_run.fds != before_run.fds {
        violations.push(format!(
            "hub file descriptors: {:?} before, {:?} after",
            before_run.fds, after_run.fds
        ));
    }
    if after_run.connections != before_run.connections {
        violations.push(format!(
            "hub open connections: {:?} before, {:?} after",
            before_run.connections, after_run.connections
        ));
    }

    let json = json!({
        "bench": "soak",
        "duration_s": args.duration,
        "publishers": args.publishers,
        "subscribers": args.subscribers,
        "hub": {"addr": hub.addr.to_string(), "origin": hub.origin.name(), "pid": hub.pid},
        "published": {
            "frames": published.frames(),
            "bytes": published.bytes,
            "deaths_mid_whole_frame": published.deaths_whole,
            "deaths_mid_streamed_frame": published.deaths_streamed,
        },
        "subscriber_results": subscribers,
        "hostile": {
            "connections": hostile.connections,
            "protocol_violators": hostile.violators,
            "closed_by_hub": hostile.closed_by_hub,
            "err_replies": hostile.err_replies,
        },
        "rss_kib": {
            "samples": rss.len(),
            "leak_rule": judged.json(),
            "tenths": tenths,
        },
        "fds": {"before": before_run.fds, "after": after_run.fds},
        "connections": {"before": before_run.connections, "after": after_run.connections},
        "violations": violations,
        "ok": violations.is_empty(),
    });
    let table = table(&json, published);
    Report {
        json,
        table,
        violations,
    }
}

/// The report for people.
fn table(report: &Value, published: &Published) -> String {
    let mut text = format!(
        "soak: {}s, {} publishers (+1 dying), {} subscribers, hub {}\n",
        report["duration_s"], report["publishers"], report["subscribers"], report["hub"]["addr"]
    );
    text.push_str(&format!(
        "published: {} frames, {}; died mid-frame {} times (whole) and {} times (streamed)\n",
        published.frames(),
        human_bytes(published.bytes),
        published.deaths_whole,
        published.deaths_streamed
    ));
    for sub in report["subscriber_results"]
        .as_array()
        .into_iter()
        .flatten()
    {
        text.push_str(&format!(
            "subscriber {:>2} {:<10} frames {:>8}  connections {:>3}  closed by hub {:>3}  stayed {:<5}  dropped {}  missed {}\n",
            sub["index"], sub["role"].as_str().unwrap_or(""), sub["frames"], sub["connections"],
            sub["closed_by_hub"], sub["stayed"], sub["dropped_frames"], sub["missed"]
        ));
    }
    let hostile = &report["hostile"];
    text.push_str(&format!(
        "hostile: {} connections, {} broke the protocol, {} closed by the hub, {} ERR replies\n",
        hostile["connections"],
        hostile["protocol_violators"],
        hostile["closed_by_hub"],
        hostile["err_replies"]
    ));
    let rss = &report["rss_kib"];
    let rule = &rss["leak_rule"];
    text.push_str(&format!(
        "hub RSS by third of the run (warm-up, middle, last), floor-peak KiB: {}; leak rule: {} \
         ({} samples)\n",
        ranges(&rule["thirds"], "floor", "peak"),
        rule["verdict"].as_str().unwrap_or(""),
        rss["samples"]
    ));
    text.push_str(&format!(
        "hub RSS by tenth of the run, min-max KiB: {}\n",
        ranges(&rss["tenths"], "min", "max")
    ));
    text.push_str(&format!(
        "hub fds: {} before, {} after; open connections: {} before, {} after\n",
        report["fds"]["before"],
        report["fds"]["after"],
        report["connections"]["before"],
        report["connections"]["after"]
    ));
    let violations = report["violations"].as_array().map_or(0, Vec::len);
    text.push_str(&if violations == 0 {
        "ok: no violation\n".to_owned()
    } else {
        format!("FAILED: {violations} violation(s)\n")
    });
    text
}

/// `low-high` of each object in the array `list`, space-separated.
fn ranges(list: &Value, low: &str, high: &str) -> String {
    let ranges: Vec<String> = list
        .as_array()
        .into_iter()
        .flatten()
        .map(|item| format!("{}-{}", item[low], item[high]))
        .collect();
    ranges.join(" ")
}
