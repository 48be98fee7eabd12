//! Helpers shared by the hub's integration tests (`tests/hub*.rs`): hubs started in-process on
//! `127.0.0.1:0` or as the `tej-hub` binary, framed and raw clients, control commands, raw frame
//! bytes, and bounded waits so that no test can hang.
//!
//! Included by each hub test file with `#[path = "common/hub.rs"] mod hub_common;`; not every
//! file uses every helper.
#![allow(dead_code)]

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tej_hub::hub::config::HubConfig;
use tej_hub::hub::HubHandle;
use tej_hub::{Client, Frame, Status, TejCodec};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_util::codec::{Decoder, Framed};

#[path = "pattern.rs"]
mod pattern;
#[allow(unused_imports)]
pub use pattern::pattern;

/// How long any single wait may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(10);
/// A mebibyte.
pub const MIB: usize = 1024 * 1024;

/// A framed connection to a hub.
pub type Conn = Framed<TcpStream, TejCodec>;

/// A status code for tests (any code `0..=127`).
pub fn status(code: u8) -> Status {
    Status::new(code).expect("test status codes are at most 127")
}

/// `future`'s output, or a panic naming `what` after `limit`.
pub async fn within<F: Future>(limit: Duration, what: &str, future: F) -> F::Output {
    match tokio::time::timeout(limit, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// The settings the in-process tests start from: the defaults, on two workers.
pub fn test_config() -> HubConfig {
    HubConfig {
        workers: 2,
        ..HubConfig::default()
    }
}

/// Starts an in-process hub with `config` on `127.0.0.1:0`.
pub fn start_hub(config: HubConfig) -> HubHandle {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    tej_hub::hub::spawn(listener, config).expect("start the hub")
}

/// Shuts an in-process hub down and waits for it, off the async runtime's threads.
pub async fn stop_hub(hub: HubHandle) {
    within(
        PATIENCE,
        "the hub to shut down",
        tokio::task::spawn_blocking(move || hub.shutdown()),
    )
    .await
    .expect("hub shutdown task")
    .expect("hub shut down cleanly");
}

/// A framed client connected to `addr`.
pub async fn connect(addr: SocketAddr) -> Conn {
    within(PATIENCE, "connect", Client::connect(addr))
        .await
        .expect("connect to the hub")
        .into_framed()
}

/// A raw socket connected to `addr`.
pub async fn connect_raw(addr: SocketAddr) -> TcpStream {
    let stream = within(PATIENCE, "connect", TcpStream::connect(addr))
        .await
        .expect("connect to the hub");
    stream.set_nodelay(true).expect("TCP_NODELAY");
    stream
}

/// A raw socket connected to `addr` with a 4 KiB receive buffer: a subscriber that stops reading
/// fills it at once.
pub async fn connect_small_window(addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    within(PATIENCE, "connect", socket.connect(addr))
        .await
        .expect("connect to the hub")
}

/// Sends `frame`.
pub async fn send(conn: &mut Conn, frame: Frame) {
    within(PATIENCE, "a send", conn.send(frame))
        .await
        .expect("send a frame to the hub");
}

/// Queues `frame` without flushing (see [`flush`]).
pub async fn feed(conn: &mut Conn, frame: Frame) {
    within(PATIENCE, "a feed", conn.feed(frame))
        .await
        .expect("queue a frame for the hub");
}

/// Writes out every queued frame.
pub async fn flush(conn: &mut Conn) {
    within(PATIENCE, "a flush", SinkExt::<Frame>::flush(conn))
        .await
        .expect("flush frames to the hub");
}

/// The next frame from the hub; panics on end of stream, error or timeout.
pub async fn recv(conn: &mut Conn) -> Frame {
    match within(PATIENCE, "a frame from the hub", conn.next()).await {
        Some(Ok(frame)) => frame,
        Some(Err(error)) => panic!("reading from the hub failed: {error}"),
        None => panic!("the hub closed the connection"),
    }
}

/// Asserts that nothing arrives on `conn` for `quiet`.
pub async fn expect_silence(conn: &mut Conn, quiet: Duration) {
    if let Ok(item) = tokio::time::timeout(quiet, conn.next()).await {
        panic!("expected nothing from the hub, got {item:?}");
    }
}

/// A control frame (status 127) carrying `command`.
pub fn control_frame(command: &str) -> Frame {
    Frame::message(status(127), command.to_owned())
}

/// Sends `command` on the control channel and returns the reply's text, checking that the reply
/// is a control frame (status 127, version 1, no files).
pub async fn control(conn: &mut Conn, command: &str) -> String {
    send(conn, control_frame(command)).await;
    let reply = recv(conn).await;
    reply_text(&reply, command)
}

/// The text of control reply `reply` to `command`, checked as [`control`] does.
pub fn reply_text(reply: &Frame, command: &str) -> String {
    assert_eq!(reply.status.code(), 127, "reply to {command:?}: {reply:?}");
    assert_eq!(reply.version, 1, "reply to {command:?}");
    assert!(reply.files.is_empty(), "reply to {command:?} carries files");
    String::from_utf8(reply.message.to_vec()).expect("control replies are text")
}

/// Sends `SUB <codes>` and checks the reply is `OK SUB <normalized>`.
pub async fn subscribe(conn: &mut Conn, codes: &str, normalized: &str) {
    let reply = control(conn, &format!("SUB {codes}")).await;
    assert_eq!(reply, format!("OK SUB {normalized}"), "SUB {codes}");
}

/// Sends `INFO` and returns its JSON.
pub async fn info(conn: &mut Conn) -> serde_json::Value {
    let reply = control(conn, "INFO").await;
    let json = reply
        .strip_prefix("OK INFO ")
        .unwrap_or_else(|| panic!("INFO answered {reply:?}"));
    serde_json::from_str(json).unwrap_or_else(|e| panic!("INFO is not JSON ({e}): {json}"))
}

/// The session's subscriptions according to `INFO`.
pub async fn subscriptions(conn: &mut Conn) -> Vec<u64> {
    info(conn).await["subscriptions"]
        .as_array()
        .expect("subscriptions is an array")
        .iter()
        .map(|code| code.as_u64().expect("subscriptions are integers"))
        .collect()
}

/// `frame` as the bytes our codec puts on the wire.
pub fn encode(frame: &Frame) -> Bytes {
    frame.to_wire().expect("test frames encode")
}

/// A frame head: status byte as given (MSB included or not), version, file count.
pub fn head(status_byte: u8, version: u8, files: u64) -> BytesMut {
    let mut wire = BytesMut::new();
    wire.put_u8(status_byte);
    wire.put_u8(version);
    wire.put_u64(files);
    wire
}

/// What the hub sends on a raw socket until it closes it (end of stream or reset), within
/// Reads at least `bytes` from `stream` (each read within [`PATIENCE`]) and returns how many it
/// read; panics if the stream closes first, saying it was `before` what.
pub async fn read_at_least(stream: &mut TcpStream, bytes: usize, before: &str) -> usize {
    let mut seen = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    while seen < bytes {
        let n = within(
            PATIENCE,
            "the start of the streamed frame",
            stream.read(&mut buf),
        )
        .await
        .expect("read the streamed frame");
        assert!(n > 0, "closed after {seen} bytes, before {before}");
        seen += n;
    }
    seen
}

/// [`PATIENCE`].
pub async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    read_until_closed_within(stream, PATIENCE).await
}

/// What the hub sends on a raw socket until it closes it, within `limit` (for large streams).
pub async fn read_until_closed_within(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    within(limit, "the hub to close the socket", async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    out
}

/// Every whole frame in `bytes`, in order; panics if `bytes` does not decode or ends mid-frame.
pub fn decode_all(bytes: &[u8]) -> Vec<Frame> {
    let mut buf = BytesMut::from(bytes);
    let mut codec = TejCodec::default();
    let mut frames = Vec::new();
    while let Some(frame) = codec.decode_eof(&mut buf).expect("the hub's bytes decode") {
        frames.push(frame);
    }
    frames
}

/// Reads what the hub sends until it closes the socket and checks that it was exactly one
/// `ERR <reason>` control frame; returns the reason.
pub async fn expect_err_and_close(stream: &mut TcpStream, what: &str) -> String {
    let bytes = read_until_closed(stream).await;
    let frames = decode_all(&bytes);
    assert_eq!(
        frames.len(),
        1,
        "{what}: expected one ERR frame, got {frames:?}"
    );
    let text = reply_text(&frames[0], what);
    text.strip_prefix("ERR ")
        .unwrap_or_else(|| panic!("{what}: expected ERR, got {text:?}"))
        .to_owned()
}

/// The soft limit on open files of this process, from `/proc/self/limits`.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line.split_whitespace().nth(3)?;
    if soft == "unlimited" {
        Some(u64::MAX)
    } else {
        soft.parse().ok()
    }
}

/// The `tej-hub serve` binary, started on `127.0.0.1:0`; killed when dropped.
pub struct BinHub {
    child: Child,
    /// Where it listens (read from its `tej-hub listening on ADDR` line).
    pub addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    /// Its stdout after the first line.
    lines: mpsc::Receiver<String>,
}

impl BinHub {
    /// Starts `tej-hub serve --listen 127.0.0.1:0 <flags>` with info logs on stderr.
    pub fn start(flags: &[&str]) -> BinHub {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tej-hub"));
        command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(flags);
        BinHub::spawn(command)
    }

    /// As [`start`](Self::start), in the network namespace `ns` (`ip netns exec NS tej-hub serve
    /// --listen 127.0.0.1:0 <flags>`: `ip` execs the hub, so [`pid`](Self::pid) is the hub's).
    /// Its address is on that namespace's loopback: reach it with sockets made there.
    pub fn start_in_netns(ns: &str, flags: &[&str]) -> BinHub {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_tej-hub")])
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(flags);
        BinHub::spawn(command)
    }

    /// As [`start`](Self::start), with the soft limit on open files lowered to `soft` (through
    /// `sh -c 'ulimit -S -n SOFT; exec tej-hub ...'`, so the process id is the hub's).
    pub fn start_with_open_files(soft: u64, flags: &[&str]) -> BinHub {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("ulimit -S -n {soft} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_tej-hub"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(flags);
        BinHub::spawn(command)
    }

    fn spawn(mut command: Command) -> BinHub {
        let mut child = command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the tej-hub binary");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("log lock").push(line);
            }
        });
        let (lines, listening) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let mut hub = BinHub {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            logs,
            lines: listening,
        };
        let line = hub
            .lines
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("tej-hub printed no address; logs: {:?}", hub.logs()));
        hub.addr = line
            .strip_prefix("tej-hub listening on ")
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from tej-hub: {line:?}"));
        hub
    }

    /// The next line the hub prints on stdout after its first, within `limit`.
    pub fn next_line(&self, limit: Duration) -> Option<String> {
        self.lines.recv_timeout(limit).ok()
    }

    /// The monitoring address a hub started with `--http` printed on its second line.
    pub fn monitor_addr(&self) -> SocketAddr {
        let line = self
            .next_line(PATIENCE)
            .unwrap_or_else(|| panic!("no monitoring line; logs: {:?}", self.logs()));
        line.strip_prefix("tej-hub monitoring on http://")
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("unexpected second line: {line:?}"))
    }

    /// The hub's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The hub's peak resident set size (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status of the hub");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status")
    }

    /// The hub's resident set size now (`VmRSS`), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status of the hub");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// Sends `signal` (e.g. `Signal::TERM`) to the hub, at once (no `kill` process in between).
    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = i32::try_from(self.pid())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .expect("the hub's process id");
        rustix::process::kill_process(pid, signal)
            .unwrap_or_else(|error| panic!("signal {signal:?} to the hub: {error}"));
    }

    /// Waits up to `limit` for the hub to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            match self.child.try_wait().expect("poll the hub process") {
                Some(status) => return Some(status),
                None if Instant::now() >= deadline => return None,
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// The hub's log lines so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().expect("log lock").clone()
    }
}

impl Drop for BinHub {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What `tej-hub passwd` prints for `password` given on stdin: its exit status and stdout.
pub fn passwd(password: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_tej-hub"))
        .arg("passwd")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run tej-hub passwd");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(format!("{password}\n").as_bytes())
        .expect("write the password");
    child.wait_with_output().expect("tej-hub passwd's output")
}

/// The argon2id hash of `password` with test-sized costs (256 KiB, one pass).
pub fn cheap_hash(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    use argon2::{Algorithm, Argon2, Params, Version};
    let params = Params::new(256, 1, 1, None).expect("argon2 test parameters");
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let salt = SaltString::encode_b64(b"tej-hub test salt").expect("a salt");
    argon2
        .hash_password(password.as_bytes(), &salt)
        .expect("hash a test password")
        .to_string()
}
