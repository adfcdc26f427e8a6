//! Read-your-writes after a table and a view over it are dropped and re-created directly on
//! PostgreSQL (issue 15 item 7). The catalog poll is set to an hour, so nothing but pgmemo's
//! own handling of the write can make the next read fresh: a write whose name resolves to the
//! new table while a memoised read plan still names the old one (or the reverse) must never
//! be followed by a stale read, with change data capture off and on.

#[path = "support/cdc.rs"]
mod cdc;
mod common;
#[path = "support/cache_probe.rs"]
mod probe;

use std::time::{Duration, Instant};

use common::SUPERUSER;
use probe::{CacheStack, DB, Q, simple, simple_err, table};
use tokio_postgres::Client;

const SETUP: &str = "
CREATE TABLE acct(id int PRIMARY KEY, v int NOT NULL);
INSERT INTO acct VALUES (1, 1);
CREATE VIEW acct_v AS SELECT id, v FROM acct;
CREATE TABLE acct2(id int PRIMARY KEY, v int NOT NULL);
INSERT INTO acct2 VALUES (1, 1);
CREATE VIEW acct2_v AS SELECT id, v FROM acct2;
CREATE TABLE acct3(id int PRIMARY KEY, v int NOT NULL);
INSERT INTO acct3 VALUES (1, 1);
CREATE VIEW acct3_v AS SELECT id, v FROM acct3;
CREATE TABLE base(id int PRIMARY KEY, v int NOT NULL);
";

fn recreate(name: &str) -> String {
    format!(
        "DROP VIEW {name}_v; DROP TABLE {name}; \
         CREATE TABLE {name}(id int PRIMARY KEY, v int NOT NULL); \
         INSERT INTO {name} VALUES (1, 10); \
         CREATE VIEW {name}_v AS SELECT id, v FROM {name};"
    )
}

/// The cache tests' config with the catalog poll out of the way; `rest` after it.
fn config(rest: &str) -> String {
    format!("[cache]\nttl = \"60s\"\n\n[catalog]\npoll_interval = \"1h\"\n\n{rest}\n")
}

fn row(v: &str) -> Vec<common::compare::SimpleMsg> {
    table(&["id", "v"], &[&["1", v]])
}

/// The write resolves the table's name afresh (new OID) while the view's read plan is
/// memoised with the old OIDs.
async fn fresh_write_after_memoised_read(s: &CacheStack) {
    let (c, other) = (s.session(SUPERUSER).await, s.session(SUPERUSER).await);
    let q = s
        .probe
        .q("SELECT id, v FROM acct_v ORDER BY id", None)
        .await;
    s.probe
        .eventually_hit(&c, &q, &row("1"), Duration::from_secs(5))
        .await;
    s.direct_sql(&recreate("acct"));
    simple(&c, "UPDATE acct SET v = 20 WHERE id = 1").await;
    assert_eq!(
        simple(&c, &q.sql).await,
        row("20"),
        "the writer's next read"
    );
    assert_eq!(simple(&other, &q.sql).await, row("20"), "any read after it");
}

/// The write's plan is memoised with the old OID while a read resolves the view afresh
/// (new OIDs) and caches its result before the write.
async fn memoised_write_after_fresh_read(s: &CacheStack) {
    let c = s.session(SUPERUSER).await;
    let write = "UPDATE acct2 SET v = v + 1 WHERE id = 1";
    simple(&c, write).await;
    let old = s
        .probe
        .q("SELECT id, v FROM acct2_v ORDER BY id", None)
        .await;
    s.probe
        .eventually_hit(&c, &old, &row("2"), Duration::from_secs(5))
        .await;
    recreate_then_write(s, &c, "acct2", write, &old).await;
}

/// `name` and its view dropped and re-created directly; a read of the view under a qualified
/// name (one this session's memos never resolved) is cached, then `write` (memoised with the
/// old OID) runs: the writer's next reads, through either text, see it.
async fn recreate_then_write(s: &CacheStack, c: &Client, name: &str, write: &str, old: &Q) {
    s.direct_sql(&recreate(name));
    let q = s
        .probe
        .q(
            &format!("SELECT id, v FROM public.{name}_v ORDER BY id"),
            None,
        )
        .await;
    s.probe
        .eventually_hit(c, &q, &row("10"), Duration::from_secs(5))
        .await;
    simple(c, write).await;
    assert_eq!(simple(c, &q.sql).await, row("11"), "the writer's next read");
    assert_eq!(
        simple(c, &old.sql).await,
        row("11"),
        "through the first text"
    );
}

/// The write's memoised plan (old OID) is in flight, its transaction open, when another
/// session's read resolves the view afresh, finds the name moved and caches what it reads
/// before the write commits: the commit must not leave that entry reachable.
async fn write_in_flight_while_a_read_finds_the_name_moved(s: &CacheStack) {
    let (c, r) = (s.session(SUPERUSER).await, s.session(SUPERUSER).await);
    let write = "UPDATE acct3 SET v = v + 1 WHERE id = 1";
    simple(&c, write).await;
    let old = s
        .probe
        .q("SELECT id, v FROM acct3_v ORDER BY id", None)
        .await;
    s.probe
        .eventually_hit(&c, &old, &row("2"), Duration::from_secs(5))
        .await;
    s.direct_sql(&recreate("acct3"));
    simple(&c, "BEGIN").await;
    simple(&c, write).await;
    let q = s
        .probe
        .q("SELECT id, v FROM public.acct3_v ORDER BY id", None)
        .await;
    s.probe
        .eventually_hit(&r, &q, &row("10"), Duration::from_secs(5))
        .await;
    simple(&c, "COMMIT").await;
    assert_eq!(
        simple(&c, &q.sql).await,
        row("11"),
        "the writer's next read"
    );
    assert_eq!(
        simple(&r, &q.sql).await,
        row("11"),
        "the reader's next read"
    );
}

/// Names pgmemo first met while nothing carried them (so it tracks them as absent), then
/// created directly: the names' first relations are only recorded (nothing memoised could
/// name a relation that did not exist), but a drop and re-create after that must still be
/// caught before the writer's next read.
async fn created_directly_then_recreated(s: &CacheStack) {
    let c = s.session(SUPERUSER).await;
    let write = "UPDATE late SET v = v + 1 WHERE id = 1";
    simple_err(&c, "SELECT id, v FROM late_v ORDER BY id").await;
    simple_err(&c, write).await;
    let absent_at = Instant::now();
    s.direct_sql(
        "CREATE TABLE late(id int PRIMARY KEY, v int NOT NULL); \
         INSERT INTO late VALUES (1, 1); \
         CREATE VIEW late_v AS SELECT id, v FROM late;",
    );
    let old = s
        .probe
        .q("SELECT id, v FROM late_v ORDER BY id", None)
        .await;
    // The negative answers are believed for catalog::NEGATIVE_TTL (5 s).
    s.probe
        .eventually_hit(&c, &old, &row("1"), Duration::from_secs(10))
        .await;
    // Past the write's own negative answer too: its plan is made now, naming the first
    // relation, and memoised (the hazard: it is still used after the re-create).
    let negative_over = absent_at + Duration::from_millis(5_500);
    tokio::time::sleep_until(negative_over.into()).await;
    let epochs = s.metric("pgmemo_cache_epoch_bumps_total");
    simple(&c, write).await;
    assert_eq!(
        s.metric("pgmemo_cache_epoch_bumps_total"),
        epochs,
        "a write to a table that now exists bumps its table, not the whole cache"
    );
    s.probe
        .eventually_hit(&c, &old, &row("2"), Duration::from_secs(5))
        .await;
    recreate_then_write(s, &c, "late", write, &old).await;
}

#[tokio::test]
async fn writes_after_a_direct_drop_and_recreate_are_read_back_with_cdc_off() {
    let s = CacheStack::start(SETUP, &config("")).await;
    fresh_write_after_memoised_read(&s).await;
    memoised_write_after_fresh_read(&s).await;
    write_in_flight_while_a_read_finds_the_name_moved(&s).await;
    created_directly_then_recreated(&s).await;
}

#[tokio::test]
async fn writes_after_a_direct_drop_and_recreate_are_read_back_with_cdc_on() {
    let s = CacheStack::start(
        SETUP,
        &config(&format!(
            "[invalidation]\ncdc = \"on\"\ncdc_databases = [\"{DB}\"]\n"
        )),
    )
    .await;
    cdc::wait_streaming(&s.proxy).await;
    fresh_write_after_memoised_read(&s).await;
    memoised_write_after_fresh_read(&s).await;
    write_in_flight_while_a_read_finds_the_name_moved(&s).await;
    created_directly_then_recreated(&s).await;
}

/// A table created through pgmemo, then a statement over it prepared and run (asyncpg's
/// `executemany` does exactly this): the statement is planned once. The new name is only
/// recorded when the prepare resolves it; signalling it as moved dropped the plan being
/// made, so the first Bind planned again and held the client's pipeline meanwhile (asyncpg's
/// "server failure during writes" test then wrote its whole batch before the error came
/// back), and every CREATE TABLE recomputed every memo twice.
#[tokio::test]
async fn a_table_created_through_pgmemo_costs_its_statements_one_plan() {
    let s = CacheStack::start(SETUP, &config("")).await;
    let c = s.session(SUPERUSER).await;
    for i in 0..3 {
        simple(
            &c,
            &format!("CREATE TABLE fresh{i}(id int PRIMARY KEY, v int NOT NULL) INHERITS (base)"),
        )
        .await;
        let before = s.metric("pgmemo_statement_plans_total");
        let insert = c
            .prepare(&format!("INSERT INTO fresh{i} (id, v) VALUES ($1, $2)"))
            .await
            .expect("prepare");
        for id in 0..3 {
            c.execute(&insert, &[&id, &1i32]).await.expect("insert");
        }
        let plans = s.metric("pgmemo_statement_plans_total") - before;
        assert_eq!(
            plans, 1.0,
            "plans for fresh{i}'s INSERT (prepared once, run 3 times)"
        );
    }
}
