#[path = "common/hub.rs"]
mod hub_common;
use hub_common::*;
use std::time::Duration;
use tej_hub::config::HubConfig;
use tej_hub::Frame;
use tokio::net::TcpSocket;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_counts() {
    let hub = start_hub(HubConfig {
        max_frame_bytes: 16 * MIB as u64,
        max_pending_bytes: 16 * MIB as u64,
        ..test_config()
    });
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let s = socket.connect(hub.local_addr()).await.unwrap();
    let mut sub = tokio_util::codec::Framed::new(s, tej_hub::TejCodec::default());
    subscribe(&mut sub, "5", "5").await;
    let mut publisher = connect(hub.local_addr()).await;
    let frames: Vec<Frame> = (0..2)
        .map(|i| {
            Frame::builder(status(5))
                .message(pattern(10 * MIB, i))
                .build()
        })
        .collect();
    for f in &frames {
        send(&mut publisher, f.clone()).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (i, f) in frames.iter().enumerate() {
        let got = recv(&mut sub).await;
        assert!(
            got == *f,
            "frame {i}: got {} {:?}",
            got.status,
            String::from_utf8_lossy(&got.message[..got.message.len().min(40)])
        );
    }
}
