//! Reads calling STABLE user functions, cached under a rule with `allow_stable_functions`
//! (issue 15, item 4): a write through pgmemo to a table such a function reads must make the
//! next read fresh, whether pgmemo derives the table from the function's body (`LANGUAGE sql`
//! text, under the function's own search_path; `BEGIN ATOMIC`) or the operator declares it
//! (`[[functions.reads]]`); a function whose reads are unknown lives at most
//! `functions.undeclared_reads_ttl`; and a function reading what pgmemo cannot version is not
//! cached. Change data capture is off, so only pgmemo's own bookkeeping can invalidate.

mod common;
#[path = "support/cache_probe.rs"]
mod probe;

use std::time::{Duration, Instant};

use common::SUPERUSER;
use common::compare::SimpleMsg;
use probe::{CacheStack, Q, REESTABLISH_BOUND, config, simple, table};
use tokio_postgres::Client;

const SETUP: &str = "
SET check_function_bodies = off;
CREATE TABLE t(id int PRIMARY KEY);
INSERT INTO t VALUES (1);
CREATE TABLE other(id int);
INSERT INTO other VALUES (1);
CREATE SCHEMA s2;
CREATE TABLE s2.other(id int);
INSERT INTO s2.other VALUES (1), (2), (3);
CREATE FUNCTION cnt_other() RETURNS bigint STABLE LANGUAGE sql
    AS 'SELECT count(*) FROM other';
CREATE FUNCTION cnt_s2() RETURNS bigint STABLE LANGUAGE sql SET search_path = s2
    AS 'SELECT count(*) FROM other';
CREATE FUNCTION cnt_atomic() RETURNS bigint STABLE LANGUAGE sql
    BEGIN ATOMIC SELECT count(*) FROM public.other; END;
CREATE FUNCTION cnt_nested() RETURNS bigint STABLE LANGUAGE sql
    AS 'SELECT cnt_other() + 0';
CREATE FUNCTION cnt_pl_declared() RETURNS bigint STABLE LANGUAGE plpgsql
    AS $$ BEGIN RETURN (SELECT count(*) FROM other); END $$;
CREATE FUNCTION cnt_pl() RETURNS bigint STABLE LANGUAGE plpgsql
    AS $$ BEGIN RETURN (SELECT count(*) FROM other); END $$;
CREATE FUNCTION cnt_tmp() RETURNS bigint STABLE LANGUAGE sql
    AS 'SELECT count(*) FROM tmp_rows';
CREATE VIEW v_cnt AS SELECT id, cnt_other() AS n FROM t;
DO $$ BEGIN
  EXECUTE format('CREATE FUNCTION cnt_big() RETURNS bigint STABLE LANGUAGE sql AS %L',
    'SELECT count(*) FROM other /* ' || repeat('x', 17000) || ' */');
END $$;
";

/// The cap under test (`functions.undeclared_reads_ttl`).
const CAP: Duration = Duration::from_secs(1);

fn stack_config() -> String {
    config(
        "",
        "[invalidation]\ncdc = \"off\"\n\n\
         [functions]\nundeclared_reads_ttl = \"1s\"\n\n\
         [[functions.reads]]\nfunction = \"public.cnt_pl_declared\"\ntables = [\"public.other\"]\n\n\
         [[rules]]\ntable = \"public.t\"\nallow_stable_functions = true\n\n\
         [[rules]]\ntable = \"public.v_cnt\"\nallow_stable_functions = true\n",
    )
}

async fn stack() -> CacheStack {
    CacheStack::start(SETUP, &stack_config()).await
}

/// `SELECT id, <call> AS n FROM t`: one row, `n` the function's count.
async fn read_of(s: &CacheStack, call: &str) -> Q {
    s.probe
        .q(&format!("SELECT id, {call} AS n FROM t ORDER BY id"), None)
        .await
}

fn rows(n: i64) -> Vec<SimpleMsg> {
    table(&["id", "n"], &[&["1", &n.to_string()]])
}

/// The reader has the read cached (calling a user function makes pgmemo re-establish the
/// session's settings first, hence "eventually"); a write through pgmemo by another session
/// to a table the function reads; the reader's very next read must see it.
async fn assert_fresh_after_write(s: &CacheStack, q: &Q, before: i64, write: &str, after: i64) {
    let (reader, writer) = (s.session(SUPERUSER).await, s.session(SUPERUSER).await);
    s.probe
        .eventually_hit(&reader, q, &rows(before), REESTABLISH_BOUND)
        .await;
    // Still served from the cache right before the write: the next read is not fresh merely
    // because the session stopped using the cache.
    s.probe.assert_hit(&reader, q, &rows(before)).await;
    simple(&writer, write).await;
    let (got, _) = s.probe.run(&reader, q).await;
    assert_eq!(got, rows(after), "{:?}: stale after {write:?}", q.sql);
    // And the fresh answer is cached again.
    s.probe
        .eventually_hit(&reader, q, &rows(after), REESTABLISH_BOUND)
        .await;
}

#[tokio::test]
async fn sql_function_reads_invalidate_on_writes_through_pgmemo() {
    let s = stack().await;
    let q = read_of(&s, "cnt_other()").await;
    assert_fresh_after_write(&s, &q, 1, "INSERT INTO other VALUES (2)", 2).await;
}

#[tokio::test]
async fn sql_function_reads_resolve_under_its_own_search_path() {
    // cnt_s2 reads s2.other (its SET search_path), not the session's public.other.
    let s = stack().await;
    let q = read_of(&s, "cnt_s2()").await;
    assert_fresh_after_write(&s, &q, 3, "DELETE FROM s2.other WHERE id = 3", 2).await;
}

#[tokio::test]
async fn atomic_and_nested_sql_function_reads_invalidate() {
    let s = stack().await;
    let atomic = read_of(&s, "cnt_atomic()").await;
    assert_fresh_after_write(&s, &atomic, 1, "INSERT INTO other VALUES (2)", 2).await;
    let nested = read_of(&s, "cnt_nested()").await;
    assert_fresh_after_write(&s, &nested, 2, "INSERT INTO other VALUES (3)", 3).await;
}

#[tokio::test]
async fn reads_of_a_function_called_inside_a_view_invalidate() {
    let s = stack().await;
    let q = s.probe.q("SELECT id, n FROM v_cnt ORDER BY id", None).await;
    assert_fresh_after_write(&s, &q, 1, "INSERT INTO other VALUES (2)", 2).await;
}

#[tokio::test]
async fn declared_function_reads_invalidate_on_writes_through_pgmemo() {
    let s = stack().await;
    let q = read_of(&s, "cnt_pl_declared()").await;
    assert_fresh_after_write(&s, &q, 1, "INSERT INTO other VALUES (2)", 2).await;
}

#[tokio::test]
async fn undeclared_function_reads_expire_within_the_cap() {
    let s = stack().await;
    let q = read_of(&s, "cnt_pl()").await;
    let (reader, writer) = (s.session(SUPERUSER).await, s.session(SUPERUSER).await);
    // Cached (the cap is not a bypass) ...
    s.probe
        .eventually_hit(&reader, &q, &rows(1), REESTABLISH_BOUND)
        .await;
    simple(&writer, "INSERT INTO other VALUES (2)").await;
    let written = Instant::now();
    // ... but not for the rule's 60 s: fresh within the cap (plus slack for two busy cores).
    loop {
        let (got, _) = s.probe.run(&reader, &q).await;
        if got == rows(2) {
            break;
        }
        assert_eq!(got, rows(1), "neither the old nor the new answer");
        assert!(
            written.elapsed() < CAP + Duration::from_secs(2),
            "{:?} still stale {:?} after the write (cap {CAP:?})",
            q.sql,
            written.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "undeclared reads: fresh {:?} after the write",
        written.elapsed()
    );
}

/// Runs `sql` on `c` until pgmemo uses the cache for the session again, then `runs` more
/// times; PostgreSQL must execute each of those (counted by text: the probe cannot EXPLAIN a
/// read of another session's temporary table).
async fn assert_not_cached(s: &CacheStack, c: &Client, sql: &str, fragment: &str, runs: i64) {
    // Long enough for the session's settings to be re-established after the calls.
    tokio::time::sleep(REESTABLISH_BOUND / 5).await;
    let before = s.probe.calls_matching(fragment).await;
    for _ in 0..runs {
        simple(c, sql).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        s.probe.calls_matching(fragment).await - before,
        runs,
        "{sql:?} was served from the cache"
    );
}

#[tokio::test]
async fn function_reading_a_temporary_table_is_not_cached() {
    // Writes to a session's temporary table invalidate nothing (no other session could read
    // it): a cached result of a function reading it would stay stale for the whole TTL.
    let s = stack().await;
    let c = s.session(SUPERUSER).await;
    // The control: a read of a function whose reads are known is cached in this session.
    let control = read_of(&s, "cnt_other()").await;
    s.probe
        .eventually_hit(&c, &control, &rows(1), REESTABLISH_BOUND)
        .await;
    simple(
        &c,
        "CREATE TEMP TABLE tmp_rows(id int); INSERT INTO tmp_rows VALUES (1)",
    )
    .await;
    // `public.t`: qualified, or the session's temporary schema could shadow it (which alone
    // makes pgmemo bypass the read).
    let sql = "SELECT id, cnt_tmp() AS n_tmp_rows FROM public.t ORDER BY id";
    assert_not_cached(&s, &c, sql, "n_tmp_rows", 5).await;
    simple(&c, "INSERT INTO tmp_rows VALUES (2)").await;
    assert_eq!(
        simple(&c, sql).await,
        table(&["id", "n_tmp_rows"], &[&["1", "2"]])
    );
}

#[tokio::test]
async fn a_zero_cap_leaves_undeclared_reads_uncached() {
    let config = stack_config().replace(
        "undeclared_reads_ttl = \"1s\"",
        "undeclared_reads_ttl = \"0s\"",
    );
    let s = CacheStack::start(SETUP, &config).await;
    let c = s.session(SUPERUSER).await;
    // Declared reads are still cached under the zero cap ...
    let declared = read_of(&s, "cnt_pl_declared()").await;
    s.probe
        .eventually_hit(&c, &declared, &rows(1), REESTABLISH_BOUND)
        .await;
    // ... undeclared ones never are, nor SQL bodies too long to analyse (over 16 KiB).
    let sql = "SELECT id, cnt_pl() AS n_pl_zero FROM t ORDER BY id";
    assert_not_cached(&s, &c, sql, "n_pl_zero", 5).await;
    let big = "SELECT id, cnt_big() AS n_big_zero FROM t ORDER BY id";
    assert_not_cached(&s, &c, big, "n_big_zero", 3).await;
    assert!(
        s.proxy
            .admin_get("/metrics")
            .contains("reason=\"undeclared_function_reads\""),
        "the bypass is counted under its reason"
    );
}
