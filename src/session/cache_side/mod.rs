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
mod ahead;
pub mod background;
mod before_ack;
mod behind;
mod capture;
mod explain;
mod extended;
pub mod group;
pub mod hooks;
pub mod hot;
mod lookup;
mod named;
mod pipelined;
mod planning;
pub mod probe;
mod replies;
mod requests;
mod resume;
mod settings;
mod shape_stats;
pub mod side;
mod through;
pub mod tracker;
mod verify;
mod wait;
pub mod warming;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use metrics::{Counter, Histogram};

use crate::cache::Entry;
use crate::cancel::CancelSignal;
use crate::catalog::{CatalogError, SettingNames};
use crate::context::AppContext;
use crate::invalidation::Source;
use crate::planner::plan::{Context, Plan};
use crate::protocol::fields::Reader;
use crate::protocol::frontend::{Bind, Close, Execute, Parse, Target};
use crate::protocol::tags::{backend, frontend};
use crate::session::fingerprint::Fingerprint;
use crate::session::replies::Completion;
use crate::session::state::SessionState;
use crate::telemetry::names;
use capture::Capture;
use probe::{ProbeReader, ProbeResult};
use tracker::Tracker;

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
    /// Forward this Parse; the session state records its statement with this plan.
    ForwardParse(Arc<Plan>),
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

struct Metrics {
    hit_seconds: Histogram,
    upstream_seconds: Histogram,
    probes_ok: Counter,
    probes_failed: Counter,
    /// Login probes answered from the login memo (no query sent).
    probes_remembered: Counter,
    /// Sampled lookups whose relations were all pinned to rows, and the others.
    pinned: [Counter; 2],
}

/// One session's cache state.
pub struct CacheSession {
    app: Arc<AppContext>,
    fingerprint: Fingerprint,
    /// Digest of the fingerprint bytes; recomputed after a probe.
    fp_digest: Option<[u8; 16]>,
    cx: Option<Arc<Context>>,
    cx_id: u64,
    /// The settings probe: whether one is due, the one in flight, what it needs first.
    probe: settings::SettingsProbe,
    /// The session's database (the catalog's key).
    database: Arc<str>,
    /// How the session logged in: recipes carry it, for the background refresher.
    login: Arc<crate::refresh::pool::LoginKey>,
    opted_out: bool,
    encoding_ok: bool,
    /// The client encoding was UTF-8 at the last probe: text key values (row pins) are
    /// compared as UTF-8 bytes, the form change data capture sees them in.
    utf8: bool,
    tracker: Tracker,
    capture: Option<Capture>,
    /// Custom (dotted) settings this session SET or RESET: the probe reads them back.
    custom_names: Vec<String>,
    /// What the frame held at the head of the client buffer waited for (see [`resume`]).
    held: resume::Held,
    /// A statement whose Bind went upstream under its stale plan: its new plan is computed
    /// in the background (see [`CacheSession::background_plan`]).
    background_plan: Option<Bytes>,
    /// The last plan computed for this session that the memos would not hold (too heavy):
    /// a client repeating one large statement (a pipeline of identical Parses) has it
    /// analysed once, not at every message. One per session, bounded like its registry.
    recent_heavy: Option<Arc<Plan>>,
    /// Cache lookups so far (for sampling hit latency).
    lookups: u32,
    /// This session's draws for verify mode's sampling (see `refresh::verify`): its own, so
    /// the hit path shares no state to decide.
    rng: crate::rng::Rng,
    /// The dependencies of the current lookup (reused: the hit path does not allocate
    /// them; as long as the largest plan's, which the planner bounds).
    deps: Vec<crate::cache::Dep>,
    /// A commit's acknowledgement to hold until the change stream applied it (see [`ack`]),
    /// the shared tier has its bump, and its background re-runs ended (see [`before_ack`]).
    ack: resume::AckHold,
    /// Cancel requests for this session (a held Query's wait ends on one).
    cancel: Option<Arc<CancelSignal>>,
    /// The session's `statement_timeout` (from the last probe): caps a wait.
    statement_timeout: Option<Duration>,
    /// pgmemo's own Describe for a missed extended group being forwarded.
    describe: resume::Describe,
    metrics: Metrics,
    /// A write-through running on this connection (see [`through`]).
    through: Option<through::Through>,
    /// The writer's ReadyForQuery, once its write-through ended, for the relay to send.
    through_ready: Option<Bytes>,
    /// The counters the last commit bumped on write-through tables.
    through_deps: Vec<crate::cache::Dep>,
    /// The statements write-through keeps prepared on this connection.
    through_statements: through::Statements,
    /// Re-runs sent right behind a write, until its ReadyForQuery (see [`pipelined`]).
    sent: Option<pipelined::Sent>,
    /// What that write's commit bumped, taken at its ReadyForQuery.
    committed: Option<crate::invalidation::Written>,
    /// This session's presence in its database (pgmemo's side connections to a database
    /// stay open while a session is there); also which texts were released for (`side`).
    side: side::SessionSide,
    /// The statement whose upstream time is being measured for its shape's statistics
    /// (see [`shape_stats`]).
    upstream_timer: Option<(Arc<crate::planner::stats::ShapeStats>, std::time::Instant)>,
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
            probe: settings::SettingsProbe::new(crate::catalog::login::key(database, user, params)),
            database: database.into(),
            login: Arc::new(crate::refresh::pool::LoginKey {
                database: database.to_owned(),
                user: user.to_owned(),
                params: params.to_vec(),
            }),
            opted_out: false,
            encoding_ok: true,
            utf8: false,
            tracker: Tracker::default(),
            capture: None,
            custom_names: Vec::new(),
            held: resume::Held::default(),
            background_plan: None,
            recent_heavy: None,
            lookups: 0,
            rng: crate::rng::Rng::new(session_seed()),
            deps: Vec::new(),
            ack: resume::AckHold::No,
            cancel: None,
            statement_timeout: None,
            describe: resume::Describe::No,
            metrics: Metrics {
                hit_seconds: metrics::histogram!(names::CACHE_HIT_SECONDS),
                upstream_seconds: metrics::histogram!(names::UPSTREAM_QUERY_SECONDS),
                probes_ok: metrics::counter!(names::SESSION_PROBES, "result" => "ok"),
                probes_failed: metrics::counter!(names::SESSION_PROBES, "result" => "error"),
                probes_remembered: metrics::counter!(names::SESSION_PROBES, "result" => "login_memo"),
                pinned: ["table", "rows"]
                    .map(|p| metrics::counter!(names::CACHE_PINNED_LOOKUPS, "pinned" => p)),
            },
            through: None,
            through_ready: None,
            through_deps: Vec::new(),
            through_statements: through::Statements::default(),
            sent: None,
            committed: None,
            side: side::SessionSide::new(&app_side, database),
            upstream_timer: None,
        }
    }

    /// The signal cancel requests for this session raise.
    pub fn set_cancel_signal(&mut self, signal: Option<Arc<CancelSignal>>) {
        self.cancel = signal;
    }

    fn db_oid(&self) -> u32 {
        self.cx.as_ref().map_or(0, |c| c.db_oid)
    }

    /// The session is over: bump whatever may have been written and not yet bumped (a
    /// COMMIT whose answer never arrived may still have committed).
    pub fn finish(&mut self, state: &SessionState) {
        self.capture = None;
        let written = self.tracker.unsettled(state.replies());
        if !written.is_empty() {
            self.app.services.invalidator.bump(&written, Source::Write);
        }
    }
}

/// A seed that differs between sessions (std's per-instance random hasher keys), so
/// sessions do not sample the same hits of the same sequence.
fn session_seed() -> u64 {
    use std::hash::BuildHasher;
    std::hash::RandomState::new().hash_one(0u8)
}

/// The SQL text of a Query frame (without its terminating NUL).
fn query_text(frame: &[u8]) -> &[u8] {
    let body = frame.get(5..).unwrap_or_default();
    body.strip_suffix(&[0]).unwrap_or(body)
}

pub(super) fn digest(bytes: &[u8]) -> [u8; 16] {
    use std::hash::Hasher;
    let mut h = siphasher::sip128::SipHasher13::new();
    h.write(bytes);
    siphasher::sip128::Hasher128::finish128(&h).as_bytes()
}
