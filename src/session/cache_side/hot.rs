//! Hot keys (`warming.hot_keys`): the session's side of counting the most requested cached
//! results (its sampled hits, see `refresh::hot`), writing them to `warming.hot_keys_file`
//! at shutdown, and reading them back at the next start for warming (`warming`).
//!
//! The file is written after the sessions have ended, atomically and signed with the cache
//! secret (`refresh::hotkeys`); a run that counted no hit leaves the previous file as it is
//! (a restart with no traffic does not forget what was hot). A file that does not verify
//! (changed, written under another secret, truncated) is refused with a warning and
//! ignored: pgmemo starts and warms its `[[warm]]` entries only. Keeping the hot keys in
//! Redis (`cache.redis` without a file) is not done: they are then not counted at all.

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

/// The previous run's hot keys, as items to warm (at most `warming.hot_keys`, hottest
/// first); none without a file, when there is none yet, or when it is refused (logged).
pub(super) fn load(ctx: &AppContext, warming: &WarmingConfig) -> Vec<Arc<Item>> {
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
    let mut items = Vec::with_capacity(keys.len().min(warming.hot_keys));
    for key in keys.iter().take(warming.hot_keys) {
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
    info!(path = %path.display(), keys = items.len(), "hot keys read");
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
    let (Some(path), Some(counter)) = (
        config.warming.hot_keys_file.clone(),
        ctx.services.hot_keys.as_ref(),
    ) else {
        return;
    };
    let keys: Vec<HotKey> = counter
        .top()
        .iter()
        .filter_map(|(e, count)| {
            // Counts are of sampled hits: scaled back to hits, for the reader of the file.
            let hits = count.saturating_mul(u64::from(super::HIT_TIMING_SAMPLE));
            HotKey::from_parts(&e.login, &e.fingerprint, &e.request, hits)
        })
        .collect();
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
