//! The most requested cached results of this run (`warming.hot_keys`), to write to the
//! hot-key file at shutdown (see `hotkeys`) and warm again at the next start.
//!
//! Counting every hit would put a lock on the hottest path pgmemo has (a million lookups a
//! second on 16 cores), so sessions count only the hits they already sample for latency
//! (one lookup in 16), and a sample that finds the counter busy is dropped rather than
//! waited for ([`HotKeys::sample`] never blocks). The counter is a *space-saving* top-k
//! sketch: at most `capacity` results are tracked; a result not tracked takes the place of
//! the least counted one and inherits its count plus one, so a result hit more often than
//! that count over the run is always among those kept (Metwally et al., 2005). Counts are
//! therefore estimates, biased upwards, and are only used to order the file.
//!
//! Bounded in bytes: each tracked result is weighed (its request, database and login), the
//! total stays within [`MAX_BYTES`] (what the file can hold) by evicting the least counted,
//! and a result heavier than [`MAX_KEY_BYTES`] is not tracked at all.

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};

use crate::refresh::hotkeys::MAX_FILE_BYTES;
use crate::refresh::pool::LoginKey;
use crate::refresh::recipes::Request;

/// Most bytes the tracked results may weigh: more could not be written to the file.
pub const MAX_BYTES: usize = MAX_FILE_BYTES;
/// Most bytes one tracked result may weigh (a statement this large is rarely hot, and a few
/// of them would crowd out thousands of point reads).
pub const MAX_KEY_BYTES: usize = 64 << 10;
/// Bytes of a tracked result besides its strings (the struct, the maps' entries, the `Arc`).
const OVERHEAD: usize = 192;

/// One tracked result: what running it again takes.
#[derive(Debug)]
pub struct HotEntry {
    pub database: Arc<str>,
    /// How the session that read it logged in.
    pub login: Arc<LoginKey>,
    /// The fingerprint digest of that session.
    pub fingerprint: [u8; 16],
    pub request: Request,
}

impl HotEntry {
    fn weight(&self) -> usize {
        let request = match &self.request {
            Request::Simple { sql } => sql.len(),
            Request::Extended {
                sql,
                param_types,
                bind_tail,
            } => sql.len() + param_types.len() + bind_tail.len(),
        };
        // The login is shared with the session (and other entries) but may outlive it here:
        // weighed in full, per entry.
        OVERHEAD + self.database.len() + request + self.login.bytes()
    }
}

/// The identity of a result for counting: its database, fingerprint and request (with
/// `extended`, the Parse's parameter types and the Bind after its names). Equal for every
/// session that would share its cache entry, whatever the session's other labels.
pub fn id(
    database: &str,
    fingerprint: &[u8; 16],
    sql: &[u8],
    extended: Option<(&[u8], &[u8])>,
) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    database.hash(&mut h);
    fingerprint.hash(&mut h);
    sql.hash(&mut h);
    extended.hash(&mut h);
    h.finish()
}

struct Counted {
    entry: Arc<HotEntry>,
    count: u64,
    weight: usize,
}

#[derive(Default)]
struct Sketch {
    by_id: HashMap<u64, Counted>,
    /// (count, id), least counted first: the eviction order.
    by_count: BTreeSet<(u64, u64)>,
    bytes: usize,
}

/// The sampled hit counter, shared by every session.
pub struct HotKeys {
    sketch: Mutex<Sketch>,
    capacity: usize,
    max_bytes: usize,
}

impl std::fmt::Debug for HotKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("HotKeys")
            .field("tracked", &s.by_id.len())
            .field("bytes", &s.bytes)
            .finish()
    }
}

impl HotKeys {
    /// Tracks at most `capacity` results (`warming.hot_keys`) within [`MAX_BYTES`].
    pub fn new(capacity: usize) -> Self {
        Self::with_bytes(capacity, MAX_BYTES)
    }

    /// With another byte bound (tests).
    pub fn with_bytes(capacity: usize, max_bytes: usize) -> Self {
        Self {
            sketch: Mutex::default(),
            capacity,
            max_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Sketch> {
        self.sketch.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one sampled hit of result `id` (see [`id`]); `entry` makes its description,
    /// called only when the result is not tracked yet. Never waits: when another session
    /// holds the counter, this sample is dropped.
    pub fn sample(&self, id: u64, entry: impl FnOnce() -> HotEntry) {
        let mut s = match self.sketch.try_lock() {
            Ok(s) => s,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        if let Some(c) = s.by_id.get_mut(&id) {
            let old = c.count;
            c.count += 1;
            let new = c.count;
            s.by_count.remove(&(old, id));
            s.by_count.insert((new, id));
            return;
        }
        if self.capacity == 0 {
            return;
        }
        let entry = entry();
        let weight = entry.weight();
        if weight > MAX_KEY_BYTES || weight > self.max_bytes {
            return;
        }
        // Space-saving: the newcomer takes the place of the least counted, with its count.
        let mut floor = 0;
        while s.by_id.len() >= self.capacity || s.bytes + weight > self.max_bytes {
            let Some((count, victim)) = s.by_count.pop_first() else {
                break;
            };
            if let Some(gone) = s.by_id.remove(&victim) {
                s.bytes = s.bytes.saturating_sub(gone.weight);
            }
            floor = floor.max(count);
        }
        s.bytes += weight;
        s.by_count.insert((floor + 1, id));
        s.by_id.insert(
            id,
            Counted {
                entry: Arc::new(entry),
                count: floor + 1,
                weight,
            },
        );
    }

    /// The tracked results, most counted first, with their counts.
    pub fn top(&self) -> Vec<(Arc<HotEntry>, u64)> {
        let s = self.lock();
        s.by_count
            .iter()
            .rev()
            .filter_map(|(count, id)| Some((Arc::clone(&s.by_id.get(id)?.entry), *count)))
            .collect()
    }

    /// Bytes the tracked results weigh.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn entry(sql: &str) -> HotEntry {
        HotEntry {
            database: Arc::from("db"),
            login: Arc::new(LoginKey {
                database: "db".into(),
                user: "u".into(),
                params: Vec::new(),
            }),
            fingerprint: [1; 16],
            request: Request::Simple {
                sql: Bytes::copy_from_slice(sql.as_bytes()),
            },
        }
    }

    fn hit(h: &HotKeys, sql: &str) {
        h.sample(id("db", &[1; 16], sql.as_bytes(), None), || entry(sql));
    }

    fn sqls(h: &HotKeys) -> Vec<(String, u64)> {
        h.top()
            .into_iter()
            .map(|(e, n)| match &e.request {
                Request::Simple { sql } => (String::from_utf8_lossy(sql).into_owned(), n),
                Request::Extended { .. } => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn the_hottest_are_kept_in_order_within_the_capacity() {
        let h = HotKeys::new(3);
        // A long tail of results read once, interleaved with three hot ones.
        for round in 0..100 {
            for _ in 0..3 {
                hit(&h, "SELECT 'a'");
            }
            for _ in 0..2 {
                hit(&h, "SELECT 'b'");
            }
            hit(&h, "SELECT 'c'");
            hit(&h, &format!("SELECT {round}"));
        }
        let top = sqls(&h);
        assert_eq!(top.len(), 3);
        let names: Vec<&str> = top.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(names[..2], ["SELECT 'a'", "SELECT 'b'"]);
        // Space-saving over-counts at most by the evicted floor: never under-counts.
        assert!(top[0].1 >= 300, "{top:?}");
        assert!(top[1].1 >= 200, "{top:?}");
    }

    #[test]
    fn the_bytes_stay_bounded_and_large_statements_are_not_tracked() {
        let one = entry("SELECT 1").weight();
        let h = HotKeys::with_bytes(1000, one * 4);
        for i in 0..100 {
            hit(&h, &format!("SELECT {}", i % 10));
        }
        assert!(h.bytes() <= one * 4, "{}", h.bytes());
        assert!(h.top().len() <= 4);
        let big = "x".repeat(MAX_KEY_BYTES);
        let h = HotKeys::new(10);
        hit(&h, &big);
        assert!(h.top().is_empty());
        assert_eq!(h.bytes(), 0);
    }

    #[test]
    fn a_busy_counter_drops_the_sample_and_zero_capacity_tracks_nothing() {
        let h = HotKeys::new(10);
        hit(&h, "SELECT 1");
        {
            let _held = h.lock();
            // Another session holds it: this sample is dropped, not waited for.
            hit(&h, "SELECT 1");
            hit(&h, "SELECT 2");
        }
        assert_eq!(sqls(&h), [("SELECT 1".to_owned(), 1)]);
        let off = HotKeys::new(0);
        hit(&off, "SELECT 1");
        assert!(off.top().is_empty());
    }

    #[test]
    fn identities_tell_requests_and_sessions_apart() {
        let simple = id("db", &[1; 16], b"SELECT 1", None);
        assert_ne!(simple, id("db", &[2; 16], b"SELECT 1", None));
        assert_ne!(simple, id("db2", &[1; 16], b"SELECT 1", None));
        assert_ne!(simple, id("db", &[1; 16], b"SELECT 1", Some((b"", b""))));
        assert_ne!(
            id(
                "db",
                &[1; 16],
                b"SELECT $1",
                Some((b"", b"\0\0\0\x01\0\0\0\x011\0\0"))
            ),
            id(
                "db",
                &[1; 16],
                b"SELECT $1",
                Some((b"", b"\0\0\0\x01\0\0\0\x012\0\0"))
            )
        );
        assert_eq!(simple, id("db", &[1; 16], b"SELECT 1", None));
    }
}
