//! Extended-protocol hits (DESIGN §2 "Extended protocol and pipelines"): a whole
//! `[Parse] Bind [Describe portal] Execute Sync` group at the head of the client buffer, seen
//! while nothing is outstanding upstream, is looked up under a key that also covers the
//! parameter types, values and formats. A hit answers every message of the group locally; a
//! Parse answered so is recorded in the registry for replay (see
//! [`SessionState::answered_locally`]). A miss is forwarded frame by frame and captured, with a
//! Describe of pgmemo's own after the Bind when the client sent none, so that the entry holds
//! the RowDescription for clients that do ask.

use std::sync::Arc;

use bytes::Bytes;

use super::group::{self, Group, Scan};
use super::{CacheSession, Hold, Looked, WaitResult};
use crate::planner::plan::Plan;
use crate::protocol::response::{BIND_COMPLETE, PARSE_BIND_COMPLETE, PORTAL_SUSPENDED};
use crate::session::registry::{MAX_STATEMENTS, Statement};
use crate::session::state::SessionState;

/// What the relay does with the frames at the head of the client buffer (the first is a
/// Parse or a Bind, and the session is idle).
pub enum GroupAction {
    /// Handle them one by one, as usual (a miss being captured, or nothing for the cache).
    Frames,
    /// They may be the start of an answerable group: wait for more bytes.
    Incomplete,
    /// A hit: drop the group's `len` bytes and send the client `head`, `body` and an idle
    /// ReadyForQuery; queue `replay` upstream if there is one (a named statement's Parse).
    Answer {
        head: &'static [u8],
        body: Bytes,
        /// Sent after `body`: PortalSuspended when a row limit cut the result short.
        tail: &'static [u8],
        len: usize,
        replay: Option<Bytes>,
    },
    /// Hold the group back (see [`Hold`]), then show it again.
    Hold(Hold),
}

impl CacheSession {
    /// Decides what happens to the extended group at the head of `buf`.
    pub fn on_group(
        &mut self,
        buf: &[u8],
        state: &mut SessionState,
        max_message: usize,
    ) -> GroupAction {
        let g = match group::scan(buf, max_message) {
            Scan::Group(g) => g,
            Scan::Incomplete => return GroupAction::Incomplete,
            Scan::Other => return GroupAction::Frames,
        };
        if let Some((body, plan)) = self.held.take_queued() {
            // Queued while held: answered now, whatever planning would say now.
            return self.answer_queued(&g, &plan, body, state);
        }
        // The statement and its parameter types: parsed in this group, or prepared before.
        let registered: Bytes;
        let (plan, param_types) = match g.parse {
            Some(p) => {
                if !self.may_parse_locally(p.name, state) {
                    return GroupAction::Frames;
                }
                match self.plan_for(p.sql) {
                    Some(plan) => (plan, p.param_types),
                    None => return GroupAction::Hold(Hold::Plan(Bytes::copy_from_slice(p.sql))),
                }
            }
            None => {
                let Some(stmt) = state.registry.get(g.statement) else {
                    // Unknown here: PostgreSQL reports it.
                    return GroupAction::Frames;
                };
                registered = stmt.param_types.clone();
                match self.statement_plan(g.statement, state) {
                    Ok(plan) => (plan, &registered[..]),
                    Err(Some(sql)) => return GroupAction::Hold(Hold::Plan(sql)),
                    Err(None) => return GroupAction::Frames,
                }
            }
        };
        match self.held.take_waited() {
            Some(WaitResult::Hit(entry)) => return self.answer(&g, &plan, &entry, state),
            Some(WaitResult::Error(error)) => {
                // PostgreSQL would have parsed and bound before the cancel hit the Execute.
                let replay = self.register_parse(&g, &plan, state);
                return GroupAction::Answer {
                    head: head(&g),
                    body: error,
                    tail: b"",
                    len: g.len,
                    replay,
                };
            }
            // The other session gave up: run it here, uncaptured.
            Some(WaitResult::RunOwn) => return GroupAction::Frames,
            // Taken above, before planning; answered the same way should it come here.
            Some(WaitResult::Queued(body, queued)) => {
                return self.answer_queued(&g, &queued, body, state);
            }
            Some(WaitResult::Shared(ready)) => self.held.set(super::resume::Resume::Shared(ready)),
            None => {}
        }
        if let Some(hold) =
            self.behind_hold(&plan, state, Some((param_types, g.bind_tail)), g.describe)
        {
            return GroupAction::Hold(hold);
        }
        if plan.read.is_ok() && group::params_may_read_clock(g.bind_tail) {
            let reason = crate::planner::bypass::BypassReason::ClockParameter;
            super::lookup::count_bypass(reason);
            self.shape_bypassed(&plan, reason);
            return GroupAction::Frames;
        }
        match self.lookup(&plan, state, Some((param_types, g.bind_tail))) {
            Looked::Hit(entry) => self.answer(&g, &plan, &entry, state),
            Looked::Wait(wait) => GroupAction::Hold(Hold::Wait(wait)),
            Looked::Forward => {
                // A miss being captured: the entry needs the RowDescription even if this
                // client did not ask for it.
                if self.capture.is_some() && !g.describe {
                    self.describe = super::resume::Describe::AfterBind;
                }
                GroupAction::Frames
            }
        }
    }

    /// Whether a Parse named `name` may be answered here: PostgreSQL would accept it (no
    /// statement of that name, from a Parse or SQL PREPARE, exists) and the registry is
    /// tracking and has room.
    fn may_parse_locally(&self, name: &[u8], state: &SessionState) -> bool {
        let registry = &state.registry;
        if registry.overflowed() || registry.len() >= MAX_STATEMENTS {
            return false;
        }
        if name.is_empty() {
            return true;
        }
        registry.get(name).is_none()
            && !self
                .tracker
                .sql_prepared
                .keys()
                .any(|k| k.as_bytes().eq_ignore_ascii_case(name))
    }

    /// The current plan of a prepared statement: the one from its Parse while the session
    /// context, catalog and rules are unchanged, else re-planned (`Err(Some(sql))`: compute
    /// it first) as PostgreSQL re-analyses a statement whose dependencies changed.
    pub(super) fn statement_plan(
        &mut self,
        name: &[u8],
        state: &mut SessionState,
    ) -> Result<Arc<Plan>, Option<Bytes>> {
        let plan = Arc::clone(state.registry.plan(name).ok_or(None)?);
        let current = plan.context_id == self.cx_id
            && plan.is_current(
                self.app.services.catalog.generation(),
                self.app.rules_generation(),
            );
        if current {
            return Ok(plan);
        }
        let sql = plan.sql.clone();
        let only_catalog_moved = plan.context_id == self.cx_id
            && plan.is_current(plan.catalog_generation(), self.app.rules_generation());
        let stale = only_catalog_moved.then_some(plan);
        match self.plan_for(&sql) {
            Some(fresh) => {
                state.registry.set_plan(name, Arc::clone(&fresh));
                Ok(fresh)
            }
            // A write goes upstream at once (a client pipelining many of them must see an
            // early error while it is still sending, as it would without pgmemo); the new
            // plan is computed meanwhile for the statement's next Bind.
            None => match stale.and_then(|plan| plan.stale_write()) {
                Some(stale) => {
                    self.background_plan = Some(sql);
                    Ok(Arc::new(stale))
                }
                None => Err(Some(sql)),
            },
        }
    }

    /// Answers the group from `entry`.
    fn answer(
        &mut self,
        g: &Group<'_>,
        plan: &Arc<Plan>,
        entry: &crate::cache::Entry,
        state: &mut SessionState,
    ) -> GroupAction {
        let replay = self.register_parse(g, plan, state);
        let limited = (g.max_rows > 0)
            .then(|| entry.first_rows(g.max_rows, g.describe))
            .flatten();
        let (body, tail) = match limited {
            Some(rows) => (rows, PORTAL_SUSPENDED),
            None if g.describe => (entry.frames.clone(), &b""[..]),
            None => (entry.rows(), &b""[..]),
        };
        GroupAction::Answer {
            head: head(g),
            body,
            tail,
            len: g.len,
            replay,
        }
    }

    /// Answers the group with a write-behind acknowledgement (its write is queued).
    fn answer_queued(
        &mut self,
        g: &Group<'_>,
        plan: &Arc<Plan>,
        body: Bytes,
        state: &mut SessionState,
    ) -> GroupAction {
        let replay = self.register_parse(g, plan, state);
        GroupAction::Answer {
            head: head(g),
            body,
            tail: b"",
            len: g.len,
            replay,
        }
    }

    /// The group's Parse succeeded as far as the client knows: record the statement (unless
    /// the same one is already there) and return its eager replay, if any. The unnamed
    /// portal is gone after the Sync, as in PostgreSQL.
    fn register_parse(
        &mut self,
        g: &Group<'_>,
        plan: &Arc<Plan>,
        state: &mut SessionState,
    ) -> Option<Bytes> {
        if !self.tracker.portals.is_empty() {
            self.tracker.portals.remove(&b""[..]);
        }
        let p = g.parse?;
        let same = state.registry.get(p.name).is_some_and(|s| {
            s.query == p.sql && s.param_types == p.param_types && s.plan.is_some()
        });
        if same {
            // Re-parsing the unnamed statement with the same text and types changes nothing
            // (upstream or local alike): no copy on this path.
            return None;
        }
        let stmt = Statement::new(p.sql, p.param_types, Some(Arc::clone(plan)));
        state.answered_locally(p.name, stmt, Bytes::copy_from_slice(p.frame))
    }
}

fn head(g: &Group<'_>) -> &'static [u8] {
    if g.parse.is_some() {
        PARSE_BIND_COMPLETE
    } else {
        BIND_COMPLETE
    }
}
