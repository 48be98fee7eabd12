//! The hub's `RelayCodec` (src/hub/delivery/relay.rs) over arbitrary bytes cut into arbitrary reads,
//! with arbitrary frame limits and cut-through sizes.
//!
//! Asserts: the pieces' bytes concatenate to exactly the input consumed (all of it after a clean
//! end); pieces follow the grammar `(Whole | First Middle* Last)*`, a streamed frame's pieces
//! all carrying its status; a `Whole` piece is `frames` whole frames of its status, each within
//! the cut-through size, several only when they are message-only, relayable and together within
//! one chunk; a streamed frame is one frame larger than the cut-through size, never a ping or
//! control frame; `frames` counts the frames ending in each piece; and the frames so relayed are
//! the ones `TejCodec` decodes from the whole input, the same list when the relay ends cleanly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tej_hub::fuzzing::{PieceKind, RelayCodec, CHUNK};
use tej_hub::hub::control::CONTROL;
use tej_hub::{Frame, Limits, Status};
use tej_hub_fuzz::{decode_frames, decode_reads, End, Setup};

/// Every frame in `bytes`, which must hold whole frames only.
fn frames_of(bytes: &[u8]) -> Vec<Frame> {
    let (frames, end) = decode_frames(Limits::frame_only(u64::MAX), bytes);
    assert_eq!(end, End::Clean, "a piece's frames do not decode");
    frames.into_iter().map(|wire| wire.frame).collect()
}

fuzz_target!(|input: &[u8]| {
    let Some((setup, data)) = Setup::split(input) else {
        return;
    };
    let (max_frame, cut_through) = (setup.frame_limit(), setup.threshold());
    let mut codec = RelayCodec::new(Limits::frame_only(max_frame), cut_through);
    let (pieces, end, left) = decode_reads(&mut codec, &setup.reads(data));

    let concat: Vec<u8> = pieces
        .iter()
        .flat_map(|p| p.bytes.iter().copied())
        .collect();
    assert!(
        data.starts_with(&concat),
        "the pieces are not the input's bytes"
    );
    if end == End::Clean {
        assert_eq!(concat.len(), data.len(), "a clean end left bytes unrelayed");
        assert_eq!(left, 0);
    }

    let mut relayed: Vec<Frame> = Vec::new();
    let mut streamed: Option<(Status, Vec<u8>)> = None;
    for piece in &pieces {
        assert!(!piece.bytes.is_empty(), "an empty piece");
        if piece.kind != PieceKind::Whole {
            let ends = u32::from(piece.kind == PieceKind::Last);
            assert_eq!(piece.frames, ends, "a streamed piece's frame count");
        }
        match piece.kind {
            PieceKind::Whole => {
                assert!(streamed.is_none(), "a whole piece inside a streamed frame");
                let frames = frames_of(&piece.bytes);
                assert_eq!(
                    frames.len(),
                    piece.frames as usize,
                    "Whole piece frame count"
                );
                for frame in &frames {
                    assert_eq!(frame.status, piece.status);
                    assert!(
                        frame.encoded_len() <= cut_through,
                        "a whole frame past cut-through"
                    );
                }
                if frames.len() > 1 {
                    assert!(
                        frames.iter().all(|f| f.files.is_empty()),
                        "a run with files"
                    );
                    assert!(piece.status != Status::PING && piece.status != CONTROL);
                    assert!(piece.bytes.len() <= CHUNK, "a run past one chunk");
                }
                relayed.extend(frames);
            }
            PieceKind::First => {
                assert!(streamed.is_none(), "a streamed frame inside another");
                streamed = Some((piece.status, piece.bytes.to_vec()));
            }
            PieceKind::Middle | PieceKind::Last => {
                let (status, bytes) = streamed.as_mut().expect("a streamed piece without First");
                assert_eq!(*status, piece.status, "a streamed frame changed status");
                bytes.extend_from_slice(&piece.bytes);
                if piece.kind == PieceKind::Last {
                    let frames = frames_of(bytes);
                    assert_eq!(frames.len(), 1, "a streamed frame is not one frame");
                    let frame = &frames[0];
                    assert_eq!(frame.status, piece.status);
                    assert!(
                        frame.encoded_len() > cut_through,
                        "a small frame was streamed"
                    );
                    assert!(frame.status != Status::PING && frame.status != CONTROL);
                    relayed.extend(frames);
                    streamed = None;
                }
            }
        }
    }

    let (expected, expected_end) = decode_frames(Limits::frame_only(max_frame), data);
    let expected: Vec<Frame> = expected.into_iter().map(|wire| wire.frame).collect();
    assert!(
        expected.starts_with(&relayed),
        "the relay's frames are not the codec's"
    );
    if end == End::Clean {
        assert_eq!(
            expected_end,
            End::Clean,
            "the relay accepted what the codec refuses"
        );
        assert_eq!(relayed, expected);
    }
});
