//! Typed views of the extended-protocol messages pgmemo inspects (Parse, Bind, Describe,
//! Execute, Close): borrowed from the frame, bounds-checked, no allocation. Each `read`
//! returns `None` when the frame's fields are cut short (PostgreSQL reports such a frame
//! itself; pgmemo forwards it). A frame passed in is a whole frame, tag and length included.

use super::fields::Reader;

/// A Sync frame (ends pgmemo's replayed Parse and its own probe).
pub const SYNC_FRAME: &[u8] = b"S\0\0\0\x04";
/// Describe of the unnamed portal (injected on a miss whose group has none).
pub const DESCRIBE_UNNAMED_PORTAL: &[u8] = b"D\0\0\0\x06P\0";

/// What a Describe or Close names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Statement,
    Portal,
}

impl Target {
    fn read(r: &mut Reader<'_>) -> Option<Target> {
        match r.u8()? {
            b'S' => Some(Target::Statement),
            b'P' => Some(Target::Portal),
            _ => None,
        }
    }
}

/// A Parse message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parse<'a> {
    pub name: &'a [u8],
    pub sql: &'a [u8],
    /// The parameter type OIDs as sent (big-endian, 4 bytes each).
    pub param_types: &'a [u8],
    /// Bytes after the last field (PostgreSQL rejects a frame that has any).
    pub rest: &'a [u8],
}

impl<'a> Parse<'a> {
    pub fn read(frame: &'a [u8]) -> Option<Self> {
        let mut r = Reader::body(frame);
        let name = r.cstr()?;
        let sql = r.cstr()?;
        let n = usize::try_from(r.i16()?).ok()?;
        let param_types = r.bytes(n.checked_mul(4)?)?;
        Some(Parse {
            name,
            sql,
            param_types,
            rest: r.remaining(),
        })
    }
}

/// A Bind message: the portal and statement names, and the rest as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bind<'a> {
    pub portal: &'a [u8],
    pub statement: &'a [u8],
    /// Parameter formats, values and result formats, exactly as sent (self-delimiting).
    pub tail: &'a [u8],
}

/// One parameter of a Bind: its format code (0 text, 1 binary) and value (`None`: NULL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param<'a> {
    pub format: i16,
    pub value: Option<&'a [u8]>,
}

impl<'a> Bind<'a> {
    pub fn read(frame: &'a [u8]) -> Option<Self> {
        let mut r = Reader::body(frame);
        let portal = r.cstr()?;
        let statement = r.cstr()?;
        Some(Bind {
            portal,
            statement,
            tail: r.remaining(),
        })
    }

    /// The tail is well formed, as PostgreSQL would accept its framing: format counts,
    /// values and result formats all present and nothing after them.
    pub fn tail_is_valid(&self) -> bool {
        let mut r = Reader::new(self.tail);
        let framed = (|| {
            let formats = usize::try_from(r.i16()?).ok()?;
            r.bytes(formats.checked_mul(2)?)?;
            // A negative count is not "no parameters": PostgreSQL reads the count unsigned
            // and would then want that many values. Refused like the other counts, so a
            // valid tail always yields every parameter (`Params::of_tail` refuses it too).
            let params = usize::try_from(r.i16()?).ok()?;
            for _ in 0..params {
                let len = r.i32()?;
                if len >= 0 {
                    r.bytes(usize::try_from(len).ok()?)?;
                }
            }
            let results = usize::try_from(r.i16()?).ok()?;
            r.bytes(results.checked_mul(2)?)?;
            Some(())
        })();
        framed.is_some() && r.remaining().is_empty()
    }

    /// The parameters with their effective formats (none given: text; one: for all; else
    /// one each, as PostgreSQL reads them), without allocating. An item `None` means the
    /// tail is cut short or its format count fits none of those rules; nothing follows it.
    pub fn params(&self) -> Params<'a> {
        Params::of_tail(self.tail)
    }
}

/// The parameters of a Bind tail, in order (see [`Bind::params`]).
pub struct Params<'a> {
    reader: Reader<'a>,
    formats: &'a [u8],
    nformats: usize,
    count: usize,
    next: usize,
    broken: bool,
}

impl<'a> Params<'a> {
    /// The parameters of a Bind `tail` (everything after the statement name), as
    /// [`Bind::params`] reads them.
    pub fn of_tail(tail: &'a [u8]) -> Self {
        let mut reader = Reader::new(tail);
        let header = (|| {
            let nformats = usize::try_from(reader.i16()?).ok()?;
            let formats = reader.bytes(nformats.checked_mul(2)?)?;
            let count = usize::try_from(reader.i16()?).ok()?;
            (nformats <= 1 || nformats == count).then_some((formats, nformats, count))
        })();
        let broken = header.is_none();
        let (formats, nformats, count) = header.unwrap_or((&[], 0, 1));
        Params {
            reader,
            formats,
            nformats,
            count,
            next: 0,
            broken,
        }
    }

    fn format_of(&self, i: usize) -> Option<i16> {
        let at = match self.nformats {
            0 => return Some(0),
            1 => 0,
            _ => i.checked_mul(2)?,
        };
        let pair = self.formats.get(at..at.checked_add(2)?)?;
        Some(i16::from_be_bytes([*pair.first()?, *pair.get(1)?]))
    }

    fn read_next(&mut self) -> Option<Param<'a>> {
        let format = self.format_of(self.next)?;
        let len = self.reader.i32()?;
        let value = match usize::try_from(len) {
            Ok(len) => Some(self.reader.bytes(len)?),
            Err(_) => None,
        };
        Some(Param { format, value })
    }
}

impl<'a> Iterator for Params<'a> {
    type Item = Option<Param<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.count {
            return None;
        }
        if self.broken {
            self.next = self.count;
            return Some(None);
        }
        let param = self.read_next();
        self.next += 1;
        if param.is_none() {
            self.next = self.count;
        }
        Some(param)
    }
}

/// A Describe message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Describe<'a> {
    pub target: Target,
    pub name: &'a [u8],
    /// Bytes after the name (none in a valid frame).
    pub rest: &'a [u8],
}

impl<'a> Describe<'a> {
    pub fn read(frame: &'a [u8]) -> Option<Self> {
        let mut r = Reader::body(frame);
        let target = Target::read(&mut r)?;
        let name = r.cstr()?;
        Some(Describe {
            target,
            name,
            rest: r.remaining(),
        })
    }
}

/// An Execute message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Execute<'a> {
    pub portal: &'a [u8],
    /// The row limit as sent (0 or less: all rows).
    pub max_rows: i32,
    /// Bytes after the limit (none in a valid frame).
    pub rest: &'a [u8],
}

impl<'a> Execute<'a> {
    pub fn read(frame: &'a [u8]) -> Option<Self> {
        let mut r = Reader::body(frame);
        let portal = r.cstr()?;
        let max_rows = r.i32()?;
        Some(Execute {
            portal,
            max_rows,
            rest: r.remaining(),
        })
    }
}

/// A Close message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close<'a> {
    pub target: Target,
    pub name: &'a [u8],
}

impl<'a> Close<'a> {
    pub fn read(frame: &'a [u8]) -> Option<Self> {
        let mut r = Reader::body(frame);
        let target = Target::read(&mut r)?;
        let name = r.cstr()?;
        Some(Close { target, name })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut f = vec![tag];
        f.extend_from_slice(&i32::try_from(body.len() + 4).unwrap().to_be_bytes());
        f.extend_from_slice(body);
        f
    }

    fn bind_body(formats: &[i16], params: &[Option<&[u8]>], results: &[i16]) -> Vec<u8> {
        let mut b = b"p\0s\0".to_vec();
        b.extend_from_slice(&i16::try_from(formats.len()).unwrap().to_be_bytes());
        formats
            .iter()
            .for_each(|f| b.extend_from_slice(&f.to_be_bytes()));
        b.extend_from_slice(&i16::try_from(params.len()).unwrap().to_be_bytes());
        for p in params {
            match p {
                Some(v) => {
                    b.extend_from_slice(&i32::try_from(v.len()).unwrap().to_be_bytes());
                    b.extend_from_slice(v);
                }
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        b.extend_from_slice(&i16::try_from(results.len()).unwrap().to_be_bytes());
        results
            .iter()
            .for_each(|f| b.extend_from_slice(&f.to_be_bytes()));
        b
    }

    #[test]
    fn each_view_reads_its_fields() {
        let p = frame(b'P', b"st\0SELECT $1\0\0\x01\0\0\0\x17");
        let p = Parse::read(&p).unwrap();
        assert_eq!(
            (p.name, p.sql, p.param_types, p.rest),
            (&b"st"[..], &b"SELECT $1"[..], &b"\0\0\0\x17"[..], &b""[..])
        );
        let d = frame(b'D', b"Pportal\0");
        let d = Describe::read(&d).unwrap();
        assert_eq!(
            (d.target, d.name, d.rest),
            (Target::Portal, &b"portal"[..], &b""[..])
        );
        let e = frame(b'E', b"\0\0\0\0\x05");
        let e = Execute::read(&e).unwrap();
        assert_eq!((e.portal, e.max_rows), (&b""[..], 5));
        let c = frame(b'C', b"Sst\0");
        assert_eq!(
            Close::read(&c),
            Some(Close {
                target: Target::Statement,
                name: b"st"
            })
        );
    }

    #[test]
    fn bind_params_follow_the_format_rules() {
        let one_each = frame(b'B', &bind_body(&[0, 1], &[Some(b"a"), None], &[1]));
        let b = Bind::read(&one_each).unwrap();
        assert_eq!((b.portal, b.statement), (&b"p"[..], &b"s"[..]));
        assert!(b.tail_is_valid());
        assert_eq!(
            b.params().collect::<Vec<_>>(),
            [
                Some(Param {
                    format: 0,
                    value: Some(b"a")
                }),
                Some(Param {
                    format: 1,
                    value: None
                })
            ]
        );
        let one_for_all = frame(b'B', &bind_body(&[1], &[Some(b"x"), Some(b"y")], &[]));
        let formats: Vec<i16> = Bind::read(&one_for_all)
            .unwrap()
            .params()
            .flatten()
            .map(|p| p.format)
            .collect();
        assert_eq!(formats, [1, 1]);
        let none = frame(b'B', &bind_body(&[], &[Some(b"x")], &[]));
        assert_eq!(
            Bind::read(&none).unwrap().params().next(),
            Some(Some(Param {
                format: 0,
                value: Some(b"x")
            }))
        );
    }

    #[test]
    fn cut_or_odd_frames_read_as_none_or_invalid() {
        assert_eq!(Parse::read(&frame(b'P', b"st\0SELECT")), None);
        assert_eq!(Close::read(&frame(b'C', b"Xst\0")), None);
        assert_eq!(Describe::read(&frame(b'D', b"P")), None);
        assert_eq!(Execute::read(&frame(b'E', b"\0\0\0")), None);
        let mut body = bind_body(&[0], &[Some(b"abc")], &[]);
        body.push(0);
        let trailing = frame(b'B', &body);
        assert!(!Bind::read(&trailing).unwrap().tail_is_valid());
        let mut cut = bind_body(&[0], &[Some(b"abc")], &[]);
        cut.truncate(cut.len() - 4);
        let cut = frame(b'B', &cut);
        let b = Bind::read(&cut).unwrap();
        assert!(!b.tail_is_valid());
        assert_eq!(b.params().last(), Some(None));
        // A negative parameter count (found by the frontend_views fuzz target): not valid.
        let negative = frame(b'B', b"\x02\0\xf7\xff\x03571\0\0\0\xff\xcc\0\x01\0\0");
        let b = Bind::read(&negative).unwrap();
        assert!(!b.tail_is_valid());
        assert_eq!(b.params().collect::<Vec<_>>(), [None]);
        // Three formats for two parameters: PostgreSQL refuses it, and so does the reader.
        let odd = frame(b'B', &bind_body(&[0, 0, 0], &[Some(b"a"), Some(b"b")], &[]));
        assert_eq!(
            Bind::read(&odd).unwrap().params().collect::<Vec<_>>(),
            [None]
        );
    }
}
