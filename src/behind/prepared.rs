//! The named statements a flusher's connection keeps for queued INSERTs, so that the
//! thousands of writes of one text in a batch are parsed and planned once per connection
//! rather than once each (the database's cost of a queued write is then a Bind and an
//! Execute, as for the client's own prepared statement).
//!
//! A statement is only ever bound under exactly the role, search_path and recorded settings
//! it was parsed under: all three are in its key. PostgreSQL re-analyses a cached plan when
//! the search_path or the table changes, but literals are converted at Parse and are not
//! re-read when `TimeZone`, `DateStyle`, `standard_conforming_strings` and the like change:
//! `'2025-01-01 10:00'` parsed under one session's time zone must not be bound for another's.
//!
//! A name is given once and never again on a connection: a Parse skipped because an earlier
//! statement of its batch failed leaves no statement behind, one that ran does, so names of
//! a batch that did not commit are closed (a Close of a name that does not exist is not an
//! error) and never reused. Bounded in count and in bytes; past the bound statements are
//! parsed unnamed, as before.

use std::collections::HashMap;

use bytes::Bytes;

use super::entry::Entry;

/// At most this many named statements per connection.
const MAX_STATEMENTS: usize = 256;
/// And at most this many bytes of their texts.
const MAX_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    sql: Bytes,
    types: Bytes,
    role: String,
    search_path: String,
    settings: Vec<(String, String)>,
}

impl Key {
    fn weight(&self) -> usize {
        let settings: usize = self.settings.iter().map(|(n, v)| n.len() + v.len()).sum();
        self.sql.len() + self.types.len() + self.role.len() + self.search_path.len() + settings
    }
}

/// What a batch does with one statement text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Use {
    /// Bind to a statement the connection already has.
    Bound(String),
    /// Parse it under this name first (the batch's first use of the text).
    Parse(String),
    /// Parse it unnamed (the cache is full).
    Unnamed,
}

/// One connection's named statements.
#[derive(Debug, Default)]
pub struct Prepared {
    known: HashMap<Key, String>,
    /// Parsed by the batch being built or sent; known once it commits.
    tentative: Vec<(Key, String)>,
    /// Names of batches that did not commit, to close before the next one.
    closing: Vec<String>,
    bytes: usize,
    next: u64,
}

impl Prepared {
    /// How the batch being built runs `sql` with parameter `types` as the entry `e` says
    /// (role, search_path, recorded settings).
    pub fn lookup(&mut self, sql: &Bytes, types: &Bytes, e: &Entry) -> Use {
        let key = Key {
            sql: sql.clone(),
            types: types.clone(),
            role: e.role.clone(),
            search_path: e.search_path.clone(),
            settings: e.settings.clone(),
        };
        if let Some(name) = self.known.get(&key) {
            return Use::Bound(name.clone());
        }
        if let Some((_, name)) = self.tentative.iter().find(|(k, _)| *k == key) {
            return Use::Bound(name.clone());
        }
        let weight = key.weight();
        let count = self.known.len() + self.tentative.len();
        if count >= MAX_STATEMENTS || self.bytes + weight > MAX_BYTES {
            return Use::Unnamed;
        }
        self.next += 1;
        let name = format!("pgmemo_behind_{}", self.next);
        self.bytes += weight;
        self.tentative.push((key, name.clone()));
        Use::Parse(name)
    }

    /// The names to close before the next batch (taken: they are sent with it).
    pub fn take_closing(&mut self) -> Vec<String> {
        std::mem::take(&mut self.closing)
    }

    /// The batch committed: every statement it parsed exists.
    pub fn committed(&mut self) {
        for (key, name) in self.tentative.drain(..) {
            self.known.insert(key, name);
        }
    }

    /// The batch did not commit: its statements may or may not exist; close them.
    pub fn failed(&mut self) {
        for (key, name) in self.tentative.drain(..) {
            self.bytes = self.bytes.saturating_sub(key.weight());
            self.closing.push(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    /// An entry as `role` under `path` with `settings`.
    fn as_(role: &str, path: &str, settings: &[(&str, &str)]) -> Entry {
        let mut e = Entry::placeholder("d");
        e.role = role.to_owned();
        e.search_path = path.to_owned();
        e.settings = settings
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        e
    }

    #[test]
    fn a_text_is_parsed_once_then_bound() {
        let mut p = Prepared::default();
        let (s, t) = (sql("INSERT INTO t VALUES ($1)"), Bytes::new());
        let Use::Parse(name) = p.lookup(&s, &t, &as_("r", "public", &[])) else {
            panic!("first use parses");
        };
        assert_eq!(
            p.lookup(&s, &t, &as_("r", "public", &[])),
            Use::Bound(name.clone())
        );
        p.committed();
        assert_eq!(p.lookup(&s, &t, &as_("r", "public", &[])), Use::Bound(name));
    }

    #[test]
    fn another_role_search_path_setting_or_types_is_another_statement() {
        let mut p = Prepared::default();
        let s = sql("INSERT INTO t VALUES ($1)");
        let a = p.lookup(&s, &Bytes::new(), &as_("r", "public", &[]));
        let b = p.lookup(&s, &Bytes::new(), &as_("r", "other", &[]));
        let c = p.lookup(
            &s,
            &Bytes::from_static(&[0, 0, 0, 23]),
            &as_("r", "public", &[]),
        );
        let d = p.lookup(&s, &Bytes::new(), &as_("w", "public", &[]));
        let tokyo = as_("r", "public", &[("timezone", "Asia/Tokyo")]);
        let e = p.lookup(&s, &Bytes::new(), &tokyo);
        let names: std::collections::HashSet<String> = [a, b, c, d, e]
            .into_iter()
            .map(|u| match u {
                Use::Parse(n) => n,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(names.len(), 5);
    }

    #[test]
    fn names_of_a_failed_batch_are_closed_and_never_reused() {
        let mut p = Prepared::default();
        let s = sql("INSERT INTO t VALUES ($1)");
        let Use::Parse(first) = p.lookup(&s, &Bytes::new(), &as_("r", "public", &[])) else {
            panic!()
        };
        p.failed();
        assert_eq!(p.take_closing(), vec![first.clone()]);
        assert!(p.take_closing().is_empty());
        let Use::Parse(second) = p.lookup(&s, &Bytes::new(), &as_("r", "public", &[])) else {
            panic!("parsed again after a failed batch")
        };
        assert_ne!(first, second);
    }

    #[test]
    fn past_the_bound_statements_are_unnamed() {
        let mut p = Prepared::default();
        for i in 0..MAX_STATEMENTS {
            let s = Bytes::from(format!("INSERT INTO t VALUES ({i})"));
            assert!(matches!(
                p.lookup(&s, &Bytes::new(), &as_("r", "", &[])),
                Use::Parse(_)
            ));
        }
        p.committed();
        let s = sql("INSERT INTO t VALUES (-1)");
        assert_eq!(
            p.lookup(&s, &Bytes::new(), &as_("r", "", &[])),
            Use::Unnamed
        );
        let big = Bytes::from(vec![b'x'; MAX_BYTES + 1]);
        assert_eq!(
            Prepared::default().lookup(&big, &Bytes::new(), &as_("r", "", &[])),
            Use::Unnamed
        );
    }
}
