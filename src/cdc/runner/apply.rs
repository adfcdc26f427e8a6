//! A streamed batch of transactions applied to the cache: the relations each wrote (by OID
//! with pgoutput, by name with test_decoding, looked up in the catalog) bumped, or the epoch
//! when a relation is not certain.

use super::*;

/// Bumps a batch of test_decoding transactions: one lookup, made after all of them were
/// decoded, checks every name they carry (see `names`); a transaction with a name that is
/// not certain bumps the epoch.
pub(super) async fn apply_named(
    ctx: &AppContext,
    db: &str,
    lookup: &mut NameLookup,
    batch: &[NamedTxn],
    m: &StreamMetrics,
) {
    let wanted: BTreeSet<&QualifiedName> = batch
        .iter()
        .filter(|t| !t.overflowed)
        .flat_map(|t| t.tables.iter())
        .collect();
    let observation = if wanted.is_empty() {
        Some(Observation::default())
    } else {
        lookup.connect(ctx).await;
        let list: Vec<&QualifiedName> = wanted.into_iter().collect();
        lookup.observe(Some(list.as_slice())).await
    };
    let now = observation.as_ref().map(Observation::current);
    for txn in batch {
        let (relations, cause) = if txn.overflowed {
            (BTreeSet::new(), Some(EpochCause::CdcOverflow))
        } else {
            match lookup.map.resolve(txn, now.as_ref()) {
                Ok(oids) => (oids, None),
                Err(why) => {
                    debug!(database = %db, %why,
                        "cdc: a streamed transaction's relation is not certain; epoch bumped");
                    (BTreeSet::new(), Some(EpochCause::CdcUnresolved))
                }
            }
        };
        apply(ctx, db, &relations, cause, txn.committed_at, m).await;
    }
    // Recorded after the batch was resolved: these bindings count for later transactions.
    if let Some(obs) = &observation {
        lookup.map.record(obs);
    }
}

/// Bumps what a transaction changed: each relation with what a write to it reaches
/// (partition ancestors, and as for writes through pgmemo, descendants, FK actions and
/// rules), or the epoch for `cause`. A relation that cannot be looked up bumps the epoch.
pub(super) async fn apply(
    ctx: &AppContext,
    db: &str,
    relations: &BTreeSet<u32>,
    cause: Option<EpochCause>,
    committed_at: i64,
    m: &StreamMetrics,
) {
    m.transactions.increment(1);
    m.relations.increment(relations.len() as u64);
    let invalidator = &ctx.services.invalidator;
    let mut written = Written::default();
    match invalidator.database_oid(db) {
        Some(db_oid) if cause.is_none() => {
            for &rel in relations {
                match ctx.services.catalog.writes(db, &[rel]).await {
                    Ok(set) => {
                        let mut tags: Vec<Tag> = set
                            .tags
                            .iter()
                            .map(|&rel| Tag { db: db_oid, rel })
                            .collect();
                        tags.push(Tag { db: db_oid, rel });
                        written.merge(&tags, None);
                    }
                    Err(e) => {
                        warn!(database = %db, rel, error = %e,
                            "cdc: could not map a changed relation; epoch bumped");
                        written.merge(&[], Some(EpochCause::CdcOverflow));
                        break;
                    }
                }
            }
        }
        _ if relations.is_empty() && cause.is_none() => {}
        _ => written.merge(&[], Some(cause.unwrap_or(EpochCause::CdcOverflow))),
    }
    if !written.is_empty() {
        invalidator.bump(&written, Source::Cdc);
    }
    // The timestamp comes from the server: saturating, so no value can overflow.
    let lag_micros = wire::now_unix_micros()
        .saturating_sub(wire::PG_EPOCH_OFFSET_MICROS)
        .saturating_sub(committed_at);
    if committed_at != 0 && lag_micros >= 0 {
        m.commit_to_bump.record(lag_micros as f64 / 1e6);
    }
}
