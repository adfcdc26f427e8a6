//! The background executor's upstream connections against a real PostgreSQL (issue 19):
//! `upstream::login` with each authentication method, startup parameters and the login
//! errors; `refresh::pool::run`'s answer and its bounds; the pool's reuse, its bound under
//! concurrency, closing what was not released clean, idle expiry, waiting, and eviction of
//! another key's idle connection.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{MD5_USER, PLAIN_USER, PgOptions, PgServer, SCRAM_USER, SUPERUSER, TRUST_USER};
use pgmemo::config::UpstreamTarget;
use pgmemo::protocol::response::put_frame;
use pgmemo::refresh::pool::{LoginKey, Pool, PoolError, RunError, run};
use pgmemo::upstream::Upstream;
use pgmemo::upstream::login::{BackendConn, LoginError, login};

const T: Duration = Duration::from_secs(10);
const MAX: usize = 1 << 20;

fn upstream_url(url: &str) -> Upstream {
    Upstream::new(UpstreamTarget::parse(url).unwrap()).unwrap()
}

fn upstream(pg: &PgServer) -> Upstream {
    upstream_url(&format!(
        "postgres://127.0.0.1:{}/postgres?sslmode=disable",
        pg.port()
    ))
}

/// Parse, Bind, Describe (portal), Execute, Sync of `sql` (unnamed, no parameters, text).
fn extended(sql: &str) -> Vec<u8> {
    let zero = 0i16.to_be_bytes();
    let mut b = Vec::new();
    put_frame(&mut b, b'P', &[b"\0", sql.as_bytes(), b"\0", &zero]);
    put_frame(&mut b, b'B', &[b"\0\0", &zero, &zero, &zero]);
    put_frame(&mut b, b'D', &[b"P\0"]);
    put_frame(&mut b, b'E', &[b"\0", &0i32.to_be_bytes()]);
    put_frame(&mut b, b'S', &[]);
    b
}

fn tags(frames: &[Bytes]) -> String {
    frames.iter().map(|f| char::from(f[0])).collect()
}

/// The first column of each DataRow, as text.
fn column(frames: &[Bytes]) -> Vec<String> {
    frames
        .iter()
        .filter(|f| f[0] == b'D')
        .map(|f| {
            let len = i32::from_be_bytes(f[7..11].try_into().unwrap()) as usize;
            String::from_utf8(f[11..11 + len].to_vec()).unwrap()
        })
        .collect()
}

/// The single value `sql` returns on `conn`.
async fn value(conn: &mut BackendConn, sql: &str) -> String {
    let frames = run(conn, &extended(sql), MAX, T).await.unwrap();
    let mut values = column(&frames);
    assert_eq!(values.len(), 1, "{sql}: {}", tags(&frames));
    values.remove(0)
}

async fn pid(conn: &mut BackendConn) -> i32 {
    let pid: i32 = value(conn, "SELECT pg_backend_pid()")
        .await
        .parse()
        .unwrap();
    assert_eq!(conn.backend_key().map(|k| k.0), Some(pid));
    pid
}

/// Waits until the backend `pid` has exited (a closed connection), up to 10 s.
async fn assert_gone(pg: &PgServer, pid: i32) {
    let admin = pg.connect(SUPERUSER, "", "postgres").await;
    for _ in 0..200 {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .await
            .unwrap()
            .get(0);
        if n == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("backend {pid} is still connected");
}

fn key(user: &str, app: &str) -> LoginKey {
    LoginKey {
        database: "postgres".into(),
        user: user.into(),
        params: vec![("application_name".into(), app.into())],
    }
}

#[tokio::test]
async fn logs_in_with_trust_cleartext_md5_and_scram() {
    let pg = PgServer::start(PgOptions::default());
    // The md5 role's password is stored as an MD5 hash (pg_hba says md5 for it), so the
    // server asks for MD5 rather than SCRAM.
    let stored = pg.psql(
        "postgres",
        "SELECT bool_and(CASE rolname WHEN 'md5_user' THEN rolpassword LIKE 'md5%' \
         ELSE rolpassword LIKE 'SCRAM-SHA-256$%' END) FROM pg_authid \
         WHERE rolname IN ('md5_user', 'scram_user')",
    );
    assert_eq!(stored.trim(), "t");
    let up = upstream(&pg);
    for (user, password) in [
        (TRUST_USER, None),
        (PLAIN_USER.0, Some(PLAIN_USER.1)),
        (MD5_USER.0, Some(MD5_USER.1)),
        (SCRAM_USER.0, Some(SCRAM_USER.1)),
    ] {
        let mut conn = login(&up, user, password, "app", &[], T)
            .await
            .unwrap_or_else(|e| panic!("{user}: {e}"));
        assert!(conn.backend_key().is_some());
        assert!(conn.is_reusable());
        assert_eq!(
            value(
                &mut conn,
                "SELECT current_user || '@' || current_database()"
            )
            .await,
            format!("{user}@app")
        );
    }
    let e = login(&up, SCRAM_USER.0, None, "app", &[], T)
        .await
        .err()
        .unwrap();
    assert!(matches!(e, LoginError::PasswordRequired), "{e:?}");

    // Over the Unix socket (`local all all trust`), no TLS.
    let dir = pg.socket_dir().display().to_string().replace('/', "%2F");
    let unix = upstream_url(&format!("postgres://{dir}:{}/postgres", pg.port()));
    let mut conn = login(&unix, TRUST_USER, None, "postgres", &[], T)
        .await
        .unwrap();
    assert_eq!(
        value(&mut conn, "SELECT inet_client_addr() IS NULL").await,
        "t"
    );
}

#[tokio::test]
async fn scram_over_tls_without_channel_binding() {
    let pg = PgServer::start(PgOptions::default().tls());
    let up = upstream_url(&format!(
        "postgres://127.0.0.1:{}/postgres?sslmode=require",
        pg.port()
    ));
    // Over TLS PostgreSQL offers SCRAM-SHA-256-PLUS as well; the login picks the plain one.
    let mut conn = login(&up, SCRAM_USER.0, Some(SCRAM_USER.1), "app", &[], T)
        .await
        .unwrap();
    assert_eq!(
        value(
            &mut conn,
            "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        )
        .await,
        "true"
    );
}

#[tokio::test]
async fn login_errors_keep_the_sqlstate() {
    let pg = PgServer::start(PgOptions::default());
    let up = upstream(&pg);
    for user in [MD5_USER.0, SCRAM_USER.0, PLAIN_USER.0] {
        let e = login(&up, user, Some("wrong"), "app", &[], T)
            .await
            .err()
            .unwrap();
        assert!(matches!(e, LoginError::Server { .. }), "{user}: {e:?}");
        assert_eq!(e.code(), Some("28P01"), "{user}: {e}");
        assert!(
            e.to_string().contains("password authentication failed"),
            "{e}"
        );
    }
    let e = login(&up, TRUST_USER, None, "no_such_db", &[], T)
        .await
        .err()
        .unwrap();
    assert_eq!(e.code(), Some("3D000"), "{e}");
    // Nothing listens: a connect error, not a hang.
    let closed = upstream_url(&format!(
        "postgres://127.0.0.1:{}/postgres?sslmode=disable",
        common::ports::free_port()
    ));
    let e = login(&closed, TRUST_USER, None, "app", &[], T)
        .await
        .err()
        .unwrap();
    assert!(matches!(e, LoginError::Connect(_)), "{e:?}");
}

#[tokio::test]
async fn startup_parameters_are_applied_and_reported() {
    let pg = PgServer::start(PgOptions::default());
    let up = upstream(&pg);
    let params = vec![
        ("user".to_owned(), SUPERUSER.to_owned()),
        ("application_name".to_owned(), "pgmemo-bg".to_owned()),
        ("DateStyle".to_owned(), "SQL, DMY".to_owned()),
        ("database".to_owned(), "postgres".to_owned()),
    ];
    let mut conn = login(&up, TRUST_USER, None, "app", &params, T)
        .await
        .unwrap();
    let reported = |name: &str| {
        conn.reports()
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(reported("application_name").as_deref(), Some("pgmemo-bg"));
    assert_eq!(reported("DateStyle").as_deref(), Some("SQL, DMY"));
    assert!(reported("server_version").is_some());
    assert_eq!(value(&mut conn, "SHOW DateStyle").await, "SQL, DMY");
    assert_eq!(
        value(&mut conn, "SELECT current_setting('application_name')").await,
        "pgmemo-bg"
    );
    // `user` and `database` in the parameters do not override the login's.
    assert_eq!(
        value(
            &mut conn,
            "SELECT current_user || '@' || current_database()"
        )
        .await,
        format!("{TRUST_USER}@app")
    );
}

#[tokio::test]
async fn run_collects_the_answer_within_its_bounds() {
    let pg = PgServer::start(PgOptions::default());
    let up = upstream(&pg);
    let mut conn = login(&up, TRUST_USER, None, "app", &[], T).await.unwrap();

    let frames = run(&mut conn, &extended("SELECT 42 AS n"), MAX, T)
        .await
        .unwrap();
    // ParseComplete, BindComplete, RowDescription, DataRow, CommandComplete, ReadyForQuery.
    assert_eq!(tags(&frames), "12TDCZ");
    assert_eq!(column(&frames), ["42"]);
    assert_eq!(&frames[4][5..], b"SELECT 1\0");
    assert_eq!(&frames[5][..], b"Z\0\0\0\x05I");
    assert!(conn.is_reusable());

    // A server error is part of the answer; the connection stays usable.
    let frames = run(&mut conn, &extended("SELECT 1/0"), MAX, T)
        .await
        .unwrap();
    // (Planning folds 1/0, so the error comes at Bind.)
    assert_eq!(tags(&frames), "1EZ");
    assert!(conn.is_reusable());

    // Not ending with its only Sync: refused before anything is sent.
    let mut two = extended("SELECT 1");
    put_frame(&mut two, b'S', &[]);
    assert!(matches!(
        run(&mut conn, &two, MAX, T).await,
        Err(RunError::Request)
    ));
    assert!(conn.is_reusable());
    assert_eq!(value(&mut conn, "SELECT 7").await, "7");

    // The whole answer just fits; one byte less does not.
    let sql = "SELECT g FROM generate_series(1, 1000) g";
    let frames = run(&mut conn, &extended(sql), MAX, T).await.unwrap();
    assert_eq!(column(&frames).len(), 1000);
    let size: usize = frames.iter().map(Bytes::len).sum();
    let exact = run(&mut conn, &extended(sql), size, T).await.unwrap();
    assert_eq!(exact, frames);
    let e = run(&mut conn, &extended(sql), size - 1, T)
        .await
        .err()
        .unwrap();
    assert!(matches!(e, RunError::TooLarge(n) if n == size - 1), "{e:?}");
    assert!(
        !conn.is_reusable(),
        "left frames unread, must not be reused"
    );

    // One frame over the limit is refused from its header.
    let mut conn = login(&up, TRUST_USER, None, "app", &[], T).await.unwrap();
    let e = run(
        &mut conn,
        &extended("SELECT repeat('x', 100000)"),
        10_000,
        T,
    )
    .await
    .err()
    .unwrap();
    assert!(matches!(e, RunError::TooLarge(10_000)), "{e:?}");
    assert!(!conn.is_reusable());

    // Timeout.
    let mut conn = login(&up, TRUST_USER, None, "app", &[], T).await.unwrap();
    let e = run(
        &mut conn,
        &extended("SELECT pg_sleep(5)"),
        MAX,
        Duration::from_millis(200),
    )
    .await
    .err()
    .unwrap();
    assert!(matches!(e, RunError::Timeout(_)), "{e:?}");
    assert!(!conn.is_reusable());
}

#[tokio::test]
async fn the_pool_reuses_a_connection_per_key_and_expires_idle_ones() {
    let pg = PgServer::start(PgOptions::default());
    let pool = Pool::new(Arc::new(upstream(&pg)), 2, Duration::from_secs(60), T);
    let a = key(TRUST_USER, "pool-a");

    let mut conn = pool.get(&a, None).await.unwrap();
    let first = pid(&mut conn).await;
    assert_eq!(
        value(&mut conn, "SELECT current_setting('application_name')").await,
        "pool-a"
    );
    assert_eq!((pool.open(), pool.idle()), (1, 0));
    conn.release_clean();
    assert_eq!((pool.open(), pool.idle()), (1, 1));

    let mut conn = pool.get(&a, None).await.unwrap();
    assert_eq!(pid(&mut conn).await, first, "same key must reuse");
    assert_eq!((pool.open(), pool.idle()), (1, 0));
    conn.release_clean();

    // A password-authenticated key works the same.
    let s = key(SCRAM_USER.0, "pool-s");
    let mut conn = pool.get(&s, Some(SCRAM_USER.1)).await.unwrap();
    let scram = pid(&mut conn).await;
    conn.release_clean();
    assert_eq!((pool.open(), pool.idle()), (2, 2));
    let mut conn = pool.get(&s, None).await.unwrap();
    assert_eq!(pid(&mut conn).await, scram);
    conn.release_clean();

    // Idle longer than the idle timeout: closed on the next get.
    let short = Pool::new(Arc::new(upstream(&pg)), 2, Duration::from_millis(100), T);
    let mut conn = short.get(&a, None).await.unwrap();
    let old = pid(&mut conn).await;
    conn.release_clean();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut conn = short.get(&a, None).await.unwrap();
    assert_ne!(pid(&mut conn).await, old);
    assert_eq!((short.open(), short.idle()), (1, 0));
    assert_gone(&pg, old).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_never_exceeds_its_bound() {
    let pg = PgServer::start(PgOptions::default());
    let pool = Pool::new(Arc::new(upstream(&pg)), 2, Duration::from_secs(60), T);
    let peak = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let pool = pool.clone();
        let peak = peak.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.get(&key(TRUST_USER, "bound"), None).await.unwrap();
            peak.fetch_max(pool.open(), Ordering::SeqCst);
            let pid = pid(&mut conn).await;
            run(&mut conn, &extended("SELECT pg_sleep(0.1)"), MAX, T)
                .await
                .unwrap();
            peak.fetch_max(pool.open(), Ordering::SeqCst);
            conn.release_clean();
            pid
        }));
    }
    let mut pids = HashSet::new();
    for t in tasks {
        pids.insert(t.await.unwrap());
    }
    assert!(pids.len() <= 2, "{} backends for a pool of 2", pids.len());
    assert!(peak.load(Ordering::SeqCst) <= 2);
    assert_eq!((pool.open(), pool.idle()), (pids.len(), pids.len()));
    let admin = pg.connect(SUPERUSER, "", "postgres").await;
    let n: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'bound'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n as usize, pids.len());
}

#[tokio::test]
async fn the_pool_closes_what_was_not_released_clean() {
    let pg = PgServer::start(PgOptions::default());
    let pool = Pool::new(Arc::new(upstream(&pg)), 2, Duration::from_secs(60), T);
    let a = key(TRUST_USER, "unclean");

    // Dropped without release.
    let mut conn = pool.get(&a, None).await.unwrap();
    let dropped = pid(&mut conn).await;
    drop(conn);
    assert_eq!((pool.open(), pool.idle()), (0, 0));
    assert_gone(&pg, dropped).await;

    // Released clean, but a transaction is open: closed all the same.
    let mut conn = pool.get(&a, None).await.unwrap();
    let in_tx = pid(&mut conn).await;
    let frames = run(&mut conn, &extended("BEGIN"), MAX, T).await.unwrap();
    assert_eq!(frames.last().map(|z| z[5]), Some(b'T'));
    conn.release_clean();
    assert_eq!((pool.open(), pool.idle()), (0, 0));
    assert_gone(&pg, in_tx).await;

    // Released clean after a failed run: closed.
    let mut conn = pool.get(&a, None).await.unwrap();
    let failed = pid(&mut conn).await;
    let sql = extended("SELECT g FROM generate_series(1, 1000) g");
    assert!(run(&mut conn, &sql, 100, T).await.is_err());
    conn.release_clean();
    assert_eq!((pool.open(), pool.idle()), (0, 0));
    assert_gone(&pg, failed).await;

    let mut conn = pool.get(&a, None).await.unwrap();
    let fresh = pid(&mut conn).await;
    assert!(![dropped, in_tx, failed].contains(&fresh));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_key_evicts_an_idle_connection_and_waiters_get_freed_ones() {
    let pg = PgServer::start(PgOptions::default());
    let pool = Pool::new(
        Arc::new(upstream(&pg)),
        1,
        Duration::from_secs(60),
        Duration::from_millis(500),
    );
    let a = key(TRUST_USER, "evict-a");
    let b = key(TRUST_USER, "evict-b");

    let mut conn = pool.get(&a, None).await.unwrap();
    let pid_a = pid(&mut conn).await;
    conn.release_clean();
    assert_eq!((pool.open(), pool.idle()), (1, 1));

    let mut conn_b = pool.get(&b, None).await.unwrap();
    let pid_b = pid(&mut conn_b).await;
    assert_ne!(pid_a, pid_b);
    assert_eq!(
        value(&mut conn_b, "SELECT current_setting('application_name')").await,
        "evict-b"
    );
    assert_eq!((pool.open(), pool.idle()), (1, 0));
    assert_gone(&pg, pid_a).await;

    // At the bound with nothing idle: a get waits for the connect timeout, then fails.
    let e = pool.get(&a, None).await.err().unwrap();
    assert!(matches!(e, PoolError::Timeout(_)), "{e:?}");
    assert_eq!(pool.open(), 1);

    // A connection returned while a get waits serves it (here by making room for key a).
    let waiter = {
        let pool = pool.clone();
        let a = a.clone();
        tokio::spawn(async move {
            let mut conn = pool.get(&a, None).await.unwrap();
            pid(&mut conn).await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    conn_b.release_clean();
    let pid_a2 = waiter.await.unwrap();
    assert!(![pid_a, pid_b].contains(&pid_a2));
    assert_gone(&pg, pid_b).await;
    // The waiter's guard was dropped without release: nothing is left open.
    assert_eq!((pool.open(), pool.idle()), (0, 0));
}
