//! A circuit breaker for the L2: after `threshold` failures in a row (errors or timeouts)
//! calls stop going to Redis for `cooldown`; then one trial call is let through (half-open),
//! and its outcome closes the breaker or opens it again. While it is open the cache goes on
//! without Redis (DESIGN §1.6: a cache fault is never a client error), and callers learn it
//! in one atomic load instead of waiting for a timeout per request. Every state change is
//! logged and exported (`pgmemo_l2_breaker_state`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::telemetry::names;

/// Where the breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BreakerState {
    Closed = 0,
    Open = 1,
    /// One trial call is in flight.
    HalfOpen = 2,
}

impl BreakerState {
    fn from_u8(v: u8) -> BreakerState {
        match v {
            1 => Self::Open,
            2 => Self::HalfOpen,
            _ => Self::Closed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

struct Inner {
    failures: u32,
    opened_at: Option<Instant>,
}

pub struct Breaker {
    state: AtomicU8,
    inner: Mutex<Inner>,
    threshold: u32,
    cooldown: Duration,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Breaker {
        metrics::gauge!(names::L2_BREAKER_STATE).set(0.0);
        Breaker {
            state: AtomicU8::new(BreakerState::Closed as u8),
            inner: Mutex::new(Inner {
                failures: 0,
                opened_at: None,
            }),
            threshold: threshold.max(1),
            cooldown,
        }
    }

    pub fn state(&self) -> BreakerState {
        BreakerState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Whether [`allow`](Self::allow) would let a call through now (no state change): for
    /// callers deciding whether to ask at all.
    pub fn would_allow(&self, now: Instant) -> bool {
        match self.state() {
            BreakerState::Closed => true,
            BreakerState::HalfOpen | BreakerState::Open => {
                let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
                inner
                    .opened_at
                    .is_none_or(|at| now.saturating_duration_since(at) >= self.cooldown)
            }
        }
    }

    /// Whether a call may go to Redis now. While open, `false` until the cooldown has
    /// passed; then exactly one caller gets `true` (the trial) and the breaker is half-open.
    pub fn allow(&self, now: Instant) -> bool {
        match self.state() {
            BreakerState::Closed => true,
            // Half-open with its trial overdue (the caller went away without reporting):
            // another trial, so the breaker cannot stay stuck.
            BreakerState::HalfOpen | BreakerState::Open => {
                let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
                let due = inner
                    .opened_at
                    .is_none_or(|at| now.saturating_duration_since(at) >= self.cooldown);
                if due && self.state() != BreakerState::Closed {
                    inner.opened_at = Some(now);
                    self.set(BreakerState::HalfOpen);
                    true
                } else {
                    false
                }
            }
        }
    }

    /// A call that was allowed succeeded.
    pub fn success(&self) {
        if self.state() == BreakerState::Closed {
            // The common case: no lock unless a failure streak must be reset.
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            inner.failures = 0;
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.failures = 0;
        inner.opened_at = None;
        self.set(BreakerState::Closed);
    }

    /// A call that was allowed failed (error or timeout).
    pub fn failure(&self, now: Instant) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.failures = inner.failures.saturating_add(1);
        let trip = match self.state() {
            BreakerState::HalfOpen => true,
            BreakerState::Closed => inner.failures >= self.threshold,
            BreakerState::Open => false,
        };
        if trip {
            inner.opened_at = Some(now);
            self.set(BreakerState::Open);
        }
    }

    fn set(&self, next: BreakerState) {
        let prev = BreakerState::from_u8(self.state.swap(next as u8, Ordering::AcqRel));
        if prev == next {
            return;
        }
        metrics::gauge!(names::L2_BREAKER_STATE).set(f64::from(next as u8));
        metrics::counter!(names::L2_BREAKER_CHANGES, "to" => next.as_str()).increment(1);
        match next {
            BreakerState::Open => warn!(
                cooldown = ?self.cooldown,
                "redis: circuit breaker open; the shared cache is skipped until a trial call succeeds"
            ),
            BreakerState::HalfOpen => info!("redis: circuit breaker half-open; trying one call"),
            BreakerState::Closed => {
                info!("redis: circuit breaker closed; the shared cache is back")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_then_lets_one_trial_through_after_the_cooldown() {
        let b = Breaker::new(3, Duration::from_millis(100));
        let t0 = Instant::now();
        assert!(b.allow(t0));
        b.failure(t0);
        b.failure(t0);
        assert_eq!(b.state(), BreakerState::Closed);
        b.success();
        b.failure(t0);
        b.failure(t0);
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "a success resets the streak"
        );
        b.failure(t0);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.allow(t0 + Duration::from_millis(50)), "cooling down");
        let t1 = t0 + Duration::from_millis(100);
        assert!(b.allow(t1), "the trial");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(!b.allow(t1), "only one trial at a time");
        b.failure(t1);
        assert_eq!(b.state(), BreakerState::Open, "a failed trial opens again");
        assert!(!b.allow(t1 + Duration::from_millis(99)));
        let t2 = t1 + Duration::from_millis(100);
        assert!(b.allow(t2));
        b.success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.allow(t2));
    }
}
