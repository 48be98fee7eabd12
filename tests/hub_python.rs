//! tej-hub with the Python reference implementation, `tej-protoc==0.2.4`, as its peers: a Python
//! subscriber (driven by `tests/interop/peer.py`, which sends `SUB 5` as an ordinary status-127
//! frame) receives the files and message of a Rust publisher and of a Python publisher, a Rust
//! subscriber receives the Python publisher's frame, and the hub answers the reference's pings.
//! Every file and message is compared by SHA-256. Without `python3 -m pip install -r
//! tests/interop/requirements.txt` these tests fail and say so: they never skip.

#[path = "common/hub.rs"]
mod hub_common;
#[path = "common/python.rs"]
mod python;

use bytes::Bytes;
use serde_json::json;
use tej_hub::Frame;

use hub_common::{
    connect, pattern, recv, send, start_hub, status, stop_hub, subscribe, test_config,
};
use python::{digest, digest_of_record, PyPeer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_subscriber_gets_rust_and_python_publications() {
    let hub = start_hub(test_config());
    let port = hub.local_addr().port();

    // The Python subscriber: SUB 5, then the OK and two publications.
    let mut python_sub = PyPeer::commanding(port, &["SUB 5"], 3);
    let ok = python_sub.next_event("received").await;
    assert_eq!(ok["status"], json!(127));
    assert_eq!(ok["message_text"], json!("OK SUB 5"));

    let mut rust_sub = connect(hub.local_addr()).await;
    subscribe(&mut rust_sub, "5", "5").await;

    // From a Rust publisher.
    let mut publisher = connect(hub.local_addr()).await;
    let from_rust = Frame::builder(status(5))
        .file("one.txt", pattern(10, 1))
        .file("two.bin", pattern(70_000, 2))
        .file("empty", Bytes::new())
        .message(pattern(1000, 3))
        .build();
    send(&mut publisher, from_rust.clone()).await;
    let received = python_sub.next_event("received").await;
    assert_eq!(digest_of_record(&received), digest(&from_rust));
    assert_eq!(recv(&mut rust_sub).await, from_rust);

    // From a Python publisher.
    let spec = json!([{"status": 5, "files": [
        {"name": "py.bin", "size": 300_000, "seed": 7},
        {"name": "b.txt", "size": 5, "seed": 8}],
        "message": {"text": "from python"}}])
    .to_string();
    let mut python_pub = PyPeer::client(port, &["--spec", &spec, "--wait", "1"]);
    let sent = python_pub.next_event("sent").await;
    let received = python_sub.next_event("received").await;
    assert_eq!(digest_of_record(&received), digest_of_record(&sent));
    assert_eq!(received["message_text"], json!("from python"));
    assert_eq!(digest(&recv(&mut rust_sub).await), digest_of_record(&sent));

    python_pub.succeeds().await;
    python_sub.succeeds().await;
    stop_hub(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_answers_python_pings() {
    let hub = start_hub(test_config());
    let mut python = PyPeer::client(
        hub.local_addr().port(),
        &[
            "--spec",
            "[]",
            "--ping-interval",
            "0.2",
            "--expect",
            "2",
            "--wait",
            "10",
        ],
    );
    for _ in 0..2 {
        let ping = python.next_event("ping").await;
        assert_eq!(ping["status"], json!(2));
        assert_eq!(ping["version"], json!(1));
        assert_eq!(ping["files"], json!([]));
        assert_eq!(ping["message_len"], json!(0));
    }
    python.succeeds().await;
    stop_hub(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_subscriber_gets_a_64_mib_file_relayed_by_cut_through() {
    const SIZE: usize = 64 * 1024 * 1024;
    let hub = start_hub(test_config());
    let port = hub.local_addr().port();
    let spec = json!([{"status": 127, "files": [], "message": {"text": "SUB 6"}}]).to_string();
    let mut python_sub = PyPeer::client(
        port,
        &[
            "--spec",
            &spec,
            "--expect",
            "2",
            "--ignore-pings",
            "--wait",
            "60",
        ],
    );
    let ok = python_sub.next_event("received").await;
    assert_eq!(ok["message_text"], json!("OK SUB 6"));

    // 64 times the cut-through size: the hub forwards it while it arrives.
    let frame = Frame::builder(status(6))
        .file("big.bin", pattern(SIZE, 64))
        .message("sixty-four")
        .build();
    let mut publisher = hub_common::connect_raw(hub.local_addr()).await;
    tokio::io::AsyncWriteExt::write_all(&mut publisher, &hub_common::encode(&frame))
        .await
        .expect("publish the frame");
    let received = python_sub.next_event("received").await;
    assert_eq!(digest_of_record(&received), digest(&frame));
    python_sub.succeeds().await;
    stop_hub(hub).await;
}
