//! Which custom (dotted) settings a database's policies, views and user functions mention
//! by name (`current_setting('app.tenant')`, `set_config('app.tenant', ...)`): the settings
//! probe of every session reads these into its fingerprint (they never appear in
//! `pg_settings`). Found here, once per catalog generation, on a side connection, instead of
//! by every session's probe.
//!
//! Nothing here deparses (`pg_get_viewdef` and `pg_get_expr` lock and open the relations a
//! tree names: run by sessions' probes they deadlocked with a client's `DROP VIEW ...
//! CASCADE` and failed with "could not open relation with OID"). Function bodies are
//! matched as text; stored trees (view and rule actions, policy expressions, `BEGIN ATOMIC`
//! bodies) are read raw, only those that call `current_setting` or `set_config`, and every
//! string constant in them that looks like a dotted name counts: a superset, which costs a
//! setting read, never a missed name.
//!
//! Staleness: a new or changed policy, view or function changes the objects digest the
//! poller watches (`prints::OBJECTS_PRINT`), which advances the generation (this list is
//! fetched again) and makes every session probe again (`Invalidator`).

use std::collections::BTreeSet;

use super::conn::Lease;
use super::error::CatalogError;

/// Most names one database may mention; past it the list is refused (a session whose
/// fingerprint cannot hold them all is not cached).
pub const MAX_NAMES: usize = 256;

/// Longest name kept (PostgreSQL truncates identifiers to 63 bytes; a custom setting name
/// has two parts).
const MAX_NAME_LEN: usize = 128;

/// Most tree bytes read for one list.
const MAX_TREE_BYTES: i64 = 64 << 20;

/// The stored trees that call a setting function (`current_setting(text)` 2077,
/// `current_setting(text, bool)` 3294, `set_config` 2078), as rows `t`: one text for both
/// queries below, so the size check and the read cover the same trees. Only user rules
/// (OID 16384 and up, as `prints::OBJECTS_PRINT` watches): the 142 system views' trees name
/// no custom setting, and printing them as text cost ~10 ms per query, twice after every
/// DDL through pgmemo.
macro_rules! setting_trees {
    () => {
        "(SELECT r.ev_action::text AS t FROM pg_catalog.pg_rewrite r WHERE r.oid >= 16384
  UNION ALL SELECT p.polqual::text FROM pg_catalog.pg_policy p
  UNION ALL SELECT p.polwithcheck::text FROM pg_catalog.pg_policy p
  UNION ALL SELECT p.prosqlbody::text FROM pg_catalog.pg_proc p WHERE p.oid >= 16384) y
WHERE t ~ ':funcid (2077|3294|2078) '"
    };
}

/// Names in user function bodies (text), then the raw trees that call a setting function.
const NAMES_SQL: &str = concat!(
    "SELECT 'n', m[1] FROM (
  SELECT pg_catalog.regexp_matches(p.prosrc,
    '(?:current_setting|set_config)\\s*\\(\\s*''([A-Za-z_][A-Za-z0-9_$]*\\.[A-Za-z0-9_$.]+)''',
    'gi') AS m
  FROM pg_catalog.pg_proc p WHERE p.oid >= 16384) x
UNION ALL
SELECT 't', t FROM ",
    setting_trees!()
);

/// Tree bytes the list would read (checked first, so a huge catalog fails cleanly).
const TREE_BYTES_SQL: &str = concat!(
    "SELECT coalesce(sum(pg_catalog.octet_length(t)), 0)::int8 FROM ",
    setting_trees!()
);

/// A database's list, or why there is none (then no session of it is cached).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingNames {
    Known(std::sync::Arc<[String]>),
    Unusable(&'static str),
}

/// Why a list could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NamesError {
    #[error("the database mentions more than {MAX_NAMES} custom setting names")]
    TooMany,
    #[error("setting-function trees exceed {MAX_TREE_BYTES} bytes")]
    TooLarge,
}

/// Reads the list in the lease's snapshot.
pub(crate) async fn fetch(lease: &mut Lease) -> Result<SettingNames, CatalogError> {
    Ok(match list(lease).await? {
        Ok(names) => SettingNames::Known(names.into()),
        Err(NamesError::TooMany) => SettingNames::Unusable("too many custom setting names"),
        Err(NamesError::TooLarge) => SettingNames::Unusable("setting-function trees too large"),
    })
}

async fn list(lease: &mut Lease) -> Result<Result<Vec<String>, NamesError>, CatalogError> {
    let rows = lease.query(TREE_BYTES_SQL, &[]).await?;
    let bytes: i64 = match rows.first() {
        Some(r) => r.try_get(0).map_err(CatalogError::Row)?,
        None => 0,
    };
    if bytes > MAX_TREE_BYTES {
        return Ok(Err(NamesError::TooLarge));
    }
    let mut names = BTreeSet::new();
    for row in lease.query(NAMES_SQL, &[]).await? {
        let kind: String = row.try_get(0).map_err(CatalogError::Row)?;
        let text: Option<String> = row.try_get(1).map_err(CatalogError::Row)?;
        let Some(text) = text else { continue };
        if kind == "n" {
            add(&mut names, &text);
        } else {
            for constant in tree_constants(&text) {
                for candidate in decode_text(&constant) {
                    add(&mut names, &candidate);
                }
            }
        }
        if names.len() > MAX_NAMES {
            return Ok(Err(NamesError::TooMany));
        }
    }
    Ok(Ok(names.into_iter().collect()))
}

/// Adds `s` (lower-cased, as PostgreSQL folds custom setting names) if it is a dotted name.
fn add(names: &mut BTreeSet<String>, s: &str) {
    if is_dotted_name(s) {
        names.insert(s.to_ascii_lowercase());
    }
}

/// `[A-Za-z_][A-Za-z0-9_$]*\.[A-Za-z0-9_$.]+`, bounded in length.
fn is_dotted_name(s: &str) -> bool {
    if s.is_empty() || s.len() > MAX_NAME_LEN {
        return false;
    }
    let Some((head, tail)) = s.split_once('.') else {
        return false;
    };
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '$';
    head.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && head.chars().all(word)
        && !tail.is_empty()
        && tail.chars().all(|c| word(c) || c == '.')
}

/// The byte arrays of every `:constvalue N [ b b ... ]` in a node tree's text.
fn tree_constants(tree: &str) -> Vec<Vec<u8>> {
    const MARK: &str = ":constvalue ";
    let mut out = Vec::new();
    let mut rest = tree;
    while let Some(at) = rest.find(MARK) {
        rest = rest.get(at + MARK.len()..).unwrap_or_default();
        let Some(open) = rest.find('[') else { break };
        let Some(close) = rest.find(']') else { break };
        if close < open {
            continue;
        }
        let inner = rest.get(open + 1..close).unwrap_or_default();
        let bytes: Option<Vec<u8>> = inner
            .split_ascii_whitespace()
            .map(|b| b.parse::<i16>().ok().map(|v| v as u8))
            .collect();
        if let Some(bytes) = bytes {
            out.push(bytes);
        }
        rest = rest.get(close + 1..).unwrap_or_default();
    }
    out
}

/// What a constant's bytes may say as text: a varlena with a 4-byte header (either byte
/// order), with a 1-byte header, or a C string. Every reading that is valid UTF-8 is
/// returned (callers keep those that look like names: a superset is safe).
fn decode_text(bytes: &[u8]) -> Vec<String> {
    let mut candidates: Vec<&[u8]> = Vec::new();
    if let Some(head) = bytes.get(..4).and_then(|h| <[u8; 4]>::try_from(h).ok()) {
        let le = u32::from_le_bytes(head);
        let be = u32::from_be_bytes(head);
        if (le >> 2) as usize == bytes.len() || (be & 0x3fff_ffff) as usize == bytes.len() {
            candidates.push(bytes.get(4..).unwrap_or_default());
        }
    }
    if let Some(first) = bytes.first()
        && ((first & 1 == 1 && (first >> 1) as usize == bytes.len())
            || (first & 0x80 == 0x80 && (first & 0x7f) as usize == bytes.len()))
    {
        candidates.push(bytes.get(1..).unwrap_or_default());
    }
    candidates.push(bytes);
    candidates
        .into_iter()
        .filter_map(|c| {
            let c = c.split(|b| *b == 0).next().unwrap_or_default();
            std::str::from_utf8(c).ok().map(str::to_owned)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dotted_identifiers() {
        assert!(is_dotted_name("app.tenant"));
        assert!(is_dotted_name("_x.y.z$1"));
        assert!(!is_dotted_name("app"));
        assert!(!is_dotted_name("1app.x"));
        assert!(!is_dotted_name("app."));
        assert!(!is_dotted_name("a b.c"));
        assert!(!is_dotted_name(&format!("a.{}", "b".repeat(200))));
    }

    #[test]
    fn text_constants_of_a_view_tree_are_read_whatever_their_header() {
        // `current_setting('app.tenant')` in a view: a text constant with a 4-byte
        // little-endian header (length 14 << 2 = 56).
        let tree = "({QUERY :commandType 1 :targetList ({TARGETENTRY :expr {FUNCEXPR \
            :funcid 2077 :args ({CONST :consttype 25 :consttypmod -1 :constcollid 100 \
            :constlen -1 :constbyval false :constisnull false :location 30 :constvalue 14 \
            [ 56 0 0 0 97 112 112 46 116 101 110 97 110 116 ]})}})})";
        let consts = tree_constants(tree);
        assert_eq!(consts.len(), 1);
        let mut names = BTreeSet::new();
        for c in &consts {
            for t in decode_text(c) {
                add(&mut names, &t);
            }
        }
        assert!(names.contains("app.tenant"), "{names:?}");
        // A header byte that reads as a letter must not hide the name: 'D' (68) is the
        // header of a 17-byte value.
        let mut v = vec![68u8, 0, 0, 0];
        v.extend_from_slice(b"app.tenant_id");
        let read = decode_text(&v);
        assert!(read.iter().any(|t| t == "app.tenant_id"), "{read:?}");
        // A 1-byte header.
        let mut short = vec![((11u8) << 1) | 1];
        short.extend_from_slice(b"app.tenant");
        assert!(decode_text(&short).iter().any(|t| t == "app.tenant"));
    }

    #[test]
    fn malformed_trees_give_nothing_and_do_not_panic() {
        for t in [
            ":constvalue ",
            ":constvalue 3 [ 1 2",
            ":constvalue 3 ] 1 2 [",
            ":constvalue 2 [ 999999 x ]",
            ":constvalue 0 [ ]",
        ] {
            for c in tree_constants(t) {
                let _ = decode_text(&c);
            }
        }
        assert!(decode_text(&[]).iter().all(String::is_empty));
    }
}
