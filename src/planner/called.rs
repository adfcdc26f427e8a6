//! What the STABLE user functions a cacheable read calls (directly, or inside the views it
//! reads) read in turn, so a write through pgmemo to those tables invalidates the entry
//! (DESIGN §1.2). Three sources, in order of trust: a `[[functions.reads]]` declaration; the
//! body itself when PostgreSQL can show it (a `LANGUAGE sql` text body, analysed and
//! resolved under the function's own search_path or the session's; a `BEGIN ATOMIC` body,
//! whose references `pg_depend` records); otherwise nothing, and the entry's lifetime is
//! capped at `functions.undeclared_reads_ttl`. Nested calls are followed a few levels deep.

use std::collections::HashSet;
use std::sync::Arc;

use crate::catalog::{self, BodySource, CatalogError, FuncBody, FuncFacts, Oid, Volatility};
use crate::sql::{self, Class};

use super::bypass::BypassReason;
use super::plan::{Context, Planner, catalog_names};

/// How many levels of nested calls are followed before the reads count as unknown.
const MAX_DEPTH: usize = 4;

/// What the functions a read calls read.
#[derive(Debug, Default)]
pub(super) struct CalledReads {
    /// Relations read, views expanded (to add to the read's tags).
    pub tags: Vec<Oid>,
    /// Some STABLE function's reads are neither derivable nor declared.
    pub undeclared: bool,
}

/// Where a function's reads were found, before its relations are expanded.
#[derive(Default)]
struct Found {
    relations: Vec<Oid>,
    /// Functions it calls whose reads count too (the next level).
    calls: Vec<Oid>,
    undeclared: bool,
}

impl Planner<'_> {
    /// The reads of the user functions in `facts` (the statement's calls) and `view_calls`
    /// (those of the views it reads). Errors are bypass reasons.
    pub(super) async fn called_reads(
        &self,
        cx: &Context,
        facts: &[FuncFacts],
        view_calls: &[Oid],
        allow_rls: bool,
    ) -> Result<CalledReads, BypassReason> {
        let mut pending: Vec<Oid> = facts
            .iter()
            .filter(|f| f.volatility == Volatility::Stable)
            .flat_map(|f| f.user_overloads.iter().copied())
            .chain(view_calls.iter().copied())
            .collect();
        let mut seen = HashSet::new();
        let mut out = CalledReads::default();
        for _ in 0..MAX_DEPTH {
            pending.retain(|oid| seen.insert(*oid));
            if pending.is_empty() {
                return Ok(out);
            }
            let bodies = self
                .catalog
                .function_bodies(&cx.database, &pending)
                .await
                .map_err(|_| BypassReason::CatalogError)?;
            let mut found = Found::default();
            for body in bodies.iter() {
                self.body_reads(cx, body, &mut found).await?;
            }
            out.undeclared |= found.undeclared;
            pending = found.calls;
            if found.relations.is_empty() {
                continue;
            }
            let set = self
                .catalog
                .reads(&cx.database, &found.relations)
                .await
                .map_err(|_| BypassReason::CatalogError)?;
            // What a function reads must be as cacheable as what the statement names.
            set.check(true, allow_rls)
                .map_err(super::plan::relation_reason)?;
            out.tags.extend(set.tags.iter().copied());
            pending.extend(set.user_functions.iter().copied());
        }
        // Deeper than followed: what the rest reads is unknown.
        out.undeclared |= !pending.iter().all(|oid| seen.contains(oid));
        Ok(out)
    }

    /// One function's reads, added to `found`.
    async fn body_reads(
        &self,
        cx: &Context,
        body: &FuncBody,
        found: &mut Found,
    ) -> Result<(), BypassReason> {
        match body.volatility {
            // Trusted to read nothing that changes (as everywhere else in pgmemo).
            Volatility::Immutable => return Ok(()),
            Volatility::Stable => {}
            // Only reachable through a nested call: code pgmemo does not follow.
            Volatility::Volatile | Volatility::Unknown => {
                found.undeclared = true;
                return Ok(());
            }
        }
        if let Some(tables) = self.declared_reads.iter().find(|d| d.is_for(&body.name)) {
            return self.declared(cx, &tables.tables, found).await;
        }
        match &body.source {
            BodySource::Atomic {
                relations,
                functions,
            } => {
                found.relations.extend(relations.iter().copied());
                found.calls.extend(functions.iter().copied());
                Ok(())
            }
            BodySource::SqlText { text, search_path } => {
                let path = search_path.as_deref().unwrap_or(&cx.search_path);
                self.text_reads(cx, text, path, found).await
            }
            BodySource::Opaque { .. } => {
                found.undeclared = true;
                Ok(())
            }
        }
    }

    /// The tables a `[[functions.reads]]` entry lists; one that does not resolve leaves the
    /// declaration incomplete (the TTL cap applies).
    async fn declared(
        &self,
        cx: &Context,
        tables: &[String],
        found: &mut Found,
    ) -> Result<(), BypassReason> {
        if tables.is_empty() {
            // Declared to read no table.
            return Ok(());
        }
        let names: Vec<catalog::RelName> = tables
            .iter()
            .filter_map(|t| crate::invalidation::parse_table(t))
            .collect();
        // Declared names are schema-qualified (validated): the path does not matter.
        let resolved = self
            .catalog
            .resolve(&cx.database, &names, "public", &cx.current_user)
            .await
            .map_err(|_| BypassReason::CatalogError)?;
        let oids: Vec<Oid> = resolved
            .iter()
            .filter_map(|r| r.relation.as_ref().map(|f| f.oid))
            .collect();
        found.undeclared |= oids.len() != tables.len();
        found.relations.extend(oids);
        Ok(())
    }

    /// The relations a `LANGUAGE sql` text body reads, resolved under `path` as PostgreSQL
    /// does at each call, and the user functions it calls.
    async fn text_reads(
        &self,
        cx: &Context,
        text: &str,
        path: &str,
        found: &mut Found,
    ) -> Result<(), BypassReason> {
        let analysis = sql::analyze(text.as_bytes());
        let mut names = Vec::new();
        let mut calls = Vec::new();
        for info in &analysis.statements {
            if !matches!(info.class, Class::Read | Class::CacheableRead) {
                // Not a plain read pgmemo could parse: it cannot say what it reads.
                found.undeclared = true;
                return Ok(());
            }
            names.extend(catalog_names(&info.reads));
            calls.extend(info.functions.iter().map(|f| {
                catalog::FuncRef::new(f.schema.as_deref(), &f.name, catalog::FuncArgs::Any)
            }));
        }
        let resolved = if names.is_empty() {
            Arc::from([])
        } else {
            match self
                .catalog
                .resolve(&cx.database, &names, path, &cx.current_user)
                .await
            {
                Ok(r) => r,
                Err(e) => return untrusted_path(e, found),
            }
        };
        for r in resolved.iter() {
            let Some(facts) = &r.relation else {
                // A name that resolves to nothing a side connection sees: a temporary table
                // of the session, or an error at run time. Not cacheable either way.
                return Err(BypassReason::FunctionReadsUnresolved);
            };
            if r.temp_shadow && cx.has_temp {
                return Err(BypassReason::TempShadow);
            }
            found.relations.push(facts.oid);
        }
        if calls.is_empty() {
            return Ok(());
        }
        let facts = self
            .catalog
            .functions(&cx.database, &calls, path, &cx.current_user)
            .await;
        match facts {
            Ok(facts) => {
                for f in facts.iter().filter(|f| f.user_defined) {
                    if f.volatility == Volatility::Immutable {
                        continue;
                    }
                    found.undeclared |= f.user_overloads.is_empty();
                    found.calls.extend(f.user_overloads.iter().copied());
                }
                Ok(())
            }
            Err(e) => untrusted_path(e, found),
        }
    }
}

/// A function's own `SET search_path` that pgmemo cannot read: its names are not trusted
/// (the TTL cap applies); any other catalog failure bypasses.
fn untrusted_path(e: CatalogError, found: &mut Found) -> Result<(), BypassReason> {
    match e {
        CatalogError::SearchPath { .. } => {
            found.undeclared = true;
            Ok(())
        }
        _ => Err(BypassReason::CatalogError),
    }
}
