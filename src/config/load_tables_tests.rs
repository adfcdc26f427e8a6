//! Unit tests for loading `[[rules]]` and `[[functions.writes]]` tables (beside `load.rs`).

use super::tests::issues;
use super::*;
use crate::config::FunctionWrites;
use std::time::Duration;

#[test]
fn rules_load_as_an_array_of_tables() {
    let config = from_toml_str(
        r#"
[[rules]]
table = "public.orders"
ttl = "5m"

[[rules]]
role = "reporting"
query = "SELECT % FROM report_%"
cache = false

[cache]
ttl = "30s"

[[rules]]
database = "shop"
allow_stable_functions = true
allow_rls = false
"#,
        "test.toml",
    )
    .unwrap();
    assert_eq!(config.rules.len(), 3);
    assert_eq!(config.rules[0].table.as_deref(), Some("public.orders"));
    assert_eq!(config.rules[0].ttl, Some(Duration::from_secs(300)));
    assert_eq!(config.rules[0].cache, None);
    assert_eq!(config.rules[1].cache, Some(false));
    assert_eq!(
        config.rules[1].query.as_deref(),
        Some("SELECT % FROM report_%")
    );
    assert_eq!(config.rules[2].allow_stable_functions, Some(true));
    assert_eq!(config.rules[2].allow_rls, Some(false));
    assert_eq!(config.cache.ttl, Duration::from_secs(30));
    let inline = from_toml_str(
        "rules = [{ role = \"a\", cache = false }, { table = \"t\", ttl = \"1s\" }]\n",
        "t",
    )
    .unwrap();
    assert_eq!(inline.rules.len(), 2);
    assert_eq!(inline.rules[1].ttl, Some(Duration::from_secs(1)));
}

#[test]
fn rule_write_policies_load_and_others_are_refused() {
    let config = from_toml_str(
        "[cache]\nwrite_through_max_entries = 8\n\n[[rules]]\ntable = \"orders\"\n\
         write = \"through\"\n\n[[rules]]\ntable = \"audit_log\"\nwrite = \"invalidate\"\n",
        "test.toml",
    )
    .unwrap();
    assert_eq!(config.cache.write_through_max_entries, 8);
    assert_eq!(
        config.rules[0].write,
        Some(crate::config::WritePolicy::Through)
    );
    assert_eq!(
        config.rules[1].write,
        Some(crate::config::WritePolicy::Invalidate)
    );
    let got = issues(
        "[[rules]]\ntable = \"a\"\nwrite = \"ahead\"\n\n[[rules]]\ntable = \"b\"\n\
         write = \"Through\"\ncache = false\n",
    );
    let shown: Vec<(&str, &str)> = got
        .iter()
        .map(|i| (i.key.as_str(), i.value.as_str()))
        .collect();
    assert_eq!(
        shown,
        [
            ("rules[1].write", "\"ahead\""),
            ("rules[2].write", "\"Through\""),
            // With its bad key dropped, the first entry changes nothing.
            ("rules[1]", "(rule)"),
        ]
    );
    assert!(
        got[0].why.starts_with("unknown write policy `ahead`"),
        "{:?}",
        got[0]
    );
    assert!(got[0].why.ends_with("(test.toml:3)"), "{:?}", got[0]);
    assert!(
        got[1]
            .why
            .contains("expected `invalidate`, `through` or `behind`"),
        "{:?}",
        got[1]
    );
    let got = issues("[cache]\nwrite_through_max_entries = 0\n");
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].key, "cache.write_through_max_entries");
}

#[test]
fn unknown_and_ill_typed_keys_inside_rules_have_paths_and_lines() {
    let got = issues(
        "[[rules]]\ntable = \"a\"\ncache = false\n\n[[rules]]\ntabel = \"b\"\nttl = 30\n\
         cache = \"no\"\nrole = \"r\"\n",
    );
    let shown: Vec<(&str, &str)> = got
        .iter()
        .map(|i| (i.key.as_str(), i.value.as_str()))
        .collect();
    assert_eq!(
        shown,
        [
            ("rules[2].tabel", "\"b\""),
            ("rules[2].ttl", "30"),
            ("rules[2].cache", "\"no\""),
            // With its bad keys dropped, the entry changes nothing (validation, same number).
            ("rules[2]", "(rule)"),
        ]
    );
    assert!(
        got[0].why.starts_with("unknown key (test.toml:6)"),
        "{:?}",
        got[0]
    );
    assert!(
        got[0].why.contains("`table`"),
        "offers the real names: {:?}",
        got[0]
    );
    assert!(
        got[1].why.contains("\"10s\""),
        "duration hint: {:?}",
        got[1]
    );
    assert!(got[1].why.ends_with("(test.toml:7)"), "{:?}", got[1]);
    assert!(got[2].why.ends_with("(test.toml:8)"), "{:?}", got[2]);
}

#[test]
fn rules_of_the_wrong_shape() {
    let got = issues("[rules]\ntable = \"t\"\n");
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].key, "rules");
    assert!(got[0].why.contains("[[rules]]"), "{:?}", got[0]);
    let got = issues("rules = [{ role = \"a\", cache = false }, 5]\n");
    let keys: Vec<&str> = got.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(keys[0], "rules[2]", "{got:?}");
    assert!(got[0].why.contains("expected a table"), "{:?}", got[0]);
}

#[test]
fn validation_numbers_rules_like_the_loader() {
    let got = issues(
        "[[rules]]\nrole = \"a\"\ncache = false\n[[rules]]\ntable = \"x.y.z\"\ncache = false\n\
         [[rules]]\ntable = \"t\"\nallow_rls = true\nttl = \"0s\"\n",
    );
    let keys: Vec<&str> = got.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(keys, ["rules[2].table", "rules[3].ttl"]);
}

#[test]
fn function_writes_load_as_an_array_of_tables() {
    let config = from_toml_str(
        "[functions]\nno_side_effects = [\"public.gen_id\"]\n\n\
         [[functions.writes]]\nfunction = \"public.counters_audit_fn\"\n\
         tables = [\"public.counters_audit\"]\n\n\
         [[functions.writes]]\nfunction = \"audit.log_fn\"\n\
         tables = [\"audit.log\", \"audit.log_archive\"]\n\n\
         [log]\nlevel = \"debug\"\n",
        "t",
    )
    .unwrap();
    assert_eq!(config.functions.no_side_effects, ["public.gen_id"]);
    assert_eq!(
        config.functions.writes,
        [
            FunctionWrites {
                function: "public.counters_audit_fn".into(),
                tables: vec!["public.counters_audit".into()],
            },
            FunctionWrites {
                function: "audit.log_fn".into(),
                tables: vec!["audit.log".into(), "audit.log_archive".into()],
            },
        ]
    );
    assert_eq!(config.log.level, "debug");
    // Inline, and without a [functions] header of its own.
    let inline = from_toml_str(
        "functions.writes = [{ function = \"a.f\", tables = [\"a.t\"] }]\n",
        "t",
    )
    .unwrap();
    assert_eq!(
        inline.functions.declared_writes("a.f"),
        Some(&["a.t".to_owned()][..])
    );
}

#[test]
fn unknown_and_ill_typed_keys_inside_function_writes_have_paths_and_lines() {
    let got = issues(
        "[[functions.writes]]\nfunction = \"a.f\"\ntables = [\"a.t\"]\n\n\
         [[functions.writes]]\nfunction = \"a.g\"\ntabels = [\"a.u\"]\n\
         tables = \"a.u\"\nfunction_name = \"a.g\"\n",
    );
    let shown: Vec<(&str, &str)> = got
        .iter()
        .map(|i| (i.key.as_str(), i.value.as_str()))
        .collect();
    assert_eq!(
        shown,
        [
            ("functions.writes[2].tabels", "[\"a.u\"]"),
            ("functions.writes[2].tables", "\"a.u\""),
            ("functions.writes[2].function_name", "\"a.g\""),
            // With its bad keys dropped, the entry lists no table (validation, same number).
            ("functions.writes[2].tables", "[]"),
        ]
    );
    assert!(
        got[0].why.starts_with("unknown key (test.toml:7)"),
        "{:?}",
        got[0]
    );
    assert!(
        got[0].why.contains("`tables`"),
        "offers the real names: {:?}",
        got[0]
    );
    assert!(got[1].why.ends_with("(test.toml:8)"), "{:?}", got[1]);
    assert!(
        got[2].why.starts_with("unknown key (test.toml:9)"),
        "{:?}",
        got[2]
    );
}

#[test]
fn function_writes_of_the_wrong_shape() {
    let got = issues("[functions.writes]\nfunction = \"a.f\"\ntables = [\"a.t\"]\n");
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].key, "functions.writes");
    assert!(got[0].why.contains("[[functions.writes]]"), "{:?}", got[0]);
    let got =
        issues("[functions]\nwrites = [{ function = \"a.f\", tables = [\"a.t\"] }, \"a.g\"]\n");
    // The entry keeps its place (empty), so validation's complaints about it follow.
    assert_eq!(got[0].key, "functions.writes[2]", "{got:?}");
    assert!(
        got[0].why.contains("or a [[functions.writes]] section"),
        "{:?}",
        got[0]
    );
    assert!(got[0].why.ends_with("(test.toml:2)"), "{:?}", got[0]);
}

#[test]
fn validation_numbers_function_writes_like_the_loader() {
    let got = issues(
        "[functions]\nno_side_effects = [\"a.f\"]\n\
         [[functions.writes]]\nfunction = \"a.g\"\ntables = [\"a.t\"]\n\
         [[functions.writes]]\nfunction = \"a.f\"\ntables = [\"a.t\"]\n\
         [[functions.writes]]\nfunction = \"a.h\"\ntables = [\"T\"]\n",
    );
    let keys: Vec<&str> = got.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(
        keys,
        ["functions.writes[2].function", "functions.writes[3].tables"]
    );
}

#[test]
fn write_behind_rules_load_and_what_cannot_be_queued_exactly_is_refused() {
    let config = from_toml_str(
        "[behind]\njournal_dir = \"/var/lib/pgmemo/behind\"\n\n[[rules]]\ntable = \"ev\"\n\
         write = \"behind\"\nbehind_flush_interval = \"50ms\"\nbehind_max_batch = 10\n\
         behind_increments = true\nbehind_coalesce = true\n",
        "test.toml",
    )
    .unwrap();
    let rules = crate::config::Rules::new(&config.rules, Duration::from_secs(60));
    let b = rules
        .behind("app", "w", "public", "ev")
        .expect("a behind table");
    assert_eq!(b.flush_interval, Duration::from_millis(50));
    assert_eq!(b.max_batch, 10);
    assert!(b.increments && b.coalesce);
    assert_eq!(rules.behind("app", "w", "public", "other"), None);
    assert!(!rules.write_through("app", "w", "public", "ev"));

    let keys = |toml: &str| -> Vec<String> { issues(toml).into_iter().map(|i| i.key).collect() };
    // No queue at all.
    assert_eq!(
        keys("[[rules]]\ntable = \"ev\"\nwrite = \"behind\"\n"),
        ["behind.journal_dir"]
    );
    let with_dir = |rules: &str| keys(&format!("[behind]\njournal_dir = \"j\"\n\n{rules}"));
    // A behind rule must name its table (a catch-all would queue every table's inserts).
    assert_eq!(
        with_dir("[[rules]]\nrole = \"app\"\nwrite = \"behind\"\n"),
        ["rules[1].write"]
    );
    // Coalescing merges increments, which must be opted in.
    assert_eq!(
        with_dir("[[rules]]\ntable = \"c\"\nwrite = \"behind\"\nbehind_coalesce = true\n"),
        ["rules[1].behind_coalesce"]
    );
    // behind_* fields only beside write = "behind"; bounds.
    assert_eq!(
        with_dir(
            "[[rules]]\ntable = \"c\"\nwrite = \"through\"\nbehind_max_batch = 5\n\n\
             [[rules]]\ntable = \"d\"\nwrite = \"behind\"\nbehind_max_batch = 0\n\
             behind_flush_interval = \"2m\"\n"
        ),
        [
            "rules[1].behind_max_batch",
            "rules[2].behind_flush_interval",
            "rules[2].behind_max_batch"
        ]
    );
    assert_eq!(
        keys("[behind]\nmax_queue_entries = 0\nmax_queue_bytes = \"10KiB\"\n"),
        ["behind.max_queue_bytes", "behind.max_queue_entries"]
    );
}

#[test]
fn a_narrower_rule_with_another_write_policy_exempts_a_table_from_write_behind() {
    let config = from_toml_str(
        "[behind]\njournal_dir = \"j\"\n\n[[rules]]\ndatabase = \"app\"\ntable = \"ev\"\n\
         write = \"behind\"\nbehind_flush_interval = \"1s\"\n\n[[rules]]\ntable = \"ev\"\n\
         role = \"batch\"\nwrite = \"invalidate\"\n\n[[rules]]\ntable = \"ev\"\nrole = \"fast\"\n\
         write = \"behind\"\nbehind_flush_interval = \"10ms\"\n",
        "test.toml",
    )
    .unwrap();
    let rules = crate::config::Rules::new(&config.rules, Duration::from_secs(60));
    assert_eq!(rules.behind("app", "batch", "public", "ev"), None);
    assert_eq!(
        rules
            .behind("app", "fast", "public", "ev")
            .map(|b| b.flush_interval),
        Some(Duration::from_millis(10))
    );
    assert_eq!(rules.behind("other", "app", "public", "ev"), None);
}
