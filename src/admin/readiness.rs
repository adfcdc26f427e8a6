//! Readiness for `/readyz`: is the client listener up, is a PostgreSQL server answering at
//! the upstream address, and has warming at start-up ended (or timed out)? Upstream probes
//! are cached briefly so a probe storm cannot hammer it.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::refresh::progress::{WarmingProgress, WarmingReport};

/// How long one upstream probe result is reused. Concurrent checks also wait for the probe in
/// flight instead of starting their own, so at most about one probe per second reaches Postgres.
pub const PROBE_CACHE_TTL: Duration = Duration::from_secs(1);

/// SSLRequest: length 8, then the magic code 80877103. Every PostgreSQL server answers it with a
/// single byte before anything else, without needing credentials.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// Why the upstream was judged unreachable.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The TCP (or Unix socket) connection could not be made.
    #[error("connect failed: {0}")]
    Connect(#[source] io::Error),
    /// Connecting plus the SSLRequest exchange did not finish in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Writing the SSLRequest or reading the answer failed.
    #[error("I/O error during the SSLRequest exchange: {0}")]
    Exchange(#[source] io::Error),
    /// The peer closed the connection without answering the SSLRequest.
    #[error("connection closed before the SSLRequest was answered")]
    Closed,
    /// The peer answered with something no PostgreSQL server sends.
    #[error("answered the SSLRequest with byte 0x{0:02x}, not a PostgreSQL server")]
    NotPostgres(u8),
}

/// The upstream address being probed; replaced as a whole on config reload.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    host: String,
    port: u16,
}

impl Target {
    /// `host:port`, with IPv6 literals bracketed so the result parses back as an address.
    fn display(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// One remembered probe outcome.
struct CachedProbe {
    at: Instant,
    target: Target,
    outcome: Result<(), String>,
}

/// Readiness state shared between the server (which flips the listener flag), the config
/// reloader (which may move the upstream) and the admin HTTP handlers.
pub struct Readiness {
    listener_up: AtomicBool,
    upstream: ArcSwap<Target>,
    connect_timeout: Duration,
    /// Async mutex held across a probe so concurrent checks coalesce onto one probe.
    cache: Mutex<Option<CachedProbe>>,
    /// Warming's progress, once the server starts it (see [`Readiness::watch_warming`]).
    warming: OnceLock<Arc<WarmingProgress>>,
}

/// What `/readyz` reports, serialised as its JSON body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadyReport {
    /// True when the listener is up, the upstream is reachable and warming at start-up no
    /// longer holds readiness back.
    pub ready: bool,
    /// Whether the client listener is accepting connections.
    pub listener: bool,
    /// The upstream probe's outcome.
    pub upstream: UpstreamReport,
    /// Each database covered by change data capture and its stream's state (`streaming`,
    /// `connecting`, `creating_slot`, `lagging`, `disconnected`, `off`); databases not listed
    /// are bounded by the TTL. Informational: it does not change `ready`.
    pub cdc: std::collections::BTreeMap<String, &'static str>,
    /// Warming (`[[warm]]` and hot keys): while the run at start-up goes on, within
    /// `warming.timeout`, pgmemo is not ready.
    pub warming: WarmingReport,
}

/// The upstream part of a [`ReadyReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpstreamReport {
    /// Whether a PostgreSQL server answered the SSLRequest.
    pub reachable: bool,
    /// `host:port` that was probed.
    pub address: String,
    /// Why it is unreachable; `null` when reachable.
    pub error: Option<String>,
}

impl Readiness {
    /// Starts with the listener down; the server calls [`Readiness::set_listener_up`] once it
    /// accepts connections.
    pub fn new(upstream_host: String, upstream_port: u16, connect_timeout: Duration) -> Self {
        Self {
            listener_up: AtomicBool::new(false),
            upstream: ArcSwap::from_pointee(Target {
                host: upstream_host,
                port: upstream_port,
            }),
            connect_timeout,
            cache: Mutex::new(None),
            warming: OnceLock::new(),
        }
    }

    /// Reports warming's progress from now on (and is not ready while its run at start-up
    /// gates readiness). Set once; a later call is ignored.
    pub fn watch_warming(&self, progress: Arc<WarmingProgress>) {
        let _ = self.warming.set(progress);
    }

    /// Records whether the client listener is accepting (false during shutdown).
    pub fn set_listener_up(&self, up: bool) {
        self.listener_up.store(up, Ordering::Release);
    }

    /// Whether the client listener is currently marked up.
    pub fn listener_up(&self) -> bool {
        self.listener_up.load(Ordering::Acquire)
    }

    /// Points the probe at a new upstream (config reload). The cached result belongs to the old
    /// address, so the next check probes afresh.
    pub fn set_upstream(&self, host: String, port: u16) {
        self.upstream.store(Arc::new(Target { host, port }));
    }

    /// Current readiness; probes the upstream unless a result younger than
    /// [`PROBE_CACHE_TTL`] exists for the current address.
    pub async fn check(&self) -> ReadyReport {
        let listener = self.listener_up();
        let target = Target::clone(&self.upstream.load());
        let outcome = self.probe_cached(&target).await;
        let reachable = outcome.is_ok();
        let warming = self.warming.get().map(|p| p.report()).unwrap_or_default();
        ReadyReport {
            ready: listener && reachable && !warming.gates_readiness,
            cdc: std::collections::BTreeMap::new(),
            warming,
            listener,
            upstream: UpstreamReport {
                reachable,
                address: target.display(),
                error: outcome.err(),
            },
        }
    }

    async fn probe_cached(&self, target: &Target) -> Result<(), String> {
        let mut cache = self.cache.lock().await;
        if let Some(hit) = cache.as_ref()
            && hit.target == *target
            && hit.at.elapsed() < PROBE_CACHE_TTL
        {
            return hit.outcome.clone();
        }
        let outcome = probe_upstream(&target.host, target.port, self.connect_timeout)
            .await
            .map_err(|e| e.to_string());
        *cache = Some(CachedProbe {
            at: Instant::now(),
            target: target.clone(),
            outcome: outcome.clone(),
        });
        outcome
    }
}

/// Connects to `host:port` (or, for a host starting with `/`, the Unix socket
/// `host/.s.PGSQL.port`, as libpq does), sends an SSLRequest and expects the one-byte answer
/// `S` or `N` that proves a PostgreSQL server is there; then closes. The whole exchange is
/// bounded by `timeout`. No credentials are used and no session is started. A server that is
/// still starting up or shutting down answers too (it refuses only after the startup packet),
/// so this proves "PostgreSQL is answering here", not "logins will succeed".
pub async fn probe_upstream(host: &str, port: u16, timeout: Duration) -> Result<(), ProbeError> {
    match tokio::time::timeout(timeout, probe_inner(host, port)).await {
        Ok(result) => result,
        Err(_elapsed) => Err(ProbeError::Timeout(timeout)),
    }
}

async fn probe_inner(host: &str, port: u16) -> Result<(), ProbeError> {
    #[cfg(unix)]
    if host.starts_with('/') {
        let path = format!("{host}/.s.PGSQL.{port}");
        let stream = tokio::net::UnixStream::connect(path)
            .await
            .map_err(ProbeError::Connect)?;
        return ssl_request_exchange(stream).await;
    }
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(ProbeError::Connect)?;
    ssl_request_exchange(stream).await
}

async fn ssl_request_exchange<S>(mut stream: S) -> Result<(), ProbeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream
        .write_all(&SSL_REQUEST)
        .await
        .map_err(ProbeError::Exchange)?;
    let mut answer = [0u8; 1];
    let read = stream
        .read(&mut answer)
        .await
        .map_err(ProbeError::Exchange)?;
    if read == 0 {
        return Err(ProbeError::Closed);
    }
    let [byte] = answer;
    match byte {
        b'S' | b'N' => Ok(()),
        // An old or confused server may answer with an ErrorResponse ('E'); that is still a
        // PostgreSQL server refusing us, not one that is up and usable.
        other => Err(ProbeError::NotPostgres(other)),
    }
}
