//! The hand-off from sessions to the background refresher (issue 19): a bounded queue of
//! results to recompute under their own fingerprint on pgmemo's own connections — those a
//! write-through cannot re-run on the writer's connection (read under another fingerprint)
//! and refresh-ahead's. Sessions never wait on it: a full queue refuses the job
//! (counted) and the result simply stays invalid, as without the rule.
//!
//! Bounded in bytes: at most [`CAPACITY`] jobs, each an `Arc` of a recipe — one the
//! registry weighs (write-through), or one made at a hit whose request is at most
//! [`AHEAD_REQUEST_BYTES`] (refresh-ahead) — a `Weak` of the entry it replaces, and a
//! write-through's completion token (a pointer: the writer's acknowledgement waits for it,
//! see `session::cache_side::before_ack`). A job refused by a full queue is dropped at
//! once, which ends its token: a waiting acknowledgement never waits for a job that will
//! not run.

use std::sync::{Arc, OnceLock};

use tokio::sync::mpsc;

use super::recipes::Recipe;
use crate::tasks::InFlight;

/// Jobs waiting at most.
pub const CAPACITY: usize = 1024;
/// Bytes one queued job costs besides its recipe.
pub const JOB_BYTES: usize = std::mem::size_of::<Job>() + 16;
/// The largest request (SQL text and parameters) a refresh-ahead job carries: a larger
/// one is not refreshed ahead (it expires as without the rule), so the queue holds at most
/// [`CAPACITY`] times this in requests of its own.
pub const AHEAD_REQUEST_BYTES: usize = 16 * 1024;

/// Why a result is recomputed in the background.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A write invalidated it (write-through), and the writer's session could not re-run it.
    Write,
    /// It was read past its refresh point (refresh-ahead): it is replaced before it expires.
    Ahead,
}

impl Cause {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Write => "write",
            Self::Ahead => "ahead",
        }
    }
}

/// One result to recompute.
#[derive(Debug)]
pub struct Job {
    pub recipe: Arc<Recipe>,
    pub cause: Cause,
    /// Refresh-ahead: the entry it replaces, not kept alive (the cache may evict it
    /// meanwhile; then a refresh is not needed, and its bytes are not held here).
    pub previous: Option<std::sync::Weak<crate::cache::Entry>>,
    /// Write-through: held until the job ended, however (stored, skipped, failed, refused,
    /// dropped at shutdown), and by the Redis write of its result until Redis answered it.
    pub done: Option<InFlight>,
}

/// The sessions' side of the queue. Until the refresher starts (and in tools that never
/// start it) every job is refused.
#[derive(Debug, Default)]
pub struct Queue {
    tx: OnceLock<mpsc::Sender<Job>>,
}

impl Queue {
    /// Opens the queue; the refresher consumes the receiver. `None` when it was opened
    /// already.
    pub fn open(&self) -> Option<mpsc::Receiver<Job>> {
        let (tx, rx) = mpsc::channel(CAPACITY);
        self.tx.set(tx).ok()?;
        Some(rx)
    }

    /// Queues `job`; false (the result stays invalid) when the queue is full or closed.
    pub fn submit(&self, job: Job) -> bool {
        self.tx.get().is_some_and(|tx| tx.try_send(job).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe() -> Arc<Recipe> {
        Arc::new(Recipe::for_tests("SELECT 1", &[]))
    }

    #[test]
    fn jobs_are_refused_until_opened_and_when_full() {
        let q = Queue::default();
        let job = || Job {
            recipe: recipe(),
            cause: Cause::Write,
            previous: None,
            done: None,
        };
        assert!(!q.submit(job()), "not open yet");
        let mut rx = q.open().expect("first open");
        assert!(q.open().is_none(), "opened once");
        for _ in 0..CAPACITY {
            assert!(q.submit(job()));
        }
        assert!(!q.submit(job()), "full");
        assert!(rx.try_recv().is_ok());
        assert!(q.submit(job()), "room again");
    }

    #[tokio::test]
    async fn a_job_refused_or_consumed_ends_its_token() {
        let q = Queue::default();
        let mut rx = q.open().expect("first open");
        let (token, ended) = crate::tasks::in_flight();
        let recipe = recipe();
        let job = |done| Job {
            recipe: Arc::clone(&recipe),
            cause: Cause::Write,
            previous: None,
            done,
        };
        for _ in 0..CAPACITY {
            assert!(q.submit(job(None)));
        }
        assert!(!q.submit(job(Some(token))), "full");
        let wait = tokio::time::timeout(std::time::Duration::from_secs(5), ended.wait());
        assert!(wait.await.is_ok(), "the refused job's token ended");

        let (token, ended) = crate::tasks::in_flight();
        assert!(rx.try_recv().is_ok());
        assert!(q.submit(job(Some(token))));
        let mut wait = Box::pin(ended.wait());
        let early = tokio::time::timeout(std::time::Duration::from_millis(20), wait.as_mut());
        assert!(early.await.is_err(), "queued: not ended");
        drop(rx);
        let late = tokio::time::timeout(std::time::Duration::from_secs(5), wait);
        assert!(late.await.is_ok(), "dropped with the queue: ended");
    }
}
