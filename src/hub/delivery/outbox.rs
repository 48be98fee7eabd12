//! A session's outbound path, shared by every thread that delivers to it: the [`Outbox`].
//!
//! Publishers deliver without a hop. A publishing session finds its subscribers in the
//! [`SubscriptionTable`](super::table::SubscriptionTable) and calls [`Outbox::offer`] on each,
//! on its own thread. One small lock per subscriber guards that subscriber's stream state (the
//! [`StreamState`]): the queue of bytes its socket has not taken yet, the streamed frame on its wire, the
//! frames held behind that frame, its slow-consumer policy. When nothing is queued the publisher
//! writes a small piece (at most 16 KiB) to the subscriber's socket itself (a non-blocking write
//! under the lock); what the socket does not take, and larger pieces, are queued, and the
//! subscriber's writer task — on the subscriber's own arbiter — writes them, so a wide fan-out of
//! large frames uses every core. The writer takes the front of the queue, writes it without the
//! lock and only then removes it; nobody writes to the socket while the queue is not empty, so
//! frames never interleave and each publisher's frames keep their order.
//!
//! The queue's size is counted in the subscriber's [`Backlog`]: bytes are charged when queued and
//! discharged when written, and the policies act on that count (docs/hub.md).
//!
//! On a TLS connection the bytes are sealed into TLS records before they reach the socket
//! ([`WriteHalf::seal`]): a small piece by the publisher under the lock, before its write-through;
//! a queued piece by the writer when it reaches the front. So the queue holds records up front
//! and plaintext behind, its count is what the client has not taken, and records go out in the
//! order they were sealed. Lock order: this lock, then the connection's TLS lock (outbox → tls;
//! `delivery/mod.rs` lists them all).
//!
//! A subscriber's own replies (control answers, pings) go through the same path, after the
//! streamed frame on the wire if there is one.
//!
//! Pieces given through a queue group (`delivery/groups.rs`) are tagged with their group
//! ([`Origin`]). When the member leaves the group (`UNSUB ... group=`) or the hub (closed, cut
//! as slow), its whole group frames that no byte of has reached the socket — queued behind what
//! the writer has in hand, or held complete — are taken out under this lock and, once it is
//! released, given to another member ([`groups::redispatch`]); a group frame already started is
//! left to finish or, when the connection ends, counted as cut. On TLS a sealed piece keeps its
//! plaintext beside its records (a refcount, not a copy) so that it can still move.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::frame::Status;
use crate::hub::auth::Users;
use crate::hub::control::{CodeSet, GroupName, SlowPolicy};
use crate::hub::delivery::flow::{Backlog, Gate};
use crate::hub::delivery::groups::{self, GroupStats, MovedFrame};
use crate::hub::delivery::relay::{Piece, PieceKind};
use crate::hub::delivery::table::SubscriptionTable;
use crate::hub::delivery::transport::WriteHalf;
use crate::hub::ops::counters::{worth_a_line, SessionStats};
use crate::hub::ops::counters::{ConnectionGuard, HubCounters};
use crate::hub::session::SessionId;
use crate::hub::session::{Kick, KickReason, Reauthorize, SessionLink};

/// Largest batch of queued bytes handed to one vectored write.
const WRITE_BATCH_BYTES: usize = 256 * 1024;
/// Most queued pieces handed to one vectored write.
const WRITE_BATCH_SLICES: usize = 64;
/// Writes the writer task makes before letting other tasks of its arbiter run.
const WRITES_PER_TURN: usize = 16;
/// Largest piece a publisher's thread writes to a subscriber's socket itself. Small pieces are
/// what latency is made of, and a thread hop would dominate them; larger ones go to the
/// subscriber's writer on its own arbiter, so that a wide fan-out of large frames is written by
/// every core rather than by the publisher's alone (measured: 1→10 with 64 KiB frames fell to
/// 0.42–0.50 of the plain forwarder when one thread wrote all ten copies).
const WRITE_THROUGH_MAX: usize = 16 * 1024;
/// Slots the queue keeps once drained (a burst may have grown it far beyond).
const IDLE_QUEUE_SLOTS: usize = 4;

/// Most bytes of replies that may wait for the end of a streamed frame; a peer that sends more
/// commands than that meanwhile is closed.
pub(crate) const MAX_HELD_REPLY_BYTES: u64 = 1024 * 1024;

/// What became of a piece offered to a subscriber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Offer {
    /// Written, queued, or held for it.
    Taken,
    /// Not for it: the frame was dropped (`drop`), or the subscriber is going away.
    Skipped,
}

/// Why a reply could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplyRefused {
    /// More than [`MAX_HELD_REPLY_BYTES`] wait for a streamed frame to end.
    TooManyHeld,
}

/// The queue group a piece was given through, and where it sits in its frame.
#[derive(Clone, Debug)]
struct Origin {
    group: Arc<GroupStats>,
    status: Status,
    kind: PieceKind,
    /// A sealed piece's plaintext, so that it can still move to another member.
    plain: Option<Bytes>,
}

impl Origin {
    fn new(group: Arc<GroupStats>, status: Status, kind: PieceKind) -> Origin {
        Origin {
            group,
            status,
            kind,
            plain: None,
        }
    }
}

/// The kind of the `at`-th of `count` pieces of a held or moved frame whose first piece ends
/// `first_frames` frames (a whole piece ends at least one, a streamed frame's first none).
fn kind_at(at: usize, count: usize, complete: bool, first_frames: u32) -> PieceKind {
    match at {
        0 if first_frames > 0 => PieceKind::Whole,
        0 => PieceKind::First,
        at if complete && at + 1 == count => PieceKind::Last,
        _ => PieceKind::Middle,
    }
}

/// A frame held for a subscriber while another publisher's streamed frame is on its wire.
#[derive(Debug)]
struct Held {
    from: SessionId,
    status: Status,
    /// The group it was given through, if any.
    group: Option<Arc<GroupStats>>,
    /// The publisher's read gate, closed while this frame is too large to wait (`blocking`).
    gate: Arc<Gate>,
    pieces: Vec<(Bytes, u32)>,
    bytes: u64,
    /// Frames ending in it (a run of whole frames counts each).
    frames: u32,
    /// Whether its last piece has arrived.
    complete: bool,
    /// Whether it holds its publisher's gate shut (it grew past the subscriber's high-water mark).
    blocking: bool,
}

/// A range of a stored frame's segment file, queued for a plain TCP subscriber and written with
/// `sendfile` (a durable replay's zero-copy path): the bytes go from the page cache to the socket
/// without passing through the hub's memory.
#[derive(Debug)]
pub(crate) struct FileRange {
    /// The segment file.
    pub file: Arc<std::fs::File>,
    /// Where the range starts in it.
    pub offset: u64,
    /// Its length.
    pub len: u64,
}

/// Bytes queued for a subscriber's socket.
#[derive(Debug)]
struct Queued {
    /// The bytes (empty when `file` holds them instead).
    bytes: Bytes,
    /// The bytes, when they are a file range (never sealed, never a group's).
    file: Option<FileRange>,
    /// How many frames end in them.
    frames: u32,
    /// Whether they are ready for the socket: always on a plain connection; on a TLS one, once
    /// sealed into records. Sealed pieces are a prefix of the queue (a publisher seals only when
    /// the queue is empty, the writer only its front), so records go out in the order sealed.
    sealed: bool,
    /// Whether part of them has reached the socket.
    started: bool,
    /// The group they were given through, if any (boxed: most pieces have none, and the queue
    /// keeps its slots).
    group: Option<Box<Origin>>,
}

impl Queued {
    /// Bytes not yet written.
    fn len(&self) -> u64 {
        self.file
            .as_ref()
            .map_or(self.bytes.len() as u64, |range| range.len)
    }

    /// The piece's plaintext, if no byte of it has reached the socket (`tls`: the connection
    /// seals what it sends).
    fn unstarted(&self, tls: bool) -> Option<Bytes> {
        match (self.started, tls && self.sealed) {
            (true, _) => None,
            (false, false) => Some(self.bytes.clone()),
            (false, true) => self.group.as_ref().and_then(|origin| origin.plain.clone()),
        }
    }
}

/// A subscriber's stream state, behind its [`Outbox`]'s lock.
#[derive(Debug)]
struct StreamState {
    /// Bytes the socket has not taken yet.
    queue: VecDeque<Queued>,
    policy: SlowPolicy,
    /// The publisher whose streamed frame is on the wire (started, not ended).
    current: Option<SessionId>,
    /// The group that frame was given through, if any (its later pieces are tagged with it).
    current_group: Option<Origin>,
    /// How many pieces at the queue's front the writer has in hand (being written).
    writing: usize,
    /// Frames of other publishers waiting for `current`'s frame to end, in arrival order.
    held: VecDeque<Held>,
    /// The session's own replies waiting for `current`'s frame to end, with how many frames
    /// each holds.
    replies: Vec<(Bytes, u32)>,
    reply_bytes: u64,
    /// Publishers deliver nothing more (kicked, or closing).
    refusing: bool,
    /// The session queues nothing more: the writer flushes, then shuts the socket.
    closed: bool,
    /// When the socket last took bytes, or the queue last went from empty to busy.
    progress: Instant,
}

/// What one turn of the writer did.
enum Flush {
    /// Wrote bytes; the queue may have more.
    Wrote,
    /// Nothing queued.
    Idle,
    /// Nothing queued, and nothing ever will be.
    Closed,
    /// The socket takes nothing now.
    Blocked,
    /// The socket failed.
    Failed,
}

/// One session's outbound path: its socket's write half, its stream state and its writer task.
/// Shared (`Arc`) by the session, its writer, the router and publishers.
#[derive(Debug)]
pub(crate) struct Outbox {
    id: SessionId,
    socket: WriteHalf,
    state: Mutex<StreamState>,
    /// Wakes the writer when the queue gets bytes or the outbox closes.
    wake: Notify,
    backlog: Arc<Backlog>,
    /// Its session (told to end by a policy, or a publisher gone mid-frame).
    session: SessionLink,
    counters: Arc<HubCounters>,
    /// The connection's other figures, for monitoring.
    stats: Arc<SessionStats>,
    frames_out: AtomicU64,
    bytes_out: AtomicU64,
    /// Cancelled to stop writing at once (flush deadline, a frame that cannot be completed).
    abort: CancellationToken,
    /// Cancelled by the writer when it has ended, however it ended.
    done: CancellationToken,
    /// Where a leaving member's group frames find another member.
    table: Weak<SubscriptionTable>,
}

/// The session an outbox belongs to, and what it counts in: what [`Outbox::start`] shares with
/// the session that starts it.
#[derive(Debug)]
pub(crate) struct OutboxContext {
    /// The session.
    pub id: SessionId,
    /// How the outbox tells its session to end.
    pub session: SessionLink,
    /// The hub's counters.
    pub counters: Arc<HubCounters>,
    /// The connection's own figures.
    pub stats: Arc<SessionStats>,
    /// Dropped, and so counted closed, when the writer ends.
    pub open: ConnectionGuard,
    /// The hub's subscription table, for moving group frames when the session leaves.
    pub table: Weak<SubscriptionTable>,
}

impl Outbox {
    /// The outbox of `context`'s session writing to `socket` under `policy`, charging `backlog`,
    /// with its writer task started on the current arbiter.
    pub(crate) fn start(
        socket: WriteHalf,
        policy: SlowPolicy,
        backlog: Arc<Backlog>,
        context: OutboxContext,
    ) -> Arc<Outbox> {
        let OutboxContext {
            id,
            session,
            counters,
            stats,
            open,
            table,
        } = context;
        let outbox = Arc::new(Outbox {
            id,
            socket,
            state: Mutex::new(StreamState {
                queue: VecDeque::new(),
                policy,
                current: None,
                current_group: None,
                writing: 0,
                held: VecDeque::new(),
                replies: Vec::new(),
                reply_bytes: 0,
                refusing: false,
                closed: false,
                progress: Instant::now(),
            }),
            wake: Notify::new(),
            backlog,
            session,
            counters,
            stats,
            frames_out: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            abort: CancellationToken::new(),
            done: CancellationToken::new(),
            table,
        });
        actix_rt::spawn(write_loop(outbox.clone(), open));
        outbox
    }

    /// The session this outbox belongs to.
    pub(crate) fn id(&self) -> SessionId {
        self.id
    }

    fn lock(&self) -> MutexGuard<'_, StreamState> {
        // Nothing under the lock panics; if something did, the state is still consistent
        // enough to close the connection.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes queued and not yet written.
    pub(crate) fn pending(&self) -> u64 {
        self.backlog.pending()
    }

    /// Whether the bytes queued are at or over the slow-consumer mark.
    pub(crate) fn is_full(&self) -> bool {
        self.backlog.is_full()
    }

    /// Frames skipped for this subscriber under `drop`.
    pub(crate) fn dropped(&self) -> u64 {
        self.backlog.dropped()
    }

    /// The connection's other figures.
    pub(crate) fn stats(&self) -> &Arc<SessionStats> {
        &self.stats
    }

    /// Frames written so far.
    pub(crate) fn frames_out(&self) -> u64 {
        self.frames_out.load(Ordering::Relaxed)
    }

    /// Bytes written so far.
    pub(crate) fn bytes_out(&self) -> u64 {
        self.bytes_out.load(Ordering::Relaxed)
    }

    /// The slow-consumer policy.
    pub(crate) fn policy(&self) -> SlowPolicy {
        self.lock().policy
    }

    /// Sets the slow-consumer policy; it applies to the next piece offered.
    pub(crate) fn set_policy(&self, policy: SlowPolicy) {
        self.lock().policy = policy;
    }

    /// Whether a streamed frame is partly written: nothing else may be written until it ends.
    pub(crate) fn is_mid_frame(&self) -> bool {
        self.lock().current.is_some()
    }

    /// How long the queue has had bytes without the socket taking any; zero when it is empty.
    pub(crate) fn stuck_for(&self) -> Duration {
        let state = self.lock();
        if state.queue.is_empty() {
            return Duration::ZERO;
        }
        state.progress.elapsed()
    }

    /// A token cancelled when the writer has ended (socket closed or failed).
    pub(crate) fn done(&self) -> CancellationToken {
        self.done.clone()
    }

    /// Tells the session to end (e.g. at shutdown).
    pub(crate) fn kick(&self, reason: KickReason) {
        self.session.kick.do_send(Kick { reason });
    }

    /// Tells the session the hub's users changed.
    pub(crate) fn reauthorize(&self, users: Option<Arc<Users>>) {
        self.session.reauthorize.do_send(Reauthorize { users });
    }

    /// Offers `piece` from publisher `from` (whose read gate is `gate`): written or queued now,
    /// or held while another publisher's streamed frame is on the wire, under the subscriber's
    /// slow-consumer policy.
    pub(crate) fn offer(&self, from: SessionId, gate: &Arc<Gate>, piece: &Piece) -> Offer {
        self.offer_tagged(from, gate, piece, None)
    }

    /// [`offer`](Self::offer) of a frame's start given to this member through `group`: the frame
    /// is tagged with it (its later pieces too), so that it can move if the member leaves.
    pub(crate) fn offer_in_group(
        &self,
        from: SessionId,
        gate: &Arc<Gate>,
        piece: &Piece,
        group: &Arc<GroupStats>,
    ) -> Offer {
        self.offer_tagged(from, gate, piece, Some(group))
    }

    fn offer_tagged(
        &self,
        from: SessionId,
        gate: &Arc<Gate>,
        piece: &Piece,
        group: Option<&Arc<GroupStats>>,
    ) -> Offer {
        let mut state = self.lock();
        if state.refusing {
            return Offer::Skipped;
        }
        match (state.current, piece.kind.starts_frame()) {
            (None, true) => {}
            // The rest of a frame this subscriber is not taking (it was dropped while held).
            (None, false) => return Offer::Skipped,
            (Some(current), false) if current == from => {}
            (Some(_), _) => return self.hold(&mut state, from, gate, piece, group),
        }
        let len = piece.bytes.len() as u64;
        let fits = if piece.kind.starts_frame() {
            self.backlog.has_room(len)
        } else {
            self.backlog.has_room_to_continue(len)
        };
        if !fits {
            match state.policy {
                SlowPolicy::Block => {}
                SlowPolicy::Drop if piece.kind.starts_frame() => {
                    self.count_drop(from, piece.frames_begun());
                    return Offer::Skipped;
                }
                // A frame begun on the wire cannot be dropped in part.
                SlowPolicy::Drop | SlowPolicy::Disconnect => {
                    self.refuse(&mut state, KickReason::SlowConsumer);
                    return Offer::Skipped;
                }
            }
        }
        let origin = match (piece.kind.starts_frame(), group) {
            (true, Some(group)) => Some(Origin::new(group.clone(), piece.status, piece.kind)),
            (true, None) => None,
            (false, _) => state.current_group.clone().map(|origin| Origin {
                kind: piece.kind,
                ..origin
            }),
        };
        if piece.kind == PieceKind::First {
            state.current_group = origin.clone();
        }
        self.push(&mut state, piece.bytes.clone(), piece.frames, origin);
        match piece.kind {
            PieceKind::First => state.current = Some(from),
            PieceKind::Last => self.end_frame(&mut state),
            PieceKind::Whole | PieceKind::Middle => {}
        }
        self.block_if_full(&state, gate);
        Offer::Taken
    }

    /// Whether the connection can take file ranges at all (plain TCP, not TLS).
    pub(crate) fn sends_files(&self) -> bool {
        !self.socket.seals()
    }

    /// Whether file ranges can be queued here ([`offer_file`](Self::offer_file)): a plain TCP
    /// connection whose wire carries publisher `from`'s streamed frame now.
    pub(crate) fn takes_file_from(&self, from: SessionId) -> bool {
        !self.socket.seals() && self.lock().current == Some(from)
    }

    /// Queues `range`, the next bytes of publisher `from`'s streamed frame on this wire (see
    /// [`takes_file_from`](Self::takes_file_from)); `last`: the frame ends with it. The caller
    /// has waited for room ([`hold_back_until_room`](Self::hold_back_until_room)).
    pub(crate) fn offer_file(&self, from: SessionId, range: FileRange, last: bool) -> Offer {
        let mut state = self.lock();
        if state.refusing || state.current != Some(from) || self.socket.seals() {
            return Offer::Skipped;
        }
        let was_empty = state.queue.is_empty();
        self.backlog.charge(range.len);
        state.queue.push_back(Queued {
            bytes: Bytes::new(),
            file: Some(range),
            frames: u32::from(last),
            sealed: true,
            started: false,
            group: None,
        });
        if was_empty {
            state.progress = Instant::now();
            self.wake.notify_one();
        }
        if last {
            self.end_frame(&mut state);
        }
        Offer::Taken
    }

    /// Closes `gate` until this subscriber's backlog drains if `len` more bytes do not fit now
    /// (`continuing`: bytes of the streamed frame already on its wire); returns whether they did
    /// not. A durable feed calls it before each piece so that it waits for room whatever the
    /// subscriber's slow-consumer policy, instead of having its frames dropped or the subscriber
    /// cut.
    pub(crate) fn hold_back_until_room(
        &self,
        gate: &Arc<Gate>,
        len: u64,
        continuing: bool,
    ) -> bool {
        let state = self.lock();
        let fits = if continuing {
            self.backlog.has_room_to_continue(len)
        } else {
            self.backlog.has_room(len)
        };
        if fits || state.refusing {
            return false;
        }
        self.backlog.block(gate);
        true
    }

    /// Holds `piece` behind the streamed frame on the wire.
    fn hold(
        &self,
        state: &mut StreamState,
        from: SessionId,
        gate: &Arc<Gate>,
        piece: &Piece,
        group: Option<&Arc<GroupStats>>,
    ) -> Offer {
        if piece.kind.starts_frame() {
            state.held.push_back(Held {
                from,
                status: piece.status,
                group: group.cloned(),
                gate: gate.clone(),
                pieces: Vec::new(),
                bytes: 0,
                frames: 0,
                complete: false,
                blocking: false,
            });
        }
        // The publisher's one frame in progress here (earlier complete ones may be held too).
        let Some(at) = state
            .held
            .iter()
            .rposition(|held| held.from == from && !held.complete)
        else {
            return Offer::Skipped;
        };
        let high = self.backlog.high();
        let held = &mut state.held[at];
        held.pieces.push((piece.bytes.clone(), piece.frames));
        held.bytes += piece.bytes.len() as u64;
        held.frames += piece.frames;
        held.complete = piece.kind.ends_frame();
        if held.bytes <= high || held.blocking {
            return Offer::Taken;
        }
        match state.policy {
            SlowPolicy::Block => {
                held.blocking = true;
                gate.close();
                Offer::Taken
            }
            // Nothing of a held frame is on the wire yet: drop all of it.
            SlowPolicy::Drop => {
                let frames = state.held.remove(at).map_or(1, |held| held.frames.max(1));
                self.count_drop(from, frames);
                Offer::Skipped
            }
            SlowPolicy::Disconnect => {
                self.refuse(state, KickReason::SlowConsumer);
                Offer::Skipped
            }
        }
    }

    /// The streamed frame on the wire has ended: the replies waiting for it go out, then the
    /// frames held behind it, up to the next one still streaming.
    fn end_frame(&self, state: &mut StreamState) {
        state.current = None;
        state.current_group = None;
        state.reply_bytes = 0;
        for (reply, frames) in std::mem::take(&mut state.replies) {
            self.push(state, reply, frames, None);
        }
        while state.current.is_none() {
            let Some(held) = state.held.pop_front() else {
                return;
            };
            let count = held.pieces.len();
            let first_frames = held.pieces.first().map_or(0, |(_, frames)| *frames);
            let origin = |at: usize| {
                held.group.as_ref().map(|group| {
                    let kind = kind_at(at, count, held.complete, first_frames);
                    Origin::new(group.clone(), held.status, kind)
                })
            };
            for (at, (bytes, frames)) in held.pieces.iter().enumerate() {
                self.push(state, bytes.clone(), *frames, origin(at));
            }
            if !held.complete {
                state.current = Some(held.from);
                state.current_group = origin(1);
            }
            if held.blocking {
                held.gate.open();
            }
            self.block_if_full(state, &held.gate);
        }
    }

    /// Under `block`, holds the publisher behind `gate` back while this subscriber is full.
    fn block_if_full(&self, state: &StreamState, gate: &Arc<Gate>) {
        if state.policy == SlowPolicy::Block && self.backlog.is_full() {
            self.backlog.block(gate);
        }
    }

    /// Writes `bytes` through if nothing is queued and they are small (sealed into TLS records
    /// first on a TLS connection); queues (and charges) what the socket does not take, or all of
    /// a large piece (the writer seals it), and wakes the writer.
    fn push(&self, state: &mut StreamState, bytes: Bytes, frames: u32, group: Option<Origin>) {
        let was_empty = state.queue.is_empty();
        let mut sealed = !self.socket.seals();
        let mut started = false;
        let mut group = group.map(Box::new);
        let rest = if was_empty && bytes.len() <= WRITE_THROUGH_MAX {
            if let Some(origin) = group.as_mut().filter(|_| self.socket.seals()) {
                // A group frame sealed here may still have to move if nothing of it is written.
                origin.plain = Some(bytes.clone());
            }
            let bytes = match self.socket.seal(&bytes) {
                Ok(records) => records,
                Err(error) => {
                    debug!(session = %self.id, %error, "TLS refused bytes");
                    self.abort.cancel();
                    return;
                }
            };
            sealed = true;
            match self.socket.try_write(&bytes) {
                Ok(written) => {
                    self.bytes_out.fetch_add(written as u64, Ordering::Relaxed);
                    if written == bytes.len() {
                        self.frames_out
                            .fetch_add(u64::from(frames), Ordering::Relaxed);
                        return;
                    }
                    started = written > 0;
                    bytes.slice(written..)
                }
                // Not writable now, or failed: the writer finds out which and acts.
                Err(_) => bytes,
            }
        } else {
            bytes
        };
        self.backlog.charge(rest.len() as u64);
        state.queue.push_back(Queued {
            bytes: rest,
            file: None,
            frames,
            sealed,
            started,
            group,
        });
        if was_empty {
            state.progress = Instant::now();
            self.wake.notify_one();
        }
    }

    /// Queues one of the session's own frames, after the streamed frame on the wire if any.
    ///
    /// # Errors
    /// [`ReplyRefused::TooManyHeld`] when too many replies wait for a streamed frame to end.
    pub(crate) fn reply(&self, wire_bytes: Bytes) -> Result<(), ReplyRefused> {
        self.replies(wire_bytes, 1)
    }

    /// Queues `frames` of the session's own frames, back to back in `wire_bytes`, as
    /// [`Outbox::reply`] does one.
    ///
    /// # Errors
    /// As [`Outbox::reply`].
    pub(crate) fn replies(&self, wire_bytes: Bytes, frames: u32) -> Result<(), ReplyRefused> {
        let mut state = self.lock();
        self.queue_reply(&mut state, wire_bytes, frames)
    }

    /// Runs `subscribe` (which makes this session visible to publishers) and then queues the
    /// reply `ack`, both under this outbox's lock: a publication read after the peer has the
    /// reply finds the subscription, and one that finds it delivers behind the reply.
    ///
    /// # Errors
    /// As [`Outbox::reply`].
    pub(crate) fn subscribe_then_reply(
        &self,
        subscribe: impl FnOnce(),
        ack: Bytes,
    ) -> Result<(), ReplyRefused> {
        let mut state = self.lock();
        subscribe();
        self.queue_reply(&mut state, ack, 1)
    }

    fn queue_reply(
        &self,
        state: &mut StreamState,
        wire_bytes: Bytes,
        frames: u32,
    ) -> Result<(), ReplyRefused> {
        if state.closed {
            return Ok(());
        }
        if state.current.is_none() {
            self.push(state, wire_bytes, frames, None);
            return Ok(());
        }
        state.reply_bytes += wire_bytes.len() as u64;
        state.replies.push((wire_bytes, frames));
        if state.reply_bytes > MAX_HELD_REPLY_BYTES {
            return Err(ReplyRefused::TooManyHeld);
        }
        Ok(())
    }

    /// Publisher `from` went away: if its streamed frame is on this wire the frame cannot be
    /// completed and the session is told to end; its partial frames held here are discarded.
    pub(crate) fn publisher_gone(&self, from: SessionId) {
        let mut state = self.lock();
        if state.current == Some(from) {
            debug!(session = %self.id, publisher = %from, "publisher gone mid-frame");
            self.refuse(&mut state, KickReason::PublisherGone);
        } else {
            state.held.retain(|held| held.from != from || held.complete);
        }
    }

    /// Stops taking deliveries and tells the session to end; the frames held here go, and the
    /// gates they held open again.
    fn refuse(&self, state: &mut StreamState, reason: KickReason) {
        if state.refusing {
            return;
        }
        state.refusing = true;
        release_held(state);
        if reason == KickReason::SlowConsumer {
            self.counters.slow_consumers.fetch_add(1, Ordering::Relaxed);
            warn!(
                session = %self.id,
                policy = %state.policy,
                pending = self.backlog.pending(),
                "slow consumer disconnected"
            );
        }
        self.kick(reason);
    }

    fn count_drop(&self, from: SessionId, frames: u32) {
        let before = self.backlog.count_drops(u64::from(frames));
        let dropped = before + u64::from(frames);
        self.counters
            .dropped_frames
            .fetch_add(u64::from(frames), Ordering::Relaxed);
        if worth_a_line(before, u64::from(frames)) {
            warn!(session = %self.id, publisher = %from, dropped, "slow consumer: frame dropped");
        } else {
            debug!(session = %self.id, publisher = %from, dropped, "slow consumer: frame dropped");
        }
    }

    /// Lets the writer finish what is queued, within `deadline`, then shut the socket. Group
    /// frames not started go to other members instead.
    pub(crate) fn close(&self, deadline: Duration) {
        let moved = {
            let mut state = self.lock();
            if state.closed {
                return;
            }
            state.closed = true;
            state.refusing = true;
            release_held(&mut state);
            self.take_group_frames(&mut state, |_| true, true)
        };
        self.redispatch(moved);
        self.wake.notify_one();
        let abort = self.abort.clone();
        let done = self.done.clone();
        actix_rt::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(deadline) => abort.cancel(),
                () = done.cancelled() => {}
            }
        });
    }

    /// Stops writing at once and shuts the socket. Group frames not started go to other
    /// members.
    pub(crate) fn abort(&self) {
        let moved = {
            let mut state = self.lock();
            state.closed = true;
            state.refusing = true;
            release_held(&mut state);
            self.take_group_frames(&mut state, |_| true, true)
        };
        self.redispatch(moved);
        self.abort.cancel();
    }

    /// The session left group `name` for `codes` (the router has taken it out of their lists):
    /// the group's frames queued or held here and not started go to other members.
    pub(crate) fn leave_group(&self, name: &GroupName, codes: CodeSet) {
        let moved = {
            let mut state = self.lock();
            let leaving =
                |origin: &Origin| origin.group.name == *name && codes.contains(origin.status);
            self.take_group_frames(&mut state, leaving, false)
        };
        self.redispatch(moved);
    }

    fn redispatch(&self, moved: Vec<MovedFrame>) {
        if moved.is_empty() {
            return;
        }
        match self.table.upgrade() {
            Some(table) => groups::redispatch(&table, &self.counters, self.id, moved),
            None => {
                for frame in moved {
                    frame.group.count_cut(1);
                }
            }
        }
    }

    /// Takes out the whole group frames `leaving` selects that no byte of has reached the
    /// socket, in order: queued behind what the writer has in hand, then held complete. Sealed
    /// TLS pieces move only when the connection is `closing` (records taken out of the middle
    /// of a live TLS stream would break it).
    fn take_group_frames(
        &self,
        state: &mut StreamState,
        leaving: impl Fn(&Origin) -> bool,
        closing: bool,
    ) -> Vec<MovedFrame> {
        let tls = self.socket.seals();
        let selected = |queued: &Queued| {
            queued.group.as_deref().is_some_and(&leaving) && (closing || !tls || !queued.sealed)
        };
        let mut moved = Vec::new();
        if state.queue.iter().skip(state.writing).any(&selected) {
            let mut kept = VecDeque::with_capacity(state.queue.len());
            let mut discharged = 0;
            let mut entries = std::mem::take(&mut state.queue).into_iter().enumerate();
            while let Some((at, queued)) = entries.next() {
                let starts = queued
                    .group
                    .as_ref()
                    .is_some_and(|origin| origin.kind.starts_frame());
                if at < state.writing || !starts || !selected(&queued) {
                    kept.push_back(queued);
                    continue;
                }
                // A streamed frame's pieces follow each other in the queue (other frames are
                // held while it is on the wire).
                let mut frame = vec![queued];
                while !frame
                    .last()
                    .and_then(|last| last.group.as_ref())
                    .is_some_and(|origin| origin.kind.ends_frame())
                {
                    match entries.next() {
                        Some((_, next)) => frame.push(next),
                        None => break,
                    }
                }
                let pieces: Option<Vec<(Bytes, u32)>> = frame
                    .iter()
                    .map(|queued| Some((queued.unstarted(tls)?, queued.frames)))
                    .collect();
                let complete = frame
                    .last()
                    .and_then(|last| last.group.as_ref())
                    .is_some_and(|origin| origin.kind.ends_frame());
                let origin = frame
                    .first()
                    .and_then(|first| first.group.as_deref().cloned());
                match (pieces, origin) {
                    (Some(pieces), Some(origin)) if complete && frame.iter().all(&selected) => {
                        discharged += frame.iter().map(Queued::len).sum::<u64>();
                        moved.push(MovedFrame {
                            status: origin.status,
                            group: origin.group,
                            pieces,
                        });
                    }
                    _ => kept.extend(frame),
                }
            }
            state.queue = kept;
            self.backlog.discharge(discharged);
        }
        let held = std::mem::take(&mut state.held);
        for held in held {
            let group = held.group.clone().filter(|group| {
                held.complete && leaving(&Origin::new(group.clone(), held.status, PieceKind::Whole))
            });
            match group {
                Some(group) => {
                    if held.blocking {
                        held.gate.open();
                    }
                    moved.push(MovedFrame {
                        status: held.status,
                        group,
                        pieces: held.pieces,
                    });
                }
                None => state.held.push_back(held),
            }
        }
        moved
    }

    /// One turn of the writer: a vectored write of the front of the queue. The lock is not held
    /// during the write (publishers would wait for the kernel's copy); the queue keeps the bytes
    /// being written until they are written, and nobody else writes to the socket while it is
    /// not empty, so order holds. `batch` is the writer's own list, reused.
    fn flush(&self, batch: &mut Vec<Bytes>) -> Flush {
        if self.abort.is_cancelled() {
            return Flush::Closed;
        }
        {
            let mut state = self.lock();
            if state.queue.is_empty() {
                if state.queue.capacity() > IDLE_QUEUE_SLOTS {
                    state.queue.shrink_to(IDLE_QUEUE_SLOTS);
                }
                return if state.closed {
                    Flush::Closed
                } else {
                    Flush::Idle
                };
            }
            if let Some(range) = state.queue.front().and_then(|front| front.file.as_ref()) {
                let (file, offset, len) = (range.file.clone(), range.offset, range.len);
                drop(state);
                return self.send_front(&file, offset, len);
            }
            let front = state.queue.front().filter(|front| !front.sealed);
            if let Some(plain) = front.map(|front| front.bytes.clone()) {
                drop(state);
                return self.seal_front(&plain);
            }
            batch.clear();
            let mut bytes = 0;
            for queued in state.queue.iter().take(WRITE_BATCH_SLICES) {
                if !queued.sealed || queued.file.is_some() {
                    break;
                }
                batch.push(queued.bytes.clone());
                bytes += queued.bytes.len();
                if bytes >= WRITE_BATCH_BYTES {
                    break;
                }
            }
            // Until the write is accounted for, these are not to be moved.
            state.writing = batch.len();
        }
        let mut slices = [IoSlice::new(&[]); WRITE_BATCH_SLICES];
        for (slice, piece) in slices.iter_mut().zip(batch.iter()) {
            *slice = IoSlice::new(piece);
        }
        let written = self.socket.try_write_vectored(&slices[..batch.len()]);
        batch.clear();
        let written = match written {
            Ok(0) => return Flush::Failed,
            Ok(written) => written,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Flush::Blocked,
            Err(error) => {
                debug!(session = %self.id, %error, "write failed");
                return Flush::Failed;
            }
        };
        let mut state = self.lock();
        let (mut left, mut frames) = (written, 0);
        while left > 0 {
            let Some(front) = state.queue.front_mut() else {
                break;
            };
            if front.bytes.len() > left {
                front.bytes.advance(left);
                front.started = true;
                break;
            }
            left -= front.bytes.len();
            frames += u64::from(front.frames);
            state.queue.pop_front();
        }
        state.writing = 0;
        state.progress = Instant::now();
        self.backlog.discharge(written as u64);
        self.bytes_out.fetch_add(written as u64, Ordering::Relaxed);
        self.frames_out.fetch_add(frames, Ordering::Relaxed);
        Flush::Wrote
    }

    /// Sends the file range at the front of the queue with `sendfile`, outside the outbox's lock
    /// (as a vectored write: only the writer removes the front).
    fn send_front(&self, file: &std::fs::File, offset: u64, len: u64) -> Flush {
        let count = usize::try_from(len.min(WRITE_BATCH_BYTES as u64 * 4)).unwrap_or(usize::MAX);
        let written = match self.socket.try_send_file(file, offset, count) {
            Ok(0) => return Flush::Failed,
            Ok(written) => written,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Flush::Blocked,
            Err(error) => {
                debug!(session = %self.id, %error, "sendfile failed");
                return Flush::Failed;
            }
        };
        let mut state = self.lock();
        let Some(front) = state.queue.front_mut() else {
            return Flush::Failed;
        };
        let mut frames = 0;
        if let Some(range) = front.file.as_mut() {
            range.offset += written as u64;
            range.len -= written as u64;
            front.started = true;
            if range.len == 0 {
                frames = u64::from(front.frames);
                state.queue.pop_front();
            }
        }
        state.progress = Instant::now();
        self.backlog.discharge(written as u64);
        self.bytes_out.fetch_add(written as u64, Ordering::Relaxed);
        self.frames_out.fetch_add(frames, Ordering::Relaxed);
        Flush::Wrote
    }

    /// Seals the front of the queue into TLS records, outside the outbox's lock: while the queue
    /// is not empty nobody else seals, and only the writer removes its front. The backlog is
    /// charged for the records instead of the plaintext.
    fn seal_front(&self, plain: &Bytes) -> Flush {
        let records = match self.socket.seal(plain) {
            Ok(records) => records,
            Err(error) => {
                debug!(session = %self.id, %error, "TLS refused bytes");
                return Flush::Failed;
            }
        };
        let mut state = self.lock();
        let Some(front) = state.queue.front_mut() else {
            return Flush::Failed;
        };
        self.backlog.charge(records.len() as u64);
        self.backlog.discharge(plain.len() as u64);
        if let Some(origin) = front.group.as_mut() {
            origin.plain = Some(plain.clone());
        }
        front.bytes = records;
        front.sealed = true;
        Flush::Wrote
    }

    /// After the writer has ended: nothing more is taken, nothing queued stays charged, and
    /// whoever this subscriber held back goes on.
    /// Group frames not started go to other members; those started are counted as cut.
    fn finish(&self) {
        let moved = {
            let mut state = self.lock();
            state.closed = true;
            state.refusing = true;
            state.writing = 0;
            release_held(&mut state);
            let moved = self.take_group_frames(&mut state, |_| true, true);
            count_cut(
                state
                    .queue
                    .iter()
                    .filter_map(|queued| Some((queued.group.as_deref()?, queued.frames))),
            );
            let queued: u64 = state.queue.drain(..).map(|queued| queued.len()).sum();
            state.replies.clear();
            self.backlog.discharge(queued);
            moved
        };
        self.backlog.release(true);
        self.redispatch(moved);
    }
}

/// Counts as cut the group frames among `pieces` (a queue's, in order) that will never be
/// written whole: each frame once, a frame whose start was written included.
fn count_cut<'a>(pieces: impl Iterator<Item = (&'a Origin, u32)>) {
    let mut first = true;
    for (origin, frames) in pieces {
        match origin.kind {
            PieceKind::Whole => origin.group.count_cut(u64::from(frames.max(1))),
            PieceKind::First => origin.group.count_cut(1),
            PieceKind::Middle | PieceKind::Last if first => origin.group.count_cut(1),
            PieceKind::Middle | PieceKind::Last => {}
        }
        first = false;
    }
}

/// Discards the frames held on `state`, opening the gates they held shut; complete group frames
/// stay, to move to another member (`take_group_frames`), and incomplete ones count as cut.
fn release_held(state: &mut StreamState) {
    let held = std::mem::take(&mut state.held);
    for mut held in held {
        if held.blocking {
            held.gate.open();
            held.blocking = false;
        }
        match (&held.group, held.complete) {
            (Some(_), true) => state.held.push_back(held),
            (Some(group), false) => group.count_cut(1),
            (None, _) => {}
        }
    }
}

/// The writer task: writes what publishers and the session queued whenever the socket can take
/// it, and shuts the socket when the outbox closes.
async fn write_loop(outbox: Arc<Outbox>, open: ConnectionGuard) {
    let mut turn = 0;
    let mut batch = Vec::new();
    loop {
        match outbox.flush(&mut batch) {
            Flush::Wrote => {
                turn += 1;
                if turn % WRITES_PER_TURN == 0 {
                    tokio::task::yield_now().await;
                }
                continue;
            }
            Flush::Idle => {
                batch.shrink_to(IDLE_QUEUE_SLOTS);
                tokio::select! {
                    () = outbox.wake.notified() => {}
                    () = outbox.abort.cancelled() => break,
                }
            }
            Flush::Blocked => {
                tokio::select! {
                    ready = outbox.socket.writable() => {
                        if ready.is_err() {
                            break;
                        }
                    }
                    () = outbox.abort.cancelled() => break,
                }
            }
            Flush::Closed | Flush::Failed => break,
        }
    }
    outbox.finish();
    // The peer sees the end of the stream now, whoever still holds the outbox.
    let _ = outbox.socket.shutdown();
    outbox.counters.sessions.remove(&outbox);
    drop(open);
    outbox.done.cancel();
}
