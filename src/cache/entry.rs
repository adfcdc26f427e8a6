//! A cached result: the pre-encoded response frames (replayed with one write), the key check
//! that proves a hit is not a collision, its TTL, and its size for the byte-weighed cache.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::key::KeyCheck;
use super::versions::Tag;

/// Approximate per-entry bookkeeping outside the entry itself (moka's node, key, deque and
/// timer-wheel links, the `Arc`): counted so that many tiny results cannot exceed
/// `max_memory` by far. An estimate; only its order of magnitude matters.
const OVERHEAD_BYTES: usize = 160;

/// One cached result.
#[derive(Debug)]
pub struct Entry {
    /// Check of the key the entry was stored under; compared on every hit.
    pub check: KeyCheck,
    /// The response frames exactly as the client receives them (for the simple protocol:
    /// RowDescription, DataRows, CommandComplete; the session adds ReadyForQuery).
    pub frames: Bytes,
    /// When the result was captured.
    pub created: Instant,
    /// Time to live from `created`; [`Duration::ZERO`] means "until invalidated".
    pub ttl: Duration,
    /// The tags the result was read from (for metrics and debugging; the key already covers
    /// their versions).
    pub tags: Box<[Tag]>,
    /// Set when the L1 evicts, expires or replaces the entry: per-thread fronts drop it then.
    evicted: AtomicBool,
}

impl Entry {
    /// A result captured now.
    pub fn new(check: KeyCheck, frames: Bytes, ttl: Duration, tags: Box<[Tag]>) -> Self {
        Self {
            check,
            frames,
            created: Instant::now(),
            ttl,
            tags,
            evicted: AtomicBool::new(false),
        }
    }

    /// The L1 no longer holds the entry.
    pub fn mark_evicted(&self) {
        self.evicted.store(true, Ordering::Relaxed);
    }

    /// Whether the L1 let the entry go (see [`Entry::mark_evicted`]).
    pub fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Whether its TTL has run out at `now` (never, with no TTL).
    pub fn is_expired(&self, now: Instant) -> bool {
        !self.ttl.is_zero() && now.saturating_duration_since(self.created) >= self.ttl
    }

    /// Bytes the entry accounts for in the cache: frames, tags, the entry and its bookkeeping.
    pub fn size_bytes(&self) -> usize {
        self.frames.len()
            + std::mem::size_of_val::<[Tag]>(&self.tags)
            + std::mem::size_of::<Self>()
            + OVERHEAD_BYTES
    }

    /// The TTL the cache should apply, `None` when the entry lives until invalidated (or
    /// evicted for space).
    pub fn expiry(&self) -> Option<Duration> {
        (!self.ttl.is_zero()).then_some(self.ttl)
    }

    /// How long ago the result was captured (for refresh-ahead and debugging).
    pub fn age(&self) -> Duration {
        self.created.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_counts_frames_tags_and_overhead() {
        let small = Entry::new(KeyCheck(1), Bytes::new(), Duration::ZERO, Box::new([]));
        let big = Entry::new(
            KeyCheck(1),
            Bytes::from(vec![0u8; 1000]),
            Duration::ZERO,
            vec![Tag { db: 1, rel: 2 }; 3].into_boxed_slice(),
        );
        assert!(small.size_bytes() >= OVERHEAD_BYTES);
        assert_eq!(big.size_bytes() - small.size_bytes(), 1000 + 3 * 8);
    }

    #[test]
    fn zero_ttl_means_no_expiry() {
        let forever = Entry::new(KeyCheck(1), Bytes::new(), Duration::ZERO, Box::new([]));
        let minute = Entry::new(
            KeyCheck(1),
            Bytes::new(),
            Duration::from_secs(60),
            Box::new([]),
        );
        assert_eq!(forever.expiry(), None);
        assert_eq!(minute.expiry(), Some(Duration::from_secs(60)));
        assert!(minute.age() < Duration::from_secs(60));
    }
}
