//! The caching sections of the configuration: `[cache]` (L1 sizing, default TTL, key secret,
//! fill waits), `[catalog]` (poll interval), `[functions]` (side-effect allowlist, declared reads and writes) and the
//! per-table / database / role / query `[[rules]]`. Types and defaults only; checks live in
//! `validate`, matching in [`super::rules`].

use std::time::Duration;

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::RedisConfig;
use super::rules::{Case, parse_qualified_name};

/// A size in bytes, written as an integer or as a string with a unit (`"256MiB"`, `"64kB"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `"123"`, `"64KiB"`, `"1 MiB"`, `"2GB"` (SI units are powers of 1000, IEC of 1024).
    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{text}` is not a size (e.g. 1048576, \"64KiB\", \"256MiB\")"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "kib" | "k" => 1 << 10,
            "mib" | "m" => 1 << 20,
            "gib" | "g" => 1 << 30,
            other => {
                return Err(format!(
                    "unknown size unit `{other}` (use B, KiB, MiB, GiB, kB, MB, GB)"
                ));
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("`{text}` is too large"))
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl fmt::Display for ByteSize {
    /// The exact size, with the largest IEC unit that divides it (`1048576` → `1MiB`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
            if n != 0 && n.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", n >> shift);
            }
        }
        write!(f, "{n}B")
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ByteSizeVisitor)
    }
}

/// A visitor rather than an untagged enum, so a wrong type gets a message that says what to
/// write instead of "did not match any variant".
struct ByteSizeVisitor;

impl Visitor<'_> for ByteSizeVisitor {
    type Value = ByteSize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a size: bytes as an integer, or a string such as \"64KiB\" or \"256MiB\"")
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<ByteSize, E> {
        Ok(ByteSize(n))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<ByteSize, E> {
        u64::try_from(n)
            .map(ByteSize)
            .map_err(|_| E::custom(format!("a size cannot be negative ({n})")))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<ByteSize, E> {
        ByteSize::parse(text).map_err(E::custom)
    }
}

/// `[cache]`: the result cache.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Global kill switch (reloadable): `false` relays everything, serves and stores nothing.
    pub enabled: bool,
    /// Bytes of cached responses held in process (L1).
    pub max_memory: ByteSize,
    /// Largest response stored; larger results are relayed and not stored.
    pub max_entry_size: ByteSize,
    /// TTL of entries no rule sets one for; `0s` = until invalidated.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// How long a session waits for another session filling the same key before running the
    /// query itself.
    #[serde(with = "humantime_serde")]
    pub fill_wait_timeout: Duration,
    /// Adaptive bypass: a statement whose sampled hit ratio stays below this over a window
    /// stops using the cache for a while (0 = never).
    pub min_hit_ratio: f64,
    /// Hex key of the keyed hash (32 hex digits); absent = random per process.
    pub secret: Option<String>,
    /// The in-process level.
    pub l1: L1Config,
    /// Optional shared second level. Absent = in-process cache only.
    pub redis: Option<RedisConfig>,
    /// Most stored results refreshed per committed write to a `write = "through"` table:
    /// the refresh runs before the writer's acknowledgement, so this bounds what one write
    /// can add to its latency.
    pub write_through_max_entries: usize,
    /// Verify mode: the fraction (0 – 1) of cache hits re-executed upstream in the
    /// background, under the entry's own login and fingerprint, and compared byte for byte
    /// with what was served (see `refresh::verify`). `0` checks nothing. Reloadable.
    pub verify_sample: f64,
    /// Verify mode's cap: at most this many checks start per second (sampled hits beyond
    /// it are not checked), so the upstream work verify mode adds is bounded whatever the
    /// hit rate. Reloadable.
    pub verify_max_per_second: u32,
}

/// `[cache.l1]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct L1Config {
    /// `false` stores nothing in process: with `cache.redis`, every hit comes from Redis
    /// (instances then hold no results of their own); without it, nothing is cached.
    pub enabled: bool,
}

impl Default for L1Config {
    fn default() -> Self {
        Self { enabled: true }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_memory: ByteSize(256 << 20),
            max_entry_size: ByteSize(1 << 20),
            ttl: Duration::from_secs(60),
            fill_wait_timeout: Duration::from_secs(5),
            min_hit_ratio: 0.02,
            secret: None,
            l1: L1Config::default(),
            redis: None,
            write_through_max_entries: 32,
            verify_sample: 0.0,
            verify_max_per_second: 50,
        }
    }
}

/// The memory budget for client SQL text held beyond the L1 (plan memos, catalog memos):
/// `cache.max_memory / SQL_MEMORY_SHARE`, split as [`SqlMemory`] says.
pub const SQL_MEMORY_SHARE: u64 = 8;

/// Byte budgets of the structures that hold client SQL text (or what is cut from it),
/// derived from `cache.max_memory` (see README, "Errors and limits").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlMemory {
    /// Plans by exact text (half of the budget); each session worker thread may hold up to
    /// another eighth of this in its own copies.
    pub plans: usize,
    /// Plans by shape (an eighth).
    pub shapes: usize,
    /// Each of the four catalog memos (a sixteenth each).
    pub catalog_memo: usize,
    /// The write-through recipes of stored results (an eighth: about 9,000 recipes of point
    /// reads at the default `max_memory`; see `refresh::recipes`).
    pub recipes: usize,
}

impl CacheConfig {
    /// The byte budgets for client SQL text, from `max_memory`.
    pub fn sql_memory(&self) -> SqlMemory {
        let budget = usize::try_from(self.max_memory.0 / SQL_MEMORY_SHARE).unwrap_or(usize::MAX);
        SqlMemory {
            plans: budget / 2,
            shapes: budget / 8,
            catalog_memo: budget / 16,
            recipes: budget / 8,
        }
    }
}

/// `[catalog]`: how pgmemo learns about schema, privileges and functions.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CatalogSection {
    /// How often the catalog poller fingerprints what cached results depend on (direct DDL,
    /// GRANT/REVOKE, CREATE OR REPLACE FUNCTION are seen within this interval).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl Default for CatalogSection {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(5),
        }
    }
}

/// `[functions]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FunctionsConfig {
    /// Non-immutable functions (`schema.name`) whose only effect is their result (e.g.
    /// `public.uuid_generate_v4`): statements calling them, and triggers running them, do not
    /// bump the epoch. Unquoted parts must be lower-case (validated), so for entries without
    /// quotes the text is exactly `nspname || '.' || proname`.
    pub no_side_effects: Vec<String>,
    /// What trigger (or rule) functions write, declared by the operator: a write whose only
    /// invisible effect is running one of these bumps the listed tables instead of the epoch.
    /// Trusted, not checked: a table the function writes but the entry omits is served stale
    /// until the TTL. Look entries up with [`FunctionsConfig::declared_writes`].
    pub writes: Vec<FunctionWrites>,
    /// What STABLE functions whose body pgmemo cannot read (PL/pgSQL, C, ...) read, declared
    /// by the operator: a cached read calling one depends on the listed tables, so a write to
    /// them through pgmemo invalidates it. Trusted, not checked, like `writes`. Look entries
    /// up with [`FunctionsConfig::declared_reads`]. An entry with no tables declares a
    /// function that reads none.
    pub reads: Vec<FunctionReads>,
    /// Longest lifetime of a cached read that calls a STABLE user function (allowed by a
    /// rule's `allow_stable_functions`) whose reads pgmemo can neither derive from its body
    /// nor find in `reads`: writes to what it reads are invisible, so this bounds how stale
    /// such an entry gets. `0s`: such reads are not cached.
    #[serde(with = "humantime_serde")]
    pub undeclared_reads_ttl: Duration,
}

impl Default for FunctionsConfig {
    fn default() -> Self {
        Self {
            no_side_effects: Vec::new(),
            writes: Vec::new(),
            reads: Vec::new(),
            undeclared_reads_ttl: Duration::from_secs(1),
        }
    }
}

/// One `[[functions.writes]]` or `[[functions.reads]]` entry: a function and the tables it
/// writes (or reads).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FunctionTables {
    /// The function, `schema.name` (as in `no_side_effects`).
    pub function: String,
    /// Every table it may write (or read), `schema.name` (unquoted parts lower-case,
    /// validated).
    pub tables: Vec<String>,
}

/// One `[[functions.writes]]` entry.
pub type FunctionWrites = FunctionTables;
/// One `[[functions.reads]]` entry.
pub type FunctionReads = FunctionTables;

impl FunctionTables {
    /// Whether this entry declares `function`, given as the catalog's unquoted text
    /// (`nspname || '.' || proname`) or as a quoted name (`"Ext"."Fn"`); see
    /// [`FunctionsConfig::declared_writes`].
    pub fn is_for(&self, function: &str) -> bool {
        let Some((schema, name)) = catalog_name(&self.function) else {
            return false;
        };
        // The catalog's text: the parts joined as they are, no quoting.
        let joined = function
            .strip_prefix(schema.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
            .is_some_and(|rest| rest == name);
        // A caller that quoted the name (mixed case, odd characters).
        joined
            || (function.contains('"')
                && catalog_name(function).is_some_and(|(s, n)| s == schema && n == name))
    }
}

impl FunctionsConfig {
    /// The allowlist as catalog names: `(schema, name)` with quotes removed (`"My"."Fn"` →
    /// `("My", "Fn")`). Entries that are not a valid `schema.name` are skipped (validation
    /// refuses them, so this only matters for an unvalidated config).
    pub fn qualified_names(&self) -> Vec<(String, String)> {
        self.no_side_effects
            .iter()
            .filter_map(|text| parse_qualified_name(text, Case::RequireLower).ok())
            .filter_map(|q| Some((q.schema?, q.name)))
            .collect()
    }

    /// The tables `[[functions.writes]]` declares for `function`, which is the catalog's
    /// `nspname || '.' || proname` text (a quoted form such as `"Ext"."Fn"` works too). Both
    /// sides are compared as parsed names, so `"public"."f"` in the file matches `public.f`.
    /// `None`: nothing declared, so running it must bump the epoch (unless it is in
    /// `no_side_effects`). Entries that are not a valid `schema.name` never match (validation
    /// refuses them). Names whose parts contain `.` can be ambiguous in the unquoted text
    /// (`"a.b".c` and `a."b.c"` both read `a.b.c`); the first such entry wins.
    pub fn declared_writes(&self, function: &str) -> Option<&[String]> {
        declared(&self.writes, function)
    }

    /// The tables `[[functions.reads]]` declares for `function` (named as for
    /// [`FunctionsConfig::declared_writes`]). `None`: nothing declared, so a cached read
    /// calling it lives at most `undeclared_reads_ttl` (unless its body says what it reads).
    pub fn declared_reads(&self, function: &str) -> Option<&[String]> {
        declared(&self.reads, function)
    }
}

/// The tables of the first entry for `function`.
fn declared<'a>(entries: &'a [FunctionTables], function: &str) -> Option<&'a [String]> {
    entries
        .iter()
        .find(|entry| entry.is_for(function))
        .map(|entry| entry.tables.as_slice())
}

/// `schema.name` as catalog names (quotes removed, unquoted parts required lower-case, as the
/// catalog stores them); `None` for a bare or invalid name.
fn catalog_name(text: &str) -> Option<(String, String)> {
    let q = parse_qualified_name(text, Case::RequireLower).ok()?;
    Some((q.schema?, q.name))
}

/// One `[[rules]]` entry. The match fields that are present must all match (absent = any);
/// every matching rule applies: `cache = false` anywhere wins, the smallest `ttl` wins,
/// `allow_*` hold when some matching rule sets them and none clears them, and the smallest
/// `refresh_ahead` wins unless one is 0 (see [`super::rules`]).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rule {
    /// A relation read, `schema.name` (or `name` for any schema).
    pub table: Option<String>,
    /// The session's database.
    pub database: Option<String>,
    /// The session's current role.
    pub role: Option<String>,
    /// The statement, compared after comment/whitespace normalisation.
    pub query: Option<String>,
    /// Whether matching reads are cached.
    pub cache: Option<bool>,
    /// TTL of matching entries; `0s` = until invalidated.
    #[serde(with = "humantime_serde::option")]
    pub ttl: Option<Duration>,
    /// Cache reads that call STABLE functions (their result may depend on settings in the key).
    pub allow_stable_functions: Option<bool>,
    /// Cache reads of tables with row-level security enabled (the role and settings are in the
    /// key; policies that depend on anything else must not be opted in).
    pub allow_rls: Option<bool>,
    /// What a committed write through pgmemo to a matching table does to the results that
    /// depend on it (absent = [`WritePolicy::Invalidate`]). Matched by `table`, `database`
    /// and `role` only: validation refuses it beside `query`, which a write does not have.
    pub write: Option<WritePolicy>,
    /// Refresh-ahead: once this fraction of a matching entry's TTL has passed, a hit on it
    /// also starts one background refresh, so a read entry is replaced before it expires.
    /// In [0, 1); 0 = off (and turns off what a broader rule sets).
    pub refresh_ahead: Option<f64>,
    /// Limit those refreshes to `refresh.max_share` of the queries pgmemo sends upstream.
    /// Only beside `refresh_ahead` above 0.
    pub refresh_adaptive: Option<bool>,
    /// With `write = "behind"`: how often the queue is applied (default 100 ms).
    #[serde(with = "humantime_serde::option")]
    pub behind_flush_interval: Option<Duration>,
    /// With `write = "behind"`: queued writes applied per transaction at most (default 1000).
    pub behind_max_batch: Option<usize>,
    /// With `write = "behind"`: also queue `UPDATE t SET c = c + k WHERE pk = v`, answered
    /// `UPDATE 1` (opt-in: the count is not the database's; see the README).
    pub behind_increments: Option<bool>,
    /// With `behind_increments`: increments of one row within a batch become one UPDATE.
    pub behind_coalesce: Option<bool>,
}

/// A rule's `write`: what a committed write to a matching table does to dependent results.
/// Parsed from a string so that an unknown value is refused with the accepted ones listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum WritePolicy {
    /// Dependent results are dropped; the next read fills them again (the default).
    Invalidate,
    /// The most recently stored dependent results are refreshed before the writer's
    /// acknowledgement, so the next read of them is a hit.
    Through,
    /// Eligible writes (single autocommit INSERT ... VALUES, opted-in increments) are
    /// acknowledged from a durable queue and applied in the background (issue 20).
    Behind,
}

impl WritePolicy {
    /// The value as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            WritePolicy::Invalidate => "invalidate",
            WritePolicy::Through => "through",
            WritePolicy::Behind => "behind",
        }
    }
}

impl TryFrom<String> for WritePolicy {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        match text.as_str() {
            "invalidate" => Ok(WritePolicy::Invalidate),
            "through" => Ok(WritePolicy::Through),
            "behind" => Ok(WritePolicy::Behind),
            other => Err(format!(
                "unknown write policy `{other}`, expected `invalidate`, `through` or `behind`"
            )),
        }
    }
}
