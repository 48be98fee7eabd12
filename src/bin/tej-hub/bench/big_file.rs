//! `tej-hub bench big-file`: one frame carrying one large file, relayed by the hub from one
//! publisher to S subscribers, against plain loopback TCP of the same size.
//!
//! The file is generated while it is sent ([`Pattern`]); the publisher hashes what it writes and
//! every subscriber hashes the file data as it arrives, reading its socket with large reads and
//! walking the frame with [`FrameStream`]: no side ever holds the frame, so the only memory that
//! grows with the file size is the hub's. The hash is xxh3-128: it runs at several GB/s per core,
//! where SHA-256 (about 0.5 GB/s without SHA extensions) would be what limits the throughput on a
//! two-core machine instead of the hub.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use xxhash_rust::xxh3::Xxh3Default;

use super::hub::{HubProcess, RssSampler, RssStats};
use super::wire::{self, Event, FrameStream, CONTROL};
use super::{byte_size, human_bytes, mb_per_s, Common, KIB, MIB};
use crate::Failure;

/// The name of the file in the frame.
const FILE_NAME: &str = "big-file.bin";
/// The frame's message.
const MESSAGE: &[u8] = b"tej-hub bench big-file";
/// How long one connect, or one subscription handshake, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the publisher listens for the hub's reason after a failed write.
const REASON_TIMEOUT: Duration = Duration::from_secs(1);
/// The most the publisher's watcher keeps of what the hub sends it (it should send nothing).
const MAX_WATCHED: usize = 64 * 1024;
/// Most subscribers.
const MAX_SUBSCRIBERS: u64 = 64;

/// `bench big-file` flags.
#[derive(Args)]
pub(crate) struct BigFile {
    /// Size of the file: a number of bytes, or with a unit (256MiB, 4GiB, 2GB).
    #[arg(long, value_name = "SIZE", default_value = "4GiB", value_parser = byte_size)]
    size: u64,
    /// Number of subscribers (1-64).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 3,
        value_parser = clap::value_parser!(u64).range(1..=MAX_SUBSCRIBERS)
    )]
    subscribers: u64,
    /// The status code the frame is published on (0-126 except 2).
    #[arg(long, value_name = "CODE", default_value_t = 5, value_parser = publishable_code)]
    code: u8,
    /// Bytes per write and per read, on every socket (4KiB-64MiB).
    #[arg(long, value_name = "SIZE", default_value = "1MiB", value_parser = io_size)]
    io_size: usize,
    /// Bytes sent over plain loopback TCP as the yardstick [default: --size].
    #[arg(long, value_name = "SIZE", value_parser = byte_size)]
    raw_size: Option<u64>,
    #[command(flatten)]
    common: Common,
}

/// A code `big-file` may publish on: 0..=126 except 2 (ping).
fn publishable_code(text: &str) -> Result<u8, String> {
    match text.parse::<u8>() {
        Ok(code) if code < CONTROL && code != 2 => Ok(code),
        _ => Err("publishable codes are 0-126 except 2".to_owned()),
    }
}

/// A write and read size: 4 KiB to 64 MiB.
fn io_size(text: &str) -> Result<usize, String> {
    let bytes = byte_size(text)?;
    if (4 * KIB..=64 * MIB).contains(&bytes) {
        usize::try_from(bytes).map_err(|_| format!("{bytes} does not fit in memory"))
    } else {
        Err("the write and read size must be between 4KiB and 64MiB".to_owned())
    }
}

/// `bench big-file`: starts (or finds) the hub, measures, prints the report.
pub(crate) fn run(args: &BigFile) -> Result<(), Failure> {
    let deadline = Instant::now() + Duration::from_secs(args.common.timeout);
    let head = wire::file_frame_head(args.code, FILE_NAME, args.size).map_err(Failure::Usage)?;
    let mut child = match args.common.hub {
        Some(_) => None,
        None => Some(HubProcess::start(&args.common.serve_args, deadline)?),
    };
    let (addr, pid) = match (&child, args.common.hub) {
        (Some(child), _) => (child.addr(), Some(child.pid())),
        (None, Some(addr)) => (addr, args.common.hub_pid),
        (None, None) => return Err(Failure::Failed("no hub to measure".to_owned())),
    };
    eprintln!(
        "tej-hub bench: hub at {addr}{}; relaying {} to {} subscriber(s)",
        pid.map_or_else(String::new, |pid| format!(" (pid {pid})")),
        human_bytes(args.size),
        args.subscribers
    );
    let runtime = super::runtime()?;
    let measured = runtime.block_on(async {
        match tokio::time::timeout_at(deadline.into(), measure(args, &head, addr, pid, deadline))
            .await
        {
            Ok(measured) => measured,
            Err(_) => Err(format!("gave up after --timeout {}s", args.common.timeout)),
        }
    });
    // Ends what a failed run left waiting before the hub goes.
    drop(runtime);
    let measured = measured.map_err(|error| {
        let explain = child.as_mut().map(HubProcess::explain).unwrap_or_default();
        Failure::Failed(format!("bench big-file: {error}{explain}"))
    })?;
    let report = Report {
        args,
        hub: addr,
        pid,
        spawned: child.is_some(),
        measured,
    };
    if args.common.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.table());
    }
    if report.measured.hashes_match() {
        Ok(())
    } else {
        Err(Failure::Failed(
            "bench big-file: hash mismatch: a subscriber did not get the file that was sent"
                .to_owned(),
        ))
    }
}

/// What one run measured.
struct Measured {
    /// The publisher's side.
    published: Published,
    /// Each subscriber's side, in connection order.
    received: Vec<Received>,
    /// The hub's memory, when its process id is known.
    rss: Option<RssStats>,
    /// The yardstick.
    raw: Raw,
}

impl Measured {
    /// Whether every subscriber hashed what the publisher hashed, and the yardstick's two ends
    /// agree.
    fn hashes_match(&self) -> bool {
        self.raw.sent_hash == self.raw.received_hash
            && self
                .received
                .iter()
                .all(|received| received.hash == self.published.hash)
    }
}

/// Subscribes, relays one frame, then runs the yardstick.
async fn measure(
    args: &BigFile,
    head: &[u8],
    addr: SocketAddr,
    pid: Option<u32>,
    deadline: Instant,
) -> Result<Measured, String> {
    let mut subscribers = Vec::new();
    for index in 1..=args.subscribers {
        let subscriber = subscribe(addr, args.code, args.io_size, deadline)
            .await
            .map_err(|error| format!("subscriber {index}: {error}"))?;
        subscribers.push(subscriber);
    }
    let publisher = connect(addr, deadline)
        .await
        .map_err(|error| format!("publisher: {error}"))?;
    let sampler = pid.map(|pid| RssSampler::start(pid, deadline));
    let relayed = relay(publisher, subscribers, head, args, deadline).await;
    let rss = sampler.map(RssSampler::finish);
    let (published, received) = relayed?;
    let raw_size = args.raw_size.unwrap_or(args.size);
    eprintln!(
        "tej-hub bench: measuring plain loopback TCP ({})",
        human_bytes(raw_size)
    );
    let raw = raw_loopback(raw_size, args.io_size, deadline)
        .await
        .map_err(|error| format!("raw loopback: {error}"))?;
    Ok(Measured {
        published,
        received,
        rss,
        raw,
    })
}

/// A loopback connection to `addr`, with `TCP_NODELAY`.
async fn connect(addr: SocketAddr, deadline: Instant) -> Result<TcpStream, String> {
    let limit = deadline.min(Instant::now() + CONNECT_TIMEOUT);
    let stream = match tokio::time::timeout_at(limit.into(), TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return Err(format!("cannot connect to {addr}: {error}")),
        Err(_) => return Err(format!("cannot connect to {addr}: no answer in time")),
    };
    stream
        .set_nodelay(true)
        .map_err(|error| format!("cannot set TCP_NODELAY: {error}"))?;
    Ok(stream)
}

/// Writes all of `bytes` before `deadline`.
async fn write(
    writer: &mut (impl AsyncWrite + Unpin),
    bytes: &[u8],
    deadline: Instant,
) -> Result<(), String> {
    match tokio::time::timeout_at(deadline.into(), writer.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(format!("write failed: {error}")),
        Err(_) => Err("timed out writing".to_owned()),
    }
}

/// A subscriber: connected, `SUB <code>` sent and `OK SUB <code>` read back.
async fn subscribe(
    addr: SocketAddr,
    code: u8,
    io_size: usize,
    deadline: Instant,
) -> Result<FrameStream<TcpStream>, String> {
    let mut stream = connect(addr, deadline).await?;
    let limit = deadline.min(Instant::now() + CONNECT_TIMEOUT);
    write(
        &mut stream,
        &wire::control_frame(&format!("SUB {code}")),
        limit,
    )
    .await?;
    let mut frames = FrameStream::new(stream, io_size);
    match frames.next_event(limit).await? {
        Event::Head { code: CONTROL, .. } => {}
        other => return Err(format!("expected the reply to SUB {code}, got {other:?}")),
    }
    let reply = frames.rest_of_control(limit).await?;
    if reply == format!("OK SUB {code}") {
        Ok(frames)
    } else {
        Err(format!("the hub answered SUB {code} with {reply:?}"))
    }
}

/// The publisher's side of the relay.
struct Published {
    /// Just before the first write.
    start: Instant,
    /// Just after the last write returned.
    end: Instant,
    /// xxh3-128 of the file data sent.
    hash: u128,
    /// Kept open until the end: closing it would end the session, which the watcher would report.
    _writer: OwnedWriteHalf,
}

/// One subscriber's side of the relay.
struct Received {
    /// When the frame's first bytes were read.
    first_byte: Instant,
    /// When its last byte was read.
    end: Instant,
    /// xxh3-128 of the file data received.
    hash: u128,
}

/// How one task of the relay ended.
enum Outcome {
    /// The publisher wrote the frame, or failed.
    Published(Result<Published, String>),
    /// Subscriber `index` (from 0) read the frame, or failed.
    Received(usize, Result<Received, String>),
    /// The hub sent something on the publisher's connection or closed it: always a failure,
    /// with the hub's reason when it gave one.
    PublisherClosed(Option<String>),
}

/// Publishes the frame while every subscriber reads it; fails at the first failure of any side.
async fn relay(
    publisher: TcpStream,
    subscribers: Vec<FrameStream<TcpStream>>,
    head: &[u8],
    args: &BigFile,
    deadline: Instant,
) -> Result<(Published, Vec<Received>), String> {
    // Dropping the set (an early return) aborts every task still running.
    let mut tasks = JoinSet::new();
    let count = subscribers.len();
    for (index, frames) in subscribers.into_iter().enumerate() {
        let (code, size) = (args.code, args.size);
        tasks.spawn(async move {
            Outcome::Received(index, receive(frames, code, size, deadline).await)
        });
    }
    let (reader, writer) = publisher.into_split();
    tasks.spawn(async move { Outcome::PublisherClosed(watch(reader).await) });
    let (head, size, io_size) = (head.to_vec(), args.size, args.io_size);
    tasks.spawn(
        async move { Outcome::Published(publish(writer, head, size, io_size, deadline).await) },
    );

    let mut published = None;
    let mut received: Vec<Option<Received>> = (0..count).map(|_| None).collect();
    while published.is_none() || received.iter().any(Option::is_none) {
        let outcome = match tasks.join_next().await {
            Some(Ok(outcome)) => outcome,
            Some(Err(error)) => return Err(format!("a bench task failed: {error}")),
            None => return Err("every bench task ended early".to_owned()),
        };
        match outcome {
            Outcome::Published(Ok(done)) => published = Some(done),
            Outcome::Published(Err(error)) => {
                let reason = tokio::time::timeout(REASON_TIMEOUT, async {
                    while let Some(Ok(outcome)) = tasks.join_next().await {
                        if let Outcome::PublisherClosed(reason) = outcome {
                            return reason;
                        }
                    }
                    None
                })
                .await
                .ok()
                .flatten();
                return Err(match reason {
                    Some(reason) => format!("publisher: {error}; the hub said {reason:?}"),
                    None => format!("publisher: {error}"),
                });
            }
            Outcome::Received(index, Ok(done)) => {
                if let Some(slot) = received.get_mut(index) {
                    *slot = Some(done);
                }
            }
            Outcome::Received(index, Err(error)) => {
                return Err(format!("subscriber {}: {error}", index + 1))
            }
            Outcome::PublisherClosed(reason) => {
                return Err(match reason {
                    Some(reason) => format!(
                        "the hub refused the publication: {}",
                        reason.strip_prefix("ERR ").unwrap_or(&reason)
                    ),
                    None => "the hub closed the publisher's connection".to_owned(),
                })
            }
        }
    }
    let published = published.ok_or("the publisher did not finish")?;
    Ok((published, received.into_iter().flatten().collect()))
}

/// Writes the frame: `head`, `size` bytes of [`Pattern`] in `io_size` writes, the message.
async fn publish(
    mut writer: OwnedWriteHalf,
    head: Vec<u8>,
    size: u64,
    io_size: usize,
    deadline: Instant,
) -> Result<Published, String> {
    let mut pattern = Pattern::new(io_size);
    let mut hasher = Xxh3Default::new();
    let start = Instant::now();
    write(&mut writer, &head, deadline).await?;
    let mut left = size;
    while left > 0 {
        let block = pattern.next_block();
        let n = usize::try_from(left).map_or(block.len(), |left| left.min(block.len()));
        let data = &block[..n];
        hasher.update(data);
        write(&mut writer, data, deadline).await?;
        left -= n as u64;
    }
    write(&mut writer, &wire::frame_tail(MESSAGE), deadline).await?;
    Ok(Published {
        start,
        end: Instant::now(),
        hash: hasher.digest128(),
        _writer: writer,
    })
}

/// Reads the publisher's connection until the hub sends a whole control frame, closes it, or
/// sends more than [`MAX_WATCHED`] bytes; returns the control frame's message, if any. The hub
/// sends a publisher nothing unless it refuses what it sends (`ERR <reason>`, then close).
async fn watch(mut reader: OwnedReadHalf) -> Option<String> {
    let mut seen = Vec::new();
    let mut buf = vec![0; 4096];
    while seen.len() < MAX_WATCHED {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                seen.extend_from_slice(&buf[..n]);
                if let Some(message) = wire::control_message(&seen) {
                    return Some(message);
                }
            }
        }
    }
    wire::control_message(&seen)
}

/// Reads the frame on `frames`, checks it is the one published, hashes the file data as it
/// arrives.
async fn receive(
    mut frames: FrameStream<TcpStream>,
    code: u8,
    size: u64,
    deadline: Instant,
) -> Result<Received, String> {
    let first_byte = match frames.next_event(deadline).await? {
        Event::Head { code: CONTROL, .. } => {
            let message = frames.rest_of_control(deadline).await?;
            return Err(format!("the hub sent {message:?} instead of the frame"));
        }
        Event::Head {
            code: got,
            version,
            files,
        } => {
            if (got, version, files) != (code, 1, 1) {
                return Err(format!(
                    "expected a frame on status {code}, version 1, with 1 file; got status {got}, \
                     version {version}, {files} files"
                ));
            }
            Instant::now()
        }
        other => return Err(format!("expected a frame head, got {other:?}")),
    };
    let mut hasher = Xxh3Default::new();
    let mut message = Vec::new();
    loop {
        match frames.next_event(deadline).await? {
            Event::FileHead { len, .. } if len != size => {
                return Err(format!("the file announces {len} bytes, {size} were sent"))
            }
            Event::FileData(_) => hasher.update(frames.data()),
            Event::MessageHead { len } if len != MESSAGE.len() as u64 => {
                return Err(format!(
                    "the message announces {len} bytes, {} were sent",
                    MESSAGE.len()
                ))
            }
            Event::MessageData(_) => message.extend_from_slice(frames.data()),
            Event::End => break,
            Event::FileHead { .. } | Event::MessageHead { .. } => {}
            Event::Head { .. } => return Err("a frame head inside the frame".to_owned()),
        }
    }
    let end = Instant::now();
    if message != MESSAGE {
        return Err(format!(
            "the message differs: {:?}",
            String::from_utf8_lossy(&message)
        ));
    }
    Ok(Received {
        first_byte,
        end,
        hash: hasher.digest128(),
    })
}

/// The yardstick's result.
struct Raw {
    /// Bytes sent.
    bytes: u64,
    /// From the first write until the receiver had every byte.
    seconds: f64,
    /// xxh3-128 of what was sent.
    sent_hash: u128,
    /// xxh3-128 of what was received.
    received_hash: u128,
}

/// Plain loopback TCP: one task writes `size` bytes of [`Pattern`] in `io_size` writes, another
/// reads them with `io_size` reads; both hash, as the relay's ends do.
async fn raw_loopback(size: u64, io_size: usize, deadline: Instant) -> Result<Raw, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|error| format!("cannot listen on 127.0.0.1:0: {error}"))?;
    let addr = listener
        .local_addr()
        .map_err(|error| format!("no local address: {error}"))?;
    let mut receiver = JoinSet::new();
    receiver.spawn(async move {
        let limit = deadline.min(Instant::now() + CONNECT_TIMEOUT);
        let (mut stream, _) = match tokio::time::timeout_at(limit.into(), listener.accept()).await {
            Ok(Ok(accepted)) => accepted,
            Ok(Err(error)) => return Err(format!("accept failed: {error}")),
            Err(_) => return Err("no connection to accept in time".to_owned()),
        };
        let mut buf = vec![0; io_size];
        let mut hasher = Xxh3Default::new();
        let mut got = 0u64;
        while got < size {
            let n = match tokio::time::timeout_at(deadline.into(), stream.read(&mut buf)).await {
                Ok(Ok(0)) => return Err(format!("closed after {got} of {size} bytes")),
                Ok(Ok(n)) => n,
                Ok(Err(error)) => return Err(format!("read failed: {error}")),
                Err(_) => return Err("timed out reading".to_owned()),
            };
            hasher.update(&buf[..n]);
            got += n as u64;
        }
        Ok((Instant::now(), hasher.digest128()))
    });
    let mut stream = connect(addr, deadline).await?;
    let mut pattern = Pattern::new(io_size);
    let mut hasher = Xxh3Default::new();
    let start = Instant::now();
    let mut left = size;
    while left > 0 {
        let block = pattern.next_block();
        let n = usize::try_from(left).map_or(block.len(), |left| left.min(block.len()));
        hasher.update(&block[..n]);
        write(&mut stream, &block[..n], deadline).await?;
        left -= n as u64;
    }
    let (end, received_hash) = match receiver.join_next().await {
        Some(Ok(result)) => result?,
        Some(Err(error)) => return Err(format!("the receiving task failed: {error}")),
        None => return Err("the receiving task is gone".to_owned()),
    };
    Ok(Raw {
        bytes: size,
        seconds: end.saturating_duration_since(start).as_secs_f64(),
        sent_hash: hasher.digest128(),
        received_hash,
    })
}

/// The file's bytes, made on the fly: one block of xorshift output, sent again and again with
/// its first 8 bytes replaced by the block's number, so that no two blocks are alike and a block
/// lost, repeated or reordered changes the hash.
struct Pattern {
    /// The block, its first 8 bytes overwritten each time.
    block: Vec<u8>,
    /// The next block's number.
    number: u64,
}

impl Pattern {
    /// A pattern of `len`-byte blocks.
    fn new(len: usize) -> Pattern {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut block = Vec::with_capacity(len + 8);
        while block.len() < len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            block.extend_from_slice(&state.to_le_bytes());
        }
        block.truncate(len);
        Pattern { block, number: 0 }
    }

    /// The next block.
    fn next_block(&mut self) -> &[u8] {
        let number = self.number.to_le_bytes();
        let n = number.len().min(self.block.len());
        self.block[..n].copy_from_slice(&number[..n]);
        self.number += 1;
        &self.block
    }
}

/// A finished run with what it ran against, ready to print.
struct Report<'a> {
    /// What was asked for.
    args: &'a BigFile,
    /// The hub's address.
    hub: SocketAddr,
    /// The hub's process id, when known.
    pid: Option<u32>,
    /// Whether the bench spawned the hub.
    spawned: bool,
    /// What was measured.
    measured: Measured,
}

/// One subscriber's figures.
struct SubscriberFigures {
    /// From the publisher's first write until the frame's first bytes were read, in ms.
    ttfb_ms: f64,
    /// From the publisher's first write until the frame's last byte was read.
    seconds: f64,
    /// The file size over `seconds`.
    mb_per_s: f64,
    /// Whether the file's hash equals the publisher's.
    hash_ok: bool,
}

/// `value` rounded to `places` decimals, for JSON.
fn round(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}

/// KiB as MiB.
fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

impl Report<'_> {
    /// Each subscriber's figures, timed from the publisher's first write.
    fn subscribers(&self) -> Vec<SubscriberFigures> {
        let published = &self.measured.published;
        self.measured
            .received
            .iter()
            .map(|received| {
                let seconds = received
                    .end
                    .saturating_duration_since(published.start)
                    .as_secs_f64();
                SubscriberFigures {
                    ttfb_ms: received
                        .first_byte
                        .saturating_duration_since(published.start)
                        .as_secs_f64()
                        * 1e3,
                    seconds,
                    mb_per_s: mb_per_s(self.args.size, seconds),
                    hash_ok: received.hash == published.hash,
                }
            })
            .collect()
    }

    /// From the first write until the last subscriber had the whole frame.
    fn relay_seconds(&self) -> f64 {
        let published = &self.measured.published;
        self.measured
            .received
            .iter()
            .map(|received| received.end.saturating_duration_since(published.start))
            .max()
            .unwrap_or_default()
            .as_secs_f64()
    }

    /// The slowest subscriber's MB/s.
    fn relay_mb_per_s(&self) -> f64 {
        self.subscribers()
            .iter()
            .map(|figures| figures.mb_per_s)
            .reduce(f64::min)
            .unwrap_or_default()
    }

    /// File bytes delivered to all subscribers together, per second of the whole relay.
    fn aggregate_mb_per_s(&self) -> f64 {
        let delivered = self
            .args
            .size
            .saturating_mul(self.measured.received.len() as u64);
        mb_per_s(delivered, self.relay_seconds())
    }

    /// The yardstick's MB/s.
    fn raw_mb_per_s(&self) -> f64 {
        mb_per_s(self.measured.raw.bytes, self.measured.raw.seconds)
    }

    /// `value` over the yardstick; 0 without one.
    fn ratio(&self, value: f64) -> f64 {
        let raw = self.raw_mb_per_s();
        if raw > 0.0 {
            value / raw
        } else {
            0.0
        }
    }

    /// The publisher's write time.
    fn publish_seconds(&self) -> f64 {
        let published = &self.measured.published;
        published
            .end
            .saturating_duration_since(published.start)
            .as_secs_f64()
    }

    /// The report as one JSON object.
    fn json(&self) -> serde_json::Value {
        let subscribers = self.subscribers();
        let rss = self.measured.rss;
        let rss_mib = |field: fn(&RssStats) -> Option<u64>| {
            rss.as_ref().and_then(field).map(|kib| round(mib(kib), 1))
        };
        json!({
            "bench": "big-file",
            "size_bytes": self.args.size,
            "subscribers": subscribers.len(),
            "code": self.args.code,
            "io_bytes": self.args.io_size,
            "hub": {
                "addr": self.hub.to_string(),
                "pid": self.pid,
                "spawned": self.spawned,
            },
            "publisher": {
                "seconds": round(self.publish_seconds(), 4),
                "mb_per_s": round(mb_per_s(self.args.size, self.publish_seconds()), 1),
            },
            "per_subscriber": subscribers.iter().map(|figures| json!({
                "ttfb_ms": round(figures.ttfb_ms, 3),
                "seconds": round(figures.seconds, 4),
                "mb_per_s": round(figures.mb_per_s, 1),
                "hash_ok": figures.hash_ok,
            })).collect::<Vec<_>>(),
            "ttfb_ms": subscribers.iter().map(|f| round(f.ttfb_ms, 3)).collect::<Vec<_>>(),
            "relay_seconds": round(self.relay_seconds(), 4),
            "relay_mb_per_s": round(self.relay_mb_per_s(), 1),
            "relay_mb_per_s_aggregate": round(self.aggregate_mb_per_s(), 1),
            "raw_loopback_bytes": self.measured.raw.bytes,
            "raw_loopback_seconds": round(self.measured.raw.seconds, 4),
            "raw_loopback_mb_per_s": round(self.raw_mb_per_s(), 1),
            "ratio": round(self.ratio(self.relay_mb_per_s()), 3),
            "ratio_aggregate": round(self.ratio(self.aggregate_mb_per_s()), 3),
            "hub_peak_rss_mib": rss_mib(|stats| stats.hwm_kib),
            "hub_rss_max_sampled_mib": rss_mib(|stats| stats.max_rss_kib),
            "hub_rss_before_mib": rss_mib(|stats| stats.first_rss_kib),
            "hub_rss_samples": rss.map(|stats| stats.samples),
            "hash": "xxh3-128",
            "xxh3": format!("{:032x}", self.measured.published.hash),
            "hashes_match": self.measured.hashes_match(),
        })
    }

    /// The report as a table for people.
    fn table(&self) -> String {
        let args = self.args;
        let subscribers = self.subscribers();
        let mut out = String::new();
        let mut line = |text: String| {
            out.push_str(&text);
            out.push('\n');
        };
        line(format!(
            "tej-hub bench big-file: 1 publisher -> hub -> {} subscriber(s), one frame, one file",
            subscribers.len()
        ));
        line(format!(
            "  file        {} ({} bytes) on status {}, {} writes and reads",
            human_bytes(args.size),
            args.size,
            args.code,
            human_bytes(args.io_size as u64)
        ));
        let origin = if self.spawned {
            "spawned: serve --listen 127.0.0.1:0"
        } else {
            "given with --hub"
        };
        line(format!(
            "  hub         {}{} ({origin})",
            self.hub,
            self.pid
                .map_or_else(String::new, |pid| format!(", pid {pid}"))
        ));
        line(String::new());
        line(format!(
            "  {:<12} {:>10} {:>10} {:>10}  xxh3-128",
            "", "TTFB ms", "seconds", "MB/s"
        ));
        let publisher_hash = format!("{:032x}", self.measured.published.hash);
        line(format!(
            "  {:<12} {:>10} {:>10.3} {:>10.1}  {publisher_hash}",
            "publisher",
            "-",
            self.publish_seconds(),
            mb_per_s(args.size, self.publish_seconds())
        ));
        for ((index, figures), received) in
            subscribers.iter().enumerate().zip(&self.measured.received)
        {
            let verdict = if figures.hash_ok { "match" } else { "MISMATCH" };
            line(format!(
                "  {:<12} {:>10.2} {:>10.3} {:>10.1}  {:032x} {verdict}",
                format!("subscriber {}", index + 1),
                figures.ttfb_ms,
                figures.seconds,
                figures.mb_per_s,
                received.hash
            ));
        }
        line(String::new());
        let mut row = |label: &str, value: String| line(format!("  {label:<27}{value}"));
        row(
            "relay, slowest subscriber",
            format!("{:>9.1} MB/s", self.relay_mb_per_s()),
        );
        row(
            "relay, aggregate",
            format!(
                "{:>9.1} MB/s  ({} x {:.1} MB in {:.3} s)",
                self.aggregate_mb_per_s(),
                subscribers.len(),
                args.size as f64 / 1e6,
                self.relay_seconds()
            ),
        );
        let raw = &self.measured.raw;
        row(
            "raw loopback TCP",
            format!(
                "{:>9.1} MB/s  ({:.1} MB in {:.3} s{})",
                self.raw_mb_per_s(),
                raw.bytes as f64 / 1e6,
                raw.seconds,
                if raw.sent_hash == raw.received_hash {
                    ""
                } else {
                    ", HASH MISMATCH"
                }
            ),
        );
        row(
            "ratio relay / raw",
            format!(
                "{:>9.2}       (slowest subscriber); {:.2} aggregate",
                self.ratio(self.relay_mb_per_s()),
                self.ratio(self.aggregate_mb_per_s())
            ),
        );
        let shown =
            |kib: Option<u64>| kib.map_or_else(|| "?".to_owned(), |kib| format!("{:.1}", mib(kib)));
        let rss = match self.measured.rss {
            Some(RssStats {
                hwm_kib: Some(hwm),
                max_rss_kib,
                first_rss_kib,
                samples,
            }) => format!(
                "{:>9.1} MiB   (VmHWM; VmRSS {} MiB before, {} MiB at most in {samples} samples)",
                mib(hwm),
                shown(first_rss_kib),
                shown(max_rss_kib),
            ),
            Some(_) => "unknown (cannot read /proc/PID/status)".to_owned(),
            None => "not measured (--hub without --hub-pid)".to_owned(),
        };
        row("hub peak RSS", rss);
        let verdict = if self.measured.hashes_match() {
            "all match"
        } else {
            "MISMATCH"
        };
        row("hashes (xxh3-128)", format!("{verdict:>9}"));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_blocks_differ() {
        let mut pattern = Pattern::new(4096);
        let first = pattern.next_block().to_vec();
        let second = pattern.next_block().to_vec();
        assert_eq!(first.len(), 4096);
        assert_ne!(first, second);
        assert_eq!(first[8..], second[8..]);
        assert_eq!(second[..8], 1u64.to_le_bytes());
        let again = Pattern::new(4096).next_block().to_vec();
        assert_eq!(first, again, "deterministic");
    }

    #[test]
    fn codes_and_io_sizes() {
        assert_eq!(publishable_code("5"), Ok(5));
        assert_eq!(publishable_code("0"), Ok(0));
        for bad in ["2", "127", "128", "-1", "x"] {
            assert!(publishable_code(bad).is_err(), "{bad}");
        }
        assert_eq!(io_size("1MiB"), Ok(1024 * 1024));
        assert_eq!(io_size("4KiB"), Ok(4096));
        assert!(io_size("4095").is_err());
        assert!(io_size("65MiB").is_err());
    }
}
