//! Plans for the session's statements: memoised per (session context, SQL bytes) and by
//! shape, computed off the relay's hot path by a future when missing (the relay holds the
//! frame meanwhile), or without a context when the session's settings are unknown. A plan
//! too heavy for the memos is kept for its session alone, the last one only. Warming plans
//! its statements here too ([`plan_and_memoise`]).

use std::sync::Arc;

use bytes::Bytes;

use super::named::MAX_NAMED_BYTES;
use super::{CacheSession, PlanFuture};
use crate::context::AppContext;
use crate::planner::bypass::BypassReason;
use crate::planner::plan::{Context, Plan, Planner};

impl CacheSession {
    /// The future computing the plan of `sql` (for a frame held by [`super::Hold::Plan`]).
    pub fn plan_future(&mut self, sql: Bytes) -> PlanFuture {
        let app = Arc::clone(&self.app);
        let cx = self.cx.clone();
        // A statement that needs databases free: pgmemo's side connections to them close
        // first (see `side`); the plan follows as for any other statement.
        let release = self.side.take_release(&sql);
        Box::pin(async move {
            if let Some(release) = release {
                release.await;
            }
            let Some(cx) = cx else {
                return Arc::new(Plan::without_context(sql, BypassReason::NoSessionContext));
            };
            plan_and_memoise(&app, &cx, sql).await
        })
    }

    /// The future computing a plan no frame waits for (a write that went upstream under
    /// its stale plan): it memoises the plan for the statement's next Bind.
    /// Every stale Bind of a pipeline asks for it: once one is memoised, none is computed.
    pub fn background_plan(&mut self) -> Option<PlanFuture> {
        let sql = self.background_plan.take()?;
        let services = &self.app.services;
        let memoised = services.plans.get(
            self.cx_id,
            &sql,
            services.catalog.generation(),
            self.app.rules_generation(),
        );
        memoised.is_none().then(|| self.plan_future(sql))
    }

    /// The plan computed for the held frame.
    pub fn plan_ready(&mut self, plan: Arc<Plan>) {
        self.held.set(super::resume::Resume::Plan(plan));
    }

    /// The plan for `sql`: memoised, just computed, or computed now without a context.
    pub(super) fn plan_for(&mut self, sql: &[u8]) -> Option<Arc<Plan>> {
        if let Some(p) = self.held.take_plan()
            && p.sql.as_ref() == sql
            && p.context_id == self.cx_id
        {
            if !self.app.services.plans.holds(&p) && p.weight() <= MAX_NAMED_BYTES {
                self.recent_heavy = Some(Arc::clone(&p));
            }
            return Some(p);
        }
        if self.cx.is_none() || !self.encoding_ok {
            let why = if self.cx.is_none() {
                BypassReason::NoSessionContext
            } else {
                BypassReason::ClientEncoding
            };
            return Some(Arc::new(Plan::without_context(
                Bytes::copy_from_slice(sql),
                why,
            )));
        }
        let rules_generation = self.app.rules_generation();
        let catalog_generation = self.app.services.catalog.generation();
        let services = &self.app.services;
        if let Some(plan) =
            services
                .plans
                .get(self.cx_id, sql, catalog_generation, rules_generation)
        {
            return Some(plan);
        }
        if let Some(p) = &self.recent_heavy
            && p.sql.as_ref() == sql
            && p.context_id == self.cx_id
            && p.is_current(catalog_generation, rules_generation)
        {
            return Some(Arc::clone(p));
        }
        // Same shape, other numbers: share the analysis (not with query rules, whose
        // patterns see the numbers).
        if self.app.rules().has_query_rules {
            return None;
        }
        let shape = crate::sql::shape_key(sql)?;
        let base = services
            .shapes
            .get(self.cx_id, &shape, catalog_generation, rules_generation)?;
        let text = Bytes::copy_from_slice(sql);
        let plan = Arc::new(base.with_text(text.clone()));
        if plan.read.is_ok() {
            // A cacheable read may come back: remember its exact text too.
            services.plans.insert(text, Arc::clone(&plan));
        }
        Some(plan)
    }
}

/// The plan of `sql` under `cx` with the live configuration and rules, memoised by text and
/// by shape for every session of that context (a session's plan future, and warming: a
/// warmed statement's first client finds its plan ready too).
pub(super) async fn plan_and_memoise(app: &AppContext, cx: &Context, sql: Bytes) -> Arc<Plan> {
    let config = app.config();
    let rules = app.rules();
    let planner = Planner {
        catalog: &app.services.catalog,
        tables: Some(&app.services.query_stats.tables),
        rules: &rules.rules,
        rules_generation: rules.generation,
        no_side_effects: &config.functions.no_side_effects,
        declared_writes: &config.functions.writes,
        declared_reads: &config.functions.reads,
        undeclared_reads_ttl: config.functions.undeclared_reads_ttl,
        default_ttl: config.cache.ttl,
    };
    let mut plan = planner.plan(cx, sql.clone()).await;
    // Resolved once here, so the hit path records without looking the shape up.
    app.services.query_stats.attach(cx, &mut plan);
    let plan = Arc::new(plan);
    if !rules.has_query_rules
        && let Some(shape) = crate::sql::shape_key(&sql)
    {
        app.services
            .shapes
            .insert(Bytes::from(shape), Arc::clone(&plan));
    }
    app.services.plans.insert(sql, Arc::clone(&plan));
    plan
}
