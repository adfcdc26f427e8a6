//! Semantic checks on a deserialized [`Config`]: values that parse but cannot work (zero limits,
//! missing certificate files, clashing listeners...). Every problem is collected, so one run of
//! `check-config` shows all of them.

use std::fmt;
use std::fs::File;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

use super::upstream_url::{UpstreamTarget, redact_password};
use super::{Config, LogConfig, ServerConfig};

/// Smallest accepted `server.max_message_bytes`: below this, ordinary startup packets and
/// queries would be refused.
pub const MIN_MESSAGE_BYTES: usize = 1024;
/// Largest accepted `server.max_message_bytes`: PostgreSQL itself refuses messages of 1 GiB or
/// more (MaxAllocSize), so a larger limit would only let clients make pgmemo buffer garbage.
pub const MAX_MESSAGE_BYTES: usize = (1 << 30) - 1;
/// Accepted `log.format` values.
pub const LOG_FORMATS: [&str; 2] = ["text", "json"];
/// Accepted schemes for `cache.redis.url`.
pub const REDIS_SCHEMES: [&str; 3] = ["redis://", "rediss://", "unix://"];

/// One problem with the configuration: the dotted key, the offending value as written (TOML
/// literal syntax, passwords redacted), and why it was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub key: String,
    pub value: String,
    pub why: String,
}

impl ConfigIssue {
    pub fn new(key: impl Into<String>, value: impl Into<String>, why: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
            why: why.into(),
        }
    }
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {}: {}", self.key, self.value, self.why)
    }
}

/// Every problem found while loading or validating a configuration; displays one issue per
/// line as `key = value: why`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(.issues))]
pub struct ConfigErrors {
    pub issues: Vec<ConfigIssue>,
}

fn render(issues: &[ConfigIssue]) -> String {
    issues
        .iter()
        .map(ConfigIssue::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl From<Vec<ConfigIssue>> for ConfigErrors {
    fn from(issues: Vec<ConfigIssue>) -> Self {
        Self { issues }
    }
}

impl From<ConfigIssue> for ConfigErrors {
    fn from(issue: ConfigIssue) -> Self {
        Self {
            issues: vec![issue],
        }
    }
}

/// A string as a TOML literal (quoted and escaped), the way issues show values.
pub(crate) fn quoted(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn quoted_duration(d: Duration) -> String {
    quoted(&humantime::format_duration(d).to_string())
}

impl Config {
    /// Checks every semantic rule and returns all violations at once. Touches the file system
    /// only to confirm that configured certificate files exist and are readable.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut issues = Vec::new();
        check_server(&self.server, &mut issues);
        check_upstream(self, &mut issues);
        check_listeners(self.server.listen, self.admin.listen, &mut issues);
        if let Some(redis) = &self.cache.redis {
            check_redis_url(&redis.url, &mut issues);
        }
        check_log(&self.log, &mut issues);
        if issues.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors { issues })
        }
    }
}

fn check_server(server: &ServerConfig, issues: &mut Vec<ConfigIssue>) {
    if server.max_client_connections < 1 {
        issues.push(ConfigIssue::new(
            "server.max_client_connections",
            server.max_client_connections.to_string(),
            "must be at least 1",
        ));
    }
    if !(MIN_MESSAGE_BYTES..=MAX_MESSAGE_BYTES).contains(&server.max_message_bytes) {
        issues.push(ConfigIssue::new(
            "server.max_message_bytes",
            server.max_message_bytes.to_string(),
            format!(
                "must be between {MIN_MESSAGE_BYTES} (1 KiB) and {MAX_MESSAGE_BYTES} (1 GiB - 1, \
                 PostgreSQL's own limit)"
            ),
        ));
    }
    check_positive("server.startup_timeout", server.startup_timeout, issues);
    check_positive("server.shutdown_timeout", server.shutdown_timeout, issues);
    if server.worker_threads > 1024 {
        issues.push(ConfigIssue::new(
            "server.worker_threads",
            server.worker_threads.to_string(),
            "must be between 0 (one per CPU) and 1024",
        ));
    }
    if let Some(tls) = &server.tls {
        check_tls_file("server.tls.cert", &tls.cert, issues);
        check_tls_file("server.tls.key", &tls.key, issues);
    }
}

fn check_upstream(config: &Config, issues: &mut Vec<ConfigIssue>) {
    let url = &config.upstream.url;
    match UpstreamTarget::parse(url) {
        Ok(target) => {
            if let Some(why) = target.sslrootcert.as_deref().and_then(unreadable_file) {
                issues.push(ConfigIssue::new(
                    "upstream.url",
                    quoted(&redact_password(url)),
                    format!("sslrootcert {why}"),
                ));
            }
        }
        Err(e) => issues.push(ConfigIssue::new(
            "upstream.url",
            quoted(&redact_password(url)),
            e.to_string(),
        )),
    }
    check_positive(
        "upstream.connect_timeout",
        config.upstream.connect_timeout,
        issues,
    );
}

fn check_positive(key: &str, value: Duration, issues: &mut Vec<ConfigIssue>) {
    if value.is_zero() {
        issues.push(ConfigIssue::new(
            key,
            quoted_duration(value),
            "must be greater than zero (e.g. \"10s\" or \"500ms\")",
        ));
    }
}

/// Confirms the file can be opened now, so a typo fails at start-up or `check-config` rather
/// than on the first TLS handshake. The PEM contents are checked where they are loaded.
fn unreadable_file(path: &Path) -> Option<String> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Some("file not found (relative paths start at the working directory)".to_owned())
        }
        Err(e) => Some(format!("cannot be read: {e}")),
        Ok(meta) if meta.is_dir() => Some("is a directory, not a PEM file".to_owned()),
        Ok(_) => File::open(path)
            .err()
            .map(|e| format!("cannot be read: {e}")),
    }
}

fn check_tls_file(key: &str, path: &Path, issues: &mut Vec<ConfigIssue>) {
    if let Some(why) = unreadable_file(path) {
        issues.push(ConfigIssue::new(
            key,
            quoted(&path.display().to_string()),
            why,
        ));
    }
}

/// Two listeners on one port clash when they share an address, or when one binds the
/// unspecified address of the other's family (IPv6 `[::]` is dual-stack on Linux, so it clashes
/// with IPv4 too). Port 0 means "any free port" and never clashes.
fn listeners_clash(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() == 0 || a.port() != b.port() {
        return false;
    }
    let covers = |x: SocketAddr, y: SocketAddr| {
        x.ip().is_unspecified() && (x.is_ipv6() || x.is_ipv4() == y.is_ipv4())
    };
    a.ip() == b.ip() || covers(a, b) || covers(b, a)
}

fn check_listeners(server: SocketAddr, admin: SocketAddr, issues: &mut Vec<ConfigIssue>) {
    if listeners_clash(server, admin) {
        issues.push(ConfigIssue::new(
            "admin.listen",
            quoted(&admin.to_string()),
            format!(
                "clashes with server.listen = {}",
                quoted(&server.to_string())
            ),
        ));
    }
}

fn check_redis_url(url: &str, issues: &mut Vec<ConfigIssue>) {
    let rest = REDIS_SCHEMES
        .iter()
        .find_map(|scheme| url.strip_prefix(scheme));
    let why = match rest {
        None => Some(format!("must start with {}", REDIS_SCHEMES.join(", "))),
        Some("") => Some("names no server after the scheme".to_owned()),
        Some(_) => None,
    };
    if let Some(why) = why {
        issues.push(ConfigIssue::new(
            "cache.redis.url",
            quoted(&redact_password(url)),
            why,
        ));
    }
}

fn check_log(log: &LogConfig, issues: &mut Vec<ConfigIssue>) {
    if !LOG_FORMATS.contains(&log.format.as_str()) {
        issues.push(ConfigIssue::new(
            "log.format",
            quoted(&log.format),
            format!("must be one of {}", LOG_FORMATS.join(", ")),
        ));
    }
    if let Err(why) = check_filter(&log.level) {
        issues.push(ConfigIssue::new("log.level", quoted(&log.level), why));
    }
}

/// Accepts what `EnvFilter` accepts, except a bare word that is not a level: EnvFilter would
/// read `level = "verbose"` as "trace everything from a target named verbose", silently logging
/// nothing useful. Targets must be written `target=LEVEL`.
fn check_filter(level: &str) -> Result<(), String> {
    if level.trim().is_empty() {
        return Err("must not be empty (e.g. \"info\" or \"info,pgmemo=debug\")".to_owned());
    }
    EnvFilter::builder()
        .parse(level)
        .map_err(|e| format!("not a tracing filter directive: {e}"))?;
    for directive in level.split(',').map(str::trim) {
        let bare = !directive.contains('=') && !directive.contains('[');
        if bare && !directive.is_empty() && directive.parse::<LevelFilter>().is_err() {
            return Err(format!(
                "`{directive}` is not a level (trace, debug, info, warn, error, off); \
                 to filter a target write `{directive}=LEVEL`"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RedisConfig, TlsConfig};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    fn keys(result: Result<(), ConfigErrors>) -> Vec<String> {
        result
            .err()
            .map(|e| e.issues.into_iter().map(|i| i.key).collect())
            .unwrap_or_default()
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut c = Config::default();
        c.server.max_client_connections = 0;
        c.server.max_message_bytes = 10;
        c.server.startup_timeout = Duration::ZERO;
        c.server.shutdown_timeout = Duration::ZERO;
        c.upstream.url = "mysql://u:secret@h".into();
        c.upstream.connect_timeout = Duration::ZERO;
        c.admin.listen = c.server.listen;
        c.cache.redis = Some(RedisConfig {
            url: "http://h".into(),
        });
        c.log.level = "verbose".into();
        c.log.format = "xml".into();
        let err = c.validate().unwrap_err();
        let got: Vec<&str> = err.issues.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(
            got,
            [
                "server.max_client_connections",
                "server.max_message_bytes",
                "server.startup_timeout",
                "server.shutdown_timeout",
                "upstream.url",
                "upstream.connect_timeout",
                "admin.listen",
                "cache.redis.url",
                "log.format",
                "log.level",
            ]
        );
        let text = err.to_string();
        assert_eq!(text.lines().count(), 10, "{text}");
        assert!(text.contains("server.max_client_connections = 0: must be at least 1"));
        assert!(text.contains("server.startup_timeout = \"0s\": must be greater than zero"));
        assert!(text.contains("log.format = \"xml\": must be one of text, json"));
        assert!(!text.contains("secret"), "password leaked: {text}");
    }

    #[test]
    fn message_size_bounds_are_inclusive() {
        let mut c = Config::default();
        for (bytes, ok) in [
            (MIN_MESSAGE_BYTES - 1, false),
            (MIN_MESSAGE_BYTES, true),
            (MAX_MESSAGE_BYTES, true),
            (MAX_MESSAGE_BYTES + 1, false),
        ] {
            c.server.max_message_bytes = bytes;
            assert_eq!(c.validate().is_ok(), ok, "{bytes}");
        }
    }

    #[test]
    fn tls_files_must_exist_and_be_files() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        std::fs::write(&cert, "not parsed here").unwrap();
        let mut c = Config::default();
        c.server.tls = Some(TlsConfig {
            cert: cert.clone(),
            key: dir.path().join("missing.pem"),
        });
        let err = c.validate().unwrap_err();
        assert_eq!(err.issues.len(), 1, "{err}");
        assert_eq!(err.issues[0].key, "server.tls.key");
        assert!(err.issues[0].why.contains("not found"));
        c.server.tls = Some(TlsConfig {
            cert,
            key: dir.path().to_path_buf(),
        });
        assert_eq!(keys(c.validate()), ["server.tls.key"]);
    }

    #[test]
    fn sslrootcert_must_exist() {
        let mut c = Config::default();
        c.upstream.url = "postgres://h/?sslmode=verify-full&sslrootcert=/no/such/ca.pem".into();
        let err = c.validate().unwrap_err();
        assert_eq!(err.issues.len(), 1);
        assert_eq!(err.issues[0].key, "upstream.url");
        assert!(err.issues[0].why.starts_with("sslrootcert file not found"));
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "x").unwrap();
        c.upstream.url = format!("postgres://h/?sslrootcert={}", ca.display());
        c.validate().unwrap();
    }

    #[test]
    fn listener_clashes() {
        let v4 = |ip: Ipv4Addr, port| SocketAddr::new(IpAddr::V4(ip), port);
        let v6 = |ip: Ipv6Addr, port| SocketAddr::new(IpAddr::V6(ip), port);
        let lo = Ipv4Addr::LOCALHOST;
        assert!(listeners_clash(v4(lo, 1), v4(lo, 1)));
        assert!(!listeners_clash(v4(lo, 1), v4(lo, 2)));
        assert!(
            !listeners_clash(v4(lo, 0), v4(lo, 0)),
            "port 0 picks a free port"
        );
        assert!(listeners_clash(v4(Ipv4Addr::UNSPECIFIED, 1), v4(lo, 1)));
        assert!(listeners_clash(v4(lo, 1), v6(Ipv6Addr::UNSPECIFIED, 1)));
        assert!(!listeners_clash(
            v4(Ipv4Addr::UNSPECIFIED, 1),
            v6(Ipv6Addr::LOCALHOST, 1)
        ));
        assert!(!listeners_clash(
            v4(lo, 1),
            v4(Ipv4Addr::new(127, 0, 0, 2), 1)
        ));
    }

    #[test]
    fn redis_schemes() {
        let mut c = Config::default();
        for (url, ok) in [
            ("redis://127.0.0.1:6379", true),
            ("rediss://cache.example.com", true),
            ("unix:///run/redis.sock", true),
            ("redis://", false),
            ("http://h", false),
            ("127.0.0.1:6379", false),
        ] {
            c.cache.redis = Some(RedisConfig { url: url.into() });
            assert_eq!(c.validate().is_ok(), ok, "{url}");
        }
    }

    #[test]
    fn log_filters() {
        for ok in [
            "info",
            "WARN",
            "off",
            "3",
            "info,pgmemo=debug",
            "pgmemo::session=trace",
        ] {
            assert_eq!(check_filter(ok), Ok(()), "{ok}");
        }
        for bad in ["", "  ", "verbose", "pgmemo=loud", "info,chatty"] {
            assert!(check_filter(bad).is_err(), "{bad}");
        }
    }
}
