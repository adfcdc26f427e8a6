//! A write whose prepared statement's plan went stale (the catalog generation moved: a DDL
//! through pgmemo, a change the poller saw) is not held while pgmemo plans it again: the
//! Bind goes upstream at once, so a client pipelining many such writes sees an early error
//! while it is still sending, as it would without pgmemo (asyncpg's
//! `test_executemany_server_failure_during_writes`). It stays correct: its commit bumps the
//! epoch (what it writes may have changed with the catalog), the session's settings are
//! probed again (user code it may now run), and the next Bind uses the new plan.
//!
//! A relay between pgmemo and PostgreSQL (`support/gate.rs`) holds every answer on pgmemo's
//! catalog connections, so a plan cannot be computed while the write runs.

mod common;
#[path = "support/gate.rs"]
mod gate;
#[path = "support/cache_probe.rs"]
mod probe;

use std::time::Duration;

use common::{PgOptions, PgServer, Proxy, ProxyArgs, SUPERUSER};
use gate::Gate;
use tokio_postgres::Client;

const DB: &str = "postgres";

async fn count(c: &Client) -> i64 {
    c.query_one("SELECT count(*) FROM sw", &[])
        .await
        .expect("count")
        .get(0)
}

fn metric(proxy: &Proxy, name: &str) -> f64 {
    probe::metric_sum(&proxy.admin_get("/metrics"), name)
}

/// The plans computed so far, once no plan has been computed for 500 ms (a background one
/// done).
async fn settled_plans(proxy: &Proxy) -> f64 {
    let mut last = metric(proxy, "pgmemo_statement_plans_total");
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = metric(proxy, "pgmemo_statement_plans_total");
        if now == last {
            return now;
        }
        last = now;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_write_after_a_catalog_change_runs_without_waiting_for_a_new_plan() {
    let pg = PgServer::start(PgOptions::default());
    let gate = Gate::start(pg.addr()).await;
    let proxy = Proxy::start(
        ProxyArgs::new(gate.url(SUPERUSER, DB)).config("[catalog]\npoll_interval = \"1h\"\n"),
    );
    let c = proxy.connect(SUPERUSER, "", DB).await;
    let other = proxy.connect(SUPERUSER, "", DB).await;
    c.batch_execute("CREATE TABLE sw (id int PRIMARY KEY, v int NOT NULL)")
        .await
        .expect("create");
    let insert = c
        .prepare("INSERT INTO sw VALUES ($1, 1)")
        .await
        .expect("prepare");
    c.execute(&insert, &[&1i32]).await.expect("first insert");
    // Cached: a repeated read becomes a hit (within a few reads: the session's settings
    // probe, or the DDL's catalog change being applied, may make the first ones bypass
    // under load).
    let mut cached = false;
    for _ in 0..20 {
        let hits = metric(&proxy, "pgmemo_cache_hits_total");
        assert_eq!(count(&other).await, 1);
        if metric(&proxy, "pgmemo_cache_hits_total") > hits {
            cached = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(cached, "the count was not cached");

    // The catalog generation moves (a DDL through pgmemo), then nothing can be planned.
    other
        .batch_execute("CREATE TABLE sw_other (a int)")
        .await
        .expect("ddl");
    let probes = metric(&proxy, "pgmemo_session_probes_total");
    gate.hold_now("pgmemo-catalog");
    let ran = tokio::time::timeout(Duration::from_secs(5), c.execute(&insert, &[&2i32])).await;
    gate.release();
    ran.expect("the prepared INSERT waited for the catalog (a new plan) before it ran")
        .expect("second insert");

    // Its commit bumped the epoch: the cached count is not served.
    assert_eq!(count(&other).await, 2, "the other session's next read");
    assert_eq!(count(&c).await, 2, "the writer's next read");
    assert!(
        metric(&proxy, "pgmemo_session_probes_total") > probes,
        "the session's settings were not probed after a write run under a stale plan"
    );
    // Then the statement has a current plan again: a later run neither plans nor empties the
    // cache. (The run right after may still find the background plan in flight, or a new
    // session context after the probe, and plan once more.)
    c.execute(&insert, &[&3i32]).await.expect("third insert");
    let plans = settled_plans(&proxy).await;
    let epochs = metric(&proxy, "pgmemo_cache_epoch_bumps_total");
    c.execute(&insert, &[&4i32]).await.expect("fourth insert");
    assert_eq!(
        metric(&proxy, "pgmemo_statement_plans_total"),
        plans,
        "the fourth run planned again"
    );
    assert_eq!(
        metric(&proxy, "pgmemo_cache_epoch_bumps_total"),
        epochs,
        "the fourth run emptied the cache: it ran under a stale plan again"
    );
    assert_eq!(count(&other).await, 4);
}
