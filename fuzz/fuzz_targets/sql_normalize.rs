//! The token-level text jobs on raw SQL (`sql::normalize_for_key`, `shape_key`, `hints`,
//! `log_shape`, `statement_piece`, `param_references`) on arbitrary bytes. Asserts: no panic;
//! the cache-key form is idempotent, never longer than the text, and never lossy where it
//! matters: a cacheable text and its key form analyse the same (two cacheable texts with one key
//! form must mean the same statement, or the cache would answer one with the other's result); the shape key is
//! never longer than the text; hints are bounded (at most 8 unknown, each at most 64
//! characters) and the same in the key form (hint comments are kept); a log shape is cut at
//! its bound; statement pieces are slices of the text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgmemo::sql::{
    self, MAX_UNKNOWN_HINTS, hints, log_shape, normalize_for_key, param_references, shape_key,
    statement_piece,
};
use pgmemo_fuzz::within;

/// The analysis comparison runs sqlparser twice: only on texts of a size a run can afford.
const MAX_COMPARED: usize = 2048;

fuzz_target!(|sql: &[u8]| {
    let key = normalize_for_key(sql);
    assert!(key.len() <= sql.len(), "the key form grew");
    assert_eq!(
        normalize_for_key(&key),
        key,
        "the key form is not idempotent"
    );
    let h = hints(sql);
    assert!(h.unknown.len() <= MAX_UNKNOWN_HINTS);
    assert!(h.unknown.iter().all(|u| u.chars().count() <= 64));
    assert_eq!(hints(&key), h, "the key form lost or changed a hint");
    if let Some(shape) = shape_key(sql) {
        assert!(shape.len() <= sql.len(), "a shape key grew");
    }
    // A text that is never served from the cache may analyse differently from its key form
    // (a comment that is not UTF-8 sends the text to the conservative fallback, and the key
    // form drops the comment); a cacheable one must not.
    if sql.len() <= MAX_COMPARED {
        let a = sql::analyze(sql);
        if a.cacheable().is_some() {
            let b = sql::analyze(&key);
            assert_eq!(
                a.statements,
                b.statements,
                "the key form analyses differently: {:?}",
                String::from_utf8_lossy(&key)
            );
        }
    }
    let max = sql.first().map_or(0, |b| usize::from(*b));
    let shape = log_shape(sql, max);
    assert!(
        shape.len() <= max + '…'.len_utf8(),
        "a log shape passed its bound"
    );
    let mut i = 0;
    while let Some(piece) = statement_piece(sql, i) {
        assert!(within(sql, piece));
        i += 1;
    }
    let _ = param_references(sql, sql.len() as u16);
});
