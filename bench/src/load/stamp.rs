//! The bytes of the `throughput` and `latency` workloads, and the only parsing the bench does.
//!
//! Every frame is a TEJ v1 *message-only* frame: the 18-byte head (status byte `0x80 | code`,
//! version 1, u64 file count 0, u64 message length), then the message. The u64 at offset 10 of
//! the head is the frame's **length prefix**: a frame is `18 + length` bytes.
//!
//! The message starts with a [`Stamp`] — `[u64 publisher-local sequence][u32 publisher id]`
//! `[u64 send time, ns since the run's epoch]`, big-endian as TEJ's own fields — and is padded
//! with zeros to the message size, so the smallest message is [`STAMP_LEN`] bytes.
//!
//! - [`Batch`]: a publisher's frames, built once and stamped in place before each write.
//! - [`whole_frames`]: the forwarder's boundary finder (length prefixes only).
//! - [`Reader`]: the subscribers' incremental parser: it copies at most a head and a stamp per
//!   frame and skips the padding, whatever the message size.

use tej_hub::hub::control::CONTROL;
use tej_hub::{Status, PROTOCOL_VERSION};

/// The head of a message-only frame: status, version, u64 files (0), u64 message length.
pub(super) const HEAD_LEN: usize = 18;
/// Where the message length (the length prefix) sits in the head.
const LENGTH_AT: usize = 10;
/// Where the file count sits in the head.
const FILES_AT: usize = 2;
/// The stamp at the start of every message.
pub(super) const STAMP_LEN: usize = 20;
/// The largest message the bench sends, and that its subscribers and the forwarder accept.
pub(super) const MAX_MESSAGE: u64 = 64 * 1024 * 1024;
/// Room for a head or a stamp, whichever is longer.
const HELD: usize = if HEAD_LEN > STAMP_LEN {
    HEAD_LEN
} else {
    STAMP_LEN
};
/// The longest control message (the hub's replies) a subscriber accepts.
const MAX_CONTROL: u64 = 64 * 1024;

/// What a message says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    /// The publisher's sequence number for this frame, from 0.
    pub(super) seq: u64,
    /// Which publisher sent it, from 0.
    pub(super) publisher: u32,
    /// When it was written, in ns since the run's epoch.
    pub(super) sent_ns: u64,
}

impl Stamp {
    /// The stamp at the start of `message` (a message of the workload received whole, as NATS
    /// hands it out).
    ///
    /// # Errors
    /// [`StampError::TooShort`] or [`StampError::TooLong`] for a message the bench never sends.
    pub(super) fn parse(message: &[u8]) -> Result<Stamp, StampError> {
        let len = message.len() as u64;
        if len > MAX_MESSAGE {
            return Err(StampError::TooLong {
                len,
                max: MAX_MESSAGE,
            });
        }
        match message.first_chunk::<STAMP_LEN>() {
            Some(stamp) => Ok(Stamp::read(stamp)),
            None => Err(StampError::TooShort {
                len,
                min: STAMP_LEN,
            }),
        }
    }

    /// Writes the stamp over the first [`STAMP_LEN`] bytes of `message`.
    fn write(&self, message: &mut [u8; STAMP_LEN]) {
        message[..8].copy_from_slice(&self.seq.to_be_bytes());
        message[8..12].copy_from_slice(&self.publisher.to_be_bytes());
        message[12..].copy_from_slice(&self.sent_ns.to_be_bytes());
    }

    /// The stamp at the start of `bytes` (at least [`STAMP_LEN`] long).
    fn read(bytes: &[u8; STAMP_LEN]) -> Stamp {
        let [s0, s1, s2, s3, s4, s5, s6, s7, p0, p1, p2, p3, t0, t1, t2, t3, t4, t5, t6, t7] =
            *bytes;
        Stamp {
            seq: u64::from_be_bytes([s0, s1, s2, s3, s4, s5, s6, s7]),
            publisher: u32::from_be_bytes([p0, p1, p2, p3]),
            sent_ns: u64::from_be_bytes([t0, t1, t2, t3, t4, t5, t6, t7]),
        }
    }
}

/// What a subscriber's or the forwarder's peer sent that the bench never sends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum StampError {
    /// A status byte with its most significant bit clear.
    #[error("byte {byte:#04x} is not a status byte (most significant bit clear)")]
    NotAStatus {
        /// The byte.
        byte: u8,
    },
    /// A frame on a status other than the workload's (or 127 for the hub's replies).
    #[error("a frame on status {got}, expected {expected} (or 127)")]
    UnexpectedStatus {
        /// Its status code.
        got: u8,
        /// The workload's code.
        expected: u8,
    },
    /// A frame with files.
    #[error("a frame carries {files} file(s); the bench sends messages only")]
    Files {
        /// The announced file count.
        files: u64,
    },
    /// A message too short to hold a stamp.
    #[error("a {len}-byte message is shorter than the {min}-byte stamp")]
    TooShort {
        /// The announced message length.
        len: u64,
        /// [`STAMP_LEN`].
        min: usize,
    },
    /// A message over the bench's limit.
    #[error("a {len}-byte message is over the {max}-byte limit")]
    TooLong {
        /// The announced message length.
        len: u64,
        /// The limit.
        max: u64,
    },
}

/// A message-only frame on `status` carrying `message`.
pub(crate) fn frame(status: Status, message: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEAD_LEN + message.len());
    bytes.push(status.to_byte());
    bytes.push(PROTOCOL_VERSION);
    bytes.extend_from_slice(&0u64.to_be_bytes());
    bytes.extend_from_slice(&(message.len() as u64).to_be_bytes());
    bytes.extend_from_slice(message);
    bytes
}

/// One publisher's frames: `frames()` copies of its frame back to back, which
/// [`stamp`](Self::stamp) numbers and dates in place before each write. The payload beyond the
/// stamp is zeros.
pub(super) struct Batch {
    /// The frames.
    bytes: Vec<u8>,
    /// Bytes per frame.
    frame_len: usize,
    /// The publisher's id, in every stamp.
    publisher: u32,
}

impl Batch {
    /// Frames of `size`-byte messages (at least [`STAMP_LEN`]) from `publisher` on `status`, as
    /// many as make about `write_bytes` (at least one).
    pub(super) fn new(status: Status, size: usize, publisher: u32, write_bytes: usize) -> Batch {
        let one = frame(status, &vec![0; size.max(STAMP_LEN)]);
        let frame_len = one.len();
        let frames = ((write_bytes + frame_len / 2) / frame_len).max(1);
        Batch {
            bytes: one.repeat(frames),
            frame_len,
            publisher,
        }
    }

    /// How many frames one [`stamp`](Self::stamp) can hand out.
    pub(super) fn frames(&self) -> usize {
        self.bytes.len() / self.frame_len
    }

    /// Bytes per frame.
    #[cfg(test)]
    pub(super) fn frame_len(&self) -> usize {
        self.frame_len
    }

    /// The first `count` frames (at most [`frames`](Self::frames)), numbered from `first_seq`
    /// and all dated `sent_ns`.
    pub(super) fn stamp(&mut self, count: usize, first_seq: u64, sent_ns: u64) -> &[u8] {
        let len = count.min(self.frames()) * self.frame_len;
        let publisher = self.publisher;
        for (seq, frame) in (first_seq..).zip(self.bytes[..len].chunks_exact_mut(self.frame_len)) {
            if let Some(message) = frame[HEAD_LEN..].first_chunk_mut::<STAMP_LEN>() {
                Stamp {
                    seq,
                    publisher,
                    sent_ns,
                }
                .write(message);
            }
        }
        &self.bytes[..len]
    }

    /// The messages of [`stamp`](Self::stamp)'s frames, without their heads: what a NATS
    /// publisher sends as payloads.
    pub(super) fn stamp_messages(
        &mut self,
        count: usize,
        first_seq: u64,
        sent_ns: u64,
    ) -> impl Iterator<Item = &[u8]> {
        let frame_len = self.frame_len;
        self.stamp(count, first_seq, sent_ns)
            .chunks_exact(frame_len)
            .map(|frame| &frame[HEAD_LEN..])
    }
}

/// Where the whole frames at the start of a buffer end ([`whole_frames`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Boundary {
    /// Bytes of whole frames at the start of the buffer.
    pub(super) whole: usize,
    /// The size of the incomplete frame after them, once its head is in the buffer.
    pub(super) next_frame: Option<usize>,
}

/// The forwarder's boundary finder: walks `buf` from one length prefix (the u64 at offset 10 of
/// each 18-byte head) to the next, and says where its whole frames end. It reads nothing else.
///
/// # Errors
/// [`StampError::TooLong`]: a length prefix over `max_message`.
pub(super) fn whole_frames(buf: &[u8], max_message: u64) -> Result<Boundary, StampError> {
    let mut at = 0;
    while let Some(head) = buf.get(at..at + HEAD_LEN) {
        let len = read_u64(head, LENGTH_AT);
        if len > max_message {
            return Err(StampError::TooLong {
                len,
                max: max_message,
            });
        }
        // At most HEAD_LEN + max_message, which the caller chose to fit in memory.
        let frame_len = HEAD_LEN + len as usize;
        if buf.len() - at < frame_len {
            return Ok(Boundary {
                whole: at,
                next_frame: Some(frame_len),
            });
        }
        at += frame_len;
    }
    Ok(Boundary {
        whole: at,
        next_frame: None,
    })
}

/// The big-endian u64 at `at` in `bytes` (which holds at least `at + 8` bytes).
fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut field = [0; 8];
    field.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(field)
}

/// What [`Reader::feed`] found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Event<'a> {
    /// A frame on the workload's status, by its stamp.
    Message(Stamp),
    /// A control frame (status 127): its whole message.
    Control(&'a [u8]),
}

/// Where [`Reader`] is in the stream.
#[derive(Debug, Clone, Copy)]
enum State {
    /// Expecting a frame's head.
    Head,
    /// Expecting a message's stamp; `rest` bytes of the message follow it.
    Stamp { rest: u64 },
    /// Skipping this many bytes of padding.
    Skip(u64),
    /// Collecting a control message of this many bytes.
    Control(usize),
}

/// A subscriber's parser: message-only frames on one status, and the hub's control frames. It
/// takes the bytes as they come and reports each frame's [`Stamp`]; the padding is skipped, not
/// copied.
pub(super) struct Reader {
    /// The workload's status byte.
    expected: u8,
    /// Where it is.
    state: State,
    /// A head or a stamp split between two reads.
    held: [u8; HELD],
    /// How much of `held` is filled.
    have: usize,
    /// The control message being collected.
    control: Vec<u8>,
}

impl Reader {
    /// A reader of frames on `status`.
    pub(super) fn new(status: Status) -> Reader {
        Reader {
            expected: status.to_byte(),
            state: State::Head,
            held: [0; HELD],
            have: 0,
            control: Vec::new(),
        }
    }

    /// The next `N` bytes, from `bytes` (advanced past them) and what was held from before;
    /// `None` when `bytes` ran out first (they are held until the next call).
    fn gather<const N: usize>(&mut self, bytes: &mut &[u8]) -> Option<[u8; N]> {
        let mut out = [0; N];
        if self.have == 0 {
            if let Some((whole, rest)) = bytes.split_first_chunk::<N>() {
                *bytes = rest;
                return Some(*whole);
            }
        }
        let take = (N - self.have).min(bytes.len());
        self.held[self.have..self.have + take].copy_from_slice(&bytes[..take]);
        self.have += take;
        *bytes = &bytes[take..];
        if self.have < N {
            return None;
        }
        out.copy_from_slice(&self.held[..N]);
        self.have = 0;
        Some(out)
    }

    /// Parses `bytes`, the next bytes of the stream, calling `on` for every frame completed (a
    /// message once its stamp is in).
    ///
    /// # Errors
    /// A [`StampError`] for bytes the bench never sends, or what `on` returned; the stream cannot
    /// be read further.
    pub(super) fn feed<E: From<StampError>>(
        &mut self,
        mut bytes: &[u8],
        mut on: impl FnMut(Event<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        while !bytes.is_empty() {
            match self.state {
                State::Head => {
                    let Some(head) = self.gather::<HEAD_LEN>(&mut bytes) else {
                        break;
                    };
                    self.state = self.head(&head)?;
                    if let State::Control(0) = self.state {
                        self.state = State::Head;
                        on(Event::Control(&[]))?;
                    }
                }
                State::Stamp { rest } => {
                    let Some(stamp) = self.gather::<STAMP_LEN>(&mut bytes) else {
                        break;
                    };
                    self.state = if rest == 0 {
                        State::Head
                    } else {
                        State::Skip(rest)
                    };
                    on(Event::Message(Stamp::read(&stamp)))?;
                }
                State::Skip(left) => {
                    let n = usize::try_from(left).map_or(bytes.len(), |left| left.min(bytes.len()));
                    bytes = &bytes[n..];
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::Head
                    } else {
                        State::Skip(left)
                    };
                }
                State::Control(len) => {
                    let n = (len - self.control.len()).min(bytes.len());
                    self.control.extend_from_slice(&bytes[..n]);
                    bytes = &bytes[n..];
                    if self.control.len() == len {
                        self.state = State::Head;
                        on(Event::Control(&self.control))?;
                        self.control.clear();
                    }
                }
            }
        }
        Ok(())
    }

    /// What follows `head`.
    fn head(&mut self, head: &[u8; HEAD_LEN]) -> Result<State, StampError> {
        let status = head[0];
        let files = read_u64(head, FILES_AT);
        let len = read_u64(head, LENGTH_AT);
        if status & 0x80 == 0 {
            return Err(StampError::NotAStatus { byte: status });
        }
        if files != 0 {
            return Err(StampError::Files { files });
        }
        if status == CONTROL.to_byte() {
            return match usize::try_from(len) {
                Ok(len) if len as u64 <= MAX_CONTROL => Ok(State::Control(len)),
                _ => Err(StampError::TooLong {
                    len,
                    max: MAX_CONTROL,
                }),
            };
        }
        if status != self.expected {
            return Err(StampError::UnexpectedStatus {
                got: status & 0x7f,
                expected: self.expected & 0x7f,
            });
        }
        if len < STAMP_LEN as u64 {
            return Err(StampError::TooShort {
                len,
                min: STAMP_LEN,
            });
        }
        if len > MAX_MESSAGE {
            return Err(StampError::TooLong {
                len,
                max: MAX_MESSAGE,
            });
        }
        Ok(State::Stamp {
            rest: len - STAMP_LEN as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use bytes::BytesMut;
    use tej_hub::{Frame, Limits, TejCodec};
    use tokio_util::codec::Decoder;

    use super::*;

    fn status(code: u8) -> Status {
        Status::new(code).expect("a status")
    }

    /// Feeds `bytes` in pieces of `step` and collects what the reader reports.
    fn read_all(reader: &mut Reader, bytes: &[u8], step: usize) -> Result<Vec<String>, StampError> {
        let mut seen = Vec::new();
        for piece in bytes.chunks(step) {
            reader.feed(piece, |event| {
                seen.push(match event {
                    Event::Message(stamp) => {
                        format!("{}:{}@{}", stamp.publisher, stamp.seq, stamp.sent_ns)
                    }
                    Event::Control(text) => String::from_utf8_lossy(text).into_owned(),
                });
                Ok::<(), StampError>(())
            })?;
        }
        Ok(seen)
    }

    #[test]
    fn frames_are_what_the_library_encodes() {
        let wire = frame(status(5), b"hello");
        let library = Frame::message(status(5), &b"hello"[..])
            .to_wire()
            .expect("encodes");
        assert_eq!(wire, library.to_vec());
        assert_eq!(wire.len(), HEAD_LEN + 5);
    }

    #[test]
    fn a_batch_is_stamped_frames_the_codec_decodes() {
        let mut batch = Batch::new(status(5), 128, 7, 1000);
        assert_eq!(batch.frame_len(), HEAD_LEN + 128);
        assert_eq!(batch.frames(), 7, "1000 / 146 rounded");
        let bytes = batch.stamp(3, 40, 123_456).to_vec();
        assert_eq!(bytes.len(), 3 * batch.frame_len());
        let mut codec = TejCodec::new(Limits::default());
        let mut buf = BytesMut::from(&bytes[..]);
        for seq in 40..43u64 {
            let frame = codec.decode(&mut buf).expect("valid").expect("whole");
            assert_eq!(frame.status, status(5));
            assert!(frame.files.is_empty());
            assert_eq!(frame.message.len(), 128);
            let stamp: [u8; STAMP_LEN] = frame.message[..STAMP_LEN].try_into().expect("20 bytes");
            let stamp = Stamp::read(&stamp);
            assert_eq!(
                (stamp.seq, stamp.publisher, stamp.sent_ns),
                (seq, 7, 123_456)
            );
            assert!(frame.message[STAMP_LEN..].iter().all(|&b| b == 0));
        }
        assert!(buf.is_empty());
        // Asking for more than the batch holds hands out the whole batch.
        assert_eq!(batch.stamp(100, 0, 0).len(), 7 * batch.frame_len());
        // Small messages grow to the stamp; one frame at least, however large.
        assert_eq!(
            Batch::new(status(5), 1, 0, 1).frame_len(),
            HEAD_LEN + STAMP_LEN
        );
        assert_eq!(Batch::new(status(5), 1 << 20, 0, 1 << 18).frames(), 1);
    }

    #[test]
    fn nats_payloads_are_the_frames_messages() {
        let mut batch = Batch::new(status(5), 64, 3, 1000);
        let frames = batch.stamp(2, 10, 99).to_vec();
        let messages: Vec<Vec<u8>> = batch
            .stamp_messages(2, 10, 99)
            .map(<[u8]>::to_vec)
            .collect();
        assert_eq!(messages.len(), 2);
        for (index, message) in messages.iter().enumerate() {
            let at = index * batch.frame_len() + HEAD_LEN;
            assert_eq!(&frames[at..at + 64], &message[..]);
            let stamp = Stamp::parse(message).expect("a stamp");
            assert_eq!(
                (stamp.seq, stamp.publisher, stamp.sent_ns),
                (10 + index as u64, 3, 99)
            );
        }
        assert_eq!(
            Stamp::parse(&[0; 19]),
            Err(StampError::TooShort { len: 19, min: 20 })
        );
    }

    #[test]
    fn boundaries_follow_length_prefixes() {
        let mut bytes = frame(status(5), &[1; 30]);
        bytes.extend(frame(status(6), &[]));
        bytes.extend(frame(status(5), &[2; 100]));
        let first = HEAD_LEN + 30;
        let second = first + HEAD_LEN;
        assert_eq!(
            whole_frames(&bytes, MAX_MESSAGE),
            Ok(Boundary {
                whole: bytes.len(),
                next_frame: None
            })
        );
        assert_eq!(
            whole_frames(&bytes[..bytes.len() - 1], MAX_MESSAGE),
            Ok(Boundary {
                whole: second,
                next_frame: Some(HEAD_LEN + 100)
            })
        );
        // A head cut short: its length is not known yet.
        assert_eq!(
            whole_frames(&bytes[..second + 5], MAX_MESSAGE),
            Ok(Boundary {
                whole: second,
                next_frame: None
            })
        );
        assert_eq!(
            whole_frames(&bytes[..first - 1], MAX_MESSAGE),
            Ok(Boundary {
                whole: 0,
                next_frame: Some(first)
            })
        );
        assert_eq!(
            whole_frames(&[], MAX_MESSAGE),
            Ok(Boundary {
                whole: 0,
                next_frame: None
            })
        );
        assert_eq!(
            whole_frames(&bytes, 99),
            Err(StampError::TooLong { len: 100, max: 99 })
        );
    }

    #[test]
    fn the_reader_takes_any_split_and_skips_padding() {
        let mut bytes = Vec::new();
        let mut batch = Batch::new(status(5), 100, 2, 300);
        bytes.extend_from_slice(batch.stamp(2, 0, 9));
        bytes.extend(frame(CONTROL, b"OK SUB 5"));
        bytes.extend(frame(CONTROL, b""));
        let mut big = Batch::new(status(5), 5000, 3, 1);
        bytes.extend_from_slice(big.stamp(1, 77, 1));
        let expected = ["2:0@9", "2:1@9", "OK SUB 5", "", "3:77@1"];
        for step in [1, 2, 7, 17, 18, 19, 38, 64, 1000, bytes.len()] {
            let mut reader = Reader::new(status(5));
            assert_eq!(
                read_all(&mut reader, &bytes, step),
                Ok(expected.map(String::from).to_vec()),
                "step {step}"
            );
        }
    }

    #[test]
    fn the_reader_refuses_what_the_bench_never_sends() {
        let cases: [(Vec<u8>, StampError); 5] = [
            (
                frame(status(6), &[0; 20]),
                StampError::UnexpectedStatus {
                    got: 6,
                    expected: 5,
                },
            ),
            (
                frame(status(5), &[0; 19]),
                StampError::TooShort { len: 19, min: 20 },
            ),
            (
                frame(CONTROL, &[b'x'; 70_000]),
                StampError::TooLong {
                    len: 70_000,
                    max: MAX_CONTROL,
                },
            ),
            (
                Frame::builder(status(5))
                    .file("a", &b"x"[..])
                    .build()
                    .to_wire()
                    .expect("encodes")
                    .to_vec(),
                StampError::Files { files: 1 },
            ),
            (vec![0x05; HEAD_LEN], StampError::NotAStatus { byte: 0x05 }),
        ];
        for (bytes, error) in cases {
            assert_eq!(
                read_all(&mut Reader::new(status(5)), &bytes, 4096),
                Err(error)
            );
        }
        let mut huge = frame(status(5), &[]);
        huge[LENGTH_AT..HEAD_LEN].copy_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(
            read_all(&mut Reader::new(status(5)), &huge, 4096),
            Err(StampError::TooLong {
                len: u64::MAX,
                max: MAX_MESSAGE
            })
        );
    }

    /// The subscriber's parser alone over 128-byte messages in memory: how many frames per
    /// second one core reads (`cargo test --release --bin tej-hub -- --ignored reader_rate
    /// --nocapture`). It must stay far above what the hub delivers.
    #[test]
    #[ignore = "a measurement, not a test"]
    fn reader_rate() {
        let mut batch = Batch::new(status(5), 128, 0, 256 * 1024);
        let chunk = batch.stamp(usize::MAX, 0, 0).to_vec();
        let frames_per_chunk = chunk.len() / batch.frame_len();
        let mut reader = Reader::new(status(5));
        let rounds = 2_000;
        let start = Instant::now();
        let mut frames = 0u64;
        for _ in 0..rounds {
            reader
                .feed(&chunk, |event| {
                    if let Event::Message(stamp) = event {
                        std::hint::black_box(stamp);
                        frames += 1;
                    }
                    Ok::<(), StampError>(())
                })
                .expect("valid");
        }
        let seconds = start.elapsed().as_secs_f64();
        assert_eq!(frames, rounds * frames_per_chunk as u64);
        println!(
            "reader: {:.1} M frames/s ({:.0} MB/s of 128-byte messages)",
            frames as f64 / seconds / 1e6,
            frames as f64 * 128.0 / seconds / 1e6
        );
    }
}
