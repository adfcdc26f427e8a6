//! Token-level text jobs on raw SQL bytes: the cache-key normal form (comments and whitespace
//! collapsed outside literals, `pgmemo:` hints kept), hint extraction, and splitting a Query
//! into statements the way psql and the server do.

use std::ops::Range;
use std::time::Duration;

use super::lexer::{Kind, Lexer, Token};

/// Hints a client can put in a SQL comment, e.g. `/* pgmemo:nocache */` or `-- pgmemo:ttl=30s`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hints {
    /// `pgmemo:nocache`: never serve or store this statement from the cache.
    pub nocache: bool,
    /// `pgmemo:ttl=<duration>` (humantime syntax, or plain seconds): a per-statement TTL.
    pub ttl: Option<Duration>,
    /// `pgmemo:` directives that were not understood (at most [`MAX_UNKNOWN_HINTS`]), for a log.
    pub unknown: Vec<String>,
}

/// Bound on [`Hints::unknown`], so a hostile comment cannot grow it without limit.
pub const MAX_UNKNOWN_HINTS: usize = 8;

const HINT_PREFIX: &[u8] = b"pgmemo:";

fn find_ci(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
}

fn is_hint_comment(tok: &Token, src: &[u8]) -> bool {
    tok.is_comment() && find_ci(tok.bytes(src), HINT_PREFIX).is_some()
}

/// The cache-key form of `sql`: every run of whitespace and comments becomes one space (or
/// nothing at either end), outside string literals, quoted identifiers, dollar-quoted strings
/// and `E''` escapes. Never lossy where it matters: a run is never removed between two tokens
/// (so tokens cannot merge), a run holding a `pgmemo:` comment is kept verbatim (hints change
/// caching), and a run between two string literals is kept verbatim (PostgreSQL concatenates
/// `'a'<newline>'b'` but rejects `'a' 'b'`, so that run's exact shape is meaningful).
pub fn normalize_for_key(sql: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(sql.len());
    let mut run: Option<Range<usize>> = None;
    let mut run_has_hint = false;
    let mut prev: Option<Token> = None;
    for tok in Lexer::new(sql) {
        if tok.is_trivia() {
            run = Some(run.map_or(tok.start..tok.end, |r| r.start..tok.end));
            run_has_hint |= is_hint_comment(&tok, sql);
            continue;
        }
        if let Some(r) = run.take() {
            let between_strings =
                prev.is_some_and(|p| p.kind == Kind::String) && tok.kind == Kind::String;
            if run_has_hint || between_strings {
                out.extend_from_slice(sql.get(r).unwrap_or_default());
            } else if prev.is_some() {
                out.push(b' ');
            }
        }
        run_has_hint = false;
        out.extend_from_slice(tok.bytes(sql));
        prev = Some(tok);
    }
    if let Some(r) = run
        && run_has_hint
    {
        out.extend_from_slice(sql.get(r).unwrap_or_default());
    }
    out
}

/// The text of `sql` with every numeric literal replaced by `?` (everything else, comments
/// included, kept byte for byte), or `None` when it has no numeric literal. Numbers never
/// change what a statement is, reads, writes or calls, so texts with the same shape share one
/// analysis (the cache key still uses the full text).
pub fn shape_key(sql: &[u8]) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    for tok in Lexer::new(sql) {
        if is_plain_number(&tok, sql) {
            let o = out.get_or_insert_with(|| Vec::with_capacity(sql.len()));
            o.extend_from_slice(sql.get(copied..tok.start).unwrap_or_default());
            o.push(b'?');
            copied = tok.end;
        }
    }
    let mut o = out?;
    o.extend_from_slice(sql.get(copied..).unwrap_or_default());
    Some(o)
}

/// The shape of `sql` as logs may show it: every literal (quoted, dollar-quoted, numeric,
/// and an unterminated comment, which may hold anything) replaced by `?`, comments dropped,
/// each run of whitespace one space, cut to at most `max` bytes (on a character boundary,
/// ending in `…`). A logged shape never carries a value a client sent (a simple Query's
/// literals are its parameters; an extended one's are in its Bind, never here).
pub fn log_shape(sql: &[u8], max: usize) -> String {
    let mut out: Vec<u8> = Vec::with_capacity(sql.len().min(max));
    let mut gap = false;
    for tok in Lexer::new(sql) {
        if out.len() > max {
            break;
        }
        if tok.is_trivia() {
            gap = !out.is_empty();
            continue;
        }
        if std::mem::take(&mut gap) {
            out.push(b' ');
        }
        match tok.kind {
            Kind::String | Kind::DollarString | Kind::Number | Kind::Unterminated => out.push(b'?'),
            _ => out.extend_from_slice(tok.bytes(sql)),
        }
    }
    let mut text = String::from_utf8_lossy(&out).into_owned();
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// Whether `tok` is a plain decimal literal, the kind [`shape_key`] replaces (the lexer's loose
/// number token may run into letters: `1e5`, `0x1F`, `1_000` are not plain). `pins` numbers
/// these tokens, so both must use this one test.
pub(crate) fn is_plain_number(tok: &Token, sql: &[u8]) -> bool {
    tok.kind == Kind::Number
        && tok
            .bytes(sql)
            .iter()
            .all(|b| b.is_ascii_digit() || *b == b'.')
}

/// The `pgmemo:` hints in the comments of `sql` (string literals are data, never hints).
pub fn hints(sql: &[u8]) -> Hints {
    let mut hints = Hints::default();
    for tok in Lexer::new(sql) {
        if !tok.is_comment() {
            continue;
        }
        let mut text = tok.bytes(sql);
        while let Some(at) = find_ci(text, HINT_PREFIX) {
            let rest = text.get(at + HINT_PREFIX.len()..).unwrap_or_default();
            let len = rest
                .iter()
                .position(|&b| b.is_ascii_whitespace() || b == b',' || b == b'*')
                .unwrap_or(rest.len());
            apply_directive(&mut hints, rest.get(..len).unwrap_or_default());
            text = rest.get(len..).unwrap_or_default();
        }
    }
    hints
}

fn apply_directive(hints: &mut Hints, directive: &[u8]) {
    let text = String::from_utf8_lossy(directive);
    let (name, value) = match text.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (text.as_ref(), None),
    };
    let parsed = match (name.to_ascii_lowercase().as_str(), value) {
        ("nocache", None) => {
            hints.nocache = true;
            true
        }
        ("ttl", Some(v)) => match parse_ttl(v) {
            Some(ttl) => {
                hints.ttl = Some(ttl);
                true
            }
            None => false,
        },
        _ => false,
    };
    if !parsed && hints.unknown.len() < MAX_UNKNOWN_HINTS {
        // Bounded copy: a directive is logged, never trusted.
        hints.unknown.push(text.chars().take(64).collect());
    }
}

fn parse_ttl(v: &str) -> Option<Duration> {
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    humantime::parse_duration(v).ok()
}

/// Splits a Query's bytes into statements at top-level `;`, the way psql does: not inside
/// parentheses, literals or comments, and not inside the `BEGIN ... END` body of
/// `CREATE [OR REPLACE] FUNCTION|PROCEDURE ... BEGIN ATOMIC`. Returns the byte range of each
/// statement (without its `;`) that holds at least one token that is not whitespace or a
/// comment; empty statements (`;;`) are dropped as the server drops them.
pub(crate) fn split_statements(sql: &[u8]) -> Vec<Range<usize>> {
    let mut pieces = Vec::new();
    let mut start = 0usize;
    let mut has_token = false;
    let mut paren_depth = 0usize;
    let mut begin_depth = 0usize;
    // First letters of the leading words, as psql records them to spot CREATE FUNCTION.
    let mut leading = [0u8; 4];
    let mut word_count = 0usize;
    for tok in Lexer::new(sql) {
        if tok.is_trivia() {
            continue;
        }
        if tok.is_punct(sql, b';') && paren_depth == 0 && begin_depth == 0 {
            if has_token {
                pieces.push(start..tok.start);
            }
            start = tok.end;
            has_token = false;
            word_count = 0;
            leading = [0; 4];
            continue;
        }
        has_token = true;
        if tok.is_punct(sql, b'(') {
            paren_depth += 1;
        } else if tok.is_punct(sql, b')') {
            paren_depth = paren_depth.saturating_sub(1);
        } else if tok.kind == Kind::Word {
            let word = tok.bytes(sql);
            let tracked = ["create", "function", "procedure", "or", "replace"]
                .iter()
                .any(|w| word.eq_ignore_ascii_case(w.as_bytes()));
            if tracked
                && let Some(slot) = leading.get_mut(word_count)
                && let Some(&first) = word.first()
            {
                *slot = first.to_ascii_lowercase();
            }
            word_count += 1;
            let in_function_definition = leading[0] == b'c'
                && (leading[1] == b'f'
                    || leading[1] == b'p'
                    || (leading[1] == b'o'
                        && leading[2] == b'r'
                        && (leading[3] == b'f' || leading[3] == b'p')));
            if in_function_definition && paren_depth == 0 {
                // CASE also ends with END; it matters only inside a BEGIN.
                let opens =
                    tok.is_word(sql, "begin") || (tok.is_word(sql, "case") && begin_depth >= 1);
                if opens {
                    begin_depth += 1;
                } else if tok.is_word(sql, "end") {
                    begin_depth = begin_depth.saturating_sub(1);
                }
            }
        }
    }
    if has_token {
        pieces.push(start..sql.len());
    }
    pieces
}

/// The text of statement `index` of `sql` as [`crate::sql::analyze`] splits it.
pub fn statement_piece(sql: &[u8], index: usize) -> Option<&[u8]> {
    split_statements(sql)
        .into_iter()
        .nth(index)
        .and_then(|r| sql.get(r))
}

/// How many times the parameter `$n` is referenced in `sql` (outside literals and comments).
pub fn param_references(sql: &[u8], n: u16) -> usize {
    Lexer::new(sql)
        .filter(|t| t.kind == Kind::Param)
        .filter(|t| {
            let digits = t.bytes(sql).get(1..).unwrap_or_default();
            std::str::from_utf8(digits)
                .ok()
                .and_then(|d| d.parse::<u32>().ok())
                == Some(u32::from(n))
        })
        .count()
}
