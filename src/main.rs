//! The `pgmemo` binary: parses the command line, loads the configuration, starts tracing and
//! runs the library's server until SIGTERM/SIGINT. Everything else lives in the library.

// As in the library: no unwrap, expect or unchecked indexing outside tests.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::ffi::OsString;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pgmemo::config::{ConfigErrors, ConfigIssue, Overrides, Sources};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// Exit status for an invalid configuration (the same as clap's usage errors).
const EXIT_BAD_CONFIG: u8 = 2;

/// A caching proxy for PostgreSQL.
///
/// Flags beat PGMEMO_* environment variables, which beat the config file, which beats the
/// built-in defaults.
#[derive(Debug, Parser)]
#[command(name = "pgmemo", version, about)]
struct Cli {
    /// TOML configuration file
    // OsString rather than PathBuf: clap refuses an empty PathBuf, and an empty PGMEMO_CONFIG
    // should mean "no file" like the other variables.
    #[arg(long, env = "PGMEMO_CONFIG", value_name = "FILE")]
    config: Option<OsString>,
    /// Address clients connect to (server.listen), e.g. 0.0.0.0:6432
    #[arg(long, env = "PGMEMO_LISTEN", value_name = "ADDR")]
    listen: Option<String>,
    /// Upstream PostgreSQL URL (upstream.url), e.g. postgres://db:5432?sslmode=require
    #[arg(
        long,
        env = "PGMEMO_UPSTREAM",
        value_name = "URL",
        hide_env_values = true
    )]
    upstream: Option<String>,
    /// Admin HTTP address (admin.listen), e.g. 127.0.0.1:9187
    #[arg(long, env = "PGMEMO_ADMIN_LISTEN", value_name = "ADDR")]
    admin_listen: Option<String>,
    /// Redis URL for the shared cache (cache.redis.url), e.g. redis://127.0.0.1:6379
    #[arg(long, env = "PGMEMO_REDIS", value_name = "URL", hide_env_values = true)]
    redis: Option<String>,
    /// Cache key secret (cache.secret), 32 hex digits; needed with Redis. Prefer the
    /// environment variable: a flag shows in the process list
    #[arg(
        long,
        env = "PGMEMO_SECRET",
        value_name = "HEX",
        hide_env_values = true
    )]
    secret: Option<String>,
    /// Bearer token the admin server's writes, /api/config and /behind/dead-letters require
    /// (admin.token). Prefer the environment variable: a flag shows in the process list
    #[arg(
        long,
        env = "PGMEMO_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    admin_token: Option<String>,
    /// The admin console's own password (admin.password): console logins are then checked
    /// by pgmemo (SCRAM-SHA-256), not PostgreSQL. Prefer the environment variable
    #[arg(
        long,
        env = "PGMEMO_ADMIN_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    admin_password: Option<String>,
    /// Print the merged configuration as TOML (passwords redacted) and exit
    #[arg(long)]
    print_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate FILE on its own (defaults + FILE; flags and environment are ignored): prints
    /// `ok: FILE` and exits 0, or prints every problem as `key = value: why` and exits 2
    CheckConfig {
        /// The TOML file to check
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::CheckConfig { file }) = &cli.command {
        return check_config(file);
    }
    let sources = match sources(&cli) {
        Ok(sources) => sources,
        Err(errors) => return config_failure(None, &errors),
    };
    let config = match sources.load() {
        Ok(config) => config,
        Err(errors) => return config_failure(sources.file.as_deref(), &errors),
    };
    if cli.print_config {
        return match config.to_toml_redacted() {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("pgmemo: cannot print the configuration: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let log_level = init_tracing(&config.log.level, &config.log.format);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("pgmemo: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _counted = pgmemo::telemetry::runtimes::register("main", runtime.handle().clone());
    let result = runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        // Every background task, the two below included, is named and waited for at exit.
        let tasks = pgmemo::tasks::Tasks::new();
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let token = shutdown.clone();
        tasks.spawn("shutdown-signals", async move {
            let name = tokio::select! {
                _ = terminate.recv() => "SIGTERM",
                _ = interrupt.recv() => "SIGINT",
            };
            tracing::info!(signal = name, "shutting down");
            token.cancel();
        });
        if let Some(handle) = log_level {
            let hangup = signal(SignalKind::hangup())?;
            tasks.spawn(
                "sighup-log-level",
                reload_log_level(sources.clone(), handle, hangup, shutdown.clone()),
            );
        }
        pgmemo::server::run(sources, shutdown, tasks).await?;
        Ok::<(), Box<dyn std::error::Error>>(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut message = e.to_string();
            let mut cause = e.source();
            while let Some(inner) = cause {
                message.push_str(": ");
                message.push_str(&inner.to_string());
                cause = inner.source();
            }
            tracing::error!(error = %message, "pgmemo stopped with an error");
            eprintln!("pgmemo: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `pgmemo check-config FILE`: defaults + FILE, nothing from flags or the environment, so the
/// answer is about the file alone.
fn check_config(file: &Path) -> ExitCode {
    let sources = Sources {
        file: Some(file.to_path_buf()),
        overrides: Overrides::default(),
    };
    match sources.load() {
        Ok(_) => {
            println!("ok: {}", file.display());
            ExitCode::SUCCESS
        }
        Err(errors) => config_failure(Some(file), &errors),
    }
}

fn config_failure(file: Option<&Path>, errors: &ConfigErrors) -> ExitCode {
    let count = errors.issues.len();
    let plural = if count == 1 { "" } else { "s" };
    match file {
        Some(file) => eprintln!(
            "pgmemo: {count} configuration problem{plural} ({}):",
            file.display()
        ),
        None => eprintln!("pgmemo: {count} configuration problem{plural}:"),
    }
    for issue in &errors.issues {
        eprintln!("  {issue}");
    }
    ExitCode::from(EXIT_BAD_CONFIG)
}

/// Flags and env become [`Overrides`]. Addresses arrive as strings so a bad one is reported
/// like any other configuration problem (key, value, why) rather than as a usage error, and so
/// a stray `PGMEMO_LISTEN` cannot break `check-config`.
fn sources(cli: &Cli) -> Result<Sources, ConfigErrors> {
    let mut issues = Vec::new();
    let mut addr = |raw: &Option<String>, key: &str, origin: &str| {
        let raw = given(raw)?;
        match raw.trim().parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(e) => {
                issues.push(ConfigIssue::new(
                    key,
                    format!("{raw:?}"),
                    format!("from {origin}: {e}; write IP:PORT such as \"127.0.0.1:6432\""),
                ));
                None
            }
        }
    };
    let listen = addr(&cli.listen, "server.listen", "--listen / PGMEMO_LISTEN");
    let admin_listen = addr(
        &cli.admin_listen,
        "admin.listen",
        "--admin-listen / PGMEMO_ADMIN_LISTEN",
    );
    if !issues.is_empty() {
        return Err(issues.into());
    }
    Ok(Sources {
        file: cli
            .config
            .as_ref()
            .filter(|p| !p.is_empty())
            .map(PathBuf::from),
        overrides: Overrides {
            listen,
            upstream: given(&cli.upstream).map(str::to_owned),
            admin_listen,
            redis: given(&cli.redis).map(str::to_owned),
            secret: given(&cli.secret).map(str::to_owned),
            admin_token: given(&cli.admin_token).map(str::to_owned),
            admin_password: given(&cli.admin_password).map(str::to_owned),
        },
    })
}

/// An empty value counts as not given, so `PGMEMO_REDIS=` in a compose file means "no Redis"
/// rather than an invalid URL.
fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.trim().is_empty())
}

type LevelHandle = reload::Handle<EnvFilter, Registry>;

/// Installs the global subscriber on stderr (stdout stays free for `--print-config`).
/// `RUST_LOG`, when set, replaces `log.level`; otherwise the returned handle lets SIGHUP apply
/// a new `log.level`.
fn init_tracing(level: &str, format: &str) -> Option<LevelHandle> {
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| match EnvFilter::builder().parse(&v) {
            Ok(filter) => Some(filter),
            Err(e) => {
                eprintln!("pgmemo: ignoring RUST_LOG={v:?} ({e}); using log.level");
                None
            }
        });
    let env_wins = from_env.is_some();
    // log.level was validated by Config::validate, so the lossy parse drops nothing.
    let filter = from_env.unwrap_or_else(|| EnvFilter::builder().parse_lossy(level));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    // Colour only for a person at a terminal, not in captured logs.
    let ansi = std::io::stderr().is_terminal();
    let installed = if format == "json" {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    };
    if let Err(e) = installed {
        eprintln!("pgmemo: cannot install the log subscriber: {e}");
    }
    (!env_wins).then_some(handle)
}

/// Applies a changed `log.level` on SIGHUP. The server reloads the rest of the configuration
/// on the same signal and reports invalid files; this task only follows a valid one.
async fn reload_log_level(
    sources: Sources,
    handle: LevelHandle,
    mut hangup: tokio::signal::unix::Signal,
    shutdown: CancellationToken,
) {
    let mut current = sources.load().map(|c| c.log.level).unwrap_or_default();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            received = hangup.recv() => {
                if received.is_none() {
                    return;
                }
            }
        }
        let Ok(config) = sources.load() else {
            continue;
        };
        if config.log.level == current {
            continue;
        }
        current = config.log.level.clone();
        let filter = EnvFilter::builder().parse_lossy(&config.log.level);
        match handle.reload(filter) {
            Ok(()) => tracing::info!(level = %config.log.level, "log level reloaded"),
            Err(e) => tracing::warn!(error = %e, "cannot reload the log level"),
        }
    }
}
