//! The admin console's views (`SHOW STATS`, `QUERIES`, `TABLES`, `CDC`, `SHARED`, in
//! `session::console`) as typed rows; the HTTP API serves the CDC and shared-tier ones as
//! JSON too
//! ([`Table::to_json`](super::rows::Table::to_json)).

use super::rows::{Table, Type};
use crate::context::AppContext;

/// `SHOW STATS`: one row of totals since start.
pub fn stats(ctx: &AppContext) -> Table {
    let s = ctx.services.cache.stats();
    let lookups = s.hits + s.misses;
    let ratio = (lookups > 0).then(|| s.hits as f64 / lookups as f64);
    let mut t = Table::new(&[
        ("hits", Type::Int8),
        ("misses", Type::Int8),
        ("hit_ratio", Type::Float8),
        ("stores", Type::Int8),
        ("not_stored_too_large", Type::Int8),
        ("not_stored_stale", Type::Int8),
        ("evicted_size", Type::Int8),
        ("evicted_expired", Type::Int8),
        ("evicted_flushed", Type::Int8),
        ("entries", Type::Int8),
        ("bytes", Type::Int8),
    ]);
    t.push(vec![
        s.hits.into(),
        s.misses.into(),
        ratio.into(),
        s.stores.into(),
        s.refused_too_large.into(),
        s.refused_stale.into(),
        s.evicted_size.into(),
        s.evicted_expired.into(),
        s.evicted_explicit.into(),
        s.entries.into(),
        s.bytes.into(),
    ]);
    t
}

pub fn cdc(ctx: &AppContext) -> Table {
    let mut t = Table::new(&[
        ("database", Type::Text),
        ("state", Type::Text),
        ("serves", Type::Bool),
        ("remote", Type::Bool),
        ("applied_lsn", Type::Text),
        ("lag_bytes", Type::Int8),
        ("lag_seconds", Type::Float8),
    ]);
    for s in ctx.services.cdc.streams() {
        let (bytes, age) = s.lag();
        t.push(vec![
            s.name().into(),
            s.state().as_str().into(),
            s.state().serves().into(),
            s.is_remote().into(),
            s.applied().to_string().into(),
            bytes.into(),
            age.as_secs_f64().into(),
        ]);
    }
    t
}

pub fn shared(ctx: &AppContext) -> Table {
    let mut t = Table::new(&[
        ("configured", Type::Bool),
        ("usable", Type::Bool),
        ("consistency", Type::Text),
        ("namespace", Type::Text),
        ("asking", Type::Bool),
        ("reads_allowed", Type::Bool),
        ("bumps_pending", Type::Bool),
    ]);
    match &ctx.services.shared {
        Some(tier) => t.push(vec![
            true.into(),
            tier.is_usable().into(),
            format!("{:?}", tier.consistency()).to_lowercase().into(),
            tier.namespace().into(),
            tier.may_ask().into(),
            tier.l2_reads_allowed().into(),
            tier.has_pending().into(),
        ]),
        None => t.push(vec![false.into()]),
    }
    t
}

/// Shapes `SHOW QUERIES` lists: the most upstream time spent first.
const QUERIES_SHOWN: usize = 100;

/// `SHOW QUERIES`: per statement shape, most PostgreSQL time spent first.
pub fn queries(ctx: &AppContext) -> Table {
    let mut t = Table::new(&[
        ("database", Type::Text),
        ("query", Type::Text),
        ("tables", Type::Text),
        ("calls", Type::Int8),
        ("hits", Type::Int8),
        ("misses", Type::Int8),
        ("bypasses", Type::Int8),
        ("why_not_cached", Type::Text),
        ("hit_mean_us", Type::Float8),
        ("hit_p99_us", Type::Float8),
        ("upstream_mean_us", Type::Float8),
        ("upstream_p99_us", Type::Float8),
        ("upstream_spent_ms", Type::Float8),
        ("upstream_saved_ms", Type::Float8),
        ("stored", Type::Int8),
        ("stored_bytes", Type::Int8),
    ]);
    let mut report = ctx.services.query_stats.report();
    report.truncate(QUERIES_SHOWN);
    for q in report {
        let mut reasons = q.bypass_reasons.clone();
        reasons.sort_by_key(|r| std::cmp::Reverse(r.1));
        let why: Vec<String> = reasons.iter().map(|(r, n)| format!("{r} ({n})")).collect();
        let sampled =
            |s: &crate::planner::stats::histogram::Summary, v: f64| (s.samples > 0).then_some(v);
        t.push(vec![
            q.database.into(),
            q.query.into(),
            q.tables.join(", ").into(),
            q.calls.into(),
            q.hits.into(),
            q.misses.into(),
            q.bypasses.into(),
            (!why.is_empty()).then(|| why.join(", ")).into(),
            sampled(&q.hit, q.hit.mean_us).into(),
            sampled(&q.hit, q.hit.p99_us).into(),
            sampled(&q.upstream, q.upstream.mean_us).into(),
            sampled(&q.upstream, q.upstream.p99_us).into(),
            q.upstream_time_spent_ms.into(),
            q.upstream_time_saved_ms.into(),
            q.stored.into(),
            q.stored_bytes.into(),
        ]);
    }
    t
}

/// `SHOW TABLES`: per relation the cache knows, its rule, write policy, version, entries
/// and bytes (as `GET /api/tables`).
pub fn tables(ctx: &AppContext) -> Table {
    let mut t = Table::new(&[
        ("database", Type::Text),
        ("schema", Type::Text),
        ("name", Type::Text),
        ("relation_oid", Type::Int8),
        ("cache", Type::Bool),
        ("ttl_seconds", Type::Float8),
        ("write", Type::Text),
        ("version", Type::Int8),
        ("entries", Type::Int8),
        ("bytes", Type::Int8),
    ]);
    let (rows, _) = super::api::table_rows(ctx);
    for r in rows {
        t.push(vec![
            r.database.into(),
            r.schema.into(),
            r.name.into(),
            u64::from(r.relation_oid).into(),
            r.rule.as_ref().map(|x| x.cache).into(),
            r.rule.as_ref().map(|x| x.ttl.as_secs_f64()).into(),
            r.write.into(),
            r.version.into(),
            r.entries.into(),
            r.bytes.into(),
        ]);
    }
    t
}
