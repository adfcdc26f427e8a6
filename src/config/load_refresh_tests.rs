//! Unit tests for loading refresh-ahead rules, `[refresh]`, `[[warm]]` and `[warming]` (beside
//! `load.rs`).

use super::tests::issues;
use super::*;
use crate::config::{Secret, WarmParam};
use std::time::Duration;

/// A variable no test environment sets.
const UNSET_VAR: &str = "PGMEMO_TEST_UNSET_PASSWORD_7F3A";

#[test]
fn every_new_section_loads() {
    let config = from_toml_str(
        r#"
[upstream]
url = "postgres://pgmemo@db/shop"

[cache]
secret = "0123456789abcdef0123456789abcdef"

[[rules]]
table = "products"
ttl = "1m"
refresh_ahead = 0.8
refresh_adaptive = true

[[rules]]
table = "audit"
refresh_ahead = 0

[refresh]
pool_size = 8
query_timeout = "2s"
idle_timeout = "5m"
time_budget = "250ms"
max_share = 0.25
logins = [
  { user = "app", password = "pw" },
  { user = "trusted" },
  { user = "reporting" },
]

[[warm]]
sql = "SELECT * FROM products WHERE id = $1 AND note IS NOT DISTINCT FROM $2"
params = ["42", { null = true }]
role = "app"
settings = { search_path = "app, public", "app.tenant" = "7" }

[[warm]]
sql = "SELECT 1"
database = "other"

[warm.settings]
work_mem = "64MB"

[warming]
at_start = false
timeout = "10s"
hot_keys = 500
hot_keys_file = "hot-keys"
"#,
        "test.toml",
    )
    .unwrap();
    assert_eq!(config.rules[0].refresh_ahead, Some(0.8));
    assert_eq!(config.rules[0].refresh_adaptive, Some(true));
    assert_eq!(
        config.rules[1].refresh_ahead,
        Some(0.0),
        "an integer 0 reads"
    );
    let refresh = &config.refresh;
    assert_eq!(refresh.pool_size, 8);
    assert_eq!(refresh.query_timeout, Duration::from_secs(2));
    assert_eq!(refresh.idle_timeout, Duration::from_secs(300));
    assert_eq!(refresh.time_budget, Duration::from_millis(250));
    assert_eq!(refresh.max_share, 0.25);
    let users: Vec<&str> = refresh.logins.iter().map(|l| l.user.as_str()).collect();
    assert_eq!(users, ["app", "trusted", "reporting"]);
    assert_eq!(refresh.logins[0].password, Some(Secret::new("pw")));
    assert_eq!(refresh.logins[1].password, None);
    let w = &config.warm[0];
    assert_eq!(w.params, [WarmParam(Some("42".into())), WarmParam(None)]);
    assert_eq!(w.role.as_deref(), Some("app"));
    assert_eq!(w.database, None);
    assert_eq!(w.settings.get("app.tenant").map(String::as_str), Some("7"));
    assert_eq!(w.settings.len(), 2);
    let target = config.upstream_target().unwrap();
    assert_eq!(w.effective_database(&target), Some("shop"));
    assert_eq!(config.warm[1].effective_role(&target), "pgmemo");
    assert_eq!(config.warm[1].effective_database(&target), Some("other"));
    assert_eq!(
        config.warm[1].settings.get("work_mem").map(String::as_str),
        Some("64MB")
    );
    assert!(!config.warming.at_start);
    assert_eq!(config.warming.timeout, Duration::from_secs(10));
    assert_eq!(config.warming.hot_keys, 500);
    assert_eq!(
        config.warming.hot_keys_file.as_deref(),
        Some(Path::new("hot-keys"))
    );
    // What it prints reads back the same (passwords aside).
    let printed = config.to_toml_redacted().unwrap();
    let back: Config = toml::from_str(&printed).unwrap();
    assert_eq!(back.warm, config.warm);
    assert!(!printed.contains("\"pw\""), "{printed}");
}

#[test]
fn a_missing_password_variable_is_a_load_error_naming_it() {
    let text = format!("[[refresh.logins]]\nuser = \"app\"\npassword_env = \"{UNSET_VAR}\"\n");
    let got = issues(&text);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].key, "refresh.logins[1].password_env");
    assert_eq!(got[0].value, format!("\"{UNSET_VAR}\""));
    assert!(
        got[0].why.contains(&format!("`{UNSET_VAR}` is not set")),
        "{:?}",
        got[0]
    );
    // Through a file too (what the server runs on start and SIGHUP).
    let dir = tempfile::tempdir().unwrap();
    let sources = Sources {
        file: Some(super::tests::write(&dir, &text)),
        overrides: Overrides::default(),
    };
    let err = sources.load().unwrap_err();
    assert_eq!(err.issues[0].key, "refresh.logins[1].password_env");
}

#[test]
fn passwords_are_not_echoed_in_messages() {
    let got = issues(
        "[[refresh.logins]]\nuser = \"app\"\npassword = 12345678\n\n\
         [[refresh.logins]]\nuser = \"b\"\npasword = \"hunter2\"\n",
    );
    let shown: Vec<(&str, &str)> = got
        .iter()
        .map(|i| (i.key.as_str(), i.value.as_str()))
        .collect();
    assert_eq!(
        shown,
        [
            ("refresh.logins[1].password", "\"********\""),
            ("refresh.logins[2].pasword", "\"********\""),
        ]
    );
    assert!(got[0].why.starts_with("must be a string"), "{:?}", got[0]);
    assert!(got[1].why.starts_with("unknown key"), "{:?}", got[1]);
    let got = issues("[refresh]\nlogins = [\"app:hunter3\"]\n");
    assert_eq!(got[0].key, "refresh.logins[1]", "{got:?}");
    assert_eq!(got[0].value, "\"********\"", "{got:?}");
    // A syntax error on a line that names a password does not show the line.
    let got = issues("[[refresh.logins]]\nuser = \"app\"\npassword = \"hunter4\n");
    assert!(got[0].key.starts_with("test.toml:3:"), "{got:?}");
    for text in [format!("{got:?}"), format!("{shown:?}")] {
        for secret in ["12345678", "hunter2", "hunter3", "hunter4"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
}

#[test]
fn warm_params_are_strings_or_null_tables() {
    for (params, why) in [
        (
            "[1]",
            "a string such as \"42\", or { null = true } for NULL",
        ),
        ("[{ null = false }]", "{ null = false } is not a value"),
        ("[{ nul = true }]", "`nul` in a parameter"),
        ("[{}]", "empty table"),
        ("\"42\"", "invalid type"),
    ] {
        let got = issues(&format!(
            "[upstream]\nurl = \"postgres://h/db\"\n[[warm]]\nsql = \"SELECT $1\"\nparams = {params}\n"
        ));
        assert_eq!(got.len(), 1, "{params}: {got:?}");
        assert_eq!(got[0].key, "warm[1].params", "{params}");
        assert!(got[0].why.contains(why), "{params}: {:?}", got[0]);
    }
}

#[test]
fn required_keys_of_entries_are_named() {
    let got = issues(
        "[upstream]\nurl = \"postgres://h/db\"\n\n[[warm]]\nparams = [\"1\"]\n\n\
         [[refresh.logins]]\npassword = \"p\"\n",
    );
    let keys: Vec<&str> = got.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(keys, ["refresh.logins[1].user", "warm[1].sql"], "{got:?}");
    for issue in &got {
        assert!(issue.why.starts_with("required"), "{issue:?}");
    }
    let got = issues("[warming]\nhot_key = 5\n");
    assert_eq!(got[0].key, "warming.hot_key");
    assert!(got[0].why.starts_with("unknown key"), "{:?}", got[0]);
    let got = issues("[[warm]]\nsql = \"SELECT 1\"\nsettings = { work_mem = 64 }\n");
    assert_eq!(got[0].key, "warm[1].settings.work_mem", "{got:?}");
}

#[test]
fn refresh_ahead_types() {
    let got = issues("[[rules]]\ntable = \"t\"\nrefresh_ahead = \"80%\"\n");
    assert_eq!(got[0].key, "rules[1].refresh_ahead", "{got:?}");
    let got = issues("[[rules]]\ntable = \"t\"\nrefresh_adaptive = \"yes\"\nrefresh_ahead = 0.5\n");
    assert_eq!(got[0].key, "rules[1].refresh_adaptive", "{got:?}");
    let got = issues("[[rules]]\ntable = \"t\"\nrefresh_ahead = 1.0\n");
    assert_eq!(got[0].key, "rules[1].refresh_ahead", "{got:?}");
    assert_eq!(got[0].value, "1", "{got:?}");
}
