//! Connection scale, over real sockets on `127.0.0.1` with the `tej-hub` binary: it raises its
//! open-files soft limit to the hard limit at start and logs what it got; idle subscribers cost
//! it at most 10 KiB each; one publication reaches every one of them. (`tej-hub bench connections`
//! measures the same at 10,000 connections: docs/benchmarks.md.)

#[path = "common/bench.rs"]
mod bench_common;
#[path = "common/hub.rs"]
mod hub_common;

use std::time::Duration;

use futures_util::StreamExt;
use tej_hub::Frame;

use bench_common::bench_json;
use hub_common::{connect, recv, send, status, subscribe, within, BinHub, Conn, PATIENCE};

/// Idle subscribers in the memory test: enough that the hub's fixed costs fade, few enough for CI.
const CONNECTIONS: u64 = 2_000;
/// Connections being set up at a time.
const PARALLEL: usize = 64;
/// The most a subscribed, idle connection may cost the hub.
const BOUND_BYTES: u64 = 10 * 1024;
/// How long the subscribers stay idle before the hub's memory is read: it gives an idle
/// connection's buffers back about a second after its last byte.
const IDLE: Duration = Duration::from_secs(3);

/// The hub's `open files limit soft=N hard=M` log line, as `(N, M)`, waiting for it up to
/// [`PATIENCE`].
fn logged_open_files_limit(hub: &BinHub) -> (u64, u64) {
    let field = |line: &str, name: &str| -> Option<u64> {
        let value = line.split(name).nth(1)?;
        value.split_whitespace().next()?.parse().ok()
    };
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let logs = hub.logs();
        let found = logs
            .iter()
            .filter(|line| line.contains("open files limit"))
            .find_map(|line| Some((field(line, "soft=")?, field(line, "hard=")?)));
        if let Some(limits) = found {
            return limits;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no open files limit in the hub's logs: {logs:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The soft and hard limits on open files of process `pid`, from `/proc/PID/limits`.
fn open_files_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read its limits");
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut fields = line.split_whitespace().skip(3);
    let soft = fields.next().expect("a soft limit").to_owned();
    let hard = fields.next().expect("a hard limit").to_owned();
    (soft, hard)
}

#[test]
fn the_hub_raises_its_open_files_limit_at_start_and_logs_it() {
    let hub = BinHub::start_with_open_files(256, &[]);
    let (soft, hard) = logged_open_files_limit(&hub);
    assert_eq!(soft, hard, "the soft limit is raised to the hard one");
    assert!(soft > 256, "soft limit {soft}");
    let (soft, hard) = open_files_limits(hub.pid());
    assert_eq!(soft, hard, "/proc/PID/limits of the hub");
}

/// A connection subscribed to code 5.
async fn subscriber(addr: std::net::SocketAddr) -> Conn {
    let mut conn = connect(addr).await;
    subscribe(&mut conn, "5", "5").await;
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_subscribers_cost_at_most_10_kib_each_and_all_get_a_publication() {
    // This process holds a descriptor per connection too.
    let (soft, hard) = tej_hub::hub::raise_open_files_limit().expect("raise the open files limit");
    assert!(
        soft >= CONNECTIONS + 100,
        "{CONNECTIONS} connections need more than {soft} open files (hard limit {hard})"
    );
    let hub = BinHub::start(&[]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = hub.rss_kib();

    let opening = futures_util::stream::iter(0..CONNECTIONS)
        .map(|_| subscriber(hub.addr))
        .buffer_unordered(PARALLEL)
        .collect::<Vec<Conn>>();
    let mut subscribers = within(Duration::from_secs(60), "the subscribers", opening).await;
    tokio::time::sleep(IDLE).await;
    let after = hub.rss_kib();
    let per_connection = after.saturating_sub(before) * 1024 / CONNECTIONS;
    eprintln!(
        "tej-hub VmRSS {before} KiB -> {after} KiB with {CONNECTIONS} idle subscribers: \
         {per_connection} bytes each"
    );
    assert!(
        per_connection <= BOUND_BYTES,
        "an idle subscriber costs the hub {per_connection} bytes ({before} KiB -> {after} KiB)"
    );

    let mut publisher = connect(hub.addr).await;
    let frame = Frame::message(status(5), "to every one of them");
    send(&mut publisher, frame.clone()).await;
    let received = futures_util::future::join_all(subscribers.iter_mut().map(recv));
    let received = within(Duration::from_secs(60), "the publication", received).await;
    assert_eq!(received.len() as u64, CONNECTIONS);
    assert!(
        received.iter().all(|got| *got == frame),
        "a subscriber got another frame"
    );
}

#[test]
fn bench_connections_prints_json_with_every_figure() {
    let report = bench_json(
        &["connections", "--count", "200"],
        60,
        Duration::from_secs(90),
    );
    assert_eq!(report["bench"], "connections");
    assert_eq!(report["connections"], 200);
    assert_eq!(report["all_received"], true);
    assert_eq!(report["received"], 200);
    for key in [
        "rss_before_kib",
        "rss_after_kib",
        "per_connection_bytes",
        "publish_fanout_ms",
    ] {
        assert!(report[key].is_number(), "{key} in {report}");
    }
}
