//! Keyword-level fallback for statements sqlparser cannot parse (or that are too large or not
//! UTF-8). It decides from the first word (after leading parentheses) and never claims more
//! than it knows: reads are never cacheable; anything that could write is a write with
//! `epoch_bump` (targets reported when the shape is obvious, for logs only); unknown
//! statements also taint the session. `reason` is always the fallback's cause, so the session
//! can count epoch bumps caused by parse failures.

use super::classify::{DDL_WORDS, explain};
use super::keywords::{Cur, creates_temp, option_is_off, unknown};
use super::lexer::{Kind, Token};
use super::relations::{push_unique, qualified};
use super::{Class, FuncName, NotCacheable, SessionChange, StatementInfo};

/// Nesting bound for EXPLAIN / PREPARE wrapping another statement.
const MAX_DEPTH: usize = 8;

/// The full analysis of one statement at a nesting depth (the router's), for the statement
/// an EXPLAIN or PREPARE wraps: passed in, so this module does not depend on its caller.
pub(crate) type Analyze = fn(&[u8], usize) -> Vec<StatementInfo>;

pub(crate) fn fallback(
    src: &[u8],
    toks: &[Token],
    reason: NotCacheable,
    depth: usize,
    analyze: Analyze,
) -> StatementInfo {
    let mut c = Cur::new(src, toks);
    while c.punct(b'(') {}
    let Some(first) = c.peek_lower() else {
        return with_reason(unknown(), reason);
    };
    let mut info = match first.as_str() {
        "select" | "values" | "table" => select_like(src, toks),
        "with" if has_dml_word(src, toks) => {
            let mut info = StatementInfo::new(Class::Write, None);
            info.epoch_bump = true;
            info
        }
        "with" => select_like(src, toks),
        "declare" => StatementInfo::new(Class::Read, None),
        "explain" => return explain_fallback(&mut c, reason, depth, analyze),
        "prepare" => prepare_fallback(&mut c, depth, analyze),
        "execute" => {
            c.i += 1;
            match c.ident() {
                Some(name) => StatementInfo::new(Class::Execute { name }, None),
                None => unknown(),
            }
        }
        "insert" | "update" | "delete" | "merge" | "truncate" => dml(&mut c),
        "copy" => copy(&mut c),
        "call" => {
            let mut info = StatementInfo::new(Class::Other, None);
            info.epoch_bump = true;
            info.taints_session = true;
            info
        }
        word if DDL_WORDS.contains(&word) => {
            let mut info = StatementInfo::new(Class::Ddl, None);
            info.epoch_bump = true;
            // `CREATE TABLE ... AS EXECUTE p` runs a prepared statement, whose settings
            // changes pgmemo cannot see.
            info.taints_session =
                creates_temp(src, toks) || toks.iter().any(|t| t.is_word(src, "execute"));
            info
        }
        _ => unknown(),
    };
    for f in function_candidates(src, toks) {
        push_unique(&mut info.functions, f);
    }
    with_reason(info, reason)
}

fn with_reason(mut info: StatementInfo, reason: NotCacheable) -> StatementInfo {
    info.reason = Some(reason);
    info
}

/// SELECT/VALUES/TABLE/WITH without DML: a read, unless a top-level INTO makes it
/// `SELECT ... INTO` (a new table: DDL).
fn select_like(src: &[u8], toks: &[Token]) -> StatementInfo {
    let into = toks.iter().position(|t| t.is_word(src, "into"));
    match into {
        Some(at) => {
            let mut info = StatementInfo::new(Class::Ddl, None);
            let after = toks.get(at + 1..).unwrap_or_default();
            info.taints_session = after
                .iter()
                .take(2)
                .any(|t| t.is_word(src, "temp") || t.is_word(src, "temporary"));
            info
        }
        None => StatementInfo::new(Class::Read, None),
    }
}

/// Whether a WITH statement may hold INSERT/UPDATE/DELETE/MERGE (not `FOR [NO KEY] UPDATE`).
fn has_dml_word(src: &[u8], toks: &[Token]) -> bool {
    toks.iter().enumerate().any(|(i, t)| {
        let prev = i.checked_sub(1).and_then(|p| toks.get(p));
        t.is_word(src, "insert")
            || t.is_word(src, "delete")
            || t.is_word(src, "merge")
            || (t.is_word(src, "update")
                && !prev.is_some_and(|p| p.is_word(src, "for") || p.is_word(src, "key")))
    })
}

fn single(mut infos: Vec<StatementInfo>) -> StatementInfo {
    match infos.len() {
        1 => infos.pop().unwrap_or_else(unknown),
        _ => unknown(),
    }
}

/// The analysis of the statement that starts at the cursor (EXPLAIN's or PREPARE's inner).
fn inner_statement(c: &Cur<'_>, depth: usize, analyze: Analyze) -> Option<StatementInfo> {
    let start = c.peek()?.start;
    if depth >= MAX_DEPTH {
        return Some(unknown());
    }
    Some(single(analyze(c.src.get(start..)?, depth + 1)))
}

fn explain_fallback(
    c: &mut Cur<'_>,
    reason: NotCacheable,
    depth: usize,
    analyze_inner: Analyze,
) -> StatementInfo {
    c.i += 1;
    let mut analyze = false;
    if c.punct(b'(') {
        // `( name [value] [, ...] )`
        let mut depth_in = 1usize;
        let mut at_name = true;
        while let Some(t) = c.bump() {
            if t.is_punct(c.src, b'(') {
                depth_in += 1;
            } else if t.is_punct(c.src, b')') {
                depth_in -= 1;
                if depth_in == 0 {
                    break;
                }
            } else if t.is_punct(c.src, b',') && depth_in == 1 {
                at_name = true;
                continue;
            } else if at_name && (t.is_word(c.src, "analyze") || t.is_word(c.src, "analyse")) {
                let value = c
                    .peek()
                    .filter(|v| !v.is_punct(c.src, b',') && !v.is_punct(c.src, b')'));
                analyze = !option_is_off(c.src, value);
            }
            at_name = false;
        }
    } else {
        loop {
            if c.word("analyze") || c.word("analyse") {
                analyze = true;
            } else if !c.word("verbose") {
                break;
            }
        }
    }
    let inner = inner_statement(c, depth, analyze_inner)
        .unwrap_or_else(|| StatementInfo::new(Class::Read, None));
    with_reason(explain(inner, analyze), reason)
}

fn prepare_fallback(c: &mut Cur<'_>, depth: usize, analyze: Analyze) -> StatementInfo {
    c.i += 1;
    let Some(name) = c.ident() else {
        return unknown();
    };
    c.skip_parens();
    if !c.word("as") {
        return unknown();
    }
    let Some(inner) = inner_statement(c, depth, analyze) else {
        return unknown();
    };
    StatementInfo::new(
        Class::SessionChange(SessionChange::Prepare {
            name,
            inner: Box::new(inner),
        }),
        None,
    )
}

/// INSERT/UPDATE/DELETE/MERGE/TRUNCATE that did not parse: epoch bump, obvious targets listed.
fn dml(c: &mut Cur<'_>) -> StatementInfo {
    let mut info = StatementInfo::new(Class::Write, None);
    info.epoch_bump = true;
    let verb = c.peek_lower().unwrap_or_default();
    c.i += 1;
    let mut targets = Vec::new();
    match verb.as_str() {
        "insert" | "merge" if c.word("into") => {
            c.word("only");
            targets.extend(c.rel_name());
        }
        "update" => {
            c.word("only");
            targets.extend(c.rel_name());
        }
        "delete" if c.word("from") => {
            c.word("only");
            targets.extend(c.rel_name());
        }
        "truncate" => {
            c.word("table");
            loop {
                c.word("only");
                match c.rel_name() {
                    Some(rel) => targets.push(rel),
                    None => break,
                }
                c.punct(b'*');
                if !c.punct(b',') {
                    break;
                }
            }
        }
        _ => {}
    }
    for t in targets {
        push_unique(&mut info.writes, t);
    }
    info
}

/// `COPY name [(cols)] FROM|TO ...` or `COPY (query) TO ...`.
fn copy(c: &mut Cur<'_>) -> StatementInfo {
    c.i += 1;
    if c.peek().is_some_and(|t| t.is_punct(c.src, b'(')) {
        let body = c.toks.get(c.i..).unwrap_or_default();
        c.skip_parens();
        if !c.word("to") {
            return unknown();
        }
        if has_dml_word(c.src, body) {
            let mut info = StatementInfo::new(Class::Write, None);
            info.epoch_bump = true;
            return info;
        }
        return StatementInfo::new(Class::Read, None);
    }
    let Some(name) = c.rel_name() else {
        return unknown();
    };
    c.skip_parens();
    if c.word("from") {
        let mut info = StatementInfo::new(Class::Write, None);
        info.writes.push(name);
        info.epoch_bump = true;
        info.copies_in = true;
        info
    } else if c.word("to") {
        let mut info = StatementInfo::new(Class::Read, None);
        info.reads.push(name);
        info
    } else {
        unknown()
    }
}

/// Words that come before `(` without being a function call.
const NOT_FUNCTIONS: &[&str] = &[
    "all",
    "and",
    "any",
    "array",
    "as",
    "between",
    "bigint",
    "bit",
    "by",
    "case",
    "cast",
    "char",
    "character",
    "check",
    "coalesce",
    "constraint",
    "cube",
    "decimal",
    "default",
    "delete",
    "distinct",
    "double",
    "else",
    "except",
    "exists",
    "extract",
    "fetch",
    "filter",
    "float",
    "for",
    "from",
    "greatest",
    "group",
    "grouping",
    "groups",
    "having",
    "ilike",
    "in",
    "insert",
    "int",
    "integer",
    "intersect",
    "interval",
    "into",
    "is",
    "join",
    "key",
    "lateral",
    "least",
    "like",
    "limit",
    "not",
    "nullif",
    "numeric",
    "offset",
    "on",
    "or",
    "order",
    "ordinality",
    "over",
    "overlay",
    "partition",
    "position",
    "precision",
    "primary",
    "range",
    "references",
    "repeatable",
    "returning",
    "rollup",
    "row",
    "rows",
    "select",
    "set",
    "sets",
    "similar",
    "smallint",
    "some",
    "substring",
    "table",
    "tablesample",
    "then",
    "time",
    "timestamp",
    "treat",
    "trim",
    "union",
    "unique",
    "update",
    "using",
    "values",
    "varchar",
    "varying",
    "when",
    "where",
    "window",
    "with",
    "within",
];

/// Names directly followed by `(`: possible function calls, over-reported on purpose (the
/// catalog treats unknown names as volatile).
pub(crate) fn function_candidates(src: &[u8], toks: &[Token]) -> Vec<FuncName> {
    let mut out = Vec::new();
    for (i, t) in toks.iter().enumerate() {
        if !t.is_punct(src, b'(') || i == 0 {
            continue;
        }
        // Walk back over `name [. name ...]`.
        let mut parts = Vec::new();
        let mut j = i;
        while let Some(prev) = j.checked_sub(1).and_then(|p| toks.get(p)) {
            if !matches!(prev.kind, Kind::Word | Kind::QuotedIdent) {
                break;
            }
            match super::keywords::ident_token(src, prev) {
                Some(name) => parts.push(name),
                None => break,
            }
            j -= 1;
            let dot = j.checked_sub(1).and_then(|p| toks.get(p));
            if dot.is_some_and(|d| d.is_punct(src, b'.')) {
                j -= 1;
            } else {
                break;
            }
        }
        parts.reverse();
        let keyword = parts.len() == 1
            && toks.get(i - 1).is_some_and(|p| p.kind == Kind::Word)
            && parts
                .first()
                .is_some_and(|p| NOT_FUNCTIONS.contains(&p.as_str()));
        if keyword || parts.is_empty() {
            continue;
        }
        if let Some((schema, name)) = qualified(parts) {
            push_unique(&mut out, FuncName { schema, name });
        }
    }
    out
}
