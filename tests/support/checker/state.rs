//! State shared by the checker's clients: per-key floors and ceilings, the counters and
//! first details of what went wrong, the deliberately broken cache of the fault modes, and
//! the seeded PRNG each client draws its workload from.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::targets::{Fam, Rows, Slot};
use super::{CheckerConfig, Fault, MAX_DETAILS, Report};

/// Bound on the fault modes' client-side cache (entries); the read targets are finite, so
/// this is never reached with the default shape, but a cache is bounded all the same.
const FAULT_CACHE_CAPACITY: usize = 100_000;

/// xorshift64* seeded through splitmix64: deterministic, dependency-free, good enough to
/// pick operations and keys.
pub(crate) struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // xorshift never leaves zero.
        Rng(if z == 0 { 1 } else { z })
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    pub fn chance(&mut self, percent: u32) -> bool {
        self.next_u64() % 100 < u64::from(percent)
    }

    /// Index into `weights` drawn proportionally to the weights (all zero = index 0).
    pub fn weighted(&mut self, weights: &[u32]) -> usize {
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        if total == 0 {
            return 0;
        }
        let mut pick = self.next_u64() % total;
        for (i, w) in weights.iter().enumerate() {
            let w = u64::from(*w);
            if pick < w {
                return i;
            }
            pick -= w;
        }
        weights.len() - 1
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// Floors and ceilings of one family of monotone counters (see the module header of
/// `mod.rs` for what each bound means).
pub(crate) struct Family {
    floors: Vec<AtomicI64>,
    ceilings: Vec<AtomicI64>,
}

impl Family {
    fn new(keys: usize) -> Family {
        Family {
            floors: (0..keys).map(|_| AtomicI64::new(0)).collect(),
            ceilings: (0..keys).map(|_| AtomicI64::new(0)).collect(),
        }
    }

    pub fn floor(&self, key: usize) -> i64 {
        self.floors[key].load(Ordering::SeqCst)
    }

    pub fn ceiling(&self, key: usize) -> i64 {
        self.ceilings[key].load(Ordering::SeqCst)
    }

    /// After an ack: `value` is committed, so no later read may return less.
    pub fn raise_floor(&self, key: usize, value: i64) {
        self.floors[key].fetch_max(value, Ordering::SeqCst);
    }

    /// Before sending an increment that may commit.
    pub fn count_increment(&self, key: usize) {
        self.ceilings[key].fetch_add(1, Ordering::SeqCst);
    }

    pub fn floors_of(&self, keys: &[usize]) -> Vec<i64> {
        keys.iter().map(|k| self.floor(*k)).collect()
    }

    pub fn ceilings_of(&self, keys: &[usize]) -> Vec<i64> {
        keys.iter().map(|k| self.ceiling(*k)).collect()
    }
}

pub(crate) struct Families {
    pub counters: Family,
    pub parents: Family,
    pub events: Family,
}

impl Families {
    pub fn get(&self, fam: Fam) -> &Family {
        match fam {
            Fam::Counters => &self.counters,
            Fam::Parents => &self.parents,
            Fam::Events => &self.events,
        }
    }
}

/// Counts plus the first few texts of what went wrong.
#[derive(Default)]
pub(crate) struct Recorder {
    pub ops: AtomicU64,
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub stale: AtomicU64,
    pub phantom: AtomicU64,
    /// Reads answered for another session state (search_path, tenant) than the reader's.
    pub leaked: AtomicU64,
    pub errors: AtomicU64,
    details: Mutex<Vec<String>>,
    op_counts: Mutex<BTreeMap<&'static str, u64>>,
}

impl Recorder {
    fn note(&self, counter: &AtomicU64, label: &str, text: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        let mut details = self.details.lock().unwrap_or_else(|p| p.into_inner());
        if details.len() < MAX_DETAILS {
            details.push(format!("{label}: {text}"));
        }
    }

    pub fn stale(&self, text: String) {
        self.note(&self.stale, "STALE", text);
    }

    pub fn phantom(&self, text: String) {
        self.note(&self.phantom, "PHANTOM", text);
    }

    pub fn leaked(&self, text: String) {
        self.note(&self.leaked, "LEAK", text);
    }

    pub fn error(&self, text: String) {
        self.note(&self.errors, "ERROR", text);
    }

    pub fn merge_op_counts(&self, counts: &BTreeMap<&'static str, u64>) {
        let mut all = self.op_counts.lock().unwrap_or_else(|p| p.into_inner());
        for (kind, n) in counts {
            *all.entry(kind).or_insert(0) += n;
        }
    }
}

/// One result held by the broken client-side cache of the fault modes.
struct FaultEntry {
    fam: Fam,
    keys: Vec<usize>,
    rows: Rows,
}

/// The deliberately wrong cache of `Fault::NeverInvalidate` / `Fault::StoreInTransaction`,
/// keyed by the read's SQL text.
#[derive(Default)]
pub(crate) struct FaultCache {
    entries: Mutex<HashMap<String, FaultEntry>>,
}

impl FaultCache {
    pub fn get(&self, sql: &str) -> Option<Rows> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(sql).map(|e| e.rows.clone())
    }

    pub fn store(&self, sql: String, fam: Fam, keys: Vec<usize>, rows: Rows) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() < FAULT_CACHE_CAPACITY || entries.contains_key(&sql) {
            entries.insert(sql, FaultEntry { fam, keys, rows });
        }
    }

    /// Drops every entry that read `key` of `fam`.
    pub fn invalidate(&self, fam: Fam, key: usize) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|_, e| e.fam != fam || !e.keys.contains(&key));
    }
}

/// Everything the clients share.
pub(crate) struct Shared {
    pub cfg: CheckerConfig,
    pub fams: Families,
    pub rec: Recorder,
    pub fault_cache: Option<FaultCache>,
    pub two_phase: bool,
    pub next_op: AtomicU64,
    pub deadline: Instant,
    pub timed_out: AtomicBool,
}

impl Shared {
    pub fn new(cfg: CheckerConfig, two_phase: bool) -> Shared {
        let fault_cache = match cfg.fault {
            Fault::NeverInvalidate | Fault::StoreInTransaction => Some(FaultCache::default()),
            Fault::None | Fault::StaleSnapshot => None,
        };
        Shared {
            fams: Families {
                counters: Family::new(cfg.shape.counters),
                parents: Family::new(cfg.shape.parents),
                events: Family::new(cfg.shape.events),
            },
            rec: Recorder::default(),
            fault_cache,
            two_phase,
            next_op: AtomicU64::new(0),
            deadline: Instant::now() + cfg.time_limit,
            timed_out: AtomicBool::new(false),
            cfg,
        }
    }

    /// Claims the next operation; `false` when the run is over (count or time).
    pub fn claim_op(&self) -> bool {
        if self.next_op.load(Ordering::Relaxed) >= self.cfg.ops {
            return false;
        }
        if Instant::now() >= self.deadline {
            self.timed_out.store(true, Ordering::Relaxed);
            return false;
        }
        self.next_op.fetch_add(1, Ordering::Relaxed) < self.cfg.ops
    }

    /// Records acknowledged values. In the invalidating fault mode the broken cache drops the
    /// key first, as a correct cache bumps before the ack is relayed.
    pub fn ack(&self, acks: &[(Slot, i64)]) {
        for (slot, value) in acks {
            if self.cfg.fault == Fault::StoreInTransaction
                && let Some(cache) = &self.fault_cache
            {
                cache.invalidate(slot.fam, slot.key);
            }
            self.fams.get(slot.fam).raise_floor(slot.key, *value);
        }
    }

    pub fn report(&self, elapsed: Duration) -> Report {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Report {
            ops: load(&self.rec.ops),
            reads: load(&self.rec.reads),
            writes: load(&self.rec.writes),
            stale: load(&self.rec.stale),
            phantom: load(&self.rec.phantom),
            leaked: load(&self.rec.leaked),
            errors: load(&self.rec.errors),
            details: self
                .rec
                .details
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            elapsed,
            timed_out: self.timed_out.load(Ordering::Relaxed),
            two_phase: self.two_phase,
            op_counts: self
                .rec
                .op_counts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}
