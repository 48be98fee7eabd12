//! The cluster under real network faults (issue 19).

#[path = "common/faults.rs"]
mod faults;
#[path = "common/hub.rs"]
mod hub_common;
#[path = "common/nats.rs"]
mod nats;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use faults::{DelayRelay, Dir, Link, Netns, Shape};
use nats::netns;

/// The harness itself: a drop on a link silences a TCP connection across it (both ways, and one
/// way), heal brings the held bytes through, a rate limit slows it, and the relay delays.
#[test]
fn harness_faults_act_on_a_link() {
    if !netns::available("harness_faults_act_on_a_link") {
        return;
    }
    let tag = netns::unique_tag();
    let left = Netns::create(&format!("{tag}l"));
    let right = Netns::create(&format!("{tag}r"));
    let link = Link::new(&left, "r0", &right, "l0", 9);
    let server = right
        .tcp_listen(SocketAddr::from((link.right.addr, 7000)))
        .expect("listen in the right namespace");
    let target = SocketAddr::from((link.right.addr, 7000));
    let mut client = left
        .tcp_connect(target, Duration::from_secs(5))
        .expect("connect across the link");
    let (mut peer, _) = server.accept().expect("accept");
    peer.set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut byte = [0u8; 1];

    client.write_all(b"1").unwrap();
    peer.read_exact(&mut byte)
        .expect("a byte across the healthy link");

    link.drop_all(Dir::LeftToRight);
    client.write_all(b"2").unwrap();
    assert!(
        peer.read_exact(&mut byte).is_err(),
        "a byte crossed a dropped link"
    );
    link.heal();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    peer.read_exact(&mut byte)
        .expect("the held byte after the heal (a retransmission)");
    assert_eq!(&byte, b"2");

    // A one-way drop the other way leaves this way open.
    link.drop_all(Dir::RightToLeft);
    client.write_all(b"3").unwrap();
    peer.read_exact(&mut byte)
        .expect("a byte the other way's drop does not stop");
    link.heal();

    // 256 KiB at 128 KiB/s takes about 2 s.
    link.rate_limit(Dir::LeftToRight, 128 * 1024);
    let started = Instant::now();
    let writer = std::thread::spawn(move || {
        client.write_all(&vec![7u8; 256 * 1024]).unwrap();
        client
    });
    let mut got = vec![0u8; 256 * 1024];
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    peer.read_exact(&mut got).expect("the rate-limited bytes");
    let took = started.elapsed();
    let _client = writer.join().unwrap();
    link.heal();
    assert!(
        took > Duration::from_millis(1200),
        "256 KiB at 128 KiB/s took {took:?}"
    );

    // The relay in the left namespace, to the listener across the link.
    let relay = DelayRelay::start(left.name(), target);
    relay.set_shape(Some(Shape {
        delay: Duration::from_millis(200),
        jitter: Duration::from_millis(50),
        stall_share: 0.0,
        stall: Duration::ZERO,
    }));
    let mut via = left
        .tcp_connect(relay.addr, Duration::from_secs(5))
        .expect("connect to the relay");
    let (mut relayed, _) = server.accept().expect("accept the relayed connection");
    let started = Instant::now();
    via.write_all(b"4").unwrap();
    relayed
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    relayed.read_exact(&mut byte).expect("a relayed byte");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(150),
        "the relay delayed a byte only {took:?}"
    );
    let _ = TcpStream::shutdown(&via, std::net::Shutdown::Both);
}
