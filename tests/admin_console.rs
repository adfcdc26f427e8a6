//! The admin console (issue 21): the virtual database `pgmemo` on the client port, for roles in
//! `admin.roles`, logged in by PostgreSQL. Each command from a real client, with the content
//! a script would rely on; refusals for other roles, for a disabled console and for the
//! extended protocol; `EXPLAIN CACHE` in an ordinary session.

#[path = "support/auth_wire.rs"]
mod auth_wire;
mod common;

use common::{MD5_USER, PgOptions, PgServer, Proxy, ProxyArgs, SUPERUSER, db_error};
use tokio_postgres::{Client, SimpleQueryMessage};

const APP: &str = "app";

fn admin_config(extra: &str) -> String {
    format!("[admin]\nroles = [\"{SUPERUSER}\"]\n\n{extra}")
}

struct Fixture {
    proxy: Proxy,
    pg: PgServer,
}

fn start(config: &str) -> Fixture {
    let pg = PgServer::start(PgOptions::default());
    let proxy = Proxy::start(ProxyArgs::new(pg.url(SUPERUSER, "postgres")).config(config));
    Fixture { proxy, pg }
}

impl Fixture {
    async fn console(&self) -> Client {
        self.proxy.connect(SUPERUSER, "", "pgmemo").await
    }

    async fn app(&self) -> Client {
        self.proxy.connect(SUPERUSER, "", APP).await
    }
}

/// The rows of one simple query as (column names, text values).
async fn rows(client: &Client, sql: &str) -> (Vec<String>, Vec<Vec<Option<String>>>) {
    let msgs = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut names = Vec::new();
    let mut out = Vec::new();
    for m in msgs {
        if let SimpleQueryMessage::Row(r) = m {
            if names.is_empty() {
                names = r.columns().iter().map(|c| c.name().to_owned()).collect();
            }
            out.push((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect());
        }
    }
    (names, out)
}

/// The value of column `name` in `row`.
fn col<'a>(names: &[String], row: &'a [Option<String>], name: &str) -> Option<&'a str> {
    let i = names.iter().position(|n| n == name)?;
    row.get(i)?.as_deref()
}

/// Cache hits so far (from /metrics).
fn hits(p: &Proxy) -> f64 {
    p.metric("pgmemo_cache_hits_total", &[])
}

async fn setup_table(f: &Fixture) {
    let direct = f.pg.connect(SUPERUSER, "", APP).await;
    direct
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 10), (2, 20);",
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_lists_its_commands_and_shows_config_cdc_and_shared_state() {
    let f = start(&admin_config(""));
    let c = f.console().await;
    let (names, help) = rows(&c, "SHOW HELP").await;
    assert_eq!(names, ["command", "what"]);
    let listed: Vec<&str> = help.iter().filter_map(|r| r[0].as_deref()).collect();
    for cmd in [
        "SHOW STATS",
        "SHOW QUERIES",
        "SHOW TABLES",
        "SHOW CDC",
        "SHOW SHARED",
        "FLUSH",
        "RELOAD",
    ] {
        assert!(listed.contains(&cmd), "{cmd} not in {listed:?}");
    }
    // Keywords in any case, with a semicolon.
    let (names, config) = rows(&c, "show config;").await;
    assert_eq!(names, ["key", "value"]);
    let roles = config
        .iter()
        .find(|r| r[0].as_deref() == Some("admin.roles"))
        .expect("admin.roles is shown");
    assert_eq!(roles[1].as_deref(), Some("[\"postgres\"]"));
    assert!(
        config
            .iter()
            .any(|r| r[0].as_deref() == Some("upstream.url")),
        "upstream.url shown"
    );
    let (names, cdc) = rows(&c, "SHOW CDC").await;
    assert!(names.contains(&"lag_bytes".to_owned()), "{names:?}");
    let postgres = cdc
        .iter()
        .find(|r| r[0].as_deref() == Some("postgres"))
        .unwrap_or_else(|| panic!("the covered database is listed: {cdc:?}"));
    assert!(col(&names, postgres, "state").is_some());
    let (names, shared) = rows(&c, "SHOW SHARED").await;
    assert_eq!(col(&names, &shared[0], "configured"), Some("f"));
    // Not a command: a syntax error naming the way to the list; the session goes on.
    let e = c.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(db_error(&e).code().code(), "42601");
    assert!(db_error(&e).message().contains("SHOW HELP"));
    assert_eq!(rows(&c, "SHOW SHARED").await.1.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_secrets_are_redacted() {
    let f = start(&admin_config(
        "[cache]\nsecret = \"00112233445566778899aabbccddeeff\"\n",
    ));
    let c = f.console().await;
    let (_, config) = rows(&c, "SHOW CONFIG").await;
    let text = format!("{config:?}");
    assert!(!text.contains("00112233445566778899aabbccddeeff"), "{text}");
    assert!(text.contains("cache.secret"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_and_invalidate_table_make_the_next_read_a_miss() {
    let f = start(&admin_config(""));
    setup_table(&f).await;
    let app = f.app().await;
    let read = "SELECT v FROM t WHERE id = 1";
    app.simple_query(read).await.unwrap();
    app.simple_query(read).await.unwrap();
    let before = hits(&f.proxy);
    assert!(before >= 1.0, "the read is cached");
    let c = f.console().await;
    let (names, stats) = rows(&c, "SHOW STATS").await;
    let stat = |name: &str| -> f64 { col(&names, &stats[0], name).unwrap().parse().unwrap() };
    assert!(stat("hits") >= 1.0 && stat("misses") >= 1.0, "{stats:?}");
    assert!(stat("entries") >= 1.0 && stat("bytes") > 0.0, "{stats:?}");
    assert!(
        stat("hit_ratio") > 0.0 && stat("hit_ratio") <= 1.0,
        "{stats:?}"
    );

    // The statement's shape, with its hits, and its table with its entries.
    let (names, queries) = rows(&c, "SHOW QUERIES").await;
    let q = queries
        .iter()
        .find(|r| col(&names, r, "query").is_some_and(|q| q.contains("FROM t WHERE id")))
        .unwrap_or_else(|| panic!("the shape is listed: {queries:?}"));
    assert!(
        col(&names, q, "hits").unwrap().parse::<u64>().unwrap() >= 1,
        "{q:?}"
    );
    assert_eq!(col(&names, q, "database"), Some(APP));
    let (names, tables) = rows(&c, "SHOW TABLES").await;
    let t = tables
        .iter()
        .find(|r| col(&names, r, "name") == Some("t"))
        .unwrap_or_else(|| panic!("table t is listed: {tables:?}"));
    assert_eq!(col(&names, t, "write"), Some("invalidate"));
    assert!(
        col(&names, t, "entries").unwrap().parse::<i64>().unwrap() >= 1,
        "{t:?}"
    );

    c.simple_query("FLUSH").await.unwrap();
    app.simple_query(read).await.unwrap();
    assert_eq!(hits(&f.proxy), before, "after FLUSH the read missed");
    app.simple_query(read).await.unwrap();
    let cached = hits(&f.proxy);
    assert_eq!(cached, before + 1.0, "and was cached again");

    let done = c
        .simple_query("INVALIDATE TABLE app.public.t")
        .await
        .unwrap();
    assert!(
        done.iter()
            .any(|m| matches!(m, SimpleQueryMessage::CommandComplete(_))),
        "{done:?}"
    );
    app.simple_query(read).await.unwrap();
    assert_eq!(
        hits(&f.proxy),
        cached,
        "after INVALIDATE TABLE the read missed"
    );

    // Unknown tables and databases are errors, and nothing is flushed.
    let e = c
        .simple_query("INVALIDATE TABLE app.public.nope")
        .await
        .unwrap_err();
    assert_eq!(db_error(&e).code().code(), "42704", "{e}");
    let e = c.simple_query("INVALIDATE TABLE t").await.unwrap_err();
    assert_eq!(db_error(&e).code().code(), "42601", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_a_valid_file_and_refuses_an_invalid_one() {
    let f = start(&admin_config("[cache]\nttl = \"60s\"\n"));
    let path = f.proxy.config_path().expect("a config file");
    let c = f.console().await;
    let ttl = |config: &[Vec<Option<String>>]| {
        config
            .iter()
            .find(|r| r[0].as_deref() == Some("cache.ttl"))
            .and_then(|r| r[1].clone())
    };
    std::fs::write(&path, admin_config("[cache]\nttl = \"5s\"\n")).unwrap();
    c.simple_query("RELOAD").await.unwrap();
    assert_eq!(ttl(&rows(&c, "SHOW CONFIG").await.1).as_deref(), Some("5s"));

    std::fs::write(&path, admin_config("[cache]\nttl = \"not a duration\"\n")).unwrap();
    let e = c.simple_query("RELOAD").await.unwrap_err();
    assert_eq!(db_error(&e).code().code(), "F0000", "{e}");
    assert!(db_error(&e).detail().unwrap_or("").contains("ttl"), "{e:?}");
    assert_eq!(
        ttl(&rows(&c, "SHOW CONFIG").await.1).as_deref(),
        Some("5s"),
        "the running configuration is kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_listed_roles_get_in_and_only_once_postgresql_accepted_their_login() {
    let f = start(&admin_config(""));
    // A role PostgreSQL accepts but admin.roles does not list: refused after its login.
    let (user, password) = MD5_USER;
    let e = f
        .proxy
        .try_connect(user, password, "pgmemo")
        .await
        .expect_err("a non-admin role is refused");
    assert_eq!(db_error(&e).code().code(), "42501", "{e}");
    // The wrong password is PostgreSQL's refusal, as for any session: pgmemo says nothing
    // about which roles are admins.
    let e = f
        .proxy
        .try_connect(user, "wrong", "pgmemo")
        .await
        .expect_err("a wrong password is refused");
    assert_eq!(db_error(&e).code().code(), "28P01", "{e}");
    // An admin gets in; ordinary sessions are untouched.
    f.console().await.simple_query("SHOW HELP").await.unwrap();
    f.proxy
        .connect(user, password, "postgres")
        .await
        .simple_query("SELECT 1")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_admin_roles_the_console_is_off() {
    let f = start("");
    let e = f
        .proxy
        .try_connect(SUPERUSER, "", "pgmemo")
        .await
        .expect_err("no console without admin.roles");
    assert_eq!(db_error(&e).code().code(), "28000", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_extended_protocol_is_refused_and_the_session_goes_on() {
    let f = start(&admin_config(""));
    let c = f.console().await;
    let e = c.query("SHOW HELP", &[]).await.unwrap_err();
    assert_eq!(db_error(&e).code().code(), "0A000", "{e}");
    assert!(!rows(&c, "SHOW HELP").await.1.is_empty());
}

/// Raw protocol: a trust login as `postgres` to `database`, one Query, and the names and type
/// OIDs of its RowDescription.
async fn column_types(addr: std::net::SocketAddr, database: &str, sql: &str) -> Vec<(String, u32)> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    auth_wire::send(&mut s, &auth_wire::startup(SUPERUSER, database)).await;
    auth_wire::read_until_ready(&mut s).await;
    auth_wire::send(&mut s, &auth_wire::query(sql)).await;
    loop {
        let frame = auth_wire::read_frame(&mut s)
            .await
            .unwrap()
            .expect("a frame");
        assert_ne!(frame.tag, b'E', "{:?}", frame.field(b'M'));
        if frame.tag == b'T' {
            return row_description(&frame.body);
        }
    }
}

/// (name, type OID) of each field of a RowDescription body.
fn row_description(body: &[u8]) -> Vec<(String, u32)> {
    let n = u16::from_be_bytes([body[0], body[1]]) as usize;
    let mut at = 2;
    let mut out = Vec::new();
    for _ in 0..n {
        let end = at + body[at..].iter().position(|b| *b == 0).unwrap();
        let name = String::from_utf8_lossy(&body[at..end]).into_owned();
        // Table OID (4) and column number (2) precede the type OID.
        let oid_at = end + 1 + 6;
        let oid = u32::from_be_bytes(body[oid_at..oid_at + 4].try_into().unwrap());
        // Type OID, size (2), modifier (4), format (2).
        at = oid_at + 4 + 8;
        out.push((name, oid));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_are_typed_columns() {
    let f = start(&admin_config(""));
    let addr = f.proxy.addr();
    let types = column_types(addr, "pgmemo", "SHOW CDC").await;
    let oid = |name: &str| types.iter().find(|(n, _)| n == name).map(|(_, o)| *o);
    assert_eq!(oid("database"), Some(25), "text: {types:?}");
    assert_eq!(oid("lag_bytes"), Some(20), "int8: {types:?}");
    assert_eq!(oid("lag_seconds"), Some(701), "float8: {types:?}");
    assert_eq!(oid("serves"), Some(16), "bool: {types:?}");
}

/// `EXPLAIN CACHE sql` in session `c`: (cached, reason, ttl_seconds).
async fn explain(c: &Client, sql: &str) -> (bool, Option<String>, Option<f64>) {
    let (names, rows) = rows(c, &format!("EXPLAIN CACHE {sql}")).await;
    let row = rows
        .first()
        .unwrap_or_else(|| panic!("no verdict for {sql}"));
    (
        col(&names, row, "cached") == Some("t"),
        col(&names, row, "reason").map(str::to_owned),
        col(&names, row, "ttl_seconds").and_then(|v| v.parse().ok()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_cache_gives_the_verdict_and_the_reason() {
    let f = start(&admin_config(
        "[[rules]]\ntable = \"nc\"\ncache = false\n\n[[rules]]\ntable = \"short\"\nttl = \"7s\"\n",
    ));
    let direct = f.pg.connect(SUPERUSER, "", APP).await;
    direct
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v int);
             CREATE TABLE nc (id int); CREATE TABLE short (id int);
             CREATE VIEW tv AS SELECT id, v FROM t;
             CREATE VIEW rv AS SELECT id, random() AS r FROM t;
             CREATE TABLE p (id int, v int) PARTITION BY RANGE (id);
             CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (0) TO (100);
             CREATE TABLE s (id int); ALTER TABLE s ENABLE ROW LEVEL SECURITY;
             CREATE UNLOGGED TABLE u (id int);",
        )
        .await
        .unwrap();
    let c = f.app().await;
    c.batch_execute("PREPARE q AS SELECT v FROM t WHERE id = $1")
        .await
        .unwrap();
    // (statement, cached, reason)
    let cases: &[(&str, bool, Option<&str>)] = &[
        ("SELECT v FROM t WHERE id = 1", true, None),
        ("select v from t where id = 2;", true, None),
        ("SELECT id, v FROM tv", true, None),
        ("SELECT * FROM p WHERE id = 3", true, None),
        ("SELECT * FROM short", true, None),
        ("/* pgmemo:ttl=30s */ SELECT v FROM t", true, None),
        ("SELECT v, now() FROM t", false, Some("value_function")),
        ("SELECT v FROM t FOR UPDATE", false, Some("locking_clause")),
        ("SELECT random() FROM t", false, Some("function_volatility")),
        (
            "SELECT 'now'::timestamptz FROM t",
            false,
            Some("special_date_literal"),
        ),
        ("SELECT 'public.t'::regclass", false, Some("regtype_cast")),
        (
            "SELECT * FROM t TABLESAMPLE SYSTEM (10)",
            false,
            Some("tablesample"),
        ),
        (
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
            false,
            Some("data_modifying_cte"),
        ),
        ("SELECT * INTO t2 FROM t", false, Some("select_into")),
        ("EXPLAIN SELECT * FROM t", false, Some("explain")),
        ("SELECT 1; SELECT 2", false, Some("multiple_statements")),
        ("UPDATE t SET v = 1", false, Some("not_select")),
        (
            "/* pgmemo:nocache */ SELECT v FROM t",
            false,
            Some("nocache_hint"),
        ),
        ("EXECUTE q(1)", false, Some("execute")),
        ("SELECT * FROM nc", false, Some("rule")),
        ("SELECT * FROM rv", false, Some("view_volatility")),
        ("SELECT * FROM s", false, Some("row_security")),
        ("SELECT * FROM u", false, Some("unlogged_relation")),
        (
            "SELECT relname FROM pg_class",
            false,
            Some("system_relation"),
        ),
    ];
    let mut wrong = Vec::new();
    for (sql, cached, reason) in cases {
        let got = explain(&c, sql).await;
        if got.0 != *cached || got.1.as_deref() != *reason {
            wrong.push(format!(
                "{sql}: expected ({cached}, {reason:?}), got {got:?}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong verdicts:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // A session with a temporary table: its own relation, and any unqualified name that a
    // temporary table could shadow.
    let c2 = f.app().await;
    c2.batch_execute("CREATE TEMP TABLE tmp (id int)")
        .await
        .unwrap();
    for (sql, reason) in [
        ("SELECT * FROM pg_temp.tmp", "unresolved_relation"),
        ("SELECT v FROM t WHERE id = 1", "temp_shadow"),
    ] {
        let got = explain(&c2, sql).await;
        assert_eq!((got.0, got.1.as_deref()), (false, Some(reason)), "{sql}");
    }
    assert!(explain(&c2, "SELECT v FROM public.t WHERE id = 1").await.0);
    // The TTL is the rule's or the hint's.
    assert_eq!(explain(&c, "SELECT * FROM short").await.2, Some(7.0));
    assert_eq!(
        explain(&c, "/* pgmemo:ttl=30s */ SELECT v FROM t").await.2,
        Some(30.0)
    );
    // The session's own state: opted out.
    c.batch_execute("SET pgmemo.cache = off").await.unwrap();
    let (cached, reason, _) = explain(&c, "SELECT v FROM t WHERE id = 1").await;
    assert!(!cached);
    assert_eq!(reason.as_deref(), Some("session_opt_out"));
    c.batch_execute("RESET pgmemo.cache").await.unwrap();
    // Nothing was run: the UPDATE above did not happen.
    let n: i64 = direct
        .query_one("SELECT count(*) FROM t WHERE v = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    // In a transaction block the text goes to PostgreSQL, which refuses it.
    c.batch_execute("BEGIN").await.unwrap();
    let e = c.simple_query("EXPLAIN CACHE SELECT 1").await.unwrap_err();
    assert_eq!(db_error(&e).code().code(), "42601", "{e}");
    c.batch_execute("ROLLBACK").await.unwrap();
}

/// Raw: a startup with `params` (trust logins only), then everything the server sends until
/// ReadyForQuery or an error: the frames.
async fn raw_login(
    addr: std::net::SocketAddr,
    params: &[(&str, &str)],
) -> (tokio::net::TcpStream, Vec<auth_wire::Frame>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let raw = pgmemo::protocol::startup::encode_startup(3, 0, params);
    auth_wire::send(&mut s, &raw).await;
    let frames = frames_until_ready_or_close(&mut s).await;
    (s, frames)
}

/// Frames up to ReadyForQuery, or up to the server's close.
async fn frames_until_ready_or_close(s: &mut tokio::net::TcpStream) -> Vec<auth_wire::Frame> {
    let mut frames = Vec::new();
    while let Some(f) = auth_wire::read_frame(s).await.unwrap() {
        let ready = f.tag == b'Z';
        frames.push(f);
        if ready {
            break;
        }
    }
    frames
}

fn error_code(frames: &[auth_wire::Frame]) -> Option<String> {
    frames
        .iter()
        .find(|f| f.tag == b'E')
        .and_then(|f| f.field(b'C'))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_user_parameter_is_read_as_postgresql_reads_it() {
    let f = start(&admin_config(""));
    // PostgreSQL logs in the last `user`: trust_user, not the admin named first.
    let (_, frames) = raw_login(
        f.proxy.addr(),
        &[
            ("user", SUPERUSER),
            ("database", "pgmemo"),
            ("user", common::TRUST_USER),
        ],
    )
    .await;
    assert_eq!(error_code(&frames).as_deref(), Some("42501"), "{frames:?}");
    assert!(
        !frames.iter().any(|f| f.tag == b'Z'),
        "no ReadyForQuery: {frames:?}"
    );
    // And a repeated database: the last one is the console's (or not).
    let (_, frames) = raw_login(
        f.proxy.addr(),
        &[
            ("user", SUPERUSER),
            ("database", "pgmemo"),
            ("database", APP),
        ],
    )
    .await;
    assert_eq!(
        error_code(&frames),
        None,
        "an ordinary session on app: {frames:?}"
    );
    // A replication login never reaches the console.
    let (_, frames) = raw_login(
        f.proxy.addr(),
        &[
            ("user", SUPERUSER),
            ("database", "pgmemo"),
            ("replication", "database"),
        ],
    )
    .await;
    assert_eq!(error_code(&frames).as_deref(), Some("28000"), "{frames:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_removed_from_admin_roles_loses_its_open_console() {
    let f = start(&admin_config(""));
    let path = f.proxy.config_path().expect("a config file");
    let c = f.console().await;
    c.simple_query("SHOW HELP").await.unwrap();
    std::fs::write(&path, "[admin]\nroles = [\"someone_else\"]\n").unwrap();
    c.simple_query("RELOAD").await.unwrap();
    let e = c.simple_query("SHOW HELP").await.unwrap_err();
    assert_eq!(db_error(&e).code().code(), "42501", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_refused_extended_message_everything_up_to_sync_is_discarded() {
    let f = start(&admin_config(""));
    let (mut s, frames) = raw_login(
        f.proxy.addr(),
        &[("user", SUPERUSER), ("database", "pgmemo")],
    )
    .await;
    assert_eq!(error_code(&frames), None, "{frames:?}");
    // Parse (refused), a Query (discarded, as PostgreSQL discards it), Sync.
    let mut parse = vec![b'P'];
    let body = b"\0SHOW HELP\0\0\0";
    parse.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    parse.extend_from_slice(body);
    let mut msgs = parse;
    msgs.extend_from_slice(&auth_wire::query("SHOW HELP"));
    msgs.extend_from_slice(&[b'S', 0, 0, 0, 4]);
    auth_wire::send(&mut s, &msgs).await;
    let frames = auth_wire::read_until_ready(&mut s).await;
    let tags: Vec<u8> = frames.iter().map(|f| f.tag).collect();
    assert_eq!(tags, b"EZ", "{frames:?}");
    assert_eq!(error_code(&frames).as_deref(), Some("0A000"));
    // The session goes on.
    auth_wire::send(&mut s, &auth_wire::query("SHOW HELP")).await;
    let frames = auth_wire::read_until_ready(&mut s).await;
    assert!(frames.iter().any(|f| f.tag == b'D'), "{frames:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_console_does_not_hold_up_shutdown() {
    let mut f = start(&admin_config("[server]\nshutdown_timeout = \"20s\"\n"));
    let (mut s, _) = raw_login(
        f.proxy.addr(),
        &[("user", SUPERUSER), ("database", "pgmemo")],
    )
    .await;
    let started = std::time::Instant::now();
    f.proxy.signal(common::Signal::Term);
    let frames = frames_until_ready_or_close(&mut s).await;
    assert_eq!(error_code(&frames).as_deref(), Some("57P01"), "{frames:?}");
    let status = f.proxy.wait_exit(std::time::Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "shutdown took {:?} with a console open",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_cache_of_drop_database_touches_nothing() {
    let f = start(&admin_config(""));
    setup_table(&f).await;
    let app = f.app().await;
    let read = "SELECT v FROM t WHERE id = 1";
    app.simple_query(read).await.unwrap();
    app.simple_query(read).await.unwrap();
    let before = hits(&f.proxy);
    let started = std::time::Instant::now();
    let (cached, reason, _) = explain(&app, "DROP DATABASE app").await;
    assert!(!cached);
    assert_eq!(reason.as_deref(), Some("not_select"));
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    app.simple_query(read).await.unwrap();
    assert_eq!(hits(&f.proxy), before + 1.0, "the cache is untouched");
}

/// psql against the console on pgmemo's port, as `user` with `password`: (success, stdout,
/// stderr).
fn psql_console(f: &Fixture, user: &str, password: &str, sql: &str) -> (bool, String, String) {
    let out = std::process::Command::new(f.pg.bin("psql"))
        .args(["-X", "-A", "-t", "-h", "127.0.0.1", "-p"])
        .arg(f.proxy.addr().port().to_string())
        .args(["-U", user, "-d", "pgmemo", "-c", sql])
        .env("PGPASSWORD", password)
        .env("PGSSLMODE", "disable")
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `admin.password`: pgmemo checks console logins itself with SCRAM-SHA-256, so a console
/// role need not exist in PostgreSQL; psql and tokio-postgres get in with the password; a
/// wrong password and a role not in `admin.roles` get the same 28P01 (the console does not
/// tell who is an admin); ordinary sessions still log in through PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_password_is_checked_by_pgmemo_with_scram() {
    const PASSWORD: &str = "console-password-1";
    let f = start(&format!(
        "[admin]\nroles = [\"ops\"]\npassword = \"{PASSWORD}\"\n"
    ));
    // `ops` is no PostgreSQL role.
    let (ok, out, err) = psql_console(&f, "ops", PASSWORD, "SHOW HELP");
    assert!(ok, "psql logs in: {err}");
    assert!(out.contains("SHOW STATS"), "{out}");
    let c = f.proxy.connect("ops", PASSWORD, "pgmemo").await;
    let (names, _) = rows(&c, "SHOW STATS").await;
    assert!(!names.is_empty());

    for (user, password) in [("ops", "not-the-password"), (SUPERUSER, PASSWORD)] {
        let e = f
            .proxy
            .try_connect(user, password, "pgmemo")
            .await
            .expect_err("refused");
        assert_eq!(db_error(&e).code().code(), "28P01", "{user}: {e}");
        assert_eq!(
            db_error(&e).message(),
            format!("password authentication failed for user \"{user}\""),
        );
        let (ok, _, err) = psql_console(&f, user, password, "SHOW HELP");
        assert!(!ok, "{user}");
        assert!(err.contains("password authentication failed"), "{err}");
    }
    // Ordinary sessions: PostgreSQL's login, untouched by the console's password.
    f.app().await.simple_query("SELECT 1").await.unwrap();
}

/// A verifier copied from `pg_authid.rolpassword` works as `admin.password`: the operator
/// never writes the password itself into pgmemo's configuration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_scram_verifier_works_as_the_console_password() {
    let pg = PgServer::start(PgOptions::default());
    let direct = pg.connect(SUPERUSER, "", "postgres").await;
    direct
        .batch_execute(
            "SET password_encryption = 'scram-sha-256';
             CREATE ROLE verifier_probe LOGIN PASSWORD 'from-a-verifier-7';",
        )
        .await
        .unwrap();
    let row = direct
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'verifier_probe'",
            &[],
        )
        .await
        .unwrap();
    let verifier: String = row.get(0);
    assert!(verifier.starts_with("SCRAM-SHA-256$"), "{verifier}");
    let proxy = Proxy::start(
        ProxyArgs::new(pg.url(SUPERUSER, "postgres")).config(format!(
            "[admin]\nroles = [\"ops\"]\npassword = \"{verifier}\"\n"
        )),
    );
    let f = Fixture { proxy, pg };
    let (ok, out, err) = psql_console(&f, "ops", "from-a-verifier-7", "SHOW HELP");
    assert!(ok, "{err}");
    assert!(out.contains("FLUSH"), "{out}");
    let (ok, _, err) = psql_console(&f, "ops", "from-a-verifier-8", "SHOW HELP");
    assert!(
        !ok && err.contains("password authentication failed"),
        "{err}"
    );
}

/// A client that answers the console's SCRAM request with something else, or never
/// answers, is let go with an error; the console keeps serving others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_console_login_exchange_is_refused() {
    use tokio::io::AsyncWriteExt;
    let f = start("[admin]\nroles = [\"ops\"]\npassword = \"console-password-1\"\n");
    let mut s = tokio::net::TcpStream::connect(f.proxy.addr())
        .await
        .unwrap();
    let raw =
        pgmemo::protocol::startup::encode_startup(3, 0, &[("user", "ops"), ("database", "pgmemo")]);
    auth_wire::send(&mut s, &raw).await;
    let offer = auth_wire::read_frame(&mut s).await.unwrap();
    assert_eq!(offer.map(|f| f.tag), Some(b'R'), "the SASL offer first");
    // A Query instead of the SASLInitialResponse.
    s.write_all(b"Q\0\0\0\x0dSHOW HELP\0").await.unwrap();
    let frames = frames_until_ready_or_close(&mut s).await;
    assert_eq!(error_code(&frames).as_deref(), Some("08P01"), "{frames:?}");
    let c = f.proxy.connect("ops", "console-password-1", "pgmemo").await;
    c.simple_query("SHOW HELP").await.unwrap();
}
