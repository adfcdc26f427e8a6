//! What the catalog says about relations: their facts, what views read and evaluate, the
//! inheritance/partition tree, FK actions, rewrite rules, user triggers and column
//! defaults, and the volatility of whatever an expression tree calls.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::conn::Lease;
use super::error::CatalogError;
use super::nodetree::NodeRefs;
use super::resolve::facts_from_row;
use super::types::{Oid, RelKind, RelationFacts, UserTrigger, ViewSources, Volatility};

const FACTS: &str = "\
SELECT c.oid, n.nspname::text, c.relname::text, c.relkind::text, c.relpersistence::text,
  c.relrowsecurity, c.relforcerowsecurity, c.relispartition
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = ANY($1::oid[])";

const ANCESTORS: &str = "\
WITH RECURSIVE up(oid) AS (
  SELECT i.inhparent FROM pg_inherits i WHERE i.inhrelid = ANY($1::oid[])
  UNION
  SELECT i.inhparent FROM pg_inherits i JOIN up ON i.inhrelid = up.oid)
SELECT oid FROM up LIMIT $2";

const DESCENDANTS: &str = "\
WITH RECURSIVE down(oid) AS (
  SELECT i.inhrelid FROM pg_inherits i WHERE i.inhparent = ANY($1::oid[])
  UNION
  SELECT i.inhrelid FROM pg_inherits i JOIN down ON i.inhparent = down.oid)
SELECT oid FROM down LIMIT $2";

/// Tables whose rows an FK action changes when rows of $1 are deleted or updated:
/// CASCADE ('c'), SET NULL ('n'), SET DEFAULT ('d'); RESTRICT and NO ACTION change nothing.
const FK_ACTION_TARGETS: &str = "\
SELECT DISTINCT k.conrelid FROM pg_constraint k
WHERE k.contype = 'f' AND k.confrelid = ANY($1::oid[])
  AND (k.confdeltype IN ('c', 'n', 'd') OR k.confupdtype IN ('c', 'n', 'd'))
LIMIT $2";

/// Non-SELECT rules (ON INSERT/UPDATE/DELETE) of $1.
const WRITE_RULES: &str = "\
SELECT r.oid, r.ev_class, coalesce(r.ev_action::text, ''), coalesce(r.ev_qual::text, '')
FROM pg_rewrite r WHERE r.ev_class = ANY($1::oid[]) AND r.ev_type <> '1'";

/// The SELECT rule (definition) of each view in $1.
const VIEW_RULES: &str = "\
SELECT r.oid, coalesce(r.ev_action::text, '')
FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class
WHERE r.ev_class = ANY($1::oid[]) AND r.ev_type = '1' AND c.relkind = 'v'";

/// What rules depend on (pinned objects are never recorded; the tree scan covers those).
const RULE_DEPS: &str = "\
SELECT DISTINCT CASE d.refclassid WHEN 'pg_class'::regclass THEN 'r'
                                  WHEN 'pg_proc'::regclass THEN 'f' ELSE 'o' END,
  d.refobjid
FROM pg_depend d
WHERE d.classid = 'pg_rewrite'::regclass AND d.objid = ANY($1::oid[])
  AND d.refclassid IN ('pg_class'::regclass, 'pg_proc'::regclass, 'pg_operator'::regclass)";

const USER_TRIGGERS: &str = "\
SELECT t.tgrelid, t.tgname::text, n.nspname::text || '.' || p.proname::text
FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE t.tgrelid = ANY($1::oid[]) AND NOT t.tgisinternal
ORDER BY t.tgrelid, t.tgname";

const DEFAULTS: &str = "\
SELECT d.adrelid, coalesce(d.adbin::text, '') FROM pg_attrdef d WHERE d.adrelid = ANY($1::oid[])";

const PROCS: &str = "\
SELECT p.oid, p.provolatile::text, n.nspname::text, p.proname::text
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE p.oid = ANY($1::oid[])";

const OPERATOR_FUNCS: &str = "\
SELECT o.oprcode::oid FROM pg_operator o WHERE o.oid = ANY($1::oid[])";

const TYPE_IO_FUNCS: &str = "\
SELECT t.typinput::oid, t.typoutput::oid FROM pg_type t WHERE t.oid = ANY($1::oid[])";

fn oids(list: &BTreeSet<Oid>) -> Vec<Oid> {
    list.iter().copied().collect()
}

fn limit_param(limit: usize) -> i64 {
    i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX)
}

async fn oid_column(
    lease: &mut Lease,
    sql: &'static str,
    list: &[Oid],
    limit: usize,
) -> Result<BTreeSet<Oid>, CatalogError> {
    if list.is_empty() {
        return Ok(BTreeSet::new());
    }
    let rows = lease.query(sql, &[&list, &limit_param(limit)]).await?;
    rows.iter()
        .map(|row| row.try_get(0).map_err(CatalogError::Row))
        .collect()
}

/// Facts of the relations that still exist, by OID.
pub(crate) async fn facts(
    lease: &mut Lease,
    list: &[Oid],
) -> Result<BTreeMap<Oid, RelationFacts>, CatalogError> {
    let mut out = BTreeMap::new();
    if list.is_empty() {
        return Ok(out);
    }
    for row in lease.query(FACTS, &[&list]).await? {
        let facts = facts_from_row(&row, 0)?;
        out.insert(facts.oid, facts);
    }
    Ok(out)
}

/// Ancestors of `list`, transitively; more than `limit` results means the bound was hit.
pub(crate) async fn ancestors(
    lease: &mut Lease,
    list: &[Oid],
    limit: usize,
) -> Result<BTreeSet<Oid>, CatalogError> {
    oid_column(lease, ANCESTORS, list, limit).await
}

pub(crate) async fn descendants(
    lease: &mut Lease,
    list: &[Oid],
    limit: usize,
) -> Result<BTreeSet<Oid>, CatalogError> {
    oid_column(lease, DESCENDANTS, list, limit).await
}

/// One step of FK actions: the tables whose rows change when rows of `list` change.
pub(crate) async fn fk_action_step(
    lease: &mut Lease,
    list: &[Oid],
    limit: usize,
) -> Result<BTreeSet<Oid>, CatalogError> {
    oid_column(lease, FK_ACTION_TARGETS, list, limit).await
}

/// Relations and functions rules depend on, per pg_depend.
async fn rule_deps(
    lease: &mut Lease,
    rules: &[Oid],
    refs: &mut NodeRefs,
) -> Result<(), CatalogError> {
    if rules.is_empty() {
        return Ok(());
    }
    for row in lease.query(RULE_DEPS, &[&rules]).await? {
        let kind: String = row.try_get(0).map_err(CatalogError::Row)?;
        let oid: Oid = row.try_get(1).map_err(CatalogError::Row)?;
        match kind.as_str() {
            "r" => refs.relations.insert(oid),
            "f" => refs.functions.insert(oid),
            _ => refs.operators.insert(oid),
        };
    }
    Ok(())
}

/// What the non-SELECT rules of `list` write (every relation they mention) and call.
pub(crate) async fn write_rules(
    lease: &mut Lease,
    list: &[Oid],
) -> Result<Vec<(Oid, NodeRefs)>, CatalogError> {
    if list.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for row in lease.query(WRITE_RULES, &[&list]).await? {
        let rule: Oid = row.try_get(0).map_err(CatalogError::Row)?;
        let relation: Oid = row.try_get(1).map_err(CatalogError::Row)?;
        let mut refs = NodeRefs::default();
        refs.scan(&row.try_get::<_, String>(2).map_err(CatalogError::Row)?);
        refs.scan(&row.try_get::<_, String>(3).map_err(CatalogError::Row)?);
        rule_deps(lease, &[rule], &mut refs).await?;
        out.push((relation, refs));
    }
    Ok(out)
}

/// Expands the views among `roots`, transitively, up to `limit` relations.
pub(crate) async fn view_sources(
    lease: &mut Lease,
    roots: &[Oid],
    limit: usize,
) -> Result<ViewSources, CatalogError> {
    let mut seen: BTreeSet<Oid> = roots.iter().copied().collect();
    let mut found: BTreeMap<Oid, RelationFacts> = BTreeMap::new();
    let mut all = NodeRefs::default();
    let mut frontier: Vec<Oid> = roots.to_vec();
    let mut complete = true;
    while !frontier.is_empty() {
        let mut step = NodeRefs::default();
        let mut rules = Vec::new();
        for row in lease.query(VIEW_RULES, &[&frontier]).await? {
            rules.push(row.try_get::<_, Oid>(0).map_err(CatalogError::Row)?);
            step.scan(&row.try_get::<_, String>(1).map_err(CatalogError::Row)?);
        }
        rule_deps(lease, &rules, &mut step).await?;
        let new: Vec<Oid> = step
            .relations
            .iter()
            .copied()
            .filter(|oid| seen.insert(*oid))
            .collect();
        merge(&mut all, step);
        if seen.len() > limit {
            complete = false;
            break;
        }
        let facts = facts(lease, &new).await?;
        frontier = facts
            .values()
            .filter(|f| f.kind == RelKind::View)
            .map(|f| f.oid)
            .collect();
        found.extend(facts);
    }
    let evaluated = evaluate(lease, &all).await?;
    Ok(ViewSources {
        relations: found.into_values().collect(),
        volatility: evaluated.volatility,
        functions: evaluated.user_functions,
        locking: all.row_marks,
        complete,
    })
}

pub(crate) fn merge(into: &mut NodeRefs, from: NodeRefs) {
    into.functions.extend(from.functions);
    into.operators.extend(from.operators);
    into.types.extend(from.types);
    into.relations.extend(from.relations);
    into.value_function |= from.value_function;
    into.io_coercion |= from.io_coercion;
    into.next_value |= from.next_value;
    into.tablesample |= from.tablesample;
    into.row_marks |= from.row_marks;
}

pub(crate) async fn user_triggers(
    lease: &mut Lease,
    list: &[Oid],
) -> Result<Vec<UserTrigger>, CatalogError> {
    if list.is_empty() {
        return Ok(Vec::new());
    }
    let rows = lease.query(USER_TRIGGERS, &[&list]).await?;
    rows.iter()
        .map(|row| {
            Ok(UserTrigger {
                relation: row.try_get(0).map_err(CatalogError::Row)?,
                name: row.try_get(1).map_err(CatalogError::Row)?,
                function: row.try_get(2).map_err(CatalogError::Row)?,
            })
        })
        .collect()
}

/// Column defaults (and generation expressions) of `list`, scanned.
pub(crate) async fn defaults(
    lease: &mut Lease,
    list: &[Oid],
) -> Result<Vec<(Oid, NodeRefs)>, CatalogError> {
    if list.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for row in lease.query(DEFAULTS, &[&list]).await? {
        let relation: Oid = row.try_get(0).map_err(CatalogError::Row)?;
        let mut refs = NodeRefs::default();
        refs.scan(&row.try_get::<_, String>(1).map_err(CatalogError::Row)?);
        out.push((relation, refs));
    }
    Ok(out)
}

/// What evaluating some expression trees amounts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Evaluated {
    pub volatility: Volatility,
    /// `schema.name` of each non-immutable function outside pg_catalog (or `set_config`):
    /// calls that may have effects pgmemo cannot see.
    pub side_effects: Vec<String>,
    /// Functions outside pg_catalog that were looked up: a redefinition (CREATE OR
    /// REPLACE) changes the answer without changing any relation, so they are tracked.
    pub user_functions: Vec<Oid>,
}

pub(crate) async fn evaluate(
    lease: &mut Lease,
    refs: &NodeRefs,
) -> Result<Evaluated, CatalogError> {
    let mut functions = refs.functions.clone();
    if !refs.operators.is_empty() {
        let list = oids(&refs.operators);
        for row in lease.query(OPERATOR_FUNCS, &[&list]).await? {
            functions.insert(row.try_get(0).map_err(CatalogError::Row)?);
        }
    }
    if refs.io_coercion && !refs.types.is_empty() {
        // The source type of a coercion is not named in its node: every type the tree
        // mentions counts, input and output side alike.
        let list = oids(&refs.types);
        for row in lease.query(TYPE_IO_FUNCS, &[&list]).await? {
            functions.insert(row.try_get(0).map_err(CatalogError::Row)?);
            functions.insert(row.try_get(1).map_err(CatalogError::Row)?);
        }
    }
    functions.remove(&0);
    let mut volatility = Volatility::Immutable;
    if refs.value_function {
        volatility = volatility.max(Volatility::Stable);
    }
    if refs.next_value || refs.tablesample {
        volatility = volatility.max(Volatility::Volatile);
    }
    let mut side_effects = Vec::new();
    let mut user_functions = Vec::new();
    if !functions.is_empty() {
        let list = oids(&functions);
        let mut known: HashMap<Oid, Volatility> = HashMap::new();
        for row in lease.query(PROCS, &[&list]).await? {
            let oid: Oid = row.try_get(0).map_err(CatalogError::Row)?;
            let code: String = row.try_get(1).map_err(CatalogError::Row)?;
            let schema: String = row.try_get(2).map_err(CatalogError::Row)?;
            let name: String = row.try_get(3).map_err(CatalogError::Row)?;
            let v = Volatility::from_code(&code);
            if v != Volatility::Immutable && (schema != "pg_catalog" || name == "set_config") {
                side_effects.push(format!("{schema}.{name}"));
            }
            if schema != "pg_catalog" {
                user_functions.push(oid);
            }
            known.insert(oid, v);
        }
        for oid in &functions {
            volatility = volatility.max(known.get(oid).copied().unwrap_or(Volatility::Unknown));
        }
    }
    side_effects.sort();
    side_effects.dedup();
    Ok(Evaluated {
        volatility,
        side_effects,
        user_functions,
    })
}
