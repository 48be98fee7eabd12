//! The TEJ v1 frame model: [`Status`], [`File`], [`Frame`] and the [`FrameBuilder`].
//!
//! A frame owns its payloads as [`Bytes`], so a decoded frame can be handed to many consumers
//! (tasks, subscribers) for the price of a reference count each.

use std::fmt;

use bytes::Bytes;

/// The protocol version this crate writes by default.
pub const PROTOCOL_VERSION: u8 = 1;

/// Bytes of the fixed frame head: status byte, version byte, u64 file count.
pub(crate) const HEAD_LEN: u64 = 1 + 1 + 8;
/// Bytes of a file's fixed fields: u16 name length and u64 data length.
pub(crate) const FILE_FIXED_LEN: u64 = 2 + 8;
/// Bytes of the u64 message length that closes every frame.
pub(crate) const MESSAGE_LEN_FIELD: u64 = 8;

/// A TEJ custom status code, `0..=127`.
///
/// The status byte on the wire is `0x80 | code`; the type cannot hold a value above 127, so a frame
/// built from it can never put a different code on the wire than the one asked for (the Python
/// reference turns `200` into `72` without a word).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Status(u8);

impl Status {
    /// The highest custom status code.
    pub const MAX: u8 = 127;
    /// How many custom status codes there are (`0..=MAX`): the length of a table indexed by
    /// code.
    pub const COUNT: usize = Self::MAX as usize + 1;
    /// Status 2: a keep-alive ping in the reference implementation.
    pub const PING: Status = Status(2);

    /// The status for `code`, or `None` when `code > 127`.
    pub const fn new(code: u8) -> Option<Status> {
        if code <= Self::MAX {
            Some(Status(code))
        } else {
            None
        }
    }

    /// The custom status code, `0..=127`.
    pub const fn code(self) -> u8 {
        self.0
    }

    /// The status byte on the wire: the code with the most significant bit set.
    pub const fn to_byte(self) -> u8 {
        0x80 | self.0
    }

    /// The status carried by a status byte, or `None` when its most significant bit is clear.
    pub const fn from_byte(byte: u8) -> Option<Status> {
        if byte & 0x80 == 0 {
            None
        } else {
            Some(Status(byte & 0x7f))
        }
    }
}

/// A custom status code above 127 was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("custom status {0} is out of range 0..=127")]
pub struct StatusOutOfRange(pub u8);

impl TryFrom<u8> for Status {
    type Error = StatusOutOfRange;

    fn try_from(code: u8) -> Result<Self, Self::Error> {
        Status::new(code).ok_or(StatusOutOfRange(code))
    }
}

impl From<Status> for u8 {
    fn from(status: Status) -> u8 {
        status.0
    }
}

/// Status 0, the reference's `BytesBuilder` default.
impl Default for Status {
    fn default() -> Self {
        Status(0)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One named file carried by a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct File {
    /// The file name (UTF-8; at most 65,535 bytes on the wire).
    pub name: String,
    /// The file content.
    pub data: Bytes,
}

impl File {
    /// A file named `name` holding `data`.
    pub fn new(name: impl Into<String>, data: impl Into<Bytes>) -> File {
        File {
            name: name.into(),
            data: data.into(),
        }
    }
}

/// One TEJ v1 frame: status, protocol version, files and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The custom status code.
    pub status: Status,
    /// The protocol version byte (1 unless a peer says otherwise; it is carried, not interpreted).
    pub version: u8,
    /// The files, in wire order.
    pub files: Vec<File>,
    /// The message; empty when the frame carries none (the reference reports that as `None`).
    pub message: Bytes,
}

impl Frame {
    /// Starts a frame with `status`, version 1, no files and an empty message.
    ///
    /// # Examples
    /// ```
    /// use tej::{Frame, Status};
    /// let status = Status::new(5).unwrap();
    /// let frame = Frame::builder(status)
    ///     .file("a.txt", &b"hello"[..])
    ///     .message("hi")
    ///     .build();
    /// assert_eq!(frame.files[0].name, "a.txt");
    /// assert_eq!(frame.encoded_len(), 10 + (2 + 5 + 8 + 5) + 8 + 2);
    /// ```
    pub fn builder(status: Status) -> FrameBuilder {
        FrameBuilder {
            frame: Frame {
                status,
                version: PROTOCOL_VERSION,
                files: Vec::new(),
                message: Bytes::new(),
            },
        }
    }

    /// A frame with `status` carrying only `message`.
    pub fn message(status: Status, message: impl Into<Bytes>) -> Frame {
        Frame::builder(status).message(message).build()
    }

    /// An empty ping frame (status 2, version 1, no files, empty message).
    pub fn ping() -> Frame {
        Frame::builder(Status::PING).build()
    }

    /// Whether this frame has the ping status.
    pub fn is_ping(&self) -> bool {
        self.status == Status::PING
    }

    /// The exact number of bytes this frame takes on the wire, header included.
    pub fn encoded_len(&self) -> u64 {
        let files: u64 = self
            .files
            .iter()
            .map(|f| FILE_FIXED_LEN + f.name.len() as u64 + f.data.len() as u64)
            .sum();
        HEAD_LEN + files + MESSAGE_LEN_FIELD + self.message.len() as u64
    }
}

/// Plain text for people: the status, each file's name and size, and the message (invalid
/// UTF-8 shown as U+FFFD), one per line.
impl fmt::Display for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "status: {}", self.status)?;
        for file in &self.files {
            writeln!(f, "file: {} ({} bytes)", file.name, file.data.len())?;
        }
        write!(f, "message: {}", String::from_utf8_lossy(&self.message))
    }
}

/// Builds a [`Frame`] step by step, in the spirit of the reference's `BytesBuilder`.
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until build() is called"]
pub struct FrameBuilder {
    frame: Frame,
}

impl FrameBuilder {
    /// Appends a file.
    pub fn file(mut self, name: impl Into<String>, data: impl Into<Bytes>) -> Self {
        self.frame.files.push(File::new(name, data));
        self
    }

    /// Sets the message.
    pub fn message(mut self, message: impl Into<Bytes>) -> Self {
        self.frame.message = message.into();
        self
    }

    /// Sets the protocol version byte (default 1).
    pub fn version(mut self, version: u8) -> Self {
        self.frame.version = version;
        self
    }

    /// The finished frame.
    pub fn build(self) -> Frame {
        self.frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_holds_only_seven_bits() {
        assert_eq!(Status::new(127).map(Status::code), Some(127));
        assert_eq!(Status::new(128), None);
        assert_eq!(Status::try_from(200), Err(StatusOutOfRange(200)));
        assert_eq!(Status::new(5).map(Status::to_byte), Some(0x85));
        assert_eq!(Status::from_byte(0x05), None);
        assert_eq!(Status::from_byte(0xff), Status::new(127));
    }

    #[test]
    fn encoded_len_counts_bytes_not_characters() {
        let frame = Frame::builder(Status::PING).file("é", Bytes::new()).build();
        assert_eq!(frame.encoded_len(), 10 + 2 + 2 + 8 + 8);
    }
}
