//! The [`Session`] actor: one per TCP connection. It reads frames through the TEJ codec, answers
//! pings and control commands (subscriptions through the [`Router`]), and delivers its
//! publications to their subscribers itself through its [`Publisher`]. What others deliver to it
//! goes through its [`Outbox`], which publishers write to directly.

use std::cell::Cell;
use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use actix::dev::Request;
use actix::{
    Actor, ActorContext, ActorFutureExt, Addr, AsyncContext, Context, Handler, Message, Recipient,
    StreamHandler, WrapFuture,
};
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use tokio::time::Instant;
use tokio_util::codec::{Decoder, FramedRead};
use tracing::{debug, info, warn};

use crate::codec::{CodecError, Limits, TejCodec};
use crate::frame::{Frame, Status};
use crate::hub::admission::IngressLimit;
use crate::hub::auth::{Access, Authenticated, Permissions, Users};
use crate::hub::cluster::Cluster;
use crate::hub::config::HubConfig;
use crate::hub::control::{
    self, CodeSet, Command, Info, Password, Reply, SessionCounters, SlowPolicy, CONTROL,
};
use crate::hub::delivery::flow::{Backlog, Gate};
use crate::hub::delivery::idle::{IdleTimer, SMALL_BUFFER};
use crate::hub::delivery::outbox::{Outbox, OutboxContext};
use crate::hub::delivery::publisher::Publisher;
use crate::hub::delivery::relay::{Piece, RelayCodec};
use crate::hub::delivery::table::SubscriptionTable;
use crate::hub::delivery::transport::{ReadHalf, Transport};
use crate::hub::durable::{Attachments, Durables};
use crate::hub::ops::counters::{ConnectionGuard, HubCounters, SessionStats};
use crate::hub::router::{
    Leave, Query, Register, Router, Subscribe, Subscriptions, Unregister, Unsubscribe,
};

mod durable;

/// A session's id. The accept loop allocates them from a counter, so they are unique and increasing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(u64);

impl SessionId {
    /// The id numbered `id`.
    pub const fn new(id: u64) -> SessionId {
        SessionId(id)
    }

    /// The id's number.
    pub const fn get(self) -> u64 {
        self.0
    }
}

/// The bare number, e.g. `42`.
impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Router, the drain, or a publisher (through the subscriber's outbox) → session: close the
/// connection.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "()")]
pub(crate) struct Kick {
    /// Why.
    pub reason: KickReason,
}

/// Hub → session: the hub reloaded its users; the session's permissions follow (or it is
/// closed with `ERR auth revoked` when its user is gone).
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub(crate) struct Reauthorize {
    /// The users now, `None` for an open hub.
    pub users: Option<Arc<Users>>,
}

/// How others reach a session: its mailbox for the messages they may send it.
#[derive(Clone, Debug)]
pub(crate) struct SessionLink {
    /// Close it.
    pub kick: Recipient<Kick>,
    /// Apply reloaded users.
    pub reauthorize: Recipient<Reauthorize>,
}

/// Why the router closes a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KickReason {
    /// The hub is shutting down.
    Shutdown,
    /// Its slow-consumer policy says so (`disconnect`, or `drop` in the middle of a frame).
    SlowConsumer,
    /// The hub is draining (lame duck): close at the next frame boundary.
    Drain,
    /// The publisher of the frame it is receiving went away mid-frame: the frame cannot be
    /// completed on its stream.
    PublisherGone,
}

/// How long a closing session may take to flush what it has queued.
const FLUSH_DEADLINE: Duration = Duration::from_secs(2);
/// How long a publisher that closed its side waits for the stored replies it is owed.
const PUBACK_DRAIN: Duration = Duration::from_secs(10);
/// How often it looks.
const PUBACK_POLL: Duration = Duration::from_millis(5);
/// How often a draining session looks for a frame boundary to close at.
const DRAIN_CHECK: Duration = Duration::from_millis(10);

/// What the read side has seen, for the idle, stall and minimum-rate checks.
#[derive(Debug)]
struct ReadActivity {
    /// When the last byte arrived (or the connection opened, or reading resumed).
    last_read: Cell<Instant>,
    /// Whether part of a frame has been read.
    mid_frame: Cell<bool>,
    /// Whether the hub has stopped reading (a subscriber this session feeds is full, or the
    /// connection is over its ingress rate).
    paused: Cell<bool>,
    /// Start of the current minimum-rate window, and the bytes read in it.
    window_start: Cell<Instant>,
    window_bytes: Cell<u64>,
}

impl ReadActivity {
    fn new() -> ReadActivity {
        let now = Instant::now();
        ReadActivity {
            last_read: Cell::new(now),
            mid_frame: Cell::new(false),
            paused: Cell::new(false),
            window_start: Cell::new(now),
            window_bytes: Cell::new(0),
        }
    }

    /// Starts the clocks afresh: a publisher the hub did not read is neither idle nor slow.
    fn restart_clocks(&self) {
        self.last_read.set(Instant::now());
        self.restart_window();
    }

    /// Starts a new minimum-rate window. The stall clock (`last_read`) is not touched: each
    /// limit runs on its own, so a rate met in one window never postpones the stall timeout.
    fn restart_window(&self) {
        self.window_start.set(Instant::now());
        self.window_bytes.set(0);
    }
}

/// The session's stream of pieces: a `FramedRead` behind the session's read gate, recording read
/// activity after each poll.
struct PieceStream {
    pieces: FramedRead<ReadHalf, RelayCodec>,
    gate: Arc<Gate>,
    activity: Rc<ReadActivity>,
    /// Armed when reading pauses between frames with a large read buffer: when it fires there,
    /// the buffer is given back (a small one is given back at the pause).
    idle: IdleTimer,
    /// `max-ingress-bytes-per-sec`, if on.
    ingress: Option<IngressLimit>,
}

/// Gives the read buffer back if the connection is between frames with nothing buffered.
fn release_if_idle(pieces: &mut FramedRead<ReadHalf, RelayCodec>) {
    if !pieces.decoder().is_mid_frame(pieces.read_buffer().len()) {
        *pieces.read_buffer_mut() = BytesMut::new();
    }
}

impl Stream for PieceStream {
    type Item = Result<Piece, CodecError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let activity = &this.activity;
        let held_back = this.gate.poll_open(cx).is_pending()
            || this
                .ingress
                .as_mut()
                .is_some_and(|limit| limit.poll_allowed(cx).is_pending());
        if held_back {
            activity.paused.set(true);
            return Poll::Pending;
        }
        if activity.paused.replace(false) {
            activity.restart_clocks();
        }
        if this.idle.poll_fired(cx).is_ready() {
            release_if_idle(&mut this.pieces);
        }
        if this.pieces.read_buffer().capacity() == 0 {
            // No buffer: take a small one when there are bytes (or the end) to read; the relay
            // codec grows it while data flows, up to a chunk while streaming.
            if this.pieces.get_ref().poll_read_ready(cx).is_pending() {
                return Poll::Pending;
            }
            this.pieces.read_buffer_mut().reserve(SMALL_BUFFER);
        }
        let before = this.pieces.read_buffer().len();
        let polled = Pin::new(&mut this.pieces).poll_next(cx);
        let buffered = this.pieces.read_buffer().len();
        let emitted = match &polled {
            Poll::Ready(Some(Ok(piece))) => piece.bytes.len(),
            _ => 0,
        };
        let read = (buffered + emitted).saturating_sub(before) as u64;
        if read > 0 {
            if let Some(limit) = this.ingress.as_mut() {
                limit.consume(read);
            }
            activity.last_read.set(Instant::now());
            activity
                .window_bytes
                .set(activity.window_bytes.get() + read);
        }
        let mid_frame = this.pieces.decoder().is_mid_frame(buffered);
        if mid_frame && !activity.mid_frame.get() {
            // A frame starts: so does its rate window.
            activity.window_start.set(Instant::now());
            activity.window_bytes.set(read);
        }
        activity.mid_frame.set(mid_frame);
        if polled.is_pending() && !mid_frame {
            // Between frames, nothing buffered, nothing to read: perhaps going idle.
            if this.pieces.read_buffer().capacity() <= SMALL_BUFFER {
                release_if_idle(&mut this.pieces);
            } else {
                this.idle.arm();
                if this.idle.poll_fired(cx).is_ready() {
                    release_if_idle(&mut this.pieces);
                }
            }
        }
        polled
    }
}

/// Why a session ended, for the disconnect log line.
#[derive(Debug, Clone)]
enum Ending {
    PeerClosed,
    Protocol(String),
    IdleTimeout,
    StallTimeout,
    TooSlowSender { rate: u64 },
    SlowConsumer,
    PublisherGone,
    TooManyReplies,
    Shutdown,
    Drain,
    WriteFailed,
    AuthRequired,
    AuthFailed,
    AuthBusy,
    AuthTimeout,
    AuthRevoked,
}

impl std::fmt::Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ending::PeerClosed => f.write_str("peer closed"),
            Ending::Protocol(error) => write!(f, "protocol violation: {error}"),
            Ending::IdleTimeout => f.write_str("idle timeout"),
            Ending::StallTimeout => f.write_str("stall timeout"),
            Ending::TooSlowSender { rate } => {
                write!(
                    f,
                    "sending a frame at {rate} bytes/s, below the minimum rate"
                )
            }
            Ending::SlowConsumer => f.write_str("slow consumer"),
            Ending::PublisherGone => f.write_str("publisher of the frame in progress went away"),
            Ending::TooManyReplies => f.write_str("too many commands while a frame was streamed"),
            Ending::Shutdown => f.write_str("hub shutting down"),
            Ending::Drain => f.write_str("hub draining"),
            Ending::WriteFailed => f.write_str("write failed"),
            Ending::AuthRequired => f.write_str("a frame before authenticating"),
            Ending::AuthFailed => f.write_str("auth failed"),
            Ending::AuthBusy => f.write_str("too many password checks waiting"),
            Ending::AuthTimeout => f.write_str("no auth in time"),
            Ending::AuthRevoked => f.write_str("its user or access was removed by a reload"),
        }
    }
}

/// One connection to the hub.
pub(crate) struct Session {
    id: SessionId,
    peer: SocketAddr,
    router: Addr<Router>,
    config: Arc<HubConfig>,
    counters: Arc<HubCounters>,
    outbox: Arc<Outbox>,
    publisher: Publisher,
    access: Access,
    gate: Arc<Gate>,
    backlog: Arc<Backlog>,
    activity: Rc<ReadActivity>,
    /// When a connection that must authenticate has to have done so.
    auth_deadline: Instant,
    /// Frames and bytes in, echo: the figures monitoring reads.
    stats: Arc<SessionStats>,
    /// Whether the hub drains: close at the next frame boundary.
    draining: bool,
    ending: Option<Ending>,
    /// The cluster this hub belongs to, if any (`INFO`).
    cluster: Option<Arc<Cluster>>,
    /// What publishers read (for the publishers of durable feeds' dead letters).
    table: Arc<SubscriptionTable>,
    /// The hub's durable cursors, if it stores anything.
    durables: Option<Arc<Durables>>,
    /// The durable cursors this session is attached to.
    attachments: Attachments,
}

/// What a session is started with besides its socket.
pub(crate) struct SessionContext {
    /// The router, for registration and subscriptions.
    pub router: Addr<Router>,
    /// What publishers read to find subscribers.
    pub table: Arc<SubscriptionTable>,
    /// The hub's settings.
    pub config: Arc<HubConfig>,
    /// The hub's counters.
    pub counters: Arc<HubCounters>,
    /// The users, `None` on an open hub.
    pub users: Option<Arc<Users>>,
    /// The cluster this hub belongs to, if any.
    pub cluster: Option<Arc<Cluster>>,
    /// The durable store's cursors, if the hub has durable codes.
    pub durables: Option<Arc<Durables>>,
}

impl Session {
    /// Starts a session for `stream` on the current arbiter.
    pub(crate) fn start(
        id: SessionId,
        stream: Transport,
        peer: SocketAddr,
        hub: SessionContext,
        certified: Option<Authenticated>,
        open: ConnectionGuard,
    ) {
        let SessionContext {
            router,
            table,
            config,
            counters,
            users,
            cluster,
            durables,
        } = hub;
        let (read, write) = stream.into_split();
        let activity = Rc::new(ReadActivity::new());
        let gate = Gate::new();
        let backlog = Backlog::new(config.max_pending_bytes);
        let codec = RelayCodec::new(config.limits(), config.cut_through_bytes);
        let pieces = PieceStream {
            // No read buffer until the peer sends something.
            pieces: FramedRead::with_capacity(read, codec, 0),
            gate: gate.clone(),
            activity: activity.clone(),
            idle: IdleTimer::default(),
            ingress: IngressLimit::new(config.max_ingress_bytes_per_sec),
        };
        let stats = SessionStats::new(peer);
        Session::create(move |ctx| {
            ctx.add_stream(pieces);
            let outbox = Outbox::start(
                write,
                config.slow_consumer,
                backlog.clone(),
                OutboxContext {
                    id,
                    session: SessionLink {
                        kick: ctx.address().recipient(),
                        reauthorize: ctx.address().recipient(),
                    },
                    counters: counters.clone(),
                    stats: stats.clone(),
                    open,
                    table: Arc::downgrade(&table),
                },
            );
            counters.sessions.insert(&outbox);
            let access = Access::new(users, certified);
            let auth_deadline = Instant::now() + config.auth_timeout();
            let allowed = access.permissions().unwrap_or_default().publish;
            let publisher = Publisher::new(
                id,
                gate.clone(),
                table.clone(),
                counters.clone(),
                allowed,
                cluster.clone(),
            )
            .storing(durables.as_ref().map(|durables| durables.store().clone()));
            Session {
                id,
                peer,
                router,
                outbox,
                publisher,
                access,
                config,
                counters,
                gate,
                backlog,
                activity,
                auth_deadline,
                stats,
                draining: false,
                ending: None,
                cluster,
                table,
                durables,
                attachments: Attachments::default(),
            }
        });
    }

    /// Queues one of the hub's own frames (a reply, a ping answer).
    fn reply(&mut self, frame: &Frame, ctx: &mut Context<Self>) {
        // The hub's own frames carry no file names, so encoding cannot fail.
        let Ok(wire) = frame.to_wire() else {
            return;
        };
        if self.outbox.reply(wire).is_err() {
            self.end(Ending::TooManyReplies, None, ctx);
        }
    }

    /// Ends the session: sends `ERR <reason>` when given and the stream is between frames (an
    /// `ERR` inside a frame would be read as its bytes), flushes, closes.
    fn end(&mut self, ending: Ending, err: Option<String>, ctx: &mut Context<Self>) {
        if self.ending.is_some() {
            return;
        }
        if let Some(reason) = err.filter(|_| !self.outbox.is_mid_frame()) {
            if let Ok(wire) = control::err_reply(reason).to_wire() {
                // Best effort: a refusal only means the session was closing anyway.
                let _ = self.outbox.reply(wire);
            }
        }
        if self.outbox.is_mid_frame() {
            // The frame on the wire cannot be completed: what follows it is of no use.
            self.outbox.abort();
        } else {
            self.outbox.close(FLUSH_DEADLINE);
        }
        self.ending = Some(ending);
        ctx.stop();
    }

    fn on_piece(&mut self, piece: Piece, ctx: &mut Context<Self>) {
        self.stats.count_in(piece.frames, piece.bytes.len());
        // Pings and control frames are always whole (the relay codec refuses larger ones).
        if piece.status == Status::PING {
            self.reply(&Frame::ping(), ctx);
        } else if piece.status == CONTROL {
            self.on_control(piece.bytes, ctx);
        } else if self.access.permissions().is_none() {
            self.end(Ending::AuthRequired, Some("auth required".into()), ctx);
        } else if let Err(denied) = self.publisher.publish(&piece) {
            debug!(session = %self.id, status = %denied.status, frames = denied.frames, "publication denied");
            if self.access.count_denied(denied.status, denied.frames) {
                let reason = format!("permission denied: publish {}", denied.status);
                self.reply(&control::err_reply(reason), ctx);
            }
        }
    }

    fn on_control(&mut self, wire: Bytes, ctx: &mut Context<Self>) {
        let frame =
            TejCodec::new(Limits::frame_only(u64::MAX)).decode(&mut BytesMut::from(&wire[..]));
        let command = match frame {
            Ok(Some(frame)) => control::parse_frame(&frame),
            // The relay codec has checked the frame already.
            _ => return,
        };
        let authenticating = matches!(command, Ok(Command::Auth { .. }));
        if self.access.permissions().is_none() && !authenticating {
            return self.end(Ending::AuthRequired, Some("auth required".into()), ctx);
        }
        let command = match command {
            Ok(command) => command,
            Err(error) => {
                debug!(session = %self.id, %error, "control command refused");
                return self.reply(&control::err_reply(error), ctx);
            }
        };
        let id = self.id;
        let ack = command.ack().map(|reply| reply.to_frame());
        match command {
            Command::Sub(codes, options) if options.durable.is_some() => {
                if let (Some(codes), Some(name)) =
                    (self.durable_access(codes, ctx), options.durable.clone())
                {
                    self.subscribe_durable(codes, name, options, ctx);
                }
            }
            // Deleting a cursor takes the permission that subscribing to it takes.
            Command::Unsub(codes, options) if options.delete => {
                if let (Some(codes), Some(name)) =
                    (self.durable_access(codes, ctx), options.durable.clone())
                {
                    self.delete_durable(codes, name, options, ctx);
                }
            }
            Command::Unsub(codes, options) if options.durable.is_some() => {
                if let Some(name) = options.durable.clone() {
                    self.unsubscribe_durable(codes, name, options, ctx);
                }
            }
            Command::Sub(codes, options) => match self.access.subscription(codes) {
                Ok(codes) => {
                    if let Some(name) = options.group.as_ref().filter(|n| !self.access.may_join(n))
                    {
                        let reason = format!("permission denied: group {name}");
                        return self.reply(&control::err_reply(reason), ctx);
                    }
                    // The router queues the OK itself, before publishers see the subscription.
                    let Ok(ack) = Reply::Sub(codes, options.clone()).to_frame().to_wire() else {
                        return;
                    };
                    let group = options.group;
                    let done = self.router.send(Subscribe {
                        id,
                        codes,
                        ack,
                        group,
                    });
                    self.after_router(done, None, ctx);
                }
                Err(denied) => {
                    let reason = format!("permission denied: subscribe {denied}");
                    self.reply(&control::err_reply(reason), ctx);
                }
            },
            Command::Unsub(codes, options) => {
                let from = options.group.map_or(Leave::Ordinary, Leave::Group);
                let done = self.router.send(Unsubscribe { id, codes, from });
                self.after_router(done, ack, ctx);
            }
            Command::Echo(on) => {
                self.publisher.set_echo(on);
                self.stats.set_echo(on);
                self.ack(ack, ctx);
            }
            Command::Slow(policy) => {
                self.outbox.set_policy(policy);
                self.ack(ack, ctx);
            }
            Command::Info => {
                let query = self.router.send(Query { id });
                // Wait: no other frame of this session is handled before the answer is queued,
                // so replies keep the order of the commands.
                ctx.wait(query.into_actor(self).map(|subscriptions, session, ctx| {
                    let reply = match subscriptions {
                        Ok(subscriptions) => {
                            Reply::Info(Box::new(session.info(subscriptions))).to_frame()
                        }
                        Err(_) => control::err_reply("hub is shutting down"),
                    };
                    session.reply(&reply, ctx);
                }));
            }
            Command::Auth { user, password } => self.authenticate(user, password, ctx),
            Command::Puback(on) => self.set_puback(on, ctx),
            Command::Ack { name, status, seq } => self.acknowledge(name, status, seq, ctx),
        }
    }

    /// Checks an `AUTH` off this thread; no other frame of the session is handled meanwhile.
    /// Success: `OK AUTH <user>`, and the user's permissions apply (subscriptions they do not
    /// cover are dropped). A wrong user or password: `ERR auth failed`, closed. Too many checks
    /// waiting already: `ERR auth busy`, closed, without a check.
    fn authenticate(&mut self, user: String, password: Password, ctx: &mut Context<Self>) {
        let users = match self.access.users_for_auth() {
            Ok(users) => users,
            Err(refused) => return self.reply(&control::err_reply(refused), ctx),
        };
        // An anonymous connection may authenticate at any time, with the same allowance.
        let deadline = if self.access.permissions().is_none() {
            self.auth_deadline
        } else {
            Instant::now() + self.config.auth_timeout()
        };
        let check = async move {
            let verified =
                tokio::time::timeout_at(deadline, users.verify(&user, password.expose()));
            (verified.await, user)
        };
        ctx.wait(check.into_actor(self).map(|(verified, user), session, ctx| {
            match verified {
                Ok(Ok(Some(authenticated))) => {
                    info!(session = %session.id, peer = %session.peer, user = %authenticated.user, "authenticated");
                    let permissions = authenticated.permissions.clone();
                    session.publisher.allow(permissions.publish);
                    session.access.grant(authenticated);
                    let ack = Some(Reply::Auth(user).to_frame());
                    let done = session.narrow(permissions);
                    session.after_router(done, ack, ctx);
                }
                Ok(Ok(None)) => {
                    session.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
                    warn!(session = %session.id, peer = %session.peer, user = %control::clip(&user), "auth failed");
                    session.end(Ending::AuthFailed, Some("auth failed".into()), ctx);
                }
                Ok(Err(busy)) => {
                    // Not a failed password: nothing was checked. Debug only, so that a flood
                    // does not flood the log too.
                    debug!(session = %session.id, peer = %session.peer, "auth busy");
                    session.end(Ending::AuthBusy, Some(busy.to_string()), ctx);
                }
                Err(_) => session.end(Ending::AuthTimeout, Some("auth timeout".into()), ctx),
            }
        }));
    }

    /// Queues the command's `ack` once the router has applied it (`ERR` if the router is gone).
    /// No other frame of this session is handled before, so replies keep the order of the
    /// commands.
    fn after_router<M>(
        &mut self,
        request: Request<Router, M>,
        ack: Option<Frame>,
        ctx: &mut Context<Self>,
    ) where
        M: actix::Message<Result = ()> + Send + 'static,
        Router: Handler<M>,
    {
        ctx.wait(
            request
                .into_actor(self)
                .map(move |done, session, ctx| match (done, ack) {
                    (Ok(()), Some(ack)) => session.reply(&ack, ctx),
                    (Ok(()), None) => {}
                    (Err(_), _) => session.reply(&control::err_reply("hub is shutting down"), ctx),
                }),
        );
    }

    /// Queues a command's `ack`, if it has one.
    fn ack(&mut self, ack: Option<Frame>, ctx: &mut Context<Self>) {
        if let Some(ack) = ack {
            self.reply(&ack, ctx);
        }
    }

    /// Tells the router to drop the subscriptions and group memberships `permissions` no longer
    /// cover; the returned request is answered once it has.
    fn narrow(&self, permissions: Permissions) -> Request<Router, Unsubscribe> {
        let id = self.id;
        self.router.do_send(Unsubscribe {
            id,
            codes: CodeSet::relayable(),
            from: Leave::GroupsDenied(permissions.groups),
        });
        self.router.send(Unsubscribe {
            id,
            codes: permissions.subscribe.complement(),
            from: Leave::Everything,
        })
    }

    /// This session's `INFO`, with its `subscriptions` and groups.
    fn info(&self, subscriptions: Subscriptions) -> Info {
        Info {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            session: self.id.get(),
            peer: self.peer,
            subscriptions: subscriptions.codes,
            groups: subscriptions.groups,
            user: self.access.user().map(str::to_owned),
            denied_frames: self.access.denied_frames(),
            echo: self.publisher.echo(),
            slow_consumer: self.outbox.policy(),
            pending_bytes: self.outbox.pending(),
            dropped_frames: self.backlog.dropped(),
            limits: self.config.limit_settings(),
            counters: SessionCounters {
                frames_in: self.stats.frames_in(),
                frames_out: self.outbox.frames_out(),
                bytes_in: self.stats.bytes_in(),
                bytes_out: self.outbox.bytes_out(),
            },
            hub: self
                .counters
                .snapshot(self.cluster.as_deref(), self.durables.as_deref()),
            cluster: self.cluster.as_ref().map(|cluster| cluster.view()),
            puback: self.publisher.puback(),
            durable: self.attachments.view(),
        }
    }

    /// The read-side clocks (idle, stall, minimum rate: never while the hub itself holds the
    /// publisher back) and the write side's (a subscriber under `block` that writes nothing).
    fn check_timeouts(&mut self, ctx: &mut Context<Self>) {
        if let Some(timeout) = self.config.slow_consumer_timeout() {
            if self.outbox.policy() == SlowPolicy::Block && self.outbox.stuck_for() >= timeout {
                self.counters.slow_consumers.fetch_add(1, Ordering::Relaxed);
                warn!(
                    session = %self.id,
                    peer = %self.peer,
                    pending = self.outbox.pending(),
                    "slow consumer disconnected: no progress"
                );
                return self.end(Ending::SlowConsumer, Some("slow consumer".into()), ctx);
            }
        }
        let activity = &self.activity;
        if activity.paused.get() || self.gate.is_closed() {
            return;
        }
        let silent = activity.last_read.get().elapsed();
        if let Some(idle) = self.config.idle_timeout() {
            if silent >= idle {
                return self.end(Ending::IdleTimeout, Some("idle timeout".into()), ctx);
            }
        }
        if !activity.mid_frame.get() {
            return;
        }
        if let Some(stall) = self.config.stall_timeout() {
            if silent >= stall {
                return self.end(Ending::StallTimeout, Some("stall timeout".into()), ctx);
            }
        }
        if let Some((min_rate, window)) = self.config.min_rate() {
            let elapsed = activity.window_start.get().elapsed();
            if elapsed >= window {
                let rate = activity.window_bytes.get() * 1000 / (elapsed.as_millis().max(1) as u64);
                if rate < min_rate {
                    warn!(session = %self.id, peer = %self.peer, rate, min_rate, "sender too slow");
                    let reason = format!("sending below the minimum rate of {min_rate} bytes/s");
                    return self.end(Ending::TooSlowSender { rate }, Some(reason), ctx);
                }
                activity.restart_window();
            }
        }
    }
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.router.do_send(Register {
            id: self.id,
            outbox: self.outbox.clone(),
        });
        info!(session = %self.id, peer = %self.peer, "connected");
        if self.access.permissions().is_none() {
            let left = self.auth_deadline.saturating_duration_since(Instant::now());
            ctx.run_later(left, |session, ctx| {
                if session.access.permissions().is_none() {
                    session.end(Ending::AuthTimeout, Some("auth timeout".into()), ctx);
                }
            });
        }
        let config = &self.config;
        let tick = [
            config.idle_timeout(),
            config.stall_timeout(),
            config.slow_consumer_timeout(),
            config.min_rate().map(|(_, window)| window),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|t| (t / 4).clamp(Duration::from_millis(50), Duration::from_secs(1)));
        if let Some(tick) = tick {
            ctx.run_interval(tick, Session::check_timeouts);
        }
        // A socket that fails to write ends the session even if the peer never sends again.
        let written_out = self.outbox.done();
        ctx.spawn(
            async move { written_out.cancelled().await }
                .into_actor(self)
                .map(|(), session, ctx| session.end(Ending::WriteFailed, None, ctx)),
        );
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.publisher.abandon();
        self.detach_durables();
        self.router.do_send(Unregister { id: self.id });
        let reason = self.ending.clone().unwrap_or(Ending::PeerClosed);
        info!(session = %self.id, peer = %self.peer, %reason, "disconnected");
    }
}

impl StreamHandler<Result<Piece, CodecError>> for Session {
    fn handle(&mut self, item: Result<Piece, CodecError>, ctx: &mut Context<Self>) {
        match item {
            Ok(piece) => self.on_piece(piece, ctx),
            Err(CodecError::Io(error)) => {
                debug!(session = %self.id, %error, "read failed");
                self.end(Ending::PeerClosed, None, ctx);
            }
            Err(error) => {
                warn!(session = %self.id, peer = %self.peer, %error, "protocol violation");
                let reason = error.to_string();
                self.end(Ending::Protocol(reason.clone()), Some(reason), ctx);
            }
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        // The peer closed its side: the stored replies it is owed go out first (bounded).
        if self.publisher.puback_pending().load(Ordering::Relaxed) > 0 {
            let deadline = Instant::now() + PUBACK_DRAIN;
            ctx.run_interval(PUBACK_POLL, move |session, ctx| {
                let pending = session.publisher.puback_pending().load(Ordering::Relaxed);
                if pending == 0 || Instant::now() >= deadline {
                    session.end(Ending::PeerClosed, None, ctx);
                }
            });
            return;
        }
        self.end(Ending::PeerClosed, None, ctx);
    }
}

impl Handler<Kick> for Session {
    type Result = ();

    fn handle(&mut self, msg: Kick, ctx: &mut Context<Self>) {
        match msg.reason {
            KickReason::Shutdown => {
                self.end(Ending::Shutdown, Some("hub shutting down".into()), ctx);
            }
            KickReason::SlowConsumer => {
                self.end(Ending::SlowConsumer, Some("slow consumer".into()), ctx);
            }
            KickReason::PublisherGone => self.end(Ending::PublisherGone, None, ctx),
            KickReason::Drain => self.drain(ctx),
        }
    }
}

impl Handler<Reauthorize> for Session {
    type Result = ();

    /// The hub reloaded its users: the session keeps the permissions they give it now (and
    /// loses subscriptions they no longer cover), or is closed with `ERR auth revoked`.
    fn handle(&mut self, msg: Reauthorize, ctx: &mut Context<Self>) {
        match self.access.reauthorize(msg.users) {
            Ok(permissions) => {
                let permissions = permissions.unwrap_or_default();
                self.publisher.allow(permissions.publish);
                let done = self.narrow(permissions);
                self.after_router(done, None, ctx);
            }
            Err(revoked) => {
                info!(session = %self.id, peer = %self.peer, "auth revoked by a reload");
                self.end(Ending::AuthRevoked, Some(revoked.to_string()), ctx);
            }
        }
    }
}

impl Session {
    /// Lame duck: ends the session with `ERR hub draining` at the first frame boundary on both
    /// sides, so no frame it is sending or receiving is cut.
    fn drain(&mut self, ctx: &mut Context<Self>) {
        if self.draining {
            return;
        }
        self.draining = true;
        if !self.close_if_between_frames(ctx) {
            ctx.run_interval(DRAIN_CHECK, |session, ctx| {
                session.close_if_between_frames(ctx);
            });
        }
    }

    /// Ends a draining session if neither its read side nor its outbox is inside a frame;
    /// returns whether it did.
    fn close_if_between_frames(&mut self, ctx: &mut Context<Self>) -> bool {
        if self.activity.mid_frame.get() || self.outbox.is_mid_frame() {
            return false;
        }
        self.end(Ending::Drain, Some("hub draining".into()), ctx);
        true
    }
}
