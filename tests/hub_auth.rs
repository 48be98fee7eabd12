//! Users, `AUTH`, per-code permissions, connection limits and the ingress rate limit, over real
//! sockets on 127.0.0.1 (issue 11). Password hashes here use small argon2 costs so that the suite
//! stays fast; the hub reads the costs from each hash.

#[path = "common/hub.rs"]
mod hub_common;
#[path = "common/python.rs"]
mod python;

use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use futures_util::StreamExt;
use serde_json::json;
use tej_hub::hub::config::{HubConfig, PermissionsConfig, UserConfig};
use tej_hub::Frame;

use hub_common::{
    cheap_hash, connect, control, expect_err_and_close, expect_silence, info, pattern, recv, send,
    start_hub, status, stop_hub, subscribe, test_config, within, Conn, MIB, PATIENCE,
};
use python::PyPeer;

fn user(name: &str, password: &str, publish: Option<&str>, subscribe: Option<&str>) -> UserConfig {
    UserConfig {
        name: name.into(),
        password: cheap_hash(password),
        publish: publish.map(Into::into),
        subscribe: subscribe.map(Into::into),
        groups: None,
    }
}

/// alice may do everything; bob may publish on 5 and subscribe to 5-9; anonymous connections
/// must authenticate.
fn secured() -> HubConfig {
    HubConfig {
        users: vec![
            user("alice", "wonder land", Some("*"), Some("*")),
            user("bob", "builder", Some("5"), Some("5-9")),
        ],
        ..test_config()
    }
}

async fn authenticated(addr: std::net::SocketAddr, user: &str, password: &str) -> Conn {
    let mut conn = connect(addr).await;
    let reply = control(&mut conn, &format!("AUTH {user} {password}")).await;
    assert_eq!(reply, format!("OK AUTH {user}"));
    conn
}

/// Reads `conn` until it ends; returns the texts of the frames on the way.
async fn texts_until_closed(conn: &mut Conn) -> Vec<String> {
    let mut texts = Vec::new();
    within(PATIENCE, "the hub to close the connection", async {
        while let Some(Ok(frame)) = conn.next().await {
            texts.push(String::from_utf8_lossy(&frame.message).into_owned());
        }
    })
    .await;
    texts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_unknown_users_and_frames_before_auth_are_refused() {
    let hub = start_hub(secured());
    let addr = hub.local_addr();
    for (attempt, expected) in [
        ("AUTH alice wrong", "ERR auth failed"),
        ("AUTH mallory wonder land", "ERR auth failed"),
        ("SUB 5", "ERR auth required"),
        ("INFO", "ERR auth required"),
    ] {
        let mut conn = connect(addr).await;
        send(&mut conn, hub_common::control_frame(attempt)).await;
        assert_eq!(texts_until_closed(&mut conn).await, [expected], "{attempt}");
    }
    // A publication before AUTH too; a ping is answered all the same.
    let mut conn = connect(addr).await;
    send(&mut conn, Frame::ping()).await;
    assert_eq!(recv(&mut conn).await, Frame::ping());
    send(&mut conn, Frame::message(status(5), "early")).await;
    assert_eq!(texts_until_closed(&mut conn).await, ["ERR auth required"]);

    let mut alice = authenticated(addr, "alice", "wonder land").await;
    let info = info(&mut alice).await;
    assert_eq!(info["user"], json!("alice"));
    assert_eq!(info["hub"]["auth_failures"], json!(2));
    // A second AUTH changes nothing.
    assert_eq!(
        control(&mut alice, "AUTH bob builder").await,
        "ERR already authenticated"
    );
    assert_eq!(hub_common::info(&mut alice).await["user"], json!("alice"));
    stop_hub(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_auth_in_time_closes_the_connection() {
    let hub = start_hub(HubConfig {
        auth_timeout: 1,
        ..secured()
    });
    let started = Instant::now();
    let mut silent = connect(hub.local_addr()).await;
    assert_eq!(texts_until_closed(&mut silent).await, ["ERR auth timeout"]);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );
    // AUTH after the timeout comes too late.
    let mut late = connect(hub.local_addr()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _ = futures_util::SinkExt::send(
        &mut late,
        hub_common::control_frame("AUTH alice wonder land"),
    )
    .await;
    assert_eq!(texts_until_closed(&mut late).await, ["ERR auth timeout"]);
    stop_hub(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_follow_the_users_permissions() {
    let hub = start_hub(secured());
    let addr = hub.local_addr();
    let mut bob = authenticated(addr, "bob", "builder").await;
    subscribe(&mut bob, "6", "6").await;
    assert_eq!(
        control(&mut bob, "SUB 4-6,10").await,
        "ERR permission denied: subscribe 4,10"
    );
    assert_eq!(
        hub_common::subscriptions(&mut bob).await,
        [6],
        "a denied SUB changes nothing"
    );
    subscribe(&mut bob, "*", "5-9").await;
    assert_eq!(hub_common::subscriptions(&mut bob).await, [5, 6, 7, 8, 9]);
    stop_hub(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_publications_reach_nobody_and_are_answered_once_a_second() {
    let hub = start_hub(secured());
    let addr = hub.local_addr();
    let mut alice = authenticated(addr, "alice", "wonder land").await;
    subscribe(&mut alice, "5,6", "5-6").await;
    let mut bob = authenticated(addr, "bob", "builder").await;

    // A streamed frame (64 times the cut-through size) on a code bob may not publish on.
    let big = Frame::message(status(6), pattern(60 * MIB, 6));
    send(&mut bob, big).await;
    assert_eq!(
        recv(&mut bob).await.message,
        "ERR permission denied: publish 6"
    );
    // A flood of small denied frames: no more replies within the second.
    for n in 0..200 {
        send(&mut bob, Frame::message(status(6), format!("{n}"))).await;
    }
    // What bob may publish still goes through, and nothing of code 6 reached alice.
    let allowed = Frame::message(status(5), "allowed");
    send(&mut bob, allowed.clone()).await;
    assert_eq!(recv(&mut alice).await, allowed);
    let info = hub_common::info(&mut bob).await;
    assert_eq!(info["denied_frames"], json!(201));
    expect_silence(&mut alice, Duration::from_millis(300)).await;
    // A second later, the next denial is answered again.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    send(&mut bob, Frame::message(status(6), "again")).await;
    assert_eq!(
        recv(&mut bob).await.message,
        "ERR permission denied: publish 6"
    );
    stop_hub(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_connections_get_the_anonymous_permissions() {
    let hub = start_hub(HubConfig {
        anonymous: Some(PermissionsConfig {
            publish: None,
            subscribe: Some("7".into()),
        }),
        ..secured()
    });
    let addr = hub.local_addr();
    let mut anonymous = connect(addr).await;
    subscribe(&mut anonymous, "7", "7").await;
    assert_eq!(
        control(&mut anonymous, "SUB 8").await,
        "ERR permission denied: subscribe 8"
    );
    assert_eq!(hub_common::info(&mut anonymous).await["user"], json!(null));
    let mut alice = authenticated(addr, "alice", "wonder land").await;
    let frame = Frame::message(status(7), "to the anonymous");
    send(&mut alice, frame.clone()).await;
    assert_eq!(recv(&mut anonymous).await, frame);
    // Publishing is not granted to them.
    send(
        &mut anonymous,
        Frame::message(status(7), "from the anonymous"),
    )
    .await;
    assert_eq!(
        recv(&mut anonymous).await.message,
        "ERR permission denied: publish 7"
    );
    stop_hub(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_reference_client_authenticates_with_a_control_frame() {
    let hub = start_hub(secured());
    let port = hub.local_addr().port();
    let mut python = PyPeer::commanding(port, &["AUTH bob builder", "SUB 5"], 3);
    assert_eq!(
        python.next_event("received").await["message_text"],
        json!("OK AUTH bob")
    );
    assert_eq!(
        python.next_event("received").await["message_text"],
        json!("OK SUB 5")
    );
    let mut alice = authenticated(hub.local_addr(), "alice", "wonder land").await;
    send(&mut alice, Frame::message(status(5), "hello python")).await;
    assert_eq!(
        python.next_event("received").await["message_text"],
        json!("hello python")
    );
    python.succeeds().await;
    stop_hub(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_a_limit_are_refused_and_the_others_untouched() {
    let hub = start_hub(HubConfig {
        max_connections: 3,
        max_connections_per_ip: 2,
        ..test_config()
    });
    let addr = hub.local_addr();
    let mut first = connect(addr).await;
    subscribe(&mut first, "5", "5").await;
    let mut second = connect(addr).await;
    subscribe(&mut second, "5", "5").await;
    // A third from 127.0.0.1: over the per-address limit.
    let mut third = hub_common::connect_raw(addr).await;
    assert_eq!(
        expect_err_and_close(&mut third, "the third connection").await,
        "too many connections"
    );
    // From 127.0.0.2 it is welcome; then the hub is full.
    let mut other = tokio_util::codec::Framed::new(
        connect_from([127, 0, 0, 2], addr).await,
        tej_hub::TejCodec::default(),
    );
    subscribe(&mut other, "5", "5").await;
    let mut fourth = connect_from([127, 0, 0, 3], addr).await;
    assert_eq!(
        expect_err_and_close(&mut fourth, "the fourth connection").await,
        "too many connections"
    );
    let frame = Frame::message(status(5), "still here");
    send(&mut first, frame.clone()).await;
    assert_eq!(recv(&mut second).await, frame);
    assert_eq!(recv(&mut other).await, frame);
    assert_eq!(
        info(&mut first).await["hub"]["refused_connections"],
        json!(2)
    );
    // A place freed is a place taken.
    drop(second);
    let mut again = within(PATIENCE, "a free place", async {
        loop {
            let mut conn = connect(addr).await;
            if control(&mut conn, "INFO").await.starts_with("OK INFO") {
                break conn;
            }
        }
    })
    .await;
    subscribe(&mut again, "6", "6").await;
    stop_hub(hub).await;
}

/// A connection to `addr` from source address `ip` (any port).
async fn connect_from(ip: [u8; 4], addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(std::net::SocketAddr::from((ip, 0)))
        .expect("bind a loopback source address");
    within(PATIENCE, "connect", socket.connect(addr))
        .await
        .expect("connect to the hub")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingress_limit_paces_a_publisher_without_loss() {
    const RATE: u64 = 2 * MIB as u64;
    let hub = start_hub(HubConfig {
        max_ingress_bytes_per_sec: RATE,
        stall_timeout: 1,
        ..test_config()
    });
    let addr = hub.local_addr();
    let mut subscriber = connect(addr).await;
    subscribe(&mut subscriber, "5", "5").await;
    let mut publisher = connect(addr).await;
    let frames: Vec<Frame> = (0..48)
        .map(|n| Frame::message(status(5), pattern(128 * 1024, n)))
        .collect();
    let started = Instant::now();
    let sending = async {
        for frame in &frames {
            send(&mut publisher, frame.clone()).await;
        }
    };
    let receiving = async {
        for (n, frame) in frames.iter().enumerate() {
            assert!(recv(&mut subscriber).await == *frame, "frame {n} changed");
        }
    };
    within(Duration::from_secs(20), "the paced transfer", async {
        tokio::join!(sending, receiving)
    })
    .await;
    let seconds = started.elapsed().as_secs_f64();
    let bytes: usize = frames
        .iter()
        .map(|frame| hub_common::encode(frame).len())
        .sum();
    let rate = bytes as f64 / seconds;
    assert!(
        (rate - RATE as f64).abs() <= RATE as f64 * 0.1,
        "{bytes} bytes in {seconds:.2} s: {rate:.0} B/s against a limit of {RATE}"
    );
    // Held back for 3 s, never cut for stalling (1 s).
    assert!(control(&mut publisher, "INFO").await.starts_with("OK INFO"));
    stop_hub(hub).await;
}

#[test]
fn passwd_prints_a_hash_the_hub_accepts() {
    let output = hub_common::passwd("open sesame");
    assert!(output.status.success(), "{output:?}");
    let hash = String::from_utf8(output.stdout).expect("a text hash");
    let hash = hash.trim();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let parsed = argon2::PasswordHash::new(hash).expect("a PHC string");
    use argon2::PasswordVerifier;
    assert!(Argon2::default()
        .verify_password(b"open sesame", &parsed)
        .is_ok());
    assert!(Argon2::default().verify_password(b"open", &parsed).is_err());
}

#[test]
fn configurations_with_clear_passwords_or_bad_lists_are_refused_naming_the_user() {
    let clear = HubConfig {
        users: vec![UserConfig {
            password: "hunter2".into(),
            ..user("carol", "x", None, None)
        }],
        ..HubConfig::default()
    };
    let error = refused_at_start(clear);
    assert!(
        error.contains("\"carol\"") && error.contains("never a clear password"),
        "{error}"
    );
    assert!(!error.contains("hunter2"), "{error}");
    let bad_list = HubConfig {
        users: vec![user("dave", "x", Some("5,2"), None)],
        ..HubConfig::default()
    };
    let error = refused_at_start(bad_list);
    assert!(
        error.contains("\"dave\"") && error.contains("reserved code 2"),
        "{error}"
    );
    let unknown_key = "[[users]]\nname = \"erin\"\npassword = \"x\"\npublsh = \"5\"\n";
    let error = HubConfig::from_toml(unknown_key)
        .expect_err("an unknown key")
        .to_string();
    assert!(error.contains("publsh"), "{error}");
    let twice = HubConfig {
        users: vec![
            user("frank", "a", None, None),
            user("frank", "b", None, None),
        ],
        ..HubConfig::default()
    };
    assert!(refused_at_start(twice).contains("twice"));
}

/// Why a hub refuses to start with `config` (users are resolved when it starts).
fn refused_at_start(config: HubConfig) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    actix_rt::System::new()
        .block_on(tej_hub::hub::run(listener, config, std::future::pending()))
        .expect_err("the hub refuses to start")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_failed_auths_leave_memory_and_relay_as_they_were() {
    const ATTEMPTS: usize = 10_000;
    let dir = std::env::temp_dir().join(format!("tej-hub-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let config = dir.join("hub.toml");
    let toml = format!(
        "[[users]]\nname = \"alice\"\npassword = \"{}\"\npublish = \"*\"\nsubscribe = \"*\"\n",
        cheap_hash("wonder land")
    );
    std::fs::write(&config, toml).expect("write the configuration");
    let hub = hub_common::BinHub::start(&["--config", config.to_str().expect("a UTF-8 path")]);
    let mut subscriber = authenticated(hub.addr, "alice", "wonder land").await;
    subscribe(&mut subscriber, "5", "5").await;
    let mut publisher = authenticated(hub.addr, "alice", "wonder land").await;

    let attack = |count: usize| {
        futures_util::stream::iter(0..count)
            .map(|n| async move {
                let mut conn = connect(hub.addr).await;
                send(
                    &mut conn,
                    hub_common::control_frame(&format!("AUTH alice guess{n}")),
                )
                .await;
                texts_until_closed(&mut conn).await
            })
            .buffer_unordered(32)
            .for_each(|texts| async move {
                assert_eq!(texts, ["ERR auth failed"]);
            })
    };
    // Warm up (the allocator's arenas, the blocking pool), then measure.
    attack(500).await;
    let before = hub.rss_kib();
    let relay = async {
        for n in 0..50u64 {
            let frame = Frame::message(status(5), pattern(1000, n));
            send(&mut publisher, frame.clone()).await;
            assert!(recv(&mut subscriber).await == frame, "frame {n} changed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    within(
        Duration::from_secs(120),
        "the attack and the relay",
        async { tokio::join!(attack(ATTEMPTS), relay) },
    )
    .await;
    let after = hub.rss_kib();
    eprintln!("hub RSS {before} KiB before {ATTEMPTS} failed AUTHs, {after} KiB after");
    assert_eq!(
        info(&mut publisher).await["hub"]["auth_failures"],
        json!(ATTEMPTS + 500)
    );
    assert!(
        after <= before + before / 10,
        "hub RSS {before} KiB before {ATTEMPTS} failed AUTHs, {after} KiB after"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_revokes_removed_users_and_narrows_permissions() {
    let dir = std::env::temp_dir().join(format!("tej-hub-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let config = dir.join("hub.toml");
    let users = |bob_subscribes: &str, with_alice: bool| {
        let mut toml = format!(
            "[[users]]\nname = \"bob\"\npassword = \"{}\"\npublish = \"5\"\nsubscribe = \"{bob_subscribes}\"\n",
            cheap_hash("builder")
        );
        if with_alice {
            toml.push_str(&format!(
                "[[users]]\nname = \"alice\"\npassword = \"{}\"\npublish = \"*\"\nsubscribe = \"*\"\n",
                cheap_hash("wonder land")
            ));
        }
        toml
    };
    std::fs::write(&config, users("5-9", true)).expect("write the configuration");
    let mut hub = hub_common::BinHub::start(&["--config", config.to_str().expect("a UTF-8 path")]);
    let mut alice = authenticated(hub.addr, "alice", "wonder land").await;
    let mut bob = authenticated(hub.addr, "bob", "builder").await;
    subscribe(&mut bob, "5,6", "5-6").await;

    // alice goes, bob keeps code 5 only.
    std::fs::write(&config, users("5", false)).expect("rewrite the configuration");
    hub.signal(rustix::process::Signal::HUP);
    assert_eq!(texts_until_closed(&mut alice).await, ["ERR auth revoked"]);
    let subscriptions = within(PATIENCE, "bob's narrowed subscriptions", async {
        loop {
            let codes = hub_common::subscriptions(&mut bob).await;
            if codes == [5] {
                return codes;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(subscriptions, [5]);
    assert_eq!(
        control(&mut bob, "SUB 6").await,
        "ERR permission denied: subscribe 6"
    );
    // New connections see the new users too.
    let mut again = connect(hub.addr).await;
    send(
        &mut again,
        hub_common::control_frame("AUTH alice wonder land"),
    )
    .await;
    assert_eq!(texts_until_closed(&mut again).await, ["ERR auth failed"]);
    let exit = tokio::task::block_in_place(|| {
        hub.signal(rustix::process::Signal::TERM);
        hub.wait_exit(Duration::from_secs(5))
    });
    assert_eq!(exit.and_then(|status| status.code()), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The checking threads of process `pid` (named `tej-hub-auth-N`).
fn auth_threads(pid: u32) -> usize {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("read /proc/PID/task");
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
        .filter(|name| name.starts_with("tej-hub-auth"))
        .count()
}

/// One `AUTH` on a fresh connection to `addr`: the right password on every third, else a wrong
/// one; checks the answer.
async fn one_check(addr: std::net::SocketAddr, n: usize) {
    let mut conn = connect(addr).await;
    if n % 3 == 0 {
        let reply = control(&mut conn, "AUTH alice wonder land").await;
        assert_eq!(reply, "OK AUTH alice", "check {n}");
    } else {
        send(
            &mut conn,
            hub_common::control_frame(&format!("AUTH alice guess{n}")),
        )
        .await;
        assert_eq!(
            texts_until_closed(&mut conn).await,
            ["ERR auth failed"],
            "check {n}"
        );
    }
}

/// Issue 18: each check at the default cost (19 MiB) used to leave its working memory in malloc's
/// arenas (164 MB after 10 checks, 320 MB after 20). From a cold start, the hub may grow by one
/// working memory per checking thread and a few MiB, and not at all after the 10th check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_checks_at_the_default_cost_leave_no_memory_behind() {
    const CHECKS: usize = 300;
    const SLACK_KIB: u64 = 6 * 1024;
    let dir = std::env::temp_dir().join(format!("tej-hub-auth-rss-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let config = dir.join("hub.toml");
    let hash = tej_hub::hub::auth::hash_password("wonder land").expect("hash the password");
    let toml = format!("[[users]]\nname = \"alice\"\npassword = \"{hash}\"\n");
    std::fs::write(&config, toml).expect("write the configuration");
    // A generous auth timeout: the checks queue behind a few threads on a busy machine.
    let hub = hub_common::BinHub::start(&[
        "--config",
        config.to_str().expect("a UTF-8 path"),
        "--auth-timeout",
        "60",
    ]);
    let checks = |range: std::ops::Range<usize>, together: usize| {
        futures_util::stream::iter(range)
            .map(|n| one_check(hub.addr, n))
            .buffer_unordered(together)
            .collect::<Vec<()>>()
    };
    let cold = hub.rss_kib();
    within(Duration::from_secs(120), "10 checks", checks(0..10, 4)).await;
    let tenth = hub.rss_kib();
    within(
        Duration::from_secs(300),
        "the checks",
        checks(10..CHECKS, 16),
    )
    .await;
    let last = hub.rss_kib();
    let peak = hub.peak_rss_kib();
    let threads = auth_threads(hub.pid()) as u64;
    let working = u64::from(Params::DEFAULT_M_COST);
    eprintln!(
        "hub RSS {cold} KiB cold, {tenth} KiB after 10 checks, {last} KiB after {CHECKS} \
         (peak {peak} KiB); {threads} checking threads × {working} KiB"
    );
    assert!(
        last <= tenth + SLACK_KIB,
        "RSS grew from {tenth} KiB after 10 checks to {last} KiB after {CHECKS}"
    );
    assert!(
        peak <= cold + threads * working + SLACK_KIB,
        "peak RSS {peak} KiB from {cold} KiB cold, {threads} threads × {working} KiB"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_beyond_the_queue_are_refused_at_once_as_busy() {
    // A slow hash (tens of passes), so that the queue fills faster than the threads empty it.
    let params = Params::new(4096, 40, 1, None).expect("argon2 parameters");
    let salt = SaltString::encode_b64(b"tej-hub test salt").expect("a salt");
    let slow = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(b"wonder land", &salt)
        .expect("hash")
        .to_string();
    let hub = start_hub(HubConfig {
        users: vec![UserConfig {
            password: slow,
            ..user("alice", "", None, None)
        }],
        ..test_config()
    });
    let addr = hub.local_addr();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let queue = threads * tej_hub::hub::auth::WAITING_PER_THREAD;
    let flood = queue + 100;
    let mut conns = Vec::new();
    for _ in 0..flood {
        conns.push(connect(addr).await);
    }
    let answers: Vec<Vec<String>> = futures_util::stream::iter(conns)
        .map(|mut conn| async move {
            send(&mut conn, hub_common::control_frame("AUTH alice guess")).await;
            texts_until_closed(&mut conn).await
        })
        .buffer_unordered(flood)
        .collect()
        .await;
    let count = |text: &str| answers.iter().filter(|a| a[..] == [text]).count();
    let (busy, failed, timeout) = (
        count("ERR auth busy"),
        count("ERR auth failed"),
        count("ERR auth timeout"),
    );
    eprintln!("{flood} AUTHs at once: {busy} busy, {failed} failed, {timeout} timed out");
    assert_eq!(busy + failed + timeout, flood, "{answers:?}");
    // At most the queue and one check per thread wait; the rest are refused at once.
    assert!(
        busy >= 1,
        "busy {busy}, failed {failed}, timed out {timeout}"
    );
    stop_hub(hub).await;
}
