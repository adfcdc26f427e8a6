//! Unit tests for the checks of `[functions]` and `[[rules]]` (`validate/functions.rs`).

use super::tests::{issue_for, keys};
use super::*;
use crate::config::{FunctionWrites, WritePolicy};

#[test]
fn side_effect_free_functions_are_schema_qualified_names() {
    let mut c = Config::default();
    for (name, ok) in [
        ("public.uuid_generate_v4", true),
        ("\"Ext\".\"NewId\"", true),
        ("uuid_generate_v4", false),
        ("public.UUID_generate_v4", false),
        ("public.uuid_generate_v4()", false),
        ("a.b.c", false),
        ("", false),
    ] {
        c.functions.no_side_effects = vec![name.into()];
        assert_eq!(c.validate().is_ok(), ok, "{name:?}");
    }
    c.functions.no_side_effects = vec!["ok.fine".into(), "gen_id".into(), "x.Y".into()];
    let err = c.validate().unwrap_err();
    let shown: Vec<(&str, &str)> = err
        .issues
        .iter()
        .map(|i| (i.key.as_str(), i.value.as_str()))
        .collect();
    assert_eq!(
        shown,
        [
            ("functions.no_side_effects", "\"gen_id\""),
            ("functions.no_side_effects", "\"x.Y\"")
        ]
    );
    assert!(err.issues[0].why.contains("schema-qualified"), "{err}");
    assert_eq!(
        c.functions.qualified_names(),
        [("ok".to_owned(), "fine".to_owned())]
    );
}

fn with_rules(rules: Vec<Rule>) -> Config {
    Config {
        rules,
        ..Config::default()
    }
}

fn rule(f: impl FnOnce(&mut Rule)) -> Rule {
    let mut r = Rule::default();
    f(&mut r);
    r
}

#[test]
fn a_rule_needs_a_match_field_and_an_action() {
    let mut c = with_rules(vec![
        rule(|r| r.cache = Some(false)),
        rule(|r| r.table = Some("t".into())),
        rule(|r| {
            r.query = Some("SELECT 1".into());
            r.ttl = Some(Duration::from_secs(5));
        }),
        Rule::default(),
    ]);
    let err = c.validate().unwrap_err();
    let shown: Vec<(&str, bool)> = err
        .issues
        .iter()
        .map(|i| {
            (
                i.key.as_str(),
                i.why.contains("table, database, role, query"),
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            ("rules[1]", true),
            ("rules[2]", false),
            ("rules[4]", true),
            ("rules[4]", false)
        ]
    );
    assert!(
        err.issues[1]
            .why
            .contains("cache, ttl, allow_stable_functions, allow_rls, write, refresh_ahead")
    );
    // Each match field and each action field counts on its own.
    for m in 0..4 {
        for a in 0..5 {
            let r = rule(|r| {
                match m {
                    0 => r.table = Some("t".into()),
                    1 => r.database = Some("d".into()),
                    2 => r.role = Some("r".into()),
                    _ => r.query = Some("SELECT 1".into()),
                }
                match a {
                    0 => r.cache = Some(true),
                    1 => r.ttl = Some(Duration::from_secs(1)),
                    2 => r.allow_stable_functions = Some(false),
                    3 => r.allow_rls = Some(false),
                    _ => r.refresh_ahead = Some(0.5),
                }
            });
            c.rules = vec![r];
            c.validate().unwrap();
        }
    }
}

#[test]
fn rule_tables_are_names_or_schema_names() {
    let mut c = Config::default();
    for (table, ok) in [
        ("orders", true),
        ("Sales.Orders", true),
        ("\"Sales\".\"Q1 report\"", true),
        ("db.sales.orders", false),
        ("sales.", false),
        ("order items", false),
        ("sales.*", false),
    ] {
        c.rules = vec![rule(|r| {
            r.table = Some(table.into());
            r.cache = Some(false);
        })];
        assert_eq!(c.validate().is_ok(), ok, "{table:?}");
    }
    let i = issue_for(&c, "rules[1].table");
    assert_eq!(i.value, "\"sales.*\"");
}

#[test]
fn empty_match_strings_are_refused() {
    let c = with_rules(vec![rule(|r| {
        r.database = Some(String::new());
        r.role = Some(String::new());
        r.query = Some(" /* only a comment */ ".into());
        r.cache = Some(false);
    })]);
    assert_eq!(
        keys(c.validate()),
        ["rules[1].database", "rules[1].role", "rules[1].query"]
    );
}

#[test]
fn an_rls_opt_in_needs_a_finite_ttl() {
    let rls = |ttl: Option<u64>| {
        rule(|r| {
            r.table = Some("accounts".into());
            r.allow_rls = Some(true);
            r.ttl = ttl.map(Duration::from_secs);
        })
    };
    let mut c = with_rules(vec![rls(Some(30)), rls(None)]);
    c.validate().unwrap();
    c.rules = vec![rls(Some(0))];
    let i = issue_for(&c, "rules[1].ttl");
    assert_eq!(i.value, "\"0s\"");
    assert!(i.why.contains("only bound"), "{i}");
    c.cache.ttl = Duration::ZERO;
    c.rules = vec![rls(Some(30)), rls(None)];
    let i = issue_for(&c, "rules[2].allow_rls");
    assert!(i.why.contains("cache.ttl = \"0s\""), "{i}");
    assert_eq!(keys(c.validate()), ["rules[2].allow_rls"]);
    // Opting out, or no RLS at all, needs no TTL.
    c.rules = vec![rule(|r| {
        r.table = Some("accounts".into());
        r.allow_rls = Some(false);
        r.ttl = Some(Duration::ZERO);
    })];
    c.validate().unwrap();
}

#[test]
fn write_is_an_action_for_tables_and_not_for_queries() {
    let mut c = with_rules(vec![rule(|r| {
        r.table = Some("orders".into());
        r.write = Some(WritePolicy::Through);
    })]);
    c.validate().unwrap();
    c.rules = vec![rule(|r| {
        r.database = Some("shop".into());
        r.write = Some(WritePolicy::Invalidate);
    })];
    c.validate().unwrap();
    c.rules = vec![rule(|r| {
        r.table = Some("orders".into());
        r.query = Some("UPDATE orders SET %".into());
        r.write = Some(WritePolicy::Through);
    })];
    let i = issue_for(&c, "rules[1].write");
    assert_eq!(i.value, "\"through\"");
    assert!(i.why.contains("a rule with `query` cannot set it"), "{i}");
    assert_eq!(keys(c.validate()), ["rules[1].write"]);
    // The query alone is fine.
    c.rules[0].write = None;
    c.rules[0].cache = Some(false);
    c.validate().unwrap();
}

#[test]
fn too_many_rules() {
    let mut c = Config::default();
    let r = rule(|r| {
        r.role = Some("x".into());
        r.cache = Some(false);
    });
    c.rules = vec![r; MAX_RULES];
    c.validate().unwrap();
    c.rules.push(c.rules[0].clone());
    assert_eq!(keys(c.validate()), ["rules"]);
}

fn writes(function: &str, tables: &[&str]) -> FunctionWrites {
    FunctionWrites {
        function: function.into(),
        tables: tables.iter().map(|t| (*t).to_owned()).collect(),
    }
}

#[test]
fn function_writes_name_a_function_and_its_tables() {
    let mut c = Config::default();
    c.functions.writes = vec![
        writes("public.counters_audit_fn", &["public.counters_audit"]),
        writes("\"Ext\".\"Log\"", &["\"Ext\".\"Events\"", "audit.log"]),
    ];
    c.validate().unwrap();
    c.functions.writes = vec![
        writes("counters_audit_fn", &["public.ok"]),
        writes("public.Audit", &["counters_audit", "public.Audit", ""]),
        writes("", &[]),
        writes("a.b.c", &["x.y"]),
    ];
    let err = c.validate().unwrap_err();
    let shown: Vec<(&str, &str)> = err
        .issues
        .iter()
        .map(|i| (i.key.as_str(), i.value.as_str()))
        .collect();
    assert_eq!(
        shown,
        [
            ("functions.writes[1].function", "\"counters_audit_fn\""),
            ("functions.writes[2].function", "\"public.Audit\""),
            ("functions.writes[2].tables", "\"counters_audit\""),
            ("functions.writes[2].tables", "\"public.Audit\""),
            ("functions.writes[2].tables", "\"\""),
            ("functions.writes[3].function", "\"\""),
            ("functions.writes[3].tables", "[]"),
            ("functions.writes[4].function", "\"a.b.c\""),
        ]
    );
    assert!(err.issues[0].why.contains("schema-qualified"), "{err}");
    assert!(err.issues[1].why.contains("upper-case"), "{err}");
    assert!(err.issues[6].why.contains("no_side_effects"), "{err}");
}

#[test]
fn a_function_is_declared_once_and_not_also_side_effect_free() {
    let mut c = Config::default();
    // The same catalog names, written differently.
    c.functions.no_side_effects = vec!["public.gen_id".into()];
    c.functions.writes = vec![
        writes("\"public\".\"gen_id\"", &["public.ids"]),
        writes("audit.fn", &["audit.a"]),
        writes("audit.\"fn\"", &["audit.b"]),
        // Different catalog names: not duplicates.
        writes("audit.\"Fn\"", &["audit.c"]),
    ];
    let err = c.validate().unwrap_err();
    let keys: Vec<&str> = err.issues.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "functions.writes[1].function",
            "functions.writes[3].function"
        ]
    );
    assert!(
        err.issues[0].why.contains("functions.no_side_effects"),
        "{err}"
    );
    assert!(err.issues[1].why.contains("functions.writes[2]"), "{err}");
    c.functions.no_side_effects.clear();
    c.functions.writes.remove(2);
    c.validate().unwrap();
}

#[test]
fn too_many_function_writes() {
    let mut c = Config::default();
    c.functions.writes = (0..MAX_FUNCTION_WRITES)
        .map(|i| writes(&format!("public.f{i}"), &["public.t"]))
        .collect();
    c.validate().unwrap();
    c.functions
        .writes
        .push(writes("public.one_too_many", &["public.t"]));
    assert_eq!(keys(c.validate()), ["functions.writes"]);
}

#[test]
fn declared_writes_finds_a_function_by_its_catalog_name() {
    let mut c = Config::default();
    c.functions.writes = vec![
        writes("public.counters_audit_fn", &["public.counters_audit"]),
        writes("\"audit\".\"log_fn\"", &["audit.log"]),
        writes("\"Ext\".\"Track\"", &["\"Ext\".\"Hits\""]),
        writes("\"my.schema\".fn", &["public.dotted"]),
    ];
    let f = &c.functions;
    let tables = |function: &str| f.declared_writes(function).map(<[String]>::to_vec);
    assert_eq!(
        tables("public.counters_audit_fn"),
        Some(vec!["public.counters_audit".to_owned()])
    );
    // Quotes in the file do not matter: the catalog's text is unquoted.
    assert_eq!(tables("audit.log_fn"), Some(vec!["audit.log".to_owned()]));
    assert_eq!(
        tables("Ext.Track"),
        Some(vec!["\"Ext\".\"Hits\"".to_owned()])
    );
    // A quoted caller works too.
    assert_eq!(
        tables("\"public\".\"counters_audit_fn\""),
        Some(vec!["public.counters_audit".to_owned()])
    );
    assert_eq!(
        tables("my.schema.fn"),
        Some(vec!["public.dotted".to_owned()])
    );
    // Catalog names are exact: case, schema and name must all agree.
    for other in [
        "ext.track",
        "EXT.Track",
        "public.counters_audit",
        "other.counters_audit_fn",
        "counters_audit_fn",
        "public.counters_audit_fn_v2",
        "",
    ] {
        assert_eq!(tables(other), None, "{other:?}");
    }
    // An invalid (unvalidated) entry never matches, even by identical text.
    let bad = FunctionsConfig {
        writes: vec![writes("Public.F", &["public.t"])],
        ..FunctionsConfig::default()
    };
    assert_eq!(bad.declared_writes("Public.F"), None);
}

#[test]
fn function_reads_are_checked_like_writes_and_the_cap_is_bounded() {
    let mut c = Config::default();
    assert_eq!(c.functions.undeclared_reads_ttl, Duration::from_secs(1));
    // A function may be side-effect free and still read tables.
    c.functions.no_side_effects = vec!["public.cnt".into()];
    c.functions.reads = vec![writes("public.cnt", &["public.other"])];
    c.functions.undeclared_reads_ttl = Duration::ZERO;
    c.validate().unwrap();
    c.functions.reads = vec![
        writes("cnt", &["public.other"]),
        // Reads no table: allowed (its reads are then known).
        writes("public.g", &[]),
        writes("public.f", &["other"]),
        writes("public.\"f\"", &["public.other"]),
    ];
    c.functions.undeclared_reads_ttl = Duration::from_secs(3601);
    let err = c.validate().unwrap_err();
    let keys: Vec<&str> = err.issues.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "functions.reads[1].function",
            "functions.reads[3].tables",
            "functions.reads[4].function",
            "functions.undeclared_reads_ttl",
        ]
    );
    assert!(err.issues[1].why.contains("schema-qualified"), "{err}");
    assert!(err.issues[2].why.contains("functions.reads[3]"), "{err}");
}

#[test]
fn declared_reads_finds_a_function_by_its_catalog_name() {
    let mut c = Config::default();
    c.functions.reads = vec![writes("\"public\".\"cnt\"", &["public.other"])];
    assert_eq!(
        c.functions.declared_reads("public.cnt"),
        Some(&["public.other".to_owned()][..])
    );
    assert_eq!(c.functions.declared_reads("public.cnt2"), None);
    // Reads and writes are separate lists.
    assert_eq!(c.functions.declared_writes("public.cnt"), None);
}
