//! The Grafana dashboard (`config/grafana/pgmemo.json`) and the docker-compose profile
//! `monitoring` that provisions it. Grafana and Docker are not available here, so the panels'
//! queries are run by a real Prometheus (Debian's `prometheus`, which `scripts/test` installs)
//! scraping a real pgmemo with traffic: every query must be valid PromQL, and the panels an
//! operator looks at first must show real numbers. The provisioning files are checked to
//! point at each other.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::ports::free_port;
use common::reaper::Reaper;
use common::stack::Stack;
use serde_json::Value;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn dashboard() -> Value {
    serde_json::from_str(&read("config/grafana/pgmemo.json")).expect("the dashboard is not JSON")
}

/// Every panel's (title, queries).
fn panels(d: &Value) -> Vec<(String, Vec<String>)> {
    let list = d["panels"].as_array().expect("panels");
    list.iter()
        .filter(|p| p["type"] != "row")
        .map(|p| {
            let exprs = p["targets"]
                .as_array()
                .map(|ts| {
                    ts.iter()
                        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            (p["title"].as_str().unwrap_or("").to_owned(), exprs)
        })
        .collect()
}

/// The metric names pgmemo exports: the string constants of `telemetry::names`.
fn exported_names() -> BTreeSet<String> {
    let src = read("src/telemetry/mod.rs");
    src.split('"')
        .filter(|s| {
            s.starts_with("pgmemo_") && s.bytes().all(|b| b == b'_' || b.is_ascii_alphanumeric())
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_panel_queries_only_metrics_pgmemo_exports() {
    let d = dashboard();
    let names = exported_names();
    assert!(names.len() > 50, "read {} names", names.len());
    let mut ids = BTreeSet::new();
    for p in d["panels"].as_array().unwrap() {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "duplicate panel id {}",
            p["id"]
        );
        let pos = &p["gridPos"];
        let right = pos["x"].as_u64().unwrap() + pos["w"].as_u64().unwrap();
        assert!(right <= 24, "panel {} is wider than the grid", p["title"]);
        if p["type"] != "row" {
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "panel {}",
                p["title"]
            );
        }
    }
    let all = panels(&d);
    assert!(all.len() >= 15, "{} panels", all.len());
    for (title, exprs) in &all {
        assert!(!exprs.is_empty(), "panel {title} has no query");
        for expr in exprs {
            let used = expr.split(|c: char| !(c == '_' || c.is_ascii_alphanumeric()));
            for name in used.filter(|w| w.starts_with("pgmemo_")) {
                assert!(
                    names.contains(name),
                    "panel {title:?} queries {name}, which pgmemo does not export"
                );
            }
        }
    }
}

#[test]
fn the_monitoring_profile_provisions_prometheus_and_the_dashboard() {
    let compose: serde_norway::Value =
        serde_norway::from_str(&read("docker-compose.yml")).expect("docker-compose.yml");
    let services = &compose["services"];
    for svc in ["prometheus", "grafana"] {
        let profiles = format!("{:?}", services[svc]["profiles"]);
        assert!(
            profiles.contains("monitoring"),
            "{svc} is not in the monitoring profile"
        );
        for vol in services[svc]["volumes"].as_sequence().expect("volumes") {
            let vol = vol.as_str().expect("volume");
            let host = vol.split(':').next().unwrap();
            assert!(
                repo(host).exists(),
                "{svc} mounts {host}, which is not in the repo"
            );
        }
    }
    // Prometheus scrapes pgmemo's admin port, as the compose file sets it.
    let admin = services["pgmemo"]["environment"]["PGMEMO_ADMIN_LISTEN"]
        .as_str()
        .expect("PGMEMO_ADMIN_LISTEN");
    let port = admin.rsplit(':').next().unwrap();
    let prom = read("config/prometheus.yml");
    assert!(prom.contains(&format!("\"pgmemo:{port}\"")), "{prom}");
    // Grafana's data source is that Prometheus; its dashboard folder holds the dashboard.
    let ds = read("config/grafana/provisioning/datasources/prometheus.yml");
    assert!(ds.contains("url: http://prometheus:9090"), "{ds}");
    let provider = read("config/grafana/provisioning/dashboards/pgmemo.yml");
    let grafana_vols = format!("{:?}", services["grafana"]["volumes"]);
    assert!(provider.contains("path: /var/lib/grafana/dashboards"));
    assert!(grafana_vols.contains("/var/lib/grafana/dashboards/pgmemo.json"));
    // And Prometheus itself accepts the file.
    let out = Command::new("promtool")
        .args(["check", "config"])
        .arg(repo("config/prometheus.yml"))
        .output()
        .expect("promtool (Debian package `prometheus`; scripts/test installs it)");
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A throwaway Prometheus scraping one target every second.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
    _reaper: Reaper,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: pgmemo\n    \
                 static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian package `prometheus`; scripts/test installs it)");
        let reaper = Reaper::spawn(&format!("kill -9 {} 2>/dev/null", child.id()));
        Prometheus {
            child,
            port,
            _dir: dir,
            _reaper: reaper,
        }
    }

    /// Runs an instant query; the parsed `data.result`, or the error Prometheus gave.
    fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let body = http_get(
            self.port,
            &format!("/api/v1/query?query={}", encode(promql)),
        )?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if v["status"] != "success" {
            return Err(body);
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn http_get(port: u16, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = String::new();
    s.read_to_string(&mut response).map_err(|e| e.to_string())?;
    Ok(response
        .split_once("\r\n\r\n")
        .map_or(response.clone(), |(_, b)| b.to_owned()))
}

/// The panel's queries as Grafana would send them for all instances over a short range.
fn as_grafana_sends(expr: &str) -> String {
    expr.replace("$__rate_interval", "30s")
        .replace("$instance", ".*")
}

/// The largest value of any series the query returns (None: no series).
fn largest(series: &[Value]) -> Option<f64> {
    series
        .iter()
        .filter_map(|s| s["value"][1].as_str()?.parse::<f64>().ok())
        .filter(|v| v.is_finite())
        .reduce(f64::max)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboards_queries_show_real_numbers_from_a_pgmemo_with_traffic() {
    let stack = Stack::start();
    let direct = stack.direct().await;
    direct
        .batch_execute("CREATE TABLE dash (id int PRIMARY KEY, v int); INSERT INTO dash SELECT g, g FROM generate_series(1, 100) g")
        .await
        .unwrap();
    let prom = Prometheus::start(&stack.proxy.admin_addr().to_string());
    let client = stack.proxied().await;
    // Traffic over more than two scrapes, so rates have two samples: hits, misses, a
    // bypass, writes that invalidate.
    let until = Instant::now() + Duration::from_secs(6);
    let mut i = 0;
    while Instant::now() < until {
        i += 1;
        client
            .simple_query(&format!("SELECT v FROM dash WHERE id = {}", i % 10 + 1))
            .await
            .unwrap();
        if i % 50 == 0 {
            // In a transaction block: a bypass (`not_idle`).
            for sql in ["BEGIN", "SELECT v FROM dash WHERE id = 2", "COMMIT"] {
                client.simple_query(sql).await.unwrap();
            }
            client
                .simple_query("UPDATE dash SET v = v + 1 WHERE id = 1")
                .await
                .unwrap();
        }
        if i % 200 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // The last scrape has seen the traffic.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let d = dashboard();
    let mut shown = std::collections::BTreeMap::new();
    for (title, exprs) in panels(&d) {
        for expr in exprs {
            let q = as_grafana_sends(&expr);
            let result = prom
                .query(&q)
                .unwrap_or_else(|e| panic!("panel {title:?}: Prometheus refused {q}: {e}"));
            shown.insert((title.clone(), expr), result);
        }
    }
    let value = |title: &str, needle: &str| -> Option<f64> {
        shown
            .iter()
            .filter(|((t, e), _)| t == title && e.contains(needle))
            .find_map(|(_, r)| largest(r))
    };
    let hit_ratio = value("Hit ratio", "hits").unwrap_or_else(|| {
        panic!(
            "hit ratio has no data; up: {:?}; hits: {:?}",
            prom.query("up"),
            prom.query("pgmemo_cache_hits_total")
        )
    });
    assert!(
        hit_ratio > 0.5 && hit_ratio <= 1.0,
        "hit ratio {hit_ratio} (ten keys read over and over)"
    );
    assert!(
        value("Cache memory", "bytes").unwrap_or(0.0) > 0.0,
        "cache memory"
    );
    assert!(value("Entries", "entries").unwrap_or(0.0) > 0.0, "entries");
    assert!(
        value("Reads per second by outcome", "hits").unwrap_or(0.0) > 1.0,
        "hits/s"
    );
    let bypass = shown
        .iter()
        .find(|((t, e), _)| t == "Reads per second by outcome" && e.contains("bypasses"))
        .map(|(_, r)| r)
        .expect("bypass query");
    assert!(
        bypass.iter().any(|s| s["metric"]["reason"].is_string()),
        "bypasses by reason: {bypass:?}"
    );
    assert!(
        value("Latency: hit vs upstream", "pgmemo_cache_hit_seconds").is_some(),
        "hit latency has no data"
    );
    assert!(
        value("Latency: hit vs upstream", "pgmemo_upstream_query_seconds").is_some(),
        "upstream latency has no data"
    );
    assert!(
        value("Invalidations by source", "tag_bumps").unwrap_or(0.0) > 0.0,
        "invalidations by source"
    );
    assert!(
        value("Sessions", "active").unwrap_or(0.0) >= 1.0,
        "sessions"
    );
    assert!(
        value("Statements per second", "statements").unwrap_or(0.0) > 1.0,
        "statements/s"
    );
    eprintln!("{} queries ran; hit ratio {hit_ratio:.3}", shown.len());
}
