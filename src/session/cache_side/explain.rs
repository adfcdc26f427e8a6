//! `EXPLAIN CACHE <statement>`: pgmemo answers, for this session as it stands (its
//! database, role, `search_path`, settings), whether the statement would be served from the
//! cache and stored, with the relations it depends on and its TTL, or exactly why not: the
//! planner's reason (a volatile function, a rule's `cache = false`, row security, ...) or the
//! session's (in a transaction block, settings not yet known, Redis unreachable in `strict`
//! mode, ...). Nothing is run. Answered only while the session is idle and holds no unnamed
//! statement (a Query answered here would leave it alive where PostgreSQL drops it);
//! otherwise the text goes to PostgreSQL, which refuses it (no statement is served from the
//! cache inside a transaction block anyway: reason `not_idle`).

use super::*;
use crate::admin::rows::{Table, Type, Value};
use bytes::BytesMut;

use crate::sql::{Class, NotCacheable};

impl CacheSession {
    /// The answer to `EXPLAIN CACHE inner`, or the hold it needs first (a plan).
    pub(super) fn explain_cache(&mut self, inner: &[u8], state: &SessionState) -> FrameAction {
        let inner = trim(inner);
        if inner.is_empty() {
            let e = crate::error::ClientError::console_syntax(
                "EXPLAIN CACHE needs a statement: EXPLAIN CACHE SELECT ...",
            );
            return FrameAction::Answer(e.encode());
        }
        // No `side.hold`: the statement is not run, so nothing (a DROP DATABASE) needs
        // pgmemo's own connections out of the way.
        let Some(plan) = self.plan_for(inner) else {
            return FrameAction::Hold(Hold::Plan(Bytes::copy_from_slice(inner)));
        };
        let verdict = match plan.read.as_ref().err() {
            Some(&reason) => Verdict::No(reason.label()),
            None => match self.admit(&plan, state, false) {
                Ok(_) if self.shared_unavailable() => Verdict::No("redis_unavailable"),
                Ok(_) => Verdict::Yes,
                Err(Some(reason)) => Verdict::No(reason.label()),
                Err(None) => Verdict::No("not_a_read"),
            },
        };
        let mut out = BytesMut::new();
        verdict_table(&plan, verdict).encode(&mut out, "EXPLAIN");
        FrameAction::Answer(out.freeze())
    }
}

impl CacheSession {
    /// `strict` consistency with Redis unreachable (or its breaker open): a lookup would not
    /// use the cache (`redis_unavailable`), as the tiers' lookup decides.
    fn shared_unavailable(&self) -> bool {
        self.app.services.shared.as_ref().is_some_and(|tier| {
            tier.consistency() == crate::cache::l2::tier::Consistency::Strict && !tier.may_ask()
        })
    }
}

enum Verdict {
    Yes,
    No(&'static str),
}

/// One row: `cached`, `reason`, the statement's class, the relations it reads, its TTL and
/// refresh-ahead fraction, and the normalised text it is keyed by.
fn verdict_table(plan: &Plan, verdict: Verdict) -> Table {
    let mut t = Table::new(&[
        ("cached", Type::Bool),
        ("reason", Type::Text),
        ("statement", Type::Text),
        ("reads", Type::Text),
        ("ttl_seconds", Type::Float8),
        ("refresh_ahead", Type::Float8),
        ("pinned_rows", Type::Bool),
        ("normalized", Type::Text),
    ]);
    let stmts = &plan.analysis.statements;
    let class = match stmts.as_slice() {
        [one] => class_label(&one.class),
        [] => "empty",
        _ => "multiple_statements",
    };
    let mut reads: Vec<String> = stmts
        .iter()
        .flat_map(|s| s.reads.iter().map(|r| r.to_string()))
        .collect();
    reads.sort();
    reads.dedup();
    let (cached, reason) = match verdict {
        Verdict::Yes => (true, Value::Null),
        Verdict::No(r) => (false, Value::from(statement_reason(plan).unwrap_or(r))),
    };
    let read = plan.read.as_ref().ok();
    t.push(vec![
        cached.into(),
        reason,
        class.into(),
        reads.join(", ").into(),
        read.map(|r| r.ttl.as_secs_f64()).into(),
        read.map(|r| f64::from(r.refresh_ahead)).into(),
        read.map(|r| r.unpinned.is_none()).into(),
        read.map(|r| String::from_utf8_lossy(&r.normalized).into_owned())
            .into(),
    ]);
    t
}

/// The analysis's own reason when the text is not one cacheable read (sharper than the
/// plan's summary: `value_function` rather than `not_cacheable`).
fn statement_reason(plan: &Plan) -> Option<&'static str> {
    match plan.analysis.statements.as_slice() {
        [one] => one.reason.map(NotCacheable::label),
        [] => Some("empty"),
        _ => Some("multiple_statements"),
    }
}

fn class_label(class: &Class) -> &'static str {
    match class {
        Class::CacheableRead | Class::Read => "read",
        Class::Write => "write",
        Class::Ddl => "ddl",
        Class::TransactionControl(_) => "transaction_control",
        Class::SessionChange(_) => "session_change",
        Class::Execute { .. } => "execute",
        Class::Utility => "utility",
        Class::Other => "other",
    }
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let s = s.get(start..).unwrap_or_default();
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace() && *b != b';')
        .map_or(0, |i| i + 1);
    s.get(..end).unwrap_or_default()
}
