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
//!
//! Queue groups are the router's too: which session is a member of which group for which codes
//! (`SUB <codes> group=<name>`), published to the table beside the ordinary subscribers, in the
//! same way and with the same ordering rule. A group membership counts as interest in its codes
//! for the cluster as an ordinary subscription does.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use actix::{
    fut, Actor, ActorFutureExt, Context, Handler, Message, MessageResult, ResponseActFuture,
    WrapFuture,
};
use bytes::Bytes;

use crate::frame::Status;
use crate::hub::cluster::{Cluster, LocalGroup};
use crate::hub::control::{CodeSet, GroupMembership, GroupName};
use crate::hub::delivery::groups::{GroupMember, GroupStats, MemberStats};
use crate::hub::delivery::outbox::Outbox;
use crate::hub::delivery::table::SubscriptionTable;
use crate::hub::ops::counters::HubCounters;
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
    /// Join this queue group for the codes instead of subscribing to them.
    pub group: Option<GroupName>,
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
    /// From what.
    pub from: Leave,
}

/// What an [`Unsubscribe`] removes the codes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Leave {
    /// The ordinary subscriptions (`UNSUB <codes>`).
    Ordinary,
    /// One queue group (`UNSUB <codes> group=<name>`).
    Group(GroupName),
    /// The ordinary subscriptions and every group (permissions taken away).
    Everything,
    /// The groups the session may no longer join (permissions changed), for every code.
    GroupsDenied(crate::hub::auth::GroupPatterns),
}

/// A session's subscriptions and group memberships, for `INFO`.
#[derive(Debug, Default)]
pub(crate) struct Subscriptions {
    /// The ordinary subscriptions.
    pub codes: CodeSet,
    /// The group memberships, by name.
    pub groups: Vec<GroupMembership>,
}

/// Session → router: the session's subscriptions, for `INFO`.
#[derive(Message, Debug)]
#[rtype(result = "Subscriptions")]
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
    /// The groups it is a member of.
    groups: BTreeMap<GroupName, Membership>,
}

/// A session's membership of one group.
struct Membership {
    /// The codes it takes frames of in the group.
    codes: CodeSet,
    /// What it was given through the group.
    given: Arc<MemberStats>,
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
    /// Every group with a member: its counters, and how many sessions are members.
    groups: HashMap<GroupName, (Arc<GroupStats>, usize)>,
    /// The hub's counters (groups count their moved and cut frames there too).
    counters: Arc<HubCounters>,
}

impl Router {
    /// A router with no sessions, keeping `table` up to date (and `cluster` told).
    /// The `durable` codes count as wanted for good (the store subscribes to them), so the
    /// cluster never withdraws them.
    pub(crate) fn new(
        table: Arc<SubscriptionTable>,
        cluster: Option<Arc<Cluster>>,
        counters: Arc<HubCounters>,
        durable: CodeSet,
    ) -> Router {
        let mut subscribers = [0; Status::COUNT];
        for status in durable.iter() {
            subscribers[usize::from(status.code())] = 1;
        }
        Router {
            sessions: HashMap::new(),
            subscribers,
            table,
            cluster,
            groups: HashMap::new(),
            counters,
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

    /// Session `id`'s codes in `group` (its ordinary subscriptions for `None`).
    fn codes_in(&self, id: SessionId, group: Option<&GroupName>) -> CodeSet {
        match group {
            None => self.codes(id),
            Some(name) => self
                .sessions
                .get(&id)
                .and_then(|member| member.groups.get(name))
                .map_or(CodeSet::empty(), |membership| membership.codes),
        }
    }

    /// Counts the interest a change from `before` to `after` adds and removes.
    fn count_interest(&mut self, before: CodeSet, after: CodeSet) {
        for status in after.difference(before).iter() {
            self.subscribers[usize::from(status.code())] += 1;
        }
        for status in before.difference(after).iter() {
            self.subscribers[usize::from(status.code())] -= 1;
        }
    }

    /// Sets session `id`'s subscriptions to `codes`; returns them (none for an unknown session).
    fn set_codes(&mut self, id: SessionId, codes: CodeSet) -> CodeSet {
        let Some(member) = self.sessions.get_mut(&id) else {
            return CodeSet::empty();
        };
        let before = std::mem::replace(&mut member.codes, codes);
        self.count_interest(before, codes);
        codes
    }

    /// Sets session `id`'s codes in group `name` to `codes` (leaving it when empty); returns
    /// them (none for an unknown session).
    fn set_group_codes(&mut self, id: SessionId, name: &GroupName, codes: CodeSet) -> CodeSet {
        let Some(member) = self.sessions.get_mut(&id) else {
            return CodeSet::empty();
        };
        let before = member
            .groups
            .get(name)
            .map_or(CodeSet::empty(), |m| m.codes);
        match (before.is_empty(), codes.is_empty()) {
            (true, false) => {
                let entry = self
                    .groups
                    .entry(name.clone())
                    .or_insert_with(|| (GroupStats::new(name.clone(), self.counters.clone()), 0));
                entry.1 += 1;
                member.groups.insert(
                    name.clone(),
                    Membership {
                        codes,
                        given: Arc::new(MemberStats::default()),
                    },
                );
            }
            (false, true) => {
                member.groups.remove(name);
                if let Some(entry) = self.groups.get_mut(name) {
                    entry.1 -= 1;
                    if entry.1 == 0 {
                        self.groups.remove(name);
                    }
                }
            }
            (false, false) => {
                if let Some(membership) = member.groups.get_mut(name) {
                    membership.codes = codes;
                }
            }
            (true, true) => {}
        }
        self.count_interest(before, codes);
        if before != codes {
            self.tell_cluster_groups();
        }
        codes
    }

    /// Tells the cluster this hub's groups, after a membership changed (a scan of the sessions:
    /// memberships change at the pace of `SUB`s, not of frames).
    fn tell_cluster_groups(&self) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let mut groups: BTreeMap<&GroupName, LocalGroup> = BTreeMap::new();
        for member in self.sessions.values() {
            for (name, membership) in &member.groups {
                let group = groups.entry(name).or_insert_with(|| LocalGroup {
                    name: name.clone(),
                    codes: CodeSet::empty(),
                    members: Vec::new(),
                });
                group.codes = group.codes.union(membership.codes);
                group.members.push(member.outbox.clone());
            }
        }
        cluster.set_groups(groups.into_values().collect());
    }

    /// Makes session `id`'s new subscriptions `added` (in `group`, if any) visible to
    /// publishers and queues its `ack`, under its outbox's lock; codes it dropped meanwhile are
    /// left out.
    fn complete_subscribe(
        &self,
        id: SessionId,
        added: CodeSet,
        group: Option<&GroupName>,
        ack: Bytes,
    ) {
        let added = added.intersection(self.codes_in(id, group));
        if let Some(outbox) = self.outbox(id).cloned() {
            let publish = || match group {
                None => self.add_to_lists(id, added),
                Some(name) => self.join_lists(id, name, added),
            };
            // Refused only for a session that queued too many replies behind a streamed frame,
            // which its own next reply will end.
            let _ = outbox.subscribe_then_reply(publish, ack);
        }
    }

    /// Adds session `id` to group `name`'s lists of `codes`.
    fn join_lists(&self, id: SessionId, name: &GroupName, codes: CodeSet) {
        let Some(member) = self.sessions.get(&id) else {
            return;
        };
        let (Some(membership), Some((stats, _))) = (member.groups.get(name), self.groups.get(name))
        else {
            return;
        };
        for status in codes.iter() {
            let entry = GroupMember {
                outbox: member.outbox.clone(),
                given: membership.given.clone(),
            };
            self.table.join(status, stats, entry);
        }
    }

    /// Takes session `id` out of group `name` for `codes`; its frames of the group not started
    /// on its socket go to other members when `move_frames`.
    fn leave_group(&mut self, id: SessionId, name: &GroupName, codes: CodeSet, move_frames: bool) {
        let before = self.codes_in(id, Some(name));
        let removed = before.intersection(codes);
        if removed.is_empty() {
            return;
        }
        if let Some(outbox) = self.outbox(id).cloned() {
            for status in removed.iter() {
                self.table.leave(status, name, &outbox);
            }
            if move_frames {
                outbox.leave_group(name, removed);
            }
        }
        self.set_group_codes(id, name, before.difference(removed));
        self.withdraw(removed);
    }

    /// The names of session `id`'s groups.
    fn group_names(&self, id: SessionId) -> Vec<GroupName> {
        self.sessions
            .get(&id)
            .map(|member| member.groups.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Session `id`'s ordinary subscriptions and groups.
    fn subscriptions(&self, id: SessionId) -> Subscriptions {
        let Some(member) = self.sessions.get(&id) else {
            return Subscriptions::default();
        };
        Subscriptions {
            codes: member.codes,
            groups: member
                .groups
                .iter()
                .map(|(name, membership)| GroupMembership {
                    name: name.clone(),
                    codes: membership.codes,
                })
                .collect(),
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
                groups: BTreeMap::new(),
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
        for name in self.group_names(msg.id) {
            // Its outbox moved its group frames when it closed.
            self.leave_group(msg.id, &name, CodeSet::relayable(), false);
        }
        self.sessions.remove(&msg.id);
        self.withdraw(codes);
    }
}

impl Handler<Subscribe> for Router {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) -> Self::Result {
        let before = self.codes_in(msg.id, msg.group.as_ref());
        let after = match &msg.group {
            None => {
                let after = self.set_codes(msg.id, before.union(msg.codes));
                self.record_codes(msg.id, after);
                after
            }
            Some(name) => self.set_group_codes(msg.id, name, before.union(msg.codes)),
        };
        let added = after.difference(before);
        let (id, ack, group) = (msg.id, msg.ack, msg.group);
        match self
            .cluster
            .as_ref()
            .and_then(|cluster| cluster.want(added))
        {
            Some(acknowledged) => {
                Box::pin(acknowledged.into_actor(self).map(move |(), router, _| {
                    router.complete_subscribe(id, added, group.as_ref(), ack);
                }))
            }
            None => {
                self.complete_subscribe(id, added, group.as_ref(), ack);
                Box::pin(fut::ready(()))
            }
        }
    }
}

impl Handler<Unsubscribe> for Router {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _: &mut Context<Self>) {
        let (id, codes) = (msg.id, msg.codes);
        if matches!(msg.from, Leave::Ordinary | Leave::Everything) {
            let before = self.codes(id);
            let after = self.set_codes(id, before.difference(codes));
            let removed = before.difference(after);
            self.remove_from_lists(id, removed);
            self.record_codes(id, after);
            self.withdraw(removed);
        }
        match msg.from {
            Leave::Ordinary => {}
            Leave::Group(name) => self.leave_group(id, &name, codes, true),
            Leave::Everything => {
                for name in self.group_names(id) {
                    self.leave_group(id, &name, codes, true);
                }
            }
            Leave::GroupsDenied(patterns) => {
                for name in self.group_names(id) {
                    if !patterns.allows(&name) {
                        self.leave_group(id, &name, codes, true);
                    }
                }
            }
        }
    }
}

impl Handler<Query> for Router {
    type Result = MessageResult<Query>;

    fn handle(&mut self, msg: Query, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.subscriptions(msg.id))
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
