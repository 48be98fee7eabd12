//! Measurements of the store on this machine's disk, run by `scripts/store-bench` (ignored
//! tests: `cargo test --release --lib store::measure -- --ignored --nocapture`). They print
//! numbers; nothing is asserted on time.
//!
//! - append: `always` sync, 128 B frames from 1 and 4 appending threads (each with at most
//!   [`WINDOW`] frames awaiting their acknowledgement, as a publisher with `PUBACK` would), and
//!   1 MiB frames streamed in relay-sized pieces, with and without `fallocate`;
//! - recovery: a store of `TEJ_STORE_RECOVERY_GIB` GiB (default 10) of 1 MiB frames, its last
//!   record torn, opened (recovered) and timed;
//! - replay: one frame of `TEJ_STORE_REPLAY_GIB` GiB (default 1) sent to a local socket read
//!   and dropped by another thread, in chunks (read, CRC, write: the TLS path) and with
//!   `sendfile` after a CRC pass (the plain TCP path), interleaved, the sender's CPU per GB.
//!
//! The store goes in `TEJ_STORE_BENCH_DIR` (default `./target/store-bench`), on the disk being
//! measured; it is deleted afterwards.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::frame::{Frame, Status};
use crate::hub::control::CodeSet;
use crate::hub::delivery::flow::Gate;
use crate::hub::delivery::relay::{Piece, PieceKind, CHUNK};
use crate::hub::session::SessionId;
use crate::hub::store::{
    AckSink, CodeLimits, DurableCodes, Outcome, Position, Store, StoreCounters, StoreSettings,
    SyncPolicy,
};

/// Frames a measuring publisher may have awaiting acknowledgement.
const WINDOW: u64 = 1024;
/// How long each append measurement runs.
const RUN: Duration = Duration::from_secs(5);

fn bench_dir(name: &str) -> PathBuf {
    let root = std::env::var_os("TEJ_STORE_BENCH_DIR")
        .map_or_else(|| PathBuf::from("target/store-bench"), PathBuf::from);
    let dir = root.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn settings(dir: PathBuf, sync: SyncPolicy, preallocate: bool) -> StoreSettings {
    StoreSettings {
        sync,
        preallocate,
        durable: vec![DurableCodes {
            codes: CodeSet::from_bits(1 << 5),
            limits: CodeLimits::default(),
        }],
        ..StoreSettings::new(dir)
    }
}

fn open(settings: &StoreSettings) -> (Arc<Store>, Arc<StoreCounters>) {
    let counters = Arc::new(StoreCounters::default());
    let store = Store::open(settings.clone(), counters.clone()).unwrap_or_else(|e| panic!("{e}"));
    (store, counters)
}

/// The pieces the relay would make of `frame`: whole up to the cut-through size (1 MiB),
/// else a first piece and chunks.
fn pieces(frame: &Bytes) -> Vec<Piece> {
    let status = Status::new(5).unwrap_or(Status::PING);
    if frame.len() <= 1024 * 1024 {
        return vec![Piece {
            status,
            kind: PieceKind::Whole,
            frames: 1,
            bytes: frame.clone(),
        }];
    }
    let mut out = Vec::new();
    let mut at = 0;
    while at < frame.len() {
        let end = (at + CHUNK).min(frame.len());
        let kind = match (at == 0, end == frame.len()) {
            (true, _) => PieceKind::First,
            (false, true) => PieceKind::Last,
            (false, false) => PieceKind::Middle,
        };
        out.push(Piece {
            status,
            kind,
            frames: u32::from(kind == PieceKind::Last),
            bytes: frame.slice(at..end),
        });
        at = end;
    }
    out
}

/// Appends `frame` from `threads` publishers for [`RUN`]; returns frames acknowledged per
/// second and syncs per second.
fn append_rate(
    store: &Arc<Store>,
    counters: &StoreCounters,
    frame: &Bytes,
    threads: u64,
) -> (f64, f64) {
    let acked = Arc::new(AtomicU64::new(0));
    let syncs_before = counters.syncs.load(Ordering::Relaxed);
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let store = store.clone();
            let frame = frame.clone();
            std::thread::spawn(move || {
                let mine = Arc::new(AtomicU64::new(0));
                let counted = mine.clone();
                let ack: AckSink = Arc::new(move |outcomes: &[Outcome]| {
                    let stored = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
                    counted.fetch_add(stored as u64, Ordering::Relaxed);
                });
                let gate = Gate::new();
                let pieces = pieces(&frame);
                let mut sent = 0u64;
                while started.elapsed() < RUN {
                    while sent - mine.load(Ordering::Relaxed) >= WINDOW || gate.is_closed() {
                        std::thread::sleep(Duration::from_micros(50));
                    }
                    for piece in &pieces {
                        store.append(SessionId::new(t), &gate, piece, Some(ack.clone()));
                    }
                    sent += 1;
                }
                while mine.load(Ordering::Relaxed) < sent {
                    std::thread::sleep(Duration::from_millis(1));
                }
                mine.load(Ordering::Relaxed)
            })
        })
        .collect();
    for worker in workers {
        acked.fetch_add(worker.join().unwrap_or(0), Ordering::Relaxed);
    }
    let seconds = started.elapsed().as_secs_f64();
    let syncs = counters.syncs.load(Ordering::Relaxed) - syncs_before;
    (
        acked.load(Ordering::Relaxed) as f64 / seconds,
        syncs as f64 / seconds,
    )
}

fn frame_of(len: usize) -> Bytes {
    let status = Status::new(5).unwrap_or(Status::PING);
    // A message-only frame of `len` bytes in all (18 bytes of header).
    Frame::message(status, vec![0x5a; len.saturating_sub(18)])
        .to_wire()
        .unwrap_or_default()
}

#[test]
#[ignore = "a measurement: scripts/store-bench"]
fn measure_append() {
    for preallocate in [false, true] {
        let dir = bench_dir("append");
        let (store, counters) = open(&settings(dir.clone(), SyncPolicy::Always, preallocate));
        let small = frame_of(128);
        for threads in [1, 4] {
            let (rate, syncs) = append_rate(&store, &counters, &small, threads);
            println!(
                "\nstore-bench: always preallocate={preallocate} 128 B x {threads} threads: {rate:.0} frames/s, {syncs:.0} syncs/s, {:.0} frames/sync",
                rate / syncs.max(1.0)
            );
        }
        let large = frame_of(1024 * 1024 + 64);
        let (rate, syncs) = append_rate(&store, &counters, &large, 1);
        println!(
            "\nstore-bench: always preallocate={preallocate} 1 MiB x 1 thread: {rate:.1} frames/s, {:.0} MB/s, {syncs:.0} syncs/s",
            rate * large.len() as f64 / 1e6
        );
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
#[ignore = "a measurement: scripts/store-bench"]
fn measure_recovery() {
    let gib: u64 = std::env::var("TEJ_STORE_RECOVERY_GIB")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(10);
    let dir = bench_dir("recovery");
    let settings = settings(dir.clone(), SyncPolicy::Os, false);
    let built = Instant::now();
    {
        let (store, counters) = open(&settings);
        let frame = frame_of(1024 * 1024);
        let frames = gib * 1024;
        let acked = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let (counted, counted_refused) = (acked.clone(), refused.clone());
        let ack: AckSink = Arc::new(move |outcomes: &[Outcome]| {
            let failed = outcomes.iter().filter(|outcome| outcome.is_err()).count();
            counted_refused.fetch_add(failed as u64, Ordering::Relaxed);
            counted.fetch_add(outcomes.len() as u64, Ordering::Relaxed);
        });
        let gate = Gate::new();
        for _ in 0..frames {
            while gate.is_closed() {
                std::thread::sleep(Duration::from_micros(200));
            }
            for piece in pieces(&frame) {
                store.append(SessionId::new(1), &gate, &piece, Some(ack.clone()));
            }
        }
        while acked.load(Ordering::Relaxed) < frames {
            std::thread::sleep(Duration::from_millis(10));
        }
        println!(
            "\nstore-bench: built {gib} GiB ({} frames stored, {} refused, {} bytes) in {:.1} s",
            counters.frames.load(Ordering::Relaxed),
            refused.load(Ordering::Relaxed),
            counters.bytes.load(Ordering::Relaxed),
            built.elapsed().as_secs_f64()
        );
    }
    // A crash in the middle of the last record.
    let code_dir = dir.join("code-5");
    let mut logs: Vec<PathBuf> = std::fs::read_dir(&code_dir)
        .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    logs.retain(|path| path.extension().is_some_and(|ext| ext == "log"));
    logs.sort();
    if let Some(last) = logs.last() {
        let len = std::fs::metadata(last).map_or(0, |m| m.len());
        if let Ok(file) = std::fs::OpenOptions::new().write(true).open(last) {
            let _ = file.set_len(len.saturating_sub(1000));
        }
    }
    let _ = std::process::Command::new("sync").status();
    let cold = std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok();
    for round in ["first", "second"] {
        let started = Instant::now();
        let (store, counters) = open(&settings);
        let opened = started.elapsed();
        let stats = store.stats();
        println!(
            "store-bench: recovery ({round} open{}) of {gib} GiB, {} segments, {} frames: {:.3} s, cut {} bytes",
            if round == "first" && cold { ", page cache dropped" } else { ", warm" },
            stats[0].segments,
            stats[0].frames,
            opened.as_secs_f64(),
            counters.cut_bytes.load(Ordering::Relaxed)
        );
        let last = store
            .reader(Status::new(5).unwrap_or(Status::PING), Position::Last)
            .ok()
            .and_then(|mut reader| reader.next_frame().ok().flatten());
        println!(
            "store-bench: last frame after recovery: {:?}",
            last.map(|f| f.seq)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// CPU seconds the calling thread has used.
fn thread_cpu() -> f64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
}

/// How a frame is replayed to a socket.
#[derive(Clone, Copy, Debug)]
enum Replay {
    /// As a feed does on TLS (and did before zero-copy): read a chunk, check it, write it.
    Chunked,
    /// As a feed does on plain TCP: check the whole frame once, then `sendfile` in ranges.
    Sendfile,
    /// `sendfile` alone, no check: what the check costs.
    SendfileUnchecked,
}

/// Sends `frame` to a local socket whose reader drops what it gets; the sender's wall time and
/// CPU seconds.
fn replay_once(frame: &crate::hub::store::StoredFrame, how: Replay) -> (f64, f64) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let drain = std::thread::spawn(move || {
        let (mut peer, _) = listener.accept().unwrap_or_else(|e| panic!("{e}"));
        let mut buf = vec![0u8; CHUNK];
        let mut got = 0u64;
        while let Ok(n) = peer.read(&mut buf) {
            if n == 0 {
                break;
            }
            got += n as u64;
        }
        got
    });
    let mut socket = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("{e}"));
    let (started, cpu) = (Instant::now(), thread_cpu());
    match how {
        Replay::Chunked => {
            let mut chunk = vec![0u8; CHUNK];
            let (mut at, mut crc) = (0u64, 0u32);
            while at < frame.len {
                let n = frame.read_at(at, &mut chunk).unwrap_or(0);
                assert!(n > 0, "short read at {at}");
                crc = crc32c::crc32c_append(crc, &chunk[..n]);
                socket
                    .write_all(&chunk[..n])
                    .unwrap_or_else(|e| panic!("{e}"));
                at += n as u64;
            }
            assert_eq!(crc, frame.crc);
        }
        Replay::Sendfile | Replay::SendfileUnchecked => {
            if matches!(how, Replay::Sendfile) {
                assert!(frame.verify().unwrap_or(false));
            }
            let mut at = frame.offset;
            let end = frame.offset + frame.len;
            while at < end {
                let count = usize::try_from((end - at).min(4 * CHUNK as u64)).unwrap_or(CHUNK);
                let sent = rustix::fs::sendfile(&socket, &*frame.file, Some(&mut at), count)
                    .unwrap_or_else(|e| panic!("{e}"));
                assert!(sent > 0, "sendfile sent nothing at {at}");
            }
        }
    }
    let (wall, used) = (started.elapsed().as_secs_f64(), thread_cpu() - cpu);
    drop(socket);
    let got = drain.join().unwrap_or(0);
    assert_eq!(got, frame.len);
    (wall, used)
}

/// The replay of one large stored frame to a socket, chunked against zero-copy, three runs
/// each, interleaved: what `sendfile` saves the hub per GB (the sender's CPU; the page cache is
/// warm after the first run, as it is for late subscribers of a recent frame).
#[test]
#[ignore = "a measurement: scripts/store-bench"]
fn measure_replay() {
    let gib: u64 = std::env::var("TEJ_STORE_REPLAY_GIB")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(1);
    let dir = bench_dir("replay");
    let (store, counters) = open(&settings(dir.clone(), SyncPolicy::Os, false));
    let len = usize::try_from(gib * 1024 * 1024 * 1024).unwrap_or(usize::MAX);
    let (ack, stored) = {
        let done = Arc::new(AtomicU64::new(0));
        let counted = done.clone();
        let ack: AckSink = Arc::new(move |outcomes: &[Outcome]| {
            counted.fetch_add(outcomes.len() as u64, Ordering::Relaxed);
        });
        (ack, done)
    };
    let gate = Gate::new();
    for piece in pieces(&frame_of(len)) {
        while gate.is_closed() {
            std::thread::sleep(Duration::from_micros(200));
        }
        store.append(SessionId::new(1), &gate, &piece, Some(ack.clone()));
    }
    while stored.load(Ordering::Relaxed) == 0 {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        counters.frames.load(Ordering::Relaxed),
        1,
        "the frame stored"
    );
    let frame = store
        .reader(Status::new(5).unwrap_or(Status::PING), Position::First)
        .ok()
        .and_then(|mut reader| reader.next_frame().ok().flatten())
        .unwrap_or_else(|| panic!("no stored frame"));
    let gb = frame.len as f64 / 1e9;
    for run in 1..=3 {
        for how in [Replay::Chunked, Replay::Sendfile, Replay::SendfileUnchecked] {
            let (wall, cpu) = replay_once(&frame, how);
            println!(
                "store-bench: replay {gib} GiB {how:?} run {run}: {:.0} MB/s, sender CPU {:.3} s = {:.3} s/GB",
                gb * 1e3 / wall,
                cpu,
                cpu / gb
            );
        }
    }
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}
