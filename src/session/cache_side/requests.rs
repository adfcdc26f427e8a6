//! Client frames as the cache session sees them before they are forwarded: a Query answered
//! from the cache, held for a plan or a wait, or forwarded with its completions expected in
//! order; Parse, Bind, Execute, Close and Sync tracked for the prepared statements and
//! portals whose writes must be seen.

use super::*;
use crate::planner::plan::Bound;

impl CacheSession {
    /// A complete client frame the relay is about to forward.
    pub fn on_client_frame(
        &mut self,
        tag: u8,
        frame: &[u8],
        state: &mut SessionState,
    ) -> FrameAction {
        if tag != frontend::QUERY {
            // A wait's result belongs to the frame held for it (a Query takes it below, a
            // group in `on_group`); anything forwarded instead makes it stale.
            self.held.drop_waits();
        }
        match tag {
            frontend::QUERY => self.on_query(frame, state),
            frontend::PARSE => self.on_parse(frame),
            frontend::BIND => self.on_bind(frame, state),
            frontend::EXECUTE => {
                let portal = Execute::read(frame).map_or(&b""[..], |e| e.portal);
                let c = match self.tracker.portals.get(portal) {
                    Some(Some(p)) if p.plan.stmts.is_empty() => Completion::Empty,
                    Some(Some(p)) => Completion::Stmt {
                        plan: Arc::clone(&p.plan),
                        index: 0,
                        context_seq: self.tracker.context_now(),
                        rows: p.rows.clone(),
                    },
                    _ => Completion::Unknown,
                };
                state.expect_completion(c);
                FrameAction::Forward
            }
            frontend::CLOSE => {
                self.on_close(frame);
                FrameAction::Forward
            }
            frontend::SYNC => match self.pipeline_through(state) {
                // Write-through's re-runs, right behind the write (see `pipelined`).
                Some(reruns) => FrameAction::ForwardThen(reruns),
                None => FrameAction::Forward,
            },
            frontend::FUNCTION_CALL => {
                // Runs a function by OID: effects and settings changes pgmemo cannot see
                // (the bump waits for its ReadyForQuery, see `on_ready`).
                self.fingerprint.taint("FunctionCall message");
                self.probe.needed = true;
                FrameAction::Forward
            }
            _ => FrameAction::Forward,
        }
    }

    /// A simple Query: answered from the cache, held (plan, wait), or forwarded with its
    /// statements' completions expected in order.
    pub(super) fn on_query(&mut self, frame: &[u8], state: &mut SessionState) -> FrameAction {
        let sql = query_text(frame);
        // The text test first: it fails at the first letter of nearly every Query, so the
        // hit path pays no registry lookup for it.
        if let Some(inner) = crate::session::console::explain_cache(sql)
            && state.is_idle()
            && state.registry.get(b"").is_none()
        {
            return self.explain_cache(inner, state);
        }
        if let Some((answer, _)) = self.held.take_queued() {
            return FrameAction::Answer(answer);
        }
        let run_own = match self.held.take_waited() {
            Some(WaitResult::Hit(entry)) => {
                return FrameAction::Answer(entry.frames.clone());
            }
            Some(WaitResult::Error(answer) | WaitResult::Queued(answer, _)) => {
                return FrameAction::Answer(answer);
            }
            Some(WaitResult::Shared(ready)) => {
                self.held.set(super::resume::Resume::Shared(ready));
                false
            }
            Some(WaitResult::RunOwn) => true,
            None => false,
        };
        if let Some(hold) = self.side.hold(&self.app, sql) {
            return FrameAction::Hold(hold);
        }
        let Some(plan) = self.plan_for(sql) else {
            return FrameAction::Hold(Hold::Plan(Bytes::copy_from_slice(sql)));
        };
        if !run_own && let Some(hold) = self.behind_hold(&plan, state, None, false) {
            return FrameAction::Hold(hold);
        }
        if !run_own {
            match self.lookup(&plan, state, None) {
                Looked::Hit(entry) => return FrameAction::Answer(entry.frames.clone()),
                Looked::Wait(wait) => return FrameAction::Hold(Hold::Wait(wait)),
                Looked::Forward => {}
            }
        }
        // PostgreSQL drops the unnamed portal at every simple Query (the unnamed statement
        // too: the session state marks it as it forwards the Query).
        self.tracker.portals.remove(&b""[..]);
        let context_seq = self.tracker.context_now();
        if plan.stmts.is_empty() {
            // Only comments or whitespace: PostgreSQL answers EmptyQueryResponse.
            state.expect_completion(Completion::Empty);
        }
        for index in 0..plan.stmts.len() {
            let rows = self.written_rows(&plan, index, None);
            state.expect_completion(Completion::Stmt {
                plan: Arc::clone(&plan),
                index,
                context_seq,
                rows,
            });
        }
        match self.pipeline_through(state) {
            Some(reruns) => FrameAction::ForwardThen(reruns),
            None => FrameAction::Forward,
        }
    }

    /// A Parse: forwarded with its statement's plan (the registry keeps it under its name).
    pub(super) fn on_parse(&mut self, frame: &[u8]) -> FrameAction {
        let Some(Parse { sql, .. }) = Parse::read(frame) else {
            return FrameAction::Forward;
        };
        if let Some(hold) = self.side.hold(&self.app, sql) {
            return FrameAction::Hold(hold);
        }
        let Some(plan) = self.plan_for(sql) else {
            return FrameAction::Hold(Hold::Plan(Bytes::copy_from_slice(sql)));
        };
        FrameAction::ForwardParse(plan)
    }

    /// A Bind: the portal's plan (re-planned for a changed search_path or role), and
    /// pgmemo's own Describe behind it when a missed group's entry needs one.
    pub(super) fn on_bind(&mut self, frame: &[u8], state: &mut SessionState) -> FrameAction {
        if let Some(Bind {
            portal,
            statement: stmt,
            tail,
        }) = Bind::read(frame)
        {
            // A statement parsed under another search_path or role: PostgreSQL
            // re-parses it for the current one, and so does pgmemo.
            let portal_value = match self.statement_plan(stmt, state) {
                Ok(plan) => {
                    let types = state.registry.get(stmt).map(|s| s.param_types.clone());
                    let bound = types.as_deref().map(|types| Bound { types, tail });
                    let rows = bound.and_then(|b| self.written_rows(&plan, 0, Some(b)));
                    Some(tracker::Portal { plan, rows })
                }
                Err(Some(sql)) => return FrameAction::Hold(Hold::Plan(sql)),
                Err(None) => None,
            };
            self.tracker
                .portals
                .insert(Bytes::copy_from_slice(portal), portal_value);
        }
        if self.describe == resume::Describe::AfterBind {
            self.describe = resume::Describe::StripReply;
            return FrameAction::ForwardThen(Bytes::from_static(
                crate::protocol::frontend::DESCRIBE_UNNAMED_PORTAL,
            ));
        }
        FrameAction::Forward
    }

    /// A Close of a portal: forgotten (a statement's Close is the registry's).
    pub(super) fn on_close(&mut self, frame: &[u8]) {
        if let Some(Close {
            target: Target::Portal,
            name,
        }) = Close::read(frame)
        {
            self.tracker.portals.remove(name);
        }
    }
}
