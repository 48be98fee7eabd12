//! The load generator: S subscribers and P publishers over loopback TCP, against the hub (or two
//! clustered hubs, publishers on one and subscribers on the other), the forwarder or a NATS
//! server ([`Endpoint`]), with the same bytes for all.
//!
//! [`measure`] connects the subscribers first and waits until each is in place (the hub's
//! `OK SUB`, the forwarder's count of accepted subscribers, NATS's PONG after `SUB`), then
//! connects the publishers and starts them together. A publisher writes its [`Batch`] about
//! 256 KiB per `write_all` (to NATS: one message per frame), either as fast as the socket takes it
//! (`throughput`) or at a fixed rate (`latency`). Subscribers read 256 KiB at a time, parse with
//! [`Reader`] (NATS: take one message at a time from the client) and keep a [`Tally`]: frames per
//! publisher, sequence numbers going backwards, and (for `latency`) one-way latency samples. Once
//! every publisher is done, each subscriber reads until it has every frame sent, or gives up
//! after [`DRAIN`].

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tej_hub::hub::control::CONTROL;
use tej_hub::Status;
use tej_hub::{ClientTls, MaybeTls};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::forwarder::Ports;
use super::nats::{NatsInbox, NatsOutlet, NatsTarget};
use super::stamp::{frame, Batch, Event, Reader, Stamp};
use super::{LoadError, Pace, Workload};

/// Bytes per `write_all` a publisher aims for, and per read of a subscriber.
pub(super) const IO_BYTES: usize = 256 * 1024;
/// How long subscribers keep reading after the last publisher is done before they count what
/// has not arrived as lost.
const DRAIN: Duration = Duration::from_secs(10);
/// How long one connect or one `SUB` handshake may take.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The queue group's name, on the hub and on NATS.
pub(super) const GROUP: &str = "workers";
/// Latency samples a subscriber keeps at most (8 bytes each); later frames are counted but not
/// sampled.
const MAX_SAMPLES: usize = 16_000_000;

/// What the load runs against.
pub(super) enum Endpoint {
    /// A hub, or two joined in a cluster: publishers connect to one address, subscribers to
    /// the other (the same on one hub), over TLS when given; subscribers send `SUB <code>`.
    Hub(HubAddrs, Option<HubTls>),
    /// The forwarder.
    Forwarder(Ports),
    /// A NATS server: a client per publisher and per subscriber, on the workload's subject.
    Nats(NatsTarget),
}

impl Endpoint {
    /// A publisher's connection.
    async fn publisher(&self) -> Result<Outlet, LoadError> {
        let addr = match self {
            Endpoint::Hub(addrs, tls) => {
                return Ok(Outlet::Tcp(connect(addrs.publishers, tls.as_ref()).await?))
            }
            Endpoint::Forwarder(ports) => ports.publishers,
            Endpoint::Nats(target) => return Ok(Outlet::Nats(target.publisher().await?)),
        };
        Ok(Outlet::Tcp(connect(addr, None).await?))
    }

    /// A subscriber ready to receive: connected, and subscribed to `status` on a hub (or its
    /// subject on NATS), as a member of the queue group [`GROUP`] when `group`.
    async fn subscriber(&self, status: Status, group: bool) -> Result<Inbox, LoadError> {
        let (addr, tls) = match self {
            Endpoint::Hub(addrs, tls) => (addrs.subscribers, tls.as_ref()),
            Endpoint::Forwarder(_) if group => {
                return Err(LoadError::Refused {
                    code: status.code(),
                    reason: "the forwarder has no queue groups".to_owned(),
                })
            }
            Endpoint::Forwarder(ports) => (ports.subscribers, None),
            Endpoint::Nats(target) => {
                let queue = group.then_some(GROUP);
                return Ok(Inbox::Nats(target.subscriber(queue).await?));
            }
        };
        let mut subscriber = Subscriber {
            stream: connect(addr, tls).await?,
            reader: Reader::new(status),
            buf: vec![0; IO_BYTES],
            filled: 0,
        };
        if let Endpoint::Hub(..) = self {
            within(
                CONNECT_TIMEOUT,
                "waiting for OK SUB",
                subscriber.subscribe(status, group),
            )
            .await??;
        }
        Ok(Inbox::Tcp(subscriber))
    }

    /// Waits until the forwarder has accepted `count` subscribers (a hub's have all been
    /// answered already).
    async fn ready(&self, count: usize) -> Result<(), LoadError> {
        if let Endpoint::Forwarder(ports) = self {
            let mut joined = ports.joined.clone();
            within(
                CONNECT_TIMEOUT,
                "waiting for the forwarder to accept the subscribers",
                joined.wait_for(|subscribers| subscribers.len() >= count),
            )
            .await?
            .map_err(|_| LoadError::Gone("the forwarder"))?;
        }
        Ok(())
    }
}

/// Where a hub run's peers connect.
#[derive(Debug, Clone, Copy)]
pub(super) struct HubAddrs {
    /// The publishers' hub.
    pub(super) publishers: SocketAddr,
    /// The subscribers' hub.
    pub(super) subscribers: SocketAddr,
}

impl HubAddrs {
    /// Everyone on the hub at `addr`.
    pub(super) fn one(addr: SocketAddr) -> HubAddrs {
        HubAddrs {
            publishers: addr,
            subscribers: addr,
        }
    }
}

/// `future`'s output, or [`LoadError::Timeout`] after `limit`.
pub(super) async fn within<T>(
    limit: Duration,
    what: &'static str,
    future: impl std::future::Future<Output = T>,
) -> Result<T, LoadError> {
    tokio::time::timeout(limit, future)
        .await
        .map_err(|_| LoadError::Timeout(what))
}

/// How the load reaches a TLS hub: whom to trust, and the name its certificate carries.
#[derive(Clone, Debug)]
pub(super) struct HubTls {
    /// The client's TLS settings.
    pub(super) tls: ClientTls,
    /// The name the hub's certificate must carry.
    pub(super) server_name: String,
}

/// A loopback connection to `addr` with `TCP_NODELAY`, over TLS when `tls` is given.
async fn connect(addr: SocketAddr, tls: Option<&HubTls>) -> Result<MaybeTls, LoadError> {
    let connected = within(CONNECT_TIMEOUT, "connecting", TcpStream::connect(addr)).await?;
    let stream = connected.map_err(|source| LoadError::Connect { addr, source })?;
    stream
        .set_nodelay(true)
        .map_err(|source| LoadError::io("cannot set TCP_NODELAY", source))?;
    let Some(tls) = tls else {
        return Ok(MaybeTls::Plain(stream));
    };
    let handshake = tls.tls.handshake(stream, &tls.server_name);
    let stream = within(CONNECT_TIMEOUT, "the TLS handshake", handshake)
        .await?
        .map_err(|source| LoadError::Connect { addr, source })?;
    Ok(MaybeTls::Tls(Box::new(stream)))
}

/// Nanoseconds from `epoch` until now.
fn since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// What one run measured, before any figure is derived.
pub(super) struct Measured {
    /// When the publishers were started.
    pub(super) start: Instant,
    /// Frames each publisher sent, by publisher id.
    pub(super) sent: Vec<u64>,
    /// When the last publisher had written its last frame.
    pub(super) published: Instant,
    /// Whether `--seconds` stopped a `throughput` publisher before its `--frames`.
    pub(super) capped: bool,
    /// Each subscriber's tally, in connection order.
    pub(super) tallies: Vec<Tally>,
}

/// What one subscriber received.
pub(super) struct Tally {
    /// Per publisher: frames received, the next sequence number expected, and how many went
    /// backwards.
    pub(super) tracks: Vec<Track>,
    /// Frames received in all.
    pub(super) frames: u64,
    /// When the last frame was read.
    pub(super) last: Option<Instant>,
    /// One-way latencies in ns (receive time of the read minus the stamp's send time), when
    /// sampled.
    pub(super) latencies: Option<Vec<u64>>,
    /// Whether it had every frame sent before [`DRAIN`] ran out.
    pub(super) drained: bool,
}

/// One publisher's frames as one subscriber received them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Track {
    /// Frames received.
    pub(super) received: u64,
    /// One past the highest sequence number seen.
    pub(super) next: u64,
    /// Frames whose sequence number was below one already seen.
    pub(super) reordered: u64,
}

impl Tally {
    /// A tally for `publishers` publishers; samples latencies when `sample`.
    pub(super) fn new(publishers: usize, sample: bool) -> Tally {
        Tally {
            tracks: vec![Track::default(); publishers],
            frames: 0,
            last: None,
            latencies: sample.then(Vec::new),
            drained: false,
        }
    }

    /// Counts one frame, read at `now_ns`.
    pub(super) fn add(&mut self, stamp: Stamp, now_ns: u64) -> Result<(), LoadError> {
        let publishers = self.tracks.len();
        let track = usize::try_from(stamp.publisher)
            .ok()
            .and_then(|id| self.tracks.get_mut(id))
            .ok_or(LoadError::UnknownPublisher {
                id: stamp.publisher,
                publishers,
            })?;
        track.received += 1;
        if stamp.seq >= track.next {
            track.next = stamp.seq + 1;
        } else {
            track.reordered += 1;
        }
        self.frames += 1;
        if let Some(latencies) = &mut self.latencies {
            if latencies.len() < MAX_SAMPLES {
                latencies.push(now_ns.saturating_sub(stamp.sent_ns));
            }
        }
        Ok(())
    }
}

/// A subscriber's connection and parser.
struct Subscriber {
    stream: MaybeTls,
    reader: Reader,
    /// The read buffer.
    buf: Vec<u8>,
    /// Bytes of `buf` the last read filled.
    filled: usize,
}

/// Where a subscriber's frames arrive.
enum Inbox {
    /// A TEJ connection to the hub or the forwarder.
    Tcp(Subscriber),
    /// A NATS subscription.
    Nats(NatsInbox),
}

impl Inbox {
    /// Waits until something arrives (bytes, or a NATS message); an error when the peer closed.
    async fn wait(&mut self) -> Result<(), LoadError> {
        match self {
            Inbox::Tcp(subscriber) => {
                subscriber.filled = subscriber.read().await?;
                Ok(())
            }
            Inbox::Nats(inbox) => inbox.wait().await,
        }
    }

    /// Counts in `tally` the frames of what [`wait`](Self::wait) got, read at `now_ns`.
    fn count(&mut self, tally: &mut Tally, now_ns: u64) -> Result<(), LoadError> {
        match self {
            Inbox::Tcp(subscriber) => {
                let bytes = &subscriber.buf[..subscriber.filled];
                subscriber.reader.feed(bytes, |event| match event {
                    Event::Message(stamp) => tally.add(stamp, now_ns),
                    Event::Control(text) => Err(closing(text)),
                })
            }
            Inbox::Nats(inbox) => tally.add(inbox.stamp()?, now_ns),
        }
    }

    /// Reads and tallies until it has `finish.total` frames (a member of a queue group: until
    /// the group has them), or `finish.drain_until` passes once that total is known.
    async fn receive(
        mut self,
        mut tally: Tally,
        epoch: Instant,
        mut finish: watch::Receiver<Option<Finish>>,
        group: Option<Arc<GroupProgress>>,
    ) -> Result<Tally, LoadError> {
        let sample = tally.latencies.is_some();
        let mut complete = group.as_ref().map(|group| group.complete.subscribe());
        loop {
            let known = *finish.borrow_and_update();
            if let Some(finish) = known {
                let have = group
                    .as_ref()
                    .map_or(tally.frames, |group| group.received.load(Ordering::Acquire));
                if have >= finish.total {
                    if let Some(group) = &group {
                        group.complete.send_replace(true);
                    }
                    tally.drained = true;
                    return Ok(tally);
                }
            }
            tokio::select! {
                biased;
                waited = self.wait() => waited?,
                changed = finish.changed(), if known.is_none() => {
                    changed.map_err(|_| LoadError::Gone("the publishers"))?;
                    continue;
                }
                () = completed(complete.as_mut()) => continue,
                () = drain(known) => return Ok(tally),
            };
            let now_ns = if sample { since(epoch) } else { 0 };
            let before = tally.frames;
            self.count(&mut tally, now_ns)?;
            if tally.frames > before {
                tally.last = Some(Instant::now());
                if let Some(group) = &group {
                    group
                        .received
                        .fetch_add(tally.frames - before, Ordering::AcqRel);
                }
            }
        }
    }
}

impl Subscriber {
    /// Sends `SUB <code>` (`SUB <code> group=<GROUP>` when `group`) and reads until the hub
    /// answers it.
    async fn subscribe(&mut self, status: Status, group: bool) -> Result<(), LoadError> {
        let code = status.code();
        let sub = if group {
            format!("SUB {code} group={GROUP}")
        } else {
            format!("SUB {code}")
        };
        let command = frame(CONTROL, sub.as_bytes());
        self.stream
            .write_all(&command)
            .await
            .map_err(|source| LoadError::io("cannot send SUB", source))?;
        let mut reply = None;
        while reply.is_none() {
            let n = self.read().await?;
            self.reader.feed(&self.buf[..n], |event| match event {
                Event::Control(text) => {
                    reply = Some(String::from_utf8_lossy(text).into_owned());
                    Ok(())
                }
                Event::Message(_) => Err(LoadError::Foreign { code }),
            })?;
        }
        match reply {
            Some(reply) if reply == format!("OK {}", &sub) => Ok(()),
            Some(reply) => match reply.strip_prefix("ERR ") {
                Some(reason) => Err(LoadError::Refused {
                    code,
                    reason: reason.to_owned(),
                }),
                None => Err(LoadError::UnexpectedReply { code, reply }),
            },
            None => Err(LoadError::Gone("the hub's reply")),
        }
    }

    /// Reads into the buffer; an error when the peer closed.
    async fn read(&mut self) -> Result<usize, LoadError> {
        match self.stream.read(&mut self.buf).await {
            Ok(0) => Err(LoadError::Closed { reason: None }),
            Ok(n) => Ok(n),
            Err(source) => Err(LoadError::io("read failed", source)),
        }
    }
}

/// What the members of a queue group share: the frames all of them received, and whether the
/// group has every frame sent (set by the member that sees it, to wake the others).
pub(super) struct GroupProgress {
    received: AtomicU64,
    complete: watch::Sender<bool>,
}

/// Completes once a queue group has every frame; never outside a group.
async fn completed(complete: Option<&mut watch::Receiver<bool>>) {
    match complete {
        Some(complete) => {
            if complete.wait_for(|done| *done).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// Completes when the drain time of `finish` has passed; never while it is unknown.
async fn drain(finish: Option<Finish>) {
    match finish {
        Some(finish) => tokio::time::sleep_until(finish.drain_until.into()).await,
        None => std::future::pending().await,
    }
}

/// A control frame in the middle of the relay: the hub's `ERR <reason>` before it closes.
fn closing(text: &[u8]) -> LoadError {
    let text = String::from_utf8_lossy(text);
    LoadError::Closed {
        reason: Some(text.strip_prefix("ERR ").unwrap_or(&text).to_owned()),
    }
}

/// What subscribers learn once every publisher is done.
#[derive(Debug, Clone, Copy)]
struct Finish {
    /// Frames sent by all publishers: what each subscriber should receive.
    total: u64,
    /// When to stop waiting for the rest.
    drain_until: Instant,
}

/// What a publisher did.
struct Sent {
    /// Frames written.
    frames: u64,
    /// When its last write returned.
    end: Instant,
    /// Whether `--seconds` cut it short.
    capped: bool,
    /// Its connection, kept open until the subscribers are done.
    outlet: Outlet,
}

/// A publisher's connection.
enum Outlet {
    /// A TEJ connection to the hub or the forwarder.
    Tcp(MaybeTls),
    /// A NATS client.
    Nats(NatsOutlet),
}

impl Outlet {
    /// Sends `batch`'s first `count` frames, numbered from `first_seq` and dated `sent_ns`: in
    /// writes of about [`IO_BYTES`], or one NATS message per frame's message.
    async fn send(
        &mut self,
        batch: &mut Batch,
        count: usize,
        first_seq: u64,
        sent_ns: u64,
    ) -> Result<(), LoadError> {
        match self {
            Outlet::Tcp(stream) => write(stream, batch.stamp(count, first_seq, sent_ns)).await,
            Outlet::Nats(outlet) => {
                let messages = batch.stamp_messages(count, first_seq, sent_ns);
                outlet.publish(messages).await
            }
        }
    }

    /// Waits until what was sent has left: at once for TCP (the kernel has it), until the
    /// server's PONG for NATS (the client buffers).
    async fn finish(&mut self) -> Result<(), LoadError> {
        match self {
            Outlet::Tcp(_) => Ok(()),
            Outlet::Nats(outlet) => outlet.flush().await,
        }
    }
}

/// Writes `bytes` in pieces of about [`IO_BYTES`] (equal pieces when larger).
async fn write(stream: &mut MaybeTls, bytes: &[u8]) -> Result<(), LoadError> {
    let pieces = bytes.len().div_ceil(IO_BYTES + IO_BYTES / 4).max(1);
    for piece in bytes.chunks(bytes.len().div_ceil(pieces).max(1)) {
        stream
            .write_all(piece)
            .await
            .map_err(|source| LoadError::io("write failed", source))?;
    }
    Ok(())
}

/// Publishes `batch`'s frames as `pace` says (a rate here is this publisher's share), for at
/// most `seconds` from `start`.
async fn publish(
    mut outlet: Outlet,
    mut batch: Batch,
    pace: Pace,
    seconds: Duration,
    start: Instant,
    epoch: Instant,
) -> Result<Sent, LoadError> {
    let stop = start + seconds;
    let mut seq = 0u64;
    let mut capped = false;
    match pace {
        Pace::Frames(frames) => {
            while seq < frames {
                if Instant::now() >= stop {
                    capped = true;
                    break;
                }
                let count = usize::try_from(frames - seq)
                    .map_or(batch.frames(), |left| left.min(batch.frames()));
                outlet.send(&mut batch, count, seq, since(epoch)).await?;
                seq += count as u64;
            }
        }
        Pace::Rate(rate) => {
            // Frames leave one at a time, evenly spaced, on a timerfd clock: tokio's timer ticks
            // every millisecond and would send them in bursts of rate / 1000, measuring the
            // timer rather than the tail.
            let total = (rate * seconds.as_secs_f64()).round() as u64;
            let period = Duration::from_secs_f64(1.0 / rate.max(f64::MIN_POSITIVE));
            let ticker = Ticker::every(period)
                .map_err(|source| LoadError::io("cannot start the pacing clock", source))?;
            while seq < total {
                let ticks = ticker
                    .tick()
                    .await
                    .map_err(|source| LoadError::io("pacing clock failed", source))?;
                // Ticks missed while the runtime was busy are caught up at once.
                let count = usize::try_from(ticks.min(total - seq))
                    .map_or(batch.frames(), |due| due.min(batch.frames()));
                outlet.send(&mut batch, count, seq, since(epoch)).await?;
                seq += count as u64;
            }
        }
    }
    outlet.finish().await?;
    Ok(Sent {
        frames: seq,
        end: Instant::now(),
        capped,
        outlet,
    })
}

/// A clock ticking every `period` to the microsecond: a timerfd behind tokio's `AsyncFd`.
struct Ticker(AsyncFd<OwnedFd>);

impl Ticker {
    fn every(period: Duration) -> io::Result<Ticker> {
        use rustix::time::{
            timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags,
            TimerfdTimerFlags, Timespec,
        };
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        let period = Timespec {
            tv_sec: i64::try_from(period.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(period.subsec_nanos().max(1)),
        };
        let spec = Itimerspec {
            it_interval: period,
            it_value: period,
        };
        timerfd_settime(&fd, TimerfdTimerFlags::empty(), &spec)?;
        // Deprecated because a borrowed descriptor could be closed while registered; this one is
        // owned by the AsyncFd and closed only after it is deregistered.
        #[allow(deprecated)]
        Ok(Ticker(AsyncFd::new(fd)?))
    }

    /// Waits for the next tick; returns how many periods have passed since the last call.
    async fn tick(&self) -> io::Result<u64> {
        loop {
            let mut ready = self.0.readable().await?;
            let mut expirations = [0u8; 8];
            let read = ready.try_io(|fd| {
                rustix::io::read(fd.get_ref(), &mut expirations).map_err(io::Error::from)
            });
            match read {
                Ok(Ok(_)) => return Ok(u64::from_ne_bytes(expirations)),
                Ok(Err(error)) => return Err(error),
                Err(_would_block) => continue,
            }
        }
    }
}

/// How one task of a run ended.
enum Outcome {
    /// Publisher `index` is done, or failed.
    Published(usize, Result<Sent, LoadError>),
    /// Subscriber `index` is done, or failed.
    Received(usize, Result<Tally, LoadError>),
}

/// Runs `workload` once against `endpoint`; fails at the first failure of any side.
pub(super) async fn measure(
    workload: &Workload,
    endpoint: &Endpoint,
) -> Result<Measured, LoadError> {
    let epoch = Instant::now();
    let mut subscribers = Vec::new();
    for index in 0..workload.subscribers {
        let subscriber = endpoint.subscriber(workload.status, workload.group).await;
        subscribers.push(subscriber.map_err(|error| error.at("subscriber", index))?);
    }
    endpoint.ready(workload.subscribers).await?;
    let mut publishers = Vec::new();
    for index in 0..workload.publishers {
        let publisher = endpoint.publisher().await;
        publishers.push(publisher.map_err(|error| error.at("publisher", index))?);
    }

    let (finished, finish) = watch::channel(None);
    let sample = matches!(workload.pace, Pace::Rate(_));
    let group = workload.group.then(|| {
        Arc::new(GroupProgress {
            received: AtomicU64::new(0),
            complete: watch::channel(false).0,
        })
    });
    // Dropping the set (an early return) aborts every task still running.
    let mut tasks = JoinSet::new();
    for (index, subscriber) in subscribers.into_iter().enumerate() {
        let tally = Tally::new(workload.publishers, sample);
        let receiving = subscriber.receive(tally, epoch, finish.clone(), group.clone());
        tasks.spawn(async move { Outcome::Received(index, receiving.await) });
    }
    let start = Instant::now();
    for (index, outlet) in publishers.into_iter().enumerate() {
        let id = u32::try_from(index).map_err(|_| LoadError::Gone("publisher ids"))?;
        let batch = Batch::new(workload.status, workload.size, id, IO_BYTES);
        let pace = match workload.pace {
            Pace::Rate(rate) => Pace::Rate(rate / workload.publishers as f64),
            frames => frames,
        };
        let publishing = publish(outlet, batch, pace, workload.seconds, start, epoch);
        tasks.spawn(async move { Outcome::Published(index, publishing.await) });
    }

    let mut sent: Vec<Option<u64>> = vec![None; workload.publishers];
    let mut tallies: Vec<Option<Tally>> = (0..workload.subscribers).map(|_| None).collect();
    let (mut published, mut capped, mut open) = (start, false, Vec::new());
    while sent.iter().any(Option::is_none) || tallies.iter().any(Option::is_none) {
        let outcome = match tasks.join_next().await {
            Some(Ok(outcome)) => outcome,
            Some(Err(error)) => return Err(LoadError::Task(error.to_string())),
            None => return Err(LoadError::Gone("every bench task")),
        };
        match outcome {
            Outcome::Published(index, Ok(done)) => {
                sent[index] = Some(done.frames);
                published = published.max(done.end);
                capped |= done.capped;
                open.push(done.outlet);
                if sent.iter().all(Option::is_some) {
                    let total = sent.iter().flatten().sum();
                    let drain_until = Instant::now() + DRAIN;
                    finished.send_replace(Some(Finish { total, drain_until }));
                }
            }
            Outcome::Received(index, Ok(tally)) => tallies[index] = Some(tally),
            Outcome::Published(index, Err(error)) => return Err(error.at("publisher", index)),
            Outcome::Received(index, Err(error)) => return Err(error.at("subscriber", index)),
        }
    }
    drop(open);
    Ok(Measured {
        start,
        sent: sent.into_iter().flatten().collect(),
        published,
        capped,
        tallies: tallies.into_iter().flatten().collect(),
    })
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::super::forwarder::Forwarder;
    use super::*;

    fn stamp(publisher: u32, seq: u64, sent_ns: u64) -> Stamp {
        Stamp {
            seq,
            publisher,
            sent_ns,
        }
    }

    #[test]
    fn tallies_count_gaps_reordering_and_strangers() {
        let mut tally = Tally::new(2, true);
        for (publisher, seq) in [(0, 0), (0, 1), (1, 0), (0, 3), (0, 2), (1, 1)] {
            tally.add(stamp(publisher, seq, 100), 350).expect("known");
        }
        assert_eq!(tally.frames, 6);
        assert_eq!(
            tally.tracks[0],
            Track {
                received: 4,
                next: 4,
                reordered: 1
            }
        );
        assert_eq!(tally.tracks[1].reordered, 0);
        assert_eq!(tally.latencies, Some(vec![250; 6]));
        assert!(matches!(
            tally.add(stamp(2, 0, 0), 0),
            Err(LoadError::UnknownPublisher {
                id: 2,
                publishers: 2
            })
        ));
    }

    #[tokio::test]
    async fn writes_about_256_kib_at_a_time() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("an address");
        let reading = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accepts");
            let mut all = Vec::new();
            stream.read_to_end(&mut all).await.expect("reads");
            all
        });
        let mut stream = MaybeTls::Plain(TcpStream::connect(addr).await.expect("connects"));
        let bytes: Vec<u8> = (0..1_100_000u32).map(|i| i as u8).collect();
        write(&mut stream, &bytes).await.expect("writes");
        drop(stream);
        assert_eq!(reading.await.expect("the reader"), bytes);
    }

    /// The whole generator against the forwarder: nothing lost, nothing reordered.
    #[test]
    fn a_run_through_the_forwarder_is_lossless() {
        let forwarder = Forwarder::start(2).expect("starts");
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        for pace in [Pace::Frames(3_000), Pace::Rate(2_000.0)] {
            let workload = Workload {
                publishers: 2,
                subscribers: 3,
                size: 64,
                status: Status::new(9).expect("9"),
                pace,
                seconds: Duration::from_millis(500),
                group: false,
            };
            let measured = runtime
                .block_on(measure(&workload, &Endpoint::Forwarder(forwarder.ports())))
                .expect("measures");
            let per_publisher = match pace {
                Pace::Frames(frames) => frames,
                Pace::Rate(_) => 500,
            };
            assert_eq!(measured.sent, vec![per_publisher; 2]);
            assert_eq!(measured.tallies.len(), 3);
            for tally in &measured.tallies {
                assert!(tally.drained);
                assert_eq!(tally.frames, 2 * per_publisher);
                for track in &tally.tracks {
                    assert_eq!((track.received, track.reordered), (per_publisher, 0));
                }
                let samples = tally.latencies.as_ref().map(Vec::len);
                assert_eq!(samples.is_some(), matches!(pace, Pace::Rate(_)));
            }
        }
        drop(runtime);
        drop(forwarder);
    }

    /// One publisher straight into one subscriber over loopback, nothing in between: what the
    /// load generator itself can do, which must stay above what the hub and the forwarder
    /// deliver (`cargo test --release --bin tej-hub -- --ignored direct_rate --nocapture`).
    #[test]
    #[ignore = "a measurement, not a test"]
    fn direct_rate() {
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        let status = Status::new(5).expect("5");
        for (size, frames) in [(128, 20_000_000), (64 * 1024, 40_000), (1 << 20, 2_500)] {
            runtime.block_on(async {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
                let addr = listener.local_addr().expect("an address");
                let publisher = connect(addr, None).await.expect("connects");
                let (stream, _) = listener.accept().await.expect("accepts");
                let subscriber = Inbox::Tcp(Subscriber {
                    stream: MaybeTls::Plain(stream),
                    reader: Reader::new(status),
                    buf: vec![0; IO_BYTES],
                    filled: 0,
                });
                let epoch = Instant::now();
                let (finished, finish) = watch::channel(None);
                let receiving =
                    tokio::spawn(subscriber.receive(Tally::new(1, false), epoch, finish, None));
                let start = Instant::now();
                let batch = Batch::new(status, size, 0, IO_BYTES);
                let pace = Pace::Frames(frames);
                let sent = publish(
                    Outlet::Tcp(publisher),
                    batch,
                    pace,
                    Duration::from_secs(10),
                    start,
                    epoch,
                )
                .await
                .expect("publishes");
                let drain_until = Instant::now() + DRAIN;
                finished.send_replace(Some(Finish {
                    total: sent.frames,
                    drain_until,
                }));
                let tally = receiving.await.expect("joins").expect("receives");
                assert_eq!(tally.frames, sent.frames);
                let seconds = tally
                    .last
                    .expect("frames")
                    .duration_since(start)
                    .as_secs_f64();
                println!(
                    "direct, {size} B: {:.0} frames/s, {:.0} MB/s",
                    tally.frames as f64 / seconds,
                    tally.frames as f64 * size as f64 / seconds / 1e6
                );
            });
        }
    }
}
