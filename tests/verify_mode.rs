//! Verify mode (issue 21): `cache.verify_sample` of the cache hits are re-executed on
//! PostgreSQL in the background, under the entry's own login and fingerprint, and compared
//! byte for byte with what was served. No mismatch under the staleness checker's traffic
//! through pgmemo; mismatches (counted per table, logged with the statement's shape) when a
//! write bypasses pgmemo with change data capture off; a write through pgmemo racing a
//! check is `raced`, not a mismatch; each role's result is checked as that role; and with
//! `verify_sample = 0` nothing is checked.

#[path = "support/checker/mod.rs"]
mod checker;
mod common;
#[path = "support/cache_probe.rs"]
mod probe;

use std::time::{Duration, Instant};

use common::{PgOptions, SUPERUSER, Stack};
use probe::{CacheStack, RLS_NOTES, column, config, simple};

const CHECKS: &str = "pgmemo_verify_checks_total";
const MISMATCHES: &str = "pgmemo_verify_mismatches_total";

const ITEMS: &str = "
CREATE TABLE items(id int PRIMARY KEY, v int NOT NULL);
INSERT INTO items VALUES (1, 10), (2, 20);
";

/// Runs `sql` on `c`, which must answer `want` from pgmemo's cache (its hit counter moves:
/// `pg_stat_statements` cannot tell, since a check re-executes the same statement).
async fn assert_hit(p: &common::Proxy, c: &tokio_postgres::Client, sql: &str, want: &str) {
    let before = p.metric("pgmemo_cache_hits_total", &[]);
    let got = simple(c, sql).await;
    assert_eq!(got, column("v", &[want]), "{sql}");
    assert_eq!(
        p.metric("pgmemo_cache_hits_total", &[]),
        before + 1.0,
        "{sql}: expected a cache hit"
    );
}

fn checks(s: &common::Proxy, result: &str) -> f64 {
    s.metric(CHECKS, &[&format!("result=\"{result}\"")])
}

/// Waits (≤ 20 s) until `result` was counted at least `n` times; returns the count.
async fn until_checks(s: &common::Proxy, result: &str, n: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = checks(s, result);
        if got >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{result}: {got} checks, wanted {n}; {:?}",
            verify_lines(s)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (≤ 60 s) until no check is queued or running: the total stops moving for a
/// second, past the checker's race grace.
async fn until_checks_settle(s: &common::Proxy) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = s.metric(CHECKS, &[]);
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = s.metric(CHECKS, &[]);
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() > Duration::from_millis(1200) {
            return now;
        }
        assert!(Instant::now() < deadline, "checks never settled");
    }
}

fn verify_lines(s: &common::Proxy) -> Vec<String> {
    s.admin_get("/metrics")
        .lines()
        .filter(|l| l.starts_with("pgmemo_verify_"))
        .map(str::to_string)
        .collect()
}

/// The staleness checker's workload (reads, writes and transactions through pgmemo, 5 %
/// writes) with every hit checked: many hits are checked and none mismatches — writes
/// racing checks are told apart by the versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_mismatch_under_the_staleness_checker_through_pgmemo() {
    const CONFIG: &str = "[cache]\nverify_sample = 1.0\nverify_max_per_second = 1000000\n\n\
[[functions.writes]]\nfunction = \"public.counters_audit_fn\"\ntables = [\"public.counters_audit\"]\n\n\
[[rules]]\ntable = \"public.iso_tenant_view\"\nallow_stable_functions = true\n";
    let opts = PgOptions::default().setting("max_prepared_transactions", "20");
    let s = Stack::start_with(opts, |args| args.config(CONFIG));
    let mut c = checker::CheckerConfig::new(s.proxy.addr(), s.pg.addr());
    c.user = SUPERUSER.into();
    c.dbname = common::stack::APP_DB.into();
    c.ops = 20_000;
    c.clients = 8;
    c.write_percent = 5;
    c.shape = checker::Shape::small();
    c.admin = Some(s.proxy.admin_addr());
    let report = checker::run(&c).await.expect("the checker ran");
    eprintln!("{report}");
    assert!(report.is_clean(), "{report}");
    until_checks_settle(&s.proxy).await;
    let lines = verify_lines(&s.proxy);
    eprintln!("{lines:#?}");
    assert!(
        checks(&s.proxy, "matched") > 500.0,
        "too few hits checked: {lines:?}"
    );
    assert_eq!(checks(&s.proxy, "mismatched"), 0.0, "{lines:?}");
    assert_eq!(s.proxy.metric(MISMATCHES, &[]), 0.0, "{lines:?}");
    assert!(
        !s.proxy.stderr().contains("verify: a cached result differs"),
        "a mismatch was logged"
    );
}

/// Change data capture off, a 60 s TTL: a write made directly on PostgreSQL is not seen,
/// the next hits serve the old rows, and verify mode catches them (per table, logged with
/// the shape and never the literal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_write_with_cdc_off_is_a_mismatch_per_table_with_its_shape_logged() {
    let s = CacheStack::start(
        ITEMS,
        &config("verify_sample = 1.0", "[invalidation]\ncdc = \"off\"\n"),
    )
    .await;
    let sql = "SELECT v FROM items WHERE id = 1";
    let q = s.probe.q(sql, None).await;
    let app = s.session(SUPERUSER).await;
    s.probe
        .assert_upstream(&app, &q, &column("v", &["10"]))
        .await;
    assert_hit(&s.proxy, &app, sql, "10").await;
    // The extended protocol too (a prepared statement, a binary parameter).
    let prepared = app
        .prepare("SELECT v FROM items WHERE id = $1")
        .await
        .expect("prepare");
    for _ in 0..2 {
        let row = app.query_one(&prepared, &[&2i32]).await.expect("query");
        assert_eq!(row.get::<_, i32>(0), 20);
    }
    until_checks(&s.proxy, "matched", 2.0).await;
    until_checks_settle(&s.proxy).await;
    assert_eq!(
        checks(&s.proxy, "mismatched"),
        0.0,
        "{:?}",
        verify_lines(&s.proxy)
    );

    s.direct_sql("UPDATE items SET v = v + 1");
    // Served stale: pgmemo did not see the write.
    assert_hit(&s.proxy, &app, sql, "10").await;
    let row = app.query_one(&prepared, &[&2i32]).await.expect("query");
    assert_eq!(row.get::<_, i32>(0), 20, "served from the cache");
    until_checks(&s.proxy, "mismatched", 2.0).await;
    let lines = verify_lines(&s.proxy);
    assert!(
        s.proxy.metric(MISMATCHES, &["table=\"public.items\""]) >= 2.0,
        "{lines:?}"
    );
    let log = s.proxy.stderr();
    // Both statements' mismatches are logged, in whichever order their checks ran: the
    // simple Query's shape with its literal as `?`, the prepared one's with `$1`.
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("verify: a cached result differs"))
        .collect();
    assert!(!lines.is_empty(), "no mismatch logged:\n{log}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("SELECT v FROM items WHERE id = ?")),
        "the shape: {lines:?}"
    );
    for line in &lines {
        assert!(line.contains("public.items"), "the table: {line}");
        assert!(!line.contains("id = 1"), "a literal was logged: {line}");
    }
    assert!(
        log.contains("SELECT v FROM items WHERE id = $1"),
        "the prepared statement's shape: {log}"
    );
}

/// A write through pgmemo commits while a check of a hit it invalidates is between its
/// first look at the versions and its re-execution (the `race-hooks` build's
/// `PGMEMO_VERIFY_DELAY_MS`): the re-execution sees the new row, the versions moved, the
/// check is `raced`, never a mismatch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_pgmemo_racing_a_check_is_raced_not_a_mismatch() {
    let pg = common::PgServer::start(PgOptions::default());
    pg.psql(probe::DB, ITEMS);
    let proxy = common::Proxy::start(
        common::ProxyArgs::new(pg.url(SUPERUSER, "postgres"))
            .config(config(
                "verify_sample = 1.0",
                "[invalidation]\ncdc = \"off\"\n",
            ))
            .env("PGMEMO_VERIFY_DELAY_MS", "1500"),
    );
    let app = proxy.connect(SUPERUSER, "", probe::DB).await;
    let sql = "SELECT v FROM items WHERE id = 1";
    assert_eq!(simple(&app, sql).await, column("v", &["10"]));
    assert_eq!(simple(&app, sql).await, column("v", &["10"]));
    assert!(proxy.metric("pgmemo_cache_hits_total", &[]) >= 1.0);
    let paused = |p: &common::Proxy| {
        p.metric(
            "pgmemo_race_hook_pauses_total",
            &["point=\"before_verify\""],
        )
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while paused(&proxy) < 1.0 {
        assert!(Instant::now() < deadline, "the check never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The check passed its first look and waits: the write lands before its re-execution.
    simple(&app, "UPDATE items SET v = 11 WHERE id = 1").await;
    until_checks(&proxy, "raced", 1.0).await;
    until_checks_settle(&proxy).await;
    let lines = verify_lines(&proxy);
    assert_eq!(checks(&proxy, "mismatched"), 0.0, "{lines:?}");
    assert_eq!(checks(&proxy, "raced"), 1.0, "{lines:?}");
    assert_eq!(simple(&app, sql).await, column("v", &["11"]));
}

/// Row-level security on `current_user`: alice and bob read different sums from one
/// statement. Each hit is re-executed as its own role (never as pgmemo's login, which
/// would see every row and "mismatch"), so both match; carol, for whom pgmemo has no
/// login, is not checked at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_is_checked_as_itself() {
    let rest = "[[rules]]\ntable = \"notes\"\nallow_rls = true\n\n\
[[refresh.logins]]\nuser = \"alice\"\n\n[[refresh.logins]]\nuser = \"bob\"\n";
    let s = CacheStack::start(RLS_NOTES, &config("verify_sample = 1.0", rest)).await;
    let sql = "SELECT sum(v)::int AS v FROM notes";
    for (role, sum) in [("alice", "10"), ("bob", "20"), ("carol", "30")] {
        let c = s.session(role).await;
        // A miss that stores the role's own result (pg_stat_statements cannot prove it:
        // the check of the previous role's hit runs the same statement meanwhile).
        assert_eq!(simple(&c, sql).await, column("v", &[sum]), "{role}");
        assert_hit(&s.proxy, &c, sql, sum).await;
    }
    until_checks(&s.proxy, "matched", 2.0).await;
    until_checks_settle(&s.proxy).await;
    let lines = verify_lines(&s.proxy);
    assert_eq!(checks(&s.proxy, "matched"), 2.0, "{lines:?}");
    assert_eq!(checks(&s.proxy, "mismatched"), 0.0, "{lines:?}");
    assert_eq!(checks(&s.proxy, "raced"), 0.0, "{lines:?}");
    assert_eq!(
        s.proxy
            .metric("pgmemo_verify_skipped_total", &["reason=\"no_login\""]),
        1.0,
        "{lines:?}"
    );
}

/// `verify_sample = 0` (the default): hits are served and nothing is checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_zero_checks_nothing() {
    let s = CacheStack::start(ITEMS, &config("verify_sample = 0.0", "")).await;
    let q = s.probe.q("SELECT v FROM items WHERE id = 1", None).await;
    let app = s.session(SUPERUSER).await;
    s.probe
        .assert_upstream(&app, &q, &column("v", &["10"]))
        .await;
    for _ in 0..200 {
        assert_hit(&s.proxy, &app, &q.sql, "10").await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        s.proxy.metric(CHECKS, &[]),
        0.0,
        "{:?}",
        verify_lines(&s.proxy)
    );
    assert_eq!(
        s.proxy.metric("pgmemo_verify_skipped_total", &[]),
        0.0,
        "{:?}",
        verify_lines(&s.proxy)
    );
}

/// `verify_max_per_second`: every hit is sampled, but no more checks start per second than
/// the cap; the rest are counted `skipped{reason="rate"}`, and the hits are still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_are_capped_per_second() {
    let s = CacheStack::start(
        ITEMS,
        &config("verify_sample = 1.0\nverify_max_per_second = 2", ""),
    )
    .await;
    let q = s.probe.q("SELECT v FROM items WHERE id = 1", None).await;
    let app = s.session(SUPERUSER).await;
    s.probe
        .assert_upstream(&app, &q, &column("v", &["10"]))
        .await;
    let started = Instant::now();
    for _ in 0..200 {
        assert_hit(&s.proxy, &app, &q.sql, "10").await;
    }
    // 200 hits within `seconds` (rounded up, plus the second they straddle) admit at most
    // 2 checks per second.
    let seconds = started.elapsed().as_secs_f64().ceil() + 1.0;
    until_checks_settle(&s.proxy).await;
    let lines = verify_lines(&s.proxy);
    let rate = s
        .proxy
        .metric("pgmemo_verify_skipped_total", &["reason=\"rate\""]);
    let checked = s.proxy.metric(CHECKS, &[]) - checks(&s.proxy, "skipped");
    assert!(checked >= 1.0, "the first check runs: {lines:?}");
    assert!(
        checked <= 2.0 * seconds,
        "{checked} checks in {seconds} s: {lines:?}"
    );
    assert_eq!(
        checked + rate,
        200.0,
        "every sampled hit accounted: {lines:?}"
    );
    assert_eq!(checks(&s.proxy, "mismatched"), 0.0, "{lines:?}");
}
