//! The session fingerprint (DESIGN §1.4, deny-by-default): a canonical encoding of every piece
//! of session state that can change a result — database, session user, startup parameters,
//! ParameterStatus values and every setting change seen in SQL, applied with transaction
//! semantics — or `Tainted` once the session did something this model cannot follow.
//!
//! Soundness rule: two sessions with equal [`Fingerprint::bytes`] must have equal
//! result-affecting state. Where unsure, the model keeps more (raw text, explicit markers): a
//! needless difference only costs a cache miss, a wrong equality serves another session's rows.
//!
//! Caller contract (the wiring lives in the session, later):
//! - [`Fingerprint::new`] with the startup packet; [`Fingerprint::on_parameter_status`] for every
//!   ParameterStatus; [`Fingerprint::on_ready_for_query`] at every ReadyForQuery (reports are
//!   expected only for what the statements since the previous one changed; before the first
//!   ReadyForQuery every report is part of the baseline).
//! - [`Fingerprint::on_statement`] for each statement. Outside a block, call it only once the
//!   statement succeeded (a failed SET changes nothing). Inside a block (explicit, or the
//!   implicit one of a multi-statement simple Query) changes are tentative: call
//!   [`Fingerprint::on_begin`] when the block opens and [`Fingerprint::on_transaction_end`] when
//!   it ends (PREPARE TRANSACTION keeps the session's SETs: `committed = true`; COMMIT AND CHAIN
//!   is an end then a begin). Transaction control is reported only through these methods and
//!   the savepoint ones, once the server confirmed it; `on_statement` ignores it.
//! - [`Fingerprint::taint`] for what only the caller can see: a non-immutable function (it may
//!   call `set_config`), a FunctionCall message, an EXECUTE whose prepared statement does.
//! - Re-establishing after a taint: when idle (ReadyForQuery `I`), run on the upstream
//!   `SELECT name, setting FROM pg_settings WHERE source <> 'default'` plus
//!   `SELECT current_user, session_user, current_database()`, and pass every row (the three
//!   values as `current_user`, `session_user`, `current_database`) to
//!   [`Fingerprint::reestablished`]. The probe's values join the fingerprint; it does not see
//!   `ALTER ROLE/DATABASE ... SET` done after login, which the catalog poller covers.

use std::cell::OnceCell;
use std::collections::{BTreeMap, BTreeSet};

use crate::sql::{Class, DiscardKind, SessionChange, StatementInfo};

mod settings;

pub use settings::{EXCLUDED_PREFIXES, EXCLUDED_SETTINGS, is_excluded};
use settings::{NO_RESET_ALL, put, transaction_modes};

/// Settings tracked at most (startup parameters, reports, probe and changes together); more
/// taints the session.
pub const MAX_SETTINGS: usize = 1024;
/// Bytes of names and values tracked at most; more taints the session. With
/// [`MAX_SAVEPOINTS`] snapshots this bounds one session's fingerprint memory to about 2 MiB.
pub const MAX_STATE_BYTES: usize = 64 * 1024;
/// Savepoints tracked at most inside one block (each keeps a snapshot); more taints.
pub const MAX_SAVEPOINTS: usize = 32;

/// Values of the `role` and `session_authorization` overrides; the prefixes keep a role named
/// `none` apart from `SET ROLE NONE`, and a normalised name apart from raw SET text.
const ROLE_NONE: &str = "none";
const NAMED: &str = "name:";
const RAW: &str = "raw:";

/// Overrides on top of the baseline. A value of `None` means "back to the reset value" where
/// that must be told apart from "never changed" (see [`Fingerprint::reset_value`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct State {
    session: BTreeMap<String, Option<String>>,
    /// `SET LOCAL` values, dropped when the block ends.
    local: BTreeMap<String, Option<String>>,
    /// `RESET ALL` ran after a probe: every setting not overridden is at its reset value.
    reset_all: bool,
}

impl State {
    /// The effective overrides: local values over session ones.
    fn effective(&self) -> BTreeMap<&str, Option<&str>> {
        let mut out: BTreeMap<&str, Option<&str>> = self
            .session
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref()))
            .collect();
        for (k, v) in &self.local {
            out.insert(k.as_str(), v.as_deref());
        }
        out
    }

    fn effective_value(&self, name: &str) -> Option<Option<&str>> {
        self.local
            .get(name)
            .or_else(|| self.session.get(name))
            .map(|v| v.as_deref())
    }
}

#[derive(Debug)]
struct Txn {
    start: State,
    savepoints: Vec<(String, State)>,
}

/// One session's fingerprint state. Not `Sync` (the encoding is cached in a `OnceCell`); it
/// belongs to the session's task.
#[derive(Debug)]
pub struct Fingerprint {
    database: String,
    user: String,
    /// Startup parameters, names lower-cased, sorted, values raw (`options` included whole).
    startup: Vec<(String, String)>,
    /// The startup packet may set a role (`role` or inside `options`): SET SESSION
    /// AUTHORIZATION and DISCARD ALL then have effects this model does not follow.
    startup_mentions_role: bool,
    /// Latest value the server reported for each parameter.
    reported: BTreeMap<String, String>,
    /// Settings read by the last re-establishing probe.
    probe: Option<BTreeMap<String, String>>,
    state: State,
    txn: Option<Txn>,
    /// The first ReadyForQuery was seen: reports are no longer baseline.
    started: bool,
    /// Names changed by statements since the last ReadyForQuery (reports for them are
    /// expected), or any name after RESET ALL and the like.
    expected: BTreeSet<String>,
    expect_any: bool,
    /// Names reported since the last ReadyForQuery.
    unexplained: BTreeSet<String>,
    taint: Option<String>,
    encoded: OnceCell<Vec<u8>>,
}

impl Fingerprint {
    /// A fingerprint for a session that logged in to `database` as `user` with the startup
    /// parameters `params` (all of them, `options` raw; `user`/`database` may repeat).
    pub fn new(database: &str, user: &str, params: &[(String, String)]) -> Self {
        let mut startup: Vec<(String, String)> = params
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
            .filter(|(n, _)| !is_excluded(n))
            .collect();
        // Stable: a repeated name keeps its order, so the encoding stays faithful.
        startup.sort_by(|a, b| a.0.cmp(&b.0));
        // A substring test on purpose: a false positive only makes SET SESSION AUTHORIZATION
        // and DISCARD ALL taint.
        let startup_mentions_role = startup.iter().any(|(n, v)| {
            n == "role"
                || n == "session_authorization"
                || (n == "options" && {
                    let v = v.to_ascii_lowercase();
                    v.contains("role") || v.contains("session_authorization")
                })
        });
        let mut fp = Self {
            database: database.to_owned(),
            user: user.to_owned(),
            startup,
            startup_mentions_role,
            reported: BTreeMap::new(),
            probe: None,
            state: State::default(),
            txn: None,
            started: false,
            expected: BTreeSet::new(),
            expect_any: false,
            unexplained: BTreeSet::new(),
            taint: None,
            encoded: OnceCell::new(),
        };
        fp.check_bounds();
        fp
    }

    /// Whether the session may use the cache.
    pub fn cacheable(&self) -> bool {
        self.taint.is_none()
    }

    /// Why the session may not use the cache, if it may not.
    pub fn taint_reason(&self) -> Option<&str> {
        self.taint.as_deref()
    }

    /// The values of `names` (lower-case) that differ from their defaults, when the
    /// session's settings are exactly those its last probe read: no change modelled since,
    /// not tainted, no transaction block. `None` otherwise.
    pub fn settled(&self, names: &[&str]) -> Option<Vec<(String, String)>> {
        if self.taint.is_some() || self.txn.is_some() || self.state != State::default() {
            return None;
        }
        let probe = self.probe.as_ref()?;
        Some(
            names
                .iter()
                .filter_map(|n| probe.get(*n).map(|v| ((*n).to_owned(), v.clone())))
                .collect(),
        )
    }

    /// Why a write of this session cannot be applied later by another connection that sets
    /// only the recorded settings (write-behind): it is read-only (PostgreSQL would refuse
    /// the write), replicates as a replica (triggers would not fire), or has custom
    /// settings that policies, defaults or triggers may read. `None`: no such reason known.
    pub fn behind_blocker(&self) -> Option<&'static str> {
        let probe = self.probe.as_ref()?;
        if probe
            .get("default_transaction_read_only")
            .is_some_and(|v| v == "on")
        {
            return Some("read_only");
        }
        if probe
            .get("session_replication_role")
            .is_some_and(|v| v != "origin")
        {
            return Some("replication_role");
        }
        if probe
            .iter()
            .any(|(k, v)| k.contains('.') && v != "(unset)" && !v.is_empty())
        {
            return Some("custom_settings");
        }
        None
    }

    /// Whether a transaction block is open (as far as this model was told).
    pub fn in_block(&self) -> bool {
        self.txn.is_some()
    }

    /// Stops cache use until [`Fingerprint::reestablished`]; the first reason is kept.
    pub fn taint(&mut self, reason: impl Into<String>) {
        if self.taint.is_none() {
            self.taint = Some(reason.into());
        }
        self.changed();
    }

    /// The canonical encoding of the effective state; `None` while tainted. Computed on first
    /// use after a change, then cached.
    pub fn bytes(&self) -> Option<&[u8]> {
        if self.taint.is_some() {
            return None;
        }
        Some(self.encoded.get_or_init(|| self.encode()).as_slice())
    }

    /// A ParameterStatus from the server. Excluded names are ignored. A report nothing
    /// explains by the next ReadyForQuery (no statement since the previous one changed it)
    /// taints; judged then because servers before 14 report during the statement, before
    /// the session may have passed it to [`Fingerprint::on_statement`].
    pub fn on_parameter_status(&mut self, name: &str, value: &str) {
        let name = name.to_ascii_lowercase();
        if is_excluded(&name) {
            return;
        }
        if self.started && !self.unexplained.contains(&name) {
            if self.unexplained.len() >= MAX_SETTINGS {
                self.taint("too many ParameterStatus messages");
            } else {
                self.unexplained.insert(name.clone());
            }
        }
        self.reported.insert(name, value.to_owned());
        self.changed();
    }

    /// A ReadyForQuery: reports are judged, and the window in which they were expected closes.
    pub fn on_ready_for_query(&mut self) {
        let unexplained = std::mem::take(&mut self.unexplained);
        if !self.expect_any
            && let Some(name) = unexplained.iter().find(|n| !self.expected.contains(*n))
        {
            self.taint(format!("unexpected ParameterStatus {name}"));
        }
        self.started = true;
        self.expected.clear();
        self.expect_any = false;
    }

    /// A transaction block opened (no-op if one is open).
    pub fn on_begin(&mut self) {
        if self.txn.is_none() {
            let mut start = self.state.clone();
            start.local.clear();
            self.txn = Some(Txn {
                start,
                savepoints: Vec::new(),
            });
        }
    }

    /// The block ended: a commit keeps session-level SETs, a rollback undoes them; SET LOCAL
    /// ends either way.
    pub fn on_transaction_end(&mut self, committed: bool) {
        let Some(txn) = self.txn.take() else { return };
        let mut next = if committed {
            self.state.clone()
        } else {
            txn.start
        };
        next.local.clear();
        self.replace_state(next);
    }

    /// `SAVEPOINT name` succeeded.
    pub fn on_savepoint(&mut self, name: &str) {
        let snapshot = self.state.clone();
        let Some(txn) = self.txn.as_mut() else { return };
        if txn.savepoints.len() >= MAX_SAVEPOINTS {
            self.taint("too many savepoints to track");
            return;
        }
        txn.savepoints.push((name.to_owned(), snapshot));
    }

    /// `ROLLBACK TO SAVEPOINT name` succeeded: changes after it are undone; it stays.
    pub fn on_rollback_to(&mut self, name: &str) {
        let Some(txn) = self.txn.as_mut() else { return };
        let Some(pos) = txn.savepoints.iter().rposition(|(n, _)| n == name) else {
            self.taint(format!("rollback to an untracked savepoint {name}"));
            return;
        };
        txn.savepoints.truncate(pos + 1);
        let Some((_, snapshot)) = txn.savepoints.last() else {
            return;
        };
        let snapshot = snapshot.clone();
        self.replace_state(snapshot);
    }

    /// `RELEASE SAVEPOINT name` succeeded: it and later savepoints go; changes stay.
    pub fn on_release(&mut self, name: &str) {
        let Some(txn) = self.txn.as_mut() else { return };
        match txn.savepoints.iter().rposition(|(n, _)| n == name) {
            Some(pos) => txn.savepoints.truncate(pos),
            None => self.taint(format!("release of an untracked savepoint {name}")),
        }
    }

    /// Applies one analysed statement (see the module doc for when to call it).
    pub fn on_statement(&mut self, info: &StatementInfo) {
        if info.taints_session {
            self.taint(format!(
                "statement may change session state: {:?}",
                info.class
            ));
            return;
        }
        if info.functions.iter().any(|f| f.name == "set_config") {
            self.taint("set_config call");
            return;
        }
        if let Class::SessionChange(change) = &info.class {
            self.apply(change);
        }
    }

    /// A full settings snapshot (see the module doc for the probe) replaces what was modelled
    /// and clears the taint. Refused (returns false) inside a block or when over the bounds.
    pub fn reestablished(&mut self, settings: &[(String, String)]) -> bool {
        if self.txn.is_some() {
            return false;
        }
        let probe: BTreeMap<String, String> = settings
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
            .filter(|(n, _)| !is_excluded(n))
            .collect();
        let saved = (self.probe.replace(probe), std::mem::take(&mut self.state));
        if self.over_bounds() {
            (self.probe, self.state) = saved;
            self.taint("settings probe too large");
            return false;
        }
        self.taint = None;
        self.changed();
        true
    }

    fn apply(&mut self, change: &SessionChange) {
        // Tainted: the state is rebuilt by `reestablished`; not tracking keeps memory bounded.
        if self.taint.is_some() {
            return;
        }
        match change {
            SessionChange::Set { name, value, local } => match name.as_str() {
                "role" => {
                    let v = value.as_ref().map(|v| format!("{RAW}{v}"));
                    self.set("role", v, *local);
                }
                "session_authorization" => {
                    let v = value.as_ref().map(|v| format!("{RAW}{v}"));
                    self.set_session_authorization(v, *local);
                }
                "session_characteristics" | "transaction" => {
                    let session = name == "session_characteristics";
                    match value.as_deref().and_then(|v| transaction_modes(v, session)) {
                        Some(modes) => {
                            for (n, v) in modes {
                                self.set(n, Some(v), *local);
                            }
                        }
                        None => self.taint(format!("SET {name} not modelled")),
                    }
                }
                _ => self.set(name, value.clone(), *local),
            },
            SessionChange::Reset { name: Some(name) } => match name.as_str() {
                "session_authorization" => self.set_session_authorization(None, false),
                _ => self.set(name, None, false),
            },
            SessionChange::Reset { name: None } => {
                let keep = |k: &String, _: &mut Option<String>| NO_RESET_ALL.contains(&k.as_str());
                self.state.session.retain(keep);
                self.state.local.retain(keep);
                if self.probe.is_some() {
                    self.state.reset_all = true;
                }
                self.expect_any = true;
                self.changed();
            }
            SessionChange::SetRole { role, local } => {
                let v = match role {
                    Some(r) => format!("{NAMED}{r}"),
                    None => ROLE_NONE.to_owned(),
                };
                self.set("role", Some(v), *local);
            }
            SessionChange::ResetRole => self.set("role", None, false),
            SessionChange::SetSessionAuthorization { user, local } => {
                let v = user.as_ref().map(|u| format!("{NAMED}{u}"));
                self.set_session_authorization(v, *local);
            }
            SessionChange::Discard(DiscardKind::All) => self.discard_all(),
            SessionChange::Discard(_)
            | SessionChange::Prepare { .. }
            | SessionChange::Deallocate { .. } => {}
            SessionChange::Unrecognized => self.taint("unrecognised SET/RESET form"),
        }
    }

    /// One setting change. `value == None` is `DEFAULT`/`RESET`.
    fn set(&mut self, name: &str, value: Option<String>, local: bool) {
        if is_excluded(name) {
            return;
        }
        if local {
            // Outside a block PostgreSQL ignores SET LOCAL (with a warning).
            if self.txn.is_none() {
                return;
            }
            self.state.local.insert(name.to_owned(), value);
        } else {
            // A session SET also replaces an earlier SET LOCAL of the same block.
            self.state.local.remove(name);
            match value {
                Some(v) => {
                    self.state.session.insert(name.to_owned(), Some(v));
                }
                None if self.probe.is_none() || self.state.reset_all => {
                    // Back to the reset value, which is what "never changed" also means here.
                    self.state.session.remove(name);
                }
                None => {
                    // The probe may hold a different current value: mark the reset.
                    self.state.session.insert(name.to_owned(), None);
                }
            }
        }
        self.expect(name);
        self.changed();
    }

    /// SET/RESET SESSION AUTHORIZATION also deactivates any SET ROLE, on some server versions
    /// only and also when a block rolls it back; modelled only where that cannot matter.
    fn set_session_authorization(&mut self, value: Option<String>, local: bool) {
        if self.txn.is_some() || self.role_may_be_active() {
            self.taint("SET SESSION AUTHORIZATION with a role or in a block");
            return;
        }
        self.set("session_authorization", value, local);
    }

    /// DISCARD ALL = SET SESSION AUTHORIZATION DEFAULT + RESET ALL (+ non-setting state): the
    /// session is back at its startup values.
    fn discard_all(&mut self) {
        if self.txn.is_some() || self.role_may_be_active() {
            self.taint("DISCARD ALL with a role or in a block");
            return;
        }
        self.state = State::default();
        self.probe = None;
        self.expect_any = true;
        self.changed();
    }

    fn role_may_be_active(&self) -> bool {
        match self.state.effective_value("role") {
            Some(Some(v)) => v != ROLE_NONE,
            _ => self.startup_mentions_role || self.probe.is_some(),
        }
    }

    fn expect(&mut self, name: &str) {
        self.expected.insert(name.to_owned());
        if name == "role" || name == "session_authorization" {
            self.expected.insert("is_superuser".to_owned());
            self.expected.insert("session_authorization".to_owned());
        }
    }

    /// Replaces the state after a rollback or commit; reports for what changed are expected.
    fn replace_state(&mut self, next: State) {
        if next.reset_all != self.state.reset_all {
            self.expect_any = true;
        }
        let mut names: Vec<String> = Vec::new();
        {
            let (old, new) = (self.state.effective(), next.effective());
            for (k, v) in old.iter().chain(new.iter()) {
                if old.get(k) != Some(v) || new.get(k) != Some(v) {
                    names.push((*k).to_owned());
                }
            }
        }
        for n in names {
            self.expect(&n);
        }
        self.state = next;
        self.changed();
    }

    fn count_and_bytes(&self) -> (usize, usize) {
        let pairs = self
            .startup
            .iter()
            .map(|(n, v)| n.len() + v.len())
            .chain(self.reported.iter().map(|(n, v)| n.len() + v.len()))
            .chain(self.probe.iter().flatten().map(|(n, v)| n.len() + v.len()))
            .chain(
                self.state
                    .session
                    .iter()
                    .map(|(n, v)| n.len() + v.as_ref().map_or(0, String::len)),
            )
            .chain(
                self.state
                    .local
                    .iter()
                    .map(|(n, v)| n.len() + v.as_ref().map_or(0, String::len)),
            );
        pairs.fold((0, 0), |(c, b), len| (c + 1, b + len))
    }

    fn over_bounds(&self) -> bool {
        let (count, bytes) = self.count_and_bytes();
        count > MAX_SETTINGS || bytes + self.database.len() + self.user.len() > MAX_STATE_BYTES
    }

    fn check_bounds(&mut self) {
        if self.taint.is_none() && self.over_bounds() {
            self.taint = Some("too many settings to track".to_owned());
        }
    }

    /// Every mutation ends here: drop the cached encoding and enforce the bounds.
    fn changed(&mut self) {
        self.encoded = OnceCell::new();
        self.check_bounds();
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"pgmemo-fp/1");
        put(&mut out, b'D', &self.database, Some(""));
        put(&mut out, b'U', &self.user, Some(""));
        for (n, v) in &self.startup {
            put(&mut out, b'S', n, Some(v));
        }
        for (n, v) in &self.reported {
            put(&mut out, b'P', n, Some(v));
        }
        if let Some(probe) = &self.probe {
            out.push(b'Q');
            for (n, v) in probe {
                put(&mut out, b'q', n, Some(v));
            }
        }
        if self.state.reset_all {
            out.push(b'A');
        }
        for (n, v) in self.state.effective() {
            put(&mut out, b'O', n, v);
        }
        out
    }
}

#[cfg(test)]
mod tests;
