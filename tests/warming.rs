//! Warming (issue 19): `[[warm]]` queries run at start-up and stored under the key a client
//! logging in the same way looks up, so its first request is a hit — from psql (a simple
//! Query), pgbench `-M prepared` (text parameters, no declared types) and tokio-postgres
//! (a role with startup `options`) — and never a hit for another role; `/readyz` waits
//! for warming within `warming.timeout`; the hot keys of one run are warmed at the next
//! start, and a hot-key file changed in one byte is refused with a warning. Warming runs
//! again after a whole-cache flush and after DDL through pgmemo (once per burst), with the
//! keys that became hot in this run.

mod common;
#[path = "support/cache_probe.rs"]
mod probe;
#[path = "support/run.rs"]
mod run;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{PgOptions, PgServer, Proxy, ProxyArgs, SUPERUSER, Signal};
use probe::{CacheStack, DB, column, config, simple};

const SETUP: &str = "
CREATE TABLE items(id int PRIMARY KEY, v int NOT NULL);
INSERT INTO items VALUES (1, 10), (2, 20), (3, 30), (4, 40);
CREATE SCHEMA app;
CREATE TABLE app.notes(id int PRIMARY KEY, owner text NOT NULL, v int NOT NULL);
INSERT INTO app.notes VALUES (1, 'alice', 100), (2, 'bob', 200);
ALTER TABLE app.notes ENABLE ROW LEVEL SECURITY;
CREATE POLICY mine ON app.notes USING (owner = current_user);
CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN;
GRANT USAGE ON SCHEMA app TO alice, bob;
GRANT SELECT ON app.notes TO alice, bob;
CREATE FUNCTION slow_one(s float8) RETURNS int IMMUTABLE LANGUAGE plpgsql
    AS $$ BEGIN PERFORM pg_sleep(s); RETURN 1; END $$;
";

/// The three `[[warm]]` entries of the first test: a simple one, one with a parameter, and
/// one as role alice with startup parameters (RLS: alice's rows only).
const WARM: &str = r#"
[[rules]]
table = "notes"
allow_rls = true

[[refresh.logins]]
user = "alice"

[[warm]]
sql = "SELECT v FROM items WHERE id = 1"
database = "app"

[[warm]]
sql = "SELECT v FROM items WHERE id = $1"
params = ["2"]
database = "app"

[[warm]]
sql = "SELECT sum(v)::int AS v FROM notes"
database = "app"
role = "alice"
settings = { client_encoding = "UTF8", options = "-c search_path=app" }
"#;

/// How long warming may take in these tests before they fail.
const WARM_BOUND: Duration = Duration::from_secs(30);

/// `/readyz`: (status code, body).
fn readyz(proxy: &Proxy) -> (u16, String) {
    let response = proxy.admin_get("/readyz");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// Waits until `/readyz` answers 200; returns its body.
async fn until_ready(proxy: &Proxy) -> String {
    let started = Instant::now();
    loop {
        let (status, body) = readyz(proxy);
        if status == 200 {
            return body;
        }
        assert!(
            started.elapsed() < WARM_BOUND,
            "not ready after {WARM_BOUND:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn warmed(proxy: &Proxy, source: &str, result: &str) -> f64 {
    proxy.metric(
        "pgmemo_warm_total",
        &[
            &format!("source=\"{source}\""),
            &format!("result=\"{result}\""),
        ],
    )
}

/// (hits, misses) so far.
fn lookups(proxy: &Proxy) -> (f64, f64) {
    (
        proxy.metric("pgmemo_cache_hits_total", &[]),
        proxy.metric("pgmemo_cache_misses_total", &[]),
    )
}

/// A libpq client (psql, pgbench) through pgmemo as the superuser in [`DB`], with a clean
/// environment: no `PGCLIENTENCODING`, so like a script's psql it sends no
/// `client_encoding` (its `application_name` is left out of fingerprints).
fn libpq(pg: &PgServer, program: &str, proxy: &Proxy, home: &Path, args: &[&str]) -> run::Finished {
    let mut cmd = run::libpq_command(&pg.bin(program), home);
    cmd.args(["-h", "127.0.0.1", "-p", &proxy.port().to_string()])
        .args(["-U", SUPERUSER])
        .args(args);
    let out = run::run(cmd, None, Duration::from_secs(60));
    assert!(out.success(), "{program} failed:\n{}", out.describe());
    out
}

/// psql (a simple Query, as a script runs it) reads `q` through pgmemo: a hit, that
/// returns `want` and does not reach Postgres.
async fn psql_hit(s: &CacheStack, home: &Path, q: &probe::Q, want: &str) {
    let (hits, misses) = lookups(&s.proxy);
    let calls = s.probe.calls(q).await;
    let psql = ["-X", "-A", "-t", "-d", DB, "-c", &q.sql];
    let out = libpq(&s.pg, "psql", &s.proxy, home, &psql);
    assert_eq!(out.stdout.trim(), want);
    assert_eq!(lookups(&s.proxy), (hits + 1.0, misses), "psql: {}", q.sql);
    assert_eq!(
        s.probe.calls(q).await,
        calls,
        "psql's request reached Postgres"
    );
}

#[tokio::test]
async fn each_warmed_query_is_a_hit_for_a_client_that_logs_in_alike_and_not_for_another_role() {
    let s = CacheStack::start(SETUP, &config("", WARM)).await;
    let body = until_ready(&s.proxy).await;
    assert!(body.contains("\"state\":\"done\""), "{body}");
    assert_eq!(warmed(&s.proxy, "config", "stored"), 3.0, "{body}");
    let home = tempfile::tempdir().unwrap();

    // psql, a simple Query: the first request is a hit and has the row.
    let q1 = s.probe.q("SELECT v FROM items WHERE id = 1", None).await;
    psql_hit(&s, home.path(), &q1, "10").await;

    // pgbench -M prepared: Parse with no declared types, the parameter bound as text.
    let script = home.path().join("warm.sql");
    std::fs::write(
        &script,
        "\\set id 2\nSELECT v FROM items WHERE id = :id \\gset\n\\set shown debug(:v)\n",
    )
    .unwrap();
    let q2 = s.probe.q("SELECT v FROM items WHERE id = 2", None).await;
    let (hits, misses) = lookups(&s.proxy);
    let calls = s.probe.calls(&q2).await;
    let script = script.display().to_string();
    let out = libpq(
        &s.pg,
        "pgbench",
        &s.proxy,
        home.path(),
        &[
            "-n", "-t", "1", "-c", "1", "-M", "prepared", "-f", &script, DB,
        ],
    );
    assert!(out.stderr.contains("int 20"), "{}", out.describe());
    assert_eq!(
        lookups(&s.proxy),
        (hits + 1.0, misses),
        "pgbench's first request"
    );
    assert_eq!(
        s.probe.calls(&q2).await,
        calls,
        "pgbench's request reached Postgres"
    );

    // alice with the entry's startup parameters (tokio-postgres sends client_encoding=UTF8):
    // a hit, with her row only.
    let q3 = s
        .probe
        .q("SELECT sum(v)::int AS v FROM notes", Some("app"))
        .await;
    let alice = s.session_with_options("alice", "-c search_path=app").await;
    let (hits, misses) = lookups(&s.proxy);
    s.probe
        .assert_hit(&alice, &q3, &column("v", &["100"]))
        .await;
    assert_eq!(
        lookups(&s.proxy),
        (hits + 1.0, misses),
        "alice's first request"
    );

    // bob logs in the same way: another role, another fingerprint. Not alice's result: a
    // miss, with his own row.
    let bob = s.session_with_options("bob", "-c search_path=app").await;
    let (hits, misses) = lookups(&s.proxy);
    s.probe
        .assert_upstream(&bob, &q3, &column("v", &["200"]))
        .await;
    assert_eq!(
        lookups(&s.proxy),
        (hits, misses + 1.0),
        "bob's first request"
    );

    // A change pgmemo does not see, then a whole-cache flush (SIGUSR1): warming runs again
    // (without making pgmemo unready), so the next request is a hit again, with the new row.
    s.direct_sql("UPDATE items SET v = 11 WHERE id = 1");
    let status = std::process::Command::new("kill")
        .args(["-s", "USR1", &s.proxy.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = Instant::now();
    while warmed(&s.proxy, "config", "stored") < 6.0 {
        assert_eq!(
            readyz(&s.proxy).0,
            200,
            "a flush's warming made pgmemo unready"
        );
        assert!(started.elapsed() < WARM_BOUND, "no warming after the flush");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    psql_hit(&s, home.path(), &q1, "11").await;
    let body = readyz(&s.proxy).1;
    assert!(body.contains("\"trigger\":\"flush\""), "{body}");
}

#[tokio::test]
async fn readiness_waits_for_warming_and_its_timeout() {
    let pg = PgServer::start(PgOptions::default().hba_line("host all all 127.0.0.1/32 trust"));
    pg.psql(DB, SETUP);
    let slow = |sleep: &str, timeout: &str| {
        config(
            "",
            &format!(
                "[refresh]\nquery_timeout = \"60s\"\n\n[warming]\ntimeout = \"{timeout}\"\n\n\
                 [[warm]]\nsql = \"SELECT slow_one({sleep}) AS v\"\ndatabase = \"app\"\n\
                 settings = {{ client_encoding = \"UTF8\" }}\n"
            ),
        )
    };

    // Warming that ends within its timeout: not ready while it runs, ready after, and the
    // warmed result is a hit (for tokio-postgres, which sends client_encoding=UTF8 at
    // login, as the entry's settings do).
    let proxy =
        Proxy::start(ProxyArgs::new(pg.url(SUPERUSER, "postgres")).config(slow("4", "60s")));
    let started = Instant::now();
    let (status, body) = readyz(&proxy);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"state\":\"running\""), "{body}");
    assert!(body.contains("\"gates_readiness\":true"), "{body}");
    let body = until_ready(&proxy).await;
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "ready after {:?}, before the warm query could end",
        started.elapsed()
    );
    assert!(body.contains("\"state\":\"done\""), "{body}");
    assert_eq!(warmed(&proxy, "config", "stored"), 1.0);
    let client = proxy.connect(SUPERUSER, "", DB).await;
    let (hits, _) = lookups(&proxy);
    let fast = Instant::now();
    let got = simple(&client, "SELECT slow_one(4) AS v").await;
    assert_eq!(got, column("v", &["1"]));
    assert!(
        fast.elapsed() < Duration::from_secs(2),
        "{:?}",
        fast.elapsed()
    );
    assert_eq!(lookups(&proxy).0, hits + 1.0);
    drop(client);
    drop(proxy);

    // Warming that outlasts its timeout: ready when the timeout passes, the query counted.
    let proxy =
        Proxy::start(ProxyArgs::new(pg.url(SUPERUSER, "postgres")).config(slow("20", "1s")));
    let started = Instant::now();
    let (status, body) = readyz(&proxy);
    assert_eq!(status, 503, "{body}");
    let body = until_ready(&proxy).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "ready only after {:?}: the timeout was 1s",
        started.elapsed()
    );
    assert!(body.contains("\"state\":\"timed_out\""), "{body}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while warmed(&proxy, "config", "timeout") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the timed-out query was not counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(warmed(&proxy, "config", "stored"), 0.0);
}

/// Stops the stack's pgmemo with SIGTERM (it exits cleanly, its log saying `said`); keeps
/// the probe and the server.
fn stop_saying(s: CacheStack, said: &str) -> (probe::Probe, PgServer) {
    let CacheStack {
        mut proxy,
        probe,
        pg,
    } = s;
    proxy.signal(Signal::Term);
    assert!(proxy.wait_exit(Duration::from_secs(30)).success());
    assert!(proxy.stderr().contains(said), "{}", proxy.stderr());
    (probe, pg)
}

#[tokio::test]
async fn hot_keys_are_warmed_at_the_next_start_and_a_changed_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hot-keys");
    let hot = format!(
        "[warming]\nhot_keys = 10\nhot_keys_file = \"{}\"\n",
        file.display()
    );
    let toml = config("secret = \"00112233445566778899aabbccddeeff\"", &hot);
    let s = CacheStack::start(SETUP, &toml).await;
    let pg_url = s.pg.url(SUPERUSER, "postgres");
    let simple_q = s.probe.q("SELECT v FROM items WHERE id = 3", None).await;
    let extended_sql = "SELECT v FROM items WHERE id = $1";

    // A simple and an extended (binary parameter) query, each read often enough for its
    // hits to be sampled (one lookup in 16 per session).
    let client = s.session(SUPERUSER).await;
    for _ in 0..64 {
        assert_eq!(simple(&client, &simple_q.sql).await, column("v", &["30"]));
    }
    for _ in 0..64 {
        let rows = client.query(extended_sql, &[&4i32]).await.unwrap();
        assert_eq!(rows[0].get::<_, i32>(0), 40);
    }
    drop(client);
    let (probe, pg) = stop_saying(s, "hot keys written");
    assert!(file.exists());

    // The next start warms both: each first request is a hit with the right rows.
    let proxy = Proxy::start(ProxyArgs::new(pg_url.clone()).config(toml.clone()));
    until_ready(&proxy).await;
    assert_eq!(
        warmed(&proxy, "hot_keys", "stored"),
        2.0,
        "{}",
        proxy.stderr()
    );
    let client = proxy.connect(SUPERUSER, "", DB).await;
    let (hits, misses) = lookups(&proxy);
    let calls = probe.calls(&simple_q).await;
    assert_eq!(simple(&client, &simple_q.sql).await, column("v", &["30"]));
    let rows = client.query(extended_sql, &[&4i32]).await.unwrap();
    assert_eq!(rows[0].get::<_, i32>(0), 40);
    assert_eq!(lookups(&proxy), (hits + 2.0, misses));
    assert_eq!(probe.calls(&simple_q).await, calls);
    drop(client);
    let mut proxy = proxy;
    proxy.signal(Signal::Term);
    assert!(proxy.wait_exit(Duration::from_secs(30)).success());
    drop(proxy);

    // One byte of the file changed: refused with a warning, nothing warmed from it, and
    // pgmemo serves (the first request is a miss).
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();
    let proxy = Proxy::start(ProxyArgs::new(pg_url).config(toml));
    until_ready(&proxy).await;
    let log = proxy.stderr();
    assert!(
        log.contains("hot-key file refused and ignored")
            && log.contains("does not verify (written under another cache secret, or modified)"),
        "{log}"
    );
    assert_eq!(warmed(&proxy, "hot_keys", "stored"), 0.0);
    let client = proxy.connect(SUPERUSER, "", DB).await;
    let (hits, misses) = lookups(&proxy);
    let calls = probe.calls(&simple_q).await;
    assert_eq!(simple(&client, &simple_q.sql).await, column("v", &["30"]));
    assert_eq!(lookups(&proxy), (hits, misses + 1.0));
    assert_eq!(probe.calls(&simple_q).await, calls + 1);
    drop(pg);
}

/// With a shared tier and no `hot_keys_file`, the hot keys are kept in Redis: an instance
/// that stops adds them there, the next one to start warms them (each first request a hit);
/// one under another cache secret refuses them with a warning.
#[tokio::test]
async fn hot_keys_kept_in_redis_are_warmed_by_the_next_instance() {
    let redis = common::RedisServer::start();
    let with_secret = |secret: &str| {
        config(
            &format!("secret = \"{secret}\""),
            &format!(
                "[cache.redis]\nurl = \"{}\"\nnamespace = \"hk\"\nconsistency = \"strict\"\n\
                 timeout = \"200ms\"\n\n[warming]\nhot_keys = 10\n",
                redis.url()
            ),
        )
    };
    let toml = with_secret("00112233445566778899aabbccddeeff");
    let s = CacheStack::start(SETUP, &toml).await;
    let pg_url = s.pg.url(SUPERUSER, "postgres");
    let q = s.probe.q("SELECT v FROM items WHERE id = 3", None).await;
    let client = s.session(SUPERUSER).await;
    for _ in 0..64 {
        assert_eq!(simple(&client, &q.sql).await, column("v", &["30"]));
    }
    drop(client);
    let (probe, pg) = stop_saying(s, "hot keys written to Redis");

    // The next instance warms it: its first request is a hit.
    let proxy = Proxy::start(ProxyArgs::new(pg_url.clone()).config(toml));
    until_ready(&proxy).await;
    assert_eq!(
        warmed(&proxy, "hot_keys", "stored"),
        1.0,
        "{}",
        proxy.stderr()
    );
    let client = proxy.connect(SUPERUSER, "", DB).await;
    let (hits, misses) = lookups(&proxy);
    let calls = probe.calls(&q).await;
    assert_eq!(simple(&client, &q.sql).await, column("v", &["30"]));
    assert_eq!(lookups(&proxy), (hits + 1.0, misses));
    assert_eq!(probe.calls(&q).await, calls);
    drop(client);
    drop(proxy);

    // Under another cache secret the kept keys do not verify: refused, nothing warmed.
    let other = Proxy::start(
        ProxyArgs::new(pg_url).config(with_secret("ffeeddccbbaa99887766554433221100")),
    );
    until_ready(&other).await;
    let log = other.stderr();
    assert!(
        log.contains("hot keys kept in Redis refused and ignored"),
        "{log}"
    );
    assert_eq!(warmed(&other, "hot_keys", "stored"), 0.0);
    drop(pg);
}

fn runs(proxy: &Proxy, trigger: &str) -> f64 {
    proxy.metric(
        "pgmemo_warm_runs_total",
        &[&format!("trigger=\"{trigger}\"")],
    )
}

/// Waits (bounded) until `source` counted `n` results stored, checking meanwhile that
/// pgmemo stays ready (only the start-up run gates readiness).
async fn until_warmed(proxy: &Proxy, source: &str, n: f64) {
    let started = Instant::now();
    while warmed(proxy, source, "stored") < n {
        assert_eq!(readyz(proxy).0, 200, "a later run made pgmemo unready");
        assert!(
            started.elapsed() < WARM_BOUND,
            "{source}: not warmed again: {}",
            proxy.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_burst_of_ddl_through_pgmemo_warms_again_once() {
    let warm = "[[warm]]\nsql = \"SELECT v FROM items WHERE id = 1\"\ndatabase = \"app\"\n";
    let setup = format!("{SETUP}CREATE TABLE spare(id int);");
    let s = CacheStack::start(&setup, &config("", warm)).await;
    until_ready(&s.proxy).await;
    assert_eq!(warmed(&s.proxy, "config", "stored"), 1.0);
    let home = tempfile::tempdir().unwrap();
    let q1 = s.probe.q("SELECT v FROM items WHERE id = 1", None).await;
    psql_hit(&s, home.path(), &q1, "10").await;

    // DDL through pgmemo on a table no warm query reads: each statement commits and makes
    // every cached result unreachable (an epoch bump).
    let client = s.session(SUPERUSER).await;
    for i in 0..3 {
        simple(&client, &format!("ALTER TABLE spare ADD COLUMN c{i} int")).await;
    }
    until_warmed(&s.proxy, "config", 2.0).await;
    assert_eq!(runs(&s.proxy, "invalidation"), 1.0, "one run for the burst");
    let body = readyz(&s.proxy).1;
    assert!(body.contains("\"trigger\":\"invalidation\""), "{body}");
    // The first read after it is a hit again.
    psql_hit(&s, home.path(), &q1, "10").await;
    // Nothing else started a run (the change stream's start, the poller seeing the DDL).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(runs(&s.proxy, "invalidation"), 1.0);
    assert_eq!(runs(&s.proxy, "start"), 1.0);
}

#[tokio::test]
async fn a_key_hot_in_this_run_is_warmed_again_after_a_flush() {
    // No hot-key file yet: no hot key at start.
    let dir = tempfile::tempdir().unwrap();
    let hot = format!(
        "[warming]\nhot_keys = 10\nhot_keys_file = \"{}\"\n",
        dir.path().join("hot-keys").display()
    );
    let secret = "secret = \"00112233445566778899aabbccddeeff\"";
    let s = CacheStack::start(SETUP, &config(secret, &hot)).await;
    until_ready(&s.proxy).await;
    let q = s.probe.q("SELECT v FROM items WHERE id = 3", None).await;
    // Read often enough for its hits to be sampled (one lookup in 16 per session).
    let client = s.session(SUPERUSER).await;
    for _ in 0..64 {
        assert_eq!(simple(&client, &q.sql).await, column("v", &["30"]));
    }
    assert_eq!(warmed(&s.proxy, "hot_keys", "stored"), 0.0);

    // A whole-cache flush (SIGUSR1).
    let status = std::process::Command::new("kill")
        .args(["-s", "USR1", &s.proxy.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    until_warmed(&s.proxy, "hot_keys", 1.0).await;
    assert_eq!(runs(&s.proxy, "flush"), 1.0);
    // The next read of it is a hit: warmed under the session's fingerprint.
    let (hits, misses) = lookups(&s.proxy);
    let calls = s.probe.calls(&q).await;
    assert_eq!(simple(&client, &q.sql).await, column("v", &["30"]));
    assert_eq!(lookups(&s.proxy), (hits + 1.0, misses));
    assert_eq!(s.probe.calls(&q).await, calls);
}
