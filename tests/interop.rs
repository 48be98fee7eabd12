//! Interop with the Python reference implementation, `tej-protoc==0.2.4`, in both directions:
//! Rust client → Python `TPServer` and Python `TPClient` → Rust server. Every file and message is
//! compared by SHA-256 on the receiving side, every status code exactly, and echoes back byte for
//! byte. The Python side is `tests/interop/peer.py`; it needs `python3 -m pip install -r
//! tests/interop/requirements.txt` (the README's test command does it). Without it these tests
//! fail and say so: they never skip.

#[path = "common/pattern.rs"]
mod pattern;
#[path = "common/python.rs"]
mod python;

use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tej_hub::{Client, Disconnect, Frame, Handler, Sender, Server, Status};
use tokio::sync::mpsc;

use pattern::pattern;
use python::{digest, digest_of_record, PyPeer, WAIT};

const BIG: usize = 32 * 1024 * 1024;

fn status(code: u8) -> Status {
    Status::new(code).unwrap_or_else(|| panic!("{code} is not a status"))
}

/// What a test's handler saw.
#[derive(Debug)]
enum Event {
    Frame(Frame),
    Ping(Frame),
    Gone(String),
}

/// Forwards every event to the test; echoes frames back when `echo` is set.
struct Recorder {
    events: mpsc::UnboundedSender<Event>,
    echo: bool,
}

impl Handler for Recorder {
    async fn received(&mut self, frame: Frame, sender: &Sender) {
        if self.echo {
            sender
                .send(frame.clone())
                .await
                .expect("echo to the python peer");
        }
        let _ = self.events.send(Event::Frame(frame));
    }

    async fn ping_received(&mut self, frame: Frame, _sender: &Sender) {
        let _ = self.events.send(Event::Ping(frame));
    }

    async fn disconnected(&mut self, reason: &Disconnect) {
        let reason = match reason {
            Disconnect::Protocol(error) => format!("protocol: {error:?}"),
            other => other.to_string(),
        };
        let _ = self.events.send(Event::Gone(reason));
    }
}

async fn next_event(events: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("no event in time")
        .expect("event channel closed")
}

/// Sends `frame` to the python peer and returns its `received` record, checked to match `frame`.
async fn sent_to_python(sender: &Sender, python: &mut PyPeer, frame: &Frame) -> serde_json::Value {
    sender.send(frame.clone()).await.expect("send");
    let received = python.next_event("received").await;
    assert_eq!(
        digest_of_record(&received),
        digest(frame),
        "what python received"
    );
    received
}

/// The frames both directions exchange: a message only, three files and a message, one 32 MiB
/// file, and custom status codes 0, 5 and 126.
fn rust_frames() -> Vec<Frame> {
    vec![
        Frame::message(status(5), "a message only"),
        Frame::builder(status(0))
            .file("one.txt", pattern(10, 1))
            .file("two.bin", pattern(70_000, 2))
            .file("empty", Bytes::new())
            .message(pattern(1000, 3))
            .build(),
        Frame::builder(status(126))
            .file("big.bin", pattern(BIG, 4))
            .message("32 MiB")
            .build(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_to_python_server() {
    let mut python = PyPeer::start(&["server", "--echo", "--greet", "Hello"]);
    let listening = python.next_event("listening").await;
    let port = listening["port"].as_u64().expect("port") as u16;

    let (events, mut seen) = mpsc::unbounded_channel();
    let client = Client::connect(("127.0.0.1", port)).await.expect("connect");
    let connection = client.spawn(Recorder {
        events,
        echo: false,
    });

    // The reference greets with BytesBuilder() — status 0 — and the message.
    match next_event(&mut seen).await {
        Event::Frame(greeting) => {
            assert_eq!(greeting.status.code(), 0);
            assert_eq!(&greeting.message[..], b"Hello");
        }
        other => panic!("expected the greeting, got {other:?}"),
    }

    for frame in rust_frames() {
        sent_to_python(connection.sender(), &mut python, &frame).await;
        match next_event(&mut seen).await {
            Event::Frame(echo) => assert!(echo == frame, "python's echo differs from what we sent"),
            other => panic!("expected the echo, got {other:?}"),
        }
    }

    // An empty message reaches the reference as None (its echo comes back empty).
    let no_message = Frame::builder(status(7)).file("f", pattern(5, 9)).build();
    let received = sent_to_python(connection.sender(), &mut python, &no_message).await;
    assert_eq!(received["message_is_none"], json!(true));
    match next_event(&mut seen).await {
        Event::Frame(echo) => assert!(echo == no_message),
        other => panic!("expected the echo, got {other:?}"),
    }

    connection.sender().send(Frame::ping()).await.expect("ping");
    let ping = python.next_event("ping").await;
    assert_eq!(ping["status"], json!(2));

    // We write byte lengths, so the reference reads a non-ASCII name correctly; its echo of that
    // frame writes the name's length in characters, which our side rejects as a protocol error.
    let non_ascii = Frame::builder(status(9))
        .file("naïve-é.bin", pattern(300, 7))
        .message("non-ASCII name")
        .build();
    sent_to_python(connection.sender(), &mut python, &non_ascii).await;
    loop {
        match next_event(&mut seen).await {
            // The peer echoes our ping too.
            Event::Ping(_) => continue,
            Event::Gone(reason) => break assert!(reason.starts_with("protocol:"), "{reason}"),
            other => panic!("expected the corrupt echo to end the connection, got {other:?}"),
        }
    }

    connection.sender().close().await;
    drop(python.child.stdin.take());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_to_rust_server() {
    let server = Server::bind("127.0.0.1:0").await.expect("bind");
    let port = server.local_addr().expect("addr").port();
    let (events, mut seen) = mpsc::unbounded_channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve_until(
        move |_| Recorder {
            events: events.clone(),
            echo: true,
        },
        async {
            let _ = stopped.await;
        },
    ));

    let spec = json!([
        {"status": 5, "files": [], "message": {"text": "a message only"}},
        {"status": 0, "files": [
            {"name": "one.txt", "size": 10, "seed": 1},
            {"name": "two.bin", "size": 70000, "seed": 2},
            {"name": "three", "size": 0, "seed": 3}],
         "message": {"size": 1000, "seed": 4}},
        {"status": 126, "files": [{"name": "big.bin", "size": BIG, "seed": 5}],
         "message": {"text": "32 MiB"}},
    ])
    .to_string();
    let mut python = PyPeer::start(&[
        "client",
        "--port",
        &port.to_string(),
        "--spec",
        &spec,
        "--expect",
        "3",
        "--ping-interval",
        "0.2",
        "--wait",
        "60",
    ]);

    // The client prints what it sent and what came back, in whatever order the two interleave.
    let mut sent = Vec::new();
    let mut echoed = Vec::new();
    while echoed.len() < 3 {
        let record = python.next().await;
        match record["event"].as_str() {
            Some("sent") => sent.push(digest_of_record(&record)),
            Some("received") => echoed.push(digest_of_record(&record)),
            Some("connected" | "ping") => {}
            _ => panic!("unexpected record from the python client: {record}"),
        }
    }
    let status = tokio::time::timeout(WAIT, python.child.wait())
        .await
        .expect("python client exits")
        .expect("python client status");
    assert!(status.success(), "python client failed: {status}");
    // Python's decoder read our echoes: the same bytes it sent.
    assert_eq!(echoed, sent, "python's view of our echoes");

    let mut received = Vec::new();
    let mut pings = 0;
    while received.len() < sent.len() {
        match next_event(&mut seen).await {
            Event::Frame(frame) => received.push(digest(&frame)),
            Event::Ping(ping) => {
                assert!(ping.files.is_empty() && ping.message.is_empty());
                pings += 1;
            }
            Event::Gone(reason) => panic!("python client left early: {reason}"),
        }
    }
    assert_eq!(received, sent, "what our server received");

    // The reference's Ping thread sends its first ping as it starts.
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(2), seen.recv()).await {
        if let Event::Ping(_) = event {
            pings += 1;
        }
    }
    assert!(
        pings > 0,
        "no ping from the python client reached ping_received"
    );

    let _ = stop.send(());
    tokio::time::timeout(WAIT, serving)
        .await
        .expect("server stops")
        .expect("server task");
}

/// The reference writes a file name's length as a count of characters; a non-ASCII name makes
/// its frame unreadable. Our server reports a typed protocol error and closes that connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_non_ascii_file_name_is_a_protocol_error() {
    let server = Server::bind("127.0.0.1:0").await.expect("bind");
    let port = server.local_addr().expect("addr").port();
    let (events, mut seen) = mpsc::unbounded_channel();
    tokio::spawn(server.serve(move |_| Recorder {
        events: events.clone(),
        echo: false,
    }));
    let spec = json!([
        {"status": 1, "files": [{"name": "é.txt", "size": 16, "seed": 1}], "message": {"text": "x"}}
    ])
    .to_string();
    let _python = PyPeer::start(&[
        "client",
        "--port",
        &port.to_string(),
        "--spec",
        &spec,
        "--wait",
        "5",
    ]);
    match next_event(&mut seen).await {
        Event::Gone(reason) => assert!(reason.starts_with("protocol:"), "reason: {reason}"),
        other => panic!("expected the connection to end with a protocol error, got {other:?}"),
    }
}
