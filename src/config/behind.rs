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

/// `[behind]`: the queue write-behind acknowledges from.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BehindConfig {
    /// Directory of the local journal (created if missing). Required for `write = "behind"`
    /// rules (the queue on a Redis Stream the issue asks for is not built yet).
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
            journal_dir: None,
            max_queue_bytes: ByteSize(64 << 20),
            max_queue_entries: 100_000,
            barrier_timeout: Duration::from_secs(5),
            max_dead_letters: 10_000,
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
    if any_behind(rules) && behind.journal_dir.is_none() {
        let why = if redis {
            "write = \"behind\" rules acknowledge writes from a durable queue: set \
             behind.journal_dir (the queue on a Redis Stream is not available yet)"
        } else {
            "write = \"behind\" rules acknowledge writes from a durable queue: set \
             behind.journal_dir (a local journal)"
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
