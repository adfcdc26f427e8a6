//! Which relations of a read, and which write targets, are pinned to rows (issue 18): the
//! statement's key equalities (`sql::RowScope`) checked against the catalog's row identity
//! of each relation. A relation whose rows the statement reaches another way too (a view or
//! a called function reading it, row-level security policies) is not pinned.

use super::*;
use crate::planner::rows::{RowPin, Target};
use crate::sql::RowScope;

/// What the planner found a read reads, for its pins.
pub(super) struct ReadScope<'a> {
    /// The statement's relation names resolved, in `info.reads` order.
    pub resolved: &'a [catalog::Resolved],
    /// Every tag the read depends on.
    pub tags: &'a [Tag],
    /// Relations read another way too (through views or called functions).
    pub also_read: &'a [u32],
    /// Some relation has row-level security.
    pub rls: bool,
}

impl Planner<'_> {
    /// The pinned relations among a cacheable read's, and why some relation is not pinned
    /// (`None`: every relation of `tags` is).
    pub(super) async fn read_pins(
        &self,
        cx: &Context,
        sql_bytes: &[u8],
        info: &StatementInfo,
        scope: ReadScope<'_>,
    ) -> (std::sync::Arc<[RowPin]>, Option<&'static str>) {
        let ReadScope {
            resolved,
            tags,
            also_read,
            rls,
        } = scope;
        let Some(RowScope::Read(filters)) = info.rows.as_deref() else {
            return (std::sync::Arc::from([]), Some("no_key_equality"));
        };
        if rls {
            // Policies may read the relation's other rows.
            return (std::sync::Arc::from([]), Some("row_security"));
        }
        let mut pins = Vec::new();
        let mut why = None;
        for filter in filters {
            let oid = info
                .reads
                .iter()
                .position(|n| *n == filter.relation)
                .and_then(|i| resolved.get(i))
                .and_then(|r| r.relation.as_ref())
                .map(|f| f.oid);
            let Some(oid) = oid else {
                why = why.or(Some("relation_not_resolved"));
                continue;
            };
            if also_read.contains(&oid) {
                why = why.or(Some("relation_read_elsewhere"));
                continue;
            }
            match self
                .pin(cx, oid, sql_bytes, |t| t.from_filter(filter), true)
                .await
            {
                Ok(pin) => pins.push(pin),
                Err(reason) => why = why.or(Some(reason)),
            }
        }
        if pins.len() < tags.len() {
            why = why.or(Some("relation_not_pinned"));
        }
        (pins.into(), why)
    }

    /// The rows a write's target is pinned to, or why not.
    pub(super) async fn write_pin(
        &self,
        cx: &Context,
        sql_bytes: &[u8],
        info: &StatementInfo,
    ) -> Result<RowPin, &'static str> {
        let (relation, scope) = match info.rows.as_deref() {
            Some(RowScope::Change { filter, assigns }) => {
                (&filter.relation, Ok((filter, assigns.as_slice())))
            }
            Some(RowScope::Insert {
                relation,
                columns,
                rows,
            }) => (relation, Err((columns.as_slice(), rows.as_slice()))),
            _ => return Err("rows_not_known"),
        };
        let resolved = self
            .resolve(cx, std::slice::from_ref(relation))
            .await
            .map_err(|()| "catalog_error")?;
        let oid = match resolved.first() {
            Some(catalog::Resolved {
                relation: Some(f),
                temp_shadow,
                ..
            }) if !(*temp_shadow && cx.has_temp) => f.oid,
            _ => return Err("relation_not_resolved"),
        };
        self.pin(
            cx,
            oid,
            sql_bytes,
            |t| match scope {
                Ok((filter, assigns)) => t.from_change(filter, assigns),
                Err((columns, rows)) => t.from_insert(columns, rows),
            },
            false,
        )
        .await
    }

    async fn pin(
        &self,
        cx: &Context,
        oid: u32,
        sql_bytes: &[u8],
        make: impl FnOnce(&Target<'_>) -> Result<RowPin, &'static str>,
        read: bool,
    ) -> Result<RowPin, &'static str> {
        let identity = self
            .catalog
            .row_identity(&cx.database, oid)
            .await
            .map_err(|_| "catalog_error")?
            .ok_or("relation_missing")?;
        let blocker = if read {
            identity.read_blocker
        } else {
            identity.write_blocker
        };
        if let Some(b) = blocker {
            return Err(b);
        }
        make(&Target {
            tag: Tag {
                db: cx.db_oid,
                rel: oid,
            },
            identity: &identity,
            sql: sql_bytes,
        })
    }
}
