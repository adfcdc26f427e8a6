//! Throwaway PostgreSQL for one test: initdb into a temp dir, start on a free port with
//! the test users and settings every test relies on, stop and remove it on `Drop`.
//!
//! Postgres refuses to run as root, so when the tests run as root every server command
//! goes through `runuser -u postgres --` and the temp dir is chowned to that user
//! (see `pg_install`, which also caches the initdb output).

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use tokio_postgres::Client;

use super::client;
use super::pg_install::{self, chown};
use super::ports::free_port;
use super::reaper::Reaper;
use super::tls::{TestCa, set_mode};

/// How many times a first start retries with a new port when the picked one was taken.
const PORT_ATTEMPTS: usize = 5;

/// Settings for a `PgServer`; `PgOptions::default()` is what most tests want.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// `max_connections` (default 100).
    pub max_connections: u32,
    /// Serve TLS with a certificate from a generated CA (see `PgServer::ca`).
    pub tls: bool,
    /// Extra `postgresql.conf` settings: (name, value exactly as written in the file,
    /// so string values carry their own quotes, e.g. `("work_mem", "'8MB'")`).
    pub settings: Vec<(String, String)>,
    /// Extra `pg_hba.conf` lines placed before the generated ones (first match wins).
    pub hba_prepend: Vec<String>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            max_connections: 100,
            tls: false,
            settings: Vec::new(),
            hba_prepend: Vec::new(),
        }
    }
}

impl PgOptions {
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n;
        self
    }

    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.settings.push((name.to_string(), value.to_string()));
        self
    }

    pub fn hba_line(mut self, line: &str) -> Self {
        self.hba_prepend.push(line.to_string());
        self
    }
}

/// A running (or stopped, after `stop()`) throwaway PostgreSQL.
pub struct PgServer {
    // Field order matters for Drop: the reaper must be cancelled before the dir goes.
    reaper: Option<Reaper>,
    dir: tempfile::TempDir,
    bin_dir: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_path: PathBuf,
    port: u16,
    running: bool,
    owner: Option<(u32, u32)>,
    ca: Option<TestCa>,
}

impl PgServer {
    /// initdb + start + create the test users, extension and `app` database.
    /// Blocking (a few hundred ms); fine to call from `#[tokio::test]`.
    pub fn start(opts: PgOptions) -> PgServer {
        let mut server = PgServer::prepare();
        pg_install::init_data_dir(&server.data_dir, server.owner);
        server.write_config_files(&opts);
        server.first_start();
        server.create_test_objects();
        server
    }

    /// A hot standby of `primary` (pg_basebackup -R, streaming replication), on a port of
    /// its own, with the primary's settings and objects.
    pub fn start_standby(primary: &PgServer) -> PgServer {
        let mut server = PgServer::prepare();
        let out = server
            .server_cmd("pg_basebackup")
            .arg("-h")
            .arg("127.0.0.1")
            .args([
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
            ])
            .arg("-D")
            .arg(&server.data_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("run pg_basebackup");
        assert!(
            out.status.success(),
            "pg_basebackup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The copied configuration points at the primary's socket directory; this one has
        // its own (the includes and the rest carry over).
        server.write_data_file(
            "pgmemo_test.conf",
            &std::fs::read_to_string(primary.data_dir.join("pgmemo_test.conf"))
                .expect("read the primary's settings")
                .replace(
                    &primary.socket_dir.display().to_string(),
                    &server.socket_dir.display().to_string(),
                ),
        );
        server.first_start();
        server
    }

    /// The temp dir, socket dir and reaper of a server about to get a data dir.
    fn prepare() -> PgServer {
        let bin_dir = pg_install::bin_dir().to_path_buf();
        let dir = tempfile::Builder::new()
            .prefix("pgmemo-pg-")
            .tempdir_in("/tmp")
            .expect("create temp dir for PostgreSQL");
        // Postgres (as user postgres) must traverse the path to its data dir.
        set_mode(dir.path(), 0o755);
        let owner = pg_install::server_owner();
        let socket_dir = dir.path().join("sock");
        std::fs::create_dir(&socket_dir).expect("create socket dir");
        set_mode(&socket_dir, 0o755);
        if let Some((uid, gid)) = owner {
            chown(dir.path(), uid, gid);
            chown(&socket_dir, uid, gid);
        }
        let data_dir = dir.path().join("data");
        let log_path = dir.path().join("postgres.log");
        let mut server = PgServer {
            reaper: None,
            bin_dir,
            data_dir,
            socket_dir,
            log_path,
            port: 0,
            running: false,
            owner,
            ca: None,
            dir,
        };
        // Armed before initdb so even a test killed during setup leaves nothing behind.
        server.reaper = Some(Reaper::spawn(&format!(
            "pid=$(head -n1 '{data}/postmaster.pid' 2>/dev/null) && kill -QUIT \"$pid\"; \
             sleep 1; rm -rf '{dir}'",
            data = server.data_dir.display(),
            dir = server.dir.path().display()
        )));
        server
    }

    /// The TCP port (stable across `stop()`/`start_again()`).
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// `postgres://user@127.0.0.1:PORT/db`
    pub fn url(&self, user: &str, db: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{db}", self.port)
    }

    /// `postgres://user:password@127.0.0.1:PORT/db`
    pub fn url_with_password(&self, user: &str, password: &str, db: &str) -> String {
        format!("postgres://{user}:{password}@127.0.0.1:{}/{db}", self.port)
    }

    /// A direct connection (no TLS); panics if it fails. Empty password = none.
    pub async fn connect(&self, user: &str, password: &str, db: &str) -> Client {
        client::connect(self.addr(), user, password, db).await
    }

    /// A direct connection whose failure the test wants to inspect.
    pub async fn try_connect(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<Client, tokio_postgres::Error> {
        client::try_connect(self.addr(), user, password, db).await
    }

    /// A direct connection that delivers NOTIFY/notices to the test.
    pub async fn connect_with_messages(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> (Client, client::AsyncMessages) {
        client::connect_with_messages(self.addr(), user, password, db).await
    }

    /// A direct TLS connection verified against this server's CA (needs `PgOptions::tls`).
    pub async fn try_connect_tls(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<Client, tokio_postgres::Error> {
        let ca = self
            .ca
            .as_ref()
            .expect("PgServer started without PgOptions::tls");
        client::try_connect_tls(self.addr(), user, password, db, ca).await
    }

    /// The CA that signed the server certificate, when started with TLS.
    pub fn ca(&self) -> Option<&TestCa> {
        self.ca.as_ref()
    }

    /// Path of the CA certificate (PEM), when started with TLS.
    pub fn ca_pem_path(&self) -> Option<&Path> {
        self.ca.as_ref().map(|ca| ca.ca_pem_path())
    }

    /// Environment for libpq tools (psql, pgbench) connecting directly as the superuser.
    pub fn psql_env(&self) -> Vec<(String, String)> {
        vec![
            ("PGHOST".into(), "127.0.0.1".into()),
            ("PGPORT".into(), self.port.to_string()),
            ("PGUSER".into(), "postgres".into()),
            ("PGDATABASE".into(), "postgres".into()),
            ("PGSSLMODE".into(), "disable".into()),
            ("PGCONNECT_TIMEOUT".into(), "10".into()),
        ]
    }

    /// A binary from the PostgreSQL installation in use (psql, pgbench, ...).
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// Runs SQL with psql as the superuser in `db`; panics on error; returns stdout
    /// (unaligned, tuples only, `|`-separated).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let mut cmd = Command::new(self.bin("psql"));
        cmd.args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
        ])
        .args([
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            "-d",
            db,
            "-f",
            "-",
        ])
        .env("PGSSLMODE", "disable");
        let out = run_with_stdin(cmd, sql);
        if !out.status.success() {
            panic!(
                "psql failed ({}):\n{}\nSQL:\n{sql}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The server log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Stops the server (`-m fast`: sessions are terminated) keeping data and port.
    pub fn stop(&mut self) {
        self.pg_ctl_stop("fast");
    }

    /// Stops the server like a crash (`-m immediate`), keeping data and port.
    pub fn stop_immediate(&mut self) {
        self.pg_ctl_stop("immediate");
    }

    /// Starts a stopped server again on the same data dir and port; panics if the port
    /// was taken meanwhile.
    pub fn start_again(&mut self) {
        assert!(!self.running, "PgServer::start_again on a running server");
        if let Err(log) = self.pg_ctl_start() {
            panic!("restarting PostgreSQL on port {} failed:\n{log}", self.port);
        }
    }

    fn write_config_files(&mut self, opts: &PgOptions) {
        // `fsync = off` and `synchronous_commit = off` for speed. The latter means a commit is
        // visible before its WAL is flushed, and change data capture streams only flushed WAL:
        // CDC latencies measured here include up to 3 × wal_writer_delay (see
        // `tests/support/cdc.rs`); a test needing the other setting passes
        // `PgOptions::setting("synchronous_commit", "on")` (later lines win).
        let mut conf = format!(
            "listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{sock}'\n\
             max_connections = {max}\n\
             wal_level = logical\n\
             max_wal_senders = 10\n\
             max_replication_slots = 10\n\
             shared_preload_libraries = 'pg_stat_statements'\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             password_encryption = 'scram-sha-256'\n\
             logging_collector = off\n",
            sock = self.socket_dir.display(),
            max = opts.max_connections,
        );
        if opts.tls {
            let ca = TestCa::new(self.dir.path());
            let cert = ca.issue_server_cert(&self.data_dir, "server");
            if let Some((uid, gid)) = self.owner {
                chown(&cert.cert_path, uid, gid);
                chown(&cert.key_path, uid, gid);
            }
            conf.push_str(&format!(
                "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
                cert.cert_path.display(),
                cert.key_path.display()
            ));
            self.ca = Some(ca);
        }
        for (name, value) in &opts.settings {
            conf.push_str(&format!("{name} = {value}\n"));
        }
        self.write_data_file("pgmemo_test.conf", &conf);
        // The port lives in its own include file so a retry can rewrite just that.
        let mut main_conf = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data_dir.join("postgresql.conf"))
            .expect("open postgresql.conf");
        main_conf
            .write_all(b"\ninclude 'pgmemo_test.conf'\ninclude 'pgmemo_port.conf'\n")
            .expect("append includes to postgresql.conf");

        let mut hba = String::new();
        for line in &opts.hba_prepend {
            hba.push_str(line);
            hba.push('\n');
        }
        hba.push_str(
            "local all all trust\n\
             host all postgres 127.0.0.1/32 trust\n\
             host replication postgres 127.0.0.1/32 trust\n\
             host all md5_user 127.0.0.1/32 md5\n\
             host all scram_user 127.0.0.1/32 scram-sha-256\n\
             host all trust_user 127.0.0.1/32 trust\n\
             host all plain_user 127.0.0.1/32 password\n",
        );
        self.write_data_file("pg_hba.conf", &hba);
    }

    fn write_data_file(&self, name: &str, contents: &str) {
        let path = self.data_dir.join(name);
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        if let Some((uid, gid)) = self.owner {
            chown(&path, uid, gid);
        }
    }

    fn first_start(&mut self) {
        let mut last_log = String::new();
        for _ in 0..PORT_ATTEMPTS {
            self.port = free_port();
            self.write_data_file("pgmemo_port.conf", &format!("port = {}\n", self.port));
            match self.pg_ctl_start() {
                Ok(()) => return,
                Err(log) if is_bind_failure(&log) => last_log = log,
                Err(log) => panic!("starting PostgreSQL failed:\n{log}"),
            }
        }
        panic!("PostgreSQL could not bind a free port in {PORT_ATTEMPTS} attempts:\n{last_log}");
    }

    /// `pg_ctl start -w`; on failure returns the pg_ctl output plus the server log.
    fn pg_ctl_start(&mut self) -> Result<(), String> {
        let log_before = self.log().len();
        let out = self
            .server_cmd("pg_ctl")
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log_path)
            .args(["-w", "-t", "60", "start"])
            // pg_ctl's own stdout stays open in the postmaster; do not capture it or
            // `output()` would wait for the server to exit.
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("run pg_ctl start");
        if out.status.success() {
            self.running = true;
            return Ok(());
        }
        let log = self.log();
        Err(format!(
            "pg_ctl start: {}\n{}\n--- server log ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            log.get(log_before..).unwrap_or(&log)
        ))
    }

    fn pg_ctl_stop(&mut self, mode: &str) {
        if !self.running {
            return;
        }
        let out = self
            .server_cmd("pg_ctl")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-w", "-t", "60", "-m", mode, "stop"])
            .output()
            .expect("run pg_ctl stop");
        if !out.status.success() {
            panic!(
                "pg_ctl stop -m {mode} failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.running = false;
    }

    fn create_test_objects(&self) {
        self.psql(
            "postgres",
            "SET password_encryption = 'md5';\n\
             CREATE ROLE md5_user LOGIN PASSWORD 'md5_pass';\n\
             SET password_encryption = 'scram-sha-256';\n\
             CREATE ROLE scram_user LOGIN PASSWORD 'scram_pass';\n\
             CREATE ROLE plain_user LOGIN PASSWORD 'plain_pass';\n\
             CREATE ROLE trust_user LOGIN;\n\
             CREATE EXTENSION pg_stat_statements;\n\
             GRANT CREATE ON SCHEMA public TO PUBLIC;\n\
             CREATE DATABASE app OWNER postgres;\n",
        );
        // Same in `app`, so tests can count statements and create tables there too.
        self.psql(
            "app",
            "CREATE EXTENSION pg_stat_statements;\nGRANT CREATE ON SCHEMA public TO PUBLIC;\n",
        );
    }

    /// A command for a server binary, run as `postgres` when we are root.
    fn server_cmd(&self, name: &str) -> Command {
        pg_install::server_command(name, self.owner, self.dir.path())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.running {
            let stopped = self
                .server_cmd("pg_ctl")
                .arg("-D")
                .arg(&self.data_dir)
                .args(["-w", "-t", "30", "-m", "immediate", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if !matches!(stopped, Ok(s) if s.success()) {
                eprintln!(
                    "warning: pg_ctl stop failed for {}",
                    self.data_dir.display()
                );
            }
        }
        // Cancel the watchdog before TempDir removes the directory.
        self.reaper.take();
    }
}

fn is_bind_failure(log: &str) -> bool {
    log.contains("could not bind") || log.contains("could not create any TCP/IP sockets")
}

pub fn run_with_stdin(mut cmd: Command, input: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_owned();
    // Write from a thread so a large script cannot deadlock against a full stdout pipe.
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("wait for child");
    let _ = writer.join();
    out
}
