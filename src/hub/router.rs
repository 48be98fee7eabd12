//! The [`Router`] actor: the one owner of the hub's registry of sessions and subscriptions.
//!
//! Sessions talk to it with small typed messages named by direction: session → router
//! [`Register`], [`Unregister`], [`Subscribe`], [`Unsubscribe`], [`Query`]; router → session
//! [`Kick`] (at shutdown; publishers kick through the subscriber's
//! [`Outbox`](super::delivery::outbox::Outbox) too).
//!
//! The router is not on the data path. After each change it stores the touched codes' subscriber
//! lists in the shared [`SubscriptionTable`], and only then answers: once a session's `Subscribe`
//! is answered, every publication read after it finds that session. Publishing sessions read the
//! table and deliver to each subscriber's outbox on their own thread (`outbox.rs`).
//!
//! In a cluster, a `Subscribe` that adds a code no local session wanted is answered only once
//! every other hub has acknowledged the new interest ([`Cluster::want`]); meanwhile the router
//! goes on with other messages, and the session waits for its answer. A code left without
//! subscribers is withdrawn ([`Cluster::unwant`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::{
    fut, Actor, ActorFutureExt, Context, Handler, Message, MessageResult, Recipient,
    ResponseActFuture, WrapFuture,
};
use bytes::Bytes;

use crate::hub::admission::IpSlot;
use crate::hub::auth::Users;
use crate::hub::cluster::Cluster;
use crate::hub::control::{CodeSet, CounterSnapshot, EventCounts};
use crate::hub::delivery::outbox::Outbox;
use crate::hub::delivery::table::SubscriptionTable;
use crate::hub::ops::counters::{CodeCounters, Connections};
use crate::hub::registry::{Registry, SessionId};

/// Router → session: close the connection.
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

/// Session → router: a new session, before any of its frames.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct Register {
    /// The session.
    pub id: SessionId,
    /// Its outbound path, where publishers deliver.
    pub outbox: Arc<Outbox>,
}

/// Session → router: the session has ended.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct Unregister {
    /// The session.
    pub id: SessionId,
}

/// Session → router: add codes to the session's subscriptions. Answered once publishers see
/// them.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct Subscribe {
    /// The session.
    pub id: SessionId,
    /// The codes to add.
    pub codes: CodeSet,
    /// The `OK SUB` reply (wire bytes): queued in the session's outbox while it holds off
    /// publishers, right after they can see the new subscription, so that no relayed frame
    /// overtakes it and none sent after it is missed.
    pub ack: Bytes,
}

/// Session → router: remove codes from the session's subscriptions. Answered once publishers no
/// longer see them.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct Unsubscribe {
    /// The session.
    pub id: SessionId,
    /// The codes to remove.
    pub codes: CodeSet,
}

/// Session → router: the session's subscriptions, for `INFO`.
#[derive(Message, Debug)]
#[rtype(result = "CodeSet")]
pub(crate) struct Query {
    /// The session.
    pub id: SessionId,
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
    /// TCP connections accepted since start: every one the listener accepted, whether it then
    /// became a session, was refused by a connection limit or failed its TLS handshake.
    pub connections: AtomicU64,
    /// Connections whose socket is still open (the writer has not ended).
    pub open: AtomicU64,
    /// Frames published on codes their publisher may not publish on (relayed to nobody).
    pub denied_frames: AtomicU64,
    /// `AUTH`s refused for a wrong user or password.
    pub auth_failures: AtomicU64,
    /// Connections refused by `max-connections` or `max-connections-per-ip`.
    pub refused_connections: AtomicU64,
    /// TLS handshakes that failed or timed out.
    pub tls_failures: AtomicU64,
    /// The sessions whose socket is open, and the closed ones' totals (monitoring).
    pub sessions: Connections,
    /// Frames and bytes published per code (monitoring).
    pub codes: CodeCounters,
}

impl HubCounters {
    /// The hub-wide counters as they are now: what `INFO`, `/varz` and `/metrics` all show, with
    /// the cluster's drops (0 off a cluster).
    pub(crate) fn snapshot(&self, cluster: Option<&Cluster>) -> CounterSnapshot {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        CounterSnapshot {
            connections: get(&self.connections),
            open_connections: get(&self.open),
            events: EventCounts {
                unrouted_frames: get(&self.unrouted_frames),
                slow_consumers: get(&self.slow_consumers),
                dropped_frames: get(&self.dropped_frames),
                denied_frames: get(&self.denied_frames),
                auth_failures: get(&self.auth_failures),
                refused_connections: get(&self.refused_connections),
                tls_failures: get(&self.tls_failures),
                cluster_dropped_frames: cluster.map_or(0, Cluster::dropped_frames),
            },
        }
    }
}

/// Counts one open connection in [`HubCounters`] (and in its address's count, under a per-address
/// limit) from accept until its socket is closed (dropped by the session's writer), so shutdown
/// can wait for flushes to finish.
#[derive(Debug)]
pub(crate) struct OpenConnection {
    counters: Arc<HubCounters>,
    _slot: Option<IpSlot>,
}

impl OpenConnection {
    /// Counts a newly admitted connection as open.
    pub(crate) fn new(counters: Arc<HubCounters>, slot: Option<IpSlot>) -> OpenConnection {
        counters.open.fetch_add(1, Ordering::AcqRel);
        OpenConnection {
            counters,
            _slot: slot,
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.counters.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The router actor.
pub(crate) struct Router {
    registry: Registry<Arc<Outbox>>,
    /// What publishers read; written here only, before a change is answered.
    table: Arc<SubscriptionTable>,
    /// The cluster this hub belongs to, told which codes the hub wants.
    cluster: Option<Arc<Cluster>>,
}

impl Router {
    /// A router with no sessions, keeping `table` up to date (and `cluster` told).
    pub(crate) fn new(table: Arc<SubscriptionTable>, cluster: Option<Arc<Cluster>>) -> Router {
        Router {
            registry: Registry::new(),
            table,
            cluster,
        }
    }

    /// Makes session `id`'s new subscriptions `added` visible to publishers and queues its
    /// `ack`, under its outbox's lock; codes it dropped meanwhile are left out.
    fn complete_subscribe(&self, id: SessionId, added: CodeSet, ack: Bytes) {
        let added = added.intersection(self.registry.codes(id));
        if let Some(outbox) = self.registry.get(id).cloned() {
            // Refused only for a session that queued too many replies behind a streamed frame,
            // which its own next reply will end.
            let _ = outbox.subscribe_then_reply(|| self.add_to_lists(id, added), ack);
        }
    }

    /// Tells the cluster which of `codes` no session wants any more.
    fn withdraw(&self, codes: CodeSet) {
        if let Some(cluster) = &self.cluster {
            let unwanted = codes
                .iter()
                .filter(|status| self.registry.subscriber_count(*status) == 0)
                .fold(CodeSet::empty(), |mut set, status| {
                    set.insert(status);
                    set
                });
            cluster.unwant(unwanted);
        }
    }

    /// Adds session `id` to the publishers' lists of `codes`.
    fn add_to_lists(&self, id: SessionId, codes: CodeSet) {
        if let Some(outbox) = self.registry.get(id) {
            for status in codes.iter() {
                self.table.add(status, outbox);
            }
        }
    }

    /// Records session `id`'s subscriptions where monitoring reads them.
    fn record_codes(&self, id: SessionId, codes: CodeSet) {
        if let Some(outbox) = self.registry.get(id) {
            outbox.stats().set_codes(codes);
        }
    }

    /// Takes session `id` out of the publishers' lists of `codes`.
    fn remove_from_lists(&self, id: SessionId, codes: CodeSet) {
        if let Some(outbox) = self.registry.get(id) {
            for status in codes.iter() {
                self.table.remove(status, outbox);
            }
        }
    }
}

impl Actor for Router {
    type Context = Context<Self>;
}

impl Handler<Register> for Router {
    type Result = ();

    fn handle(&mut self, msg: Register, _: &mut Context<Self>) {
        self.registry.insert(msg.id, msg.outbox);
    }
}

impl Handler<Unregister> for Router {
    type Result = ();

    fn handle(&mut self, msg: Unregister, _: &mut Context<Self>) {
        let codes = self.registry.codes(msg.id);
        self.remove_from_lists(msg.id, codes);
        self.registry.remove(msg.id);
        self.withdraw(codes);
    }
}

impl Handler<Subscribe> for Router {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) -> Self::Result {
        let before = self.registry.codes(msg.id);
        let after = self.registry.subscribe(msg.id, &msg.codes);
        let added = after.difference(before);
        self.record_codes(msg.id, after);
        let (id, ack) = (msg.id, msg.ack);
        match self
            .cluster
            .as_ref()
            .and_then(|cluster| cluster.want(added))
        {
            Some(acknowledged) => Box::pin(
                acknowledged
                    .into_actor(self)
                    .map(move |(), router, _| router.complete_subscribe(id, added, ack)),
            ),
            None => {
                self.complete_subscribe(id, added, ack);
                Box::pin(fut::ready(()))
            }
        }
    }
}

impl Handler<Unsubscribe> for Router {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _: &mut Context<Self>) {
        let before = self.registry.codes(msg.id);
        let after = self.registry.unsubscribe(msg.id, &msg.codes);
        let removed = before.difference(after);
        self.remove_from_lists(msg.id, removed);
        self.record_codes(msg.id, after);
        self.withdraw(removed);
    }
}

impl Handler<Query> for Router {
    type Result = MessageResult<Query>;

    fn handle(&mut self, msg: Query, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.registry.codes(msg.id))
    }
}

impl Handler<Shutdown> for Router {
    type Result = usize;

    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) -> usize {
        let mut sessions = 0;
        for (_, outbox) in self.registry.iter() {
            outbox.kick(KickReason::Shutdown);
            sessions += 1;
        }
        sessions
    }
}
