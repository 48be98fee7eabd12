//! The sparse index of a segment: one entry (sequence number, record offset, timestamp) per
//! [`INTERVAL`] bytes of log, so finding a frame is a binary search and a short scan.
//!
//! On disk (`.idx`) an entry is 28 bytes, big-endian: seq u64, offset u64, timestamp u64,
//! CRC-32C of the first 24 bytes u32. The index is a hint: it is written without syncing and
//! rebuilt from the log when it is missing, short, or an entry does not check out.

use std::path::Path;

/// Bytes of log between index entries.
pub(crate) const INTERVAL: u64 = 64 * 1024;
/// Bytes of an entry on disk.
pub(crate) const ENTRY_LEN: usize = 28;

/// One index entry: the record of frame `seq` starts at `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    /// The frame's sequence number.
    pub seq: u64,
    /// Where its record starts in the segment.
    pub offset: u64,
    /// Its timestamp (Unix nanoseconds).
    pub timestamp: u64,
}

impl IndexEntry {
    /// The entry's bytes.
    pub(crate) fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut out = [0u8; ENTRY_LEN];
        out[0..8].copy_from_slice(&self.seq.to_be_bytes());
        out[8..16].copy_from_slice(&self.offset.to_be_bytes());
        out[16..24].copy_from_slice(&self.timestamp.to_be_bytes());
        let crc = crc32c::crc32c(&out[..24]);
        out[24..28].copy_from_slice(&crc.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<IndexEntry> {
        let word = |at: usize| -> Option<u64> {
            Some(u64::from_be_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
        };
        let crc = u32::from_be_bytes(bytes.get(24..28)?.try_into().ok()?);
        if crc32c::crc32c(bytes.get(..24)?) != crc {
            return None;
        }
        Some(IndexEntry {
            seq: word(0)?,
            offset: word(8)?,
            timestamp: word(16)?,
        })
    }
}

/// The entries of the index file at `path` that check out against a segment starting at
/// `first_seq` whose log is `log_len` bytes: the longest prefix of entries with valid checksums,
/// increasing sequence numbers and offsets, and offsets inside the log. A missing or unreadable
/// file gives none.
pub(crate) fn load(path: &Path, first_seq: u64, log_len: u64) -> Vec<IndexEntry> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    let mut entries: Vec<IndexEntry> = Vec::new();
    for chunk in bytes.chunks_exact(ENTRY_LEN) {
        let Some(entry) = IndexEntry::decode(chunk) else {
            break;
        };
        let in_order = entries
            .last()
            .map_or(entry.seq == first_seq && entry.offset == 0, |last| {
                entry.seq > last.seq && entry.offset > last.offset
            });
        if !in_order || entry.offset >= log_len {
            break;
        }
        entries.push(entry);
    }
    entries
}

/// The last entry at or before frame `seq`.
pub(crate) fn floor_seq(entries: &[IndexEntry], seq: u64) -> Option<IndexEntry> {
    let at = entries.partition_point(|entry| entry.seq <= seq);
    at.checked_sub(1).map(|at| entries[at])
}

/// The last entry stored before `timestamp` (the frames at `timestamp` or later come after it).
pub(crate) fn floor_time(entries: &[IndexEntry], timestamp: u64) -> Option<IndexEntry> {
    let at = entries.partition_point(|entry| entry.timestamp < timestamp);
    at.checked_sub(1).map(|at| entries[at])
}

/// The bytes of `entries`, for writing to an index file.
pub(crate) fn encode_all(entries: &[IndexEntry]) -> Vec<u8> {
    entries.iter().flat_map(IndexEntry::encode).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_index_keeps_its_good_prefix() {
        let entries: Vec<IndexEntry> = (0..4)
            .map(|i| IndexEntry {
                seq: 10 + i * 100,
                offset: i * INTERVAL,
                timestamp: i,
            })
            .collect();
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("x.idx");
        let mut bytes = encode_all(&entries);
        bytes[2 * ENTRY_LEN + 3] ^= 1;
        std::fs::write(&path, &bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(load(&path, 10, u64::MAX), entries[..2]);
        // Entries past the log's end are dropped.
        assert_eq!(load(&path, 10, INTERVAL), entries[..1]);
        assert_eq!(floor_seq(&entries, 115), Some(entries[1]));
        assert_eq!(floor_seq(&entries, 5), None);
        assert_eq!(floor_time(&entries, 2), Some(entries[1]));
    }
}
