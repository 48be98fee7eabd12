//! The [`Session`] actor: one per TCP connection. It reads frames through the TEJ codec, answers
//! pings and control commands, hands publications to the [`Router`], and queues the frames the
//! router delivers into its bounded [`Outbox`].

use std::cell::Cell;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use actix::dev::Request;
use actix::{
    Actor, ActorContext, ActorFutureExt, Addr, AsyncContext, Context, Handler, StreamHandler,
    WrapFuture,
};
use futures_util::Stream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tracing::{debug, info, warn};

use crate::codec::{CodecError, TejCodec, WireCodec, WireFrame};
use crate::config::HubConfig;
use crate::frame::{Frame, Status};
use crate::hub::control::{self, Command, SlowPolicy, CONTROL};
use crate::hub::outbox::Outbox;
use crate::hub::registry::SessionId;
use crate::hub::router::{
    Deliver, HubCounters, Kick, KickReason, OpenConnection, Publish, Query, Register, Router,
    SessionHandle, SetEcho, Subscribe, Unregister, Unsubscribe,
};

/// How long a closing session may take to flush what it has queued.
const FLUSH_DEADLINE: Duration = Duration::from_secs(2);

/// What the read side has seen, for the idle and stall timeouts.
#[derive(Debug)]
struct ReadActivity {
    /// When the last byte arrived (or the connection opened).
    last_read: Cell<Instant>,
    /// Whether part of a frame is buffered.
    mid_frame: Cell<bool>,
}

/// The session's stream of frames: a `FramedRead` that records read activity after each poll.
struct FrameStream {
    frames: FramedRead<OwnedReadHalf, WireCodec>,
    activity: Rc<ReadActivity>,
}

impl Stream for FrameStream {
    type Item = Result<WireFrame, CodecError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let before = this.frames.read_buffer().len();
        let polled = Pin::new(&mut this.frames).poll_next(cx);
        let buffered = this.frames.read_buffer().len();
        // New bytes either grew the buffer or completed a frame that left it.
        if buffered != before || matches!(polled, Poll::Ready(Some(Ok(_)))) {
            this.activity.last_read.set(Instant::now());
        }
        this.activity.mid_frame.set(buffered > 0);
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
    SlowConsumer,
    Shutdown,
    WriteFailed,
}

impl std::fmt::Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ending::PeerClosed => f.write_str("peer closed"),
            Ending::Protocol(error) => write!(f, "protocol violation: {error}"),
            Ending::IdleTimeout => f.write_str("idle timeout"),
            Ending::StallTimeout => f.write_str("stall timeout"),
            Ending::SlowConsumer => f.write_str("slow consumer"),
            Ending::Shutdown => f.write_str("hub shutting down"),
            Ending::WriteFailed => f.write_str("write failed"),
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
    outbox: Outbox,
    activity: Rc<ReadActivity>,
    frames_in: u64,
    bytes_in: u64,
    ending: Option<Ending>,
}

impl Session {
    /// Starts a session for `stream` on the current arbiter.
    pub(crate) fn start(
        id: SessionId,
        stream: TcpStream,
        peer: SocketAddr,
        router: Addr<Router>,
        config: Arc<HubConfig>,
        counters: Arc<HubCounters>,
        open: OpenConnection,
    ) {
        let (read, write) = stream.into_split();
        let activity = Rc::new(ReadActivity {
            last_read: Cell::new(Instant::now()),
            mid_frame: Cell::new(false),
        });
        let frames = FrameStream {
            frames: FramedRead::new(read, WireCodec(TejCodec::new(config.limits()))),
            activity: activity.clone(),
        };
        Session::create(move |ctx| {
            ctx.add_stream(frames);
            Session {
                id,
                peer,
                router,
                config,
                counters,
                outbox: Outbox::start(write, open),
                activity,
                frames_in: 0,
                bytes_in: 0,
                ending: None,
            }
        });
    }

    /// Queues one of the hub's own frames (a reply, a ping answer, an error).
    fn reply(&self, frame: &Frame) {
        // The hub's own frames carry no file names, so encoding cannot fail.
        if let Ok(wire) = frame.to_wire() {
            self.outbox.push(wire);
        }
    }

    /// Ends the session: sends `ERR <reason>` when given (best effort), flushes, closes.
    fn end(&mut self, ending: Ending, err: Option<String>, ctx: &mut Context<Self>) {
        if self.ending.is_some() {
            return;
        }
        if let Some(reason) = err {
            self.reply(&control::err_reply(reason));
        }
        self.ending = Some(ending);
        self.outbox.close(FLUSH_DEADLINE);
        ctx.stop();
    }

    fn on_frame(&mut self, decoded: WireFrame, ctx: &mut Context<Self>) {
        self.frames_in += 1;
        self.bytes_in += decoded.wire.len() as u64;
        let status = decoded.frame.status;
        if status == Status::PING {
            self.reply(&Frame::ping());
        } else if status == CONTROL {
            self.on_control(&decoded.frame, ctx);
        } else {
            self.router.do_send(Publish {
                from: self.id,
                status,
                wire: decoded.wire,
            });
        }
    }

    fn on_control(&mut self, frame: &Frame, ctx: &mut Context<Self>) {
        let command = match control::parse_frame(frame) {
            Ok(command) => command,
            Err(error) => {
                debug!(session = %self.id, %error, "control command refused");
                self.reply(&control::err_reply(error));
                return;
            }
        };
        let id = self.id;
        let ack = command.ack();
        match command {
            Command::Sub(codes) => {
                let done = self.router.send(Subscribe { id, codes });
                self.after_router(done, ack, ctx);
            }
            Command::Unsub(codes) => {
                let done = self.router.send(Unsubscribe { id, codes });
                self.after_router(done, ack, ctx);
            }
            Command::Echo(on) => {
                let done = self.router.send(SetEcho { id, on });
                self.after_router(done, ack, ctx);
            }
            Command::Slow(SlowPolicy::Disconnect) => {
                if let Some(ack) = &ack {
                    self.reply(ack);
                }
            }
            Command::Slow(policy) => {
                self.reply(&control::err_reply(format!(
                    "slow-consumer policy {policy} is not available"
                )));
            }
            Command::Info => {
                let query = self.router.send(Query { id });
                // Wait: no other frame of this session is handled before the answer is queued,
                // so replies keep the order of the commands.
                ctx.wait(query.into_actor(self).map(|state, session, _| match state {
                    Ok(state) => {
                        let info = session.info(state.codes.iter().map(Status::code), state.echo);
                        session.reply(&control::ok_reply(format!("INFO {info}")));
                    }
                    Err(_) => session.reply(&control::err_reply("hub is shutting down")),
                }));
            }
        }
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
                .map(move |done, session, _| match (done, ack) {
                    (Ok(()), Some(ack)) => session.reply(&ack),
                    (Ok(()), None) => {}
                    (Err(_), _) => session.reply(&control::err_reply("hub is shutting down")),
                }),
        );
    }

    fn info(&self, codes: impl Iterator<Item = u8>, echo: bool) -> String {
        let (config, hub) = (&self.config, &self.counters);
        serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "session": self.id.get(),
            "peer": self.peer.to_string(),
            "subscriptions": codes.collect::<Vec<_>>(),
            "echo": echo,
            "slow_consumer": config.slow_consumer.to_string(),
            "pending_bytes": self.outbox.pending(),
            "dropped_frames": 0,
            "limits": {
                "max_frame_bytes": config.max_frame_bytes,
                "max_pending_bytes": config.max_pending_bytes,
                "idle_timeout": config.idle_timeout,
                "stall_timeout": config.stall_timeout,
            },
            "counters": {
                "frames_in": self.frames_in,
                "bytes_in": self.bytes_in,
                "frames_out": self.outbox.frames_out(),
                "bytes_out": self.outbox.bytes_out(),
            },
            "hub": {
                "connections": hub.connections.load(Ordering::Relaxed),
                "open_connections": hub.open.load(Ordering::Relaxed),
                "unrouted_frames": hub.unrouted_frames.load(Ordering::Relaxed),
                "slow_consumers": hub.slow_consumers.load(Ordering::Relaxed),
            },
        })
        .to_string()
    }

    fn check_timeouts(&mut self, ctx: &mut Context<Self>) {
        let silent = self.activity.last_read.get().elapsed();
        if let Some(idle) = self.config.idle_timeout() {
            if silent >= idle {
                return self.end(Ending::IdleTimeout, Some("idle timeout".into()), ctx);
            }
        }
        if let Some(stall) = self.config.stall_timeout() {
            if self.activity.mid_frame.get() && silent >= stall {
                self.end(Ending::StallTimeout, Some("stall timeout".into()), ctx);
            }
        }
    }
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let handle = SessionHandle {
            deliver: ctx.address().recipient(),
            kick: ctx.address().recipient(),
        };
        self.router.do_send(Register {
            id: self.id,
            handle,
        });
        info!(session = %self.id, peer = %self.peer, "connected");
        let tick = [self.config.idle_timeout(), self.config.stall_timeout()]
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
        self.router.do_send(Unregister { id: self.id });
        let reason = self.ending.clone().unwrap_or(Ending::PeerClosed);
        info!(session = %self.id, peer = %self.peer, %reason, "disconnected");
    }
}

impl StreamHandler<Result<WireFrame, CodecError>> for Session {
    fn handle(&mut self, item: Result<WireFrame, CodecError>, ctx: &mut Context<Self>) {
        match item {
            Ok(decoded) => self.on_frame(decoded, ctx),
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
        self.end(Ending::PeerClosed, None, ctx);
    }
}

impl Handler<Deliver> for Session {
    type Result = ();

    fn handle(&mut self, msg: Deliver, ctx: &mut Context<Self>) {
        if self.ending.is_some() {
            return;
        }
        let waiting = self.outbox.waiting();
        // An empty queue takes any frame; the limit bounds what waits behind the one in flight.
        if waiting > 0 && waiting + msg.wire.len() as u64 > self.config.max_pending_bytes {
            self.counters.slow_consumers.fetch_add(1, Ordering::Relaxed);
            let pending = self.outbox.pending();
            warn!(
                session = %self.id,
                peer = %self.peer,
                pending,
                waiting,
                "slow consumer disconnected"
            );
            // Unregistered at once; what is queued (bounded) and the ERR get a short deadline.
            return self.end(Ending::SlowConsumer, Some("slow consumer".into()), ctx);
        }
        self.outbox.push(msg.wire);
    }
}

impl Handler<Kick> for Session {
    type Result = ();

    fn handle(&mut self, msg: Kick, ctx: &mut Context<Self>) {
        match msg.reason {
            KickReason::Shutdown => {
                self.end(Ending::Shutdown, Some("hub shutting down".into()), ctx);
            }
        }
    }
}
