//! Admin HTTP server, in process: `/healthz`, `/readyz` against fake upstreams (nothing
//! listening, a fake Postgres answering the SSLRequest, a non-Postgres peer, a silent peer),
//! the probe cache, `/metrics`, 404s, connection limits, graceful shutdown, and how
//! `POST /invalidate` (`admin_http/invalidate_api.rs`). End to end through the pgmemo binary
//! (`admin_http/invalidate_e2e.rs`): manual invalidation and SIGUSR1 make a change done
//! directly on Postgres visible; the JSON API, `POST /flush` and the admin token after real
//! traffic (`admin_http/api_e2e.rs`). The guard in front of every route (Host header against
//! DNS rebinding, the token, JSON-only writes) in process (`admin_http/guard_api.rs`) and
//! through the binary, with SIGHUP reloads of the token and the host names
//! (`admin_http/guard_e2e.rs`).

#[path = "admin_http/api_e2e.rs"]
mod api_e2e;
mod common;
#[path = "admin_http/guard_api.rs"]
mod guard_api;
#[path = "admin_http/guard_e2e.rs"]
mod guard_e2e;
#[path = "admin_http/invalidate_api.rs"]
mod invalidate_api;
#[path = "admin_http/invalidate_e2e.rs"]
mod invalidate_e2e;
#[path = "support/cache_probe.rs"]
mod probe;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pgmemo::admin::{
    self, AdminLimits, AdminState, InvalidationHandle, PROBE_CACHE_TTL, ProbeError, Readiness,
};
use pgmemo::cache::{Cache, CacheLimits, KeySecret};
use pgmemo::catalog::{Catalog, CatalogConfig};
use pgmemo::invalidation::Invalidator;
use pgmemo::telemetry::{names, recorder};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Generous bound for anything that should be quick; only catches hangs.
const HANG: Duration = Duration::from_secs(10);
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }
}

/// A minimal HTTP/1.1 GET: one request per connection, read until the server closes.
async fn http_get(addr: SocketAddr, path: &str) -> Reply {
    http(addr, "GET", path, None, b"").await
}

/// `POST path` with a JSON body (`Content-Type: application/json`).
async fn post_json(addr: SocketAddr, path: &str, body: &str) -> Reply {
    http(
        addr,
        "POST",
        path,
        Some("application/json"),
        body.as_bytes(),
    )
    .await
}

/// A minimal HTTP/1.1 request with a `Content-Length` body: one request per connection, read
/// until the server closes.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Reply {
    let headers: Vec<(&str, &str)> = content_type
        .map(|ct| ("Content-Type", ct))
        .into_iter()
        .collect();
    http_with_headers(addr, method, path, &headers, body).await
}

/// [`http`] with any request headers (a `Host` among them replaces the default one, the
/// server's address).
async fn http_with_headers(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut request = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: {addr}\r\n"));
    }
    request.push_str(&format!(
        "Connection: close\r\nContent-Length: {}\r\n",
        body.len()
    ));
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    exchange(addr, &bytes).await
}

/// Sends `request` as it is on a new connection and reads the reply until the server closes.
async fn exchange(addr: SocketAddr, request: &[u8]) -> Reply {
    tokio::time::timeout(HANG, async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        parse_reply(&raw)
    })
    .await
    .expect("HTTP request hung")
}

fn parse_reply(raw: &[u8]) -> Reply {
    let text = String::from_utf8(raw.to_vec()).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("no header end");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    let reply = Reply {
        status,
        headers,
        body: body.to_owned(),
    };
    assert!(
        reply.header("transfer-encoding").is_none(),
        "unexpected chunked body"
    );
    if let Some(len) = reply.header("content-length") {
        assert_eq!(len.parse::<usize>().unwrap(), reply.body.len());
    }
    reply
}

struct Admin {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

async fn start_admin(readiness: Arc<Readiness>, limits: AdminLimits) -> Admin {
    start_admin_with(readiness, limits, offline_invalidation(dead_port().await)).await
}

async fn start_admin_with(
    readiness: Arc<Readiness>,
    limits: AdminLimits,
    invalidation: InvalidationHandle,
) -> Admin {
    let access = Arc::new(admin::AdminAccess::open());
    start_guarded(readiness, limits, invalidation, access).await
}

/// [`start_admin_with`] with the token and host names of `access`.
async fn start_guarded(
    readiness: Arc<Readiness>,
    limits: AdminLimits,
    invalidation: InvalidationHandle,
    access: Arc<admin::AdminAccess>,
) -> Admin {
    let metrics = recorder::install().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let state = AdminState {
        metrics,
        readiness,
        invalidation,
        cdc: std::sync::Arc::new(pgmemo::cdc::hub::Hub::none()),
        behind: None,
        access,
        api: None,
    };
    let task = tokio::spawn(admin::serve_with_limits(
        listener,
        state,
        shutdown.clone(),
        limits,
    ));
    Admin {
        addr,
        shutdown,
        task,
    }
}

async fn start_default(readiness: Arc<Readiness>) -> Admin {
    start_admin(readiness, AdminLimits::default()).await
}

/// A cache with its invalidator, and a catalog whose side connections go to `catalog_port`
/// (nothing needs to listen there until a table invalidation consults it).
fn offline_invalidation(catalog_port: u16) -> InvalidationHandle {
    let cache = Arc::new(Cache::new(CacheLimits::with_secret(
        KeySecret::generate().unwrap(),
    )));
    let mut pg = tokio_postgres::Config::new();
    pg.host("127.0.0.1").port(catalog_port).user("postgres");
    let mut cc = CatalogConfig::new(pg);
    cc.connect_timeout = Duration::from_secs(2);
    let catalog = Arc::new(Catalog::new(cc));
    InvalidationHandle {
        invalidator: Arc::new(Invalidator::new(cache, Arc::clone(&catalog), None)),
        catalog,
    }
}

fn readiness(port: u16, up: bool) -> Arc<Readiness> {
    let r = Readiness::new("127.0.0.1".to_owned(), port, Duration::from_secs(2));
    r.set_listener_up(up);
    Arc::new(r)
}

/// A port with nothing listening: bound, then released.
async fn dead_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// A fake server that counts connections, checks each starts with an SSLRequest, answers
/// `answer` (or nothing at all) and then waits for the peer to close.
struct FakePg {
    port: u16,
    accepts: Arc<AtomicUsize>,
    bad_requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for FakePg {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn fake_pg(answer: Option<u8>) -> FakePg {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepts = Arc::new(AtomicUsize::new(0));
    let bad_requests = Arc::new(AtomicUsize::new(0));
    let (a, b) = (Arc::clone(&accepts), Arc::clone(&bad_requests));
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            a.fetch_add(1, Ordering::SeqCst);
            let b = Arc::clone(&b);
            tokio::spawn(async move {
                let mut req = [0u8; 8];
                if sock.read_exact(&mut req).await.is_err() || req != SSL_REQUEST {
                    b.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                if let Some(byte) = answer {
                    let _ = sock.write_all(&[byte]).await;
                }
                let mut rest = Vec::new();
                let _ = sock.read_to_end(&mut rest).await;
                if !rest.is_empty() {
                    b.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    FakePg {
        port,
        accepts,
        bad_requests,
        task,
    }
}

#[tokio::test]
async fn healthz_answers_ok() {
    let admin = start_default(readiness(dead_port().await, false)).await;
    let reply = http_get(admin.addr, "/healthz").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "ok");
}

#[tokio::test]
async fn readyz_is_503_when_nothing_listens_upstream() {
    let port = dead_port().await;
    let admin = start_default(readiness(port, true)).await;
    let reply = http_get(admin.addr, "/readyz").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let json = reply.json();
    assert_eq!(json["ready"], false);
    assert_eq!(json["listener"], true);
    assert_eq!(json["upstream"]["reachable"], false);
    assert_eq!(json["upstream"]["address"], format!("127.0.0.1:{port}"));
    let error = json["upstream"]["error"].as_str().unwrap();
    assert!(error.contains("connect failed"), "{error}");
}

#[tokio::test]
async fn readyz_is_200_when_postgres_answers_n_or_s() {
    for answer in [b'N', b'S'] {
        let pg = fake_pg(Some(answer)).await;
        let admin = start_default(readiness(pg.port, true)).await;
        let reply = http_get(admin.addr, "/readyz").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let json = reply.json();
        assert_eq!(json["ready"], true);
        assert_eq!(json["listener"], true);
        assert_eq!(json["upstream"]["reachable"], true);
        assert_eq!(json["upstream"]["error"], Value::Null);
        assert_eq!(pg.accepts.load(Ordering::SeqCst), 1);
        // The probe sent exactly an SSLRequest and nothing after the answer.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(pg.bad_requests.load(Ordering::SeqCst), 0);
    }
}

#[tokio::test]
async fn readyz_is_503_when_listener_is_down() {
    let pg = fake_pg(Some(b'N')).await;
    let ready = readiness(pg.port, false);
    let admin = start_default(Arc::clone(&ready)).await;
    let reply = http_get(admin.addr, "/readyz").await;
    assert_eq!(reply.status, 503);
    let json = reply.json();
    assert_eq!(json["ready"], false);
    assert_eq!(json["listener"], false);
    assert_eq!(json["upstream"]["reachable"], true);
    // The listener flag is not cached: flipping it shows at once.
    ready.set_listener_up(true);
    assert_eq!(http_get(admin.addr, "/readyz").await.status, 200);
    ready.set_listener_up(false);
    assert_eq!(http_get(admin.addr, "/readyz").await.status, 503);
}

#[tokio::test]
async fn readyz_rejects_a_peer_that_is_not_postgres() {
    let pg = fake_pg(Some(b'H')).await;
    let admin = start_default(readiness(pg.port, true)).await;
    let reply = http_get(admin.addr, "/readyz").await;
    assert_eq!(reply.status, 503);
    let error = reply.json()["upstream"]["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(error.contains("0x48"), "{error}");
}

#[tokio::test]
async fn probe_times_out_on_a_silent_peer() {
    let pg = fake_pg(None).await;
    let started = Instant::now();
    let result = admin::probe_upstream("127.0.0.1", pg.port, Duration::from_millis(300)).await;
    assert!(matches!(result, Err(ProbeError::Timeout(_))), "{result:?}");
    assert!(started.elapsed() < HANG);
    assert_eq!(pg.accepts.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn readyz_probe_is_cached_for_at_most_a_second() {
    let pg = fake_pg(Some(b'N')).await;
    let admin = start_default(readiness(pg.port, true)).await;

    let started = Instant::now();
    assert_eq!(http_get(admin.addr, "/readyz").await.status, 200);
    assert_eq!(http_get(admin.addr, "/readyz").await.status, 200);
    let elapsed = started.elapsed();
    let accepts = pg.accepts.load(Ordering::SeqCst);
    if elapsed < PROBE_CACHE_TTL {
        assert_eq!(accepts, 1, "two calls within the TTL must share one probe");
    } else {
        // The machine stalled past the TTL between the calls; a second probe is then correct.
        assert!(accepts <= 2, "{accepts} probes");
    }

    // After the TTL a storm of concurrent checks still makes a single new probe: the first
    // one probes while the others wait for its result.
    tokio::time::sleep(PROBE_CACHE_TTL + Duration::from_millis(200)).await;
    let before = pg.accepts.load(Ordering::SeqCst);
    let started = Instant::now();
    let storm: Vec<_> = (0..20)
        .map(|_| tokio::spawn(http_get(admin.addr, "/readyz")))
        .collect();
    for call in storm {
        assert_eq!(call.await.unwrap().status, 200);
    }
    let probes = pg.accepts.load(Ordering::SeqCst) - before;
    if started.elapsed() < PROBE_CACHE_TTL {
        assert_eq!(probes, 1, "20 concurrent checks must share one probe");
    } else {
        assert!(probes <= 3, "{probes} probes");
    }
}

#[tokio::test]
async fn set_upstream_takes_effect_without_waiting_for_the_cache() {
    let dead = dead_port().await;
    let ready = readiness(dead, true);
    let admin = start_default(Arc::clone(&ready)).await;
    assert_eq!(http_get(admin.addr, "/readyz").await.status, 503);
    // The freed port may be handed out again: the new address must really be another one
    // (the cached failure of the same address would rightly still apply).
    let mut pg = fake_pg(Some(b'N')).await;
    let mut held = Vec::new();
    while pg.port == dead {
        held.push(pg);
        pg = fake_pg(Some(b'N')).await;
    }
    ready.set_upstream("127.0.0.1".to_owned(), pg.port);
    let reply = http_get(admin.addr, "/readyz").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        reply.json()["upstream"]["address"],
        format!("127.0.0.1:{}", pg.port)
    );
}

#[tokio::test]
async fn metrics_renders_prometheus_text_with_descriptions() {
    let admin = start_default(readiness(dead_port().await, false)).await;
    metrics::counter!(names::CLIENT_CONNECTIONS_TOTAL).increment(1);
    let reply = http_get(admin.addr, "/metrics").await;
    assert_eq!(reply.status, 200);
    let content_type = reply.header("content-type").unwrap();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let name = names::CLIENT_CONNECTIONS_TOTAL;
    assert!(
        reply.body.contains(&format!("# HELP {name} ")),
        "{}",
        reply.body
    );
    assert!(reply.body.contains(&format!("# TYPE {name} counter")));
    let value: f64 = reply
        .body
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample for {name} in {}", reply.body));
    assert!(value >= 1.0, "{value}");
}

/// Every name in `telemetry::names` (read from the source, so a name added later is covered)
/// gets a `# HELP` line once recorded: `describe_all` must not miss one. The metric kind is
/// the first word of the name's doc comment, as the names module documents them.
#[test]
fn every_metric_name_is_described() {
    let handle = recorder::install().unwrap();
    let source =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/telemetry/mod.rs"))
            .unwrap();
    let mut kind: Option<String> = None;
    let mut pending_const = false;
    let mut found = Vec::new();
    for line in source.lines().map(str::trim) {
        if let Some(doc) = line.strip_prefix("/// ") {
            if kind.is_none() {
                let word = doc.split([':', ',', ' ']).next().unwrap_or_default();
                kind = Some(word.to_owned());
            }
            continue;
        }
        if line.starts_with("pub const ") && line.contains("&str") {
            pending_const = true;
        }
        if pending_const && let Some((_, rest)) = line.split_once('"') {
            let name = rest.split('"').next().unwrap().to_owned();
            let k = kind
                .take()
                .unwrap_or_else(|| panic!("{name} has no doc comment"));
            match k.as_str() {
                "counter" => metrics::counter!(name.clone()).increment(0),
                "gauge" => metrics::gauge!(name.clone()).set(0.0),
                "histogram" => metrics::histogram!(name.clone()).record(0.0),
                other => panic!("{name}: doc comment must start with the kind, got {other:?}"),
            }
            found.push(name);
            pending_const = false;
        } else if !line.starts_with("pub const ") {
            kind = None;
        }
    }
    assert!(found.len() >= 10, "parsed only {found:?}");
    let rendered = handle.render();
    for name in found {
        assert!(
            rendered.contains(&format!("# HELP {name} ")),
            "{name} is not described in describe_all()"
        );
    }
}

#[tokio::test]
async fn unknown_paths_are_404() {
    let admin = start_default(readiness(dead_port().await, false)).await;
    for path in ["/nope", "/healthz/extra", "/metrics.json"] {
        assert_eq!(http_get(admin.addr, path).await.status, 404, "{path}");
    }
}

#[tokio::test]
async fn recorder_install_is_idempotent() {
    let a = recorder::install().unwrap();
    let b = recorder::install().unwrap();
    metrics::counter!(names::CONFIG_RELOADS, "result" => "ok").increment(1);
    // Both handles render the same registry.
    assert!(a.render().contains(names::CONFIG_RELOADS));
    assert!(b.render().contains(names::CONFIG_RELOADS));
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let admin = start_default(readiness(dead_port().await, false)).await;
    assert_eq!(http_get(admin.addr, "/healthz").await.status, 200);
    admin.shutdown.cancel();
    let result = tokio::time::timeout(HANG, admin.task)
        .await
        .expect("admin server did not stop");
    result.unwrap().unwrap();
    assert!(TcpStream::connect(admin.addr).await.is_err());
}

#[tokio::test]
async fn shutdown_is_bounded_by_the_grace_when_a_client_hangs() {
    let limits = AdminLimits {
        shutdown_grace: Duration::from_millis(300),
        ..AdminLimits::default()
    };
    // A /readyz whose probe hangs on a silent upstream keeps a request in flight, so a
    // graceful shutdown alone would wait for the probe's 30 s timeout.
    let pg = fake_pg(None).await;
    let slow = Arc::new(Readiness::new(
        "127.0.0.1".to_owned(),
        pg.port,
        Duration::from_secs(30),
    ));
    let admin = start_admin(slow, limits).await;
    let addr = admin.addr;
    let in_flight = tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let _ = stream.read_to_end(&mut buf).await;
    });
    tokio::time::timeout(HANG, async {
        while pg.accepts.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the probe never reached the fake upstream");
    let started = Instant::now();
    admin.shutdown.cancel();
    let result = tokio::time::timeout(HANG, admin.task)
        .await
        .expect("shutdown waited on a stuck client");
    result.unwrap().unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250),
        "returned after {took:?}"
    );
    assert!(took < HANG, "returned after {took:?}");
    in_flight.abort();
}

#[tokio::test]
async fn connections_are_capped_and_idle_ones_closed() {
    let idle_timeout = Duration::from_millis(400);
    let limits = AdminLimits {
        max_connections: 1,
        idle_timeout,
        ..AdminLimits::default()
    };
    let admin = start_admin(readiness(dead_port().await, false), limits).await;
    // Takes the only slot and sends nothing.
    let mut idle = TcpStream::connect(admin.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let reply = http_get(admin.addr, "/healthz").await;
    assert_eq!(reply.status, 200);
    // Served only once the idle connection was dropped for inactivity.
    assert!(
        started.elapsed() >= idle_timeout - Duration::from_millis(100),
        "served after {:?}: the cap did not hold",
        started.elapsed()
    );
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(HANG, idle.read(&mut buf))
        .await
        .expect("idle connection was never closed")
        .unwrap_or(0);
    assert_eq!(n, 0, "idle connection got data");
}
