//! The `test_decoding` output plugin's text lines (it ships with PostgreSQL and needs no
//! publication, so it never makes a client's UPDATE or DELETE fail), reduced to what
//! invalidation needs: transaction boundaries, the commit time, the qualified names of the
//! tables each transaction changed, and per table the changed rows' column text, from which
//! [`key_values`] takes the key values the caller asks for.
//!
//! The lines (PostgreSQL 15 `contrib/test_decoding`, with `include-xids` off or on,
//! `include-timestamp` on, `skip-empty-xacts` on):
//!
//! ```text
//! BEGIN [xid]
//! table <schema>.<name>: INSERT|UPDATE|DELETE: <columns>
//! table <schema>.<name>[, <schema>.<name>...]: TRUNCATE: <flags>
//! message: transactional: 0|1 prefix: ...
//! COMMIT [xid] [(at <timestamp>)]
//! ```
//!
//! Names are printed with `quote_identifier`: bare when every byte is `[a-z0-9_]` (and the
//! first is not a digit), otherwise double-quoted with `"` doubled, and then they may hold
//! `.`, `:`, `,` and spaces. They are parsed exactly; a line that does not parse inside a
//! transaction marks the transaction `overflowed` (the caller invalidates everything: an
//! unknown change is never skipped), outside one it is reported as an overflowed
//! transaction of its own. Names are the ones the relations had when the change was made
//! (the decoder's historic catalog); turning them into OIDs is [`super::names`]'s job.
//!
//! Row columns (`tuple_to_stringinfo` and `print_literal` in `test_decoding.c`) are
//! ` <name>[<type>]:<value>` each: the name as above, the type as `format_type` prints it
//! (spaces, `[]` and quoted identifiers included; it ends at the first `]:` outside quotes),
//! the value `null`, `unchanged-toast-datum`, `true`/`false`, `B'<bits>'`, a bare number
//! (integer, float, numeric and oid types) or a literal in single quotes with `'` doubled.
//! An UPDATE whose old key was logged reads ` old-key: <columns> new-tuple: <columns>`; the
//! old tuple and a DELETE's leave null columns out; a missing tuple is ` (no-tuple-data)`.
//! Only the line's text is kept per row (bounded by [`MAX_ROWS_PER_RELATION`] and
//! [`MAX_ROW_BYTES_PER_TXN`]): the key columns are known to the caller, not here, and most
//! columns are never wanted. A row whose columns do not parse makes its table's rows unknown,
//! never the transaction overflowed: the table is still known to have changed.

use std::collections::{BTreeMap, BTreeSet};

pub use super::pgoutput::ChangeKind;
use super::pgoutput::{MAX_RELATIONS_PER_TXN, MAX_ROW_BYTES_PER_TXN, MAX_ROWS_PER_RELATION};
use super::wire::Lsn;

/// Longest identifier PostgreSQL stores (NAMEDATALEN - 1 bytes).
pub const MAX_NAME_BYTES: usize = 63;

/// A relation's schema and name, unquoted, as the decoder printed them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QualifiedName {
    pub schema: String,
    pub name: String,
}

impl QualifiedName {
    pub fn new(schema: &str, name: &str) -> Self {
        Self {
            schema: schema.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl std::fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}.{:?}", self.schema, self.name)
    }
}

/// One parsed line.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    Begin,
    Commit {
        /// Microseconds since 2000-01-01 UTC, when the line carried an ISO timestamp.
        committed_at: Option<i64>,
    },
    /// A row change (one table) or a TRUNCATE (one or more).
    Change {
        tables: Vec<QualifiedName>,
        /// A row change: what it did, and the text after `INSERT:`/`UPDATE:`/`DELETE:`
        /// (from its leading space), not yet checked. `None` for a TRUNCATE.
        row: Option<(ChangeKind, &'a [u8])>,
    },
    /// A logical decoding message (`pg_logical_emit_message`): changes no relation.
    Message,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LineError {
    #[error("unrecognised test_decoding line")]
    Unrecognised,
    #[error("malformed relation name in a test_decoding line")]
    BadName,
    #[error("a TRUNCATE line names more tables than pgmemo tracks")]
    TooManyTables,
}

/// Parses one line (the `data` of an XLogData).
pub fn parse_line(line: &[u8]) -> Result<Line<'_>, LineError> {
    if let Some(rest) = line.strip_prefix(b"table ") {
        return parse_change(rest);
    }
    if let Some(rest) = line.strip_prefix(b"BEGIN") {
        return match rest {
            [] => Ok(Line::Begin),
            [b' ', xid @ ..] if is_number(xid) => Ok(Line::Begin),
            _ => Err(LineError::Unrecognised),
        };
    }
    if let Some(rest) = line.strip_prefix(b"COMMIT") {
        return parse_commit(rest);
    }
    if line.starts_with(b"message: ") {
        return Ok(Line::Message);
    }
    Err(LineError::Unrecognised)
}

fn is_number(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(u8::is_ascii_digit)
}

/// After `COMMIT`: `[ <xid>][ (at <timestamp>)]`.
fn parse_commit(rest: &[u8]) -> Result<Line<'_>, LineError> {
    let mut rest = rest;
    if let Some(after) = rest.strip_prefix(b" ") {
        let digits = after.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits > 0 {
            rest = after.get(digits..).unwrap_or_default();
        }
    }
    if rest.is_empty() {
        return Ok(Line::Commit { committed_at: None });
    }
    let ts = rest
        .strip_prefix(b" (at ")
        .and_then(|r| r.strip_suffix(b")"))
        .ok_or(LineError::Unrecognised)?;
    Ok(Line::Commit {
        committed_at: parse_iso_timestamp(ts),
    })
}

/// After `table `: names, then `: ACTION:`.
fn parse_change(rest: &[u8]) -> Result<Line<'_>, LineError> {
    let mut tables = Vec::new();
    let mut rest = rest;
    loop {
        let (name, after) = qualified(rest)?;
        if tables.len() >= MAX_RELATIONS_PER_TXN {
            return Err(LineError::TooManyTables);
        }
        tables.push(name);
        if let Some(next) = after.strip_prefix(b", ") {
            rest = next;
            continue;
        }
        rest = after.strip_prefix(b": ").ok_or(LineError::BadName)?;
        break;
    }
    let action_len = rest
        .iter()
        .position(|&b| b == b':')
        .ok_or(LineError::Unrecognised)?;
    let action = rest.get(..action_len).unwrap_or_default();
    let columns = rest.get(action_len + 1..).unwrap_or_default();
    let kind = match action {
        b"INSERT" => ChangeKind::Insert,
        b"UPDATE" => ChangeKind::Update,
        b"DELETE" => ChangeKind::Delete,
        b"TRUNCATE" => return Ok(Line::Change { tables, row: None }),
        _ => return Err(LineError::Unrecognised),
    };
    if tables.len() != 1 {
        return Err(LineError::Unrecognised);
    }
    Ok(Line::Change {
        tables,
        row: Some((kind, columns)),
    })
}

/// `<schema>.<name>` at the start of `s`; returns it and what follows.
fn qualified(s: &[u8]) -> Result<(QualifiedName, &[u8]), LineError> {
    let (schema, rest) = identifier(s)?;
    let rest = rest.strip_prefix(b".").ok_or(LineError::BadName)?;
    let (name, rest) = identifier(rest)?;
    Ok((QualifiedName { schema, name }, rest))
}

/// One identifier as `quote_identifier` prints it, at the start of `s`, unquoted.
fn identifier(s: &[u8]) -> Result<(String, &[u8]), LineError> {
    let (printed, rest) = printed_identifier(s).ok_or(LineError::BadName)?;
    // Names are looked up again as text: one that is not UTF-8 (a database in another
    // encoding) cannot be matched with certainty.
    let name = String::from_utf8(unquoted(printed).collect()).map_err(|_| LineError::BadName)?;
    Ok((name, rest))
}

/// The extent of one identifier as `quote_identifier` prints it, at the start of `s`: bare
/// (exactly the bytes it leaves unquoted) or in double quotes with `"` doubled, of 1 to
/// [`MAX_NAME_BYTES`] bytes unquoted. Returns it as printed, and what follows.
fn printed_identifier(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = if let Some(quoted) = s.strip_prefix(b"\"") {
        let mut i = quoted.iter().enumerate().peekable();
        let mut name_len = 0usize;
        loop {
            let (at, &b) = i.next()?;
            if b == b'"' {
                // `""` is one quote inside the name; a lone `"` ends it.
                if i.next_if(|&(_, &n)| n == b'"').is_none() {
                    if name_len == 0 {
                        return None;
                    }
                    break at + 2;
                }
            }
            name_len += 1;
            if name_len > MAX_NAME_BYTES {
                return None;
            }
        }
    } else {
        let len = s
            .iter()
            .take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || **b == b'_')
            .count();
        if len == 0 || len > MAX_NAME_BYTES || s.first().is_some_and(u8::is_ascii_digit) {
            return None;
        }
        len
    };
    Some((s.get(..len)?, s.get(len..)?))
}

/// The bytes of a printed identifier's name (quotes removed, `""` undoubled), without
/// allocating.
fn unquoted(printed: &[u8]) -> impl Iterator<Item = u8> + '_ {
    let inner = printed
        .strip_prefix(b"\"")
        .and_then(|p| p.strip_suffix(b"\""));
    let quoted = inner.is_some();
    let mut after_quote = false;
    inner.unwrap_or(printed).iter().copied().filter(move |&b| {
        if quoted && b == b'"' {
            // Keep the first of each `""` pair.
            after_quote = !after_quote;
            return after_quote;
        }
        true
    })
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff]±HH[:MM[:SS]]` (DateStyle ISO, which the replication
/// connection uses unless the role overrides it) as microseconds since 2000-01-01 UTC;
/// `None` for any other form. Only the commit-to-bump metric uses it.
pub fn parse_iso_timestamp(s: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(s).ok()?;
    let (date, time) = text.split_once(' ')?;
    let mut d = date.split('-');
    let year: i64 = d.next()?.parse().ok()?;
    let month: i64 = d.next()?.parse().ok()?;
    let day: i64 = d.next()?.parse().ok()?;
    if d.next().is_some() || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let sign_at = time.find(['+', '-'])?;
    let (clock, zone) = time.split_at(sign_at);
    let mut c = clock.split(':');
    let hour: i64 = c.next()?.parse().ok()?;
    let minute: i64 = c.next()?.parse().ok()?;
    let seconds = c.next()?;
    if c.next().is_some() {
        return None;
    }
    let (whole, frac) = seconds.split_once('.').unwrap_or((seconds, ""));
    let second: i64 = whole.parse().ok()?;
    if frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let micros: i64 = format!("{frac:0<6}").parse().ok()?;
    let negative = zone.starts_with('-');
    let mut z = zone.get(1..)?.split(':');
    let mut offset = 0i64;
    for unit in [3600, 60, 1] {
        match z.next() {
            Some(part) => offset += part.parse::<i64>().ok()? * unit,
            None => break,
        }
    }
    if z.next().is_some() {
        return None;
    }
    let offset = if negative { -offset } else { offset };
    let days = days_from_civil(year, month, day) - days_from_civil(2000, 1, 1);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    secs.checked_mul(1_000_000)?.checked_add(micros)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A committed transaction as the text stream shows it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NamedTxn {
    /// The smallest WAL position given with its BEGIN and change lines (0: none was): the
    /// names were bound at or after it (see [`super::names`]).
    pub first_lsn: Lsn,
    /// The position of its COMMIT line (the end of the commit record): what the slot may be
    /// confirmed up to.
    pub end_lsn: Lsn,
    /// Commit time, microseconds since 2000-01-01 (the server's clock); 0 when unknown.
    pub committed_at: i64,
    /// The tables it changed (sorted, unique).
    pub tables: BTreeSet<QualifiedName>,
    /// Per table of `tables` with an INSERT, UPDATE, DELETE or TRUNCATE line: its changed
    /// rows in stream order, or `None` when they are not all known (a TRUNCATE, a
    /// `(no-tuple-data)`, columns that do not parse, a bound reached): then the table is
    /// invalidated as a whole.
    pub rows: BTreeMap<QualifiedName, Option<Vec<ChangedRow>>>,
    /// It touched more than [`MAX_RELATIONS_PER_TXN`] tables, or a line did not parse:
    /// treat as "everything".
    pub overflowed: bool,
}

/// One change of one row, as the stream showed it. Only the line's column text is kept:
/// which columns form the key is the caller's knowledge, and [`key_values`] reads them out
/// of it on demand, so no column is copied or unescaped unless wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedRow {
    pub kind: ChangeKind,
    /// The line after `INSERT:`, `UPDATE:` or `DELETE:`, from its leading space (checked to
    /// parse before it was kept): ` <columns>`, or for an UPDATE whose old key was logged
    /// ` old-key: <columns> new-tuple: <columns>`.
    pub columns: Box<[u8]>,
}

impl ChangedRow {
    /// Row versions it names: two for an UPDATE with its old key, else one.
    pub fn versions(&self) -> usize {
        versions(self.kind, &self.columns)
    }
}

fn versions(kind: ChangeKind, columns: &[u8]) -> usize {
    if kind == ChangeKind::Update && columns.starts_with(OLD_KEY) {
        2
    } else {
        1
    }
}

/// The values of `key_columns` (names unquoted), in that order, in each row version `row`
/// names: its old key when the line has one (`old-key:`, or a DELETE's tuple), then its new
/// tuple (INSERT, UPDATE). Values are the type's text output: quotes removed and `''`
/// undoubled, `B'..'` without its quotes, `true`/`false` as `t`/`f` (what a query or
/// pgoutput returns). `None` when a key column is missing (a DELETE or old key leaves null
/// columns out), `null` or `unchanged-toast-datum`, printed twice, when `key_columns` is
/// empty, or when the columns do not parse. An UPDATE without `old-key:` gives only its new
/// tuple: whether the key can have changed unseen is the caller's to judge (only with
/// REPLICA IDENTITY DEFAULT is it logged whenever it changes).
pub fn key_values(row: &ChangedRow, key_columns: &[&str]) -> Option<Vec<Vec<Box<[u8]>>>> {
    if key_columns.is_empty() {
        return None;
    }
    let Tuples { old, new } = tuples(row.kind, &row.columns)?;
    [old, new]
        .into_iter()
        .flatten()
        .map(|tuple| tuple_key(tuple, key_columns))
        .collect()
}

/// One version's key values (see [`key_values`]).
fn tuple_key(tuple: &[u8], key_columns: &[&str]) -> Option<Vec<Box<[u8]>>> {
    let mut found: Vec<Option<Box<[u8]>>> = vec![None; key_columns.len()];
    for column in columns(tuple) {
        let Some(at) = key_columns
            .iter()
            .position(|k| unquoted(column.name).eq(k.bytes()))
        else {
            continue;
        };
        let slot = found.get_mut(at)?;
        if slot.is_some() {
            return None;
        }
        *slot = Some(column.value.text()?);
    }
    found.into_iter().collect()
}

const OLD_KEY: &[u8] = b" old-key:";
const NEW_TUPLE: &[u8] = b" new-tuple:";

/// A change's tuples, each the text of its columns.
struct Tuples<'a> {
    /// A DELETE's tuple, or an UPDATE's old key when it was logged.
    old: Option<&'a [u8]>,
    /// An INSERT's or UPDATE's new tuple.
    new: Option<&'a [u8]>,
}

/// A change's tuples, or `None` when it has no tuple data or does not parse.
fn tuples(kind: ChangeKind, text: &[u8]) -> Option<Tuples<'_>> {
    let (old, new) = match kind {
        ChangeKind::Insert => (None, Some(whole_tuple(text)?)),
        ChangeKind::Delete => (Some(whole_tuple(text)?), None),
        ChangeKind::Update => match text.strip_prefix(OLD_KEY) {
            Some(rest) => {
                let (old, rest) = tuple(rest)?;
                let new = rest.strip_prefix(NEW_TUPLE)?;
                (Some(old), Some(whole_tuple(new)?))
            }
            None => (None, Some(whole_tuple(text)?)),
        },
    };
    Some(Tuples { old, new })
}

/// `text` when it is exactly a tuple's columns.
fn whole_tuple(text: &[u8]) -> Option<&[u8]> {
    let (tuple, rest) = tuple(text)?;
    rest.is_empty().then_some(tuple)
}

/// The columns (each ` <column>`) at the start of `s`, up to its end or ` new-tuple:`
/// (which no column can start with: a name holding `-` is quoted); returns them and what
/// follows. ` (no-tuple-data)` is no column, so it does not parse as a tuple.
fn tuple(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut rest = s;
    while !rest.is_empty() && !rest.starts_with(NEW_TUPLE) {
        (_, rest) = column(rest.strip_prefix(b" ")?)?;
    }
    let read = s.len().saturating_sub(rest.len());
    Some((s.get(..read)?, rest))
}

/// The columns of a tuple already checked by [`tuple`].
fn columns(tuple: &[u8]) -> impl Iterator<Item = Column<'_>> {
    let mut rest = tuple;
    std::iter::from_fn(move || {
        let (column, after) = column(rest.strip_prefix(b" ")?)?;
        rest = after;
        Some(column)
    })
}

/// One ` <name>[<type>]:<value>`, without its leading space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Column<'a> {
    /// As printed (possibly quoted).
    name: &'a [u8],
    value: Value<'a>,
}

/// A column value as `print_literal` printed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Value<'a> {
    Null,
    UnchangedToast,
    /// A bare number, as the type's output printed it.
    Bare(&'a [u8]),
    Bool(bool),
    /// Between `B'` and `'`.
    Bits(&'a [u8]),
    /// Between the quotes, `'` still doubled.
    Quoted(&'a [u8]),
}

impl Value<'_> {
    /// The type's text output; `None` for null and an unchanged TOASTed value (not sent).
    fn text(&self) -> Option<Box<[u8]>> {
        match *self {
            Value::Null | Value::UnchangedToast => None,
            Value::Bare(v) | Value::Bits(v) => Some(Box::from(v)),
            Value::Bool(b) => Some(Box::from(if b { &b"t"[..] } else { b"f" })),
            Value::Quoted(v) => Some(undouble(v)),
        }
    }
}

/// A quoted literal's content with each `''` made one `'`.
fn undouble(v: &[u8]) -> Box<[u8]> {
    let mut out = Vec::with_capacity(v.len());
    let mut after_quote = false;
    for &b in v {
        if b == b'\'' {
            after_quote = !after_quote;
            if !after_quote {
                continue;
            }
        }
        out.push(b);
    }
    out.into_boxed_slice()
}

/// One column at the start of `s`, and what follows it (nothing, or a space).
fn column(s: &[u8]) -> Option<(Column<'_>, &[u8])> {
    let (name, rest) = printed_identifier(s)?;
    let rest = after_type(rest.strip_prefix(b"[")?)?;
    let (value, rest) = value(rest)?;
    (rest.is_empty() || rest.starts_with(b" ")).then_some((Column { name, value }, rest))
}

/// What follows a column's type: `format_type` output up to the first `]:` outside a
/// quoted identifier (a type may be a user's, named with anything).
fn after_type(s: &[u8]) -> Option<&[u8]> {
    let mut rest = s;
    loop {
        match rest {
            [b']', b':', after @ ..] if rest.len() < s.len() => return Some(after),
            [b'"', ..] => (_, rest) = printed_identifier(rest)?,
            [_, after @ ..] => rest = after,
            [] => return None,
        }
    }
}

/// One value at the start of `s`, and what follows it.
fn value(s: &[u8]) -> Option<(Value<'_>, &[u8])> {
    if let Some(quoted) = s.strip_prefix(b"'") {
        let (inner, rest) = quoted_literal(quoted)?;
        return Some((Value::Quoted(inner), rest));
    }
    if let Some(bits) = s.strip_prefix(b"B'") {
        let len = bits.iter().take_while(|b| matches!(b, b'0' | b'1')).count();
        let rest = bits.get(len..)?.strip_prefix(b"'")?;
        return Some((Value::Bits(bits.get(..len)?), rest));
    }
    let len = s.iter().position(|&b| b == b' ').unwrap_or(s.len());
    let (token, rest) = (s.get(..len)?, s.get(len..)?);
    let value = match token {
        b"null" => Value::Null,
        b"unchanged-toast-datum" => Value::UnchangedToast,
        b"true" => Value::Bool(true),
        b"false" => Value::Bool(false),
        // What the integer, float, numeric and oid output functions print (`-7`, `1e+20`,
        // `NaN`, `-Infinity`).
        t if !t.is_empty()
            && t.iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.')) =>
        {
            Value::Bare(t)
        }
        _ => return None,
    };
    Some((value, rest))
}

/// After a literal's opening quote: its content up to the closing quote (`''` is one quote
/// inside), and what follows that quote.
fn quoted_literal(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut i = s.iter().enumerate().peekable();
    loop {
        let (at, &b) = i.next()?;
        if b == b'\'' && i.next_if(|&(_, &n)| n == b'\'').is_none() {
            return Some((s.get(..at)?, s.get(at + 1..)?));
        }
    }
}

/// Collects the tables each transaction changes, from BEGIN to COMMIT, bounded in memory
/// ([`MAX_RELATIONS_PER_TXN`] names of at most [`MAX_NAME_BYTES`] bytes each, and rows
/// within [`MAX_ROWS_PER_RELATION`] and [`MAX_ROW_BYTES_PER_TXN`]).
#[derive(Debug, Default)]
pub struct Collector {
    open: Option<NamedTxn>,
    /// Row bytes the open transaction has kept (never given back: a plain upper bound).
    kept: usize,
}

impl Collector {
    /// A transaction's BEGIN has been seen and its COMMIT not yet.
    pub fn in_transaction(&self) -> bool {
        self.open.is_some()
    }

    /// Feeds the line at WAL position `at`; returns a transaction when one is complete.
    pub fn feed(&mut self, at: Lsn, line: &[u8]) -> Option<NamedTxn> {
        match parse_line(line) {
            Ok(Line::Begin) => {
                match &mut self.open {
                    // A BEGIN inside a transaction (never sent): keep what was collected and
                    // let the eventual commit invalidate everything.
                    Some(txn) => txn.overflowed = true,
                    None => {
                        self.open = Some(NamedTxn {
                            first_lsn: at,
                            ..NamedTxn::default()
                        });
                        self.kept = 0;
                    }
                }
                None
            }
            Ok(Line::Commit { committed_at }) => {
                let mut txn = self.open.take().unwrap_or(NamedTxn {
                    first_lsn: at,
                    ..NamedTxn::default()
                });
                self.kept = 0;
                txn.end_lsn = at;
                txn.committed_at = committed_at.unwrap_or(0);
                Some(txn)
            }
            Ok(Line::Change { tables, row }) => {
                let txn = open_at(&mut self.open, at);
                for table in tables {
                    if txn.overflowed {
                        break;
                    }
                    if txn.tables.len() >= MAX_RELATIONS_PER_TXN && !txn.tables.contains(&table) {
                        txn.overflowed = true;
                        txn.tables.clear();
                        txn.rows.clear();
                        break;
                    }
                    let slot = match txn.rows.get_mut(&table) {
                        Some(slot) => slot,
                        None => txn.rows.entry(table.clone()).or_insert(Some(Vec::new())),
                    };
                    match row {
                        Some((kind, text)) => keep_row(slot, kind, text, &mut self.kept),
                        // A TRUNCATE: every row.
                        None => *slot = None,
                    }
                    txn.tables.insert(table);
                }
                None
            }
            Ok(Line::Message) => None,
            Err(_) if self.open.is_some() => {
                let txn = open_at(&mut self.open, at);
                txn.overflowed = true;
                txn.tables.clear();
                txn.rows.clear();
                None
            }
            Err(_) => Some(NamedTxn {
                first_lsn: at,
                end_lsn: at,
                overflowed: true,
                ..NamedTxn::default()
            }),
        }
    }
}

/// Adds one row change to a table's rows, or makes them unknown when its columns do not
/// parse (or it has no tuple data) or a bound would be passed, charging `kept`.
fn keep_row(slot: &mut Option<Vec<ChangedRow>>, kind: ChangeKind, text: &[u8], kept: &mut usize) {
    let Some(rows) = slot.as_mut() else {
        return;
    };
    let cost = text.len() + std::mem::size_of::<ChangedRow>();
    let held: usize = rows.iter().map(ChangedRow::versions).sum();
    let fits = held + versions(kind, text) <= MAX_ROWS_PER_RELATION
        && kept.saturating_add(cost) <= MAX_ROW_BYTES_PER_TXN;
    if fits && tuples(kind, text).is_some() {
        *kept += cost;
        rows.push(ChangedRow {
            kind,
            columns: Box::from(text),
        });
    } else {
        *slot = None;
    }
}

/// The open transaction (a change outside BEGIN/COMMIT opens one, so nothing is lost),
/// with `at` folded into its first position.
fn open_at(open: &mut Option<NamedTxn>, at: Lsn) -> &mut NamedTxn {
    let txn = open.get_or_insert_with(|| NamedTxn {
        first_lsn: at,
        ..NamedTxn::default()
    });
    // Position 0 is "not given": the walsender sends it for every write but a
    // transaction's last (so a BEGIN that skip-empty-xacts delays to the first change
    // arrives without one). Such a line moves nothing; a transaction with no position at
    // all keeps 0, which no lookup can precede (uncertain).
    if at != Lsn(0) && (txn.first_lsn == Lsn(0) || at < txn.first_lsn) {
        txn.first_lsn = at;
    }
    txn
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(line: &str) -> Vec<QualifiedName> {
        match parse_line(line.as_bytes()) {
            Ok(Line::Change { tables, .. }) => tables,
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn bare_and_quoted_names_parse_exactly() {
        assert_eq!(
            change("table public.t: INSERT: id[integer]:1 v[text]:'a: b'"),
            vec![QualifiedName::new("public", "t")]
        );
        assert_eq!(
            change("table \"My Schema\".\"a.b: c\": UPDATE: id[integer]:1"),
            vec![QualifiedName::new("My Schema", "a.b: c")]
        );
        assert_eq!(
            change("table s_1.\"x\"\"y\": DELETE: id[integer]:1"),
            vec![QualifiedName::new("s_1", "x\"y")]
        );
        assert_eq!(
            change("table public.\"\"\"\": DELETE: (no-tuple-data)"),
            vec![QualifiedName::new("public", "\"")]
        );
        assert_eq!(
            change("table public.\"user\": INSERT: x[int]:1"),
            vec![QualifiedName::new("public", "user")]
        );
        assert_eq!(
            change("table public.\"tée, ü\": INSERT: x[int]:1"),
            vec![QualifiedName::new("public", "tée, ü")]
        );
        assert_eq!(
            change("table public.a, \"S\".\"b, c\", public.\"d: e\": TRUNCATE: (no-flags)"),
            vec![
                QualifiedName::new("public", "a"),
                QualifiedName::new("S", "b, c"),
                QualifiedName::new("public", "d: e"),
            ]
        );
        // The row data is never read: a truncated frame still names its table.
        assert_eq!(
            change("table public.docs: INSERT: id[integer]:1 body[text]:'abc"),
            vec![QualifiedName::new("public", "docs")]
        );
    }

    #[test]
    fn anything_else_is_an_error_not_a_guess() {
        for bad in [
            "",
            "table ",
            "table public: INSERT: x",
            "table public.T: INSERT: x",
            "table Public.t: INSERT: x",
            "table public.\"t: INSERT: x",
            "table public.\"\": INSERT: x",
            "table public.1t: INSERT: x",
            "table public.t INSERT: x",
            "table public.t: MERGE: x",
            "table public.t: INSERT",
            "table public.a, public.b: INSERT: x",
            "table public.t, : TRUNCATE: (no-flags)",
            "BEGIN x",
            "BEGINNING",
            "COMMIT 12 at",
            "opening a streamed block for transaction TXN 1",
            "\u{0}\u{ff}",
        ] {
            assert!(parse_line(bad.as_bytes()).is_err(), "{bad:?}");
        }
        let long = format!("table public.{}: INSERT: x", "a".repeat(64));
        assert_eq!(parse_line(long.as_bytes()), Err(LineError::BadName));
        let long_quoted = format!("table public.\"{}\": INSERT: x", "\"\"".repeat(64));
        assert_eq!(parse_line(long_quoted.as_bytes()), Err(LineError::BadName));
        let ok = format!("table public.{}: INSERT: x", "a".repeat(63));
        assert!(parse_line(ok.as_bytes()).is_ok());
        assert_eq!(
            parse_line(b"table public.\"\xff\": INSERT: x"),
            Err(LineError::BadName)
        );
    }

    #[test]
    fn boundaries_with_and_without_xids_and_timestamps() {
        assert_eq!(parse_line(b"BEGIN"), Ok(Line::Begin));
        assert_eq!(parse_line(b"BEGIN 735"), Ok(Line::Begin));
        assert_eq!(
            parse_line(b"COMMIT"),
            Ok(Line::Commit { committed_at: None })
        );
        assert_eq!(
            parse_line(b"COMMIT 735"),
            Ok(Line::Commit { committed_at: None })
        );
        assert_eq!(
            parse_line(b"COMMIT (at 2000-01-01 00:00:01.5+00)"),
            Ok(Line::Commit {
                committed_at: Some(1_500_000)
            })
        );
        assert_eq!(
            parse_line(b"COMMIT 9 (at 2000-01-01 05:30:00+05:30)"),
            Ok(Line::Commit {
                committed_at: Some(0)
            })
        );
        // Another DateStyle: the commit still counts, without a time.
        assert_eq!(
            parse_line(b"COMMIT (at Sat Jan 01 00:00:00 2000 UTC)"),
            Ok(Line::Commit { committed_at: None })
        );
        assert_eq!(
            parse_line(b"message: transactional: 1 prefix: p, sz: 1 content:x"),
            Ok(Line::Message)
        );
    }

    #[test]
    fn iso_timestamps() {
        assert_eq!(parse_iso_timestamp(b"2000-01-01 00:00:00+00"), Some(0));
        assert_eq!(
            parse_iso_timestamp(b"2026-12-04 20:56:26.123456+00"),
            Some(849_732_986_123_456)
        );
        assert_eq!(
            parse_iso_timestamp(b"1999-12-31 23:00:00-01"),
            Some(0),
            "negative offsets"
        );
        for bad in [
            &b"2000-13-01 00:00:00+00"[..],
            b"2000-01-01 00:00:00",
            b"2000-01-01 00:00:00.1234567+00",
            b"infinity",
            b"2000-01-01T00:00:00+00",
        ] {
            assert_eq!(parse_iso_timestamp(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_transaction_reports_its_tables_and_positions_at_commit() {
        let mut c = Collector::default();
        assert!(c.feed(Lsn(100), b"BEGIN").is_none());
        assert!(c.in_transaction());
        assert!(
            c.feed(Lsn(110), b"table public.a: INSERT: x[int]:1")
                .is_none()
        );
        assert!(
            c.feed(Lsn(120), b"table \"S\".\"b.c\": UPDATE: x[int]:1")
                .is_none()
        );
        assert!(
            c.feed(Lsn(125), b"message: transactional: 1 prefix: p")
                .is_none()
        );
        assert!(
            c.feed(Lsn(130), b"table public.a: DELETE: x[int]:1")
                .is_none()
        );
        let txn = c
            .feed(Lsn(140), b"COMMIT (at 2000-01-01 00:00:00+00)")
            .unwrap();
        assert!(!c.in_transaction());
        assert_eq!(txn.first_lsn, Lsn(100));
        assert_eq!(txn.end_lsn, Lsn(140));
        assert!(!txn.overflowed);
        assert_eq!(
            txn.tables.into_iter().collect::<Vec<_>>(),
            vec![
                QualifiedName::new("S", "b.c"),
                QualifiedName::new("public", "a")
            ]
        );
    }

    #[test]
    fn an_unparsed_line_invalidates_everything_never_nothing() {
        let mut c = Collector::default();
        c.feed(Lsn(1), b"BEGIN");
        c.feed(Lsn(2), b"table public.a: INSERT: x[int]:1");
        c.feed(Lsn(3), b"table public.Broken: INSERT: x[int]:1");
        c.feed(Lsn(4), b"table public.b: INSERT: x[int]:1");
        let txn = c.feed(Lsn(5), b"COMMIT").unwrap();
        assert!(txn.overflowed);
        // Outside a transaction: an overflowed transaction of its own, at once.
        let alone = c.feed(Lsn(6), b"something new").unwrap();
        assert!(alone.overflowed);
        assert_eq!(alone.end_lsn, Lsn(6));
        assert!(!c.in_transaction());
        // A BEGIN inside a transaction: the eventual commit invalidates everything.
        c.feed(Lsn(7), b"BEGIN");
        c.feed(Lsn(8), b"BEGIN");
        assert!(c.feed(Lsn(9), b"COMMIT").unwrap().overflowed);
        // The walsender gives a BEGIN delayed by skip-empty-xacts position 0: the first
        // change's position counts.
        c.feed(Lsn(0), b"BEGIN");
        c.feed(Lsn(20), b"table public.a: INSERT: x[int]:1");
        c.feed(Lsn(0), b"table public.b: INSERT: x[int]:1");
        c.feed(Lsn(30), b"table public.b: INSERT: x[int]:1");
        assert_eq!(c.feed(Lsn(40), b"COMMIT").unwrap().first_lsn, Lsn(20));
        c.feed(Lsn(0), b"BEGIN");
        c.feed(Lsn(0), b"table public.a: INSERT: x[int]:1");
        assert_eq!(c.feed(Lsn(50), b"COMMIT").unwrap().first_lsn, Lsn(0));
        // A change outside BEGIN opens a transaction; its first position is the change's.
        c.feed(Lsn(10), b"table public.a: INSERT: x[int]:1");
        let implicit = c.feed(Lsn(11), b"COMMIT").unwrap();
        assert_eq!(implicit.first_lsn, Lsn(10));
        assert_eq!(implicit.tables.len(), 1);
    }

    #[test]
    fn huge_transactions_overflow_instead_of_growing() {
        let mut c = Collector::default();
        c.feed(Lsn(1), b"BEGIN");
        for i in 0..=MAX_RELATIONS_PER_TXN {
            let line = format!("table public.t{i}: INSERT: x[int]:1");
            c.feed(Lsn(2), line.as_bytes());
        }
        let txn = c.feed(Lsn(3), b"COMMIT").unwrap();
        assert!(txn.overflowed);
        assert!(txn.tables.is_empty());
    }

    /// The one transaction `lines` make (between BEGIN and COMMIT).
    fn txn(lines: &[&str]) -> NamedTxn {
        let mut c = Collector::default();
        c.feed(Lsn(1), b"BEGIN");
        for line in lines {
            assert!(c.feed(Lsn(2), line.as_bytes()).is_none());
        }
        c.feed(Lsn(3), b"COMMIT").unwrap()
    }

    fn rows_of(txn: &NamedTxn, table: &str) -> Option<Vec<ChangedRow>> {
        txn.rows
            .get(&QualifiedName::new("public", table))
            .expect("the table has rows or None")
            .clone()
    }

    /// The key values of the single row one line carries, as text.
    fn keys(line: &str, key: &[&str]) -> Option<Vec<Vec<String>>> {
        let txn = txn(&[line]);
        assert!(!txn.overflowed, "{line}");
        let rows = rows_of(&txn, "t")?;
        let [row] = rows.as_slice() else {
            panic!("{line}: {rows:?}")
        };
        let versions = key_values(row, key)?;
        Some(
            versions
                .iter()
                .map(|v| {
                    v.iter()
                        .map(|b| String::from_utf8(b.to_vec()).unwrap())
                        .collect()
                })
                .collect(),
        )
    }

    fn one(values: &[&str]) -> Option<Vec<Vec<String>>> {
        Some(vec![values.iter().map(|v| v.to_string()).collect()])
    }

    #[test]
    fn each_change_form_gives_its_row_versions_keys() {
        let insert = "table public.t: INSERT: id[integer]:5 name[text]:'a''b' \
                      v[character varying]:'x' u[uuid]:'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'";
        assert_eq!(keys(insert, &["id"]), one(&["5"]));
        assert_eq!(keys(insert, &["name", "id"]), one(&["a'b", "5"]));
        assert_eq!(
            keys(insert, &["u", "v"]),
            one(&["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "x"])
        );
        assert_eq!(keys(insert, &["nope"]), None);
        assert_eq!(keys(insert, &[]), None);
        // Key unchanged (REPLICA IDENTITY DEFAULT): the new tuple only.
        assert_eq!(
            keys(
                "table public.t: UPDATE: id[integer]:5 name[text]:'x'",
                &["id"]
            ),
            one(&["5"])
        );
        // Key changed: the old key, then the new tuple.
        let moved = "table public.t: UPDATE: old-key: id[integer]:4 new-tuple: id[integer]:5 name[text]:'x'";
        assert_eq!(
            keys(moved, &["id"]),
            Some(vec![vec!["4".to_string()], vec!["5".to_string()]])
        );
        assert_eq!(
            keys("table public.t: DELETE: id[integer]:-5", &["id"]),
            one(&["-5"])
        );
        let txn = txn(&[moved]);
        let rows = rows_of(&txn, "t").unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows.first().unwrap().kind, ChangeKind::Update);
        assert_eq!(rows.first().unwrap().versions(), 2);
        assert_eq!(
            &*rows.first().unwrap().columns,
            &b" old-key: id[integer]:4 new-tuple: id[integer]:5 name[text]:'x'"[..]
        );
    }

    #[test]
    fn names_types_and_values_are_read_exactly() {
        let line = "table public.t: INSERT: \"My Col\"[character varying]:'v w' \
                    \"a[b]:c\"[integer[]]:'{1,2}' \
                    \"x\"\"y\"[timestamp with time zone]:'2024-01-01 00:00:00+00' \
                    id2[bigint]:7 id[bigint]:-7 \"t\"[public.\"my]:type\"]:'z' \
                    b[boolean]:true c[boolean]:false bits[bit varying]:B'0101' \
                    f[double precision]:1e+20 n[numeric]:NaN q[text]:'it''s ''quoted''' \
                    e[text]:'' s[text]:' new-tuple: x[int]:1' \"null\"[text]:'null'";
        let cases: &[(&[&str], &[&str])] = &[
            (&["My Col"], &["v w"]),
            (&["a[b]:c"], &["{1,2}"]),
            (&["x\"y"], &["2024-01-01 00:00:00+00"]),
            // A name that is a prefix of another's.
            (&["id"], &["-7"]),
            (&["id2"], &["7"]),
            (&["t"], &["z"]),
            (&["b", "c"], &["t", "f"]),
            (&["bits"], &["0101"]),
            (&["f", "n"], &["1e+20", "NaN"]),
            (&["q"], &["it's 'quoted'"]),
            (&["e"], &[""]),
            (&["s"], &[" new-tuple: x[int]:1"]),
            (&["null"], &["null"]),
        ];
        for (key, want) in cases {
            assert_eq!(keys(line, key), one(want), "{key:?}");
        }
        // A literal holding ` new-tuple:` inside an old key.
        let moved = "table public.t: UPDATE: old-key: k[text]:'a new-tuple: b' new-tuple: \
                     k[text]:'c'";
        assert_eq!(
            keys(moved, &["k"]),
            Some(vec![
                vec!["a new-tuple: b".to_string()],
                vec!["c".to_string()]
            ])
        );
        // No columns printed in the old key (all null), or none in the table.
        assert_eq!(
            keys(
                "table public.t: UPDATE: old-key: new-tuple: k[text]:'c'",
                &["k"]
            ),
            None
        );
        assert_eq!(keys("table public.t: INSERT:", &["k"]), None);
        let empty = txn(&["table public.t: INSERT:"]);
        assert_eq!(rows_of(&empty, "t").map(|r| r.len()), Some(1));
    }

    #[test]
    fn a_missing_null_or_unsent_key_is_unknown() {
        assert_eq!(
            keys(
                "table public.t: INSERT: id[integer]:null v[text]:'a'",
                &["id"]
            ),
            None
        );
        let toast = "table public.t: UPDATE: id[integer]:1 big[text]:unchanged-toast-datum";
        assert_eq!(keys(toast, &["big"]), None);
        assert_eq!(keys(toast, &["id"]), one(&["1"]));
        assert_eq!(keys(toast, &["id", "big"]), None);
        // A DELETE's tuple leaves null columns out.
        assert_eq!(
            keys("table public.t: DELETE: a[integer]:1", &["a", "b"]),
            None
        );
        // The same name printed twice is not understood.
        assert_eq!(
            keys("table public.t: INSERT: a[integer]:1 a[integer]:2", &["a"]),
            None
        );
    }

    #[test]
    fn rows_not_understood_are_unknown_without_overflowing() {
        for line in [
            "table public.t: DELETE: (no-tuple-data)",
            "table public.t: INSERT: (no-tuple-data)",
            "table public.t: UPDATE: (no-tuple-data)",
            "table public.t: UPDATE: old-key: id[integer]:1 new-tuple: (no-tuple-data)",
            "table public.t: UPDATE: old-key: id[integer]:1",
            "table public.t: INSERT: id[integer]:1 body[text]:'abc",
            "table public.t: INSERT: x",
            "table public.t: INSERT: id[integer]:1  v[text]:'a'",
            "table public.t: INSERT: id[integer]:1 ",
            "table public.t: INSERT: id[integer]:1x'",
            "table public.t: INSERT: id[integer]:'1'x",
            "table public.t: INSERT: id[integer:1",
            "table public.t: INSERT: id[]:1",
            "table public.t: INSERT: Id[integer]:1",
            "table public.t: INSERT: id[integer]:",
            "table public.t: INSERT: b[bit]:B'012'",
            "table public.t: INSERT: t[\"a]:1",
            "table public.t: INSERT:id[integer]:1",
        ] {
            let txn = txn(&[
                "table public.u: INSERT: id[integer]:1",
                line,
                "table public.t: INSERT: id[integer]:2",
            ]);
            assert!(!txn.overflowed, "{line}");
            assert!(
                txn.tables.contains(&QualifiedName::new("public", "t")),
                "{line}"
            );
            assert_eq!(rows_of(&txn, "t"), None, "{line}");
            assert_eq!(rows_of(&txn, "u").map(|r| r.len()), Some(1), "{line}");
        }
        // A TRUNCATE: every row, whatever came before or after.
        let txn = txn(&[
            "table public.t: INSERT: id[integer]:1",
            "table public.t, public.u: TRUNCATE: (no-flags)",
            "table public.t: INSERT: id[integer]:2",
        ]);
        assert_eq!(rows_of(&txn, "t"), None);
        assert_eq!(rows_of(&txn, "u"), None);
        // A line the name parser refuses still overflows, rows and all.
        let broken = txn_unchecked(&[
            "table public.t: INSERT: id[integer]:1",
            "table public.Bad: INSERT: id[integer]:1",
        ]);
        assert!(broken.overflowed);
        assert!(broken.rows.is_empty());
    }

    fn txn_unchecked(lines: &[&str]) -> NamedTxn {
        let mut c = Collector::default();
        c.feed(Lsn(1), b"BEGIN");
        for line in lines {
            c.feed(Lsn(2), line.as_bytes());
        }
        c.feed(Lsn(3), b"COMMIT").unwrap()
    }

    #[test]
    fn rows_are_bounded_per_table_and_per_transaction() {
        let insert =
            |table: &str, i: usize| format!("table public.{table}: INSERT: id[integer]:{i}");
        let lines: Vec<String> = (0..MAX_ROWS_PER_RELATION)
            .map(|i| insert("a", i))
            .chain((0..=MAX_ROWS_PER_RELATION).map(|i| insert("b", i)))
            .chain(std::iter::once(insert("c", 0)))
            .collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let t = txn(&refs);
        assert_eq!(
            rows_of(&t, "a").map(|r| r.len()),
            Some(MAX_ROWS_PER_RELATION)
        );
        assert_eq!(rows_of(&t, "b"), None);
        assert_eq!(rows_of(&t, "c").map(|r| r.len()), Some(1));
        assert!(!t.overflowed);
        // An UPDATE of the key counts two versions.
        let moved = "table public.a: UPDATE: old-key: id[integer]:1 new-tuple: id[integer]:2";
        let half: Vec<&str> = std::iter::repeat_n(moved, MAX_ROWS_PER_RELATION / 2).collect();
        assert!(rows_of(&txn(&half), "a").is_some());
        let over: Vec<&str> = std::iter::repeat_n(moved, MAX_ROWS_PER_RELATION / 2)
            .chain(std::iter::once("table public.a: INSERT: id[integer]:3"))
            .collect();
        assert_eq!(rows_of(&txn(&over), "a"), None);
        // Bytes: two rows of 100 KiB fit, a third (any table's) does not; a small one still
        // fits what is left.
        let big = |table: &str| {
            format!(
                "table public.{table}: INSERT: id[integer]:1 v[text]:'{}'",
                "x".repeat(100 * 1024)
            )
        };
        let (a, b) = (big("a"), big("b"));
        let small = insert("c", 1);
        let t = txn(&[&a, &a, &b, &small]);
        assert_eq!(rows_of(&t, "a").map(|r| r.len()), Some(2));
        assert_eq!(rows_of(&t, "b"), None);
        assert_eq!(rows_of(&t, "c").map(|r| r.len()), Some(1));
        let t = txn(&[&a, &a, &a]);
        assert_eq!(rows_of(&t, "a"), None);
        // The budget is per transaction.
        let mut c = Collector::default();
        for _ in 0..3 {
            c.feed(Lsn(1), b"BEGIN");
            c.feed(Lsn(2), a.as_bytes());
            c.feed(Lsn(2), a.as_bytes());
            let t = c.feed(Lsn(3), b"COMMIT").unwrap();
            assert_eq!(rows_of(&t, "a").map(|r| r.len()), Some(2));
        }
    }
}
