//! Streaming: [`PartCodec`] fed at every split point, one byte at a time and in random chunkings;
//! its memory bound; [`write_frame_from_files`] over real sockets; [`HubClient::next_part`] and
//! [`HubClient::publish_files`] against real hubs and fake ones on `127.0.0.1:0`; and the CLI
//! streaming a 64 MiB file through the `tej-hub` binary in bounded memory.
//!
//! Every wait is bounded in time, every loop in count.

#[path = "common/hub.rs"]
mod hub_common;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use hub_common::{pattern, start_hub, status, stop_hub, test_config, within, BinHub, PATIENCE};
use proptest::prelude::*;
use sha2::{Digest, Sha256};
use tej_hub::hub::{HubClient, HubError};
use tej_hub::stream::{
    write_frame_from_files, FileFrame, FileSource, Part, PartCodec, StreamError, COPY_BUF,
    READ_CHUNK,
};
use tej_hub::{CodecError, Frame, Limits, TejCodec, WireCodec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Decoder, FramedRead};

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("tej-stream-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `data` to `name` in this directory and returns its path.
    fn file(&self, name: &str, data: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, data).expect("write test file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn wire(frame: &Frame) -> Bytes {
    frame.to_wire().expect("test frames encode")
}

/// A frame with every kind of file: data, empty, a non-ASCII name, and a message.
fn sample_frame() -> Frame {
    Frame::builder(status(5))
        .file("a.txt", &b"hello"[..])
        .file("empty", &b""[..])
        .file("é.bin", pattern(300, 1))
        .message(&b"the message"[..])
        .build()
}

/// Rebuilds frames from parts, checking the order the parts must come in.
#[derive(Default)]
struct Assembler {
    frames: Vec<Frame>,
    current: Option<Frame>,
    announced_files: u64,
    /// The data length the current file (or message) announced, and what arrived of it.
    expected: u64,
    data: BytesMut,
    in_file: bool,
    in_message: bool,
}

impl Assembler {
    fn push(&mut self, part: Part) {
        match part {
            Part::Head {
                status,
                version,
                files,
            } => {
                assert!(self.current.is_none(), "Head inside a frame");
                self.current = Some(Frame::builder(status).version(version).build());
                self.announced_files = files;
            }
            Part::FileStart { index, name, len } => {
                let frame = self.current.as_mut().expect("FileStart outside a frame");
                assert_eq!(index, frame.files.len() as u64);
                assert!(index < self.announced_files);
                frame.files.push(tej_hub::File::new(name, Bytes::new()));
                self.begin_data(len);
                self.in_file = true;
            }
            Part::FileData(chunk) => self.add_data(self.in_file, &chunk),
            Part::FileEnd { index } => {
                assert!(self.in_file, "FileEnd outside a file");
                let data = self.end_data();
                let frame = self.current.as_mut().expect("FileEnd outside a frame");
                assert_eq!(index + 1, frame.files.len() as u64);
                if let Some(file) = frame.files.last_mut() {
                    file.data = data;
                }
                self.in_file = false;
            }
            Part::MessageStart { len } => {
                let frame = self.current.as_ref().expect("MessageStart outside a frame");
                assert_eq!(frame.files.len() as u64, self.announced_files);
                self.begin_data(len);
                self.in_message = true;
            }
            Part::MessageData(chunk) => self.add_data(self.in_message, &chunk),
            Part::End => {
                assert!(self.in_message, "End before the message");
                let message = self.end_data();
                let mut frame = self.current.take().expect("End outside a frame");
                frame.message = message;
                self.in_message = false;
                self.frames.push(frame);
            }
        }
    }

    /// A file's data or the message begins, `len` bytes announced.
    fn begin_data(&mut self, len: u64) {
        assert!(!self.in_file && !self.in_message, "data inside data");
        self.expected = len;
        self.data.clear();
    }

    /// A chunk of data; `open` says whether a file (or the message, as the part claims) is open.
    fn add_data(&mut self, open: bool, chunk: &[u8]) {
        assert!(open, "data outside a file or the message");
        assert!(!chunk.is_empty(), "empty chunk");
        self.data.extend_from_slice(chunk);
        assert!(self.data.len() as u64 <= self.expected);
    }

    /// The data of the file or message that ends: exactly as long as announced.
    fn end_data(&mut self) -> Bytes {
        assert_eq!(self.data.len() as u64, self.expected);
        self.data.split().freeze()
    }

    fn mid_frame(&self) -> bool {
        self.current.is_some()
    }
}

/// Feeds `bytes` to a [`PartCodec`] in pieces of the given sizes (the last piece takes the rest),
/// decoding after each piece and at the end of the stream.
fn decode_chunked(
    limits: Limits,
    bytes: &[u8],
    sizes: impl IntoIterator<Item = usize>,
) -> Result<Vec<Part>, CodecError> {
    let mut codec = PartCodec::new(limits);
    let mut buf = BytesMut::new();
    let mut parts = Vec::new();
    let mut at = 0;
    let mut sizes = sizes.into_iter();
    while at < bytes.len() {
        let size = sizes.next().unwrap_or(bytes.len()).max(1);
        let end = at.saturating_add(size).min(bytes.len());
        buf.extend_from_slice(&bytes[at..end]);
        at = end;
        while let Some(part) = codec.decode(&mut buf)? {
            parts.push(part);
        }
    }
    while let Some(part) = codec.decode_eof(&mut buf)? {
        parts.push(part);
    }
    Ok(parts)
}

fn assemble(parts: Vec<Part>) -> Vec<Frame> {
    let mut assembler = Assembler::default();
    for part in parts {
        assembler.push(part);
    }
    assert!(!assembler.mid_frame(), "parts end inside a frame");
    assembler.frames
}

// ---- PartCodec ----

#[test]
fn whole_frame_gives_the_parts_of_the_frame() {
    let frame = sample_frame();
    let parts = decode_chunked(Limits::default(), &wire(&frame), [usize::MAX]).unwrap();
    assert_eq!(parts, Part::of_frame(&frame));
    assert_eq!(assemble(parts), [frame]);
}

#[test]
fn every_split_point_gives_the_same_frame() {
    let frame = sample_frame();
    let bytes = wire(&frame);
    for split in 0..=bytes.len() {
        let parts = decode_chunked(Limits::default(), &bytes, [split, usize::MAX])
            .unwrap_or_else(|error| panic!("split {split}: {error}"));
        assert_eq!(
            assemble(parts),
            std::slice::from_ref(&frame),
            "split {split}"
        );
    }
}

#[test]
fn one_byte_at_a_time_gives_the_same_frames() {
    let first = sample_frame();
    let second = Frame::message(status(9), "");
    let third = Frame::builder(status(0)).file("x", &b"y"[..]).build();
    let mut bytes = BytesMut::new();
    for frame in [&first, &second, &third] {
        bytes.extend_from_slice(&wire(frame));
    }
    let parts = decode_chunked(Limits::default(), &bytes, std::iter::repeat(1)).unwrap();
    // Every payload byte is its own chunk.
    let chunks = parts
        .iter()
        .filter(|part| matches!(part, Part::FileData(_) | Part::MessageData(_)))
        .count();
    assert_eq!(chunks, 5 + 300 + 11 + 1);
    assert_eq!(assemble(parts), [first, second, third]);
}

#[test]
fn chunks_share_the_read_buffer() {
    let frame = Frame::builder(status(5))
        .file("f", pattern(1000, 2))
        .build();
    let mut buf = BytesMut::from(&wire(&frame)[..]);
    let start = buf.as_ptr() as usize;
    let end = start + buf.len();
    let mut codec = PartCodec::default();
    let mut chunks = 0;
    while let Some(part) = codec.decode(&mut buf).unwrap() {
        if let Part::FileData(chunk) = part {
            let at = chunk.as_ptr() as usize;
            assert!(at >= start && at + chunk.len() <= end, "copied chunk");
            chunks += 1;
        }
    }
    assert_eq!(chunks, 1);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_chunkings_give_the_same_frames(
        files in prop::collection::vec(("[a-zé/.]{0,12}", prop::collection::vec(any::<u8>(), 0..3000)), 0..4),
        message in prop::collection::vec(any::<u8>(), 0..600),
        code in 0u8..=127,
        sizes in prop::collection::vec(1usize..700, 1..64),
        repeat in 1usize..3,
    ) {
        let mut builder = Frame::builder(status(code)).message(message);
        for (name, data) in files {
            builder = builder.file(name, data);
        }
        let frame = builder.build();
        let mut bytes = BytesMut::new();
        for _ in 0..repeat {
            bytes.extend_from_slice(&wire(&frame));
        }
        let parts = decode_chunked(Limits::default(), &bytes, sizes.iter().copied().cycle())
            .map_err(|error| TestCaseError::fail(error.to_string()))?;
        prop_assert_eq!(assemble(parts), vec![frame; repeat]);
    }
}

/// Appends a file's head: name length, `name`, data length `len`.
fn put_file_head(buf: &mut BytesMut, name: &[u8], len: u64) {
    buf.put_u16(u16::try_from(name.len()).expect("a short name"));
    buf.put_slice(name);
    buf.put_u64(len);
}

#[test]
fn errors_are_typed() {
    let limits = Limits {
        max_frame_bytes: 1000,
        max_files: 2,
        max_message_bytes: 100,
    };
    let decode = |bytes: &[u8]| decode_chunked(limits, bytes, [usize::MAX]);

    assert!(matches!(
        decode(&[0x05, 1]),
        Err(CodecError::InvalidStatusByte { byte: 0x05 })
    ));
    let mut head = hub_common::head(0x85, 1, 3);
    assert!(matches!(
        decode(&head),
        Err(CodecError::TooManyFiles { count: 3, max: 2 })
    ));

    head = hub_common::head(0x85, 1, 1);
    put_file_head(&mut head, b"a", 5000);
    assert!(matches!(
        decode(&head),
        Err(CodecError::FrameTooLarge { max: 1000, .. })
    ));

    head = hub_common::head(0x85, 1, 2);
    put_file_head(&mut head, b"a", 0);
    put_file_head(&mut head, &[0xff, 0xfe], 0);
    assert!(matches!(
        decode(&head),
        Err(CodecError::FileNameNotUtf8 { index: 1 })
    ));

    head = hub_common::head(0x85, 1, 0);
    head.put_u64(101);
    assert!(matches!(
        decode(&head),
        Err(CodecError::MessageTooLarge { len: 101, max: 100 })
    ));
}

#[test]
fn an_error_resets_the_codec() {
    let mut codec = PartCodec::default();
    let mut buf = BytesMut::from(&[0x05u8][..]);
    assert!(codec.decode(&mut buf).is_err());
    assert!(!codec.is_mid_frame());
    let frame = sample_frame();
    let mut buf = BytesMut::from(&wire(&frame)[..]);
    let mut parts = Vec::new();
    while let Some(part) = codec.decode(&mut buf).unwrap() {
        parts.push(part);
    }
    assert_eq!(assemble(parts), [frame]);
}

#[test]
fn end_of_stream_inside_a_frame_is_truncated() {
    let frame = sample_frame();
    let bytes = wire(&frame);
    // Between frames: a clean end.
    assert!(decode_chunked(Limits::default(), &[], [1])
        .unwrap()
        .is_empty());
    for cut in 1..bytes.len() {
        let mut codec = PartCodec::default();
        let mut buf = BytesMut::from(&bytes[..cut]);
        let mut data = 0;
        let error = loop {
            match codec.decode_eof(&mut buf) {
                Ok(Some(Part::FileData(chunk) | Part::MessageData(chunk))) => data += chunk.len(),
                Ok(Some(Part::End)) => panic!("cut {cut}: a cut frame ended"),
                Ok(Some(_)) => {}
                Ok(None) => panic!("cut {cut}: clean end inside a frame"),
                Err(error) => break error,
            }
        };
        assert!(
            matches!(error, CodecError::Truncated { received } if received == cut as u64),
            "cut {cut}: {error:?}"
        );
        assert!(data < cut);
        assert!(!codec.is_mid_frame());
    }
}

/// What a `FramedRead` does: decode until `None`, make room for one byte, read into the spare
/// capacity (here at most `burst` bytes of `source`).
fn feed_like_framed_read(
    codec: &mut PartCodec,
    source: &[u8],
    burst: usize,
    mut on_part: impl FnMut(Part),
) -> usize {
    let mut buf = BytesMut::new();
    let mut at = 0;
    let mut max_capacity = 0;
    loop {
        while let Some(part) = codec.decode(&mut buf).expect("valid stream") {
            on_part(part);
        }
        if at == source.len() {
            return max_capacity;
        }
        buf.reserve(1);
        let room = buf.capacity() - buf.len();
        let n = room.min(burst).min(source.len() - at);
        buf.extend_from_slice(&source[at..at + n]);
        at += n;
        max_capacity = max_capacity.max(buf.capacity());
    }
}

#[test]
fn an_announced_huge_file_costs_only_what_arrives() {
    let mut bytes = hub_common::head(0x85, 1, 1);
    bytes.put_u16(3);
    bytes.put_slice(b"big");
    bytes.put_u64(1 << 60);
    bytes.put_slice(&[7u8; 10]);
    let mut codec = PartCodec::new(Limits::frame_only(u64::MAX));
    let mut data = 0;
    let max_capacity = feed_like_framed_read(&mut codec, &bytes, usize::MAX, |part| {
        if let Part::FileData(chunk) = part {
            data += chunk.len();
        }
    });
    assert_eq!(data, 10);
    assert!(codec.is_mid_frame());
    assert!(
        max_capacity <= 2 * READ_CHUNK,
        "buffer grew to {max_capacity}"
    );
}

#[test]
fn a_large_frame_streams_through_a_chunk_sized_buffer() {
    let frame = Frame::builder(status(5))
        .file("big", pattern(8 << 20, 3))
        .message(pattern(300_000, 4))
        .build();
    let bytes = wire(&frame);
    for burst in [1000, 100_000, usize::MAX] {
        let mut codec = PartCodec::new(Limits::frame_only(u64::MAX));
        let mut assembler = Assembler::default();
        let mut largest_chunk = 0;
        let max_capacity = feed_like_framed_read(&mut codec, &bytes, burst, |part| {
            if let Part::FileData(chunk) | Part::MessageData(chunk) = &part {
                largest_chunk = largest_chunk.max(chunk.len());
            }
            assembler.push(part);
        });
        assert_eq!(
            assembler.frames,
            std::slice::from_ref(&frame),
            "burst {burst}"
        );
        assert!(
            max_capacity <= 2 * READ_CHUNK,
            "burst {burst}: buffer grew to {max_capacity}"
        );
        assert!(largest_chunk <= 2 * READ_CHUNK, "burst {burst}");
    }
}

#[tokio::test]
async fn framed_read_over_a_socket_keeps_the_buffer_small() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let frame = Frame::builder(status(5))
        .file("big", pattern(16 << 20, 5))
        .file("small", &b"s"[..])
        .build();
    let bytes = wire(&frame);
    let writer = tokio::spawn(async move {
        let mut socket = TcpStream::connect(addr).await.expect("connect");
        socket.write_all(&bytes).await.expect("write");
    });
    let (socket, _) = within(PATIENCE, "accept", listener.accept()).await.unwrap();
    let mut framed = FramedRead::new(socket, PartCodec::new(Limits::frame_only(u64::MAX)));
    let mut assembler = Assembler::default();
    let mut max_capacity = 0;
    for _ in 0..1_000_000 {
        let Some(part) = within(PATIENCE, "a part", framed.next()).await else {
            break;
        };
        assembler.push(part.expect("valid part"));
        max_capacity = max_capacity.max(framed.read_buffer().capacity());
    }
    writer.await.unwrap();
    assert_eq!(assembler.frames, [frame]);
    assert!(
        max_capacity <= 2 * READ_CHUNK,
        "buffer grew to {max_capacity}"
    );
}

// ---- write_frame_from_files ----

/// Accepts one connection on `listener` and reads everything until the peer closes.
async fn read_all(listener: &TcpListener) -> Vec<u8> {
    let (mut socket, _) = within(PATIENCE, "accept", listener.accept()).await.unwrap();
    let mut bytes = Vec::new();
    within(PATIENCE, "read", socket.read_to_end(&mut bytes))
        .await
        .expect("read the socket");
    bytes
}

#[tokio::test]
async fn files_from_disk_are_sent_exactly_as_to_wire() {
    let dir = TempDir::new("send");
    let big = pattern(3 * COPY_BUF + 123, 6);
    let small = pattern(1000, 7);
    for message in [pattern(20, 8), pattern(200_000, 9)] {
        let sources = [
            FileSource::new("big.bin", dir.file("big.bin", &big)),
            FileSource::new("empty", dir.file("empty", b"")),
            FileSource::new("é/small", dir.file("small", &small)),
        ];
        let expected = Frame::builder(status(5))
            .file("big.bin", big.clone())
            .file("empty", Bytes::new())
            .file("é/small", small.clone())
            .message(message.clone())
            .build();

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sender = tokio::spawn(async move {
            let mut socket = TcpStream::connect(addr).await.expect("connect");
            let mut seen = Vec::new();
            let sent = write_frame_from_files(
                &mut socket,
                status(5),
                &sources,
                &message,
                &Limits::frame_only(u64::MAX),
                |n| seen.push(n),
            )
            .await;
            (sent, seen)
        });
        let bytes = read_all(&listener).await;
        let (sent, seen) = within(PATIENCE, "sender", sender).await.unwrap();
        let len = expected.encoded_len();
        assert_eq!(sent.unwrap(), len);
        assert!(seen.windows(2).all(|pair| pair[0] <= pair[1]), "{seen:?}");
        assert_eq!(seen.last(), Some(&len));
        assert_eq!(bytes, wire(&expected));

        // A TejCodec reader gets the frame and its exact wire bytes.
        let mut buf = BytesMut::from(&bytes[..]);
        let decoded = WireCodec(TejCodec::new(Limits::frame_only(u64::MAX)))
            .decode_eof(&mut buf)
            .unwrap()
            .expect("one frame");
        assert_eq!(decoded.frame, expected);
        assert_eq!(decoded.wire, wire(&expected));
    }
}

/// Sends a frame of `files` into a `Vec`, checking that nothing was written.
async fn refused(files: Vec<FileSource>, limits: Limits) -> Result<u64, StreamError> {
    let mut sink = Vec::new();
    let result = write_frame_from_files(&mut sink, status(5), &files, b"m", &limits, |_| {}).await;
    assert!(
        sink.is_empty(),
        "{result:?} after writing {} bytes",
        sink.len()
    );
    result
}

#[tokio::test]
async fn frames_that_cannot_be_sent_are_refused_before_any_byte() {
    let dir = TempDir::new("refuse");
    let data = dir.file("data", &[1u8; 100]);
    let missing = dir.path().join("missing");
    assert!(matches!(
        refused(vec![FileSource::new("m", &missing)], Limits::default()).await,
        Err(StreamError::Open { path, .. }) if path == missing
    ));
    assert!(matches!(
        refused(vec![FileSource::new("d", dir.path())], Limits::default()).await,
        Err(StreamError::NotAFile { .. })
    ));
    assert!(matches!(
        refused(
            vec![FileSource::new("x".repeat(70_000), &data)],
            Limits::default()
        )
        .await,
        Err(StreamError::Codec(CodecError::FileNameTooLong {
            len: 70_000
        }))
    ));
    let small = Limits {
        max_frame_bytes: 100,
        ..Limits::default()
    };
    // 10 + (2 + 4 + 8 + 100) + 8 + 1 bytes.
    assert!(matches!(
        refused(vec![FileSource::new("data", &data)], small).await,
        Err(StreamError::Codec(CodecError::FrameTooLarge {
            len: 133,
            max: 100
        }))
    ));
    let one = Limits {
        max_files: 1,
        ..Limits::default()
    };
    let two = vec![FileSource::new("a", &data), FileSource::new("b", &data)];
    assert!(matches!(
        refused(two, one).await,
        Err(StreamError::Codec(CodecError::TooManyFiles {
            count: 2,
            max: 1
        }))
    ));
}

/// Sends `frame` to a fresh socket and returns the send's result and what the peer decoded.
async fn send_and_decode(frame: FileFrame) -> (Result<u64, StreamError>, Vec<u8>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sender = tokio::spawn(async move {
        let mut socket = TcpStream::connect(addr).await.expect("connect");
        // The socket is dropped with the task: the peer sees the end of the stream.
        frame.write_to(&mut socket, |_| {}).await
    });
    let bytes = read_all(&listener).await;
    (within(PATIENCE, "sender", sender).await.unwrap(), bytes)
}

/// Asserts that `bytes` are a frame of `full` bytes cut short: fewer bytes, decoded as truncated.
fn assert_cut_short(bytes: &[u8], full: u64) {
    assert!((bytes.len() as u64) < full);
    let decoded = decode_chunked(Limits::default(), bytes, [usize::MAX]);
    assert!(
        matches!(decoded, Err(CodecError::Truncated { .. })),
        "{decoded:?}"
    );
}

#[tokio::test]
async fn a_file_that_changes_size_fails_the_send_before_the_frame_completes() {
    let dir = TempDir::new("change");
    let len = 2 * COPY_BUF + 5;
    let path = dir.file("data", &pattern(len, 10));
    let sources = [FileSource::new("data", &path)];

    // Shrunk after it was measured.
    let frame = FileFrame::open(status(5), &sources, "m").await.unwrap();
    let full = frame.encoded_len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|file| file.set_len(COPY_BUF as u64 + 1))
        .unwrap();
    let (result, bytes) = send_and_decode(frame).await;
    assert!(
        matches!(
            &result,
            Err(StreamError::FileShrank { announced, read, .. })
                if *announced == len as u64 && *read == COPY_BUF as u64 + 1
        ),
        "{result:?}"
    );
    assert_cut_short(&bytes, full);

    // Grown after it was measured.
    std::fs::write(&path, pattern(len, 10)).unwrap();
    let frame = FileFrame::open(status(5), &sources, "m").await.unwrap();
    std::fs::write(&path, pattern(len + 1, 10)).unwrap();
    let (result, bytes) = send_and_decode(frame).await;
    assert!(
        matches!(&result, Err(StreamError::FileGrew { announced, .. }) if *announced == len as u64),
        "{result:?}"
    );
    assert_cut_short(&bytes, full);

    // An empty file that is no longer empty: refused before its head is written.
    let empty = dir.file("empty", b"");
    let sources = [FileSource::new("empty", &empty)];
    let frame = FileFrame::open(status(5), &sources, "m").await.unwrap();
    std::fs::write(&empty, b"now it has bytes").unwrap();
    let (result, bytes) = send_and_decode(frame).await;
    assert!(
        matches!(&result, Err(StreamError::FileGrew { announced: 0, .. })),
        "{result:?}"
    );
    assert!(bytes.is_empty(), "{bytes:?}");
}

// ---- HubClient ----

/// A subscriber to code 5 and a publisher, both connected to the hub at `addr`.
async fn subscriber_and_publisher(addr: SocketAddr) -> (HubClient, HubClient) {
    let mut subscriber = within(PATIENCE, "connect", HubClient::connect(addr))
        .await
        .unwrap();
    within(PATIENCE, "SUB", subscriber.subscribe("5"))
        .await
        .unwrap();
    let publisher = within(PATIENCE, "connect", HubClient::connect(addr))
        .await
        .unwrap();
    (subscriber, publisher)
}

/// The next part from `client`; panics on an error or the end of the connection.
async fn next_part(client: &mut HubClient) -> Part {
    within(PATIENCE, "next_part", client.next_part())
        .await
        .expect("next_part")
        .expect("hub still open")
}

/// Reads parts into `assembler` until the frame it has started is complete (at most `max_parts`).
async fn finish_frame(client: &mut HubClient, mut assembler: Assembler, max_parts: usize) -> Frame {
    for _ in 0..max_parts {
        if let Some(frame) = assembler.frames.pop() {
            return frame;
        }
        assembler.push(next_part(client).await);
    }
    assembler
        .frames
        .pop()
        .unwrap_or_else(|| panic!("no complete frame within {max_parts} parts"))
}

/// Reads parts until a frame is complete (at most `max_parts`).
async fn next_frame_by_parts(client: &mut HubClient, max_parts: usize) -> Frame {
    finish_frame(client, Assembler::default(), max_parts).await
}

/// Reads the next part, which must be the head of a frame announcing `files` files, into a new
/// [`Assembler`].
async fn frame_started(client: &mut HubClient, files: u64) -> Assembler {
    let head = next_part(client).await;
    assert!(
        matches!(head, Part::Head { files: got, .. } if got == files),
        "{head:?}"
    );
    let mut assembler = Assembler::default();
    assembler.push(head);
    assembler
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_files_reaches_next_part() {
    let hub = start_hub(test_config());
    let dir = TempDir::new("hubclient");
    let data = pattern(5 << 20, 11);
    let path = dir.file("five.bin", &data);
    let (mut subscriber, mut publisher) = subscriber_and_publisher(hub.local_addr()).await;
    let files = [FileSource::new("five.bin", &path)];
    let mut last = 0;
    let sent = within(
        PATIENCE,
        "publish_files",
        publisher.publish_files(status(5), &files, "hi", |n| last = n),
    )
    .await
    .unwrap();
    assert_eq!(sent, last);

    // Reserved codes are refused before anything is sent.
    for code in [2, 127] {
        let refused = publisher
            .publish_files(status(code), &files, "", |_| {})
            .await;
        assert!(
            matches!(refused, Err(HubError::ReservedStatus(_))),
            "{refused:?}"
        );
    }
    // A missing file is a typed error, and the connection stays usable.
    let missing = [FileSource::new("x", dir.path().join("missing"))];
    let refused = publisher
        .publish_files(status(5), &missing, "", |_| {})
        .await;
    assert!(
        matches!(refused, Err(HubError::File(StreamError::Open { .. }))),
        "{refused:?}"
    );

    let frame = next_frame_by_parts(&mut subscriber, 100_000).await;
    let expected = Frame::builder(status(5))
        .file("five.bin", data)
        .message("hi")
        .build();
    assert_eq!(frame, expected);
    assert_eq!(sent, expected.encoded_len());

    within(PATIENCE, "close", publisher.close()).await.unwrap();
    drop(subscriber);
    stop_hub(hub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_kept_during_commands_come_out_as_parts_and_modes_mix_at_boundaries() {
    let hub = start_hub(test_config());
    let (mut subscriber, mut publisher) = subscriber_and_publisher(hub.local_addr()).await;
    let first = sample_frame();
    let second = Frame::builder(status(5))
        .file("b", pattern(100_000, 12))
        .build();
    let third = Frame::message(status(5), "third");
    for frame in [&first, &second] {
        within(PATIENCE, "publish", publisher.publish(frame.clone()))
            .await
            .unwrap();
    }
    // Answered once the hub has handled both frames; the subscriber's INFO reply then queues
    // behind them, so the INFO below keeps both.
    within(PATIENCE, "INFO", publisher.info()).await.unwrap();
    within(PATIENCE, "INFO", subscriber.info()).await.unwrap();
    assert_eq!(subscriber.buffered(), 2);

    // A kept frame, handed out as parts: commands and next_frame wait for its end.
    let started = frame_started(&mut subscriber, 3).await;
    assert!(matches!(
        subscriber.next_frame().await,
        Err(HubError::InsideFrame)
    ));
    assert_eq!(finish_frame(&mut subscriber, started, 100).await, first);

    // Between frames, next_frame takes the next kept frame whole.
    let got = within(PATIENCE, "next_frame", subscriber.next_frame())
        .await
        .unwrap();
    assert_eq!(got, Some(second));

    // From the socket: a part read makes commands wait; after End they work again.
    within(PATIENCE, "publish", publisher.publish(third.clone()))
        .await
        .unwrap();
    let started = frame_started(&mut subscriber, 0).await;
    assert!(matches!(
        subscriber.info().await,
        Err(HubError::InsideFrame)
    ));
    assert_eq!(finish_frame(&mut subscriber, started, 100).await, third);
    within(PATIENCE, "INFO", subscriber.info()).await.unwrap();

    drop((subscriber, publisher));
    stop_hub(hub).await;
}

/// A fake hub on `127.0.0.1:0`: accepts one client, answers its first command `OK <reply>`, then
/// writes `then` and closes.
async fn fake_hub(reply: &'static str, then: Vec<Vec<u8>>, pause: Duration) -> HubClient {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (socket, _) = listener.accept().await.expect("accept");
        let mut framed = tokio_util::codec::Framed::new(socket, TejCodec::default());
        let Some(Ok(_command)) = framed.next().await else {
            return;
        };
        let mut socket = framed.into_inner();
        let answer = Frame::message(status(127), format!("OK {reply}"));
        socket.write_all(&wire(&answer)).await.expect("reply");
        for piece in then {
            tokio::time::sleep(pause).await;
            if socket.write_all(&piece).await.is_err() {
                return;
            }
        }
        // Dropped: the client sees the end of the stream.
    });
    within(PATIENCE, "connect", HubClient::connect(addr))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_frame_cut_short_is_truncated_not_a_panic() {
    let frame = Frame::builder(status(5))
        .file("f", pattern(50_000, 13))
        .build();
    let bytes = wire(&frame);
    let cut = bytes[..30_000].to_vec();
    let mut client = fake_hub("SUB 5", vec![cut], Duration::ZERO).await;
    within(PATIENCE, "SUB", client.subscribe("5"))
        .await
        .unwrap();
    let mut data = 0;
    let error = 'read: {
        for _ in 0..100_000 {
            match within(PATIENCE, "next_part", client.next_part()).await {
                Ok(Some(Part::FileData(chunk))) => data += chunk.len(),
                Ok(Some(Part::End)) => panic!("a cut frame ended"),
                Ok(Some(_)) => {}
                Ok(None) => panic!("clean end inside a frame"),
                Err(error) => break 'read error,
            }
        }
        panic!("no error within 100,000 parts");
    };
    assert!(
        matches!(
            error,
            HubError::Codec(CodecError::Truncated { received: 30_000 })
        ),
        "{error:?}"
    );
    assert!(data > 0 && data < 30_000);
    // The connection has ended.
    assert!(matches!(client.next_part().await, Ok(None)));
}

#[tokio::test]
async fn control_frames_between_frames_are_handled_while_reading_parts() {
    let frame = Frame::message(status(5), "relayed");
    let ping = Frame::ping();
    let closing = Frame::message(status(127), "ERR slow consumer");
    let mut client = fake_hub(
        "SUB 5",
        vec![
            wire(&ping).to_vec(),
            wire(&frame).to_vec(),
            wire(&closing).to_vec(),
        ],
        Duration::ZERO,
    )
    .await;
    within(PATIENCE, "SUB", client.subscribe("5"))
        .await
        .unwrap();
    let got = next_frame_by_parts(&mut client, 10).await;
    assert_eq!(got, frame);
    let closed = within(PATIENCE, "next_part", client.next_part()).await;
    assert!(
        matches!(&closed, Err(HubError::Closed { reason: Some(r) }) if r == "slow consumer"),
        "{closed:?}"
    );
}

#[tokio::test]
async fn a_frame_started_by_next_frame_can_be_read_by_parts() {
    let frame = Frame::builder(status(5))
        .file("f", pattern(10_000, 14))
        .message("m")
        .build();
    let bytes = wire(&frame);
    let pieces = vec![bytes[..5000].to_vec(), bytes[5000..].to_vec()];
    let mut client = fake_hub("SUB 5", pieces, Duration::from_millis(500)).await;
    within(PATIENCE, "SUB", client.subscribe("5"))
        .await
        .unwrap();
    // next_frame gives up while (most likely) only the first half has arrived.
    let waited = tokio::time::timeout(Duration::from_millis(750), client.next_frame()).await;
    assert!(waited.is_err(), "{waited:?}");
    let got = next_frame_by_parts(&mut client, 1000).await;
    assert_eq!(got, frame);
}

// ---- the CLI ----

/// The peak resident set size (`VmHWM`) of a running process, in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A child process whose peak memory is sampled until it exits.
struct Watched {
    name: &'static str,
    child: Child,
    /// Collects the child's stderr (its pipe must stay open while the child runs).
    stderr: Option<std::thread::JoinHandle<String>>,
    peak_kib: u64,
    exit: Option<std::process::ExitStatus>,
}

impl Watched {
    /// Watches `child`, whose stderr is piped, collecting its stderr in a thread.
    fn new(name: &'static str, mut child: Child) -> Watched {
        let pipe = child.stderr.take();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        });
        Watched::with_stderr(name, child, stderr)
    }

    /// Watches `child`, whose stderr `stderr` collects.
    fn with_stderr(
        name: &'static str,
        child: Child,
        stderr: std::thread::JoinHandle<String>,
    ) -> Watched {
        Watched {
            name,
            child,
            stderr: Some(stderr),
            peak_kib: 0,
            exit: None,
        }
    }

    /// Samples the peak until the process exits; false while it runs.
    fn poll(&mut self) -> bool {
        if self.exit.is_some() {
            return true;
        }
        // Sampled before try_wait: an exited (zombie) process has no VmHWM any more.
        if let Some(kib) = peak_rss_kib(self.child.id()) {
            self.peak_kib = self.peak_kib.max(kib);
        }
        self.exit = self.child.try_wait().expect("poll the child");
        self.exit.is_some()
    }

    /// Stdout and stderr, once the child has exited.
    fn output(&mut self) -> (String, String) {
        let mut stdout = String::new();
        if let Some(out) = self.child.stdout.as_mut() {
            let _ = out.read_to_string(&mut stdout);
        }
        let stderr = self
            .stderr
            .take()
            .map(|thread| thread.join().unwrap_or_default());
        (stdout, stderr.unwrap_or_default())
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn sha256_file(path: &Path) -> Vec<u8> {
    let mut file = std::fs::File::open(path).expect("open for hashing");
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).expect("read for hashing");
        if n == 0 {
            return hasher.finalize().to_vec();
        }
        hasher.update(&buf[..n]);
    }
}

/// `tej-hub ARGS --hub HUB`, with no stdin and its stdout and stderr piped.
fn tej_hub(args: &[&str], hub: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tej-hub"));
    command
        .args(args)
        .args(["--hub", hub])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Starts `tej-hub sub ARGS`, waits for its "subscribed" line on stderr, and watches it.
fn start_sub(hub: &str, args: &[&str]) -> Watched {
    let mut child = tej_hub(&[&["sub"], args].concat(), hub)
        .spawn()
        .expect("run tej-hub sub");
    let pipe = child.stderr.take().expect("piped stderr");
    let (first_tx, first_rx) = std::sync::mpsc::channel();
    // Reads all of stderr (the pipe stays open while sub runs), reporting the first line.
    let stderr = std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut text = String::new();
        let _ = reader.read_line(&mut text);
        let _ = first_tx.send(text.clone());
        let _ = reader.read_to_string(&mut text);
        text
    });
    let watched = Watched::with_stderr("sub", child, stderr);
    match first_rx.recv_timeout(PATIENCE) {
        Ok(line) => assert!(line.contains("subscribed to"), "sub said {line:?}"),
        Err(_) => panic!("sub printed nothing within {PATIENCE:?}"),
    }
    watched
}

/// `pub --file` of a 64 MiB file through the hub binary to `sub --out`: the file arrives intact
/// and neither CLI process comes near holding it in memory.
#[test]
fn cli_streams_a_64_mib_file_in_bounded_memory() {
    const LEN: usize = 64 << 20;
    const MAX_PEAK_KIB: u64 = 48 << 10;
    let dir = TempDir::new("cli-big");
    let source = dir.path().join("big.bin");
    {
        let mut file = std::fs::File::create(&source).expect("create the big file");
        let mut written = 0;
        let mut seed = 0;
        while written < LEN {
            let piece = pattern((LEN - written).min(4 << 20), seed);
            std::io::Write::write_all(&mut file, &piece).expect("write the big file");
            written += piece.len();
            seed += 1;
        }
    }
    let out_dir = dir.path().join("inbox");
    let hub = BinHub::start(&["--max-frame-bytes", "200000000"]);
    let addr = hub.addr.to_string();

    let mut sub = start_sub(
        &addr,
        &["5", "--count", "1", "--out", out_dir.to_str().unwrap()],
    );
    let source_arg = source.to_str().expect("a UTF-8 temp path");
    let publisher = tej_hub(
        &["pub", "5", "--message", "big one", "--file", source_arg],
        &addr,
    )
    .spawn()
    .expect("run tej-hub pub");
    let mut publisher = Watched::new("pub", publisher);

    let deadline = Instant::now() + Duration::from_secs(120);
    for _ in 0..100_000 {
        let done = [publisher.poll(), sub.poll()];
        if done.iter().all(|done| *done) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let (publisher_peak, sub_peak) = (publisher.peak_kib, sub.peak_kib);
    for watched in [&mut publisher, &mut sub] {
        let (name, exit) = (watched.name, watched.exit);
        let (stdout, stderr) = watched.output();
        assert!(
            exit.is_some_and(|status| status.success()),
            "{name}: {exit:?}, stdout {stdout:?}, stderr {stderr:?}"
        );
        if name == "sub" {
            assert_eq!(
                stdout,
                format!("status: 5\nfile: big.bin ({LEN} bytes)\nmessage: big one\n")
            );
        }
    }
    let saved = out_dir.join("big.bin");
    assert_eq!(sha256_file(&saved), sha256_file(&source));
    println!(
        "peak RSS: pub {publisher_peak} KiB, sub {sub_peak} KiB, hub {} KiB",
        hub.peak_rss_kib()
    );
    for (name, peak) in [("pub", publisher_peak), ("sub", sub_peak)] {
        assert!(peak > 0, "{name}: no sample");
        assert!(
            peak < MAX_PEAK_KIB,
            "{name} peaked at {peak} KiB for a {LEN}-byte file"
        );
    }
}

/// A fake hub that acknowledges `SUB 5`, sends part of a frame and hangs up: `sub --out` removes
/// the partial file and reports the truncation.
#[tokio::test]
async fn cli_sub_removes_a_partial_file_when_the_frame_is_cut() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let frame = Frame::builder(status(5))
        .file("partial.bin", pattern(100_000, 15))
        .build();
    let cut = wire(&frame).slice(..60_000);
    let hub = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.expect("accept");
        let mut framed = tokio_util::codec::Framed::new(socket, TejCodec::default());
        let Some(Ok(command)) = framed.next().await else {
            return;
        };
        assert_eq!(&command.message[..], b"SUB 5");
        let mut socket = framed.into_inner();
        let ok = Frame::message(status(127), "OK SUB 5");
        socket.write_all(&wire(&ok)).await.expect("reply");
        socket.write_all(&cut).await.expect("half a frame");
    });
    let dir = TempDir::new("cli-cut");
    let out_dir = dir.path().join("inbox");
    let sub = tej_hub(
        &["sub", "5", "--out", out_dir.to_str().unwrap()],
        &addr.to_string(),
    );
    let child = tokio::process::Command::from(sub)
        .kill_on_drop(true)
        .spawn()
        .expect("run tej-hub sub");
    let output = within(PATIENCE, "sub", child.wait_with_output())
        .await
        .expect("sub output");
    within(PATIENCE, "fake hub", hub).await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("stream ended inside a frame"), "{stderr}");
    assert!(stderr.contains("removed partial"), "{stderr}");
    assert!(output.stdout.is_empty(), "{output:?}");
    let left: Vec<_> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
