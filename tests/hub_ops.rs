//! Operating the `tej-hub serve` binary over real sockets on `127.0.0.1:0`: the lame-duck drain
//! on SIGUSR2 (a 256 MiB streamed frame in progress completes intact, new connections are
//! refused, `/healthz` turns 503, every connection ends with `ERR hub draining`, exit 0; SIGTERM
//! during a drain) and the reload on SIGHUP (a lowered `max-pending-bytes` reaches new sessions,
//! `INFO` and `/varz`, the log filter changes at once; an invalid file changes nothing).

#[path = "common/http.rs"]
mod http;
#[path = "common/hub.rs"]
mod hub_common;

use std::time::{Duration, Instant};

use rustix::process::Signal;
use tej_hub::Frame;
use tokio::io::AsyncWriteExt;

use http::get_async;
use hub_common::{
    connect, connect_raw, control_frame, decode_all, encode, info, pattern, read_until_closed,
    read_until_closed_within, reply_text, status, subscribe, within, BinHub, MIB, PATIENCE,
};

/// Checks that `bytes` end with exactly one `ERR hub draining` control frame.
fn assert_ends_draining(bytes: &[u8], what: &str) {
    let frames = decode_all(bytes);
    let last = frames
        .last()
        .unwrap_or_else(|| panic!("{what}: nothing before the close"));
    assert_eq!(reply_text(last, what), "ERR hub draining", "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_finishes_the_streamed_frame_then_closes_everyone_with_err() {
    let mut hub = BinHub::start(&["--http", "127.0.0.1:0", "--drain-seconds", "2"]);
    let web = hub.monitor_addr();
    // A subscriber of the big frame, an idle subscriber, and the publisher.
    let mut sub = connect_raw(hub.addr).await;
    sub.write_all(&encode(&control_frame("SUB 9")))
        .await
        .expect("SUB");
    let mut idle = connect(hub.addr).await;
    subscribe(&mut idle, "10", "10").await;
    let mut publisher = connect_raw(hub.addr).await;
    // Wait for the raw subscriber's OK before publishing (read exactly that frame).
    let ok = encode(&Frame::message(status(127), "OK SUB 9"));
    let mut got = vec![0u8; ok.len()];
    within(
        PATIENCE,
        "OK SUB 9",
        tokio::io::AsyncReadExt::read_exact(&mut sub, &mut got),
    )
    .await
    .expect("read OK SUB");
    assert_eq!(got, ok);

    let data = pattern(256 * MIB, 7);
    let frame = Frame::builder(status(9)).file("big.bin", data).build();
    let wire = encode(&frame);
    // The first 16 MiB, then the drain, then the rest.
    let (head, rest) = wire.split_at(16 * MIB);
    publisher.write_all(head).await.expect("write the head");
    let reader = tokio::spawn(async move {
        let bytes = read_until_closed_within(&mut sub, Duration::from_secs(60)).await;
        (sub, bytes)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    hub.signal(Signal::USR2);
    let drain_start = Instant::now();
    // /healthz turns 503 and new connections are refused.
    within(PATIENCE, "/healthz 503", async {
        loop {
            let health = get_async(web, "/healthz").await;
            if health.status == 503 {
                assert_eq!(health.json()["status"], "draining");
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    within(PATIENCE, "connections refused", async {
        while tokio::net::TcpStream::connect(hub.addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    publisher.write_all(rest).await.expect("write the rest");
    let frame_end = Instant::now();

    let (_sub, received) = reader.await.expect("the subscriber");
    assert!(
        received.len() > wire.len(),
        "the subscriber got {} of {} bytes",
        received.len(),
        wire.len()
    );
    assert!(
        received[..wire.len()] == wire[..],
        "the streamed frame arrived altered"
    );
    assert_ends_draining(&received[wire.len()..], "the subscriber");
    let publisher_got = read_until_closed(&mut publisher).await;
    assert_ends_draining(&publisher_got, "the publisher");
    let mut idle_got = Vec::new();
    within(PATIENCE, "the idle subscriber's end", async {
        while let Some(Ok(frame)) = futures_util::StreamExt::next(&mut idle).await {
            idle_got.push(frame);
        }
    })
    .await;
    let last = idle_got.last().expect("the idle subscriber got its ERR");
    assert_eq!(reply_text(last, "idle"), "ERR hub draining");

    let status = hub
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("the hub did not exit; logs: {:?}", hub.logs()));
    assert!(status.success(), "exit status {status}");
    // Within --drain-seconds (2 s, plus slack for a loaded machine) of the frame's end.
    let exited = frame_end.elapsed();
    assert!(
        exited < Duration::from_secs(5),
        "exited {exited:?} after the frame ended"
    );
    assert!(drain_start.elapsed() < Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_drain_stops_within_five_seconds() {
    let mut hub = BinHub::start(&["--drain-seconds", "60"]);
    let mut conns = Vec::new();
    for _ in 0..3 {
        conns.push(connect(hub.addr).await);
    }
    hub.signal(Signal::USR2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    hub.signal(Signal::TERM);
    let status = hub
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("still running 5 s after SIGTERM; logs: {:?}", hub.logs()));
    assert!(status.success(), "exit status {status}");
}

/// Writes `text` to `path`.
fn write_file(path: &std::path::Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_to_new_sessions_and_an_invalid_file_changes_nothing() {
    let dir = std::env::temp_dir().join(format!("tej-hub-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("hub.toml");
    write_file(&path, "max-pending-bytes = 16777216\nworkers = 2\n");
    let config = path.to_str().expect("a UTF-8 path");
    let hub = BinHub::start(&["--config", config, "--http", "127.0.0.1:0"]);
    let web = hub.monitor_addr();
    let mut before = connect(hub.addr).await;
    assert_eq!(
        info(&mut before).await["limits"]["max_pending_bytes"],
        16_777_216
    );
    let varz = get_async(web, "/varz").await.json();
    assert_eq!(varz["limits"]["max_pending_bytes"], 16_777_216);
    let loaded_at = varz["config_loaded_at"].clone();
    assert!(loaded_at.is_string());

    // Lowered, and a restart-only setting changed too.
    write_file(
        &path,
        "max-pending-bytes = 65536\nworkers = 3\nslow-consumer = \"drop\"\nlog-level = \"warn\"\n",
    );
    // config_loaded_at has whole seconds: make the reload's differ.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    hub.signal(Signal::HUP);
    let varz = within(PATIENCE, "the reload in /varz", async {
        loop {
            let varz = get_async(web, "/varz").await.json();
            if varz["limits"]["max_pending_bytes"] == 65_536 {
                return varz;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(varz["slow_consumer"], "drop");
    assert_ne!(varz["config_loaded_at"], loaded_at);
    let mut after = connect(hub.addr).await;
    let info_after = info(&mut after).await;
    assert_eq!(info_after["limits"]["max_pending_bytes"], 65_536);
    assert_eq!(info_after["slow_consumer"], "drop");
    // The log filter changed at once: the new session's connect line (info) is not logged,
    // the first one's was.
    let connected = |session: u64| {
        let line = format!(": connected session={session} ");
        hub.logs().iter().any(|l| l.contains(&line))
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(connected(1), "logs: {:?}", hub.logs());
    let session = info_after["session"].as_u64().expect("session id");
    assert!(!connected(session), "logged at info after log-level = warn");
    // A session keeps the settings it started with.
    assert_eq!(
        info(&mut before).await["limits"]["max_pending_bytes"],
        16_777_216
    );
    assert!(
        hub.logs()
            .iter()
            .any(|line| line.contains("needs a restart") && line.contains("workers")),
        "workers change not logged: {:?}",
        hub.logs()
    );

    // An invalid file: logged, nothing changes.
    let loaded_at = varz["config_loaded_at"].clone();
    write_file(&path, "max-pending-bytes = \"lots\"\n");
    hub.signal(Signal::HUP);
    within(PATIENCE, "the refusal in the logs", async {
        while !hub
            .logs()
            .iter()
            .any(|line| line.contains("reload refused"))
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let varz = get_async(web, "/varz").await.json();
    assert_eq!(varz["limits"]["max_pending_bytes"], 65_536);
    assert_eq!(varz["config_loaded_at"], loaded_at);
    let mut third = connect(hub.addr).await;
    assert_eq!(
        info(&mut third).await["limits"]["max_pending_bytes"],
        65_536
    );
    let _ = std::fs::remove_dir_all(&dir);
}
