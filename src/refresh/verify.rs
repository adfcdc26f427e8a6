//! Verify mode (issue 21): the hand-off from sessions to the background checker and the
//! checker's verdict. A sampled cache hit (`cache.verify_sample` of them) is re-executed
//! upstream by `session::cache_side::verify` under the entry's own login and fingerprint,
//! as a refresh is, and its answer compared byte for byte with what was served.
//!
//! The sampling decision is on the hit path, so it costs one relaxed load when verify mode
//! is off, and one more xorshift step of the session's own generator when it is on:
//! no lock, no allocation unless the hit is sampled.
//!
//! Rate-capped: at most `cache.verify_max_per_second` checks start per second, whatever the
//! hit rate: 1 % of 100k hits/s would otherwise be 1,000 upstream queries a second, CPU a
//! saturated box takes from the hits themselves. A sampled hit over the cap is not checked
//! (counted `skipped{reason="rate"}`); the draw comes first, so a hit that is not sampled
//! never touches the cap's shared counter.
//!
//! Bounded: at most [`MAX_IN_FLIGHT`] checks queued or running, weighing at most
//! [`MAX_BYTES`] together (a check holds its request, at most [`MAX_REQUEST_BYTES`], and
//! its version snapshot; never the served result, which it only refers to by a `Weak`: a
//! result the cache let go is not kept alive for a check). A hit that finds them full is
//! not checked (counted `skipped`); the client's answer never waits for any of this.
//!
//! Telling a stale result from a write racing the check: a write committed between the
//! hit and the re-execution changes the answer legitimately. The hit records the versions
//! it was keyed on (I1's snapshot); a difference counts as a mismatch only if those
//! versions (and the epoch) did not move and the served entry is still the one in the
//! cache ([`judge`]); otherwise it counts as `raced`.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Instant;

use tokio::sync::mpsc;

use super::recipes::Recipe;
use crate::cache::{Entry, VersionSnapshot, Versions};
use crate::rng::Rng;

/// Checks queued or running at most.
pub const MAX_IN_FLIGHT: usize = 256;
/// Bytes the checks queued or running hold at most (requests and snapshots).
pub const MAX_BYTES: usize = 1 << 20;
/// The largest request (SQL text and parameters) a check carries; a hit on a larger one is
/// not checked.
pub const MAX_REQUEST_BYTES: usize = super::queue::AHEAD_REQUEST_BYTES;
/// Bytes one check costs besides its request and snapshot (the check, its recipe, the
/// channel slot).
pub const CHECK_OVERHEAD: usize = 512;

/// What one check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// PostgreSQL answered exactly the served bytes.
    Matched,
    /// PostgreSQL answered otherwise while nothing pgmemo knows of changed what the served
    /// result depends on: the cache served a stale (or someone else's) result.
    Mismatched,
    /// The answer differs, but a write pgmemo saw (or an invalidation) moved the served
    /// result's versions, or the entry left the cache, since the hit: the difference may
    /// be that write's, so it proves nothing.
    Raced,
}

impl Verdict {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Matched => "matched",
            Self::Mismatched => "mismatched",
            Self::Raced => "raced",
        }
    }
}

/// Whether the result served at a hit is still what the cache would serve: the versions
/// and epoch it was keyed on are current and the entry is still in the cache.
pub fn still_served(snapshot: &VersionSnapshot, versions: &Versions, served: &Weak<Entry>) -> bool {
    served.upgrade().is_some_and(|e| !e.is_evicted()) && snapshot.is_current(versions)
}

/// The verdict on an answer: `same` when it equals the served bytes; otherwise a mismatch
/// only while the served result is [`still_served`].
pub fn judge(
    same: bool,
    snapshot: &VersionSnapshot,
    versions: &Versions,
    served: &Weak<Entry>,
) -> Verdict {
    if same {
        Verdict::Matched
    } else if still_served(snapshot, versions, served) {
        Verdict::Mismatched
    } else {
        Verdict::Raced
    }
}

/// One sampled hit to check.
#[derive(Debug)]
pub struct Check {
    /// How to re-execute it: the request, the login and the fingerprint digest of the
    /// session that hit it (its key's).
    pub recipe: Arc<Recipe>,
    /// The entry that was served (not kept alive).
    pub served: Weak<Entry>,
    /// The versions the hit was keyed on.
    pub snapshot: VersionSnapshot,
    /// Its share of the bounds, given back when the check ends.
    _permit: Permit,
}

/// The checks in flight and their bytes.
#[derive(Debug, Default)]
struct Bounds {
    count: AtomicUsize,
    bytes: AtomicUsize,
}

/// One admitted check's share of the bounds (given back on drop).
#[derive(Debug)]
pub struct Permit {
    bounds: Arc<Bounds>,
    bytes: usize,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.bounds.count.fetch_sub(1, Ordering::AcqRel);
        self.bounds.bytes.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// The sessions' side of verify mode, shared by every session.
#[derive(Debug)]
pub struct Verify {
    /// A hit is sampled when a draw is below this (0: off; `u64::MAX`: every hit).
    threshold: AtomicU64,
    rate: RateCap,
    bounds: Arc<Bounds>,
    tx: OnceLock<mpsc::Sender<Check>>,
}

/// At most `per_second` admissions per whole second since `origin`.
#[derive(Debug)]
struct RateCap {
    per_second: AtomicU32,
    origin: Instant,
    /// The current window: its second (high 32 bits) and the admissions in it (low 32).
    window: AtomicU64,
}

impl RateCap {
    fn new(per_second: u32) -> Self {
        Self {
            per_second: AtomicU32::new(per_second),
            origin: Instant::now(),
            window: AtomicU64::new(0),
        }
    }

    /// Whether one more admission fits in the current second (taken if so).
    fn admit(&self, now: Instant) -> bool {
        let cap = self.per_second.load(Ordering::Relaxed);
        if cap == 0 {
            return false;
        }
        // A process running for 136 years wraps the second; the window then restarts.
        let second = now.saturating_duration_since(self.origin).as_secs() as u32;
        let mut window = self.window.load(Ordering::Relaxed);
        loop {
            let (at, taken) = ((window >> 32) as u32, window as u32);
            let next = if at != second {
                (u64::from(second) << 32) | 1
            } else if taken < cap {
                window + 1
            } else {
                return false;
            };
            match self.window.compare_exchange_weak(
                window,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(seen) => window = seen,
            }
        }
    }
}

impl Verify {
    /// Verify mode checking `sample` (0 – 1) of hits, at most `per_second` a second; no
    /// check is accepted until [`Verify::open`].
    pub fn new(sample: f64, per_second: u32) -> Self {
        Self {
            threshold: AtomicU64::new(threshold(sample)),
            rate: RateCap::new(per_second),
            bounds: Arc::default(),
            tx: OnceLock::new(),
        }
    }

    /// A new `cache.verify_sample` (a reload).
    pub fn set_sample(&self, sample: f64) {
        self.threshold.store(threshold(sample), Ordering::Relaxed);
    }

    /// A new `cache.verify_max_per_second` (a reload).
    pub fn set_max_per_second(&self, per_second: u32) {
        self.rate.per_second.store(per_second, Ordering::Relaxed);
    }

    /// Whether a sampled hit may be checked now: false once `cache.verify_max_per_second`
    /// checks started in the current second.
    pub fn within_rate(&self) -> bool {
        self.rate.admit(Instant::now())
    }

    /// Whether this hit is to be checked (drawn from the session's own generator).
    #[inline]
    pub fn sampled(&self, rng: &mut Rng) -> bool {
        let t = self.threshold.load(Ordering::Relaxed);
        t != 0 && (t == u64::MAX || rng.next_u64() < t)
    }

    /// A share of the bounds for a check weighing `bytes` (with [`CHECK_OVERHEAD`]), or
    /// `None` when the checks in flight are at their bound.
    pub fn permit(&self, bytes: usize) -> Option<Permit> {
        let bytes = bytes.saturating_add(CHECK_OVERHEAD);
        let bounds = &self.bounds;
        // Added first, then undone when over: a refusal never lets another check exceed
        // the bound (it may only refuse one that would have fitted, for an instant).
        if bounds.count.fetch_add(1, Ordering::AcqRel) >= MAX_IN_FLIGHT {
            bounds.count.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let before = bounds.bytes.fetch_add(bytes, Ordering::AcqRel);
        if before.saturating_add(bytes) > MAX_BYTES {
            bounds.bytes.fetch_sub(bytes, Ordering::AcqRel);
            bounds.count.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Permit {
            bounds: Arc::clone(bounds),
            bytes,
        })
    }

    /// Checks queued or running.
    pub fn in_flight(&self) -> usize {
        self.bounds.count.load(Ordering::Acquire)
    }

    /// Opens the queue; the checker consumes the receiver. `None` when opened already.
    pub fn open(&self) -> Option<mpsc::Receiver<Check>> {
        let (tx, rx) = mpsc::channel(MAX_IN_FLIGHT);
        self.tx.set(tx).ok()?;
        Some(rx)
    }

    /// Queues a check of the hit on `served` (keyed on `snapshot`), to re-execute as
    /// `recipe` says; false when the checker is not running (its permit is given back).
    pub fn submit(
        &self,
        recipe: Recipe,
        served: Weak<Entry>,
        snapshot: VersionSnapshot,
        permit: Permit,
    ) -> bool {
        let check = Check {
            recipe: Arc::new(recipe),
            served,
            snapshot,
            _permit: permit,
        };
        self.tx.get().is_some_and(|tx| tx.try_send(check).is_ok())
    }
}

/// The draw threshold of a sampled fraction (anything not above 0, NaN included, is off).
fn threshold(sample: f64) -> u64 {
    if sample >= 1.0 {
        u64::MAX
    } else if sample > 0.0 {
        // `as` saturates; a fraction too small to represent still samples now and then.
        ((sample * 18_446_744_073_709_551_616.0) as u64).max(1)
    } else {
        0
    }
}

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;
