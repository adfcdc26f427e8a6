//! What a session records into its statements' shape statistics besides hits and misses
//! (see [`crate::planner::stats`]): bypasses, and how long PostgreSQL took to answer a
//! statement that went upstream — one statement timed at a time per session, from the moment
//! it is forwarded to its ReadyForQuery (a pipeline's later statements are not timed while
//! an earlier one is).

use std::sync::Arc;
use std::time::Instant;

use super::CacheSession;
use crate::planner::bypass::BypassReason;
use crate::planner::plan::Plan;
use crate::planner::stats::ShapeStats;

impl CacheSession {
    /// `plan`'s read went upstream without the cache, for `reason`.
    pub(super) fn shape_bypassed(&mut self, plan: &Plan, reason: BypassReason) {
        let Some(shape) = plan.shape_stats() else {
            return;
        };
        shape.bypass(reason);
        if shape.evicted() {
            // Off the hit path: the statement goes upstream anyway.
            self.app.services.query_stats.readopt(shape);
        }
        self.time_upstream(shape);
    }

    /// Starts timing `shape`'s statement upstream, unless another one is being timed.
    pub(super) fn time_upstream(&mut self, shape: &Arc<ShapeStats>) {
        if self.upstream_timer.is_none() {
            self.upstream_timer = Some((Arc::clone(shape), Instant::now()));
        }
    }

    /// A ReadyForQuery arrived: the statement being timed (if any) is answered.
    pub(super) fn upstream_answered(&mut self) {
        if let Some((shape, started)) = self.upstream_timer.take() {
            shape.upstream(started.elapsed());
            if shape.evicted() {
                self.app.services.query_stats.readopt(&shape);
            }
        }
    }
}
