//! Non-Rust drivers through pgmemo: runs `tests/python/psycopg_check.py`, which drives
//! psycopg 3 (libpq: server-side prepared statements, pipeline mode, binary formats, COPY)
//! and asyncpg (named statements, binary protocol, portal cursors, binary COPY) directly and
//! through the proxy and compares the outcomes; and, with the libpq psycopg bundles (≥ 17),
//! PostgreSQL 17 direct TLS to pgmemo. A missing driver is a failure, never a skip.

mod common;
#[path = "support/run.rs"]
mod run;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::tls::set_mode;
use common::{PgOptions, PgServer, Proxy, ProxyArgs, SUPERUSER, TestCa};

const INSTALL_HINT: &str = "pip install \"psycopg[binary]\" asyncpg";
/// The script takes a few seconds; the bound only catches a hang.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);

fn python() -> Command {
    let mut cmd = Command::new("python3");
    // Unbuffered, so a killed run still shows how far it got.
    cmd.env("PYTHONUNBUFFERED", "1");
    cmd
}

/// Fails (never skips) when python3 or a driver is missing, saying how to install them.
fn require_drivers() {
    let mut cmd = python();
    cmd.args(["-c", "import psycopg, asyncpg"]);
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) => panic!("python3 is not runnable ({e}); install python3, then {INSTALL_HINT}"),
    };
    assert!(
        out.status.success(),
        "the Python drivers are not importable; run: {INSTALL_HINT} (CI installs them)\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/psycopg_check.py")
}

#[test]
fn psycopg_and_asyncpg_match_direct() {
    require_drivers();
    let pg = PgServer::start(PgOptions::default());
    let proxy = Proxy::start(ProxyArgs::new(pg.url(SUPERUSER, "postgres")));
    let mut cmd = python();
    cmd.arg(script())
        .args(["--proxy", &proxy.addr().to_string()])
        .args(["--direct", &pg.addr().to_string()]);
    let out = run::run(cmd, None, SCRIPT_TIMEOUT);
    assert!(
        out.status.code() != Some(3),
        "a Python driver is missing; run: {INSTALL_HINT}\n{}",
        out.describe()
    );
    assert!(
        out.success(),
        "psycopg_check.py failed:\n{}",
        out.describe()
    );
    // Every scenario must have reported; a script that stopped early cannot pass.
    let ok_lines = out.stdout.lines().filter(|l| l.starts_with("ok ")).count();
    assert_eq!(
        ok_lines,
        7,
        "expected 7 passing scenarios:\n{}",
        out.describe()
    );
}

/// libpq ≥ 17 `sslnegotiation=direct` (TLS from the first byte, ALPN `postgresql`) through
/// pgmemo, as trust, SCRAM and md5 users.
#[test]
fn psycopg_direct_tls() {
    require_drivers();
    let certs = tempfile::tempdir().expect("cert dir");
    set_mode(certs.path(), 0o755);
    let ca = TestCa::new(certs.path());
    let cert = ca.issue_server_cert(certs.path(), "pgmemo");
    let pg = PgServer::start(PgOptions::default());
    let proxy = Proxy::start(
        ProxyArgs::new(pg.url(SUPERUSER, "postgres")).config(format!(
            "[server.tls]\ncert = {:?}\nkey = {:?}\n",
            cert.cert_path.display().to_string(),
            cert.key_path.display().to_string()
        )),
    );
    let mut cmd = python();
    cmd.arg(script())
        .args(["--direct-tls", &proxy.addr().to_string()])
        .arg("--ca")
        .arg(ca.ca_pem_path());
    let out = run::run(cmd, None, SCRIPT_TIMEOUT);
    assert!(
        out.success(),
        "direct TLS via psycopg failed:\n{}",
        out.describe()
    );
    let ok_lines = out.stdout.lines().filter(|l| l.starts_with("ok ")).count();
    assert_eq!(
        ok_lines,
        3,
        "expected 3 direct-TLS logins:\n{}",
        out.describe()
    );
}
