//! The lookup of one cacheable statement (DESIGN §2): the checks that decide whether the
//! cache may be used at all (bypass reasons, including a server configuration reload since
//! the session's settings probe), the version snapshot (I1), the shared tier's
//! counters and L2 (see [`shared`](super::shared)), the keys, and the L1 lookup that hits,
//! leads a fill (and prepares the capture of the response) or waits for another session's.

use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::{CacheSession, Capture, HIT_TIMING_SAMPLE, Looked, hooks, shared};
use crate::cache::{KeyInput, Lookup};
use crate::planner::plan::Plan;
use crate::session::state::SessionState;
use crate::telemetry::names;

impl CacheSession {
    /// Looks a cacheable statement up (a simple Query, or with `extended` the Parse's
    /// parameter types and the Bind's tail); on a miss, prepares the capture of its response.
    pub(super) fn lookup(
        &mut self,
        plan: &Plan,
        state: &SessionState,
        extended: Option<(&[u8], &[u8])>,
    ) -> Looked {
        let bypass = |reason: &'static str| {
            metrics::counter!(names::CACHE_BYPASSES, "reason" => reason).increment(1);
            Looked::Forward
        };
        let read = match &plan.read {
            Ok(r) => r,
            Err(reason) => {
                if plan.analysis.statements.len() == 1
                    && matches!(
                        plan.analysis.statements.first().map(|s| &s.class),
                        Some(crate::sql::Class::CacheableRead)
                    )
                {
                    return bypass(reason);
                }
                return Looked::Forward;
            }
        };
        if !self.app.cache_enabled() {
            return bypass("disabled");
        }
        if !state.is_idle() || self.capture.is_some() {
            return bypass("not_idle");
        }
        if !self
            .cx
            .as_ref()
            .is_none_or(|c| self.app.caching.cdc.serves(&c.database))
        {
            // The change stream is not established or lags: results could be stale beyond
            // any bound, so they are neither served nor stored.
            return bypass("cdc_not_streaming");
        }
        if !self
            .cx
            .as_ref()
            .is_none_or(|c| self.app.caching.catalog.watched(&c.database))
        {
            // pgmemo's side connections to this database were closed (no client used it)
            // and no poll has checked its catalog since: DDL made meanwhile may not be seen.
            return bypass("catalog_unwatched");
        }
        if self.probe_needed || self.probe.is_some() || self.opted_out {
            return bypass(if self.opted_out {
                "session_opt_out"
            } else {
                "settings_unknown"
            });
        }
        let config = self.app.caching.invalidator.config_generation();
        if config != self.probe_config {
            // The server reloaded its configuration since the probe: a setting this session
            // did not SET may have a new value its fingerprint does not show. Probe again.
            self.probe_needed = self.may_probe();
            return bypass("settings_unknown");
        }
        if extended.is_none() && state.registry.get(b"").is_some() {
            // A hit would leave the unnamed statement alive where PostgreSQL drops it.
            return bypass("unnamed_statement");
        }
        let Some(fp) = self.fp_digest.filter(|_| self.fingerprint.cacheable()) else {
            return bypass("session_tainted");
        };
        if read.stats.skipping() {
            return bypass("low_hit_ratio");
        }
        // Hit latency and the shape's hit ratio are sampled: doing either for every lookup
        // would cost a share of the hit itself.
        self.lookups = self.lookups.wrapping_add(1);
        let sampled = self.lookups.is_multiple_of(HIT_TIMING_SAMPLE);
        let timed = sampled.then(Instant::now);
        // I1: versions are read before the Query goes upstream.
        let snapshot = self.app.caching.cache.versions().snapshot(&read.tags);
        let bare = KeyInput::<Bytes>::new(&fp, &read.normalized, &snapshot);
        let bare = match extended {
            Some((types, bind)) => bare.extended(types, bind),
            None => bare,
        };
        // With no L1 to try first, the L2 entry is fetched with the counters: its address.
        let slot = (self.shared_ready.is_none()
            && self.app.caching.shared.is_some()
            && !self.app.caching.cache.l1_enabled())
        .then(|| self.app.caching.cache.key_l2_slot(&bare));
        let (counters, l2_step) = match self.shared_plan(&snapshot, slot) {
            shared::SharedPlan::Off => (None, shared::L2Step::Skip),
            shared::SharedPlan::Keyed { counters, l2 } => (Some(counters), l2),
            shared::SharedPlan::Bypass => return bypass("redis_unavailable"),
            shared::SharedPlan::Wait(wait) => return Looked::Wait(wait),
        };
        let cache = &self.app.caching.cache;
        let input = match &counters {
            Some(c) => bare.shared(c),
            None => bare,
        };
        let (key, check) = cache.key(&input);
        // The L2 key costs a second hash: only when the L2 is asked or a miss is captured.
        let l2_key = || cache.key_l2(&input);
        let looked = match (l2_step, counters.as_ref()) {
            (shared::L2Step::Ask, Some(counters)) => match cache.peek(key, check) {
                Some(entry) => Lookup::Hit(entry),
                None => match l2_key()
                    .and_then(|(l2, _)| self.l2_wait(&snapshot, counters.clone(), l2))
                {
                    Some(wait) => return Looked::Wait(wait),
                    None => cache.lookup(key, check),
                },
            },
            (shared::L2Step::Asked(asked, Some(sealed)), _) => {
                // Found at this address: used only if stored under the counters just read.
                let current = l2_key()
                    .filter(|(l2, l2_check)| asked == *l2 && sealed.check == *l2_check)
                    .and_then(|_| shared::promoted(sealed, check, &read.tags));
                if let Some(tier) = &self.app.caching.shared {
                    tier.count_l2_lookup(current.is_some());
                }
                match current {
                    Some(entry) => Lookup::Hit(cache.promote(key, &snapshot, entry)),
                    None => cache.lookup(key, check),
                }
            }
            _ => cache.lookup(key, check),
        };
        if sampled {
            let app = &self.app;
            // A wait for another session's fill is served from the cache too: under
            // concurrency most lookups of a slow hot read are waits, and counting them as
            // misses bypassed exactly the shapes the cache saves most on.
            let served = matches!(looked, Lookup::Hit(_) | Lookup::Wait(_));
            read.stats
                .sample(served, || app.config().cache.min_hit_ratio);
        }
        match looked {
            Lookup::Hit(entry) => {
                if let Some(started) = timed {
                    self.metrics
                        .hit_seconds
                        .record(started.elapsed().as_secs_f64());
                }
                Looked::Hit(entry)
            }
            Lookup::Miss(guard) => {
                hooks::pause(hooks::Point::AfterSnapshot);
                let l2 = l2_key();
                self.capture = Some(Capture {
                    guard,
                    snapshot,
                    check,
                    ttl: read.ttl,
                    tags: read.tags.clone(),
                    l2,
                    frames: BytesMut::new(),
                    complete: false,
                    started: timed.unwrap_or_else(Instant::now),
                    config,
                });
                Looked::Forward
            }
            // Another session is running this query: wait for its result.
            Lookup::Wait(waiter) => Looked::Wait(self.wait_future(waiter)),
        }
    }
}
