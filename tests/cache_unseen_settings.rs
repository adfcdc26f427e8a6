//! Settings changed where pgmemo cannot see them (issue 15 item 1, DESIGN §1.4): a prepared
//! statement that calls `set_config`, run through SQL `EXECUTE` (simple Query, a Parse of the
//! EXECUTE text, inside a multi-statement Query, in a block committed or rolled back) or
//! through a protocol Bind of the SQL-prepared name; user functions of any volatility; a
//! trigger calling `set_config`. Each switch must put the session back to its settings probe
//! before its next lookup or store, so that no session ever gets another tenant's or another
//! schema's rows, and nothing one session reads is stored under another state's key.

mod common;
#[path = "support/cache_probe.rs"]
mod probe;
#[path = "support/wire.rs"]
mod wire;

use std::time::Duration;

use bytes::Bytes;
use probe::{CacheStack, DB, config};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_postgres::{Client, SimpleQueryMessage};

const SETUP: &str = "
CREATE ROLE app_user LOGIN;
CREATE TABLE tacc(id int PRIMARY KEY, tenant text NOT NULL, data text NOT NULL);
INSERT INTO tacc VALUES (1, 't1', 'one-a'), (2, 't1', 'one-b'), (3, 't2', 'two-a');
ALTER TABLE tacc ENABLE ROW LEVEL SECURITY;
CREATE POLICY by_tenant ON tacc USING (tenant = current_setting('app.tenant', true));
GRANT SELECT ON tacc TO app_user;
CREATE SCHEMA s1;
CREATE SCHEMA s2;
CREATE TABLE s1.st(v text);
CREATE TABLE s2.st(v text);
INSERT INTO s1.st VALUES ('in-s1');
INSERT INTO s2.st VALUES ('in-s2');
GRANT USAGE ON SCHEMA s1, s2 TO app_user;
GRANT SELECT ON s1.st, s2.st TO app_user;
-- Declared IMMUTABLE, yet it switches the tenant: PostgreSQL lets it.
CREATE FUNCTION lying_tenant(t text) RETURNS text LANGUAGE plpgsql IMMUTABLE
    AS $$ BEGIN PERFORM set_config('app.tenant', t, false); RETURN t; END $$;
GRANT EXECUTE ON FUNCTION lying_tenant(text) TO app_user;
CREATE TABLE switches(id serial PRIMARY KEY, tenant text NOT NULL);
CREATE FUNCTION switch_tenant() RETURNS trigger LANGUAGE plpgsql
    AS $$ BEGIN PERFORM set_config('app.tenant', NEW.tenant, false); RETURN NEW; END $$;
CREATE TRIGGER switch_tenant BEFORE INSERT ON switches FOR EACH ROW EXECUTE FUNCTION switch_tenant();
GRANT INSERT ON switches TO app_user;
GRANT USAGE ON SEQUENCE switches_id_seq TO app_user;
-- Reading one of these views switches the tenant.
CREATE VIEW switch_t1 AS SELECT lying_tenant('t1') AS t;
CREATE VIEW switch_t2 AS SELECT lying_tenant('t2') AS t;
GRANT SELECT ON switch_t1, switch_t2 TO app_user;
";

/// The tenant table is opted into caching (its policy reads `app.tenant`).
const RULES: &str = "
[[rules]]
table = \"public.tacc\"
allow_rls = true
ttl = \"60s\"
";

/// Qualified: a session with temporary tables still looks it up (no name to shadow).
const READ: &str = "SELECT id::text, tenant, data FROM public.tacc ORDER BY id";
const PATH_READ: &str = "SELECT v FROM st";

fn tenant_rows(tenant: &str) -> Vec<String> {
    match tenant {
        "t1" => vec!["1|t1|one-a".into(), "2|t1|one-b".into()],
        "t2" => vec!["3|t2|two-a".into()],
        _ => vec![],
    }
}

/// Rows of a simple Query as `a|b|c` strings.
async fn rows_simple(c: &Client, sql: &str) -> Vec<String> {
    let msgs = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_string())
                    .collect::<Vec<_>>()
                    .join("|"),
            ),
            _ => None,
        })
        .collect()
}

/// The same read through the extended protocol (every column is text).
async fn rows_extended(c: &Client, sql: &str) -> Vec<String> {
    let rows = c
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.iter()
        .map(|r| {
            (0..r.len())
                .map(|i| {
                    r.get::<_, Option<String>>(i)
                        .unwrap_or_else(|| "NULL".into())
                })
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect()
}

/// Reads `sql` three times, alternating protocols, each time expecting `want`.
async fn assert_reads(c: &Client, sql: &str, want: &[String], what: &str) {
    for i in 0..3 {
        let got = if i % 2 == 0 {
            rows_simple(c, sql).await
        } else {
            rows_extended(c, sql).await
        };
        assert_eq!(got, want, "{what}, read {i}");
    }
}

/// The ways a session switches its tenant without a SET pgmemo could model.
#[derive(Debug, Clone, Copy)]
enum Switch {
    /// `EXECUTE sw('t')` as a simple Query.
    ExecuteSimple,
    /// `EXECUTE sw('t')` sent as Parse/Bind/Execute (the driver's extended protocol).
    ExecuteParsed,
    /// `SELECT 1; EXECUTE sw('t')`: inside a multi-statement Query.
    ExecuteInBatch,
    /// `BEGIN`, `EXECUTE sw('t')`, `COMMIT`.
    ExecuteInCommittedBlock,
    /// An IMMUTABLE user function that calls set_config (beside `random()`, so that the
    /// statement itself is never cached and the function always runs).
    ImmutableFunction,
    /// An INSERT whose trigger calls set_config.
    Trigger,
    /// A read of a view whose (IMMUTABLE) function calls set_config, in a multi-statement
    /// Query (never cached itself).
    View,
    /// An INSERT into a temporary table whose column default calls set_config: pgmemo's side
    /// connections cannot see the table, its triggers or its defaults.
    TempTableDefault,
}

impl Switch {
    async fn to(self, c: &Client, tenant: &str) {
        match self {
            Switch::ExecuteSimple => {
                c.simple_query(&format!("EXECUTE sw('{tenant}')"))
                    .await
                    .unwrap();
            }
            Switch::ExecuteParsed => {
                c.query(format!("EXECUTE sw('{tenant}')").as_str(), &[])
                    .await
                    .unwrap();
            }
            Switch::ExecuteInBatch => {
                c.simple_query(&format!("SELECT 1; EXECUTE sw('{tenant}')"))
                    .await
                    .unwrap();
            }
            Switch::ExecuteInCommittedBlock => {
                c.simple_query("BEGIN").await.unwrap();
                c.simple_query(&format!("EXECUTE sw('{tenant}')"))
                    .await
                    .unwrap();
                c.simple_query("COMMIT").await.unwrap();
            }
            Switch::ImmutableFunction => {
                c.simple_query(&format!("SELECT lying_tenant('{tenant}'), random()"))
                    .await
                    .unwrap();
            }
            Switch::Trigger => {
                c.simple_query(&format!("INSERT INTO switches(tenant) VALUES ('{tenant}')"))
                    .await
                    .unwrap();
            }
            Switch::View => {
                c.simple_query(&format!("SELECT t FROM switch_{tenant}; SELECT 1"))
                    .await
                    .unwrap();
            }
            Switch::TempTableDefault => {
                c.simple_query(&format!(
                    "CREATE TEMP TABLE IF NOT EXISTS tt_{tenant}(x text DEFAULT lying_tenant('{tenant}'))"
                ))
                .await
                .unwrap();
                // Whatever the CREATE made pgmemo re-read is read again before the INSERT.
                rows_simple(c, "SELECT 1").await;
                c.simple_query(&format!("INSERT INTO tt_{tenant} DEFAULT VALUES"))
                    .await
                    .unwrap();
            }
        }
    }
}

/// One session switches between tenants with `how`; a second stays on t1 and a third never
/// chooses one. Every read of each must return its own tenant's rows.
async fn tenants_stay_apart(how: Switch) {
    let s = CacheStack::start(SETUP, &config("", RULES)).await;
    let (a, b, none) = (
        s.session("app_user").await,
        s.session("app_user").await,
        s.session("app_user").await,
    );
    a.simple_query("PREPARE sw(text) AS SELECT set_config('app.tenant', $1, false)")
        .await
        .unwrap();
    b.simple_query("SET app.tenant = 't1'").await.unwrap();
    // Entries for t1 and for "no tenant" exist before anyone switches.
    assert_reads(&b, READ, &tenant_rows("t1"), "b on t1").await;
    assert_reads(&none, READ, &tenant_rows(""), "no tenant").await;
    assert_reads(&a, READ, &tenant_rows(""), "a before switching").await;
    for (round, tenant) in ["t2", "t1", "t2", "t1"].into_iter().enumerate() {
        how.to(&a, tenant).await;
        assert_reads(
            &a,
            READ,
            &tenant_rows(tenant),
            &format!("{how:?} round {round}: a switched to {tenant}"),
        )
        .await;
        assert_reads(&b, READ, &tenant_rows("t1"), &format!("{how:?}: b")).await;
        assert_reads(&none, READ, &tenant_rows(""), &format!("{how:?}: none")).await;
    }
    // A trigger's write flushes the whole cache; a session with temporary tables bypasses
    // the cache for names they could shadow: fewer hits.
    let min_hits = match how {
        Switch::Trigger => 5.0,
        Switch::TempTableDefault => 2.0,
        _ => 10.0,
    };
    assert!(
        s.metric("pgmemo_cache_hits_total") >= min_hits,
        "{how:?}: the reads were not served from the cache ({} hits)",
        s.metric("pgmemo_cache_hits_total")
    );
}

#[tokio::test]
async fn execute_as_a_simple_query_never_leaks_a_tenant() {
    tenants_stay_apart(Switch::ExecuteSimple).await;
}

#[tokio::test]
async fn execute_sent_through_the_extended_protocol_never_leaks_a_tenant() {
    tenants_stay_apart(Switch::ExecuteParsed).await;
}

#[tokio::test]
async fn execute_inside_a_multi_statement_query_never_leaks_a_tenant() {
    tenants_stay_apart(Switch::ExecuteInBatch).await;
}

#[tokio::test]
async fn execute_in_a_committed_block_never_leaks_a_tenant() {
    tenants_stay_apart(Switch::ExecuteInCommittedBlock).await;
}

#[tokio::test]
async fn an_immutable_user_function_calling_set_config_never_leaks_a_tenant() {
    tenants_stay_apart(Switch::ImmutableFunction).await;
}

#[tokio::test]
async fn a_trigger_calling_set_config_never_leaks_a_tenant() {
    tenants_stay_apart(Switch::Trigger).await;
}

#[tokio::test]
async fn a_view_calling_set_config_never_leaks_a_tenant() {
    tenants_stay_apart(Switch::View).await;
}

#[tokio::test]
async fn a_temp_table_default_calling_set_config_never_leaks_a_tenant() {
    tenants_stay_apart(Switch::TempTableDefault).await;
}

/// A rolled-back EXECUTE leaves the tenant as it was, as PostgreSQL does.
#[tokio::test]
async fn execute_in_a_rolled_back_block_leaves_the_tenant_unchanged() {
    let s = CacheStack::start(SETUP, &config("", RULES)).await;
    let (a, b) = (s.session("app_user").await, s.session("app_user").await);
    a.simple_query("PREPARE sw(text) AS SELECT set_config('app.tenant', $1, false)")
        .await
        .unwrap();
    b.simple_query("SET app.tenant = 't1'").await.unwrap();
    assert_reads(&b, READ, &tenant_rows("t1"), "b on t1").await;
    a.simple_query("EXECUTE sw('t2')").await.unwrap();
    assert_reads(&a, READ, &tenant_rows("t2"), "a on t2").await;
    for _ in 0..2 {
        a.simple_query("BEGIN").await.unwrap();
        a.simple_query("EXECUTE sw('t1')").await.unwrap();
        assert_eq!(
            rows_simple(&a, READ).await,
            tenant_rows("t1"),
            "inside the block"
        );
        a.simple_query("ROLLBACK").await.unwrap();
        assert_reads(&a, READ, &tenant_rows("t2"), "a after the rollback").await;
        assert_reads(&b, READ, &tenant_rows("t1"), "b").await;
    }
}

/// A protocol Bind names a statement the client prepared with SQL PREPARE: pgmemo never saw
/// its Parse, so it cannot know what it does.
#[tokio::test]
async fn bind_of_a_sql_prepared_statement_never_leaks_a_tenant() {
    let s = CacheStack::start(SETUP, &config("", RULES)).await;
    let (b, none) = (s.session("app_user").await, s.session("app_user").await);
    b.simple_query("SET app.tenant = 't1'").await.unwrap();
    assert_reads(&b, READ, &tenant_rows("t1"), "b on t1").await;
    assert_reads(&none, READ, &tenant_rows(""), "no tenant").await;

    let mut a = raw_session(s.proxy.addr(), "app_user").await;
    raw_rows(
        &mut a,
        "PREPARE sw(text) AS SELECT set_config('app.tenant', $1, false)",
    )
    .await;
    assert_eq!(raw_rows(&mut a, READ).await, tenant_rows(""));
    for tenant in ["t2", "t1", "t2"] {
        raw_bind_execute(&mut a, "sw", tenant).await;
        for i in 0..3 {
            assert_eq!(
                raw_rows(&mut a, READ).await,
                tenant_rows(tenant),
                "a bound sw({tenant}), read {i}"
            );
        }
        assert_reads(&b, READ, &tenant_rows("t1"), "b").await;
        assert_reads(&none, READ, &tenant_rows(""), "none").await;
    }
    let hits = s.metric("pgmemo_cache_hits_total");
    assert!(hits >= 6.0, "only {hits} hits");
}

/// `search_path` switched by an EXECUTEd set_config: the session reads its new schema, and
/// another session on the old path never gets the new schema's rows (nor the reverse).
#[tokio::test]
async fn search_path_switched_through_execute_never_crosses_schemas() {
    let s = CacheStack::start(SETUP, &config("", "")).await;
    let (a, b) = (s.session("app_user").await, s.session("app_user").await);
    for c in [&a, &b] {
        c.simple_query("SET search_path = s1").await.unwrap();
    }
    a.simple_query("PREPARE p(text) AS SELECT set_config('search_path', $1, false)")
        .await
        .unwrap();
    let (in1, in2) = (vec!["in-s1".to_string()], vec!["in-s2".to_string()]);
    assert_reads(&a, PATH_READ, &in1, "a on s1").await;
    assert_reads(&b, PATH_READ, &in1, "b on s1").await;
    for round in 0..3 {
        a.simple_query("EXECUTE p('s2')").await.unwrap();
        assert_reads(&a, PATH_READ, &in2, &format!("a on s2, round {round}")).await;
        assert_reads(&b, PATH_READ, &in1, &format!("b on s1, round {round}")).await;
        let c = s.session("app_user").await;
        c.simple_query("SET search_path = s1").await.unwrap();
        assert_reads(&c, PATH_READ, &in1, "a new session on s1").await;
        a.simple_query("EXECUTE p('s1')").await.unwrap();
        assert_reads(&a, PATH_READ, &in1, &format!("a back on s1, round {round}")).await;
        b.simple_query("SET search_path = s2").await.unwrap();
        assert_reads(&b, PATH_READ, &in2, "b on s2").await;
        b.simple_query("SET search_path = s1").await.unwrap();
    }
    assert!(s.metric("pgmemo_cache_hits_total") >= 10.0);
}

/// A raw session through pgmemo, with the encoding drivers send (without it the session
/// would not be cached at all).
async fn raw_session(addr: std::net::SocketAddr, user: &str) -> TcpStream {
    let mut s = wire::connect(addr).await;
    let startup = pgmemo::protocol::startup::encode_startup(
        3,
        0,
        &[
            ("user", user),
            ("database", DB),
            ("client_encoding", "UTF8"),
        ],
    );
    s.write_all(&startup).await.unwrap();
    wire::frames_until_ready(&mut s, Duration::from_secs(10)).await;
    s
}

/// Parse, Bind, Execute and Sync of `sql` on the unnamed statement, as one buffer.
fn extended_group(sql: &str) -> Vec<u8> {
    let mut parse = Vec::new();
    parse.push(0);
    parse.extend_from_slice(sql.as_bytes());
    parse.push(0);
    parse.extend_from_slice(&0i16.to_be_bytes());
    let mut out = wire::frame(b'P', &parse);
    out.extend(wire::frame(b'B', b"\0\0\0\0\0\0\0\0"));
    out.extend(wire::frame(b'E', b"\0\0\0\0\0"));
    out.extend(wire::frame(b'S', b""));
    out
}

/// A simple Query on a raw connection; the DataRows' columns joined by `|`.
async fn raw_rows(s: &mut TcpStream, sql: &str) -> Vec<String> {
    s.write_all(&wire::query(sql)).await.unwrap();
    let frames = wire::frames_until_ready(s, Duration::from_secs(10)).await;
    frames.iter().filter_map(data_row).collect()
}

/// Bind of statement `name` with one text parameter, Execute and Sync.
async fn raw_bind_execute(s: &mut TcpStream, name: &str, param: &str) {
    let mut bind = Vec::new();
    bind.extend_from_slice(b"\0"); // unnamed portal
    bind.extend_from_slice(name.as_bytes());
    bind.push(0);
    bind.extend_from_slice(&0i16.to_be_bytes()); // parameter formats: all text
    bind.extend_from_slice(&1i16.to_be_bytes());
    bind.extend_from_slice(&(param.len() as i32).to_be_bytes());
    bind.extend_from_slice(param.as_bytes());
    bind.extend_from_slice(&0i16.to_be_bytes()); // result formats: all text
    let mut out = wire::frame(b'B', &bind);
    out.extend(wire::frame(b'E', b"\0\0\0\0\0"));
    out.extend(wire::frame(b'S', b""));
    s.write_all(&out).await.unwrap();
    wire::frames_until_ready(s, Duration::from_secs(10)).await;
}

/// A DataRow's text columns joined by `|` (None for other frames).
fn data_row(f: &Bytes) -> Option<String> {
    if f.first() != Some(&b'D') {
        return None;
    }
    let body = f.get(5..)?;
    let n = i16::from_be_bytes([*body.first()?, *body.get(1)?]);
    let mut at = 2usize;
    let mut cols = Vec::new();
    for _ in 0..n {
        let len = i32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        if len < 0 {
            cols.push("NULL".to_string());
            continue;
        }
        let end = at + len as usize;
        cols.push(String::from_utf8_lossy(body.get(at..end)?).into_owned());
        at = end;
    }
    Some(cols.join("|"))
}

/// A write whose name resolves under a `search_path` the session set earlier in the same
/// Query, pipeline or prepared statement's life: pgmemo must invalidate what PostgreSQL
/// really wrote (`s2.st`), not what the name meant before (`s1.st`).
#[tokio::test]
async fn a_write_after_a_search_path_change_in_the_same_query_invalidates_what_it_wrote() {
    let setup = format!("{SETUP}\nGRANT UPDATE ON s1.st, s2.st TO app_user;");
    let s = CacheStack::start(&setup, &config("", "")).await;
    let (writer, reader) = (s.session("app_user").await, s.session("app_user").await);
    reader.simple_query("SET search_path = s2").await.unwrap();
    writer.simple_query("SET search_path = s1").await.unwrap();
    writer
        .simple_query("PREPARE to_s2 AS SELECT set_config('search_path', 's2', false)")
        .await
        .unwrap();
    let upd = writer.prepare("UPDATE st SET v = $1").await.unwrap();
    let mut raw = raw_session(s.proxy.addr(), "app_user").await;
    raw_rows(&mut raw, "SET search_path = s1").await;
    let mut n = 0;
    let mut check = |what: &'static str| {
        n += 1;
        (format!("v{n}"), what)
    };
    for round in 0..2 {
        // 1. A SET, then the write, in one simple Query.
        let (v, what) = check("SET then UPDATE in one Query");
        assert_reads(&reader, PATH_READ, &[prev(&reader).await], "cached").await;
        writer
            .simple_query(&format!(
                "SET search_path = s2; UPDATE st SET v = '{v}'; SET search_path = s1"
            ))
            .await
            .unwrap();
        assert_reads(&reader, PATH_READ, &[v], &format!("{what}, round {round}")).await;

        // 2. The same through EXECUTE of a set_config.
        let (v, what) = check("EXECUTE then UPDATE in one Query");
        assert_reads(&reader, PATH_READ, &[prev(&reader).await], "cached").await;
        writer
            .simple_query(&format!(
                "EXECUTE to_s2; UPDATE st SET v = '{v}'; SET search_path = s1"
            ))
            .await
            .unwrap();
        assert_reads(&reader, PATH_READ, &[v], &format!("{what}, round {round}")).await;

        // 3. A statement prepared under s1, executed after the session moved to s2:
        // PostgreSQL re-parses it under the new search_path.
        let (v, what) = check("statement prepared under s1 executed under s2");
        assert_reads(&reader, PATH_READ, &[prev(&reader).await], "cached").await;
        writer.simple_query("SET search_path = s2").await.unwrap();
        writer.execute(&upd, &[&v]).await.unwrap();
        writer.simple_query("SET search_path = s1").await.unwrap();
        assert_reads(&reader, PATH_READ, &[v], &format!("{what}, round {round}")).await;

        // 4. Pipelined: the SET and the write sent in one go on the extended protocol, each
        // its own Parse/Bind/Execute/Sync, before either is answered.
        let (v, what) = check("SET and UPDATE pipelined");
        assert_reads(&reader, PATH_READ, &[prev(&reader).await], "cached").await;
        let mut pipeline = extended_group("SET search_path = s2");
        pipeline.extend(extended_group(&format!("UPDATE st SET v = '{v}'")));
        pipeline.extend(extended_group("SET search_path = s1"));
        raw.write_all(&pipeline).await.unwrap();
        for _ in 0..3 {
            wire::frames_until_ready(&mut raw, Duration::from_secs(10)).await;
        }
        assert_reads(&reader, PATH_READ, &[v], &format!("{what}, round {round}")).await;

        // 5. In a block, statement by statement: the settings probe cannot run before the
        // UPDATE is planned (not at idle).
        let (v, what) = check("SET then UPDATE in a block");
        assert_reads(&reader, PATH_READ, &[prev(&reader).await], "cached").await;
        for sql in [
            "BEGIN",
            "SET search_path = s2",
            &format!("UPDATE st SET v = '{v}'"),
            "COMMIT",
            "SET search_path = s1",
        ] {
            writer.simple_query(sql).await.unwrap();
        }
        assert_reads(&reader, PATH_READ, &[v], &format!("{what}, round {round}")).await;
    }
    // s1.st was never written.
    assert_reads(&writer, PATH_READ, &["in-s1".to_string()], "s1 untouched").await;
}

/// What `reader` reads now (also caches it).
async fn prev(reader: &Client) -> String {
    rows_simple(reader, PATH_READ)
        .await
        .into_iter()
        .next()
        .unwrap_or_default()
}
