//! Refreshes with the shared tier on Redis (issue 19): a refresh stores to both levels, and
//! one instance at a time refreshes a key (a short lock in Redis), so N instances do not
//! each send the same refresh upstream.

mod common;
#[path = "support/l2.rs"]
mod l2;

use std::time::{Duration, Instant};

use common::{Proxy, RedisServer};
use l2::{eventually, instance, metric, read, session, usable, write};

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
