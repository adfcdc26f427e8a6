//! decode(encode(x)) = x for the extended-protocol messages pgmemo reads (Parse, Bind,
//! Describe, Execute, Close), and for the one group the cache answers
//! (`[Parse] Bind [Describe portal] Execute Sync`, read by `session::cache_side::group::scan`),
//! from structured input encoded by this crate's own encoder. Asserts each view reads back
//! every field; a Bind's parameters come back with the formats PostgreSQL would apply; an
//! answerable group is recognised with its fields and length, whatever follows it, and each
//! of its strict prefixes is Incomplete.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use pgmemo::protocol::frontend::{Bind, Close, Describe, Execute, Param, Parse, Target};
use pgmemo::session::cache_side::group::{Scan, scan};
use pgmemo_fuzz::{CString, frame, put_cstr};

#[derive(Debug, Arbitrary)]
struct BindFields {
    portal: CString,
    statement: CString,
    /// 0, 1 or one per parameter is what PostgreSQL accepts; others are tried too.
    formats: Vec<i16>,
    params: Vec<Option<Vec<u8>>>,
    results: Vec<i16>,
}

#[derive(Debug, Arbitrary)]
struct Input {
    parse_name: CString,
    sql: CString,
    types: Vec<u32>,
    bind: BindFields,
    describe_portal: bool,
    target_is_portal: bool,
    max_rows: i32,
    with_parse: bool,
    trailing: Vec<u8>,
}

fn encode_bind(b: &BindFields) -> Vec<u8> {
    let mut body = Vec::new();
    put_cstr(&mut body, &b.portal.0);
    put_cstr(&mut body, &b.statement.0);
    body.extend_from_slice(&(b.formats.len() as i16).to_be_bytes());
    for f in &b.formats {
        body.extend_from_slice(&f.to_be_bytes());
    }
    body.extend_from_slice(&(b.params.len() as i16).to_be_bytes());
    for p in &b.params {
        match p {
            Some(v) => {
                body.extend_from_slice(&(v.len() as i32).to_be_bytes());
                body.extend_from_slice(v);
            }
            None => body.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    body.extend_from_slice(&(b.results.len() as i16).to_be_bytes());
    for f in &b.results {
        body.extend_from_slice(&f.to_be_bytes());
    }
    frame(b'B', &body)
}

fuzz_target!(|input: Input| {
    let mut types = input.types.clone();
    types.truncate(64);
    let mut bind = input.bind;
    bind.formats.truncate(64);
    bind.params.truncate(64);
    bind.results.truncate(64);

    // Parse.
    let mut body = Vec::new();
    put_cstr(&mut body, &input.parse_name.0);
    put_cstr(&mut body, &input.sql.0);
    body.extend_from_slice(&(types.len() as i16).to_be_bytes());
    types
        .iter()
        .for_each(|t| body.extend_from_slice(&t.to_be_bytes()));
    let parse_frame = frame(b'P', &body);
    let p = Parse::read(&parse_frame).expect("an encoded Parse reads");
    let oids: Vec<u8> = types.iter().flat_map(|t| t.to_be_bytes()).collect();
    assert_eq!(
        (p.name, p.sql, p.param_types, p.rest),
        (
            &input.parse_name.0[..],
            &input.sql.0[..],
            &oids[..],
            &b""[..]
        )
    );

    // Bind.
    let bind_frame = encode_bind(&bind);
    let b = Bind::read(&bind_frame).expect("an encoded Bind reads");
    assert_eq!(
        (b.portal, b.statement),
        (&bind.portal.0[..], &bind.statement.0[..])
    );
    assert!(b.tail_is_valid(), "an encoded Bind's tail is valid");
    let n = bind.params.len();
    let params: Vec<Option<Param<'_>>> = b.params().collect();
    if bind.formats.len() <= 1 || bind.formats.len() == n {
        let want: Vec<Option<Param<'_>>> = bind
            .params
            .iter()
            .enumerate()
            .map(|(i, v)| {
                Some(Param {
                    format: match bind.formats.len() {
                        0 => 0,
                        1 => bind.formats[0],
                        _ => bind.formats[i],
                    },
                    value: v.as_deref(),
                })
            })
            .collect();
        assert_eq!(params, want);
    } else {
        // PostgreSQL refuses the format count; so does the reader, in one item.
        assert_eq!(params, vec![None]);
    }

    // Describe and Close.
    let (tag, target) = if input.target_is_portal {
        (b'P', Target::Portal)
    } else {
        (b'S', Target::Statement)
    };
    let mut body = vec![tag];
    put_cstr(&mut body, &input.parse_name.0);
    let d_frame = frame(b'D', &body);
    let d = Describe::read(&d_frame).expect("an encoded Describe reads");
    assert_eq!(
        (d.target, d.name, d.rest),
        (target, &input.parse_name.0[..], &b""[..])
    );
    let c_frame = frame(b'C', &body);
    assert_eq!(
        Close::read(&c_frame),
        Some(Close {
            target,
            name: &input.parse_name.0
        })
    );

    // Execute.
    let mut body = Vec::new();
    put_cstr(&mut body, &bind.portal.0);
    body.extend_from_slice(&input.max_rows.to_be_bytes());
    let e_frame = frame(b'E', &body);
    let e = Execute::read(&e_frame).expect("an encoded Execute reads");
    assert_eq!(
        (e.portal, e.max_rows, e.rest),
        (&bind.portal.0[..], input.max_rows, &b""[..])
    );

    // The group: answerable when the portal is unnamed and the Parse names the Bind's statement.
    let mut group = Vec::new();
    let named = input.with_parse.then_some(&input.parse_name.0);
    if input.with_parse {
        group.extend_from_slice(&parse_frame);
    }
    group.extend_from_slice(&bind_frame);
    if input.describe_portal {
        group.extend_from_slice(&frame(b'D', b"P\0"));
    }
    group.extend_from_slice(&e_frame);
    group.extend_from_slice(&frame(b'S', b""));
    let len = group.len();
    let answerable = bind.portal.0.is_empty() && named.is_none_or(|n| *n == bind.statement.0);
    let mut buf = group.clone();
    buf.extend_from_slice(&input.trailing);
    match scan(&buf, 1 << 20) {
        Scan::Group(g) => {
            assert!(
                answerable,
                "a group with a named portal or another statement was taken"
            );
            assert_eq!(g.len, len);
            assert_eq!(g.statement, &bind.statement.0[..]);
            assert_eq!(g.bind_tail, b.tail);
            assert_eq!(g.describe, input.describe_portal);
            assert_eq!(g.max_rows, u32::try_from(input.max_rows).unwrap_or(0));
            match (g.parse, input.with_parse) {
                (Some(p), true) => {
                    assert_eq!(
                        (p.name, p.sql, p.frame),
                        (&input.parse_name.0[..], &input.sql.0[..], &parse_frame[..])
                    );
                }
                (None, false) => {}
                other => panic!("the Parse was misread: {other:?}"),
            }
        }
        other => assert!(!answerable, "an answerable group read as {other:?}"),
    }
    if answerable {
        // Every strict prefix waits for more (a sample of cut points, all frame ends among them).
        let step = (len / 64).max(1);
        for cut in (1..len).step_by(step).chain([len - 1]) {
            assert!(
                matches!(scan(&group[..cut], 1 << 20), Scan::Incomplete),
                "cut at {cut} of {len}"
            );
        }
    }
});
