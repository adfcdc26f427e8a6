//! Statement analysis (`sql::analyze`: the splitter, the keyword parser, sqlparser after the
//! token rewrite, classification and relation extraction, the keyword fallback, hints) on
//! arbitrary bytes, the raw text of a Query or a Parse. Asserts: no panic and no abort
//! (sqlparser's own panics are caught inside); the analysis is a pure function of the text;
//! `class == CacheableRead` exactly when `reason` is `None`, recursively through PREPARE;
//! `cacheable()` and `reason()` agree; every statement piece the splitter finds yields at least
//! one statement; relation and function names are normalised to at most 63 bytes (PostgreSQL's
//! NAMEDATALEN); hints are bounded; the weight used by memo bounds is computed without
//! overflow; the database-freeing scan reads the same text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgmemo::sql::{
    self, Class, MAX_UNKNOWN_HINTS, NotCacheable, SessionChange, StatementInfo,
    databases_needing_free, statement_piece,
};

const MAX_NAME: usize = 63;

fn check(info: &StatementInfo) {
    assert_eq!(
        info.class == Class::CacheableRead,
        info.reason.is_none(),
        "class and reason disagree: {info:?}"
    );
    for r in info.reads.iter().chain(&info.writes) {
        assert!(
            r.name.len() <= MAX_NAME,
            "relation name over 63 bytes: {r:?}"
        );
        assert!(
            r.schema.as_ref().is_none_or(|s| s.len() <= MAX_NAME),
            "{r:?}"
        );
    }
    for f in &info.functions {
        assert!(
            f.name.len() <= MAX_NAME,
            "function name over 63 bytes: {f:?}"
        );
        assert!(
            f.schema.as_ref().is_none_or(|s| s.len() <= MAX_NAME),
            "{f:?}"
        );
    }
    if let Class::SessionChange(SessionChange::Prepare { inner, .. }) = &info.class {
        check(inner);
    }
}

fuzz_target!(|sql: &[u8]| {
    let analysis = sql::analyze(sql);
    assert_eq!(analysis, sql::analyze(sql), "analysis is not deterministic");
    analysis.statements.iter().for_each(check);
    let pieces = (0..)
        .take_while(|&i| statement_piece(sql, i).is_some())
        .count();
    assert!(
        analysis.statements.len() >= pieces,
        "{pieces} pieces gave {} statements",
        analysis.statements.len()
    );
    match analysis.cacheable() {
        Some(only) => {
            assert_eq!(analysis.reason(), None);
            assert!(only.is_cacheable());
            assert!(!analysis.hints.nocache, "a nocache hint was cached");
        }
        None => assert!(analysis.reason().is_some()),
    }
    if pieces == 0 {
        assert_eq!(analysis.reason(), Some(NotCacheable::Empty));
    }
    assert!(analysis.hints.unknown.len() <= MAX_UNKNOWN_HINTS);
    let _ = analysis.weight(sql.len());
    let _ = (
        analysis.epoch_bump(),
        analysis.taints_session(),
        analysis.writes().count(),
    );
    let _ = databases_needing_free(sql);
});
