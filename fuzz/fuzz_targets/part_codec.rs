//! `PartCodec` (tej/src/stream.rs) over arbitrary bytes cut into arbitrary reads.
//!
//! Asserts: the parts follow the documented grammar (`Head`, per file `FileStart`, non-empty
//! `FileData` adding up to the announced length, `FileEnd`, then `MessageStart`, non-empty
//! `MessageData` adding up, `End`), and the frames they assemble, with the outcome (clean end or
//! the same error), are exactly what `TejCodec` decodes from the whole input at once.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tej_hub::stream::{Part, PartCodec};
use tej_hub::{File, Frame, Limits};
use tej_hub_fuzz::{decode_frames, decode_reads, End, Setup};

/// Frames assembled from parts, checking the grammar as they come.
#[derive(Default)]
struct Assembler {
    frames: Vec<Frame>,
    /// The frame under way and how many files its head announced.
    frame: Option<(Frame, u64)>,
    /// The file under way: index, name, announced length, data so far.
    file: Option<(u64, String, u64, Vec<u8>)>,
    /// The message under way: announced length, data so far.
    message: Option<(u64, Vec<u8>)>,
}

impl Assembler {
    fn push(&mut self, part: Part) {
        match part {
            Part::Head {
                status,
                version,
                files,
            } => {
                assert!(self.frame.is_none(), "Head inside a frame");
                let frame = Frame {
                    status,
                    version,
                    files: Vec::new(),
                    message: Bytes::new(),
                };
                self.frame = Some((frame, files));
            }
            Part::FileStart { index, name, len } => {
                let (frame, files) = self.frame.as_ref().expect("FileStart outside a frame");
                assert!(
                    self.file.is_none() && self.message.is_none(),
                    "FileStart misplaced"
                );
                assert_eq!(index, frame.files.len() as u64, "FileStart out of order");
                assert!(index < *files, "more files than announced");
                self.file = Some((index, name, len, Vec::new()));
            }
            Part::FileData(data) => {
                let (_, _, len, so_far) = self.file.as_mut().expect("FileData outside a file");
                assert!(!data.is_empty(), "empty FileData");
                so_far.extend_from_slice(&data);
                assert!(so_far.len() as u64 <= *len, "more file data than announced");
            }
            Part::FileEnd { index } => {
                let (at, name, len, data) = self.file.take().expect("FileEnd outside a file");
                assert_eq!(index, at, "FileEnd of another file");
                assert_eq!(data.len() as u64, len, "a file ended short");
                let (frame, _) = self.frame.as_mut().expect("a file outside a frame");
                frame.files.push(File {
                    name,
                    data: data.into(),
                });
            }
            Part::MessageStart { len } => {
                let (frame, files) = self.frame.as_ref().expect("MessageStart outside a frame");
                assert!(
                    self.file.is_none() && self.message.is_none(),
                    "MessageStart misplaced"
                );
                assert_eq!(
                    frame.files.len() as u64,
                    *files,
                    "message before the last file"
                );
                self.message = Some((len, Vec::new()));
            }
            Part::MessageData(data) => {
                let (len, so_far) = self
                    .message
                    .as_mut()
                    .expect("MessageData outside a message");
                assert!(!data.is_empty(), "empty MessageData");
                so_far.extend_from_slice(&data);
                assert!(so_far.len() as u64 <= *len, "more message than announced");
            }
            Part::End => {
                let (len, message) = self.message.take().expect("End before the message");
                assert_eq!(message.len() as u64, len, "the message ended short");
                let (mut frame, _) = self.frame.take().expect("End outside a frame");
                frame.message = message.into();
                self.frames.push(frame);
            }
        }
    }
}

/// Decodes `reads` one after another into parts, assembled; stops at the first error.
fn decode_parts(limits: Limits, reads: &[&[u8]]) -> (Vec<Frame>, End) {
    let (parts, end, _) = decode_reads(&mut PartCodec::new(limits), reads);
    let mut assembler = Assembler::default();
    for part in parts {
        assembler.push(part);
    }
    if end == End::Clean {
        assert!(assembler.frame.is_none(), "a clean end inside a frame");
    }
    (assembler.frames, end)
}

fuzz_target!(|input: &[u8]| {
    let Some((setup, data)) = Setup::split(input) else {
        return;
    };
    let limits = setup.limits();
    let (expected, expected_end) = decode_frames(limits, data);
    let expected: Vec<Frame> = expected.into_iter().map(|wire| wire.frame).collect();
    let (frames, end) = decode_parts(limits, &setup.reads(data));
    assert_eq!(
        frames, expected,
        "PartCodec and TejCodec disagree on the frames"
    );
    assert_eq!(
        end, expected_end,
        "PartCodec and TejCodec disagree on the outcome"
    );
});
