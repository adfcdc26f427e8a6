//! pgbench through pgmemo: `pgbench -i` (COPY, DDL, VACUUM) and TPC-B-like runs in each
//! query mode (`-M simple`, `-M extended`, `-M prepared`) with several clients and threads;
//! afterwards the TPC-B balance invariant is checked directly on PostgreSQL, so a lost,
//! duplicated or misrouted statement anywhere in the relay shows up as a mismatch.

mod common;
#[path = "support/cache_probe.rs"]
mod probe;
#[path = "support/run.rs"]
mod run;

use std::time::Duration;

use common::{PgOptions, PgServer, Proxy, ProxyArgs, SUPERUSER};
use run::{Finished, libpq_command};

const DB: &str = "bench";
/// Seconds per benchmark run.
const RUN_SECONDS: u32 = 5;
/// Far above the run time: a stalled relay fails the test instead of hanging it.
const PGBENCH_TIMEOUT: Duration = Duration::from_secs(120);

/// What one pgbench run reported.
#[derive(Debug)]
struct Report {
    processed: u64,
    failed: u64,
    tps: f64,
}

fn pgbench(pg: &PgServer, port: u16, args: &[&str]) -> Finished {
    let home = tempfile::tempdir().expect("pgbench home");
    let mut cmd = libpq_command(&pg.bin("pgbench"), home.path());
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", SUPERUSER])
        .args(args)
        .arg(DB);
    run::run(cmd, None, PGBENCH_TIMEOUT)
}

/// The number after `label` on the line that starts with it.
fn field<'a>(out: &'a str, label: &str) -> Option<&'a str> {
    out.lines()
        .find_map(|line| line.trim().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
}

fn parse_report(out: &Finished) -> Report {
    let text = &out.stdout;
    let processed = field(text, "number of transactions actually processed:")
        .and_then(|n| n.split('/').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no transaction count in pgbench output:\n{}",
                out.describe()
            )
        });
    // pgbench 15+ prints this line; older versions have no notion of failed transactions
    // and abort the client (non-zero exit) instead.
    let failed = field(text, "number of failed transactions:")
        .map(|n| n.parse().expect("failed transaction count"))
        .unwrap_or(0);
    let tps = field(text, "tps =")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no tps in pgbench output:\n{}", out.describe()));
    Report {
        processed,
        failed,
        tps,
    }
}

/// Checks the TPC-B invariant directly on PostgreSQL: every transaction added the same
/// delta to one account, teller and branch and logged it once in history.
fn assert_balances(pg: &PgServer, expected_history_rows: u64) {
    let out = pg.psql(
        DB,
        "SELECT (SELECT sum(abalance) FROM pgbench_accounts), \
                (SELECT sum(bbalance) FROM pgbench_branches), \
                (SELECT sum(tbalance) FROM pgbench_tellers), \
                (SELECT coalesce(sum(delta), 0) FROM pgbench_history), \
                (SELECT count(*) FROM pgbench_history)",
    );
    let fields: Vec<i64> = out
        .trim()
        .split('|')
        .map(|f| {
            f.parse()
                .unwrap_or_else(|e| panic!("bad sum {f:?} in {out:?}: {e}"))
        })
        .collect();
    let [accounts, branches, tellers, deltas, rows] = fields[..] else {
        panic!("unexpected invariant query output {out:?}");
    };
    assert!(
        accounts == branches && branches == tellers && tellers == deltas,
        "TPC-B balances disagree: accounts {accounts}, branches {branches}, tellers {tellers}, \
         history deltas {deltas}"
    );
    assert_eq!(
        u64::try_from(rows).expect("row count"),
        expected_history_rows,
        "pgbench_history rows vs transactions pgbench reported"
    );
}

#[test]
fn pgbench_init_and_runs_in_every_query_mode_keep_tpcb_invariant() {
    let pg = PgServer::start(PgOptions::default());
    pg.psql("postgres", &format!("CREATE DATABASE {DB}"));
    let proxy = Proxy::start(ProxyArgs::new(pg.url(SUPERUSER, "postgres")));

    let init = pgbench(&pg, proxy.port(), &["-i", "-s", "2"]);
    assert!(
        init.success(),
        "pgbench -i through pgmemo failed:\n{}",
        init.describe()
    );
    let accounts = pg.psql(DB, "SELECT count(*) FROM pgbench_accounts");
    assert_eq!(
        accounts.trim(),
        "200000",
        "pgbench -i -s 2 loads 200000 accounts"
    );
    assert_balances(&pg, 0);

    let mut total = 0;
    for mode in ["simple", "extended", "prepared"] {
        let seconds = RUN_SECONDS.to_string();
        let out = pgbench(
            &pg,
            proxy.port(),
            &["-M", mode, "-c", "4", "-j", "2", "-T", &seconds, "-n"],
        );
        assert!(
            out.success(),
            "pgbench -M {mode} through pgmemo failed:\n{}",
            out.describe()
        );
        let report = parse_report(&out);
        assert_eq!(
            report.failed,
            0,
            "-M {mode}: failed transactions:\n{}",
            out.describe()
        );
        assert!(
            report.processed > 0,
            "-M {mode}: no transactions:\n{}",
            out.describe()
        );
        assert!(
            report.tps > 0.0,
            "-M {mode}: tps {}:\n{}",
            report.tps,
            out.describe()
        );
        total += report.processed;
        assert_balances(&pg, total);
        eprintln!(
            "-M {mode}: {} transactions, tps {:.1}",
            report.processed, report.tps
        );
    }
}

/// Sum of a pgmemo counter over its label sets, from the admin endpoint.
fn metric(proxy: &Proxy, name: &str) -> f64 {
    probe::metric_sum(&proxy.admin_get("/metrics"), name)
}

/// Point reads in `-M extended` (Parse of the unnamed statement every time) and `-M
/// prepared` (Bind of a named statement): nearly every read is answered from the cache, and
/// each checks the balance it got against the one the table holds (a wrong row fails the
/// script with a division by zero).
#[test]
fn pgbench_point_reads_hit_the_cache_with_the_right_rows_in_extended_and_prepared_modes() {
    let pg = PgServer::start(PgOptions::default());
    pg.psql("postgres", &format!("CREATE DATABASE {DB}"));
    let proxy = Proxy::start(ProxyArgs::new(pg.url(SUPERUSER, "postgres")));
    let init = pgbench(&pg, pg.addr().port(), &["-i", "-s", "1"]);
    assert!(init.success(), "pgbench -i failed:\n{}", init.describe());
    pg.psql(
        DB,
        "UPDATE pgbench_accounts SET abalance = aid * 2 WHERE aid <= 50",
    );
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("point.sql");
    std::fs::write(
        &script,
        "\\set aid random(1, 50)\n\
         SELECT abalance AS b FROM pgbench_accounts WHERE aid = :aid \\gset\n\
         \\if :b != :aid * 2\n\
         SELECT 1 / 0;\n\
         \\endif\n",
    )
    .unwrap();
    let script = script.to_string_lossy().into_owned();
    for mode in ["extended", "prepared"] {
        let hits0 = metric(&proxy, "pgmemo_cache_hits_total");
        let out = pgbench(
            &pg,
            proxy.port(),
            &[
                "-M", mode, "-c", "4", "-j", "2", "-T", "3", "-n", "-f", &script,
            ],
        );
        assert!(out.success(), "-M {mode}:\n{}", out.describe());
        let report = parse_report(&out);
        assert_eq!(report.failed, 0, "-M {mode}:\n{}", out.describe());
        let hits = metric(&proxy, "pgmemo_cache_hits_total") - hits0;
        eprintln!("-M {mode}: {} transactions, {hits} hits", report.processed);
        assert!(
            hits >= 0.9 * report.processed as f64,
            "-M {mode}: only {hits} of {} reads were cache hits",
            report.processed
        );
    }
}
