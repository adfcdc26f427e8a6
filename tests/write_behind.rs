//! Write-behind (issue 20), end to end through the pgmemo binary and a throwaway
//! PostgreSQL (`fsync = on`, `synchronous_commit = on`, as shipped): eligible writes to
//! `write = "behind"` tables are acknowledged from the local journal and applied exactly
//! once, across `kill -9` of pgmemo and an immediate restart of PostgreSQL; refused writes
//! become dead letters (never applied under pgmemo's own role); ineligible statements
//! behave exactly as they do directly; a write that is not queued waits for what was
//! queued before it; SIGTERM drains the queue.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{PgOptions, PgServer, Proxy, ProxyArgs, RedisServer, SUPERUSER, Signal};
use tokio_postgres::Client;

const DB: &str = "app";

const SETUP: &str = "
CREATE TABLE ev(id int NOT NULL, note text);
CREATE TABLE keyed(id int PRIMARY KEY, note text);
CREATE TABLE counters(id int PRIMARY KEY, n bigint NOT NULL);
INSERT INTO counters VALUES (1, 0), (2, 0);
CREATE ROLE w LOGIN;
GRANT INSERT, SELECT ON ev, keyed TO w;
";

fn config(journal: &Path, flush: &str, extra: &str) -> String {
    format!(
        "[behind]\njournal_dir = \"{}\"\n{extra}\n\n{}",
        journal.display(),
        rules(flush)
    )
}

/// The queue on a Redis Stream: `[cache.redis]` and no `journal_dir`.
fn redis_config(redis: &str, flush: &str) -> String {
    format!(
        "[cache]\nsecret = \"00112233445566778899aabbccddeeff\"\n\n\
         [invalidation]\ncdc = \"off\"\n\n\
         [cache.redis]\nurl = \"{redis}\"\nnamespace = \"wb\"\n\n\
         [behind]\nqueue = \"redis\"\n\n{}",
        rules(flush)
    )
}

fn rules(flush: &str) -> String {
    format!(
        "[[rules]]\ntable = \"ev\"\nwrite = \"behind\"\nbehind_flush_interval = \"{flush}\"\n\n\
         [[rules]]\ntable = \"keyed\"\nwrite = \"behind\"\nbehind_flush_interval = \"{flush}\"\n\n\
         [[rules]]\ntable = \"counters\"\nwrite = \"behind\"\nbehind_flush_interval = \"{flush}\"\n\
         behind_increments = true\nbehind_coalesce = true\n"
    )
}

struct Fixture {
    pg: PgServer,
    journal: tempfile::TempDir,
}

impl Fixture {
    /// PostgreSQL as shipped for durability (`fsync`, `synchronous_commit` on): the test
    /// harness default turns both off, under which a crash loses acknowledged commits.
    fn new() -> Fixture {
        let pg = PgServer::start(
            PgOptions::default()
                .hba_line("host all all 127.0.0.1/32 trust")
                .setting("fsync", "on")
                .setting("synchronous_commit", "on"),
        );
        pg.psql(DB, SETUP);
        Fixture {
            pg,
            journal: tempfile::tempdir().expect("journal dir"),
        }
    }

    fn proxy(&self, flush: &str, extra: &str) -> Proxy {
        Proxy::start(
            ProxyArgs::new(self.pg.url(SUPERUSER, "postgres")).config(config(
                self.journal.path(),
                flush,
                extra,
            )),
        )
    }

    fn proxy_with(&self, toml: String) -> Proxy {
        Proxy::start(ProxyArgs::new(self.pg.url(SUPERUSER, "postgres")).config(toml))
    }

    async fn direct(&self) -> Client {
        self.pg.connect(SUPERUSER, "", DB).await
    }

    async fn scalar(&self, sql: &str) -> i64 {
        self.direct()
            .await
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0)
    }

    /// Waits until `sql` (one bigint) returns `want` directly, at most `within`.
    async fn until(&self, sql: &str, want: i64, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let got = self.scalar(sql).await;
            if got == want {
                return;
            }
            assert!(Instant::now() < deadline, "{sql}: {got}, want {want}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn queued(p: &Proxy) -> f64 {
    p.metric("pgmemo_behind_queued_total", &[])
}

/// One statement through `client` with the simple protocol; its command tag.
async fn simple_tag(client: &Client, sql: &str) -> String {
    let msgs = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    msgs.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::CommandComplete(n) => Some(n.to_string()),
            _ => None,
        })
        .unwrap_or_default()
}

/// A plain HTTP POST on the admin listener: (status code, body).
fn admin_post(p: &Proxy, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(p.admin_addr()).expect("admin connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    // JSON by type, as the admin guard requires of every POST (no body).
    write!(
        s,
        "POST {path} HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: 0\r\n\r\n"
    )
    .expect("admin write");
    let mut out = String::new();
    s.read_to_string(&mut out).ok();
    let code = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (code, body)
}

/// `clients` tasks insert ids `[0, total)` (each its own stride) into `ev` with prepared
/// statements until done or their connection fails; returns the ids acknowledged.
/// SIGKILL to `pid` after `after`, in the background.
fn kill_9_after(pid: u32, after: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .ok();
    })
}

/// 20,000 single-row INSERTs from 16 clients with pgmemo killed (SIGKILL) in the middle:
/// the ids acknowledged before the kill.
async fn insert_ids_through_kill_9(p: &Proxy) -> HashSet<i32> {
    let killer = kill_9_after(p.pid(), Duration::from_millis(2000));
    let acked = insert_ids(p, 16, 20_000).await;
    killer.await.unwrap();
    assert!(
        !acked.is_empty() && acked.len() < 20_000,
        "the kill landed mid-run ({} acknowledged)",
        acked.len()
    );
    acked
}

async fn insert_ids(p: &Proxy, clients: usize, total: usize) -> HashSet<i32> {
    insert_range(p, clients, 0, total).await
}

/// As [`insert_ids`], for ids `[from, to)`.
async fn insert_range(p: &Proxy, clients: usize, from: usize, to: usize) -> HashSet<i32> {
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let acked = Arc::clone(&acked);
        let client = match p.try_connect(SUPERUSER, "", DB).await {
            Ok(x) => x,
            Err(_) => continue,
        };
        tasks.push(tokio::spawn(async move {
            let Ok(stmt) = client
                .prepare("INSERT INTO ev (id, note) VALUES ($1, 'x')")
                .await
            else {
                return;
            };
            for id in (from + c..to).step_by(clients) {
                let id = i32::try_from(id).unwrap();
                match client.execute(&stmt, &[&id]).await {
                    Ok(1) => {
                        acked.lock().unwrap().insert(id);
                    }
                    Ok(n) => panic!("INSERT acknowledged {n} rows"),
                    Err(_) => return,
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer task");
    }
    Arc::try_unwrap(acked).unwrap().into_inner().unwrap()
}

/// Every acknowledged id is in `ev` exactly once (ids never acknowledged may be there
/// once too: the process died between the fsync and the answer).
async fn assert_exactly_once(f: &Fixture, acked: &HashSet<i32>) {
    let rows = f
        .direct()
        .await
        .query("SELECT id, count(*) FROM ev GROUP BY id", &[])
        .await
        .unwrap();
    let mut present = HashSet::new();
    for r in &rows {
        let (id, n): (i32, i64) = (r.get(0), r.get(1));
        assert_eq!(n, 1, "id {id} applied {n} times");
        present.insert(id);
    }
    let missing: Vec<&i32> = acked.iter().filter(|id| !present.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged ids lost, e.g. {:?}",
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_inserts_survive_kill_9_exactly_once() {
    let f = Fixture::new();
    let p = f.proxy("100ms", "");
    // 20,000 single-row INSERTs from 16 clients; pgmemo is killed (SIGKILL) in the middle.
    let acked = insert_ids_through_kill_9(&p).await;
    let before_kill = acked.len();
    drop(p);
    // The restarted pgmemo applies what its journal holds.
    let p = f.proxy("100ms", "");
    wait_drained(&p).await;
    assert_exactly_once(&f, &acked).await;
    assert_eq!(p.metric("pgmemo_behind_dead_letters", &[]), 0.0);
    eprintln!("kill -9: {before_kill} acknowledged before the kill, each applied exactly once");
}

/// 6,000 single-row INSERTs from 16 clients through `p`, with PostgreSQL stopped immediately
/// once 1,000 are queued (mid-run, whatever the machine's speed) and started 0.5 s later: the
/// ids acknowledged.
async fn insert_ids_through_postgres_restart(f: &mut Fixture, p: &Proxy) -> HashSet<i32> {
    let writers = insert_ids(p, 16, 6_000);
    let restart = async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while queued(p) < 1_000.0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        f.pg.stop_immediate();
        tokio::time::sleep(Duration::from_millis(500)).await;
        f.pg.start_again();
    };
    let (acked, ()) = tokio::join!(writers, restart);
    assert!(!acked.is_empty());
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_immediate_postgres_restart_mid_flush_loses_and_duplicates_nothing() {
    let mut f = Fixture::new();
    let p = f.proxy("20ms", "");
    let acked = insert_ids_through_postgres_restart(&mut f, &p).await;
    wait_drained(&p).await;
    assert_exactly_once(&f, &acked).await;
    assert!(
        p.metric("pgmemo_behind_retries_total", &[]) > 0.0,
        "the restart interrupted a flush"
    );
    eprintln!(
        "postgres restart: {} acknowledged, each applied once",
        acked.len()
    );
}

/// Waits until pgmemo's queue is empty (its gauge) and the progress row caught up.
async fn wait_drained(p: &Proxy) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if p.metric("pgmemo_behind_queue_entries", &[]) == 0.0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the queue did not drain:\n{}",
            p.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `sql` once directly through pgmemo so that its shape is proven (queued from then on).
async fn prove(client: &Client, sql: &str) {
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_write_becomes_a_dead_letter_and_the_rest_of_its_batch_lands() {
    let f = Fixture::new();
    let p = f.proxy("300ms", "");
    let c = p.connect(SUPERUSER, "", DB).await;
    let stmt = c
        .prepare("INSERT INTO keyed (id, note) VALUES ($1, $2)")
        .await
        .unwrap();
    // The first execution of a shape goes to PostgreSQL (it proves the statement works).
    c.execute(&stmt, &[&1i32, &"first"]).await.unwrap();
    let q0 = queued(&p);
    // One batch: 2, a duplicate of 1 (refused: 23505), 3; then 4 in a later batch.
    for (id, note) in [(2i32, "a"), (1, "dup"), (3, "b")] {
        assert_eq!(c.execute(&stmt, &[&id, &note]).await.unwrap(), 1);
    }
    assert_eq!(queued(&p) - q0, 3.0, "acknowledged from the queue");
    f.until("SELECT count(*) FROM keyed", 3, Duration::from_secs(10))
        .await;
    c.execute(&stmt, &[&4i32, &"later"]).await.unwrap();
    f.until("SELECT count(*) FROM keyed", 4, Duration::from_secs(10))
        .await;
    assert_eq!(
        f.scalar("SELECT count(*) FROM keyed WHERE id = 1 AND note = 'first'")
            .await,
        1
    );
    let list = p.admin_get("/behind/dead-letters");
    assert!(list.contains("\"code\": \"23505\""), "{list}");
    assert!(list.contains("duplicate key"), "{list}");
    assert!(list.contains("\"role\": \"postgres\""), "{list}");
    assert_eq!(
        p.metric("pgmemo_behind_dead_letters_total", &["kind=\"rejected\""]),
        1.0
    );
    // Retry (refused again: still a dead letter), then fix the row and retry: applied.
    let id = list
        .split("\"id\": ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.trim().parse::<u64>().ok())
        .expect("a dead letter id");
    f.direct()
        .await
        .batch_execute("DELETE FROM keyed WHERE id = 1")
        .await
        .unwrap();
    let (code, body) = admin_post(&p, &format!("/behind/dead-letters/{id}/retry"));
    assert_eq!(code, 200, "{body}");
    f.until(
        "SELECT count(*) FROM keyed WHERE id = 1 AND note = 'dup'",
        1,
        Duration::from_secs(10),
    )
    .await;
    assert!(!p.admin_get("/behind/dead-letters").contains("23505"));
    let (code, _) = admin_post(&p, &format!("/behind/dead-letters/{id}/drop"));
    assert_eq!(code, 404, "retried letters are gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coalesced_increments_add_up_exactly_also_across_kill_9() {
    let f = Fixture::new();
    // A long interval: the kill lands while the increments are acknowledged, not applied.
    let p = f.proxy("3s", "");
    let c = p.connect(SUPERUSER, "", DB).await;
    prove(&c, "UPDATE counters SET n = n + 1 WHERE id = 1").await;
    f.until(
        "SELECT n FROM counters WHERE id = 1",
        1,
        Duration::from_secs(5),
    )
    .await;
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let client = p.try_connect(SUPERUSER, "", DB).await.expect("connect");
        tasks.push(tokio::spawn(async move {
            for _ in 0..1000 {
                let tag = simple_tag(&client, "UPDATE counters SET n = n + 1 WHERE id = 1").await;
                assert_eq!(tag, "1", "acknowledged as UPDATE 1");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let queued_now = queued(&p);
    assert!(
        queued_now >= 63_000.0,
        "increments were queued ({queued_now})"
    );
    // Everything is acknowledged; most is not applied yet. kill -9, then restart.
    p.signal(Signal::Kill);
    drop(p);
    let p = f.proxy("100ms", "");
    f.until(
        "SELECT n FROM counters WHERE id = 1",
        64_001,
        Duration::from_secs(60),
    )
    .await;
    wait_drained(&p).await;
    let batches = p.metric("pgmemo_behind_batch_entries_count", &[]);
    assert!(
        batches > 0.0 && batches < 1000.0,
        "coalesced into few batches ({batches})"
    );
    assert_eq!(f.scalar("SELECT n FROM counters WHERE id = 2").await, 0);
}

/// The flusher applies writes as its own login and queues only writes of sessions logged
/// in as that role: here pgmemo logs in as `w`, which loses its privilege after its
/// statement was proven. The queued write is refused by PostgreSQL into the dead letters,
/// never applied as anyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_its_role_may_not_make_is_a_dead_letter_never_applied_as_anyone_else() {
    let f = Fixture::new();
    f.direct()
        .await
        .batch_execute("CREATE SCHEMA pgmemo AUTHORIZATION w")
        .await
        .unwrap();
    let p = Proxy::start(ProxyArgs::new(f.pg.url("w", "postgres")).config(config(
        f.journal.path(),
        "200ms",
        "",
    )));
    let w = p.connect("w", "", DB).await;
    let stmt = w
        .prepare("INSERT INTO keyed (id, note) VALUES ($1, 'w')")
        .await
        .unwrap();
    w.execute(&stmt, &[&10i32]).await.unwrap();
    // The privilege goes away behind pgmemo's back (directly on PostgreSQL).
    f.direct()
        .await
        .batch_execute("REVOKE INSERT ON keyed FROM w")
        .await
        .unwrap();
    let refused = w.execute(&stmt, &[&11i32]).await;
    match refused {
        // Queued: refused at apply time, kept as a dead letter with the writer's role.
        Ok(_) => {
            let deadline = Instant::now() + Duration::from_secs(10);
            let list = loop {
                let list = p.admin_get("/behind/dead-letters");
                if list.contains("42501") || Instant::now() > deadline {
                    break list;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            assert!(list.contains("42501"), "{list}");
            assert!(list.contains("\"role\": \"w\""), "{list}");
        }
        // Or re-planned and forwarded: the writer got PostgreSQL's error itself.
        Err(e) => assert_eq!(e.code().map(|c| c.code()), Some("42501"), "{e}"),
    }
    assert_eq!(
        f.scalar("SELECT count(*) FROM keyed WHERE id = 11").await,
        0,
        "never applied"
    );
    assert_eq!(
        f.scalar("SELECT count(*) FROM keyed WHERE id = 10").await,
        1
    );
}

/// Writes of a session logged in as another role than pgmemo's are never queued: applied
/// under SET ROLE on pgmemo's connection, any expression they run (a column default, a
/// CHECK, an index expression) could `set_config('role', 'none', true)` and go on as
/// pgmemo's login. They run synchronously, as the writer, with PostgreSQL's own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_logins_writes_are_never_queued() {
    let f = Fixture::new();
    f.direct()
        .await
        .batch_execute(
            "CREATE TABLE hijack(id int PRIMARY KEY, r text DEFAULT pg_catalog.set_config('role', 'none', true));
             GRANT INSERT, SELECT ON hijack TO w",
        )
        .await
        .unwrap();
    let extra =
        "\n[[rules]]\ntable = \"hijack\"\nwrite = \"behind\"\nbehind_flush_interval = \"10s\"\n";
    let p = Proxy::start(
        ProxyArgs::new(f.pg.url(SUPERUSER, "postgres"))
            .config(config(f.journal.path(), "10s", "") + extra),
    );
    let w = p.connect("w", "", DB).await;
    let stmt = w
        .prepare("INSERT INTO hijack (id) VALUES ($1)")
        .await
        .unwrap();
    for id in 1..4i32 {
        w.execute(&stmt, &[&id]).await.unwrap();
    }
    // Applied at once (a 10 s flush interval would still hold queued ones).
    assert_eq!(f.scalar("SELECT count(*) FROM hijack").await, 3);
    assert_eq!(queued(&p), 0.0);
    assert!(
        p.metric("pgmemo_behind_forwarded_total", &["reason=\"other_login\""]) >= 2.0,
        "counted with their reason"
    );
}

/// The flusher parses a text once per connection and binds it for every later write: a
/// refused write must not take its neighbours of the same text with it, and the batches
/// after the failed one (whose statements are closed and parsed again) must keep landing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_write_leaves_later_writes_of_its_text_binding_correctly() {
    let f = Fixture::new();
    let p = f.proxy("300ms", "");
    let s = p.connect(SUPERUSER, "", DB).await;
    let stmt = s
        .prepare("INSERT INTO keyed (id, note) VALUES ($1, 'x')")
        .await
        .unwrap();
    s.execute(&stmt, &[&1i32]).await.unwrap();
    f.until("SELECT count(*) FROM keyed", 1, Duration::from_secs(5))
        .await;
    // One batch: 2, 1 (a duplicate key), 3.
    for id in [2i32, 1, 3] {
        s.execute(&stmt, &[&id]).await.unwrap();
    }
    f.until("SELECT count(*) FROM keyed", 3, Duration::from_secs(10))
        .await;
    for batch in 0..3i32 {
        for id in 0..3i32 {
            s.execute(&stmt, &[&(10 + batch * 3 + id)]).await.unwrap();
        }
        f.until(
            "SELECT count(*) FROM keyed",
            i64::from(6 + batch * 3),
            Duration::from_secs(10),
        )
        .await;
    }
    let list = p.admin_get("/behind/dead-letters");
    assert!(list.contains("23505"), "{list}");
    assert_eq!(
        p.metric("pgmemo_behind_dead_letters", &[]),
        1.0,
        "only the duplicate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ineligible_statements_behave_exactly_as_direct() {
    let f = Fixture::new();
    let p = f.proxy("100ms", "");
    let c = p.connect(SUPERUSER, "", DB).await;
    prove(&c, "INSERT INTO keyed VALUES (1, 'a')").await;
    let q0 = queued(&p);
    // RETURNING: the row comes back.
    let row = c
        .query_one("INSERT INTO keyed VALUES (2, 'b') RETURNING id, note", &[])
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, i32>(0), row.get::<_, String>(1)),
        (2, "b".to_owned())
    );
    // In a transaction block: rolled back, never applied.
    c.batch_execute("BEGIN; INSERT INTO keyed VALUES (3, 'c'); ROLLBACK")
        .await
        .unwrap();
    // ON CONFLICT DO UPDATE: the conflict is resolved by PostgreSQL, now.
    assert_eq!(
        simple_tag(
            &c,
            "INSERT INTO keyed VALUES (1, 'z') ON CONFLICT (id) DO UPDATE SET note = 'upd'"
        )
        .await,
        "1"
    );
    // Several statements in one Query: both run, in order, now.
    let msgs = c
        .simple_query("INSERT INTO keyed VALUES (4, 'd'); INSERT INTO keyed VALUES (5, 'e')")
        .await
        .unwrap();
    assert_eq!(msgs.len(), 2);
    // An error in a queued shape's sibling: a duplicate in a transaction fails there.
    let dup = c
        .batch_execute("BEGIN; INSERT INTO keyed VALUES (1, 'x'); COMMIT")
        .await;
    assert_eq!(dup.unwrap_err().code().map(|c| c.code()), Some("23505"));
    c.batch_execute("ROLLBACK").await.unwrap();
    // now() is evaluated when the statement runs, so such a write is not queued.
    c.batch_execute("INSERT INTO ev VALUES (1, now()::text)")
        .await
        .unwrap();
    assert_eq!(queued(&p), q0, "none of these was queued");
    let d = f.direct().await;
    let rows: Vec<(i32, String)> = d
        .query("SELECT id, note FROM keyed ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let want: Vec<(i32, String)> = [(1, "upd"), (2, "b"), (4, "d"), (5, "e")]
        .iter()
        .map(|(i, n)| (*i, n.to_string()))
        .collect();
    assert_eq!(rows, want);
    assert_eq!(f.scalar("SELECT count(*) FROM ev").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_is_not_queued_waits_for_what_was_queued_before_it() {
    let f = Fixture::new();
    let p = f.proxy("1s", "");
    let c = p.connect(SUPERUSER, "", DB).await;
    let stmt = c
        .prepare("INSERT INTO ev (id, note) VALUES ($1, 'q')")
        .await
        .unwrap();
    c.execute(&stmt, &[&0i32]).await.unwrap();
    f.until("SELECT count(*) FROM ev", 1, Duration::from_secs(5))
        .await;
    for id in 1..=20i32 {
        c.execute(&stmt, &[&id]).await.unwrap();
    }
    assert_eq!(
        f.scalar("SELECT count(*) FROM ev").await,
        1,
        "queued, not applied yet"
    );
    // A DELETE is not queued: it runs only once the 20 queued INSERTs are applied, so it
    // deletes them too (without the barrier it would run first and leave them).
    let started = Instant::now();
    assert_eq!(simple_tag(&c, "DELETE FROM ev").await, "21");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        p.metric("pgmemo_behind_barrier_total", &["result=\"applied\""]),
        1.0
    );
    assert_eq!(f.scalar("SELECT count(*) FROM ev").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_applies_the_queue_before_exiting() {
    let f = Fixture::new();
    let mut p = f.proxy("10s", "");
    let c = p.connect(SUPERUSER, "", DB).await;
    let stmt = c
        .prepare("INSERT INTO ev (id, note) VALUES ($1, 't')")
        .await
        .unwrap();
    c.execute(&stmt, &[&0i32]).await.unwrap();
    f.until("SELECT count(*) FROM ev", 1, Duration::from_secs(5))
        .await;
    for id in 1..=50i32 {
        c.execute(&stmt, &[&id]).await.unwrap();
    }
    drop(c);
    assert_eq!(f.scalar("SELECT count(*) FROM ev").await, 1);
    p.signal(Signal::Term);
    let status = p.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status:?}\n{}", p.stderr());
    assert_eq!(
        f.scalar("SELECT count(*) FROM ev").await,
        51,
        "drained at shutdown"
    );
    assert!(
        p.stderr().contains("write-behind queue drained"),
        "{}",
        p.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_queue_bound_writes_are_applied_synchronously_never_dropped() {
    let f = Fixture::new();
    let p = f.proxy("2s", "max_queue_entries = 3");
    let c = p.connect(SUPERUSER, "", DB).await;
    let stmt = c
        .prepare("INSERT INTO ev (id, note) VALUES ($1, 'b')")
        .await
        .unwrap();
    c.execute(&stmt, &[&0i32]).await.unwrap();
    f.until("SELECT count(*) FROM ev", 1, Duration::from_secs(5))
        .await;
    let started = Instant::now();
    for id in 1..=10i32 {
        c.execute(&stmt, &[&id]).await.unwrap();
    }
    // A write forwarded past the bound still waits for the queue before it (the barrier,
    // bounded by the flush interval here), never longer.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "never blocked on the full queue"
    );
    // Each write beyond the bound ran synchronously once the queue before it was applied,
    // which made room for the next ones.
    let forwarded = p.metric("pgmemo_behind_forwarded_total", &["reason=\"queue_full\""]);
    assert!(forwarded >= 1.0, "the bound was hit");
    assert_eq!(queued(&p) + forwarded, 10.0);
    f.until("SELECT count(*) FROM ev", 11, Duration::from_secs(10))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_reads_of_a_behind_table_move_on_when_a_batch_commits() {
    let f = Fixture::new();
    let p = f.proxy("300ms", "");
    let c = p.connect(SUPERUSER, "", DB).await;
    let count = || async {
        let r = c
            .query_one("SELECT count(*) FROM keyed", &[])
            .await
            .unwrap();
        r.get::<_, i64>(0)
    };
    let stmt = c
        .prepare("INSERT INTO keyed (id, note) VALUES ($1, 'r')")
        .await
        .unwrap();
    c.execute(&stmt, &[&1i32]).await.unwrap();
    assert_eq!(count().await, 1);
    assert_eq!(count().await, 1);
    assert!(p.metric("pgmemo_cache_hits_total", &[]) >= 1.0);
    c.execute(&stmt, &[&2i32]).await.unwrap();
    // A session does not read its own queued write before it is applied...
    let deadline = Instant::now() + Duration::from_secs(5);
    while count().await != 2 {
        assert!(
            Instant::now() < deadline,
            "the batch's commit invalidated the cached count"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...and once it is, no read through pgmemo sees the older state again.
    for _ in 0..5 {
        assert_eq!(count().await, 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_cannot_wait_long_enough_fails_rather_than_overtake_the_queue() {
    let f = Fixture::new();
    let p = f.proxy("3s", "barrier_timeout = \"200ms\"");
    let c = p.connect(SUPERUSER, "", DB).await;
    let stmt = c
        .prepare("INSERT INTO ev (id, note) VALUES ($1, 'q')")
        .await
        .unwrap();
    c.execute(&stmt, &[&0i32]).await.unwrap();
    f.until("SELECT count(*) FROM ev", 1, Duration::from_secs(5))
        .await;
    c.execute(&stmt, &[&1i32]).await.unwrap();
    let err = c.batch_execute("DELETE FROM ev").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("55P03"), "{err}");
    assert_eq!(
        p.metric("pgmemo_behind_barrier_total", &["result=\"timeout\""]),
        1.0
    );
    // Not run: once the queue is applied both rows are there.
    f.until("SELECT count(*) FROM ev", 2, Duration::from_secs(10))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferred_constraint_refuses_its_write_not_the_whole_queue() {
    let f = Fixture::new();
    f.direct()
        .await
        .batch_execute(
            "CREATE TABLE deferred(id int, CONSTRAINT u UNIQUE (id) DEFERRABLE INITIALLY DEFERRED)",
        )
        .await
        .unwrap();
    let extra = "\n[[rules]]\ntable = \"deferred\"\nwrite = \"behind\"\n";
    let p = Proxy::start(
        ProxyArgs::new(f.pg.url(SUPERUSER, "postgres"))
            .config(config(f.journal.path(), "300ms", "") + extra),
    );
    let c = p.connect(SUPERUSER, "", DB).await;
    let stmt = c.prepare("INSERT INTO deferred VALUES ($1)").await.unwrap();
    c.execute(&stmt, &[&1i32]).await.unwrap();
    for id in [2i32, 1, 3] {
        c.execute(&stmt, &[&id]).await.unwrap();
    }
    f.until("SELECT count(*) FROM deferred", 3, Duration::from_secs(10))
        .await;
    c.execute(&stmt, &[&4i32]).await.unwrap();
    f.until("SELECT count(*) FROM deferred", 4, Duration::from_secs(10))
        .await;
    let list = p.admin_get("/behind/dead-letters");
    assert!(list.contains("23505"), "{list}");
}

/// A journal record that passes its checksum but does not decode (written by another
/// version) must not stall the queue behind it: it becomes a dead letter and the writes
/// after it are applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_journal_record_is_a_dead_letter_not_a_stalled_queue() {
    let f = Fixture::new();
    let p = f.proxy("10s", "");
    let c = p.connect(SUPERUSER, "", DB).await;
    let stmt = c
        .prepare("INSERT INTO ev (id, note) VALUES ($1, 'u')")
        .await
        .unwrap();
    c.execute(&stmt, &[&1i32]).await.unwrap();
    c.execute(&stmt, &[&2i32]).await.unwrap();
    assert_eq!(queued(&p), 1.0, "the second write is queued");
    p.signal(Signal::Kill);
    drop(p);
    // Another version's record, appended behind pgmemo's back.
    let dir = f.journal.path().join(format!(
        "db-{}",
        DB.bytes().map(|b| format!("{b:02x}")).collect::<String>()
    ));
    {
        let (journal, recovered) =
            pgmemo::behind::journal::Journal::open(&dir, 1 << 20).expect("journal");
        assert_eq!(recovered.records.len(), 1);
        journal
            .append(bytes::Bytes::from_static(b"\xffnot an entry"))
            .await
            .expect("appended");
    }
    let p = f.proxy("100ms", "");
    let c = p.connect(SUPERUSER, "", DB).await;
    c.batch_execute("INSERT INTO ev (id, note) VALUES (3, 'u')")
        .await
        .unwrap();
    f.until(
        "SELECT count(*) FROM ev WHERE note = 'u'",
        3,
        Duration::from_secs(10),
    )
    .await;
    let list = p.admin_get("/behind/dead-letters");
    assert!(list.contains("XX001"), "{list}");
    wait_drained(&p).await;
}

// ---------------------------------------------------------------------------------------
// The queue on a Redis Stream (`behind.queue = "redis"`).

/// A Redis that keeps what it acknowledges (AOF, fsync per write).
fn durable_redis() -> RedisServer {
    RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"])
}

/// The `app` database's queue hash in Redis (namespace `wb`; `706f737467726573` is
/// hex("postgres"), the login; `617070` is hex("app")).
const META: &str = "pgmemo:wb:behind:706f737467726573:{617070}:meta";

/// A field of the queue hash (0 when absent).
fn meta_field(redis: &RedisServer, field: &str) -> i64 {
    let reply = redis.command(&format!("HGET {META} {field}"));
    reply
        .lines()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The Redis queue's progress row (0 before it exists).
async fn redis_progress(f: &Fixture) -> i64 {
    let c = f.direct().await;
    c.query_one(
        "SELECT coalesce(max(applied), 0) FROM pgmemo.behind_progress WHERE queue LIKE 'redis:%'",
        &[],
    )
    .await
    .map_or(0, |r| r.get(0))
}

/// Waits until the progress row reached the last number Redis gave.
async fn wait_stream_applied(f: &Fixture, redis: &RedisServer, who: &Proxy) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seq = meta_field(redis, "seq");
        let progress = redis_progress(f).await;
        if seq > 0 && progress == seq {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the Redis queue was not applied: progress {progress}, seq {seq}\n{}",
            who.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_queue_acknowledged_inserts_survive_kill_9_exactly_once() {
    let f = Fixture::new();
    let redis = durable_redis();
    let p = f.proxy_with(redis_config(&redis.url(), "100ms"));
    let acked = insert_ids_through_kill_9(&p).await;
    let before_kill = acked.len();
    drop(p);
    // Queued in Redis, not run synchronously: Redis numbered every acknowledged write but
    // the few that proved the shape synchronously (at most one per client).
    let seq = meta_field(&redis, "seq");
    assert!(
        seq + 16 >= before_kill as i64,
        "Redis numbered {seq} writes, {before_kill} acknowledged"
    );
    // The restarted pgmemo finds the stream (nothing is written to it again) and applies it.
    let p = f.proxy_with(redis_config(&redis.url(), "100ms"));
    wait_stream_applied(&f, &redis, &p).await;
    assert_exactly_once(&f, &acked).await;
    assert_eq!(p.metric("pgmemo_behind_dead_letters", &[]), 0.0);
    assert!(
        p.stderr().contains("appendonly yes, appendfsync always"),
        "the persistence check ran:\n{}",
        p.stderr()
    );
    // Applied entries leave the stream.
    let left = redis.command("XLEN pgmemo:wb:behind:706f737467726573:{617070}:stream");
    assert!(left.starts_with(":0"), "stream length {left:?}");
    eprintln!("redis kill -9: {before_kill} acknowledged before the kill, each applied once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_queue_postgres_restart_mid_flush_loses_and_duplicates_nothing() {
    let mut f = Fixture::new();
    let redis = durable_redis();
    let p = f.proxy_with(redis_config(&redis.url(), "20ms"));
    let acked = insert_ids_through_postgres_restart(&mut f, &p).await;
    wait_stream_applied(&f, &redis, &p).await;
    assert_exactly_once(&f, &acked).await;
    assert!(
        p.metric("pgmemo_behind_retries_total", &[]) > 0.0,
        "the restart interrupted a flush"
    );
    assert_eq!(p.metric("pgmemo_behind_dead_letters", &[]), 0.0);
    eprintln!(
        "redis queue, postgres restart: {} acknowledged, each applied once",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_queue_of_two_instances_is_applied_exactly_once_after_the_holder_dies() {
    let f = Fixture::new();
    let redis = durable_redis();
    let cfg = redis_config(&redis.url(), "50ms");
    let a = f.proxy_with(cfg.clone());
    let b = f.proxy_with(cfg.clone());
    // Writes through each make both run the database's flusher (a shape's first write runs
    // synchronously; the second is queued); one takes the lease.
    let mut first = HashSet::new();
    first.extend(insert_range(&a, 1, 1_000_000, 1_000_002).await);
    first.extend(insert_range(&b, 1, 1_000_002, 1_000_004).await);
    let holds = |p: &Proxy| p.stderr().contains("this instance holds the lease");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !holds(&a) && !holds(&b) {
        assert!(Instant::now() < deadline, "nobody took the lease");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (holder, other) = if holds(&a) { (a, b) } else { (b, a) };
    assert!(!holds(&other), "one holder");
    let killer = kill_9_after(holder.pid(), Duration::from_millis(1500));
    let (mut acked, via_other) = tokio::join!(
        insert_range(&holder, 8, 0, 10_000),
        insert_range(&other, 8, 10_000, 20_000)
    );
    killer.await.unwrap();
    assert!(
        acked.len() < 10_000,
        "the holder was killed mid-run ({} acknowledged)",
        acked.len()
    );
    assert_eq!(
        via_other.len(),
        10_000,
        "the other instance kept acknowledging"
    );
    acked.extend(via_other);
    acked.extend(first);
    drop(holder);
    // The survivor takes the lease over and applies every write, its own and the dead
    // holder's, exactly once.
    wait_stream_applied(&f, &redis, &other).await;
    assert_exactly_once(&f, &acked).await;
    assert!(holds(&other), "the survivor took over:\n{}", other.stderr());
    assert!(other.metric("pgmemo_behind_applied_total", &[]) > 0.0);
    assert_eq!(other.metric("pgmemo_behind_queue_entries", &[]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_queue_writes_redis_refuses_run_synchronously_exactly_once() {
    let f = Fixture::new();
    let redis = RedisServer::start();
    let p = f.proxy_with(redis_config(&redis.url(), "50ms"));
    let c = p.connect(SUPERUSER, "", DB).await;
    let stmt = c
        .prepare("INSERT INTO ev (id, note) VALUES ($1, 'r')")
        .await
        .unwrap();
    // The first proves the shape (synchronous), the second is queued in the stream.
    c.execute(&stmt, &[&0i32]).await.unwrap();
    c.execute(&stmt, &[&1i32]).await.unwrap();
    assert_eq!(meta_field(&redis, "seq"), 1, "queued in Redis");
    f.until("SELECT count(*) FROM ev", 2, Duration::from_secs(10))
        .await;
    // Redis now refuses every write (out of memory): its append script is refused before
    // it adds anything, so each write runs synchronously instead, applied before its
    // acknowledgement and never queued as well.
    assert!(redis.command("CONFIG SET maxmemory 1").starts_with("+OK"));
    for id in 2..22i32 {
        assert_eq!(c.execute(&stmt, &[&id]).await.unwrap(), 1);
    }
    assert_eq!(
        f.scalar("SELECT count(*) FROM ev").await,
        22,
        "applied at once"
    );
    assert!(
        p.metric(
            "pgmemo_behind_forwarded_total",
            &["reason=\"queue_failed\""]
        ) >= 20.0,
        "{}",
        p.stderr()
    );
    assert_eq!(meta_field(&redis, "seq"), 1, "nothing more was appended");
    // This Redis persists nothing: said loudly at start.
    assert!(
        p.stderr().contains("Redis persists nothing"),
        "{}",
        p.stderr()
    );
    // Redis takes writes again: they are queued, and nothing is applied twice.
    assert!(redis.command("CONFIG SET maxmemory 0").starts_with("+OK"));
    c.execute(&stmt, &[&22i32]).await.unwrap();
    assert_eq!(meta_field(&redis, "seq"), 2);
    wait_stream_applied(&f, &redis, &p).await;
    assert_exactly_once(&f, &(0..23).collect()).await;
    assert_eq!(f.scalar("SELECT count(*) FROM ev").await, 23);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_queue_commits_invalidate_the_other_instances_cached_reads() {
    let f = Fixture::new();
    let redis = durable_redis();
    let cfg = redis_config(&redis.url(), "300ms");
    // `writer` queues (and, the only one with the database's queue open, applies); `reader`
    // only reads: what it cached must move on when the writer's batch commits.
    let writer = f.proxy_with(cfg.clone());
    let reader = f.proxy_with(cfg);
    let w = writer.connect(SUPERUSER, "", DB).await;
    let r = reader.connect(SUPERUSER, "", DB).await;
    let count = || async {
        r.query_one("SELECT count(*) FROM keyed", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let stmt = w
        .prepare("INSERT INTO keyed (id, note) VALUES ($1, 'i')")
        .await
        .unwrap();
    w.execute(&stmt, &[&1i32]).await.unwrap();
    assert_eq!(count().await, 1);
    assert_eq!(count().await, 1);
    assert!(reader.metric("pgmemo_cache_hits_total", &[]) >= 1.0);
    w.execute(&stmt, &[&2i32]).await.unwrap();
    assert_eq!(meta_field(&redis, "seq"), 1, "queued in Redis");
    let deadline = Instant::now() + Duration::from_secs(5);
    while count().await != 2 {
        assert!(
            Instant::now() < deadline,
            "the other instance's cached count moved on when the batch committed\n{}",
            writer.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(writer.stderr().contains("this instance holds the lease"));
    assert!(!reader.stderr().contains("this instance holds the lease"));
}

/// The process id of a running redis-server (from INFO).
fn redis_pid(redis: &RedisServer) -> String {
    let info = redis.command("INFO server");
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .map(|p| p.trim().to_owned())
        .unwrap_or_else(|| panic!("no process_id in {info:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_queue_append_without_a_reply_is_an_error_never_run_twice() {
    let f = Fixture::new();
    let redis = RedisServer::start();
    let p = f.proxy_with(redis_config(&redis.url(), "50ms"));
    let c = p.connect(SUPERUSER, "", DB).await;
    let stmt = c
        .prepare("INSERT INTO ev (id, note) VALUES ($1, 'u')")
        .await
        .unwrap();
    c.execute(&stmt, &[&0i32]).await.unwrap();
    c.execute(&stmt, &[&1i32]).await.unwrap();
    f.until("SELECT count(*) FROM ev", 2, Duration::from_secs(10))
        .await;
    // Redis stops answering: the append is sent, its reply never comes in time.
    let pid = redis_pid(&redis);
    let signal = |sig: &str| {
        std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
    };
    assert!(signal("-STOP").success());
    let err = c
        .execute(&stmt, &[&2i32])
        .await
        .expect_err("a write of unknown outcome is not acknowledged");
    assert_eq!(
        err.code().map(|c| c.code()),
        Some("58030"),
        "{err:?}\n{}",
        p.stderr()
    );
    // It was not run synchronously as well (it may still be applied from the queue).
    assert_eq!(f.scalar("SELECT count(*) FROM ev WHERE id = 2").await, 0);
    // Right after, writes are not offered to the silent Redis: they run synchronously.
    assert_eq!(c.execute(&stmt, &[&3i32]).await.unwrap(), 1);
    assert_eq!(f.scalar("SELECT count(*) FROM ev WHERE id = 3").await, 1);
    assert!(signal("-CONT").success());
    // Redis ran the append once it woke up: applied from the queue, once.
    wait_stream_applied(&f, &redis, &p).await;
    assert_exactly_once(&f, &[0, 1, 2, 3].into_iter().collect()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_queue_entry_that_does_not_decode_is_a_dead_letter_not_a_stalled_queue() {
    let f = Fixture::new();
    let redis = RedisServer::start();
    let p = f.proxy_with(redis_config(&redis.url(), "50ms"));
    let c = p.connect(SUPERUSER, "", DB).await;
    let stmt = c
        .prepare("INSERT INTO ev (id, note) VALUES ($1, 'd')")
        .await
        .unwrap();
    c.execute(&stmt, &[&0i32]).await.unwrap();
    c.execute(&stmt, &[&1i32]).await.unwrap();
    wait_stream_applied(&f, &redis, &p).await;
    // Number 2 is an entry no pgmemo wrote (as the append script would number it).
    assert!(
        redis
            .command(&format!("HSET {META} seq 2"))
            .starts_with(':')
    );
    let added =
        redis.command("XADD pgmemo:wb:behind:706f737467726573:{617070}:stream 2-1 e garbage");
    assert!(added.contains("2-1"), "{added}");
    // Later writes are applied after it; it is kept as a dead letter with its bytes.
    c.execute(&stmt, &[&3i32]).await.unwrap();
    wait_stream_applied(&f, &redis, &p).await;
    assert_exactly_once(&f, &[0, 1, 3].into_iter().collect()).await;
    let list = p.admin_get("/behind/dead-letters");
    assert!(list.contains("XX001"), "{list}");
    assert_eq!(p.metric("pgmemo_behind_dead_letters", &[]), 1.0);
}

/// Ten increments of one row merged into one UPDATE of +10 would overflow the column where
/// the first five alone fit (the proving first one synchronously leaves room for five):
/// the merged update's refusal must not make dead letters of all ten. Applied one by one,
/// five land and only the five that overflow are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_merged_increment_is_retried_one_by_one() {
    let f = Fixture::new();
    f.direct()
        .await
        .batch_execute(
            "CREATE TABLE small(id int PRIMARY KEY, n int NOT NULL);
             INSERT INTO small VALUES (1, 2147483641)",
        )
        .await
        .unwrap();
    let extra = "\n[[rules]]\ntable = \"small\"\nwrite = \"behind\"\n\
                 behind_flush_interval = \"1s\"\nbehind_increments = true\nbehind_coalesce = true\n";
    let p = Proxy::start(
        ProxyArgs::new(f.pg.url(SUPERUSER, "postgres"))
            .config(config(f.journal.path(), "1s", "") + extra),
    );
    let c = p.connect(SUPERUSER, "", DB).await;
    let sql = "UPDATE small SET n = n + 1 WHERE id = 1";
    prove(&c, sql).await;
    for _ in 0..10 {
        assert_eq!(simple_tag(&c, sql).await, "1", "acknowledged as UPDATE 1");
    }
    f.until(
        "SELECT n::bigint FROM small WHERE id = 1",
        2_147_483_647,
        Duration::from_secs(10),
    )
    .await;
    wait_drained(&p).await;
    let list = p.admin_get("/behind/dead-letters");
    assert_eq!(list.matches("22003").count(), 5, "{list}");
}

/// A reload that raises a rule's flush interval takes effect (the interval folded in from
/// earlier writes used to win, as the shortest seen).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_can_raise_the_flush_interval() {
    let f = Fixture::new();
    let p = f.proxy("50ms", "");
    let c = p.connect(SUPERUSER, "", DB).await;
    let stmt = c
        .prepare("INSERT INTO ev (id, note) VALUES ($1, 'r')")
        .await
        .unwrap();
    c.execute(&stmt, &[&1i32]).await.unwrap();
    c.execute(&stmt, &[&2i32]).await.unwrap();
    f.until(
        "SELECT count(*) FROM ev WHERE note = 'r'",
        2,
        Duration::from_secs(5),
    )
    .await;
    let path = p.config_path().expect("config file");
    std::fs::write(&path, config(f.journal.path(), "4s", "")).unwrap();
    let before = p.stderr().len();
    p.signal(Signal::Hup);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !p
        .stderr()
        .get(before..)
        .unwrap_or_default()
        .contains("configuration reloaded")
    {
        assert!(Instant::now() < deadline, "not reloaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Under the reloaded rule the shape is proven again (3 runs synchronously); then the
    // flusher waits its new interval after each batch it starts: 4 goes at once (the
    // queue was idle), 5 is held for about 4 s after it.
    c.execute(&stmt, &[&3i32]).await.unwrap();
    c.execute(&stmt, &[&4i32]).await.unwrap();
    f.until(
        "SELECT count(*) FROM ev WHERE note = 'r'",
        4,
        Duration::from_secs(10),
    )
    .await;
    c.execute(&stmt, &[&5i32]).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        f.scalar("SELECT count(*) FROM ev WHERE note = 'r'").await,
        4,
        "held for the reloaded interval"
    );
    f.until(
        "SELECT count(*) FROM ev WHERE note = 'r'",
        5,
        Duration::from_secs(10),
    )
    .await;
}

/// Copies the queued entry `from` of the `app` stream to `to`: without its signature
/// (`keep_tag` false) or with it (then it is the signature of another number: a replay).
fn forge_entry(redis: &RedisServer, from: i64, to: i64, keep_tag: bool) {
    let fields = if keep_tag { "'e', e, 's', s" } else { "'e', e" };
    let script = format!(
        "local f = redis.call('XRANGE', KEYS[1], '{from}-1', '{from}-1')[1][2]; \
         local e, s = '', ''; \
         for i = 1, #f, 2 do if f[i] == 'e' then e = f[i+1] elseif f[i] == 's' then s = f[i+1] end end; \
         redis.call('XADD', KEYS[1], '{to}-1', {fields}); \
         redis.call('HSET', KEYS[2], 'seq', {to}); return 1"
    );
    let reply = redis.command(&format!(
        "EVAL \"{script}\" 2 pgmemo:wb:behind:706f737467726573:{{617070}}:stream {META}"
    ));
    assert!(reply.starts_with(":1"), "{reply}");
}

/// Whoever can write to Redis cannot make the flusher run a statement: an entry appended
/// directly, with a valid encoding (a pgmemo's record, copied) but no signature or the
/// signature of another number (a replay), is never applied; each becomes a dead letter
/// and the writes after them are applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_queue_entry_without_a_valid_signature_is_a_dead_letter_never_applied() {
    let f = Fixture::new();
    let redis = durable_redis();
    // A flush interval long enough that the queued write is still in the stream to copy.
    let p = f.proxy_with(redis_config(&redis.url(), "60s"));
    let c = p.connect(SUPERUSER, "", DB).await;
    let stmt = c
        .prepare("INSERT INTO ev (id, note) VALUES ($1, 's')")
        .await
        .unwrap();
    c.execute(&stmt, &[&0i32]).await.unwrap();
    c.execute(&stmt, &[&1i32]).await.unwrap();
    let seq = meta_field(&redis, "seq");
    assert!(seq >= 1, "queued in Redis");
    drop(c);
    drop(p);
    forge_entry(&redis, seq, seq + 1, false);
    forge_entry(&redis, seq, seq + 2, true);
    let p = f.proxy_with(redis_config(&redis.url(), "50ms"));
    let c = p.connect(SUPERUSER, "", DB).await;
    let stmt = c
        .prepare("INSERT INTO ev (id, note) VALUES ($1, 's')")
        .await
        .unwrap();
    c.execute(&stmt, &[&2i32]).await.unwrap();
    c.execute(&stmt, &[&3i32]).await.unwrap();
    assert!(
        meta_field(&redis, "seq") > seq + 2,
        "queued after the forged ones"
    );
    wait_stream_applied(&f, &redis, &p).await;
    // Each acknowledged write once; the copies (inserts of an id already there) never ran,
    // or they would be 23505 dead letters.
    assert_exactly_once(&f, &[0, 1, 2, 3].into_iter().collect()).await;
    let list = p.admin_get("/behind/dead-letters");
    assert_eq!(
        list.matches("signature does not verify").count(),
        2,
        "{list}"
    );
    assert!(!list.contains("23505"), "{list}");
    assert_eq!(p.metric("pgmemo_behind_dead_letters", &[]), 2.0);
}

/// The queue hash's id (the queue incarnation), empty when absent.
fn meta_id(redis: &RedisServer) -> String {
    let reply = redis.command(&format!("HGET {META} id"));
    reply.lines().nth(1).unwrap_or_default().to_owned()
}

/// A progress row's applied number (-1 when there is none).
async fn progress_of(f: &Fixture, id: &str) -> i64 {
    f.direct()
        .await
        .query_opt(
            "SELECT applied FROM pgmemo.behind_progress WHERE queue LIKE '%' || $1",
            &[&format!(":{id}")],
        )
        .await
        .unwrap()
        .map_or(-1, |r| r.get(0))
}

/// Redis loses its data (FLUSHALL) while the holder's flusher keeps its connection, whose
/// progress row is the old queue's: the new queue's writes are applied under the new
/// queue's own row, exactly once, and the old row stays where it was (before the fix they
/// were applied under the old row, moving it back, and the new row started from 0: a
/// restart applied them again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_queue_lost_by_redis_is_followed_by_a_new_queue_applied_exactly_once() {
    let f = Fixture::new();
    let redis = RedisServer::start();
    let p = f.proxy_with(redis_config(&redis.url(), "50ms"));
    let c = p.connect(SUPERUSER, "", DB).await;
    let stmt = c
        .prepare("INSERT INTO ev (id, note) VALUES ($1, 'f')")
        .await
        .unwrap();
    for id in 0..4i32 {
        c.execute(&stmt, &[&id]).await.unwrap();
    }
    wait_stream_applied(&f, &redis, &p).await;
    let old = meta_id(&redis);
    let old_applied = progress_of(&f, &old).await;
    assert!(old_applied >= 1, "the first queue was applied");
    assert!(redis.command("FLUSHALL").starts_with("+OK"));
    for id in 4..10i32 {
        c.execute(&stmt, &[&id]).await.unwrap();
    }
    let new = meta_id(&redis);
    assert!(
        !new.is_empty() && new != old,
        "a new queue: {old} then {new}"
    );
    let seq = meta_field(&redis, "seq");
    assert!(seq >= 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    while progress_of(&f, &new).await != seq {
        assert!(
            Instant::now() < deadline,
            "the new queue's row did not reach {seq}\n{}",
            p.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        progress_of(&f, &old).await,
        old_applied,
        "old row untouched"
    );
    // The database is listed again for the other instances and the next start.
    assert!(
        redis
            .command("SISMEMBER pgmemo:wb:behind:706f737467726573:dbs app")
            .starts_with(":1")
    );
    // A restart reads the new row: nothing is applied again.
    drop(c);
    drop(p);
    let p = f.proxy_with(redis_config(&redis.url(), "50ms"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_exactly_once(&f, &(0..10).collect()).await;
    assert_eq!(p.metric("pgmemo_behind_dead_letters", &[]), 0.0);
}

/// Redis goes back under the same queue id (as a restart with `appendfsync everysec` or a
/// failover can): the holder raises the counter above what it applied (logged), and new
/// writes are numbered above it (the appender's floor) and applied, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_queue_counter_that_went_back_is_fenced_and_new_writes_are_applied() {
    let f = Fixture::new();
    let redis = RedisServer::start();
    let p = f.proxy_with(redis_config(&redis.url(), "50ms"));
    let c = p.connect(SUPERUSER, "", DB).await;
    let stmt = c
        .prepare("INSERT INTO ev (id, note) VALUES ($1, 'b')")
        .await
        .unwrap();
    for id in 0..4i32 {
        c.execute(&stmt, &[&id]).await.unwrap();
    }
    wait_stream_applied(&f, &redis, &p).await;
    let applied = meta_field(&redis, "seq");
    assert!(applied >= 2);
    // The counter goes back (the entries above it were trimmed as applied).
    assert!(
        redis
            .command(&format!("HSET {META} seq 1"))
            .starts_with(':')
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while meta_field(&redis, "seq") < applied {
        assert!(Instant::now() < deadline, "not fenced\n{}", p.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(p.stderr().contains("counter went back"), "{}", p.stderr());
    for id in 4..8i32 {
        c.execute(&stmt, &[&id]).await.unwrap();
    }
    assert!(
        meta_field(&redis, "seq") > applied,
        "numbered above the applied"
    );
    wait_stream_applied(&f, &redis, &p).await;
    assert_exactly_once(&f, &(0..8).collect()).await;
}

/// An instance started before any write to a database learns of its queue later (the list
/// of databases is read every lease period): when the only instance that wrote there dies
/// with writes unapplied, it applies them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_queue_of_a_database_listed_after_start_is_applied_by_another_instance() {
    let f = Fixture::new();
    let redis = durable_redis();
    let y = f.proxy_with(redis_config(&redis.url(), "50ms"));
    // X holds its batches back long enough to die with them unapplied.
    let x = f.proxy_with(redis_config(&redis.url(), "60s"));
    let c = x.connect(SUPERUSER, "", DB).await;
    let stmt = c
        .prepare("INSERT INTO ev (id, note) VALUES ($1, 'l')")
        .await
        .unwrap();
    for id in 0..4i32 {
        c.execute(&stmt, &[&id]).await.unwrap();
    }
    assert!(meta_field(&redis, "seq") >= 1, "queued in Redis");
    drop(c);
    drop(x);
    wait_stream_applied(&f, &redis, &y).await;
    assert_exactly_once(&f, &(0..4).collect()).await;
}

/// Two sessions in different time zones queue the same text with the same literal in one
/// batch: each row must read the literal in its own session's zone (the flusher's named
/// statements convert literals at Parse, so one parsed under UTC must not be reused for
/// Asia/Tokyo).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_text_from_sessions_in_two_time_zones_reads_each_in_its_own() {
    let f = Fixture::new();
    f.direct()
        .await
        .batch_execute("CREATE TABLE at_tz(id int PRIMARY KEY, at timestamptz NOT NULL)")
        .await
        .unwrap();
    let extra =
        "\n[[rules]]\ntable = \"at_tz\"\nwrite = \"behind\"\nbehind_flush_interval = \"1s\"\n";
    let p = Proxy::start(
        ProxyArgs::new(f.pg.url(SUPERUSER, "postgres"))
            .config(config(f.journal.path(), "1s", "") + extra),
    );
    let in_zone = |zone: &str| {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host("127.0.0.1")
            .port(p.addr().port())
            .user(SUPERUSER)
            .dbname(DB)
            .options(format!("-c TimeZone={zone}"));
        async move {
            let (c, conn) = cfg.connect(tokio_postgres::NoTls).await.expect("connect");
            tokio::spawn(conn);
            c
        }
    };
    let utc = in_zone("UTC").await;
    let tokyo = in_zone("Asia/Tokyo").await;
    let sql = "INSERT INTO at_tz VALUES ($1, '2025-01-01 10:00')";
    let (su, st) = (
        utc.prepare(sql).await.unwrap(),
        tokyo.prepare(sql).await.unwrap(),
    );
    // Shapes proven synchronously, then one batch with both.
    utc.execute(&su, &[&1i32]).await.unwrap();
    tokyo.execute(&st, &[&2i32]).await.unwrap();
    utc.execute(&su, &[&3i32]).await.unwrap();
    tokyo.execute(&st, &[&4i32]).await.unwrap();
    f.until("SELECT count(*) FROM at_tz", 4, Duration::from_secs(10))
        .await;
    let hours = "SELECT (extract(epoch FROM (SELECT at FROM at_tz WHERE id = 3) - \
                 (SELECT at FROM at_tz WHERE id = 4)) / 3600)::bigint";
    assert_eq!(
        f.scalar(hours).await,
        9,
        "Tokyo's 10:00 is 9 hours before UTC's"
    );
    assert!(queued(&p) >= 2.0, "3 and 4 were queued");
}

/// Another role that created pgmemo's progress table first (with a trigger that would run
/// as pgmemo on every batch) must not get it used: the queue waits, loudly, and nothing in
/// it is applied through that table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_progress_table_another_role_owns_is_never_used() {
    let f = Fixture::new();
    f.direct()
        .await
        .batch_execute(
            "CREATE SCHEMA pgmemo AUTHORIZATION w;
             SET ROLE w;
             CREATE TABLE pgmemo.behind_progress (queue text PRIMARY KEY, applied bigint NOT NULL,
               updated_at timestamptz NOT NULL DEFAULT now());
             RESET ROLE",
        )
        .await
        .unwrap();
    let p = f.proxy("50ms", "");
    let c = p.connect(SUPERUSER, "", DB).await;
    let stmt = c
        .prepare("INSERT INTO ev (id, note) VALUES ($1, 'o')")
        .await
        .unwrap();
    c.execute(&stmt, &[&1i32]).await.unwrap();
    c.execute(&stmt, &[&2i32]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !p.stderr().contains("write-behind will not use it") {
        assert!(Instant::now() < deadline, "refused loudly: {}", p.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        f.scalar("SELECT count(*) FROM ev WHERE note = 'o'").await,
        1,
        "only the synchronous first one"
    );
    assert_eq!(
        f.scalar("SELECT count(*) FROM pgmemo.behind_progress")
            .await,
        0
    );
}

/// One budget for the whole shutdown: a session idle in a transaction holds the sessions'
/// drain for all of `server.shutdown_timeout`, and the queue cannot be applied (a lock held
/// directly blocks the flusher): pgmemo still exits within the budget plus its graces, not
/// within one budget per step. The queued writes are applied at the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_takes_one_budget_not_one_per_step() {
    const BUDGET: Duration = Duration::from_secs(6);
    let f = Fixture::new();
    let toml = format!(
        "{}\n[server]\nshutdown_timeout = \"{}s\"\n",
        config(f.journal.path(), "10s", ""),
        BUDGET.as_secs()
    );
    let mut p = f.proxy_with(toml.clone());
    let c = p.connect(SUPERUSER, "", DB).await;
    let stmt = c
        .prepare("INSERT INTO ev (id, note) VALUES ($1, 't')")
        .await
        .unwrap();
    c.execute(&stmt, &[&0i32]).await.unwrap();
    f.until("SELECT count(*) FROM ev", 1, Duration::from_secs(5))
        .await;
    for id in 1..=20i32 {
        c.execute(&stmt, &[&id]).await.unwrap();
    }
    let blocker = f.direct().await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE ev IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let held = p.connect(SUPERUSER, "", DB).await;
    held.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let started = Instant::now();
    p.signal(Signal::Term);
    let status = p.wait_exit(Duration::from_secs(60));
    let took = started.elapsed();
    eprintln!("shutdown took {took:?}");
    assert!(status.success(), "{status:?}\n{}", p.stderr());
    assert!(
        took >= BUDGET,
        "the open transaction had the budget: {took:?}"
    );
    // Sessions: the budget (the closed one writes its 57P01 at once); the queue: nothing
    // left of it; the tasks stop at once. One budget per step would be 2 x 6 s before the
    // tasks' wait even began (the graces, 5 s each, are for sessions or tasks that do not
    // stop, and none is slow here).
    assert!(
        took < BUDGET + Duration::from_secs(3),
        "{took:?}\n{}",
        p.stderr()
    );
    assert!(
        p.stderr()
            .contains("write-behind queue not drained by the shutdown deadline"),
        "{}",
        p.stderr()
    );
    drop(blocker);
    assert_eq!(f.scalar("SELECT count(*) FROM ev").await, 1);
    // The next start applies what was queued.
    let _p = f.proxy_with(toml);
    f.until("SELECT count(*) FROM ev", 21, Duration::from_secs(20))
        .await;
}
