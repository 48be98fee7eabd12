//! The hub's side of `bench durable`: a `tej-hub serve --durable 5 --store-dir DIR
//! --store-sync always|os` the bench spawns, and TEJ clients speaking the durable protocol
//! (docs/benchmarks.md, "Durable codes"):
//!
//! - Publisher: control `PUBACK on` (reply `OK PUBACK on`; an `ERR` means the hub has no durable
//!   codes), then frames on code 5, keeping at most `window` without their reply: one control
//!   frame per durable frame, in publication order: `OK STORED 5 <seq>` (counted as stored),
//!   `ERR store full 5` or any other `ERR` (counted, and the window slot freed).
//! - Consumer: control `SUB 5 durable=<name> from=all` (reply `OK SUB 5 durable=<name> from=all`), then
//!   for each frame the control frame `MSG <name> 5 <seq>` followed by the frame. It acknowledges
//!   cumulatively, `ACK <name> 5 <seq>` with the last sequence read, once after each socket read
//!   that completed at least one frame (so one ACK per read of up to 256 KiB; never more than
//!   the hub has in flight).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tej_hub::hub::control::CONTROL;
use tej_hub::{Frame, Limits, Status, TejCodec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio_util::codec::Decoder;

use super::super::hub::ServerProcess;
use super::{Consume, DurableError, Outcome, Part, Publish};
use crate::load::frame;
use crate::Failure;

/// The durable code.
pub(super) const CODE: u8 = 5;
/// Bytes a publisher writes at most per `write_all`, and a reader reads per `read`.
const IO_BYTES: usize = 256 * 1024;

/// The hub's store sync policy measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sync {
    /// `--store-sync always` (the default: fdatasync with group commit).
    Always,
    /// `--store-sync os` (written to the kernel only).
    Os,
}

impl Sync {
    /// `always` or `os`.
    pub(super) fn name(self) -> &'static str {
        match self {
            Sync::Always => "always",
            Sync::Os => "os",
        }
    }
}

/// A spawned durable hub; killed when dropped.
pub(super) struct DurableHub {
    server: ServerProcess,
}

/// Why the hub cannot be measured for durability.
pub(super) enum Missing {
    /// The hub has no durable codes: it refused the flags or `PUBACK on`.
    NoDurability(String),
    /// Anything else.
    Failed(Failure),
}

impl DurableHub {
    /// Spawns `tej-hub serve --listen 127.0.0.1:0 --durable 5 --store-dir <store> --store-sync
    /// <sync>`; a hub that refuses the flags has no durable codes.
    pub(super) fn spawn(store: &Path, sync: Sync, deadline: Instant) -> Result<Self, Missing> {
        let extra = [
            "--durable".to_owned(),
            CODE.to_string(),
            "--store-dir".to_owned(),
            store.display().to_string(),
            "--store-sync".to_owned(),
            sync.name().to_owned(),
        ];
        match ServerProcess::hub(&extra, deadline) {
            Ok(server) => Ok(DurableHub { server }),
            // clap's words for a flag it does not know.
            Err(Failure::Failed(error)) if error.contains("unexpected argument") => Err(
                Missing::NoDurability(format!("serve refused --durable: {}", first_line(&error))),
            ),
            Err(failure) => Err(Missing::Failed(failure)),
        }
    }

    /// What the hub's exit and last log lines say.
    pub(super) fn explain(&mut self) -> String {
        self.server.explain()
    }

    /// Asks `PUBACK on` once on a connection of its own: `Ok(None)` when the hub answers
    /// `OK PUBACK on`, `Ok(Some(reply))` when it refuses.
    pub(super) async fn probe(&self, stall: Duration) -> Result<Option<String>, DurableError> {
        probe(self.server.addr(), stall).await
    }

    /// [`publish`] on this hub.
    pub(super) async fn publish(&self, spec: &Publish) -> Result<Outcome, DurableError> {
        publish(self.server.addr(), spec).await
    }

    /// [`consume`] on this hub.
    pub(super) async fn consume(
        &self,
        spec: &Consume,
        prefix: &str,
    ) -> Result<Outcome, DurableError> {
        consume(self.server.addr(), spec, prefix).await
    }
}

/// Asks the hub at `addr` `PUBACK on` once on a connection of its own: `Ok(None)` when the hub
/// answers `OK PUBACK on`, `Ok(Some(reply))` when it refuses.
async fn probe(addr: SocketAddr, stall: Duration) -> Result<Option<String>, DurableError> {
    let mut peer = Peer::connect(addr, stall).await?;
    let reply = peer.command("PUBACK on", stall).await?;
    Ok((reply != "OK PUBACK on").then_some(reply))
}

/// `spec.publishers` publishers on the hub at `addr`, each keeping `spec.window` frames without their reply, for
/// `spec.seconds`.
async fn publish(addr: SocketAddr, spec: &Publish) -> Result<Outcome, DurableError> {
    let mut peers = Vec::new();
    for _ in 0..spec.publishers {
        let mut peer = Peer::connect(addr, spec.stall).await?;
        let reply = peer.command("PUBACK on", spec.stall).await?;
        if reply != "OK PUBACK on" {
            return Err(DurableError::Refused {
                command: "PUBACK on",
                reply,
            });
        }
        peers.push(peer);
    }
    let start = Instant::now();
    let stop = start + spec.seconds;
    let mut tasks = tokio::task::JoinSet::new();
    for peer in peers {
        tasks.spawn(publish_one(peer, spec.size, spec.window, spec.stall, stop));
    }
    Outcome::gather(tasks, spec.size, start).await
}

/// `spec.consumers` durable subscriptions on the hub at `addr`, named `<prefix><i>`, each reading from the start
/// until `spec.expect` frames, `spec.seconds` or a stall.
async fn consume(addr: SocketAddr, spec: &Consume, prefix: &str) -> Result<Outcome, DurableError> {
    let mut peers = Vec::new();
    for index in 0..spec.consumers {
        let name = format!("{prefix}{index}");
        let mut peer = Peer::connect(addr, spec.stall).await?;
        let reply = peer
            .command(&format!("SUB {CODE} durable={name} from=all"), spec.stall)
            .await?;
        if reply != format!("OK SUB {CODE} durable={name} from=all") {
            return Err(DurableError::Refused {
                command: "SUB durable",
                reply,
            });
        }
        peers.push((peer, name));
    }
    let start = Instant::now();
    let stop = start + spec.seconds;
    let mut tasks = tokio::task::JoinSet::new();
    for (peer, name) in peers {
        tasks.spawn(consume_one(
            peer,
            name,
            spec.size,
            spec.expect,
            spec.stall,
            stop,
        ));
    }
    Outcome::gather(tasks, spec.size, start).await
}

/// The first line of a (multi-line) error.
fn first_line(text: &str) -> &str {
    text.lines()
        .find(|line| line.contains("unexpected argument"))
        .unwrap_or(text)
        .trim()
}

/// A TEJ connection to the hub: what it reads, and its writing half.
struct Peer {
    inbound: Inbound,
    write: OwnedWriteHalf,
}

/// A connection's reading half: a decoder and what was read but not decoded.
struct Inbound {
    read: OwnedReadHalf,
    codec: TejCodec,
    buf: BytesMut,
}

impl Peer {
    async fn connect(addr: SocketAddr, stall: Duration) -> Result<Peer, DurableError> {
        let stream = tokio::time::timeout(stall, TcpStream::connect(addr))
            .await
            .map_err(|_| DurableError::Timeout("connecting to the hub"))?
            .map_err(|source| DurableError::Io {
                what: "cannot connect to the hub",
                source,
            })?;
        // Commands and acknowledgements are small: not held back for the peer's delayed ack.
        let _ = stream.set_nodelay(true);
        let (read, write) = stream.into_split();
        Ok(Peer {
            inbound: Inbound {
                read,
                codec: TejCodec::new(Limits::default()),
                buf: BytesMut::with_capacity(IO_BYTES),
            },
            write,
        })
    }

    /// Sends the control command `text`.
    async fn send(&mut self, text: &str) -> Result<(), DurableError> {
        self.write
            .write_all(&frame(CONTROL, text.as_bytes()))
            .await
            .map_err(|source| DurableError::Io {
                what: "cannot send a command",
                source,
            })
    }

    /// Sends `text` and returns the first control frame that answers it.
    async fn command(&mut self, text: &str, stall: Duration) -> Result<String, DurableError> {
        self.send(text).await?;
        loop {
            let frame = self.inbound.next(stall).await?;
            if frame.status == CONTROL {
                return Ok(String::from_utf8_lossy(&frame.message).into_owned());
            }
        }
    }
}

impl Inbound {
    /// The next whole frame, waiting at most `stall` for each read.
    async fn next(&mut self, stall: Duration) -> Result<Frame, DurableError> {
        loop {
            if let Some(frame) = self.decoded()? {
                return Ok(frame);
            }
            self.fill(stall).await?;
        }
    }

    /// A frame already whole in the buffer.
    fn decoded(&mut self) -> Result<Option<Frame>, DurableError> {
        self.codec
            .decode(&mut self.buf)
            .map_err(|error| DurableError::Protocol(format!("undecodable frame: {error}")))
    }

    /// Reads once more into the buffer.
    async fn fill(&mut self, stall: Duration) -> Result<(), DurableError> {
        self.buf.reserve(IO_BYTES);
        let read = tokio::time::timeout(stall, self.read.read_buf(&mut self.buf))
            .await
            .map_err(|_| DurableError::Stalled(stall))?
            .map_err(|source| DurableError::Io {
                what: "read failed",
                source,
            })?;
        if read == 0 {
            return Err(DurableError::Protocol(
                "the hub closed the connection".to_owned(),
            ));
        }
        Ok(())
    }
}

/// Publishes until `stop`, never more than `window` frames without their reply; then waits
/// (each wait bounded by `stall`) for the replies still owed.
async fn publish_one(
    peer: Peer,
    size: usize,
    window: usize,
    stall: Duration,
    stop: Instant,
) -> Result<Part, DurableError> {
    let Peer { inbound, mut write } = peer;
    let status = Status::new(CODE).unwrap_or_default();
    let one = frame(status, &vec![0x5a; size]);
    let per_write = (IO_BYTES / one.len()).clamp(1, window);
    let batch = one.repeat(per_write);
    let slots = Arc::new(Semaphore::new(window));
    let (sent_tx, sent_rx) = watch::channel(None);
    let reading = tokio::spawn(read_replies(inbound, slots.clone(), sent_rx, stall));
    let mut sent = 0u64;
    let mut write_stalled = None;
    while Instant::now() < stop {
        // A hub that stops answering leaves no slot: the reader reports the stall.
        let Ok(Ok(permit)) = tokio::time::timeout(stall, slots.acquire()).await else {
            break;
        };
        permit.forget();
        let more = slots.available_permits().min(per_write - 1);
        let more = match slots.try_acquire_many(u32::try_from(more).unwrap_or(0)) {
            Ok(permits) if more > 0 => {
                permits.forget();
                more
            }
            _ => 0,
        };
        let count = 1 + more;
        let writing = write.write_all(&batch[..count * one.len()]);
        match tokio::time::timeout(stall, writing).await {
            Ok(written) => written.map_err(|source| DurableError::Io {
                what: "publishing failed",
                source,
            })?,
            Err(_) => {
                write_stalled = Some(format!(
                    "stalled: the hub read nothing for {}s",
                    stall.as_secs_f64()
                ));
                break;
            }
        }
        sent += count as u64;
    }
    // Frames of a write cut short may or may not have reached the hub: the reader stops at the
    // stall bound whatever it is owed.
    sent_tx.send_replace(Some(if write_stalled.is_some() {
        u64::MAX
    } else {
        sent
    }));
    let mut part = reading
        .await
        .map_err(|error| DurableError::Task(error.to_string()))??;
    if write_stalled.is_some() {
        part.stalled = write_stalled;
    }
    drop(write);
    Ok(part)
}

/// Reads a publisher's replies, one per frame in order, freeing a window slot for each, until
/// the publisher has said how many it sent and each has its reply, or a read stalls.
async fn read_replies(
    mut inbound: Inbound,
    slots: Arc<Semaphore>,
    mut sent: watch::Receiver<Option<u64>>,
    stall: Duration,
) -> Result<Part, DurableError> {
    let mut part = Part::default();
    let mut answered = 0u64;
    loop {
        if let Some(total) = *sent.borrow_and_update() {
            if answered >= total {
                return Ok(part);
            }
        }
        let frame = tokio::select! {
            frame = inbound.next(stall) => frame,
            changed = sent.changed() => {
                changed.map_err(|_| DurableError::Task("the publisher ended".to_owned()))?;
                continue;
            }
        };
        let frame = match frame {
            Ok(frame) => frame,
            Err(DurableError::Stalled(_)) => {
                part.stalled = Some(format!(
                    "stalled: no reply for {}s after {answered} replies",
                    stall.as_secs_f64()
                ));
                return Ok(part);
            }
            Err(error) => return Err(error),
        };
        if frame.status != CONTROL {
            continue;
        }
        let text = String::from_utf8_lossy(&frame.message);
        answered += 1;
        slots.add_permits(1);
        if text.starts_with(&format!("OK STORED {CODE} ")) {
            part.frames += 1;
            part.last = Some(Instant::now());
        } else if text.starts_with("ERR store full") {
            part.refused += 1;
        } else {
            part.errors += 1;
        }
    }
}

/// Reads a durable subscription until `expect` frames, `stop` or a stall; acknowledges
/// cumulatively after each read that completed a frame.
async fn consume_one(
    peer: Peer,
    name: String,
    size: usize,
    expect: u64,
    stall: Duration,
    stop: Instant,
) -> Result<Part, DurableError> {
    let Peer {
        mut inbound,
        mut write,
    } = peer;
    let mut part = Part::default();
    let header = format!("MSG {name} {CODE} ");
    // The sequence announced by the last `MSG`, owed its frame.
    let mut announced: Option<u64> = None;
    let mut acked = 0u64;
    let mut last_seq = 0u64;
    while part.frames < expect && Instant::now() < stop {
        while let Some(frame) = inbound.decoded()? {
            if frame.status == CONTROL {
                let text = String::from_utf8_lossy(&frame.message);
                let Some(seq) = text.strip_prefix(&header) else {
                    return Err(DurableError::Protocol(format!(
                        "expected {header}<seq>, got {text:?}"
                    )));
                };
                announced =
                    Some(seq.trim().parse().map_err(|_| {
                        DurableError::Protocol(format!("a bad sequence in {text:?}"))
                    })?);
                continue;
            }
            let Some(seq) = announced.take() else {
                return Err(DurableError::Protocol("a frame without its MSG".to_owned()));
            };
            if frame.message.len() != size || !frame.files.is_empty() {
                part.errors += 1;
            }
            last_seq = seq;
            part.frames += 1;
            part.last = Some(Instant::now());
        }
        if last_seq > acked {
            let ack = frame(CONTROL, format!("ACK {name} {CODE} {last_seq}").as_bytes());
            write
                .write_all(&ack)
                .await
                .map_err(|source| DurableError::Io {
                    what: "cannot send ACK",
                    source,
                })?;
            acked = last_seq;
        }
        if part.frames >= expect {
            break;
        }
        match inbound.fill(stall).await {
            Ok(()) => {}
            Err(DurableError::Stalled(_)) => {
                part.stalled = Some(format!(
                    "stalled: nothing for {}s after {} of {expect} frames",
                    stall.as_secs_f64(),
                    part.frames
                ));
                break;
            }
            Err(error) => return Err(error),
        }
    }
    Ok(part)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use bytes::Bytes;
    use tokio::net::TcpListener;

    use super::*;

    /// Frames a fake hub sends a durable subscriber before it waits for an `ACK`.
    const FAKE_WINDOW: u64 = 8;

    /// A fake hub speaking the durable protocol as docs/benchmarks.md describes it (with
    /// `durable`), or refusing `PUBACK on` as a hub without durable codes does: enough to check
    /// the bench's side of it until the hub has it.
    async fn fake_hub(durable: bool) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("an address");
        let store: Arc<Mutex<Vec<Bytes>>> = Arc::default();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, store.clone(), durable));
            }
        });
        addr
    }

    async fn serve(stream: TcpStream, store: Arc<Mutex<Vec<Bytes>>>, durable: bool) {
        let (read, mut write) = stream.into_split();
        let mut inbound = Inbound {
            read,
            codec: TejCodec::new(Limits::default()),
            buf: BytesMut::new(),
        };
        let stall = Duration::from_secs(5);
        let reply = |text: String| frame(CONTROL, text.as_bytes());
        while let Ok(incoming) = inbound.next(stall).await {
            if incoming.status != CONTROL {
                let seq = {
                    let mut store = store.lock().expect("the store");
                    store.push(incoming.message.clone());
                    store.len()
                };
                let _ = write
                    .write_all(&reply(format!("OK STORED {CODE} {seq}")))
                    .await;
                continue;
            }
            let text = String::from_utf8_lossy(&incoming.message).into_owned();
            if text.starts_with("ACK ") {
                // A successful ACK has no reply.
            } else if text == "PUBACK on" && durable {
                let _ = write.write_all(&reply("OK PUBACK on".to_owned())).await;
            } else if let Some(name) = text
                .strip_prefix(&format!("SUB {CODE} durable="))
                .and_then(|rest| rest.strip_suffix(" from=all"))
            {
                let name = name.to_owned();
                let _ = write
                    .write_all(&reply(format!("OK SUB {CODE} durable={name} from=all")))
                    .await;
                let frames = store.lock().expect("the store").clone();
                let mut acked = 0u64;
                for (seq, message) in (1u64..).zip(frames) {
                    while seq > acked + FAKE_WINDOW {
                        let Ok(ack) = inbound.next(stall).await else {
                            return;
                        };
                        let ack = String::from_utf8_lossy(&ack.message).into_owned();
                        let prefix = format!("ACK {name} {CODE} ");
                        acked = ack
                            .strip_prefix(&prefix)
                            .and_then(|seq| seq.parse().ok())
                            .expect("a cumulative ACK");
                    }
                    let status = Status::new(CODE).expect("5");
                    let mut bytes = reply(format!("MSG {name} {CODE} {seq}"));
                    bytes.extend_from_slice(&frame(status, &message));
                    if write.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
            } else {
                let _ = write
                    .write_all(&reply(format!("ERR unknown command {text}")))
                    .await;
            }
        }
    }

    /// Publishers keep their window and count every `OK STORED`; consumers read every stored
    /// frame once, after its `MSG`, and acknowledge cumulatively so the hub's window moves.
    #[tokio::test]
    async fn publishes_and_consumes_with_acknowledgements() {
        let addr = fake_hub(true).await;
        let stall = Duration::from_secs(5);
        assert_eq!(probe(addr, stall).await.expect("answers"), None);
        let spec = Publish {
            publishers: 2,
            size: 100,
            window: 16,
            seconds: Duration::from_millis(300),
            stall,
        };
        let published = publish(addr, &spec).await.expect("publishes");
        assert!(published.frames > 0, "{published:?}");
        assert_eq!((published.errors, published.refused), (0, 0));
        assert!(published.stalled.is_empty(), "{published:?}");
        let spec = Consume {
            consumers: 2,
            size: 100,
            expect: published.frames,
            seconds: Duration::from_secs(30),
            stall,
        };
        let consumed = consume(addr, &spec, "test").await.expect("consumes");
        assert_eq!(consumed.frames, 2 * published.frames, "{consumed:?}");
        assert_eq!(consumed.errors, 0);
        assert!(consumed.stalled.is_empty(), "{consumed:?}");
    }

    /// A hub without durable codes answers `PUBACK on` with `ERR`: found at once, not waited
    /// for; a consumer of a hub that stops sending is reported as stalled.
    #[tokio::test]
    async fn a_hub_without_durability_and_a_stall_are_reported() {
        let addr = fake_hub(false).await;
        let stall = Duration::from_millis(300);
        let reply = probe(addr, stall).await.expect("answers");
        assert_eq!(reply.as_deref(), Some("ERR unknown command PUBACK on"));

        // A consumer told to expect more than is stored stalls once it has what there is.
        let addr = fake_hub(true).await;
        let spec = Publish {
            publishers: 1,
            size: 20,
            window: 4,
            seconds: Duration::from_millis(50),
            stall,
        };
        let published = publish(addr, &spec).await.expect("publishes");
        let spec = Consume {
            consumers: 1,
            size: 20,
            expect: published.frames + 1,
            seconds: Duration::from_secs(30),
            stall,
        };
        let consumed = consume(addr, &spec, "late").await.expect("consumes");
        assert_eq!(consumed.frames, published.frames);
        assert_eq!(consumed.stalled.len(), 1, "{consumed:?}");
    }
}
