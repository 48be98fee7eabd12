//! The TEJ v1 codec: [`TejCodec`] (a tokio-util [`Decoder`]/[`Encoder`]), its [`Limits`] and
//! [`CodecError`], and [`FrameBuf`], the zero-copy outbound buffer used by the connections.
//!
//! The decoder faces untrusted input. It is a state machine that resumes where the previous call
//! stopped (a frame arriving one byte at a time costs linear work), checks every announced length
//! against [`Limits`] before waiting for the body, and never reserves memory from an announced
//! length: it grows the read buffer at most by what has already arrived (plus 64 KiB), so a header
//! announcing 2^64-1 bytes costs nothing until the bytes are really sent. A frame's bytes stay in
//! the read buffer until it is complete; then the whole frame is split off as one [`Bytes`] and the
//! file data and message are slices of it: decoding copies no payload byte, and a relay can
//! forward the frame's exact wire bytes ([`WireFrame`]).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::ops::Range;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::frame::{File, Frame, Status, FILE_FIXED_LEN, HEAD_LEN, MESSAGE_LEN_FIELD};

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

/// Where the decoder stands inside the current frame.
#[derive(Debug, Clone, Copy)]
enum DecodeState {
    /// Waiting for status, version and file count.
    Head,
    /// Waiting for a file's name length, name and data length.
    FileHead,
    /// Waiting for `len` bytes of file data.
    FileData { len: u64 },
    /// Waiting for the message length.
    MessageLen,
    /// Waiting for `len` bytes of message.
    Message { len: u64 },
}

/// The frame being decoded, as far as it has been parsed. Its bytes stay in the read buffer
/// until the frame is complete; `parsed` says how far they have been checked, so each call resumes
/// there instead of parsing the frame again from its first byte.
#[derive(Debug)]
struct PartialFrame {
    status: Status,
    version: u8,
    files_left: u64,
    /// Name and data position (from the frame's first byte) of each file parsed.
    files: Vec<(String, Range<usize>)>,
    /// Lower bound of the frame's encoded length from what the headers announced so far.
    announced: u64,
    /// Bytes of this frame parsed so far; they are the first `parsed` bytes of the buffer.
    parsed: usize,
}

/// Head, file count and message length of a frame without files.
const SMALL_HEAD: usize = (HEAD_LEN + MESSAGE_LEN_FIELD) as usize;

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
/// use tej_hub::{Frame, Status, TejCodec};
///
/// let mut codec = TejCodec::default();
/// let mut wire = BytesMut::new();
/// let frame = Frame::message(Status::new(5).unwrap(), "hello");
/// codec.encode(&frame, &mut wire)?;
/// assert_eq!(codec.decode(&mut wire)?, Some(frame));
/// # Ok::<(), tej_hub::CodecError>(())
/// ```
#[derive(Debug)]
pub struct TejCodec {
    limits: Limits,
    state: DecodeState,
    partial: Option<PartialFrame>,
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
            limits,
            state: DecodeState::Head,
            partial: None,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether the decoder is inside a frame (some of its bytes have been parsed).
    pub fn is_mid_frame(&self) -> bool {
        self.partial.is_some()
    }

    /// Decodes the next frame in `src` together with its wire bytes, like
    /// [`Decoder::decode`].
    ///
    /// # Errors
    /// Any decode [`CodecError`]; the decoder then starts afresh, but the stream is out of step.
    pub fn decode_wire(&mut self, src: &mut BytesMut) -> Result<Option<WireFrame>, CodecError> {
        let result = self.decode_step(src);
        if result.is_err() {
            self.state = DecodeState::Head;
            self.partial = None;
        }
        result
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
                self.state = DecodeState::Head;
                self.partial = None;
                src.clear();
                Err(CodecError::Truncated { received })
            }
        }
    }

    /// Grows `src` towards `total` buffered bytes by at most what has arrived plus
    /// [`READ_AHEAD`] per step (doubling at most, never past `total`), so memory follows the bytes
    /// received, not the bytes announced.
    pub(crate) fn reserve_towards(src: &mut BytesMut, total: u64) {
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

    fn frame_too_large(&self, len: u64) -> Result<(), CodecError> {
        if len > self.limits.max_frame_bytes {
            return Err(CodecError::FrameTooLarge {
                len,
                max: self.limits.max_frame_bytes,
            });
        }
        Ok(())
    }

    fn decode_head(&mut self, src: &BytesMut) -> Result<bool, CodecError> {
        let Some(&byte) = src.first() else {
            return Ok(false);
        };
        // Refused from its first byte: a peer that does not speak TEJ may never send ten.
        let status = Status::from_byte(byte).ok_or(CodecError::InvalidStatusByte { byte })?;
        if src.len() < HEAD_LEN as usize {
            return Ok(false);
        }
        let version = src[1];
        let files = read_u64(src, 2);
        if files > self.limits.max_files {
            return Err(CodecError::TooManyFiles {
                count: files,
                max: self.limits.max_files,
            });
        }
        let announced = files
            .checked_mul(FILE_FIXED_LEN)
            .and_then(|f| f.checked_add(HEAD_LEN + MESSAGE_LEN_FIELD))
            .unwrap_or(u64::MAX);
        self.frame_too_large(announced)?;
        self.partial = Some(PartialFrame {
            status,
            version,
            files_left: files,
            // Capacity follows the files that arrive, never the announced count.
            files: Vec::new(),
            announced,
            parsed: HEAD_LEN as usize,
        });
        self.state = if files > 0 {
            DecodeState::FileHead
        } else {
            DecodeState::MessageLen
        };
        Ok(true)
    }

    fn decode_file_head(&mut self, src: &mut BytesMut) -> Result<bool, CodecError> {
        let limits = self.limits;
        let Some(partial) = self.partial.as_mut() else {
            return Ok(false);
        };
        let at = partial.parsed;
        if src.len() < at + 2 {
            return Ok(false);
        }
        let name_len = usize::from(u16::from_be_bytes([src[at], src[at + 1]]));
        let head_len = 2 + name_len + 8;
        if src.len() < at + head_len {
            // At most 65,545 bytes: bounded by the field width, not by the peer.
            src.reserve(at + head_len - src.len());
            return Ok(false);
        }
        let index = partial.files.len() as u64;
        let name = std::str::from_utf8(&src[at + 2..at + 2 + name_len])
            .map_err(|_| CodecError::FileNameNotUtf8 { index })?;
        let data_len = read_u64(src, at + 2 + name_len);
        let announced = partial
            .announced
            .saturating_add(name_len as u64)
            .saturating_add(data_len);
        if announced > limits.max_frame_bytes {
            return Err(CodecError::FrameTooLarge {
                len: announced,
                max: limits.max_frame_bytes,
            });
        }
        partial.announced = announced;
        partial.parsed += head_len;
        // The data's place is known now; its bytes are checked for arrival in FileData.
        let start = partial.parsed;
        partial.files.push((name.to_owned(), start..start));
        self.state = DecodeState::FileData { len: data_len };
        Ok(true)
    }

    fn decode_file_data(&mut self, src: &mut BytesMut, len: u64) -> bool {
        let Some(partial) = self.partial.as_mut() else {
            return false;
        };
        let end = partial.parsed as u64 + len;
        if (src.len() as u64) < end {
            // A message length field follows every file's data.
            Self::reserve_towards(src, end + MESSAGE_LEN_FIELD);
            return false;
        }
        // `end <= src.len()`, so it fits in usize.
        let end = end as usize;
        if let Some((_, range)) = partial.files.last_mut() {
            range.end = end;
        }
        partial.parsed = end;
        partial.files_left -= 1;
        self.state = if partial.files_left > 0 {
            DecodeState::FileHead
        } else {
            DecodeState::MessageLen
        };
        true
    }

    fn decode_message_len(&mut self, src: &BytesMut) -> Result<bool, CodecError> {
        let limits = self.limits;
        let Some(partial) = self.partial.as_mut() else {
            return Ok(false);
        };
        let at = partial.parsed;
        if src.len() < at + MESSAGE_LEN_FIELD as usize {
            return Ok(false);
        }
        let len = read_u64(src, at);
        if len > limits.max_message_bytes {
            return Err(CodecError::MessageTooLarge {
                len,
                max: limits.max_message_bytes,
            });
        }
        let announced = partial.announced.saturating_add(len);
        if announced > limits.max_frame_bytes {
            return Err(CodecError::FrameTooLarge {
                len: announced,
                max: limits.max_frame_bytes,
            });
        }
        partial.announced = announced;
        partial.parsed += MESSAGE_LEN_FIELD as usize;
        self.state = DecodeState::Message { len };
        Ok(true)
    }

    fn decode_message(&mut self, src: &mut BytesMut, len: u64) -> Option<WireFrame> {
        let partial = self.partial.as_ref()?;
        let end = partial.parsed as u64 + len;
        if (src.len() as u64) < end {
            Self::reserve_towards(src, end);
            return None;
        }
        let partial = self.partial.take()?;
        let message = partial.parsed..end as usize;
        let wire = src.split_to(end as usize).freeze();
        self.state = DecodeState::Head;
        let files = partial
            .files
            .into_iter()
            .map(|(name, data)| File {
                name,
                data: wire.slice(data),
            })
            .collect();
        Some(WireFrame {
            frame: Frame {
                status: partial.status,
                version: partial.version,
                files,
                message: wire.slice(message),
            },
            wire,
        })
    }

    /// The common case in one step: a frame without files, whole in `src`, within the limits.
    /// Returns its status, version and length; anything else (or anything wrong) is left to the
    /// state machine, which reports the errors.
    fn whole_message_frame(&self, src: &BytesMut) -> Option<(Status, u8, usize)> {
        if !matches!(self.state, DecodeState::Head)
            || src.len() < SMALL_HEAD
            || read_u64(src, 2) != 0
        {
            return None;
        }
        let status = Status::from_byte(src[0])?;
        let len = read_u64(src, HEAD_LEN as usize);
        let total = (SMALL_HEAD as u64).checked_add(len)?;
        if len > self.limits.max_message_bytes
            || total > self.limits.max_frame_bytes
            || (src.len() as u64) < total
        {
            return None;
        }
        // `total <= src.len()`, so it fits in usize.
        Some((status, src[1], total as usize))
    }

    fn decode_step(&mut self, src: &mut BytesMut) -> Result<Option<WireFrame>, CodecError> {
        if let Some((status, version, total)) = self.whole_message_frame(src) {
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
        loop {
            let progressed = match self.state {
                DecodeState::Head => self.decode_head(src)?,
                DecodeState::FileHead => self.decode_file_head(src)?,
                DecodeState::FileData { len } => self.decode_file_data(src, len),
                DecodeState::MessageLen => self.decode_message_len(src)?,
                DecodeState::Message { len } => return Ok(self.decode_message(src, len)),
            };
            if !progressed {
                return Ok(None);
            }
        }
    }
}

impl Decoder for TejCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        if let Some((status, version, total)) = self.whole_message_frame(src) {
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
        Ok(self.decode_wire(src)?.map(|decoded| decoded.frame))
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
        self.limits.check(frame)?;
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

/// The big-endian u64 at `at`; the caller has checked that 8 bytes are there.
fn read_u64(src: &[u8], at: usize) -> u64 {
    let mut field = [0u8; 8];
    field.copy_from_slice(&src[at..at + 8]);
    u64::from_be_bytes(field)
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
        codec.limits.check(frame)?;
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
