//! Constructors for the few messages pgmemo writes itself (errors, the SSL answer, a rewritten
//! SASL offer). Encoded with pgwire's message types.

use bytes::{Bytes, BytesMut};
use pgwire::messages::Message;
use pgwire::messages::response::ErrorResponse;

/// Fields of an ErrorResponse pgmemo originates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFields<'a> {
    /// "ERROR" or "FATAL".
    pub severity: &'a str,
    pub code: &'a str,
    pub message: &'a str,
    pub detail: Option<&'a str>,
    pub hint: Option<&'a str>,
}

/// ReadyForQuery, idle: ends every answer from the cache.
pub const READY_IDLE: &[u8] = b"Z\0\0\0\x05I";
/// ParseComplete then BindComplete: how a hit with a Parse begins.
pub const PARSE_BIND_COMPLETE: &[u8] = b"1\0\0\0\x042\0\0\0\x04";
/// BindComplete: how a hit of a prepared statement begins.
pub const BIND_COMPLETE: &[u8] = b"2\0\0\0\x04";
/// PortalSuspended: ends an answer cut short by the Execute's row limit.
pub const PORTAL_SUSPENDED: &[u8] = b"s\0\0\0\x04";

/// Encodes an ErrorResponse frame. Falls back to a minimal hand-built frame if the encoder
/// refuses (it only refuses absurd sizes), so an error can always be reported.
pub fn error_response(e: &ErrorFields<'_>) -> Bytes {
    let mut fields = vec![
        (b'S', e.severity.to_owned()),
        (b'V', e.severity.to_owned()),
        (b'C', e.code.to_owned()),
        (b'M', e.message.to_owned()),
    ];
    if let Some(d) = e.detail {
        fields.push((b'D', d.to_owned()));
    }
    if let Some(h) = e.hint {
        fields.push((b'H', h.to_owned()));
    }
    let msg = ErrorResponse::new(fields);
    let mut buf = BytesMut::new();
    match msg.encode(&mut buf) {
        Ok(()) => buf.freeze(),
        Err(_) => minimal_error(e.severity, e.code),
    }
}

fn minimal_error(severity: &str, code: &str) -> Bytes {
    let mut body = Vec::new();
    for (t, v) in [(b'S', severity), (b'C', code), (b'M', "error")] {
        body.push(t);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    frame(b'E', &body)
}

/// Appends a tagged frame whose body is `parts`, concatenated (pgmemo's own extended-protocol
/// messages: names, texts and terminators written as they are).
pub fn put_frame(out: &mut impl bytes::BufMut, tag: u8, parts: &[&[u8]]) {
    let len: usize = 4 + parts.iter().map(|p| p.len()).sum::<usize>();
    out.put_u8(tag);
    out.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    for p in parts {
        out.put_slice(p);
    }
}

/// A tagged frame from a body.
pub fn frame(tag: u8, body: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(tag);
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    Bytes::from(out)
}

/// AuthenticationSASL (code 10) offering exactly `mechanisms`.
pub fn auth_sasl(mechanisms: &[&[u8]]) -> Bytes {
    let mut body = 10i32.to_be_bytes().to_vec();
    for m in mechanisms {
        body.extend_from_slice(m);
        body.push(0);
    }
    body.push(0);
    frame(super::tags::backend::AUTHENTICATION, &body)
}

/// Terminate ('X'), sent upstream when pgmemo ends a session itself.
pub fn terminate() -> Bytes {
    frame(super::tags::frontend::TERMINATE, &[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::fields::Reader;

    #[test]
    fn error_frame_has_code_and_message() {
        let b = error_response(&ErrorFields {
            severity: "FATAL",
            code: "08P01",
            message: "bad",
            detail: Some("d"),
            hint: None,
        });
        assert_eq!(b.first(), Some(&b'E'));
        let mut r = Reader::body(&b);
        let mut seen = Vec::new();
        while let Some(t) = r.u8() {
            if t == 0 {
                break;
            }
            seen.push((t, r.cstr().unwrap().to_vec()));
        }
        assert!(seen.contains(&(b'C', b"08P01".to_vec())));
        assert!(seen.contains(&(b'M', b"bad".to_vec())));
        assert!(seen.contains(&(b'D', b"d".to_vec())));
    }

    #[test]
    fn sasl_offer_round_trips() {
        let b = auth_sasl(&[b"SCRAM-SHA-256"]);
        assert_eq!(&b[..], b"R\0\0\0\x17\0\0\0\x0aSCRAM-SHA-256\0\0");
    }
}
