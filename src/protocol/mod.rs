//! Wire-protocol framing, shared by both legs of a session: frame headers, message tags, the
//! startup-phase packets, bounds-checked readers for the few fields pgmemo inspects, and
//! constructors for the messages pgmemo itself sends. Knows nothing about caching.

pub mod fields;
pub mod frontend;
pub mod response;
pub mod startup;
pub mod tags;

/// Length of a regular frame header: one tag byte and a big-endian i32 length that counts
/// itself but not the tag.
pub const HEADER_LEN: usize = 5;

/// A regular (tagged) frame header read from the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    /// Whole frame length including the tag byte.
    pub total: usize,
}

/// Why a frame header is unacceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("invalid message length {0} for message type {1:?}")]
    BadLength(i64, char),
    #[error("message of type {tag:?} is {len} bytes, over the limit of {max} bytes")]
    TooLarge { tag: char, len: usize, max: usize },
}

/// Reads the header at the front of `buf`, if five bytes are there. The length must count at
/// least itself; `max` bounds the whole frame.
pub fn header(buf: &[u8], max: usize) -> Result<Option<Header>, FrameError> {
    let Some(&[tag, a, b, c, d]) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = i32::from_be_bytes([a, b, c, d]);
    if len < 4 {
        return Err(FrameError::BadLength(i64::from(len), char::from(tag)));
    }
    // len >= 4, so the cast is lossless.
    let total = len as usize + 1;
    if total > max {
        return Err(FrameError::TooLarge {
            tag: char::from(tag),
            len: total,
            max,
        });
    }
    Ok(Some(Header { tag, total }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_needs_five_bytes() {
        assert_eq!(header(b"Q\0\0\0", 100), Ok(None));
        assert_eq!(
            header(b"Q\0\0\0\x05x", 100),
            Ok(Some(Header {
                tag: b'Q',
                total: 6
            }))
        );
    }

    #[test]
    fn header_rejects_short_and_oversized_lengths() {
        assert!(matches!(
            header(b"Q\0\0\0\x03", 100),
            Err(FrameError::BadLength(3, 'Q'))
        ));
        assert!(matches!(
            header(b"Q\xff\xff\xff\xff", 100),
            Err(FrameError::BadLength(-1, 'Q'))
        ));
        assert!(matches!(
            header(b"d\0\0\x01\0", 100),
            Err(FrameError::TooLarge { len: 257, .. })
        ));
    }
}
