//! The [`SubscriptionTable`]: per code, the outboxes of its subscribers, read by publishing
//! sessions on their own threads.
//!
//! The router owns the subscriptions and is the only writer here: it applies every change to the
//! codes it touches *before* it answers the session's command. A publisher takes a code's list with one short read lock and an `Arc` clone,
//! then delivers without holding anything; so a publication read after a `SUB` was answered `OK`
//! finds the new subscriber, and a change never waits for a fan-out in progress. A list is copied
//! on write only while a publisher holds it; otherwise it is changed in place, so 10,000
//! subscriptions to one code cost 10,000 pushes, not 10,000 copies.
//!
//! Each code's queue groups ([`Groups`], `delivery/groups.rs`) sit beside its subscribers under
//! the same lock, so a publisher reads both at once; a code without groups has `None` there and
//! costs publishers one branch.

use std::sync::{Arc, OnceLock, PoisonError, RwLock, Weak};

use crate::frame::Status;
use crate::hub::cluster::Cluster;
use crate::hub::control::GroupName;
use crate::hub::delivery::groups::{Group, GroupMember, GroupStats, Groups};
use crate::hub::delivery::outbox::Outbox;

/// One code's subscribers, in subscription order.
pub(crate) type Subscribers = Arc<Vec<Arc<Outbox>>>;

/// What a publisher reads for one code.
#[derive(Clone, Debug)]
pub(crate) struct Route {
    /// The ordinary subscribers.
    pub subscribers: Subscribers,
    /// The queue groups, `None` when the code has none.
    pub groups: Option<Groups>,
}

/// Per code, the outboxes of its subscribers; see the module documentation.
#[derive(Debug)]
pub(crate) struct SubscriptionTable {
    codes: [RwLock<Route>; Status::COUNT],
    /// The cluster, set once it has started: a leaving member's group frames that no member
    /// here can take go to another hub's members (weak: the cluster's tasks hold the table).
    cluster: OnceLock<Weak<Cluster>>,
}

impl SubscriptionTable {
    /// A table with no subscriber.
    pub(crate) fn new() -> SubscriptionTable {
        SubscriptionTable {
            codes: std::array::from_fn(|_| {
                RwLock::new(Route {
                    subscribers: Arc::new(Vec::new()),
                    groups: None,
                })
            }),
            cluster: OnceLock::new(),
        }
    }

    /// Records the hub's cluster (once, at start).
    pub(crate) fn set_cluster(&self, cluster: &Arc<Cluster>) {
        let _ = self.cluster.set(Arc::downgrade(cluster));
    }

    /// The hub's cluster, if it has one.
    pub(crate) fn cluster(&self) -> Option<Arc<Cluster>> {
        self.cluster.get().and_then(Weak::upgrade)
    }

    /// The subscribers and groups of `status` now.
    pub(crate) fn route(&self, status: Status) -> Route {
        self.codes[usize::from(status.code())]
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The subscribers of `status` now.
    pub(crate) fn subscribers(&self, status: Status) -> Subscribers {
        self.codes[usize::from(status.code())]
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .subscribers
            .clone()
    }

    /// The groups of `status` now.
    pub(crate) fn groups(&self, status: Status) -> Option<Groups> {
        self.codes[usize::from(status.code())]
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .groups
            .clone()
    }

    /// Changes the list of `status`: in place unless a publisher holds it.
    fn change(&self, status: Status, change: impl FnOnce(&mut Vec<Arc<Outbox>>)) {
        let mut route = self.codes[usize::from(status.code())]
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        change(Arc::make_mut(&mut route.subscribers));
    }

    /// Changes the groups of `status` (copied if a publisher holds them); a code left without
    /// a group goes back to `None`.
    fn change_groups(&self, status: Status, change: impl FnOnce(&mut Vec<Group>)) {
        let mut route = self.codes[usize::from(status.code())]
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let groups = route.groups.get_or_insert_with(|| Arc::new(Vec::new()));
        change(Arc::make_mut(groups));
        if groups.is_empty() {
            route.groups = None;
        }
    }

    /// Adds `member` to group `stats` on `status` (the router adds each once).
    pub(crate) fn join(&self, status: Status, stats: &Arc<GroupStats>, member: GroupMember) {
        self.change_groups(status, |groups| {
            match groups
                .iter_mut()
                .find(|group| Arc::ptr_eq(&group.stats, stats))
            {
                Some(group) => group.members.push(member),
                None => groups.push(Group {
                    stats: stats.clone(),
                    members: vec![member],
                }),
            }
        });
    }

    /// Takes `outbox` out of group `name` on `status`; a group left without members goes.
    pub(crate) fn leave(&self, status: Status, name: &GroupName, outbox: &Arc<Outbox>) {
        self.change_groups(status, |groups| {
            for group in groups.iter_mut().filter(|group| group.stats.name == *name) {
                group
                    .members
                    .retain(|member| !Arc::ptr_eq(&member.outbox, outbox));
            }
            groups.retain(|group| !group.members.is_empty());
        });
    }

    /// Adds `outbox` to the subscribers of `status` (the router adds each once).
    pub(crate) fn add(&self, status: Status, outbox: &Arc<Outbox>) {
        self.change(status, |list| list.push(outbox.clone()));
    }

    /// Takes `outbox` out of the subscribers of `status`.
    pub(crate) fn remove(&self, status: Status, outbox: &Arc<Outbox>) {
        self.change(status, |list| {
            list.retain(|other| !Arc::ptr_eq(other, outbox))
        });
    }
}
