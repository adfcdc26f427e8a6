//! The frame splitter both relay directions run (`protocol::header` in the loop of
//! `session::relay`): a byte stream, delivered in chunks whose sizes the input chooses, is
//! split into frames exactly as the relay splits it. Asserts: no panic; every header found
//! counts at least itself and is within `max_message`; a frame is taken only when all of it is
//! buffered, and never extends past the buffer; the frames, concatenated, are exactly the
//! stream's head (nothing lost, nothing reordered); the split does not depend on how the bytes
//! were chunked; an error is reported only for a length under 4 or over the bound. The frame
//! inspectors the upstream side applies in place (`fields::error_code`,
//! `relay::is_fatal`) run on every frame and return slices of it.
//!
//! Input: byte 0 chooses `max_message` (5 bytes to 1 MiB), byte 1 seeds the chunk sizes, the
//! rest is the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgmemo::protocol::{self, FrameError, HEADER_LEN, fields};
use pgmemo::session::relay::is_fatal;
use pgmemo_fuzz::within;

#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Waiting for more bytes at this offset.
    Partial(usize),
    /// A header was refused at this offset.
    Refused(usize),
}

/// Splits `stream` delivered in chunks of the sizes `chunks` yields, the relay's way.
fn split(
    stream: &[u8],
    max: usize,
    mut chunk: impl FnMut() -> usize,
) -> (Vec<(usize, usize)>, End) {
    let mut frames = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut consumed = 0;
    let mut fed = 0;
    loop {
        // Feed the next chunk (at least one byte), as one socket read would.
        let n = chunk().max(1).min(stream.len() - fed);
        buf.extend_from_slice(&stream[fed..fed + n]);
        fed += n;
        let mut pos = 0;
        let end = loop {
            let rest = &buf[pos..];
            match protocol::header(rest, max) {
                Ok(Some(h)) => {
                    assert!(h.total >= HEADER_LEN, "a frame counts its header");
                    assert!(h.total <= max, "a frame over max_message was accepted");
                    assert_eq!(h.tag, rest[0]);
                    let len = i32::from_be_bytes(rest[1..5].try_into().unwrap());
                    assert_eq!(h.total, len as usize + 1);
                    if rest.len() < h.total {
                        break None;
                    }
                    let frame = rest.get(..h.total).expect("a whole frame is buffered");
                    assert!(within(&buf, frame));
                    inspect(frame);
                    frames.push((consumed + pos, h.total));
                    pos += h.total;
                }
                Ok(None) => {
                    assert!(rest.len() < HEADER_LEN, "five bytes make a header");
                    break None;
                }
                Err(e) => {
                    let len = i32::from_be_bytes(rest[1..5].try_into().unwrap());
                    match e {
                        FrameError::BadLength(l, tag) => {
                            assert!(len < 4);
                            assert_eq!(l, i64::from(len));
                            assert_eq!(tag, char::from(rest[0]));
                        }
                        FrameError::TooLarge {
                            len: total, max: m, ..
                        } => {
                            assert!(len >= 4);
                            assert_eq!(total, len as usize + 1);
                            assert!(total > m && m == max);
                        }
                    }
                    break Some(End::Refused(consumed + pos));
                }
            }
        };
        buf.drain(..pos);
        consumed += pos;
        if let Some(end) = end {
            return (frames, end);
        }
        if fed == stream.len() {
            return (frames, End::Partial(consumed));
        }
    }
}

/// What the upstream side reads in place from a whole frame.
fn inspect(frame: &[u8]) {
    if let Some(code) = fields::error_code(frame) {
        assert!(within(frame, code), "the SQLSTATE is a slice of the frame");
    }
    let _ = is_fatal(frame);
}

fuzz_target!(|data: &[u8]| {
    let [size, seed, stream @ ..] = data else {
        return;
    };
    let max = match size % 4 {
        0 => 1 << 20,
        1 => 64,
        2 => HEADER_LEN + usize::from(*size >> 2),
        _ => 8 * 1024,
    };
    let whole = split(stream, max, || usize::MAX);
    let mut state = u32::from(*seed) | 1;
    let chunked = split(stream, max, || {
        // xorshift: chunk sizes 1..=16 decided by the input's seed byte.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        (state % 16) as usize + 1
    });
    assert_eq!(whole, chunked, "the split depends on how the bytes arrived");
    // The frames tile the stream's head, in order.
    let mut at = 0;
    for &(start, len) in &whole.0 {
        assert_eq!(start, at);
        at += len;
    }
    match whole.1 {
        End::Partial(p) | End::Refused(p) => assert_eq!(p, at),
    }
    assert!(at <= stream.len());
});
