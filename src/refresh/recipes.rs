//! What recomputing a cached result needs (issue 19: write-through first, refresh-ahead and
//! warming next): per stored result its *recipe* — the request as the client sent it (a
//! simple Query's text, or the Parse's parameter types and the Bind after its names), the
//! database and the session fingerprint digest it ran under, and its read plan (what it
//! depends on, its TTL) — and, per counter a write bumps, the recipes most recently stored
//! that depend on it.
//!
//! A recipe is filed under the dependencies of its result's snapshot: a read not pinned to
//! rows under `Table(tag)` of each relation, a pinned one under `Wide(tag)` and its rows'
//! `Row(stripe)`s. A write bumps `Table` and `Row`s (rows known) or `Table` and `Wide`
//! (rows unknown), so looking up what it bumped finds exactly the results it invalidated —
//! plus, for a row write, other rows' results that share a stripe (an extra refresh, never a
//! missed one). [`Recipes::dependents`] is the one function that selects them.
//!
//! Recency is when a result was stored (a miss, or a refresh): a result read often is
//! re-stored after each write that invalidates it, so it stays recent; tracking every hit
//! here would put a lock on the hit path.
//!
//! Bounded in bytes: recipes, the slots of the per-dependency lists, and each distinct plan
//! and session login they hold, once (recipes share the plans the memos hold: every
//! execution of one prepared statement has the same plan, and counting it per recipe would
//! let a bound of megabytes hold a few hundred recipes; likewise a session's login). Past the bound the least recently stored
//! recipes go, and with them their slots; each list keeps at most [`ROW_LIST`] (row
//! counters) or [`TABLE_LIST`] (relation counters) entries, the newest.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use bytes::Bytes;

use crate::cache::{Dep, Entry};
use crate::planner::plan::Plan;
use crate::refresh::pool::LoginKey;

/// Recipes kept per row counter: a row is read by few distinct statements.
pub const ROW_LIST: usize = 4;
/// Recipes kept per relation counter (table, table-wide).
pub const TABLE_LIST: usize = 64;
/// Bytes one slot of a per-dependency list costs (the id, the map entry's share).
const SLOT_BYTES: usize = 48;
/// Bytes of a recipe besides its request and plan (the struct, the `Arc`, the maps).
const RECIPE_OVERHEAD: usize = 256;

/// How the result was asked for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Request {
    /// A simple Query with this text.
    Simple { sql: Bytes },
    /// An extended-protocol execution: the Parse's text and parameter type OIDs (4 bytes
    /// each, as sent), and the Bind after its portal and statement names (parameter formats,
    /// values, result formats).
    Extended {
        sql: Bytes,
        param_types: Bytes,
        bind_tail: Bytes,
    },
}

impl Request {
    /// The request a lookup saw: a simple Query of `sql`, or with `extended` the Parse's
    /// parameter types and the Bind after its names (copied: they are the client's frames).
    pub fn seen(sql: &Bytes, extended: Option<(&[u8], &[u8])>) -> Self {
        match extended {
            None => Self::Simple { sql: sql.clone() },
            Some((types, tail)) => Self::Extended {
                sql: sql.clone(),
                param_types: Bytes::copy_from_slice(types),
                bind_tail: Bytes::copy_from_slice(tail),
            },
        }
    }

    /// Its SQL text and parameter bytes.
    pub fn bytes(&self) -> usize {
        match self {
            Self::Simple { sql } => sql.len(),
            Self::Extended {
                sql,
                param_types,
                bind_tail,
            } => sql.len() + param_types.len() + bind_tail.len(),
        }
    }
}

/// What recomputing one cached result takes.
#[derive(Debug)]
pub struct Recipe {
    /// The database the result was read in.
    pub database: Arc<str>,
    /// How the session that read it logged in (database, user, startup parameters): what
    /// the background refresher logs in with to reproduce its fingerprint.
    pub login: Arc<LoginKey>,
    /// The fingerprint digest of the session that read it (its key's): a recomputation must
    /// run under exactly this fingerprint.
    pub fingerprint: [u8; 16],
    pub request: Request,
    /// Its read plan when it was stored (checked against the catalog before any reuse).
    pub plan: Arc<Plan>,
    /// What it was filed under: its snapshot's dependencies.
    pub deps: Box<[Dep]>,
}

impl Recipe {
    /// A recipe of `sql` filed under `deps`, read by user `u` in database `db` (for tests of
    /// what holds recipes).
    #[cfg(test)]
    pub fn for_tests(sql: &str, deps: &[Dep]) -> Recipe {
        Recipe {
            database: Arc::from("db"),
            login: Arc::new(LoginKey {
                database: "db".into(),
                user: "u".into(),
                params: Vec::new(),
            }),
            fingerprint: [7; 16],
            request: Request::Simple {
                sql: Bytes::copy_from_slice(sql.as_bytes()),
            },
            plan: Arc::new(Plan::for_tests(sql)),
            deps: deps.into(),
        }
    }

    /// The identity of a recipe: equal for two stores of the same request under the same
    /// fingerprint in the same database (the later replaces the earlier).
    pub fn id(&self) -> u64 {
        let mut h = std::hash::DefaultHasher::new();
        self.database.hash(&mut h);
        self.fingerprint.hash(&mut h);
        self.request.hash(&mut h);
        h.finish()
    }

    /// Its own bytes (its plan is weighed apart, once per distinct plan).
    fn weight(&self) -> usize {
        RECIPE_OVERHEAD
            + self.database.len()
            + self.request.bytes()
            + std::mem::size_of_val(self.deps.as_ref())
    }

    /// What it shares with other recipes, weighed once per distinct `Arc` (keyed by its
    /// address): its plan, and its session's login.
    fn shared(&self) -> [(usize, usize); 2] {
        [
            (Arc::as_ptr(&self.plan) as usize, self.plan.weight()),
            (Arc::as_ptr(&self.login) as usize, self.login.bytes()),
        ]
    }
}

struct Slot {
    recipe: Arc<Recipe>,
    weight: usize,
    /// The store clock when it was (last) stored.
    stored: u64,
    /// The entry a write-through re-run stored from it (not kept alive): while that entry
    /// is unread, a later write does not re-run it again (see [`Recipes::dependents`]).
    refreshed: Option<Weak<Entry>>,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<u64, Slot>,
    /// Store clock → id, oldest first: the eviction order.
    by_age: BTreeMap<u64, u64>,
    /// Per dependency, ids newest first.
    by_dep: HashMap<Dep, VecDeque<u64>>,
    /// Per distinct plan or login: the recipes holding it and its weight (counted in
    /// `bytes` once).
    shared: HashMap<usize, (usize, usize)>,
    bytes: usize,
    clock: u64,
}

/// The recipes of stored results, shared by every session (put it in an `Arc`).
pub struct Recipes {
    inner: Mutex<Inner>,
    max_bytes: usize,
}

impl std::fmt::Debug for Recipes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("Recipes")
            .field("recipes", &inner.by_id.len())
            .field("bytes", &inner.bytes)
            .finish()
    }
}

impl Recipes {
    /// An empty registry holding at most `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            inner: Mutex::default(),
            max_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Files `recipe` (a result was stored), replacing one of the same identity; then
    /// evicts the least recently stored recipes while over the byte bound. A recipe heavier
    /// than the bound is not kept.
    pub fn insert(&self, recipe: Recipe) {
        self.insert_from(recipe, None);
    }

    /// As [`insert`](Self::insert), for a result a write-through re-run stored as `entry`.
    pub fn insert_refreshed(&self, recipe: Recipe, entry: &Arc<Entry>) {
        self.insert_from(recipe, Some(Arc::downgrade(entry)));
    }

    fn insert_from(&self, recipe: Recipe, refreshed: Option<Weak<Entry>>) {
        let weight = recipe.weight() + recipe.deps.len() * SLOT_BYTES;
        let id = recipe.id();
        let mut inner = self.lock();
        inner.remove(id);
        let shared = recipe.shared();
        if weight + shared.iter().map(|(_, w)| w).sum::<usize>() > self.max_bytes {
            return;
        }
        for (key, w) in shared {
            let held = inner.shared.entry(key).or_insert((0, w));
            held.0 += 1;
            if held.0 == 1 {
                inner.bytes += w;
            }
        }
        inner.clock += 1;
        let stored = inner.clock;
        for dep in recipe.deps.iter() {
            let list = inner.by_dep.entry(*dep).or_default();
            list.push_front(id);
            let cap = match dep {
                Dep::Row(_) => ROW_LIST,
                Dep::Table(_) | Dep::Wide(_) => TABLE_LIST,
            };
            if list.len() > cap {
                list.pop_back();
                // The recipe dropped from this list stays filed under its others; its slot
                // bytes are released with it.
            }
        }
        inner.by_age.insert(stored, id);
        inner.bytes += weight;
        inner.by_id.insert(
            id,
            Slot {
                recipe: Arc::new(recipe),
                weight,
                stored,
                refreshed,
            },
        );
        while inner.bytes > self.max_bytes {
            let Some((_, oldest)) = inner.by_age.pop_first() else {
                break;
            };
            inner.remove(oldest);
        }
    }

    /// The recipes of the results a write that bumped `bumped` invalidated, most recently
    /// stored first, at most `max` — except those a write-through re-run stored last that
    /// nobody has read since: re-running them again would be a refresh nobody asked for
    /// (a row written twice before it is read). They stay invalid; the next read misses.
    pub fn dependents(&self, bumped: &[Dep], max: usize) -> Vec<Arc<Recipe>> {
        self.select(bumped, max).0
    }

    /// As [`dependents`](Self::dependents), counting the unread ones left out
    /// (`pgmemo_write_through_total{result="unread"}`): once per commit.
    pub fn dependents_of_commit(&self, bumped: &[Dep], max: usize) -> Vec<Arc<Recipe>> {
        let (found, unread) = self.select(bumped, max);
        if unread > 0 {
            metrics::counter!(crate::telemetry::names::WRITE_THROUGH, "result" => "unread")
                .increment(unread as u64);
        }
        found
    }

    /// The dependents, and how many were left out unread.
    fn select(&self, bumped: &[Dep], max: usize) -> (Vec<Arc<Recipe>>, usize) {
        let inner = self.lock();
        let mut found: Vec<(u64, &Slot)> = Vec::new();
        let mut unread: Vec<u64> = Vec::new();
        for dep in bumped {
            let Some(list) = inner.by_dep.get(dep) else {
                continue;
            };
            for id in list {
                let Some(slot) = inner.by_id.get(id) else {
                    continue;
                };
                if slot
                    .refreshed
                    .as_ref()
                    .and_then(Weak::upgrade)
                    .is_some_and(|e| e.wasted())
                {
                    unread.push(*id);
                    continue;
                }
                found.push((*id, slot));
            }
        }
        // Filed under several of the counters bumped: counted once.
        unread.sort_unstable();
        unread.dedup();
        found.sort_unstable_by(|a, b| b.1.stored.cmp(&a.1.stored).then(a.0.cmp(&b.0)));
        found.dedup_by_key(|(id, _)| *id);
        let found = found
            .into_iter()
            .take(max)
            .map(|(_, slot)| Arc::clone(&slot.recipe))
            .collect();
        (found, unread.len())
    }

    /// Forgets every recipe (a whole-cache flush: nothing is left to refresh).
    pub fn clear(&self) {
        *self.lock() = Inner::default();
    }

    /// Recipes held.
    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held (as weighed).
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

impl Inner {
    /// Drops recipe `id` and its slots.
    fn remove(&mut self, id: u64) {
        let Some(slot) = self.by_id.remove(&id) else {
            return;
        };
        self.by_age.remove(&slot.stored);
        self.bytes = self.bytes.saturating_sub(slot.weight);
        for (key, _) in slot.recipe.shared() {
            if let Some(held) = self.shared.get_mut(&key) {
                held.0 = held.0.saturating_sub(1);
                if held.0 == 0 {
                    let freed = held.1;
                    self.shared.remove(&key);
                    self.bytes = self.bytes.saturating_sub(freed);
                }
            }
        }
        for dep in slot.recipe.deps.iter() {
            if let Some(list) = self.by_dep.get_mut(dep) {
                list.retain(|other| *other != id);
                if list.is_empty() {
                    self.by_dep.remove(dep);
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "recipes_tests.rs"]
mod tests;
