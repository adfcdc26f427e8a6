//! Builds the cache services from the configuration (L1 sizes, key secret, the catalog's
//! side connections from `upstream.url`) and runs the catalog poller and change-stream
//! tasks.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::cache::l2::envelope::EnvelopeKey;
use crate::cache::l2::store::L2Settings;
use crate::cache::l2::tier::{Consistency, SharedTier, TierSettings};
use crate::cache::{Cache, CacheLimits, KeySecret, SecretError};
use crate::catalog::{Catalog, CatalogConfig, Poller};
use crate::cdc::hub::Hub;
use crate::config::{CdcMode, Config, RedisConfig, RedisConsistency, UpstreamTarget};
use crate::context::AppContext;
use crate::context::Services;
use crate::tasks::Tasks;

/// Why the cache services could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cache.secret: {0}")]
    Secret(#[from] SecretError),
    #[error("cache.redis: {0}")]
    Redis(#[from] crate::cache::l2::tier::TierError),
    #[error(transparent)]
    Behind(#[from] crate::behind::BehindError),
    /// The TLS set-up `upstream.url` asks for, for pgmemo's own connections (the catalog's
    /// and the write-behind flusher's).
    #[error("upstream.url TLS: {0}")]
    UpstreamTls(#[from] crate::upstream::tls::TlsSetupError),
}

/// The cache, the catalog and the invalidation sources for `config`, and the shared tier's
/// background work to start (with `cache.redis`).
pub fn build(
    config: &Config,
    target: &UpstreamTarget,
    tasks: &Tasks,
) -> Result<(Services, Option<TierTask>), BuildError> {
    let secret = match &config.cache.secret {
        Some(hex) => KeySecret::from_hex(hex)?,
        None => KeySecret::generate()?,
    };
    let mut limits = CacheLimits::with_secret(secret);
    limits.max_memory = config.cache.max_memory.0;
    limits.max_entry_size = usize::try_from(config.cache.max_entry_size.0).unwrap_or(usize::MAX);
    limits.default_ttl = config.cache.ttl;
    limits.l1_enabled = config.cache.l1.enabled;
    let envelope = EnvelopeKey::for_secret(&limits.secret);
    let queue_key = crate::behind::stream::QueueKey::new(limits.secret.behind_queue_key());
    let max_entry = limits.max_entry_size;
    let max_tags = limits.max_tags;
    let cache = Arc::new(Cache::new(limits));
    let (shared, task) = match &config.cache.redis {
        None => (None, None),
        Some(redis) => {
            let (tier, writer) = SharedTier::new(
                tier_settings(redis, max_entry, max_tags),
                envelope,
                tasks.clone(),
            )?;
            let task = TierTask {
                tier: Arc::clone(&tier),
                writer,
            };
            (Some(tier), Some(task))
        }
    };

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
    cc.dialer = Some(Arc::new(crate::upstream::Upstream::new(target.clone())?));
    cc.connect_timeout = config.upstream.connect_timeout;
    cc.memo_bytes = config.cache.sql_memory().catalog_memo;
    let catalog = Arc::new(Catalog::new(cc));
    let cdc = match config.invalidation.cdc {
        CdcMode::Off => Hub::none(),
        CdcMode::Auto | CdcMode::On => {
            Hub::new(&config.invalidation.databases(target.dbname.as_deref()))
        }
    };
    let memory = config.cache.sql_memory();
    // Hot keys are kept in `warming.hot_keys_file`, or in Redis with a shared tier and no
    // file (see `session::cache_side::hot`); with neither they are not counted at all.
    let hot_keys = if config.warming.hot_keys_file.is_some() || shared.is_some() {
        config.warming.hot_keys
    } else {
        0
    };
    let mut services = Services::new(cache, catalog, cdc, shared, memory, hot_keys);
    // Read at start-up: plans resolve their statistics handle once, so a reload could not
    // turn statistics on or off for the plans already memoised.
    services.query_stats = Arc::new(crate::planner::stats::QueryStats::new(
        config.admin.query_stats,
        usize::try_from(config.admin.query_stats_bytes.0).unwrap_or(usize::MAX),
    ));
    let link = crate::behind::Link {
        upstream: crate::upstream::Upstream::new(target.clone())?,
        login: crate::config::Login {
            user: target
                .user
                .clone()
                .unwrap_or_else(|| crate::config::refresh::DEFAULT_SIDE_USER.to_owned()),
            password: target.password.clone().map(crate::config::Secret::new),
        },
        connect_timeout: config.upstream.connect_timeout,
        batch_timeout: std::time::Duration::from_secs(30),
    };
    // The Redis queue kind gets a connection of its own: an append waits for Redis's AOF
    // (fsync with `appendfsync always`), longer than the cache's lookups may, and a reply
    // that misses its timeout is of unknown outcome for the client.
    let stream = match &config.cache.redis {
        Some(redis) if config.behind.kind(true) == crate::config::QueueKind::Redis => {
            let mut seeds = vec![redis.url.clone()];
            seeds.extend(redis.cluster_nodes.iter().cloned());
            let timeout = redis.timeout.max(BEHIND_REDIS_TIMEOUT);
            Some(crate::behind::StreamLink {
                // No request is sent twice: an append whose reply was lost may have run.
                conn: crate::redis_link::conn::RedisConn::with_retries(
                    &seeds,
                    redis.cluster,
                    timeout,
                    0,
                )
                .map_err(crate::behind::BehindError::Redis)?,
                namespace: redis.namespace.clone(),
                key: queue_key,
                timeout,
                check_persistence: crate::config::behind::any_behind(&config.rules),
            })
        }
        _ => None,
    };
    services.behind = crate::behind::Behind::open(
        &config.behind,
        link,
        Arc::clone(&services.invalidator),
        stream,
    )?;
    Ok((services, task))
}

/// Least reply timeout of the Redis queue's calls (an append waits for Redis's fsync).
const BEHIND_REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// The shared tier's background work, started once the runtime serves.
pub struct TierTask {
    tier: Arc<SharedTier>,
    writer: crate::cache::l2::store::L2Writer<crate::redis_link::conn::RedisConn>,
}

impl TierTask {
    pub fn start(self, tasks: &Tasks, stop: &CancellationToken) {
        tasks.spawn("l2-tier", self.tier.run(self.writer, stop.clone()));
    }
}

fn tier_settings(redis: &RedisConfig, max_entry: usize, max_tags: usize) -> TierSettings {
    let mut seeds = vec![redis.url.clone()];
    seeds.extend(redis.cluster_nodes.iter().cloned());
    TierSettings {
        store: L2Settings {
            namespace: redis.namespace.clone(),
            timeout: redis.timeout,
            compress_min: usize::try_from(redis.compress_min.0).unwrap_or(usize::MAX),
            max_entry,
            write_queue: redis.write_queue,
            ..L2Settings::default()
        },
        consistency: match redis.consistency {
            RedisConsistency::Strict => Consistency::Strict,
            RedisConsistency::Fast => Consistency::Fast,
        },
        seeds,
        cluster: redis.cluster,
        max_tags,
        max_pending: 4096,
    }
}

/// Starts one change-stream task per covered database (none with `cdc = off`). With a
/// shared tier, the instances elect one to run them (see `cdc::elect`).
pub fn start_cdc(ctx: &Arc<AppContext>, stop: &CancellationToken) {
    if ctx.services.cdc.streams().next().is_none() {
        return;
    }
    if let Some(tier) = &ctx.services.shared {
        ctx.tasks.spawn(
            "cdc-elect",
            crate::cdc::elect::run(Arc::clone(ctx), Arc::clone(tier), stop.clone()),
        );
        return;
    }
    for stream in ctx.services.cdc.streams() {
        ctx.tasks.spawn(
            "cdc-stream",
            crate::cdc::demand::run(Arc::clone(ctx), Arc::clone(stream), stop.clone()),
        );
    }
}

/// Polls the catalog every `catalog.poll_interval` (re-read each round, so SIGHUP applies)
/// and turns what changed into bumps, until `stop`. Only databases a client session uses
/// (see `side`) are polled; the catalog connections of the others are closed once their
/// grace ends, and a database whose connections were closed is polled as soon as a session
/// of it comes (its cache is not used before).
pub async fn run_poller(ctx: Arc<AppContext>, stop: CancellationToken) {
    let poller = Poller::new(Arc::clone(&ctx.services.catalog));
    let mut next_poll = tokio::time::Instant::now() + ctx.config().catalog.poll_interval;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(next_poll) => {}
            _ = ctx.side.changed(Duration::from_millis(250)) => {}
        }
        crate::side::release::close_idle(&ctx).await;
        let side = Arc::clone(&ctx.side);
        let invalidator = Arc::clone(&ctx.services.invalidator);
        let apply = move |changes: Vec<crate::catalog::Change>| {
            if !changes.is_empty() {
                invalidator.apply_catalog(changes);
            }
        };
        if tokio::time::Instant::now() >= next_poll {
            poller.poll_where(|db| side.active(db), apply).await;
            if let Some(via) = ctx.side.with_sessions().first() {
                let _ = ctx.services.catalog.forget_gone(via).await;
            }
            next_poll = tokio::time::Instant::now() + ctx.config().catalog.poll_interval;
        } else {
            let returning = ctx.services.catalog.unwatched();
            if returning.iter().any(|db| side.active(db)) {
                poller
                    .poll_where(
                        |db| returning.iter().any(|r| r == db) && side.active(db),
                        apply,
                    )
                    .await;
            }
        }
    }
}
