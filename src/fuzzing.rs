//! Internals reachable by the fuzz targets in `fuzz/` and nothing else: compiled only with the
//! `fuzzing` cargo feature, hidden from the documentation, not a stable API.
//!
//! The hub's [`RelayCodec`] lives in a private module of `hub`; this module compiles that same
//! source file (`src/hub/relay.rs`) once more here, so the fuzz targets drive exactly the code
//! the hub runs without widening the hub's own module tree.

#[path = "hub/relay.rs"]
#[allow(dead_code)]
mod relay;

pub use relay::{Piece, PieceKind, RelayCodec, CHUNK};
