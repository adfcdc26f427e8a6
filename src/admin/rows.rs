//! Typed result sets of the admin console (and, as JSON, of the HTTP API), encoded as PostgreSQL sends a query's result:
//! RowDescription (a type OID per column, so `psql` aligns numbers and drivers decode them),
//! one DataRow per row in text format, CommandComplete. Values are formatted here, once, the
//! way PostgreSQL's text output would read them.

use bytes::{BufMut, BytesMut};

use crate::protocol::response::put_frame;

/// A column's PostgreSQL type (text format on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Text,
    Int8,
    Float8,
    Bool,
}

impl Type {
    fn oid(self) -> i32 {
        match self {
            Type::Text => 25,
            Type::Int8 => 20,
            Type::Float8 => 701,
            Type::Bool => 16,
        }
    }

    fn size(self) -> i16 {
        match self {
            Type::Text => -1,
            Type::Int8 | Type::Float8 => 8,
            Type::Bool => 1,
        }
    }
}

/// One cell. `Null` is SQL NULL (a length of -1 on the wire).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Null,
}

impl Value {
    fn text(&self) -> Option<String> {
        match self {
            Value::Text(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) if f.is_nan() => Some("NaN".into()),
            Value::Float(f) if f.is_infinite() => {
                Some(if *f > 0.0 { "Infinity" } else { "-Infinity" }.into())
            }
            Value::Float(f) => Some(f.to_string()),
            Value::Bool(b) => Some(if *b { "t" } else { "f" }.into()),
            Value::Null => None,
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Text(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Text(s)
    }
}

impl From<u64> for Value {
    fn from(n: u64) -> Self {
        Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Value::Int(n)
    }
}

impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Value::Float(f)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// A result set: named, typed columns and rows of as many values.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub columns: Vec<(&'static str, Type)>,
    pub rows: Vec<Vec<Value>>,
}

impl Table {
    pub fn new(columns: &[(&'static str, Type)]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; a row of the wrong width is a bug in the command, padded or cut to fit
    /// rather than sent malformed.
    pub fn push(&mut self, mut row: Vec<Value>) {
        row.resize(self.columns.len(), Value::Null);
        self.rows.push(row);
    }

    /// RowDescription, the DataRows and CommandComplete `tag`.
    pub fn encode(&self, out: &mut BytesMut, tag: &str) {
        let mut desc = BytesMut::new();
        desc.put_i16(i16::try_from(self.columns.len()).unwrap_or(i16::MAX));
        for (name, ty) in &self.columns {
            desc.put_slice(name.as_bytes());
            desc.put_u8(0);
            desc.put_i32(0); // table OID
            desc.put_i16(0); // column number
            desc.put_i32(ty.oid());
            desc.put_i16(ty.size());
            desc.put_i32(-1); // type modifier
            desc.put_i16(0); // text format
        }
        put_frame(out, b'T', &[&desc]);
        for row in &self.rows {
            let mut data = BytesMut::new();
            data.put_i16(i16::try_from(row.len()).unwrap_or(i16::MAX));
            for value in row {
                match value.text() {
                    Some(t) => {
                        data.put_i32(i32::try_from(t.len()).unwrap_or(i32::MAX));
                        data.put_slice(t.as_bytes());
                    }
                    None => data.put_i32(-1),
                }
            }
            put_frame(out, b'D', &[&data]);
        }
        command_complete(out, tag);
    }
}

impl Table {
    /// The rows as JSON objects keyed by column name, values typed.
    pub fn to_json(&self) -> serde_json::Value {
        let rows = self.rows.iter().map(|row| {
            let obj: serde_json::Map<String, serde_json::Value> = self
                .columns
                .iter()
                .zip(row)
                .map(|((name, _), v)| ((*name).to_owned(), v.to_json()))
                .collect();
            serde_json::Value::Object(obj)
        });
        serde_json::Value::Array(rows.collect())
    }
}

impl Value {
    fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Text(s) => serde_json::Value::from(s.as_str()),
            Value::Int(i) => serde_json::Value::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map_or(serde_json::Value::Null, serde_json::Value::Number),
            Value::Bool(b) => serde_json::Value::from(*b),
            Value::Null => serde_json::Value::Null,
        }
    }
}

/// CommandComplete with `tag`.
pub fn command_complete(out: &mut BytesMut, tag: &str) {
    put_frame(out, b'C', &[tag.as_bytes(), b"\0"]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits well-formed frames (test input only).
    pub(super) fn split(mut buf: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while buf.len() >= 5 {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            out.push(buf[..1 + len].to_vec());
            buf = &buf[1 + len..];
        }
        out
    }

    #[test]
    fn a_table_is_encoded_as_postgresql_sends_a_result() {
        let mut t = Table::new(&[("name", Type::Text), ("n", Type::Int8), ("ok", Type::Bool)]);
        t.push(vec!["a".into(), 7u64.into(), true.into()]);
        t.push(vec![Value::Null, Value::Int(-1)]);
        let mut out = BytesMut::new();
        t.encode(&mut out, "SHOW");
        let frames = split(&out);
        let tags: Vec<u8> = frames.iter().map(|f| f[0]).collect();
        assert_eq!(tags, b"TDDC");
        // RowDescription: 3 columns; the second is int8 (OID 20).
        assert_eq!(&frames[0][5..7], &3i16.to_be_bytes());
        let second = frames[0].windows(2).position(|w| w == b"n\0").unwrap() + 2;
        assert_eq!(&frames[0][second + 6..second + 10], &20i32.to_be_bytes());
        // The short row was padded with NULL.
        assert!(frames[2].ends_with(&(-1i32).to_be_bytes()));
        assert_eq!(&frames[3][5..], b"SHOW\0");
    }

    #[test]
    fn floats_read_as_postgresql_prints_them() {
        assert_eq!(Value::Float(f64::NAN).text().unwrap(), "NaN");
        assert_eq!(Value::Float(f64::INFINITY).text().unwrap(), "Infinity");
        assert_eq!(Value::Float(0.5).text().unwrap(), "0.5");
    }
}
