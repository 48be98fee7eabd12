//! Counters for monitoring, kept where they are incremented and summed when someone looks:
//! [`SessionStats`] (one connection's figures), [`CodeCounters`] (what was published per code) and
//! [`Connections`] (the live sessions, for `/connz`, `/varz`, `/metrics` and the drain), and the
//! hub-wide [`HubCounters`] with the [`ConnectionGuard`] each connection holds.
//!
//! Everything here is atomics written by the thread that does the work (the session's, or the
//! publisher's for a code) with `Relaxed` increments: no lock and no message per frame. Readers
//! (the monitoring listener, `INFO`) may see figures a few frames apart from each other.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime};

use dashmap::DashMap;

use crate::frame::Status;
use crate::hub::admission::IpSlot;
use crate::hub::cluster::Cluster;
use crate::hub::control::{CodeSet, CounterSnapshot, EventCounts};
use crate::hub::delivery::outbox::Outbox;
use crate::hub::delivery::relay::Piece;
use crate::hub::durable::Durables;
use crate::hub::session::SessionId;

/// Whether a counter that went from `before` up by `added` is worth a log line at `warn`: the
/// first count, then each time it doubles (a power of two lies in `(before, before + added]`
/// exactly when the count gained a binary digit). Every count is still counted and traced.
pub(crate) fn worth_a_line(before: u64, added: u64) -> bool {
    let after = before.saturating_add(added);
    added > 0 && (before == 0 || after.ilog2() > before.ilog2())
}

/// One connection's figures, shared by its session (frames in), the router (subscriptions) and
/// monitoring (reads). Its outbox keeps the frames and bytes written.
#[derive(Debug)]
pub(crate) struct SessionStats {
    /// The peer's address.
    pub peer: SocketAddr,
    /// When the connection was accepted (wall clock, for `connected_at`).
    pub connected_at: SystemTime,
    /// When the connection was accepted (monotonic, for `idle_seconds`).
    started: Instant,
    frames_in: AtomicU64,
    bytes_in: AtomicU64,
    /// Milliseconds from `started` to the last bytes read.
    last_in_ms: AtomicU64,
    echo: AtomicBool,
    /// Written by the router after each change; read by monitoring.
    codes: Mutex<CodeSet>,
}

impl SessionStats {
    /// The figures of a connection from `peer` accepted now.
    pub(crate) fn new(peer: SocketAddr) -> Arc<SessionStats> {
        Arc::new(SessionStats {
            peer,
            connected_at: SystemTime::now(),
            started: Instant::now(),
            frames_in: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            last_in_ms: AtomicU64::new(0),
            echo: AtomicBool::new(false),
            codes: Mutex::new(CodeSet::empty()),
        })
    }

    /// Counts a piece read from the peer (`frames` is how many frames end in it).
    pub(crate) fn count_in(&self, frames: u32, bytes: usize) {
        self.frames_in
            .fetch_add(u64::from(frames), Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_in_ms.store(ms, Ordering::Relaxed);
    }

    /// Frames read from the peer (control frames and pings included).
    pub(crate) fn frames_in(&self) -> u64 {
        self.frames_in.load(Ordering::Relaxed)
    }

    /// Bytes read from the peer.
    pub(crate) fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
    }

    /// Seconds since the peer last sent a byte (or connected).
    pub(crate) fn idle_seconds(&self) -> u64 {
        let last = self.last_in_ms.load(Ordering::Relaxed);
        (self.started.elapsed().as_millis() as u64).saturating_sub(last) / 1000
    }

    /// Whether the session receives its own publications.
    pub(crate) fn echo(&self) -> bool {
        self.echo.load(Ordering::Relaxed)
    }

    /// Records the session's echo flag.
    pub(crate) fn set_echo(&self, on: bool) {
        self.echo.store(on, Ordering::Relaxed);
    }

    /// The session's subscriptions, as the router last recorded them.
    pub(crate) fn codes(&self) -> CodeSet {
        *self.codes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records the session's subscriptions (the router, after each change).
    pub(crate) fn set_codes(&self, codes: CodeSet) {
        *self.codes.lock().unwrap_or_else(PoisonError::into_inner) = codes;
    }
}

/// Per code, the frames and bytes published on it (whole encoded frames, as on the wire),
/// incremented by the publishing session's thread.
#[derive(Debug)]
pub(crate) struct CodeCounters {
    frames: [AtomicU64; Status::COUNT],
    bytes: [AtomicU64; Status::COUNT],
}

impl Default for CodeCounters {
    fn default() -> Self {
        CodeCounters {
            frames: std::array::from_fn(|_| AtomicU64::new(0)),
            bytes: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl CodeCounters {
    /// Counts a published piece: its bytes, and the frames that end in it.
    pub(crate) fn count(&self, piece: &Piece) {
        let code = usize::from(piece.status.code());
        if piece.frames > 0 {
            self.frames[code].fetch_add(u64::from(piece.frames), Ordering::Relaxed);
        }
        self.bytes[code].fetch_add(piece.bytes.len() as u64, Ordering::Relaxed);
    }

    /// Frames and bytes published on `code` so far.
    pub(crate) fn get(&self, code: usize) -> (u64, u64) {
        match (self.frames.get(code), self.bytes.get(code)) {
            (Some(frames), Some(bytes)) => (
                frames.load(Ordering::Relaxed),
                bytes.load(Ordering::Relaxed),
            ),
            _ => (0, 0),
        }
    }
}

/// Hub-wide traffic totals, as summed by [`Connections::totals`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    /// Frames read from peers.
    pub frames_in: u64,
    /// Bytes read from peers.
    pub bytes_in: u64,
    /// Frames written to peers.
    pub frames_out: u64,
    /// Bytes written to peers.
    pub bytes_out: u64,
    /// Bytes handed to subscribers and not yet written (live sessions only).
    pub pending_bytes: u64,
}

/// The sessions whose socket is open, by id, and the totals of those that have closed.
///
/// A `DashMap` beside the router's map of sessions because monitoring (`/connz`, on the HTTP thread) and
/// the drain read it without a hop to the router, which stays off the data path; its only writes
/// are one insert at connect and one remove when the socket closes.
#[derive(Debug, Default)]
pub(crate) struct Connections {
    live: DashMap<SessionId, Arc<Outbox>>,
    /// The figures of closed sessions.
    retired: [AtomicU64; 4],
}

impl Connections {
    /// Adds a session once its outbox exists.
    pub(crate) fn insert(&self, outbox: &Arc<Outbox>) {
        self.live.insert(outbox.id(), outbox.clone());
    }

    /// Moves a session whose socket has closed to the retired totals.
    pub(crate) fn remove(&self, outbox: &Outbox) {
        if self.live.remove(&outbox.id()).is_none() {
            return;
        }
        let stats = outbox.stats();
        let figures = [
            stats.frames_in(),
            stats.bytes_in(),
            outbox.frames_out(),
            outbox.bytes_out(),
        ];
        for (total, value) in self.retired.iter().zip(figures) {
            total.fetch_add(value, Ordering::Relaxed);
        }
    }

    /// Every live session's outbox, in id order.
    pub(crate) fn snapshot(&self) -> Vec<Arc<Outbox>> {
        let mut outboxes: Vec<Arc<Outbox>> = self
            .live
            .iter()
            .map(|entry| entry.value().clone())
            .collect();
        outboxes.sort_by_key(|outbox| outbox.id());
        outboxes
    }

    /// The hub's totals since start: live sessions' figures plus the closed ones'.
    pub(crate) fn totals(&self) -> Totals {
        let mut totals = Totals {
            frames_in: self.retired[0].load(Ordering::Relaxed),
            bytes_in: self.retired[1].load(Ordering::Relaxed),
            frames_out: self.retired[2].load(Ordering::Relaxed),
            bytes_out: self.retired[3].load(Ordering::Relaxed),
            pending_bytes: 0,
        };
        for entry in self.live.iter() {
            let outbox = entry.value();
            let stats = outbox.stats();
            totals.frames_in += stats.frames_in();
            totals.bytes_in += stats.bytes_in();
            totals.frames_out += outbox.frames_out();
            totals.bytes_out += outbox.bytes_out();
            totals.pending_bytes += outbox.pending();
        }
        totals
    }
}

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
    /// Queue-group frames moved from a leaving member to another.
    pub group_moved_frames: AtomicU64,
    /// Queue-group frames cut because the member they were partly written to left.
    pub group_cut_frames: AtomicU64,
    /// The sessions whose socket is open, and the closed ones' totals (monitoring).
    pub sessions: Connections,
    /// Frames and bytes published per code (monitoring).
    pub codes: CodeCounters,
}

impl HubCounters {
    /// The hub-wide counters as they are now: what `INFO`, `/varz` and `/metrics` all show, with
    /// the cluster's drops (0 off a cluster).
    pub(crate) fn snapshot(
        &self,
        cluster: Option<&Cluster>,
        durables: Option<&Durables>,
    ) -> CounterSnapshot {
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
                group_moved_frames: get(&self.group_moved_frames),
                group_cut_frames: get(&self.group_cut_frames),
            },
            store: durables.map(Durables::totals),
        }
    }
}

/// A guard held by a connection from accept until its socket is closed (dropped by the session's
/// writer): it counts the connection as open in [`HubCounters`] (so shutdown can wait for
/// flushes to finish) and holds its address's slot under a per-address limit.
#[derive(Debug)]
pub(crate) struct ConnectionGuard {
    counters: Arc<HubCounters>,
    _slot: Option<IpSlot>,
}

impl ConnectionGuard {
    /// Counts a newly admitted connection as open.
    pub(crate) fn new(counters: Arc<HubCounters>, slot: Option<IpSlot>) -> ConnectionGuard {
        counters.open.fetch_add(1, Ordering::AcqRel);
        ConnectionGuard {
            counters,
            _slot: slot,
        }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.counters.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn a_line_for_the_first_count_then_at_each_doubling() {
        let logged: Vec<u64> = (0..20)
            .filter(|&before| worth_a_line(before, 1))
            .map(|before| before + 1)
            .collect();
        assert_eq!(logged, [1, 2, 4, 8, 16]);
        assert!(worth_a_line(3, 5), "3 → 8 passes 4 and 8");
        assert!(!worth_a_line(8, 7), "8 → 15 passes no power of two");
        assert!(!worth_a_line(0, 0), "nothing added");
    }
    use crate::hub::delivery::relay::PieceKind;

    fn piece(code: u8, kind: PieceKind, frames: u32, len: usize) -> Piece {
        Piece {
            status: Status::new(code).unwrap_or(Status::PING),
            kind,
            frames,
            bytes: Bytes::from(vec![0u8; len]),
        }
    }

    #[test]
    fn a_code_counts_whole_frames_runs_and_streamed_pieces() {
        let codes = CodeCounters::default();
        codes.count(&piece(5, PieceKind::Whole, 3, 60));
        codes.count(&piece(5, PieceKind::First, 0, 100));
        codes.count(&piece(5, PieceKind::Middle, 0, 100));
        codes.count(&piece(5, PieceKind::Last, 1, 50));
        codes.count(&piece(6, PieceKind::Whole, 1, 20));
        assert_eq!(codes.get(5), (4, 310));
        assert_eq!(codes.get(6), (1, 20));
        assert_eq!(codes.get(7), (0, 0));
        assert_eq!(codes.get(Status::COUNT), (0, 0));
    }
}
