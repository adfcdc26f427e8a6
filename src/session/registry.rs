//! The session's prepared statements by name: one map holding, for each name, what the
//! client prepared (SQL text, parameter types, pgmemo's plan of it) and where PostgreSQL
//! stands on it. Write tracking reads the plan of the statement a Bind names as the client
//! sent it (a Bind may follow its Parse before the ParseComplete); the cache reads what
//! PostgreSQL holds (only while the session is idle, when nothing is on its way). Both are
//! this one entry through its life:
//!
//! - a forwarded Parse creates it as *sent* (a named one only if the name is free: PostgreSQL
//!   rejects a duplicate and keeps the old statement); its ParseComplete confirms it, its
//!   error (or the error that skips it) removes it;
//! - a Parse pgmemo answered from the cache makes it *local* (the Parse frame kept, replayed
//!   upstream before the first forwarded message that names it);
//! - a forwarded Close, or a simple Query for the unnamed statement, marks it *closing*: no
//!   longer the client's to use, removed at its CloseComplete (or the Query's ReadyForQuery),
//!   unless a new Parse of the name replaced it meanwhile; an error that skips the Close
//!   leaves it as it was;
//! - SQL `DEALLOCATE` and `DISCARD ALL` remove named statements when they complete.
//!
//! Bounded in entries and bytes: past a bound a name is not followed (write tracking treats
//! it as unknown, conservatively) and the registry says so (`overflowed`): the cache then
//! answers no Parse itself.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::planner::plan::Plan;

/// Most statements tracked per session (the unnamed one always fits: it replaces itself).
pub const MAX_STATEMENTS: usize = 10_000;
/// Most bytes held per session: names, SQL text, parameter types and plans.
pub const MAX_STATEMENT_BYTES: usize = 32 * 1024 * 1024;
/// Bookkeeping of one entry (the map slot, allocator overhead).
const ENTRY_OVERHEAD: usize = 64;

#[derive(Debug, Clone)]
pub struct Statement {
    /// SQL text as sent in the Parse message (raw bytes).
    pub query: Bytes,
    /// Parameter type OIDs from the Parse message as sent (big-endian, 4 bytes each; 0 =
    /// unspecified): fed to cache keys as they are.
    pub param_types: Bytes,
    /// pgmemo's plan of it (`None`: the Parse was forwarded without one).
    pub plan: Option<Arc<Plan>>,
}

impl Statement {
    /// A statement as a Parse message gave it.
    pub fn new(query: &[u8], param_types: &[u8], plan: Option<Arc<Plan>>) -> Self {
        Self {
            query: Bytes::copy_from_slice(query),
            param_types: Bytes::copy_from_slice(param_types),
            plan,
        }
    }

    /// The parameter type OIDs.
    pub fn param_oids(&self) -> impl Iterator<Item = u32> + '_ {
        self.param_types
            .chunks_exact(4)
            .filter_map(|c| <[u8; 4]>::try_from(c).ok())
            .map(u32::from_be_bytes)
    }
}

/// What an entry holds: its name, text, parameter types, plan and a frame kept to replay.
fn weight(name: &[u8], stmt: &Statement, held: &Held) -> usize {
    let frame = match held {
        Held::Local(f) | Held::Replaying(_, f) => f.len(),
        Held::Sent(_) | Held::Upstream => 0,
    };
    name.len()
        + stmt.query.len()
        + stmt.param_types.len()
        + stmt.plan.as_deref().map_or(0, Plan::weight)
        + frame
        + ENTRY_OVERHEAD
}

/// Where PostgreSQL stands on a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Held {
    /// The client's Parse (numbered `.0`, see [`Registry::sent`]) is on its way, unanswered.
    Sent(u64),
    /// pgmemo's own replay of a statement it answered (numbered `.0`) is on its way; the
    /// frame is kept in case it fails.
    Replaying(u64, Bytes),
    /// PostgreSQL holds it.
    Upstream,
    /// Only pgmemo holds it: the Parse frame to replay.
    Local(Bytes),
}

impl Held {
    /// The Parse on its way for it, if one is.
    fn parse(&self) -> Option<u64> {
        match self {
            Held::Sent(s) | Held::Replaying(s, _) => Some(*s),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Entry {
    stmt: Statement,
    held: Held,
    /// A Close (or, unnamed, a simple Query) that destroys it is on its way.
    closing: bool,
    weight: usize,
}

#[derive(Debug, Default)]
pub struct Registry {
    map: HashMap<Bytes, Entry>,
    bytes: usize,
    overflowed: bool,
    /// Numbers Parse messages, so a reply confirms or undoes only what its own Parse did.
    next_seq: u64,
}

impl Registry {
    /// The statement of that name the client may use (not being closed).
    pub fn get(&self, name: &[u8]) -> Option<&Statement> {
        self.map.get(name).filter(|e| !e.closing).map(|e| &e.stmt)
    }

    /// pgmemo's plan of the statement of that name.
    pub fn plan(&self, name: &[u8]) -> Option<&Arc<Plan>> {
        self.get(name)?.plan.as_ref()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// True once a bound was exceeded or a reply could not be matched: entries may be
    /// missing, so the cache must not answer a Parse itself for the rest of the session.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    pub fn mark_untracked(&mut self) {
        self.overflowed = true;
    }

    /// The session lost track of its replies: what they confirmed or removed may have been
    /// applied to the wrong names, so no plan here is trusted (executing any of these
    /// statements is an unknown write) and the cache answers no Parse itself any more.
    pub fn lost(&mut self) {
        self.overflowed = true;
        for e in self.map.values_mut() {
            e.stmt.plan = None;
        }
        self.reweigh_all();
    }

    /// A client's Parse of `stmt` as `name` is forwarded; returns its number. `settled`:
    /// every message sent before it is answered, so this registry is exact.
    ///
    /// The unnamed statement is replaced at once (PostgreSQL drops it as the Parse starts),
    /// and so is a name that is free or that only pgmemo holds. A name PostgreSQL holds
    /// stays as it is when settled (PostgreSQL rejects the Parse as a duplicate, 42P05).
    /// Otherwise which statement a Bind of the name will run depends on replies not yet
    /// seen (a Close or DEALLOCATE that an error may skip, a Parse that may fail): until the
    /// ParseComplete says, the name has no plan, and executing it is an unknown write.
    pub fn sent(&mut self, name: Bytes, mut stmt: Statement, settled: bool) -> u64 {
        let seq = self.take_seq();
        let kept = self
            .map
            .get(&name)
            .filter(|e| !name.is_empty() && !matches!(e.held, Held::Local(_)));
        match kept {
            None => self.insert(name, stmt, Held::Sent(seq)),
            Some(e) if e.closing => {
                stmt.plan = None;
                self.insert(name, stmt, Held::Sent(seq));
            }
            Some(_) if settled => {}
            Some(_) => self.update(&name, |e| e.stmt.plan = None),
        }
        seq
    }

    /// The ParseComplete of Parse `seq`: PostgreSQL holds `stmt` (with its plan) as `name`,
    /// whatever was recorded of that name before, unless a later Parse of the name is on
    /// its way (it replaced this one, as PostgreSQL does, and its own reply decides).
    pub fn confirmed(&mut self, name: Bytes, seq: u64, stmt: Statement) {
        match self.map.get(&name).map(|e| e.held.parse()) {
            Some(Some(s)) if s == seq => self.update(&name, |e| {
                e.held = Held::Upstream;
                e.stmt = stmt;
            }),
            Some(Some(_)) => {}
            _ => self.insert(name, stmt, Held::Upstream),
        }
    }

    /// Parse `seq` failed (or was skipped after an error): what it created is gone, and a
    /// statement pgmemo replayed is local again.
    pub fn failed(&mut self, name: &[u8], seq: u64) {
        let Some(e) = self.map.get_mut(name) else {
            return;
        };
        match &e.held {
            Held::Sent(s) if *s == seq => self.remove(name),
            // The same frame stays held: the weight does not change.
            Held::Replaying(s, frame) if *s == seq => e.held = Held::Local(frame.clone()),
            _ => {}
        }
    }

    /// A Parse pgmemo answered from the cache (its `frame`): the statement is the client's
    /// now. With `replay`, the frame goes upstream at once (numbered by the return value);
    /// without, it is kept until a forwarded message names the statement.
    pub fn answered(&mut self, name: Bytes, stmt: Statement, frame: Bytes, replay: bool) -> u64 {
        let seq = self.take_seq();
        let held = if replay {
            Held::Replaying(seq, frame)
        } else {
            Held::Local(frame)
        };
        self.insert(name, stmt, held);
        seq
    }

    fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        seq
    }

    /// The Parse to replay upstream for `name` if only pgmemo holds it: the statement is
    /// then on its way (numbered by the returned `u64`).
    pub fn replay(&mut self, name: &[u8]) -> Option<(Statement, Bytes, u64)> {
        let seq = self.take_seq();
        let e = self.map.get_mut(name).filter(|e| !e.closing)?;
        let Held::Local(frame) = &e.held else {
            return None;
        };
        let frame = frame.clone();
        e.held = Held::Replaying(seq, frame.clone());
        Some((e.stmt.clone(), frame, seq))
    }

    /// A Close of `name` (or a simple Query, for the unnamed statement) is forwarded. One
    /// only pgmemo holds is simply forgotten (it never was upstream).
    pub fn closing(&mut self, name: &[u8]) {
        let Some(e) = self.map.get_mut(name) else {
            return;
        };
        if matches!(e.held, Held::Local(_)) {
            self.remove(name);
        } else {
            e.closing = true;
        }
    }

    /// The Close (or Query) answered: removed, unless a Parse replaced it meanwhile.
    pub fn closed(&mut self, name: &[u8]) {
        if self.map.get(name).is_some_and(|e| e.closing) {
            self.remove(name);
        }
    }

    /// The Close was skipped after an error: the statement stays.
    pub fn close_skipped(&mut self, name: &[u8]) {
        if let Some(e) = self.map.get_mut(name) {
            e.closing = false;
        }
    }

    /// Write tracking re-planned the statement (its search_path, role or catalog moved).
    pub fn set_plan(&mut self, name: &[u8], plan: Arc<Plan>) {
        self.update(name, |e| e.stmt.plan = Some(plan));
    }

    /// SQL `DEALLOCATE name` completed.
    pub fn deallocated(&mut self, name: &[u8]) {
        if !name.is_empty() {
            self.remove(name);
        }
    }

    /// SQL `DEALLOCATE ALL` or `DISCARD ALL` completed: every named statement is gone (the
    /// unnamed one is not PostgreSQL's to drop there).
    pub fn deallocated_all(&mut self) {
        let unnamed = self.map.remove(&b""[..]);
        self.map.clear();
        self.bytes = 0;
        if let Some(e) = unnamed {
            self.bytes = e.weight;
            self.map.insert(Bytes::new(), e);
        }
    }

    /// Changes the entry of `name` in place. Past the byte bound it keeps no plan (the
    /// statement stays: PostgreSQL holds it; its executions are unknown writes).
    fn update(&mut self, name: &[u8], f: impl FnOnce(&mut Entry)) {
        let Some(e) = self.map.get_mut(name) else {
            return;
        };
        f(e);
        let others = self.bytes.saturating_sub(e.weight);
        let mut w = weight(name, &e.stmt, &e.held);
        if others + w > MAX_STATEMENT_BYTES && e.stmt.plan.is_some() {
            e.stmt.plan = None;
            self.overflowed = true;
            w = weight(name, &e.stmt, &e.held);
        }
        e.weight = w;
        self.bytes = others + w;
    }

    fn reweigh_all(&mut self) {
        let mut total = 0;
        for (name, e) in self.map.iter_mut() {
            e.weight = weight(name, &e.stmt, &e.held);
            total += e.weight;
        }
        self.bytes = total;
    }

    fn insert(&mut self, name: Bytes, stmt: Statement, held: Held) {
        self.remove(&name);
        let weight = weight(&name, &stmt, &held);
        let room = self.map.len() < MAX_STATEMENTS || name.is_empty();
        if !room || self.bytes + weight > MAX_STATEMENT_BYTES {
            self.overflowed = true;
            return;
        }
        self.bytes += weight;
        let e = Entry {
            stmt,
            held,
            closing: false,
            weight,
        };
        self.map.insert(name, e);
    }

    fn remove(&mut self, name: &[u8]) {
        if let Some(e) = self.map.remove(name) {
            self.bytes = self.bytes.saturating_sub(e.weight);
        }
    }
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
