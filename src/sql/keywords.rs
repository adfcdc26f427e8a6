//! Keyword-level reading of statements whose grammar is small and safety-critical, and which
//! never go to sqlparser: transaction control (including two-phase commit, which sqlparser
//! rejects), SET/RESET/DISCARD/DEALLOCATE (the fingerprint needs exact names and values), the
//! utility verbs that never write, DO, LOAD and REFRESH MATERIALIZED VIEW (unparsed by
//! sqlparser). Also the token cursor the fallback shares.

use super::classify::is_false_word;
use super::lexer::{Kind, Token};
use super::relations::{qualified, truncate_ident};
use super::{Class, DiscardKind, NotCacheable, RelName, SessionChange, StatementInfo, TxnControl};

/// A cursor over the significant tokens of one statement.
pub(crate) struct Cur<'a> {
    pub src: &'a [u8],
    pub toks: &'a [Token],
    pub i: usize,
}

impl<'a> Cur<'a> {
    pub fn new(src: &'a [u8], toks: &'a [Token]) -> Self {
        Self { src, toks, i: 0 }
    }

    pub fn peek(&self) -> Option<&'a Token> {
        self.toks.get(self.i)
    }

    pub fn peek_at(&self, k: usize) -> Option<&'a Token> {
        self.toks.get(self.i + k)
    }

    pub fn bump(&mut self) -> Option<&'a Token> {
        let t = self.toks.get(self.i)?;
        self.i += 1;
        Some(t)
    }

    pub fn at_end(&self) -> bool {
        self.i >= self.toks.len()
    }

    pub fn peek_word(&self, w: &str) -> bool {
        self.peek().is_some_and(|t| t.is_word(self.src, w))
    }

    /// Consumes the word `w` if it is next.
    pub fn word(&mut self, w: &str) -> bool {
        let hit = self.peek_word(w);
        if hit {
            self.i += 1;
        }
        hit
    }

    pub fn punct(&mut self, b: u8) -> bool {
        let hit = self.peek().is_some_and(|t| t.is_punct(self.src, b));
        if hit {
            self.i += 1;
        }
        hit
    }

    /// The next word, lower-case, without consuming it.
    pub fn peek_lower(&self) -> Option<String> {
        let t = self.peek()?;
        (t.kind == Kind::Word)
            .then(|| String::from_utf8_lossy(t.bytes(self.src)).to_ascii_lowercase())
    }

    /// An identifier, normalised as PostgreSQL folds it.
    pub fn ident(&mut self) -> Option<String> {
        let t = self.peek()?;
        let name = ident_token(self.src, t)?;
        self.i += 1;
        Some(name)
    }

    /// `name`, `schema.name` or `db.schema.name`.
    pub fn rel_name(&mut self) -> Option<RelName> {
        let mut parts = vec![self.ident()?];
        while self.peek().is_some_and(|t| t.is_punct(self.src, b'.')) {
            self.i += 1;
            parts.push(self.ident()?);
        }
        qualified(parts).map(|(schema, name)| RelName { schema, name })
    }

    /// A string literal's text.
    pub fn string(&mut self) -> Option<String> {
        let t = self.peek()?;
        let s = string_token(self.src, t)?;
        self.i += 1;
        Some(s)
    }

    /// Skips a balanced parenthesised group if one is next; false if none is.
    pub fn skip_parens(&mut self) -> bool {
        if !self.punct(b'(') {
            return false;
        }
        let mut depth = 1usize;
        while let Some(t) = self.bump() {
            if t.is_punct(self.src, b'(') {
                depth += 1;
            } else if t.is_punct(self.src, b')') {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
        }
        true
    }

    /// The remaining tokens joined by one space; `None` if there are none or they are not
    /// UTF-8 (never decoded lossily: two different values must not look the same).
    pub fn rest_text(&self) -> Option<String> {
        let rest = self.toks.get(self.i..).unwrap_or_default();
        if rest.is_empty() {
            return None;
        }
        let mut out = String::new();
        for (n, t) in rest.iter().enumerate() {
            if n > 0 {
                out.push(' ');
            }
            out.push_str(std::str::from_utf8(t.bytes(self.src)).ok()?);
        }
        Some(out)
    }
}

/// An identifier token, normalised: unquoted → ASCII lower-case; `"..."` → its text with `""`
/// undone; `U&"..."` (escapes we do not decode) → NUL + as written, which no decoded name
/// contains. Truncated to 63 bytes like PostgreSQL.
pub(crate) fn ident_token(src: &[u8], t: &Token) -> Option<String> {
    let text = std::str::from_utf8(t.bytes(src)).ok()?;
    let name = match t.kind {
        Kind::Word => text.to_ascii_lowercase(),
        Kind::QuotedIdent if text.starts_with('"') => {
            let inner = text.strip_prefix('"')?.strip_suffix('"')?;
            inner.replace("\"\"", "\"")
        }
        Kind::QuotedIdent => format!("\0{text}"),
        _ => return None,
    };
    Some(truncate_ident(name))
}

/// A string literal token's text: `'...'` with `''` undone, a dollar-quoted body as is; other
/// forms (E'', U&'', N'', B'', X'') as NUL + as written.
pub(crate) fn string_token(src: &[u8], t: &Token) -> Option<String> {
    let text = std::str::from_utf8(t.bytes(src)).ok()?;
    match t.kind {
        Kind::String if text.starts_with('\'') => {
            let inner = text.strip_prefix('\'')?.strip_suffix('\'')?;
            Some(inner.replace("''", "'"))
        }
        Kind::String => Some(format!("\0{text}")),
        Kind::DollarString => {
            let open = text.get(1..)?.find('$')? + 2;
            let body = text.get(open..)?;
            let delim = text.get(..open)?;
            body.strip_suffix(delim).map(str::to_owned)
        }
        _ => None,
    }
}

/// Verbs that never write and never flush.
const UTILITY_VERBS: &[&str] = &[
    "show",
    "fetch",
    "move",
    "close",
    "listen",
    "unlisten",
    "notify",
    "vacuum",
    "analyze",
    "analyse",
    "checkpoint",
    "reindex",
    "cluster",
    "lock",
];

/// The statement, if its first word routes it here rather than to sqlparser.
pub(crate) fn keyword_statement(src: &[u8], toks: &[Token]) -> Option<StatementInfo> {
    let mut c = Cur::new(src, toks);
    let first = c.peek_lower()?;
    let not_select = Some(NotCacheable::NotSelect);
    let info = match first.as_str() {
        "begin" | "start" | "commit" | "end" | "rollback" | "abort" | "savepoint" | "release" => {
            match txn(&mut c) {
                Some(t) => StatementInfo::new(Class::TransactionControl(t), not_select),
                None => unknown(),
            }
        }
        "prepare" if c.peek_at(1).is_some_and(|t| t.is_word(src, "transaction")) => {
            c.i += 2;
            match c.string().filter(|_| c.at_end()) {
                Some(gid) => StatementInfo::new(
                    Class::TransactionControl(TxnControl::PrepareTransaction(gid)),
                    not_select,
                ),
                None => unknown(),
            }
        }
        "set" if c.peek_at(1).is_some_and(|t| t.is_word(src, "constraints")) => {
            StatementInfo::new(Class::Utility, not_select)
        }
        "set" | "reset" | "discard" | "deallocate" => {
            c.i += 1;
            let change = match first.as_str() {
                "set" => set(&mut c),
                "reset" => reset(&mut c),
                "discard" => discard(&mut c),
                _ => deallocate(&mut c),
            };
            match change {
                Some(change) => StatementInfo::new(Class::SessionChange(change), not_select),
                None => {
                    let mut info = StatementInfo::new(
                        Class::SessionChange(SessionChange::Unrecognized),
                        not_select,
                    );
                    info.taints_session = true;
                    info
                }
            }
        }
        verb if UTILITY_VERBS.contains(&verb) => StatementInfo::new(Class::Utility, not_select),
        "do" | "load" => {
            // Arbitrary code (DO) or a library that can hook anything (LOAD).
            let mut info = StatementInfo::new(Class::Other, not_select);
            info.epoch_bump = true;
            info.taints_session = true;
            info
        }
        "refresh" => refresh(&mut c),
        _ => return None,
    };
    Some(info)
}

/// A statement we cannot model: a write of unknown targets that may change the session.
pub(crate) fn unknown() -> StatementInfo {
    let mut info = StatementInfo::new(Class::Write, Some(NotCacheable::ParseFailed));
    info.epoch_bump = true;
    info.taints_session = true;
    info
}

fn txn(c: &mut Cur<'_>) -> Option<TxnControl> {
    let verb = c.peek_lower()?;
    c.i += 1;
    let t = match verb.as_str() {
        "begin" => return Some(TxnControl::Begin),
        "start" => return c.word("transaction").then_some(TxnControl::Begin),
        "savepoint" => TxnControl::Savepoint(c.ident()?),
        "release" => {
            c.word("savepoint");
            TxnControl::ReleaseSavepoint(c.ident()?)
        }
        "commit" if c.word("prepared") => TxnControl::CommitPrepared(c.string()?),
        "rollback" if c.word("prepared") => TxnControl::RollbackPrepared(c.string()?),
        "commit" | "end" | "rollback" | "abort" => {
            let _ = c.word("work") || c.word("transaction");
            let rollback = verb == "rollback" || verb == "abort";
            if rollback && c.word("to") {
                c.word("savepoint");
                TxnControl::RollbackToSavepoint(c.ident()?)
            } else {
                let chain = if c.word("and") {
                    let no = c.word("no");
                    if !c.word("chain") {
                        return None;
                    }
                    !no
                } else {
                    false
                };
                match (rollback, chain) {
                    (false, false) => TxnControl::Commit,
                    (false, true) => TxnControl::CommitAndChain,
                    (true, false) => TxnControl::Rollback,
                    (true, true) => TxnControl::RollbackAndChain,
                }
            }
        }
        _ => return None,
    };
    c.at_end().then_some(t)
}

/// A role or user name: an identifier or a string literal.
fn role_name(c: &mut Cur<'_>) -> Option<String> {
    let t = c.peek()?;
    if matches!(t.kind, Kind::String | Kind::DollarString) {
        c.string()
    } else {
        c.ident()
    }
}

fn set(c: &mut Cur<'_>) -> Option<SessionChange> {
    let local = c.word("local");
    let session = !local && c.word("session");
    // `SET [LOCAL|SESSION] SESSION AUTHORIZATION`: the scope word may itself be that SESSION.
    let authorization = if session && c.word("authorization") {
        true
    } else if c.peek_word("session")
        && c.peek_at(1)
            .is_some_and(|t| t.is_word(c.src, "authorization"))
    {
        c.i += 2;
        true
    } else {
        false
    };
    let change = if authorization {
        let user = if c.word("default") {
            None
        } else {
            Some(role_name(c)?)
        };
        SessionChange::SetSessionAuthorization { user, local }
    } else if c.word("role") {
        let role = if c.word("none") {
            None
        } else {
            Some(role_name(c)?)
        };
        SessionChange::SetRole { role, local }
    } else if session && c.word("characteristics") {
        if !(c.word("as") && c.word("transaction")) {
            return None;
        }
        let value = Some(c.rest_text()?);
        return Some(SessionChange::Set {
            name: "session_characteristics".into(),
            value,
            local,
        });
    } else if c.word("transaction") {
        let value = Some(c.rest_text()?);
        return Some(SessionChange::Set {
            name: "transaction".into(),
            value,
            local: true,
        });
    } else {
        let name = if c.word("time") {
            if !c.word("zone") {
                return None;
            }
            "timezone".to_owned()
        } else if c.word("schema") {
            "search_path".to_owned()
        } else if c.word("names") {
            "client_encoding".to_owned()
        } else if c.word("xml") {
            if !c.word("option") {
                return None;
            }
            "xmloption".to_owned()
        } else {
            let name = guc_name(c)?;
            if !(c.word("to") || c.punct(b'=')) {
                return None;
            }
            name
        };
        let value = set_value(c, name == "timezone")?;
        return Some(SessionChange::Set { name, value, local });
    };
    c.at_end().then_some(change)
}

/// A setting name: identifiers joined by dots, lower-case (setting names are
/// case-insensitive, quoted or not).
fn guc_name(c: &mut Cur<'_>) -> Option<String> {
    let mut name = c.ident()?.to_ascii_lowercase();
    while c.punct(b'.') {
        name.push('.');
        name.push_str(&c.ident()?.to_ascii_lowercase());
    }
    Some(name)
}

/// The value of a SET: `Some(None)` for DEFAULT (and LOCAL for TIME ZONE), `None` if missing.
fn set_value(c: &mut Cur<'_>, time_zone: bool) -> Option<Option<String>> {
    let single = c.toks.len() == c.i + 1;
    if single && (c.peek_word("default") || (time_zone && c.peek_word("local"))) {
        return Some(None);
    }
    if c.peek_word("from") && c.peek_at(1).is_some_and(|t| t.is_word(c.src, "current")) {
        return None;
    }
    Some(Some(c.rest_text()?))
}

fn reset(c: &mut Cur<'_>) -> Option<SessionChange> {
    let change = if c.word("all") {
        SessionChange::Reset { name: None }
    } else if c.word("role") {
        SessionChange::ResetRole
    } else if c.word("session") {
        if !c.word("authorization") {
            return None;
        }
        SessionChange::SetSessionAuthorization {
            user: None,
            local: false,
        }
    } else if c.word("time") {
        if !c.word("zone") {
            return None;
        }
        SessionChange::Reset {
            name: Some("timezone".into()),
        }
    } else if c.word("transaction") {
        if !(c.word("isolation") && c.word("level")) {
            return None;
        }
        SessionChange::Reset {
            name: Some("transaction_isolation".into()),
        }
    } else {
        SessionChange::Reset {
            name: Some(guc_name(c)?),
        }
    };
    c.at_end().then_some(change)
}

fn discard(c: &mut Cur<'_>) -> Option<SessionChange> {
    let kind = match c.peek_lower()?.as_str() {
        "all" => DiscardKind::All,
        "plans" => DiscardKind::Plans,
        "sequences" => DiscardKind::Sequences,
        "temp" | "temporary" => DiscardKind::Temp,
        _ => return None,
    };
    c.i += 1;
    c.at_end().then_some(SessionChange::Discard(kind))
}

fn deallocate(c: &mut Cur<'_>) -> Option<SessionChange> {
    c.word("prepare");
    let name = if c.word("all") {
        None
    } else {
        Some(c.ident()?)
    };
    c.at_end().then_some(SessionChange::Deallocate { name })
}

/// `REFRESH MATERIALIZED VIEW [CONCURRENTLY] name [WITH [NO] DATA]`: a write of that view.
fn refresh(c: &mut Cur<'_>) -> StatementInfo {
    c.i += 1;
    if !(c.word("materialized") && c.word("view")) {
        return unknown();
    }
    c.word("concurrently");
    let Some(name) = c.rel_name() else {
        return unknown();
    };
    if c.word("with") {
        c.word("no");
        if !c.word("data") {
            return unknown();
        }
    }
    if !c.at_end() {
        return unknown();
    }
    let mut info = StatementInfo::new(Class::Write, Some(NotCacheable::NotSelect));
    info.writes.push(name);
    info
}

/// Whether an EXPLAIN option value means off.
pub(crate) fn option_is_off(src: &[u8], value: Option<&Token>) -> bool {
    value.is_some_and(|t| {
        let text = match t.kind {
            Kind::String | Kind::DollarString => string_token(src, t),
            _ => std::str::from_utf8(t.bytes(src)).ok().map(str::to_owned),
        };
        text.is_some_and(|s| is_false_word(&s))
    })
}

/// `CREATE [OR REPLACE] [GLOBAL|LOCAL] {TEMP|TEMPORARY} ...`: a temporary object, which shadows
/// permanent ones for this session only.
pub(crate) fn creates_temp(src: &[u8], toks: &[Token]) -> bool {
    let mut c = Cur::new(src, toks);
    if !c.word("create") {
        return false;
    }
    if c.word("or") && !c.word("replace") {
        return false;
    }
    let _ = c.word("global") || c.word("local");
    c.word("temp") || c.word("temporary")
}
