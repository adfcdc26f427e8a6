//! The result cache, pure: keys, relation versions, entries, the L1 store and fill
//! coalescing. It never parses SQL and never touches a socket; sessions hand it bytes and tags.
//!
//! How a session uses it for one cacheable read (DESIGN §2):
//! 1. `let snap = cache.versions().snapshot(&tags)` — before the statement goes upstream (I1).
//! 2. `let (key, check) = cache.key(&KeyInput::new(fingerprint, sql, &snap)...)`.
//! 3. `match cache.lookup(key, check)`:
//!    - [`Lookup::Hit`]: replay the entry's frames.
//!    - [`Lookup::Miss`]: forward, capture, then [`Cache::complete`] with the guard (or just
//!      drop the guard on error: waiters are released).
//!    - [`Lookup::Wait`]: [`FillWaiter::wait`]; on anything but `Filled`, run the query
//!      yourself (and [`Cache::store`] its result if you like).
//!
//! Writes call [`Versions::bump`] after the commit is reported and before the acknowledgement
//! is relayed (I2). A result is stored only while its snapshot is current, so the cache-aside
//! race (read old → write → bump → store old) cannot store the old result; and were it stored
//! after the check, it would sit under pre-bump versions no later lookup computes.

pub mod entry;
pub mod fill;
pub mod front;
pub mod key;
pub mod l1;
pub mod l2;
pub mod rows;
pub mod stats;
pub mod tiers;
mod usage;
pub mod versions;

use std::sync::Arc;
use std::time::Duration;

pub use entry::Entry;
pub use fill::{FillGuard, FillWaiter, WaitOutcome};
pub use key::{CacheKey, KeyCheck, KeyInput, KeySecret, SecretError};
pub use l1::InsertOutcome;
pub use rows::{RowKey, Stripe};
pub use stats::CacheStats;
pub use versions::{Dep, EpochCause, Tag, VersionSnapshot, Versions};

use fill::{Begin, Fills};
use l1::L1;
use stats::Stats;

/// Default `cache.max_memory`: 256 MiB.
pub const DEFAULT_MAX_MEMORY: u64 = 256 << 20;
/// Default `cache.max_entry_size`: 1 MiB of response frames.
pub const DEFAULT_MAX_ENTRY_SIZE: usize = 1 << 20;
/// Default TTL of an entry when no rule sets one.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);

/// Sizes and the secret the cache is built with (from config; the cache does not read config).
#[derive(Clone, Debug)]
pub struct CacheLimits {
    /// Bytes the L1 may hold, as weighed by [`Entry::size_bytes`].
    pub max_memory: u64,
    /// Largest response (frame bytes) that is stored.
    pub max_entry_size: usize,
    /// TTL for entries whose rules set none; [`Duration::ZERO`] means until invalidated.
    pub default_ttl: Duration,
    /// The per-deployment key secret.
    pub secret: KeySecret,
    /// Bound on relation tags with a version (see [`versions`]).
    pub max_tags: usize,
    /// Bound on keys being filled at once (see [`fill`]).
    pub max_in_flight: usize,
    /// `cache.l1.enabled`: off, nothing is stored in process (a shared tier holds results;
    /// fills are still coalesced and waiters still get the leader's result).
    pub l1_enabled: bool,
}

impl CacheLimits {
    /// The defaults, with the given secret.
    pub fn with_secret(secret: KeySecret) -> Self {
        Self {
            max_memory: DEFAULT_MAX_MEMORY,
            max_entry_size: DEFAULT_MAX_ENTRY_SIZE,
            default_ttl: DEFAULT_TTL,
            secret,
            max_tags: versions::DEFAULT_MAX_TAGS,
            max_in_flight: fill::DEFAULT_MAX_IN_FLIGHT,
            l1_enabled: true,
        }
    }
}

/// The result of a lookup: a closed set, so every caller handles every case.
#[derive(Debug)]
pub enum Lookup {
    /// Cached and verified: replay it.
    Hit(Arc<Entry>),
    /// Not cached and nobody is filling it: you lead the fill.
    Miss(FillGuard),
    /// Not cached, another session is filling it: wait for it.
    Wait(FillWaiter),
}

/// Why a result was not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefuseReason {
    /// Its frames exceed `max_entry_size`.
    TooLarge,
    /// A tag it read, or the epoch, was bumped after its snapshot was taken.
    Stale,
    /// The L1 is disabled (`cache.l1.enabled = false`).
    Disabled,
}

/// What [`Cache::store`] / [`Cache::complete`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreOutcome {
    /// Handed to the L1.
    Stored,
    /// Not stored.
    Refused(RefuseReason),
}

/// The cache: shared by every session (behind an `Arc` in the application context).
pub struct Cache {
    l1: L1,
    fills: Arc<Fills>,
    versions: Arc<Versions>,
    secret: KeySecret,
    default_ttl: Duration,
    l1_enabled: bool,
    stats: Arc<Stats>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("l1", &self.l1)
            .field("versions", &self.versions)
            .field("in_flight", &self.fills.in_flight())
            .finish()
    }
}

impl Cache {
    /// An empty cache. Create it after the metrics recorder is installed (see [`stats`]).
    pub fn new(limits: CacheLimits) -> Self {
        let stats = Arc::new(Stats::new());
        Self {
            l1: L1::new(limits.max_memory, limits.max_entry_size, Arc::clone(&stats)),
            fills: Fills::new(limits.max_in_flight, Arc::clone(&stats)),
            versions: Arc::new(Versions::new(limits.max_tags)),
            secret: limits.secret,
            default_ttl: limits.default_ttl,
            l1_enabled: limits.l1_enabled,
            stats,
        }
    }

    /// The version table, for snapshots (sessions) and bumps (every invalidation source).
    pub fn versions(&self) -> &Arc<Versions> {
        &self.versions
    }

    /// This deployment's secret (row stripes are keyed with it too).
    pub fn secret(&self) -> &KeySecret {
        &self.secret
    }

    /// The key and check of `input` under this deployment's secret.
    pub fn key<B: AsRef<[u8]>>(&self, input: &KeyInput<'_, B>) -> (CacheKey, KeyCheck) {
        input.compute(&self.secret)
    }

    /// The shared-tier key and check of `input` (`None` without shared counters in it).
    pub fn key_l2<B: AsRef<[u8]>>(&self, input: &KeyInput<'_, B>) -> Option<(CacheKey, KeyCheck)> {
        input.compute_l2(&self.secret)
    }

    /// Whether results are kept in process (`cache.l1.enabled`).
    pub fn l1_enabled(&self) -> bool {
        self.l1_enabled
    }

    /// The shared-tier key of `input` alone (it needs no counters).
    pub fn key_l2_slot<B: AsRef<[u8]>>(&self, input: &KeyInput<'_, B>) -> CacheKey {
        input.compute_l2_slot(&self.secret)
    }

    /// TTL for entries whose rules set none.
    pub fn default_ttl(&self) -> Duration {
        self.default_ttl
    }

    /// Largest response (frame bytes) that is stored: a capture may stop once past it.
    pub fn max_entry_size(&self) -> usize {
        self.l1.max_entry_size()
    }

    /// Looks `key` up. A miss either leads the fill or joins the one under way.
    pub fn lookup(&self, key: CacheKey, check: KeyCheck) -> Lookup {
        if let Some(entry) = self.l1.get(&key, &check) {
            self.stats.hits.inc();
            return Lookup::Hit(entry);
        }
        match self.fills.begin(key, check) {
            Begin::Waiter(waiter) => {
                self.stats.misses.inc();
                Lookup::Wait(waiter)
            }
            Begin::Leader(guard) => {
                // A fill may have completed between the L1 miss and registering: look again
                // rather than run the query a second time, handing the entry to anyone who
                // joined in between.
                if let Some(entry) = self.l1.get(&key, &check) {
                    self.stats.hits.inc();
                    guard.publish(Arc::clone(&entry));
                    return Lookup::Hit(entry);
                }
                self.stats.misses.inc();
                Lookup::Miss(guard)
            }
        }
    }

    /// The fill of `key` for a re-run of a cached result (write-through): `None` when it is
    /// cached already or another fill is under way. Not a client's lookup, so neither a hit
    /// nor a miss is counted.
    pub fn lead_refresh(&self, key: CacheKey, check: KeyCheck) -> Option<FillGuard> {
        if self.l1.get(&key, &check).is_some() {
            return None;
        }
        match self.fills.begin(key, check) {
            Begin::Waiter(_) => None,
            // A fill may have completed between the L1 miss and registering.
            Begin::Leader(guard) => match self.l1.get(&key, &check) {
                Some(entry) => {
                    guard.publish(entry);
                    None
                }
                None => Some(guard),
            },
        }
    }

    /// Leads a fill of `key` that replaces `previous`, the entry cached under it
    /// (refresh-ahead: readers keep hitting it meanwhile, and wait for this fill once it
    /// expired). `None` when another fill of the key is under way, or the L1 holds another
    /// entry under it (a newer one: nothing to replace).
    pub fn lead_replacement(
        &self,
        key: CacheKey,
        check: KeyCheck,
        previous: &std::sync::Weak<Entry>,
    ) -> Option<FillGuard> {
        let newer = |e: Arc<Entry>| !std::ptr::eq(Arc::as_ptr(&e), previous.as_ptr());
        if self.l1.get(&key, &check).is_some_and(newer) {
            return None;
        }
        match self.fills.begin(key, check) {
            Begin::Leader(guard) => Some(guard),
            Begin::Waiter(_) => None,
        }
    }

    /// An L1 lookup that does not join or lead a fill (before asking the shared tier).
    pub fn peek(&self, key: CacheKey, check: KeyCheck) -> Option<Arc<Entry>> {
        let entry = self.l1.get(&key, &check)?;
        self.stats.hits.inc();
        Some(entry)
    }

    /// An L2 hit: stored in the L1 as [`store`](Self::store) would (refused when the
    /// snapshot is no longer current) and returned to answer with either way — the L2 key
    /// was current when it was read.
    pub fn promote(&self, key: CacheKey, snapshot: &VersionSnapshot, entry: Entry) -> Arc<Entry> {
        let entry = Arc::new(entry);
        self.store_arc(key, snapshot, Arc::clone(&entry));
        entry
    }

    /// Stores a result computed under `snapshot`, unless the snapshot is no longer current
    /// or the result is too large. For results without a fill guard (a waiter that ran its
    /// own query, a pipelined group).
    pub fn store(&self, key: CacheKey, snapshot: &VersionSnapshot, entry: Entry) -> StoreOutcome {
        self.store_arc(key, snapshot, Arc::new(entry))
    }

    /// Completes a fill: stores the result as [`store`](Self::store) does, then hands it to
    /// every waiter. Waiters get it even when it is not stored: they share the leader's key,
    /// so their snapshots match the leader's and they started before any bump it missed.
    pub fn complete(
        &self,
        guard: FillGuard,
        snapshot: &VersionSnapshot,
        entry: Entry,
    ) -> StoreOutcome {
        self.complete_arc(guard, snapshot, Arc::new(entry))
    }

    /// As [`complete`](Self::complete), for an entry the caller keeps a handle to.
    pub fn complete_arc(
        &self,
        guard: FillGuard,
        snapshot: &VersionSnapshot,
        entry: Arc<Entry>,
    ) -> StoreOutcome {
        let outcome = self.store_arc(guard.key(), snapshot, Arc::clone(&entry));
        guard.publish(entry);
        outcome
    }

    fn store_arc(
        &self,
        key: CacheKey,
        snapshot: &VersionSnapshot,
        entry: Arc<Entry>,
    ) -> StoreOutcome {
        if !snapshot.is_current(&self.versions) {
            self.stats.refused_stale.inc();
            return StoreOutcome::Refused(RefuseReason::Stale);
        }
        if !self.l1_enabled {
            return StoreOutcome::Refused(RefuseReason::Disabled);
        }
        match self.l1.insert(key, entry) {
            InsertOutcome::Stored => StoreOutcome::Stored,
            InsertOutcome::TooLarge => StoreOutcome::Refused(RefuseReason::TooLarge),
        }
    }

    /// Makes every entry unreachable (epoch bump) and frees their memory (manual flush,
    /// SIGUSR1). Returns the new epoch.
    pub fn flush(&self, cause: EpochCause) -> u64 {
        let epoch = self.versions.bump_epoch(cause);
        self.l1.clear();
        epoch
    }

    /// Entries and bytes held per relation (tag, entries, bytes), and how many stores read
    /// a relation past the tracking bound (see [`usage`]).
    pub fn table_usage(&self) -> (Vec<(Tag, i64, i64)>, u64) {
        (self.stats.tables.list(), self.stats.tables.untracked())
    }

    /// Lookups answered from the L1 so far (cheaper than a whole [`stats`](Self::stats)).
    pub fn hits(&self) -> u64 {
        self.stats.hits.get()
    }

    /// The counters, now.
    pub fn stats(&self) -> CacheStats {
        self.stats.snapshot()
    }

    /// Runs the L1's pending housekeeping now (evictions, expirations, notifications).
    pub fn run_pending_tasks(&self) {
        self.l1.run_pending_tasks();
    }
}

#[cfg(test)]
mod tests;
