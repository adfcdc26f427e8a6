//! The console's statistics views (`SHOW STATS`): what the cache counted, as typed rows.

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
