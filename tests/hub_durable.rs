//! Durable codes end to end, against real `tej-hub serve` processes with their store in a
//! temporary directory: publisher acknowledgements, a durable subscriber that was offline, the
//! same across a `kill -9` and restart, redelivery after `ack_wait` and dead letters, and a
//! durable cursor on one hub of a cluster fed by publishers on another.

#[path = "common/durable.rs"]
mod durable;
#[path = "common/hub.rs"]
mod hub_common;
#[path = "common/nats.rs"]
mod nats;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use durable::{
    configured_hub, durable_hub, message_number, next_delivery, numbered, publish_acknowledged,
    StoreDir,
};
use hub_common::{connect, control, control_frame, info, recv, send, BinHub};
use nats::http::{get_async, num, parse_metrics};
use sha2::{Digest, Sha256};
use tej_hub::Frame;

/// The saved cursors of the store in `dir`, as `tej-hub store cursors` lists them: (name, code,
/// acked, pending).
fn saved_cursors(dir: &StoreDir) -> Vec<(String, u8, u64, usize)> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tej-hub"))
        .args(["store", "cursors", dir.path()])
        .output()
        .expect("run tej-hub store cursors");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words[..] {
                [name, code, acked, pending] => Some((
                    name.to_owned(),
                    code.parse().ok()?,
                    acked.parse().ok()?,
                    pending.parse().ok()?,
                )),
                _ => None,
            }
        })
        .collect()
}

/// Waits (at most 10 s) until `tej-hub store cursors` shows cursor `name` acknowledged up to
/// `acked` on `code`: the hub has read the `ACK` and its I/O thread saved it.
async fn wait_for_saved_ack(dir: &StoreDir, name: &str, code: u8, acked: u64) {
    wait_for_saved(dir, |saved| {
        saved
            .iter()
            .any(|(n, c, a, _)| n == name && *c == code && *a >= acked)
    })
    .await;
}

/// Waits (at most 10 s) until `tej-hub store cursors` shows what `saved` accepts (the hub's I/O
/// thread saves the cursors shortly after each change).
async fn wait_for_saved(dir: &StoreDir, saved: impl Fn(&[(String, u8, u64, usize)]) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let cursors = saved_cursors(dir);
        if saved(&cursors) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "cursors not saved as expected: {cursors:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `command` until it is answered `OK` (at most 50 times, 20 ms apart: the hub notices a
/// closed session within a moment) and returns the last reply.
async fn until_ok(conn: &mut hub_common::Conn, command: &str) -> String {
    let mut reply = String::new();
    for _ in 0..50 {
        reply = control(conn, command).await;
        if reply.starts_with("OK") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reply
}

#[tokio::test]
async fn publishers_get_one_stored_reply_per_durable_frame_in_order() {
    let dir = StoreDir::new("puback");
    let hub = durable_hub(&dir, &[]);
    let mut publisher = connect(hub.addr).await;
    assert_eq!(control(&mut publisher, "PUBACK on").await, "OK PUBACK on");
    let frames: Vec<Frame> = (0..200).map(|i| numbered(5, i, 100)).collect();
    let seqs = publish_acknowledged(&mut publisher, &frames).await;
    assert_eq!(seqs, (1..=200).collect::<Vec<u64>>());
    // A code that is not durable is relayed as before and not acknowledged.
    send(&mut publisher, numbered(6, 0, 10)).await;
    assert_eq!(control(&mut publisher, "PUBACK off").await, "OK PUBACK off");
    let seqs = {
        send(&mut publisher, numbered(5, 200, 10)).await;
        control(&mut publisher, "PUBACK on").await
    };
    assert_eq!(seqs, "OK PUBACK on", "no STORED reply while PUBACK was off");
    assert_eq!(
        publish_acknowledged(&mut publisher, &[numbered(5, 201, 10)]).await,
        [202]
    );
}

#[tokio::test]
async fn puback_on_a_hub_without_durable_codes_is_refused() {
    let hub = BinHub::start(&[]);
    let mut conn = connect(hub.addr).await;
    assert_eq!(
        control(&mut conn, "PUBACK on").await,
        "ERR no durable codes on this hub"
    );
    assert_eq!(
        control(&mut conn, "SUB 5 durable=d").await,
        "ERR no durable codes on this hub"
    );
}

/// The first test, scaled to the test suite: a durable subscriber goes offline, frames
/// (among them a streamed one) are published, and it comes back — to the same hub, then to a hub
/// restarted after `kill -9`.
#[tokio::test]
async fn an_offline_durable_subscriber_gets_everything_once_in_order_across_a_restart() {
    let dir = StoreDir::new("offline");
    let mut hub = durable_hub(&dir, &[]);
    let mut subscriber = connect(hub.addr).await;
    assert_eq!(
        control(&mut subscriber, "SUB 5 durable=worker from=new").await,
        "OK SUB 5 durable=worker from=new"
    );
    drop(subscriber);

    // Mixed sizes: small frames, and a 3 MiB one (streamed: above the cut-through size).
    let mut publisher = connect(hub.addr).await;
    control(&mut publisher, "PUBACK on").await;
    let mut frames: Vec<Frame> = (0..300)
        .map(|i| numbered(5, i, (i as usize * 37) % 2000))
        .collect();
    frames.insert(150, numbered(5, 1000, 3 * 1024 * 1024));
    let digests: BTreeMap<u64, Vec<u8>> = frames
        .iter()
        .map(|frame| {
            (
                message_number(frame),
                Sha256::digest(frame.to_wire().expect("encode")).to_vec(),
            )
        })
        .collect();
    let order: Vec<u64> = frames.iter().map(message_number).collect();
    publish_acknowledged(&mut publisher, &frames).await;

    // Back on the same hub: everything, in order, byte-identical; acknowledge the first half.
    let mut subscriber = connect(hub.addr).await;
    assert_eq!(
        control(&mut subscriber, "SUB 5 durable=worker").await,
        "OK SUB 5 durable=worker"
    );
    let mut last_seq = 0;
    for (at, expected) in order.iter().enumerate() {
        let (seq, frame) = next_delivery(&mut subscriber, "worker").await;
        assert_eq!(seq, at as u64 + 1);
        assert_eq!(message_number(&frame), *expected);
        let digest = Sha256::digest(frame.to_wire().expect("encode")).to_vec();
        assert_eq!(
            Some(&digest),
            digests.get(expected),
            "frame {expected} changed"
        );
        if at == order.len() / 2 {
            send(
                &mut subscriber,
                control_frame(&format!("ACK worker 5 {seq}")),
            )
            .await;
        }
        last_seq = seq;
    }
    assert_eq!(last_seq, order.len() as u64);
    let acked = order.len() as u64 / 2 + 1;
    // Let the hub's I/O thread save the cursor before the hub dies (acknowledgements are saved
    // asynchronously; one lost to a crash means the frames come again, at least once).
    wait_for_saved_ack(&dir, "worker", 5, acked).await;

    // kill -9 and restart on the same store: the unacknowledged half comes again, then live
    // frames follow with no gap and no duplicate.
    drop(subscriber);
    drop(publisher);
    drop(hub);
    hub = durable_hub(&dir, &[]);
    let mut subscriber = connect(hub.addr).await;
    assert_eq!(
        control(&mut subscriber, "SUB 5 durable=worker").await,
        "OK SUB 5 durable=worker"
    );
    for seq in acked + 1..=order.len() as u64 {
        let (got, frame) = next_delivery(&mut subscriber, "worker").await;
        assert_eq!(got, seq);
        assert_eq!(message_number(&frame), order[seq as usize - 1]);
    }
    let mut publisher = connect(hub.addr).await;
    control(&mut publisher, "PUBACK on").await;
    let live: Vec<Frame> = (2000..2010).map(|i| numbered(5, i, 64)).collect();
    let seqs = publish_acknowledged(&mut publisher, &live).await;
    assert_eq!(
        seqs[0],
        order.len() as u64 + 1,
        "sequence numbers go on after a restart"
    );
    for (i, seq) in (2000..2010).zip(seqs) {
        let (got, frame) = next_delivery(&mut subscriber, "worker").await;
        assert_eq!((got, message_number(&frame)), (seq, i));
    }
}

#[tokio::test]
async fn a_cursor_is_held_by_one_session_at_a_time() {
    let dir = StoreDir::new("in-use");
    let hub = durable_hub(&dir, &[]);
    let mut first = connect(hub.addr).await;
    assert_eq!(
        control(&mut first, "SUB 5 durable=d").await,
        "OK SUB 5 durable=d"
    );
    let mut second = connect(hub.addr).await;
    assert_eq!(
        control(&mut second, "SUB 5 durable=d").await,
        "ERR durable d in use"
    );
    assert_eq!(
        control(&mut second, "SUB 6 durable=e").await,
        "ERR code 6 is not durable"
    );
    assert_eq!(
        control(&mut second, "ACK d 5 1").await,
        "ERR durable d not attached for code 5"
    );
    drop(first);
    // Freed when the first session ends.
    assert_eq!(
        until_ok(&mut second, "SUB 5 durable=d").await,
        "OK SUB 5 durable=d"
    );
}

#[tokio::test]
async fn unacknowledged_frames_are_redelivered_then_dead_lettered() {
    let dir = StoreDir::new("redeliver");
    let hub = configured_hub(
        &dir,
        "[[durable]]\ncodes = \"5\"\nack_wait = \"300ms\"\nmax_deliver = 3\ndead_letter = 9\n",
    );
    let mut dead = connect(hub.addr).await;
    assert_eq!(control(&mut dead, "SUB 9").await, "OK SUB 9");
    let mut subscriber = connect(hub.addr).await;
    control(&mut subscriber, "SUB 5 durable=slow").await;
    let mut publisher = connect(hub.addr).await;
    control(&mut publisher, "PUBACK on").await;
    publish_acknowledged(&mut publisher, &[numbered(5, 1, 10), numbered(5, 2, 10)]).await;
    // Frame 1 is acknowledged at once; frame 2 never is.
    let (seq, _) = next_delivery(&mut subscriber, "slow").await;
    assert_eq!(seq, 1);
    send(&mut subscriber, control_frame("ACK slow 5 1")).await;
    let mut deliveries = Vec::new();
    for _ in 0..3 {
        let (seq, frame) = next_delivery(&mut subscriber, "slow").await;
        deliveries.push((seq, message_number(&frame)));
    }
    assert_eq!(
        deliveries,
        [(2, 2), (2, 2), (2, 2)],
        "delivered max_deliver times"
    );
    // Then on the dead-letter code, as a frame of code 9 with the same content.
    let letter = recv(&mut dead).await;
    assert_eq!(letter.status.code(), 9);
    assert_eq!(message_number(&letter), 2);
    assert_eq!(letter.files, numbered(5, 2, 10).files);
    hub_common::expect_silence(&mut subscriber, Duration::from_millis(800)).await;
    let _ = Path::new(dir.path());
}

/// Hub B keeps code 5; its durable subscriber is offline while hub A, in the same cluster,
/// publishes: B stores what crosses, and the subscriber gets all of it when it comes back to B.
#[tokio::test]
async fn a_durable_cursor_on_another_hub_gets_what_was_published_while_it_was_away() {
    let Some(nats) = nats::NatsServer::start("durable_cluster") else {
        return;
    };
    let dir = StoreDir::new("cluster");
    let url = nats.url();
    let a = BinHub::start(&["--cluster", &url, "--hub-name", "a"]);
    let b = durable_hub(&dir, &["--cluster", &url, "--hub-name", "b"]);
    let mut subscriber = connect(b.addr).await;
    assert_eq!(
        control(&mut subscriber, "SUB 5 durable=away").await,
        "OK SUB 5 durable=away"
    );
    drop(subscriber);
    // A learns that B wants code 5 (for good: B stores it) before anything is published.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut probe = connect(a.addr).await;
    loop {
        let info = hub_common::info(&mut probe).await;
        if info["cluster"]["remote_hubs"] == 1 && info["cluster"]["connected"] == true {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "hubs did not meet: {info}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut publisher = connect(a.addr).await;
    for i in 0..100 {
        send(&mut publisher, numbered(5, i, 500)).await;
    }
    send(&mut publisher, numbered(5, 100, 2 * 1024 * 1024)).await;
    assert!(control(&mut publisher, "INFO").await.starts_with("OK INFO"));
    let mut subscriber = connect(b.addr).await;
    assert_eq!(
        control(&mut subscriber, "SUB 5 durable=away").await,
        "OK SUB 5 durable=away"
    );
    for i in 0..=100 {
        let (seq, frame) = next_delivery(&mut subscriber, "away").await;
        assert_eq!((seq, message_number(&frame)), (i + 1, i));
        if i == 100 {
            assert_eq!(frame, numbered(5, 100, 2 * 1024 * 1024));
        }
    }
}

/// The one durable subscription `name` of `/varz`'s `store` (or of `/subsz`'s `durable`).
fn subscription<'a>(list: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    list.as_array()
        .and_then(|list| list.iter().find(|sub| sub["name"] == name))
        .unwrap_or_else(|| panic!("no durable {name} in {list}"))
}

/// Five frames stored, delivered to a durable subscriber that acknowledged three: `INFO`,
/// `/varz`, `/subsz`, `/metrics` and `tej-hub store cursors` agree on the code's log and the
/// cursor, attached and then detached.
#[tokio::test]
async fn monitoring_shows_the_stored_code_and_the_cursor() {
    let dir = StoreDir::new("monitor");
    let hub = durable_hub(&dir, &["--http", "127.0.0.1:0"]);
    let web = hub.monitor_addr();
    let mut subscriber = connect(hub.addr).await;
    assert_eq!(
        control(&mut subscriber, "SUB 5 durable=watch from=all").await,
        "OK SUB 5 durable=watch from=all"
    );
    let mut publisher = connect(hub.addr).await;
    control(&mut publisher, "PUBACK on").await;
    let frames: Vec<Frame> = (0..5).map(|i| numbered(5, i, 100 * i as usize)).collect();
    let lens: Vec<u64> = frames
        .iter()
        .map(|frame| frame.to_wire().expect("encode").len() as u64)
        .collect();
    assert_eq!(
        publish_acknowledged(&mut publisher, &frames).await,
        [1, 2, 3, 4, 5]
    );
    for seq in 1..=5 {
        assert_eq!(next_delivery(&mut subscriber, "watch").await.0, seq);
    }
    send(&mut subscriber, control_frame("ACK watch 5 3")).await;

    // INFO comes after the ACK is handled: the session's own cursor, and the hub's store.
    let mine = info(&mut subscriber).await;
    assert_eq!(mine["puback"], false);
    let cursor = &mine["durable"][0];
    assert_eq!(cursor["name"], "watch");
    assert_eq!(cursor["attached"], true);
    let code = &cursor["codes"][0];
    assert_eq!(
        (
            num(code, "code"),
            num(code, "acked"),
            num(code, "unacked_frames")
        ),
        (5, 3, 2)
    );
    assert_eq!(num(code, "unacked_bytes"), lens[3] + lens[4]);
    assert_eq!(num(&mine["hub"]["store"], "frames"), 5);
    assert_eq!(num(&mine["hub"]["store"], "acks"), 1);
    assert_eq!(info(&mut publisher).await["puback"], true);

    let varz = get_async(web, "/varz").await.json();
    let store = &varz["store"];
    assert_eq!(store["dir"], dir.path());
    assert_eq!(store["sync"], "always");
    assert_eq!(
        (
            num(store, "frames"),
            num(store, "delivered"),
            num(store, "acks")
        ),
        (5, 5, 1)
    );
    // The frames' bytes as received (the per-code log figures below count the headers too).
    assert_eq!(num(store, "bytes"), lens.iter().sum::<u64>());
    assert!(num(store, "syncs") >= 1);
    assert_eq!(num(store, "refused_full"), 0);
    let log = &store["codes"][0];
    assert_eq!(
        [
            num(log, "code"),
            num(log, "frames"),
            num(log, "first_seq"),
            num(log, "last_seq"),
            num(log, "segments")
        ],
        [5, 5, 1, 5, 1]
    );
    assert!(
        num(log, "bytes") > lens.iter().sum::<u64>(),
        "records have headers: {log}"
    );
    assert!(log["oldest_age_seconds"].is_u64(), "{log}");
    let watch = subscription(&store["subscriptions"], "watch");
    assert_eq!(watch["attached"], true);
    assert_eq!(watch["codes"][0], *code, "/varz and INFO disagree");
    let subsz = get_async(web, "/subsz").await.json();
    assert_eq!(subscription(&subsz["durable"], "watch")["codes"][0], *code);

    let metrics = parse_metrics(&get_async(web, "/metrics").await.body);
    for (series, value) in [
        ("tej_hub_store_frames_total", 5.0),
        ("tej_hub_durable_delivered_total", 5.0),
        ("tej_hub_durable_acks_total", 1.0),
        ("tej_hub_store_refused_full_total", 0.0),
        ("tej_hub_store_code_frames{code=\"5\"}", 5.0),
        ("tej_hub_store_code_last_seq{code=\"5\"}", 5.0),
        ("tej_hub_store_code_segments{code=\"5\"}", 1.0),
    ] {
        assert_eq!(metrics.get(series), Some(&value), "{series}");
    }

    // Detached: the cursor stays where it was acknowledged, nothing in flight.
    drop(subscriber);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let watch = loop {
        let varz = get_async(web, "/varz").await.json();
        let watch = subscription(&varz["store"]["subscriptions"], "watch").clone();
        if watch["attached"] == false {
            break watch;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still attached: {watch}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let code = &watch["codes"][0];
    assert_eq!(
        (
            num(code, "acked"),
            num(code, "unacked_frames"),
            num(code, "unacked_bytes")
        ),
        (3, 0, 0)
    );
    wait_for_saved_ack(&dir, "watch", 5, 3).await;
    assert_eq!(saved_cursors(&dir), [("watch".to_owned(), 5, 3, 0)]);
}

/// Runs the `tej-hub` CLI with `args`: (exit code, stdout, stderr).
fn cli(args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tej-hub"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run tej-hub");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `pub --ack` prints each frame's sequence number once stored; `sub --durable` gets them,
/// acknowledges them, and a later `sub --durable` with the same name resumes after them.
#[tokio::test]
async fn cli_pub_ack_then_sub_durable_resumes_after_what_it_acknowledged() {
    let dir = StoreDir::new("cli");
    let hub = durable_hub(&dir, &[]);
    let addr = hub.addr.to_string();
    for (message, seq) in [("one", 1), ("two", 2)] {
        let published = cli(&["pub", "5", "--ack", "-m", message, "--hub", &addr]);
        assert_eq!(
            published,
            (Some(0), format!("stored 5 {seq}\n"), String::new())
        );
    }
    let got = cli(&[
        "sub",
        "5",
        "--durable",
        "cli",
        "--from",
        "all",
        "--count",
        "2",
        "--hub",
        &addr,
    ]);
    assert_eq!(got.0, Some(0), "{got:?}");
    assert_eq!(
        got.1,
        "status: 5\nmessage: one\n\nstatus: 5\nmessage: two\n"
    );
    wait_for_saved_ack(&dir, "cli", 5, 2).await;

    let published = cli(&["pub", "5", "--ack", "-m", "three", "--hub", &addr]);
    assert_eq!(published.1, "stored 5 3\n", "{published:?}");
    let got = cli(&[
        "sub",
        "5",
        "--durable",
        "cli",
        "--count",
        "1",
        "--hub",
        &addr,
    ]);
    assert_eq!(
        (got.0, got.1.as_str()),
        (Some(0), "status: 5\nmessage: three\n"),
        "{got:?}"
    );

    // A hub without durable codes refuses PUBACK: pub --ack fails with the reason.
    let plain = BinHub::start(&[]);
    let refused = cli(&[
        "pub",
        "5",
        "--ack",
        "-m",
        "x",
        "--hub",
        &plain.addr.to_string(),
    ]);
    assert_ne!(refused.0, Some(0), "{refused:?}");
    assert!(refused.2.contains("no durable codes"), "{refused:?}");
}

/// `HubClient` end to end: `next_stored` gives each publication's sequence number; a durable
/// subscriber's `MSG` notices are never taken for a command's reply (an `INFO` sent while stored
/// frames stream in gets its own reply), `delivery` names each frame, and `ack` moves the cursor.
#[tokio::test]
async fn hub_client_publishes_with_acks_and_consumes_durably() {
    use tej_hub::hub::control::StartAt;
    use tej_hub::hub::HubClient;

    let dir = StoreDir::new("client");
    let hub = durable_hub(&dir, &[]);
    let mut subscriber = HubClient::connect(hub.addr).await.expect("connect");
    let subscribed = subscriber
        .subscribe_durable("5", "typed", Some(StartAt::All))
        .await
        .expect("SUB durable");
    assert_eq!(subscribed.to_string(), "5");
    let mut publisher = HubClient::connect(hub.addr).await.expect("connect");
    publisher.set_puback(true).await.expect("PUBACK on");
    for i in 0..3 {
        publisher
            .publish(numbered(5, i, 10))
            .await
            .expect("publish");
    }
    for seq in 1..=3 {
        let (stored, got) = publisher.next_stored().await.expect("stored");
        assert_eq!((stored.code(), got), (5, seq));
    }
    for seq in 1..=3 {
        let frame = subscriber
            .next_frame()
            .await
            .expect("a frame")
            .expect("open");
        assert_eq!(message_number(&frame), seq - 1);
        let delivery = subscriber.delivery().cloned().expect("a durable delivery");
        assert_eq!(
            (delivery.name.as_str(), delivery.status.code(), delivery.seq),
            ("typed", 5, seq)
        );
        subscriber.ack(&delivery).await.expect("ACK");
        if seq == 1 {
            // The feed offered the three frames in one batch: the next two and their notices are
            // on their way before INFO's reply, and must not be taken for it.
            let info = subscriber.info().await.expect("INFO among deliveries");
            assert_eq!(info.durable[0].name.as_str(), "typed");
        }
    }
    let code = subscriber.info().await.expect("INFO").durable[0].codes[0];
    assert_eq!(
        (code.acked, code.unacked_frames, code.unacked_bytes),
        (3, 0, 0)
    );
    // Without a store, PUBACK is refused with the reason.
    let plain = BinHub::start(&[]);
    let mut refused = HubClient::connect(plain.addr).await.expect("connect");
    assert!(matches!(
        refused.set_puback(true).await,
        Err(tej_hub::hub::HubError::Refused(reason)) if reason.contains("no durable codes")
    ));
}

/// Deletes cursor `name` on code 5 through `conn` and checks the reply.
async fn delete_cursor(conn: &mut hub_common::Conn, name: &str) {
    assert_eq!(
        control(conn, &format!("UNSUB 5 durable={name} delete=yes")).await,
        format!("OK UNSUB 5 durable={name} delete=yes")
    );
}

/// `UNSUB ... delete=yes` by the session holding the cursor: its feed stops, and a later `SUB`
/// with the name starts a new cursor at its `from=` — `new` skips what was published before,
/// `all` replays it from the first frame (so the cursor was forgotten, not moved).
#[tokio::test]
async fn a_deleted_cursor_is_forgotten_and_a_later_sub_starts_afresh() {
    let dir = StoreDir::new("delete");
    let hub = durable_hub(&dir, &[]);
    let mut subscriber = connect(hub.addr).await;
    assert_eq!(
        control(&mut subscriber, "SUB 5 durable=d from=all").await,
        "OK SUB 5 durable=d from=all"
    );
    let mut publisher = connect(hub.addr).await;
    control(&mut publisher, "PUBACK on").await;
    let frames: Vec<Frame> = (0..3).map(|i| numbered(5, i, 50)).collect();
    publish_acknowledged(&mut publisher, &frames).await;
    for seq in 1..=3 {
        assert_eq!(next_delivery(&mut subscriber, "d").await.0, seq);
    }
    // Only the first acknowledged: a resumed cursor would deliver 2 and 3 again.
    send(&mut subscriber, control_frame("ACK d 5 1")).await;
    delete_cursor(&mut subscriber, "d").await;
    assert_eq!(
        control(&mut subscriber, "ACK d 5 3").await,
        "ERR durable d not attached for code 5"
    );
    assert_eq!(
        info(&mut subscriber).await["durable"],
        serde_json::json!([])
    );

    // from=new (the default): nothing published before, then the next frame.
    assert_eq!(
        control(&mut subscriber, "SUB 5 durable=d").await,
        "OK SUB 5 durable=d"
    );
    hub_common::expect_silence(&mut subscriber, Duration::from_millis(500)).await;
    publish_acknowledged(&mut publisher, &[numbered(5, 3, 50)]).await;
    let (seq, frame) = next_delivery(&mut subscriber, "d").await;
    assert_eq!((seq, message_number(&frame)), (4, 3));

    // from=all after another delete: every frame kept, from the first.
    delete_cursor(&mut subscriber, "d").await;
    assert_eq!(
        control(&mut subscriber, "SUB 5 durable=d from=all").await,
        "OK SUB 5 durable=d from=all"
    );
    for seq in 1..=4 {
        let (got, frame) = next_delivery(&mut subscriber, "d").await;
        assert_eq!((got, message_number(&frame)), (seq, seq - 1));
    }
}

/// A delete is refused, with nothing deleted, when another session holds the cursor, when the
/// cursor does not exist, or when it lacks one of the listed codes; the option parser refuses
/// `delete=` on `SUB`, without `durable=`, or with a value other than `yes`.
#[tokio::test]
async fn a_delete_is_refused_for_a_cursor_in_use_or_unknown_and_nothing_changes() {
    let dir = StoreDir::new("delete-refused");
    let hub = durable_hub(&dir, &[]);
    let mut holder = connect(hub.addr).await;
    assert_eq!(
        control(&mut holder, "SUB 5 durable=d").await,
        "OK SUB 5 durable=d"
    );
    let mut other = connect(hub.addr).await;
    assert_eq!(
        control(&mut other, "UNSUB 5 durable=d delete=yes").await,
        "ERR durable d in use"
    );
    assert_eq!(
        control(&mut other, "UNSUB 5 durable=nobody delete=yes").await,
        "ERR durable nobody not found for code 5"
    );
    assert_eq!(
        control(&mut holder, "UNSUB 5,6 durable=d delete=yes").await,
        "ERR durable d not found for code 6"
    );
    // A free cursor (no session holds it) that lacks code 6: code 5 is not deleted either, so a
    // later SUB resumes it (a new cursor, from=new, would skip the frame published meanwhile).
    assert_eq!(
        control(&mut other, "SUB 5 durable=free from=all").await,
        "OK SUB 5 durable=free from=all"
    );
    assert_eq!(
        control(&mut other, "UNSUB 5 durable=free").await,
        "OK UNSUB 5 durable=free"
    );
    assert_eq!(
        control(&mut other, "UNSUB 5,6 durable=free delete=yes").await,
        "ERR durable free not found for code 6"
    );
    for (command, refusal) in [
        (
            "SUB 5 durable=d delete=yes",
            "ERR delete= is for UNSUB only",
        ),
        ("UNSUB 5 delete=yes", "ERR delete= needs durable="),
        (
            "UNSUB 5 durable=d delete=no",
            "ERR delete takes yes, not \"no\"",
        ),
    ] {
        assert_eq!(control(&mut other, command).await, refusal, "{command}");
    }
    // The cursor still works for its holder.
    let mut publisher = connect(hub.addr).await;
    control(&mut publisher, "PUBACK on").await;
    publish_acknowledged(&mut publisher, &[numbered(5, 0, 10)]).await;
    assert_eq!(next_delivery(&mut holder, "d").await.0, 1);
    send(&mut holder, control_frame("ACK d 5 1")).await;
    assert_eq!(
        info(&mut holder).await["durable"][0]["codes"][0]["acked"],
        1
    );
    assert_eq!(
        control(&mut other, "SUB 5 durable=free").await,
        "OK SUB 5 durable=free"
    );
    assert_eq!(next_delivery(&mut other, "free").await.0, 1);

    // Once the holder has gone, another session may delete it.
    drop(holder);
    assert_eq!(
        until_ok(&mut other, "UNSUB 5 durable=d delete=yes").await,
        "OK UNSUB 5 durable=d delete=yes"
    );
}

/// A deleted cursor leaves `/varz`, `/subsz` and (once the I/O thread has saved the file)
/// `tej-hub store cursors`; after a `kill -9` and restart it is still gone while the other
/// cursor is kept, and the name starts afresh.
#[tokio::test]
async fn a_deleted_cursor_leaves_monitoring_and_stays_deleted_across_a_restart() {
    let dir = StoreDir::new("delete-restart");
    let mut hub = durable_hub(&dir, &["--http", "127.0.0.1:0"]);
    let mut publisher = connect(hub.addr).await;
    control(&mut publisher, "PUBACK on").await;
    let mut subscriber = connect(hub.addr).await;
    for name in ["gone", "kept"] {
        assert_eq!(
            control(&mut subscriber, &format!("SUB 5 durable={name}")).await,
            format!("OK SUB 5 durable={name}")
        );
    }
    publish_acknowledged(&mut publisher, &[numbered(5, 0, 10), numbered(5, 1, 10)]).await;
    let mut got = BTreeMap::new();
    for _ in 0..4 {
        let notice = recv(&mut subscriber).await;
        let text = String::from_utf8_lossy(&notice.message).into_owned();
        let name = text
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let frame = recv(&mut subscriber).await;
        got.entry(name)
            .or_insert_with(Vec::new)
            .push(message_number(&frame));
    }
    assert_eq!(got["gone"], [0, 1], "{got:?}");
    assert_eq!(got["kept"], [0, 1], "{got:?}");
    send(&mut subscriber, control_frame("ACK kept 5 2")).await;
    wait_for_saved_ack(&dir, "kept", 5, 2).await;
    assert_eq!(saved_cursors(&dir).len(), 2);

    delete_cursor(&mut subscriber, "gone").await;
    let mine = info(&mut subscriber).await;
    assert_eq!(mine["durable"].as_array().map(Vec::len), Some(1), "{mine}");
    assert_eq!(mine["durable"][0]["name"], "kept");
    let web = hub.monitor_addr();
    let names = |list: &serde_json::Value| -> Vec<String> {
        list.as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|sub| sub["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let varz = get_async(web, "/varz").await.json();
    assert_eq!(names(&varz["store"]["subscriptions"]), ["kept"]);
    let subsz = get_async(web, "/subsz").await.json();
    assert_eq!(names(&subsz["durable"]), ["kept"]);

    // The cursor file is saved by the store's I/O thread after the reply (as every cursor
    // change is): wait until it shows the delete, then kill -9.
    let only_kept = [("kept".to_owned(), 5, 2, 0)];
    wait_for_saved(&dir, |saved| saved == only_kept).await;
    drop(subscriber);
    drop(publisher);
    drop(hub);
    hub = durable_hub(&dir, &["--http", "127.0.0.1:0"]);
    assert_eq!(saved_cursors(&dir), only_kept);
    let varz = get_async(hub.monitor_addr(), "/varz").await.json();
    assert_eq!(names(&varz["store"]["subscriptions"]), ["kept"]);
    // The name starts afresh (from=new): the two frames before are not delivered.
    let mut subscriber = connect(hub.addr).await;
    assert_eq!(
        control(&mut subscriber, "SUB 5 durable=gone").await,
        "OK SUB 5 durable=gone"
    );
    hub_common::expect_silence(&mut subscriber, Duration::from_millis(500)).await;
}
