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
//! Run with `cargo bench -p tej --bench codec`; see `docs/benchmarks.md`.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tej::{Frame, FrameBuf, Status, TejCodec, WireFrame};
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

/// Decodes one 16 MiB frame, whole in the buffer, without copying it back into place before
/// every iteration.
///
/// The decoder splits a complete frame off the read buffer as one `Bytes` (`WireFrame::wire`),
/// of which the payloads are slices. Once the decoded frame and the emptied read buffer are
/// dropped, `wire` is the only handle on the allocation, so `try_into_mut` turns it back into a
/// read buffer holding the same frame, without copying. That re-arming is inside the timed part
/// and costs a few nanoseconds; `decode_wire` is what `Decoder::decode` calls, keeping `wire`.
fn decode_large(c: &mut Criterion) {
    let mut src = encode(&file_frame());
    let wire_len = src.len();

    let mut group = c.benchmark_group("decode");
    group.measurement_time(Duration::from_secs(3));
    group.sample_size(20);
    group.throughput(Throughput::Bytes(wire_len as u64));
    group.bench_function("file_16mib", |b| {
        let mut codec = TejCodec::default();
        b.iter(|| {
            let WireFrame { frame, wire } = codec
                .decode_wire(&mut src)
                .expect("valid frame")
                .expect("a whole frame");
            black_box(frame);
            drop(std::mem::take(&mut src));
            src = wire
                .try_into_mut()
                .expect("the frame's bytes have no other handle");
        });
    });
    assert_eq!(src.len(), wire_len);

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
