//! What the catalog can say about what a STABLE user function reads: its language and body
//! text, the search_path it sets for itself, and for a `BEGIN ATOMIC` body (PostgreSQL 14+)
//! the relations and functions `pg_depend` records it as referencing. The body text is
//! analysed by the caller (this module does no SQL parsing).

use super::conn::Lease;
use super::error::CatalogError;
use super::track::Want;
use super::types::{BodySource, FuncBody, Oid, Volatility};

/// Longest body text kept for analysis: bodies are memoised with the catalog's answers, so
/// their size is bounded; a longer `LANGUAGE sql` body counts as one pgmemo cannot read.
pub(crate) const MAX_BODY_BYTES: usize = 16 * 1024;

/// `server_version_num` from which `pg_proc.prosqlbody` (SQL-standard bodies) exists.
const SQL_BODY_VERSION: i32 = 140_000;

const SERVER_VERSION: &str = "SELECT current_setting('server_version_num')::int4";

/// Columns: oid, `schema.name`, language, volatility, body text, atomic body?, the
/// `search_path=...` entry of proconfig, referenced relations, referenced functions outside
/// pg_catalog. `pg_depend` lists what an atomic body references (it is bound at
/// creation, so the session's search_path does not matter).
const BODIES_14: &str = "\
SELECT p.oid, n.nspname::text || '.' || p.proname::text, l.lanname::text, p.provolatile::text,
  p.prosrc, p.prosqlbody IS NOT NULL,
  (SELECT c FROM unnest(p.proconfig) c WHERE c LIKE 'search\\_path=%' LIMIT 1),
  ARRAY(SELECT DISTINCT d.refobjid FROM pg_depend d
        WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
          AND d.refclassid = 'pg_class'::regclass)::oid[],
  ARRAY(SELECT DISTINCT q.oid FROM pg_depend d JOIN pg_proc q ON q.oid = d.refobjid
        WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
          AND d.refclassid = 'pg_proc'::regclass
          AND q.pronamespace <> 'pg_catalog'::regnamespace)::oid[]
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
  JOIN pg_language l ON l.oid = p.prolang
WHERE p.oid = ANY($1::oid[]) ORDER BY p.oid";

/// The same before PostgreSQL 14: every body is text.
const BODIES_OLD: &str = "\
SELECT p.oid, n.nspname::text || '.' || p.proname::text, l.lanname::text, p.provolatile::text,
  p.prosrc, false,
  (SELECT c FROM unnest(p.proconfig) c WHERE c LIKE 'search\\_path=%' LIMIT 1),
  '{}'::oid[], '{}'::oid[]
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
  JOIN pg_language l ON l.oid = p.prolang
WHERE p.oid = ANY($1::oid[]) ORDER BY p.oid";

/// The bodies of the functions that exist among `oids`, in OID order; tracks them (a
/// redefinition changes what they read).
pub(crate) async fn bodies(
    lease: &mut Lease,
    oids: &[Oid],
) -> Result<(Vec<FuncBody>, Want), CatalogError> {
    let version: i32 = match lease.query(SERVER_VERSION, &[]).await?.first() {
        Some(row) => row.try_get(0).map_err(CatalogError::Row)?,
        None => 0,
    };
    let query = if version >= SQL_BODY_VERSION {
        BODIES_14
    } else {
        BODIES_OLD
    };
    let oids = oids.to_vec();
    let mut out = Vec::new();
    for row in lease.query(query, &[&oids]).await? {
        out.push(body_from_row(&row)?);
    }
    let want = Want {
        functions: out.iter().map(|b| b.oid).collect(),
        ..Want::default()
    };
    Ok((out, want))
}

fn body_from_row(row: &tokio_postgres::Row) -> Result<FuncBody, CatalogError> {
    let e = CatalogError::Row;
    let language: String = row.try_get(2).map_err(e)?;
    let atomic: bool = row.try_get(5).map_err(e)?;
    let source = if atomic {
        BodySource::Atomic {
            relations: row.try_get(7).map_err(e)?,
            functions: row.try_get(8).map_err(e)?,
        }
    } else if language == "sql" {
        let text: String = row.try_get(4).map_err(e)?;
        let config: Option<String> = row.try_get(6).map_err(e)?;
        if text.len() > MAX_BODY_BYTES {
            BodySource::Opaque { language }
        } else {
            BodySource::SqlText {
                text,
                search_path: config.and_then(|c| c.strip_prefix("search_path=").map(str::to_owned)),
            }
        }
    } else {
        BodySource::Opaque { language }
    };
    Ok(FuncBody {
        oid: row.try_get(0).map_err(e)?,
        name: row.try_get(1).map_err(e)?,
        volatility: Volatility::from_code(&row.try_get::<_, String>(3).map_err(e)?),
        source,
    })
}
