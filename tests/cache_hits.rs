//! Result cache, simple protocol (issue 3): what a client sees through pgmemo when a read is
//! repeated. Each test asserts the rows the client gets AND whether Postgres executed the
//! statement (`pg_stat_statements` calls; a hit never reaches Postgres): repeated reads hit
//! with identical results, writes through pgmemo make the next read fresh, reads in a
//! transaction block are neither served nor stored, key normalisation, the `nocache` hint,
//! the session opt-out, and what is never stored (oversized results, errors, notices).

mod common;
#[path = "support/cache_probe.rs"]
mod probe;

use std::time::Duration;

use common::SUPERUSER;
use common::compare::SimpleMsg;
use probe::{CacheStack, DB, column, config, simple, simple_err, table};
use tokio_postgres::error::SqlState;

/// Results over this size are relayed but not stored.
const MAX_ENTRY: &str = "max_entry_size = \"4KiB\"";

const SETUP: &str = "
CREATE TABLE kv(id int PRIMARY KEY, v text NOT NULL);
INSERT INTO kv VALUES (1, 'one'), (2, 'two'), (3, 'three');
CREATE TABLE div(x int NOT NULL);
INSERT INTO div VALUES (0);
CREATE TABLE div2(x int NOT NULL);
INSERT INTO div2 VALUES (1), (0);
CREATE FUNCTION noisy(i int) RETURNS int IMMUTABLE LANGUAGE plpgsql
    AS $$ BEGIN RAISE NOTICE 'noisy %', i; RETURN i; END $$;
CREATE FUNCTION quiet(i int) RETURNS int IMMUTABLE LANGUAGE plpgsql
    AS $$ BEGIN RETURN i; END $$;
";

async fn stack() -> CacheStack {
    CacheStack::start(SETUP, &config(MAX_ENTRY, "")).await
}

fn kv_rows() -> Vec<SimpleMsg> {
    table(
        &["id", "v"],
        &[&["1", "one"], &["2", "two"], &["3", "three"]],
    )
}

#[tokio::test]
async fn repeated_select_is_answered_from_cache_with_identical_rows() {
    let s = stack().await;
    let c = s.session(SUPERUSER).await;
    let q = s.probe.q("SELECT id, v FROM kv ORDER BY id", None).await;
    let want = kv_rows();
    let (hits0, misses0) = (
        s.metric("pgmemo_cache_hits_total"),
        s.metric("pgmemo_cache_misses_total"),
    );

    // First run: a miss, executed by Postgres once.
    s.probe.assert_upstream(&c, &q, &want).await;
    // Twenty more: rows, column names and row count identical, Postgres never asked again.
    let before = s.probe.calls(&q).await;
    for i in 0..20 {
        assert_eq!(simple(&c, &q.sql).await, want, "repeat {i}");
    }
    assert_eq!(
        s.probe.calls(&q).await - before,
        0,
        "repeats reached Postgres"
    );

    let (hits, misses) = (
        s.metric("pgmemo_cache_hits_total") - hits0,
        s.metric("pgmemo_cache_misses_total") - misses0,
    );
    assert_eq!(hits, 20.0, "pgmemo_cache_hits_total delta");
    assert!(misses >= 1.0, "pgmemo_cache_misses_total delta {misses}");

    // Another session with the same database, role and settings shares the entry.
    let other = s.session(SUPERUSER).await;
    s.probe.assert_hit(&other, &q, &want).await;
}

#[tokio::test]
async fn writes_through_pgmemo_make_the_next_read_fresh() {
    let s = stack().await;
    let (c1, c2) = (s.session(SUPERUSER).await, s.session(SUPERUSER).await);
    let q = s.probe.q("SELECT v FROM kv WHERE id = 1", None).await;
    let v = |value: &str| column("v", &[value]);

    s.probe.assert_upstream(&c1, &q, &v("one")).await;
    s.probe.assert_hit(&c1, &q, &v("one")).await;

    // Autocommit UPDATE.
    simple(&c1, "UPDATE kv SET v = 'uno' WHERE id = 1").await;
    s.probe.assert_upstream(&c1, &q, &v("uno")).await;
    s.probe.assert_hit(&c1, &q, &v("uno")).await;
    s.probe.assert_hit(&c2, &q, &v("uno")).await;

    // UPDATE inside BEGIN .. COMMIT: others see the old value until the commit, the new one
    // right after it.
    simple(&c1, "BEGIN").await;
    simple(&c1, "UPDATE kv SET v = 'eins' WHERE id = 1").await;
    assert_eq!(
        simple(&c2, &q.sql).await,
        v("uno"),
        "uncommitted write seen"
    );
    simple(&c1, "COMMIT").await;
    s.probe.assert_upstream(&c2, &q, &v("eins")).await;
    s.probe.assert_hit(&c1, &q, &v("eins")).await;

    // A write by a second client invalidates for the first.
    simple(&c2, "UPDATE kv SET v = 'ichi' WHERE id = 1").await;
    s.probe.assert_upstream(&c1, &q, &v("ichi")).await;

    // A rolled-back write changes nothing.
    simple(&c2, "BEGIN").await;
    simple(&c2, "UPDATE kv SET v = 'nope' WHERE id = 1").await;
    simple(&c2, "ROLLBACK").await;
    assert_eq!(simple(&c1, &q.sql).await, v("ichi"));

    // A write inside a multi-statement Query.
    simple(&c2, "UPDATE kv SET v = 'un' WHERE id = 1; SELECT 1").await;
    s.probe.assert_upstream(&c1, &q, &v("un")).await;

    // INSERT and DELETE change an aggregate over the table.
    let count = s.probe.q("SELECT count(*) AS n FROM kv", None).await;
    s.probe
        .assert_upstream(&c1, &count, &column("n", &["3"]))
        .await;
    s.probe.assert_hit(&c1, &count, &column("n", &["3"])).await;
    simple(&c2, "INSERT INTO kv VALUES (4, 'four')").await;
    s.probe
        .assert_upstream(&c1, &count, &column("n", &["4"]))
        .await;
    simple(&c2, "DELETE FROM kv WHERE id >= 3").await;
    s.probe
        .assert_upstream(&c1, &count, &column("n", &["2"]))
        .await;
    s.probe.assert_hit(&c2, &count, &column("n", &["2"])).await;
}

#[tokio::test]
async fn reads_in_a_transaction_block_are_neither_served_nor_stored() {
    let s = stack().await;
    let c = s.session(SUPERUSER).await;
    let q = s.probe.q("SELECT count(*) AS n FROM kv", None).await;
    let three = column("n", &["3"]);

    // Inside a block: every read reaches Postgres.
    simple(&c, "BEGIN").await;
    for _ in 0..3 {
        s.probe.assert_upstream(&c, &q, &three).await;
    }
    simple(&c, "COMMIT").await;
    // Nothing was stored by the block: the first read outside is a miss, then hits.
    s.probe.assert_upstream(&c, &q, &three).await;
    s.probe.assert_hit(&c, &q, &three).await;

    // With the entry cached, a read inside a block still goes to Postgres, and sees the
    // block's own uncommitted write.
    simple(&c, "BEGIN").await;
    s.probe.assert_upstream(&c, &q, &three).await;
    simple(&c, "INSERT INTO kv VALUES (9, 'nine')").await;
    s.probe.assert_upstream(&c, &q, &column("n", &["4"])).await;
    simple(&c, "ROLLBACK").await;
    // The rolled-back block neither stored its count nor lost the entry's correctness.
    assert_eq!(simple(&c, &q.sql).await, three);
    s.probe.assert_hit(&c, &q, &three).await;

    // A block opened with options is still a block.
    simple(
        &c,
        "START TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY",
    )
    .await;
    s.probe.assert_upstream(&c, &q, &three).await;
    simple(&c, "COMMIT").await;
}

#[tokio::test]
async fn comment_and_whitespace_variants_share_one_entry() {
    let s = stack().await;
    let c = s.session(SUPERUSER).await;
    let base = s
        .probe
        .q("SELECT id FROM kv WHERE id < 3 ORDER BY id", None)
        .await;
    let want = column("id", &["1", "2"]);
    s.probe.assert_upstream(&c, &base, &want).await;
    for variant in [
        "SELECT   id\nFROM kv\tWHERE id < 3 ORDER BY id -- c",
        "/* x */ SELECT id /* y */ FROM kv WHERE id < 3 ORDER BY id",
        "  \n SELECT id FROM kv WHERE id < 3 ORDER BY id \n ",
    ] {
        let q = s.probe.q(variant, None).await;
        s.probe.assert_hit(&c, &q, &want).await;
    }

    // A different statement is a different entry.
    let desc = s
        .probe
        .q("SELECT id FROM kv WHERE id < 3 ORDER BY id DESC", None)
        .await;
    s.probe
        .assert_upstream(&c, &desc, &column("id", &["2", "1"]))
        .await;

    // Whitespace inside a literal is data, never normalised away.
    let two_spaces = s
        .probe
        .q("SELECT 'a  b' AS s FROM kv WHERE id = 1", None)
        .await;
    s.probe
        .assert_upstream(&c, &two_spaces, &column("s", &["a  b"]))
        .await;
    let one_space = s
        .probe
        .q("SELECT 'a b' AS s FROM kv WHERE id = 1", None)
        .await;
    s.probe
        .assert_upstream(&c, &one_space, &column("s", &["a b"]))
        .await;
    // A comment marker inside a literal is data too.
    let dashes = s
        .probe
        .q("SELECT 'a -- b' AS s FROM kv WHERE id = 1", None)
        .await;
    s.probe
        .assert_upstream(&c, &dashes, &column("s", &["a -- b"]))
        .await;
}

#[tokio::test]
async fn nocache_hint_is_never_served_from_cache() {
    let s = stack().await;
    let c = s.session(SUPERUSER).await;
    let plain = s.probe.q("SELECT v FROM kv WHERE id = 2", None).await;
    let hinted = s
        .probe
        .q("/* pgmemo:nocache */ SELECT v FROM kv WHERE id = 2", None)
        .await;
    let two = column("v", &["two"]);
    s.probe.assert_upstream(&c, &plain, &two).await;
    s.probe.assert_hit(&c, &plain, &two).await;
    // Same statement with the hint: always Postgres, even with the plain form cached.
    for _ in 0..3 {
        s.probe.assert_upstream(&c, &hinted, &two).await;
    }
    // Hinted alone, never cached before: not stored either.
    let hinted_only = s
        .probe
        .q("SELECT v /* pgmemo:nocache */ FROM kv WHERE id >= 3", None)
        .await;
    for _ in 0..3 {
        s.probe
            .assert_upstream(&c, &hinted_only, &column("v", &["three"]))
            .await;
    }
    // The plain form is still served.
    s.probe.assert_hit(&c, &plain, &two).await;
}

#[tokio::test]
async fn session_opt_out_bypasses_the_cache_until_reset() {
    let s = stack().await;
    let (a, b) = (s.session(SUPERUSER).await, s.session(SUPERUSER).await);
    let q = s.probe.q("SELECT v FROM kv WHERE id = 2", None).await;
    let two = column("v", &["two"]);
    s.probe.assert_upstream(&a, &q, &two).await;
    s.probe.assert_hit(&a, &q, &two).await;

    simple(&a, "SET pgmemo.cache = off").await;
    for _ in 0..3 {
        s.probe.assert_upstream(&a, &q, &two).await;
    }
    // Only that session opted out.
    s.probe.assert_hit(&b, &q, &two).await;
    // Nothing is stored while opted out.
    let q2 = s.probe.q("SELECT id FROM kv WHERE v = 'three'", None).await;
    let three = column("id", &["3"]);
    for _ in 0..2 {
        s.probe.assert_upstream(&a, &q2, &three).await;
    }
    s.probe.assert_upstream(&b, &q2, &three).await;
    s.probe.assert_hit(&b, &q2, &three).await;
    s.probe.assert_upstream(&a, &q2, &three).await;

    simple(&a, "RESET pgmemo.cache").await;
    let took = s
        .probe
        .eventually_hit(&a, &q, &two, probe::REESTABLISH_BOUND)
        .await;
    eprintln!("cache used again {took:?} after RESET pgmemo.cache");
    s.probe.assert_hit(&a, &q2, &three).await;
}

#[tokio::test]
async fn large_results_are_relayed_but_not_stored() {
    let s = stack().await;
    let c = s.session(SUPERUSER).await;
    // Three rows of 3, 3 and 5 thousand bytes: far over the 4 KiB entry limit.
    let big = s
        .probe
        .q(
            "SELECT id, repeat(v, 1000) AS big FROM kv ORDER BY id",
            None,
        )
        .await;
    let (one, two, three) = ("one".repeat(1000), "two".repeat(1000), "three".repeat(1000));
    let want = table(
        &["id", "big"],
        &[&["1", &one], &["2", &two], &["3", &three]],
    );
    for _ in 0..3 {
        s.probe.assert_upstream(&c, &big, &want).await;
    }
    // A small result under the same limit is stored.
    let small = s
        .probe
        .q("SELECT id, repeat(v, 2) AS small FROM kv ORDER BY id", None)
        .await;
    let want_small = table(
        &["id", "small"],
        &[&["1", "oneone"], &["2", "twotwo"], &["3", "threethree"]],
    );
    s.probe.assert_upstream(&c, &small, &want_small).await;
    s.probe.assert_hit(&c, &small, &want_small).await;
}

#[tokio::test]
async fn failed_statements_are_not_stored() {
    let s = stack().await;
    let c = s.session(SUPERUSER).await;

    // An error from the first row: the data is fixed directly on Postgres (invisible to
    // pgmemo), so only a stored error could hide the fix.
    let sql = "SELECT 10 / x AS q FROM div";
    for _ in 0..2 {
        assert_eq!(simple_err(&c, sql).await, SqlState::DIVISION_BY_ZERO);
    }
    s.direct_sql("UPDATE div SET x = 5");
    let q = s.probe.q(sql, None).await;
    s.probe.assert_upstream(&c, &q, &column("q", &["2"])).await;
    s.probe.assert_hit(&c, &q, &column("q", &["2"])).await;

    // An error after a row was already relayed: the partial result is not stored either.
    let sql = "SELECT 10 / x AS q FROM div2";
    for _ in 0..2 {
        assert_eq!(simple_err(&c, sql).await, SqlState::DIVISION_BY_ZERO);
    }
    s.direct_sql("UPDATE div2 SET x = 2 WHERE x = 0");
    let got = simple(&c, sql).await;
    let mut values = probe::values(&got, 0);
    values.sort();
    assert_eq!(
        values,
        vec![Some("10".to_string()), Some("5".to_string())],
        "{got:?}"
    );

    // A missing relation: once it exists, the read returns its rows.
    let sql = "SELECT n FROM later ORDER BY n";
    for _ in 0..2 {
        assert_eq!(simple_err(&c, sql).await, SqlState::UNDEFINED_TABLE);
    }
    s.direct_sql("CREATE TABLE later(n int); INSERT INTO later VALUES (7);");
    let q = s.probe.q(sql, None).await;
    s.probe.assert_upstream(&c, &q, &column("n", &["7"])).await;
    // Cached once pgmemo resolves the new name (its memo of the failed lookup may last until
    // the next catalog poll).
    s.probe
        .eventually_hit(&c, &q, &column("n", &["7"]), probe::POLL_BOUND)
        .await;
}

#[tokio::test]
async fn results_that_raise_a_notice_are_relayed_but_not_stored() {
    let s = stack().await;
    let (c, mut messages) = s.proxy.connect_with_messages(SUPERUSER, "", DB).await;
    // Control: the same shape with an immutable function that stays silent is cached.
    let quiet = s
        .probe
        .q("SELECT quiet(id) AS n FROM kv WHERE id = 1", None)
        .await;
    s.probe
        .assert_upstream(&c, &quiet, &column("n", &["1"]))
        .await;
    s.probe.assert_hit(&c, &quiet, &column("n", &["1"])).await;
    assert!(
        messages
            .recv_timeout(Duration::from_millis(200))
            .await
            .is_none(),
        "unexpected asynchronous message"
    );

    let noisy = s
        .probe
        .q("SELECT noisy(id) AS n FROM kv WHERE id = 1", None)
        .await;
    for i in 0..3 {
        s.probe
            .assert_upstream(&c, &noisy, &column("n", &["1"]))
            .await;
        let notice = messages.expect_notice(Duration::from_secs(5)).await;
        assert_eq!(notice.message(), "noisy 1", "run {i}");
    }
}

/// A text of only comments or whitespace (a connection pool's ping) runs nothing: PostgreSQL
/// answers EmptyQueryResponse. It is not an unknown write (that invalidated every cached
/// result: each ping emptied the cache) nor a reply pgmemo cannot place.
#[tokio::test]
async fn a_comment_only_ping_leaves_the_cache_alone() {
    let s = stack().await;
    let c = s.session(SUPERUSER).await;
    let other = s.session(SUPERUSER).await;
    let q = s.probe.q("SELECT id, v FROM kv ORDER BY id", None).await;
    let want = kv_rows();
    s.probe.assert_upstream(&other, &q, &want).await;
    for ping in ["-- ping", ";", "/* ping */", ""] {
        c.batch_execute(ping).await.expect("simple ping");
        s.probe.assert_hit(&other, &q, &want).await;
        s.probe.assert_hit(&c, &q, &want).await;
    }
    let ping = c.prepare("-- ping").await.expect("prepare the ping");
    for _ in 0..2 {
        assert!(c.query(&ping, &[]).await.expect("extended ping").is_empty());
        s.probe.assert_hit(&other, &q, &want).await;
        s.probe.assert_hit(&c, &q, &want).await;
    }
}
