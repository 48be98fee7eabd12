//! The Python reference peer (`tests/interop/peer.py`, driving `tej-protoc==0.2.4`) as seen from
//! the Rust tests: start it, read its JSON records, compare frames by SHA-256.
//!
//! Included with `#[path = "common/python.rs"] mod python;` by `tests/interop.rs` and
//! `tests/hub_python.rs`; not every file uses every helper. Without the reference installed the
//! tests fail with the install command: they never skip.
#![allow(dead_code)]

use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tej_hub::Frame;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/peer.py");
const INSTALL: &str = "python3 -m pip install -r tests/interop/requirements.txt";
/// Upper bound on any single wait; a 32 MiB frame through the reference takes well under it.
pub const WAIT: Duration = Duration::from_secs(60);

pub fn hex_sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What a frame looks like in the peer's JSON records: status, version, files and message by
/// SHA-256.
pub fn digest(frame: &Frame) -> Value {
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
pub fn digest_of_record(record: &Value) -> Value {
    json!({
        "status": record["status"],
        "version": record["version"],
        "files": record["files"],
        "message_len": record["message_len"],
        "message_sha256": record["message_sha256"],
    })
}

/// A running `peer.py`, read line by line. Its stdin is a pipe: a `server` peer exits when the
/// pipe closes.
pub struct PyPeer {
    pub child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl PyPeer {
    /// Starts `peer.py <args>`; fails with the install hint when the reference is missing.
    pub fn start(args: &[&str]) -> PyPeer {
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
            .args(args)
            .stdin(Stdio::piped())
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

    /// Starts `peer.py client --port PORT <args>`.
    pub fn client(port: u16, args: &[&str]) -> PyPeer {
        let port = port.to_string();
        let mut all = vec!["client", "--port", &port];
        all.extend_from_slice(args);
        PyPeer::start(&all)
    }

    /// A client peer that sends the control commands `commands` (each a status-127 frame), then
    /// reads until it has received `expect` frames (pings not counted), for at most 30 s.
    pub fn commanding(port: u16, commands: &[&str], expect: usize) -> PyPeer {
        PyPeer::commanding_with(port, commands, expect, &[])
    }

    /// [`PyPeer::commanding`] with more `peer.py client` arguments (e.g. `--ack-upto N`).
    pub fn commanding_with(port: u16, commands: &[&str], expect: usize, more: &[&str]) -> PyPeer {
        let spec: Vec<Value> = commands
            .iter()
            .map(|text| json!({"status": 127, "files": [], "message": {"text": text}}))
            .collect();
        let spec = Value::Array(spec).to_string();
        let expect = expect.to_string();
        let mut args = vec![
            "--spec",
            &spec,
            "--expect",
            &expect,
            "--ignore-pings",
            "--wait",
            "30",
        ];
        args.extend_from_slice(more);
        PyPeer::client(port, &args)
    }

    /// The next JSON record from the peer.
    pub async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .expect("python peer said nothing in time")
            .expect("reading the python peer")
            .expect("python peer closed its output");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad record {line:?}: {e}"))
    }

    /// The next record whose event is `event`, skipping connection notices and `sent` records.
    pub async fn next_event(&mut self, event: &str) -> Value {
        for _ in 0..100 {
            let record = self.next().await;
            match record["event"].as_str() {
                Some(e) if e == event => return record,
                Some("connected" | "disconnected" | "sent") => continue,
                _ => panic!("expected a {event:?} record, got {record}"),
            }
        }
        panic!("no {event:?} record among 100");
    }

    /// Waits for the peer to exit and checks that it succeeded.
    pub async fn succeeds(mut self) {
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("python peer exits")
            .expect("python peer status");
        assert!(status.success(), "python peer failed: {status}");
    }
}
