//! One task per client connection: negotiate (TLS, cancel), connect the upstream, relay
//! authentication, then run the relay loop until either side ends or pgmemo shuts down.
//! Every failure a client can observe becomes a proper ErrorResponse (see `error`).

pub mod auth;
pub mod cache_side;
pub mod console;
pub mod deferred;
pub mod fingerprint;
pub mod follow;
pub mod negotiate;
pub mod outq;
pub mod registry;
pub mod relay;
pub mod replies;
pub mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, warn};

use crate::cancel;
use crate::config::Config;
use crate::context::AppContext;
use crate::error::ClientError;
use crate::net::Stream;
use crate::protocol::startup::StartupMessage;
use crate::telemetry::names;
use crate::workers::{self, Workers};
use negotiate::{Negotiated, negotiate};
use relay::{Relay, RelayEnd, RelayError};

/// Time allowed to write a final error to a client that may not be reading.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(2);

/// Signals a session watches: `drain` asks it to close at its next idle point, `force` to
/// close now (both send 57P01).
#[derive(Clone, Default)]
pub struct Shutdown {
    pub drain: Signal,
    pub force: Signal,
}

/// A one-way shutdown signal: a token that wakes the sessions waiting on it, plus a flag they
/// check on every step. The token's own `is_cancelled` takes a mutex shared by every session,
/// which the relay would take twice per step; the flag is one atomic load.
#[derive(Clone, Default)]
pub struct Signal {
    token: CancellationToken,
    raised: Arc<std::sync::atomic::AtomicBool>,
}

impl Signal {
    /// Raises it: the flag first, so a session woken by the token always sees it.
    pub fn raise(&self) {
        self.raised
            .store(true, std::sync::atomic::Ordering::Release);
        self.token.cancel();
    }

    pub fn is_raised(&self) -> bool {
        self.raised.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The token to wait on.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

/// Where a session runs, and what must live as long as it does wherever it runs.
pub struct Home {
    /// The session workers: with pinned workers the session may move between them.
    pub workers: Option<Arc<Workers>>,
    /// Held until the session ends (connection slot, task tracking).
    pub keep: Vec<Box<dyn Send>>,
}

/// Serves one accepted client connection to completion.
pub async fn serve(
    ctx: Arc<AppContext>,
    tcp: TcpStream,
    peer: SocketAddr,
    shutdown: Shutdown,
    home: Home,
) {
    let id = ctx.next_session_id();
    let span = tracing::info_span!("session", id, %peer);
    metrics::counter!(names::CLIENT_CONNECTIONS_TOTAL).increment(1);
    let gauge = metrics::gauge!(names::CLIENT_CONNECTIONS_ACTIVE);
    gauge.increment(1.0);
    let active = scopeguard(move || gauge.decrement(1.0));
    let Some(live) = establish(&ctx, tcp, id, &shutdown)
        .instrument(span.clone())
        .await
    else {
        return;
    };
    let mut home = home;
    home.keep.push(Box::new(active));
    Running {
        ctx,
        live,
        state: state::SessionState::default(),
        shutdown,
        span,
        home,
    }
    .run()
    .await;
}

/// A session past authentication, with everything it needs to continue on any worker.
struct Running {
    ctx: Arc<AppContext>,
    live: Live,
    state: state::SessionState,
    shutdown: Shutdown,
    span: tracing::Span,
    home: Home,
}

type SessionFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

impl Running {
    /// Relays until the session ends here, or hands it to another worker.
    fn run(mut self) -> SessionFuture {
        Box::pin(async move {
            // The relay loop runs outside the span: entering it on every poll would cost
            // more than the relay's own work, and the loop logs nothing.
            let follow = match (&self.home.workers, workers::current()) {
                (Some(pool), Some(me))
                    if pool.pinned()
                        && self.live.client.detachable()
                        && self.live.upstream.detachable() =>
                {
                    Some((follow::Follow::new(me), pool.as_ref()))
                }
                _ => None,
            };
            let end = Relay::new(
                &mut self.live.client,
                &mut self.live.upstream,
                &mut self.state,
                &mut self.live.cache_side,
                self.live.max_message,
                self.shutdown.clone(),
                follow,
            )
            .with_cancels(self.live.cancel.as_mut())
            .run()
            .await;
            if let Ok(RelayEnd::Migrate(worker)) = end {
                self.migrate(worker).await;
                return;
            }
            self.live.cache_side.finish(&self.state);
            let span = self.span.clone();
            finish(&self.ctx, self.live, end).instrument(span).await;
        })
    }

    /// Detaches both sockets and continues on `worker`. The relay stopped where nothing is
    /// buffered or outstanding, so only the kernel's socket buffers hold data, and they
    /// move with the sockets.
    async fn migrate(self, worker: usize) {
        let Running {
            ctx,
            live,
            state,
            shutdown,
            span,
            home,
        } = self;
        let Live {
            client,
            upstream,
            max_message,
            mut cache_side,
            cancel,
        } = live;
        let Some(pool) = home.workers.clone() else {
            cache_side.finish(&state);
            return;
        };
        let (client, upstream) = match (client.detach(), upstream.detach()) {
            (Ok(c), Ok(u)) => (c, u),
            (c, u) => {
                let e = c.err().or(u.err()).map(|e| e.to_string());
                warn!(parent: &span, error = e.unwrap_or_default(), "cannot move the session to another worker; closing it");
                cache_side.finish(&state);
                return;
            }
        };
        metrics::counter!(names::SESSION_MIGRATIONS).increment(1);
        let job: workers::Job = Box::new(move || {
            Box::pin(async move {
                let (client, upstream) = match (client.attach(), upstream.attach()) {
                    (Ok(c), Ok(u)) => (c, u),
                    (c, u) => {
                        let e = c.err().or(u.err()).map(|e| e.to_string());
                        warn!(parent: &span, error = e.unwrap_or_default(), "cannot register the moved session; closing it");
                        cache_side.finish(&state);
                        return;
                    }
                };
                Running {
                    ctx,
                    live: Live {
                        client,
                        upstream,
                        max_message,
                        cache_side,
                        cancel,
                    },
                    state,
                    shutdown,
                    span,
                    home,
                }
                .run()
                .await;
            })
        });
        if let Err(e) = pool.submit(job, Some(worker)).await {
            error!(error = %e, "session dropped: no worker to move it to");
        }
    }
}

/// A session past authentication.
struct Live {
    client: Stream,
    upstream: Stream,
    max_message: usize,
    cache_side: cache_side::CacheSession,
    /// The session's cancel key (removed from the registry on drop) and the cancel requests
    /// held for it.
    cancel: Option<deferred::Deferral>,
}

/// Answers a connection over `server.max_client_connections`: cancels are still forwarded,
/// sessions get 53300 as from PostgreSQL.
pub async fn reject_busy(ctx: Arc<AppContext>, tcp: TcpStream) {
    metrics::counter!(names::CLIENT_CONNECTIONS_REJECTED, "reason" => "max_connections")
        .increment(1);
    let timeout = ctx.config().server.startup_timeout;
    match tokio::time::timeout(timeout, negotiate(tcp, ctx.tls.as_ref())).await {
        Ok(Ok(Negotiated::Session { mut stream, .. })) => {
            farewell(&mut stream, &ClientError::too_many_connections()).await;
        }
        Ok(Ok(Negotiated::Cancel {
            packet,
            key,
            stream,
        })) => answer_cancel(&ctx, &packet, &key, stream).await,
        _ => {}
    }
}

async fn establish(
    ctx: &Arc<AppContext>,
    tcp: TcpStream,
    id: u64,
    shutdown: &Shutdown,
) -> Option<Live> {
    let config = ctx.config();
    let (mut client, startup) = client_startup(ctx, tcp, &config).await?;
    if config.server.tls.as_ref().is_some_and(|t| t.require) && !client.is_tls() {
        // Before any login is relayed: PostgreSQL's hostssl rules see pgmemo's own
        // connection, so this is the only place a plaintext client can be refused.
        metrics::counter!(names::CLIENT_CONNECTIONS_REJECTED, "reason" => "tls_required")
            .increment(1);
        farewell(&mut client, &ClientError::client_tls_required()).await;
        return None;
    }
    let user = startup.user();
    let database = startup.database();
    debug!(%user, %database, major = startup.major, minor = startup.minor, "startup");
    if database == console::DATABASE && startup.major == 3 {
        admin_console(ctx, client, &startup, &config, shutdown.drain.clone()).await;
        return None;
    }
    let mut upstream = upstream_startup(ctx, &mut client, &startup, &config).await?;
    let established = authenticate(ctx, &mut client, &mut upstream, &config, None).await?;
    let cancel = established
        .cancel_key
        .and_then(|key| ctx.cancel_keys.register(key, id))
        .map(|guard| deferred::Deferral::new(Arc::clone(ctx), guard));
    info!(%user, %database, tls = client.is_tls(), "session established");
    let params: Vec<(String, String)> = startup
        .params
        .iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect();
    let mut cache_side = cache_side::CacheSession::new(Arc::clone(ctx), &database, &user, &params);
    cache_side.set_cancel_signal(cancel.as_ref().map(deferred::Deferral::signal));
    Some(Live {
        client,
        upstream,
        max_message: config.server.max_message_bytes,
        cache_side,
        cancel,
    })
}

/// A client that asked for the virtual database `pgmemo`: PostgreSQL checks its login (on
/// the upstream URL's database, with the client's own user and parameters), or pgmemo does
/// against `admin.password` when one is set; pgmemo checks the role may use the console, and
/// the console serves it. The upstream connection is only for the login.
async fn admin_console(
    ctx: &Arc<AppContext>,
    mut client: Stream,
    startup: &StartupMessage,
    config: &Config,
    drain: Signal,
) {
    let user = startup.user();
    if config.admin.roles.is_empty() {
        farewell(&mut client, &ClientError::console_disabled()).await;
        return;
    }
    if startup.param("replication").is_some() {
        // A replication login is checked against pg_hba.conf's replication lines, not the
        // database's: never the console's.
        farewell(&mut client, &ClientError::console_replication()).await;
        return;
    }
    if let Some(password) = &config.admin.password {
        let admitted = console::admits(ctx, &user);
        let login = console::login::password(&mut client, &user, password, admitted);
        match tokio::time::timeout(config.server.startup_timeout, login).await {
            Ok(Ok(())) => console::serve(Arc::clone(ctx), client, user, drain).await,
            Ok(Err(e)) => debug!(error = %e, %user, "admin console login refused"),
            Err(_) => farewell(&mut client, &ClientError::authentication_timeout()).await,
        }
        return;
    }
    let login_db = crate::config::upstream_url::UpstreamTarget::parse(&config.upstream.url)
        .ok()
        .and_then(|t| t.dbname)
        .unwrap_or_else(|| "postgres".to_owned());
    let login = startup.with_database(login_db.as_bytes());
    let Some(mut upstream) = upstream_startup(ctx, &mut client, &login, config).await else {
        return;
    };
    let refusal = (!console::admits(ctx, &user)).then(|| ClientError::console_not_admin(&user));
    let established = authenticate(ctx, &mut client, &mut upstream, config, refusal.as_ref()).await;
    let _ = upstream
        .write_all(&crate::protocol::response::terminate())
        .await;
    drop(upstream);
    if established.is_some() {
        console::serve(Arc::clone(ctx), client, user, drain).await;
    }
}

/// The client's side of the startup phase (TLS, then its StartupMessage), within
/// `server.startup_timeout`; a CancelRequest is answered here and ends the connection.
async fn client_startup(
    ctx: &Arc<AppContext>,
    tcp: TcpStream,
    config: &Config,
) -> Option<(Stream, StartupMessage)> {
    let _ = tcp.set_nodelay(true);
    let negotiated = match tokio::time::timeout(
        config.server.startup_timeout,
        negotiate(tcp, ctx.tls.as_ref()),
    )
    .await
    {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => {
            debug!(error = %e, "startup negotiation failed");
            metrics::counter!(names::CLIENT_CONNECTIONS_REJECTED, "reason" => "protocol")
                .increment(1);
            return None;
        }
        Err(_) => {
            debug!("startup timed out");
            metrics::counter!(names::CLIENT_CONNECTIONS_REJECTED, "reason" => "startup_timeout")
                .increment(1);
            return None;
        }
    };
    match negotiated {
        Negotiated::Cancel {
            packet,
            key,
            stream,
        } => {
            answer_cancel(ctx, &packet, &key, stream).await;
            None
        }
        Negotiated::Session { stream, startup } => Some((stream, startup)),
    }
}

/// Connects upstream and sends it the client's StartupMessage. A client that speaks an
/// older protocol gets the server's answer passed through verbatim, then the close.
async fn upstream_startup(
    ctx: &AppContext,
    client: &mut Stream,
    startup: &StartupMessage,
    config: &Config,
) -> Option<Stream> {
    let mut upstream = match ctx.upstream.connect(config.upstream.connect_timeout).await {
        Ok(u) => u,
        Err(e) => {
            warn!(error = %e, "upstream connect failed");
            metrics::counter!(names::UPSTREAM_CONNECT_ERRORS, "kind" => e.kind()).increment(1);
            let err = ClientError::upstream_unreachable(ctx.upstream.address(), &e.to_string());
            farewell(client, &err).await;
            return None;
        }
    };
    if let Err(e) = upstream.write_all(&startup.raw).await {
        let err = upstream_lost(ctx, &e.to_string());
        farewell(client, &err).await;
        return None;
    }
    if startup.major != 3 {
        // Not protocol 3: the server answers in a pre-3.0 unframed format (or whatever it
        // speaks); pass its answer through verbatim, then close.
        passthrough_until_close(&mut upstream, client, config.server.startup_timeout).await;
        return None;
    }
    Some(upstream)
}

/// Relays authentication between the two, within `server.startup_timeout` (`refuse`: see
/// [`auth::relay`]).
async fn authenticate(
    ctx: &AppContext,
    client: &mut Stream,
    upstream: &mut Stream,
    config: &Config,
    refuse: Option<&ClientError>,
) -> Option<auth::Established> {
    let offer_plus = match (&ctx.tls, client.is_tls(), upstream.peer_certificate()) {
        (Some(tls), true, Some(up)) => tls.leaf_der == up,
        _ => false,
    };
    match tokio::time::timeout(
        config.server.startup_timeout,
        auth::relay(client, upstream, offer_plus, refuse),
    )
    .await
    {
        Ok(Ok(e)) => Some(e),
        Ok(Err(auth::AuthError::Upstream(e))) => {
            farewell(client, &upstream_lost(ctx, &e.to_string())).await;
            None
        }
        Ok(Err(e)) => {
            debug!(error = %e, "authentication ended");
            None
        }
        Err(_) => {
            debug!("authentication timed out");
            let err = ClientError::authentication_timeout();
            farewell(client, &err).await;
            None
        }
    }
}

async fn finish(ctx: &AppContext, mut live: Live, end: Result<RelayEnd, RelayError>) {
    let client = &mut live.client;
    match end {
        Ok(RelayEnd::ClientClosed) => debug!("client closed"),
        Ok(RelayEnd::Terminated) => {
            debug!("client terminated");
            // PostgreSQL closes the connection as its backend exits, so a client that waits
            // for that close (asyncpg's close(), pools replacing connections) finds the
            // backend gone: close the client's connection once the upstream's is closed.
            await_close(&mut live.upstream).await;
        }
        Ok(RelayEnd::Shutdown) => info!("closed for shutdown"),
        // Handled by the caller (the session continues elsewhere); never ends one.
        Ok(RelayEnd::Migrate(_)) => debug!("session moved"),
        Ok(RelayEnd::ClientProtocol(e)) => warn!(error = %e, "client protocol violation"),
        Ok(RelayEnd::UpstreamClosed { fatal_relayed }) => {
            if !fatal_relayed {
                let err = upstream_lost(ctx, "the server closed the connection");
                farewell(client, &err).await;
            }
            debug!("upstream closed");
        }
        Err(RelayError::Upstream(e)) => {
            warn!(error = %e, "upstream connection failed");
            farewell(client, &upstream_lost(ctx, &e.to_string())).await;
        }
        Err(RelayError::Client(e)) => debug!(error = %e, "client connection failed"),
    }
    let _ = tokio::time::timeout(FAREWELL_TIMEOUT, client.shutdown()).await;
}

fn upstream_lost(ctx: &AppContext, why: &str) -> ClientError {
    ClientError::upstream_lost(ctx.upstream.address(), why)
}

/// Copies what the upstream says to the client until it closes (bounded in bytes and time).
async fn passthrough_until_close(upstream: &mut Stream, client: &mut Stream, timeout: Duration) {
    const LIMIT: usize = 64 * 1024;
    let copy = async {
        let mut buf = vec![0u8; 8192];
        let mut total = 0;
        while total < LIMIT {
            let n = upstream.read(&mut buf).await?;
            let Some(chunk) = buf.get(..n).filter(|c| !c.is_empty()) else {
                break;
            };
            client.write_all(chunk).await?;
            total += n;
        }
        client.shutdown().await
    };
    let _: Result<std::io::Result<()>, _> = tokio::time::timeout(timeout, copy).await;
}

/// Waits (bounded in bytes and time) until the upstream closes the connection, discarding
/// what it still sends: the answers to what the client sent before its Terminate.
async fn await_close(upstream: &mut Stream) {
    const LIMIT: usize = 1024 * 1024;
    let drain = async {
        let mut buf = [0u8; 4096];
        let mut total = 0;
        while total < LIMIT {
            match upstream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(FAREWELL_TIMEOUT, drain).await;
}

/// Best-effort final error to the client (it may already be gone).
async fn farewell(client: &mut Stream, err: &ClientError) {
    let write = async {
        client.write_all(&err.encode()).await?;
        client.flush().await?;
        client.shutdown().await
    };
    let _ = tokio::time::timeout(FAREWELL_TIMEOUT, write).await;
}

/// Answers a CancelRequest connection the way PostgreSQL does: the request is delivered
/// first (the backend signalled, or the request found to have nothing to cancel), and only
/// then is the client's connection closed. A client sends its next statement once it sees
/// that close; closed earlier, a late cancel could hit that next statement.
async fn answer_cancel(ctx: &AppContext, packet: &[u8], key: &[u8], mut stream: Stream) {
    deliver_cancel(ctx, packet, key).await;
    let _ = tokio::time::timeout(FAREWELL_TIMEOUT, stream.shutdown()).await;
}

async fn deliver_cancel(ctx: &AppContext, packet: &[u8], key: &[u8]) {
    let timeout = ctx.config().upstream.connect_timeout;
    let disposition = ctx.cancel_keys.signal(key);
    debug!(?disposition, "cancel request received");
    match disposition {
        cancel::Disposition::Unknown => {
            debug!("cancel request for an unknown key ignored");
            metrics::counter!(names::CANCEL_REQUESTS, "result" => "unknown_key").increment(1);
        }
        // A statement pgmemo holds back (waiting for another session's fill) is cancelled
        // here; its upstream backend is idle, and a forwarded request could hit the next
        // statement.
        cancel::Disposition::Taken => {
            metrics::counter!(names::CANCEL_REQUESTS, "result" => "held_statement").increment(1);
        }
        // pgmemo's own work runs on the session's upstream connection: the session forwards
        // the request once the client's work is next (it counts the outcome). Waiting is
        // bounded by the own work's end plus the forward; past that the connection closes
        // and the request stays held.
        cancel::Disposition::Held(delivered) => {
            let _ = tokio::time::timeout(timeout.saturating_mul(2), delivered).await;
        }
        cancel::Disposition::Forward => match ctx.upstream.forward_cancel(packet, timeout).await {
            Ok(()) => {
                metrics::counter!(names::CANCEL_REQUESTS, "result" => "forwarded").increment(1);
            }
            Err(e) => {
                warn!(error = %e, "forwarding cancel request failed");
                metrics::counter!(names::CANCEL_REQUESTS, "result" => "failed").increment(1);
            }
        },
    }
}

/// Runs `f` on drop (tiny local scope guard; avoids a dependency for one use).
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
