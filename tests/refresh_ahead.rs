//! Refresh-ahead (issue 19): a hit past `refresh_ahead` of its entry's TTL is answered from
//! the cache and starts one background refresh, under the reader's own login and
//! fingerprint, that replaces the entry before it expires — so a key read steadily never
//! misses at expiry. Tests of the cases where it would be wrong first: a role's entry is
//! refreshed as that role only (RLS on `current_user`), a role pgmemo cannot log in as is
//! never refreshed (its entry expires and misses), the adaptive cap holds, and a refresh
//! nobody reads is counted as wasted.
//!
//! Direct writes go straight to PostgreSQL (no change stream in these tests' database), so
//! only a refresh or the TTL can show them: a refreshed hit with the new value is the proof
//! that the refresh ran and replaced the entry.

mod common;
#[path = "support/cache_probe.rs"]
mod probe;

use std::time::{Duration, Instant};

use common::SUPERUSER;
use probe::{CacheStack, RLS_NOTES as NOTES, column, config, simple, values};

const TTL: Duration = Duration::from_secs(3);

fn rules(table_extra: &str, rest: &str) -> String {
    config(
        "",
        &format!(
            "[[rules]]\ntable = \"kv\"\nttl = \"3s\"\nrefresh_ahead = 0.5\n{table_extra}\n{rest}"
        ),
    )
}

const KV: &str = "CREATE TABLE kv(id int PRIMARY KEY, v int NOT NULL);
INSERT INTO kv VALUES (1, 10), (2, 20);";

/// Sum of `pgmemo_refresh_total{cause="ahead",result=...}`.
fn ahead(s: &CacheStack, result: &str) -> f64 {
    sum_where(
        s,
        "pgmemo_refresh_total{",
        &["cause=\"ahead\"", &format!("result=\"{result}\"")],
    )
}

fn sum_where(s: &CacheStack, prefix: &str, labels: &[&str]) -> f64 {
    s.proxy
        .admin_get("/metrics")
        .lines()
        .filter(|l| l.starts_with(prefix) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Every refresh-ahead counted, whatever its result.
fn ahead_all(s: &CacheStack) -> f64 {
    sum_where(s, "pgmemo_refresh_total{", &["cause=\"ahead\""])
}

async fn until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn v(client: &tokio_postgres::Client, sql: &str) -> String {
    values(&simple(client, sql).await, 0)
        .first()
        .cloned()
        .flatten()
        .unwrap_or_default()
}

#[tokio::test]
async fn a_hot_key_is_refreshed_once_before_expiry_and_never_misses() {
    let s = CacheStack::start(KV, &rules("", "")).await;
    let q = s.probe.q("SELECT v FROM kv WHERE id = 1", None).await;
    let c = s.session(SUPERUSER).await;
    s.probe.assert_upstream(&c, &q, &column("v", &["10"])).await;
    let stored = Instant::now();
    let misses = s.metric("pgmemo_cache_misses_total");
    // A write pgmemo does not see: only a refresh (or the TTL) can show it.
    s.direct_sql("UPDATE kv SET v = 11 WHERE id = 1");
    s.probe.assert_hit(&c, &q, &column("v", &["10"])).await;
    assert_eq!(
        ahead_all(&s),
        0.0,
        "before the refresh point nothing starts"
    );

    // Past half the TTL: four sessions read it at once, forty hits in all.
    tokio::time::sleep((TTL / 2 + Duration::from_millis(100)).saturating_sub(stored.elapsed()))
        .await;
    let readers: Vec<_> =
        futures_util::future::join_all((0..4).map(|_| s.session(SUPERUSER))).await;
    let reads = readers.iter().map(|r| async move {
        for _ in 0..10 {
            let got = v(r, "SELECT v FROM kv WHERE id = 1").await;
            assert!(got == "10" || got == "11", "{got}");
        }
    });
    futures_util::future::join_all(reads).await;
    until("the refresh", Duration::from_secs(10), || {
        ahead(&s, "stored") >= 1.0
    })
    .await;
    assert_eq!(ahead_all(&s), 1.0, "exactly one refresh for forty hits");
    // The refreshed entry answers: a hit with the new value, no miss.
    s.probe.assert_hit(&c, &q, &column("v", &["11"])).await;

    // Read steadily past the first entry's expiry and the refreshed one's: never a miss.
    let end = stored + 3 * TTL;
    while Instant::now() < end {
        assert_eq!(v(&c, "SELECT v FROM kv WHERE id = 1").await, "11");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        s.metric("pgmemo_cache_misses_total"),
        misses,
        "a key read steadily never misses at expiry"
    );
    assert!(ahead(&s, "stored") >= 2.0, "each entry refreshed in turn");
    assert_eq!(
        ahead(&s, "stored"),
        ahead_all(&s),
        "and every refresh stored"
    );
}

#[tokio::test]
async fn a_refresh_nobody_reads_is_counted_wasted() {
    let s = CacheStack::start(KV, &rules("", "")).await;
    let c = s.session(SUPERUSER).await;
    let sql = "SELECT v FROM kv WHERE id = 2";
    assert_eq!(v(&c, sql).await, "20");
    tokio::time::sleep(TTL / 2 + Duration::from_millis(100)).await;
    assert_eq!(v(&c, sql).await, "20");
    until("the refresh", Duration::from_secs(10), || {
        ahead(&s, "stored") >= 1.0
    })
    .await;
    let wasted =
        |s: &CacheStack| sum_where(s, "pgmemo_refresh_wasted_total{", &["cause=\"ahead\""]);
    assert_eq!(wasted(&s), 0.0, "not wasted while it is cached");
    // Nobody reads the refreshed entry; it expires (the cache's housekeeping runs each second).
    until("the wasted refresh", TTL + Duration::from_secs(10), || {
        wasted(&s) >= 1.0
    })
    .await;
    assert_eq!(wasted(&s), 1.0);
}

#[tokio::test]
async fn each_role_is_refreshed_as_itself_and_one_without_login_expires() {
    let config = config(
        "",
        "[[rules]]\ntable = \"notes\"\nttl = \"3s\"\nrefresh_ahead = 0.5\nallow_rls = true\n\n\
         [[refresh.logins]]\nuser = \"alice\"\n\n[[refresh.logins]]\nuser = \"bob\"\n",
    );
    let s = CacheStack::start(NOTES, &config).await;
    let sql = "SELECT sum(v)::int AS v FROM notes";
    let q = s.probe.q(sql, None).await;
    let (alice, bob, carol) = (
        s.session("alice").await,
        s.session("bob").await,
        s.session("carol").await,
    );
    for (c, want) in [(&alice, "10"), (&bob, "20"), (&carol, "30")] {
        s.probe.assert_upstream(c, &q, &column("v", &[want])).await;
    }
    let stored = Instant::now();
    s.direct_sql("UPDATE notes SET v = v + 1");
    tokio::time::sleep((TTL / 2 + Duration::from_millis(100)).saturating_sub(stored.elapsed()))
        .await;
    // Past the refresh point: each hit starts its role's refresh. The old rows prove the hit
    // (PostgreSQL has the new ones); counting executions would also count the refreshes the
    // earlier hits started, which run the same statement.
    for (c, want) in [(&alice, "10"), (&bob, "20"), (&carol, "30")] {
        assert_eq!(
            simple(c, sql).await,
            column("v", &[want]),
            "a hit, old rows"
        );
    }
    until(
        "two refreshes and one refusal",
        Duration::from_secs(10),
        || ahead(&s, "stored") >= 2.0 && ahead(&s, "no_login") >= 1.0,
    )
    .await;
    // Refreshed as alice and as bob: hits with each one's own new rows, never the other's.
    s.probe.assert_hit(&alice, &q, &column("v", &["11"])).await;
    s.probe.assert_hit(&bob, &q, &column("v", &["21"])).await;
    // carol's entry was not refreshed under anyone else: once it expires, a miss with her row.
    tokio::time::sleep(TTL.saturating_sub(stored.elapsed()) + Duration::from_millis(200)).await;
    s.probe
        .assert_upstream(&carol, &q, &column("v", &["31"]))
        .await;
    assert_eq!(ahead(&s, "stored"), 2.0);
}

#[tokio::test]
async fn the_adaptive_cap_holds_refreshes_back() {
    // A share of 0: no refresh may run, whatever the traffic.
    let s = CacheStack::start(
        KV,
        &rules("refresh_adaptive = true", "[refresh]\nmax_share = 0.0\n"),
    )
    .await;
    let q = s.probe.q("SELECT v FROM kv WHERE id = 1", None).await;
    let c = s.session(SUPERUSER).await;
    s.probe.assert_upstream(&c, &q, &column("v", &["10"])).await;
    let stored = Instant::now();
    tokio::time::sleep((TTL / 2 + Duration::from_millis(100)).saturating_sub(stored.elapsed()))
        .await;
    s.probe.assert_hit(&c, &q, &column("v", &["10"])).await;
    s.probe.assert_hit(&c, &q, &column("v", &["10"])).await;
    assert_eq!(
        ahead(&s, "over_share"),
        1.0,
        "one refresh claimed, refused by the cap"
    );
    assert_eq!(ahead(&s, "stored"), 0.0);
    // So the entry expires as without refresh-ahead.
    tokio::time::sleep(TTL.saturating_sub(stored.elapsed()) + Duration::from_millis(200)).await;
    s.probe.assert_upstream(&c, &q, &column("v", &["10"])).await;
}
