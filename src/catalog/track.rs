//! The tracked set and its stored fingerprints: every relation and function the catalog
//! has handed to a caller (and the names that reached them), per database, plus the shared
//! role catalogs. A baseline is taken in the same snapshot as the answer that made it
//! tracked, so a change made after that answer is never mistaken for the starting point.
//! Comparing a poll with the stored prints yields the changes (pure; the poller does I/O).

use std::collections::{HashMap, HashSet};

use super::conn::Lease;
use super::error::CatalogError;
use super::prints::{self, ASPECTS, Aspect, Digest, FuncPrint, RelPrint, SharedPrint};
use super::types::Oid;

/// Something the poller saw change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Bump the tag (db, oid): these aspects of the relation changed.
    Relation {
        db: String,
        oid: Oid,
        aspects: Vec<Aspect>,
    },
    /// Bump the global epoch.
    Epoch {
        db: Option<String>,
        cause: EpochCause,
    },
}

/// Why the poller asks for an epoch bump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EpochCause {
    /// A tracked function was redefined (volatility, body, settings, owner, privileges) or
    /// dropped (`name: None`).
    Function { oid: Oid, name: Option<String> },
    /// A relation carrying one of these tracked names was created, dropped, renamed or
    /// moved: name resolution (and what a cached key means) may differ.
    RelationNames(Vec<String>),
    /// A function carrying one of these tracked names was created, dropped or redefined.
    FunctionNames(Vec<String>),
    /// A schema was created, dropped, renamed or had its privileges changed.
    Schemas,
    /// An enum label, collation, text search object, domain or its constraint, range type,
    /// cast, operator, conversion, access method or operator class was created, dropped or
    /// altered: the bytes of results that use it, or which rows compare or match, may differ
    /// while no relation changed.
    Objects,
    /// A role was created, dropped or altered.
    Roles,
    /// Role membership changed (GRANT/REVOKE role).
    RoleMembership,
    /// `ALTER ROLE/DATABASE ... SET` changed.
    Settings,
    /// The server reloaded a changed configuration (`ALTER SYSTEM` + `pg_reload_conf()`,
    /// an edited file + SIGHUP): sessions that did not SET a changed setting now run with
    /// the new value, which their fingerprint does not show until they are probed again.
    ConfigReload,
    /// The poll failed: changes since the last poll cannot be ruled out.
    PollFailed(String),
    /// The database no longer exists; its tracked set is forgotten.
    DatabaseDropped,
}

/// What a call wants tracked.
#[derive(Debug, Default, Clone)]
pub(crate) struct Want {
    pub relations: Vec<Oid>,
    pub rel_names: Vec<String>,
    pub functions: Vec<Oid>,
    pub func_names: Vec<String>,
    /// Per-database (schemas, and the types/operators/collations/text search digest) and
    /// shared prints (always wanted; only fetched when missing).
    pub namespaces: bool,
    pub shared: bool,
}

/// Fetched fingerprints (a baseline or a poll).
#[derive(Debug, Default)]
pub(crate) struct Prints {
    pub relations: HashMap<Oid, RelPrint>,
    pub functions: HashMap<Oid, FuncPrint>,
    pub rel_names: HashMap<String, Option<Digest>>,
    pub func_names: HashMap<String, Option<Digest>>,
    pub namespaces: Option<HashMap<Oid, Option<Digest>>>,
    /// Fetched with the namespaces (outer `None`: not fetched).
    pub objects: Option<Option<Digest>>,
    pub shared: Option<SharedPrint>,
}

impl Prints {
    pub(crate) async fn fetch(lease: &mut Lease, want: &Want) -> Result<Self, CatalogError> {
        Ok(Self {
            relations: prints::relations(lease, &want.relations).await?,
            functions: prints::functions(lease, &want.functions).await?,
            rel_names: prints::relation_names(lease, &want.rel_names).await?,
            func_names: prints::function_names(lease, &want.func_names).await?,
            namespaces: match want.namespaces {
                true => Some(prints::namespaces(lease).await?),
                false => None,
            },
            objects: match want.namespaces {
                true => Some(prints::objects(lease).await?),
                false => None,
            },
            shared: match want.shared {
                true => Some(prints::shared(lease).await?),
                false => None,
            },
        })
    }
}

#[derive(Debug, Default)]
struct DbTracked {
    relations: HashMap<Oid, RelPrint>,
    functions: HashMap<Oid, FuncPrint>,
    rel_names: HashMap<String, Option<Digest>>,
    func_names: HashMap<String, Option<Digest>>,
    namespaces: Option<HashMap<Oid, Option<Digest>>>,
    /// Types, operators, collations, text search objects (see `prints::objects`).
    objects: Option<Option<Digest>>,
    /// What each relation name carried when an answer first met it in the current catalog
    /// generation (see [`Tracked::moved_names`]); emptied by [`Tracked::new_generation`].
    seen: HashMap<String, Option<Digest>>,
}

/// Bounds of the tracked set (totals over all databases).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub relations: usize,
    pub functions: usize,
}

#[derive(Debug)]
pub(crate) struct Tracked {
    dbs: HashMap<String, DbTracked>,
    shared: Option<SharedPrint>,
    limits: Limits,
}

impl Tracked {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            dbs: HashMap::new(),
            shared: None,
            limits,
        }
    }

    fn totals(&self) -> [usize; 4] {
        self.dbs.values().fold([0; 4], |[r, n, f, g], db| {
            [
                r + db.relations.len(),
                n + db.rel_names.len(),
                f + db.functions.len(),
                g + db.func_names.len(),
            ]
        })
    }

    /// (relations, functions) tracked, over all databases.
    pub(crate) fn counts(&self) -> (usize, usize) {
        let [r, _, f, _] = self.totals();
        (r, f)
    }

    /// The part of `want` that has no baseline yet, or an error when it would not fit.
    pub(crate) fn missing(&self, db: &str, want: &Want) -> Result<Want, CatalogError> {
        let tracked = self.dbs.get(db);
        let mut out = Want {
            namespaces: tracked.is_none_or(|t| t.namespaces.is_none() || t.objects.is_none()),
            shared: self.shared.is_none(),
            ..Want::default()
        };
        let new_oids = |list: &[Oid], has: &dyn Fn(Oid) -> bool| -> Vec<Oid> {
            let mut seen = HashSet::new();
            list.iter()
                .copied()
                .filter(|o| !has(*o) && seen.insert(*o))
                .collect()
        };
        let new_names = |list: &[String], has: &dyn Fn(&str) -> bool| -> Vec<String> {
            let mut seen = HashSet::new();
            list.iter()
                .filter(|n| !has(n) && seen.insert(n.as_str()))
                .cloned()
                .collect()
        };
        out.relations = new_oids(&want.relations, &|o| {
            tracked.is_some_and(|t| t.relations.contains_key(&o))
        });
        out.functions = new_oids(&want.functions, &|o| {
            tracked.is_some_and(|t| t.functions.contains_key(&o))
        });
        out.rel_names = new_names(&want.rel_names, &|n| {
            tracked.is_some_and(|t| t.rel_names.contains_key(n))
        });
        out.func_names = new_names(&want.func_names, &|n| {
            tracked.is_some_and(|t| t.func_names.contains_key(n))
        });
        self.check_room(&out)?;
        Ok(out)
    }

    fn check_room(&self, new: &Want) -> Result<(), CatalogError> {
        let [r, n, f, g] = self.totals();
        let full = |what, have: usize, add: usize, limit: usize| {
            if have + add > limit {
                Err(CatalogError::TrackingFull { what, limit })
            } else {
                Ok(())
            }
        };
        full("relations", r, new.relations.len(), self.limits.relations)?;
        full(
            "relation names",
            n,
            new.rel_names.len(),
            self.limits.relations,
        )?;
        full("functions", f, new.functions.len(), self.limits.functions)?;
        full(
            "function names",
            g,
            new.func_names.len(),
            self.limits.functions,
        )
    }

    /// Stores baselines; anything already tracked keeps its stored print (it may hold a
    /// change the poller has not reported yet).
    pub(crate) fn insert(&mut self, db: &str, baseline: Prints) -> Result<(), CatalogError> {
        let room = Want {
            relations: baseline.relations.keys().copied().collect(),
            rel_names: baseline.rel_names.keys().cloned().collect(),
            functions: baseline.functions.keys().copied().collect(),
            func_names: baseline.func_names.keys().cloned().collect(),
            ..Want::default()
        };
        self.missing(db, &room)?;
        if self.shared.is_none() {
            self.shared = baseline.shared;
        }
        let tracked = self.dbs.entry(db.to_owned()).or_default();
        if tracked.namespaces.is_none() {
            tracked.namespaces = baseline.namespaces;
        }
        if tracked.objects.is_none() {
            tracked.objects = baseline.objects;
        }
        for (oid, print) in baseline.relations {
            // A relation already gone needs no watching: nothing can be cached for it.
            if print.name.is_some() {
                tracked.relations.entry(oid).or_insert(print);
            }
        }
        for (oid, print) in baseline.functions {
            if print.name.is_some() {
                tracked.functions.entry(oid).or_insert(print);
            }
        }
        for (name, digest) in baseline.rel_names {
            tracked.rel_names.entry(name).or_insert(digest);
        }
        for (name, digest) in baseline.func_names {
            tracked.func_names.entry(name).or_insert(digest);
        }
        Ok(())
    }

    /// Of `names`, those already tracked in `db` (their prints are stored).
    pub(crate) fn tracked_names(&self, db: &str, names: &[String]) -> Vec<String> {
        let Some(tracked) = self.dbs.get(db) else {
            return Vec::new();
        };
        let mut out: Vec<String> = names
            .iter()
            .filter(|n| tracked.rel_names.contains_key(n.as_str()))
            .cloned()
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Whether a relation name carries other relations `now` than when an answer first met
    /// it in the current catalog generation (dropped and re-created, renamed or moved
    /// directly, which no poll has reported yet): answers memoised in this generation may
    /// name the old relations, so the caller must advance the generation. A name's first
    /// meeting in a generation is only recorded: every answer memoised before it belongs to
    /// an older generation and is never used again. So a DDL through pgmemo (which advances
    /// the generation itself) is not signalled a second time by the next answer that meets
    /// the names it created or re-created (asyncpg's suite re-creates one table per test;
    /// the second signal dropped the plan being made, and the first Bind planned again while
    /// the client's pipeline waited). The stored prints are left for the poller to report.
    pub(crate) fn moved_names(&mut self, db: &str, now: HashMap<String, Option<Digest>>) -> bool {
        let Some(tracked) = self.dbs.get_mut(db) else {
            return false;
        };
        let mut moved = false;
        for (name, digest) in now {
            match tracked.seen.get_mut(&name) {
                Some(seen) if *seen != digest => {
                    *seen = digest;
                    moved = true;
                }
                Some(_) => {}
                None => {
                    tracked.seen.insert(name, digest);
                }
            }
        }
        moved
    }

    /// The catalog generation advances: every memoised answer is dropped, so what names
    /// carried when those answers were made no longer matters.
    pub(crate) fn new_generation(&mut self) {
        for tracked in self.dbs.values_mut() {
            tracked.seen.clear();
        }
    }

    /// What the poller must fetch: per database, everything tracked there.
    pub(crate) fn snapshot(&self) -> Vec<(String, Want)> {
        let mut out: Vec<(String, Want)> = self
            .dbs
            .iter()
            .map(|(db, t)| {
                let want = Want {
                    relations: t.relations.keys().copied().collect(),
                    rel_names: t.rel_names.keys().cloned().collect(),
                    functions: t.functions.keys().copied().collect(),
                    func_names: t.func_names.keys().cloned().collect(),
                    namespaces: t.namespaces.is_some(),
                    shared: false,
                };
                (db.clone(), want)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some((_, first)) = out.first_mut() {
            first.shared = self.shared.is_some();
        }
        out
    }

    /// Compares a poll of `db` with the stored prints, stores the new ones and reports what
    /// changed. Dropped relations and functions leave the tracked set.
    pub(crate) fn apply(&mut self, db: &str, polled: Prints) -> Vec<Change> {
        let mut changes = Vec::new();
        if let Some(shared) = polled.shared {
            changes.extend(self.apply_shared(shared));
        }
        let Some(tracked) = self.dbs.get_mut(db) else {
            return changes;
        };
        let epoch = |cause| Change::Epoch {
            db: Some(db.to_owned()),
            cause,
        };
        for (oid, now) in polled.relations {
            let Some(before) = tracked.relations.get(&oid) else {
                continue;
            };
            if now.name.is_none() {
                tracked.relations.remove(&oid);
                changes.push(Change::Relation {
                    db: db.to_owned(),
                    oid,
                    aspects: vec![Aspect::Dropped],
                });
                continue;
            }
            let aspects: Vec<Aspect> = ASPECTS
                .iter()
                .zip(before.aspects.iter().zip(now.aspects.iter()))
                .filter(|(_, (b, n))| b != n)
                .map(|(aspect, _)| *aspect)
                .collect();
            if !aspects.is_empty() || before.name != now.name {
                let aspects = if aspects.is_empty() {
                    vec![Aspect::Definition]
                } else {
                    aspects
                };
                changes.push(Change::Relation {
                    db: db.to_owned(),
                    oid,
                    aspects,
                });
                tracked.relations.insert(oid, now);
            }
        }
        for (oid, now) in polled.functions {
            let Some(before) = tracked.functions.get(&oid) else {
                continue;
            };
            if now.name.is_none() || now.digest != before.digest {
                changes.push(epoch(EpochCause::Function {
                    oid,
                    name: now.name.clone(),
                }));
                if now.name.is_none() {
                    tracked.functions.remove(&oid);
                } else {
                    tracked.functions.insert(oid, now);
                }
            }
        }
        let names = changed_names(&mut tracked.rel_names, polled.rel_names);
        if !names.is_empty() {
            changes.push(epoch(EpochCause::RelationNames(names)));
        }
        let names = changed_names(&mut tracked.func_names, polled.func_names);
        if !names.is_empty() {
            changes.push(epoch(EpochCause::FunctionNames(names)));
        }
        if let (Some(now), Some(before)) = (polled.namespaces, tracked.namespaces.as_mut())
            && schemas_changed(before, now)
        {
            changes.push(epoch(EpochCause::Schemas));
        }
        if let (Some(now), Some(before)) = (polled.objects, tracked.objects.as_mut())
            && *before != now
        {
            *before = now;
            changes.push(epoch(EpochCause::Objects));
        }
        changes
    }

    fn apply_shared(&mut self, now: SharedPrint) -> Vec<Change> {
        let Some(before) = self.shared.as_mut() else {
            return Vec::new();
        };
        let mut causes = Vec::new();
        if now.roles != before.roles {
            causes.push(EpochCause::Roles);
        }
        if now.members != before.members {
            causes.push(EpochCause::RoleMembership);
        }
        if now.settings != before.settings {
            causes.push(EpochCause::Settings);
        }
        if now.config != before.config {
            causes.push(EpochCause::ConfigReload);
        }
        *before = now;
        causes
            .into_iter()
            .map(|cause| Change::Epoch { db: None, cause })
            .collect()
    }

    pub(crate) fn forget_database(&mut self, db: &str) {
        self.dbs.remove(db);
    }

    /// Whether anything of `db` is tracked.
    pub(crate) fn has_database(&self, db: &str) -> bool {
        self.dbs.contains_key(db)
    }

    /// Whether the tracked names fill more than half their bounds (names of relations and
    /// functions that do not exist are tracked too, so they can accumulate).
    pub(crate) fn names_crowded(&self) -> bool {
        let [_, n, _, g] = self.totals();
        n > self.limits.relations / 2 || g > self.limits.functions / 2
    }

    /// Forgets names no tracked relation or function carries. Only safe together with a
    /// generation bump: memoised answers that relied on a forgotten name must go too.
    pub(crate) fn forget_unused_names(&mut self) -> usize {
        let [_, rel_before, _, func_before] = self.totals();
        for tracked in self.dbs.values_mut() {
            let rel: HashSet<&str> = tracked
                .relations
                .values()
                .filter_map(|p| p.name.as_deref())
                .collect();
            tracked
                .rel_names
                .retain(|name, _| rel.contains(name.as_str()));
            let func: HashSet<&str> = tracked
                .functions
                .values()
                .filter_map(|p| p.name.as_deref())
                .collect();
            tracked
                .func_names
                .retain(|name, _| func.contains(name.as_str()));
        }
        let [_, rel_after, _, func_after] = self.totals();
        rel_before.saturating_sub(rel_after) + func_before.saturating_sub(func_after)
    }
}

/// A schema dropped, renamed, re-owned or re-granted can change what existing names mean
/// or who may read them; a new schema changes nothing until a relation or function with a
/// tracked name appears in it (which the name prints catch).
fn schemas_changed(
    stored: &mut HashMap<Oid, Option<Digest>>,
    polled: HashMap<Oid, Option<Digest>>,
) -> bool {
    let changed = stored
        .iter()
        .any(|(oid, before)| polled.get(oid) != Some(before));
    *stored = polled;
    changed
}

fn changed_names(
    stored: &mut HashMap<String, Option<Digest>>,
    polled: HashMap<String, Option<Digest>>,
) -> Vec<String> {
    let mut names = Vec::new();
    for (name, now) in polled {
        if let Some(before) = stored.get_mut(&name)
            && *before != now
        {
            *before = now;
            names.push(name);
        }
    }
    names.sort();
    names
}

#[cfg(test)]
#[path = "track_tests.rs"]
mod tests;
