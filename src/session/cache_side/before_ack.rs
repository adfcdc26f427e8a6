//! Write-through's background re-runs before the writer's acknowledgement (issue 19: the
//! re-runs are stored "before the client receives its ReadyForQuery"). With a shared tier
//! every dependent of a commit is recomputed by the background refresher (its key covers
//! the shared counters, and one instance at a time recomputes a key); without one, so are
//! the other-fingerprint dependents of a commit whose acknowledgement is held anyway (the
//! change stream's ack wait).
//!
//! They are handed over only once the wait already holding the acknowledgement ended (the
//! bump applied in Redis, the change stream caught up): a re-run must read the versions the
//! write moved, or it would be stored under a key no reader looks up. Then the
//! acknowledgement waits for them to end however they end (stored, skipped, failed,
//! refused by a full queue), their Redis writes included, so that a read through any
//! instance right after finds them; for at most `refresh.time_budget` from the commit's
//! ReadyForQuery. Past it the acknowledgement goes, and the re-runs still running end and
//! store on their own (`pgmemo_write_through_over_budget_total`).
//!
//! A session that ends with its acknowledgement held drops the wait: re-runs handed over
//! run to their end, nobody waiting; those not handed over yet are not run (their results
//! stay invalid, never stale: the bump they would read may not have been applied).

use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::time::Instant;

use super::CacheSession;
use super::resume::AckHold;
use super::through::submit_one;
use crate::refresh::recipes::Recipe;
use crate::tasks::{self, Ended};
use crate::telemetry::names;

impl CacheSession {
    /// At a commit's ReadyForQuery: `recipes` are re-run in the background before it is
    /// relayed. Holds it (after any wait already holding it) until they ended or the time
    /// budget passed.
    pub(super) fn refresh_before_ack(&mut self, recipes: Vec<Arc<Recipe>>) {
        if recipes.is_empty() {
            return;
        }
        if matches!(self.ack, AckHold::Released) {
            // Not at a fresh acknowledgement (the released one is shown again without a
            // new hold): handed over with no wait rather than holding another frame.
            for recipe in recipes {
                submit_one(&self.app.services, recipe, None);
            }
            return;
        }
        let deadline = Instant::now() + self.app.config().refresh.time_budget;
        let before = self.ack.take_due();
        let app = Arc::clone(&self.app);
        self.ack = AckHold::Due(Box::pin(async move {
            if let Some(wait) = before {
                wait.await;
            }
            let ended: Vec<Ended> = recipes
                .into_iter()
                .map(|recipe| {
                    let (token, ended) = tasks::in_flight();
                    submit_one(&app.services, recipe, Some(token));
                    ended
                })
                .collect();
            let late = wait_until(ended, deadline).await;
            if late > 0 {
                metrics::counter!(names::WRITE_THROUGH_OVER_BUDGET).increment(late as u64);
            }
        }));
    }
}

/// Waits until every one of `ended` has ended, or `deadline`: how many had not then.
async fn wait_until(ended: Vec<Ended>, deadline: Instant) -> usize {
    let mut running: FuturesUnordered<_> = ended.into_iter().map(Ended::wait).collect();
    let all = async { while running.next().await.is_some() {} };
    // Past the deadline: the acknowledgement goes, the re-runs go on without a waiter.
    let _ = tokio::time::timeout_at(deadline, all).await;
    running.len()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn the_wait_ends_when_all_ended_or_at_the_deadline_with_the_rest_counted() {
        let (a, ended_a) = tasks::in_flight();
        let (b, ended_b) = tasks::in_flight();
        drop(a);
        let soon = Instant::now() + Duration::from_millis(50);
        assert_eq!(wait_until(vec![ended_a, ended_b], soon).await, 1);
        assert!(Instant::now() >= soon, "waited for the deadline");
        drop(b);

        let (c, ended_c) = tasks::in_flight();
        let far = Instant::now() + Duration::from_secs(30);
        let ending = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(c);
        });
        let started = Instant::now();
        assert_eq!(wait_until(vec![ended_c], far).await, 0);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "not the deadline"
        );
        ending.await.unwrap();
    }
}
