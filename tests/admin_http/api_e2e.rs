//! The admin JSON API end to end: a throwaway Postgres, the pgmemo binary in front of it with
//! an admin token and a small statistics table. After real traffic (a read missed once then
//! hit, the same read in a transaction block, `SELECT now()`), `/api/queries` shows each shape
//! with exactly the counts the traffic made and the bypass reasons; `/api/stats`,
//! `/api/tables` and `/api/config` (with the token) show the totals, the relation and the
//! redacted configuration; POSTs without the token or with a wrong one are refused (401) and change
//! nothing; `POST /flush` with it empties the cache. Filling the statistics table with far more
//! shapes than its bound keeps it within the bound, with the hot shape still there. And a
//! non-loopback admin address without a token is refused at start.

use std::net::SocketAddr;
use std::process::Command;

use serde_json::Value;
use tokio_postgres::Client;

use crate::common::SUPERUSER;
use crate::probe::CacheStack;
use crate::{http_get, http_with_headers};

const TOKEN: &str = "api-e2e-admin-token-0123456789";
const STATS_BYTES: u64 = 64 << 10;

const SETUP: &str = "
CREATE TABLE accounts(id int PRIMARY KEY, balance int NOT NULL);
INSERT INTO accounts VALUES (1, 100), (2, 200);
";

const READ: &str = "SELECT balance FROM accounts WHERE id = 1";
/// Its shape's text (the flood of other shapes at the end reads `balance AS cN`).
const ACCOUNTS: &str = "SELECT balance FROM accounts WHERE id = ?";

fn config() -> String {
    format!(
        "[admin]\ntoken = \"{TOKEN}\"\nquery_stats_bytes = {STATS_BYTES}\n\n\
         [cache]\nttl = \"10m\"\n\n[catalog]\npoll_interval = \"1h\"\n"
    )
}

async fn get_json(admin: SocketAddr, path: &str) -> Value {
    let reply = http_get(admin, path).await;
    assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    reply.json()
}

/// The shape of `/api/queries` whose text contains `needle`.
async fn shape(admin: SocketAddr, needle: &str) -> Value {
    let q = get_json(admin, "/api/queries?limit=10000").await;
    q["queries"]
        .as_array()
        .expect("queries array")
        .iter()
        .find(|s| s["query"].as_str().unwrap_or_default().contains(needle))
        .cloned()
        .unwrap_or_else(|| panic!("no shape with {needle:?} in {q:#}"))
}

fn n(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {v:#}"))
}

fn reason(v: &Value, label: &str) -> u64 {
    v["bypass_reasons"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|pair| pair[0] == label)
        .map_or(0, |pair| pair[1].as_u64().unwrap_or(0))
}

async fn post(admin: SocketAddr, path: &str, token: Option<&str>, body: &str) -> crate::Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    http_with_headers(admin, "POST", path, &headers, body.as_bytes()).await
}

/// How much one more execution of [`READ`] moves `field` of its shape.
async fn one_read_moves(admin: SocketAddr, c: &Client, field: &str) -> u64 {
    let before = n(&shape(admin, ACCOUNTS).await, field);
    run(c, READ).await;
    n(&shape(admin, ACCOUNTS).await, field) - before
}

async fn run(c: &Client, sql: &str) {
    c.simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_views_tokens_and_flush_after_real_traffic() {
    let s = CacheStack::start(SETUP, &config()).await;
    let admin = s.proxy.admin_addr();
    let c = s.session(SUPERUSER).await;
    // Until the session's settings are known the first statements may bypass; from here on
    // the read is cached.
    let read = s.probe.q(READ, None).await;
    let want = crate::probe::column("balance", &["100"]);
    s.probe.assert_upstream(&c, &read, &want).await;
    s.probe.assert_hit(&c, &read, &want).await;

    let before = shape(admin, ACCOUNTS).await;
    const HITS: u64 = 48;
    for _ in 0..HITS {
        run(&c, READ).await;
    }
    // Another text of the same shape: the same entry (and a miss: another key).
    run(&c, "SELECT balance FROM accounts WHERE id = 2").await;
    // In a transaction block: bypassed, counted as not_idle.
    run(&c, "BEGIN").await;
    run(&c, READ).await;
    run(&c, "COMMIT").await;
    // Never cacheable: its shape says why.
    run(&c, "SELECT now()").await;
    run(&c, "SELECT now()").await;

    let after = shape(admin, ACCOUNTS).await;
    assert_eq!(n(&after, "hits") - n(&before, "hits"), HITS, "{after:#}");
    assert_eq!(n(&after, "misses") - n(&before, "misses"), 1, "{after:#}");
    assert_eq!(
        reason(&after, "not_idle") - reason(&before, "not_idle"),
        1,
        "{after:#}"
    );
    assert_eq!(n(&after, "calls") - n(&before, "calls"), HITS + 2);
    assert_eq!(after["tables"], serde_json::json!(["public.accounts"]));
    assert_eq!(after["database"], "app");
    assert!(n(&after, "stored") >= 2, "{after:#}");
    assert!(after["hit"]["samples"].as_u64() >= Some(1), "{after:#}");
    assert!(
        after["upstream"]["samples"].as_u64() >= Some(1),
        "{after:#}"
    );
    assert!(
        after["upstream_time_saved_ms"].as_f64() > Some(0.0),
        "{after:#}"
    );

    let now = shape(admin, "now()").await;
    assert_eq!(reason(&now, "value_function"), 2, "{now:#}");
    assert_eq!(
        (n(&now, "hits"), n(&now, "misses"), n(&now, "calls")),
        (0, 0, 2)
    );

    let stats = get_json(admin, "/api/stats").await;
    assert!(n(&stats, "hits") > HITS, "{stats:#}");
    let ratio = stats["hit_ratio"].as_f64().expect("hit ratio");
    assert!(ratio > 0.5 && ratio <= 1.0, "{stats:#}");
    assert!(
        stats["bypasses"]["by_reason"]["not_idle"].as_u64() >= Some(1),
        "{stats:#}"
    );
    assert!(n(&stats, "entries") >= 2, "{stats:#}");
    assert_eq!(stats["query_stats"]["enabled"], true);

    let tables = get_json(admin, "/api/tables").await;
    let accounts = tables["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .find(|t| t["name"] == "accounts")
        .cloned()
        .unwrap_or_else(|| panic!("{tables:#}"));
    assert_eq!(accounts["schema"], "public");
    assert_eq!(accounts["write"], "invalidate");
    assert_eq!(accounts["rule"]["cache"], true);
    assert_eq!(accounts["rule"]["ttl"], "10m");
    assert!(n(&accounts, "entries") >= 2, "{accounts:#}");
    assert!(n(&accounts, "bytes") > 0, "{accounts:#}");

    // The configuration needs the token (the views above do not).
    assert_eq!(http_get(admin, "/api/config").await.status, 401);
    let bearer = format!("Bearer {TOKEN}");
    let config = http_with_headers(
        admin,
        "GET",
        "/api/config",
        &[("Authorization", bearer.as_str())],
        b"",
    )
    .await;
    assert_eq!(config.status, 200, "{}", config.body);
    assert!(
        !config.body.contains(TOKEN),
        "token leaked: {}",
        config.body
    );
    assert_eq!(config.json()["admin"]["token"], "********");

    // POSTs need the token: refused without it or with a wrong one, and nothing flushed.
    let epoch = n(&stats, "epoch");
    for token in [None, Some("wrong-token-0123456789abcdef")] {
        for path in ["/flush", "/invalidate"] {
            let body = if path == "/flush" {
                ""
            } else {
                r#"{"all": true}"#
            };
            let reply = post(admin, path, token, body).await;
            assert_eq!(reply.status, 401, "{path} with {token:?}: {}", reply.body);
            assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
        }
    }
    assert_eq!(n(&get_json(admin, "/api/stats").await, "epoch"), epoch);
    assert_eq!(one_read_moves(admin, &c, "hits").await, 1, "still cached");

    let flushed = post(admin, "/flush", Some(TOKEN), "").await;
    assert_eq!(flushed.status, 200, "{}", flushed.body);
    assert_eq!(flushed.json()["flushed"], true);
    assert!(flushed.json()["epoch"].as_u64() > Some(epoch));
    assert_eq!(
        one_read_moves(admin, &c, "misses").await,
        1,
        "flushed: the read went upstream"
    );
    let invalidated = post(admin, "/invalidate", Some(TOKEN), r#"{"all": true}"#).await;
    assert_eq!(invalidated.status, 200, "{}", invalidated.body);

    // Far more shapes than the table holds: it stays within its bound, and the hot shape
    // (the PostgreSQL time it stands for) is kept.
    for i in 0..300 {
        run(
            &c,
            &format!("SELECT balance AS c{i} FROM accounts WHERE id = 1"),
        )
        .await;
    }
    let q = get_json(admin, "/api/queries?limit=10000").await;
    assert!(n(&q, "bytes") <= STATS_BYTES, "{}", q["bytes"]);
    assert!(n(&q, "shapes") < 300, "evicted: {}", q["shapes"]);
    shape(admin, ACCOUNTS).await;
}

#[test]
fn a_non_loopback_admin_address_without_a_token_is_refused_at_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_pgmemo"))
        .args(["--admin-listen", "0.0.0.0:0", "--listen", "127.0.0.1:0"])
        .env_remove("PGMEMO_ADMIN_TOKEN")
        .env_remove("PGMEMO_CONFIG")
        .output()
        .expect("run pgmemo");
    assert!(!out.status.success(), "it started");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("admin.listen") && stderr.contains("admin.token"),
        "{stderr}"
    );
}

/// `/api/queries` and the console's `SHOW QUERIES` show shapes, never a value a client sent:
/// quoted, dollar-quoted and numeric literals are `?`, comments are dropped; texts that
/// differ only in their literals are one shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_never_show_a_literal() {
    const SECRET: &str = "alice-secret@example.com";
    let s = CacheStack::start(
        "CREATE TABLE people(id int PRIMARY KEY, email text NOT NULL);
         INSERT INTO people VALUES (1, 'a@b.c');",
        &config(),
    )
    .await;
    let admin = s.proxy.admin_addr();
    let c = s.session(SUPERUSER).await;
    for sql in [
        format!("SELECT id FROM people WHERE email = '{SECRET}' /* {SECRET} */"),
        format!("SELECT id FROM people WHERE email = $tag${SECRET}$tag$"),
        "SELECT id FROM people WHERE email = 'someone-else'".to_owned(),
        format!("SELECT id FROM people WHERE email = E'{SECRET}' AND id > 41"),
    ] {
        run(&c, &sql).await;
    }
    let all = http_get(admin, "/api/queries?limit=10000").await.body;
    assert!(!all.contains("alice-secret"), "a literal is shown: {all}");
    assert!(!all.contains("someone-else"), "a literal is shown: {all}");
    let one = shape(admin, "FROM people WHERE email = ? AND id > ?").await;
    assert_eq!(n(&one, "calls"), 1, "{one:#}");
    let q = get_json(admin, "/api/queries?limit=10000").await;
    let people: Vec<_> = q["queries"]
        .as_array()
        .expect("queries")
        .iter()
        .filter(|s| s["query"].as_str().unwrap_or_default().contains("people"))
        .collect();
    assert_eq!(
        people.len(),
        2,
        "three texts, one shape, plus the AND shape: {people:#?}"
    );
    let three = people
        .iter()
        .find(|s| s["query"] == "SELECT id FROM people WHERE email = ?")
        .unwrap_or_else(|| panic!("the shared shape: {people:#?}"));
    assert_eq!(n(three, "calls"), 3, "{three:#}");
}
