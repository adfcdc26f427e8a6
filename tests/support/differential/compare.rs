//! Compares what pgmemo sent with what PostgreSQL sent, frame by frame, after masking only
//! what must differ between two sessions (BackendKeyData, and the sending backend's pid in
//! a NotificationResponse) or between the two databases (the table OID, in a
//! RowDescription, of a relation a conversation created: OIDs are drawn from one counter
//! for the whole server, so the two sides' temporary tables get different ones), and renders
//! frames readably for a mismatch report.

use std::fmt::Write as _;

use bytes::Bytes;

use super::runner::{Reply, Transcript};

/// The first place two transcripts differ.
#[derive(Debug, Clone)]
pub struct Diff {
    /// None: the startup replies.
    pub step: Option<usize>,
    pub frame: usize,
    pub proxy: String,
    pub direct: String,
}

/// A frame with what legitimately differs between sessions zeroed; `fixture_oids` is the
/// largest OID that existed before any conversation ran.
pub fn mask(f: &Bytes, fixture_oids: u32) -> Bytes {
    match f.first() {
        Some(b'T') => mask_new_tables(f, fixture_oids),
        // BackendKeyData: another backend, another key.
        Some(b'K') => {
            let mut v = f.to_vec();
            for b in v.iter_mut().skip(5) {
                *b = 0;
            }
            Bytes::from(v)
        }
        // NotificationResponse: the notifying backend's pid.
        Some(b'A') if f.len() >= 9 => {
            let mut v = f.to_vec();
            for b in &mut v[5..9] {
                *b = 0;
            }
            Bytes::from(v)
        }
        _ => f.clone(),
    }
}

/// A RowDescription with the table OIDs above `fixture_oids` zeroed.
fn mask_new_tables(f: &Bytes, fixture_oids: u32) -> Bytes {
    let mut v = f.to_vec();
    let n = be16(&v, 5).unwrap_or(0);
    let mut at = 7;
    for _ in 0..n {
        let Some(end) = v.get(at..).and_then(|r| r.iter().position(|&b| b == 0)) else {
            break;
        };
        at += end + 1;
        if let Some(oid) = v.get_mut(at..at + 4)
            && u32::from_be_bytes([oid[0], oid[1], oid[2], oid[3]]) > fixture_oids
        {
            oid.fill(0);
        }
        at += 18;
    }
    Bytes::from(v)
}

/// Compares two replies; `frames` counts the frame pairs compared.
fn compare_reply(
    step: Option<usize>,
    (p, d): (&Reply, &Reply),
    fixture_oids: u32,
    frames: &mut u64,
) -> Option<Diff> {
    let n = p.frames.len().max(d.frames.len());
    for i in 0..n {
        let (a, b) = (
            p.frames.get(i).map(|f| mask(f, fixture_oids)),
            d.frames.get(i).map(|f| mask(f, fixture_oids)),
        );
        if a.is_some() && b.is_some() {
            *frames += 1;
        }
        if a != b {
            return Some(Diff {
                step,
                frame: i,
                proxy: a.map_or_else(
                    || format!("<no frame; run ended: {:?}>", p.end),
                    |f| decode(&f),
                ),
                direct: b.map_or_else(
                    || format!("<no frame; run ended: {:?}>", d.end),
                    |f| decode(&f),
                ),
            });
        }
    }
    if p.end != d.end {
        return Some(Diff {
            step,
            frame: n,
            proxy: format!("<run ended: {:?}>", p.end),
            direct: format!("<run ended: {:?}>", d.end),
        });
    }
    None
}

/// The first difference between two transcripts, counting compared frames into `frames`.
pub fn compare(
    p: &Transcript,
    d: &Transcript,
    fixture_oids: u32,
    frames: &mut u64,
) -> Option<Diff> {
    let empty = Reply::default();
    for i in 0..p.startup.len().max(d.startup.len()) {
        let (a, b) = (
            p.startup.get(i).unwrap_or(&empty),
            d.startup.get(i).unwrap_or(&empty),
        );
        if let Some(diff) = compare_reply(None, (a, b), fixture_oids, frames) {
            return Some(diff);
        }
    }
    let n = p.steps.len().max(d.steps.len());
    for i in 0..n {
        let (a, b) = (
            p.steps.get(i).unwrap_or(&empty),
            d.steps.get(i).unwrap_or(&empty),
        );
        if let Some(diff) = compare_reply(Some(i), (a, b), fixture_oids, frames) {
            return Some(diff);
        }
    }
    None
}

fn cstrs(mut body: &[u8]) -> (Vec<String>, &[u8]) {
    let mut out = Vec::new();
    while let Some(end) = body.iter().position(|&b| b == 0) {
        out.push(String::from_utf8_lossy(&body[..end]).into_owned());
        body = &body[end + 1..];
        if out.len() > 64 {
            break;
        }
    }
    (out, body)
}

fn be16(b: &[u8], at: usize) -> Option<i16> {
    Some(i16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn be32(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn value(v: &[u8]) -> String {
    if v.iter().all(|b| (0x20..0x7f).contains(b)) {
        format!("{:?}", String::from_utf8_lossy(v))
    } else {
        format!(
            "0x{}",
            v.iter().map(|b| format!("{b:02x}")).collect::<String>()
        )
    }
}

/// One frame, readably (tag name and decoded fields; raw hex for the rest).
pub fn decode(f: &[u8]) -> String {
    let tag = f.first().copied().unwrap_or(b'?');
    let body = f.get(5..).unwrap_or_default();
    let name = match tag {
        b'1' => "ParseComplete",
        b'2' => "BindComplete",
        b'3' => "CloseComplete",
        b'A' => "NotificationResponse",
        b'C' => "CommandComplete",
        b'D' => "DataRow",
        b'E' => "ErrorResponse",
        b'G' => "CopyInResponse",
        b'H' => "CopyOutResponse",
        b'I' => "EmptyQueryResponse",
        b'K' => "BackendKeyData",
        b'N' => "NoticeResponse",
        b'R' => "Authentication",
        b'S' => "ParameterStatus",
        b'T' => "RowDescription",
        b'V' => "FunctionCallResponse",
        b'Z' => "ReadyForQuery",
        b'c' => "CopyDone",
        b'd' => "CopyData",
        b'n' => "NoData",
        b's' => "PortalSuspended",
        b't' => "ParameterDescription",
        _ => "?",
    };
    let mut s = format!("{}({name})", char::from(tag));
    match tag {
        b'E' | b'N' => {
            let mut rest = body;
            let mut fields = Vec::new();
            while let Some((&code, tail)) = rest.split_first() {
                if code == 0 {
                    break;
                }
                let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
                fields.push(format!(
                    "{}={:?}",
                    char::from(code),
                    String::from_utf8_lossy(&tail[..end])
                ));
                rest = tail.get(end + 1..).unwrap_or_default();
            }
            let _ = write!(s, " {}", fields.join(" "));
        }
        b'C' | b'S' | b'A' => {
            let skip = if tag == b'A' { 4 } else { 0 };
            let (strs, _) = cstrs(body.get(skip..).unwrap_or_default());
            if tag == b'A' {
                let _ = write!(s, " pid={:?}", be32(body, 0));
            }
            let _ = write!(s, " {strs:?}");
        }
        b'Z' => {
            let _ = write!(s, " {}", char::from(body.first().copied().unwrap_or(b'?')));
        }
        b'T' => {
            let n = be16(body, 0).unwrap_or(0);
            let mut rest = body.get(2..).unwrap_or_default();
            let mut cols = Vec::new();
            for _ in 0..n {
                let (names, tail) = cstrs_one(rest);
                let meta = tail.get(..18).unwrap_or_default();
                cols.push(format!(
                    "{names}(table {:?} col {:?} type {:?} len {:?} mod {:?} fmt {:?})",
                    be32(meta, 0),
                    be16(meta, 4),
                    be32(meta, 6),
                    be16(meta, 10),
                    be32(meta, 12),
                    be16(meta, 16)
                ));
                rest = tail.get(18..).unwrap_or_default();
            }
            let _ = write!(s, " [{}]", cols.join(", "));
        }
        b'D' => {
            let n = be16(body, 0).unwrap_or(0);
            let mut at = 2;
            let mut vals = Vec::new();
            for _ in 0..n {
                let len = be32(body, at).unwrap_or(-1);
                at += 4;
                if len < 0 {
                    vals.push("NULL".to_string());
                    continue;
                }
                let end = at + len as usize;
                vals.push(value(body.get(at..end).unwrap_or_default()));
                at = end;
            }
            let _ = write!(s, " [{}]", vals.join(", "));
        }
        b'd' => {
            let _ = write!(s, " {}", value(body));
        }
        _ => {
            let _ = write!(s, " {}", value(body));
        }
    }
    s
}

fn cstrs_one(body: &[u8]) -> (String, &[u8]) {
    let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
    (
        String::from_utf8_lossy(&body[..end]).into_owned(),
        body.get(end + 1..).unwrap_or_default(),
    )
}
