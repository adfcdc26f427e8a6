//! Refresh-ahead's adaptive side (issue 19, `refresh_adaptive`): where a key's next refresh
//! starts, moved by what its last refresh found, and the cap that keeps background
//! refreshes below `refresh.max_share` of the queries pgmemo sends to PostgreSQL.
//!
//! A refresh that returned the very bytes it replaced was not needed yet: the key's next
//! refresh starts later (half way to [`LATEST`] of its TTL). One that found new bytes was
//! needed: the next starts at the rule's fraction again. So keys that rarely change cost
//! fewer refreshes, keys that change keep being refreshed early.
//!
//! The cap counts over a sliding window of 5 to 10 s ([`WINDOW`]): the refreshes it
//! admitted, and the queries sent upstream for clients, estimated as the relay's statements
//! minus the L1's hits (an L2 hit or a wait for another session's fill counts as sent, so
//! with a shared tier the estimate is high). A refresh admitted and then not run (queue
//! full, no login) still counts.
//! A refresh is admitted only while the refreshes, this one included, stay within the share
//! of both together. With no client queries going upstream (every read a hit) nothing is
//! admitted: entries then expire and their misses make room for refreshes. The cap is
//! checked once per refresh a hit would start, never on the hit path itself.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The latest point of the TTL a widened refresh may start at: past it, the refresh could
/// finish after the entry expired.
pub const LATEST: f32 = 0.9;
/// The counting window's length (two halves: the current one and the one before).
pub const WINDOW: Duration = Duration::from_secs(10);

/// The point (fraction of the TTL) of a key's next refresh, after a refresh at `point` that
/// found the same bytes (`same`) or new ones; `base` is the rule's `refresh_ahead`.
pub fn next_point(base: f32, point: f32, same: bool) -> f32 {
    if !same || base >= LATEST {
        return base;
    }
    let point = point.clamp(base, LATEST);
    point + (LATEST - point) / 2.0
}

/// Counts since a half window started.
#[derive(Debug, Default, Clone, Copy)]
struct Half {
    upstream: u64,
    refreshes: u64,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    /// The client queries sent upstream when this half started (a running total).
    upstream_base: u64,
    previous: Half,
    current: Half,
}

/// The cap on adaptive refreshes (one per process, in `Services`).
#[derive(Debug)]
pub struct Share {
    window: Mutex<Option<Window>>,
}

impl Default for Share {
    fn default() -> Self {
        Self {
            window: Mutex::new(None),
        }
    }
}

impl Share {
    /// Whether one more refresh keeps refreshes within `max_share` of the queries sent
    /// upstream, given the running total of client queries sent upstream so far; counts it
    /// when admitted.
    pub fn admit(&self, upstream_total: u64, max_share: f64, now: Instant) -> bool {
        let mut guard = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        let w = guard.get_or_insert(Window {
            started: now,
            upstream_base: upstream_total,
            previous: Half::default(),
            current: Half::default(),
        });
        let since = now.saturating_duration_since(w.started);
        if since >= WINDOW {
            // Quiet for a whole window: what went upstream meanwhile is older than the
            // window, and forgotten (else a burst after a lull would spend it).
            *w = Window {
                started: now,
                upstream_base: upstream_total,
                previous: Half::default(),
                current: Half::default(),
            };
        } else if since >= WINDOW / 2 {
            // A new half: the one that ended becomes the previous one.
            w.current.upstream = upstream_total.saturating_sub(w.upstream_base);
            w.previous = w.current;
            w.current = Half::default();
            w.upstream_base = upstream_total;
            w.started = now;
        }
        w.current.upstream = upstream_total.saturating_sub(w.upstream_base);
        let upstream = w.previous.upstream + w.current.upstream;
        let refreshes = w.previous.refreshes + w.current.refreshes + 1;
        // u64 → f64 loses precision only past 2^53 queries in ten seconds.
        #[allow(clippy::cast_precision_loss)]
        let within = refreshes as f64 <= max_share * (upstream + refreshes) as f64;
        if within {
            w.current.refreshes += 1;
        }
        within
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_point_widens_while_nothing_changes_and_resets_when_it_does() {
        let p1 = next_point(0.5, 0.5, true);
        assert!((p1 - 0.7).abs() < 1e-6, "{p1}");
        let p2 = next_point(0.5, p1, true);
        assert!(p2 > p1 && p2 < LATEST, "{p2}");
        let mut p = p2;
        for _ in 0..50 {
            p = next_point(0.5, p, true);
        }
        assert!(p <= LATEST, "never past the latest point: {p}");
        assert_eq!(next_point(0.5, p, false), 0.5, "a change narrows it back");
        assert_eq!(
            next_point(0.95, 0.95, true),
            0.95,
            "a rule past LATEST stays"
        );
    }

    #[test]
    fn refreshes_stay_within_their_share_of_upstream_queries() {
        let share = Share::default();
        let t0 = Instant::now();
        // No client query upstream yet: no room for a refresh.
        assert!(!share.admit(0, 0.1, t0));
        // 90 client queries upstream: 10 refreshes fit in 10 %, the 11th does not.
        let admitted = (0..20).filter(|_| share.admit(90, 0.1, t0)).count();
        assert_eq!(admitted, 10);
        // Half a window later the earlier half still counts...
        let t1 = t0 + WINDOW / 2;
        assert!(!share.admit(90, 0.1, t1));
        // ...and a window later it is forgotten: room again with new upstream queries.
        let t2 = t1 + WINDOW / 2;
        assert!(share.admit(180, 0.1, t2));
        // After a lull longer than the window, the queries sent before it do not count.
        let quiet = Share::default();
        assert!(!quiet.admit(0, 0.1, t0));
        assert!(
            !quiet.admit(1_000_000, 0.1, t0 + 10 * WINDOW),
            "a lull's queries are old"
        );
        // A share of 0 admits nothing, a share of 1 everything.
        let none = Share::default();
        assert!(!none.admit(1_000, 0.0, t0));
        let all = Share::default();
        assert!((0..100).all(|_| all.admit(0, 1.0, t0)));
    }
}
