//! The sections of the configuration that keep results fresh ahead of reads: `[refresh]`
//! (the background executor that refreshes and warms results, and the logins it may use),
//! the `[[warm]]` queries and `[warming]`. Types, defaults and the login lookup only; checks
//! live in `validate`, the refresh itself in [`crate::refresh`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::validate::quoted;
use super::{ConfigIssue, REDACTED, UpstreamTarget};

/// The role pgmemo's side connections log in as when `upstream.url` names no user (as
/// libpq would default it for pgmemo's own process, pgmemo picks the conventional superuser
/// name rather than the OS user).
pub const DEFAULT_SIDE_USER: &str = "postgres";

/// A password from the configuration. `Debug` prints `***` and serializing writes
/// [`REDACTED`] (the only serialized forms of a configuration are `--print-config` and the
/// checker's schema), so it never reaches a log line or printed output; read it with
/// [`Secret::expose`] where it is sent.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(text: impl Into<String>) -> Self {
        Secret(text.into())
    }

    /// The password itself: only for the authentication exchange.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

/// `[refresh]`: the background executor that runs refreshes (refresh-ahead, write-through
/// outside a commit, warming) on connections of its own, as the role that stored each result.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RefreshConfig {
    /// Connections the background executor may hold open, over all roles and databases.
    pub pool_size: usize,
    /// Bound on each background query; past it the query is cancelled and its result left
    /// as it was.
    #[serde(with = "humantime_serde")]
    pub query_timeout: Duration,
    /// A background connection unused this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long write-through may hold a commit's acknowledgement while it refreshes the
    /// results the commit invalidated; what is not refreshed by then stays invalidated.
    #[serde(with = "humantime_serde")]
    pub time_budget: Duration,
    /// With a rule's `refresh_adaptive`: background refreshes at most this share of the
    /// queries pgmemo sends upstream.
    pub max_share: f64,
    /// Roles pgmemo may log in as for background work, besides the `upstream.url` user (see
    /// [`RefreshConfig::password_for`]).
    pub logins: Vec<RefreshLogin>,
}

impl Default for RefreshConfig {
    fn default() -> Self {
        Self {
            pool_size: 4,
            query_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            time_budget: Duration::from_millis(100),
            max_share: 0.1,
            logins: Vec::new(),
        }
    }
}

/// One `[[refresh.logins]]` entry: a role and how pgmemo authenticates as it. At most one of
/// `password` and `password_env`; neither = no password (e.g. `trust` in `pg_hba.conf`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshLogin {
    /// Required (validation refuses it empty: serde's default keeps an entry with another
    /// bad key in its place, so the rest of it is still checked).
    #[serde(default)]
    pub user: String,
    /// The password, written in the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// An environment variable holding the password, read when the configuration is loaded
    /// (and reloaded); unset or empty is a load error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// The value of `password_env`, filled by [`RefreshConfig::resolve_passwords`].
    #[serde(skip)]
    pub env_password: Option<Secret>,
}

/// What pgmemo may log in as for background work: a role and its password, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub user: String,
    pub password: Option<Secret>,
}

impl RefreshConfig {
    /// Whether pgmemo may log in as `user` for background work, and with what password: a
    /// `[[refresh.logins]]` entry for it first, then the `upstream.url` user (or
    /// [`DEFAULT_SIDE_USER`] when the URL names none, as pgmemo's catalog connections do)
    /// with the URL's password. `None`: pgmemo has no login for that role, so results stored
    /// under it cannot be refreshed.
    pub fn password_for(&self, user: &str, upstream: &UpstreamTarget) -> Option<Login> {
        if let Some(login) = self.logins.iter().find(|l| l.user == user) {
            return Some(Login {
                user: login.user.clone(),
                password: login
                    .password
                    .clone()
                    .or_else(|| login.env_password.clone()),
            });
        }
        let url_user = upstream.user.as_deref().unwrap_or(DEFAULT_SIDE_USER);
        (url_user == user).then(|| Login {
            user: user.to_owned(),
            password: upstream.password.clone().map(Secret),
        })
    }

    /// Reads the `password_env` variables (through `env`, normally [`std::env::var`]) into
    /// the logins. Every variable that is unset or empty is an issue naming it.
    pub fn resolve_passwords(&mut self, env: impl Fn(&str) -> Option<String>) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        for (index, login) in self.logins.iter_mut().enumerate() {
            let Some(var) = &login.password_env else {
                continue;
            };
            match env(var).filter(|value| !value.is_empty()) {
                Some(value) => login.env_password = Some(Secret(value)),
                None => issues.push(ConfigIssue::new(
                    format!("refresh.logins[{}].password_env", index + 1),
                    quoted(var),
                    format!(
                        "the environment variable `{var}` is not set (or is empty): set it to \
                         the password of `{}`",
                        login.user
                    ),
                )),
            }
        }
        issues
    }
}

/// One `[[warm]]` entry: a read pgmemo runs to fill the cache before clients ask for it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WarmQuery {
    /// One cacheable read; `$1`, `$2`, ... are the `params`. Required (validated, as
    /// [`RefreshLogin::user`]).
    #[serde(default)]
    pub sql: String,
    /// Parameters in text format: strings, or `{ null = true }` for NULL (TOML has no null).
    #[serde(default)]
    pub params: Vec<WarmParam>,
    /// Default: the `upstream.url` database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// Default: the `upstream.url` user. Needs a login (see [`RefreshConfig::password_for`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Session settings (GUC name → value) set before the query, so the result is stored
    /// under the fingerprint clients with those settings look up.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
}

impl WarmQuery {
    /// The database the query runs in: its own, else the `upstream.url` one (`None`: neither,
    /// which validation refuses).
    pub fn effective_database<'a>(&'a self, upstream: &'a UpstreamTarget) -> Option<&'a str> {
        self.database.as_deref().or(upstream.dbname.as_deref())
    }

    /// The role the query runs as: its own, else the `upstream.url` user (or
    /// [`DEFAULT_SIDE_USER`]).
    pub fn effective_role<'a>(&'a self, upstream: &'a UpstreamTarget) -> &'a str {
        self.role
            .as_deref()
            .or(upstream.user.as_deref())
            .unwrap_or(DEFAULT_SIDE_USER)
    }
}

/// One `[[warm]]` parameter in text format: a string, or NULL written `{ null = true }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmParam(pub Option<String>);

impl Serialize for WarmParam {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Some(text) => s.serialize_str(text),
            None => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("null", &true)?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for WarmParam {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(WarmParamVisitor)
    }
}

/// A visitor rather than an untagged enum, so a number gets a message that says to quote it.
struct WarmParamVisitor;

const WARM_PARAM_EXPECTED: &str =
    "a parameter in text format: a string such as \"42\", or { null = true } for NULL";

impl<'de> Visitor<'de> for WarmParamVisitor {
    type Value = WarmParam;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(WARM_PARAM_EXPECTED)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<WarmParam, E> {
        Ok(WarmParam(Some(text.to_owned())))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WarmParam, A::Error> {
        let mut null = false;
        while let Some(key) = map.next_key::<String>()? {
            if key != "null" || null {
                return Err(de::Error::custom(format!(
                    "`{key}` in a parameter: write {{ null = true }} for NULL"
                )));
            }
            null = map.next_value::<bool>()?;
            if !null {
                return Err(de::Error::custom(
                    "{ null = false } is not a value: write the parameter as a string",
                ));
            }
        }
        if !null {
            return Err(de::Error::custom(
                "empty table: write { null = true } for NULL",
            ));
        }
        Ok(WarmParam(None))
    }
}

/// `[warming]`: filling the cache at start-up.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WarmingConfig {
    /// Run the `[[warm]]` queries (and reload the hot keys) when pgmemo starts.
    pub at_start: bool,
    /// How long warming at start-up may take in all; what has not run by then is skipped.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How many of the most requested results pgmemo remembers, to run them again at the
    /// next start; 0 = off. Kept in Redis with `cache.redis`, else in `hot_keys_file`.
    pub hot_keys: usize,
    /// Where the hot keys are kept without a shared Redis tier: a file pgmemo rewrites
    /// atomically, authenticated with the cache secret.
    pub hot_keys_file: Option<PathBuf>,
}

impl Default for WarmingConfig {
    fn default() -> Self {
        Self {
            at_start: true,
            timeout: Duration::from_secs(30),
            hot_keys: 0,
            hot_keys_file: None,
        }
    }
}
