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

use std::time::Duration;

use common::SUPERUSER;
use probe::{CacheStack, DB, simple, table};

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
    s.direct_sql(&recreate("acct2"));
    // Qualified: a name this session's memos never resolved.
    let q = s
        .probe
        .q("SELECT id, v FROM public.acct2_v ORDER BY id", None)
        .await;
    s.probe
        .eventually_hit(&c, &q, &row("10"), Duration::from_secs(5))
        .await;
    simple(&c, write).await;
    assert_eq!(
        simple(&c, &q.sql).await,
        row("11"),
        "the writer's next read"
    );
    assert_eq!(
        simple(&c, &old.sql).await,
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

#[tokio::test]
async fn writes_after_a_direct_drop_and_recreate_are_read_back_with_cdc_off() {
    let s = CacheStack::start(SETUP, &config("")).await;
    fresh_write_after_memoised_read(&s).await;
    memoised_write_after_fresh_read(&s).await;
    write_in_flight_while_a_read_finds_the_name_moved(&s).await;
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
}
