//! The admin guard through the pgmemo binary, in front of a throwaway PostgreSQL, with
//! write-behind's dead letters configured: with `admin.token` set, writes need it and then
//! JSON, and `/behind/dead-letters` and `/api/config` need it too; Host names outside
//! `admin.allowed_hosts` get 421 but on `/healthz`; and both settings change with the config
//! file and SIGHUP (the old token refused, the new one accepted; the old name misdirected,
//! the new one served), down to no token at all (everything open again but writes still
//! JSON-only).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::{PgOptions, PgServer, Proxy, ProxyArgs, SUPERUSER, Signal};
use crate::{Reply, http_with_headers};

const OLD: &str = "guard-e2e-old-admin-token-0123";
const NEW: &str = "guard-e2e-new-admin-token-4567";
/// How long a SIGHUP may take to apply on a busy machine.
const RELOAD: Duration = Duration::from_secs(15);

fn config(token: Option<&str>, hosts: &[&str], journal: &Path) -> String {
    let token = token.map_or(String::new(), |t| format!("token = \"{t}\"\n"));
    let journal = toml::Value::String(journal.display().to_string());
    format!("[admin]\n{token}allowed_hosts = {hosts:?}\n\n[behind]\njournal_dir = {journal}\n")
}

async fn get(admin: SocketAddr, path: &str, token: Option<&str>, host: Option<&str>) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = Vec::new();
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    if let Some(h) = host {
        headers.push(("Host", h));
    }
    http_with_headers(admin, "GET", path, &headers, b"").await
}

async fn flush(admin: SocketAddr, token: Option<&str>, json: bool) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = Vec::new();
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    if json {
        headers.push(("Content-Type", "application/json"));
    }
    http_with_headers(admin, "POST", "/flush", &headers, b"").await
}

/// Rewrites the config file and sends SIGHUP; returns once `applied` holds (panics after
/// [`RELOAD`]).
async fn reload<F, Fut>(proxy: &Proxy, toml: &str, applied: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let path = proxy.config_path().expect("pgmemo runs with a config file");
    std::fs::write(&path, toml).expect("rewrite the config file");
    proxy.signal(Signal::Hup);
    let deadline = Instant::now() + RELOAD;
    while !applied().await {
        assert!(
            Instant::now() < deadline,
            "the reload did not apply within {RELOAD:?}:\n{}",
            proxy.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_hosts_and_json_through_the_binary_and_their_reload() {
    let pg = PgServer::start(PgOptions::default());
    let journal = tempfile::tempdir().expect("journal dir");
    let proxy = Proxy::start(ProxyArgs::new(pg.url(SUPERUSER, "postgres")).config(config(
        Some(OLD),
        &["pgmemo-a"],
        journal.path(),
    )));
    let admin = proxy.admin_addr();
    let port = admin.port();

    // The disclosing GETs: the token or 401.
    for path in ["/behind/dead-letters", "/api/config"] {
        for token in [None, Some(NEW)] {
            let reply = get(admin, path, token, None).await;
            assert_eq!(reply.status, 401, "{path} {token:?}: {}", reply.body);
        }
        let reply = get(admin, path, Some(OLD), None).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    }
    let shown = get(admin, "/api/config", Some(OLD), None).await;
    assert!(!shown.body.contains(OLD), "token leaked: {}", shown.body);
    assert_eq!(
        shown.json()["admin"]["allowed_hosts"],
        serde_json::json!(["pgmemo-a"])
    );
    // Writes: the token, then JSON.
    assert_eq!(flush(admin, None, true).await.status, 401);
    assert_eq!(flush(admin, Some(OLD), false).await.status, 415);
    let flushed = flush(admin, Some(OLD), true).await;
    assert_eq!(flushed.status, 200, "{}", flushed.body);
    // The open GETs need no token.
    for path in ["/", "/api/stats", "/metrics", "/healthz"] {
        assert_eq!(get(admin, path, None, None).await.status, 200, "{path}");
    }

    // Host names.
    for path in ["/", "/api/stats", "/metrics"] {
        for host in ["evil.example".to_owned(), format!("evil.example:{port}")] {
            let reply = get(admin, path, None, Some(&host)).await;
            assert_eq!(reply.status, 421, "{host} {path}: {}", reply.body);
        }
        for host in [
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
            "localhost".to_owned(),
            format!("pgmemo-a:{port}"),
        ] {
            let reply = get(admin, path, None, Some(&host)).await;
            assert_eq!(reply.status, 200, "{host} {path}: {}", reply.body);
        }
    }
    let health = get(admin, "/healthz", None, Some("evil.example")).await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok"));
    let ready = get(admin, "/readyz", None, Some("evil.example")).await;
    assert_ne!(ready.status, 421, "{}", ready.body);

    // A new token and a new name, by SIGHUP.
    reload(
        &proxy,
        &config(Some(NEW), &["pgmemo-b"], journal.path()),
        || async { flush(admin, Some(NEW), true).await.status == 200 },
    )
    .await;
    assert_eq!(flush(admin, Some(OLD), true).await.status, 401, "old token");
    for path in ["/behind/dead-letters", "/api/config"] {
        assert_eq!(
            get(admin, path, Some(OLD), None).await.status,
            401,
            "{path}"
        );
        assert_eq!(
            get(admin, path, Some(NEW), None).await.status,
            200,
            "{path}"
        );
    }
    assert_eq!(get(admin, "/", None, Some("pgmemo-a")).await.status, 421);
    assert_eq!(get(admin, "/", None, Some("pgmemo-b")).await.status, 200);
    assert!(
        proxy.stderr().contains("admin.token changed"),
        "{}",
        proxy.stderr()
    );

    // No token at all: the disclosing GETs and the writes are open, writes still JSON-only.
    reload(&proxy, &config(None, &[], journal.path()), || async {
        get(admin, "/api/config", None, None).await.status == 200
    })
    .await;
    let letters = get(admin, "/behind/dead-letters", None, None).await;
    assert_eq!(letters.status, 200, "{}", letters.body);
    assert_eq!(letters.json(), serde_json::json!([]));
    assert_eq!(flush(admin, None, true).await.status, 200);
    assert_eq!(flush(admin, None, false).await.status, 415);
    assert_eq!(get(admin, "/", None, Some("pgmemo-b")).await.status, 421);
    assert_eq!(get(admin, "/", None, Some("localhost")).await.status, 200);
}
