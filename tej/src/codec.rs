//! The TEJ v1 codec: [`TejCodec`] (a tokio-util [`Decoder`]/[`Encoder`]), its [`Limits`] and
//! [`CodecError`], and [`FrameBuf`], the zero-copy outbound buffer used by the connections.
//!
//! The decoder faces untrusted input. It walks a frame with the crate's step-wise scanner of the
//! frame grammar, resuming where the previous call stopped (a frame arriving one byte at a time
//! costs linear work); the scanner checks every announced length against [`Limits`] before the
//! body is waited for. The decoder never reserves memory from an announced length: it grows the
//! read buffer at most by what has already arrived (plus 64 KiB), so a header announcing 2^64-1
//! bytes costs nothing until the bytes are really sent. A frame's bytes stay in the read buffer
//! until it is complete; then the whole frame is split off as one [`Bytes`] and the file data and
//! message are slices of it: decoding copies no payload byte, and a relay can forward the frame's
//! exact wire bytes ([`WireFrame`]).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::ops::Range;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::frame::{File, Frame, Status, MESSAGE_LEN_FIELD};
use crate::scan::{Scanner, Step, SMALL_HEAD};

/// Size limits a [`TejCodec`] enforces, on decode (what a peer may send) and on encode (what we
/// send, so a peer with the same limits accepts it).
///
/// Every limit counts bytes on the wire. `max_frame_bytes` counts the whole encoded frame, header
/// included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest encoded frame, header included. Default 64 MiB.
    pub max_frame_bytes: u64,
    /// Most files in one frame. Default 1,024.
    pub max_files: u64,
    /// Longest message. Default 64 MiB.
    pub max_message_bytes: u64,
}

impl Limits {
    /// The default largest frame: 64 MiB.
    pub const DEFAULT_MAX_FRAME_BYTES: u64 = 64 * 1024 * 1024;
    /// The default most files per frame.
    pub const DEFAULT_MAX_FILES: u64 = 1024;
    /// The default longest message: 64 MiB.
    pub const DEFAULT_MAX_MESSAGE_BYTES: u64 = 64 * 1024 * 1024;

    /// Limits that bound only the whole frame: any number of files and any message length are
    /// accepted as long as the encoded frame fits in `max_frame_bytes`.
    pub const fn frame_only(max_frame_bytes: u64) -> Limits {
        Limits {
            max_frame_bytes,
            max_files: u64::MAX,
            max_message_bytes: u64::MAX,
        }
    }

    /// Checks a frame we are about to send against these limits.
    ///
    /// # Errors
    /// [`CodecError::TooManyFiles`], [`CodecError::FileNameTooLong`],
    /// [`CodecError::MessageTooLarge`] or [`CodecError::FrameTooLarge`].
    pub fn check(&self, frame: &Frame) -> Result<(), CodecError> {
        let files = frame.files.len() as u64;
        if files > self.max_files {
            return Err(CodecError::TooManyFiles {
                count: files,
                max: self.max_files,
            });
        }
        if let Some(file) = frame
            .files
            .iter()
            .find(|f| f.name.len() > usize::from(u16::MAX))
        {
            return Err(CodecError::FileNameTooLong {
                len: file.name.len(),
            });
        }
        let message = frame.message.len() as u64;
        if message > self.max_message_bytes {
            return Err(CodecError::MessageTooLarge {
                len: message,
                max: self.max_message_bytes,
            });
        }
        let len = frame.encoded_len();
        if len > self.max_frame_bytes {
            return Err(CodecError::FrameTooLarge {
                len,
                max: self.max_frame_bytes,
            });
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: Self::DEFAULT_MAX_FRAME_BYTES,
            max_files: Self::DEFAULT_MAX_FILES,
            max_message_bytes: Self::DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

/// What went wrong while decoding or encoding a frame.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The status byte's most significant bit is clear: the peer does not speak TEJ.
    #[error("status byte {byte:#04x} has its most significant bit clear")]
    InvalidStatusByte {
        /// The offending byte.
        byte: u8,
    },
    /// The frame is (at least) `len` bytes long, more than `max`.
    #[error("frame of at least {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The frame's length as far as known (a lower bound while decoding).
        len: u64,
        /// The limit in force.
        max: u64,
    },
    /// The frame carries more files than allowed.
    #[error("frame carries {count} files, the limit is {max}")]
    TooManyFiles {
        /// The announced number of files.
        count: u64,
        /// The limit in force.
        max: u64,
    },
    /// The message is longer than allowed.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    MessageTooLarge {
        /// The announced message length.
        len: u64,
        /// The limit in force.
        max: u64,
    },
    /// A file name is not valid UTF-8.
    #[error("name of file {index} is not valid UTF-8")]
    FileNameNotUtf8 {
        /// Position of the file in the frame, from 0.
        index: u64,
    },
    /// A file name is longer than the u16 length field can say (encode only).
    #[error("file name of {len} bytes does not fit the 16-bit length field")]
    FileNameTooLong {
        /// The name's length in bytes.
        len: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame after {received} bytes of it")]
    Truncated {
        /// Bytes of the unfinished frame that had arrived.
        received: u64,
    },
    /// The underlying stream failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The frame being decoded, as far as its headers have been parsed; its bytes stay in the read
/// buffer until it is complete.
#[derive(Debug, Default)]
struct PartialFrame {
    status: Status,
    version: u8,
    /// Name and data position (from the frame's first byte) of each file parsed.
    files: Vec<(String, Range<usize>)>,
    /// Where the message starts, once its length field is parsed.
    message: usize,
}

/// Growth allowed beyond what has arrived when waiting for a body.
const READ_AHEAD: usize = 64 * 1024;

/// A decoded frame together with its exact bytes on the wire.
///
/// The frame's payloads are slices of `wire` (no copy), so a relay can forward `wire` unchanged
/// — byte-identical, one reference count per receiver — and still read the frame's fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireFrame {
    /// The decoded frame.
    pub frame: Frame,
    /// The frame as it was received, header included.
    pub wire: Bytes,
}

/// A tokio-util codec for TEJ v1 frames, bounded by [`Limits`].
///
/// Decoding is zero-copy and incremental (see the module documentation). Encoding writes byte
/// lengths and copies each payload once into the destination buffer; [`FrameBuf`] is the
/// alternative that copies no large payload at all.
///
/// # Examples
/// ```
/// use bytes::BytesMut;
/// use tokio_util::codec::{Decoder, Encoder};
/// use tej::{Frame, Status, TejCodec};
///
/// let mut codec = TejCodec::default();
/// let mut wire = BytesMut::new();
/// let frame = Frame::message(Status::new(5).unwrap(), "hello");
/// codec.encode(&frame, &mut wire)?;
/// assert_eq!(codec.decode(&mut wire)?, Some(frame));
/// # Ok::<(), tej::CodecError>(())
/// ```
#[derive(Debug)]
pub struct TejCodec {
    /// The frame grammar and its checks; it stands where `parsed` ends.
    scanner: Scanner,
    /// Bytes of the current frame parsed so far: the first `parsed` bytes of the read buffer.
    /// Each call resumes there instead of parsing the frame again from its first byte.
    parsed: usize,
    /// What the current frame's headers said so far.
    partial: PartialFrame,
}

impl Default for TejCodec {
    fn default() -> Self {
        TejCodec::new(Limits::default())
    }
}

impl TejCodec {
    /// A codec enforcing `limits`.
    pub fn new(limits: Limits) -> TejCodec {
        TejCodec {
            scanner: Scanner::new(limits),
            parsed: 0,
            partial: PartialFrame::default(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.scanner.limits()
    }

    /// Whether the decoder is inside a frame (some of its bytes have been parsed).
    pub fn is_mid_frame(&self) -> bool {
        !self.scanner.at_boundary()
    }

    /// Decodes the next frame in `src` together with its wire bytes, like
    /// [`Decoder::decode`].
    ///
    /// # Errors
    /// Any decode [`CodecError`]; the decoder then starts afresh, but the stream is out of step.
    pub fn decode_wire(&mut self, src: &mut BytesMut) -> Result<Option<WireFrame>, CodecError> {
        if let Some((status, version, total)) = self.scanner.whole_message_frame(src) {
            let wire = src.split_to(total).freeze();
            let message = wire.slice(SMALL_HEAD..);
            return Ok(Some(WireFrame {
                frame: Frame {
                    status,
                    version,
                    files: Vec::new(),
                    message,
                },
                wire,
            }));
        }
        self.decode_scanned(src)
    }

    /// [`decode_wire`](TejCodec::decode_wire) at the end of the stream: a frame cut short is
    /// [`CodecError::Truncated`].
    ///
    /// # Errors
    /// Any decode [`CodecError`].
    pub fn decode_wire_eof(&mut self, src: &mut BytesMut) -> Result<Option<WireFrame>, CodecError> {
        match self.decode_wire(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => {
                let received = src.len() as u64;
                self.reset();
                src.clear();
                Err(CodecError::Truncated { received })
            }
        }
    }

    /// Forgets the current frame.
    fn reset(&mut self) {
        self.scanner.reset();
        self.parsed = 0;
        self.partial = PartialFrame::default();
    }

    /// Grows `src` towards `total` buffered bytes by at most what has arrived plus
    /// [`READ_AHEAD`] per step (doubling at most, never past `total`), so memory follows the bytes
    /// received, not the bytes announced.
    pub fn reserve_towards(src: &mut BytesMut, total: u64) {
        let missing = total.saturating_sub(src.len() as u64);
        let step = src.len().max(READ_AHEAD) as u64;
        let additional = missing.min(step) as usize;
        if src.capacity() - src.len() < additional && !src.try_reclaim(additional) {
            // Doubling, but never past the frame's end: `BytesMut::reserve` grows like a `Vec`
            // and would put a frame of 16 MiB and a few bytes in a 32 MiB allocation.
            let cap = (src.len() + additional)
                .max(2 * src.capacity())
                .min(total as usize)
                .max(src.len() + additional);
            let mut grown = BytesMut::with_capacity(cap);
            grown.extend_from_slice(src);
            *src = grown;
        }
    }

    /// Makes room for what the scanner waits for, once it has taken every step `src` holds.
    fn reserve_for_next_step(&self, src: &mut BytesMut) {
        if self.scanner.at_boundary() {
            // A head is 10 bytes: nothing to make room for.
            return;
        }
        let left = self.scanner.payload_left();
        if left > 0 {
            // A payload step takes all there is, so `src` ends at `parsed`. Grow towards the
            // payload's end and the message length field that follows a file's data, never past
            // the frame's announced length (for the message, exactly the frame's end).
            let end = (self.parsed as u64)
                .saturating_add(left)
                .saturating_add(MESSAGE_LEN_FIELD)
                .min(self.scanner.announced());
            Self::reserve_towards(src, end);
        } else {
            let buffered = src.len() - self.parsed;
            let needed = self.scanner.header_bytes_needed(&src[self.parsed..]);
            if buffered < needed {
                // At most 65,545 bytes (a file head): bounded by the field widths, not by the
                // peer.
                src.reserve(needed - buffered);
            }
        }
    }

    /// Splits the frame the scanner has just finished off `src`; its payloads are slices of it.
    fn split_frame(&mut self, src: &mut BytesMut) -> WireFrame {
        // The next frame's list starts empty: capacity follows the files that arrive, never an
        // announced count.
        let files = std::mem::take(&mut self.partial.files);
        let PartialFrame {
            status,
            version,
            message,
            ..
        } = self.partial;
        let wire = src.split_to(self.parsed).freeze();
        let message = wire.slice(message..self.parsed);
        self.parsed = 0;
        let files = files
            .into_iter()
            .map(|(name, data)| File {
                name,
                data: wire.slice(data),
            })
            .collect();
        WireFrame {
            frame: Frame {
                status,
                version,
                files,
                message,
            },
            wire,
        }
    }

    /// Resumes the current frame where the previous call stopped, one scanner step at a time,
    /// and splits it off `src` once the scanner is back at a frame boundary.
    fn decode_scanned(&mut self, src: &mut BytesMut) -> Result<Option<WireFrame>, CodecError> {
        loop {
            let step = match self.scanner.step(&src[self.parsed..]) {
                Ok(Some(step)) => step,
                Ok(None) => break,
                Err(error) => {
                    self.reset();
                    return Err(error);
                }
            };
            self.parsed += step.wire_len();
            let at = self.parsed;
            let ended = match step {
                Step::Head {
                    status, version, ..
                } => {
                    // `files` is empty between frames.
                    self.partial.status = status;
                    self.partial.version = version;
                    false
                }
                Step::FileHead { name, .. } => {
                    self.partial.files.push((name.to_owned(), at..at));
                    false
                }
                Step::FileData(_) => {
                    if let Some((_, data)) = self.partial.files.last_mut() {
                        data.end = at;
                    }
                    false
                }
                // A frame ends with its message.
                Step::MessageHead { .. } => {
                    self.partial.message = at;
                    self.scanner.at_boundary()
                }
                Step::MessageData(_) => self.scanner.at_boundary(),
            };
            if ended {
                return Ok(Some(self.split_frame(src)));
            }
            if at == src.len() {
                // Every step waits for at least one more byte.
                break;
            }
        }
        self.reserve_for_next_step(src);
        Ok(None)
    }
}

impl Decoder for TejCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        if let Some((status, version, total)) = self.scanner.whole_message_frame(src) {
            // No `wire` handle to make and drop: two atomic reference-count updates per frame
            // fewer, which halves the cost of decoding a small frame.
            let mut message = src.split_to(total).freeze();
            message.advance(SMALL_HEAD);
            return Ok(Some(Frame {
                status,
                version,
                files: Vec::new(),
                message,
            }));
        }
        Ok(self.decode_scanned(src)?.map(|decoded| decoded.frame))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        Ok(self.decode_wire_eof(src)?.map(|decoded| decoded.frame))
    }
}

/// [`TejCodec`] decoding to [`WireFrame`]s: for relays that forward frames unchanged.
#[derive(Debug, Default)]
pub struct WireCodec(pub TejCodec);

impl Decoder for WireCodec {
    type Item = WireFrame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<WireFrame>, CodecError> {
        self.0.decode_wire(src)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<WireFrame>, CodecError> {
        self.0.decode_wire_eof(src)
    }
}

impl Encoder<&Frame> for TejCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.limits().check(frame)?;
        // Our own frame, checked against the limits: its length is trusted.
        dst.reserve(frame.encoded_len() as usize);
        put_head(frame, dst);
        for file in &frame.files {
            put_file_head(file, dst);
            dst.extend_from_slice(&file.data);
        }
        dst.put_u64(frame.message.len() as u64);
        dst.extend_from_slice(&frame.message);
        Ok(())
    }
}

impl Frame {
    /// This frame's bytes on the wire, checked only against what the format itself can carry (a
    /// file name of at most 65,535 bytes): for a program's own frames, such as a hub's replies.
    ///
    /// # Errors
    /// [`CodecError::FileNameTooLong`].
    pub fn to_wire(&self) -> Result<Bytes, CodecError> {
        let mut wire = BytesMut::new();
        TejCodec::new(Limits::frame_only(u64::MAX)).encode(self, &mut wire)?;
        Ok(wire.freeze())
    }
}

impl Encoder<Frame> for TejCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.encode(&frame, dst)
    }
}

fn put_head(frame: &Frame, dst: &mut BytesMut) {
    dst.put_u8(frame.status.to_byte());
    dst.put_u8(frame.version);
    dst.put_u64(frame.files.len() as u64);
}

fn put_file_head(file: &File, dst: &mut BytesMut) {
    // Checked by `check_encode`: the name fits the u16 field.
    dst.put_u16(file.name.len() as u16);
    dst.extend_from_slice(file.name.as_bytes());
    dst.put_u64(file.data.len() as u64);
}

/// Payloads at least this long are queued by reference instead of copied.
const COPY_THRESHOLD: usize = 4 * 1024;

/// An outbound byte queue of encoded frames that never copies a large payload.
///
/// Headers and small payloads are packed into one contiguous buffer; file data and messages of
/// 4 KiB or more are queued as the frame's own [`Bytes`]. It implements [`Buf`] with
/// `chunks_vectored`, so `write_all_buf` sends a batch of frames in few vectored writes.
#[derive(Debug, Default)]
pub struct FrameBuf {
    sealed: VecDeque<Bytes>,
    tail: BytesMut,
    remaining: usize,
}

impl FrameBuf {
    /// An empty queue.
    pub fn new() -> FrameBuf {
        FrameBuf::default()
    }

    /// Appends `frame`, encoded, after checking it against `codec`'s limits.
    ///
    /// # Errors
    /// [`CodecError`] when the frame exceeds the limits or a file name is too long; the queue is
    /// then unchanged.
    pub fn push(&mut self, codec: &TejCodec, frame: &Frame) -> Result<(), CodecError> {
        codec.limits().check(frame)?;
        put_head(frame, &mut self.tail);
        for file in &frame.files {
            put_file_head(file, &mut self.tail);
            self.push_payload(&file.data);
        }
        self.tail.put_u64(frame.message.len() as u64);
        self.push_payload(&frame.message);
        self.remaining += frame.encoded_len() as usize;
        Ok(())
    }

    /// Appends bytes that are already whole encoded frames, such as a relayed frame's
    /// [`WireFrame::wire`]; large ones are queued by reference.
    pub fn push_wire(&mut self, wire: &Bytes) {
        self.push_payload(wire);
        self.remaining += wire.len();
    }

    fn push_payload(&mut self, payload: &Bytes) {
        if payload.len() < COPY_THRESHOLD {
            self.tail.extend_from_slice(payload);
        } else {
            if !self.tail.is_empty() {
                self.sealed.push_back(self.tail.split().freeze());
            }
            self.sealed.push_back(payload.clone());
        }
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.remaining == 0
    }
}

impl Buf for FrameBuf {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        match self.sealed.front() {
            Some(front) => front,
            None => &self.tail,
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for chunk in self.sealed.iter().map(|b| &b[..]).chain([&self.tail[..]]) {
            if n == dst.len() {
                break;
            }
            if !chunk.is_empty() {
                dst[n] = IoSlice::new(chunk);
                n += 1;
            }
        }
        n
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.remaining, "advance past the end of a FrameBuf");
        self.remaining -= cnt;
        while cnt > 0 {
            match self.sealed.front_mut() {
                Some(front) if front.len() <= cnt => {
                    cnt -= front.len();
                    self.sealed.pop_front();
                }
                Some(front) => {
                    front.advance(cnt);
                    cnt = 0;
                }
                None => {
                    self.tail.advance(cnt);
                    cnt = 0;
                }
            }
        }
    }
}
