//! A fixed-size latency histogram for one statement shape: 52 buckets of half an octave each
//! from 1 µs to about 67 s (slower times land in the last), plus the count and sum for the
//! mean. Recording is two relaxed atomic additions, so sessions on every core can record into
//! one shape without a lock; the p99 read back is the geometric middle of its bucket (within
//! about 19 % of the true value). Its size never changes, whatever is recorded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Buckets: bucket `i` holds times in [2^(i/2), 2^((i+1)/2)) µs.
pub const BUCKETS: usize = 52;

/// Count, mean and p99 of what a histogram recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Summary {
    pub samples: u64,
    pub mean_us: f64,
    pub p99_us: f64,
}

#[derive(Debug)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: [const { AtomicU64::new(0) }; BUCKETS],
            sum_us: AtomicU64::new(0),
        }
    }
}

fn bucket(us: u64) -> usize {
    if us <= 1 {
        return 0;
    }
    // Half-octave index: floor(2 log2 us). Precision is not needed at the edges (a bucket is
    // 41 % wide), so a float log is fine; it runs on sampled lookups only.
    let i = (2.0 * (us as f64).log2()).floor();
    (i as usize).min(BUCKETS - 1)
}

/// The geometric middle of bucket `i`, in µs.
fn middle(i: usize) -> f64 {
    2f64.powf((i as f64 + 0.5) / 2.0)
}

impl Histogram {
    pub fn record(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        if let Some(c) = self.counts.get(bucket(us)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Adds another histogram's counts (a shape's statistics merged into another's).
    pub fn absorb(&self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter().zip(other.counts.iter()) {
            mine.fetch_add(theirs.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self.sum_us
            .fetch_add(other.sum_us.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Samples, mean and p99 (zeros when nothing was recorded). Read without a lock while
    /// others record: the numbers are each consistent, not a snapshot of one instant.
    pub fn summary(&self) -> Summary {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let samples: u64 = counts.iter().sum();
        if samples == 0 {
            return Summary::default();
        }
        // The rank of the 99th percentile, rounded up: with fewer than 100 samples, the
        // slowest one.
        let rank = samples - samples / 100;
        let mut seen = 0;
        let mut p99 = BUCKETS - 1;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                p99 = i;
                break;
            }
        }
        Summary {
            samples,
            mean_us: self.sum_us.load(Ordering::Relaxed) as f64 / samples as f64,
            p99_us: middle(p99),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_half_octaves_and_the_last_takes_the_rest() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1), 0);
        assert_eq!(bucket(2), 2);
        assert_eq!(bucket(3), 3);
        assert_eq!(bucket(1024), 20);
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn mean_and_p99_are_read_back_within_a_bucket() {
        let h = Histogram::default();
        for _ in 0..990 {
            h.record(Duration::from_micros(100));
        }
        for _ in 0..10 {
            h.record(Duration::from_millis(50));
        }
        let s = h.summary();
        assert_eq!(s.samples, 1000);
        let mean = (990.0 * 100.0 + 10.0 * 50_000.0) / 1000.0;
        assert!((s.mean_us - mean).abs() < 1.0, "{s:?}");
        // The 990th of 1000 samples is still 100 µs: p99 is that bucket's middle.
        assert!((80.0..125.0).contains(&s.p99_us), "{s:?}");
        for _ in 0..10 {
            h.record(Duration::from_millis(50));
        }
        let s = h.summary();
        assert!((40_000.0..62_000.0).contains(&s.p99_us), "{s:?}");
        assert_eq!(Histogram::default().summary(), Summary::default());
    }
}
