//! The `[behind]` section and the write-behind fields of `[[rules]]` (issue 20): where the
//! durable queue lives and how large it may grow, and the checks that refuse at load what
//! write-behind cannot make exactly-once or would apply to more than the operator meant.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::cache::{ByteSize, Rule, WritePolicy};
use super::validate::{ConfigIssue, quoted};

/// Default `behind_flush_interval`.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Default `behind_max_batch`.
pub const DEFAULT_MAX_BATCH: usize = 1000;
/// Accepted `behind_flush_interval`.
pub const FLUSH_INTERVAL_RANGE: (Duration, Duration) =
    (Duration::from_millis(1), Duration::from_secs(60));
/// Accepted `behind_max_batch`.
pub const MAX_BATCH_RANGE: (usize, usize) = (1, 100_000);

/// Which durable queue write-behind acknowledges from (`behind.queue`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueKind {
    /// A local append-only journal in `behind.journal_dir` (group commit, fdatasync).
    Journal,
    /// A Redis Stream per database on `cache.redis`, shared by every instance.
    Redis,
}

/// `[behind]`: the queue write-behind acknowledges from.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BehindConfig {
    /// The queue kind; unset: `redis` with `cache.redis` and no `journal_dir`, otherwise
    /// `journal` (see [`BehindConfig::kind`]).
    pub queue: Option<QueueKind>,
    /// Directory of the local journal (created if missing). Required by the journal kind;
    /// with the Redis kind it only holds the dead letters (kept in memory without it).
    pub journal_dir: Option<PathBuf>,
    /// Bytes of queued (acknowledged, not yet applied) writes at most; beyond, eligible
    /// writes are forwarded synchronously instead (counted).
    pub max_queue_bytes: ByteSize,
    /// Queued writes at most (the same fallback beyond).
    pub max_queue_entries: usize,
    /// A write to a `behind` table that is not queued (another shape, in a transaction, a
    /// DELETE, ...) first waits until the writes queued before it are applied, at most this
    /// long, so that it never overtakes them.
    #[serde(with = "humantime_serde")]
    pub barrier_timeout: Duration,
    /// Dead letters kept at most (oldest dropped beyond, counted and logged).
    pub max_dead_letters: usize,
}

impl Default for BehindConfig {
    fn default() -> Self {
        Self {
            queue: None,
            journal_dir: None,
            max_queue_bytes: ByteSize(64 << 20),
            max_queue_entries: 100_000,
            barrier_timeout: Duration::from_secs(5),
            max_dead_letters: 10_000,
        }
    }
}

impl BehindConfig {
    /// The queue kind in effect: as set, or `redis` when Redis is configured and no journal
    /// directory is (an operator who set one meant the journal), otherwise `journal`.
    pub fn kind(&self, redis: bool) -> QueueKind {
        match self.queue {
            Some(kind) => kind,
            None if redis && self.journal_dir.is_none() => QueueKind::Redis,
            None => QueueKind::Journal,
        }
    }
}

/// What a matching `write = "behind"` rule says about one table (see
/// [`super::Rules::behind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BehindRule {
    pub flush_interval: Duration,
    pub max_batch: usize,
    /// `UPDATE t SET c = c + k WHERE pk = v` may be queued (acknowledged as `UPDATE 1`).
    pub increments: bool,
    /// Increments of one row within a batch are applied as one UPDATE.
    pub coalesce: bool,
}

impl BehindRule {
    /// The rule of one `[[rules]]` entry that sets `write = "behind"`.
    pub fn of(rule: &Rule) -> BehindRule {
        BehindRule {
            flush_interval: rule.behind_flush_interval.unwrap_or(DEFAULT_FLUSH_INTERVAL),
            max_batch: rule.behind_max_batch.unwrap_or(DEFAULT_MAX_BATCH),
            increments: rule.behind_increments == Some(true),
            coalesce: rule.behind_coalesce == Some(true),
        }
    }
}

/// Whether some rule sets `write = "behind"`.
pub fn any_behind(rules: &[Rule]) -> bool {
    rules.iter().any(|r| r.write == Some(WritePolicy::Behind))
}

/// The `behind_*` fields of one rule, and the queue they need.
pub(super) fn check_rule(rule: &Rule, key: &dyn Fn(&str) -> String, issues: &mut Vec<ConfigIssue>) {
    let behind = rule.write == Some(WritePolicy::Behind);
    let fields = [
        (
            "behind_flush_interval",
            rule.behind_flush_interval.is_some(),
        ),
        ("behind_max_batch", rule.behind_max_batch.is_some()),
        ("behind_increments", rule.behind_increments.is_some()),
        ("behind_coalesce", rule.behind_coalesce.is_some()),
    ];
    if !behind {
        for (field, set) in fields {
            if set {
                issues.push(ConfigIssue::new(
                    key(&format!(".{field}")),
                    "(set)",
                    "only in a rule with write = \"behind\"",
                ));
            }
        }
        return;
    }
    if rule.table.is_none() {
        issues.push(ConfigIssue::new(
            key(".write"),
            quoted("behind"),
            "a write-behind rule must name its `table`: queueing every table's inserts \
             would acknowledge writes nobody chose to make asynchronous",
        ));
    }
    if rule.cache == Some(false) {
        // Harmless, but reads of the table are then never cached: say what it means.
    }
    if let Some(interval) = rule.behind_flush_interval {
        let (lo, hi) = FLUSH_INTERVAL_RANGE;
        if !(lo..=hi).contains(&interval) {
            issues.push(ConfigIssue::new(
                key(".behind_flush_interval"),
                quoted(&humantime::format_duration(interval).to_string()),
                "must be between 1ms and 60s",
            ));
        }
    }
    if let Some(batch) = rule.behind_max_batch {
        let (lo, hi) = MAX_BATCH_RANGE;
        if !(lo..=hi).contains(&batch) {
            issues.push(ConfigIssue::new(
                key(".behind_max_batch"),
                batch.to_string(),
                format!("must be between {lo} and {hi}"),
            ));
        }
    }
    if rule.behind_coalesce == Some(true) && rule.behind_increments != Some(true) {
        issues.push(ConfigIssue::new(
            key(".behind_coalesce"),
            "true",
            "coalescing merges queued increments; set behind_increments = true in the same \
             rule to queue them",
        ));
    }
}

/// A queue must exist for `write = "behind"` rules, and be bounded.
pub(super) fn check_section(
    behind: &BehindConfig,
    rules: &[Rule],
    redis: bool,
    issues: &mut Vec<ConfigIssue>,
) {
    if behind.queue == Some(QueueKind::Redis) && !redis {
        issues.push(ConfigIssue::new(
            "behind.queue",
            quoted("redis"),
            "the queue on a Redis Stream needs cache.redis (set it, or use queue = \"journal\" \
             with behind.journal_dir)",
        ));
    }
    if any_behind(rules) && behind.kind(redis) == QueueKind::Journal && behind.journal_dir.is_none()
    {
        let why = if redis {
            "write = \"behind\" rules acknowledge writes from a durable queue: queue = \
             \"journal\" needs behind.journal_dir (or set queue = \"redis\" for a Redis Stream)"
        } else {
            "write = \"behind\" rules acknowledge writes from a durable queue: set \
             behind.journal_dir (a local journal), or configure cache.redis for a Redis Stream"
        };
        issues.push(ConfigIssue::new("behind.journal_dir", "(unset)", why));
    }
    if let Some(dir) = &behind.journal_dir
        && dir.as_os_str().is_empty()
    {
        issues.push(ConfigIssue::new(
            "behind.journal_dir",
            "\"\"",
            "must not be empty (leave the key out for no local journal)",
        ));
    }
    if !(1 << 20..=1 << 40).contains(&behind.max_queue_bytes.0) {
        issues.push(ConfigIssue::new(
            "behind.max_queue_bytes",
            behind.max_queue_bytes.0.to_string(),
            "must be between 1 MiB and 1 TiB",
        ));
    }
    if !(1..=10_000_000).contains(&behind.max_queue_entries) {
        issues.push(ConfigIssue::new(
            "behind.max_queue_entries",
            behind.max_queue_entries.to_string(),
            "must be between 1 and 10000000",
        ));
    }
    if !(Duration::from_millis(10)..=Duration::from_secs(600)).contains(&behind.barrier_timeout) {
        issues.push(ConfigIssue::new(
            "behind.barrier_timeout",
            quoted(&humantime::format_duration(behind.barrier_timeout).to_string()),
            "must be between 10ms and 10m (a statement that waits longer fails, 55P03)",
        ));
    }
    if !(1..=1_000_000).contains(&behind.max_dead_letters) {
        issues.push(ConfigIssue::new(
            "behind.max_dead_letters",
            behind.max_dead_letters.to_string(),
            "must be between 1 and 1000000",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn behind_rule() -> Rule {
        Rule {
            table: Some("ev".to_owned()),
            write: Some(WritePolicy::Behind),
            ..Rule::default()
        }
    }

    fn issues(behind: &BehindConfig, redis: bool) -> Vec<ConfigIssue> {
        let mut out = Vec::new();
        check_section(behind, &[behind_rule()], redis, &mut out);
        out
    }

    fn keys(issues: &[ConfigIssue]) -> Vec<String> {
        issues.iter().map(|i| i.to_string()).collect()
    }

    #[test]
    fn the_kind_defaults_to_redis_only_with_redis_and_no_journal_dir() {
        let mut c = BehindConfig::default();
        assert_eq!(c.kind(true), QueueKind::Redis);
        assert_eq!(c.kind(false), QueueKind::Journal);
        c.journal_dir = Some(PathBuf::from("/tmp/j"));
        assert_eq!(c.kind(true), QueueKind::Journal);
        c.queue = Some(QueueKind::Redis);
        assert_eq!(c.kind(true), QueueKind::Redis);
    }

    #[test]
    fn a_redis_queue_without_redis_is_refused() {
        let c = BehindConfig {
            queue: Some(QueueKind::Redis),
            journal_dir: Some(PathBuf::from("/tmp/j")),
            ..BehindConfig::default()
        };
        let found = keys(&issues(&c, false));
        assert!(
            found
                .iter()
                .any(|i| i.contains("behind.queue") && i.contains("cache.redis")),
            "{found:?}"
        );
        assert!(issues(&c, true).is_empty(), "{:?}", keys(&issues(&c, true)));
    }

    #[test]
    fn a_journal_queue_needs_its_directory_even_with_redis() {
        let c = BehindConfig {
            queue: Some(QueueKind::Journal),
            ..BehindConfig::default()
        };
        let found = keys(&issues(&c, true));
        assert!(
            found.iter().any(|i| i.contains("behind.journal_dir")),
            "{found:?}"
        );
        // Without Redis and without a directory there is no queue at all.
        let found = keys(&issues(&BehindConfig::default(), false));
        assert!(
            found.iter().any(|i| i.contains("behind.journal_dir")),
            "{found:?}"
        );
        // With Redis and nothing else set, the stream is the queue: accepted.
        assert!(issues(&BehindConfig::default(), true).is_empty());
    }

    #[test]
    fn the_kind_parses_from_toml_and_refuses_unknown_words() {
        let c: BehindConfig = toml::from_str("queue = \"redis\"").expect("parses");
        assert_eq!(c.queue, Some(QueueKind::Redis));
        assert!(toml::from_str::<BehindConfig>("queue = \"kafka\"").is_err());
    }
}
