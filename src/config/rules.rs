//! The compiled `[[rules]]` matcher: given one cacheable read (database, current role,
//! normalised statement text, relations read), which caching policy applies. Pure and
//! allocation-free per call; everything that can be prepared is prepared in [`Rules::new`].
//!
//! Semantics (the README's "Rules" section says the same for users):
//! - A rule **matches** a read when every match field it has matches; absent fields match
//!   anything:
//!   - `database`, `role`: equal, byte for byte, to the session's database / current role.
//!   - `table`: `schema.name` matches that relation, a bare `name` matches that name in any
//!     schema; identifiers are compared as PostgreSQL normalises them (unquoted parts are
//!     lower-cased, `"Quoted"` parts kept exactly). The field matches when ANY relation the read
//!     touches matches (after name resolution, including what views read).
//!   - `query`: a LIKE-style pattern over the normalised statement text (see
//!     [`crate::sql::normalize_for_key`]; the pattern is normalised the same way): `%` matches
//!     any run of bytes, `\%` a literal `%`, `\\` a literal `\`; anything else matches itself.
//!     A trailing `;` is ignored on both sides.
//! - **Every** matching rule applies:
//!   - `cache = false` from any matching rule wins: the read is neither served nor stored.
//!   - `ttl`: the shortest TTL set by a matching rule, where `0s` ("until invalidated") counts as
//!     the longest, so a broad `0s` rule never lengthens a narrower finite one; no matching rule
//!     sets one → `cache.ttl`.
//!   - `allow_stable_functions`, `allow_rls`: true iff some matching rule sets `true` and no
//!     matching rule sets `false`.
//!   - An RLS opt-in is never unbounded: if `allow_rls` holds and the TTL came out 0 (another
//!     rule said `0s`), the TTL is `cache.ttl` instead, or, if that is 0 too, `allow_rls` is
//!     dropped. (Validation already refuses an `allow_rls` rule whose own TTL is 0.)
//!   - `refresh_ahead`: `0` from any matching rule wins (a narrower rule can turn off a broad
//!     one's); otherwise the smallest fraction set by a matching rule (the earliest refresh,
//!     as the shortest TTL wins), or 0 when none sets one. It is 0 whenever the TTL came out
//!     0: an entry kept until invalidated never nears its end.
//!   - `refresh_adaptive`: like `allow_*`, and only where `refresh_ahead` came out above 0.
//! - No rules at all: cached, with `cache.ttl`, no refresh-ahead.
//! - `write` is not part of the verdict: [`Rules::write_through`] asks it per written (or
//!   read) table, matching `database`, `role` and `table` as above; `"through"` holds when
//!   some matching rule sets it and none sets `"invalidate"` (validation refuses `write`
//!   beside `query`, and such a rule never matches here).

use std::time::Duration;

use memchr::memmem::Finder;

use super::{Rule, WritePolicy};

/// PostgreSQL's NAMEDATALEN - 1: longer identifiers are truncated by the server, so a rule
/// naming one could never match a catalog name.
pub const MAX_IDENTIFIER_BYTES: usize = 63;

/// The policy for one cacheable read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// Serve from and store into the cache.
    pub cache: bool,
    /// Lifetime of a stored entry; [`Duration::ZERO`] = until invalidated.
    pub ttl: Duration,
    /// STABLE functions do not make the read uncacheable.
    pub allow_stable_functions: bool,
    /// Tables with row-level security do not make the read uncacheable.
    pub allow_rls: bool,
    /// Fraction of `ttl` after which a hit also starts one background refresh of the entry,
    /// in [0, 1); 0 = never.
    pub refresh_ahead: f32,
    /// Those refreshes are limited to `refresh.max_share` of the queries sent upstream
    /// (only ever true with `refresh_ahead` above 0).
    pub refresh_adaptive: bool,
}

/// The configured rules, compiled once per configuration (rebuilt on reload).
#[derive(Debug, Clone)]
pub struct Rules {
    rules: Vec<Compiled>,
    default_ttl: Duration,
}

#[derive(Debug, Clone)]
struct Compiled {
    database: Option<String>,
    role: Option<String>,
    table: Option<QualifiedName>,
    query: Option<Pattern>,
    cache: Option<bool>,
    ttl: Option<Duration>,
    allow_stable_functions: Option<bool>,
    allow_rls: Option<bool>,
    write: Option<WritePolicy>,
    refresh_ahead: Option<f32>,
    refresh_adaptive: Option<bool>,
    /// Set exactly when `write = "behind"`.
    behind: Option<super::BehindRule>,
    /// That rule's `behind_increments` and `behind_coalesce` as written (absent = no say).
    behind_flags: [Option<bool>; 2],
}

impl Rules {
    /// Compiles `rules` (a validated configuration's; an unparsable `table` is matched as the
    /// literal name rather than dropped, so a `cache = false` rule never silently vanishes).
    pub fn new(rules: &[Rule], default_ttl: Duration) -> Rules {
        let rules = rules
            .iter()
            .map(|r| Compiled {
                database: r.database.clone(),
                role: r.role.clone(),
                table: r.table.as_deref().map(|t| {
                    parse_qualified_name(t, Case::Fold).unwrap_or_else(|_| QualifiedName {
                        schema: None,
                        name: t.to_owned(),
                    })
                }),
                query: r.query.as_deref().map(Pattern::compile),
                cache: r.cache,
                ttl: r.ttl,
                allow_stable_functions: r.allow_stable_functions,
                allow_rls: r.allow_rls,
                write: r.write,
                // Validated into [0, 1); a fraction just below 1 would round up to 1 as f32.
                refresh_ahead: r
                    .refresh_ahead
                    .map(|f| (f as f32).min(1.0 - f32::EPSILON / 2.0)),
                refresh_adaptive: r.refresh_adaptive,
                behind: (r.write == Some(WritePolicy::Behind)).then(|| super::BehindRule::of(r)),
                behind_flags: [r.behind_increments, r.behind_coalesce],
            })
            .collect();
        Rules { rules, default_ttl }
    }

    /// True when no rule is configured (every read gets the default verdict).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Verdict for one cacheable read. `db` = session database, `role` = current role,
    /// `normalized_sql` = [`crate::sql::normalize_for_key`] of the statement bytes, `tables` =
    /// relations read as (schema, name) after name resolution (views and what they read).
    pub fn verdict(
        &self,
        db: &str,
        role: &str,
        normalized_sql: &[u8],
        tables: &[(&str, &str)],
    ) -> Verdict {
        if self.rules.is_empty() {
            return Verdict {
                cache: true,
                ttl: self.default_ttl,
                allow_stable_functions: false,
                allow_rls: false,
                refresh_ahead: 0.0,
                refresh_adaptive: false,
            };
        }
        let normalized_sql = trim_terminator(normalized_sql);
        let mut cache = true;
        let mut ttl: Option<Duration> = None;
        let mut stable = Flag::default();
        let mut rls = Flag::default();
        let mut ahead = Ahead::default();
        let mut adaptive = Flag::default();
        for rule in self
            .rules
            .iter()
            .filter(|r| r.matches(db, role, normalized_sql, tables))
        {
            if rule.cache == Some(false) {
                cache = false;
            }
            if let Some(t) = rule.ttl {
                ttl = Some(ttl.map_or(t, |cur| shorter(cur, t)));
            }
            stable.apply(rule.allow_stable_functions);
            rls.apply(rule.allow_rls);
            ahead.apply(rule.refresh_ahead);
            adaptive.apply(rule.refresh_adaptive);
        }
        let mut ttl = ttl.unwrap_or(self.default_ttl);
        let mut allow_rls = rls.get();
        // RLS policies may read tables whose writes invalidate nothing here: the TTL is the
        // only bound, so an opted-in read never gets "until invalidated".
        if allow_rls && ttl.is_zero() {
            if self.default_ttl.is_zero() {
                allow_rls = false;
            } else {
                ttl = self.default_ttl;
            }
        }
        // An entry kept until invalidated never nears the end of its TTL.
        let refresh_ahead = if ttl.is_zero() { 0.0 } else { ahead.get() };
        Verdict {
            cache,
            ttl,
            allow_stable_functions: stable.get(),
            allow_rls,
            refresh_ahead,
            refresh_adaptive: refresh_ahead > 0.0 && adaptive.get(),
        }
    }

    /// Whether a committed write to `schema.name` refreshes the results that depend on it
    /// (`write = "through"`) for a session of `db` as `role`. An opt-in like `allow_*`: some
    /// matching rule sets it and none sets `"invalidate"`, so a narrower rule can exempt a
    /// table from a broad one. Rules with a `query` never match: a write to a table has no
    /// statement text to select on here (validation refuses them anyway).
    pub fn write_through(&self, db: &str, role: &str, schema: &str, name: &str) -> bool {
        let mut through = Flag::default();
        for rule in self.rules.iter().filter(|r| r.query.is_none()) {
            if rule.matches(db, role, b"", &[(schema, name)]) {
                through.apply(rule.write.map(|w| w == WritePolicy::Through));
            }
        }
        through.get()
    }

    /// How a write to `schema.name` by a session of `db` as `role` may be queued
    /// (`write = "behind"`), or `None`. Some matching rule sets `"behind"` and none sets
    /// another policy (a narrower rule can exempt a table from a broad one). Of several
    /// matching behind rules, the shortest flush interval and smallest batch win, and
    /// `behind_increments`/`behind_coalesce` hold when some rule sets them and none clears
    /// them.
    pub fn behind(
        &self,
        db: &str,
        role: &str,
        schema: &str,
        name: &str,
    ) -> Option<super::BehindRule> {
        let mut out: Option<super::BehindRule> = None;
        let mut increments = Flag::default();
        let mut coalesce = Flag::default();
        for rule in self.rules.iter().filter(|r| r.query.is_none()) {
            if !rule.matches(db, role, b"", &[(schema, name)]) {
                continue;
            }
            match (rule.write, rule.behind) {
                (Some(WritePolicy::Behind), Some(b)) => {
                    let [i, c] = rule.behind_flags;
                    increments.apply(i);
                    coalesce.apply(c);
                    out = Some(match out {
                        None => b,
                        Some(o) => super::BehindRule {
                            flush_interval: o.flush_interval.min(b.flush_interval),
                            max_batch: o.max_batch.min(b.max_batch),
                            ..o
                        },
                    });
                }
                (Some(_), _) => return None,
                (None, _) => {}
            }
        }
        out.map(|b| super::BehindRule {
            increments: increments.get(),
            coalesce: coalesce.get() && increments.get(),
            ..b
        })
    }
}

/// `text` without trailing `;` and spaces: `SELECT 1;` and `SELECT 1` are one statement,
/// whether or not the caller's bytes kept the terminator.
fn trim_terminator(mut text: &[u8]) -> &[u8] {
    while let [rest @ .., b';' | b' '] = text {
        text = rest;
    }
    text
}

/// The shorter of two TTLs, where zero ("until invalidated") is the longest.
fn shorter(a: Duration, b: Duration) -> Duration {
    match (a.is_zero(), b.is_zero()) {
        (true, _) => b,
        (_, true) => a,
        _ => a.min(b),
    }
}

/// An opt-in: set by some matching rule, vetoed by any.
#[derive(Default)]
struct Flag {
    set: bool,
    vetoed: bool,
}

impl Flag {
    fn apply(&mut self, value: Option<bool>) {
        match value {
            Some(true) => self.set = true,
            Some(false) => self.vetoed = true,
            None => {}
        }
    }

    fn get(&self) -> bool {
        self.set && !self.vetoed
    }
}

/// `refresh_ahead` over the matching rules: an explicit 0 turns it off, otherwise the
/// smallest fraction set.
#[derive(Default)]
struct Ahead {
    smallest: Option<f32>,
    off: bool,
}

impl Ahead {
    fn apply(&mut self, value: Option<f32>) {
        match value {
            Some(f) if f > 0.0 => self.smallest = Some(self.smallest.map_or(f, |s| s.min(f))),
            Some(_) => self.off = true,
            None => {}
        }
    }

    fn get(&self) -> f32 {
        match self.smallest {
            Some(f) if !self.off => f,
            _ => 0.0,
        }
    }
}

impl Compiled {
    fn matches(&self, db: &str, role: &str, sql: &[u8], tables: &[(&str, &str)]) -> bool {
        self.database.as_deref().is_none_or(|d| d == db)
            && self.role.as_deref().is_none_or(|r| r == role)
            && self.table.as_ref().is_none_or(|t| {
                tables.iter().any(|&(schema, name)| {
                    t.name == name && t.schema.as_deref().is_none_or(|s| s == schema)
                })
            })
            && self.query.as_ref().is_none_or(|q| q.matches(sql))
    }
}

/// A `%` pattern split into its literal pieces: `first%mid%...%last`. Without any `%`, only
/// `first` is set and the text must equal it.
#[derive(Debug, Clone)]
struct Pattern {
    first: Vec<u8>,
    middle: Vec<Finder<'static>>,
    last: Option<Vec<u8>>,
}

impl Pattern {
    fn compile(text: &str) -> Pattern {
        let normalized = crate::sql::normalize_for_key(text.as_bytes());
        let normalized = trim_terminator(&normalized);
        let mut pieces = vec![Vec::new()];
        let mut bytes = normalized.iter().copied().peekable();
        while let Some(b) = bytes.next() {
            let escaped = b == b'\\' && matches!(bytes.peek(), Some(b'%' | b'\\'));
            if escaped {
                if let (Some(next), Some(piece)) = (bytes.next(), pieces.last_mut()) {
                    piece.push(next);
                }
            } else if b == b'%' {
                pieces.push(Vec::new());
            } else if let Some(piece) = pieces.last_mut() {
                piece.push(b);
            }
        }
        let mut pieces = pieces.into_iter();
        let first = pieces.next().unwrap_or_default();
        let mut rest: Vec<Vec<u8>> = pieces.collect();
        let last = rest.pop();
        Pattern {
            first,
            // Empty middles (`%%`) match anywhere: nothing to search for.
            middle: rest
                .iter()
                .filter(|p| !p.is_empty())
                .map(|p| Finder::new(p).into_owned())
                .collect(),
            last,
        }
    }

    /// With only `%` wildcards, leftmost-first matching of the middle pieces is exact: taking
    /// the earliest occurrence of each piece leaves the most room for the rest.
    fn matches(&self, text: &[u8]) -> bool {
        let Some(last) = &self.last else {
            return text == self.first.as_slice();
        };
        if text.len() < self.first.len() + last.len()
            || !text.starts_with(&self.first)
            || !text.ends_with(last)
        {
            return false;
        }
        let mut rest = text
            .get(self.first.len()..text.len() - last.len())
            .unwrap_or_default();
        for finder in &self.middle {
            match finder.find(rest) {
                Some(at) => rest = rest.get(at + finder.needle().len()..).unwrap_or_default(),
                None => return false,
            }
        }
        true
    }
}

/// A relation or function name from the configuration, normalised as PostgreSQL would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QualifiedName {
    /// Absent for a bare `name`.
    pub schema: Option<String>,
    pub name: String,
}

/// How unquoted identifiers are treated by [`parse_qualified_name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// Lower-case them, as PostgreSQL does (`Users` = `users`).
    Fold,
    /// Refuse upper-case letters outside quotes, so the written name is the catalog name.
    RequireLower,
}

/// Parses `name` or `schema.name`; each part is an unquoted identifier (letters, digits, `_`,
/// `$`, not starting with a digit or `$`) or a `"quoted"` one (`""` for a quote). Returns why
/// not, for `check-config`.
pub fn parse_qualified_name(text: &str, case: Case) -> Result<QualifiedName, String> {
    let mut parts = Vec::with_capacity(2);
    let mut rest = text;
    loop {
        let (part, after) = identifier(rest, case)?;
        parts.push(part);
        match after.strip_prefix('.') {
            Some(next) => rest = next,
            None if after.is_empty() => break,
            None => return Err(format!("unexpected `{after}` after a name")),
        }
    }
    let mut parts = parts.into_iter();
    match (parts.next(), parts.next(), parts.next()) {
        (Some(name), None, None) => Ok(QualifiedName { schema: None, name }),
        (Some(schema), Some(name), None) => Ok(QualifiedName {
            schema: Some(schema),
            name,
        }),
        _ => Err("has more than two parts; write `name` or `schema.name`".to_owned()),
    }
}

/// One identifier at the start of `text`, and what follows it.
fn identifier(text: &str, case: Case) -> Result<(String, &str), String> {
    let (ident, rest) = if let Some(quoted) = text.strip_prefix('"') {
        let mut ident = String::new();
        let mut chars = quoted.char_indices();
        loop {
            match chars.next() {
                None => return Err("has an unterminated quoted identifier".to_owned()),
                Some((i, '"')) => {
                    if quoted.get(i + 1..).is_some_and(|r| r.starts_with('"')) {
                        ident.push('"');
                        chars.next();
                    } else {
                        break (ident, quoted.get(i + 1..).unwrap_or_default());
                    }
                }
                Some((_, c)) => ident.push(c),
            }
        }
    } else {
        let end = text
            // PostgreSQL takes any non-ASCII character as an identifier letter.
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '$' || !c.is_ascii()))
            .unwrap_or(text.len());
        let (ident, rest) = text.split_at(end);
        if ident.starts_with(|c: char| c.is_ascii_digit() || c == '$') {
            return Err(format!(
                "`{ident}` does not start with a letter or `_` (quote it)"
            ));
        }
        if case == Case::RequireLower && ident.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(format!(
                "`{ident}` has upper-case letters: PostgreSQL lower-cases unquoted names, \
                 so write `{}` or quote it (`\"{ident}\"`)",
                ident.to_ascii_lowercase()
            ));
        }
        (ident.to_ascii_lowercase(), rest)
    };
    if ident.is_empty() {
        return Err("has an empty name part".to_owned());
    }
    if ident.len() > MAX_IDENTIFIER_BYTES {
        return Err(format!(
            "has a name part longer than PostgreSQL's {MAX_IDENTIFIER_BYTES}-byte identifier limit"
        ));
    }
    Ok((ident, rest))
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
