//! Shared by the CDC integration tests: pgmemo's config with the change stream required
//! for the test database, and waits on its state as `/metrics` reports it. Included by path
//! next to `mod common;` and the cache probe.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use crate::common::Proxy;
use crate::probe::{DB, config};

/// Functional bound for a direct write to reach pgmemo through the stream (tight bounds
/// are the bench's: the machine's two cores are shared with other test processes). The
/// harness runs PostgreSQL with `synchronous_commit = off` (see `tests/common/pg.rs`), so
/// what the CDC tests measure includes the WAL writer's flush delay (up to 3 ×
/// `wal_writer_delay` = 600 ms by default) on top of the stream's own latency; each latency
/// test asserts that setting with [`assert_measures_asynchronous_commit`].
pub const CDC_BOUND: Duration = Duration::from_secs(2);

/// The setting a CDC latency test measures under: `synchronous_commit = off` on the server
/// (a direct write is visible before the stream can carry it), asserted so a change to the
/// harness cannot silently change what the latencies mean.
pub async fn assert_measures_asynchronous_commit(probe: &tokio_postgres::Client) {
    let rows = probe
        .simple_query("SELECT reset_val FROM pg_settings WHERE name = 'synchronous_commit'")
        .await
        .expect("read synchronous_commit");
    let value = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(
        value.as_deref(),
        Some("off"),
        "CDC latency tests measure with synchronous_commit = off"
    );
}
/// How long the stream may take to become consistent after pgmemo starts.
pub const START_BOUND: Duration = Duration::from_secs(20);

/// The cache tests' config with `invalidation.cdc = "on"` for [`DB`]; `extra` goes into
/// `[invalidation]`.
pub fn cdc_config(extra: &str) -> String {
    config(
        "",
        &format!("[invalidation]\ncdc = \"on\"\ncdc_databases = [\"{DB}\"]\n{extra}\n"),
    )
}

/// The state `/metrics` reports for [`DB`]'s stream (`None` before it is exported).
pub fn cdc_state(proxy: &Proxy) -> Option<String> {
    let metrics = proxy.admin_get("/metrics");
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix("pgmemo_cdc_state{")?;
        if !rest.contains(&format!("database=\"{DB}\"")) || !line.ends_with(" 1") {
            return None;
        }
        let state = rest.split("state=\"").nth(1)?.split('"').next()?;
        Some(state.to_owned())
    })
}

/// Waits until [`DB`]'s stream is `state`; panics after `within`.
pub async fn wait_state(proxy: &Proxy, state: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if cdc_state(proxy).as_deref() == Some(state) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "change stream not {state} within {within:?} (now {:?}); pgmemo stderr:\n{}",
            cdc_state(proxy),
            proxy.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until [`DB`]'s stream is consistent and serving.
pub async fn wait_streaming(proxy: &Proxy) -> Duration {
    wait_state(proxy, "streaming", START_BOUND).await
}
