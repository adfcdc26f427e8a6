//! Typed configuration: the TOML file, environment and command-line layers merged into one
//! validated `Config` (flags beat env beat file beat defaults). Unknown keys are errors.
//!
//! NOTE(interface): the types below are the contract used by the rest of the crate. Loading,
//! layering, validation and `check-config` live in the submodules:
//! - [`load`]: [`Sources`] (file + [`Overrides`]) → validated [`Config`]; re-run on SIGHUP.
//! - [`validate`]: [`Config::validate`], collecting every [`ConfigIssue`] at once.
//! - [`upstream_url`]: the `postgres://` URL in `upstream.url` → [`UpstreamTarget`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod behind;
pub mod cache;
pub mod invalidation;
pub mod load;
pub mod refresh;
pub mod rules;
pub mod upstream_url;
pub mod validate;

pub use behind::{BehindConfig, BehindRule, QueueKind};
pub use cache::{
    ByteSize, CacheConfig, CatalogSection, FunctionReads, FunctionTables, FunctionWrites,
    FunctionsConfig, L1Config, Rule, SqlMemory, WritePolicy,
};
pub use invalidation::{CdcMode, InvalidationConfig};
pub use load::{Overrides, Sources};
pub use refresh::{
    Login, RefreshConfig, RefreshLogin, Secret, WarmParam, WarmQuery, WarmingConfig,
};
pub use rules::{Rules, Verdict};
pub use upstream_url::{SslMode, UpstreamTarget, UpstreamUrlError};
pub use validate::{ConfigErrors, ConfigIssue};

/// Default client listener: PgBouncer's usual port, loopback only until configured.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 6432);
/// Default admin HTTP listener.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9187);
/// Default upstream: a Postgres on this machine.
pub const DEFAULT_UPSTREAM_URL: &str = "postgres://127.0.0.1:5432";
/// Default largest client message: 256 MiB, comfortably above what drivers send in practice
/// while still bounding one session's buffer.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// The whole configuration, as deserialized from TOML. Every section defaults as a whole, so an
/// empty file (or none) is a working configuration against a local Postgres.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub admin: AdminConfig,
    pub cache: CacheConfig,
    pub catalog: CatalogSection,
    pub invalidation: InvalidationConfig,
    pub functions: FunctionsConfig,
    pub rules: Vec<Rule>,
    pub refresh: RefreshConfig,
    pub behind: BehindConfig,
    pub warm: Vec<WarmQuery>,
    pub warming: WarmingConfig,
    pub log: LogConfig,
}

/// The client-facing listener and per-connection limits.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address clients connect to.
    pub listen: SocketAddr,
    /// Maximum concurrent client connections; the excess get SQLSTATE 53300.
    pub max_client_connections: usize,
    /// Largest single protocol message accepted from a client (bytes); larger → 08P01.
    pub max_message_bytes: usize,
    /// Time a client has to finish TLS negotiation and send its startup packet.
    #[serde(with = "humantime_serde")]
    pub startup_timeout: Duration,
    /// On SIGTERM/SIGINT, how long sessions may finish their transaction before 57P01.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Threads that run client sessions, each an event loop of its own; 0 = one per CPU.
    pub worker_threads: usize,
    /// Pin one worker per CPU (Linux, when there are as many workers as CPUs) and let each
    /// session move to the worker on its client's CPU.
    pub pin_workers: bool,
    /// Client-leg TLS; absent = SSLRequest answered 'N'.
    pub tls: Option<TlsConfig>,
}

/// Client-leg TLS files (`[server.tls]`); both are required when the section is present.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain presented to clients.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Refuse client sessions that did not negotiate TLS (PostgreSQL sees pgmemo's address,
    /// so its `hostssl` rules cannot tell how a client reached pgmemo). Needs a restart.
    #[serde(default)]
    pub require: bool,
}

/// The real PostgreSQL server.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// `postgres://[user[:password]@]host[:port][/dbname][?sslmode=...&sslrootcert=...]`.
    /// host/port: where client sessions are relayed; user/password/dbname: pgmemo's own side
    /// connections only.
    pub url: String,
    /// TCP + TLS connect timeout for every upstream connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

/// The admin HTTP server.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin HTTP server (/healthz, /readyz, /metrics, /api/*).
    pub listen: SocketAddr,
    /// Roles that may use the admin console (the virtual database `pgmemo` on the client
    /// port), once PostgreSQL has accepted their login. Empty: the console is off.
    pub roles: Vec<String>,
    /// Bearer token (`Authorization: Bearer <token>`) every request but a GET or HEAD must
    /// carry, and so must the GETs that disclose values or configuration
    /// (`/behind/dead-letters`, `/api/config`); also `PGMEMO_ADMIN_TOKEN`. Required when
    /// `listen` is not a loopback address. Reloadable.
    pub token: Option<Secret>,
    /// Host names (no port) the admin server answers to besides IP literals and `localhost`:
    /// any other `Host` header gets 421 (against DNS rebinding), but on `/healthz` and
    /// `/readyz`. Reloadable.
    pub allowed_hosts: Vec<String>,
    /// The admin console's own password (a plaintext ASCII password, or a SCRAM-SHA-256
    /// verifier as PostgreSQL stores it); also `PGMEMO_ADMIN_PASSWORD`. Set: pgmemo checks
    /// console logins itself (SCRAM-SHA-256) instead of PostgreSQL. Absent: PostgreSQL does.
    pub password: Option<Secret>,
    /// Per-statement-shape statistics (`GET /api/queries`).
    pub query_stats: bool,
    /// Bytes the statistics table may hold; the least valuable shapes are evicted beyond.
    pub query_stats_bytes: cache::ByteSize,
}

/// The shared Redis tier (`[cache.redis]`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://` or `unix://` (socket path); `rediss://` (TLS) is refused: not built in. With `cluster`, one seed
    /// node of the cluster.
    pub url: String,
    /// The URL names a Redis Cluster node; `cluster_nodes` are further seeds.
    pub cluster: bool,
    pub cluster_nodes: Vec<String>,
    /// Prefix of every key (`pgmemo:NAMESPACE:...`): deployments sharing one Redis must use
    /// different namespaces.
    pub namespace: String,
    /// `strict`: every lookup reads the current versions from Redis; `fast`: a local mirror
    /// kept by pub/sub.
    pub consistency: RedisConsistency,
    /// Bound on every Redis call on a client's path.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Results at least this large are LZ4-compressed in Redis.
    pub compress_min: cache::ByteSize,
    /// Results waiting to be written to Redis at most (beyond: dropped, counted).
    pub write_queue: usize,
}

/// `cache.redis.consistency`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisConsistency {
    #[default]
    Strict,
    Fast,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            cluster: false,
            cluster_nodes: Vec::new(),
            namespace: "default".to_owned(),
            consistency: RedisConsistency::Strict,
            timeout: Duration::from_millis(50),
            compress_min: cache::ByteSize(1024),
            write_queue: 1024,
        }
    }
}

/// Logging, installed by the binary at start-up (`log.level` also on SIGHUP).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// tracing EnvFilter directive, e.g. "info" or "pgmemo=debug". RUST_LOG overrides it.
    pub level: String,
    /// "text" or "json".
    pub format: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN,
            max_client_connections: 1000,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            startup_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(30),
            worker_threads: 0,
            pin_workers: true,
            tls: None,
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            url: DEFAULT_UPSTREAM_URL.to_owned(),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Default `admin.query_stats_bytes`: 8 MiB, a few thousand statement shapes.
pub const DEFAULT_QUERY_STATS_BYTES: u64 = 8 << 20;

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_ADMIN_LISTEN,
            roles: Vec::new(),
            token: None,
            allowed_hosts: Vec::new(),
            password: None,
            query_stats: true,
            query_stats_bytes: cache::ByteSize(DEFAULT_QUERY_STATS_BYTES),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: "text".to_owned(),
        }
    }
}

/// What a redacted secret or password reads as.
pub const REDACTED: &str = "********";

impl Config {
    /// A copy safe to print or log: passwords inside `upstream.url` and `cache.redis.url`, and
    /// `cache.secret`, are replaced by `********` (used by `--print-config`). The passwords of
    /// `[[refresh.logins]]` are [`Secret`]s, which never print or serialize.
    pub fn redacted(&self) -> Config {
        let mut out = self.clone();
        if out.cache.secret.is_some() {
            out.cache.secret = Some(REDACTED.to_owned());
        }
        out.upstream.url = upstream_url::redact_password(&out.upstream.url);
        // `admin.token` is a `Secret`: it serializes redacted on its own.
        if let Some(redis) = out.cache.redis.as_mut() {
            redis.url = upstream_url::redact_password(&redis.url);
            for node in &mut redis.cluster_nodes {
                *node = upstream_url::redact_password(node);
            }
        }
        out
    }

    /// The merged configuration as TOML, passwords redacted (what `--print-config` prints).
    pub fn to_toml_redacted(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(&self.redacted())
    }

    /// The upstream URL, parsed. Only fails on a config that did not pass [`Config::validate`].
    pub fn upstream_target(&self) -> Result<UpstreamTarget, UpstreamUrlError> {
        UpstreamTarget::parse(&self.upstream.url)
    }
}
