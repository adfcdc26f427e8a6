//! The accept loop and the process lifecycle: binds the listeners, prints the ready line,
//! enforces `server.max_client_connections` (every excess connection gets 53300), reloads
//! the config on SIGHUP, and on shutdown stops accepting, lets sessions finish their
//! transaction up to `server.shutdown_timeout`, then closes the rest with 57P01.

mod heap;
pub mod services;
pub mod tls;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::admin::{self, AdminState, Readiness};
use crate::config::{Config, ConfigErrors, InvalidationConfig, Sources, UpstreamUrlError};
use crate::context::AppContext;
use crate::error::ClientError;
use crate::session::{self, Shutdown};
use crate::tasks::Tasks;
use crate::telemetry::{self, names};
use crate::upstream::Upstream;
use crate::workers;

/// Connections over the limit being told 53300 after their startup packet (TLS negotiated,
/// a cancel request forwarded) at once; past this, each is told at accept ([`refuse_now`]).
const MAX_REJECTING: usize = 64;
/// What [`refuse_now`] reads of what the client already sent before closing, at most.
const REFUSE_DRAIN_BYTES: usize = 4096;
/// After `shutdown_timeout` and the forced close, how long sessions get to write 57P01.
const FORCE_GRACE: Duration = Duration::from_secs(5);
/// How often the L1's maintenance runs without traffic (see [`housekeep_cache`]).
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("invalid configuration:\n{0}")]
    Config(#[from] ConfigErrors),
    #[error("upstream.url: {0}")]
    UpstreamUrl(#[from] UpstreamUrlError),
    #[error("upstream TLS: {0}")]
    UpstreamTls(#[from] crate::upstream::tls::TlsSetupError),
    #[error("server.tls: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Workers(#[from] workers::WorkerError),
    #[error(transparent)]
    Services(#[from] services::BuildError),
    #[error("metrics: {0}")]
    Metrics(#[from] telemetry::recorder::RecorderError),
}

/// Runs pgmemo until `shutdown` is cancelled and the sessions have been closed.
pub async fn run(
    sources: Sources,
    shutdown: CancellationToken,
    tasks: Tasks,
) -> Result<(), ServerError> {
    let config = sources.load()?;
    let metrics = telemetry::recorder::install()?;
    let upstream = Upstream::new(config.upstream_target()?)?;
    let client_tls = config.server.tls.as_ref().map(tls::acceptor).transpose()?;
    let listener = bind(config.server.listen).await?;
    let admin_listener = bind(config.admin.listen).await?;
    let listen_addr = listener.local_addr().unwrap_or(config.server.listen);
    let admin_addr = admin_listener.local_addr().unwrap_or(config.admin.listen);

    let target = upstream.target().clone();
    let readiness = Arc::new(Readiness::new(
        target.host.clone(),
        target.port,
        config.upstream.connect_timeout,
    ));
    let (services, tier_task) = services::build(&config, &target, &tasks)?;
    let ctx = Arc::new(AppContext::new(
        config, upstream, client_tls, services, tasks,
    ));

    let admin_stop = CancellationToken::new();
    let admin_access = Arc::new(admin::AdminAccess::from_config(&ctx.config().admin));
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        AdminState {
            metrics,
            readiness: Arc::clone(&readiness),
            invalidation: admin::InvalidationHandle {
                invalidator: Arc::clone(&ctx.services.invalidator),
                catalog: Arc::clone(&ctx.services.catalog),
            },
            cdc: Arc::clone(&ctx.services.cdc),
            behind: ctx.services.behind.clone(),
            access: Arc::clone(&admin_access),
            api: Some(admin::ApiState {
                app: Arc::clone(&ctx),
            }),
        },
        admin_stop.clone(),
    ));
    readiness.watch_warming(Arc::clone(&ctx.services.warming));
    start_background(&ctx, &shutdown, sources, tier_task, admin_access);

    readiness.set_listener_up(true);
    info!(%listen_addr, %admin_addr, upstream = ctx.upstream.address(), "pgmemo ready");
    // The ready line is a contract for tests and tools: one line on stdout.
    println!("pgmemo listening on {listen_addr} admin {admin_addr}");

    let pool = Arc::new(workers::Workers::start(
        ctx.config().server.worker_threads,
        ctx.config().server.pin_workers,
    )?);
    info!(
        workers = pool.len(),
        pinned = pool.pinned(),
        "session workers started"
    );
    let sessions = TaskTracker::new();
    let drain = session::Signal::default();
    let force = session::Signal::default();
    let signals = Shutdown {
        drain: drain.clone(),
        force: force.clone(),
    };
    accept_until_shutdown(&ctx, &listener, &pool, &sessions, &signals, &shutdown).await;

    drop(listener);
    readiness.set_listener_up(false);
    // One budget for the whole shutdown: the sessions' drain, the write-behind queue's and
    // the background tasks' share it, so SIGTERM ends pgmemo within `shutdown_timeout`
    // (plus the short graces below), as an orchestrator's kill timer expects.
    let budget = ctx.config().server.shutdown_timeout;
    let until = tokio::time::Instant::now() + budget;
    let left = || until.saturating_duration_since(tokio::time::Instant::now());
    drain_sessions(&sessions, &drain, &force, budget).await;
    drop(pool);
    // No session can queue a write any more: apply what is queued (the rest at next start).
    if let Some(behind) = &ctx.services.behind {
        behind.drain(left()).await;
    }
    // Every session has ended: the hot keys counted are final.
    crate::session::cache_side::hot::save(&ctx).await;
    // The background tasks stopped on the shutdown token (or with the workers' runtimes);
    // they get a grace even when the budget is spent, as the sessions did.
    match ctx.tasks.wait(left().max(FORCE_GRACE)).await {
        Ok(()) => info!("background tasks stopped"),
        Err(left) => warn!(
            ?left,
            "background tasks still running at the shutdown deadline"
        ),
    }
    admin_stop.cancel();
    let _ = admin_task.await;
    info!("pgmemo stopped");
    Ok(())
}

/// Accepts clients until `shutdown`: each within `server.max_client_connections` becomes a
/// session on a worker; past it, up to MAX_REJECTING are answered 53300 by a task, the rest
/// at once by [`refuse_now`].
async fn accept_until_shutdown(
    ctx: &Arc<AppContext>,
    listener: &TcpListener,
    pool: &Arc<workers::Workers>,
    sessions: &TaskTracker,
    signals: &Shutdown,
    shutdown: &CancellationToken,
) {
    let active = Arc::new(AtomicUsize::new(0));
    let rejecting = Arc::new(AtomicUsize::new(0));
    let too_many = ClientError::too_many_connections().encode();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let max = ctx.config().server.max_client_connections;
        if let Some(slot) = Slot::take(&active, max) {
            let shutdown = Shutdown {
                drain: signals.drain.clone(),
                force: signals.force.clone(),
            };
            let ctx = Arc::clone(ctx);
            let workers = Some(Arc::clone(pool));
            hand_off(pool, sessions, tcp, move |tcp, tracked| async move {
                let home = session::Home {
                    workers,
                    keep: vec![Box::new(slot), tracked],
                };
                session::serve(ctx, tcp, peer, shutdown, home).await;
            })
            .await;
        } else if let Some(slot) = Slot::take(&rejecting, MAX_REJECTING) {
            let ctx = Arc::clone(ctx);
            hand_off(pool, sessions, tcp, move |tcp, tracked| async move {
                let _held = (slot, tracked);
                session::reject_busy(ctx, tcp).await;
            })
            .await;
        } else {
            refuse_now(tcp, &too_many);
        }
    }
}

/// The background work of a running server, each a named task (see `tasks`): the catalog
/// poller, the change streams, the background refresher, warming, the shared tier, and the
/// SIGUSR1/SIGHUP handlers.
fn start_background(
    ctx: &Arc<AppContext>,
    shutdown: &CancellationToken,
    sources: Sources,
    tier_task: Option<services::TierTask>,
    admin_access: Arc<admin::AdminAccess>,
) {
    ctx.tasks.spawn(
        "catalog-poller",
        services::run_poller(Arc::clone(ctx), shutdown.clone()),
    );
    services::start_cdc(ctx, shutdown);
    crate::session::cache_side::background::start(ctx, shutdown);
    ctx.tasks.spawn(
        "cache-housekeeping",
        housekeep_cache(Arc::clone(ctx), shutdown.clone()),
    );
    // Before the listener is marked up: readiness waits for the warming at start-up.
    crate::session::cache_side::warming::start(ctx, shutdown);
    if let Some(task) = tier_task {
        task.start(&ctx.tasks, shutdown);
    }
    ctx.tasks.spawn(
        "sigusr1-flush",
        flush_on_sigusr1(Arc::clone(&ctx.services.invalidator), shutdown.clone()),
    );
    ctx.tasks.spawn(
        "sighup-reload",
        reload_on_sighup(Arc::clone(ctx), sources, admin_access, shutdown.clone()),
    );
}

/// Runs the L1's pending maintenance every [`HOUSEKEEPING_INTERVAL`]: the cache otherwise
/// does it only as lookups and stores come, so with no traffic expired entries would hold
/// their memory, and their departure (counted: evictions, wasted refreshes) would not show.
/// Every [`heap::TRIM_EVERY`] it then gives the heap's free pages back to the system.
async fn housekeep_cache(ctx: Arc<AppContext>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(HOUSEKEEPING_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_trim = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let ctx = Arc::clone(&ctx);
        let trim = last_trim.elapsed() >= heap::TRIM_EVERY;
        if trim {
            last_trim = tokio::time::Instant::now();
        }
        // Off the reactor: many entries expiring at once take a while to remove.
        let _ = tokio::task::spawn_blocking(move || {
            ctx.services.cache.run_pending_tasks();
            if trim {
                heap::release_free_pages();
            }
        })
        .await;
    }
}

/// Lets sessions finish their transactions until `deadline`, then closes the rest (they
/// roll back) and waits a short grace for them.
async fn drain_sessions(
    sessions: &TaskTracker,
    drain: &session::Signal,
    force: &session::Signal,
    deadline: Duration,
) {
    info!(
        sessions = sessions.len(),
        ?deadline,
        "shutting down: waiting for sessions to finish their transactions"
    );
    sessions.close();
    drain.raise();
    if tokio::time::timeout(deadline, sessions.wait())
        .await
        .is_err()
    {
        warn!(
            sessions = sessions.len(),
            "shutdown deadline reached; closing remaining sessions"
        );
        force.raise();
        let _ = tokio::time::timeout(FORCE_GRACE, sessions.wait()).await;
    }
}

/// Over the limit with [`MAX_REJECTING`] rejections already in progress: answers 53300 at
/// once, without waiting for the startup packet (in plain text, as PostgreSQL's postmaster
/// answers when it cannot start a backend), and closes. No task and no wait, so a flood
/// costs the accept loop one write and one read per connection: a fresh socket's send
/// buffer takes the small frame whole (a socket that cannot is closed unanswered, counted).
/// What the client already sent is read first, so that the close is a FIN rather than a
/// reset, which could make the client's stack drop the answer.
fn refuse_now(tcp: tokio::net::TcpStream, frame: &[u8]) {
    use std::io::{Read, Write};
    // Out of the reactor: a plain non-blocking socket, written and closed right here.
    let answered = tcp.into_std().is_ok_and(|socket| {
        let written = matches!((&socket).write(frame), Ok(n) if n == frame.len());
        let mut sink = [0u8; REFUSE_DRAIN_BYTES];
        let _ = (&socket).read(&mut sink);
        let _ = socket.shutdown(std::net::Shutdown::Write);
        written
    });
    let reason = if answered {
        "max_connections"
    } else {
        "max_connections_unanswered"
    };
    metrics::counter!(names::CLIENT_CONNECTIONS_REJECTED, "reason" => reason).increment(1);
}

/// Moves an accepted socket to a worker thread; the session is tracked for shutdown.
async fn hand_off<F, Fut>(
    pool: &workers::Workers,
    sessions: &TaskTracker,
    tcp: tokio::net::TcpStream,
    serve: F,
) where
    F: FnOnce(tokio::net::TcpStream, Box<dyn Send>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    // Deregister from this runtime's reactor; the worker registers it with its own.
    let std = match tcp.into_std() {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot hand a connection to a worker");
            return;
        }
    };
    let tracked = sessions.token();
    let job: workers::Job = Box::new(move || {
        Box::pin(async move {
            match tokio::net::TcpStream::from_std(std) {
                Ok(tcp) => serve(tcp, Box::new(tracked)).await,
                Err(e) => warn!(error = %e, "cannot register a connection on its worker"),
            }
        })
    });
    if let Err(e) = pool.submit(job, None).await {
        error!(error = %e, "connection dropped");
    }
}

async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

/// One unit of a counted capacity, released on Drop.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(counter: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(Arc::clone(counter)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// SIGHUP: re-read the sources; apply what can change at runtime, keep the rest and say so.
/// The admin server's token and allowed hosts go to `admin_access`.
async fn reload_on_sighup(
    ctx: Arc<AppContext>,
    sources: Sources,
    admin_access: Arc<admin::AdminAccess>,
    shutdown: CancellationToken,
) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "cannot install SIGHUP handler; config reload disabled");
            return;
        }
    };
    ctx.reloads.listening();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            s = hup.recv() => if s.is_none() { return },
        }
        let token = ctx.reloads.begin();
        match sources.load() {
            Ok(new) => {
                let merged = apply_reload(&ctx.config(), new);
                admin_access.reload(&merged.admin);
                ctx.replace_config(merged);
                if let Some(behind) = &ctx.services.behind {
                    behind.rules_reloaded();
                }
                metrics::counter!(names::CONFIG_RELOADS, "result" => "ok").increment(1);
                info!("configuration reloaded");
                ctx.reloads.finished(token, None);
            }
            Err(e) => {
                metrics::counter!(names::CONFIG_RELOADS, "result" => "error").increment(1);
                error!("configuration reload rejected, keeping the running config:\n{e}");
                ctx.reloads.finished(token, Some(e.to_string()));
            }
        }
    }
}

/// SIGUSR1: flush the whole result cache. The handler is installed when this is called, not
/// when the task first runs, so a SIGUSR1 sent right after the ready line cannot hit the
/// default disposition (which terminates the process).
fn flush_on_sigusr1(
    invalidator: Arc<crate::invalidation::Invalidator>,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    let usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1());
    async move {
        let mut usr1 = match usr1 {
            Ok(s) => s,
            Err(e) => {
                error!(error = %e, "cannot install SIGUSR1 handler; flush by signal disabled");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                s = usr1.recv() => if s.is_none() { return },
            }
            admin::flush_all(&invalidator, admin::Trigger::Signal);
        }
    }
}

/// The new config with the restart-only keys kept from the running one (logged if changed).
/// `log.level` is applied by the binary's own SIGHUP handler (it owns the tracing subscriber).
/// Reloadable cache keys (`cache.enabled`, `cache.ttl`, `cache.fill_wait_timeout`, `rules`,
/// `functions`, `catalog.poll_interval`, `invalidation.cdc_ack_wait_max`) pass through; the cache's sizing, key secret and
/// Redis tier are fixed when the cache is built, so they stay. `admin.token` and
/// `admin.allowed_hosts` pass through (the admin server's guard reloads them), except that a
/// token is never dropped while the running admin address is not loopback.
fn apply_reload(old: &Config, mut new: Config) -> Config {
    // The change streams start with the process; only the acknowledgement wait is read
    // per use.
    let kept_invalidation = InvalidationConfig {
        cdc_ack_wait_max: new.invalidation.cdc_ack_wait_max,
        ..old.invalidation.clone()
    };
    let restart_only = [
        ("server.listen", old.server.listen != new.server.listen),
        ("server.tls", old.server.tls != new.server.tls),
        ("upstream.url", old.upstream.url != new.upstream.url),
        ("admin.listen", old.admin.listen != new.admin.listen),
        (
            "cache.max_memory",
            old.cache.max_memory != new.cache.max_memory,
        ),
        (
            "cache.max_entry_size",
            old.cache.max_entry_size != new.cache.max_entry_size,
        ),
        ("cache.secret", old.cache.secret != new.cache.secret),
        ("cache.redis", old.cache.redis != new.cache.redis),
        (
            "invalidation (all but cdc_ack_wait_max)",
            kept_invalidation != new.invalidation,
        ),
    ];
    for (key, changed) in restart_only {
        if changed {
            warn!(
                key,
                "changed in the config file but needs a restart; keeping the running value"
            );
        }
    }
    new.server.listen = old.server.listen;
    new.server.tls.clone_from(&old.server.tls);
    new.upstream.url.clone_from(&old.upstream.url);
    new.admin.listen = old.admin.listen;
    // The running address may have left loopback only because a token was set: a file that
    // now binds loopback without one (restart-only) must not open the running address.
    if !new.admin.listen.ip().is_loopback() && new.admin.token.is_none() {
        warn!("admin.token removed while admin.listen is not loopback; keeping the running token");
        new.admin.token.clone_from(&old.admin.token);
    }
    new.cache.max_memory = old.cache.max_memory;
    new.cache.max_entry_size = old.cache.max_entry_size;
    new.cache.secret.clone_from(&old.cache.secret);
    new.cache.redis.clone_from(&old.cache.redis);
    new.invalidation = kept_invalidation;
    new
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_keeps_restart_only_keys() {
        let old = Config::default();
        let mut new = Config::default();
        new.server.listen = "127.0.0.1:1".parse().unwrap();
        new.upstream.url = "postgres://elsewhere:5432".into();
        new.server.max_client_connections = 7;
        new.upstream.connect_timeout = Duration::from_secs(1);
        let merged = apply_reload(&old, new);
        assert_eq!(merged.server.listen, old.server.listen);
        assert_eq!(merged.upstream.url, old.upstream.url);
        assert_eq!(merged.server.max_client_connections, 7);
        assert_eq!(merged.upstream.connect_timeout, Duration::from_secs(1));
    }

    #[test]
    fn reload_applies_cache_controls_but_not_cache_sizing() {
        use crate::config::{ByteSize, RedisConfig, Rule};
        let old = Config::default();
        let mut new = Config::default();
        // Reloadable.
        new.cache.enabled = false;
        new.cache.ttl = Duration::from_secs(5);
        new.cache.fill_wait_timeout = Duration::from_millis(20);
        new.catalog.poll_interval = Duration::from_secs(1);
        new.functions.no_side_effects = vec!["public.gen_id".into()];
        new.rules = vec![Rule {
            table: Some("t".into()),
            cache: Some(false),
            ..Rule::default()
        }];
        // Restart-only.
        new.cache.max_memory = ByteSize(8 << 20);
        new.cache.max_entry_size = ByteSize(4096);
        new.cache.secret = Some("00112233445566778899aabbccddeeff".into());
        new.cache.redis = Some(RedisConfig {
            url: "redis://127.0.0.1:1".into(),
            ..RedisConfig::default()
        });
        let merged = apply_reload(&old, new.clone());
        assert!(!merged.cache.enabled);
        assert_eq!(merged.cache.ttl, new.cache.ttl);
        assert_eq!(merged.cache.fill_wait_timeout, new.cache.fill_wait_timeout);
        assert_eq!(merged.catalog, new.catalog);
        assert_eq!(merged.functions, new.functions);
        assert_eq!(merged.rules, new.rules);
        assert_eq!(merged.cache.max_memory, old.cache.max_memory);
        assert_eq!(merged.cache.max_entry_size, old.cache.max_entry_size);
        assert_eq!(merged.cache.secret, None);
        assert_eq!(merged.cache.redis, None);
    }

    #[test]
    fn reload_applies_the_admin_token_but_never_drops_it_off_loopback() {
        use crate::config::Secret;
        let mut old = Config::default();
        old.admin.token = Some(Secret::new("the-old-admin-token-value"));
        let mut new = old.clone();
        new.admin.token = Some(Secret::new("the-new-admin-token-value"));
        new.admin.allowed_hosts = vec!["pgmemo".into()];
        let merged = apply_reload(&old, new.clone());
        assert_eq!(merged.admin.token, new.admin.token);
        assert_eq!(merged.admin.allowed_hosts, ["pgmemo"]);
        new.admin.token = None;
        assert_eq!(
            apply_reload(&old, new.clone()).admin.token,
            None,
            "loopback"
        );
        old.admin.listen = "0.0.0.0:9187".parse().unwrap();
        new.admin.listen = "127.0.0.1:9187".parse().unwrap();
        assert_eq!(apply_reload(&old, new).admin.token, old.admin.token);
    }

    #[test]
    fn slots_are_bounded_and_released() {
        let c = Arc::new(AtomicUsize::new(0));
        let a = Slot::take(&c, 2).unwrap();
        let _b = Slot::take(&c, 2).unwrap();
        assert!(Slot::take(&c, 2).is_none());
        drop(a);
        assert!(Slot::take(&c, 2).is_some());
    }
}
