//! `tej-hub bench big-file`: one frame carrying one large file, relayed by the hub from one
//! publisher to S subscribers, against plain loopback TCP of the same size.
//!
//! This module owns the flags, the run and the relay's two ends. The file is generated while it is
//! sent ([`Pattern`]); the publisher hashes what it writes, and every subscriber is a
//! [`HubClient`] reading its socket with `--io-size` reads and hashing the file data as
//! [`HubClient::next_part`] hands it out: no side ever holds the frame, so the only memory that
//! grows with the file size is the hub's. The hash is xxh3-128: it runs at several GB/s per core,
//! where SHA-256 (about 0.5 GB/s without SHA extensions) would be what limits the throughput on a
//! two-core machine instead of the hub.
//!
//! Beside it: [`tcp`] (connections, the pattern, the raw loopback yardstick) and [`report`] (the
//! figures, as a table or JSON).

mod report;
mod tcp;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use clap::Args;
use futures_util::StreamExt;
use tej_hub::hub::control::CONTROL;
use tej_hub::hub::HubClient;
use tej_hub::stream::Part;
use tej_hub::{Limits, Status, TejCodec, PROTOCOL_VERSION};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_util::codec::{Framed, FramedRead};
use xxhash_rust::xxh3::Xxh3Default;

use super::hub::{HubProcess, RssSampler, RssStats};
use super::{byte_size, human_bytes, Common, KIB, MIB};
use crate::Failure;
use report::{HubInfo, Report};
use tcp::{before, connect, connect_limit, raw_loopback, write, Pattern, Raw};

/// The name of the file in the frame.
const FILE_NAME: &str = "big-file.bin";
/// The frame's message.
const MESSAGE: &[u8] = b"tej-hub bench big-file";
/// How long the publisher listens for the hub's reason after a failed write.
const REASON_TIMEOUT: Duration = Duration::from_secs(1);
/// The largest frame the publisher's watcher reads (the hub should send it nothing).
const MAX_WATCHED: u64 = 64 * 1024;
/// What a subscriber accepts: a frame of any size with at most one file, and messages (the
/// frame's, the hub's replies) of at most 64 KiB.
const SUBSCRIBER_LIMITS: Limits = Limits {
    max_frame_bytes: u64::MAX,
    max_files: 1,
    max_message_bytes: 64 * 1024,
};
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
    #[arg(long, value_name = "CODE", default_value = "5", value_parser = publishable_status)]
    code: Status,
    /// Bytes per write and per read, on every socket (4KiB-64MiB).
    #[arg(long, value_name = "SIZE", default_value = "1MiB", value_parser = io_size)]
    io_size: usize,
    /// Bytes sent over plain loopback TCP as the yardstick [default: --size].
    #[arg(long, value_name = "SIZE", value_parser = byte_size)]
    raw_size: Option<u64>,
    #[command(flatten)]
    common: Common,
}

/// A status `big-file` may publish on: 0..=126 except 2 (ping).
pub(super) fn publishable_status(text: &str) -> Result<Status, String> {
    text.parse()
        .ok()
        .and_then(Status::new)
        .filter(|status| *status != CONTROL && *status != Status::PING)
        .ok_or_else(|| "publishable codes are 0-126 except 2".to_owned())
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
    let mut child = match args.common.hub {
        Some(_) => None,
        None => Some(HubProcess::start(&args.common.serve_args, deadline)?),
    };
    let hub = match (&child, args.common.hub) {
        (Some(child), _) => HubInfo {
            addr: child.addr(),
            pid: Some(child.pid()),
            spawned: true,
        },
        (None, Some(addr)) => HubInfo {
            addr,
            pid: args.common.hub_pid,
            spawned: false,
        },
        (None, None) => return Err(Failure::Failed("no hub to measure".to_owned())),
    };
    eprintln!(
        "tej-hub bench: hub at {}{}; relaying {} to {} subscriber(s)",
        hub.addr,
        hub.pid
            .map_or_else(String::new, |pid| format!(" (pid {pid})")),
        human_bytes(args.size),
        args.subscribers
    );
    let runtime = super::runtime()?;
    let measured = runtime.block_on(async {
        let measuring = measure(args, hub.addr, hub.pid, deadline);
        tokio::time::timeout_at(deadline.into(), measuring)
            .await
            .unwrap_or_else(|_| Err(format!("gave up after --timeout {}s", args.common.timeout)))
    });
    // Ends what a failed run left waiting before the hub goes.
    drop(runtime);
    let measured = measured.map_err(|error| {
        let explain = child.as_mut().map(HubProcess::explain).unwrap_or_default();
        Failure::Failed(format!("bench big-file: {error}{explain}"))
    })?;
    let report = Report::new(args, hub, measured);
    if args.common.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.table());
    }
    if report.hashes_match() {
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
    let relayed = relay(publisher, subscribers, args, deadline).await;
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
    /// When the frame's head arrived.
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
    /// The hub sent a control frame on the publisher's connection or closed it: always a
    /// failure, with the hub's reason when it gave one.
    PublisherClosed(Option<String>),
}

/// Publishes the frame while every subscriber reads it; fails at the first failure of any side.
async fn relay(
    publisher: TcpStream,
    subscribers: Vec<HubClient>,
    args: &BigFile,
    deadline: Instant,
) -> Result<(Published, Vec<Received>), String> {
    // Dropping the set (an early return) aborts every task still running.
    let mut tasks = JoinSet::new();
    let count = subscribers.len();
    let (status, size, io_size) = (args.code, args.size, args.io_size);
    for (index, client) in subscribers.into_iter().enumerate() {
        tasks.spawn(async move { Outcome::Received(index, receive(client, status, size).await) });
    }
    let (reader, writer) = publisher.into_split();
    tasks.spawn(async move { Outcome::PublisherClosed(watch(reader).await) });
    tasks.spawn(async move {
        Outcome::Published(publish(writer, status, size, io_size, deadline).await)
    });

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
                });
                return Err(match reason.await.ok().flatten() {
                    Some(reason) => format!("publisher: {error}; the hub said {reason:?}"),
                    None => format!("publisher: {error}"),
                });
            }
            Outcome::Received(index, Ok(done)) => received[index] = Some(done),
            Outcome::Received(index, Err(error)) => {
                return Err(format!("subscriber {}: {error}", index + 1))
            }
            Outcome::PublisherClosed(Some(reason)) => {
                let reason = reason.strip_prefix("ERR ").unwrap_or(&reason);
                return Err(format!("the hub refused the publication: {reason}"));
            }
            Outcome::PublisherClosed(None) => {
                return Err("the hub closed the publisher's connection".to_owned())
            }
        }
    }
    let published = published.ok_or("the publisher did not finish")?;
    Ok((published, received.into_iter().flatten().collect()))
}

/// The frame's bytes before the file's data: status, version, one file, its name and its length.
fn frame_head(status: Status, len: u64) -> Bytes {
    const NAME_LEN: u16 = FILE_NAME.len() as u16;
    let mut head = BytesMut::with_capacity(20 + FILE_NAME.len());
    head.put_u8(status.to_byte());
    head.put_u8(PROTOCOL_VERSION);
    head.put_u64(1);
    head.put_u16(NAME_LEN);
    head.put_slice(FILE_NAME.as_bytes());
    head.put_u64(len);
    head.freeze()
}

/// The frame's bytes after the file's data: the message's length and the message.
fn frame_tail() -> Bytes {
    let mut tail = BytesMut::with_capacity(8 + MESSAGE.len());
    tail.put_u64(MESSAGE.len() as u64);
    tail.put_slice(MESSAGE);
    tail.freeze()
}

/// Writes the frame: its head, `size` bytes of [`Pattern`] in `io_size` writes, its tail.
async fn publish(
    mut writer: OwnedWriteHalf,
    status: Status,
    size: u64,
    io_size: usize,
    deadline: Instant,
) -> Result<Published, String> {
    let mut pattern = Pattern::new(io_size);
    let start = Instant::now();
    write(&mut writer, &frame_head(status, size), deadline).await?;
    let hash = pattern.send(&mut writer, size, deadline).await?;
    write(&mut writer, &frame_tail(), deadline).await?;
    Ok(Published {
        start,
        end: Instant::now(),
        hash,
        _writer: writer,
    })
}

/// Reads the publisher's connection until the hub sends a control frame or closes it; returns
/// the control frame's message, if any. The hub sends a publisher nothing unless it refuses what
/// it sends (`ERR <reason>`, then close). Frames over [`MAX_WATCHED`] end the watch.
async fn watch(reader: OwnedReadHalf) -> Option<String> {
    let mut frames = FramedRead::new(reader, TejCodec::new(Limits::frame_only(MAX_WATCHED)));
    while let Some(Ok(frame)) = frames.next().await {
        if frame.status == CONTROL {
            return Some(String::from_utf8_lossy(&frame.message).into_owned());
        }
    }
    None
}

/// A subscriber to `status`, reading with `io_size` reads, whose `SUB` the hub acknowledged.
async fn subscribe(
    addr: SocketAddr,
    status: Status,
    io_size: usize,
    deadline: Instant,
) -> Result<HubClient, String> {
    let stream = connect(addr, deadline).await?;
    let framed = Framed::with_capacity(stream, TejCodec::new(SUBSCRIBER_LIMITS), io_size);
    let mut client = HubClient::from_framed(framed);
    let code = status.to_string();
    let subscribing = client.subscribe(&code);
    let codes = before(connect_limit(deadline), "waiting for the hub", subscribing)
        .await?
        .map_err(|error| format!("SUB {code}: {error}"))?;
    if codes.to_string() == code {
        Ok(client)
    } else {
        Err(format!("the hub acknowledged SUB {code} with {codes}"))
    }
}

/// The next part the hub relays to `client`.
async fn next_part(client: &mut HubClient) -> Result<Part, String> {
    match client.next_part().await {
        Ok(Some(part)) => Ok(part),
        Ok(None) => Err("the hub closed the connection".to_owned()),
        Err(error) => Err(error.to_string()),
    }
}

/// Reads the frame relayed to `client`, checks it is the one published on `status` with a file
/// of `size` bytes, and hashes the file data as it arrives.
async fn receive(mut client: HubClient, status: Status, size: u64) -> Result<Received, String> {
    let first_byte = match next_part(&mut client).await? {
        Part::Head {
            status: got,
            version,
            files,
        } if (got, version, files) != (status, PROTOCOL_VERSION, 1) => {
            return Err(format!(
                "expected a frame on status {status}, version {PROTOCOL_VERSION}, with 1 file; \
                 got status {got}, version {version}, {files} files"
            ))
        }
        Part::Head { .. } => Instant::now(),
        other => return Err(format!("expected a frame head, got {other:?}")),
    };
    let mut hasher = Xxh3Default::new();
    let mut message = Vec::new();
    loop {
        match next_part(&mut client).await? {
            Part::FileStart { len, .. } if len != size => {
                return Err(format!("the file announces {len} bytes, {size} were sent"))
            }
            Part::FileData(chunk) => hasher.update(&chunk),
            Part::MessageData(chunk) => message.extend_from_slice(&chunk),
            Part::End => break,
            _ => {}
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

#[cfg(test)]
mod tests {
    use super::*;
    use tej_hub::Frame;

    #[test]
    fn head_data_and_tail_are_the_frame_the_library_encodes() {
        let status = Status::new(5).expect("5 is a status");
        let mut wire = frame_head(status, 3).to_vec();
        wire.extend_from_slice(b"abc");
        wire.extend_from_slice(&frame_tail());
        let frame = Frame::builder(status)
            .file(FILE_NAME, &b"abc"[..])
            .message(MESSAGE)
            .build();
        assert_eq!(frame.to_wire().expect("encodes").to_vec(), wire);
    }

    #[test]
    fn codes_and_io_sizes() {
        assert_eq!(publishable_status("5"), Ok(Status::new(5).expect("5")));
        assert_eq!(publishable_status("0"), Ok(Status::default()));
        for bad in ["2", "127", "128", "-1", "x"] {
            assert!(publishable_status(bad).is_err(), "{bad}");
        }
        assert_eq!(io_size("1MiB"), Ok(1024 * 1024));
        assert_eq!(io_size("4KiB"), Ok(4096));
        assert!(io_size("4095").is_err());
        assert!(io_size("65MiB").is_err());
    }
}
