//! The statistics of one statement shape: plain relaxed atomics, so that a session records a
//! hit with one atomic addition on the shape's own cache line and no lock. Plans hold an
//! `Arc` to their shape's statistics (resolved once, when the plan is memoised); the table
//! holds another, and a shape evicted from the table is re-adopted by the next execution that
//! records into it (see [`super::QueryStats`]).

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use super::histogram::{Histogram, Summary};
use crate::planner::bypass::BypassReason;

/// Bypass reasons kept per shape: a shape is normally bypassed for one or two reasons (its
/// plan's, or the session's state); further ones are counted under `other`.
const REASON_SLOTS: usize = 4;
/// A reason slot packs the reason (index + 1, top 8 bits) and its count (low 56 bits).
const COUNT_BITS: u32 = 56;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

/// Where a shape stands with the table.
pub(super) const LIVE: u8 = 0;
/// Evicted: the next record re-adopts it.
pub(super) const EVICTED: u8 = 1;
/// Evicted, and another entry took its key since: recorded into, never shown again.
pub(super) const DETACHED: u8 = 2;

/// What a shape is, fixed when it is first seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub database: Box<str>,
    /// The normalised text with numeric literals as `?`, cut to [`super::MAX_TEXT_BYTES`].
    pub text: Box<str>,
    /// The relations it names, `schema.name`.
    pub tables: Box<[Box<str>]>,
}

#[derive(Debug)]
pub struct ShapeStats {
    pub(super) key: u64,
    pub(super) identity: Identity,
    pub(super) state: AtomicU8,
    hits: AtomicU64,
    misses: AtomicU64,
    reasons: [AtomicU64; REASON_SLOTS],
    other_bypasses: AtomicU64,
    stored: AtomicU64,
    stored_bytes: AtomicU64,
    hit_latency: Histogram,
    upstream_latency: Histogram,
}

/// A copy of one shape's numbers, for the API.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ShapeReport {
    pub database: String,
    pub query: String,
    pub tables: Vec<String>,
    pub calls: u64,
    pub hits: u64,
    pub misses: u64,
    pub bypasses: u64,
    /// By reason label; `other` for reasons past the per-shape slots.
    pub bypass_reasons: Vec<(String, u64)>,
    /// Hit latency (sampled lookups).
    pub hit: Summary,
    /// Upstream latency (misses and bypasses that went to PostgreSQL, one timed at a time
    /// per session).
    pub upstream: Summary,
    /// Estimated PostgreSQL time spent on it: (misses + bypasses) x mean upstream latency.
    pub upstream_time_spent_ms: f64,
    /// Estimated PostgreSQL time the cache saved: hits x mean upstream latency.
    pub upstream_time_saved_ms: f64,
    /// Results of it stored in the cache, and their bytes together.
    pub stored: u64,
    pub stored_bytes: u64,
}

impl ShapeStats {
    pub(super) fn new(key: u64, identity: Identity) -> Self {
        Self {
            key,
            identity,
            state: AtomicU8::new(LIVE),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            reasons: [const { AtomicU64::new(0) }; REASON_SLOTS],
            other_bypasses: AtomicU64::new(0),
            stored: AtomicU64::new(0),
            stored_bytes: AtomicU64::new(0),
            hit_latency: Histogram::default(),
            upstream_latency: Histogram::default(),
        }
    }

    /// Whether the table dropped it (the caller re-adopts it).
    pub fn evicted(&self) -> bool {
        self.state.load(Ordering::Relaxed) == EVICTED
    }

    /// A hit, with its latency when this lookup was timed.
    pub fn hit(&self, elapsed: Option<Duration>) {
        self.hits.fetch_add(1, Ordering::Relaxed);
        if let Some(d) = elapsed {
            self.hit_latency.record(d);
        }
    }

    pub fn miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }

    pub fn bypass(&self, reason: BypassReason) {
        self.count_bypasses(reason, 1);
    }

    /// `n` bypasses for `reason`: into the reason's slot, a free slot it claims, or `other`.
    fn count_bypasses(&self, reason: BypassReason, n: u64) {
        let tag = (reason as u64 + 1) << COUNT_BITS;
        for slot in &self.reasons {
            let now = slot.load(Ordering::Relaxed);
            if now & !COUNT_MASK == tag {
                slot.fetch_add(n, Ordering::Relaxed);
                return;
            }
            if now == 0 {
                match slot.compare_exchange(0, tag | n, Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => return,
                    // Taken meanwhile, perhaps by this very reason.
                    Err(taken) if taken & !COUNT_MASK == tag => {
                        slot.fetch_add(n, Ordering::Relaxed);
                        return;
                    }
                    Err(_) => {}
                }
            }
        }
        self.other_bypasses.fetch_add(n, Ordering::Relaxed);
    }

    /// How long PostgreSQL took to answer one execution (a miss or a bypass).
    pub fn upstream(&self, elapsed: Duration) {
        self.upstream_latency.record(elapsed);
    }

    /// A result of this shape was stored in the cache.
    pub fn stored(&self, bytes: usize) {
        self.stored.fetch_add(1, Ordering::Relaxed);
        self.stored_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn bypasses(&self) -> u64 {
        let slots: u64 = self
            .reasons
            .iter()
            .map(|s| s.load(Ordering::Relaxed) & COUNT_MASK)
            .sum();
        slots + self.other_bypasses.load(Ordering::Relaxed)
    }

    /// The upstream time this shape cost and saved, in µs: what ranks shapes for eviction
    /// and for `/api/queries`.
    pub(super) fn upstream_us(&self) -> (f64, f64) {
        let mean = self.upstream_latency.summary().mean_us;
        let hits = self.hits.load(Ordering::Relaxed) as f64;
        let sent = (self.misses.load(Ordering::Relaxed) + self.bypasses()) as f64;
        (sent * mean, hits * mean)
    }

    /// What the shape is worth keeping: the PostgreSQL time it stands for, spent or saved
    /// (every execution, at its mean upstream latency; at least 1 µs each, so that shapes
    /// never timed upstream still rank by how often they run).
    pub(super) fn value(&self) -> f64 {
        let calls = self.hits.load(Ordering::Relaxed)
            + self.misses.load(Ordering::Relaxed)
            + self.bypasses();
        calls as f64 * self.upstream_latency.summary().mean_us.max(1.0)
    }

    /// Adds an older copy's counts (a shape re-adopted after another took its key).
    pub(super) fn absorb(&self, other: &ShapeStats) {
        let add = |mine: &AtomicU64, theirs: &AtomicU64| {
            mine.fetch_add(theirs.load(Ordering::Relaxed), Ordering::Relaxed);
        };
        add(&self.hits, &other.hits);
        add(&self.misses, &other.misses);
        add(&self.stored, &other.stored);
        add(&self.stored_bytes, &other.stored_bytes);
        for slot in &other.reasons {
            let v = slot.load(Ordering::Relaxed);
            let reason = (v >> COUNT_BITS).checked_sub(1);
            if let Some(r) = reason.and_then(|r| BypassReason::ALL.get(r as usize)) {
                self.count_bypasses(*r, v & COUNT_MASK);
            }
        }
        add(&self.other_bypasses, &other.other_bypasses);
        self.hit_latency.absorb(&other.hit_latency);
        self.upstream_latency.absorb(&other.upstream_latency);
    }

    pub fn report(&self) -> ShapeReport {
        let hits = self.hits.load(Ordering::Relaxed);
        let misses = self.misses.load(Ordering::Relaxed);
        let mut bypass_reasons: Vec<(String, u64)> = self
            .reasons
            .iter()
            .filter_map(|s| {
                let v = s.load(Ordering::Relaxed);
                let r = BypassReason::ALL.get(((v >> COUNT_BITS).checked_sub(1))? as usize)?;
                Some((r.label().to_owned(), v & COUNT_MASK))
            })
            .collect();
        let other = self.other_bypasses.load(Ordering::Relaxed);
        if other > 0 {
            bypass_reasons.push(("other".to_owned(), other));
        }
        bypass_reasons.sort_by_key(|r| std::cmp::Reverse(r.1));
        let bypasses = self.bypasses();
        let (spent, saved) = self.upstream_us();
        ShapeReport {
            database: self.identity.database.to_string(),
            query: self.identity.text.to_string(),
            tables: self.identity.tables.iter().map(|t| t.to_string()).collect(),
            calls: hits + misses + bypasses,
            hits,
            misses,
            bypasses,
            bypass_reasons,
            hit: self.hit_latency.summary(),
            upstream: self.upstream_latency.summary(),
            upstream_time_spent_ms: spent / 1000.0,
            upstream_time_saved_ms: saved / 1000.0,
            stored: self.stored.load(Ordering::Relaxed),
            stored_bytes: self.stored_bytes.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> ShapeStats {
        ShapeStats::new(
            1,
            Identity {
                database: "app".into(),
                text: "SELECT ?".into(),
                tables: Box::new([]),
            },
        )
    }

    #[test]
    fn bypass_reasons_fill_slots_then_other() {
        let s = shape();
        let reasons = [
            BypassReason::NotIdle,
            BypassReason::ValueFunction,
            BypassReason::Rule,
            BypassReason::LowHitRatio,
            BypassReason::SessionTainted,
        ];
        for (i, r) in reasons.iter().enumerate() {
            for _ in 0..=i {
                s.bypass(*r);
            }
        }
        let r = s.report();
        assert_eq!(r.bypasses, 1 + 2 + 3 + 4 + 5);
        assert_eq!(
            r.bypass_reasons,
            [
                ("other".to_owned(), 5),
                ("low_hit_ratio".to_owned(), 4),
                ("rule".to_owned(), 3),
                ("value_function".to_owned(), 2),
                ("not_idle".to_owned(), 1),
            ]
        );
        assert_eq!(r.calls, 15);
    }

    #[test]
    fn time_saved_is_hits_at_the_mean_upstream_latency() {
        let s = shape();
        s.miss();
        s.upstream(Duration::from_millis(2));
        for _ in 0..10 {
            s.hit(None);
        }
        s.hit(Some(Duration::from_micros(20)));
        let r = s.report();
        assert_eq!((r.calls, r.hits, r.misses), (12, 11, 1));
        assert!((r.upstream_time_saved_ms - 22.0).abs() < 1e-9, "{r:?}");
        assert!((r.upstream_time_spent_ms - 2.0).abs() < 1e-9, "{r:?}");
        assert_eq!(r.hit.samples, 1);
    }

    #[test]
    fn absorbing_keeps_every_count() {
        let a = shape();
        let b = shape();
        a.hit(None);
        b.hit(None);
        b.miss();
        for _ in 0..3 {
            b.bypass(BypassReason::NotIdle);
        }
        b.stored(100);
        a.absorb(&b);
        let r = a.report();
        assert_eq!(
            (r.hits, r.misses, r.bypasses, r.stored_bytes),
            (2, 1, 3, 100)
        );
        assert_eq!(r.bypass_reasons, [("not_idle".to_owned(), 3)]);
    }
}
