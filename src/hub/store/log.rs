//! One durable code's log: [`CodeShared`] (what readers see: the segments' committed extents,
//! shared behind a short lock) and [`StoreReader`] (replay from a position, as file byte
//! ranges). The I/O thread's side of the log is `writer`'s `CodeWriter`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use tokio::sync::watch;

use crate::frame::Status;
use crate::hub::store::index::{self, IndexEntry};
use crate::hub::store::record::{unix_nanos, RecordHeader, HEADER_LEN};
use crate::hub::store::{CodeStats, Position, StoreError};

/// A segment as readers see it: only committed records (stored under the sync policy).
#[derive(Clone, Debug)]
pub(crate) struct SegmentView {
    /// The first frame's sequence number (the file's name).
    pub first_seq: u64,
    /// One past the last committed frame's sequence number.
    pub next_seq: u64,
    /// Committed bytes.
    pub len: u64,
    /// The log file.
    pub path: PathBuf,
    /// The sparse index of the committed records.
    pub index: Vec<IndexEntry>,
    /// The first frame's timestamp (Unix nanoseconds; 0 when empty).
    pub first_time: u64,
    /// The last frame's timestamp.
    pub last_time: u64,
}

impl SegmentView {
    /// Frames in the segment.
    pub(crate) fn frames(&self) -> u64 {
        self.next_seq - self.first_seq
    }
}

/// A code's segments, oldest first; the last one is the active segment.
#[derive(Debug)]
pub(crate) struct CodeView {
    pub segments: Vec<SegmentView>,
}

impl CodeView {
    /// One past the last committed frame.
    pub(crate) fn next_seq(&self) -> u64 {
        self.segments.last().map_or(1, |segment| segment.next_seq)
    }

    /// The oldest kept frame's sequence number (the next one's when none is kept).
    pub(crate) fn first_seq(&self) -> u64 {
        self.segments
            .iter()
            .find(|segment| segment.frames() > 0)
            .map_or(self.next_seq(), |segment| segment.first_seq)
    }
}

/// A code's log as readers see it; the I/O thread updates it after each commit.
#[derive(Debug)]
pub(crate) struct CodeShared {
    pub status: Status,
    view: Mutex<CodeView>,
    /// The last committed sequence number.
    last: watch::Sender<u64>,
}

impl CodeShared {
    pub(crate) fn new(status: Status, segments: Vec<SegmentView>) -> CodeShared {
        let view = CodeView { segments };
        let last = view.next_seq() - 1;
        CodeShared {
            status,
            view: Mutex::new(view),
            last: watch::Sender::new(last),
        }
    }

    /// The view, locked (a leaf lock: held for memory work only).
    pub(crate) fn view(&self) -> MutexGuard<'_, CodeView> {
        self.view.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tells watchers that frames up to `last` are visible.
    pub(crate) fn announce(&self, last: u64) {
        self.last.send_if_modified(|seen| {
            let changed = *seen != last;
            *seen = last;
            changed
        });
    }

    /// A receiver of the last committed sequence number.
    pub(crate) fn watch(&self) -> watch::Receiver<u64> {
        self.last.subscribe()
    }

    /// The code's figures.
    pub(crate) fn stats(&self) -> CodeStats {
        stats_of(self.status, &self.view().segments)
    }
}

/// The figures of a code whose segments are `segments`.
pub(crate) fn stats_of(status: Status, segments: &[SegmentView]) -> CodeStats {
    let next = segments.last().map_or(1, |segment| segment.next_seq);
    let first = segments
        .iter()
        .find(|segment| segment.frames() > 0)
        .map_or(next, |segment| segment.first_seq);
    CodeStats {
        status,
        frames: segments.iter().map(SegmentView::frames).sum(),
        bytes: segments.iter().map(|segment| segment.len).sum(),
        first_seq: first,
        last_seq: next - 1,
        segments: segments.len() as u64,
        oldest: segments
            .iter()
            .find(|segment| segment.frames() > 0)
            .map(|segment| RecordHeader::time_of(segment.first_time)),
    }
}

/// One stored frame as a byte range of a segment file: send it with `sendfile` from `file` at
/// `offset`, or read it in chunks with [`StoredFrame::read_at`].
#[derive(Clone, Debug)]
pub(crate) struct StoredFrame {
    /// Its sequence number.
    pub seq: u64,
    /// When it was stored.
    pub timestamp: SystemTime,
    /// The segment file (kept open: retention may unlink it meanwhile).
    pub file: Arc<File>,
    /// Where the frame's wire bytes start in the file.
    pub offset: u64,
    /// The frame's length.
    pub len: u64,
    /// CRC-32C of the frame's bytes.
    pub crc: u32,
}

impl StoredFrame {
    /// Reads the frame's bytes from `at` (relative to the frame) into `buf`; returns how many.
    ///
    /// # Errors
    /// The read fails.
    pub(crate) fn read_at(&self, at: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.len.saturating_sub(at);
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        self.file.read_at(&mut buf[..want], self.offset + at)
    }

    /// Whether the frame's bytes on disk still match their checksum (reads them all, in chunks).
    ///
    /// # Errors
    /// A read fails.
    pub(crate) fn verify(&self) -> std::io::Result<bool> {
        let mut buf = vec![0u8; 256 * 1024];
        let mut crc = 0u32;
        let mut at = 0u64;
        while at < self.len {
            let n = self.read_at(at, &mut buf)?;
            if n == 0 {
                return Ok(false);
            }
            crc = crc32c::crc32c_append(crc, &buf[..n]);
            at += n as u64;
        }
        Ok(crc == self.crc)
    }
}

/// Committed bytes a reader reads at once from the segment it has open: a replay of small
/// frames costs one read per this many bytes, not two per frame.
const READ_AHEAD: u64 = 128 * 1024;

/// Where a reader stands in a segment it has open.
#[derive(Debug)]
struct Open {
    first_seq: u64,
    file: Arc<File>,
    path: PathBuf,
    /// The record of frame `seq` starts here (or a record before it: scanning skips).
    offset: u64,
    seq: u64,
    /// Committed bytes of the segment read ahead, from file offset `ahead_at`; emptied when
    /// the reader catches up (an idle reader holds no buffer).
    ahead: Vec<u8>,
    ahead_at: u64,
}

impl Open {
    /// The bytes `at..at + len` if they are read ahead.
    fn buffered(&self, at: u64, len: u64) -> Option<&[u8]> {
        let start = usize::try_from(at.checked_sub(self.ahead_at)?).ok()?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        self.ahead.get(start..end)
    }

    /// The record header at `offset`, reading ahead up to `committed` bytes when it is not
    /// in the buffer.
    fn header_at(&mut self, offset: u64, committed: u64) -> Result<RecordHeader, StoreError> {
        if self.buffered(offset, HEADER_LEN as u64).is_none() {
            let want = committed.saturating_sub(offset).min(READ_AHEAD);
            let want = usize::try_from(want).unwrap_or(HEADER_LEN).max(HEADER_LEN);
            self.ahead.resize(want, 0);
            self.ahead_at = offset;
            if let Err(error) = self.file.read_exact_at(&mut self.ahead, offset) {
                self.ahead.clear();
                return Err(StoreError::io(&self.path)(error));
            }
        }
        let corrupt = |reason: String| StoreError::Corrupt {
            path: self.path.clone(),
            offset,
            reason,
        };
        let bytes: &[u8; HEADER_LEN] = self
            .buffered(offset, HEADER_LEN as u64)
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| corrupt("a record header past the committed bytes".into()))?;
        RecordHeader::decode(bytes).map_err(|error| corrupt(error.to_string()))
    }
}

/// Replays a code's frames in order from a [`Position`], in bounded memory: it holds one open
/// segment and a position. Reads are blocking file reads (mostly from the page cache): call it
/// off an event loop for long replays.
#[derive(Debug)]
pub(crate) struct StoreReader {
    shared: Arc<CodeShared>,
    /// The next frame wanted.
    next: u64,
    /// Frames stored before this time are skipped (`Position::Time`).
    not_before: Option<u64>,
    open: Option<Open>,
}

impl StoreReader {
    pub(crate) fn new(shared: Arc<CodeShared>, from: Position) -> StoreReader {
        let (next, not_before) = {
            let view = shared.view();
            match from {
                Position::First => (view.first_seq(), None),
                Position::Last => (
                    view.next_seq().saturating_sub(1).max(view.first_seq()),
                    None,
                ),
                Position::Seq(seq) => (seq.max(view.first_seq()), None),
                Position::Next => (view.next_seq(), None),
                Position::Time(time) => {
                    let at = unix_nanos(time);
                    let start = view
                        .segments
                        .iter()
                        .find(|segment| segment.frames() > 0 && segment.last_time >= at)
                        .map_or(view.next_seq(), |segment| {
                            index::floor_time(&segment.index, at)
                                .map_or(segment.first_seq, |entry| entry.seq)
                        });
                    (start, Some(at))
                }
            }
        };
        StoreReader {
            shared,
            next,
            not_before,
            open: None,
        }
    }

    /// The sequence number of the next frame this reader looks for.
    pub(crate) fn next_seq(&self) -> u64 {
        self.next
    }

    /// `frame`'s bytes, if this reader returned it and read them ahead with its header (a
    /// small frame usually is): no read needed.
    pub(crate) fn buffered(&self, frame: &StoredFrame) -> Option<&[u8]> {
        let open = self.open.as_ref()?;
        if !Arc::ptr_eq(&open.file, &frame.file) {
            return None;
        }
        open.buffered(frame.offset, frame.len)
    }

    /// The next committed frame, or `None` when the reader has caught up (call again after
    /// [`Store::watch`](super::Store::watch) moves). Frames deleted by retention meanwhile are
    /// skipped (the sequence numbers tell).
    ///
    /// # Errors
    /// [`StoreError::Io`] when a segment cannot be read; [`StoreError::Corrupt`] when a record
    /// header does not check out.
    pub(crate) fn next_frame(&mut self) -> Result<Option<StoredFrame>, StoreError> {
        loop {
            let Some(frame) = self.next_committed()? else {
                return Ok(None);
            };
            match self.not_before {
                Some(at) if unix_nanos(frame.timestamp) < at => continue,
                _ => {
                    self.not_before = None;
                    return Ok(Some(frame));
                }
            }
        }
    }

    fn next_committed(&mut self) -> Result<Option<StoredFrame>, StoreError> {
        loop {
            // Where frame `next` is, as far as the committed view says.
            let (first_seq, len, entry, path) = {
                let view = self.shared.view();
                let segment = view
                    .segments
                    .iter()
                    .find(|segment| self.next < segment.next_seq)
                    .filter(|_| self.next < view.next_seq());
                let Some(segment) = segment else {
                    if let Some(open) = self.open.as_mut() {
                        open.ahead = Vec::new();
                    }
                    return Ok(None);
                };
                // Deleted by retention, or a gap a recovery cut left: go on from what is kept.
                self.next = self.next.max(segment.first_seq);
                let entry = index::floor_seq(&segment.index, self.next);
                let reuse = self.open.as_ref().is_some_and(|open| {
                    open.first_seq == segment.first_seq && open.seq <= self.next
                });
                let path = (!reuse).then(|| segment.path.clone());
                (segment.first_seq, segment.len, entry, path)
            };
            if let Some(path) = path {
                let file = match File::open(&path) {
                    Ok(file) => Arc::new(file),
                    // Retention deleted it since: the view has moved on.
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                        self.open = None;
                        continue;
                    }
                    Err(error) => return Err(StoreError::io(&path)(error)),
                };
                let (seq, offset) = entry.map_or((first_seq, 0), |entry| (entry.seq, entry.offset));
                self.open = Some(Open {
                    first_seq,
                    file,
                    path,
                    offset,
                    seq,
                    ahead: Vec::new(),
                    ahead_at: 0,
                });
            }
            let Some(open) = self.open.as_mut() else {
                continue;
            };
            // A closer index entry than where the open segment stands.
            if let Some(entry) = entry.filter(|entry| entry.seq > open.seq) {
                open.seq = entry.seq;
                open.offset = entry.offset;
            }
            while open.offset < len {
                let header = open.header_at(open.offset, len)?;
                if header.seq != open.seq {
                    return Err(StoreError::Corrupt {
                        path: open.path.clone(),
                        offset: open.offset,
                        reason: format!("sequence {} where {} was expected", header.seq, open.seq),
                    });
                }
                let start = open.offset;
                open.offset += header.record_len();
                open.seq += 1;
                if header.seq == self.next {
                    self.next += 1;
                    return Ok(Some(StoredFrame {
                        seq: header.seq,
                        timestamp: header.time(),
                        file: open.file.clone(),
                        offset: start + HEADER_LEN as u64,
                        len: header.len,
                        crc: header.frame_crc,
                    }));
                }
            }
            return Err(StoreError::Corrupt {
                path: open.path.clone(),
                offset: open.offset,
                reason: format!("frame {} not found before the segment's end", self.next),
            });
        }
    }
}

/// The record header at `offset` of `file`.
pub(crate) fn read_header(
    file: &File,
    path: &std::path::Path,
    offset: u64,
) -> Result<RecordHeader, StoreError> {
    let mut bytes = [0u8; HEADER_LEN];
    file.read_exact_at(&mut bytes, offset)
        .map_err(StoreError::io(path))?;
    RecordHeader::decode(&bytes).map_err(|error| StoreError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason: error.to_string(),
    })
}
