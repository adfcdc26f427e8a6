//! What row-level invalidation must know of a relation (issue 18): its primary key (columns
//! in attribute order, with types pgmemo can canonicalise) and whether a read or a write of
//! it can be pinned to rows by that key at all.
//!
//! A read of a relation is pinnable when its rows are its own: an ordinary table with no
//! inheritance children (a parent's read also returns its children's rows). A write with
//! known keys touches only those rows when nothing else runs on them: no user trigger (a
//! BEFORE trigger may even change the key being written), no rewrite rule, and no foreign-key
//! action that leads back into the table (a self-referencing `ON DELETE CASCADE` deletes
//! other rows of it), and no generated key column (an UPDATE of what it is computed from
//! moves the row to a key the statement does not show). Everything else the write reaches (FK actions into other tables,
//! ancestors) is bumped table-wide by the planner, as before.

use std::collections::BTreeSet;

use super::conn::Lease;
use super::error::CatalogError;
use super::relations;
use super::track::Want;
use super::types::Oid;

/// The key and the pinning verdicts of one relation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RowIdentity {
    /// Primary-key columns in attribute-number order: name and type OID. Empty when the
    /// relation has no primary key, or a key column's type or collation cannot be
    /// canonicalised (see `cache::rows`): then nothing is pinned.
    pub key: Vec<(String, u32)>,
    /// Why reads cannot be pinned (`None`: they can, given `key`).
    pub read_blocker: Option<&'static str>,
    /// Why writes with known keys cannot be bumped by row.
    pub write_blocker: Option<&'static str>,
    /// `REPLICA IDENTITY DEFAULT`: logical replication carries the primary key of every
    /// changed row (old and new, when an UPDATE changes it).
    pub replica_default: bool,
}

impl RowIdentity {
    /// Approximate heap bytes (memo bounds).
    pub fn weight(&self) -> usize {
        std::mem::size_of::<Self>() + self.key.iter().map(|(n, _)| n.len() + 32).sum::<usize>()
    }
}

const ROW_IDENTITY: &str = "\
SELECT c.relkind::text, c.relhassubclass, c.relhasrules, c.relreplident::text, c.relname::text,
  EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = c.oid AND NOT g.tgisinternal),
  k.names, k.types, k.deterministic, k.generated
FROM pg_class c
LEFT JOIN LATERAL (
  SELECT array_agg(a.attname::text ORDER BY a.attnum) AS names,
         array_agg(a.atttypid ORDER BY a.attnum) AS types,
         bool_and(a.attcollation = 0 OR coalesce(co.collisdeterministic, false)) AS deterministic,
         bool_or(a.attgenerated <> '') AS generated
  FROM pg_index i
  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
  LEFT JOIN pg_collation co ON co.oid = a.attcollation
  WHERE i.indrelid = c.oid AND i.indisprimary
    AND NOT EXISTS (SELECT 1 FROM unnest(i.indcollation) ic(oid)
                    JOIN pg_collation x ON x.oid = ic.oid WHERE NOT x.collisdeterministic)
) k ON true
WHERE c.oid = $1";

/// Looks the relation up; `None` when it does not exist.
pub(crate) async fn row_identity(
    lease: &mut Lease,
    oid: Oid,
    limit: usize,
) -> Result<(Option<RowIdentity>, Want), CatalogError> {
    let rows = lease.query(ROW_IDENTITY, &[&oid]).await?;
    let Some(row) = rows.first() else {
        return Ok((None, Want::default()));
    };
    let get =
        |i| -> Result<Option<String>, CatalogError> { row.try_get(i).map_err(CatalogError::Row) };
    let kind = get(0)?.unwrap_or_default();
    let flag = |i| -> Result<bool, CatalogError> {
        Ok(row
            .try_get::<_, Option<bool>>(i)
            .map_err(CatalogError::Row)?
            .unwrap_or(true))
    };
    let (children, rules) = (flag(1)?, flag(2)?);
    let replica_default = get(3)?.as_deref() == Some("d");
    let name = get(4)?.unwrap_or_default();
    let triggers = flag(5)?;
    let names: Option<Vec<String>> = row.try_get(6).map_err(CatalogError::Row)?;
    let types: Option<Vec<Oid>> = row.try_get(7).map_err(CatalogError::Row)?;
    let deterministic: Option<bool> = row.try_get(8).map_err(CatalogError::Row)?;
    let generated = flag(9)?;
    let key: Vec<(String, u32)> = match (names, types, deterministic) {
        (Some(n), Some(t), Some(true)) if n.len() == t.len() => n.into_iter().zip(t).collect(),
        _ => Vec::new(),
    };
    let supported = !key.is_empty()
        && key
            .iter()
            .all(|(_, ty)| crate::cache::rows::KeyType::of_column(*ty).is_some());
    let key = if supported { key } else { Vec::new() };
    let read_blocker = if key.is_empty() {
        Some("no_usable_primary_key")
    } else if kind != "r" {
        Some("not_a_table")
    } else if children {
        Some("has_inheritance_children")
    } else {
        None
    };
    let write_blocker = if let Some(b) = read_blocker {
        Some(b)
    } else if triggers {
        Some("user_trigger")
    } else if generated {
        // An UPDATE of the columns it is computed from moves the row to another key.
        Some("generated_primary_key")
    } else if rules {
        Some("rewrite_rule")
    } else if fk_actions_reach(lease, oid, limit).await? {
        Some("foreign_key_action_into_itself")
    } else {
        None
    };
    let want = Want {
        relations: vec![oid],
        rel_names: vec![name],
        ..Want::default()
    };
    Ok((
        Some(RowIdentity {
            key,
            read_blocker,
            write_blocker,
            replica_default,
        }),
        want,
    ))
}

/// Whether FK actions (CASCADE, SET NULL, SET DEFAULT) starting at `oid` change rows of
/// `oid` itself, directly or through other tables. Past `limit` relations: assumed so.
async fn fk_actions_reach(lease: &mut Lease, oid: Oid, limit: usize) -> Result<bool, CatalogError> {
    let mut seen: BTreeSet<Oid> = BTreeSet::new();
    let mut frontier = vec![oid];
    while !frontier.is_empty() {
        let step = relations::fk_action_step(lease, &frontier, limit).await?;
        if step.contains(&oid) {
            return Ok(true);
        }
        frontier = step.into_iter().filter(|o| seen.insert(*o)).collect();
        if seen.len() > limit {
            return Ok(true);
        }
    }
    Ok(false)
}
