//! tej-hub with the Python reference implementation, `tej-protoc==0.2.4`, as its peers: a Python
//! subscriber (driven by `tests/interop/peer.py`, which sends `SUB 5` as an ordinary status-127
//! frame) receives the files and message of a Rust publisher and of a Python publisher, a Rust
//! subscriber receives the Python publisher's frame, and the hub answers the reference's pings.
//! Every file and message is compared by SHA-256. Without `python3 -m pip install -r
//! tests/interop/requirements.txt` these tests fail and say so: they never skip.

#[path = "common/hub.rs"]
mod hub_common;

use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tej_hub::Frame;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use hub_common::{
    connect, pattern, recv, send, start_hub, status, stop_hub, subscribe, test_config,
};

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/peer.py");
const INSTALL: &str = "python3 -m pip install -r tests/interop/requirements.txt";
/// Upper bound on any wait for the Python peer.
const WAIT: Duration = Duration::from_secs(30);

fn hex_sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A frame as the peer's JSON records describe it: status, version, files and message by SHA-256.
fn digest(frame: &Frame) -> Value {
    json!({
        "status": frame.status.code(),
        "version": frame.version,
        "files": frame.files.iter().map(|f| json!({
            "name": f.name,
            "size": f.data.len(),
            "sha256": hex_sha256(&f.data),
        })).collect::<Vec<_>>(),
        "message_len": frame.message.len(),
        "message_sha256": hex_sha256(&frame.message),
    })
}

/// The same fields of a peer record.
fn digest_of_record(record: &Value) -> Value {
    json!({
        "status": record["status"],
        "version": record["version"],
        "files": record["files"],
        "message_len": record["message_len"],
        "message_sha256": record["message_sha256"],
    })
}

/// A running `peer.py client`, read line by line.
struct PyPeer {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl PyPeer {
    /// Starts `peer.py client --port PORT <args>`; fails with the install hint when the
    /// reference is missing.
    fn client(port: u16, args: &[&str]) -> PyPeer {
        let check = std::process::Command::new("python3")
            .args(["-c", "import tej_protoc"])
            .stderr(Stdio::null())
            .status();
        assert!(
            matches!(check, Ok(s) if s.success()),
            "the Python reference tej-protoc==0.2.4 is not installed for python3: run `{INSTALL}`"
        );
        let mut child = Command::new("python3")
            .arg(PEER)
            .args(["client", "--port", &port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start python3 {PEER}: {e}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        PyPeer {
            child,
            lines: BufReader::new(stdout).lines(),
        }
    }

    /// The next JSON record from the peer.
    async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .expect("python peer said nothing in time")
            .expect("reading the python peer")
            .expect("python peer closed its output");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad record {line:?}: {e}"))
    }

    /// The next record whose event is `event`, skipping `connected` and `sent`.
    async fn next_event(&mut self, event: &str) -> Value {
        for _ in 0..100 {
            let record = self.next().await;
            match record["event"].as_str() {
                Some(e) if e == event => return record,
                Some("connected" | "sent") => continue,
                _ => panic!("expected a {event:?} record, got {record}"),
            }
        }
        panic!("no {event:?} record among 100");
    }

    /// Waits for the peer to exit and checks that it succeeded.
    async fn succeeds(mut self) {
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("python peer exits")
            .expect("python peer status");
        assert!(status.success(), "python peer failed: {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_subscriber_gets_rust_and_python_publications() {
    let hub = start_hub(test_config());
    let port = hub.local_addr().port();

    // The Python subscriber: SUB 5, then the OK and two publications.
    let spec = json!([{"status": 127, "files": [], "message": {"text": "SUB 5"}}]).to_string();
    let mut python_sub = PyPeer::client(
        port,
        &[
            "--spec",
            &spec,
            "--expect",
            "3",
            "--ignore-pings",
            "--wait",
            "30",
        ],
    );
    let ok = python_sub.next_event("received").await;
    assert_eq!(ok["status"], json!(127));
    assert_eq!(ok["message_text"], json!("OK SUB 5"));

    let mut rust_sub = connect(hub.local_addr()).await;
    subscribe(&mut rust_sub, "5", "5").await;

    // From a Rust publisher.
    let mut publisher = connect(hub.local_addr()).await;
    let from_rust = Frame::builder(status(5))
        .file("one.txt", pattern(10, 1))
        .file("two.bin", pattern(70_000, 2))
        .file("empty", Bytes::new())
        .message(pattern(1000, 3))
        .build();
    send(&mut publisher, from_rust.clone()).await;
    let received = python_sub.next_event("received").await;
    assert_eq!(digest_of_record(&received), digest(&from_rust));
    assert_eq!(recv(&mut rust_sub).await, from_rust);

    // From a Python publisher.
    let spec = json!([{"status": 5, "files": [
        {"name": "py.bin", "size": 300_000, "seed": 7},
        {"name": "b.txt", "size": 5, "seed": 8}],
        "message": {"text": "from python"}}])
    .to_string();
    let mut python_pub = PyPeer::client(port, &["--spec", &spec, "--wait", "1"]);
    let sent = python_pub.next_event("sent").await;
    let received = python_sub.next_event("received").await;
    assert_eq!(digest_of_record(&received), digest_of_record(&sent));
    assert_eq!(received["message_text"], json!("from python"));
    assert_eq!(digest(&recv(&mut rust_sub).await), digest_of_record(&sent));

    python_pub.succeeds().await;
    python_sub.succeeds().await;
    stop_hub(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_answers_python_pings() {
    let hub = start_hub(test_config());
    let mut python = PyPeer::client(
        hub.local_addr().port(),
        &[
            "--spec",
            "[]",
            "--ping-interval",
            "0.2",
            "--expect",
            "2",
            "--wait",
            "10",
        ],
    );
    for _ in 0..2 {
        let ping = python.next_event("ping").await;
        assert_eq!(ping["status"], json!(2));
        assert_eq!(ping["version"], json!(1));
        assert_eq!(ping["files"], json!([]));
        assert_eq!(ping["message_len"], json!(0));
    }
    python.succeeds().await;
    stop_hub(hub).await;
}
