//! `POST /invalidate` on an in-process admin server: the answer to a flush, every refusal
//! (400 malformed, 413 oversized, 415 not JSON, 405 not POST) leaving the cache untouched, 404
//! for a database pgmemo has not seen, 503 when the catalog is down, and the counter.

use std::net::SocketAddr;
use std::sync::Arc;

use pgmemo::admin::{self, AdminLimits};
use pgmemo::telemetry::names;

use super::{
    Reply, dead_port, http, http_get, offline_invalidation, post_json, readiness, start_admin_with,
    start_default,
};

/// Sum of the samples of `name` whose label set holds every `labels` pair (0 when none).
pub(crate) fn labelled(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.strip_prefix(name)?.rsplit_once(' ')?;
            let matches = (series.is_empty() || series.starts_with('{'))
                && labels
                    .iter()
                    .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

async fn admin_invalidations(addr: SocketAddr, scope: &str, result: &str) -> f64 {
    let reply = http_get(addr, "/metrics").await;
    labelled(
        &reply.body,
        names::ADMIN_INVALIDATIONS,
        &[("scope", scope), ("result", result)],
    )
}

pub(crate) fn error_text(reply: &Reply) -> String {
    assert_eq!(reply.header("content-type"), Some("application/json"));
    reply.json()["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error string in {}", reply.body))
        .to_owned()
}

#[tokio::test]
async fn invalidate_all_answers_a_new_epoch_and_is_counted() {
    let handle = offline_invalidation(dead_port().await);
    let versions = Arc::clone(handle.invalidator.cache().versions());
    let admin = start_admin_with(
        readiness(dead_port().await, false),
        AdminLimits::default(),
        handle,
    )
    .await;
    let before = admin_invalidations(admin.addr, "all", "ok").await;
    let mut epochs = Vec::new();
    for _ in 0..2 {
        let reply = post_json(admin.addr, "/invalidate", r#"{"all": true}"#).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.header("content-type"), Some("application/json"));
        let json = reply.json();
        assert_eq!(json["invalidated"], "all", "{}", reply.body);
        let epoch = json["epoch"].as_u64().unwrap();
        assert_eq!(
            epoch,
            versions.epoch(),
            "the answer names the cache's epoch"
        );
        epochs.push(epoch);
    }
    assert!(epochs[1] > epochs[0], "{epochs:?}");
    let after = admin_invalidations(admin.addr, "all", "ok").await;
    assert_eq!(after - before, 2.0);
}

#[tokio::test]
async fn invalidate_refuses_bad_requests_and_changes_nothing() {
    let handle = offline_invalidation(dead_port().await);
    let versions = Arc::clone(handle.invalidator.cache().versions());
    let epoch = versions.epoch();
    let admin = start_admin_with(
        readiness(dead_port().await, false),
        AdminLimits::default(),
        handle,
    )
    .await;
    for (body, want) in [
        ("", "invalid JSON"),
        ("{\"all\": true", "invalid JSON"),
        (r#"{"all": 1}"#, "invalid JSON"),
        (r#"{"all": true, "force": true}"#, "unknown field"),
        ("{}", "expected"),
        (r#"{"table": "accounts"}"#, "missing \"database\""),
        (r#"{"database": "app"}"#, "missing \"table\""),
        (r#"{"all": true, "table": "t"}"#, "cannot be combined"),
        (
            r#"{"database": "app", "table": "a.b.c"}"#,
            "not a table name",
        ),
    ] {
        let reply = post_json(admin.addr, "/invalidate", body).await;
        assert_eq!(reply.status, 400, "{body}: {}", reply.body);
        let error = error_text(&reply);
        assert!(error.contains(want), "{body}: {error}");
    }
    // Not JSON by type: a browser could send these cross-site without a preflight.
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let reply = http(admin.addr, "POST", "/invalidate", ct, br#"{"all": true}"#).await;
        assert_eq!(reply.status, 415, "{ct:?}: {}", reply.body);
        assert!(error_text(&reply).contains("application/json"));
    }
    // Over the body bound.
    let big = format!(
        "{{\"all\": true{}}}",
        " ".repeat(admin::invalidate::MAX_BODY)
    );
    let reply = post_json(admin.addr, "/invalidate", &big).await;
    assert_eq!(reply.status, 413, "{}", reply.body);
    assert!(!error_text(&reply).is_empty());
    // Only POST (any method but GET and HEAD must send JSON first, else 415).
    for method in ["GET", "PUT", "DELETE", "PATCH"] {
        let reply = http(
            admin.addr,
            method,
            "/invalidate",
            Some("application/json"),
            b"",
        )
        .await;
        assert_eq!(reply.status, 405, "{method}");
        assert_eq!(reply.header("allow"), Some("POST"), "{method}");
        if method != "GET" {
            let reply = http(admin.addr, method, "/invalidate", None, b"").await;
            assert_eq!(reply.status, 415, "{method}");
        }
    }
    assert_eq!(
        versions.epoch(),
        epoch,
        "a refused request flushed the cache"
    );
    assert_eq!(admin_invalidations(admin.addr, "all", "ok").await, 0.0);
}

#[tokio::test]
async fn invalidate_table_is_404_for_a_database_pgmemo_has_not_seen() {
    let admin = start_default(readiness(dead_port().await, false)).await;
    let before = admin_invalidations(admin.addr, "table", "error").await;
    let reply = post_json(
        admin.addr,
        "/invalidate",
        r#"{"database": "nowhere", "table": "public.accounts"}"#,
    )
    .await;
    assert_eq!(reply.status, 404, "{}", reply.body);
    assert!(error_text(&reply).contains("nowhere"), "{}", reply.body);
    assert_eq!(
        admin_invalidations(admin.addr, "table", "error").await - before,
        1.0
    );
}

#[tokio::test]
async fn invalidate_table_is_503_when_the_catalog_cannot_be_reached() {
    let handle = offline_invalidation(dead_port().await);
    // As if a session had used `app`: the name maps to an OID, but the catalog is down.
    handle.invalidator.learn_database("app", 16384);
    let admin = start_admin_with(
        readiness(dead_port().await, false),
        AdminLimits::default(),
        handle,
    )
    .await;
    let reply = post_json(
        admin.addr,
        "/invalidate",
        r#"{"database": "app", "table": "accounts"}"#,
    )
    .await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(error_text(&reply).contains("catalog"), "{}", reply.body);
}
