//! Result cache, extended protocol (issue 4): the same bytes are sent to pgmemo and directly
//! to PostgreSQL, and every reply is compared message by message (byte for byte: both reach
//! the same server), while `pg_stat_statements` shows which executions reached PostgreSQL.
//! Covers the answerable group shapes (unnamed and named statements, with and without a
//! Describe, text and binary formats), pipelines (a miss ahead of a would-be hit, SET or
//! UPDATE ahead of a read, Flush), and the prepared-statement registry (duplicate names,
//! DEALLOCATE, the unnamed statement after a simple Query, a replayed Parse that fails).

mod common;
#[path = "support/cache_probe.rs"]
mod probe;
#[path = "support/wire.rs"]
mod wire;

use std::time::Duration;

use bytes::Bytes;
use common::SUPERUSER;
use probe::{CacheStack, DB, config};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_postgres::types::Type;
use wire::{Read, frame, read_frame, trust_session};

const SETUP: &str = "
CREATE TABLE ext_kv(id int PRIMARY KEY, v text NOT NULL);
INSERT INTO ext_kv SELECT g, 'v' || g FROM generate_series(1, 20) g;
CREATE SCHEMA other;
CREATE TABLE public.ext_sp(v text);
INSERT INTO public.ext_sp VALUES ('public');
CREATE TABLE other.ext_sp(v text);
INSERT INTO other.ext_sp VALUES ('other');
CREATE TABLE ext_drop(id int);
INSERT INTO ext_drop VALUES (1);
";

const READ: &str = "SELECT v FROM ext_kv WHERE id = $1";
const WAIT: Duration = Duration::from_secs(10);

async fn stack() -> CacheStack {
    CacheStack::start(SETUP, &config("", "")).await
}

/// A raw session through pgmemo and one straight to PostgreSQL.
struct Pair {
    proxy: TcpStream,
    direct: TcpStream,
}

impl Pair {
    async fn new(s: &CacheStack) -> Pair {
        let proxy = trust_session(s.proxy.addr(), SUPERUSER, DB).await;
        let direct = trust_session(s.pg.addr(), SUPERUSER, DB).await;
        // Let pgmemo's settings probe finish so the cache is in use from the first group.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Pair { proxy, direct }
    }

    /// Sends `bytes` to both and reads replies until `readies` ReadyForQuery frames; the two
    /// reply sequences must be identical. Returns them.
    async fn same(&mut self, bytes: &[u8], readies: usize, what: &str) -> Vec<Bytes> {
        let via = exchange(&mut self.proxy, bytes, readies).await;
        let direct = exchange(&mut self.direct, bytes, readies).await;
        assert_eq!(
            show(&via),
            show(&direct),
            "{what}: replies through pgmemo differ from PostgreSQL's"
        );
        assert_eq!(via, direct, "{what}: reply bytes differ");
        via
    }
}

async fn exchange(s: &mut TcpStream, bytes: &[u8], readies: usize) -> Vec<Bytes> {
    s.write_all(bytes).await.expect("send");
    read_until_ready(s, readies).await
}

async fn read_until_ready(s: &mut TcpStream, readies: usize) -> Vec<Bytes> {
    let mut frames = Vec::new();
    let mut seen = 0;
    while seen < readies {
        match read_frame(s, WAIT).await {
            Read::Frame(f) => {
                seen += usize::from(f[0] == b'Z');
                frames.push(f);
            }
            other => panic!("expected replies, got {other:?} after {}", show(&frames)),
        }
    }
    frames
}

/// Tags and, for errors, the SQLSTATE: what a failed comparison prints.
fn show(frames: &[Bytes]) -> String {
    frames
        .iter()
        .map(|f| match f[0] {
            b'E' => format!("E({})", wire::field(f, b'C').unwrap_or_default()),
            t => char::from(t).to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn tags(frames: &[Bytes]) -> String {
    frames.iter().map(|f| char::from(f[0])).collect()
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

fn parse(name: &str, sql: &str, types: &[u32]) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, name);
    cstr(&mut b, sql);
    b.extend_from_slice(&(types.len() as i16).to_be_bytes());
    for t in types {
        b.extend_from_slice(&t.to_be_bytes());
    }
    frame(b'P', &b)
}

/// Bind of the unnamed portal; text parameters; `binary` asks for binary results.
fn bind(stmt: &str, params: &[&str], binary: bool) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, "");
    cstr(&mut b, stmt);
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        b.extend_from_slice(&(p.len() as i32).to_be_bytes());
        b.extend_from_slice(p.as_bytes());
    }
    if binary {
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(&1i16.to_be_bytes());
    } else {
        b.extend_from_slice(&0i16.to_be_bytes());
    }
    frame(b'B', &b)
}

fn describe_portal() -> Vec<u8> {
    frame(b'D', b"P\0")
}

fn describe_statement(name: &str) -> Vec<u8> {
    let mut b = vec![b'S'];
    cstr(&mut b, name);
    frame(b'D', &b)
}

fn execute() -> Vec<u8> {
    frame(b'E', b"\0\0\0\0\0")
}

fn execute_limit(max_rows: i32) -> Vec<u8> {
    let mut b = vec![0];
    b.extend_from_slice(&max_rows.to_be_bytes());
    frame(b'E', &b)
}

fn sync() -> Vec<u8> {
    frame(b'S', b"")
}

fn flush() -> Vec<u8> {
    frame(b'H', b"")
}

fn query(sql: &str) -> Vec<u8> {
    wire::query(sql)
}

/// `[Parse] Bind [Describe portal] Execute Sync`.
fn group(
    parse_as: Option<&str>,
    sql: &str,
    stmt: &str,
    params: &[&str],
    describe: bool,
) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(name) = parse_as {
        out.extend(parse(name, sql, &[]));
    }
    out.extend(bind(stmt, params, false));
    if describe {
        out.extend(describe_portal());
    }
    out.extend(execute());
    out.extend(sync());
    out
}

/// Fills the cache for `group_bytes` from a session of its own, so that the session under
/// test is answered without PostgreSQL ever seeing its Parse (the statement stays local).
async fn warm_elsewhere(s: &CacheStack, group_bytes: &[u8]) {
    let mut other = trust_session(s.proxy.addr(), SUPERUSER, DB).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    exchange(&mut other, group_bytes, 1).await;
}

/// Executions of the statement holding `fragment` that reached PostgreSQL so far.
async fn calls(s: &CacheStack, fragment: &str) -> i64 {
    s.probe.calls_matching(fragment).await
}

#[tokio::test]
async fn unnamed_statement_groups_hit_with_identical_replies() {
    let s = stack().await;
    let mut p = Pair::new(&s).await;
    let g = group(Some(""), READ, "", &["3"], true);
    let first = p.same(&g, 1, "first run (miss)").await;
    assert_eq!(tags(&first), "12TDCZ");
    let before = calls(&s, "ext_kv WHERE id").await;
    let hits0 = s.metric("pgmemo_cache_hits_total");
    for i in 0..10 {
        // Through pgmemo only: these must not reach PostgreSQL.
        let got = exchange(&mut p.proxy, &g, 1).await;
        assert_eq!(got, first, "repeat {i}");
    }
    assert_eq!(
        calls(&s, "ext_kv WHERE id").await - before,
        0,
        "hits reached PostgreSQL"
    );
    assert_eq!(s.metric("pgmemo_cache_hits_total") - hits0, 10.0);

    // Without a Describe the same entry answers without the RowDescription.
    let bare = group(Some(""), READ, "", &["3"], false);
    let got = p.same(&bare, 1, "no Describe").await;
    assert_eq!(tags(&got), "12DCZ");
    // Other parameter values and binary results are other keys, each right.
    p.same(&group(Some(""), READ, "", &["4"], true), 1, "other value")
        .await;
    let mut binary = parse("", READ, &[23]);
    binary.extend(bind("", &["5"], true));
    binary.extend(describe_portal());
    binary.extend(execute());
    binary.extend(sync());
    for round in 0..2 {
        p.same(&binary, 1, &format!("binary results, round {round}"))
            .await;
    }
}

#[tokio::test]
async fn a_missed_group_without_describe_is_stored_with_its_row_description() {
    let s = stack().await;
    let mut p = Pair::new(&s).await;
    // First seen without a Describe: pgmemo adds one of its own and strips its reply.
    let bare = group(Some(""), READ, "", &["6"], false);
    let got = p.same(&bare, 1, "miss without Describe").await;
    assert_eq!(tags(&got), "12DCZ");
    let before = calls(&s, "ext_kv WHERE id").await;
    // A client that does Describe is answered from that entry, RowDescription included.
    p.same(
        &group(Some(""), READ, "", &["6"], true),
        1,
        "hit with Describe",
    )
    .await;
    // (The direct side ran it once; pgmemo's side did not.)
    assert_eq!(calls(&s, "ext_kv WHERE id").await - before, 1);
}

#[tokio::test]
async fn named_prepared_statements_hit_on_bind_alone() {
    let s = stack().await;
    let mut p = Pair::new(&s).await;
    let mut prepare = parse("s1", READ, &[23]);
    prepare.extend(describe_statement("s1"));
    prepare.extend(sync());
    p.same(&prepare, 1, "prepare").await;
    let run = group(None, READ, "s1", &["7"], true);
    let first = p.same(&run, 1, "first execution").await;
    assert_eq!(tags(&first), "2TDCZ");
    let before = calls(&s, "ext_kv WHERE id").await;
    for _ in 0..5 {
        assert_eq!(exchange(&mut p.proxy, &run, 1).await, first);
    }
    assert_eq!(calls(&s, "ext_kv WHERE id").await - before, 0);
    p.same(
        &group(None, READ, "s1", &["7"], false),
        1,
        "without Describe",
    )
    .await;
}

#[tokio::test]
async fn pipelined_miss_ahead_of_a_cached_read_keeps_reply_order() {
    let s = stack().await;
    let mut p = Pair::new(&s).await;
    let cached = group(Some(""), READ, "", &["8"], true);
    p.same(&cached, 1, "warm").await;
    // One write: a miss, then the cached read. The read must not overtake the miss.
    let mut pipeline = group(Some(""), READ, "", &["9"], true);
    pipeline.extend(&cached);
    pipeline.extend(group(Some(""), READ, "", &["10"], true));
    let got = p.same(&pipeline, 3, "pipeline").await;
    assert_eq!(tags(&got), "12TDCZ12TDCZ12TDCZ");
}

#[tokio::test]
async fn pipelined_set_and_update_apply_before_the_read_behind_them() {
    let s = stack().await;
    let mut p = Pair::new(&s).await;
    let sp = "SELECT v FROM ext_sp";
    p.same(&group(Some(""), sp, "", &[], true), 1, "warm public")
        .await;
    // SET search_path then the same text, in one write: must read other.ext_sp.
    let mut pipeline = parse("", "SET search_path = other, public", &[]);
    pipeline.extend(bind("", &[], false));
    pipeline.extend(execute());
    pipeline.extend(sync());
    pipeline.extend(group(Some(""), sp, "", &[], true));
    let got = p.same(&pipeline, 2, "SET then read").await;
    assert!(got.iter().any(|f| f.windows(5).any(|w| w == b"other")));
    // And alone afterwards (a hit or not, it must still be other's row).
    let again = p
        .same(&group(Some(""), sp, "", &[], true), 1, "after SET")
        .await;
    assert!(again.iter().any(|f| f.windows(5).any(|w| w == b"other")));

    let row = group(Some(""), READ, "", &["11"], true);
    p.same(&row, 1, "warm row").await;
    p.same(&row, 1, "cached row").await;
    for (i, value) in ["x1", "x2"].iter().enumerate() {
        let mut pipeline = parse("", "UPDATE ext_kv SET v = $1 WHERE id = 11", &[]);
        pipeline.extend(bind("", &[value], false));
        pipeline.extend(execute());
        pipeline.extend(sync());
        pipeline.extend(&row);
        let via = exchange(&mut p.proxy, &pipeline, 2).await;
        assert!(
            via.iter()
                .any(|f| f.windows(2).any(|w| w == value.as_bytes())),
            "round {i}: the read behind the UPDATE did not see {value}: {}",
            show(&via)
        );
        let alone = exchange(&mut p.proxy, &row, 1).await;
        assert!(
            alone
                .iter()
                .any(|f| f.windows(2).any(|w| w == value.as_bytes()))
        );
    }
}

#[tokio::test]
async fn flush_without_sync_is_forwarded_and_answered_in_order() {
    let s = stack().await;
    let mut p = Pair::new(&s).await;
    p.same(&group(Some(""), READ, "", &["12"], true), 1, "warm")
        .await;
    let mut flushed = parse("", READ, &[]);
    flushed.extend(bind("", &["12"], false));
    flushed.extend(describe_portal());
    flushed.extend(execute());
    flushed.extend(flush());
    let mut replies = Vec::new();
    for s in [&mut p.proxy, &mut p.direct] {
        s.write_all(&flushed).await.unwrap();
        let mut got = Vec::new();
        loop {
            match read_frame(s, WAIT).await {
                Read::Frame(f) => {
                    let done = f[0] == b'C';
                    got.push(f);
                    if done {
                        break;
                    }
                }
                other => panic!(
                    "Flush got no complete answer: {other:?} after {}",
                    show(&got)
                ),
            }
        }
        // Nothing more until Sync: then only ReadyForQuery.
        assert!(matches!(
            read_frame(s, Duration::from_millis(300)).await,
            Read::TimedOut
        ));
        got.extend(exchange(s, &sync(), 1).await);
        replies.push(got);
    }
    assert_eq!(tags(&replies[0]), "12TDCZ");
    assert_eq!(replies[0], replies[1]);
}

#[tokio::test]
async fn the_statement_registry_mirrors_postgres() {
    let s = stack().await;
    let mut p = Pair::new(&s).await;
    // Warm the entry so that the named Parse below is answered by pgmemo.
    p.same(&group(Some(""), READ, "", &["13"], true), 1, "warm")
        .await;
    let named = group(Some("d1"), READ, "d1", &["13"], true);
    let hits0 = s.metric("pgmemo_cache_hits_total");
    p.same(&named, 1, "named Parse answered locally").await;
    assert_eq!(s.metric("pgmemo_cache_hits_total") - hits0, 1.0);
    // The same name again: 42P05 from PostgreSQL in both cases.
    let dup = p.same(&named, 1, "duplicate name").await;
    assert!(show(&dup).contains("E(42P05)"), "{}", show(&dup));
    // SQL EXECUTE and DEALLOCATE of the locally answered statement behave as direct.
    p.same(&query("EXECUTE d1(13)"), 1, "EXECUTE").await;
    p.same(&query("DEALLOCATE d1"), 1, "DEALLOCATE").await;
    let gone = p
        .same(
            &group(None, READ, "d1", &["13"], true),
            1,
            "after DEALLOCATE",
        )
        .await;
    assert!(show(&gone).contains("E(26000)"), "{}", show(&gone));

    // The unnamed statement answered locally (never parsed upstream in this session), then
    // described and reused: pgmemo replays its Parse first.
    let local = group(Some(""), READ, "", &["16"], true);
    warm_elsewhere(&s, &local).await;
    let before = calls(&s, "ext_kv WHERE id").await;
    let replays0 = s.metric("pgmemo_statement_replays_total");
    exchange(&mut p.proxy, &local, 1).await;
    exchange(&mut p.direct, &local, 1).await;
    let mut describe = describe_statement("");
    describe.extend(sync());
    p.same(&describe, 1, "Describe of the local unnamed statement")
        .await;
    assert_eq!(s.metric("pgmemo_statement_replays_total") - replays0, 1.0);
    p.same(&group(None, READ, "", &["17"], true), 1, "Bind-only reuse")
        .await;
    // Direct ran `local` and the reuse; pgmemo's side ran the reuse only.
    assert_eq!(calls(&s, "ext_kv WHERE id").await - before, 3);
    // A simple Query destroys the unnamed statement, local or not.
    p.same(&query("SELECT 1"), 1, "simple Query").await;
    let after = p
        .same(
            &group(None, READ, "", &["14"], true),
            1,
            "unnamed after Query",
        )
        .await;
    assert!(show(&after).contains("E(26000)"), "{}", show(&after));
    p.same(&local, 1, "Parse again").await;
    p.same(&query("SELECT 2"), 1, "simple Query").await;
    let after = p
        .same(
            &group(None, READ, "", &["16"], true),
            1,
            "local unnamed after Query",
        )
        .await;
    assert!(show(&after).contains("E(26000)"), "{}", show(&after));
}

#[tokio::test]
async fn a_replayed_parse_fails_where_postgres_fails_after_drop_table() {
    let s = stack().await;
    let mut p = Pair::new(&s).await;
    let read = "SELECT id FROM ext_drop WHERE id > $1";
    let g = group(Some(""), read, "", &["0"], true);
    warm_elsewhere(&s, &g).await;
    // Answered locally: PostgreSQL behind this session has not seen the Parse.
    let before = calls(&s, "ext_drop WHERE id").await;
    exchange(&mut p.proxy, &g, 1).await;
    assert_eq!(calls(&s, "ext_drop WHERE id").await - before, 0);
    exchange(&mut p.direct, &g, 1).await;
    // The table goes away (through another pgmemo session, so the cache knows at once).
    let other = s.session(SUPERUSER).await;
    other.batch_execute("DROP TABLE ext_drop").await.unwrap();
    // Reusing the unnamed statement: the replayed Parse fails as the Bind fails directly.
    let failed = p
        .same(&group(None, read, "", &["0"], true), 1, "Bind after DROP")
        .await;
    assert!(show(&failed).starts_with("E(42P01)"), "{}", show(&failed));
    // The session goes on normally.
    p.same(&group(Some(""), READ, "", &["15"], true), 1, "afterwards")
        .await;
}

#[tokio::test]
async fn a_row_limit_is_answered_from_the_full_result_as_postgres_cuts_it() {
    let s = stack().await;
    let mut p = Pair::new(&s).await;
    let range = "SELECT id, v FROM ext_kv WHERE id BETWEEN $1 AND $2 ORDER BY id";
    let limited = |lo: &str, hi: &str, max_rows: i32| {
        let mut out = parse("", range, &[]);
        out.extend(bind("", &[lo, hi], false));
        out.extend(describe_portal());
        out.extend(execute_limit(max_rows));
        out.extend(sync());
        out
    };
    for (lo, hi) in [("1", "3"), ("4", "4"), ("30", "40")] {
        // Fill the entry with a full execution, then ask for fewer, as many, and more rows.
        p.same(&group(Some(""), range, "", &[lo, hi], true), 1, "full")
            .await;
        let before = calls(&s, "ext_kv WHERE id BETWEEN").await;
        for max_rows in [1, 2, 3, 5] {
            let via = exchange(&mut p.proxy, &limited(lo, hi, max_rows), 1).await;
            let direct = exchange(&mut p.direct, &limited(lo, hi, max_rows), 1).await;
            assert_eq!(show(&via), show(&direct), "{lo}..{hi} limit {max_rows}");
            assert_eq!(via, direct, "{lo}..{hi} limit {max_rows}");
        }
        // Only the direct side ran them.
        assert_eq!(
            calls(&s, "ext_kv WHERE id BETWEEN").await - before,
            4,
            "{lo}..{hi}"
        );
    }
    // A limited miss is relayed and not stored when the portal is suspended.
    let via = p.same(&limited("5", "9", 2), 1, "limited miss").await;
    assert_eq!(tags(&via), "12TDDsZ");
    let before = calls(&s, "ext_kv WHERE id BETWEEN").await;
    exchange(
        &mut p.proxy,
        &group(Some(""), range, "", &["5", "9"], true),
        1,
    )
    .await;
    assert_eq!(calls(&s, "ext_kv WHERE id BETWEEN").await - before, 1);
}

#[tokio::test]
async fn tokio_postgres_prepared_and_typed_reads_hit_with_rows_equal_to_direct() {
    let s = stack().await;
    let via = s.session(SUPERUSER).await;
    let direct = s.pg.connect(SUPERUSER, "", DB).await;
    // Let pgmemo read the session's settings first.
    via.simple_query("SELECT 1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sql = "SELECT id, v FROM ext_kv WHERE id = $1 OR id = $2 ORDER BY id";
    let stmt = via.prepare(sql).await.unwrap();
    let want_stmt = direct.prepare(sql).await.unwrap();
    assert_eq!(
        common::compare::describe(&stmt),
        common::compare::describe(&want_stmt)
    );
    let before = calls(&s, "ext_kv WHERE id = $1 OR").await;
    for i in 0..30 {
        let (a, b) = (1 + i % 3, 10);
        // Binary results (tokio-postgres asks for binary), named statement.
        let got = via.query(&stmt, &[&a, &b]).await.unwrap();
        let want = direct.query(&want_stmt, &[&a, &b]).await.unwrap();
        assert_eq!(
            common::compare::raw_rows(&got),
            common::compare::raw_rows(&want),
            "prepared, round {i}"
        );
        // `query_typed`: Parse of the unnamed statement with every execution.
        let got = via
            .query_typed(sql, &[(&a, Type::INT4), (&b, Type::INT4)])
            .await
            .unwrap();
        assert_eq!(
            common::compare::raw_rows(&got),
            common::compare::raw_rows(&want)
        );
    }
    // Direct: 60 executions; pgmemo: one per distinct (statement form, parameters) at most.
    let upstream = calls(&s, "ext_kv WHERE id = $1 OR").await - before;
    assert!(
        (60..=66).contains(&upstream),
        "{upstream} executions reached PostgreSQL (60 of them direct)"
    );
}

#[tokio::test]
async fn where_caching_would_be_wrong_the_group_reaches_postgres() {
    let s = stack().await;
    let mut p = Pair::new(&s).await;

    // A text parameter PostgreSQL reads as the clock: every execution is its own.
    let clock = "SELECT id, $1::timestamptz AS at FROM ext_kv WHERE id = 1";
    let now = {
        let mut out = parse("", clock, &[]);
        out.extend(bind("", &["now"], false));
        out.extend(describe_portal());
        out.extend(execute());
        out.extend(sync());
        out
    };
    let bypassed0 = s.metric("pgmemo_cache_bypasses_total{reason=\"clock_parameter\"}");
    let mut seen = Vec::new();
    for _ in 0..3 {
        let got = exchange(&mut p.proxy, &now, 1).await;
        assert_eq!(tags(&got), "12TDCZ");
        seen.push(got[3].clone());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        seen.windows(2).all(|w| w[0] != w[1]),
        "'now' was answered from the cache"
    );
    assert_eq!(
        s.metric("pgmemo_cache_bypasses_total{reason=\"clock_parameter\"}") - bypassed0,
        3.0
    );

    // The same text and parameter bytes under other declared types are other results.
    let typed = "SELECT $1 AS x FROM ext_kv WHERE id = 1";
    for oid in [23u32, 25, 23, 25, 700] {
        let mut g = parse("", typed, &[oid]);
        g.extend(bind("", &["7"], false));
        g.extend(describe_portal());
        g.extend(execute());
        g.extend(sync());
        p.same(&g, 1, &format!("parameter type {oid}")).await;
    }

    // A prepared statement after the session's search_path changed: PostgreSQL re-resolves
    // the name, and so must the cache.
    let mut prepare = parse("sp", "SELECT v FROM ext_sp", &[]);
    prepare.extend(sync());
    p.same(&prepare, 1, "prepare").await;
    let run = group(None, "", "sp", &[], true);
    let public = p.same(&run, 1, "public").await;
    p.same(&run, 1, "public, again").await;
    p.same(&query("SET search_path = other, public"), 1, "SET")
        .await;
    let other = p.same(&run, 1, "after SET").await;
    assert_ne!(public, other);
    assert!(other.iter().any(|f| f.windows(5).any(|w| w == b"other")));
}

/// PostgreSQL rejects a Parse of a name it holds (42P05) and keeps the old statement; so
/// does pgmemo: an Execute of the name afterwards is the old statement's write, and the
/// cached read of what it wrote is invalidated. (Before the session had one statement map,
/// the rejected Parse replaced the plan write tracking used: the UPDATE ran as `SELECT 1`,
/// nothing was bumped, and the read below was a stale hit.)
#[tokio::test]
async fn a_rejected_duplicate_parse_leaves_the_statement_postgres_keeps() {
    let s = stack().await;
    let mut p = Pair::new(&s).await;
    let row = group(Some(""), READ, "", &["19"], true);
    p.same(&row, 1, "warm").await;
    let hits0 = s.metric("pgmemo_cache_hits_total");
    p.same(&row, 1, "cached").await;
    assert_eq!(s.metric("pgmemo_cache_hits_total") - hits0, 1.0);

    let mut prepare = parse("w1", "UPDATE ext_kv SET v = $1 WHERE id = 19", &[]);
    prepare.extend(sync());
    p.same(&prepare, 1, "prepare the write").await;
    let mut dup = parse("w1", "SELECT 1", &[]);
    dup.extend(sync());
    let dup = p.same(&dup, 1, "duplicate name").await;
    assert!(show(&dup).contains("E(42P05)"), "{}", show(&dup));

    let mut write = bind("w1", &["changed"], false);
    write.extend(execute());
    write.extend(sync());
    // Through pgmemo only: a direct write could be seen by change data capture instead.
    let wrote = exchange(&mut p.proxy, &write, 1).await;
    assert_eq!(tags(&wrote), "2CZ", "{}", show(&wrote));
    let after = exchange(&mut p.proxy, &row, 1).await;
    assert!(
        after.iter().any(|f| f.windows(7).any(|w| w == b"changed")),
        "the read after the write is stale: {}",
        show(&after)
    );
}

/// COPY FROM STDIN through the extended protocol, as libpq sends it: a Sync right behind the
/// Execute (read by PostgreSQL in copy-in mode, so ignored) and another after CopyDone. One
/// ReadyForQuery answers both; a session that expected two was never idle again, and none
/// of its later reads was looked up in the cache.
#[tokio::test]
async fn an_extended_copy_in_leaves_the_session_idle_for_the_cache() {
    let s = stack().await;
    let mut p = Pair::new(&s).await;
    let mut copy = parse("", "COPY ext_kv FROM STDIN", &[]);
    copy.extend(bind("", &[], false));
    copy.extend(execute());
    copy.extend(sync());
    for (side, id) in [("pgmemo", "30"), ("direct", "31")] {
        let stream = if side == "pgmemo" {
            &mut p.proxy
        } else {
            &mut p.direct
        };
        stream.write_all(&copy).await.expect("send COPY");
        let mut head = Vec::new();
        loop {
            match read_frame(stream, WAIT).await {
                Read::Frame(f) if f[0] == b'G' => break,
                Read::Frame(f) => head.push(f),
                other => panic!("{side}: expected CopyInResponse, got {other:?}"),
            }
        }
        assert_eq!(tags(&head), "12", "{side}: {}", show(&head));
        let mut rest = frame(b'd', format!("{id}\tcopied\n").as_bytes());
        rest.extend(frame(b'c', b""));
        rest.extend(sync());
        let done = exchange(stream, &rest, 1).await;
        assert_eq!(tags(&done), "CZ", "{side}: {}", show(&done));
    }
    // Idle again: a repeated read through this session is a hit.
    let row = group(Some(""), READ, "", &["30"], true);
    let first = exchange(&mut p.proxy, &row, 1).await;
    assert!(first.iter().any(|f| f.windows(6).any(|w| w == b"copied")));
    let hits0 = s.metric("pgmemo_cache_hits_total");
    exchange(&mut p.proxy, &row, 1).await;
    assert_eq!(
        s.metric("pgmemo_cache_hits_total") - hits0,
        1.0,
        "the session never became idle after the COPY"
    );
}
