//! Streaming frames in both directions with memory bounded by a chunk size, never by a frame's
//! length: [`PartCodec`] decodes a frame as a sequence of [`Part`]s (file data and message handed
//! out as they arrive), and [`FileFrame`] / [`write_frame_from_files`] send a frame whose files are
//! read from disk as they are written.
//!
//! # Receiving
//! [`PartCodec`] is a tokio-util [`Decoder`] over the same grammar as [`TejCodec`](crate::TejCodec)
//! (the crate's `Scanner`: status byte, [`Limits`], UTF-8 names are checked the same way), but it
//! never waits for a whole file: every byte of file data or message that is in the read buffer is
//! split off at once as a [`Part::FileData`] or [`Part::MessageData`] chunk (a [`Bytes`] sharing the
//! read buffer, no copy). The read buffer therefore holds at most one header field (a file head is
//! at most 65,545 bytes, bounded by its u16 name length) or one read of payload, which the codec
//! lets grow to [`READ_CHUNK`] (64 KiB); what a consumer keeps of the chunks is its own business.
//!
//! # Sending
//! [`FileFrame::open`] opens every file and takes its length from its metadata, so the frame's
//! length and its checks against [`Limits`] are known before the first byte is sent.
//! [`FileFrame::write_to`] then writes the head, each file's head followed by its bytes copied from
//! disk through one buffer of at most [`COPY_BUF`] (256 KiB), then the message. A file that turns
//! out shorter or longer than announced fails the send ([`StreamError::FileShrank`],
//! [`StreamError::FileGrew`]) before the frame's last data byte is written, so no frame whose
//! lengths lie is ever completed: the writer must then drop the connection, and the peer sees a
//! truncated frame.

use std::io;
use std::path::PathBuf;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::Decoder;

use crate::codec::{CodecError, Limits};
use crate::frame::{Frame, Status, FILE_FIXED_LEN, HEAD_LEN, MESSAGE_LEN_FIELD, PROTOCOL_VERSION};
use crate::scan::{Scanner, Step};

/// The most payload [`PartCodec`] lets the read buffer grow for at once (64 KiB).
pub const READ_CHUNK: usize = 64 * 1024;

/// The largest buffer [`FileFrame::write_to`] copies file data through (256 KiB).
pub const COPY_BUF: usize = 256 * 1024;

/// Messages up to this size are sent in the same write as the header bytes before them.
const SMALL_MESSAGE: usize = 64 * 1024;

/// One piece of a frame, in wire order, as [`PartCodec`] decodes it.
///
/// A frame is `Head`, then for each announced file `FileStart`, zero or more `FileData` and
/// `FileEnd`, then `MessageStart`, zero or more `MessageData`, and `End`. The data chunks of a file
/// add up to the `len` its `FileStart` announced, and likewise for the message; how the data is cut
/// into chunks depends only on how the bytes arrived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    /// A frame begins.
    Head {
        /// The frame's status.
        status: Status,
        /// The protocol version byte as sent.
        version: u8,
        /// How many files follow.
        files: u64,
    },
    /// A file begins; its `len` bytes follow as [`Part::FileData`].
    FileStart {
        /// Position of the file in the frame, from 0.
        index: u64,
        /// Its name (checked to be UTF-8; chosen by the peer, so not safe as a path).
        name: String,
        /// Its announced data length.
        len: u64,
    },
    /// The next chunk of the current file's data: at least one byte.
    FileData(Bytes),
    /// The current file's data is complete (right after its `FileStart` for an empty file).
    FileEnd {
        /// Position of the file in the frame, from 0.
        index: u64,
    },
    /// The message begins; its `len` bytes follow as [`Part::MessageData`] (none for 0).
    MessageStart {
        /// The announced message length.
        len: u64,
    },
    /// The next chunk of the message: at least one byte.
    MessageData(Bytes),
    /// The frame is complete.
    End,
}

impl Part {
    /// The parts of a whole `frame`, in order, each file's data and the message as one chunk (none
    /// when empty): what [`PartCodec`] yields when the frame's bytes arrive at once. The payloads
    /// are shared with `frame`, not copied.
    ///
    /// # Examples
    /// ```
    /// use tej::stream::Part;
    /// use tej::{Frame, Status};
    ///
    /// let frame = Frame::message(Status::new(5).unwrap(), "hi");
    /// let parts = Part::of_frame(&frame);
    /// assert_eq!(parts.len(), 4); // Head, MessageStart, MessageData, End
    /// assert_eq!(parts[3], Part::End);
    /// ```
    pub fn of_frame(frame: &Frame) -> Vec<Part> {
        let mut parts = Vec::with_capacity(3 * frame.files.len() + 4);
        parts.push(Part::Head {
            status: frame.status,
            version: frame.version,
            files: frame.files.len() as u64,
        });
        for (index, file) in (0u64..).zip(&frame.files) {
            parts.push(Part::FileStart {
                index,
                name: file.name.clone(),
                len: file.data.len() as u64,
            });
            if !file.data.is_empty() {
                parts.push(Part::FileData(file.data.clone()));
            }
            parts.push(Part::FileEnd { index });
        }
        parts.push(Part::MessageStart {
            len: frame.message.len() as u64,
        });
        if !frame.message.is_empty() {
            parts.push(Part::MessageData(frame.message.clone()));
        }
        parts.push(Part::End);
        parts
    }
}

/// A tokio-util [`Decoder`] yielding each frame as [`Part`]s, with memory bounded by a chunk size.
///
/// It faces untrusted input: every announced length is checked against the [`Limits`] given to
/// [`PartCodec::new`] as soon as its header field arrives (the same checks as
/// [`TejCodec`](crate::TejCodec)), and no buffer is ever sized from an announced length — a header
/// announcing a 2^60-byte file costs nothing but the bytes really sent, handed out as they come.
/// The read buffer grows to at most [`READ_CHUNK`] for payload, or to one header field (at most
/// 65,545 bytes). Chunks are split off the read buffer without copying.
///
/// At the end of the stream ([`Decoder::decode_eof`]), a frame cut short is
/// [`CodecError::Truncated`], after the parts that did arrive. After any error the codec starts
/// afresh at the next byte, but the stream is out of step: drop the connection.
///
/// # Examples
/// ```
/// use bytes::BytesMut;
/// use tokio_util::codec::Decoder;
/// use tej::stream::{Part, PartCodec};
/// use tej::{Frame, Limits, Status};
///
/// let frame = Frame::builder(Status::new(5).unwrap()).file("a.txt", &b"hi"[..]).build();
/// let mut wire = BytesMut::from(&frame.to_wire()?[..]);
/// let mut codec = PartCodec::new(Limits::default());
/// let mut data = Vec::new();
/// while let Some(part) = codec.decode(&mut wire)? {
///     if let Part::FileData(chunk) = part {
///         data.extend_from_slice(&chunk);
///     }
/// }
/// assert_eq!(data, b"hi");
/// # Ok::<(), tej::CodecError>(())
/// ```
#[derive(Debug, Clone)]
pub struct PartCodec {
    scanner: Scanner,
    /// A part decided together with the previous one (`FileEnd` after a file's last chunk, `End`
    /// after the message), returned by the next call.
    pending: Option<Part>,
    /// Index of the file whose data is being decoded.
    file: u64,
    /// Bytes of the current frame consumed from the read buffer so far.
    consumed: u64,
}

impl Default for PartCodec {
    fn default() -> Self {
        PartCodec::new(Limits::default())
    }
}

impl PartCodec {
    /// A codec enforcing `limits`.
    pub fn new(limits: Limits) -> PartCodec {
        PartCodec {
            scanner: Scanner::new(limits),
            pending: None,
            file: 0,
            consumed: 0,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.scanner.limits()
    }

    /// Whether the codec is inside a frame: it has returned the frame's [`Part::Head`] but not yet
    /// its [`Part::End`].
    pub fn is_mid_frame(&self) -> bool {
        self.pending.is_some() || !self.scanner.at_boundary()
    }

    /// The current frame's length as far as its headers have announced it: a lower bound until
    /// its [`Part::MessageStart`], then exact (e.g. for a progress display). After a frame's
    /// [`Part::End`], that frame's length until the next one begins.
    pub fn announced_len(&self) -> u64 {
        self.scanner.announced()
    }

    fn reset(&mut self) {
        self.scanner.reset();
        self.pending = None;
        self.file = 0;
        self.consumed = 0;
    }

    fn step(&mut self, src: &mut BytesMut) -> Result<Option<Part>, CodecError> {
        if let Some(part) = self.pending.take() {
            return Ok(Some(part));
        }
        if self.scanner.at_boundary() {
            self.consumed = 0;
        }
        // The step borrows `src`: turn it into owned values before splitting the buffer.
        let Some(step) = self.scanner.step(src)? else {
            self.reserve(src);
            return Ok(None);
        };
        let wire_len = step.wire_len();
        let decoded = match step {
            Step::Head {
                status,
                version,
                files,
            } => Decoded::Header(Part::Head {
                status,
                version,
                files,
            }),
            Step::FileHead { index, name, len } => Decoded::Header(Part::FileStart {
                index,
                name: name.to_owned(),
                len,
            }),
            Step::MessageHead { len } => Decoded::Header(Part::MessageStart { len }),
            Step::FileData(_) => Decoded::FileData,
            Step::MessageData(_) => Decoded::MessageData,
        };
        self.consumed += wire_len as u64;
        let part = match decoded {
            Decoded::Header(part) => {
                src.advance(wire_len);
                part
            }
            Decoded::FileData => Part::FileData(src.split_to(wire_len).freeze()),
            Decoded::MessageData => Part::MessageData(src.split_to(wire_len).freeze()),
        };
        self.pending = match &part {
            Part::FileStart { index, len, .. } => {
                self.file = *index;
                (*len == 0).then_some(Part::FileEnd { index: *index })
            }
            Part::FileData(_) if self.scanner.payload_left() == 0 => {
                Some(Part::FileEnd { index: self.file })
            }
            Part::MessageStart { .. } | Part::MessageData(_) if self.scanner.at_boundary() => {
                Some(Part::End)
            }
            _ => None,
        };
        Ok(Some(part))
    }

    /// Lets the read buffer grow for what the scanner waits for: a header field (bounded by the
    /// format) or up to [`READ_CHUNK`] of payload (bounded by us, never by the announced length).
    fn reserve(&self, src: &mut BytesMut) {
        let left = self.scanner.payload_left();
        let wanted = if left > 0 {
            // `min` with a usize, so it fits.
            left.min(READ_CHUNK as u64) as usize
        } else {
            self.scanner.header_bytes_needed(src)
        };
        if wanted > src.len() {
            src.reserve(wanted - src.len());
        }
    }
}

/// A scanner step with the borrow of the read buffer ended.
enum Decoded {
    /// A header field, as its part.
    Header(Part),
    /// File data: the step's bytes are split off as the chunk.
    FileData,
    /// Message data: the step's bytes are split off as the chunk.
    MessageData,
}

impl Decoder for PartCodec {
    type Item = Part;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Part>, CodecError> {
        let result = self.step(src);
        if result.is_err() {
            self.reset();
        }
        result
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Part>, CodecError> {
        if let Some(part) = self.decode(src)? {
            return Ok(Some(part));
        }
        if !self.is_mid_frame() && src.is_empty() {
            return Ok(None);
        }
        // Inside a frame (or before a head that never completed): what arrived of it.
        let received = self.consumed + src.len() as u64;
        self.reset();
        src.clear();
        Err(CodecError::Truncated { received })
    }
}

/// What went wrong sending a frame whose files are read from disk.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// A file could not be opened or its metadata read (nothing was sent).
    #[error("cannot open {}: {source}", path.display())]
    Open {
        /// The file's path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A path is not a regular file, so its length is not known in advance (nothing was sent).
    #[error("{} is not a regular file", path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// The frame breaks the format or the [`Limits`] (nothing was sent):
    /// [`CodecError::FileNameTooLong`], [`CodecError::TooManyFiles`],
    /// [`CodecError::MessageTooLarge`] or [`CodecError::FrameTooLarge`].
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// Reading a file failed while the frame was being sent; the frame is unfinished.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file's path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A file ended before the length announced for it (taken when it was opened): it shrank
    /// while being sent. The frame is unfinished.
    #[error("{} shrank while being sent: {read} of the {announced} announced bytes were there", path.display())]
    FileShrank {
        /// The file's path.
        path: PathBuf,
        /// The length announced in the frame.
        announced: u64,
        /// The bytes that could be read.
        read: u64,
    },
    /// A file held more bytes than the length announced for it: it grew while being sent. Found
    /// before its last announced byte was written, so the frame is unfinished.
    #[error("{} grew while being sent beyond the {announced} announced bytes", path.display())]
    FileGrew {
        /// The file's path.
        path: PathBuf,
        /// The length announced in the frame.
        announced: u64,
    },
    /// Writing to the peer failed; the frame is unfinished.
    #[error("cannot send the frame: {0}")]
    Io(#[from] io::Error),
}

/// A file to send: the name it gets in the frame and the path its bytes are read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSource {
    /// The name written in the frame (UTF-8, at most 65,535 bytes).
    pub name: String,
    /// Where the data is read from.
    pub path: PathBuf,
}

impl FileSource {
    /// The file at `path`, sent under `name`.
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>) -> FileSource {
        FileSource {
            name: name.into(),
            path: path.into(),
        }
    }
}

/// One opened file of a [`FileFrame`].
#[derive(Debug)]
struct OpenFile {
    name: String,
    path: PathBuf,
    file: tokio::fs::File,
    /// The length announced, from the metadata at open.
    len: u64,
}

/// A frame whose files are on disk, opened and measured, ready to be written with bounded
/// memory: see the [module documentation](self).
///
/// # Examples
/// ```no_run
/// use tej::stream::{FileFrame, FileSource};
/// use tej::{Limits, Status};
///
/// # async fn run(socket: &mut tokio::net::TcpStream) -> Result<(), tej::stream::StreamError> {
/// let files = [FileSource::new("big.iso", "/tmp/big.iso")];
/// let frame = FileFrame::open(Status::new(5).unwrap(), &files, "here it is").await?;
/// frame.check(&Limits::frame_only(u64::MAX))?;
/// let total = frame.encoded_len();
/// frame.write_to(socket, |sent| eprintln!("{sent} of {total} bytes")).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct FileFrame {
    status: Status,
    version: u8,
    files: Vec<OpenFile>,
    message: Bytes,
    /// The encoded length, saturated at `u64::MAX`.
    len: u64,
}

impl FileFrame {
    /// Opens every file of `files` and takes its length from its metadata; nothing is read yet.
    /// The frame has protocol version 1.
    ///
    /// # Errors
    /// [`StreamError::Open`], [`StreamError::NotAFile`], or [`StreamError::Codec`] with
    /// [`CodecError::FileNameTooLong`] for a name that does not fit the u16 field.
    pub async fn open(
        status: Status,
        files: &[FileSource],
        message: impl Into<Bytes>,
    ) -> Result<FileFrame, StreamError> {
        let message = message.into();
        let mut opened = Vec::with_capacity(files.len());
        let mut len = HEAD_LEN + MESSAGE_LEN_FIELD;
        len = len.saturating_add(message.len() as u64);
        for source in files {
            if source.name.len() > usize::from(u16::MAX) {
                return Err(StreamError::Codec(CodecError::FileNameTooLong {
                    len: source.name.len(),
                }));
            }
            let path = source.path.clone();
            let open_error = |source| StreamError::Open {
                path: path.clone(),
                source,
            };
            let file = tokio::fs::File::open(&path).await.map_err(open_error)?;
            let metadata = file.metadata().await.map_err(open_error)?;
            if !metadata.is_file() {
                return Err(StreamError::NotAFile { path });
            }
            len = len
                .saturating_add(FILE_FIXED_LEN + source.name.len() as u64)
                .saturating_add(metadata.len());
            opened.push(OpenFile {
                name: source.name.clone(),
                path,
                file,
                len: metadata.len(),
            });
        }
        Ok(FileFrame {
            status,
            version: PROTOCOL_VERSION,
            files: opened,
            message,
            len,
        })
    }

    /// The frame's length on the wire, header included, as announced by the files' lengths at
    /// open (`u64::MAX` if it does not fit).
    pub fn encoded_len(&self) -> u64 {
        self.len
    }

    /// The frame's status.
    pub fn status(&self) -> Status {
        self.status
    }

    /// How many files the frame carries.
    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    /// Checks the frame against `limits`, as an encoder would.
    ///
    /// # Errors
    /// [`CodecError::TooManyFiles`], [`CodecError::MessageTooLarge`] or
    /// [`CodecError::FrameTooLarge`].
    pub fn check(&self, limits: &Limits) -> Result<(), CodecError> {
        let count = self.files.len() as u64;
        if count > limits.max_files {
            return Err(CodecError::TooManyFiles {
                count,
                max: limits.max_files,
            });
        }
        let message = self.message.len() as u64;
        if message > limits.max_message_bytes {
            return Err(CodecError::MessageTooLarge {
                len: message,
                max: limits.max_message_bytes,
            });
        }
        if self.len > limits.max_frame_bytes {
            return Err(CodecError::FrameTooLarge {
                len: self.len,
                max: limits.max_frame_bytes,
            });
        }
        Ok(())
    }

    /// Writes the frame to `w` and flushes it: the head, each file's head and data copied from
    /// disk through a buffer of at most [`COPY_BUF`] bytes, then the message. `progress` is called
    /// after every write with the frame's bytes written so far (ending at
    /// [`encoded_len`](Self::encoded_len)). Returns the frame's length.
    ///
    /// Exactly the announced number of bytes is read from each file. A file that ends early, or
    /// still has bytes after its announced length, fails the send before the frame's last data
    /// byte is written, so a frame whose lengths lie is never completed.
    ///
    /// # Errors
    /// [`StreamError::Read`], [`StreamError::FileShrank`], [`StreamError::FileGrew`] or
    /// [`StreamError::Io`]. The frame is then unfinished on `w`: the stream is out of step and
    /// must be closed (the peer sees a truncated frame).
    pub async fn write_to<W: AsyncWrite + Unpin>(
        self,
        w: &mut W,
        mut progress: impl FnMut(u64),
    ) -> Result<u64, StreamError> {
        let mut written = 0u64;
        let mut head = BytesMut::with_capacity(HEAD_LEN as usize);
        head.put_u8(self.status.to_byte());
        head.put_u8(self.version);
        head.put_u64(self.files.len() as u64);
        // One buffer for every file, never larger than the largest file (nor COPY_BUF).
        let largest = self.files.iter().map(|f| f.len).max().unwrap_or(0);
        let mut buf = vec![0u8; largest.min(COPY_BUF as u64) as usize];
        for mut file in self.files {
            // Checked at open: the name fits the u16 field.
            head.put_u16(file.name.len() as u16);
            head.extend_from_slice(file.name.as_bytes());
            head.put_u64(file.len);
            if file.len == 0 {
                ensure_ended(&mut file).await?;
            }
            let mut left = file.len;
            while left > 0 {
                // `min` with a usize, so it fits.
                let want = left.min(buf.len() as u64) as usize;
                let chunk = &mut buf[..want];
                fill(&mut file.file, chunk)
                    .await
                    .map_err(|error| match error {
                        Fill::Read(source) => StreamError::Read {
                            path: file.path.clone(),
                            source,
                        },
                        Fill::Ended(got) => StreamError::FileShrank {
                            path: file.path.clone(),
                            announced: file.len,
                            read: file.len - left + got as u64,
                        },
                    })?;
                left -= want as u64;
                if left == 0 {
                    ensure_ended(&mut file).await?;
                }
                if !head.is_empty() {
                    w.write_all(&head).await?;
                    written += head.len() as u64;
                    head.clear();
                }
                w.write_all(chunk).await?;
                written += want as u64;
                progress(written);
            }
        }
        head.put_u64(self.message.len() as u64);
        if self.message.len() <= SMALL_MESSAGE {
            head.extend_from_slice(&self.message);
            w.write_all(&head).await?;
            written += head.len() as u64;
        } else {
            w.write_all(&head).await?;
            w.write_all(&self.message).await?;
            written += head.len() as u64 + self.message.len() as u64;
        }
        w.flush().await?;
        progress(written);
        Ok(written)
    }
}

/// Why [`fill`] stopped short.
enum Fill {
    Read(io::Error),
    /// The file ended after this many bytes of the chunk.
    Ended(usize),
}

/// Fills `chunk` from `file`.
async fn fill<R: AsyncRead + Unpin>(file: &mut R, chunk: &mut [u8]) -> Result<(), Fill> {
    let mut got = 0;
    while got < chunk.len() {
        match file.read(&mut chunk[got..]).await {
            Ok(0) => return Err(Fill::Ended(got)),
            Ok(n) => got += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(Fill::Read(error)),
        }
    }
    Ok(())
}

/// Checks that `file` has nothing after its announced length.
async fn ensure_ended(file: &mut OpenFile) -> Result<(), StreamError> {
    let mut probe = [0u8; 1];
    loop {
        return match file.file.read(&mut probe).await {
            Ok(0) => Ok(()),
            Ok(_) => Err(StreamError::FileGrew {
                path: file.path.clone(),
                announced: file.len,
            }),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => Err(StreamError::Read {
                path: file.path.clone(),
                source,
            }),
        };
    }
}

/// Sends one frame whose files are read from disk: [`FileFrame::open`], checked against `limits`
/// ([`FileFrame::check`]), then [`FileFrame::write_to`]. Returns the frame's length.
///
/// # Errors
/// Before anything is sent: [`StreamError::Open`], [`StreamError::NotAFile`],
/// [`StreamError::Codec`]. Then as [`FileFrame::write_to`]: the stream is out of step and must be
/// closed.
///
/// # Examples
/// ```no_run
/// use tej::stream::{write_frame_from_files, FileSource};
/// use tej::{Limits, Status};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let mut socket = tokio::net::TcpStream::connect("127.0.0.1:8000").await?;
/// let files = [FileSource::new("report.pdf", "/tmp/report.pdf")];
/// let status = Status::new(5).unwrap();
/// write_frame_from_files(&mut socket, status, &files, b"fyi", &Limits::default(), |_| {}).await?;
/// # Ok(()) }
/// ```
pub async fn write_frame_from_files<W: AsyncWrite + Unpin>(
    w: &mut W,
    status: Status,
    files: &[FileSource],
    message: &[u8],
    limits: &Limits,
    progress: impl FnMut(u64),
) -> Result<u64, StreamError> {
    let frame = FileFrame::open(status, files, Bytes::copy_from_slice(message)).await?;
    frame.check(limits)?;
    frame.write_to(w, progress).await
}
