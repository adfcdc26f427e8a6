//! Differential protocol testing (issue 22): random client conversations, reproducible from
//! a seed, sent to pgmemo and straight to PostgreSQL; every reply frame must be the same
//! (BackendKeyData and notification pids masked), with the cache cold and warm. On a
//! mismatch the seed, the first differing frame on both sides and a minimised conversation
//! are printed. `PGMEMO_DIFF_CONVERSATIONS` (default 1000), `PGMEMO_DIFF_SEED` (the first
//! conversation's seed; default fixed, printed) and `PGMEMO_DIFF_WORKERS` (connections
//! pairs run concurrently, default 4) steer it; `scripts/harden differential` runs it long.

mod common;
#[path = "support/differential/mod.rs"]
mod differential;
#[path = "support/wire.rs"]
mod wire;

use differential::conversation::{self, Step};
use differential::msg::Msg;
use differential::{Harness, Pair, RunSpec};

const DEFAULT_SEED: u64 = 0x5eed_2200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgmemo_answers_every_conversation_like_postgresql() {
    let conversations = differential::env_u64("PGMEMO_DIFF_CONVERSATIONS", 1000);
    let seed = differential::env_u64("PGMEMO_DIFF_SEED", DEFAULT_SEED);
    let workers = differential::env_u64("PGMEMO_DIFF_WORKERS", 4).clamp(1, 32) as usize;
    println!(
        "differential: {conversations} conversations from seed {seed} (PGMEMO_DIFF_SEED={seed}), {workers} workers"
    );
    let h = Harness::start(workers);
    let mut pairs = Vec::new();
    for w in 0..workers {
        pairs.push(Pair::new(&h.pg, &h.proxy, w).await);
    }
    let spec = RunSpec {
        conversations,
        seed,
        workers,
        max_mismatches: 3,
    };
    let summary = differential::run_all(pairs, &spec).await;
    let hits = h.proxy.metric("pgmemo_cache_hits_total", &[]);
    let misses = h.proxy.metric("pgmemo_cache_misses_total", &[]);
    println!(
        "differential summary: conversations={} frames_compared={} mismatches={} runs_ended_early={} cache_hits={} cache_misses={} seconds={:.1} seed={seed}",
        summary.conversations,
        summary.frames,
        summary.mismatches.len(),
        summary.ended_early,
        hits,
        misses,
        summary.elapsed.as_secs_f64()
    );
    // What the cache did, by reason (so a run that stopped exercising hits shows it).
    let metrics = h.proxy.admin_get("/metrics");
    for line in metrics.lines().filter(|l| {
        [
            "pgmemo_cache_bypasses_total",
            "pgmemo_statement_replays_total",
            "pgmemo_session_probes_total",
            "pgmemo_cache_epoch_bumps_total",
        ]
        .iter()
        .any(|m| l.starts_with(m))
    }) {
        println!("differential metric: {line}");
    }
    for m in &summary.mismatches {
        println!("{}", m.report());
    }
    assert!(
        summary.mismatches.is_empty(),
        "{} conversation(s) answered differently through pgmemo (seeds {:?}); reports above",
        summary.mismatches.len(),
        summary
            .mismatches
            .iter()
            .map(|m| m.seed)
            .collect::<Vec<_>>()
    );
    assert_eq!(summary.conversations, conversations);
    // A run that stops early (both sides timed out or closed alike) compares less; the
    // generator makes few of those.
    assert!(
        summary.ended_early * 50 <= conversations * 2,
        "{} of {} runs stopped before their last step",
        summary.ended_early,
        conversations * 2
    );
    assert!(
        conversations < 50 || hits > 0.0,
        "no cache hit in {conversations} conversations: the test would not compare hits"
    );
}

/// The harness must be able to fail: a proxied database whose data differs on purpose is
/// caught, and the conversation is minimised to the step that shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_difference_is_caught_and_minimised() {
    let h = Harness::start(1);
    let mut pair = Pair::new(&h.pg, &h.proxy, 0).await;
    let steps: Vec<Step> = [
        "SELECT 1",
        "SET search_path = alt, public",
        "TABLE ref ORDER BY id",
        "SELECT 2",
    ]
    .into_iter()
    .map(|q| Step::new(vec![Msg::Query(q.into())]))
    .collect();
    assert!(
        pair.check(&steps).await.diff.is_none(),
        "identical databases must compare equal"
    );
    pair.sabotage("UPDATE ref SET label = 'sabotaged' WHERE id = 3");
    let out = pair.check(&steps).await;
    let (_, diff) = out.diff.expect("the sabotaged row must be caught");
    assert_eq!(diff.step, Some(2), "{diff:?}");
    assert!(diff.proxy.contains("sabotaged"), "{diff:?}");
    let (minimised, last) = differential::minimise::minimise(&pair, steps).await;
    assert_eq!(minimised.len(), 1, "{minimised:?}");
    assert_eq!(
        minimised[0].msgs,
        vec![Msg::Query("TABLE ref ORDER BY id".into())]
    );
    assert!(last.is_some());
}

/// A seed fixes the conversation; different seeds give different ones.
#[test]
fn a_seed_gives_one_conversation() {
    let a = conversation::generate(42);
    let b = conversation::generate(42);
    assert_eq!(a.steps, b.steps);
    let distinct: std::collections::HashSet<String> = (0..50)
        .map(|s| conversation::generate(s).render())
        .collect();
    assert!(distinct.len() > 45, "{} distinct of 50", distinct.len());
}

/// `PGMEMO_DIFF_SEED=S cargo test --test differential -- --ignored --nocapture show`: prints
/// conversation S and every frame pgmemo sent back for it (cold and warm), decoded, marking
/// the frames PostgreSQL sent differently. With `PGMEMO_DIFF_FIND=TEXT`, the first
/// conversation from S on whose rendering contains TEXT (e.g. `CancelRequest`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a debugging aid, not a check"]
async fn show_one_conversation() {
    let seed = differential::env_u64("PGMEMO_DIFF_SEED", DEFAULT_SEED);
    let h = Harness::start(1);
    let pair = Pair::new(&h.pg, &h.proxy, 0).await;
    let find = std::env::var("PGMEMO_DIFF_FIND").unwrap_or_default();
    let conv = (seed..seed.saturating_add(100_000))
        .map(conversation::generate)
        .find(|c| c.render().contains(&find))
        .expect("no conversation in 100,000 seeds contains PGMEMO_DIFF_FIND");
    println!("conversation {}:\n{}", conv.seed, conv.render());
    print!("{}", pair.show(&conv.steps).await);
}

/// The comparer masks only BackendKeyData, a notification's pid and the OIDs of tables newer
/// than the fixture; any other byte that differs is a mismatch.
#[test]
fn masking_is_narrow() {
    use bytes::Bytes;
    use differential::compare::mask;
    let key = |pid: u8| Bytes::from(vec![b'K', 0, 0, 0, 12, 0, 0, 0, pid, 1, 2, 3, 4]);
    assert_eq!(mask(&key(1), 100), mask(&key(2), 100));
    let note = |pid: u8, payload: u8| {
        Bytes::from(vec![b'A', 0, 0, 0, 12, 0, 0, 0, pid, b'c', 0, payload, 0])
    };
    assert_eq!(mask(&note(1, b'x'), 100), mask(&note(2, b'x'), 100));
    assert_ne!(mask(&note(1, b'x'), 100), mask(&note(1, b'y'), 100));
    // RowDescription of one column "a" from table `oid`.
    let row_desc = |oid: u32, typ: u32| {
        let mut f = vec![b'T', 0, 0, 0, 0, 0, 1, b'a', 0];
        f.extend_from_slice(&oid.to_be_bytes());
        f.extend_from_slice(&1i16.to_be_bytes());
        f.extend_from_slice(&typ.to_be_bytes());
        f.extend_from_slice(&[0, 4, 0xff, 0xff, 0xff, 0xff, 0, 0]);
        let len = (f.len() - 1) as i32;
        f[1..5].copy_from_slice(&len.to_be_bytes());
        Bytes::from(f)
    };
    assert_eq!(mask(&row_desc(500, 23), 100), mask(&row_desc(600, 23), 100));
    assert_ne!(mask(&row_desc(50, 23), 100), mask(&row_desc(60, 23), 100));
    assert_ne!(mask(&row_desc(500, 23), 100), mask(&row_desc(500, 25), 100));
    let data = |v: u8| Bytes::from(vec![b'D', 0, 0, 0, 11, 0, 1, 0, 0, 0, 1, v]);
    assert_ne!(mask(&data(b'1'), 100), mask(&data(b'2'), 100));
}

/// A cacheable group sent after an error left the server skipping until Sync (the error
/// already answered, behind a Flush): PostgreSQL ignores the group, so pgmemo must not answer
/// it from the cache either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_would_be_hit_after_an_error_is_skipped_like_postgresql() {
    use differential::msg::Param;
    let h = Harness::start(1);
    let pair = Pair::new(&h.pg, &h.proxy, 0).await;
    let sql = "SELECT label FROM ref WHERE id = $1";
    let group = |params: Vec<Param>, end: Msg| {
        Step::new(vec![
            Msg::Parse {
                name: String::new(),
                sql: sql.into(),
                types: vec![],
            },
            Msg::Bind {
                portal: String::new(),
                stmt: String::new(),
                params,
                results: vec![],
            },
            Msg::Execute {
                portal: String::new(),
                max_rows: 0,
            },
            end,
        ])
    };
    let three = || vec![Param::text("3")];
    let steps = vec![
        group(three(), Msg::Sync),
        group(three(), Msg::Sync),
        group(vec![], Msg::Flush),
        group(three(), Msg::Sync),
        group(three(), Msg::Sync),
        Step::query("SELECT label FROM ref WHERE id = 3"),
        Step::query("SELECT label FROM ref WHERE id = 3"),
        group(vec![], Msg::Flush),
        Step::query("SELECT label FROM ref WHERE id = 3"),
        Step::new(vec![Msg::Sync]),
    ];
    let out = pair.check(&steps).await;
    if let Some((run, d)) = &out.diff {
        panic!("{run} run differs: {d:?}");
    }
    assert!(h.proxy.metric("pgmemo_cache_hits_total", &[]) > 0.0);
}

/// Prepared statements made or dropped where pgmemo cannot see it (SQL run by `DO`) after
/// their reads were cached: a Parse of a name PostgreSQL already has, or a Bind of a name it
/// no longer has, fails as it does directly, never answered from the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_prepared_or_dropped_out_of_sight_fail_like_postgresql() {
    use differential::msg::Param;
    let h = Harness::start(1);
    let pair = Pair::new(&h.pg, &h.proxy, 0).await;
    let parse = |name: &str| Msg::Parse {
        name: name.into(),
        sql: "SELECT label FROM ref WHERE id = $1".into(),
        types: vec![],
    };
    let bind_exec = |name: &str| {
        vec![
            Msg::Bind {
                portal: String::new(),
                stmt: name.into(),
                params: vec![Param::text("3")],
                results: vec![],
            },
            Msg::Execute {
                portal: String::new(),
                max_rows: 0,
            },
            Msg::Sync,
        ]
    };
    let with_parse = |name: &str| {
        let mut g = vec![parse(name)];
        g.extend(bind_exec(name));
        Step::new(g)
    };
    let listed = || Step::query("SELECT name FROM pg_prepared_statements ORDER BY name");
    let steps = vec![
        with_parse(""),
        with_parse(""),
        // Made out of sight: a Parse of the name must fail with 42P05.
        Step::query("DO $$ BEGIN EXECUTE 'PREPARE s5 AS SELECT 1'; END $$"),
        with_parse("s5"),
        listed(),
        // Dropped out of sight: a Bind of the name must fail with 26000.
        Step::new(vec![parse("s6"), Msg::Sync]),
        Step::new(bind_exec("s6")),
        Step::query("DO $$ BEGIN EXECUTE 'DEALLOCATE s6'; END $$"),
        Step::query("SELECT 1"),
        Step::new(bind_exec("s6")),
        listed(),
        Step::new(vec![parse("s7"), Msg::Sync]),
        Step::new(bind_exec("s7")),
        Step::query("DO $$ BEGIN EXECUTE 'DEALLOCATE ALL'; END $$"),
        Step::new(bind_exec("s7")),
        with_parse("s5"),
        listed(),
    ];
    if let Some((run, d)) = pair.check(&steps).await.diff {
        panic!("{run} run differs: {d:?}\n{}", pair.show(&steps).await);
    }
}
