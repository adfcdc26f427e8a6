//! The `test_decoding` output plugin's text lines (it ships with PostgreSQL and needs no
//! publication, so it never makes a client's UPDATE or DELETE fail), reduced to what
//! invalidation needs: transaction boundaries, the commit time, and the qualified names of
//! the tables each transaction changed. Row contents are never looked at.
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

use std::collections::BTreeSet;

use super::pgoutput::MAX_RELATIONS_PER_TXN;
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
pub enum Line {
    Begin,
    Commit {
        /// Microseconds since 2000-01-01 UTC, when the line carried an ISO timestamp.
        committed_at: Option<i64>,
    },
    /// A row change (one table) or a TRUNCATE (one or more).
    Change {
        tables: Vec<QualifiedName>,
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
pub fn parse_line(line: &[u8]) -> Result<Line, LineError> {
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
fn parse_commit(rest: &[u8]) -> Result<Line, LineError> {
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
fn parse_change(rest: &[u8]) -> Result<Line, LineError> {
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
    match action {
        b"INSERT" | b"UPDATE" | b"DELETE" if tables.len() == 1 => Ok(Line::Change { tables }),
        b"TRUNCATE" => Ok(Line::Change { tables }),
        _ => Err(LineError::Unrecognised),
    }
}

/// `<schema>.<name>` at the start of `s`; returns it and what follows.
fn qualified(s: &[u8]) -> Result<(QualifiedName, &[u8]), LineError> {
    let (schema, rest) = identifier(s)?;
    let rest = rest.strip_prefix(b".").ok_or(LineError::BadName)?;
    let (name, rest) = identifier(rest)?;
    Ok((QualifiedName { schema, name }, rest))
}

/// One identifier as `quote_identifier` prints it, at the start of `s`.
fn identifier(s: &[u8]) -> Result<(String, &[u8]), LineError> {
    let (raw, rest) = if let Some(quoted) = s.strip_prefix(b"\"") {
        let mut out = Vec::new();
        let mut i = quoted.iter().enumerate().peekable();
        let mut end = None;
        while let Some((at, &b)) = i.next() {
            if b != b'"' {
                out.push(b);
            } else if i.peek().is_some_and(|&(_, &n)| n == b'"') {
                // `""` is one quote inside the name.
                out.push(b'"');
                i.next();
            } else {
                end = Some(at + 1);
                break;
            }
            if out.len() > MAX_NAME_BYTES {
                return Err(LineError::BadName);
            }
        }
        let end = end.ok_or(LineError::BadName)?;
        (out, quoted.get(end..).unwrap_or_default())
    } else {
        // Bare: exactly the bytes quote_identifier leaves unquoted.
        let len = s
            .iter()
            .take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || **b == b'_')
            .count();
        let bare = s.get(..len).unwrap_or_default();
        if bare.first().is_some_and(u8::is_ascii_digit) {
            return Err(LineError::BadName);
        }
        (bare.to_vec(), s.get(len..).unwrap_or_default())
    };
    if raw.is_empty() || raw.len() > MAX_NAME_BYTES {
        return Err(LineError::BadName);
    }
    // Names are looked up again as text: one that is not UTF-8 (a database in another
    // encoding) cannot be matched with certainty.
    let name = String::from_utf8(raw).map_err(|_| LineError::BadName)?;
    Ok((name, rest))
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
    /// It touched more than [`MAX_RELATIONS_PER_TXN`] tables, or a line did not parse:
    /// treat as "everything".
    pub overflowed: bool,
}

/// Collects the tables each transaction changes, from BEGIN to COMMIT, bounded in memory
/// ([`MAX_RELATIONS_PER_TXN`] names of at most [`MAX_NAME_BYTES`] bytes each).
#[derive(Debug, Default)]
pub struct Collector {
    open: Option<NamedTxn>,
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
                    }
                }
                None
            }
            Ok(Line::Commit { committed_at }) => {
                let mut txn = self.open.take().unwrap_or(NamedTxn {
                    first_lsn: at,
                    ..NamedTxn::default()
                });
                txn.end_lsn = at;
                txn.committed_at = committed_at.unwrap_or(0);
                Some(txn)
            }
            Ok(Line::Change { tables }) => {
                let txn = self.open_at(at);
                for table in tables {
                    if txn.overflowed {
                        break;
                    }
                    if txn.tables.len() >= MAX_RELATIONS_PER_TXN && !txn.tables.contains(&table) {
                        txn.overflowed = true;
                        txn.tables.clear();
                        break;
                    }
                    txn.tables.insert(table);
                }
                None
            }
            Ok(Line::Message) => None,
            Err(_) if self.open.is_some() => {
                let txn = self.open_at(at);
                txn.overflowed = true;
                txn.tables.clear();
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

    /// The open transaction (a change outside BEGIN/COMMIT opens one, so nothing is lost),
    /// with `at` folded into its first position.
    fn open_at(&mut self, at: Lsn) -> &mut NamedTxn {
        let txn = self.open.get_or_insert_with(|| NamedTxn {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(line: &str) -> Vec<QualifiedName> {
        match parse_line(line.as_bytes()) {
            Ok(Line::Change { tables }) => tables,
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
}
