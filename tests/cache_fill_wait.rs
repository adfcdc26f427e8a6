//! Stampede protection on the simple protocol (issue 4): concurrent misses on one key wait for
//! one upstream execution; a wait ends with the leader's result, or, when the leader fails or
//! the wait takes longer than `cache.fill_wait_timeout`, the waiter runs its own query; a
//! CancelRequest ends a wait with 57014 as PostgreSQL ends a cancelled statement, and the
//! session's `statement_timeout` caps it the same way.
//!
//! A direct connection holding `LOCK TABLE slow IN ACCESS EXCLUSIVE MODE` keeps the leader's
//! query blocked inside Postgres for as long as a test needs; `pg_stat_activity` shows which
//! statements really reached Postgres.

mod common;
#[path = "support/cache_probe.rs"]
mod probe;
#[path = "support/wire.rs"]
mod wire;

use std::time::{Duration, Instant};

use common::SUPERUSER;
use common::compare::SimpleMsg;
use probe::{CacheStack, DB, column, config, simple};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

const SETUP: &str = "
CREATE TABLE slow(id int PRIMARY KEY, v text NOT NULL);
INSERT INTO slow VALUES (1, 'a'), (2, 'b'), (3, 'c');
";
/// The statement every test races (its shape is planned once, unlocked, by `warm`).
const QUERY: &str = "SELECT v FROM slow WHERE id > 0 ORDER BY id";

async fn stack(cache_extra: &str) -> CacheStack {
    CacheStack::start(SETUP, &config(cache_extra, "")).await
}

fn rows() -> Vec<SimpleMsg> {
    column("v", &["a", "b", "c"])
}

/// Plans the statement's shape (so no catalog work happens under the lock) and lets each
/// session's settings probe finish.
async fn warm(sessions: &[&Client]) {
    for s in sessions {
        simple(s, "SELECT v FROM slow WHERE id > 100 ORDER BY id").await;
    }
}

/// Locks `slow` on a direct connection until the returned client commits.
async fn lock(stack: &CacheStack) -> Client {
    let holder = stack.pg.connect(SUPERUSER, "", DB).await;
    holder
        .batch_execute("BEGIN; LOCK TABLE slow IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    holder
}

/// Backends of this server blocked on `slow`'s lock.
async fn blocked(stack: &CacheStack) -> i64 {
    let row = stack
        .probe
        .client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE wait_event_type = 'Lock' AND query LIKE '%FROM slow%'",
            &[],
        )
        .await
        .unwrap();
    row.get(0)
}

async fn until_blocked(stack: &CacheStack, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while blocked(stack).await != n {
        assert!(Instant::now() < deadline, "never saw {n} blocked backends");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn spawn_query(
    client: Client,
) -> tokio::task::JoinHandle<(Client, Result<Vec<SimpleMsg>, tokio_postgres::Error>)> {
    tokio::spawn(async move {
        let r = client
            .simple_query(QUERY)
            .await
            .map(|m| common::compare::simple_msgs(&m));
        (client, r)
    })
}

/// `pgmemo_cache_fill_waits_total` for one way a wait ended.
fn waits(stack: &CacheStack, result: &str) -> f64 {
    stack.metric(&format!(
        "pgmemo_cache_fill_waits_total{{result=\"{result}\"}}"
    ))
}

fn db_error(r: &Result<Vec<SimpleMsg>, tokio_postgres::Error>) -> (SqlState, String) {
    let e = r.as_ref().expect_err("an error");
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {e:?}"));
    (db.code().clone(), db.message().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_wait_for_one_upstream_execution() {
    let stack = stack("").await;
    let leader = stack.session(SUPERUSER).await;
    let mut waiters = Vec::new();
    for _ in 0..3 {
        waiters.push(stack.session(SUPERUSER).await);
    }
    warm(&[&leader, &waiters[0], &waiters[1], &waiters[2]]).await;
    let q = stack.probe.q(QUERY, None).await;
    let calls = stack.probe.calls(&q).await;

    let holder = lock(&stack).await;
    let leading = spawn_query(leader);
    until_blocked(&stack, 1).await;
    let waiting: Vec<_> = waiters.into_iter().map(spawn_query).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        blocked(&stack).await,
        1,
        "the waiters must not reach Postgres"
    );
    holder.batch_execute("COMMIT").await.unwrap();

    let (_, r) = leading.await.unwrap();
    assert_eq!(r.unwrap(), rows());
    for w in waiting {
        let (_, r) = w.await.unwrap();
        assert_eq!(r.unwrap(), rows(), "a waiter gets the leader's rows");
    }
    assert_eq!(
        stack.probe.calls(&q).await - calls,
        1,
        "one execution for four clients"
    );
    assert_eq!(waits(&stack, "filled"), 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_request_ends_a_wait_with_57014() {
    let stack = stack("").await;
    let leader = stack.session(SUPERUSER).await;
    let waiter = stack.session(SUPERUSER).await;
    warm(&[&leader, &waiter]).await;
    let holder = lock(&stack).await;
    let leading = spawn_query(leader);
    until_blocked(&stack, 1).await;
    let cancel = waiter.cancel_token();
    let waiting = spawn_query(waiter);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    cancel.cancel_query(NoTls).await.unwrap();
    let (waiter, r) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the cancel ends the wait")
        .unwrap();
    let (code, message) = db_error(&r);
    assert_eq!(code, SqlState::QUERY_CANCELED);
    assert_eq!(message, "canceling statement due to user request");
    assert!(started.elapsed() < Duration::from_secs(3));
    // The session carries on; the leader was not disturbed.
    assert_eq!(
        simple(&waiter, "SELECT 1 AS one").await,
        column("one", &["1"])
    );
    assert_eq!(blocked(&stack).await, 1);
    holder.batch_execute("COMMIT").await.unwrap();
    let (_, r) = leading.await.unwrap();
    assert_eq!(r.unwrap(), rows());
    assert_eq!(waits(&stack, "cancelled"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeout_caps_a_wait() {
    let stack = stack("").await;
    let leader = stack.session(SUPERUSER).await;
    let waiter = stack.session(SUPERUSER).await;
    waiter
        .batch_execute("SET statement_timeout = '400ms'")
        .await
        .unwrap();
    warm(&[&leader, &waiter]).await;
    let holder = lock(&stack).await;
    let leading = spawn_query(leader);
    until_blocked(&stack, 1).await;
    let started = Instant::now();
    let (_, r) = spawn_query(waiter).await.unwrap();
    let waited = started.elapsed();
    let (code, message) = db_error(&r);
    assert_eq!(code, SqlState::QUERY_CANCELED);
    assert_eq!(message, "canceling statement due to statement timeout");
    assert!(
        waited >= Duration::from_millis(350) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert_eq!(
        blocked(&stack).await,
        1,
        "the waiter never reached Postgres"
    );
    holder.batch_execute("COMMIT").await.unwrap();
    assert_eq!(leading.await.unwrap().1.unwrap(), rows());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_run_their_own_query_after_the_timeout_or_when_the_leader_fails() {
    let stack = stack("fill_wait_timeout = \"500ms\"").await;
    let leader = stack.session(SUPERUSER).await;
    let waiter = stack.session(SUPERUSER).await;
    warm(&[&leader, &waiter]).await;

    // The wait times out: the waiter's own query reaches Postgres (and blocks there too).
    let holder = lock(&stack).await;
    let leader_cancel = leader.cancel_token();
    let leading = spawn_query(leader);
    until_blocked(&stack, 1).await;
    let waiting = spawn_query(waiter);
    until_blocked(&stack, 2).await;
    holder.batch_execute("COMMIT").await.unwrap();
    let (leader, r) = leading.await.unwrap();
    assert_eq!(r.unwrap(), rows());
    let (waiter, r) = waiting.await.unwrap();
    assert_eq!(r.unwrap(), rows());
    assert_eq!(waits(&stack, "timed_out"), 1.0);

    // The leader fails (cancelled inside Postgres): its waiter runs the query itself.
    let fresh = "SELECT v FROM slow WHERE id > 1 ORDER BY id";
    let holder = lock(&stack).await;
    let leading = tokio::spawn(async move { leader.simple_query(fresh).await.map(|_| ()) });
    until_blocked(&stack, 1).await;
    let waiting = tokio::spawn(async move {
        waiter
            .simple_query(fresh)
            .await
            .map(|m| common::compare::simple_msgs(&m))
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(blocked(&stack).await, 1);
    leader_cancel.cancel_query(NoTls).await.unwrap();
    let e = leading
        .await
        .unwrap()
        .expect_err("the leader was cancelled");
    assert_eq!(e.code(), Some(&SqlState::QUERY_CANCELED));
    until_blocked(&stack, 1).await;
    holder.batch_execute("COMMIT").await.unwrap();
    assert_eq!(waiting.await.unwrap().unwrap(), column("v", &["b", "c"]));
    assert_eq!(waits(&stack, "leader_gave_up"), 1.0);
}

/// Runs `QUERY` prepared beforehand (extended protocol: Bind, Execute, Sync of a named
/// statement; preparing under the lock would block in Postgres's parse analysis).
async fn prepared(client: Client) -> (Client, tokio_postgres::Statement) {
    let stmt = client.prepare(QUERY).await.unwrap();
    (client, stmt)
}

fn spawn_prepared(
    (client, stmt): (Client, tokio_postgres::Statement),
) -> tokio::task::JoinHandle<(Client, Result<Vec<String>, tokio_postgres::Error>)> {
    tokio::spawn(async move {
        let r = client
            .query(&stmt, &[])
            .await
            .map(|rows| rows.iter().map(|r| r.get::<_, String>(0)).collect());
        (client, r)
    })
}

fn letters() -> Vec<String> {
    ["a", "b", "c"].iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_misses_wait_too_and_a_cancel_ends_the_wait() {
    let stack = stack("").await;
    let leader = stack.session(SUPERUSER).await;
    let waiter = stack.session(SUPERUSER).await;
    let canceled = stack.session(SUPERUSER).await;
    warm(&[&leader, &waiter, &canceled]).await;
    let cancel = canceled.cancel_token();
    let (leader, waiter, canceled) = (
        prepared(leader).await,
        prepared(waiter).await,
        prepared(canceled).await,
    );
    let holder = lock(&stack).await;
    let leading = spawn_prepared(leader);
    until_blocked(&stack, 1).await;
    let waiting = spawn_prepared(waiter);
    let cancelling = spawn_prepared(canceled);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(blocked(&stack).await, 1, "waiters must not reach Postgres");
    cancel.cancel_query(NoTls).await.unwrap();
    let (canceled, r) = tokio::time::timeout(Duration::from_secs(5), cancelling)
        .await
        .expect("the cancel ends the wait")
        .unwrap();
    let e = r.expect_err("cancelled");
    assert_eq!(e.code(), Some(&SqlState::QUERY_CANCELED));
    assert_eq!(
        e.as_db_error().map(|d| d.message()),
        Some("canceling statement due to user request")
    );
    holder.batch_execute("COMMIT").await.unwrap();
    assert_eq!(leading.await.unwrap().1.unwrap(), letters());
    assert_eq!(waiting.await.unwrap().1.unwrap(), letters());
    assert_eq!(waits(&stack, "filled"), 1.0);
    assert_eq!(waits(&stack, "cancelled"), 1.0);
    // The cancelled session goes on, now from the cache.
    let stmt = canceled.prepare(QUERY).await.unwrap();
    let rows = canceled.query(&stmt, &[]).await.unwrap();
    assert_eq!(rows.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_client_disconnects_mid_miss_releases_its_waiters() {
    use tokio::io::AsyncWriteExt;
    let stack = stack("").await;
    // Raw connections, so that the leader can vanish mid-query; both send the same
    // extended-protocol group (one key).
    let mut leader = wire::trust_session(stack.proxy.addr(), SUPERUSER, DB).await;
    let mut waiter = wire::trust_session(stack.proxy.addr(), SUPERUSER, DB).await;
    let mut group = Vec::new();
    let mut parse = b"\0".to_vec();
    parse.extend_from_slice(QUERY.as_bytes());
    parse.extend_from_slice(b"\0\0\0");
    group.extend(wire::frame(b'P', &parse));
    group.extend(wire::frame(b'B', b"\0\0\0\0\0\0\0\0"));
    group.extend(wire::frame(b'E', b"\0\0\0\0\0"));
    group.extend(wire::frame(b'S', b""));
    // Plan the statement and let both sessions' settings probes finish, unlocked.
    for s in [&mut leader, &mut waiter] {
        s.write_all(&wire::query(
            "SELECT v FROM slow WHERE id > 100 ORDER BY id",
        ))
        .await
        .unwrap();
        wire::frames_until_ready(s, Duration::from_secs(10)).await;
    }
    let holder = lock(&stack).await;
    leader.write_all(&group).await.unwrap();
    until_blocked(&stack, 1).await;
    waiter.write_all(&group).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(blocked(&stack).await, 1, "the waiter waits in pgmemo");
    // The leader's client goes away without a word.
    drop(leader);
    // The waiter is released and runs the query itself (it blocks on the lock like the
    // leader's orphaned statement, until the lock goes).
    let deadline = Instant::now() + Duration::from_secs(10);
    while waits(&stack, "leader_gave_up") < 1.0 {
        assert!(Instant::now() < deadline, "the waiter was never released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    holder.batch_execute("COMMIT").await.unwrap();
    let frames = wire::frames_until_ready(&mut waiter, Duration::from_secs(10)).await;
    let tags: String = frames.iter().map(|f| char::from(f[0])).collect();
    assert_eq!(tags, "12DDDCZ");
}
