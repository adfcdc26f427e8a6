//! Decides who reads one statement: the keyword parser (transaction control, session changes,
//! utility verbs), sqlparser after the token rewrite, or the keyword fallback (too large, not
//! UTF-8, or unparsable). Also keeps sqlparser from taking the process down: a statement with
//! many tokens can nest its AST thousands deep (`1+1+1+...` builds a left-deep tree without
//! recursion in the parser), and dropping such a tree recurses once per level, so parsing,
//! classifying and dropping run on a stack sized to the token count.

use std::panic::AssertUnwindSafe;

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::classify::{Lead, classify};
use super::fallback::fallback;
use super::keywords::{Cur, creates_temp, keyword_statement};
use super::lexer::significant;
use super::pins::{Numbers, row_scope};
use super::rewrite::rewrite;
use super::{MAX_PARSE_BYTES, NotCacheable, StatementInfo};

/// Above this many tokens the AST may be deeper than a task's stack can drop safely.
const DEEP_TOKENS: usize = 2_000;
/// Stack bytes reserved per token for deep statements (measured need in debug builds is about
/// 64 bytes per token for `1+1+...`; the reservation is virtual until touched).
const STACK_PER_TOKEN: usize = 256;
const MIN_DEEP_STACK: usize = 8 << 20;
const MAX_DEEP_STACK: usize = 512 << 20;

/// Analyses one statement (no trailing `;`). Usually one result; more only if sqlparser finds
/// several statements where the splitter found one.
pub(crate) fn analyze_statement(piece: &[u8], depth: usize) -> Vec<StatementInfo> {
    let toks = significant(piece);
    if let Some(info) = keyword_statement(piece, &toks) {
        return vec![info];
    }
    if piece.len() > MAX_PARSE_BYTES {
        return vec![fallback(
            piece,
            &toks,
            NotCacheable::TooLarge,
            depth,
            analyze_statement,
        )];
    }
    let Ok(text) = std::str::from_utf8(piece) else {
        return vec![fallback(
            piece,
            &toks,
            NotCacheable::NotUtf8,
            depth,
            analyze_statement,
        )];
    };
    let first = Cur::new(piece, &toks).peek_lower().unwrap_or_default();
    let lead = Lead {
        first: &first,
        creates_temp: creates_temp(piece, &toks),
    };
    let rewritten = rewrite(text);
    let parse = || -> Option<Vec<StatementInfo>> {
        // sqlparser is third-party code fed hostile input: a panic in it must cost this
        // statement its precise analysis (the fallback decides), not the session.
        std::panic::catch_unwind(AssertUnwindSafe(|| {
            parse_and_classify(piece, &rewritten, &lead, depth)
        }))
        .ok()
        .flatten()
    };
    let parsed = if toks.len() > DEEP_TOKENS {
        let stack = toks
            .len()
            .saturating_mul(STACK_PER_TOKEN)
            .clamp(MIN_DEEP_STACK, MAX_DEEP_STACK);
        stacker::grow(stack, parse)
    } else {
        parse()
    };
    parsed.unwrap_or_else(|| {
        vec![fallback(
            piece,
            &toks,
            NotCacheable::ParseFailed,
            depth,
            analyze_statement,
        )]
    })
}

/// Parses the rewritten text and classifies each statement found (`None` if it does not parse
/// or holds none). A lone top-level statement also gets its row scope, whose numeric ordinals
/// refer to `piece`. The AST is dropped here, on the caller's (possibly grown) stack.
fn parse_and_classify(
    piece: &[u8],
    rewritten: &str,
    lead: &Lead<'_>,
    depth: usize,
) -> Option<Vec<StatementInfo>> {
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, rewritten).ok()?;
    let mut infos: Vec<StatementInfo> = statements
        .iter()
        .map(|s| classify(s, lead, depth))
        .collect();
    // Several statements from one piece means sqlparser split what the splitter did not:
    // their texts are not pieces of their own, so no ordinals are offered.
    if depth == 0
        && let ([stmt], [info]) = (statements.as_slice(), infos.as_mut_slice())
    {
        let numbers = Numbers::new(piece, rewritten);
        info.rows = row_scope(stmt, &info.class, &numbers).map(Box::new);
        info.behind = super::behind::shape(stmt, &numbers).map(Box::new);
    }
    (!infos.is_empty()).then_some(infos)
}
