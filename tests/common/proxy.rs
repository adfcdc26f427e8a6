//! The pgmemo binary under test: spawned on ephemeral ports, ready when it prints
//! `pgmemo listening on ADDR admin ADDR` on stdout, its output kept for failure
//! messages, killed on `Drop`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::client::{self, AsyncMessages};
use super::memory;
use super::reaper::Reaper;

/// How long the binary may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How much of the proxy's stdout/stderr is kept (the tail); bounded so a chatty
/// debug log cannot eat the test's memory.
const OUTPUT_TAIL_BYTES: usize = 4 << 20;
/// How much of stderr is printed when a test panics with the proxy alive.
const PANIC_DUMP_BYTES: usize = 64 << 10;
const READY_PREFIX: &str = "pgmemo listening on ";

/// How to start the proxy. `ProxyArgs::new(pg.url("postgres", "postgres"))`.
#[derive(Debug, Clone, Default)]
pub struct ProxyArgs {
    /// `--upstream` URL.
    pub upstream: String,
    /// Contents of a config file passed with `--config` (TOML).
    pub config_toml: Option<String>,
    /// `--redis` URL.
    pub redis: Option<String>,
    /// Extra command-line arguments, after the standard ones.
    pub args: Vec<String>,
    /// Extra environment variables (inherited `PGMEMO_*` ones are always removed).
    pub env: Vec<(String, String)>,
    /// Another executable instead of pgmemo (harness self-test only).
    pub binary: Option<PathBuf>,
}

impl ProxyArgs {
    pub fn new(upstream: impl Into<String>) -> Self {
        ProxyArgs {
            upstream: upstream.into(),
            ..Default::default()
        }
    }

    pub fn config(mut self, toml: impl Into<String>) -> Self {
        self.config_toml = Some(toml.into());
        self
    }

    pub fn redis(mut self, url: impl Into<String>) -> Self {
        self.redis = Some(url.into());
        self
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }
}

/// Signals a test may send to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Term,
    Int,
    Hup,
    Kill,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Term => "TERM",
            Signal::Int => "INT",
            Signal::Hup => "HUP",
            Signal::Kill => "KILL",
        }
    }
}

/// The tail of a child's output stream, shared with the thread draining it.
#[derive(Clone, Default)]
struct Tail(Arc<Mutex<Vec<u8>>>);

impl Tail {
    fn push(&self, bytes: &[u8]) {
        let mut buf = self.0.lock().unwrap_or_else(|p| p.into_inner());
        buf.extend_from_slice(bytes);
        if buf.len() > OUTPUT_TAIL_BYTES {
            let excess = buf.len() - OUTPUT_TAIL_BYTES;
            buf.drain(..excess);
        }
    }

    fn text(&self) -> String {
        let buf = self.0.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// A running pgmemo process.
pub struct Proxy {
    child: Child,
    addr: SocketAddr,
    admin_addr: SocketAddr,
    stdout: Tail,
    stderr: Tail,
    exit: Option<ExitStatus>,
    reaper: Option<Reaper>,
    // Kept alive for the life of the process (it may re-read it on SIGHUP).
    config_file: Option<tempfile::NamedTempFile>,
}

impl Proxy {
    /// Spawns pgmemo and waits (≤ 20 s) for its ready line; panics with its stderr if it
    /// exits or stays silent.
    pub fn start(args: ProxyArgs) -> Proxy {
        let binary = args
            .binary
            .clone()
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_pgmemo")));
        let mut cmd = Command::new(&binary);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PGMEMO_") {
                cmd.env_remove(key);
            }
        }
        cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--upstream", &args.upstream]);
        let config_file = args.config_toml.as_ref().map(|toml| {
            let mut file = tempfile::Builder::new()
                .prefix("pgmemo-test-")
                .suffix(".toml")
                .tempfile()
                .expect("create temp config file");
            file.write_all(toml.as_bytes())
                .expect("write temp config file");
            file.flush().expect("flush temp config file");
            cmd.arg("--config").arg(file.path());
            file
        });
        if let Some(redis) = &args.redis {
            cmd.args(["--redis", redis]);
        }
        cmd.args(&args.args);
        cmd.envs(args.env.iter().map(|(k, v)| (k, v)));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = spawn_retrying_busy(&mut cmd)
            .unwrap_or_else(|e| panic!("spawn {}: {e}", binary.display()));
        let reaper = Reaper::spawn(&format!("kill -KILL {}", child.id()));

        let stderr = Tail::default();
        let stderr_pipe = child.stderr.take().expect("piped stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || drain(stderr_pipe, &sink));

        let stdout = Tail::default();
        let stdout_pipe = child.stdout.take().expect("piped stdout");
        let sink = stdout.clone();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        std::thread::spawn(move || {
            let mut ready_tx = Some(ready_tx);
            for line in BufReader::new(stdout_pipe).lines() {
                let Ok(line) = line else { break };
                sink.push(line.as_bytes());
                sink.push(b"\n");
                if let Some(addrs) = parse_ready_line(&line)
                    && let Some(tx) = ready_tx.take()
                {
                    let _ = tx.send(addrs);
                }
            }
        });

        let (addr, admin_addr) = match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok(addrs) => addrs,
            Err(mpsc::RecvTimeoutError::Timeout) => fail_start(
                &mut child,
                &format!(
                    "printed no `{READY_PREFIX}ADDR admin ADDR` line within {READY_TIMEOUT:?}"
                ),
                &binary,
                (&stdout, &stderr),
            ),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // stdout closed without a ready line: wait briefly for the exit status.
                let deadline = Instant::now() + Duration::from_secs(5);
                while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                fail_start(
                    &mut child,
                    "closed stdout before its ready line",
                    &binary,
                    (&stdout, &stderr),
                )
            }
        };
        Proxy {
            child,
            addr,
            admin_addr,
            stdout,
            stderr,
            exit: None,
            reaper: Some(reaper),
            config_file,
        }
    }

    /// The client listener.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The admin HTTP listener.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `postgres://user@ADDR/db` pointing at the proxy.
    pub fn url(&self, user: &str, db: &str) -> String {
        format!("postgres://{user}@{}/{db}", self.addr)
    }

    /// Path of the config file given with `--config`, if any (tests rewrite it before
    /// sending SIGHUP).
    pub fn config_path(&self) -> Option<PathBuf> {
        self.config_file.as_ref().map(|f| f.path().to_path_buf())
    }

    /// Resident set size in KiB, from /proc/PID/status.
    pub fn rss_kib(&self) -> u64 {
        memory::rss_kib(self.pid())
            .unwrap_or_else(|| panic!("no VmRSS for pgmemo {} (exited?)", self.pid()))
    }

    /// Sends a signal with `kill -s`.
    pub fn signal(&self, sig: Signal) {
        let status = Command::new("kill")
            .args(["-s", sig.name(), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(
            status.success(),
            "kill -s {} {} failed",
            sig.name(),
            self.pid()
        );
    }

    /// Waits for the process to exit; panics (with stderr) after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.exit {
            return status;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait on pgmemo") {
                self.exit = Some(status);
                self.reaper.take();
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "pgmemo did not exit within {timeout:?}\n--- stderr ---\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Everything the proxy wrote to stderr so far (the last 4 MiB).
    pub fn stderr(&self) -> String {
        self.stderr.text()
    }

    /// Everything the proxy wrote to stdout so far (the last 4 MiB).
    pub fn stdout(&self) -> String {
        self.stdout.text()
    }

    /// A connection through the proxy (no TLS); panics if it fails. Empty password = none.
    pub async fn connect(&self, user: &str, password: &str, db: &str) -> Client {
        client::connect(self.addr, user, password, db).await
    }

    /// A connection through the proxy whose failure the test wants to inspect.
    pub async fn try_connect(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<Client, tokio_postgres::Error> {
        client::try_connect(self.addr, user, password, db).await
    }

    /// A connection through the proxy that delivers NOTIFY/notices to the test.
    pub async fn connect_with_messages(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> (Client, AsyncMessages) {
        client::connect_with_messages(self.addr, user, password, db).await
    }

    /// The sum of metric `name` over the label sets whose text contains every one of
    /// `labels` (0 when not exported yet), from the admin `/metrics`.
    pub fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let text = self.admin_get("/metrics");
        let body = text
            .split_once("\r\n\r\n")
            .map_or(text.as_str(), |(_, b)| b);
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .filter(|l| labels.iter().all(|lab| l.contains(lab)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// A plain HTTP/1.0 GET on the admin listener; returns the whole response
    /// (status line, headers, body).
    pub fn admin_get(&self, path: &str) -> String {
        let mut stream = TcpStream::connect_timeout(&self.admin_addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect admin {}: {e}", self.admin_addr));
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("set admin read timeout");
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n",
            self.admin_addr
        )
        .expect("write admin request");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .unwrap_or_else(|e| panic!("read admin response for {path}: {e}"));
        response
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = self.stderr();
            let start = text.len().saturating_sub(PANIC_DUMP_BYTES);
            let start = (start..text.len())
                .find(|i| text.is_char_boundary(*i))
                .unwrap_or(text.len());
            eprintln!("--- pgmemo stderr (tail) ---\n{}", &text[start..]);
        }
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        self.reaper.take();
    }
}

/// Spawns, retrying ETXTBSY: a just-written executable can be briefly "busy" while
/// another test thread's fork still holds its write descriptor.
fn spawn_retrying_busy(cmd: &mut Command) -> std::io::Result<Child> {
    const ETXTBSY: i32 = 26;
    let mut attempts = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(ETXTBSY) && attempts < 50 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn fail_start(child: &mut Child, why: &str, binary: &Path, (stdout, stderr): (&Tail, &Tail)) -> ! {
    let _ = child.kill();
    let status = child.wait().ok();
    // Give the drain threads a moment to collect the last output.
    std::thread::sleep(Duration::from_millis(100));
    panic!(
        "pgmemo ({}) {why}; exit status {status:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        binary.display(),
        stdout.text(),
        stderr.text()
    );
}

fn drain(mut pipe: impl Read, sink: &Tail) {
    let mut buf = [0u8; 8192];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => sink.push(&buf[..n]),
        }
    }
}

/// Parses `pgmemo listening on 127.0.0.1:PORT admin 127.0.0.1:PORT`.
pub fn parse_ready_line(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let rest = line.trim().strip_prefix(READY_PREFIX)?;
    let (listen, admin) = rest.split_once(" admin ")?;
    Some((listen.trim().parse().ok()?, admin.trim().parse().ok()?))
}
