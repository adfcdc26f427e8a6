//! Cancel requests reach what the client is waiting for, in PostgreSQL's order:
//! - the client's cancel connection closes only once the request has been delivered, so a
//!   statement sent after that close cannot be hit by it (asyncpg's `test_timeout_05`), also
//!   at the connection limit and for a request sent over TLS;
//! - a request that arrives while pgmemo's own settings probe occupies the session's
//!   upstream connection cancels the client's statement queued behind the probe, not the
//!   probe (asyncpg's `test_close_has_one_timeout_budget`);
//! - a request sent right behind its statement cancels it even when the statement reaches
//!   PostgreSQL later than the request (the soak met this with pgmemo's workers loaded).
//!
//! A relay between pgmemo and PostgreSQL (`support/gate.rs`) makes each race deterministic:
//! it delays forwarded cancel requests, or holds the probe's answer until the test lets it go.

mod common;
#[path = "support/gate.rs"]
mod gate;
#[path = "support/wire.rs"]
mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{PgOptions, PgServer, Proxy, ProxyArgs, SUPERUSER, TestCa};
use gate::Gate;
use pgmemo::protocol::startup::encode_startup;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wire::Read;

const DB: &str = "postgres";
/// How late the gate delivers a forwarded cancel request.
const CANCEL_DELAY: Duration = Duration::from_millis(400);

async fn start(config: &str) -> (PgServer, Gate, Proxy) {
    let pg = PgServer::start(PgOptions::default());
    let gate = Gate::start(pg.addr()).await;
    // Debug lines of the session and cancel paths: a failure's stderr tail shows where each
    // cancel request went.
    let proxy = Proxy::start(
        ProxyArgs::new(gate.url(SUPERUSER, DB))
            .config(config)
            .env("RUST_LOG", "info,pgmemo::session=debug"),
    );
    (pg, gate, proxy)
}

/// Cancel requests pgmemo holds now (its gauge).
fn held_cancels(proxy: &Proxy) -> f64 {
    proxy.metric("pgmemo_cancel_requests_held", &[])
}

/// Waits until pgmemo holds a cancel request for the session (its gauge says so): the race
/// under test needs the request to arrive while pgmemo's own work is under way, not after.
async fn wait_held(proxy: &Proxy) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if held_cancels(proxy) >= 1.0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pgmemo did not hold the cancel request while its own work was under way"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A raw session through `addr` named `app`, ready for queries, with its cancel key.
async fn session(addr: SocketAddr, app: &str) -> (TcpStream, Bytes) {
    let mut s = wire::connect(addr).await;
    let startup = encode_startup(
        3,
        0,
        &[
            ("user", SUPERUSER),
            ("database", DB),
            ("application_name", app),
        ],
    );
    s.write_all(&startup).await.expect("send startup");
    let frames = wire::frames_until_ready(&mut s, Duration::from_secs(10)).await;
    let key = frames
        .iter()
        .find(|f| f[0] == b'K')
        .map(|f| f.slice(5..))
        .expect("BackendKeyData");
    (s, key)
}

/// Frames up to ReadyForQuery, errors included; panics on close or after `timeout`.
async fn reply(s: &mut TcpStream, timeout: Duration, what: &str) -> Vec<Bytes> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut frames = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match wire::read_frame(s, left).await {
            Read::Frame(f) => {
                let ready = f[0] == b'Z';
                frames.push(f);
                if ready {
                    return frames;
                }
            }
            other => panic!(
                "{what}: expected frames up to ReadyForQuery within {timeout:?}, got {other:?} after {:?}",
                frames.iter().map(|f| wire::describe(f)).collect::<Vec<_>>()
            ),
        }
    }
}

/// Asserts that the reply `frames` of `pg_sleep(10)` end it with 57014 (query canceled).
fn expect_cancelled(frames: &[Bytes]) {
    let err = wire::first_error(frames).unwrap_or_else(|| {
        panic!(
            "pg_sleep(10) was not cancelled: {:?}",
            frames.iter().map(|f| wire::describe(f)).collect::<Vec<_>>()
        )
    });
    assert_eq!(
        wire::field(err, b'C').as_deref(),
        Some("57014"),
        "{}",
        wire::describe(err)
    );
}

async fn run(s: &mut TcpStream, sql: &str) -> Vec<Bytes> {
    s.write_all(&wire::query(sql)).await.expect("send query");
    reply(s, Duration::from_secs(10), sql).await
}

/// Sends a CancelRequest for `key` (over TLS when `tls` is given) and waits for pgmemo to
/// close the connection.
async fn cancel(addr: SocketAddr, key: &[u8], tls: Option<&TestCa>) -> Duration {
    let started = Instant::now();
    let mut c = wire::connect(addr).await;
    let Some(ca) = tls else {
        c.write_all(&wire::cancel_request(key))
            .await
            .expect("send cancel");
        let rest = wire::bytes_until_closed(&mut c, Duration::from_secs(20)).await;
        assert!(rest.is_empty(), "pgmemo answered a CancelRequest: {rest:?}");
        return started.elapsed();
    };
    let mut ssl_request = 8i32.to_be_bytes().to_vec();
    ssl_request.extend_from_slice(&80_877_103i32.to_be_bytes());
    c.write_all(&ssl_request).await.expect("send SSLRequest");
    assert_eq!(c.read_u8().await.expect("SSLRequest answer"), b'S');
    let connector = tokio_rustls::TlsConnector::from(Arc::new(ca.client_config()));
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
    let mut c = connector.connect(name, c).await.expect("TLS handshake");
    c.write_all(&wire::cancel_request(key))
        .await
        .expect("send cancel");
    c.flush().await.expect("flush cancel");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), c.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the TLS cancel connection stayed open");
    assert!(rest.is_empty(), "pgmemo answered a CancelRequest: {rest:?}");
    started.elapsed()
}

/// The client's cancel for a statement that already finished, then, the moment its cancel
/// connection closes, its next statement: PostgreSQL has signalled the (idle) backend before
/// closing, so the next statement runs untouched. Closed before the request is delivered,
/// the connection lets the next statement start first, and the late request cancels it.
async fn next_statement_survives_a_cancel(config: &str, tls: Option<&TestCa>) {
    let (_pg, gate, proxy) = start(config).await;
    let (mut s, key) = session(proxy.addr(), "cancel_order").await;
    run(&mut s, "SELECT 1").await;
    gate.delay_cancels(CANCEL_DELAY);

    let took = cancel(proxy.addr(), &key, tls).await;
    s.write_all(&wire::query("SELECT pg_sleep(1)"))
        .await
        .expect("send the next statement");
    let frames = reply(&mut s, Duration::from_secs(10), "the next statement").await;
    assert!(
        wire::first_error(&frames).is_none(),
        "the statement sent after the cancel connection closed was hit by it: {:?}",
        frames.iter().map(|f| wire::describe(f)).collect::<Vec<_>>()
    );
    assert_eq!(gate.cancels(), 1, "the request reached PostgreSQL once");
    assert!(
        took >= CANCEL_DELAY,
        "the cancel connection closed after {took:?}, before the request reached PostgreSQL"
    );
    run(&mut s, "SELECT 1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cancel_connection_closes_after_the_request_is_delivered() {
    next_statement_survives_a_cancel("", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_too() {
    let dir = tempfile::tempdir().expect("cert dir");
    let ca = TestCa::new(dir.path());
    let cert = ca.issue_server_cert(dir.path(), "pgmemo");
    let config = format!(
        "[server.tls]\ncert = {:?}\nkey = {:?}\n",
        cert.cert_path.display().to_string(),
        cert.key_path.display().to_string()
    );
    next_statement_survives_a_cancel(&config, Some(&ca)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_limit_too() {
    // The session takes the only slot; the cancel is answered by the over-the-limit path.
    next_statement_survives_a_cancel("[server]\nmax_client_connections = 1\n", None).await;
}

/// A session whose settings changed has pgmemo's settings probe run on its upstream
/// connection before its next statement. The gate holds the probe's answer, so the probe is
/// in flight (from pgmemo's side) when the client sends `pg_sleep(10)` and cancels it: the
/// request must not go to PostgreSQL then (its backend has nothing of the client's to
/// cancel), but be held and forwarded once the client's statement runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_during_the_settings_probe_cancels_the_client_statement() {
    cancel_during_probe(None).await;
}

/// The same, with the client's statement reaching PostgreSQL 300 ms after pgmemo sent it
/// (the gate delays it, as a loaded backend that has not yet read it would): the request,
/// forwarded right behind the statement, finds the backend still waiting for input and is
/// dropped there, so pgmemo sends it again while that statement is all that is outstanding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_cancel_that_overtakes_its_statement_is_sent_again() {
    let proxy = cancel_during_probe(Some(Duration::from_millis(300))).await;
    let repeated = proxy.metric("pgmemo_cancel_requests_total", &["result=\"repeated\""]);
    assert!(repeated >= 1.0, "the request was not sent again");
}

/// A client cancels right after sending its statement, and the statement reaches PostgreSQL
/// 300 ms after pgmemo sent it (the gate delays it, as a loaded pgmemo worker that has not
/// read it yet, or a backend that has not, would). The statement is prepared and already ran
/// once, so pgmemo has nothing to plan and no own work to hold the request behind (the soak's
/// case). Forwarded on arrival, the request would find the backend idle and be dropped there,
/// and pg_sleep(10) would run to its end; routed by the session behind the statement, it is
/// sent again while the statement is all that is outstanding, and cancels it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_sent_right_behind_its_statement_cancels_it() {
    let (_pg, gate, proxy) = start("").await;
    let (mut s, key) = session(proxy.addr(), "late_victim").await;
    let mut parse = wire::frame(b'P', b"sleep\0SELECT pg_sleep($1)\0\0\0");
    parse.extend(wire::frame(b'S', b""));
    s.write_all(&parse).await.expect("send Parse");
    reply(&mut s, Duration::from_secs(10), "Parse").await;
    s.write_all(&bind_execute_sync("sleep", "0.01"))
        .await
        .expect("send the first execution");
    let frames = reply(&mut s, Duration::from_secs(10), "pg_sleep(0.01)").await;
    assert!(
        wire::first_error(&frames).is_none(),
        "pg_sleep(0.01) failed"
    );

    gate.delay_upstream("late_victim", Duration::from_millis(300));
    let sent = Instant::now();
    s.write_all(&bind_execute_sync("sleep", "10"))
        .await
        .expect("send pg_sleep(10)");
    cancel(proxy.addr(), &key, None).await;
    let frames = reply(
        &mut s,
        Duration::from_secs(8),
        "pg_sleep(10) after its cancel",
    )
    .await;
    expect_cancelled(&frames);
    // About 0.6 s here (the statement 300 ms late, the repeat 400 ms after the first
    // forward); the bound leaves room for a loaded machine, far below 10 s.
    let took = sent.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "cancelled only after {took:?}"
    );
    let repeated = proxy.metric("pgmemo_cancel_requests_total", &["result=\"repeated\""]);
    assert!(repeated >= 1.0, "the request was not sent again");
    gate.delay_upstream("late_victim", Duration::ZERO);
    run(&mut s, "SELECT 1").await;
}

/// Bind (unnamed portal, one text parameter), Execute and Sync for prepared statement `stmt`.
fn bind_execute_sync(stmt: &str, value: &str) -> Vec<u8> {
    let mut bind = vec![0u8];
    bind.extend_from_slice(stmt.as_bytes());
    bind.push(0);
    bind.extend_from_slice(&0i16.to_be_bytes());
    bind.extend_from_slice(&1i16.to_be_bytes());
    let len = i32::try_from(value.len()).expect("short parameter");
    bind.extend_from_slice(&len.to_be_bytes());
    bind.extend_from_slice(value.as_bytes());
    bind.extend_from_slice(&0i16.to_be_bytes());
    let mut out = wire::frame(b'B', &bind);
    out.extend(wire::frame(b'E', b"\0\0\0\0\0"));
    out.extend(wire::frame(b'S', b""));
    out
}

/// Runs the probe race; `late`: how late the gate delivers the client's statement.
async fn cancel_during_probe(late: Option<Duration>) -> Proxy {
    let (_pg, gate, proxy) = start("").await;
    let (mut s, key) = session(proxy.addr(), "probe_victim").await;
    run(&mut s, "SELECT 1").await;

    gate.hold_after_next_ready("probe_victim");
    let frames = run(&mut s, "SELECT set_config('app.cancel_test', 'on', false)").await;
    assert!(wire::first_error(&frames).is_none(), "set_config failed");
    s.write_all(&wire::query("SELECT pg_sleep(10)"))
        .await
        .expect("send pg_sleep");
    assert!(
        gate.wait_sent_while_holding(Duration::from_secs(10)).await,
        "pgmemo sent no settings probe after the session's settings changed"
    );
    if let Some(late) = late {
        // The probe has gone through; what pgmemo sends next (the statement) is late.
        gate.delay_upstream("probe_victim", late);
    }
    let addr = proxy.addr();
    let key2 = key.clone();
    let cancelled = tokio::spawn(async move { cancel(addr, &key2, None).await });
    wait_held(&proxy).await;
    let released = Instant::now();
    gate.release();

    let frames = reply(
        &mut s,
        Duration::from_secs(5),
        "pg_sleep(10) after its cancel",
    )
    .await;
    let took = released.elapsed();
    expect_cancelled(&frames);
    // About 50 ms here (600 ms with the statement 300 ms late); the bound leaves room for a
    // loaded machine, far below the 10 s an uncancelled sleep takes.
    assert!(
        took < Duration::from_secs(2),
        "pg_sleep(10) was cancelled {took:?} after the probe's answer"
    );
    tokio::time::timeout(Duration::from_secs(10), cancelled)
        .await
        .expect("the cancel connection closed once the request was delivered")
        .expect("cancel task");
    assert_eq!(
        held_cancels(&proxy),
        0.0,
        "a delivered request is no longer held"
    );
    gate.delay_upstream("probe_victim", Duration::ZERO);
    // The session is usable, and the probe (answered late) did not leave it uncached.
    run(&mut s, "SELECT 1").await;
    proxy
}

/// A statement pgmemo must plan first (it names a table its catalog has not seen) is held
/// while the catalog is read; nothing of the client's runs upstream then. The gate holds the
/// catalog connection's answers, so the plan is pending when the client cancels: the request
/// must be held and forwarded once the statement runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_while_the_statement_is_planned_cancels_it() {
    let (pg, gate, proxy) = start("").await;
    let (mut s, key) = session(proxy.addr(), "plan_victim").await;
    run(&mut s, "SELECT 1").await;
    let direct = pg.connect(SUPERUSER, "", DB).await;
    direct
        .batch_execute("CREATE TABLE plan_fresh (a int); INSERT INTO plan_fresh VALUES (1)")
        .await
        .expect("create table");

    gate.hold_now("pgmemo-catalog");
    s.write_all(&wire::query("SELECT pg_sleep(10) FROM plan_fresh"))
        .await
        .expect("send pg_sleep");
    assert!(
        gate.wait_sent_while_holding(Duration::from_secs(10)).await,
        "pgmemo read nothing from the catalog to plan a statement on a new table"
    );
    let addr = proxy.addr();
    let cancelled = tokio::spawn(async move { cancel(addr, &key, None).await });
    wait_held(&proxy).await;
    let released = Instant::now();
    gate.release();

    let frames = reply(
        &mut s,
        Duration::from_secs(5),
        "pg_sleep(10) after its cancel",
    )
    .await;
    let took = released.elapsed();
    expect_cancelled(&frames);
    assert!(
        took < Duration::from_secs(2),
        "cancelled {took:?} after the plan"
    );
    tokio::time::timeout(Duration::from_secs(10), cancelled)
        .await
        .expect("the cancel connection closed once the request was delivered")
        .expect("cancel task");
    assert_eq!(
        held_cancels(&proxy),
        0.0,
        "a delivered request is no longer held"
    );
    run(&mut s, "SELECT 1").await;
}
