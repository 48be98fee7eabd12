//! End-to-end throughput on loopback, in one process run.
//!
//! Workloads (all on `127.0.0.1`, port 0, each bounded in count and in time):
//! - `raw_tcp`: the yardstick. One task writes a 1 MiB buffer over plain TCP again and again,
//!   another reads into a 1 MiB buffer and discards.
//! - `file_16mib`: `tej_hub::Client` → `tej_hub::Server`, frames each carrying one 16 MiB file,
//!   queued with `Sender::feed`, then `flush`; timed until the server's handler has counted every
//!   byte. Compared with `raw_tcp`.
//! - `file_16mib_held`: the same, but the server's handler keeps each frame until the next one
//!   has arrived, as a relay whose subscribers still hold it would.
//! - `msg_128b`: the same pair, frames with a 128-byte message fed from one task.
//! - `python`: the reference implementation (tej-protoc 0.2.4) on both ends, via
//!   `tests/interop/bench_reference.py`; skipped with a note when the script, Python or
//!   tej-protoc is missing. Rust ÷ Python ratios are printed when both sides ran.
//!
//! By default the receiving side (TCP reader, TEJ server) runs on its own single-threaded tokio
//! runtime and thread, and the sending side (TCP writer, TEJ client) on another: two threads, like
//! two processes (the Python reference also runs its two ends in two processes). Loopback TCP
//! on this 2-core machine swings by 3x from run to run when both sides share one multi-threaded
//! runtime, depending on where the tasks land; `--shared` measures that way anyway (one runtime,
//! 2 workers).
//!
//! `cargo bench --bench throughput` runs everything, three rounds of each Rust workload,
//! interleaved, and reports the median round. `cargo bench --bench throughput -- raw_tcp msg`
//! runs only the workloads named, or whose names contain a word given. Without `--bench` (as
//! under `cargo test --benches`) a small smoke run of the Rust workloads is made instead.
//!
//! Each result is printed as a table row and as one JSON line starting with `{"bench":`.
//! MB and GB are 10^6 and 10^9 bytes; byte counts are payload (file data and message).

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tej_hub::{Client, Frame, Handler, Sender, Server, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::{Handle, Runtime};
use tokio::sync::{oneshot, Notify};

const MIB: usize = 1024 * 1024;
const FILE_LEN: usize = 16 * MIB;
const MESSAGE_LEN: usize = 128;
/// Longest wait for the server to count what was sent, once sending is over.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest run of the Python reference script.
const PYTHON_TIMEOUT: Duration = Duration::from_secs(300);
/// Target: Rust client → Rust server 16 MiB files at this fraction of raw TCP, or more.
const TARGET_FILE_VS_RAW: f64 = 0.80;
/// Target: Rust ÷ Python on 128-byte message frames, or more.
const TARGET_MSG_VS_PYTHON: f64 = 20.0;

/// How much each workload does.
#[derive(Clone, Copy, Debug)]
struct Scale {
    raw_bytes: u64,
    raw_time: Duration,
    files: u64,
    files_time: Duration,
    messages: u64,
    messages_time: Duration,
    python: bool,
    rounds: usize,
}

impl Scale {
    const FULL: Scale = Scale {
        raw_bytes: 2 * 1024 * MIB as u64,
        raw_time: Duration::from_secs(5),
        files: 64,
        files_time: Duration::from_secs(10),
        messages: 2_000_000,
        messages_time: Duration::from_secs(5),
        python: true,
        rounds: 3,
    };

    const SMOKE: Scale = Scale {
        raw_bytes: 64 * MIB as u64,
        raw_time: Duration::from_secs(1),
        files: 2,
        files_time: Duration::from_secs(1),
        messages: 10_000,
        messages_time: Duration::from_secs(1),
        python: false,
        rounds: 1,
    };
}

/// One measured result.
#[derive(Clone, Debug)]
struct Outcome {
    workload: &'static str,
    implementation: &'static str,
    frames: u64,
    bytes: u64,
    seconds: f64,
}

impl Outcome {
    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds
    }

    fn frames_per_s(&self) -> f64 {
        self.frames as f64 / self.seconds
    }
}

/// What the server side has counted, and a wake-up once it reaches `target`.
#[derive(Debug)]
struct Tally {
    frames: AtomicU64,
    bytes: AtomicU64,
    target: AtomicU64,
    reached: Notify,
}

impl Tally {
    fn new() -> Arc<Tally> {
        Arc::new(Tally {
            frames: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            target: AtomicU64::new(u64::MAX),
            reached: Notify::new(),
        })
    }

    /// Waits until `frames` frames have been counted; returns when that was seen.
    async fn wait_for(&self, frames: u64) -> io::Result<Instant> {
        let reached = self.reached.notified();
        // SeqCst pairs with `Counting::received`: either it sees the target or we see its count.
        self.target.store(frames, Ordering::SeqCst);
        if self.frames.load(Ordering::SeqCst) < frames {
            tokio::time::timeout(DRAIN_TIMEOUT, reached)
                .await
                .map_err(|_| {
                    io::Error::other(format!(
                        "server counted {} of {frames} frames within {DRAIN_TIMEOUT:?}",
                        self.frames.load(Ordering::SeqCst)
                    ))
                })?;
        }
        Ok(Instant::now())
    }
}

/// The server's handler: counts frames and payload bytes, and drops each frame, or with
/// `Some(_)` in `held`, keeps it until the next one has arrived (as a relay whose subscribers
/// still hold the previous frame would).
struct Counting {
    tally: Arc<Tally>,
    held: Option<Option<Frame>>,
}

impl Handler for Counting {
    async fn received(&mut self, frame: Frame, _: &Sender) {
        let files: u64 = frame.files.iter().map(|f| f.data.len() as u64).sum();
        let tally = &self.tally;
        tally
            .bytes
            .fetch_add(files + frame.message.len() as u64, Ordering::Relaxed);
        let frames = tally.frames.fetch_add(1, Ordering::SeqCst) + 1;
        if frames == tally.target.load(Ordering::SeqCst) {
            tally.reached.notify_one();
        }
        if let Some(held) = &mut self.held {
            *held = Some(frame);
        }
    }
}

/// The client's handler: the server sends nothing, so nothing to do.
struct Ignore;

impl Handler for Ignore {
    async fn received(&mut self, _: Frame, _: &Sender) {}
}

fn status() -> Status {
    Status::new(5).expect("5 is a valid status")
}

/// Spawns `task` on the receiving side's runtime and waits for it to say where it listens.
async fn spawn_receiver<F, T>(
    receiver: &Handle,
    task: impl FnOnce(oneshot::Sender<std::net::SocketAddr>) -> F,
) -> io::Result<(std::net::SocketAddr, tokio::task::JoinHandle<io::Result<T>>)>
where
    F: Future<Output = io::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let (listening, addr) = oneshot::channel();
    let task = receiver.spawn(task(listening));
    match addr.await {
        Ok(addr) => Ok((addr, task)),
        // The task ended before listening: its error says why.
        Err(_) => Err(match task.await {
            Ok(Err(error)) => error,
            Ok(Ok(_)) => io::Error::other("the receiver ended before listening"),
            Err(join) => io::Error::other(join),
        }),
    }
}

/// The yardstick: plain TCP, 1 MiB writes, 1 MiB reads.
async fn raw_tcp(scale: Scale, receiver: Handle) -> io::Result<Outcome> {
    let (addr, reader) = spawn_receiver(&receiver, |listening| async move {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let _ = listening.send(listener.local_addr()?);
        let (mut stream, _) = listener.accept().await?;
        let mut buf = vec![0u8; MIB];
        let mut received = 0u64;
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok((received, Instant::now()));
            }
            received += n as u64;
        }
    })
    .await?;
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let writer = tokio::spawn(async move {
        let chunk = vec![0xa5u8; MIB];
        let start = Instant::now();
        let mut sent = 0u64;
        while sent < scale.raw_bytes && start.elapsed() < scale.raw_time {
            stream.write_all(&chunk).await?;
            sent += chunk.len() as u64;
        }
        stream.shutdown().await?;
        Ok::<_, io::Error>((start, sent))
    });
    let (start, sent) = writer.await.map_err(io::Error::other)??;
    let (received, end) = reader.await.map_err(io::Error::other)??;
    if received != sent {
        return Err(io::Error::other(format!(
            "raw tcp: sent {sent} bytes, received {received}"
        )));
    }
    Ok(Outcome {
        workload: "raw_tcp",
        implementation: "tokio",
        frames: 0,
        bytes: received,
        seconds: (end - start).as_secs_f64(),
    })
}

/// Sends `frame` up to `count` times (stopping after `limit`) from a Rust client to a Rust
/// server on the receiving side, and times it until the server's handler has counted every
/// frame.
async fn rust_pair(
    workload: &'static str,
    frame: Frame,
    count: u64,
    limit: Duration,
    hold: bool,
    receiver: Handle,
) -> io::Result<Outcome> {
    let tally = Tally::new();
    let server_tally = tally.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let (addr, server) = spawn_receiver(&receiver, move |listening| async move {
        let server = Server::bind("127.0.0.1:0").await?;
        let _ = listening.send(server.local_addr()?);
        let factory = move |_peer| Counting {
            tally: server_tally.clone(),
            held: hold.then_some(None),
        };
        server
            .serve_until(factory, async move {
                let _ = stopped.await;
            })
            .await;
        Ok(())
    })
    .await?;

    let connection = Client::connect(addr).await?.spawn(Ignore);
    let sender = connection.sender().clone();
    let feeder = tokio::spawn(async move {
        // Reading the clock costs more than queueing a small frame: check it now and then.
        let check_every = if frame.encoded_len() > MIB as u64 {
            1
        } else {
            1024
        };
        let start = Instant::now();
        let mut sent = 0u64;
        while sent < count {
            sender.feed(frame.clone()).await.map_err(io::Error::other)?;
            sent += 1;
            if sent % check_every == 0 && start.elapsed() >= limit {
                break;
            }
        }
        sender.flush().await.map_err(io::Error::other)?;
        Ok::<_, io::Error>((start, sent, sender))
    });
    let (start, sent, sender) = feeder.await.map_err(io::Error::other)??;
    let end = tally.wait_for(sent).await?;
    let bytes = tally.bytes.load(Ordering::SeqCst);

    sender.close().await;
    connection.join().await;
    let _ = stop.send(());
    server.await.map_err(io::Error::other)??;
    Ok(Outcome {
        workload,
        implementation: "rust",
        frames: sent,
        bytes,
        seconds: (end - start).as_secs_f64(),
    })
}

fn file_frame() -> Frame {
    Frame::builder(status())
        .file("blob.bin", Bytes::from(vec![0xa5; FILE_LEN]))
        .build()
}

async fn rust_files(scale: Scale, receiver: Handle) -> io::Result<Outcome> {
    let (count, limit) = (scale.files, scale.files_time);
    rust_pair("file_16mib", file_frame(), count, limit, false, receiver).await
}

async fn rust_files_held(scale: Scale, receiver: Handle) -> io::Result<Outcome> {
    let (count, limit) = (scale.files, scale.files_time);
    rust_pair(
        "file_16mib_held",
        file_frame(),
        count,
        limit,
        true,
        receiver,
    )
    .await
}

async fn rust_messages(scale: Scale, receiver: Handle) -> io::Result<Outcome> {
    let frame = Frame::message(status(), Bytes::from(vec![b'm'; MESSAGE_LEN]));
    let (count, limit) = (scale.messages, scale.messages_time);
    rust_pair("msg_128b", frame, count, limit, false, receiver).await
}

/// The value of `"key":` in a flat JSON object line, as written by `bench_reference.py`.
fn json_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &line[start..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim().trim_matches('"'))
}

/// Runs the reference implementation's benchmark; `Err` holds why it was skipped.
fn python_reference() -> Result<Vec<Outcome>, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("tests/interop/bench_reference.py");
    if !script.exists() {
        return Err(format!("{} does not exist yet", script.display()));
    }
    let mut child = Command::new("python3")
        .arg(&script)
        .args(["--files", "32", "--messages", "200000", "--seconds", "5"])
        .current_dir(root)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("cannot run python3: {error}"))?;
    let deadline = Instant::now() + PYTHON_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} ran longer than {PYTHON_TIMEOUT:?}",
                    script.display()
                ));
            }
            Err(error) => return Err(format!("waiting for python3: {error}")),
        }
    }
    let output = child
        .wait_with_output()
        .map_err(|error| format!("reading python3 output: {error}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!(
            "{} exited with {}: {}",
            script.display(),
            output.status,
            stderr.trim()
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut outcomes = Vec::new();
    for line in stdout.lines().filter(|l| l.trim_start().starts_with('{')) {
        let number = |key| json_field(line, key).and_then(|v| v.parse::<f64>().ok());
        let (Some(workload), Some(seconds)) = (json_field(line, "workload"), number("seconds"))
        else {
            continue;
        };
        let (workload, bytes) = match workload {
            "file_16mib" => ("file_16mib", number("bytes").unwrap_or(0.0) as u64),
            "msg_128b" => ("msg_128b", 0),
            _ => continue,
        };
        outcomes.push(Outcome {
            workload,
            implementation: "python",
            frames: number("frames").unwrap_or(0.0) as u64,
            bytes: if workload == "msg_128b" {
                number("frames").unwrap_or(0.0) as u64 * MESSAGE_LEN as u64
            } else {
                bytes
            },
            seconds,
        });
    }
    if outcomes.is_empty() {
        return Err(format!(
            "no result lines in the output of {}",
            script.display()
        ));
    }
    Ok(outcomes)
}

fn print_header() {
    println!(
        "{:<16} {:<7} {:<7} {:>10} {:>15} {:>9} {:>11} {:>12}",
        "workload", "impl", "run", "frames", "bytes", "seconds", "MB/s", "frames/s"
    );
}

/// Prints `outcome` as a table row and a JSON line; `run` is the round number or a statistic.
fn report(outcome: &Outcome, run: &str) {
    let frames_per_s = if outcome.frames > 0 {
        format!("{:.0}", outcome.frames_per_s())
    } else {
        "-".to_owned()
    };
    println!(
        "{:<16} {:<7} {:<7} {:>10} {:>15} {:>9.3} {:>11.1} {:>12}",
        outcome.workload,
        outcome.implementation,
        run,
        outcome.frames,
        outcome.bytes,
        outcome.seconds,
        outcome.mb_per_s(),
        frames_per_s
    );
    println!(
        "{{\"bench\":\"throughput\",\"workload\":\"{}\",\"impl\":\"{}\",\"run\":\"{run}\",\
         \"frames\":{},\"bytes\":{},\"seconds\":{:.4},\"mb_per_s\":{:.1},\"gb_per_s\":{:.3},\
         \"frames_per_s\":{:.0}}}",
        outcome.workload,
        outcome.implementation,
        outcome.frames,
        outcome.bytes,
        outcome.seconds,
        outcome.mb_per_s(),
        outcome.mb_per_s() / 1e3,
        outcome.frames_per_s()
    );
}

fn report_ratio(name: &str, value: f64, target: Option<f64>) {
    match target {
        Some(target) => {
            let met = value >= target;
            println!(
                "ratio {name:<28} {value:>9.2}   target >= {target:.2}: {}",
                if met { "met" } else { "NOT met" }
            );
            println!(
                "{{\"bench\":\"throughput\",\"ratio\":\"{name}\",\"value\":{value:.3},\
                 \"target\":{target},\"met\":{met}}}"
            );
        }
        None => {
            println!("ratio {name:<28} {value:>9.2}");
            println!("{{\"bench\":\"throughput\",\"ratio\":\"{name}\",\"value\":{value:.3}}}");
        }
    }
}

/// The run of `workload` by `implementation` with the median rate.
fn median<'a>(runs: &'a [Outcome], workload: &str, implementation: &str) -> Option<&'a Outcome> {
    let mut matching: Vec<&Outcome> = runs
        .iter()
        .filter(|o| o.workload == workload && o.implementation == implementation)
        .collect();
    matching.sort_by(|a, b| a.mb_per_s().total_cmp(&b.mb_per_s()));
    matching.get(matching.len() / 2).copied()
}

/// Where the two sides of a workload run.
enum Runtimes {
    /// Sending side on `send` (driven by the main thread), receiving side on a single-threaded
    /// runtime driven by its own thread until `stop`.
    Split {
        send: Runtime,
        receiver: Handle,
        stop: oneshot::Sender<()>,
        thread: std::thread::JoinHandle<()>,
    },
    /// Both sides on one multi-threaded runtime.
    Shared(Runtime),
}

impl Runtimes {
    fn new(shared: bool) -> io::Result<Runtimes> {
        if shared {
            return Ok(Runtimes::Shared(
                tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()?,
            ));
        }
        let single = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        };
        let receiving = single()?;
        let receiver = receiving.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("receiver".to_owned())
            .spawn(move || {
                receiving.block_on(async move {
                    let _ = stopped.await;
                });
            })?;
        Ok(Runtimes::Split {
            send: single()?,
            receiver,
            stop,
            thread,
        })
    }

    fn describe(&self) -> String {
        match self {
            Runtimes::Split { .. } => {
                "sender and receiver on two single-threaded runtimes, one thread each".to_owned()
            }
            Runtimes::Shared(runtime) => format!(
                "sender and receiver on one multi-threaded runtime, {} workers",
                runtime.metrics().num_workers()
            ),
        }
    }

    fn run(&self, workload: Workload, scale: Scale) -> io::Result<Outcome> {
        match self {
            Runtimes::Split { send, receiver, .. } => {
                send.block_on(workload(scale, receiver.clone()))
            }
            Runtimes::Shared(runtime) => {
                let receiver = runtime.handle().clone();
                // Spawned, so that every side of the workload runs on the worker threads.
                runtime
                    .block_on(runtime.spawn(workload(scale, receiver)))
                    .map_err(io::Error::other)?
            }
        }
    }

    fn shut_down(self) {
        if let Runtimes::Split { stop, thread, .. } = self {
            let _ = stop.send(());
            let _ = thread.join();
        }
    }
}

/// A Rust workload, boxed so that they fit one table.
type Workload = fn(Scale, Handle) -> Pin<Box<dyn Future<Output = io::Result<Outcome>> + Send>>;

const WORKLOADS: [&str; 5] = [
    "raw_tcp",
    "file_16mib",
    "file_16mib_held",
    "msg_128b",
    "python",
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // cargo passes `--bench` to bench targets; `cargo test --benches` does not.
    let scale = if args.iter().any(|a| a == "--bench") {
        Scale::FULL
    } else {
        Scale::SMOKE
    };
    // Flags (`--bench` and the like) are ignored; a word naming a workload selects exactly
    // that one, any other word selects the workloads whose names contain it.
    let filters: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let selected = |name: &str| {
        filters.is_empty()
            || filters
                .iter()
                .any(|f| name == *f || (!WORKLOADS.contains(f) && name.contains(f)))
    };
    if !WORKLOADS.iter().any(|w| selected(w)) {
        eprintln!("no workload matches {filters:?}; workloads: {WORKLOADS:?}");
        std::process::exit(2);
    }

    let runtimes = Runtimes::new(args.iter().any(|a| a == "--shared")).expect("tokio runtimes");
    println!(
        "tej-hub throughput on 127.0.0.1: {} scale, {} round(s), {}",
        if scale.python { "full" } else { "smoke" },
        scale.rounds,
        runtimes.describe()
    );
    print_header();

    let mut runs: Vec<Outcome> = Vec::new();
    let mut failed = false;
    let rust: [(&str, Workload); 4] = [
        ("raw_tcp", |s, r| Box::pin(raw_tcp(s, r))),
        ("file_16mib", |s, r| Box::pin(rust_files(s, r))),
        ("file_16mib_held", |s, r| Box::pin(rust_files_held(s, r))),
        ("msg_128b", |s, r| Box::pin(rust_messages(s, r))),
    ];
    // Rounds interleave the workloads, so that a disturbance (the machine is shared) hits one
    // round of each rather than every round of one.
    for round in 1..=scale.rounds {
        for (name, run) in rust {
            if !selected(name) {
                continue;
            }
            match runtimes.run(run, scale) {
                Ok(outcome) => {
                    report(&outcome, &round.to_string());
                    runs.push(outcome);
                }
                Err(error) => {
                    eprintln!("{name}: failed: {error}");
                    failed = true;
                }
            }
        }
    }
    runtimes.shut_down();

    if selected("python") {
        if !scale.python {
            println!("python reference: skipped in the smoke run (run with `cargo bench`)");
        } else {
            match python_reference() {
                Ok(outcomes) => {
                    for outcome in outcomes {
                        report(&outcome, "1");
                        runs.push(outcome);
                    }
                }
                Err(why) => println!("python reference: skipped: {why}"),
            }
        }
    }

    println!();
    println!("summary: the median round of each workload");
    print_header();
    for workload in WORKLOADS {
        for implementation in ["tokio", "rust", "python"] {
            if let Some(outcome) = median(&runs, workload, implementation) {
                report(outcome, "median");
            }
        }
    }
    if let (Some(file), Some(raw)) = (
        median(&runs, "file_16mib", "rust"),
        median(&runs, "raw_tcp", "tokio"),
    ) {
        report_ratio(
            "file_16mib_rust/raw_tcp",
            file.mb_per_s() / raw.mb_per_s(),
            Some(TARGET_FILE_VS_RAW),
        );
    }
    if let (Some(held), Some(raw)) = (
        median(&runs, "file_16mib_held", "rust"),
        median(&runs, "raw_tcp", "tokio"),
    ) {
        report_ratio(
            "file_16mib_held_rust/raw_tcp",
            held.mb_per_s() / raw.mb_per_s(),
            None,
        );
    }
    if let (Some(rust), Some(python)) = (
        median(&runs, "file_16mib", "rust"),
        median(&runs, "file_16mib", "python"),
    ) {
        report_ratio(
            "file_16mib_rust/python",
            rust.mb_per_s() / python.mb_per_s(),
            None,
        );
    }
    if let (Some(rust), Some(python)) = (
        median(&runs, "msg_128b", "rust"),
        median(&runs, "msg_128b", "python"),
    ) {
        report_ratio(
            "msg_128b_rust/python",
            rust.frames_per_s() / python.frames_per_s(),
            Some(TARGET_MSG_VS_PYTHON),
        );
    }
    if failed {
        std::process::exit(1);
    }
}
