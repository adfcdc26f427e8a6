//! decode(encode(x)) = x for the replication messages pgmemo decodes: pgoutput messages
//! (Begin, Commit, Relation, Insert/Update/Delete with their K/O/N tuples, Truncate, and the
//! message kinds it passes over) built from structured input by this crate's encoder (after
//! PostgreSQL's "Logical Replication Message Formats"), wrapped in an XLogData as the server
//! sends them, and primary keepalives. Asserts every field reads back as encoded, tuples
//! datum by datum and relation columns column by column; a cut-short row message still names
//! its relation (`cut`), never a half-read tuple.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use pgmemo::cdc::pgoutput::{ChangeKind, Datum, MAX_COLUMNS, Message, RelColumn, decode};
use pgmemo::cdc::wire::{Lsn, ServerMessage, decode_server};
use pgmemo_fuzz::{CString, put_cstr};

#[derive(Debug, Arbitrary)]
enum D {
    Null,
    Unchanged,
    Text(Vec<u8>),
    Binary(Vec<u8>),
}

#[derive(Debug, Arbitrary)]
enum Kind {
    Insert,
    Update,
    Delete,
}

#[derive(Debug, Arbitrary)]
enum Msg {
    Begin {
        final_lsn: u64,
        ts: u64,
        xid: u32,
    },
    Commit {
        flags: u8,
        commit_lsn: u64,
        end_lsn: u64,
        ts: u64,
    },
    Relation {
        oid: u32,
        ns: CString,
        name: CString,
        identity: u8,
        columns: Vec<(u8, CString, u32, i32)>,
    },
    Row {
        kind: Kind,
        rel: u32,
        old_is_full: bool,
        key: Option<Vec<D>>,
        new: Vec<D>,
        cut: u16,
    },
    Truncate {
        options: u8,
        rels: Vec<u32>,
    },
    Other {
        tag: u8,
        body: Vec<u8>,
    },
}

#[derive(Debug, Arbitrary)]
struct Input {
    msg: Msg,
    start: u64,
    wal_end: u64,
    sent_at: i64,
    reply: bool,
}

fn put_tuple(out: &mut Vec<u8>, tag: u8, datums: &[D]) {
    out.push(tag);
    out.extend_from_slice(&(datums.len() as i16).to_be_bytes());
    for d in datums {
        match d {
            D::Null => out.push(b'n'),
            D::Unchanged => out.push(b'u'),
            D::Text(v) | D::Binary(v) => {
                out.push(if matches!(d, D::Text(_)) { b't' } else { b'b' });
                out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                out.extend_from_slice(v);
            }
        }
    }
}

fn same_tuple(got: Option<pgmemo::cdc::pgoutput::Tuple<'_>>, want: Option<&[D]>) {
    match (got, want) {
        (None, None) => {}
        (Some(t), Some(w)) => {
            assert_eq!(t.len(), w.len());
            let got: Vec<Datum<'_>> = t.iter().collect();
            assert_eq!(got.len(), w.len());
            for (g, w) in got.iter().zip(w) {
                match (g, w) {
                    (Datum::Null, D::Null) | (Datum::Unchanged, D::Unchanged) => {}
                    (Datum::Text(a), D::Text(b)) | (Datum::Binary(a), D::Binary(b)) => {
                        assert_eq!(a, b)
                    }
                    other => panic!("datum misread: {other:?}"),
                }
            }
        }
        other => panic!(
            "tuple presence misread: {:?}",
            (other.0.is_some(), other.1.is_some())
        ),
    }
}

/// Whether every column list is within PostgreSQL's bound (longer ones are malformed by
/// design, which the `pgoutput` target covers).
fn in_bounds(m: &Msg) -> bool {
    match m {
        Msg::Relation { columns, .. } => columns.len() <= MAX_COLUMNS,
        Msg::Row { key, new, .. } => {
            key.as_ref().is_none_or(|k| k.len() <= MAX_COLUMNS) && new.len() <= MAX_COLUMNS
        }
        _ => true,
    }
}

fuzz_target!(|input: Input| {
    if !in_bounds(&input.msg) {
        return;
    }
    let mut data = Vec::new();
    match &input.msg {
        Msg::Begin { final_lsn, ts, xid } => {
            data.push(b'B');
            data.extend_from_slice(&final_lsn.to_be_bytes());
            data.extend_from_slice(&ts.to_be_bytes());
            data.extend_from_slice(&xid.to_be_bytes());
            assert_eq!(
                decode(&data),
                Ok(Message::Begin {
                    final_lsn: Lsn(*final_lsn),
                    xid: *xid
                })
            );
        }
        Msg::Commit {
            flags,
            commit_lsn,
            end_lsn,
            ts,
        } => {
            data.push(b'C');
            data.push(*flags);
            data.extend_from_slice(&commit_lsn.to_be_bytes());
            data.extend_from_slice(&end_lsn.to_be_bytes());
            data.extend_from_slice(&ts.to_be_bytes());
            assert_eq!(
                decode(&data),
                Ok(Message::Commit {
                    commit_lsn: Lsn(*commit_lsn),
                    end_lsn: Lsn(*end_lsn),
                    committed_at: *ts as i64
                })
            );
        }
        Msg::Relation {
            oid,
            ns,
            name,
            identity,
            columns,
        } => {
            data.push(b'R');
            data.extend_from_slice(&oid.to_be_bytes());
            put_cstr(&mut data, &ns.0);
            put_cstr(&mut data, &name.0);
            data.push(*identity);
            data.extend_from_slice(&(columns.len() as i16).to_be_bytes());
            for (flags, col, ty, typmod) in columns {
                data.push(*flags);
                put_cstr(&mut data, &col.0);
                data.extend_from_slice(&ty.to_be_bytes());
                data.extend_from_slice(&typmod.to_be_bytes());
            }
            let Ok(Message::Relation {
                oid: o,
                namespace,
                name: n,
                identity: i,
                columns: cols,
            }) = decode(&data)
            else {
                panic!("an encoded Relation does not decode");
            };
            assert_eq!(
                (o, namespace, n, i),
                (*oid, &ns.0[..], &name.0[..], *identity)
            );
            let got: Vec<RelColumn<'_>> = cols.iter().collect();
            assert_eq!(got.len(), columns.len());
            for (g, (flags, col, ty, typmod)) in got.iter().zip(columns) {
                assert_eq!(
                    *g,
                    RelColumn {
                        key: flags & 1 != 0,
                        name: &col.0,
                        type_oid: *ty,
                        typmod: *typmod
                    }
                );
            }
        }
        Msg::Row {
            kind,
            rel,
            old_is_full,
            key,
            new,
            cut,
        } => {
            let (tag, kind) = match kind {
                Kind::Insert => (b'I', ChangeKind::Insert),
                Kind::Update => (b'U', ChangeKind::Update),
                Kind::Delete => (b'D', ChangeKind::Delete),
            };
            // The shapes pgoutput sends: INSERT N; UPDATE [K|O] N; DELETE K|O.
            let old: Option<&[D]> = match kind {
                ChangeKind::Insert => None,
                ChangeKind::Update => key.as_deref(),
                ChangeKind::Delete => Some(key.as_deref().unwrap_or(&[])),
            };
            let newt: Option<&[D]> = (kind != ChangeKind::Delete).then_some(&new[..]);
            data.push(tag);
            data.extend_from_slice(&rel.to_be_bytes());
            let old_tag = if *old_is_full { b'O' } else { b'K' };
            if let Some(o) = old {
                put_tuple(&mut data, old_tag, o);
            }
            if let Some(n) = newt {
                put_tuple(&mut data, b'N', n);
            }
            let Ok(Message::Row {
                kind: k,
                rel: r,
                key: gk,
                old: go,
                new: gn,
                cut: c,
            }) = decode(&data)
            else {
                panic!("an encoded row does not decode: {:?}", decode(&data));
            };
            assert_eq!((k, r, c), (kind, *rel, false));
            let (wk, wo) = if *old_is_full {
                (None, old)
            } else {
                (old, None)
            };
            same_tuple(gk, wk);
            same_tuple(go, wo);
            same_tuple(gn, newt);
            // A cut-short message (a long frame's kept head) names its relation, nothing more.
            let keep = 5 + usize::from(*cut) % (data.len() - 4);
            if keep < data.len() {
                match decode(&data[..keep]) {
                    Ok(Message::Row {
                        rel: r,
                        cut: true,
                        key: None,
                        old: None,
                        new: None,
                        ..
                    }) => assert_eq!(r, *rel),
                    other => panic!("a cut row read as {other:?}"),
                }
            }
        }
        Msg::Truncate { options, rels } => {
            data.push(b'T');
            data.extend_from_slice(&(rels.len() as u32).to_be_bytes());
            data.push(*options);
            rels.iter()
                .for_each(|r| data.extend_from_slice(&r.to_be_bytes()));
            let Ok(Message::Truncate { rels: got }) = decode(&data) else {
                panic!("an encoded Truncate does not decode");
            };
            assert_eq!(Message::truncated(got).collect::<Vec<_>>(), *rels);
        }
        Msg::Other { tag, body } => {
            if b"BCRIUDT".contains(tag) {
                return;
            }
            data.push(*tag);
            data.extend_from_slice(body);
            assert_eq!(decode(&data), Ok(Message::Other(*tag)));
        }
    }
    // As the server sends it: inside an XLogData.
    let mut w = vec![b'w'];
    w.extend_from_slice(&input.start.to_be_bytes());
    w.extend_from_slice(&input.wal_end.to_be_bytes());
    w.extend_from_slice(&input.sent_at.to_be_bytes());
    w.extend_from_slice(&data);
    assert_eq!(
        decode_server(&w),
        Ok(ServerMessage::XLogData {
            start: Lsn(input.start),
            wal_end: Lsn(input.wal_end),
            sent_at: input.sent_at,
            data: &data
        })
    );
    let mut k = vec![b'k'];
    k.extend_from_slice(&input.wal_end.to_be_bytes());
    k.extend_from_slice(&input.sent_at.to_be_bytes());
    k.push(u8::from(input.reply));
    assert_eq!(
        decode_server(&k),
        Ok(ServerMessage::Keepalive {
            wal_end: Lsn(input.wal_end),
            sent_at: input.sent_at,
            reply_requested: input.reply
        })
    );
});
