//! `tej-hub bench big-file`: one frame carrying one large file, relayed by the hub from one
//! publisher to S subscribers, against plain loopback TCP of the same size.
//!
//! This module owns the flags, the run and the publisher's end. The file is generated while it is
//! sent ([`Pattern`]); the publisher hashes what it writes, and every subscriber is a
//! [`HubClient`] reading its socket with `--io-size` reads and hashing the file data as
//! [`HubClient::next_part`] hands it out: no side ever holds the frame, so the only memory that
//! grows with the file size is the hub's. The hash is xxh3-128: it runs at several GB/s per core,
//! where SHA-256 (about 0.5 GB/s without SHA extensions) would be what limits the throughput on a
//! two-core machine instead of the hub.
//!
//! Two extra subscribers measure the hub's slow-consumer policies: a slow one that reads at most
//! `--slow-rate` MB/s (policy `block`, so it paces the relay), and a stuck one that sets
//! `--stuck POLICY` and reads nothing during the relay; what became of it is examined after.
//! `--compare` relays once without them first.
//!
//! Beside it: [`subscriber`] (the receiving ends), [`tcp`] (connections, the pattern, the raw
//! loopback yardstick) and [`report`] (the figures, as a table or JSON).

mod report;
mod subscriber;
pub(super) mod tcp;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use clap::{ArgGroup, Args};
use futures_util::StreamExt;
use tej_hub::hub::control::{SlowPolicy, CONTROL};
use tej_hub::hub::HubClient;
use tej_hub::{Limits, Status, TejCodec, PROTOCOL_VERSION};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_util::codec::FramedRead;

use super::hub::{HubChoice, RssSampler, RssStats, RunningHub};
use super::{byte_size, human_bytes, measure_on, one_to, Common, KIB, MIB};
use crate::Failure;
use report::Report;
use subscriber::{examine, hub_counters, receive, subscribe, HubCounters, Pace, Stuck};
use tcp::{connect, raw_loopback, write, Pattern, Raw};

/// The name of the file in the frame.
const FILE_NAME: &str = "big-file.bin";
/// The frame's message.
const MESSAGE: &[u8] = b"tej-hub bench big-file";
/// How long the publisher listens for the hub's reason after a failed write.
const REASON_TIMEOUT: Duration = Duration::from_secs(1);
/// The largest frame the publisher's watcher reads (the hub should send it nothing).
const MAX_WATCHED: u64 = 64 * 1024;
/// Most subscribers.
const MAX_SUBSCRIBERS: u64 = 64;

/// `bench big-file` flags.
#[derive(Args)]
#[command(group(ArgGroup::new("extra").args(["slow_rate", "stuck"]).multiple(true)))]
pub(crate) struct BigFile {
    /// Size of the file: a number of bytes, or with a unit (256MiB, 4GiB, 2GB).
    #[arg(long, value_name = "SIZE", default_value = "4GiB", value_parser = byte_size)]
    size: u64,
    /// Number of subscribers (1-64).
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = one_to(MAX_SUBSCRIBERS))]
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
    /// Add a subscriber that reads at most MBPS MB/s (10^6 bytes/s) with the hub's default policy
    /// (block: it paces the whole relay); its figures are reported apart.
    #[arg(long, value_name = "MBPS", value_parser = slow_rate)]
    slow_rate: Option<f64>,
    /// Add a subscriber that sets `SLOW POLICY`, subscribes and reads nothing during the relay;
    /// what became of it (closed by the hub, or its INFO) is reported after.
    #[arg(long, value_name = "POLICY", value_enum, ignore_case = true)]
    stuck: Option<SlowPolicy>,
    /// Relay twice: first without the --slow-rate and --stuck subscribers, then with them; report
    /// the regular subscribers' throughput of both runs and its ratio.
    #[arg(long, requires = "extra")]
    compare: bool,
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

/// A reading rate in MB/s: a decimal number from 0.001 to 1,000,000.
fn slow_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if (0.001..=1e6).contains(&rate) => Ok(rate),
        _ => Err("the rate is in MB/s, from 0.001 to 1000000 (e.g. 40 or 2.5)".to_owned()),
    }
}

/// `bench big-file`: starts (or finds) the hub, measures, prints the report.
pub(crate) fn run(args: &BigFile) -> Result<(), Failure> {
    let deadline = Instant::now() + Duration::from_secs(args.common.timeout);
    let mut running = RunningHub::start(&HubChoice::new(&args.common, false), deadline)?;
    let hub = running.info();
    eprintln!(
        "tej-hub bench: hub at {hub}; relaying {} to {} subscriber(s)",
        human_bytes(args.size),
        args.subscribers
    );
    if let Some(rate) = args.slow_rate {
        eprintln!("tej-hub bench: plus a subscriber reading at most {rate} MB/s");
    }
    if let Some(policy) = args.stuck {
        eprintln!("tej-hub bench: plus a subscriber that reads nothing (SLOW {policy})");
    }
    let measuring = measure(args, hub.addr, hub.pid, deadline);
    let measured = measure_on("big-file", &mut running, &args.common, deadline, measuring)?;
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
    /// With --compare: the relay without the extra subscribers, first.
    baseline: Option<Relayed>,
    /// The relay, with the extra subscribers asked for.
    relayed: Relayed,
    /// The yardstick.
    raw: Raw,
}

impl Measured {
    /// Whether every subscriber but the stuck one hashed what the publisher hashed, in every
    /// relay, and the yardstick's two ends agree.
    fn hashes_match(&self) -> bool {
        self.raw.sent_hash == self.raw.received_hash
            && self.relayed.hashes_match()
            && self.baseline.as_ref().map_or(true, Relayed::hashes_match)
    }
}

/// One relay of the frame.
struct Relayed {
    /// The publisher's side.
    published: Published,
    /// Each regular subscriber's side, in connection order.
    received: Vec<Received>,
    /// The --slow-rate subscriber's side.
    slow: Option<Received>,
    /// What became of the --stuck subscriber.
    stuck: Option<Stuck>,
    /// The hub's memory, when its process id is known.
    rss: Option<RssStats>,
    /// The hub's slow-consumer counters after the relay, when it answered.
    counters: Option<HubCounters>,
}

impl Relayed {
    /// Whether every subscriber that read the frame (the slow one too) hashed what the publisher
    /// hashed.
    fn hashes_match(&self) -> bool {
        self.received
            .iter()
            .chain(&self.slow)
            .all(|received| received.hash == self.published.hash)
    }
}

/// Relays (twice with --compare), then runs the yardstick.
async fn measure(
    args: &BigFile,
    addr: SocketAddr,
    pid: Option<u32>,
    deadline: Instant,
) -> Result<Measured, String> {
    let baseline = if args.compare {
        eprintln!("tej-hub bench: first relay, without the extra subscriber(s)");
        let baseline = relay_once(args, addr, pid, false, deadline).await;
        Some(baseline.map_err(|error| format!("the relay without extras: {error}"))?)
    } else {
        None
    };
    if args.compare {
        eprintln!("tej-hub bench: second relay, with them");
    }
    let relayed = relay_once(args, addr, pid, true, deadline).await?;
    let raw_size = args.raw_size.unwrap_or(args.size);
    eprintln!(
        "tej-hub bench: measuring plain loopback TCP ({})",
        human_bytes(raw_size)
    );
    let raw = raw_loopback(raw_size, args.io_size, deadline)
        .await
        .map_err(|error| format!("raw loopback: {error}"))?;
    Ok(Measured {
        baseline,
        relayed,
        raw,
    })
}

/// Subscribes (with the extra subscribers asked for when `extras`), relays one frame, then
/// examines the stuck subscriber and asks the hub for its counters.
async fn relay_once(
    args: &BigFile,
    addr: SocketAddr,
    pid: Option<u32>,
    extras: bool,
    deadline: Instant,
) -> Result<Relayed, String> {
    let (status, io_size) = (args.code, args.io_size);
    let mut subscribers = Vec::new();
    for index in 1..=args.subscribers {
        let subscriber = subscribe(addr, status, io_size, None, deadline)
            .await
            .map_err(|error| format!("subscriber {index}: {error}"))?;
        subscribers.push((subscriber, None));
    }
    let slow_rate = args.slow_rate.filter(|_| extras);
    if let Some(rate) = slow_rate {
        let subscriber = subscribe(addr, status, io_size, None, deadline)
            .await
            .map_err(|error| format!("the slow subscriber: {error}"))?;
        subscribers.push((subscriber, Some(Pace::new(rate))));
    }
    let mut stuck = None;
    if let Some(policy) = args.stuck.filter(|_| extras) {
        let subscriber = subscribe(addr, status, io_size, Some(policy), deadline)
            .await
            .map_err(|error| format!("the stuck subscriber: {error}"))?;
        stuck = Some((subscriber, policy));
    }
    let publisher = connect(addr, deadline)
        .await
        .map_err(|error| format!("publisher: {error}"))?;
    let sampler = pid.map(|pid| RssSampler::start(pid, deadline));
    let relayed = relay(publisher, subscribers, args, deadline).await;
    let rss = sampler.map(RssSampler::finish);
    let (published, mut received) = relayed?;
    let slow = slow_rate.and_then(|_| received.pop());
    let stuck = match stuck {
        Some((client, policy)) => Some(examine(client, policy, status, args.size, deadline).await),
        None => None,
    };
    Ok(Relayed {
        published,
        received,
        slow,
        stuck,
        rss,
        counters: hub_counters(addr, deadline).await,
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

/// Publishes the frame while every subscriber reads it (those with a [`Pace`] no faster than
/// it); fails at the first failure of any side. The results are in the subscribers' order.
async fn relay(
    publisher: TcpStream,
    subscribers: Vec<(HubClient, Option<Pace>)>,
    args: &BigFile,
    deadline: Instant,
) -> Result<(Published, Vec<Received>), String> {
    // Dropping the set (an early return) aborts every task still running.
    let mut tasks = JoinSet::new();
    let count = subscribers.len();
    let (status, size, io_size) = (args.code, args.size, args.io_size);
    let names: Vec<String> = (1..=count)
        .zip(&subscribers)
        .map(|(number, (_, pace))| match pace {
            Some(_) => "the slow subscriber".to_owned(),
            None => format!("subscriber {number}"),
        })
        .collect();
    for (index, (client, pace)) in subscribers.into_iter().enumerate() {
        tasks.spawn(
            async move { Outcome::Received(index, receive(client, status, size, pace).await) },
        );
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
                return Err(format!("{}: {error}", names[index]))
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

    #[test]
    fn slow_rates() {
        assert_eq!(slow_rate("40"), Ok(40.0));
        assert_eq!(slow_rate("2.5"), Ok(2.5));
        for bad in ["0", "-1", "NaN", "inf", "x", "1e7", ""] {
            assert!(slow_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn compare_needs_an_extra_subscriber() {
        use clap::Parser;

        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            big_file: BigFile,
        }
        let parse = |args: &[&str]| Cli::try_parse_from(["big-file"].iter().chain(args));
        assert!(parse(&["--compare"]).is_err());
        assert!(parse(&["--stuck", "fast"]).is_err());
        let cli = parse(&["--compare", "--stuck", "DROP", "--slow-rate", "60"]).expect("valid");
        assert_eq!(cli.big_file.stuck, Some(SlowPolicy::Drop));
        assert_eq!(cli.big_file.slow_rate, Some(60.0));
        assert!(parse(&["--compare", "--slow-rate", "60"]).is_ok());
    }
}
