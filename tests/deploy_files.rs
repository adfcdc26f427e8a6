//! Deployment files stay consistent with the binary: docker-compose.yml (pgmemo's environment,
//! health check, dependencies, the config file it mounts, which must allow the host name
//! Prometheus scrapes; Postgres with logical WAL), the Dockerfile (release build of
//! `--bin pgmemo`, exposed ports, non-root, default flags), .dockerignore and .ci/run. Docker
//! itself is not available here, so these are static checks.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use serde_norway::Value;

/// Environment variables the pgmemo binary reads (the CLI contract in issue 2 / README).
const ACCEPTED_ENV: &[&str] = &[
    "PGMEMO_LISTEN",
    "PGMEMO_UPSTREAM",
    "PGMEMO_ADMIN_LISTEN",
    "PGMEMO_REDIS",
    "PGMEMO_SECRET",
    "PGMEMO_CONFIG",
    "PGMEMO_ADMIN_TOKEN",
];

/// Runs the real binary with exactly `env` (plus PATH) and `args`; returns (success, stdout,
/// stderr).
fn run_pgmemo(env: &BTreeMap<String, String>, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgmemo"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env)
        .args(args)
        .output()
        .expect("could not run the pgmemo binary");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The README's test command; CI must run exactly this.
const TEST_COMMAND: &str = "scripts/test";
/// What `scripts/test` runs once the tools are installed.
const SUITE_COMMAND: &str = "cargo nextest run --all-targets --no-fail-fast";

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn compose() -> Value {
    serde_norway::from_str(&read("docker-compose.yml")).expect("docker-compose.yml is not YAML")
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose
        .get("services")
        .and_then(|s| s.get(name))
        .unwrap_or_else(|| panic!("docker-compose.yml has no service {name:?}"))
}

fn as_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

/// A service's `environment`, in either the map or the `KEY=value` list form.
fn environment(svc: &Value) -> BTreeMap<String, String> {
    match svc.get("environment") {
        Some(Value::Mapping(m)) => m.iter().map(|(k, v)| (as_str(k), as_str(v))).collect(),
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|item| {
                let item = as_str(item);
                let (k, v) = item.split_once('=').unwrap_or((item.as_str(), ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        None => BTreeMap::new(),
        Some(other) => panic!("environment must be a map or list, got {other:?}"),
    }
}

/// A `command`/`test` field as a list of words (a plain string is split on whitespace).
fn words(v: &Value) -> Vec<String> {
    match v {
        Value::Sequence(items) => items.iter().map(as_str).collect(),
        other => as_str(other)
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
    }
}

fn pgmemo_admin_addr(env: &BTreeMap<String, String>) -> SocketAddr {
    env.get("PGMEMO_ADMIN_LISTEN")
        .expect("pgmemo service sets PGMEMO_ADMIN_LISTEN")
        .parse()
        .expect("PGMEMO_ADMIN_LISTEN is not ip:port")
}

#[test]
fn pgmemo_service_uses_only_accepted_env_vars() {
    let compose = compose();
    let env = environment(service(&compose, "pgmemo"));
    for key in env.keys() {
        assert!(
            ACCEPTED_ENV.contains(&key.as_str()),
            "pgmemo service sets {key}, which the binary does not read"
        );
    }
    // The binary's own help names every variable it reads (`[env: NAME=...]`).
    let (ok, help, stderr) = run_pgmemo(&BTreeMap::new(), &["--help"]);
    assert!(ok, "pgmemo --help failed: {stderr}");
    for name in ACCEPTED_ENV {
        assert!(
            help.contains(&format!("[env: {name}")),
            "pgmemo --help does not list {name}:\n{help}"
        );
    }
    for required in ["PGMEMO_UPSTREAM", "PGMEMO_LISTEN", "PGMEMO_ADMIN_LISTEN"] {
        assert!(
            env.contains_key(required),
            "pgmemo service lacks {required}"
        );
    }
    // Listening inside a container must be on all interfaces to be reachable.
    let listen: SocketAddr = env["PGMEMO_LISTEN"].parse().unwrap();
    assert!(listen.ip().is_unspecified(), "{listen}");
    assert!(pgmemo_admin_addr(&env).ip().is_unspecified());
}

#[test]
fn pgmemo_points_at_the_compose_services() {
    let compose = compose();
    let pgmemo = service(&compose, "pgmemo");
    let env = environment(pgmemo);
    let upstream = url::Url::parse(&env["PGMEMO_UPSTREAM"]).unwrap();
    assert!(matches!(upstream.scheme(), "postgres" | "postgresql"));
    assert_eq!(upstream.host_str(), Some("postgres"));
    assert_eq!(upstream.port(), Some(5432));
    // The password in the URL must be the one the postgres service is started with.
    let pg_env = environment(service(&compose, "postgres"));
    assert_eq!(
        upstream.password(),
        pg_env.get("POSTGRES_PASSWORD").map(String::as_str)
    );
    if let Some(redis) = env.get("PGMEMO_REDIS") {
        // A shared tier needs the deployment secret; compose must demand it from the user
        // rather than ship a well-known one (it authenticates what Redis returns).
        let secret = env
            .get("PGMEMO_SECRET")
            .expect("PGMEMO_SECRET with PGMEMO_REDIS");
        assert!(
            secret.starts_with("${PGMEMO_SECRET:?"),
            "PGMEMO_SECRET must be required from the environment, got {secret}"
        );
        let redis = url::Url::parse(redis).unwrap();
        assert_eq!(redis.host_str(), Some("redis"));
        service(&compose, "redis");
    }
    let depends = pgmemo.get("depends_on").expect("pgmemo has depends_on");
    for dep in ["postgres", "redis"] {
        let condition = depends.get(dep).and_then(|d| d.get("condition"));
        assert_eq!(
            condition.map(as_str).as_deref(),
            Some("service_healthy"),
            "pgmemo must wait for {dep} to be healthy"
        );
    }
    assert!(
        pgmemo.get("build").is_some(),
        "pgmemo is built from the Dockerfile"
    );
}

#[test]
fn pgmemo_healthcheck_hits_readyz_on_the_admin_port() {
    let compose = compose();
    let pgmemo = service(&compose, "pgmemo");
    let env = environment(pgmemo);
    let admin = pgmemo_admin_addr(&env);
    let test = words(
        pgmemo
            .get("healthcheck")
            .and_then(|h| h.get("test"))
            .expect("pgmemo has a healthcheck"),
    );
    let url = format!("http://127.0.0.1:{}/readyz", admin.port());
    assert!(
        test.contains(&url),
        "healthcheck {test:?} does not request {url}"
    );
    assert!(test.iter().any(|w| w == "curl"), "{test:?}");
    // -f makes curl fail on the 503 that /readyz returns when not ready.
    assert!(
        test.iter().any(|w| w.starts_with('-') && w.contains('f')),
        "{test:?}"
    );

    let ports: Vec<String> = pgmemo
        .get("ports")
        .and_then(Value::as_sequence)
        .expect("pgmemo publishes ports")
        .iter()
        .map(as_str)
        .collect();
    let listen: SocketAddr = env["PGMEMO_LISTEN"].parse().unwrap();
    for port in [listen.port(), admin.port()] {
        assert!(
            ports.iter().any(|p| p.ends_with(&format!(":{port}"))),
            "port {port} not published: {ports:?}"
        );
    }
    // On the host's loopback only: a demonstration must not open the proxy and the
    // token-less admin GETs to every network the host is on.
    for p in &ports {
        assert!(
            p.starts_with("127.0.0.1:"),
            "published beyond loopback: {p}"
        );
    }
}

#[test]
fn postgres_runs_with_logical_wal_and_pg_stat_statements() {
    let compose = compose();
    let postgres = service(&compose, "postgres");
    assert!(as_str(postgres.get("image").unwrap()).starts_with("postgres:"));
    let command = words(postgres.get("command").expect("postgres has a command"));
    let settings: Vec<&str> = command
        .windows(2)
        .filter(|w| w[0] == "-c")
        .map(|w| w[1].as_str())
        .collect();
    assert!(settings.contains(&"wal_level=logical"), "{command:?}");
    assert!(
        settings
            .iter()
            .any(|s| s.starts_with("shared_preload_libraries=") && s.contains("pg_stat_statements")),
        "{command:?}"
    );
    let check = words(
        postgres
            .get("healthcheck")
            .and_then(|h| h.get("test"))
            .unwrap(),
    );
    assert!(check.iter().any(|w| w.contains("pg_isready")), "{check:?}");

    let redis = service(&compose, "redis");
    let check = words(
        redis
            .get("healthcheck")
            .and_then(|h| h.get("test"))
            .unwrap(),
    );
    assert!(check.iter().any(|w| w == "ping"), "{check:?}");
    let command = words(redis.get("command").unwrap());
    assert!(
        command
            .windows(2)
            .any(|w| w == ["--maxmemory-policy", "noeviction"])
    );
}

/// The compose environment, and the image's default flags, are configurations the binary
/// accepts: `--print-config` loads and validates them exactly as start-up would.
#[test]
fn compose_environment_and_image_flags_are_valid_configs() {
    let compose = compose();
    let mut env = environment(service(&compose, "pgmemo"));
    // What compose substitutes for a variable it requires from the user's environment.
    for value in env.values_mut() {
        if value.starts_with("${PGMEMO_SECRET:?") {
            *value = "00112233445566778899aabbccddeeff".into();
        }
        if value.starts_with("${PGMEMO_ADMIN_TOKEN:?") {
            *value = "an-admin-token-for-the-test".into();
        }
    }
    // The config file compose mounts, read from the repository instead.
    if let Some(in_container) = env.get("PGMEMO_CONFIG").cloned() {
        let on_host = mounted_file(service(&compose, "pgmemo"), &in_container);
        env.insert("PGMEMO_CONFIG".into(), on_host.display().to_string());
    }
    let (ok, config, stderr) = run_pgmemo(&env, &["--print-config"]);
    assert!(ok, "pgmemo rejects the compose environment: {stderr}");
    for key in ["PGMEMO_LISTEN", "PGMEMO_ADMIN_LISTEN"] {
        assert!(
            config.contains(&format!("\"{}\"", env[key])),
            "{key}:\n{config}"
        );
    }

    let all = dockerfile_instructions();
    let cmd = exec_form(instruction(&all, "CMD").last().expect("a default CMD"));
    let mut args: Vec<&str> = cmd.iter().map(String::as_str).collect();
    args.push("--print-config");
    // The image's admin address is not loopback: without a token pgmemo must refuse it,
    // with one (as the Dockerfile's header says to pass) it starts.
    let (ok, _, stderr) = run_pgmemo(&BTreeMap::new(), &args);
    assert!(!ok && stderr.contains("admin.token"), "{stderr}");
    let token = BTreeMap::from([(
        "PGMEMO_ADMIN_TOKEN".to_owned(),
        "an-admin-token-for-the-test".to_owned(),
    )]);
    let (ok, _, stderr) = run_pgmemo(&token, &args);
    assert!(
        ok,
        "pgmemo rejects the image's default flags {cmd:?}: {stderr}"
    );
}

/// The repository file a service mounts at `in_container` (a `./relative:/absolute[:ro]`
/// entry of its `volumes`); panics if there is none or it does not exist.
fn mounted_file(svc: &Value, in_container: &str) -> std::path::PathBuf {
    let volumes: Vec<String> = svc
        .get("volumes")
        .and_then(Value::as_sequence)
        .map(|v| v.iter().map(as_str).collect())
        .unwrap_or_default();
    let source = volumes
        .iter()
        .find_map(|v| {
            let mut parts = v.split(':');
            let source = parts.next()?;
            (parts.next()? == in_container).then_some(source)
        })
        .unwrap_or_else(|| panic!("no volume mounts {in_container}: {volumes:?}"));
    let relative = source
        .strip_prefix("./")
        .unwrap_or_else(|| panic!("{source} is not a path in the repository"));
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    assert!(path.is_file(), "{} does not exist", path.display());
    path
}

/// Prometheus scrapes pgmemo by its service name, so the config file compose gives pgmemo
/// must allow that name (else every scrape gets 421); the file is a valid pgmemo config.
#[test]
fn compose_mounts_a_config_that_allows_the_scraped_name() {
    let compose = compose();
    let pgmemo = service(&compose, "pgmemo");
    let env = environment(pgmemo);
    let in_container = env
        .get("PGMEMO_CONFIG")
        .expect("the pgmemo service names its config file with PGMEMO_CONFIG");
    let file = mounted_file(pgmemo, in_container);
    assert!(
        pgmemo
            .get("volumes")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .map(as_str)
            .any(|v| v.ends_with(&format!("{in_container}:ro"))),
        "mount the config read-only"
    );
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let config: pgmemo::config::Config =
        toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let (ok, _, stderr) = run_pgmemo(
        &BTreeMap::new(),
        &["check-config", &file.display().to_string()],
    );
    assert!(ok, "{}: {stderr}", file.display());

    let prometheus: Value =
        serde_norway::from_str(&read("config/prometheus.yml")).expect("prometheus.yml is YAML");
    let targets: Vec<String> = prometheus["scrape_configs"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|job| {
            job["static_configs"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .flat_map(|sc| sc["targets"].as_sequence().cloned().unwrap_or_default())
        .map(|t| as_str(&t))
        .collect();
    assert!(!targets.is_empty(), "prometheus.yml scrapes nothing");
    let admin = pgmemo_admin_addr(&env);
    for target in targets {
        let (host, port) = target.rsplit_once(':').expect("host:port target");
        assert_eq!(port, admin.port().to_string(), "{target}");
        assert!(
            host.parse::<std::net::IpAddr>().is_ok()
                || config.admin.allowed_hosts.iter().any(|h| h == host),
            "Prometheus scrapes {target} but admin.allowed_hosts is {:?}",
            config.admin.allowed_hosts
        );
        assert!(
            service(&compose, host).get("build").is_some(),
            "{target} is pgmemo"
        );
    }
}

/// Dockerfile instructions with line continuations joined and comments dropped.
fn dockerfile_instructions() -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in read("Dockerfile").lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

fn instruction<'a>(all: &'a [String], keyword: &str) -> Vec<&'a str> {
    all.iter()
        .filter_map(|i| {
            let (word, rest) = i.split_once(char::is_whitespace)?;
            word.eq_ignore_ascii_case(keyword).then_some(rest.trim())
        })
        .collect()
}

/// A JSON-array (exec form) instruction argument.
fn exec_form(arg: &str) -> Vec<String> {
    serde_json::from_str(arg).unwrap_or_else(|e| panic!("{arg:?} is not exec form: {e}"))
}

#[test]
fn dockerfile_builds_the_binary_and_runs_it_unprivileged() {
    let all = dockerfile_instructions();
    let from = instruction(&all, "FROM");
    assert_eq!(
        from.len(),
        2,
        "multi-stage: builder + runtime, got {from:?}"
    );
    assert!(from[0].starts_with("rust:"), "{from:?}");
    assert!(from[1].starts_with("debian:"), "{from:?}");

    let build = instruction(&all, "RUN")
        .into_iter()
        .find(|r| r.contains("cargo build"))
        .expect("a RUN with cargo build");
    for flag in ["--release", "--locked", "--bin pgmemo"] {
        assert!(build.contains(flag), "cargo build lacks {flag}: {build}");
    }

    let exposed: Vec<&str> = instruction(&all, "EXPOSE")
        .into_iter()
        .flat_map(str::split_whitespace)
        .collect();
    for port in ["6432", "9187"] {
        assert!(exposed.contains(&port), "EXPOSE lacks {port}: {exposed:?}");
    }

    let user = instruction(&all, "USER");
    let user = user.last().expect("runtime stage sets USER");
    let name = user.split(':').next().unwrap_or_default();
    assert!(name != "root" && name != "0", "runs as {user}");

    let entrypoint = instruction(&all, "ENTRYPOINT");
    assert_eq!(exec_form(entrypoint.last().unwrap()), ["pgmemo"]);
}

/// Flags beat environment variables, so the image's default flags must agree with the
/// compose environment (which normally clears them with `command: []`).
#[test]
fn dockerfile_default_flags_agree_with_compose() {
    let all = dockerfile_instructions();
    let cmd = exec_form(instruction(&all, "CMD").last().expect("a default CMD"));
    let flag = |name: &str| {
        cmd.windows(2)
            .find(|w| w[0] == name)
            .map(|w| w[1].clone())
            .unwrap_or_else(|| panic!("CMD lacks {name}: {cmd:?}"))
    };
    let compose = compose();
    let env = environment(service(&compose, "pgmemo"));
    assert_eq!(flag("--listen"), env["PGMEMO_LISTEN"]);
    assert_eq!(flag("--admin-listen"), env["PGMEMO_ADMIN_LISTEN"]);
    let admin = pgmemo_admin_addr(&env);
    // The image's own HEALTHCHECK (used by `docker run`) probes the same admin port.
    let health = instruction(&all, "HEALTHCHECK");
    let health = health.last().expect("a HEALTHCHECK");
    assert!(
        health.contains(&format!("http://127.0.0.1:{}/readyz", admin.port())),
        "{health}"
    );
}

#[test]
fn dockerignore_keeps_build_output_and_git_out() {
    let ignore = read(".dockerignore");
    let entries: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.trim_start_matches('/').trim_end_matches('/'))
        .collect();
    for required in ["target", ".git"] {
        assert!(
            entries.contains(&required),
            "{required} not in .dockerignore"
        );
    }
}

fn assert_executable(rel: &str) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
        let mode = std::fs::metadata(path).unwrap().permissions().mode();
        assert!(mode & 0o111 != 0, "{rel} is not executable");
    }
}

#[test]
fn ci_script_runs_the_readme_test_command() {
    let readme = read("README.md");
    assert!(
        readme.contains(&format!("```sh\n{TEST_COMMAND}\n```")),
        "the README's test command is not `{TEST_COMMAND}`"
    );
    let script = read(".ci/run");
    assert!(script.starts_with("#!"), "no shebang");
    assert!(script.contains("set -euo pipefail"));
    for check in [
        "cargo fmt --all -- --check",
        "cargo clippy --all-targets -- -D warnings",
        &format!("step \"tests\" {TEST_COMMAND}"),
    ] {
        assert!(script.contains(check), ".ci/run does not run `{check}`");
    }
    assert_executable(".ci/run");
    let test = read(TEST_COMMAND);
    assert!(test.starts_with("#!"), "no shebang");
    assert!(test.contains("set -euo pipefail"));
    assert!(
        test.contains(&format!("exec {SUITE_COMMAND} \"$@\"")),
        "{TEST_COMMAND} does not end in `{SUITE_COMMAND}`"
    );
    assert_executable(TEST_COMMAND);
}
