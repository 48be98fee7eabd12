//! Fan-out through a router actor's mailbox versus a shared `DashMap` read by the publisher: the
//! measurement behind the hub's choice (docs/architecture.md). Both variants deliver the same
//! `Bytes` to the same subscriber actors spread over worker arbiters; only the lookup differs.
//!
//! `cargo bench --bench fanout` prints frames delivered per second (summed over subscribers).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, Addr, Arbiter, Context, Handler, Message, Recipient};
use bytes::Bytes;
use dashmap::DashMap;

/// Frames published per run under `cargo bench`; bounded further by `TIME_CAP`.
const FRAMES: u64 = 1_000_000;
/// Frames per run as a smoke test (`cargo test --benches`, where cargo passes no `--bench`).
const SMOKE_FRAMES: u64 = 10_000;
const TIME_CAP: Duration = Duration::from_secs(20);

#[derive(Message, Clone)]
#[rtype(result = "()")]
struct Deliver(Bytes);

/// Counts what it receives, like a session pushing into its outbox.
struct Subscriber {
    delivered: Arc<AtomicU64>,
}

impl Actor for Subscriber {
    type Context = Context<Self>;
}

impl Handler<Deliver> for Subscriber {
    type Result = ();
    fn handle(&mut self, msg: Deliver, _: &mut Context<Self>) {
        std::hint::black_box(msg.0);
        self.delivered.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Publish(u8, Bytes);

/// The router variant: one actor owns the table.
struct Router {
    table: Vec<Vec<Recipient<Deliver>>>,
}

impl Actor for Router {
    type Context = Context<Self>;
}

impl Handler<Publish> for Router {
    type Result = ();
    fn handle(&mut self, msg: Publish, _: &mut Context<Self>) {
        for target in &self.table[usize::from(msg.0)] {
            target.do_send(Deliver(msg.1.clone()));
        }
    }
}

fn start_subscribers(
    workers: &[Arbiter],
    n: usize,
    delivered: &Arc<AtomicU64>,
) -> Vec<Recipient<Deliver>> {
    (0..n)
        .map(|i| {
            let delivered = delivered.clone();
            let (tx, rx) = std::sync::mpsc::channel();
            workers[i % workers.len()].spawn(async move {
                let addr: Addr<Subscriber> = Subscriber { delivered }.start();
                let _ = tx.send(addr.recipient());
            });
            rx.recv().expect("subscriber started")
        })
        .collect()
}

async fn wait_for(delivered: &AtomicU64, expected: u64, started: Instant) -> u64 {
    while delivered.load(Ordering::Relaxed) < expected && started.elapsed() < TIME_CAP {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    delivered.load(Ordering::Relaxed)
}

fn report(variant: &str, subscribers: usize, delivered: u64, elapsed: Duration) {
    let rate = delivered as f64 / elapsed.as_secs_f64();
    println!(
        "{variant:<12} 1→{subscribers:<3} {delivered:>9} frames in {:>7.3} s = {:>12.0} frames/s",
        elapsed.as_secs_f64(),
        rate
    );
    println!(
        "{{\"variant\":\"{variant}\",\"subscribers\":{subscribers},\"delivered\":{delivered},\"seconds\":{:.4},\"frames_per_s\":{rate:.0}}}",
        elapsed.as_secs_f64()
    );
}

fn main() {
    let frames = if std::env::args().any(|arg| arg == "--bench") {
        FRAMES
    } else {
        SMOKE_FRAMES
    };
    let payload = Bytes::from(vec![7u8; 128]);
    actix_rt::System::new().block_on(async move {
        let workers: Vec<Arbiter> = (0..2).map(|_| Arbiter::new()).collect();
        for subscribers in [1usize, 10] {
            let expected = frames * subscribers as u64;

            // Router hop: publisher → router mailbox → subscribers.
            let delivered = Arc::new(AtomicU64::new(0));
            let targets = start_subscribers(&workers, subscribers, &delivered);
            let mut table = vec![Vec::new(); 128];
            table[5] = targets;
            let router = Router { table }.start();
            let started = Instant::now();
            let publisher = {
                let (router, payload) = (router.clone(), payload.clone());
                move || {
                    for _ in 0..frames {
                        router.do_send(Publish(5, payload.clone()));
                    }
                }
            };
            workers[0].spawn(async move { publisher() });
            let got = wait_for(&delivered, expected, started).await;
            report("router", subscribers, got, started.elapsed());

            // Shared table: publisher reads the DashMap and delivers directly.
            let delivered = Arc::new(AtomicU64::new(0));
            let table: Arc<DashMap<u8, Vec<Recipient<Deliver>>>> = Arc::new(DashMap::new());
            table.insert(5, start_subscribers(&workers, subscribers, &delivered));
            let started = Instant::now();
            let (shared, payload2) = (table.clone(), payload.clone());
            workers[0].spawn(async move {
                for _ in 0..frames {
                    if let Some(targets) = shared.get(&5) {
                        for target in targets.iter() {
                            target.do_send(Deliver(payload2.clone()));
                        }
                    }
                }
            });
            let got = wait_for(&delivered, expected, started).await;
            report("shared-map", subscribers, got, started.elapsed());
        }
        for worker in &workers {
            worker.stop();
        }
    });
}
