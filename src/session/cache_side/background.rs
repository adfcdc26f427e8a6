//! The background refresher (issue 19): recomputes results that no session can re-run on
//! its own connection — a write-through's dependents read under another fingerprint, and
//! refresh-ahead's results read past their refresh point (which replace the entry clients
//! keep hitting meanwhile) — on
//! pgmemo's own upstream connections (`refresh::pool`), logged in exactly as the session
//! that read them was (database, user, startup parameters).
//!
//! Never under another role, never under another fingerprint: pgmemo logs in as the
//! result's own user only when `[refresh]` gives it that login (a `[[refresh.logins]]`
//! entry, or the `upstream.url` user); it then builds the connection's fingerprint the way
//! a session does (its login reports, then its settings probe — remembered per login as
//! sessions remember it — then nothing else) and recomputes only when that fingerprint's
//! digest equals the one the result's key names. A session that changed settings after
//! login (SET, a later probe) has a fingerprint this connection does not reproduce: its
//! results stay invalid (counted `fingerprint`), as do those of a role without a login
//! (`no_login`). `SET ROLE` to the result's role would not do: `session_user`, the role's
//! `ALTER ROLE ... SET` settings and the fingerprint itself would differ.
//!
//! Each recomputation leads its key's fill (readers wait for it instead of running it too)
//! with its snapshot read before its statement is sent (I1), on the unnamed statement, as
//! one sync group; anything but rows and a command tag (an error, a notice, a setting
//! report) leaves the result invalid. Workers are as many as the pool's connections.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

use super::probe::{self, ProbeReader, ProbeResult};
use super::through::{self, Outcome};
use crate::cache::entry::Origin;
use crate::cache::l2::tier::SharedTier;
use crate::cache::{CacheKey, Dep, KeyCheck};
use crate::catalog::SettingNames;
use crate::context::AppContext;
use crate::planner::plan::Context;
use crate::protocol::fields::Reader;
use crate::protocol::tags::backend;
use crate::refresh::pool::{self, Pool, PooledConn};
use crate::refresh::queue::{Cause, Job};
use crate::refresh::recipes::Recipe;
use crate::refresh::share;
use crate::session::fingerprint::Fingerprint;
use crate::telemetry::names;
use crate::upstream::Upstream;

/// Most bytes a settings probe's answer may take.
const PROBE_BYTES: usize = 1 << 20;

/// Why a background recomputation did not store (metric label values beyond `Outcome`'s).
#[derive(Clone, Copy)]
pub(super) enum Skip {
    Outcome(Outcome),
    /// pgmemo has no login for the result's role.
    NoLogin,
    /// Logging in or the settings probe failed.
    Login,
    /// The connection's fingerprint is not the result's.
    Fingerprint,
    /// The shared tier's counters could not be read (Redis down, slow, breaker open).
    Shared,
    /// The cache is not serving the result's database (disabled, change stream not
    /// streaming, catalog not watched): a session would not store it either.
    NotServing,
}

impl Skip {
    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Outcome(o) => o.label(),
            Self::NoLogin => "no_login",
            Self::Login => "login_failed",
            Self::Fingerprint => "fingerprint",
            Self::Shared => "shared_unavailable",
            Self::NotServing => "not_serving",
        }
    }
}

/// Starts the refresher: `pool_size` workers sharing the queue's receiver and one pool.
/// Verify mode's checker (`verify`) runs on the same pool: its re-executions and the
/// refreshes share `refresh.pool_size` connections.
pub fn start(ctx: &Arc<AppContext>, shutdown: &CancellationToken) {
    let pool = match new_pool(ctx) {
        Ok(pool) => pool,
        Err(e) => {
            tracing::warn!(error = %e, "background refresher not started");
            return;
        }
    };
    super::verify::start(ctx, &pool, shutdown);
    let Some(rx) = ctx.services.refresh_queue.open() else {
        return;
    };
    let refresh = &ctx.config().refresh;
    let rx = Arc::new(Mutex::new(rx));
    for _ in 0..refresh.pool_size {
        let worker = Worker {
            ctx: Arc::clone(ctx),
            pool: pool.clone(),
            deps: Vec::new(),
        };
        let (rx, shutdown) = (Arc::clone(&rx), shutdown.clone());
        ctx.tasks.spawn("refresher", worker.run(rx, shutdown));
    }
}

struct Worker {
    ctx: Arc<AppContext>,
    pool: Pool,
    deps: Vec<Dep>,
}

impl Worker {
    async fn run(mut self, rx: Arc<Mutex<mpsc::Receiver<Job>>>, shutdown: CancellationToken) {
        loop {
            let job = tokio::select! {
                () = shutdown.cancelled() => return,
                job = async { rx.lock().await.recv().await } => job,
            };
            let Some(job) = job else { return };
            let result = match self.one(&job).await {
                Ok(()) => "stored",
                Err(skip) => skip.label(),
            };
            metrics::counter!(names::REFRESH, "cause" => job.cause.label(), "result" => result)
                .increment(1);
        }
    }

    /// Recomputes one result and stores it, or says why not.
    async fn one(&mut self, job: &Job) -> Result<(), Skip> {
        let recipe = &job.recipe;
        if !serving(&self.ctx, &recipe.database) {
            return Err(Skip::NotServing);
        }
        let config = self.ctx.config();
        let mut conn = login(&self.ctx, &self.pool, &recipe.login).await?;
        let timeout = config.refresh.query_timeout;
        // The epoch before the configuration generation, as a session reads them.
        let epoch = self.ctx.services.cache.versions().epoch();
        let generation = self.ctx.services.invalidator.config_generation();
        let settings = settings(&self.ctx, &mut conn, timeout, (epoch, generation)).await?;
        let fp = fingerprint(recipe.login.as_ref(), &settings)?;
        if fp != recipe.fingerprint || settings.opted_out {
            conn.release_clean();
            return Err(Skip::Fingerprint);
        }
        let cx_id = context(&settings).id();
        let utf8 = super::settings::is_utf8(&settings.client_encoding);
        let rules = self.ctx.rules_generation();
        let leader = match self.lead(job, &fp, (cx_id, utf8, rules)).await {
            // A write-through's acknowledgement waiting for this job waits for the Redis
            // write of its result too.
            Ok(leader) => through::Leader {
                done: job.done.clone(),
                ..leader
            },
            Err(skip) => {
                conn.release_clean();
                return Err(skip);
            }
        };
        let mut request = BytesMut::new();
        through::put_request(&mut request, &recipe.request, b"\0", true);
        let services = &self.ctx.services;
        let max = services.cache.max_entry_size() + 1024;
        let frames = match pool::run(&mut conn, &request, max, timeout).await {
            Ok(frames) => frames,
            Err(_) => return Err(Skip::Outcome(Outcome::Failed)),
        };
        let result = result(&frames);
        let current = self.ctx.services.invalidator.config_generation() == generation;
        conn.release_clean();
        match result {
            Some(bytes) if current => {
                let origin = origin(job, &bytes);
                if through::store(services, leader, bytes, recipe, origin) {
                    Ok(())
                } else {
                    Err(Skip::Outcome(Outcome::Raced))
                }
            }
            _ => Err(Skip::Outcome(Outcome::Failed)),
        }
    }
}

/// Whether the cache may be used for `database` now, as a session's lookup asks
/// (`lookup::admit`): enabled, its change stream (if any) streaming, its catalog watched.
pub(super) fn serving(ctx: &AppContext, database: &str) -> bool {
    let services = &ctx.services;
    ctx.cache_enabled() && services.cdc.serves(database) && services.catalog.watched(database)
}

impl Worker {
    /// Reads the versions the recomputation depends on and leads its key's fill (see
    /// [`lead`]); a refresh-ahead's lock is held for the new entry's own refresh point.
    async fn lead(
        &mut self,
        job: &Job,
        fp: &[u8; 16],
        ids: (u64, bool, u64),
    ) -> Result<through::Leader, Skip> {
        let recipe = &job.recipe;
        let replaces = job.previous.as_ref().filter(|_| job.cause == Cause::Ahead);
        let hold = match (job.cause, recipe.plan.read.as_ref()) {
            (Cause::Ahead, Ok(read)) => read.ttl.mul_f32(read.refresh_ahead),
            _ => self.ctx.config().refresh.query_timeout,
        };
        let target = Target {
            fp,
            ids,
            replaces,
            hold,
        };
        lead(&self.ctx, recipe, target, &mut self.deps).await
    }
}

/// What a recomputation is led under: the fingerprint digest, the connection's context id,
/// UTF-8 flag and the rules generation, the entry it replaces (refresh-ahead), and how long
/// a shared tier's lock on it is held.
pub(super) struct Target<'a> {
    pub fp: &'a [u8; 16],
    pub ids: (u64, bool, u64),
    pub replaces: Option<&'a std::sync::Weak<crate::cache::Entry>>,
    pub hold: Duration,
}

/// Reads the versions a recomputation of `recipe` depends on (I1: before it is sent) and
/// leads its key's fill. With a shared tier the key covers the shared counters, read now
/// from Redis, and one instance at a time recomputes a key: the first to take its lock in
/// Redis (held `target.hold`); the others count `busy` and read the result from the L2
/// when they miss.
pub(super) async fn lead(
    ctx: &AppContext,
    recipe: &Recipe,
    target: Target<'_>,
    deps: &mut Vec<Dep>,
) -> Result<through::Leader, Skip> {
    let services = &ctx.services;
    let Target {
        fp,
        ids,
        replaces,
        hold,
    } = target;
    let snapshot = through::snapshot(services, recipe, ids, deps).map_err(Skip::Outcome)?;
    let Some(tier) = services.shared.as_ref() else {
        let keys = through::keys(services, recipe, fp, &snapshot, None).map_err(Skip::Outcome)?;
        return through::lead_keys(services, keys, snapshot, replaces).map_err(Skip::Outcome);
    };
    let tags: Arc<[Dep]> = snapshot.versions().iter().map(|(d, _)| *d).collect();
    let counters = tier.read_counters(tags).await.ok_or(Skip::Shared)?;
    let keys =
        through::keys(services, recipe, fp, &snapshot, Some(&counters)).map_err(Skip::Outcome)?;
    // The lock first: readers that join the fill below wait only for a refresh that runs.
    let l2 = keys.l2.ok_or(Skip::Shared)?;
    match refresh_lock(tier, l2, hold).await {
        Some(true) => {}
        Some(false) => return Err(Skip::Outcome(Outcome::Busy)),
        None => return Err(Skip::Shared),
    }
    through::lead_keys(services, keys, snapshot, replaces).map_err(Skip::Outcome)
}

/// Takes the shared tier's lock on recomputing the result at L2 key and check `l2` (the
/// check covers the shared counters: each version of the result has its own lock) for
/// `hold`: `Some(true)` when this instance took it, `Some(false)` when another holds it.
/// Not released: held for `hold`, so the other instances do not recompute what this one
/// just stored. `None` when Redis does not answer (then nobody recomputes: the result
/// expires or stays invalid, never stale).
async fn refresh_lock(
    tier: &SharedTier,
    (key, check): (CacheKey, KeyCheck),
    hold: Duration,
) -> Option<bool> {
    let name = format!(
        "pgmemo:{}:refresh:{:032x}:{:016x}",
        tier.namespace(),
        key.0,
        check.0
    );
    let ms = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX).max(1);
    let mut conn = tier.conn();
    let mut cmd = redis::cmd("SET");
    let set = cmd
        .arg(name)
        .arg(1)
        .arg("NX")
        .arg("PX")
        .arg(ms)
        .query_async::<Option<String>>(&mut conn);
    match tokio::time::timeout(tier.timeout(), set).await {
        Ok(Ok(taken)) => Some(taken.is_some()),
        _ => None,
    }
}

/// A pool of `refresh.pool_size` upstream connections for background work, with the
/// configured idle and connect timeouts.
pub(super) fn new_pool(ctx: &AppContext) -> Result<Pool, crate::upstream::tls::TlsSetupError> {
    let config = ctx.config();
    let upstream = Arc::new(Upstream::new(ctx.upstream.target().clone())?);
    let refresh = &config.refresh;
    Ok(Pool::new(
        upstream,
        refresh.pool_size,
        refresh.idle_timeout,
        config.upstream.connect_timeout,
    ))
}

/// A pooled connection logged in as `key` says, with the password `[refresh]` gives that
/// user (`NoLogin` when it gives none: never another role's login).
pub(super) async fn login(
    ctx: &AppContext,
    pool: &Pool,
    key: &crate::refresh::pool::LoginKey,
) -> Result<PooledConn, Skip> {
    let config = ctx.config();
    let login = config
        .refresh
        .password_for(&key.user, ctx.upstream.target())
        .ok_or(Skip::NoLogin)?;
    let password = login.password.as_ref().map(|p| p.expose());
    pool.get(key, password).await.map_err(|e| {
        tracing::debug!(error = %e, user = %key.user, "refresher login failed");
        Skip::Login
    })
}

/// The connection's settings, as its settings probe reads them: remembered per login
/// (as sessions remember theirs), else probed now and remembered. `epoch` and `generation`:
/// the cache epoch and configuration generation read before it (as a session reads them).
pub(super) async fn settings(
    ctx: &AppContext,
    conn: &mut PooledConn,
    timeout: Duration,
    (epoch, generation): (u64, u64),
) -> Result<ProbeResult, Skip> {
    let key = conn.key();
    let memo_key = crate::catalog::login::key(&key.database, &key.user, &key.params);
    let logins = &ctx.services.logins;
    if let Some(known) = logins.get(&memo_key, epoch, generation) {
        return Ok(known);
    }
    let names = match ctx.services.catalog.setting_names(&key.database).await {
        Ok(SettingNames::Known(names)) => names,
        _ => return Err(Skip::Login),
    };
    let frames = pool::run(conn, &probe::unnamed(&names), PROBE_BYTES, timeout)
        .await
        .map_err(|_| Skip::Login)?;
    let mut reader = ProbeReader::default();
    for f in &frames {
        match f.first() {
            Some(&backend::READY_FOR_QUERY) | None => {}
            Some(&tag) => reader.on_frame(tag, f),
        }
    }
    let result = reader.finish().ok_or(Skip::Login)?;
    logins.insert(memo_key, result.clone(), epoch, generation);
    Ok(result)
}

/// What the refreshed entry is: for refresh-ahead, with the point of its own next refresh
/// (moved by what this refresh found under `refresh_adaptive`, see `refresh::share`).
fn origin(job: &Job, bytes: &Bytes) -> Origin {
    match (job.cause, job.recipe.plan.read.as_ref()) {
        (Cause::Write, _) => Origin::Write,
        // Not stored: `through::store` needs a read plan.
        (Cause::Ahead, Err(_)) => Origin::Ahead { point: 0.0 },
        (Cause::Ahead, Ok(read)) => {
            let base = read.refresh_ahead;
            // The entry it replaces, if still alive (gone: treated as changed).
            let previous = job.previous.as_ref().and_then(std::sync::Weak::upgrade);
            let point = match previous {
                Some(previous) if read.refresh_adaptive => {
                    let last = match previous.origin() {
                        Origin::Ahead { point } => point,
                        Origin::Read | Origin::Write => base,
                    };
                    share::next_point(base, last, previous.frames == *bytes)
                }
                _ => base,
            };
            Origin::Ahead { point }
        }
    }
}

/// The digest of the fingerprint a session logged in as `key` would have with these
/// settings and no change since: as a session builds it, from its startup parameters and
/// its settings probe (the reports at login are not part of it: the probe reads what they
/// report).
pub(super) fn fingerprint(
    key: &crate::refresh::pool::LoginKey,
    settings: &ProbeResult,
) -> Result<[u8; 16], Skip> {
    let mut fp = Fingerprint::new(&key.database, &key.user, &key.params);
    if !fp.reestablished(&settings.settings) {
        return Err(Skip::Fingerprint);
    }
    fp.bytes().map(super::digest).ok_or(Skip::Fingerprint)
}

/// The name-resolution context of a session with these settings (as `apply_probe` makes it).
pub(super) fn context(r: &ProbeResult) -> Context {
    Context {
        database: r.database.as_str().into(),
        db_oid: r.db_oid,
        current_user: r.current_user.as_str().into(),
        search_path: r.search_path.as_str().into(),
        has_temp: r.has_temp,
    }
}

/// The result to store from a recomputation's answer: its RowDescription, rows and
/// command tag, only when nothing else came (an error, a notice, a setting report) and it
/// ended idle.
pub(super) fn result(frames: &[Bytes]) -> Option<Bytes> {
    let mut out = BytesMut::new();
    let mut complete = false;
    for f in frames {
        match f.first().copied()? {
            backend::PARSE_COMPLETE | backend::BIND_COMPLETE => {}
            backend::ROW_DESCRIPTION | backend::DATA_ROW => out.extend_from_slice(f),
            backend::COMMAND_COMPLETE => {
                out.extend_from_slice(f);
                complete = true;
            }
            backend::READY_FOR_QUERY => {
                let idle = Reader::body(f).u8() == Some(b'I');
                return (complete && idle).then(|| out.freeze());
            }
            _ => return None,
        }
    }
    None
}
