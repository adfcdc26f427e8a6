//! Change data capture end to end (issue 5): a throwaway PostgreSQL with `wal_level =
//! logical`, pgmemo with `invalidation.cdc = "on"` covering the test database, and writes
//! made directly on PostgreSQL (psql, not through pgmemo). Each write must become visible
//! through pgmemo within the functional bound of 2 s, for every kind of change the issue
//! lists, after the read was shown to be a cache hit (so only an invalidation can make the
//! new answer appear). The TTL is 60 s and the catalog poll 200 ms (the poller never sees
//! row changes), so nothing but the change stream can explain it.

#[path = "support/cdc.rs"]
mod cdc;
mod common;
#[path = "support/cache_probe.rs"]
mod probe;

use std::time::{Duration, Instant};

use cdc::{CDC_BOUND, assert_measures_asynchronous_commit, cdc_config, wait_streaming};
use common::SUPERUSER;
use probe::{CacheStack, DB, simple, until_new_answer};

const SETUP: &str = "
CREATE TABLE t(id int PRIMARY KEY, v int NOT NULL);
INSERT INTO t SELECT g, g FROM generate_series(1, 10) g;
CREATE TABLE parent(id int PRIMARY KEY);
CREATE TABLE child(id int PRIMARY KEY, p int REFERENCES parent ON DELETE CASCADE);
INSERT INTO parent VALUES (1), (2);
INSERT INTO child VALUES (1, 1), (2, 2);
CREATE TABLE audited(id int PRIMARY KEY, v int NOT NULL);
CREATE TABLE audit_log(id serial PRIMARY KEY, v int NOT NULL);
CREATE FUNCTION log_it() RETURNS trigger LANGUAGE plpgsql AS
  $$BEGIN INSERT INTO audit_log(v) VALUES (NEW.v); RETURN NEW; END$$;
CREATE TRIGGER audited_log AFTER INSERT OR UPDATE ON audited
  FOR EACH ROW EXECUTE FUNCTION log_it();
INSERT INTO audited VALUES (1, 1);
CREATE TABLE proc_target(id serial PRIMARY KEY, v int NOT NULL);
CREATE PROCEDURE add_proc(x int) LANGUAGE sql AS $$INSERT INTO proc_target(v) VALUES (x)$$;
CREATE TABLE part(k int PRIMARY KEY, v int) PARTITION BY RANGE (k);
CREATE TABLE part_1 PARTITION OF part FOR VALUES FROM (0) TO (100);
INSERT INTO part VALUES (1, 1);
CREATE TABLE base(id int PRIMARY KEY, v int NOT NULL);
INSERT INTO base VALUES (1, 1);
CREATE VIEW base_view AS SELECT id, v FROM base;
CREATE TABLE docs(id int PRIMARY KEY, body text NOT NULL);
";

/// Reads `read` through pgmemo until it answers what PostgreSQL answers directly after
/// `write` (run directly); the read was a hit before the write. Returns how long it took.
async fn direct_write_becomes_visible(s: &CacheStack, read: &str, write: &str) -> Duration {
    let c = s.session(SUPERUSER).await;
    let q = s.probe.q(read, None).await;
    let before = simple(&s.probe.client, read).await;
    // The first read may be a miss; within a few runs it must be a hit.
    s.probe
        .eventually_hit(&c, &q, &before, Duration::from_secs(5))
        .await;
    s.direct_sql(write);
    let after = simple(&s.probe.client, read).await;
    assert_ne!(before, after, "{write} must change the answer of {read}");
    until_new_answer(&c, read, &before, &after, CDC_BOUND).await
}

#[tokio::test]
async fn writes_made_directly_on_postgres_invalidate_through_the_change_stream() {
    let s = CacheStack::start(SETUP, &cdc_config("")).await;
    wait_streaming(&s.proxy).await;
    // The latencies printed below include the WAL writer's flush delay.
    assert_measures_asynchronous_commit(&s.probe.client).await;
    let cases: &[(&str, &str, &str)] = &[
        (
            "insert",
            "SELECT count(*) FROM t",
            "INSERT INTO t VALUES (11, 11)",
        ),
        (
            "update",
            "SELECT v FROM t WHERE id = 1",
            "UPDATE t SET v = 100 WHERE id = 1",
        ),
        (
            "delete",
            "SELECT count(*) FROM t WHERE id = 2",
            "DELETE FROM t WHERE id = 2",
        ),
        (
            "fk cascade",
            "SELECT count(*) FROM child",
            "DELETE FROM parent WHERE id = 1",
        ),
        (
            "trigger writing a second table",
            "SELECT count(*) FROM audit_log",
            "UPDATE audited SET v = v + 1",
        ),
        (
            "procedure",
            "SELECT count(*) FROM proc_target",
            "CALL add_proc(7)",
        ),
        (
            "partition leaf, read through the parent",
            "SELECT sum(v) FROM part",
            "UPDATE part_1 SET v = 50",
        ),
        (
            "view",
            "SELECT v FROM base_view WHERE id = 1",
            "UPDATE base SET v = 9",
        ),
        (
            "a 3 MB row (a change message longer than pgmemo keeps)",
            "SELECT count(*) FROM docs",
            "INSERT INTO docs SELECT 1, string_agg(md5(g::text), '') FROM generate_series(1, 100000) g",
        ),
        ("truncate", "SELECT count(*) FROM t", "TRUNCATE t CASCADE"),
    ];
    for (name, read, write) in cases {
        let took = direct_write_becomes_visible(&s, read, write).await;
        println!("{name}: visible through pgmemo {took:?} after the direct write");
    }
    assert!(s.metric("pgmemo_cdc_transactions_total") >= cases.len() as f64);
    // Without a publication (pgmemo creates none since issue 16: the stream uses
    // test_decoding).
    let publications = s
        .probe
        .client
        .query_one("SELECT count(*) FROM pg_publication", &[])
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(publications, 0, "pgmemo creates no publication");
}

#[tokio::test]
async fn a_transaction_writing_many_tables_directly_bumps_each() {
    let s = CacheStack::start(SETUP, &cdc_config("")).await;
    wait_streaming(&s.proxy).await;
    let c = s.session(SUPERUSER).await;
    let reads = ["SELECT count(*) FROM t", "SELECT count(*) FROM base"];
    let mut qs = Vec::new();
    for r in reads {
        let q = s.probe.q(r, None).await;
        let want = simple(&s.probe.client, r).await;
        s.probe
            .eventually_hit(&c, &q, &want, Duration::from_secs(5))
            .await;
        qs.push(q);
    }
    s.direct_sql("BEGIN; INSERT INTO t VALUES (50, 50); INSERT INTO base VALUES (50, 50); COMMIT");
    for r in reads {
        let want = simple(&s.probe.client, r).await;
        let started = Instant::now();
        while simple(&c, r).await != want {
            assert!(started.elapsed() < CDC_BOUND, "{r} still stale");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // A rolled-back direct write bumps nothing: the entries stay hits.
    let bumps = s.metric("pgmemo_cache_tag_bumps_total");
    s.direct_sql("BEGIN; INSERT INTO t VALUES (60, 60); ROLLBACK");
    s.direct_sql("INSERT INTO audit_log(v) VALUES (1)");
    let started = Instant::now();
    while s.metric("pgmemo_cdc_relations_total") < 1.0
        || s.metric("pgmemo_cache_tag_bumps_total") <= bumps
    {
        assert!(
            started.elapsed() < CDC_BOUND,
            "the later commit was not streamed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (r, q) in reads.iter().zip(&qs) {
        let want = simple(&s.probe.client, r).await;
        s.probe.assert_hit(&c, q, &want).await;
    }
    let _ = DB;
}

/// The epoch bumps counted for `cause`.
fn epoch_bumps(s: &CacheStack, cause: &str) -> f64 {
    let metrics = s.proxy.admin_get("/metrics");
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("pgmemo_cache_epoch_bumps_total{") && l.contains(&format!("\"{cause}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_trigger_write_through_pgmemo_is_read_back_at_once_without_an_epoch_bump() {
    let s = CacheStack::start(SETUP, &cdc_config("cdc_ack_wait_max = \"2s\"")).await;
    wait_streaming(&s.proxy).await;
    let c = s.session(SUPERUSER).await;
    let read = "SELECT count(*) FROM audit_log";
    let other = "SELECT count(*) FROM t";
    let (q, q_other) = (s.probe.q(read, None).await, s.probe.q(other, None).await);
    let other_rows = simple(&s.probe.client, other).await;
    s.probe
        .eventually_hit(&c, &q_other, &other_rows, Duration::from_secs(5))
        .await;
    for round in 1..=5 {
        let before = simple(&s.probe.client, read).await;
        s.probe
            .eventually_hit(&c, &q, &before, Duration::from_secs(5))
            .await;
        let side_effects = epoch_bumps(&s, "side_effects");
        // The trigger writes audit_log; pgmemo only sees `UPDATE audited`.
        simple(&c, "UPDATE audited SET v = v + 1").await;
        // The very next read in the same session sees the trigger's row.
        let got = simple(&c, read).await;
        let want = simple(&s.probe.client, read).await;
        assert_ne!(before, want);
        assert_eq!(
            got, want,
            "round {round}: the trigger's write is not read back"
        );
        assert_eq!(
            epoch_bumps(&s, "side_effects"),
            side_effects,
            "the acknowledgement waited for the stream instead of flushing the cache"
        );
        // Unrelated entries survive the write.
        s.probe.assert_hit(&c, &q_other, &other_rows).await;
    }
    assert!(s.metric("pgmemo_cdc_ack_waits_total") >= 5.0);
    // The same inside an explicit transaction: COMMIT's acknowledgement is held.
    let before = simple(&s.probe.client, read).await;
    s.probe
        .eventually_hit(&c, &q, &before, Duration::from_secs(5))
        .await;
    simple(&c, "BEGIN").await;
    simple(&c, "UPDATE audited SET v = v + 1").await;
    simple(&c, "COMMIT").await;
    assert_eq!(simple(&c, read).await, simple(&s.probe.client, read).await);
}

#[tokio::test]
async fn without_an_ack_wait_a_trigger_write_flushes_the_cache_as_before() {
    let s = CacheStack::start(SETUP, &cdc_config("cdc_ack_wait_max = \"0s\"")).await;
    wait_streaming(&s.proxy).await;
    let c = s.session(SUPERUSER).await;
    let read = "SELECT count(*) FROM audit_log";
    let q = s.probe.q(read, None).await;
    let before = simple(&s.probe.client, read).await;
    s.probe
        .eventually_hit(&c, &q, &before, Duration::from_secs(5))
        .await;
    let side_effects = epoch_bumps(&s, "side_effects");
    simple(&c, "UPDATE audited SET v = v + 1").await;
    assert_eq!(simple(&c, read).await, simple(&s.probe.client, read).await);
    assert!(epoch_bumps(&s, "side_effects") > side_effects);
}

/// Write-through on a table with a trigger: the writer's acknowledgement is held for the
/// change stream, so its connection is not free for re-runs and the results it invalidated
/// go to the background refresher — handed over once the stream applied the commit (a
/// refresh must read what the stream bumped) and waited for before the acknowledgement.
/// A session with another fingerprint reads the new row from the cache right after.
#[tokio::test]
async fn with_the_acknowledgement_held_write_through_refreshes_before_it() {
    let extra = "cdc_ack_wait_max = \"2s\"\n\n[[rules]]\ntable = \"audited\"\n\
                 write = \"through\"\n\n[refresh]\ntime_budget = \"10s\"\n";
    // Each refresh takes 200 ms: a read right after an acknowledgement that did not wait
    // for it would miss.
    let setup = format!(
        "{SETUP}CREATE FUNCTION slow(x int) RETURNS int IMMUTABLE LANGUAGE plpgsql \
         AS $$ BEGIN PERFORM pg_sleep(0.2); RETURN x; END $$;"
    );
    let s = CacheStack::start(&setup, &cdc_config(extra)).await;
    wait_streaming(&s.proxy).await;
    let writer = s.session(SUPERUSER).await;
    // Another fingerprint than the writer's (its search_path is set at login).
    let reader = s
        .session_with_options(SUPERUSER, "-c search_path=public")
        .await;
    let read = "SELECT slow(v) AS v FROM audited WHERE id = 1";
    let q = s.probe.q(read, None).await;
    let before = simple(&s.probe.client, read).await;
    s.probe
        .eventually_hit(&reader, &q, &before, Duration::from_secs(5))
        .await;
    for round in 1..=2 {
        simple(&writer, "UPDATE audited SET v = v + 1 WHERE id = 1").await;
        // The refresh was stored before the writer's acknowledgement: a hit, new row.
        let (got, calls) = s.probe.run(&reader, &q).await;
        let want = simple(&s.probe.client, read).await;
        assert_ne!(want, before);
        assert_eq!((got, calls), (want, 0), "round {round}");
    }
    assert!(s.metric("pgmemo_cdc_ack_waits_total") >= 2.0);
}
