//! Builds the cache services from the configuration (L1 sizes, key secret, the catalog's
//! side connections from `upstream.url`) and runs the catalog poller and change-stream
//! tasks.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::cache::{Cache, CacheLimits, KeySecret, SecretError};
use crate::catalog::{Catalog, CatalogConfig, Poller};
use crate::cdc::hub::Hub;
use crate::config::{CdcMode, Config, UpstreamTarget};
use crate::context::AppContext;
use crate::session::caching::Caching;

/// The cache, the catalog and the invalidation sources for `config`.
pub fn build(config: &Config, target: &UpstreamTarget) -> Result<Caching, SecretError> {
    let secret = match &config.cache.secret {
        Some(hex) => KeySecret::from_hex(hex)?,
        None => KeySecret::generate()?,
    };
    let mut limits = CacheLimits::with_secret(secret);
    limits.max_memory = config.cache.max_memory.0;
    limits.max_entry_size = usize::try_from(config.cache.max_entry_size.0).unwrap_or(usize::MAX);
    limits.default_ttl = config.cache.ttl;
    let cache = Arc::new(Cache::new(limits));

    let mut pg = tokio_postgres::Config::new();
    if target.host.starts_with('/') {
        pg.host_path(&target.host);
    } else {
        pg.host(&target.host);
    }
    pg.port(target.port);
    // Side connections read catalogs only; any role can. Without a user in the URL, the
    // conventional superuser name is tried (as libpq would use the OS user).
    pg.user(target.user.as_deref().unwrap_or("postgres"));
    if let Some(pw) = &target.password {
        pg.password(pw);
    }
    pg.application_name("pgmemo-catalog");
    let mut cc = CatalogConfig::new(pg);
    cc.connect_timeout = config.upstream.connect_timeout;
    let catalog = Arc::new(Catalog::new(cc));
    let cdc = match config.invalidation.cdc {
        CdcMode::Off => Hub::none(),
        CdcMode::Auto | CdcMode::On => {
            Hub::new(&config.invalidation.databases(target.dbname.as_deref()))
        }
    };
    Ok(Caching::new(cache, catalog, cdc))
}

/// Starts one change-stream task per covered database (none with `cdc = off`).
pub fn start_cdc(ctx: &Arc<AppContext>, stop: &CancellationToken) {
    for stream in ctx.caching.cdc.streams() {
        tokio::spawn(crate::cdc::runner::run(
            Arc::clone(ctx),
            Arc::clone(stream),
            stop.clone(),
        ));
    }
}

/// Polls the catalog every `catalog.poll_interval` (re-read each round, so SIGHUP applies)
/// and turns what changed into bumps, until `stop`.
pub async fn run_poller(ctx: Arc<AppContext>, stop: CancellationToken) {
    let poller = Poller::new(Arc::clone(&ctx.caching.catalog));
    loop {
        let interval = ctx.config().catalog.poll_interval;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let changes = poller.poll_once().await;
        if !changes.is_empty() {
            ctx.caching.invalidator.apply_catalog(changes);
        }
    }
}
