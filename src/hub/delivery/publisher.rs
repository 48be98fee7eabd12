//! A session's publishing side: the [`Publisher`] delivers each piece the session reads to the
//! subscribers of its code, on the session's own thread — no router, no hop.
//!
//! A whole frame or the first piece of a streamed one goes to the code's subscribers as the
//! [`SubscriptionTable`] lists them now (minus the publisher itself unless its echo is on); the
//! rest of a streamed frame goes to the subscribers that took its first piece, so a subscriber
//! that unsubscribes mid-frame still gets the whole frame and one that subscribes mid-frame gets
//! the next one. What each subscriber does with a piece — write it, queue it, hold it behind
//! another streamed frame, drop it — is its [`Outbox`]'s business.
//!
//! A code with queue groups also gives each frame to one member of each group
//! ([`Group::give`], `groups.rs`); a session that gets it that way is not given it again as an
//! ordinary subscriber. A code without groups costs one branch more than before.
//!
//! A frame on a durable code is also appended to the [`Store`] (its later pieces follow its first
//! there too), which answers the publisher `OK STORED <code> <seq>` per frame once stored when
//! its `PUBACK` is on. A stored frame is routed, whoever subscribes.
//!
//! In a cluster, a frame whose code another hub wants is also handed to the [`Cluster`] (the
//! whole frame: the decision is taken at its first piece). Publishers of other hubs are
//! publishers here too, without a cluster of their own: nothing crosses twice.
//!
//! Groups span the hubs: a local publisher's frame goes to a local member of each group if one
//! takes it, and the cluster names a hub with members for each group that has members only
//! elsewhere ([`Cluster::choose`]); another hub's frame goes to a group here only if its origin
//! named this hub for that group, and what such a group cannot take is handed back to the
//! inbound task to pass on ([`Publisher::publish_remote`]). A code with no group on another hub
//! costs one atomic read more, and only when it crosses.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tracing::trace;

use crate::frame::Status;
use crate::hub::cluster::{Cluster, GroupChoices};
use crate::hub::control::{CodeSet, GroupName};
use crate::hub::delivery::flow::Gate;
use crate::hub::delivery::groups::{Group, Groups};
use crate::hub::delivery::outbox::{Offer, Outbox};
use crate::hub::delivery::relay::{Piece, PieceKind};
use crate::hub::delivery::table::SubscriptionTable;
use crate::hub::ops::counters::HubCounters;
use crate::hub::session::SessionId;
use crate::hub::store::{AckSink, Backend};

/// One session's publishing side; see the module documentation.
#[derive(Debug)]
pub(crate) struct Publisher {
    id: SessionId,
    /// The session's read gate, which subscribers under `block` close while they are full.
    gate: Arc<Gate>,
    table: Arc<SubscriptionTable>,
    counters: Arc<HubCounters>,
    /// Whether the session receives its own publications (if subscribed).
    echo: bool,
    /// The codes it may publish on.
    allowed: CodeSet,
    /// The streamed frame in progress, if any.
    streamed: Streamed,
    /// The cluster, for frames other hubs want (`None` off a cluster, and for remote
    /// publishers).
    cluster: Option<Arc<Cluster>>,
    /// Whether anything of this publisher has crossed (the other hubs are told when it ends).
    crossed: bool,
    /// The durable store, for frames on durable codes.
    store: Option<Arc<dyn Backend>>,
    /// Where the store reports each stored frame (the session's `PUBACK`).
    puback: Option<Puback>,
    /// Frames handed to the store with a `PUBACK` sink whose outcome has not been reported yet
    /// (the sink counts them down), so that a publisher closing its side still gets them.
    puback_pending: Arc<AtomicU64>,
    /// Whether the frame in progress is being stored.
    storing: bool,
    /// The members given the frame being delivered through its code's groups (reused, so a
    /// frame allocates nothing).
    given: Vec<Arc<Outbox>>,
    /// The groups no local member took the frame being delivered for (a remote hub is chosen
    /// for them, or, for another hub's frame, it is passed on).
    unserved: Vec<GroupName>,
}

/// Which of a code's local groups a frame is for.
#[derive(Clone, Copy, Debug)]
enum Destined<'a> {
    /// A local publisher's frame: every group here.
    Here,
    /// Another hub's frame: the groups its origin chose this hub (`here`) for; with a
    /// re-dispatch, nothing else.
    Chosen {
        choices: Option<&'a GroupChoices>,
        here: u64,
    },
}

impl Destined<'_> {
    /// Whether a local group `name` takes the frame.
    fn takes(self, name: &GroupName) -> bool {
        match self {
            Destined::Here => true,
            Destined::Chosen { choices, here } => {
                choices.and_then(|choices| choices.chosen(name)) == Some(here)
            }
        }
    }

    /// Whether ordinary subscribers take it (not a re-dispatch).
    fn reaches_subscribers(self) -> bool {
        !matches!(self, Destined::Chosen { choices: Some(choices), .. } if choices.redispatch)
    }
}

/// Where the store reports a publisher's stored frames.
#[derive(Clone)]
struct Puback(AckSink);

impl std::fmt::Debug for Puback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Puback(..)")
    }
}

/// Where a publisher stands in a streamed frame: its pieces after the first follow the first.
#[derive(Debug, Default)]
enum Streamed {
    /// Between frames (or in a whole frame).
    #[default]
    None,
    /// In a frame on a code it may not publish on: the rest goes nowhere.
    Denied,
    /// In a frame being delivered.
    Delivering {
        /// The subscribers that took its first piece (one that skips a piece takes no more).
        subscribers: Vec<Arc<Outbox>>,
        /// Whether it crosses to the cluster.
        crossing: bool,
    },
}

/// A publication on a code the session may not publish on: relayed to nobody (for a streamed
/// frame, none of its bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Denied {
    /// The code.
    pub status: Status,
    /// Frames denied (a run counts each; a streamed frame counts once, at its first piece).
    pub frames: u64,
}

impl Publisher {
    /// The publishing side of session `id`, allowed to publish on `allowed`, handing what other
    /// hubs want to `cluster`.
    pub(crate) fn new(
        id: SessionId,
        gate: Arc<Gate>,
        table: Arc<SubscriptionTable>,
        counters: Arc<HubCounters>,
        allowed: CodeSet,
        cluster: Option<Arc<Cluster>>,
    ) -> Publisher {
        Publisher {
            id,
            gate,
            table,
            counters,
            echo: false,
            allowed,
            streamed: Streamed::None,
            cluster,
            crossed: false,
            store: None,
            puback: None,
            puback_pending: Arc::default(),
            storing: false,
            given: Vec::new(),
            unserved: Vec::new(),
        }
    }

    /// Appends the frames on durable codes to `store` from now on.
    #[must_use]
    pub(crate) fn storing(mut self, store: Option<Arc<dyn Backend>>) -> Publisher {
        self.store = store;
        self
    }

    /// Whether the hub stores anything (`PUBACK` has something to acknowledge).
    pub(crate) fn stores(&self) -> bool {
        self.store.is_some()
    }

    /// Whether `PUBACK` is on.
    pub(crate) fn puback(&self) -> bool {
        self.puback.is_some()
    }

    /// Sets where the store reports each of this publisher's stored frames, from the next frame
    /// on (`None`: not reported). The sink must count [`puback_pending`](Self::puback_pending)
    /// down once per outcome.
    pub(crate) fn set_puback(&mut self, sink: Option<AckSink>) {
        self.puback = sink.map(Puback);
    }

    /// Frames handed to the store whose `PUBACK` outcome has not been reported yet.
    pub(crate) fn puback_pending(&self) -> &Arc<AtomicU64> {
        &self.puback_pending
    }

    /// Appends `piece` to the store if its frame's code is durable (decided at the frame's
    /// start); returns whether it did.
    fn store(&mut self, piece: &Piece) -> bool {
        let Some(store) = &self.store else {
            return false;
        };
        if piece.kind.starts_frame() {
            self.storing = store.durable().contains(piece.status);
        }
        let stored = self.storing;
        if stored {
            let puback = self.puback.as_ref().map(|puback| puback.0.clone());
            if puback.is_some() {
                self.puback_pending
                    .fetch_add(u64::from(piece.frames), Ordering::Relaxed);
            }
            store.append(self.id, &self.gate, piece, puback);
        }
        if piece.kind.ends_frame() {
            self.storing = false;
        }
        stored
    }

    /// Sets the codes the session may publish on, from its next frame on.
    pub(crate) fn allow(&mut self, allowed: CodeSet) {
        self.allowed = allowed;
    }

    /// The read gate subscribers under `block` close while they are full.
    pub(crate) fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    /// Whether the session receives its own publications.
    pub(crate) fn echo(&self) -> bool {
        self.echo
    }

    /// Sets whether the session receives its own publications, from its next frame on.
    pub(crate) fn set_echo(&mut self, on: bool) {
        self.echo = on;
    }

    /// Delivers `piece` to its subscribers.
    ///
    /// # Errors
    /// [`Denied`] when the piece starts frames on a code the session may not publish on.
    pub(crate) fn publish(&mut self, piece: &Piece) -> Result<(), Denied> {
        match piece.kind {
            PieceKind::Whole | PieceKind::First if !self.allowed.contains(piece.status) => {
                if piece.kind == PieceKind::First {
                    self.streamed = Streamed::Denied;
                }
                let frames = u64::from(piece.frames_begun());
                self.counters
                    .denied_frames
                    .fetch_add(frames, Ordering::Relaxed);
                return Err(Denied {
                    status: piece.status,
                    frames,
                });
            }
            PieceKind::Whole | PieceKind::First => {
                let stored = self.store(piece);
                let route = self.table.route(piece.status);
                self.start(
                    piece,
                    &route.subscribers,
                    route.groups.as_ref(),
                    Destined::Here,
                    stored,
                );
            }
            PieceKind::Middle | PieceKind::Last => {
                self.store(piece);
                self.continue_frame(piece);
            }
        }
        Ok(())
    }

    /// Delivers a streamed frame's later piece where its first piece went.
    fn continue_frame(&mut self, piece: &Piece) {
        match &mut self.streamed {
            Streamed::Denied => {}
            Streamed::None => self.counters.codes.count(piece),
            Streamed::Delivering {
                subscribers,
                crossing,
            } => {
                self.counters.codes.count(piece);
                let (id, gate) = (self.id, &self.gate);
                subscribers.retain(|outbox| outbox.offer(id, gate, piece) == Offer::Taken);
                if let (true, Some(cluster)) = (*crossing, &self.cluster) {
                    *crossing = cluster.offer(id, gate, piece, None);
                }
            }
        }
        if piece.kind == PieceKind::Last {
            self.streamed = Streamed::None;
        }
    }

    /// Delivers a piece of a publisher on another hub (whose own hub checked its permissions)
    /// as [`publish`](Self::publish) does, except for a frame no session here subscribes to:
    /// every hub receives what any hub wants, so such a frame stops here, uncounted. A frame's
    /// groups here take it only if `choices` names this hub (`here`) for them. Returns whether
    /// the piece was taken (for a frame's start: whether anybody here wanted it), and the groups
    /// it was chosen here for that no member here took (to be passed on).
    pub(crate) fn publish_remote(
        &mut self,
        piece: &Piece,
        choices: Option<&GroupChoices>,
        here: u64,
    ) -> (bool, Vec<GroupName>) {
        if !piece.kind.starts_frame() {
            // Never denied: a remote publisher may publish on every relayable code.
            return (self.publish(piece).is_ok(), Vec::new());
        }
        let stored = self.store(piece);
        let route = self.table.route(piece.status);
        let chosen_here = choices.is_some_and(|choices| {
            choices
                .choices
                .iter()
                .any(|(_, instance)| *instance == here)
        });
        if route.subscribers.is_empty() && route.groups.is_none() && !chosen_here && !stored {
            return (false, Vec::new());
        }
        let destined = Destined::Chosen { choices, here };
        self.start(
            piece,
            &route.subscribers,
            route.groups.as_ref(),
            destined,
            stored,
        );
        (true, std::mem::take(&mut self.unserved))
    }

    /// Delivers a whole frame (or run), or a streamed frame's first piece, to `subscribers`
    /// (the code's, as the table lists them now) and, if another hub wants it, to the cluster.
    /// `stored`: the store took it, so it is routed whoever else takes it.
    fn start(
        &mut self,
        piece: &Piece,
        subscribers: &[Arc<Outbox>],
        groups: Option<&Groups>,
        destined: Destined<'_>,
        stored: bool,
    ) {
        self.counters.codes.count(piece);
        let streams = piece.kind == PieceKind::First;
        let mut routed = stored;
        let mut taking = Vec::new();
        if let Some(groups) = groups {
            routed |= self.give_to_groups(piece, groups, destined);
            if streams {
                taking.extend(self.given.iter().cloned());
            }
        }
        if let Destined::Chosen {
            choices: Some(choices),
            here,
        } = destined
        {
            // Chosen here for a group without a member here (any more): passed on.
            let local = |name: &GroupName| {
                groups.is_some_and(|groups| groups.iter().any(|group| group.stats.name == *name))
            };
            for (name, _) in choices
                .choices
                .iter()
                .filter(|(name, instance)| *instance == here && !local(name))
            {
                self.unserved.push(name.clone());
            }
        }
        let subscribers = if destined.reaches_subscribers() {
            subscribers
        } else {
            &[]
        };
        for outbox in subscribers {
            if outbox.id() == self.id && !self.echo {
                continue;
            }
            routed = true;
            if !self.given.is_empty() && self.given.iter().any(|given| Arc::ptr_eq(given, outbox)) {
                // It has the frame as a group's member: once is enough.
                continue;
            }
            let taken = outbox.offer(self.id, &self.gate, piece) == Offer::Taken;
            if taken && streams {
                taking.push(outbox.clone());
            }
        }
        let mut crossing = false;
        if let Some(cluster) = &self.cluster {
            if cluster.crosses(piece.status) {
                let unserved = &self.unserved;
                let taken_here = |name: &GroupName| {
                    groups
                        .is_some_and(|groups| groups.iter().any(|group| group.stats.name == *name))
                        && !unserved.contains(name)
                };
                let choices = cluster.choose(piece.status, taken_here, false);
                self.unserved.clear();
                let taken = cluster.offer(self.id, &self.gate, piece, choices);
                crossing = taken && streams;
                self.crossed |= taken;
                routed = true;
            }
        }
        self.given.clear();
        if matches!(destined, Destined::Here) {
            self.unserved.clear();
        }
        if streams {
            self.streamed = Streamed::Delivering {
                subscribers: taking,
                crossing,
            };
        }
        // Another hub's frame meant for no one here (its groups were chosen elsewhere) is not
        // this hub's unrouted frame: every hub receives what any hub wants.
        if !routed && matches!(destined, Destined::Here) {
            // Per frame: a run of small frames read together is one piece.
            self.counters
                .unrouted_frames
                .fetch_add(u64::from(piece.frames_begun()), Ordering::Relaxed);
            trace!(session = %self.id, status = %piece.status, "publication without subscribers");
        }
    }

    /// Gives `piece` to one member of each of `groups` it is `destined` for (recorded in
    /// `given`; the groups none took in `unserved`); returns whether any such group has a
    /// member that may receive it.
    fn give_to_groups(&mut self, piece: &Piece, groups: &[Group], destined: Destined<'_>) -> bool {
        let (id, echo) = (self.id, self.echo);
        let eligible = |outbox: &Outbox| echo || outbox.id() != id;
        let mut routed = false;
        for group in groups
            .iter()
            .filter(|group| destined.takes(&group.stats.name))
        {
            routed |= group.members.iter().any(|member| eligible(&member.outbox));
            match group.give(id, &self.gate, piece, eligible, &self.given) {
                Some(outbox) => {
                    if !self.given.iter().any(|given| Arc::ptr_eq(given, &outbox)) {
                        self.given.push(outbox);
                    }
                }
                None => self.unserved.push(group.stats.name.clone()),
            }
        }
        routed
    }

    /// The publisher has ended (or, for a remote one, lost part of its frame): subscribers in
    /// the middle of its streamed frame cannot get the rest of it. Other hubs it published to
    /// forget it.
    pub(crate) fn abandon(&mut self) {
        if let Streamed::Delivering { subscribers, .. } = std::mem::take(&mut self.streamed) {
            for outbox in subscribers {
                outbox.publisher_gone(self.id);
            }
        }
        if let (true, Some(cluster)) = (std::mem::take(&mut self.crossed), &self.cluster) {
            cluster.publisher_gone(self.id);
        }
        if let (true, Some(store)) = (std::mem::take(&mut self.storing), &self.store) {
            store.abandon(self.id);
        }
    }
}
