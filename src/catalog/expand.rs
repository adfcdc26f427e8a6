//! From the relations a statement names to the tags its result depends on (reads: views
//! expanded) or the tags its commit must bump (writes: descendants, ancestors, FK actions,
//! rules and written views' base relations, transitively), plus the epoch reasons.

use std::collections::{BTreeMap, BTreeSet};

use super::conn::Lease;
use super::error::CatalogError;
use super::nodetree::NodeRefs;
use super::relations;
use super::track::Want;
use super::types::{
    EpochReason, NotCacheable, Oid, Persistence, ReadSet, RelKind, RelationFacts, Volatility,
    WriteSet,
};

pub(crate) async fn reads(
    lease: &mut Lease,
    list: &[Oid],
    limit: usize,
) -> Result<(ReadSet, Want), CatalogError> {
    let facts = relations::facts(lease, list).await?;
    let mut blockers: Vec<(Oid, NotCacheable)> = list
        .iter()
        .filter(|oid| !facts.contains_key(oid))
        .map(|oid| (*oid, NotCacheable::Missing))
        .collect();
    let views: Vec<Oid> = facts
        .values()
        .filter(|f| f.kind == RelKind::View)
        .map(|f| f.oid)
        .collect();
    let sources = relations::view_sources(lease, &views, limit).await?;
    let mut tags: BTreeSet<Oid> = facts.keys().copied().collect();
    let mut rls = false;
    let mut want = Want {
        functions: sources.functions.clone(),
        ..Want::default()
    };
    for f in facts.values().chain(&sources.relations) {
        tags.insert(f.oid);
        rls |= f.rls_enabled;
        if let Err(reason) = f.cacheable_kind() {
            blockers.push((f.oid, reason));
        }
        if f.persistence != Persistence::Temporary {
            want.relations.push(f.oid);
            // Its name too: a later answer that finds the name on another relation (dropped
            // and re-created directly) then shows this answer is stale (`Catalog::call_tracked`).
            want.rel_names.push(f.name.clone());
        }
    }
    let first_view = views.first().copied().unwrap_or_default();
    if sources.locking {
        blockers.push((first_view, NotCacheable::Locking));
    }
    if !sources.complete {
        blockers.push((first_view, NotCacheable::TooComplex));
    }
    let set = ReadSet {
        tags: tags.into_iter().collect(),
        blockers,
        rls,
        volatility: if views.is_empty() {
            Volatility::Immutable
        } else {
            sources.volatility
        },
        user_functions: sources.functions,
    };
    Ok((set, want))
}

pub(crate) async fn writes(
    lease: &mut Lease,
    list: &[Oid],
    limit: usize,
) -> Result<(WriteSet, Want), CatalogError> {
    let mut written: BTreeSet<Oid> = BTreeSet::new();
    let mut above: BTreeSet<Oid> = BTreeSet::new();
    let mut epoch = Vec::new();
    let mut functions: Vec<Oid> = Vec::new();
    let mut frontier: Vec<Oid> = list.to_vec();
    frontier.sort_unstable();
    frontier.dedup();
    while !frontier.is_empty() {
        written.extend(frontier.iter().copied());
        if written.len() > limit {
            epoch.push(EpochReason::TooManyRelations { limit });
            break;
        }
        // Rows of a relation are visible through its ancestors; an FK on an ancestor acts
        // on its partitions' rows too.
        let anc = relations::ancestors(lease, &frontier, limit).await?;
        let desc = relations::descendants(lease, &frontier, limit).await?;
        let mut fk_from: Vec<Oid> = frontier.clone();
        fk_from.extend(anc.iter().copied());
        let fk = relations::fk_action_step(lease, &fk_from, limit).await?;
        let mut next: BTreeSet<Oid> = desc.into_iter().chain(fk).collect();
        for (relation, refs) in relations::write_rules(lease, &frontier).await? {
            next.extend(refs.relations.iter().copied());
            let evaluated = relations::evaluate(lease, &refs).await?;
            functions.extend(evaluated.user_functions);
            for function in evaluated.side_effects {
                epoch.push(EpochReason::Rule { relation, function });
            }
        }
        // A written view writes its base relations (auto-updatable views; rules and
        // INSTEAD OF triggers are covered above and below).
        let sources = relations::view_sources(lease, &frontier, limit).await?;
        next.extend(sources.relations.iter().map(|f| f.oid));
        functions.extend(sources.functions);
        if !sources.complete || anc.len() > limit || next.len() > limit {
            epoch.push(EpochReason::TooManyRelations { limit });
        }
        above.extend(anc);
        frontier = next
            .into_iter()
            .filter(|oid| !written.contains(oid))
            .collect();
    }
    let tags: BTreeSet<Oid> = written.iter().chain(&above).copied().collect();
    let tag_list: Vec<Oid> = tags.iter().copied().collect();
    for trigger in relations::user_triggers(lease, &tag_list).await? {
        epoch.push(EpochReason::Trigger {
            relation: trigger.relation,
            trigger: trigger.name,
            function: trigger.function,
        });
    }
    let written_list: Vec<Oid> = written.iter().copied().collect();
    let mut by_relation: BTreeMap<Oid, NodeRefs> = BTreeMap::new();
    for (relation, refs) in relations::defaults(lease, &written_list).await? {
        relations::merge(by_relation.entry(relation).or_default(), refs);
    }
    for (relation, refs) in by_relation {
        let evaluated = relations::evaluate(lease, &refs).await?;
        functions.extend(evaluated.user_functions);
        for function in evaluated.side_effects {
            epoch.push(EpochReason::Default { relation, function });
        }
    }
    epoch.dedup();
    // Relations that no longer exist (or are temporary) need no watching.
    let facts = relations::facts(lease, &tag_list).await?;
    let kept: Vec<&RelationFacts> = facts
        .values()
        .filter(|f| f.persistence != Persistence::Temporary)
        .collect();
    let want = Want {
        relations: kept.iter().map(|f| f.oid).collect(),
        rel_names: kept.iter().map(|f| f.name.clone()).collect(),
        functions,
        ..Want::default()
    };
    Ok((
        WriteSet {
            tags: tag_list,
            epoch,
        },
        want,
    ))
}
