//! Process lifecycle: graceful shutdown on SIGTERM (idle sessions closed with 57P01 at once,
//! open transactions allowed to finish until `server.shutdown_timeout`, then closed and rolled
//! back; no new connections; `/readyz` not ready; exit 0) and SIGHUP reload of the config
//! file (a valid file applies, an invalid one is rejected and the running config kept).

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{PgOptions, PgServer, Proxy, ProxyArgs, SUPERUSER, Signal};
use tokio::sync::oneshot;
use tokio_postgres::{Client, NoTls};

const DB: &str = "app";
const PROMPT: Duration = Duration::from_secs(5);

/// The end of a client connection's background task: how the connection finished.
struct Watch(oneshot::Receiver<Result<(), tokio_postgres::Error>>);

impl Watch {
    /// Waits for the connection to end; panics if it is still open after `timeout`.
    async fn ended(self, timeout: Duration, what: &str) -> Result<(), tokio_postgres::Error> {
        tokio::time::timeout(timeout, self.0)
            .await
            .unwrap_or_else(|_| panic!("{what}: connection still open after {timeout:?}"))
            .expect("connection task dropped its result")
    }
}

/// A connection through `proxy` whose connection future the test observes.
async fn connect_watched(proxy: &Proxy) -> (Client, Watch) {
    let config = common::pg_config(proxy.addr(), SUPERUSER, "", DB);
    let (client, connection) = config.connect(NoTls).await.expect("connect through pgmemo");
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let _ = tx.send(connection.await);
    });
    (client, Watch(rx))
}

fn assert_admin_shutdown(r: Result<(), tokio_postgres::Error>, what: &str) {
    let err = r.expect_err(&format!("{what}: connection ended without an error"));
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("{what}: expected 57P01, got {err:?}"));
    assert_eq!(db.code().code(), "57P01", "{what}: {db:?}");
    assert_eq!(db.severity(), "FATAL", "{what}");
}

/// `/readyz` status code, or `None` when the admin listener is gone.
fn readyz_status(proxy: &Proxy) -> Option<u16> {
    let mut s =
        std::net::TcpStream::connect_timeout(&proxy.admin_addr(), Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET /readyz HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

fn count(pg: &PgServer, sql: &str) -> i64 {
    pg.psql(DB, sql).trim().parse().expect("a count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_idle_sessions_and_lets_open_transactions_commit() {
    let pg = PgServer::start(PgOptions::default());
    pg.psql(DB, "CREATE TABLE drained(id int PRIMARY KEY, note text)");
    let mut proxy = Proxy::start(
        ProxyArgs::new(pg.url(SUPERUSER, DB)).config("[server]\nshutdown_timeout = \"10s\"\n"),
    );
    let (a, a_end) = connect_watched(&proxy).await;
    let (b, b_end) = connect_watched(&proxy).await;
    a.batch_execute("BEGIN; INSERT INTO drained VALUES (1, 'before SIGTERM')")
        .await
        .unwrap();
    b.simple_query("SELECT 1").await.unwrap();
    assert_eq!(
        tokio::task::block_in_place(|| readyz_status(&proxy)),
        Some(200)
    );

    proxy.signal(Signal::Term);
    let t0 = Instant::now();
    // B is idle: closed at once with 57P01.
    assert_admin_shutdown(
        b_end.ended(PROMPT, "idle session B").await,
        "idle session B",
    );
    assert!(b.simple_query("SELECT 1").await.is_err());
    let b_closed = t0.elapsed();

    // The listener is gone before sessions are told to drain: no new sessions, not ready.
    let refused = tokio::net::TcpStream::connect(proxy.addr()).await;
    assert!(
        refused.is_err(),
        "a new TCP connection was accepted after SIGTERM"
    );
    let ready = tokio::task::block_in_place(|| readyz_status(&proxy));
    assert!(
        ready.is_none() || ready == Some(503),
        "/readyz after SIGTERM: {ready:?}"
    );

    // A is mid-transaction: it may go on and commit within the deadline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.batch_execute("INSERT INTO drained VALUES (2, 'after SIGTERM')")
        .await
        .expect("a statement inside the open transaction after SIGTERM");
    a.batch_execute("COMMIT")
        .await
        .expect("COMMIT after SIGTERM");
    assert_admin_shutdown(
        a_end.ended(PROMPT, "session A").await,
        "session A after COMMIT",
    );
    let a_closed = Instant::now();
    assert_eq!(count(&pg, "SELECT count(*) FROM drained"), 2);

    let status = tokio::task::block_in_place(|| proxy.wait_exit(Duration::from_secs(15)));
    assert!(status.success(), "pgmemo exited with {status:?}");
    // Its background tasks (catalog poller, change stream and its helpers, signal
    // handlers) were stopped and waited for, none left behind.
    let stderr = proxy.stderr();
    assert!(
        stderr.contains("background tasks stopped") && !stderr.contains("still running"),
        "background tasks not all stopped at exit:\n{stderr}"
    );
    assert!(
        a_closed.elapsed() < Duration::from_secs(5),
        "pgmemo lingered {:?} after its last session closed",
        a_closed.elapsed()
    );
    assert!(
        b_closed < Duration::from_secs(3),
        "B closed after {b_closed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_deadline_closes_and_rolls_back_open_transactions() {
    let pg = PgServer::start(PgOptions::default());
    pg.psql(DB, "CREATE TABLE pending(id int PRIMARY KEY)");
    let mut proxy = Proxy::start(
        ProxyArgs::new(pg.url(SUPERUSER, DB)).config("[server]\nshutdown_timeout = \"2s\"\n"),
    );
    let (a, a_end) = connect_watched(&proxy).await;
    a.batch_execute("BEGIN; INSERT INTO pending VALUES (1)")
        .await
        .unwrap();

    proxy.signal(Signal::Term);
    let t0 = Instant::now();
    a.batch_execute("INSERT INTO pending VALUES (2)")
        .await
        .expect("statements still run before the deadline");
    assert_admin_shutdown(
        a_end.ended(Duration::from_secs(10), "session A").await,
        "session A at the deadline",
    );
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(8),
        "closed after {waited:?} with shutdown_timeout = 2s"
    );

    // Rolled back, not left open: had the transaction survived, the key would still be
    // locked (lock timeout); had it committed, the insert would be a duplicate.
    pg.psql(
        DB,
        "SET lock_timeout = '5s'; INSERT INTO pending VALUES (1), (2);",
    );
    assert_eq!(count(&pg, "SELECT count(*) FROM pending"), 2);

    let status = tokio::task::block_in_place(|| proxy.wait_exit(Duration::from_secs(15)));
    assert!(status.success(), "pgmemo exited with {status:?}");
}

async fn try_session(proxy: &Proxy) -> Result<Client, String> {
    match proxy.try_connect(SUPERUSER, "", DB).await {
        Ok(c) => {
            c.simple_query("SELECT 1")
                .await
                .map_err(|e| e.to_string())?;
            Ok(c)
        }
        Err(e) => Err(match e.as_db_error() {
            Some(db) => db.code().code().to_owned(),
            None => e.to_string(),
        }),
    }
}

/// Opens sessions until the limit answers 53300; returns how many were open at that point.
async fn fill_to_limit(proxy: &Proxy, held: &mut Vec<Client>) -> usize {
    loop {
        match try_session(proxy).await {
            Ok(c) => held.push(c),
            Err(code) if code == "53300" => return held.len(),
            Err(e) => panic!("unexpected connection failure: {e}"),
        }
        assert!(held.len() <= 50, "no connection limit in force");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_a_valid_config_and_keeps_the_old_one_on_an_invalid_file() {
    let pg = PgServer::start(PgOptions::default());
    let mut proxy = Proxy::start(
        ProxyArgs::new(pg.url(SUPERUSER, DB)).config("[server]\nmax_client_connections = 2\n"),
    );
    let path = proxy.config_path().expect("config file");
    let mut held = Vec::new();
    assert_eq!(fill_to_limit(&proxy, &mut held).await, 2);

    std::fs::write(&path, "[server]\nmax_client_connections = 5\n").unwrap();
    proxy.signal(Signal::Hup);
    let deadline = Instant::now() + PROMPT;
    loop {
        match try_session(&proxy).await {
            Ok(c) => {
                held.push(c);
                break;
            }
            Err(code) if code == "53300" && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the reloaded limit never applied: {e}"),
        }
    }
    assert_eq!(fill_to_limit(&proxy, &mut held).await, 5);

    let before = proxy.stderr().len();
    std::fs::write(
        &path,
        "[server]\nmax_client_connections = \"lots\"\nno_such_key = 1\n",
    )
    .unwrap();
    proxy.signal(Signal::Hup);
    let deadline = Instant::now() + PROMPT;
    let logged = loop {
        let text = proxy.stderr();
        let new = text.get(before..).unwrap_or_default().to_owned();
        if new.contains("rejected") {
            break new;
        }
        assert!(
            Instant::now() < deadline,
            "no rejection logged for an invalid config on SIGHUP:\n{new}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        logged.contains("max_client_connections"),
        "the rejection should name the bad key:\n{logged}"
    );
    assert!(
        proxy.try_exit_status().is_none(),
        "pgmemo exited on a bad reload"
    );
    for c in &held {
        c.simple_query("SELECT 1")
            .await
            .expect("sessions survive a rejected reload");
    }
    // The running limit (5) is still the one in force.
    assert_eq!(try_session(&proxy).await.err().as_deref(), Some("53300"));
    held.pop();
    let deadline = Instant::now() + PROMPT;
    while let Err(code) = try_session(&proxy).await {
        assert!(
            code == "53300" && Instant::now() < deadline,
            "after closing one of 5: {code}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
