//! Unit tests for the rule matcher (beside `rules.rs` to keep both files short).

use super::*;

const DEFAULT: Duration = Duration::from_secs(60);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn default_verdict() -> Verdict {
    Verdict {
        cache: true,
        ttl: DEFAULT,
        allow_stable_functions: false,
        allow_rls: false,
        refresh_ahead: 0.0,
        refresh_adaptive: false,
    }
}

fn table(t: &str) -> Rule {
    Rule {
        table: Some(t.into()),
        ..Rule::default()
    }
}

fn nocache(mut r: Rule) -> Rule {
    r.cache = Some(false);
    r
}

/// Verdict for a read of `tables` by role `app` in database `shop`, statement `sql`.
fn read(rules: &[Rule], sql: &str, tables: &[(&str, &str)]) -> Verdict {
    let normalized = crate::sql::normalize_for_key(sql.as_bytes());
    Rules::new(rules, DEFAULT).verdict("shop", "app", &normalized, tables)
}

const USERS: (&str, &str) = ("public", "users");

#[test]
fn no_rules_caches_with_the_default_ttl() {
    let rules = Rules::new(&[], DEFAULT);
    assert!(rules.is_empty());
    assert_eq!(
        rules.verdict("shop", "app", b"SELECT 1", &[USERS]),
        default_verdict()
    );
    assert!(!Rules::new(&[table("users")], DEFAULT).is_empty());
}

#[test]
fn a_rule_with_fields_that_do_not_all_match_does_not_apply() {
    let rule = Rule {
        database: Some("shop".into()),
        role: Some("admin".into()),
        ..nocache(Rule::default())
    };
    assert_eq!(
        read(std::slice::from_ref(&rule), "SELECT 1", &[]),
        default_verdict()
    );
    let rule = Rule {
        role: Some("app".into()),
        ..rule
    };
    assert!(!read(&[rule], "SELECT 1", &[]).cache);
}

#[test]
fn database_and_role_are_exact() {
    for (field, value, hit) in [
        ("database", "shop", true),
        ("database", "Shop", false),
        ("database", "sho", false),
        ("role", "app", true),
        ("role", "APP", false),
    ] {
        let mut rule = nocache(Rule::default());
        match field {
            "database" => rule.database = Some(value.into()),
            _ => rule.role = Some(value.into()),
        }
        assert_eq!(
            read(&[rule], "SELECT 1", &[]).cache,
            !hit,
            "{field} = {value}"
        );
    }
}

#[test]
fn table_names_match_as_postgres_normalises_them() {
    let reads_users = [("app", "orders"), USERS];
    for (written, hit) in [
        ("users", true),
        ("public.users", true),
        ("Public.USERS", true),
        ("\"public\".\"users\"", true),
        ("\"Users\"", false),
        ("other.users", false),
        ("user", false),
        ("public", false),
    ] {
        let got = read(&[nocache(table(written))], "SELECT 1", &reads_users);
        assert_eq!(got.cache, !hit, "table = {written}");
    }
    let mixed = [("Sales", "Q1 Report")];
    assert!(!read(&[nocache(table("\"Sales\".\"Q1 Report\""))], "x", &mixed).cache);
    assert!(read(&[nocache(table("sales.\"Q1 Report\""))], "x", &mixed).cache);
}

#[test]
fn a_table_rule_needs_the_table_to_be_read() {
    assert!(read(&[nocache(table("users"))], "SELECT 1", &[]).cache);
    assert!(
        read(
            &[nocache(table("users"))],
            "SELECT 1",
            &[("public", "orders")]
        )
        .cache
    );
}

#[test]
fn query_patterns_are_like_over_normalised_text() {
    let sql = "SELECT  name FROM users /* c */ WHERE id = 5";
    for (pattern, hit) in [
        ("SELECT name FROM users WHERE id = 5", true),
        (
            "SELECT name\n  FROM users -- same once normalised\n WHERE id = 5",
            true,
        ),
        ("SELECT name FROM users WHERE id = %", true),
        ("SELECT % FROM users%", true),
        ("%FROM users%", true),
        ("%", true),
        ("%%", true),
        ("SELECT%users%id%5", true),
        ("SELECT%id%users%", false),
        ("SELECT name FROM users", false),
        ("select name from users where id = 5", false),
        ("%FROM orders%", false),
        ("SELECT name FROM users WHERE id = 55%", false),
    ] {
        let rule = Rule {
            query: Some(pattern.into()),
            ..nocache(Rule::default())
        };
        assert_eq!(read(&[rule], sql, &[]).cache, !hit, "pattern {pattern:?}");
    }
}

#[test]
fn a_trailing_semicolon_is_ignored_on_either_side() {
    let rule = |p: &str| Rule {
        query: Some(p.into()),
        ..nocache(Rule::default())
    };
    for (pattern, sql) in [
        ("SELECT 1", "SELECT 1 ;"),
        ("SELECT 1;", "SELECT 1"),
        ("SELECT 1 ; ", "SELECT 1;"),
        ("SELECT %", "SELECT 1;"),
    ] {
        assert!(
            !read(&[rule(pattern)], sql, &[]).cache,
            "{pattern:?} vs {sql:?}"
        );
    }
    assert!(read(&[rule("SELECT 1")], "SELECT 1; SELECT 2", &[]).cache);
}

#[test]
fn escaped_percent_is_literal() {
    let rule = |p: &str| Rule {
        query: Some(p.into()),
        ..nocache(Rule::default())
    };
    let sql = "SELECT 10 % 3";
    assert!(!read(&[rule(r"SELECT 10 \% 3")], sql, &[]).cache);
    assert!(read(&[rule(r"SELECT 10 \% 3")], "SELECT 10 - 3", &[]).cache);
    assert!(!read(&[rule(r"%\%%")], sql, &[]).cache);
    assert!(read(&[rule(r"%\%%")], "SELECT 1", &[]).cache);
    assert!(!read(&[rule(r"SELECT '\\'")], r"SELECT '\'", &[]).cache);
}

#[test]
fn pattern_prefix_and_suffix_do_not_overlap() {
    let rule = Rule {
        query: Some("ab%ba".into()),
        ..nocache(Rule::default())
    };
    assert!(
        read(std::slice::from_ref(&rule), "aba", &[]).cache,
        "`ab` and `ba` share the b"
    );
    assert!(!read(&[rule], "abba", &[]).cache);
}

#[test]
fn cache_false_from_any_matching_rule_wins() {
    let rules = [
        Rule {
            cache: Some(true),
            ..table("users")
        },
        Rule {
            role: Some("app".into()),
            ..nocache(Rule::default())
        },
        Rule {
            cache: Some(true),
            database: Some("shop".into()),
            ..Rule::default()
        },
    ];
    assert!(!read(&rules, "SELECT 1", &[USERS]).cache);
    let order_reversed: Vec<Rule> = rules.iter().rev().cloned().collect();
    assert!(!read(&order_reversed, "SELECT 1", &[USERS]).cache);
}

#[test]
fn the_shortest_ttl_wins_and_zero_counts_as_longest() {
    let ttl = |r: Rule, t: u64| Rule {
        ttl: Some(secs(t)),
        ..r
    };
    let by_db = Rule {
        database: Some("shop".into()),
        ..Rule::default()
    };
    let rules = [ttl(table("users"), 300), ttl(by_db.clone(), 30)];
    assert_eq!(read(&rules, "SELECT 1", &[USERS]).ttl, secs(30));
    assert_eq!(
        read(&rules[..1], "SELECT 1", &[USERS]).ttl,
        secs(300),
        "longer than default"
    );
    assert_eq!(
        read(&rules, "SELECT 1", &[]).ttl,
        secs(30),
        "only the db rule matches"
    );
    // A broad "until invalidated" never lengthens a narrower finite TTL.
    let rules = [ttl(by_db.clone(), 0), ttl(table("users"), 10)];
    assert_eq!(read(&rules, "SELECT 1", &[USERS]).ttl, secs(10));
    assert_eq!(read(&rules, "SELECT 1", &[]).ttl, Duration::ZERO);
    // Rules that set no TTL leave the default.
    assert_eq!(read(&[nocache(by_db)], "SELECT 1", &[]).ttl, DEFAULT);
}

#[test]
fn opt_ins_need_one_yes_and_no_no() {
    let stable = |t: &str, v: bool| Rule {
        allow_stable_functions: Some(v),
        ..table(t)
    };
    let rls = |t: &str, v: bool| Rule {
        allow_rls: Some(v),
        ..table(t)
    };
    let both = [USERS, ("public", "orders")];
    let v = read(&[stable("users", true)], "x", &both);
    assert!(v.allow_stable_functions && !v.allow_rls);
    let v = read(&[rls("users", true)], "x", &both);
    assert!(v.allow_rls && !v.allow_stable_functions);
    let v = read(
        &[stable("users", true), stable("orders", false)],
        "x",
        &both,
    );
    assert!(!v.allow_stable_functions, "a matching false vetoes");
    let v = read(&[rls("orders", false), rls("users", true)], "x", &both);
    assert!(!v.allow_rls, "in either order");
    let v = read(&[rls("users", true), rls("orders", false)], "x", &[USERS]);
    assert!(v.allow_rls, "a rule that does not match vetoes nothing");
    assert!(!read(&[rls("users", true)], "x", &[("public", "orders")]).allow_rls);
}

#[test]
fn an_rls_opt_in_never_ends_up_unbounded() {
    let rls = Rule {
        allow_rls: Some(true),
        ..table("users")
    };
    let forever = Rule {
        database: Some("shop".into()),
        ttl: Some(Duration::ZERO),
        ..Rule::default()
    };
    let v = read(&[rls.clone(), forever.clone()], "x", &[USERS]);
    assert_eq!((v.allow_rls, v.ttl), (true, DEFAULT));
    // With no finite default to fall back on, the opt-in is dropped instead.
    let normalized = crate::sql::normalize_for_key(b"x");
    let v = Rules::new(&[rls], Duration::ZERO).verdict("shop", "app", &normalized, &[USERS]);
    assert_eq!((v.allow_rls, v.ttl), (false, Duration::ZERO));
    // Without an RLS opt-in, TTL 0 stands.
    assert_eq!(read(&[forever], "x", &[USERS]).ttl, Duration::ZERO);
}

#[test]
fn qualified_names_parse_like_postgres() {
    let ok = |t: &str, case| parse_qualified_name(t, case).unwrap();
    let name = |s: Option<&str>, n: &str| QualifiedName {
        schema: s.map(str::to_owned),
        name: n.to_owned(),
    };
    assert_eq!(ok("Users", Case::Fold), name(None, "users"));
    assert_eq!(ok("a.b", Case::Fold), name(Some("a"), "b"));
    assert_eq!(
        ok("\"A.b\".\"x\"\"y\"", Case::Fold),
        name(Some("A.b"), "x\"y")
    );
    assert_eq!(ok("_t$1", Case::RequireLower), name(None, "_t$1"));
    assert_eq!(ok("\"Q\".été", Case::Fold), name(Some("Q"), "été"));
    for bad in [
        "", "a.", ".a", "a.b.c", "a b", "1a", "$a", "\"a", "\"\"", "a-b", "a.\"b\"c",
    ] {
        assert!(parse_qualified_name(bad, Case::Fold).is_err(), "{bad:?}");
    }
    assert!(parse_qualified_name(&"x".repeat(64), Case::Fold).is_err());
    assert!(parse_qualified_name(&"x".repeat(63), Case::Fold).is_ok());
    let err = parse_qualified_name("public.Gen_ID", Case::RequireLower).unwrap_err();
    assert!(
        err.contains("gen_id") && err.contains("\"Gen_ID\""),
        "{err}"
    );
    assert!(parse_qualified_name("public.\"Gen_ID\"", Case::RequireLower).is_ok());
}

/// The worked example in the README's "Rules" section.
#[test]
fn readme_example() {
    let rule = |f: &dyn Fn(&mut Rule)| {
        let mut r = Rule::default();
        f(&mut r);
        r
    };
    let rules = [
        rule(&|r| {
            r.table = Some("audit_log".into());
            r.cache = Some(false);
        }),
        rule(&|r| {
            r.table = Some("public.prices".into());
            r.ttl = Some(secs(5));
        }),
        rule(&|r| {
            r.database = Some("shop".into());
            r.role = Some("reporting".into());
            r.query = Some("SELECT % FROM monthly_%".into());
            r.ttl = Some(secs(600));
            r.allow_stable_functions = Some(true);
        }),
        rule(&|r| {
            r.table = Some("tenant.accounts".into());
            r.allow_rls = Some(true);
            r.ttl = Some(secs(30));
        }),
    ];
    let compiled = Rules::new(&rules, DEFAULT);
    let sql = crate::sql::normalize_for_key(
        b"SELECT sum(x)\n  FROM monthly_sales JOIN prices USING (item)",
    );
    let tables = [("public", "monthly_sales"), ("public", "prices")];
    let v = compiled.verdict("shop", "reporting", &sql, &tables);
    assert_eq!(
        v,
        Verdict {
            cache: true,
            ttl: secs(5),
            allow_stable_functions: true,
            allow_rls: false,
            refresh_ahead: 0.0,
            refresh_adaptive: false,
        }
    );
    let v = compiled.verdict("shop", "reporting", &sql, &[("archive", "audit_log")]);
    assert!(!v.cache);
}

fn write(mut r: Rule, policy: WritePolicy) -> Rule {
    r.write = Some(policy);
    r
}

/// Whether a write to `schema.name` by role `app` in database `shop` is written through.
fn through(rules: &[Rule], schema: &str, name: &str) -> bool {
    Rules::new(rules, DEFAULT).write_through("shop", "app", schema, name)
}

#[test]
fn write_through_needs_a_rule() {
    assert!(!through(&[], "public", "users"));
    // Rules that say nothing about writes do not make one.
    assert!(!through(&[nocache(table("users"))], "public", "users"));
    assert!(!through(
        &[write(table("users"), WritePolicy::Invalidate)],
        "public",
        "users"
    ));
}

#[test]
fn write_through_matches_tables_like_the_verdict() {
    let bare = [write(table("Users"), WritePolicy::Through)];
    assert!(through(&bare, "public", "users"), "any schema, name folded");
    assert!(through(&bare, "app", "users"));
    assert!(!through(&bare, "public", "orders"));
    let qualified = [write(table("app.users"), WritePolicy::Through)];
    assert!(through(&qualified, "app", "users"));
    assert!(!through(&qualified, "public", "users"));
    let quoted = [write(table("\"App\".\"Users\""), WritePolicy::Through)];
    assert!(through(&quoted, "App", "Users"));
    assert!(!through(&quoted, "app", "users"));
}

#[test]
fn write_through_needs_the_database_and_role_to_match() {
    let rule = |db: &str, role: &str| Rule {
        database: Some(db.into()),
        role: Some(role.into()),
        ..write(table("users"), WritePolicy::Through)
    };
    assert!(through(&[rule("shop", "app")], "public", "users"));
    assert!(!through(&[rule("other", "app")], "public", "users"));
    assert!(!through(&[rule("shop", "admin")], "public", "users"));
    // Without `table`, a rule covers every table of its database (and role).
    let every = Rule {
        database: Some("shop".into()),
        ..write(Rule::default(), WritePolicy::Through)
    };
    assert!(through(std::slice::from_ref(&every), "public", "orders"));
    let elsewhere = Rule {
        database: Some("other".into()),
        ..every
    };
    assert!(!through(&[elsewhere], "public", "orders"));
}

#[test]
fn an_explicit_invalidate_wins_over_through() {
    let every = Rule {
        database: Some("shop".into()),
        ..write(Rule::default(), WritePolicy::Through)
    };
    let exempt = write(table("audit_log"), WritePolicy::Invalidate);
    for rules in [
        [every.clone(), exempt.clone()],
        [exempt.clone(), every.clone()],
    ] {
        assert!(!through(&rules, "public", "audit_log"), "in either order");
        assert!(
            through(&rules, "public", "users"),
            "a rule that does not match vetoes nothing"
        );
    }
}

#[test]
fn a_query_rule_never_sets_write_through() {
    // Validation refuses it; unvalidated, it still cannot select a write.
    let rule = Rule {
        query: Some("%".into()),
        ..write(table("users"), WritePolicy::Through)
    };
    assert!(!through(&[rule], "public", "users"));
}

fn ahead(mut r: Rule, fraction: f64, adaptive: Option<bool>) -> Rule {
    r.refresh_ahead = Some(fraction);
    r.refresh_adaptive = adaptive;
    r
}

/// (refresh_ahead, refresh_adaptive) of a read of `public.users`.
fn refresh_of(rules: &[Rule]) -> (f32, bool) {
    let v = read(rules, "SELECT * FROM users", &[USERS]);
    (v.refresh_ahead, v.refresh_adaptive)
}

#[test]
fn refresh_ahead_is_off_unless_a_matching_rule_sets_it() {
    assert_eq!(refresh_of(&[]), (0.0, false));
    assert_eq!(refresh_of(&[table("users")]), (0.0, false));
    assert_eq!(
        refresh_of(&[ahead(table("users"), 0.8, None)]),
        (0.8, false)
    );
    assert_eq!(
        refresh_of(&[ahead(table("users"), 0.8, Some(true))]),
        (0.8, true)
    );
    // Another table's rule does not apply.
    assert_eq!(
        refresh_of(&[ahead(table("orders"), 0.8, None)]),
        (0.0, false)
    );
    // Query rules set it too: it is part of the read's verdict.
    let by_query = Rule {
        query: Some("SELECT * FROM %".into()),
        ..ahead(Rule::default(), 0.5, None)
    };
    assert_eq!(refresh_of(&[by_query]), (0.5, false));
}

#[test]
fn the_earliest_refresh_wins_and_an_explicit_zero_turns_it_off() {
    let broad = Rule {
        database: Some("shop".into()),
        ..ahead(Rule::default(), 0.9, Some(true))
    };
    let narrow = ahead(table("users"), 0.5, None);
    for rules in [
        [broad.clone(), narrow.clone()],
        [narrow.clone(), broad.clone()],
    ] {
        assert_eq!(refresh_of(&rules), (0.5, true), "in either order");
    }
    let off = ahead(table("users"), 0.0, None);
    for rules in [[broad.clone(), off.clone()], [off.clone(), broad.clone()]] {
        assert_eq!(refresh_of(&rules), (0.0, false), "in either order");
    }
    // refresh_adaptive = false vetoes like allow_*.
    let not_adaptive = ahead(table("users"), 0.9, Some(false));
    assert_eq!(refresh_of(&[broad.clone(), not_adaptive]), (0.9, false));
}

#[test]
fn no_refresh_ahead_for_entries_kept_until_invalidated() {
    let zero_ttl = Rule {
        ttl: Some(Duration::ZERO),
        ..ahead(table("users"), 0.8, Some(true))
    };
    assert_eq!(refresh_of(std::slice::from_ref(&zero_ttl)), (0.0, false));
    // With a finite TTL from another matching rule, it applies to that TTL.
    let finite = Rule {
        ttl: Some(secs(10)),
        ..table("users")
    };
    let v = read(&[zero_ttl, finite], "SELECT 1", &[USERS]);
    assert_eq!(
        (v.ttl, v.refresh_ahead, v.refresh_adaptive),
        (secs(10), 0.8, true)
    );
    // No rule sets a TTL and the default is 0.
    let v = Rules::new(&[ahead(table("users"), 0.8, None)], Duration::ZERO).verdict(
        "shop",
        "app",
        b"SELECT 1",
        &[USERS],
    );
    assert_eq!(v.refresh_ahead, 0.0);
}

#[test]
fn refresh_ahead_stays_below_one_in_single_precision() {
    let v = read(
        &[ahead(table("users"), 0.999_999_999, None)],
        "SELECT 1",
        &[USERS],
    );
    assert!(
        v.refresh_ahead < 1.0 && v.refresh_ahead > 0.999,
        "{}",
        v.refresh_ahead
    );
}
