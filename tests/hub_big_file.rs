//! A large file through the `tej-hub` binary with its default settings: one frame carrying a
//! 256 MiB file, relayed from one publisher to two subscribers that read their sockets as a
//! stream and hash the file (SHA-256) as it arrives, never holding the frame; the hub's peak
//! resident memory must stay far below the file size. And `tej-hub bench big-file` end to end,
//! with a stuck and with a slow extra subscriber.
//!
//! Both need a hub that relays a frame larger than its memory bound by cut-through: with a hub
//! that holds whole frames (and refuses frames over 64 MiB by default) they fail.

#[path = "common/bench.rs"]
mod bench_common;
#[path = "common/hub.rs"]
mod hub_common;

use std::io;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use bench_common::bench_json;
use hub_common::{connect_raw, control_frame, encode, pattern, within, BinHub, MIB};

/// The size of the relayed file.
const FILE_SIZE: u64 = 256 * MIB as u64;
/// The hub's peak resident set (VmHWM) must stay under this, far below [`FILE_SIZE`].
const HUB_RSS_BOUND_KIB: u64 = 96 * 1024;
/// The status code the file is published on.
const CODE: u8 = 5;
/// How long the whole relay may take (debug builds of the hub and of SHA-256 are slow).
const TRANSFER_PATIENCE: Duration = Duration::from_secs(300);
/// Flags for the hub: none, its defaults are what is tested.
const HUB_FLAGS: &[&str] = &[];
/// Most message bytes a test subscriber accepts.
const MAX_MESSAGE: u64 = 1024 * 1024;

/// A frame as a streaming subscriber saw it: the files' data only as length and hash.
#[derive(Debug, PartialEq, Eq)]
struct Streamed {
    /// The status code (without the MSB).
    status: u8,
    /// The version byte.
    version: u8,
    /// Name, length and SHA-256 of each file.
    files: Vec<(String, u64, [u8; 32])>,
    /// The message.
    message: Vec<u8>,
}

/// Reads one frame from `stream` field by field, hashing file data through `buf` (large reads)
/// as it arrives: nothing but the header fields and the (bounded) message is kept.
async fn read_streaming(stream: &mut TcpStream, buf: &mut [u8]) -> Streamed {
    let mut head = [0u8; 10];
    stream.read_exact(&mut head).await.expect("a frame head");
    assert_ne!(head[0] & 0x80, 0, "status byte {:#04x}", head[0]);
    let count = u64::from_be_bytes(head[2..10].try_into().expect("8 bytes"));
    assert!(count <= 4, "the frame announces {count} files");
    let mut files = Vec::new();
    for _ in 0..count {
        let mut name_len = [0u8; 2];
        stream
            .read_exact(&mut name_len)
            .await
            .expect("a name length");
        let mut name = vec![0u8; usize::from(u16::from_be_bytes(name_len))];
        stream.read_exact(&mut name).await.expect("a name");
        let mut len = [0u8; 8];
        stream.read_exact(&mut len).await.expect("a data length");
        let len = u64::from_be_bytes(len);
        let mut hasher = Sha256::new();
        let mut left = len;
        while left > 0 {
            let want = usize::try_from(left).map_or(buf.len(), |left| left.min(buf.len()));
            let n = stream.read(&mut buf[..want]).await.expect("file data");
            assert!(
                n > 0,
                "the hub closed the connection {left} bytes before the file's end"
            );
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
        let name = String::from_utf8(name).expect("a UTF-8 name");
        files.push((name, len, hasher.finalize().into()));
    }
    let mut len = [0u8; 8];
    stream.read_exact(&mut len).await.expect("a message length");
    let len = u64::from_be_bytes(len);
    assert!(len <= MAX_MESSAGE, "a message of {len} bytes");
    let mut message = vec![0u8; usize::try_from(len).expect("a small message")];
    stream.read_exact(&mut message).await.expect("the message");
    Streamed {
        status: head[0] & 0x7f,
        version: head[1],
        files,
        message,
    }
}

/// A subscriber to [`CODE`] whose `SUB` the hub has confirmed.
async fn subscriber(hub: &BinHub, buf: &mut [u8]) -> TcpStream {
    let mut stream = connect_raw(hub.addr).await;
    let sub = encode(&control_frame(&format!("SUB {CODE}")));
    stream.write_all(&sub).await.expect("send SUB");
    let reply = within(
        Duration::from_secs(10),
        "the reply to SUB",
        read_streaming(&mut stream, buf),
    )
    .await;
    assert_eq!(reply.status, 127, "{reply:?}");
    assert_eq!(
        reply.message,
        format!("OK SUB {CODE}").as_bytes(),
        "{reply:?}"
    );
    stream
}

/// Publishes one frame on [`CODE`] carrying [`FILE_SIZE`] bytes named `name`, generated 1 MiB at
/// a time (a pseudo-random block whose first 8 bytes count the blocks); returns the SHA-256 of
/// the data. The connection is left open: closing it is not part of the test.
async fn publish(stream: &mut TcpStream, name: &str, message: &[u8]) -> io::Result<[u8; 32]> {
    let mut head = vec![0x80 | CODE, 1];
    head.extend_from_slice(&1u64.to_be_bytes());
    head.extend_from_slice(&u16::try_from(name.len()).expect("short").to_be_bytes());
    head.extend_from_slice(name.as_bytes());
    head.extend_from_slice(&FILE_SIZE.to_be_bytes());
    stream.write_all(&head).await?;
    let mut block = pattern(MIB, 7).to_vec();
    let mut hasher = Sha256::new();
    for number in 0..FILE_SIZE / MIB as u64 {
        block[..8].copy_from_slice(&number.to_le_bytes());
        hasher.update(&block);
        stream.write_all(&block).await?;
    }
    stream
        .write_all(&(message.len() as u64).to_be_bytes())
        .await?;
    stream.write_all(message).await?;
    Ok(hasher.finalize().into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_a_256_mib_file_to_two_streaming_subscribers_in_bounded_memory() {
    let hub = BinHub::start(HUB_FLAGS);
    let mut subscribers = Vec::new();
    for _ in 0..2 {
        let mut buf = vec![0u8; MIB];
        let stream = subscriber(&hub, &mut buf).await;
        subscribers.push(tokio::spawn(async move {
            let mut stream = stream;
            read_streaming(&mut stream, &mut buf).await
        }));
    }
    let mut publisher = connect_raw(hub.addr).await;
    let sent = within(
        TRANSFER_PATIENCE,
        "the publisher to write the frame",
        publish(&mut publisher, "big.bin", b"256 MiB"),
    )
    .await
    .unwrap_or_else(|error| {
        // The hub logs why it stopped reading (e.g. a frame over its limit).
        let logs = hub.logs();
        let last = &logs[logs.len().saturating_sub(3)..];
        panic!("publishing failed: {error}; the hub's last log lines: {last:#?}")
    });
    for (index, subscriber) in subscribers.into_iter().enumerate() {
        let got = within(
            TRANSFER_PATIENCE,
            "a subscriber to read the frame",
            subscriber,
        )
        .await
        .expect("the subscriber task");
        let expected = Streamed {
            status: CODE,
            version: 1,
            files: vec![("big.bin".to_owned(), FILE_SIZE, sent)],
            message: b"256 MiB".to_vec(),
        };
        assert_eq!(got, expected, "subscriber {}", index + 1);
    }
    let peak = hub.peak_rss_kib();
    assert!(
        peak < HUB_RSS_BOUND_KIB,
        "the hub's peak RSS was {} MiB relaying a {} MiB file (bound {} MiB)",
        peak / 1024,
        FILE_SIZE / MIB as u64,
        HUB_RSS_BOUND_KIB / 1024
    );
    drop(publisher);
}

/// Runs `tej-hub bench big-file <args> --json --timeout 240` against a spawned hub with
/// [`HUB_FLAGS`]; it must succeed and print one JSON object, which is returned.
fn bench_big_file(args: &[&str]) -> serde_json::Value {
    let serve_args: Vec<String> = HUB_FLAGS
        .iter()
        .map(|flag| format!("--serve-arg={flag}"))
        .collect();
    let all: Vec<&str> = ["big-file"]
        .into_iter()
        .chain(args.iter().copied())
        .chain(serve_args.iter().map(String::as_str))
        .collect();
    bench_json(&all, 240, Duration::from_secs(300))
}

/// Checks that every regular subscriber of `report` received the file intact.
fn assert_regular_subscribers_intact(report: &serde_json::Value, count: usize) {
    assert_eq!(report["hashes_match"], true, "{report}");
    let subscribers = report["per_subscriber"].as_array().expect("an array");
    assert_eq!(subscribers.len(), count, "{report}");
    for subscriber in subscribers {
        assert_eq!(subscriber["hash_ok"], true, "{report}");
        assert!(subscriber["mb_per_s"].as_f64() > Some(0.0), "{report}");
    }
}

#[test]
fn bench_big_file_prints_json_with_every_figure() {
    let report = bench_big_file(&["--size", "64MiB", "--subscribers", "2"]);
    for key in [
        "bench",
        "size_bytes",
        "subscribers",
        "io_bytes",
        "hub",
        "publisher",
        "per_subscriber",
        "ttfb_ms",
        "relay_seconds",
        "relay_mb_per_s",
        "relay_mb_per_s_aggregate",
        "raw_loopback_bytes",
        "raw_loopback_mb_per_s",
        "ratio",
        "ratio_aggregate",
        "hub_peak_rss_mib",
        "hub_rss_max_sampled_mib",
        "hash",
        "hashes_match",
        "slow_subscriber",
        "stuck_subscriber",
        "hub_counters",
        "compare",
    ] {
        assert!(report.get(key).is_some(), "no {key:?} in {report}");
    }
    assert_eq!(report["bench"], "big-file");
    assert_eq!(report["size_bytes"], 64 * MIB as u64);
    assert_eq!(report["subscribers"], 2);
    assert_eq!(report["hub"]["spawned"], true);
    assert_regular_subscribers_intact(&report, 2);
    for key in ["slow_subscriber", "stuck_subscriber", "compare"] {
        assert_eq!(report[key], serde_json::Value::Null, "{key} in {report}");
    }
    assert_eq!(report["ttfb_ms"].as_array().map(Vec::len), Some(2));
    for key in ["relay_mb_per_s", "raw_loopback_mb_per_s", "ratio"] {
        assert!(report[key].as_f64() > Some(0.0), "{key} in {report}");
    }
    assert!(report["hub_peak_rss_mib"].as_f64() > Some(0.0), "{report}");
}

/// Under `drop`, a subscriber that reads nothing while a 64 MiB frame streams past overflows its
/// queue in the middle of the frame: the hub disconnects it (no reason can follow part of a
/// frame) and counts it as a slow consumer, while the regular subscriber gets the whole file.
/// `--compare` relays once without it first.
#[test]
fn bench_big_file_reports_what_became_of_a_stuck_subscriber() {
    let report = bench_big_file(&[
        "--size",
        "64MiB",
        "--subscribers",
        "1",
        "--stuck",
        "drop",
        "--compare",
    ]);
    assert_regular_subscribers_intact(&report, 1);
    let stuck = &report["stuck_subscriber"];
    assert_eq!(stuck["policy"], "drop", "{report}");
    assert_eq!(stuck["outcome"], "closed", "{report}");
    assert_eq!(stuck["mid_frame"], true, "{report}");
    assert_eq!(stuck["frames_read"], 0, "{report}");
    assert!(
        stuck["file_bytes_read"].as_u64() < Some(64 * MIB as u64),
        "{report}"
    );
    assert_eq!(report["hub_counters"]["slow_consumers"], 1, "{report}");
    assert_eq!(report["slow_subscriber"], serde_json::Value::Null);
    let compare = &report["compare"];
    for key in ["baseline_relay_mb_per_s", "relay_mb_per_s_ratio"] {
        assert!(compare[key].as_f64() > Some(0.0), "{key} in {report}");
    }
}

/// A subscriber reading at 40 MB/s under `block` gets every byte, no faster than its pace.
#[test]
fn bench_big_file_paces_a_slow_subscriber() {
    let report = bench_big_file(&["--size", "32MiB", "--subscribers", "1", "--slow-rate", "40"]);
    assert_regular_subscribers_intact(&report, 1);
    let slow = &report["slow_subscriber"];
    assert_eq!(slow["hash_ok"], true, "{report}");
    assert_eq!(slow["rate_mb_per_s"], 40.0, "{report}");
    let rate = slow["mb_per_s"].as_f64().expect("a rate");
    assert!(rate > 0.0 && rate <= 40.1, "{report}");
    assert_eq!(report["hub_counters"]["slow_consumers"], 0, "{report}");
    assert_eq!(report["stuck_subscriber"], serde_json::Value::Null);
}
