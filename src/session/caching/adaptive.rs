//! Adaptive bypass: a statement shape whose results are almost never reused (its tables are
//! written between nearly every two reads, or every execution has new parameters) costs a
//! capture, a store and an eviction per execution and saves nothing. Each shape keeps a
//! sampled hit ratio; when a window of samples stays below `cache.min_hit_ratio`, the shape
//! skips the cache (no lookup, no capture, no store) for a span of executions, then is
//! measured again. Only ever relays more: correctness does not depend on it.
//!
//! Shared by every text of the shape (plans of one shape share the `Arc`), updated on a
//! sample of lookups only, so that the hit path does not bounce a shared cache line.

use std::sync::atomic::{AtomicU32, Ordering};

use metrics::counter;

use crate::telemetry::names;

/// Samples in a measuring window.
pub const WINDOW: u32 = 64;
/// Executions skipped once a window's hit ratio fell short: long enough that measuring
/// (which captures every miss) is a small share of the shape's executions.
pub const SKIP_SPAN: u32 = 16_384;

/// Hit counts of one statement shape.
#[derive(Debug, Default)]
pub struct HitStats {
    samples: AtomicU32,
    hits: AtomicU32,
    /// Executions left to skip.
    skip: AtomicU32,
}

impl HitStats {
    /// Whether this execution skips the cache (and counts down the span).
    pub fn skipping(&self) -> bool {
        let left = self.skip.load(Ordering::Relaxed);
        if left == 0 {
            return false;
        }
        self.skip.store(left - 1, Ordering::Relaxed);
        true
    }

    /// Records a sampled lookup; at the end of a window, starts a skip span when the hit
    /// ratio is below `min_ratio` (0 turns the bypass off).
    pub fn sample(&self, hit: bool, min_ratio: impl FnOnce() -> f64) {
        if hit {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        let samples = self.samples.fetch_add(1, Ordering::Relaxed) + 1;
        if samples < WINDOW {
            return;
        }
        let hits = self.hits.swap(0, Ordering::Relaxed);
        self.samples.store(0, Ordering::Relaxed);
        let ratio = f64::from(hits) / f64::from(samples);
        if ratio < min_ratio() {
            self.skip.store(SKIP_SPAN, Ordering::Relaxed);
            counter!(names::CACHE_ADAPTIVE_BYPASSES).increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shape_below_the_ratio_skips_for_a_span_then_is_measured_again() {
        let s = HitStats::default();
        for i in 0..WINDOW {
            assert!(!s.skipping());
            // One hit in 64: about 1.6 %.
            s.sample(i == 0, || 0.02);
        }
        for _ in 0..SKIP_SPAN {
            assert!(s.skipping());
        }
        assert!(!s.skipping(), "measured again after the span");
        // A shape that hits often never skips.
        for i in 0..10 * WINDOW {
            s.sample(i % 2 == 0, || 0.02);
            assert!(!s.skipping());
        }
        // Zero turns the bypass off.
        for _ in 0..WINDOW {
            s.sample(false, || 0.0);
        }
        assert!(!s.skipping());
    }
}
