//! Memory the decoder spends on hostile headers, measured with a counting global allocator.
//!
//! A header may announce 2^64-1 files or a 2^63-byte payload; the decoder must refuse it or wait
//! for the bytes, never allocate what was announced. The counter is process-wide, so this binary
//! holds a single `#[test]` that runs every case in turn.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{BufMut, BytesMut};
use tej_hub::{CodecError, Limits, TejCodec};
use tokio_util::codec::Decoder;

/// Wraps the system allocator and tracks the bytes currently allocated and their peak.
struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

impl Counting {
    fn grew(size: usize) {
        let now = CURRENT.fetch_add(size, Ordering::SeqCst) + size;
        PEAK.fetch_max(now, Ordering::SeqCst);
    }

    fn shrank(size: usize) {
        CURRENT.fetch_sub(size, Ordering::SeqCst);
    }
}

// SAFETY: every call is forwarded to `System` unchanged; only counters are updated around it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            Counting::grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            Counting::grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        Counting::shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            // Count the new block before releasing the old one: a moving realloc holds both.
            Counting::grew(new_size);
            Counting::shrank(layout.size());
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Peak allocation allowed while decoding one hostile header.
const BUDGET: usize = 1024 * 1024;

/// Runs `f` and returns its result with the peak bytes allocated above the level at its start.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = CURRENT.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let out = f();
    let peak = PEAK.load(Ordering::SeqCst).saturating_sub(base);
    (out, peak)
}

fn head(files: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    buf.put_u8(0x81);
    buf.put_u8(1);
    buf.put_u64(files);
    buf
}

fn one_file(data_len: u64) -> Vec<u8> {
    let mut buf = head(1);
    buf.put_u16(4);
    buf.put_slice(b"evil");
    buf.put_u64(data_len);
    buf
}

fn message_only(len: u64) -> Vec<u8> {
    let mut buf = head(0);
    buf.put_u64(len);
    buf
}

/// Decodes `header` followed by `tail_bytes` of filler, all at once, then byte by byte in a
/// second decoder; returns the first outcome and checks both stay within [`BUDGET`].
fn decode_hostile(
    name: &str,
    limits: Limits,
    header: &[u8],
    tail_bytes: usize,
) -> Result<Option<()>, CodecError> {
    let mut input = header.to_vec();
    input.resize(header.len() + tail_bytes, 0x41);

    let (outcome, peak) = peak_during(|| {
        let mut codec = TejCodec::new(limits);
        let mut buf = BytesMut::from(&input[..]);
        let first = codec.decode(&mut buf).map(|f| f.map(drop));
        // Ask again, as a read loop would after more (zero) bytes.
        let _ = codec.decode(&mut buf);
        first
    });
    assert!(peak < BUDGET, "{name}: peak {peak} bytes at once");

    let (_, peak) = peak_during(|| {
        let mut codec = TejCodec::new(limits);
        let mut buf = BytesMut::new();
        for &byte in &input {
            buf.put_u8(byte);
            if codec.decode(&mut buf).is_err() {
                break;
            }
        }
    });
    assert!(peak < BUDGET, "{name}: peak {peak} bytes byte by byte");
    outcome
}

#[test]
fn hostile_headers_cost_bounded_memory() {
    const MIB: u64 = 1024 * 1024;
    let generous = Limits::frame_only(u64::MAX);
    let default_max = Limits::DEFAULT_MAX_FRAME_BYTES;

    // The measurement itself works: a 4 MiB allocation shows up.
    let (_, peak) = peak_during(|| drop(std::hint::black_box(vec![1u8; 4 * MIB as usize])));
    assert!(
        peak >= 4 * MIB as usize,
        "the counting allocator saw {peak} bytes"
    );

    // u64::MAX files.
    let outcome = decode_hostile("files, default", Limits::default(), &head(u64::MAX), 100);
    assert!(matches!(
        outcome,
        Err(CodecError::TooManyFiles {
            count: u64::MAX,
            max: 1024
        })
    ));
    // With no file or message limit, the head passes (the saturated length is not above
    // u64::MAX) and the decoder waits for files it holds no room for.
    let outcome = decode_hostile("files, generous", generous, &head(u64::MAX), 100);
    assert!(matches!(outcome, Ok(None)), "{outcome:?}");

    // A file of 2^63 bytes.
    let outcome = decode_hostile("file, default", Limits::default(), &one_file(1 << 63), 100);
    assert!(matches!(
        outcome,
        Err(CodecError::FrameTooLarge { len, max })
            if len == (1 << 63) + 10 + 10 + 4 + 8 && max == default_max
    ));
    let outcome = decode_hostile("file, generous", generous, &one_file(1 << 63), 100);
    assert!(matches!(outcome, Ok(None)), "{outcome:?}");
    // And with 100 KiB of it already arrived: memory follows those bytes (a small multiple of
    // them), not the 2^63 announced.
    let outcome = decode_hostile(
        "file, generous, 100 KiB",
        generous,
        &one_file(1 << 63),
        100 * 1024,
    );
    assert!(matches!(outcome, Ok(None)), "{outcome:?}");

    // A message of 2^63 bytes.
    let outcome = decode_hostile(
        "message, default",
        Limits::default(),
        &message_only(1 << 63),
        100,
    );
    assert!(matches!(
        outcome,
        Err(CodecError::MessageTooLarge { len, max }) if len == 1 << 63 && max == 64 * MIB
    ));
    let outcome = decode_hostile("message, generous", generous, &message_only(1 << 63), 100);
    assert!(matches!(outcome, Ok(None)), "{outcome:?}");

    // Many files announced, each with a name of the longest length and a huge data length:
    // the file head wait is bounded by the u16 name length, not by the count.
    let mut many = head(u64::MAX);
    many.put_u16(u16::MAX);
    let outcome = decode_hostile("longest name pending", generous, &many, 10);
    assert!(matches!(outcome, Ok(None)), "{outcome:?}");
}
