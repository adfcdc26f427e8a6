//! Statement plans: what the text of a simple Query (or a Parse) means for the cache in one
//! session context — per statement, the tags a committed write bumps, whether the epoch must
//! move and whether the session's settings can no longer be modelled; for a single cacheable
//! read, its tags, normalised key text and TTL, or the reason it bypasses the cache.
//!
//! Plans are memoised per (session context, SQL bytes) and checked against the catalog and
//! rules generations on every use, so the hit path does no parsing and no catalog I/O. Any
//! catalog failure makes the plan conservative: reads bypass, writes bump the epoch.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;

use super::bypass::BypassReason;
use crate::cache::{Dep, EpochCause, KeySecret, Tag};
use crate::catalog::{self, Catalog, FuncArgs, FuncRef, Volatility};
use crate::config::rules::Rules;
use crate::invalidation::Written;
use crate::sql::{self, Analysis, Class, NotCacheable, StatementInfo};
use crate::telemetry::names;

mod behind;
mod pins;
mod tags;

pub use behind::{BehindKind, BehindPlan};

pub use super::rows::{Bound, KeyPart, RowPin};

/// Where a session stands, as its last settings probe saw it: what name resolution and rules
/// depend on. `id` identifies the combination in plan memo keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Context {
    pub database: Arc<str>,
    pub db_oid: u32,
    pub current_user: Arc<str>,
    pub search_path: Arc<str>,
    /// The session has a temporary schema: names its temp schema could shadow bypass.
    pub has_temp: bool,
}

impl Context {
    pub fn id(&self) -> u64 {
        let mut h = std::hash::DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }
}

/// Effects of one statement, applied when it completes.
#[derive(Debug, Clone, Default)]
pub struct StmtPlan {
    /// Bumps at commit.
    pub written: Written,
    /// The session's settings can no longer be modelled after it (a user function ran).
    pub taint: Option<&'static str>,
    /// DDL: the catalog memos are dropped at commit.
    pub ddl: bool,
    /// SQL `PREPARE name AS stmt`: the effects of `stmt`, applied at each EXECUTE.
    pub prepared: Option<Box<StmtPlan>>,
    /// A write whose rows are known by key: its target (one of `written.tags`) is bumped by
    /// row instead, when the keys of the execution canonicalise (see `rows`).
    pub rows: Option<Box<RowPin>>,
    /// It writes a `write = "behind"` table: unless queued, it waits for the queue first.
    pub touches_behind: bool,
    /// It may be queued by write-behind (see [`behind`]).
    pub behind: Option<Arc<BehindPlan>>,
}

/// A single cacheable read.
#[derive(Debug, Clone)]
pub struct ReadPlan {
    /// Sorted, unique.
    pub tags: Box<[Tag]>,
    /// The key text (comments and whitespace normalised).
    pub normalized: Bytes,
    /// From rules, hints and the default.
    pub ttl: Duration,
    /// Sampled hit ratio of the shape (shared by every text of it): adaptive bypass.
    pub stats: Arc<super::adaptive::HitStats>,
    /// Relations of `tags` pinned to rows by their primary key (see `rows`). Shared: the
    /// plan memo's per-thread front copies plans on the hit path, and a copy must not
    /// allocate.
    pub pins: Arc<[RowPin]>,
    /// Why some relation of `tags` is not pinned (`None`: every one is).
    pub unpinned: Option<&'static str>,
    /// Some relation the read depends on (the resolved relations a rule's `table` is
    /// matched against for the verdict) is a `write = "through"` table for this database and
    /// role: a write to it refreshes stored results, so the session records how to run this
    /// read again.
    pub through: bool,
    /// Refresh-ahead: the fraction of `ttl` after which a hit also starts one background
    /// refresh of the entry (the rules' verdict; 0 = never, and always 0 when `ttl` is 0).
    pub refresh_ahead: f32,
    /// Those refreshes are limited to `refresh.max_share` of upstream queries.
    pub refresh_adaptive: bool,
    /// [`ReadPlan::deps`] of a read whose keys are all literals, once computed (shared by
    /// the copies of this plan, like `pins`). Only [`ReadPlan::new`] makes one: a plan with
    /// other `tags` or `pins` must be built with it, never by changing a copy's fields.
    fixed: Arc<OnceLock<FixedDeps>>,
}

impl ReadPlan {
    /// A read plan (`fixed` starts empty: see [`ReadPlan::deps`]).
    pub fn new(
        tags: Box<[Tag]>,
        normalized: Bytes,
        ttl: Duration,
        stats: Arc<super::adaptive::HitStats>,
        pins: Arc<[RowPin]>,
        unpinned: Option<&'static str>,
        through: bool,
    ) -> Self {
        Self {
            tags,
            normalized,
            ttl,
            stats,
            pins,
            unpinned,
            through,
            refresh_ahead: 0.0,
            refresh_adaptive: false,
            fixed: Arc::default(),
        }
    }

    /// This plan with refresh-ahead as the rules' verdict says (see
    /// [`crate::config::Verdict::refresh_ahead`]); a plan kept until invalidated (`ttl` 0)
    /// never refreshes ahead.
    pub fn with_refresh(mut self, refresh_ahead: f32, refresh_adaptive: bool) -> Self {
        let on = refresh_ahead > 0.0 && !self.ttl.is_zero();
        self.refresh_ahead = if on { refresh_ahead } else { 0.0 };
        self.refresh_adaptive = on && refresh_adaptive;
        self
    }

    /// Writes into `out` the counters one execution depends on (sorted, unique) and returns
    /// whether every relation was pinned to rows. A pinned relation depends on its
    /// table-wide counter and its rows' stripes; the others (and a pinned one whose keys do
    /// not canonicalise this time) on their table counter.
    ///
    /// When no key is a parameter the answer depends only on the text and the deployment
    /// secret: it is computed once per plan and copied afterwards, so a simple Query's hit
    /// neither canonicalises keys nor hashes stripes.
    pub fn deps(
        &self,
        bound: Option<Bound<'_>>,
        utf8: bool,
        secret: &KeySecret,
        out: &mut Vec<Dep>,
    ) -> bool {
        out.clear();
        // A text key needs a UTF-8 session: only that (usual) case is memoised.
        let literal = utf8 && (bound.is_none() || !self.pins.iter().any(RowPin::has_params));
        match self.fixed.get() {
            Some(fixed) if literal && fixed.secret == secret.stripe_id() => {
                out.extend_from_slice(&fixed.deps);
            }
            _ => {
                self.compute_deps(bound, utf8, secret, out);
                out.sort_unstable();
                out.dedup();
                if literal {
                    let _ = self.fixed.set(FixedDeps {
                        secret: secret.stripe_id(),
                        deps: out.as_slice().into(),
                    });
                }
            }
        }
        self.unpinned.is_none()
            && !self.pins.is_empty()
            && !out.iter().any(|d| matches!(d, Dep::Table(_)))
    }

    fn compute_deps(
        &self,
        bound: Option<Bound<'_>>,
        utf8: bool,
        secret: &KeySecret,
        out: &mut Vec<Dep>,
    ) {
        for tag in self.tags.iter() {
            let at = out.len();
            let pinned = self.pins.iter().find(|p| p.tag == *tag).is_some_and(|pin| {
                out.push(Dep::Wide(*tag));
                pin.for_each_key(bound, utf8, |key| {
                    out.push(Dep::Row(secret.stripe(*tag, key)));
                })
            });
            if !pinned {
                out.truncate(at);
                out.push(Dep::Table(*tag));
            }
        }
    }

    /// Approximate heap bytes (the memoised dependencies included).
    fn weight(&self) -> usize {
        let rows: usize = self.pins.iter().map(|p| p.rows.len() + 1).sum();
        self.normalized.len()
            + std::mem::size_of_val(self.tags.as_ref())
            + self.pins.iter().map(RowPin::weight).sum::<usize>()
            + (self.tags.len() + rows) * std::mem::size_of::<Dep>()
    }
}

/// The dependencies of a read whose keys are all literals, under the stripe key they were
/// hashed with.
#[derive(Debug)]
pub struct FixedDeps {
    secret: (u64, u64),
    deps: Box<[Dep]>,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub sql: Bytes,
    pub context_id: u64,
    pub analysis: Arc<Analysis>,
    /// One per `analysis.statements`.
    pub stmts: Arc<[StmtPlan]>,
    /// The read plan, or why the text bypasses the cache.
    pub read: Result<ReadPlan, BypassReason>,
    /// The statistics of its statement shape (see [`super::stats`]) for a plan without a
    /// read plan (a read that bypasses the cache). A cacheable read's are in its
    /// [`ReadPlan::stats`], which every text of the shape shares already: the per-thread
    /// plan copies on the hit path then touch no further reference count. Read both
    /// through [`Plan::shape_stats`].
    pub bypass_shape: Option<Arc<super::stats::ShapeStats>>,
    catalog_generation: u64,
    rules_generation: u64,
    /// For a read that named a relation the catalog did not know: when to look again (see
    /// [`crate::catalog::NEGATIVE_TTL`]).
    retry_at: Option<std::time::Instant>,
}

impl Plan {
    /// A plan of `sql` with no statements and nothing to read (for tests of what holds plans).
    #[cfg(test)]
    pub fn for_tests(sql: &str) -> Plan {
        Plan {
            sql: Bytes::copy_from_slice(sql.as_bytes()),
            context_id: 0,
            analysis: Arc::new(Analysis {
                statements: Vec::new(),
                hints: Default::default(),
            }),
            stmts: Arc::from(Vec::new()),
            read: Err(BypassReason::NotSelect),
            bypass_shape: None,
            catalog_generation: 0,
            rules_generation: 0,
            retry_at: None,
        }
    }

    /// The statistics of the statement's shape, when tracked (see [`Plan::bypass_shape`]).
    pub fn shape_stats(&self) -> Option<&Arc<super::stats::ShapeStats>> {
        match &self.read {
            Ok(read) => read.stats.shape.get(),
            Err(_) => self.bypass_shape.as_ref(),
        }
    }

    /// Still valid under the current catalog and rules.
    pub fn is_current(&self, catalog_generation: u64, rules_generation: u64) -> bool {
        self.catalog_generation == catalog_generation
            && self.rules_generation == rules_generation
            && self
                .retry_at
                .is_none_or(|at| std::time::Instant::now() < at)
    }

    /// The catalog generation the plan's names were resolved under.
    pub fn catalog_generation(&self) -> u64 {
        self.catalog_generation
    }

    /// Approximate heap bytes this plan holds (its text, key text, analysis and effects),
    /// for the byte bounds of the memos and registries that keep it. Parts shared with other
    /// plans are counted too: over-counting only makes a bound tighter.
    pub fn weight(&self) -> usize {
        /// The plan, its `Arc`s and their allocator overhead.
        const OVERHEAD: usize = 512;
        let read = self.read.as_ref().map_or(0, ReadPlan::weight);
        let effects: usize = self
            .stmts
            .iter()
            .map(|s| {
                std::mem::size_of::<StmtPlan>()
                    + std::mem::size_of_val(s.written.tags.as_slice())
                    + s.rows.as_ref().map_or(0, |r| r.weight())
                    + s.behind.as_ref().map_or(0, |b| b.weight())
            })
            .sum();
        OVERHEAD + self.sql.len() + read + self.analysis.weight(self.sql.len()) + effects
    }

    /// The same plan for another text of the same shape (numeric literals differ): the
    /// analysis and effects are shared; the key text is recomputed.
    pub fn with_text(&self, sql: Bytes) -> Plan {
        // Row pins read their numbers from the new text (a number that no longer reads as
        // a key leaves its relation unpinned).
        let repin = |pin: &RowPin, index: usize| {
            crate::sql::statement_piece(&sql, index).and_then(|piece| pin.with_numbers(piece))
        };
        let read = self.read.as_ref().map_err(|r| *r).map(|r| {
            let pins: Vec<RowPin> = r.pins.iter().filter_map(|p| repin(p, 0)).collect();
            let unpinned = if pins.len() < r.pins.len() {
                Some("key_literal")
            } else {
                r.unpinned
            };
            ReadPlan::new(
                r.tags.clone(),
                Bytes::from(sql::normalize_for_key(&sql)),
                r.ttl,
                Arc::clone(&r.stats),
                pins.into(),
                unpinned,
                r.through,
            )
            .with_refresh(r.refresh_ahead, r.refresh_adaptive)
        });
        let stmts = if self.stmts.iter().any(|s| s.rows.is_some()) {
            let stmts: Vec<StmtPlan> = self
                .stmts
                .iter()
                .enumerate()
                .map(|(i, s)| StmtPlan {
                    rows: s.rows.as_ref().and_then(|p| repin(p, i)).map(Box::new),
                    ..s.clone()
                })
                .collect();
            Arc::from(stmts)
        } else {
            Arc::clone(&self.stmts)
        };
        Plan {
            sql,
            context_id: self.context_id,
            analysis: Arc::clone(&self.analysis),
            stmts,
            read,
            bypass_shape: self.bypass_shape.clone(),
            catalog_generation: self.catalog_generation,
            rules_generation: self.rules_generation,
            retry_at: self.retry_at,
        }
    }

    /// For a Bind of this plan's statement after the catalog moved on, instead of waiting for
    /// a new plan: the same plan made safe to run once under whatever the catalog says now.
    /// Only for a plan with no cacheable read (nothing to look up) that writes something
    /// (what a pipelined write must not wait for); `None` otherwise. What it writes is no
    /// longer known exactly (a trigger or rule may have been added), so its commit bumps the
    /// epoch; and user code it may now run could change the session's settings, so the
    /// session probes them again afterwards.
    pub fn stale_write(&self) -> Option<Plan> {
        if self.read.is_ok() || self.stmts.iter().all(|s| s.written.is_empty()) {
            return None;
        }
        let stmts: Vec<StmtPlan> = self
            .stmts
            .iter()
            .map(|s| {
                let mut s = s.clone();
                s.written.merge(&[], Some(EpochCause::ResolutionChanged));
                s.rows = None;
                s.taint = s.taint.or(Some("planned under an older catalog"));
                s
            })
            .collect();
        Some(Plan {
            stmts: stmts.into(),
            ..self.clone()
        })
    }

    /// Every statement's bumps together (for a session that loses track of which ran).
    pub fn all_written(&self) -> Written {
        let mut w = Written::default();
        for s in self.stmts.iter() {
            w.merge(&s.written.tags, s.written.epoch);
            w.merge_through(&s.written.through);
        }
        w
    }

    /// A plan for a session without a usable context (probe failed, unsafe encoding): reads
    /// bypass, and anything that is not plainly a read or session/transaction control bumps
    /// the epoch.
    pub fn without_context(sql: Bytes, reason: BypassReason) -> Plan {
        let mut analysis = sql::analyze(&sql);
        for info in &mut analysis.statements {
            info.rows = None;
        }
        let stmts: Vec<StmtPlan> = analysis
            .statements
            .iter()
            .map(|info| {
                let mut p = StmtPlan::default();
                if may_write(info) {
                    p.written.epoch = Some(EpochCause::Untracked);
                }
                if info.taints_session || !info.functions.is_empty() {
                    p.taint = Some("statement in a session without a settings probe");
                }
                p
            })
            .collect();
        Plan {
            sql,
            context_id: 0,
            analysis: Arc::new(analysis),
            stmts: stmts.into(),
            read: Err(reason),
            bypass_shape: None,
            catalog_generation: 0,
            rules_generation: 0,
            retry_at: None,
        }
    }
}

fn may_write(info: &StatementInfo) -> bool {
    match info.class {
        Class::Write | Class::Ddl | Class::Other | Class::Execute { .. } => true,
        Class::Read | Class::CacheableRead => !info.functions.is_empty() || info.epoch_bump,
        Class::SessionChange(sql::SessionChange::Prepare { .. }) => false,
        Class::TransactionControl(_) | Class::SessionChange(_) | Class::Utility => info.epoch_bump,
    }
}

/// Inputs a plan is computed from (shared, cheap to clone).
pub struct Planner<'a> {
    pub catalog: &'a Catalog,
    /// Where the relations reads name are recorded by tag, for `/api/tables`.
    pub tables: Option<&'a super::stats::TableDirectory>,
    pub rules: &'a Rules,
    pub rules_generation: u64,
    pub no_side_effects: &'a [String],
    /// `[[functions.writes]]`: what trigger and rule functions write, as declared.
    pub declared_writes: &'a [crate::config::FunctionWrites],
    /// `[[functions.reads]]`: what STABLE functions read, as declared.
    pub declared_reads: &'a [crate::config::FunctionReads],
    /// `functions.undeclared_reads_ttl`: the longest TTL of a read calling a STABLE function
    /// whose reads are unknown (zero: not cached).
    pub undeclared_reads_ttl: Duration,
    pub default_ttl: Duration,
}

impl Planner<'_> {
    /// Analyses `sql` and asks the catalog what it reads and writes under `cx`.
    pub async fn plan(&self, cx: &Context, sql: Bytes) -> Plan {
        let catalog_generation = self.catalog.generation();
        let analysis = sql::analyze(&sql);
        let mut stmts = Vec::with_capacity(analysis.statements.len());
        let mut catalog_failed = false;
        for info in &analysis.statements {
            let (p, failed) = self.statement(cx, &sql, info).await;
            catalog_failed |= failed;
            stmts.push(p);
        }
        let read = match analysis.cacheable() {
            Some(info) => self.read(cx, &sql, info, analysis.hints.ttl).await,
            None => Err(analysis
                .reason()
                .map_or(BypassReason::NotSelect, BypassReason::from)),
        };
        // The key equalities became the plan's row pins: the memos need not hold them twice
        // (plans of a hot set of texts must fit the memo's byte budget).
        let mut analysis = analysis;
        for info in &mut analysis.statements {
            info.rows = None;
        }
        metrics::counter!(names::PLANS, "kind" => if catalog_failed { "catalog_error" } else { "plan" })
            .increment(1);
        // A relation the catalog did not know (created directly since?) or a catalog that
        // failed: plan again later instead of bypassing (a read) or emptying the whole cache
        // at every run (a write to a name that did not resolve) until the next catalog change.
        let unresolved_write = stmts
            .iter()
            .any(|p| p.written.epoch == Some(EpochCause::Untracked));
        let retry_at = (catalog_failed
            || unresolved_write
            || matches!(
                read,
                Err(BypassReason::UnresolvedRelation | BypassReason::CatalogError)
            ))
        .then(|| std::time::Instant::now() + crate::catalog::NEGATIVE_TTL);
        Plan {
            context_id: cx.id(),
            sql,
            analysis: Arc::new(analysis),
            stmts: stmts.into(),
            read,
            bypass_shape: None,
            catalog_generation,
            rules_generation: self.rules_generation,
            retry_at,
        }
    }

    fn allowlisted(&self, f: &sql::FuncName) -> bool {
        self.no_side_effects.iter().any(|entry| {
            let (schema, name) = entry.split_once('.').unwrap_or(("", entry));
            name == f.name && f.schema.as_deref().is_none_or(|s| s == schema)
        })
    }

    async fn statement(
        &self,
        cx: &Context,
        sql_bytes: &[u8],
        info: &StatementInfo,
    ) -> (StmtPlan, bool) {
        let mut p = StmtPlan::default();
        let mut failed = false;
        if info.taints_session {
            p.taint = Some("statement may change session state");
        }
        if !info.functions.is_empty() {
            match self.function_facts(cx, info).await {
                Ok(facts) => {
                    for (f, fact) in info.functions.iter().zip(facts.iter()) {
                        if fact.user_defined && !self.allowlisted(f) {
                            // User code may call set_config whatever it is declared as
                            // (PostgreSQL lets an IMMUTABLE function call it): the session's
                            // settings are unknown after it ran, unless the operator declared
                            // that its only effect is its result.
                            p.taint = Some("user-defined function call");
                        }
                        let volatile =
                            matches!(fact.volatility, Volatility::Volatile | Volatility::Unknown);
                        if fact.user_defined && volatile && !self.allowlisted(f) {
                            p.written.merge(&[], Some(EpochCause::SideEffects));
                        }
                    }
                }
                Err(_) => {
                    failed = true;
                    p.taint = Some("function lookup failed");
                    p.written.merge(&[], Some(EpochCause::SideEffects));
                }
            }
        }
        if p.taint.is_none() && !info.reads.is_empty() {
            match self.views_run_user_code(cx, &info.reads).await {
                Ok(false) => {}
                Ok(true) => p.taint = Some("reads a view that runs user or volatile code"),
                Err(()) => {
                    failed = true;
                    p.taint = Some("view lookup failed");
                }
            }
        }
        match &info.class {
            Class::Write | Class::Ddl => {
                // A DDL bumps the epoch at commit (below), so which relations it names
                // changes nothing: resolving them cost catalog round trips per statement
                // (for `CREATE TABLE ... INHERITS (base)`, base's whole tree each time:
                // asyncpg's 1,000-table introspection test ran 13 x slower than direct).
                if info.class == Class::Write && !info.writes.is_empty() {
                    match self.write_tags(cx, &info.writes).await {
                        Ok((w, runs_user_code)) => {
                            p.written.merge(&w.tags, w.epoch);
                            p.written.merge_through(&w.through);
                            p.rows = self.write_pin(cx, sql_bytes, info).await.ok().map(Box::new);
                            if !self.rules.is_empty() {
                                p.touches_behind = self.touches_behind(cx, &info.writes).await;
                            }
                            if p.touches_behind {
                                p.behind = self.behind(cx, info).await.map(Arc::new);
                            }
                            if runs_user_code {
                                p.taint = Some("trigger, rule or default runs a user function");
                            }
                        }
                        Err(()) => {
                            failed = true;
                            p.written.merge(&[], Some(EpochCause::Untracked));
                            p.taint = Some("write lookup failed");
                        }
                    }
                }
                if info.class == Class::Ddl {
                    p.ddl = true;
                    p.written.merge(&[], Some(EpochCause::Ddl));
                    // Event triggers, column defaults filled in, checks and index
                    // expressions evaluated: user code the text does not show may run.
                    p.taint = p.taint.or(Some("DDL may run user code"));
                }
            }
            Class::SessionChange(sql::SessionChange::Prepare { inner, .. }) => {
                // Its effects apply when it is executed (see the tracker), not now.
                let (inner_plan, inner_failed) =
                    Box::pin(self.statement(cx, sql_bytes, inner)).await;
                failed |= inner_failed;
                p.prepared = Some(Box::new(inner_plan));
            }
            _ => {}
        }
        if info.epoch_bump {
            let cause = match info.reason {
                Some(
                    NotCacheable::ParseFailed | NotCacheable::NotUtf8 | NotCacheable::TooLarge,
                ) => EpochCause::UnparsedWrite,
                _ => EpochCause::SideEffects,
            };
            p.written.merge(&[], Some(cause));
        }
        (p, failed)
    }

    /// `names` resolved under the session's search_path and role.
    async fn resolve(
        &self,
        cx: &Context,
        names: &[sql::RelName],
    ) -> Result<Arc<[catalog::Resolved]>, ()> {
        self.catalog
            .resolve(
                &cx.database,
                &catalog_names(names),
                &cx.search_path,
                &cx.current_user,
            )
            .await
            .map_err(|_| ())
    }

    /// Whether reading `names` evaluates a user function or a volatile one inside a view
    /// (either may call set_config, changing the session's settings unseen). Names that do
    /// not resolve are not views pgmemo knows of.
    async fn views_run_user_code(&self, cx: &Context, names: &[sql::RelName]) -> Result<bool, ()> {
        let resolved = self.resolve(cx, names).await?;
        let oids: Vec<u32> = resolved
            .iter()
            .filter_map(|r| r.relation.as_ref().map(|f| f.oid))
            .collect();
        if oids.is_empty() {
            return Ok(false);
        }
        let set = self
            .catalog
            .reads(&cx.database, &oids)
            .await
            .map_err(|_| ())?;
        Ok(!set.user_functions.is_empty()
            || matches!(set.volatility, Volatility::Volatile | Volatility::Unknown))
    }
}

/// The shorter of two TTLs, where zero means "until invalidated" (the longest).
fn shorter(ttl: Duration, cap: Duration) -> Duration {
    if ttl.is_zero() { cap } else { ttl.min(cap) }
}

/// Names from the analysis in the catalog's type.
pub(super) fn catalog_names(names: &[sql::RelName]) -> Vec<catalog::RelName> {
    names
        .iter()
        .map(|n| catalog::RelName::new(n.schema.as_deref(), &n.name))
        .collect()
}

/// Relation OIDs of the session's database as tags, sorted and unique.
fn tags<'a>(cx: &Context, oids: impl Iterator<Item = &'a u32>) -> Box<[Tag]> {
    let mut tags: Vec<Tag> = oids.map(|&rel| Tag { db: cx.db_oid, rel }).collect();
    tags.sort_unstable();
    tags.dedup();
    tags.into_boxed_slice()
}

pub(super) fn relation_reason(r: catalog::NotCacheable) -> BypassReason {
    match r {
        catalog::NotCacheable::Missing => BypassReason::RelationMissing,
        catalog::NotCacheable::Temporary => BypassReason::TemporaryRelation,
        catalog::NotCacheable::Unlogged => BypassReason::UnloggedRelation,
        catalog::NotCacheable::System => BypassReason::SystemRelation,
        catalog::NotCacheable::Kind(_) => BypassReason::RelationKind,
        catalog::NotCacheable::RowSecurity => BypassReason::RowSecurity,
        catalog::NotCacheable::Volatility(_) => BypassReason::ViewVolatility,
        catalog::NotCacheable::Locking => BypassReason::ViewLocking,
        catalog::NotCacheable::TooComplex => BypassReason::ViewTooComplex,
    }
}
