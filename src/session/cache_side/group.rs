//! Recognises the one extended-protocol group the cache can answer without a round trip
//! (DESIGN §2): `[Parse] Bind [Describe portal] Execute(max_rows 0) Sync` on the unnamed
//! portal. Pure: reads frames from the head of the client buffer without copying and says
//! whether they form such a group, could still become one (wait for more bytes), or cannot.

use crate::protocol::frontend::{Bind, Describe, Execute, Param, Params, Parse, Target};
use crate::protocol::tags::frontend;
use crate::protocol::{self, HEADER_LEN};

/// The Parse of a group.
#[derive(Debug, Clone, Copy)]
pub struct ParseMsg<'a> {
    pub name: &'a [u8],
    pub sql: &'a [u8],
    /// The parameter type OIDs as sent (big-endian, 4 bytes each).
    pub param_types: &'a [u8],
    /// The whole frame (replayed upstream when it was answered locally).
    pub frame: &'a [u8],
}

/// A recognised group.
#[derive(Debug, Clone, Copy)]
pub struct Group<'a> {
    pub parse: Option<ParseMsg<'a>>,
    /// The statement the Bind names.
    pub statement: &'a [u8],
    /// The Bind after the portal and statement names: parameter formats, values and result
    /// formats, exactly as sent (self-delimiting, so it feeds the key as one field).
    pub bind_tail: &'a [u8],
    /// The client asked for the portal's RowDescription.
    pub describe: bool,
    /// The Execute's row limit (0: all rows).
    pub max_rows: u32,
    /// Bytes the group takes at the head of the buffer, Sync included.
    pub len: usize,
}

#[derive(Debug)]
pub enum Scan<'a> {
    Group(Group<'a>),
    /// A prefix of a group so far: wait for the rest before deciding.
    Incomplete,
    /// Not an answerable group: handle the frames one by one.
    Other,
}

/// Looks at the frames at the head of `buf` (the first is a Parse or a Bind).
pub fn scan(buf: &[u8], max_message: usize) -> Scan<'_> {
    let mut frames = Frames {
        buf,
        pos: 0,
        max_message,
    };
    let mut next = frames.next(&[frontend::PARSE, frontend::BIND]);
    let parse = match next {
        Next::Frame(frontend::PARSE, f) => {
            let Some(p) = parse_msg(f) else {
                return Scan::Other;
            };
            next = frames.next(&[frontend::BIND]);
            Some(p)
        }
        _ => None,
    };
    let bind = match next {
        Next::Frame(frontend::BIND, f) => match Bind::read(f) {
            Some(bind) if bind.portal.is_empty() => bind,
            _ => return Scan::Other,
        },
        Next::Incomplete => return Scan::Incomplete,
        _ => return Scan::Other,
    };
    let (statement, bind_tail) = (bind.statement, bind.tail);
    if parse.is_some_and(|p| p.name != statement) || !bind.tail_is_valid() {
        return Scan::Other;
    }
    let mut describe = false;
    next = frames.next(&[frontend::DESCRIBE, frontend::EXECUTE]);
    if let Next::Frame(frontend::DESCRIBE, f) = next {
        let portal = Describe::read(f)
            .is_some_and(|d| d.target == Target::Portal && d.name.is_empty() && d.rest.is_empty());
        if !portal {
            return Scan::Other;
        }
        describe = true;
        next = frames.next(&[frontend::EXECUTE]);
    }
    let max_rows = match next {
        Next::Frame(frontend::EXECUTE, f) => match Execute::read(f) {
            // PostgreSQL reads a limit of 0 or less as "all rows".
            Some(e) if e.portal.is_empty() && e.rest.is_empty() => {
                u32::try_from(e.max_rows).unwrap_or(0)
            }
            _ => return Scan::Other,
        },
        Next::Incomplete => return Scan::Incomplete,
        _ => return Scan::Other,
    };
    match frames.next(&[frontend::SYNC]) {
        // A Sync with a body is one PostgreSQL refuses ("invalid message format"): never
        // answered from the cache in its place.
        Next::Frame(frontend::SYNC, f) if f.len() == HEADER_LEN => Scan::Group(Group {
            parse,
            statement,
            bind_tail,
            describe,
            max_rows,
            len: frames.pos,
        }),
        Next::Incomplete => Scan::Incomplete,
        _ => Scan::Other,
    }
}

fn parse_msg(frame: &[u8]) -> Option<ParseMsg<'_>> {
    let f = Parse::read(frame)?;
    f.rest.is_empty().then_some(ParseMsg {
        name: f.name,
        sql: f.sql,
        param_types: f.param_types,
        frame,
    })
}

/// Text values PostgreSQL's date/time input reads from the clock: a parameter holding one
/// (`$1::timestamptz` bound to `'now'`) gives a different result every time it runs.
const CLOCK_WORDS: [&[u8]; 4] = [b"now", b"today", b"tomorrow", b"yesterday"];
/// Longer text is not date/time input PostgreSQL accepts (its `MAXDATELEN` is 128).
const MAX_DATETIME_TEXT: usize = 128;

/// Whether a text-format parameter of the Bind tail could be one of the date/time inputs
/// that read the clock (matched loosely: any value containing one of the words, in any case).
/// Such an execution must not be served from, or stored in, the cache.
pub fn params_may_read_clock(tail: &[u8]) -> bool {
    Params::of_tail(tail).any(|p| match p {
        Some(Param {
            format: 0,
            value: Some(value),
        }) => value.len() <= MAX_DATETIME_TEXT && mentions_clock(value),
        Some(_) => false,
        // Unreadable: be safe.
        None => true,
    })
}

fn mentions_clock(value: &[u8]) -> bool {
    CLOCK_WORDS.iter().any(|word| {
        value
            .windows(word.len())
            .any(|w| w.eq_ignore_ascii_case(word))
    })
}

enum Next<'a> {
    Frame(u8, &'a [u8]),
    /// The buffer ends inside (or before) the next frame.
    Incomplete,
    /// Malformed framing: let the frame-by-frame path report it.
    Bad,
}

struct Frames<'a> {
    buf: &'a [u8],
    pos: usize,
    max_message: usize,
}

impl<'a> Frames<'a> {
    /// The next frame. When only part of it is buffered, it is `Incomplete` if its tag (once
    /// known) is one of `expected`, else `Bad`: waiting for a frame that cannot complete the group
    /// would only delay it.
    fn next(&mut self, expected: &[u8]) -> Next<'a> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        match protocol::header(rest, self.max_message) {
            Ok(Some(h)) => match rest.get(..h.total) {
                Some(frame) if frame.len() >= HEADER_LEN => {
                    self.pos += h.total;
                    Next::Frame(h.tag, frame)
                }
                _ if expected.contains(&h.tag) => Next::Incomplete,
                _ => Next::Bad,
            },
            Ok(None) if rest.first().is_none_or(|t| expected.contains(t)) => Next::Incomplete,
            Ok(None) => Next::Bad,
            Err(_) => Next::Bad,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::response::frame;

    fn parse(name: &str, sql: &str, types: &[u32]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(name.as_bytes());
        b.push(0);
        b.extend_from_slice(sql.as_bytes());
        b.push(0);
        b.extend_from_slice(&(types.len() as i16).to_be_bytes());
        for t in types {
            b.extend_from_slice(&t.to_be_bytes());
        }
        frame(b'P', &b).to_vec()
    }

    fn bind(portal: &str, stmt: &str, params: &[&[u8]]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(portal.as_bytes());
        b.push(0);
        b.extend_from_slice(stmt.as_bytes());
        b.push(0);
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&(params.len() as i16).to_be_bytes());
        for p in params {
            b.extend_from_slice(&(p.len() as i32).to_be_bytes());
            b.extend_from_slice(p);
        }
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(&1i16.to_be_bytes());
        frame(b'B', &b).to_vec()
    }

    fn describe_portal() -> Vec<u8> {
        frame(b'D', b"P\0").to_vec()
    }

    fn execute(max_rows: i32) -> Vec<u8> {
        let mut b = vec![0];
        b.extend_from_slice(&max_rows.to_be_bytes());
        frame(b'E', &b).to_vec()
    }

    fn sync() -> Vec<u8> {
        frame(b'S', &[]).to_vec()
    }

    fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn full_group_with_parse_and_describe() {
        let buf = cat(&[
            parse("", "select $1", &[23]),
            bind("", "", &[b"7"]),
            describe_portal(),
            execute(0),
            sync(),
            b"Qtrailing".to_vec(),
        ]);
        let Scan::Group(g) = scan(&buf, 1 << 20) else {
            panic!("not a group")
        };
        let p = g.parse.unwrap();
        assert_eq!(p.sql, b"select $1");
        assert_eq!(p.param_types, &23u32.to_be_bytes());
        assert!(g.describe);
        assert_eq!(g.len, buf.len() - b"Qtrailing".len());
        assert!(g.bind_tail.ends_with(&[0, 1, 0, 1]));
    }

    #[test]
    fn bind_only_group_of_a_named_statement() {
        let buf = cat(&[bind("", "s1", &[]), execute(0), sync()]);
        let Scan::Group(g) = scan(&buf, 1 << 20) else {
            panic!("not a group")
        };
        assert!(g.parse.is_none());
        assert_eq!(g.statement, b"s1");
        assert!(!g.describe);
        assert_eq!(g.max_rows, 0);
        let limited = cat(&[bind("", "s1", &[]), execute(1), sync()]);
        let Scan::Group(g) = scan(&limited, 1 << 20) else {
            panic!("not a group")
        };
        assert_eq!(g.max_rows, 1);
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let buf = cat(&[
            parse("s", "select 1", &[]),
            bind("", "s", &[]),
            describe_portal(),
            execute(0),
            sync(),
        ]);
        for cut in 1..buf.len() {
            assert!(
                matches!(scan(&buf[..cut], 1 << 20), Scan::Incomplete),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn shapes_that_are_not_answerable() {
        let cases = [
            // Named portal.
            cat(&[bind("p", "", &[]), execute(0), sync()]),
            // Execute of a named portal.
            cat(&[
                bind("", "", &[]),
                frame(b'E', b"p\0\0\0\0\0").to_vec(),
                sync(),
            ]),
            // Flush instead of Sync.
            cat(&[bind("", "", &[]), execute(0), frame(b'H', &[]).to_vec()]),
            // Two executes.
            cat(&[bind("", "", &[]), execute(0), execute(0), sync()]),
            // Parse of another name than the Bind uses.
            cat(&[
                parse("a", "select 1", &[]),
                bind("", "b", &[]),
                execute(0),
                sync(),
            ]),
            // Describe of a statement.
            cat(&[
                bind("", "", &[]),
                frame(b'D', b"S\0").to_vec(),
                execute(0),
                sync(),
            ]),
            // A truncated Bind body.
            cat(&[frame(b'B', b"\0\0\0\x01").to_vec(), execute(0), sync()]),
            // A Sync with a body (found by the group_scan fuzz target).
            cat(&[bind("", "", &[]), execute(0), frame(b'S', b"ccc").to_vec()]),
            // Parse with trailing garbage.
            cat(&[
                frame(b'P', b"\0select 1\0\0\0zz").to_vec(),
                bind("", "", &[]),
                execute(0),
                sync(),
            ]),
        ];
        for (i, buf) in cases.iter().enumerate() {
            assert!(matches!(scan(buf, 1 << 20), Scan::Other), "case {i}");
        }
    }

    fn tail_of(bind_frame: &[u8]) -> Vec<u8> {
        Bind::read(bind_frame).unwrap().tail.to_vec()
    }

    #[test]
    fn clock_words_in_text_parameters_are_found() {
        for v in [
            &b"now"[..],
            b" NOW ",
            b"today",
            b"Tomorrow",
            b"yesterday allballs",
        ] {
            assert!(
                params_may_read_clock(&tail_of(&bind("", "", &[b"1", v]))),
                "{v:?}"
            );
        }
        for v in [&b"2024-01-01"[..], b"42", b"", b"known"] {
            let tail = tail_of(&bind("", "", &[v]));
            assert_eq!(params_may_read_clock(&tail), v == b"known", "{v:?}");
        }
        // Binary parameters are never date/time text.
        let mut b = vec![0, 0];
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(&3i32.to_be_bytes());
        b.extend_from_slice(b"now");
        b.extend_from_slice(&0i16.to_be_bytes());
        assert!(!params_may_read_clock(&b[2..]));
        // Too long for date/time input.
        let long = vec![b'x'; 200];
        let mut v = long.clone();
        v.extend_from_slice(b"now");
        assert!(!params_may_read_clock(&tail_of(&bind("", "", &[&v]))));
        assert!(params_may_read_clock(b"\xff"));
    }

    #[test]
    fn bad_lengths_never_panic() {
        let mut buf = cat(&[bind("", "", &[b"x"]), execute(0), sync()]);
        buf[1..5].copy_from_slice(&2i32.to_be_bytes());
        assert!(matches!(scan(&buf, 1 << 20), Scan::Other));
        let huge = cat(&[bind("", "", &[&b"x"[..]; 3]), execute(0), sync()]);
        assert!(matches!(scan(&huge, 8), Scan::Other));
    }
}
