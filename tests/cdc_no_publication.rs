//! Nothing pgmemo creates may make a client statement fail (issue 16, item 1). Change data
//! capture without a publication: the default stream uses `test_decoding`, so a table
//! created later without a primary key still accepts UPDATE and DELETE (through pgmemo and
//! directly) while its direct writes still invalidate through the stream; no publication is
//! ever created and no slot outlives pgmemo. A publication the user names is still followed
//! with `pgoutput`; a missing one falls back (`auto`) or is refused (`on`); a `pgmemo`
//! publication left by an earlier version is reported once with the command that removes
//! it, and neither used nor dropped. And the `test_decoding` parser against the lines a real
//! server prints for awkward names.
//!
//! The harness runs PostgreSQL with `synchronous_commit = off` (`tests/common/pg.rs`): the
//! latencies here include the WAL writer's flush delay (see `support/cdc.rs`).

#[path = "support/cdc.rs"]
mod cdc;
mod common;
#[path = "support/cache_probe.rs"]
mod probe;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use cdc::{
    CDC_BOUND, START_BOUND, assert_measures_asynchronous_commit, cdc_config, cdc_state, wait_state,
    wait_streaming,
};
use common::{PgOptions, PgServer, SUPERUSER};
use pgmemo::cdc::test_decoding::{Collector, NamedTxn, QualifiedName};
use pgmemo::cdc::wire::Lsn;
use probe::{CacheStack, DB, config, simple, until_new_answer};

const SETUP: &str = "
CREATE TABLE t(id int PRIMARY KEY, v int NOT NULL);
INSERT INTO t SELECT g, g FROM generate_series(1, 10) g;
";

async fn strings(client: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    client
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The epoch bumps counted for `cause`.
fn epoch_bumps(s: &CacheStack, cause: &str) -> f64 {
    s.proxy
        .admin_get("/metrics")
        .lines()
        .filter(|l| {
            l.starts_with("pgmemo_cache_epoch_bumps_total{") && l.contains(&format!("\"{cause}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn publications(s: &CacheStack) -> Vec<String> {
    strings(
        &s.probe.client,
        "SELECT pubname::text FROM pg_publication ORDER BY 1",
    )
    .await
}

async fn slot_plugins(s: &CacheStack) -> Vec<String> {
    strings(
        &s.probe.client,
        "SELECT plugin::text FROM pg_replication_slots ORDER BY 1",
    )
    .await
}

/// A cached read of `read` through `c` shows what a direct `write` did within the CDC
/// bound (the read was a hit first, so only an invalidation explains the new answer).
async fn direct_write_seen(s: &CacheStack, c: &tokio_postgres::Client, read: &str, write: &str) {
    let q = s.probe.q(read, None).await;
    let before = simple(&s.probe.client, read).await;
    s.probe
        .eventually_hit(c, &q, &before, Duration::from_secs(5))
        .await;
    s.probe
        .client
        .batch_execute(write)
        .await
        .unwrap_or_else(|e| panic!("{write} directly: {e}"));
    let after = simple(&s.probe.client, read).await;
    assert_ne!(before, after, "{write} must change {read}");
    let took = until_new_answer(c, read, &before, &after, CDC_BOUND).await;
    println!("{write}: seen through pgmemo after {took:?}");
}

#[tokio::test]
async fn a_table_without_a_primary_key_created_later_keeps_its_updates_and_deletes() {
    let mut s = CacheStack::start(SETUP, &cdc_config("")).await;
    wait_streaming(&s.proxy).await;
    assert_measures_asynchronous_commit(&s.probe.client).await;
    let c = s.session(SUPERUSER).await;
    // Created after the stream started: through pgmemo, and directly.
    simple(&c, "CREATE TABLE via_pgmemo(k int, v int)").await;
    s.direct_sql("CREATE TABLE direct(k int, v int)");
    for table in ["via_pgmemo", "direct"] {
        simple(
            &c,
            &format!("INSERT INTO {table} VALUES (1, 1), (2, 2), (3, 3)"),
        )
        .await;
        // On PostgreSQL with a FOR ALL TABLES publication these fail ("cannot update table
        // ... because it does not have a replica identity and publishes updates").
        simple(&c, &format!("UPDATE {table} SET v = 10 WHERE k = 1")).await;
        simple(&c, &format!("DELETE FROM {table} WHERE k = 1")).await;
        s.probe
            .client
            .batch_execute(&format!(
                "UPDATE {table} SET v = 20 WHERE k = 2; DELETE FROM {table} WHERE k = 2"
            ))
            .await
            .unwrap_or_else(|e| panic!("direct UPDATE/DELETE on {table}: {e}"));
        // Its direct writes still reach the cache through the stream.
        let read = format!("SELECT count(*), sum(v) FROM {table}");
        direct_write_seen(&s, &c, &read, &format!("UPDATE {table} SET v = v + 100")).await;
        direct_write_seen(&s, &c, &read, &format!("DELETE FROM {table} WHERE k = 3")).await;
    }
    // Writes to a table that existed before are invalidated by OID, not by flushing the
    // whole cache.
    let unresolved = epoch_bumps(&s, "cdc_unresolved");
    direct_write_seen(
        &s,
        &c,
        "SELECT v FROM t WHERE id = 1",
        "UPDATE t SET v = 5 WHERE id = 1",
    )
    .await;
    assert_eq!(
        epoch_bumps(&s, "cdc_unresolved"),
        unresolved,
        "a table observed before the write is bumped by its OID: {}",
        s.proxy
            .stderr()
            .lines()
            .filter(|l| l.contains("not certain"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // pgmemo created no publication; its slot is a test_decoding one.
    assert_eq!(publications(&s).await, Vec::<String>::new());
    assert_eq!(slot_plugins(&s).await, vec!["test_decoding".to_owned()]);

    s.proxy.signal(common::Signal::Term);
    s.proxy.wait_exit(Duration::from_secs(30));
    let started = Instant::now();
    while !slot_plugins(&s).await.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a replication slot outlived pgmemo"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(publications(&s).await, Vec::<String>::new());
}

#[tokio::test]
async fn a_publication_the_user_names_is_followed_with_pgoutput() {
    let pg = PgServer::start(PgOptions::default().hba_line("host all all 127.0.0.1/32 trust"));
    pg.psql(DB, SETUP);
    pg.psql(DB, "CREATE PUBLICATION mine FOR TABLE t");
    let s = CacheStack::start_on(pg, &cdc_config("cdc_publication = \"mine\"")).await;
    wait_streaming(&s.proxy).await;
    assert_eq!(slot_plugins(&s).await, vec!["pgoutput".to_owned()]);
    let c = s.session(SUPERUSER).await;
    direct_write_seen(
        &s,
        &c,
        "SELECT v FROM t WHERE id = 1",
        "UPDATE t SET v = 7 WHERE id = 1",
    )
    .await;
    assert_eq!(publications(&s).await, vec!["mine".to_owned()]);
}

#[tokio::test]
async fn a_missing_named_publication_falls_back_with_auto_and_is_refused_with_on() {
    let auto = config(
        "",
        &format!(
            "[invalidation]\ncdc = \"auto\"\ncdc_databases = [\"{DB}\"]\n\
             cdc_publication = \"absent\"\n"
        ),
    );
    let s = CacheStack::start(SETUP, &auto).await;
    wait_streaming(&s.proxy).await;
    assert_eq!(slot_plugins(&s).await, vec!["test_decoding".to_owned()]);
    let stderr = s.proxy.stderr();
    assert_eq!(
        stderr
            .matches("named in invalidation.cdc_publication does not exist")
            .count(),
        1,
        "one warning: {stderr}"
    );
    let c = s.session(SUPERUSER).await;
    direct_write_seen(
        &s,
        &c,
        "SELECT v FROM t WHERE id = 1",
        "UPDATE t SET v = 7 WHERE id = 1",
    )
    .await;
    drop(s);

    let s = CacheStack::start(SETUP, &cdc_config("cdc_publication = \"absent\"")).await;
    let started = Instant::now();
    while !s.proxy.stderr().contains("pgmemo never creates one") {
        assert!(started.elapsed() < START_BOUND, "{}", s.proxy.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(cdc_state(&s.proxy).as_deref(), Some("streaming"));
    assert_eq!(publications(&s).await, Vec::<String>::new());
}

#[tokio::test]
async fn a_publication_left_by_an_earlier_version_is_reported_once_and_left_alone() {
    let pg = PgServer::start(PgOptions::default().hba_line("host all all 127.0.0.1/32 trust"));
    pg.psql(DB, SETUP);
    pg.psql(DB, "CREATE PUBLICATION pgmemo FOR ALL TABLES");
    let s = CacheStack::start_on(pg, &cdc_config("")).await;
    wait_streaming(&s.proxy).await;
    // Not used...
    assert_eq!(slot_plugins(&s).await, vec!["test_decoding".to_owned()]);
    // ...and reported once, also across a reconnect.
    s.direct_sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_replication \
         WHERE application_name = 'pgmemo-cdc'",
    );
    let started = Instant::now();
    while s.metric("pgmemo_cdc_reconnects_total") < 1.0 {
        assert!(started.elapsed() < START_BOUND, "no reconnect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_state(&s.proxy, "streaming", START_BOUND).await;
    let stderr = s.proxy.stderr();
    assert_eq!(
        stderr.matches("DROP PUBLICATION pgmemo;").count(),
        1,
        "one warning with the command: {stderr}"
    );
    assert!(
        stderr.contains("earlier pgmemo version created it"),
        "{stderr}"
    );
    // ...and not dropped: it is the user's to remove.
    assert_eq!(publications(&s).await, vec!["pgmemo".to_owned()]);
}

fn names(list: &[(&str, &str)]) -> BTreeSet<QualifiedName> {
    list.iter().map(|(s, n)| QualifiedName::new(s, n)).collect()
}

#[tokio::test]
async fn test_decoding_lines_of_a_real_server_parse_to_the_tables_each_transaction_wrote() {
    let pg = PgServer::start(PgOptions::default().setting("wal_level", "logical"));
    let c = pg.connect(SUPERUSER, "", DB).await;
    c.batch_execute(
        "CREATE SCHEMA \"My Schema\";
         CREATE TABLE \"My Schema\".\"a.b: c\"(id int);
         CREATE TABLE public.\"x\"\"y\"(id int);
         CREATE TABLE public.\"user\"(id int);
         CREATE TABLE public.\"Tée, 1\"(id int);
         CREATE TABLE plain(id int PRIMARY KEY, v text);
         CREATE TABLE part(k int, v int) PARTITION BY RANGE (k);
         CREATE TABLE part_1 PARTITION OF part FOR VALUES FROM (0) TO (100);",
    )
    .await
    .unwrap();
    c.batch_execute("SELECT pg_create_logical_replication_slot('t', 'test_decoding')")
        .await
        .unwrap();
    for sql in [
        "INSERT INTO \"My Schema\".\"a.b: c\" VALUES (1)",
        "BEGIN; INSERT INTO \"x\"\"y\" VALUES (1); INSERT INTO \"user\" VALUES (2); \
         INSERT INTO \"Tée, 1\" VALUES (1); COMMIT",
        "INSERT INTO plain VALUES (1, 'a: b'), (2, 'table public.other: INSERT:')",
        "UPDATE plain SET v = 'x' WHERE id = 1",
        "DELETE FROM plain WHERE id = 2",
        "INSERT INTO part VALUES (5, 5)",
        "BEGIN; INSERT INTO plain VALUES (9, 'rolled back'); ROLLBACK",
        "SELECT pg_logical_emit_message(false, 'p', 'not a change')",
        "TRUNCATE plain, \"My Schema\".\"a.b: c\", \"x\"\"y\"",
    ] {
        c.batch_execute(sql).await.unwrap();
    }
    let rows = c
        .query(
            "SELECT lsn::text, data FROM pg_logical_slot_get_changes('t', NULL, NULL, \
             'include-xids', '0', 'include-timestamp', 'on', 'skip-empty-xacts', 'on')",
            &[],
        )
        .await
        .unwrap();
    let mut collector = Collector::default();
    let mut txns: Vec<NamedTxn> = Vec::new();
    for row in &rows {
        let lsn: Lsn = row.get::<_, &str>(0).parse().unwrap();
        let data: &str = row.get(1);
        txns.extend(collector.feed(lsn, data.as_bytes()));
    }
    // The non-transactional message arrives as a transaction of its own only if it does
    // not parse; it does, so it is not there.
    let sets: Vec<BTreeSet<QualifiedName>> = txns.iter().map(|t| t.tables.clone()).collect();
    let want = vec![
        names(&[("My Schema", "a.b: c")]),
        names(&[("public", "x\"y"), ("public", "user"), ("public", "Tée, 1")]),
        names(&[("public", "plain")]),
        names(&[("public", "plain")]),
        names(&[("public", "plain")]),
        // The leaf partition, not its parent: the OID's writes reach the parent.
        names(&[("public", "part_1")]),
        names(&[
            ("public", "plain"),
            ("My Schema", "a.b: c"),
            ("public", "x\"y"),
        ]),
    ];
    assert_eq!(sets, want, "tables per committed transaction: {txns:?}");
    assert!(txns.iter().all(|t| !t.overflowed), "{txns:?}");
    assert!(
        txns.iter().all(|t| t.committed_at > 0),
        "commit times parsed: {txns:?}"
    );
    assert!(txns.iter().all(|t| t.first_lsn < t.end_lsn));
    assert!(txns.windows(2).all(|w| w[0].end_lsn <= w[1].first_lsn));
    c.batch_execute("SELECT pg_drop_replication_slot('t')")
        .await
        .unwrap();
}
