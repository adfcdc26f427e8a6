//! asyncpg's own test suite as a standing check (issue 16): `tests/compat/asyncpg_suite.py`
//! installs the pinned asyncpg and its suite (outside the repository, in a cache directory),
//! then, in a network namespace with only loopback, runs the suite against a fresh
//! PostgreSQL 15 and again through this build's pgmemo (default configuration: cache on,
//! CDC auto) in front of another fresh one, and fails when the sets of failing tests differ.
//! Tests excluded for both targets, with the reasons: `tests/compat/asyncpg_exclude.txt`.
//!
//! The wall times of both runs and their ratio are printed; `PGMEMO_COMPAT_MAX_RATIO=1.3`
//! also fails the test when the run through pgmemo took longer than that times direct
//! (not by default: on a shared 2-core machine one run's time is too noisy to gate on).
//! Needs root (the namespace; PostgreSQL then runs as the `postgres` OS user), python3 with
//! pip, `unshare` and network access to PyPI on the first run (CI installs all of it).

mod common;

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::reaper::Reaper;

/// Both runs take 2-5 minutes on a 2-core machine; the bound only catches a hang.
const TIMEOUT: Duration = Duration::from_secs(30 * 60);

#[test]
fn asyncpg_suite_fails_the_same_tests_through_pgmemo() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let work = tempfile::Builder::new()
        .prefix("pgmemo-compat-test-")
        .tempdir_in("/tmp")
        .expect("create work dir");
    let console_path = work.path().join("console.log");
    let console = File::create(&console_path).expect("create console log");
    let mut cmd = Command::new("python3");
    cmd.arg(root.join("tests/compat/asyncpg_suite.py"))
        .arg("--pgmemo")
        .arg(env!("CARGO_BIN_EXE_pgmemo"))
        .arg("--workdir")
        .arg(work.path())
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(console.try_clone().expect("dup console log"))
        .stderr(console);
    match std::env::var("PGMEMO_COMPAT_MAX_RATIO") {
        Ok(ratio) if !ratio.is_empty() => {
            cmd.args(["--max-ratio", &ratio]);
        }
        _ => {}
    }
    // Its own process group, so a timeout (or this test dying: the reaper) stops the
    // script, the suite, PostgreSQL and pgmemo together.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd
        .spawn()
        .expect("spawn python3 tests/compat/asyncpg_suite.py");
    let pgid = child.id();
    let _reaper = Reaper::spawn(&format!(
        "kill -KILL -- -{pgid} 2>/dev/null; sleep 1; rm -rf '{}'",
        work.path().display()
    ));
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the script") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pgid}")])
                .status();
            let _ = child.wait();
            panic!(
                "asyncpg_suite.py did not finish within {TIMEOUT:?}:\n{}",
                std::fs::read_to_string(&console_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let output = std::fs::read_to_string(&console_path).unwrap_or_default();
    // Shown with the test's output (nextest prints it for a failure, or with
    // --success-output): the sets, the differences and the times.
    println!("{output}");
    // The output is printed once, above; the messages only say where to look.
    assert_ne!(
        status.code(),
        Some(2),
        "asyncpg_suite.py could not set up (not root? no pip access?): see SETUP ERROR in the \
         output above"
    );
    assert!(
        status.success(),
        "asyncpg's suite fails differently through pgmemo than directly ({status}): see \
         \"fail only through pgmemo\" and \"fail only direct\" in the output above"
    );
    // A script that stopped early cannot pass: the verdict line must be there.
    assert!(
        output.contains("result: failing sets EQUAL"),
        "no verdict line in the output above"
    );
}
