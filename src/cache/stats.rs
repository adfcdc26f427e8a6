//! The cache's counters: each one is kept locally (for tests and the admin API's JSON) and
//! exported through the `metrics` recorder under a name from `telemetry::names`.
//!
//! Metric handles are created once, when the cache is built; the Prometheus recorder must be
//! installed before that (it is, at start-up) or the exported side stays a no-op.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use moka::notification::RemovalCause;

use crate::telemetry::names;
use crate::telemetry::striped::Striped;

/// A counter with a local value, exported under a name (striped per thread: hits and misses
/// are counted on every lookup by every worker).
pub(crate) struct Count(Arc<Striped>);

impl Count {
    fn new(name: &'static str, labels: &[(&'static str, &'static str)]) -> Self {
        Self(Striped::register(name, labels))
    }

    pub(crate) fn inc(&self) {
        self.0.inc();
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.get()
    }
}

/// A level (entries, bytes) kept locally and exported as a gauge. Signed: an eviction
/// notification may be delivered before the insert that it follows is fully accounted.
pub(crate) struct Level {
    local: AtomicI64,
    exported: metrics::Gauge,
}

impl Level {
    fn new(exported: metrics::Gauge) -> Self {
        Self {
            local: AtomicI64::new(0),
            exported,
        }
    }

    pub(crate) fn add(&self, delta: i64) {
        let now = self.local.fetch_add(delta, Ordering::Relaxed) + delta;
        self.exported.set(now as f64);
    }

    pub(crate) fn get(&self) -> i64 {
        self.local.load(Ordering::Relaxed)
    }
}

/// Why an entry left the cache (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvictionCause {
    /// Evicted (or refused admission) to stay within `max_memory`.
    Size,
    /// Its TTL passed.
    Expired,
    /// Removed on purpose (flush).
    Explicit,
    /// Overwritten by a newer entry under the same key.
    Replaced,
}

impl EvictionCause {
    const ALL: [EvictionCause; 4] = [Self::Size, Self::Expired, Self::Explicit, Self::Replaced];

    fn as_str(self) -> &'static str {
        match self {
            Self::Size => "size",
            Self::Expired => "expired",
            Self::Explicit => "explicit",
            Self::Replaced => "replaced",
        }
    }

    pub(crate) fn from_moka(cause: RemovalCause) -> Self {
        match cause {
            RemovalCause::Size => Self::Size,
            RemovalCause::Expired => Self::Expired,
            RemovalCause::Explicit => Self::Explicit,
            RemovalCause::Replaced => Self::Replaced,
        }
    }
}

/// How a coalesced wait for another session's fill ended (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitEnd {
    /// The leader stored (or at least produced) the result.
    Filled,
    /// The leader failed, was cancelled or disconnected.
    LeaderGaveUp,
    /// The wait timed out.
    TimedOut,
    /// The waiter itself stopped waiting (its client cancelled or disconnected).
    Cancelled,
}

impl WaitEnd {
    const ALL: [WaitEnd; 4] = [
        Self::Filled,
        Self::LeaderGaveUp,
        Self::TimedOut,
        Self::Cancelled,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Filled => "filled",
            Self::LeaderGaveUp => "leader_gave_up",
            Self::TimedOut => "timed_out",
            Self::Cancelled => "cancelled",
        }
    }
}

/// Every counter of one cache.
pub(crate) struct Stats {
    pub(crate) hits: Count,
    pub(crate) misses: Count,
    pub(crate) collisions: Count,
    pub(crate) stores: Count,
    pub(crate) refused_too_large: Count,
    pub(crate) refused_stale: Count,
    evictions: [Count; EvictionCause::ALL.len()],
    waits: [Count; WaitEnd::ALL.len()],
    pub(crate) uncoalesced: Count,
    /// Refreshed entries that left the cache unread: by write-through, by refresh-ahead.
    wasted: [Count; 2],
    pub(crate) entries: Level,
    pub(crate) bytes: Level,
    /// The same, per relation read.
    pub(crate) tables: super::usage::TableUsage,
}

impl Stats {
    pub(crate) fn new() -> Self {
        let refused =
            |reason: &'static str| Count::new(names::CACHE_STORE_REFUSALS, &[("reason", reason)]);
        Self {
            hits: Count::new(names::CACHE_HITS, &[]),
            misses: Count::new(names::CACHE_MISSES, &[]),
            collisions: Count::new(names::CACHE_KEY_COLLISIONS, &[]),
            stores: Count::new(names::CACHE_STORES, &[]),
            refused_too_large: refused("too_large"),
            refused_stale: refused("stale"),
            evictions: EvictionCause::ALL
                .map(|c| Count::new(names::CACHE_EVICTIONS, &[("cause", c.as_str())])),
            waits: WaitEnd::ALL
                .map(|w| Count::new(names::CACHE_FILL_WAITS, &[("result", w.as_str())])),
            uncoalesced: Count::new(names::CACHE_FILLS_UNCOALESCED, &[]),
            wasted: ["write", "ahead"]
                .map(|cause| Count::new(names::REFRESH_WASTED, &[("cause", cause)])),
            entries: Level::new(metrics::gauge!(names::CACHE_ENTRIES)),
            bytes: Level::new(metrics::gauge!(names::CACHE_BYTES)),
            tables: super::usage::TableUsage::default(),
        }
    }

    // The arrays are built from `ALL` in declaration order and sized `ALL.len()`, so a
    // variant's discriminant is always in range.
    #[allow(clippy::indexing_slicing)]
    pub(crate) fn evicted(&self, cause: EvictionCause) -> &Count {
        &self.evictions[cause as usize]
    }

    #[allow(clippy::indexing_slicing)]
    pub(crate) fn wait_ended(&self, end: WaitEnd) -> &Count {
        &self.waits[end as usize]
    }

    /// An entry left the cache: counted as a wasted refresh when a refresh stored it and
    /// no client read it.
    pub(crate) fn left(&self, entry: &super::Entry) {
        if !entry.wasted() {
            return;
        }
        let count = match entry.origin().refresh_label() {
            Some("write") => self.wasted.first(),
            Some(_) => self.wasted.get(1),
            None => None,
        };
        if let Some(c) = count {
            c.inc();
        }
    }

    pub(crate) fn snapshot(&self) -> CacheStats {
        let evicted = |c| self.evicted(c).get();
        let waited = |w| self.wait_ended(w).get();
        CacheStats {
            hits: self.hits.get(),
            misses: self.misses.get(),
            collisions: self.collisions.get(),
            stores: self.stores.get(),
            refused_too_large: self.refused_too_large.get(),
            refused_stale: self.refused_stale.get(),
            evicted_size: evicted(EvictionCause::Size),
            evicted_expired: evicted(EvictionCause::Expired),
            evicted_explicit: evicted(EvictionCause::Explicit),
            replaced: evicted(EvictionCause::Replaced),
            waits_filled: waited(WaitEnd::Filled),
            waits_leader_gave_up: waited(WaitEnd::LeaderGaveUp),
            waits_timed_out: waited(WaitEnd::TimedOut),
            waits_cancelled: waited(WaitEnd::Cancelled),
            uncoalesced: self.uncoalesced.get(),
            entries: self.entries.get(),
            bytes: self.bytes.get(),
        }
    }
}

/// A point-in-time copy of the cache's counters (what the metrics export, as plain numbers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from L1.
    pub hits: u64,
    /// Lookups that found nothing (whether they then led a fill or waited for one).
    pub misses: u64,
    /// Lookups or waits whose key matched an entry with a different check.
    pub collisions: u64,
    /// Entries handed to L1.
    pub stores: u64,
    /// Results not stored: over `max_entry_size`.
    pub refused_too_large: u64,
    /// Results not stored: computed under a snapshot that was no longer current.
    pub refused_stale: u64,
    /// Entries evicted or refused admission for space.
    pub evicted_size: u64,
    /// Entries whose TTL passed.
    pub evicted_expired: u64,
    /// Entries removed by a flush.
    pub evicted_explicit: u64,
    /// Entries overwritten under the same key.
    pub replaced: u64,
    /// Coalesced waits that got the leader's result.
    pub waits_filled: u64,
    /// Coalesced waits whose leader gave up.
    pub waits_leader_gave_up: u64,
    /// Coalesced waits that timed out.
    pub waits_timed_out: u64,
    /// Coalesced waits abandoned by the waiter.
    pub waits_cancelled: u64,
    /// Misses not coalesced because the in-flight table was full.
    pub uncoalesced: u64,
    /// Entries currently held (as of the last notification).
    pub entries: i64,
    /// Bytes currently held, as weighed (as of the last notification).
    pub bytes: i64,
}
