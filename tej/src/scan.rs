//! [`Scanner`]: the TEJ v1 frame grammar as a state machine that walks a byte stream one
//! structural step at a time without needing the whole frame in memory.
//!
//! Every decoder in the crate is built on it: [`TejCodec`](crate::TejCodec) keeps a frame's bytes
//! until it is whole, the streaming [`PartCodec`](crate::stream::PartCodec) hands file data out as
//! it arrives, and the hub's relay decoder forwards a large frame's bytes in chunks. The scanner
//! owns the checks all of them share: the status byte, [`Limits`], UTF-8 file names, and lengths
//! that overflow. It never looks at more than one header field at a time, so the bytes it needs
//! buffered at once are bounded by the format (a file head: at most 65,545 bytes), never by a
//! length a peer announced.

use crate::codec::{CodecError, Limits};
use crate::frame::{Status, FILE_FIXED_LEN, HEAD_LEN, MESSAGE_LEN_FIELD};

/// Head, file count and message length of a frame without files.
pub(crate) const SMALL_HEAD: usize = (HEAD_LEN + MESSAGE_LEN_FIELD) as usize;

/// Where the scanner stands inside the current frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before a frame: waiting for status, version and file count.
    Head,
    /// Waiting for a file's name length, name and data length.
    FileHead,
    /// Inside a file's data, `left` bytes of it to come.
    FileData { left: u64 },
    /// Waiting for the message length.
    MessageLen,
    /// Inside the message, `left` bytes of it to come.
    Message { left: u64 },
}

/// One structural step of a frame, and the bytes it covers at the front of the scanned buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step<'a> {
    /// The fixed head (10 bytes).
    Head {
        /// The frame's status.
        status: Status,
        /// The protocol version byte as sent.
        version: u8,
        /// The announced number of files.
        files: u64,
    },
    /// A file's head: name length, name and data length.
    FileHead {
        /// Position of the file in the frame, from 0.
        index: u64,
        /// Its name.
        name: &'a str,
        /// Its announced data length.
        len: u64,
    },
    /// This many bytes of the current file's data (at least one, at most what is left of it).
    FileData(usize),
    /// The message length field (8 bytes).
    MessageHead {
        /// The announced message length.
        len: u64,
    },
    /// This many bytes of the message (at least one, at most what is left of it).
    MessageData(usize),
}

impl Step<'_> {
    /// How many bytes at the front of the buffer this step covers.
    pub fn wire_len(&self) -> usize {
        match *self {
            Step::Head { .. } => HEAD_LEN as usize,
            Step::FileHead { name, .. } => FILE_FIXED_LEN as usize + name.len(),
            Step::FileData(n) | Step::MessageData(n) => n,
            Step::MessageHead { .. } => MESSAGE_LEN_FIELD as usize,
        }
    }
}

/// The frame grammar, one step at a time; see the module documentation.
///
/// [`Scanner::step`] looks at the front of a buffer holding the frame's bytes from where the
/// previous step ended; the caller then drops or keeps those bytes as it likes and passes what
/// follows to the next call.
#[derive(Debug, Clone)]
pub struct Scanner {
    limits: Limits,
    state: State,
    /// Files of the current frame still to come.
    files_left: u64,
    /// Index of the next file.
    next_file: u64,
    /// Lower bound of the current frame's length from what its headers announced so far.
    announced: u64,
}

impl Scanner {
    /// A scanner before the first frame, enforcing `limits`.
    pub fn new(limits: Limits) -> Scanner {
        Scanner {
            limits,
            state: State::Head,
            files_left: 0,
            next_file: 0,
            announced: 0,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether the scanner is between frames.
    pub fn at_boundary(&self) -> bool {
        matches!(self.state, State::Head)
    }

    /// The current frame's length as far as its headers have announced it (a lower bound until
    /// the message length is known, then exact).
    pub fn announced(&self) -> u64 {
        self.announced
    }

    /// Bytes of payload (file data or message) still to come in the current segment, 0 when the
    /// scanner waits for a header field.
    pub fn payload_left(&self) -> u64 {
        match self.state {
            State::FileData { left } | State::Message { left } => left,
            _ => 0,
        }
    }

    /// Forgets the current frame (after an error: the stream is out of step anyway).
    pub fn reset(&mut self) {
        self.state = State::Head;
        self.files_left = 0;
        self.next_file = 0;
        self.announced = 0;
    }

    /// The next step at the front of `buf`, or `None` when `buf` does not hold it yet (a header
    /// field needs [`Scanner::header_bytes_needed`] bytes; a payload step needs one byte).
    ///
    /// # Errors
    /// A [`CodecError`] for a status byte with its high bit clear, a length beyond the limits,
    /// or a file name that is not UTF-8. The scanner is then [reset](Scanner::reset).
    pub fn step<'a>(&mut self, buf: &'a [u8]) -> Result<Option<Step<'a>>, CodecError> {
        let result = self.try_step(buf);
        if result.is_err() {
            self.reset();
        }
        result
    }

    /// How many bytes the header field the scanner waits for takes, as far as `buf` tells
    /// (a file head's length is known once its 2-byte name length is there). Payload states
    /// need 1.
    pub fn header_bytes_needed(&self, buf: &[u8]) -> usize {
        match self.state {
            State::Head => HEAD_LEN as usize,
            State::FileHead => match buf {
                [high, low, ..] => {
                    FILE_FIXED_LEN as usize + usize::from(u16::from_be_bytes([*high, *low]))
                }
                _ => 2,
            },
            State::MessageLen => MESSAGE_LEN_FIELD as usize,
            State::FileData { .. } | State::Message { .. } => 1,
        }
    }

    /// The common case in one step: at a frame boundary, a frame without files whole at the
    /// front of `buf` and within the limits. Returns its status, version and length; anything
    /// else (or anything wrong) is left to [`Scanner::step`], which reports the errors.
    pub fn whole_message_frame(&self, buf: &[u8]) -> Option<(Status, u8, usize)> {
        if self.state != State::Head || buf.len() < SMALL_HEAD || read_u64(buf, 2) != 0 {
            return None;
        }
        let status = Status::from_byte(buf[0])?;
        let len = read_u64(buf, HEAD_LEN as usize);
        let total = (SMALL_HEAD as u64).checked_add(len)?;
        if len > self.limits.max_message_bytes
            || total > self.limits.max_frame_bytes
            || (buf.len() as u64) < total
        {
            return None;
        }
        // `total <= buf.len()`, so it fits in usize.
        Some((status, buf[1], total as usize))
    }

    fn try_step<'a>(&mut self, buf: &'a [u8]) -> Result<Option<Step<'a>>, CodecError> {
        match self.state {
            State::Head => self.head(buf),
            State::FileHead => self.file_head(buf),
            State::FileData { left } => Ok(self.payload(buf, left).map(Step::FileData)),
            State::MessageLen => self.message_len(buf),
            State::Message { left } => Ok(self.payload(buf, left).map(Step::MessageData)),
        }
    }

    fn too_large(&self, len: u64) -> Result<u64, CodecError> {
        if len > self.limits.max_frame_bytes {
            return Err(CodecError::FrameTooLarge {
                len,
                max: self.limits.max_frame_bytes,
            });
        }
        Ok(len)
    }

    fn head<'a>(&mut self, buf: &'a [u8]) -> Result<Option<Step<'a>>, CodecError> {
        let Some(&byte) = buf.first() else {
            return Ok(None);
        };
        // Refused from its first byte: a peer that does not speak TEJ may never send ten.
        let status = Status::from_byte(byte).ok_or(CodecError::InvalidStatusByte { byte })?;
        if buf.len() < HEAD_LEN as usize {
            return Ok(None);
        }
        let version = buf[1];
        let files = read_u64(buf, 2);
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
        self.announced = self.too_large(announced)?;
        self.files_left = files;
        self.next_file = 0;
        self.state = if files > 0 {
            State::FileHead
        } else {
            State::MessageLen
        };
        Ok(Some(Step::Head {
            status,
            version,
            files,
        }))
    }

    fn file_head<'a>(&mut self, buf: &'a [u8]) -> Result<Option<Step<'a>>, CodecError> {
        let needed = self.header_bytes_needed(buf);
        if buf.len() < needed.max(2) {
            return Ok(None);
        }
        let name_end = needed - 8;
        let index = self.next_file;
        let name = std::str::from_utf8(&buf[2..name_end])
            .map_err(|_| CodecError::FileNameNotUtf8 { index })?;
        let len = read_u64(buf, name_end);
        let announced = self
            .announced
            .saturating_add(name.len() as u64)
            .saturating_add(len);
        self.announced = self.too_large(announced)?;
        self.next_file += 1;
        self.files_left -= 1;
        self.state = if len > 0 {
            State::FileData { left: len }
        } else {
            self.after_file()
        };
        Ok(Some(Step::FileHead { index, name, len }))
    }

    fn after_file(&self) -> State {
        if self.files_left > 0 {
            State::FileHead
        } else {
            State::MessageLen
        }
    }

    fn message_len<'a>(&mut self, buf: &'a [u8]) -> Result<Option<Step<'a>>, CodecError> {
        if buf.len() < MESSAGE_LEN_FIELD as usize {
            return Ok(None);
        }
        let len = read_u64(buf, 0);
        if len > self.limits.max_message_bytes {
            return Err(CodecError::MessageTooLarge {
                len,
                max: self.limits.max_message_bytes,
            });
        }
        self.announced = self.too_large(self.announced.saturating_add(len))?;
        self.state = if len > 0 {
            State::Message { left: len }
        } else {
            State::Head
        };
        Ok(Some(Step::MessageHead { len }))
    }

    /// A payload step over what `buf` holds of the `left` bytes still to come.
    fn payload(&mut self, buf: &[u8], left: u64) -> Option<usize> {
        if buf.is_empty() {
            return None;
        }
        // `taken <= buf.len()`, so it fits in usize.
        let taken = left.min(buf.len() as u64);
        let left = left - taken;
        self.state = match self.state {
            State::FileData { .. } if left > 0 => State::FileData { left },
            State::FileData { .. } => self.after_file(),
            State::Message { .. } if left > 0 => State::Message { left },
            _ => State::Head,
        };
        Some(taken as usize)
    }
}

/// The big-endian u64 at `at`; the caller has checked that 8 bytes are there.
fn read_u64(src: &[u8], at: usize) -> u64 {
    let mut field = [0u8; 8];
    field.copy_from_slice(&src[at..at + 8]);
    u64::from_be_bytes(field)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Frame;

    fn wire(frame: &Frame) -> Vec<u8> {
        frame.to_wire().map(|b| b.to_vec()).unwrap_or_default()
    }

    /// Every step of `bytes`, fed `chunk` bytes at a time, as (step, covered bytes).
    fn steps(limits: Limits, bytes: &[u8], chunk: usize) -> Result<Vec<String>, CodecError> {
        let mut scanner = Scanner::new(limits);
        let mut out = Vec::new();
        let (mut at, mut visible) = (0, 0);
        loop {
            match scanner.step(&bytes[at..visible])? {
                Some(step) => {
                    out.push(format!("{step:?}"));
                    at += step.wire_len();
                }
                None if visible == bytes.len() => return Ok(out),
                None => visible = (visible + chunk).min(bytes.len()),
            }
        }
    }

    #[test]
    fn steps_cover_the_frame_at_any_chunk_size() {
        let status = Status::new(5).unwrap_or(Status::PING);
        let frame = Frame::builder(status)
            .file("a.txt", &b"hello"[..])
            .file("empty", &b""[..])
            .message(&b"msg"[..])
            .build();
        let bytes = wire(&frame);
        let whole = steps(Limits::default(), &bytes, bytes.len()).unwrap_or_default();
        assert_eq!(whole.len(), 6, "{whole:?}");
        for chunk in 1..bytes.len() {
            let pieces = steps(Limits::default(), &bytes, chunk).unwrap_or_default();
            let data: usize = pieces.iter().filter(|s| s.starts_with("FileData")).count();
            assert!(data >= 1, "chunk {chunk}: {pieces:?}");
            assert_eq!(pieces.first(), whole.first());
            assert_eq!(
                pieces.last().map(|s| s.starts_with("MessageData")),
                Some(true)
            );
        }
    }

    #[test]
    fn boundary_and_announced() {
        let status = Status::new(9).unwrap_or(Status::PING);
        let frame = Frame::builder(status).file("f", vec![7u8; 100]).build();
        let bytes = wire(&frame);
        let mut scanner = Scanner::new(Limits::default());
        let mut at = 0;
        while let Ok(Some(step)) = scanner.step(&bytes[at..]) {
            at += step.wire_len();
            if scanner.at_boundary() {
                break;
            }
        }
        assert_eq!(at, bytes.len());
        assert_eq!(scanner.announced(), bytes.len() as u64);
    }

    #[test]
    fn limits_are_checked_on_headers() {
        let mut head = vec![0x85, 1];
        head.extend_from_slice(&u64::MAX.to_be_bytes());
        let mut scanner = Scanner::new(Limits::default());
        assert!(matches!(
            scanner.step(&head),
            Err(CodecError::TooManyFiles { .. })
        ));
        assert!(scanner.at_boundary());
        assert!(matches!(
            scanner.step(&[0x05]),
            Err(CodecError::InvalidStatusByte { byte: 0x05 })
        ));
    }
}
