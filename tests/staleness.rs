//! The staleness checker (issue 3, build step 1) against pgmemo in front of a throwaway
//! Postgres: 16 clients, 100,000 operations, no stale read, no phantom, no error. Then the
//! same checker against deliberately broken read paths, which it must catch (proof that this
//! test can fail), and the hit-ratio reader of the bench mode (`examples/staleness.rs`).

#[path = "support/cdc.rs"]
mod cdc;
#[path = "support/checker/mod.rs"]
mod checker;
mod common;
#[path = "support/cache_probe.rs"]
mod probe;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::Duration;

use checker::{CheckerConfig, Fault, Report, Shape};
use common::{PgOptions, SUPERUSER, Stack};

/// Every kind of operation the checker has (see `worker.rs`).
const OP_KINDS: usize = 16;

/// The audit trigger's function writes `counters_audit` and nothing else: declared, so a
/// counter update bumps that table instead of the epoch (which would flush every entry and
/// leave the checker almost nothing cached to judge). The switching reader's tenant view is
/// cached (it reads `current_setting`), so a leak across tenants would be served.
const CONFIG: &str = "[[functions.writes]]\nfunction = \"public.counters_audit_fn\"\ntables = [\"public.counters_audit\"]\n\n[[rules]]\ntable = \"public.iso_tenant_view\"\nallow_stable_functions = true\n";

fn stack() -> Stack {
    stack_with("")
}

/// `CONFIG` plus `rules` (appended).
fn stack_with(rules: &str) -> Stack {
    // Two-phase commit needs prepared transactions; 20 ≥ one per client.
    let opts = PgOptions::default().setting("max_prepared_transactions", "20");
    let config = format!("{CONFIG}\n{rules}");
    Stack::start_with(opts, |args| args.config(config))
}

/// Every table the checker writes is a write-through table (issue 19).
const THROUGH: &str = "[[rules]]\ntable = \"counters\"\nwrite = \"through\"\n\n\
[[rules]]\ntable = \"counters_audit\"\nwrite = \"through\"\n\n\
[[rules]]\ntable = \"parent\"\nwrite = \"through\"\n\n\
[[rules]]\ntable = \"child\"\nwrite = \"through\"\n\n\
[[rules]]\ntable = \"events\"\nwrite = \"through\"\n";

fn config(s: &Stack, ops: u64, clients: usize) -> CheckerConfig {
    let mut config = CheckerConfig::new(s.proxy.addr(), s.pg.addr());
    config.user = SUPERUSER.into();
    config.dbname = common::stack::APP_DB.into();
    config.ops = ops;
    config.clients = clients;
    config.admin = Some(s.proxy.admin_addr());
    config
}

async fn run(config: &CheckerConfig) -> Report {
    let report = checker::run(config)
        .await
        .unwrap_or_else(|e| panic!("the checker could not run: {e}"));
    eprintln!("{:?}:\n{report}", config.fault);
    report
}

/// The samples of the counter `prefix` (its name and `{`) with `result="stored"`, summed.
fn stored(s: &Stack, prefix: &str) -> f64 {
    s.proxy
        .admin_get("/metrics")
        .lines()
        .filter(|l| l.starts_with(prefix) && l.contains("\"stored\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The share of cacheable lookups that hit, from pgmemo's metrics: the run must really
/// have been served from the cache, or "no stale read" proves nothing.
async fn assert_cache_was_used(s: &Stack, report: &Report) {
    let ratio = checker::hit_ratio_from_metrics(s.proxy.admin_addr())
        .await
        .expect("GET /metrics");
    eprintln!("cache hit ratio: {ratio:?}");
    assert!(
        ratio.is_some_and(|r| r > 0.05),
        "the cache served (almost) nothing, hit ratio {ratio:?}:\n{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_reads_through_pgmemo() {
    let s = stack();
    let mut c = config(&s, 100_000, 16);
    // Invalidation is per table: with few writes, reads between two writes of a table hit,
    // so the run judges results served from the cache, not only relayed ones.
    c.write_percent = 5;
    c.shape = Shape::small();
    let report = run(&c).await;
    assert!(report.is_clean(), "{report}");
    assert_cache_was_used(&s, &report).await;
    assert_eq!(report.ops, 100_000, "{report}");
    assert!(
        report.two_phase,
        "two-phase commit left out of the mix:\n{report}"
    );
    assert_eq!(report.op_counts.len(), OP_KINDS, "{report}");
    assert!(report.op_counts.values().all(|n| *n > 0), "{report}");
}

/// The same workload with every written table under `write = "through"`: results re-run
/// after each commit on the writer's connection and stored under the new versions are
/// judged like any other (0 stale), and re-runs really happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_reads_with_write_through() {
    let s = stack_with(THROUGH);
    let mut c = config(&s, 50_000, 16);
    c.write_percent = 5;
    c.shape = Shape::small();
    let report = run(&c).await;
    assert!(report.is_clean(), "{report}");
    assert_cache_was_used(&s, &report).await;
    let stored = stored(&s, "pgmemo_write_through_total{");
    eprintln!("write-through: {stored} results re-run and stored");
    assert!(stored > 0.0, "no result was re-run:\n{report}");
}

/// The same workload with every written table refreshed ahead (issue 19), from 10 ms of
/// age (writes invalidate most entries sooner): background refreshes replace entries while
/// writes race them, judged like any other
/// result (0 stale), and refreshes really happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_reads_with_refresh_ahead() {
    let rules: String = ["counters", "counters_audit", "parent", "child", "events"]
        .iter()
        .map(|t| format!("[[rules]]\ntable = \"{t}\"\nttl = \"1s\"\nrefresh_ahead = 0.01\n\n"))
        .collect();
    let s = stack_with(&rules);
    let mut c = config(&s, 30_000, 16);
    c.write_percent = 5;
    c.shape = Shape::small();
    let report = run(&c).await;
    assert!(report.is_clean(), "{report}");
    assert_cache_was_used(&s, &report).await;
    let stored = stored(&s, "pgmemo_refresh_total{");
    eprintln!("refresh-ahead: {stored} results refreshed and stored");
    assert!(stored > 0.0, "no result was refreshed:\n{report}");
}

/// The same workload with pgmemo pausing at random between reading versions and forwarding
/// a read (I1) and between seeing a commit and bumping (I2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_reads_under_race_hooks() {
    // The test build of pgmemo has the `race-hooks` feature (a dev-dependency on itself);
    // the variable arms them.
    let opts = PgOptions::default().setting("max_prepared_transactions", "20");
    let s = Stack::start_with(opts, |args| {
        args.config(CONFIG).env("PGMEMO_RACE_HOOK_MAX_US", "400")
    });
    let mut c = config(&s, 30_000, 16);
    c.write_percent = 10;
    c.shape = Shape::small();
    c.time_limit = Duration::from_secs(240);
    let report = run(&c).await;
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.ops, 30_000, "{report}");
    assert_cache_was_used(&s, &report).await;
    let metrics = s.proxy.admin_get("/metrics");
    for point in ["after_snapshot", "before_bump"] {
        let line = format!("pgmemo_race_hook_pauses_total{{point=\"{point}\"}}");
        let paused = metrics
            .lines()
            .find(|l| l.starts_with(&line))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<f64>().ok())
            .unwrap_or(0.0);
        assert!(
            paused > 100.0,
            "the {point} hook barely ran ({paused}):\n{metrics}"
        );
    }
}

/// Few keys and a small run: a broken read path shows within seconds.
fn self_test_config(s: &Stack, fault: Fault) -> CheckerConfig {
    let mut config = config(s, 4_000, 8);
    config.fault = fault;
    config.time_limit = Duration::from_secs(60);
    config.shape = Shape::small();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checker_catches_reads_from_a_stale_snapshot() {
    let s = stack();
    let report = run(&self_test_config(&s, Fault::StaleSnapshot)).await;
    assert!(
        report.stale > 0,
        "a frozen snapshot went unnoticed:\n{report}"
    );
    // Old data is never newer than what committed, and nothing else went wrong.
    assert_eq!((report.phantom, report.errors), (0, 0), "{report}");
    assert!(!report.is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checker_catches_a_cache_that_never_invalidates() {
    let s = stack();
    let report = run(&self_test_config(&s, Fault::NeverInvalidate)).await;
    assert!(
        report.stale > 0,
        "a never-invalidated cache went unnoticed:\n{report}"
    );
    assert_eq!((report.phantom, report.errors), (0, 0), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checker_catches_results_stored_inside_a_rolled_back_transaction() {
    let s = stack();
    let report = run(&self_test_config(&s, Fault::StoreInTransaction)).await;
    assert!(
        report.phantom > 0,
        "rolled-back values served unnoticed:\n{report}"
    );
    assert_eq!(report.errors, 0, "{report}");
}

/// Row-level invalidation deliberately broken: with `PGMEMO_FAULT_SKIP_WIDE=1` (a
/// `race-hooks` build) a write that should bump the table-wide counter pinned reads depend
/// on bumps only the table counter of unpinned reads. Reads pinned to rows (`parent` by id
/// or pair, `counters` and `counters_audit` by id) then miss range updates, INSERT ...
/// SELECT, key-assigning updates, cascades and trigger writes: a write mix rich in those
/// must be caught as stale reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checker_catches_row_precision_that_skips_table_wide_writes() {
    let opts = PgOptions::default().setting("max_prepared_transactions", "20");
    let s = Stack::start_with(opts, |args| {
        args.config(CONFIG).env("PGMEMO_FAULT_SKIP_WIDE", "1")
    });
    let mut c = self_test_config(&s, Fault::None);
    c.write_percent = 15;
    c.wide_write_percent = Some(60);
    let report = run(&c).await;
    assert!(
        report.stale > 0,
        "pinned reads that missed table-wide writes went unnoticed:\n{report}"
    );
    assert_eq!((report.phantom, report.errors), (0, 0), "{report}");
}

#[test]
fn hit_ratio_parses_prometheus_text() {
    let text = "# HELP pgmemo_cache_hits_total Cache hits.\n\
                # TYPE pgmemo_cache_hits_total counter\n\
                pgmemo_cache_hits_total{layer=\"l1\"} 60\n\
                pgmemo_cache_hits_total{layer=\"l2\",note=\"a}b\"} 15 1700000000000\n\
                pgmemo_cache_hits_total_created 1700000000\n\
                pgmemo_cache_misses_total 25\n";
    assert_eq!(checker::parse_hit_ratio(text), Some(0.75));
    let no_misses = "pgmemo_cache_hits_total 3\n";
    assert_eq!(checker::parse_hit_ratio(no_misses), None);
    let no_lookups = "pgmemo_cache_hits_total 0\npgmemo_cache_misses_total 0\n";
    assert_eq!(checker::parse_hit_ratio(no_lookups), None);
    assert_eq!(checker::parse_hit_ratio("pgmemo_sessions 4\n"), None);
}

#[tokio::test]
async fn hit_ratio_reads_pgmemos_metrics_endpoint() {
    let s = stack();
    let response = s.proxy.admin_get("/metrics");
    let (_, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let ratio = checker::hit_ratio_from_metrics(s.proxy.admin_addr())
        .await
        .expect("GET /metrics");
    assert_eq!(ratio, checker::parse_hit_ratio(body));
    // A dead admin address is an error, not "no metrics".
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let dead = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    assert!(checker::hit_ratio_from_metrics(dead).await.is_err());
}

/// Change data capture (issue 5): 4 of the 16 clients connect straight to PostgreSQL, so
/// pgmemo never sees their writes; the change stream must (see `direct_writers_config`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_reads_with_direct_writers_under_change_data_capture() {
    let s = cdc_stack().await;
    let report = run(&direct_writers_config(&s, 40_000)).await;
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.ops, 40_000, "{report}");
    assert_cache_was_used(&s, &report).await;
    assert!(
        metric(&s, "pgmemo_cdc_transactions_total") > 100.0,
        "the direct writes were streamed"
    );
}

/// The same run while the replication backend is terminated every 1.5 s: pgmemo bypasses
/// the cache, reconnects, invalidates after each new consistent point, and still serves no
/// stale read; once it exits, no replication slot is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_backend_killed_under_load_still_no_stale_reads_and_no_slot_left() {
    let mut s = cdc_stack().await;
    let killer = {
        let direct = s.direct().await;
        tokio::spawn(async move {
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                direct
                    .batch_execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_replication \
                         WHERE application_name = 'pgmemo-cdc'",
                    )
                    .await
                    .expect("terminate the walsender");
            }
        })
    };
    // Longer than the four kills (6 s) on this machine.
    let mut c = direct_writers_config(&s, 120_000);
    c.time_limit = Duration::from_secs(240);
    let report = run(&c).await;
    killer.await.expect("killer task");
    assert!(report.is_clean(), "{report}");
    assert_cache_was_used(&s, &report).await;
    assert!(
        metric(&s, "pgmemo_cdc_reconnects_total") >= 2.0,
        "the stream was lost and re-established during the run"
    );
    let bypassed = s
        .proxy
        .admin_get("/metrics")
        .lines()
        .any(|l| l.contains("reason=\"cdc_not_streaming\""));
    assert!(
        bypassed,
        "reads were relayed uncached while the stream was down"
    );
    s.proxy.signal(common::Signal::Term);
    s.proxy.wait_exit(Duration::from_secs(30));
    let direct = s.direct().await;
    let started = std::time::Instant::now();
    loop {
        let n: i64 = direct
            .query_one("SELECT count(*) FROM pg_replication_slots", &[])
            .await
            .expect("slots")
            .get(0);
        if n == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{n} slots outlived pgmemo"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// pgmemo with the change stream required for the test database, once it streams.
async fn cdc_stack() -> Stack {
    let opts = PgOptions::default().setting("max_prepared_transactions", "20");
    let config_toml = format!(
        "{CONFIG}\n[invalidation]\ncdc = \"on\"\ncdc_databases = [\"{}\"]\n",
        common::stack::APP_DB
    );
    let s = Stack::start_with(opts, |args| args.config(config_toml));
    cdc::wait_streaming(&s.proxy).await;
    s
}

/// 16 clients, 4 of them straight to PostgreSQL (5 % writes) and 12 through pgmemo (1 %
/// writes, so the direct writes are mostly invalidated by the stream alone). A read may
/// miss a direct write only if it was acknowledged less than 2 s before the read began (a
/// functional bound on a shared two-core machine; the bench measures the real lag).
fn direct_writers_config(s: &Stack, ops: u64) -> CheckerConfig {
    let mut c = config(s, ops, 16);
    c.write_percent = 5;
    c.shape = Shape::small();
    c.direct_clients = 4;
    c.direct_ack_delay = Duration::from_secs(2);
    c.proxied_write_percent = Some(1);
    c
}

/// Sum of a pgmemo counter over its label sets.
fn metric(s: &Stack, name: &str) -> f64 {
    probe::metric_sum(&s.proxy.admin_get("/metrics"), name)
}

/// Proof that the direct-writer run can fail: with the change stream off and a 60 s TTL,
/// direct writes (the proxied clients only read, so nothing else invalidates) must be
/// caught as stale reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_writers_without_change_data_capture_are_caught() {
    let opts = PgOptions::default().setting("max_prepared_transactions", "20");
    let config_toml = format!("{CONFIG}\n[invalidation]\ncdc = \"off\"\n");
    let s = Stack::start_with(opts, |args| args.config(config_toml));
    let mut c = config(&s, 20_000, 16);
    c.write_percent = 5;
    c.shape = Shape::small();
    c.direct_clients = 4;
    c.direct_ack_delay = Duration::from_millis(50);
    c.proxied_write_percent = Some(0);
    let report = run(&c).await;
    assert!(report.stale > 0, "stale reads went unnoticed:\n{report}");
}
