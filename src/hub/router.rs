//! The [`Router`] actor: the one owner of the hub's registry of sessions and subscriptions, and
//! the relay of publications to subscribers.
//!
//! Sessions talk to it with small typed messages named by direction: session → router
//! [`Register`], [`Unregister`], [`Subscribe`], [`Unsubscribe`], [`SetEcho`], [`SetSlow`],
//! [`Query`], [`Publish`]; router → session [`Deliver`] and [`Kick`]. It knows sessions only as
//! `Recipient`s, so it does not depend on the session's type.
//!
//! Every change of subscriptions and every publication passes through this one mailbox, in
//! order: once a session's `Subscribe` is answered, every publication the router handles after it
//! reaches that session. A publication's bytes are shared: each subscriber gets a reference count,
//! not a copy.
//!
//! Publications arrive as [`Piece`]s (see [`relay`](super::relay)): a streamed frame's pieces
//! go to the subscribers that took its first piece, and a subscriber's stream never interleaves two
//! frames. While a subscriber receives a streamed frame, frames from other publishers are *held*
//! for it here, in arrival order, and handed over at the frame's end. The router also applies each
//! subscriber's slow-consumer policy, charging its [`Backlog`] before handing it a piece.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::{Actor, Context, Handler, Message, MessageResult, Recipient};
use bytes::Bytes;
use tracing::{debug, trace, warn};

use crate::hub::control::{CodeSet, SlowPolicy};
use crate::hub::flow::{Backlog, Gate};
use crate::hub::registry::{Registry, SessionId};
use crate::hub::relay::{Piece, PieceKind};

/// Router → session: bytes of a frame to send, exactly as received. Already charged to the
/// session's [`Backlog`].
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub(crate) struct Deliver {
    /// The bytes.
    pub bytes: Bytes,
    /// Where they sit in their frame.
    pub kind: PieceKind,
    /// How many frames end in them (see [`Piece::frames`]).
    pub frames: u32,
}

/// Router → session: close the connection.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "()")]
pub(crate) struct Kick {
    /// Why.
    pub reason: KickReason,
}

/// Why the router closes a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KickReason {
    /// The hub is shutting down.
    Shutdown,
    /// Its slow-consumer policy says so (`disconnect`, or `drop` in the middle of a frame).
    SlowConsumer,
    /// The publisher of the frame it is receiving went away mid-frame: the frame cannot be
    /// completed on its stream.
    PublisherGone,
}

/// How the router reaches one session.
#[derive(Clone, Debug)]
pub(crate) struct SessionHandle {
    /// Where relayed frames go.
    pub deliver: Recipient<Deliver>,
    /// Where a close request goes.
    pub kick: Recipient<Kick>,
    /// The session's outbound byte count, charged by the router.
    pub backlog: Arc<Backlog>,
    /// The session's read gate, closed while subscribers it feeds are full (`block`).
    pub gate: Arc<Gate>,
}

/// Session → router: a new session, before any of its frames.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct Register {
    /// The session.
    pub id: SessionId,
    /// How to reach it.
    pub handle: SessionHandle,
}

/// Session → router: the session has ended.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct Unregister {
    /// The session.
    pub id: SessionId,
}

/// Session → router: add codes to the session's subscriptions.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct Subscribe {
    /// The session.
    pub id: SessionId,
    /// The codes to add.
    pub codes: CodeSet,
}

/// Session → router: remove codes from the session's subscriptions.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct Unsubscribe {
    /// The session.
    pub id: SessionId,
    /// The codes to remove.
    pub codes: CodeSet,
}

/// Session → router: whether the session receives its own publications.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct SetEcho {
    /// The session.
    pub id: SessionId,
    /// On or off.
    pub on: bool,
}

/// Session → router: the session's slow-consumer policy.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct SetSlow {
    /// The session.
    pub id: SessionId,
    /// The policy.
    pub policy: SlowPolicy,
}

/// Session → router: the session's routing state, for `INFO`.
#[derive(Message, Debug)]
#[rtype(result = "RoutingState")]
pub(crate) struct Query {
    /// The session.
    pub id: SessionId,
}

/// A session's routing state as the router holds it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RoutingState {
    /// Its subscriptions.
    pub codes: CodeSet,
    /// Whether it receives its own publications.
    pub echo: bool,
}

/// Session → router: relay a piece of a frame to the subscribers of its status (or, for the
/// rest of a streamed frame, to those that took its first piece).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct Publish {
    /// The publishing session.
    pub from: SessionId,
    /// The piece.
    pub piece: Piece,
}

/// Hub → router: close every session; answers how many there were.
#[derive(Message, Debug)]
#[rtype(result = "usize")]
pub(crate) struct Shutdown;

/// Hub-wide counters, updated from every arbiter without a hop (atomics), read by `INFO` and
/// by shutdown.
#[derive(Debug, Default)]
pub(crate) struct HubCounters {
    /// Publications that had no subscriber.
    pub unrouted_frames: AtomicU64,
    /// Sessions disconnected as slow consumers.
    pub slow_consumers: AtomicU64,
    /// Frames skipped for subscribers under the `drop` policy.
    pub dropped_frames: AtomicU64,
    /// Connections accepted since start.
    pub connections: AtomicU64,
    /// Connections whose socket is still open (the writer has not ended).
    pub open: AtomicU64,
}

/// Counts one open connection in [`HubCounters`] from accept until its socket is closed (dropped
/// by the session's writer), so shutdown can wait for flushes to finish.
#[derive(Debug)]
pub(crate) struct OpenConnection(Arc<HubCounters>);

impl OpenConnection {
    /// Counts a newly accepted connection.
    pub(crate) fn new(counters: Arc<HubCounters>) -> OpenConnection {
        counters.connections.fetch_add(1, Ordering::Relaxed);
        counters.open.fetch_add(1, Ordering::AcqRel);
        OpenConnection(counters)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the router holds for one session.
#[derive(Debug)]
struct Peer {
    handle: SessionHandle,
    policy: SlowPolicy,
    /// The streamed frame on the session's wire, by publisher, and the frames held behind it.
    current: Option<SessionId>,
    held: VecDeque<Held>,
}

/// A frame held for a subscriber while another publisher's streamed frame is on its wire.
#[derive(Debug)]
struct Held {
    from: SessionId,
    pieces: Vec<(Bytes, PieceKind, u32)>,
    bytes: u64,
    /// Frames ending in it (a run of whole frames counts each).
    frames: u32,
    /// Whether its last piece has arrived.
    complete: bool,
    /// Whether it holds its publisher's gate shut (it grew past the subscriber's high-water mark).
    blocking: bool,
}

/// What became of a piece offered to a subscriber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Offer {
    /// Sent, or held for it.
    Taken,
    /// Not for it: the frame was dropped (`drop`) or the subscriber is gone.
    Skipped,
}

/// The router actor.
pub(crate) struct Router {
    registry: Registry<Peer>,
    /// The streamed frames in progress, by publisher: the subscribers that took their first piece.
    streams: HashMap<SessionId, Vec<SessionId>>,
    counters: Arc<HubCounters>,
    /// The slow-consumer policy sessions start with.
    default_policy: SlowPolicy,
    /// Reused target list, so a publication allocates nothing.
    targets: Vec<SessionId>,
}

impl Router {
    /// A router with no sessions.
    pub(crate) fn new(counters: Arc<HubCounters>, default_policy: SlowPolicy) -> Router {
        Router {
            registry: Registry::new(),
            streams: HashMap::new(),
            counters,
            default_policy,
            targets: Vec::new(),
        }
    }

    /// Offers `piece` from `from` to subscriber `to`: sends it now, or holds it while another
    /// frame is on `to`'s wire, applying `to`'s slow-consumer policy.
    fn offer(&mut self, from: SessionId, to: SessionId, piece: &Piece) -> Offer {
        let Some(peer) = self.registry.get(to) else {
            return Offer::Skipped;
        };
        match (peer.current, piece.kind.starts_frame()) {
            (None, true) => {}
            // The rest of a frame this subscriber is not taking (it was dropped while held).
            (None, false) => return Offer::Skipped,
            (Some(current), false) if current == from => {}
            (Some(_), _) => return self.hold(from, to, piece),
        }
        let len = piece.bytes.len() as u64;
        let backlog = &peer.handle.backlog;
        let fits = if piece.kind.starts_frame() {
            backlog.has_room(len)
        } else {
            backlog.has_room_to_continue(len)
        };
        if !fits {
            match peer.policy {
                SlowPolicy::Block => {}
                SlowPolicy::Drop if piece.kind.starts_frame() => {
                    self.count_drop(to, from, piece.frames.max(1));
                    return Offer::Skipped;
                }
                // A frame begun on the wire cannot be dropped in part.
                SlowPolicy::Drop | SlowPolicy::Disconnect => {
                    self.kick(to, KickReason::SlowConsumer);
                    return Offer::Skipped;
                }
            }
        }
        let Some(peer) = self.registry.get_mut(to) else {
            return Offer::Skipped;
        };
        send(&peer.handle, piece.bytes.clone(), piece.kind, piece.frames);
        match piece.kind {
            PieceKind::First => peer.current = Some(from),
            PieceKind::Last => {
                peer.current = None;
                self.release_held(to);
            }
            PieceKind::Whole | PieceKind::Middle => {}
        }
        self.block_if_full(to, from);
        Offer::Taken
    }

    /// Holds `piece` for `to` behind the frame on its wire.
    fn hold(&mut self, from: SessionId, to: SessionId, piece: &Piece) -> Offer {
        let Some(peer) = self.registry.get_mut(to) else {
            return Offer::Skipped;
        };
        if piece.kind.starts_frame() {
            peer.held.push_back(Held {
                from,
                pieces: Vec::new(),
                bytes: 0,
                frames: 0,
                complete: false,
                blocking: false,
            });
        }
        // The publisher's one frame in progress for `to` (earlier complete ones may be held too).
        let Some(at) = peer
            .held
            .iter()
            .rposition(|held| held.from == from && !held.complete)
        else {
            return Offer::Skipped;
        };
        let high = peer.handle.backlog.high();
        let policy = peer.policy;
        let held = &mut peer.held[at];
        held.pieces
            .push((piece.bytes.clone(), piece.kind, piece.frames));
        held.bytes += piece.bytes.len() as u64;
        held.frames += piece.frames;
        held.complete = piece.kind.ends_frame();
        if held.bytes <= high || held.blocking {
            return Offer::Taken;
        }
        match policy {
            SlowPolicy::Block => {
                held.blocking = true;
                if let Some(publisher) = self.registry.get(from) {
                    publisher.handle.gate.close();
                }
                Offer::Taken
            }
            // Nothing of a held frame is on the wire yet: drop all of it.
            SlowPolicy::Drop => {
                let frames = peer.held.remove(at).map_or(1, |held| held.frames.max(1));
                self.count_drop(to, from, frames);
                Offer::Skipped
            }
            SlowPolicy::Disconnect => {
                self.kick(to, KickReason::SlowConsumer);
                Offer::Skipped
            }
        }
    }

    /// After a streamed frame ends on `to`'s wire: hands over the frames held behind it, up to
    /// the next one still streaming.
    fn release_held(&mut self, to: SessionId) {
        loop {
            let Some(peer) = self.registry.get_mut(to) else {
                return;
            };
            if peer.current.is_some() {
                return;
            }
            let Some(held) = peer.held.pop_front() else {
                return;
            };
            for (bytes, kind, frames) in held.pieces {
                send(&peer.handle, bytes, kind, frames);
            }
            if !held.complete {
                peer.current = Some(held.from);
            }
            if held.blocking {
                self.open_gate(held.from);
            }
            self.block_if_full(to, held.from);
        }
    }

    /// Under `block`, holds `from` back while `to` is full.
    fn block_if_full(&self, to: SessionId, from: SessionId) {
        let Some(peer) = self.registry.get(to) else {
            return;
        };
        if peer.policy == SlowPolicy::Block && peer.handle.backlog.is_full() {
            if let Some(publisher) = self.registry.get(from) {
                peer.handle.backlog.block(&publisher.handle.gate);
            }
        }
    }

    fn open_gate(&self, id: SessionId) {
        if let Some(peer) = self.registry.get(id) {
            peer.handle.gate.open();
        }
    }

    fn count_drop(&self, to: SessionId, from: SessionId, frames: u32) {
        let Some(peer) = self.registry.get(to) else {
            return;
        };
        let before = peer.handle.backlog.count_drops(u64::from(frames));
        let dropped = before + u64::from(frames);
        self.counters
            .dropped_frames
            .fetch_add(u64::from(frames), Ordering::Relaxed);
        // The first drop is worth a line, then one each time the count doubles; every drop is
        // counted (INFO) and traced.
        // A power of two lies in (before, dropped] exactly when the count gained a binary digit.
        if before == 0 || dropped.ilog2() > before.ilog2() {
            warn!(session = %to, publisher = %from, dropped, "slow consumer: frame dropped");
        } else {
            debug!(session = %to, publisher = %from, dropped, "slow consumer: frame dropped");
        }
    }

    /// Unregisters `to` at once (nothing more is routed to it) and tells its session to close.
    fn kick(&mut self, to: SessionId, reason: KickReason) {
        let Some(peer) = self.remove(to) else {
            return;
        };
        if reason == KickReason::SlowConsumer {
            self.counters.slow_consumers.fetch_add(1, Ordering::Relaxed);
            warn!(
                session = %to,
                policy = %peer.policy,
                pending = peer.handle.backlog.pending(),
                "slow consumer disconnected"
            );
        }
        peer.handle.kick.do_send(Kick { reason });
    }

    /// Takes session `id` out of the routing state: as a subscriber (its held frames go, and the
    /// gates they held open again) and as a publisher (subscribers in the middle of its streamed
    /// frame are closed; its held partial frames are discarded).
    fn remove(&mut self, id: SessionId) -> Option<Peer> {
        let peer = self.registry.remove(id)?;
        for held in &peer.held {
            if held.blocking {
                self.open_gate(held.from);
            }
        }
        if let Some(targets) = self.streams.remove(&id) {
            for to in targets {
                let Some(subscriber) = self.registry.get_mut(to) else {
                    continue;
                };
                if subscriber.current == Some(id) {
                    debug!(session = %to, publisher = %id, "publisher gone mid-frame");
                    self.kick(to, KickReason::PublisherGone);
                } else {
                    subscriber
                        .held
                        .retain(|held| held.from != id || held.complete);
                }
            }
        }
        Some(peer)
    }
}

/// Charges `bytes` to the session's backlog and sends them.
fn send(handle: &SessionHandle, bytes: Bytes, kind: PieceKind, frames: u32) {
    handle.backlog.charge(bytes.len() as u64);
    handle.deliver.do_send(Deliver {
        bytes,
        kind,
        frames,
    });
}

// Publications and deliveries use `do_send`, which queues past the mailbox capacity: memory is
// bounded by each session's backlog, charged before sending, not by the mailbox.
impl Actor for Router {
    type Context = Context<Self>;
}

impl Handler<Register> for Router {
    type Result = ();

    fn handle(&mut self, msg: Register, _: &mut Context<Self>) {
        let peer = Peer {
            handle: msg.handle,
            policy: self.default_policy,
            current: None,
            held: VecDeque::new(),
        };
        self.registry.insert(msg.id, peer);
    }
}

impl Handler<Unregister> for Router {
    type Result = ();

    fn handle(&mut self, msg: Unregister, _: &mut Context<Self>) {
        self.remove(msg.id);
    }
}

impl Handler<Subscribe> for Router {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) {
        self.registry.subscribe(msg.id, &msg.codes);
    }
}

impl Handler<Unsubscribe> for Router {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _: &mut Context<Self>) {
        self.registry.unsubscribe(msg.id, &msg.codes);
    }
}

impl Handler<SetEcho> for Router {
    type Result = ();

    fn handle(&mut self, msg: SetEcho, _: &mut Context<Self>) {
        self.registry.set_echo(msg.id, msg.on);
    }
}

impl Handler<SetSlow> for Router {
    type Result = ();

    fn handle(&mut self, msg: SetSlow, _: &mut Context<Self>) {
        if let Some(peer) = self.registry.get_mut(msg.id) {
            peer.policy = msg.policy;
        }
    }
}

impl Handler<Query> for Router {
    type Result = MessageResult<Query>;

    fn handle(&mut self, msg: Query, _: &mut Context<Self>) -> Self::Result {
        MessageResult(RoutingState {
            codes: self.registry.codes(msg.id),
            echo: self.registry.echo(msg.id),
        })
    }
}

impl Handler<Publish> for Router {
    type Result = ();

    fn handle(&mut self, msg: Publish, _: &mut Context<Self>) {
        let Publish { from, piece } = msg;
        let mut targets = std::mem::take(&mut self.targets);
        targets.clear();
        if piece.kind.starts_frame() {
            targets.extend(self.registry.target_ids(from, piece.status));
            if targets.is_empty() {
                self.counters
                    .unrouted_frames
                    .fetch_add(1, Ordering::Relaxed);
                trace!(session = %from, status = %piece.status, "publication without subscribers");
            }
        } else if let Some(taking) = self.streams.get(&from) {
            targets.extend_from_slice(taking);
        }
        let mut taking = Vec::new();
        for &to in &targets {
            if self.offer(from, to, &piece) == Offer::Taken && piece.kind == PieceKind::First {
                taking.push(to);
            }
        }
        match piece.kind {
            PieceKind::First if !taking.is_empty() => {
                self.streams.insert(from, taking);
            }
            PieceKind::Last => {
                self.streams.remove(&from);
            }
            _ => {}
        }
        self.targets = targets;
    }
}

impl Handler<Shutdown> for Router {
    type Result = usize;

    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) -> usize {
        let mut sessions = 0;
        for (_, peer) in self.registry.iter() {
            peer.handle.kick.do_send(Kick {
                reason: KickReason::Shutdown,
            });
            sessions += 1;
        }
        sessions
    }
}
