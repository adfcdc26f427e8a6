//! Unit tests for the checks of refresh-ahead rules, `[refresh]`, `[[warm]]` and `[warming]`
//! (`validate/refresh.rs`, `check_refresh_ahead` in `validate/functions.rs`).

use super::tests::{issue_for, keys};
use super::*;
use crate::config::{RefreshConfig, RefreshLogin, Secret, WarmParam, WarmQuery};

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn with_rule(f: impl FnOnce(&mut Rule)) -> Config {
    let mut rule = Rule {
        table: Some("t".into()),
        ..Rule::default()
    };
    f(&mut rule);
    Config {
        rules: vec![rule],
        ..Config::default()
    }
}

#[test]
fn refresh_ahead_is_a_fraction_below_one() {
    for (fraction, ok) in [
        (0.0, true),
        (0.5, true),
        (0.99, true),
        (1.0, false),
        (1.5, false),
        (-0.1, false),
        (f64::NAN, false),
        (f64::INFINITY, false),
    ] {
        let c = with_rule(|r| r.refresh_ahead = Some(fraction));
        assert_eq!(c.validate().is_ok(), ok, "{fraction}");
    }
    let c = with_rule(|r| r.refresh_ahead = Some(1.0));
    let i = issue_for(&c, "rules[1].refresh_ahead");
    assert_eq!(i.value, "1");
    assert!(
        i.why.contains("from 0 (off) up to, not including, 1"),
        "{i}"
    );
    assert_eq!(keys(c.validate()), ["rules[1].refresh_ahead"]);
}

#[test]
fn refresh_ahead_is_refused_beside_cache_false() {
    for fraction in [0.0, 0.5] {
        let c = with_rule(|r| {
            r.refresh_ahead = Some(fraction);
            r.cache = Some(false);
        });
        let i = issue_for(&c, "rules[1].refresh_ahead");
        assert!(i.why.contains("cache = false stores nothing"), "{i}");
        assert_eq!(keys(c.validate()), ["rules[1].refresh_ahead"]);
    }
    with_rule(|r| {
        r.refresh_ahead = Some(0.5);
        r.cache = Some(true);
    })
    .validate()
    .unwrap();
}

#[test]
fn refresh_ahead_needs_a_finite_ttl() {
    let c = with_rule(|r| {
        r.refresh_ahead = Some(0.5);
        r.ttl = Some(Duration::ZERO);
    });
    let i = issue_for(&c, "rules[1].refresh_ahead");
    assert!(i.why.contains("needs a TTL above 0"), "{i}");
    assert!(!i.why.contains("give the rule a ttl"), "{i}");
    // No ttl of its own: cache.ttl decides.
    let mut c = with_rule(|r| r.refresh_ahead = Some(0.5));
    c.validate().unwrap();
    c.cache.ttl = Duration::ZERO;
    let i = issue_for(&c, "rules[1].refresh_ahead");
    assert!(
        i.why.contains("cache.ttl = \"0s\", so give the rule a ttl"),
        "{i}"
    );
    c.rules[0].ttl = Some(Duration::from_secs(30));
    c.validate().unwrap();
    // 0 (off) means nothing to refresh: fine with any TTL.
    with_rule(|r| {
        r.refresh_ahead = Some(0.0);
        r.ttl = Some(Duration::ZERO);
    })
    .validate()
    .unwrap();
}

#[test]
fn refresh_adaptive_needs_refresh_ahead_in_the_same_rule() {
    for (ahead, adaptive, ok) in [
        (None, true, false),
        (None, false, false),
        (Some(0.0), true, false),
        (Some(0.5), true, true),
        (Some(0.5), false, true),
    ] {
        let c = with_rule(|r| {
            r.refresh_ahead = ahead;
            r.refresh_adaptive = Some(adaptive);
        });
        assert_eq!(c.validate().is_ok(), ok, "{ahead:?} {adaptive}");
        if !ok {
            let i = issue_for(&c, "rules[1].refresh_adaptive");
            assert_eq!(i.value, adaptive.to_string());
            assert!(i.why.contains("only beside refresh_ahead above 0"), "{i}");
        }
    }
}

#[test]
fn refresh_pool_and_budgets_are_bounded() {
    let mut c = Config::default();
    assert_eq!(c.refresh.pool_size, 4);
    assert_eq!(c.refresh.time_budget, Duration::from_millis(100));
    for (n, ok) in [(0, false), (1, true), (64, true), (65, false)] {
        c.refresh.pool_size = n;
        assert_eq!(c.validate().is_ok(), ok, "pool_size {n}");
    }
    c.refresh.pool_size = 0;
    assert!(
        issue_for(&c, "refresh.pool_size")
            .why
            .contains("between 1 and 64")
    );
    let mut c = Config::default();
    c.refresh.query_timeout = Duration::ZERO;
    c.refresh.idle_timeout = Duration::from_millis(10);
    c.refresh.time_budget = Duration::from_secs(11);
    assert_eq!(
        keys(c.validate()),
        [
            "refresh.query_timeout",
            "refresh.idle_timeout",
            "refresh.time_budget"
        ]
    );
    assert!(
        issue_for(&c, "refresh.time_budget")
            .why
            .contains("between 1ms and 10s")
    );
    c.refresh.query_timeout = Duration::from_millis(1);
    c.refresh.idle_timeout = Duration::from_secs(1);
    c.refresh.time_budget = Duration::from_secs(10);
    c.validate().unwrap();
    c.refresh.time_budget = Duration::ZERO;
    assert_eq!(keys(c.validate()), ["refresh.time_budget"]);
}

#[test]
fn max_share_is_a_fraction() {
    let mut c = Config::default();
    for (share, ok) in [
        (0.0, true),
        (0.1, true),
        (1.0, true),
        (-0.1, false),
        (1.1, false),
        (f64::NAN, false),
    ] {
        c.refresh.max_share = share;
        assert_eq!(c.validate().is_ok(), ok, "{share}");
    }
}

fn login(user: &str) -> RefreshLogin {
    RefreshLogin {
        user: user.into(),
        password: None,
        password_env: None,
        env_password: None,
    }
}

#[test]
fn logins_are_checked() {
    let mut c = Config::default();
    c.refresh.logins = vec![
        login("app"),
        RefreshLogin {
            password: Some(Secret::new("pw")),
            ..login("reporting")
        },
        RefreshLogin {
            password_env: Some("REPORTING_PASSWORD".into()),
            ..login("batch")
        },
    ];
    c.validate().unwrap();
    c.refresh.logins = vec![
        login(""),
        login("app"),
        login("app"),
        RefreshLogin {
            password: Some(Secret::new("hunter2")),
            password_env: Some("P".into()),
            ..login("both")
        },
        RefreshLogin {
            password: Some(Secret::new("")),
            ..login("empty")
        },
        RefreshLogin {
            password_env: Some("1BAD-NAME".into()),
            ..login("env")
        },
        login(&"x".repeat(64)),
    ];
    let err = c.validate().unwrap_err();
    let shown: Vec<(&str, &str)> = err
        .issues
        .iter()
        .map(|i| (i.key.as_str(), i.value.as_str()))
        .collect();
    let long = format!("\"{}\"", "x".repeat(64));
    assert_eq!(
        shown,
        [
            ("refresh.logins[1].user", "\"\""),
            ("refresh.logins[3].user", "\"app\""),
            ("refresh.logins[4].password_env", "\"P\""),
            ("refresh.logins[5].password", "\"\""),
            ("refresh.logins[6].password_env", "\"1BAD-NAME\""),
            ("refresh.logins[7].user", long.as_str()),
        ]
    );
    assert!(
        err.issues[1]
            .why
            .contains("already listed by refresh.logins[2]")
    );
    assert!(err.issues[2].why.contains("not both"));
    assert!(!err.to_string().contains("hunter2"), "{err}");
    let mut c = Config::default();
    c.refresh.logins = vec![login("a"); MAX_REFRESH_LOGINS + 1];
    assert!(keys(c.validate()).contains(&"refresh.logins".to_owned()));
}

#[test]
fn password_env_is_read_at_load_and_a_missing_variable_is_named() {
    let mut refresh = RefreshConfig {
        logins: vec![
            RefreshLogin {
                password_env: Some("APP_PW".into()),
                ..login("app")
            },
            RefreshLogin {
                password_env: Some("EMPTY_PW".into()),
                ..login("empty")
            },
            RefreshLogin {
                password_env: Some("MISSING_PW".into()),
                ..login("missing")
            },
            login("trusted"),
        ],
        ..RefreshConfig::default()
    };
    let env = |var: &str| match var {
        "APP_PW" => Some("s3cret".to_owned()),
        "EMPTY_PW" => Some(String::new()),
        _ => None,
    };
    let issues = refresh.resolve_passwords(env);
    let shown: Vec<(&str, &str)> = issues
        .iter()
        .map(|i| (i.key.as_str(), i.value.as_str()))
        .collect();
    assert_eq!(
        shown,
        [
            ("refresh.logins[2].password_env", "\"EMPTY_PW\""),
            ("refresh.logins[3].password_env", "\"MISSING_PW\""),
        ]
    );
    assert!(
        issues[1]
            .why
            .contains("environment variable `MISSING_PW` is not set"),
        "{}",
        issues[1]
    );
    let target = UpstreamTarget::parse("postgres://h/db").unwrap();
    let app = refresh.password_for("app", &target).unwrap();
    assert_eq!(app.password.as_ref().map(Secret::expose), Some("s3cret"));
    assert_eq!(
        format!("{app:?}"),
        "Login { user: \"app\", password: Some(***) }"
    );
    let trusted = refresh.password_for("trusted", &target).unwrap();
    assert_eq!(trusted.password, None);
}

#[test]
fn password_for_prefers_listed_logins_then_the_url_user() {
    let refresh = RefreshConfig {
        logins: vec![RefreshLogin {
            password: Some(Secret::new("listed")),
            ..login("owner")
        }],
        ..RefreshConfig::default()
    };
    let url = UpstreamTarget::parse("postgres://owner:fromurl@h/db").unwrap();
    let pw = |user: &str, target: &UpstreamTarget| {
        refresh
            .password_for(user, target)
            .map(|l| (l.user, l.password.map(|p| p.expose().to_owned())))
    };
    assert_eq!(
        pw("owner", &url),
        Some(("owner".into(), Some("listed".into())))
    );
    let other = UpstreamTarget::parse("postgres://pgmemo:fromurl@h/db").unwrap();
    assert_eq!(
        pw("pgmemo", &other),
        Some(("pgmemo".into(), Some("fromurl".into())))
    );
    assert_eq!(pw("stranger", &other), None);
    // A URL without a user: pgmemo's side connections log in as `postgres`.
    let bare = UpstreamTarget::parse("postgres://h").unwrap();
    assert_eq!(pw("postgres", &bare), Some(("postgres".into(), None)));
    assert_eq!(pw("pgmemo", &bare), None);
}

#[test]
fn passwords_never_print() {
    let mut c = Config::default();
    c.refresh.logins = vec![
        RefreshLogin {
            password: Some(Secret::new("hunter2")),
            ..login("app")
        },
        RefreshLogin {
            password_env: Some("PW".into()),
            env_password: Some(Secret::new("fromenv")),
            ..login("batch")
        },
    ];
    assert_eq!(format!("{:?}", Secret::new("hunter2")), "***");
    let debug = format!("{c:?}");
    let toml = c.to_toml_redacted().unwrap();
    for text in [&debug, &toml] {
        assert!(
            !text.contains("hunter2") && !text.contains("fromenv"),
            "{text}"
        );
    }
    assert!(toml.contains("password = \"********\""), "{toml}");
    assert!(toml.contains("password_env = \"PW\""), "{toml}");
}

fn warm(sql: &str) -> WarmQuery {
    WarmQuery {
        sql: sql.into(),
        params: Vec::new(),
        database: None,
        role: None,
        settings: Default::default(),
    }
}

fn with_warm(url: &str, entries: Vec<WarmQuery>) -> Config {
    let mut c = Config::default();
    c.upstream.url = url.into();
    c.warm = entries;
    c
}

#[test]
fn a_warm_query_is_one_cacheable_read() {
    let c = with_warm(
        "postgres://pgmemo@h/shop",
        vec![
            warm("SELECT * FROM products WHERE id = $1"),
            warm("  -- nothing\n"),
            warm("SELECT 1; SELECT 2"),
            warm("UPDATE products SET price = 0"),
            warm("SELECT now()"),
        ],
    );
    let err = c.validate().unwrap_err();
    let shown: Vec<(&str, &str)> = err
        .issues
        .iter()
        .map(|i| (i.key.as_str(), i.value.as_str()))
        .collect();
    assert_eq!(
        shown,
        [
            ("warm[2].sql", "\"-- nothing\""),
            ("warm[3].sql", "\"SELECT 1; SELECT 2\""),
            ("warm[4].sql", "\"UPDATE products SET price = 0\""),
            ("warm[5].sql", "\"SELECT now()\""),
        ]
    );
    assert!(err.issues[0].why.contains("not empty"), "{err}");
    assert!(
        err.issues[1]
            .why
            .contains("one [[warm]] entry per statement"),
        "{err}"
    );
    assert!(
        err.issues[2].why.contains("must be a read pgmemo caches"),
        "{err}"
    );
    let mut c = Config::default();
    c.upstream.url = "postgres://h/shop".into();
    c.warm = vec![warm("SELECT 1"); MAX_WARM_QUERIES + 1];
    assert_eq!(keys(c.validate()), ["warm"]);
}

#[test]
fn warm_params_are_bounded_text() {
    let mut entry = warm("SELECT $1::text");
    entry.params = vec![WarmParam(Some("a".into())), WarmParam(None)];
    let mut c = with_warm("postgres://h/shop", vec![entry.clone()]);
    c.validate().unwrap();
    c.warm[0].params.push(WarmParam(Some("a\0b".into())));
    assert_eq!(keys(c.validate()), ["warm[1].params"]);
    c.warm[0].params = vec![WarmParam(None); MAX_WARM_PARAMS + 1];
    assert!(
        issue_for(&c, "warm[1].params")
            .why
            .contains("at most 65535")
    );
}

#[test]
fn a_warm_query_needs_a_database() {
    let c = with_warm("postgres://h", vec![warm("SELECT 1")]);
    let i = issue_for(&c, "warm[1].database");
    assert_eq!(i.value, "(missing)");
    assert!(i.why.contains("upstream.url names no database"), "{i}");
    let mut c = with_warm("postgres://h", vec![warm("SELECT 1")]);
    c.warm[0].database = Some("shop".into());
    c.validate().unwrap();
    with_warm("postgres://h/shop", vec![warm("SELECT 1")])
        .validate()
        .unwrap();
    c.warm[0].database = Some(String::new());
    assert_eq!(keys(c.validate()), ["warm[1].database"]);
}

#[test]
fn a_warm_query_runs_as_a_role_pgmemo_can_log_in_as() {
    // Default role: the URL user, which always has a login.
    let mut c = with_warm("postgres://pgmemo:pw@h/shop", vec![warm("SELECT 1")]);
    c.validate().unwrap();
    c.warm[0].role = Some("pgmemo".into());
    c.validate().unwrap();
    c.warm[0].role = Some("app".into());
    let i = issue_for(&c, "warm[1].role");
    assert_eq!(i.value, "\"app\"");
    assert!(i.why.contains("no login for role `app`"), "{i}");
    assert!(i.why.contains("[[refresh.logins]]"), "{i}");
    c.refresh.logins = vec![login("app")];
    c.validate().unwrap();
    c.warm[0].role = Some(String::new());
    assert_eq!(keys(c.validate()), ["warm[1].role"]);
    // No user in the URL: `postgres`, as the side connections.
    let mut c = with_warm("postgres://h/shop", vec![warm("SELECT 1")]);
    c.validate().unwrap();
    c.warm[0].role = Some("app".into());
    assert_eq!(keys(c.validate()), ["warm[1].role"]);
}

#[test]
fn warm_settings_are_setting_names() {
    let mut c = with_warm("postgres://h/shop", vec![warm("SELECT 1")]);
    for (name, ok) in [
        ("search_path", true),
        ("work_mem", true),
        ("App.Tenant", true),
        ("plan_cache_mode", true),
        ("", false),
        ("1abc", false),
        ("a b", false),
        ("a..b", false),
        ("a.", false),
        ("search_path;", false),
        ("role", false),
        ("SESSION_AUTHORIZATION", false),
    ] {
        c.warm[0].settings = [(name.to_owned(), "x".to_owned())].into();
        assert_eq!(c.validate().is_ok(), ok, "{name:?}");
    }
    c.warm[0].settings = [("role".to_owned(), "admin".to_owned())].into();
    let i = issue_for(&c, "warm[1].settings");
    assert_eq!(i.value, "\"role\" = \"admin\"");
    assert!(i.why.contains("set the entry's `role` instead"), "{i}");
    c.warm[0].settings = [("x".repeat(64), "1".to_owned())].into();
    assert_eq!(keys(c.validate()), ["warm[1].settings"]);
    c.warm[0].settings = [("work_mem".to_owned(), "4\0MB".to_owned())].into();
    assert!(issue_for(&c, "warm[1].settings").why.contains("NUL"));
}

#[test]
fn warming_timeout_and_hot_keys_are_bounded() {
    let mut c = Config::default();
    assert!(c.warming.at_start);
    assert_eq!(c.warming.timeout, Duration::from_secs(30));
    c.warming.timeout = Duration::from_millis(10);
    assert_eq!(keys(c.validate()), ["warming.timeout"]);
    c.warming.timeout = Duration::from_secs(3601);
    assert_eq!(keys(c.validate()), ["warming.timeout"]);
    c.warming.timeout = Duration::from_secs(3600);
    c.cache.redis = Some(crate::config::RedisConfig {
        url: "redis://127.0.0.1".into(),
        ..Default::default()
    });
    c.cache.secret = Some(SECRET.into());
    c.warming.hot_keys = MAX_HOT_KEYS;
    c.validate().unwrap();
    c.warming.hot_keys = MAX_HOT_KEYS + 1;
    let i = issue_for(&c, "warming.hot_keys");
    assert!(i.why.contains("between 0 (off) and 100000"), "{i}");
}

#[test]
fn hot_keys_need_somewhere_to_live() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::default();
    c.warming.hot_keys = 100;
    let i = issue_for(&c, "warming.hot_keys_file");
    assert_eq!(i.value, "(missing)");
    assert!(
        i.why.contains("required with warming.hot_keys above 0"),
        "{i}"
    );
    // With Redis, the hot keys live there.
    c.cache.redis = Some(crate::config::RedisConfig {
        url: "redis://127.0.0.1".into(),
        ..Default::default()
    });
    c.cache.secret = Some(SECRET.into());
    c.validate().unwrap();
    // A file needs the secret that authenticates it, and its directory.
    let mut c = Config::default();
    c.warming.hot_keys = 100;
    c.warming.hot_keys_file = Some(dir.path().join("hot-keys"));
    let i = issue_for(&c, "warming.hot_keys_file");
    assert!(i.why.contains("needs cache.secret"), "{i}");
    c.cache.secret = Some(SECRET.into());
    c.validate().unwrap();
    c.warming.hot_keys_file = Some(dir.path().join("absent").join("hot-keys"));
    let i = issue_for(&c, "warming.hot_keys_file");
    assert!(i.why.contains("does not exist"), "{i}");
    c.warming.hot_keys_file = Some("/".into());
    assert!(
        issue_for(&c, "warming.hot_keys_file")
            .why
            .contains("must name a file")
    );
    // A bare file name is in the working directory, which exists.
    c.warming.hot_keys_file = Some("hot-keys".into());
    c.validate().unwrap();
    // A file with no hot keys to keep is a mistake.
    c.warming.hot_keys = 0;
    let i = issue_for(&c, "warming.hot_keys_file");
    assert!(i.why.contains("only with warming.hot_keys above 0"), "{i}");
}
