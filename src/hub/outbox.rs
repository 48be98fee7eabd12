//! A session's outbound path: a queue of wire bytes drained by one writer task that owns the
//! socket's write half.
//!
//! The queue holds pieces of frames ([`Bytes`] shared with every other receiver of the frame) and
//! the session's own replies. Its size is counted in the session's [`Backlog`]: the router charges
//! relayed pieces before sending them, [`Outbox::reply`] charges replies, and the writer
//! discharges every byte it writes — which is also where blocked publishers are let go again.
//! Neither actix's mailbox nor `actix::io::FramedWrite` bound memory by themselves, so the count
//! is ours.
//!
//! A streamed frame may be on the wire for a long time; the session's own replies (control
//! answers, pings) wait for its end rather than land in the middle of it.
//!
//! Session and writer run on the same arbiter thread, hence `Rc`/`Cell`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::codec::FrameBuf;
use crate::hub::flow::Backlog;
use crate::hub::idle::{IdleTimer, SMALL_BUFFER};
use crate::hub::relay::PieceKind;
use crate::hub::router::OpenConnection;

/// Largest batch of queued pieces handed to one vectored write.
const WRITE_BATCH_BYTES: usize = 256 * 1024;

/// Slots the queue keeps once idle (a burst may have grown it far beyond).
const IDLE_QUEUE_SLOTS: usize = 4;

/// Most bytes of replies that may wait for the end of a streamed frame; a peer that sends more
/// commands than that meanwhile is closed.
pub(crate) const MAX_HELD_REPLY_BYTES: u64 = 1024 * 1024;

/// What the session and its writer share.
#[derive(Debug)]
struct Shared {
    /// Bytes to write, each with how many frames end in it.
    queue: RefCell<VecDeque<(Bytes, u32)>>,
    /// Wakes the writer when the queue gets bytes or the outbox closes.
    wake: Notify,
    /// Set when the session will queue nothing more.
    closed: Cell<bool>,
    /// Frames written to the socket.
    frames_out: Cell<u64>,
    /// Bytes written to the socket.
    bytes_out: Cell<u64>,
    /// When the writer last wrote a byte, or the queue last went from empty to busy.
    progress: Cell<Instant>,
}

/// The session's end of its outbound queue.
#[derive(Debug)]
pub(crate) struct Outbox {
    shared: Rc<Shared>,
    backlog: Arc<Backlog>,
    /// Whether a streamed frame has started on the wire and not ended.
    mid_frame: bool,
    /// Replies waiting for the streamed frame to end.
    held_replies: Vec<Bytes>,
    held_bytes: u64,
    /// Cancelled to stop writing at once (flush deadline, a frame that cannot be completed).
    abort: CancellationToken,
    /// Cancelled by the writer when it has ended, however it ended.
    done: CancellationToken,
}

/// Why a reply could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplyRefused {
    /// More than [`MAX_HELD_REPLY_BYTES`] wait for a streamed frame to end.
    TooManyHeld,
}

impl Outbox {
    /// Starts the writer task for `write` on the current arbiter. `open` is dropped, and so
    /// counted closed, when the writer ends.
    pub(crate) fn start(
        write: OwnedWriteHalf,
        backlog: Arc<Backlog>,
        open: OpenConnection,
    ) -> Outbox {
        let shared = Rc::new(Shared {
            queue: RefCell::new(VecDeque::new()),
            wake: Notify::new(),
            closed: Cell::new(false),
            frames_out: Cell::new(0),
            bytes_out: Cell::new(0),
            progress: Cell::new(Instant::now()),
        });
        let abort = CancellationToken::new();
        let done = CancellationToken::new();
        actix_rt::spawn(write_loop(
            write,
            shared.clone(),
            backlog.clone(),
            abort.clone(),
            done.clone(),
            open,
        ));
        Outbox {
            shared,
            backlog,
            mid_frame: false,
            held_replies: Vec::new(),
            held_bytes: 0,
            abort,
            done,
        }
    }

    /// Bytes queued (or on their way from the router) and not yet written.
    pub(crate) fn pending(&self) -> u64 {
        self.backlog.pending()
    }

    /// Frames written so far.
    pub(crate) fn frames_out(&self) -> u64 {
        self.shared.frames_out.get()
    }

    /// Bytes written so far.
    pub(crate) fn bytes_out(&self) -> u64 {
        self.shared.bytes_out.get()
    }

    /// Whether a streamed frame is partly written: nothing else may be written until it ends.
    pub(crate) fn is_mid_frame(&self) -> bool {
        self.mid_frame
    }

    /// How long the queue has had bytes without the writer writing any; zero when it is empty.
    pub(crate) fn stuck_for(&self) -> Duration {
        if self.pending() == 0 {
            return Duration::ZERO;
        }
        self.shared.progress.get().elapsed()
    }

    /// Queues a piece the router delivered (and charged).
    pub(crate) fn deliver(&mut self, bytes: Bytes, kind: PieceKind, frames: u32) {
        if self.shared.closed.get() {
            self.backlog.discharge(bytes.len() as u64);
            return;
        }
        self.enqueue(bytes, frames);
        match kind {
            PieceKind::First => self.mid_frame = true,
            PieceKind::Last => {
                self.mid_frame = false;
                self.held_bytes = 0;
                for reply in std::mem::take(&mut self.held_replies) {
                    self.enqueue(reply, 1);
                }
            }
            PieceKind::Whole | PieceKind::Middle => {}
        }
    }

    /// Queues one of the session's own frames, after the streamed frame on the wire if any.
    ///
    /// # Errors
    /// [`ReplyRefused::TooManyHeld`] when too many replies wait for a streamed frame to end.
    pub(crate) fn reply(&mut self, wire: Bytes) -> Result<(), ReplyRefused> {
        if self.shared.closed.get() {
            return Ok(());
        }
        let len = wire.len() as u64;
        self.backlog.charge(len);
        if self.mid_frame {
            self.held_bytes += len;
            self.held_replies.push(wire);
            if self.held_bytes > MAX_HELD_REPLY_BYTES {
                return Err(ReplyRefused::TooManyHeld);
            }
        } else {
            self.enqueue(wire, 1);
        }
        Ok(())
    }

    fn enqueue(&self, bytes: Bytes, frames: u32) {
        let mut queue = self.shared.queue.borrow_mut();
        if queue.is_empty() {
            self.shared.progress.set(Instant::now());
            self.shared.wake.notify_one();
        }
        queue.push_back((bytes, frames));
    }

    /// Lets the writer finish what is queued, within `deadline`, then close the socket.
    pub(crate) fn close(&mut self, deadline: Duration) {
        if self.shared.closed.replace(true) {
            return;
        }
        self.shared.wake.notify_one();
        let abort = self.abort.clone();
        let done = self.done.clone();
        actix_rt::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(deadline) => abort.cancel(),
                () = done.cancelled() => {}
            }
        });
    }

    /// Stops writing at once and closes the socket.
    pub(crate) fn abort(&mut self) {
        self.shared.closed.set(true);
        self.abort.cancel();
    }

    /// A token cancelled when the writer has ended (socket closed or failed).
    pub(crate) fn done(&self) -> CancellationToken {
        self.done.clone()
    }
}

/// Gives back what the last bursts left in the writer's buffer and queue.
fn release(buf: &mut FrameBuf, shared: &Shared) {
    *buf = FrameBuf::new();
    shared.queue.borrow_mut().shrink_to(IDLE_QUEUE_SLOTS);
}

/// The one owner of a session's write half.
async fn write_loop(
    mut write: OwnedWriteHalf,
    shared: Rc<Shared>,
    backlog: Arc<Backlog>,
    abort: CancellationToken,
    done: CancellationToken,
    open: OpenConnection,
) {
    let mut buf = FrameBuf::new();
    // The largest batch since the buffers were last given back (`crate::hub::idle`).
    let (mut largest, mut idle) = (0, IdleTimer::default());
    'writing: loop {
        let mut frames = 0;
        {
            let mut queue = shared.queue.borrow_mut();
            while buf.remaining() < WRITE_BATCH_BYTES {
                let Some((bytes, ended)) = queue.pop_front() else {
                    break;
                };
                buf.push_wire(&bytes);
                frames += u64::from(ended);
            }
        }
        if buf.is_empty() {
            if shared.closed.get() {
                // Everything queued has been written.
                tokio::select! {
                    _ = write.shutdown() => {}
                    () = abort.cancelled() => {}
                }
                break;
            }
            // Paused: small buffers go now, large ones if the pause lasts.
            if largest > SMALL_BUFFER {
                idle.arm();
            } else if largest > 0 {
                release(&mut buf, &shared);
                largest = 0;
            }
            tokio::select! {
                () = shared.wake.notified() => continue,
                () = idle.fired() => {
                    release(&mut buf, &shared);
                    largest = 0;
                    continue;
                }
                () = abort.cancelled() => break,
            }
        }
        largest = largest.max(buf.remaining());
        while buf.has_remaining() {
            let written = tokio::select! {
                written = write.write_buf(&mut buf) => written,
                () = abort.cancelled() => break 'writing,
            };
            match written {
                Ok(0) => break 'writing,
                Ok(n) => {
                    backlog.discharge(n as u64);
                    shared.progress.set(Instant::now());
                    shared.bytes_out.set(shared.bytes_out.get() + n as u64);
                }
                Err(error) => {
                    debug!(%error, "write failed");
                    break 'writing;
                }
            }
        }
        shared.frames_out.set(shared.frames_out.get() + frames);
    }
    // Nothing more will be written: whoever this subscriber held back goes on.
    backlog.release(true);
    drop(write);
    drop(open);
    done.cancel();
}
