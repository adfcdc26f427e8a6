//! A streamed batch of transactions applied to the cache: the relations each wrote (by OID
//! with pgoutput, by name with test_decoding, looked up in the catalog) bumped, or the epoch
//! when a relation is not certain. A relation whose every changed row the stream showed with
//! its primary key (issue 18) is bumped by row instead of table-wide: the stream carries
//! every row a transaction changed — triggers', rules' and FK actions' included — so the
//! keys are the whole truth when they can be read.

use std::collections::BTreeMap;

use super::*;
use crate::cache::Stripe;
use crate::cache::rows::{KeyType, RowKey};
use crate::catalog::RowIdentity;
use crate::cdc::pgoutput::{ChangeKind, RelRows};
use crate::cdc::test_decoding::ChangedRow;

/// The changed rows of one relation in one transaction, as the stream showed them.
#[derive(Clone, Copy)]
pub(super) enum StreamRows<'a> {
    /// pgoutput: the replica identity's columns and each row version's key values.
    Pgoutput(&'a RelRows),
    /// test_decoding: each change's column text.
    Named(&'a [ChangedRow]),
}

/// Known rows by relation OID (a relation missing here is bumped table-wide).
pub(super) type RowsByRel<'a> = BTreeMap<u32, StreamRows<'a>>;

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
        let rows: RowsByRel<'_> = txn
            .rows
            .iter()
            .filter_map(|(name, rows)| {
                let oid = lookup.map.bound_oid(name)?;
                Some((oid, StreamRows::Named(rows.as_deref()?)))
            })
            .collect();
        apply(ctx, db, &relations, &rows, cause, txn.committed_at, m).await;
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
    rows: &RowsByRel<'_>,
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
                let tag = Tag { db: db_oid, rel };
                let known = match rows.get(&rel) {
                    Some(r) => row_stripes(ctx, db, tag, *r).await,
                    None => None,
                };
                match ctx.services.catalog.writes(db, &[rel]).await {
                    Ok(set) => {
                        let mut tags: Vec<Tag> = set
                            .tags
                            .iter()
                            .map(|&rel| Tag { db: db_oid, rel })
                            .filter(|t| known.is_none() || *t != tag)
                            .collect();
                        match &known {
                            Some(stripes) => written.merge_rows(stripes),
                            None => tags.push(tag),
                        }
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

/// The row stripes of a relation's changed rows, or `None` when any row's primary key
/// cannot be read from what the stream showed (then the relation is bumped table-wide).
async fn row_stripes(
    ctx: &AppContext,
    db: &str,
    tag: Tag,
    rows: StreamRows<'_>,
) -> Option<Vec<(Tag, Stripe)>> {
    let identity = ctx
        .services
        .catalog
        .row_identity(db, tag.rel)
        .await
        .ok()??;
    let types: Vec<KeyType> = identity
        .key
        .iter()
        .map(|(_, oid)| KeyType::of_column(*oid))
        .collect::<Option<_>>()?;
    let versions = key_versions(&identity, rows)?;
    let secret = ctx.services.cache.secret();
    versions
        .iter()
        .map(|values| {
            let mut key = RowKey::new();
            for (value, ty) in values.iter().zip(&types) {
                if !key.push_text(*ty, value) {
                    return None;
                }
            }
            Some((tag, secret.stripe(tag, &key)))
        })
        .collect()
}

/// Every row version's primary-key values, in key order.
fn key_versions(identity: &RowIdentity, rows: StreamRows<'_>) -> Option<Vec<Vec<Box<[u8]>>>> {
    if identity.key.is_empty() {
        return None;
    }
    match rows {
        StreamRows::Pgoutput(r) => {
            // The identity pgoutput flagged must be the primary key reads are pinned by (a
            // publication's column list or REPLICA IDENTITY USING INDEX may differ).
            (r.key == identity.key).then(|| r.values.clone())
        }
        StreamRows::Named(changes) => {
            let names: Vec<&str> = identity.key.iter().map(|(n, _)| n.as_str()).collect();
            let mut out = Vec::new();
            for change in changes {
                // Only with REPLICA IDENTITY DEFAULT is an UPDATE's changed key, and a
                // DELETE's key, always printed.
                if change.kind != ChangeKind::Insert && !identity.replica_default {
                    return None;
                }
                out.extend(crate::cdc::test_decoding::key_values(change, &names)?);
            }
            Some(out)
        }
    }
}
