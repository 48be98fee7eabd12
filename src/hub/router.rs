//! The [`Router`] actor: the one owner of the hub's registry of sessions and subscriptions, and
//! the relay of publications to subscribers.
//!
//! Sessions talk to it with small typed messages named by direction: session → router
//! [`Register`], [`Unregister`], [`Subscribe`], [`Unsubscribe`], [`SetEcho`], [`Query`],
//! [`Publish`]; router → session [`Deliver`] and [`Kick`]. It knows sessions only as
//! `Recipient`s, so it does not depend on the session's type.
//!
//! Every change of subscriptions and every publication passes through this one mailbox, in
//! order: once a session's `Subscribe` is answered, every publication the router handles after it
//! reaches that session. A publication's bytes are shared: each subscriber gets a reference count,
//! not a copy.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::{Actor, Context, Handler, Message, MessageResult, Recipient};
use bytes::Bytes;
use tracing::trace;

use crate::frame::Status;
use crate::hub::control::CodeSet;
use crate::hub::registry::{Registry, SessionId};

/// Router → session: a frame to send, as its exact wire bytes.
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub(crate) struct Deliver {
    /// The whole encoded frame.
    pub wire: Bytes,
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
}

/// How the router reaches one session.
#[derive(Clone, Debug)]
pub(crate) struct SessionHandle {
    /// Where relayed frames go.
    pub deliver: Recipient<Deliver>,
    /// Where a close request goes.
    pub kick: Recipient<Kick>,
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

/// Session → router: relay a frame to the subscribers of `status`.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct Publish {
    /// The publishing session.
    pub from: SessionId,
    /// The frame's status.
    pub status: Status,
    /// The frame's exact wire bytes.
    pub wire: Bytes,
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

/// The router actor.
pub(crate) struct Router {
    registry: Registry<SessionHandle>,
    counters: Arc<HubCounters>,
}

impl Router {
    /// A router with no sessions.
    pub(crate) fn new(counters: Arc<HubCounters>) -> Router {
        Router {
            registry: Registry::new(),
            counters,
        }
    }
}

// Publications and deliveries use `do_send`, which queues past the mailbox capacity: memory is
// bounded by each session's outbox count, not by the mailbox.
impl Actor for Router {
    type Context = Context<Self>;
}

impl Handler<Register> for Router {
    type Result = ();

    fn handle(&mut self, msg: Register, _: &mut Context<Self>) {
        self.registry.insert(msg.id, msg.handle);
    }
}

impl Handler<Unregister> for Router {
    type Result = ();

    fn handle(&mut self, msg: Unregister, _: &mut Context<Self>) {
        self.registry.remove(msg.id);
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
        let mut delivered = 0usize;
        for target in self.registry.targets(msg.from, msg.status) {
            target.deliver.do_send(Deliver {
                wire: msg.wire.clone(),
            });
            delivered += 1;
        }
        if delivered == 0 {
            self.counters
                .unrouted_frames
                .fetch_add(1, Ordering::Relaxed);
            trace!(session = %msg.from, status = %msg.status, "publication without subscribers");
        }
    }
}

impl Handler<Shutdown> for Router {
    type Result = usize;

    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) -> usize {
        let mut sessions = 0;
        for (_, handle) in self.registry.iter() {
            handle.kick.do_send(Kick {
                reason: KickReason::Shutdown,
            });
            sessions += 1;
        }
        sessions
    }
}
