//! Bounds-checked readers over frame bytes. Every read returns `None` instead of panicking, so
//! nothing a peer sends can crash the process.

/// A cursor over a frame body.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// The body of a tagged frame (skips tag and length).
    pub fn body(frame: &'a [u8]) -> Self {
        Self::new(frame.get(super::HEADER_LEN..).unwrap_or_default())
    }

    pub fn remaining(&self) -> &'a [u8] {
        self.buf
    }

    pub fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.buf.split_first()?;
        self.buf = rest;
        Some(b)
    }

    pub fn i16(&mut self) -> Option<i16> {
        let b = self.bytes(2)?;
        Some(i16::from_be_bytes([*b.first()?, *b.get(1)?]))
    }

    pub fn i32(&mut self) -> Option<i32> {
        let b = self.bytes(4)?;
        let arr: [u8; 4] = b.try_into().ok()?;
        Some(i32::from_be_bytes(arr))
    }

    pub fn u32(&mut self) -> Option<u32> {
        let arr: [u8; 4] = self.bytes(4)?.try_into().ok()?;
        Some(u32::from_be_bytes(arr))
    }

    pub fn u64(&mut self) -> Option<u64> {
        let arr: [u8; 8] = self.bytes(8)?.try_into().ok()?;
        Some(u64::from_be_bytes(arr))
    }

    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }

    /// A NUL-terminated string, without its terminator (raw bytes: names need not be UTF-8).
    pub fn cstr(&mut self) -> Option<&'a [u8]> {
        let end = self.buf.iter().position(|&b| b == 0)?;
        let s = self.buf.get(..end)?;
        self.buf = self.buf.get(end + 1..)?;
        Some(s)
    }
}

/// The SQLSTATE (`C` field) of an ErrorResponse or NoticeResponse frame.
pub fn error_code(frame: &[u8]) -> Option<&[u8]> {
    let mut r = Reader::body(frame);
    loop {
        let t = r.u8().filter(|t| *t != 0)?;
        let v = r.cstr()?;
        if t == b'C' {
            return Some(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_code_reads_the_sqlstate() {
        let frame = b"E\0\0\0\x1dSERROR\0C57014\0Mcanceled\0\0";
        assert_eq!(error_code(frame), Some(&b"57014"[..]));
        assert_eq!(error_code(b"E\0\0\0\x0bSERROR\0\0"), None);
        assert_eq!(error_code(b"E\0\0\0\x09SERR"), None);
    }

    #[test]
    fn reads_and_stops_at_the_end() {
        let mut r = Reader::new(b"ab\0\x00\x01rest");
        assert_eq!(r.cstr(), Some(&b"ab"[..]));
        assert_eq!(r.i16(), Some(1));
        assert_eq!(r.bytes(5), None);
        assert_eq!(r.bytes(4), Some(&b"rest"[..]));
        assert_eq!(r.u8(), None);
        assert_eq!(r.i32(), None);
        assert_eq!(Reader::new(b"no terminator").cstr(), None);
        assert_eq!(Reader::body(b"Q\0").remaining(), b"");
    }
}
