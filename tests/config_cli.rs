//! The configuration command line, through the built binary: `check-config`, flag / env / file
//! precedence (observed with `--print-config`), error messages, and the README's configuration
//! reference and example file checked against the config types so they cannot drift.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pgmemo::config::{
    Config, FunctionWrites, RedisConfig, RefreshLogin, Rule, Secret, TlsConfig, WarmParam,
    WarmQuery, WritePolicy,
};

const ENV_VARS: [&str; 6] = [
    "PGMEMO_CONFIG",
    "PGMEMO_LISTEN",
    "PGMEMO_UPSTREAM",
    "PGMEMO_ADMIN_LISTEN",
    "PGMEMO_REDIS",
    "RUST_LOG",
];

/// The binary with a clean environment (no inherited PGMEMO_* variables), plus `env`.
fn pgmemo(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgmemo"));
    for var in ENV_VARS {
        cmd.env_remove(var);
    }
    cmd.args(args).envs(env.iter().copied());
    cmd.output().expect("run pgmemo")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write_config(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("pgmemo.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

#[test]
fn check_config_accepts_a_valid_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        &dir,
        "[server]\nlisten = \"0.0.0.0:7432\"\nstartup_timeout = \"2s\"\n\
         [upstream]\nurl = \"postgresql://me:p%40ss@[::1]:5433/app?sslmode=require\"\n\
         [cache]\nsecret = \"00112233445566778899aabbccddeeff\"\n\
         [cache.redis]\nurl = \"redis://127.0.0.1:6379\"\n[log]\nformat = \"json\"\n",
    );
    let out = pgmemo(&["check-config", file.to_str().unwrap()], &[]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out).trim(), format!("ok: {}", file.display()));
}

#[test]
fn check_config_names_unknown_keys_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        &dir,
        "colour = \"blue\"\n[server]\nlisten = \"127.0.0.1:6432\"\nmax_connections = 10\n",
    );
    let out = pgmemo(&["check-config", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    let location = |line: u32| format!("{}:{line}", file.display());
    assert!(err.contains("colour = \"blue\": unknown key"), "{err}");
    assert!(err.contains(&location(1)), "{err}");
    assert!(
        err.contains("server.max_connections = 10: unknown key"),
        "{err}"
    );
    assert!(err.contains(&location(4)), "{err}");
    // The message offers the real names.
    assert!(err.contains("max_client_connections"), "{err}");
    assert!(stdout(&out).is_empty());
}

#[test]
fn check_config_reports_every_bad_value_with_key_value_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        &dir,
        "[server]\nlisten = \"localhost:6432\"\nmax_client_connections = 0\n\
         [upstream]\nurl = \"postgres://u:hunter2@db/app?sslmode=sometimes\"\n\
         [admin]\nlisten = \"127.0.0.1:9187\"\n",
    );
    let out = pgmemo(&["check-config", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    for expected in [
        "server.listen = \"localhost:6432\": invalid socket address",
        "server.max_client_connections = 0: must be at least 1",
        "upstream.url = \"postgres://u:********@db/app?sslmode=sometimes\": sslmode `sometimes` \
         is not one of disable, allow, prefer, require, verify-ca, verify-full",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    assert!(!err.contains("hunter2"), "password leaked:\n{err}");
}

#[test]
fn check_config_rejects_a_malformed_upstream_url() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(&dir, "[upstream]\nurl = \"mysql://db:3306\"\n");
    let out = pgmemo(&["check-config", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("upstream.url = \"mysql://db:3306\": scheme must be postgres://"),
        "{err}"
    );
}

#[test]
fn check_config_reports_syntax_errors_with_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(&dir, "[server]\nlisten = \"127.0.0.1:6432\n");
    let out = pgmemo(&["check-config", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains(&format!("{}:2:", file.display())), "{err}");
    assert!(err.contains("invalid TOML"), "{err}");
}

#[test]
fn check_config_ignores_flags_env_and_reports_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(&dir, "");
    let hostile = [
        ("PGMEMO_LISTEN", "garbage"),
        ("PGMEMO_UPSTREAM", "mysql://x"),
        ("PGMEMO_CONFIG", "/no/such/file.toml"),
    ];
    let out = pgmemo(&["check-config", file.to_str().unwrap()], &hostile);
    assert!(out.status.success(), "stderr: {}", stderr(&out));

    let missing = dir.path().join("absent.toml");
    let out = pgmemo(&["check-config", missing.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("absent.toml"), "{}", stderr(&out));
}

#[test]
fn check_config_reports_rule_problems_with_their_number_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        &dir,
        "[cache]\nmax_memory = \"512KiB\"\n\
         [[rules]]\ntable = \"orders\"\ncache = false\n\
         [[rules]]\ntabel = \"accounts\"\nallow_rls = true\nttl = \"0s\"\n",
    );
    let out = pgmemo(&["check-config", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    for expected in [
        format!(
            "rules[2].tabel = \"accounts\": unknown key ({}:7)",
            file.display()
        ),
        "rules[2].ttl = \"0s\": a rule with allow_rls = true needs a TTL above 0".to_owned(),
        "cache.max_memory = 524288: must be at least 1 MiB".to_owned(),
    ] {
        assert!(err.contains(&expected), "missing {expected:?} in:\n{err}");
    }
    assert!(!err.contains("rules[1]"), "the first rule is fine:\n{err}");
}

#[test]
fn check_config_accepts_sizes_with_units_and_rules() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        &dir,
        "[cache]\nmax_memory = \"64MiB\"\nmax_entry_size = 262144\nttl = \"0s\"\n\
         [[rules]]\ntable = \"Public.Orders\"\nttl = \"5s\"\n\
         [[rules]]\nquery = \"SELECT % FROM report_%\"\nrole = \"bi\"\ncache = false\n",
    );
    let out = pgmemo(&["check-config", file.to_str().unwrap()], &[]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let printed = printed(&["--config", file.to_str().unwrap()], &[]);
    assert_eq!(printed.cache.max_memory.0, 64 << 20);
    assert_eq!(printed.rules.len(), 2);
    assert_eq!(printed.rules[1].cache, Some(false));
}

#[test]
fn check_config_reports_function_writes_problems_with_their_number_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        &dir,
        "[functions]\nno_side_effects = [\"public.gen_id\"]\n\
         [[functions.writes]]\nfunction = \"public.counters_audit_fn\"\n\
         tables = [\"public.counters_audit\"]\n\
         [[functions.writes]]\nfunction = \"public.gen_id\"\ntables = [\"public.ids\"]\n\
         [[functions.writes]]\nfunction = \"public.other_fn\"\ntabels = [\"public.x\"]\n",
    );
    let out = pgmemo(&["check-config", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    for expected in [
        format!(
            "functions.writes[3].tabels = [\"public.x\"]: unknown key ({}:11)",
            file.display()
        ),
        "functions.writes[2].function = \"public.gen_id\": is also in \
         functions.no_side_effects"
            .to_owned(),
        "functions.writes[3].tables = []: must list every table".to_owned(),
    ] {
        assert!(err.contains(&expected), "missing {expected:?} in:\n{err}");
    }
    assert!(
        !err.contains("writes[1]"),
        "the first entry is fine:\n{err}"
    );

    let good = write_config(
        &dir,
        "[[functions.writes]]\nfunction = \"public.counters_audit_fn\"\n\
         tables = [\"public.counters_audit\", \"\\\"Audit\\\".\\\"Log\\\"\"]\n",
    );
    let out = pgmemo(&["check-config", good.to_str().unwrap()], &[]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let printed = printed(&["--config", good.to_str().unwrap()], &[]);
    assert_eq!(
        printed
            .functions
            .declared_writes("public.counters_audit_fn"),
        Some(
            &[
                "public.counters_audit".to_owned(),
                "\"Audit\".\"Log\"".to_owned()
            ][..]
        )
    );
}

/// `--print-config` output, parsed back.
fn printed(args: &[&str], env: &[(&str, &str)]) -> Config {
    let mut all = vec!["--print-config"];
    all.extend_from_slice(args);
    let out = pgmemo(&all, env);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    toml::from_str(&stdout(&out)).expect("print-config output parses as a Config")
}

#[test]
fn precedence_flags_then_env_then_file_then_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        &dir,
        "[server]\nlisten = \"127.0.0.1:7001\"\nmax_client_connections = 42\n\
         [upstream]\nurl = \"postgres://file-host\"\n",
    );
    let file = file.to_str().unwrap();

    let defaults = printed(&[], &[]);
    assert_eq!(defaults, Config::default());

    let from_file = printed(&["--config", file], &[]);
    assert_eq!(from_file.server.listen.port(), 7001);
    assert_eq!(from_file.server.max_client_connections, 42);
    assert_eq!(from_file.upstream.url, "postgres://file-host");
    assert_eq!(from_file.admin.listen, Config::default().admin.listen);

    // The file can come from the environment too.
    assert_eq!(printed(&[], &[("PGMEMO_CONFIG", file)]), from_file);

    let env = [
        ("PGMEMO_LISTEN", "127.0.0.1:7002"),
        ("PGMEMO_UPSTREAM", "postgres://env-host"),
        ("PGMEMO_ADMIN_LISTEN", "127.0.0.1:7003"),
        ("PGMEMO_REDIS", "redis://env-redis"),
        ("PGMEMO_SECRET", "00112233445566778899aabbccddeeff"),
    ];
    let from_env = printed(&["--config", file], &env);
    assert_eq!(from_env.server.listen.port(), 7002);
    assert_eq!(from_env.upstream.url, "postgres://env-host");
    assert_eq!(from_env.admin.listen.port(), 7003);
    assert_eq!(from_env.cache.redis.unwrap().url, "redis://env-redis");
    assert!(from_env.cache.secret.is_some(), "PGMEMO_SECRET");
    assert_eq!(
        from_env.server.max_client_connections, 42,
        "file still applies"
    );

    let flags = [
        "--config",
        file,
        "--listen",
        "127.0.0.1:7004",
        "--upstream",
        "postgres://flag-host",
        "--admin-listen",
        "127.0.0.1:7005",
        "--redis",
        "redis://flag-redis",
    ];
    let from_flags = printed(&flags, &env);
    assert_eq!(from_flags.server.listen.port(), 7004);
    assert_eq!(from_flags.upstream.url, "postgres://flag-host");
    assert_eq!(from_flags.admin.listen.port(), 7005);
    assert_eq!(from_flags.cache.redis.unwrap().url, "redis://flag-redis");

    // An empty variable is unset, not an invalid value.
    let empty = printed(&[], &[("PGMEMO_REDIS", ""), ("PGMEMO_CONFIG", "")]);
    assert_eq!(empty, Config::default());
}

#[test]
fn print_config_redacts_passwords() {
    let out = pgmemo(
        &[
            "--print-config",
            "--upstream",
            "postgres://me:hunter2@db/app",
            "--redis",
            "redis://:hunter2@cache:6379",
        ],
        &[("PGMEMO_SECRET", "00112233445566778899aabbccddeeff")],
    );
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    assert!(!text.contains("hunter2"), "{text}");
    assert!(!text.contains("00112233445566778899aabbccddeeff"), "{text}");
    assert!(text.contains("postgres://me:********@db/app"), "{text}");
}

#[test]
fn main_command_refuses_an_invalid_configuration() {
    let out = pgmemo(
        &[
            "--listen",
            "not-an-address",
            "--admin-listen",
            "127.0.0.1:9",
        ],
        &[("PGMEMO_UPSTREAM", "postgres://h/?sslmod=require")],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("server.listen = \"not-an-address\": from --listen / PGMEMO_LISTEN"),
        "{err}"
    );
    let out = pgmemo(&[], &[("PGMEMO_UPSTREAM", "postgres://h/?sslmod=require")]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains(
            "upstream.url = \"postgres://h/?sslmod=require\": unknown query parameter `sslmod`"
        ),
        "{err}"
    );
}

/// Tables whose keys are the user's names (setting names), not configuration keys: one key.
const NAME_TABLES: [&str; 1] = ["warm.settings"];

/// Every dotted leaf key under `table`. The keys of an array of tables (`[[rules]]`) are
/// named after the array (`rules.table`), as in the README; other arrays, and the tables of
/// [`NAME_TABLES`], are leaves.
fn leaf_keys(prefix: &str, table: &toml::Table, out: &mut BTreeSet<String>) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(inner) if !NAME_TABLES.contains(&path.as_str()) => {
                leaf_keys(&path, inner, out)
            }
            toml::Value::Array(items)
                if !items.is_empty() && items.iter().all(toml::Value::is_table) =>
            {
                for inner in items.iter().filter_map(toml::Value::as_table) {
                    leaf_keys(&path, inner, out);
                }
            }
            _ => {
                out.insert(path);
            }
        }
    }
}

/// The keys the config types accept: every optional section and field filled in (a superset
/// of the defaults), with one entry that sets every field of each array of tables.
fn type_keys() -> BTreeSet<String> {
    let mut full = Config::default();
    full.server.tls = Some(TlsConfig {
        cert: "cert.pem".into(),
        key: "key.pem".into(),
        require: false,
    });
    full.cache.redis = Some(RedisConfig {
        url: "redis://127.0.0.1".into(),
        ..RedisConfig::default()
    });
    full.cache.secret = Some("00112233445566778899aabbccddeeff".into());
    full.admin.token = Some(pgmemo::config::Secret::new("an-admin-token-0123456789"));
    full.admin.password = Some(pgmemo::config::Secret::new("a-console-password"));
    full.invalidation.cdc_publication = Some("mypub".into());
    full.functions.writes = vec![FunctionWrites {
        function: "public.f".into(),
        tables: vec!["public.t".into()],
    }];
    full.functions.reads = full.functions.writes.clone();
    full.rules = vec![Rule {
        table: Some("t".into()),
        database: Some("d".into()),
        role: Some("r".into()),
        query: Some("SELECT 1".into()),
        cache: Some(true),
        ttl: Some(std::time::Duration::from_secs(1)),
        allow_stable_functions: Some(true),
        allow_rls: Some(true),
        write: Some(WritePolicy::Through),
        refresh_ahead: Some(0.5),
        refresh_adaptive: Some(true),
        behind_flush_interval: Some(std::time::Duration::from_millis(100)),
        behind_max_batch: Some(10),
        behind_increments: Some(true),
        behind_coalesce: Some(true),
    }];
    full.behind.journal_dir = Some("journal".into());
    full.behind.queue = Some(pgmemo::config::QueueKind::Journal);
    full.refresh.logins = vec![RefreshLogin {
        user: "app".into(),
        password: Some(Secret::new("pw")),
        password_env: Some("APP_PASSWORD".into()),
        env_password: None,
    }];
    full.warm = vec![WarmQuery {
        sql: "SELECT $1".into(),
        params: vec![WarmParam(Some("1".into()))],
        database: Some("d".into()),
        role: Some("r".into()),
        settings: [("search_path".to_owned(), "public".to_owned())].into(),
    }];
    full.warming.hot_keys_file = Some("hot-keys".into());
    let mut keys = BTreeSet::new();
    leaf_keys("", &toml::Table::try_from(&full).unwrap(), &mut keys);
    keys
}

#[test]
fn readme_reference_lists_exactly_the_config_keys() {
    let readme = std::fs::read_to_string(repo_file("README.md")).unwrap();
    let start = readme
        .find("<!-- config-reference:start -->")
        .expect("start marker");
    let end = readme
        .find("<!-- config-reference:end -->")
        .expect("end marker");
    let section = &readme[start..end];
    let mut documented = BTreeSet::new();
    for line in section.lines() {
        let Some(first_cell) = line.strip_prefix("| `") else {
            continue;
        };
        let key = first_cell.split('`').next().unwrap().to_owned();
        // Rows of other tables (e.g. sslmode values) have no dot; config keys always do.
        if key.contains('.') {
            assert!(documented.insert(key.clone()), "{key} documented twice");
        }
    }
    let expected = type_keys();
    let undocumented: Vec<_> = expected.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&expected).collect();
    assert!(
        undocumented.is_empty() && stale.is_empty(),
        "README config reference out of date: missing {undocumented:?}, not config keys {stale:?}"
    );
    assert_eq!(
        expected.len(),
        93,
        "update this count with the types: {expected:?}"
    );
}

#[test]
fn example_config_is_valid_and_mentions_every_key() {
    let path = repo_file("config/pgmemo.example.toml");
    let out = pgmemo(&["check-config", path.to_str().unwrap()], &[]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let text = std::fs::read_to_string(&path).unwrap();
    // Its active keys are the defaults, so it documents them faithfully.
    assert_eq!(toml::from_str::<Config>(&text).unwrap(), Config::default());
    // Optional sections are shown commented out; uncommented, every key is there.
    let uncommented: String = text
        .lines()
        .map(|line| {
            let rest = line.strip_prefix("# ").unwrap_or(line);
            let is_toml = rest.starts_with('[')
                || rest
                    .split_once(" = ")
                    .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
            if is_toml { rest } else { "" }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let table: toml::Table = toml::from_str(&uncommented).unwrap();
    let mut keys = BTreeSet::new();
    leaf_keys("", &table, &mut keys);
    assert_eq!(keys, type_keys());
}
