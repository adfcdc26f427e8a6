//! Hot keys (`warming.hot_keys`): the session's side of counting the most requested cached
//! results (its sampled hits, see `refresh::hot`), keeping them at shutdown and reading them
//! back at the next start for warming (`warming`). A warming run after start-up (a flush,
//! another whole-cache invalidation) warms this run's hottest so far merged with those read
//! at start ([`rewarm`]).
//!
//! Kept in `warming.hot_keys_file` when it is set: written after the sessions have ended,
//! atomically and signed with the cache secret (`refresh::hotkeys`). Otherwise, with a
//! shared tier, in Redis under `pgmemo:<namespace>:hotkeys`, in the same signed form: each
//! instance that stops adds its run's counts to what is there (halved: keys fade out a few
//! runs after clients stop asking), keeping the `hot_keys` hottest; two instances stopping
//! at the same moment may each write over the other's addition (the last one wins). A run
//! that counted no hit leaves what is kept as it is (a restart with no traffic does not
//! forget what was hot). Kept keys that do not verify (changed, written under another
//! secret, truncated) are refused with a warning and ignored: pgmemo starts and warms its
//! `[[warm]]` entries only.

use std::path::Path;
use std::sync::Arc;

use tracing::{info, warn};

use super::CacheSession;
use super::warming::{Item, Source};
use crate::config::WarmingConfig;
use crate::context::AppContext;
use crate::planner::plan::Plan;
use crate::refresh::hot::{self, HotEntry};
use crate::refresh::hotkeys::{self, HotKey, HotKeysError, MAX_FILE_BYTES};
use crate::refresh::recipes::Request;
use crate::telemetry::names;

impl CacheSession {
    /// A sampled lookup of `plan` (with `extended`, the Parse's parameter types and the
    /// Bind's tail) under fingerprint digest `fp` was a hit: counted for the hot keys.
    pub(super) fn count_hot(&self, plan: &Plan, extended: Option<(&[u8], &[u8])>, fp: [u8; 16]) {
        let Some(hot_keys) = &self.app.services.hot_keys else {
            return;
        };
        let id = hot::id(&self.database, &fp, &plan.sql, extended);
        hot_keys.sample(id, || HotEntry {
            database: Arc::clone(&self.database),
            login: Arc::clone(&self.login),
            fingerprint: fp,
            request: Request::seen(&plan.sql, extended),
        });
    }
}

/// The previous run's hot keys (at most `warming.hot_keys`, hottest first); none without a
/// file, when there is none yet, or when it is refused (logged).
pub(super) fn load(ctx: &AppContext, warming: &WarmingConfig) -> Vec<HotKey> {
    let Some(path) = warming
        .hot_keys_file
        .as_deref()
        .filter(|_| warming.hot_keys > 0)
    else {
        return Vec::new();
    };
    let keys = match read(path, ctx) {
        Ok(keys) => keys,
        Err(HotKeysError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            info!(path = %path.display(), "no hot-key file yet: no hot keys to warm");
            return Vec::new();
        }
        Err(e) => {
            warn!(
                path = %path.display(), error = %e,
                "hot-key file refused and ignored: its keys are not warmed"
            );
            return Vec::new();
        }
    };
    let keys = kept(keys, warming.hot_keys);
    info!(path = %path.display(), keys = keys.len(), "hot keys read");
    keys
}

/// With a shared tier and no file: the hot keys kept in Redis (none when there are none
/// yet, Redis does not answer, or they are refused: logged).
pub(super) async fn load_shared(ctx: &AppContext, warming: &WarmingConfig) -> Vec<HotKey> {
    let Some(tier) = shared_store(ctx, warming) else {
        return Vec::new();
    };
    let keys = match get_shared(tier, ctx, warming.timeout).await {
        Ok(Some(keys)) => keys,
        Ok(None) => {
            info!("no hot keys kept in Redis yet: none to warm");
            return Vec::new();
        }
        Err(e) => {
            warn!(error = %e, "hot keys kept in Redis refused and ignored: they are not warmed");
            return Vec::new();
        }
    };
    let keys = kept(keys, warming.hot_keys);
    info!(keys = keys.len(), "hot keys read from Redis");
    keys
}

/// The `n` hottest of `keys` (kept hottest first).
fn kept(mut keys: Vec<HotKey>, n: usize) -> Vec<HotKey> {
    keys.truncate(n);
    keys
}

/// The hot keys of a warming run after start-up: this run's hottest so far (its sampled
/// hits) merged with `at_start`, those read at start-up (their counts halved, as a stop
/// adds a run to what is kept: see `hotkeys::merge`), at most `n`. A result clients
/// started asking for since start-up is warmed again too, not only the previous run's.
pub(super) fn rewarm(ctx: &AppContext, at_start: &[HotKey], n: usize) -> Vec<Arc<Item>> {
    let merged = hotkeys::merge(at_start.to_vec(), counted(ctx), n);
    items(&merged, n)
}

/// The shared tier the hot keys are kept in: with one and no `warming.hot_keys_file`.
pub(super) fn shared_store<'a>(
    ctx: &'a AppContext,
    warming: &WarmingConfig,
) -> Option<&'a crate::cache::l2::tier::SharedTier> {
    let kept = warming.hot_keys > 0 && warming.hot_keys_file.is_none();
    ctx.services.shared.as_deref().filter(|_| kept)
}

/// The Redis key of the hot keys.
fn shared_key(tier: &crate::cache::l2::tier::SharedTier) -> String {
    format!("pgmemo:{}:hotkeys", tier.namespace())
}

/// What Redis keeps (`None`: nothing yet), verified; within `timeout`.
async fn get_shared(
    tier: &crate::cache::l2::tier::SharedTier,
    ctx: &AppContext,
    timeout: std::time::Duration,
) -> Result<Option<Vec<HotKey>>, HotKeysError> {
    let mut conn = tier.conn();
    let mut cmd = redis::cmd("GET");
    let get = cmd
        .arg(shared_key(tier))
        .query_async::<Option<Vec<u8>>>(&mut conn);
    let bytes = match tokio::time::timeout(timeout, get).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => return Err(HotKeysError::Io(std::io::Error::other(e))),
        Err(_) => {
            return Err(HotKeysError::Io(std::io::Error::from(
                std::io::ErrorKind::TimedOut,
            )));
        }
    };
    bytes
        .map(|b| hotkeys::decode(&b, ctx.services.cache.secret()))
        .transpose()
}

/// Kept keys as items to warm, at most `n`, hottest first.
pub(super) fn items(keys: &[HotKey], n: usize) -> Vec<Arc<Item>> {
    let mut items = Vec::with_capacity(keys.len().min(n));
    for key in keys.iter().take(n) {
        match key.to_parts() {
            Some((login, request, fp)) => items.push(Arc::new(Item {
                source: Source::HotKeys,
                login: Arc::new(login),
                request,
                expect: Some(fp),
            })),
            // Signed by pgmemo, so only a bug would write one: counted, not warmed.
            None => metrics::counter!(names::WARM, "source" => "hot_keys", "result" => "failed")
                .increment(1),
        }
    }
    items
}

fn read(path: &Path, ctx: &AppContext) -> Result<Vec<HotKey>, HotKeysError> {
    let bytes = hotkeys::read(path, MAX_FILE_BYTES)?;
    hotkeys::decode(&bytes, ctx.services.cache.secret())
}

/// Writes this run's hot keys to `warming.hot_keys_file` (call it once the sessions have
/// ended). Nothing when hot keys are not kept, or when none was counted.
pub async fn save(ctx: &Arc<AppContext>) {
    let config = ctx.config();
    if ctx.services.hot_keys.is_none() {
        return;
    }
    let keys = counted(ctx);
    if let Some(tier) = shared_store(ctx, &config.warming) {
        save_shared(ctx, tier, keys, &config.warming).await;
        return;
    }
    let Some(path) = config.warming.hot_keys_file.clone() else {
        return;
    };
    if keys.is_empty() {
        info!(path = %path.display(), "no hot key counted in this run: the hot-key file is left as it was");
        return;
    }
    let ctx = Arc::clone(ctx);
    let count = keys.len();
    let shown = path.display().to_string();
    let written = tokio::task::spawn_blocking(move || {
        let bytes = hotkeys::encode(&keys, ctx.services.cache.secret());
        hotkeys::write_atomic(&path, &bytes)
    })
    .await;
    match written {
        Ok(Ok(())) => info!(path = %shown, keys = count, "hot keys written"),
        Ok(Err(e)) => warn!(path = %shown, error = %e, "hot keys not written"),
        Err(e) => warn!(path = %shown, error = %e, "hot keys not written"),
    }
}

/// This run's hot keys so far, hottest first (none when they are not counted).
fn counted(ctx: &AppContext) -> Vec<HotKey> {
    let Some(counter) = ctx.services.hot_keys.as_ref() else {
        return Vec::new();
    };
    counter
        .top()
        .iter()
        .filter_map(|(e, count)| {
            // Counts are of sampled hits: scaled back to hits, for the reader of the file.
            let hits = count.saturating_mul(u64::from(super::HIT_TIMING_SAMPLE));
            HotKey::from_parts(&e.login, &e.fingerprint, &e.request, hits)
        })
        .collect()
}

/// Adds this run's `keys` to those Redis keeps (see the module header).
async fn save_shared(
    ctx: &AppContext,
    tier: &crate::cache::l2::tier::SharedTier,
    keys: Vec<HotKey>,
    warming: &WarmingConfig,
) {
    if keys.is_empty() {
        info!("no hot key counted in this run: the hot keys kept in Redis are left as they were");
        return;
    }
    // Bounded: a stop must not wait long for Redis.
    let timeout = warming.timeout.min(std::time::Duration::from_secs(5));
    let previous = match get_shared(tier, ctx, timeout).await {
        Ok(previous) => previous.unwrap_or_default(),
        Err(e) => {
            warn!(error = %e, "hot keys kept in Redis unreadable: replaced by this run's");
            Vec::new()
        }
    };
    let merged = hotkeys::merge(previous, keys, warming.hot_keys);
    let count = merged.len();
    let bytes = hotkeys::encode(&merged, ctx.services.cache.secret());
    let mut conn = tier.conn();
    let mut cmd = redis::cmd("SET");
    let set = cmd
        .arg(shared_key(tier))
        .arg(bytes)
        .query_async::<()>(&mut conn);
    match tokio::time::timeout(timeout, set).await {
        Ok(Ok(())) => info!(keys = count, "hot keys written to Redis"),
        Ok(Err(e)) => warn!(error = %e, "hot keys not written to Redis"),
        Err(_) => warn!("hot keys not written to Redis: it did not answer in time"),
    }
}
