//! tej-hub under pressure, over real sockets on `127.0.0.1`: hostile peers (mid-frame hang-ups,
//! MSB-0 status bytes, oversized and absurd announced lengths, non-UTF-8 file names, garbage)
//! while a publisher → subscriber stream runs, the frame limit at its exact edge (and as the only
//! per-frame limit), slow consumers and the pending limit (it bounds what waits behind the frame
//! being written), the idle and stall timeouts, SIGTERM and SIGINT, and the binary's peak memory
//! under hundreds of hostile connections.

#[path = "common/hub.rs"]
mod hub_common;

use std::sync::Arc;
use std::time::Duration;

use bytes::BufMut;
use futures_util::{SinkExt, StreamExt};
use rustix::process::Signal;
use tej_hub::hub::config::HubConfig;
use tej_hub::hub::control::SlowPolicy;
use tej_hub::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use hub_common::{
    connect, connect_raw, connect_small_window, control, encode, expect_err_and_close,
    expect_silence, feed, flush, head, pattern, read_until_closed, recv, send, start_hub, status,
    stop_hub, subscribe, test_config, within, BinHub, MIB, PATIENCE,
};

/// The frame limit of the hostile-peer tests: 1 MiB.
const LIMIT: u64 = MIB as u64;

/// Writes `bytes` to `stream`.
async fn write(stream: &mut TcpStream, bytes: &[u8]) {
    within(PATIENCE, "a write", stream.write_all(bytes))
        .await
        .expect("write to the hub");
}

/// A head, one file head with `name`, announcing `data_len` bytes of data.
fn file_head(name: &[u8], data_len: u64) -> Vec<u8> {
    let mut wire = head(0x85, 1, 1);
    wire.put_u16(name.len() as u16);
    wire.put_slice(name);
    wire.put_u64(data_len);
    wire.to_vec()
}

/// A head with no files and a message length of `len`.
fn message_head(len: u64) -> Vec<u8> {
    let mut wire = head(0x85, 1, 0);
    wire.put_u64(len);
    wire.to_vec()
}

/// Stream frame `seq`: a message naming it, and a file on every 16th.
fn stream_frame(seq: usize) -> Frame {
    let builder = Frame::builder(status(9)).message(format!("{seq}"));
    if seq % 16 == 0 {
        builder.file("f", pattern(seq * 7, seq as u64)).build()
    } else {
        builder.build()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_are_refused_while_a_stream_runs() {
    const FRAMES: usize = 3000;
    let hub = start_hub(HubConfig {
        max_frame_bytes: LIMIT,
        ..test_config()
    });
    let addr = hub.local_addr();

    let mut subscriber = connect(addr).await;
    subscribe(&mut subscriber, "9", "9").await;
    let mut publisher = connect(addr).await;
    let stream = tokio::spawn(async move {
        for seq in 0..FRAMES {
            feed(&mut publisher, stream_frame(seq)).await;
            if seq % 100 == 99 {
                flush(&mut publisher).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        flush(&mut publisher).await;
        publisher
    });
    let received = tokio::spawn(async move {
        for seq in 0..FRAMES {
            let frame = recv(&mut subscriber).await;
            assert!(
                frame == stream_frame(seq),
                "stream frame {seq} lost or changed"
            );
        }
        expect_silence(&mut subscriber, Duration::from_millis(200)).await;
    });

    // Peers that hang up in the middle of a frame (head, file head, data, message).
    let whole = encode(
        &Frame::builder(status(9))
            .file("cut", pattern(500, 1))
            .message("never whole")
            .build(),
    );
    for cut in [1, 5, 10, 15, 30, 200, whole.len() - 1] {
        let mut peer = connect_raw(addr).await;
        write(&mut peer, &whole[..cut]).await;
        drop(peer);
    }

    // Each refused peer gets `ERR <reason>` and is closed.
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("MSB-0 status byte", vec![0x05], "most significant bit"),
        (
            "MSB-0 status byte in a whole frame",
            {
                let mut frame = encode(&Frame::message(status(5), "x")).to_vec();
                frame[0] &= 0x7f;
                frame
            },
            "most significant bit",
        ),
        (
            "2^64-1 files",
            head(0x85, 1, u64::MAX).to_vec(),
            "exceeds the limit",
        ),
        (
            "2^60 files",
            head(0x85, 1, 1 << 60).to_vec(),
            "exceeds the limit",
        ),
        (
            "2^63-byte file",
            file_head(b"big", 1 << 63),
            "exceeds the limit",
        ),
        (
            "u64::MAX-byte file",
            file_head(b"big", u64::MAX),
            "exceeds the limit",
        ),
        (
            "2 MiB file",
            file_head(b"big", 2 * LIMIT),
            "exceeds the limit",
        ),
        (
            "u64::MAX-byte message",
            message_head(u64::MAX),
            "exceeds the limit",
        ),
        (
            "limit+1 frame",
            message_head(LIMIT - 18 + 1),
            "exceeds the limit",
        ),
        (
            "non-UTF-8 file name",
            file_head(b"\xff\xfe.bin", 3),
            "UTF-8",
        ),
    ];
    for (what, bytes, reason) in &cases {
        let mut peer = connect_raw(addr).await;
        let started = Instant::now();
        write(&mut peer, bytes).await;
        let error = expect_err_and_close(&mut peer, what).await;
        assert!(error.contains(reason), "{what}: ERR {error}");
        // Refused at once, not after a timeout.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{what}: refused late"
        );
    }

    // Garbage: a peer that does not speak TEJ at all.
    let mut peer = connect_raw(addr).await;
    write(&mut peer, b"GET / HTTP/1.1\r\nHost: hub\r\n\r\n").await;
    read_until_closed(&mut peer).await;

    let publisher = within(Duration::from_secs(30), "the stream's publisher", stream)
        .await
        .expect("publisher task");
    within(Duration::from_secs(30), "the stream's subscriber", received)
        .await
        .expect("the stream lost frames while hostile peers were refused");
    drop(publisher);
    stop_hub(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_limit_counts_the_whole_frame() {
    let hub = start_hub(HubConfig {
        max_frame_bytes: LIMIT,
        ..test_config()
    });
    let addr = hub.local_addr();
    let mut subscriber = connect(addr).await;
    subscribe(&mut subscriber, "5", "5").await;

    // Exactly at the limit, header included: relayed.
    let mut publisher = connect(addr).await;
    let at_limit = Frame::builder(status(5))
        .file("f", pattern(1000, 1))
        .message(pattern(MIB - 18 - (10 + 1 + 1000), 2))
        .build();
    assert_eq!(at_limit.encoded_len(), LIMIT);
    send(&mut publisher, at_limit.clone()).await;
    assert!(
        recv(&mut subscriber).await == at_limit,
        "frame at the limit changed"
    );

    // The frame limit is the only one: 3,000 files (past a default client's 1,024) are fine.
    let lenient = |stream| {
        tokio_util::codec::Framed::new(
            stream,
            tej_hub::TejCodec::new(tej_hub::Limits::frame_only(LIMIT)),
        )
    };
    let mut lenient_sub = lenient(connect_raw(addr).await);
    subscribe(&mut lenient_sub, "6", "6").await;
    let mut lenient_pub = lenient(connect_raw(addr).await);
    let many = (0..3000)
        .fold(Frame::builder(status(6)), |builder, n| {
            builder.file(format!("{n}"), pattern(n % 7, n as u64))
        })
        .message("many files")
        .build();
    send(&mut lenient_pub, many.clone()).await;
    assert!(
        recv(&mut lenient_sub).await == many,
        "the 3,000-file frame changed"
    );

    // One byte more: ERR, closed, and not relayed.
    let mut raw = connect_raw(addr).await;
    let over = Frame::builder(status(5))
        .file("f", pattern(1000, 1))
        .message(pattern(MIB - 18 - (10 + 1 + 1000) + 1, 2))
        .build();
    // The hub refuses it from the message length field, before the body: send up to there.
    let wire = encode(&over);
    let header_len = 10 + 10 + 1 + 1000 + 8;
    write(&mut raw, &wire[..header_len]).await;
    let error = expect_err_and_close(&mut raw, "limit+1").await;
    assert!(error.contains("exceeds the limit"), "ERR {error}");
    // The publisher is unaffected.
    let after = Frame::message(status(5), "after");
    send(&mut publisher, after.clone()).await;
    assert_eq!(recv(&mut subscriber).await, after);
    stop_hub(hub).await;
}

/// A connection whose receive buffer is tiny, so the kernel absorbs almost nothing for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_disconnected_and_nobody_else_suffers() {
    const FRAMES: usize = 64;
    const SIZE: usize = 256 * 1024;
    let hub = BinHub::start(&[
        "--max-pending-bytes",
        "1048576",
        "--slow-consumer",
        "disconnect",
        "--workers",
        "2",
    ]);
    let frames: Arc<Vec<Frame>> = Arc::new(
        (0..FRAMES)
            .map(|seq| {
                Frame::builder(status(20))
                    .file(format!("chunk-{seq}"), pattern(SIZE, seq as u64))
                    .message(format!("{seq}"))
                    .build()
            })
            .collect(),
    );
    let sent = frames.clone();

    // The stuck subscriber reads its SUB reply and then nothing.
    let mut stuck = tokio_util::codec::Framed::new(
        connect_small_window(hub.addr).await,
        tej_hub::TejCodec::default(),
    );
    subscribe(&mut stuck, "20", "20").await;
    let mut healthy = connect(hub.addr).await;
    subscribe(&mut healthy, "20", "20").await;

    // The healthy subscriber keeps up: the publisher never runs more than two frames (512 KiB,
    // half the limit) ahead of it. The stuck one gets every frame queued all the same.
    let window = Arc::new(Semaphore::new(2));
    let credit = window.clone();
    let healthy_reader = tokio::spawn(async move {
        for (seq, expected) in frames.iter().enumerate() {
            let got = recv(&mut healthy).await;
            assert!(
                got == *expected,
                "healthy subscriber: frame {seq} lost or changed: got {} {:?}",
                got.status,
                String::from_utf8_lossy(&got.message[..got.message.len().min(40)])
            );
            credit.add_permits(1);
        }
        healthy
    });
    let mut publisher = connect(hub.addr).await;
    within(Duration::from_secs(20), "the publisher", async {
        for frame in sent.iter() {
            window.acquire().await.expect("window").forget();
            publisher.send(frame.clone()).await.expect("publish");
        }
    })
    .await;
    let mut healthy = within(
        Duration::from_secs(20),
        "the healthy subscriber",
        healthy_reader,
    )
    .await
    .expect("healthy subscriber task");

    // The stuck one now reads: what the kernel held, maybe `ERR slow consumer`, then the end.
    let mut count = 0;
    let mut err = None;
    within(
        Duration::from_secs(15),
        "the slow consumer to be closed",
        async {
            while let Some(item) = stuck.next().await {
                match item {
                    Ok(got) if got.status.code() == 127 => {
                        err = Some(String::from_utf8_lossy(&got.message).into_owned());
                    }
                    Ok(got) => {
                        assert!(
                            got == sent[count],
                            "stuck subscriber: frame {count} changed"
                        );
                        count += 1;
                    }
                    Err(_) => break,
                }
            }
        },
    )
    .await;
    assert!(
        count < FRAMES,
        "the stuck subscriber got all {count} frames"
    );
    if let Some(err) = err {
        assert_eq!(err, "ERR slow consumer");
    }

    // Logged; the publisher and the healthy subscriber carry on.
    let logs = hub.logs();
    assert!(
        logs.iter().any(|line| line.contains("slow consumer")),
        "no slow-consumer log line in {logs:#?}"
    );
    let after = Frame::message(status(20), "after");
    send(&mut publisher, after.clone()).await;
    assert_eq!(recv(&mut healthy).await, after);
    let info = hub_common::info(&mut publisher).await;
    assert_eq!(info["limits"]["max_pending_bytes"], serde_json::json!(MIB));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_policy_bounds_the_queue_of_streamed_frames() {
    // Frames larger than the cut-through size and the kernel's socket buffers: they are streamed,
    // and a subscriber that reads nothing is cut in the middle of one.
    const SIZE: usize = 6 * MIB;
    let hub = start_hub(HubConfig {
        max_pending_bytes: 8 * MIB as u64,
        slow_consumer: SlowPolicy::Disconnect,
        ..test_config()
    });
    let addr = hub.local_addr();
    let frames: Vec<Frame> = (0..3)
        .map(|n| Frame::message(status(30), pattern(SIZE, 100 + n)))
        .collect();
    let mut reader = connect(addr).await;
    subscribe(&mut reader, "30", "30").await;
    let mut stuck = tokio_util::codec::Framed::new(
        connect_small_window(addr).await,
        tej_hub::TejCodec::default(),
    );
    subscribe(&mut stuck, "30", "30").await;
    let mut publisher = connect(addr).await;
    for frame in &frames {
        send(&mut publisher, frame.clone()).await;
        let got = recv(&mut reader).await;
        assert!(got == *frame, "the reading subscriber got a changed frame");
    }
    // The stuck one: at most what the kernel held before the hub cut it, never a whole frame
    // more than fits, then the end of the connection (no ERR: it is in the middle of a frame).
    let mut got = 0;
    within(PATIENCE, "the stuck subscriber to be closed", async {
        while let Some(Ok(frame)) = stuck.next().await {
            assert!(
                frame == frames[got],
                "stuck subscriber: frame {got} changed"
            );
            got += 1;
        }
    })
    .await;
    assert!(got < 2, "the stuck subscriber got {got} frames");
    let info = hub_common::info(&mut publisher).await;
    assert_eq!(info["hub"]["slow_consumers"], serde_json::json!(1));
    stop_hub(hub).await;
}

/// A subscriber that reads at once is never called slow because one streamed frame is larger
/// than its small mark, under `disconnect` and under `drop` (it once was, 4 runs in 6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_reader_is_never_slow_for_one_streamed_frame() {
    for policy in ["disconnect", "drop"] {
        let hub = BinHub::start(&[
            "--slow-consumer",
            policy,
            "--max-pending-bytes",
            "65536",
            "--max-frame-bytes",
            "4194304",
        ]);
        for run in 0..20 {
            let mut subscriber = connect(hub.addr).await;
            subscribe(&mut subscriber, "9", "9").await;
            let mut publisher = connect(hub.addr).await;
            let frame = Frame::message(status(9), pattern(MIB, run));
            send(&mut publisher, frame.clone()).await;
            assert!(
                recv(&mut subscriber).await == frame,
                "{policy} run {run}: the frame changed"
            );
            let info = hub_common::info(&mut subscriber).await;
            assert_eq!(
                info["dropped_frames"],
                serde_json::json!(0),
                "{policy} run {run}"
            );
        }
        let slow: Vec<String> = hub
            .logs()
            .into_iter()
            .filter(|line| line.contains("slow consumer"))
            .collect();
        assert!(slow.is_empty(), "{policy}: {slow:#?}");
    }
}

/// A subscriber that really stops reading in the middle of a large streamed frame is still cut
/// under `disconnect`, the reader beside it (under `block`) gets the frame, and the hub's memory
/// stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_subscriber_is_cut_from_a_large_streamed_frame() {
    // As large as the test client's own frame limit (64 MiB) allows.
    const SIZE: usize = 60 * MIB;
    let hub = BinHub::start(&[
        "--slow-consumer",
        "disconnect",
        "--max-pending-bytes",
        "65536",
    ]);
    let mut stuck = tokio_util::codec::Framed::new(
        connect_small_window(hub.addr).await,
        tej_hub::TejCodec::default(),
    );
    subscribe(&mut stuck, "9", "9").await;
    let mut reader = tokio_util::codec::Framed::new(
        connect_raw(hub.addr).await,
        tej_hub::TejCodec::new(tej_hub::Limits::frame_only(2 * SIZE as u64)),
    );
    subscribe(&mut reader, "9", "9").await;
    // The reader decodes no faster than the publisher sends: it paces the publisher instead of
    // being cut itself.
    assert_eq!(control(&mut reader, "SLOW block").await, "OK SLOW block");
    let mut publisher = connect(hub.addr).await;
    let frame = Frame::message(status(9), pattern(SIZE, 9));
    let (sent, got) = tokio::join!(send(&mut publisher, frame.clone()), async {
        match within(PATIENCE, "the streamed frame", reader.next()).await {
            Some(Ok(got)) => got,
            other => panic!("the reader got {other:?}"),
        }
    });
    let () = sent;
    assert!(got == frame, "the reader's frame changed");
    read_until_closed(stuck.get_mut()).await;
    let info = hub_common::info(&mut publisher).await;
    assert_eq!(info["hub"]["slow_consumers"], serde_json::json!(1));
    let peak = hub.peak_rss_kib();
    assert!(
        peak < 48 * 1024,
        "hub peak RSS {peak} KiB for a 64 MiB frame"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_pending_limit_enters_an_empty_queue() {
    let hub = start_hub(HubConfig {
        max_pending_bytes: 1024,
        ..test_config()
    });
    let mut subscriber = connect(hub.local_addr()).await;
    subscribe(&mut subscriber, "31", "31").await;
    let mut publisher = connect(hub.local_addr()).await;
    for n in 0..5 {
        let frame = Frame::message(status(31), pattern(100_000, n));
        send(&mut publisher, frame.clone()).await;
        assert!(recv(&mut subscriber).await == frame, "frame {n} changed");
    }
    stop_hub(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_silent_connections_and_pings_keep_them() {
    let hub = start_hub(HubConfig {
        idle_timeout: 1,
        ..test_config()
    });
    let addr = hub.local_addr();
    let started = Instant::now();

    let silent = async {
        let mut raw = connect_raw(addr).await;
        let error = expect_err_and_close(&mut raw, "a silent connection").await;
        assert_eq!(error, "idle timeout");
        let after = started.elapsed();
        assert!(
            after >= Duration::from_millis(900) && after < Duration::from_secs(4),
            "closed after {after:?}"
        );
    };
    let pinging = async {
        let mut conn = connect(addr).await;
        // 2.5 s of pings every 300 ms: each answered, the connection kept.
        for _ in 0..8 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            send(&mut conn, Frame::ping()).await;
            assert_eq!(recv(&mut conn).await, Frame::ping());
        }
        assert!(started.elapsed() > Duration::from_secs(2));
        assert!(control(&mut conn, "INFO").await.starts_with("OK INFO "));
    };
    tokio::join!(silent, pinging);
    stop_hub(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_timeout_cuts_half_sent_frames_not_slow_ones() {
    let hub = start_hub(HubConfig {
        stall_timeout: 1,
        ..test_config()
    });
    let addr = hub.local_addr();
    let started = Instant::now();

    let stalled = async {
        let mut raw = connect_raw(addr).await;
        write(&mut raw, &encode(&Frame::message(status(5), "half"))[..7]).await;
        let error = expect_err_and_close(&mut raw, "a stalled frame").await;
        assert_eq!(error, "stall timeout");
        let after = started.elapsed();
        assert!(
            after >= Duration::from_millis(900) && after < Duration::from_secs(4),
            "closed after {after:?}"
        );
    };
    // A ping sent one byte every 150 ms: 2.7 s for the frame, never 1 s without a byte.
    let trickle = async {
        let mut raw = connect_raw(addr).await;
        for byte in encode(&Frame::ping()).iter() {
            tokio::time::sleep(Duration::from_millis(150)).await;
            write(&mut raw, &[*byte]).await;
        }
        let mut answer = [0u8; 18];
        within(PATIENCE, "the ping answer", raw.read_exact(&mut answer))
            .await
            .expect("the trickled ping was answered");
        assert_eq!(&answer[..], &encode(&Frame::ping())[..]);
        assert!(started.elapsed() > Duration::from_secs(2));
    };
    // A connection silent between frames is not stalled (the idle timeout is off).
    let idle = async {
        let mut conn = connect(addr).await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(control(&mut conn, "INFO").await.starts_with("OK INFO "));
    };
    tokio::join!(stalled, trickle, idle);
    stop_hub(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_promptly_with_idle_clients() {
    let mut hub = BinHub::start(&[]);
    let mut clients = Vec::new();
    for code in 10..15u8 {
        let mut conn = connect(hub.addr).await;
        subscribe(&mut conn, &format!("{code}"), &format!("{code}")).await;
        clients.push(conn);
    }
    let mut raw = connect_raw(hub.addr).await;
    // Half a frame in flight is no reason to wait.
    write(&mut raw, &[0x85, 1, 0]).await;
    // Frames queued for a subscriber that has not read them yet are flushed before the end. The
    // reader's copies show they have all been routed to the lagging one too.
    let mut lagging = connect(hub.addr).await;
    subscribe(&mut lagging, "20", "20").await;
    let mut reader = connect(hub.addr).await;
    subscribe(&mut reader, "20", "20").await;
    let mut publisher = connect(hub.addr).await;
    let queued: Vec<Frame> = (0..20)
        .map(|n| Frame::message(status(20), pattern(100_000, n)))
        .collect();
    for frame in &queued {
        send(&mut publisher, frame.clone()).await;
    }
    for frame in &queued {
        assert!(recv(&mut reader).await == *frame);
    }

    let started = std::time::Instant::now();
    hub.signal(Signal::TERM);
    let flushed = tokio::spawn(async move {
        for (n, frame) in queued.iter().enumerate() {
            assert!(
                recv(&mut lagging).await == *frame,
                "queued frame {n} lost at shutdown"
            );
        }
        lagging
    });
    let exit = tokio::task::block_in_place(|| hub.wait_exit(Duration::from_secs(5)))
        .unwrap_or_else(|| panic!("tej-hub still running 5 s after SIGTERM: {:?}", hub.logs()));
    assert_eq!(exit.code(), Some(0), "exit status {exit}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // Every client sees the end of the stream (after an `ERR`, if any), and nobody is listening
    // any more.
    clients.push(flushed.await.expect("the queued frames were flushed"));
    clients.extend([reader, publisher]);
    for mut conn in clients {
        loop {
            match within(PATIENCE, "the end of the stream", conn.next()).await {
                None | Some(Err(_)) => break,
                Some(Ok(frame)) => {
                    let text = hub_common::reply_text(&frame, "shutdown");
                    assert!(
                        text.starts_with("ERR "),
                        "unexpected frame at shutdown: {text:?}"
                    );
                }
            }
        }
    }
    read_until_closed(&mut raw).await;
    assert!(
        TcpStream::connect(hub.addr).await.is_err(),
        "still accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_exits_zero_too() {
    let mut hub = BinHub::start(&[]);
    let mut conn = connect(hub.addr).await;
    subscribe(&mut conn, "5", "5").await;
    hub.signal(Signal::INT);
    let exit = tokio::task::block_in_place(|| hub.wait_exit(Duration::from_secs(5)))
        .unwrap_or_else(|| panic!("tej-hub still running 5 s after SIGINT: {:?}", hub.logs()));
    assert_eq!(exit.code(), Some(0), "exit status {exit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_the_moment_the_ready_line_appears_is_graceful() {
    // Supervisors and scripts stop the hub as soon as they have read its address: the handlers
    // must already be in place then (they once were not, and SIGTERM killed the process).
    for run in 0..20 {
        let signal = if run % 2 == 0 {
            Signal::TERM
        } else {
            Signal::INT
        };
        let mut hub = BinHub::start(&[]);
        hub.signal(signal);
        let exit = tokio::task::block_in_place(|| hub.wait_exit(Duration::from_secs(5)))
            .unwrap_or_else(|| panic!("run {run}: still running 5 s after {signal:?}"));
        assert_eq!(exit.code(), Some(0), "run {run}: {signal:?} gave {exit}");
    }
}

/// One hostile connection of the memory test, by kind.
fn hostile_bytes(kind: usize, n: usize) -> Vec<u8> {
    match kind {
        // Half a head, then silence.
        0 => vec![0x85, 1, 0, 0, 0],
        // A file announced just under the limit, 4 KiB of it sent.
        1 => {
            let mut bytes = file_head(b"almost", LIMIT - 100);
            bytes.extend_from_slice(&pattern(4096, n as u64));
            bytes
        }
        // Absurd announced lengths.
        2 => file_head(b"huge", u64::MAX - n as u64),
        3 => head(0x85, 1, u64::MAX).to_vec(),
        4 => message_head(1 << 62),
        // Garbage.
        _ => pattern(2048 + n, n as u64).to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_under_hostile_connections() {
    const CONNECTIONS: usize = 300;
    const BOUND_KIB: u64 = 64 * 1024;
    let hub = BinHub::start(&["--max-frame-bytes", "1048576", "--workers", "2"]);

    let mut peers = Vec::with_capacity(CONNECTIONS);
    for n in 0..CONNECTIONS {
        let mut peer = connect_raw(hub.addr).await;
        // A failed write is a peer the hub already refused: that is fine.
        let _ = peer.write_all(&hostile_bytes(n % 6, n)).await;
        peers.push(peer);
    }
    // The hub serves while they hang on, with the limit it was given.
    let mut subscriber = connect(hub.addr).await;
    subscribe(&mut subscriber, "5", "5").await;
    let info = hub_common::info(&mut subscriber).await;
    assert_eq!(info["limits"]["max_frame_bytes"], serde_json::json!(LIMIT));
    let mut publisher = connect(hub.addr).await;
    let frame = Frame::builder(status(5))
        .file("ok", pattern(512 * 1024, 5))
        .build();
    send(&mut publisher, frame.clone()).await;
    assert!(recv(&mut subscriber).await == frame);

    // Refused peers were told why and closed; the others are still waiting for their bytes.
    let mut refused = 0;
    for (n, peer) in peers.iter_mut().enumerate() {
        if matches!(n % 6, 2..=4) {
            let error = expect_err_and_close(peer, "an absurd length").await;
            assert!(error.contains("exceeds the limit"), "ERR {error}");
            refused += 1;
        }
    }
    assert_eq!(refused, CONNECTIONS / 2);
    let peak = hub.peak_rss_kib();
    assert!(
        peak < BOUND_KIB,
        "tej-hub peaked at {peak} KiB with {CONNECTIONS} hostile connections"
    );
    drop(peers);

    // Closed, the survivors free their buffers; the hub keeps serving.
    let after = Frame::message(status(5), "after");
    send(&mut publisher, after.clone()).await;
    assert_eq!(recv(&mut subscriber).await, after);
    let peak = hub.peak_rss_kib();
    assert!(peak < BOUND_KIB, "tej-hub peaked at {peak} KiB");
    eprintln!("tej-hub peak RSS: {peak} KiB");
}

/// The stalled frame: one file `f` of 60,000 bytes announced, 500 of them sent (521
/// bytes in all), then nothing.
fn stalled_frame() -> Vec<u8> {
    let mut wire = file_head(b"f", 60_000);
    wire[0] = 0x89;
    wire.extend_from_slice(&[0x78; 500]);
    wire
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_timeout_fires_on_its_own_with_a_minimum_rate_set() {
    // The rate window (2 s) passes first with the rate met (521 bytes); the stall timeout (3 s)
    // is then the first limit reached. The old code restarted the stall clock with each rate
    // window, so the rate cut it at 4 s instead.
    let hub = start_hub(HubConfig {
        stall_timeout: 3,
        min_rate_bytes: 32,
        min_rate_window: 2,
        ..test_config()
    });
    let mut raw = connect_raw(hub.local_addr()).await;
    write(&mut raw, &stalled_frame()).await;
    let error = expect_err_and_close(&mut raw, "a stalled frame").await;
    assert_eq!(error, "stall timeout");
    stop_hub(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minimum_rate_fires_on_its_own_with_a_stall_timeout_set() {
    let hub = start_hub(HubConfig {
        stall_timeout: 4,
        min_rate_bytes: 32,
        min_rate_window: 2,
        ..test_config()
    });
    let addr = hub.local_addr();
    // All at once, below the rate: the first window cuts it, long before the stall timeout.
    let silent = async {
        let mut raw = connect_raw(addr).await;
        write(&mut raw, &stalled_frame()[..40]).await;
        let error = expect_err_and_close(&mut raw, "a slow frame").await;
        assert_eq!(error, "sending below the minimum rate of 32 bytes/s");
    };
    // A byte every 250 ms: never stalled, always below the rate. Reading and writing run
    // together so that the trickle stops when the hub answers (a write after its close could
    // reset the connection before the answer is read).
    let trickle = async {
        let raw = connect_raw(addr).await;
        let (mut reader, mut writer) = raw.into_split();
        let wire = stalled_frame();
        let trickled = async {
            for byte in &wire {
                if writer.write_all(&[*byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            std::future::pending::<()>().await;
        };
        let mut answer = Vec::new();
        tokio::select! {
            () = trickled => unreachable!("the trickle waits forever at its end"),
            read = within(PATIENCE, "the hub's answer", reader.read_to_end(&mut answer)) => {
                read.expect("read the hub's answer");
            }
        }
        let frames = hub_common::decode_all(&answer);
        assert_eq!(frames.len(), 1, "one ERR frame, got {frames:?}");
        let text = hub_common::reply_text(&frames[0], "a trickled frame");
        assert_eq!(text, "ERR sending below the minimum rate of 32 bytes/s");
    };
    tokio::join!(silent, trickle);
    stop_hub(hub).await;
}

/// `wire` as hex digits, spaces ignored.
fn hex(wire: &str) -> Vec<u8> {
    let digits: Vec<u8> = wire.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).expect("hex is ascii");
            u8::from_str_radix(pair, 16).expect("hex digits")
        })
        .collect()
}

/// Sends `wire`, shuts down the write side, and returns the hub's `ERR` reason.
async fn truncated_reply(addr: std::net::SocketAddr, wire: &[u8]) -> String {
    let mut raw = connect_raw(addr).await;
    write(&mut raw, wire).await;
    raw.shutdown().await.expect("shut down the write side");
    expect_err_and_close(&mut raw, "a truncated frame").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_replies_and_logs_carry_the_numbers_the_client_sent() {
    let hub = BinHub::start(&[]);
    // A 2 MiB message announced (so the frame is streamed), 118 bytes of it sent.
    let mut streamed = hex("85 01 0000000000000000 0000000000200000");
    streamed.extend_from_slice(&[0x6d; 100]);
    // The same with a 1000-byte message (held whole): the count was right there already.
    let mut whole = hex("85 01 0000000000000000 00000000000003e8");
    whole.extend_from_slice(&[0x6d; 100]);
    // 1.7 billion files announced, 10 bytes sent.
    let files = hex("a1 01 0000000066666664");
    for (wire, sent) in [(&streamed, 118), (&whole, 118), (&files, 10)] {
        assert_eq!(
            truncated_reply(hub.addr, wire).await,
            format!("stream ended inside a frame after {sent} bytes of it")
        );
    }
    let logged = |sent: usize| {
        // The warning's `error` field (the `disconnected` line repeats it as its reason).
        let field = format!("error=stream ended inside a frame after {sent} bytes of it");
        hub.logs()
            .iter()
            .filter(|line| line.contains(&field))
            .count()
    };
    let deadline = Instant::now() + PATIENCE;
    while (logged(118), logged(10)) != (2, 1) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!((logged(118), logged(10)), (2, 1), "{:#?}", hub.logs());

    // The client's digits, not the parser's saturated u64; clipped like other echoes.
    let mut conn = connect(hub.addr).await;
    assert_eq!(
        control(&mut conn, "SUB 99999999999999999999").await,
        "ERR code 99999999999999999999 out of range 0-127"
    );
    assert_eq!(
        control(&mut conn, &format!("SUB 1-{}", "9".repeat(40))).await,
        format!("ERR code {}... out of range 0-127", "9".repeat(32))
    );
}
