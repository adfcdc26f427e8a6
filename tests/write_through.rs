//! Write-through (issue 19), end to end: after a committed write through pgmemo to a
//! `write = "through"` table, the results it invalidated that sessions with the writer's
//! fingerprint had stored are re-run on the writer's connection before its acknowledgement,
//! so the next read of each is a hit with the new rows — from the writer and from another
//! session. What cannot be re-run exactly (another fingerprint, an error) stays invalid,
//! never stale. Whether PostgreSQL ran a statement is read from `pg_stat_statements`.

mod common;
#[path = "support/cache_probe.rs"]
mod probe;

use common::SUPERUSER;
use probe::{CacheStack, column, config, simple};

const SETUP: &str = "
CREATE TABLE acct(id int PRIMARY KEY, v int NOT NULL);
INSERT INTO acct SELECT g, 5 FROM generate_series(1, 5) g;
CREATE TABLE plain(id int PRIMARY KEY, v int NOT NULL);
INSERT INTO plain VALUES (1, 5);
";

const RULES: &str = "[[rules]]\ntable = \"acct\"\nwrite = \"through\"\n";

async fn stack() -> CacheStack {
    CacheStack::start(SETUP, &config("", RULES)).await
}

/// A stack whose `slow(x)` returns `x` after `seconds` (declared immutable, which pgmemo
/// trusts), with `refresh` settings (a `[refresh]` table body) added to the rules.
async fn slow_stack(seconds: &str, refresh: &str) -> CacheStack {
    let setup = format!(
        "{SETUP}CREATE FUNCTION slow(x int) RETURNS int IMMUTABLE LANGUAGE plpgsql \
         AS $$ BEGIN PERFORM pg_sleep({seconds}); RETURN x; END $$;"
    );
    let rules = format!("{RULES}\n[refresh]\n{refresh}\n");
    CacheStack::start(&setup, &config("", &rules)).await
}

/// `client`'s next statement gets its own reply (row 5, never read before, from PostgreSQL).
async fn assert_in_sync(s: &CacheStack, client: &tokio_postgres::Client) {
    let q = s.probe.q("SELECT v FROM acct WHERE id = 5", None).await;
    s.probe.assert_upstream(client, &q, &one("5")).await;
}

fn one(v: &str) -> Vec<common::compare::SimpleMsg> {
    column("v", &[v])
}

fn through(s: &CacheStack, result: &str) -> f64 {
    let label = format!("result=\"{result}\"");
    s.proxy
        .admin_get("/metrics")
        .lines()
        .filter(|l| l.starts_with("pgmemo_write_through_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn counter(s: &CacheStack, name: &str) -> f64 {
    s.proxy
        .admin_get("/metrics")
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_write_refreshes_what_it_invalidated_before_its_acknowledgement() {
    let s = stack().await;
    let (reader, writer) = (s.session(SUPERUSER).await, s.session(SUPERUSER).await);
    let row = s.probe.q("SELECT v FROM acct WHERE id = 1", None).await;
    // Another shape, so PostgreSQL counts its executions apart from `row`'s.
    let other = s
        .probe
        .q("SELECT v + 0 AS v FROM acct WHERE id = 2", None)
        .await;
    let sum = s.probe.q("SELECT sum(v)::int AS v FROM acct", None).await;
    s.probe.assert_upstream(&reader, &row, &one("5")).await;
    s.probe.assert_upstream(&reader, &other, &one("5")).await;
    s.probe.assert_upstream(&reader, &sum, &one("25")).await;
    let stored = through(&s, "stored");

    let (row_runs, sum_runs, other_runs) = (
        s.probe.calls(&row).await,
        s.probe.calls(&sum).await,
        s.probe.calls(&other).await,
    );
    let misses = counter(&s, "pgmemo_cache_misses_total");
    simple(&writer, "UPDATE acct SET v = v + 1 WHERE id = 1").await;
    assert_eq!(
        counter(&s, "pgmemo_cache_misses_total"),
        misses,
        "re-runs are not client lookups"
    );
    // The re-runs happened before the UPDATE was acknowledged: when it returned, both ran
    // once more; the other row's result was not touched (row precision).
    assert_eq!(s.probe.calls(&row).await - row_runs, 1);
    assert_eq!(s.probe.calls(&sum).await - sum_runs, 1);
    assert_eq!(s.probe.calls(&other).await - other_runs, 0);
    assert_eq!(through(&s, "stored") - stored, 2.0);

    // Fresh hits, from the other session and from the writer.
    s.probe.assert_hit(&reader, &row, &one("6")).await;
    s.probe.assert_hit(&reader, &sum, &one("26")).await;
    s.probe.assert_hit(&writer, &row, &one("6")).await;
    s.probe.assert_hit(&reader, &other, &one("5")).await;
}

#[tokio::test]
async fn prepared_reads_are_refreshed_with_their_own_parameters() {
    let s = stack().await;
    let (reader, writer) = (s.session(SUPERUSER).await, s.session(SUPERUSER).await);
    // Only the prepared form runs in this test: its executions, by its recorded text.
    let runs = async || s.probe.calls_matching("FROM acct WHERE id = $1").await;
    let stmt = reader
        .prepare("SELECT v FROM acct WHERE id = $1")
        .await
        .expect("prepare");
    let read = async || -> i32 {
        let rows = reader.query(&stmt, &[&3i32]).await.expect("query");
        rows.first().expect("one row").get(0)
    };
    assert_eq!(read().await, 5);
    let before = runs().await;
    assert_eq!(before, 1);
    assert_eq!(read().await, 5);
    assert_eq!(runs().await, before, "the second execution is a hit");

    simple(&writer, "UPDATE acct SET v = 7 WHERE id = 3").await;
    let refreshed = runs().await;
    assert_eq!(
        refreshed - before,
        1,
        "re-run once, before the acknowledgement"
    );
    assert_eq!(read().await, 7);
    assert_eq!(runs().await, refreshed, "a hit with the new row");
}

#[tokio::test]
async fn a_table_without_the_rule_is_only_invalidated() {
    let s = stack().await;
    let c = s.session(SUPERUSER).await;
    let q = s.probe.q("SELECT v FROM plain WHERE id = 1", None).await;
    s.probe.assert_upstream(&c, &q, &one("5")).await;
    let stored = through(&s, "stored");
    simple(&c, "UPDATE plain SET v = 6 WHERE id = 1").await;
    s.probe.assert_upstream(&c, &q, &one("6")).await;
    assert_eq!(through(&s, "stored"), stored);
}

#[tokio::test]
async fn a_refresh_that_fails_leaves_the_result_invalid_and_the_write_acknowledged() {
    let s = stack().await;
    let (reader, writer) = (s.session(SUPERUSER).await, s.session(SUPERUSER).await);
    let q = s
        .probe
        .q("SELECT 10 / v AS v FROM acct WHERE id = 4", None)
        .await;
    s.probe.assert_upstream(&reader, &q, &one("2")).await;
    s.probe.assert_hit(&reader, &q, &one("2")).await;
    let failed = through(&s, "failed");

    // The re-run divides by zero: the writer still gets its UPDATE's success.
    simple(&writer, "UPDATE acct SET v = 0 WHERE id = 4").await;
    assert_eq!(through(&s, "failed") - failed, 1.0);
    // Not the old 2 from the cache: the reader gets PostgreSQL's error.
    let err = reader
        .simple_query(&q.sql)
        .await
        .expect_err("10 / 0 must fail, not be served from the cache");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::DIVISION_BY_ZERO)
    );
    // The writer's session is usable and in sync afterwards.
    assert_in_sync(&s, &writer).await;
}

#[tokio::test]
async fn results_of_another_fingerprint_are_not_re_run_on_the_writers_connection() {
    let s = stack().await;
    let writer = s.session(SUPERUSER).await;
    // Another setting in the fingerprint: this session's results cannot be re-run on the
    // writer's connection.
    let other = s
        .session_with_options(SUPERUSER, "-c extra_float_digits=2")
        .await;
    let q = s.probe.q("SELECT v FROM acct WHERE id = 5", None).await;
    s.probe.assert_upstream(&other, &q, &one("5")).await;
    s.probe.assert_hit(&other, &q, &one("5")).await;
    let skipped = through(&s, "other_session");
    let background = counter(&s, "pgmemo_refresh_total{");
    simple(&writer, "UPDATE acct SET v = 8 WHERE id = 5").await;
    // Not re-run on the writer's connection: handed to the background refresher, which
    // recomputes it (or not) under the reader's own login and settings, after the
    // acknowledgement.
    assert_eq!(through(&s, "other_session") - skipped, 1.0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while counter(&s, "pgmemo_refresh_total{") == background {
        assert!(
            std::time::Instant::now() < deadline,
            "no background verdict"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Never the old 5, whichever way it went.
    assert_eq!(simple(&other, &q.sql).await, one("8"));
}

#[tokio::test]
async fn a_write_inside_a_transaction_refreshes_at_commit_not_before() {
    let s = stack().await;
    let (reader, writer) = (s.session(SUPERUSER).await, s.session(SUPERUSER).await);
    let q = s.probe.q("SELECT v FROM acct WHERE id = 2", None).await;
    s.probe.assert_upstream(&reader, &q, &one("5")).await;
    simple(&writer, "BEGIN").await;
    simple(&writer, "UPDATE acct SET v = 9 WHERE id = 2").await;
    // Not committed: the cached 5 is still right for everyone else.
    s.probe.assert_hit(&reader, &q, &one("5")).await;
    let before = s.probe.calls(&q).await;
    simple(&writer, "COMMIT").await;
    assert_eq!(s.probe.calls(&q).await - before, 1);
    s.probe.assert_hit(&reader, &q, &one("9")).await;
}

/// The writer's statements named by write-through (each query text differs, so none is a
/// hit whatever the planner thinks of the view).
async fn through_statements(writer: &tokio_postgres::Client, n: u32) -> Vec<String> {
    let sql = format!(
        "SELECT name FROM pg_prepared_statements WHERE name LIKE 'pgmemo_through_%' \
         AND {n} = {n} ORDER BY name"
    );
    writer
        .query(&sql, &[])
        .await
        .expect("pg_prepared_statements")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn re_runs_reuse_one_prepared_statement_and_survive_deallocate_all() {
    let s = stack().await;
    let (reader, writer) = (s.session(SUPERUSER).await, s.session(SUPERUSER).await);
    let q = s.probe.q("SELECT v FROM acct WHERE id = 2", None).await;
    s.probe.assert_upstream(&reader, &q, &one("5")).await;
    let (stored, failed) = (through(&s, "stored"), through(&s, "failed"));

    for (i, v) in [(1, "6"), (2, "7"), (3, "8")] {
        simple(&writer, "UPDATE acct SET v = v + 1 WHERE id = 2").await;
        s.probe.assert_hit(&reader, &q, &one(v)).await;
        assert_eq!(through(&s, "stored") - stored, f64::from(i));
    }
    // Parsed once, kept: three re-runs, one statement.
    let names = through_statements(&writer, 1).await;
    assert_eq!(names.len(), 1, "{names:?}");

    // The client drops every statement: the next re-run prepares its own again, and works.
    simple(&writer, "DEALLOCATE ALL").await;
    assert!(through_statements(&writer, 2).await.is_empty());
    simple(&writer, "UPDATE acct SET v = v + 1 WHERE id = 2").await;
    s.probe.assert_hit(&reader, &q, &one("9")).await;
    assert_eq!(through(&s, "stored") - stored, 4.0);
    assert_eq!(through(&s, "failed") - failed, 0.0);
    let after = through_statements(&writer, 3).await;
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(after, names, "a new statement, not the deallocated one");
}

#[tokio::test]
async fn the_acknowledgement_waits_no_longer_than_the_time_budget_allows() {
    // A budget of 1 ms: the acknowledgement goes at the end of the first re-run, while the
    // second (as slow) still runs; it is still stored, before the writer's next
    // statement, which waits behind it on the connection.
    let s = slow_stack("0.3", "time_budget = \"1ms\"").await;
    let (reader, writer) = (s.session(SUPERUSER).await, s.session(SUPERUSER).await);
    let slow = |n: i32| format!("SELECT slow(v) + {n} AS v FROM acct WHERE id = 3");
    for n in [0, 1] {
        let q = s.probe.q(&slow(n), None).await;
        s.probe
            .assert_upstream(&reader, &q, &one(&(5 + n).to_string()))
            .await;
    }
    let stored = through(&s, "stored");
    simple(&writer, "UPDATE acct SET v = v + 1 WHERE id = 3").await;
    assert_eq!(
        through(&s, "stored") - stored,
        1.0,
        "acknowledged after the first re-run, before the second ended"
    );
    // The writer's next statement runs after the second re-run, which was stored.
    simple(&writer, "SELECT 1").await;
    assert_eq!(through(&s, "stored") - stored, 2.0);
    for n in [0, 1] {
        let q = s.probe.q(&slow(n), None).await;
        s.probe
            .assert_hit(&reader, &q, &one(&(6 + n).to_string()))
            .await;
    }
}

fn pipelined(s: &CacheStack) -> f64 {
    counter(s, "pgmemo_write_through_pipelined_total")
}

#[tokio::test]
async fn autocommit_writes_carry_their_re_runs_in_the_same_round_trip() {
    // Simple and extended protocol: the re-run goes out behind the write, and is stored.
    let s = stack().await;
    let (reader, writer) = (s.session(SUPERUSER).await, s.session(SUPERUSER).await);
    let q = s.probe.q("SELECT v FROM acct WHERE id = 2", None).await;
    s.probe.assert_upstream(&reader, &q, &one("5")).await;
    let (sent, stored) = (pipelined(&s), through(&s, "stored"));
    simple(&writer, "UPDATE acct SET v = 6 WHERE id = 2").await;
    assert_eq!(pipelined(&s) - sent, 1.0, "sent with the simple Query");
    assert_eq!(through(&s, "stored") - stored, 1.0);
    s.probe.assert_hit(&reader, &q, &one("6")).await;
    let n = writer
        .execute("UPDATE acct SET v = v + $1 WHERE id = $2", &[&1i32, &2i32])
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(pipelined(&s) - sent, 2.0, "sent with the extended group");
    assert_eq!(through(&s, "stored") - stored, 2.0);
    s.probe.assert_hit(&reader, &q, &one("7")).await;

    // In a transaction block the re-run waits for the commit (after its reply).
    simple(&writer, "BEGIN").await;
    simple(&writer, "UPDATE acct SET v = 8 WHERE id = 2").await;
    simple(&writer, "COMMIT").await;
    assert_eq!(pipelined(&s) - sent, 2.0, "not pipelined");
    assert_eq!(through(&s, "stored") - stored, 3.0);
    s.probe.assert_hit(&reader, &q, &one("8")).await;
}

#[tokio::test]
async fn a_re_run_sent_behind_a_failed_write_is_not_stored_under_another_writes_bump() {
    // The danger case of sending re-runs before the write's reply: their keys assume the
    // write's bump. Writer A's UPDATE fails; its re-run (300 ms) reads the old row. While
    // it runs, writer B commits the same-shaped UPDATE of that row through pgmemo, making
    // exactly the bump A's re-run was keyed on. Stored, A's old row would be served as
    // current; it must not be, and B's own re-run stores the new row.
    let s = slow_stack("0.3", "").await;
    let reader = s.session(SUPERUSER).await;
    let (a, b) = (s.session(SUPERUSER).await, s.session(SUPERUSER).await);
    let q = s
        .probe
        .q("SELECT slow(v) AS v FROM acct WHERE id = 3", None)
        .await;
    s.probe.assert_upstream(&reader, &q, &one("5")).await;
    let sent = pipelined(&s);
    let failing = tokio::spawn(async move {
        let r = a
            .simple_query("UPDATE acct SET v = v + 1 / (v - v) WHERE id = 3")
            .await;
        (a, r)
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    simple(&b, "UPDATE acct SET v = v + 1 WHERE id = 3").await;
    let (a, r) = failing.await.unwrap();
    assert_eq!(
        r.expect_err("division by zero").code(),
        Some(&tokio_postgres::error::SqlState::DIVISION_BY_ZERO)
    );
    s.probe.assert_hit(&reader, &q, &one("6")).await;
    assert_eq!(pipelined(&s) - sent, 2.0, "both writes carried a re-run");
    // A's session is in sync.
    assert_in_sync(&s, &a).await;
}

#[tokio::test]
async fn copy_from_stdin_into_a_through_table_is_not_followed_by_re_runs() {
    // PostgreSQL is in copy-in mode after `COPY ... FROM STDIN`: anything pgmemo sent right
    // behind it would break the session. Its dependents are re-run after its reply instead.
    use futures_util::SinkExt;
    let s = stack().await;
    let (reader, writer) = (s.session(SUPERUSER).await, s.session(SUPERUSER).await);
    let q = s.probe.q("SELECT count(*) AS v FROM acct", None).await;
    s.probe.assert_upstream(&reader, &q, &one("5")).await;
    // psql's session has its own fingerprint (application_name): its dependents of the
    // reader's are `other_session`, re-run in the background too.
    let refreshed = |s: &CacheStack| {
        through(s, "stored") + through(s, "background") + through(s, "other_session")
    };
    let (sent, stored) = (pipelined(&s), refreshed(&s));
    let soon = std::time::Duration::from_secs(10);
    // Extended protocol (tokio-postgres), twice: the second reuses the statement.
    for (i, sql) in [
        (6, "COPY acct (id, v) FROM STDIN"),
        (7, "COPY acct (id, v) FROM STDIN WITH (FORMAT text)"),
    ] {
        let sink = writer
            .copy_in::<_, bytes::Bytes>(sql)
            .await
            .expect("copy-in mode");
        futures_util::pin_mut!(sink);
        sink.send(bytes::Bytes::from(format!("{i}\t9\n")))
            .await
            .unwrap();
        assert_eq!(sink.finish().await.expect("COPY succeeds"), 1);
    }
    assert_eq!(pipelined(&s), sent, "nothing sent behind a COPY");
    // Re-run after the COPY replies (in the background: the copy-in session is not at a
    // sync point the writer's connection can re-run at). Once per COPY, or once for both:
    // a refresh nobody read yet is not refreshed again by the next write, and under load
    // the first one may still be unread (or running) when the second COPY lands. What the
    // reader then hits has both rows either way.
    let deadline = std::time::Instant::now() + soon;
    while refreshed(&s) - stored < 1.0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let reruns = refreshed(&s) - stored;
    assert!(
        (1.0..=2.0).contains(&reruns),
        "re-run after the COPYs: {reruns}"
    );
    s.probe.eventually_hit(&reader, &q, &one("7"), soon).await;
    simple(&writer, "SELECT 1").await;
    // Simple protocol: psql's inline COPY block, then a statement on the same session.
    let mut psql = std::process::Command::new(s.pg.bin("psql"));
    psql.args([
        "-X",
        "-q",
        "-At",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        "127.0.0.1",
    ])
    .args(["-p", &s.proxy.port().to_string(), "-U", SUPERUSER])
    .args(["-d", probe::DB, "-f", "-"])
    .env("PGSSLMODE", "disable");
    let out = common::pg::run_with_stdin(
        psql,
        "COPY acct (id, v) FROM STDIN;\n8\t9\n\\.\nSELECT 'after', count(*) FROM acct;\n",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "after|8");
    assert_eq!(pipelined(&s), sent, "nothing sent behind a COPY");
    // The reader hit the refreshed result since, so psql's COPY re-runs it once more.
    let deadline = std::time::Instant::now() + soon;
    while refreshed(&s) - stored < reruns + 1.0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(refreshed(&s) - stored, reruns + 1.0);
    s.probe.eventually_hit(&reader, &q, &one("8"), soon).await;
}

#[tokio::test]
async fn notifications_and_setting_reports_during_re_runs_reach_the_writer() {
    // PostgreSQL delivers a notification just before a ReadyForQuery: the re-run's, when
    // it comes while the re-run runs. It is the client's, and the re-run is still stored.
    let s = slow_stack("0.5", "").await;
    let reader = s.session(SUPERUSER).await;
    let q = s
        .probe
        .q("SELECT slow(v) AS v FROM acct WHERE id = 3", None)
        .await;
    s.probe.assert_upstream(&reader, &q, &one("5")).await;
    let (writer, mut messages) =
        common::client::connect_with_messages(s.proxy.addr(), SUPERUSER, "", probe::DB).await;
    simple(&writer, "LISTEN ch").await;
    let stored = through(&s, "stored");
    let update = tokio::spawn(async move {
        simple(&writer, "UPDATE acct SET v = v + 1 WHERE id = 3").await;
        writer
    });
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    s.probe
        .client
        .simple_query("NOTIFY ch, 'hello'")
        .await
        .unwrap();
    let writer = update.await.unwrap();
    let n = messages
        .expect_notification(std::time::Duration::from_secs(5))
        .await;
    assert_eq!((n.channel(), n.payload()), ("ch", "hello"));
    assert_eq!(through(&s, "stored") - stored, 1.0, "the re-run was stored");
    s.probe.assert_hit(&reader, &q, &one("6")).await;
    simple(&writer, "SELECT 1").await;
}

#[tokio::test]
async fn a_graceful_shutdown_waits_for_the_writers_held_acknowledgement() {
    // While write-through holds the writer's ReadyForQuery the session looks idle to the
    // relay's state, but it is not at a safe point: the write committed and the client
    // must get its acknowledgement before the session is closed (57P01).
    let s = slow_stack("0.5", "time_budget = \"2s\"").await;
    let reader = s.session(SUPERUSER).await;
    let q = s
        .probe
        .q("SELECT slow(v) AS v FROM acct WHERE id = 3", None)
        .await;
    s.probe.assert_upstream(&reader, &q, &one("5")).await;
    let writer = s.session(SUPERUSER).await;
    let update = tokio::spawn(async move {
        writer
            .simple_query("UPDATE acct SET v = v + 1 WHERE id = 3")
            .await
            .map(|_| ())
    });
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    s.proxy.signal(common::Signal::Term);
    update
        .await
        .unwrap()
        .expect("the committed UPDATE is acknowledged before the session is closed");
}

#[tokio::test]
async fn a_refresh_nobody_read_is_not_refreshed_again_by_the_next_write() {
    // A row written twice before anyone reads it: the second write does not pay for a
    // second re-run nobody asked for; the result stays invalid (never stale) and the next
    // read misses. Once read, the next write re-runs it again.
    let s = stack().await;
    let (reader, writer) = (s.session(SUPERUSER).await, s.session(SUPERUSER).await);
    let q = s.probe.q("SELECT v FROM acct WHERE id = 4", None).await;
    s.probe.assert_upstream(&reader, &q, &one("5")).await;
    let (stored, unread) = (through(&s, "stored"), through(&s, "unread"));
    simple(&writer, "UPDATE acct SET v = 6 WHERE id = 4").await;
    assert_eq!(through(&s, "stored") - stored, 1.0);
    simple(&writer, "UPDATE acct SET v = 7 WHERE id = 4").await;
    assert_eq!(through(&s, "stored") - stored, 1.0, "not re-run again");
    assert_eq!(through(&s, "unread") - unread, 1.0);
    s.probe.assert_upstream(&reader, &q, &one("7")).await;
    simple(&writer, "UPDATE acct SET v = 8 WHERE id = 4").await;
    assert_eq!(through(&s, "stored") - stored, 2.0, "read since: re-run");
    s.probe.assert_hit(&reader, &q, &one("8")).await;
    simple(&writer, "UPDATE acct SET v = 9 WHERE id = 4").await;
    assert_eq!(
        through(&s, "stored") - stored,
        3.0,
        "its refresh was read: re-run"
    );
    s.probe.assert_hit(&reader, &q, &one("9")).await;
}
