//! [`RelayCodec`]: how the hub reads a connection — as [`Piece`]s of frames' exact wire bytes,
//! so that a large frame is forwarded while it arrives (cut-through) instead of being held whole.
//!
//! A frame of at most `cut_through_bytes` is one [`PieceKind::Whole`] piece once complete: a
//! publisher that dies in the middle of it costs its subscribers nothing. As soon as a frame's
//! headers announce more, it is streamed: a [`PieceKind::First`] piece with everything buffered so
//! far, [`PieceKind::Middle`] pieces with whatever arrives (at most [`CHUNK`] each), and a
//! [`PieceKind::Last`] piece ending exactly at the frame's end. Ping and control frames are never
//! streamed: the hub must read them whole, so they are held to `cut_through_bytes`.
//!
//! Consecutive small frames of one status that arrive together travel as one `Whole` piece (a
//! *run*, up to [`CHUNK`] bytes): the hub then routes, queues and writes a read's worth of small
//! frames at the cost of one, as a plain byte forwarder would. Pings and control frames are never
//! part of a run: the session answers each.
//!
//! Pieces are right-sized: streamed pieces are cut from a read buffer of [`CHUNK`] bytes, and the
//! larger buffer grown for a whole frame holds that frame only (what was read past its end is
//! moved to a fresh buffer), so a small frame never pins a large allocation in a subscriber's
//! queue.

use bytes::{Bytes, BytesMut};
use tokio_util::codec::Decoder;

use crate::codec::{CodecError, Limits, TejCodec};
use crate::frame::Status;
use crate::hub::control::CONTROL;
use crate::scan::{Scanner, Step};

/// The read buffer's size while streaming, and the largest streamed piece.
pub const CHUNK: usize = 256 * 1024;

/// Where a piece sits in its frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PieceKind {
    /// One or more whole frames.
    Whole,
    /// The start of a streamed frame.
    First,
    /// More of a streamed frame.
    Middle,
    /// The end of a streamed frame.
    Last,
}

impl PieceKind {
    /// Whether the piece starts a frame.
    pub fn starts_frame(self) -> bool {
        matches!(self, PieceKind::Whole | PieceKind::First)
    }

    /// Whether the piece ends a frame.
    pub fn ends_frame(self) -> bool {
        matches!(self, PieceKind::Whole | PieceKind::Last)
    }
}

/// Consecutive wire bytes of one frame, or of a run of whole frames with the same status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    /// The frames' status.
    pub status: Status,
    /// Where the bytes sit in their frame.
    pub kind: PieceKind,
    /// How many frames end in this piece: the run's length for `Whole`, 1 for `Last`, else 0.
    pub frames: u32,
    /// The bytes, exactly as received.
    pub bytes: Bytes,
}

impl Piece {
    /// How many frames begin in this piece: a run's length, 1 for a streamed frame's first
    /// piece, else 0. What a frame-counting decision taken at a frame's start (denied, unrouted,
    /// dropped) counts.
    pub fn frames_begun(&self) -> u32 {
        match self.kind {
            PieceKind::Whole => self.frames.max(1),
            PieceKind::First => 1,
            PieceKind::Middle | PieceKind::Last => 0,
        }
    }
}

/// Decodes a connection's bytes into [`Piece`]s; see the module documentation.
#[derive(Debug)]
pub struct RelayCodec {
    scanner: Scanner,
    cut_through: u64,
    /// Bytes at the front of the buffer that belong to the current frame and have been scanned.
    scanned: usize,
    /// The current frame's status, once its head has been scanned.
    status: Option<Status>,
    /// Whether the current frame is being streamed.
    streaming: bool,
    /// Whether the buffer was grown past [`CHUNK`] to hold a whole frame.
    grown: bool,
    /// Bytes of the current streamed frame already given out as pieces (for the count in
    /// [`CodecError::Truncated`]: they are no longer in the buffer).
    given: u64,
}

impl RelayCodec {
    /// A codec for frames within `limits`, relaying whole those of at most `cut_through` bytes.
    pub fn new(limits: Limits, cut_through: u64) -> RelayCodec {
        RelayCodec {
            scanner: Scanner::new(limits),
            cut_through,
            scanned: 0,
            status: None,
            streaming: false,
            grown: false,
            given: 0,
        }
    }

    /// Forgets the current frame (after an error: the stream is out of step anyway).
    fn reset(&mut self) {
        self.scanner.reset();
        self.scanned = 0;
        self.status = None;
        self.streaming = false;
        self.grown = false;
        self.given = 0;
    }

    /// Whether part of a frame has been read.
    pub fn is_mid_frame(&self, buffered: usize) -> bool {
        self.streaming || buffered > 0
    }

    fn piece(&mut self, src: &mut BytesMut, kind: PieceKind, status: Status) -> Piece {
        let frames = u32::from(kind.ends_frame());
        self.piece_of(src, kind, status, frames)
    }

    fn piece_of(
        &mut self,
        src: &mut BytesMut,
        kind: PieceKind,
        status: Status,
        frames: u32,
    ) -> Piece {
        let bytes = src.split_to(self.scanned).freeze();
        self.scanned = 0;
        self.given += bytes.len() as u64;
        if kind.ends_frame() {
            self.status = None;
            self.streaming = false;
            self.given = 0;
            if std::mem::take(&mut self.grown) && !src.is_empty() {
                // The grown buffer now holds this frame only.
                let mut fresh = BytesMut::with_capacity(CHUNK.max(src.len()));
                fresh.extend_from_slice(src);
                *src = fresh;
            }
        }
        Piece {
            status,
            kind,
            frames,
            bytes,
        }
    }

    /// Room for the next read: towards the end of a whole frame (growing by at most what has
    /// arrived, see [`TejCodec::reserve_towards`]), or one chunk while streaming.
    fn reserve(&mut self, src: &mut BytesMut) {
        if self.streaming {
            if src.capacity() - src.len() < CHUNK / 4 {
                src.reserve(CHUNK);
            }
            return;
        }
        if src.is_empty() && self.scanner.at_boundary() {
            // Between frames with nothing buffered: the session reads into what it has (an idle
            // one gives its buffer back), and grows it once a frame is under way.
            return;
        }
        let header = (self.scanned + self.scanner.header_bytes_needed(&src[self.scanned..])) as u64;
        let frame = if self.scanner.at_boundary() {
            header
        } else {
            self.scanner.announced().max(header)
        };
        if frame > CHUNK as u64 {
            self.grown = true;
        }
        TejCodec::reserve_towards(src, frame.max(CHUNK as u64));
    }
}

impl Decoder for RelayCodec {
    type Item = Piece;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Piece>, CodecError> {
        let result = self.decode_piece(src);
        if result.is_err() {
            self.reset();
        }
        result
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Piece>, CodecError> {
        match self.decode(src)? {
            Some(piece) => Ok(Some(piece)),
            None if src.is_empty() && !self.streaming => Ok(None),
            None => {
                let received = self.given + src.len() as u64;
                src.clear();
                self.reset();
                Err(CodecError::Truncated { received })
            }
        }
    }
}

impl RelayCodec {
    /// The whole message-only frames at the front of `src` that share the first one's status, as
    /// one piece of at most [`CHUNK`] bytes (or one frame, if larger); `None` when the first frame
    /// is not such a frame, leaving it to the scanner.
    fn run(&mut self, src: &mut BytesMut) -> Option<Piece> {
        let (status, _, first) = self.scanner.whole_message_frame(src)?;
        if first as u64 > self.cut_through {
            return None;
        }
        let mut end = first;
        let mut frames = 1u32;
        if status != Status::PING && status != CONTROL {
            while let Some((next, _, len)) = self.scanner.whole_message_frame(&src[end..]) {
                if next != status || end + len > CHUNK || len as u64 > self.cut_through {
                    break;
                }
                end += len;
                frames += 1;
            }
        }
        self.scanned = end;
        Some(self.piece_of(src, PieceKind::Whole, status, frames))
    }

    fn decode_piece(&mut self, src: &mut BytesMut) -> Result<Option<Piece>, CodecError> {
        if self.scanned == 0 {
            if let Some(run) = self.run(src) {
                return Ok(Some(run));
            }
        }
        loop {
            let step = self.scanner.step(&src[self.scanned..])?;
            let Some(step) = step else {
                // While streaming, what has arrived goes on at once.
                if let (true, true, Some(status)) = (self.streaming, self.scanned > 0, self.status)
                {
                    return Ok(Some(self.piece(src, PieceKind::Middle, status)));
                }
                self.reserve(src);
                return Ok(None);
            };
            if let Step::Head { status, .. } = step {
                self.status = Some(status);
            }
            self.scanned += step.wire_len();
            let Some(status) = self.status else {
                continue;
            };
            if self.scanner.at_boundary() {
                let kind = if self.streaming {
                    PieceKind::Last
                } else {
                    PieceKind::Whole
                };
                return Ok(Some(self.piece(src, kind, status)));
            }
            if self.streaming {
                if self.scanned >= CHUNK {
                    return Ok(Some(self.piece(src, PieceKind::Middle, status)));
                }
            } else if self.scanner.announced() > self.cut_through {
                if status == Status::PING || status == CONTROL {
                    return Err(CodecError::FrameTooLarge {
                        len: self.scanner.announced(),
                        max: self.cut_through,
                    });
                }
                self.streaming = true;
                return Ok(Some(self.piece(src, PieceKind::First, status)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Frame;

    fn status(code: u8) -> Status {
        Status::new(code).unwrap_or(Status::PING)
    }

    /// Feeds `wire` `chunk` bytes at a time; returns every piece.
    fn pieces(wire: &[u8], chunk: usize, cut_through: u64) -> Vec<Piece> {
        let mut codec = RelayCodec::new(Limits::frame_only(u64::MAX), cut_through);
        let mut src = BytesMut::new();
        let mut out = Vec::new();
        for part in wire.chunks(chunk) {
            src.extend_from_slice(part);
            while let Ok(Some(piece)) = codec.decode(&mut src) {
                out.push(piece);
            }
        }
        out
    }

    fn concat(pieces: &[Piece]) -> Vec<u8> {
        pieces.iter().flat_map(|p| p.bytes.to_vec()).collect()
    }

    #[test]
    fn small_frames_are_whole_large_ones_streamed() {
        let small = Frame::message(status(5), vec![1u8; 100]);
        let large = Frame::builder(status(6))
            .file("big", vec![2u8; 300_000])
            .message("end")
            .build();
        let mut wire = Vec::new();
        for frame in [&small, &large, &small] {
            wire.extend_from_slice(&frame.to_wire().unwrap_or_default());
        }
        for chunk in [1, 7, 1000, 70_000, wire.len()] {
            let got = pieces(&wire, chunk, 1000);
            assert_eq!(concat(&got), wire, "chunk {chunk}");
            let kinds: Vec<PieceKind> = got.iter().map(|p| p.kind).collect();
            assert_eq!(kinds.first(), Some(&PieceKind::Whole));
            assert_eq!(kinds.last(), Some(&PieceKind::Whole));
            assert_eq!(kinds[1], PieceKind::First, "chunk {chunk}");
            assert_eq!(kinds[kinds.len() - 2], PieceKind::Last, "chunk {chunk}");
            if chunk < CHUNK {
                // Reads of at most a chunk: streamed pieces are at most a chunk.
                assert!(got.iter().all(|p| p.bytes.len() <= CHUNK + chunk));
            }
            assert!(got[1..got.len() - 1].iter().all(|p| p.status == status(6)));
        }
    }

    #[test]
    fn small_frames_of_one_status_travel_as_runs() {
        let mut wire = Vec::new();
        let mut push = |code: u8, n: usize| {
            for i in 0..n {
                let frame = Frame::message(status(code), format!("{code}:{i}"));
                wire.extend_from_slice(&frame.to_wire().unwrap_or_default());
            }
        };
        push(5, 100);
        push(6, 1);
        push(2, 3);
        push(5, 2);
        let got = pieces(&wire, wire.len(), 1 << 20);
        let runs: Vec<(u8, u32)> = got.iter().map(|p| (p.status.code(), p.frames)).collect();
        // Pings are answered one by one, never merged.
        assert_eq!(runs, [(5, 100), (6, 1), (2, 1), (2, 1), (2, 1), (5, 2)]);
        assert!(got.iter().all(|p| p.kind == PieceKind::Whole));
        assert_eq!(concat(&got), wire);
    }

    #[test]
    fn control_frames_are_held_to_the_cut_through_size() {
        let control = Frame::message(CONTROL, vec![b'x'; 5000]).to_wire();
        let mut src = BytesMut::from(&control.unwrap_or_default()[..]);
        let mut codec = RelayCodec::new(Limits::frame_only(u64::MAX), 1000);
        assert!(matches!(
            codec.decode(&mut src),
            Err(CodecError::FrameTooLarge { max: 1000, .. })
        ));
    }

    #[test]
    fn eof_inside_a_streamed_frame_is_truncated() {
        let large = Frame::message(status(7), vec![3u8; 10_000]).to_wire();
        let wire = large.unwrap_or_default();
        let mut src = BytesMut::from(&wire[..5000]);
        let mut codec = RelayCodec::new(Limits::frame_only(u64::MAX), 1000);
        let mut kinds = Vec::new();
        while let Ok(Some(piece)) = codec.decode(&mut src) {
            kinds.push(piece.kind);
        }
        // The head as soon as it announces a large frame, then what has arrived.
        assert_eq!(kinds, [PieceKind::First, PieceKind::Middle]);
        // Counted from the frame's first byte, not from what is still buffered.
        assert!(matches!(
            codec.decode_eof(&mut src),
            Err(CodecError::Truncated { received: 5000 })
        ));
    }
}
