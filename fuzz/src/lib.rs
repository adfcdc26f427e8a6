//! Helpers shared by pgmemo's fuzz targets (see `README.md` beside this crate): encoders for
//! the messages whose decoders are fuzzed (pgmemo itself only decodes most of them, so the
//! round-trip targets bring their own encoder, written from the PostgreSQL protocol
//! documentation and not from pgmemo's decoder), and the checks every target repeats.

use arbitrary::{Arbitrary, Unstructured};

/// A tagged frame: tag, big-endian length counting itself, body.
pub fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(tag);
    let len = i32::try_from(body.len() + 4).expect("fuzz frames are far below 2 GiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Whether `inner` lies inside `outer` (same allocation, within its bounds): the "never reads
/// past the frame" check for the zero-copy views.
pub fn within(outer: &[u8], inner: &[u8]) -> bool {
    let (o, i) = (outer.as_ptr() as usize, inner.as_ptr() as usize);
    inner.is_empty() && i >= o && i <= o + outer.len()
        || i >= o && i + inner.len() <= o + outer.len()
}

/// A string with no NUL byte (what a C string field of the protocol can carry), at most
/// `max` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CString(pub Vec<u8>);

impl<'a> Arbitrary<'a> for CString {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let len = u.int_in_range(0..=64)?;
        let mut bytes = Vec::with_capacity(len);
        for _ in 0..len {
            let b: u8 = u.arbitrary()?;
            bytes.push(if b == 0 { b'x' } else { b });
        }
        Ok(CString(bytes))
    }
}

/// Appends `s` and its NUL terminator.
pub fn put_cstr(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(s);
    out.push(0);
}

/// Splits `data` into messages, each preceded by a one-byte length (so a corpus file is a
/// message sequence and libFuzzer's mutations keep most of it well framed). The last message
/// takes what is left when its length runs past the end.
pub fn messages(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = data;
    std::iter::from_fn(move || {
        let (&len, tail) = rest.split_first()?;
        let n = usize::from(len).min(tail.len());
        let (msg, after) = tail.split_at(n);
        rest = after;
        Some(msg)
    })
}

/// Splits `data` into messages each preceded by a big-endian u16 length (for seeds whose
/// messages are longer than 255 bytes).
pub fn messages_u16(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = data;
    std::iter::from_fn(move || {
        if rest.len() < 2 {
            return None;
        }
        let (len, tail) = rest.split_at(2);
        let n = usize::from(u16::from_be_bytes([len[0], len[1]])).min(tail.len());
        let (msg, after) = tail.split_at(n);
        rest = after;
        Some(msg)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_checks_bounds() {
        let buf = [1u8, 2, 3, 4];
        assert!(within(&buf, &buf[1..3]));
        assert!(within(&buf, &buf[4..]));
        assert!(!within(&buf[..2], &buf[1..3]));
    }

    #[test]
    fn messages_split_by_their_length_byte() {
        let all: Vec<&[u8]> = messages(b"\x02ab\x00\x05xy").collect();
        assert_eq!(all, [&b"ab"[..], b"", b"xy"]);
        let all: Vec<&[u8]> = messages_u16(b"\x00\x01a\x00\x09bc").collect();
        assert_eq!(all, [&b"a"[..], b"bc"]);
    }
}
