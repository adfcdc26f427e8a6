//! Per-statement statistics (`GET /api/queries`): a table keyed by statement shape — the
//! database and the text with every literal, quoted or numeric, as `?` and comments dropped
//! (`sql::log_shape`: the table is shown to admin readers, and literals are data) — of calls, hits, misses, bypasses by reason, hit and upstream latency, upstream
//! time spent and saved, and bytes stored.
//!
//! The hit path takes no lock: a plan holds an `Arc` to its shape's [`ShapeStats`], resolved
//! once when the plan is memoised ([`QueryStats::attach`]; for a cacheable read inside the
//! `Arc` of adaptive statistics its texts share already, so copying a plan touches no further
//! reference count), and records into it with relaxed atomics. The table itself (a map under one mutex) is touched when a plan is made, when the
//! API reads it, and when an evicted shape asks to come back.
//!
//! Bounded in bytes (`admin.query_stats_bytes`). When a new shape does not fit, the shapes are
//! ranked by value — the PostgreSQL time they stand for: executions x mean upstream latency,
//! spent or saved — and the lowest eighth is evicted, unless the newcomer itself ranks in
//! that eighth (then it is not admitted). An evicted or refused shape keeps counting in the
//! plans that hold it and asks to be admitted again on later executions (on sampled hits,
//! misses and bypasses), so a shape that becomes valuable comes back with its counts.

pub mod histogram;
mod shape;
pub mod tables;

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

pub use shape::{Identity, ShapeReport, ShapeStats};
pub use tables::{TableDirectory, TableInfo};

use super::plan::{Context, Plan};
use crate::sql::Class;

/// Longest statement text kept per shape (longer ones are cut, marked with `...`; the key
/// still hashes the whole text).
pub const MAX_TEXT_BYTES: usize = 2048;
/// A map slot, the `Arc`'s counts and the boxes' headers, per shape.
const OVERHEAD: usize = 128;
/// A cached admission threshold is trusted for this many refusals before the table is
/// ranked again (ranking is O(n log n); a flood of one-off shapes must not pay it each).
const THRESHOLD_CHECKS: u32 = 64;

#[derive(Default)]
struct Inner {
    map: HashMap<u64, Arc<ShapeStats>>,
    bytes: usize,
    /// The value at the bottom eighth when last ranked, and refusals left before re-ranking.
    threshold: f64,
    checks_left: u32,
}

pub struct QueryStats {
    enabled: bool,
    max_bytes: usize,
    inner: Mutex<Inner>,
    hasher: foldhash::fast::RandomState,
    /// The relations plans named (for `/api/tables`; kept with statistics on or off).
    pub tables: TableDirectory,
}

fn weight(shape: &ShapeStats) -> usize {
    let id = &shape.identity;
    OVERHEAD
        + std::mem::size_of::<ShapeStats>()
        + id.database.len()
        + id.text.len()
        + id.tables.iter().map(|t| t.len() + 16).sum::<usize>()
}

/// `text` cut to at most `max` bytes at a character boundary, marked when cut.
fn cut(text: &str, max: usize) -> Box<str> {
    if text.len() <= max {
        return text.into();
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", text.get(..end).unwrap_or_default()).into()
}

impl QueryStats {
    /// A table of at most `max_bytes`; `enabled = false` keeps no statistics at all.
    pub fn new(enabled: bool, max_bytes: usize) -> Self {
        Self {
            enabled,
            max_bytes,
            inner: Mutex::default(),
            hasher: foldhash::fast::RandomState::default(),
            tables: TableDirectory::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives `plan` its shape's statistics (see [`Plan::shape_stats`]): created if new and
    /// admitted to the table if it fits (see the module header). Nothing when statistics are
    /// off or the plan is not one read (writes, DDL, session commands and multi-statement
    /// texts are not tracked).
    pub fn attach(&self, cx: &Context, plan: &mut Plan) {
        let Some(shape) = self.shape_for(cx, plan) else {
            return;
        };
        match &plan.read {
            // Set once per plan of the shape: a copy for another text shares it.
            Ok(read) => {
                let _ = read.stats.shape.set(shape);
            }
            Err(_) => plan.bypass_shape = Some(shape),
        }
    }

    fn shape_for(&self, cx: &Context, plan: &Plan) -> Option<Arc<ShapeStats>> {
        if !self.enabled {
            return None;
        }
        let [info] = plan.analysis.statements.as_slice() else {
            return None;
        };
        if !matches!(info.class, Class::Read | Class::CacheableRead) {
            return None;
        }
        let normalized = match &plan.read {
            Ok(read) => read.normalized.to_vec(),
            Err(_) => crate::sql::normalize_for_key(&plan.sql),
        };
        // Every literal, quoted or numeric, becomes `?` (comments dropped): the table is
        // shown to whoever reads the admin API, and a statement's literals are its data.
        let shape = crate::sql::log_shape(&normalized, usize::MAX).into_bytes();
        let mut h = self.hasher.build_hasher();
        cx.database.hash(&mut h);
        shape.hash(&mut h);
        let key = h.finish();
        if let Some(found) = self.lock().map.get(&key) {
            return Some(Arc::clone(found));
        }
        let tables: Box<[Box<str>]> = match &plan.read {
            // The relations it depends on that a plan named (see [`tables`]).
            Ok(read) => read
                .tags
                .iter()
                .filter_map(|t| self.tables.name(*t))
                .map(String::into_boxed_str)
                .collect(),
            Err(_) => info
                .reads
                .iter()
                .map(|r| match &r.schema {
                    Some(s) => format!("{s}.{}", r.name).into(),
                    None => r.name.as_str().into(),
                })
                .collect(),
        };
        let identity = Identity {
            database: cx.database.as_ref().into(),
            text: cut(&String::from_utf8_lossy(&shape), MAX_TEXT_BYTES),
            tables,
        };
        let created = Arc::new(ShapeStats::new(key, identity));
        let mut inner = self.lock();
        // Another session may have created it meanwhile: one entry per shape.
        if let Some(found) = inner.map.get(&key) {
            return Some(Arc::clone(found));
        }
        if !self.admit(&mut inner, &created) {
            created.state.store(shape::EVICTED, Ordering::Relaxed);
        }
        Some(created)
    }

    /// Asks for `shape` (evicted, or never admitted) to be admitted again; called by the
    /// executions that record into it (see the module header). A shape whose key another
    /// entry took meanwhile hands its counts to that entry and stops asking.
    pub fn readopt(&self, shape: &Arc<ShapeStats>) {
        let mut inner = self.lock();
        if shape.state.load(Ordering::Relaxed) != shape::EVICTED {
            return;
        }
        if let Some(other) = inner.map.get(&shape.key) {
            other.absorb(shape);
            shape.state.store(shape::DETACHED, Ordering::Relaxed);
            return;
        }
        if self.admit(&mut inner, shape) {
            shape.state.store(shape::LIVE, Ordering::Relaxed);
        }
    }

    /// Puts `shape` in the table if it fits, else evicts the lowest eighth by value to make
    /// room, unless `shape` ranks there itself (then `false`).
    fn admit(&self, inner: &mut Inner, shape: &Arc<ShapeStats>) -> bool {
        let w = weight(shape);
        if inner.bytes + w > self.max_bytes {
            let value = shape.value();
            if inner.checks_left > 0 && value <= inner.threshold {
                inner.checks_left -= 1;
                return false;
            }
            let mut ranked: Vec<(f64, u64, usize)> = inner
                .map
                .values()
                .map(|s| (s.value(), s.key, weight(s)))
                .collect();
            ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
            let eighth = (ranked.len() / 8).max(1);
            inner.threshold = ranked.get(eighth - 1).map_or(0.0, |r| r.0);
            inner.checks_left = THRESHOLD_CHECKS;
            if value <= inner.threshold {
                return false;
            }
            let mut evicted = 0;
            for (_, key, weight) in &ranked {
                if evicted >= eighth && inner.bytes + w <= self.max_bytes {
                    break;
                }
                if let Some(gone) = inner.map.remove(key) {
                    gone.state.store(shape::EVICTED, Ordering::Relaxed);
                    inner.bytes = inner.bytes.saturating_sub(*weight);
                    evicted += 1;
                }
            }
            if inner.bytes + w > self.max_bytes {
                return false;
            }
        }
        inner.bytes += w;
        inner.map.insert(shape.key, Arc::clone(shape));
        true
    }

    /// Every shape in the table, most upstream time spent first (the most expensive
    /// uncached statements lead), then by calls.
    pub fn report(&self) -> Vec<ShapeReport> {
        let shapes: Vec<Arc<ShapeStats>> = self.lock().map.values().cloned().collect();
        let mut out: Vec<ShapeReport> = shapes.iter().map(|s| s.report()).collect();
        out.sort_by(|a, b| {
            b.upstream_time_spent_ms
                .total_cmp(&a.upstream_time_spent_ms)
                .then(b.calls.cmp(&a.calls))
        });
        out
    }

    /// Shapes held and their bytes together.
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.map.len(), inner.bytes)
    }

    /// The configured bound.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
