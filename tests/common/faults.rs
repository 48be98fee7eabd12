//! A cluster under real network faults: `nats-server` and two `tej-hub serve --cluster`
//! processes (`a`, `b`), each in a network namespace of its own, and faults made on the links
//! between them.
//!
//! ```text
//!   test process (root namespace: no address, no route added)
//!     │ sockets made inside ns a / ns b reach each hub on that namespace's loopback
//!     ▼
//!   ┌─ ns a ──────────┐  link_a (veth)   ┌─ ns nats ───────┐  link_b (veth)  ┌─ ns b ──────────┐
//!   │ hub a 127.0.0.1 │ 10.77.1.1  .1.2  │ nats-server     │ .2.2  10.77.2.1 │ hub b 127.0.0.1 │
//!   │  [relay on lo]──┼──────────────────┤ 0.0.0.0:4222    ├─────────────────┤                 │
//!   └─────────────────┘                  └─────────────────┘                 └─────────────────┘
//! ```
//!
//! A hub's only route to NATS is its link; the test's own connections to a hub stay on that
//! hub's loopback, so a fault on the link leaves them alone. A link's left end is the hub, its
//! right end NATS: [`Dir::LeftToRight`] is hub → NATS. Faults ([`Link`]): silent drops (all, or a
//! random share, either or both ways) and `tbf` rate limits. For delay (this kernel has no
//! `netem`), [`Topology::start`] with `relay_on_a` puts a [`DelayRelay`] in ns a between hub a
//! and its link: a userspace TCP relay whose [`Shape`] adds delay, jitter and random stalls
//! while set; its upstream socket crosses link_a, so link faults still apply below it.
//!
//! Included by a test file beside `common/hub.rs` (as `hub_common`) and `common/nats.rs` (as
//! `nats`): `#[path = "common/faults.rs"] mod faults;`. Everything is torn down when the
//! [`Topology`] drops: processes killed, namespaces (and with them links and qdiscs) deleted.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use tej_hub::Client;

use super::hub_common::{self, BinHub, Conn, PATIENCE};
pub use super::nats::netns::{Dir, Link, Netns};
use super::nats::{self, netns, NatsServer};

/// A `tej-hub serve --cluster` process in a namespace; prints its last log lines if the test
/// fails.
pub struct FaultHub {
    /// Its `--hub-name`.
    pub name: String,
    /// The process (its address is on the namespace's loopback).
    pub bin: BinHub,
    ns: String,
}

impl FaultHub {
    /// `tej-hub serve --cluster URL --hub-name NAME <extra>` in namespace `ns`.
    pub fn start(ns: &str, url: &str, name: &str, extra: &[&str]) -> FaultHub {
        let mut flags = vec!["--cluster", url, "--hub-name", name];
        flags.extend_from_slice(extra);
        FaultHub {
            name: name.to_owned(),
            bin: BinHub::start_in_netns(ns, &flags),
            ns: ns.to_owned(),
        }
    }

    /// The namespace the hub runs in.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// How the test reaches the hub (cloneable, for tasks).
    pub fn reach(&self) -> Reach {
        Reach {
            ns: self.ns.clone(),
            addr: self.bin.addr,
        }
    }

    /// A framed client of the hub, from inside its namespace.
    pub async fn connect(&self) -> Conn {
        self.reach().connect().await
    }

    /// `INFO` on a fresh connection.
    pub async fn info(&self) -> Value {
        self.reach().info().await
    }

    /// `INFO`'s `cluster` object.
    pub async fn cluster(&self) -> Value {
        self.info().await["cluster"].clone()
    }

    /// Polls `INFO` until `pred` holds for its `cluster` object, within `limit`; `Err` with the
    /// last object otherwise.
    pub async fn wait_cluster(
        &self,
        limit: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value, Value> {
        let deadline = Instant::now() + limit;
        loop {
            let cluster = self.cluster().await;
            if pred(&cluster) {
                return Ok(cluster);
            }
            if Instant::now() >= deadline {
                return Err(cluster);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then waits up to `limit` for the exit.
    pub fn terminate(&mut self, limit: Duration) -> Option<ExitStatus> {
        self.bin.signal(rustix::process::Signal::TERM);
        self.bin.wait_exit(limit)
    }

    /// The hub's log lines that say something panicked.
    pub fn panics(&self) -> Vec<String> {
        self.bin
            .logs()
            .into_iter()
            .filter(|line| line.contains("panicked"))
            .collect()
    }
}

impl Drop for FaultHub {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = self.bin.logs();
            eprintln!("--- hub {} (ns {}), last log lines:", self.name, self.ns);
            for line in &logs[logs.len().saturating_sub(40)..] {
                eprintln!("{line}");
            }
        }
    }
}

/// A hub's address and namespace: what a task needs to connect to it.
#[derive(Clone, Debug)]
pub struct Reach {
    /// The hub's namespace.
    pub ns: String,
    /// The hub's address on that namespace's loopback.
    pub addr: SocketAddr,
}

impl Reach {
    /// A raw socket to the hub, made inside its namespace.
    pub async fn connect_raw(&self) -> tokio::net::TcpStream {
        let (ns, addr) = (self.ns.clone(), self.addr);
        let stream = tokio::task::spawn_blocking(move || {
            netns::run_in(&ns, || TcpStream::connect_timeout(&addr, PATIENCE))
        })
        .await
        .expect("the connecting thread")
        .unwrap_or_else(|error| panic!("connect to hub at {addr} in its namespace: {error}"));
        stream.set_nodelay(true).expect("TCP_NODELAY");
        stream.set_nonblocking(true).expect("non-blocking socket");
        tokio::net::TcpStream::from_std(stream).expect("a tokio socket")
    }

    /// A framed client of the hub (as `hub_common::connect`, from inside its namespace).
    pub async fn connect(&self) -> Conn {
        let stream = self.connect_raw().await;
        Client::from_stream(stream, self.addr).into_framed()
    }

    /// `INFO` on a fresh connection.
    pub async fn info(&self) -> Value {
        let mut conn = self.connect().await;
        hub_common::info(&mut conn).await
    }
}

/// How a [`DelayRelay`] holds each chunk it relays.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Added to every chunk, each way.
    pub delay: Duration,
    /// The delay varies by up to this much either side (order is kept: a chunk never leaves
    /// before the one read before it).
    pub jitter: Duration,
    /// The share of chunks (0.0–1.0) held back a further `stall`: what a lost segment's
    /// retransmission looks like to the application.
    pub stall_share: f64,
    /// How long a stalled chunk is held on top of its delay.
    pub stall: Duration,
}

/// How many chunks (of at most [`RELAY_CHUNK`] bytes) each direction of a relayed connection
/// holds at most: with 200 ms of delay, 1 MiB in flight carries ~5 MB/s, about what the fault
/// scenarios publish, so a delayed link is also a congested one.
const RELAY_QUEUE: usize = 64;
/// The largest chunk a relay reads at once.
const RELAY_CHUNK: usize = 16 * 1024;

/// A TCP relay on a namespace's loopback to an upstream address, reached from that namespace;
/// with a [`Shape`] set, every chunk each way is delayed. Bounded: each direction holds at most
/// [`RELAY_QUEUE`] chunks, then stops reading (the sender's TCP window closes, as on a real
/// path). Stops and closes every connection when dropped.
pub struct DelayRelay {
    /// Where it listens (on the namespace's loopback).
    pub addr: SocketAddr,
    shape: Arc<Mutex<Option<Shape>>>,
    stop: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<JoinHandle<()>>,
}

impl DelayRelay {
    /// A relay listening on `127.0.0.1:0` in `ns` to `upstream` (also reached from `ns`).
    pub fn start(ns: &str, upstream: SocketAddr) -> DelayRelay {
        let listener = netns::run_in(ns, || TcpListener::bind("127.0.0.1:0"))
            .unwrap_or_else(|error| panic!("relay bind in {ns}: {error}"));
        let addr = listener.local_addr().expect("relay address");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let shape = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let (ns, shape, stop, streams) =
                (ns.to_owned(), shape.clone(), stop.clone(), streams.clone());
            std::thread::spawn(move || {
                netns::enter(&ns);
                accept_loop(listener, upstream, shape, stop, streams);
            })
        };
        DelayRelay {
            addr,
            shape,
            stop,
            streams,
            accept: Some(accept),
        }
    }

    /// Sets (or with `None`, clears) the shape; chunks already held keep their time.
    pub fn set_shape(&self, shape: Option<Shape>) {
        *self.shape.lock().expect("relay shape lock") = shape;
    }
}

impl Drop for DelayRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for stream in self.streams.lock().expect("relay streams lock").iter() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    shape: Arc<Mutex<Option<Shape>>>,
    stop: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
) {
    let mut seed = u64::from(std::process::id()) << 32 | 0x9e37_79b9;
    while !stop.load(Ordering::Relaxed) {
        let down = match listener.accept() {
            Ok((down, _)) => down,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(_) => continue,
        };
        // The client sees a refused upstream as a closed connection, as it would without us.
        let Ok(up) = TcpStream::connect_timeout(&upstream, Duration::from_secs(5)) else {
            continue;
        };
        let _ = down.set_nonblocking(false);
        let _ = down.set_nodelay(true);
        let _ = up.set_nodelay(true);
        let clones = (down.try_clone(), up.try_clone());
        let (Ok(down2), Ok(up2)) = clones else {
            continue;
        };
        {
            let mut held = streams.lock().expect("relay streams lock");
            for stream in [&down, &up] {
                if let Ok(clone) = stream.try_clone() {
                    held.push(clone);
                }
            }
        }
        seed = seed.wrapping_add(0x2545_f491_4f6c_dd1d);
        pump(down, up2, shape.clone(), seed);
        pump(up, down2, shape.clone(), seed ^ 0xdead_beef);
    }
}

/// Relays `from` → `to` on two threads: a reader stamping each chunk with the time it may leave,
/// and a writer sending it then. Ends (shutting `to`'s write side) when `from` ends.
fn pump(mut from: TcpStream, mut to: TcpStream, shape: Arc<Mutex<Option<Shape>>>, seed: u64) {
    let (tx, rx) = sync_channel::<(Instant, Vec<u8>)>(RELAY_QUEUE);
    std::thread::spawn(move || {
        for (due, chunk) in rx {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    std::thread::spawn(move || {
        let mut random = seed | 1;
        let mut last_due = Instant::now();
        loop {
            let mut chunk = vec![0u8; RELAY_CHUNK];
            let n = match from.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            chunk.truncate(n);
            let now = Instant::now();
            let current = *shape.lock().expect("relay shape lock");
            let due = match current {
                None => now,
                Some(shape) => {
                    let jitter = shape.jitter.as_secs_f64() * (2.0 * unit(&mut random) - 1.0);
                    let mut delay = (shape.delay.as_secs_f64() + jitter).max(0.0);
                    if unit(&mut random) < shape.stall_share {
                        delay += shape.stall.as_secs_f64();
                    }
                    now + Duration::from_secs_f64(delay)
                }
            };
            last_due = last_due.max(due);
            if tx.send((last_due, chunk)).is_err() {
                break;
            }
        }
    });
}

/// A uniform number in `[0, 1)` from a xorshift64 state.
fn unit(state: &mut u64) -> f64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    (*state >> 11) as f64 / (1u64 << 53) as f64
}

/// Hubs `a` and `b` and a `nats-server`, each in a namespace of its own, hub a's link and hub
/// b's link to NATS separate (see the module doc). Fields drop in order: hubs, relay, NATS, then
/// the namespaces (with their links).
pub struct Topology {
    /// Hub a (the publishers' hub in the fault scenarios).
    pub a: FaultHub,
    /// Hub b.
    pub b: FaultHub,
    /// The relay between hub a and link_a, if asked for.
    pub relay: Option<DelayRelay>,
    /// The server, in ns nats.
    pub nats: NatsServer,
    /// Hub a (left) ↔ NATS (right).
    pub link_a: Link,
    /// Hub b (left) ↔ NATS (right).
    pub link_b: Link,
    ns_a: Netns,
    ns_b: Netns,
    ns_nats: Netns,
}

/// The NATS client port in ns nats.
const NATS_PORT: u16 = 4222;

impl Topology {
    /// The namespaces, links, `nats-server`, and hubs a and b (with `hub_flags` beyond
    /// `--cluster` and `--hub-name`), once each hub sees the other. With `relay_on_a`, hub a
    /// reaches NATS through a [`DelayRelay`] (no shape set yet). `None` (after `SKIPPED`) where
    /// namespaces or `nats-server` are missing outside CI.
    pub async fn start(test: &str, relay_on_a: bool, hub_flags: &[&str]) -> Option<Topology> {
        if !netns::available(test) || !nats::available(test) {
            return None;
        }
        netns::sweep_stale();
        let tag = netns::unique_tag();
        let ns_nats = Netns::create(&format!("{tag}nats"));
        let ns_a = Netns::create(&format!("{tag}a"));
        let ns_b = Netns::create(&format!("{tag}b"));
        let link_a = Link::new(&ns_a, "nats0", &ns_nats, "huba", 1);
        let link_b = Link::new(&ns_b, "nats0", &ns_nats, "hubb", 2);
        let nats = NatsServer::start_in(ns_nats.name());
        let nats_a = SocketAddr::from((link_a.right.addr, NATS_PORT));
        let nats_b = SocketAddr::from((link_b.right.addr, NATS_PORT));
        let relay = relay_on_a.then(|| DelayRelay::start(ns_a.name(), nats_a));
        let url_a = format!(
            "nats://{}",
            relay.as_ref().map_or(nats_a, |relay| relay.addr)
        );
        let url_b = format!("nats://{nats_b}");
        let a = FaultHub::start(ns_a.name(), &url_a, "a", hub_flags);
        let b = FaultHub::start(ns_b.name(), &url_b, "b", hub_flags);
        let topology = Topology {
            a,
            b,
            relay,
            nats,
            link_a,
            link_b,
            ns_a,
            ns_b,
            ns_nats,
        };
        for hub in [&topology.a, &topology.b] {
            if let Err(cluster) = hub
                .wait_cluster(Duration::from_secs(10), |c| {
                    c["connected"] == true && c["remote_hubs"] == 1
                })
                .await
            {
                panic!("hub {} did not see the other hub: {cluster}", hub.name);
            }
        }
        Some(topology)
    }

    /// The namespace names (a, b, nats), for `ip netns exec` by hand while debugging.
    pub fn namespaces(&self) -> [&str; 3] {
        [self.ns_a.name(), self.ns_b.name(), self.ns_nats.name()]
    }
}
