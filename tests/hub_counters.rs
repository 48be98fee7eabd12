//! The hub-wide counters over real sockets on `127.0.0.1:0`, read on all three surfaces (`INFO`,
//! `/varz`, `/metrics`): frames read together in one piece count one each, every accepted TCP
//! connection counts (refused and failed-TLS ones too), and the security counters reach all three.

#[path = "common/hub.rs"]
mod hub_common;
// The cluster test's harness, which brings the HTTP client along (`nats::http`).
#[path = "common/nats.rs"]
mod nats;
#[path = "common/pki.rs"]
mod pki;

use std::collections::HashMap;
use std::net::SocketAddr;

use bytes::BytesMut;
use serde_json::Value;
use tej_hub::hub::config::{HubConfig, PermissionsConfig, UserConfig};
use tej_hub::Frame;
use tokio::io::AsyncWriteExt;
use tokio_util::codec::Framed;

use hub_common::{
    cheap_hash, connect, connect_raw, connect_small_window, control, control_frame, encode,
    expect_err_and_close, info, read_until_closed, recv, reply_text, send, start_hub, status,
    stop_hub, subscribe, test_config, within, BinHub, Conn, PATIENCE,
};
use nats::http::{get_async, num, parse_metrics};
use nats::NatsServer;
use pki::Pki;

/// Frames in each run written at once.
const N: u64 = 40;

/// A hub configuration with the monitoring listener on a free port.
fn monitored() -> HubConfig {
    HubConfig {
        http: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        ..test_config()
    }
}

/// The hub's figures on every surface at one moment.
struct Surfaces {
    info: Value,
    varz: Value,
    metrics: HashMap<String, f64>,
    subsz: Value,
    connz: Value,
}

impl Surfaces {
    /// Reads `INFO` on `conn` (which must have nothing else coming) and the HTTP views.
    async fn read(conn: &mut Conn, web: SocketAddr) -> Surfaces {
        let info = info(conn).await;
        Surfaces::read_with(info, web).await
    }

    async fn read_with(info: Value, web: SocketAddr) -> Surfaces {
        let metrics = get_async(web, "/metrics").await;
        assert_eq!(metrics.status, 200);
        Surfaces {
            info,
            varz: get_async(web, "/varz").await.json(),
            metrics: parse_metrics(&metrics.body),
            subsz: get_async(web, "/subsz").await.json(),
            connz: get_async(web, "/connz").await.json(),
        }
    }

    /// Hub-wide counter `key` on each surface: `INFO`'s `hub`, `/varz`, `/metrics`.
    fn hub(&self, key: &str) -> [u64; 3] {
        let series = format!("tej_hub_{key}_total");
        let metric = self
            .metrics
            .get(&series)
            .unwrap_or_else(|| panic!("no {series} in /metrics"));
        [
            num(&self.info["hub"], key),
            num(&self.varz, key),
            *metric as u64,
        ]
    }

    /// Frames published on `code` (`/subsz` and `/metrics`).
    fn code_frames(&self, code: u64) -> [u64; 2] {
        let subsz = self.subsz["codes"]
            .as_array()
            .expect("codes")
            .iter()
            .find(|c| num(c, "code") == code)
            .map_or(0, |c| num(c, "frames"));
        let series = format!("tej_hub_code_frames_total{{code=\"{code}\"}}");
        let metric = self.metrics.get(&series).copied().unwrap_or(0.0) as u64;
        [subsz, metric]
    }

    /// Field `key` of session `session` in `/connz`.
    fn session(&self, session: u64, key: &str) -> u64 {
        let conn = self.connz["connections"]
            .as_array()
            .expect("connections")
            .iter()
            .find(|c| num(c, "session") == session)
            .unwrap_or_else(|| panic!("session {session} not in /connz"));
        num(conn, key)
    }
}

/// Asserts that hub-wide counter `key` moved by `by` on every surface from `before` to `after`.
fn moved(before: &Surfaces, after: &Surfaces, key: &str, by: u64) {
    let (b, a) = (before.hub(key), after.hub(key));
    let moves: Vec<u64> = a.iter().zip(b).map(|(a, b)| a - b).collect();
    assert_eq!(
        moves, [by; 3],
        "{key} moved by {moves:?} (INFO, /varz, /metrics), not {by}: {b:?} -> {a:?}"
    );
}

/// `count` frames on `code`, each with a `len`-byte message, as one buffer.
fn run(code: u8, count: u64, len: usize) -> BytesMut {
    let frame = encode(&Frame::message(status(code), "r".repeat(len)));
    let mut wire = BytesMut::new();
    for _ in 0..count {
        wire.extend_from_slice(&frame);
    }
    wire
}

/// Writes `wire` in one write, then `INFO`: once its reply is in, the hub has handled every
/// frame before it. Skips the `ERR`s a denied publication draws.
async fn write_then_info(conn: &mut Conn, wire: &[u8]) -> Value {
    within(PATIENCE, "one write", conn.get_mut().write_all(wire))
        .await
        .expect("write the frames");
    send(conn, control_frame("INFO")).await;
    loop {
        let reply = reply_text(&recv(conn).await, "INFO");
        if let Some(json) = reply.strip_prefix("OK INFO ") {
            return serde_json::from_str(json).expect("INFO is JSON");
        }
        assert!(reply.starts_with("ERR permission denied"), "{reply}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_written_at_once_count_one_each_on_every_surface() {
    const FILLER: usize = 4096;
    let hub = start_hub(HubConfig {
        // Anonymous connections may not publish on code 6 (a hub with users is not open).
        users: vec![bob()],
        anonymous: Some(PermissionsConfig {
            publish: Some("5,7,9".into()),
            subscribe: Some("*".into()),
        }),
        max_pending_bytes: 32 * 1024,
        ..monitored()
    });
    let (addr, web) = (hub.local_addr(), hub.monitor_addr().expect("monitor"));
    let mut subscriber = connect(addr).await;
    subscribe(&mut subscriber, "5", "5").await;
    let subscriber_id = num(&info(&mut subscriber).await, "session");
    let mut publisher = connect(addr).await;
    let publisher_id = num(&info(&mut publisher).await, "session");

    // Delivered (5), unrouted (9), denied (6): three runs of N in one write.
    let before = Surfaces::read(&mut publisher, web).await;
    let mut wire = run(5, N, 100);
    wire.extend_from_slice(&run(9, N, 100));
    wire.extend_from_slice(&run(6, N, 100));
    let reply = write_then_info(&mut publisher, &wire).await;
    for _ in 0..N {
        assert_eq!(recv(&mut subscriber).await.status.code(), 5);
    }
    let after = Surfaces::read_with(reply, web).await;
    moved(&before, &after, "unrouted_frames", N);
    moved(&before, &after, "denied_frames", N);
    moved(&before, &after, "dropped_frames", 0);
    for (code, by) in [(5, N), (9, N), (6, 0)] {
        let (b, a) = (before.code_frames(code), after.code_frames(code));
        assert_eq!(
            [a[0] - b[0], a[1] - b[1]],
            [by; 2],
            "code {code} frames (/subsz, /metrics): {b:?} -> {a:?}"
        );
    }
    // The publisher's own view counts INFO too: 3 runs plus the INFO that read them.
    let frames_in = |s: &Surfaces| num(&s.info["counters"], "frames_in");
    assert_eq!(frames_in(&after) - frames_in(&before), 3 * N + 1);
    assert_eq!(num(&after.info, "denied_frames"), N);
    assert_eq!(
        after.session(publisher_id, "frames_in") - before.session(publisher_id, "frames_in"),
        3 * N + 1
    );
    assert_eq!(
        after.session(subscriber_id, "frames_out") - before.session(subscriber_id, "frames_out"),
        N
    );

    // Dropped: a subscriber under `drop` that reads nothing. Fillers until one is dropped leave
    // its queue within a filler of the mark, so a run at least a filler long cannot fit.
    let mut slow: Conn = Framed::new(connect_small_window(addr).await, Default::default());
    assert_eq!(control(&mut slow, "SLOW drop").await, "OK SLOW drop");
    subscribe(&mut slow, "7", "7").await;
    let slow_id = num(&info(&mut slow).await, "session");
    let filler = encode(&Frame::message(status(7), "f".repeat(FILLER)));
    let mut fillers = 0;
    let before = loop {
        let reply = write_then_info(&mut publisher, &filler).await;
        fillers += 1;
        if num(&reply["hub"], "dropped_frames") > 0 {
            break Surfaces::read_with(reply, web).await;
        }
        assert!(fillers < 2_000, "no filler was ever dropped");
    };
    let long_run = run(7, N, 200);
    assert!(long_run.len() > filler.len());
    let reply = write_then_info(&mut publisher, &long_run).await;
    let after = Surfaces::read_with(reply, web).await;
    moved(&before, &after, "dropped_frames", N);
    assert_eq!(
        after.session(slow_id, "dropped_frames") - before.session(slow_id, "dropped_frames"),
        N
    );
    let (b, a) = (before.code_frames(7), after.code_frames(7));
    assert_eq!([a[0] - b[0], a[1] - b[1]], [N; 2], "code 7: {b:?} -> {a:?}");
    drop(slow);
    stop_hub(hub).await;
}

/// bob, password `builder`, may publish on and subscribe to code 5.
fn bob() -> UserConfig {
    UserConfig {
        name: "bob".into(),
        password: cheap_hash("builder"),
        publish: Some("5".into()),
        subscribe: Some("5".into()),
        groups: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failures_and_denied_frames_reach_every_surface() {
    let hub = start_hub(HubConfig {
        users: vec![bob()],
        ..monitored()
    });
    let (addr, web) = (hub.local_addr(), hub.monitor_addr().expect("monitor"));
    let mut bob = connect(addr).await;
    assert_eq!(control(&mut bob, "AUTH bob builder").await, "OK AUTH bob");
    let before = Surfaces::read(&mut bob, web).await;
    for attempt in 0..2 {
        let mut guesser = connect_raw(addr).await;
        let wire = encode(&control_frame(&format!("AUTH bob guess{attempt}")));
        guesser.write_all(&wire).await.expect("send AUTH");
        expect_err_and_close(&mut guesser, "auth failed").await;
    }
    let reply = write_then_info(&mut bob, &run(6, 3, 10)).await;
    let after = Surfaces::read_with(reply, web).await;
    moved(&before, &after, "auth_failures", 2);
    moved(&before, &after, "denied_frames", 3);
    stop_hub(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_refused_by_the_per_address_limit_is_accepted_and_refused() {
    let hub = start_hub(HubConfig {
        max_connections_per_ip: 1,
        ..monitored()
    });
    let (addr, web) = (hub.local_addr(), hub.monitor_addr().expect("monitor"));
    let mut first = connect(addr).await;
    let before = Surfaces::read(&mut first, web).await;
    let mut refused = connect_raw(addr).await;
    let text = String::from_utf8_lossy(&read_until_closed(&mut refused).await).into_owned();
    assert!(text.contains("too many connections"), "{text:?}");
    let after = Surfaces::read(&mut first, web).await;
    moved(&before, &after, "refused_connections", 1);
    // Every accepted TCP connection counts, refused ones too.
    let accepted = |s: &Surfaces| {
        [
            num(&s.info["hub"], "connections"),
            num(&s.varz, "total_connections"),
            s.metrics["tej_hub_connections_accepted_total"] as u64,
        ]
    };
    let (b, a) = (accepted(&before), accepted(&after));
    assert_eq!(b, [1; 3], "accepted before");
    assert_eq!(a, [2; 3], "accepted after: INFO, /varz, /metrics");
    assert_eq!(num(&after.varz, "connections"), 1, "open after");
    stop_hub(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_tls_handshake_is_accepted_and_a_tls_failure() {
    let pki = Pki::new("counters");
    let hub = start_hub(HubConfig {
        tls_cert: Some(pki.path("server.pem")),
        tls_key: Some(pki.path("server.key")),
        ..monitored()
    });
    let (addr, web) = (hub.local_addr(), hub.monitor_addr().expect("monitor"));
    // No TLS session to ask INFO on: /varz and /metrics are the surfaces here.
    let figures = |varz: &Value, metrics: &HashMap<String, f64>| {
        [
            num(varz, "total_connections"),
            metrics["tej_hub_connections_accepted_total"] as u64,
            num(varz, "tls_failures"),
            metrics["tej_hub_tls_failures_total"] as u64,
        ]
    };
    let read = || async {
        let varz = get_async(web, "/varz").await.json();
        let metrics = parse_metrics(&get_async(web, "/metrics").await.body);
        figures(&varz, &metrics)
    };
    assert_eq!(read().await, [0; 4]);
    // Plain TEJ on the TLS port: the handshake fails and the hub closes.
    let mut plain = connect_raw(addr).await;
    plain
        .write_all(&encode(&Frame::ping()))
        .await
        .expect("write");
    read_until_closed(&mut plain).await;
    let deadline = std::time::Instant::now() + PATIENCE;
    while read().await[2] == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(read().await, [1; 4], "/varz and /metrics after one failure");
    stop_hub(hub).await;
    drop(pki);
}

/// A `tej-hub serve --cluster` process named `name` on `nats`, with its monitoring address.
fn cluster_hub(nats: &NatsServer, name: &str) -> (BinHub, SocketAddr) {
    let url = nats.url();
    let hub = BinHub::start(&[
        "--cluster",
        &url,
        "--hub-name",
        name,
        "--http",
        "127.0.0.1:0",
    ]);
    let web = hub.monitor_addr();
    (hub, web)
}

/// Polls `/varz` at `web` until its `cluster` object satisfies `pred`, within [`PATIENCE`].
async fn wait_cluster(web: SocketAddr, what: &str, pred: impl Fn(&Value) -> bool) {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let varz = get_async(web, "/varz").await.json();
        if pred(&varz["cluster"]) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "not {what}: {varz}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_written_at_once_count_one_each_across_the_cluster() {
    let Some(mut nats) =
        NatsServer::start("frames_written_at_once_count_one_each_across_the_cluster")
    else {
        return;
    };
    let (a, a_web) = cluster_hub(&nats, "a");
    let (b, b_web) = cluster_hub(&nats, "b");
    for web in [a_web, b_web] {
        wait_cluster(web, "joined", |c| {
            c["connected"] == true && c["remote_hubs"] == 1
        })
        .await;
    }
    let mut b_sub = connect(b.addr).await;
    subscribe(&mut b_sub, "5", "5").await;
    let b_sub_id = num(&info(&mut b_sub).await, "session");
    // INFO on connections of their own, so that the subscriber's figures are the relay's only.
    let mut a_pub = connect(a.addr).await;
    let mut b_watch = connect(b.addr).await;
    let before_a = Surfaces::read(&mut a_pub, a_web).await;
    let before_b = Surfaces::read(&mut b_watch, b_web).await;
    let reply = write_then_info(&mut a_pub, &run(5, N, 100)).await;
    for _ in 0..N {
        assert_eq!(recv(&mut b_sub).await.status.code(), 5);
    }
    let after_a = Surfaces::read_with(reply, a_web).await;
    let after_b = Surfaces::read(&mut b_watch, b_web).await;
    for (before, after, hub) in [(&before_a, &after_a, "a"), (&before_b, &after_b, "b")] {
        moved(before, after, "unrouted_frames", 0);
        moved(before, after, "cluster_dropped_frames", 0);
        let (was, is) = (before.code_frames(5), after.code_frames(5));
        assert_eq!(
            [is[0] - was[0], is[1] - was[1]],
            [N; 2],
            "hub {hub}: code 5"
        );
    }
    assert_eq!(
        after_b.session(b_sub_id, "frames_out") - before_b.session(b_sub_id, "frames_out"),
        N
    );

    // NATS gone: the frames hub b wants cannot cross, and each counts as dropped.
    nats.kill();
    wait_cluster(a_web, "disconnected", |c| c["connected"] == false).await;
    let before = Surfaces::read(&mut a_pub, a_web).await;
    let reply = write_then_info(&mut a_pub, &run(5, N, 100)).await;
    let after = Surfaces::read_with(reply, a_web).await;
    moved(&before, &after, "cluster_dropped_frames", N);
    moved(&before, &after, "unrouted_frames", 0);
    let cluster_dropped = |s: &Surfaces| num(&s.varz["cluster"], "dropped_frames");
    assert_eq!(cluster_dropped(&after) - cluster_dropped(&before), N);
}
