//! The catalog's lookups: each memoised per database (and search_path, role or OID set as
//! the answer depends on them), computed once over a side connection when missing, with the
//! generation it was read under.

use super::*;

impl Catalog {
    /// Resolves relation names as PostgreSQL would for a session of `db` whose raw
    /// `search_path` setting is `search_path` and whose current role (what `"$user"` and
    /// schema USAGE checks use) is `current_user`. One answer per name, in order.
    pub async fn resolve(
        &self,
        db: &str,
        names: &[RelName],
        search_path: &str,
        current_user: &str,
    ) -> Result<Arc<[Resolved]>, CatalogError> {
        let key = (self.path_key(db, search_path, current_user), names.to_vec());
        let generation = self.generation();
        if self.memo_ok(db)
            && let Some((hit, negative)) = lock(&self.memos).resolve.get(generation, &key)
            && negative.is_none_or(|at| at.elapsed() < NEGATIVE_TTL)
        {
            return Ok(hit);
        }
        let value: Arc<[Resolved]> = self
            .call_tracked(db, async |lease: &mut Lease| {
                let (list, want) =
                    resolve::relations(lease, names, search_path, current_user).await?;
                Ok((list.into(), want))
            })
            .await?;
        let negative = value
            .iter()
            .any(|r| r.relation.is_none())
            .then(std::time::Instant::now);
        lock(&self.memos).resolve.insert(
            generation,
            self.generation(),
            key,
            (value.clone(), negative),
        );
        Ok(value)
    }

    /// The volatility of each function call under the session's search_path, counting
    /// every overload the call could reach (`Unknown` = no such function: treat as
    /// volatile).
    pub async fn volatility(
        &self,
        db: &str,
        funcs: &[FuncRef],
        search_path: &str,
        current_user: &str,
    ) -> Result<Arc<[Volatility]>, CatalogError> {
        let facts = self.functions(db, funcs, search_path, current_user).await?;
        Ok(facts.iter().map(|f| f.volatility).collect())
    }

    /// Volatility and provenance of each function call under the session's search_path.
    pub async fn functions(
        &self,
        db: &str,
        funcs: &[FuncRef],
        search_path: &str,
        current_user: &str,
    ) -> Result<Arc<[FuncFacts]>, CatalogError> {
        let key = (self.path_key(db, search_path, current_user), funcs.to_vec());
        let generation = self.generation();
        if self.memo_ok(db)
            && let Some(hit) = lock(&self.memos).functions.get(generation, &key)
        {
            return Ok(hit);
        }
        let value: Arc<[FuncFacts]> = self
            .call_tracked(db, async |lease: &mut Lease| {
                let (list, want) =
                    resolve::functions(lease, funcs, search_path, current_user).await?;
                Ok((list.into(), want))
            })
            .await?;
        lock(&self.memos)
            .functions
            .insert(generation, self.generation(), key, value.clone());
        Ok(value)
    }

    /// What a read of these relations depends on and whether it may be cached.
    pub async fn reads(&self, db: &str, oids: &[Oid]) -> Result<Arc<ReadSet>, CatalogError> {
        let key = SetKey::new(db, oids);
        let generation = self.generation();
        if self.memo_ok(db)
            && let Some(hit) = lock(&self.memos).reads.get(generation, &key)
        {
            return Ok(hit);
        }
        let limit = self.config.max_expansion;
        let value = self
            .call_tracked(db, async |lease: &mut Lease| {
                let (set, want) = expand::reads(lease, &key.oids, limit).await?;
                Ok((Arc::new(set), want))
            })
            .await?;
        lock(&self.memos)
            .reads
            .insert(generation, self.generation(), key, value.clone());
        Ok(value)
    }

    /// What a committed write to these relations must bump.
    pub async fn writes(&self, db: &str, oids: &[Oid]) -> Result<Arc<WriteSet>, CatalogError> {
        let key = SetKey::new(db, oids);
        let generation = self.generation();
        if self.memo_ok(db)
            && let Some(hit) = lock(&self.memos).writes.get(generation, &key)
        {
            return Ok(hit);
        }
        let limit = self.config.max_expansion;
        let value = self
            .call_tracked(db, async |lease: &mut Lease| {
                let (set, want) = expand::writes(lease, &key.oids, limit).await?;
                Ok((Arc::new(set), want))
            })
            .await?;
        lock(&self.memos)
            .writes
            .insert(generation, self.generation(), key, value.clone());
        Ok(value)
    }

    /// The primary key of a relation and whether reads and writes of it can be pinned to
    /// rows (`None`: no such relation).
    pub async fn row_identity(
        &self,
        db: &str,
        oid: Oid,
    ) -> Result<Option<Arc<RowIdentity>>, CatalogError> {
        let key = SetKey::new(db, &[oid]);
        let generation = self.generation();
        if self.memo_ok(db)
            && let Some(hit) = lock(&self.memos).rows.get(generation, &key)
        {
            return Ok(hit);
        }
        let limit = self.config.max_expansion;
        let value = self
            .call_tracked(db, async |lease: &mut Lease| {
                let (identity, want) = super::rowid::row_identity(lease, oid, limit).await?;
                Ok((identity.map(Arc::new), want))
            })
            .await?;
        lock(&self.memos)
            .rows
            .insert(generation, self.generation(), key, value.clone());
        Ok(value)
    }

    /// The bodies of these user functions (those that still exist), for what they read.
    pub async fn function_bodies(
        &self,
        db: &str,
        oids: &[Oid],
    ) -> Result<Arc<[FuncBody]>, CatalogError> {
        let key = SetKey::new(db, oids);
        let generation = self.generation();
        if self.memo_ok(db)
            && let Some(hit) = lock(&self.memos).bodies.get(generation, &key)
        {
            return Ok(hit);
        }
        let value: Arc<[FuncBody]> = self
            .call_tracked(db, async |lease: &mut Lease| {
                let (list, want) = bodies::bodies(lease, &key.oids).await?;
                Ok((list.into(), want))
            })
            .await?;
        lock(&self.memos)
            .bodies
            .insert(generation, self.generation(), key, value.clone());
        Ok(value)
    }

    /// The custom setting names `db` mentions, if read at the current generation (sessions
    /// ask without waiting; see [`setting_names`](Self::setting_names)).
    pub fn setting_names_now(&self, db: &str) -> Option<SettingNames> {
        let generation = self.generation();
        lock(&self.setting_names)
            .get(db)
            .filter(|(g, _)| *g == generation)
            .map(|(_, names)| names.clone())
    }

    /// The custom setting names `db`'s policies, views and functions mention (see
    /// `settings`), read on a side connection once per generation. The database is tracked
    /// by the poller from then on, so a change to them is seen.
    pub async fn setting_names(&self, db: &str) -> Result<SettingNames, CatalogError> {
        if let Some(names) = self.setting_names_now(db) {
            return Ok(names);
        }
        let generation = self.generation();
        let names = self
            .call_tracked(db, async |lease: &mut Lease| {
                Ok((settings::fetch(lease).await?, Want::default()))
            })
            .await?;
        if self.generation() == generation {
            let mut memo = lock(&self.setting_names);
            if memo.len() >= self.config.max_databases && !memo.contains_key(db) {
                memo.retain(|_, (g, _)| *g == generation);
            }
            if memo.len() < self.config.max_databases || memo.contains_key(db) {
                memo.insert(db.to_owned(), (generation, names.clone()));
            }
        }
        Ok(names)
    }

    /// The server's current WAL insert position (`X/Y` text): everything committed before
    /// the call ends at or before it. For acknowledgement waits on the change stream.
    pub async fn wal_insert_lsn(&self, db: &str) -> Result<Option<String>, CatalogError> {
        self.call(db, async |lease: &mut Lease| {
            let rows = lease
                .query("SELECT pg_catalog.pg_current_wal_insert_lsn()::text", &[])
                .await?;
            Ok(rows.first().and_then(|r| r.try_get::<_, String>(0).ok()))
        })
        .await
    }

    /// Active replication slots of pgmemo's (named `pgmemo_...`) in `target`, asked through a
    /// side connection to `via`: a release waits for none to be left before a statement
    /// that needs `target` free runs (PostgreSQL refuses it at once while one is active).
    pub async fn active_pgmemo_slots(&self, via: &str, target: &str) -> Result<i64, CatalogError> {
        let target = target.to_owned();
        self.call(via, async |lease: &mut Lease| {
            let rows = lease
                .query(
                    "SELECT count(*) FROM pg_catalog.pg_replication_slots \
                     WHERE active AND database = $1 AND slot_name LIKE 'pgmemo\\_%'",
                    &[&target],
                )
                .await?;
            Ok(rows
                .first()
                .and_then(|r| r.try_get::<_, i64>(0).ok())
                .unwrap_or(0))
        })
        .await
    }

    /// Facts of the relations that exist, in OID order.
    pub async fn relation_facts(
        &self,
        db: &str,
        oids: &[Oid],
    ) -> Result<Vec<RelationFacts>, CatalogError> {
        self.call(db, async |lease: &mut Lease| {
            Ok(relations::facts(lease, oids).await?.into_values().collect())
        })
        .await
    }

    /// What a view reads (transitively) and evaluates; empty for a non-view.
    pub async fn view_sources(&self, db: &str, view: Oid) -> Result<ViewSources, CatalogError> {
        let limit = self.config.max_expansion;
        self.call(db, async |lease: &mut Lease| {
            relations::view_sources(lease, &[view], limit).await
        })
        .await
    }

    /// Ancestors and descendants in the inheritance / partition tree.
    pub async fn inheritance(&self, db: &str, oid: Oid) -> Result<Inheritance, CatalogError> {
        let limit = self.config.max_expansion;
        self.call(db, async |lease: &mut Lease| {
            Ok(Inheritance {
                ancestors: relations::ancestors(lease, &[oid], limit)
                    .await?
                    .into_iter()
                    .collect(),
                descendants: relations::descendants(lease, &[oid], limit)
                    .await?
                    .into_iter()
                    .collect(),
            })
        })
        .await
    }

    /// Tables whose rows FK actions (CASCADE, SET NULL, SET DEFAULT) change when rows of
    /// `oid` are deleted or updated, transitively; sorted, `oid` itself excluded.
    pub async fn fk_action_targets(&self, db: &str, oid: Oid) -> Result<Vec<Oid>, CatalogError> {
        let limit = self.config.max_expansion;
        self.call(db, async |lease: &mut Lease| {
            let mut seen = BTreeSet::from([oid]);
            let mut frontier = vec![oid];
            while !frontier.is_empty() && seen.len() <= limit {
                let step = relations::fk_action_step(lease, &frontier, limit).await?;
                frontier = step.into_iter().filter(|o| seen.insert(*o)).collect();
            }
            seen.remove(&oid);
            Ok(seen.into_iter().collect())
        })
        .await
    }

    /// Relations the non-SELECT rules of `oid` mention (their targets, at least); sorted,
    /// `oid` itself excluded.
    pub async fn rule_targets(&self, db: &str, oid: Oid) -> Result<Vec<Oid>, CatalogError> {
        self.call(db, async |lease: &mut Lease| {
            let mut out = BTreeSet::new();
            for (_, refs) in relations::write_rules(lease, &[oid]).await? {
                out.extend(refs.relations);
            }
            out.remove(&oid);
            Ok(out.into_iter().collect())
        })
        .await
    }

    /// User (non-internal) triggers on `oid`.
    pub async fn user_triggers(
        &self,
        db: &str,
        oid: Oid,
    ) -> Result<Vec<UserTrigger>, CatalogError> {
        self.call(db, async |lease: &mut Lease| {
            relations::user_triggers(lease, &[oid]).await
        })
        .await
    }
}
