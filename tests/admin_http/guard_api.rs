//! The admin guard on an in-process server (no PostgreSQL): with a token, every write needs
//! it (401) and then JSON (415), on every path; the GETs that disclose values or
//! configuration need it, the others do not; a Host that is not an IP literal, `localhost` or
//! an allowed name gets 421 except on the health checks; and a reload of the access settings
//! applies to the next request.

use std::sync::Arc;

use pgmemo::admin::{AdminAccess, AdminLimits};

use super::invalidate_api::error_text;
use super::{
    Admin, Reply, dead_port, exchange, http_with_headers, offline_invalidation, readiness,
    start_guarded,
};

const TOKEN: &str = "guard-api-admin-token-0123456789";

async fn start(access: AdminAccess) -> Admin {
    start_guarded(
        readiness(dead_port().await, true),
        AdminLimits::default(),
        offline_invalidation(dead_port().await),
        Arc::new(access),
    )
    .await
}

fn with_token() -> AdminAccess {
    AdminAccess::new(Some(TOKEN), &["pgmemo".to_owned()])
}

/// `method path` with `headers`, plus a bearer `token` when given.
async fn send(
    admin: &Admin,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut all = headers.to_vec();
    if let Some(a) = &auth {
        all.push(("Authorization", a.as_str()));
    }
    http_with_headers(admin.addr, method, path, &all, body.as_bytes()).await
}

const JSON: (&str, &str) = ("Content-Type", "application/json");

/// Every write endpoint, and a path that does not exist (the fallback is guarded too).
const WRITES: &[(&str, &str)] = &[
    ("/flush", ""),
    ("/invalidate", r#"{"all": true}"#),
    ("/behind/dead-letters/1/retry", ""),
    ("/behind/dead-letters/1/drop", ""),
    ("/no-such-path", ""),
];

#[tokio::test]
async fn writes_need_the_token_then_json() {
    let admin = start(with_token()).await;
    for (path, body) in WRITES {
        for token in [None, Some("wrong-token-0123456789abcdef")] {
            let reply = send(&admin, "POST", path, token, &[JSON], body).await;
            assert_eq!(reply.status, 401, "{path} {token:?}: {}", reply.body);
            assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
            assert!(error_text(&reply).contains("admin token"));
        }
        // The token first: without it, the content type is not even looked at.
        let reply = send(&admin, "POST", path, None, &[], body).await;
        assert_eq!(reply.status, 401, "{path}");
        for ct in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
        ] {
            let headers: Vec<_> = ct.map(|c| ("Content-Type", c)).into_iter().collect();
            let reply = send(&admin, "POST", path, Some(TOKEN), &headers, body).await;
            assert_eq!(reply.status, 415, "{path} {ct:?}: {}", reply.body);
            assert!(error_text(&reply).contains("application/json"));
        }
        // Other write methods as well.
        let reply = send(&admin, "PUT", path, None, &[JSON], body).await;
        assert_eq!(reply.status, 401, "PUT {path}");
    }
    // With both, the request reaches its handler.
    let reply = send(&admin, "POST", "/flush", Some(TOKEN), &[JSON], "").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["flushed"], true);
    let reply = send(
        &admin,
        "POST",
        "/invalidate",
        Some(TOKEN),
        &[("Content-Type", "application/json; charset=utf-8")],
        r#"{"all": true}"#,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    for path in [
        "/behind/dead-letters/1/retry",
        "/behind/dead-letters/1/drop",
    ] {
        let reply = send(&admin, "POST", path, Some(TOKEN), &[JSON], "").await;
        assert_eq!(reply.status, 404, "{path}: {}", reply.body);
        assert!(reply.body.contains("write-behind is not configured"));
    }
}

#[tokio::test]
async fn without_a_token_writes_still_need_json() {
    let admin = start(AdminAccess::open()).await;
    let reply = send(&admin, "POST", "/flush", None, &[], "").await;
    assert_eq!(reply.status, 415, "{}", reply.body);
    let reply = send(&admin, "POST", "/flush", None, &[JSON], "").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // The disclosing GETs are open: they reach their handlers (404 here: no write-behind,
    // no application context).
    for path in ["/behind/dead-letters", "/api/config"] {
        let reply = send(&admin, "GET", path, None, &[], "").await;
        assert_eq!(reply.status, 404, "{path}: {}", reply.body);
    }
}

#[tokio::test]
async fn disclosing_gets_need_the_token_and_the_others_do_not() {
    let admin = start(with_token()).await;
    for path in ["/behind/dead-letters", "/api/config"] {
        let reply = send(&admin, "GET", path, None, &[], "").await;
        assert_eq!(reply.status, 401, "{path}");
        assert_eq!(head_status(&admin, path).await, 401, "HEAD {path}");
        let reply = send(&admin, "GET", path, Some("wrong"), &[], "").await;
        assert_eq!(reply.status, 401, "{path}");
        let reply = send(&admin, "GET", path, Some(TOKEN), &[], "").await;
        assert_eq!(
            reply.status, 404,
            "{path} reaches its handler: {}",
            reply.body
        );
    }
    // Variants of those paths never answer without the token.
    for path in [
        "/api/config/",
        "//api/config",
        "/api/config?x=1",
        "/behind/dead-letters/",
        "/api/%63onfig",
    ] {
        let reply = send(&admin, "GET", path, None, &[], "").await;
        assert_ne!(reply.status, 200, "{path}: {}", reply.body);
    }
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/",
        "/api/stats",
        "/api/queries",
    ] {
        let reply = send(&admin, "GET", path, None, &[], "").await;
        assert_ne!(reply.status, 401, "{path} is open");
        assert_ne!(reply.status, 421, "{path}");
    }
    assert_eq!(send(&admin, "GET", "/", None, &[], "").await.status, 200);
    assert_eq!(
        send(&admin, "GET", "/metrics", None, &[], "").await.status,
        200
    );
}

#[tokio::test]
async fn a_foreign_host_is_misdirected_except_on_the_health_checks() {
    let admin = start(with_token()).await;
    let port = admin.addr.port();
    for host in [
        "evil.example".to_owned(),
        format!("evil.example:{port}"),
        "pgmemo.evil.example".to_owned(),
        "127.0.0.1.evil.example".to_owned(),
        "::1".to_owned(),
        "not a host".to_owned(),
        String::new(),
    ] {
        for path in ["/", "/api/stats", "/metrics", "/api/queries"] {
            let reply = send(&admin, "GET", path, None, &[("Host", &host)], "").await;
            assert_eq!(reply.status, 421, "{host:?} {path}: {}", reply.body);
            assert!(error_text(&reply).contains("admin.allowed_hosts"));
        }
        // Before the token is even asked for.
        let reply = send(
            &admin,
            "POST",
            "/flush",
            Some(TOKEN),
            &[JSON, ("Host", &host)],
            "",
        )
        .await;
        assert_eq!(reply.status, 421, "{host:?}");
        let reply = send(&admin, "GET", "/healthz", None, &[("Host", &host)], "").await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "ok"), "{host:?}");
        let reply = send(&admin, "GET", "/readyz", None, &[("Host", &host)], "").await;
        assert_ne!(reply.status, 421, "{host:?}");
    }
    for host in [
        format!("127.0.0.1:{port}"),
        "127.0.0.1".to_owned(),
        format!("[::1]:{port}"),
        "localhost".to_owned(),
        format!("LocalHost:{port}"),
        "pgmemo".to_owned(),
        format!("PGMEMO:{port}"),
        "10.0.0.7".to_owned(),
    ] {
        for path in ["/", "/api/stats", "/metrics"] {
            let reply = send(&admin, "GET", path, None, &[("Host", &host)], "").await;
            assert_ne!(reply.status, 421, "{host:?} {path}");
        }
        let reply = send(&admin, "GET", "/", None, &[("Host", &host)], "").await;
        assert_eq!(reply.status, 200, "{host:?}");
    }
    // Two Host headers: refused whatever they say.
    let reply = exchange(
        admin.addr,
        b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(reply.status, 421);
    // HTTP/1.0 without a Host header: allowed (a browser always sends one).
    let reply = exchange(admin.addr, b"GET /metrics HTTP/1.0\r\n\r\n").await;
    assert_eq!(reply.status, 200);
    // An absolute-form target names the host as well.
    let reply = exchange(
        admin.addr,
        b"GET http://evil.example/metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(reply.status, 421);
}

#[tokio::test]
async fn a_reload_applies_to_the_next_request() {
    let access = Arc::new(with_token());
    let admin = start_guarded(
        readiness(dead_port().await, true),
        AdminLimits::default(),
        offline_invalidation(dead_port().await),
        Arc::clone(&access),
    )
    .await;
    let mut config = pgmemo::config::AdminConfig::default();
    const NEW: &str = "another-admin-token-abcdefghijkl";
    config.token = Some(pgmemo::config::Secret::new(NEW));
    config.allowed_hosts = vec!["admin.internal".into()];
    access.reload(&config);
    assert_eq!(flush(&admin, Some(TOKEN)).await, 401, "the old token");
    assert_eq!(flush(&admin, Some(NEW)).await, 200, "the new token");
    assert_eq!(dashboard(&admin, "pgmemo").await, 421, "no longer allowed");
    assert_eq!(dashboard(&admin, "admin.internal:9187").await, 200);
    // Token removed: writes and disclosing GETs are open again.
    config.token = None;
    access.reload(&config);
    assert_eq!(flush(&admin, None).await, 200);
    let reply = send(&admin, "GET", "/api/config", None, &[], "").await;
    assert_eq!(reply.status, 404, "reaches its handler");
}

async fn flush(admin: &Admin, token: Option<&str>) -> u16 {
    send(admin, "POST", "/flush", token, &[JSON], "")
        .await
        .status
}

async fn dashboard(admin: &Admin, host: &str) -> u16 {
    send(admin, "GET", "/", None, &[("Host", host)], "")
        .await
        .status
}

/// The status of `HEAD path` (the reply has a Content-Length but no body).
async fn head_status(admin: &Admin, path: &str) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(admin.addr).await.unwrap();
    let request = format!("HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut raw)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&raw);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"))
}
