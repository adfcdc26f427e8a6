//! Keeps `bench/firstquery.py` (issue 16's first-query benchmark) from rotting: a small run
//! (20 connections per target and protocol) against this build's pgmemo must measure every
//! connection without an error or a wrong answer and print its table and verdicts. The
//! latency numbers themselves are not asserted here (20 samples on a shared machine); the
//! full run is `python3 bench/firstquery.py` (see bench/README.md).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::reaper::Reaper;

const TIMEOUT: Duration = Duration::from_secs(150);

#[test]
fn first_query_benchmark_runs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::Builder::new()
        .prefix("pgmemo-firstquery-test-")
        .tempdir_in("/tmp")
        .expect("create out dir");
    let log_path = out.path().join("console.log");
    let log = std::fs::File::create(&log_path).expect("create console log");
    let mut child = Command::new("python3")
        .arg(root.join("bench/firstquery.py"))
        .args(["--connections", "20", "--warmup", "2"])
        .arg("--pgmemo-bin")
        .arg(env!("CARGO_BIN_EXE_pgmemo"))
        .arg("--no-build")
        .arg("--out")
        .arg(out.path())
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log)
        .spawn()
        .expect("spawn python3 bench/firstquery.py");
    // The script stops its PostgreSQL and pgmemo on SIGTERM; if this test dies first, the
    // reaper sends it.
    let _reaper = Reaper::spawn(&format!("kill -TERM {} 2>/dev/null", child.id()));
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the benchmark") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            std::thread::sleep(Duration::from_secs(5));
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "bench/firstquery.py did not finish within {TIMEOUT:?}:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    println!("{output}");
    assert!(
        status.success(),
        "firstquery.py failed ({status}):\n{output}"
    );
    for protocol in ["simple", "extended"] {
        for measure in ["connect", "first", "second"] {
            assert!(
                output.contains(&format!("| {protocol} | {measure} | ")),
                "no {protocol} {measure} row:\n{output}"
            );
        }
        assert!(
            output.contains(&format!("- {protocol}: first query p50 ")),
            "no {protocol} verdict:\n{output}"
        );
    }
    // 20 measured connections per target and protocol, none failed.
    let raw = std::fs::read_dir(out.path())
        .expect("read out dir")
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().starts_with("firstquery-"))
        .expect("raw JSON written");
    let json = std::fs::read_to_string(raw.path()).expect("read raw JSON");
    assert_eq!(
        json.matches("\"n\": 20").count(),
        2 * 2 * 3,
        "expected 20 samples for each of 2 protocols x 2 targets x 3 measures:\n{json}"
    );
}
