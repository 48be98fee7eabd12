//! The store's recovery (src/hub/store/recover.rs) over arbitrary bytes taken as a segment, and
//! over a valid log damaged at one place the input chooses.
//!
//! Asserts: recovery never panics; every frame it keeps has a valid header, its sequence number
//! in step from 1, its bytes inside the input, and bytes matching its CRC-32C; keeping stops at
//! the cut, which spans exactly the bytes after the last kept record. For a valid log of frames
//! built from the input and then truncated or flipped at one byte, the frames kept are exactly
//! the log's frames before the damaged record, byte for byte. The offline inspector (`check`,
//! `list`, `show`) reads the same bytes from a store directory (with the input's tail as the
//! segment's index) without panicking, and agrees with the in-memory scan.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tej_hub::hub::store::inspect;
use tej_hub::hub::store::record::{RecordHeader, HEADER_LEN};
use tej_hub::Status;

/// A store directory of one code (5), rewritten for each input.
fn store_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("tej-store-fuzz-{}", std::process::id()));
        let _ = std::fs::create_dir_all(dir.join("code-5"));
        dir
    })
}

/// Checks what recovery kept of `log`; returns the kept frames' bytes.
fn kept(log: &[u8]) -> Vec<Vec<u8>> {
    let (frames, cut) = inspect::recover_bytes(log);
    let mut end = 0usize;
    for (i, (seq, range)) in frames.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1, "sequence out of step");
        assert_eq!(range.start, end + HEADER_LEN, "records are not contiguous");
        let header: [u8; HEADER_LEN] = log[end..range.start].try_into().unwrap_or([0; HEADER_LEN]);
        let header = RecordHeader::decode(&header).unwrap_or_else(|e| panic!("kept a bad header: {e}"));
        let frame = &log[range.clone()];
        assert_eq!(crc32c::crc32c(frame), header.frame_crc, "kept a frame whose CRC fails");
        end = range.end;
    }
    match cut {
        Some(cut) => {
            assert_eq!(cut.at as usize, end);
            assert_eq!(cut.len as usize, log.len() - end);
        }
        None => assert_eq!(end, log.len(), "bytes left over without a cut"),
    }
    frames.into_iter().map(|(_, range)| log[range].to_vec()).collect()
}

fuzz_target!(|input: &[u8]| {
    kept(input);

    // A valid log of frames cut from the input (a length byte, then that many bytes), damaged
    // at the place the first four bytes choose.
    let Some((choice, mut rest)) = input.split_first_chunk::<4>() else {
        return;
    };
    let mut log = Vec::new();
    let mut originals: Vec<(usize, Vec<u8>)> = Vec::new();
    let mut seq = 1;
    while let Some((&len, tail)) = rest.split_first() {
        let take = usize::from(len).min(tail.len());
        let frame = &tail[..take];
        rest = &tail[take..];
        let header = RecordHeader {
            seq,
            timestamp: seq,
            len: frame.len() as u64,
            frame_crc: crc32c::crc32c(frame),
        };
        originals.push((log.len(), frame.to_vec()));
        log.extend_from_slice(&header.encode());
        log.extend_from_slice(frame);
        seq += 1;
    }
    if log.is_empty() {
        return;
    }
    let at = usize::from(u16::from_be_bytes([choice[0], choice[1]])) % log.len();
    let damaged = if choice[2] & 1 == 0 {
        log[..at].to_vec()
    } else {
        let mut flipped = log.clone();
        flipped[at] ^= choice[3] | 1;
        flipped
    };
    // Every record that starts after the damage's record is gone; those before stay intact.
    let intact = originals.iter().take_while(|(start, frame)| start + HEADER_LEN + frame.len() <= at).count();
    let got = kept(&damaged);
    assert_eq!(got.len(), intact, "kept {} of {} intact records", got.len(), intact);
    for (frame, (_, original)) in got.iter().zip(&originals) {
        assert_eq!(frame, original);
    }

    // The same bytes as a segment on disk, the input as its index.
    let dir = store_dir();
    let code_dir = dir.join("code-5");
    let log_path = code_dir.join(format!("{:020}.log", 1));
    let idx_path = code_dir.join(format!("{:020}.idx", 1));
    if std::fs::write(&log_path, &damaged).is_err() || std::fs::write(&idx_path, input).is_err() {
        return;
    }
    if let Ok(checks) = inspect::check(dir) {
        let frames: u64 = checks.iter().map(|check| check.frames).sum();
        assert_eq!(frames, got.len() as u64, "check disagrees with the scan");
    }
    let _ = inspect::list(dir);
    if let Some(status) = Status::new(5) {
        for seq in [1, got.len() as u64, got.len() as u64 + 1] {
            if let Ok(Some(shown)) = inspect::show(dir, status, seq) {
                assert!(seq <= got.len() as u64 || shown.header.seq == seq);
                let _ = shown.parts();
            }
        }
    }
});
