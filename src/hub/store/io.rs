//! The I/O thread: the only writer of the logs. Publishers queue pieces ([`Queue::append`]) and
//! go on; the thread takes everything queued at once, writes it, syncs each touched log once
//! (group commit under `always`: many publishers share one `fdatasync`), then calls the ack
//! sinks in publication order. Between batches it saves dirty cursors, runs retention and, under
//! `interval=`, syncs on its timer.
//!
//! The queue is bounded in bytes by a [`Backlog`]: past [`QUEUE_HIGH`] the publisher that added
//! to it has its read gate closed until the thread has taken the queue down to half.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, warn};

use crate::hub::delivery::flow::{Backlog, Gate};
use crate::hub::delivery::relay::Piece;
use crate::hub::session::SessionId;
use crate::hub::store::cursors::CursorFile;
use crate::hub::store::retention;
use crate::hub::store::writer::{Ack, CodeWriter, WriteContext};
use crate::hub::store::{AckSink, StoreCounters, StoreSettings, SyncPolicy};

/// Bytes queued for the I/O thread past which publishers are held back.
pub(crate) const QUEUE_HIGH: u64 = 16 * 1024 * 1024;
/// How often retention looks at the age of the oldest frames when nothing is appended.
const RETENTION_TICK: Duration = Duration::from_secs(1);

/// Work for the I/O thread.
enum Op {
    Piece {
        from: SessionId,
        gate: Arc<Gate>,
        piece: Piece,
        ack: Option<AckSink>,
    },
    Abandon(SessionId),
}

#[derive(Default)]
struct Pending {
    ops: VecDeque<Op>,
    /// Cursors changed since the thread last saved them.
    cursors: bool,
    shutdown: bool,
}

/// The queue between publishers and the I/O thread.
pub(crate) struct Queue {
    pending: Mutex<Pending>,
    wake: Condvar,
    backlog: Arc<Backlog>,
}

impl Queue {
    pub(crate) fn new() -> Arc<Queue> {
        Arc::new(Queue {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            backlog: Backlog::new(QUEUE_HIGH),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, op: Op) {
        self.lock().ops.push_back(op);
        self.wake.notify_one();
    }

    /// Queues `piece`; holds the publisher back while the queue is over its bound.
    pub(crate) fn append(
        &self,
        from: SessionId,
        gate: &Arc<Gate>,
        piece: &Piece,
        ack: Option<AckSink>,
    ) {
        self.backlog.charge(piece.bytes.len() as u64);
        self.push(Op::Piece {
            from,
            gate: gate.clone(),
            piece: piece.clone(),
            ack,
        });
        if self.backlog.is_full() {
            self.backlog.block(gate);
        }
    }

    /// Queues the end of publisher `from`.
    pub(crate) fn abandon(&self, from: SessionId) {
        self.push(Op::Abandon(from));
    }

    /// Asks the thread to save the cursors.
    pub(crate) fn cursors_changed(&self) {
        self.lock().cursors = true;
        self.wake.notify_one();
    }

    /// Asks the thread to finish what is queued and stop.
    pub(crate) fn shut_down(&self) {
        self.lock().shutdown = true;
        self.wake.notify_one();
    }

    /// Everything queued, waiting up to `timeout` for something; with whether cursors changed
    /// and whether to stop.
    fn take(&self, timeout: Duration) -> (VecDeque<Op>, bool, bool) {
        let mut pending = self.lock();
        if pending.ops.is_empty() && !pending.cursors && !pending.shutdown {
            pending = self
                .wake
                .wait_timeout(pending, timeout)
                .map_or_else(|poisoned| poisoned.into_inner().0, |(guard, _)| guard);
        }
        let ops = std::mem::take(&mut pending.ops);
        let cursors = std::mem::take(&mut pending.cursors);
        (ops, cursors, pending.shutdown)
    }
}

/// Starts the I/O thread over the recovered `writers`.
pub(crate) fn spawn(
    settings: StoreSettings,
    writers: Vec<CodeWriter>,
    queue: Arc<Queue>,
    counters: Arc<StoreCounters>,
    cursors: CursorFile,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("tej-hub-store".into())
        .spawn(move || {
            let mut thread = IoThread {
                cx: WriteContext {
                    sync: settings.sync,
                    preallocate: settings.preallocate,
                    counters,
                },
                writers: {
                    let mut by_code: Vec<Option<CodeWriter>> = Vec::new();
                    by_code.resize_with(crate::frame::Status::COUNT, || None);
                    for writer in writers {
                        let code = usize::from(writer.status().code());
                        by_code[code] = Some(writer);
                    }
                    by_code
                },
                queue,
                cursors,
            };
            thread.run();
        })
}

struct IoThread {
    cx: WriteContext,
    writers: Vec<Option<CodeWriter>>,
    queue: Arc<Queue>,
    cursors: CursorFile,
}

impl IoThread {
    fn run(&mut self) {
        let mut last_sync = Instant::now();
        let mut last_retention = Instant::now();
        loop {
            let timeout = match self.cx.sync {
                SyncPolicy::Interval(every) => every.min(RETENTION_TICK),
                _ => RETENTION_TICK,
            };
            let (ops, cursors, shutdown) = self.queue.take(timeout);
            if !ops.is_empty() {
                self.batch(ops);
            }
            if cursors {
                self.save_cursors();
            }
            if let SyncPolicy::Interval(every) = self.cx.sync {
                if last_sync.elapsed() >= every || shutdown {
                    self.sync_all();
                    last_sync = Instant::now();
                }
            }
            if last_retention.elapsed() >= RETENTION_TICK {
                self.retention();
                last_retention = Instant::now();
            }
            if shutdown && self.queue.lock().ops.is_empty() {
                if self.cx.sync != SyncPolicy::Always {
                    self.sync_all();
                }
                self.save_cursors();
                debug!("store I/O thread stopped");
                return;
            }
        }
    }

    /// Writes `ops`, commits every touched log, then delivers the acknowledgements.
    fn batch(&mut self, ops: VecDeque<Op>) {
        let cx = &self.cx;
        let mut acks: Vec<Ack> = Vec::new();
        let mut touched = [false; crate::frame::Status::COUNT];
        let mut taken = 0u64;
        for op in ops {
            match op {
                Op::Piece {
                    from,
                    gate,
                    piece,
                    ack,
                } => {
                    let code = usize::from(piece.status.code());
                    taken += piece.bytes.len() as u64;
                    match self.writers.get_mut(code).and_then(Option::as_mut) {
                        Some(writer) => {
                            touched[code] = true;
                            writer.offer(from, &gate, piece, ack, &mut acks, cx);
                        }
                        None => warn!(code, "a piece for a code that is not durable"),
                    }
                }
                Op::Abandon(from) => {
                    for (code, writer) in self.writers.iter_mut().enumerate() {
                        if let Some(writer) = writer {
                            writer.abandon(from, &mut acks, cx);
                            touched[code] = true;
                        }
                    }
                }
            }
        }
        // The queue's bytes are in the logs (or waiting per code): publishers may go on.
        self.queue.backlog.discharge(taken);
        let (mut frames, mut bytes) = (0, 0);
        for (code, writer) in self.writers.iter_mut().enumerate() {
            if let (true, Some(writer)) = (touched[code], writer.as_mut()) {
                let (f, b) = writer.commit(cx);
                frames += f;
                bytes += b;
            }
        }
        StoreCounters::add(&cx.counters.batches, 1);
        StoreCounters::add(&cx.counters.frames, frames);
        StoreCounters::add(&cx.counters.bytes, bytes);
        // Before the acknowledgements: once a frame is acknowledged, its code is within limits.
        let now = SystemTime::now();
        for (code, writer) in self.writers.iter_mut().enumerate() {
            if let (true, Some(writer)) = (touched[code], writer.as_mut()) {
                retention::enforce(writer, now, cx);
            }
        }
        for ack in &mut acks {
            let Ok(seq) = ack.outcome else { continue };
            let code = usize::from(ack.status.code());
            let Some(writer) = self.writers.get(code).and_then(Option::as_ref) else {
                continue;
            };
            if let Some(refused) = writer.refused(seq) {
                writer.count_refusal(refused, cx);
                ack.outcome = Err(refused.clone());
            }
        }
        Ack::deliver_all(acks);
        for writer in self.writers.iter_mut().flatten() {
            writer.end_batch();
        }
    }

    fn sync_all(&mut self) {
        let cx = &self.cx;
        for writer in self.writers.iter_mut().flatten() {
            writer.sync(cx);
        }
    }

    fn retention(&mut self) {
        let cx = &self.cx;
        let now = SystemTime::now();
        for writer in self.writers.iter_mut().flatten() {
            retention::enforce(writer, now, cx);
        }
    }

    fn save_cursors(&mut self) {
        let durable = self.cx.sync != SyncPolicy::Os;
        if let Err(error) = self.cursors.save(durable) {
            warn!(%error, "cannot save the durable cursors");
        }
    }
}
