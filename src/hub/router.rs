//! The [`Router`] actor: the one owner of which sessions exist and what each subscribes to.
//!
//! Sessions talk to it with small typed messages named by direction: session → router
//! [`Register`], [`Unregister`], [`Subscribe`], [`Unsubscribe`], [`Query`]; router → session
//! [`Kick`](crate::hub::session::Kick) at shutdown (publishers kick through the subscriber's
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

use std::collections::HashMap;
use std::sync::Arc;

use actix::{
    fut, Actor, ActorFutureExt, Context, Handler, Message, MessageResult, ResponseActFuture,
    WrapFuture,
};
use bytes::Bytes;

use crate::frame::Status;
use crate::hub::cluster::Cluster;
use crate::hub::control::CodeSet;
use crate::hub::delivery::outbox::Outbox;
use crate::hub::delivery::table::SubscriptionTable;
use crate::hub::session::{KickReason, SessionId};

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

/// What the router keeps for one session.
struct Member {
    /// Where publishers deliver to it.
    outbox: Arc<Outbox>,
    /// The codes it subscribes to.
    codes: CodeSet,
}

/// The router actor.
pub(crate) struct Router {
    /// Every registered session.
    sessions: HashMap<SessionId, Member>,
    /// Per code, how many sessions subscribe to it (the table lags behind while a cluster
    /// acknowledges new interest, so the cluster's `unwant` counts here).
    subscribers: [u32; Status::COUNT],
    /// What publishers read; written here only, before a change is answered.
    table: Arc<SubscriptionTable>,
    /// The cluster this hub belongs to, told which codes the hub wants.
    cluster: Option<Arc<Cluster>>,
}

impl Router {
    /// A router with no sessions, keeping `table` up to date (and `cluster` told).
    pub(crate) fn new(table: Arc<SubscriptionTable>, cluster: Option<Arc<Cluster>>) -> Router {
        Router {
            sessions: HashMap::new(),
            subscribers: [0; Status::COUNT],
            table,
            cluster,
        }
    }

    /// Session `id`'s subscriptions (none for an unknown session).
    fn codes(&self, id: SessionId) -> CodeSet {
        self.sessions
            .get(&id)
            .map_or(CodeSet::empty(), |member| member.codes)
    }

    /// Session `id`'s outbox, if it is registered.
    fn outbox(&self, id: SessionId) -> Option<&Arc<Outbox>> {
        self.sessions.get(&id).map(|member| &member.outbox)
    }

    /// Sets session `id`'s subscriptions to `codes`; returns them (none for an unknown session).
    fn set_codes(&mut self, id: SessionId, codes: CodeSet) -> CodeSet {
        let Some(member) = self.sessions.get_mut(&id) else {
            return CodeSet::empty();
        };
        let before = std::mem::replace(&mut member.codes, codes);
        for status in codes.difference(before).iter() {
            self.subscribers[usize::from(status.code())] += 1;
        }
        for status in before.difference(codes).iter() {
            self.subscribers[usize::from(status.code())] -= 1;
        }
        codes
    }

    /// Makes session `id`'s new subscriptions `added` visible to publishers and queues its
    /// `ack`, under its outbox's lock; codes it dropped meanwhile are left out.
    fn complete_subscribe(&self, id: SessionId, added: CodeSet, ack: Bytes) {
        let added = added.intersection(self.codes(id));
        if let Some(outbox) = self.outbox(id).cloned() {
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
                .filter(|status| self.subscribers[usize::from(status.code())] == 0)
                .fold(CodeSet::empty(), |mut set, status| {
                    set.insert(status);
                    set
                });
            cluster.unwant(unwanted);
        }
    }

    /// Adds session `id` to the publishers' lists of `codes`.
    fn add_to_lists(&self, id: SessionId, codes: CodeSet) {
        if let Some(outbox) = self.outbox(id) {
            for status in codes.iter() {
                self.table.add(status, outbox);
            }
        }
    }

    /// Records session `id`'s subscriptions where monitoring reads them.
    fn record_codes(&self, id: SessionId, codes: CodeSet) {
        if let Some(outbox) = self.outbox(id) {
            outbox.stats().set_codes(codes);
        }
    }

    /// Takes session `id` out of the publishers' lists of `codes`.
    fn remove_from_lists(&self, id: SessionId, codes: CodeSet) {
        if let Some(outbox) = self.outbox(id) {
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
        self.sessions.insert(
            msg.id,
            Member {
                outbox: msg.outbox,
                codes: CodeSet::empty(),
            },
        );
    }
}

impl Handler<Unregister> for Router {
    type Result = ();

    fn handle(&mut self, msg: Unregister, _: &mut Context<Self>) {
        let codes = self.codes(msg.id);
        self.remove_from_lists(msg.id, codes);
        self.set_codes(msg.id, CodeSet::empty());
        self.sessions.remove(&msg.id);
        self.withdraw(codes);
    }
}

impl Handler<Subscribe> for Router {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) -> Self::Result {
        let before = self.codes(msg.id);
        let after = self.set_codes(msg.id, before.union(msg.codes));
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
        let before = self.codes(msg.id);
        let after = self.set_codes(msg.id, before.difference(msg.codes));
        let removed = before.difference(after);
        self.remove_from_lists(msg.id, removed);
        self.record_codes(msg.id, after);
        self.withdraw(removed);
    }
}

impl Handler<Query> for Router {
    type Result = MessageResult<Query>;

    fn handle(&mut self, msg: Query, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.codes(msg.id))
    }
}

impl Handler<Shutdown> for Router {
    type Result = usize;

    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) -> usize {
        let mut sessions = 0;
        for member in self.sessions.values() {
            member.outbox.kick(KickReason::Shutdown);
            sessions += 1;
        }
        sessions
    }
}
