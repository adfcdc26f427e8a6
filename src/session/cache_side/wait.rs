//! Waiting for another session's fill of the same key (stampede protection): a held Query or
//! extended group waits at most `cache.fill_wait_timeout`, never past the session's
//! `statement_timeout`, and a CancelRequest for the session ends the wait as PostgreSQL ends
//! a cancelled statement (57014).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

use super::CacheSession;
use crate::cache::{Entry, FillWaiter, WaitOutcome};
use crate::cancel::CancelSignal;
use crate::error::ClientError;

pub type WaitFuture = Pin<Box<dyn Future<Output = WaitResult> + Send>>;

/// How a held Query's wait for another session's fill ended.
#[derive(Debug)]
pub enum WaitResult {
    /// The other session's result: answer with it.
    Hit(Arc<Entry>),
    /// Cancelled (CancelRequest) or past `statement_timeout`: answer with this ErrorResponse.
    Error(Bytes),
    /// The other session failed, went away or took too long: run the query here.
    RunOwn,
    /// A shared-tier read finished (counters or the L2): look up again with it.
    Shared(crate::cache::tiers::SharedReady),
    /// A write-behind write is durably queued: answer with these frames (see `behind`);
    /// the plan it was queued under (a Parse answered with it is registered with it).
    Queued(Bytes, Arc<crate::planner::plan::Plan>),
}

impl CacheSession {
    /// Waits for another session's fill: at most `cache.fill_wait_timeout`, and never past
    /// the session's `statement_timeout` (PostgreSQL would have cancelled the statement by
    /// then); a cancel request for this session ends the wait as PostgreSQL ends a cancelled
    /// statement.
    pub(super) fn wait_future(&self, waiter: FillWaiter) -> WaitFuture {
        let fill_timeout = self.app.config().cache.fill_wait_timeout;
        let statement_timeout = self.statement_timeout;
        let capped = statement_timeout.is_some_and(|t| t <= fill_timeout);
        let limit = statement_timeout.map_or(fill_timeout, |t| t.min(fill_timeout));
        let cancel = self.cancel.clone();
        let seen = cancel.as_ref().map_or(0, |c| c.received());
        Box::pin(async move {
            let _waiting = cancel.as_ref().map(CancelSignal::waiting);
            let cancelled = async {
                match &cancel {
                    Some(c) => c.after(seen).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                outcome = waiter.wait(limit) => match outcome {
                    WaitOutcome::Filled(entry) => {
                        // A read of what a refresh stored (not wasted).
                        entry.note_read();
                        WaitResult::Hit(entry)
                    }
                    WaitOutcome::TimedOut if capped => WaitResult::Error(
                        ClientError::canceled_by_statement_timeout().encode(),
                    ),
                    WaitOutcome::TimedOut | WaitOutcome::LeaderGaveUp => WaitResult::RunOwn,
                },
                () = cancelled => WaitResult::Error(ClientError::canceled_by_user().encode()),
            }
        })
    }

    /// The wait for the held Query frame ended; the relay shows the frame again next.
    pub fn wait_done(&mut self, result: WaitResult) {
        self.held.set(super::resume::Resume::Waited(result));
    }
}
