//! AppContext: the services every session shares, passed explicitly (no globals). The live
//! config is swapped atomically on SIGHUP; the parts that cannot change at runtime (listen
//! addresses, TLS, upstream URL) are fixed here at start-up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use tokio_rustls::TlsAcceptor;

use crate::cache::Cache;
use crate::cache::l2::tier::SharedTier;
use crate::cancel::CancelRegistry;
use crate::catalog::Catalog;
use crate::catalog::login::LoginMemo;
use crate::cdc::hub::Hub;
use crate::config::Config;
use crate::config::rules::Rules;
use crate::invalidation::Invalidator;
use crate::planner::memo::PlanMemo;
use crate::side::Presence;
use crate::tasks::Tasks;
use crate::upstream::Upstream;

/// The compiled rules of the live config, with a generation that moves on every reload (plans
/// memoised under an older generation are recomputed).
pub struct RulesGen {
    pub rules: Rules,
    pub generation: u64,
    /// Some rule matches on query text (plans cannot then be shared between texts that
    /// differ only in numbers).
    pub has_query_rules: bool,
}

pub struct AppContext {
    config: ArcSwap<Config>,
    rules: ArcSwap<RulesGen>,
    /// Mirrors of hot config facts, read on every cacheable query without touching the
    /// config's reference count.
    cache_enabled: AtomicBool,
    rules_generation: AtomicU64,
    /// The result cache, the catalog and the invalidation sources.
    pub services: Services,
    pub upstream: Upstream,
    /// Client-leg TLS, when `server.tls` is configured.
    pub tls: Option<ClientTls>,
    pub cancel_keys: Arc<CancelRegistry>,
    /// Client sessions per database: when pgmemo's own side connections may be open.
    pub side: Arc<Presence>,
    /// pgmemo's named background tasks (waited for at shutdown).
    pub tasks: Tasks,
    /// Outcomes of configuration reloads, for the admin console's `RELOAD`.
    pub reloads: Reloads,
    next_session_id: AtomicU64,
}

/// Configuration reloads as they finish (SIGHUP, or the console's `RELOAD`, which raises
/// SIGHUP so that both of its handlers run, the server's and the log level's).
pub struct Reloads {
    /// `RELOAD`s asked for so far (each raises SIGHUP after counting itself).
    requested: AtomicU64,
    /// The last reload finished: the `requested` count it saw when it began reading the
    /// sources, and its error (None: applied). A `RELOAD` waits for one that began after it
    /// asked, so an earlier reload still running never answers for it.
    done: tokio::sync::watch::Sender<(u64, Option<String>)>,
    /// Set once the server's SIGHUP handler is installed: before it, SIGHUP would end the
    /// process.
    listening: AtomicBool,
}

impl Default for Reloads {
    fn default() -> Self {
        Self {
            requested: AtomicU64::new(0),
            done: tokio::sync::watch::Sender::new((0, None)),
            listening: AtomicBool::new(false),
        }
    }
}

impl Reloads {
    /// The server's handler is installed.
    pub fn listening(&self) {
        self.listening.store(true, Ordering::Release);
    }

    /// A reload begins reading the sources: the token it finishes with.
    pub fn begin(&self) -> u64 {
        self.requested.load(Ordering::Acquire)
    }

    /// The reload begun with `token` finished: `error` is why it was rejected.
    pub fn finished(&self, token: u64, error: Option<String>) {
        self.done.send_replace((token, error));
    }

    /// Raises SIGHUP and waits (at most `wait`) for the reload it starts; its error, if it
    /// was rejected. `Err(None)`: no handler, or no reload finished in time.
    pub async fn request(&self, wait: std::time::Duration) -> Result<(), Option<String>> {
        if !self.listening.load(Ordering::Acquire) {
            return Err(None);
        }
        let mut rx = self.done.subscribe();
        let mine = self.requested.fetch_add(1, Ordering::AcqRel) + 1;
        // SAFETY: kill(2) on our own pid with a signal whose handler is installed.
        let raised = unsafe { libc::kill(libc::getpid(), libc::SIGHUP) } == 0;
        if !raised {
            return Err(None);
        }
        match tokio::time::timeout(wait, rx.wait_for(|(began, _)| *began >= mine)).await {
            Ok(Ok(seen)) => match &seen.1 {
                None => Ok(()),
                Some(e) => Err(Some(e.clone())),
            },
            _ => Err(None),
        }
    }
}

/// The acceptor and the DER of the leaf certificate pgmemo presents (for channel binding:
/// SCRAM-SHA-256-PLUS only works end to end when it equals the upstream's certificate).
pub struct ClientTls {
    pub acceptor: TlsAcceptor,
    pub leaf_der: Vec<u8>,
}

impl AppContext {
    pub fn new(
        config: Config,
        upstream: Upstream,
        tls: Option<ClientTls>,
        services: Services,
        tasks: Tasks,
    ) -> Self {
        let rules = RulesGen {
            rules: Rules::new(&config.rules, config.cache.ttl),
            generation: 1,
            has_query_rules: config.rules.iter().any(|r| r.query.is_some()),
        };
        services.verify.set_sample(config.cache.verify_sample);
        services
            .verify
            .set_max_per_second(config.cache.verify_max_per_second);
        Self {
            cache_enabled: AtomicBool::new(config.cache.enabled),
            rules_generation: AtomicU64::new(rules.generation),
            config: ArcSwap::from_pointee(config),
            rules: ArcSwap::from_pointee(rules),
            services,
            upstream,
            tls,
            cancel_keys: Arc::new(CancelRegistry::default()),
            side: Presence::new(),
            tasks,
            reloads: Reloads::default(),
            next_session_id: AtomicU64::new(1),
        }
    }

    /// The current configuration (cheap; a session reads it once at start).
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    pub fn replace_config(&self, config: Config) {
        let generation = self.rules.load().generation + 1;
        self.rules.store(Arc::new(RulesGen {
            rules: Rules::new(&config.rules, config.cache.ttl),
            generation,
            has_query_rules: config.rules.iter().any(|r| r.query.is_some()),
        }));
        self.cache_enabled
            .store(config.cache.enabled, Ordering::Release);
        self.services.verify.set_sample(config.cache.verify_sample);
        self.services
            .verify
            .set_max_per_second(config.cache.verify_max_per_second);
        self.config.store(Arc::new(config));
        self.rules_generation.store(generation, Ordering::Release);
    }

    /// `cache.enabled` now.
    pub fn cache_enabled(&self) -> bool {
        self.cache_enabled.load(Ordering::Acquire)
    }

    /// The generation of the rules now (plans computed under another are recomputed).
    pub fn rules_generation(&self) -> u64 {
        self.rules_generation.load(Ordering::Acquire)
    }

    /// The compiled rules now (cheap).
    pub fn rules(&self) -> Arc<RulesGen> {
        self.rules.load_full()
    }

    pub fn next_session_id(&self) -> u64 {
        self.next_session_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// Shared services of the cache, in the application context.
pub struct Services {
    pub cache: Arc<Cache>,
    pub catalog: Arc<Catalog>,
    pub invalidator: Arc<Invalidator>,
    /// Plans by exact text.
    pub plans: PlanMemo,
    /// Plans by shape (numeric literals replaced): texts that differ only in numbers share
    /// the analysis and catalog work.
    pub shapes: PlanMemo,
    /// The change streams: a covered database whose stream is not streaming does not use
    /// the cache.
    pub cdc: Arc<Hub>,
    /// The shared tier on Redis, when `cache.redis` is set.
    pub shared: Option<Arc<SharedTier>>,
    /// Settings probe results at login, by login key.
    pub logins: LoginMemo,
    /// What re-running a stored result takes, for write-through (see `refresh::recipes`).
    pub recipes: crate::refresh::recipes::Recipes,
    /// Results for the background refresher (`session::cache_side::background`).
    pub refresh_queue: crate::refresh::queue::Queue,
    /// The cap on `refresh_adaptive` refreshes (see `refresh::share`).
    pub refresh_share: crate::refresh::share::Share,
    /// The sampled hit counter behind `warming.hot_keys` (`None`: not kept).
    pub hot_keys: Option<crate::refresh::hot::HotKeys>,
    /// Where warming is, for `/readyz`.
    pub warming: Arc<crate::refresh::progress::WarmingProgress>,
    /// The write-behind queues, when `behind.journal_dir` is set (see `behind`).
    pub behind: Option<Arc<crate::behind::Behind>>,
    /// Verify mode's sampling and the checks handed to its checker (see `refresh::verify`).
    pub verify: crate::refresh::verify::Verify,
    /// Per-statement-shape statistics (`admin.query_stats`), and the relations plans named.
    pub query_stats: Arc<crate::planner::stats::QueryStats>,
}

impl Services {
    /// The cache's tiers, for one lookup.
    pub fn tiers(&self) -> crate::cache::tiers::Tiers<'_> {
        crate::cache::tiers::Tiers {
            cache: &self.cache,
            shared: self.shared.as_ref(),
        }
    }

    pub fn new(
        cache: Arc<Cache>,
        catalog: Arc<Catalog>,
        cdc: Hub,
        shared: Option<Arc<SharedTier>>,
        memory: crate::config::SqlMemory,
        hot_keys: usize,
    ) -> Self {
        Self {
            cdc: Arc::new(cdc),
            invalidator: Arc::new(Invalidator::new(
                Arc::clone(&cache),
                Arc::clone(&catalog),
                shared.clone(),
            )),
            shared,
            cache,
            catalog,
            plans: PlanMemo::new(65_536, memory.plans),
            shapes: PlanMemo::new(16_384, memory.shapes),
            logins: LoginMemo::default(),
            recipes: crate::refresh::recipes::Recipes::new(memory.recipes),
            refresh_queue: crate::refresh::queue::Queue::default(),
            refresh_share: crate::refresh::share::Share::default(),
            hot_keys: (hot_keys > 0).then(|| crate::refresh::hot::HotKeys::new(hot_keys)),
            warming: Arc::default(),
            behind: None,
            // Set from the configuration by `AppContext::new` and on every reload.
            verify: crate::refresh::verify::Verify::new(
                0.0,
                crate::config::CacheConfig::default().verify_max_per_second,
            ),
            query_stats: Arc::new(crate::planner::stats::QueryStats::new(
                true,
                crate::config::DEFAULT_QUERY_STATS_BYTES as usize,
            )),
        }
    }
}
