//! One attached code's feed: the task that gives a durable subscriber its stored frames.
//!
//! It reads the code's log from the cursor on tokio's blocking pool (a batch of small frames, or
//! one chunk of a large one, per call), and offers each frame to the subscriber's outbox as the
//! publisher of its own identity: a small frame travels as one piece with its `MSG` notice in
//! front (nothing can come between them), a large one as a streamed frame whose first piece
//! starts with the notice, read and offered a chunk at a time, in bounded memory. Before each
//! piece it waits until the subscriber has room for it, whatever the subscriber's slow-consumer
//! policy: a durable subscriber is never dropped from or cut for being slow, it is fed slower.
//!
//! A frame read back whose checksum fails is never completed: a small one is not sent, a large
//! one's last piece is withheld and the subscriber is closed (the cut frame is its sign).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::frame::Status;
use crate::hub::control::{GroupName, Reply};
use crate::hub::delivery::flow::Gate;
use crate::hub::delivery::outbox::{FileRange, Offer, Outbox};
use crate::hub::delivery::publisher::Publisher;
use crate::hub::delivery::relay::{Piece, PieceKind, CHUNK};
use crate::hub::durable::{DurableCounters, Durables, InFlight, Window};
use crate::hub::session::{KickReason, SessionId};
use crate::hub::store::{CodeLimits, Position, StoreReader, StoredFrame};

/// Most frames one blocking read returns.
const BATCH_FRAMES: usize = 256;
/// How often a feed looks at what the subscriber has written and what `ack_wait` expired.
const MAX_TICK: Duration = Duration::from_millis(250);
/// How long a feed waits before it looks again at a subscriber with no room for a frame larger
/// than half its high-water mark (such a frame needs an empty queue, which no gate announces).
const ROOM_RECHECK: Duration = Duration::from_millis(2);
/// Largest file range queued at once for `sendfile` (the backlog counts it until written).
const FILE_RANGE: u64 = 4 * CHUNK as u64;
/// How long a feed waits after a failed read before it tries again.
const READ_RETRY: Duration = Duration::from_secs(1);

/// Everything one code's feed needs.
pub(crate) struct Feed {
    /// The cursor.
    pub name: GroupName,
    /// The code.
    pub status: Status,
    /// The feed's identity as a publisher to the subscriber's outbox.
    pub id: SessionId,
    /// The cursors, for positions and the store.
    pub durables: Arc<Durables>,
    /// The subscriber.
    pub outbox: Arc<Outbox>,
    /// Frames delivered and not acknowledged, shared with the session's `ACK`s.
    pub window: Rc<RefCell<Window>>,
    /// Woken when an acknowledgement made room.
    pub wake: Rc<Notify>,
    /// The code's `ack_wait`, `max_deliver` and `dead_letter`.
    pub limits: CodeLimits,
    /// Publishes frames delivered `max_deliver` times on the dead-letter code.
    pub dead_letters: Option<Publisher>,
    /// The hub's durable delivery counters.
    pub counters: Arc<DurableCounters>,
}

/// A frame read for delivery.
enum Loaded {
    /// Small frames read whole, each with its notice in front, back to back in `bytes`: one
    /// piece, one write. Each frame comes with where its bytes end in `bytes`.
    Run {
        frames: Vec<(StoredFrame, usize)>,
        bytes: Bytes,
    },
    /// A small frame, read whole, with its notice in front.
    Whole { frame: StoredFrame, bytes: Bytes },
    /// A large frame: read a chunk at a time while it is offered.
    Large(StoredFrame),
}

/// What became of an attempt to deliver.
#[derive(PartialEq, Eq)]
enum Delivered {
    /// Offered whole.
    Yes,
    /// The frame is gone from the log (retention) or does not check out: settled unsent.
    Skipped,
    /// The subscriber is going away: the feed ends.
    Gone,
}

/// Runs `feed` until its subscriber goes away or the session cancels it.
pub(crate) async fn feed(mut feed: Feed) {
    let store = feed.durables.store().clone();
    let start = feed.window.borrow().acked.saturating_add(1);
    let (Ok(mut reader), Some(mut stored)) = (
        store.reader(feed.status, Position::Seq(start)),
        store.watch(feed.status),
    ) else {
        return;
    };
    let gate = Gate::new();
    let done = feed.outbox.done();
    let tick = (feed.limits.ack_wait / 4).clamp(Duration::from_millis(10), MAX_TICK);
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if feed.redeliver_expired(&gate).await == Delivered::Gone {
            return;
        }
        let room = {
            let window = feed.window.borrow();
            if window.has_room() {
                super::WINDOW_FRAMES - window.in_flight.len().min(super::WINDOW_FRAMES - 1)
            } else {
                0
            }
        };
        if room == 0 {
            tokio::select! {
                () = feed.wake.notified() => {}
                _ = ticker.tick() => {}
                () = done.cancelled() => return,
            }
            continue;
        }
        let notice = feed.notice_prefix();
        let read = tokio::task::spawn_blocking(move || {
            let batch = read_batch(&mut reader, room.min(BATCH_FRAMES), &notice);
            (reader, batch)
        })
        .await;
        let Ok((back, batch)) = read else {
            return;
        };
        reader = back;
        let batch = match batch {
            Ok(batch) => batch,
            Err(error) => {
                warn!(durable = %feed.name, status = %feed.status, %error, "durable read failed");
                tokio::time::sleep(READ_RETRY).await;
                continue;
            }
        };
        if batch.is_empty() {
            tokio::select! {
                changed = stored.changed() => if changed.is_err() { return },
                () = feed.wake.notified() => {}
                _ = ticker.tick() => {}
                () = done.cancelled() => return,
            }
            continue;
        }
        for loaded in batch {
            if feed.deliver(loaded, 1, &gate).await == Delivered::Gone {
                return;
            }
        }
    }
}

/// Up to `most` committed frames from `reader`: small ones read whole (CRC checked) with their
/// notice in front, gathered into runs, up to one chunk of bytes in all; a frame that does not
/// check out is left for the delivery to settle, unsent; a large one ends the batch unread.
fn read_batch(
    reader: &mut StoreReader,
    most: usize,
    notice: &NoticePrefix,
) -> Result<Vec<Loaded>, crate::hub::store::StoreError> {
    let mut batch = Vec::new();
    let mut run = BytesMut::new();
    let mut frames = Vec::new();
    let mut large = None;
    let mut count = 0;
    while count < most && run.len() < CHUNK {
        let Some(frame) = reader.next_frame()? else {
            break;
        };
        count += 1;
        if frame.len > CHUNK as u64 {
            large = Some(frame);
            break;
        }
        let checked = append_checked(&mut run, &frame, reader.buffered(&frame), notice).map_err(
            |source| crate::hub::store::StoreError::Io {
                path: "durable read".into(),
                source,
            },
        )?;
        if checked {
            frames.push((frame, run.len()));
            continue;
        }
        if !frames.is_empty() {
            batch.push(Loaded::Run {
                frames: std::mem::take(&mut frames),
                bytes: run.split().freeze(),
            });
        }
        batch.push(Loaded::Whole {
            frame,
            bytes: Bytes::new(),
        });
    }
    if !frames.is_empty() {
        batch.push(Loaded::Run {
            frames,
            bytes: run.freeze(),
        });
    }
    batch.extend(large.map(Loaded::Large));
    Ok(batch)
}

/// The notice's wire bytes up to the sequence number, which differs per frame.
#[derive(Clone)]
struct NoticePrefix {
    name: GroupName,
    status: Status,
}

impl NoticePrefix {
    /// `MSG <name> <code> <seq>` as a control frame's wire bytes.
    fn wire(&self, seq: u64) -> Bytes {
        let mut wire = BytesMut::new();
        self.put(seq, &mut wire);
        wire.freeze()
    }

    /// Appends the notice of frame `seq` to `dst`.
    fn put(&self, seq: u64, dst: &mut BytesMut) {
        Reply::Msg {
            name: self.name.clone(),
            status: self.status,
            seq,
        }
        .put_wire(dst);
    }
}

/// The notice of `frame` followed by its bytes, read and checked; `None` when they do not match
/// their checksum.
fn read_whole(frame: &StoredFrame, notice: &NoticePrefix) -> std::io::Result<Option<Bytes>> {
    let mut bytes = BytesMut::new();
    Ok(append_checked(&mut bytes, frame, None, notice)?.then(|| bytes.freeze()))
}

/// Appends `frame`'s notice and bytes to `run` (the bytes from `buffered` when the reader has
/// them, else read); whether they match their checksum (when not, `run` is left as it was).
fn append_checked(
    run: &mut BytesMut,
    frame: &StoredFrame,
    buffered: Option<&[u8]>,
    notice: &NoticePrefix,
) -> std::io::Result<bool> {
    let start = run.len();
    notice.put(frame.seq, run);
    let body = run.len();
    match buffered {
        Some(bytes) => run.extend_from_slice(bytes),
        None => {
            let len = usize::try_from(frame.len).unwrap_or(usize::MAX);
            run.resize(body + len, 0);
            if let Err(error) = read_exactly(frame, 0, &mut run[body..]) {
                run.truncate(start);
                return Err(error);
            }
        }
    }
    let checked = crc32c::crc32c(&run[body..]) == frame.crc;
    if !checked {
        run.truncate(start);
    }
    Ok(checked)
}

/// Fills `buf` with `frame`'s bytes from `at`.
fn read_exactly(frame: &StoredFrame, at: u64, buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = frame.read_at(at + filled as u64, &mut buf[filled..])?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        filled += n;
    }
    Ok(())
}

/// Where a delivered frame goes: the subscriber, or the dead-letter code.
enum Target<'a> {
    Subscriber,
    DeadLetter(&'a mut Publisher),
}

impl Feed {
    fn notice_prefix(&self) -> NoticePrefix {
        NoticePrefix {
            name: self.name.clone(),
            status: self.status,
        }
    }

    /// Offers `loaded` to the subscriber as its `deliveries`-th delivery and records it in the
    /// window.
    async fn deliver(&mut self, loaded: Loaded, deliveries: u32, gate: &Arc<Gate>) -> Delivered {
        let (frame, delivered) = match loaded {
            Loaded::Run { frames, bytes } => {
                let len = bytes.len() as u64;
                let piece = Piece {
                    status: self.status,
                    kind: PieceKind::Whole,
                    frames: u32::try_from(frames.len() * 2).unwrap_or(u32::MAX),
                    bytes,
                };
                let delivered = self.offer(&piece, gate).await;
                if delivered == Delivered::Yes {
                    let end = self.outbox.bytes_out() + self.outbox.pending();
                    for (frame, frame_end) in frames {
                        let written_at_bytes = end.saturating_sub(len - frame_end as u64);
                        self.in_flight(&frame, deliveries, written_at_bytes);
                    }
                }
                return delivered;
            }
            Loaded::Whole { frame, bytes } if bytes.is_empty() => {
                self.corrupt(&frame);
                return self.settle(frame.seq);
            }
            Loaded::Whole { frame, bytes } => {
                let piece = Piece {
                    status: self.status,
                    kind: PieceKind::Whole,
                    frames: 2,
                    bytes,
                };
                let delivered = self.offer(&piece, gate).await;
                (frame, delivered)
            }
            Loaded::Large(frame) => {
                let delivered = self.stream(&frame, Target::Subscriber, gate).await;
                (frame, delivered)
            }
        };
        if delivered != Delivered::Yes {
            return match delivered {
                Delivered::Skipped => self.settle(frame.seq),
                other => other,
            };
        }
        let written_at_bytes = self.outbox.bytes_out() + self.outbox.pending();
        self.in_flight(&frame, deliveries, written_at_bytes);
        Delivered::Yes
    }

    /// Records `frame` in the window as delivered, its last byte written once the subscriber's
    /// wire has carried `written_at_bytes`.
    fn in_flight(&self, frame: &StoredFrame, deliveries: u32, written_at_bytes: u64) {
        let mut window = self.window.borrow_mut();
        let deliveries = deliveries.max(
            window
                .carried
                .get(&frame.seq)
                .map_or(1, |carried| carried + 1),
        );
        DurableCounters::add(&self.counters.delivered, 1);
        window.insert(
            frame.seq,
            InFlight {
                len: frame.len,
                deliveries,
                written_at_bytes,
                written: None,
            },
        );
    }

    /// Waits until the subscriber has room for `len` more bytes (`continuing` the frame on its
    /// wire); `false` when it went away meanwhile.
    async fn room_for(&self, len: u64, continuing: bool, gate: &Arc<Gate>) -> bool {
        let done = self.outbox.done();
        while self.outbox.hold_back_until_room(gate, len, continuing) {
            tokio::select! {
                () = std::future::poll_fn(|cx| gate.poll_open(cx)), if gate.is_closed() => {}
                () = tokio::time::sleep(ROOM_RECHECK), if !gate.is_closed() => {}
                () = done.cancelled() => return false,
            }
        }
        true
    }

    /// Waits until the subscriber has room for `piece`, then offers it.
    async fn offer(&self, piece: &Piece, gate: &Arc<Gate>) -> Delivered {
        let continuing = !piece.kind.starts_frame();
        if !self
            .room_for(piece.bytes.len() as u64, continuing, gate)
            .await
        {
            return Delivered::Gone;
        }
        match self.outbox.offer(self.id, gate, piece) {
            Offer::Taken => Delivered::Yes,
            Offer::Skipped => Delivered::Gone,
        }
    }

    /// Queues the rest of `frame` from `at` as file ranges the subscriber's writer sends with
    /// `sendfile`; the frame's first piece is on the subscriber's wire.
    async fn send_rest(&self, frame: &StoredFrame, mut at: u64, gate: &Arc<Gate>) -> Delivered {
        while at < frame.len {
            let len = (frame.len - at).min(FILE_RANGE);
            if !self.room_for(len, true, gate).await {
                return Delivered::Gone;
            }
            let range = FileRange {
                file: frame.file.clone(),
                offset: frame.offset + at,
                len,
            };
            at += len;
            if self.outbox.offer_file(self.id, range, at == frame.len) == Offer::Skipped {
                return Delivered::Gone;
            }
        }
        Delivered::Yes
    }

    /// Streams a large frame to `target`: the subscriber (with the notice in front of the first
    /// chunk) or the dead-letter code (with the status byte changed). Read a chunk at a time;
    /// to a plain TCP subscriber only the first chunk is read, the rest is sent from the file
    /// with `sendfile` once the whole frame's checksum has been verified.
    async fn stream(
        &mut self,
        frame: &StoredFrame,
        mut target: Target<'_>,
        gate: &Arc<Gate>,
    ) -> Delivered {
        let notice = match target {
            Target::Subscriber => self.notice_prefix().wire(frame.seq),
            Target::DeadLetter(_) => Bytes::new(),
        };
        let zero_copy = matches!(target, Target::Subscriber) && self.outbox.sends_files();
        if zero_copy {
            let file = frame.clone();
            match tokio::task::spawn_blocking(move || file.verify()).await {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => {
                    self.corrupt(frame);
                    return Delivered::Skipped;
                }
                Ok(Err(error)) => {
                    warn!(durable = %self.name, status = %self.status, seq = frame.seq, %error, "durable read failed");
                    return Delivered::Skipped;
                }
                Err(_) => return Delivered::Gone,
            }
        }
        let mut at = 0u64;
        let mut crc = 0u32;
        while at < frame.len {
            if zero_copy && at > 0 && self.outbox.takes_file_from(self.id) {
                return self.send_rest(frame, at, gate).await;
            }
            let want = (frame.len - at).min(CHUNK as u64) as usize;
            let file = frame.clone();
            let read = tokio::task::spawn_blocking(move || {
                let mut chunk = vec![0u8; want];
                read_exactly(&file, at, &mut chunk).map(|()| chunk)
            })
            .await;
            let chunk = match read {
                Ok(Ok(chunk)) => chunk,
                Ok(Err(error)) => {
                    warn!(durable = %self.name, status = %self.status, seq = frame.seq, %error, "durable read failed");
                    return self.cut(at);
                }
                Err(_) => return Delivered::Gone,
            };
            crc = crc32c::crc32c_append(crc, &chunk);
            let last = at + want as u64 == frame.len;
            if last && !zero_copy && crc != frame.crc {
                self.corrupt(frame);
                return self.cut(at);
            }
            let kind = match (at == 0, last) {
                (true, _) => PieceKind::First,
                (false, true) => PieceKind::Last,
                (false, false) => PieceKind::Middle,
            };
            let mut bytes = BytesMut::with_capacity(notice.len() * usize::from(at == 0) + want);
            if at == 0 {
                bytes.extend_from_slice(&notice);
            }
            bytes.extend_from_slice(&chunk);
            if at == 0 {
                if let Target::DeadLetter(_) = target {
                    bytes[0] = self.dead_letter_status_byte();
                }
            }
            let piece = Piece {
                status: self.status,
                kind,
                // The notice ends in the first piece, the frame in the last.
                frames: u32::from(at == 0 && !notice.is_empty()) + u32::from(last),
                bytes: bytes.freeze(),
            };
            at += want as u64;
            let delivered = match &mut target {
                Target::Subscriber => self.offer(&piece, gate).await,
                Target::DeadLetter(publisher) => {
                    let piece = Piece {
                        status: self.limits.dead_letter.unwrap_or(self.status),
                        ..piece
                    };
                    let _ = publisher.publish(&piece);
                    let dead_gate = publisher.gate().clone();
                    std::future::poll_fn(|cx| dead_gate.poll_open(cx)).await;
                    Delivered::Yes
                }
            };
            if delivered != Delivered::Yes {
                return delivered;
            }
        }
        Delivered::Yes
    }

    /// A large frame could not be completed after `at` bytes: the subscriber, in the middle of
    /// it, is closed (what it got is visibly cut); nothing is delivered at all before any byte.
    fn cut(&self, at: u64) -> Delivered {
        if at > 0 {
            self.outbox.kick(KickReason::PublisherGone);
            return Delivered::Gone;
        }
        Delivered::Skipped
    }

    fn corrupt(&self, frame: &StoredFrame) {
        warn!(durable = %self.name, status = %self.status, seq = frame.seq, "stored frame fails its checksum: not delivered");
    }

    /// Frame `seq` leaves the window unsent (gone, corrupt, or dead-lettered); records the
    /// cursor if its position moved.
    fn settle(&self, seq: u64) -> Delivered {
        let mut window = self.window.borrow_mut();
        if window.settle(seq) {
            self.durables
                .record(&self.name, self.status, window.acked, window.redelivered());
        }
        Delivered::Yes
    }

    fn dead_letter_status_byte(&self) -> u8 {
        0x80 | self
            .limits
            .dead_letter
            .map_or(self.status.code(), Status::code)
    }

    /// Notes which frames in flight are now written whole, and delivers again those whose
    /// `ack_wait` has run out since (or moves them to the dead-letter code).
    async fn redeliver_expired(&mut self, gate: &Arc<Gate>) -> Delivered {
        let now = Instant::now();
        let written = self.outbox.bytes_out();
        let expired: Vec<(u64, u32)> = {
            let mut window = self.window.borrow_mut();
            for frame in window.in_flight.values_mut() {
                if frame.written.is_none() && written >= frame.written_at_bytes {
                    frame.written = Some(now);
                }
            }
            window
                .in_flight
                .iter()
                .filter(|(_, frame)| {
                    frame
                        .written
                        .is_some_and(|at| now.duration_since(at) >= self.limits.ack_wait)
                })
                .map(|(&seq, frame)| (seq, frame.deliveries))
                .collect()
        };
        for (seq, deliveries) in expired {
            let outcome = if self
                .limits
                .max_deliver
                .is_some_and(|max| u64::from(deliveries) >= max)
            {
                self.dead_letter(seq, gate).await
            } else {
                self.redeliver(seq, deliveries + 1, gate).await
            };
            if outcome == Delivered::Gone {
                return outcome;
            }
        }
        Delivered::Yes
    }

    /// Reads frame `seq` again (`None` when retention deleted it).
    async fn reread(&self, seq: u64) -> Option<Loaded> {
        let store = self.durables.store().clone();
        let (status, notice) = (self.status, self.notice_prefix());
        let read = tokio::task::spawn_blocking(move || {
            let mut reader = store.reader(status, Position::Seq(seq)).ok()?;
            let frame = reader.next_frame().ok()??;
            if frame.seq != seq {
                return None;
            }
            if frame.len > CHUNK as u64 {
                return Some(Loaded::Large(frame));
            }
            let bytes = read_whole(&frame, &notice).ok()?.unwrap_or_default();
            Some(Loaded::Whole { frame, bytes })
        })
        .await;
        read.ok().flatten()
    }

    async fn redeliver(&mut self, seq: u64, deliveries: u32, gate: &Arc<Gate>) -> Delivered {
        self.window.borrow_mut().take(seq);
        let Some(loaded) = self.reread(seq).await else {
            return self.settle(seq);
        };
        DurableCounters::add(&self.counters.redelivered, 1);
        self.window.borrow().figures.redelivered();
        debug!(durable = %self.name, status = %self.status, seq, deliveries, "redelivered");
        self.deliver(loaded, deliveries, gate).await
    }

    /// Frame `seq` was delivered `max_deliver` times without an acknowledgement: it goes to the
    /// dead-letter code (if any) with its status byte changed, and leaves the window.
    async fn dead_letter(&mut self, seq: u64, gate: &Arc<Gate>) -> Delivered {
        DurableCounters::add(&self.counters.dead_lettered, 1);
        self.window.borrow().figures.dead_lettered();
        warn!(durable = %self.name, status = %self.status, seq, dead_letter = ?self.limits.dead_letter.map(Status::code), "dead-lettered");
        if let (Some(loaded), Some(mut publisher)) =
            (self.reread(seq).await, self.dead_letters.take())
        {
            match loaded {
                // A reread is one frame: never a run.
                Loaded::Run { .. } => {}
                Loaded::Whole { bytes, .. } if !bytes.is_empty() => {
                    // The notice is not part of the frame; the status byte names the new code.
                    let skip = self.notice_prefix().wire(seq).len();
                    let mut frame = BytesMut::from(&bytes[skip..]);
                    frame[0] = self.dead_letter_status_byte();
                    let piece = Piece {
                        status: self.limits.dead_letter.unwrap_or(self.status),
                        kind: PieceKind::Whole,
                        frames: 1,
                        bytes: frame.freeze(),
                    };
                    let _ = publisher.publish(&piece);
                }
                Loaded::Whole { .. } => {}
                Loaded::Large(frame) => {
                    if self
                        .stream(&frame, Target::DeadLetter(&mut publisher), gate)
                        .await
                        == Delivered::Gone
                    {
                        publisher.abandon();
                    }
                }
            }
            self.dead_letters = Some(publisher);
        }
        self.settle(seq)
    }
}
