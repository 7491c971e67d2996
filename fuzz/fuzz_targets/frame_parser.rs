//! Feeds arbitrary bytes to the frame decoder, the code every byte from a
//! peer goes through first.
//!
//! Checks: decoding never panics; every frame it returns re-encodes to bytes
//! that decode to the same frame, consuming exactly those bytes; and
//! re-encoding is stable (encode(decode(encode(f))) == encode(f)).
#![no_main]

use antre_amqp::{decode_frame, encode_frame, Frame};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

/// RabbitMQ's default frame_max. A bound is needed: the decoder reserves room
/// for a whole frame as soon as it has read a frame header, which is what a
/// real connection wants but would let a fuzz input ask for 4 GiB.
const FRAME_MAX: u32 = 131_072;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    // Each successful decode consumes at least 8 bytes, so this terminates.
    while let Ok(Some(frame)) = decode_frame(&mut buf, FRAME_MAX) {
        check_reencode(&frame);
    }
});

fn check_reencode(frame: &Frame) {
    let mut once = BytesMut::new();
    encode_frame(frame, &mut once);
    let encoded = once.clone();

    let again = match decode_frame(&mut once, u32::MAX) {
        Ok(Some(f)) => f,
        other => panic!("re-encoded {frame:?} as {encoded:02x?}, which decodes to {other:?}"),
    };
    assert!(
        once.is_empty(),
        "{} bytes left after decoding re-encoded {frame:?}",
        once.len()
    );
    // NaN floats in a table compare unequal to themselves; their Debug forms
    // (and, below, their bytes) still have to match.
    assert!(
        again == *frame || format!("{again:?}") == format!("{frame:?}"),
        "re-encoded frame decodes differently:\n  was {frame:?}\n  now {again:?}"
    );

    let mut twice = BytesMut::new();
    encode_frame(&again, &mut twice);
    assert_eq!(encoded, twice, "encoding is not stable for {frame:?}");
}
