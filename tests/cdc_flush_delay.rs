//! The delay the change stream cannot measure (issue 15, item 5): with
//! `synchronous_commit = off` a commit is visible before its WAL is flushed, and walsenders
//! send only flushed WAL, so a direct write reaches pgmemo up to 3 × `wal_writer_delay` late.
//! pgmemo reads the server's settings when the stream connects and exports that bound as
//! `pgmemo_cdc_flush_delay_bound_seconds`; with `synchronous_commit = on` it is 0.

#[path = "support/cdc.rs"]
mod cdc;
mod common;
#[path = "support/cache_probe.rs"]
mod probe;

use std::time::{Duration, Instant};

use cdc::{cdc_config, wait_streaming};
use common::{PgOptions, PgServer};
use probe::{CacheStack, DB};

const METRIC: &str = "pgmemo_cdc_flush_delay_bound_seconds";

/// The gauge's value for [`DB`], once exported.
fn bound(s: &CacheStack) -> Option<f64> {
    let metrics = s.proxy.admin_get("/metrics");
    let label = format!("database=\"{DB}\"");
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(METRIC)?.strip_prefix('{')?;
        if !rest.contains(&label) {
            return None;
        }
        line.rsplit(' ').next()?.parse().ok()
    })
}

/// pgmemo with the stream on, in front of a server with these `postgresql.conf` settings.
async fn stack(settings: &[(&str, &str)]) -> CacheStack {
    let mut opts = PgOptions::default().hba_line("host all all 127.0.0.1/32 trust");
    for (name, value) in settings {
        opts = opts.setting(name, value);
    }
    let s = CacheStack::start_on(PgServer::start(opts), &cdc_config("")).await;
    wait_streaming(&s.proxy).await;
    s
}

/// The exported bound, waiting for the lag monitor to publish it.
async fn wait_bound(s: &CacheStack) -> f64 {
    let started = Instant::now();
    loop {
        if let Some(v) = bound(s) {
            return v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{METRIC} not exported; pgmemo stderr:\n{}",
            s.proxy.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn asynchronous_commit_reports_three_wal_writer_rounds() {
    let s = stack(&[
        ("synchronous_commit", "off"),
        ("wal_writer_delay", "'150ms'"),
    ])
    .await;
    let got = wait_bound(&s).await;
    assert!((got - 0.45).abs() < 1e-9, "{METRIC} = {got}, expected 0.45");
    // The gauge is set just before the line is logged: give the log a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !s
        .proxy
        .stderr()
        .contains("commits may reach the change stream up to this late")
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let stderr = s.proxy.stderr();
    assert!(
        stderr.contains("commits may reach the change stream up to this late"),
        "the bound is logged: {stderr}"
    );
}

#[tokio::test]
async fn synchronous_commit_reports_no_delay() {
    let s = stack(&[
        ("synchronous_commit", "on"),
        ("wal_writer_delay", "'150ms'"),
    ])
    .await;
    assert_eq!(wait_bound(&s).await, 0.0);
}
