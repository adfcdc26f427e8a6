//! Relation versions and the global epoch: the counters every cache key includes, so that
//! invalidating is one increment (DESIGN §2, invariants I1–I3).
//!
//! - I1: a session takes a [`VersionSnapshot`] *before* forwarding the statement it keys.
//! - I2: a write calls [`Versions::bump`] after the upstream reports the commit and before the
//!   acknowledgement is relayed.
//! - Store: a result is stored only if its snapshot [`is_current`](VersionSnapshot::is_current);
//!   a result read before a bump can then never be stored under a post-bump key.
//!
//! Row-level invalidation (issue 18) adds two kinds of counters besides each relation's
//! version ([`Dep::Table`], bumped by every write to it, what a read not pinned to rows
//! depends on): its table-wide-write version ([`Dep::Wide`], bumped only by writes whose rows
//! are not known by key) and a fixed array of row stripes ([`Dep::Row`], see
//! [`super::rows`]). A read pinned to rows by their primary key depends on `Wide` and on its
//! rows' stripes; a write with known rows bumps `Table` and those stripes. Every write that
//! can change a pinned row thus moves one of the pinned read's counters.
//!
//! Counters are `u64` and only ever increase: at a billion bumps per second a counter would
//! take 584 years to wrap, so wrapping is not handled. A tag never bumped has version 0 and
//! takes no memory.
//!
//! Bounded: at most `max_tags` tags are held. When a new tag would exceed that, every tag is
//! dropped *and* the epoch is bumped, in one step under all shard locks. Dropping a tag resets
//! its version to 0, which would make an old key reachable again; the epoch bump makes every
//! old key unreachable first, so nothing is ever silently reset within an epoch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::rows::{ROW_STRIPES, Stripe};
use crate::telemetry::names;

/// Number of shards of the tag table (a power of two). Bumps of different relations rarely
/// contend for the same write lock, and reads only take read locks.
const SHARDS: usize = 16;

/// Default bound on the tags held (about 48 bytes each: some MiB at most).
pub const DEFAULT_MAX_TAGS: usize = 1 << 18;

/// A resolved relation: database OID and relation OID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag {
    /// Database OID.
    pub db: u32,
    /// Relation OID (`pg_class.oid`).
    pub rel: u32,
}

/// One counter a cached result depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dep {
    /// Every write to the relation.
    Table(Tag),
    /// Writes to the relation whose affected rows are not known by key.
    Wide(Tag),
    /// Writes to rows whose (relation, key) hashes to this stripe.
    Row(Stripe),
}

impl Dep {
    /// The relation, for `Table` and `Wide`.
    pub fn tag(self) -> Option<Tag> {
        match self {
            Self::Table(t) | Self::Wide(t) => Some(t),
            Self::Row(_) => None,
        }
    }
}

/// Why the epoch was bumped (every cached result became unreachable). A metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EpochCause {
    /// A statement that could not be parsed and might write.
    UnparsedWrite,
    /// A statement whose effects are invisible in SQL (volatile user function, user trigger,
    /// CALL, DO, FunctionCall).
    SideEffects,
    /// The catalog poller saw a function change.
    CatalogFunction,
    /// The catalog poller saw a role or privilege change that cannot be pinned to relations.
    CatalogRole,
    /// The catalog poller saw a type, operator, collation or text search object change, or
    /// a relation name that now resolves differently (see `catalog::EpochCause`).
    CatalogObject,
    /// A write's relation names were resolved under an older catalog generation than the
    /// one current at its commit: its tags may not name what it wrote.
    ResolutionChanged,
    /// The server reloaded its configuration (`pg_reload_conf()`, SIGHUP): settings of
    /// sessions that did not SET them may have changed.
    ConfigReload,
    /// COMMIT PREPARED of a gid pgmemo did not see prepared.
    UnknownGid,
    /// Manual flush (admin API, SIGUSR1).
    Admin,
    /// The tag table reached its bound and was cleared.
    TagLimit,
    /// DDL committed through pgmemo (name resolution and result shapes may change).
    Ddl,
    /// A write pgmemo lost track of: its statement was unknown (an unknown prepared statement
    /// or portal) or its outcome was not seen (the session ended while it was in flight).
    Untracked,
    /// A change stream reached its consistent point (start-up or reconnect): what it did
    /// not carry while it was down is unknown.
    CdcResync,
    /// A streamed transaction changed more relations than pgmemo tracks per transaction, or
    /// its relations could not be mapped to tags.
    CdcOverflow,
    /// A streamed transaction named a relation (the `test_decoding` stream names them) that
    /// could not be mapped to its OID with certainty (see `cdc::names`).
    CdcUnresolved,
    /// With a shared tier, this instance closed a database's side connections (no client
    /// used it): what it had watched for the results in Redis is watched by nobody now.
    SideClosed,
}

impl EpochCause {
    /// Every cause, for pre-registering metric handles.
    pub const ALL: [EpochCause; 16] = [
        Self::UnparsedWrite,
        Self::SideEffects,
        Self::CatalogFunction,
        Self::CatalogRole,
        Self::CatalogObject,
        Self::ResolutionChanged,
        Self::ConfigReload,
        Self::UnknownGid,
        Self::Admin,
        Self::TagLimit,
        Self::Ddl,
        Self::Untracked,
        Self::CdcResync,
        Self::CdcOverflow,
        Self::CdcUnresolved,
        Self::SideClosed,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnparsedWrite => "unparsed_write",
            Self::SideEffects => "side_effects",
            Self::CatalogFunction => "catalog_function",
            Self::CatalogRole => "catalog_role",
            Self::CatalogObject => "catalog_object",
            Self::ResolutionChanged => "resolution_changed",
            Self::ConfigReload => "config_reload",
            Self::UnknownGid => "unknown_gid",
            Self::Admin => "admin",
            Self::TagLimit => "tag_limit",
            Self::Ddl => "ddl",
            Self::Untracked => "untracked",
            Self::CdcResync => "cdc_resync",
            Self::CdcOverflow => "cdc_overflow",
            Self::CdcUnresolved => "cdc_unresolved",
            Self::SideClosed => "side_closed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A relation's table and table-wide counters ([`Dep::Table`], [`Dep::Wide`]).
type Counters = [AtomicU64; 2];

type Shard = RwLock<HashMap<Tag, Counters>>;

/// Per-tag versions and the global epoch, shared by every session and invalidation source.
pub struct Versions {
    epoch: AtomicU64,
    shards: [Shard; SHARDS],
    /// Row-version counters ([`Dep::Row`]), never cleared.
    stripes: Box<[AtomicU64]>,
    /// Bound per shard: `max_tags / SHARDS`, at least 1.
    per_shard: usize,
    epoch_bumps: [metrics::Counter; EpochCause::ALL.len()],
}

impl std::fmt::Debug for Versions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Versions")
            .field("epoch", &self.epoch())
            .field("tags", &self.tag_count())
            .finish()
    }
}

/// The epoch and the versions of a statement's dependencies, read before the statement is
/// forwarded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionSnapshot {
    epoch: u64,
    /// Sorted by dependency, no duplicates: the key hashes them in this order.
    versions: Box<[(Dep, u64)]>,
}

impl VersionSnapshot {
    /// The epoch when the snapshot was taken.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Each dependency with its version, sorted.
    pub fn versions(&self) -> &[(Dep, u64)] {
        &self.versions
    }

    /// The relations among the dependencies (sorted, unique).
    pub fn tags(&self) -> Vec<Tag> {
        let mut tags: Vec<Tag> = self.versions.iter().filter_map(|(d, _)| d.tag()).collect();
        tags.dedup();
        tags
    }

    /// This snapshot as it reads once the counters in `increments` (sorted by counter)
    /// moved by those amounts and nothing else moved: what a result computed right after
    /// that write must be keyed on.
    pub fn after(&self, increments: &[(Dep, u64)]) -> VersionSnapshot {
        let versions = self
            .versions
            .iter()
            .map(|(dep, v)| {
                let by = increments
                    .binary_search_by_key(dep, |(d, _)| *d)
                    .ok()
                    .and_then(|i| increments.get(i))
                    .map_or(0, |(_, n)| *n);
                (*dep, v.wrapping_add(by))
            })
            .collect();
        VersionSnapshot {
            epoch: self.epoch,
            versions,
        }
    }

    /// Whether no tag of the snapshot was bumped, and the epoch did not move, since it was
    /// taken. A result computed under a snapshot that is no longer current must not be stored.
    pub fn is_current(&self, versions: &Versions) -> bool {
        if versions.epoch() != self.epoch {
            return false;
        }
        let unchanged = self
            .versions
            .iter()
            .all(|(dep, version)| versions.version(*dep) == *version);
        // A tag-limit clear between the two epoch reads could make a dropped tag read 0 and
        // match a snapshot taken at 0; the epoch it bumped first gives it away here.
        unchanged && versions.epoch() == self.epoch
    }
}

impl Versions {
    /// An empty table (every version 0, epoch 0) holding at most `max_tags` tags.
    pub fn new(max_tags: usize) -> Self {
        Self {
            epoch: AtomicU64::new(0),
            shards: std::array::from_fn(|_| RwLock::new(HashMap::new())),
            stripes: (0..ROW_STRIPES).map(|_| AtomicU64::new(0)).collect(),
            per_shard: (max_tags / SHARDS).max(1),
            epoch_bumps: EpochCause::ALL.map(
                |cause| metrics::counter!(names::CACHE_EPOCH_BUMPS, "cause" => cause.as_str()),
            ),
        }
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// The current version of one dependency (0 if never bumped in this epoch's table).
    pub fn version(&self, dep: Dep) -> u64 {
        match dep {
            Dep::Row(stripe) => self.stripe(stripe).map_or(0, |c| c.load(Ordering::SeqCst)),
            Dep::Table(tag) | Dep::Wide(tag) => {
                let slot = usize::from(matches!(dep, Dep::Wide(_)));
                read(self.shard(tag))
                    .get(&tag)
                    .and_then(|c| c.get(slot))
                    .map_or(0, |v| v.load(Ordering::SeqCst))
            }
        }
    }

    /// The version of a relation's table counter.
    pub fn table_version(&self, tag: Tag) -> u64 {
        self.version(Dep::Table(tag))
    }

    fn stripe(&self, stripe: Stripe) -> Option<&AtomicU64> {
        self.stripes.get(stripe as usize)
    }

    /// How many relations have counters held.
    pub fn tag_count(&self) -> usize {
        self.shards.iter().map(|s| read(s).len()).sum()
    }

    /// Reads the epoch and the table version of each tag (I1: before forwarding the
    /// statement): what a read not pinned to rows depends on.
    pub fn snapshot(&self, tags: &[Tag]) -> VersionSnapshot {
        let deps: Vec<Dep> = tags.iter().map(|t| Dep::Table(*t)).collect();
        self.snapshot_deps(&deps)
    }

    /// Reads the epoch and the version of each dependency (I1). The result is consistent:
    /// if a tag-limit clear ran while they were read, the epoch moved and the read is
    /// retried, so a snapshot never mixes two tables.
    pub fn snapshot_deps(&self, deps: &[Dep]) -> VersionSnapshot {
        let mut sorted: Vec<(Dep, u64)> = deps.iter().map(|d| (*d, 0)).collect();
        sorted.sort_unstable_by_key(|(t, _)| *t);
        sorted.dedup_by_key(|(t, _)| *t);
        loop {
            let before = self.epoch();
            for (dep, version) in &mut sorted {
                *version = self.version(*dep);
            }
            if self.epoch() == before {
                return VersionSnapshot {
                    epoch: before,
                    versions: sorted.into_boxed_slice(),
                };
            }
        }
    }

    /// A write to every row of each tag (I2: after the commit is reported, before its
    /// acknowledgement is relayed): bumps its table and table-wide counters. Bumps are never
    /// lost: each is one atomic increment.
    pub fn bump(&self, tags: &[Tag]) {
        for tag in tags {
            self.bump_one(Dep::Table(*tag));
            self.bump_one(Dep::Wide(*tag));
        }
    }

    /// A write to known rows (I2): bumps each row's table counter and its stripe, not the
    /// table-wide counter.
    pub fn bump_rows(&self, rows: &[(Tag, Stripe)]) {
        for (tag, stripe) in rows {
            self.bump_one(Dep::Table(*tag));
            self.bump_one(Dep::Row(*stripe));
        }
    }

    /// Bumps exactly these counters (a shared tier's announcement, applied to a mirror).
    pub fn bump_deps(&self, deps: &[Dep]) {
        for dep in deps {
            self.bump_one(*dep);
        }
    }

    fn bump_one(&self, dep: Dep) {
        let (tag, slot) = match dep {
            Dep::Row(stripe) => {
                if let Some(c) = self.stripe(stripe) {
                    c.fetch_add(1, Ordering::SeqCst);
                }
                return;
            }
            Dep::Table(tag) => (tag, 0),
            Dep::Wide(tag) => (tag, 1),
        };
        let shard = self.shard(tag);
        let bump = |c: &Counters| {
            if let Some(v) = c.get(slot) {
                v.fetch_add(1, Ordering::SeqCst);
            }
        };
        if let Some(c) = read(shard).get(&tag) {
            bump(c);
            return;
        }
        {
            let mut map = write(shard);
            if let Some(c) = map.get(&tag) {
                bump(c);
                return;
            }
            if map.len() < self.per_shard {
                bump(map.entry(tag).or_default());
                return;
            }
        }
        // Full: clear everything under a new epoch, then insert into the fresh table without
        // re-checking the bound, so a bump always completes. Other threads may insert in
        // between, so a shard can exceed its bound by at most one tag per bumping thread.
        self.clear_tags();
        bump(write(shard).entry(tag).or_default());
    }

    /// Bumps the epoch: every key computed before is unreachable. Returns the new epoch.
    // `epoch_bumps` has one counter per `EpochCause::ALL` entry; `index()` is a position in it.
    #[allow(clippy::indexing_slicing)]
    pub fn bump_epoch(&self, cause: EpochCause) -> u64 {
        self.epoch_bumps[cause.index()].increment(1);
        self.epoch.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Drops every tag under a new epoch. All shard write locks are held while the epoch moves
    /// and the tables are cleared, so no snapshot can read the new epoch with old versions.
    fn clear_tags(&self) {
        let mut guards: Vec<RwLockWriteGuard<'_, HashMap<Tag, Counters>>> =
            self.shards.iter().map(write).collect();
        self.bump_epoch(EpochCause::TagLimit);
        for map in &mut guards {
            map.clear();
        }
    }

    // `shards` is a `[_; SHARDS]` and the index is reduced modulo SHARDS.
    #[allow(clippy::indexing_slicing)]
    fn shard(&self, tag: Tag) -> &Shard {
        // Relation OIDs are mostly sequential; multiplying spreads them over the top bits.
        let mixed = (tag.rel ^ tag.db.rotate_left(16)).wrapping_mul(0x9E37_79B9);
        let index = (mixed >> (32 - SHARDS.trailing_zeros())) as usize;
        // `index < SHARDS` by construction; `%` keeps that true without indexing risk.
        &self.shards[index % SHARDS]
    }
}

/// A poisoned shard only means a thread panicked while holding it; the map of atomics is still
/// a valid map (no operation leaves it half-updated), so carrying on is sound.
fn read(shard: &Shard) -> RwLockReadGuard<'_, HashMap<Tag, Counters>> {
    shard.read().unwrap_or_else(PoisonError::into_inner)
}

fn write(shard: &Shard) -> RwLockWriteGuard<'_, HashMap<Tag, Counters>> {
    shard.write().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    const T1: Tag = Tag { db: 1, rel: 100 };
    const T2: Tag = Tag { db: 1, rel: 101 };
    const T3: Tag = Tag { db: 2, rel: 100 };

    #[test]
    fn bump_and_snapshot() {
        let v = Versions::new(DEFAULT_MAX_TAGS);
        let s0 = v.snapshot(&[T2, T1, T2]);
        assert_eq!(
            s0.versions(),
            &[(Dep::Table(T1), 0), (Dep::Table(T2), 0)],
            "sorted, deduplicated"
        );
        assert_eq!(s0.epoch(), 0);
        assert!(s0.is_current(&v));

        v.bump(&[T1]);
        assert!(!s0.is_current(&v));
        assert_eq!(v.table_version(T1), 1);
        assert_eq!(v.table_version(T3), 0, "same rel, other database");
        let s1 = v.snapshot(&[T1, T2]);
        assert_eq!(s1.versions(), &[(Dep::Table(T1), 1), (Dep::Table(T2), 0)]);

        // Bumping a tag the snapshot does not cover leaves it current.
        v.bump(&[T3]);
        assert!(s1.is_current(&v));

        assert_eq!(v.bump_epoch(EpochCause::Admin), 1);
        assert!(!s1.is_current(&v));
        let s2 = v.snapshot(&[T1, T2]);
        assert_eq!(s2.versions(), s1.versions(), "the epoch alone moved");
        assert_ne!(s2, s1);

        let empty = v.snapshot(&[]);
        assert!(empty.is_current(&v));
        v.bump_epoch(EpochCause::SideEffects);
        assert!(
            !empty.is_current(&v),
            "a tagless snapshot still follows the epoch"
        );
    }

    /// A pinned read depends on its rows and the table-wide counter: a write to another row
    /// leaves it current, a write to its row or a write with unknown rows does not; a read
    /// of the whole table follows every write.
    #[test]
    fn row_writes_move_their_rows_and_the_table_but_not_the_wide_counter() {
        let v = Versions::new(DEFAULT_MAX_TAGS);
        let pinned = [Dep::Wide(T1), Dep::Row(5)];
        let p = v.snapshot_deps(&pinned);
        let whole = v.snapshot(&[T1]);
        v.bump_rows(&[(T1, 6)]);
        assert!(p.is_current(&v), "another row");
        assert!(!whole.is_current(&v), "the table read follows row writes");
        v.bump_rows(&[(T2, 5)]);
        assert!(
            !p.is_current(&v),
            "a shared stripe (another relation's row) costs a miss, never a stale hit"
        );
        let p = v.snapshot_deps(&pinned);
        v.bump_rows(&[(T1, 5)]);
        assert!(!p.is_current(&v), "its row");
        let p = v.snapshot_deps(&pinned);
        v.bump(&[T1]);
        assert!(!p.is_current(&v), "a write with unknown rows");
        let p = v.snapshot_deps(&pinned);
        v.bump_deps(&[Dep::Table(T1)]);
        assert!(p.is_current(&v), "the table counter alone");
        assert_eq!(v.tag_count(), 2, "one slot per relation");
    }

    #[test]
    fn tag_limit_clears_under_a_new_epoch() {
        let v = Versions::new(SHARDS); // one tag per shard
        let tags: Vec<Tag> = (0..200).map(|rel| Tag { db: 5, rel }).collect();
        let first = tags[0];
        v.bump(&[first]);
        v.bump(&[first]);
        let before = v.snapshot(&[first]);
        assert_eq!(before.versions(), &[(Dep::Table(first), 2)]);
        for t in &tags[1..] {
            v.bump(&[*t]);
        }
        assert!(v.tag_count() <= SHARDS, "bounded: {}", v.tag_count());
        assert!(v.epoch() > 0, "clears moved the epoch");
        assert!(!before.is_current(&v));
        // Whatever `first` reads now, the old (epoch, version) pair never comes back.
        for _ in 0..5 {
            v.bump(&[first]);
            let now = v.snapshot(&[first]);
            assert_ne!(now, before);
        }
    }

    #[test]
    fn concurrent_bumps_are_never_lost() {
        let v = Arc::new(Versions::new(DEFAULT_MAX_TAGS));
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let v = Arc::clone(&v);
                std::thread::spawn(move || {
                    for n in 0..20_000u32 {
                        // Everyone bumps T1; each thread also creates fresh tags, so bumps of
                        // existing tags race with inserts into the same shards.
                        v.bump(&[
                            T1,
                            Tag {
                                db: 9,
                                rel: i * 100_000 + n,
                            },
                        ]);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(v.table_version(T1), 80_000);
        assert_eq!(v.tag_count(), 80_001);
        assert_eq!(v.epoch(), 0);
    }

    /// A snapshot taken before a bump is never current after that bump returns, whatever else
    /// runs concurrently: other bumps, epoch bumps and tag-limit clears (tiny bound).
    #[test]
    fn snapshot_before_bump_is_never_current_after_it() {
        for max_tags in [DEFAULT_MAX_TAGS, SHARDS] {
            let v = Arc::new(Versions::new(max_tags));
            let stop = Arc::new(AtomicBool::new(false));
            let churn = {
                let (v, stop) = (Arc::clone(&v), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut n = 0u32;
                    while !stop.load(Ordering::Relaxed) {
                        n = n.wrapping_add(1);
                        v.bump(&[Tag {
                            db: 7,
                            rel: n % 5_000,
                        }]);
                        if n.is_multiple_of(1_000) {
                            v.bump_epoch(EpochCause::Admin);
                        }
                    }
                })
            };
            let checkers: Vec<_> = (0..3u32)
                .map(|i| {
                    let v = Arc::clone(&v);
                    std::thread::spawn(move || {
                        for n in 0..20_000u32 {
                            let mine = Tag {
                                db: 7,
                                rel: (n * 3 + i) % 5_000,
                            };
                            let shared = [mine, T1];
                            let snap = v.snapshot(&shared);
                            v.bump(&[mine]);
                            assert!(!snap.is_current(&v), "stale snapshot current: {snap:?}");
                            let snap = v.snapshot(&shared);
                            v.bump(&[T1]);
                            assert!(!snap.is_current(&v), "stale snapshot current: {snap:?}");
                        }
                    })
                })
                .collect();
            for c in checkers {
                c.join().unwrap();
            }
            stop.store(true, Ordering::Relaxed);
            churn.join().unwrap();
            assert!(v.tag_count() <= max_tags.max(SHARDS) + SHARDS);
        }
    }

    /// Snapshots are never torn across a tag-limit clear: every snapshot's (epoch, version)
    /// for a tag that only grows within an epoch is at least the last one seen in that epoch.
    #[test]
    fn snapshots_are_consistent_across_clears() {
        let v = Arc::new(Versions::new(SHARDS));
        let stop = Arc::new(AtomicBool::new(false));
        let filler = {
            let (v, stop) = (Arc::clone(&v), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    n = n.wrapping_add(1);
                    v.bump(&[T1, Tag { db: 3, rel: n }]);
                }
            })
        };
        let mut last = (0u64, 0u64);
        for _ in 0..200_000 {
            let s = v.snapshot(&[T1]);
            let now = (s.epoch(), s.versions()[0].1);
            assert!(now >= last, "went backwards: {last:?} -> {now:?}");
            last = now;
        }
        stop.store(true, Ordering::Relaxed);
        filler.join().unwrap();
        assert!(last.0 > 0, "the bound was reached at least once");
    }
}
