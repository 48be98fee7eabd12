//! The cluster under real network faults (issue 19): hub a, hub b and `nats-server` each in a
//! network namespace of its own, hub a's and hub b's links to NATS separate veth pairs, faults
//! made on one link while the test's own connections (on each hub's loopback) are untouched
//! (`tests/common/faults.rs`, `tests/common/netns.rs`).
//!
//! Every scenario runs the same load and checks, around one fault: two publishers on hub a at
//! ~40 frames/s each on code 5, every 40th frame carrying a 1–4 MiB file (streamed by the hub),
//! each frame's message naming its publisher, sequence number, send time, file length and the
//! file's SHA-256; subscribers of code 5 on hub a (local) and hub b (across NATS). After a warm-up
//! the fault is made, held, healed; the load goes on, then stops and the subscribers drain. The
//! checks ([`Figures::failures`]): every frame on either hub whole, in order per publisher, no
//! duplicate; hub a's subscriber misses nothing and never waits longer than
//! [`LOCAL_STALL_BOUND`] between frames while the publishers run; every frame missing on hub b
//! is counted on some hub (`cluster` counters whose names say dropped or lost); a frame sent
//! after the heal reaches hub b within [`RECOVERY_BOUND`]; a `SUB` on hub b made at the heal gets
//! the next frame published on hub a; each hub's peak RSS under [`RSS_BOUND_KIB`]; no hub logs a
//! panic, and each exits on SIGTERM. Every scenario prints a `FIGURES` line (sent, received,
//! missing, counted, recovery time, longest local gap, ...) before its checks.
//!
//! The scenarios take a lock so that only one runs at a time in this binary (their bounds are
//! about the hubs, not about sharing two cores with another scenario). Where network namespaces
//! are unavailable (not root, no iproute2) or `nats-server` is missing they print `SKIPPED`;
//! under `CI` they fail instead.

#[path = "common/faults.rs"]
mod faults;
#[path = "common/hub.rs"]
mod hub_common;
#[path = "common/nats.rs"]
mod nats;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tej_hub::{CodecError, Frame};

use faults::{DelayRelay, Dir, Link, Netns, Reach, Shape, Topology};
use hub_common::{control_frame, pattern, status, Conn, MIB};
use nats::netns;

/// The code the load is published on.
const CODE: u8 = 5;
/// The code of the `SUB`-then-publish made at the heal (a figure: hub b may answer `SUB` before
/// it is back in touch with hub a, and hub a publish before it learns of the interest).
const AT_HEAL_CODE: u8 = 9;
/// The code of the `SUB`-then-publish made once frames cross again after the heal (a check).
const AFTER_RECOVERY_CODE: u8 = 10;
/// Publishers on hub a.
const PUBLISHERS: usize = 2;
/// Time between one publisher's frames (~40 frames/s).
const PACE: Duration = Duration::from_millis(25);
/// Every `BIG_EVERY`th frame carries a 1–4 MiB file.
const BIG_EVERY: u64 = 40;
/// The load runs this long before the fault.
const WARM_UP: Duration = Duration::from_secs(4);
/// ... and this long after the heal.
const AFTER_HEAL: Duration = Duration::from_secs(8);
/// How long the subscribers may take to receive what is still on its way once the load stops.
const DRAIN: Duration = Duration::from_secs(10);
/// The longest hub a's local subscriber may wait between two frames while the publishers run:
/// nothing on hub a's own side is faulty, ~80 frames/s are published; generous for a shared
/// 2-core machine (the hub that sheds its queue to NATS after holding publishers 0.5 s was
/// measured at up to 0.91 s; the hub before issue 19 at 4–35 s).
const LOCAL_STALL_BOUND: Duration = Duration::from_millis(1500);
/// The same bound on a link that is slow rather than broken (the delay scenario: its relay carries
/// about the load's own ~5 MB/s): crossing frames then wait for the receiving hub's credit, and
/// `block` across hubs is lossless, so the publishers — and with them their local subscribers —
/// are paced to the link while a crossing frame is under way (docs/cluster.md, flow control).
/// Measured 0.06–0.96 s in most runs, 4.02 s once; the old hub stalled 4.75 s here, so this
/// scenario's other checks (no hub taken for dead, no panic, whole frames) are what catch it.
const CREDIT_PACED_STALL_BOUND: Duration = Duration::from_secs(8);
/// From the heal to the first frame sent after it arriving on hub b: a dead connection noticed,
/// a reconnect (backoff at most 2 s), hello and interest exchanged. Usually 1–3 s; 5.11 s was
/// seen once with the whole test suite building beside it, so the bound leaves room for a busy
/// machine while a hub that does not reconnect by itself still fails it.
const RECOVERY_BOUND: Duration = Duration::from_secs(8);
/// How long the `SUB` made at the heal may take to be answered, and its frame to arrive.
const AFTER_HEAL_PATIENCE: Duration = Duration::from_secs(10);
/// Each hub's peak resident set (VmHWM) bound.
const RSS_BOUND_KIB: u64 = 256 * 1024;
/// How long a hub may take to exit on SIGTERM.
const EXIT_PATIENCE: Duration = Duration::from_secs(10);

/// One scenario at a time in this binary.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The fault a scenario makes.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Silent drop on hub a's link (`a`) or hub b's (`!a`), in `dir` (left is the hub).
    Drop { a: bool, dir: Dir },
    /// Hub a's link: 200 ± 50 ms each way through the relay, 2 % of the relay's chunks stalled a
    /// further 300 ms, and 2 % of the link's packets lost both ways.
    DelayLoss,
    /// Hub a → NATS limited to this many bytes per second.
    Throttle(u64),
}

impl Fault {
    /// The hub whose own link is faulty: `true` for a.
    fn on_a(self) -> bool {
        match self {
            Fault::Drop { a, .. } => a,
            Fault::DelayLoss | Fault::Throttle(_) => true,
        }
    }

    /// Whether the fault cuts the link (as opposed to making it slow).
    fn cuts(self) -> bool {
        matches!(self, Fault::Drop { .. })
    }

    fn make(self, topology: &Topology) {
        match self {
            Fault::Drop { a, dir } => {
                let link = if a {
                    &topology.link_a
                } else {
                    &topology.link_b
                };
                link.drop_all(dir);
            }
            Fault::DelayLoss => {
                topology
                    .relay
                    .as_ref()
                    .expect("the delay scenario runs with the relay")
                    .set_shape(Some(Shape {
                        delay: Duration::from_millis(200),
                        jitter: Duration::from_millis(50),
                        stall_share: 0.02,
                        stall: Duration::from_millis(300),
                    }));
                topology.link_a.lose(Dir::Both, 0.02);
            }
            Fault::Throttle(rate) => topology.link_a.rate_limit(Dir::LeftToRight, rate),
        }
    }

    fn heal(self, topology: &Topology) {
        topology.link_a.heal();
        topology.link_b.heal();
        if let Some(relay) = &topology.relay {
            relay.set_shape(None);
        }
    }
}

/// Precomputed big files of one publisher (generating and hashing 1–4 MiB per frame would cost
/// the test more CPU than the hubs): `(data, SHA-256 hex)`.
type BigFiles = Vec<(Bytes, String)>;

fn big_files(publisher: usize) -> BigFiles {
    [MIB + 12_345, 5 * MIB / 2 + 777, 4 * MIB - 3]
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let data = pattern(len, 1_000 + (publisher * 10 + i) as u64);
            let hash = hex(&Sha256::digest(&data));
            (data, hash)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Frame `seq` of `publisher`: one file (small, or every [`BIG_EVERY`]th one of `big`); the
/// message is `"PUBLISHER SEQ SENT_US LEN SHA256"`, `SENT_US` microseconds since `t0`.
fn load_frame(publisher: usize, seq: u64, t0: Instant, big: &BigFiles) -> Frame {
    let (data, hash) = if seq % BIG_EVERY == BIG_EVERY - 1 {
        big[(seq / BIG_EVERY) as usize % big.len()].clone()
    } else {
        let data = pattern(
            100 + (seq as usize * 37) % 900,
            (publisher as u64) << 40 | seq,
        );
        let hash = hex(&Sha256::digest(&data));
        (data, hash)
    };
    let sent_us = t0.elapsed().as_micros();
    let len = data.len();
    Frame::builder(status(CODE))
        .file(format!("{publisher}-{seq}.bin"), data)
        .message(format!("{publisher} {seq} {sent_us} {len} {hash}"))
        .build()
}

/// A frame as a subscriber checked it.
#[derive(Clone, Copy, Debug)]
struct Arrival {
    publisher: usize,
    seq: u64,
    /// When it was sent, since `t0`.
    sent: Duration,
    /// When it arrived, since `t0`.
    at: Duration,
    /// Which connection of the subscriber (it reconnects after the hub closes it).
    epoch: u32,
}

/// What one subscriber saw.
#[derive(Default, Debug)]
struct SubLog {
    arrivals: Vec<Arrival>,
    /// Frames whose bytes did not match what their message declares, or a stream that did not
    /// decode: the first few, described.
    corrupt: Vec<String>,
    /// How many frames were corrupt.
    corrupt_count: u64,
    /// When the hub closed the subscriber (since `t0`).
    cuts: Vec<Duration>,
}

/// Checks `frame` against its message; `Ok((publisher, seq, sent))`.
fn check_frame(frame: &Frame) -> Result<(usize, u64, Duration), String> {
    let text = std::str::from_utf8(&frame.message).map_err(|_| "message not UTF-8".to_owned())?;
    let parts: Vec<&str> = text.split(' ').collect();
    let [publisher, seq, sent_us, len, hash] = parts[..] else {
        return Err(format!("message {:?}", &text[..text.len().min(80)]));
    };
    let parse = |field: &str| field.parse::<u64>().map_err(|_| format!("field {field:?}"));
    let (publisher, seq, sent_us, len) =
        (parse(publisher)?, parse(seq)?, parse(sent_us)?, parse(len)?);
    if frame.status.code() != CODE || frame.files.len() != 1 {
        return Err(format!(
            "code {} with {} files",
            frame.status.code(),
            frame.files.len()
        ));
    }
    let data = &frame.files[0].data;
    if data.len() as u64 != len {
        return Err(format!("{publisher}/{seq}: {} bytes of {len}", data.len()));
    }
    if hex(&Sha256::digest(data)) != hash {
        return Err(format!("{publisher}/{seq}: SHA-256 differs ({len} bytes)"));
    }
    Ok((publisher as usize, seq, Duration::from_micros(sent_us)))
}

/// Sends `SUB code` on `conn` and waits for its `OK` (frames before it are skipped); `false` if
/// it does not come within `limit`.
async fn sub(conn: &mut Conn, code: u8, limit: Duration) -> bool {
    if conn
        .send(control_frame(&format!("SUB {code}")))
        .await
        .is_err()
    {
        return false;
    }
    let reply = tokio::time::timeout(limit, async {
        while let Some(Ok(frame)) = conn.next().await {
            if frame.status.code() == 127 {
                return String::from_utf8(frame.message.to_vec()).ok();
            }
        }
        None
    })
    .await;
    matches!(reply, Ok(Some(text)) if text.starts_with("OK SUB"))
}

/// A subscriber of [`CODE`] on `hub` until `stop`: checks every frame, reconnects and
/// subscribes again when the hub closes it.
async fn subscriber(hub: Reach, t0: Instant, stop: Arc<AtomicBool>, log: Arc<Mutex<SubLog>>) {
    let mut epoch = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let mut conn = hub.connect().await;
        if !sub(&mut conn, CODE, Duration::from_secs(15)).await {
            log.lock().unwrap().cuts.push(t0.elapsed());
            epoch += 1;
            continue;
        }
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match tokio::time::timeout(Duration::from_millis(200), conn.next()).await {
                Err(_) => continue,
                Ok(Some(Ok(frame))) => {
                    let at = t0.elapsed();
                    let mut log = log.lock().unwrap();
                    match check_frame(&frame) {
                        Ok((publisher, seq, sent)) => log.arrivals.push(Arrival {
                            publisher,
                            seq,
                            sent,
                            at,
                            epoch,
                        }),
                        Err(what) => {
                            log.corrupt_count += 1;
                            if log.corrupt.len() < 5 {
                                log.corrupt.push(what);
                            }
                        }
                    }
                }
                Ok(Some(Err(error))) => {
                    let mut log = log.lock().unwrap();
                    // Closed inside a frame is a cut (the documented answer to a frame that
                    // cannot arrive whole); anything else means the bytes were wrong.
                    if !matches!(error, CodecError::Truncated { .. }) {
                        log.corrupt_count += 1;
                        if log.corrupt.len() < 5 {
                            log.corrupt.push(format!("stream did not decode: {error}"));
                        }
                    }
                    log.cuts.push(t0.elapsed());
                    break;
                }
                Ok(None) => {
                    log.lock().unwrap().cuts.push(t0.elapsed());
                    break;
                }
            }
        }
        epoch += 1;
    }
}

/// One publisher's counts.
#[derive(Default)]
struct PubStats {
    /// Frames written out whole.
    sent: AtomicU64,
    /// The longest single `send` (microseconds): how long the hub held the publisher back.
    longest_send_us: AtomicU64,
    /// Set once the publisher has stopped sending.
    stopped: AtomicBool,
}

/// Publishes load frames on `hub` every [`PACE`] until `stop`; keeps its connection open until
/// `close` (so that nothing it sent is cut off as a publisher leaving mid-frame).
async fn publisher(
    hub: Reach,
    publisher: usize,
    t0: Instant,
    stop: Arc<AtomicBool>,
    close: Arc<AtomicBool>,
    stats: Arc<PubStats>,
) {
    let big = big_files(publisher);
    let mut conn = hub.connect().await;
    let mut ticker = tokio::time::interval(PACE);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        ticker.tick().await;
        let frame = load_frame(publisher, seq, t0, &big);
        let started = Instant::now();
        if conn.send(frame).await.is_err() {
            break;
        }
        let took = started.elapsed().as_micros() as u64;
        stats.longest_send_us.fetch_max(took, Ordering::Relaxed);
        seq += 1;
        stats.sent.store(seq, Ordering::Relaxed);
    }
    stats.stopped.store(true, Ordering::Relaxed);
    while !close.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A subscriber's arrivals judged against what was sent.
#[derive(Debug, Default)]
struct Judged {
    received: u64,
    /// Sent and never received.
    missing: u64,
    /// Of `missing`, those between the last frame before a cut and the first after the
    /// subscriber's new `SUB` (the hub closed it; it was not subscribed for a moment).
    around_cuts: u64,
    out_of_order: u64,
    duplicates: u64,
    /// The first few duplicates and reorderings: publisher, sequence, when each copy arrived.
    examples: Vec<String>,
}

fn judge(arrivals: &[Arrival], sent: &[u64]) -> Judged {
    let mut judged = Judged::default();
    for (publisher, &sent) in sent.iter().enumerate() {
        let mine: Vec<&Arrival> = arrivals
            .iter()
            .filter(|a| a.publisher == publisher)
            .collect();
        let mut seen = BTreeSet::new();
        let mut last: Option<u64> = None;
        let mut excused = BTreeSet::new();
        let mut previous: Option<&Arrival> = None;
        for arrival in &mine {
            let kind = if !seen.insert(arrival.seq) {
                judged.duplicates += 1;
                "duplicate"
            } else if last.is_some_and(|last| arrival.seq < last) {
                judged.out_of_order += 1;
                "out of order"
            } else {
                ""
            };
            if !kind.is_empty() && judged.examples.len() < 4 {
                let first = mine.iter().find(|a| a.seq == arrival.seq).map(|a| a.at);
                judged.examples.push(format!(
                    "{kind} {publisher}/{} (sent {:.3}s, arrived {:.3}s, first {:.3}s, after {:?})",
                    arrival.seq,
                    arrival.sent.as_secs_f64(),
                    arrival.at.as_secs_f64(),
                    first.unwrap_or_default().as_secs_f64(),
                    previous.map(|p| p.seq),
                ));
            }
            if let Some(previous) = previous {
                if arrival.epoch != previous.epoch {
                    excused.extend(previous.seq + 1..arrival.seq);
                }
            }
            last = Some(last.map_or(arrival.seq, |last| last.max(arrival.seq)));
            previous = Some(arrival);
        }
        judged.received += seen.len() as u64;
        for seq in 0..sent {
            if !seen.contains(&seq) {
                judged.missing += 1;
                if excused.contains(&seq) {
                    judged.around_cuts += 1;
                }
            }
        }
    }
    judged
}

/// Everything a scenario measured.
#[derive(Debug, Default)]
struct Figures {
    name: &'static str,
    sent: Vec<u64>,
    on_a: Judged,
    on_b: Judged,
    corrupt_a: u64,
    corrupt_b: u64,
    corrupt_examples: Vec<String>,
    cuts_a: usize,
    cuts_b: usize,
    /// The sum of the `cluster` counters that say dropped or lost, over both hubs.
    counted: u64,
    cluster_a: Value,
    cluster_b: Value,
    /// From the heal to the first frame sent after it arriving on hub b.
    recovery: Option<Duration>,
    /// The longest wait between two frames on hub a's subscriber while the publishers ran.
    longest_local_gap: Duration,
    /// When that wait began, in seconds from the fault's start (negative: before it).
    local_gap_from: f64,
    /// The longest single `send` of a publisher.
    longest_send: Duration,
    /// From the fault to the faulty hub's `INFO` saying `connected: false` (if it did).
    detected: Option<Duration>,
    /// `SUB` on b then publish on a, made at the heal: how long until the frame arrived.
    sub_at_heal: Option<Duration>,
    /// The same, made once frames crossed again after the heal.
    sub_after_recovery: Option<Duration>,
    /// `hub gone` lines in each hub's log.
    gone_a: usize,
    gone_b: usize,
    rss_a_kib: u64,
    rss_b_kib: u64,
    panics: Vec<String>,
    exits: Vec<String>,
}

fn secs(duration: Option<Duration>) -> String {
    duration.map_or("never".to_owned(), |d| format!("{:.2}s", d.as_secs_f64()))
}

impl Figures {
    fn line(&self) -> String {
        format!(
            "FIGURES {}: sent={} received_b={} missing_b={} (around_cuts={}) counted={} \
             [a: {} | b: {}] cuts_b={} corrupt_b={} out_of_order_b={} duplicates_b={} \
             received_a={} missing_a={} corrupt_a={} cuts_a={} recovery={} \
             longest_local_gap={:.2}s (from {:+.2}s) longest_send={:.2}s detected={} sub_at_heal={} sub_after_recovery={} \
             hub_gone_logs=a:{},b:{} peak_rss=a:{}MiB,b:{}MiB panics={} exits={:?}",
            self.name,
            self.sent.iter().sum::<u64>(),
            self.on_b.received,
            self.on_b.missing,
            self.on_b.around_cuts,
            self.counted,
            counters(&self.cluster_a),
            counters(&self.cluster_b),
            self.cuts_b,
            self.corrupt_b,
            self.on_b.out_of_order,
            self.on_b.duplicates,
            self.on_a.received,
            self.on_a.missing,
            self.corrupt_a,
            self.cuts_a,
            secs(self.recovery),
            self.longest_local_gap.as_secs_f64(),
            self.local_gap_from,
            self.longest_send.as_secs_f64(),
            secs(self.detected),
            secs(self.sub_at_heal),
            secs(self.sub_after_recovery),
            self.gone_a,
            self.gone_b,
            self.rss_a_kib / 1024,
            self.rss_b_kib / 1024,
            self.panics.len(),
            self.exits,
        )
    }

    /// Every check that failed, said with its numbers.
    fn failures(&self, fault: Fault) -> Vec<String> {
        let mut failed = Vec::new();
        if self.corrupt_a + self.corrupt_b > 0 {
            failed.push(format!(
                "frames not whole: {} on a, {} on b ({:?})",
                self.corrupt_a, self.corrupt_b, self.corrupt_examples
            ));
        }
        for (hub, judged) in [("a", &self.on_a), ("b", &self.on_b)] {
            if judged.out_of_order + judged.duplicates > 0 {
                failed.push(format!(
                    "hub {hub}: {} frames out of order, {} duplicates: {:?}",
                    judged.out_of_order, judged.duplicates, judged.examples
                ));
            }
        }
        if self.on_a.missing > 0 || self.cuts_a > 0 {
            failed.push(format!(
                "hub a's local subscriber missed {} frames and was closed {} times",
                self.on_a.missing, self.cuts_a
            ));
        }
        let stall_bound = match fault {
            Fault::DelayLoss => CREDIT_PACED_STALL_BOUND,
            _ => LOCAL_STALL_BOUND,
        };
        if self.longest_local_gap > stall_bound {
            failed.push(format!(
                "hub a's local subscriber waited {:.2}s for a frame (bound {stall_bound:?}; \
                 longest publisher send {:.2}s)",
                self.longest_local_gap.as_secs_f64(),
                self.longest_send.as_secs_f64()
            ));
        }
        let uncounted = self.on_b.missing - self.on_b.around_cuts;
        if uncounted > self.counted {
            failed.push(format!(
                "{uncounted} frames missing on b (not around a cut), {} counted by the hubs",
                self.counted
            ));
        }
        if !matches!(self.recovery, Some(recovery) if recovery <= RECOVERY_BOUND) {
            failed.push(format!(
                "frames crossed again {} after the heal (bound {RECOVERY_BOUND:?})",
                secs(self.recovery)
            ));
        }
        if self.sub_after_recovery.is_none() {
            failed.push(
                "a SUB on b once frames crossed again did not get the frame published next on a"
                    .into(),
            );
        }
        if fault.cuts() && self.detected.is_none() {
            failed.push(format!(
                "hub {} never said connected: false while its link was cut",
                if fault.on_a() { "a" } else { "b" }
            ));
        }
        if !fault.cuts() && (self.gone_a + self.gone_b > 0 || self.detected.is_some()) {
            failed.push(format!(
                "a slow link looked dead: `hub gone` logged {} times on a, {} on b; hub a \
                 connected: false {} into the fault",
                self.gone_a,
                self.gone_b,
                secs(self.detected)
            ));
        }
        for (hub, rss) in [("a", self.rss_a_kib), ("b", self.rss_b_kib)] {
            if rss > RSS_BOUND_KIB {
                failed.push(format!(
                    "hub {hub}'s peak RSS {} MiB (bound {} MiB)",
                    rss / 1024,
                    RSS_BOUND_KIB / 1024
                ));
            }
        }
        if !self.panics.is_empty() {
            failed.push(format!("panics in the hubs' logs: {:?}", self.panics));
        }
        if self.exits.iter().any(|exit| exit != "exit status: 0") {
            failed.push(format!("hub exits on SIGTERM: {:?}", self.exits));
        }
        failed
    }
}

/// The `cluster` counters that say something was dropped or lost, as `name=value` pairs.
fn counters(cluster: &Value) -> String {
    loss_counters(cluster)
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .chain(
            ["slow_consumers", "connected", "remote_hubs"]
                .iter()
                .map(|name| format!("{name}={}", cluster[*name])),
        )
        .collect::<Vec<_>>()
        .join(" ")
}

fn loss_counters(cluster: &Value) -> Vec<(String, u64)> {
    cluster
        .as_object()
        .map(|fields| {
            fields
                .iter()
                .filter(|(name, _)| name.contains("dropped") || name.contains("lost"))
                .filter_map(|(name, value)| Some((name.clone(), value.as_u64()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// `INFO`'s `cluster` object of `hub`, or `null` if the hub does not answer within 10 s.
async fn cluster_of(hub: &Reach) -> Value {
    let hub = hub.clone();
    let asked = tokio::spawn(async move { hub.info().await["cluster"].clone() });
    match tokio::time::timeout(Duration::from_secs(12), asked).await {
        Ok(Ok(cluster)) => cluster,
        _ => Value::Null,
    }
}

/// A new subscriber of `code` on hub b, then one frame on `code` published on hub a: how long
/// from the start until it arrived, if it did (within [`AFTER_HEAL_PATIENCE`] for each step).
async fn sub_then_publish(a: Reach, b: Reach, code: u8) -> Option<Duration> {
    let started = Instant::now();
    let mut b = b.connect().await;
    if !sub(&mut b, code, AFTER_HEAL_PATIENCE).await {
        return None;
    }
    let mut a = a.connect().await;
    a.send(Frame::message(status(code), "after the heal".to_owned()))
        .await
        .ok()?;
    match tokio::time::timeout(AFTER_HEAL_PATIENCE, b.next()).await {
        Ok(Some(Ok(frame))) if frame.status.code() == code => Some(started.elapsed()),
        _ => None,
    }
}

/// Runs `fault` for `hold` under the load and returns what was measured.
async fn run_scenario(name: &'static str, fault: Fault, hold: Duration) -> Option<Figures> {
    let _serial = SERIAL.lock().await;
    let relay = matches!(fault, Fault::DelayLoss);
    let mut topology = Topology::start(name, relay, &[]).await?;
    let (reach_a, reach_b) = (topology.a.reach(), topology.b.reach());
    let t0 = Instant::now();
    let stop_subs = Arc::new(AtomicBool::new(false));
    let logs = [
        Arc::new(Mutex::new(SubLog::default())),
        Arc::new(Mutex::new(SubLog::default())),
    ];
    let subs: Vec<_> = [&reach_a, &reach_b]
        .iter()
        .zip(&logs)
        .map(|(hub, log)| {
            tokio::spawn(subscriber(
                (*hub).clone(),
                t0,
                stop_subs.clone(),
                log.clone(),
            ))
        })
        .collect();
    // Both subscribed (b's `OK` waits for a's acknowledgement) before anything is published.
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let wanted = cluster_of(&reach_a).await["remote_codes"]
            .as_str()
            .map(str::to_owned);
        if wanted.is_some_and(|codes| codes.split(',').any(|c| c == CODE.to_string())) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (stop_pubs, close_pubs) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let stats: Vec<Arc<PubStats>> = (0..PUBLISHERS)
        .map(|_| Arc::new(PubStats::default()))
        .collect();
    let pubs: Vec<_> = stats
        .iter()
        .enumerate()
        .map(|(p, stats)| {
            tokio::spawn(publisher(
                reach_a.clone(),
                p,
                t0,
                stop_pubs.clone(),
                close_pubs.clone(),
                stats.clone(),
            ))
        })
        .collect();
    let load_started = t0.elapsed();
    tokio::time::sleep(WARM_UP).await;

    // The fault, held for `hold`, while the faulty hub's `connected` is watched.
    let faulty = if fault.on_a() {
        reach_a.clone()
    } else {
        reach_b.clone()
    };
    fault.make(&topology);
    let fault_at = Instant::now();
    let fault_start = t0.elapsed();
    let watch_until = fault_at + hold;
    let watcher = tokio::spawn(async move {
        while Instant::now() < watch_until {
            if cluster_of(&faulty).await["connected"] == false {
                return Some(fault_at.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        None
    });
    tokio::time::sleep(hold).await;
    fault.heal(&topology);
    let heal = t0.elapsed();
    let detected = watcher.await.ok().flatten();

    // At the heal, and again once frames cross again: a new subscriber on b, then one frame on a.
    let at_heal = tokio::spawn(sub_then_publish(
        reach_a.clone(),
        reach_b.clone(),
        AT_HEAL_CODE,
    ));
    let after_recovery = {
        let (reach_a, reach_b, log_b) = (reach_a.clone(), reach_b.clone(), logs[1].clone());
        tokio::spawn(async move {
            let until = Instant::now() + RECOVERY_BOUND;
            while Instant::now() < until {
                let crossed = log_b
                    .lock()
                    .unwrap()
                    .arrivals
                    .iter()
                    .any(|a| a.sent >= heal);
                if crossed {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            sub_then_publish(reach_a, reach_b, AFTER_RECOVERY_CODE).await
        })
    };
    tokio::time::sleep(AFTER_HEAL).await;
    stop_pubs.store(true, Ordering::Relaxed);
    let load_stopped = t0.elapsed();

    // Drain: until both subscribers have every frame sent, or `DRAIN` passes (a publisher still
    // held in `send` then has its frame left out of `sent`).
    let drain_until = Instant::now() + DRAIN;
    while Instant::now() < drain_until && !stats.iter().all(|s| s.stopped.load(Ordering::Relaxed)) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sent: Vec<u64> = loop {
        let sent: Vec<u64> = stats
            .iter()
            .map(|s| s.sent.load(Ordering::Relaxed))
            .collect();
        let complete = logs.iter().all(|log| {
            let log = log.lock().unwrap();
            (0..PUBLISHERS).all(|p| {
                sent[p] == 0
                    || log
                        .arrivals
                        .iter()
                        .any(|a| a.publisher == p && a.seq + 1 == sent[p])
            })
        });
        if complete || Instant::now() >= drain_until {
            break sent;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let sub_at_heal = at_heal.await.ok().flatten();
    let sub_after_recovery = after_recovery.await.ok().flatten();
    let cluster_a = cluster_of(&reach_a).await;
    let cluster_b = cluster_of(&reach_b).await;
    stop_subs.store(true, Ordering::Relaxed);
    close_pubs.store(true, Ordering::Relaxed);
    // A publisher still held in `send` by its hub is given up on.
    for mut task in pubs.into_iter().chain(subs) {
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut task).await;
        task.abort();
    }

    let (log_a, log_b) = (logs[0].lock().unwrap(), logs[1].lock().unwrap());
    let local_gap = longest_gap(&log_a.arrivals, load_started, load_stopped);
    let mut figures = Figures {
        name,
        on_a: judge(&log_a.arrivals, &sent),
        on_b: judge(&log_b.arrivals, &sent),
        sent,
        corrupt_a: log_a.corrupt_count,
        corrupt_b: log_b.corrupt_count,
        corrupt_examples: log_a
            .corrupt
            .iter()
            .chain(&log_b.corrupt)
            .cloned()
            .collect(),
        cuts_a: log_a.cuts.len(),
        cuts_b: log_b.cuts.len(),
        counted: [&cluster_a, &cluster_b]
            .iter()
            .flat_map(|cluster| loss_counters(cluster))
            .map(|(_, value)| value)
            .sum(),
        recovery: log_b
            .arrivals
            .iter()
            .filter(|a| a.sent >= heal)
            .map(|a| a.at.saturating_sub(heal))
            .min(),
        longest_local_gap: local_gap.0,
        local_gap_from: local_gap.1.as_secs_f64() - fault_start.as_secs_f64(),
        longest_send: Duration::from_micros(
            stats
                .iter()
                .map(|s| s.longest_send_us.load(Ordering::Relaxed))
                .max()
                .unwrap_or(0),
        ),
        detected,
        sub_at_heal,
        sub_after_recovery,
        cluster_a,
        cluster_b,
        ..Figures::default()
    };
    drop((log_a, log_b));
    figures.rss_a_kib = topology.a.bin.peak_rss_kib();
    figures.rss_b_kib = topology.b.bin.peak_rss_kib();
    // Counted before the SIGTERMs: a hub that leaves is rightly `hub gone` to the other.
    let gone = |hub: &faults::FaultHub| {
        hub.bin
            .logs()
            .iter()
            .filter(|l| l.contains("hub gone"))
            .count()
    };
    figures.gone_a = gone(&topology.a);
    figures.gone_b = gone(&topology.b);
    for hub in [&mut topology.a, &mut topology.b] {
        let exit = hub.terminate(EXIT_PATIENCE);
        figures
            .exits
            .push(exit.map_or("still running".to_owned(), |status| status.to_string()));
        figures.panics.extend(hub.panics());
    }
    Some(figures)
}

/// The longest wait between frames arriving (or from `from` to the first, or from the last to
/// `to`) among `arrivals` within `[from, to]`.
/// Returns the gap and when it began.
fn longest_gap(arrivals: &[Arrival], from: Duration, to: Duration) -> (Duration, Duration) {
    let mut times: Vec<Duration> = arrivals
        .iter()
        .map(|a| a.at)
        .filter(|at| *at >= from && *at <= to)
        .collect();
    times.sort();
    let mut longest = (Duration::ZERO, from);
    let mut previous = from + Duration::from_secs(1); // the first frame's own way in
    for at in times.into_iter().chain(std::iter::once(to)) {
        if at.saturating_sub(previous) > longest.0 {
            longest = (at - previous, previous);
        }
        previous = previous.max(at);
    }
    longest
}

/// Runs a scenario, prints its figures, and fails with every check that did not hold.
async fn scenario(name: &'static str, fault: Fault, hold: Duration) {
    let Some(figures) = run_scenario(name, fault, hold).await else {
        return;
    };
    eprintln!("{}", figures.line());
    let failed = figures.failures(fault);
    assert!(
        failed.is_empty(),
        "{name}: {} checks failed:\n  {}",
        failed.len(),
        failed.join("\n  ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_silent_drop_5s() {
    let fault = Fault::Drop {
        a: true,
        dir: Dir::Both,
    };
    scenario("a_nats_silent_drop_5s", fault, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_silent_drop_30s() {
    let fault = Fault::Drop {
        a: true,
        dir: Dir::Both,
    };
    scenario("a_nats_silent_drop_30s", fault, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_to_nats_one_way_drop_10s() {
    let fault = Fault::Drop {
        a: true,
        dir: Dir::LeftToRight,
    };
    scenario("a_to_nats_one_way_drop_10s", fault, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_nats_silent_drop_15s() {
    let fault = Fault::Drop {
        a: false,
        dir: Dir::Both,
    };
    scenario("b_nats_silent_drop_15s", fault, Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_delay_and_loss_30s() {
    scenario(
        "a_link_delay_and_loss_30s",
        Fault::DelayLoss,
        Duration::from_secs(30),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_to_nats_throttled_30s() {
    scenario(
        "a_to_nats_throttled_30s",
        Fault::Throttle(500_000),
        Duration::from_secs(30),
    )
    .await;
}

/// The harness itself: a drop on a link silences a TCP connection across it (both ways, and one
/// way), heal brings the held bytes through, a rate limit slows it, and the relay delays.
#[test]
fn harness_faults_act_on_a_link() {
    if !netns::available("harness_faults_act_on_a_link") {
        return;
    }
    let tag = netns::unique_tag();
    let left = Netns::create(&format!("{tag}l"));
    let right = Netns::create(&format!("{tag}r"));
    let link = Link::new(&left, "r0", &right, "l0", 9);
    let server = right
        .tcp_listen(SocketAddr::from((link.right.addr, 7000)))
        .expect("listen in the right namespace");
    let target = SocketAddr::from((link.right.addr, 7000));
    let mut client = left
        .tcp_connect(target, Duration::from_secs(5))
        .expect("connect across the link");
    let (mut peer, _) = server.accept().expect("accept");
    peer.set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut byte = [0u8; 1];

    client.write_all(b"1").unwrap();
    peer.read_exact(&mut byte)
        .expect("a byte across the healthy link");

    link.drop_all(Dir::LeftToRight);
    client.write_all(b"2").unwrap();
    assert!(
        peer.read_exact(&mut byte).is_err(),
        "a byte crossed a dropped link"
    );
    link.heal();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    peer.read_exact(&mut byte)
        .expect("the held byte after the heal (a retransmission)");
    assert_eq!(&byte, b"2");

    // A one-way drop the other way leaves this way open.
    link.drop_all(Dir::RightToLeft);
    client.write_all(b"3").unwrap();
    peer.read_exact(&mut byte)
        .expect("a byte the other way's drop does not stop");
    link.heal();

    // 256 KiB at 128 KiB/s takes about 2 s.
    link.rate_limit(Dir::LeftToRight, 128 * 1024);
    let started = Instant::now();
    let writer = std::thread::spawn(move || {
        client.write_all(&vec![7u8; 256 * 1024]).unwrap();
        client
    });
    let mut got = vec![0u8; 256 * 1024];
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    peer.read_exact(&mut got).expect("the rate-limited bytes");
    let took = started.elapsed();
    let _client = writer.join().unwrap();
    link.heal();
    assert!(
        took > Duration::from_millis(1200),
        "256 KiB at 128 KiB/s took {took:?}"
    );

    // The relay in the left namespace, to the listener across the link.
    let relay = DelayRelay::start(left.name(), target);
    relay.set_shape(Some(Shape {
        delay: Duration::from_millis(200),
        jitter: Duration::from_millis(50),
        stall_share: 0.0,
        stall: Duration::ZERO,
    }));
    let mut via = left
        .tcp_connect(relay.addr, Duration::from_secs(5))
        .expect("connect to the relay");
    let (mut relayed, _) = server.accept().expect("accept the relayed connection");
    let started = Instant::now();
    via.write_all(b"4").unwrap();
    relayed
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    relayed.read_exact(&mut byte).expect("a relayed byte");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(150),
        "the relay delayed a byte only {took:?}"
    );
    let _ = TcpStream::shutdown(&via, std::net::Shutdown::Both);
}
