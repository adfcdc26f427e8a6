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

pub(crate) use pgmemo::rng::Rng;

/// Picking from a list the workload knows is not empty.
pub(crate) trait Pick {
    fn pick<T: Copy>(&mut self, items: &[T]) -> T;
}

impl Pick for Rng {
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        self.choose(items)
            .expect("the workload's lists are not empty")
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
    /// `CheckerConfig::echo`: print each note on stderr as it is recorded.
    pub echo: bool,
    details: Mutex<Vec<String>>,
    op_counts: Mutex<BTreeMap<&'static str, u64>>,
}

impl Recorder {
    fn note(&self, counter: &AtomicU64, label: &str, text: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        if self.echo {
            eprintln!("checker-event unix_ms={} {label}: {text}", unix_ms());
        }
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

/// Milliseconds since the Unix epoch (0 if the clock is before it): the stamp of echoed
/// notes and progress lines, comparable with other processes' wall-clock logs.
pub(crate) fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
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
            rec: Recorder {
                echo: cfg.echo,
                ..Recorder::default()
            },
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
