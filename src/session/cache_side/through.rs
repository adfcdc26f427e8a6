//! Write-through (issue 19) on the writer's own connection: when a transaction that wrote a
//! `write = "through"` table commits, its bumps happen as always (I2); then, before the
//! writer's ReadyForQuery is relayed, pgmemo re-runs the most recently stored results that
//! the write invalidated and that were read under this session's fingerprint, on this
//! session's upstream connection, and stores them under the new versions. The writer and
//! every other session then read fresh hits.
//!
//! Why this connection: equal fingerprints mean equal result-affecting state (DESIGN §1.4),
//! so a result read by any session with this fingerprint is recomputed exactly here, with no
//! credentials of pgmemo's own and no role switch. Results of other fingerprints stay
//! invalid (counted), never stale: they go to the background refresher, which logs in as
//! their reader (`background`), as every re-run does with a shared tier (its keys need the
//! shared counters, read with an await, and one instance's lock). With a shared tier, or
//! when the acknowledgement is held anyway, the acknowledgement waits for those too (see
//! [`super::before_ack`]).
//!
//! Only when the commit's ReadyForQuery is the last reply outstanding (nothing pipelined
//! behind it), no other hold applies to it, and the session's settings are known. The
//! acknowledgement waits at most `refresh.time_budget` plus the re-run running when it
//! passes: it is released at the first re-run end past the budget, and the rest still end
//! (and are stored) before the client's next statement, which waits behind them. Each
//! result's version snapshot is read after the bumps and before its statement is sent (I1)
//! under a fill guard, so a write committed meanwhile by anyone leaves it unstored, and
//! readers of the same key wait for it instead of running it too. Each re-run is its own
//! sync group on a statement name no client uses; an error, a notice or a result too
//! large leaves that result invalid and the next one runs.
//!
//! Re-run statements stay prepared on the connection (at most [`MAX_STATEMENTS`], named
//! `pgmemo_through_<random>_<n>`, visible to the client in `pg_prepared_statements` only):
//! parsing and planning each re-run again cost the database more than the miss it saves. A
//! statement is reused only under the fingerprint it was prepared under; one whose re-run
//! failed is closed and prepared afresh next time; `DEALLOCATE ALL`/`DISCARD ALL` forget them.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::*;
use crate::cache::StoreOutcome;
use crate::cache::entry::Origin;
use crate::cache::l2::versions::SharedSnapshot;
use crate::cache::{CacheKey, Dep, FillGuard, KeyCheck, KeyInput, Tag, VersionSnapshot};
use crate::invalidation::Written;
use crate::planner::plan::Bound;
use crate::protocol::response::put_frame as frame;
use crate::refresh::queue::{Cause, Job};
use crate::refresh::recipes::{Recipe, Request};
use crate::tasks::InFlight;

/// The prefix of the re-runs' statement names: random per process, so no client statement
/// is closed or reused.
static PREFIX: LazyLock<String> = LazyLock::new(|| {
    let mut bits = [0u8; 8];
    if getrandom::fill(&mut bits).is_err() {
        bits = (u64::from(std::process::id()) ^ 0x7072_6566_7265_7368).to_be_bytes();
    }
    format!("pgmemo_through_{:016x}_", u64::from_be_bytes(bits))
});

/// Re-run statements kept prepared on one connection at most: re-parsing and re-planning
/// each re-run cost the database more than the miss it saves (bench/through.py measured
/// 0.76x the TPS of `invalidate` that way).
pub const MAX_STATEMENTS: usize = 16;

/// One statement prepared on this connection for re-runs.
struct Held {
    /// The fingerprint it was prepared under: a statement is reused only under the same
    /// one (PostgreSQL re-plans on a search_path change too, but this does not rely on it).
    fp: [u8; 16],
    sql: Bytes,
    types: Bytes,
    /// Its name, NUL-terminated.
    name: Bytes,
}

/// The statements this connection keeps for re-runs, least recently used first, and the
/// names to close before the next re-run (evicted, or left by a re-run that failed: it may
/// or may not exist, and closing a missing statement is not an error).
#[derive(Default)]
pub(super) struct Statements {
    held: Vec<Held>,
    closing: Vec<Bytes>,
    next: u64,
}

impl Statements {
    /// The name to run `request` under, and whether it must be parsed first.
    fn name_for(&mut self, fp: &[u8; 16], sql: &Bytes, types: &Bytes) -> (Bytes, bool) {
        if let Some(i) = self
            .held
            .iter()
            .position(|h| h.fp == *fp && h.sql == *sql && h.types == *types)
        {
            let held = self.held.remove(i);
            let name = held.name.clone();
            self.held.push(held);
            return (name, false);
        }
        if self.held.len() >= MAX_STATEMENTS {
            let evicted = self.held.remove(0);
            self.closing.push(evicted.name);
        }
        self.next += 1;
        let mut name = format!("{}{}", *PREFIX, self.next).into_bytes();
        name.push(0);
        let name = Bytes::from(name);
        self.held.push(Held {
            fp: *fp,
            sql: sql.clone(),
            types: types.clone(),
            name: name.clone(),
        });
        (name, true)
    }

    /// A re-run on `name` failed: its statement is not trusted again.
    fn forget(&mut self, name: &Bytes) {
        self.held.retain(|h| h.name != *name);
        self.closing.push(name.clone());
    }

    /// The client ran `DEALLOCATE ALL` or `DISCARD ALL`: none is left to reuse or close.
    pub(super) fn clear(&mut self) {
        self.held.clear();
        self.closing.clear();
    }
}

/// One result being re-run.
pub(super) struct Group {
    /// Taken when it is stored or fails.
    leader: Option<Leader>,
    /// Sent behind a write: the keys and snapshot to lead the fill under once the write's
    /// bump is confirmed (see `pipelined`).
    unled: Option<(Keys, VersionSnapshot)>,
    /// Its fill could not be led (counted then): run, not stored, not a failure.
    unleadable: bool,
    recipe: Arc<Recipe>,
    /// The statement it runs on (NUL-terminated), and whether the batch parses it.
    name: Bytes,
    parse: bool,
    frames: BytesMut,
    complete: bool,
    failed: bool,
}

/// A write-through in progress: the writer's ReadyForQuery, held, and the re-runs.
pub(super) struct Through {
    /// The writer's ReadyForQuery, until it is released (the last re-run ended, or the
    /// time budget passed).
    ready: Option<Bytes>,
    /// When the re-runs were started, and how long the acknowledgement may wait for them
    /// (`refresh.time_budget`).
    started: Instant,
    budget: Duration,
    /// The frames to send, until the relay takes them.
    batch: Option<Bytes>,
    groups: Vec<Group>,
    /// Groups whose ReadyForQuery arrived.
    done: usize,
    /// The server configuration generation when the snapshots were read: a reload seen
    /// since makes the fingerprint suspect, so nothing is stored (as for a missed read).
    config: u64,
}

/// How write-throughs ended (metric label values).
#[derive(Clone, Copy)]
pub(super) enum Outcome {
    Stored,
    Failed,
    /// The result was read under another fingerprint (or in another database).
    OtherSession,
    /// The writer's connection was not free for re-runs (pipelined statements, a held
    /// acknowledgement, settings being probed), or there is a shared tier: re-run in the
    /// background instead.
    Background,
    /// Another session is filling it, or it is cached already.
    Busy,
    /// Its plan is no longer current (the catalog or the rules moved).
    Stale,
    /// A write came while it ran: computed, not stored (never stale).
    Raced,
    /// Read again (and stored under the old versions) while the write it was re-run
    /// behind was running: not among the re-runs sent with the write, so left invalid.
    Late,
}

impl Outcome {
    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Stored => "stored",
            Self::Failed => "failed",
            Self::OtherSession => "other_session",
            Self::Background => "background",
            Self::Busy => "busy",
            Self::Stale => "plan_stale",
            Self::Raced => "raced",
            Self::Late => "late",
        }
    }
}

pub(super) fn count(outcome: Outcome, n: usize) {
    if n > 0 {
        metrics::counter!(names::WRITE_THROUGH, "result" => outcome.label()).increment(n as u64);
    }
}

/// The counters a commit bumped on write-through tables: what its dependents were filed
/// under (see `refresh::recipes`).
pub(super) fn through_deps(written: &Written) -> Vec<Dep> {
    let through = |t: &Tag| written.through.binary_search(t).is_ok();
    let mut deps = Vec::new();
    for t in written.tags.iter().filter(|t| through(t)) {
        deps.extend([Dep::Table(*t), Dep::Wide(*t)]);
    }
    for (t, stripe) in written.rows.iter().filter(|(t, _)| through(t)) {
        deps.extend([Dep::Table(*t), Dep::Row(*stripe)]);
    }
    deps.sort_unstable();
    deps.dedup();
    deps
}

impl CacheSession {
    /// At the ReadyForQuery `frame` of a commit that bumped `deps` on write-through tables:
    /// starts the re-runs and returns true when the frame must be held (it is relayed by
    /// [`CacheSession::take_through_ready`] when they end); false when nothing is re-run here.
    pub(super) fn start_write_through(
        &mut self,
        deps: &[Dep],
        frame: &[u8],
        state: &SessionState,
    ) -> bool {
        if let Some(sent) = self.sent.take() {
            // Re-runs went out right behind the write: their replies follow this frame.
            self.receive_sent(sent, deps, frame);
            return true;
        }
        if deps.is_empty() || Reader::body(frame).u8() != Some(b'I') || !self.app.cache_enabled() {
            return false;
        }
        // With a shared tier, keys carry the shared counters, which only an await can read,
        // and one instance at a time may refresh a key: every re-run goes to the background
        // refresher (the acknowledgement waits for it, see `before_ack`).
        let shared = self.app.services.shared.is_some();
        let here = (!shared && self.may_rerun_here(state))
            .then(|| self.fp_digest.filter(|_| self.fingerprint.cacheable()))
            .flatten()
            .zip(self.cx.as_ref().map(|_| self.cx_id));
        let mine = self.dependents_here(deps, here.map(|(fp, _)| fp));
        let Some((fp, cx_id)) = here else {
            return false;
        };
        // Read before the snapshots, as a lookup reads it before its own.
        let config = self.app.services.invalidator.config_generation();
        let mut groups = Vec::with_capacity(mine.len());
        for recipe in mine {
            match self.through_group(recipe, &fp, cx_id, &[]) {
                Ok(g) => groups.push(g),
                Err(outcome) => count(outcome, 1),
            }
        }
        if groups.is_empty() {
            return false;
        }
        let batch = batch(&groups, &mut self.through_statements);
        self.through = Some(self.through_for(frame, Some(batch), groups, config));
        true
    }

    /// The write-through that holds the writer's ReadyForQuery `frame` until `groups`
    /// ended (or the time budget passed), their frames to send still in `batch`.
    pub(super) fn through_for(
        &self,
        frame: &[u8],
        batch: Option<Bytes>,
        groups: Vec<Group>,
        config: u64,
    ) -> Through {
        Through {
            ready: Some(Bytes::copy_from_slice(frame)),
            started: Instant::now(),
            budget: self.app.config().refresh.time_budget,
            batch,
            groups,
            done: 0,
            config,
        }
    }

    /// The results a commit that bumped `deps` invalidated, most recently stored first
    /// (at most `cache.write_through_max_entries`): those read under fingerprint `here`
    /// (this session's, when it may re-run them on its connection) are returned; the
    /// others go to the background refresher, each under its own login and fingerprint
    /// (with a shared tier or a held acknowledgement, the acknowledgement waits for them:
    /// see `before_ack`).
    pub(super) fn dependents_here(
        &mut self,
        deps: &[Dep],
        here: Option<[u8; 16]>,
    ) -> Vec<Arc<Recipe>> {
        if deps.is_empty() || !self.app.cache_enabled() {
            return Vec::new();
        }
        let max = self.app.config().cache.write_through_max_entries;
        let recipes = self.app.services.recipes.dependents_of_commit(deps, max);
        let (mine, others): (Vec<_>, Vec<_>) = recipes.into_iter().partition(|r| {
            here.is_some_and(|fp| r.fingerprint == fp && *r.database == *self.database)
        });
        let why = match here {
            Some(_) => Outcome::OtherSession,
            None => Outcome::Background,
        };
        count(why, others.len());
        // With a shared tier, or when the acknowledgement is held anyway, before it goes.
        if self.app.services.shared.is_some() || !matches!(self.ack, resume::AckHold::No) {
            self.refresh_before_ack(others);
        } else {
            submit(&self.app.services, others);
        }
        mine
    }

    /// Whether write-through may re-run results on this session's connection now: its
    /// statements are done, nothing else holds it, its settings are known and current.
    fn may_rerun_here(&self, state: &SessionState) -> bool {
        state.sole_group().is_some()
            && matches!(self.ack, resume::AckHold::No)
            && self.capture.is_none()
            && !self.probe.needed
            && self.probe.config == self.app.services.invalidator.config_generation()
            && !self.opted_out
    }

    /// The fill guard and snapshot of one re-run (I1: read now, after the bumps, before
    /// its statement is sent), or why it is not re-run.
    /// `moved`: the counters a write that runs before it on this connection will move
    /// (empty when the write was bumped already): the result is keyed on the snapshot
    /// moved by exactly those (see `pipelined`).
    pub(super) fn through_group(
        &mut self,
        recipe: Arc<Recipe>,
        fp: &[u8; 16],
        cx_id: u64,
        moved: &[(Dep, u64)],
    ) -> Result<Group, Outcome> {
        let rules = self.app.rules_generation();
        let services = &self.app.services;
        let ids = (cx_id, self.utf8, rules);
        let snapshot = snapshot(services, &recipe, ids, &mut self.deps)?;
        let snapshot = if moved.is_empty() {
            snapshot
        } else {
            snapshot.after(moved)
        };
        let keys = keys(services, &recipe, fp, &snapshot, None)?;
        // Behind a write, the fill is led only once the write's bump is confirmed: until
        // then the key may be reached by another write's identical bump, and a reader
        // waiting on this fill would get rows without that write.
        let (leader, unled) = if moved.is_empty() {
            (Some(lead_keys(services, keys, snapshot, None)?), None)
        } else {
            (None, Some((keys, snapshot)))
        };
        let (sql, types) = match &recipe.request {
            Request::Simple { sql } => (sql, &Bytes::new()),
            Request::Extended {
                sql, param_types, ..
            } => (sql, param_types),
        };
        let (name, parse) = self.through_statements.name_for(fp, sql, types);
        Ok(Group {
            leader,
            unled,
            unleadable: false,
            recipe: Arc::clone(&recipe),
            name,
            parse,
            frames: BytesMut::new(),
            complete: false,
            failed: false,
        })
    }

    /// The re-runs' frames, once, for the relay to send upstream.
    pub(super) fn take_through_batch(&mut self) -> Option<Bytes> {
        self.through.as_mut()?.batch.take()
    }

    /// A backend frame while a write-through runs (`whole = false`: only its header was
    /// seen): its re-runs' replies, never relayed — except what PostgreSQL sends the
    /// session on its own (a notification, a changed setting), which is the client's.
    /// Returns whether the frame goes to the client.
    pub(super) fn on_through_frame(&mut self, tag: u8, frame: &[u8], whole: bool) -> bool {
        let Some(mut through) = self.through.take() else {
            return false;
        };
        let max_entry = self.app.services.cache.max_entry_size();
        let Some(group) = through.groups.get_mut(through.done) else {
            // Not reached (it ends at its last group's ReadyForQuery): end it anyway.
            self.through_ready = through.ready;
            return false;
        };
        let mut relay = false;
        match tag {
            backend::READY_FOR_QUERY => {
                through.done += 1;
                let idle = Reader::body(frame).u8() == Some(b'I');
                let config = self.app.services.invalidator.config_generation();
                if !group.failed && group.complete && idle && config == through.config {
                    self.through_store(group);
                } else if group.unleadable {
                    // Counted when its fill could not be led; its statement is sound.
                } else {
                    count(Outcome::Failed, 1);
                    group.fail();
                    self.through_statements.forget(&group.name);
                }
                if through.done == through.groups.len() {
                    // The last re-run ended: the writer's acknowledgement goes (if the
                    // budget did not let it go already).
                    self.through_ready = through.ready;
                    return false;
                }
                if through.started.elapsed() >= through.budget
                    && let Some(ready) = through.ready.take()
                {
                    // Out of time: the acknowledgement goes now. The re-runs already sent
                    // still end (and are stored) before the client's next statement, which
                    // waits behind them on the connection.
                    self.through_ready = Some(ready);
                }
            }
            backend::ROW_DESCRIPTION | backend::DATA_ROW | backend::COMMAND_COMPLETE
                if whole && !group.failed =>
            {
                if group.frames.len() + frame.len() > max_entry {
                    group.fail();
                } else {
                    group.frames.extend_from_slice(frame);
                    group.complete = tag == backend::COMMAND_COMPLETE;
                }
            }
            backend::CLOSE_COMPLETE | backend::PARSE_COMPLETE | backend::BIND_COMPLETE => {}
            backend::PARAMETER_STATUS => {
                // A read should not change a setting; if one did (or the server's
                // configuration changed one), the client is told as PostgreSQL tells it,
                // and the session's settings are probed again before the cache is used.
                group.fail();
                if whole {
                    let mut r = Reader::body(frame);
                    if let (Some(n), Some(v)) = (r.cstr(), r.cstr()) {
                        self.fingerprint.on_parameter_status(
                            &String::from_utf8_lossy(n),
                            &String::from_utf8_lossy(v),
                        );
                    }
                }
                self.probe.needed = true;
                relay = true;
            }
            // A notification for a channel the session listens on: it arrives with the
            // re-run's ReadyForQuery, but belongs to the client.
            backend::NOTIFICATION_RESPONSE => relay = true,
            // An error, a notice, anything a stored result cannot hold.
            _ => group.fail(),
        }
        self.through = Some(through);
        relay
    }

    /// Stores one re-run's result (as a missed read's is stored) and files its recipe again
    /// under the new versions, as the most recent.
    fn through_store(&mut self, group: &mut Group) {
        let Some(leader) = group.leader.take() else {
            return;
        };
        let frames = std::mem::take(&mut group.frames).freeze();
        let stored = store(
            &self.app.services,
            leader,
            frames,
            &group.recipe,
            Origin::Write,
        );
        count(
            if stored {
                Outcome::Stored
            } else {
                Outcome::Raced
            },
            1,
        );
    }

    /// The writer's ReadyForQuery once its write-through ended: the relay sends it on.
    pub fn take_through_ready(&mut self) -> Option<Bytes> {
        self.through_ready.take()
    }

    /// A write-through is running or its acknowledgement is not relayed yet (the session
    /// is not at a point where it may be ended).
    pub fn write_through_running(&self) -> bool {
        self.through_running() || self.through_ready.is_some()
    }

    /// A write-through is running (its replies are read here, client frames wait).
    pub(super) fn through_running(&self) -> bool {
        self.through.is_some()
    }
}

impl Through {
    /// The writer's acknowledgement, to relay now rather than when the re-runs end.
    pub(super) fn release(&mut self) -> Option<Bytes> {
        self.ready.take()
    }
}

impl Group {
    /// Whether this re-runs `recipe` (the registry's own, not an equal one filed since).
    pub(super) fn runs(&self, recipe: &Arc<Recipe>) -> bool {
        Arc::ptr_eq(&self.recipe, recipe)
    }

    /// This re-run's result will not be stored: whoever waits for its key is let go now.
    pub(super) fn fail(&mut self) {
        self.failed = true;
        self.leader = None;
        self.unled = None;
    }

    /// The write it was sent behind made exactly the bump its key assumes: its fill is led
    /// now, or it fails (another session fills or holds that result).
    pub(super) fn lead(&mut self, services: &crate::context::Services) {
        let Some((keys, snapshot)) = self.unled.take() else {
            return;
        };
        // The write's bump is made, and counters only grow: if the versions still equal
        // the key's, only that bump reached them, so a reader that finds this fill was
        // looking for exactly these rows. Otherwise another bump came too (one identical to
        // the write's could have led a reader here before): not led.
        if !snapshot.is_current(services.cache.versions()) {
            count(Outcome::Raced, 1);
            self.fail();
            self.unleadable = true;
            return;
        }
        match lead_keys(services, keys, snapshot, None) {
            Ok(leader) => self.leader = Some(leader),
            Err(outcome) => {
                count(outcome, 1);
                self.fail();
                self.unleadable = true;
            }
        }
    }
}

/// Hands write-through's re-runs of `recipes` to the background refresher (counted when
/// its queue is full: those results stay invalid).
fn submit(services: &crate::context::Services, recipes: Vec<Arc<Recipe>>) {
    for recipe in recipes {
        submit_one(services, recipe, None);
    }
}

/// Hands one re-run to the background refresher, with the token the acknowledgement waits
/// on, if it waits (a refused job drops it: ended).
pub(super) fn submit_one(
    services: &crate::context::Services,
    recipe: Arc<Recipe>,
    done: Option<InFlight>,
) {
    let job = Job {
        recipe,
        cause: Cause::Write,
        previous: None,
        done,
    };
    if !services.refresh_queue.submit(job) {
        metrics::counter!(names::REFRESH, "cause" => "write", "result" => "queue_full")
            .increment(1);
    }
}

/// The fill a recomputation leads: its key's check and the versions it read, and with a
/// shared tier the L2 key and check to store it under too.
pub(super) struct Leader {
    pub guard: FillGuard,
    pub snapshot: VersionSnapshot,
    pub check: KeyCheck,
    pub l2: Option<(CacheKey, KeyCheck)>,
    /// A background re-run the writer's acknowledgement waits for: held by the result's
    /// Redis write until Redis answered it.
    pub done: Option<InFlight>,
}

/// The versions a recomputation of `recipe` reads, on a connection whose context is
/// `cx_id` (its client encoding UTF-8 or not), with the rules at generation `rules`: its
/// dependencies and version snapshot, read now (I1: after the bumps, before its statement
/// is sent). Refused when its plan is no longer current.
pub(super) fn snapshot(
    services: &crate::context::Services,
    recipe: &Recipe,
    (cx_id, utf8, rules): (u64, bool, u64),
    deps: &mut Vec<Dep>,
) -> Result<VersionSnapshot, Outcome> {
    let plan = &recipe.plan;
    let catalog = services.catalog.generation();
    if plan.context_id != cx_id || !plan.is_current(catalog, rules) {
        return Err(Outcome::Stale);
    }
    let Ok(read) = plan.read.as_ref() else {
        return Err(Outcome::Stale);
    };
    let cache = &services.cache;
    read.deps(bound(&recipe.request), utf8, cache.secret(), deps);
    Ok(cache.versions().snapshot_deps(deps))
}

/// The keys of one recomputation's result: the L1 key and check, and with a shared tier
/// the L2 key and check.
pub(super) struct Keys {
    pub key: CacheKey,
    pub check: KeyCheck,
    pub l2: Option<(CacheKey, KeyCheck)>,
}

/// The keys of `recipe`'s result under the fingerprint digest `fp` and `snapshot` (and,
/// with a shared tier, the shared `counters` read for it): what a session's lookup computes.
pub(super) fn keys(
    services: &crate::context::Services,
    recipe: &Recipe,
    fp: &[u8; 16],
    snapshot: &VersionSnapshot,
    counters: Option<&SharedSnapshot>,
) -> Result<Keys, Outcome> {
    let Ok(read) = recipe.plan.read.as_ref() else {
        return Err(Outcome::Stale);
    };
    let cache = &services.cache;
    let bare = KeyInput::<Bytes>::new(fp, &read.normalized, snapshot);
    let bare = match bound(&recipe.request) {
        Some(b) => bare.extended(b.types, b.tail),
        None => bare,
    };
    let input = match counters {
        Some(c) => bare.shared(c),
        None => bare,
    };
    let (key, check) = cache.key(&input);
    let l2 = counters.and_then(|_| cache.key_l2(&input));
    Ok(Keys { key, check, l2 })
}

/// Leads the fill of the result at `keys`, read under `snapshot`. Refused when another fill
/// of the key is under way, or it is cached — unless `replaces` is the entry cached (a
/// refresh-ahead replaces the entry readers keep hitting meanwhile).
pub(super) fn lead_keys(
    services: &crate::context::Services,
    keys: Keys,
    snapshot: VersionSnapshot,
    replaces: Option<&std::sync::Weak<Entry>>,
) -> Result<Leader, Outcome> {
    let cache = &services.cache;
    let guard = match replaces {
        Some(previous) => cache.lead_replacement(keys.key, keys.check, previous),
        None => cache.lead_refresh(keys.key, keys.check),
    };
    Ok(Leader {
        guard: guard.ok_or(Outcome::Busy)?,
        snapshot,
        check: keys.check,
        l2: keys.l2,
        done: None,
    })
}

/// The parameter part of an extended request's key.
fn bound(request: &Request) -> Option<Bound<'_>> {
    match request {
        Request::Simple { .. } => None,
        Request::Extended {
            param_types,
            bind_tail,
            ..
        } => Some(Bound {
            types: param_types,
            tail: bind_tail,
        }),
    }
}

/// Stores a recomputed result (as a missed read's is stored: refused if a write came
/// since its snapshot) as `origin` made it, and files its recipe again under the new
/// versions, as the newest. False when it was not stored.
pub(super) fn store(
    services: &crate::context::Services,
    leader: Leader,
    frames: Bytes,
    recipe: &Recipe,
    origin: Origin,
) -> bool {
    let Ok(read) = recipe.plan.read.as_ref() else {
        return false;
    };
    services.tiers().put_shared(
        leader.l2,
        &leader.snapshot,
        frames.clone(),
        read.ttl,
        leader.done,
    );
    let entry =
        Arc::new(Entry::new(leader.check, frames, read.ttl, read.tags.clone()).refreshed(origin));
    let outcome = services
        .cache
        .complete_arc(leader.guard, &leader.snapshot, Arc::clone(&entry));
    if !matches!(outcome, StoreOutcome::Stored) {
        // A write came since its snapshot (or it is too large): nothing stored.
        return false;
    }
    let recipe = Recipe {
        database: Arc::clone(&recipe.database),
        login: Arc::clone(&recipe.login),
        fingerprint: recipe.fingerprint,
        request: recipe.request.clone(),
        plan: Arc::clone(&recipe.plan),
        deps: leader.snapshot.versions().iter().map(|(d, _)| *d).collect(),
    };
    // Whether it is read before the next write decides whether that write re-runs it
    // again. Not with a shared tier: reads through other instances are not seen here.
    if origin == Origin::Write && services.shared.is_none() {
        services.recipes.insert_refreshed(recipe, &entry);
    } else {
        services.recipes.insert(recipe);
    }
    true
}

/// One recomputation's messages, ending with its Sync: Parse when `parse` (on statement
/// `name`, NUL-terminated), Bind (unnamed portal), Describe (the RowDescription a stored
/// result carries), Execute.
pub(super) fn put_request(out: &mut BytesMut, request: &Request, name: &[u8], parse: bool) {
    let (sql, types, tail): (&[u8], &[u8], Bytes) = match request {
        Request::Simple { sql } => (sql, &[], no_parameters()),
        Request::Extended {
            sql,
            param_types,
            bind_tail,
        } => (sql, param_types, bind_tail.clone()),
    };
    if parse {
        let ntypes = u16::try_from(types.len() / 4).unwrap_or(u16::MAX);
        frame(out, b'P', &[name, sql, b"\0", &ntypes.to_be_bytes(), types]);
    }
    frame(out, b'B', &[b"\0", name, &tail]);
    frame(out, b'D', &[b"P\0"]);
    frame(out, b'E', &[b"\0", &0i32.to_be_bytes()]);
    frame(out, b'S', &[]);
}

/// Each re-run as its own sync group, so one that fails does not skip the others: the
/// statements to close first (in the first group), Parse when the statement is new, Bind,
/// Describe (the RowDescription a stored result carries), Execute.
pub(super) fn batch(groups: &[Group], statements: &mut Statements) -> Bytes {
    let mut out = BytesMut::new();
    for name in statements.closing.drain(..) {
        frame(&mut out, b'C', &[b"S", &name]);
    }
    for g in groups {
        put_request(&mut out, &g.recipe.request, &g.name, g.parse);
    }
    out.freeze()
}

/// A Bind's tail with no parameters and text results (a simple Query's rows).
fn no_parameters() -> Bytes {
    Bytes::from_static(&[0, 0, 0, 0, 0, 0])
}
