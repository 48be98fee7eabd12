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
//! Monitoring (`/varz`, `/subsz`, `/metrics`) reads every cursor from the store and the attached
//! ones' windows through [`CodeFigures`]: atomics each window publishes whenever it changes, on
//! its own thread, so that no other thread ever touches a window.
//!
//! # Lock order
//! `attached` → the store's cursor table and a durable code's reader view: `attach` and
//! `delete` hold `attached` while they read and change the cursor (no other session attaches
//! halfway); `figures` is a leaf, taken alone. A feed takes the subscriber's outbox lock through
//! [`Outbox`](crate::hub::delivery::outbox::Outbox)'s methods and holds nothing else meanwhile;
//! windows are `RefCell`s on the subscriber's thread, not locks.

mod feed;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use actix::SpawnHandle;
use tokio::sync::Notify;

use crate::frame::Status;
use crate::hub::control::{CodeSet, DurableCodeView, DurableView, GroupName, StartAt, StoreTotals};
use crate::hub::session::SessionId;
use crate::hub::store::{
    Backend, CodeCursor, CodeLimits, Position, StoreCounters, StoreSettings, SyncPolicy,
};

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
    /// `UNSUB ... delete=yes` names a cursor that does not exist on a code it lists.
    #[error("durable {name} not found for code {code}")]
    NotFound {
        /// The cursor's name.
        name: GroupName,
        /// The first listed code the cursor does not have.
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

/// One code of a cursor as monitoring sees it: written by its window (on the subscriber's
/// thread) and its feed, read from any thread. Kept for the hub's lifetime per cursor and code,
/// across attachments, so the redelivery counts add up.
#[derive(Debug, Default)]
pub(crate) struct CodeFigures {
    /// Whether a session's window holds it now.
    attached: AtomicBool,
    acked: AtomicU64,
    frames: AtomicU64,
    bytes: AtomicU64,
    redelivered: AtomicU64,
    dead_lettered: AtomicU64,
}

impl CodeFigures {
    /// The figures of `code`, for monitoring; `acked` is the cursor's saved position.
    fn view(&self, code: u8, acked: u64) -> DurableCodeView {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let attached = self.attached.load(Ordering::Relaxed);
        DurableCodeView {
            code,
            acked: if attached {
                get(&self.acked).max(acked)
            } else {
                acked
            },
            unacked_frames: if attached { get(&self.frames) } else { 0 },
            unacked_bytes: if attached { get(&self.bytes) } else { 0 },
            redelivered: get(&self.redelivered),
            dead_lettered: get(&self.dead_lettered),
        }
    }

    /// Counts a redelivery.
    pub(crate) fn redelivered(&self) {
        self.redelivered.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a dead letter.
    pub(crate) fn dead_lettered(&self) {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
    }
}
/// The hub's durable cursors: which session each is attached to; see the module documentation.
pub(crate) struct Durables {
    store: Arc<dyn Backend>,
    /// Per code, its limits (`ack_wait`, `max_deliver`, `dead_letter`); `None` if not durable.
    limits: Vec<Option<CodeLimits>>,
    counters: Arc<DurableCounters>,
    /// The store's own counters (written by its I/O thread).
    store_counters: Arc<StoreCounters>,
    /// The store's directory and sync policy, for `/varz`.
    dir: std::path::PathBuf,
    sync: SyncPolicy,
    /// Cursor name → the session attached to it. Taken before the store's cursor table and a
    /// code's reader view (`attach`, `delete`), never under another lock.
    attached: Mutex<HashMap<GroupName, SessionId>>,
    /// Cursor name → per code, its figures (created at the first attach of this run). A leaf
    /// lock.
    figures: Mutex<HashMap<GroupName, BTreeMap<u8, Arc<CodeFigures>>>>,
}

impl std::fmt::Debug for Durables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durables").finish_non_exhaustive()
    }
}

impl Durables {
    /// The cursors over `store`'s logs, opened with `settings` and counting into
    /// `store_counters`.
    pub(crate) fn new(
        store: Arc<dyn Backend>,
        settings: &StoreSettings,
        store_counters: Arc<StoreCounters>,
    ) -> Arc<Durables> {
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
            store_counters,
            dir: settings.dir.clone(),
            sync: settings.sync,
            attached: Mutex::new(HashMap::new()),
            figures: Mutex::new(HashMap::new()),
        })
    }

    /// The store's directory.
    pub(crate) fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The store's sync policy.
    pub(crate) fn sync(&self) -> SyncPolicy {
        self.sync
    }

    /// The store's and durable delivery's counters now.
    pub(crate) fn totals(&self) -> StoreTotals {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let (store, durable) = (&self.store_counters, &self.counters);
        StoreTotals {
            frames: get(&store.frames),
            bytes: get(&store.bytes),
            syncs: get(&store.syncs),
            batches: get(&store.batches),
            refused_full: get(&store.refused_full),
            refused_too_large: get(&store.refused_too_large),
            io_errors: get(&store.io_errors),
            abandoned: get(&store.abandoned),
            cut_bytes: get(&store.cut_bytes),
            segments_deleted: get(&store.segments_deleted),
            frames_deleted: get(&store.frames_deleted),
            delivered: get(&durable.delivered),
            redelivered: get(&durable.redelivered),
            dead_lettered: get(&durable.dead_lettered),
            acks: get(&durable.acks),
        }
    }

    /// The figures of code `status` of cursor `name`, shared by every window of it this run.
    pub(crate) fn figures(&self, name: &GroupName, status: Status) -> Arc<CodeFigures> {
        self.figures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.clone())
            .or_default()
            .entry(status.code())
            .or_default()
            .clone()
    }

    /// Every cursor in the store, by name, with its attached windows' figures.
    pub(crate) fn view(&self) -> Vec<DurableView> {
        // Each table alone, never two at once.
        let cursors = self.store.cursors().all();
        let figures = self
            .figures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let attached = self
            .attached
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        cursors
            .into_iter()
            .filter_map(|(name, cursor)| {
                let name: GroupName = name.parse().ok()?;
                let codes = cursor
                    .codes
                    .iter()
                    .map(|(&code, saved)| {
                        figures
                            .get(&name)
                            .and_then(|codes| codes.get(&code))
                            .map_or(
                                DurableCodeView {
                                    code,
                                    acked: saved.acked,
                                    ..DurableCodeView::default()
                                },
                                |figures| figures.view(code, saved.acked),
                            )
                    })
                    .collect();
                Some(DurableView {
                    attached: attached.contains_key(&name),
                    name,
                    codes,
                })
            })
            .collect()
    }

    /// The store.
    pub(crate) fn store(&self) -> &Arc<dyn Backend> {
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

    /// Deletes cursor `name` on `codes` for good (`UNSUB ... delete=yes`), the whole cursor when
    /// no code is left: a later `SUB` starts it afresh at its `from=`. Nothing changes unless
    /// every code can go. `session` then detaches its own windows of those codes: their feeds
    /// run on its thread and are stopped before they run again, so none records into the
    /// deleted cursor.
    ///
    /// # Errors
    /// [`DurableRefused::InUse`] when another session is attached, [`DurableRefused::NotFound`]
    /// when the cursor does not have one of `codes`.
    pub(crate) fn delete(
        &self,
        session: SessionId,
        name: &GroupName,
        codes: CodeSet,
    ) -> Result<(), DurableRefused> {
        // Held while the cursor changes: no other session attaches to it halfway.
        let attached = self.attached.lock().unwrap_or_else(PoisonError::into_inner);
        if attached.get(name).is_some_and(|&other| other != session) {
            return Err(DurableRefused::InUse { name: name.clone() });
        }
        let cursor = self.store.cursors().get(name.as_str()).unwrap_or_default();
        if let Some(status) = codes
            .iter()
            .find(|status| !cursor.codes.contains_key(&status.code()))
        {
            return Err(DurableRefused::NotFound {
                name: name.clone(),
                code: status.code(),
            });
        }
        self.store
            .cursors()
            .remove(name.as_str(), codes.iter().map(Status::code));
        drop(attached);
        // A new cursor of the same name counts its redeliveries from zero.
        let mut figures = self.figures.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(figures_of) = figures.get_mut(name) {
            for status in codes.iter() {
                figures_of.remove(&status.code());
            }
            if figures_of.is_empty() {
                figures.remove(name);
            }
        }
        Ok(())
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
    /// Where this window publishes its figures for monitoring.
    pub figures: Arc<CodeFigures>,
}

impl Window {
    /// Publishes the acknowledged position and what is in flight for monitoring.
    fn publish(&self) {
        let figures = &self.figures;
        figures.acked.store(self.acked, Ordering::Relaxed);
        figures
            .frames
            .store(self.in_flight.len() as u64, Ordering::Relaxed);
        figures.bytes.store(self.bytes, Ordering::Relaxed);
    }

    /// Records frame `seq` as delivered and not acknowledged.
    pub(crate) fn insert(&mut self, seq: u64, frame: InFlight) {
        self.bytes += frame.len;
        if let Some(old) = self.in_flight.insert(seq, frame) {
            self.bytes -= old.len;
        }
        self.publish();
    }

    /// Takes frame `seq` out of flight to deliver it again.
    pub(crate) fn take(&mut self, seq: u64) {
        if let Some(frame) = self.in_flight.remove(&seq) {
            self.bytes -= frame.len;
        }
        self.publish();
    }

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
        self.publish();
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

/// A new acknowledged position and the redelivery counts to record with it.
pub(crate) type Recorded = (u64, BTreeMap<u64, u32>);

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
    /// Adds code `status` of cursor `name`, acknowledged up to `cursor.acked`, publishing its
    /// window to `figures`; returns what its feed shares with the session. `None` if it is
    /// attached already.
    pub(crate) fn add(
        &mut self,
        name: &GroupName,
        status: Status,
        cursor: CodeCursor,
        figures: Arc<CodeFigures>,
    ) -> Option<(Rc<RefCell<Window>>, Rc<Notify>)> {
        let codes = self.cursors.entry(name.clone()).or_default();
        if codes.contains_key(&status.code()) {
            return None;
        }
        figures.attached.store(true, Ordering::Relaxed);
        let window = Window {
            acked: cursor.acked,
            carried: cursor.deliveries,
            figures,
            ..Window::default()
        };
        window.publish();
        let window = Rc::new(RefCell::new(window));
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
    ) -> Result<Option<Recorded>, DurableRefused> {
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
                codes.map_or(true, |codes| {
                    Status::new(code).is_some_and(|s| codes.contains(s))
                })
            })
            .collect();
        let tasks = removed
            .iter()
            .filter_map(|code| attached.remove(code))
            .filter_map(|code| {
                let window = code.window.borrow();
                window.figures.attached.store(false, Ordering::Relaxed);
                code.task
            })
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

    /// Every attached cursor with its codes' windows, by name (`INFO`'s `durable`).
    pub(crate) fn view(&self) -> Vec<DurableView> {
        let mut view: Vec<DurableView> = self
            .cursors
            .iter()
            .map(|(name, codes)| DurableView {
                name: name.clone(),
                attached: true,
                codes: codes
                    .iter()
                    .map(|(&code, attached)| {
                        let window = attached.window.borrow();
                        window.figures.view(code, window.acked)
                    })
                    .collect(),
            })
            .collect();
        view.sort_by(|a, b| a.name.cmp(&b.name));
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
