//! Verify mode (issue 21), the session's side and the checker: a sampled cache hit
//! (`cache.verify_sample`, decided by `refresh::verify`) is handed, with the versions it was
//! keyed on, to a checker that re-executes it upstream exactly as the background refresher
//! recomputes a result (`background`: pgmemo's own pool, logged in as the session that hit
//! it, settings probed, and only when the connection's fingerprint digest equals the
//! entry's) and compares the answer byte for byte with the entry served — RowDescription,
//! DataRows and CommandComplete, as stored. Nothing is stored: a check only counts and logs.
//!
//! A difference is judged by `refresh::verify::judge`: a mismatch only if the served
//! result's versions and the epoch did not move and the entry is still in the cache; else
//! a write (or invalidation) raced the check. The versions are read again after
//! [`RACE_GRACE`], so a write whose commit the re-execution already saw but whose bump
//! pgmemo had not made yet (I2 bumps after the commit is reported), or a change stream
//! delivering a direct write, is counted `raced`, not `mismatched`.
//!
//! A mismatch is logged (warn) with the statement's shape (`sql::log_shape`: literals
//! replaced, never a value a client sent), the database, the role and the tables, and
//! counted per table.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

use super::{CacheSession, background, through};
use crate::cache::{Entry, VersionSnapshot};
use crate::context::AppContext;
use crate::planner::plan::Plan;
use crate::refresh::pool::{self, Pool};
use crate::refresh::recipes::{Recipe, Request};
use crate::refresh::verify::{self, Check, Verdict};
use crate::telemetry::names;

/// Checker tasks: each holds at most one pooled connection, so checks never take the whole
/// pool from the refreshes.
const WORKERS: usize = 2;
/// How long an apparent mismatch waits before the versions are read again: a bump that
/// lags the commit the re-execution saw (the writer's session between the upstream's
/// report and the bump, or a change stream's delivery) lands within it.
pub const RACE_GRACE: Duration = Duration::from_millis(500);
/// The longest statement shape logged.
const SHAPE_BYTES: usize = 512;

impl CacheSession {
    /// Hands a sampled hit on `entry` (of `plan`, looked up under fingerprint digest `fp`
    /// with the versions `snapshot`; `extended`: the Parse's parameter types and the Bind's
    /// tail) to the checker, or counts why not. Never waits.
    pub(super) fn verify_hit(
        &self,
        plan: &Arc<Plan>,
        entry: &Arc<Entry>,
        extended: Option<(&[u8], &[u8])>,
        fp: [u8; 16],
        snapshot: &VersionSnapshot,
    ) {
        let verify = &self.app.services.verify;
        if !verify.within_rate() {
            return skipped("rate");
        }
        let request_bytes = plan.sql.len() + extended.map_or(0, |(t, b)| t.len() + b.len());
        if request_bytes > verify::MAX_REQUEST_BYTES {
            return skipped("too_large");
        }
        let weight = request_bytes + std::mem::size_of_val(snapshot.versions());
        let Some(permit) = verify.permit(weight) else {
            return skipped("full");
        };
        let recipe = Recipe {
            database: Arc::clone(&self.database),
            login: Arc::clone(&self.login),
            fingerprint: fp,
            request: Request::seen(&plan.sql, extended),
            plan: Arc::clone(plan),
            // Not filed in the registry: its dependencies are not needed.
            deps: Box::new([]),
        };
        if !verify.submit(recipe, Arc::downgrade(entry), snapshot.clone(), permit) {
            skipped("not_running");
        }
    }
}

/// Counts a sampled hit that is not checked.
fn skipped(reason: &'static str) {
    metrics::counter!(names::VERIFY_CHECKS, "result" => "skipped").increment(1);
    metrics::counter!(names::VERIFY_SKIPPED, "reason" => reason).increment(1);
}

/// Starts the checker: [`WORKERS`] tasks sharing the queue's receiver and the refresher's
/// `pool`.
pub(super) fn start(ctx: &Arc<AppContext>, pool: &Pool, shutdown: &CancellationToken) {
    let Some(rx) = ctx.services.verify.open() else {
        return;
    };
    let rx = Arc::new(Mutex::new(rx));
    for _ in 0..WORKERS {
        let checker = Checker {
            ctx: Arc::clone(ctx),
            pool: pool.clone(),
        };
        let (rx, shutdown) = (Arc::clone(&rx), shutdown.clone());
        ctx.tasks.spawn("verifier", checker.run(rx, shutdown));
    }
}

/// How one check ended.
enum Outcome {
    Judged(Verdict),
    Skipped(&'static str),
    Failed,
}

struct Checker {
    ctx: Arc<AppContext>,
    pool: Pool,
}

impl Checker {
    async fn run(self, rx: Arc<Mutex<mpsc::Receiver<Check>>>, shutdown: CancellationToken) {
        loop {
            let check = tokio::select! {
                () = shutdown.cancelled() => return,
                check = async { rx.lock().await.recv().await } => check,
            };
            let Some(check) = check else { return };
            let outcome = tokio::select! {
                () = shutdown.cancelled() => return,
                outcome = self.one(&check) => outcome,
            };
            match outcome {
                Outcome::Judged(verdict) => {
                    metrics::counter!(names::VERIFY_CHECKS, "result" => verdict.label())
                        .increment(1);
                }
                Outcome::Skipped(reason) => skipped(reason),
                Outcome::Failed => {
                    metrics::counter!(names::VERIFY_CHECKS, "result" => "failed").increment(1);
                }
            }
        }
    }

    /// Re-executes one sampled hit and judges the answer.
    async fn one(&self, check: &Check) -> Outcome {
        let recipe = &check.recipe;
        let services = &self.ctx.services;
        let versions = services.cache.versions();
        if check.served.upgrade().is_none_or(|e| e.is_evicted()) {
            return Outcome::Skipped("entry_gone");
        }
        if !check.snapshot.is_current(versions) {
            // A write already moved what the hit was keyed on: the answer would prove
            // nothing, so it is not even asked for.
            return Outcome::Judged(Verdict::Raced);
        }
        if !background::serving(&self.ctx, &recipe.database) {
            return Outcome::Skipped("not_serving");
        }
        super::hooks::verify_delay().await;
        let timeout = self.ctx.config().refresh.query_timeout;
        let mut conn = match background::login(&self.ctx, &self.pool, &recipe.login).await {
            Ok(conn) => conn,
            Err(skip) => return Outcome::Skipped(skip.label()),
        };
        // The epoch before the configuration generation, as a session reads them.
        let read = (versions.epoch(), services.invalidator.config_generation());
        let settings = match background::settings(&self.ctx, &mut conn, timeout, read).await {
            Ok(settings) => settings,
            Err(skip) => return Outcome::Skipped(skip.label()),
        };
        let same_fingerprint = background::fingerprint(&recipe.login, &settings)
            .is_ok_and(|fp| fp == recipe.fingerprint && !settings.opted_out);
        if !same_fingerprint {
            // Run under any other fingerprint, the answer could differ (or leak) for
            // reasons that are not the cache's: never compared.
            conn.release_clean();
            return Outcome::Skipped("fingerprint");
        }
        let mut request = BytesMut::new();
        through::put_request(&mut request, &recipe.request, b"\0", true);
        let max = services.cache.max_entry_size() + 1024;
        let frames = match pool::run(&mut conn, &request, max, timeout).await {
            Ok(frames) => frames,
            Err(e) => {
                tracing::debug!(error = %e, "verify: re-execution failed");
                return Outcome::Failed;
            }
        };
        conn.release_clean();
        // An error, a notice or a setting report: nothing comparable to stored rows.
        let Some(answer) = background::result(&frames) else {
            return Outcome::Failed;
        };
        let compared = check
            .served
            .upgrade()
            .map(|served| (served.frames == answer, served.frames.len()));
        let served_len = match compared {
            // Left the cache while it ran: what it served can no longer be compared.
            None => return Outcome::Judged(Verdict::Raced),
            Some((true, _)) => return Outcome::Judged(Verdict::Matched),
            Some((false, len)) => len,
        };
        if verify::judge(false, &check.snapshot, versions, &check.served) != Verdict::Mismatched {
            return Outcome::Judged(Verdict::Raced);
        }
        tokio::time::sleep(RACE_GRACE).await;
        let verdict = verify::judge(false, &check.snapshot, versions, &check.served);
        if verdict == Verdict::Mismatched {
            self.report(check, served_len, answer.len()).await;
        }
        Outcome::Judged(verdict)
    }

    /// Counts a mismatch per table and logs it: shape, database, role, tables, sizes.
    async fn report(&self, check: &Check, served: usize, upstream: usize) {
        let recipe = &check.recipe;
        let tables = table_names(&self.ctx, &recipe.database, &check.snapshot).await;
        for table in &tables {
            metrics::counter!(names::VERIFY_MISMATCHES, "table" => table.clone()).increment(1);
        }
        let text = match &recipe.plan.read {
            Ok(read) => &read.normalized,
            Err(_) => &recipe.plan.sql,
        };
        let shape = crate::sql::log_shape(text, SHAPE_BYTES);
        tracing::warn!(
            database = %recipe.database,
            role = %recipe.login.user,
            tables = %tables.join(", "),
            shape = %shape,
            served_bytes = served,
            upstream_bytes = upstream,
            "verify: a cached result differs from PostgreSQL's answer, and no write pgmemo \
             saw changed its tables since it was served (a change pgmemo cannot see: a write \
             bypassing it with change data capture off, or a bug)"
        );
    }
}

/// The `schema.name` of each relation the snapshot depends on (`oid <n>` for one the
/// catalog cannot name now).
async fn table_names(ctx: &AppContext, database: &str, snapshot: &VersionSnapshot) -> Vec<String> {
    let oids: Vec<u32> = snapshot.tags().iter().map(|t| t.rel).collect();
    let facts = ctx
        .services
        .catalog
        .relation_facts(database, &oids)
        .await
        .unwrap_or_default();
    oids.iter()
        .map(|oid| {
            facts.iter().find(|f| f.oid == *oid).map_or_else(
                || format!("oid {oid}"),
                |f| format!("{}.{}", f.schema, f.name),
            )
        })
        .collect()
}
