//! What a session knows about its upstream backend, learnt from the frames it relays: the
//! transaction status (from every ReadyForQuery), the replies still awaited in order (one
//! queue, [`super::replies`], read by the registry here and by write tracking), the prepared
//! statements by name (matched to their ParseComplete/CloseComplete), and whether any
//! response is still outstanding — the facts the cache and graceful shutdown rely on.

use bytes::Bytes;

use std::sync::Arc;

use super::registry::{Registry, Statement};
use super::replies::{Awaited, Completion, Injected, ReadyFor, Replies};
use crate::planner::plan::Plan;
use crate::protocol::fields::Reader;
use crate::protocol::frontend::{Bind, Close, Describe, Parse, SYNC_FRAME, Target};
use crate::protocol::tags::{backend, frontend};
use crate::telemetry::names;

/// Transaction status from the last ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnStatus {
    Idle,
    InBlock,
    Failed,
}

#[derive(Debug)]
pub struct SessionState {
    pub txn: TxnStatus,
    pub registry: Registry,
    /// Every reply awaited from upstream, in order (see [`super::replies`]).
    replies: Replies,
    /// Sync/Query/FunctionCall sent and not yet answered by ReadyForQuery.
    awaiting_ready: usize,
    /// Extended-protocol messages sent since the last Sync (their responses may be pending).
    unsynced: bool,
    /// ReadyForQuery frames received so far (wrapping): tells one sync group from the next.
    readies: u64,
    /// The backend is reading COPY data (CopyInResponse seen, the client's CopyDone or
    /// CopyFail not yet forwarded): PostgreSQL ignores a Sync or Flush it reads meanwhile.
    copy_in: bool,
}

impl Default for SessionState {
    fn default() -> Self {
        Self {
            txn: TxnStatus::Idle,
            registry: Registry::default(),
            replies: Replies::default(),
            awaiting_ready: 0,
            unsynced: false,
            readies: 0,
            copy_in: false,
        }
    }
}

impl SessionState {
    /// No transaction open and nothing outstanding: the session may be closed (or, later,
    /// answered from cache) without changing what the client observes.
    pub fn is_idle(&self) -> bool {
        self.txn == TxnStatus::Idle && self.awaiting_ready == 0 && !self.unsynced
    }

    pub fn awaiting_ready(&self) -> usize {
        self.awaiting_ready
    }

    /// The ReadyForQuery count when exactly one sync group (a Query, or extended messages
    /// up to their Sync) is outstanding upstream and nothing follows it: whatever runs
    /// there now belongs to that group.
    pub fn sole_group(&self) -> Option<u64> {
        (self.awaiting_ready == 1 && !self.unsynced).then_some(self.readies)
    }

    /// A Sync (or simple Query) forwarded now would end the only sync group outstanding,
    /// begun outside any transaction block: its ReadyForQuery is the next one, and what
    /// is sent right behind it runs after that group's implicit transaction ended.
    pub fn ends_sole_group(&self) -> bool {
        self.txn == TxnStatus::Idle && self.awaiting_ready == 0
    }

    /// Something sent upstream is not answered yet (a statement running, or extended
    /// messages before their Sync).
    pub fn outstanding(&self) -> bool {
        self.awaiting_ready > 0 || self.unsynced
    }

    /// The replies awaited, in order (write tracking reads what the statements ahead are).
    pub fn replies(&self) -> &Replies {
        &self.replies
    }

    /// The next reply due upstream answers a Parse pgmemo replayed on its own after a cache
    /// hit, or the Sync it sent with it: pgmemo's own work, not the client's.
    pub fn own_work_at_head(&self) -> bool {
        matches!(
            self.replies.front(),
            Some(
                Awaited::Parse {
                    injected: Some(Injected::Eager),
                    ..
                } | Awaited::Ready(ReadyFor::Injected)
            )
        )
    }

    /// Whether the frontend frame `tag` must be shown to `on_frontend`.
    pub fn inspects_frontend(tag: u8) -> bool {
        matches!(
            tag,
            frontend::QUERY
                | frontend::PARSE
                | frontend::CLOSE
                | frontend::SYNC
                | frontend::FUNCTION_CALL
                | frontend::BIND
                | frontend::DESCRIBE
                | frontend::EXECUTE
                | frontend::FLUSH
                | frontend::COPY_DONE
                | frontend::COPY_FAIL
        )
    }

    /// Whether the backend frame `tag` must be shown to `on_backend`.
    pub fn inspects_backend(tag: u8) -> bool {
        matches!(
            tag,
            backend::READY_FOR_QUERY
                | backend::ERROR_RESPONSE
                | backend::PARSE_COMPLETE
                | backend::CLOSE_COMPLETE
                | backend::COPY_IN_RESPONSE
        )
    }

    /// A complete frontend frame on its way upstream (after write tracking queued the
    /// completions of the statements it runs, see [`Self::expect_completion`]); `plan`:
    /// pgmemo's plan of a Parse's statement.
    pub fn on_frontend(&mut self, tag: u8, frame: &[u8], plan: Option<Arc<Plan>>) {
        match tag {
            frontend::QUERY => {
                // The Query destroys the unnamed statement upstream (one only pgmemo held
                // is forgotten at once: PostgreSQL would fail a later Bind of it).
                self.registry.closing(b"");
                self.expect(Awaited::Ready(ReadyFor::Query));
            }
            frontend::FUNCTION_CALL => self.expect(Awaited::Ready(ReadyFor::FunctionCall)),
            // Read by PostgreSQL as COPY data's neighbour: ignored, nothing answers it.
            frontend::SYNC if self.copy_in => {}
            frontend::COPY_DONE | frontend::COPY_FAIL => self.copy_in = false,
            frontend::SYNC => {
                self.unsynced = false;
                self.expect(Awaited::Ready(ReadyFor::Sync));
            }
            frontend::PARSE => {
                self.unsynced = true;
                match Parse::read(frame) {
                    Some(p) => {
                        // While lost, a reply may confirm it for another message: no plan.
                        let plan = plan.filter(|_| !self.replies.is_lost());
                        let stmt = Statement::new(p.sql, p.param_types, plan);
                        let settled = self.replies.settled();
                        let name = Bytes::copy_from_slice(p.name);
                        let seq = self.registry.sent(name.clone(), stmt.clone(), settled);
                        self.expect(Awaited::Parse {
                            name,
                            seq,
                            stmt,
                            injected: None,
                        });
                    }
                    // PostgreSQL rejects it (no ParseComplete follows), but what it would
                    // have named is unknown: the registry is no longer trusted.
                    None => self.registry.mark_untracked(),
                }
            }
            frontend::CLOSE => {
                self.unsynced = true;
                match Close::read(frame) {
                    Some(Close {
                        target: Target::Statement,
                        name,
                    }) => {
                        self.registry.closing(name);
                        self.expect(Awaited::CloseStatement {
                            name: Bytes::copy_from_slice(name),
                        });
                    }
                    Some(Close {
                        target: Target::Portal,
                        ..
                    }) => {}
                    None => self.registry.mark_untracked(),
                }
            }
            frontend::BIND | frontend::DESCRIBE | frontend::EXECUTE | frontend::FLUSH => {
                self.unsynced = true;
            }
            _ => {}
        }
    }

    /// The completion of a statement about to be sent upstream (queued by write tracking
    /// before [`Self::on_frontend`] sees the frame that runs it).
    pub fn expect_completion(&mut self, c: Completion) {
        self.expect(Awaited::Completion(c));
    }

    /// A complete backend frame on its way to the client (for a completion, write tracking
    /// took its entry with [`Self::take_completion`]).
    pub fn on_backend(&mut self, tag: u8, frame: &[u8]) {
        match tag {
            backend::READY_FOR_QUERY => {
                self.awaiting_ready = self.awaiting_ready.saturating_sub(1);
                self.readies = self.readies.wrapping_add(1);
                self.txn = match Reader::body(frame).u8() {
                    Some(b'T') => TxnStatus::InBlock,
                    Some(b'E') => TxnStatus::Failed,
                    _ => TxnStatus::Idle,
                };
                match self.replies.front() {
                    Some(Awaited::Ready(ready)) => {
                        if *ready == ReadyFor::Query {
                            // PostgreSQL drops the unnamed statement at every simple Query.
                            self.registry.closed(b"");
                        }
                        self.replies.pop();
                    }
                    _ => self.mismatch(),
                }
                if self.replies.is_lost() && self.is_idle() {
                    // Nothing else is outstanding: replies line up again from here.
                    self.replies.resync();
                }
            }
            backend::PARSE_COMPLETE => match self.replies.front() {
                Some(Awaited::Parse { .. }) => {
                    if let Some(Awaited::Parse {
                        name, seq, stmt, ..
                    }) = self.replies.pop()
                    {
                        self.registry.confirmed(name, seq, stmt);
                    }
                }
                _ => self.mismatch(),
            },
            backend::CLOSE_COMPLETE => {
                // A CloseComplete for a portal has nothing queued; only statements are.
                if matches!(self.replies.front(), Some(Awaited::CloseStatement { .. }))
                    && let Some(Awaited::CloseStatement { name }) = self.replies.pop()
                {
                    self.registry.closed(&name);
                }
            }
            backend::COPY_IN_RESPONSE => self.copy_started(),
            backend::ERROR_RESPONSE => {
                // An error ends COPY data (a Sync sent after it is read again).
                self.copy_in = false;
                // After an error the server skips everything up to the next Sync (the rest
                // of a Query's statements too), so nothing queued ahead of its ReadyForQuery
                // will be answered: a Parse's statement is not created (a replayed one is local
                // again), a Close leaves its statement.
                while !matches!(self.replies.front(), Some(Awaited::Ready(_)) | None) {
                    match self.replies.pop() {
                        Some(Awaited::Parse { name, seq, .. }) => self.registry.failed(&name, seq),
                        Some(Awaited::CloseStatement { name }) => {
                            self.registry.close_skipped(&name)
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }

    /// PostgreSQL began reading COPY data for the statement at the head of the queue: every
    /// message the client sent behind that statement was, or will be until its CopyDone or
    /// CopyFail, read in copy-in mode, where a Sync is ignored (libpq sends one with the
    /// Execute and another after CopyDone). The Syncs queued right behind the statement
    /// expect no ReadyForQuery.
    fn copy_started(&mut self) {
        self.copy_in = true;
        let ignored = self.replies.drop_syncs_behind_head();
        self.awaiting_ready = self.awaiting_ready.saturating_sub(ignored);
    }

    /// The statement a completion (CommandComplete, EmptyQueryResponse, PortalSuspended)
    /// answers; `None` when it is not the next reply awaited (tracking is lost).
    pub fn take_completion(&mut self) -> Option<Completion> {
        match self.replies.front() {
            Some(Awaited::Completion(_)) => match self.replies.pop() {
                Some(Awaited::Completion(c)) => Some(c),
                _ => None,
            },
            _ => {
                self.mismatch();
                None
            }
        }
    }

    /// What the ReadyForQuery about to be seen ends, if it is the next reply awaited.
    pub fn next_ready(&self) -> Option<ReadyFor> {
        match self.replies.front() {
            Some(Awaited::Ready(r)) => Some(*r),
            _ => None,
        }
    }

    /// A reply did not match the head of the queue: counted once until replies line up
    /// again (while lost, a reply only takes an entry that matches it).
    pub fn mismatch(&mut self) {
        if !self.replies.is_lost() {
            self.lose_tracking();
        }
    }

    fn expect(&mut self, a: Awaited) {
        if matches!(a, Awaited::Ready(_)) {
            self.awaiting_ready += 1;
        }
        let losses = self.replies.losses();
        self.replies.push(a);
        if self.replies.losses() != losses {
            self.registry.lost();
        }
    }

    fn lose_tracking(&mut self) {
        self.replies.lose();
        self.registry.lost();
    }

    /// Whether the backend frame `tag` answers a message pgmemo sent on its own (a replayed
    /// Parse, or the Sync after an eager replay): the relay swallows it after showing it to
    /// [`Self::on_backend`]. An error is swallowed only for an eager replay; a lazy replay's
    /// error stands where PostgreSQL would have failed the client's message.
    pub fn injected_reply(&self, tag: u8) -> bool {
        matches!(
            (tag, self.replies.front()),
            (
                backend::PARSE_COMPLETE,
                Some(Awaited::Parse {
                    injected: Some(_),
                    ..
                }),
            ) | (
                backend::READY_FOR_QUERY,
                Some(Awaited::Ready(ReadyFor::Injected))
            ) | (
                backend::ERROR_RESPONSE,
                Some(Awaited::Parse {
                    injected: Some(Injected::Eager),
                    ..
                }),
            )
        )
    }

    /// Records a Parse pgmemo answered from the cache (the client has its ParseComplete).
    /// The unnamed statement stays local until a forwarded message names it; a named one is
    /// sent upstream at once with its own Sync (returned: queue it upstream now), so that
    /// PostgreSQL itself answers every later use of the name, SQL EXECUTE and DEALLOCATE too.
    pub fn answered_locally(
        &mut self,
        name: &[u8],
        stmt: Statement,
        frame: Bytes,
    ) -> Option<Bytes> {
        if name.is_empty() {
            self.registry.answered(Bytes::new(), stmt, frame, false);
            return None;
        }
        let mut replay = bytes::BytesMut::with_capacity(frame.len() + SYNC_FRAME.len());
        replay.extend_from_slice(&frame);
        replay.extend_from_slice(SYNC_FRAME);
        let name = Bytes::copy_from_slice(name);
        let seq = self
            .registry
            .answered(name.clone(), stmt.clone(), frame, true);
        metrics::counter!(names::STATEMENT_REPLAYS, "kind" => "eager").increment(1);
        self.expect(Awaited::Parse {
            name,
            seq,
            stmt,
            injected: Some(Injected::Eager),
        });
        self.expect(Awaited::Ready(ReadyFor::Injected));
        Some(replay.freeze())
    }

    /// The Parse to send upstream before the client frame `tag` (about to be forwarded), when
    /// that frame names a statement only pgmemo holds: a Bind or a statement Describe of it, or
    /// a Parse of the same name (which PostgreSQL must then reject as a duplicate).
    pub fn replay_for(&mut self, tag: u8, frame: &[u8]) -> Option<Bytes> {
        if self.replies.is_lost() {
            return None;
        }
        let name = match tag {
            frontend::BIND => Bind::read(frame)?.statement,
            frontend::DESCRIBE => {
                Describe::read(frame)
                    .filter(|d| d.target == Target::Statement)?
                    .name
            }
            frontend::PARSE => Parse::read(frame)
                .map(|p| p.name)
                .filter(|n| !n.is_empty())?,
            _ => return None,
        };
        let (stmt, replay, seq) = self.registry.replay(name)?;
        metrics::counter!(names::STATEMENT_REPLAYS, "kind" => "lazy").increment(1);
        self.expect(Awaited::Parse {
            name: Bytes::copy_from_slice(name),
            seq,
            stmt,
            injected: Some(Injected::Lazy),
        });
        Some(replay)
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
