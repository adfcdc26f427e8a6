//! The session's side of the result cache (DESIGN §2): decides, per client frame, whether a
//! simple Query is answered from the cache, forwarded while its response is captured, or
//! just forwarded; tracks what every forwarded statement writes so bumps happen at I2; keeps
//! the session fingerprint and re-establishes the session's settings with a probe on its own
//! upstream connection when they may have changed.
//!
//! The relay calls, in order: [`CacheSession::probe_query`] when idle (inject it upstream),
//! [`CacheSession::on_client_frame`] for every inspected client frame before forwarding it,
//! and [`CacheSession::on_backend_frame`] for every backend frame before relaying it (the
//! probe's frames are swallowed). Plans missing from the memo are computed by the future from
//! [`CacheSession::plan_future`]; the relay holds the frame back until it resolves.

pub mod ack;
mod extended;
pub mod group;
pub mod hooks;
mod lookup;
mod named;
mod planning;
pub mod probe;
mod shared;
pub mod side;
pub mod tracker;
mod wait;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use metrics::{Counter, Histogram};

use crate::cache::{CacheKey, Entry, FillGuard, KeyCheck, Tag, VersionSnapshot};
use crate::cancel::CancelSignal;
use crate::catalog::{CatalogError, SettingNames};
use crate::context::AppContext;
use crate::invalidation::Source;
use crate::planner::plan::{Context, Plan};
use crate::protocol::fields::Reader;
use crate::protocol::frontend::{Bind, Close, Execute, Parse, Target};
use crate::protocol::tags::{backend, frontend};
use crate::session::fingerprint::Fingerprint;
use crate::session::state::SessionState;
use crate::telemetry::names;
use probe::{ProbeReader, ProbeResult};
use tracker::{Expect, Tracker};

/// Probes that may fail in a row before a session gives up on the cache.
const MAX_PROBE_FAILURES: u8 = 3;
/// Probes cancelled (57014) in a row that are retried without counting as failures: a
/// cancel meant for a statement that had just finished says nothing about the session, but
/// a `statement_timeout` shorter than the probe must not make it loop.
const MAX_PROBE_CANCELS: u8 = 8;

/// One cache lookup in this many per session has its hit latency recorded.
const HIT_TIMING_SAMPLE: u32 = 16;

pub use extended::GroupAction;
pub use wait::{WaitFuture, WaitResult};

/// What the relay does with a client frame.
pub enum FrameAction {
    /// Forward it (the session state sees it as usual).
    Forward,
    /// Do not forward it: queue these frames, then ReadyForQuery (idle), to the client
    /// instead (a cache hit; the entry's bytes are shared, not copied).
    Answer(Bytes),
    /// Hold it back (see [`Hold`]), then show it again.
    Hold(Hold),
    /// Forward it, then send these bytes of pgmemo's own right behind it (a Describe of the
    /// portal whose reply is captured and not relayed).
    ForwardThen(Bytes),
}

/// Why the relay holds a client frame (or extended group) back at the head of its buffer.
pub enum Hold {
    /// The plan for this SQL must be computed first (poll [`CacheSession::plan_future`] and
    /// hand the plan to [`CacheSession::plan_ready`]).
    Plan(Bytes),
    /// Another session is running the same query: poll this until it resolves and hand the
    /// result to [`CacheSession::wait_done`].
    Wait(WaitFuture),
}

pub type PlanFuture = Pin<Box<dyn Future<Output = Arc<Plan>> + Send>>;
/// What a lookup decided.
enum Looked {
    Hit(Arc<Entry>),
    Wait(WaitFuture),
    /// Forward it (a miss being captured, or a bypass).
    Forward,
}

/// A missed read whose response is being captured.
struct Capture {
    guard: FillGuard,
    snapshot: VersionSnapshot,
    check: KeyCheck,
    ttl: Duration,
    tags: Box<[Tag]>,
    /// The L2 key and check to store the result under too (with a shared tier).
    l2: Option<(CacheKey, KeyCheck)>,
    frames: BytesMut,
    /// The last frame captured was a CommandComplete.
    complete: bool,
    started: Instant,
    /// The server configuration generation the lookup ran under: a reload seen since makes
    /// the session's fingerprint suspect, so the result is not stored.
    config: u64,
}

struct Metrics {
    hit_seconds: Histogram,
    upstream_seconds: Histogram,
    probes_ok: Counter,
    probes_failed: Counter,
    /// Login probes answered from the login memo (no query sent).
    probes_remembered: Counter,
}

/// One session's cache state.
pub struct CacheSession {
    app: Arc<AppContext>,
    fingerprint: Fingerprint,
    /// Digest of the fingerprint bytes; recomputed after a probe.
    fp_digest: Option<[u8; 16]>,
    cx: Option<Arc<Context>>,
    cx_id: u64,
    probe: Option<ProbeReader>,
    probe_needed: bool,
    /// The server configuration generation when the last probe was sent: a reload seen
    /// since may have changed settings this session did not SET (see `lookup`).
    probe_config: u64,
    /// Probes that failed in a row (a cancel that hit the probe, a statement_timeout, a
    /// replication connection): retried a few times, then the session stays uncached.
    probe_failures: u8,
    /// The login key while nothing of the client's has reached the server: the first
    /// settings may then come from the login memo (see [`login`]).
    login_key: Option<Arc<[u8]>>,
    /// The probe in flight is a login probe: its result goes to the memo, with the epoch
    /// read when it was sent.
    login_probe: Option<(Arc<[u8]>, u64)>,
    /// The session's database (the catalog's key).
    database: Arc<str>,
    /// The custom setting names are being read for the next probe.
    names_fetching: bool,
    /// The names read for the next probe.
    catalog_names: Option<SettingNames>,
    /// The probe in flight was cancelled (57014), and how many were in a row.
    probe_cancelled: bool,
    probe_cancels: u8,
    opted_out: bool,
    encoding_ok: bool,
    tracker: Tracker,
    capture: Option<Capture>,
    /// A plan computed for the frame held at the head of the client buffer.
    /// Custom (dotted) settings this session SET or RESET: the probe reads them back.
    custom_names: Vec<String>,
    ready_plan: Option<Arc<Plan>>,
    /// A statement whose Bind went upstream under its stale plan: its new plan is computed
    /// in the background (see [`CacheSession::background_plan`]).
    background_plan: Option<Bytes>,
    /// The last plan computed for this session that the memos would not hold (too heavy):
    /// a client repeating one large statement (a pipeline of identical Parses) has it
    /// analysed once, not at every message. One per session, bounded like its registry.
    recent_heavy: Option<Arc<Plan>>,
    /// Cache lookups so far (for sampling hit latency).
    lookups: u32,
    /// The outcome of a wait for the Query frame held at the head of the client buffer.
    waited: Option<WaitResult>,
    /// What a shared-tier wait for the held frame found (see [`shared`]).
    shared_ready: Option<shared::SharedReady>,
    /// A commit's acknowledgement to hold until the change stream applied it (see [`ack`]).
    ack_hold: Option<ack::AckFuture>,
    /// The held acknowledgement was released: the relay shows it again, to be relayed as is.
    ack_released: bool,
    /// Cancel requests for this session (a held Query's wait ends on one).
    cancel: Option<Arc<CancelSignal>>,
    /// The session's `statement_timeout` (from the last probe): caps a wait.
    statement_timeout: Option<Duration>,
    /// A missed extended group without a Describe is being forwarded: send one after its Bind
    /// so the entry has the RowDescription a later client may ask for.
    inject_describe: bool,
    /// The reply to that injected Describe is due: capture it, do not relay it.
    strip_describe: bool,
    metrics: Metrics,
    /// This session's presence in its database (pgmemo's side connections to a database
    /// stay open while a session is there); also which texts were released for (`side`).
    side: side::SessionSide,
}

/// What the settings probe needs from the relay (see [`CacheSession::probe_query`]).
pub enum ProbeStep {
    /// Nothing now.
    Idle,
    /// Send these frames upstream.
    Send(Bytes),
    /// Poll this future and hand its answer to [`CacheSession::names_ready`].
    Fetch(NamesFuture),
}

/// The catalog read of a database's custom setting names.
pub type NamesFuture = Pin<Box<dyn Future<Output = Result<SettingNames, CatalogError>> + Send>>;

impl CacheSession {
    pub fn new(
        app: Arc<AppContext>,
        database: &str,
        user: &str,
        params: &[(String, String)],
    ) -> Self {
        let app_side = Arc::clone(&app.side);
        Self {
            app,
            fingerprint: Fingerprint::new(database, user, params),
            fp_digest: None,
            cx: None,
            cx_id: 0,
            probe: None,
            probe_needed: true,
            probe_config: 0,
            probe_failures: 0,
            login_key: Some(crate::catalog::login::key(database, user, params)),
            login_probe: None,
            database: database.into(),
            names_fetching: false,
            catalog_names: None,
            probe_cancelled: false,
            probe_cancels: 0,
            opted_out: false,
            encoding_ok: true,
            tracker: Tracker::default(),
            capture: None,
            custom_names: Vec::new(),
            ready_plan: None,
            background_plan: None,
            recent_heavy: None,
            lookups: 0,
            waited: None,
            shared_ready: None,
            ack_hold: None,
            ack_released: false,
            cancel: None,
            statement_timeout: None,
            inject_describe: false,
            strip_describe: false,
            metrics: Metrics {
                hit_seconds: metrics::histogram!(names::CACHE_HIT_SECONDS),
                upstream_seconds: metrics::histogram!(names::UPSTREAM_QUERY_SECONDS),
                probes_ok: metrics::counter!(names::SESSION_PROBES, "result" => "ok"),
                probes_failed: metrics::counter!(names::SESSION_PROBES, "result" => "error"),
                probes_remembered: metrics::counter!(names::SESSION_PROBES, "result" => "login_memo"),
            },
            side: side::SessionSide::new(&app_side, database),
        }
    }

    /// The signal cancel requests for this session raise.
    pub fn set_cancel_signal(&mut self, signal: Option<Arc<CancelSignal>>) {
        self.cancel = signal;
    }

    /// Whether another settings probe may be tried (not after repeated failures).
    fn may_probe(&self) -> bool {
        self.probe_failures < MAX_PROBE_FAILURES
    }

    fn db_oid(&self) -> u32 {
        self.cx.as_ref().map_or(0, |c| c.db_oid)
    }

    /// While a probe is in flight the relay holds client frames back (their plans need the
    /// probe's answer) and shows every backend frame here whole.
    pub fn probing(&self) -> bool {
        self.probe.is_some() || self.names_fetching
    }

    /// Backend frames must be shown whole (a capture or probe reads them).
    pub fn inspects_all_backend(&self) -> bool {
        self.probe.is_some() || self.capture.is_some() || self.strip_describe
    }

    /// Backend tags write tracking and the fingerprint always need to see.
    pub fn inspects_backend(tag: u8) -> bool {
        matches!(
            tag,
            backend::COMMAND_COMPLETE
                | backend::EMPTY_QUERY_RESPONSE
                | backend::PORTAL_SUSPENDED
                | backend::ERROR_RESPONSE
                | backend::READY_FOR_QUERY
                | backend::PARAMETER_STATUS
        )
    }

    /// What the settings probe needs now, if one is due and the session is idle: to be sent
    /// upstream, or first the database's custom setting names from the catalog (the relay
    /// polls that future and hands its answer to [`names_ready`](Self::names_ready)). A
    /// fresh login whose result is remembered needs neither (see `login`).
    /// With the cache disabled no probe is sent (pgmemo then adds nothing of its own to the
    /// session); writes are still tracked, conservatively, without a context.
    pub fn probe_query(&mut self, state: &SessionState) -> ProbeStep {
        if !self.probe_needed || self.probing() || !state.is_idle() {
            return ProbeStep::Idle;
        }
        if !self.app.cache_enabled() {
            return ProbeStep::Idle;
        }
        // The epoch first: the configuration generation moves before it (see Invalidator).
        let epoch = self.app.caching.cache.versions().epoch();
        let config = self.app.caching.invalidator.config_generation();
        if let Some(key) = self.login_key.as_ref()
            && let Some(known) = self.app.caching.logins.get(key, epoch, config)
        {
            self.login_key = None;
            self.probe_needed = false;
            self.probe_config = config;
            self.metrics.probes_remembered.increment(1);
            self.apply_probe(known);
            return ProbeStep::Idle;
        }
        let catalog = &self.app.caching.catalog;
        let names = match self
            .catalog_names
            .take()
            .or_else(|| catalog.setting_names_now(&self.database))
        {
            Some(SettingNames::Known(names)) => names,
            Some(SettingNames::Unusable(why)) => {
                tracing::debug!(why, "settings probe: custom setting names unusable");
                self.probe_needed = false;
                self.on_probe_done(None);
                return ProbeStep::Idle;
            }
            None => {
                self.names_fetching = true;
                let catalog = Arc::clone(catalog);
                let db = Arc::clone(&self.database);
                return ProbeStep::Fetch(Box::pin(async move { catalog.setting_names(&db).await }));
            }
        };
        if let Some(key) = self.login_key.take() {
            self.login_probe = Some((key, epoch));
        }
        self.probe_needed = false;
        self.probe_config = config;
        self.probe = Some(ProbeReader::default());
        ProbeStep::Send(probe::query(&names, &self.custom_names))
    }

    /// The database's custom setting names arrived (or could not be read).
    pub fn names_ready(&mut self, names: Result<SettingNames, CatalogError>) {
        self.names_fetching = false;
        match names {
            Ok(names) => self.catalog_names = Some(names),
            Err(e) => {
                tracing::debug!(error = %e, "settings probe: custom setting names not read");
                self.probe_needed = false;
                self.on_probe_done(None);
            }
        }
    }

    /// Client bytes are about to be processed: from now on the session's settings may differ
    /// from those of a fresh login.
    pub fn client_spoke(&mut self) {
        self.login_key = None;
    }

    fn on_probe_done(&mut self, result: Option<ProbeResult>) {
        let cancelled = std::mem::take(&mut self.probe_cancelled);
        let Some(r) = result else {
            self.metrics.probes_failed.increment(1);
            if cancelled && self.probe_cancels < MAX_PROBE_CANCELS {
                self.probe_cancels += 1;
            } else {
                self.probe_failures = self.probe_failures.saturating_add(1);
            }
            self.probe_needed = self.probe_failures < MAX_PROBE_FAILURES;
            self.cx = None;
            self.cx_id = 0;
            self.fingerprint.taint("settings probe failed");
            return;
        };
        self.metrics.probes_ok.increment(1);
        self.apply_probe(r);
    }

    /// The session's settings are those of `r` (a probe's answer, or a remembered login's).
    fn apply_probe(&mut self, r: ProbeResult) {
        self.probe_failures = 0;
        self.probe_cancels = 0;
        self.opted_out = r.opted_out;
        self.encoding_ok =
            probe::encoding_is_safe(&r.client_encoding) && r.standard_conforming_strings;
        self.app
            .caching
            .invalidator
            .learn_database(&r.database, r.db_oid);
        let cx = Context {
            database: r.database.as_str().into(),
            db_oid: r.db_oid,
            current_user: r.current_user.as_str().into(),
            search_path: r.search_path.as_str().into(),
            has_temp: r.has_temp,
        };
        self.cx_id = cx.id();
        self.cx = Some(Arc::new(cx));
        // Nothing is in flight at a probe: plans from here on are made for this context.
        self.tracker.context_unknown = false;
        self.statement_timeout = r
            .settings
            .iter()
            .find(|(n, _)| n == "statement_timeout")
            .and_then(|(_, v)| v.parse::<u64>().ok())
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis);
        self.fingerprint.reestablished(&r.settings);
        self.fp_digest = self.fingerprint.bytes().map(digest);
    }

    /// A complete client frame the relay is about to forward.
    pub fn on_client_frame(&mut self, tag: u8, frame: &[u8], state: &SessionState) -> FrameAction {
        if tag != frontend::QUERY {
            // A wait's result belongs to the frame held for it (a Query takes it below, a
            // group in `on_group`); anything forwarded instead makes it stale.
            self.waited = None;
            self.shared_ready = None;
        }
        match tag {
            frontend::QUERY => {
                let sql = query_text(frame);
                let run_own = match self.waited.take() {
                    Some(WaitResult::Hit(entry)) => {
                        return FrameAction::Answer(entry.frames.clone());
                    }
                    Some(WaitResult::Error(answer)) => return FrameAction::Answer(answer),
                    Some(WaitResult::Shared(ready)) => {
                        self.shared_done(ready);
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
                if !run_own {
                    match self.lookup(&plan, state, None) {
                        Looked::Hit(entry) => return FrameAction::Answer(entry.frames.clone()),
                        Looked::Wait(wait) => return FrameAction::Hold(Hold::Wait(wait)),
                        Looked::Forward => {}
                    }
                }
                // PostgreSQL drops the unnamed statement and portal at every simple Query.
                self.tracker.statements.remove(&b""[..]);
                self.tracker.portals.remove(&b""[..]);
                let context_seq = self.tracker.context_now();
                for index in 0..plan.stmts.len() {
                    self.tracker.expect(Expect::Stmt {
                        plan: Arc::clone(&plan),
                        index,
                        context_seq,
                    });
                }
                self.tracker.expect(Expect::Ready);
                FrameAction::Forward
            }
            frontend::PARSE => {
                let Some(Parse { name, sql, .. }) = Parse::read(frame) else {
                    return FrameAction::Forward;
                };
                if let Some(hold) = self.side.hold(&self.app, sql) {
                    return FrameAction::Hold(hold);
                }
                let Some(plan) = self.plan_for(sql) else {
                    return FrameAction::Hold(Hold::Plan(Bytes::copy_from_slice(sql)));
                };
                self.tracker
                    .statements
                    .insert(Bytes::copy_from_slice(name), plan);
                FrameAction::Forward
            }
            frontend::BIND => {
                if let Some(Bind {
                    portal,
                    statement: stmt,
                    ..
                }) = Bind::read(frame)
                {
                    // A statement parsed under another search_path or role: PostgreSQL
                    // re-parses it for the current one, and so does pgmemo.
                    let plan = match self.statement_plan(stmt) {
                        Ok(plan) => Some(plan),
                        Err(Some(sql)) => return FrameAction::Hold(Hold::Plan(sql)),
                        Err(None) => None,
                    };
                    self.tracker
                        .portals
                        .insert(Bytes::copy_from_slice(portal), plan);
                }
                if std::mem::take(&mut self.inject_describe) {
                    self.strip_describe = true;
                    return FrameAction::ForwardThen(Bytes::from_static(
                        crate::protocol::frontend::DESCRIBE_UNNAMED_PORTAL,
                    ));
                }
                FrameAction::Forward
            }
            frontend::EXECUTE => {
                let portal = Execute::read(frame).map_or(&b""[..], |e| e.portal);
                let e = match self.tracker.portals.get(portal) {
                    Some(Some(plan)) => Expect::Stmt {
                        plan: Arc::clone(plan),
                        index: 0,
                        context_seq: self.tracker.context_now(),
                    },
                    _ => Expect::Unknown,
                };
                self.tracker.expect(e);
                FrameAction::Forward
            }
            frontend::CLOSE => {
                match Close::read(frame) {
                    Some(Close {
                        target: Target::Statement,
                        name,
                    }) => {
                        self.tracker.statements.remove(name);
                    }
                    Some(Close {
                        target: Target::Portal,
                        name,
                    }) => {
                        self.tracker.portals.remove(name);
                    }
                    None => {}
                }
                FrameAction::Forward
            }
            frontend::SYNC => {
                self.tracker.expect(Expect::Ready);
                FrameAction::Forward
            }
            frontend::FUNCTION_CALL => {
                // Runs a function by OID: effects and settings changes pgmemo cannot see
                // (the bump waits for its ReadyForQuery).
                self.fingerprint.taint("FunctionCall message");
                self.probe_needed = true;
                self.tracker.expect(Expect::CallReady);
                FrameAction::Forward
            }
            _ => FrameAction::Forward,
        }
    }

    /// A complete backend frame (or, for a streamed one, its header only: `whole = false`)
    /// before it is relayed. Returns `false` when the frame must not reach the client.
    pub fn on_backend_frame(
        &mut self,
        tag: u8,
        frame: &[u8],
        whole: bool,
        state: &SessionState,
    ) -> bool {
        if std::mem::take(&mut self.ack_released) {
            // Seen already, when its hold began.
            return true;
        }
        if let Some(reader) = self.probe.as_mut() {
            if tag == backend::READY_FOR_QUERY {
                if !reader.on_ready() {
                    // The probe's own statement is being closed (its second Sync).
                    return false;
                }
                let reader = self.probe.take().unwrap_or_default();
                let result = reader.finish();
                if let (Some(r), Some((key, epoch))) = (&result, self.login_probe.take()) {
                    self.app
                        .caching
                        .logins
                        .insert(key, r.clone(), epoch, self.probe_config);
                }
                self.on_probe_done(result);
            } else if whole {
                if tag == backend::ERROR_RESPONSE
                    && crate::protocol::fields::error_code(frame)
                        == Some(crate::error::sqlstate::QUERY_CANCELED.as_bytes())
                {
                    self.probe_cancelled = true;
                }
                reader.on_frame(tag, frame);
            } else {
                reader.fail();
            }
            return false;
        }
        if self.strip_describe {
            match tag {
                backend::ROW_DESCRIPTION | backend::NO_DATA => {
                    // The reply to pgmemo's own Describe: kept for the entry, not relayed.
                    self.strip_describe = false;
                    self.capture_frame(tag, frame, whole);
                    return false;
                }
                backend::ERROR_RESPONSE | backend::READY_FOR_QUERY => self.strip_describe = false,
                _ => {}
            }
        }
        self.capture_frame(tag, frame, whole);
        match tag {
            backend::COMMAND_COMPLETE
            | backend::EMPTY_QUERY_RESPONSE
            | backend::PORTAL_SUSPENDED => self.on_completion(frame),
            backend::ERROR_RESPONSE => self.on_error(),
            backend::READY_FOR_QUERY => {
                let status = Reader::body(frame).u8().unwrap_or(b'I');
                // `state` has not seen this frame yet: idle after it when it is the last.
                let idle_after = state.awaiting_ready() <= 1;
                self.fingerprint.on_ready_for_query();
                self.on_ready(status, idle_after);
            }
            backend::PARAMETER_STATUS => {
                let mut r = Reader::body(frame);
                if let (Some(n), Some(v)) = (r.cstr(), r.cstr()) {
                    self.fingerprint.on_parameter_status(
                        &String::from_utf8_lossy(n),
                        &String::from_utf8_lossy(v),
                    );
                }
                self.probe_needed = true;
            }
            _ => {}
        }
        true
    }

    fn capture_frame(&mut self, tag: u8, frame: &[u8], whole: bool) {
        let Some(cap) = self.capture.as_mut() else {
            return;
        };
        match tag {
            backend::ROW_DESCRIPTION | backend::DATA_ROW | backend::COMMAND_COMPLETE if whole => {
                if cap.frames.len() + frame.len() > self.app.caching.cache.max_entry_size() {
                    // Too large to store: stop capturing (waiters run their own query).
                    self.capture = None;
                } else {
                    cap.frames.extend_from_slice(frame);
                    cap.complete = tag == backend::COMMAND_COMPLETE;
                }
            }
            // Replies to the Parse and Bind of an extended group: relayed, not stored.
            backend::PARSE_COMPLETE | backend::BIND_COMPLETE => {}
            backend::READY_FOR_QUERY => {
                let Some(cap) = self.capture.take() else {
                    return;
                };
                self.metrics
                    .upstream_seconds
                    .record(cap.started.elapsed().as_secs_f64());
                let config_current = cap.config == self.app.caching.invalidator.config_generation();
                // A cacheable read's functions are all IMMUTABLE (or STABLE under a rule):
                // trusted to leave the settings alone while it runs, so its rows belong to
                // the key taken at the lookup even if the session is re-probed after it.
                if cap.complete && config_current && Reader::body(frame).u8() == Some(b'I') {
                    let frames = cap.frames.freeze();
                    if let (Some(tier), Some((key, check))) =
                        (self.app.caching.shared.as_ref(), cap.l2)
                        && cap.snapshot.is_current(self.app.caching.cache.versions())
                    {
                        shared::put(tier, key, check, frames.clone(), cap.ttl);
                    }
                    let entry = Entry::new(cap.check, frames, cap.ttl, cap.tags);
                    self.app
                        .caching
                        .cache
                        .complete(cap.guard, &cap.snapshot, entry);
                }
            }
            // An error, a notice, a notification, a settings report, COPY, or a frame too
            // large to hold: relayed, never stored.
            _ => self.capture = None,
        }
    }

    /// After [`CacheSession::on_backend_frame`] accepted a frame: the wait to finish before
    /// relaying it (the relay keeps the frame, polls the future, calls
    /// [`CacheSession::ack_done`], then shows the frame again).
    pub fn take_ack_hold(&mut self) -> Option<ack::AckFuture> {
        self.ack_hold.take()
    }

    /// The held acknowledgement may go: the next frame shown is it.
    pub fn ack_done(&mut self) {
        self.ack_released = true;
    }

    /// The session is over: bump whatever may have been written and not yet bumped (a
    /// COMMIT whose answer never arrived may still have committed).
    pub fn finish(&mut self) {
        self.capture = None;
        let written = self.tracker.unsettled();
        if !written.is_empty() {
            self.app.caching.invalidator.bump(&written, Source::Write);
        }
    }
}

/// The SQL text of a Query frame (without its terminating NUL).
fn query_text(frame: &[u8]) -> &[u8] {
    let body = frame.get(5..).unwrap_or_default();
    body.strip_suffix(&[0]).unwrap_or(body)
}

fn digest(bytes: &[u8]) -> [u8; 16] {
    use std::hash::Hasher;
    let mut h = siphasher::sip128::SipHasher13::new();
    h.write(bytes);
    siphasher::sip128::Hasher128::finish128(&h).as_bytes()
}
