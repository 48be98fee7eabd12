//! Internals reachable by the fuzz targets in `fuzz/` and nothing else: compiled only with the
//! `fuzzing` cargo feature, hidden from the documentation, not a stable API.
//!
//! The hub's [`RelayCodec`] lives in a private module of `hub`; this module compiles that same
//! source file (`src/hub/delivery/relay.rs`) once more here, so the fuzz targets drive exactly the code
//! the hub runs without widening the hub's own module tree. The cluster's message texts
//! (`src/hub/cluster/messages.rs`, what other hubs send through NATS) are compiled here the same way.

/// The relay codec, as `src/hub/delivery/relay.rs` defines it.
#[allow(dead_code)]
#[path = "hub/delivery"]
mod delivery {
    pub mod relay;
}

pub use delivery::relay::{Piece, PieceKind, RelayCodec, CHUNK};

/// The cluster's message texts, as `src/hub/cluster/messages.rs` defines them.
#[allow(dead_code)]
#[path = "hub/cluster"]
pub mod cluster {
    pub mod messages;
}
