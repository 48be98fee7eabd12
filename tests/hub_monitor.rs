//! The monitoring listener over real sockets on `127.0.0.1:0`: every endpoint's keys and figures
//! against a known load (and `INFO`'s), `/connz` paging and sorting, bad queries and unknown
//! paths, and the dashboard in headless Chromium against a hub with live traffic.

#[path = "common/http.rs"]
mod http;
#[path = "common/hub.rs"]
mod hub_common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tej_hub::hub::config::HubConfig;
use tej_hub::Frame;

use http::{get_async, num, parse_metrics, request_async};
use hub_common::{
    connect, encode, info, recv, send, start_hub, status, stop_hub, subscribe, test_config, Conn,
};

/// A hub configuration with the monitoring listener on a free port.
fn monitored() -> HubConfig {
    HubConfig {
        http: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        ..test_config()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_view_agrees_with_a_known_load_and_with_info() {
    const N: u64 = 40;
    let hub = start_hub(monitored());
    let web = hub.monitor_addr().expect("the monitoring address");
    let mut subs: Vec<Conn> = Vec::new();
    for _ in 0..2 {
        let mut sub = connect(hub.local_addr()).await;
        subscribe(&mut sub, "5", "5").await;
        subs.push(sub);
    }
    let mut publisher = connect(hub.local_addr()).await;
    let frame = Frame::message(status(5), "x".repeat(100));
    let frame_bytes = encode(&frame).len() as u64;
    for _ in 0..N {
        send(&mut publisher, frame.clone()).await;
    }
    for sub in &mut subs {
        for _ in 0..N {
            assert_eq!(recv(sub).await.status.code(), 5);
        }
    }
    // INFO first: the views below must show what it shows, plus its own reply.
    let mut infos = Vec::new();
    for sub in &mut subs {
        infos.push(info(sub).await);
    }

    let health = get_async(web, "/healthz").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.content_type.as_deref(), Some("application/json"));
    assert_eq!(health.json(), serde_json::json!({"status": "ok"}));

    let subsz = get_async(web, "/subsz").await;
    assert_eq!(subsz.status, 200);
    let codes = subsz.json()["codes"].as_array().expect("codes").clone();
    assert_eq!(codes.len(), 1, "{codes:?}");
    assert_eq!(num(&codes[0], "code"), 5);
    assert_eq!(num(&codes[0], "subscribers"), 2);
    assert_eq!(num(&codes[0], "frames"), N);
    assert_eq!(num(&codes[0], "bytes"), N * frame_bytes);

    let connz = get_async(web, "/connz").await;
    assert_eq!(connz.status, 200);
    let connz = connz.json();
    assert_eq!(num(&connz, "total"), 3);
    assert_eq!(num(&connz, "offset"), 0);
    assert_eq!(num(&connz, "limit"), 1024);
    let conns = connz["connections"]
        .as_array()
        .expect("connections")
        .clone();
    for key in [
        "session",
        "peer",
        "subscriptions",
        "echo",
        "slow_consumer",
        "pending_bytes",
        "frames_in",
        "frames_out",
        "bytes_in",
        "bytes_out",
        "dropped_frames",
        "connected_at",
        "idle_seconds",
    ] {
        assert!(
            conns[0].get(key).is_some(),
            "/connz lacks {key}: {}",
            conns[0]
        );
    }
    let at = conns[0]["connected_at"].as_str().expect("connected_at");
    assert!(humantime::parse_rfc3339(at).is_ok(), "not RFC 3339: {at}");
    for info in &infos {
        let session = num(info, "session");
        let conn = conns
            .iter()
            .find(|c| num(c, "session") == session)
            .unwrap_or_else(|| panic!("session {session} not in /connz"));
        assert_eq!(conn["subscriptions"], serde_json::json!([5]));
        assert_eq!(conn["peer"], info["peer"]);
        assert_eq!(conn["echo"], info["echo"]);
        assert_eq!(conn["slow_consumer"], info["slow_consumer"]);
        let counters = &info["counters"];
        assert_eq!(num(conn, "frames_in"), num(counters, "frames_in"));
        assert_eq!(num(conn, "bytes_in"), num(counters, "bytes_in"));
        // The INFO reply itself was written after INFO counted.
        assert_eq!(num(conn, "frames_out"), num(counters, "frames_out") + 1);
        assert!(num(conn, "frames_out") >= N + 2, "{conn}");
        assert_eq!(num(conn, "pending_bytes"), 0);
    }
    let publisher_view = conns
        .iter()
        .find(|c| c["subscriptions"] == serde_json::json!([]))
        .expect("the publisher in /connz");
    assert_eq!(num(publisher_view, "frames_in"), N);
    assert_eq!(num(publisher_view, "bytes_in"), N * frame_bytes);
    assert_eq!(num(publisher_view, "frames_out"), 0);

    let varz = get_async(web, "/varz").await;
    assert_eq!(varz.status, 200);
    let varz = varz.json();
    for key in [
        "version",
        "uptime_seconds",
        "listen",
        "connections",
        "total_connections",
        "frames_in",
        "frames_out",
        "bytes_in",
        "bytes_out",
        "unrouted_frames",
        "slow_consumers",
        "dropped_frames",
        "rss_bytes",
        "limits",
        "config_loaded_at",
    ] {
        assert!(varz.get(key).is_some(), "/varz lacks {key}: {varz}");
    }
    assert_eq!(varz["listen"], hub.local_addr().to_string());
    assert_eq!(varz["limits"], infos[0]["limits"]);
    assert_eq!(num(&varz, "connections"), 3);
    assert_eq!(num(&varz, "total_connections"), 3);
    assert_eq!(num(&varz, "unrouted_frames"), 0);
    assert!(num(&varz, "rss_bytes") > 0);
    let sum = |key: &str| conns.iter().map(|c| num(c, key)).sum::<u64>();
    for key in ["frames_in", "frames_out", "bytes_in", "bytes_out"] {
        assert_eq!(
            num(&varz, key),
            sum(key),
            "/varz {key} vs the sum of /connz"
        );
    }
    assert_eq!(
        num(&infos[0]["hub"], "open_connections"),
        num(&varz, "connections")
    );

    let metrics = get_async(web, "/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .content_type
            .as_deref()
            .is_some_and(|t| t.starts_with("application/openmetrics-text")),
        "{:?}",
        metrics.content_type
    );
    let series = parse_metrics(&metrics.body);
    let metric = |name: &str| {
        *series
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{}", metrics.body))
    };
    assert_eq!(metric("tej_hub_connections"), 3.0);
    assert_eq!(metric("tej_hub_code_subscribers{code=\"5\"}"), 2.0);
    assert_eq!(metric("tej_hub_code_frames_total{code=\"5\"}"), N as f64);
    assert_eq!(
        metric("tej_hub_code_bytes_total{code=\"5\"}"),
        (N * frame_bytes) as f64
    );
    for key in ["frames_in", "frames_out", "bytes_in", "bytes_out"] {
        assert_eq!(
            metric(&format!("tej_hub_{key}_total")),
            num(&varz, key) as f64
        );
    }
    for name in [
        "tej_hub_pending_bytes",
        "tej_hub_slow_consumers_total",
        "tej_hub_dropped_frames_total",
        "tej_hub_unrouted_frames_total",
    ] {
        metric(name);
    }
    stop_hub(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connz_pages_and_sorts() {
    let hub = start_hub(monitored());
    let web = hub.monitor_addr().expect("the monitoring address");
    let mut conns = Vec::new();
    for i in 0..5u8 {
        let mut conn = connect(hub.local_addr()).await;
        // Session k sends k pings: bytes and frames in grow with the session id.
        for _ in 0..=i {
            send(&mut conn, Frame::ping()).await;
            recv(&mut conn).await;
        }
        conns.push(conn);
    }
    let page = get_async(web, "/connz?offset=1&limit=2").await.json();
    assert_eq!(num(&page, "total"), 5);
    assert_eq!(num(&page, "offset"), 1);
    assert_eq!(num(&page, "limit"), 2);
    let sessions = |page: &Value| -> Vec<u64> {
        page["connections"]
            .as_array()
            .expect("connections")
            .iter()
            .map(|c| num(c, "session"))
            .collect()
    };
    let all = sessions(&get_async(web, "/connz").await.json());
    assert_eq!(all.len(), 5);
    assert!(all.windows(2).all(|w| w[0] < w[1]), "by session: {all:?}");
    assert_eq!(sessions(&page), all[1..3]);
    let sorted = get_async(web, "/connz?sort=frames_in").await.json();
    let frames: Vec<u64> = sorted["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .map(|c| num(c, "frames_in"))
        .collect();
    assert_eq!(frames, [5, 4, 3, 2, 1]);
    let top = get_async(web, "/connz?sort=bytes_in&limit=1").await.json();
    assert_eq!(sessions(&top), [*all.last().expect("five sessions")]);
    let beyond = get_async(web, "/connz?offset=10").await.json();
    assert_eq!(num(&beyond, "total"), 5);
    assert!(sessions(&beyond).is_empty());
    drop(conns);
    stop_hub(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_queries_are_400_and_unknown_paths_404() {
    let hub = start_hub(monitored());
    let web = hub.monitor_addr().expect("the monitoring address");
    for (query, names) in [
        ("/connz?limit=abc", "limit"),
        ("/connz?limit=-1", "limit"),
        ("/connz?offset=-5", "offset"),
        ("/connz?offset=1.5", "offset"),
        ("/connz?sort=peer", "sort"),
        ("/connz?sort=nosuch", "sort"),
    ] {
        let answer = get_async(web, query).await;
        assert_eq!(answer.status, 400, "{query}: {answer:?}");
        let error = answer.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{query}: no error message"))
            .to_owned();
        assert!(error.contains(names), "{query}: {error}");
    }
    let missing = get_async(web, "/nothing/here").await;
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"].is_string());
    stop_hub(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_path_with_another_method_is_405_with_allow_get() {
    let hub = start_hub(monitored());
    let web = hub.monitor_addr().expect("the monitoring address");
    for (method, path) in [
        ("POST", "/varz"),
        ("DELETE", "/connz"),
        ("PUT", "/metrics"),
        ("POST", "/healthz"),
        ("PATCH", "/subsz"),
        ("POST", "/"),
    ] {
        let answer = request_async(web, method, path).await;
        assert_eq!(answer.status, 405, "{method} {path}: {answer:?}");
        assert_eq!(answer.header("allow"), Some("GET"), "{method} {path}");
        assert_eq!(answer.content_type.as_deref(), Some("application/json"));
        let error = answer.json()["error"].as_str().unwrap_or("").to_owned();
        assert_eq!(error, format!("{path} answers GET only, not {method}"));
    }
    // The endpoints still answer GET, and an unknown path is 404 whatever the method.
    assert_eq!(get_async(web, "/varz").await.status, 200);
    let unknown = request_async(web, "POST", "/nothing").await;
    assert_eq!(unknown.status, 404, "{unknown:?}");
    assert!(unknown.header("allow").is_none());
    stop_hub(hub).await;
}

/// The `error` of a JSON error answer with `status` to `query`.
fn json_error(query: &str, answer: &http::Answer, status: u16) -> String {
    assert_eq!(answer.status, status, "{query}: {answer:?}");
    assert_eq!(
        answer.content_type.as_deref(),
        Some("application/json"),
        "{query}: {answer:?}"
    );
    answer.json()["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{query}: no error message"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parameter_given_twice_is_a_json_400() {
    let hub = start_hub(monitored());
    let web = hub.monitor_addr().expect("the monitoring address");
    for query in [
        "/connz?limit=1&limit=2",
        "/connz?sort=session&sort=frames_in",
        "/connz?offset=1&offset=1",
    ] {
        let error = json_error(query, &get_async(web, query).await, 400);
        assert!(error.contains("duplicate field"), "{query}: {error}");
    }
    stop_hub(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoed_values_are_clipped_to_32_characters() {
    let hub = start_hub(monitored());
    let web = hub.monitor_addr().expect("the monitoring address");
    // Values from the request come back clipped to 32 characters, as on the control channel.
    let long = "9".repeat(5000);
    for (query, status) in [
        (format!("/connz?offset={long}"), 400),
        (format!("/connz?limit={long}"), 400),
        (format!("/connz?sort={long}"), 400),
        (format!("/{long}"), 404),
    ] {
        let answer = get_async(web, &query).await;
        let error = json_error(&query[..20], &answer, status);
        // 32 characters of the value (of the path: its '/' and 31 digits).
        assert!(error.contains(&"9".repeat(31)), "{error}");
        assert!(!error.contains(&"9".repeat(33)), "not clipped: {error}");
        assert!(answer.body.len() < 200, "{} bytes", answer.body.len());
    }
    stop_hub(hub).await;
}

/// Where headless Chromium is, if installed.
fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|name| {
            std::process::Command::new(name)
                .arg("--version")
                .output()
                .is_ok_and(|out| out.status.success())
        })
}

/// Loads `url` in headless Chromium for `budget_ms` of virtual time and returns the DOM; with
/// `screenshot`, also saves a PNG there.
fn chromium_dom(url: &str, budget_ms: u64, screenshot: Option<&std::path::Path>) -> String {
    let browser = chromium().expect("chromium is installed (scripts/test installs it)");
    // A profile per run: two browsers on one profile refuse to start (tests run in parallel).
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    let profile =
        std::env::temp_dir().join(format!("tej-hub-chromium-{}-{run}", std::process::id()));
    let mut command = std::process::Command::new(browser);
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
    ]);
    command.arg(format!("--user-data-dir={}", profile.display()));
    command.arg(format!("--virtual-time-budget={budget_ms}"));
    match screenshot {
        Some(path) => command.arg(format!("--screenshot={}", path.display())),
        None => command.arg("--dump-dom"),
    };
    command.arg(url);
    let output = run_bounded(command, Duration::from_secs(60));
    let _ = std::fs::remove_dir_all(&profile);
    String::from_utf8_lossy(&output).into_owned()
}

/// `command`'s stdout; panics if it runs longer than `limit` or fails.
fn run_bounded(mut command: std::process::Command, limit: Duration) -> Vec<u8> {
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start chromium");
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut out);
        out
    });
    let deadline = std::time::Instant::now() + limit;
    loop {
        match child.try_wait().expect("poll chromium") {
            Some(status) => {
                assert!(status.success(), "chromium failed: {status}");
                break;
            }
            None if std::time::Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("chromium ran longer than {limit:?}");
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    reader.join().expect("chromium's output")
}

/// The value of attribute `name` on the element with id `id` in `dom`.
fn attribute_of_id(dom: &str, id: &str, name: &str) -> Option<String> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let tag_start = dom[..at].rfind('<')?;
    let tag_end = at + dom[at..].find('>')?;
    let tag = &dom[tag_start..tag_end];
    let key = format!("{name}=\"");
    let value_at = tag.find(&key)? + key.len();
    let value_len = tag[value_at..].find('"')?;
    Some(tag[value_at..value_at + value_len].to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_sessions_and_a_live_rate_in_a_browser() {
    let hub = start_hub(monitored());
    let web = hub.monitor_addr().expect("the monitoring address");
    let mut subs = Vec::new();
    let mut sessions = Vec::new();
    for code in ["5", "6"] {
        let mut sub = connect(hub.local_addr()).await;
        subscribe(&mut sub, code, code).await;
        sessions.push(num(&info(&mut sub).await, "session"));
        subs.push(sub);
    }
    // Live traffic, bounded: a frame every millisecond or so for at most 60 s, until the test is
    // done.
    let done = Arc::new(AtomicBool::new(false));
    let mut publisher = connect(hub.local_addr()).await;
    let stop = done.clone();
    let traffic = tokio::spawn(async move {
        let frame = Frame::message(status(5), "dashboard test traffic");
        for _ in 0..60_000 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            send(&mut publisher, frame.clone()).await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        publisher
    });
    // The subscribers read so nothing backs up.
    let readers: Vec<_> = subs
        .into_iter()
        .map(|mut sub| {
            let stop = done.clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let _ = tokio::time::timeout(Duration::from_millis(200), recv(&mut sub)).await;
                }
                sub
            })
        })
        .collect();
    let url = format!("http://{web}/");
    let dom = tokio::task::spawn_blocking(move || chromium_dom(&url, 4000, None))
        .await
        .expect("the browser thread");
    for session in &sessions {
        assert!(
            dom.contains(&format!("data-session=\"{session}\"")),
            "session {session} not in the connection table:\n{dom}"
        );
    }
    let rate: f64 = attribute_of_id(&dom, "rate-frames", "data-value")
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no rate in the page:\n{dom}"));
    assert!(rate > 0.0, "the frame rate shown is zero:\n{dom}");
    assert!(
        dom.contains("data-code=\"5\""),
        "code 5 not in the code table"
    );
    if let Ok(path) = std::env::var("TEJ_HUB_DASHBOARD_SCREENSHOT") {
        let url = format!("http://{web}/");
        tokio::task::spawn_blocking(move || {
            chromium_dom(&url, 6000, Some(std::path::Path::new(&path)))
        })
        .await
        .expect("the browser thread");
    }
    done.store(true, Ordering::Relaxed);
    let _publisher = traffic.await.expect("the traffic task");
    for reader in readers {
        reader.await.expect("a reader task");
    }
    stop_hub(hub).await;
}

/// A hub storing code 5: the dashboard's store section shows the code's log and the durable
/// subscription, with what the hub reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_store_in_a_browser() {
    let dir = std::env::temp_dir().join(format!("tej-hub-dashboard-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let hub = start_hub(HubConfig {
        durable: vec![tej_hub::hub::config::DurableConfig {
            codes: "5".into(),
            ..Default::default()
        }],
        store_dir: dir.clone(),
        ..monitored()
    });
    let web = hub.monitor_addr().expect("the monitoring address");
    let mut subscriber = connect(hub.local_addr()).await;
    send(
        &mut subscriber,
        Frame::message(status(127), "SUB 5 durable=dash from=all"),
    )
    .await;
    assert_eq!(
        recv(&mut subscriber).await.message,
        &b"OK SUB 5 durable=dash from=all"[..]
    );
    let mut publisher = connect(hub.local_addr()).await;
    send(&mut publisher, Frame::message(status(127), "PUBACK on")).await;
    assert_eq!(recv(&mut publisher).await.message, &b"OK PUBACK on"[..]);
    for _ in 0..3 {
        send(&mut publisher, Frame::message(status(5), "stored")).await;
    }
    for seq in 1..=3 {
        let stored = recv(&mut publisher).await;
        assert_eq!(stored.message, format!("OK STORED 5 {seq}").as_bytes());
    }
    let url = format!("http://{web}/");
    let dom = tokio::task::spawn_blocking(move || chromium_dom(&url, 3000, None))
        .await
        .expect("the browser thread");
    assert!(
        dom.contains("data-stored-code=\"5\""),
        "code 5 not in the store's table:\n{dom}"
    );
    assert!(
        dom.contains("data-durable=\"dash\""),
        "durable dash not in the store's table:\n{dom}"
    );
    assert!(
        dom.contains("<span id=\"store-frames\">3</span>"),
        "3 frames stored not shown:\n{dom}"
    );
    drop(subscriber);
    stop_hub(hub).await;
    let _ = std::fs::remove_dir_all(&dir);
}
