//! Several pgmemo instances sharing one Redis (issue 6): results cached by one are L2 hits
//! on another; a write acknowledged by one is never followed by an old result from another
//! (`strict`), or only for the announcement's delivery (`fast`, measured); restarts of an
//! instance or of Redis revive nothing; Redis dying under load costs no client an error;
//! an instance cut off from Redis stays correct (strict) or TTL-bounded (fast); the same
//! on a three-master Redis Cluster.

#[path = "support/cdc.rs"]
mod cdc;
#[path = "support/checker/mod.rs"]
mod checker;
mod common;
#[path = "support/l2.rs"]
mod l2;
#[path = "support/cache_probe.rs"]
mod probe;

use std::time::{Duration, Instant};

use checker::{CheckerConfig, Shape};
use common::{PgOptions, PgServer, Proxy, RedisCluster, RedisServer, SUPERUSER};
use l2::{eventually, instance, metric, read, session, usable, write};

/// Declares the checker's audit trigger (see tests/staleness.rs).
const CHECKER_FUNCTIONS: &str = "[[functions.writes]]\nfunction = \"public.counters_audit_fn\"\ntables = [\"public.counters_audit\"]\n";

/// A reads, B serves it from Redis; then writes alternate between the instances and every
/// read through the other one right after the acknowledgement sees the new value.
async fn shares_and_invalidates(urls: &[String]) {
    let pg = l2::postgres();
    let cfg = l2::config(urls, "strict", "");
    let (a, b) = (instance(&pg, &cfg), instance(&pg, &cfg));
    usable(&a).await;
    usable(&b).await;
    let (ca, cb) = (session(&a).await, session(&b).await);
    assert_eq!(read(&ca, 1).await, 0);
    eventually(Duration::from_secs(5), "A's L2 write", || {
        metric(&a, "pgmemo_l2_writes_total", &["written"]) >= 1.0
    })
    .await;
    assert_eq!(read(&cb, 1).await, 0);
    assert_eq!(
        metric(&b, "pgmemo_l2_lookups_total", &["\"hit\""]),
        1.0,
        "B answered from A's entry in Redis"
    );
    assert_eq!(read(&cb, 1).await, 0);
    assert!(
        metric(&b, "pgmemo_cache_hits_total", &[]) >= 1.0,
        "promoted to B's L1"
    );

    for i in 1..=40 {
        let (w, r) = if i % 2 == 0 { (&ca, &cb) } else { (&cb, &ca) };
        assert_eq!(read(r, 1).await, i - 1, "cached before the write");
        write(w, 1, i).await;
        assert_eq!(
            read(r, 1).await,
            i,
            "write {i} acknowledged on the other instance"
        );
    }
    let applied = metric(&a, "pgmemo_l2_bumps_total", &["applied"])
        + metric(&b, "pgmemo_l2_bumps_total", &["applied"]);
    assert_eq!(applied, 40.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_shares_results_and_invalidates_across_instances() {
    let redis = RedisServer::start();
    shares_and_invalidates(&[redis.url()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_on_a_three_master_cluster() {
    let cluster = RedisCluster::start(3);
    shares_and_invalidates(&cluster.urls()).await;
}

fn checker_pg() -> PgServer {
    // Two-phase commit needs prepared transactions; 20 ≥ one per client.
    PgServer::start(PgOptions::default().setting("max_prepared_transactions", "20"))
}

fn checker_config(a: &Proxy, b: &Proxy, pg: &PgServer, ops: u64) -> CheckerConfig {
    let mut c = CheckerConfig::new(a.addr(), pg.addr());
    c.more_proxies = vec![b.addr()];
    c.admin = Some(a.admin_addr());
    c.more_admins = vec![b.admin_addr()];
    c.user = SUPERUSER.into();
    c.dbname = l2::DB.into();
    c.ops = ops;
    c.clients = 8;
    c.write_percent = 5;
    c.shape = Shape::small();
    c.time_limit = Duration::from_secs(200);
    c
}

async fn run_checker(c: &CheckerConfig) -> checker::Report {
    let report = checker::run(c)
        .await
        .unwrap_or_else(|e| panic!("the checker could not run: {e}"));
    eprintln!("{report}");
    report
}

/// The staleness checker with its clients spread over two strict instances: no stale read,
/// and the instances really served each other's results.
async fn checker_over_two_instances(urls: &[String], ops: u64) {
    checker_over_two(urls, ops, true, "").await;
}

/// As [`checker_over_two_instances`], with the L1 on or off (then every hit is an L2 hit,
/// fetched with the counters, and each write leaves older entries at the same L2 address).
async fn checker_over_two(urls: &[String], ops: u64, l1: bool, rules: &str) {
    let pg = checker_pg();
    let extra = format!("{CHECKER_FUNCTIONS}[cache.l1]\nenabled = {l1}\n{rules}");
    let cfg = l2::config(urls, "strict", &extra);
    let (a, b) = (instance(&pg, &cfg), instance(&pg, &cfg));
    usable(&a).await;
    usable(&b).await;
    let report = run_checker(&checker_config(&a, &b, &pg, ops)).await;
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.ops, ops, "{report}");
    let l2_hits = metric(&a, "pgmemo_l2_lookups_total", &["\"hit\""])
        + metric(&b, "pgmemo_l2_lookups_total", &["\"hit\""]);
    let l1_hits =
        metric(&a, "pgmemo_cache_hits_total", &[]) + metric(&b, "pgmemo_cache_hits_total", &[]);
    eprintln!("L1 hits {l1_hits}, L2 hits {l2_hits}");
    if !rules.is_empty() {
        let stored = metric(&a, "pgmemo_refresh_total", &["\"stored\""])
            + metric(&b, "pgmemo_refresh_total", &["\"stored\""]);
        eprintln!("background refreshes stored: {stored}");
        assert!(stored > 0.0, "no background refresh was stored");
    }
    if l1 {
        assert!(l2_hits > 50.0, "few cross-instance hits: {l2_hits}");
        assert!(l1_hits > 500.0, "the cache was barely used: {l1_hits}");
    } else {
        assert_eq!(l1_hits, 0.0, "no L1");
        assert!(l2_hits > 500.0, "the cache was barely used: {l2_hits}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_strict_instances_serve_no_stale_read() {
    let redis = RedisServer::start();
    checker_over_two_instances(&[redis.url()], 20_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_l2_only_instances_serve_no_stale_read() {
    let redis = RedisServer::start();
    checker_over_two(&[redis.url()], 20_000, false, "").await;
}

/// Issue 19 over two instances: every table the checker writes is write-through and
/// refreshed ahead of a short TTL, so the background refresher stores to both levels under
/// its Redis lock while writes race it: still no stale read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_refreshing_in_the_background_serve_no_stale_read() {
    let redis = RedisServer::start();
    let rules: String = ["counters", "counters_audit", "parent", "child", "events"]
        .iter()
        .map(|t| {
            format!(
                "\n[[rules]]\ntable = \"{t}\"\nwrite = \"through\"\nttl = \"1s\"\n\
                 refresh_ahead = 0.01\n"
            )
        })
        .collect();
    checker_over_two(&[redis.url()], 20_000, true, &rules).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_strict_instances_on_a_cluster_serve_no_stale_read() {
    let cluster = RedisCluster::start(3);
    checker_over_two_instances(&cluster.urls(), 8_000).await;
}

/// `fast`: B learns of A's write from the announcement. The window from A's acknowledgement
/// until B stops serving the old value is measured (and bounded well below a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_staleness_window_is_the_announcement_delivery() {
    let redis = RedisServer::start();
    fast_window(&[redis.url()]).await;
}

/// The same on a cluster: announcements are published from a script in the counters' slot
/// and reach a subscriber on any node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_on_a_three_master_cluster() {
    let cluster = RedisCluster::start(3);
    fast_window(&cluster.urls()).await;
}

async fn fast_window(urls: &[String]) {
    let pg = l2::postgres();
    let cfg = l2::config(urls, "fast", "");
    let (a, b) = (instance(&pg, &cfg), instance(&pg, &cfg));
    usable(&a).await;
    usable(&b).await;
    for p in [&a, &b] {
        eventually(Duration::from_secs(5), "the subscription", || {
            metric(p, "pgmemo_l2_subscribed", &[]) == 1.0
        })
        .await;
    }
    let (ca, cb) = (session(&a).await, session(&b).await);
    let mut windows = Vec::new();
    for i in 1..=60 {
        assert_eq!(read(&cb, 2).await, i - 1);
        assert_eq!(read(&cb, 2).await, i - 1, "cached on B");
        write(&ca, 2, i).await;
        let acked = Instant::now();
        let mut polls = 0;
        while read(&cb, 2).await != i {
            polls += 1;
            assert!(
                acked.elapsed() < Duration::from_secs(1),
                "B still serves the old value after 1 s"
            );
        }
        windows.push((acked.elapsed(), polls));
    }
    windows.sort();
    let p = |q: f64| windows[((windows.len() - 1) as f64 * q) as usize].0;
    eprintln!(
        "fast cross-instance staleness window: p50 {:?}, p99 {:?}, max {:?}; stale polls at most {}",
        p(0.5),
        p(0.99),
        p(1.0),
        windows.iter().map(|w| w.1).max().unwrap_or(0)
    );
    assert!(p(0.99) < Duration::from_millis(200), "{:?}", p(0.99));
}

/// An instance restarted serves what others cached from Redis right away, and nothing a
/// write invalidated while it was down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_instance_serves_l2_hits_and_nothing_invalidated_meanwhile() {
    let pg = l2::postgres();
    let redis = RedisServer::start();
    let cfg = l2::config(&[redis.url()], "strict", "");
    let b = instance(&pg, &cfg);
    let mut a = Some(instance(&pg, &cfg));
    if let Some(a) = &a {
        usable(a).await;
        let ca = session(a).await;
        assert_eq!(read(&ca, 3).await, 0);
        let other = ca.simple_query("SELECT v FROM other WHERE k = 1").await;
        assert!(other.is_ok());
        eventually(Duration::from_secs(5), "A's L2 writes", || {
            metric(a, "pgmemo_l2_writes_total", &["written"]) >= 2.0
        })
        .await;
    }
    drop(a.take()); // killed
    usable(&b).await;
    let cb = session(&b).await;
    write(&cb, 3, 33).await;

    let a = instance(&pg, &cfg);
    usable(&a).await;
    let ca = session(&a).await;
    ca.simple_query("SELECT v FROM other WHERE k = 1")
        .await
        .expect("read");
    assert_eq!(
        metric(&a, "pgmemo_l2_lookups_total", &["\"hit\""]),
        1.0,
        "the restarted instance answered from Redis"
    );
    assert_eq!(read(&ca, 3).await, 33, "written while A was down");
}

/// Redis restarts empty (no persistence) while both instances hold results in L1 and one
/// writes during the outage: strict reads stay correct throughout (the cache is bypassed
/// while Redis is away) and no result from before the restart is served after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_revives_nothing() {
    let pg = l2::postgres();
    let mut redis = RedisServer::start();
    let cfg = l2::config(&[redis.url()], "strict", "");
    let (a, b) = (instance(&pg, &cfg), instance(&pg, &cfg));
    usable(&a).await;
    usable(&b).await;
    let (ca, cb) = (session(&a).await, session(&b).await);
    for c in [&ca, &cb] {
        assert_eq!(read(c, 4).await, 0);
        assert_eq!(read(c, 4).await, 0);
    }
    redis.stop();
    write(&cb, 4, 44).await; // its bump cannot reach Redis: recorded
    for c in [&ca, &cb] {
        assert_eq!(read(c, 4).await, 44, "strict bypasses while Redis is away");
    }
    assert!(metric(&b, "pgmemo_l2_bumps_total", &["failed"]) >= 1.0);
    redis.start_again();
    eventually(
        Duration::from_secs(10),
        "the recorded bump to be retried",
        || metric(&b, "pgmemo_l2_bumps_total", &["retried"]) >= 1.0,
    )
    .await;
    for _ in 0..20 {
        for c in [&ca, &cb] {
            assert_eq!(read(c, 4).await, 44, "an old result revived");
        }
    }
    assert!(
        metric(&a, "pgmemo_cache_hits_total", &[]) + metric(&b, "pgmemo_cache_hits_total", &[])
            > 10.0,
        "cached again after the restart"
    );
}

/// Redis is killed under load and brought back: no client sees an error or a stale result,
/// the breaker opens and closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dying_under_load_is_invisible_to_clients() {
    let pg = checker_pg();
    let redis = RedisServer::start();
    let cfg = l2::config(&[redis.url()], "strict", CHECKER_FUNCTIONS);
    let (a, b) = (instance(&pg, &cfg), instance(&pg, &cfg));
    usable(&a).await;
    usable(&b).await;
    let chaos = std::thread::spawn(move || {
        let mut redis = redis;
        std::thread::sleep(Duration::from_secs(3));
        redis.stop();
        std::thread::sleep(Duration::from_secs(3));
        redis.start_again();
        redis
    });
    let mut c = checker_config(&a, &b, &pg, 80_000);
    c.time_limit = Duration::from_secs(240);
    let report = run_checker(&c).await;
    let _redis = chaos.join().expect("chaos thread");
    assert!(report.is_clean(), "{report}");
    assert!(
        report.elapsed > Duration::from_secs(7),
        "the run ended before Redis came back ({:?}): make it longer",
        report.elapsed
    );
    let opened = metric(&a, "pgmemo_l2_breaker_changes_total", &["\"open\""])
        + metric(&b, "pgmemo_l2_breaker_changes_total", &["\"open\""]);
    assert!(opened >= 1.0, "the breaker never opened");
    for p in [&a, &b] {
        eventually(Duration::from_secs(10), "the breaker to close", || {
            metric(p, "pgmemo_l2_breaker_state", &[]) == 0.0
        })
        .await;
    }
}

/// One instance loses Redis while the other keeps it. Strict: the cut-off instance bypasses
/// the cache and serves no stale read. Fast: it may serve its own L1 entries, but never
/// past their TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_cut_off_from_redis_stays_within_its_bound() {
    let pg = l2::postgres();
    let redis = RedisServer::start();
    for (consistency, ttl) in [("strict", "1m"), ("fast", "1s")] {
        let relay = l2::Relay::start(redis.addr()).await;
        let extra = format!("ttl = \"{ttl}\"");
        let a = instance(&pg, &l2::config(&[relay.url()], consistency, &extra));
        let b = instance(&pg, &l2::config(&[redis.url()], consistency, &extra));
        usable(&a).await;
        usable(&b).await;
        let (ca, cb) = (session(&a).await, session(&b).await);
        let k = 5;
        let base = read(&ca, k).await;
        assert_eq!(read(&ca, k).await, base, "cached on A");
        relay.set_cut(true);
        write(&cb, k, base + 1).await;
        let written = Instant::now();
        match consistency {
            "strict" => {
                for _ in 0..10 {
                    assert_eq!(read(&ca, k).await, base + 1, "strict, cut off");
                }
                assert!(metric(&a, "pgmemo_cache_bypasses_total", &["redis_unavailable"]) >= 1.0);
            }
            _ => {
                while read(&ca, k).await != base + 1 {
                    assert!(
                        written.elapsed() < Duration::from_millis(2500),
                        "fast, cut off: stale past the 1 s TTL"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        relay.set_cut(false);
        write(&cb, k, base + 2).await;
        eventually(Duration::from_secs(10), "A back on Redis", || {
            metric(&a, "pgmemo_l2_breaker_state", &[]) == 0.0
        })
        .await;
        // Back on Redis: reads on A follow B's writes again.
        let deadline = Instant::now() + Duration::from_secs(5);
        while read(&ca, k).await != base + 2 {
            assert!(Instant::now() < deadline, "A never caught up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Next round on a fresh row.
        write(&cb, k, 0).await;
    }
}

/// With the change stream on, one instance (the lease holder) follows it for all: a write
/// made directly on PostgreSQL reaches both instances' caches; when the holder dies, the
/// other takes over and keeps following.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_follows_the_change_stream_for_all() {
    let pg = l2::postgres();
    let redis = RedisServer::start();
    let cfg = l2::config_cdc(&[redis.url()], "strict");
    let a = instance(&pg, &cfg);
    let mut b = Some(instance(&pg, &cfg));
    let streaming = |p: &Proxy| cdc::cdc_state(p).as_deref() == Some("streaming");
    if let Some(b) = &b {
        for p in [&a, b] {
            eventually(Duration::from_secs(30), "streaming", || streaming(p)).await;
        }
        let leaders = metric(&a, "pgmemo_cdc_leader", &[]) + metric(b, "pgmemo_cdc_leader", &[]);
        assert_eq!(leaders, 1.0, "exactly one instance follows the stream");
        let (ca, cb) = (session(&a).await, session(b).await);
        for c in [&ca, &cb] {
            assert_eq!(read(c, 6).await, 0);
            assert_eq!(read(c, 6).await, 0);
        }
        pg.psql(l2::DB, "UPDATE kv SET v = 66 WHERE k = 6");
        for c in [&ca, &cb] {
            let started = Instant::now();
            while read(c, 6).await != 66 {
                assert!(
                    started.elapsed() < Duration::from_secs(2),
                    "direct write unseen"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    // Kill the leader; the other must take over.
    let (survivor, _dead) = if metric(&a, "pgmemo_cdc_leader", &[]) == 1.0 {
        let b = b.take().expect("b");
        drop(a);
        (b, ())
    } else {
        drop(b.take());
        (a, ())
    };
    eventually(
        Duration::from_secs(30),
        "the survivor to lead and stream",
        || metric(&survivor, "pgmemo_cdc_leader", &[]) == 1.0 && streaming(&survivor),
    )
    .await;
    let c = session(&survivor).await;
    assert_eq!(read(&c, 6).await, 66);
    assert_eq!(read(&c, 6).await, 66);
    pg.psql(l2::DB, "UPDATE kv SET v = 67 WHERE k = 6");
    let started = Instant::now();
    while read(&c, 6).await != 67 {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "direct write unseen after takeover"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `cache.l1.enabled = false`: nothing is held in process, every hit comes from Redis, and
/// a write through one instance is still never followed by the old value on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l2_only_instances_hold_nothing_in_process_and_stay_correct() {
    let redis = RedisServer::start();
    l2_only(&[redis.url()]).await;
}

/// The same on a cluster, where an entry lives on another node than the counters: fetched
/// with them in one round trip all the same, as concurrent commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l2_only_on_a_three_master_cluster() {
    let cluster = RedisCluster::start(3);
    l2_only(&cluster.urls()).await;
}

async fn l2_only(urls: &[String]) {
    let pg = l2::postgres();
    let cfg = l2::config(urls, "strict", "[cache.l1]\nenabled = false");
    let (a, b) = (instance(&pg, &cfg), instance(&pg, &cfg));
    usable(&a).await;
    usable(&b).await;
    let (ca, cb) = (session(&a).await, session(&b).await);
    for i in 1..=20 {
        let (w, r, rp) = if i % 2 == 0 {
            (&ca, &cb, &b)
        } else {
            (&cb, &ca, &a)
        };
        assert_eq!(read(r, 7).await, i - 1);
        let hits = metric(rp, "pgmemo_l2_lookups_total", &["\"hit\""]);
        eventually(Duration::from_secs(5), "the result in Redis", || {
            metric(&a, "pgmemo_l2_writes_total", &["written"])
                + metric(&b, "pgmemo_l2_writes_total", &["written"])
                >= 1.0
        })
        .await;
        assert_eq!(read(r, 7).await, i - 1, "cached");
        assert!(
            metric(rp, "pgmemo_l2_lookups_total", &["\"hit\""]) > hits,
            "the repeat was answered from Redis"
        );
        write(w, 7, i).await;
        assert_eq!(
            read(r, 7).await,
            i,
            "write {i} acknowledged on the other instance"
        );
    }
    for p in [&a, &b] {
        assert_eq!(metric(p, "pgmemo_cache_hits_total", &[]), 0.0, "no L1 hit");
        assert_eq!(metric(p, "pgmemo_cache_entries", &[]), 0.0, "nothing held");
    }
}

/// Row-level invalidation through the shared tier (issue 18): a write of one row through B
/// refreshes A's read of that row (at once with `strict`, within the announcement's delivery
/// with `fast`) and leaves A's cached read of another row a hit: the row stripes and the
/// table-wide counters live in Redis like the table versions.
async fn row_writes_across_instances(consistency: &str) {
    let redis = RedisServer::start();
    let pg = l2::postgres();
    let cfg = l2::config(&[redis.url()], consistency, "");
    let (a, b) = (instance(&pg, &cfg), instance(&pg, &cfg));
    usable(&a).await;
    usable(&b).await;
    let (ca, cb) = (session(&a).await, session(&b).await);
    for k in [1, 2] {
        assert_eq!(read(&ca, k).await, 0);
        assert_eq!(read(&ca, k).await, 0);
    }
    write(&cb, 2, 7).await;
    if consistency == "strict" {
        assert_eq!(read(&ca, 2).await, 7, "strict: fresh right after B's ack");
    } else {
        let started = Instant::now();
        while read(&ca, 2).await != 7 {
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "fast: never fresh"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let misses = metric(&a, "pgmemo_cache_misses_total", &[]);
    assert_eq!(read(&ca, 1).await, 0);
    assert_eq!(
        metric(&a, "pgmemo_cache_misses_total", &[]),
        misses,
        "row 1 is still cached on A after B wrote row 2"
    );
    assert!(metric(&b, "pgmemo_cache_invalidations_total", &["row"]) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_row_writes_leave_other_rows_cached_on_other_instances() {
    row_writes_across_instances("strict").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_row_writes_leave_other_rows_cached_on_other_instances() {
    row_writes_across_instances("fast").await;
}
