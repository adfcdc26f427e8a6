//! The one in-order queue of what a session awaits from its upstream backend: every message
//! forwarded (or sent by pgmemo on the client's behalf) that PostgreSQL will answer with a
//! reply the session must attribute puts one entry here, and every such reply takes the
//! entry at the head. The prepared-statement registry (ParseComplete, CloseComplete) and
//! write tracking (CommandComplete and friends, ReadyForQuery) both read this queue, so a
//! reply is matched once and the two can never disagree about which message it answers.
//!
//! Bounded in entries and in the SQL text it holds. Past a bound, or when a reply does not
//! match its entry, the queue is *lost*: the entries are dropped (pgmemo's own replays at the
//! head are kept, their replies are still swallowed), the registry stops being trusted, and
//! every transaction that ends while lost is bumped with the epoch. Nothing else is
//! outstanding at the next idle ReadyForQuery, so the queue lines up again from there.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use super::registry::Statement;
use crate::cache::{Stripe, Tag};
use crate::planner::plan::Plan;

/// Most replies awaited at once; a client pipelining more than this loses tracking (the
/// relay itself is unaffected).
pub const MAX_AWAITED: usize = 16_384;
/// Most SQL text held for Parse messages awaiting their ParseComplete. PostgreSQL may hold
/// ParseCompletes back until its send buffer fills, so a pipeline of large Parses would
/// otherwise pin all of their text here.
pub const MAX_AWAITED_BYTES: usize = 8 * 1024 * 1024;

/// A Parse pgmemo sent upstream on its own (the client had its ParseComplete from the cache).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injected {
    /// Sent with its own Sync right after the hit: its replies are all swallowed.
    Eager,
    /// Sent just before the client's message that names it: its ParseComplete is swallowed,
    /// its error is the client's (PostgreSQL would have failed that message the same way).
    Lazy,
}

/// What one awaited reply answers.
#[derive(Debug)]
pub enum Awaited {
    /// ParseComplete of a Parse (numbered `seq` by the registry).
    Parse {
        name: Bytes,
        seq: u64,
        stmt: Statement,
        injected: Option<Injected>,
    },
    /// CloseComplete of a statement's Close (a portal's Close has no entry: nothing follows
    /// a portal by its reply).
    CloseStatement { name: Bytes },
    /// CommandComplete, EmptyQueryResponse or PortalSuspended of a statement that ran.
    Completion(Completion),
    /// ReadyForQuery.
    Ready(ReadyFor),
}

/// The statement a completion belongs to.
#[derive(Debug)]
pub enum Completion {
    /// Statement `index` of `plan` (a simple Query's statement, or an Execute's).
    /// `context_seq`: the write tracker's context count when it was sent, or `None` if the
    /// session's context was unknown then; its write tags are trusted only if the context
    /// has not moved since.
    Stmt {
        plan: Arc<Plan>,
        index: usize,
        context_seq: Option<u64>,
        /// The rows this execution writes, known by key (the statement's row pin resolved
        /// with its literals or Bind parameters): its target is bumped by row.
        rows: Option<Arc<[(Tag, Stripe)]>>,
    },
    /// An Execute of a portal pgmemo cannot attribute.
    Unknown,
    /// The EmptyQueryResponse of a text with no statement (a Query or Parse of only
    /// comments or whitespace, as pool pings send): nothing ran.
    Empty,
}

/// What a ReadyForQuery ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyFor {
    /// A simple Query (PostgreSQL drops the unnamed statement at each).
    Query,
    /// An extended group's Sync.
    Sync,
    /// A FunctionCall: the function ran (by OID: effects and settings changes pgmemo cannot
    /// see) in the transaction this frame reports on.
    FunctionCall,
    /// The Sync pgmemo sent behind an eager replay: swallowed.
    Injected,
}

impl Awaited {
    fn injected(&self) -> bool {
        matches!(
            self,
            Awaited::Parse {
                injected: Some(_),
                ..
            } | Awaited::Ready(ReadyFor::Injected)
        )
    }

    /// What a Parse entry holds of the client's bytes: name, text and parameter types
    /// (a Parse may carry 65,535 of them).
    fn bytes(&self) -> usize {
        match self {
            Awaited::Parse { name, stmt, .. } => {
                name.len() + stmt.query.len() + stmt.param_types.len()
            }
            _ => 0,
        }
    }
}

#[derive(Debug, Default)]
pub struct Replies {
    queue: VecDeque<Awaited>,
    /// SQL bytes held by queued Parse entries.
    bytes: usize,
    lost: bool,
    /// Times the queue was lost (wrapping): tells a reader that kept the last count it saw
    /// that tracking broke since.
    losses: u64,
}

impl Replies {
    /// Queues `a` behind everything awaited; past a bound the queue is lost instead.
    pub fn push(&mut self, a: Awaited) {
        let bytes = a.bytes();
        if self.queue.len() >= MAX_AWAITED || self.bytes + bytes > MAX_AWAITED_BYTES {
            self.lose();
            return;
        }
        self.bytes += bytes;
        self.queue.push_back(a);
    }

    pub fn front(&self) -> Option<&Awaited> {
        self.queue.front()
    }

    pub fn pop(&mut self) -> Option<Awaited> {
        let a = self.queue.pop_front()?;
        self.bytes = self.bytes.saturating_sub(a.bytes());
        Some(a)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Awaited> {
        self.queue.iter()
    }

    pub fn is_lost(&self) -> bool {
        self.lost
    }

    pub fn losses(&self) -> u64 {
        self.losses
    }

    /// Replies no longer line up with entries: all but pgmemo's own replays at the head are
    /// forgotten (their replies must still be swallowed), and those forget their plans: what
    /// a reply confirms while lost may belong to another message.
    pub fn lose(&mut self) {
        self.lost = true;
        self.losses = self.losses.wrapping_add(1);
        let keep = self.queue.iter().take_while(|a| a.injected()).count();
        self.queue.truncate(keep);
        for a in &mut self.queue {
            if let Awaited::Parse { stmt, .. } = a {
                stmt.plan = None;
            }
        }
        self.bytes = self.queue.iter().map(Awaited::bytes).sum();
    }

    /// Removes the ReadyForQuery entries of Syncs queued right behind the head entry (the
    /// statement now reading COPY data); returns how many.
    pub fn drop_syncs_behind_head(&mut self) -> usize {
        let n = self
            .queue
            .iter()
            .skip(1)
            .take_while(|a| matches!(a, Awaited::Ready(ReadyFor::Sync)))
            .count();
        if n > 0 {
            self.queue.drain(1..1 + n);
        }
        n
    }

    /// Nothing is awaited: every message sent so far is answered, and the registry is exact.
    pub fn settled(&self) -> bool {
        self.queue.is_empty() && !self.lost
    }

    /// Nothing is outstanding upstream: whatever is queued can be answered by nothing, and
    /// the next reply answers the next message sent.
    pub fn resync(&mut self) {
        self.queue.clear();
        self.bytes = 0;
        self.lost = false;
    }

    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    #[cfg(test)]
    pub fn held_bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(injected: Option<Injected>, len: usize) -> Awaited {
        Awaited::Parse {
            name: Bytes::new(),
            seq: 0,
            stmt: Statement::new(&vec![b'x'; len], &[], None),
            injected,
        }
    }

    #[test]
    fn a_loss_keeps_only_the_own_replays_at_the_head() {
        let mut r = Replies::default();
        r.push(parse(Some(Injected::Eager), 10));
        r.push(Awaited::Ready(ReadyFor::Injected));
        r.push(parse(None, 20));
        r.push(parse(Some(Injected::Lazy), 30));
        r.push(Awaited::Completion(Completion::Unknown));
        assert_eq!(
            r.held_bytes(),
            60,
            "text bytes (the test's names and types are empty)"
        );
        r.lose();
        assert!(r.is_lost());
        assert_eq!(r.queued(), 2);
        assert_eq!(r.held_bytes(), 10);
        assert_eq!(r.losses(), 1);
        r.resync();
        assert!(!r.is_lost());
        assert_eq!(r.queued(), 0);
        assert_eq!(r.losses(), 1, "a reader still sees that tracking broke");
    }

    #[test]
    fn bounded_in_entries_and_bytes() {
        let mut r = Replies::default();
        for _ in 0..MAX_AWAITED {
            r.push(Awaited::Completion(Completion::Unknown));
        }
        assert!(!r.is_lost());
        r.push(Awaited::Ready(ReadyFor::Sync));
        assert!(r.is_lost());
        assert_eq!(r.queued(), 0);

        let mut r = Replies::default();
        r.push(parse(None, MAX_AWAITED_BYTES / 2));
        r.push(parse(None, MAX_AWAITED_BYTES / 2));
        assert!(!r.is_lost());
        r.push(parse(None, 1));
        assert!(r.is_lost());
        assert_eq!(r.held_bytes(), 0);
    }
}
