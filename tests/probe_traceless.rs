//! The settings probe leaves no trace a client could see and costs a new connection
//! nothing (issue 16, items 3-5): its prepared statement never outlives it, even when it
//! fails; it reads no view definition (so it never waits on, or deadlocks with, a lock a
//! client holds on what a view reads); and a login whose settings pgmemo already knows runs
//! no probe at all, while a change to the role's settings reaches the next login.

mod common;

use std::time::{Duration, Instant};

use common::{PgOptions, PgServer, Proxy, ProxyArgs, SUPERUSER};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

const DB: &str = "postgres";

fn rows(msgs: Vec<SimpleQueryMessage>) -> Vec<String> {
    msgs.into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect()
}

async fn one(c: &Client, sql: &str) -> Vec<String> {
    rows(c.simple_query(sql).await.unwrap())
}

/// A connection through the proxy with startup `options`.
async fn connect_with(proxy: &Proxy, user: &str, options: Option<&str>) -> Client {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(proxy.port())
        .user(user)
        .dbname(DB);
    if let Some(o) = options {
        cfg.options(o);
    }
    let (client, conn) = cfg.connect(NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

fn probes(proxy: &Proxy, result: &str) -> f64 {
    let metrics = proxy.admin_get("/metrics");
    let prefix = format!("pgmemo_session_probes_total{{result=\"{result}\"}}");
    metrics
        .lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// A probe that fails while executing (here: a custom setting's value has no equivalent in
/// the client encoding the session switched to, so sending its row fails) must not leave its
/// statement behind: on the parent it stayed in `pg_prepared_statements` (the Close came
/// after the failed Execute, before the Sync, and was skipped), and every later probe of the
/// session failed with "already exists".
#[tokio::test]
async fn a_failed_probe_leaves_no_prepared_statement() {
    let pg = PgServer::start(PgOptions::default());
    let proxy = Proxy::start(ProxyArgs::new(pg.url(SUPERUSER, DB)));
    let s = proxy.connect(SUPERUSER, "", DB).await;
    assert_eq!(one(&s, "SELECT 1").await, ["1"]);
    s.simple_query("SET app.word = '日本'").await.unwrap();
    let failed_before = probes(&proxy, "error");
    // The probe sent once the session is idle reads app.word back, in LATIN1: it fails.
    s.simple_query("SET client_encoding = 'LATIN1'")
        .await
        .unwrap();
    assert_eq!(one(&s, "SELECT 2").await, ["2"]);
    assert!(
        probes(&proxy, "error") > failed_before,
        "the probe did not fail"
    );
    let left = one(&s, "SELECT name FROM pg_catalog.pg_prepared_statements").await;
    assert!(left.is_empty(), "statements left in the session: {left:?}");
    // Back to UTF8 the session is probed successfully again, and still leaves nothing.
    let ok_before = probes(&proxy, "ok");
    s.simple_query("SET client_encoding = 'UTF8'")
        .await
        .unwrap();
    assert_eq!(one(&s, "SELECT 3").await, ["3"]);
    assert!(
        probes(&proxy, "ok") > ok_before,
        "no probe succeeded after the failure"
    );
    let left = one(&s, "SELECT name FROM pg_catalog.pg_prepared_statements").await;
    assert!(left.is_empty(), "statements left in the session: {left:?}");
}

const VIEW_SETUP: &str = "CREATE TABLE base (id int, tenant text);
     INSERT INTO base VALUES (1, 'a'), (2, 'b');
     CREATE VIEW tv AS SELECT id FROM base WHERE tenant = current_setting('app.tenant', true);
     CREATE FUNCTION set_tenant(t text) RETURNS text VOLATILE LANGUAGE plpgsql
       AS $$ BEGIN RETURN set_config('app.' || 'tenant', t, false); END $$;";

/// A client holding a lock on what a view reads (as `DROP VIEW ... CASCADE` does) must not
/// make another session's probe wait: on the parent the probe deparsed every view
/// (`pg_get_viewdef` locks what it reads) and waited for the lock, so the other session's
/// trivial statement waited too (and could deadlock with the holder).
#[tokio::test]
async fn the_probe_does_not_wait_on_locks_clients_hold_on_what_views_read() {
    let pg = PgServer::start(PgOptions::default());
    pg.psql(DB, VIEW_SETUP);
    let proxy = Proxy::start(ProxyArgs::new(pg.url(SUPERUSER, DB)));
    let s = proxy.connect(SUPERUSER, "", DB).await;
    assert_eq!(one(&s, "SELECT 1").await, ["1"]);
    let locker = pg.connect(SUPERUSER, "", DB).await;
    locker
        .batch_execute("BEGIN; LOCK TABLE base IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    s.simple_query("SET app.tenant = 'a'").await.unwrap();
    let start = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(3), one(&s, "SELECT 2")).await;
    let waited = start.elapsed();
    locker.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        got.expect("the statement waited for the lock on the view's table"),
        ["2"]
    );
    assert!(waited < Duration::from_secs(2), "waited {waited:?}");
}

/// The custom setting a view reads is found in its stored tree (no deparsing) and is part
/// of every session's fingerprint, even when the session sets it in a way pgmemo cannot
/// read (a name computed inside a function): two tenants never see each other's rows.
#[tokio::test]
async fn a_setting_a_view_reads_isolates_sessions_without_deparsing() {
    let pg = PgServer::start(PgOptions::default());
    pg.psql(DB, VIEW_SETUP);
    let proxy = Proxy::start(
        ProxyArgs::new(pg.url(SUPERUSER, DB))
            .config("[[rules]]\ntable = \"public.tv\"\nallow_stable_functions = true\n"),
    );
    let a = proxy.connect(SUPERUSER, "", DB).await;
    let b = proxy.connect(SUPERUSER, "", DB).await;
    one(&a, "SELECT set_tenant('a')").await;
    one(&b, "SELECT set_tenant('b')").await;
    for _ in 0..3 {
        assert_eq!(one(&a, "SELECT id FROM tv").await, ["1"]);
        assert_eq!(one(&b, "SELECT id FROM tv").await, ["2"]);
    }
}

/// The role `r` logs in without a password (the harness's generated lines come after).
const R_HBA: &str = "host all r 127.0.0.1/32 trust";

const ROLE_SETUP: &str = "CREATE ROLE r LOGIN;
     CREATE SCHEMA s1; CREATE SCHEMA s2;
     CREATE TABLE s1.t (v text); CREATE TABLE s2.t (v text);
     INSERT INTO s1.t VALUES ('one'); INSERT INTO s2.t VALUES ('two');
     GRANT USAGE ON SCHEMA s1, s2 TO r; GRANT SELECT ON s1.t, s2.t TO r;
     ALTER ROLE r SET search_path = s1;";

/// A login whose settings are known (same database, user and startup parameters, nothing
/// changed since) runs no probe: its first statement waits for nothing of pgmemo's.
#[tokio::test]
async fn a_known_login_runs_no_probe() {
    let pg = PgServer::start(PgOptions::default().hba_line(R_HBA));
    pg.psql(DB, ROLE_SETUP);
    let proxy = Proxy::start(ProxyArgs::new(pg.url(SUPERUSER, DB)));
    // The database's change stream starts with its first client; becoming consistent it
    // moves the cache epoch, which rightly forgets remembered logins. Let it settle first
    // (another login's session starts it), so the count below sees only the memo's work.
    // Its own probe is over once it has answered a statement.
    let starter = proxy.connect(SUPERUSER, "", DB).await;
    wait_streaming(&proxy).await;
    starter.simple_query("SELECT 1").await.unwrap();
    let before = probes(&proxy, "ok");
    for _ in 0..10 {
        let c = connect_with(&proxy, "r", None).await;
        assert_eq!(one(&c, "SELECT v FROM t").await, ["one"]);
    }
    assert_eq!(
        probes(&proxy, "ok") - before,
        1.0,
        "only the first login is probed"
    );
    assert!(probes(&proxy, "login_memo") >= 9.0);
    // Other startup parameters are another login.
    let c = connect_with(&proxy, "r", Some("-c search_path=s2")).await;
    assert_eq!(one(&c, "SELECT v FROM t").await, ["two"]);
    assert_eq!(probes(&proxy, "ok") - before, 2.0);
}

/// Waits until the change stream of [`DB`] is consistent (panics after 30 s).
async fn wait_streaming(proxy: &Proxy) {
    let started = Instant::now();
    let database = format!("database=\"{DB}\"");
    let streaming = |l: &str| {
        l.starts_with("pgmemo_cdc_state{")
            && l.contains(&database)
            && l.contains("state=\"streaming\"")
            && l.ends_with(" 1")
    };
    while !proxy.admin_get("/metrics").lines().any(streaming) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the change stream of {DB} is not streaming after 30 s; pgmemo stderr:\n{}",
            proxy.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `ALTER ROLE ... SET` through pgmemo reaches the very next login: a remembered login
/// would otherwise key its reads under the old search_path and be served the other
/// schema's cached rows.
#[tokio::test]
async fn a_role_setting_changed_through_pgmemo_reaches_the_next_login() {
    let pg = PgServer::start(PgOptions::default().hba_line(R_HBA));
    pg.psql(DB, ROLE_SETUP);
    let proxy = Proxy::start(ProxyArgs::new(pg.url(SUPERUSER, DB)));
    for _ in 0..2 {
        let c = connect_with(&proxy, "r", None).await;
        assert_eq!(one(&c, "SELECT v FROM t").await, ["one"]);
    }
    let admin = proxy.connect(SUPERUSER, "", DB).await;
    admin
        .simple_query("ALTER ROLE r SET search_path = s2")
        .await
        .unwrap();
    let c = connect_with(&proxy, "r", None).await;
    assert_eq!(one(&c, "SELECT v FROM t").await, ["two"]);
}

/// Changed directly on PostgreSQL, a role's settings reach new logins within the catalog
/// poll interval (the bound DESIGN §1.3 gives for changes pgmemo does not see).
#[tokio::test]
async fn a_role_setting_changed_directly_reaches_logins_after_the_poll() {
    let pg = PgServer::start(PgOptions::default().hba_line(R_HBA));
    pg.psql(DB, ROLE_SETUP);
    let proxy = Proxy::start(
        ProxyArgs::new(pg.url(SUPERUSER, DB)).config("[catalog]\npoll_interval = \"200ms\"\n"),
    );
    for _ in 0..2 {
        let c = connect_with(&proxy, "r", None).await;
        assert_eq!(one(&c, "SELECT v FROM t").await, ["one"]);
    }
    pg.psql(DB, "ALTER ROLE r SET search_path = s2");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let c = connect_with(&proxy, "r", None).await;
    assert_eq!(one(&c, "SELECT v FROM t").await, ["two"]);
}
