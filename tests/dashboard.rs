//! The dashboard at `GET /` of the admin address, loaded in headless Chromium (Debian's
//! `chromium`, which `scripts/test` installs) against a pgmemo with traffic: after its
//! scripts have polled the JSON API, the hit ratio, the charts, memory and the top-queries
//! table (with "why not cached") show real numbers. The page must need nothing but pgmemo:
//! Chromium runs with the network limited to loopback by the test's own URL.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::stack::Stack;

/// Headless Chromium's DOM of `url` after `budget_ms` of (virtual) time.
fn dump_dom(url: &str, budget_ms: u32) -> String {
    let out = Command::new(chromium())
        .args(chromium_flags())
        .arg(format!("--virtual-time-budget={budget_ms}"))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("chromium (Debian package `chromium`; scripts/test installs it)");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn chromium() -> &'static str {
    if Command::new("chromium").arg("--version").output().is_ok() {
        "chromium"
    } else {
        "chromium-browser"
    }
}

fn chromium_flags() -> Vec<String> {
    let profile = std::env::temp_dir().join(format!("pgmemo-chromium-{}", std::process::id()));
    vec![
        "--headless".into(),
        // Root in CI: Chromium's sandbox needs an unprivileged user.
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-dev-shm-usage".into(),
        "--no-first-run".into(),
        format!("--user-data-dir={}", profile.display()),
        "--window-size=1400,1100".into(),
    ]
}

/// The text of the element with `id` (first match; tags stripped).
fn text_of(dom: &str, id: &str) -> Option<String> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let open_end = at + dom.get(at..)?.find('>')? + 1;
    let rest = dom.get(open_end..)?;
    let mut depth = 0usize;
    let mut out = String::new();
    let mut in_tag = false;
    for (i, c) in rest.char_indices() {
        if c == '<' {
            in_tag = true;
            if rest.get(i..)?.starts_with("</") {
                if depth == 0 {
                    break;
                }
                depth -= 1;
            } else {
                depth += 1;
            }
        } else if c == '>' {
            in_tag = false;
            if rest.get(..i)?.ends_with('/') {
                depth = depth.saturating_sub(1);
            }
        } else if !in_tag {
            out.push(c);
        }
    }
    Some(out)
}

/// The value of attribute `attr` on the element with `id`.
fn attr_of(dom: &str, id: &str, attr: &str) -> Option<String> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let start = dom.get(..at)?.rfind('<')?;
    let end = at + dom.get(at..)?.find('>')?;
    let tag = dom.get(start..end)?;
    let key = format!("{attr}=\"");
    let v = tag.get(tag.find(&key)? + key.len()..)?;
    Some(v.get(..v.find('"')?)?.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_live_numbers_in_chromium() {
    let stack = Stack::start();
    let direct = stack.direct().await;
    direct
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v int); \
             INSERT INTO t SELECT g, g FROM generate_series(1, 100) g",
        )
        .await
        .unwrap();
    let client = stack.proxied().await;
    // Traffic while the page polls: hits on ten keys, a bypass (in a transaction block),
    // writes that invalidate.
    let traffic = tokio::spawn(async move {
        let until = Instant::now() + Duration::from_secs(40);
        let mut i = 0u32;
        while Instant::now() < until {
            i += 1;
            let sql = format!("SELECT v FROM t WHERE id = {}", i % 10 + 1);
            if client.simple_query(&sql).await.is_err() {
                return;
            }
            if i.is_multiple_of(40) {
                for sql in ["BEGIN", "SELECT v FROM t WHERE id = 2", "COMMIT"] {
                    let _ = client.simple_query(sql).await;
                }
                let _ = client
                    .simple_query("UPDATE t SET v = v + 1 WHERE id = 3")
                    .await;
            }
            if i.is_multiple_of(100) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let url = format!("http://{}/", stack.proxy.admin_addr());
    let page = url.clone();
    let dom = tokio::task::spawn_blocking(move || dump_dom(&page, 9_000))
        .await
        .unwrap();
    // The README's picture: `PGMEMO_DASHBOARD_SCREENSHOT=docs/dashboard.png scripts/test
    // --test dashboard` (relative to the repository).
    if let Ok(path) = std::env::var("PGMEMO_DASHBOARD_SCREENSHOT") {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
        let shot = tokio::task::spawn_blocking(move || {
            Command::new(chromium())
                .args(chromium_flags())
                .arg("--virtual-time-budget=12000")
                .arg(format!("--screenshot={}", path.display()))
                .arg(&url)
                .output()
        })
        .await
        .unwrap()
        .expect("chromium screenshot");
        assert!(
            shot.status.success(),
            "{}",
            String::from_utf8_lossy(&shot.stderr)
        );
    }
    traffic.abort();

    let status = text_of(&dom, "status").unwrap_or_default();
    let polls: u32 = dom
        .find("data-polls=\"")
        .and_then(|at| {
            let v = dom.get(at + 12..)?;
            v.get(..v.find('"')?)?.parse().ok()
        })
        .unwrap_or_else(|| {
            panic!(
                "the page never polled successfully ({status}):\n{}",
                &dom[..dom.len().min(3000)]
            )
        });
    assert!(polls >= 3, "{polls} polls in the budget");
    let ratio = text_of(&dom, "hit-ratio").unwrap_or_default();
    let value: f64 = ratio
        .trim_end_matches(" %")
        .parse()
        .unwrap_or_else(|_| panic!("hit ratio {ratio:?}"));
    assert!(value > 50.0 && value <= 100.0, "hit ratio {ratio}");
    let bytes = text_of(&dom, "mem-bytes").unwrap_or_default();
    assert!(
        bytes.ends_with("B") && !bytes.starts_with('0'),
        "memory {bytes:?}"
    );
    let entries = text_of(&dom, "mem-entries").unwrap_or_default();
    assert!(
        entries.parse::<u64>().is_ok_and(|n| n >= 1),
        "entries {entries:?}"
    );
    // The outcomes chart drew real rates.
    let points: u32 = attr_of(&dom, "chart-outcomes", "data-points")
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let max: f64 = attr_of(&dom, "chart-outcomes", "data-max")
        .and_then(|p| p.parse().ok())
        .unwrap_or(0.0);
    assert!(
        points >= 3 && max > 1.0,
        "outcomes chart: {points} points, max {max}"
    );
    // The top queries, with the shape of the traffic and why one was not cached.
    let queries = text_of(&dom, "queries").unwrap_or_default();
    assert!(
        queries.contains("FROM t WHERE id"),
        "queries table: {queries}"
    );
    assert!(queries.contains("not_idle"), "why not cached: {queries}");
    let cdc = text_of(&dom, "cdc").unwrap_or_default();
    assert!(cdc.contains("postgres"), "cdc table: {cdc}");
    let shared = text_of(&dom, "shared").unwrap_or_default();
    assert!(shared.contains("configured"), "shared tier: {shared}");
}
