//! The offline view of a store directory, for `tej-hub store` (an operator at 3 a.m., the hub
//! stopped or running): list the codes, show one frame, check every checksum, list the saved
//! cursors. Nothing here
//! writes to the store: a torn tail is reported, not cut (the hub cuts it when it opens).

use std::fs::File;
use std::io::Cursor;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::codec::Limits;
use crate::frame::Status;
use crate::hub::store::log::{read_header, stats_of, SegmentView};
use crate::hub::store::record::{RecordHeader, HEADER_LEN};
pub use crate::hub::store::recover::{Cut, Scanned};
use crate::hub::store::{index, recover, segment, CodeStats, StoreError};
use crate::scan::{Scanner, Step};

/// The durable codes that have a directory in `dir`, ascending.
///
/// # Errors
/// [`StoreError::Io`] when the directory cannot be read.
pub fn codes(dir: &Path) -> Result<Vec<Status>, StoreError> {
    let mut codes = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(StoreError::io(dir))? {
        let entry = entry.map_err(StoreError::io(dir))?;
        if let Some(status) = entry.file_name().to_str().and_then(segment::parse_code_dir) {
            codes.push(status);
        }
    }
    codes.sort_by_key(|status| status.code());
    Ok(codes)
}

/// Every segment of `status`, as far as a quick scan (headers from the last index entry) goes.
fn segments(dir: &Path, status: Status) -> Result<Vec<SegmentView>, StoreError> {
    let code_dir = segment::code_dir(dir, status);
    let firsts = segment::list(&code_dir).map_err(StoreError::io(&code_dir))?;
    firsts
        .iter()
        .map(|&first| recover::examine(&code_dir, first, false, false, false).map(|e| e.view))
        .collect()
}

/// The figures of every code in `dir`.
///
/// # Errors
/// [`StoreError::Io`] when a directory or segment cannot be read.
pub fn list(dir: &Path) -> Result<Vec<CodeStats>, StoreError> {
    codes(dir)?
        .into_iter()
        .map(|status| Ok(stats_of(status, &segments(dir, status)?)))
        .collect()
}

/// One code of a saved durable cursor (the `cursors` file as the hub last saved it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedCursor {
    /// The cursor's (durable subscription's) name.
    pub name: String,
    /// The code.
    pub code: u8,
    /// Every frame up to this sequence number is acknowledged.
    pub acked: u64,
    /// Frames past `acked` delivered more than once and not acknowledged: (seq, deliveries).
    pub pending: Vec<(u64, u32)>,
}

/// Every saved cursor in `dir`, by name then code (none when the hub never saved one).
///
/// # Errors
/// [`StoreError::Io`] when the cursor file cannot be read, [`StoreError::Corrupt`] when it does
/// not check out.
pub fn cursors(dir: &Path) -> Result<Vec<SavedCursor>, StoreError> {
    Ok(super::cursors::load(dir)?
        .into_iter()
        .flat_map(|(name, cursor)| {
            cursor
                .codes
                .into_iter()
                .map(move |(code, position)| SavedCursor {
                    name: name.clone(),
                    code,
                    acked: position.acked,
                    pending: position.deliveries.into_iter().collect(),
                })
        })
        .collect())
}

/// One segment checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentCheck {
    /// The code.
    pub status: Status,
    /// The segment file.
    pub path: PathBuf,
    /// Good frames.
    pub frames: u64,
    /// Bytes of good records.
    pub bytes: u64,
    /// The bad tail, if any.
    pub cut: Option<Cut>,
}

/// Verifies every record of every segment in `dir` (headers and frame CRCs).
///
/// # Errors
/// [`StoreError::Io`] when a file cannot be read.
pub fn check(dir: &Path) -> Result<Vec<SegmentCheck>, StoreError> {
    let mut checks = Vec::new();
    for status in codes(dir)? {
        let code_dir = segment::code_dir(dir, status);
        for first in segment::list(&code_dir).map_err(StoreError::io(&code_dir))? {
            let examined = recover::examine(&code_dir, first, true, true, false)?;
            checks.push(SegmentCheck {
                status,
                frames: examined.view.frames(),
                bytes: examined.view.len,
                path: examined.view.path,
                cut: examined.cut,
            });
        }
    }
    Ok(checks)
}

/// One frame found by its sequence number.
#[derive(Debug)]
pub struct Shown {
    /// Its record header.
    pub header: RecordHeader,
    /// The segment file.
    pub path: PathBuf,
    /// Where the frame's bytes start in it.
    pub offset: u64,
    file: File,
}

/// A frame's parts, for display.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parts {
    /// The status byte's code.
    pub code: u8,
    /// The files: name and length.
    pub files: Vec<(String, u64)>,
    /// The message's length.
    pub message_len: u64,
    /// The message's first bytes (at most `MESSAGE_SHOWN`).
    pub message: Vec<u8>,
}

/// Bytes of a message [`Shown::parts`] keeps.
pub const MESSAGE_SHOWN: usize = 4096;

impl Shown {
    /// Reads the frame's bytes from `at` into `buf`; returns how many (0 at its end).
    ///
    /// # Errors
    /// The read fails.
    pub fn read_at(&self, at: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.header.len.saturating_sub(at);
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        self.file.read_at(&mut buf[..want], self.offset + at)
    }

    /// Whether the frame's bytes match their CRC.
    ///
    /// # Errors
    /// A read fails.
    pub fn verify(&self) -> std::io::Result<bool> {
        let mut crc = 0;
        self.each_chunk(|chunk| crc = crc32c::crc32c_append(crc, chunk))?;
        Ok(crc == self.header.frame_crc)
    }

    /// Calls `each` with the frame's bytes, in chunks, in order.
    ///
    /// # Errors
    /// A read fails.
    pub fn each_chunk(&self, mut each: impl FnMut(&[u8])) -> std::io::Result<()> {
        let mut buf = vec![0u8; 256 * 1024];
        let mut at = 0;
        while at < self.header.len {
            let n = self.read_at(at, &mut buf)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            each(&buf[..n]);
            at += n as u64;
        }
        Ok(())
    }

    /// The frame's files and message, read with the protocol's scanner in bounded memory.
    ///
    /// # Errors
    /// A read fails; `InvalidData` when the bytes are not a TEJ frame.
    pub fn parts(&self) -> std::io::Result<Parts> {
        let mut parts = Parts::default();
        let mut scanner = Scanner::new(Limits::frame_only(u64::MAX));
        let mut buf: Vec<u8> = Vec::new();
        let mut read = vec![0u8; 64 * 1024];
        let mut at = 0u64;
        loop {
            match scanner.step(&buf) {
                Ok(Some(step)) => {
                    let used = step.wire_len();
                    match step {
                        Step::Head { status, .. } => parts.code = status.code(),
                        Step::FileHead { name, len, .. } => {
                            parts.files.push((name.to_owned(), len))
                        }
                        Step::MessageHead { len } => parts.message_len = len,
                        Step::MessageData(n) => {
                            let room = MESSAGE_SHOWN.saturating_sub(parts.message.len());
                            parts.message.extend_from_slice(&buf[..n.min(room)]);
                        }
                        Step::FileData(_) => {}
                    }
                    buf.drain(..used);
                    if scanner.at_boundary() {
                        return Ok(parts);
                    }
                }
                Ok(None) => {
                    let n = self.read_at(at, &mut read)?;
                    if n == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    at += n as u64;
                    buf.extend_from_slice(&read[..n]);
                }
                Err(error) => {
                    return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, error))
                }
            }
        }
    }
}

/// The frame `seq` of `status` in `dir`, if it is kept.
///
/// # Errors
/// [`StoreError::Io`] when a file cannot be read; [`StoreError::Corrupt`] for a bad header on
/// the way.
pub fn show(dir: &Path, status: Status, seq: u64) -> Result<Option<Shown>, StoreError> {
    let Some(segment) = segments(dir, status)?
        .into_iter()
        .find(|segment| segment.first_seq <= seq && seq < segment.next_seq)
    else {
        return Ok(None);
    };
    let file = File::open(&segment.path).map_err(StoreError::io(&segment.path))?;
    let (mut at, mut current) = index::floor_seq(&segment.index, seq)
        .map_or((0, segment.first_seq), |entry| (entry.offset, entry.seq));
    while at < segment.len {
        let header = read_header(&file, &segment.path, at)?;
        if header.seq != current {
            break;
        }
        if current == seq {
            return Ok(Some(Shown {
                header,
                path: segment.path,
                offset: at + HEADER_LEN as u64,
                file,
            }));
        }
        at += header.record_len();
        current += 1;
    }
    Ok(None)
}

/// Recovery's scan over `bytes` as one segment whose first frame is number 1 (for the fuzz
/// target): the good frames (sequence number and byte range of the frame) and the cut, if any.
pub fn recover_bytes(bytes: &[u8]) -> (Vec<(u64, Range<usize>)>, Option<Cut>) {
    let mut frames = Vec::new();
    let mut index = Vec::new();
    let scanned = recover::scan(
        Cursor::new(bytes),
        0,
        1,
        bytes.len() as u64,
        true,
        &mut index,
        |offset, header| {
            let start = offset as usize + HEADER_LEN;
            frames.push((header.seq, start..start + header.len as usize));
        },
    );
    match scanned {
        Ok(scanned) => (frames, scanned.cut),
        // Reading memory cannot fail.
        Err(_) => (frames, None),
    }
}
