//! What a planned statement depends on and invalidates: the tags a write bumps (its target,
//! views and rules over it, foreign-key actions, trigger targets), and a read's tags, TTL and
//! rule outcome (or the typed reason it is not cached).

use super::*;

impl Planner<'_> {
    /// The tags a committed write to `names` bumps, and an epoch cause for effects the catalog
    /// cannot pin down (user triggers, rules calling functions) unless allowlisted; with
    /// whether the write runs a user function that is not allowlisted (triggers, rules and
    /// defaults included): it may call set_config, so the session must be probed again.
    pub(super) async fn write_tags(
        &self,
        cx: &Context,
        names: &[sql::RelName],
    ) -> Result<(Written, bool), ()> {
        let resolved = self.resolve(cx, names).await?;
        let mut w = Written::default();
        let mut oids = Vec::with_capacity(resolved.len());
        let mut unseen_relation = false;
        for r in resolved.iter() {
            match &r.relation {
                Some(f) if !(r.temp_shadow && cx.has_temp) => oids.push(f.oid),
                // A temp relation of this session (invisible to side connections) or a name
                // that does not resolve (the statement fails, or we cannot tell): writes to
                // temp relations need no bump, but we cannot tell them apart.
                _ => {
                    w.merge(&[], Some(EpochCause::Untracked));
                    // Nor can we see its triggers and defaults (user code).
                    unseen_relation = true;
                }
            }
        }
        if oids.is_empty() {
            return Ok((w, unseen_relation));
        }
        let set = self
            .catalog
            .writes(&cx.database, &oids)
            .await
            .map_err(|_| ())?;
        w.merge(&tags(cx, set.tags.iter().chain(oids.iter())), None);
        w.merge_through(&self.through_tags(cx, &resolved));
        let mut declared: Vec<catalog::RelName> = Vec::new();
        let mut runs_user_code = unseen_relation;
        for reason in &set.epoch {
            let Some(f) = reason.function() else {
                w.merge(&[], Some(EpochCause::SideEffects));
                runs_user_code = true;
                continue;
            };
            if self.no_side_effects.iter().any(|allowed| allowed == f) {
                continue;
            }
            runs_user_code = true;
            match self.declared_writes.iter().find(|d| d.is_for(f)) {
                Some(d) => declared.extend(
                    d.tables
                        .iter()
                        .filter_map(|t| crate::invalidation::parse_table(t)),
                ),
                None => w.merge(&[], Some(EpochCause::SideEffects)),
            }
        }
        if !declared.is_empty() {
            // Bump what the operator declared the function writes, with its own closure
            // (partitions, FK actions, views' bases).
            let resolved = self
                .catalog
                .resolve(&cx.database, &declared, "public", &cx.current_user)
                .await
                .map_err(|_| ())?;
            let oids: Vec<u32> = resolved
                .iter()
                .filter_map(|r| r.relation.as_ref().map(|f| f.oid))
                .collect();
            if oids.len() != declared.len() {
                w.merge(&[], Some(EpochCause::SideEffects));
            }
            if !oids.is_empty() {
                let set = self
                    .catalog
                    .writes(&cx.database, &oids)
                    .await
                    .map_err(|_| ())?;
                w.merge(&tags(cx, set.tags.iter().chain(oids.iter())), None);
                w.merge_through(&self.through_tags(cx, &resolved));
                if !set.epoch.is_empty() {
                    // The declared tables have invisible effects of their own.
                    w.merge(&[], Some(EpochCause::SideEffects));
                }
            }
        }
        Ok((w, runs_user_code))
    }

    /// Whether `schema.name` is a `write = "through"` table for this session's database and
    /// current role (see [`Rules::write_through`]).
    fn write_through(&self, cx: &Context, schema: &str, name: &str) -> bool {
        self.rules
            .write_through(&cx.database, &cx.current_user, schema, name)
    }

    /// The tags of the resolved relations a write touches that are write-through tables:
    /// those whose dependent results the commit refreshes rather than only invalidates.
    /// Relations that did not resolve (or that a temp relation shadows) are left out: their
    /// write bumps the epoch, which refreshes nothing.
    fn through_tags(&self, cx: &Context, resolved: &[catalog::Resolved]) -> Vec<Tag> {
        let oids: Vec<u32> = resolved
            .iter()
            .filter(|r| !(r.temp_shadow && cx.has_temp))
            .filter_map(|r| r.relation.as_ref())
            .filter(|f| self.write_through(cx, &f.schema, &f.name))
            .map(|f| f.oid)
            .collect();
        tags(cx, oids.iter()).into_vec()
    }

    pub(super) async fn read(
        &self,
        cx: &Context,
        sql_bytes: &[u8],
        info: &StatementInfo,
        hint_ttl: Option<Duration>,
    ) -> Result<ReadPlan, BypassReason> {
        let names = catalog_names(&info.reads);
        let resolved = self
            .catalog
            .resolve(&cx.database, &names, &cx.search_path, &cx.current_user)
            .await
            .map_err(|_| BypassReason::CatalogError)?;
        let mut oids = Vec::with_capacity(resolved.len());
        let mut tables: Vec<(String, String)> = Vec::with_capacity(resolved.len());
        for r in resolved.iter() {
            let Some(facts) = &r.relation else {
                return Err(BypassReason::UnresolvedRelation);
            };
            if r.temp_shadow && cx.has_temp {
                return Err(BypassReason::TempShadow);
            }
            facts.cacheable_kind().map_err(relation_reason)?;
            oids.push(facts.oid);
            tables.push((facts.schema.clone(), facts.name.clone()));
            if let Some(directory) = self.tables {
                let tag = Tag {
                    db: cx.db_oid,
                    rel: facts.oid,
                };
                directory.record(tag, || crate::planner::stats::TableInfo {
                    database: cx.database.as_ref().into(),
                    role: cx.current_user.as_ref().into(),
                    schema: facts.schema.as_str().into(),
                    name: facts.name.as_str().into(),
                });
            }
        }
        let normalized = Bytes::from(sql::normalize_for_key(sql_bytes));
        let table_refs: Vec<(&str, &str)> = tables
            .iter()
            .map(|(s, n)| (s.as_str(), n.as_str()))
            .collect();
        let verdict = self
            .rules
            .verdict(&cx.database, &cx.current_user, &normalized, &table_refs);
        if !verdict.cache {
            return Err(BypassReason::Rule);
        }
        let through = table_refs
            .iter()
            .any(|&(schema, name)| self.write_through(cx, schema, name));
        // A statement naming no relation (or calling no function) needs no catalog call.
        let set = if oids.is_empty() {
            Arc::default()
        } else {
            self.catalog
                .reads(&cx.database, &oids)
                .await
                .map_err(|_| BypassReason::CatalogError)?
        };
        set.check(verdict.allow_stable_functions, verdict.allow_rls)
            .map_err(relation_reason)?;
        let facts = if info.functions.is_empty() {
            Arc::from([])
        } else {
            self.function_facts(cx, info)
                .await
                .map_err(|_| BypassReason::CatalogError)?
        };
        if facts
            .iter()
            .any(|f| !f.volatility.cacheable(verdict.allow_stable_functions))
        {
            return Err(BypassReason::FunctionVolatility);
        }
        // STABLE user functions (only cacheable with allow_stable_functions) may read tables
        // the statement does not name: their writes must invalidate the entry too.
        let called = self
            .called_reads(cx, &facts, &set.user_functions, verdict.allow_rls)
            .await?;
        let tags = tags(cx, set.tags.iter().chain(&called.tags).chain(oids.iter()));
        let mut ttl = verdict.ttl;
        if let Some(h) = hint_ttl.filter(|h| !h.is_zero()) {
            // A hint may shorten, never lengthen, what rules allow (a zero hint, which would
            // mean "until invalidated", is ignored).
            ttl = shorter(ttl, h);
        }
        if ttl.is_zero() && set.rls {
            ttl = self.default_ttl.max(Duration::from_secs(1));
        }
        if called.undeclared {
            // Writes to what such a function reads are invisible: only the cap bounds them.
            if self.undeclared_reads_ttl.is_zero() {
                return Err(BypassReason::UndeclaredFunctionReads);
            }
            ttl = shorter(ttl, self.undeclared_reads_ttl);
        }
        // A view among the relations may read a pinned relation's other rows.
        let any_view = resolved
            .iter()
            .filter_map(|r| r.relation.as_ref())
            .any(|f| f.kind == catalog::RelKind::View);
        let mut also_read = called.tags.clone();
        if any_view {
            also_read.extend(set.tags.iter().copied());
        }
        let scope = pins::ReadScope {
            resolved: &resolved,
            tags: &tags,
            also_read: &also_read,
            rls: set.rls,
        };
        let (pins, unpinned) = self.read_pins(cx, sql_bytes, info, scope).await;
        Ok(ReadPlan::new(
            tags,
            normalized,
            ttl,
            Arc::default(),
            pins,
            unpinned,
            through,
        )
        .with_refresh(verdict.refresh_ahead, verdict.refresh_adaptive))
    }

    /// Volatility and provenance of every function `info` calls (each overload of a name
    /// counts: argument types are not known here).
    pub(super) async fn function_facts(
        &self,
        cx: &Context,
        info: &StatementInfo,
    ) -> Result<Arc<[catalog::FuncFacts]>, catalog::CatalogError> {
        let refs: Vec<FuncRef> = info
            .functions
            .iter()
            .map(|f| FuncRef::new(f.schema.as_deref(), &f.name, FuncArgs::Any))
            .collect();
        self.catalog
            .functions(&cx.database, &refs, &cx.search_path, &cx.current_user)
            .await
    }
}
