//! Model-based test of the hub's routing: random sequences of connect, disconnect, `SUB`,
//! `UNSUB`, `SUB ... group=` and `UNSUB ... group=` (queue groups), `ECHO`, `SLOW` and
//! publications (small frames, and frames larger than the
//! cut-through size, which the hub streams while they arrive, written in random pieces by
//! several publishers at once) run against a real in-process hub over loopback, and every
//! connection's received frames are compared with a reference model of who must receive what:
//! exactly once, in each publisher's order, each frame whole and byte-identical. With queue
//! groups the model cannot know which member a frame goes to, only what is allowed: every
//! ordinary receiver gets it, each group with a member that may receive it gives it to at least
//! one of its members, and nobody else gets it — so exactly one member per group, as a member
//! that also subscribes gets it once either way.
//!
//! Determinism: every command waits for its `OK`; a publication step ends with a sentinel frame
//! from each publisher on [`SENTINEL`], which every connection subscribes to at connect and
//! never leaves. Frames of one publisher arrive in order, so a connection that has the sentinels
//! it expects has everything the step sent it; a stray or duplicated frame shows up as the next
//! frame read instead of a sentinel or a command's `OK`.
//!
//! Shrunk failures are kept in `tests/hub_model.proptest-regressions` and replayed first.

#[path = "common/hub.rs"]
mod hub_common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures_util::future::join_all;
use futures_util::StreamExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use tej_hub::hub::control::{CodeSet, Command, CONTROL};
use tej_hub::{Frame, TejCodec};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::FramedRead;

use hub_common::{
    connect_raw, control_frame, pattern, reply_text, start_hub, status, stop_hub, test_config,
    within, PATIENCE,
};

/// The queue groups the cases join.
const GROUPS: [&str; 2] = ["g", "h"];
/// How many connections a case juggles.
const SLOTS: usize = 4;
/// The codes the cases subscribe to and publish on.
const CODES: [u8; 3] = [5, 6, 7];
/// The code of the end-of-step sentinels; every connection subscribes to it at connect.
const SENTINEL: u8 = 9;
/// The hub's cut-through size in this test: frames larger than this are streamed.
const CUT_THROUGH: u64 = 1024;
/// Cases per run (`HUB_MODEL_CASES` overrides it for a longer search), and steps per case: the
/// whole test stays well under a minute (about 5 s on 2 cores).
const CASES: u32 = 256;
const MAX_STEPS: usize = 24;

/// One step of a case.
#[derive(Clone, Debug)]
enum Op {
    /// Connect the slot (nothing if it is connected).
    Connect(usize),
    /// Close the slot's connection (nothing if it is closed).
    Disconnect(usize),
    /// `SUB` some of [`CODES`].
    Sub(usize, Vec<u8>),
    /// `UNSUB` some of [`CODES`].
    Unsub(usize, Vec<u8>),
    /// `SUB <codes> group=<GROUPS[g]>`.
    Join(usize, usize, Vec<u8>),
    /// `UNSUB <codes> group=<GROUPS[g]>`.
    Leave(usize, usize, Vec<u8>),
    /// `ECHO on|off`.
    Echo(usize, bool),
    /// `SLOW block|drop|disconnect` (index into [`POLICIES`]).
    Slow(usize, usize),
    /// Publications, sent concurrently by their slots, each slot's in the listed order.
    Publish(Vec<Publication>),
    /// The slot starts a streamed frame on the code and dies in the middle of it: the hub must
    /// close every connection that had started receiving it, and only those.
    DieMidFrame(usize, u8),
}

/// A frame one slot publishes.
#[derive(Clone, Debug)]
struct Publication {
    slot: usize,
    code: u8,
    /// Larger than [`CUT_THROUGH`] (streamed by the hub) or small.
    streamed: bool,
    /// The sizes of the writes the frame's bytes go out in (cycled), to land pieces mid-frame.
    write: usize,
}

const POLICIES: [&str; 3] = ["block", "drop", "disconnect"];

fn codes() -> impl Strategy<Value = Vec<u8>> {
    proptest::sample::subsequence(CODES.to_vec(), 1..=CODES.len())
}

fn op() -> impl Strategy<Value = Op> {
    let slot = 0..SLOTS;
    let publication = (0..SLOTS, 0..CODES.len(), any::<bool>(), 1usize..4000).prop_map(
        |(slot, code, streamed, write)| Publication {
            slot,
            code: CODES[code],
            streamed,
            write,
        },
    );
    prop_oneof![
        1 => slot.clone().prop_map(Op::Connect),
        1 => slot.clone().prop_map(Op::Disconnect),
        3 => (slot.clone(), codes()).prop_map(|(s, c)| Op::Sub(s, c)),
        2 => (slot.clone(), codes()).prop_map(|(s, c)| Op::Unsub(s, c)),
        2 => (slot.clone(), 0..GROUPS.len(), codes()).prop_map(|(s, g, c)| Op::Join(s, g, c)),
        1 => (slot.clone(), 0..GROUPS.len(), codes()).prop_map(|(s, g, c)| Op::Leave(s, g, c)),
        1 => (slot.clone(), any::<bool>()).prop_map(|(s, on)| Op::Echo(s, on)),
        1 => (slot, 0..POLICIES.len()).prop_map(|(s, p)| Op::Slow(s, p)),
        5 => proptest::collection::vec(publication, 1..8).prop_map(Op::Publish),
        1 => (0..SLOTS, 0..CODES.len()).prop_map(|(s, c)| Op::DieMidFrame(s, CODES[c])),
    ]
}

/// What the model knows of a connected slot.
#[derive(Clone, Debug, Default)]
struct Subscriber {
    codes: CodeSet,
    echo: bool,
    /// Per group (index into [`GROUPS`]), the codes it is a member for.
    groups: [CodeSet; GROUPS.len()],
}

/// The reference model: who is connected, subscribed to what, with echo or not.
#[derive(Debug, Default)]
struct Model {
    slots: [Option<Subscriber>; SLOTS],
}

impl Model {
    /// Whether a frame on `code` from `from` must reach `to`.
    fn receives(&self, to: usize, from: usize, code: u8) -> bool {
        self.slots[to]
            .as_ref()
            .is_some_and(|sub| sub.codes.contains(status(code)) && (to != from || sub.echo))
    }

    /// The members of group `group` that may be given a frame on `code` from `from`.
    fn members(&self, group: usize, from: usize, code: u8) -> BTreeSet<usize> {
        (0..SLOTS)
            .filter(|&to| {
                self.slots[to].as_ref().is_some_and(|sub| {
                    sub.groups[group].contains(status(code)) && (to != from || sub.echo)
                })
            })
            .collect()
    }

    /// Whether any connected slot is a member of a group for `code`.
    fn grouped(&self, code: u8) -> bool {
        self.slots
            .iter()
            .flatten()
            .any(|sub| sub.groups.iter().any(|codes| codes.contains(status(code))))
    }

    /// Whether the connections that got a frame on `code` from `from`, `got`, are what the
    /// model allows: every ordinary receiver, at least one member of each group with members
    /// that may receive it, and nobody else (so one member per group beyond the ordinary
    /// receivers, at most).
    fn allowed(&self, from: usize, code: u8, got: &BTreeSet<usize>) -> Result<(), String> {
        let ordinary: BTreeSet<usize> = (0..SLOTS)
            .filter(|&to| self.receives(to, from, code))
            .collect();
        if !ordinary.is_subset(got) {
            return Err(format!(
                "ordinary receivers {ordinary:?} not all in {got:?}"
            ));
        }
        let mut anywhere = ordinary.clone();
        let mut groups = 0;
        for (group, name) in GROUPS.iter().enumerate() {
            let members = self.members(group, from, code);
            if members.is_empty() {
                continue;
            }
            groups += 1;
            if members.is_disjoint(got) {
                return Err(format!("group {name} ({members:?}) missed it"));
            }
            anywhere.extend(members);
        }
        if !got.is_subset(&anywhere) {
            return Err(format!("{got:?} beyond who may get it, {anywhere:?}"));
        }
        if got.difference(&ordinary).count() > groups {
            return Err(format!("{got:?}: more than one member per group"));
        }
        Ok(())
    }
}

/// The frame of publication number `seq` (unique in the case).
fn frame_of(publication: &Publication, seq: usize) -> Frame {
    let message = format!("p{} #{seq}", publication.slot);
    let builder = Frame::builder(status(publication.code));
    if publication.streamed {
        let size = 3000 + (seq * 7919) % 20_000;
        builder
            .file(format!("f{seq}"), pattern(size, seq as u64))
            .message(message)
            .build()
    } else {
        let size = seq % 200;
        builder
            .message(format!("{message} {}", "x".repeat(size)))
            .build()
    }
}

/// The sentinel `slot` sends at the end of step `step`.
fn sentinel(slot: usize, step: usize) -> Frame {
    Frame::message(status(SENTINEL), format!("end p{slot} step {step}"))
}

/// A connection to the hub, its halves apart so that a slot can publish and read at once.
struct Conn {
    read: FramedRead<OwnedReadHalf, TejCodec>,
    write: OwnedWriteHalf,
}

impl Conn {
    async fn open(addr: std::net::SocketAddr) -> Conn {
        let (read, write) = connect_raw(addr).await.into_split();
        Conn {
            read: FramedRead::new(read, TejCodec::default()),
            write,
        }
    }
}

/// Writes `frame` in writes of at most `write` bytes.
async fn write_frame(write: &mut OwnedWriteHalf, frame: &Frame, chunk: usize) {
    let wire = frame.to_wire().expect("test frames encode");
    for piece in wire.chunks(chunk) {
        within(PATIENCE, "a write", write.write_all(piece))
            .await
            .expect("write to the hub");
        tokio::task::yield_now().await;
    }
}

/// The next frame from the hub; panics on end of stream, error or timeout.
async fn recv(read: &mut FramedRead<OwnedReadHalf, TejCodec>) -> Frame {
    match within(PATIENCE, "a frame from the hub", read.next()).await {
        Some(Ok(frame)) => frame,
        Some(Err(error)) => panic!("reading from the hub failed: {error}"),
        None => panic!("the hub closed the connection"),
    }
}

/// Sends `command` and checks the reply is its `OK` (and the next frame at all).
async fn command(conn: &mut Conn, text: &str) {
    let parsed = Command::parse(text.as_bytes()).expect("the test's commands parse");
    let expected = parsed
        .ack()
        .expect("the test's commands are acknowledged")
        .to_string();
    write_frame(&mut conn.write, &control_frame(text), usize::MAX).await;
    let reply = reply_text(&recv(&mut conn.read).await, text);
    assert_eq!(reply, expected, "reply to {text:?}");
}

fn list(codes: &[u8]) -> String {
    codes
        .iter()
        .map(u8::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Writes `frames`, each in writes of its size, then `end`, then `barrier`: a command that goes
/// through the router, so that its reply proves the router has routed the frames before it even
/// when no connection receives them.
async fn publish(
    write: &mut OwnedWriteHalf,
    frames: Vec<(Frame, usize)>,
    end: Frame,
    barrier: Command,
) {
    for (frame, chunk) in frames {
        write_frame(write, &frame, chunk).await;
    }
    write_frame(write, &end, usize::MAX).await;
    write_frame(write, &control_frame(&barrier.to_string()), usize::MAX).await;
}

/// Reads `conn` until every sentinel and command reply in `ends` has arrived; returns the other
/// frames by publisher slot, in arrival order. A frame from an unknown publisher fails the case.
async fn collect(
    read: &mut FramedRead<OwnedReadHalf, TejCodec>,
    mut ends: Vec<Frame>,
) -> BTreeMap<usize, Vec<Frame>> {
    let mut got: BTreeMap<usize, Vec<Frame>> = BTreeMap::new();
    // Bounded: a step sends at most a few dozen frames.
    for _ in 0..1000 {
        if ends.is_empty() {
            return got;
        }
        let frame = recv(read).await;
        if frame.status.code() == SENTINEL || frame.status == CONTROL {
            let at = ends.iter().position(|end| *end == frame);
            let at = at.unwrap_or_else(|| {
                panic!(
                    "unexpected end marker {:?}, waiting for {:?}",
                    frame.message,
                    ends.iter().map(|e| &e.message).collect::<Vec<_>>()
                )
            });
            ends.remove(at);
            continue;
        }
        let from = std::str::from_utf8(&frame.message)
            .ok()
            .and_then(|m| m.strip_prefix('p'))
            .and_then(|m| m.split(' ').next())
            .and_then(|slot| slot.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("a frame no publisher sent: {frame}"));
        got.entry(from).or_default().push(frame);
    }
    panic!("more than 1000 frames in one step");
}

/// Runs `ops` against a fresh hub and the model.
async fn run_case(ops: Vec<Op>) {
    let mut config = test_config();
    config.cut_through_bytes = CUT_THROUGH;
    let hub = start_hub(config);
    let addr = hub.local_addr();
    let mut model = Model::default();
    let mut conns: [Option<Conn>; SLOTS] = Default::default();
    let mut seq = 0;
    // Every slot starts connected, so that short cases publish to someone.
    let ops = (0..SLOTS).map(Op::Connect).chain(ops);
    for (step, op) in ops.enumerate() {
        match op {
            Op::Connect(slot) if conns[slot].is_none() => {
                let mut conn = Conn::open(addr).await;
                command(&mut conn, &format!("SUB {SENTINEL}")).await;
                conns[slot] = Some(conn);
                let mut sub = Subscriber::default();
                sub.codes.insert(status(SENTINEL));
                model.slots[slot] = Some(sub);
            }
            Op::Disconnect(slot) => {
                let member = model.slots[slot]
                    .as_ref()
                    .is_some_and(|sub| sub.groups.iter().any(|codes| !codes.is_empty()));
                conns[slot] = None;
                model.slots[slot] = None;
                if member {
                    // Until the hub sees the close, the group may still pick the member, and
                    // what reaches its socket is lost with it (docs/hub.md, "Queue groups").
                    settle(&mut conns).await;
                }
            }
            Op::Sub(slot, codes) => subscription(&mut conns, &mut model, slot, "SUB", &codes).await,
            Op::Unsub(slot, codes) => {
                subscription(&mut conns, &mut model, slot, "UNSUB", &codes).await;
            }
            Op::Join(slot, group, codes) => {
                membership(&mut conns, &mut model, slot, group, "SUB", &codes).await;
            }
            Op::Leave(slot, group, codes) => {
                membership(&mut conns, &mut model, slot, group, "UNSUB", &codes).await;
            }
            Op::Echo(slot, on) => {
                if let (Some(conn), Some(sub)) = (conns[slot].as_mut(), model.slots[slot].as_mut())
                {
                    command(conn, if on { "ECHO on" } else { "ECHO off" }).await;
                    sub.echo = on;
                }
            }
            Op::Slow(slot, policy) => {
                if let Some(conn) = conns[slot].as_mut() {
                    command(conn, &format!("SLOW {}", POLICIES[policy])).await;
                }
            }
            Op::Publish(publications) => {
                // Per publisher, in order; publishers that are not connected are skipped.
                let mut by_slot: BTreeMap<usize, Vec<(Publication, Frame)>> = BTreeMap::new();
                for publication in publications {
                    if conns[publication.slot].is_some() {
                        seq += 1;
                        let frame = frame_of(&publication, seq);
                        by_slot
                            .entry(publication.slot)
                            .or_default()
                            .push((publication, frame));
                    }
                }
                publish_step(&mut conns, &model, &by_slot, step).await;
            }
            Op::DieMidFrame(slot, code) => die_mid_frame(&mut conns, &mut model, slot, code).await,
            _ => {}
        }
    }
    drop(conns);
    stop_hub(hub).await;
}

/// `SUB` or `UNSUB` (`word`) `codes` on `slot`, if it is connected, in the hub and the model.
async fn subscription(
    conns: &mut [Option<Conn>; SLOTS],
    model: &mut Model,
    slot: usize,
    word: &str,
    codes: &[u8],
) {
    let (Some(conn), Some(sub)) = (conns[slot].as_mut(), model.slots[slot].as_mut()) else {
        return;
    };
    command(conn, &format!("{word} {}", list(codes))).await;
    for &code in codes {
        if word == "SUB" {
            sub.codes.insert(status(code));
        } else {
            sub.codes.remove(status(code));
        }
    }
}

/// `SUB` or `UNSUB` (`word`) `codes` in group `group` on `slot`, if it is connected, in the
/// hub and the model.
async fn membership(
    conns: &mut [Option<Conn>; SLOTS],
    model: &mut Model,
    slot: usize,
    group: usize,
    word: &str,
    codes: &[u8],
) {
    let (Some(conn), Some(sub)) = (conns[slot].as_mut(), model.slots[slot].as_mut()) else {
        return;
    };
    command(
        conn,
        &format!("{word} {} group={}", list(codes), GROUPS[group]),
    )
    .await;
    for &code in codes {
        if word == "SUB" {
            sub.groups[group].insert(status(code));
        } else {
            sub.groups[group].remove(status(code));
        }
    }
}

/// `slot` (if connected) sends part of a streamed frame on `code` and closes its connection; the
/// connections the model says receive it must be closed by the hub with no whole frame first.
/// Skipped on a code with group members: which member would be closed is the hub's choice.
async fn die_mid_frame(
    conns: &mut [Option<Conn>; SLOTS],
    model: &mut Model,
    slot: usize,
    code: u8,
) {
    if model.grouped(code) {
        return;
    }
    let Some(mut conn) = conns[slot].take() else {
        return;
    };
    let frame = Frame::builder(status(code))
        .file("cut", pattern(10 * CUT_THROUGH as usize, 1))
        .build();
    let wire = frame.to_wire().expect("test frames encode");
    let cut = &wire[..CUT_THROUGH as usize + 500];
    within(PATIENCE, "a partial frame", conn.write.write_all(cut))
        .await
        .expect("write part of a frame");
    drop(conn);
    model.slots[slot] = None;
    for (to, victim) in conns.iter_mut().enumerate() {
        if !model.receives(to, slot, code) {
            continue;
        }
        let Some(mut victim) = victim.take() else {
            continue;
        };
        model.slots[to] = None;
        match within(PATIENCE, "the hub to close a receiver", victim.read.next()).await {
            None | Some(Err(_)) => {}
            Some(Ok(frame)) => panic!("connection {to} got {frame} instead of being closed"),
        }
    }
    settle(conns).await;
}

/// Waits until the hub has closed every connection the model has closed: until then a dying
/// publisher's partial frame may still be on its way to the router, where a later `SUB` could
/// overtake it (and its subscriber would rightly be closed with it).
async fn settle(conns: &mut [Option<Conn>; SLOTS]) {
    let live = conns.iter().flatten().count() as u64;
    let Some(conn) = conns.iter_mut().flatten().next() else {
        return;
    };
    // Bounded: 500 polls 10 ms apart.
    for _ in 0..500 {
        write_frame(&mut conn.write, &control_frame("INFO"), usize::MAX).await;
        let reply = reply_text(&recv(&mut conn.read).await, "INFO");
        let json = reply
            .strip_prefix("OK INFO ")
            .expect("INFO answers OK INFO");
        let info: serde_json::Value = serde_json::from_str(json).expect("INFO is JSON");
        if info["hub"]["open_connections"].as_u64() == Some(live) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the hub kept connections the test had closed");
}

/// Sends one publication step and checks what every connection received against the model.
async fn publish_step(
    conns: &mut [Option<Conn>; SLOTS],
    model: &Model,
    by_slot: &BTreeMap<usize, Vec<(Publication, Frame)>>,
    step: usize,
) {
    let mut senders = Vec::new();
    let mut readers = Vec::new();
    for (slot, conn) in conns.iter_mut().enumerate() {
        let Some(conn) = conn.as_mut() else { continue };
        let expected: BTreeMap<usize, Vec<Frame>> = by_slot
            .iter()
            .filter_map(|(&from, frames)| {
                let mine: Vec<Frame> = frames
                    .iter()
                    .filter(|(p, _)| model.receives(slot, from, p.code))
                    .map(|(_, frame)| frame.clone())
                    .collect();
                (!mine.is_empty()).then_some((from, mine))
            })
            .collect();
        let mut ends: Vec<Frame> = by_slot
            .keys()
            .filter(|&&from| model.receives(slot, from, SENTINEL))
            .map(|&from| sentinel(from, step))
            .collect();
        let Conn { read, write } = conn;
        if let Some(frames) = by_slot.get(&slot) {
            let frames = frames
                .iter()
                .map(|(p, frame)| (frame.clone(), p.write))
                .collect();
            // ECHO as it is: a no-op that the router answers.
            let echo = model.slots[slot].as_ref().is_some_and(|sub| sub.echo);
            let barrier = Command::Echo(echo);
            ends.extend(barrier.ack().map(|reply| reply.to_frame()));
            senders.push(publish(write, frames, sentinel(slot, step), barrier));
        }
        let exact = !by_slot
            .values()
            .flatten()
            .any(|(p, _)| model.grouped(p.code));
        readers.push(async move {
            let got = collect(read, ends).await;
            if exact {
                assert_eq!(got, expected, "connection {slot} at step {step}");
            }
            (slot, got)
        });
    }
    let (_, received) = within(Duration::from_secs(30), "a publication step", async {
        let send = join_all(senders);
        let read = join_all(readers);
        tokio::join!(send, read)
    })
    .await;
    check_groups(model, by_slot, &received, step);
}

/// Checks a step's deliveries against what the model allows (see [`Model::allowed`]): per
/// frame, who got it; per connection, each publisher's frames once each, in order.
fn check_groups(
    model: &Model,
    by_slot: &BTreeMap<usize, Vec<(Publication, Frame)>>,
    received: &[(usize, BTreeMap<usize, Vec<Frame>>)],
    step: usize,
) {
    for (from, frames) in by_slot {
        for (publication, frame) in frames {
            let got: BTreeSet<usize> = received
                .iter()
                .filter(|(_, got)| got.get(from).is_some_and(|list| list.contains(frame)))
                .map(|(slot, _)| *slot)
                .collect();
            if let Err(fault) = model.allowed(*from, publication.code, &got) {
                panic!("step {step}, frame {:?} of p{from}: {fault}", frame.message);
            }
        }
        for (slot, got) in received {
            let Some(list) = got.get(from) else { continue };
            // A subsequence of the publisher's frames: in order, none twice, none unknown.
            let mut published = frames.iter().map(|(_, frame)| frame);
            for frame in list {
                assert!(
                    published.any(|sent| sent == frame),
                    "connection {slot} at step {step}: {:?} of p{from} out of order, twice or \
                     never sent",
                    frame.message
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(Config {
        cases: std::env::var("HUB_MODEL_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(CASES),
        max_shrink_iters: 200,
        max_shrink_time: 60_000,
        failure_persistence: Some(Box::new(FileFailurePersistence::SourceParallel("proptest-regressions"))),
        ..Config::default()
    })]

    /// The hub delivers exactly what the model says, whatever the sequence.
    #[test]
    fn routing_matches_the_model(ops in proptest::collection::vec(op(), 1..MAX_STEPS)) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(run_case(ops));
    }
}
