//! What the fuzz targets share: an input's first bytes choose the limits and how the rest is cut
//! into reads ([`Setup`]), and [`decode_frames`] is the reference decoding the targets compare
//! against (the whole input in one buffer, through [`TejCodec::decode_wire`]).

use std::fmt::Display;

use bytes::BytesMut;
use tej_hub::{Limits, TejCodec, WireFrame};
use tokio_util::codec::Decoder;

/// How many leading bytes of an input are the setup, not data.
pub const SETUP_LEN: usize = 4;

/// The largest frames the setup may allow, smallest first: from the smallest frame (18 bytes)
/// to no limit.
const FRAME_LIMITS: [u64; 6] = [18, 64, 1024, 4096, 1 << 20, u64::MAX];
/// Limits on the file count.
const FILE_LIMITS: [u64; 4] = [0, 1, 4, 1024];
/// Limits on the message length.
const MESSAGE_LIMITS: [u64; 4] = [0, 16, 1024, u64::MAX];
/// The largest read: one byte at a time up to the whole input.
const MAX_READS: [usize; 6] = [1, 2, 7, 64, 4096, usize::MAX];

/// The fuzzer's choices for one run, decoded from an input's first [`SETUP_LEN`] bytes.
#[derive(Clone, Copy, Debug)]
pub struct Setup {
    bytes: [u8; SETUP_LEN],
}

impl Setup {
    /// The setup and the data of `input`; `None` when it is shorter than the setup.
    pub fn split(input: &[u8]) -> Option<(Setup, &[u8])> {
        let (head, data) = input.split_first_chunk::<SETUP_LEN>()?;
        Some((Setup { bytes: *head }, data))
    }

    /// Codec limits (byte 1): a frame, file count and message limit each.
    pub fn limits(&self) -> Limits {
        let b = self.bytes[1];
        Limits {
            max_frame_bytes: FRAME_LIMITS[usize::from(b) % FRAME_LIMITS.len()],
            max_files: FILE_LIMITS[usize::from(b >> 3) % FILE_LIMITS.len()],
            max_message_bytes: MESSAGE_LIMITS[usize::from(b >> 5) % MESSAGE_LIMITS.len()],
        }
    }

    /// A whole-frame limit only (byte 1), as the hub uses.
    pub fn frame_limit(&self) -> u64 {
        FRAME_LIMITS[usize::from(self.bytes[1]) % FRAME_LIMITS.len()]
    }

    /// A size threshold from 18 (the smallest frame) to 1 MiB (byte 2), e.g. a cut-through size.
    pub fn threshold(&self) -> u64 {
        [18, 19, 40, 100, 1000, 4096, 1 << 20][usize::from(self.bytes[2]) % 7]
    }

    /// `data` cut into reads (byte 0: the largest read; byte 3: the seed of their sizes). Every
    /// read has at least one byte; together they are `data`.
    pub fn reads<'a>(&self, data: &'a [u8]) -> Vec<&'a [u8]> {
        let max = MAX_READS[usize::from(self.bytes[0]) % MAX_READS.len()];
        let mut state = u64::from(self.bytes[3]) | 0x9e37_79b9_0000_0100;
        let mut reads = Vec::new();
        let mut rest = data;
        while !rest.is_empty() {
            // xorshift64: any non-zero state works.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = if max == usize::MAX {
                rest.len()
            } else {
                1 + (state as usize) % max
            };
            let (read, more) = rest.split_at(len.min(rest.len()));
            reads.push(read);
            rest = more;
        }
        reads
    }
}

/// How a decoding ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// Every byte was decoded.
    Clean,
    /// The codec refused the stream; the error's text.
    Error(String),
}

/// The frames of `data` decoded in one buffer by [`TejCodec::decode_wire`] (and
/// `decode_wire_eof` at the end), up to the first error.
pub fn decode_frames(limits: Limits, data: &[u8]) -> (Vec<WireFrame>, End) {
    let (frames, end, _) = decode_reads(&mut WireDecoder(TejCodec::new(limits)), &[data]);
    (frames, end)
}

/// [`TejCodec`]'s `decode_wire` as a [`Decoder`].
struct WireDecoder(TejCodec);

impl Decoder for WireDecoder {
    type Item = WireFrame;
    type Error = tej_hub::CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<WireFrame>, Self::Error> {
        self.0.decode_wire(src)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<WireFrame>, Self::Error> {
        self.0.decode_wire_eof(src)
    }
}

/// Feeds `reads` to `codec` one after another, taking every item after each (`decode_eof` after
/// the last), up to the first error. Returns the items, how it ended and the bytes left in the
/// buffer.
pub fn decode_reads<D>(codec: &mut D, reads: &[&[u8]]) -> (Vec<D::Item>, End, usize)
where
    D: Decoder,
    D::Error: Display,
{
    let mut src = BytesMut::new();
    let mut items = Vec::new();
    for (at, read) in reads.iter().enumerate() {
        src.extend_from_slice(read);
        let last = at + 1 == reads.len();
        // Every item consumes a byte, but for at most one that follows each (a part codec's
        // `FileEnd` and `End`): at most twice the buffer's length, plus the end.
        for _ in 0..=2 * src.len() + 2 {
            let decoded = if last {
                codec.decode_eof(&mut src)
            } else {
                codec.decode(&mut src)
            };
            match decoded {
                Ok(Some(item)) => items.push(item),
                Ok(None) if last => return (items, End::Clean, src.len()),
                Ok(None) => break,
                Err(error) => return (items, End::Error(error.to_string()), src.len()),
            }
        }
        if last {
            panic!("the codec returned more items than the input can hold");
        }
    }
    // No read at all: the end of an empty stream.
    match codec.decode_eof(&mut src) {
        Ok(Some(item)) => items.push(item),
        Ok(None) => {}
        Err(error) => return (items, End::Error(error.to_string()), src.len()),
    }
    (items, End::Clean, src.len())
}
