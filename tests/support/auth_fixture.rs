//! Fixtures for tests/auth_tls.rs: certificates for pgmemo's client leg, proxies with TLS
//! configured, psql runs with a conninfo string, and raw direct-TLS connections.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_postgres::Client;

use crate::common::tls::{ServerCert, set_mode};
use crate::common::{PgOptions, PgServer, Proxy, ProxyArgs, SUPERUSER, TestCa};
use crate::run::{self, Finished, libpq_command};

/// Database every auth test connects to.
pub const DB: &str = "postgres";
/// A failing login must end promptly; this only catches a hang.
const PSQL_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on a TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A CA plus a certificate it issued for 127.0.0.1/localhost, in a dir readable by the
/// `postgres` OS user (the cert-auth test points `ssl_ca_file` at it).
pub struct Certs {
    pub ca: TestCa,
    pub cert: ServerCert,
    _dir: tempfile::TempDir,
}

impl Certs {
    pub fn new() -> Certs {
        let dir = tempfile::tempdir().expect("cert dir");
        set_mode(dir.path(), 0o755);
        let ca = TestCa::new(dir.path());
        let cert = ca.issue_server_cert(dir.path(), "pgmemo");
        Certs {
            ca,
            cert,
            _dir: dir,
        }
    }
}

/// `[server.tls]` for the proxy's client leg.
pub fn tls_config(cert: &Path, key: &Path) -> String {
    format!(
        "[server.tls]\ncert = {:?}\nkey = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    )
}

pub fn proxy_with_tls(upstream_url: String, cert: &Path, key: &Path) -> Proxy {
    Proxy::start(ProxyArgs::new(upstream_url).config(tls_config(cert, key)))
}

pub async fn current_user(client: &Client) -> String {
    client
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("SELECT current_user")
        .get(0)
}

pub async fn upstream_leg_encrypted(client: &Client) -> bool {
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("query pg_stat_ssl")
        .get(0)
}

/// psql with `conninfo`, optional PGPASSWORD, running `commands` (each a `-c`).
pub fn psql(pg: &PgServer, conninfo: &str, password: Option<&str>, commands: &[&str]) -> Finished {
    let home = tempfile::tempdir().expect("psql home");
    let mut cmd = libpq_command(&pg.bin("psql"), home.path());
    if let Some(password) = password {
        cmd.env("PGPASSWORD", password);
    }
    cmd.args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", conninfo]);
    for c in commands {
        cmd.args(["-c", c]);
    }
    run::run(cmd, None, PSQL_TIMEOUT)
}

pub fn conninfo(port: u16, user: &str, extra: &str) -> String {
    format!("host=127.0.0.1 port={port} user={user} dbname={DB} {extra}")
}

/// libpq messages name the port; mask both so direct and proxied errors compare.
pub fn mask_ports(text: &str, ports: &[u16]) -> String {
    let mut text = text.to_string();
    for port in ports {
        text = text.replace(&format!("port {port}"), "port <port>");
    }
    text
}

pub fn start_plain() -> (PgServer, Proxy) {
    let pg = PgServer::start(PgOptions::default());
    let proxy = Proxy::start(ProxyArgs::new(pg.url(SUPERUSER, DB)));
    (pg, proxy)
}

/// A TLS connection straight away (no SSLRequest), as PostgreSQL 17's
/// `sslnegotiation=direct`; `alpn` says whether to offer `postgresql`.
pub async fn direct_tls(
    addr: SocketAddr,
    ca: &TestCa,
    alpn: bool,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut config = ca.client_config();
    if alpn {
        config.alpn_protocols = vec![b"postgresql".to_vec()];
    }
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
    tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake"))?
}

pub fn upstream_url(pg: &PgServer, host: &str, query: &str) -> String {
    format!("postgres://{SUPERUSER}@{host}:{}/{DB}?{query}", pg.port())
}

/// The error of a connection attempt that must fail; panics with `what` if it succeeded.
pub fn refused<T>(result: Result<T, tokio_postgres::Error>, what: &str) -> tokio_postgres::Error {
    match result {
        Ok(_) => panic!("{what}: the connection was accepted"),
        Err(e) => e,
    }
}
