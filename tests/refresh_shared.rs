//! Refreshes with the shared tier on Redis (issue 19): a refresh stores to both levels, and
//! one instance at a time refreshes a key (a short lock in Redis), so N instances do not
//! each send the same refresh upstream. Write-through's refreshes are stored before the
//! writer's acknowledgement, within `refresh.time_budget`.

mod common;
#[path = "support/l2.rs"]
mod l2;
#[path = "support/wire.rs"]
mod wire;

use std::time::{Duration, Instant};

use common::{Proxy, RedisServer};
use l2::{eventually, instance, metric, read, session, usable, write};
use tokio::io::AsyncWriteExt;

fn refreshes(ps: &[&Proxy], cause: &str, result: &str) -> f64 {
    let (cause, result) = (format!("cause=\"{cause}\""), format!("result=\"{result}\""));
    ps.iter()
        .map(|p| metric(p, "pgmemo_refresh_total", &[&cause, &result]))
        .sum()
}

fn l2_hits(p: &Proxy) -> f64 {
    metric(p, "pgmemo_l2_lookups_total", &["\"hit\""])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_refresh_a_hot_key_once_between_them() {
    let redis = RedisServer::start();
    let pg = l2::postgres();
    let ttl = Duration::from_secs(3);
    let cfg = l2::config(
        &[redis.url()],
        "strict",
        "\n[[rules]]\ntable = \"kv\"\nttl = \"3s\"\nrefresh_ahead = 0.5\n",
    );
    let (a, b) = (instance(&pg, &cfg), instance(&pg, &cfg));
    usable(&a).await;
    usable(&b).await;
    let (ca, cb) = (session(&a).await, session(&b).await);
    assert_eq!(read(&ca, 1).await, 0);
    let stored = Instant::now();
    eventually(Duration::from_secs(5), "A's L2 write", || {
        metric(&a, "pgmemo_l2_writes_total", &["written"]) >= 1.0
    })
    .await;
    assert_eq!(read(&cb, 1).await, 0);
    assert_eq!(l2_hits(&b), 1.0, "B answered from A's entry in Redis");
    // A write pgmemo does not see: only a refresh (or the TTL) shows it.
    pg.psql(l2::DB, "UPDATE kv SET v = 7 WHERE k = 1");

    // Past the refresh point both instances' entries are hit: each claims a refresh.
    tokio::time::sleep((ttl / 2 + Duration::from_millis(100)).saturating_sub(stored.elapsed()))
        .await;
    assert_eq!(read(&ca, 1).await, 0);
    assert_eq!(read(&cb, 1).await, 0);
    eventually(Duration::from_secs(10), "both refreshes to end", || {
        refreshes(&[&a, &b], "ahead", "stored") + refreshes(&[&a, &b], "ahead", "busy") >= 2.0
    })
    .await;
    assert_eq!(refreshes(&[&a, &b], "ahead", "stored"), 1.0, "one refresh");
    assert_eq!(
        refreshes(&[&a, &b], "ahead", "busy"),
        1.0,
        "the other held back"
    );

    // Whichever refreshed stored to both levels: once the other's own entry expires, it
    // reads the refreshed one from Redis, not from PostgreSQL.
    tokio::time::sleep((ttl + Duration::from_millis(200)).saturating_sub(stored.elapsed())).await;
    let hits = l2_hits(&a) + l2_hits(&b);
    assert_eq!(read(&ca, 1).await, 7);
    assert_eq!(read(&cb, 1).await, 7);
    assert_eq!(
        l2_hits(&a) + l2_hits(&b),
        hits + 1.0,
        "the instance that did not refresh read the refresh from the L2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_through_refreshes_both_levels() {
    let redis = RedisServer::start();
    let pg = l2::postgres();
    let cfg = l2::config(
        &[redis.url()],
        "strict",
        "\n[[rules]]\ntable = \"kv\"\nwrite = \"through\"\n",
    );
    let (a, b) = (instance(&pg, &cfg), instance(&pg, &cfg));
    usable(&a).await;
    usable(&b).await;
    let (ca, cb) = (session(&a).await, session(&b).await);
    assert_eq!(read(&ca, 2).await, 0);
    eventually(Duration::from_secs(5), "A's L2 write", || {
        metric(&a, "pgmemo_l2_writes_total", &["written"]) >= 1.0
    })
    .await;
    assert_eq!(read(&cb, 2).await, 0);

    write(&ca, 2, 5).await;
    eventually(Duration::from_secs(10), "the write's refresh", || {
        refreshes(&[&a], "write", "stored") >= 1.0
    })
    .await;
    eventually(Duration::from_secs(5), "the refresh's L2 write", || {
        metric(&a, "pgmemo_l2_writes_total", &["written"]) >= 2.0
    })
    .await;
    let (misses_a, hits_b) = (metric(&a, "pgmemo_cache_misses_total", &[]), l2_hits(&b));
    assert_eq!(
        read(&ca, 2).await,
        5,
        "the writer's instance: the refreshed entry"
    );
    assert_eq!(
        metric(&a, "pgmemo_cache_misses_total", &[]),
        misses_a,
        "a hit on A"
    );
    assert_eq!(read(&cb, 2).await, 5, "the other instance: the new value");
    assert_eq!(
        l2_hits(&b),
        hits_b + 1.0,
        "from the refresh A stored in Redis"
    );
}

/// `extra` for [`l2::config`]: `kv` under write-through, with this `refresh.time_budget`.
fn through_on_kv(budget: &str) -> String {
    format!(
        "\n[[rules]]\ntable = \"kv\"\nwrite = \"through\"\n\n[refresh]\ntime_budget = \"{budget}\"\n"
    )
}

fn misses(p: &Proxy) -> f64 {
    metric(p, "pgmemo_cache_misses_total", &[])
}

/// `slow(x)`: `x` after `seconds`, declared immutable (pgmemo trusts the declaration), so
/// a read calling it is cached and a refresh of it takes that long.
fn create_slow(pg: &common::PgServer, seconds: f64) {
    pg.psql(
        l2::DB,
        &format!(
            "CREATE FUNCTION slow(x int) RETURNS int IMMUTABLE LANGUAGE plpgsql \
             AS $$ BEGIN PERFORM pg_sleep({seconds}); RETURN x; END $$;"
        ),
    );
}

/// `SELECT slow(v) AS v FROM kv WHERE k = $k`, through the simple protocol.
async fn read_slow(c: &tokio_postgres::Client, k: i32) -> Option<String> {
    let rows = c
        .simple_query(&format!("SELECT slow(v) AS v FROM kv WHERE k = {k}"))
        .await
        .expect("slow read");
    rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_through_is_stored_in_both_levels_before_the_acknowledgement() {
    let redis = RedisServer::start();
    let pg = l2::postgres();
    // Each refresh takes 200 ms: a read right after an acknowledgement that did not wait
    // for it would miss. The budget is one no refresh reaches here (the refresher's first
    // login included).
    create_slow(&pg, 0.2);
    let cfg = l2::config(&[redis.url()], "strict", &through_on_kv("10s"));
    let (a, b) = (instance(&pg, &cfg), instance(&pg, &cfg));
    usable(&a).await;
    usable(&b).await;
    let (ca, cb) = (session(&a).await, session(&b).await);
    assert_eq!(read_slow(&ca, 3).await.as_deref(), Some("0"));
    eventually(Duration::from_secs(5), "A's L2 write", || {
        metric(&a, "pgmemo_l2_writes_total", &["written"]) >= 1.0
    })
    .await;
    assert_eq!(read_slow(&cb, 3).await.as_deref(), Some("0"));

    // Autocommit: the bump is held for Redis, then the refresh. In a block: COMMIT's reply
    // is held for Redis, the ReadyForQuery after it for the refresh.
    let writes = [
        ("UPDATE kv SET v = 9 WHERE k = 3", "9"),
        ("BEGIN; UPDATE kv SET v = 11 WHERE k = 3; COMMIT", "11"),
    ];
    for (n, (sql, value)) in writes.into_iter().enumerate() {
        let before = (misses(&a), misses(&b), l2_hits(&b));
        let hits_a = metric(&a, "pgmemo_cache_hits_total", &[]);
        ca.batch_execute(sql).await.expect("write");
        // No wait: the acknowledgement came after the refresh was stored in A's memory
        // and in Redis.
        assert_eq!(read_slow(&cb, 3).await.as_deref(), Some(value), "{sql}");
        assert_eq!(l2_hits(&b), before.2 + 1.0, "B, from Redis: {sql}");
        assert_eq!(misses(&b), before.1, "no miss on B: {sql}");
        assert_eq!(read_slow(&ca, 3).await.as_deref(), Some(value), "{sql}");
        assert_eq!(misses(&a), before.0, "no miss on A: {sql}");
        assert_eq!(metric(&a, "pgmemo_cache_hits_total", &[]), hits_a + 1.0);
        assert_eq!(refreshes(&[&a], "write", "stored"), n as f64 + 1.0);
    }
    assert_eq!(
        metric(&a, "pgmemo_write_through_over_budget_total", &[]),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_shared_tier_the_acknowledgement_waits_no_longer_than_the_time_budget() {
    let redis = RedisServer::start();
    let pg = l2::postgres();
    create_slow(&pg, 1.0);
    let cfg = l2::config(&[redis.url()], "strict", &through_on_kv("50ms"));
    let a = instance(&pg, &cfg);
    usable(&a).await;
    let ca = session(&a).await;
    assert_eq!(read_slow(&ca, 4).await.as_deref(), Some("0"));

    let started = Instant::now();
    write(&ca, 4, 6).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(700),
        "acknowledged after {took:?}: waited for the second-long refresh"
    );
    assert_eq!(
        metric(&a, "pgmemo_write_through_over_budget_total", &[]),
        1.0,
        "acknowledged while its refresh ran"
    );
    // The refresh still ends, and is stored: the next read is a hit with the new value.
    eventually(Duration::from_secs(10), "the write's refresh", || {
        refreshes(&[&a], "write", "stored") >= 1.0
    })
    .await;
    let misses_a = misses(&a);
    assert_eq!(read_slow(&ca, 4).await.as_deref(), Some("6"));
    assert_eq!(misses(&a), misses_a, "a hit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_leaves_while_its_acknowledgement_is_held_holds_nothing_up() {
    let redis = RedisServer::start();
    let pg = l2::postgres();
    create_slow(&pg, 2.0);
    let cfg = l2::config(&[redis.url()], "strict", &through_on_kv("10s"));
    let a = instance(&pg, &cfg);
    usable(&a).await;
    let ca = session(&a).await;
    assert_eq!(read_slow(&ca, 5).await.as_deref(), Some("0"));
    let active = || metric(&a, "pgmemo_client_connections_active", &[]);
    let before = active();

    // A writer on the raw protocol: its UPDATE completes, its ReadyForQuery is held for
    // the two-second refresh; it leaves meanwhile.
    let mut writer = wire::trust_session(a.addr(), common::SUPERUSER, l2::DB).await;
    writer
        .write_all(&wire::query("UPDATE kv SET v = 8 WHERE k = 5"))
        .await
        .expect("send the write");
    let mut tags = Vec::new();
    while let wire::Read::Frame(f) = wire::read_frame(&mut writer, Duration::from_millis(300)).await
    {
        tags.push(f[0]);
    }
    assert_eq!(tags, [b'C'], "the commit's ReadyForQuery is held");
    drop(writer);
    let left = Instant::now();
    eventually(
        Duration::from_secs(5),
        "the writer's session to end",
        || active() <= before,
    )
    .await;
    assert!(
        left.elapsed() < Duration::from_millis(700),
        "the session waited for the refresh: {:?}",
        left.elapsed()
    );
    // Another session is served meanwhile, and the refresh already handed over still ends
    // and is stored.
    assert_eq!(read(&ca, 6).await, 0);
    eventually(Duration::from_secs(10), "the write's refresh", || {
        refreshes(&[&a], "write", "stored") >= 1.0
    })
    .await;
    let misses_a = misses(&a);
    assert_eq!(read_slow(&ca, 5).await.as_deref(), Some("8"));
    assert_eq!(misses(&a), misses_a, "a hit");
}
