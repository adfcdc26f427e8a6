//! Validation of the `[functions]` tables and the `[[rules]]`: catalog names well formed,
//! no function declared twice, rule patterns and TTLs that can match and hold.

use super::*;

/// A function or table compared with catalog names: `schema.name`, unquoted parts lower-case.
pub(super) fn catalog_name(text: &str, example: &str) -> Result<(String, String), String> {
    if text.is_empty() {
        return Err(format!(
            "must not be empty; write `schema.name`, e.g. \"{example}\""
        ));
    }
    let name = parse_qualified_name(text, Case::RequireLower)?;
    match name.schema {
        Some(schema) => Ok((schema, name.name)),
        None => Err(format!("must be schema-qualified, e.g. \"{example}\"")),
    }
}

pub(super) fn check_functions(functions: &FunctionsConfig, issues: &mut Vec<ConfigIssue>) {
    for text in &functions.no_side_effects {
        if let Err(why) = catalog_name(text, "public.uuid_generate_v4") {
            issues.push(ConfigIssue::new(
                "functions.no_side_effects",
                quoted(text),
                why,
            ));
        }
    }
    check_function_tables(functions, Declared::Writes, issues);
    check_function_tables(functions, Declared::Reads, issues);
    check_range(
        "functions.undeclared_reads_ttl",
        functions.undeclared_reads_ttl,
        UNDECLARED_READS_TTL_RANGE,
        issues,
    );
}

/// Which list of declared tables an entry belongs to, for messages.
#[derive(Clone, Copy)]
pub(super) enum Declared {
    Writes,
    Reads,
}

impl Declared {
    fn key(self) -> &'static str {
        match self {
            Declared::Writes => "writes",
            Declared::Reads => "reads",
        }
    }

    /// Why an entry with no tables is refused (`None`: it is not). A function that reads no
    /// table is declared with `tables = []`, so its reads count as known.
    fn empty_why(self) -> Option<&'static str> {
        match self {
            Declared::Writes => Some(
                "must list every table the function writes (one that writes nothing belongs \
                 in functions.no_side_effects)",
            ),
            Declared::Reads => None,
        }
    }
}

/// `[[functions.writes]]` and `[[functions.reads]]`: valid names, one entry per function, and
/// for writes at least one table each and none that `no_side_effects` says writes nothing.
pub(super) fn check_function_tables(
    functions: &FunctionsConfig,
    kind: Declared,
    issues: &mut Vec<ConfigIssue>,
) {
    let (entries, side_effect_free) = match kind {
        Declared::Writes => (&functions.writes, functions.qualified_names()),
        Declared::Reads => (&functions.reads, Vec::new()),
    };
    let list = kind.key();
    if entries.len() > MAX_FUNCTION_WRITES {
        issues.push(ConfigIssue::new(
            format!("functions.{list}"),
            format!("({} entries)", entries.len()),
            format!("at most {MAX_FUNCTION_WRITES} entries"),
        ));
    }
    // Each function, by catalog name, with the number of the entry that declared it first.
    let mut seen: Vec<((String, String), usize)> = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        // Numbered from 1, in file order, as the loader numbers them.
        let key = |field: &str| format!("functions.{list}[{}].{field}", index + 1);
        let mut refuse = |field: &str, value: String, why: String| {
            issues.push(ConfigIssue::new(key(field), value, why));
        };
        let shown = quoted(&entry.function);
        match catalog_name(&entry.function, "public.counters_audit_fn") {
            Err(why) => refuse("function", shown, why),
            Ok(name) => {
                if side_effect_free.contains(&name) {
                    refuse(
                        "function",
                        shown.clone(),
                        "is also in functions.no_side_effects, which says it writes nothing; \
                         keep it in only one of the two"
                            .to_owned(),
                    );
                }
                match seen.iter().find(|(other, _)| *other == name) {
                    Some((_, first)) => refuse(
                        "function",
                        shown,
                        format!(
                            "is already declared by functions.{list}[{first}]; list all its \
                             tables in one entry"
                        ),
                    ),
                    None => seen.push((name, index + 1)),
                }
            }
        }
        if let Some(why) = kind.empty_why().filter(|_| entry.tables.is_empty()) {
            refuse("tables", "[]".to_owned(), why.to_owned());
        }
        for table in &entry.tables {
            if let Err(why) = catalog_name(table, "public.counters_audit") {
                refuse("tables", quoted(table), why);
            }
        }
    }
}

pub(super) fn check_rules(rules: &[Rule], default_ttl: Duration, issues: &mut Vec<ConfigIssue>) {
    if rules.len() > MAX_RULES {
        issues.push(ConfigIssue::new(
            "rules",
            format!("({} rules)", rules.len()),
            format!("at most {MAX_RULES} rules (every cached read is checked against each)"),
        ));
    }
    for (index, rule) in rules.iter().enumerate() {
        // Numbered from 1, in file order: "the second [[rules]]" is rules[2].
        let key = |field: &str| format!("rules[{}]{field}", index + 1);
        let matchers = [&rule.table, &rule.database, &rule.role, &rule.query];
        if matchers.iter().all(|m| m.is_none()) {
            issues.push(ConfigIssue::new(
                key(""),
                "(rule)",
                format!("matches nothing in particular: set at least one of {MATCH_FIELDS}"),
            ));
        }
        let acts = rule.cache.is_some()
            || rule.ttl.is_some()
            || rule.allow_stable_functions.is_some()
            || rule.allow_rls.is_some()
            || rule.write.is_some()
            || rule.refresh_ahead.is_some()
            || rule.refresh_adaptive.is_some();
        // behind_* fields alone are reported by `behind::check_rule`.
        if !acts {
            issues.push(ConfigIssue::new(
                key(""),
                "(rule)",
                format!("changes nothing: set at least one of {ACTION_FIELDS}"),
            ));
        }
        for (field, value) in [
            ("database", &rule.database),
            ("role", &rule.role),
            ("query", &rule.query),
        ] {
            let Some(value) = value else { continue };
            let empty = match field {
                // A pattern of only comments and spaces normalises to nothing.
                "query" => crate::sql::normalize_for_key(value.as_bytes()).is_empty(),
                _ => value.is_empty(),
            };
            if empty {
                issues.push(ConfigIssue::new(
                    key(&format!(".{field}")),
                    quoted(value),
                    "must not be empty (leave the key out to match any)",
                ));
            }
        }
        if let Some(table) = &rule.table
            && let Err(why) = parse_qualified_name(table, Case::Fold)
        {
            issues.push(ConfigIssue::new(
                key(".table"),
                quoted(table),
                format!("{why}; write `name` (any schema) or `schema.name`"),
            ));
        }
        check_rls_ttl(rule, default_ttl, &key, issues);
        check_write_scope(rule, &key, issues);
        crate::config::behind::check_rule(rule, &key, issues);
        check_refresh_ahead(rule, default_ttl, &key, issues);
    }
}

/// `refresh_ahead` is a fraction of a TTL in [0, 1): it needs a finite TTL and something
/// stored; `refresh_adaptive` only qualifies a `refresh_ahead` of the same rule.
pub(super) fn check_refresh_ahead(
    rule: &Rule,
    default_ttl: Duration,
    key: &dyn Fn(&str) -> String,
    issues: &mut Vec<ConfigIssue>,
) {
    let ahead = rule.refresh_ahead;
    if let Some(fraction) = ahead {
        let shown = fraction.to_string();
        if !(0.0..1.0).contains(&fraction) {
            issues.push(ConfigIssue::new(
                key(".refresh_ahead"),
                shown,
                "must be a fraction of the TTL from 0 (off) up to, not including, 1 (e.g. 0.8: \
                 a hit in the last fifth of the entry's lifetime also refreshes it)",
            ));
        } else if rule.cache == Some(false) {
            issues.push(ConfigIssue::new(
                key(".refresh_ahead"),
                shown,
                "a rule with cache = false stores nothing to refresh",
            ));
        } else if fraction > 0.0 {
            const WHY: &str = "refresh_ahead is a fraction of the TTL, so it needs a TTL above 0 \
                               (\"0s\" keeps entries until invalidated: they never near their end)";
            match rule.ttl {
                Some(ttl) if ttl.is_zero() => {
                    issues.push(ConfigIssue::new(key(".refresh_ahead"), shown, WHY));
                }
                None if default_ttl.is_zero() => issues.push(ConfigIssue::new(
                    key(".refresh_ahead"),
                    shown,
                    format!(
                        "{WHY}; this rule sets no ttl and cache.ttl = \"0s\", so give the rule \
                         a ttl"
                    ),
                )),
                _ => {}
            }
        }
    }
    if let Some(adaptive) = rule.refresh_adaptive
        && !ahead.is_some_and(|f| f > 0.0)
    {
        issues.push(ConfigIssue::new(
            key(".refresh_adaptive"),
            adaptive.to_string(),
            "only beside refresh_ahead above 0 in the same rule",
        ));
    }
}

/// `write` is decided per written table (with the session's database and role); a write has
/// no statement text a `query` pattern could select on, so such a rule would never apply.
pub(super) fn check_write_scope(
    rule: &Rule,
    key: &dyn Fn(&str) -> String,
    issues: &mut Vec<ConfigIssue>,
) {
    if let (Some(write), Some(_)) = (rule.write, &rule.query) {
        issues.push(ConfigIssue::new(
            key(".write"),
            quoted(write.as_str()),
            "write applies to the tables a write touches; a rule with `query` cannot set it",
        ));
    }
}

/// An RLS opt-in must have a finite TTL: policies can read other tables (and settings) whose
/// writes invalidate nothing, so the TTL is the only bound on how stale such an entry gets.
pub(super) fn check_rls_ttl(
    rule: &Rule,
    default_ttl: Duration,
    key: &dyn Fn(&str) -> String,
    issues: &mut Vec<ConfigIssue>,
) {
    if rule.allow_rls != Some(true) {
        return;
    }
    const WHY: &str = "a rule with allow_rls = true needs a TTL above 0: row-level security \
                       policies can read other tables whose writes do not invalidate the entry, \
                       so the TTL is the only bound on staleness";
    match rule.ttl {
        Some(ttl) if ttl.is_zero() => {
            issues.push(ConfigIssue::new(key(".ttl"), quoted_duration(ttl), WHY));
        }
        None if default_ttl.is_zero() => issues.push(ConfigIssue::new(
            key(".allow_rls"),
            "true",
            format!("{WHY}; this rule sets no ttl and cache.ttl = \"0s\", so give the rule a ttl"),
        )),
        _ => {}
    }
}
