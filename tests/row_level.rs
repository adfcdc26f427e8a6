//! Row-level invalidation (issue 18), end to end: a read pinned to rows by its primary key
//! stays cached across writes to other rows of its table, and is fresh after a write to its
//! row in any form (literal, text or binary parameter, another spelling of the same key) or
//! after any write whose rows pgmemo cannot know (ranges, INSERT ... SELECT, a key-assigning
//! UPDATE, a trigger, a foreign-key cascade back into the table). Each assertion checks the
//! rows the client gets and whether PostgreSQL ran the statement (`pg_stat_statements`).

#[path = "support/cdc.rs"]
mod cdc;
mod common;
#[path = "support/cache_probe.rs"]
mod probe;

use cdc::{CDC_BOUND, cdc_config, wait_streaming};
use common::{PgOptions, PgServer, SUPERUSER};
use probe::{CacheStack, DB, column, config, simple, until_new_answer};

const SETUP: &str = "
CREATE TABLE acct(id int PRIMARY KEY, v int NOT NULL);
INSERT INTO acct SELECT g, 0 FROM generate_series(1, 5) g;
CREATE TABLE pair(a int, b text, v int NOT NULL, PRIMARY KEY (a, b));
INSERT INTO pair VALUES (1, 'x', 0), (1, 'y', 0);
CREATE TABLE trig(id int PRIMARY KEY, v int NOT NULL);
INSERT INTO trig VALUES (1, 0), (2, 0);
CREATE FUNCTION trig_fn() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN UPDATE trig SET v = v + 100 WHERE id <> NEW.id; RETURN NULL; END $$;
CREATE TRIGGER trig_t AFTER UPDATE ON trig FOR EACH ROW WHEN (pg_trigger_depth() = 0)
    EXECUTE FUNCTION trig_fn();
CREATE TABLE tree(id int PRIMARY KEY, up int REFERENCES tree(id) ON DELETE CASCADE, v int);
INSERT INTO tree VALUES (1, NULL, 1), (2, 1, 2);
CREATE TABLE gen(a int NOT NULL, id int GENERATED ALWAYS AS (a * 10) STORED PRIMARY KEY);
INSERT INTO gen (a) VALUES (1);
CREATE TABLE names(name text PRIMARY KEY, v int NOT NULL);
INSERT INTO names VALUES ('Ã©', 0);
";

/// `trig_fn` is declared: its writes bump `trig` instead of the whole cache, so the test sees
/// what row precision does with a trigger, not an epoch bump.
const WRITES: &str =
    "[[functions.writes]]\nfunction = \"public.trig_fn\"\ntables = [\"public.trig\"]\n";

async fn stack() -> CacheStack {
    CacheStack::start(SETUP, &config("", WRITES)).await
}

fn one(v: &str) -> Vec<common::compare::SimpleMsg> {
    column("v", &[v])
}

#[tokio::test]
async fn a_write_to_one_row_keeps_the_other_rows_cached() {
    let s = stack().await;
    let c = s.session(SUPERUSER).await;
    let r1 = s.probe.q("SELECT v FROM acct WHERE id = 1", None).await;
    let r2 = s.probe.q("SELECT v FROM acct WHERE id = 2", None).await;
    let sum = s.probe.q("SELECT sum(v)::int AS v FROM acct", None).await;
    for q in [&r1, &r2] {
        s.probe.assert_upstream(&c, q, &one("0")).await;
        s.probe.assert_hit(&c, q, &one("0")).await;
    }
    s.probe.assert_upstream(&c, &sum, &one("0")).await;
    let (rows0, table0) = (
        metric(&s, "granularity=\"row\""),
        metric(&s, "granularity=\"table\""),
    );

    simple(&c, "UPDATE acct SET v = v + 1 WHERE id = 2").await;

    s.probe.assert_hit(&c, &r1, &one("0")).await;
    s.probe.assert_upstream(&c, &r2, &one("1")).await;
    s.probe.assert_upstream(&c, &sum, &one("1")).await;
    assert_eq!(metric(&s, "granularity=\"row\"") - rows0, 1.0);
    assert_eq!(metric(&s, "granularity=\"table\"") - table0, 0.0);
}

fn metric(s: &CacheStack, label: &str) -> f64 {
    s.proxy
        .admin_get("/metrics")
        .lines()
        .filter(|l| l.starts_with("pgmemo_cache_invalidations_total{") && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Executions of the prepared point read, whatever its parameters.
async fn prepared_calls(s: &CacheStack) -> i64 {
    s.probe.calls_matching("FROM acct WHERE id = $1").await
}

#[tokio::test]
async fn text_binary_and_literal_forms_of_a_key_are_one_row() {
    let s = stack().await;
    let c = s.session(SUPERUSER).await;
    let read = c
        .prepare_typed(
            "SELECT v FROM acct WHERE id = $1",
            &[tokio_postgres::types::Type::INT4],
        )
        .await
        .unwrap();
    let v = |row: &tokio_postgres::Row| row.get::<_, i32>(0);
    // Binary int4 parameters: a miss, then a hit, for rows 1 and 3.
    for id in [1i32, 3] {
        let before = prepared_calls(&s).await;
        assert_eq!(v(&c.query_one(&read, &[&id]).await.unwrap()), 0);
        assert_eq!(v(&c.query_one(&read, &[&id]).await.unwrap()), 0);
        assert_eq!(
            prepared_calls(&s).await - before,
            1,
            "row {id}: one miss, one hit"
        );
    }
    // Row 3 written with a string literal spelling the key another way.
    simple(&c, "UPDATE acct SET v = v + 7 WHERE id = '003'").await;
    let before = prepared_calls(&s).await;
    assert_eq!(
        v(&c.query_one(&read, &[&1i32]).await.unwrap()),
        0,
        "row 1 untouched"
    );
    assert_eq!(prepared_calls(&s).await - before, 0, "row 1 still a hit");
    assert_eq!(
        v(&c.query_one(&read, &[&3i32]).await.unwrap()),
        7,
        "row 3 fresh"
    );
    assert_eq!(prepared_calls(&s).await - before, 1, "row 3 missed");

    // And the other way: a prepared write with a text parameter, read by a literal.
    let lit = s.probe.q("SELECT v FROM acct WHERE id = 4", None).await;
    s.probe.assert_upstream(&c, &lit, &one("0")).await;
    s.probe.assert_hit(&c, &lit, &one("0")).await;
    let write = c
        .prepare("UPDATE acct SET v = v + 1 WHERE id = $1::text::int")
        .await
        .unwrap();
    // `$1::text::int` is not a bare parameter: a write pgmemo cannot pin, table-wide.
    c.execute(&write, &[&"4"]).await.unwrap();
    s.probe.assert_upstream(&c, &lit, &one("1")).await;
    let write = c
        .prepare("UPDATE acct SET v = v + 1 WHERE id = $1")
        .await
        .unwrap();
    c.execute(&write, &[&4i32]).await.unwrap();
    s.probe.assert_upstream(&c, &lit, &one("2")).await;
}

#[tokio::test]
async fn writes_with_unknown_rows_refresh_every_pinned_read() {
    let s = stack().await;
    let c = s.session(SUPERUSER).await;
    let r1 = s.probe.q("SELECT v FROM acct WHERE id = 1", None).await;
    let mut want = 0;
    for write in [
        "UPDATE acct SET v = v + 1 WHERE id BETWEEN 1 AND 2",
        "UPDATE acct SET v = v + 1",
        "INSERT INTO acct (id, v) SELECT id, v + 1 FROM acct WHERE id = 1 \
         ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v",
        "UPDATE acct SET id = id, v = v + 1 WHERE id = 1",
        "UPDATE acct SET v = v + 1 WHERE id = 1 OR id = 99",
    ] {
        if want == 0 {
            s.probe.assert_upstream(&c, &r1, &one("0")).await;
        }
        s.probe.assert_hit(&c, &r1, &one(&want.to_string())).await;
        simple(&c, write).await;
        want += 1;
        let fresh = one(&want.to_string());
        s.probe.assert_upstream(&c, &r1, &fresh).await;
    }
}

#[tokio::test]
async fn inserted_and_moved_rows_refresh_reads_of_their_keys() {
    let s = stack().await;
    let c = s.session(SUPERUSER).await;
    let r10 = s.probe.q("SELECT v FROM acct WHERE id = 10", None).await;
    let r20 = s.probe.q("SELECT v FROM acct WHERE id = 20", None).await;
    let r1 = s.probe.q("SELECT v FROM acct WHERE id = 1", None).await;
    let none = column("v", &[]);
    for q in [&r10, &r20] {
        s.probe.assert_upstream(&c, q, &none).await;
        s.probe.assert_hit(&c, q, &none).await;
    }
    s.probe.assert_upstream(&c, &r1, &one("0")).await;
    simple(&c, "INSERT INTO acct (v, id) VALUES (5, 10)").await;
    s.probe.assert_upstream(&c, &r10, &one("5")).await;
    s.probe.assert_hit(&c, &r1, &one("0")).await;
    // A key-assigning UPDATE moves row 10 to 20: table-wide.
    simple(&c, "UPDATE acct SET id = 20 WHERE id = 10").await;
    s.probe.assert_upstream(&c, &r10, &none).await;
    s.probe.assert_upstream(&c, &r20, &one("5")).await;
    s.probe.assert_upstream(&c, &r1, &one("0")).await;
    simple(&c, "DELETE FROM acct WHERE id = 20").await;
    s.probe.assert_upstream(&c, &r20, &none).await;
    s.probe.assert_hit(&c, &r1, &one("0")).await;
}

#[tokio::test]
async fn triggers_and_cascades_into_the_table_are_table_wide() {
    let s = stack().await;
    let c = s.session(SUPERUSER).await;
    // The trigger on `trig` updates the other row.
    let t1 = s.probe.q("SELECT v FROM trig WHERE id = 1", None).await;
    s.probe.assert_upstream(&c, &t1, &one("0")).await;
    s.probe.assert_hit(&c, &t1, &one("0")).await;
    simple(&c, "UPDATE trig SET v = v + 1 WHERE id = 2").await;
    s.probe.assert_upstream(&c, &t1, &one("100")).await;
    // Deleting row 1 of `tree` cascades to row 2.
    let t2 = s.probe.q("SELECT v FROM tree WHERE id = 2", None).await;
    s.probe.assert_upstream(&c, &t2, &one("2")).await;
    s.probe.assert_hit(&c, &t2, &one("2")).await;
    simple(&c, "DELETE FROM tree WHERE id = 1").await;
    s.probe.assert_upstream(&c, &t2, &column("v", &[])).await;
    // A generated key moves when what it is computed from is updated.
    let g20 = s.probe.q("SELECT a FROM gen WHERE id = 20", None).await;
    s.probe.assert_upstream(&c, &g20, &column("a", &[])).await;
    s.probe.assert_hit(&c, &g20, &column("a", &[])).await;
    simple(&c, "UPDATE gen SET a = 2 WHERE id = 10").await;
    s.probe
        .assert_upstream(&c, &g20, &column("a", &["2"]))
        .await;
}

#[tokio::test]
async fn composite_keys_pin_whole_keys_only() {
    let s = stack().await;
    let c = s.session(SUPERUSER).await;
    let x = s
        .probe
        .q("SELECT v FROM pair WHERE a = 1 AND b = 'x'", None)
        .await;
    let half = s
        .probe
        .q("SELECT sum(v)::int AS v FROM pair WHERE a = 1", None)
        .await;
    s.probe.assert_upstream(&c, &x, &one("0")).await;
    s.probe.assert_upstream(&c, &half, &one("0")).await;
    simple(&c, "UPDATE pair SET v = v + 1 WHERE (a, b) = (1, 'y')").await;
    s.probe.assert_hit(&c, &x, &one("0")).await;
    s.probe.assert_upstream(&c, &half, &one("1")).await;
    simple(&c, "UPDATE pair SET v = v + 1 WHERE b = 'x' AND a = 1").await;
    s.probe.assert_upstream(&c, &x, &one("1")).await;
}

/// Direct writes (not through pgmemo) seen by change data capture: a write to row 2 is
/// applied to row 2 only, a key-changing UPDATE to both its keys, with either plugin. The
/// server runs with `synchronous_commit = off` (see `cdc`); only the order of events is
/// asserted here, not latencies.
async fn direct_writes_are_bumped_by_row(s: &CacheStack) {
    wait_streaming(&s.proxy).await;
    let c = s.session(SUPERUSER).await;
    let r1 = s.probe.q("SELECT v FROM acct WHERE id = 1", None).await;
    let none = column("v", &[]);
    let reads = [
        ("SELECT v FROM acct WHERE id = 1", one("0")),
        ("SELECT v FROM acct WHERE id = 2", one("0")),
        ("SELECT v FROM acct WHERE id = 3", one("0")),
        ("SELECT v FROM acct WHERE id = 30", none.clone()),
    ];
    for (sql, want) in &reads {
        let q = s.probe.q(sql, None).await;
        s.probe
            .eventually_hit(&c, &q, want, std::time::Duration::from_secs(5))
            .await;
    }
    let rows0 = metric(s, "granularity=\"row\"");
    s.direct_sql("UPDATE acct SET v = 5 WHERE id = 2");
    until_new_answer(&c, reads[1].0, &one("0"), &one("5"), CDC_BOUND).await;
    s.probe.assert_hit(&c, &r1, &one("0")).await;
    s.direct_sql("UPDATE acct SET id = 30 WHERE id = 3");
    until_new_answer(&c, reads[3].0, &none, &one("0"), CDC_BOUND).await;
    until_new_answer(&c, reads[2].0, &one("0"), &none, CDC_BOUND).await;
    s.probe.assert_hit(&c, &r1, &one("0")).await;
    assert!(
        metric(s, "granularity=\"row\"") - rows0 >= 3.0,
        "the stream bumped rows"
    );
}

#[tokio::test]
async fn direct_writes_seen_by_test_decoding_are_bumped_by_row() {
    let s = CacheStack::start(SETUP, &cdc_config("")).await;
    direct_writes_are_bumped_by_row(&s).await;
}

#[tokio::test]
async fn direct_writes_seen_by_pgoutput_are_bumped_by_row() {
    let pg = PgServer::start(PgOptions::default().hba_line("host all all 127.0.0.1/32 trust"));
    pg.psql(DB, SETUP);
    pg.psql(DB, "CREATE PUBLICATION mine FOR TABLE acct");
    let s = CacheStack::start_on(pg, &cdc_config("cdc_publication = \"mine\"")).await;
    direct_writes_are_bumped_by_row(&s).await;
}

/// With `REPLICA IDENTITY FULL` the stream does not say which key an UPDATE had: a direct
/// write to one row refreshes every read of the table.
#[tokio::test]
async fn without_a_default_replica_identity_direct_writes_are_table_wide() {
    let s = CacheStack::start(
        &format!("{SETUP}\nALTER TABLE acct REPLICA IDENTITY FULL;"),
        &cdc_config(""),
    )
    .await;
    wait_streaming(&s.proxy).await;
    let c = s.session(SUPERUSER).await;
    let r1 = s.probe.q("SELECT v FROM acct WHERE id = 1", None).await;
    s.probe
        .eventually_hit(&c, &r1, &one("0"), std::time::Duration::from_secs(5))
        .await;
    let r2 = "SELECT v FROM acct WHERE id = 2";
    assert_eq!(simple(&c, r2).await, one("0"));
    s.direct_sql("UPDATE acct SET v = 5 WHERE id = 2");
    until_new_answer(&c, r2, &one("0"), &one("5"), CDC_BOUND).await;
    s.probe.assert_upstream(&c, &r1, &one("0")).await;
}

/// A text key is compared as the bytes PostgreSQL stores. A session whose client encoding is
/// LATIN1 sends `é` as the byte the server reads as `Ã©` (here the UTF-8 bytes of `é`, read as
/// two LATIN1 characters): its write must refresh the UTF-8 reader of `'Ã©'`, although the bytes
/// it sent for the key are not the bytes of the row's key. Row precision is off for text keys in
/// such a session: the write is table-wide.
#[tokio::test]
async fn a_text_key_written_from_a_latin1_session_refreshes_utf8_readers() {
    let s = stack().await;
    let reader = s.session(SUPERUSER).await;
    let q = s
        .probe
        .q("SELECT v FROM names WHERE name = 'Ã©'", None)
        .await;
    s.probe.assert_upstream(&reader, &q, &one("0")).await;
    s.probe.assert_hit(&reader, &q, &one("0")).await;
    let writer = s.session(SUPERUSER).await;
    simple(&writer, "SET client_encoding = 'LATIN1'").await;
    simple(&writer, "UPDATE names SET v = v + 1 WHERE name = 'é'").await;
    s.probe.assert_upstream(&reader, &q, &one("1")).await;
}
