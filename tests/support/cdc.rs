//! Shared by the CDC integration tests: pgmemo's config with the change stream required
//! for the test database, and waits on its state as `/metrics` reports it. Included by path
//! next to `mod common;` and the cache probe.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use crate::common::Proxy;
use crate::probe::{DB, config};

/// Functional bound for a direct write to reach pgmemo through the stream (tight bounds
/// are the bench's: the machine's two cores are shared with other test processes).
pub const CDC_BOUND: Duration = Duration::from_secs(2);
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
