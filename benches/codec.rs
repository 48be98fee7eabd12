//! Criterion benchmarks of the TEJ v1 codec, one core, no sockets.
//!
//! - `decode/msg_128b_x10000`: 10,000 frames with a 128-byte message decoded from one buffer
//!   (frames/s).
//! - `decode/file_16mib`: one frame carrying a 16 MiB file, whole in the buffer (bytes/s; decode
//!   copies no payload, so this is far above memory bandwidth).
//! - `decode/file_16mib_in_64k_reads/{dropped,held}`: the same frame arriving in 64 KiB pieces,
//!   as from a socket, into a long-lived read buffer; the piece copies stand in for the kernel's,
//!   and the decoder's buffer management is included. `dropped`: each frame is dropped before the
//!   next one arrives; `held`: the previous frame is still alive. `decode/copy_16mib_in_64k_reads`
//!   is the same copying into a buffer sized up front, the floor.
//! - `encode/*`: `Encoder<&Frame>` into a `BytesMut` (copies every payload once) against
//!   `FrameBuf::push` (queues payloads of 4 KiB or more by reference), for 10,000 frames with a
//!   128-byte message and for one 16 MiB file.
//!
//! Run with `cargo bench --bench codec`; see `docs/benchmarks.md`.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tej_hub::{Frame, FrameBuf, Status, TejCodec};
use tokio_util::codec::{Decoder, Encoder};

/// Frames per iteration in the small-frame benchmarks.
const SMALL_FRAMES: usize = 10_000;
const MESSAGE_LEN: usize = 128;
const FILE_LEN: usize = 16 * 1024 * 1024;
/// Size of one simulated socket read in the streamed decode.
const READ_LEN: usize = 64 * 1024;

fn status() -> Status {
    Status::new(5).expect("5 is a valid status")
}

fn small_frame() -> Frame {
    Frame::message(status(), Bytes::from(vec![b'm'; MESSAGE_LEN]))
}

fn file_frame() -> Frame {
    Frame::builder(status())
        .file("blob.bin", Bytes::from(vec![0xa5; FILE_LEN]))
        .build()
}

fn encode(frame: &Frame) -> BytesMut {
    let mut wire = BytesMut::new();
    TejCodec::default()
        .encode(frame, &mut wire)
        .expect("the benchmark frame fits the default limits");
    wire
}

fn decode_small(c: &mut Criterion) {
    let frame = small_frame();
    let one = encode(&frame);
    let mut wire = BytesMut::with_capacity(one.len() * SMALL_FRAMES);
    for _ in 0..SMALL_FRAMES {
        wire.extend_from_slice(&one);
    }

    let mut group = c.benchmark_group("decode");
    group.measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(SMALL_FRAMES as u64));
    group.bench_function("msg_128b_x10000", |b| {
        b.iter_batched(
            // A private copy of the 1.5 MB buffer, made outside the timed part.
            || wire.clone(),
            |mut src| {
                let mut codec = TejCodec::default();
                let mut frames = 0;
                while let Some(frame) = codec.decode(&mut src).expect("valid frames") {
                    black_box(frame);
                    frames += 1;
                }
                assert_eq!(frames, SMALL_FRAMES);
                src
            },
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

/// Decodes one 16 MiB frame without copying it back into place before every iteration.
///
/// The frame is split in two buffers: `head` (status, version, file count, name, data length)
/// and `body` (the 16 MiB of data, then the message length). Decoding `head` leaves the codec
/// waiting for the data; decoding `body` splits the data off as `Bytes`. Once the frame is dropped
/// that `Bytes` is the only handle on `body`'s allocation, so `try_into_mut` turns it back into
/// the same buffer without copying, and the 8-byte message length is written again. That
/// re-arming is inside the timed part; it is a few nanoseconds.
fn decode_large(c: &mut Criterion) {
    let frame = file_frame();
    let wire = encode(&frame);
    let wire_len = wire.len();
    let head_len = wire_len - FILE_LEN - 8;
    let head_bytes = wire[..head_len].to_vec();
    let mut head = BytesMut::with_capacity(head_len);
    let mut body = BytesMut::with_capacity(FILE_LEN + 8);
    body.extend_from_slice(&wire[head_len..]);
    drop(wire);

    let mut group = c.benchmark_group("decode");
    group.measurement_time(Duration::from_secs(3));
    group.sample_size(20);
    group.throughput(Throughput::Bytes(wire_len as u64));
    group.bench_function("file_16mib", |b| {
        b.iter(|| {
            let mut codec = TejCodec::default();
            head.clear();
            head.extend_from_slice(&head_bytes);
            assert!(codec.decode(&mut head).expect("valid head").is_none());
            let frame = codec
                .decode(&mut body)
                .expect("valid frame")
                .expect("a whole frame");
            let Frame { mut files, .. } = black_box(frame);
            let data = files.pop().expect("one file").data;
            drop(files);
            drop(std::mem::take(&mut body));
            body = data
                .try_into_mut()
                .expect("the decoded data is the only handle on the buffer");
            body.put_u64(0);
        });
    });

    // The frame as it would come off a socket: 64 KiB at a time, decode called after each piece,
    // on a read buffer that lives as long as the connection. "dropped": the consumer drops each
    // frame before the next arrives, so the buffer is reclaimed. "held": the consumer still holds
    // the previous frame (a relay queueing it to subscribers), so the buffer must be replaced.
    let wire = encode(&file_frame());
    for hold in [false, true] {
        let name = if hold {
            "file_16mib_in_64k_reads/held"
        } else {
            "file_16mib_in_64k_reads/dropped"
        };
        let mut codec = TejCodec::default();
        // tokio-util's FramedRead starts with 8 KiB and reserves 1 byte before each read.
        let mut src = BytesMut::with_capacity(8 * 1024);
        let mut previous = None;
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut sent = 0;
                let mut decoded = None;
                while sent < wire.len() {
                    src.reserve(1);
                    let n = READ_LEN
                        .min(src.capacity() - src.len())
                        .min(wire.len() - sent);
                    src.extend_from_slice(&wire[sent..sent + n]);
                    sent += n;
                    if let Some(frame) = codec.decode(&mut src).expect("valid frame") {
                        decoded = Some(frame);
                    }
                }
                let frame = black_box(decoded.expect("a whole frame"));
                if hold {
                    previous = Some(frame);
                }
            });
        });
        drop(previous);
    }
    let mut src = BytesMut::with_capacity(wire.len());
    group.bench_function("copy_16mib_in_64k_reads", |b| {
        b.iter(|| {
            src.clear();
            for piece in wire.chunks(READ_LEN) {
                src.extend_from_slice(piece);
            }
            black_box(&src);
        });
    });
    group.finish();
}

fn encode_small(c: &mut Criterion) {
    let frame = small_frame();
    let codec = TejCodec::default();
    let mut group = c.benchmark_group("encode");
    group.measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(SMALL_FRAMES as u64));

    let mut dst = BytesMut::new();
    group.bench_function("msg_128b_x10000/encoder", |b| {
        let mut codec = TejCodec::default();
        b.iter(|| {
            dst.clear();
            for _ in 0..SMALL_FRAMES {
                codec.encode(&frame, &mut dst).expect("valid frame");
            }
            black_box(&dst);
        });
    });

    let mut buf = FrameBuf::new();
    group.bench_function("msg_128b_x10000/framebuf", |b| {
        b.iter(|| {
            for _ in 0..SMALL_FRAMES {
                buf.push(&codec, &frame).expect("valid frame");
            }
            black_box(&buf);
            // What a completed write does to the queue.
            buf.advance(buf.remaining());
        });
    });
    group.finish();
}

fn encode_large(c: &mut Criterion) {
    let frame = file_frame();
    let codec = TejCodec::default();
    let mut group = c.benchmark_group("encode");
    group.measurement_time(Duration::from_secs(3));
    group.sample_size(20);
    group.throughput(Throughput::Bytes(frame.encoded_len()));

    let mut dst = BytesMut::new();
    group.bench_function("file_16mib/encoder", |b| {
        let mut codec = TejCodec::default();
        b.iter(|| {
            dst.clear();
            codec.encode(&frame, &mut dst).expect("valid frame");
            black_box(&dst);
        });
    });

    let mut buf = FrameBuf::new();
    group.bench_function("file_16mib/framebuf", |b| {
        b.iter(|| {
            buf.push(&codec, &frame).expect("valid frame");
            black_box(&buf);
            buf.advance(buf.remaining());
        });
    });
    group.finish();
}

criterion_group!(
    benches,
    decode_small,
    decode_large,
    encode_small,
    encode_large
);
criterion_main!(benches);
