//! Test-only race hooks (cargo feature `race-hooks`): random pauses at the two points where
//! the ordering invariants matter — after a read's versions are snapshotted and before its
//! Query is forwarded (I1), and after the upstream reported a commit and before the bump
//! (I2) — so the staleness checker exercises those races instead of hoping for them.
//! Enabled at run time by `PGMEMO_RACE_HOOK_MAX_US=<max pause in µs>`. Also one fixed pause
//! in verify mode's checker, between its first look at the served result's versions and
//! the re-execution (`PGMEMO_VERIFY_DELAY_MS`), so a test can commit a write exactly
//! there. Without the feature the calls compile to nothing.

/// Where a pause happens.
#[derive(Debug, Clone, Copy)]
pub enum Point {
    /// Versions read; the Query is about to be forwarded.
    AfterSnapshot,
    /// The upstream reported a commit; the bump is about to happen.
    BeforeBump,
}

#[cfg(feature = "race-hooks")]
mod imp {
    use std::cell::Cell;
    use std::sync::OnceLock;
    use std::time::Duration;

    use crate::rng::Rng;

    fn max_us() -> Option<u64> {
        static MAX: OnceLock<Option<u64>> = OnceLock::new();
        *MAX.get_or_init(|| {
            std::env::var("PGMEMO_RACE_HOOK_MAX_US")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|v| *v > 0)
        })
    }

    thread_local! {
        static RNG: Cell<Rng> = Cell::new(Rng::new(u64::from(std::process::id())));
    }

    fn next() -> u64 {
        RNG.with(|r| {
            let mut g = r.get();
            let x = g.next_u64();
            r.set(g);
            x
        })
    }

    /// The checker's pause (see the module header), counted as point `before_verify`.
    pub async fn verify_delay() {
        static MS: OnceLock<Option<u64>> = OnceLock::new();
        let ms = *MS.get_or_init(|| {
            std::env::var("PGMEMO_VERIFY_DELAY_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|v| *v > 0)
        });
        if let Some(ms) = ms {
            metrics::counter!("pgmemo_race_hook_pauses_total", "point" => "before_verify")
                .increment(1);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }

    pub fn pause(_point: super::Point) {
        if let Some(max) = max_us() {
            // Half the time no pause, so both orders of each race happen.
            let r = next();
            if r & 1 == 0 {
                let label = match _point {
                    super::Point::AfterSnapshot => "after_snapshot",
                    super::Point::BeforeBump => "before_bump",
                };
                metrics::counter!("pgmemo_race_hook_pauses_total", "point" => label).increment(1);
                // Blocking on purpose: the whole worker stalls, which widens the window for
                // sessions on the other workers and for the upstream.
                std::thread::sleep(Duration::from_micros((r >> 1) % max));
            }
        }
    }
}

#[cfg(feature = "race-hooks")]
pub use imp::{pause, verify_delay};

#[cfg(not(feature = "race-hooks"))]
#[inline(always)]
pub fn pause(_point: Point) {}

#[cfg(not(feature = "race-hooks"))]
#[inline(always)]
pub async fn verify_delay() {}
