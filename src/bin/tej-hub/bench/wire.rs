//! TEJ v1 frames by hand, for workloads whose frames are too big to hold: [`FrameReader`] walks
//! a byte stream one field at a time and hands file data and message bytes out as they arrive,
//! [`FrameStream`] runs it over a socket with large reads, and [`file_frame_head`],
//! [`frame_tail`] and [`control_frame`] write the fixed parts of a frame.
//!
//! Layout (integers big-endian): u8 status (`0x80 | code`), u8 version, u64 file count; per file
//! u16 name length, name, u64 data length, data; u64 message length, message. Lengths come from
//! the peer: nothing here allocates from one (a name is at most 65,535 bytes by its u16 length,
//! a control message at most [`MAX_CONTROL_MESSAGE`]).

use std::ops::Range;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest control message (status 127) [`FrameStream::rest_of_control`] collects.
pub(super) const MAX_CONTROL_MESSAGE: u64 = 64 * 1024;
/// The hub's control channel.
pub(super) const CONTROL: u8 = 127;

/// One step through a frame, as [`FrameReader::next`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Event {
    /// Status, version and file count.
    Head {
        /// The status code (the status byte without its MSB).
        code: u8,
        /// The version byte as sent.
        version: u8,
        /// The announced number of files.
        files: u64,
    },
    /// A file's name and announced data length.
    FileHead {
        /// The name (lossy UTF-8).
        name: String,
        /// The announced data length.
        len: u64,
    },
    /// This many bytes of the current file's data: the last ones consumed.
    FileData(usize),
    /// The announced message length.
    MessageHead {
        /// The announced message length.
        len: u64,
    },
    /// This many bytes of the message: the last ones consumed.
    MessageData(usize),
    /// The frame is complete; the next byte starts another.
    End,
}

/// Where a [`FrameReader`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for status, version and file count (10 bytes).
    Head,
    /// Waiting for a file's name length (2 bytes).
    NameLen,
    /// Waiting for a file's name.
    Name { len: usize },
    /// Waiting for a file's data length (8 bytes).
    DataLen,
    /// Inside a file's data.
    Data { left: u64 },
    /// Waiting for the message length (8 bytes).
    MessageLen,
    /// Inside the message.
    Message { left: u64 },
    /// The frame is complete; [`Event::End`] is due.
    End,
}

/// The TEJ v1 grammar over a byte stream, one field at a time; see the module documentation.
#[derive(Debug)]
pub(super) struct FrameReader {
    state: State,
    /// The header field being gathered (at most a name: 65,535 bytes).
    field: Vec<u8>,
    /// Files of the current frame still to come after the current one.
    files_left: u64,
    /// The current file's name, between its name and data-length fields.
    name: String,
}

impl FrameReader {
    /// A reader before the first frame.
    pub(super) fn new() -> FrameReader {
        FrameReader {
            state: State::Head,
            field: Vec::new(),
            files_left: 0,
            name: String::new(),
        }
    }

    /// Whether an event is due without more input ([`Event::End`]).
    pub(super) fn ready(&self) -> bool {
        self.state == State::End
    }

    /// Whether the reader stands between two frames.
    pub(super) fn at_boundary(&self) -> bool {
        self.state == State::Head && self.field.is_empty()
    }

    /// Consumes bytes from the front of `input` and returns how many, and the event they
    /// completed. `None` means every byte of `input` was consumed and more are needed. A data
    /// event's bytes are the last `n` consumed.
    ///
    /// # Errors
    /// A status byte with its most significant bit clear (not a TEJ frame).
    pub(super) fn next(&mut self, input: &[u8]) -> Result<(usize, Option<Event>), String> {
        let mut used = 0;
        // Each pass consumes at least one byte or returns: bounded by the input's length.
        loop {
            let (n, event) = self.step(&input[used..])?;
            used += n;
            if event.is_some() || used == input.len() || n == 0 {
                return Ok((used, event));
            }
        }
    }

    /// One field or one piece of data: like [`next`](Self::next), but may return `None` with
    /// input left, after a field that completes no event (a name length, a name).
    fn step(&mut self, input: &[u8]) -> Result<(usize, Option<Event>), String> {
        match self.state {
            State::Data { left } => {
                let n = take(left, input.len());
                if n == 0 {
                    return Ok((0, None));
                }
                self.state = match left - n as u64 {
                    0 => self.after_file(),
                    left => State::Data { left },
                };
                Ok((n, Some(Event::FileData(n))))
            }
            State::Message { left } => {
                let n = take(left, input.len());
                if n == 0 {
                    return Ok((0, None));
                }
                self.state = match left - n as u64 {
                    0 => State::End,
                    left => State::Message { left },
                };
                Ok((n, Some(Event::MessageData(n))))
            }
            State::End => {
                self.state = State::Head;
                Ok((0, Some(Event::End)))
            }
            State::Head
            | State::NameLen
            | State::Name { .. }
            | State::DataLen
            | State::MessageLen => {
                let want = self.field_len();
                let used = (want - self.field.len()).min(input.len());
                self.field.extend_from_slice(&input[..used]);
                if self.field.len() < want {
                    return Ok((used, None));
                }
                let event = self.complete_field()?;
                self.field.clear();
                Ok((used, event))
            }
        }
    }

    /// The length of the header field the reader waits for.
    fn field_len(&self) -> usize {
        match self.state {
            State::Head => 10,
            State::NameLen => 2,
            State::Name { len } => len,
            State::DataLen | State::MessageLen => 8,
            State::Data { .. } | State::Message { .. } | State::End => 0,
        }
    }

    /// Interprets the complete header field in `self.field` and moves on.
    fn complete_field(&mut self) -> Result<Option<Event>, String> {
        let field = &self.field;
        match self.state {
            State::Head => {
                let status = field[0];
                if status & 0x80 == 0 {
                    return Err(format!(
                        "status byte {status:#04x} has its most significant bit clear"
                    ));
                }
                let files = be_u64(&field[2..10]);
                self.files_left = files;
                self.state = if files > 0 {
                    State::NameLen
                } else {
                    State::MessageLen
                };
                Ok(Some(Event::Head {
                    code: status & 0x7f,
                    version: field[1],
                    files,
                }))
            }
            State::NameLen => {
                let len = usize::from(u16::from_be_bytes([field[0], field[1]]));
                self.state = if len > 0 {
                    State::Name { len }
                } else {
                    self.name.clear();
                    State::DataLen
                };
                Ok(None)
            }
            State::Name { .. } => {
                self.name = String::from_utf8_lossy(field).into_owned();
                self.state = State::DataLen;
                Ok(None)
            }
            State::DataLen => {
                let len = be_u64(field);
                self.state = if len > 0 {
                    State::Data { left: len }
                } else {
                    self.after_file()
                };
                let name = std::mem::take(&mut self.name);
                Ok(Some(Event::FileHead { name, len }))
            }
            State::MessageLen => {
                let len = be_u64(field);
                self.state = if len > 0 {
                    State::Message { left: len }
                } else {
                    State::End
                };
                Ok(Some(Event::MessageHead { len }))
            }
            State::Data { .. } | State::Message { .. } | State::End => Ok(None),
        }
    }

    /// The state after a file's data: the next file, or the message.
    fn after_file(&mut self) -> State {
        self.files_left = self.files_left.saturating_sub(1);
        if self.files_left > 0 {
            State::NameLen
        } else {
            State::MessageLen
        }
    }
}

/// How many of `available` bytes a segment with `left` bytes to come takes.
fn take(left: u64, available: usize) -> usize {
    usize::try_from(left).map_or(available, |left| left.min(available))
}

/// A big-endian u64 from the first 8 bytes of `bytes` (callers pass exactly 8).
fn be_u64(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .take(8)
        .fold(0, |value, byte| (value << 8) | u64::from(*byte))
}

/// A [`FrameReader`] over a socket, read with large reads into one buffer.
pub(super) struct FrameStream<R> {
    /// The socket.
    io: R,
    /// Where the stream stands in the current frame.
    reader: FrameReader,
    /// The read buffer (one read's worth).
    buf: Vec<u8>,
    /// Start of the unread part of `buf`.
    start: usize,
    /// End of the unread part of `buf`.
    end: usize,
    /// The bytes the last event consumed (those of a data event).
    last: Range<usize>,
    /// Bytes read from `io` so far.
    received: u64,
}

impl<R: AsyncRead + Unpin> FrameStream<R> {
    /// Reads frames from `io`, `read_size` bytes at most per read.
    pub(super) fn new(io: R, read_size: usize) -> FrameStream<R> {
        FrameStream {
            io,
            reader: FrameReader::new(),
            buf: vec![0; read_size.max(1)],
            start: 0,
            end: 0,
            last: 0..0,
            received: 0,
        }
    }

    /// The next event, reading from the socket when needed (each read bounded by `deadline`).
    ///
    /// # Errors
    /// The socket failed, was closed, or the deadline passed; the bytes are not a TEJ frame.
    pub(super) async fn next_event(&mut self, deadline: Instant) -> Result<Event, String> {
        loop {
            if self.start < self.end || self.reader.ready() {
                let (used, event) = self.reader.next(&self.buf[self.start..self.end])?;
                self.start += used;
                if let Some(event) = event {
                    let data = match event {
                        Event::FileData(n) | Event::MessageData(n) => n,
                        _ => 0,
                    };
                    self.last = self.start.saturating_sub(data)..self.start;
                    return Ok(event);
                }
                continue;
            }
            let read = tokio::time::timeout_at(deadline.into(), self.io.read(&mut self.buf)).await;
            match read {
                Err(_) => return Err("timed out waiting for the hub".to_owned()),
                Ok(Err(error)) => return Err(format!("reading from the hub failed: {error}")),
                Ok(Ok(0)) if self.reader.at_boundary() => {
                    return Err("the hub closed the connection".to_owned())
                }
                Ok(Ok(0)) => {
                    return Err(format!(
                        "the hub closed the connection in the middle of a frame ({} bytes read)",
                        self.received
                    ))
                }
                Ok(Ok(n)) => {
                    self.start = 0;
                    self.end = n;
                    self.received += n as u64;
                }
            }
        }
    }

    /// The bytes of the last [`Event::FileData`] or [`Event::MessageData`].
    pub(super) fn data(&self) -> &[u8] {
        &self.buf[self.last.clone()]
    }

    /// After an [`Event::Head`] on the control channel: the rest of the frame and its message
    /// (lossy UTF-8).
    ///
    /// # Errors
    /// As [`next_event`](Self::next_event); a control frame with files or a message over
    /// [`MAX_CONTROL_MESSAGE`].
    pub(super) async fn rest_of_control(&mut self, deadline: Instant) -> Result<String, String> {
        let mut message = Vec::new();
        loop {
            match self.next_event(deadline).await? {
                Event::FileHead { .. } => {
                    return Err("the hub sent a control frame carrying files".to_owned())
                }
                Event::MessageHead { len } if len > MAX_CONTROL_MESSAGE => {
                    return Err(format!(
                        "the hub sent a control message of {len} bytes (at most \
                         {MAX_CONTROL_MESSAGE} expected)"
                    ))
                }
                Event::MessageData(_) => message.extend_from_slice(self.data()),
                Event::End => return Ok(String::from_utf8_lossy(&message).into_owned()),
                Event::Head { .. } | Event::FileData(_) | Event::MessageHead { .. } => {}
            }
        }
    }
}

/// The message of the first frame in `bytes` if it is a whole control frame without files (the
/// hub's `ERR <reason>` before it closes a connection).
pub(super) fn control_message(bytes: &[u8]) -> Option<String> {
    let mut reader = FrameReader::new();
    let mut input = bytes;
    let mut message = Vec::new();
    loop {
        let (used, event) = reader.next(input).ok()?;
        let consumed = &input[..used];
        input = &input[used..];
        match event? {
            Event::Head { code, files, .. } if code != CONTROL || files > 0 => return None,
            Event::MessageData(n) => {
                message.extend_from_slice(&consumed[consumed.len().saturating_sub(n)..]);
            }
            Event::End => return Some(String::from_utf8_lossy(&message).into_owned()),
            _ => {}
        }
    }
}

/// The head of a frame on status `code` carrying one file: status, version 1, file count 1,
/// name length, name, data length. The data, then [`frame_tail`], follow.
///
/// # Errors
/// `code` above 127, or a name longer than 65,535 bytes.
pub(super) fn file_frame_head(code: u8, name: &str, len: u64) -> Result<Vec<u8>, String> {
    if code > CONTROL {
        return Err(format!("status code {code} is above 127"));
    }
    let name_len = u16::try_from(name.len())
        .map_err(|_| format!("file name of {} bytes is too long", name.len()))?;
    let mut head = Vec::with_capacity(20 + name.len());
    head.extend_from_slice(&[0x80 | code, 1]);
    head.extend_from_slice(&1u64.to_be_bytes());
    head.extend_from_slice(&name_len.to_be_bytes());
    head.extend_from_slice(name.as_bytes());
    head.extend_from_slice(&len.to_be_bytes());
    Ok(head)
}

/// The end of a frame: message length and message.
pub(super) fn frame_tail(message: &[u8]) -> Vec<u8> {
    let mut tail = Vec::with_capacity(8 + message.len());
    tail.extend_from_slice(&(message.len() as u64).to_be_bytes());
    tail.extend_from_slice(message);
    tail
}

/// A control frame (status 127, no files) carrying `command`.
pub(super) fn control_frame(command: &str) -> Vec<u8> {
    let mut frame = vec![0x80 | CONTROL, 1];
    frame.extend_from_slice(&0u64.to_be_bytes());
    frame.extend_from_slice(&frame_tail(command.as_bytes()));
    frame
}

#[cfg(test)]
mod tests {
    use super::*;
    use tej_hub::{Frame, Status};

    /// Every event of `wire`, fed `split` bytes at a time, with the data events' bytes.
    fn events(wire: &[u8], split: usize) -> Result<Vec<(Event, Vec<u8>)>, String> {
        let mut reader = FrameReader::new();
        let mut out = Vec::new();
        for piece in wire.chunks(split) {
            let mut input = piece;
            loop {
                let (used, event) = reader.next(input)?;
                let consumed = &input[..used];
                input = &input[used..];
                match event {
                    Some(event) => {
                        let data = match event {
                            Event::FileData(n) | Event::MessageData(n) => {
                                consumed[consumed.len() - n..].to_vec()
                            }
                            _ => Vec::new(),
                        };
                        out.push((event, data));
                    }
                    None => {
                        assert!(input.is_empty(), "None with input left");
                        break;
                    }
                }
            }
        }
        // An End due after the last byte.
        if reader.ready() {
            let (_, event) = reader.next(&[])?;
            out.extend(event.map(|event| (event, Vec::new())));
        }
        Ok(out)
    }

    /// The events merged: data events joined, so that every split compares equal.
    fn merged(events: Vec<(Event, Vec<u8>)>) -> Vec<(Event, Vec<u8>)> {
        let mut out: Vec<(Event, Vec<u8>)> = Vec::new();
        for (event, data) in events {
            match (out.last_mut(), &event) {
                (Some((Event::FileData(n), joined)), Event::FileData(m))
                | (Some((Event::MessageData(n), joined)), Event::MessageData(m)) => {
                    *n += m;
                    joined.extend_from_slice(&data);
                }
                _ => out.push((event, data)),
            }
        }
        out
    }

    #[test]
    fn reads_the_library_frames_in_every_split() {
        let status = Status::new(5).expect("5 is a status");
        let frame = Frame::builder(status)
            .file("a.txt", &b"hello"[..])
            .file("", &b""[..])
            .file("é", &b"xyz"[..])
            .message("hi")
            .build();
        let mut wire = frame.to_wire().expect("encodes").to_vec();
        let second = Frame::message(status, "").to_wire().expect("encodes");
        wire.extend_from_slice(&second);
        let expected = vec![
            (
                Event::Head {
                    code: 5,
                    version: 1,
                    files: 3,
                },
                vec![],
            ),
            (
                Event::FileHead {
                    name: "a.txt".into(),
                    len: 5,
                },
                vec![],
            ),
            (Event::FileData(5), b"hello".to_vec()),
            (
                Event::FileHead {
                    name: String::new(),
                    len: 0,
                },
                vec![],
            ),
            (
                Event::FileHead {
                    name: "é".into(),
                    len: 3,
                },
                vec![],
            ),
            (Event::FileData(3), b"xyz".to_vec()),
            (Event::MessageHead { len: 2 }, vec![]),
            (Event::MessageData(2), b"hi".to_vec()),
            (Event::End, vec![]),
            (
                Event::Head {
                    code: 5,
                    version: 1,
                    files: 0,
                },
                vec![],
            ),
            (Event::MessageHead { len: 0 }, vec![]),
            (Event::End, vec![]),
        ];
        for split in 1..=wire.len() {
            assert_eq!(
                merged(events(&wire, split).expect("decodes")),
                expected,
                "split {split}"
            );
        }
    }

    #[test]
    fn refuses_a_clear_msb() {
        assert!(FrameReader::new()
            .next(&[0x05, 1, 0, 0, 0, 0, 0, 0, 0, 0])
            .is_err());
    }

    #[test]
    fn writes_what_the_library_reads() {
        let mut wire = file_frame_head(5, "big-file.bin", 3).expect("head");
        wire.extend_from_slice(b"abc");
        wire.extend_from_slice(&frame_tail(b"msg"));
        let mut codec = tej_hub::TejCodec::default();
        let mut buf = bytes::BytesMut::from(&wire[..]);
        let frame = tokio_util::codec::Decoder::decode(&mut codec, &mut buf)
            .expect("decodes")
            .expect("whole");
        assert_eq!(frame.status.code(), 5);
        assert_eq!(frame.files.len(), 1);
        assert_eq!(frame.files[0].name, "big-file.bin");
        assert_eq!(&frame.files[0].data[..], b"abc");
        assert_eq!(&frame.message[..], b"msg");

        let control = control_frame("SUB 5");
        let expected = Frame::message(Status::new(127).expect("127"), "SUB 5")
            .to_wire()
            .expect("encodes");
        assert_eq!(control, expected.to_vec());
        assert_eq!(control_message(&control).as_deref(), Some("SUB 5"));
        assert_eq!(control_message(&control[..control.len() - 1]), None);
        assert_eq!(control_message(&wire), None);
        assert!(file_frame_head(128, "x", 1).is_err());
    }
}
