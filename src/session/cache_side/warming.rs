//! Warming (issue 19): the `[[warm]]` queries, and the previous run's hot keys (see `hot`),
//! run at start-up (with `warming.at_start`) and after every whole-cache flush or other
//! whole-cache invalidation of this instance that warming runs after (see
//! `invalidation::rewarms_after`: DDL, a change stream resynchronised, catalog and server
//! configuration changes; not the causes that recur with writes), and their results stored
//! under exactly the key a client session would look up, so that its first request is a
//! hit. A run after start-up warms this run's hottest keys merged with those read at start.
//! `/readyz` reports not ready until the run at start-up has ended or `warming.timeout` has
//! passed (see `refresh::progress`); later runs never make it unready.
//!
//! A flush starts a run at once. Invalidations are coalesced: a run starts once none came
//! for [`QUIET`] (at most [`MAX_DELAY`] after the first), so a burst of DDL (a migration)
//! starts one run, after it; one that comes while a run goes starts one more after it
//! (what that run stored before it is unreachable). One that comes before a run's first
//! query (while it waits for change streams to settle) is covered by that run.
//!
//! Each query runs like a background refresh (`background`): on a connection of pgmemo's
//! own, logged in with a client's startup packet (database, user and the entry's `settings`
//! as startup parameters, or a hot key's recorded login) and only when `[refresh]` gives
//! pgmemo that login; the connection's fingerprint is built as a session builds its own
//! (its settings probe, remembered per login), so a client that logs in the same way has
//! the same fingerprint, and a hot key is stored only when that fingerprint is the one it
//! was read under. A warm query has no plan yet: it is planned under the connection's
//! context as a session's statement is, and refused (logged, counted) when pgmemo would
//! not cache it for such a session. Its fill is led as a refresh's is (its snapshot read
//! before it is sent, I1), so a write committed meanwhile leaves it unstored — a warmed
//! result is never stale — and its recipe is filed, so write-through refreshes it.
//!
//! The request is the one clients send most for it: a statement without parameters as a
//! simple Query (psql, psycopg, pgbench `-M simple`, libpq's `PQexec`), one with
//! parameters as Parse with no declared types, Bind with every parameter in text format and
//! one result format code (text), Describe, Execute — byte for byte what libpq's
//! `PQexecParams`/`PQprepare` send without types (psql, pgbench `-M extended`/`prepared`).
//! The key covers those bytes: clients that declare types or bind in binary get other keys.
//!
//! Queries run `refresh.pool_size` at a time on a pool of their own, closed when the run
//! ends. Before the first one, the run waits for change streams still connecting (each
//! bumps the epoch when it becomes consistent, which would drop what was warmed), and it
//! keeps pgmemo's side connections to each warmed database open for [`HOLD`] (as a client
//! session would), so the first client finds its catalog watched and its stream serving.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::background::{self, Skip};
use super::through::{self, Outcome};
use crate::cache::entry::Origin;
use crate::cdc::hub::State;
use crate::config::{UpstreamTarget, WarmParam, WarmQuery};
use crate::context::AppContext;
use crate::planner::bypass::BypassReason;
use crate::protocol::tags::backend;
use crate::refresh::pool::{self, LoginKey, Pool};
use crate::refresh::progress::Trigger;
use crate::refresh::recipes::{Recipe, Request};
use crate::telemetry::names;

/// How long pgmemo's side connections to a warmed database stay open after its warming
/// (unless a statement needs the database free): long enough for the first clients of a
/// deployment to arrive; without it they close within a second and the first client's
/// reads would wait for the catalog's next poll instead of hitting.
pub const HOLD: Duration = Duration::from_secs(300);
/// How often the run looks whether change streams are still connecting.
const SETTLE_POLL: Duration = Duration::from_millis(20);
/// Characters of a query shown in a log line.
const SHOWN: usize = 80;
/// How long no whole-cache invalidation must come before a run after some starts.
pub const QUIET: Duration = Duration::from_secs(1);
/// The longest a run waits for invalidations to stop: under a steady stream of them (DDL
/// more often than every [`QUIET`]), one run per this much, not one per invalidation nor
/// none at all.
pub const MAX_DELAY: Duration = Duration::from_secs(30);

/// Where a query to warm comes from (the metric's `source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    Config,
    HotKeys,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::HotKeys => "hot_keys",
        }
    }
}

/// One result to warm.
pub(super) struct Item {
    pub source: Source,
    pub login: Arc<LoginKey>,
    pub request: Request,
    /// A hot key's recorded fingerprint digest: stored only when the login reproduces it.
    pub expect: Option<[u8; 16]>,
}

/// Why a query warmed nothing.
enum Miss {
    /// A step shared with the background refresher said no.
    Skip(Skip),
    /// pgmemo would not cache it for this session (the plan's reason, or the session's).
    Refused(BypassReason),
    /// The database's change stream does not serve: its sessions do not use the cache.
    NotServing,
    /// The result came back but the cache did not take it (a write since its snapshot).
    NotStored,
    /// `warming.timeout` passed first.
    Timeout,
}

impl Miss {
    fn label(&self) -> &'static str {
        match self {
            Self::Skip(skip) => skip.label(),
            Self::Refused(_) => "refused",
            Self::NotServing => "not_serving",
            Self::NotStored => "not_stored",
            Self::Timeout => "timeout",
        }
    }
}

/// Starts warming: with `warming.at_start`, a run of the `[[warm]]` queries and the hot
/// keys of the previous run now (readiness waits for it, within `warming.timeout`); then a
/// run after each whole-cache flush or invalidation, until `shutdown`.
pub fn start(ctx: &Arc<AppContext>, shutdown: &CancellationToken) {
    let config = ctx.config();
    let at_start = config.warming.at_start;
    let mut kept = if at_start {
        super::hot::load(ctx, &config.warming)
    } else {
        Vec::new()
    };
    // Hot keys kept in Redis are read by the task (with an await); readiness waits meanwhile.
    let shared_hot = at_start && super::hot::shared_store(ctx, &config.warming).is_some();
    // Nothing to warm: `/readyz` reports warming `off` and does not wait.
    let first = at_start
        .then(|| start_items(ctx, &kept))
        .filter(|items| !items.is_empty() || shared_hot);
    if let Some(items) = &first {
        ctx.services
            .warming
            .begin(Trigger::Start, items.len(), config.warming.timeout);
    }
    let started = Instant::now();
    let invalidator = &ctx.services.invalidator;
    let mut signals = Signals {
        flushes: invalidator.flushes(),
        rewarms: invalidator.rewarms(),
    };
    let (app, shutdown) = (Arc::clone(ctx), shutdown.clone());
    let task = async move {
        let ctx = app;
        match first {
            Some(mut items) => {
                if shared_hot {
                    let config = ctx.config();
                    kept = super::hot::load_shared(&ctx, &config.warming).await;
                    items = start_items(&ctx, &kept);
                    // The same run, now with its hot keys; its deadline stays where it was.
                    let left = config.warming.timeout.saturating_sub(started.elapsed());
                    ctx.services
                        .warming
                        .begin(Trigger::Start, items.len(), left);
                }
                count_run(Trigger::Start);
                run(&ctx, &items, &shutdown, &mut signals.rewarms).await;
            }
            None => {
                // The change streams' first consistent points (start-up's own epoch
                // bumps) are not a reason to warm when start-up did not.
                let deadline = Instant::now() + ctx.config().warming.timeout;
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = settle(&ctx, deadline) => {}
                }
                signals.rewarms.borrow_and_update();
            }
        }
        while let Some(trigger) = signals.next(&shutdown).await {
            // The `[[warm]]` entries of the configuration now (SIGHUP may have changed
            // them), and the hot keys of this run so far with those read at start.
            let config = ctx.config();
            let hot = super::hot::rewarm(&ctx, &kept, config.warming.hot_keys);
            let items = with_config(&config.warm, ctx.upstream.target(), &hot);
            if items.is_empty() {
                continue;
            }
            ctx.services
                .warming
                .begin(trigger, items.len(), config.warming.timeout);
            count_run(trigger);
            run(&ctx, &items, &shutdown, &mut signals.rewarms).await;
        }
    };
    ctx.tasks.spawn("warming", task);
}

/// What starts a run after start-up.
struct Signals {
    /// Whole-cache flushes (admin API, SIGUSR1): a run at once.
    flushes: tokio::sync::watch::Receiver<u64>,
    /// Other whole-cache invalidations: coalesced (see the module header).
    rewarms: tokio::sync::watch::Receiver<u64>,
}

impl Signals {
    /// Waits for the next run's trigger; `None` at shutdown. A flush that came during the
    /// last run starts the next at once; an invalidation, once they stopped for [`QUIET`].
    async fn next(&mut self, shutdown: &CancellationToken) -> Option<Trigger> {
        let trigger = tokio::select! {
            () = shutdown.cancelled() => return None,
            changed = self.flushes.changed() => changed.ok().map(|()| Trigger::Flush)?,
            changed = self.rewarms.changed() => changed.ok().map(|()| Trigger::Invalidation)?,
        };
        let trigger = match trigger {
            Trigger::Invalidation => self.quiet(shutdown).await?,
            other => other,
        };
        // This run covers whatever came until now.
        self.flushes.borrow_and_update();
        self.rewarms.borrow_and_update();
        Some(trigger)
    }

    /// After an invalidation: waits until none came for [`QUIET`] (at most [`MAX_DELAY`]);
    /// a flush meanwhile starts the run at once. `None` at shutdown.
    async fn quiet(&mut self, shutdown: &CancellationToken) -> Option<Trigger> {
        let latest = Instant::now() + MAX_DELAY;
        loop {
            let until = (Instant::now() + QUIET).min(latest);
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep_until(until) => return Some(Trigger::Invalidation),
                changed = self.flushes.changed() => {
                    return changed.ok().map(|()| Trigger::Flush);
                }
                // Another one: the quiet period starts again.
                changed = self.rewarms.changed() => changed.ok()?,
            }
        }
    }
}

/// Counts a run begun.
fn count_run(trigger: Trigger) {
    metrics::counter!(names::WARM_RUNS, "trigger" => trigger.label()).increment(1);
}

/// The start-up run's items: the `[[warm]]` entries, then the hot keys `kept`.
fn start_items(ctx: &AppContext, kept: &[crate::refresh::hotkeys::HotKey]) -> Vec<Arc<Item>> {
    let config = ctx.config();
    let hot = super::hot::items(kept, config.warming.hot_keys);
    with_config(&config.warm, ctx.upstream.target(), &hot)
}

/// The `[[warm]]` entries as items, then the hot keys (shared: kept for every run).
fn with_config(warm: &[WarmQuery], upstream: &UpstreamTarget, hot: &[Arc<Item>]) -> Vec<Arc<Item>> {
    let mut items: Vec<Arc<Item>> = warm
        .iter()
        .filter_map(|w| config_item(w, upstream))
        .map(Arc::new)
        .collect();
    items.extend(hot.iter().cloned());
    items
}

/// One `[[warm]]` entry: logged in as its role to its database with its `settings` as
/// startup parameters (`user` and `database` among them, as drivers send them: both are
/// part of a session's fingerprint). `None` without a database (validation refuses that).
fn config_item(warm: &WarmQuery, upstream: &UpstreamTarget) -> Option<Item> {
    let database = warm.effective_database(upstream)?.to_owned();
    let user = warm.effective_role(upstream).to_owned();
    let mut params = vec![
        ("user".to_owned(), user.clone()),
        ("database".to_owned(), database.clone()),
    ];
    params.extend(warm.settings.iter().map(|(n, v)| (n.clone(), v.clone())));
    let sql = Bytes::copy_from_slice(warm.sql.as_bytes());
    let request = if warm.params.is_empty() {
        Request::Simple { sql }
    } else {
        Request::Extended {
            sql,
            param_types: Bytes::new(),
            bind_tail: bind_tail(&warm.params),
        }
    };
    Some(Item {
        source: Source::Config,
        login: Arc::new(LoginKey {
            database,
            user,
            params,
        }),
        request,
        expect: None,
    })
}

/// The Bind after its portal and statement names as libpq sends it for text parameters:
/// no parameter format codes (all text), the values (length and bytes, or -1 for NULL),
/// one result format code, text.
fn bind_tail(params: &[WarmParam]) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u16(0);
    // Validation keeps a `[[warm]]` entry within the protocol's 65,535 parameters.
    out.put_u16(u16::try_from(params.len()).unwrap_or(u16::MAX));
    for p in params {
        match &p.0 {
            Some(text) => {
                out.put_i32(i32::try_from(text.len()).unwrap_or(i32::MAX));
                out.put_slice(text.as_bytes());
            }
            None => out.put_i32(-1),
        }
    }
    out.put_u16(1);
    out.put_u16(0);
    out.freeze()
}

/// One run over `items` (not empty) within `warming.timeout`, reported to the progress it
/// was begun on. The invalidations seen in `rewarms` until its first query are covered by
/// it (marked seen then).
async fn run(
    ctx: &Arc<AppContext>,
    items: &[Arc<Item>],
    shutdown: &CancellationToken,
    rewarms: &mut tokio::sync::watch::Receiver<u64>,
) {
    let config = ctx.config();
    let deadline = Instant::now() + config.warming.timeout;
    let progress = &ctx.services.warming;
    let pool = match background::new_pool(ctx) {
        Ok(pool) => pool,
        Err(e) => {
            warn!(error = %e, "warming not run");
            progress.end(false);
            return;
        }
    };
    let refresh = &config.refresh;
    for item in items {
        // Their change streams start now if they only run while the database is used.
        ctx.side.touch_remote(&item.login.database, HOLD);
    }
    let work = async {
        settle(ctx, deadline).await;
        // What was invalidated until now is warmed by this run: only what comes from now
        // on (and drops some of what it stores) calls for another.
        rewarms.borrow_and_update();
        // Owned per query (a future borrowing the run's locals would not be `Send` for
        // every lifetime the task needs).
        let results = futures_util::stream::iter(items.to_vec())
            .map(|item| {
                let (ctx, pool) = (Arc::clone(ctx), pool.clone());
                async move { one(&ctx, &pool, &item, deadline).await }
            })
            .buffer_unordered(refresh.pool_size.max(1));
        results
            .fold(
                (0usize, false),
                |(stored, timed_out), (ok, timeout)| async move {
                    (stored + usize::from(ok), timed_out || timeout)
                },
            )
            .await
    };
    let (stored, timed_out) = tokio::select! {
        () = shutdown.cancelled() => (0, false),
        done = work => done,
    };
    progress.end(timed_out);
    info!(queries = items.len(), stored, timed_out, "warming done");
}

/// Waits (until `deadline`) while a change stream is still connecting or creating its slot.
async fn settle(ctx: &AppContext, deadline: Instant) {
    let unsettled = || {
        ctx.services
            .cdc
            .streams()
            .any(|s| matches!(s.state(), State::Connecting | State::CreatingSlot))
    };
    while unsettled() && Instant::now() < deadline {
        tokio::time::sleep(SETTLE_POLL).await;
    }
}

/// Warms one item within `deadline`, counts and logs its result: (stored, timed out).
async fn one(ctx: &AppContext, pool: &Pool, item: &Item, deadline: Instant) -> (bool, bool) {
    let result = if Instant::now() >= deadline {
        Err(Miss::Timeout)
    } else {
        tokio::time::timeout_at(deadline, warm(ctx, pool, item))
            .await
            .unwrap_or(Err(Miss::Timeout))
    };
    let label = result.as_ref().err().map_or("stored", Miss::label);
    metrics::counter!(names::WARM, "source" => item.source.label(), "result" => label).increment(1);
    ctx.services.warming.finished_one(result.is_ok());
    let sql = shown(&item.request);
    let (database, user) = (&item.login.database, &item.login.user);
    match &result {
        Ok(()) => debug!(%database, %user, %sql, "warmed"),
        Err(Miss::Refused(reason)) => warn!(
            %database, %user, %sql, reason = reason.label(),
            "warm query refused: pgmemo does not cache it for a session of this login"
        ),
        // A hot key that does not come back (its role's login is gone, its fingerprint
        // changed) is ordinary; a configured query that does not warm is worth a warning.
        Err(miss) if item.source == Source::HotKeys => {
            info!(%database, %user, %sql, result = miss.label(), "hot key not warmed");
        }
        Err(miss) => {
            warn!(%database, %user, %sql, result = miss.label(), "warm query not stored");
        }
    }
    (result.is_ok(), matches!(result, Err(Miss::Timeout)))
}

/// Runs one item's request on a connection logged in as its login and stores the result
/// under that connection's fingerprint.
async fn warm(ctx: &AppContext, pool: &Pool, item: &Item) -> Result<(), Miss> {
    let services = &ctx.services;
    let database = item.login.database.as_str();
    if !services.cdc.serves(database) {
        return Err(Miss::NotServing);
    }
    let timeout = ctx.config().refresh.query_timeout;
    let mut conn = background::login(ctx, pool, &item.login)
        .await
        .map_err(Miss::Skip)?;
    // The epoch before the configuration generation, as a session reads them.
    let epoch = services.cache.versions().epoch();
    let generation = services.invalidator.config_generation();
    let found = background::settings(ctx, &mut conn, timeout, (epoch, generation))
        .await
        .map_err(Miss::Skip)?;
    let fp = background::fingerprint(&item.login, &found).map_err(Miss::Skip)?;
    let refusal = if item.expect.is_some_and(|want| want != fp) {
        Some(Miss::Skip(Skip::Fingerprint))
    } else if found.opted_out {
        Some(Miss::Refused(BypassReason::SessionOptOut))
    } else if !super::probe::encoding_is_safe(&found.client_encoding)
        || !found.standard_conforming_strings
    {
        Some(Miss::Refused(BypassReason::ClientEncoding))
    } else {
        None
    };
    if let Some(miss) = refusal {
        conn.release_clean();
        return Err(miss);
    }
    services
        .invalidator
        .learn_database(&found.database, found.db_oid);
    let cx = background::context(&found);
    let rules = ctx.rules_generation();
    let plan = super::planning::plan_and_memoise(ctx, &cx, sql(&item.request).clone()).await;
    if let Err(reason) = plan.read {
        conn.release_clean();
        return Err(Miss::Refused(reason));
    }
    let recipe = Recipe {
        database: Arc::from(database),
        login: Arc::clone(&item.login),
        fingerprint: fp,
        request: item.request.clone(),
        plan,
        deps: Box::new([]),
    };
    let utf8 = super::settings::is_utf8(&found.client_encoding);
    let mut deps = Vec::new();
    let target = background::Target {
        fp: &fp,
        ids: (cx.id(), utf8, rules),
        replaces: None,
        hold: timeout,
    };
    let leader = match background::lead(ctx, &recipe, target, &mut deps).await {
        Ok(leader) => leader,
        Err(skip) => {
            conn.release_clean();
            return Err(Miss::Skip(skip));
        }
    };
    let mut request = BytesMut::new();
    through::put_request(&mut request, &recipe.request, b"\0", true);
    let max = services.cache.max_entry_size() + 1024;
    let failed = Miss::Skip(Skip::Outcome(Outcome::Failed));
    let frames = match pool::run(&mut conn, &request, max, timeout).await {
        Ok(frames) => frames,
        Err(e) => {
            debug!(error = %e, "warm query failed");
            return Err(failed);
        }
    };
    let stored = background::result(&frames);
    let current = services.invalidator.config_generation() == generation;
    conn.release_clean();
    let Some(bytes) = stored.filter(|_| current) else {
        if let Some(code) = frames
            .iter()
            .find(|f| f.first() == Some(&backend::ERROR_RESPONSE))
            .and_then(|f| crate::protocol::fields::error_code(f))
        {
            debug!(sqlstate = %String::from_utf8_lossy(code), "warm query failed");
        }
        return Err(failed);
    };
    if !through::store(services, leader, bytes, &recipe, Origin::Read) {
        return Err(Miss::NotStored);
    }
    // From its warming on: the first client finds the database watched.
    ctx.side.touch_remote(database, HOLD);
    Ok(())
}

/// The statement text of a request.
fn sql(request: &Request) -> &Bytes {
    match request {
        Request::Simple { sql } | Request::Extended { sql, .. } => sql,
    }
}

/// A request's shape for a log line (`sql::log_shape`: literals as `?`, at most [`SHOWN`]
/// bytes): hot keys are clients' requests, and their literals are clients' data.
fn shown(request: &Request) -> String {
    crate::sql::log_shape(sql(request), SHOWN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_logged_request_shows_its_shape_never_its_literals() {
        let sql = Bytes::from_static(
            b"SELECT *\n  FROM users WHERE email = 'alice@example.com' AND id = 42 -- alice",
        );
        let shown = shown(&Request::seen(&sql, None));
        assert_eq!(shown, "SELECT * FROM users WHERE email = ? AND id = ?");
        let long = Bytes::from(format!("SELECT {} FROM t", "a, ".repeat(100)));
        assert!(shown_len(&long) <= SHOWN + '…'.len_utf8());
    }

    fn shown_len(sql: &Bytes) -> usize {
        shown(&Request::seen(sql, None)).len()
    }

    #[test]
    fn parameters_are_bound_as_libpq_binds_text() {
        // PQexecParams(conn, sql, 2, NULL, {"42", NULL}, NULL, NULL, 0).
        let tail = bind_tail(&[WarmParam(Some("42".into())), WarmParam(None)]);
        assert_eq!(
            tail.as_ref(),
            [
                0, 0, 0, 2, 0, 0, 0, 2, b'4', b'2', 255, 255, 255, 255, 0, 1, 0, 0
            ]
        );
    }

    #[test]
    fn an_entry_logs_in_as_a_driver_would() {
        let upstream = UpstreamTarget::parse("postgres://owner@db.example/shop").unwrap();
        let mut warm = WarmQuery {
            sql: "SELECT 1".into(),
            params: Vec::new(),
            database: None,
            role: None,
            settings: [("options".to_owned(), "-c search_path=app".to_owned())].into(),
        };
        let item = config_item(&warm, &upstream).unwrap();
        assert_eq!(item.login.database, "shop");
        assert_eq!(item.login.user, "owner");
        assert_eq!(
            item.login.params,
            [
                ("user".to_owned(), "owner".to_owned()),
                ("database".to_owned(), "shop".to_owned()),
                ("options".to_owned(), "-c search_path=app".to_owned()),
            ]
        );
        assert!(matches!(item.request, Request::Simple { .. }));
        warm.params = vec![WarmParam(Some("1".into()))];
        warm.role = Some("reader".into());
        let item = config_item(&warm, &upstream).unwrap();
        assert_eq!(item.login.user, "reader");
        assert!(matches!(
            &item.request,
            Request::Extended { param_types, .. } if param_types.is_empty()
        ));
    }
}
