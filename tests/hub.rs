//! tej-hub over real sockets on `127.0.0.1`: routing by status code between several publishers
//! and subscribers, echo, ordered fan-out under load, the control channel (`SUB`, `UNSUB`,
//! `ECHO`, `INFO` and their errors), pings, byte-identical relay of any version, and 1,000
//! subscribers on one code. Every hub runs in-process on port 0.

#[path = "common/hub.rs"]
mod hub_common;

use std::collections::HashMap;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tej_hub::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use hub_common::{
    connect, connect_raw, control, control_frame, encode, expect_silence, feed, flush, info,
    open_files_limit, pattern, recv, send, start_hub, status, stop_hub, subscribe, subscriptions,
    test_config, within, Conn, PATIENCE,
};

/// How long a connection must stay silent to show that nothing more is coming.
const QUIET: Duration = Duration::from_millis(300);

/// Who published a frame of these tests: the `P<n>` before the first space of its message.
fn publisher_of(frame: &Frame) -> String {
    let text = String::from_utf8_lossy(&frame.message);
    text.split(' ').next().unwrap_or_default().to_owned()
}

/// What one receiver of [`routes_by_code_between_many_peers`] should get.
struct Receiver {
    name: &'static str,
    codes: &'static [u8],
    /// The publisher this connection is, if any.
    publisher: Option<&'static str>,
}

/// The frames `receiver` should get, per publisher, in order: those on its codes, except its own.
fn expected_for(
    receiver: &Receiver,
    published: &[(&'static str, Vec<Frame>)],
) -> HashMap<String, Vec<Frame>> {
    let mut expected = HashMap::new();
    for (name, frames) in published {
        if receiver.publisher == Some(*name) {
            continue;
        }
        let mine: Vec<Frame> = frames
            .iter()
            .filter(|f| receiver.codes.contains(&f.status.code()))
            .cloned()
            .collect();
        if !mine.is_empty() {
            expected.insert((*name).to_owned(), mine);
        }
    }
    expected
}

/// Reads `count` frames and groups them by publisher, keeping each publisher's order.
async fn receive_grouped(conn: &mut Conn, count: usize) -> HashMap<String, Vec<Frame>> {
    let mut got: HashMap<String, Vec<Frame>> = HashMap::new();
    for _ in 0..count {
        let frame = recv(conn).await;
        got.entry(publisher_of(&frame)).or_default().push(frame);
    }
    got
}

/// A publisher's frames: 20 rounds on codes 5, 6 and 8 (nobody subscribes to 8), then an end
/// marker on each of 5, 6 and 7.
fn publications(name: &str) -> Vec<Frame> {
    let mut frames = Vec::new();
    for seq in 0..20u64 {
        for code in [5u8, 6, 8] {
            let builder = Frame::builder(status(code)).message(format!("{name} {code} {seq}"));
            let builder = if seq % 4 == 0 {
                builder.file(
                    format!("{name}-{seq}.bin"),
                    pattern(100 + seq as usize, seq),
                )
            } else {
                builder
            };
            frames.push(builder.build());
        }
    }
    for code in [5u8, 6, 7] {
        frames.push(Frame::message(status(code), format!("{name} END {code}")));
    }
    frames
}

async fn publish_all(conn: &mut Conn, frames: &[Frame]) {
    for frame in frames {
        feed(conn, frame.clone()).await;
    }
    flush(conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_code_between_many_peers() {
    let hub = start_hub(test_config());
    let addr = hub.local_addr();

    let receivers = [
        Receiver {
            name: "A",
            codes: &[5],
            publisher: None,
        },
        Receiver {
            name: "B",
            codes: &[6],
            publisher: None,
        },
        Receiver {
            name: "C",
            codes: &[5, 6],
            publisher: None,
        },
        Receiver {
            name: "D",
            codes: &[7],
            publisher: None,
        },
        // A publisher that also subscribes: it gets the other publisher's frames, not its own.
        Receiver {
            name: "P1",
            codes: &[5],
            publisher: Some("P1"),
        },
    ];
    let mut a = connect(addr).await;
    subscribe(&mut a, "5", "5").await;
    let mut b = connect(addr).await;
    subscribe(&mut b, "6", "6").await;
    let mut c = connect(addr).await;
    subscribe(&mut c, "6,5", "5-6").await;
    let mut d = connect(addr).await;
    subscribe(&mut d, "7", "7").await;
    let mut p1 = connect(addr).await;
    subscribe(&mut p1, "5", "5").await;
    let mut p2 = connect(addr).await;

    let published = vec![("P1", publications("P1")), ("P2", publications("P2"))];
    tokio::join!(
        publish_all(&mut p1, &published[0].1),
        publish_all(&mut p2, &published[1].1),
    );

    let mut conns = [&mut a, &mut b, &mut c, &mut d, &mut p1];
    for (conn, receiver) in conns.iter_mut().zip(&receivers) {
        let expected = expected_for(receiver, &published);
        let count = expected.values().map(Vec::len).sum();
        let got = receive_grouped(conn, count).await;
        assert!(
            got == expected,
            "{} got the wrong frames: {:?}",
            receiver.name,
            got.iter().map(|(p, f)| (p, f.len())).collect::<Vec<_>>()
        );
    }
    // Nothing else is on its way: not even P1's own frames to P1.
    tokio::join!(
        expect_silence(&mut a, QUIET),
        expect_silence(&mut b, QUIET),
        expect_silence(&mut c, QUIET),
        expect_silence(&mut d, QUIET),
        expect_silence(&mut p1, QUIET),
        expect_silence(&mut p2, QUIET),
    );

    // With echo on, P1 gets its own frames, but only on the codes it subscribes to.
    assert_eq!(control(&mut p1, "  echo ON\n").await, "OK ECHO on");
    let echo_5 = Frame::message(status(5), "P1 echo 5");
    let echo_6 = Frame::message(status(6), "P1 echo 6");
    let echo_end = Frame::message(status(5), "P1 echo end");
    publish_all(&mut p1, &[echo_5.clone(), echo_6.clone(), echo_end.clone()]).await;
    assert_eq!(recv(&mut p1).await, echo_5);
    assert_eq!(recv(&mut p1).await, echo_end, "P1 got its frame on code 6");
    assert_eq!(recv(&mut c).await, echo_5);
    assert_eq!(recv(&mut c).await, echo_6);
    assert_eq!(recv(&mut c).await, echo_end);
    assert_eq!(recv(&mut a).await, echo_5);
    assert_eq!(recv(&mut a).await, echo_end);
    assert_eq!(recv(&mut b).await, echo_6);
    assert_eq!(info(&mut p1).await["echo"], serde_json::json!(true));

    // Echo off again: P1 is left out once more.
    assert_eq!(control(&mut p1, "ECHO off").await, "OK ECHO off");
    let quiet = Frame::message(status(5), "P1 quiet");
    publish_all(&mut p1, std::slice::from_ref(&quiet)).await;
    assert_eq!(recv(&mut a).await, quiet);
    expect_silence(&mut p1, QUIET).await;

    stop_hub(hub).await;
}

/// Frame `seq` of publisher `p` in the load test: a message naming both, and on every tenth
/// frame a file whose size and bytes depend on both.
fn load_frame(p: usize, seq: usize) -> Frame {
    let builder = Frame::builder(status(10)).message(format!("{p}:{seq}"));
    if seq % 10 == 0 {
        builder
            .file(
                format!("p{p}-{seq}"),
                pattern(seq % 3000, (p * 10_000 + seq) as u64),
            )
            .build()
    } else {
        builder.build()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_reaches_every_subscriber_once_in_order() {
    const PUBLISHERS: usize = 10;
    const FRAMES: usize = 1000;
    const SUBSCRIBERS: usize = 5;
    let hub = start_hub(test_config());
    let addr = hub.local_addr();

    let mut subscribers = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let mut conn = connect(addr).await;
        subscribe(&mut conn, "10", "10").await;
        subscribers.push(tokio::spawn(async move {
            let mut next = [0usize; PUBLISHERS];
            for _ in 0..PUBLISHERS * FRAMES {
                let frame = recv(&mut conn).await;
                let text = String::from_utf8_lossy(&frame.message).into_owned();
                let (p, seq) = text
                    .split_once(':')
                    .and_then(|(p, s)| Some((p.parse::<usize>().ok()?, s.parse::<usize>().ok()?)))
                    .unwrap_or_else(|| panic!("not a load frame: {text:?}"));
                assert!(p < PUBLISHERS, "unknown publisher in {text:?}");
                assert_eq!(seq, next[p], "publisher {p}: out of order or lost");
                assert!(frame == load_frame(p, seq), "frame {p}:{seq} changed");
                next[p] += 1;
            }
            expect_silence(&mut conn, QUIET).await;
            next
        }));
    }

    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            tokio::spawn(async move {
                let mut conn = connect(addr).await;
                for seq in 0..FRAMES {
                    feed(&mut conn, load_frame(p, seq)).await;
                    if seq % 50 == 49 {
                        flush(&mut conn).await;
                    }
                }
                flush(&mut conn).await;
                // Publishers never get their own frames.
                expect_silence(&mut conn, QUIET).await;
                conn
            })
        })
        .collect();

    let mut kept = Vec::new();
    for publisher in publishers {
        kept.push(
            within(Duration::from_secs(40), "a publisher", publisher)
                .await
                .expect("publisher task"),
        );
    }
    for subscriber in subscribers {
        let next = within(Duration::from_secs(40), "a subscriber", subscriber)
            .await
            .expect("subscriber task");
        assert_eq!(next, [FRAMES; PUBLISHERS]);
    }
    drop(kept);
    stop_hub(hub).await;
}

#[tokio::test]
async fn control_commands_and_their_errors() {
    let hub = start_hub(test_config());
    let mut conn = connect(hub.local_addr()).await;

    // SUB answers with the normalized list; subscribing twice is harmless.
    subscribe(&mut conn, "5", "5").await;
    subscribe(&mut conn, " 9 5, 8,7\n", "5,7-9").await;
    assert_eq!(control(&mut conn, "sub 5").await, "OK SUB 5");
    assert_eq!(subscriptions(&mut conn).await, vec![5, 7, 8, 9]);

    // Every faulty list is refused with ERR and changes nothing.
    for command in [
        "SUB 10 2",
        "SUB 127",
        "SUB 1-3",
        "SUB 126-127",
        "SUB 128",
        "SUB 10 300",
        "SUB 99999999999999999999999",
        "SUB 12-11",
        "SUB",
        "SUB  ,, ",
        "SUB ten",
        "SUB 10-",
        "SUB * 2",
        "UNSUB 2",
        "UNSUB 7-5",
        "UNSUB 128",
        "UNSUB",
    ] {
        let reply = control(&mut conn, command).await;
        assert!(reply.starts_with("ERR "), "{command:?} answered {reply:?}");
        assert_eq!(
            subscriptions(&mut conn).await,
            vec![5, 7, 8, 9],
            "{command:?} changed the subscriptions"
        );
    }

    // UNSUB: normalized; unsubscribing what is not subscribed is harmless.
    assert_eq!(control(&mut conn, "UNSUB 8,7").await, "OK UNSUB 7-8");
    assert_eq!(control(&mut conn, "unsub 7 100").await, "OK UNSUB 7,100");
    assert_eq!(subscriptions(&mut conn).await, vec![5, 9]);

    // `*` is every code but 2 and 127.
    assert_eq!(control(&mut conn, "SUB *").await, "OK SUB 0-1,3-126");
    let all: Vec<u64> = (0..=126).filter(|c| *c != 2).collect();
    assert_eq!(subscriptions(&mut conn).await, all);
    assert_eq!(control(&mut conn, "UNSUB *").await, "OK UNSUB 0-1,3-126");
    assert_eq!(subscriptions(&mut conn).await, Vec::<u64>::new());

    // Anything else is an error, and the connection stays open.
    for command in [
        "FOO",
        "",
        "   \n",
        "ECHO maybe",
        "ECHO",
        "INFO please",
        "SUBSCRIBE 5",
        "S\u{e9}B 5",
    ] {
        let reply = control(&mut conn, command).await;
        assert!(reply.starts_with("ERR "), "{command:?} answered {reply:?}");
    }
    let mut bytes = BytesMut::new();
    bytes.put_slice(b"SUB 5\xff");
    send(&mut conn, Frame::message(status(127), bytes.freeze())).await;
    let reply = hub_common::reply_text(&recv(&mut conn).await, "non-UTF-8 SUB");
    assert!(
        reply.starts_with("ERR "),
        "non-UTF-8 SUB answered {reply:?}"
    );
    let with_file = Frame::builder(status(127))
        .file("x", Bytes::from_static(b"1"))
        .message("SUB 5")
        .build();
    send(&mut conn, with_file).await;
    let reply = hub_common::reply_text(&recv(&mut conn).await, "SUB with a file");
    assert!(
        reply.starts_with("ERR "),
        "a control frame with files answered {reply:?}"
    );
    assert_eq!(subscriptions(&mut conn).await, Vec::<u64>::new());

    // `SUB 5 2` on a fresh connection subscribes to nothing.
    let mut fresh = connect(hub.local_addr()).await;
    let reply = control(&mut fresh, "SUB 5 2").await;
    assert_eq!(reply, "ERR reserved code 2");
    assert_eq!(subscriptions(&mut fresh).await, Vec::<u64>::new());

    // The default limits: 16 GiB frames streamed past 1 MiB, 16 MiB queues, 30 s for a stuck
    // subscriber or a stalled frame, no idle timeout, no minimum rate, 2 s to authenticate, no
    // connection or ingress limits.
    let info = info(&mut fresh).await;
    assert_eq!(
        info["limits"],
        serde_json::json!({
            "max_frame_bytes": 16u64 << 30,
            "cut_through_bytes": 1 << 20,
            "max_pending_bytes": 16 << 20,
            "slow_consumer_timeout": 30,
            "idle_timeout": 0,
            "stall_timeout": 30,
            "min_rate_bytes": 0,
            "min_rate_window": 10,
            "auth_timeout": 2,
            "max_connections": 0,
            "max_connections_per_ip": 0,
            "max_ingress_bytes_per_sec": 0,
        })
    );
    assert_eq!(info["slow_consumer"], "block");
    assert_eq!(info["user"], serde_json::Value::Null);
    assert_eq!(info["denied_frames"], 0);
    assert_eq!(info["dropped_frames"], 0);
    assert_eq!(info["pending_bytes"], 0);
    stop_hub(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsub_stops_delivery() {
    let hub = start_hub(test_config());
    let mut publisher = connect(hub.local_addr()).await;
    let mut subscriber = connect(hub.local_addr()).await;
    subscribe(&mut subscriber, "5 6", "5-6").await;

    let first = Frame::message(status(5), "first");
    send(&mut publisher, first.clone()).await;
    assert_eq!(recv(&mut subscriber).await, first);

    assert_eq!(control(&mut subscriber, "UNSUB 5").await, "OK UNSUB 5");
    // Published after the OK: never delivered. The marker on 6 comes after it from the same
    // publisher, so the subscriber has seen everything once the marker is there.
    send(&mut publisher, Frame::message(status(5), "after unsub")).await;
    let marker = Frame::message(status(6), "marker");
    send(&mut publisher, marker.clone()).await;
    assert_eq!(recv(&mut subscriber).await, marker);

    // Subscribing again resumes delivery.
    subscribe(&mut subscriber, "5", "5").await;
    let again = Frame::message(status(5), "again");
    send(&mut publisher, again.clone()).await;
    assert_eq!(recv(&mut subscriber).await, again);
    expect_silence(&mut subscriber, QUIET).await;
    stop_hub(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_reports_the_session() {
    let config = tej_hub::hub::config::HubConfig {
        max_frame_bytes: 1 << 20,
        max_pending_bytes: 3 << 20,
        idle_timeout: 3600,
        stall_timeout: 7,
        ..test_config()
    };
    let hub = start_hub(config);
    let mut conn = connect(hub.local_addr()).await;
    let mut other = connect(hub.local_addr()).await;
    let mut third = connect(hub.local_addr()).await;

    let first = info(&mut conn).await;
    assert!(first["version"].is_string(), "{first}");
    assert_eq!(first["echo"], serde_json::json!(false));
    assert_eq!(first["subscriptions"], serde_json::json!([]));
    let limits = &first["limits"];
    assert_eq!(limits["max_frame_bytes"], serde_json::json!(1 << 20));
    assert_eq!(limits["max_pending_bytes"], serde_json::json!(3 << 20));
    assert_eq!(limits["idle_timeout"], serde_json::json!(3600));
    assert_eq!(limits["stall_timeout"], serde_json::json!(7));
    for counter in ["frames_in", "frames_out", "bytes_in", "bytes_out"] {
        assert!(first["counters"][counter].is_u64(), "{counter}: {first}");
    }

    // One session number per connection.
    let sessions: Vec<u64> = [
        first["session"].as_u64(),
        info(&mut other).await["session"].as_u64(),
        info(&mut third).await["session"].as_u64(),
    ]
    .into_iter()
    .map(|s| s.expect("session is an integer"))
    .collect();
    assert!(
        sessions[0] != sessions[1] && sessions[1] != sessions[2] && sessions[0] != sessions[2],
        "sessions {sessions:?}"
    );

    // Subscriptions are sorted; echo shows; counters grow with traffic both ways.
    subscribe(&mut conn, "9,3 100", "3,9,100").await;
    assert_eq!(control(&mut conn, "ECHO on").await, "OK ECHO on");
    send(&mut conn, Frame::ping()).await;
    assert_eq!(recv(&mut conn).await, Frame::ping());
    let relayed = Frame::message(status(9), "relayed");
    send(&mut other, relayed.clone()).await;
    assert_eq!(recv(&mut conn).await, relayed);
    let second = info(&mut conn).await;
    assert_eq!(second["subscriptions"], serde_json::json!([3, 9, 100]));
    assert_eq!(second["echo"], serde_json::json!(true));
    assert_eq!(second["session"], first["session"]);
    let grew = |counter: &str, by: u64| {
        let before = first["counters"][counter].as_u64().unwrap_or(u64::MAX);
        let after = second["counters"][counter].as_u64().unwrap_or(0);
        assert!(
            after >= before + by,
            "{counter} went from {before} to {after}"
        );
    };
    // In: INFO, SUB, ECHO, ping, INFO. Out: INFO, OK SUB, OK ECHO, ping, relayed.
    grew("frames_in", 4);
    grew("bytes_in", 4 * 18);
    grew("frames_out", 4);
    grew("bytes_out", 4 * 18);

    // Hub-wide counters: three connections, and a publication nobody listens to is counted.
    assert_eq!(
        second["hub"]["connections"],
        serde_json::json!(3),
        "{second}"
    );
    assert_eq!(second["hub"]["open_connections"], serde_json::json!(3));
    let unrouted = second["hub"]["unrouted_frames"]
        .as_u64()
        .unwrap_or(u64::MAX);
    send(&mut third, Frame::message(status(42), "nobody")).await;
    // The router handles the publication before the INFO that follows it on the same session.
    let third_info = info(&mut third).await;
    assert_eq!(
        third_info["hub"]["unrouted_frames"],
        serde_json::json!(unrouted + 1),
        "{third_info}"
    );
    assert_eq!(third_info["hub"]["slow_consumers"], serde_json::json!(0));
    stop_hub(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_is_answered_with_the_exact_empty_ping_and_never_relayed() {
    let hub = start_hub(test_config());
    let mut watcher = connect(hub.local_addr()).await;
    subscribe(&mut watcher, "*", "0-1,3-126").await;
    // Code 2 cannot be subscribed to.
    assert!(control(&mut watcher, "SUB 2").await.starts_with("ERR "));

    let mut raw = connect_raw(hub.local_addr()).await;
    let empty_ping: [u8; 18] = {
        let mut bytes = [0u8; 18];
        bytes[0] = 0x82;
        bytes[1] = 1;
        bytes
    };
    assert_eq!(&encode(&Frame::ping())[..], &empty_ping[..]);
    // A plain ping, and pings carrying a file, a message or another version: each is answered
    // with the empty version-1 ping.
    let pings = [
        Frame::ping(),
        Frame::builder(status(2)).message("hello?").build(),
        Frame::builder(status(2))
            .file("f", pattern(1000, 1))
            .version(9)
            .build(),
    ];
    for ping in &pings {
        within(PATIENCE, "write a ping", raw.write_all(&encode(ping)))
            .await
            .expect("write a ping");
        let mut answer = [0u8; 18];
        within(PATIENCE, "the ping answer", raw.read_exact(&mut answer))
            .await
            .expect("read the ping answer");
        assert_eq!(answer, empty_ping, "answer to {ping:?}");
    }
    // Never relayed: the watcher's next frame is the marker published after the pings.
    let marker = Frame::message(status(5), "marker");
    within(PATIENCE, "write", raw.write_all(&encode(&marker)))
        .await
        .expect("write the marker");
    assert_eq!(recv(&mut watcher).await, marker);
    stop_hub(hub).await;
}

/// A frame written by hand: `status_byte`, `version`, files as (name bytes, data), message.
fn handmade(status_byte: u8, version: u8, files: &[(&[u8], &[u8])], message: &[u8]) -> Vec<u8> {
    let mut wire = hub_common::head(status_byte, version, files.len() as u64);
    for (name, data) in files {
        wire.put_u16(name.len() as u16);
        wire.put_slice(name);
        wire.put_u64(data.len() as u64);
        wire.put_slice(data);
    }
    wire.put_u64(message.len() as u64);
    wire.put_slice(message);
    wire.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_frames_byte_for_byte_whatever_their_version() {
    let hub = start_hub(test_config());
    let addr = hub.local_addr();

    // A framed subscriber sees a version-7 frame unchanged.
    let mut framed = connect(addr).await;
    subscribe(&mut framed, "40", "40").await;
    let mut publisher = connect(addr).await;
    let v7 = Frame::builder(status(40))
        .version(7)
        .file("seven", pattern(777, 7))
        .message("version seven")
        .build();
    send(&mut publisher, v7.clone()).await;
    assert_eq!(recv(&mut framed).await, v7);

    // Raw sockets on both sides: the subscriber reads exactly the bytes the publisher wrote.
    let mut subscriber = connect_raw(addr).await;
    let sub = encode(&control_frame("SUB 0 1 3-126"));
    within(PATIENCE, "write SUB", subscriber.write_all(&sub))
        .await
        .expect("write SUB");
    let ok = encode(&control_frame("OK SUB 0-1,3-126"));
    let mut reply = vec![0u8; ok.len()];
    within(PATIENCE, "the SUB reply", subscriber.read_exact(&mut reply))
        .await
        .expect("read the SUB reply");
    assert_eq!(reply, ok.to_vec());

    let big = pattern(300_000, 3);
    let frames: Vec<Vec<u8>> = vec![
        handmade(0x80, 1, &[], b""),
        handmade(0x80 | 126, 7, &[(b"a.txt", b"hello")], b"v7"),
        handmade(0x85, 0, &[(b"", b""), (b"empty", b"")], b""),
        handmade(
            0x86,
            255,
            &[("na\u{ef}ve \u{2713}".as_bytes(), &big[..])],
            &big[..1000],
        ),
        handmade(0x81, 1, &[], &pattern(70_000, 4)),
        handmade(0x80 | 40, 2, &[(b"x", b"y")], b"for both"),
    ];
    let all: Vec<u8> = frames.concat();
    let mut raw_publisher = connect_raw(addr).await;
    // Written in odd-sized pieces, so frames straddle the hub's reads.
    for piece in all.chunks(9_973) {
        within(PATIENCE, "write", raw_publisher.write_all(piece))
            .await
            .expect("publish raw bytes");
    }
    let mut relayed = vec![0u8; all.len()];
    within(
        PATIENCE,
        "the relayed bytes",
        subscriber.read_exact(&mut relayed),
    )
    .await
    .expect("read the relayed frames");
    assert!(relayed == all, "relayed bytes differ from what was sent");

    // The framed subscriber on 40 got the last one as it was written.
    let last = recv(&mut framed).await;
    assert_eq!(&encode(&last)[..], &frames[5][..]);
    stop_hub(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_subscribers_get_one_publication() {
    // Hub and clients share this process: two descriptors per connection.
    let limit = open_files_limit().unwrap_or(1024);
    let wanted = 1000u64;
    let count = wanted.min(limit.saturating_sub(200) / 2) as usize;
    if (count as u64) < wanted {
        eprintln!("open-file limit {limit}: using {count} connections instead of {wanted}");
    }
    assert!(
        count >= 100,
        "open-file limit {limit} is too low for this test"
    );

    let hub = start_hub(test_config());
    let addr = hub.local_addr();
    // Connect one after another (the listen backlog is finite), subscribe all at once.
    let mut conns = Vec::with_capacity(count);
    for _ in 0..count {
        let mut conn = connect(addr).await;
        feed(&mut conn, control_frame("SUB 42")).await;
        conns.push(conn);
    }
    let subscribed: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            tokio::spawn(async move {
                flush(&mut conn).await;
                let reply = hub_common::reply_text(&recv(&mut conn).await, "SUB 42");
                assert_eq!(reply, "OK SUB 42");
                conn
            })
        })
        .collect();
    let mut conns = Vec::with_capacity(count);
    for task in subscribed {
        conns.push(task.await.expect("subscriber task"));
    }

    let mut publisher = connect(addr).await;
    let publication = Frame::builder(status(42))
        .file("all.bin", pattern(10_000, 42))
        .message("to a thousand")
        .build();
    send(&mut publisher, publication.clone()).await;
    let received: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let expected = publication.clone();
            tokio::spawn(async move {
                assert_eq!(recv(&mut conn).await, expected);
            })
        })
        .collect();
    for task in received {
        task.await
            .expect("a subscriber did not get the publication");
    }
    stop_hub(hub).await;
}

/// Publications run flat out on a code while a subscriber subscribes and unsubscribes over and
/// over: its `OK SUB` always comes before the first frame of the code (the soak once saw a frame
/// overtake it when the reply was queued after the subscription became visible).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ok_sub_always_comes_before_the_first_frame_of_the_code() {
    const ROUNDS: usize = 200;
    let hub = start_hub(test_config());
    let addr = hub.local_addr();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooding = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut publisher = connect(addr).await;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && tokio::time::Instant::now() < deadline
            {
                for n in 0..64u64 {
                    feed(&mut publisher, Frame::message(status(11), format!("{n}"))).await;
                }
                flush(&mut publisher).await;
            }
        })
    };
    let mut subscriber = connect(addr).await;
    for round in 0..ROUNDS {
        send(&mut subscriber, control_frame("SUB 11")).await;
        let first = recv(&mut subscriber).await;
        assert_eq!(
            first.status,
            status(127),
            "round {round}: a frame of code 11 came before OK SUB"
        );
        assert_eq!(first.message, "OK SUB 11", "round {round}");
        send(&mut subscriber, control_frame("UNSUB 11")).await;
        // Frames already on their way may come before OK UNSUB.
        within(PATIENCE, "OK UNSUB", async {
            loop {
                let frame = recv(&mut subscriber).await;
                if frame.status == status(127) {
                    assert_eq!(frame.message, "OK UNSUB 11", "round {round}");
                    break;
                }
            }
        })
        .await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flooding.await.expect("the publisher task");
    stop_hub(hub).await;
}
