//! tej-hub relaying large frames by cut-through, over real sockets on `127.0.0.1`: frames from
//! several publishers never interleave on a subscriber's stream; the slow-consumer policies
//! (`block` paces publishers and cuts a stuck subscriber after its timeout, `drop` skips whole
//! frames for the slow one only, `disconnect` cuts at once); a publisher that goes away or
//! trickles in the middle of a streamed frame closes the subscribers receiving it and nobody else;
//! a publisher the hub holds back is never taken for a stalled one; the hub's peak memory while a
//! slow subscriber paces a large frame.

#[path = "common/hub.rs"]
mod hub_common;

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use futures_util::StreamExt;
use tej_hub::hub::config::HubConfig;
use tej_hub::{Frame, Limits, TejCodec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use hub_common::{
    connect, connect_raw, connect_small_window, control, head, info, pattern, read_at_least, recv,
    send, start_hub, status, stop_hub, subscribe, test_config, within, BinHub, Conn, MIB, PATIENCE,
};

/// A framed connection that accepts frames up to 512 MiB.
async fn connect_large(addr: std::net::SocketAddr) -> Conn {
    let stream = connect_raw(addr).await;
    Framed::new(
        stream,
        TejCodec::new(Limits {
            max_frame_bytes: 512 * MIB as u64,
            max_message_bytes: 512 * MIB as u64,
            ..Limits::default()
        }),
    )
}

/// A frame carrying one file of `len` pattern bytes and the message `label`.
fn file_frame(code: u8, label: &str, len: usize, seed: u64) -> Frame {
    Frame::builder(status(code))
        .file(format!("{label}.bin"), pattern(len, seed))
        .message(label.to_owned())
        .build()
}

/// Reads frames from a framed subscriber that does not read for now: `conn` wrapped around a
/// raw socket.
fn framed(stream: TcpStream) -> Conn {
    Framed::new(stream, TejCodec::default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_frames_from_several_publishers_never_interleave() {
    const LARGE: usize = 5 * MIB;
    let hub = start_hub(test_config());
    let addr = hub.local_addr();
    let mut subscriber = connect_large(addr).await;
    subscribe(&mut subscriber, "40", "40").await;

    let publish = |label: &'static str, frames: Vec<Frame>| async move {
        let mut publisher = connect(addr).await;
        for frame in frames {
            send(&mut publisher, frame).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(publisher);
        label
    };
    let a: Vec<Frame> = (0..3)
        .map(|n| file_frame(40, &format!("a{n}"), LARGE, n))
        .collect();
    let b: Vec<Frame> = (0..3)
        .map(|n| file_frame(40, &format!("b{n}"), LARGE + 1, 10 + n))
        .collect();
    let small: Vec<Frame> = (0..50)
        .map(|n| Frame::message(status(40), format!("s{n}")))
        .collect();
    let expected: Vec<Frame> = a.iter().chain(&b).chain(&small).cloned().collect();
    let publishers = [
        tokio::spawn(publish("a", a)),
        tokio::spawn(publish("b", b)),
        tokio::spawn(publish("s", small)),
    ];

    // Every frame arrives whole (the decoder would fail on interleaved bytes), once, and each
    // publisher's frames in the order sent.
    let mut last_seen = std::collections::HashMap::new();
    for _ in 0..expected.len() {
        let got = recv(&mut subscriber).await;
        let index = expected
            .iter()
            .position(|frame| *frame == got)
            .unwrap_or_else(|| panic!("a frame arrived changed: {}", got.message.len()));
        let label = String::from_utf8_lossy(&got.message).into_owned();
        let (source, seq) = label.split_at(1);
        let seq: usize = seq.parse().expect("sequence number");
        if let Some(previous) = last_seen.insert(source.to_owned(), seq) {
            assert!(
                seq > previous,
                "{source}: {seq} after {previous} (frame {index})"
            );
        }
    }
    for publisher in publishers {
        within(PATIENCE, "a publisher", publisher)
            .await
            .expect("publisher task");
    }
    stop_hub(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_cuts_a_stuck_subscriber_after_its_timeout_and_never_the_held_publisher() {
    const FRAMES: usize = 12;
    const SIZE: usize = 2 * MIB;
    // Tight clocks: a publisher held back for the whole slow-consumer timeout would be cut by the
    // stall timeout or the minimum rate if the hub counted its pause against it.
    let hub = start_hub(HubConfig {
        max_pending_bytes: MIB as u64,
        slow_consumer_timeout: 3,
        stall_timeout: 1,
        min_rate_bytes: MIB as u64,
        min_rate_window: 1,
        ..test_config()
    });
    let addr = hub.local_addr();
    let mut stuck = framed(connect_small_window(addr).await);
    subscribe(&mut stuck, "41", "41").await;
    let mut healthy = connect(addr).await;
    subscribe(&mut healthy, "41", "41").await;
    let frames: Vec<Frame> = (0..FRAMES)
        .map(|n| file_frame(41, &format!("{n}"), SIZE, 20 + n as u64))
        .collect();
    let sent = frames.clone();
    let publisher = tokio::spawn(async move {
        let mut publisher = connect(addr).await;
        for frame in sent {
            within(Duration::from_secs(20), "a held-back send", async {
                futures_util::SinkExt::send(&mut publisher, frame).await
            })
            .await
            .expect("the publisher is paced, never cut");
        }
        publisher
    });
    for (n, frame) in frames.iter().enumerate() {
        let got = within(Duration::from_secs(20), "a frame", healthy.next()).await;
        match got {
            Some(Ok(got)) => assert!(got == *frame, "healthy: frame {n} changed"),
            other => panic!("healthy subscriber: frame {n}: {other:?}"),
        }
    }
    let mut publisher = within(PATIENCE, "the publisher", publisher)
        .await
        .expect("publisher task");
    // The stuck one was cut (a partial frame at most, then the end).
    within(PATIENCE, "the stuck subscriber to be closed", async {
        while let Some(Ok(_)) = stuck.next().await {}
    })
    .await;
    let info = info(&mut publisher).await;
    assert_eq!(info["hub"]["slow_consumers"], serde_json::json!(1));
    assert_eq!(info["counters"]["frames_in"], serde_json::json!(FRAMES + 1));
    stop_hub(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_skips_whole_frames_for_the_slow_subscriber_only() {
    const FRAMES: usize = 40;
    const SIZE: usize = 256 * 1024;
    let hub = start_hub(HubConfig {
        max_pending_bytes: MIB as u64,
        ..test_config()
    });
    let addr = hub.local_addr();
    let mut slow = framed(connect_small_window(addr).await);
    assert_eq!(control(&mut slow, "SLOW drop").await, "OK SLOW drop");
    subscribe(&mut slow, "42", "42").await;
    let mut healthy = connect(addr).await;
    subscribe(&mut healthy, "42", "42").await;
    let frames: Vec<Frame> = (0..FRAMES)
        .map(|n| file_frame(42, &format!("{n}"), SIZE, 40 + n as u64))
        .collect();

    // The publisher is never held back by the slow one: under `block` it would wait for the
    // 30 s slow-consumer timeout and this would time out.
    let mut publisher = connect(addr).await;
    for (n, frame) in frames.iter().enumerate() {
        send(&mut publisher, frame.clone()).await;
        assert!(
            recv(&mut healthy).await == *frame,
            "healthy: frame {n} changed"
        );
    }

    // The slow one reads now: whole frames, in order, some missing — and INFO counts exactly
    // the missing ones.
    assert_eq!(
        futures_util::SinkExt::send(&mut slow, hub_common::control_frame("INFO"))
            .await
            .ok(),
        Some(())
    );
    let mut received = Vec::new();
    let info = loop {
        let got = recv(&mut slow).await;
        if got.status.code() == 127 {
            let text = hub_common::reply_text(&got, "INFO");
            let json = text.strip_prefix("OK INFO ").expect("an INFO reply");
            break serde_json::from_str::<serde_json::Value>(json).expect("INFO JSON");
        }
        let seq: usize = String::from_utf8_lossy(&got.message)
            .parse()
            .expect("sequence number");
        assert!(got == frames[seq], "slow: frame {seq} changed");
        assert!(
            received.last().is_none_or(|&last| seq > last),
            "slow: out of order"
        );
        received.push(seq);
    };
    let dropped = info["dropped_frames"].as_u64().expect("dropped_frames");
    assert!(dropped > 0, "nothing was dropped for the slow subscriber");
    assert_eq!(received.len() as u64 + dropped, FRAMES as u64);
    assert_eq!(info["slow_consumer"], "drop");
    assert_eq!(info["hub"]["dropped_frames"], serde_json::json!(dropped));
    stop_hub(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_chosen_by_command_cuts_at_once() {
    const FRAMES: usize = 40;
    let hub = start_hub(HubConfig {
        max_pending_bytes: MIB as u64,
        ..test_config()
    });
    let addr = hub.local_addr();
    let mut slow = framed(connect_small_window(addr).await);
    assert_eq!(
        control(&mut slow, "SLOW disconnect").await,
        "OK SLOW disconnect"
    );
    subscribe(&mut slow, "43", "43").await;
    let mut publisher = connect(addr).await;
    for n in 0..FRAMES {
        send(
            &mut publisher,
            file_frame(43, &format!("{n}"), 256 * 1024, n as u64),
        )
        .await;
    }
    let mut err = None;
    within(PATIENCE, "the slow subscriber to be closed", async {
        while let Some(Ok(frame)) = slow.next().await {
            if frame.status.code() == 127 {
                err = Some(String::from_utf8_lossy(&frame.message).into_owned());
            }
        }
    })
    .await;
    assert_eq!(err.as_deref(), Some("ERR slow consumer"));
    let info = info(&mut publisher).await;
    assert_eq!(info["hub"]["slow_consumers"], serde_json::json!(1));
    stop_hub(hub).await;
}

/// The head of a frame on `code` carrying one file of `len` bytes, up to its data.
fn file_frame_head(code: u8, len: u64) -> BytesMut {
    let mut bytes = head(0x80 | code, 1, 1);
    bytes.put_u16(4);
    bytes.put_slice(b"part");
    bytes.put_u64(len);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_gone_mid_frame_closes_only_the_subscribers_receiving_it() {
    let hub = start_hub(test_config());
    let addr = hub.local_addr();
    let mut receiving = connect(addr).await;
    subscribe(&mut receiving, "44", "44").await;
    let mut other = connect(addr).await;
    subscribe(&mut other, "45", "45").await;
    let mut small = connect(addr).await;

    // Half of a 10 MiB file, streamed on to the subscriber, then the publisher vanishes.
    let mut publisher = connect_raw(addr).await;
    publisher
        .write_all(&file_frame_head(44, 10 * MIB as u64))
        .await
        .expect("write the head");
    publisher
        .write_all(&pattern(5 * MIB, 7))
        .await
        .expect("write half the data");
    let mut raw = receiving.into_inner();
    let seen = read_at_least(&mut raw, 4 * MIB, "the publisher went").await;
    drop(publisher);
    // The rest of the first half, then the end: nothing that could pass for the frame's end.
    let rest = within(PATIENCE, "the subscriber to be closed", async {
        let mut rest = Vec::new();
        raw.read_to_end(&mut rest).await.map(|_| rest)
    })
    .await
    .unwrap_or_default();
    assert!(
        seen + rest.len() < 10 * MIB,
        "the subscriber got {} bytes of a 10 MiB frame",
        seen + rest.len()
    );

    // Everybody else carries on.
    for n in 0..20 {
        let frame = Frame::message(status(45), format!("small {n}"));
        send(&mut small, frame.clone()).await;
        assert_eq!(recv(&mut other).await, frame);
    }
    let mut again = connect(addr).await;
    subscribe(&mut again, "44", "44").await;
    let frame = file_frame(44, "after", 3 * MIB, 9);
    send(&mut small, frame.clone()).await;
    assert!(recv(&mut again).await == frame, "code 44 after the abort");
    stop_hub(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_publisher_is_cut_with_its_receivers() {
    let hub = start_hub(HubConfig {
        min_rate_bytes: 64 * 1024,
        min_rate_window: 1,
        ..test_config()
    });
    let addr = hub.local_addr();
    let mut receiving = connect(addr).await;
    subscribe(&mut receiving, "46", "46").await;
    let mut publisher = connect_raw(addr).await;
    publisher
        .write_all(&file_frame_head(46, 4 * MIB as u64))
        .await
        .expect("write the head");
    publisher
        .write_all(&pattern(2 * MIB, 3))
        .await
        .expect("write half the data");
    // Then 1 KiB every 100 ms: 10 KiB/s, far below 64 KiB/s.
    let reason = within(PATIENCE, "the trickling publisher to be cut", async {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if publisher.write_all(&[0u8; 1024]).await.is_err() {
                break;
            }
        }
        hub_common::expect_err_and_close(&mut publisher, "a trickling publisher").await
    })
    .await;
    assert!(reason.contains("minimum rate"), "{reason}");
    within(PATIENCE, "the receiving subscriber to be closed", async {
        while let Some(Ok(_)) = receiving.next().await {}
    })
    .await;
    stop_hub(hub).await;
}

/// The peak memory of the hub binary (default settings: `block`, 16 MiB queues) while a
/// subscriber reading at a fraction of the publisher's speed receives a 96 MiB frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_paces_a_large_frame_to_a_slow_reader_in_bounded_memory() {
    const SIZE: usize = 96 * MIB;
    const READ_RATE: usize = 48 * MIB; // per second: a 2 s read at least
    let hub = BinHub::start(&[]);
    let mut subscriber = connect(hub.addr).await;
    subscribe(&mut subscriber, "47", "47").await;
    let mut raw = subscriber.into_inner();
    let frame = file_frame(47, "big", SIZE, 5);
    let wire = hub_common::encode(&frame);
    let mut publisher = connect_raw(hub.addr).await;
    let sent = wire.clone();
    let writer = tokio::spawn(async move { publisher.write_all(&sent).await });

    // Read ~64 KiB at a time, pausing so that the rate stays under READ_RATE.
    let mut received = BytesMut::with_capacity(wire.len());
    let started = tokio::time::Instant::now();
    within(Duration::from_secs(30), "the slow read", async {
        let mut buf = vec![0u8; 64 * 1024];
        while received.len() < wire.len() {
            let n = raw.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed after {} bytes", received.len());
            received.extend_from_slice(&buf[..n]);
            let due = Duration::from_secs_f64(received.len() as f64 / READ_RATE as f64);
            tokio::time::sleep_until(started + due).await;
        }
    })
    .await;
    within(PATIENCE, "the publisher", writer)
        .await
        .expect("writer task")
        .expect("publish");
    assert!(received[..] == wire[..], "the frame changed on the way");
    let peak_mib = hub.peak_rss_kib() / 1024;
    eprintln!("hub peak RSS {peak_mib} MiB relaying {} MiB", SIZE / MIB);
    assert!(
        peak_mib < 64,
        "the hub's peak RSS was {peak_mib} MiB for a {} MiB frame",
        SIZE / MIB
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_dropped_while_held_never_reaches_the_wire_in_part() {
    // A streams a frame to the subscriber; B's streamed frame waits behind it, outgrows the
    // subscriber's queue and is dropped (policy drop); A's frame ends while B's is still
    // arriving: the rest of B's frame must not follow on the subscriber's stream.
    let hub = start_hub(HubConfig {
        max_pending_bytes: 4 * MIB as u64,
        ..test_config()
    });
    let addr = hub.local_addr();
    let mut subscriber = connect_large(addr).await;
    assert_eq!(control(&mut subscriber, "SLOW drop").await, "OK SLOW drop");
    subscribe(&mut subscriber, "48", "48").await;
    let frame_a = file_frame(48, "a", 3 * MIB, 1);
    let wire_a = hub_common::encode(&frame_a);
    let frame_b = file_frame(48, "b", 8 * MIB, 2);
    let wire_b = hub_common::encode(&frame_b);
    let mut a = connect_raw(addr).await;
    let mut b = connect_raw(addr).await;

    let reader = tokio::spawn(async move {
        let mut frames = Vec::new();
        while frames.len() < 2 {
            frames.push(recv(&mut subscriber).await);
        }
        (frames, subscriber)
    });
    a.write_all(&wire_a[..MIB]).await.expect("A's first part");
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.write_all(&wire_b[..6 * MIB])
        .await
        .expect("B's first part");
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.write_all(&wire_a[MIB..]).await.expect("A's rest");
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.write_all(&wire_b[6 * MIB..]).await.expect("B's rest");
    let after = Frame::message(status(48), "after");
    b.write_all(&hub_common::encode(&after))
        .await
        .expect("B's next frame");

    let (frames, mut subscriber) = within(PATIENCE, "the subscriber's frames", reader)
        .await
        .expect("reader task");
    assert!(frames[0] == frame_a, "A's frame changed");
    assert_eq!(frames[1], after, "B's next frame");
    let info = info(&mut subscriber).await;
    assert_eq!(info["dropped_frames"], serde_json::json!(1));
    stop_hub(hub).await;
}
