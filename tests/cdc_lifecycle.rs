//! The change stream's life (issue 5): start-up and reconnect ordering, a slot creation held
//! up by an open write transaction, a terminated replication backend, long idle periods
//! with a short `wal_sender_timeout`, the temporary slot gone once pgmemo exits, and
//! `cdc = auto` against a server without logical WAL.

#[path = "support/cdc.rs"]
mod cdc;
mod common;
#[path = "support/cache_probe.rs"]
mod probe;

use std::time::{Duration, Instant};

use cdc::{
    CDC_BOUND, START_BOUND, assert_measures_asynchronous_commit, cdc_config, cdc_state, wait_state,
    wait_streaming,
};
use common::{PgOptions, PgServer, Proxy, ProxyArgs, SUPERUSER};
use probe::{CacheStack, DB, simple};

const SETUP: &str = "
CREATE TABLE t(id int PRIMARY KEY, v int NOT NULL);
INSERT INTO t SELECT g, g FROM generate_series(1, 10) g;
";

/// The temporary slots on the server.
async fn slots(s: &CacheStack) -> Vec<String> {
    s.probe
        .client
        .query("SELECT slot_name FROM pg_replication_slots", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// A direct UPDATE of `t` becomes visible through `c` within the bound (measured with
/// `synchronous_commit = off`: the flush delay is part of it).
async fn direct_update_seen(s: &CacheStack, c: &tokio_postgres::Client, v: i32) {
    assert_measures_asynchronous_commit(&s.probe.client).await;
    let read = "SELECT v FROM t WHERE id = 1";
    let q = s.probe.q(read, None).await;
    let before = simple(&s.probe.client, read).await;
    s.probe
        .eventually_hit(c, &q, &before, Duration::from_secs(5))
        .await;
    s.direct_sql(&format!("UPDATE t SET v = {v} WHERE id = 1"));
    let after = simple(&s.probe.client, read).await;
    let started = Instant::now();
    while simple(c, read).await != after {
        assert!(started.elapsed() < CDC_BOUND, "direct UPDATE not seen");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn terminated_replication_backend_reconnects_and_no_slot_outlives_pgmemo() {
    let mut s = CacheStack::start(SETUP, &cdc_config("")).await;
    wait_streaming(&s.proxy).await;
    let c = s.session(SUPERUSER).await;
    direct_update_seen(&s, &c, 100).await;
    assert_eq!(
        slots(&s).await.len(),
        1,
        "one temporary slot while streaming"
    );
    let resyncs = s.metric("pgmemo_cache_epoch_bumps_total");

    s.direct_sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_replication \
         WHERE application_name = 'pgmemo-cdc'",
    );
    // While the stream is down the cache is bypassed: every read reaches PostgreSQL.
    let read = "SELECT v FROM t WHERE id = 2";
    let q = s.probe.q(read, None).await;
    let want = simple(&s.probe.client, read).await;
    let started = Instant::now();
    loop {
        let state = cdc_state(&s.proxy);
        if state.as_deref() != Some("streaming") {
            s.probe.assert_upstream(&c, &q, &want).await;
            break;
        }
        assert!(
            started.elapsed() < START_BOUND,
            "the loss was never noticed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A direct write made while nothing follows the stream...
    s.direct_sql("UPDATE t SET v = 7 WHERE id = 2");
    wait_streaming(&s.proxy).await;
    assert!(s.metric("pgmemo_cdc_reconnects_total") >= 1.0);
    // ...is covered by the epoch bump after the new consistent point.
    assert!(s.metric("pgmemo_cache_epoch_bumps_total") > resyncs);
    let want = simple(&s.probe.client, read).await;
    s.probe
        .eventually_hit(&c, &q, &want, Duration::from_secs(5))
        .await;
    direct_update_seen(&s, &c, 200).await;

    s.proxy.signal(common::Signal::Term);
    s.proxy.wait_exit(Duration::from_secs(30));
    let started = Instant::now();
    while !slots(&s).await.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a replication slot outlived pgmemo: {:?}",
            slots(&s).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_open_write_transaction_delays_the_slot_and_pgmemo_serves_uncached_meanwhile() {
    let pg = PgServer::start(PgOptions::default().hba_line("host all all 127.0.0.1/32 trust"));
    pg.psql(DB, SETUP);
    let blocker = pg.connect(SUPERUSER, "", DB).await;
    blocker
        .batch_execute("BEGIN; INSERT INTO t VALUES (99, 99)")
        .await
        .unwrap();
    let s = CacheStack::start_on(pg, &cdc_config("cdc_slot_timeout = \"300ms\"")).await;
    let c = s.session(SUPERUSER).await;
    let read = "SELECT count(*) FROM t";
    let q = s.probe.q(read, None).await;
    let want = simple(&s.probe.client, read).await;
    // Serving, but uncached, for as long as the blocker stays open.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        s.probe.assert_upstream(&c, &q, &want).await;
        assert_ne!(cdc_state(&s.proxy).as_deref(), Some("streaming"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stderr = s.proxy.stderr();
    assert!(
        stderr.contains("waits for open write transactions") && stderr.contains("INSERT INTO t"),
        "the blocker is logged: {stderr}"
    );
    assert!(s.metric("pgmemo_cdc_reconnects_total") >= 1.0, "retried");
    blocker.batch_execute("COMMIT").await.unwrap();
    let took = wait_streaming(&s.proxy).await;
    println!("streaming {took:?} after the blocker committed");
    let want = simple(&s.probe.client, read).await;
    s.probe
        .eventually_hit(&c, &q, &want, Duration::from_secs(5))
        .await;
}

#[tokio::test]
async fn the_stream_survives_long_idle_periods_with_a_short_sender_timeout() {
    let pg = PgServer::start(
        PgOptions::default()
            .hba_line("host all all 127.0.0.1/32 trust")
            .setting("wal_sender_timeout", "'2s'"),
    );
    pg.psql(DB, SETUP);
    let s = CacheStack::start_on(pg, &cdc_config("cdc_status_interval = \"500ms\"")).await;
    wait_streaming(&s.proxy).await;
    let c = s.session(SUPERUSER).await;
    direct_update_seen(&s, &c, 10).await;
    // Idle for 15 sender timeouts: only keepalives and status updates cross the stream.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(cdc_state(&s.proxy).as_deref(), Some("streaming"));
    assert_eq!(
        s.metric("pgmemo_cdc_reconnects_total"),
        0.0,
        "the server never dropped the idle stream: {}",
        s.pg.log()
    );
    direct_update_seen(&s, &c, 20).await;
    // The slot's confirmed position follows the server (WAL can be recycled).
    let lag: i64 = s
        .probe
        .client
        .query_one(
            "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint FROM pg_replication_slots",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        lag < 1 << 20,
        "confirmed flush position trails by {lag} bytes"
    );
}

#[tokio::test]
async fn cdc_auto_against_replica_wal_level_warns_once_and_keeps_ttl_semantics() {
    let pg = PgServer::start(
        PgOptions::default()
            .hba_line("host all all 127.0.0.1/32 trust")
            .setting("wal_level", "replica"),
    );
    pg.psql(DB, SETUP);
    let config = format!(
        "[cache]\nttl = \"2s\"\n\n[catalog]\npoll_interval = \"200ms\"\n\n\
         [invalidation]\ncdc_databases = [\"{DB}\"]\n"
    );
    let s = CacheStack::start_on(pg, &config).await;
    wait_state(&s.proxy, "off", START_BOUND).await;
    let stderr = s.proxy.stderr();
    assert_eq!(
        stderr.matches("change data capture is off").count(),
        1,
        "one warning: {stderr}"
    );
    assert!(stderr.contains("wal_level = logical") && stderr.contains("TTL (2s)"));
    // The cache works as without CDC: hits, and a direct write is bounded by the TTL.
    let c = s.session(SUPERUSER).await;
    let read = "SELECT v FROM t WHERE id = 1";
    let q = s.probe.q(read, None).await;
    let before = simple(&s.probe.client, read).await;
    s.probe
        .eventually_hit(&c, &q, &before, Duration::from_secs(5))
        .await;
    s.direct_sql("UPDATE t SET v = 5 WHERE id = 1");
    let after = simple(&s.probe.client, read).await;
    let started = Instant::now();
    while simple(&c, read).await != after {
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "TTL did not bound it"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_stream_lagging_past_the_bound_bypasses_the_cache_until_it_catches_up() {
    let s = CacheStack::start(
        &format!("{SETUP}\nCREATE TABLE big(id int PRIMARY KEY, v int NOT NULL);"),
        &cdc_config("cdc_lag_max = \"40ms\""),
    )
    .await;
    wait_streaming(&s.proxy).await;
    let c = s.session(SUPERUSER).await;
    let read = "SELECT v FROM t WHERE id = 3";
    let q = s.probe.q(read, None).await;
    let want = simple(&s.probe.client, read).await;
    s.probe
        .eventually_hit(&c, &q, &want, Duration::from_secs(5))
        .await;
    // One large transaction: the stream applies nothing behind it until all of it arrived.
    let writer = {
        let pg_psql = s.pg.bin("psql");
        let url = s.pg.url(SUPERUSER, DB);
        std::thread::spawn(move || {
            std::process::Command::new(pg_psql)
                .args([
                    &url,
                    "-c",
                    "INSERT INTO big SELECT g, g FROM generate_series(1, 400000) g",
                ])
                .output()
                .expect("psql")
        })
    };
    let started = Instant::now();
    let mut saw_lagging = false;
    while started.elapsed() < Duration::from_secs(30) {
        if cdc_state(&s.proxy).as_deref() == Some("lagging") {
            saw_lagging = true;
            // Bypassed while lagging: the read reaches PostgreSQL.
            s.probe.assert_upstream(&c, &q, &want).await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(writer.join().map(|o| o.status.success()).unwrap_or(false));
    assert!(saw_lagging, "the stream never reported lagging");
    assert!(
        s.proxy.stderr().contains("lags past cdc_lag_max"),
        "the lag is logged"
    );
    let took = wait_streaming(&s.proxy).await;
    println!("caught up {took:?} after lagging was seen");
    s.probe
        .eventually_hit(&c, &q, &want, Duration::from_secs(5))
        .await;
}

#[tokio::test]
async fn a_hot_standby_upstream_is_never_followed_auto_keeps_ttl_and_on_bypasses() {
    let primary = PgServer::start(PgOptions::default().hba_line("host all all 127.0.0.1/32 trust"));
    primary.psql(DB, SETUP);
    let standby = PgServer::start_standby(&primary);
    let start = |mode: &str| {
        Proxy::start(
            ProxyArgs::new(standby.url(SUPERUSER, "postgres")).config(format!(
                "[cache]\nttl = \"60s\"\n\n[invalidation]\ncdc = \"{mode}\"\n\
                 cdc_databases = [\"{DB}\"]\n"
            )),
        )
    };
    let auto = start("auto");
    wait_state(&auto, "off", START_BOUND).await;
    let stderr = auto.stderr();
    assert!(stderr.contains("hot standby"), "{stderr}");
    let on = start("on");
    wait_state(&on, "disconnected", START_BOUND).await;
    assert!(on.stderr().contains("hot standby"));
    // auto: the cache serves (TTL semantics); on: every read reaches the standby.
    let read = "SELECT v FROM t WHERE id = 1";
    let standby_client = standby.connect(SUPERUSER, "", DB).await;
    let calls = async || -> i64 {
        standby_client
            .query_one(
                "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements \
                 WHERE query = 'SELECT v FROM t WHERE id = $1'",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    };
    for (proxy, cached) in [(&auto, true), (&on, false)] {
        let c = proxy.connect(SUPERUSER, "", DB).await;
        simple(&c, read).await;
        let before = calls().await;
        for _ in 0..5 {
            simple(&c, read).await;
        }
        let reached = calls().await - before;
        if cached {
            assert_eq!(
                reached, 0,
                "auto against a standby still caches (TTL bound)"
            );
        } else {
            assert_eq!(reached, 5, "on against a standby bypasses the cache");
        }
    }
}
