//! Write tracking for I2: which statement each upstream completion belongs to, what the open
//! transaction has written, and the bump at the exact frame that acknowledges the commit —
//! the ReadyForQuery that ends an implicit transaction, or the CommandComplete of COMMIT /
//! COMMIT AND CHAIN / COMMIT PREPARED — done before that frame is relayed. Writes in a block
//! are kept across ROLLBACK TO SAVEPOINT (conservative) and dropped on ROLLBACK; PREPARE
//! TRANSACTION parks them under the gid. Which statement a completion belongs to is the
//! session's one reply queue ([`crate::session::replies`]); a session that loses track of it
//! (its bound, an unexpected reply) bumps the epoch when its transaction ends and re-reads
//! its settings.

use std::sync::Arc;

use bytes::Bytes;

use super::CacheSession;
use crate::cache::rows::KeyType;
use crate::cache::{EpochCause, Stripe, Tag};
use crate::invalidation::{Source, Written};
use crate::planner::plan::{Plan, StmtPlan};
use crate::protocol::fields::Reader;
use crate::session::replies::{Awaited, Completion, ReadyFor, Replies};
use crate::session::state::SessionState;
use crate::sql::{Class, DiscardKind, SessionChange, TxnControl};

pub use super::named::MAX_NAMED;
use super::named::Named;

/// A bound portal: its statement's plan, and the rows it writes when they are known by key.
#[derive(Debug, Clone)]
pub struct Portal {
    pub plan: Arc<Plan>,
    pub rows: Option<Arc<[(Tag, Stripe)]>>,
}

#[derive(Debug, Default)]
pub struct Tracker {
    /// Written by the open transaction (explicit block or implicit one).
    pub txn: Written,
    /// DDL ran in the open transaction: catalog memos drop at commit.
    pub txn_ddl: bool,
    /// The oldest catalog generation the open transaction's bumped tags were resolved under
    /// (see `commit_txn`).
    pub txn_generation: Option<u64>,
    /// [`Replies::losses`] when last seen: a loss since is an unknown write and unknown
    /// settings (see [`CacheSession::note_losses`]).
    pub seen_losses: u64,
    /// Portals by name → the plan of the statement bound (statements are the session
    /// registry's). Bounded in entries and bytes: a name not followed is unknown, and
    /// executing it bumps the epoch.
    pub portals: Named<Bytes, Option<Portal>>,
    /// SQL `PREPARE name AS ...`: the effects of the prepared statement, and the id of the
    /// context they were resolved in.
    pub sql_prepared: Named<String, (StmtPlan, u64)>,
    /// Counts completed statements that may have moved the session's name-resolution context
    /// (search_path, role, temporary schema): a statement sent before such a one completed
    /// was planned for a context that may no longer hold when it runs.
    pub context_seq: u64,
    /// Such a statement completed and no settings probe has re-read the context since:
    /// plans made now resolve names in a context that may be wrong.
    pub context_unknown: bool,
}

/// The name of the setting PostgreSQL changes for a `SET` of `name`: each dotted part is an
/// identifier, truncated to `NAMEDATALEN - 1` bytes on a character boundary. Holding that
/// also bounds what a session keeps per name, whatever the client sent.
fn setting_name(name: &str) -> String {
    const MAX_IDENTIFIER_BYTES: usize = 63;
    let part = |p: &str| {
        let mut end = p.len().min(MAX_IDENTIFIER_BYTES);
        while !p.is_char_boundary(end) {
            end -= 1;
        }
        p.get(..end).unwrap_or_default().to_owned()
    };
    name.split('.').map(part).collect::<Vec<_>>().join(".")
}

impl Tracker {
    /// What an expected statement records of the context its plan was made for.
    pub fn context_now(&self) -> Option<u64> {
        (!self.context_unknown).then_some(self.context_seq)
    }

    /// Everything that may have been written and not bumped (the session is ending), with
    /// `replies` still awaited.
    pub fn unsettled(&self, replies: &Replies) -> Written {
        let mut w = self.txn.clone();
        if replies.losses() != self.seen_losses || replies.is_lost() {
            w.merge(&[], Some(EpochCause::Untracked));
        }
        for a in replies.iter() {
            match a {
                Awaited::Completion(Completion::Stmt { plan, index, .. }) => {
                    if let Some(s) = plan.stmts.get(*index) {
                        w.merge(&s.written.tags, s.written.epoch);
                        w.merge_through(&s.written.through);
                    }
                }
                Awaited::Completion(Completion::Unknown) => {
                    w.merge(&[], Some(EpochCause::Untracked))
                }
                Awaited::Completion(Completion::Empty) => {}
                Awaited::Ready(ReadyFor::FunctionCall) => {
                    w.merge(&[], Some(EpochCause::SideEffects))
                }
                _ => {}
            }
        }
        w
    }
}

/// Whether a completed statement may have moved what names resolve against: the search_path,
/// the current role, the temporary schema, or anything pgmemo cannot model in SQL (a
/// set_config call, SQL EXECUTE, DO, CALL). Other settings change results, not name
/// resolution. A user function or trigger run by an ordinary statement is not counted (see
/// the README: every write after one in a block would otherwise flush the whole cache).
fn moves_context(info: &crate::sql::StatementInfo) -> bool {
    if info.taints_session {
        return true;
    }
    if info.functions.iter().any(|f| f.name == "set_config") {
        return true;
    }
    match &info.class {
        // A ROLLBACK can undo a SET of the search_path, but only one that already moved the
        // context: every statement sent after that is untrusted already.
        Class::Execute { .. } => true,
        Class::SessionChange(change) => match change {
            SessionChange::Set { name, .. } | SessionChange::Reset { name: Some(name) } => {
                matches!(
                    name.as_str(),
                    "search_path" | "role" | "session_authorization"
                )
            }
            SessionChange::Prepare { .. } | SessionChange::Deallocate { .. } => false,
            _ => true,
        },
        _ => false,
    }
}

/// The command tag of a CommandComplete frame.
fn command_tag(frame: &[u8]) -> &[u8] {
    Reader::body(frame).cstr().unwrap_or_default()
}

impl CacheSession {
    /// A statement completed (CommandComplete, EmptyQueryResponse, PortalSuspended).
    pub(super) fn on_completion(&mut self, frame: &[u8], state: &mut SessionState) {
        let next = state.take_completion();
        self.note_losses(state);
        match next {
            Some(Completion::Stmt {
                plan,
                index,
                context_seq,
                rows,
            }) => {
                // Planned for the context it runs in: its write tags name what it wrote.
                let planned_here =
                    context_seq == Some(self.tracker.context_seq) && plan.context_id == self.cx_id;
                if let Some(b) = plan.stmts.get(index).and_then(|s| s.behind.as_ref())
                    && crate::protocol::tags::backend::COMMAND_COMPLETE
                        == frame.first().copied().unwrap_or(0)
                {
                    // This shape works on PostgreSQL: later executions may be queued.
                    b.validated
                        .store(true, std::sync::atomic::Ordering::Release);
                }
                self.apply_statement(&plan, index, rows.as_deref(), frame, planned_here, state);
            }
            Some(Completion::Unknown) => {
                // A portal of a statement pgmemo did not see parsed (SQL PREPARE, or past
                // the bound): its writes and its effect on settings are both unknown.
                self.tracker.txn.merge(&[], Some(EpochCause::Untracked));
                self.taint_unseen("execution of a statement pgmemo did not plan");
                self.move_context();
            }
            Some(Completion::Empty) | None => {}
        }
    }

    /// While the session has lost track of its replies, whatever completes may have written
    /// anything: every transaction that ends then bumps the epoch. A loss since this was last
    /// looked at may also have changed any setting: they are re-read before the next lookup
    /// (which waits for the session to be idle, when replies line up again).
    pub(super) fn note_losses(&mut self, state: &SessionState) {
        let replies = state.replies();
        if replies.is_lost() || replies.losses() != self.tracker.seen_losses {
            self.tracker.txn.merge(&[], Some(EpochCause::Untracked));
        }
        if replies.losses() != self.tracker.seen_losses {
            self.tracker.seen_losses = replies.losses();
            self.taint_unseen("lost track of the upstream's replies");
            self.move_context();
        }
    }

    /// What names resolve against may have changed (see [`Tracker::context_seq`]).
    fn move_context(&mut self) {
        self.tracker.context_seq = self.tracker.context_seq.wrapping_add(1);
        self.tracker.context_unknown = true;
    }

    /// A ReadyForQuery with transaction status `status`, before `state` has seen it. Bumps
    /// an implicit transaction's writes (status idle) before the frame is relayed.
    pub(super) fn on_ready(&mut self, status: u8, state: &mut SessionState) {
        match state.next_ready() {
            Some(ReadyFor::FunctionCall) => {
                // Applied here, not when the call was sent: a Query pipelined ahead of it
                // commits (and bumps) first, before the function has run.
                self.tracker.txn.merge(&[], Some(EpochCause::SideEffects));
                self.move_context();
            }
            Some(_) => {}
            // Not what is awaited: lost before the transaction it ends is settled.
            None => state.mismatch(),
        }
        self.note_losses(state);
        if status == b'I' {
            self.commit_txn();
        }
    }

    fn commit_txn(&mut self) {
        let mut written = std::mem::take(&mut self.tracker.txn);
        if written.epoch == Some(EpochCause::SideEffects) && !self.tracker.txn_ddl {
            // With the change stream following this database, it carries whatever the
            // trigger or function wrote: hold the acknowledgement for it instead.
            if let Some(wait) = self.ack_wait() {
                written.epoch = None;
                self.ack = super::resume::AckHold::Due(wait);
            }
        }
        let resolved_under = self.tracker.txn_generation.take();
        let names_relations = !written.tags.is_empty() || !written.rows.is_empty();
        if names_relations
            && resolved_under.is_some_and(|g| g < self.app.services.catalog.generation())
        {
            // Its names were resolved before the catalog last moved (a plan in flight while
            // another lookup found a name re-created directly): the tags may name relations
            // PostgreSQL no longer wrote, and reads planned since name the new ones.
            written.merge(&[], Some(EpochCause::ResolutionChanged));
        }
        if !written.through.is_empty() {
            // Taken at this commit's ReadyForQuery (a COMMIT settles the transaction at its
            // CommandComplete, before it).
            self.through_deps = super::through::through_deps(&written);
        }
        if self.sent.is_some() {
            // Re-runs went out behind this commit, keyed on its planned bump.
            self.committed = Some(written.clone());
        }
        if !written.is_empty() {
            super::hooks::pause(super::hooks::Point::BeforeBump);
            let shared = self
                .app
                .services
                .invalidator
                .bump_held(&written, Source::Write);
            self.hold_for_shared(shared);
        }
        if std::mem::take(&mut self.tracker.txn_ddl) {
            self.app.services.catalog.invalidate_memos();
        }
    }

    /// The acknowledgement waits for the shared tier's bump too, so a read through any
    /// instance after it sees the bump (bounded by `cache.redis.timeout`; a failure is
    /// recorded and retried).
    fn hold_for_shared(&mut self, shared: Option<crate::invalidation::SharedBump>) {
        let Some(shared) = shared else {
            return;
        };
        let before = self.ack.take_due();
        self.ack = super::resume::AckHold::Due(Box::pin(async move {
            if let Some(wait) = before {
                wait.await;
            }
            shared.apply().await;
        }));
    }

    /// The acknowledgement wait for a commit with invisible effects, when the session's
    /// database is streaming and waits are enabled.
    fn ack_wait(&self) -> Option<super::ack::AckFuture> {
        let db = &self.cx.as_ref()?.database;
        let services = &self.app.services;
        let stream = services.cdc.streaming(db)?;
        let max = self.app.config().invalidation.cdc_ack_wait_max;
        if max.is_zero() {
            return None;
        }
        Some(super::ack::wait(
            Arc::clone(&services.invalidator),
            Arc::clone(&services.catalog),
            Arc::clone(stream),
            Arc::clone(db),
            max,
        ))
    }

    fn rollback_txn(&mut self) {
        self.tracker.txn = Written::default();
        self.tracker.txn_ddl = false;
        self.tracker.txn_generation = None;
    }

    fn apply_statement(
        &mut self,
        plan: &Plan,
        index: usize,
        rows: Option<&[(Tag, Stripe)]>,
        frame: &[u8],
        planned_here: bool,
        state: &mut SessionState,
    ) {
        let (Some(info), Some(sp)) = (plan.analysis.statements.get(index), plan.stmts.get(index))
        else {
            self.tracker.txn.merge(&[], Some(EpochCause::Untracked));
            return;
        };
        if planned_here {
            self.merge_written(sp, rows);
            if !sp.written.tags.is_empty() {
                let g = plan.catalog_generation();
                self.tracker.txn_generation =
                    Some(self.tracker.txn_generation.map_or(g, |t| t.min(g)));
            }
        } else if !sp.written.is_empty() {
            // Its names were resolved under a search_path or role the session has left
            // (a SET earlier in the Query or pipeline): what it wrote is unknown.
            self.tracker.txn.merge(&[], Some(EpochCause::Untracked));
        }
        if moves_context(info) {
            self.move_context();
        }
        self.tracker.txn_ddl |= sp.ddl;
        if let Some(why) = sp.taint {
            self.taint_unseen(why);
        }
        self.fingerprint.on_statement(info);
        if (info.taints_session || !self.fingerprint.cacheable()) && self.probe.may_retry() {
            // Tainted (a set_config call, an unmodelled statement): re-read the settings.
            self.probe.needed = true;
        }
        let rolled_back = command_tag(frame) == b"ROLLBACK";
        match &info.class {
            Class::TransactionControl(tc) => self.apply_txn_control(tc, rolled_back),
            Class::SessionChange(change) => {
                self.apply_session_change(change, sp, plan, planned_here, state)
            }
            Class::Execute { name } => self.apply_sql_execute(name, planned_here),
            _ => {}
        }
    }

    /// Adds what a statement planned for this context wrote: its target by row when the
    /// rows are known (and, for a text key, the session is still UTF-8: a SET
    /// client_encoding ahead of it, reported by ParameterStatus, makes a re-probe due),
    /// everything else table-wide.
    fn merge_written(&mut self, sp: &StmtPlan, rows: Option<&[(Tag, Stripe)]>) {
        let mut txn = std::mem::take(&mut self.tracker.txn);
        self.add_written(&mut txn, sp, rows);
        self.tracker.txn = txn;
    }

    /// Adds to `to` what [`merge_written`](Self::merge_written) adds for this statement
    /// now (write-through's pipelined re-runs predict a commit's bump with it).
    pub(super) fn add_written(
        &self,
        to: &mut Written,
        sp: &StmtPlan,
        rows: Option<&[(Tag, Stripe)]>,
    ) {
        let text_ok = |types: &[KeyType]| {
            !types.contains(&KeyType::Text) || (self.utf8 && !self.probe.needed)
        };
        match (rows, sp.rows.as_deref()) {
            (Some(rows), Some(pin)) if text_ok(&pin.types) => {
                let others: Vec<Tag> = sp
                    .written
                    .tags
                    .iter()
                    .filter(|t| **t != pin.tag)
                    .copied()
                    .collect();
                to.merge(&others, sp.written.epoch);
                to.merge_rows(rows);
            }
            _ => to.merge(&sp.written.tags, sp.written.epoch),
        }
        to.merge_through(&sp.written.through);
    }

    /// The rows statement `index` of `plan` writes, known by key, for an execution with
    /// these parameters (`None`: not known; the target is bumped table-wide).
    pub(super) fn written_rows(
        &self,
        plan: &Plan,
        index: usize,
        bound: Option<crate::planner::plan::Bound<'_>>,
    ) -> Option<Arc<[(Tag, Stripe)]>> {
        let pin = plan.stmts.get(index)?.rows.as_deref()?;
        // The encoding is checked when the write completes (see `merge_written`).
        let keys = pin.keys(bound, true)?;
        let secret = self.app.services.cache.secret();
        Some(
            keys.iter()
                .map(|k| (pin.tag, secret.stripe(pin.tag, k)))
                .collect(),
        )
    }

    /// A SET, RESET, PREPARE, DEALLOCATE, DISCARD ... completed: the session is re-probed,
    /// custom setting names are remembered, and SQL-prepared statements are tracked.
    fn apply_session_change(
        &mut self,
        change: &SessionChange,
        sp: &StmtPlan,
        plan: &Plan,
        planned_here: bool,
        state: &mut SessionState,
    ) {
        self.probe.needed = true;
        if let SessionChange::Set { name, .. } | SessionChange::Reset { name: Some(name) } =
            change
            && name.contains('.')
            // pgmemo's own switch changes no result (the probe reads it apart).
            && name != "pgmemo.cache"
            && self.custom_names.len() < super::probe::MAX_SESSION_NAMES
        {
            let name = setting_name(name);
            if !self.custom_names.contains(&name) {
                self.custom_names.push(name);
            }
        }
        match change {
            SessionChange::Prepare { name, .. } => {
                let inner = sp
                    .prepared
                    .as_deref()
                    .filter(|_| planned_here)
                    .cloned()
                    .unwrap_or_else(|| {
                        let mut p = StmtPlan::default();
                        p.written.epoch = Some(EpochCause::Untracked);
                        p
                    });
                self.tracker
                    .sql_prepared
                    .insert(name.clone(), (inner, plan.context_id));
            }
            SessionChange::Deallocate { name: Some(name) } => {
                self.tracker.sql_prepared.remove(name);
                state.registry.deallocated(name.as_bytes());
            }
            SessionChange::Deallocate { name: None } | SessionChange::Discard(DiscardKind::All) => {
                self.tracker.sql_prepared.clear();
                state.registry.deallocated_all();
                // Write-through's statements went too.
                self.through_statements.clear();
            }
            _ => {}
        }
    }

    /// A SQL EXECUTE completed: what its prepared statement writes, if it still holds.
    fn apply_sql_execute(&mut self, name: &str, planned_here: bool) {
        let effect = self
            .tracker
            .sql_prepared
            .get(name)
            .map(|(p, cx)| (p.written.clone(), p.ddl, *cx));
        match effect {
            // PostgreSQL re-parses a prepared statement whose search_path changed:
            // its tags hold only in the context it was prepared in.
            Some((w, ddl, cx)) if planned_here && cx == self.cx_id => {
                self.tracker.txn.merge(&w.tags, w.epoch);
                self.tracker.txn.merge_through(&w.through);
                self.tracker.txn_ddl |= ddl;
            }
            // A prepared read that wrote nothing where it was prepared (the names it
            // resolves are only read).
            Some((w, false, _)) if w.is_empty() => {}
            Some((_, ddl, _)) => {
                self.tracker.txn.merge(&[], Some(EpochCause::Untracked));
                self.tracker.txn_ddl |= ddl;
            }
            None => self.tracker.txn.merge(&[], Some(EpochCause::Untracked)),
        }
        // Whatever its plan said at PREPARE time: the statement runs with the
        // functions and settings of now, and its own settings changes (a
        // set_config call) never pass through the fingerprint's SQL model.
        self.taint_unseen("SQL EXECUTE");
    }

    /// A statement ran whose effect on the session's settings pgmemo cannot see: no lookup
    /// or store until the settings probe re-established them (DESIGN §1.4).
    fn taint_unseen(&mut self, why: &'static str) {
        self.fingerprint.taint(why);
        self.probe.needed = true;
    }

    fn apply_txn_control(&mut self, tc: &TxnControl, rolled_back: bool) {
        match tc {
            TxnControl::Begin => self.fingerprint.on_begin(),
            TxnControl::Commit | TxnControl::CommitAndChain => {
                if rolled_back {
                    self.rollback_txn();
                    self.fingerprint.on_transaction_end(false);
                } else {
                    // I2: this CommandComplete acknowledges the commit; it is relayed after.
                    self.commit_txn();
                    self.fingerprint.on_transaction_end(true);
                }
                if matches!(tc, TxnControl::CommitAndChain) {
                    self.fingerprint.on_begin();
                }
            }
            TxnControl::Rollback | TxnControl::RollbackAndChain => {
                self.rollback_txn();
                self.fingerprint.on_transaction_end(false);
                if matches!(tc, TxnControl::RollbackAndChain) {
                    self.fingerprint.on_begin();
                }
            }
            TxnControl::Savepoint(name) => self.fingerprint.on_savepoint(name),
            TxnControl::RollbackToSavepoint(name) => self.fingerprint.on_rollback_to(name),
            TxnControl::ReleaseSavepoint(name) => self.fingerprint.on_release(name),
            TxnControl::PrepareTransaction(gid) => {
                let written = std::mem::take(&mut self.tracker.txn);
                let ddl = std::mem::take(&mut self.tracker.txn_ddl);
                self.tracker.txn_generation = None;
                if !rolled_back {
                    let mut parked = written;
                    if ddl {
                        parked.merge(&[], Some(EpochCause::Ddl));
                    }
                    self.app
                        .services
                        .invalidator
                        .park(self.db_oid(), gid, parked);
                }
                self.fingerprint.on_transaction_end(true);
            }
            TxnControl::CommitPrepared(gid) => {
                let shared = self
                    .app
                    .services
                    .invalidator
                    .commit_prepared(self.db_oid(), gid);
                self.hold_for_shared(shared);
            }
            TxnControl::RollbackPrepared(gid) => {
                self.app
                    .services
                    .invalidator
                    .rollback_prepared(self.db_oid(), gid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::setting_name;

    #[test]
    fn setting_names_are_truncated_per_part_like_postgres_identifiers() {
        assert_eq!(setting_name("app.tenant"), "app.tenant");
        // 80 bytes of two-byte characters: cut at 62, the last boundary within 63.
        let long = "é".repeat(40);
        let cut = "é".repeat(31);
        assert_eq!(
            setting_name(&format!("{long}.{long}")),
            format!("{cut}.{cut}")
        );
    }
}
