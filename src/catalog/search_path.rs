//! The session's raw `search_path` value read the way PostgreSQL reads it
//! (`SplitIdentifierString`), and the effective lookup order built from it
//! (`recomputeNamespacePath`): `"$user"` becomes the current role's schema, schemas that do
//! not exist or lack USAGE are skipped, duplicates keep their first place, `pg_catalog` is
//! searched first unless listed, and the session's temporary schema first of all unless
//! `pg_temp` is listed (relations only: functions are never looked up in it unqualified).

use std::collections::HashMap;

use super::error::CatalogError;
use super::types::Oid;

/// PostgreSQL truncates identifiers to NAMEDATALEN - 1 bytes.
const MAX_IDENT_BYTES: usize = 63;

/// One element of the raw search_path list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PathEntry {
    User,
    Temp,
    Schema(String),
}

/// One place in the effective lookup order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// The session's temporary schema (invisible to side connections).
    Temp,
    Namespace(Oid),
}

/// A schema as the side connection sees it: its OID and whether the role has USAGE.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SchemaInfo {
    pub oid: Oid,
    pub usage: bool,
}

pub(crate) fn parse(raw: &str) -> Result<Vec<PathEntry>, CatalogError> {
    let err = |reason| CatalogError::SearchPath {
        value: raw.to_owned(),
        reason,
    };
    let mut out = Vec::new();
    let bytes = raw.as_bytes();
    let mut i = skip_space(bytes, 0);
    if i == bytes.len() {
        return Ok(out);
    }
    loop {
        let name = if bytes.get(i) == Some(&b'"') {
            let mut name = Vec::new();
            i += 1;
            loop {
                match bytes.get(i) {
                    None => return Err(err("unterminated quoted identifier")),
                    Some(b'"') if bytes.get(i + 1) == Some(&b'"') => {
                        name.push(b'"');
                        i += 2;
                    }
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(&b) => {
                        name.push(b);
                        i += 1;
                    }
                }
            }
            if name.is_empty() {
                return Err(err("zero-length quoted identifier"));
            }
            String::from_utf8(name).map_err(|_| err("identifier is not UTF-8"))?
        } else {
            let start = i;
            while let Some(&b) = bytes.get(i) {
                if b == b',' || b.is_ascii_whitespace() {
                    break;
                }
                i += 1;
            }
            let word = raw
                .get(start..i)
                .ok_or_else(|| err("invalid list syntax"))?;
            if word.is_empty() {
                return Err(err("invalid list syntax"));
            }
            word.to_ascii_lowercase()
        };
        out.push(match truncate(&name) {
            "$user" => PathEntry::User,
            "pg_temp" => PathEntry::Temp,
            other => PathEntry::Schema(other.to_owned()),
        });
        i = skip_space(bytes, i);
        match bytes.get(i) {
            None => return Ok(out),
            Some(b',') => i = skip_space(bytes, i + 1),
            Some(_) => return Err(err("invalid list syntax")),
        }
        if i == bytes.len() {
            return Err(err("invalid list syntax"));
        }
    }
}

fn skip_space(bytes: &[u8], mut i: usize) -> usize {
    while bytes.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

/// An identifier cut to PostgreSQL's length limit (at a character boundary).
pub(crate) fn truncate(name: &str) -> &str {
    if name.len() <= MAX_IDENT_BYTES {
        return name;
    }
    let mut end = MAX_IDENT_BYTES;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name.get(..end).unwrap_or(name)
}

/// The schema names the side connection must look up to build the order.
pub(crate) fn schema_names(entries: &[PathEntry], current_user: &str) -> Vec<String> {
    let mut names = vec!["pg_catalog".to_owned()];
    for entry in entries {
        let name = match entry {
            PathEntry::User => truncate(current_user),
            PathEntry::Schema(name) => name.as_str(),
            PathEntry::Temp => continue,
        };
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    names
}

/// The effective lookup order for relations.
pub(crate) fn effective(
    entries: &[PathEntry],
    current_user: &str,
    schemas: &HashMap<String, SchemaInfo>,
) -> Vec<Slot> {
    let mut order: Vec<Slot> = Vec::new();
    for entry in entries {
        let slot = match entry {
            PathEntry::Temp => Slot::Temp,
            PathEntry::User => match schemas.get(truncate(current_user)) {
                Some(info) if info.usage => Slot::Namespace(info.oid),
                _ => continue,
            },
            PathEntry::Schema(name) => match schemas.get(name.as_str()) {
                Some(info) if info.usage => Slot::Namespace(info.oid),
                _ => continue,
            },
        };
        if !order.contains(&slot) {
            order.push(slot);
        }
    }
    // Implicit members go in front, without a USAGE check (as PostgreSQL does).
    if let Some(catalog) = schemas.get("pg_catalog") {
        let slot = Slot::Namespace(catalog.oid);
        if !order.contains(&slot) {
            order.insert(0, slot);
        }
    }
    if !order.contains(&Slot::Temp) {
        order.insert(0, Slot::Temp);
    }
    order
}

/// The effective lookup order for functions: the relation order without the temporary
/// schema, which unqualified function lookup never searches.
pub(crate) fn function_order(order: &[Slot]) -> Vec<Oid> {
    order
        .iter()
        .filter_map(|slot| match slot {
            Slot::Namespace(oid) => Some(*oid),
            Slot::Temp => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(name: &str) -> PathEntry {
        PathEntry::Schema(name.to_owned())
    }

    #[test]
    fn parses_like_split_identifier_string() {
        assert_eq!(
            parse(r#""$user", public"#).unwrap(),
            vec![PathEntry::User, schema("public")]
        );
        assert_eq!(
            parse(r#"  Foo ,"Bar""x",  pg_temp,"pg_temp" "#).unwrap(),
            vec![
                schema("foo"),
                schema("Bar\"x"),
                PathEntry::Temp,
                PathEntry::Temp
            ]
        );
        assert_eq!(parse("").unwrap(), vec![]);
        assert_eq!(parse("   ").unwrap(), vec![]);
        assert_eq!(parse("$user").unwrap(), vec![PathEntry::User]);
        assert_eq!(
            parse(&"a".repeat(70)).unwrap(),
            vec![schema(&"a".repeat(63))]
        );
        // Like PostgreSQL, an unquoted word runs to the next comma or space.
        assert_eq!(parse("a\"B\"").unwrap(), vec![schema("a\"b\"")]);
        for bad in ["a,,b", "a,", ",a", "\"\"", "\"open", "a b", "\"a\"b"] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    fn schemas(list: &[(&str, Oid, bool)]) -> HashMap<String, SchemaInfo> {
        list.iter()
            .map(|(n, oid, usage)| {
                (
                    n.to_string(),
                    SchemaInfo {
                        oid: *oid,
                        usage: *usage,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn effective_order_follows_recompute_namespace_path() {
        let known = schemas(&[
            ("pg_catalog", 11, true),
            ("public", 2200, true),
            ("alice", 500, true),
            ("hidden", 600, false),
        ]);
        let order = |raw: &str, user: &str| effective(&parse(raw).unwrap(), user, &known);
        use Slot::{Namespace as N, Temp};
        assert_eq!(
            order(r#""$user", public"#, "alice"),
            vec![Temp, N(11), N(500), N(2200)]
        );
        assert_eq!(
            order(r#""$user", public"#, "bob"),
            vec![Temp, N(11), N(2200)]
        );
        assert_eq!(
            order("hidden, public, missing", "bob"),
            vec![Temp, N(11), N(2200)]
        );
        assert_eq!(
            order("public, pg_catalog", "bob"),
            vec![Temp, N(2200), N(11)]
        );
        assert_eq!(order("public, pg_temp", "bob"), vec![N(11), N(2200), Temp]);
        assert_eq!(order("public, public", "bob"), vec![Temp, N(11), N(2200)]);
        assert_eq!(order("", "bob"), vec![Temp, N(11)]);
        assert_eq!(
            function_order(&order("public, pg_temp", "bob")),
            vec![11, 2200]
        );
    }

    #[test]
    fn schema_names_include_catalog_and_user() {
        let entries = parse(r#""$user", public, pg_temp, public"#).unwrap();
        assert_eq!(
            schema_names(&entries, "alice"),
            vec!["pg_catalog", "alice", "public"]
        );
    }
}
