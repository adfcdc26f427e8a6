//! Write-through re-runs sent right behind the write (issue 19): when the client's sync
//! group is an autocommit write to `write = "through"` tables, this session's dependents of
//! it are re-run in the same upstream send, right after the group's Sync, instead of after
//! its ReadyForQuery came back — the writer saves a round trip to the database.
//!
//! Why this is as safe as re-running after the bump (I1, DESIGN §1): each result's version
//! snapshot `S` is read when the batch is sent, before the write runs, and its key is
//! computed for `S` moved by exactly the increments the write's planned bump makes
//! (`Invalidator::increments`), and its fill is led under that key only once the bump is
//! confirmed (before, another write's identical bump could lead a reader to that key, to
//! wait for rows without that write). Everything bumped into `S` committed before it was read,
//! so before the re-run ran; the write itself committed at its Sync, before the re-run's
//! statement started on the same connection. So the rows hold everything that key's
//! versions stand for, provided the write really made that bump: at its ReadyForQuery the
//! bump the tracker made is compared with the planned one, and on any difference (the
//! write failed, the session's settings or context moved, an epoch bump) nothing is
//! stored. Any other write's bump of a counter the result depends on, before or after
//! the write's, makes the versions differ from the key's forever (counters only grow), so
//! the store is refused or the entry is never reached. Without the comparison a failed
//! write plus another session's identical bump would look like the planned state with rows
//! missing that write.
//!
//! Only when nothing else can interleave: no shared tier (its keys need the shared
//! counters, read with an await), the session in no transaction block with no other sync
//! group outstanding, every statement of the group a plain write planned in the current
//! context (no DDL, no effects pgmemo cannot see, no setting changed), and the session's
//! settings known. Once sent, the replies are always read here (stored or not), so the
//! client never sees them.

use bytes::Bytes;

use super::through::{Group, Outcome, batch, count, through_deps};
use super::*;
use crate::cache::Dep;
use crate::invalidation::{Invalidator, Written};
use crate::session::replies::{Awaited, Completion};
use crate::sql::Class;

/// Re-runs sent behind a write whose ReadyForQuery has not come back yet.
pub(super) struct Sent {
    groups: Vec<Group>,
    /// The bump the write was planned to make at its commit: the keys assume exactly it.
    written: Written,
    /// The fingerprint digest the re-runs were keyed under.
    fp: [u8; 16],
    /// The server configuration generation when the snapshots were read.
    config: u64,
}

impl CacheSession {
    /// At the client frame that ends a sync group (a Sync, or a simple Query once its
    /// statements are expected): the re-runs to send right behind it, when the group is an
    /// autocommit write to write-through tables with dependents read under this session's
    /// fingerprint.
    pub(super) fn pipeline_through(&mut self, state: &SessionState) -> Option<Bytes> {
        if self.sent.is_some()
            || self.app.services.shared.is_some()
            || !self.app.cache_enabled()
            || !state.ends_sole_group()
            || !self.may_rerun_ahead()
        {
            return None;
        }
        let written = self.group_writes(state)?;
        let deps = through_deps(&written);
        if deps.is_empty() {
            return None;
        }
        let fp = self.fp_digest.filter(|_| self.fingerprint.cacheable())?;
        let cx_id = self.cx.as_ref().map(|_| self.cx_id)?;
        // Read before the snapshots, as a lookup reads it before its own.
        let config = self.app.services.invalidator.config_generation();
        let moved = Invalidator::increments(&written);
        let max = self.app.config().cache.write_through_max_entries;
        let mut groups = Vec::new();
        for recipe in self.app.services.recipes.dependents(&deps, max) {
            if recipe.fingerprint != fp || *recipe.database != *self.database {
                // Another fingerprint's: the background refresher's, at the commit.
                continue;
            }
            match self.through_group(recipe, &fp, cx_id, &moved) {
                Ok(g) => groups.push(g),
                Err(outcome) => count(outcome, 1),
            }
        }
        if groups.is_empty() {
            return None;
        }
        metrics::counter!(names::WRITE_THROUGH_PIPELINED).increment(groups.len() as u64);
        let frames = batch(&groups, &mut self.through_statements);
        self.committed = None;
        self.sent = Some(Sent {
            groups,
            written,
            fp,
            config,
        });
        Some(frames)
    }

    /// The session's state allows re-runs behind the group being sent.
    fn may_rerun_ahead(&self) -> bool {
        matches!(self.ack, resume::AckHold::No)
            && self.through.is_none()
            && self.capture.is_none()
            && !self.probe.needed
            && self.probe.config == self.app.services.invalidator.config_generation()
            && !self.opted_out
            && !self.tracker.context_unknown
    }

    /// What the group's commit will bump if all its statements succeed, when each is a
    /// plain write planned in the current context (the tracker's own rule, predicted).
    fn group_writes(&self, state: &SessionState) -> Option<Written> {
        let replies = state.replies();
        if replies.is_lost() || replies.losses() != self.tracker.seen_losses {
            return None;
        }
        let mut written = self.tracker.txn.clone();
        let mut any = false;
        for awaited in replies.iter() {
            let Awaited::Completion(c) = awaited else {
                if matches!(awaited, Awaited::Ready(_)) {
                    return None;
                }
                continue;
            };
            let Completion::Stmt {
                plan,
                index,
                context_seq,
                rows,
            } = c
            else {
                return None;
            };
            if *context_seq != Some(self.tracker.context_seq) || plan.context_id != self.cx_id {
                return None;
            }
            let info = plan.analysis.statements.get(*index)?;
            let sp = plan.stmts.get(*index)?;
            let plain = matches!(info.class, Class::Write)
                && !info.copies_in
                && !info.taints_session
                && sp.taint.is_none()
                && !sp.ddl
                && sp.written.epoch.is_none();
            if !plain {
                return None;
            }
            self.add_written(&mut written, sp, rows.as_deref());
            any = true;
        }
        (any && written.epoch.is_none()).then_some(written)
    }

    /// The write's ReadyForQuery `frame` came (the tracker bumped `committed`, if it
    /// committed): the re-runs sent behind it are read now, and stored only if that bump
    /// is exactly the planned one. `deps`: what the commit bumped on write-through tables
    /// (their other fingerprints' dependents go to the background refresher).
    pub(super) fn receive_sent(&mut self, mut sent: Sent, deps: &[Dep], frame: &[u8]) {
        let committed = self.committed.take();
        // Not expected here (no shared tier, no effects the stream must follow): the
        // frame is held below, so a wait cannot hold it too; dropping it bumps the epoch.
        let held = self.ack.take_due();
        let as_planned = held.is_none()
            && Reader::body(frame).u8() == Some(b'I')
            && committed.as_ref() == Some(&sent.written)
            && !self.probe.needed
            && self.fp_digest == Some(sent.fp);
        drop(held);
        let here = as_planned.then_some(sent.fp);
        let mine = self.dependents_here(deps, here);
        let late = mine
            .iter()
            .filter(|r| !sent.groups.iter().any(|g| g.runs(r)))
            .count();
        count(Outcome::Late, late);
        for g in &mut sent.groups {
            if as_planned {
                g.lead(&self.app.services);
            } else {
                g.fail();
            }
        }
        let mut through = self.through_for(frame, None, sent.groups, sent.config);
        if !as_planned {
            // Nothing will be stored: the acknowledgement need not wait for the re-runs
            // (their replies are still read here, before the client's next statement's).
            self.through_ready = through.release();
        }
        self.through = Some(through);
    }
}
