//! Name lookup as PostgreSQL does it for one session: relations (`RangeVarGetRelid`) and
//! functions (`FuncnameGetCandidates`) under the session's search_path and current role,
//! from a side connection that cannot see the session's own temporary schema.

use std::collections::{HashMap, HashSet};

use tokio_postgres::Row;

use super::conn::Lease;
use super::error::CatalogError;
use super::search_path::{self, SchemaInfo, Slot};
use super::track::Want;
use super::types::Persistence;
use super::types::{
    FuncArgs, FuncFacts, FuncRef, Oid, RelKind, RelName, RelationFacts, Resolved, Volatility,
};

const ROLE: &str = "SELECT oid FROM pg_roles WHERE rolname = $1::name";

const NAMESPACES: &str = "\
SELECT n.oid, n.nspname::text, has_schema_privilege($2::oid, n.oid, 'USAGE')
FROM pg_namespace n WHERE n.nspname = ANY($1::name[])";

/// Columns 0..8 are the facts (see `facts_from_row`); 8 is the namespace OID.
const RELATIONS_BY_NAME: &str = "\
SELECT c.oid, n.nspname::text, c.relname::text, c.relkind::text, c.relpersistence::text,
  c.relrowsecurity, c.relforcerowsecurity, c.relispartition, c.relnamespace
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname = ANY($1::name[]) AND c.relnamespace = ANY($2::oid[])";

/// `pg_catalog`'s fixed OID (`PG_CATALOG_NAMESPACE` in PostgreSQL's headers).
const PG_CATALOG_NAMESPACE: Oid = 11;

const FUNCTIONS_BY_NAME: &str = "\
SELECT p.oid, p.proname::text, p.pronamespace, p.pronargs, p.pronargdefaults,
  p.provariadic <> 0, p.provolatile::text, string_to_array(p.proargtypes::text, ' ')::oid[]
FROM pg_proc p WHERE p.proname = ANY($1::name[]) AND p.pronamespace = ANY($2::oid[])
ORDER BY p.oid";

/// Reads the eight fact columns starting at `at`: oid, schema, name, kind, persistence,
/// rls enabled, rls forced, is partition.
pub(crate) fn facts_from_row(row: &Row, at: usize) -> Result<RelationFacts, CatalogError> {
    let get_str = |i: usize| row.try_get::<_, String>(at + i).map_err(CatalogError::Row);
    let get_bool = |i: usize| row.try_get::<_, bool>(at + i).map_err(CatalogError::Row);
    let schema = get_str(1)?;
    Ok(RelationFacts {
        oid: row.try_get(at).map_err(CatalogError::Row)?,
        system: RelationFacts::is_system_schema(&schema),
        schema,
        name: get_str(2)?,
        kind: RelKind::from_code(&get_str(3)?),
        persistence: Persistence::from_code(&get_str(4)?),
        rls_enabled: get_bool(5)?,
        rls_forced: get_bool(6)?,
        is_partition: get_bool(7)?,
    })
}

/// The session's schemas as the side connection sees them, keyed by name.
async fn schemas(
    lease: &mut Lease,
    names: &[String],
    current_user: &str,
) -> Result<HashMap<String, SchemaInfo>, CatalogError> {
    let user = search_path::truncate(current_user);
    let role: Oid = match lease.query(ROLE, &[&user]).await?.first() {
        Some(row) => row.try_get(0).map_err(CatalogError::Row)?,
        None => return Err(CatalogError::UnknownRole(current_user.to_owned())),
    };
    let mut out = HashMap::new();
    for row in lease.query(NAMESPACES, &[&names, &role]).await? {
        let oid: Oid = row.try_get(0).map_err(CatalogError::Row)?;
        let name: String = row.try_get(1).map_err(CatalogError::Row)?;
        let usage: Option<bool> = row.try_get(2).map_err(CatalogError::Row)?;
        out.insert(
            name,
            SchemaInfo {
                oid,
                usage: usage.unwrap_or(false),
            },
        );
    }
    Ok(out)
}

/// Where a name is looked up: the path order, or one schema when qualified.
enum Scope {
    Path,
    Schema(Oid),
    /// Qualified with `pg_temp` (the session's temporary schema).
    Temp,
    /// Qualified with a schema that does not exist.
    Nowhere,
}

fn scope(schema: Option<&str>, known: &HashMap<String, SchemaInfo>) -> Scope {
    match schema.map(search_path::truncate) {
        None => Scope::Path,
        Some("pg_temp") => Scope::Temp,
        Some(name) => match known.get(name) {
            Some(info) => Scope::Schema(info.oid),
            None => Scope::Nowhere,
        },
    }
}

fn qualified_schemas<'a>(schemas: impl Iterator<Item = Option<&'a str>>) -> Vec<String> {
    schemas
        .flatten()
        .map(|s| search_path::truncate(s).to_owned())
        .collect()
}

/// Resolves relation names; also says what must be tracked (every relation found).
pub(crate) async fn relations(
    lease: &mut Lease,
    names: &[RelName],
    search_path: &str,
    current_user: &str,
) -> Result<(Vec<Resolved>, Want), CatalogError> {
    let entries = search_path::parse(search_path)?;
    let mut wanted = search_path::schema_names(&entries, current_user);
    wanted.extend(qualified_schemas(names.iter().map(|n| n.schema.as_deref())));
    let known = schemas(lease, &wanted, current_user).await?;
    let order = search_path::effective(&entries, current_user, &known);

    let rel_names: Vec<String> = names
        .iter()
        .map(|n| search_path::truncate(&n.name).to_owned())
        .collect();
    let namespaces: Vec<Oid> = known.values().map(|info| info.oid).collect();
    let mut found: HashMap<(String, Oid), RelationFacts> = HashMap::new();
    for row in lease
        .query(RELATIONS_BY_NAME, &[&rel_names, &namespaces])
        .await?
    {
        let facts = facts_from_row(&row, 0)?;
        let namespace: Oid = row.try_get(8).map_err(CatalogError::Row)?;
        found.insert((facts.name.clone(), namespace), facts);
    }

    let mut want = Want::default();
    let mut out = Vec::with_capacity(names.len());
    for (name, rel_name) in names.iter().zip(&rel_names) {
        let lookup = |ns: Oid| found.get(&(rel_name.clone(), ns)).cloned();
        let scope = scope(name.schema.as_deref(), &known);
        let in_session_temp = matches!(scope, Scope::Temp);
        let (relation, temp_shadow) = match scope {
            Scope::Temp => (None, true),
            Scope::Nowhere => (None, false),
            Scope::Schema(ns) => (lookup(ns), false),
            Scope::Path => {
                let mut temp_before = false;
                let mut hit = None;
                for slot in &order {
                    match slot {
                        Slot::Temp => temp_before = true,
                        Slot::Namespace(ns) => {
                            if let Some(facts) = lookup(*ns) {
                                hit = Some(facts);
                                break;
                            }
                        }
                    }
                }
                (hit, temp_before)
            }
        };
        // The name is tracked even when nothing carries it yet, so creating it (or a
        // relation that shadows the one found) shows up in the next poll.
        if !in_session_temp {
            want.rel_names.push(rel_name.clone());
        }
        if let Some(facts) = &relation {
            // The session's temporary relations come and go with it: never tracked.
            if facts.persistence != Persistence::Temporary {
                want.relations.push(facts.oid);
            }
        }
        out.push(Resolved {
            name: name.clone(),
            relation,
            temp_shadow,
        });
    }
    Ok((out, want))
}

struct Candidate {
    oid: Oid,
    name: String,
    namespace: Oid,
    nargs: usize,
    defaults: usize,
    variadic: bool,
    volatility: Volatility,
    arg_types: Vec<Oid>,
}

impl Candidate {
    fn from_row(row: &Row) -> Result<Self, CatalogError> {
        let e = CatalogError::Row;
        let nargs: i16 = row.try_get(3).map_err(e)?;
        let defaults: i16 = row.try_get(4).map_err(e)?;
        Ok(Self {
            oid: row.try_get(0).map_err(e)?,
            name: row.try_get(1).map_err(e)?,
            namespace: row.try_get(2).map_err(e)?,
            nargs: usize::try_from(nargs).unwrap_or(0),
            defaults: usize::try_from(defaults).unwrap_or(0),
            variadic: row.try_get(5).map_err(e)?,
            volatility: Volatility::from_code(&row.try_get::<_, String>(6).map_err(e)?),
            arg_types: row.try_get(7).map_err(e)?,
        })
    }
}

/// Whether a call with `given` arguments can reach a function (FuncnameGetCandidates:
/// exact count, VARIADIC with at least one element, or trailing defaults).
pub(crate) fn arity_matches(given: usize, nargs: usize, defaults: usize, variadic: bool) -> bool {
    given == nargs || (variadic && given >= nargs) || (given < nargs && given + defaults >= nargs)
}

/// The volatility of each call; also says what must be tracked (the candidates counted and
/// their names, so a new overload or a redefinition shows up in the poller).
pub(crate) async fn functions(
    lease: &mut Lease,
    funcs: &[FuncRef],
    search_path: &str,
    current_user: &str,
) -> Result<(Vec<FuncFacts>, Want), CatalogError> {
    let entries = search_path::parse(search_path)?;
    let mut wanted = search_path::schema_names(&entries, current_user);
    wanted.extend(qualified_schemas(funcs.iter().map(|f| f.schema.as_deref())));
    let known = schemas(lease, &wanted, current_user).await?;
    let path = search_path::function_order(&search_path::effective(&entries, current_user, &known));

    let names: Vec<String> = funcs
        .iter()
        .map(|f| search_path::truncate(&f.name).to_owned())
        .collect();
    let namespaces: Vec<Oid> = known.values().map(|info| info.oid).collect();
    let mut by_name: HashMap<String, Vec<Candidate>> = HashMap::new();
    for row in lease
        .query(FUNCTIONS_BY_NAME, &[&names, &namespaces])
        .await?
    {
        let candidate = Candidate::from_row(&row)?;
        by_name
            .entry(candidate.name.clone())
            .or_default()
            .push(candidate);
    }

    let mut want = Want::default();
    let mut out = Vec::with_capacity(funcs.len());
    for (func, name) in funcs.iter().zip(&names) {
        let search: Vec<Oid> = match scope(func.schema.as_deref(), &known) {
            Scope::Path => path.clone(),
            Scope::Schema(ns) => vec![ns],
            Scope::Temp | Scope::Nowhere => Vec::new(),
        };
        let all = by_name.get(name).map(Vec::as_slice).unwrap_or(&[]);
        // An identical signature later in the path is hidden by the earlier one.
        let mut signatures = HashSet::new();
        let mut visible: Vec<&Candidate> = Vec::new();
        for ns in &search {
            for c in all.iter().filter(|c| c.namespace == *ns) {
                if signatures.insert(c.arg_types.clone()) {
                    visible.push(c);
                }
            }
        }
        let exact = match &func.args {
            FuncArgs::Types(types) => visible.iter().find(|c| &c.arg_types == types),
            _ => None,
        };
        let counted: Vec<&Candidate> = match (exact, &func.args) {
            (Some(c), _) => vec![*c],
            (None, FuncArgs::Any) => visible,
            (None, FuncArgs::Count(n)) => visible
                .into_iter()
                .filter(|c| arity_matches(*n, c.nargs, c.defaults, c.variadic))
                .collect(),
            (None, FuncArgs::Types(types)) => visible
                .into_iter()
                .filter(|c| arity_matches(types.len(), c.nargs, c.defaults, c.variadic))
                .collect(),
        };
        let worst = counted.iter().map(|c| c.volatility).max();
        // Tracked even when unknown, so creating the function shows up in the next poll.
        want.func_names.push(name.clone());
        want.functions.extend(counted.iter().map(|c| c.oid));
        out.push(FuncFacts {
            volatility: worst.unwrap_or(Volatility::Unknown),
            user_overloads: counted
                .iter()
                .filter(|c| c.namespace != PG_CATALOG_NAMESPACE)
                .map(|c| c.oid)
                .collect(),
            // Unknown functions count as user-defined: nothing says they are harmless.
            user_defined: counted.is_empty()
                || counted.iter().any(|c| c.namespace != PG_CATALOG_NAMESPACE),
        });
    }
    Ok((out, want))
}

#[cfg(test)]
mod tests {
    use super::arity_matches;

    #[test]
    fn arity_follows_func_candidates() {
        assert!(arity_matches(2, 2, 0, false));
        assert!(!arity_matches(1, 2, 0, false));
        assert!(!arity_matches(3, 2, 0, false));
        // Trailing defaults.
        assert!(arity_matches(1, 3, 2, false));
        assert!(!arity_matches(0, 3, 2, false));
        // VARIADIC needs at least one element (or defaults).
        assert!(arity_matches(5, 1, 0, true));
        assert!(arity_matches(1, 1, 0, true));
        assert!(!arity_matches(0, 1, 0, true));
        assert!(arity_matches(0, 1, 1, true));
    }
}
