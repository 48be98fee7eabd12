//! Client and server over real sockets on `127.0.0.1`, port 0: callbacks and their order,
//! concurrent senders, many peers, pings, the idle timeout, protocol errors from raw sockets,
//! sender errors, the `Framed` path and shutdown.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tej_hub::{Client, CodecError, ConnectionConfig, Disconnect, Frame, Limits, SendError};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use common::{
    close_client, expect_client_connected, expect_closed, forwarder, next_client_event,
    spawn_client, start_server, status, within, Event, TestServer, PATIENCE,
};

const MIB: u64 = 1024 * 1024;

/// A byte pattern that differs per position and per seed.
fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

fn encode(frame: &Frame) -> Bytes {
    frame.to_wire().expect("test frames encode")
}

/// A raw socket to `addr` and its local address (the server's name for it).
async fn raw_connect(addr: SocketAddr) -> (TcpStream, SocketAddr) {
    let stream = within(PATIENCE, "connect", TcpStream::connect(addr))
        .await
        .expect("connect to the test server");
    let local = stream.local_addr().expect("local address");
    (stream, local)
}

/// Expects the `connected` event of a new connection and returns that connection's peer.
async fn expect_connected(server: &mut TestServer) -> SocketAddr {
    match server.next_event().await {
        (peer, Event::Connected) => peer,
        (peer, other) => panic!("expected a new connection, got {other:?} from {peer}"),
    }
}

/// Sends `frame` over a running client and expects it back from an echo server.
async fn round_trip(
    connection: &tej_hub::Connection,
    events: &mut tokio::sync::mpsc::UnboundedReceiver<(SocketAddr, Event)>,
    frame: Frame,
) {
    within(PATIENCE, "send", connection.sender().send(frame.clone()))
        .await
        .expect("send on a live connection");
    match next_client_event(events).await {
        Some(Event::Received(echoed)) => assert_eq!(echoed, frame),
        other => panic!("expected the echo, got {other:?}"),
    }
}

#[tokio::test]
async fn echo_round_trip_with_callbacks_in_order() {
    let mut server = start_server(ConnectionConfig::default(), true).await;
    let (handler, mut events) = forwarder(server.addr, false);
    let client = Client::connect(server.addr).await.expect("connect");
    assert_eq!(client.peer_addr(), server.addr);
    let connection = client.spawn(handler);
    expect_client_connected(&mut events).await;

    let frame = Frame::builder(status(9))
        .file("é.txt", pattern(5000, 1))
        .file("", Bytes::new())
        .message("hello")
        .build();
    round_trip(&connection, &mut events, frame.clone()).await;
    assert_eq!(connection.sender().peer_addr(), server.addr);

    // The server saw `connected`, then the frame.
    let peer = expect_connected(&mut server).await;
    match server.next_event_from(peer).await {
        Event::Received(received) => assert_eq!(received, frame),
        other => panic!("expected the frame, got {other:?}"),
    }

    // Closing: the client ends as `Closed`, the server sees `PeerClosed`, each exactly once.
    let reason = close_client(connection).await;
    assert!(matches!(reason, Disconnect::Closed), "{reason:?}");
    assert!(matches!(
        next_client_event(&mut events).await,
        Some(Event::Disconnected(Disconnect::Closed))
    ));
    // The handler is dropped after `disconnected`: nothing more can come.
    assert!(next_client_event(&mut events).await.is_none());

    match server.next_event_from(peer).await {
        Event::Disconnected(Disconnect::PeerClosed) => {}
        other => panic!("expected PeerClosed, got {other:?}"),
    }
    let more = tokio::time::timeout(Duration::from_millis(200), server.events.recv()).await;
    assert!(more.is_err(), "an event after `disconnected`: {more:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_never_interleave() {
    const TASKS: u32 = 8;
    const FRAMES: u32 = 500;
    const FILE_LEN: usize = 100 * 1024;
    let base = pattern(FILE_LEN, 0);
    // The file of frame `seq` of task `task`: the shared pattern framed by both numbers.
    let file_of = move |task: u32, seq: u32| -> Bytes {
        let mut data = BytesMut::with_capacity(FILE_LEN);
        data.put_u32(task);
        data.put_u32(seq);
        data.put_slice(&base[8..FILE_LEN - 8]);
        data.put_u32(seq);
        data.put_u32(task);
        data.freeze()
    };

    let mut server = start_server(ConnectionConfig::default(), false).await;
    let (connection, _client_events) = spawn_client(server.addr, ConnectionConfig::default()).await;
    let peer = expect_connected(&mut server).await;

    let mut senders = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let sender = connection.sender().clone();
        let file_of = file_of.clone();
        senders.spawn(async move {
            for seq in 0..FRAMES {
                let mut frame =
                    Frame::builder(status(10 + task as u8)).message(format!("{task}:{seq}"));
                if seq % 5 == 0 {
                    frame = frame.file(format!("t{task}-{seq}.bin"), file_of(task, seq));
                }
                let frame = frame.build();
                // Half the tasks wait for each write, half only queue and flush now and then.
                if task % 2 == 0 {
                    sender.send(frame).await.expect("send");
                } else {
                    sender.feed(frame).await.expect("feed");
                    if seq % 50 == 49 {
                        sender.flush().await.expect("flush");
                    }
                }
            }
        });
    }

    let mut next_seq = [0u32; TASKS as usize];
    let mut total = 0;
    within(Duration::from_secs(120), "4000 frames", async {
        while total < TASKS * FRAMES {
            let frame = match server.next_event_from(peer).await {
                Event::Received(frame) => frame,
                other => panic!("after {total} frames: {other:?}"),
            };
            let text = std::str::from_utf8(&frame.message).expect("UTF-8 message");
            let (task, seq) = text.split_once(':').expect("task:seq");
            let task: u32 = task.parse().expect("task number");
            let seq: u32 = seq.parse().expect("sequence number");
            assert!(task < TASKS, "task {task}");
            assert_eq!(frame.status, status(10 + task as u8));
            assert_eq!(seq, next_seq[task as usize], "task {task} out of order");
            next_seq[task as usize] += 1;
            if seq % 5 == 0 {
                assert_eq!(frame.files.len(), 1, "frame {task}:{seq}");
                assert_eq!(frame.files[0].name, format!("t{task}-{seq}.bin"));
                assert!(
                    frame.files[0].data == file_of(task, seq),
                    "file of frame {task}:{seq} differs"
                );
            } else {
                assert!(frame.files.is_empty(), "frame {task}:{seq}");
            }
            total += 1;
        }
    })
    .await;
    assert_eq!(next_seq, [FRAMES; TASKS as usize]);

    while let Some(done) = within(PATIENCE, "the senders", senders.join_next()).await {
        done.expect("sender task panicked");
    }
    close_client(connection).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_peers_at_once() {
    const PEERS: usize = 50;
    let mut server = start_server(ConnectionConfig::default(), true).await;
    let addr = server.addr;
    let mut clients = tokio::task::JoinSet::new();
    for id in 0..PEERS {
        clients.spawn(async move {
            let (connection, mut events) = spawn_client(addr, ConnectionConfig::default()).await;
            expect_client_connected(&mut events).await;
            // Status 20 and up: status 2 would be a ping, which is not echoed.
            let frame = Frame::builder(status(20 + id as u8))
                .file(format!("{id}.txt"), pattern(id * 100, id as u8))
                .message(format!("peer {id}"))
                .build();
            round_trip(&connection, &mut events, frame).await;
            close_client(connection).await
        });
    }
    let mut ended = 0;
    while let Some(done) = within(PATIENCE, "the clients", clients.join_next()).await {
        let reason = done.expect("client task panicked");
        assert!(matches!(reason, Disconnect::Closed), "{reason:?}");
        ended += 1;
    }
    assert_eq!(ended, PEERS);

    // The server saw every peer through: connected, the frame, PeerClosed.
    let mut received = HashSet::new();
    let mut closed = HashSet::new();
    let mut connected = HashSet::new();
    while closed.len() < PEERS {
        match server.next_event().await {
            (peer, Event::Connected) => assert!(connected.insert(peer)),
            (peer, Event::Received(frame)) => {
                assert!(connected.contains(&peer), "frame before `connected`");
                assert!(received.insert(frame.message));
            }
            (peer, Event::Disconnected(Disconnect::PeerClosed)) => assert!(closed.insert(peer)),
            (peer, other) => panic!("{peer}: {other:?}"),
        }
    }
    assert_eq!(connected.len(), PEERS);
    assert_eq!(received.len(), PEERS);
}

#[tokio::test]
async fn pings_reach_ping_received_only() {
    let mut server = start_server(ConnectionConfig::default(), true).await;

    // Keep-alive pings from the client's timer.
    let (pinging, mut events) = spawn_client(server.addr, pinging_config()).await;
    expect_client_connected(&mut events).await;
    let peer = expect_connected(&mut server).await;
    for _ in 0..3 {
        match server.next_event_from(peer).await {
            Event::Ping(frame) => assert_eq!(frame, Frame::ping()),
            other => panic!("expected a ping, got {other:?}"),
        }
    }
    // Pings are not echoed (they never reach `received`); a normal frame is.
    round_trip(&pinging, &mut events, Frame::message(status(3), "data")).await;
    close_client(pinging).await;
    loop {
        match server.next_event_from(peer).await {
            Event::Ping(_) => {}
            Event::Received(frame) => assert_eq!(frame, Frame::message(status(3), "data")),
            Event::Disconnected(_) => break,
            Event::Connected => panic!("connected twice"),
        }
    }

    // Pings sent by hand, one of them with a message: status 2 is a ping whatever it carries.
    let (manual, mut events) = spawn_client(server.addr, ConnectionConfig::default()).await;
    let peer = expect_connected(&mut server).await;
    let with_message = Frame::message(status(2), "still a ping");
    manual.sender().send(Frame::ping()).await.expect("send");
    manual
        .sender()
        .send(with_message.clone())
        .await
        .expect("send");
    manual
        .sender()
        .send(Frame::message(status(4), "after"))
        .await
        .expect("send");
    assert!(matches!(server.next_event_from(peer).await, Event::Ping(f) if f == Frame::ping()));
    assert!(matches!(server.next_event_from(peer).await, Event::Ping(f) if f == with_message));
    match server.next_event_from(peer).await {
        Event::Received(frame) => assert_eq!(frame, Frame::message(status(4), "after")),
        other => panic!("expected the frame after the pings, got {other:?}"),
    }
    // The client got the echo of that frame only, nothing for the pings.
    expect_client_connected(&mut events).await;
    match next_client_event(&mut events).await {
        Some(Event::Received(frame)) => assert_eq!(frame.status, status(4)),
        other => panic!("expected one echo, got {other:?}"),
    }
    close_client(manual).await;
}

#[tokio::test]
async fn server_pings_reach_the_clients_ping_received() {
    let server = start_server(pinging_config(), false).await;
    let (connection, mut events) = spawn_client(server.addr, ConnectionConfig::default()).await;
    expect_client_connected(&mut events).await;
    for _ in 0..2 {
        match next_client_event(&mut events).await {
            Some(Event::Ping(frame)) => assert!(frame.is_ping()),
            other => panic!("expected a ping, got {other:?}"),
        }
    }
    close_client(connection).await;
}

/// A client or server that pings every 50 ms.
fn pinging_config() -> ConnectionConfig {
    ConnectionConfig {
        ping_interval: Some(Duration::from_millis(50)),
        ..ConnectionConfig::default()
    }
}

fn idle_config() -> ConnectionConfig {
    ConnectionConfig {
        idle_timeout: Some(Duration::from_millis(200)),
        ..ConnectionConfig::default()
    }
}

#[tokio::test]
async fn idle_timeout_closes_a_silent_peer() {
    let mut server = start_server(idle_config(), false).await;
    let (mut stream, local) = raw_connect(server.addr).await;
    let started = Instant::now();
    expect_closed(&mut stream, Duration::from_secs(2)).await;
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(150),
        "closed after {after:?}"
    );

    match server.next_after_connect(local).await {
        Event::Disconnected(Disconnect::IdleTimeout(limit)) => {
            assert_eq!(limit, Duration::from_millis(200));
        }
        other => panic!("expected IdleTimeout, got {other:?}"),
    }
}

#[tokio::test]
async fn idle_timeout_spares_a_pinging_peer() {
    let mut server = start_server(idle_config(), true).await;
    let (connection, mut events) = spawn_client(server.addr, pinging_config()).await;
    let peer = expect_connected(&mut server).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut pings = 0;
    while let Ok((from, event)) = server.events.try_recv() {
        assert_eq!(from, peer);
        match event {
            Event::Ping(_) => pings += 1,
            other => panic!("only pings expected while idle, got {other:?}"),
        }
    }
    assert!(pings >= 3, "{pings} pings in 600 ms");
    // Still alive both ways.
    expect_client_connected(&mut events).await;
    round_trip(&connection, &mut events, Frame::message(status(1), "alive")).await;
    close_client(connection).await;
}

#[tokio::test]
async fn idle_timeout_spares_a_slow_large_frame() {
    let mut server = start_server(idle_config(), false).await;
    let (mut stream, local) = raw_connect(server.addr).await;
    let data = pattern(1200, 5);
    let frame = Frame::builder(status(6))
        .file("slow.bin", data)
        .message("done")
        .build();
    let wire = encode(&frame);
    // Head and file head at once, then the data in 12 pieces every 50 ms (600 ms, three times
    // the idle timeout), then the message.
    let data_start = 10 + 2 + 8 + 8;
    stream.write_all(&wire[..data_start]).await.expect("write");
    for piece in wire[data_start..data_start + 1200].chunks(100) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        stream
            .write_all(piece)
            .await
            .expect("write: cut by the idle timeout?");
    }
    stream
        .write_all(&wire[data_start + 1200..])
        .await
        .expect("write");

    match server.next_after_connect(local).await {
        Event::Received(received) => assert_eq!(received, frame),
        other => panic!("expected the slow frame, got {other:?}"),
    }
    stream.shutdown().await.expect("shutdown");
    match server.next_event_from(local).await {
        Event::Disconnected(Disconnect::PeerClosed) => {}
        other => panic!("expected PeerClosed, got {other:?}"),
    }
}

/// Bytes that break the protocol, the server's expected reason, and whether the peer closes its
/// side after sending them.
struct BadPeer {
    name: &'static str,
    bytes: Vec<u8>,
    close_after: bool,
    expect: fn(&CodecError) -> bool,
}

fn bad_peers() -> Vec<BadPeer> {
    let mut too_large = BytesMut::new();
    too_large.put_slice(&[0x80, 1, 0, 0, 0, 0, 0, 0, 0, 1]);
    too_large.put_u16(1);
    too_large.put_slice(b"x");
    too_large.put_u64(1 << 40);

    let mut message_too_large = BytesMut::new();
    message_too_large.put_slice(&[0x80, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
    message_too_large.put_u64(u64::MAX);

    let mut not_utf8 = BytesMut::new();
    not_utf8.put_slice(&[0x80, 1, 0, 0, 0, 0, 0, 0, 0, 2]);
    not_utf8.put_u16(1);
    not_utf8.put_slice(b"a");
    not_utf8.put_u64(0);
    not_utf8.put_u16(2);
    not_utf8.put_slice(&[0xc3, 0x28]);
    not_utf8.put_u64(0);

    let whole = encode(
        &Frame::builder(status(1))
            .file("half.bin", pattern(1000, 9))
            .message("never complete")
            .build(),
    );
    assert_eq!(whole.len(), 1050);

    vec![
        BadPeer {
            name: "a lone byte with its MSB clear",
            bytes: vec![0x05],
            close_after: false,
            expect: |e| matches!(e, CodecError::InvalidStatusByte { byte: 0x05 }),
        },
        BadPeer {
            name: "a 1 TiB file",
            bytes: too_large.to_vec(),
            close_after: false,
            expect: |e| {
                matches!(e, CodecError::FrameTooLarge { len, max }
                    if *len == (1 << 40) + 29 && *max == 64 * MIB)
            },
        },
        BadPeer {
            name: "too many files",
            bytes: vec![0x80, 1, 0, 0, 0, 0, 0, 0, 4, 1],
            close_after: false,
            expect: |e| {
                matches!(
                    e,
                    CodecError::TooManyFiles {
                        count: 1025,
                        max: 1024
                    }
                )
            },
        },
        BadPeer {
            name: "a 2^64-1 byte message",
            bytes: message_too_large.to_vec(),
            close_after: false,
            expect: |e| {
                matches!(e, CodecError::MessageTooLarge { len: u64::MAX, max }
                    if *max == 64 * MIB)
            },
        },
        BadPeer {
            name: "a file name that is not UTF-8",
            bytes: not_utf8.to_vec(),
            close_after: false,
            expect: |e| matches!(e, CodecError::FileNameNotUtf8 { index: 1 }),
        },
        BadPeer {
            name: "half a frame, then EOF",
            bytes: whole[..whole.len() / 2].to_vec(),
            close_after: true,
            // The frame is 10 + (2 + 8 + 8 + 1000) + 8 + 14 = 1050 bytes; half of it arrived.
            expect: |e| matches!(e, CodecError::Truncated { received: 525 }),
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_close_only_the_offending_connection() {
    let mut server = start_server(ConnectionConfig::default(), true).await;
    // A well-behaved client that stays connected throughout.
    let (good, mut events) = spawn_client(server.addr, ConnectionConfig::default()).await;
    expect_client_connected(&mut events).await;
    round_trip(&good, &mut events, Frame::message(status(0), "before")).await;

    for (n, bad) in bad_peers().into_iter().enumerate() {
        let (mut stream, local) = raw_connect(server.addr).await;
        stream.write_all(&bad.bytes).await.expect("write");
        if bad.close_after {
            stream.shutdown().await.expect("shutdown");
        }
        expect_closed(&mut stream, PATIENCE).await;

        match server.next_after_connect(local).await {
            Event::Disconnected(Disconnect::Protocol(error)) => {
                assert!((bad.expect)(&error), "{}: got {error:?}", bad.name);
            }
            other => panic!("{}: expected a protocol error, got {other:?}", bad.name),
        }

        // The other connection is untouched.
        // Status 20 and up: status 2 would be a ping, which is not echoed.
        let frame = Frame::builder(status(20 + n as u8))
            .file("ok.txt", pattern(10_000, n as u8))
            .message(format!("after {}", bad.name))
            .build();
        round_trip(&good, &mut events, frame).await;
    }
    let reason = close_client(good).await;
    assert!(matches!(reason, Disconnect::Closed), "{reason:?}");
}

#[tokio::test]
async fn send_refuses_frames_over_the_limits_and_keeps_the_connection() {
    let server = start_server(ConnectionConfig::default(), true).await;
    let config = ConnectionConfig {
        limits: Limits {
            max_frame_bytes: 10_000,
            max_files: 2,
            max_message_bytes: 100,
        },
        ..ConnectionConfig::default()
    };
    let (connection, mut events) = spawn_client(server.addr, config).await;
    expect_client_connected(&mut events).await;
    let sender = connection.sender();

    let long_message = Frame::message(status(1), pattern(101, 0));
    assert!(matches!(
        sender.send(long_message.clone()).await,
        Err(SendError::Invalid(CodecError::MessageTooLarge {
            len: 101,
            max: 100
        }))
    ));
    assert!(matches!(
        sender.feed(long_message).await,
        Err(SendError::Invalid(CodecError::MessageTooLarge {
            len: 101,
            max: 100
        }))
    ));
    let three_files = Frame::builder(status(1))
        .file("a", Bytes::new())
        .file("b", Bytes::new())
        .file("c", Bytes::new())
        .build();
    assert!(matches!(
        sender.send(three_files).await,
        Err(SendError::Invalid(CodecError::TooManyFiles {
            count: 3,
            max: 2
        }))
    ));
    // 10 + (2 + 1 + 8 + 9_973) + 8 = 10_002 bytes.
    let large = Frame::builder(status(1))
        .file("f", pattern(9_973, 0))
        .build();
    assert!(matches!(
        sender.send(large).await,
        Err(SendError::Invalid(CodecError::FrameTooLarge {
            len: 10_002,
            max: 10_000
        }))
    ));
    let long_name = Frame::builder(status(1))
        .file("n".repeat(65_536), Bytes::new())
        .build();
    assert!(matches!(
        sender.send(long_name).await,
        Err(SendError::Invalid(CodecError::FileNameTooLong {
            len: 65_536
        }))
    ));

    // Nothing was written and nothing closed: the next frame goes through and comes back.
    let fits = Frame::builder(status(1))
        .file("f", pattern(9_971, 0))
        .message("ok")
        .build();
    assert_eq!(fits.encoded_len(), 10_002);
    let fits = Frame::builder(status(1))
        .file("f", pattern(9_969, 0))
        .message("ok")
        .build();
    assert_eq!(fits.encoded_len(), 10_000);
    round_trip(&connection, &mut events, fits).await;
    let reason = close_client(connection).await;
    assert!(matches!(reason, Disconnect::Closed), "{reason:?}");
}

#[tokio::test]
async fn send_after_the_peer_left_fails() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let (connection, mut events) = spawn_client(addr, ConnectionConfig::default()).await;
    let (accepted, _) = within(PATIENCE, "accept", listener.accept())
        .await
        .expect("accept");
    drop(accepted);

    let mut failed = None;
    for attempt in 0..200 {
        match connection
            .sender()
            .send(Frame::message(status(1), format!("attempt {attempt}")))
            .await
        {
            Ok(()) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(error) => {
                failed = Some(error);
                break;
            }
        }
    }
    let error = failed.expect("send kept succeeding after the peer left");
    assert!(
        matches!(error, SendError::Closed | SendError::Io(_)),
        "{error:?}"
    );
    // And it stays failed.
    assert!(matches!(
        connection.sender().send(Frame::ping()).await,
        Err(SendError::Closed | SendError::Io(_))
    ));
    assert!(matches!(
        connection.sender().flush().await,
        Err(SendError::Closed | SendError::Io(_))
    ));

    let reason = within(PATIENCE, "the client to end", connection.join()).await;
    assert!(
        matches!(reason, Disconnect::PeerClosed | Disconnect::Io(_)),
        "{reason:?}"
    );
    expect_client_connected(&mut events).await;
    assert!(matches!(
        next_client_event(&mut events).await,
        Some(Event::Disconnected(
            Disconnect::PeerClosed | Disconnect::Io(_)
        ))
    ));
    assert!(next_client_event(&mut events).await.is_none());
}

#[tokio::test]
async fn framed_client_talks_to_a_handler_server() {
    let mut server = start_server(ConnectionConfig::default(), true).await;
    let mut framed = Client::connect(server.addr)
        .await
        .expect("connect")
        .into_framed();
    let peer = expect_connected(&mut server).await;

    let frame = Frame::builder(status(12))
        .file("框架.bin", pattern(20_000, 4))
        .message("over Framed")
        .build();
    within(PATIENCE, "send", framed.send(frame.clone()))
        .await
        .expect("send");
    let echoed = within(PATIENCE, "the echo", framed.next())
        .await
        .expect("stream open")
        .expect("valid frame");
    assert_eq!(echoed, frame);
    assert!(matches!(server.next_event_from(peer).await, Event::Received(f) if f == frame));

    // A ping goes to `ping_received` and is not echoed: the next frame back is the one after.
    within(PATIENCE, "send", framed.send(Frame::ping()))
        .await
        .expect("send");
    let after = Frame::message(status(13), "after the ping");
    within(PATIENCE, "send", framed.send(after.clone()))
        .await
        .expect("send");
    assert!(matches!(server.next_event_from(peer).await, Event::Ping(f) if f.is_ping()));
    let echoed = within(PATIENCE, "the echo", framed.next())
        .await
        .expect("stream open")
        .expect("valid frame");
    assert_eq!(echoed, after);

    within(PATIENCE, "close", SinkExt::<Frame>::close(&mut framed))
        .await
        .expect("close");
    drop(framed);
    loop {
        match server.next_event_from(peer).await {
            Event::Received(f) => assert_eq!(f, after),
            Event::Disconnected(Disconnect::PeerClosed) => break,
            other => panic!("expected PeerClosed, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn framed_client_enforces_its_limits_on_send() {
    let server = start_server(ConnectionConfig::default(), true).await;
    let config = ConnectionConfig {
        limits: Limits {
            max_message_bytes: 10,
            ..Limits::default()
        },
        ..ConnectionConfig::default()
    };
    let mut framed = Client::connect(server.addr)
        .await
        .expect("connect")
        .with_config(config)
        .into_framed();
    let result = framed.send(Frame::message(status(1), "eleven char")).await;
    assert!(
        matches!(
            result,
            Err(CodecError::MessageTooLarge { len: 11, max: 10 })
        ),
        "{result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_until_returns_on_shutdown_and_closes_connections() {
    let mut server = start_server(ConnectionConfig::default(), false).await;
    let addr = server.addr;
    let (mut raw, raw_local) = raw_connect(addr).await;
    let mut clients = Vec::new();
    for _ in 0..2 {
        let (connection, events) = spawn_client(addr, ConnectionConfig::default()).await;
        clients.push((connection, events));
    }
    let mut peers = HashSet::new();
    for _ in 0..3 {
        peers.insert(expect_connected(&mut server).await);
    }
    assert!(peers.contains(&raw_local));

    // `serve_until` returns only once every handler has seen `disconnected`.
    let mut events = server.shut_down().await;
    let mut closed = HashSet::new();
    while let Ok((peer, event)) = events.try_recv() {
        match event {
            Event::Disconnected(Disconnect::Closed) => assert!(closed.insert(peer)),
            other => panic!("{peer}: expected Closed, got {other:?}"),
        }
    }
    assert_eq!(closed, peers);

    // Every peer sees the end of the stream.
    expect_closed(&mut raw, PATIENCE).await;
    for (connection, mut events) in clients {
        let reason = within(PATIENCE, "a client to end", connection.join()).await;
        assert!(matches!(reason, Disconnect::PeerClosed), "{reason:?}");
        expect_client_connected(&mut events).await;
        assert!(matches!(
            next_client_event(&mut events).await,
            Some(Event::Disconnected(Disconnect::PeerClosed))
        ));
    }
    // And the listener is gone.
    assert!(TcpStream::connect(addr).await.is_err());
}
