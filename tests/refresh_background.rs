//! The background refresher (issue 19) on write-through: results a commit invalidated that
//! were read under another fingerprint than the writer's are recomputed on pgmemo's own
//! connections, each logged in as the role that read it — never under another role. With
//! row-level security on `current_user`, each role's result is refreshed with that role's
//! rows; a role pgmemo has no login for keeps its result invalid (counted), never refreshed
//! as someone else.

mod common;
#[path = "support/cache_probe.rs"]
mod probe;

use std::time::{Duration, Instant};

use common::SUPERUSER;
use probe::{CacheStack, RLS_NOTES as SETUP, column, config, simple};

const RULES: &str = "[[rules]]\ntable = \"notes\"\nwrite = \"through\"\nallow_rls = true\n\n\
[[refresh.logins]]\nuser = \"alice\"\n\n[[refresh.logins]]\nuser = \"bob\"\n";

fn refreshed(s: &CacheStack, result: &str) -> f64 {
    let label = format!("result=\"{result}\"");
    s.proxy
        .admin_get("/metrics")
        .lines()
        .filter(|l| l.starts_with("pgmemo_refresh_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until the refresher counted `n` more `result`s than `before` (it runs after the
/// writer's acknowledgement).
async fn until_refreshed(s: &CacheStack, result: &str, before: f64, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while refreshed(s, result) - before < n {
        assert!(
            Instant::now() < deadline,
            "refresher: {} {result}, wanted {n}; {:?}",
            refreshed(s, result) - before,
            s.proxy
                .admin_get("/metrics")
                .lines()
                .filter(|l| l.starts_with("pgmemo_refresh_total{")
                    || l.starts_with("pgmemo_write_through_total{"))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(refreshed(s, result) - before, n, "{result}");
}

#[tokio::test]
async fn each_role_is_refreshed_as_itself_and_a_role_without_login_is_only_invalidated() {
    let s = CacheStack::start(SETUP, &config("", RULES)).await;
    let q = s.probe.q("SELECT sum(v)::int AS v FROM notes", None).await;
    let alice = s.session("alice").await;
    let bob = s.session("bob").await;
    let carol = s.session("carol").await;
    s.probe
        .assert_upstream(&alice, &q, &column("v", &["10"]))
        .await;
    s.probe
        .assert_upstream(&bob, &q, &column("v", &["20"]))
        .await;
    s.probe
        .assert_upstream(&carol, &q, &column("v", &["30"]))
        .await;
    s.probe.assert_hit(&alice, &q, &column("v", &["10"])).await;
    let (stored, no_login) = (refreshed(&s, "stored"), refreshed(&s, "no_login"));

    // The superuser writes: none of the three results is its own fingerprint's.
    let writer = s.session(SUPERUSER).await;
    simple(&writer, "UPDATE notes SET v = v + 1").await;
    until_refreshed(&s, "stored", stored, 2.0).await;
    until_refreshed(&s, "no_login", no_login, 1.0).await;

    // Refreshed as alice and as bob: hits, each with its own rows only.
    s.probe.assert_hit(&alice, &q, &column("v", &["11"])).await;
    s.probe.assert_hit(&bob, &q, &column("v", &["21"])).await;
    // carol's result was not refreshed by anyone else: a miss, with her row.
    s.probe
        .assert_upstream(&carol, &q, &column("v", &["31"]))
        .await;
}

#[tokio::test]
async fn a_session_that_changed_settings_after_login_is_not_refreshed() {
    let s = CacheStack::start(SETUP, &config("", RULES)).await;
    let q = s.probe.q("SELECT sum(v)::int AS v FROM notes", None).await;
    let alice = s.session("alice").await;
    // A setting changed by SQL: a fresh login does not reproduce this fingerprint.
    simple(&alice, "SET extra_float_digits = 2").await;
    s.probe
        .assert_upstream(&alice, &q, &column("v", &["10"]))
        .await;
    let (stored, fp) = (refreshed(&s, "stored"), refreshed(&s, "fingerprint"));

    let writer = s.session(SUPERUSER).await;
    simple(&writer, "UPDATE notes SET v = v + 1 WHERE id = 1").await;
    until_refreshed(&s, "fingerprint", fp, 1.0).await;
    assert_eq!(refreshed(&s, "stored"), stored);
    s.probe
        .assert_upstream(&alice, &q, &column("v", &["11"]))
        .await;
}
