//! Pure statement analysis (no I/O): classifies each statement of a simple Query or a Parse as
//! a cacheable read, a read that is not cacheable (with the reason), a write (with the
//! relations it writes), DDL, transaction control, a session change, or other — DESIGN §1.5.
//!
//! How (`router` decides who reads each statement): the raw bytes are split into statements
//! by a byte-level lexer (`lexer`, `normalize`; never decoded, never lossy). Transaction
//! control, SET/RESET/DISCARD/DEALLOCATE and utility verbs are read by a small keyword parser
//! (`keywords`). Everything else is parsed by sqlparser's PostgreSQL dialect after a token
//! rewrite of constructs sqlparser gets wrong (`rewrite`), and its AST is walked (`classify`,
//! `relations`). What sqlparser cannot parse, or what is too large or not UTF-8, goes to a
//! keyword-level fallback (`fallback`): reads are then never cacheable, and anything that could
//! write is a write whose targets are unknown — `epoch_bump`.
//!
//! Relation and function names are reported as written, normalised as PostgreSQL does
//! (unquoted → lower-case, quoted kept, truncated to 63 bytes); resolving them under a
//! search_path, volatility, views and partitions are the catalog's job.
//!
//! Caller obligations: the analysis assumes `standard_conforming_strings = on` and a client
//! encoding whose bytes >= 0x80 never stand for ASCII characters (UTF-8, LATIN*, EUC_*, ...;
//! not SJIS, BIG5, GBK, UHC, GB18030). A session outside that must not cache and must treat
//! every statement as an epoch bump.

mod behind;
mod classify;
mod database;
mod fallback;
mod keywords;
mod lexer;
mod normalize;
mod pins;
mod relations;
mod rewrite;
mod router;
#[cfg(test)]
mod tests;

use std::fmt;

pub use behind::BehindShape;
pub use database::{FreeingKind, NeedsFree, databases_needing_free};
pub use normalize::{
    Hints, MAX_UNKNOWN_HINTS, hints, log_shape, normalize_for_key, param_references, shape_key,
    statement_piece,
};
pub use pins::{ColumnEq, KeyValue, RowFilter, RowScope, number_at};

/// Statements longer than this are not handed to sqlparser (time and memory bound); the
/// keyword fallback decides them conservatively.
pub const MAX_PARSE_BYTES: usize = 1 << 20;

/// A relation name as written in the statement, normalised like PostgreSQL normalises
/// identifiers. A three-part `db.schema.name` keeps schema and name (PostgreSQL rejects any
/// other database).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelName {
    pub schema: Option<String>,
    pub name: String,
}

/// A function name as written in the statement, normalised like [`RelName`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FuncName {
    pub schema: Option<String>,
    pub name: String,
}

fn fmt_qualified(f: &mut fmt::Formatter<'_>, schema: Option<&str>, name: &str) -> fmt::Result {
    let part = |f: &mut fmt::Formatter<'_>, s: &str| {
        let plain = s
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if plain {
            f.write_str(s)
        } else {
            write!(f, "\"{}\"", s.replace('"', "\"\""))
        }
    };
    if let Some(schema) = schema {
        part(f, schema)?;
        f.write_str(".")?;
    }
    part(f, name)
}

impl fmt::Display for RelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_qualified(f, self.schema.as_deref(), &self.name)
    }
}

impl fmt::Display for FuncName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_qualified(f, self.schema.as_deref(), &self.name)
    }
}

/// What kind of statement this is, as far as caching and invalidation care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    /// One SELECT/VALUES/TABLE with nothing that makes it uncacheable here; the catalog still
    /// has to accept its relations and functions.
    CacheableRead,
    /// A read that is not cacheable; `reason` says why.
    Read,
    /// Changes data: bump `writes` (and the epoch if `epoch_bump`) when it commits.
    Write,
    /// Changes the schema, privileges or other catalog state: bump `writes` (and the epoch if
    /// `epoch_bump`) when it commits, and drop what the catalog memoised.
    Ddl,
    TransactionControl(TxnControl),
    SessionChange(SessionChange),
    /// SQL `EXECUTE name`: runs the statement prepared as `name` (look it up in the session's
    /// registry for its class). Under `EXPLAIN ANALYZE` the reason is `Explain`.
    Execute {
        name: String,
    },
    /// Never writes and never flushes: SHOW, FETCH, MOVE, CLOSE, LISTEN, UNLISTEN, NOTIFY,
    /// VACUUM, ANALYZE, CHECKPOINT, REINDEX, CLUSTER, LOCK, SET CONSTRAINTS. (NOTIFY delivers
    /// at commit but changes no relation; LOCK takes locks but writes nothing.)
    Utility,
    /// Anything else; `epoch_bump` and `taints_session` say what the session must do (CALL and
    /// DO run code whose effects are invisible here: both flags are set).
    Other,
}

/// Transaction-control statements. Savepoint names are normalised identifiers; global
/// transaction ids are the literal's text (a literal form we do not decode is kept as written,
/// prefixed with NUL, which no decoded id can contain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnControl {
    Begin,
    Commit,
    CommitAndChain,
    Rollback,
    RollbackAndChain,
    Savepoint(String),
    RollbackToSavepoint(String),
    ReleaseSavepoint(String),
    PrepareTransaction(String),
    CommitPrepared(String),
    RollbackPrepared(String),
}

/// Statements that change session state the fingerprint must follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionChange {
    /// `SET [SESSION|LOCAL] name {TO|=} value`, and the special forms mapped to their setting:
    /// `TIME ZONE` → `timezone`, `SCHEMA` → `search_path`, `NAMES` → `client_encoding`,
    /// `XML OPTION` → `xmloption`, `SET TRANSACTION ...` → `transaction` (local),
    /// `SET SESSION CHARACTERISTICS AS TRANSACTION ...` → `session_characteristics`. `name` is
    /// lower-case; `value` is the value's tokens joined by one space (`None` = DEFAULT/LOCAL).
    Set {
        name: String,
        value: Option<String>,
        local: bool,
    },
    /// `RESET name`; `None` = `RESET ALL`.
    Reset {
        name: Option<String>,
    },
    /// `SET [LOCAL] ROLE name`; `None` = `NONE`.
    SetRole {
        role: Option<String>,
        local: bool,
    },
    ResetRole,
    /// `SET [LOCAL] SESSION AUTHORIZATION user`; `None` = `DEFAULT` or `RESET SESSION
    /// AUTHORIZATION`.
    SetSessionAuthorization {
        user: Option<String>,
        local: bool,
    },
    Discard(DiscardKind),
    /// SQL `PREPARE name AS statement`, with the prepared statement's own analysis.
    Prepare {
        name: String,
        inner: Box<StatementInfo>,
    },
    /// `DEALLOCATE [PREPARE] name`; `None` = `ALL`.
    Deallocate {
        name: Option<String>,
    },
    /// A SET/RESET form we cannot model: `taints_session` is set.
    Unrecognized,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscardKind {
    All,
    Plans,
    Sequences,
    Temp,
}

/// Why a statement (or a Query) is not cacheable. `label()` is a stable snake_case metric
/// label; `Display` prints the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotCacheable {
    /// No statement at all (an empty Query).
    Empty,
    /// More than one statement in one Query.
    MultipleStatements,
    /// Not a SELECT/VALUES/TABLE (a write, DDL, SET, ...).
    NotSelect,
    /// `FOR UPDATE/NO KEY UPDATE/SHARE/KEY SHARE`: takes row locks.
    LockingClause,
    /// A `WITH` holding INSERT/UPDATE/DELETE/MERGE.
    DataModifyingCte,
    /// `SELECT ... INTO`: creates a table.
    SelectInto,
    /// `TABLESAMPLE`: a different sample each time.
    TableSample,
    /// CURRENT_TIMESTAMP, CURRENT_USER, now(), current_setting(), ... .
    ValueFunction,
    /// A string literal holding 'now', 'today', 'tomorrow' or 'yesterday', which date/time
    /// types turn into the current time when the statement runs.
    SpecialDateLiteral,
    /// A cast to a reg* type (regclass, regproc, ...): depends on catalog state.
    RegTypeCast,
    /// EXPLAIN output.
    Explain,
    /// DECLARE CURSOR.
    Cursor,
    /// COPY ... TO.
    CopyTo,
    /// SQL EXECUTE: what runs is in the session's prepared-statement registry.
    Execute,
    /// Syntax sqlparser accepts but this analysis does not model.
    UnsupportedSyntax,
    /// sqlparser could not parse it; the keyword fallback decided.
    ParseFailed,
    /// Not valid UTF-8; the keyword fallback decided.
    NotUtf8,
    /// Longer than [`MAX_PARSE_BYTES`]; the keyword fallback decided.
    TooLarge,
    /// A `pgmemo:nocache` hint.
    NocacheHint,
}

impl NotCacheable {
    pub fn label(self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::MultipleStatements => "multiple_statements",
            Self::NotSelect => "not_select",
            Self::LockingClause => "locking_clause",
            Self::DataModifyingCte => "data_modifying_cte",
            Self::SelectInto => "select_into",
            Self::TableSample => "tablesample",
            Self::ValueFunction => "value_function",
            Self::SpecialDateLiteral => "special_date_literal",
            Self::RegTypeCast => "regtype_cast",
            Self::Explain => "explain",
            Self::Cursor => "cursor",
            Self::CopyTo => "copy_to",
            Self::Execute => "execute",
            Self::UnsupportedSyntax => "unsupported_syntax",
            Self::ParseFailed => "parse_failed",
            Self::NotUtf8 => "not_utf8",
            Self::TooLarge => "too_large",
            Self::NocacheHint => "nocache_hint",
        }
    }
}

impl fmt::Display for NotCacheable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The analysis of one statement. Invariant: `class == CacheableRead` exactly when `reason` is
/// `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementInfo {
    pub class: Class,
    /// Relations read (names bound by the statement's own WITH and table functions excluded).
    pub reads: Vec<RelName>,
    /// Relations written (INSERT/UPDATE/DELETE/MERGE/COPY FROM/TRUNCATE targets, or the objects
    /// a DDL statement changes, when known).
    pub writes: Vec<RelName>,
    /// Functions called, including set-returning functions in FROM; the catalog decides their
    /// volatility (unknown = volatile).
    pub functions: Vec<FuncName>,
    /// Uses a value function, a special date literal or a reg* cast (see [`NotCacheable`]).
    pub uses_value_functions: bool,
    pub reason: Option<NotCacheable>,
    /// May change data not listed in `writes` (targets unknown, CASCADE, CALL, DO, function
    /// DDL, ...): bump the epoch when it commits.
    pub epoch_bump: bool,
    /// May change session state the fingerprint cannot model (CALL, DO, CREATE TEMP, LOAD,
    /// unknown statements): stop using the cache until the session's settings are
    /// re-established.
    pub taints_session: bool,
    /// The rows it reads or changes, as far as its top-level WHERE (or VALUES) says, for
    /// row-level invalidation ([`RowScope`]). Only for a statement that is alone in its text
    /// piece and not nested (EXPLAIN, PREPARE); `None` means nothing is known: any row.
    pub rows: Option<Box<RowScope>>,
    /// `COPY ... FROM`: PostgreSQL may then expect the client's data stream (copy-in mode),
    /// so nothing of pgmemo's own may be sent behind it before its reply.
    pub copies_in: bool,
    /// A shape write-behind may queue (see [`BehindShape`]); like `rows`, only for a
    /// statement alone in its text piece.
    pub behind: Option<Box<BehindShape>>,
}

impl StatementInfo {
    /// A statement of `class` with nothing read or written yet.
    pub(crate) fn new(class: Class, reason: Option<NotCacheable>) -> Self {
        Self {
            class,
            reads: Vec::new(),
            writes: Vec::new(),
            functions: Vec::new(),
            uses_value_functions: false,
            reason,
            epoch_bump: false,
            taints_session: false,
            rows: None,
            copies_in: false,
            behind: None,
        }
    }

    pub fn is_cacheable(&self) -> bool {
        self.class == Class::CacheableRead
    }

    /// Approximate heap bytes of this statement's own structures (its vectors of names and
    /// their allocations; the text of the names is counted by [`Analysis::weight`]). Memo
    /// bounds need it: a statement naming thousands of short relations weighs far more than
    /// its text.
    fn structure_weight(&self) -> usize {
        let names = self.reads.len() + self.writes.len() + self.functions.len();
        let inner = match &self.class {
            Class::SessionChange(SessionChange::Prepare { inner, .. }) => inner.structure_weight(),
            _ => 0,
        };
        let rows = self.rows.as_ref().map_or(0, |r| r.weight())
            + self.behind.as_ref().map_or(0, |b| b.weight());
        std::mem::size_of::<Self>() + names * NAME_WEIGHT + inner + rows
    }
}

/// One name in an analysis: the struct, plus an allocation for the name and one for a
/// schema (with allocator overhead).
const NAME_WEIGHT: usize = std::mem::size_of::<RelName>() + 2 * 32;

/// The analysis of a whole simple Query or Parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    /// One entry per statement, in order (empty statements dropped).
    pub statements: Vec<StatementInfo>,
    pub hints: Hints,
}

impl Analysis {
    /// Approximate heap bytes of this analysis of a `text_len`-byte text: the structures,
    /// and every string in them (names, settings, hints: all cut from the text, so twice
    /// its length bounds them generously).
    pub fn weight(&self, text_len: usize) -> usize {
        let structures: usize = self
            .statements
            .iter()
            .map(StatementInfo::structure_weight)
            .sum();
        std::mem::size_of::<Self>() + structures + 2 * text_len
    }

    /// The single statement, if the whole text is exactly one cacheable read.
    pub fn cacheable(&self) -> Option<&StatementInfo> {
        match self.statements.as_slice() {
            [only] if only.is_cacheable() => Some(only),
            _ => None,
        }
    }

    /// Why the whole text is not cacheable; `None` when [`Analysis::cacheable`] is `Some`.
    pub fn reason(&self) -> Option<NotCacheable> {
        match self.statements.as_slice() {
            [] => Some(NotCacheable::Empty),
            [only] => only.reason,
            _ => Some(NotCacheable::MultipleStatements),
        }
    }

    /// Whether any statement requires an epoch bump when it commits.
    pub fn epoch_bump(&self) -> bool {
        self.statements.iter().any(|s| s.epoch_bump)
    }

    /// Whether any statement taints the session (see [`StatementInfo::taints_session`]).
    pub fn taints_session(&self) -> bool {
        self.statements.iter().any(|s| s.taints_session)
    }

    /// Every relation any statement writes.
    pub fn writes(&self) -> impl Iterator<Item = &RelName> {
        self.statements.iter().flat_map(|s| s.writes.iter())
    }
}

/// The keyword fallback's decision for one statement (`piece`: no trailing `;`), as
/// [`analyze`] takes it when sqlparser cannot parse the text. Public so the fallback can be
/// fuzzed and tested on its own: its answers must stay conservative (never a cacheable read,
/// always with a reason) whatever sqlparser would have made of the text.
pub fn fallback_statement(piece: &[u8]) -> StatementInfo {
    let toks = lexer::significant(piece);
    fallback::fallback(
        piece,
        &toks,
        NotCacheable::ParseFailed,
        0,
        router::analyze_statement,
    )
}

/// Analyses the raw bytes of a simple Query or a Parse. Never panics; any input gets an answer,
/// conservative where the text is not understood.
pub fn analyze(sql: &[u8]) -> Analysis {
    let hints = hints(sql);
    let mut statements = Vec::new();
    for range in normalize::split_statements(sql) {
        let piece = sql.get(range).unwrap_or_default();
        statements.extend(router::analyze_statement(piece, 0));
    }
    if hints.nocache {
        for info in &mut statements {
            if info.class == Class::CacheableRead {
                info.class = Class::Read;
                info.reason = Some(NotCacheable::NocacheHint);
            }
        }
    }
    Analysis { statements, hints }
}
