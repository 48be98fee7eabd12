//! Several `tej-hub serve --cluster` processes joined through a real `nats-server`, over loopback:
//! they behave as one hub. Every frame reaches every subscriber on every hub byte for byte,
//! exactly once and in each publisher's order, with no echo across hubs; a `SUB` answered on one
//! hub gets the next publication from another (also across a two-node NATS cluster); a 256 MiB
//! frame crosses intact in bounded memory on both hubs; a code with subscribers on one hub only
//! never crosses NATS. Faults: NATS killed and restarted (local relay goes on, loss is counted,
//! the hubs reconnect and relay again); a hub killed in the middle of a streamed frame closes that
//! frame's receivers on the other hubs and nobody else.
//!
//! `INFO`'s `cluster` object (`hub`, `connected`, `remote_hubs`, `dropped_frames`,
//! `lost_messages`, `messages_out`, ...) is how the tests learn the hubs see each other: they
//! poll it rather than assume it happens at once. Without `nats-server` installed the tests print
//! `SKIPPED` (they fail under `CI`).

#[path = "common/hub.rs"]
mod hub_common;
#[path = "common/nats.rs"]
mod nats;
#[path = "common/pki.rs"]
mod pki;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rustix::process::Signal;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tej_hub::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use hub_common::{
    connect, connect_raw, control, control_frame, encode, expect_silence, head, info, pattern,
    read_at_least, recv, send, status, subscribe, within, BinHub, Conn, MIB, PATIENCE,
};
use nats::NatsServer;

/// How long the hubs may take to see each other (and to notice NATS going or coming back).
const CLUSTER_PATIENCE: Duration = Duration::from_secs(10);
/// How soon the hubs must be back together after NATS restarts (their backoff is at most 2 s).
const RECONNECT_PATIENCE: Duration = Duration::from_secs(5);
/// A hub's peak resident set (VmHWM) bound while a 256 MiB frame crosses.
const HUB_RSS_BOUND_KIB: u64 = 128 * 1024;

/// A `tej-hub serve --cluster` process; prints its last log lines if the test fails.
struct Hub {
    name: String,
    bin: BinHub,
}

impl Hub {
    /// `tej-hub serve --cluster URL --hub-name NAME <extra>`.
    fn start(url: &str, name: &str, extra: &[&str]) -> Hub {
        let mut flags = vec!["--cluster", url, "--hub-name", name];
        flags.extend_from_slice(extra);
        Hub {
            name: name.to_owned(),
            bin: BinHub::start(&flags),
        }
    }

    /// Hubs named `names` on `nats`, once each sees all the others.
    async fn joined<const N: usize>(nats: &NatsServer, names: [&str; N]) -> [Hub; N] {
        let hubs = names.map(|name| Hub::start(&nats.url(), name, &[]));
        for hub in &hubs {
            hub.wait_remote_hubs(N as u64 - 1).await;
        }
        hubs
    }

    fn addr(&self) -> SocketAddr {
        self.bin.addr
    }

    /// `INFO` on a fresh connection (so that no relayed frame gets in the way of the reply).
    async fn info(&self) -> Value {
        let mut conn = connect(self.addr()).await;
        info(&mut conn).await
    }

    /// `INFO`'s `cluster` object.
    async fn cluster(&self) -> Value {
        self.info().await["cluster"].clone()
    }

    /// Polls `INFO` until `pred` holds for its `cluster` object, within [`CLUSTER_PATIENCE`];
    /// returns that object.
    async fn wait_cluster(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + CLUSTER_PATIENCE;
        loop {
            let cluster = self.cluster().await;
            if pred(&cluster) {
                return cluster;
            }
            assert!(
                Instant::now() < deadline,
                "hub {}: not {what} after {CLUSTER_PATIENCE:?}; cluster: {cluster}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the hub is connected to NATS and sees `remote` other hubs.
    async fn wait_remote_hubs(&self, remote: u64) -> Value {
        self.wait_cluster(&format!("connected with {remote} remote hubs"), |c| {
            c["connected"] == true && c["remote_hubs"] == remote
        })
        .await
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = self.bin.logs();
            let tail = &logs[logs.len().saturating_sub(40)..];
            eprintln!("--- hub {} ({}), last log lines:", self.name, self.bin.addr);
            for line in tail {
                eprintln!("{line}");
            }
        }
    }
}

/// The next frame on `conn` within `limit`, or a panic saying `what` did not arrive.
async fn recv_within(conn: &mut Conn, limit: Duration, what: &str) -> Frame {
    match tokio::time::timeout(limit, conn.next()).await {
        Ok(Some(Ok(frame))) => frame,
        Ok(Some(Err(error))) => panic!("{what}: reading failed: {error}"),
        Ok(None) => panic!("{what}: the hub closed the connection"),
        Err(_) => panic!("{what}: nothing arrived within {limit:?}"),
    }
}

/// A frame with one file of `len` pattern bytes (seeded by `seed`) and the message `label`.
fn file_frame(code: u8, label: &str, len: usize, seed: u64) -> Frame {
    Frame::builder(status(code))
        .file(format!("{label}.bin"), pattern(len, seed))
        .message(label.to_owned())
        .build()
}

/// The `seq`th frame of `publisher` in the mixed load: on one of `codes` (in turn), mostly small,
/// every 50th 64 KiB, three per 2,000 streamed (2–3 MiB, over the 1 MiB cut-through size); its
/// message is `"PUBLISHER SEQ"`.
fn mixed_frame(codes: &[u8], publisher: usize, seq: u32) -> Frame {
    let code = codes[(seq as usize + publisher) % codes.len()];
    let len = if seq % 700 == 350 {
        2 * MIB + (publisher * 211_111 + seq as usize) % MIB
    } else if seq % 50 == 7 {
        64 * 1024
    } else {
        (seq as usize * 37 + publisher * 11) % 700
    };
    let seed = publisher as u64 * 1_000_000 + u64::from(seq);
    file_frame(code, &format!("{publisher} {seq}"), len, seed)
}

/// The `(publisher, seq)` a mixed frame carries in its message.
fn mixed_id(frame: &Frame) -> (usize, u32) {
    let text = std::str::from_utf8(&frame.message).expect("a text message");
    let (publisher, seq) = text
        .split_once(' ')
        .unwrap_or_else(|| panic!("not a mixed frame: {text:?}"));
    (
        publisher.parse().expect("a publisher number"),
        seq.parse().expect("a sequence number"),
    )
}

/// Publishes `frames` mixed frames of `publisher` on `addr`; returns the connection (left open)
/// and the bytes of file data sent.
async fn publish_mixed(
    addr: SocketAddr,
    codes: Vec<u8>,
    publisher: usize,
    frames: u32,
) -> (Conn, u64) {
    let mut conn = connect(addr).await;
    let mut data = 0u64;
    for seq in 0..frames {
        let frame = mixed_frame(&codes, publisher, seq);
        data += frame.files[0].data.len() as u64;
        send(&mut conn, frame).await;
    }
    (conn, data)
}

/// Reads mixed frames on `conn` until `publishers` (by number) have each delivered `frames`
/// frames, checking each frame byte for byte and exactly once, in order per publisher; `who`
/// names the subscriber in failures.
async fn receive_mixed(
    mut conn: Conn,
    codes: Vec<u8>,
    publishers: Vec<usize>,
    frames: u32,
    who: String,
) -> Conn {
    let mut next: HashMap<usize, u32> = publishers.iter().map(|&p| (p, 0)).collect();
    let total = publishers.len() as u64 * u64::from(frames);
    for received in 0..total {
        let frame = recv_within(
            &mut conn,
            PATIENCE,
            &format!("{who}: frame {received} of {total} (next per publisher: {next:?})"),
        )
        .await;
        let (publisher, seq) = mixed_id(&frame);
        let expected = next
            .get_mut(&publisher)
            .unwrap_or_else(|| panic!("{who}: a frame from unexpected publisher {publisher}"));
        assert_eq!(
            seq, *expected,
            "{who}: publisher {publisher}'s frame {seq} arrived when {expected} was next \
             (a duplicate, an echo, a loss or a reordering)"
        );
        assert!(
            frame == mixed_frame(&codes, publisher, seq),
            "{who}: publisher {publisher}'s frame {seq} differs from what was sent"
        );
        *expected += 1;
    }
    conn
}

/// The harness itself: a server answers on its ports, counts what it receives (`/varz`), comes
/// back on the same ports after a kill, and a pair is joined by a route.
#[test]
fn the_nats_harness_kills_restarts_and_pairs() {
    let Some(mut nats) = NatsServer::start("the_nats_harness_kills_restarts_and_pairs") else {
        return;
    };
    let (port, monitor) = (nats.port, nats.monitor_port);
    assert_eq!(nats.url(), format!("nats://127.0.0.1:{port}"));
    let varz = nats.varz();
    for key in ["in_bytes", "out_bytes", "in_msgs", "out_msgs"] {
        assert!(varz[key].as_u64().is_some(), "{key} in {varz}");
    }
    nats.kill();
    assert!(
        std::net::TcpStream::connect(nats.client_addr()).is_err(),
        "nats-server still accepts connections after the kill"
    );
    nats.restart();
    assert_eq!((nats.port, nats.monitor_port), (port, monitor));
    assert_eq!(nats.varz()["port"], u64::from(port));
    let Some((one, two)) = NatsServer::cluster_pair("the_nats_harness_kills_restarts_and_pairs")
    else {
        return;
    };
    assert!(one.routes() >= 1 && two.routes() >= 1);
    assert_eq!(one.varz()["cluster"]["name"], nats::CLUSTER_NAME);
}

/// `tej-hub serve` without `--cluster` says so: `cluster` is null, nothing is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cluster_info_has_a_null_cluster() {
    let hub = BinHub::start(&[]);
    let mut conn = connect(hub.addr).await;
    let info = info(&mut conn).await;
    assert_eq!(info.get("cluster"), Some(&Value::Null), "{info}");
    assert_eq!(info["hub"]["cluster_dropped_frames"], 0, "{info}");
}

/// Hubs join the cluster of their `--cluster-prefix` only: a and b (prefix `x`, both with a dead
/// NATS server listed first, a on the command line, b in TOML) see each other and relay; c and d (default prefix
/// `tej`, default names `hostname:port`, distinct) on the same NATS see each other only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prefix_separates_clusters_sharing_a_nats_server() {
    let Some(nats) = NatsServer::start("the_prefix_separates_clusters_sharing_a_nats_server")
    else {
        return;
    };
    let url = nats.url();
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port");
    let dir = std::env::temp_dir().join(format!("tej-hub-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("hub-b.toml");
    let toml = format!(
        "cluster = [\"nats://{dead}\", \"{url}\"]\nhub-name = \"b\"\ncluster-prefix = \"x\"\n"
    );
    std::fs::write(&path, toml).expect("write the hub's configuration");
    let a = Hub::start(
        &format!("nats://{dead},{url}"),
        "a",
        &["--cluster-prefix", "x"],
    );
    let b = Hub {
        name: "b".to_owned(),
        bin: BinHub::start(&["--config", path.to_str().expect("a UTF-8 path")]),
    };
    let unnamed = |name: &str| Hub {
        name: name.to_owned(),
        bin: BinHub::start(&["--cluster", &url]),
    };
    let (c, d) = (unnamed("c"), unnamed("d"));
    a.wait_remote_hubs(1).await;
    b.wait_remote_hubs(1).await;
    c.wait_remote_hubs(1).await;
    d.wait_remote_hubs(1).await;
    let mut b_sub = connect(b.addr()).await;
    subscribe(&mut b_sub, "70", "70").await;
    let mut c_sub = connect(c.addr()).await;
    subscribe(&mut c_sub, "70", "70").await;
    let mut a_pub = connect(a.addr()).await;
    let frame = Frame::message(status(70), "to the x cluster");
    send(&mut a_pub, frame.clone()).await;
    assert_eq!(recv(&mut b_sub).await, frame, "hub b, same prefix");
    let mut d_pub = connect(d.addr()).await;
    let frame = Frame::message(status(70), "to the tej cluster");
    send(&mut d_pub, frame.clone()).await;
    assert_eq!(recv(&mut c_sub).await, frame, "hub c, same prefix");
    expect_silence(&mut b_sub, Duration::from_millis(300)).await;
    expect_silence(&mut c_sub, Duration::from_millis(300)).await;
    let _ = std::fs::remove_dir_all(&dir);
    // The default names: the port is the one the hub listens on (distinct names on one host).
    for hub in [&c, &d] {
        let cluster = hub.cluster().await;
        let port = hub.addr().port();
        assert!(
            cluster["hub"].as_str().is_some_and(|name| name
                .strip_suffix(&format!(":{port}"))
                .is_some_and(|host| !host.is_empty())),
            "hub {}: the default name is hostname:port, port {port}: {cluster}",
            hub.name
        );
    }
}

/// Three hubs, five publishers on two of them, a subscriber on each: 10,000 mixed frames reach
/// every subscriber exactly once, intact and in order per publisher (an echo across hubs would
/// show as a duplicate); `INFO` and `/varz` show the cluster's state and traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hubs_relay_every_frame_exactly_once_and_in_order() {
    const FRAMES: u32 = 2_000;
    let Some(nats) = NatsServer::start("three_hubs_relay_every_frame_exactly_once_and_in_order")
    else {
        return;
    };
    let url = nats.url();
    let a = Hub::start(&url, "a", &[]);
    let b = Hub::start(&url, "b", &[]);
    let c = Hub::start(&url, "c", &["--http", "127.0.0.1:0"]);
    let web = c.bin.monitor_addr();
    for hub in [&a, &b, &c] {
        hub.wait_remote_hubs(2).await;
    }
    let codes = vec![10u8, 11, 12];
    // Publishers 0, 1, 2 on hub a; 3, 4 on hub b.
    let placement = [(0, &a), (1, &a), (2, &a), (3, &b), (4, &b)];
    let mut subscribers = Vec::new();
    for hub in [&a, &b, &c] {
        let mut conn = connect(hub.addr()).await;
        subscribe(&mut conn, "10-12", "10-12").await;
        subscribers.push(tokio::spawn(receive_mixed(
            conn,
            codes.clone(),
            (0..placement.len()).collect(),
            FRAMES,
            format!("the subscriber on hub {}", hub.name),
        )));
    }
    let started = Instant::now();
    let publishers: Vec<_> = placement
        .iter()
        .map(|&(publisher, hub)| {
            tokio::spawn(publish_mixed(hub.addr(), codes.clone(), publisher, FRAMES))
        })
        .collect();
    let mut sent_from_a = 0u64;
    let mut open = Vec::new();
    for (handle, &(_, hub)) in publishers.into_iter().zip(&placement) {
        let (conn, data) = within(Duration::from_secs(60), "a publisher to finish", handle)
            .await
            .expect("a publisher task");
        if hub.name == "a" {
            sent_from_a += data;
        }
        open.push(conn);
    }
    for handle in subscribers {
        let mut conn = within(Duration::from_secs(60), "a subscriber to finish", handle)
            .await
            .expect("a subscriber task");
        // Nothing after the last frame: no late duplicate.
        expect_silence(&mut conn, Duration::from_millis(300)).await;
    }
    eprintln!(
        "3 hubs: {} frames to 3 subscribers in {:?}",
        5 * FRAMES,
        started.elapsed()
    );

    for hub in [&a, &b, &c] {
        let info = hub.info().await;
        let cluster = &info["cluster"];
        assert_eq!(cluster["hub"], hub.name.as_str(), "{info}");
        assert_eq!(cluster["connected"], true, "{info}");
        assert_eq!(cluster["remote_hubs"], 2, "{info}");
        for counter in ["dropped_frames", "lost_messages", "slow_consumers"] {
            assert_eq!(cluster[counter], 0, "hub {}: {counter} in {info}", hub.name);
        }
        assert_eq!(info["hub"]["cluster_dropped_frames"], 0, "{info}");
        // Every hub receives from another one (c from a and b, a from b, b from a).
        assert!(cluster["messages_in"].as_u64() > Some(0), "{info}");
        assert!(cluster["bytes_in"].as_u64() > Some(0), "{info}");
    }
    let a_cluster = a.cluster().await;
    assert!(
        a_cluster["bytes_out"].as_u64() >= Some(sent_from_a),
        "hub a sent {sent_from_a} bytes of file data with remote interest: {a_cluster}"
    );
    let varz = nats::http::get_async(web, "/varz").await.json();
    assert_eq!(varz["cluster"]["hub"], "c", "{varz}");
    assert_eq!(varz["cluster"]["connected"], true, "{varz}");
    assert_eq!(varz["cluster"]["remote_hubs"], 2, "{varz}");
    drop(open);
}

/// `rounds` times, alternating direction between `one` and `two`: a subscriber sends `SUB` for a
/// code (fresh for the first half, then again after an `UNSUB`), and the moment its `OK SUB`
/// arrives a publisher on the other hub publishes on it: the frame must arrive.
async fn sub_then_publish(one: &Hub, two: &Hub, rounds: usize, first_code: u8) {
    let mut on_one = (connect(one.addr()).await, connect(one.addr()).await);
    let mut on_two = (connect(two.addr()).await, connect(two.addr()).await);
    let distinct = rounds.div_ceil(2);
    for round in 0..rounds {
        let code = first_code + u8::try_from(round % distinct).expect("few codes");
        assert!(code != 2 && code < 127, "code {code} is reserved");
        let ((sub, _), (_, publisher), from, to) = if round % 2 == 0 {
            (&mut on_two, &mut on_one, one, two)
        } else {
            (&mut on_one, &mut on_two, two, one)
        };
        subscribe(sub, &code.to_string(), &code.to_string()).await;
        let frame = Frame::message(status(code), format!("round {round}"));
        send(publisher, frame.clone()).await;
        let got = recv_within(
            sub,
            Duration::from_secs(5),
            &format!(
                "round {round}: the frame published on hub {} on code {code} right after OK SUB \
                 on hub {}",
                from.name, to.name
            ),
        )
        .await;
        assert_eq!(got, frame, "round {round}");
        assert_eq!(
            control(sub, &format!("UNSUB {code}")).await,
            format!("OK UNSUB {code}"),
            "round {round}"
        );
    }
    // Nothing else arrived anywhere.
    for conn in [&mut on_one.0, &mut on_two.0] {
        expect_silence(conn, Duration::from_millis(200)).await;
    }
}

/// A `SUB` answered `OK SUB` on one hub receives a frame published on another hub right after
/// the reply: 50 rounds, both directions, fresh codes and codes subscribed again after `UNSUB`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_confirmed_on_one_hub_gets_the_next_frame_published_on_another() {
    let Some(nats) =
        NatsServer::start("a_sub_confirmed_on_one_hub_gets_the_next_frame_published_on_another")
    else {
        return;
    };
    let [a, b] = Hub::joined(&nats, ["a", "b"]).await;
    sub_then_publish(&a, &b, 50, 20).await;
    // A publisher with ECHO on gets its own frame once, not again back from the other hub.
    let mut echoing = connect(a.addr()).await;
    assert_eq!(control(&mut echoing, "ECHO on").await, "OK ECHO on");
    subscribe(&mut echoing, "90", "90").await;
    let mut remote = connect(b.addr()).await;
    subscribe(&mut remote, "90", "90").await;
    let frame = Frame::message(status(90), "echoed once");
    send(&mut echoing, frame.clone()).await;
    assert_eq!(recv(&mut echoing).await, frame, "the publisher's echo");
    assert_eq!(recv(&mut remote).await, frame, "the subscriber on hub b");
    expect_silence(&mut echoing, Duration::from_millis(300)).await;
    expect_silence(&mut remote, Duration::from_millis(300)).await;
}

/// Hub a on one node of a two-node NATS cluster, hub b on the other: mixed frames cross both
/// ways, and the `OK SUB` promise holds across the route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubs_on_two_nats_nodes_relay_both_ways() {
    let Some((one, two)) = NatsServer::cluster_pair("hubs_on_two_nats_nodes_relay_both_ways")
    else {
        return;
    };
    let a = Hub::start(&one.url(), "a", &[]);
    let b = Hub::start(&two.url(), "b", &[]);
    a.wait_remote_hubs(1).await;
    b.wait_remote_hubs(1).await;
    const FRAMES: u32 = 400;
    let codes = vec![30u8, 31];
    let mut on_a = connect(a.addr()).await;
    subscribe(&mut on_a, "30,31", "30-31").await;
    let mut on_b = connect(b.addr()).await;
    subscribe(&mut on_b, "30,31", "30-31").await;
    // Publisher 0 on hub a, publisher 1 on hub b (seq 350 is a streamed frame); each subscriber
    // gets both, one of them from the other node.
    let to_b = tokio::spawn(receive_mixed(
        on_b,
        codes.clone(),
        vec![0, 1],
        FRAMES,
        "the subscriber on hub b (node 2)".to_owned(),
    ));
    let to_a = tokio::spawn(receive_mixed(
        on_a,
        codes.clone(),
        vec![0, 1],
        FRAMES,
        "the subscriber on hub a (node 1)".to_owned(),
    ));
    let from_a = tokio::spawn(publish_mixed(a.addr(), codes.clone(), 0, FRAMES));
    let from_b = tokio::spawn(publish_mixed(b.addr(), codes.clone(), 1, FRAMES));
    let mut open = Vec::new();
    for handle in [from_a, from_b] {
        open.push(
            within(Duration::from_secs(30), "a publisher", handle)
                .await
                .expect("task")
                .0,
        );
    }
    for handle in [to_b, to_a] {
        within(Duration::from_secs(30), "a subscriber", handle)
            .await
            .expect("task");
    }
    sub_then_publish(&a, &b, 30, 40).await;
    assert_eq!(one.routes(), 1, "the route between the nodes");
}

/// Reads one frame head from `stream` and returns `(status, file count)`.
async fn read_head(stream: &mut TcpStream) -> (u8, u64) {
    let mut head = [0u8; 10];
    stream.read_exact(&mut head).await.expect("a frame head");
    assert_ne!(head[0] & 0x80, 0, "status byte {:#04x}", head[0]);
    (
        head[0] & 0x7f,
        u64::from_be_bytes(head[2..10].try_into().expect("8 bytes")),
    )
}

/// Reads a length field: a `u64` when `wide`, else a `u16`.
async fn read_len(stream: &mut TcpStream, wide: bool) -> u64 {
    if wide {
        stream.read_u64().await.expect("a u64 length")
    } else {
        u64::from(stream.read_u16().await.expect("a u16 length"))
    }
}

/// A frame as a streaming subscriber saw it: `(status, file name, file length, SHA-256 of the
/// file, message)`.
type Hashed = (u8, String, u64, [u8; 32], Vec<u8>);

/// Where a streaming subscriber stops reading for a while: after `after` bytes of file data, for
/// `pause`; `written` is what the publisher has written so far.
struct Pause {
    after: u64,
    pause: Duration,
    written: Arc<AtomicU64>,
}

/// Reads one frame carrying one file from `stream`, hashing the file's data as it arrives (never
/// holding it), pausing as `pause` says; returns the frame and what the publisher had written
/// when the subscriber resumed.
async fn read_hashed(stream: &mut TcpStream, pause: Option<Pause>) -> (Hashed, Option<u64>) {
    let (code, files) = read_head(stream).await;
    assert_eq!(files, 1, "a frame of {files} files");
    let mut name = vec![0u8; read_len(stream, false).await as usize];
    stream.read_exact(&mut name).await.expect("a name");
    let len = read_len(stream, true).await;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; MIB];
    let mut left = len;
    let mut pause = pause;
    let mut written_at_resume = None;
    while left > 0 {
        if let Some(Pause { after, .. }) = pause {
            if len - left >= after {
                let Pause { pause, written, .. } = pause.take().expect("a pause");
                tokio::time::sleep(pause).await;
                written_at_resume = Some(written.load(Ordering::Relaxed));
            }
        }
        let want = usize::try_from(left).map_or(buf.len(), |left| left.min(buf.len()));
        let n = stream.read(&mut buf[..want]).await.expect("file data");
        assert!(n > 0, "closed {left} bytes before the file's end");
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    let message_len = read_len(stream, true).await;
    assert!(message_len <= 1024, "a message of {message_len} bytes");
    let mut message = vec![0u8; message_len as usize];
    stream.read_exact(&mut message).await.expect("the message");
    let name = String::from_utf8(name).expect("a UTF-8 name");
    (
        (code, name, len, hasher.finalize().into(), message),
        written_at_resume,
    )
}

/// A raw subscriber to `code` on `addr` whose `OK SUB` has been read.
async fn raw_subscriber(addr: SocketAddr, code: u8) -> TcpStream {
    let mut stream = connect_raw(addr).await;
    stream
        .write_all(&encode(&control_frame(&format!("SUB {code}"))))
        .await
        .expect("send SUB");
    let ok = encode(&Frame::message(status(127), format!("OK SUB {code}")));
    let mut got = vec![0u8; ok.len()];
    within(PATIENCE, "OK SUB", stream.read_exact(&mut got))
        .await
        .expect("read OK SUB");
    assert_eq!(got, ok, "the reply to SUB {code}");
    stream
}

/// The head of a frame on `code` with one file named `name` of `len` bytes, up to its data.
fn file_head(code: u8, name: &str, len: u64) -> Vec<u8> {
    let mut bytes = head(0x80 | code, 1, 1).to_vec();
    bytes.extend_from_slice(&u16::try_from(name.len()).expect("short").to_be_bytes());
    bytes.extend_from_slice(name.as_bytes());
    bytes.extend_from_slice(&len.to_be_bytes());
    bytes
}

/// The big file of [`a_256_mib_frame_crosses_hubs_intact_in_bounded_memory`], 1 MiB at a time:
/// a pseudo-random block whose first 8 bytes count the blocks.
fn big_blocks(size: u64) -> impl Iterator<Item = Vec<u8>> {
    let block = pattern(MIB, 11).to_vec();
    (0..size / MIB as u64).map(move |number| {
        let mut block = block.clone();
        block[..8].copy_from_slice(&number.to_le_bytes());
        block
    })
}

/// A 256 MiB file frame published on hub a reaches a subscriber on hub b intact (SHA-256). The
/// subscriber stops reading for 5 s early on: the cross-hub flow control holds the publisher back
/// (it cannot run far ahead), nothing is lost, and neither hub's peak memory exceeds 128 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_frame_crosses_hubs_intact_in_bounded_memory() {
    const SIZE: u64 = 256 * MIB as u64;
    const CODE: u8 = 5;
    /// Where the subscriber pauses.
    const PAUSE_AFTER: u64 = 8 * MIB as u64;
    /// How far the publisher may get ahead of a subscriber that stopped reading.
    /// (With the default queues it gets 60–90 MiB ahead however long the pause lasts (12 s
    /// tried): the subscriber's queue and the credit window of 16 MiB each, the cluster's
    /// outbound queue, the sockets' buffers; unchecked, it would write at least 40 MB/s all along.)
    const AHEAD_BOUND: u64 = 128 * MIB as u64;
    let Some(nats) = NatsServer::start("a_256_mib_frame_crosses_hubs_intact_in_bounded_memory")
    else {
        return;
    };
    let [a, b] = Hub::joined(&nats, ["a", "b"]).await;
    // The expected hash, computed on the side so that the publisher runs at full speed.
    let expected = tokio::task::spawn_blocking(|| {
        let mut hasher = Sha256::new();
        big_blocks(SIZE).for_each(|block| hasher.update(&block));
        <[u8; 32]>::from(hasher.finalize())
    });
    let written = Arc::new(AtomicU64::new(0));
    let pause = Pause {
        after: PAUSE_AFTER,
        pause: Duration::from_secs(5),
        written: written.clone(),
    };
    let mut sub = raw_subscriber(b.addr(), CODE).await;
    let receiver = tokio::spawn(async move { read_hashed(&mut sub, Some(pause)).await });
    let started = Instant::now();
    let mut publisher = connect_raw(a.addr()).await;
    within(
        Duration::from_secs(120),
        "the 256 MiB frame to be written",
        async {
            publisher
                .write_all(&file_head(CODE, "big.bin", SIZE))
                .await?;
            for block in big_blocks(SIZE) {
                publisher.write_all(&block).await?;
                written.fetch_add(block.len() as u64, Ordering::Relaxed);
            }
            publisher.write_all(&7u64.to_be_bytes()).await?;
            publisher.write_all(b"256 MiB").await
        },
    )
    .await
    .expect("publish the 256 MiB frame");
    let (got, ahead) = within(
        Duration::from_secs(120),
        "the 256 MiB frame on hub b",
        receiver,
    )
    .await
    .expect("the receiver task");
    let expected = expected.await.expect("the hashing thread");
    eprintln!(
        "256 MiB across two hubs in {:?}; the publisher had written {} MiB when the subscriber \
         resumed after {} MiB",
        started.elapsed(),
        ahead.unwrap_or(0) / MIB as u64,
        PAUSE_AFTER / MIB as u64
    );
    assert!(
        got == (
            CODE,
            "big.bin".to_owned(),
            SIZE,
            expected,
            b"256 MiB".to_vec()
        ),
        "the frame on hub b: {got:?}, expected SHA-256 {expected:?}"
    );
    let ahead = ahead.expect("the subscriber paused");
    assert!(
        ahead <= PAUSE_AFTER + AHEAD_BOUND,
        "the publisher wrote {} MiB while the subscriber on the other hub stopped after {} MiB",
        ahead / MIB as u64,
        PAUSE_AFTER / MIB as u64
    );
    for hub in [&a, &b] {
        let peak = hub.bin.peak_rss_kib();
        eprintln!("hub {}: peak RSS {} MiB", hub.name, peak / 1024);
        assert!(
            peak <= HUB_RSS_BOUND_KIB,
            "hub {}'s peak RSS was {} MiB while a 256 MiB frame crossed (bound {} MiB)",
            hub.name,
            peak / 1024,
            HUB_RSS_BOUND_KIB / 1024
        );
    }
    let cluster = a.cluster().await;
    assert_eq!(cluster["dropped_frames"], 0, "{cluster}");
    assert!(cluster["bytes_out"].as_u64() >= Some(SIZE), "{cluster}");
    drop(publisher);
}

/// NATS killed: each hub relays locally as before, reports `connected: false` and counts what it
/// could not send to hubs with interest. NATS restarted on its port: the hubs reconnect, see each
/// other again, and relay across again (existing subscriptions and new ones).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_killed_and_restarted_local_relay_goes_on_then_the_cluster_resumes() {
    const CODE: u8 = 40;
    const OUTAGE_FRAMES: u32 = 20;
    let Some(mut nats) =
        NatsServer::start("nats_killed_and_restarted_local_relay_goes_on_then_the_cluster_resumes")
    else {
        return;
    };
    let [a, b] = Hub::joined(&nats, ["a", "b"]).await;
    let mut a_sub = connect(a.addr()).await;
    subscribe(&mut a_sub, "40", "40").await;
    let mut b_sub = connect(b.addr()).await;
    subscribe(&mut b_sub, "40", "40").await;
    // Code 41 has a subscriber on hub a only: what is published on it is never the cluster's.
    let mut a_only = connect(a.addr()).await;
    subscribe(&mut a_only, "41", "41").await;
    let mut a_pub = connect(a.addr()).await;
    let mut b_pub = connect(b.addr()).await;
    // Healthy: both ways.
    for (publisher, label) in [(&mut a_pub, "before a"), (&mut b_pub, "before b")] {
        let frame = Frame::message(status(CODE), label);
        send(publisher, frame.clone()).await;
        assert_eq!(recv(&mut a_sub).await, frame, "{label} on hub a");
        assert_eq!(recv(&mut b_sub).await, frame, "{label} on hub b");
    }

    nats.kill();
    for hub in [&a, &b] {
        hub.wait_cluster("disconnected", |c| c["connected"] == false)
            .await;
    }
    // The outage: each hub's own subscriber gets its own publisher's frames, promptly (a hub
    // waiting for the other's confirmation would hold its publisher back).
    let outage = Instant::now();
    for n in 0..OUTAGE_FRAMES {
        for (publisher, sub, hub) in [(&mut a_pub, &mut a_sub, "a"), (&mut b_pub, &mut b_sub, "b")]
        {
            let frame = outage_frame(hub, n);
            send(publisher, frame.clone()).await;
            let got = recv_within(
                sub,
                Duration::from_secs(3),
                &format!("outage frame {n} published and subscribed on hub {hub}"),
            )
            .await;
            assert!(got == frame, "outage frame {n} on hub {hub} differs");
        }
    }
    for n in 0..5 {
        let frame = Frame::message(status(41), format!("local only {n}"));
        send(&mut a_pub, frame.clone()).await;
        assert_eq!(recv(&mut a_only).await, frame, "code 41 during the outage");
    }
    eprintln!(
        "{} local frames during the outage in {:?}",
        2 * OUTAGE_FRAMES,
        outage.elapsed()
    );
    let mut dropped = HashMap::new();
    for hub in [&a, &b] {
        let info = hub.info().await;
        assert_eq!(info["cluster"]["connected"], false, "{info}");
        let count = info["cluster"]["dropped_frames"].as_u64().unwrap_or(0);
        assert_eq!(
            count,
            u64::from(OUTAGE_FRAMES),
            "hub {}: each frame with remote interest published during the outage is counted, \
             once (one other hub), and those of a code with local subscribers only are not: {info}",
            hub.name
        );
        assert_eq!(
            info["hub"]["cluster_dropped_frames"], count,
            "hub {}: {info}",
            hub.name
        );
        dropped.insert(hub.name.clone(), count);
    }

    nats.restart();
    let restarted = Instant::now();
    for hub in [&a, &b] {
        hub.wait_remote_hubs(1).await;
    }
    let back = restarted.elapsed();
    eprintln!("hubs back together {back:?} after the restart");
    assert!(
        back <= RECONNECT_PATIENCE,
        "the hubs took {back:?} to reconnect and see each other again"
    );
    // The existing subscription on hub b gets hub a's frames again. Frames of the outage may only
    // arrive if they were not counted as dropped (no loss is silent, nothing is counted twice).
    let mut late = 0u32;
    let mut next_late = 0u32;
    let mut sent = 0u32;
    let deadline = Instant::now() + CLUSTER_PATIENCE;
    let first = loop {
        assert!(
            Instant::now() < deadline,
            "hub b's subscriber got none of {sent} frames published on hub a after the restart"
        );
        send(
            &mut a_pub,
            Frame::message(status(CODE), format!("after {sent}")),
        )
        .await;
        sent += 1;
        if let Ok(item) = tokio::time::timeout(Duration::from_millis(100), b_sub.next()).await {
            let frame = item.expect("b_sub is open").expect("a frame");
            let text = String::from_utf8(frame.message.to_vec()).expect("text");
            if let Some(n) = text.strip_prefix("after ") {
                break n.parse::<u32>().expect("a number");
            }
            let n: u32 = text
                .strip_prefix("outage a ")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("hub b after the restart: unexpected {text:?}"));
            assert!(
                n >= next_late && frame == outage_frame("a", n),
                "hub b after the restart: outage frame {n} (expected from {next_late} on)"
            );
            next_late = n + 1;
            late += 1;
        }
    };
    eprintln!(
        "dropped during the outage: {dropped:?}; outage frames delivered after it: {late}; \
         first probe frame through: {first} of {sent}"
    );
    assert!(
        u64::from(late) + dropped["a"] >= u64::from(OUTAGE_FRAMES),
        "hub a: {late} outage frames arrived late and {} were counted as dropped, of {OUTAGE_FRAMES}",
        dropped["a"]
    );
    // The rest of the probe frames follow, in order.
    for n in first + 1..sent {
        let got = recv(&mut b_sub).await;
        assert_eq!(
            got.message,
            format!("after {n}").as_bytes(),
            "after the restart"
        );
    }
    // New subscriptions keep the OK SUB promise again, both ways.
    sub_then_publish(&a, &b, 6, 60).await;
    let cluster = a.cluster().await;
    assert_eq!(cluster["connected"], true, "{cluster}");
}

/// The `n`th frame published on hub `hub` during the NATS outage (one of them streamed).
fn outage_frame(hub: &str, n: u32) -> Frame {
    let len = if n == 10 { 2 * MIB } else { 100 };
    file_frame(40, &format!("outage {hub} {n}"), len, u64::from(n))
}

/// Hub a is killed (SIGKILL) while its publisher streams a 64 MiB frame to a subscriber on hub b:
/// that subscriber is closed within seconds (its stream cannot go on past a partial frame), while
/// hub b's other subscribers and its local relay go on, and hubs b and c carry on as a cluster of
/// two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_killed_mid_stream_closes_the_remote_receivers_of_its_frame() {
    const LEN: u64 = 64 * MIB as u64;
    let Some(nats) =
        NatsServer::start("a_hub_killed_mid_stream_closes_the_remote_receivers_of_its_frame")
    else {
        return;
    };
    let [a, b, c] = Hub::joined(&nats, ["a", "b", "c"]).await;
    let mut receiving = raw_subscriber(b.addr(), 50).await;
    let mut other = connect(b.addr()).await;
    subscribe(&mut other, "51", "51").await;
    let mut small = connect(b.addr()).await;

    // The first 8 MiB of a 64 MiB frame from hub a; the publisher stays connected.
    let mut publisher = connect_raw(a.addr()).await;
    let writer = tokio::spawn(async move {
        publisher.write_all(&file_head(50, "part", LEN)).await?;
        publisher.write_all(&pattern(8 * MIB, 3)).await?;
        std::io::Result::Ok(publisher)
    });
    let seen = read_at_least(&mut receiving, 4 * MIB, "hub a was killed").await;
    a.bin.signal(Signal::KILL);
    let killed = Instant::now();
    let rest = within(
        Duration::from_secs(7),
        "hub b to close the subscriber in the middle of the dead hub's frame",
        async {
            let mut rest = Vec::new();
            let _ = receiving.read_to_end(&mut rest).await;
            rest
        },
    )
    .await;
    eprintln!("closed {:?} after the kill", killed.elapsed());
    assert!(
        (seen + rest.len()) as u64 <= 8 * MIB as u64 + 64,
        "the subscriber got {} bytes of a frame of which 8 MiB were sent",
        seen + rest.len()
    );
    assert!(
        killed.elapsed() <= Duration::from_secs(6),
        "closed {:?} after the kill",
        killed.elapsed()
    );
    // Hub b goes on: another subscriber, and code 50 itself for a new subscriber.
    for n in 0..20 {
        let frame = Frame::message(status(51), format!("small {n}"));
        send(&mut small, frame.clone()).await;
        assert_eq!(recv(&mut other).await, frame);
    }
    let mut again = connect(b.addr()).await;
    subscribe(&mut again, "50", "50").await;
    let frame = file_frame(50, "after", 3 * MIB, 9);
    send(&mut small, frame.clone()).await;
    assert!(
        recv(&mut again).await == frame,
        "code 50 on hub b after the kill"
    );
    // The surviving hubs see that a is gone, and relay between themselves as before.
    b.wait_remote_hubs(1).await;
    c.wait_remote_hubs(1).await;
    sub_then_publish(&b, &c, 4, 80).await;
    writer.abort();
}

/// A code subscribed on hub a only does not cross NATS: 64 MiB published on it add less than
/// 1 MiB to nats-server's `in_bytes`; a code also subscribed on hub b does (at least the payload),
/// until hub b's last subscriber of it leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_without_remote_interest_stay_off_nats() {
    const FRAMES: u64 = 16;
    const LEN: usize = 4 * MIB;
    let Some(nats) = NatsServer::start("codes_without_remote_interest_stay_off_nats") else {
        return;
    };
    let [a, b] = Hub::joined(&nats, ["a", "b"]).await;
    let mut a_sub = connect(a.addr()).await;
    subscribe(&mut a_sub, "60", "60").await;
    let mut b_sub = connect(b.addr()).await;
    subscribe(&mut b_sub, "61", "61").await;
    let mut publisher = connect(a.addr()).await;
    let in_bytes = |varz: &Value| varz["in_bytes"].as_u64().expect("in_bytes in /varz");

    let before = in_bytes(&nats.varz());
    for n in 0..FRAMES {
        let frame = file_frame(60, &format!("local {n}"), LEN, n);
        send(&mut publisher, frame.clone()).await;
        assert!(recv(&mut a_sub).await == frame, "local frame {n}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let local = in_bytes(&nats.varz()) - before;
    assert!(
        local < MIB as u64,
        "64 MiB on a code subscribed on hub a only added {local} bytes to nats-server's in_bytes"
    );

    let before = in_bytes(&nats.varz());
    for n in 0..FRAMES {
        let frame = file_frame(61, &format!("remote {n}"), LEN, n);
        send(&mut publisher, frame.clone()).await;
        assert!(recv(&mut b_sub).await == frame, "remote frame {n}");
    }
    let remote = in_bytes(&nats.varz()) - before;
    assert!(
        remote >= FRAMES * LEN as u64,
        "64 MiB on a code subscribed on hub b added only {remote} bytes to nats-server's in_bytes"
    );

    // Hub b's last subscriber leaves: hub a learns it, and the code stops crossing.
    assert_eq!(control(&mut b_sub, "UNSUB 61").await, "OK UNSUB 61");
    a.wait_cluster("code 61 withdrawn by hub b", |c| c["remote_codes"] == "")
        .await;
    let mut a_61 = connect(a.addr()).await;
    subscribe(&mut a_61, "61", "61").await;
    let before = in_bytes(&nats.varz());
    for n in 0..FRAMES {
        let frame = file_frame(61, &format!("withdrawn {n}"), LEN, n);
        send(&mut publisher, frame.clone()).await;
        assert!(
            recv(&mut a_61).await == frame,
            "local frame {n} after the UNSUB"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let withdrawn = in_bytes(&nats.varz()) - before;
    assert!(
        withdrawn < MIB as u64,
        "64 MiB on a code hub b unsubscribed from added {withdrawn} bytes to nats-server's in_bytes"
    );
}

/// NATS with its own users (`nats-server --user --pass`): hubs given the credentials in the URL
/// (`nats://user:password@host:port`) join and relay; a hub with a wrong password is refused by
/// NATS, says so (`connected: false`), and still relays locally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_the_url_let_hubs_into_a_nats_with_users() {
    let Some(nats) = NatsServer::start_with(
        "credentials_in_the_url_let_hubs_into_a_nats_with_users",
        &["--user", "hubs", "--pass", "s3cret"],
    ) else {
        return;
    };
    let with = |credentials: &str| {
        nats.url()
            .replacen("nats://", &format!("nats://{credentials}@"), 1)
    };
    let a = Hub::start(&with("hubs:s3cret"), "a", &[]);
    let b = Hub::start(&with("hubs:s3cret"), "b", &[]);
    let intruder = Hub::start(&with("hubs:wrong"), "intruder", &[]);
    a.wait_remote_hubs(1).await;
    b.wait_remote_hubs(1).await;
    let refused = intruder.cluster().await;
    assert_eq!(refused["connected"], false, "{refused}");
    assert_eq!(refused["remote_hubs"], 0, "{refused}");
    let mut b_sub = connect(b.addr()).await;
    subscribe(&mut b_sub, "80", "80").await;
    let mut a_pub = connect(a.addr()).await;
    let frame = Frame::message(status(80), "between hubs with NATS credentials");
    send(&mut a_pub, frame.clone()).await;
    assert_eq!(recv(&mut b_sub).await, frame);
    let mut local_sub = connect(intruder.addr()).await;
    subscribe(&mut local_sub, "80", "80").await;
    let mut local_pub = connect(intruder.addr()).await;
    let frame = Frame::message(status(80), "local relay without the cluster");
    send(&mut local_pub, frame.clone()).await;
    assert_eq!(recv(&mut local_sub).await, frame);
    assert_eq!(
        a.cluster().await["remote_hubs"],
        1,
        "the intruder never joined"
    );
}

/// NATS over TLS only (`nats-server --tls`, a certificate from the test's CA): hubs given that CA
/// (`--cluster-tls-ca`) join and relay; a hub that does not trust the CA is refused, says so, and
/// still relays locally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubs_reach_nats_over_tls_trusting_the_cluster_ca() {
    let pki = pki::Pki::new("cluster");
    let path = |name: &str| pki.path(name).to_str().expect("a UTF-8 path").to_owned();
    let (cert, key, ca) = (path("server.pem"), path("server.key"), path("ca.pem"));
    let Some(nats) = NatsServer::start_with(
        "hubs_reach_nats_over_tls_trusting_the_cluster_ca",
        &["--tls", "--tlscert", &cert, "--tlskey", &key],
    ) else {
        return;
    };
    let a = Hub::start(&nats.url(), "a", &["--cluster-tls-ca", &ca]);
    let b = Hub::start(&nats.url(), "b", &["--cluster-tls-ca", &ca]);
    let untrusting = Hub::start(&nats.url(), "untrusting", &[]);
    a.wait_remote_hubs(1).await;
    b.wait_remote_hubs(1).await;
    let refused = untrusting.cluster().await;
    assert_eq!(refused["connected"], false, "{refused}");
    let mut b_sub = connect(b.addr()).await;
    subscribe(&mut b_sub, "81", "81").await;
    let mut a_pub = connect(a.addr()).await;
    let frame = file_frame(81, "over TLS", 3 * MIB, 81);
    send(&mut a_pub, frame.clone()).await;
    assert!(
        recv(&mut b_sub).await == frame,
        "a streamed frame across hubs over TLS"
    );
    let mut local_sub = connect(untrusting.addr()).await;
    subscribe(&mut local_sub, "81", "81").await;
    let mut local_pub = connect(untrusting.addr()).await;
    let frame = Frame::message(status(81), "local relay without the cluster");
    send(&mut local_pub, frame.clone()).await;
    assert_eq!(recv(&mut local_sub).await, frame);
}

/// A hub whose delivery of other hubs' frames is held back (a `block` subscriber that stopped
/// reading) while something floods its NATS subscription past what the client queues becomes a
/// NATS slow consumer: it counts it (`cluster.slow_consumers`) and logs it. Nothing is silent:
/// the frame the held-back subscriber was receiving either arrives intact (its hub kept to the
/// credit, so none of its messages were among those NATS dropped) or, if some were, is cut — its
/// receiver closed, the gap in `lost_messages` and the cut frame in `dropped_frames`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_that_cannot_keep_up_with_nats_counts_and_logs_it() {
    const SIZE: u64 = 64 * MIB as u64;
    const CODE: u8 = 90;
    /// More than the hub's NATS client queues for one subscription (4,096 messages).
    const FLOOD: usize = 8_000;
    let Some(nats) = NatsServer::start("a_hub_that_cannot_keep_up_with_nats_counts_and_logs_it")
    else {
        return;
    };
    let [a, b] = Hub::joined(&nats, ["a", "b"]).await;
    let mut stalled = raw_subscriber(b.addr(), CODE).await;
    let head = file_head(CODE, "held.bin", SIZE);
    let trailer = [&4u64.to_be_bytes()[..], b"held"].concat();
    let (frame_len, expected) = {
        let (head, trailer) = (head.clone(), trailer.clone());
        tokio::task::spawn_blocking(move || {
            let mut hasher = Sha256::new();
            hasher.update(&head);
            big_blocks(SIZE).for_each(|block| hasher.update(&block));
            hasher.update(&trailer);
            let len = head.len() as u64 + SIZE + trailer.len() as u64;
            (len, <[u8; 32]>::from(hasher.finalize()))
        })
        .await
        .expect("the hashing thread")
    };
    let mut publisher = connect_raw(a.addr()).await;
    let writer = tokio::spawn(async move {
        publisher.write_all(&head).await?;
        for block in big_blocks(SIZE) {
            publisher.write_all(&block).await?;
        }
        publisher.write_all(&trailer).await?;
        std::io::Result::Ok(publisher)
    });
    // Hub a sends until hub b's credit runs out; then its NATS traffic stops growing.
    let mut history = Vec::new();
    let settled = within(
        CLUSTER_PATIENCE,
        "hub a held back by hub b's credit",
        async {
            loop {
                tokio::time::sleep(Duration::from_millis(300)).await;
                history.push(a.cluster().await["bytes_out"].as_u64().unwrap_or(0));
                if let [.., x, y, z] = history[..] {
                    if x > 0 && x == y && y == z {
                        return z;
                    }
                }
            }
        },
    )
    .await;
    assert!(
        settled < SIZE,
        "hub a sent all {settled} bytes to a stalled hub"
    );

    let rogue = async_nats::connect(nats.url())
        .await
        .expect("a plain NATS client");
    for n in 0..FLOOD {
        rogue
            .publish("tej.data.91", format!("not from a hub {n}").into())
            .await
            .expect("publish");
    }
    rogue.flush().await.expect("flush");
    b.wait_cluster("a NATS slow consumer counted", |c| {
        c["slow_consumers"].as_u64() >= Some(1)
    })
    .await;
    // The counter can be read before the log line reaches the capture thread.
    within(PATIENCE, "the slow consumer logged", async {
        while !b
            .bin
            .logs()
            .iter()
            .any(|line| line.contains("NATS dropped messages for this hub"))
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;

    // The held frame, whole or cut.
    let (read, hash) = within(Duration::from_secs(60), "the held frame on hub b", async {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; MIB];
        let mut read = 0u64;
        while read < frame_len {
            let want =
                usize::try_from(frame_len - read).map_or(buf.len(), |left| left.min(buf.len()));
            match stalled.read(&mut buf[..want]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    read += n as u64;
                }
            }
        }
        (read, <[u8; 32]>::from(hasher.finalize()))
    })
    .await;
    let cluster = b.cluster().await;
    let (lost, cut) = (
        cluster["lost_messages"].as_u64(),
        cluster["dropped_frames"].as_u64(),
    );
    if read == frame_len {
        assert_eq!(hash, expected, "the held frame arrived whole but different");
        assert_eq!((lost, cut), (Some(0), Some(0)), "{cluster}");
    } else {
        eprintln!(
            "messages of hub a were among those dropped: the frame was cut after {read} bytes"
        );
        assert!(lost >= Some(1) && cut >= Some(1), "a silent cut: {cluster}");
    }
    drop(writer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clustered_hubs_shut_down_on_sigterm_without_a_panic() {
    /// Rounds of three hubs each: 24 SIGTERMs, where the old shutdown panicked in 4–7 of 24.
    const ROUNDS: usize = 8;
    const CODE: u8 = 21;
    let Some(nats) = NatsServer::start("clustered_hubs_shut_down_on_sigterm_without_a_panic")
    else {
        return;
    };
    let stay = Hub::start(&nats.url(), "stay", &[]);
    for round in 0..ROUNDS {
        let names = ["x", "y", "z"].map(|name| format!("{name}{round}"));
        let mut hubs = names
            .each_ref()
            .map(|name| Hub::start(&nats.url(), name, &[]));
        for hub in &hubs {
            hub.wait_remote_hubs(hubs.len() as u64).await;
        }
        // Something in flight both ways: subscriptions on every hub, frames crossing.
        let mut subscribers = Vec::new();
        for hub in hubs.iter().chain([&stay]) {
            let mut conn = connect(hub.addr()).await;
            subscribe(&mut conn, &CODE.to_string(), &CODE.to_string()).await;
            subscribers.push(conn);
        }
        let mut publisher = connect(stay.addr()).await;
        for n in 0..20 {
            send(&mut publisher, outage_frame("stay", n)).await;
        }
        for hub in &hubs {
            hub.bin.signal(Signal::TERM);
        }
        for hub in &mut hubs {
            let exit = tokio::task::block_in_place(|| hub.bin.wait_exit(Duration::from_secs(10)))
                .unwrap_or_else(|| panic!("hub {} still running 10 s after SIGTERM", hub.name));
            let logs = hub.bin.logs();
            let panics: Vec<&String> = logs.iter().filter(|l| l.contains("panicked")).collect();
            assert!(panics.is_empty(), "hub {}: {panics:?}", hub.name);
            assert_eq!(exit.code(), Some(0), "hub {}: exit {exit}", hub.name);
        }
        stay.wait_remote_hubs(0).await;
    }
}
