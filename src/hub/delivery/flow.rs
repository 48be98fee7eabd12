//! Flow control between sessions on different arbiters: a publisher's read [`Gate`] and a
//! subscriber's [`Backlog`].
//!
//! A [`Backlog`] counts the bytes queued for a subscriber (what its socket did not take when they
//! were offered) until its writer has written them; bytes written through at once are never
//! counted. Under the `block` policy a subscriber whose backlog reaches its high-water mark closes
//! the gate of each publisher that feeds it; the publisher's session stops reading its socket
//! (TCP then pushes back on the peer) until every subscriber that closed its gate has drained to
//! its low-water mark (half). Both are shared across arbiter threads: atomics, and one short
//! mutex (the gates a backlog holds closed) taken under the subscriber's outbox lock, never the
//! reverse, and never across an await.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;

use crate::hub::delivery::relay::CHUNK;

/// How far a streamed frame already on a subscriber's wire may run ahead of what has been
/// written, whatever the high-water mark: four relay chunks (1 MiB).
pub(crate) const STREAM_ALLOWANCE: u64 = 4 * CHUNK as u64;

/// A publisher's read gate: open unless some subscriber (or a held frame) has closed it.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    /// How many closers hold it shut.
    closers: AtomicUsize,
    /// The publisher's read task, woken when the last closer opens it.
    reader: AtomicWaker,
}

impl Gate {
    /// An open gate.
    pub(crate) fn new() -> Arc<Gate> {
        Arc::new(Gate::default())
    }

    /// Adds a closer.
    pub(crate) fn close(&self) {
        self.closers.fetch_add(1, Ordering::AcqRel);
    }

    /// Removes a closer; the last one wakes the reader.
    pub(crate) fn open(&self) {
        if self.closers.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.reader.wake();
        }
    }

    /// Whether the gate is shut.
    pub(crate) fn is_closed(&self) -> bool {
        self.closers.load(Ordering::Acquire) > 0
    }

    /// `Ready` when the gate is open; otherwise the reader is woken when it opens.
    pub(crate) fn poll_open(&self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.is_closed() {
            return Poll::Ready(());
        }
        self.reader.register(cx.waker());
        // Opened between the check and the registration: the wake may have gone to nobody.
        if self.is_closed() {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
}

/// A subscriber's outbound byte count and the publishers it holds back.
#[derive(Debug)]
pub(crate) struct Backlog {
    /// Bytes charged (handed to the session or queued) and not yet written.
    pending: AtomicU64,
    /// The high-water mark.
    high: u64,
    /// Frames skipped for this subscriber under `drop`.
    dropped: AtomicU64,
    /// Gates this subscriber has closed; `None` once its writer has ended (nothing more is
    /// blocked on it).
    blocked: Mutex<Option<Vec<Arc<Gate>>>>,
    /// Whether `blocked` has any gate, so the writer's hot path skips the mutex.
    blocking: AtomicBool,
}

impl Backlog {
    /// An empty backlog with high-water mark `high` (the low-water mark is half of it).
    pub(crate) fn new(high: u64) -> Arc<Backlog> {
        Arc::new(Backlog {
            pending: AtomicU64::new(0),
            high,
            dropped: AtomicU64::new(0),
            blocked: Mutex::new(Some(Vec::new())),
            blocking: AtomicBool::new(false),
        })
    }

    /// Bytes charged and not yet written.
    pub(crate) fn pending(&self) -> u64 {
        self.pending.load(Ordering::Acquire)
    }

    /// The high-water mark.
    pub(crate) fn high(&self) -> u64 {
        self.high
    }

    /// Whether `len` more bytes fit: an empty backlog takes any piece, so one piece larger than
    /// the mark still moves.
    pub(crate) fn has_room(&self, len: u64) -> bool {
        let pending = self.pending();
        pending == 0 || pending.saturating_add(len) <= self.high
    }

    /// Whether `len` more bytes of the streamed frame already on the subscriber's wire fit.
    ///
    /// Pieces of a streamed frame arrive one chunk per read, often faster than the subscriber's
    /// writer gets its turn; judged against the mark alone, a prompt reader with a small mark
    /// would be called slow for one frame's size. The frame on the wire may therefore run up to
    /// [`STREAM_ALLOWANCE`] ahead of what has been written when the mark is lower.
    pub(crate) fn has_room_to_continue(&self, len: u64) -> bool {
        let pending = self.pending();
        pending == 0 || pending.saturating_add(len) <= self.high.max(STREAM_ALLOWANCE)
    }

    /// Whether the backlog is at or over its high-water mark.
    pub(crate) fn is_full(&self) -> bool {
        self.pending() >= self.high
    }

    /// Charges `len` bytes about to be handed to the subscriber.
    pub(crate) fn charge(&self, len: u64) {
        self.pending.fetch_add(len, Ordering::AcqRel);
    }

    /// Discharges `len` written bytes; at the low-water mark the gates this subscriber closed
    /// are opened.
    pub(crate) fn discharge(&self, len: u64) {
        let before = self.pending.fetch_sub(len, Ordering::AcqRel);
        if before.saturating_sub(len) <= self.high / 2 && self.blocking.load(Ordering::Acquire) {
            self.release(false);
        }
    }

    /// Counts `frames` skipped under `drop`; returns the count before.
    pub(crate) fn count_drops(&self, frames: u64) -> u64 {
        self.dropped.fetch_add(frames, Ordering::Relaxed)
    }

    /// Frames skipped under `drop` so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Holds `publisher` back until this backlog drains to its low-water mark. Does nothing when
    /// the gate is already held by this backlog or the subscriber's writer has ended.
    pub(crate) fn block(&self, publisher: &Arc<Gate>) {
        {
            let mut blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(gates) = blocked.as_mut() else {
                return;
            };
            if gates.iter().any(|gate| Arc::ptr_eq(gate, publisher)) {
                return;
            }
            publisher.close();
            gates.push(publisher.clone());
            self.blocking.store(true, Ordering::Release);
        }
        // The writer may have drained past the mark before it could see the new gate.
        if self.pending() <= self.high / 2 {
            self.release(false);
        }
    }

    /// Opens every gate this backlog holds; `for_good` when the subscriber's writer has ended, so
    /// that none is closed again.
    pub(crate) fn release(&self, for_good: bool) {
        let gates = {
            let mut blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
            self.blocking.store(false, Ordering::Release);
            if for_good {
                blocked.take().unwrap_or_default()
            } else {
                blocked.as_mut().map(std::mem::take).unwrap_or_default()
            }
        };
        for gate in gates {
            gate.open();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gate_opens_when_its_last_closer_opens_it() {
        let gate = Gate::new();
        gate.close();
        gate.close();
        gate.open();
        assert!(gate.is_closed());
        gate.open();
        assert!(!gate.is_closed());
    }

    #[test]
    fn backlog_blocks_until_low_water() {
        let backlog = Backlog::new(100);
        let gate = Gate::new();
        assert!(backlog.has_room(1_000), "an empty backlog takes any piece");
        backlog.charge(120);
        assert!(backlog.is_full());
        assert!(!backlog.has_room(1));
        backlog.block(&gate);
        backlog.block(&gate);
        assert!(gate.is_closed());
        backlog.discharge(60);
        assert!(gate.is_closed(), "60 pending is above the low-water mark");
        backlog.discharge(10);
        assert!(!gate.is_closed(), "50 pending is the low-water mark");
    }

    #[test]
    fn a_frame_on_the_wire_may_run_ahead_of_a_small_mark() {
        let backlog = Backlog::new(64 * 1024);
        let chunk = CHUNK as u64;
        backlog.charge(chunk);
        assert!(!backlog.has_room(chunk), "a new frame waits for the mark");
        assert!(backlog.has_room_to_continue(chunk));
        backlog.charge(3 * chunk);
        assert!(!backlog.has_room_to_continue(1), "the allowance is bounded");
    }

    #[test]
    fn an_ended_writer_blocks_nobody() {
        let backlog = Backlog::new(10);
        let gate = Gate::new();
        backlog.charge(100);
        backlog.block(&gate);
        backlog.release(true);
        assert!(!gate.is_closed());
        backlog.block(&gate);
        assert!(!gate.is_closed());
    }
}
