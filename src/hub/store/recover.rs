//! Recovery at open: each segment is scanned from its last good index entry to its end; a torn
//! or corrupt tail (a header that does not check out, a sequence number out of step, a record
//! running past the file's end, a frame whose CRC fails) is cut off by truncating the file,
//! counted and logged with `code`, `segment` and `cut_bytes`. Nothing past a cut is ever read.
//!
//! The last segment — the one a crash can tear — has every scanned frame's CRC verified. Sealed
//! segments were synced before the next one was created (except under `os`), so their scan
//! checks the header chain only: that keeps the open of a store with a multi-GiB frame per
//! segment from reading every byte. `tej-hub store check` verifies everything.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use tracing::warn;

use crate::frame::Status;
use crate::hub::store::index::{self, IndexEntry, INTERVAL};
use crate::hub::store::log::SegmentView;
use crate::hub::store::record::{RecordHeader, HEADER_LEN};
use crate::hub::store::segment;
use crate::hub::store::writer::{create_segment, CodeWriter, WriteContext};
use crate::hub::store::{CodeLimits, StoreCounters, StoreError, StoreSettings};

/// Why a scan stopped before the end of the bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cut {
    /// Where the first bad record starts.
    pub at: u64,
    /// Bytes from there to the end.
    pub len: u64,
    /// What was wrong.
    pub reason: String,
}

/// What a scan found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scanned {
    /// End of the last good record.
    pub end: u64,
    /// One past the last good frame's sequence number.
    pub next_seq: u64,
    /// The last good frame's timestamp, if the scan saw one.
    pub last_time: Option<u64>,
    /// Where and why it stopped early.
    pub cut: Option<Cut>,
}

/// Scans the records of `reader` (a segment of `len` bytes) from `start`, where the record of
/// frame `seq` is expected, verifying frame CRCs when `verify`; adds an index entry to `index`
/// every [`INTERVAL`] bytes. `each` sees every good record (its offset and header).
///
/// # Errors
/// A read fails (not a bad record: that is a [`Cut`]).
pub fn scan<R: Read + Seek>(
    reader: R,
    start: u64,
    seq: u64,
    len: u64,
    verify: bool,
    index: &mut Vec<IndexEntry>,
    mut each: impl FnMut(u64, &RecordHeader),
) -> std::io::Result<Scanned> {
    let mut reader = BufReader::with_capacity(256 * 1024, reader);
    reader.seek(SeekFrom::Start(start))?;
    let mut at = start;
    let mut expect = seq;
    let mut last_time = None;
    let mut chunk = Vec::new();
    let cut = loop {
        if at >= len {
            break None;
        }
        let left = len - at;
        if left < HEADER_LEN as u64 {
            break Some(format!("{left} bytes, less than a record header"));
        }
        let mut bytes = [0u8; HEADER_LEN];
        reader.read_exact(&mut bytes)?;
        let header = match RecordHeader::decode(&bytes) {
            Ok(header) => header,
            Err(error) => break Some(error.to_string()),
        };
        if header.seq != expect {
            break Some(format!(
                "sequence {} where {expect} was expected",
                header.seq
            ));
        }
        if header.len > left - HEADER_LEN as u64 {
            break Some(format!("a {}-byte frame runs past the end", header.len));
        }
        if verify {
            let mut crc = 0u32;
            let mut remaining = header.len;
            chunk.resize(256 * 1024, 0);
            while remaining > 0 {
                let n = usize::try_from(remaining)
                    .unwrap_or(usize::MAX)
                    .min(chunk.len());
                reader.read_exact(&mut chunk[..n])?;
                crc = crc32c::crc32c_append(crc, &chunk[..n]);
                remaining -= n as u64;
            }
            if crc != header.frame_crc {
                break Some(format!(
                    "frame CRC {crc:#010x}, header says {:#010x}",
                    header.frame_crc
                ));
            }
        } else {
            // The length was checked against the file: it fits an i64.
            reader.seek_relative(i64::try_from(header.len).unwrap_or(i64::MAX))?;
        }
        if index
            .last()
            .map_or(true, |last| at >= last.offset + INTERVAL)
        {
            index.push(IndexEntry {
                seq: header.seq,
                offset: at,
                timestamp: header.timestamp,
            });
        }
        each(at, &header);
        last_time = Some(header.timestamp);
        at += header.record_len();
        expect += 1;
    };
    Ok(Scanned {
        end: at,
        next_seq: expect,
        last_time,
        cut: cut.map(|reason| Cut {
            at,
            len: len - at,
            reason,
        }),
    })
}

/// One segment file examined: its view and what a scan cut.
pub(crate) struct Examined {
    pub view: SegmentView,
    pub cut: Option<Cut>,
    /// Whether the index file needs rewriting.
    pub index_changed: bool,
    pub file: File,
}

/// Scans the segment of `dir` starting at `first_seq` from its last good index entry (from the
/// start when `full`), verifying CRCs when `verify`. Changes nothing on disk.
pub(crate) fn examine(
    dir: &Path,
    first_seq: u64,
    verify: bool,
    full: bool,
    writable: bool,
) -> Result<Examined, StoreError> {
    let path = segment::log_path(dir, first_seq);
    let file = OpenOptions::new()
        .read(true)
        .write(writable)
        .open(&path)
        .map_err(StoreError::io(&path))?;
    let len = file.metadata().map_err(StoreError::io(&path))?.len();
    let loaded = index::load(&segment::index_path(dir, first_seq), first_seq, len);
    let mut entries = if full { Vec::new() } else { loaded.clone() };
    let (start, seq) = match entries.pop() {
        Some(entry) => (entry.offset, entry.seq),
        None => (0, first_seq),
    };
    let mut first_time = entries.first().map(|entry| entry.timestamp);
    let scanned = scan(
        &file,
        start,
        seq,
        len,
        verify,
        &mut entries,
        |offset, header| {
            if offset == 0 {
                first_time = Some(header.timestamp);
            }
        },
    )
    .map_err(StoreError::io(&path))?;
    if start > 0 && scanned.cut.as_ref().is_some_and(|cut| cut.at == start) {
        // The index pointed at no record: a stale or damaged hint. The log decides.
        return examine(dir, first_seq, verify, true, writable);
    }
    entries.retain(|entry| entry.offset < scanned.end);
    let last_time = scanned
        .last_time
        .or_else(|| entries.last().map(|entry| entry.timestamp))
        .unwrap_or(0);
    Ok(Examined {
        index_changed: entries != loaded,
        view: SegmentView {
            first_seq,
            next_seq: scanned.next_seq,
            len: scanned.end,
            path,
            index: entries,
            first_time: first_time.unwrap_or(0),
            last_time,
        },
        cut: scanned.cut,
        file,
    })
}

/// Opens `status`'s log for writing: creates its directory and first segment if need be,
/// recovers every segment (cutting torn tails), and returns its writer.
pub(crate) fn open_code(
    settings: &StoreSettings,
    status: Status,
    limits: &CodeLimits,
    counters: &Arc<StoreCounters>,
) -> Result<CodeWriter, StoreError> {
    let dir = segment::code_dir(&settings.dir, status);
    std::fs::create_dir_all(&dir).map_err(StoreError::io(&dir))?;
    let cx = WriteContext {
        sync: settings.sync,
        preallocate: settings.preallocate,
        counters: counters.clone(),
    };
    let firsts = segment::list(&dir).map_err(StoreError::io(&dir))?;
    let mut views: Vec<SegmentView> = Vec::new();
    let mut active = None;
    for (i, &first_seq) in firsts.iter().enumerate() {
        let last = i + 1 == firsts.len();
        let examined = examine(&dir, first_seq, last, false, true)?;
        if let Some(cut) = &examined.cut {
            examined
                .file
                .set_len(cut.at)
                .and_then(|()| examined.file.sync_all())
                .map_err(StoreError::io(&examined.view.path))?;
            StoreCounters::add(&counters.cut_bytes, cut.len);
            warn!(
                code = status.code(),
                segment = %examined.view.path.display(),
                cut_bytes = cut.len,
                at = cut.at,
                reason = %cut.reason,
                "cut a torn or corrupt tail"
            );
        }
        let idx_path = segment::index_path(&dir, first_seq);
        if examined.index_changed {
            std::fs::write(&idx_path, index::encode_all(&examined.view.index))
                .map_err(StoreError::io(&idx_path))?;
        }
        if !last && examined.view.frames() == 0 {
            // An empty sealed segment holds nothing: its name is kept by the next one.
            for path in [&examined.view.path, &idx_path] {
                std::fs::remove_file(path).map_err(StoreError::io(path))?;
            }
            continue;
        }
        if last {
            let idx = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&idx_path)
                .map_err(StoreError::io(&idx_path))?;
            active = Some((examined.file, idx));
        }
        views.push(examined.view);
    }
    let (file, idx) = match active {
        Some(files) => files,
        None => {
            let (file, idx, path) =
                create_segment(&dir, 1, limits, &cx).map_err(StoreError::io(&dir))?;
            views.push(SegmentView {
                first_seq: 1,
                next_seq: 1,
                len: 0,
                path,
                index: Vec::new(),
                first_time: 0,
                last_time: 0,
            });
            (file, idx)
        }
    };
    Ok(CodeWriter::new(
        status,
        dir,
        limits.clone(),
        views,
        file,
        idx,
    ))
}
