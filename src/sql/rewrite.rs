//! Token-level rewrite of one statement before sqlparser sees it, for PostgreSQL syntax that
//! sqlparser 0.63 misparses or rejects. Each rewrite keeps the statement's meaning for analysis
//! purposes (which relations are read or written); the original bytes stay the cache key.
//!
//! - `ONLY name` / `ONLY (name)` (inheritance): sqlparser reads `FROM ONLY t` as a table named
//!   `only` aliased `t` and `FROM ONLY (t)` as a function call. `ONLY` is a reserved word, so an
//!   unquoted `ONLY` outside `FETCH ... ROW[S] ONLY` and `READ ONLY` is always the inheritance
//!   marker; it is blanked. Reporting `t` instead of "t without descendants" only widens what a
//!   write bumps and what a read depends on, which is the safe direction.
//! - `TABLE name` at the start of a select clause is exactly `SELECT * FROM name`; sqlparser
//!   rejects it as a statement and keeps it as a bare string inside set operations (where the
//!   relation hooks never see it; `relations` flags any that remain, e.g. after `WITH ...)`).
//! - `FOR NO KEY UPDATE` / `FOR KEY SHARE`: sqlparser knows only `FOR UPDATE` / `FOR SHARE`;
//!   both stay locking clauses after blanking `NO KEY` / `KEY`.

use super::lexer::{Kind, Token, tokens};

/// The rewritten text of `stmt`. Only whole ASCII tokens are replaced, so the result is valid
/// UTF-8 whenever `stmt` is.
pub(crate) fn rewrite(stmt: &str) -> String {
    let src = stmt.as_bytes();
    let toks: Vec<Token> = tokens(src).into_iter().filter(|t| !t.is_trivia()).collect();
    // Replacements as (token index, replacement); applied in order below.
    let mut edits: Vec<(usize, &'static str)> = Vec::new();
    for (i, tok) in toks.iter().enumerate() {
        let prev = i.checked_sub(1).and_then(|p| toks.get(p));
        if tok.is_word(src, "only") {
            let keeps = prev.is_some_and(|p| {
                p.is_word(src, "row") || p.is_word(src, "rows") || p.is_word(src, "read")
            });
            if !keeps {
                edits.push((i, ""));
                if let Some(close) = parenthesised_name(src, &toks, i + 1) {
                    edits.push((i + 1, ""));
                    edits.push((close, ""));
                }
            }
        } else if tok.is_word(src, "table") {
            // After EXPLAIN [ANALYZE] [VERBOSE] too: sqlparser would take `EXPLAIN TABLE t`
            // for MySQL's `DESCRIBE`.
            let starts_select = prev.is_none_or(|p| {
                p.is_punct(src, b'(')
                    || [
                        "union",
                        "intersect",
                        "except",
                        "all",
                        "distinct",
                        "explain",
                        "analyze",
                        "analyse",
                        "verbose",
                    ]
                    .iter()
                    .any(|w| p.is_word(src, w))
            });
            if starts_select {
                edits.push((i, "SELECT * FROM"));
            }
        } else if tok.is_word(src, "for") {
            let next = |k: usize| toks.get(i + k);
            let is = |k: usize, w: &str| next(k).is_some_and(|t| t.is_word(src, w));
            if is(1, "no") && is(2, "key") && is(3, "update") {
                edits.push((i + 1, ""));
                edits.push((i + 2, ""));
            } else if is(1, "key") && is(2, "share") {
                edits.push((i + 1, ""));
            }
        }
    }
    if edits.is_empty() {
        return stmt.to_owned();
    }
    edits.sort_by_key(|e| e.0);
    // Token boundaries are ASCII bytes, hence char boundaries; if that ever failed, analysing
    // the statement as written is the safe answer, never a silently shortened text.
    apply(stmt, &toks, &edits).unwrap_or_else(|| stmt.to_owned())
}

fn apply(stmt: &str, toks: &[Token], edits: &[(usize, &'static str)]) -> Option<String> {
    let mut out = String::with_capacity(stmt.len() + 16 * edits.len());
    let mut copied = 0usize;
    for &(idx, replacement) in edits {
        let tok = toks.get(idx)?;
        if tok.start < copied {
            continue;
        }
        out.push_str(stmt.get(copied..tok.start)?);
        out.push(' ');
        out.push_str(replacement);
        out.push(' ');
        copied = tok.end;
    }
    out.push_str(stmt.get(copied..)?);
    Some(out)
}

/// If the tokens from `open` are `( name [. name ...] )`, the index of the closing parenthesis.
fn parenthesised_name(src: &[u8], toks: &[Token], open: usize) -> Option<usize> {
    if !toks.get(open)?.is_punct(src, b'(') {
        return None;
    }
    let mut i = open + 1;
    let mut expect_name = true;
    loop {
        let tok = toks.get(i)?;
        if expect_name {
            if !matches!(tok.kind, Kind::Word | Kind::QuotedIdent) {
                return None;
            }
        } else if tok.is_punct(src, b')') {
            return Some(i);
        } else if !tok.is_punct(src, b'.') {
            return None;
        }
        expect_name = !expect_name;
        i += 1;
    }
}
