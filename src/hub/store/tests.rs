//! The store on real files in temporary directories: appends read back byte for byte, sequence
//! numbers across reopens, torn tails cut, corruption found, retention, group commit, a full
//! disk (a tmpfs the test mounts, as root), frames larger than a segment, 64-bit offsets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;

use crate::frame::{Frame, Status};
use crate::hub::control::CodeSet;
use crate::hub::delivery::flow::Gate;
use crate::hub::delivery::relay::{Piece, PieceKind};
use crate::hub::session::SessionId;
use crate::hub::store::record::HEADER_LEN;
use crate::hub::store::{
    inspect, AckSink, CodeLimits, Discard, DurableCodes, Outcome, Position, Store, StoreCounters,
    StoreRefused, StoreSettings, Stored,
};

const WAIT: Duration = Duration::from_secs(20);

fn code(n: u8) -> Status {
    Status::new(n).unwrap_or(Status::PING)
}

fn settings(dir: &std::path::Path, limits: CodeLimits) -> StoreSettings {
    StoreSettings {
        durable: vec![DurableCodes {
            codes: CodeSet::from_bits(1 << 5),
            limits,
        }],
        ..StoreSettings::new(dir)
    }
}

fn open(settings: &StoreSettings) -> (Arc<Store>, Arc<StoreCounters>) {
    let counters = Arc::new(StoreCounters::default());
    let store = Store::open(settings.clone(), counters.clone()).unwrap_or_else(|e| panic!("{e}"));
    (store, counters)
}

fn wire(frame: &Frame) -> Bytes {
    frame.to_wire().unwrap_or_else(|e| panic!("{e}"))
}

/// A frame of code 5 numbered `i`, with a file every third one.
fn numbered(i: usize, size: usize) -> Bytes {
    let body = vec![(i % 251) as u8; size];
    if i % 3 == 0 {
        wire(
            &Frame::builder(code(5))
                .file(format!("f{i}"), body)
                .message(format!("m{i}"))
                .build(),
        )
    } else {
        wire(&Frame::message(code(5), body))
    }
}

fn sink() -> (AckSink, Receiver<Result<Stored, StoreRefused>>) {
    let (tx, rx) = channel();
    let sink: AckSink = Arc::new(move |outcomes: &[Outcome]| {
        for outcome in outcomes {
            let _ = tx.send(outcome.clone());
        }
    });
    (sink, rx)
}

/// The sequence numbers of the next `n` acknowledgements (0 for a refusal).
fn received(acks: &Receiver<Result<Stored, StoreRefused>>, n: usize) -> Vec<u64> {
    (0..n)
        .map(|_| {
            acks.recv_timeout(WAIT)
                .ok()
                .and_then(Result::ok)
                .map_or(0, |s| s.seq)
        })
        .collect()
}

fn whole(frames: &[Bytes]) -> Piece {
    let mut bytes = Vec::new();
    for frame in frames {
        bytes.extend_from_slice(frame);
    }
    Piece {
        status: code(5),
        kind: PieceKind::Whole,
        frames: frames.len() as u32,
        bytes: bytes.into(),
    }
}

/// A piece of a streamed frame of code 5 (a `Last` piece ends one frame).
fn streamed(kind: PieceKind, bytes: Bytes) -> Piece {
    Piece {
        status: code(5),
        kind,
        frames: u32::from(kind == PieceKind::Last),
        bytes,
    }
}

/// Appends `frames` as one run per frame and waits for every acknowledgement.
fn append_all(store: &Store, frames: &[Bytes]) -> Vec<Result<Stored, StoreRefused>> {
    let (ack, acks) = sink();
    let gate = Gate::new();
    for frame in frames {
        store.append(
            SessionId::new(1),
            &gate,
            &whole(std::slice::from_ref(frame)),
            Some(ack.clone()),
        );
    }
    (0..frames.len())
        .map(|_| {
            acks.recv_timeout(WAIT)
                .unwrap_or_else(|e| panic!("no ack: {e}"))
        })
        .collect()
}

/// Every frame of code 5 from `from`, as (seq, bytes).
fn read_all(store: &Store, from: Position) -> Vec<(u64, Vec<u8>)> {
    let mut reader = store
        .reader(code(5), from)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    while let Some(frame) = reader.next_frame().unwrap_or_else(|e| panic!("{e}")) {
        let mut bytes = vec![0u8; frame.len as usize];
        let mut at = 0;
        while at < bytes.len() {
            let n = frame.read_at(at as u64, &mut bytes[at..]).unwrap_or(0);
            assert!(n > 0, "short read");
            at += n;
        }
        assert!(frame.verify().unwrap_or(false));
        out.push((frame.seq, bytes));
    }
    out
}

fn seqs(acks: &[Result<Stored, StoreRefused>]) -> Vec<u64> {
    acks.iter()
        .filter_map(|ack| ack.as_ref().ok().map(|stored| stored.seq))
        .collect()
}

#[test]
fn frames_read_back_byte_identical_and_numbered_across_reopens() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let settings = settings(dir.path(), CodeLimits::default());
    let frames: Vec<Bytes> = (0..50).map(|i| numbered(i, i * 37)).collect();
    {
        let (store, _) = open(&settings);
        // A run of several frames is split into one record each.
        let (ack, acks) = sink();
        store.append(
            SessionId::new(1),
            &Gate::new(),
            &whole(&frames[..10]),
            Some(ack),
        );
        let got: Vec<u64> = received(&acks, 10);
        assert_eq!(got, (1..=10).collect::<Vec<u64>>());
        assert_eq!(
            seqs(&append_all(&store, &frames[10..30])),
            (11..=30).collect::<Vec<_>>()
        );
    }
    let (store, _) = open(&settings);
    assert_eq!(
        seqs(&append_all(&store, &frames[30..])),
        (31..=50).collect::<Vec<_>>()
    );
    let read = read_all(&store, Position::First);
    assert_eq!(read.len(), 50);
    for (i, (seq, bytes)) in read.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1);
        assert_eq!(bytes[..], frames[i][..], "frame {seq}");
    }
    assert_eq!(read_all(&store, Position::Seq(45)).len(), 6);
    assert_eq!(
        read_all(&store, Position::Last).first().map(|f| f.0),
        Some(50)
    );
    assert!(read_all(&store, Position::Next).is_empty());
    let stats = store.stats();
    assert_eq!(
        (stats[0].first_seq, stats[0].last_seq, stats[0].frames),
        (1, 50, 50)
    );
}

#[test]
fn frames_read_ahead_with_their_headers_match_the_file_and_the_rest_are_read() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let settings = settings(dir.path(), CodeLimits::default());
    let (store, _) = open(&settings);
    // Sizes from a few bytes to 100 KiB: records straddle the reader's 128 KiB read-ahead.
    let frames: Vec<Bytes> = (0..120)
        .map(|i| numbered(i, (i * 7919) % 100_000))
        .collect();
    assert_eq!(append_all(&store, &frames).len(), frames.len());
    let mut reader = store
        .reader(code(5), Position::First)
        .unwrap_or_else(|e| panic!("{e}"));
    let (mut buffered, mut read) = (0, 0);
    let mut seq = 0;
    while let Some(frame) = reader.next_frame().unwrap_or_else(|e| panic!("{e}")) {
        let expected = &frames[seq];
        seq += 1;
        assert_eq!(frame.seq, seq as u64);
        match reader.buffered(&frame) {
            Some(bytes) => {
                assert_eq!(bytes, &expected[..], "frame {seq} as read ahead");
                buffered += 1;
            }
            None => {
                let mut bytes = vec![0u8; frame.len as usize];
                let n = frame.read_at(0, &mut bytes).unwrap_or(0);
                assert_eq!(
                    (n, &bytes[..]),
                    (expected.len(), &expected[..]),
                    "frame {seq}"
                );
                read += 1;
            }
        }
    }
    assert_eq!(seq, frames.len());
    assert!(
        buffered > 60 && read > 0,
        "{buffered} read ahead, {read} read alone"
    );
}

#[test]
fn a_streamed_frame_is_one_record_and_an_abandoned_one_none() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (store, counters) = open(&settings(dir.path(), CodeLimits::default()));
    // Larger than a frame the store gathers in memory: it streams to the tail.
    let big = wire(
        &Frame::builder(code(5))
            .file("big", vec![7u8; 4_500_000])
            .message("end")
            .build(),
    );
    let other = numbered(1, 100);
    let (ack, acks) = sink();
    let gate = Gate::new();
    let send = |from: u64, piece: &Piece, ack: Option<AckSink>| {
        store.append(SessionId::new(from), &gate, piece, ack);
    };
    // Publisher 1 streams; publisher 2's whole frame waits for the tail, then follows.
    send(1, &streamed(PieceKind::First, big.slice(..1000)), None);
    send(2, &whole(std::slice::from_ref(&other)), Some(ack.clone()));
    send(
        1,
        &streamed(PieceKind::Middle, big.slice(1000..300_000)),
        None,
    );
    // Publisher 3 starts a stream and goes away.
    send(3, &streamed(PieceKind::First, big.slice(..5000)), None);
    store.abandon(SessionId::new(3));
    send(
        1,
        &streamed(PieceKind::Last, big.slice(300_000..)),
        Some(ack),
    );
    let mut got: Vec<u64> = received(&acks, 2);
    got.sort_unstable();
    assert_eq!(got, [1, 2]);
    let read = read_all(&store, Position::First);
    assert_eq!(read.len(), 2);
    assert!(
        read[0].1[..] == big[..],
        "the streamed frame completed first"
    );
    assert!(read[1].1[..] == other[..]);
    assert_eq!(counters.abandoned.load(Ordering::Relaxed), 1);
    drop(store);
    assert!(inspect::check(dir.path())
        .unwrap_or_default()
        .iter()
        .all(|c| c.cut.is_none()));
}

/// Pieces waiting for the tail are applied in each publisher's order: a publisher whose first
/// piece must still wait keeps its later pieces behind it, even when the tail frees up in the
/// same pass (the first build applied publisher 2's last piece before its first: `store
/// malformed` to the publisher, and a frame spliced out of the log).
#[test]
fn waiting_pieces_keep_each_publishers_order() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (store, _) = open(&settings(dir.path(), CodeLimits::default()));
    // Larger than a frame the store gathers in memory: each streams to the tail.
    let big = |fill: u8| {
        wire(
            &Frame::builder(code(5))
                .file("big", vec![fill; 4_300_000])
                .message("end")
                .build(),
        )
    };
    let (zero, one, two) = (big(0), big(1), big(2));
    let (ack, acks) = sink();
    let gate = Gate::new();
    let send = |from: u64, kind, bytes: Bytes| {
        let piece = streamed(kind, bytes);
        let ack = (kind == PieceKind::Last).then(|| ack.clone());
        store.append(SessionId::new(from), &gate, &piece, ack);
    };
    // Publisher 0 owns the tail; 1 and 2 wait, their pieces interleaved.
    send(0, PieceKind::First, zero.slice(..1000));
    send(1, PieceKind::First, one.slice(..1000));
    send(2, PieceKind::First, two.slice(..1000));
    send(2, PieceKind::Middle, two.slice(1000..2000));
    send(1, PieceKind::Last, one.slice(1000..));
    send(2, PieceKind::Last, two.slice(2000..));
    send(0, PieceKind::Last, zero.slice(1000..));
    let mut got = received(&acks, 3);
    got.sort_unstable();
    assert_eq!(got, [1, 2, 3], "every frame stored (0 is a refusal)");
    let read: Vec<Vec<u8>> = read_all(&store, Position::First)
        .into_iter()
        .map(|(_, frame)| frame)
        .collect();
    assert!(read == [zero.to_vec(), one.to_vec(), two.to_vec()]);
}

/// Small streamed frames of several publishers are gathered in memory and stored as each
/// completes, none waiting for another's tail (they used to be written one at a time, each
/// publisher's frame behind the one that began first); one announced small that grows past
/// the stage's bound spills to the tail as a streamed frame; an abandoned one leaves nothing.
#[test]
fn small_streamed_frames_of_several_publishers_complete_side_by_side() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (store, counters) = open(&settings(dir.path(), CodeLimits::default()));
    let frame = |fill: u8, file: usize, message: usize| {
        wire(
            &Frame::builder(code(5))
                .file("f", vec![fill; file])
                .message(vec![fill; message])
                .build(),
        )
    };
    let (a, b) = (frame(1, 600_000, 10), frame(2, 300_000, 10));
    // Its first piece announces 1 KiB of file; the message after it is 5 MB.
    let grows = frame(3, 1000, 5_000_000);
    let (ack, acks) = sink();
    let gate = Gate::new();
    let send = |from: u64, kind, bytes: Bytes| {
        let piece = streamed(kind, bytes);
        store.append(SessionId::new(from), &gate, &piece, Some(ack.clone()));
    };
    send(1, PieceKind::First, a.slice(..1000));
    send(2, PieceKind::First, b.slice(..1000));
    send(3, PieceKind::First, grows.slice(..900));
    send(2, PieceKind::Last, b.slice(1000..));
    // Publisher 2's frame is stored while 1's and 3's are still arriving.
    assert_eq!(received(&acks, 1), [1], "b stored first");
    send(3, PieceKind::Middle, grows.slice(900..4_500_000));
    send(1, PieceKind::Middle, a.slice(1000..2000));
    send(4, PieceKind::First, a.slice(..1000));
    store.abandon(SessionId::new(4));
    send(1, PieceKind::Last, a.slice(2000..));
    send(3, PieceKind::Last, grows.slice(4_500_000..));
    let mut got = received(&acks, 2);
    got.sort_unstable();
    assert_eq!(got, [2, 3], "a and the grown frame stored (0 is a refusal)");
    let read = read_all(&store, Position::First);
    assert_eq!(read.len(), 3);
    assert!(read[0].1[..] == b[..], "b first, byte-identical");
    let rest: Vec<&[u8]> = read[1..].iter().map(|(_, bytes)| &bytes[..]).collect();
    assert!(
        rest.contains(&&a[..]) && rest.contains(&&grows[..]),
        "a and the grown frame byte-identical"
    );
    assert_eq!(counters.abandoned.load(Ordering::Relaxed), 1);
}

/// The last segment's file of code 5.
fn last_segment(dir: &std::path::Path) -> std::path::PathBuf {
    let code_dir = dir.join("code-5");
    let mut logs: Vec<_> = std::fs::read_dir(&code_dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
                .collect()
        })
        .unwrap_or_default();
    logs.sort();
    logs.pop().unwrap_or_default()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// A crash at any byte of the last record: recovery cuts it, counts it and never returns it.
    #[test]
    fn a_torn_last_record_is_cut_at_every_offset(frames in 1usize..6, size in 0usize..300, cut in 0.0f64..1.0) {
        let (dir, settings, wires) = stored(frames, size);
        let path = last_segment(dir.path());
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let last = (HEADER_LEN + wires[frames - 1].len()) as u64;
        // Keep the first `kept` bytes of the last record (0 ..= last - 1).
        let kept = ((last as f64) * cut) as u64;
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap_or_else(|e| panic!("{e}"));
        file.set_len(len - last + kept).unwrap_or_else(|e| panic!("{e}"));
        drop(file);
        let report = inspect::check(dir.path()).unwrap_or_default();
        prop_assert_eq!(report.iter().filter(|c| c.cut.is_some()).count(), usize::from(kept > 0));
        let (store, counters) = open(&settings);
        prop_assert_eq!(counters.cut_bytes.load(Ordering::Relaxed), kept);
        let read = read_all(&store, Position::First);
        prop_assert_eq!(read.len(), frames - 1);
        for (i, (_, bytes)) in read.iter().enumerate() {
            prop_assert_eq!(&bytes[..], &wires[i][..]);
        }
        // The next frame takes the cut one's number: it was never stored.
        prop_assert_eq!(seqs(&append_all(&store, &wires[..1])), vec![frames as u64]);
    }
}

/// A closed store of code 5 holding `count` frames of about `size` bytes (default limits).
fn stored(count: usize, size: usize) -> (tempfile::TempDir, StoreSettings, Vec<Bytes>) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let settings = settings(dir.path(), CodeLimits::default());
    let wires: Vec<Bytes> = (0..count).map(|i| numbered(i + 1, size)).collect();
    let (store, _) = open(&settings);
    append_all(&store, &wires);
    (dir, settings, wires)
}

#[test]
fn a_corrupt_frame_mid_log_is_found_and_never_returned() {
    let (dir, settings, wires) = stored(10, 200);
    let path = last_segment(dir.path());
    let mut bytes = std::fs::read(&path).unwrap_or_default();
    // A byte inside frame 4's body.
    let record = |i: usize| HEADER_LEN + wires[i].len();
    let at = (0..3).map(record).sum::<usize>() + HEADER_LEN + 50;
    bytes[at] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap_or_else(|e| panic!("{e}"));
    let report = inspect::check(dir.path()).unwrap_or_default();
    let cut = report.iter().find_map(|c| c.cut.clone());
    assert!(
        cut.as_ref().is_some_and(|cut| cut.reason.contains("CRC")),
        "{cut:?}"
    );
    let (store, counters) = open(&settings);
    let read = read_all(&store, Position::First);
    assert_eq!(read.iter().map(|f| f.0).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(counters.cut_bytes.load(Ordering::Relaxed) > 0);
}

fn limited(limits: CodeLimits) -> CodeLimits {
    CodeLimits {
        segment_bytes: 4096,
        ..limits
    }
}

/// Appends 100 frames of ~1 KiB and waits for retention's pass.
fn fill(
    limits: CodeLimits,
) -> (
    tempfile::TempDir,
    Arc<Store>,
    Vec<Result<Stored, StoreRefused>>,
) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (store, _) = open(&settings(dir.path(), limited(limits)));
    let wires: Vec<Bytes> = (0..100).map(|i| numbered(i + 1, 1000)).collect();
    let acks = append_all(&store, &wires);
    // Retention runs after each batch: one more append, acknowledged, follows it.
    (dir, store, acks)
}

#[test]
fn retention_keeps_each_limit() {
    // max_bytes, discard old: the newest frames within 20 KiB.
    let (_dir, store, acks) = fill(CodeLimits {
        max_bytes: Some(20 * 1024),
        ..CodeLimits::default()
    });
    assert!(acks.iter().all(Result::is_ok));
    let stats = &store.stats()[0];
    assert!(
        stats.bytes <= 20 * 1024 && stats.bytes >= 10 * 1024,
        "{stats:?}"
    );
    assert_eq!(stats.last_seq, 100);
    assert_eq!(read_all(&store, Position::First).len() as u64, stats.frames);

    // max_frames.
    let (_dir, store, _) = fill(CodeLimits {
        max_frames: Some(40),
        ..CodeLimits::default()
    });
    let stats = &store.stats()[0];
    assert!(stats.frames <= 40 && stats.frames >= 30, "{stats:?}");
    assert_eq!(stats.last_seq, 100);

    // discard new: refused once full, nothing deleted.
    let (_dir, store, acks) = fill(CodeLimits {
        max_frames: Some(40),
        discard: Discard::New,
        ..CodeLimits::default()
    });
    assert_eq!(seqs(&acks), (1..=40).collect::<Vec<_>>());
    assert!(acks[40..]
        .iter()
        .all(|ack| matches!(ack, Err(StoreRefused::StoreFull { .. }))));
    assert_eq!(
        acks[40].as_ref().err().map(ToString::to_string),
        Some("store full 5".into())
    );
    assert_eq!(store.stats()[0].first_seq, 1);

    // keep_last beats max_bytes.
    let (_dir, store, _) = fill(CodeLimits {
        max_bytes: Some(2048),
        keep_last: 10,
        ..CodeLimits::default()
    });
    let stats = &store.stats()[0];
    assert!(stats.frames >= 10, "{stats:?}");
    assert!(stats.frames < 100, "{stats:?}");
    assert_eq!(read_all(&store, Position::Last).len(), 1);
}

#[test]
fn retention_by_age_deletes_even_the_active_segment_unless_keep_last() {
    for keep_last in [0, 3] {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (store, counters) = open(&settings(
            dir.path(),
            limited(CodeLimits {
                max_age: Some(Duration::from_millis(300)),
                keep_last,
                ..CodeLimits::default()
            }),
        ));
        let wires: Vec<Bytes> = (0..20).map(|i| numbered(i + 1, 1000)).collect();
        // Every frame stored first (a refusal would leave nothing for retention to delete).
        assert_eq!(seqs(&append_all(&store, &wires)).len(), 20);
        // The idle timer runs retention once a second.
        let deadline = std::time::Instant::now() + WAIT;
        while store.stats()[0].frames > keep_last && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let stats = &store.stats()[0];
        assert_eq!(
            stats.frames,
            if keep_last == 0 {
                0
            } else {
                stats.frames.max(3)
            }
        );
        assert!(stats.frames >= keep_last);
        assert!(counters.segments_deleted.load(Ordering::Relaxed) > 0);
        drop(store);
        // The sequence goes on after everything was deleted.
        let (store, _) = open(&settings(dir.path(), limited(CodeLimits::default())));
        assert_eq!(seqs(&append_all(&store, &wires[..1])), [21]);
    }
}

/// A batch's outcomes reach a sink in one call (the publisher's replies then go out in one
/// write): a run of frames appended at once is acknowledged in fewer calls than frames.
#[test]
fn a_batch_reaches_its_sink_in_one_call() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (store, _) = open(&settings(dir.path(), CodeLimits::default()));
    let (calls, outcomes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (counted_calls, counted) = (calls.clone(), outcomes.clone());
    let ack: AckSink = Arc::new(move |batch: &[Outcome]| {
        counted_calls.fetch_add(1, Ordering::Relaxed);
        counted.fetch_add(batch.len() as u64, Ordering::Relaxed);
    });
    let frames: Vec<Bytes> = (0..100).map(|i| numbered(i, 50)).collect();
    store.append(SessionId::new(1), &Gate::new(), &whole(&frames), Some(ack));
    let waited = std::time::Instant::now();
    while outcomes.load(Ordering::Relaxed) < 100 && waited.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(outcomes.load(Ordering::Relaxed), 100);
    assert_eq!(
        calls.load(Ordering::Relaxed),
        1,
        "one run, one batch, one call"
    );
}

#[test]
fn many_appenders_share_syncs() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (store, counters) = open(&settings(dir.path(), CodeLimits::default()));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let (ack, acks) = sink();
                let gate = Gate::new();
                let frame = numbered(t + 1, 100);
                for _ in 0..500 {
                    store.append(
                        SessionId::new(t as u64),
                        &gate,
                        &whole(std::slice::from_ref(&frame)),
                        Some(ack.clone()),
                    );
                }
                (0..500)
                    .filter(|_| matches!(acks.recv_timeout(WAIT), Ok(Ok(_))))
                    .count()
            })
        })
        .collect();
    let stored: usize = threads.into_iter().map(|t| t.join().unwrap_or(0)).sum();
    assert_eq!(stored, 2000);
    let syncs = counters.syncs.load(Ordering::Relaxed);
    let batches = counters.batches.load(Ordering::Relaxed);
    // One sync per batch (and one for the directory at creation), many frames per batch.
    assert!(syncs <= batches + 1, "syncs {syncs}, batches {batches}");
    assert!(syncs < 2000, "syncs {syncs} for 2000 frames");
    assert_eq!(counters.frames.load(Ordering::Relaxed), 2000);
}

#[test]
fn a_frame_larger_than_a_segment_gets_one_of_its_own() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (store, counters) = open(&settings(dir.path(), limited(CodeLimits::default())));
    let wires = [numbered(1, 100), numbered(2, 20_000), numbered(4, 100)];
    assert_eq!(seqs(&append_all(&store, &wires)), [1, 2, 3]);
    // Counted across the rolls.
    assert_eq!(counters.frames.load(Ordering::Relaxed), 3);
    let frame_bytes: usize = wires.iter().map(Bytes::len).sum();
    assert_eq!(counters.bytes.load(Ordering::Relaxed), frame_bytes as u64);
    let stats = &store.stats()[0];
    assert_eq!(stats.segments, 3, "{stats:?}");
    let read = read_all(&store, Position::First);
    assert_eq!(read[1].1[..], wires[1][..]);
}

#[test]
fn a_frame_over_the_code_limit_is_refused() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (store, counters) = open(&settings(
        dir.path(),
        CodeLimits {
            max_frame_bytes: Some(500),
            ..CodeLimits::default()
        },
    ));
    let acks = append_all(&store, &[numbered(1, 100), numbered(2, 1000)]);
    assert!(acks[0].is_ok());
    assert!(matches!(
        acks[1],
        Err(StoreRefused::FrameTooLarge { max: 500, .. })
    ));
    assert_eq!(counters.refused_too_large.load(Ordering::Relaxed), 1);
}

#[test]
fn a_full_disk_refuses_then_recovers_when_space_returns() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
        .arg(dir.path())
        .status();
    if !mounted.is_ok_and(|status| status.success()) {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(dir.path().to_path_buf());
    let filler = dir.path().join("filler");
    std::fs::write(&filler, vec![0u8; 8 << 20]).unwrap_or_else(|e| panic!("{e}"));
    let store_dir = dir.path().join("store");
    let settings = settings(
        &store_dir,
        CodeLimits {
            segment_bytes: 1 << 20,
            ..CodeLimits::default()
        },
    );
    let (store, counters) = open(&settings);
    let frame = numbered(1, 64 * 1024);
    let mut stored = 0u64;
    let mut full = false;
    for _ in 0..200 {
        match append_all(&store, std::slice::from_ref(&frame)).remove(0) {
            Ok(_) => stored += 1,
            Err(StoreRefused::StoreFull { .. }) => {
                full = true;
                break;
            }
            Err(other) => panic!("{other}"),
        }
    }
    assert!(full, "16 MiB should fill up");
    assert!(counters.refused_full.load(Ordering::Relaxed) >= 1);
    // Still full: refused again, nothing broken.
    assert!(append_all(&store, std::slice::from_ref(&frame))[0].is_err());
    std::fs::remove_file(&filler).unwrap_or_else(|e| panic!("{e}"));
    let after = append_all(&store, std::slice::from_ref(&frame));
    assert_eq!(seqs(&after), [stored + 1], "resumes by itself");
    drop(store);
    let report = inspect::check(&store_dir).unwrap_or_default();
    assert!(report.iter().all(|c| c.cut.is_none()), "{report:?}");
    let (store, counters) = open(&settings);
    assert_eq!(counters.cut_bytes.load(Ordering::Relaxed), 0);
    assert_eq!(read_all(&store, Position::First).len() as u64, stored + 1);
}

#[test]
fn offsets_past_4_gib_work() {
    use crate::hub::store::index::{encode_all, IndexEntry};
    use crate::hub::store::record::RecordHeader;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let code_dir = dir.path().join("code-5");
    std::fs::create_dir_all(&code_dir).unwrap_or_else(|e| panic!("{e}"));
    // Frame 1: 8 GiB of zeros, a hole in a sparse file; its CRC by doubling with combine.
    let mut crc = crc32c::crc32c(&[0u8; 1 << 20]);
    let mut len: u64 = 1 << 20;
    while len < 1 << 33 {
        crc = crc32c::crc32c_combine(crc, crc, len as usize);
        len *= 2;
    }
    let header = RecordHeader {
        seq: 1,
        timestamp: 1,
        len,
        frame_crc: crc,
    };
    let path = code_dir.join(format!("{:020}.log", 1));
    let file = std::fs::File::create(&path).unwrap_or_else(|e| panic!("{e}"));
    use std::os::unix::fs::FileExt;
    file.write_all_at(&header.encode(), 0)
        .unwrap_or_else(|e| panic!("{e}"));
    let end = HEADER_LEN as u64 + len;
    if file.set_len(end).is_err() {
        eprintln!("skipped: no sparse files here");
        return;
    }
    drop(file);
    // An index entry at frame 2 spares recovery reading frame 1's 8 GiB.
    std::fs::write(
        code_dir.join(format!("{:020}.idx", 1)),
        encode_all(&[
            IndexEntry {
                seq: 1,
                offset: 0,
                timestamp: 1,
            },
            IndexEntry {
                seq: 2,
                offset: end,
                timestamp: 2,
            },
        ]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let settings = settings(
        dir.path(),
        CodeLimits {
            segment_bytes: u64::MAX,
            ..CodeLimits::default()
        },
    );
    let small = numbered(2, 10);
    let mut record = RecordHeader {
        seq: 2,
        timestamp: 2,
        len: small.len() as u64,
        frame_crc: crc32c::crc32c(&small),
    }
    .encode()
    .to_vec();
    record.extend_from_slice(&small);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("{e}"));
    file.write_all_at(&record, end)
        .unwrap_or_else(|e| panic!("{e}"));
    drop(file);
    let (store, counters) = open(&settings);
    assert_eq!(counters.cut_bytes.load(Ordering::Relaxed), 0);
    assert_eq!(seqs(&append_all(&store, &[numbered(3, 10)])), [3]);
    let mut reader = store
        .reader(code(5), Position::Seq(2))
        .unwrap_or_else(|e| panic!("{e}"));
    let second = reader.next_frame().ok().flatten();
    assert_eq!(
        second.as_ref().map(|f| (f.seq, f.offset)),
        Some((2, end + HEADER_LEN as u64))
    );
    let third = reader.next_frame().ok().flatten();
    assert!(third
        .as_ref()
        .is_some_and(|f| f.offset > 1 << 32 && f.verify().unwrap_or(false)));
    let first = store
        .reader(code(5), Position::First)
        .ok()
        .and_then(|mut r| r.next_frame().ok().flatten());
    assert_eq!(first.map(|f| f.len), Some(len));
}

#[test]
fn recovery_cuts_a_record_torn_at_any_byte() {
    let wires: Vec<Bytes> = (0..3).map(|i| numbered(i + 1, 40)).collect();
    let mut log = Vec::new();
    for (i, frame) in wires.iter().enumerate() {
        let header = crate::hub::store::record::RecordHeader {
            seq: i as u64 + 1,
            timestamp: 7,
            len: frame.len() as u64,
            frame_crc: crc32c::crc32c(frame),
        };
        log.extend_from_slice(&header.encode());
        log.extend_from_slice(frame);
    }
    let last = HEADER_LEN + wires[2].len();
    let (whole, cut) = inspect::recover_bytes(&log);
    assert_eq!((whole.len(), cut), (3, None));
    for kept in 0..last {
        let torn = &log[..log.len() - last + kept];
        let (frames, cut) = inspect::recover_bytes(torn);
        assert_eq!(frames.len(), 2, "kept {kept}");
        assert_eq!(cut.map_or(0, |cut| cut.len), kept as u64);
    }
}

#[test]
fn watchers_see_new_frames_and_readers_start_at_a_time() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (store, _) = open(&settings(dir.path(), CodeLimits::default()));
    let Some(mut watch) = store.watch(code(5)) else {
        panic!("code 5 is durable");
    };
    assert!(store.watch(code(6)).is_none());
    assert_eq!(*watch.borrow_and_update(), 0);
    append_all(&store, &[numbered(1, 10), numbered(2, 10)]);
    assert!(watch.has_changed().unwrap_or(false));
    assert_eq!(*watch.borrow_and_update(), 2);
    let between = std::time::SystemTime::now();
    std::thread::sleep(Duration::from_millis(5));
    append_all(&store, &[numbered(3, 10)]);
    let read = read_all(&store, Position::Time(between));
    assert_eq!(read.iter().map(|f| f.0).collect::<Vec<_>>(), [3]);
    // A reader that caught up sees later frames on its next call.
    let mut reader = store
        .reader(code(5), Position::Next)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(reader.next_frame().ok().flatten().is_none());
    append_all(&store, &[numbered(4, 10)]);
    assert_eq!(reader.next_frame().ok().flatten().map(|f| f.seq), Some(4));
}

/// Leaves a small store in `TEJ_STORE_SAMPLE_DIR`, for trying `tej-hub store` by hand.
#[test]
#[ignore = "writes a sample store where TEJ_STORE_SAMPLE_DIR says"]
fn sample_store() {
    let Some(dir) = std::env::var_os("TEJ_STORE_SAMPLE_DIR") else {
        return;
    };
    let (store, _) = open(&settings(
        std::path::Path::new(&dir),
        limited(CodeLimits::default()),
    ));
    let wires: Vec<Bytes> = (0..30).map(|i| numbered(i + 1, 500)).collect();
    append_all(&store, &wires);
}

#[test]
fn an_index_pointing_at_no_record_is_ignored() {
    use crate::hub::store::index::{encode_all, IndexEntry};
    let (dir, settings, _) = stored(5, 100);
    // A well-formed entry claiming frame 3 starts 10 bytes into frame 1.
    let lie = [
        IndexEntry {
            seq: 1,
            offset: 0,
            timestamp: 1,
        },
        IndexEntry {
            seq: 3,
            offset: 10,
            timestamp: 2,
        },
    ];
    let idx = last_segment(dir.path()).with_extension("idx");
    std::fs::write(&idx, encode_all(&lie)).unwrap_or_else(|e| panic!("{e}"));
    let (store, counters) = open(&settings);
    assert_eq!(counters.cut_bytes.load(Ordering::Relaxed), 0);
    assert_eq!(read_all(&store, Position::First).len(), 5);
}

#[test]
fn a_second_store_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let settings = settings(dir.path(), CodeLimits::default());
    let (first, _) = open(&settings);
    let second = Store::open(settings.clone(), Arc::new(StoreCounters::default()));
    assert!(matches!(
        second,
        Err(crate::hub::store::StoreError::Locked { .. })
    ));
    drop(first);
    assert!(Store::open(settings, Arc::new(StoreCounters::default())).is_ok());
}
