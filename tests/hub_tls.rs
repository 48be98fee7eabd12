//! The hub over TLS (rustls), with certificates made by the test (rcgen): relay through a TLS hub
//! with the library client and with Python's `ssl` around the reference client, client
//! certificates mapped to users, a plain-text client on the TLS port, and client certificates
//! that are expired or signed by another CA. All on 127.0.0.1.

#[path = "common/hub.rs"]
mod hub_common;
#[path = "common/pki.rs"]
mod pki;
#[path = "common/python.rs"]
mod python;

use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tej_hub::hub::config::{HubConfig, UserConfig};
use tej_hub::hub::control::{Info, SlowPolicy};
use tej_hub::hub::{HubClient, HubOptions};
use tej_hub::{Client, ClientTls, Frame, MaybeTls, TejCodec};
use tokio::io::AsyncWriteExt;
use tokio_util::codec::Framed;

use hub_common::{
    connect_raw, connect_small_window, control_frame, pattern, start_hub, status, stop_hub,
    test_config, within, MIB, PATIENCE,
};
use pki::Pki;
use python::PyPeer;

impl Pki {
    fn client(&self, identity: Option<&str>) -> ClientTls {
        let ca = self.path("ca.pem");
        match identity {
            None => ClientTls::with_ca_file(&ca),
            Some(name) => ClientTls::with_client_cert(
                &ca,
                &self.path(&format!("{name}.pem")),
                &self.path(&format!("{name}.key")),
            ),
        }
        .expect("client TLS settings")
    }

    fn hub_config(&self) -> HubConfig {
        HubConfig {
            tls_cert: Some(self.path("server.pem")),
            tls_key: Some(self.path("server.key")),
            ..test_config()
        }
    }
}

/// A hub client over TLS, subscribed to code 5.
async fn tls_subscriber(
    addr: std::net::SocketAddr,
    tls: ClientTls,
) -> HubClient<tej_hub::MaybeTls> {
    let mut subscriber = HubClient::connect_with(addr, &options(tls))
        .await
        .expect("a TLS subscriber");
    subscriber.subscribe("5").await.expect("SUB 5");
    subscriber
}

/// Connects over TLS and asks `INFO`: whether the hub let this client in.
async fn info_over_tls(
    addr: std::net::SocketAddr,
    tls: ClientTls,
) -> Result<Info, tej_hub::hub::HubError> {
    let mut client = HubClient::connect_with(addr, &options(tls)).await?;
    client.info().await
}

fn options(tls: ClientTls) -> HubOptions {
    HubOptions {
        tls: Some((tls, "localhost".into())),
        limits: tej_hub::Limits::frame_only(128 * MIB as u64),
        ..HubOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_cross_a_tls_hub_byte_for_byte() {
    let pki = Pki::new("relay");
    let hub = start_hub(pki.hub_config());
    let addr = hub.local_addr();
    let mut subscriber = tls_subscriber(addr, pki.client(None)).await;
    // The plain library client, over TLS.
    let mut publisher = Client::connect_tls(addr, "localhost", &pki.client(None))
        .await
        .expect("a TLS publisher")
        .into_framed();
    let small = Frame::builder(status(5))
        .file("a.txt", pattern(1000, 1))
        .message("over tls")
        .build();
    // Larger than the cut-through size: streamed as it arrives.
    let large = Frame::message(status(5), pattern(20 * MIB, 2));
    for frame in [small, large] {
        within(PATIENCE, "a publication", publisher.send(frame.clone()))
            .await
            .expect("publish over TLS");
        let got = within(PATIENCE, "a relayed frame", subscriber.next_frame())
            .await
            .expect("read over TLS")
            .expect("a frame");
        assert!(
            got == frame,
            "a frame changed on its way through the TLS hub"
        );
    }
    let info = subscriber.info().await.expect("INFO over TLS");
    assert_eq!(info.hub.events.tls_failures, 0);
    stop_hub(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_client_on_the_tls_port_is_closed_and_nobody_else_notices() {
    let pki = Pki::new("plain");
    let hub = start_hub(pki.hub_config());
    let addr = hub.local_addr();
    let mut subscriber = tls_subscriber(addr, pki.client(None)).await;
    let mut plain = hub_common::connect_raw(addr).await;
    plain
        .write_all(&hub_common::encode(&hub_common::control_frame("SUB 5")))
        .await
        .expect("write plain TEJ");
    let answered = hub_common::read_until_closed(&mut plain).await;
    assert!(
        !answered.windows(6).any(|w| w == b"OK SUB"),
        "a plain client got a TEJ answer"
    );
    // A client that trusts another CA fails its own handshake.
    let stranger = ClientTls::with_ca_file(&pki.path("other-ca.pem")).expect("TLS settings");
    assert!(HubClient::connect_with(addr, &options(stranger))
        .await
        .is_err());
    let mut publisher = HubClient::connect_with(addr, &options(pki.client(None)))
        .await
        .expect("a TLS publisher");
    let frame = Frame::message(status(5), "still relaying");
    publisher.publish(frame.clone()).await.expect("publish");
    assert_eq!(subscriber.next_frame().await.expect("read"), Some(frame));
    let failures = subscriber
        .info()
        .await
        .expect("INFO")
        .hub
        .events
        .tls_failures;
    assert!(failures >= 2, "tls_failures {failures}");
    stop_hub(hub).await;
}

fn mutual(pki: &Pki) -> HubConfig {
    let hash = {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let params = argon2::Params::new(256, 1, 1, None).expect("argon2 parameters");
        let argon2 =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let salt = SaltString::encode_b64(b"tej-hub test salt").expect("a salt");
        argon2
            .hash_password(b"unused", &salt)
            .expect("a hash")
            .to_string()
    };
    HubConfig {
        tls_client_ca: Some(pki.path("ca.pem")),
        tls_map_user: true,
        users: vec![UserConfig {
            name: "alice".into(),
            password: hash,
            publish: Some("5".into()),
            subscribe: Some("5".into()),
            groups: None,
        }],
        ..pki.hub_config()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_name_the_user() {
    let pki = Pki::new("mtls");
    let hub = start_hub(mutual(&pki));
    let addr = hub.local_addr();
    let mut alice = HubClient::connect_with(addr, &options(pki.client(Some("alice"))))
        .await
        .expect("alice with her certificate");
    let info = alice.info().await.expect("INFO without AUTH");
    assert_eq!(info.user.as_deref(), Some("alice"));
    assert_eq!(alice.subscribe("5").await.expect("SUB 5").to_string(), "5");
    assert!(
        alice.subscribe("6").await.is_err(),
        "alice may not subscribe to 6"
    );
    // Certificates that must not get in: expired, from another CA, none at all, and one whose CN
    // names nobody.
    for identity in [
        Some("alice-expired"),
        Some("alice-other"),
        None,
        Some("mallory"),
    ] {
        let refused = info_over_tls(addr, pki.client(identity));
        let outcome = within(PATIENCE, "a refused client", refused).await;
        assert!(outcome.is_err(), "{identity:?} got in: {outcome:?}");
    }
    let info = alice.info().await.expect("alice is untouched");
    // Each counted once, the certificate naming nobody included (docs/security.md).
    assert_eq!(info.hub.events.tls_failures, 4, "{info:?}");
    stop_hub(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_reference_relays_through_a_tls_hub_inside_ssl() {
    let pki = Pki::new("python");
    let hub = start_hub(pki.hub_config());
    let addr = hub.local_addr();
    let ca = pki.path("ca.pem");
    let spec = json!([{"status": 127, "files": [], "message": {"text": "SUB 5"}}]).to_string();
    let mut python = PyPeer::client(
        addr.port(),
        &[
            "--spec",
            &spec,
            "--expect",
            "2",
            "--ignore-pings",
            "--wait",
            "30",
            "--tls-ca",
            ca.to_str().expect("a UTF-8 path"),
        ],
    );
    assert_eq!(
        python.next_event("received").await["message_text"],
        json!("OK SUB 5")
    );
    let mut publisher = HubClient::connect_with(addr, &options(pki.client(None)))
        .await
        .expect("a TLS publisher");
    let frame = Frame::builder(status(5))
        .file("from-rust.bin", pattern(300_000, 5))
        .message("to python over tls")
        .build();
    publisher.publish(frame.clone()).await.expect("publish");
    let received = python.next_event("received").await;
    assert_eq!(python::digest_of_record(&received), python::digest(&frame));
    python.succeeds().await;
    stop_hub(hub).await;
}

/// Writes `text` to `path`.
fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write a file");
}

#[test]
fn pub_and_sub_take_tls_and_credentials_from_flags_files_and_the_environment() {
    let pki = Pki::new("cli");
    let hash = {
        let output = hub_common::passwd("cli secret");
        String::from_utf8(output.stdout)
            .expect("a text hash")
            .trim()
            .to_owned()
    };
    let config = pki.path("hub.toml");
    write(
        &config,
        &format!(
            "tls-cert = {:?}\ntls-key = {:?}\n[[users]]\nname = \"carol\"\npassword = \"{hash}\"\npublish = \"*\"\nsubscribe = \"*\"\n",
            pki.path("server.pem"),
            pki.path("server.key"),
        ),
    );
    let hub = hub_common::BinHub::start(&["--config", config.to_str().expect("a UTF-8 path")]);
    let password_file = pki.path("password");
    write(&password_file, "cli secret\n");
    let hub_addr = format!("localhost:{}", hub.addr.port());
    let ca = pki.path("ca.pem");
    let sub = std::process::Command::new(env!("CARGO_BIN_EXE_tej-hub"))
        .args([
            "sub", "9", "--count", "1", "--hub", &hub_addr, "--user", "carol",
        ])
        .arg("--tls-ca")
        .arg(&ca)
        .arg("--password-file")
        .arg(&password_file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start tej-hub sub");
    // Publish until the subscriber, which may still be connecting, has its frame.
    let mut sub = sub;
    let deadline = std::time::Instant::now() + PATIENCE;
    while sub.try_wait().expect("poll tej-hub sub").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "sub got nothing in time"
        );
        let published = std::process::Command::new(env!("CARGO_BIN_EXE_tej-hub"))
            .args([
                "pub",
                "9",
                "--message",
                "over tls",
                "--hub",
                &hub_addr,
                "--user",
                "carol",
            ])
            .arg("--tls-ca")
            .arg(&ca)
            .env("TEJ_PASSWORD", "cli secret")
            .output()
            .expect("run tej-hub pub");
        assert!(published.status.success(), "pub failed: {published:?}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let output = sub.wait_with_output().expect("sub's output");
    assert!(output.status.success(), "sub failed: {output:?}");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("over tls"), "sub printed {printed:?}");
    // A wrong password is refused with the hub's reason.
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_tej-hub"))
        .args([
            "pub",
            "9",
            "--message",
            "x",
            "--hub",
            &hub_addr,
            "--user",
            "carol",
        ])
        .arg("--tls-ca")
        .arg(&ca)
        .env("TEJ_PASSWORD", "wrong")
        .output()
        .expect("run tej-hub pub");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("auth failed"),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_swaps_the_certificate_for_new_handshakes() {
    let (old, new) = (Pki::new("reload-old"), Pki::new("reload-new"));
    let config = old.path("hub.toml");
    let tls_settings = |pki: &Pki| {
        format!(
            "tls-cert = {:?}\ntls-key = {:?}\n",
            pki.path("server.pem"),
            pki.path("server.key")
        )
    };
    write(&config, &tls_settings(&old));
    let hub = hub_common::BinHub::start(&["--config", config.to_str().expect("a UTF-8 path")]);
    let addr = hub.addr;
    let mut kept = tls_subscriber(addr, old.client(None)).await;
    write(&config, &tls_settings(&new));
    hub.signal(rustix::process::Signal::HUP);
    within(PATIENCE, "the new certificate", async {
        loop {
            if info_over_tls(addr, new.client(None)).await.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let stale = info_over_tls(addr, old.client(None)).await;
    assert!(stale.is_err(), "the old certificate is still served");
    // The connection made before the reload goes on.
    assert!(kept.info().await.is_ok());
}

/// A framed connection to `addr`, over TLS when `tls` is given; with `small_window`, a 4 KiB
/// receive buffer (a subscriber that stops reading fills it at once).
async fn framed(
    addr: std::net::SocketAddr,
    tls: Option<&ClientTls>,
    small_window: bool,
) -> Framed<MaybeTls, TejCodec> {
    let socket = if small_window {
        connect_small_window(addr).await
    } else {
        connect_raw(addr).await
    };
    let stream = match tls {
        None => MaybeTls::Plain(socket),
        Some(tls) => MaybeTls::Tls(Box::new(
            within(PATIENCE, "a handshake", tls.handshake(socket, "localhost"))
                .await
                .expect("TLS handshake"),
        )),
    };
    Framed::new(stream, TejCodec::default())
}

/// Sends `command` and returns the text of the control reply, skipping other frames.
async fn command(conn: &mut Framed<MaybeTls, TejCodec>, command: &str) -> String {
    within(PATIENCE, command, async {
        conn.send(control_frame(command)).await.expect("send");
        loop {
            let frame = conn.next().await.expect("a reply").expect("a frame");
            if frame.status.code() == 127 {
                return String::from_utf8_lossy(&frame.message).into_owned();
            }
        }
    })
    .await
}

/// How many bytes of frames a subscriber that stopped reading gets from a hub (`config`, with
/// `max-pending-bytes` 128 KiB and `slow-consumer disconnect`) before the hub cuts it: what the
/// kernel's buffers hold plus what the hub's outbox may hold for it.
async fn taken_by_a_stuck_subscriber(config: HubConfig, tls: Option<&ClientTls>) -> usize {
    const FRAME: usize = 1024;
    const FRAMES: usize = 4096;
    // The hub's sockets inherit the listener's fixed send buffer: the kernel's autotuning would
    // otherwise let it take anything from a few KiB to megabytes, hiding what the hub holds.
    let listener =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("a socket");
    listener.set_send_buffer_size(4096).expect("SO_SNDBUF");
    listener
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind 127.0.0.1:0");
    listener.listen(64).expect("listen");
    let config = HubConfig {
        max_pending_bytes: 128 * 1024,
        slow_consumer: SlowPolicy::Disconnect,
        ..config
    };
    let hub = tej_hub::hub::spawn(listener.into(), config).expect("start the hub");
    let addr = hub.local_addr();
    let mut stuck = framed(addr, tls, true).await;
    assert_eq!(command(&mut stuck, "SUB 20,21").await, "OK SUB 20-21");
    let mut publisher = framed(addr, tls, false).await;
    let frames: Vec<Frame> = (0..FRAMES)
        // Alternate codes: each frame is a piece of its own (not part of a run), so the cut
        // falls on a frame, not on whatever run the publisher's segments made.
        .map(|seq| Frame::message(status(20 + seq as u8 % 2), pattern(FRAME, seq as u64)))
        .collect();
    within(PATIENCE, "the publisher", async {
        for frame in &frames {
            publisher.feed(frame.clone()).await.expect("publish");
        }
        SinkExt::<Frame>::flush(&mut publisher)
            .await
            .expect("publish");
    })
    .await;
    // Its reply comes after the hub has offered every frame before it.
    command(&mut publisher, "INFO").await;
    let mut got = 0;
    within(PATIENCE, "the stuck subscriber to be cut", async {
        while let Some(Ok(frame)) = stuck.next().await {
            if frame.status.code() == 127 {
                continue;
            }
            assert!(
                frame == frames[got],
                "stuck subscriber: frame {got} changed"
            );
            got += 1;
        }
    })
    .await;
    assert!(got < FRAMES, "the stuck subscriber got all {got} frames");
    let info = command(&mut publisher, "INFO").await;
    assert!(info.contains(r#""slow_consumers":1"#), "{info}");
    stop_hub(hub).await;
    got * (FRAME + 18)
}

/// The outbox's limit applies to what the client has not taken, TLS or not: a TLS subscriber
/// that stops reading is cut after as many bytes as a plain one, give or take a TLS record (a
/// TLS connection once ran through a local bridge whose buffers took far more).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_tls_subscriber_is_cut_at_the_same_pending_bytes_as_a_plain_one() {
    const RECORD: usize = 16 * 1024 + 256;
    let pki = Pki::new("stuck");
    let plain = taken_by_a_stuck_subscriber(test_config(), None).await;
    let tls = taken_by_a_stuck_subscriber(pki.hub_config(), Some(&pki.client(None))).await;
    eprintln!("stuck subscriber took {plain} bytes plain, {tls} bytes over TLS");
    assert!(
        tls.abs_diff(plain) <= RECORD,
        "a stuck subscriber took {plain} bytes plain but {tls} over TLS"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_group_member_s_unstarted_frames_move_to_another_member() {
    // As tests/hub_groups.rs does over plain TCP: a member over TLS that does not read, with 120
    // streamed 96 KiB frames queued (10.5 MiB, beyond what its socket buffers take), is dropped;
    // the frames not started on its socket — their plaintext kept beside any sealed records —
    // reach the other member whole, once each.
    const FRAMES: usize = 120;
    const SIZE: usize = 96 * 1024;
    let pki = Pki::new("groups");
    let hub = start_hub(HubConfig {
        cut_through_bytes: 64 * 1024,
        max_pending_bytes: 64 * MIB as u64,
        ..pki.hub_config()
    });
    let addr = hub.local_addr();
    let tls = pki.client(None);
    let join = "SUB 5 group=workers";
    let mut stuck = framed(addr, Some(&tls), true).await;
    assert_eq!(command(&mut stuck, join).await, format!("OK {join}"));
    let mut publisher = framed(addr, Some(&tls), false).await;
    for seq in 0..FRAMES {
        let mut message = format!("{seq} ").into_bytes();
        message.resize(SIZE, b'x');
        within(
            PATIENCE,
            "a feed",
            publisher.feed(Frame::message(status(5), message)),
        )
        .await
        .expect("feed");
    }
    // Its frames are all offered before its INFO is answered.
    assert!(command(&mut publisher, "INFO").await.starts_with("OK INFO"));
    let mut other = framed(addr, Some(&tls), false).await;
    assert_eq!(command(&mut other, join).await, format!("OK {join}"));
    drop(stuck);
    let mut got = Vec::new();
    while let Ok(Some(Ok(frame))) = tokio::time::timeout(Duration::from_secs(2), other.next()).await
    {
        assert_eq!(frame.message.len(), SIZE, "a whole frame");
        let text = String::from_utf8_lossy(&frame.message[..8]).into_owned();
        got.push(text.split(' ').next().and_then(|n| n.parse::<usize>().ok()));
    }
    let got: Vec<usize> = got
        .into_iter()
        .map(|seq| seq.expect("a numbered frame"))
        .collect();
    let unique: std::collections::HashSet<usize> = got.iter().copied().collect();
    assert_eq!(unique.len(), got.len(), "no frame twice: {got:?}");
    assert!(
        got.len() >= FRAMES / 2,
        "only {} of {FRAMES} moved",
        got.len()
    );
    let first = FRAMES - got.len();
    assert_eq!(unique, (first..FRAMES).collect(), "the frames not started");
    let info = command(&mut publisher, "INFO").await;
    assert!(
        info.contains(&format!("\"group_moved_frames\":{}", got.len())),
        "{info}"
    );
    stop_hub(hub).await;
}
