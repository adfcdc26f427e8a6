//! The JSON views of the admin address: `GET /api/stats` (totals), `GET /api/queries` (the
//! per-shape statistics, most upstream time spent first), `GET /api/tables` (per relation:
//! rules, write policy, version, entries, bytes) and `GET /api/config` (the effective
//! configuration, secrets redacted). Read-only; each answer is built from the live state when
//! asked. Counters that exist only as metrics (bypasses by reason, bumps by source) are read
//! back from the Prometheus exposition, so the API and `/metrics` never disagree.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::AdminState;
use super::invalidate::json;
use crate::context::AppContext;
use crate::telemetry::names;

/// Shapes `/api/queries` lists unless `?limit=` says otherwise, and the most it lists.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 10_000;

/// What the API views read: the application.
#[derive(Clone)]
pub struct ApiState {
    pub app: Arc<AppContext>,
}

fn not_configured() -> Response {
    (
        StatusCode::NOT_FOUND,
        "the JSON API needs a running pgmemo (not available in this embedding)\n",
    )
        .into_response()
}

/// Sums of counter `name` in a Prometheus text exposition, by the value of `label`.
fn by_label(text: &str, name: &str, label: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let needle = format!("{label}=\"");
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let Some(labels) = rest.strip_prefix('{') else {
            continue;
        };
        let Some((labels, value)) = labels.split_once("} ") else {
            continue;
        };
        let Some(at) = labels.find(&needle) else {
            continue;
        };
        let Some(v) = labels
            .get(at + needle.len()..)
            .and_then(|v| v.split('"').next())
        else {
            continue;
        };
        let n = value.trim().parse::<f64>().unwrap_or(0.0) as u64;
        *out.entry(v.to_owned()).or_insert(0) += n;
    }
    out
}

#[derive(Serialize)]
struct Bypasses {
    total: u64,
    by_reason: BTreeMap<String, u64>,
}

#[derive(Serialize)]
struct Invalidations {
    /// Relation versions bumped, by source (`pgmemo_cache_tag_bumps_total`).
    tag_bumps_by_source: BTreeMap<String, u64>,
    /// Whole-cache invalidations, by cause (`pgmemo_cache_epoch_bumps_total`).
    epoch_bumps_by_cause: BTreeMap<String, u64>,
    /// Manual ones by scope (`pgmemo_admin_invalidations_total`).
    manual_by_scope: BTreeMap<String, u64>,
}

#[derive(Serialize)]
struct QueryStatsState {
    enabled: bool,
    shapes: usize,
    bytes: usize,
    max_bytes: usize,
}

#[derive(Serialize)]
struct Stats {
    /// hits ÷ (hits + misses), `null` before the first lookup.
    hit_ratio: Option<f64>,
    hits: u64,
    misses: u64,
    bypasses: Bypasses,
    entries: i64,
    bytes: i64,
    stores: u64,
    evictions: BTreeMap<&'static str, u64>,
    invalidations: Invalidations,
    epoch: u64,
    query_stats: QueryStatsState,
}

/// `GET /api/stats`.
pub(super) async fn stats(State(state): State<AdminState>) -> Response {
    let Some(api) = &state.api else {
        return not_configured();
    };
    crate::telemetry::striped::sync();
    crate::telemetry::runtimes::sync();
    let text = state.metrics.render();
    let services = &api.app.services;
    let c = services.cache.stats();
    let by_reason = by_label(&text, names::CACHE_BYPASSES, "reason");
    let (shapes, bytes) = services.query_stats.usage();
    let lookups = c.hits + c.misses;
    let body = Stats {
        hit_ratio: (lookups > 0).then(|| c.hits as f64 / lookups as f64),
        hits: c.hits,
        misses: c.misses,
        bypasses: Bypasses {
            total: by_reason.values().sum(),
            by_reason,
        },
        entries: c.entries,
        bytes: c.bytes,
        stores: c.stores,
        evictions: BTreeMap::from([
            ("size", c.evicted_size),
            ("expired", c.evicted_expired),
            ("flushed", c.evicted_explicit),
            ("replaced", c.replaced),
        ]),
        invalidations: Invalidations {
            tag_bumps_by_source: by_label(&text, names::CACHE_TAG_BUMPS, "source"),
            epoch_bumps_by_cause: by_label(&text, names::CACHE_EPOCH_BUMPS, "cause"),
            manual_by_scope: by_label(&text, names::ADMIN_INVALIDATIONS, "scope"),
        },
        epoch: services.cache.versions().epoch(),
        query_stats: QueryStatsState {
            enabled: services.query_stats.enabled(),
            shapes,
            bytes,
            max_bytes: services.query_stats.max_bytes(),
        },
    };
    json(StatusCode::OK, &body)
}

/// `?limit=N` of a request (default [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`]).
fn limit(uri: &Uri) -> Result<usize, String> {
    let Some(query) = uri.query() else {
        return Ok(DEFAULT_LIMIT);
    };
    for pair in query.split('&') {
        if let Some(v) = pair.strip_prefix("limit=") {
            return v
                .parse::<usize>()
                .map(|n| n.min(MAX_LIMIT))
                .map_err(|_| format!("limit={v:?} is not a number"));
        }
    }
    Ok(DEFAULT_LIMIT)
}

#[derive(Serialize)]
struct Queries {
    enabled: bool,
    shapes: usize,
    bytes: usize,
    max_bytes: usize,
    queries: Vec<crate::planner::stats::ShapeReport>,
}

/// `GET /api/queries[?limit=N]`.
pub(super) async fn queries(State(state): State<AdminState>, uri: Uri) -> Response {
    let Some(api) = &state.api else {
        return not_configured();
    };
    let limit = match limit(&uri) {
        Ok(n) => n,
        Err(e) => return json(StatusCode::BAD_REQUEST, &serde_json::json!({ "error": e })),
    };
    let table = &api.app.services.query_stats;
    let (shapes, bytes) = table.usage();
    let mut queries = table.report();
    queries.truncate(limit);
    json(
        StatusCode::OK,
        &Queries {
            enabled: table.enabled(),
            shapes,
            bytes,
            max_bytes: table.max_bytes(),
            queries,
        },
    )
}

#[derive(Serialize)]
pub struct Rule {
    pub cache: bool,
    #[serde(with = "humantime_serde")]
    pub ttl: std::time::Duration,
}

#[derive(Serialize)]
pub struct Table {
    pub database: Option<String>,
    pub schema: Option<String>,
    pub name: Option<String>,
    pub database_oid: u32,
    pub relation_oid: u32,
    /// The rules' verdict for a read of this table alone, for the role that first read it.
    pub rule: Option<Rule>,
    /// `invalidate`, `through` or `behind`, for that role.
    pub write: Option<&'static str>,
    pub version: u64,
    pub entries: i64,
    pub bytes: i64,
}

#[derive(Serialize)]
struct Tables {
    tables: Vec<Table>,
    /// Stores that read a relation past the per-relation tracking bound.
    untracked_stores: u64,
}

/// `GET /api/tables`.
pub(super) async fn tables(State(state): State<AdminState>) -> Response {
    let Some(api) = &state.api else {
        return not_configured();
    };
    let (tables, untracked_stores) = table_rows(&api.app);
    json(
        StatusCode::OK,
        &Tables {
            tables,
            untracked_stores,
        },
    )
}

/// Per relation the cache knows (`GET /api/tables`, the console's `SHOW TABLES`): the
/// rows, and stores whose relations were not tracked.
pub fn table_rows(app: &AppContext) -> (Vec<Table>, u64) {
    let services = &app.services;
    let rules = app.rules();
    let (usage, untracked_stores) = services.cache.table_usage();
    let mut usage: BTreeMap<crate::cache::Tag, (i64, i64)> =
        usage.into_iter().map(|(t, e, b)| (t, (e, b))).collect();
    let versions = services.cache.versions();
    let mut out = Vec::new();
    for (tag, info) in services.query_stats.tables.list() {
        let (entries, bytes) = usage.remove(&tag).unwrap_or_default();
        let (db, role, schema, name) = (&*info.database, &*info.role, &*info.schema, &*info.name);
        let verdict = rules.rules.verdict(db, role, b"", &[(schema, name)]);
        let write = if rules.rules.behind(db, role, schema, name).is_some() {
            "behind"
        } else if rules.rules.write_through(db, role, schema, name) {
            "through"
        } else {
            "invalidate"
        };
        out.push(Table {
            database: Some(db.to_owned()),
            schema: Some(schema.to_owned()),
            name: Some(name.to_owned()),
            database_oid: tag.db,
            relation_oid: tag.rel,
            rule: Some(Rule {
                cache: verdict.cache,
                ttl: verdict.ttl,
            }),
            write: Some(write),
            version: versions.table_version(tag),
            entries,
            bytes,
        });
    }
    // Relations entries depend on that no plan named (a view's base tables, what a function
    // reads): known by OID only.
    for (tag, (entries, bytes)) in usage {
        out.push(Table {
            database: None,
            schema: None,
            name: None,
            database_oid: tag.db,
            relation_oid: tag.rel,
            rule: None,
            write: None,
            version: versions.table_version(tag),
            entries,
            bytes,
        });
    }
    (out, untracked_stores)
}

/// `GET /api/cdc`: each covered database's change stream (the console's `SHOW CDC`).
pub(super) async fn cdc(State(state): State<AdminState>) -> Response {
    let Some(api) = &state.api else {
        return not_configured();
    };
    json(
        StatusCode::OK,
        &crate::admin::views::cdc(&api.app).to_json(),
    )
}

/// `GET /api/shared`: the Redis tier's state (the console's `SHOW SHARED`).
pub(super) async fn shared(State(state): State<AdminState>) -> Response {
    let Some(api) = &state.api else {
        return not_configured();
    };
    json(
        StatusCode::OK,
        &crate::admin::views::shared(&api.app).to_json(),
    )
}

pub(super) async fn config(State(state): State<AdminState>) -> Response {
    let Some(api) = &state.api else {
        return not_configured();
    };
    json(StatusCode::OK, &api.app.config().redacted())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_back_by_label() {
        let text = "# HELP x\n\
            pgmemo_cache_bypasses_total{reason=\"not_idle\"} 3\n\
            pgmemo_cache_bypasses_total{reason=\"rule\",other=\"a\"} 2\n\
            pgmemo_cache_bypasses_total{reason=\"rule\",other=\"b\"} 1\n\
            pgmemo_cache_bypasses_totalx{reason=\"rule\"} 100\n\
            pgmemo_cache_hits_total 9\n";
        let got = by_label(text, names::CACHE_BYPASSES, "reason");
        assert_eq!(
            got,
            BTreeMap::from([("not_idle".to_owned(), 3), ("rule".to_owned(), 3)])
        );
    }

    #[test]
    fn limit_parsing() {
        let uri = |s: &str| s.parse::<Uri>().unwrap_or_default();
        assert_eq!(limit(&uri("/api/queries")), Ok(DEFAULT_LIMIT));
        assert_eq!(limit(&uri("/api/queries?limit=5")), Ok(5));
        assert_eq!(limit(&uri("/api/queries?x=1&limit=999999")), Ok(MAX_LIMIT));
        assert!(limit(&uri("/api/queries?limit=x")).is_err());
    }
}
