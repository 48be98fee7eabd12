//! `TejCodec` over arbitrary bytes cut into arbitrary reads.
//!
//! Asserts: the frames and the outcome (clean end or the same error) do not depend on how the
//! bytes were cut, nor on the path (`decode_wire` or `Decoder::decode`); every decoded frame is
//! within the limits and re-encodes to exactly the bytes it was decoded from; and those bytes,
//! concatenated, are the start of the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tej_hub::{Frame, TejCodec};
use tej_hub_fuzz::{decode_frames, decode_reads, End, Setup};

fuzz_target!(|input: &[u8]| {
    let Some((setup, data)) = Setup::split(input) else {
        return;
    };
    let limits = setup.limits();
    let (wire_frames, whole_end) = decode_frames(limits, data);
    let (frames, end, _) = decode_reads(&mut TejCodec::new(limits), &setup.reads(data));
    let whole: Vec<&Frame> = wire_frames.iter().map(|wire| &wire.frame).collect();
    let chunked: Vec<&Frame> = frames.iter().collect();
    assert_eq!(
        whole, chunked,
        "the frames depend on how the bytes were cut"
    );
    assert_eq!(
        whole_end, end,
        "the outcome depends on how the bytes were cut"
    );

    let mut consumed = Vec::new();
    for wire in &wire_frames {
        assert!(
            limits.check(&wire.frame).is_ok(),
            "a decoded frame breaks the limits"
        );
        let encoded = wire.frame.to_wire().expect("a decoded frame encodes");
        assert_eq!(encoded, wire.wire, "a decoded frame re-encodes differently");
        assert_eq!(wire.frame.encoded_len(), wire.wire.len() as u64);
        consumed.extend_from_slice(&wire.wire);
    }
    assert!(
        data.starts_with(&consumed),
        "the frames' bytes are not the input's"
    );
    if whole_end == End::Clean {
        assert_eq!(
            consumed.len(),
            data.len(),
            "a clean end left bytes undecoded"
        );
    }
});
