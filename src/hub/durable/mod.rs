//! Durable subscriptions: named cursors over the durable codes' logs (docs/durability.md).
//!
//! A session that sends `SUB <codes> durable=<name> [from=...]` attaches to the cursor `name`:
//! created at the start `from=` names (default `new`) the first time, resumed where it was
//! acknowledged every later time, across disconnects and hub restarts. From then on the session
//! receives the codes' *stored* frames, each preceded by the control frame `MSG <name> <code>
//! <seq>`, and acknowledges them with `ACK <name> <code> <seq>` (cumulative).
//!
//! - [`Durables`] (one per hub) owns which session each cursor is attached to, and writes the
//!   cursors' acknowledged positions to the store's [`CursorStore`](crate::hub::store::CursorStore)
//!   (saved by the store's I/O thread, never by the caller).
//! - [`Attachments`] (one per session) holds the session's attached cursors: per code a
//!   [`Window`] of frames delivered and not acknowledged, shared with that code's feed.
//! - [`feed`]: one task per attached code, on the subscriber's own arbiter: it reads the log
//!   (blocking reads on tokio's blocking pool, a batch at a time), offers each frame to the
//!   subscriber's outbox with its `MSG` notice, keeps the window, redelivers after `ack_wait` and
//!   moves a frame delivered `max_deliver` times to the dead-letter code.
//!
//! Delivery is from the log only, never from the live relay: a durable subscriber therefore sees
//! a frame only once it is stored under the sync policy, and the hand-over from replay to live
//! frames has no gap and no duplicate by construction (it is the same reader).
//!
//! # Lock order
//! `Durables`' table is a leaf, taken alone. A feed takes the subscriber's outbox lock through
//! [`Outbox`](crate::hub::delivery::outbox::Outbox)'s methods and holds nothing else meanwhile;
//! windows are `RefCell`s on the subscriber's thread, not locks.

mod feed;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use actix::SpawnHandle;
use tokio::sync::Notify;

use crate::frame::Status;
use crate::hub::control::{CodeSet, GroupName, StartAt};
use crate::hub::session::SessionId;
use crate::hub::store::{CodeCursor, CodeLimits, Position, Store, StoreSettings};

pub(crate) use feed::{feed, Feed};

/// Most frames a durable subscriber holds unacknowledged, per code.
pub(crate) const WINDOW_FRAMES: usize = 1024;
/// Most bytes a durable subscriber holds unacknowledged, per code (one frame always goes out,
/// whatever its size).
pub(crate) const WINDOW_BYTES: u64 = 64 * 1024 * 1024;

/// Why a durable subscription was refused. `Display` is the text after `ERR `.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DurableRefused {
    /// The hub keeps no store (no durable code configured).
    #[error("no durable codes on this hub")]
    NoStore,
    /// A code of the subscription is not durable.
    #[error("code {code} is not durable")]
    NotDurable {
        /// The first such code.
        code: u8,
    },
    /// Another session is attached to the cursor.
    #[error("durable {name} in use")]
    InUse {
        /// The cursor's name.
        name: GroupName,
    },
    /// `ACK` names a cursor the session is not attached to, or a code it does not have.
    #[error("durable {name} not attached for code {code}")]
    NotAttached {
        /// The cursor's name.
        name: GroupName,
        /// The code.
        code: u8,
    },
    /// The log could not be read to place a new cursor.
    #[error("store failed {code}")]
    Store {
        /// The code.
        code: u8,
    },
}

/// Durable delivery's counters, for `/varz` and `/metrics`.
#[derive(Debug, Default)]
pub struct DurableCounters {
    /// Frames delivered through durable subscriptions (redeliveries included).
    pub delivered: AtomicU64,
    /// Frames delivered again after `ack_wait`.
    pub redelivered: AtomicU64,
    /// Frames moved to the dead-letter code (or dropped, without one) after `max_deliver`.
    pub dead_lettered: AtomicU64,
    /// Acknowledgements received.
    pub acks: AtomicU64,
}

impl DurableCounters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// The hub's durable cursors: which session each is attached to; see the module documentation.
pub(crate) struct Durables {
    store: Arc<Store>,
    /// Per code, its limits (`ack_wait`, `max_deliver`, `dead_letter`); `None` if not durable.
    limits: Vec<Option<CodeLimits>>,
    counters: Arc<DurableCounters>,
    /// Cursor name → the session attached to it. A leaf lock.
    attached: Mutex<HashMap<GroupName, SessionId>>,
}

impl std::fmt::Debug for Durables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durables").finish_non_exhaustive()
    }
}

impl Durables {
    /// The cursors over `store`'s logs, opened with `settings`.
    pub(crate) fn new(store: Arc<Store>, settings: &StoreSettings) -> Arc<Durables> {
        let limits = (0..Status::COUNT)
            .map(|code| {
                u8::try_from(code)
                    .ok()
                    .and_then(Status::new)
                    .and_then(|status| settings.limits(status).cloned())
            })
            .collect();
        Arc::new(Durables {
            store,
            limits,
            counters: Arc::default(),
            attached: Mutex::new(HashMap::new()),
        })
    }

    /// The store.
    pub(crate) fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The limits of durable code `status`.
    pub(crate) fn limits(&self, status: Status) -> CodeLimits {
        self.limits
            .get(usize::from(status.code()))
            .cloned()
            .flatten()
            .unwrap_or_default()
    }

    /// Durable delivery's counters.
    pub(crate) fn counters(&self) -> &Arc<DurableCounters> {
        &self.counters
    }

    /// Attaches `session` to cursor `name` for `codes`: creates the codes the cursor does not
    /// have yet at `from` (default: new frames only), and returns, per code, the highest
    /// sequence number acknowledged and the delivery counts of frames delivered and not
    /// acknowledged.
    ///
    /// # Errors
    /// [`DurableRefused::NotDurable`] when a code is not durable, [`DurableRefused::InUse`] when
    /// another session is attached, [`DurableRefused::Store`] when the log cannot be read.
    pub(crate) fn attach(
        &self,
        session: SessionId,
        name: &GroupName,
        codes: CodeSet,
        from: Option<StartAt>,
    ) -> Result<BTreeMap<u8, CodeCursor>, DurableRefused> {
        if let Some(status) = codes.difference(self.store.durable()).iter().next() {
            return Err(DurableRefused::NotDurable {
                code: status.code(),
            });
        }
        let mut attached = self.attached.lock().unwrap_or_else(PoisonError::into_inner);
        if attached.get(name).is_some_and(|&other| other != session) {
            return Err(DurableRefused::InUse { name: name.clone() });
        }
        // Where new codes start: read before the cursor changes, outside the cursor's lock.
        let existing = self.store.cursors().get(name.as_str()).unwrap_or_default();
        let mut starts = BTreeMap::new();
        for status in codes.iter() {
            if existing.codes.contains_key(&status.code()) {
                continue;
            }
            let position = match from.unwrap_or(StartAt::New) {
                StartAt::New => Position::Next,
                StartAt::All => Position::First,
                StartAt::Last => Position::Last,
                StartAt::Seq(seq) => Position::Seq(seq),
                StartAt::Time(time) => Position::Time(time),
            };
            let refused = |_| DurableRefused::Store {
                code: status.code(),
            };
            let mut reader = self.store.reader(status, position).map_err(refused)?;
            // A reader from a time starts at the index entry before it and skips older frames
            // as it reads: the cursor starts at the first frame it returns (a few record
            // headers read, within one index interval).
            let start = match position {
                Position::Time(_) => match reader.next_frame().map_err(refused)? {
                    Some(frame) => frame.seq,
                    None => reader.next_seq(),
                },
                _ => reader.next_seq(),
            };
            starts.insert(status.code(), start.saturating_sub(1));
        }
        let cursor = self.store.cursors().update(name.as_str(), |cursor| {
            for (code, acked) in starts {
                cursor.codes.entry(code).or_insert(CodeCursor {
                    acked,
                    deliveries: BTreeMap::new(),
                });
            }
            cursor.clone()
        });
        attached.insert(name.clone(), session);
        Ok(cursor
            .codes
            .into_iter()
            .filter(|(code, _)| Status::new(*code).is_some_and(|status| codes.contains(status)))
            .collect())
    }

    /// Detaches `session` from cursor `name` (the cursor stays).
    pub(crate) fn detach(&self, session: SessionId, name: &GroupName) {
        let mut attached = self.attached.lock().unwrap_or_else(PoisonError::into_inner);
        if attached.get(name) == Some(&session) {
            attached.remove(name);
        }
    }

    /// Records that cursor `name` has every frame of `status` up to `acked` acknowledged, and
    /// the delivery counts of the frames after it that were delivered more than once (so that
    /// `max_deliver` survives a restart). Saved by the store's I/O thread.
    pub(crate) fn record(
        &self,
        name: &GroupName,
        status: Status,
        acked: u64,
        redelivered: BTreeMap<u64, u32>,
    ) {
        self.store.cursors().update(name.as_str(), |cursor| {
            let code = cursor.codes.entry(status.code()).or_default();
            code.acked = code.acked.max(acked);
            code.deliveries = redelivered;
        });
    }
}

/// A frame delivered to a durable subscriber and not acknowledged yet.
#[derive(Debug)]
pub(crate) struct InFlight {
    /// Its length on the wire (without the notice).
    pub len: u64,
    /// How many times it has been delivered.
    pub deliveries: u32,
    /// The subscriber's `bytes_out` at which the frame has been written whole.
    pub written_at_bytes: u64,
    /// When the frame was seen written whole (`ack_wait` counts from there).
    pub written: Option<Instant>,
}

/// One attached code's frames in flight, shared by its feed and the session's `ACK`s.
#[derive(Debug, Default)]
pub(crate) struct Window {
    /// Every frame up to here is acknowledged.
    pub acked: u64,
    /// Delivered and not acknowledged, by sequence number.
    pub in_flight: BTreeMap<u64, InFlight>,
    /// Bytes of `in_flight`.
    pub bytes: u64,
    /// Delivery counts carried over from the cursor (frames redelivered before a detach).
    pub carried: BTreeMap<u64, u32>,
    /// Frames after `acked` taken out unacknowledged (dead-lettered, gone): the position
    /// passes them once the frames before them are acknowledged.
    pub settled: BTreeSet<u64>,
}

impl Window {
    /// Whether another frame may go out: a frame always may when none is in flight.
    pub(crate) fn has_room(&self) -> bool {
        self.in_flight.is_empty()
            || (self.in_flight.len() < WINDOW_FRAMES && self.bytes < WINDOW_BYTES)
    }

    /// Acknowledges every frame up to `seq`; returns whether the acknowledged position moved.
    pub(crate) fn ack(&mut self, seq: u64) -> bool {
        let kept = self.in_flight.split_off(&(seq.saturating_add(1)));
        let gone = std::mem::replace(&mut self.in_flight, kept);
        self.bytes -= gone.values().map(|frame| frame.len).sum::<u64>();
        self.carried = self.carried.split_off(&(seq.saturating_add(1)));
        let acked = match self.in_flight.keys().next() {
            // Everything before the oldest frame still out is acknowledged.
            Some(&oldest) => seq.min(oldest - 1),
            None => seq,
        };
        self.advance(acked)
    }

    /// Moves the acknowledged position to `acked` (if later) and past the settled frames right
    /// after it; returns whether it moved.
    fn advance(&mut self, acked: u64) -> bool {
        let mut acked = acked.max(self.acked);
        // A peer's ACK may name any number: no overflow.
        while let Some(next) = acked
            .checked_add(1)
            .filter(|next| self.settled.remove(next))
        {
            acked = next;
        }
        self.settled = self.settled.split_off(&acked.saturating_add(1));
        let moved = acked > self.acked;
        self.acked = acked;
        moved
    }

    /// Takes frame `seq` out of the window without an acknowledgement (dead-lettered, or gone
    /// from the log); returns whether the acknowledged position moved.
    pub(crate) fn settle(&mut self, seq: u64) -> bool {
        if let Some(frame) = self.in_flight.remove(&seq) {
            self.bytes -= frame.len;
        }
        self.carried.remove(&seq);
        let acked = match self.in_flight.keys().next() {
            Some(&oldest) => oldest - 1,
            None => seq.max(self.acked),
        };
        if seq > acked {
            self.settled.insert(seq);
        }
        self.advance(acked)
    }

    /// The delivery counts of frames delivered more than once, for the cursor.
    pub(crate) fn redelivered(&self) -> BTreeMap<u64, u32> {
        self.in_flight
            .iter()
            .filter(|(_, frame)| frame.deliveries > 1)
            .map(|(&seq, frame)| (seq, frame.deliveries))
            .collect()
    }
}

/// One attached code, as the session sees it.
struct AttachedCode {
    window: Rc<RefCell<Window>>,
    /// Wakes the feed: an acknowledgement made room.
    wake: Rc<Notify>,
    /// The feed task, stopped on detach.
    task: Option<SpawnHandle>,
}

/// The cursors a session is attached to; see the module documentation. Lives on the session's
/// thread.
#[derive(Default)]
pub(crate) struct Attachments {
    cursors: HashMap<GroupName, BTreeMap<u8, AttachedCode>>,
}

impl std::fmt::Debug for Attachments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(
                self.cursors
                    .iter()
                    .map(|(name, codes)| (name, codes.keys().collect::<Vec<_>>())),
            )
            .finish()
    }
}

impl Attachments {
    /// Adds code `status` of cursor `name`, acknowledged up to `cursor.acked`; returns what its
    /// feed shares with the session. `None` if it is attached already.
    pub(crate) fn add(
        &mut self,
        name: &GroupName,
        status: Status,
        cursor: CodeCursor,
    ) -> Option<(Rc<RefCell<Window>>, Rc<Notify>)> {
        let codes = self.cursors.entry(name.clone()).or_default();
        if codes.contains_key(&status.code()) {
            return None;
        }
        let window = Rc::new(RefCell::new(Window {
            acked: cursor.acked,
            carried: cursor.deliveries,
            ..Window::default()
        }));
        let wake = Rc::new(Notify::new());
        codes.insert(
            status.code(),
            AttachedCode {
                window: window.clone(),
                wake: wake.clone(),
                task: None,
            },
        );
        Some((window, wake))
    }

    /// Records the feed task of code `status` of cursor `name`.
    pub(crate) fn set_task(&mut self, name: &GroupName, status: Status, task: SpawnHandle) {
        if let Some(code) = self
            .cursors
            .get_mut(name)
            .and_then(|codes| codes.get_mut(&status.code()))
        {
            code.task = Some(task);
        }
    }

    /// Acknowledges frames of `status` up to `seq` on cursor `name`; returns the new
    /// acknowledged position and the redelivery counts to record when it moved.
    ///
    /// # Errors
    /// [`DurableRefused::NotAttached`] when the session has no such cursor and code.
    pub(crate) fn ack(
        &self,
        name: &GroupName,
        status: Status,
        seq: u64,
    ) -> Result<Option<(u64, BTreeMap<u64, u32>)>, DurableRefused> {
        let code = self
            .cursors
            .get(name)
            .and_then(|codes| codes.get(&status.code()))
            .ok_or_else(|| DurableRefused::NotAttached {
                name: name.clone(),
                code: status.code(),
            })?;
        let mut window = code.window.borrow_mut();
        let moved = window.ack(seq);
        code.wake.notify_one();
        Ok(moved.then(|| (window.acked, window.redelivered())))
    }

    /// Detaches `codes` of cursor `name` (every code when `None`); returns the feed tasks to
    /// cancel and whether the cursor has no code left attached.
    pub(crate) fn remove(
        &mut self,
        name: &GroupName,
        codes: Option<CodeSet>,
    ) -> (Vec<SpawnHandle>, bool) {
        let Some(attached) = self.cursors.get_mut(name) else {
            return (Vec::new(), false);
        };
        let removed: Vec<u8> = attached
            .keys()
            .copied()
            .filter(|&code| {
                codes.is_none_or(|codes| Status::new(code).is_some_and(|s| codes.contains(s)))
            })
            .collect();
        let tasks = removed
            .iter()
            .filter_map(|code| attached.remove(code).and_then(|code| code.task))
            .collect();
        let empty = attached.is_empty();
        if empty {
            self.cursors.remove(name);
        }
        (tasks, empty)
    }

    /// The names of every attached cursor.
    pub(crate) fn names(&self) -> Vec<GroupName> {
        self.cursors.keys().cloned().collect()
    }

    /// Per attached cursor, its codes, acknowledged positions and frames in flight (for `INFO`).
    pub(crate) fn view(&self) -> Vec<(GroupName, Vec<(u8, u64, usize, u64)>)> {
        let mut view: Vec<_> = self
            .cursors
            .iter()
            .map(|(name, codes)| {
                let codes = codes
                    .iter()
                    .map(|(&code, attached)| {
                        let window = attached.window.borrow();
                        (code, window.acked, window.in_flight.len(), window.bytes)
                    })
                    .collect();
                (name.clone(), codes)
            })
            .collect();
        view.sort_by(|a, b| a.0.cmp(&b.0));
        view
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_flight(len: u64) -> InFlight {
        InFlight {
            len,
            deliveries: 1,
            written_at_bytes: 0,
            written: None,
        }
    }

    #[test]
    fn acknowledgements_are_cumulative_and_the_position_stops_at_the_oldest_out() {
        let mut window = Window {
            acked: 10,
            ..Window::default()
        };
        for seq in 11..=15 {
            window.in_flight.insert(seq, in_flight(100));
            window.bytes += 100;
        }
        assert!(window.ack(12));
        assert_eq!(window.acked, 12);
        assert_eq!(window.bytes, 300);
        // An old acknowledgement moves nothing.
        assert!(!window.ack(11));
        // A dead-lettered frame in the middle: the position waits for the frames before it.
        assert!(!window.settle(14));
        assert_eq!(window.acked, 12);
        assert!(window.ack(13));
        assert_eq!(window.acked, 14);
        assert!(window.ack(15));
        assert_eq!((window.acked, window.bytes), (15, 0));
        assert!(window.in_flight.is_empty());
        // An acknowledgement of any number is taken without overflow.
        assert!(window.ack(u64::MAX));
        assert_eq!(window.acked, u64::MAX);
    }

    #[test]
    fn the_window_bounds_frames_and_bytes_but_always_lets_one_through() {
        let mut window = Window::default();
        assert!(window.has_room());
        window.in_flight.insert(1, in_flight(WINDOW_BYTES * 4));
        window.bytes = WINDOW_BYTES * 4;
        assert!(!window.has_room());
        window.ack(1);
        assert!(window.has_room());
        for seq in 2..2 + WINDOW_FRAMES as u64 {
            window.in_flight.insert(seq, in_flight(1));
            window.bytes += 1;
        }
        assert!(!window.has_room());
    }
}
