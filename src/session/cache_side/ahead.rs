//! Refresh-ahead on the hit path (issue 19): a hit on an entry past its refresh point —
//! the rule's `refresh_ahead` fraction of its TTL, or for an entry a refresh stored under
//! `refresh_adaptive` its own point — is answered from the cache as any hit and also hands
//! one refresh of it to the background refresher, which recomputes it under this session's
//! login and fingerprint (never another's: see `background`) and replaces the entry before
//! it expires. At most one refresh per entry (claimed on the entry), coalesced with any fill
//! of its key in flight (the refresher leads the key's fill); a refresh that fails leaves
//! the entry to expire as it would have.
//!
//! Cost on the hit path: for every hit a call and a comparison (and one relaxed load for
//! an entry a refresh stored: the wasted-refresh mark); with refresh-ahead on, one more
//! relaxed load, and a clock read until the entry's refresh is claimed.

use std::sync::Arc;
use std::time::Instant;

use super::CacheSession;
use crate::cache::Entry;
use crate::cache::entry::Origin;
use crate::planner::plan::{Plan, ReadPlan};
use crate::refresh::queue::{AHEAD_REQUEST_BYTES, Cause, Job};
use crate::refresh::recipes::{Recipe, Request};
use crate::telemetry::names;

impl CacheSession {
    /// A hit on `entry` of `plan` (`read` its read plan), looked up under the fingerprint
    /// digest `fp` (with `extended`: the Parse's parameter types and the Bind's tail).
    pub(super) fn on_hit(
        &self,
        (plan, read): (&Arc<Plan>, &ReadPlan),
        entry: &Arc<Entry>,
        extended: Option<(&[u8], &[u8])>,
        fp: [u8; 16],
    ) {
        entry.note_read();
        if read.refresh_ahead <= 0.0 {
            return;
        }
        let point = match entry.origin() {
            Origin::Ahead { point } if read.refresh_adaptive => point,
            _ => read.refresh_ahead,
        };
        if entry.refresh_claimed() || !entry.refresh_due(point) || !entry.claim_refresh() {
            return;
        }
        let services = &self.app.services;
        if read.refresh_adaptive {
            let upstream =
                super::super::relay::statements_total().saturating_sub(services.cache.hits());
            let max_share = self.app.config().refresh.max_share;
            if !services
                .refresh_share
                .admit(upstream, max_share, Instant::now())
            {
                count("over_share");
                return;
            }
        }
        let request = Request::seen(&plan.sql, extended);
        if request.bytes() > AHEAD_REQUEST_BYTES {
            count("too_large");
            return;
        }
        let recipe = Recipe {
            database: Arc::clone(&self.database),
            login: Arc::clone(&self.login),
            fingerprint: fp,
            request,
            plan: Arc::clone(plan),
            // Not filed in the registry: its dependencies are not needed.
            deps: Box::new([]),
        };
        let job = Job {
            recipe: Arc::new(recipe),
            cause: Cause::Ahead,
            previous: Some(Arc::downgrade(entry)),
            // Nobody waits for a refresh-ahead: the hit that started it was answered.
            done: None,
        };
        if !services.refresh_queue.submit(job) {
            count("queue_full");
        }
    }
}

fn count(result: &'static str) {
    metrics::counter!(names::REFRESH, "cause" => "ahead", "result" => result).increment(1);
}
