//! Changes made directly on Postgres (not through pgmemo) that cached results depend on are
//! picked up by the catalog poller (issue 3), here polling every 200 ms: a REVOKE stops hits
//! for the revoked role, ALTER TABLE ADD COLUMN never serves the old shape after the poll, and
//! CREATE OR REPLACE FUNCTION (to volatile, or with a new body) is seen, and so are changes to
//! the objects results show or are checked through (issue 15 item 6: enum labels, domain
//! constraints, and a server configuration reload). Before the poll an old cached answer is allowed; after the first new answer,
//! never again. Waits poll with a deadline; the measured latency is printed.

mod common;
#[path = "support/cache_probe.rs"]
mod probe;

use std::time::{Duration, Instant};

use common::SUPERUSER;
use common::compare::SimpleMsg;
use probe::{CacheStack, POLL_BOUND, column, config, simple, simple_err, table, until_new_answer};
use tokio_postgres::error::SqlState;

const SETUP: &str = "
CREATE TABLE pt(id int PRIMARY KEY, v text NOT NULL);
INSERT INTO pt VALUES (1, 'x'), (2, 'y');
CREATE TABLE pt2(id int PRIMARY KEY, v text NOT NULL);
INSERT INTO pt2 VALUES (1, 'x'), (2, 'y');
CREATE ROLE reader2 LOGIN;
GRANT SELECT ON pt TO reader2;
CREATE FUNCTION twice(i int) RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT i * 2';
CREATE FUNCTION bump(i int) RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT i + 10';
CREATE TYPE mood AS ENUM ('sad', 'ok');
CREATE TABLE pe(id int PRIMARY KEY, m mood NOT NULL);
INSERT INTO pe VALUES (1, 'sad'), (2, 'ok');
CREATE DOMAIN nonneg AS int CONSTRAINT nonneg_check CHECK (VALUE >= 0);
CREATE TABLE pb(id int PRIMARY KEY, b bytea NOT NULL);
INSERT INTO pb VALUES (1, 'A');
";

async fn stack() -> CacheStack {
    CacheStack::start(SETUP, &config("", "")).await
}

fn pt_rows() -> Vec<SimpleMsg> {
    table(&["id", "v"], &[&["1", "x"], &["2", "y"]])
}

#[tokio::test]
async fn revoke_done_directly_stops_hits_for_the_revoked_role() {
    let s = stack().await;
    let (r, su) = (s.session("reader2").await, s.session(SUPERUSER).await);
    let q = s.probe.q("SELECT id, v FROM pt ORDER BY id", None).await;
    s.probe.assert_upstream(&r, &q, &pt_rows()).await;
    s.probe.assert_hit(&r, &q, &pt_rows()).await;
    s.probe.assert_upstream(&su, &q, &pt_rows()).await;
    s.probe.assert_hit(&su, &q, &pt_rows()).await;

    s.direct_sql("REVOKE SELECT ON pt FROM reader2");
    let started = Instant::now();
    loop {
        match r.simple_query(&q.sql).await {
            Ok(msgs) => {
                // Only allowed before the poll: the entry cached while the grant held.
                assert_eq!(common::compare::simple_msgs(&msgs), pt_rows());
                assert!(
                    started.elapsed() < POLL_BOUND,
                    "revoked role still served {POLL_BOUND:?} after REVOKE"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => {
                assert_eq!(
                    common::db_error(&e).code(),
                    &SqlState::INSUFFICIENT_PRIVILEGE
                );
                break;
            }
        }
    }
    eprintln!("REVOKE seen after {:?}", started.elapsed());
    // From then on, never the cached rows: not in this session, not in a new one.
    for _ in 0..10 {
        assert_eq!(
            simple_err(&r, &q.sql).await,
            SqlState::INSUFFICIENT_PRIVILEGE
        );
    }
    let r2 = s.session("reader2").await;
    assert_eq!(
        simple_err(&r2, &q.sql).await,
        SqlState::INSUFFICIENT_PRIVILEGE
    );
    // The superuser still reads the table (and it is cacheable again).
    assert_eq!(simple(&su, &q.sql).await, pt_rows());
    s.probe
        .eventually_hit(&su, &q, &pt_rows(), probe::REESTABLISH_BOUND)
        .await;
    // GRANT back, directly: the role reads again.
    s.direct_sql("GRANT SELECT ON pt TO reader2");
    assert_eq!(simple(&r, &q.sql).await, pt_rows());
}

#[tokio::test]
async fn add_column_done_directly_never_serves_the_old_shape_after_the_poll() {
    let s = stack().await;
    let (c, other) = (s.session(SUPERUSER).await, s.session(SUPERUSER).await);
    let sql = "SELECT * FROM pt2 ORDER BY id";
    let q_old = s.probe.q(sql, None).await;
    let old = pt_rows();
    s.probe.assert_upstream(&c, &q_old, &old).await;
    s.probe.assert_hit(&c, &q_old, &old).await;
    s.probe.assert_hit(&other, &q_old, &old).await;

    s.direct_sql("ALTER TABLE pt2 ADD COLUMN extra int NOT NULL DEFAULT 7");
    let new = table(&["id", "v", "extra"], &[&["1", "x", "7"], &["2", "y", "7"]]);
    let took = until_new_answer(&c, sql, &old, &new, POLL_BOUND).await;
    eprintln!("ADD COLUMN seen after {took:?}");
    for _ in 0..10 {
        assert_eq!(simple(&c, sql).await, new);
        assert_eq!(simple(&other, sql).await, new);
    }
    let fresh = s.session(SUPERUSER).await;
    assert_eq!(simple(&fresh, sql).await, new);
    // The new shape is cached in its turn (its query id changed with the column list).
    let q_new = s.probe.q(sql, None).await;
    s.probe
        .eventually_hit(&c, &q_new, &new, probe::REESTABLISH_BOUND)
        .await;

    // DROP COLUMN, directly: back to two columns, never three again.
    s.direct_sql("ALTER TABLE pt2 DROP COLUMN extra");
    let took = until_new_answer(&c, sql, &new, &old, POLL_BOUND).await;
    eprintln!("DROP COLUMN seen after {took:?}");
    for _ in 0..5 {
        assert_eq!(simple(&other, sql).await, old);
    }
}

#[tokio::test]
async fn create_or_replace_making_a_function_volatile_stops_hits() {
    let s = stack().await;
    let c = s.session(SUPERUSER).await;
    let q = s
        .probe
        .q("SELECT id, twice(id) AS d FROM pt ORDER BY id", None)
        .await;
    let old = table(&["id", "d"], &[&["1", "2"], &["2", "4"]]);
    s.probe.assert_upstream(&c, &q, &old).await;
    s.probe.assert_hit(&c, &q, &old).await;

    s.direct_sql(
        "CREATE OR REPLACE FUNCTION twice(i int) RETURNS int VOLATILE LANGUAGE sql \
         AS 'SELECT i * 3'",
    );
    let new = table(&["id", "d"], &[&["1", "3"], &["2", "6"]]);
    let took = until_new_answer(&c, &q.sql, &old, &new, POLL_BOUND).await;
    eprintln!("CREATE OR REPLACE (volatile) seen after {took:?}");
    // Volatile now: every run reaches Postgres.
    for _ in 0..5 {
        s.probe.assert_upstream(&c, &q, &new).await;
    }
    // Immutable again: cached again.
    s.direct_sql(
        "CREATE OR REPLACE FUNCTION twice(i int) RETURNS int IMMUTABLE LANGUAGE sql \
         AS 'SELECT i * 3'",
    );
    s.probe
        .eventually_hit(&c, &q, &new, POLL_BOUND + probe::REESTABLISH_BOUND)
        .await;
}

#[tokio::test]
async fn create_or_replace_with_a_new_body_is_picked_up() {
    let s = stack().await;
    let (c, other) = (s.session(SUPERUSER).await, s.session(SUPERUSER).await);
    let q = s
        .probe
        .q("SELECT bump(id) AS b FROM pt ORDER BY id", None)
        .await;
    let old = column("b", &["11", "12"]);
    s.probe.assert_upstream(&c, &q, &old).await;
    s.probe.assert_hit(&c, &q, &old).await;

    // Still immutable, different result: the definition is part of what the poller watches.
    s.direct_sql(
        "CREATE OR REPLACE FUNCTION bump(i int) RETURNS int IMMUTABLE LANGUAGE sql \
         AS 'SELECT i + 20'",
    );
    let new = column("b", &["21", "22"]);
    let took = until_new_answer(&c, &q.sql, &old, &new, POLL_BOUND).await;
    eprintln!("CREATE OR REPLACE (body) seen after {took:?}");
    for _ in 0..5 {
        assert_eq!(simple(&other, &q.sql).await, new);
    }
    s.probe
        .eventually_hit(&c, &q, &new, probe::REESTABLISH_BOUND)
        .await;
}

/// Runs `q` until Postgres executes it (the cached entry is no longer served); each run must
/// return `want`. Panics after `bound`; returns the wait.
async fn until_upstream(
    s: &CacheStack,
    c: &tokio_postgres::Client,
    q: &probe::Q,
    want: &[SimpleMsg],
    bound: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let (got, calls) = s.probe.run(c, q).await;
        assert_eq!(got, want, "rows of {:?}", q.sql);
        if calls > 0 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < bound,
            "{:?} still served from cache {bound:?} after the change",
            q.sql
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn enum_label_renamed_or_added_directly_is_picked_up_within_the_poll_bound() {
    let s = stack().await;
    let (c, other) = (s.session(SUPERUSER).await, s.session(SUPERUSER).await);
    let q = s.probe.q("SELECT id, m FROM pe ORDER BY id", None).await;
    let old = table(&["id", "m"], &[&["1", "sad"], &["2", "ok"]]);
    s.probe.assert_upstream(&c, &q, &old).await;
    s.probe.assert_hit(&c, &q, &old).await;

    // pg_enum changes; no relation's rows or definition do.
    s.direct_sql("ALTER TYPE mood RENAME VALUE 'sad' TO 'blue'");
    let new = table(&["id", "m"], &[&["1", "blue"], &["2", "ok"]]);
    let took = until_new_answer(&c, &q.sql, &old, &new, POLL_BOUND).await;
    eprintln!("ALTER TYPE ... RENAME VALUE seen after {took:?}");
    for _ in 0..5 {
        assert_eq!(simple(&other, &q.sql).await, new);
    }
    s.probe
        .eventually_hit(&c, &q, &new, probe::REESTABLISH_BOUND)
        .await;

    // ADD VALUE changes no existing row, but what the type accepts and how it sorts: the
    // cached entry must stop being served all the same.
    s.direct_sql("ALTER TYPE mood ADD VALUE 'meh' BEFORE 'blue'");
    let took = until_upstream(&s, &c, &q, &new, POLL_BOUND).await;
    eprintln!("ALTER TYPE ... ADD VALUE seen after {took:?}");
}

#[tokio::test]
async fn domain_constraint_changed_directly_is_picked_up_within_the_poll_bound() {
    let s = stack().await;
    let c = s.session(SUPERUSER).await;
    let q = s
        .probe
        .q("SELECT id, (id - 1)::nonneg AS d FROM pt ORDER BY id", None)
        .await;
    let old = table(&["id", "d"], &[&["1", "0"], &["2", "1"]]);
    s.probe.assert_upstream(&c, &q, &old).await;
    s.probe.assert_hit(&c, &q, &old).await;

    // pg_constraint of the domain only: the same rows are no longer valid values.
    s.direct_sql(
        "ALTER DOMAIN nonneg DROP CONSTRAINT nonneg_check; \
         ALTER DOMAIN nonneg ADD CONSTRAINT nonneg_check CHECK (VALUE > 0) NOT VALID",
    );
    let started = Instant::now();
    loop {
        match c.simple_query(&q.sql).await {
            Ok(msgs) => {
                assert_eq!(common::compare::simple_msgs(&msgs), old);
                assert!(
                    started.elapsed() < POLL_BOUND,
                    "the old domain constraint still applied {POLL_BOUND:?} after the change"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => {
                assert_eq!(common::db_error(&e).code(), &SqlState::CHECK_VIOLATION);
                break;
            }
        }
    }
    eprintln!(
        "ALTER DOMAIN ... ADD CONSTRAINT seen after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn bytea_output_reloaded_server_wide_reaches_existing_sessions_within_the_poll_bound() {
    let s = stack().await;
    // Two sessions that never SET bytea_output, and one that SETs the value the server has now.
    let (c, other) = (s.session(SUPERUSER).await, s.session(SUPERUSER).await);
    let hex_session = s.session(SUPERUSER).await;
    simple(&hex_session, "SET bytea_output = 'hex'").await;
    let q = s.probe.q("SELECT id, b FROM pb ORDER BY id", None).await;
    let hex = table(&["id", "b"], &[&["1", "\\x41"]]);
    let escape = table(&["id", "b"], &[&["1", "A"]]);
    s.probe.assert_upstream(&c, &q, &hex).await;
    s.probe.assert_hit(&c, &q, &hex).await;
    s.probe.assert_hit(&other, &q, &hex).await;
    // The SET session has its own fingerprint: its first run is its own.
    s.probe.assert_upstream(&hex_session, &q, &hex).await;

    let probes_before = s.metric("pgmemo_session_probes_total");
    // Not a ParameterStatus setting: no session is told; only the reload shows it.
    s.direct_sql("ALTER SYSTEM SET bytea_output = 'escape'; SELECT pg_reload_conf();");
    // pg_reload_conf() only signals the postmaster, which re-reads the file and then signals
    // every backend: the direct session sees the new value a moment later, not at once.
    until_new_answer(&s.probe.client, &q.sql, &hex, &escape, POLL_BOUND).await;
    let direct = simple(&s.probe.client, &q.sql).await;
    assert_eq!(direct, escape, "PostgreSQL itself after the reload");
    let took = until_new_answer(&c, &q.sql, &hex, &escape, POLL_BOUND).await;
    eprintln!("bytea_output reload seen after {took:?}");
    for _ in 0..5 {
        assert_eq!(simple(&c, &q.sql).await, direct);
        assert_eq!(simple(&other, &q.sql).await, direct);
        // The session that SET it keeps its own value, and never gets the reloaded bytes.
        assert_eq!(simple(&hex_session, &q.sql).await, hex);
    }
    // Cached again under the sessions' new settings, still the server's bytes.
    s.probe
        .eventually_hit(&c, &q, &escape, probe::REESTABLISH_BOUND)
        .await;
    s.probe.assert_hit(&other, &q, &escape).await;
    assert_eq!(simple(&hex_session, &q.sql).await, hex);
    // Every session was probed again (an epoch bump alone would leave their fingerprints
    // saying `hex`, and what they store next would be keyed as if it were).
    let probes = s.metric("pgmemo_session_probes_total") - probes_before;
    assert!(probes >= 3.0, "{probes} settings probes after the reload");
}
