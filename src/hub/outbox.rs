//! A session's outbound path: a queue of encoded frames drained by one writer task that owns the
//! socket's write half.
//!
//! The queue is a channel of [`Bytes`] (each one whole frame, shared with every other receiver
//! of that frame). Its memory is bounded by counting: [`Outbox::pending`] is the number of bytes
//! queued and not yet written, [`Outbox::waiting`] the part of them behind the frame being written,
//! and the session refuses to let that part grow past its limit. Neither actix's mailbox nor
//! `actix::io::FramedWrite` bound memory by themselves, so the count is ours.
//!
//! Session and writer run on the same arbiter thread, hence `Rc`/`Cell`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::codec::FrameBuf;
use crate::hub::router::OpenConnection;

/// Largest batch of queued frames handed to one vectored write.
const WRITE_BATCH_BYTES: usize = 256 * 1024;

/// Counters shared by a session and its writer.
#[derive(Debug, Default)]
pub(crate) struct OutboxCounters {
    /// Bytes queued and not yet written.
    pending: Cell<u64>,
    /// The length of each frame queued and not yet written, oldest (the one being written) first.
    unwritten: RefCell<VecDeque<u64>>,
    /// Frames written to the socket.
    frames_out: Cell<u64>,
    /// Bytes written to the socket.
    bytes_out: Cell<u64>,
}

/// The session's end of its outbound queue.
#[derive(Debug)]
pub(crate) struct Outbox {
    /// `None` once closed: the writer then finishes what is queued and shuts the socket down.
    queue: Option<mpsc::UnboundedSender<Bytes>>,
    counters: Rc<OutboxCounters>,
    /// Cancelled to stop writing at once (slow consumer, flush deadline, shutdown deadline).
    abort: CancellationToken,
    /// Cancelled by the writer when it has ended, however it ended.
    done: CancellationToken,
}

impl Outbox {
    /// Starts the writer task for `write` on the current arbiter.
    /// `open` is dropped, and so counted closed, when the writer ends.
    pub(crate) fn start(write: OwnedWriteHalf, open: OpenConnection) -> Outbox {
        let (queue, frames) = mpsc::unbounded_channel();
        let counters = Rc::new(OutboxCounters::default());
        let abort = CancellationToken::new();
        let done = CancellationToken::new();
        actix_rt::spawn(write_loop(
            write,
            frames,
            counters.clone(),
            abort.clone(),
            done.clone(),
            open,
        ));
        Outbox {
            queue: Some(queue),
            counters,
            abort,
            done,
        }
    }

    /// Bytes queued and not yet written.
    pub(crate) fn pending(&self) -> u64 {
        self.counters.pending.get()
    }

    /// Bytes queued behind the frame being written (the oldest unwritten one): what the
    /// session's pending limit bounds.
    pub(crate) fn waiting(&self) -> u64 {
        let head = self
            .counters
            .unwritten
            .borrow()
            .front()
            .copied()
            .unwrap_or(0);
        self.pending().saturating_sub(head)
    }

    /// Frames written so far.
    pub(crate) fn frames_out(&self) -> u64 {
        self.counters.frames_out.get()
    }

    /// Bytes written so far.
    pub(crate) fn bytes_out(&self) -> u64 {
        self.counters.bytes_out.get()
    }

    /// Queues one whole encoded frame. Returns false when the outbox is closed.
    pub(crate) fn push(&self, wire: Bytes) -> bool {
        let Some(queue) = &self.queue else {
            return false;
        };
        let len = wire.len() as u64;
        if queue.send(wire).is_err() {
            return false;
        }
        self.counters.pending.set(self.counters.pending.get() + len);
        self.counters.unwritten.borrow_mut().push_back(len);
        true
    }

    /// Lets the writer finish what is queued, within `deadline`, then close the socket.
    pub(crate) fn close(&mut self, deadline: Duration) {
        if self.queue.take().is_none() {
            return;
        }
        let abort = self.abort.clone();
        let done = self.done.clone();
        actix_rt::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(deadline) => abort.cancel(),
                () = done.cancelled() => {}
            }
        });
    }

    /// A token cancelled when the writer has ended (socket closed or failed).
    pub(crate) fn done(&self) -> CancellationToken {
        self.done.clone()
    }
}

/// The one owner of a session's write half.
async fn write_loop(
    mut write: OwnedWriteHalf,
    mut frames: mpsc::UnboundedReceiver<Bytes>,
    counters: Rc<OutboxCounters>,
    abort: CancellationToken,
    done: CancellationToken,
    open: OpenConnection,
) {
    let mut buf = FrameBuf::new();
    loop {
        let first = tokio::select! {
            first = frames.recv() => first,
            () = abort.cancelled() => break,
        };
        let Some(first) = first else {
            // Closed: everything queued has been written.
            tokio::select! {
                _ = write.shutdown() => {}
                () = abort.cancelled() => {}
            }
            break;
        };
        buf.push_wire(&first);
        let mut batch_frames = 1;
        while buf.remaining() < WRITE_BATCH_BYTES {
            match frames.try_recv() {
                Ok(wire) => {
                    buf.push_wire(&wire);
                    batch_frames += 1;
                }
                Err(_) => break,
            }
        }
        let batch_bytes = buf.remaining() as u64;
        let written = tokio::select! {
            written = write.write_all_buf(&mut buf) => written,
            () = abort.cancelled() => break,
        };
        if let Err(error) = written {
            debug!(%error, "write failed");
            break;
        }
        counters
            .pending
            .set(counters.pending.get().saturating_sub(batch_bytes));
        {
            let mut unwritten = counters.unwritten.borrow_mut();
            for _ in 0..batch_frames {
                unwritten.pop_front();
            }
        }
        counters
            .frames_out
            .set(counters.frames_out.get() + batch_frames);
        counters
            .bytes_out
            .set(counters.bytes_out.get() + batch_bytes);
    }
    drop(write);
    drop(open);
    done.cancel();
}
