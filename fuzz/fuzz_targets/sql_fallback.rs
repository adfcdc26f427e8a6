//! The keyword fallback (`sql::fallback_statement`), which decides statements sqlparser
//! cannot parse, on arbitrary bytes as one statement. Asserts: no panic; the answer is
//! conservative: never a cacheable read, always with a reason (the fallback's cause, so the
//! session can count what parse failures cost), recursively through EXPLAIN and PREPARE;
//! names at most 63 bytes; a write whose targets are not exactly known bumps the epoch.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgmemo::sql::{Class, SessionChange, StatementInfo, fallback_statement};

fn check(info: &StatementInfo, top: bool) {
    if top {
        assert_ne!(
            info.class,
            Class::CacheableRead,
            "the fallback cached: {info:?}"
        );
        assert!(
            info.reason.is_some(),
            "the fallback gave no reason: {info:?}"
        );
    }
    assert_eq!(
        info.class == Class::CacheableRead,
        info.reason.is_none(),
        "{info:?}"
    );
    for r in info.reads.iter().chain(&info.writes) {
        assert!(
            r.name.len() <= 63 && r.schema.as_ref().is_none_or(|s| s.len() <= 63),
            "{r:?}"
        );
    }
    for f in &info.functions {
        assert!(
            f.name.len() <= 63 && f.schema.as_ref().is_none_or(|s| s.len() <= 63),
            "{f:?}"
        );
    }
    if info.class == Class::Write && info.writes.is_empty() {
        assert!(
            info.epoch_bump,
            "a write with unknown targets does not bump: {info:?}"
        );
    }
    if let Class::SessionChange(SessionChange::Prepare { inner, .. }) = &info.class {
        check(inner, false);
    }
}

fuzz_target!(|piece: &[u8]| {
    let info = fallback_statement(piece);
    check(&info, true);
});
