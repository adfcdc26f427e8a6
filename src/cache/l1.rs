//! The in-process L1 cache: moka weighed in bytes, with a per-entry size cap, a per-entry TTL
//! and eviction counted by cause. A hit is verified against the entry's key check.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::sync::Cache as Moka;

use super::entry::Entry;
use super::front::{self, FrontGet};
use super::key::{CacheKey, KeyBuildHasher, KeyCheck};
use super::stats::{EvictionCause, Stats};

/// What happened to an entry handed to [`L1::insert`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertOutcome {
    /// Handed to moka (which may still evict it, or refuse it admission, for space).
    Stored,
    /// Its frames exceed `max_entry_size`; not stored.
    TooLarge,
}

/// moka's per-entry expiry: the TTL each entry carries. A replacement gets its own TTL
/// (moka's default would keep the replaced entry's deadline).
struct EntryTtl;

impl Expiry<CacheKey, Arc<Entry>> for EntryTtl {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &Arc<Entry>,
        _created_at: Instant,
    ) -> Option<Duration> {
        value.expiry()
    }

    fn expire_after_update(
        &self,
        _key: &CacheKey,
        value: &Arc<Entry>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        value.expiry()
    }
}

/// The L1 cache.
pub struct L1 {
    cache: Moka<CacheKey, Arc<Entry>, KeyBuildHasher>,
    max_entry_size: usize,
    stats: Arc<Stats>,
    /// Generation of the per-thread front entries of this L1 (see [`front`]); `clear`
    /// moves it.
    front_generation: AtomicU64,
    /// Frame bytes each thread's front may hold for this L1.
    front_max_bytes: usize,
}

impl std::fmt::Debug for L1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L1")
            .field("entries", &self.cache.entry_count())
            .field("weighted_bytes", &self.cache.weighted_size())
            .field("max_entry_size", &self.max_entry_size)
            .finish()
    }
}

impl L1 {
    /// A cache holding at most `max_memory` bytes (as weighed by [`Entry::size_bytes`]) and
    /// refusing entries whose frames exceed `max_entry_size` bytes.
    pub(crate) fn new(max_memory: u64, max_entry_size: usize, stats: Arc<Stats>) -> Self {
        let listener_stats = Arc::clone(&stats);
        let cache = Moka::builder()
            .max_capacity(max_memory)
            .weigher(|_key: &CacheKey, entry: &Arc<Entry>| weight(entry))
            .expire_after(EntryTtl)
            // Runs during moka's housekeeping; must not panic (moka would stop calling it).
            .eviction_listener(move |_key, entry: Arc<Entry>, cause| {
                entry.mark_evicted();
                let s = &listener_stats;
                s.left(&entry);
                s.evicted(EvictionCause::from_moka(cause)).inc();
                s.entries.add(-1);
                s.bytes.add(-i64::from(weight(&entry)));
                s.tables.change(&entry.tags, i64::from(weight(&entry)), -1);
            })
            .build_with_hasher(KeyBuildHasher);
        Self {
            cache,
            max_entry_size,
            stats,
            front_generation: AtomicU64::new(front::new_generation()),
            front_max_bytes: usize::try_from(max_memory / 32)
                .unwrap_or(usize::MAX)
                .min(front::MAX_BYTES),
        }
    }

    /// The entry under `key` if present, unexpired and stored under the same `check`. A
    /// different check is a 128-bit key collision: counted and treated as a miss.
    /// The thread's front is asked first (see [`front`]).
    pub fn get(&self, key: &CacheKey, check: &KeyCheck) -> Option<Arc<Entry>> {
        let generation = self.front_generation.load(Ordering::Acquire);
        if let FrontGet::Hit { entry, record } = front::get(generation, key, check, Instant::now())
        {
            if record {
                let _ = self.cache.get(key);
            }
            return Some(entry);
        }
        let entry = self.cache.get(key)?;
        if entry.check == *check {
            front::put(generation, *key, &entry, self.front_max_bytes);
            Some(entry)
        } else {
            self.stats.collisions.inc();
            None
        }
    }

    /// Stores `entry` under `key`, replacing any entry there, unless its frames exceed
    /// `max_entry_size`.
    pub fn insert(&self, key: CacheKey, entry: Arc<Entry>) -> InsertOutcome {
        if entry.frames.len() > self.max_entry_size {
            self.stats.refused_too_large.inc();
            return InsertOutcome::TooLarge;
        }
        // Accounted before the insert: moka may evict (and notify) inside `insert`.
        self.stats.entries.add(1);
        self.stats.bytes.add(i64::from(weight(&entry)));
        self.stats
            .tables
            .change(&entry.tags, i64::from(weight(&entry)), 1);
        self.stats.stores.inc();
        self.cache.insert(key, entry);
        InsertOutcome::Stored
    }

    /// Drops every entry (memory is freed as moka's housekeeping catches up). Callers also
    /// bump the epoch; this only frees the space sooner.
    pub fn clear(&self) {
        self.front_generation
            .store(front::new_generation(), Ordering::Release);
        self.cache.invalidate_all();
    }

    /// Runs moka's pending housekeeping now (evictions, expirations, notifications). moka
    /// does it on its own as operations go by; tests and periodic maintenance call this.
    pub fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks();
    }

    /// Entries held, per moka (approximate until housekeeping runs).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Bytes held as weighed, per moka (approximate until housekeeping runs).
    pub fn weighted_size(&self) -> u64 {
        self.cache.weighted_size()
    }

    /// The per-entry cap on frame bytes (a capture can stop as soon as it passes this).
    pub fn max_entry_size(&self) -> usize {
        self.max_entry_size
    }
}

/// moka weighs in `u32`; entries are capped far below that, and a larger one saturates.
fn weight(entry: &Entry) -> u32 {
    u32::try_from(entry.size_bytes()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::versions::Tag;
    use bytes::Bytes;

    fn entry(check: u64, len: usize, ttl: Duration) -> Arc<Entry> {
        Arc::new(Entry::new(
            KeyCheck(check),
            Bytes::from(vec![7u8; len]),
            ttl,
            Box::new([Tag { db: 1, rel: 2 }]),
        ))
    }

    fn l1(max_memory: u64, max_entry: usize) -> (L1, Arc<Stats>) {
        let stats = Arc::new(Stats::new());
        (L1::new(max_memory, max_entry, Arc::clone(&stats)), stats)
    }

    #[tokio::test]
    async fn get_verifies_the_check() {
        let (l1, stats) = l1(1 << 20, 1 << 10);
        let e = entry(42, 10, Duration::ZERO);
        assert_eq!(
            l1.insert(CacheKey(1), Arc::clone(&e)),
            InsertOutcome::Stored
        );
        let hit = l1.get(&CacheKey(1), &KeyCheck(42)).unwrap();
        assert!(Arc::ptr_eq(&hit, &e));
        assert!(l1.get(&CacheKey(1), &KeyCheck(43)).is_none());
        assert!(l1.get(&CacheKey(2), &KeyCheck(42)).is_none());
        assert_eq!(stats.snapshot().collisions, 1);
        assert_eq!(stats.snapshot().stores, 1);
    }

    #[tokio::test]
    async fn oversized_entries_are_refused_and_counted() {
        let (l1, stats) = l1(1 << 20, 100);
        assert_eq!(
            l1.insert(CacheKey(1), entry(1, 100, Duration::ZERO)),
            InsertOutcome::Stored,
            "exactly the cap is allowed"
        );
        assert_eq!(
            l1.insert(CacheKey(2), entry(1, 101, Duration::ZERO)),
            InsertOutcome::TooLarge
        );
        assert!(l1.get(&CacheKey(2), &KeyCheck(1)).is_none());
        let s = stats.snapshot();
        assert_eq!((s.stores, s.refused_too_large), (1, 1));
    }

    #[tokio::test]
    async fn memory_bound_evicts_by_size_and_counts() {
        // Room for about ten 1 KiB entries.
        let max = 10 * (1024 + 400);
        let (l1, stats) = l1(max, 4096);
        for k in 0..100u128 {
            l1.insert(CacheKey(k), entry(1, 1024, Duration::ZERO));
            // Read every key a few times so the admission policy sees real frequencies.
            for _ in 0..3 {
                let _ = l1.get(&CacheKey(k), &KeyCheck(1));
            }
        }
        l1.run_pending_tasks();
        assert!(l1.weighted_size() <= max, "{} > {max}", l1.weighted_size());
        let s = stats.snapshot();
        assert!(s.evicted_size >= 80, "{s:?}");
        assert_eq!(s.entries, l1.entry_count() as i64, "{s:?}");
        assert_eq!(s.bytes, l1.weighted_size() as i64, "{s:?}");
    }

    #[tokio::test]
    async fn per_entry_ttl_expires_and_replacement_takes_the_new_ttl() {
        let (l1, stats) = l1(1 << 20, 1 << 10);
        l1.insert(CacheKey(1), entry(1, 10, Duration::from_millis(50)));
        l1.insert(CacheKey(2), entry(2, 10, Duration::ZERO));
        l1.insert(CacheKey(3), entry(3, 10, Duration::from_millis(50)));
        // Replacing key 3 with an entry that never expires must not keep the old deadline.
        l1.insert(CacheKey(3), entry(3, 10, Duration::ZERO));
        assert!(l1.get(&CacheKey(1), &KeyCheck(1)).is_some());
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(l1.get(&CacheKey(1), &KeyCheck(1)).is_none(), "expired");
        assert!(l1.get(&CacheKey(2), &KeyCheck(2)).is_some(), "no TTL");
        assert!(l1.get(&CacheKey(3), &KeyCheck(3)).is_some(), "new TTL");
        // moka's timer wheel notifies expirations at a granularity of about a second.
        let deadline = Instant::now() + Duration::from_secs(5);
        while stats.snapshot().evicted_expired == 0 && Instant::now() < deadline {
            l1.run_pending_tasks();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let s = stats.snapshot();
        assert_eq!((s.evicted_expired, s.replaced), (1, 1), "{s:?}");
        assert_eq!(s.entries, 2);
    }

    #[tokio::test]
    async fn clear_removes_everything_explicitly() {
        let (l1, stats) = l1(1 << 20, 1 << 10);
        for k in 0..5u128 {
            l1.insert(CacheKey(k), entry(1, 10, Duration::ZERO));
        }
        l1.clear();
        l1.run_pending_tasks();
        for k in 0..5u128 {
            assert!(l1.get(&CacheKey(k), &KeyCheck(1)).is_none());
        }
        let s = stats.snapshot();
        assert_eq!((s.evicted_explicit, s.entries, s.bytes), (5, 0, 0), "{s:?}");
    }
}
