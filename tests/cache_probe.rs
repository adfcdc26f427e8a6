//! The settings probe pgmemo runs on a session's own upstream connection must be invisible
//! to the client: the unnamed prepared statement survives it, its rows never reach the
//! client, and a session whose settings changed through `set_config` is probed again.

mod common;
#[path = "support/wire.rs"]
mod wire;

use std::time::Duration;

use common::{PgOptions, PgServer, Proxy, ProxyArgs, SUPERUSER};

const DB: &str = "postgres";
const WAIT: Duration = Duration::from_secs(10);

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn parse_unnamed(sql: &str) -> Vec<u8> {
    let mut body = cstr("");
    body.extend(cstr(sql));
    body.extend(0i16.to_be_bytes());
    wire::frame(b'P', &body)
}

fn bind_execute_sync(param: &str) -> Vec<u8> {
    let mut bind = cstr("");
    bind.extend(cstr(""));
    bind.extend(0i16.to_be_bytes()); // parameter formats: all text
    bind.extend(1i16.to_be_bytes()); // one parameter
    bind.extend((param.len() as i32).to_be_bytes());
    bind.extend(param.as_bytes());
    bind.extend(0i16.to_be_bytes()); // result formats: all text
    let mut out = wire::frame(b'B', &bind);
    let mut exec = cstr("");
    exec.extend(0i32.to_be_bytes());
    out.extend(wire::frame(b'E', &exec));
    out.extend(wire::frame(b'S', &[]));
    out
}

fn tags(frames: &[bytes::Bytes]) -> String {
    frames
        .iter()
        .map(|f| char::from(*f.first().unwrap_or(&b'?')))
        .collect()
}

/// The unnamed statement is reused across Syncs while a user function (which makes pgmemo
/// re-probe the session's settings at the next idle point) runs in between.
#[tokio::test]
async fn the_unnamed_statement_survives_the_settings_probe() {
    let pg = PgServer::start(PgOptions::default());
    pg.psql(
        DB,
        "CREATE FUNCTION f(int) RETURNS int STABLE LANGUAGE sql AS 'SELECT $1 + 1';",
    );
    let proxy = Proxy::start(ProxyArgs::new(pg.url(SUPERUSER, DB)));
    let mut s = wire::trust_session(proxy.addr(), SUPERUSER, DB).await;
    use tokio::io::AsyncWriteExt;

    let mut first = parse_unnamed("SELECT f($1::int)");
    first.extend(bind_execute_sync("1"));
    s.write_all(&first).await.unwrap();
    let frames = wire::frames_until_ready(&mut s, WAIT).await;
    assert_eq!(tags(&frames), "12DCZ", "{frames:?}");

    for i in 2..5 {
        s.write_all(&bind_execute_sync(&i.to_string()))
            .await
            .unwrap();
        let frames = wire::frames_until_ready(&mut s, WAIT).await;
        assert!(
            wire::first_error(&frames).is_none(),
            "execution {i} of the unnamed statement failed: {:?}",
            wire::first_error(&frames).map(|f| wire::describe(f))
        );
        assert_eq!(tags(&frames), "2DCZ", "{frames:?}");
    }
    // The probes did run (the function call taints the session each time).
    let metrics = proxy.admin_get("/metrics");
    let probes = metrics
        .lines()
        .find(|l| l.starts_with("pgmemo_session_probes_total{result=\"ok\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(
        probes >= 2.0,
        "expected re-probes after set_config-capable calls:\n{metrics}"
    );
}

/// `set_config` through a plain SELECT changes what the session reads; the session is
/// probed again and its cached results are its own.
#[tokio::test]
async fn set_config_in_a_select_is_followed_by_a_probe() {
    let pg = PgServer::start(PgOptions::default());
    pg.psql(
        DB,
        "CREATE TABLE t (id int, tenant text); INSERT INTO t VALUES (1, 'a'), (2, 'b');
         CREATE FUNCTION mine() RETURNS text STABLE LANGUAGE sql
           AS $$ SELECT current_setting('app.tenant', true) $$;
         CREATE VIEW v AS SELECT id FROM t WHERE tenant = mine();",
    );
    let proxy = Proxy::start(
        ProxyArgs::new(pg.url(SUPERUSER, DB))
            .config("[[rules]]\ntable = \"public.v\"\nallow_stable_functions = true\n"),
    );
    let a = proxy.connect(SUPERUSER, "", DB).await;
    let b = proxy.connect(SUPERUSER, "", DB).await;
    let ids = |msgs: Vec<tokio_postgres::SimpleQueryMessage>| -> Vec<String> {
        msgs.into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .collect()
    };
    a.simple_query("SELECT set_config('app.tenant', 'a', false)")
        .await
        .unwrap();
    b.simple_query("SELECT set_config('app.tenant', 'b', false)")
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(
            ids(a.simple_query("SELECT id FROM v").await.unwrap()),
            ["1"]
        );
        assert_eq!(
            ids(b.simple_query("SELECT id FROM v").await.unwrap()),
            ["2"]
        );
    }
}
