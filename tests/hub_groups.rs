//! Queue groups over real sockets on 127.0.0.1 (issue 21): `SUB <codes> group=<name>` gives
//! each frame to exactly one member of each group, by queued bytes; a slow member gets a small
//! share; a member that leaves hands its unstarted frames to another; two groups and a member
//! that is also an ordinary subscriber are defined; the Python reference client joins with
//! control frames only; `[[users]] groups` limits which groups a user may join.

#[path = "common/http.rs"]
mod http;
#[path = "common/hub.rs"]
mod hub_common;
#[path = "common/python.rs"]
mod python;
#[path = "common/tagged.rs"]
mod tagged;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use tej_hub::hub::config::{HubConfig, UserConfig};
use tej_hub::TejCodec;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;

use http::{get_async, num, parse_metrics};
use hub_common::{
    cheap_hash, connect, connect_small_window, control, expect_silence, feed, flush, info, recv,
    send, start_hub, status, stop_hub, subscribe, test_config, within, Conn, PATIENCE,
};
use python::PyPeer;
use tagged::{collect, frame, id_of, in_order_per_publisher};

/// How long a whole run may take (debug build, a shared 2-core machine).
const RUN: Duration = Duration::from_secs(120);
/// How long a connection must stay silent to show that nothing more is coming.
const QUIET: Duration = Duration::from_millis(400);

/// Reads `conn` in a task, sending `(index, id)` for each relayed frame, sleeping `delay`
/// after each one (a slow reader).
fn reader(
    index: usize,
    mut conn: Conn,
    delay: Option<Duration>,
    out: mpsc::UnboundedSender<(usize, (usize, usize))>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(Ok(frame)) = conn.next().await {
            if frame.status.code() == 127 {
                continue;
            }
            if out.send((index, id_of(&frame))).is_err() {
                return;
            }
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
        }
    })
}

/// Joins `group` for `codes` and checks the reply.
async fn join(conn: &mut Conn, codes: &str, group: &str) {
    let reply = control(conn, &format!("SUB {codes} group={group}")).await;
    assert_eq!(reply, format!("OK SUB {codes} group={group}"));
}

/// Publishes `count` frames of `size` bytes as publisher `publisher` on `code`.
async fn publish(conn: &mut Conn, code: u8, publisher: usize, count: usize, size: usize) {
    for seq in 0..count {
        feed(conn, frame(status(code), publisher, seq, size)).await;
        if seq % 64 == 63 {
            flush(conn).await;
        }
    }
    flush(conn).await;
}

/// Asserts that the members' ids together are `expected`, each exactly once.
fn exactly_once(members: &[Vec<(usize, usize)>], expected: &HashSet<(usize, usize)>, who: &str) {
    let mut seen = HashSet::new();
    for ids in members {
        for id in ids {
            assert!(seen.insert(*id), "{who}: {id:?} delivered twice");
        }
    }
    assert_eq!(seen.len(), expected.len(), "{who}: frames delivered");
    assert!(seen == *expected, "{who}: other frames than published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_members_share_three_publishers_each_frame_once_and_in_order() {
    const PER_PUBLISHER: [usize; 3] = [6_667, 6_667, 6_666];
    let total: usize = PER_PUBLISHER.iter().sum();
    let hub = start_hub(test_config());
    let addr = hub.local_addr();
    let (out, mut events) = mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for index in 0..4 {
        let mut member = connect(addr).await;
        join(&mut member, "5", "workers").await;
        tasks.push(reader(index, member, None, out.clone()));
    }
    let mut ordinary = connect(addr).await;
    subscribe(&mut ordinary, "5", "5").await;
    tasks.push(reader(4, ordinary, None, out.clone()));

    let mut publishers = Vec::new();
    for (publisher, count) in PER_PUBLISHER.into_iter().enumerate() {
        let mut conn = connect(addr).await;
        publishers.push(tokio::spawn(async move {
            publish(&mut conn, 5, publisher, count, 200).await;
            conn
        }));
    }
    let got = collect(5, &mut events, RUN, QUIET, |got| {
        got[..4].iter().map(Vec::len).sum::<usize>() >= total && got[4].len() >= total
    })
    .await;
    let expected: HashSet<(usize, usize)> = PER_PUBLISHER
        .iter()
        .enumerate()
        .flat_map(|(publisher, &count)| (0..count).map(move |seq| (publisher, seq)))
        .collect();
    exactly_once(&got[..4], &expected, "the group");
    exactly_once(&got[4..], &expected, "the ordinary subscriber");
    for (index, ids) in got.iter().enumerate() {
        in_order_per_publisher(ids, &format!("reader {index}"));
    }
    let shares: Vec<usize> = got[..4].iter().map(Vec::len).collect();
    eprintln!("shares of 4 equal members: {shares:?}");
    assert!(shares.iter().all(|&share| share > 0), "{shares:?}");
    for task in tasks {
        task.abort();
    }
    for publisher in publishers {
        drop(publisher.await);
    }
    stop_hub(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_member_gets_a_small_share_and_nothing_is_lost() {
    // 16 KiB frames: 4,000 of them are 64 MB, far more than the socket buffers of the slow
    // member's connection can hide (a 4 KiB receive window, but the hub's send buffer grows to
    // a few MB on loopback).
    const FRAMES: usize = 4_000;
    const SIZE: usize = 16 * 1024;
    let hub = start_hub(test_config());
    let addr = hub.local_addr();
    let (out, mut events) = mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for index in 0..3 {
        let mut member = connect(addr).await;
        join(&mut member, "5", "workers").await;
        tasks.push(reader(index, member, None, out.clone()));
    }
    let mut slow = Framed::new(connect_small_window(addr).await, TejCodec::default());
    join(&mut slow, "5", "workers").await;
    // 20 ms per 16 KiB frame: at most 0.8 MB/s, far more than ten times slower than a prompt
    // reader on loopback.
    tasks.push(reader(
        3,
        slow,
        Some(Duration::from_millis(20)),
        out.clone(),
    ));

    let mut publisher = connect(addr).await;
    publish(&mut publisher, 5, 0, FRAMES, SIZE).await;
    let got = collect(4, &mut events, RUN, QUIET, |got| {
        got.iter().map(Vec::len).sum::<usize>() >= FRAMES
    })
    .await;
    let expected: HashSet<(usize, usize)> = (0..FRAMES).map(|seq| (0, seq)).collect();
    exactly_once(&got, &expected, "the group");
    let shares: Vec<usize> = got.iter().map(Vec::len).collect();
    eprintln!("shares of 3 prompt members and a slow one: {shares:?}");
    assert!(
        shares[3] * 5 <= FRAMES,
        "the slow member got {} of {FRAMES}: {shares:?}",
        shares[3]
    );
    for task in tasks {
        task.abort();
    }
    stop_hub(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_s_queued_frames_go_to_another_member() {
    // Streamed frames (above the 64 KiB cut-through size) queued for a member that does not read:
    // when it goes, those not started on its socket go to the other member; the one partly
    // written is cut and counted. 160 frames of 96 KiB (15 MB, under a 64 MiB mark so that the
    // publisher is never held back) are far more than the kernel's socket buffers take (a few
    // MB on loopback).
    const FRAMES: usize = 160;
    const SIZE: usize = 96 * 1024;
    let hub = start_hub(HubConfig {
        cut_through_bytes: 64 * 1024,
        max_pending_bytes: 64 * 1024 * 1024,
        ..test_config()
    });
    let addr = hub.local_addr();
    let mut stuck = Framed::new(connect_small_window(addr).await, TejCodec::default());
    join(&mut stuck, "5", "workers").await;
    let mut publisher = connect(addr).await;
    publish(&mut publisher, 5, 0, FRAMES, SIZE).await;
    // The publisher's frames are all offered before its INFO is answered.
    let before = info(&mut publisher).await;
    assert_eq!(before["hub"]["group_moved_frames"], json!(0));

    let mut other = connect(addr).await;
    join(&mut other, "5", "workers").await;
    drop(stuck);
    let mut got = Vec::new();
    while let Ok(Some(Ok(frame))) = tokio::time::timeout(Duration::from_secs(2), other.next()).await
    {
        assert_eq!(frame.message.len(), SIZE, "a whole frame");
        got.push(id_of(&frame).1);
    }
    let after = info(&mut publisher).await;
    let (moved, cut) = (
        after["hub"]["group_moved_frames"].as_u64().unwrap_or(0) as usize,
        after["hub"]["group_cut_frames"].as_u64().unwrap_or(0) as usize,
    );
    eprintln!("moved {moved}, cut {cut}, received {}: {got:?}", got.len());
    let unique: HashSet<usize> = got.iter().copied().collect();
    assert_eq!(unique.len(), got.len(), "no frame twice: {got:?}");
    assert_eq!(moved, got.len(), "every moved frame arrived");
    // What the stuck member's socket took is its (lost with its connection, as for any
    // subscriber); everything after that moved, and the one partly written was counted.
    let first = FRAMES - got.len();
    assert!(
        got.len() >= FRAMES / 2,
        "only {} of {FRAMES} moved",
        got.len()
    );
    assert_eq!(unique, (first..FRAMES).collect(), "the frames not started");
    assert_eq!(cut, 1, "the frame partly written");
    stop_hub(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_groups_on_one_code_each_get_every_frame_once() {
    const FRAMES: usize = 2_000;
    let hub = start_hub(test_config());
    let addr = hub.local_addr();
    let (out, mut events) = mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for (index, group) in ["blue", "blue", "green", "green"].into_iter().enumerate() {
        let mut member = connect(addr).await;
        join(&mut member, "7", group).await;
        tasks.push(reader(index, member, None, out.clone()));
    }
    let mut publisher = connect(addr).await;
    publish(&mut publisher, 7, 0, FRAMES, 100).await;
    let got = collect(4, &mut events, RUN, QUIET, |got| {
        got.iter().map(Vec::len).sum::<usize>() >= 2 * FRAMES
    })
    .await;
    let expected: HashSet<(usize, usize)> = (0..FRAMES).map(|seq| (0, seq)).collect();
    exactly_once(&got[..2], &expected, "blue");
    exactly_once(&got[2..], &expected, "green");
    for task in tasks {
        task.abort();
    }
    stop_hub(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_also_subscribes_gets_each_frame_once() {
    const FRAMES: usize = 1_000;
    let hub = start_hub(test_config());
    let addr = hub.local_addr();
    let mut both = connect(addr).await;
    subscribe(&mut both, "5", "5").await;
    join(&mut both, "5", "workers").await;
    join(&mut both, "5", "others").await;
    let mut member = connect(addr).await;
    join(&mut member, "5", "workers").await;
    let session = info(&mut both).await;
    assert_eq!(session["subscriptions"], json!([5]));
    assert_eq!(
        session["groups"],
        json!([{"name": "others", "codes": [5]}, {"name": "workers", "codes": [5]}])
    );
    let (out, mut events) = mpsc::unbounded_channel();
    let tasks = [
        reader(0, both, None, out.clone()),
        reader(1, member, None, out.clone()),
    ];
    let mut publisher = connect(addr).await;
    publish(&mut publisher, 5, 0, FRAMES, 100).await;
    let got = collect(2, &mut events, RUN, QUIET, |got| got[0].len() >= FRAMES).await;
    let expected: HashSet<(usize, usize)> = (0..FRAMES).map(|seq| (0, seq)).collect();
    // The ordinary subscription gets every frame, once however many of its groups pick it.
    exactly_once(&got[..1], &expected, "the member that subscribes too");
    let unique: HashSet<(usize, usize)> = got[1].iter().copied().collect();
    assert_eq!(
        unique.len(),
        got[1].len(),
        "the other member: no frame twice"
    );
    assert!(
        got[1].len() < FRAMES,
        "the other member shares the group's frames"
    );
    for task in tasks {
        task.abort();
    }
    stop_hub(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsub_group_leaves_only_that_group_and_errors_are_typed() {
    let hub = start_hub(test_config());
    let addr = hub.local_addr();
    let mut conn = connect(addr).await;
    let mut publisher = connect(addr).await;
    join(&mut conn, "5-6", "workers").await;
    subscribe(&mut conn, "5", "5").await;
    assert_eq!(control(&mut conn, "UNSUB 5").await, "OK UNSUB 5");
    assert_eq!(
        info(&mut conn).await["groups"],
        json!([{"name": "workers", "codes": [5, 6]}])
    );
    send(&mut publisher, frame(status(5), 0, 0, 10)).await;
    assert_eq!(
        id_of(&recv(&mut conn).await),
        (0, 0),
        "still a member for 5"
    );
    assert_eq!(
        control(&mut conn, "UNSUB 5 group=workers").await,
        "OK UNSUB 5 group=workers"
    );
    assert_eq!(
        info(&mut conn).await["groups"],
        json!([{"name": "workers", "codes": [6]}])
    );
    send(&mut publisher, frame(status(5), 0, 1, 10)).await;
    expect_silence(&mut conn, QUIET).await;
    for (command, reply) in [
        ("SUB 5 group=", "ERR empty group name"),
        (
            "SUB 5 group=a/b",
            "ERR bad group name \"a/b\": only A-Z a-z 0-9 _ . - allowed",
        ),
        (
            &format!("SUB 5 group={}", "g".repeat(33)),
            "ERR group name of 33 characters, more than 32",
        ),
        ("SUB 5 queue=x", "ERR unknown option \"queue\""),
        ("SUB 5 group=a group=b", "ERR option group given twice"),
    ] {
        assert_eq!(control(&mut conn, command).await, reply, "{command}");
    }
    stop_hub(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_join_only_the_groups_they_may() {
    let user = |name: &str, groups: Option<Vec<String>>| UserConfig {
        name: name.into(),
        password: cheap_hash("pw"),
        publish: Some("*".into()),
        subscribe: Some("5-9".into()),
        groups,
    };
    let hub = start_hub(HubConfig {
        users: vec![
            user("worker", Some(vec!["workers".into(), "scan-*".into()])),
            user("any", None),
        ],
        ..test_config()
    });
    let addr = hub.local_addr();
    let mut worker = connect(addr).await;
    assert_eq!(
        control(&mut worker, "AUTH worker pw").await,
        "OK AUTH worker"
    );
    join(&mut worker, "5", "workers").await;
    join(&mut worker, "5", "scan-eu").await;
    for (command, reply) in [
        ("SUB 5 group=other", "ERR permission denied: group other"),
        (
            "SUB 5 group=Workers",
            "ERR permission denied: group Workers",
        ),
        ("SUB 5 group=scan", "ERR permission denied: group scan"),
        ("SUB 4 group=workers", "ERR permission denied: subscribe 4"),
    ] {
        assert_eq!(control(&mut worker, command).await, reply, "{command}");
    }
    let groups = info(&mut worker).await["groups"].clone();
    assert_eq!(
        groups,
        json!([{"name": "scan-eu", "codes": [5]}, {"name": "workers", "codes": [5]}])
    );
    let mut any = connect(addr).await;
    assert_eq!(control(&mut any, "AUTH any pw").await, "OK AUTH any");
    join(&mut any, "5", "other").await;
    stop_hub(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_reference_client_joins_a_group_with_control_frames() {
    let hub = start_hub(test_config());
    let port = hub.local_addr().port();
    let mut python_member = PyPeer::commanding(port, &["SUB 5 group=workers"], 3);
    let ok = python_member.next_event("received").await;
    assert_eq!(ok["status"], json!(127));
    assert_eq!(ok["message_text"], json!("OK SUB 5 group=workers"));
    // The only member: it gets both frames, each once.
    let mut publisher = connect(hub.local_addr()).await;
    for seq in 0..2 {
        send(&mut publisher, frame(status(5), 0, seq, 100)).await;
        let received = python_member.next_event("received").await;
        assert_eq!(received["status"], json!(5));
        assert_eq!(received["message_len"], json!(100));
    }
    python_member.succeeds().await;
    stop_hub(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitoring_lists_groups_members_and_what_each_was_given() {
    const FRAMES: usize = 30;
    let hub = start_hub(HubConfig {
        http: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        ..test_config()
    });
    let web = hub.monitor_addr().expect("the monitoring address");
    let addr = hub.local_addr();
    let mut members = Vec::new();
    for _ in 0..2 {
        let mut member = connect(addr).await;
        join(&mut member, "5-6", "workers").await;
        members.push(member);
    }
    let mut publisher = connect(addr).await;
    publish(&mut publisher, 5, 0, FRAMES, 100).await;
    let mut received = 0;
    while received < FRAMES {
        for member in &mut members {
            if let Ok(Some(Ok(_))) =
                tokio::time::timeout(Duration::from_millis(50), member.next()).await
            {
                received += 1;
            }
        }
    }
    let subsz = get_async(web, "/subsz").await.json();
    let groups = subsz["groups"].as_array().expect("groups").clone();
    assert_eq!(groups.len(), 1, "{groups:?}");
    let group = &groups[0];
    assert_eq!(group["name"], json!("workers"));
    assert_eq!(group["codes"], json!([5, 6]));
    assert_eq!(num(group, "frames"), FRAMES as u64);
    let list = group["members"].as_array().expect("members").clone();
    assert_eq!(list.len(), 2);
    let given: u64 = list.iter().map(|member| num(member, "frames")).sum();
    assert_eq!(given, FRAMES as u64, "per member: {list:?}");
    assert!(list.iter().all(|member| member["codes"] == json!([5, 6])));
    let varz = get_async(web, "/varz").await.json();
    assert_eq!(varz["groups"], subsz["groups"]);
    assert_eq!(num(&varz, "group_moved_frames"), 0);
    assert_eq!(num(&varz, "group_cut_frames"), 0);
    let metrics = get_async(web, "/metrics").await;
    let metrics = parse_metrics(&metrics.body);
    assert_eq!(
        metrics.get("tej_hub_group_frames_total{group=\"workers\"}"),
        Some(&(FRAMES as f64))
    );
    assert_eq!(
        metrics.get("tej_hub_group_members{group=\"workers\"}"),
        Some(&2.0)
    );
    assert_eq!(metrics.get("tej_hub_group_cut_frames_total"), Some(&0.0));
    stop_hub(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_takes_members_out_of_groups_and_codes_they_may_no_longer_have() {
    let dir = std::env::temp_dir().join(format!("tej-hub-groups-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let config = dir.join("hub.toml");
    let users = |subscribe: &str, groups: &str| {
        format!(
            "[[users]]\nname = \"worker\"\npassword = \"{}\"\nsubscribe = \"{subscribe}\"\ngroups = {groups}\n",
            cheap_hash("pw")
        )
    };
    std::fs::write(&config, users("5-9", r#"["workers", "scan-*"]"#)).expect("write the config");
    let mut hub = hub_common::BinHub::start(&["--config", config.to_str().expect("a UTF-8 path")]);
    let mut worker = connect(hub.addr).await;
    assert_eq!(
        control(&mut worker, "AUTH worker pw").await,
        "OK AUTH worker"
    );
    join(&mut worker, "5-6", "workers").await;
    join(&mut worker, "5", "scan-eu").await;

    // scan-* goes, and code 6.
    std::fs::write(&config, users("5", r#"["workers"]"#)).expect("rewrite the config");
    hub.signal(rustix::process::Signal::HUP);
    let narrowed = json!([{"name": "workers", "codes": [5]}]);
    within(PATIENCE, "the worker's narrowed groups", async {
        while info(&mut worker).await["groups"] != narrowed {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(
        control(&mut worker, "SUB 5 group=scan-eu").await,
        "ERR permission denied: group scan-eu"
    );
    let exit = tokio::task::block_in_place(|| {
        hub.signal(rustix::process::Signal::TERM);
        hub.wait_exit(Duration::from_secs(5))
    });
    assert_eq!(exit.and_then(|status| status.code()), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}
