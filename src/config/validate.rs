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

use super::rules::{Case, MAX_IDENTIFIER_BYTES, parse_qualified_name};
use super::upstream_url::{UpstreamTarget, redact_password};
use super::{
    CacheConfig, Config, FunctionsConfig, InvalidationConfig, LogConfig, RedisConfig, Rule,
    ServerConfig,
};

mod admin;
mod functions;
mod refresh;

use functions::*;
pub use refresh::{
    MAX_HOT_KEYS, MAX_REFRESH_LOGINS, MAX_WARM_PARAMS, MAX_WARM_QUERIES,
    REFRESH_IDLE_TIMEOUT_RANGE, REFRESH_POOL_RANGE, REFRESH_QUERY_TIMEOUT_RANGE,
    REFRESH_TIME_BUDGET_RANGE, WARMING_TIMEOUT_RANGE,
};
use refresh::{check_refresh, check_warm, check_warming};

/// Smallest accepted `server.max_message_bytes`: below this, ordinary startup packets and
/// queries would be refused.
pub const MIN_MESSAGE_BYTES: usize = 1024;
/// Largest accepted `server.max_message_bytes`: PostgreSQL itself refuses messages of 1 GiB or
/// more (MaxAllocSize), so a larger limit would only let clients make pgmemo buffer garbage.
pub const MAX_MESSAGE_BYTES: usize = (1 << 30) - 1;
/// Accepted `log.format` values.
pub const LOG_FORMATS: [&str; 2] = ["text", "json"];
/// Accepted schemes for `cache.redis.url`.
pub const REDIS_SCHEMES: [&str; 2] = ["redis://", "unix://"];
/// Smallest accepted `cache.max_memory`: below this the cache would hold almost nothing.
pub const MIN_CACHE_MEMORY: u64 = 1 << 20;
/// Smallest accepted `cache.max_entry_size`: one small result set with its framing.
pub const MIN_ENTRY_SIZE: u64 = 1 << 10;
/// Length of `cache.secret` in hex digits (a 128-bit key).
pub const SECRET_HEX_DIGITS: usize = 32;
/// Accepted `cache.fill_wait_timeout`: waiting longer than this for another session's fill
/// only hides a stuck query.
pub const FILL_WAIT_RANGE: (Duration, Duration) =
    (Duration::from_millis(1), Duration::from_secs(600));
/// Accepted `catalog.poll_interval`: faster loads the server with catalog queries, slower
/// leaves direct DDL and GRANT/REVOKE unnoticed for too long.
pub const POLL_INTERVAL_RANGE: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(3600));
/// Most `[[rules]]` entries: every cached read is checked against all of them.
pub const MAX_RULES: usize = 1000;
/// Most `[[functions.writes]]` (and `[[functions.reads]]`) entries: a write that runs a
/// trigger (a plan calling a function) searches them.
pub const MAX_FUNCTION_WRITES: usize = 1000;

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
    /// only to confirm that configured certificate files exist and are readable, and that the
    /// hot-key file's directory exists.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut issues = Vec::new();
        check_server(&self.server, &mut issues);
        check_upstream(self, &mut issues);
        check_listeners(self.server.listen, self.admin.listen, &mut issues);
        admin::check_admin(&self.admin, &mut issues);
        check_cache(&self.cache, &mut issues);
        check_range(
            "catalog.poll_interval",
            self.catalog.poll_interval,
            POLL_INTERVAL_RANGE,
            &mut issues,
        );
        check_invalidation(&self.invalidation, &mut issues);
        check_functions(&self.functions, &mut issues);
        check_rules(&self.rules, self.cache.ttl, &mut issues);
        check_shared_ttl(self, &mut issues);
        check_refresh(&self.refresh, &mut issues);
        super::behind::check_section(
            &self.behind,
            &self.rules,
            self.cache.redis.is_some(),
            &mut issues,
        );
        check_warm(self, &mut issues);
        check_warming(self, &mut issues);
        check_log(&self.log, &mut issues);
        if issues.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors { issues })
        }
    }
}

/// Accepted `invalidation.cdc_lag_max`, `cdc_slot_timeout` and `cdc_status_interval`.
pub const CDC_DURATION_RANGE: (Duration, Duration) =
    (Duration::from_millis(10), Duration::from_secs(3600));
/// Accepted `invalidation.cdc_ack_wait_max`: it holds a client's acknowledgement.
pub const CDC_ACK_WAIT_RANGE: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(10));
/// Most `invalidation.cdc_databases` (one replication connection and slot each).
pub const MAX_CDC_DATABASES: usize = 64;

fn check_invalidation(inv: &InvalidationConfig, issues: &mut Vec<ConfigIssue>) {
    for (key, value) in [
        ("invalidation.cdc_lag_max", inv.cdc_lag_max),
        ("invalidation.cdc_slot_timeout", inv.cdc_slot_timeout),
        ("invalidation.cdc_status_interval", inv.cdc_status_interval),
    ] {
        check_range(key, value, CDC_DURATION_RANGE, issues);
    }
    check_range(
        "invalidation.cdc_ack_wait_max",
        inv.cdc_ack_wait_max,
        CDC_ACK_WAIT_RANGE,
        issues,
    );
    if inv.cdc_databases.len() > MAX_CDC_DATABASES {
        issues.push(ConfigIssue::new(
            "invalidation.cdc_databases",
            inv.cdc_databases.len().to_string(),
            format!("at most {MAX_CDC_DATABASES} databases (one replication slot each)"),
        ));
    }
    for db in &inv.cdc_databases {
        if db.is_empty() || db.contains('\0') {
            issues.push(ConfigIssue::new(
                "invalidation.cdc_databases",
                quoted(db),
                "must be a database name",
            ));
        }
    }
    if let Some(p) = &inv.cdc_publication
        && (p.is_empty() || p.len() > 63 || p.contains('\0'))
    {
        issues.push(ConfigIssue::new(
            "invalidation.cdc_publication",
            quoted(p),
            "must be a publication name of 1 to 63 bytes",
        ));
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
            // The built-in roots sign certificates for anyone's names: a chain check without
            // the name check would accept any public certificate (libpq refuses it too,
            // when ~/.postgresql/root.crt is missing).
            if target.sslmode == crate::config::SslMode::VerifyCa && target.sslrootcert.is_none() {
                issues.push(ConfigIssue::new(
                    "upstream.url",
                    quoted(&redact_password(url)),
                    "sslmode=verify-ca needs sslrootcert=FILE (your CA): against the public \
                     roots built into pgmemo it would accept any publicly issued certificate; \
                     or use sslmode=verify-full, which also checks the host name"
                        .to_owned(),
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

/// Accepted `cache.redis.timeout`.
pub const REDIS_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_millis(1), Duration::from_secs(10));
/// Accepted `cache.redis.write_queue`.
pub const REDIS_WRITE_QUEUE_RANGE: (usize, usize) = (1, 1 << 20);
/// Accepted `cache.write_through_max_entries`: the refreshes run before a writer's
/// acknowledgement, so the bound caps what one write can add to its latency.
pub const WRITE_THROUGH_MAX_ENTRIES_RANGE: (usize, usize) = (1, 1024);

fn check_redis(redis: &RedisConfig, issues: &mut Vec<ConfigIssue>) {
    check_redis_url("cache.redis.url", &redis.url, issues);
    for node in &redis.cluster_nodes {
        check_redis_url("cache.redis.cluster_nodes", node, issues);
    }
    if !redis.cluster && !redis.cluster_nodes.is_empty() {
        issues.push(ConfigIssue::new(
            "cache.redis.cluster_nodes",
            redis.cluster_nodes.len().to_string(),
            "only with cache.redis.cluster = true",
        ));
    }
    let ns = &redis.namespace;
    if ns.is_empty()
        || ns.len() > 64
        || !ns
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        issues.push(ConfigIssue::new(
            "cache.redis.namespace",
            quoted(ns),
            "must be 1 to 64 letters, digits, '_' or '-'",
        ));
    }
    check_range(
        "cache.redis.timeout",
        redis.timeout,
        REDIS_TIMEOUT_RANGE,
        issues,
    );
    let (lo, hi) = REDIS_WRITE_QUEUE_RANGE;
    if !(lo..=hi).contains(&redis.write_queue) {
        issues.push(ConfigIssue::new(
            "cache.redis.write_queue",
            redis.write_queue.to_string(),
            format!("must be between {lo} and {hi}"),
        ));
    }
}

fn check_redis_url(key: &str, url: &str, issues: &mut Vec<ConfigIssue>) {
    let rest = REDIS_SCHEMES
        .iter()
        .find_map(|scheme| url.strip_prefix(scheme));
    let why = match rest {
        // The redis client is built without TLS (rustls there would pull in a second crypto
        // provider): refused here rather than failing at the first connection.
        None if url.starts_with("rediss://") => Some(
            "TLS to Redis (rediss://) is not supported: use redis:// on a trusted network, \
             a unix:// socket, or a local TLS tunnel (stunnel, spiped) to the server"
                .to_owned(),
        ),
        None => Some(format!("must start with {}", REDIS_SCHEMES.join(", "))),
        Some("") => Some("names no server after the scheme".to_owned()),
        Some(_) => None,
    };
    if let Some(why) = why {
        issues.push(ConfigIssue::new(key, quoted(&redact_password(url)), why));
    }
}

fn check_cache(cache: &CacheConfig, issues: &mut Vec<ConfigIssue>) {
    let (memory, entry) = (cache.max_memory.0, cache.max_entry_size.0);
    if memory < MIN_CACHE_MEMORY {
        issues.push(ConfigIssue::new(
            "cache.max_memory",
            memory.to_string(),
            "must be at least 1 MiB (1048576); write sizes as bytes or with a unit, e.g. \"256MiB\"",
        ));
    }
    if entry < MIN_ENTRY_SIZE {
        issues.push(ConfigIssue::new(
            "cache.max_entry_size",
            entry.to_string(),
            "must be at least 1 KiB (1024)",
        ));
    } else if entry > memory {
        issues.push(ConfigIssue::new(
            "cache.max_entry_size",
            entry.to_string(),
            format!(
                "must not exceed cache.max_memory = {memory} ({})",
                cache.max_memory
            ),
        ));
    }
    if let Some(secret) = &cache.secret {
        let hex =
            secret.len() == SECRET_HEX_DIGITS && secret.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex {
            // The value is a key: never echoed.
            issues.push(ConfigIssue::new(
                "cache.secret",
                quoted("********"),
                format!(
                    "must be exactly {SECRET_HEX_DIGITS} hex digits (a 128-bit key, e.g. from \
                     `openssl rand -hex 16`); got {} characters",
                    secret.chars().count()
                ),
            ));
        }
    }
    check_range(
        "cache.fill_wait_timeout",
        cache.fill_wait_timeout,
        FILL_WAIT_RANGE,
        issues,
    );
    let (lo, hi) = WRITE_THROUGH_MAX_ENTRIES_RANGE;
    if !(lo..=hi).contains(&cache.write_through_max_entries) {
        issues.push(ConfigIssue::new(
            "cache.write_through_max_entries",
            cache.write_through_max_entries.to_string(),
            format!("must be between {lo} and {hi}"),
        ));
    }
    if !(0.0..=1.0).contains(&cache.min_hit_ratio) {
        issues.push(ConfigIssue::new(
            "cache.min_hit_ratio",
            cache.min_hit_ratio.to_string(),
            "must be a fraction from 0 (never bypass) to 1".to_string(),
        ));
    }
    if !(0.0..=1.0).contains(&cache.verify_sample) {
        issues.push(ConfigIssue::new(
            "cache.verify_sample",
            cache.verify_sample.to_string(),
            "must be a fraction of cache hits from 0 (verify none) to 1 (verify every hit)"
                .to_string(),
        ));
    }
    if !(1..=1_000_000).contains(&cache.verify_max_per_second) {
        issues.push(ConfigIssue::new(
            "cache.verify_max_per_second",
            cache.verify_max_per_second.to_string(),
            "must be from 1 to 1000000 checks a second (verify_sample = 0 turns checks off)"
                .to_string(),
        ));
    }
    if let Some(redis) = &cache.redis {
        check_redis(redis, issues);
        if cache.secret.is_none() {
            issues.push(ConfigIssue::new(
                "cache.secret",
                "unset".to_string(),
                "required with cache.redis: every instance sharing the Redis must derive the \
                 same keys (set it, e.g. `openssl rand -hex 16`, in the file or PGMEMO_SECRET)"
                    .to_string(),
            ));
        }
    }
}

/// With a shared tier and no change stream, a bump that cannot reach Redis leaves other
/// instances' results stale until they expire: a TTL must bound that.
fn check_shared_ttl(config: &Config, issues: &mut Vec<ConfigIssue>) {
    if config.cache.redis.is_none() || config.invalidation.cdc != super::CdcMode::Off {
        return;
    }
    const WHY: &str = "must not be 0 with cache.redis and invalidation.cdc = \"off\": a bump \
                       that cannot reach Redis leaves other instances stale until the TTL";
    if config.cache.ttl.is_zero() {
        issues.push(ConfigIssue::new(
            "cache.ttl",
            "\"0s\"".to_string(),
            WHY.to_string(),
        ));
    }
    for (index, rule) in config.rules.iter().enumerate() {
        if rule.ttl.is_some_and(|t| t.is_zero()) {
            issues.push(ConfigIssue::new(
                format!("rules[{}].ttl", index + 1),
                "\"0s\"".to_string(),
                WHY.to_string(),
            ));
        }
    }
}

fn check_range(
    key: &str,
    value: Duration,
    (min, max): (Duration, Duration),
    issues: &mut Vec<ConfigIssue>,
) {
    if !(min..=max).contains(&value) {
        issues.push(ConfigIssue::new(
            key,
            quoted_duration(value),
            format!(
                "must be between {} and {}",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        ));
    }
}

/// Accepted `functions.undeclared_reads_ttl`: it bounds staleness the cache cannot see, so
/// it must stay short (`0s` = such reads are not cached).
pub const UNDECLARED_READS_TTL_RANGE: (Duration, Duration) =
    (Duration::ZERO, Duration::from_secs(3600));

/// The match fields and the action fields of a rule, by key name.
const MATCH_FIELDS: &str = "table, database, role, query";
const ACTION_FIELDS: &str =
    "cache, ttl, allow_stable_functions, allow_rls, write, refresh_ahead, refresh_adaptive";

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
#[path = "validate_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "validate_functions_tests.rs"]
mod functions_tests;

#[cfg(test)]
#[path = "validate_refresh_tests.rs"]
mod refresh_tests;
