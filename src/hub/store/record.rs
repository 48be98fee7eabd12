//! The on-disk record: a fixed [`HEADER_LEN`]-byte header, then the frame's exact wire bytes.
//!
//! ```text
//! offset  size  field
//!      0     4  magic 0x544A5331 ("TJS1"), big-endian like the TEJ wire format
//!      4     8  sequence number (per code, from 1)
//!     12     8  timestamp, nanoseconds since the Unix epoch
//!     20     8  frame length in bytes
//!     28     4  CRC-32C of the frame bytes
//!     32     4  CRC-32C of bytes 0..32 of this header
//!     36     …  the frame's wire bytes
//! ```
//!
//! The header CRC lets recovery tell a real header from torn or zeroed bytes before trusting its
//! length; the frame CRC catches a torn or corrupt body. A streamed frame's header is written
//! last (zeros stand in for it meanwhile), so a record cut short by a crash never has a valid
//! header.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Bytes of a record header.
pub const HEADER_LEN: usize = 36;
/// The first four bytes of every record.
pub const MAGIC: u32 = 0x544A_5331;

/// A record's header, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// The frame's sequence number in its code.
    pub seq: u64,
    /// When the hub stored the frame, nanoseconds since the Unix epoch.
    pub timestamp: u64,
    /// The frame's length in bytes.
    pub len: u64,
    /// CRC-32C of the frame's bytes.
    pub frame_crc: u32,
}

/// Why bytes are not a record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The magic number is wrong (zeros, garbage, or a torn write).
    #[error("bad record magic {found:#010x}")]
    Magic {
        /// What was found.
        found: u32,
    },
    /// The header's own checksum fails.
    #[error("record header checksum {found:#010x}, computed {computed:#010x}")]
    Checksum {
        /// The stored checksum.
        found: u32,
        /// The checksum of the bytes.
        computed: u32,
    },
}

impl RecordHeader {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&MAGIC.to_be_bytes());
        out[4..12].copy_from_slice(&self.seq.to_be_bytes());
        out[12..20].copy_from_slice(&self.timestamp.to_be_bytes());
        out[20..28].copy_from_slice(&self.len.to_be_bytes());
        out[28..32].copy_from_slice(&self.frame_crc.to_be_bytes());
        let crc = crc32c::crc32c(&out[..32]);
        out[32..36].copy_from_slice(&crc.to_be_bytes());
        out
    }

    /// Decodes and checks a header.
    ///
    /// # Errors
    /// [`HeaderError`] when the magic or the header checksum is wrong.
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<RecordHeader, HeaderError> {
        let u32_at = |at: usize| {
            u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let u64_at = |at: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(word)
        };
        let magic = u32_at(0);
        if magic != MAGIC {
            return Err(HeaderError::Magic { found: magic });
        }
        let found = u32_at(32);
        let computed = crc32c::crc32c(&bytes[..32]);
        if found != computed {
            return Err(HeaderError::Checksum { found, computed });
        }
        Ok(RecordHeader {
            seq: u64_at(4),
            timestamp: u64_at(12),
            len: u64_at(20),
            frame_crc: u32_at(28),
        })
    }

    /// The record's length on disk: header and frame.
    pub fn record_len(&self) -> u64 {
        (HEADER_LEN as u64).saturating_add(self.len)
    }

    /// The timestamp as a wall-clock time.
    pub fn time(&self) -> SystemTime {
        RecordHeader::time_of(self.timestamp)
    }

    /// A timestamp (Unix nanoseconds) as a wall-clock time.
    pub fn time_of(nanos: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(nanos)
    }
}

/// Nanoseconds since the Unix epoch of `time` (0 before the epoch, saturating far after).
pub fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_round_trips_and_every_flipped_bit_is_caught() {
        let header = RecordHeader {
            seq: 7,
            timestamp: 1_700_000_000_000_000_000,
            len: 5 << 32,
            frame_crc: 0xDEAD_BEEF,
        };
        let bytes = header.encode();
        assert_eq!(RecordHeader::decode(&bytes), Ok(header));
        for bit in 0..HEADER_LEN * 8 {
            let mut flipped = bytes;
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(RecordHeader::decode(&flipped).is_err(), "bit {bit}");
        }
        assert!(matches!(
            RecordHeader::decode(&[0; HEADER_LEN]),
            Err(HeaderError::Magic { found: 0 })
        ));
    }
}
