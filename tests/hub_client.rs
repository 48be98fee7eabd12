//! [`HubClient`] and the `tej-hub pub` / `sub` commands against real hubs on `127.0.0.1:0`.
//!
//! Every wait is bounded by [`PATIENCE`]; the CLI tests run the built binary.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use tej_hub::hub::config::HubConfig;
use tej_hub::hub::control::{Reply, CONTROL};
use tej_hub::hub::{self, HubClient, HubError, HubHandle};
use tej_hub::{CodecError, Frame, Status};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

/// How long any single wait may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(10);
/// The `tej-hub` binary built for these tests.
const BIN: &str = env!("CARGO_BIN_EXE_tej-hub");

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(PATIENCE, future).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: nothing within {PATIENCE:?}"),
    }
}

fn status(code: u8) -> Status {
    Status::new(code).expect("test codes are at most 127")
}

/// A hub on `127.0.0.1:0` with one worker thread (the tests run many hubs at once).
fn start_hub(config: HubConfig) -> HubHandle {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    hub::spawn(listener, config).expect("spawn hub")
}

fn small_config() -> HubConfig {
    HubConfig {
        workers: 1,
        ..HubConfig::default()
    }
}

async fn connect(hub: &HubHandle) -> HubClient {
    within("connect", HubClient::connect(hub.local_addr()))
        .await
        .expect("connect to hub")
}

/// Stops `hub` off the async runtime (shutdown joins the hub's thread).
async fn stop(hub: HubHandle) {
    within(
        "hub shutdown",
        tokio::task::spawn_blocking(move || hub.shutdown()),
    )
    .await
    .expect("shutdown task")
    .expect("hub shut down cleanly");
}

#[tokio::test]
async fn subscribe_publish_next_frame_round_trip() {
    let hub = start_hub(small_config());
    let mut subscriber = connect(&hub).await;
    let mut publisher = connect(&hub).await;

    let codes = within("SUB", subscriber.subscribe("8 ,5 7")).await.unwrap();
    assert_eq!(codes.to_string(), "5,7-8");

    let frame = Frame::builder(status(5))
        .file("a.txt", &b"hello"[..])
        .file("empty", &b""[..])
        .message("hi")
        .build();
    within("publish", publisher.publish(frame.clone()))
        .await
        .unwrap();
    let got = within("relay", subscriber.next_frame()).await.unwrap();
    assert_eq!(got, Some(frame));

    // Not subscribed to 6: only 7 arrives, in the publisher's order.
    for code in [6, 7] {
        let frame = Frame::message(status(code), format!("code {code}"));
        within("publish", publisher.publish(frame)).await.unwrap();
    }
    let got = within("relay", subscriber.next_frame()).await.unwrap();
    assert_eq!(got.map(|f| f.message), Some("code 7".into()));

    // After UNSUB 7, a 7 is not relayed but the following 8 is.
    let codes = within("UNSUB", subscriber.unsubscribe("7")).await.unwrap();
    assert_eq!(codes.to_string(), "7");
    for code in [7, 8] {
        let frame = Frame::message(status(code), format!("code {code}"));
        within("publish", publisher.publish(frame)).await.unwrap();
    }
    let got = within("relay", subscriber.next_frame()).await.unwrap();
    assert_eq!(got.map(|f| f.message), Some("code 8".into()));

    // With ECHO on, a subscribed publisher gets its own frame back.
    within("ECHO", publisher.set_echo(true)).await.unwrap();
    within("SUB", publisher.subscribe("9")).await.unwrap();
    let echoed = Frame::message(status(9), "me too");
    within("publish", publisher.publish(echoed.clone()))
        .await
        .unwrap();
    let got = within("echo", publisher.next_frame()).await.unwrap();
    assert_eq!(got, Some(echoed));

    // The raw command path returns the text after "OK ".
    let reply = within("command", publisher.command("echo OFF")).await;
    assert_eq!(reply.unwrap(), Reply::Echo(false));

    drop((subscriber, publisher));
    stop(hub).await;
}

#[tokio::test]
async fn refused_commands_keep_the_connection_usable() {
    let hub = start_hub(small_config());
    let mut client = connect(&hub).await;

    let refused = within("SUB 2", client.subscribe("2")).await;
    assert!(
        matches!(&refused, Err(HubError::Refused(reason)) if reason == "reserved code 2"),
        "{refused:?}"
    );
    let refused = within("SUB 1-200", client.subscribe("1-200")).await;
    assert!(
        matches!(&refused, Err(HubError::Refused(reason)) if reason.contains("out of range")),
        "{refused:?}"
    );
    let refused = within("UNSUB x", client.unsubscribe("x")).await;
    assert!(
        matches!(&refused, Err(HubError::Refused(reason)) if reason == "bad code \"x\""),
        "{refused:?}"
    );
    let refused = within("PUB", client.command("PUB 5")).await;
    assert!(
        matches!(&refused, Err(HubError::Refused(reason)) if reason.starts_with("unknown command")),
        "{refused:?}"
    );

    // Reserved statuses are refused before anything is sent.
    let refused = within("publish 2", client.publish(Frame::ping())).await;
    assert!(
        matches!(refused, Err(HubError::ReservedStatus(s)) if s == Status::PING),
        "{refused:?}"
    );
    let control = Frame::message(CONTROL, "SUB 5");
    let refused = within("publish 127", client.publish(control)).await;
    assert!(
        matches!(refused, Err(HubError::ReservedStatus(s)) if s == CONTROL),
        "{refused:?}"
    );
    // A frame over the client's own limits: a codec error, nothing sent.
    let huge = Frame::message(status(5), vec![0u8; 64 * 1024 * 1024 + 1]);
    let refused = within("publish huge", client.publish(huge)).await;
    assert!(
        matches!(
            refused,
            Err(HubError::Codec(CodecError::MessageTooLarge { .. }))
        ),
        "{refused:?}"
    );

    // Still usable, and the refused commands changed nothing.
    let codes = within("SUB 5", client.subscribe("5")).await.unwrap();
    assert_eq!(codes.to_string(), "5");
    let info = within("INFO", client.info()).await.unwrap();
    assert_eq!(info.subscriptions.to_string(), "5");

    drop(client);
    stop(hub).await;
}

/// A publisher floods code 5 while the subscriber issues commands: every frame reaches
/// `next_frame`, once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_arriving_while_commands_wait_are_kept() {
    const FRAMES: u32 = 3000;
    let hub = start_hub(HubConfig {
        workers: 2,
        ..HubConfig::default()
    });
    let mut subscriber = connect(&hub).await;
    within("SUB", subscriber.subscribe("5")).await.unwrap();

    let mut publisher = connect(&hub).await;
    let flood: JoinHandle<HubClient> = tokio::spawn(async move {
        for n in 0..FRAMES {
            let frame = Frame::message(status(5), n.to_be_bytes().to_vec());
            publisher.publish(frame).await.expect("publish");
        }
        // Answered after the hub has handled every frame before it.
        publisher.info().await.expect("publisher INFO");
        publisher
    });

    let mut seen_buffered = 0;
    for round in 0..40 {
        let info = within("INFO", subscriber.info()).await.unwrap();
        assert_eq!(info.subscriptions.to_string(), "5");
        within("ECHO", subscriber.set_echo(round % 2 == 0))
            .await
            .unwrap();
        let codes = within("SUB", subscriber.subscribe("6")).await.unwrap();
        assert_eq!(codes.to_string(), "6");
        let codes = within("UNSUB", subscriber.unsubscribe("6")).await.unwrap();
        assert_eq!(codes.to_string(), "6");
        let refused = within("SUB 127", subscriber.subscribe("127")).await;
        assert!(matches!(refused, Err(HubError::Refused(_))), "{refused:?}");
        seen_buffered = seen_buffered.max(subscriber.buffered());
    }
    let publisher = within("flood", flood).await.expect("flood task");
    // Every frame was handed to the subscriber's session before the publisher's INFO was
    // answered; the session queues (at least the first of) them ahead of this reply, so this
    // wait reads frames too. Nothing has called next_frame yet: all of them are kept.
    within("last INFO", subscriber.info()).await.unwrap();
    let kept = subscriber.buffered();
    assert!(kept > 0 && kept <= FRAMES as usize, "{kept} frames kept");

    for expected in 0..FRAMES {
        let frame = within("next_frame", subscriber.next_frame())
            .await
            .unwrap()
            .expect("hub still open");
        assert_eq!(frame.status, status(5));
        assert_eq!(&frame.message[..], &expected.to_be_bytes()[..]);
    }
    assert_eq!(subscriber.buffered(), 0);
    println!("frames kept: up to {seen_buffered} during the rounds, {kept} before draining");

    drop((subscriber, publisher));
    stop(hub).await;
}

#[tokio::test]
async fn info_describes_the_session() {
    let hub = start_hub(small_config());
    let mut client = connect(&hub).await;
    within("SUB", client.subscribe("9, 5")).await.unwrap();

    // Every key is there, or the reply would not parse as an `Info`.
    let info = within("INFO", client.info()).await.unwrap();
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    assert!(info.session >= 1, "{info:?}");
    assert!(info.peer.ip().is_loopback(), "{info:?}");
    assert_eq!(info.subscriptions.to_string(), "5,9");
    assert!(!info.echo);
    assert_eq!(info.limits, small_config().limit_settings());
    assert!(info.counters.frames_in >= 2, "{info:?}");

    within("ECHO", client.set_echo(true)).await.unwrap();
    let info = within("INFO", client.info()).await.unwrap();
    assert!(info.echo);

    drop(client);
    stop(hub).await;
}

#[tokio::test]
async fn next_frame_reports_why_the_hub_closes() {
    let hub = start_hub(HubConfig {
        idle_timeout: 1,
        ..small_config()
    });
    let mut client = connect(&hub).await;
    within("SUB", client.subscribe("5")).await.unwrap();

    let closed = within("idle timeout", client.next_frame()).await;
    assert!(
        matches!(&closed, Err(HubError::Closed { reason: Some(r) }) if r == "idle timeout"),
        "{closed:?}"
    );
    let after = within("end", client.next_frame()).await;
    assert!(matches!(after, Ok(None)), "{after:?}");

    stop(hub).await;
}

#[tokio::test]
async fn close_reports_a_frame_the_hub_refused() {
    let hub = start_hub(HubConfig {
        max_frame_bytes: 1024,
        ..small_config()
    });
    let mut client = connect(&hub).await;
    let frame = Frame::builder(status(5))
        .file("big.bin", vec![7u8; 4096])
        .build();
    // Written: the protocol has no acknowledgement.
    within("publish", client.publish(frame)).await.unwrap();
    let closed = within("close", client.close()).await;
    assert!(
        matches!(&closed, Err(HubError::Closed { reason: Some(r) }) if r.contains("exceeds the limit of 1024")),
        "{closed:?}"
    );

    // A frame within the limit is confirmed by close().
    let mut client = connect(&hub).await;
    within("publish", client.publish(Frame::message(status(5), "ok")))
        .await
        .unwrap();
    within("close", client.close()).await.unwrap();

    stop(hub).await;
}

// ---- the CLI ----

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path =
            std::env::temp_dir().join(format!("tej-hub-client-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the binary to completion.
async fn run_cli(args: &[&str]) -> Output {
    let child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run tej-hub");
    within("tej-hub", child.wait_with_output())
        .await
        .expect("tej-hub output")
}

/// A running `tej-hub sub`, subscribed: its stdout and the rest of its stderr are collected.
struct RunningSub {
    child: Child,
    stdout: JoinHandle<String>,
    stderr: JoinHandle<String>,
}

impl RunningSub {
    /// Starts `tej-hub sub ARGS --hub ADDR` and waits for its "subscribed" line.
    async fn start(hub: SocketAddr, args: &[&str]) -> RunningSub {
        let mut child = Command::new(BIN)
            .arg("sub")
            .args(args)
            .args(["--hub", &hub.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run tej-hub sub");
        let mut stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = BufReader::new(child.stderr.take().expect("piped stderr"));
        let mut first = String::new();
        within("sub's subscribed line", stderr.read_line(&mut first))
            .await
            .expect("read sub's stderr");
        assert!(first.contains("subscribed to"), "sub said {first:?}");
        RunningSub {
            child,
            stdout: tokio::spawn(async move {
                let mut text = String::new();
                let _ = stdout.read_to_string(&mut text).await;
                text
            }),
            stderr: tokio::spawn(async move {
                let mut text = first;
                let _ = stderr.read_to_string(&mut text).await;
                text
            }),
        }
    }

    /// Waits for the exit: (exit code, stdout, stderr).
    async fn finish(mut self) -> (Option<i32>, String, String) {
        let status = within("sub exit", self.child.wait())
            .await
            .expect("wait for sub");
        let stdout = within("sub stdout", self.stdout).await.expect("stdout");
        let stderr = within("sub stderr", self.stderr).await.expect("stderr");
        (status.code(), stdout, stderr)
    }
}

#[tokio::test]
async fn cli_sub_prints_and_saves_what_pub_sends() {
    let hub = start_hub(small_config());
    let addr = hub.local_addr().to_string();
    let inbox = TempDir::new("inbox");
    let outbox = TempDir::new("outbox");
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let source = outbox.path().join("data.bin");
    std::fs::write(&source, &payload).unwrap();
    let out_dir = inbox.path().join("saved");

    let sub = RunningSub::start(
        hub.local_addr(),
        &["5", "--count", "2", "--out", out_dir.to_str().unwrap()],
    )
    .await;
    for _ in 0..2 {
        let published = run_cli(&[
            "pub",
            "5",
            "--message",
            "hi",
            "--file",
            source.to_str().unwrap(),
            "--hub",
            &addr,
        ])
        .await;
        assert_eq!(published.status.code(), Some(0), "{published:?}");
        assert!(published.stdout.is_empty(), "{published:?}");
    }
    let (code, stdout, stderr) = sub.finish().await;
    assert_eq!(code, Some(0), "stdout {stdout:?}, stderr {stderr:?}");
    let one = "status: 5\nfile: data.bin (100000 bytes)\nmessage: hi\n";
    assert_eq!(stdout, format!("{one}\n{one}"), "stderr {stderr:?}");

    assert_eq!(std::fs::read(out_dir.join("data.bin")).unwrap(), payload);
    assert_eq!(std::fs::read(out_dir.join("data.bin.1")).unwrap(), payload);
    assert_eq!(std::fs::read_dir(&out_dir).unwrap().count(), 2);

    stop(hub).await;
}

#[tokio::test]
async fn cli_sub_saves_only_safe_names() {
    let hub = start_hub(small_config());
    let inbox = TempDir::new("names");
    let out_dir = inbox.path().join("saved");
    let sub = RunningSub::start(
        hub.local_addr(),
        &["5", "--count", "1", "--out", out_dir.to_str().unwrap()],
    )
    .await;

    let mut publisher = connect(&hub).await;
    let frame = Frame::builder(status(5))
        .file("../escaped.txt", &b"no"[..])
        .file(
            format!("{}/absolute.txt", inbox.path().display()),
            &b"no"[..],
        )
        .file("", &b"no"[..])
        .file("..", &b"no"[..])
        .file("nested/dir/kept.txt", &b"yes"[..])
        .build();
    within("publish", publisher.publish(frame)).await.unwrap();
    within("close", publisher.close()).await.unwrap();

    let (code, stdout, stderr) = sub.finish().await;
    assert_eq!(code, Some(0), "stdout {stdout:?}, stderr {stderr:?}");
    assert!(
        stdout.contains("file: ../escaped.txt (2 bytes)"),
        "{stdout}"
    );
    assert!(stderr.contains("not saving"), "{stderr}");
    assert_eq!(std::fs::read(out_dir.join("kept.txt")).unwrap(), b"yes");
    assert_eq!(std::fs::read_dir(&out_dir).unwrap().count(), 1);
    // Nothing landed next to the output directory.
    let beside: Vec<_> = std::fs::read_dir(inbox.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(beside, ["saved"]);

    stop(hub).await;
}

#[tokio::test]
async fn cli_sub_reports_a_hub_shutdown() {
    let hub = start_hub(small_config());
    let sub = RunningSub::start(hub.local_addr(), &["*"]).await;
    stop(hub).await;
    // The hub says why it closes (`ERR hub shutting down`); sub ends early and says so.
    let (code, stdout, stderr) = sub.finish().await;
    assert_eq!(code, Some(1), "stdout {stdout:?}, stderr {stderr:?}");
    assert!(stderr.contains("hub shutting down"), "{stderr}");
    assert!(stdout.is_empty());
}

#[tokio::test]
async fn cli_sub_refused_exits_1_with_the_reason() {
    let hub = start_hub(small_config());
    let addr = hub.local_addr().to_string();
    let refused = run_cli(&["sub", "1-3", "--hub", &addr]).await;
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("reserved code 2"), "{stderr}");
    stop(hub).await;
}

#[tokio::test]
async fn cli_usage_errors_exit_2() {
    let hub = start_hub(small_config());
    let addr = hub.local_addr().to_string();
    for args in [
        vec!["pub", "2"],
        vec!["pub", "127"],
        vec!["pub", "128"],
        vec!["pub", "x"],
        vec!["pub"],
        vec!["sub"],
        vec!["sub", "5", "--count", "0"],
        vec!["pub", "5", "--file", "/"],
    ] {
        let mut args = args;
        args.extend(["--hub", &addr]);
        let output = run_cli(&args).await;
        assert_eq!(output.status.code(), Some(2), "{args:?}: {output:?}");
    }
    stop(hub).await;
}

#[tokio::test]
async fn cli_pub_failures_exit_1() {
    // Nothing listens on a port just released.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap().to_string();
    drop(free);
    let output = run_cli(&["pub", "5", "--message", "hi", "--hub", &addr]).await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot connect"));

    // A file that cannot be read.
    let hub = start_hub(HubConfig {
        max_frame_bytes: 1024,
        ..small_config()
    });
    let addr = hub.local_addr().to_string();
    let missing = "/nonexistent/tej-hub-client-test";
    let output = run_cli(&["pub", "5", "--file", missing, "--hub", &addr]).await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");

    // A frame over the hub's limit: the hub's reason is reported.
    let dir = TempDir::new("big");
    let big = dir.path().join("big.bin");
    std::fs::write(&big, vec![1u8; 4096]).unwrap();
    let output = run_cli(&["pub", "5", "--file", big.to_str().unwrap(), "--hub", &addr]).await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("exceeds the limit of 1024"), "{stderr}");

    stop(hub).await;
}
