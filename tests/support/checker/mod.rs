//! The staleness checker (issue 3, build step 1): concurrent clients read and write a small
//! schema through pgmemo, and every read is judged against what had been acknowledged before
//! it was sent. Shared by `tests/staleness.rs` and `examples/staleness.rs` (included by path).
//!
//! The contract checked (DESIGN §1.2): a read that starts after a write was acknowledged sees
//! it. Every written value is a monotone counter, so "sees it" means "returns at least the
//! acknowledged value". Per key the checker keeps
//! - a **floor**: the highest value a writer has had acknowledged (raised only after the
//!   ack: ReadyForQuery of an implicit transaction, COMMIT, COMMIT AND CHAIN, COMMIT PREPARED);
//!   a reader snapshots it *before* sending, so a result below it is a **stale read**;
//! - a **ceiling**: how many increments were ever sent that may commit (raised *before*
//!   sending); a reader snapshots it *after* the result, so a result above it is a
//!   **phantom** (a rolled-back or uncommitted value escaped, e.g. a result stored inside a
//!   transaction).
//!
//! Nothing here assumes timing: floors and ceilings are one-sided bounds that hold however
//! long the proxy pauses (race hooks), and every operation has a generous timeout.
#![allow(dead_code)]

mod metrics;
mod reads;
mod schema;
mod state;
mod switch;
mod targets;
mod worker;
mod writes;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

// Each includer (test, example) uses part of the API.
#[allow(unused_imports)]
pub use metrics::{hit_ratio_from_metrics, parse_hit_ratio};
pub use schema::Shape;

use state::Shared;

/// How many violation/error texts a report keeps (the counts are always exact).
pub const MAX_DETAILS: usize = 20;

/// What can go wrong while running the checker itself (not a verdict on pgmemo).
#[derive(Debug, thiserror::Error)]
pub enum CheckerError {
    #[error("{what}: {detail}")]
    Db { what: String, detail: String },
    #[error("{0} timed out after {1:?}")]
    Timeout(String, Duration),
    #[error("unexpected result shape: {0}")]
    Shape(String),
    #[error("invalid checker configuration: {0}")]
    Config(String),
    #[error("metrics endpoint: {0}")]
    Metrics(String),
}

impl CheckerError {
    /// Wraps a driver error with what was being done, keeping the server's message and SQLSTATE.
    pub fn db(what: impl Into<String>, e: &tokio_postgres::Error) -> CheckerError {
        let detail = match e.as_db_error() {
            Some(db) => format!("{} ({}): {}", db.severity(), db.code().code(), db.message()),
            None => e.to_string(),
        };
        CheckerError::Db {
            what: what.into(),
            detail,
        }
    }
}

/// A deliberately broken read path, so a self-test can prove the checker catches staleness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The real thing: every read goes through the proxy as sent.
    None,
    /// Reads run inside a REPEATABLE READ transaction opened when the client starts and
    /// never ended: they keep seeing the data as it was then.
    StaleSnapshot,
    /// A client-side result cache shared by all clients, filled on a miss and never
    /// invalidated: the cache bug pgmemo's versions exist to prevent.
    NeverInvalidate,
    /// A client-side cache invalidated per key after every write ack, but which also stores
    /// what a transaction read before it rolled back (violates DESIGN I3).
    StoreInTransaction,
}

/// Everything one run needs. `CheckerConfig::new` gives the defaults of the issue.
#[derive(Debug, Clone)]
pub struct CheckerConfig {
    /// pgmemo's client address: every workload statement goes here.
    pub proxy: SocketAddr,
    /// Postgres itself: schema setup, 2PC clean-up and the final consistency check only.
    pub direct: SocketAddr,
    pub user: String,
    /// Empty = send none (trust).
    pub password: String,
    pub dbname: String,
    /// Total operations over all clients (an operation may be several statements).
    pub ops: u64,
    pub clients: usize,
    pub seed: u64,
    /// Clients stop taking new operations after this (the report says `timed_out`).
    pub time_limit: Duration,
    /// Bound on one operation, reconnects included; generous so paused race hooks are fine.
    pub op_timeout: Duration,
    /// Share of operations that write, in percent.
    pub write_percent: u32,
    /// Use two-phase commit when the server allows enough prepared transactions.
    pub two_phase: bool,
    pub shape: Shape,
    pub fault: Fault,
    /// pgmemo's admin address: the schema is (re)created directly on Postgres, which pgmemo
    /// would only notice at its next catalog poll, so the checker asks it to flush right
    /// after setting up (`POST /invalidate {"all": true}`).
    pub admin: Option<SocketAddr>,
    /// The first this many clients connect straight to PostgreSQL, as other applications
    /// would: pgmemo never sees their writes (only change data capture can). Their acks
    /// raise the floors only `direct_ack_delay` later: a read must see a direct write once
    /// it was acknowledged more than the lag bound before the read began.
    pub direct_clients: usize,
    pub direct_ack_delay: Duration,
    /// Write share of the clients that go through the proxy, when it differs from
    /// `write_percent` (which then applies to direct clients only).
    pub proxied_write_percent: Option<u32>,
    /// Further pgmemo instances (sharing one Redis): proxied clients are spread over
    /// `proxy` and these, round robin by client id.
    pub more_proxies: Vec<SocketAddr>,
    /// Their admin addresses, flushed after set-up as `admin` is.
    pub more_admins: Vec<SocketAddr>,
    /// Share of write operations (in percent) drawn from the writers pgmemo must treat as
    /// table-wide although they name keys (key-assigning UPDATE, INSERT ... SELECT, range
    /// UPDATE on `parent`) instead of the usual mix. `None`: the usual mix alone.
    pub wide_write_percent: Option<u32>,
    /// How long a client keeps trying to reconnect after a failed operation before it gives
    /// up for the rest of the run (zero: one attempt). A soak that restarts PostgreSQL on
    /// purpose wants its clients back once the server is.
    pub reconnect_for: Duration,
    /// Print every stale read, phantom, leak and error on stderr the moment it is recorded,
    /// stamped with the wall clock, so a long run can tell the errors that fell in a window
    /// it caused (a restart) from the others; the report keeps only `MAX_DETAILS` texts.
    pub echo: bool,
    /// Print the running counts on stdout at this interval (a long run's progress).
    pub progress: Option<Duration>,
    /// Each client sleeps this long before each operation: a soak's checker runs beside
    /// other load for an hour, at a bounded rate rather than as fast as it can.
    pub op_pause: Duration,
}

impl CheckerConfig {
    pub fn new(proxy: SocketAddr, direct: SocketAddr) -> CheckerConfig {
        CheckerConfig {
            proxy,
            direct,
            user: "postgres".into(),
            password: String::new(),
            dbname: "postgres".into(),
            ops: 100_000,
            clients: 16,
            seed: 0x5eed_cafe,
            time_limit: Duration::from_secs(150),
            op_timeout: Duration::from_secs(60),
            write_percent: 30,
            two_phase: true,
            shape: Shape::default(),
            fault: Fault::None,
            admin: None,
            direct_clients: 0,
            direct_ack_delay: Duration::ZERO,
            proxied_write_percent: None,
            more_proxies: Vec::new(),
            more_admins: Vec::new(),
            wide_write_percent: None,
            reconnect_for: Duration::ZERO,
            echo: false,
            progress: None,
            op_pause: Duration::ZERO,
        }
    }

    /// The pgmemo instance client `id` goes through.
    pub fn proxy_for(&self, id: usize) -> SocketAddr {
        match id % (1 + self.more_proxies.len()) {
            0 => self.proxy,
            n => self.more_proxies.get(n - 1).copied().unwrap_or(self.proxy),
        }
    }

    fn validate(&self) -> Result<(), CheckerError> {
        let bad = |why: &str| Err(CheckerError::Config(why.into()));
        if self.clients == 0 || self.clients > 1000 {
            return bad("clients must be in 1..=1000");
        }
        if self.ops == 0 {
            return bad("ops must be at least 1");
        }
        if self.direct_clients > self.clients {
            return bad("direct_clients must be at most clients");
        }
        let over = |p: Option<u32>| p.is_some_and(|p| p > 100);
        if self.write_percent > 100
            || over(self.proxied_write_percent)
            || over(self.wide_write_percent)
        {
            return bad("write_percent must be at most 100");
        }
        self.shape.validate().map_err(CheckerError::Config)
    }
}

/// The verdict of one run.
#[derive(Debug, Clone)]
pub struct Report {
    pub ops: u64,
    pub reads: u64,
    pub writes: u64,
    /// Reads that returned less than was acknowledged before they were sent.
    pub stale: u64,
    /// Reads that returned more than could ever have committed.
    pub phantom: u64,
    /// Reads answered for another session state than the reader's (see `switch.rs`).
    pub leaked: u64,
    /// Failed or timed-out operations, and final-state mismatches.
    pub errors: u64,
    /// The first `MAX_DETAILS` stale/phantom/error texts.
    pub details: Vec<String>,
    pub elapsed: Duration,
    /// The wall-clock limit stopped the run before `ops` operations.
    pub timed_out: bool,
    /// Whether 2PC operations were part of the mix.
    pub two_phase: bool,
    /// Operations per kind.
    pub op_counts: BTreeMap<&'static str, u64>,
}

impl Report {
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// No stale read, no phantom, no leak, no error, and the run finished.
    pub fn is_clean(&self) -> bool {
        self.stale == 0
            && self.phantom == 0
            && self.leaked == 0
            && self.errors == 0
            && !self.timed_out
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "ops {} (reads {}, writes {}) in {:.1} s = {:.0} ops/s{}",
            self.ops,
            self.reads,
            self.writes,
            self.elapsed.as_secs_f64(),
            self.ops_per_sec(),
            if self.timed_out {
                " [TIME LIMIT HIT]"
            } else {
                ""
            }
        )?;
        writeln!(
            f,
            "stale reads {}, phantom reads {}, reads of another session's state {}, errors {}, \
             two-phase commit {}",
            self.stale,
            self.phantom,
            self.leaked,
            self.errors,
            if self.two_phase { "on" } else { "off" }
        )?;
        let kinds: Vec<String> = self
            .op_counts
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        writeln!(f, "mix: {}", kinds.join(", "))?;
        for detail in &self.details {
            writeln!(f, "  {detail}")?;
        }
        Ok(())
    }
}

/// Sets the schema up (directly), runs the workload through the proxy, checks the final state
/// (directly) and reports. An `Err` means the checker could not run at all.
pub async fn run(config: &CheckerConfig) -> Result<Report, CheckerError> {
    config.validate()?;
    let direct = worker::connect(config, config.direct).await?;
    schema::setup(&direct, &config.shape).await?;
    for admin in &config.more_admins {
        metrics::flush_all(*admin).await?;
    }
    if let Some(admin) = config.admin {
        metrics::flush_all(admin).await?;
    }
    let allowed = schema::max_prepared_transactions(&direct).await?;
    let two_phase = config.two_phase && allowed >= config.clients as i64;
    let shared = Arc::new(Shared::new(config.clone(), two_phase));
    let started = Instant::now();
    let progress = config
        .progress
        .map(|every| tokio::spawn(print_progress(Arc::clone(&shared), every)));
    let mut tasks = tokio::task::JoinSet::new();
    for id in 0..config.clients {
        tasks.spawn(worker::Worker::run(Arc::clone(&shared), id));
    }
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined {
            shared.rec.error(format!("client task failed: {e}"));
        }
    }
    let elapsed = started.elapsed();
    if let Some(progress) = progress {
        progress.abort();
    }
    // A fresh connection: the first one may have died with a server restart during the run.
    let direct = worker::connect(config, config.direct).await?;
    schema::rollback_leftover_prepared(&direct).await?;
    if shared.rec.errors.load(Ordering::Relaxed) == 0 {
        // With no failed operation every counted increment committed exactly once.
        for mismatch in schema::final_mismatches(&direct, &config.shape, &shared.fams).await? {
            shared.rec.error(format!("final state: {mismatch}"));
        }
    }
    Ok(shared.report(elapsed))
}

/// One line of running counts every `every`, for as long as the run lasts (aborted by `run`).
async fn print_progress(shared: Arc<Shared>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let r = &shared.rec;
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        println!(
            "progress unix_ms={} ops={} reads={} writes={} stale={} phantom={} leaked={} \
             errors={}",
            state::unix_ms(),
            load(&r.ops),
            load(&r.reads),
            load(&r.writes),
            load(&r.stale),
            load(&r.phantom),
            load(&r.leaked),
            load(&r.errors)
        );
    }
}
