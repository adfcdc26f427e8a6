//! Layering: defaults, then the TOML file, then command-line/env overrides, then validation.
//! [`Sources::load`] is pure apart from reading files, so the server re-runs it on SIGHUP.
//!
//! The file is checked key by key rather than in one serde pass, so every unknown key and every
//! ill-typed value is reported (with its dotted key, the text as written, and file:line), not
//! only the first one serde stops at.

use std::fmt;
use std::io::Read;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::{Spanned, Table, Value};

use super::upstream_url::redact_password;
use super::validate::quoted;
use super::{
    Config, ConfigErrors, ConfigIssue, FunctionWrites, REDACTED, RedisConfig, RefreshLogin, Rule,
    Secret, TlsConfig, WarmParam, WarmQuery,
};

/// Values given on the command line or in `PGMEMO_*` environment variables; each replaces the
/// file's value. clap resolves flag-versus-env before this point.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--listen` / `PGMEMO_LISTEN` → `server.listen`.
    pub listen: Option<SocketAddr>,
    /// `--upstream` / `PGMEMO_UPSTREAM` → `upstream.url`.
    pub upstream: Option<String>,
    /// `--admin-listen` / `PGMEMO_ADMIN_LISTEN` → `admin.listen`.
    pub admin_listen: Option<SocketAddr>,
    /// `--redis` / `PGMEMO_REDIS` → `cache.redis.url`.
    pub redis: Option<String>,
    /// `PGMEMO_SECRET` → `cache.secret` (the environment only: a flag would show in `ps`).
    pub secret: Option<String>,
    /// `PGMEMO_ADMIN_TOKEN` → `admin.token` (the environment only, like the secret).
    pub admin_token: Option<String>,
    /// `PGMEMO_ADMIN_PASSWORD` → `admin.password` (the environment only).
    pub admin_password: Option<String>,
}

// Hand-written so that logging the sources never prints a password from a URL.
impl fmt::Debug for Overrides {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Overrides")
            .field("listen", &self.listen)
            .field("upstream", &self.upstream.as_deref().map(redact_password))
            .field("admin_listen", &self.admin_listen)
            .field("redis", &self.redis.as_deref().map(redact_password))
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "admin_password",
                &self.admin_password.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Overrides {
    /// Writes every given override into `config`.
    pub fn apply(&self, config: &mut Config) {
        if let Some(listen) = self.listen {
            config.server.listen = listen;
        }
        if let Some(url) = &self.upstream {
            config.upstream.url.clone_from(url);
        }
        if let Some(listen) = self.admin_listen {
            config.admin.listen = listen;
        }
        if let Some(url) = &self.redis {
            let mut redis = config.cache.redis.take().unwrap_or_default();
            redis.url.clone_from(url);
            config.cache.redis = Some(redis);
        }
        if let Some(secret) = &self.secret {
            config.cache.secret = Some(secret.clone());
        }
        if let Some(token) = &self.admin_token {
            config.admin.token = Some(Secret::new(token.clone()));
        }
        if let Some(password) = &self.admin_password {
            config.admin.password = Some(Secret::new(password.clone()));
        }
    }
}

/// Where a configuration comes from: an optional file plus overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources {
    pub file: Option<PathBuf>,
    pub overrides: Overrides,
}

impl Sources {
    /// Defaults, then the file (re-read on every call), then the overrides, then
    /// [`Config::validate`], then the `password_env` variables are read. Returns every problem
    /// found in the file and in the merged result.
    pub fn load(&self) -> Result<Config, ConfigErrors> {
        let (mut config, issues) = match &self.file {
            None => (Config::default(), Vec::new()),
            Some(path) => read_file(path)?,
        };
        self.overrides.apply(&mut config);
        finish(config, issues)
    }
}

/// Defaults plus the TOML text `text` (no overrides), validated, with the `password_env`
/// variables read. `origin` names the text in messages (normally the file path).
pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigErrors> {
    let (config, issues) = parse_document(text, origin)?;
    finish(config, issues)
}

/// Validates `config` and reads the environment variables its logins name.
fn finish(mut config: Config, mut issues: Vec<ConfigIssue>) -> Result<Config, ConfigErrors> {
    if let Err(invalid) = config.validate() {
        issues.extend(invalid.issues);
    }
    issues.extend(
        config
            .refresh
            .resolve_passwords(|var| std::env::var(var).ok()),
    );
    if issues.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors { issues })
    }
}

/// Far larger than any real configuration; stops `--config /dev/zero` (or a log file given by
/// mistake) from being read into memory whole.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

fn read_file(path: &Path) -> Result<(Config, Vec<ConfigIssue>), ConfigErrors> {
    let origin = path.display().to_string();
    let problem = |why: String| ConfigIssue::new("config file", quoted(&origin), why);
    let file = std::fs::File::open(path).map_err(|e| problem(format!("cannot be read: {e}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| problem(format!("cannot be read: {e}")))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(problem(format!("is larger than {MAX_FILE_BYTES} bytes")).into());
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        problem(format!(
            "is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })?;
    parse_document(&text, &origin)
}

/// Parses `text` over the defaults. Syntax errors are fatal (`Err`); key-level problems are
/// returned beside a config in which each bad key kept its default, so validation can still
/// report the rest.
fn parse_document(text: &str, origin: &str) -> Result<(Config, Vec<ConfigIssue>), ConfigErrors> {
    let (doc, syntax_errors) = DeTable::parse_recoverable(text);
    if !syntax_errors.is_empty() {
        return Err(syntax_errors
            .iter()
            .map(|e| syntax_issue(text, origin, e))
            .collect::<Vec<_>>()
            .into());
    }
    let mut checker = Checker {
        text,
        origin,
        sample: schema_sample(),
        issues: Vec::new(),
    };
    let mut path = Vec::new();
    let clean = checker.check_table(&mut path, doc.get_ref());
    // The parsed table is sorted by key; report in file order instead.
    checker.issues.sort_by_key(|(offset, _)| *offset);
    let mut issues: Vec<ConfigIssue> = checker.issues.into_iter().map(|(_, i)| i).collect();
    let config = match Value::Table(clean).try_into::<Config>() {
        Ok(config) => config,
        // Unreachable while every key was checked on its own above; kept as a typed error
        // rather than a panic in case a future field has cross-key rules.
        Err(e) => {
            issues.push(ConfigIssue::new(
                "config file",
                quoted(origin),
                e.message().to_owned(),
            ));
            return Err(issues.into());
        }
    };
    Ok((config, issues))
}

/// A configuration with every optional section present, as a TOML table: it has every key the
/// types accept, so a single user value can be dropped into it and deserialized on its own.
fn schema_sample() -> Table {
    let mut config = Config::default();
    config.server.tls = Some(TlsConfig {
        cert: PathBuf::from("cert.pem"),
        key: PathBuf::from("key.pem"),
        require: false,
    });
    config.cache.redis = Some(RedisConfig {
        url: "redis://127.0.0.1:6379".to_owned(),
        ..RedisConfig::default()
    });
    config.cache.secret = Some("0".repeat(32));
    config.behind.journal_dir = Some(PathBuf::from("journal"));
    config.functions.no_side_effects = vec!["public.f".to_owned()];
    // The template each `[[functions.writes]]` entry is checked against.
    config.functions.writes = vec![FunctionWrites {
        function: "public.g".to_owned(),
        tables: vec!["public.t".to_owned()],
    }];
    // The template each `[[functions.reads]]` entry is checked against.
    config.functions.reads = config.functions.writes.clone();
    // One rule with every field: the template each `[[rules]]` entry is checked against.
    config.rules = vec![Rule {
        table: Some("t".to_owned()),
        database: Some("d".to_owned()),
        role: Some("r".to_owned()),
        query: Some("SELECT 1".to_owned()),
        cache: Some(true),
        ttl: Some(std::time::Duration::from_secs(60)),
        allow_stable_functions: Some(false),
        allow_rls: Some(false),
        write: Some(super::WritePolicy::Invalidate),
        refresh_ahead: Some(0.5),
        refresh_adaptive: Some(false),
        behind_flush_interval: Some(std::time::Duration::from_millis(100)),
        behind_max_batch: Some(1000),
        behind_increments: Some(false),
        behind_coalesce: Some(false),
    }];
    // The templates of `[[refresh.logins]]` and `[[warm]]` entries.
    config.refresh.logins = vec![RefreshLogin {
        user: "app".to_owned(),
        password: Some(Secret::new("")),
        password_env: Some("APP_PASSWORD".to_owned()),
        env_password: None,
    }];
    config.warm = vec![WarmQuery {
        sql: "SELECT 1".to_owned(),
        // A string first: an array whose first item is a table reads as an array of tables.
        params: vec![WarmParam(Some("1".to_owned())), WarmParam(None)],
        database: Some("d".to_owned()),
        role: Some("r".to_owned()),
        settings: [("search_path".to_owned(), "public".to_owned())].into(),
    }];
    config.warming.hot_keys_file = Some(PathBuf::from("hot-keys"));
    // Serializing plain structs of strings, numbers and paths cannot fail; an empty table
    // would only make every key look unknown, which tests would catch.
    Table::try_from(&config).unwrap_or_default()
}

struct Checker<'a> {
    text: &'a str,
    origin: &'a str,
    sample: Table,
    /// Each issue with the byte offset of its key, for ordering.
    issues: Vec<(usize, ConfigIssue)>,
}

impl Checker<'_> {
    /// Checks every entry of the user's table at `path`; returns the entries that are valid.
    fn check_table(&mut self, path: &mut Vec<String>, user: &DeTable<'_>) -> Table {
        let mut clean = Table::new();
        for (key, value) in user {
            path.push(key.get_ref().to_string());
            let expected = lookup(&self.sample, path);
            let expects_table = matches!(expected, Some(Value::Table(_)));
            let expects_tables = is_array_of_tables(expected);
            let accepted = match value.get_ref() {
                DeValue::Table(section) if expects_table => {
                    self.check_section(path, key.span(), section)
                }
                DeValue::Array(items) if expects_tables => Some(self.check_entries(path, items)),
                _ => self.check_value(path, key.span(), value),
            };
            if let Some(accepted) = accepted {
                clean.insert(key.get_ref().to_string(), accepted);
            }
            path.pop();
        }
        clean
    }

    /// An array of tables (`[[rules]]`, `[[functions.writes]]`): each entry checked as a
    /// section against the sample's single template entry, its keys named `rules[N].key` (N from
    /// 1, in file order). Entries keep their places (an entry that is not a table stays as an
    /// empty one), so validation's `rules[N]` numbers name the same entries.
    fn check_entries(&mut self, path: &mut Vec<String>, items: &[Spanned<DeValue<'_>>]) -> Value {
        let array = dotted(path);
        let mut clean = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            path.push(format!("[{}]", index + 1));
            let entry = match item.get_ref() {
                DeValue::Table(entry) => self.check_section(path, item.span(), entry),
                other => {
                    let line = self.line_of(item.span().start);
                    let why = format!(
                        "expected a table ({{ key = value, ... }} or a [[{array}]] section), \
                         found {} ({}:{line})",
                        other.type_str(),
                        self.origin
                    );
                    let shown = if may_hold_password(path) {
                        quoted(REDACTED)
                    } else {
                        self.value_text(item)
                    };
                    let issue = ConfigIssue::new(dotted(path), shown, why);
                    self.issues.push((item.span().start, issue));
                    None
                }
            };
            clean.push(entry.unwrap_or_else(|| Value::Table(Table::new())));
            path.pop();
        }
        Value::Array(clean)
    }

    /// A known section: its keys one by one, then the section as a whole, which catches
    /// required keys that are missing (e.g. `[server.tls]` without `key`).
    fn check_section(
        &mut self,
        path: &mut Vec<String>,
        key_span: Range<usize>,
        section: &DeTable<'_>,
    ) -> Option<Value> {
        let clean = self.check_table(path, section);
        let line = self.line_of(key_span.start);
        let mut filled = clean.clone();
        let mut complete = true;
        // serde names one missing field per attempt: fill each from the sample and retry, so
        // all of them are reported. Bounded by the section's size in the sample.
        let max_attempts = match lookup(&self.sample, path) {
            Some(Value::Table(t)) => t.len() + 1,
            _ => 1,
        };
        for _ in 0..max_attempts {
            let Err(message) = self.try_with(path, Value::Table(filled.clone())) else {
                break;
            };
            complete = false;
            let missing = backticked_after(&message, "missing field ").map(str::to_owned);
            let placeholder = missing.as_ref().and_then(|field| {
                let mut field_path = path.clone();
                field_path.push(field.clone());
                lookup(&self.sample, &field_path).cloned()
            });
            let (Some(field), Some(placeholder)) = (missing, placeholder) else {
                let issue = ConfigIssue::new(
                    dotted(path),
                    "(table)",
                    format!("{message} ({}:{line})", self.origin),
                );
                self.issues.push((key_span.start, issue));
                break;
            };
            let issue = ConfigIssue::new(
                format!("{}.{field}", dotted(path)),
                "(missing)",
                format!(
                    "required when [{}] is present ({}:{line})",
                    dotted(path),
                    self.origin
                ),
            );
            self.issues.push((key_span.start, issue));
            filled.insert(field, placeholder);
        }
        complete.then_some(Value::Table(clean))
    }

    /// One value (or a table where none is expected): dropped into the sample and
    /// deserialized, so serde's own message says what is wrong with exactly this key.
    fn check_value(
        &mut self,
        path: &[String],
        key_span: Range<usize>,
        value: &Spanned<DeValue<'_>>,
    ) -> Option<Value> {
        let line = self.line_of(key_span.start);
        let secret = may_hold_password(path);
        let shown = if secret {
            quoted(REDACTED)
        } else {
            self.value_text(value)
        };
        let expected = lookup(&self.sample, path);
        let outcome = if matches!(expected, Some(Value::Table(_))) {
            // serde would read an array as the struct's fields in order, and blame whatever
            // is inside it; the real problem is the shape.
            Err(format!(
                "expected a table ([{}]), found {}",
                dotted(path),
                value.get_ref().type_str()
            ))
        } else if is_array_of_tables(expected) {
            Err(format!(
                "expected an array of tables ([[{}]] sections), found {}",
                dotted(path),
                value.get_ref().type_str()
            ))
        } else {
            Value::deserialize(ValueDeserializer::from(value.clone()))
                .map_err(|e| e.message().to_owned())
                .and_then(|v| self.try_with(path, v.clone()).map(|()| v))
        };
        let leaf = path.last().map(String::as_str);
        match outcome {
            Ok(v) => Some(v),
            Err(message) => {
                let why = match backticked_after(&message, "unknown field ") {
                    Some(field) if Some(field) == leaf => {
                        let expected = message
                            .split_once(", expected ")
                            .map(|(_, rest)| format!("; expected {rest}"))
                            .unwrap_or_default();
                        format!("unknown key ({}:{line}){expected}", self.origin)
                    }
                    // serde's messages quote the value.
                    _ if secret => format!(
                        "must be a string (the value is not shown) ({}:{line})",
                        self.origin
                    ),
                    _ => format!("{message}{} ({}:{line})", self.hint(path), self.origin),
                };
                let issue = ConfigIssue::new(dotted(path), shown, why);
                self.issues.push((key_span.start, issue));
                None
            }
        }
    }

    /// Deserializes the sample with `value` at `path`; any error is about that value.
    fn try_with(&self, path: &[String], value: Value) -> Result<(), String> {
        let mut candidate = self.sample.clone();
        insert(&mut candidate, path, value);
        Value::Table(candidate)
            .try_into::<Config>()
            .map(drop)
            .map_err(|e| e.message().to_owned())
    }

    /// A format reminder for durations and socket addresses (found by the shape of the key's
    /// default), since the parsers' own messages do not say what to write.
    fn hint(&self, path: &[String]) -> &'static str {
        match lookup(&self.sample, path) {
            Some(Value::String(s)) if humantime::parse_duration(s).is_ok() => {
                "; write a duration such as \"10s\", \"500ms\" or \"1m 30s\""
            }
            Some(Value::String(s)) if s.parse::<SocketAddr>().is_ok() => {
                "; write IP:PORT such as \"127.0.0.1:6432\" or \"[::]:6432\" (not a host name)"
            }
            _ => "",
        }
    }

    /// The value as written in the file (first line, bounded, password redacted).
    fn value_text(&self, value: &Spanned<DeValue<'_>>) -> String {
        const MAX_CHARS: usize = 80;
        let raw = self.text.get(value.span()).unwrap_or_default();
        // A `[header]` table's span is its header, which reads like a key, not a value.
        if raw.trim_start().starts_with("[[") {
            return "(array of tables)".to_owned();
        }
        if value.get_ref().is_table() && !raw.trim_start().starts_with('{') {
            return "(table)".to_owned();
        }
        let first_line = raw.lines().next().unwrap_or_default().trim();
        let mut shown: String = first_line.chars().take(MAX_CHARS).collect();
        if shown.len() < raw.trim().len() {
            shown.push('…');
        }
        if shown.is_empty() {
            shown = "(table)".to_owned();
        }
        redact_password(&shown)
    }

    fn line_of(&self, offset: usize) -> usize {
        line_col(self.text, offset).0
    }
}

/// 1-based (line, column) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or_default();
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .unwrap_or_default()
        .chars()
        .count()
        + 1;
    (line, column)
}

fn syntax_issue(text: &str, origin: &str, error: &toml::de::Error) -> ConfigIssue {
    let message = error.message().trim_end().replace('\n', "; ");
    match error.span() {
        Some(span) => {
            let (line, column) = line_col(text, span.start);
            let source = text.lines().nth(line - 1).unwrap_or_default().trim();
            // The line as written, unless it may hold a password.
            let shown = if source.contains("password")
                || source.contains("secret")
                || source.contains("token")
            {
                "(line not shown: it may hold a password)".to_owned()
            } else {
                format!("`{}`", redact_password(source))
            };
            ConfigIssue::new(
                format!("{origin}:{line}:{column}"),
                shown,
                format!("invalid TOML: {message}"),
            )
        }
        None => ConfigIssue::new(origin, "(file)", format!("invalid TOML: {message}")),
    }
}

/// The name in backticks right after `prefix` at the start of a serde message, e.g. `key` in
/// "missing field `key`".
fn backticked_after<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    let rest = message.strip_prefix(prefix)?.strip_prefix('`')?;
    rest.split_once('`').map(|(name, _)| name)
}

/// A key path for messages: `rules`, `[2]`, `ttl` → `rules[2].ttl`.
fn dotted(path: &[String]) -> String {
    let mut out = String::new();
    for segment in path {
        if !out.is_empty() && !is_index(segment) {
            out.push('.');
        }
        out.push_str(segment);
    }
    out
}

/// Whether the value at `path` may be a password (a `[[refresh.logins]]` entry or its
/// `password`): neither it nor serde's message about it is shown.
fn may_hold_password(path: &[String]) -> bool {
    match path {
        [section, logins, rest @ ..] if section == "refresh" && logins == "logins" => !matches!(
            rest.last().map(String::as_str),
            Some("user" | "password_env")
        ),
        _ => false,
    }
}

/// A path segment naming an entry of an array of tables (`[N]`).
fn is_index(segment: &str) -> bool {
    segment.starts_with('[')
}

fn is_array_of_tables(value: Option<&Value>) -> bool {
    matches!(value, Some(Value::Array(items)) if items.first().is_some_and(Value::is_table))
}

/// The sample value at `path`. Any `[N]` segment stands for the array's template entry (the
/// sample's arrays of tables hold exactly one).
fn lookup<'t>(table: &'t Table, path: &[String]) -> Option<&'t Value> {
    let (first, rest) = path.split_first()?;
    let mut value = table.get(first)?;
    let mut rest = rest;
    if let (Value::Array(items), Some((index, after))) = (value, rest.split_first())
        && is_index(index)
    {
        value = items.first()?;
        rest = after;
    }
    if rest.is_empty() {
        return Some(value);
    }
    match value {
        Value::Table(inner) => lookup(inner, rest),
        _ => None,
    }
}

/// Sets `path` in `table`, creating (or replacing non-table) intermediate entries.
fn insert(table: &mut Table, path: &[String], value: Value) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if rest.is_empty() {
        table.insert(first.clone(), value);
        return;
    }
    let entry = table
        .entry(first.clone())
        .or_insert_with(|| Value::Table(Table::new()));
    // `[N]`: into the template entry, the only one of the sample's arrays of tables.
    if let (Value::Array(items), Some((index, after))) = (&mut *entry, rest.split_first())
        && is_index(index)
    {
        if items.is_empty() {
            items.push(Value::Table(Table::new()));
        }
        if let Some(item) = items.first_mut() {
            match (after.is_empty(), item) {
                (true, item) => *item = value,
                (false, Value::Table(inner)) => insert(inner, after, value),
                (false, item) => {
                    let mut inner = Table::new();
                    insert(&mut inner, after, value);
                    *item = Value::Table(inner);
                }
            }
        }
        return;
    }
    if !entry.is_table() {
        *entry = Value::Table(Table::new());
    }
    if let Value::Table(inner) = entry {
        insert(inner, rest, value);
    }
}

#[cfg(test)]
#[path = "load_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "load_tables_tests.rs"]
mod tables_tests;

#[cfg(test)]
#[path = "load_refresh_tests.rs"]
mod refresh_tests;
