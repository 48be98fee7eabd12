//! Queue groups on the data path: per code, the groups subscribed to it, each with its members'
//! outboxes ([`Group`]); the choice of the member a frame goes to ([`Group::pick`],
//! [`Group::give`]); and the move of a leaving member's unstarted frames to another member
//! ([`redispatch`]).
//!
//! It lives in `delivery/` beside the [`SubscriptionTable`] because it is the data path: the
//! publisher's thread calls it per frame, and the table stores each code's groups next to its
//! ordinary subscribers so that one short read lock gives a publisher both (the `OK SUB ...
//! group=` ordering rule then holds exactly as for `SUB`: the router changes the list under the
//! member's outbox lock before queuing the `OK`). The router owns membership and is the only
//! writer; lists are copied on write. The choice and the move are functions of [`Group`], not of
//! the publisher, so that a work queue on a durable subscription can reuse them.
//!
//! # The choice (docs/hub.md, "Queue groups")
//! Among the members that may receive the frame (not the publisher itself unless its echo is on),
//! the one with the fewest bytes queued ([`Outbox::pending`]), members over their slow-consumer
//! mark last; ties go round-robin from a start index that rotates per frame (one atomic per
//! group). A member that refuses the frame ([`Offer::Skipped`]) is passed over for the next best.
//! The common case costs a scan of the members' atomics and no allocation; a refusal allocates
//! the list of members tried.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::frame::Status;
use crate::hub::control::GroupName;
use crate::hub::delivery::flow::Gate;
use crate::hub::delivery::outbox::{Offer, Outbox};
use crate::hub::delivery::relay::{Piece, PieceKind};
use crate::hub::delivery::table::SubscriptionTable;
use crate::hub::ops::counters::HubCounters;
use crate::hub::session::SessionId;

/// One group's counters, shared by every code's view of it; created by the router when the
/// group gets its first member.
#[derive(Debug)]
pub(crate) struct GroupStats {
    /// The group's name.
    pub name: GroupName,
    /// Where the next round-robin scan starts.
    rotor: AtomicUsize,
    /// Frames given to a member.
    pub frames: AtomicU64,
    /// Bytes of those frames.
    pub bytes: AtomicU64,
    /// Frames moved from a leaving member to another.
    pub moved_frames: AtomicU64,
    /// Frames cut: partly written to a member that left, or streamed to it when it left.
    pub cut_frames: AtomicU64,
    /// Frames no member could take (none left, or every one refused).
    pub unrouted_frames: AtomicU64,
    /// The hub's counters, where moved and cut frames are counted too.
    hub: Arc<HubCounters>,
}

impl GroupStats {
    /// The counters of a new group `name`.
    pub(crate) fn new(name: GroupName, hub: Arc<HubCounters>) -> Arc<GroupStats> {
        Arc::new(GroupStats {
            name,
            rotor: AtomicUsize::new(0),
            frames: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            moved_frames: AtomicU64::new(0),
            cut_frames: AtomicU64::new(0),
            unrouted_frames: AtomicU64::new(0),
            hub,
        })
    }

    /// Counts `frames` cut.
    pub(crate) fn count_cut(&self, frames: u64) {
        self.cut_frames.fetch_add(frames, Ordering::Relaxed);
        self.hub
            .group_cut_frames
            .fetch_add(frames, Ordering::Relaxed);
    }

    /// Counts `frames` moved to another member.
    fn count_moved(&self, frames: u64) {
        self.moved_frames.fetch_add(frames, Ordering::Relaxed);
        self.hub
            .group_moved_frames
            .fetch_add(frames, Ordering::Relaxed);
    }
}

/// What one member was given through one group (all codes).
#[derive(Debug, Default)]
pub(crate) struct MemberStats {
    /// Frames given to it.
    pub frames: AtomicU64,
    /// Bytes of those frames.
    pub bytes: AtomicU64,
}

/// One member of a group on a code.
#[derive(Clone, Debug)]
pub(crate) struct GroupMember {
    /// Where its frames go.
    pub outbox: Arc<Outbox>,
    /// What it was given through the group.
    pub given: Arc<MemberStats>,
}

/// One group as a code sees it: its counters and the members taking that code.
#[derive(Clone, Debug)]
pub(crate) struct Group {
    /// The group's counters (and name).
    pub stats: Arc<GroupStats>,
    /// The members, in joining order.
    pub members: Vec<GroupMember>,
}

/// One code's groups; `None` in the table for a code without any.
pub(crate) type Groups = Arc<Vec<Group>>;

/// How a member's place in the choice compares: not over its mark first, then fewest bytes.
fn load(outbox: &Outbox) -> (bool, u64) {
    (outbox.is_full(), outbox.pending())
}

impl Group {
    /// The index of the member to give the next frame to, among those `eligible` accepts and
    /// `tried` (when given) does not mark; `None` when there is none. See the module docs.
    pub(crate) fn pick(
        &self,
        eligible: impl Fn(&Outbox) -> bool,
        tried: Option<&[bool]>,
    ) -> Option<usize> {
        let count = self.members.len();
        if count == 0 {
            return None;
        }
        let start = self.stats.rotor.fetch_add(1, Ordering::Relaxed) % count;
        let mut best: Option<(usize, (bool, u64))> = None;
        for step in 0..count {
            let at = (start + step) % count;
            if tried.is_some_and(|tried| tried.get(at).copied().unwrap_or(false)) {
                continue;
            }
            let outbox = &self.members[at].outbox;
            if !eligible(outbox) {
                continue;
            }
            let key = load(outbox);
            if best.map_or(true, |(_, best)| key < best) {
                best = Some((at, key));
            }
        }
        best.map(|(at, _)| at)
    }

    /// Gives `piece` (a whole frame or run, or a streamed frame's first piece) from publisher
    /// `from` to one member `eligible` accepts, the best first and the next best when one
    /// refuses; returns the member that took it. A member already in `given` (it has this frame
    /// through another group) is chosen without a second copy. Counts what it gives, or the
    /// frames as unrouted for the group when nobody takes them.
    pub(crate) fn give(
        &self,
        from: SessionId,
        gate: &Arc<Gate>,
        piece: &Piece,
        eligible: impl Fn(&Outbox) -> bool,
        given: &[Arc<Outbox>],
    ) -> Option<Arc<Outbox>> {
        let mut tried: Option<Vec<bool>> = None;
        while let Some(at) = self.pick(&eligible, tried.as_deref()) {
            let member = &self.members[at];
            let taken = given.iter().any(|other| Arc::ptr_eq(other, &member.outbox))
                || member.outbox.offer_in_group(from, gate, piece, &self.stats) == Offer::Taken;
            if taken {
                self.count_given(member, piece);
                return Some(member.outbox.clone());
            }
            // Refused (dropped, or leaving): the next best. Rare, so the list may allocate.
            let tried = tried.get_or_insert_with(|| vec![false; self.members.len()]);
            if let Some(mark) = tried.get_mut(at) {
                *mark = true;
            }
        }
        self.stats
            .unrouted_frames
            .fetch_add(u64::from(piece.frames_begun()), Ordering::Relaxed);
        None
    }

    fn count_given(&self, member: &GroupMember, piece: &Piece) {
        let (frames, bytes) = (u64::from(piece.frames_begun()), piece.bytes.len() as u64);
        self.stats.frames.fetch_add(frames, Ordering::Relaxed);
        self.stats.bytes.fetch_add(bytes, Ordering::Relaxed);
        member.given.frames.fetch_add(frames, Ordering::Relaxed);
        member.given.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// A whole frame (or run) taken out of a leaving member's outbox before any of it was written,
/// to be given to another member of the same group.
#[derive(Debug)]
pub(crate) struct MovedFrame {
    /// Its code.
    pub status: Status,
    /// The group it was given through.
    pub group: Arc<GroupStats>,
    /// Its pieces in order, with how many frames end in each: one `Whole` piece, or a streamed
    /// frame's pieces from first to last.
    pub pieces: Vec<(Bytes, u32)>,
}

impl MovedFrame {
    /// Frames in it.
    fn frames(&self) -> u64 {
        self.pieces
            .iter()
            .map(|(_, frames)| u64::from(*frames))
            .sum::<u64>()
            .max(1)
    }
}

/// Gives `moved` (taken in order from `leaving`'s outbox) to other members of their groups, in
/// order, by the choice rule; a whole frame no member here takes goes to another hub with
/// members, in a cluster ([`Cluster::redispatch`](crate::hub::cluster::Cluster::redispatch));
/// what nobody takes counts as unrouted for its group and the hub.
///
/// A moved frame is offered as from a publisher of its own (an id derived from `leaving`'s, far
/// above any session's), so that it never joins a streamed frame on the new member's wire and
/// is held behind one like any other publisher's frame. It arrives after what the new member
/// already has: the order promise of docs/hub.md holds for frames given directly, not for moved
/// ones.
pub(crate) fn redispatch(
    table: &SubscriptionTable,
    counters: &HubCounters,
    leaving: SessionId,
    moved: Vec<MovedFrame>,
) {
    if moved.is_empty() {
        return;
    }
    let from = SessionId::new(u64::MAX - leaving.get());
    // Nobody reads this gate: a moved frame is bounded by what the leaver had queued.
    let gate = Gate::new();
    for frame in moved {
        let frames = frame.frames();
        let groups = table.groups(frame.status);
        let group = groups.as_ref().and_then(|groups| {
            groups
                .iter()
                .find(|group| Arc::ptr_eq(&group.stats, &frame.group))
        });
        let eligible = |outbox: &Outbox| outbox.id() != leaving;
        let taken = group.and_then(|group| {
            let last = frame.pieces.len().saturating_sub(1);
            let mut pieces = frame.pieces.iter().enumerate().map(|(at, (bytes, count))| {
                let kind = match (at, last) {
                    (0, 0) => PieceKind::Whole,
                    (0, _) => PieceKind::First,
                    (at, last) if at == last => PieceKind::Last,
                    _ => PieceKind::Middle,
                };
                Piece {
                    status: frame.status,
                    kind,
                    frames: *count,
                    bytes: bytes.clone(),
                }
            });
            let first = pieces.next()?;
            let outbox = group.give(from, &gate, &first, eligible, &[])?;
            if pieces.any(|piece| {
                outbox.offer_in_group(from, &gate, &piece, &group.stats) == Offer::Skipped
            }) {
                // Taken in part: the new member ends as a cut frame does.
                group.stats.count_cut(1);
                outbox.publisher_gone(from);
            }
            Some(())
        });
        // No member here: a whole frame goes to another hub's members, once.
        let taken = taken.or_else(|| {
            let [(bytes, count)] = frame.pieces.as_slice() else {
                return None;
            };
            let cluster = table.cluster()?;
            let piece = Piece {
                status: frame.status,
                kind: PieceKind::Whole,
                frames: *count,
                bytes: bytes.clone(),
            };
            (cluster.redispatch(&piece, std::slice::from_ref(&frame.group.name)) > 0).then_some(())
        });
        match taken {
            Some(()) => frame.group.count_moved(frames),
            None => {
                if group.is_none() {
                    frame
                        .group
                        .unrouted_frames
                        .fetch_add(frames, Ordering::Relaxed);
                }
                counters
                    .unrouted_frames
                    .fetch_add(frames, Ordering::Relaxed);
            }
        }
    }
}
