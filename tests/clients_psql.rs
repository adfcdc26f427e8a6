//! psql through pgmemo must print exactly what it prints against PostgreSQL directly: each
//! script in `tests/sql/` runs once directly and once through the proxy, each time against a
//! freshly created database, and stdout, stderr and the files `\copy` / `\lo_export` wrote
//! are compared after masking what legitimately differs (backend PIDs, OIDs, ports).

mod common;
#[path = "support/run.rs"]
mod run;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{PgOptions, PgServer, Proxy, ProxyArgs, SUPERUSER};
use run::{Finished, libpq_command, mask_number_after};

/// Database each run gets fresh (dropped and re-created), so both runs start identical.
const DB: &str = "psqltest";
/// Generous: the main script takes well under a second on a direct connection.
const PSQL_TIMEOUT: Duration = Duration::from_secs(60);
/// Rows in the generated `rows.csv`.
const CSV_ROWS: usize = 2_000;
/// Files the main script writes with `\copy ... to` and `\lo_export`.
const WRITTEN_FILES: [&str; 4] = ["out.csv", "kinds.txt", "copied.bin", "blob.out"];

struct Setup {
    pg: PgServer,
    proxy: Proxy,
}

impl Setup {
    fn new() -> Setup {
        let pg = PgServer::start(PgOptions::default());
        let proxy = Proxy::start(ProxyArgs::new(pg.url(SUPERUSER, "postgres")));
        Setup { pg, proxy }
    }

    /// Runs `script` with psql against a fresh `DB` on `port`, in a new work dir prepared
    /// by `prepare`; returns psql's output and the work dir (kept for file comparisons).
    fn run_script(
        &self,
        port: u16,
        script: &str,
        on_error_stop: bool,
        prepare: &dyn Fn(&Path),
    ) -> (Finished, tempfile::TempDir) {
        self.pg.psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE); CREATE DATABASE {DB};"),
        );
        let work = tempfile::tempdir().expect("psql work dir");
        prepare(work.path());
        let mut cmd = libpq_command(&self.pg.bin("psql"), work.path());
        cmd.args(["-X", "-At", "-v"])
            .arg(format!("ON_ERROR_STOP={}", u8::from(on_error_stop)))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                SUPERUSER,
                "-d",
                DB,
            ])
            .arg("-f")
            .arg(script_path(script));
        let out = run::run(cmd, None, PSQL_TIMEOUT);
        (out, work)
    }

    /// The same script directly and through pgmemo.
    fn both(
        &self,
        script: &str,
        on_error_stop: bool,
        prepare: &dyn Fn(&Path),
    ) -> [(Finished, tempfile::TempDir); 2] {
        let direct = self.run_script(self.pg.port(), script, on_error_stop, prepare);
        let proxied = self.run_script(self.proxy.port(), script, on_error_stop, prepare);
        [direct, proxied]
    }

    /// Output with everything that differs between two equivalent sessions masked.
    fn normalize(&self, text: &str) -> String {
        let text = text
            .replace(&format!("port {}", self.proxy.port()), "port <port>")
            .replace(&format!("port {}", self.pg.port()), "port <port>")
            .replace(&format!(":{}", self.proxy.port()), ":<port>")
            .replace(&format!(":{}", self.pg.port()), ":<port>");
        let text = mask_number_after(&text, "server process with PID ");
        let text = mask_number_after(&text, "lo_import ");
        mask_number_after(&text, "lo_unlink ")
    }
}

fn script_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sql")
        .join(name)
}

/// The input of `\copy copied from 'rows.csv'`, written exactly as PostgreSQL's CSV output
/// would write the same rows (UTC timestamps, minimal quoting), so the `\copy ... to` of the
/// same rows must reproduce it byte for byte.
fn rows_csv() -> String {
    let mut csv = String::from("id,name,score,at\n");
    for i in 1..=CSV_ROWS {
        let name = match i % 5 {
            0 => format!("\"comma, {i}\""),
            1 => format!("\"quote \"\"{i}\"\"\""),
            2 => format!("\"two\nlines {i}\""),
            3 => format!("plain{i}"),
            _ => "\"\"".to_string(),
        };
        let score = format!("{}.{:02}", i * 7, i % 100);
        let at = format!(
            "2024-{:02}-{:02} {:02}:{:02}:00+00",
            i % 12 + 1,
            i % 28 + 1,
            i % 24,
            i % 60
        );
        csv.push_str(&format!("{i},{name},{score},{at}\n"));
    }
    csv
}

/// A deterministic binary blob with every byte value, for `\lo_import`.
fn blob() -> Vec<u8> {
    pgmemo::rng::Rng::new(0x9e37_79b9).bytes(300_000)
}

fn prepare_main(dir: &Path) {
    std::fs::write(dir.join("rows.csv"), rows_csv()).expect("write rows.csv");
    std::fs::write(dir.join("blob.bin"), blob()).expect("write blob.bin");
}

fn prepare_errors(dir: &Path) {
    std::fs::write(dir.join("bad.csv"), "40,forty\nnot a number,x\n").expect("write bad.csv");
}

fn written_files(dir: &Path) -> BTreeMap<&'static str, Vec<u8>> {
    WRITTEN_FILES
        .iter()
        .map(|name| {
            let bytes = std::fs::read(dir.join(name))
                .unwrap_or_else(|e| panic!("psql did not write {name}: {e}"));
            (*name, bytes)
        })
        .collect()
}

/// Panics with a line-level diff when the two outputs differ.
fn assert_same_text(what: &str, direct: &str, proxied: &str) {
    if direct == proxied {
        return;
    }
    let (d, p): (Vec<_>, Vec<_>) = (direct.lines().collect(), proxied.lines().collect());
    let first = d
        .iter()
        .zip(&p)
        .position(|(a, b)| a != b)
        .unwrap_or(d.len().min(p.len()));
    let window = |lines: &[&str]| {
        lines
            .iter()
            .skip(first)
            .take(8)
            .copied()
            .collect::<Vec<_>>()
            .join("\n")
    };
    panic!(
        "{what} differs through pgmemo (direct {} lines, proxied {} lines); first difference at \
         line {}:\n--- direct ---\n{}\n--- through pgmemo ---\n{}",
        d.len(),
        p.len(),
        first + 1,
        window(&d),
        window(&p)
    );
}

#[test]
fn psql_script_output_matches_direct() {
    let s = Setup::new();
    let [(direct, direct_dir), (proxied, proxied_dir)] =
        s.both("psql_main.sql", true, &prepare_main);
    assert!(
        direct.success(),
        "script failed directly:\n{}",
        direct.describe()
    );
    assert!(
        proxied.success(),
        "script failed through pgmemo:\n{}",
        proxied.describe()
    );
    let (d_out, p_out) = (s.normalize(&direct.stdout), s.normalize(&proxied.stdout));
    assert_same_text("stdout", &d_out, &p_out);
    assert_same_text(
        "stderr",
        &s.normalize(&direct.stderr),
        &s.normalize(&proxied.stderr),
    );

    // The comparison is only meaningful if the script really exercised what it claims.
    for expected in [
        "Asynchronous notification \"chan\" with payload \"hello from psql\" received from \
         server process with PID <n>.",
        "Asynchronous notification \"chan\" with payload \"second\" received",
        "42 forty two",
        "43|forty two",
        "1\n2\nthree",
        "multi!",
        "2000|",
        "id|integer",
        "lo_import <n>",
        "300000|",
        "row 2",
        "done",
    ] {
        assert!(
            p_out.contains(expected),
            "through pgmemo, stdout lacks {expected:?}:\n{p_out}"
        );
    }
    assert!(
        !p_out.contains("not heard"),
        "notification after UNLISTEN was shown:\n{p_out}"
    );

    let (d_files, p_files) = (
        written_files(direct_dir.path()),
        written_files(proxied_dir.path()),
    );
    for name in WRITTEN_FILES {
        assert!(!p_files[name].is_empty(), "{name} is empty");
        assert!(
            d_files[name] == p_files[name],
            "{name} differs through pgmemo"
        );
    }
    assert_same_text(
        "\\copy round trip (out.csv vs rows.csv)",
        &rows_csv(),
        &String::from_utf8_lossy(&p_files["out.csv"]),
    );
    assert!(
        p_files["blob.out"] == blob(),
        "\\lo_export did not return the imported blob"
    );
}

#[test]
fn psql_errors_match_direct() {
    let s = Setup::new();
    let [(direct, _d), (proxied, _p)] = s.both("psql_errors.sql", false, &prepare_errors);
    assert_eq!(
        proxied.status.code(),
        direct.status.code(),
        "exit status differs:\n--- direct ---\n{}\n--- through pgmemo ---\n{}",
        direct.describe(),
        proxied.describe()
    );
    let (d_err, p_err) = (s.normalize(&direct.stderr), s.normalize(&proxied.stderr));
    assert_same_text(
        "stdout",
        &s.normalize(&direct.stdout),
        &s.normalize(&proxied.stdout),
    );
    assert_same_text("stderr", &d_err, &p_err);
    for expected in [
        "ERROR:  42P01: relation \"no_such_table\" does not exist",
        "ERROR:  42601: syntax error at or near \"SELEC\"",
        "ERROR:  23505: duplicate key value violates unique constraint \"t_pkey\"",
        "ERROR:  23502: null value in column \"v\"",
        "ERROR:  23514: new row for relation \"t\" violates check constraint",
        "ERROR:  22012: division by zero",
        "ERROR:  25P02: current transaction is aborted",
        "ERROR:  PM001: custom 42",
        "DETAIL:  the detail",
        "HINT:  the hint",
        "NOTICE:  00000: a notice with args",
        "WARNING:  01000: a warning",
        "CONTEXT:  SQL expression \"1 / 0\"\nPL/pgSQL function boom() line 1 at RETURN",
        "ERROR:  22P02: invalid input syntax for type integer",
        "missing.csv: No such file or directory",
        "more than one row returned for \\gset",
        "ERROR:  57014: canceling statement due to statement timeout",
    ] {
        assert!(
            p_err.contains(expected),
            "through pgmemo, stderr lacks {expected:?}:\n{p_err}"
        );
    }
    for expected in [
        "still alive",
        "twenty-one",
        "31",
        "first",
        "22012 division by zero",
        "end",
    ] {
        assert!(
            proxied.stdout.contains(expected),
            "through pgmemo, stdout lacks {expected:?}:\n{}",
            proxied.stdout
        );
    }
}

/// `psql -c` strings (each one Query message, several statements in one) and a script read
/// from stdin with an inline `COPY ... FROM STDIN` block.
#[test]
fn psql_command_strings_and_stdin_match_direct() {
    let s = Setup::new();
    let mut script =
        String::from("CREATE TABLE inline (id int, payload text);\nCOPY inline FROM STDIN;\n");
    for i in 0..20_000 {
        script.push_str(&format!("{i}\tpayload \\\\ {i} \\t tab\n"));
    }
    script.push_str(
        "\\.\nSELECT count(*), sum(id), md5(string_agg(payload, ',' ORDER BY id)) FROM inline;\n",
    );
    let run = |port: u16| {
        s.pg.psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE); CREATE DATABASE {DB};"),
        );
        let home = tempfile::tempdir().expect("psql home");
        let mut cmd = libpq_command(&s.pg.bin("psql"), home.path());
        cmd.args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args(["-p", &port.to_string(), "-U", SUPERUSER, "-d", DB])
            .args(["-c", "SELECT 1; SELECT 'two'; CREATE TABLE x(a int); INSERT INTO x VALUES (1), (2); SELECT sum(a) FROM x"])
            .args(["-c", "\\dt"])
            .args(["-c", "BEGIN; UPDATE x SET a = a * 10; COMMIT; SELECT array_agg(a ORDER BY a) FROM x"])
            .args(["-f", "-"]);
        run::run(cmd, Some(script.as_bytes()), PSQL_TIMEOUT)
    };
    let direct = run(s.pg.port());
    let proxied = run(s.proxy.port());
    assert!(direct.success(), "direct:\n{}", direct.describe());
    assert!(proxied.success(), "through pgmemo:\n{}", proxied.describe());
    assert_same_text("stdout", &direct.stdout, &proxied.stdout);
    assert_same_text("stderr", &direct.stderr, &proxied.stderr);
    for expected in [
        "1\ntwo\n",
        "\n3\n",
        "public|x|table|postgres",
        "{10,20}",
        "20000|199990000|",
    ] {
        assert!(
            proxied.stdout.contains(expected),
            "stdout lacks {expected:?}:\n{}",
            proxied.stdout
        );
    }
}
