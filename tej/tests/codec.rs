//! Codec tests: golden bytes written by hand from the TEJ v1 layout, frames arriving in every
//! possible split, every error variant with its numbers, zero-copy decoding, memory that follows
//! the bytes received rather than the bytes announced, and property tests.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use tej::{CodecError, File, Frame, FrameBuf, Limits, Status, TejCodec};
use tokio_util::codec::{Decoder, Encoder};

/// The decoder's read-ahead: how far it grows the buffer beyond what has arrived (codec.rs).
const READ_AHEAD: usize = 64 * 1024;
/// The largest file head (u16 name length, name, u64 data length) the decoder waits for whole.
const MAX_FILE_HEAD: usize = 2 + u16::MAX as usize + 8;
const MIB: u64 = 1024 * 1024;

fn status(code: u8) -> Status {
    Status::new(code).expect("test status codes are at most 127")
}

/// The frame the golden bytes below describe: two files, one with a two-byte character in its
/// name, and a message.
fn golden_frame() -> Frame {
    Frame::builder(status(5))
        .file("a.txt", &b"hello"[..])
        .file("é.txt", &[0x00, 0xff][..])
        .message("hi")
        .build()
}

/// `golden_frame()` written by hand from the layout, big-endian.
#[rustfmt::skip]
const GOLDEN: &[u8] = &[
    0x85,                                           // status byte: 0x80 | 5
    0x01,                                           // version
    0, 0, 0, 0, 0, 0, 0, 2,                         // file count
    0, 5,                                           // name length (bytes)
    b'a', b'.', b't', b'x', b't',                   // name
    0, 0, 0, 0, 0, 0, 0, 5,                         // data length
    b'h', b'e', b'l', b'l', b'o',                   // data
    0, 6,                                           // name length: "é" is two bytes in UTF-8
    0xc3, 0xa9, b'.', b't', b'x', b't',             // name
    0, 0, 0, 0, 0, 0, 0, 2,                         // data length
    0x00, 0xff,                                     // data
    0, 0, 0, 0, 0, 0, 0, 2,                         // message length
    b'h', b'i',                                     // message
];

fn encode(frame: &Frame) -> BytesMut {
    let mut wire = BytesMut::new();
    TejCodec::default()
        .encode(frame, &mut wire)
        .expect("frame within the default limits");
    wire
}

fn encode_all(frames: &[Frame]) -> BytesMut {
    let mut codec = TejCodec::default();
    let mut wire = BytesMut::new();
    for frame in frames {
        codec
            .encode(frame.clone(), &mut wire)
            .expect("frame within the default limits");
    }
    wire
}

fn frame_buf_of(frames: &[Frame]) -> FrameBuf {
    let codec = TejCodec::default();
    let mut queue = FrameBuf::new();
    for frame in frames {
        queue
            .push(&codec, frame)
            .expect("frame within the default limits");
    }
    queue
}

/// Drains a `FrameBuf` chunk by chunk, the way a writer does.
fn drain_by_chunks(mut queue: FrameBuf) -> Vec<u8> {
    let mut out = Vec::with_capacity(queue.remaining());
    let mut guard = 0;
    while queue.has_remaining() {
        let chunk = queue.chunk();
        assert!(
            !chunk.is_empty(),
            "a FrameBuf with bytes left returned an empty chunk"
        );
        out.extend_from_slice(chunk);
        let n = chunk.len();
        queue.advance(n);
        guard += 1;
        assert!(guard < 10_000, "FrameBuf never drains");
    }
    assert!(queue.is_empty());
    out
}

/// Drains a `FrameBuf` through `chunks_vectored`, advancing by part of the slices each time so
/// that partial advances inside a chunk are exercised too.
fn drain_vectored(mut queue: FrameBuf) -> Vec<u8> {
    let mut out = Vec::with_capacity(queue.remaining());
    let mut guard = 0;
    while queue.has_remaining() {
        let mut slices = [std::io::IoSlice::new(&[]); 3];
        let n = queue.chunks_vectored(&mut slices);
        assert!(n > 0, "a FrameBuf with bytes left offered no slice");
        // Take all of the first slice and 1000 bytes of the second, like a short write.
        let mut taken = slices[0].len();
        out.extend_from_slice(&slices[0]);
        if n > 1 {
            let part = slices[1].len().min(1000);
            out.extend_from_slice(&slices[1][..part]);
            taken += part;
        }
        queue.advance(taken);
        guard += 1;
        assert!(guard < 10_000, "FrameBuf never drains");
    }
    out
}

/// Decodes every complete frame in `buf`, panicking on an error.
fn decode_ready(codec: &mut TejCodec, buf: &mut BytesMut, out: &mut Vec<Frame>) {
    // Each frame takes at least 18 bytes, so this bounds the loop.
    for _ in 0..=buf.len() {
        match codec.decode(buf) {
            Ok(Some(frame)) => out.push(frame),
            Ok(None) => return,
            Err(error) => panic!("decode failed: {error}"),
        }
    }
    panic!("decoder kept returning frames beyond what the buffer can hold");
}

/// A 10-byte frame head: status byte, version 1, file count.
fn head(status_byte: u8, files: u64) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_u8(status_byte);
    buf.put_u8(1);
    buf.put_u64(files);
    buf
}

/// A file head: u16 name length, name, u64 data length.
fn put_file_head(buf: &mut BytesMut, name: &[u8], data_len: u64) {
    buf.put_u16(u16::try_from(name.len()).expect("test names fit a u16"));
    buf.put_slice(name);
    buf.put_u64(data_len);
}

/// A new decoder fed `wire` in two pieces, split at byte `k`: the decoder, what is left in its
/// buffer and the frames it decoded.
fn decode_split(wire: &[u8], k: usize) -> (TejCodec, BytesMut, Vec<Frame>) {
    let mut codec = TejCodec::default();
    let mut buf = BytesMut::from(&wire[..k]);
    let mut decoded = Vec::new();
    decode_ready(&mut codec, &mut buf, &mut decoded);
    buf.extend_from_slice(&wire[k..]);
    decode_ready(&mut codec, &mut buf, &mut decoded);
    (codec, buf, decoded)
}

/// What a new decoder with the default limits makes of `buf`.
fn decode_fresh(mut buf: BytesMut) -> Result<Option<Frame>, CodecError> {
    TejCodec::default().decode(&mut buf)
}

/// A byte pattern that differs per position and per seed, so misplaced bytes show.
fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

/// A stream of frames of many shapes: empty, ping, files of several sizes, non-ASCII names.
fn assorted_frames() -> Vec<Frame> {
    vec![
        Frame::builder(status(0)).build(),
        golden_frame(),
        Frame::ping(),
        Frame::builder(status(127))
            .version(9)
            .file("", Bytes::new())
            .file("日本語", pattern(300, 1))
            .build(),
        Frame::message(status(64), pattern(200, 2)),
    ]
}

#[test]
fn golden_bytes_encode_and_decode() {
    let frame = golden_frame();
    assert_eq!(frame.encoded_len(), GOLDEN.len() as u64);

    assert_eq!(&encode(&frame)[..], GOLDEN, "Encoder<&Frame>");
    let mut owned = BytesMut::new();
    TejCodec::default()
        .encode(frame.clone(), &mut owned)
        .expect("frame within the default limits");
    assert_eq!(&owned[..], GOLDEN, "Encoder<Frame>");

    assert_eq!(
        drain_by_chunks(frame_buf_of(std::slice::from_ref(&frame))),
        GOLDEN,
        "FrameBuf chunks"
    );
    let mut queue = frame_buf_of(std::slice::from_ref(&frame));
    assert_eq!(queue.remaining(), GOLDEN.len());
    assert_eq!(
        queue.copy_to_bytes(GOLDEN.len()),
        GOLDEN,
        "FrameBuf copy_to_bytes"
    );
    assert!(queue.is_empty());

    let mut buf = BytesMut::from(GOLDEN);
    let mut codec = TejCodec::default();
    assert_eq!(
        codec.decode(&mut buf).expect("golden bytes decode"),
        Some(frame)
    );
    assert!(buf.is_empty(), "the decoder consumed exactly one frame");
    assert!(!codec.is_mid_frame());
    assert_eq!(codec.decode(&mut buf).expect("empty buffer"), None);
}

#[test]
fn golden_bytes_of_an_empty_frame() {
    let frame = Frame::builder(status(0)).build();
    #[rustfmt::skip]
    let golden: &[u8] = &[0x80, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(&encode(&frame)[..], golden);
    assert_eq!(
        drain_by_chunks(frame_buf_of(std::slice::from_ref(&frame))),
        golden
    );
    let decoded = TejCodec::default()
        .decode(&mut BytesMut::from(golden))
        .expect("decodes");
    assert_eq!(decoded, Some(frame));
}

#[test]
fn frame_buf_matches_encoder_with_large_payloads() {
    // Payloads of 4 KiB and more are queued by reference; the bytes must not change.
    let frames = vec![
        Frame::builder(status(1))
            .file("big.bin", pattern(10_000, 3))
            .file("small.bin", pattern(10, 4))
            .file("exact.bin", pattern(4096, 5))
            .message(pattern(4095, 6))
            .build(),
        golden_frame(),
        Frame::message(status(3), pattern(70_000, 7)),
        Frame::ping(),
    ];
    let expected = encode_all(&frames);

    assert_eq!(drain_by_chunks(frame_buf_of(&frames)), &expected[..]);
    assert_eq!(drain_vectored(frame_buf_of(&frames)), &expected[..]);
    let mut queue = frame_buf_of(&frames);
    assert_eq!(queue.remaining(), expected.len());
    let first = queue.copy_to_bytes(12_345);
    let rest = queue.copy_to_bytes(queue.remaining());
    assert_eq!(&first[..], &expected[..12_345]);
    assert_eq!(&rest[..], &expected[12_345..]);
}

#[test]
fn frame_buf_queues_large_payloads_without_copying() {
    let data = pattern(8192, 8);
    let frame = Frame::builder(status(1)).file("f", data.clone()).build();
    let mut queue = frame_buf_of(&[frame]);
    // Head of the frame and of the file, then the payload itself.
    let head_len = 10 + 2 + 1 + 8;
    assert_eq!(queue.chunk().len(), head_len);
    queue.advance(head_len);
    assert_eq!(queue.chunk().as_ptr(), data.as_ptr(), "payload was copied");
    assert_eq!(queue.chunk().len(), data.len());
}

#[test]
fn stream_split_at_every_byte_decodes_the_same_frames() {
    let frames = assorted_frames();
    let wire = encode_all(&frames);
    assert!(
        wire.len() > 500,
        "the stream should be long enough to split interestingly"
    );

    for k in 0..=wire.len() {
        let (mut codec, mut buf, decoded) = decode_split(&wire, k);
        assert_eq!(decoded, frames, "split at byte {k}");
        assert!(buf.is_empty());
        assert!(
            matches!(codec.decode_eof(&mut buf), Ok(None)),
            "split at byte {k}"
        );
    }
}

#[test]
fn stream_fed_one_byte_at_a_time_decodes_the_same_frames() {
    let frames = assorted_frames();
    let wire = encode_all(&frames);
    let mut codec = TejCodec::default();
    let mut buf = BytesMut::new();
    let mut decoded = Vec::new();
    for &byte in wire.iter() {
        buf.put_u8(byte);
        decode_ready(&mut codec, &mut buf, &mut decoded);
    }
    assert_eq!(decoded, frames);
    assert!(!codec.is_mid_frame());
}

#[test]
fn invalid_status_byte_is_refused() {
    let mut buf = head(0x05, 0);
    buf.put_u64(0);
    assert!(matches!(
        decode_fresh(buf),
        Err(CodecError::InvalidStatusByte { byte: 0x05 })
    ));
}

#[test]
fn invalid_status_byte_is_refused_from_the_first_byte() {
    // A peer that is not speaking TEJ is refused as soon as its first byte is in, without
    // waiting for the rest of a head that may never come.
    assert!(matches!(
        decode_fresh(BytesMut::from(&[0x7f][..])),
        Err(CodecError::InvalidStatusByte { byte: 0x7f })
    ));
    assert!(matches!(
        decode_fresh(BytesMut::from(&[0x00][..])),
        Err(CodecError::InvalidStatusByte { byte: 0x00 })
    ));
}

#[test]
fn too_many_files_is_refused_and_the_limit_itself_is_accepted() {
    assert!(matches!(
        decode_fresh(head(0x80, 1025)),
        Err(CodecError::TooManyFiles {
            count: 1025,
            max: 1024
        })
    ));
    assert!(matches!(
        decode_fresh(head(0x80, u64::MAX)),
        Err(CodecError::TooManyFiles {
            count: u64::MAX,
            max: 1024
        })
    ));
    let mut codec = TejCodec::default();
    assert!(matches!(codec.decode(&mut head(0x80, 1024)), Ok(None)));
    assert!(codec.is_mid_frame());
}

#[test]
fn frame_too_large_from_the_file_count_after_only_the_head() {
    let limits = Limits::frame_only(64 * MIB);
    // u64::MAX files: the announced length saturates; refused with nothing but the head in.
    let mut codec = TejCodec::new(limits);
    let mut buf = head(0x81, u64::MAX);
    assert_eq!(buf.len(), 10);
    assert!(matches!(
        codec.decode(&mut buf),
        Err(CodecError::FrameTooLarge { len: u64::MAX, max }) if max == 64 * MIB
    ));

    // Nine bytes are not a head yet.
    let mut codec = TejCodec::new(limits);
    let mut short = BytesMut::from(&head(0x81, u64::MAX)[..9]);
    assert!(matches!(codec.decode(&mut short), Ok(None)));

    // An exact lower bound: 10 + 10 * files + 8.
    let mut codec = TejCodec::new(limits);
    assert!(matches!(
        codec.decode(&mut head(0x81, 10_000_000)),
        Err(CodecError::FrameTooLarge { len: 100_000_018, max }) if max == 64 * MIB
    ));
}

#[test]
fn frame_too_large_from_a_file_data_length() {
    let max = Limits::DEFAULT_MAX_FRAME_BYTES;
    // Head 10 + file head 2 + 1 + 8 + message length 8 = 29 bytes besides the data.
    let mut buf = head(0x80, 1);
    put_file_head(&mut buf, b"x", max - 28);
    assert!(matches!(
        decode_fresh(buf),
        Err(CodecError::FrameTooLarge { len, max: m }) if len == max + 1 && m == max
    ));

    // A frame of exactly the limit is accepted (and waited for).
    let mut buf = head(0x80, 1);
    put_file_head(&mut buf, b"x", max - 29);
    let mut codec = TejCodec::default();
    assert!(matches!(codec.decode(&mut buf), Ok(None)));
    assert!(codec.is_mid_frame());

    // 2^63 bytes, far beyond.
    let mut buf = head(0x80, 1);
    put_file_head(&mut buf, b"x", 1 << 63);
    assert!(matches!(
        decode_fresh(buf),
        Err(CodecError::FrameTooLarge { len, max: m }) if len == (1 << 63) + 29 && m == max
    ));
}

#[test]
fn frame_too_large_from_a_message_length() {
    let mut codec = TejCodec::new(Limits::frame_only(1000));
    let mut buf = head(0x80, 0);
    buf.put_u64(1000);
    assert!(matches!(
        codec.decode(&mut buf),
        Err(CodecError::FrameTooLarge {
            len: 1018,
            max: 1000
        })
    ));

    // Default limits: a 64 MiB message is allowed as a message but not inside a 64 MiB frame.
    let mut buf = head(0x80, 0);
    buf.put_u64(64 * MIB);
    assert!(matches!(
        decode_fresh(buf),
        Err(CodecError::FrameTooLarge { len, max }) if len == 64 * MIB + 18 && max == 64 * MIB
    ));
}

#[test]
fn message_too_large_is_refused() {
    let mut buf = head(0x80, 0);
    buf.put_u64(64 * MIB + 1);
    assert!(matches!(
        decode_fresh(buf),
        Err(CodecError::MessageTooLarge { len, max }) if len == 64 * MIB + 1 && max == 64 * MIB
    ));

    let limits = Limits {
        max_message_bytes: 10,
        ..Limits::default()
    };
    let mut codec = TejCodec::new(limits);
    let mut buf = head(0x80, 0);
    buf.put_u64(11);
    assert!(matches!(
        codec.decode(&mut buf),
        Err(CodecError::MessageTooLarge { len: 11, max: 10 })
    ));
    let mut codec = TejCodec::new(limits);
    let mut buf = head(0x80, 0);
    buf.put_u64(10);
    buf.put_slice(b"0123456789");
    let frame = codec
        .decode(&mut buf)
        .expect("at the limit")
        .expect("whole");
    assert_eq!(&frame.message[..], b"0123456789");
}

#[test]
fn file_name_not_utf8_names_the_file() {
    let mut buf = head(0x80, 3);
    put_file_head(&mut buf, "é".as_bytes(), 1);
    buf.put_u8(b'!');
    // A lone continuation byte and a truncated two-byte sequence.
    put_file_head(&mut buf, &[b'a', 0xa9, 0xc3], 0);
    assert!(matches!(
        decode_fresh(buf),
        Err(CodecError::FileNameNotUtf8 { index: 1 })
    ));

    let mut buf = head(0x80, 1);
    put_file_head(&mut buf, &[0xff, 0xfe], 0);
    assert!(matches!(
        decode_fresh(buf),
        Err(CodecError::FileNameNotUtf8 { index: 0 })
    ));
}

#[test]
fn decode_eof_reports_truncation_with_the_bytes_received() {
    let wire = encode(&golden_frame());
    // Cut at every point inside the frame: the count is what had arrived, wherever the decoder
    // stood (inside the head, a file head, file data, the message length or the message).
    for cut in 1..wire.len() {
        let mut codec = TejCodec::default();
        let mut buf = BytesMut::from(&wire[..cut]);
        assert!(matches!(codec.decode(&mut buf), Ok(None)), "cut at {cut}");
        match codec.decode_eof(&mut buf) {
            Err(CodecError::Truncated { received }) => {
                assert_eq!(received, cut as u64, "cut at {cut}");
            }
            other => panic!("cut at {cut}: expected Truncated, got {other:?}"),
        }
    }
}

#[test]
fn decode_eof_at_a_frame_boundary_is_clean() {
    let frames = [golden_frame(), Frame::ping()];
    let mut buf = encode_all(&frames);
    let mut codec = TejCodec::default();
    assert_eq!(
        codec.decode_eof(&mut buf).expect("whole"),
        Some(frames[0].clone())
    );
    assert_eq!(
        codec.decode_eof(&mut buf).expect("whole"),
        Some(frames[1].clone())
    );
    assert!(matches!(codec.decode_eof(&mut buf), Ok(None)));
    assert!(matches!(
        TejCodec::default().decode_eof(&mut BytesMut::new()),
        Ok(None)
    ));
}

#[test]
fn decoder_starts_clean_after_an_error() {
    let mut codec = TejCodec::default();
    let mut bad = head(0x80, 1);
    put_file_head(&mut bad, &[0xff], 0);
    assert!(codec.decode(&mut bad).is_err());
    assert!(!codec.is_mid_frame());
    let mut good = encode(&golden_frame());
    assert_eq!(
        codec.decode(&mut good).expect("clean state"),
        Some(golden_frame())
    );
}

#[test]
fn encode_refuses_frames_over_the_limits() {
    let limits = Limits {
        max_frame_bytes: 100,
        max_files: 2,
        max_message_bytes: 50,
    };
    let three_files = Frame::builder(status(1))
        .file("a", Bytes::new())
        .file("b", Bytes::new())
        .file("c", Bytes::new())
        .build();
    let long_message = Frame::message(status(1), pattern(51, 0));
    // 10 + (2 + 1 + 8 + 70) + 8 = 99 bytes, then 101 with a 2-byte message: FrameTooLarge.
    let large = Frame::builder(status(1))
        .file("a", pattern(70, 0))
        .message("xx")
        .build();
    let fits = Frame::builder(status(1)).file("a", pattern(70, 0)).build();
    assert_eq!(fits.encoded_len(), 99);
    let long_name = Frame::builder(status(1))
        .file("n".repeat(65_536), Bytes::new())
        .build();
    let longest_name = Frame::builder(status(1))
        .file("n".repeat(65_535), Bytes::new())
        .build();

    let check_all = |check: &dyn Fn(&Frame) -> Result<(), CodecError>| {
        assert!(matches!(
            check(&three_files),
            Err(CodecError::TooManyFiles { count: 3, max: 2 })
        ));
        assert!(matches!(
            check(&long_message),
            Err(CodecError::MessageTooLarge { len: 51, max: 50 })
        ));
        assert!(matches!(
            check(&large),
            Err(CodecError::FrameTooLarge { len: 101, max: 100 })
        ));
        assert!(check(&fits).is_ok());
    };

    check_all(&|frame| limits.check(frame));
    check_all(&|frame| {
        let mut dst = BytesMut::new();
        let result = TejCodec::new(limits).encode(frame, &mut dst);
        if result.is_err() {
            assert!(dst.is_empty(), "a refused frame left bytes behind");
        }
        result
    });
    check_all(&|frame| {
        let mut queue = FrameBuf::new();
        let result = queue.push(&TejCodec::new(limits), frame);
        if result.is_err() {
            assert!(queue.is_empty(), "a refused frame left bytes queued");
        }
        result
    });

    // The name length is a u16 whatever the limits.
    let generous = Limits::frame_only(u64::MAX);
    assert!(matches!(
        generous.check(&long_name),
        Err(CodecError::FileNameTooLong { len: 65_536 })
    ));
    let mut dst = BytesMut::new();
    assert!(matches!(
        TejCodec::new(generous).encode(&long_name, &mut dst),
        Err(CodecError::FileNameTooLong { len: 65_536 })
    ));
    assert!(dst.is_empty());
    let mut queue = FrameBuf::new();
    assert!(matches!(
        queue.push(&TejCodec::new(generous), &long_name),
        Err(CodecError::FileNameTooLong { len: 65_536 })
    ));
    assert!(queue.is_empty());

    // 65,535 bytes fits, and round-trips.
    let mut wire = encode(&longest_name);
    assert_eq!(&wire[10..12], &[0xff, 0xff]);
    assert_eq!(
        TejCodec::default().decode(&mut wire).expect("decodes"),
        Some(longest_name)
    );
}

#[test]
fn decoded_payloads_point_into_the_read_buffer() {
    let frame = Frame::builder(status(7))
        .file("one", pattern(10_000, 1))
        .file("two", pattern(3, 2))
        .message(pattern(5_000, 3))
        .build();
    let mut buf = encode(&frame);
    // Extra bytes after the frame must not matter.
    buf.put_slice(&[0x80, 1, 0]);
    let start = buf.as_ptr() as usize;
    let end = start + buf.len();
    let decoded = TejCodec::default()
        .decode(&mut buf)
        .expect("decodes")
        .expect("whole frame in the buffer");
    assert_eq!(decoded, frame);

    let inside = |payload: &Bytes| {
        let at = payload.as_ptr() as usize;
        at >= start && at + payload.len() <= end
    };
    for file in &decoded.files {
        assert!(inside(&file.data), "file {} was copied", file.name);
    }
    assert!(inside(&decoded.message), "message was copied");
    // And at exactly the offsets of the layout.
    assert_eq!(
        decoded.files[0].data.as_ptr() as usize,
        start + 10 + 2 + 3 + 8
    );
    assert_eq!(
        decoded.message.as_ptr() as usize,
        end - 3 - decoded.message.len()
    );
}

#[test]
fn announced_huge_file_costs_only_what_arrived() {
    let mut codec = TejCodec::new(Limits::frame_only(u64::MAX));
    let mut buf = head(0x80, 1);
    put_file_head(&mut buf, b"huge", 1 << 40);
    buf.put_slice(&[7; 100]);
    let mut arrived = buf.len();
    assert!(matches!(codec.decode(&mut buf), Ok(None)));
    assert!(codec.is_mid_frame());
    assert!(
        buf.capacity() <= arrived + READ_AHEAD,
        "capacity {} after {arrived} bytes",
        buf.capacity()
    );

    // Keep the bytes coming: the buffer grows with them, never towards the 1 TiB announced.
    // `reserve_towards` keeps up to max(buffered, 64 KiB) free, and `BytesMut::reserve` may
    // double the allocation on top: a constant factor of what arrived, at most 4x + 2 x 64 KiB.
    let chunk = [9u8; 4096];
    for _ in 0..256 {
        buf.put_slice(&chunk);
        arrived += chunk.len();
        assert!(matches!(codec.decode(&mut buf), Ok(None)));
        assert!(
            buf.capacity() <= 4 * arrived + 2 * READ_AHEAD,
            "capacity {} after {arrived} bytes",
            buf.capacity()
        );
    }
    assert!(buf.capacity() < 8 * 1024 * 1024);
}

#[test]
fn announced_huge_message_costs_only_what_arrived() {
    let mut codec = TejCodec::new(Limits::frame_only(u64::MAX));
    let mut buf = head(0x80, 0);
    buf.put_u64(1 << 40);
    buf.put_slice(b"abc");
    let arrived = buf.len();
    assert!(matches!(codec.decode(&mut buf), Ok(None)));
    assert!(
        buf.capacity() <= arrived + READ_AHEAD,
        "capacity {} after {arrived} bytes",
        buf.capacity()
    );
}

/// Random UTF-8 names, including multi-byte characters.
fn arb_name() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z0-9._-]{0,12}", "\\PC{0,8}", Just("é.txt".to_owned()),]
}

fn arb_bytes(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..=max).prop_map(Bytes::from)
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    let file = (arb_name(), prop_oneof![arb_bytes(64), arb_bytes(6 * 1024)])
        .prop_map(|(name, data)| File { name, data });
    (
        0..=127u8,
        any::<u8>(),
        proptest::collection::vec(file, 0..4),
        prop_oneof![arb_bytes(64), arb_bytes(6 * 1024)],
    )
        .prop_map(|(code, version, files, message)| Frame {
            status: status(code),
            version,
            files,
            message,
        })
}

/// Feeds `garbage` to a decoder, all at once, until it asks for more or fails.
fn feed_garbage(limits: Limits, garbage: &[u8]) -> BytesMut {
    let mut codec = TejCodec::new(limits);
    let mut buf = BytesMut::from(garbage);
    // Every frame takes at least 18 bytes, so this bounds the loop.
    for _ in 0..=garbage.len() {
        match codec.decode(&mut buf) {
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => break,
        }
    }
    // And as the end of the stream.
    let _ = codec.decode_eof(&mut buf);
    buf
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn round_trip(frame in arb_frame(), split in any::<prop::sample::Index>()) {
        let wire = encode(&frame);
        prop_assert_eq!(wire.len() as u64, frame.encoded_len());
        prop_assert_eq!(&drain_by_chunks(frame_buf_of(std::slice::from_ref(&frame)))[..], &wire[..]);

        let mut buf = wire.clone();
        let decoded = TejCodec::default().decode(&mut buf);
        prop_assert!(matches!(&decoded, Ok(Some(f)) if *f == frame), "{:?}", decoded);
        prop_assert!(buf.is_empty());

        // Split at a random point: nothing before the last byte, the frame after it.
        let k = split.index(wire.len());
        let mut codec = TejCodec::default();
        let mut buf = BytesMut::from(&wire[..k]);
        prop_assert!(matches!(codec.decode(&mut buf), Ok(None)));
        buf.extend_from_slice(&wire[k..]);
        let decoded = codec.decode(&mut buf);
        prop_assert!(matches!(&decoded, Ok(Some(f)) if *f == frame), "{:?}", decoded);
    }

    #[test]
    fn round_trip_of_a_stream(frames in proptest::collection::vec(arb_frame(), 1..5),
                              split in any::<prop::sample::Index>()) {
        let wire = encode_all(&frames);
        let k = split.index(wire.len() + 1);
        let (_, _, decoded) = decode_split(&wire, k);
        prop_assert_eq!(decoded, frames);
    }

    /// Garbage never panics the decoder, and the buffer stays bounded by what arrived.
    ///
    /// The bound, from codec.rs: the decoder reserves in two places only. Waiting for a header
    /// field inside a frame, it reserves up to the whole field, at most a file head's
    /// 2 + 65,535 + 8 = 65,545 bytes (the u16 name length bounds it). Waiting for a body, `reserve_towards` asks for at most
    /// max(buffered, 64 KiB) more. `BytesMut::reserve` may round up to twice the underlying
    /// allocation, which for garbage of at most 16 KiB (all fed at once, so one reserve) stays
    /// below garbage length + 64 KiB. Hence: capacity <= garbage + 64 KiB + 65,545.
    #[test]
    fn garbage_is_refused_or_waited_for_within_bounds(
        garbage in proptest::collection::vec(any::<u8>(), 0..16 * 1024),
        files in 0..4u64,
        lengths in proptest::collection::vec(any::<u64>(), 0..4),
    ) {
        let bound = garbage.len() + READ_AHEAD + MAX_FILE_HEAD;
        for limits in [Limits::default(), Limits::frame_only(u64::MAX)] {
            // Pure garbage: mostly refused at the head.
            let buf = feed_garbage(limits, &garbage);
            prop_assert!(buf.capacity() <= bound, "capacity {} > {}", buf.capacity(), bound);

            // A plausible head, then plausible length fields, then garbage: reaches the file
            // head, file data and message states.
            let mut shaped = head(0x80 | (files as u8), files);
            for len in &lengths {
                shaped.put_u16((*len >> 48) as u16);
                shaped.put_u64(*len);
            }
            shaped.put_slice(&garbage);
            let bound = shaped.len() + READ_AHEAD + MAX_FILE_HEAD;
            let buf = feed_garbage(limits, &shaped);
            prop_assert!(buf.capacity() <= bound, "capacity {} > {}", buf.capacity(), bound);
        }
    }

    /// Garbage arriving in two pieces: no panic, and no growth beyond a small multiple of what
    /// arrived (the second piece's append may double the allocation).
    #[test]
    fn garbage_in_pieces_never_panics(
        garbage in proptest::collection::vec(any::<u8>(), 0..8 * 1024),
        split in any::<prop::sample::Index>(),
    ) {
        let k = split.index(garbage.len() + 1);
        for limits in [Limits::default(), Limits::frame_only(u64::MAX)] {
            let mut codec = TejCodec::new(limits);
            let mut buf = BytesMut::from(&garbage[..k]);
            let mut failed = false;
            for _ in 0..=garbage.len() {
                match codec.decode(&mut buf) {
                    Ok(Some(_)) => continue,
                    Ok(None) => break,
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            if !failed {
                buf.extend_from_slice(&garbage[k..]);
                let _ = codec.decode(&mut buf);
                let _ = codec.decode_eof(&mut buf);
            }
            let bound = 2 * (garbage.len() + READ_AHEAD + MAX_FILE_HEAD);
            prop_assert!(buf.capacity() <= bound, "capacity {} > {}", buf.capacity(), bound);
        }
    }
}
