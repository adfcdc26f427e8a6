//! Adaptive bypass: a statement shape whose results are almost never reused (its tables are
//! written between nearly every two reads, or every execution has new parameters) costs a
//! capture, a store and an eviction per execution and saves nothing. Each shape keeps a
//! sampled hit ratio; when a window of samples stays below `cache.min_hit_ratio`, the shape
//! skips the cache (no lookup, no capture, no store) for a span of executions, then is
//! measured again. Only ever relays more: correctness does not depend on it.
//!
//! Shared by every text of the shape (plans of one shape share the `Arc`), updated on a
//! sample of lookups only, so that the hit path does not bounce a shared cache line. Many
//! sessions on many cores sample one hot shape at once: a window's hits and samples live in
//! one atomic word, and a window is closed by the one compare-and-swap that takes it, so no
//! sample is counted twice and no window is judged on another's leftovers.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use metrics::counter;

use crate::telemetry::names;

/// Samples in a measuring window.
pub const WINDOW: u32 = 64;
/// Executions skipped once a window's hit ratio fell short: long enough that measuring
/// (which captures every miss) is a small share of the shape's executions.
pub const SKIP_SPAN: u32 = 16_384;

/// One sample in the packed window word (samples in the low half, hits in the high half).
const ONE_SAMPLE: u64 = 1;
const ONE_HIT: u64 = 1 << 32;

/// Hit counts of one statement shape.
#[derive(Debug, Default)]
pub struct HitStats {
    /// The open window: hits << 32 | samples (both below [`WINDOW`]).
    window: AtomicU64,
    /// Executions left to skip.
    skip: AtomicU32,
    /// The shape's query statistics (see [`super::stats`]), set once when its plan is
    /// memoised. Kept here because every text's plan shares this `Arc` already.
    pub shape: OnceLock<Arc<super::stats::ShapeStats>>,
}

impl HitStats {
    /// Whether this execution skips the cache (and counts down the span).
    pub fn skipping(&self) -> bool {
        if self.skip.load(Ordering::Relaxed) == 0 {
            return false;
        }
        // Counted down exactly; a racing session that finds it at zero runs the lookup.
        self.skip
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(1)
            })
            .is_ok()
    }

    /// Records a sampled lookup (`hit`: answered from the cache, including a wait for
    /// another session's fill); at the end of a window, starts a skip span when the hit
    /// ratio is below `min_ratio` (0 turns the bypass off).
    pub fn sample(&self, hit: bool, min_ratio: impl FnOnce() -> f64) {
        let add = ONE_SAMPLE + if hit { ONE_HIT } else { 0 };
        let mut closed = None;
        // The sample that fills the window swaps it for an empty one, atomically with its own
        // addition: exactly one caller sees each full window.
        let _ = self
            .window
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                let next = w + add;
                if (next & u64::from(u32::MAX)) >= u64::from(WINDOW) {
                    closed = Some(next);
                    Some(0)
                } else {
                    closed = None;
                    Some(next)
                }
            });
        let Some(full) = closed else {
            return;
        };
        let samples = (full & u64::from(u32::MAX)) as u32;
        let hits = (full >> 32) as u32;
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

    /// Issue 15 item 3: sessions on many cores sampling one shape that always hits must never
    /// start a skip span (the window used to be closed by every thread that raced past it,
    /// the later ones reading zero hits).
    #[test]
    fn many_threads_at_a_full_hit_ratio_never_start_a_skip_span() {
        const THREADS: usize = 16;
        const SAMPLES: usize = 10_000_000;
        let s = std::sync::Arc::new(HitStats::default());
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let s = std::sync::Arc::clone(&s);
                std::thread::spawn(move || {
                    let mut skipped = 0u64;
                    for _ in 0..SAMPLES / THREADS {
                        if s.skipping() {
                            skipped += 1;
                        }
                        s.sample(true, || 0.5);
                    }
                    skipped
                })
            })
            .collect();
        let skipped: u64 = handles
            .into_iter()
            .map(|h| h.join().unwrap_or(u64::MAX))
            .sum();
        assert_eq!(skipped, 0, "a shape hitting 100 % was bypassed");
        assert!(!s.skipping());
    }

    /// Every sample lands in exactly one window: a mixed ratio right at the threshold is
    /// judged on whole windows, however many threads sample.
    #[test]
    fn concurrent_windows_count_every_sample_once() {
        const THREADS: usize = 16;
        const PER_THREAD: u32 = WINDOW * 1000;
        let s = std::sync::Arc::new(HitStats::default());
        let closes = std::sync::Arc::new(AtomicU32::new(0));
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let s = std::sync::Arc::clone(&s);
                let closes = std::sync::Arc::clone(&closes);
                std::thread::spawn(move || {
                    for i in 0..PER_THREAD {
                        s.sample(i % 2 == 0, || {
                            closes.fetch_add(1, Ordering::Relaxed);
                            0.0
                        });
                    }
                })
            })
            .collect();
        for h in handles {
            assert!(h.join().is_ok());
        }
        let total = THREADS as u32 * PER_THREAD;
        assert_eq!(closes.load(Ordering::Relaxed), total / WINDOW);
        assert_eq!(s.window.load(Ordering::Relaxed), 0);
    }
}
