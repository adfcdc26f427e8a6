//! What a session knows about its upstream backend, learnt from the frames it relays: the
//! transaction status (from every ReadyForQuery), the prepared statements by name (matched to
//! their ParseComplete/CloseComplete in response order), and whether any response is still
//! outstanding — the facts the cache and graceful shutdown rely on.

use std::collections::VecDeque;

use bytes::Bytes;

use super::registry::{Registry, Statement};
use crate::protocol::fields::Reader;
use crate::protocol::frontend::{Bind, Close, Describe, Parse, SYNC_FRAME, Target};
use crate::protocol::tags::{backend, frontend};
use crate::telemetry::names;

/// Most frontend operations awaiting a response that are tracked; a client pipelining more
/// than this loses statement tracking (the relay itself is unaffected).
pub const MAX_PENDING: usize = 16_384;
/// Most SQL text held for Parse messages awaiting their ParseComplete. PostgreSQL may hold
/// ParseCompletes back until its send buffer fills, so a pipeline of large Parses would
/// otherwise pin all of their text here.
pub const MAX_PENDING_BYTES: usize = 8 * 1024 * 1024;

/// Transaction status from the last ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnStatus {
    Idle,
    InBlock,
    Failed,
}

/// A Parse pgmemo sent upstream on its own (the client had its ParseComplete from the cache).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Injected {
    /// Sent with its own Sync right after the hit: its replies are all swallowed.
    Eager,
    /// Sent just before the client's message that names it: its ParseComplete is swallowed,
    /// its error is the client's (PostgreSQL would have failed that message the same way).
    Lazy,
}

#[derive(Debug)]
enum Pending {
    Parse {
        name: Bytes,
        stmt: Statement,
        injected: Option<Injected>,
    },
    CloseStatement {
        name: Bytes,
    },
    /// Something answered by exactly one ReadyForQuery: Sync, Query, FunctionCall (or the
    /// Sync pgmemo sent after an eager replay: `injected`).
    Ready {
        simple_query: bool,
        injected: bool,
    },
}

impl Pending {
    fn injected(&self) -> bool {
        matches!(
            self,
            Pending::Parse {
                injected: Some(_),
                ..
            } | Pending::Ready { injected: true, .. }
        )
    }
}

#[derive(Debug)]
pub struct SessionState {
    pub txn: TxnStatus,
    pub registry: Registry,
    pending: VecDeque<Pending>,
    /// Sync/Query/FunctionCall sent and not yet answered by ReadyForQuery.
    awaiting_ready: usize,
    /// SQL bytes held by queued Parse operations.
    pending_bytes: usize,
    /// Extended-protocol messages sent since the last Sync (their responses may be pending).
    unsynced: bool,
    tracking_lost: bool,
    /// ReadyForQuery frames received so far (wrapping): tells one sync group from the next.
    readies: u64,
}

impl Default for SessionState {
    fn default() -> Self {
        Self {
            txn: TxnStatus::Idle,
            registry: Registry::default(),
            pending: VecDeque::new(),
            awaiting_ready: 0,
            pending_bytes: 0,
            unsynced: false,
            tracking_lost: false,
            readies: 0,
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

    /// Something sent upstream is not answered yet (a statement running, or extended
    /// messages before their Sync).
    pub fn outstanding(&self) -> bool {
        self.awaiting_ready > 0 || self.unsynced
    }

    /// The next reply due upstream answers a Parse pgmemo replayed on its own after a cache
    /// hit, or the Sync it sent with it: pgmemo's own work, not the client's.
    pub fn own_work_at_head(&self) -> bool {
        matches!(
            self.pending.front(),
            Some(
                Pending::Parse {
                    injected: Some(Injected::Eager),
                    ..
                } | Pending::Ready { injected: true, .. }
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
        )
    }

    /// A complete frontend frame on its way upstream.
    pub fn on_frontend(&mut self, tag: u8, frame: &[u8]) {
        match tag {
            frontend::QUERY => {
                // The Query destroys the unnamed statement upstream; one only pgmemo held must
                // not be replayed for a later Bind (PostgreSQL would fail that Bind).
                self.registry.forget_local(b"");
                self.expect(Pending::Ready {
                    simple_query: true,
                    injected: false,
                });
            }
            frontend::FUNCTION_CALL => self.expect(Pending::Ready {
                simple_query: false,
                injected: false,
            }),
            frontend::SYNC => {
                self.unsynced = false;
                self.expect(Pending::Ready {
                    simple_query: false,
                    injected: false,
                });
            }
            frontend::PARSE => {
                self.unsynced = true;
                match parse_statement(frame) {
                    Some((name, stmt)) => {
                        // A new unnamed statement replaces a local one without a replay.
                        self.registry.forget_local(name);
                        self.expect(Pending::Parse {
                            name: Bytes::copy_from_slice(name),
                            stmt,
                            injected: None,
                        });
                    }
                    // Postgres will reject it; we cannot know what it would have named.
                    None => self.lose_tracking(),
                }
            }
            frontend::CLOSE => {
                self.unsynced = true;
                match Close::read(frame) {
                    Some(Close {
                        target: Target::Statement,
                        name,
                    }) => {
                        self.registry.forget_local(name);
                        self.expect(Pending::CloseStatement {
                            name: Bytes::copy_from_slice(name),
                        });
                    }
                    Some(Close {
                        target: Target::Portal,
                        ..
                    }) => {}
                    None => self.lose_tracking(),
                }
            }
            frontend::BIND | frontend::DESCRIBE | frontend::EXECUTE | frontend::FLUSH => {
                self.unsynced = true;
            }
            _ => {}
        }
    }

    /// A complete backend frame on its way to the client.
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
                if self.tracking_lost {
                    return;
                }
                match self.pop() {
                    Some(Pending::Ready { simple_query, .. }) => {
                        if simple_query {
                            // PostgreSQL drops the unnamed statement at every simple Query.
                            self.registry.remove(b"");
                        }
                    }
                    _ => self.lose_tracking(),
                }
            }
            backend::PARSE_COMPLETE => {
                if self.tracking_lost {
                    return;
                }
                match self.pop() {
                    Some(Pending::Parse {
                        name,
                        injected: Some(_),
                        ..
                    }) => self.registry.mark_upstream(&name),
                    Some(Pending::Parse { name, stmt, .. }) => self.registry.insert(name, stmt),
                    _ => self.lose_tracking(),
                }
            }
            backend::CLOSE_COMPLETE => {
                if self.tracking_lost {
                    return;
                }
                // A CloseComplete for a portal has nothing queued; only statements are.
                if matches!(self.pending.front(), Some(Pending::CloseStatement { .. }))
                    && let Some(Pending::CloseStatement { name }) = self.pop()
                {
                    self.registry.remove(&name);
                }
            }
            backend::ERROR_RESPONSE => {
                // After an error the server skips everything up to the next Sync, so the
                // queued Parse/Close operations ahead of it will never complete. A replayed
                // Parse that did not complete leaves its statement local again.
                while matches!(
                    self.pending.front(),
                    Some(Pending::Parse { .. } | Pending::CloseStatement { .. })
                ) {
                    if let Some(Pending::Parse {
                        name,
                        stmt,
                        injected: Some(_),
                    }) = self.pop()
                    {
                        self.registry.insert(name, stmt);
                    }
                }
            }
            _ => {}
        }
    }

    fn expect(&mut self, p: Pending) {
        if matches!(p, Pending::Ready { .. }) {
            self.awaiting_ready += 1;
        }
        if self.tracking_lost {
            return;
        }
        let bytes = match &p {
            Pending::Parse { stmt, .. } => stmt.query.len(),
            _ => 0,
        };
        if self.pending.len() >= MAX_PENDING || self.pending_bytes + bytes > MAX_PENDING_BYTES {
            self.lose_tracking();
            return;
        }
        self.pending_bytes += bytes;
        self.pending.push_back(p);
    }

    fn pop(&mut self) -> Option<Pending> {
        let p = self.pending.pop_front()?;
        if let Pending::Parse { stmt, .. } = &p {
            self.pending_bytes = self.pending_bytes.saturating_sub(stmt.query.len());
        }
        Some(p)
    }

    fn lose_tracking(&mut self) {
        self.tracking_lost = true;
        // pgmemo's own replays at the head still get their replies swallowed; everything
        // else is forgotten.
        let keep = self.pending.iter().take_while(|p| p.injected()).count();
        self.pending.truncate(keep);
        self.pending_bytes = 0;
        self.registry.mark_untracked();
    }

    /// Whether the backend frame `tag` answers a message pgmemo sent on its own (a replayed
    /// Parse, or the Sync after an eager replay): the relay swallows it after showing it to
    /// [`Self::on_backend`]. An error is swallowed only for an eager replay; a lazy replay's
    /// error stands where PostgreSQL would have failed the client's message.
    pub fn injected_reply(&self, tag: u8) -> bool {
        matches!(
            (tag, self.pending.front()),
            (
                backend::PARSE_COMPLETE,
                Some(Pending::Parse {
                    injected: Some(_),
                    ..
                }),
            ) | (
                backend::READY_FOR_QUERY,
                Some(Pending::Ready { injected: true, .. })
            ) | (
                backend::ERROR_RESPONSE,
                Some(Pending::Parse {
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
        mut stmt: Statement,
        frame: Bytes,
    ) -> Option<Bytes> {
        if name.is_empty() {
            stmt.local = Some(frame);
            self.registry.insert(Bytes::new(), stmt);
            return None;
        }
        let name = Bytes::copy_from_slice(name);
        self.registry.insert(name.clone(), stmt.clone());
        let mut replay = bytes::BytesMut::with_capacity(frame.len() + SYNC_FRAME.len());
        replay.extend_from_slice(&frame);
        replay.extend_from_slice(SYNC_FRAME);
        stmt.local = Some(frame);
        metrics::counter!(names::STATEMENT_REPLAYS, "kind" => "eager").increment(1);
        self.expect(Pending::Parse {
            name,
            stmt,
            injected: Some(Injected::Eager),
        });
        self.expect(Pending::Ready {
            simple_query: false,
            injected: true,
        });
        Some(replay.freeze())
    }

    /// The Parse to send upstream before the client frame `tag` (about to be forwarded), when
    /// that frame names a statement only pgmemo holds: a Bind or a statement Describe of it, or
    /// a Parse of the same name (which PostgreSQL must then reject as a duplicate).
    pub fn replay_for(&mut self, tag: u8, frame: &[u8]) -> Option<Bytes> {
        if self.tracking_lost {
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
        let stmt = self.registry.get(name)?.clone();
        let replay = stmt.local.clone()?;
        self.registry.mark_upstream(name);
        metrics::counter!(names::STATEMENT_REPLAYS, "kind" => "lazy").increment(1);
        self.expect(Pending::Parse {
            name: Bytes::copy_from_slice(name),
            stmt,
            injected: Some(Injected::Lazy),
        });
        Some(replay)
    }
}

/// The name and statement of a Parse frame; `None` when malformed.
pub fn parse_statement(frame: &[u8]) -> Option<(&[u8], Statement)> {
    let f = Parse::read(frame)?;
    Some((f.name, Statement::new(f.sql, f.param_types)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::response::frame;

    fn parse(name: &str, q: &str) -> Bytes {
        let mut b = Vec::new();
        b.extend_from_slice(name.as_bytes());
        b.push(0);
        b.extend_from_slice(q.as_bytes());
        b.push(0);
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(&23i32.to_be_bytes());
        frame(b'P', &b)
    }

    fn close_stmt(name: &str) -> Bytes {
        let mut b = vec![b'S'];
        b.extend_from_slice(name.as_bytes());
        b.push(0);
        frame(b'C', &b)
    }

    fn fe(s: &mut SessionState, f: &Bytes) {
        s.on_frontend(f[0], f);
    }

    fn be(s: &mut SessionState, tag: u8, body: &[u8]) {
        s.on_backend(tag, &frame(tag, body));
    }

    #[test]
    fn parse_complete_registers_and_close_removes() {
        let mut s = SessionState::default();
        fe(&mut s, &parse("s1", "select $1"));
        fe(&mut s, &frame(b'S', &[]));
        assert!(!s.is_idle());
        be(&mut s, b'1', &[]);
        be(&mut s, b'Z', b"I");
        assert!(s.is_idle());
        let st = s.registry.get(b"s1").unwrap();
        assert_eq!(st.param_oids().collect::<Vec<_>>(), vec![23]);
        fe(&mut s, &close_stmt("s1"));
        fe(&mut s, &frame(b'S', &[]));
        be(&mut s, b'3', &[]);
        be(&mut s, b'Z', b"I");
        assert!(s.registry.get(b"s1").is_none());
    }

    #[test]
    fn failed_parse_is_not_registered_and_group_is_skipped() {
        let mut s = SessionState::default();
        fe(&mut s, &parse("bad", "selec"));
        fe(&mut s, &parse("later", "select 1"));
        fe(&mut s, &frame(b'S', &[]));
        fe(&mut s, &parse("next", "select 2"));
        fe(&mut s, &frame(b'S', &[]));
        be(&mut s, b'E', b"SERROR\0\0");
        be(&mut s, b'Z', b"I");
        be(&mut s, b'1', &[]);
        be(&mut s, b'Z', b"I");
        assert!(s.registry.get(b"bad").is_none());
        assert!(s.registry.get(b"later").is_none());
        assert!(s.registry.get(b"next").is_some());
        assert!(!s.registry.overflowed());
    }

    #[test]
    fn simple_query_drops_unnamed_statement() {
        let mut s = SessionState::default();
        fe(&mut s, &parse("", "select 1"));
        fe(&mut s, &frame(b'S', &[]));
        be(&mut s, b'1', &[]);
        be(&mut s, b'Z', b"I");
        assert!(s.registry.get(b"").is_some());
        fe(&mut s, &frame(b'Q', b"select 2\0"));
        be(&mut s, b'Z', b"T");
        assert!(s.registry.get(b"").is_none());
        assert_eq!(s.txn, TxnStatus::InBlock);
        assert!(!s.is_idle());
    }

    #[test]
    fn large_parse_pipelines_lose_tracking_instead_of_holding_their_text() {
        let mut s = SessionState::default();
        let big = "x".repeat(512 * 1024);
        for _ in 0..(MAX_PENDING_BYTES / big.len() + 1) {
            fe(&mut s, &parse("", &big));
        }
        assert!(s.registry.overflowed());
        assert_eq!(s.pending.len(), 0);
        assert_eq!(s.pending_bytes, 0);
    }

    #[test]
    fn malformed_parse_loses_tracking_without_panicking() {
        let mut s = SessionState::default();
        s.on_frontend(b'P', &frame(b'P', b"x"));
        assert!(s.registry.overflowed());
        be(&mut s, b'1', &[]);
        be(&mut s, b'Z', b"E");
        assert_eq!(s.txn, TxnStatus::Failed);
    }
}
