//! Bench mode of the staleness checker (issue 3): the workload of `tests/staleness.rs` at
//! scale against a running pgmemo and its Postgres, e.g.
//!
//! ```text
//! cargo run --release --example staleness -- --proxy 127.0.0.1:6432 --direct 127.0.0.1:5432 \
//!     --ops 1000000 --clients 16 --admin 127.0.0.1:9187
//! ```
//!
//! For a soak (`scripts/harden soak`), `--duration` runs for a fixed time instead of a count,
//! `--progress` prints the running counts, `--echo` prints each violation and error as it
//! happens with the wall clock, and `--reconnect-for` keeps clients retrying through a
//! server restart; `--direct-clients` sends some clients straight to PostgreSQL, so only
//! change data capture tells pgmemo about their writes.
//!
//! It DROPS and recreates `counters`, `counters_audit`, `counters_view`, `parent`, `child` and
//! `events` in the target database (through `--direct`). Prints throughput, stale reads,
//! phantoms, errors and (with `--admin`) the cache hit ratio; exits 1 unless the run was clean.

#[path = "../tests/support/checker/mod.rs"]
mod checker;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// Staleness checker, bench mode.
#[derive(Debug, Parser)]
struct Args {
    /// pgmemo's client address (the workload goes here)
    #[arg(long)]
    proxy: SocketAddr,
    /// Postgres itself (schema setup and the final consistency check only)
    #[arg(long)]
    direct: SocketAddr,
    /// pgmemo's admin address, to report the cache hit ratio from /metrics
    #[arg(long)]
    admin: Option<SocketAddr>,
    #[arg(long, default_value_t = 1_000_000)]
    ops: u64,
    #[arg(long, default_value_t = 16)]
    clients: usize,
    #[arg(long, default_value = "postgres")]
    user: String,
    /// Password for --user (empty: none)
    #[arg(long, env = "PGPASSWORD", default_value = "", hide_env_values = true)]
    password: String,
    #[arg(long, default_value = "postgres")]
    dbname: String,
    #[arg(long, default_value_t = 0x5eed_cafe)]
    seed: u64,
    /// Share of operations that write, in percent
    #[arg(long, default_value_t = 30)]
    write_percent: u32,
    /// Wall-clock limit of the whole run, in seconds
    #[arg(long, default_value_t = 3600)]
    time_limit: u64,
    /// Limit of one operation, in seconds (generous: race hooks may pause the proxy)
    #[arg(long, default_value_t = 60)]
    op_timeout: u64,
    /// Leave two-phase commit out even if the server allows it
    #[arg(long)]
    no_two_phase: bool,
    /// Few keys (6 counters, 2 groups, 3 parents, 4 events, 2 partitions): reads concentrate
    /// between writes, so far more of them are served from the cache
    #[arg(long)]
    small_shape: bool,
    /// Run for this many seconds with no operation count (ending at the time is no failure)
    #[arg(long)]
    duration: Option<u64>,
    /// Print the running counts every this many seconds
    #[arg(long)]
    progress: Option<u64>,
    /// Print every stale read, phantom, leak and error on stderr as it is recorded
    #[arg(long)]
    echo: bool,
    /// Keep retrying a failed reconnect for this many seconds before a client gives up
    #[arg(long, default_value_t = 0)]
    reconnect_for: u64,
    /// The first this many clients connect straight to PostgreSQL (only change data
    /// capture tells pgmemo about their writes)
    #[arg(long, default_value_t = 0)]
    direct_clients: usize,
    /// A read may miss a direct client's write acknowledged less than this long before it
    #[arg(long, default_value_t = 2000)]
    direct_ack_delay_ms: u64,
    /// Write share (percent) of the clients through pgmemo, when direct clients use
    /// --write-percent
    #[arg(long)]
    proxied_write_percent: Option<u32>,
    /// Each client pauses this many microseconds before each operation (a bounded rate)
    #[arg(long, default_value_t = 0)]
    op_pause_us: u64,
    /// Deliberately break the read path, to see the checker fail (exit 1)
    #[arg(long, value_enum, default_value_t = FaultArg::None)]
    fault: FaultArg,
}

/// `checker::Fault` on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum FaultArg {
    None,
    StaleSnapshot,
    NeverInvalidate,
    StoreInTransaction,
}

impl From<FaultArg> for checker::Fault {
    fn from(arg: FaultArg) -> checker::Fault {
        match arg {
            FaultArg::None => checker::Fault::None,
            FaultArg::StaleSnapshot => checker::Fault::StaleSnapshot,
            FaultArg::NeverInvalidate => checker::Fault::NeverInvalidate,
            FaultArg::StoreInTransaction => checker::Fault::StoreInTransaction,
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut config = checker::CheckerConfig::new(args.proxy, args.direct);
    config.user = args.user;
    config.password = args.password;
    config.dbname = args.dbname;
    config.ops = args.ops;
    config.clients = args.clients;
    config.seed = args.seed;
    config.write_percent = args.write_percent;
    config.time_limit = Duration::from_secs(args.time_limit);
    config.op_timeout = Duration::from_secs(args.op_timeout);
    config.two_phase = !args.no_two_phase;
    config.admin = args.admin;
    if args.small_shape {
        config.shape = checker::Shape::small();
    }
    config.fault = args.fault.into();
    if let Some(secs) = args.duration {
        config.ops = u64::MAX;
        config.time_limit = Duration::from_secs(secs);
    }
    config.progress = args.progress.map(Duration::from_secs);
    config.echo = args.echo;
    config.reconnect_for = Duration::from_secs(args.reconnect_for);
    config.direct_clients = args.direct_clients;
    config.direct_ack_delay = Duration::from_millis(args.direct_ack_delay_ms);
    config.proxied_write_percent = args.proxied_write_percent;
    config.op_pause = Duration::from_micros(args.op_pause_us);
    let report = match checker::run(&config).await {
        Ok(report) => report,
        Err(e) => {
            eprintln!("staleness: {e}");
            return ExitCode::from(2);
        }
    };
    print!("{report}");
    if !report.two_phase && config.two_phase {
        println!(
            "note: two-phase commit skipped: the server needs max_prepared_transactions >= {}",
            config.clients
        );
    }
    if let Some(admin) = args.admin {
        match checker::hit_ratio_from_metrics(admin).await {
            Ok(Some(ratio)) => println!("cache hit ratio {:.1}%", ratio * 100.0),
            Ok(None) => println!("cache hit ratio: n/a (no cache metrics at {admin})"),
            Err(e) => println!("cache hit ratio: {e}"),
        }
    }
    // A timed run is meant to end at its time limit.
    let finished = args.duration.is_some() || !report.timed_out;
    let clean = report.stale == 0 && report.phantom == 0 && report.leaked == 0;
    if clean && report.errors == 0 && finished {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
