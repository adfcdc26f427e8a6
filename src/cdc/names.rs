//! Turning the relation names `test_decoding` prints into the OIDs the cache's tags carry,
//! only when the answer is certain; otherwise the caller invalidates the whole cache.
//!
//! The problem: a name in the stream is the one the relation had when the change was made
//! (the decoder reads the catalog as of that WAL position), but pgmemo can only look names
//! up in the catalog as it is *now*. Between the two the relation may have been renamed or
//! dropped and the name given to another relation (or its schema renamed and another schema
//! given the old name); a plain lookup would then invalidate the wrong relation and leave
//! the written one stale.
//!
//! The rule. pgmemo observes bindings in its own catalog queries: a binding is the
//! `pg_class` row version of the relation (OID and `xmin`) and the `pg_namespace` row
//! version of its schema, observed in one statement's snapshot together with
//! `pg_current_wal_insert_lsn()` read during that statement (so after its snapshot was
//! taken). A name in a transaction `T` maps to OID `X` with certainty when
//! 1. an earlier observation at insert position `L` saw the name bound to exactly these row
//!    versions, with `L <= first(T)`, the smallest WAL position of `T`'s changes, and
//! 2. an observation made after `T` was decoded sees the same row versions still live.
//!
//! Why that is enough: (1) the rows were created by transactions visible in a snapshot
//! whose insert position was then `L`, so their commit records precede `L <= first(T)`: the
//! decoder's catalog at each of `T`'s changes includes them. (2) They are still live after
//! `T`, so no transaction committed in between deleted them (a rename or drop writes a new
//! row version or deletes the row; a row version is never re-created with the same `xmin`).
//! A relation name is unique per schema among live rows, so at each change of `T` the name
//! denoted exactly `X`. Anything else (a name never observed early enough, a row version
//! that changed — including `T`'s own `TRUNCATE` or DDL, which write a new `pg_class`
//! version — a name that no longer exists, the side connection down) is uncertain, and the
//! transaction bumps the epoch: conservative, never stale. Each observation made to check a
//! transaction also records new bindings, so a relation created while pgmemo runs costs one
//! whole-cache invalidation (its first write), not one per write; the relations that exist
//! when the stream starts are observed before its slot is created.
//!
//! Not covered: a transaction whose commit record is written but not yet visible (a commit
//! waiting for a synchronous standby) that renames a schema whose tables pgmemo's lookup
//! then finds under the old name. A table rename or drop cannot hide that way: it holds an
//! exclusive lock on the table until it is visible, so no later change can name it.

use std::collections::{BTreeSet, HashMap};

use super::test_decoding::{NamedTxn, QualifiedName};
use super::wire::Lsn;

/// Bindings remembered per database (about 200 bytes each); past it the map starts over,
/// which only makes the next transactions uncertain.
pub const MAX_NAMES: usize = 10_000;

/// The catalog row versions a name resolved to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    pub oid: u32,
    pub class_xmin: u32,
    pub ns_oid: u32,
    pub ns_xmin: u32,
}

/// One observation query's answer: each name found, its binding, and the server's WAL
/// insert position read after the query's snapshot was taken.
#[derive(Debug, Default)]
pub struct Observation {
    pub rows: Vec<(QualifiedName, Binding, Lsn)>,
}

impl Observation {
    /// The bindings as they are now.
    pub fn current(&self) -> HashMap<&QualifiedName, Binding> {
        self.rows.iter().map(|(n, b, _)| (n, *b)).collect()
    }
}

/// Why a transaction's names could not be mapped.
#[derive(Debug, PartialEq, Eq)]
pub enum Uncertain {
    /// Not observed before the transaction's first change (new, or not yet looked up).
    NotObservedBefore(QualifiedName),
    /// No relation has the name now, or it is bound to other row versions.
    Changed(QualifiedName),
    /// The check could not be made (no side connection, query failed).
    NoObservation,
}

impl std::fmt::Display for Uncertain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotObservedBefore(n) => write!(f, "{n} was not looked up before the change"),
            Self::Changed(n) => write!(f, "{n} was renamed, dropped or altered since"),
            Self::NoObservation => f.write_str("the catalog could not be read"),
        }
    }
}

/// Observed bindings of one database, each with the earliest insert position at which it
/// was seen (bounded by [`MAX_NAMES`]).
#[derive(Debug, Default)]
pub struct NameMap {
    entries: HashMap<QualifiedName, (Binding, Lsn)>,
}

impl NameMap {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The OIDs `txn` changed, if certain; `now` is an observation made after `txn` was
    /// decoded (`None` when it could not be made).
    pub fn resolve(
        &self,
        txn: &NamedTxn,
        now: Option<&HashMap<&QualifiedName, Binding>>,
    ) -> Result<BTreeSet<u32>, Uncertain> {
        let mut oids = BTreeSet::new();
        if txn.tables.is_empty() {
            return Ok(oids);
        }
        let now = now.ok_or(Uncertain::NoObservation)?;
        for name in &txn.tables {
            let Some(&(binding, seen_at)) = self.entries.get(name) else {
                return Err(Uncertain::NotObservedBefore(name.clone()));
            };
            if seen_at == Lsn(0) || seen_at > txn.first_lsn {
                return Err(Uncertain::NotObservedBefore(name.clone()));
            }
            if now.get(name) != Some(&binding) {
                return Err(Uncertain::Changed(name.clone()));
            }
            oids.insert(binding.oid);
        }
        Ok(oids)
    }

    /// The OID `name` is bound to (after [`resolve`](Self::resolve) found it certain).
    pub fn bound_oid(&self, name: &QualifiedName) -> Option<u32> {
        self.entries.get(name).map(|(binding, _)| binding.oid)
    }

    /// Records `obs`: a binding already known keeps its earlier position, a new or changed
    /// one is remembered from this observation's.
    pub fn record(&mut self, obs: &Observation) {
        for (name, binding, at) in &obs.rows {
            match self.entries.get(name) {
                Some((known, _)) if known == binding => {}
                _ => {
                    if self.entries.len() >= MAX_NAMES && !self.entries.contains_key(name) {
                        self.entries.clear();
                    }
                    self.entries.insert(name.clone(), (*binding, *at));
                }
            }
        }
    }
}

/// Every table and partition, for the map's first observation (made before the slot is
/// created, so it precedes every transaction the stream will carry).
const OBSERVE_ALL: &str = "SELECT n.nspname::text, c.relname::text, c.oid, c.xmin::text, \
       n.oid, n.xmin::text, pg_catalog.pg_current_wal_insert_lsn()::text \
     FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind IN ('r', 'p', 'm') AND c.relpersistence = 'p' \
     LIMIT 10000";

/// The named relations (schemas and names as two parallel text arrays).
const OBSERVE_NAMED: &str = "SELECT n.nspname::text, c.relname::text, c.oid, c.xmin::text, \
       n.oid, n.xmin::text, pg_catalog.pg_current_wal_insert_lsn()::text \
     FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[])) \
       AS w(nsp, rel) \
     JOIN pg_catalog.pg_namespace n ON n.nspname = w.nsp::name \
     JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = w.rel::name";

#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error("{}", server_message(.0))]
    Query(#[from] tokio_postgres::Error),
    #[error("unexpected value in the catalog lookup: {0}")]
    Value(&'static str),
}

/// The server's own message when there is one (tokio-postgres displays only "db error").
fn server_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map_or_else(|| e.to_string(), |d| d.message().to_owned())
}

/// Observes `names`, or every table when `None`.
pub async fn observe(
    client: &tokio_postgres::Client,
    names: Option<&[&QualifiedName]>,
) -> Result<Observation, ObserveError> {
    let rows = match names {
        None => client.query(OBSERVE_ALL, &[]).await?,
        Some(names) => {
            let schemas: Vec<&str> = names.iter().map(|n| n.schema.as_str()).collect();
            let rels: Vec<&str> = names.iter().map(|n| n.name.as_str()).collect();
            client.query(OBSERVE_NAMED, &[&schemas, &rels]).await?
        }
    };
    let mut obs = Observation::default();
    for row in rows {
        let xid = |i: usize| -> Result<u32, ObserveError> {
            row.try_get::<_, &str>(i)?
                .parse::<u32>()
                .map_err(|_| ObserveError::Value("xmin"))
        };
        let binding = Binding {
            oid: row.try_get(2)?,
            class_xmin: xid(3)?,
            ns_oid: row.try_get(4)?,
            ns_xmin: xid(5)?,
        };
        let at: Lsn = row
            .try_get::<_, &str>(6)?
            .parse()
            .map_err(|_| ObserveError::Value("lsn"))?;
        let name = QualifiedName {
            schema: row.try_get(0)?,
            name: row.try_get(1)?,
        };
        obs.rows.push((name, binding, at));
    }
    Ok(obs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(oid: u32, xmin: u32) -> Binding {
        Binding {
            oid,
            class_xmin: xmin,
            ns_oid: 2200,
            ns_xmin: 1,
        }
    }

    fn txn(first: u64, names: &[&str]) -> NamedTxn {
        NamedTxn {
            first_lsn: Lsn(first),
            end_lsn: Lsn(first + 10),
            tables: names
                .iter()
                .map(|n| QualifiedName::new("public", n))
                .collect(),
            ..NamedTxn::default()
        }
    }

    fn obs(rows: &[(&str, Binding, u64)]) -> Observation {
        Observation {
            rows: rows
                .iter()
                .map(|(n, b, at)| (QualifiedName::new("public", n), *b, Lsn(*at)))
                .collect(),
        }
    }

    #[test]
    fn a_binding_observed_before_the_change_and_unchanged_after_is_certain() {
        let mut map = NameMap::default();
        map.record(&obs(&[("a", b(10, 5), 100), ("b", b(11, 6), 100)]));
        let now = obs(&[("a", b(10, 5), 300), ("b", b(11, 6), 300)]);
        let got = map.resolve(&txn(150, &["a", "b"]), Some(&now.current()));
        assert_eq!(got, Ok([10, 11].into()));
        // Observed only after the change: not certain (it may have been renamed in between).
        assert_eq!(
            map.resolve(&txn(99, &["a"]), Some(&now.current())),
            Err(Uncertain::NotObservedBefore(QualifiedName::new(
                "public", "a"
            )))
        );
    }

    #[test]
    fn a_name_moved_to_another_relation_is_never_trusted() {
        let mut map = NameMap::default();
        map.record(&obs(&[("a", b(10, 5), 100)]));
        // `a` was dropped and re-created (new OID), or renamed away and another relation
        // renamed to `a` (new row version), or altered (new xmin): all uncertain.
        for now in [
            obs(&[("a", b(12, 9), 300)]),
            obs(&[("a", b(10, 9), 300)]),
            obs(&[]),
        ] {
            assert_eq!(
                map.resolve(&txn(150, &["a"]), Some(&now.current())),
                Err(Uncertain::Changed(QualifiedName::new("public", "a")))
            );
        }
        // A renamed schema: the namespace row version differs.
        let mut moved = b(10, 5);
        moved.ns_xmin = 77;
        let now = obs(&[("a", moved, 300)]);
        assert!(
            map.resolve(&txn(150, &["a"]), Some(&now.current()))
                .is_err()
        );
        assert_eq!(
            map.resolve(&txn(150, &["a"]), None),
            Err(Uncertain::NoObservation)
        );
        // Never observed at all.
        assert!(
            map.resolve(&txn(150, &["zzz"]), Some(&obs(&[]).current()))
                .is_err()
        );
        // No tables: nothing to resolve, even without an observation.
        assert_eq!(map.resolve(&txn(150, &[]), None), Ok(BTreeSet::new()));
    }

    #[test]
    fn recording_keeps_the_earliest_position_of_an_unchanged_binding() {
        let mut map = NameMap::default();
        map.record(&obs(&[("a", b(10, 5), 100)]));
        map.record(&obs(&[("a", b(10, 5), 500)]));
        let now = obs(&[("a", b(10, 5), 600)]);
        assert!(map.resolve(&txn(200, &["a"]), Some(&now.current())).is_ok());
        // A changed binding is remembered from its own observation.
        map.record(&obs(&[("a", b(10, 9), 700)]));
        let now = obs(&[("a", b(10, 9), 800)]);
        assert!(
            map.resolve(&txn(650, &["a"]), Some(&now.current()))
                .is_err()
        );
        assert!(map.resolve(&txn(750, &["a"]), Some(&now.current())).is_ok());
    }

    #[test]
    fn the_map_is_bounded() {
        let mut map = NameMap::default();
        let rows: Vec<(String, Binding, u64)> = (0..MAX_NAMES as u32 + 5)
            .map(|i| (format!("t{i}"), b(i, 1), 10))
            .collect();
        let o = Observation {
            rows: rows
                .iter()
                .map(|(n, b, at)| (QualifiedName::new("public", n), *b, Lsn(*at)))
                .collect(),
        };
        map.record(&o);
        assert!(map.len() <= MAX_NAMES);
        assert!(!map.is_empty());
    }
}
