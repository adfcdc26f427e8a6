//! Frontend messages of a generated conversation: a typed form (so the runner knows which
//! reply ends each one and the minimiser can print a readable conversation), its encoding as
//! wire bytes, and a one-line rendering.

use std::fmt::Write as _;

/// One parameter value of a Bind: `None` is SQL NULL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// 0 text, 1 binary.
    pub format: i16,
    pub value: Option<Vec<u8>>,
}

impl Param {
    pub fn text(s: &str) -> Param {
        Param {
            format: 0,
            value: Some(s.as_bytes().to_vec()),
        }
    }

    pub fn int4(v: i32) -> Param {
        Param {
            format: 1,
            value: Some(v.to_be_bytes().to_vec()),
        }
    }

    pub fn null() -> Param {
        Param {
            format: 0,
            value: None,
        }
    }
}

/// A frontend message the generator may send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    Query(String),
    Parse {
        name: String,
        sql: String,
        types: Vec<u32>,
    },
    Bind {
        portal: String,
        stmt: String,
        params: Vec<Param>,
        /// Result column formats as sent (empty = all text, one = all, else per column).
        results: Vec<i16>,
    },
    /// `b'S'` statement or `b'P'` portal.
    Describe {
        kind: u8,
        name: String,
    },
    Execute {
        portal: String,
        max_rows: i32,
    },
    Close {
        kind: u8,
        name: String,
    },
    Sync,
    Flush,
    /// The fast-path FunctionCall: a function by OID, arguments, result format.
    FunctionCall {
        oid: u32,
        args: Vec<Param>,
        result_format: i16,
    },
}

/// What ends the server's reply to one message (see `runner.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ends {
    /// ReadyForQuery.
    Ready,
    /// The one frame among these tags (after any intermediate ones).
    OneOf(&'static [u8]),
    /// No reply at all (Flush).
    Nothing,
}

impl Msg {
    /// The frame tags that end this message's reply when it does not fail.
    pub fn ends(&self) -> Ends {
        match self {
            Msg::Query(_) | Msg::Sync | Msg::FunctionCall { .. } => Ends::Ready,
            Msg::Parse { .. } => Ends::OneOf(b"1"),
            Msg::Bind { .. } => Ends::OneOf(b"2"),
            // A statement: ParameterDescription first, then RowDescription or NoData.
            Msg::Describe { .. } => Ends::OneOf(b"Tn"),
            Msg::Execute { .. } => Ends::OneOf(b"CIs"),
            Msg::Close { .. } => Ends::OneOf(b"3"),
            Msg::Flush => Ends::Nothing,
        }
    }

    /// Sync: the one message PostgreSQL does not skip after an extended-protocol error.
    pub fn is_sync(&self) -> bool {
        matches!(self, Msg::Sync)
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut body = Vec::new();
        let tag = match self {
            Msg::Query(sql) => {
                cstr(&mut body, sql);
                b'Q'
            }
            Msg::Parse { name, sql, types } => {
                cstr(&mut body, name);
                cstr(&mut body, sql);
                body.extend_from_slice(&(types.len() as i16).to_be_bytes());
                for t in types {
                    body.extend_from_slice(&t.to_be_bytes());
                }
                b'P'
            }
            Msg::Bind {
                portal,
                stmt,
                params,
                results,
            } => {
                cstr(&mut body, portal);
                cstr(&mut body, stmt);
                encode_params(&mut body, params);
                body.extend_from_slice(&(results.len() as i16).to_be_bytes());
                for f in results {
                    body.extend_from_slice(&f.to_be_bytes());
                }
                b'B'
            }
            Msg::Describe { kind, name } | Msg::Close { kind, name } => {
                body.push(*kind);
                cstr(&mut body, name);
                if matches!(self, Msg::Describe { .. }) {
                    b'D'
                } else {
                    b'C'
                }
            }
            Msg::Execute { portal, max_rows } => {
                cstr(&mut body, portal);
                body.extend_from_slice(&max_rows.to_be_bytes());
                b'E'
            }
            Msg::Sync => b'S',
            Msg::Flush => b'H',
            Msg::FunctionCall {
                oid,
                args,
                result_format,
            } => {
                body.extend_from_slice(&oid.to_be_bytes());
                encode_params(&mut body, args);
                body.extend_from_slice(&result_format.to_be_bytes());
                b'F'
            }
        };
        out.push(tag);
        out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        out.extend_from_slice(&body);
    }

    /// One readable line.
    pub fn render(&self) -> String {
        match self {
            Msg::Query(sql) => format!("Query {sql:?}"),
            Msg::Parse { name, sql, types } => format!("Parse {name:?} {sql:?} types={types:?}"),
            Msg::Bind {
                portal,
                stmt,
                params,
                results,
            } => {
                format!(
                    "Bind portal={portal:?} stmt={stmt:?} params=[{}] results={results:?}",
                    render_params(params)
                )
            }
            Msg::Describe { kind, name } => format!("Describe {} {name:?}", char::from(*kind)),
            Msg::Execute { portal, max_rows } => format!("Execute {portal:?} max_rows={max_rows}"),
            Msg::Close { kind, name } => format!("Close {} {name:?}", char::from(*kind)),
            Msg::Sync => "Sync".into(),
            Msg::Flush => "Flush".into(),
            Msg::FunctionCall {
                oid,
                args,
                result_format,
            } => format!(
                "FunctionCall oid={oid} args=[{}] result_format={result_format}",
                render_params(args)
            ),
        }
    }
}

fn render_params(params: &[Param]) -> String {
    let mut s = String::new();
    for (i, p) in params.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        match (&p.value, p.format) {
            (None, _) => s.push_str("NULL"),
            (Some(v), 0) => {
                let _ = write!(s, "{:?}", String::from_utf8_lossy(v));
            }
            (Some(v), _) => {
                let _ = write!(s, "bin{v:02x?}");
            }
        }
    }
    s
}

/// Parameter formats, then values (Bind and FunctionCall share the layout).
fn encode_params(body: &mut Vec<u8>, params: &[Param]) {
    body.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        body.extend_from_slice(&p.format.to_be_bytes());
    }
    body.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        match &p.value {
            None => body.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                body.extend_from_slice(&(v.len() as i32).to_be_bytes());
                body.extend_from_slice(v);
            }
        }
    }
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// A CopyData frame.
pub fn copy_data(out: &mut Vec<u8>, data: &[u8]) {
    out.push(b'd');
    out.extend_from_slice(&((data.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(data);
}

/// A CopyDone frame.
pub fn copy_done(out: &mut Vec<u8>) {
    out.extend_from_slice(&[b'c', 0, 0, 0, 4]);
}

/// A CopyFail frame.
pub fn copy_fail(out: &mut Vec<u8>, why: &str) {
    let mut body = Vec::new();
    cstr(&mut body, why);
    out.push(b'f');
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(&body);
}
