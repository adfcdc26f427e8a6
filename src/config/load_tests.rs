//! Unit tests for layering and file checking (kept beside `load.rs` to keep both files short).

use super::*;
use crate::config::ByteSize;
use std::time::Duration;

pub(super) fn write(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("pgmemo.toml");
    std::fs::write(&path, text).unwrap();
    path
}

pub(super) fn issues(text: &str) -> Vec<ConfigIssue> {
    from_toml_str(text, "test.toml").unwrap_err().issues
}

#[test]
fn no_file_means_defaults() {
    assert_eq!(Sources::default().load().unwrap(), Config::default());
}

#[test]
fn precedence_overrides_then_file_then_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        &dir,
        r#"
[server]
listen = "127.0.0.1:7000"
max_client_connections = 7
[upstream]
url = "postgres://file-host:5433"
"#,
    );
    let mut sources = Sources {
        file: Some(file),
        overrides: Overrides::default(),
    };
    let from_file = sources.load().unwrap();
    assert_eq!(from_file.server.listen.port(), 7000);
    assert_eq!(from_file.server.max_client_connections, 7);
    assert_eq!(from_file.upstream.url, "postgres://file-host:5433");
    // Untouched keys keep their defaults.
    assert_eq!(from_file.admin, Config::default().admin);
    assert_eq!(from_file.server.startup_timeout, Duration::from_secs(10));

    sources.overrides = Overrides {
        listen: Some("127.0.0.1:7001".parse().unwrap()),
        upstream: Some("postgres://flag-host".into()),
        admin_listen: Some("127.0.0.1:7002".parse().unwrap()),
        redis: Some("redis://127.0.0.1:6380".into()),
        secret: Some("0123456789abcdef0123456789abcdef".into()),
        admin_token: Some("token-from-the-environment".into()),
        admin_password: Some("password-from-the-environment".into()),
    };
    let merged = sources.load().unwrap();
    assert_eq!(
        merged.admin.token.as_ref().map(|t| t.expose()),
        Some("token-from-the-environment")
    );
    assert_eq!(
        merged.admin.password.as_ref().map(|t| t.expose()),
        Some("password-from-the-environment")
    );
    assert_eq!(
        merged.cache.secret.as_deref(),
        Some("0123456789abcdef0123456789abcdef"),
        "PGMEMO_SECRET"
    );
    assert_eq!(merged.server.listen.port(), 7001);
    assert_eq!(merged.upstream.url, "postgres://flag-host");
    assert_eq!(merged.admin.listen.port(), 7002);
    assert_eq!(
        merged.cache.redis,
        Some(RedisConfig {
            url: "redis://127.0.0.1:6380".into(),
            ..RedisConfig::default()
        })
    );
    // A key no override names still comes from the file.
    assert_eq!(merged.server.max_client_connections, 7);
}

#[test]
fn load_rereads_the_file_each_call() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir, "[server]\nmax_client_connections = 5\n");
    let sources = Sources {
        file: Some(file.clone()),
        overrides: Overrides::default(),
    };
    assert_eq!(sources.load().unwrap().server.max_client_connections, 5);
    std::fs::write(&file, "[server]\nmax_client_connections = 6\n").unwrap();
    assert_eq!(sources.load().unwrap().server.max_client_connections, 6);
}

#[test]
fn overrides_are_validated_too() {
    let sources = Sources {
        file: None,
        overrides: Overrides {
            upstream: Some("mysql://h".into()),
            redis: Some("http://h".into()),
            secret: None,
            ..Overrides::default()
        },
    };
    let keys: Vec<String> = sources
        .load()
        .unwrap_err()
        .issues
        .into_iter()
        .map(|i| i.key)
        .collect();
    assert_eq!(keys, ["upstream.url", "cache.redis.url", "cache.secret"]);
}

#[test]
fn missing_file_is_an_issue() {
    let sources = Sources {
        file: Some("/no/such/pgmemo.toml".into()),
        overrides: Overrides::default(),
    };
    let err = sources.load().unwrap_err();
    assert_eq!(err.issues.len(), 1);
    assert_eq!(err.issues[0].key, "config file");
    assert!(err.issues[0].value.contains("/no/such/pgmemo.toml"));
}

#[test]
fn oversized_or_binary_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.toml");
    std::fs::write(&path, vec![b'#'; 2 * 1024 * 1024]).unwrap();
    let sources = Sources {
        file: Some(path.clone()),
        overrides: Overrides::default(),
    };
    let err = sources.load().unwrap_err();
    assert!(err.issues[0].why.contains("larger than"), "{err}");
    std::fs::write(&path, b"[server]\n\xff\xfe").unwrap();
    let err = sources.load().unwrap_err();
    assert!(err.issues[0].why.contains("not UTF-8"), "{err}");
}

#[test]
fn every_unknown_key_is_named_with_its_line() {
    let got = issues(
        "bogus = 1\n[server]\nlisten = \"127.0.0.1:6000\"\nmax_conections = 5\n[server.tls.extra]\nx = 1\n[nope]\ny = 2\n",
    );
    let keys: Vec<&str> = got.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "bogus",
            "server.max_conections",
            "server.tls.cert",
            "server.tls.key",
            "server.tls.extra",
            "nope"
        ]
    );
    assert!(
        got[0].why.starts_with("unknown key (test.toml:1)"),
        "{:?}",
        got[0]
    );
    assert_eq!(got[0].value, "1");
    assert!(
        got[1].why.starts_with("unknown key (test.toml:4)"),
        "{:?}",
        got[1]
    );
    assert!(
        got[1].why.contains("`max_client_connections`"),
        "{:?}",
        got[1]
    );
    assert_eq!(got[1].value, "5");
    assert!(
        got[2].why.contains("required when [server.tls]"),
        "{:?}",
        got[2]
    );
    assert!(
        got[4].why.contains("unknown key (test.toml:5)"),
        "{:?}",
        got[4]
    );
    assert!(got[5].why.contains("test.toml:7"), "{:?}", got[5]);
}

#[test]
fn unknown_key_inside_an_optional_section() {
    let got = issues("[cache.redis]\nurl = \"redis://h\"\npool = 3\n");
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].key, "cache.redis.pool");
    assert!(got[0].why.contains("unknown key (test.toml:3)"));
    assert_eq!(got[1].key, "cache.secret", "a shared tier needs the secret");
}

#[test]
fn type_errors_name_key_value_and_line() {
    let got = issues(
        "[server]\nlisten = \"localhost\"\nmax_client_connections = \"many\"\nstartup_timeout = 10\nshutdown_timeout = \"soon\"\n",
    );
    let shown: Vec<(&str, &str)> = got
        .iter()
        .map(|i| (i.key.as_str(), i.value.as_str()))
        .collect();
    assert_eq!(
        shown,
        [
            ("server.listen", "\"localhost\""),
            ("server.max_client_connections", "\"many\""),
            ("server.startup_timeout", "10"),
            ("server.shutdown_timeout", "\"soon\""),
        ]
    );
    assert!(got[0].why.contains("socket address"), "{:?}", got[0]);
    assert!(got[0].why.ends_with("(test.toml:2)"), "{:?}", got[0]);
    assert!(
        got[2].why.contains("\"10s\""),
        "duration hint: {:?}",
        got[2]
    );
    assert!(got[3].why.contains("test.toml:5"), "{:?}", got[3]);
}

#[test]
fn file_problems_and_validation_problems_come_together() {
    let got = issues("[server]\nmax_client_connections = 0\nlisten = 5\n[log]\nformat = \"xml\"\n");
    let keys: Vec<&str> = got.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "server.listen",
            "server.max_client_connections",
            "log.format"
        ]
    );
}

#[test]
fn missing_required_key_in_optional_section() {
    let got = issues("[server.tls]\ncert = \"c.pem\"\n");
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].key, "server.tls.key");
    assert_eq!(got[0].value, "(missing)");
    assert!(got[0].why.contains("[server.tls]"), "{:?}", got[0]);
}

#[test]
fn section_of_the_wrong_type() {
    let got = issues("server = 5\nlog = \"debug\"\n[upstream.url]\nhost = \"h\"\n");
    let keys: Vec<&str> = got.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(keys, ["server", "log", "upstream.url"]);
}

#[test]
fn syntax_errors_give_file_line_and_column() {
    let got = issues("[server]\nlisten = \"127.0.0.1:6432\nmax_client_connections = 3\n");
    assert!(!got.is_empty());
    assert!(got[0].key.starts_with("test.toml:2:"), "{:?}", got[0]);
    assert!(got[0].value.contains("listen"), "{:?}", got[0]);
    assert!(got[0].why.starts_with("invalid TOML"), "{:?}", got[0]);
    let dup = issues("[log]\nlevel = \"info\"\nlevel = \"debug\"\n");
    assert!(dup[0].key.starts_with("test.toml:3:"), "{dup:?}");
}

#[test]
fn passwords_never_appear_in_issues() {
    let got =
        issues("[upstream]\nurl = \"mysql://u:hunter2@h\"\nbogus = \"postgres://u:hunter2@h\"\n");
    assert_eq!(got.len(), 2);
    for issue in got {
        assert!(!issue.to_string().contains("hunter2"), "{issue}");
    }
}

#[test]
fn debug_of_overrides_hides_passwords() {
    let o = Overrides {
        upstream: Some("postgres://u:hunter2@h".into()),
        redis: Some("redis://:hunter2@h".into()),
        secret: Some("0123456789abcdef0123456789abcdef".into()),
        admin_token: Some("hunter2-admin-token".into()),
        admin_password: Some("hunter2-admin-password".into()),
        ..Overrides::default()
    };
    assert!(!format!("{o:?}").contains("hunter2"));
    assert!(!format!("{o:?}").contains("0123456789abcdef"));
}

#[test]
fn a_full_file_round_trips_through_print_config() {
    let mut config = Config::default();
    config.server.max_client_connections = 12;
    config.server.startup_timeout = Duration::from_millis(1500);
    config.cache.redis = Some(RedisConfig {
        url: "redis://127.0.0.1:6379".into(),
        ..RedisConfig::default()
    });
    config.cache.secret = Some("0123456789abcdef0123456789abcdef".into());
    config.cache.l1.enabled = false;
    config.cache.max_memory = ByteSize(3 << 20);
    config.cache.ttl = Duration::from_millis(2500);
    config.catalog.poll_interval = Duration::from_secs(1);
    config.functions.no_side_effects = vec!["public.gen_id".into()];
    config.rules = vec![
        Rule {
            table: Some("public.orders".into()),
            ttl: Some(Duration::from_secs(90)),
            allow_rls: Some(true),
            ..Rule::default()
        },
        Rule {
            query: Some("SELECT % FROM t".into()),
            cache: Some(false),
            ..Rule::default()
        },
    ];
    let text = config.to_toml_redacted().unwrap();
    assert!(
        !text.contains("0123456789abcdef"),
        "the secret is redacted: {text}"
    );
    // Everything else reads back as it was (the secret put back by hand).
    let text = text.replace(
        &format!("secret = \"{}\"", crate::config::REDACTED),
        "secret = \"0123456789abcdef0123456789abcdef\"",
    );
    assert_eq!(from_toml_str(&text, "printed").unwrap(), config);
}

#[test]
fn cache_sections_load_with_sizes_in_either_form() {
    let config = from_toml_str(
        r#"
[cache]
enabled = false
max_memory = "64MiB"
max_entry_size = 65536
ttl = "0s"
fill_wait_timeout = "250ms"
secret = "00112233445566778899aabbccddeeff"
[catalog]
poll_interval = "2s"
[functions]
no_side_effects = ["public.uuid_generate_v4"]
"#,
        "test.toml",
    )
    .unwrap();
    assert!(!config.cache.enabled);
    assert_eq!(config.cache.max_memory, ByteSize(64 << 20));
    assert_eq!(config.cache.max_entry_size, ByteSize(65536));
    assert_eq!(config.cache.ttl, Duration::ZERO);
    assert_eq!(config.cache.fill_wait_timeout, Duration::from_millis(250));
    assert_eq!(config.catalog.poll_interval, Duration::from_secs(2));
    assert_eq!(
        config.functions.no_side_effects,
        ["public.uuid_generate_v4"]
    );
    for (written, bytes) in [
        ("\"1 MiB\"", 1 << 20),
        ("\"2GiB\"", 2 << 30),
        ("\"3MB\"", 3_000_000),
        ("\"4194304\"", 4 << 20),
        ("\"8000kB\"", 8_000_000),
        ("2097152", 2 << 20),
    ] {
        let config = from_toml_str(&format!("[cache]\nmax_memory = {written}\n"), "t").unwrap();
        assert_eq!(config.cache.max_memory, ByteSize(bytes), "{written}");
    }
}

#[test]
fn bad_sizes_name_key_value_and_line() {
    let got = issues(
        "[cache]\nmax_memory = \"lots\"\nmax_entry_size = \"1.5MiB\"\n\
         enabled = true\nmax_memory = 1\n",
    );
    // A duplicate key is a syntax error; check the type errors on their own.
    assert!(got[0].why.starts_with("invalid TOML"), "{got:?}");
    let got = issues(
        "[cache]\nmax_memory = \"lots\"\nmax_entry_size = \"1.5MiB\"\nenabled = true\n\
         [catalog]\npoll_interval = -5\n",
    );
    let shown: Vec<(&str, &str)> = got
        .iter()
        .map(|i| (i.key.as_str(), i.value.as_str()))
        .collect();
    assert_eq!(
        shown,
        [
            ("cache.max_memory", "\"lots\""),
            ("cache.max_entry_size", "\"1.5MiB\""),
            ("catalog.poll_interval", "-5"),
        ]
    );
    assert!(got[0].why.contains("not a size"), "{:?}", got[0]);
    assert!(got[0].why.ends_with("(test.toml:2)"), "{:?}", got[0]);
    assert!(
        got[1].why.contains("unknown size unit `.5mib`"),
        "{:?}",
        got[1]
    );
    assert!(
        got[2].why.contains("\"10s\""),
        "duration hint: {:?}",
        got[2]
    );
    let got = issues("[cache]\nmax_memory = true\nmax_entry_size = -1\n");
    assert!(
        got[0].why.contains("a size: bytes as an integer"),
        "{:?}",
        got[0]
    );
    assert!(got[1].why.contains("cannot be negative"), "{:?}", got[1]);
}
