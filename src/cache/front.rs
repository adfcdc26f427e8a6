//! A per-thread front for the L1: the entries a session worker thread served recently, read
//! without touching moka. Every moka read is recorded for its eviction policy (a shared
//! buffer and, every so often, housekeeping on the reading thread); at cache-hit rates that
//! bookkeeping, and the cache lines it bounces between cores, cost more than the hit itself.
//!
//! Correctness does not depend on the front: an entry is found only under the key it was
//! stored under (which covers the versions and epoch, so invalidation changes the key), its
//! key check is compared and its TTL is checked here, exactly as the L1 does. Entries moka
//! evicted or replaced are marked by its listener and skipped; a `clear` changes the L1's
//! front generation, which makes every entry held for it unreachable at once.
//!
//! Bounded per thread by entries and bytes, weighed as the L1 weighs them (frames, the entry,
//! its bookkeeping). An entry evicted from the L1, expired or cleared stays referenced here
//! (and in memory) until the front drops it: when a lookup finds it, and in a sweep each time
//! the front has grown to twice what the last sweep left, so what it holds beyond the L1 stays
//! near what its live entries hold; the soak saw fronts full of dead entries swing the heap by
//! 20 MB. When even its live entries fill it, the front is emptied (the L1 still has them).
//! The process can hold up to [`MAX_BYTES`] per worker thread beyond `cache.max_memory`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::entry::Entry;
use super::key::{CacheKey, KeyBuildHasher, KeyCheck};

/// Entries held per thread.
const MAX_ENTRIES: usize = 65_536;
/// The front is swept at this many entries at the least (a sweep walks them all).
const SWEEP_MIN: usize = 1_024;
/// Frame bytes held per thread, at most (the L1 passes its own bound, a share of its
/// memory, to [`put`]).
pub const MAX_BYTES: usize = 16 << 20;
/// Larger results are not held: for them the write dominates, not the lookup.
const MAX_ENTRY_BYTES: usize = 64 << 10;
/// One front hit in this many also reads through moka, so its eviction policy keeps seeing
/// how often the entries in use are read.
const RECORD_EVERY: u32 = 8;

static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

/// A generation no front entry was stored under: every L1 takes one at creation and at each
/// `clear`.
pub fn new_generation() -> u64 {
    NEXT_GENERATION.fetch_add(1, Ordering::Relaxed)
}

struct Slot {
    generation: u64,
    entry: Arc<Entry>,
}

struct Front {
    map: HashMap<CacheKey, Slot, KeyBuildHasher>,
    bytes: usize,
    hits: u32,
    /// Entries at which the next sweep runs.
    sweep_at: usize,
}

thread_local! {
    static FRONT: RefCell<Front> = const {
        RefCell::new(Front {
            map: HashMap::with_hasher(KeyBuildHasher),
            bytes: 0,
            hits: 0,
            sweep_at: SWEEP_MIN,
        })
    };
}

/// What the front holds for a key.
pub enum FrontGet {
    /// Valid: serve it. `record` asks the caller to also read through moka this time.
    Hit { entry: Arc<Entry>, record: bool },
    /// Absent, or no longer valid (dropped from the front).
    Miss,
}

/// The entry held for `key` under `generation`, if it is still valid: same key check, not
/// evicted from the L1, not expired at `now`.
pub fn get(generation: u64, key: &CacheKey, check: &KeyCheck, now: Instant) -> FrontGet {
    FRONT
        .try_with(|front| {
            let mut front = front.borrow_mut();
            let valid = match front.map.get(key) {
                None => return FrontGet::Miss,
                Some(slot) => {
                    slot.generation == generation
                        && slot.entry.check == *check
                        && !slot.entry.is_evicted()
                        && !slot.entry.is_expired(now)
                }
            };
            if !valid {
                if let Some(slot) = front.map.remove(key) {
                    front.bytes = front.bytes.saturating_sub(slot.entry.size_bytes());
                }
                return FrontGet::Miss;
            }
            front.hits = front.hits.wrapping_add(1);
            let record = front.hits.is_multiple_of(RECORD_EVERY);
            match front.map.get(key) {
                Some(slot) => FrontGet::Hit {
                    entry: Arc::clone(&slot.entry),
                    record,
                },
                None => FrontGet::Miss,
            }
        })
        .unwrap_or(FrontGet::Miss)
}

/// Holds `entry` (just read from the L1) for `key` under `generation`, keeping this thread's
/// front within `max_bytes` (weighed as the L1 weighs entries).
pub fn put(generation: u64, key: CacheKey, entry: &Arc<Entry>, max_bytes: usize) {
    if entry.frames.len() > MAX_ENTRY_BYTES {
        return;
    }
    let weight = entry.size_bytes();
    if weight > max_bytes {
        return;
    }
    let _ = FRONT.try_with(|front| {
        let mut front = front.borrow_mut();
        let full = |f: &Front| f.map.len() >= MAX_ENTRIES || f.bytes + weight > max_bytes;
        if full(&front) || front.map.len() >= front.sweep_at {
            sweep(&mut front, generation, Instant::now());
        }
        if full(&front) {
            front.map.clear();
            front.bytes = 0;
        }
        let slot = Slot {
            generation,
            entry: Arc::clone(entry),
        };
        if let Some(old) = front.map.insert(key, slot) {
            front.bytes = front.bytes.saturating_sub(old.entry.size_bytes());
        }
        front.bytes += weight;
    });
}

/// Drops what can no longer be served (evicted from the L1, expired, or held for a cleared
/// L1) and sets the next sweep at twice what is left: the walk costs O(1) per put amortised.
fn sweep(front: &mut Front, generation: u64, now: Instant) {
    let mut dropped = 0;
    front.map.retain(|_, slot| {
        let live = slot.generation == generation
            && !slot.entry.is_evicted()
            && !slot.entry.is_expired(now);
        if !live {
            dropped += slot.entry.size_bytes();
        }
        live
    });
    front.bytes = front.bytes.saturating_sub(dropped);
    front.sweep_at = front.map.len().saturating_mul(2).max(SWEEP_MIN);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::Duration;

    fn entry(check: u64, ttl: Duration) -> Arc<Entry> {
        Arc::new(Entry::new(
            KeyCheck(check),
            Bytes::from_static(b"frames"),
            ttl,
            Box::new([]),
        ))
    }

    fn hit(generation: u64, key: u128, check: u64) -> bool {
        matches!(
            get(generation, &CacheKey(key), &KeyCheck(check), Instant::now()),
            FrontGet::Hit { .. }
        )
    }

    #[test]
    fn serves_only_valid_entries() {
        let g = new_generation();
        let e = entry(7, Duration::ZERO);
        put(g, CacheKey(1), &e, MAX_BYTES);
        assert!(hit(g, 1, 7));
        assert!(!hit(g, 1, 8), "another check is a collision");
        put(g, CacheKey(1), &e, MAX_BYTES);
        assert!(
            !hit(new_generation(), 1, 7),
            "a cleared L1's entries are gone"
        );
        put(g, CacheKey(2), &e, MAX_BYTES);
        e.mark_evicted();
        assert!(!hit(g, 2, 7), "evicted from the L1");
    }

    #[test]
    fn expired_entries_are_not_served() {
        let g = new_generation();
        let e = entry(1, Duration::from_millis(20));
        put(g, CacheKey(3), &e, MAX_BYTES);
        assert!(hit(g, 3, 1));
        assert!(matches!(
            get(
                g,
                &CacheKey(3),
                &KeyCheck(1),
                Instant::now() + Duration::from_millis(25)
            ),
            FrontGet::Miss
        ));
    }

    #[test]
    fn dead_entries_are_swept_as_the_front_grows() {
        let g = new_generation();
        let keep = entry(1, Duration::ZERO);
        put(g, CacheKey(u128::MAX), &keep, MAX_BYTES);
        // Many entries the L1 evicts right after they are held (a churning cache): without
        // a sweep the front would keep all of them, and their memory, until it is full.
        for k in 0..(4 * SWEEP_MIN as u128) {
            let e = entry(1, Duration::ZERO);
            put(g, CacheKey(k), &e, MAX_BYTES);
            e.mark_evicted();
        }
        FRONT.with(|f| {
            let f = f.borrow();
            assert!(
                f.map.len() <= 2 * SWEEP_MIN,
                "{} entries held, nearly all evicted",
                f.map.len()
            );
            let weighed: usize = f.map.values().map(|s| s.entry.size_bytes()).sum();
            assert_eq!(f.bytes, weighed, "the weight follows what is held");
        });
        assert!(hit(g, u128::MAX, 1), "the live entry is kept");
    }

    #[test]
    fn bounded_by_entries() {
        let g = new_generation();
        let e = entry(1, Duration::ZERO);
        for k in 0..(MAX_ENTRIES as u128 + 10) {
            put(g, CacheKey(k), &e, MAX_BYTES);
        }
        FRONT.with(|f| assert!(f.borrow().map.len() <= MAX_ENTRIES));
        assert!(hit(g, MAX_ENTRIES as u128 + 9, 1), "the newest is kept");
    }

    #[test]
    fn some_hits_ask_to_record_in_moka() {
        let g = new_generation();
        put(g, CacheKey(4), &entry(1, Duration::ZERO), MAX_BYTES);
        let records = (0..RECORD_EVERY * 4)
            .filter(|_| {
                matches!(
                    get(g, &CacheKey(4), &KeyCheck(1), Instant::now()),
                    FrontGet::Hit { record: true, .. }
                )
            })
            .count();
        assert_eq!(records, 4);
    }
}
