//! [`CodeWriter`]: the I/O thread's side of one code's log — appending records, streamed frames
//! written as they arrive, rolling segments, committing (group commit) and rolling back what a
//! failed write or sync leaves.
//!
//! Records are contiguous in a segment, so while a publisher streams a frame into the log (it
//! *owns* the tail), other publishers' pieces for the code wait in memory, in order; past
//! [`WAIT_HIGH`] bytes their publishers' gates are closed until the stream ends. Sequence numbers
//! follow the order in which frames are completed.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use tracing::{debug, warn};

use crate::codec::Limits;
use crate::frame::Status;
use crate::hub::delivery::flow::Gate;
use crate::hub::delivery::relay::{Piece, PieceKind};
use crate::hub::ops::counters::worth_a_line;
use crate::hub::session::SessionId;
use crate::hub::store::index::{self, IndexEntry, INTERVAL};
use crate::hub::store::log::{CodeShared, SegmentView};
use crate::hub::store::record::{unix_nanos, RecordHeader, HEADER_LEN};
use crate::hub::store::segment;
use crate::hub::store::stage::{announced_len, Stages};
use crate::hub::store::{
    AckSink, CodeLimits, Discard, Outcome, StoreCounters, StoreRefused, Stored, SyncPolicy,
};
use crate::scan::Scanner;

/// Bytes of other publishers' pieces a code holds while a stream owns its tail, past which
/// their publishers are held back.
pub(crate) const WAIT_HIGH: u64 = 4 * 1024 * 1024;
/// Records are gathered in a buffer and written together up to this size; larger frames are
/// written straight from their bytes.
const BUFFER: usize = 1024 * 1024;
/// Bytes written to a segment after which the kernel is asked to start writing them to disk,
/// while the batch goes on: the commit's `fdatasync` then finds most of them on their way.
const WRITEBACK_STEP: u64 = 1024 * 1024;

/// The outcome of one frame, delivered to its sink after the batch's commit.
pub(crate) struct Ack {
    pub sink: Option<AckSink>,
    pub status: Status,
    pub outcome: Result<u64, StoreRefused>,
}

impl Ack {
    /// Hands each outcome to its sink: one call per sink, its outcomes in order.
    pub(crate) fn deliver_all(acks: Vec<Ack>) {
        let mut by_sink: Vec<(AckSink, Vec<Outcome>)> = Vec::new();
        for ack in acks {
            let Some(sink) = ack.sink else { continue };
            let status = ack.status;
            let outcome = ack.outcome.map(|seq| Stored { status, seq });
            match by_sink
                .iter_mut()
                .find(|(known, _)| Arc::ptr_eq(known, &sink))
            {
                Some((_, outcomes)) => outcomes.push(outcome),
                None => by_sink.push((sink, vec![outcome])),
            }
        }
        for (sink, outcomes) in by_sink {
            sink(&outcomes);
        }
    }
}

/// What the writer needs from the store's settings.
#[derive(Clone, Debug)]
pub(crate) struct WriteContext {
    pub sync: SyncPolicy,
    pub preallocate: bool,
    pub counters: Arc<StoreCounters>,
}

/// The segment being appended to.
#[derive(Debug)]
struct Active {
    first_seq: u64,
    path: PathBuf,
    file: File,
    idx: File,
    /// Bytes written (committed or not).
    len: u64,
    frames: u64,
    first_time: u64,
    last_time: u64,
    index: Vec<IndexEntry>,
    /// Entries already in the `.idx` file.
    index_written: usize,
    /// Entries already shown to readers.
    index_published: usize,
}

/// What readers may see of the active segment (and what a rollback returns to).
#[derive(Clone, Copy, Debug)]
struct Mark {
    len: u64,
    next_seq: u64,
    frames: u64,
    last_time: u64,
    index_len: usize,
}

/// A streamed frame being written at the tail.
#[derive(Debug)]
struct Stream {
    from: SessionId,
    /// Where its record starts.
    start: u64,
    /// Frame bytes written so far.
    written: u64,
    crc: u32,
    /// Why it will be refused at its end (its bytes are no longer on disk).
    failed: Option<StoreRefused>,
}

/// A piece waiting for the code's tail.
struct Waiting {
    from: SessionId,
    piece: Piece,
    ack: Option<AckSink>,
}

/// One code's log as the I/O thread writes it.
pub(crate) struct CodeWriter {
    status: Status,
    dir: PathBuf,
    limits: CodeLimits,
    max_frame: u64,
    shared: Arc<CodeShared>,
    /// Sealed segments, oldest first (their index is not kept here).
    sealed: VecDeque<SegmentView>,
    active: Active,
    next_seq: u64,
    committed: Mark,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    buf_at: u64,
    stream: Option<Stream>,
    /// Small streamed frames gathered until whole.
    stages: Stages,
    waiting: VecDeque<Waiting>,
    waiting_bytes: u64,
    held: Vec<(SessionId, Arc<Gate>)>,
    /// This batch failed from this sequence number on, for this reason.
    failure: Option<(u64, StoreRefused)>,
    /// Segments sealed since the last publish, in their final form.
    rolled: Vec<SegmentView>,
    /// Bytes written since the last sync.
    unsynced: bool,
    /// Offset in the active segment up to which writeback has been started.
    writeback_at: u64,
    /// Frames and frame bytes written since the last commit point (a commit or a roll).
    pending: (u64, u64),
    /// Frames and frame bytes committed in this batch, for the counters.
    batch: (u64, u64),
}

impl CodeWriter {
    /// A writer for a recovered log: `sealed` segments and the active one (last), its file open.
    pub(crate) fn new(
        status: Status,
        dir: PathBuf,
        limits: CodeLimits,
        mut segments: Vec<SegmentView>,
        file: File,
        idx: File,
    ) -> CodeWriter {
        let shared = Arc::new(CodeShared::new(status, segments.clone()));
        let last = segments.pop().unwrap_or_else(|| SegmentView {
            first_seq: 1,
            next_seq: 1,
            len: 0,
            path: segment::log_path(&dir, 1),
            index: Vec::new(),
            first_time: 0,
            last_time: 0,
        });
        let frames = last.frames();
        let index_len = last.index.len();
        let committed = Mark {
            len: last.len,
            next_seq: last.next_seq,
            frames,
            last_time: last.last_time,
            index_len,
        };
        let max_frame = limits.max_frame_bytes.unwrap_or(u64::MAX);
        CodeWriter {
            status,
            dir,
            max_frame,
            limits,
            shared,
            sealed: segments
                .into_iter()
                .map(|mut segment| {
                    segment.index = Vec::new();
                    segment
                })
                .collect(),
            next_seq: last.next_seq,
            active: Active {
                first_seq: last.first_seq,
                path: last.path,
                file,
                idx,
                len: last.len,
                frames,
                first_time: last.first_time,
                last_time: last.last_time,
                index: last.index,
                index_written: index_len,
                index_published: index_len,
            },
            committed,
            buf: Vec::new(),
            buf_at: last.len,
            stream: None,
            stages: Stages::default(),
            waiting: VecDeque::new(),
            waiting_bytes: 0,
            held: Vec::new(),
            failure: None,
            rolled: Vec::new(),
            unsynced: false,
            writeback_at: 0,
            pending: (0, 0),
            batch: (0, 0),
        }
    }

    /// What readers see.
    pub(crate) fn shared(&self) -> &Arc<CodeShared> {
        &self.shared
    }

    /// The code.
    pub(crate) fn status(&self) -> Status {
        self.status
    }

    /// The code's limits.
    pub(crate) fn limits(&self) -> &CodeLimits {
        &self.limits
    }

    /// Bytes kept (sealed segments and everything written to the active one).
    pub(crate) fn total_bytes(&self) -> u64 {
        self.sealed.iter().map(|s| s.len).sum::<u64>() + self.active.len
    }

    /// Frames kept.
    pub(crate) fn total_frames(&self) -> u64 {
        self.sealed.iter().map(SegmentView::frames).sum::<u64>() + self.active.frames
    }

    /// A piece from publisher `from`: gathered while its small frame is incomplete (`stage`),
    /// written now, or kept waiting while another publisher's streamed frame owns the tail.
    pub(crate) fn offer(
        &mut self,
        from: SessionId,
        gate: &Arc<Gate>,
        piece: Piece,
        ack: Option<AckSink>,
        acks: &mut Vec<Ack>,
        cx: &WriteContext,
    ) {
        let may_start = !self.waiting.iter().any(|waiting| waiting.from == from);
        for piece in self.stages.take(from, piece, may_start) {
            self.place(from, gate, piece, ack.clone(), acks, cx);
        }
        self.start_writeback(cx);
    }

    /// Writes `piece` now, or keeps it waiting while another publisher's streamed frame owns
    /// the tail.
    fn place(
        &mut self,
        from: SessionId,
        gate: &Arc<Gate>,
        piece: Piece,
        ack: Option<AckSink>,
        acks: &mut Vec<Ack>,
        cx: &WriteContext,
    ) {
        let owner = self.stream.as_ref().map(|stream| stream.from);
        if owner == Some(from) || (owner.is_none() && self.waiting.is_empty()) {
            self.apply(from, piece, ack, acks, cx);
            self.drain_waiting(acks, cx);
            self.free_owner();
            return;
        }
        self.waiting_bytes += piece.bytes.len() as u64;
        if self.waiting_bytes > WAIT_HIGH && !self.held.iter().any(|(held, _)| *held == from) {
            gate.close();
            self.held.push((from, gate.clone()));
        }
        self.waiting.push_back(Waiting { from, piece, ack });
    }

    /// Publisher `from` went away: its streamed frame (if it owns the tail) is cut off, and its
    /// waiting pieces of an unfinished frame dropped.
    pub(crate) fn abandon(&mut self, from: SessionId, acks: &mut Vec<Ack>, cx: &WriteContext) {
        if self.stages.abandon(from) {
            StoreCounters::add(&cx.counters.abandoned, 1);
            debug!(code = self.status.code(), session = %from, "staged frame abandoned");
        }
        if self
            .stream
            .as_ref()
            .is_some_and(|stream| stream.from == from)
        {
            if let Some(stream) = self.stream.take() {
                self.truncate(stream.start);
                StoreCounters::add(&cx.counters.abandoned, 1);
                debug!(code = self.status.code(), session = %from, "streamed frame abandoned");
            }
        }
        // Its waiting whole frames stand; a frame it had begun to stream does not.
        let mut streaming = false;
        let before = self.waiting.len();
        let mut dropped = 0;
        self.waiting.retain(|waiting| {
            if waiting.from != from {
                return true;
            }
            match waiting.piece.kind {
                PieceKind::Whole => !streaming,
                PieceKind::First => {
                    streaming = true;
                    dropped += 1;
                    false
                }
                PieceKind::Middle => {
                    streaming = true;
                    false
                }
                PieceKind::Last => {
                    streaming = false;
                    false
                }
            }
        });
        StoreCounters::add(&cx.counters.abandoned, dropped);
        if before != self.waiting.len() {
            self.recount_waiting();
        }
        self.drain_waiting(acks, cx);
    }

    fn recount_waiting(&mut self) {
        self.waiting_bytes = self
            .waiting
            .iter()
            .map(|waiting| waiting.piece.bytes.len() as u64)
            .sum();
        if self.waiting_bytes <= WAIT_HIGH / 2 {
            for (_, gate) in self.held.drain(..) {
                gate.open();
            }
        }
    }

    /// Opens the gate of the publisher that owns the tail, if its pieces were held back while
    /// another one did: it must be able to finish its frame, or every publisher waits for it
    /// (found with four publishers streaming 1 MiB frames at once: the hub stopped reading).
    fn free_owner(&mut self) {
        let Some(owner) = self.stream.as_ref().map(|stream| stream.from) else {
            return;
        };
        self.held.retain(|(from, gate)| {
            if *from == owner {
                gate.open();
                return false;
            }
            true
        });
    }

    /// Writes the waiting pieces that may go now, in order, until none can.
    fn drain_waiting(&mut self, acks: &mut Vec<Ack>, cx: &WriteContext) {
        if self.waiting.is_empty() {
            return;
        }
        loop {
            let mut progressed = false;
            let mut kept = VecDeque::with_capacity(self.waiting.len());
            // Publishers with a piece kept in this pass: their later pieces stay behind it (a
            // publisher's pieces are applied in its order, or a frame would lose a middle piece,
            // or end before it began).
            let mut behind: Vec<SessionId> = Vec::new();
            while let Some(waiting) = self.waiting.pop_front() {
                let owner = self.stream.as_ref().map(|stream| stream.from);
                let free = owner.is_none() || owner == Some(waiting.from);
                if free && !behind.contains(&waiting.from) {
                    self.apply(waiting.from, waiting.piece, waiting.ack, acks, cx);
                    progressed = true;
                } else {
                    if !behind.contains(&waiting.from) {
                        behind.push(waiting.from);
                    }
                    kept.push_back(waiting);
                }
            }
            self.waiting = kept;
            if !progressed || self.waiting.is_empty() {
                break;
            }
        }
        self.recount_waiting();
        self.free_owner();
    }

    fn apply(
        &mut self,
        from: SessionId,
        piece: Piece,
        ack: Option<AckSink>,
        acks: &mut Vec<Ack>,
        cx: &WriteContext,
    ) {
        match piece.kind {
            PieceKind::Whole => {
                let mut scanner = Scanner::new(Limits::frame_only(u64::MAX));
                let mut rest = piece.bytes;
                let mut frames = 0u32;
                while !rest.is_empty() {
                    let Some(len) = frame_len(&mut scanner, &rest) else {
                        warn!(
                            code = self.status.code(),
                            bytes = rest.len(),
                            "a stored piece is not whole frames"
                        );
                        acks.push(self.refusal(
                            ack.clone(),
                            StoreRefused::Malformed {
                                status: self.status,
                            },
                        ));
                        break;
                    };
                    let frame = rest.split_to(len);
                    self.append_frame(&frame, ack.clone(), acks, cx);
                    frames += 1;
                }
                if frames == 0 && piece.frames > 0 {
                    acks.push(self.refusal(
                        ack,
                        StoreRefused::Malformed {
                            status: self.status,
                        },
                    ));
                }
            }
            PieceKind::First => self.start_stream(from, &piece.bytes, cx),
            PieceKind::Middle => self.continue_stream(from, &piece.bytes),
            PieceKind::Last => {
                self.continue_stream(from, &piece.bytes);
                self.finish_stream(from, ack, acks, cx);
            }
        }
    }

    fn refusal(&self, sink: Option<AckSink>, refused: StoreRefused) -> Ack {
        Ack {
            sink,
            status: self.status,
            outcome: Err(refused),
        }
    }

    /// The refusal of a frame of `len` bytes by the code's limits, if any.
    fn over_limits(&self, len: u64) -> Option<StoreRefused> {
        if len > self.max_frame {
            return Some(StoreRefused::FrameTooLarge {
                status: self.status,
                len,
                max: self.max_frame,
            });
        }
        if self.limits.discard == Discard::New {
            let record = len + HEADER_LEN as u64;
            let over_bytes = self
                .limits
                .max_bytes
                .is_some_and(|max| self.total_bytes() + record > max);
            let over_frames = self
                .limits
                .max_frames
                .is_some_and(|max| self.total_frames() >= max);
            if over_bytes || over_frames {
                return Some(StoreRefused::StoreFull {
                    status: self.status,
                });
            }
        }
        None
    }

    /// Counts a refusal and logs the first and then each doubling.
    pub(crate) fn count_refusal(&self, refused: &StoreRefused, cx: &WriteContext) {
        let counter = match refused {
            StoreRefused::StoreFull { .. } => &cx.counters.refused_full,
            StoreRefused::FrameTooLarge { .. } => &cx.counters.refused_too_large,
            StoreRefused::Io { .. } | StoreRefused::Malformed { .. } => &cx.counters.io_errors,
        };
        let before = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if worth_a_line(before, 1) {
            warn!(code = self.status.code(), refused = %refused, count = before + 1, "frame not stored");
        }
    }

    /// The next record's timestamp: now, but never before the previous record's.
    fn now(&self) -> u64 {
        unix_nanos(SystemTime::now()).max(self.active.last_time)
    }

    /// Whether a record of `record` bytes needs a fresh segment first.
    fn needs_roll(&self, record: u64) -> bool {
        self.active.len > 0
            && (self.active.len.saturating_add(record) > self.limits.roll_bytes()
                || self.active.frames >= self.limits.roll_frames())
    }

    fn append_frame(
        &mut self,
        frame: &[u8],
        sink: Option<AckSink>,
        acks: &mut Vec<Ack>,
        cx: &WriteContext,
    ) {
        let len = frame.len() as u64;
        let refused = self
            .failure
            .as_ref()
            .map(|(_, refused)| refused.clone())
            .or_else(|| self.over_limits(len));
        if let Some(refused) = refused {
            self.count_refusal(&refused, cx);
            acks.push(self.refusal(sink, refused));
            return;
        }
        let record = len + HEADER_LEN as u64;
        if self.needs_roll(record) {
            if let Err(error) = self.roll(cx) {
                let refused = self.fail(&error);
                self.count_refusal(&refused, cx);
                acks.push(self.refusal(sink, refused));
                return;
            }
        }
        let seq = self.next_seq;
        let header = RecordHeader {
            seq,
            timestamp: self.now(),
            len,
            frame_crc: crc32c::crc32c(frame),
        };
        let offset = self.active.len;
        let written = if frame.len() >= BUFFER {
            self.flush()
                .and_then(|()| self.active.file.write_all_at(&header.encode(), offset))
                .and_then(|()| {
                    self.active
                        .file
                        .write_all_at(frame, offset + HEADER_LEN as u64)
                })
        } else {
            if self.buf.len() + record as usize > BUFFER {
                if let Err(error) = self.flush() {
                    let refused = self.fail(&error);
                    self.count_refusal(&refused, cx);
                    acks.push(self.refusal(sink, refused));
                    return;
                }
            }
            if self.buf.is_empty() {
                self.buf_at = offset;
            }
            self.buf.extend_from_slice(&header.encode());
            self.buf.extend_from_slice(frame);
            Ok(())
        };
        if let Err(error) = written {
            let refused = self.fail(&error);
            self.count_refusal(&refused, cx);
            acks.push(self.refusal(sink, refused));
            return;
        }
        self.recorded(header, offset);
        acks.push(Ack {
            sink,
            status: self.status,
            outcome: Ok(seq),
        });
    }

    /// A record of `header` now sits at `offset` of the active segment.
    fn recorded(&mut self, header: RecordHeader, offset: u64) {
        let active = &mut self.active;
        if active
            .index
            .last()
            .map_or(true, |last| offset - last.offset >= INTERVAL)
        {
            active.index.push(IndexEntry {
                seq: header.seq,
                offset,
                timestamp: header.timestamp,
            });
        }
        if active.frames == 0 {
            active.first_time = header.timestamp;
        }
        active.len = offset + header.record_len();
        active.frames += 1;
        active.last_time = header.timestamp;
        self.next_seq = header.seq + 1;
        self.unsynced = true;
        self.pending.0 += 1;
        self.pending.1 += header.len;
    }

    fn start_stream(&mut self, from: SessionId, bytes: &Bytes, cx: &WriteContext) {
        let announced = announced_len(bytes);
        let mut failed = self
            .failure
            .as_ref()
            .map(|(_, refused)| refused.clone())
            .or_else(|| self.over_limits(announced));
        if failed.is_none() && self.needs_roll(announced + HEADER_LEN as u64) {
            if let Err(error) = self.roll(cx) {
                failed = Some(self.fail(&error));
            }
        }
        let start = self.active.len;
        if failed.is_none() {
            let written = self
                .flush()
                .and_then(|()| self.active.file.write_all_at(&[0; HEADER_LEN], start))
                .and_then(|()| {
                    self.active
                        .file
                        .write_all_at(bytes, start + HEADER_LEN as u64)
                });
            match written {
                Ok(()) => {
                    self.active.len = start + HEADER_LEN as u64 + bytes.len() as u64;
                    self.unsynced = true;
                }
                Err(error) => failed = Some(self.fail(&error)),
            }
        }
        self.stream = Some(Stream {
            from,
            start,
            written: bytes.len() as u64,
            crc: crc32c::crc32c(bytes),
            failed,
        });
    }

    fn continue_stream(&mut self, from: SessionId, bytes: &Bytes) {
        let Some(stream) = self.stream.as_ref().filter(|stream| stream.from == from) else {
            return;
        };
        if stream.failed.is_some() || bytes.is_empty() {
            return;
        }
        let written = stream.written + bytes.len() as u64;
        let start = stream.start;
        // The code's own limits were checked at the frame's start and are again at its end.
        let refused = self
            .failure
            .as_ref()
            .map(|(_, refused)| refused.clone())
            .or_else(|| {
                (written > self.max_frame).then_some(StoreRefused::FrameTooLarge {
                    status: self.status,
                    len: written,
                    max: self.max_frame,
                })
            });
        let refused = match refused {
            Some(refused) => {
                self.truncate(start);
                Some(refused)
            }
            None => match self.active.file.write_all_at(bytes, self.active.len) {
                Ok(()) => {
                    self.active.len += bytes.len() as u64;
                    self.unsynced = true;
                    None
                }
                Err(error) => Some(self.fail(&error)),
            },
        };
        if let Some(stream) = self.stream.as_mut() {
            stream.written = written;
            stream.crc = crc32c::crc32c_append(stream.crc, bytes);
            stream.failed = stream.failed.take().or(refused);
        }
    }

    fn finish_stream(
        &mut self,
        from: SessionId,
        sink: Option<AckSink>,
        acks: &mut Vec<Ack>,
        cx: &WriteContext,
    ) {
        let Some(stream) = self.stream.take_if(|stream| stream.from == from) else {
            acks.push(self.refusal(
                sink,
                StoreRefused::Malformed {
                    status: self.status,
                },
            ));
            return;
        };
        let over = self.limits.discard == Discard::New
            && self
                .limits
                .max_bytes
                .is_some_and(|max| self.total_bytes() > max);
        let failed = stream.failed.or_else(|| {
            over.then(|| {
                self.truncate(stream.start);
                StoreRefused::StoreFull {
                    status: self.status,
                }
            })
        });
        if let Some(refused) = failed {
            self.count_refusal(&refused, cx);
            acks.push(self.refusal(sink, refused));
            return;
        }
        let header = RecordHeader {
            seq: self.next_seq,
            timestamp: self.now(),
            len: stream.written,
            frame_crc: stream.crc,
        };
        // The header goes in last: until then the record cannot be mistaken for a whole one.
        if let Err(error) = self
            .active
            .file
            .write_all_at(&header.encode(), stream.start)
        {
            let refused = self.fail(&error);
            self.count_refusal(&refused, cx);
            acks.push(self.refusal(sink, refused));
            return;
        }
        self.recorded(header, stream.start);
        acks.push(Ack {
            sink,
            status: self.status,
            outcome: Ok(header.seq),
        });
    }

    /// Under `always` and `interval=`, asks the kernel to start writing what is written to the
    /// active segment once a step of it has gathered (`sync_file_range`, a hint: the commit's
    /// `fdatasync` still decides what is stored).
    fn start_writeback(&mut self, cx: &WriteContext) {
        let written = if self.buf.is_empty() {
            self.active.len
        } else {
            self.buf_at
        };
        if cx.sync == SyncPolicy::Os || written < self.writeback_at + WRITEBACK_STEP {
            return;
        }
        let (Ok(from), Ok(len)) = (
            i64::try_from(self.writeback_at),
            i64::try_from(written - self.writeback_at),
        ) else {
            return;
        };
        // SAFETY: `sync_file_range` only reads its integer arguments; the descriptor is the
        // active segment's, open for as long as `self.active` lives.
        let started = unsafe {
            libc::sync_file_range(
                self.active.file.as_raw_fd(),
                from,
                len,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        if started == 0 {
            self.writeback_at = written;
        }
    }

    /// Writes the gathered records.
    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let written = self.active.file.write_all_at(&self.buf, self.buf_at);
        self.buf.clear();
        written
    }

    /// Cuts the active segment back to `len` bytes (a dropped streamed frame).
    fn truncate(&mut self, len: u64) {
        self.buf.clear();
        if let Err(error) = self.active.file.set_len(len) {
            warn!(code = self.status.code(), %error, "cannot cut a dropped frame from the log");
        }
        self.active.len = len;
        self.writeback_at = self.writeback_at.min(len);
    }

    /// A write or sync failed: everything since the last commit is rolled back and refused.
    fn fail(&mut self, error: &std::io::Error) -> StoreRefused {
        let refused = refusal_for(self.status, error);
        warn!(code = self.status.code(), %error, "store write failed; the batch is rolled back");
        let mark = self.committed;
        self.truncate(mark.len);
        self.active.frames = mark.frames;
        self.active.last_time = mark.last_time;
        self.active.index.truncate(mark.index_len);
        self.next_seq = mark.next_seq;
        self.pending = (0, 0);
        if let Some(stream) = self.stream.as_mut() {
            stream.failed.get_or_insert(refused.clone());
        }
        self.failure.get_or_insert((mark.next_seq, refused.clone()));
        refused
    }

    /// Seals the active segment (synced unless the policy is `os`) and starts the next at
    /// `next_seq`.
    fn roll(&mut self, cx: &WriteContext) -> std::io::Result<()> {
        self.flush()?;
        if cx.sync != SyncPolicy::Os {
            rustix::fs::fdatasync(&self.active.file)?;
            StoreCounters::add(&cx.counters.syncs, 1);
        }
        self.write_index();
        let first_seq = self.next_seq;
        let (file, idx, path) = create_segment(&self.dir, first_seq, &self.limits, cx)?;
        let old = std::mem::replace(
            &mut self.active,
            Active {
                first_seq,
                path,
                file,
                idx,
                len: 0,
                frames: 0,
                first_time: 0,
                last_time: 0,
                index: Vec::new(),
                index_written: 0,
                index_published: 0,
            },
        );
        let sealed = SegmentView {
            first_seq: old.first_seq,
            next_seq: first_seq,
            len: old.len,
            path: old.path,
            index: old.index,
            first_time: old.first_time,
            last_time: old.last_time,
        };
        self.active.last_time = sealed.last_time;
        self.rolled.push(sealed.clone());
        self.sealed.push_back(SegmentView {
            index: Vec::new(),
            ..sealed
        });
        self.committed = Mark {
            len: 0,
            next_seq: first_seq,
            frames: 0,
            last_time: self.active.last_time,
            index_len: 0,
        };
        self.buf_at = 0;
        self.writeback_at = 0;
        self.unsynced = false;
        self.batch.0 += std::mem::take(&mut self.pending.0);
        self.batch.1 += std::mem::take(&mut self.pending.1);
        Ok(())
    }

    /// Appends the index entries not yet in the `.idx` file (a hint: not synced, errors logged).
    fn write_index(&mut self) {
        let active = &mut self.active;
        let upto = active.index.len();
        if upto <= active.index_written {
            return;
        }
        let bytes = index::encode_all(&active.index[active.index_written..upto]);
        let at = (active.index_written * index::ENTRY_LEN) as u64;
        match active.idx.write_all_at(&bytes, at) {
            Ok(()) => active.index_written = upto,
            Err(error) => debug!(code = self.status.code(), %error, "cannot write the index"),
        }
    }

    /// Ends the batch: writes what is gathered, syncs under `always`, and makes everything
    /// written visible to readers. Returns the frames and frame bytes committed in the batch.
    pub(crate) fn commit(&mut self, cx: &WriteContext) -> (u64, u64) {
        if self.failure.is_none() {
            let synced = self.flush().and_then(|()| {
                if cx.sync == SyncPolicy::Always && self.unsynced {
                    StoreCounters::add(&cx.counters.syncs, 1);
                    rustix::fs::fdatasync(&self.active.file)?;
                    self.unsynced = false;
                }
                Ok(())
            });
            if let Err(error) = synced {
                self.fail(&error);
            }
        }
        if self.failure.is_some() {
            return std::mem::take(&mut self.batch);
        }
        // A streamed frame under way is not a record yet; a failed one's bytes are gone.
        let len = match &self.stream {
            Some(stream) if stream.failed.is_none() => stream.start,
            _ => self.active.len,
        };
        self.committed = Mark {
            len,
            next_seq: self.next_seq,
            frames: self.active.frames,
            last_time: self.active.last_time,
            index_len: self.active.index.len(),
        };
        self.write_index();
        self.publish();
        self.batch.0 += std::mem::take(&mut self.pending.0);
        self.batch.1 += std::mem::take(&mut self.pending.1);
        std::mem::take(&mut self.batch)
    }

    /// Whether frame `seq` of this batch was rolled back, and why.
    pub(crate) fn refused(&self, seq: u64) -> Option<&StoreRefused> {
        self.failure
            .as_ref()
            .filter(|(from, _)| seq >= *from)
            .map(|(_, refused)| refused)
    }

    /// Forgets this batch's failure (after its acks went out): the next batch tries again.
    pub(crate) fn end_batch(&mut self) {
        self.failure = None;
    }

    /// Syncs the active segment if anything is unsynced (the `interval` timer).
    pub(crate) fn sync(&mut self, cx: &WriteContext) {
        if !self.unsynced {
            return;
        }
        StoreCounters::add(&cx.counters.syncs, 1);
        match rustix::fs::fdatasync(&self.active.file) {
            Ok(()) => self.unsynced = false,
            Err(error) => warn!(code = self.status.code(), %error, "store sync failed"),
        }
    }

    /// Shows readers what is committed.
    fn publish(&mut self) {
        let mark = self.committed;
        {
            let mut view = self.shared.view();
            for rolled in self.rolled.drain(..) {
                match view
                    .segments
                    .iter_mut()
                    .find(|segment| segment.first_seq == rolled.first_seq)
                {
                    Some(segment) => *segment = rolled,
                    None => view.segments.push(rolled),
                }
            }
            if view
                .segments
                .last()
                .map_or(true, |last| last.first_seq != self.active.first_seq)
            {
                view.segments.push(SegmentView {
                    first_seq: self.active.first_seq,
                    next_seq: self.active.first_seq,
                    len: 0,
                    path: self.active.path.clone(),
                    index: Vec::new(),
                    first_time: 0,
                    last_time: 0,
                });
                self.active.index_published = 0;
            }
            if let Some(last) = view.segments.last_mut() {
                last.len = mark.len;
                last.next_seq = mark.next_seq;
                last.first_time = self.active.first_time;
                last.last_time = mark.last_time;
                let published = self.active.index_published.min(mark.index_len);
                last.index.truncate(published);
                last.index
                    .extend_from_slice(&self.active.index[published..mark.index_len]);
                self.active.index_published = mark.index_len;
            }
        }
        self.shared.announce(mark.next_seq - 1);
    }

    /// The oldest sealed segment.
    pub(crate) fn oldest_sealed(&self) -> Option<&SegmentView> {
        self.sealed.front()
    }

    /// The active segment's frames and last timestamp.
    pub(crate) fn active_extent(&self) -> (u64, u64) {
        (self.active.frames, self.active.last_time)
    }

    /// Whether the active segment may be sealed now (no stream, nothing pending).
    pub(crate) fn is_idle(&self) -> bool {
        self.stream.is_none() && self.waiting.is_empty() && self.failure.is_none()
    }

    /// Seals the active segment so retention can delete it whole.
    pub(crate) fn seal(&mut self, cx: &WriteContext) -> std::io::Result<()> {
        if self.active.len == 0 {
            return Ok(());
        }
        self.roll(cx)?;
        self.publish();
        Ok(())
    }

    /// Deletes the oldest sealed segment (readers that have it open keep reading it).
    pub(crate) fn delete_oldest(&mut self) -> Option<SegmentView> {
        let oldest = self.sealed.pop_front()?;
        self.shared
            .view()
            .segments
            .retain(|segment| segment.first_seq != oldest.first_seq);
        for path in [
            segment::log_path(&self.dir, oldest.first_seq),
            segment::index_path(&self.dir, oldest.first_seq),
        ] {
            if let Err(error) = std::fs::remove_file(&path) {
                warn!(code = self.status.code(), segment = %path.display(), %error, "cannot delete a segment");
            }
        }
        Some(oldest)
    }
}

/// What a failed write or sync means for its frame: a full disk or quota is `StoreFull`.
pub(crate) fn refusal_for(status: Status, error: &std::io::Error) -> StoreRefused {
    let full = [rustix::io::Errno::NOSPC, rustix::io::Errno::DQUOT]
        .iter()
        .any(|errno| error.raw_os_error() == Some(errno.raw_os_error()));
    if full {
        StoreRefused::StoreFull { status }
    } else {
        StoreRefused::Io {
            status,
            kind: error.kind(),
        }
    }
}

/// Creates the files of the segment starting at `first_seq` (an empty leftover of a failed
/// creation is reused), reserving its blocks when asked, and syncs the directory under `always`.
pub(crate) fn create_segment(
    dir: &Path,
    first_seq: u64,
    limits: &CodeLimits,
    cx: &WriteContext,
) -> std::io::Result<(File, File, PathBuf)> {
    let path = segment::log_path(dir, first_seq);
    let open = |path: &Path| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
    };
    let file = open(&path)?;
    let idx = open(&segment::index_path(dir, first_seq))?;
    if cx.preallocate {
        // Best effort: a full disk shows up as a failed write, which is refused and rolled back.
        let _ = rustix::fs::fallocate(
            &file,
            rustix::fs::FallocateFlags::KEEP_SIZE,
            0,
            limits.roll_bytes(),
        );
    }
    if cx.sync == SyncPolicy::Always {
        File::open(dir).and_then(|dir| rustix::fs::fsync(&dir).map_err(Into::into))?;
        StoreCounters::add(&cx.counters.syncs, 1);
    }
    Ok((file, idx, path))
}

/// The length of the frame at the front of `bytes`, walking it with `scanner`; `None` when the
/// bytes do not hold a whole frame.
fn frame_len(scanner: &mut Scanner, bytes: &[u8]) -> Option<usize> {
    if let Some((_, _, len)) = scanner.whole_message_frame(bytes) {
        return Some(len);
    }
    let mut at = 0;
    loop {
        let step = scanner.step(&bytes[at..]).ok()??;
        at += step.wire_len();
        if scanner.at_boundary() {
            return Some(at);
        }
    }
}
