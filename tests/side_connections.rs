//! pgmemo's own connections to a database never keep it from being dropped, renamed or
//! used as a template (issue 16 item 2): they close about a second after the database's
//! last client session (catalog connections and, with `cdc_stop_when_idle`, the change
//! stream's walsender and its lag monitor), and at once when such a statement passes
//! through pgmemo. Reopened on demand, they miss nothing: DDL and direct writes made while
//! they were closed are never answered from the cache.

mod common;
#[path = "support/cache_probe.rs"]
mod probe;

use std::time::{Duration, Instant};

use common::{PgOptions, PgServer, SUPERUSER};
use probe::{CacheStack, simple, table};
use tokio_postgres::Client;

/// The database the tests drop, rename or copy.
const X: &str = "side_x";

const X_SETUP: &str = "
CREATE TABLE t(id int PRIMARY KEY, v int NOT NULL);
INSERT INTO t VALUES (1, 1);
CREATE VIEW tv AS SELECT id, v FROM t;
";

/// The grace is one second; the side connections' backends need a moment to exit.
const CLOSE_BOUND: Duration = Duration::from_secs(4);

/// `cdc`: follow the change stream of [`X`] too; `extra` goes into `[invalidation]`.
fn config(poll: &str, cdc: bool, extra: &str) -> String {
    let inv = if cdc {
        format!("cdc = \"on\"\ncdc_databases = [\"{X}\"]\n{extra}")
    } else {
        "cdc = \"off\"".to_owned()
    };
    format!(
        "[cache]\nttl = \"60s\"\n\n[catalog]\npoll_interval = \"{poll}\"\n\n[invalidation]\n{inv}\n"
    )
}

/// PostgreSQL with [`X`] prepared, then pgmemo.
async fn stack(config_toml: &str) -> CacheStack {
    let pg = PgServer::start(PgOptions::default().hba_line("host all all 127.0.0.1/32 trust"));
    pg.psql("postgres", &format!("CREATE DATABASE {X}"));
    pg.psql(X, X_SETUP);
    CacheStack::start_on(pg, config_toml).await
}

/// Connections in `db` as `pg_stat_activity` lists them (walsenders included), other than
/// the asking one: `application_name` of each.
async fn connections_in(s: &CacheStack, db: &str) -> Vec<String> {
    let rows = s
        .probe
        .client
        .query(
            "SELECT coalesce(application_name, '') || ' (' || coalesce(backend_type, '') || ')' \
             FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&db],
        )
        .await
        .unwrap_or_else(|e| panic!("pg_stat_activity: {e}"));
    rows.iter().map(|r| r.get::<_, String>(0)).collect()
}

async fn wait_no_connections(s: &CacheStack, db: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let left = connections_in(s, db).await;
        if left.is_empty() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "connections still in {db} after {within:?}: {left:?}; pgmemo stderr:\n{}",
            s.proxy.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The state `/metrics` reports for [`X`]'s stream.
fn x_stream_state(s: &CacheStack) -> Option<String> {
    let metrics = s.proxy.admin_get("/metrics");
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix("pgmemo_cdc_state{")?;
        if !rest.contains(&format!("database=\"{X}\"")) || !line.ends_with(" 1") {
            return None;
        }
        Some(rest.split("state=\"").nth(1)?.split('"').next()?.to_owned())
    })
}

async fn wait_x_state(s: &CacheStack, state: &str) {
    let started = Instant::now();
    while x_stream_state(s).as_deref() != Some(state) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "stream of {X} not {state} (now {:?}); pgmemo stderr:\n{}",
            x_stream_state(s),
            s.proxy.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn row(v: &str) -> Vec<common::compare::SimpleMsg> {
    table(&["v"], &[&[v]])
}

const READ: &str = "SELECT v FROM tv WHERE id = 1";

/// A client of [`X`] through pgmemo reads until a read is a cache hit (so the catalog's side
/// connections are open), and the catalog connections are seen in [`X`].
async fn use_x_until_a_hit(s: &CacheStack, expect: &str) -> Client {
    let c = s.proxy.connect(SUPERUSER, "", X).await;
    let started = Instant::now();
    loop {
        let hits = s.metric("pgmemo_cache_hits_total");
        assert_eq!(simple(&c, READ).await, row(expect));
        if s.metric("pgmemo_cache_hits_total") > hits {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no cache hit for {READ} in {X}; pgmemo stderr:\n{}",
            s.proxy.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let apps = connections_in(s, X).await;
    assert!(
        apps.iter().any(|a| a.starts_with("pgmemo-catalog")),
        "pgmemo's catalog connections are open in {X} while it is used: {apps:?}"
    );
    c
}

/// Runs `sql` through pgmemo from a session of the test database, right after the last client of [`X`]
/// left; it must succeed, and well before PostgreSQL's own 5 s wait for other sessions runs
/// out.
async fn through_pgmemo_at_once(s: &CacheStack, sql: &str) {
    let other = s.session(SUPERUSER).await;
    let started = Instant::now();
    if let Err(e) = other.simple_query(sql).await {
        panic!(
            "{sql} through pgmemo: {e} ({:?}); connections in {X}: {:?}",
            common::db_error(&e).message(),
            connections_in(s, X).await
        );
    }
    println!("{sql}: {:?}", started.elapsed());
}

async fn drop_through_pgmemo_right_after_the_last_client(cdc: bool) {
    let s = stack(&config("200ms", cdc, "")).await;
    if cdc {
        wait_x_state(&s, "streaming").await;
    }
    let c = use_x_until_a_hit(&s, "1").await;
    drop(c);
    through_pgmemo_at_once(&s, &format!("DROP DATABASE {X}")).await;
    let exists = simple(
        &s.probe.client,
        &format!("SELECT count(*) FROM pg_database WHERE datname = '{X}'"),
    )
    .await;
    assert_eq!(exists, table(&["count"], &[&["0"]]));
}

#[tokio::test]
async fn drop_database_through_pgmemo_succeeds_at_once_without_cdc() {
    drop_through_pgmemo_right_after_the_last_client(false).await;
}

#[tokio::test]
async fn drop_database_through_pgmemo_succeeds_at_once_with_the_stream_of_that_database() {
    drop_through_pgmemo_right_after_the_last_client(true).await;
}

#[tokio::test]
async fn rename_and_template_through_pgmemo_succeed_at_once() {
    let s = stack(&config("200ms", false, "")).await;
    let c = use_x_until_a_hit(&s, "1").await;
    drop(c);
    through_pgmemo_at_once(&s, &format!("CREATE DATABASE side_copy TEMPLATE {X}")).await;
    let c = use_x_until_a_hit(&s, "1").await;
    drop(c);
    through_pgmemo_at_once(&s, &format!("ALTER DATABASE {X} RENAME TO side_renamed")).await;
    // The extended protocol too (a prepared statement's Parse carries it).
    let c = s.proxy.connect(SUPERUSER, "", "side_copy").await;
    assert_eq!(simple(&c, READ).await, row("1"));
    drop(c);
    let other = s.session(SUPERUSER).await;
    other
        .execute("DROP DATABASE side_copy", &[])
        .await
        .unwrap_or_else(|e| panic!("DROP DATABASE (extended protocol) through pgmemo: {e:?}"));
}

async fn no_connection_left_after_the_grace(cdc: bool) {
    let extra = "cdc_stop_when_idle = true";
    let s = stack(&config("200ms", cdc, extra)).await;
    let c = use_x_until_a_hit(&s, "1").await;
    if cdc {
        wait_x_state(&s, "streaming").await;
        let apps = connections_in(&s, X).await;
        assert!(
            apps.iter().any(|a| a.contains("walsender")),
            "the change stream of {X} runs while a client uses it: {apps:?}"
        );
    }
    drop(c);
    let took = wait_no_connections(&s, X, CLOSE_BOUND).await;
    println!("no connection of pgmemo's left in {X} {took:?} after its last client");
    if cdc {
        wait_x_state(&s, "idle").await;
    }
    s.pg.psql("postgres", &format!("DROP DATABASE {X}"));
}

#[tokio::test]
async fn after_the_grace_no_side_connection_is_left_and_a_direct_drop_succeeds() {
    no_connection_left_after_the_grace(false).await;
}

#[tokio::test]
async fn after_the_grace_the_idle_stream_is_stopped_too() {
    no_connection_left_after_the_grace(true).await;
}

/// DDL made directly while pgmemo watched nothing of [`X`] (its connections closed, the
/// periodic poll an hour away) is seen before any cached result of [`X`] is served again.
#[tokio::test]
async fn ddl_made_while_the_side_connections_were_closed_is_never_served_stale() {
    let s = stack(&config("1h", false, "")).await;
    let c = use_x_until_a_hit(&s, "1").await;
    drop(c);
    wait_no_connections(&s, X, CLOSE_BOUND).await;
    s.pg.psql(
        X,
        "CREATE OR REPLACE VIEW tv AS SELECT id, v * 10 AS v FROM t",
    );
    let c = s.proxy.connect(SUPERUSER, "", X).await;
    for _ in 0..5 {
        assert_eq!(
            simple(&c, READ).await,
            row("10"),
            "stale after the view changed"
        );
    }
    // And it is cached again once watched.
    drop(c);
    let c = use_x_until_a_hit(&s, "10").await;
    drop(c);
}

/// A direct write made while the idle stream of [`X`] was stopped is never served stale
/// when a client comes back (the restarted stream's epoch bump covers it).
#[tokio::test]
async fn a_direct_write_while_the_stream_was_stopped_is_never_served_stale() {
    let s = stack(&config("200ms", true, "cdc_stop_when_idle = true")).await;
    let c = s.proxy.connect(SUPERUSER, "", X).await;
    wait_x_state(&s, "streaming").await;
    drop(c);
    let c = use_x_until_a_hit(&s, "1").await;
    drop(c);
    wait_no_connections(&s, X, CLOSE_BOUND).await;
    wait_x_state(&s, "idle").await;
    s.pg.psql(X, "UPDATE t SET v = 2 WHERE id = 1");
    let c = s.proxy.connect(SUPERUSER, "", X).await;
    for _ in 0..5 {
        assert_eq!(
            simple(&c, READ).await,
            row("2"),
            "stale after a direct write"
        );
    }
    drop(c);
}
