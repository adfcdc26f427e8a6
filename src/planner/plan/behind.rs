//! Which writes write-behind may queue (issue 20), decided once per plan: the statement's
//! shape (see [`crate::sql::BehindShape`]) on a relation the session's database and role
//! resolve to a permanent ordinary or partitioned table that a `write = "behind"` rule
//! names; an increment also needs the rule's `behind_increments` and its key column to be
//! the table's one-column primary key (so that it changes at most one row, which is what
//! its `UPDATE 1` says). No functions (not even `now()`: its value would be the flush's)
//! and no special date strings. Tables without a primary key and partitioned tables take
//! queued INSERTs: exactly-once comes from the progress row committed with each batch, not
//! from keys.

use super::*;
use crate::catalog::{Persistence, RelKind};
use crate::config::BehindRule;
use crate::sql::{BehindShape, KeyValue};

/// A statement write-behind may queue, for one session context.
#[derive(Debug)]
pub struct BehindPlan {
    /// The target as the catalog names it (the flusher writes increments qualified).
    pub schema: String,
    pub name: String,
    pub tag: Tag,
    pub rule: BehindRule,
    pub kind: BehindKind,
    /// A statement of this shape completed on PostgreSQL (forwarded) in this plan's life:
    /// only then is it queued, so that an error in the statement itself (a misspelt column,
    /// a missing privilege on the table) reaches its client instead of a dead letter.
    pub validated: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BehindKind {
    /// Acknowledged `INSERT 0 rows`.
    Insert { rows: u64 },
    /// Acknowledged `UPDATE 1`: `column = column + delta` (negated) where `key_column = key`.
    Increment {
        column: String,
        delta: KeyValue,
        negate: bool,
        key_column: String,
        key: KeyValue,
    },
}

impl BehindPlan {
    pub(super) fn weight(&self) -> usize {
        std::mem::size_of::<Self>() + self.schema.len() + self.name.len() + 128
    }
}

impl Planner<'_> {
    /// Whether a resolved relation this write names is a `write = "behind"` table (a write
    /// that is not queued then waits for the queue first).
    pub(super) async fn touches_behind(&self, cx: &Context, names: &[sql::RelName]) -> bool {
        let Ok(resolved) = self.resolve(cx, names).await else {
            return false;
        };
        resolved
            .iter()
            .filter_map(|r| r.relation.as_ref())
            .any(|f| {
                self.rules
                    .behind(&cx.database, &cx.current_user, &f.schema, &f.name)
                    .is_some()
            })
    }

    /// The queueable form of a write, or `None` (forwarded as usual).
    pub(super) async fn behind(&self, cx: &Context, info: &StatementInfo) -> Option<BehindPlan> {
        let shape = info.behind.as_deref()?;
        if !info.functions.is_empty()
            || info.uses_value_functions
            || info.epoch_bump
            || info.taints_session
            || info.writes.len() != 1
        {
            return None;
        }
        let relation = match shape {
            BehindShape::Insert { relation, .. } | BehindShape::Increment { relation, .. } => {
                relation
            }
        };
        let resolved = self
            .resolve(cx, std::slice::from_ref(relation))
            .await
            .ok()?;
        let r = resolved.first()?;
        let facts = r.relation.as_ref()?;
        if (r.temp_shadow && cx.has_temp)
            || facts.system
            || facts.persistence != Persistence::Permanent
            || !matches!(facts.kind, RelKind::Ordinary | RelKind::Partitioned)
        {
            return None;
        }
        let rule = self
            .rules
            .behind(&cx.database, &cx.current_user, &facts.schema, &facts.name)?;
        let kind = match shape {
            BehindShape::Insert { rows, .. } => BehindKind::Insert { rows: *rows },
            BehindShape::Increment {
                column,
                delta,
                negate,
                key_column,
                key,
                ..
            } => {
                if !rule.increments {
                    return None;
                }
                let identity = self
                    .catalog
                    .row_identity(&cx.database, facts.oid)
                    .await
                    .ok()??;
                match identity.key.as_slice() {
                    [(pk, _)] if pk == key_column && pk != column => {}
                    _ => return None,
                }
                BehindKind::Increment {
                    column: column.clone(),
                    delta: delta.clone(),
                    negate: *negate,
                    key_column: key_column.clone(),
                    key: key.clone(),
                }
            }
        };
        Some(BehindPlan {
            schema: facts.schema.clone(),
            name: facts.name.clone(),
            tag: Tag {
                db: cx.db_oid,
                rel: facts.oid,
            },
            rule,
            kind,
            validated: std::sync::atomic::AtomicBool::new(false),
        })
    }
}
