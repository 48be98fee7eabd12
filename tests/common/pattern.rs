//! Deterministic test bytes shared by the integration tests.
//!
//! Included by `tests/common/hub.rs` (re-exported there) and by `tests/interop.rs` with
//! `#[path = "common/pattern.rs"] mod pattern;`.

use bytes::Bytes;

/// Deterministic pseudo-random bytes (xorshift): a corrupted byte anywhere changes them.
pub fn pattern(len: usize, seed: u64) -> Bytes {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out.into()
}
