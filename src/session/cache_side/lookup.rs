//! The lookup of one cacheable statement (DESIGN §2): the checks that decide whether the
//! cache may be used at all in this session (bypass reasons, including a server
//! configuration reload since the session's settings probe), the version snapshot (I1) and
//! the key input; then one question to the cache's tiers ([`crate::cache::tiers`]), whose
//! answer the session acts on: a hit is answered, a miss prepares the capture of the
//! response, a wait (another session's fill, or a shared-tier read) holds the frame.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::capture::Capture;
use super::{CacheSession, HIT_TIMING_SAMPLE, Looked, WaitResult, hooks};
use crate::cache::KeyInput;
use crate::cache::tiers::TierLookup;
use crate::planner::bypass::BypassReason;
use crate::planner::plan::{Bound, Plan, ReadPlan};
use crate::session::state::SessionState;
use crate::telemetry::names;

/// What re-running a missed read of a write-through table takes (see `through`).
fn recipe_seed(
    plan: &Arc<Plan>,
    extended: Option<(&[u8], &[u8])>,
    fingerprint: [u8; 16],
) -> Box<super::capture::RecipeSeed> {
    Box::new(super::capture::RecipeSeed {
        request: crate::refresh::recipes::Request::seen(&plan.sql, extended),
        // The plan the memos hold: shared, and weighed once (see `refresh::recipes`).
        plan: Arc::clone(plan),
        fingerprint,
    })
}

impl CacheSession {
    /// Looks a cacheable statement up (a simple Query, or with `extended` the Parse's
    /// parameter types and the Bind's tail); on a miss, prepares the capture of its response.
    pub(super) fn lookup(
        &mut self,
        plan: &Arc<Plan>,
        state: &SessionState,
        extended: Option<(&[u8], &[u8])>,
    ) -> Looked {
        let (read, fp, config) = match self.admit(plan, state, extended.is_some()) {
            Ok(admitted) => admitted,
            Err(counted) => {
                // Not a cacheable read at all (`None`, e.g. `SELECT now()`): not a bypass
                // for the metric, but its shape's statistics still say why.
                let reason = counted.or_else(|| plan.read.as_ref().err().copied());
                if let Some(reason) = counted {
                    count_bypass(reason);
                }
                if let Some(reason) = reason {
                    self.shape_bypassed(plan, reason);
                }
                return Looked::Forward;
            }
        };
        // Hit latency and the shape's hit ratio are sampled: doing either for every lookup
        // would cost a share of the hit itself.
        self.lookups = self.lookups.wrapping_add(1);
        let sampled = self.lookups.is_multiple_of(HIT_TIMING_SAMPLE);
        let timed = sampled.then(Instant::now);
        // I1: versions are read before the Query goes upstream.
        let cache = &self.app.services.cache;
        let bound = extended.map(|(types, tail)| Bound { types, tail });
        let pinned = read.deps(bound, self.utf8, cache.secret(), &mut self.deps);
        let snapshot = cache.versions().snapshot_deps(&self.deps);
        let bare = KeyInput::<Bytes>::new(&fp, &read.normalized, &snapshot);
        let bare = match extended {
            Some((types, bind)) => bare.extended(types, bind),
            None => bare,
        };
        let tiers = self.app.services.tiers();
        let looked = match tiers.lookup(&snapshot, bare, self.held.take_shared()) {
            TierLookup::Bypass(label) => {
                // The shared tier's one reason (its label is the metric's, as before).
                metrics::counter!(names::CACHE_BYPASSES, "reason" => label).increment(1);
                self.shape_bypassed(plan, BypassReason::RedisUnavailable);
                return Looked::Forward;
            }
            TierLookup::Read(read) => {
                // Looked up again once Redis answered: that attempt is this statement's
                // lookup, sampled or not as this one would have been (else with a shared
                // tier every sampled lookup would be a Read, and no hit ever sampled).
                self.lookups = self.lookups.wrapping_sub(1);
                return Looked::Wait(Box::pin(async move { WaitResult::Shared(read.await) }));
            }
            looked => looked,
        };
        if sampled {
            let [table, rows] = &self.metrics.pinned;
            let counter = if pinned { rows } else { table };
            counter.increment(u64::from(HIT_TIMING_SAMPLE));
        }
        if sampled {
            // A wait for another session's fill is served from the cache too: under
            // concurrency most lookups of a slow hot read are waits, and counting them as
            // misses bypassed exactly the shapes the cache saves most on.
            let served = matches!(looked, TierLookup::Hit(_) | TierLookup::Wait(_));
            read.stats
                .sample(served, || self.app.config().cache.min_hit_ratio);
        }
        match looked {
            TierLookup::Hit(entry) => {
                self.on_hit((plan, read), &entry, extended, fp);
                if self.app.services.verify.sampled(&mut self.rng) {
                    self.verify_hit(plan, &entry, extended, fp, &snapshot);
                }
                let elapsed = timed.map(|started| started.elapsed());
                if let Some(elapsed) = elapsed {
                    self.metrics.hit_seconds.record(elapsed.as_secs_f64());
                    self.count_hot(plan, extended, fp);
                }
                // One relaxed addition on the shape's own counters; re-admission to the
                // statistics table (a lock) is asked on sampled hits only.
                if let Some(shape) = plan.shape_stats() {
                    shape.hit(elapsed);
                    if sampled && shape.evicted() {
                        self.app.services.query_stats.readopt(shape);
                    }
                }
                Looked::Hit(entry)
            }
            TierLookup::Miss { guard, check, l2 } => {
                hooks::pause(hooks::Point::AfterSnapshot);
                if let Some(shape) = plan.shape_stats() {
                    shape.miss();
                    self.time_upstream(shape);
                }
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
                    recipe: read.through.then(|| recipe_seed(plan, extended, fp)),
                    shape: plan.shape_stats().cloned(),
                });
                Looked::Forward
            }
            // Another session is running this query: wait for its result (served from the
            // cache: counted as a hit, as the adaptive bypass counts it).
            TierLookup::Wait(waiter) => {
                if let Some(shape) = plan.shape_stats() {
                    shape.hit(None);
                }
                Looked::Wait(self.wait_future(waiter))
            }
            // Answered above.
            TierLookup::Bypass(_) | TierLookup::Read(_) => Looked::Forward,
        }
    }

    /// Whether the cache may be used for `plan` in this session now: its read plan, the
    /// fingerprint digest and the configuration generation the lookup runs under, or why
    /// not (`None`: not a cacheable read at all, nothing to count).
    pub(super) fn admit<'p>(
        &mut self,
        plan: &'p Plan,
        state: &SessionState,
        extended: bool,
    ) -> Result<(&'p ReadPlan, [u8; 16], u64), Option<BypassReason>> {
        let read = match &plan.read {
            Ok(r) => r,
            Err(reason) => {
                if plan.analysis.statements.len() == 1
                    && matches!(
                        plan.analysis.statements.first().map(|s| &s.class),
                        Some(crate::sql::Class::CacheableRead)
                    )
                {
                    return Err(Some(*reason));
                }
                return Err(None);
            }
        };
        if !self.app.cache_enabled() {
            return Err(Some(BypassReason::Disabled));
        }
        if !state.is_idle() || self.capture.is_some() {
            return Err(Some(BypassReason::NotIdle));
        }
        if !self
            .cx
            .as_ref()
            .is_none_or(|c| self.app.services.cdc.serves(&c.database))
        {
            // The change stream is not established or lags: results could be stale beyond
            // any bound, so they are neither served nor stored.
            return Err(Some(BypassReason::CdcNotStreaming));
        }
        if !self
            .cx
            .as_ref()
            .is_none_or(|c| self.app.services.catalog.watched(&c.database))
        {
            // pgmemo's side connections to this database were closed (no client used it)
            // and no poll has checked its catalog since: DDL made meanwhile may not be seen.
            return Err(Some(BypassReason::CatalogUnwatched));
        }
        if self.probe.needed || self.probe.reader.is_some() || self.opted_out {
            return Err(Some(if self.opted_out {
                BypassReason::SessionOptOut
            } else {
                BypassReason::SettingsUnknown
            }));
        }
        let config = self.app.services.invalidator.config_generation();
        if config != self.probe.config {
            // The server reloaded its configuration since the probe: a setting this session
            // did not SET may have a new value its fingerprint does not show. Probe again.
            self.probe.needed = self.probe.may_retry();
            return Err(Some(BypassReason::SettingsUnknown));
        }
        if !extended && state.registry.get(b"").is_some() {
            // A hit would leave the unnamed statement alive where PostgreSQL drops it.
            return Err(Some(BypassReason::UnnamedStatement));
        }
        let Some(fp) = self.fp_digest.filter(|_| self.fingerprint.cacheable()) else {
            return Err(Some(BypassReason::SessionTainted));
        };
        if read.stats.skipping() {
            return Err(Some(BypassReason::LowHitRatio));
        }
        Ok((read, fp, config))
    }
}

/// A cacheable read that may not use the cache now, counted by reason (it is forwarded).
pub(super) fn count_bypass(reason: BypassReason) {
    metrics::counter!(names::CACHE_BYPASSES, "reason" => reason.label()).increment(1);
}
