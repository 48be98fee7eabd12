//! The relay's receiving ends: subscribing (with a slow-consumer policy when asked), reading the
//! frame part by part and checking it ([`FrameCheck`]) at full speed or paced to a rate
//! ([`Pace`]), and, after the relay, what became of a subscriber that read nothing during it
//! ([`examine`]) and the hub's slow-consumer counters ([`hub_counters`]).

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tej_hub::hub::control::{Reply, SlowPolicy};
use tej_hub::hub::{HubClient, HubError};
use tej_hub::stream::Part;
use tej_hub::{CodecError, Limits, Status, TejCodec, PROTOCOL_VERSION};
use tokio_util::codec::Framed;
use xxhash_rust::xxh3::Xxh3Default;

use super::tcp::{connect, connect_limit};
use super::{Received, MESSAGE};
use crate::{before, confirm_sub, limit};

/// What a subscriber accepts: a frame of any size with at most one file, and messages (the
/// frame's, the hub's replies) of at most 64 KiB.
const SUBSCRIBER_LIMITS: Limits = Limits {
    max_frame_bytes: u64::MAX,
    max_files: 1,
    max_message_bytes: 64 * 1024,
};
/// After the relay, how long the stuck subscriber's connection may stay silent between frames
/// before its queue counts as empty. The hub writes whatever it has queued as soon as the socket
/// has room, so a silent second means there is nothing left.
const QUIET: Duration = Duration::from_secs(1);
/// After the relay, how long the stuck subscriber waits for the next part inside a frame, and
/// for the reply to `INFO`.
const EXAMINE_WAIT: Duration = Duration::from_secs(10);

/// A subscriber to `status`, reading with `io_size` reads, whose `SLOW <policy>` (when given) and
/// `SUB` the hub acknowledged.
pub(super) async fn subscribe(
    addr: SocketAddr,
    status: Status,
    io_size: usize,
    policy: Option<SlowPolicy>,
    deadline: Instant,
) -> Result<HubClient, String> {
    let stream = connect(addr, deadline).await?;
    let framed = Framed::with_capacity(stream, TejCodec::new(SUBSCRIBER_LIMITS), io_size);
    let mut client = HubClient::from_framed(framed);
    if let Some(policy) = policy {
        let asked = format!("SLOW {policy}");
        let setting = client.command(&asked);
        let reply = before(connect_limit(deadline), "waiting for the hub", setting)
            .await?
            .map_err(|error| format!("{asked}: {error}"))?;
        if reply != Reply::Slow(policy) {
            return Err(format!("the hub acknowledged {asked} with {reply}"));
        }
    }
    confirm_sub(&mut client, status, connect_limit(deadline)).await?;
    Ok(client)
}

/// Checks a relayed frame part by part against the one the publisher sends (its status, version
/// 1, one file of the size sent, the bench's message) and hashes the file data as it arrives.
struct FrameCheck {
    /// The status the frame is published on.
    status: Status,
    /// The file's size.
    size: u64,
    /// When the frame's head arrived.
    first_byte: Option<Instant>,
    /// File bytes so far.
    file_bytes: u64,
    /// xxh3-128 of the file bytes so far.
    hasher: Xxh3Default,
    /// The message so far (the codec bounds it).
    message: Vec<u8>,
}

impl FrameCheck {
    /// A check of the frame published on `status` with a file of `size` bytes.
    fn new(status: Status, size: u64) -> FrameCheck {
        FrameCheck {
            status,
            size,
            first_byte: None,
            file_bytes: 0,
            hasher: Xxh3Default::new(),
            message: Vec::new(),
        }
    }

    /// Whether the frame's head has arrived.
    fn started(&self) -> bool {
        self.first_byte.is_some()
    }

    /// Takes the next part: `Ok(true)` once it was the frame's end, an error when the frame is
    /// not the one sent.
    fn add(&mut self, part: Part) -> Result<bool, String> {
        let (status, size) = (self.status, self.size);
        match part {
            Part::Head {
                status: got,
                version,
                files,
            } if (got, version, files) != (status, PROTOCOL_VERSION, 1) => {
                return Err(format!(
                    "expected a frame on status {status}, version {PROTOCOL_VERSION}, with 1 \
                     file; got status {got}, version {version}, {files} files"
                ))
            }
            Part::Head { .. } if self.started() => return Err("a second frame head".to_owned()),
            Part::Head { .. } => self.first_byte = Some(Instant::now()),
            Part::FileStart { len, .. } if len != size => {
                return Err(format!("the file announces {len} bytes, {size} were sent"))
            }
            Part::FileData(chunk) => {
                self.hasher.update(&chunk);
                self.file_bytes += chunk.len() as u64;
            }
            Part::MessageData(chunk) => self.message.extend_from_slice(&chunk),
            Part::End if self.message != MESSAGE => {
                return Err(format!(
                    "the message differs: {:?}",
                    String::from_utf8_lossy(&self.message)
                ))
            }
            Part::End => return Ok(true),
            Part::FileStart { .. } | Part::FileEnd { .. } | Part::MessageStart { .. } => {}
        }
        Ok(false)
    }

    /// The frame as received, once [`add`](Self::add) has seen its end.
    fn received(&self) -> Received {
        let end = Instant::now();
        Received {
            first_byte: self.first_byte.unwrap_or(end),
            end,
            hash: self.hasher.digest128(),
        }
    }
}

/// A reading pace: at most a given number of bytes per second, counted from the first call.
pub(super) struct Pace {
    /// The rate.
    bytes_per_s: f64,
    /// When [`until`](Self::until) was first called.
    start: Option<tokio::time::Instant>,
}

impl Pace {
    /// A pace of `mb_per_s` MB/s (10^6 bytes per second), positive.
    pub(super) fn new(mb_per_s: f64) -> Pace {
        Pace {
            bytes_per_s: mb_per_s * 1e6,
            start: None,
        }
    }

    /// Waits until `bytes` are due at this rate; the first call starts the clock.
    async fn until(&mut self, bytes: u64) {
        let start = *self.start.get_or_insert_with(tokio::time::Instant::now);
        let due = Duration::try_from_secs_f64(bytes as f64 / self.bytes_per_s)
            .ok()
            .and_then(|wait| start.checked_add(wait));
        if let Some(due) = due {
            tokio::time::sleep_until(due).await;
        }
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
/// of `size` bytes, and hashes the file data as it arrives; with a `pace`, no faster than it: the
/// next read waits until the bytes read so far are due (so each read takes at most one
/// `--io-size` ahead of the pace).
pub(super) async fn receive(
    mut client: HubClient,
    status: Status,
    size: u64,
    mut pace: Option<Pace>,
) -> Result<Received, String> {
    let mut check = FrameCheck::new(status, size);
    while !check.add(next_part(&mut client).await?)? {
        if let Some(pace) = pace.as_mut() {
            pace.until(check.file_bytes).await;
        }
    }
    Ok(check.received())
}

/// What became of the subscriber that read nothing during the relay.
pub(super) struct Stuck {
    /// Its slow-consumer policy.
    pub(super) policy: SlowPolicy,
    /// File bytes it read after the relay: what the hub had sent it or queued for it.
    pub(super) file_bytes: u64,
    /// xxh3-128 of each whole frame it read after the relay.
    pub(super) frames: Vec<u128>,
    /// How its connection ended up.
    pub(super) end: StuckEnd,
}

/// How the stuck subscriber's connection ended up, seen after the relay.
pub(super) enum StuckEnd {
    /// The hub had closed it: inside a frame (the hub sends no reason after part of a frame),
    /// or between frames with its reason when it gave one (`slow consumer`).
    Closed {
        /// Whether it ended inside a frame.
        mid_frame: bool,
        /// The hub's reason, or how the connection ended (a reset).
        reason: Option<String>,
    },
    /// Still open once its queue was read: what its `INFO` says.
    Open {
        /// Frames the hub skipped for it (`drop`).
        dropped_frames: Option<u64>,
        /// Bytes the hub held for it and had not written.
        pending_bytes: Option<u64>,
    },
    /// Reading it failed or timed out.
    Failed(String),
}

/// After the relay, reads what the hub had queued for the stuck subscriber `client` (checking and
/// hashing any frame as [`receive`] does) until the hub's close, or until its connection stays
/// silent for [`QUIET`] between frames; then asks `INFO`. Every wait is bounded by
/// [`EXAMINE_WAIT`] and `deadline`.
pub(super) async fn examine(
    mut client: HubClient,
    policy: SlowPolicy,
    status: Status,
    size: u64,
    deadline: Instant,
) -> Stuck {
    let mut stuck = Stuck {
        policy,
        file_bytes: 0,
        frames: Vec::new(),
        end: StuckEnd::Failed(String::new()),
    };
    let mut check = FrameCheck::new(status, size);
    stuck.end = loop {
        let mid_frame = check.started();
        let wait = if mid_frame { EXAMINE_WAIT } else { QUIET };
        let reading = tokio::time::timeout_at(limit(deadline, wait).into(), client.next_part());
        let part = match reading.await {
            Ok(Ok(Some(part))) => part,
            Err(_) if mid_frame => {
                let waited = wait.as_secs();
                break StuckEnd::Failed(format!("no byte for {waited}s inside the frame"));
            }
            Err(_) => break ask_info(&mut client, deadline).await,
            Ok(Ok(None)) => {
                break StuckEnd::Closed {
                    mid_frame,
                    reason: None,
                }
            }
            Ok(Err(error)) => break closed_by(error, mid_frame),
        };
        let bytes_before = check.file_bytes;
        let done = check.add(part);
        stuck.file_bytes += check.file_bytes - bytes_before;
        match done {
            Ok(true) => {
                stuck.frames.push(check.received().hash);
                check = FrameCheck::new(status, size);
            }
            Ok(false) => {}
            Err(error) => break StuckEnd::Failed(error),
        }
    };
    stuck
}

/// How reading a connection that failed with `error` ended, `mid_frame` or not.
fn closed_by(error: HubError, mid_frame: bool) -> StuckEnd {
    match error {
        HubError::Closed { reason } => StuckEnd::Closed { mid_frame, reason },
        HubError::Codec(CodecError::Truncated { .. }) => StuckEnd::Closed {
            mid_frame: true,
            reason: None,
        },
        HubError::Io(error) if error.kind() == ErrorKind::ConnectionReset => StuckEnd::Closed {
            mid_frame,
            reason: Some("connection reset".to_owned()),
        },
        error => StuckEnd::Failed(error.to_string()),
    }
}

/// Asks `client`'s session about itself: open, with its `dropped_frames` and `pending_bytes`.
async fn ask_info(client: &mut HubClient, deadline: Instant) -> StuckEnd {
    let asking = client.info();
    match before(limit(deadline, EXAMINE_WAIT), "waiting for INFO", asking).await {
        Ok(Ok(info)) => StuckEnd::Open {
            dropped_frames: Some(info.dropped_frames),
            pending_bytes: Some(info.pending_bytes),
        },
        Ok(Err(error)) => closed_by(error, false),
        Err(error) => StuckEnd::Failed(error),
    }
}

/// The hub's slow-consumer counters (`INFO`'s `hub` object), since it started.
#[derive(Clone, Copy)]
pub(super) struct HubCounters {
    /// Subscribers disconnected as slow consumers.
    pub(super) slow_consumers: Option<u64>,
    /// Frames dropped for slow subscribers.
    pub(super) dropped_frames: Option<u64>,
}

/// The hub's slow-consumer counters, asked on a connection of their own; `None` when the hub
/// does not answer in time.
pub(super) async fn hub_counters(addr: SocketAddr, deadline: Instant) -> Option<HubCounters> {
    let stream = connect(addr, deadline).await.ok()?;
    let mut client = HubClient::from_framed(Framed::new(stream, TejCodec::new(Limits::default())));
    let asking = client.info();
    let info = before(connect_limit(deadline), "waiting for INFO", asking)
        .await
        .ok()?
        .ok()?;
    Some(HubCounters {
        slow_consumers: Some(info.hub.events.slow_consumers),
        dropped_frames: Some(info.hub.events.dropped_frames),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn status() -> Status {
        Status::new(5).expect("5 is a status")
    }

    /// The parts of the frame the publisher sends, with `data` as its file.
    fn parts(data: &'static [u8]) -> Vec<Part> {
        vec![
            Part::Head {
                status: status(),
                version: PROTOCOL_VERSION,
                files: 1,
            },
            Part::FileStart {
                index: 0,
                name: "f".to_owned(),
                len: data.len() as u64,
            },
            Part::FileData(Bytes::from_static(data)),
            Part::FileEnd { index: 0 },
            Part::MessageStart {
                len: MESSAGE.len() as u64,
            },
            Part::MessageData(Bytes::from_static(MESSAGE)),
            Part::End,
        ]
    }

    #[test]
    fn checks_and_hashes_the_frame_sent() {
        let mut check = FrameCheck::new(status(), 3);
        let ends: Vec<bool> = parts(b"abc")
            .into_iter()
            .map(|part| check.add(part).expect("the frame sent"))
            .collect();
        assert_eq!(ends, [false, false, false, false, false, false, true]);
        assert_eq!(check.file_bytes, 3);
        assert_eq!(check.received().hash, xxhash_rust::xxh3::xxh3_128(b"abc"));
    }

    #[test]
    fn refuses_another_frame() {
        let mut wrong_size = FrameCheck::new(status(), 4);
        let results: Vec<_> = parts(b"abc")
            .into_iter()
            .map(|part| wrong_size.add(part))
            .collect();
        assert!(results[1].is_err(), "the file's length is checked");
        let mut other_status = FrameCheck::new(Status::new(6).expect("6"), 3);
        assert!(other_status.add(parts(b"abc").remove(0)).is_err());
        let mut twice = FrameCheck::new(status(), 3);
        assert_eq!(twice.add(parts(b"abc").remove(0)), Ok(false));
        assert!(twice.add(parts(b"abc").remove(0)).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn paces_from_the_first_call() {
        let mut pace = Pace::new(1.0);
        let start = tokio::time::Instant::now();
        pace.until(0).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        pace.until(1_500_000).await;
        let waited = start.elapsed();
        assert!(
            (Duration::from_millis(1500)..Duration::from_millis(1502)).contains(&waited),
            "{waited:?}"
        );
    }
}
