//! One queued write as the queue stores it, and its byte encoding. Everything the flusher
//! needs to apply the write exactly as the session would have, under the session's role
//! and the settings that change how its text and parameters are read, and what a committed
//! batch must invalidate. Decoding is total: bytes from a journal or a Redis Stream never
//! panic the process, and every length is checked against what is left.

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::fields::Reader;

/// Format version of an encoded entry (the first byte).
const VERSION: u8 = 1;

/// Settings recorded with a queued write besides `search_path` and the role: those that
/// change how PostgreSQL reads literals and parameters (dates, times, intervals, strings
/// with backslashes, money, numbers in `lc_numeric`), and `row_security`. A setting the
/// session has at its default is recorded as absent, and the flusher sets it to the
/// server's default.
pub const RECORDED_SETTINGS: &[&str] = &[
    "datestyle",
    "intervalstyle",
    "timezone",
    "standard_conforming_strings",
    "backslash_quote",
    "array_nulls",
    "lc_monetary",
    "lc_numeric",
    "row_security",
    "extra_float_digits",
];

/// The write itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// An INSERT as the client sent it: its text and, from the extended protocol, the Parse's
    /// parameter type OIDs (4 bytes each, as sent) and the Bind after its names (formats,
    /// values, result formats). The simple protocol has neither.
    Statement {
        sql: Bytes,
        types: Bytes,
        bind: Bytes,
        rows: u64,
    },
    /// `UPDATE table SET column = column + delta WHERE key_column = key` (identifiers
    /// already quoted; `key` in text form).
    Increment {
        table: String,
        column: String,
        key_column: String,
        key: String,
        delta: i64,
        /// The rule's `behind_coalesce`: it may merge with increments of the same row.
        coalesce: bool,
    },
}

/// A queued write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub database: String,
    /// The session's current role: the flusher applies the write as it.
    pub role: String,
    pub search_path: String,
    /// `(name, value)` for the [`RECORDED_SETTINGS`] the session had away from the default.
    pub settings: Vec<(String, String)>,
    /// What a committed write bumps: the database OID and relation OIDs.
    pub db_oid: u32,
    pub tags: Vec<u32>,
    /// When it was acknowledged (milliseconds since the Unix epoch), for the flush lag.
    pub acked_ms: u64,
    pub op: Op,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("queued write is malformed: {0}")]
pub struct DecodeError(&'static str);

impl Entry {
    /// Bytes it takes in memory and in the queue (for the queue's bounds).
    pub fn weight(&self) -> usize {
        128 + self.database.len()
            + self.role.len()
            + self.search_path.len()
            + self
                .settings
                .iter()
                .map(|(n, v)| n.len() + v.len() + 16)
                .sum::<usize>()
            + self.tags.len() * 4
            + match &self.op {
                Op::Statement {
                    sql, types, bind, ..
                } => sql.len() + types.len() + bind.len(),
                Op::Increment {
                    table,
                    column,
                    key_column,
                    key,
                    ..
                } => table.len() + column.len() + key_column.len() + key.len(),
            }
    }

    /// Whether two entries are applied under the same role and settings.
    pub fn same_session(&self, other: &Entry) -> bool {
        self.role == other.role
            && self.search_path == other.search_path
            && self.settings == other.settings
    }

    /// Stands in the queue for a recovered record that does not decode: never run (its
    /// number is applied as a dead letter's), an empty statement if it ever were.
    pub fn placeholder(database: &str) -> Entry {
        Entry {
            database: database.to_owned(),
            role: String::new(),
            search_path: String::new(),
            settings: Vec::new(),
            db_oid: 0,
            tags: Vec::new(),
            acked_ms: 0,
            op: Op::Statement {
                sql: Bytes::new(),
                types: Bytes::new(),
                bind: Bytes::new(),
                rows: 0,
            },
        }
    }

    /// Whether this is a [`Entry::placeholder`].
    pub fn is_placeholder(&self) -> bool {
        self.role.is_empty() && matches!(&self.op, Op::Statement { sql, .. } if sql.is_empty())
    }

    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.weight());
        out.put_u8(VERSION);
        put(&mut out, self.database.as_bytes());
        put(&mut out, self.role.as_bytes());
        put(&mut out, self.search_path.as_bytes());
        out.put_u32(u32::try_from(self.settings.len()).unwrap_or(u32::MAX));
        for (n, v) in &self.settings {
            put(&mut out, n.as_bytes());
            put(&mut out, v.as_bytes());
        }
        out.put_u32(self.db_oid);
        out.put_u32(u32::try_from(self.tags.len()).unwrap_or(u32::MAX));
        for t in &self.tags {
            out.put_u32(*t);
        }
        out.put_u64(self.acked_ms);
        match &self.op {
            Op::Statement {
                sql,
                types,
                bind,
                rows,
            } => {
                out.put_u8(b'S');
                put(&mut out, sql);
                put(&mut out, types);
                put(&mut out, bind);
                out.put_u64(*rows);
            }
            Op::Increment {
                table,
                column,
                key_column,
                key,
                delta,
                coalesce,
            } => {
                out.put_u8(b'I');
                put(&mut out, table.as_bytes());
                put(&mut out, column.as_bytes());
                put(&mut out, key_column.as_bytes());
                put(&mut out, key.as_bytes());
                out.put_i64(*delta);
                out.put_u8(u8::from(*coalesce));
            }
        }
        out.freeze()
    }

    pub fn decode(bytes: &[u8]) -> Result<Entry, DecodeError> {
        let mut r = Reader::new(bytes);
        if r.u8() != Some(VERSION) {
            return Err(DecodeError("unknown version"));
        }
        let database = text(&mut r)?;
        let role = text(&mut r)?;
        let search_path = text(&mut r)?;
        let n = count(&mut r, 2)?;
        let mut settings = Vec::with_capacity(n);
        for _ in 0..n {
            settings.push((text(&mut r)?, text(&mut r)?));
        }
        let db_oid = r.u32().ok_or(DecodeError("truncated"))?;
        let n = count(&mut r, 4)?;
        let mut tags = Vec::with_capacity(n);
        for _ in 0..n {
            tags.push(r.u32().ok_or(DecodeError("truncated"))?);
        }
        let acked_ms = r.u64().ok_or(DecodeError("truncated"))?;
        let op = match r.u8() {
            Some(b'S') => Op::Statement {
                sql: blob(&mut r)?,
                types: blob(&mut r)?,
                bind: blob(&mut r)?,
                rows: r.u64().ok_or(DecodeError("truncated"))?,
            },
            Some(b'I') => Op::Increment {
                table: text(&mut r)?,
                column: text(&mut r)?,
                key_column: text(&mut r)?,
                key: text(&mut r)?,
                delta: r
                    .u64()
                    .map(|v| i64::from_be_bytes(v.to_be_bytes()))
                    .ok_or(DecodeError("truncated"))?,
                coalesce: r.u8().ok_or(DecodeError("truncated"))? == 1,
            },
            _ => return Err(DecodeError("unknown operation")),
        };
        if !r.remaining().is_empty() {
            return Err(DecodeError("trailing bytes"));
        }
        Ok(Entry {
            database,
            role,
            search_path,
            settings,
            db_oid,
            tags,
            acked_ms,
            op,
        })
    }
}

/// `"name"`, with embedded quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn put(out: &mut BytesMut, b: &[u8]) {
    out.put_u32(u32::try_from(b.len()).unwrap_or(u32::MAX));
    out.put_slice(b);
}

fn blob(r: &mut Reader<'_>) -> Result<Bytes, DecodeError> {
    let n = r.u32().ok_or(DecodeError("truncated"))?;
    let n = usize::try_from(n).map_err(|_| DecodeError("length"))?;
    r.bytes(n)
        .map(Bytes::copy_from_slice)
        .ok_or(DecodeError("truncated"))
}

fn text(r: &mut Reader<'_>) -> Result<String, DecodeError> {
    let b = blob(r)?;
    String::from_utf8(b.to_vec()).map_err(|_| DecodeError("not UTF-8"))
}

/// An element count, bounded by what the rest could hold (`min` bytes each), so a forged
/// count cannot make a huge allocation.
fn count(r: &mut Reader<'_>, min: usize) -> Result<usize, DecodeError> {
    let n = r.u32().ok_or(DecodeError("truncated"))?;
    let n = usize::try_from(n).map_err(|_| DecodeError("length"))?;
    if n.saturating_mul(min) > r.remaining().len() {
        return Err(DecodeError("count exceeds the record"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(op: Op) -> Entry {
        Entry {
            database: "app".into(),
            role: "writer".into(),
            search_path: "\"$user\", public".into(),
            settings: vec![("timezone".into(), "Europe/Paris".into())],
            db_oid: 16384,
            tags: vec![16390, 16400],
            acked_ms: 1_765_000_000_000,
            op,
        }
    }

    #[test]
    fn round_trips_both_operations() {
        for op in [
            Op::Statement {
                sql: Bytes::from_static(b"INSERT INTO t VALUES ($1)"),
                types: Bytes::from_static(&[0, 0, 0, 23]),
                bind: Bytes::from_static(&[0, 0, 0, 1, 0, 0, 0, 1, b'5', 0, 0]),
                rows: 1,
            },
            Op::Increment {
                table: "\"public\".\"counters\"".into(),
                column: "\"n\"".into(),
                key_column: "\"id\"".into(),
                key: "1".into(),
                delta: -3,
                coalesce: true,
            },
        ] {
            let e = sample(op);
            assert_eq!(Entry::decode(&e.encode()), Ok(e));
        }
    }

    #[test]
    fn every_truncation_and_garbage_is_an_error_not_a_panic() {
        let bytes = sample(Op::Statement {
            sql: Bytes::from_static(b"INSERT INTO t VALUES (1)"),
            types: Bytes::new(),
            bind: Bytes::new(),
            rows: 1,
        })
        .encode();
        for cut in 0..bytes.len() {
            assert!(Entry::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut forged = bytes.to_vec();
        // The settings count, made huge.
        let at = 1 + 4 + 3 + 4 + 6 + 4 + 15;
        forged[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(Entry::decode(&forged).is_err());
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert_eq!(Entry::decode(&longer), Err(DecodeError("trailing bytes")));
    }
}
