//! The [`Outbound`] queue and its task: the pieces this hub's publishers hand to the cluster,
//! published to NATS in order, each within the credit every other hub has given.
//!
//! Publishers never wait for NATS: they queue and go on. While the queue holds more than
//! [`QUEUE_HIGH`] bytes, the publishers adding to it are held back through their read gates, as
//! a `block` subscriber holds them back, until it drains to half. The task publishes a message
//! only while each other hub has fewer than [`WINDOW_MESSAGES`] messages and [`WINDOW_BYTES`]
//! bytes of this hub's stream undelivered: a hub whose subscribers cannot keep up holds the
//! publishers here back instead of overflowing NATS. While the link is down, nothing waits:
//! what cannot cross is counted and dropped.
//!
//! NATS itself never holds the publishers back for long: when it takes nothing for
//! [`PUBLISH_TIMEOUT`], or for [`HOLD_MAX`] while publishers are held (a dead or slow link), the
//! queue is shed — what it holds and what publishers offer is counted and dropped — until the
//! NATS client has written out all it took. Local subscribers never wait for the cluster.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::frame::Status;
use crate::hub::cluster::messages::{
    Carried, DataHeader, GroupChoices, DATA_HEADER, GROUPS_HEADER,
};
use crate::hub::cluster::sequence::Sending;
use crate::hub::cluster::Cluster;
use crate::hub::delivery::flow::{Backlog, Gate};
use crate::hub::delivery::relay::{Piece, PieceKind};
use crate::hub::session::SessionId;

/// Bytes queued for NATS past which publishers are held back.
const QUEUE_HIGH: u64 = 8 * 1024 * 1024;
/// Most messages of this hub's stream another hub may have undelivered.
pub(super) const WINDOW_MESSAGES: u64 = 1024;
/// Most bytes of this hub's stream another hub may have undelivered.
pub(super) const WINDOW_BYTES: u64 = 16 * 1024 * 1024;
/// Room kept in a NATS message for its headers: a piece is cut to `max_payload` minus this.
const HEADER_ROOM: usize = 512;
/// Longest a publish may wait for the NATS client's own queue before the queue is shed.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest NATS may keep publishers held back (the queue full) before the queue is shed.
const HOLD_MAX: Duration = Duration::from_millis(500);
/// How often a waiting publish looks whether publishers have become held.
const HOLD_CHECK: Duration = Duration::from_millis(50);
/// How long the shed queue waits at a time for the NATS client to have written out all it took.
const RECOVERY_CHECK: Duration = Duration::from_millis(500);
/// How often a wait for credit looks again even if nothing was heard (a hub may have gone).
const CREDIT_RECHECK: Duration = Duration::from_millis(100);

/// A piece (or a publisher's end) waiting for the outbound task.
#[derive(Debug)]
struct Envelope {
    from: SessionId,
    status: Status,
    carried: Carried,
    frames: u32,
    bytes: Bytes,
    /// At a frame's start, the hubs chosen for its groups (boxed: most frames have none).
    choices: Option<Box<GroupChoices>>,
}

/// What publishers queued, and since when they are held back.
#[derive(Debug, Default)]
struct Queue {
    envelopes: VecDeque<Envelope>,
    held_since: Option<Instant>,
}

/// The queue between publishers and the outbound task, and the stream's position.
#[derive(Debug)]
pub(super) struct Outbound {
    queue: Mutex<Queue>,
    /// Whether NATS is not taking data: pieces are counted and dropped instead of queued.
    shedding: AtomicBool,
    backlog: Arc<Backlog>,
    wake: Notify,
    /// Messages published so far (the last sequence number).
    seq: AtomicU64,
    /// Bytes published so far.
    bytes: AtomicU64,
}

impl Outbound {
    pub(super) fn new() -> Outbound {
        Outbound {
            queue: Mutex::new(Queue::default()),
            shedding: AtomicBool::new(false),
            backlog: Backlog::new(QUEUE_HIGH),
            wake: Notify::new(),
            seq: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `piece` of publisher `from` (with the hubs chosen for its groups); holds the
    /// publisher back while the queue is full.
    pub(super) fn push(
        &self,
        from: SessionId,
        gate: &Arc<Gate>,
        piece: &Piece,
        choices: Option<GroupChoices>,
    ) {
        self.backlog.charge(piece.bytes.len() as u64);
        let full = {
            let mut queue = self.lock();
            queue.envelopes.push_back(Envelope {
                from,
                status: piece.status,
                carried: Carried::Piece(piece.kind),
                frames: piece.frames,
                bytes: piece.bytes.clone(),
                choices: choices.map(Box::new),
            });
            let full = self.backlog.is_full();
            if full {
                queue.held_since.get_or_insert_with(Instant::now);
            }
            full
        };
        self.wake.notify_one();
        if full {
            self.backlog.block(gate);
        }
    }

    /// Whether the queue is being shed: offered pieces are to be counted and dropped.
    pub(super) fn is_shedding(&self) -> bool {
        self.shedding.load(Ordering::Acquire)
    }

    /// Until when a publish begun at `began` may wait: [`PUBLISH_TIMEOUT`], or less while
    /// publishers are held.
    fn deadline(&self, began: Instant) -> Instant {
        let limit = began + PUBLISH_TIMEOUT;
        self.lock()
            .held_since
            .map_or(limit, |since| limit.min(since + HOLD_MAX))
    }

    /// The held publishers' wait restarts (it was for credit: a receiver's own pace).
    fn hold_restarts(&self) {
        if let Some(since) = self.lock().held_since.as_mut() {
            *since = Instant::now();
        }
    }

    /// Queues the end of publisher `from`.
    pub(super) fn push_gone(&self, from: SessionId) {
        self.lock().envelopes.push_back(Envelope {
            from,
            status: Status::PING,
            carried: Carried::Gone,
            frames: 0,
            bytes: Bytes::new(),
            choices: None,
        });
        self.wake.notify_one();
    }

    /// The stream's position: (last sequence number, bytes).
    pub(super) fn position(&self) -> (u64, u64) {
        (
            self.seq.load(Ordering::Acquire),
            self.bytes.load(Ordering::Acquire),
        )
    }

    async fn next(&self) -> Envelope {
        loop {
            if let Some(envelope) = self.lock().envelopes.pop_front() {
                return envelope;
            }
            self.wake.notified().await;
        }
    }

    fn is_empty(&self) -> bool {
        self.lock().envelopes.is_empty()
    }

    /// `len` bytes left the queue.
    fn discharge(&self, len: u64) {
        self.backlog.discharge(len);
        if self.backlog.pending() <= QUEUE_HIGH / 2 {
            self.lock().held_since = None;
        }
    }
}

/// Frames lost when a piece of `kind` ending `frames` frames cannot cross: a run loses its
/// frames, a first piece its frame, a later piece the frame only if that frame had begun to
/// cross (`begun`).
pub(super) fn frames_lost(kind: PieceKind, frames: u32, begun: bool) -> u64 {
    match kind {
        PieceKind::Whole => u64::from(frames.max(1)),
        PieceKind::First => 1,
        PieceKind::Middle | PieceKind::Last => u64::from(begun),
    }
}

/// The outbound task's own state.
struct Sender {
    cluster: Arc<Cluster>,
    client: async_nats::Client,
    /// The data subject of every code.
    subjects: Vec<Subject>,
    gone: Subject,
    /// Per publisher that has published: its stream's numbering.
    streams: HashMap<SessionId, Sending>,
}

/// The outbound task: publishes what publishers queue, in order, for as long as the hub runs.
pub(super) async fn run(cluster: Arc<Cluster>, client: async_nats::Client) {
    let subjects = (0..=Status::MAX)
        .filter_map(Status::new)
        .map(|status| Subject::from(cluster.subjects.data(status)))
        .collect();
    let gone = Subject::from(cluster.subjects.gone());
    let mut sender = Sender {
        cluster,
        client,
        subjects,
        gone,
        streams: HashMap::new(),
    };
    loop {
        let outbound = &sender.cluster.outbound;
        if outbound.is_shedding() && outbound.is_empty() {
            sender.recover().await;
        }
        let envelope = sender.cluster.outbound.next().await;
        let len = envelope.bytes.len() as u64;
        sender.send(envelope).await;
        sender.cluster.outbound.discharge(len);
    }
}

impl Sender {
    async fn send(&mut self, envelope: Envelope) {
        let from = envelope.from;
        let Carried::Piece(kind) = envelope.carried else {
            let seq = self.streams.remove(&from).unwrap_or_default().next();
            if self.cluster.is_connected() {
                let subject = self.gone.clone();
                let _ = self
                    .publish(
                        subject,
                        &envelope,
                        Carried::Gone,
                        0,
                        seq,
                        Bytes::new(),
                        None,
                    )
                    .await;
            }
            return;
        };
        let limit = self
            .cluster
            .max_payload
            .load(Ordering::Acquire)
            .saturating_sub(HEADER_ROOM)
            .max(HEADER_ROOM);
        let subject = self.subjects[usize::from(envelope.status.code())].clone();
        let mut choices = envelope.choices.as_deref();
        for (part, frames, bytes) in split(kind, envelope.frames, &envelope.bytes, limit) {
            // The choice travels with the frame's first message only.
            let choices = choices.take();
            let Some(seq) = self.streams.entry(from).or_default().plan(part) else {
                // The rest of a frame that could not cross: counted when it failed.
                continue;
            };
            let sent = !self.cluster.outbound.is_shedding()
                && self.wait_for_credit().await
                && self
                    .publish(
                        subject.clone(),
                        &envelope,
                        Carried::Piece(part),
                        frames,
                        seq,
                        bytes,
                        choices,
                    )
                    .await;
            let stream = self.streams.entry(from).or_default();
            if !sent {
                let begun = stream.failed(part);
                self.cluster
                    .count_dropped(frames_lost(kind, envelope.frames, begun));
                return;
            }
            stream.sent(part);
        }
    }

    /// Waits until every other hub has room for one more message; `false` if the link is down.
    async fn wait_for_credit(&self) -> bool {
        let window_open = || {
            let position = self.cluster.outbound.position();
            self.cluster
                .lock_peers()
                .has_credit(position, WINDOW_MESSAGES, WINDOW_BYTES)
        };
        if window_open() {
            return self.cluster.is_connected();
        }
        let mut changes = self.cluster.changes.subscribe();
        let open = loop {
            if !self.cluster.is_connected() {
                break false;
            }
            if window_open() {
                break true;
            }
            let _ = tokio::time::timeout(CREDIT_RECHECK, changes.changed()).await;
        };
        self.cluster.outbound.hold_restarts();
        open
    }

    /// The queue is shed and empty: waits until the NATS client has written out everything it
    /// took (the link drained, or reconnected), then crosses again.
    async fn recover(&self) {
        loop {
            let flushed = tokio::time::timeout(RECOVERY_CHECK, self.client.flush()).await;
            if matches!(flushed, Ok(Ok(()))) {
                self.cluster
                    .outbound
                    .shedding
                    .store(false, Ordering::Release);
                return info!(hub = %self.cluster.name, "NATS takes data again: crossing resumes");
            }
        }
    }

    /// Publishes one message of the stream; `false` if NATS did not take it.
    #[allow(clippy::too_many_arguments)]
    async fn publish(
        &self,
        subject: Subject,
        envelope: &Envelope,
        carried: Carried,
        frames: u32,
        publisher_seq: u64,
        bytes: Bytes,
        choices: Option<&GroupChoices>,
    ) -> bool {
        let outbound = &self.cluster.outbound;
        let len = bytes.len() as u64;
        let seq = outbound.seq.load(Ordering::Relaxed) + 1;
        let stream_bytes = outbound.bytes.load(Ordering::Relaxed) + len;
        let header = DataHeader {
            origin: self.cluster.instance,
            seq,
            stream_bytes,
            publisher: envelope.from.get(),
            publisher_seq,
            carried,
            frames,
        };
        let mut headers = HeaderMap::new();
        headers.insert(DATA_HEADER, header.to_string());
        if let Some(choices) = choices {
            headers.insert(GROUPS_HEADER, choices.to_string());
        }
        let publish = self.client.publish_with_headers(subject, headers, bytes);
        tokio::pin!(publish);
        // The deadline moves closer when publishers become held during the wait.
        let began = Instant::now();
        let published = loop {
            let deadline = outbound.deadline(began);
            let check = deadline.min(Instant::now() + HOLD_CHECK);
            match tokio::time::timeout_at(check, &mut publish).await {
                Ok(result) => break Ok(result),
                Err(elapsed) if Instant::now() >= deadline => break Err(elapsed),
                Err(_) => {}
            }
        };
        match published {
            Ok(Ok(())) => {
                outbound.seq.store(seq, Ordering::Release);
                outbound.bytes.store(stream_bytes, Ordering::Release);
                let counters = &self.cluster.counters;
                counters.messages_out.fetch_add(1, Ordering::Relaxed);
                counters.bytes_out.fetch_add(len, Ordering::Relaxed);
                true
            }
            Ok(Err(error)) => {
                debug!(%error, "publish to NATS failed");
                false
            }
            Err(_) => {
                outbound.shedding.store(true, Ordering::Release);
                warn!(hub = %self.cluster.name, "NATS is not taking data: frames for other hubs are dropped and counted until it does");
                false
            }
        }
    }
}

/// Cuts a piece into NATS-sized parts of at most `limit` bytes, each with its place in the
/// frame: a part that neither starts nor ends the frame is a `Middle`, and the frames ending in
/// the piece end in its last part.
fn split(
    kind: PieceKind,
    frames: u32,
    bytes: &Bytes,
    limit: usize,
) -> impl Iterator<Item = (PieceKind, u32, Bytes)> + '_ {
    let parts = bytes.len().div_ceil(limit).max(1);
    (0..parts).map(move |part| {
        let (first, last) = (part == 0, part + 1 == parts);
        let starts = first && kind.starts_frame();
        let ends = last && kind.ends_frame();
        let kind = match (starts, ends) {
            (true, true) => PieceKind::Whole,
            (true, false) => PieceKind::First,
            (false, true) => PieceKind::Last,
            (false, false) => PieceKind::Middle,
        };
        let end = ((part + 1) * limit).min(bytes.len());
        (
            kind,
            if last { frames } else { 0 },
            bytes.slice(part * limit..end),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(
        kind: PieceKind,
        frames: u32,
        len: usize,
        limit: usize,
    ) -> Vec<(PieceKind, u32, usize)> {
        let bytes = Bytes::from(vec![7; len]);
        split(kind, frames, &bytes, limit)
            .map(|(kind, frames, part)| (kind, frames, part.len()))
            .collect()
    }

    #[test]
    fn a_lost_piece_counts_the_frames_it_loses() {
        use PieceKind::*;
        assert_eq!(frames_lost(Whole, 7, false), 7);
        assert_eq!(frames_lost(Whole, 0, false), 1);
        assert_eq!(frames_lost(First, 0, false), 1);
        assert_eq!(frames_lost(Middle, 0, true), 1);
        assert_eq!(
            frames_lost(Last, 1, false),
            0,
            "its frame never began to cross"
        );
    }

    #[test]
    fn a_large_piece_is_cut_into_parts_of_its_frame() {
        use PieceKind::*;
        assert_eq!(kinds(Whole, 3, 10, 10), [(Whole, 3, 10)]);
        assert_eq!(
            kinds(Whole, 3, 25, 10),
            [(First, 0, 10), (Middle, 0, 10), (Last, 3, 5)]
        );
        assert_eq!(kinds(First, 0, 20, 10), [(First, 0, 10), (Middle, 0, 10)]);
        assert_eq!(kinds(Middle, 0, 11, 10), [(Middle, 0, 10), (Middle, 0, 1)]);
        assert_eq!(kinds(Last, 1, 11, 10), [(Middle, 0, 10), (Last, 1, 1)]);
        assert_eq!(kinds(Last, 1, 0, 10), [(Last, 1, 0)]);
    }
}
