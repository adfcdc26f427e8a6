//! Differential protocol testing (issue 22): random but valid client conversations
//! (`conversation`) sent to pgmemo and straight to PostgreSQL over raw wire frames (`runner`), the
//! replies compared frame by frame (`compare`), a mismatch reported with its seed and
//! minimised by delta debugging (`minimise`). Each worker owns a pair of databases cloned
//! from one template (`fixture`): its conversations run on the pair one at a time, the
//! fixture's rows put back before each; every conversation runs twice on each side without a
//! reset in between (cold, then warm: the second run's reads of what the first did not write
//! are served from entries the first stored). Included by path next to `mod common;` and
//! `mod wire;` in the test root.
#![allow(dead_code)]

pub mod compare;
pub mod conversation;
pub mod fixture;
pub mod minimise;
pub mod msg;
pub mod runner;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::common::{PgOptions, PgServer, Proxy, ProxyArgs, SUPERUSER};
use compare::Diff;
use conversation::{Conversation, Step};
use runner::{Target, Transcript};

/// How long one frame may take before a side counts as silent.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// pgmemo's configuration for the run: no change data capture (the direct databases'
/// writes must not reach it; the proxied databases are written only through it), no
/// adaptive bypass (every cacheable read is looked up), the tenant view cacheable, and the
/// fixture's writing functions declared (else each of their writes, the reset's included,
/// would empty the whole cache and leave few hits to compare).
pub const CONFIG: &str = "
[cache]
ttl = \"10m\"
min_hit_ratio = 0

[catalog]
poll_interval = \"1s\"

[invalidation]
cdc = \"off\"

[[rules]]
table = \"public.tenant_items\"
allow_stable_functions = true

[[functions.writes]]
function = \"public.audit_fn\"
tables = [\"public.audit\"]

[[functions.writes]]
function = \"public.touch_item\"
tables = [\"public.items\"]
";

/// One worker's databases and reset connections.
pub struct Pair {
    pub proxy: Target,
    pub direct: Target,
    reset_proxy: Client,
    reset_direct: Client,
    /// SQL run on the proxied database after each reset (the harness self-test's sabotage).
    sabotage: Option<String>,
    /// The largest OID before any conversation ran (newer table OIDs are masked).
    fixture_oids: u32,
}

/// What a conversation did on both sides.
pub struct Outcome {
    pub frames: u64,
    /// Runs (of the direct side) that stopped before their last step: a timeout or a close.
    pub ended_early: u64,
    /// "cold" or "warm" run, and the first difference.
    pub diff: Option<(&'static str, Diff)>,
}

impl Pair {
    pub async fn new(pg: &PgServer, proxy: &Proxy, w: usize) -> Pair {
        let (px, dr) = (fixture::proxied_db(w), fixture::direct_db(w));
        let reset_direct = pg.connect(SUPERUSER, "", &dr).await;
        let fixture_oids: i64 = reset_direct
            .query_one("SELECT max(oid)::int8 FROM pg_class", &[])
            .await
            .expect("read the fixture's largest OID")
            .get(0);
        Pair {
            reset_proxy: proxy.connect(SUPERUSER, "", &px).await,
            reset_direct,
            fixture_oids: u32::try_from(fixture_oids).expect("an OID fits in u32"),
            proxy: Target {
                addr: proxy.addr(),
                db: px,
            },
            direct: Target {
                addr: pg.addr(),
                db: dr,
            },
            sabotage: None,
        }
    }

    /// Makes the proxied side differ on purpose after every reset (self-test).
    pub fn sabotage(&mut self, sql: &str) {
        self.sabotage = Some(sql.to_string());
    }

    async fn reset(&self) {
        let (a, b) = tokio::join!(
            self.reset_proxy.batch_execute(fixture::RESET),
            self.reset_direct.batch_execute(fixture::RESET)
        );
        a.unwrap_or_else(|e| panic!("reset through pgmemo: {e} ({e:?})"));
        b.unwrap_or_else(|e| panic!("reset directly: {e} ({e:?})"));
        if let Some(sql) = &self.sabotage {
            self.reset_proxy
                .batch_execute(sql)
                .await
                .unwrap_or_else(|e| panic!("sabotage: {e}"));
        }
    }

    /// Resets, then runs `steps` cold and warm on both sides, and renders pgmemo's replies
    /// (decoded; `!=` marks a frame PostgreSQL sent differently, followed by that one).
    pub async fn show(&self, steps: &[Step]) -> String {
        self.reset().await;
        let mut out = String::new();
        for run in ["cold", "warm"] {
            let (p, d): (Transcript, Transcript) = tokio::join!(
                runner::run_steps(&self.proxy, SUPERUSER, steps, FRAME_TIMEOUT),
                runner::run_steps(&self.direct, SUPERUSER, steps, FRAME_TIMEOUT)
            );
            out.push_str(&format!("--- {run} run ---\n"));
            for (i, (a, b)) in p.steps.iter().zip(&d.steps).enumerate() {
                let step = steps.get(i).map(Step::render).unwrap_or_default();
                out.push_str(&format!("step {i}: {step}\n"));
                for j in 0..a.frames.len().max(b.frames.len()) {
                    let (fa, fb) = (
                        a.frames.get(j).map(|f| compare::mask(f, self.fixture_oids)),
                        b.frames.get(j).map(|f| compare::mask(f, self.fixture_oids)),
                    );
                    let shown = fa.as_deref().map_or("<none>".into(), compare::decode);
                    if fa == fb {
                        out.push_str(&format!("      {shown}\n"));
                    } else {
                        let other = fb.as_deref().map_or("<none>".into(), compare::decode);
                        out.push_str(&format!("   != {shown}\n      PostgreSQL: {other}\n"));
                    }
                }
                if a.end.is_some() || b.end.is_some() {
                    out.push_str(&format!(
                        "   ended: pgmemo {:?}, PostgreSQL {:?}\n",
                        a.end, b.end
                    ));
                }
            }
        }
        out
    }

    /// Resets, then runs `steps` cold and warm on both sides, and compares.
    pub async fn check(&self, steps: &[Step]) -> Outcome {
        self.reset().await;
        let mut frames = 0;
        let mut diff = None;
        let mut ended_early = 0;
        for run in ["cold", "warm"] {
            let (p, d): (Transcript, Transcript) = tokio::join!(
                runner::run_steps(&self.proxy, SUPERUSER, steps, FRAME_TIMEOUT),
                runner::run_steps(&self.direct, SUPERUSER, steps, FRAME_TIMEOUT)
            );
            if d.steps.len() < steps.len() || d.steps.iter().any(|r| r.end.is_some()) {
                ended_early += 1;
            }
            if diff.is_none()
                && let Some(d) = compare::compare(&p, &d, self.fixture_oids, &mut frames)
            {
                diff = Some((run, d));
            }
        }
        Outcome {
            frames,
            ended_early,
            diff,
        }
    }
}

/// A throwaway PostgreSQL with the template and `workers` database pairs, pgmemo in front.
pub struct Harness {
    // The proxy is dropped (killed) before its upstream.
    pub proxy: Proxy,
    pub pg: PgServer,
}

impl Harness {
    pub fn start(workers: usize) -> Harness {
        let pg = PgServer::start(PgOptions::default().setting("autovacuum", "off"));
        pg.psql(
            "postgres",
            &format!("{}\nCREATE DATABASE {};", fixture::ROLES, fixture::TEMPLATE),
        );
        pg.psql(fixture::TEMPLATE, fixture::SCHEMA);
        pg.psql("postgres", &fixture::clone_sql(workers));
        let proxy = Proxy::start(ProxyArgs::new(pg.url(SUPERUSER, "postgres")).config(CONFIG));
        Harness { proxy, pg }
    }
}

/// A mismatch as reported: the seed, the difference, the minimised conversation.
pub struct Mismatch {
    pub seed: u64,
    pub run: &'static str,
    pub diff: Diff,
    pub original: Conversation,
    pub minimised: Vec<Step>,
    pub minimised_diff: Option<(&'static str, Diff)>,
}

impl Mismatch {
    pub fn report(&self) -> String {
        let mut s = format!(
            "MISMATCH seed={} ({} run) at {}, frame {}\n  pgmemo:     {}\n  PostgreSQL: {}\n",
            self.seed,
            self.run,
            self.diff
                .step
                .map_or("startup".to_string(), |i| format!("step {i}")),
            self.diff.frame,
            self.diff.proxy,
            self.diff.direct
        );
        if let Some(i) = self.diff.step
            && let Some(step) = self.original.steps.get(i)
        {
            s.push_str(&format!("  that step: {}\n", step.render()));
        }
        let minimised = Conversation {
            seed: self.seed,
            steps: self.minimised.clone(),
        };
        s.push_str(&format!(
            "minimised conversation ({} of {} steps):\n{}\n",
            self.minimised.len(),
            self.original.steps.len(),
            minimised.render()
        ));
        if self.minimised_diff.is_none() {
            s.push_str(
                "  NOT REPRODUCED when run again: the difference depends on timing or on the \
                 databases' physical state, not on the conversation alone\n",
            );
        }
        if let Some((run, d)) = &self.minimised_diff {
            s.push_str(&format!(
                "  minimised differs ({run} run) at {}, frame {}\n    pgmemo:     {}\n    PostgreSQL: {}\n",
                d.step.map_or("startup".to_string(), |i| format!("step {i}")),
                d.frame,
                d.proxy,
                d.direct
            ));
        }
        s
    }
}

/// Totals of a run.
#[derive(Default)]
pub struct Summary {
    pub conversations: u64,
    pub frames: u64,
    pub ended_early: u64,
    pub mismatches: Vec<Mismatch>,
    pub elapsed: Duration,
}

/// Settings of a run.
pub struct RunSpec {
    pub conversations: u64,
    pub seed: u64,
    pub workers: usize,
    /// Stop starting conversations after this many mismatches (each is minimised).
    pub max_mismatches: usize,
}

/// Runs `spec.conversations` conversations (seeds `seed`, `seed + 1`, ...) over the pairs.
pub async fn run_all(pairs: Vec<Pair>, spec: &RunSpec) -> Summary {
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let frames = Arc::new(AtomicU64::new(0));
    let ended_early = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mismatches = Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let (total, base, max_mismatches) = (spec.conversations, spec.seed, spec.max_mismatches);
    for pair in pairs {
        let (next, frames, ended_early, stop, mismatches, done) = (
            Arc::clone(&next),
            Arc::clone(&frames),
            Arc::clone(&ended_early),
            Arc::clone(&stop),
            Arc::clone(&mismatches),
            Arc::clone(&done),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return;
                }
                let seed = base.wrapping_add(i);
                let conv = conversation::generate(seed);
                let out = pair.check(&conv.steps).await;
                frames.fetch_add(out.frames, Ordering::Relaxed);
                ended_early.fetch_add(out.ended_early, Ordering::Relaxed);
                if out.ended_early > 0 && std::env::var_os("PGMEMO_DIFF_VERBOSE").is_some() {
                    eprintln!("differential: seed {seed} stopped before its last step");
                }
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if n % 1000 == 0 {
                    eprintln!(
                        "differential: {n}/{total} conversations, {:.0?}",
                        started.elapsed()
                    );
                }
                if let Some((run, diff)) = out.diff {
                    eprintln!("differential: mismatch at seed {seed} ({run} run), minimising...");
                    let (minimised, minimised_diff) =
                        minimise::minimise(&pair, conv.steps.clone()).await;
                    let m = Mismatch {
                        seed,
                        run,
                        diff,
                        original: conv,
                        minimised,
                        minimised_diff,
                    };
                    eprintln!("{}", m.report());
                    let mut all = mismatches.lock().await;
                    all.push(m);
                    if all.len() >= max_mismatches {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("a differential worker panicked");
    }
    let mismatches = std::mem::take(&mut *mismatches.lock().await);
    Summary {
        conversations: done.load(Ordering::Relaxed),
        frames: frames.load(Ordering::Relaxed),
        ended_early: ended_early.load(Ordering::Relaxed),
        mismatches,
        elapsed: started.elapsed(),
    }
}

/// A `u64` from the environment (decimal or 0x-hex), or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => {
            let v = v.trim();
            let parsed = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
        }
        Err(_) => default,
    }
}
