//! Validation of `[refresh]`, the `[[warm]]` queries and `[warming]`: bounded pools and
//! budgets, logins that can be used, warm queries that are one cacheable read run as a role
//! pgmemo can log in as, and a hot-key store that can be written and read back.

use super::*;
use crate::config::{RefreshConfig, WarmQuery, WarmingConfig};

/// Accepted `refresh.pool_size`.
pub const REFRESH_POOL_RANGE: (usize, usize) = (1, 64);
/// Accepted `refresh.query_timeout`.
pub const REFRESH_QUERY_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_millis(1), Duration::from_secs(3600));
/// Accepted `refresh.idle_timeout`.
pub const REFRESH_IDLE_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(3600));
/// Accepted `refresh.time_budget`: it holds a writer's acknowledgement.
pub const REFRESH_TIME_BUDGET_RANGE: (Duration, Duration) =
    (Duration::from_millis(1), Duration::from_secs(10));
/// Most `[[refresh.logins]]` entries.
pub const MAX_REFRESH_LOGINS: usize = 1000;
/// Most `[[warm]]` entries: each runs at every start.
pub const MAX_WARM_QUERIES: usize = 1000;
/// Most parameters of one `[[warm]]` query (the protocol's limit).
pub const MAX_WARM_PARAMS: usize = u16::MAX as usize;
/// Accepted `warming.timeout`.
pub const WARMING_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(3600));
/// Largest `warming.hot_keys`.
pub const MAX_HOT_KEYS: usize = 100_000;
/// Settings a `[[warm]]` entry may not set: they change the role, which is `role`'s job.
const ROLE_SETTINGS: [&str; 2] = ["role", "session_authorization"];

pub(super) fn check_refresh(refresh: &RefreshConfig, issues: &mut Vec<ConfigIssue>) {
    let (lo, hi) = REFRESH_POOL_RANGE;
    if !(lo..=hi).contains(&refresh.pool_size) {
        issues.push(ConfigIssue::new(
            "refresh.pool_size",
            refresh.pool_size.to_string(),
            format!("must be between {lo} and {hi} connections"),
        ));
    }
    check_range(
        "refresh.query_timeout",
        refresh.query_timeout,
        REFRESH_QUERY_TIMEOUT_RANGE,
        issues,
    );
    check_range(
        "refresh.idle_timeout",
        refresh.idle_timeout,
        REFRESH_IDLE_TIMEOUT_RANGE,
        issues,
    );
    check_range(
        "refresh.time_budget",
        refresh.time_budget,
        REFRESH_TIME_BUDGET_RANGE,
        issues,
    );
    if !(0.0..=1.0).contains(&refresh.max_share) {
        issues.push(ConfigIssue::new(
            "refresh.max_share",
            refresh.max_share.to_string(),
            "must be a fraction from 0 to 1 of the queries sent upstream (e.g. 0.1)",
        ));
    }
    if refresh.logins.len() > MAX_REFRESH_LOGINS {
        issues.push(ConfigIssue::new(
            "refresh.logins",
            format!("({} logins)", refresh.logins.len()),
            format!("at most {MAX_REFRESH_LOGINS} logins"),
        ));
    }
    let mut seen: Vec<(&str, usize)> = Vec::new();
    for (index, login) in refresh.logins.iter().enumerate() {
        let key = |field: &str| format!("refresh.logins[{}].{field}", index + 1);
        if login.user.is_empty() {
            issues.push(ConfigIssue::new(
                key("user"),
                "\"\"",
                "required: the role pgmemo may log in as",
            ));
        } else if let Some(why) = role_name_problem(&login.user) {
            issues.push(ConfigIssue::new(key("user"), quoted(&login.user), why));
        } else {
            match seen.iter().find(|(user, _)| *user == login.user) {
                Some((_, first)) => issues.push(ConfigIssue::new(
                    key("user"),
                    quoted(&login.user),
                    format!(
                        "is already listed by refresh.logins[{first}]; keep one entry per role"
                    ),
                )),
                None => seen.push((&login.user, index + 1)),
            }
        }
        match (&login.password, &login.password_env) {
            (Some(_), Some(_)) => issues.push(ConfigIssue::new(
                key("password_env"),
                quoted(login.password_env.as_deref().unwrap_or_default()),
                "set either password or password_env, not both",
            )),
            (Some(password), None) if password.expose().is_empty() => {
                issues.push(ConfigIssue::new(
                    key("password"),
                    "\"\"",
                    "must not be empty; leave password out for a role that needs none",
                ));
            }
            (None, Some(var)) if !is_env_var_name(var) => issues.push(ConfigIssue::new(
                key("password_env"),
                quoted(var),
                "must name an environment variable (letters, digits and `_`, not starting \
                 with a digit), e.g. \"APP_PASSWORD\"",
            )),
            _ => {}
        }
    }
}

/// Checks the `[[warm]]` entries; the default database and role come from the upstream URL
/// (unparsable, already reported: those checks are skipped).
pub(super) fn check_warm(config: &Config, issues: &mut Vec<ConfigIssue>) {
    let upstream = UpstreamTarget::parse(&config.upstream.url).ok();
    if config.warm.len() > MAX_WARM_QUERIES {
        issues.push(ConfigIssue::new(
            "warm",
            format!("({} queries)", config.warm.len()),
            format!("at most {MAX_WARM_QUERIES} warm queries (each runs at every start)"),
        ));
    }
    for (index, warm) in config.warm.iter().enumerate() {
        let key = |field: &str| format!("warm[{}].{field}", index + 1);
        check_warm_sql(warm, &key, issues);
        if warm.params.len() > MAX_WARM_PARAMS {
            issues.push(ConfigIssue::new(
                key("params"),
                format!("({} parameters)", warm.params.len()),
                format!("at most {MAX_WARM_PARAMS} parameters"),
            ));
        }
        if warm
            .params
            .iter()
            .flat_map(|p| &p.0)
            .any(|p| p.contains('\0'))
        {
            issues.push(ConfigIssue::new(
                key("params"),
                "(params)",
                "a parameter holds a NUL character, which PostgreSQL text cannot",
            ));
        }
        check_warm_target(config, warm, upstream.as_ref(), &key, issues);
        for (name, value) in &warm.settings {
            let shown = format!("{} = {}", quoted(name), quoted(value));
            if let Some(why) = setting_name_problem(name) {
                issues.push(ConfigIssue::new(key("settings"), shown, why));
            } else if value.contains('\0') {
                issues.push(ConfigIssue::new(
                    key("settings"),
                    shown,
                    "the value holds a NUL character",
                ));
            }
        }
    }
}

/// One statement, and a read pgmemo would cache: warming anything else would run a write (or
/// a statement whose result is never stored) at every start.
fn check_warm_sql(warm: &WarmQuery, key: &dyn Fn(&str) -> String, issues: &mut Vec<ConfigIssue>) {
    const MAX_SHOWN: usize = 60;
    let analysis = crate::sql::analyze(warm.sql.as_bytes());
    let Some(reason) = analysis.reason() else {
        return;
    };
    // One line, bounded: runs of whitespace (newlines too) shown as one space.
    let one_line = warm.sql.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut shown: String = one_line.chars().take(MAX_SHOWN).collect();
    if shown.len() < one_line.len() {
        shown.push('…');
    }
    let why = match reason {
        crate::sql::NotCacheable::Empty => {
            "required, and not empty: one statement, a read pgmemo caches".to_owned()
        }
        crate::sql::NotCacheable::MultipleStatements => {
            "must be one statement; write one [[warm]] entry per statement".to_owned()
        }
        other => format!("must be a read pgmemo caches: {other}"),
    };
    issues.push(ConfigIssue::new(key("sql"), quoted(&shown), why));
}

/// The database and role the query runs in and as: named (here or in the URL), and a role
/// pgmemo can log in as.
fn check_warm_target(
    config: &Config,
    warm: &WarmQuery,
    upstream: Option<&UpstreamTarget>,
    key: &dyn Fn(&str) -> String,
    issues: &mut Vec<ConfigIssue>,
) {
    match &warm.database {
        Some(db) if db.is_empty() || db.contains('\0') => issues.push(ConfigIssue::new(
            key("database"),
            quoted(db),
            "must be a database name (leave it out for the upstream.url database)",
        )),
        Some(_) => {}
        None if upstream.is_some_and(|u| u.dbname.is_none()) => issues.push(ConfigIssue::new(
            key("database"),
            "(missing)",
            "required: upstream.url names no database to default to",
        )),
        None => {}
    }
    if let Some(role) = &warm.role
        && let Some(why) = role_name_problem(role)
    {
        issues.push(ConfigIssue::new(key("role"), quoted(role), why));
        return;
    }
    let Some(upstream) = upstream else {
        return;
    };
    let role = warm.effective_role(upstream);
    if config.refresh.password_for(role, upstream).is_none() {
        issues.push(ConfigIssue::new(
            key("role"),
            quoted(role),
            format!(
                "pgmemo has no login for role `{role}`: add a [[refresh.logins]] entry with \
                 user = {}, or leave role out to run as the upstream.url user",
                quoted(role)
            ),
        ));
    }
}

pub(super) fn check_warming(config: &Config, issues: &mut Vec<ConfigIssue>) {
    let warming: &WarmingConfig = &config.warming;
    check_range(
        "warming.timeout",
        warming.timeout,
        WARMING_TIMEOUT_RANGE,
        issues,
    );
    if warming.hot_keys > MAX_HOT_KEYS {
        issues.push(ConfigIssue::new(
            "warming.hot_keys",
            warming.hot_keys.to_string(),
            format!("must be between 0 (off) and {MAX_HOT_KEYS}"),
        ));
    }
    let Some(file) = &warming.hot_keys_file else {
        if warming.hot_keys > 0 && config.cache.redis.is_none() {
            issues.push(ConfigIssue::new(
                "warming.hot_keys_file",
                "(missing)",
                "required with warming.hot_keys above 0 and no cache.redis: pgmemo needs \
                 somewhere to keep the hot keys between runs",
            ));
        }
        return;
    };
    let shown = quoted(&file.display().to_string());
    if warming.hot_keys == 0 {
        issues.push(ConfigIssue::new(
            "warming.hot_keys_file",
            shown,
            "only with warming.hot_keys above 0 (0 keeps no hot keys)",
        ));
        return;
    }
    if config.cache.secret.is_none() {
        issues.push(ConfigIssue::new(
            "warming.hot_keys_file",
            shown.clone(),
            "needs cache.secret: the file is authenticated with it, and a random secret per \
             process would make it unreadable at the next start",
        ));
    }
    if file.as_os_str().is_empty() || file.file_name().is_none() {
        issues.push(ConfigIssue::new(
            "warming.hot_keys_file",
            shown,
            "must name a file",
        ));
        return;
    }
    let dir = match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        issues.push(ConfigIssue::new(
            "warming.hot_keys_file",
            shown,
            format!(
                "its directory {} does not exist (relative paths start at the working \
                 directory)",
                dir.display()
            ),
        ));
    }
}

/// Why `name` cannot be a role name (`None`: it can).
fn role_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("must not be empty".to_owned())
    } else if name.contains('\0') {
        Some("must not hold a NUL character".to_owned())
    } else if name.len() > MAX_IDENTIFIER_BYTES {
        Some(format!(
            "is longer than {MAX_IDENTIFIER_BYTES} bytes, PostgreSQL's limit for role names"
        ))
    } else {
        None
    }
}

/// Why `name` cannot be a setting a session sets (`None`: it can). Setting names are
/// identifiers (`work_mem`), or `prefix.name` for extensions' and custom ones
/// (`app.tenant`); PostgreSQL compares them case-insensitively.
fn setting_name_problem(name: &str) -> Option<String> {
    let part_ok = |part: &str| {
        part.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
    };
    if name.is_empty() || name.len() > MAX_IDENTIFIER_BYTES || !name.split('.').all(part_ok) {
        return Some(
            "is not a setting name: letters, digits, `_` and `$` (not starting with a digit), \
             optionally `prefix.name`, at most 63 bytes"
                .to_owned(),
        );
    }
    ROLE_SETTINGS
        .iter()
        .any(|r| r.eq_ignore_ascii_case(name))
        .then(|| "changes the role: set the entry's `role` instead".to_owned())
}

/// Whether `name` can be an environment variable a shell sets.
fn is_env_var_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}
