//! Streamed frames gathered in memory before they reach a code's log.
//!
//! A streamed frame owns its code's tail while it is written cut-through, so with several
//! publishers streaming on one code every other publisher's frames wait for it, even whole
//! ones: four publishers of 1 MiB frames were written one frame at a time at the pace of the
//! slowest piece. A frame that announces at most [`STAGE_FRAME_MAX`] bytes is instead gathered
//! here, per publisher, and its pieces go on to the log together when its last one arrives (the
//! tail is then owned only while they are written, from memory, without copying them); frames
//! of several publishers complete side by side. Larger frames still stream to the tail, in
//! bounded memory. All staged frames together hold at most about [`STAGE_HIGH`] bytes: past it
//! no frame starts staging and a growing one spills to the tail as a streamed frame.

use crate::codec::Limits;
use crate::hub::delivery::relay::{Piece, PieceKind};
use crate::hub::session::SessionId;
use crate::scan::Scanner;

/// Largest frame (as its first piece announces it) gathered in memory.
pub(crate) const STAGE_FRAME_MAX: u64 = 4 * 1024 * 1024;
/// Bytes all staged frames together may hold before frames stream to the tail instead.
pub(crate) const STAGE_HIGH: u64 = 16 * 1024 * 1024;

/// One publisher's frame being gathered.
struct Staged {
    from: SessionId,
    pieces: Vec<Piece>,
    bytes: u64,
}

/// The streamed frames being gathered for one code.
#[derive(Default)]
pub(crate) struct Stages {
    staged: Vec<Staged>,
    bytes: u64,
}

impl Stages {
    /// Takes `piece` from `from` and returns the pieces that go on to the log now, in order:
    /// none while a frame is gathered, all of its pieces when its last one came or when it grew
    /// too large (it streams on), or `piece` itself when it is not staged.
    /// A first piece is staged when its frame is small enough, there is room, and `may_start`
    /// (the publisher has nothing ahead of it waiting for the tail, so its order holds).
    pub(crate) fn take(&mut self, from: SessionId, piece: Piece, may_start: bool) -> Vec<Piece> {
        let len = piece.bytes.len() as u64;
        match piece.kind {
            PieceKind::Whole => vec![piece],
            PieceKind::First => {
                let announced = announced_len(&piece.bytes);
                if !may_start
                    || announced > STAGE_FRAME_MAX
                    || self.bytes.saturating_add(announced) > STAGE_HIGH
                {
                    return vec![piece];
                }
                self.bytes += len;
                self.staged.push(Staged {
                    from,
                    pieces: vec![piece],
                    bytes: len,
                });
                Vec::new()
            }
            PieceKind::Middle | PieceKind::Last => {
                let Some(at) = self.staged.iter().position(|staged| staged.from == from) else {
                    return vec![piece];
                };
                let last = piece.kind == PieceKind::Last;
                let staged = &mut self.staged[at];
                staged.pieces.push(piece);
                staged.bytes += len;
                self.bytes += len;
                let too_large = staged.bytes > STAGE_FRAME_MAX || self.bytes > STAGE_HIGH;
                if !last && !too_large {
                    return Vec::new();
                }
                let staged = self.staged.swap_remove(at);
                self.bytes -= staged.bytes;
                staged.pieces
            }
        }
    }

    /// Forgets `from`'s unfinished frame (its publisher went away); whether it had one.
    pub(crate) fn abandon(&mut self, from: SessionId) -> bool {
        let Some(at) = self.staged.iter().position(|staged| staged.from == from) else {
            return false;
        };
        let staged = self.staged.swap_remove(at);
        self.bytes -= staged.bytes;
        true
    }
}

/// The frame's length as far as its first piece announces it (its files' lengths, and the
/// message's once its length field is in the piece), at least the piece's own length.
pub(crate) fn announced_len(first: &[u8]) -> u64 {
    let mut scanner = Scanner::new(Limits::frame_only(u64::MAX));
    let mut at = 0;
    while let Ok(Some(step)) = scanner.step(&first[at..]) {
        at += step.wire_len();
    }
    scanner.announced().max(first.len() as u64)
}
