//! Statements that need a database free of other connections (PostgreSQL refuses them while
//! any other backend is connected to it, or an active logical replication slot uses it):
//! `DROP DATABASE [IF EXISTS] x [[WITH] (FORCE)]`, `ALTER DATABASE x RENAME TO y`,
//! `ALTER DATABASE x SET TABLESPACE t`, and `CREATE DATABASE y [[WITH] TEMPLATE [=] x]`
//! (`template1` when no template is named). A session releases pgmemo's own side
//! connections to those databases before it forwards such a statement (see `side`).
//!
//! A byte-level check: the lexer's tokens, no parse, no I/O. A text that does not mention
//! `DATABASE` costs one case-insensitive scan.

use super::lexer::{Kind, Token, significant};
use super::normalize::split_statements;

/// PostgreSQL truncates identifiers to this many bytes (NAMEDATALEN - 1).
const MAX_IDENT: usize = 63;
/// At most this many databases are reported for one text (a client could send thousands of
/// statements; releasing is per database and each is a wait).
const MAX_NAMED: usize = 8;

/// Why a statement needs a database free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreeingKind {
    Drop,
    Rename,
    SetTablespace,
    /// The template of `CREATE DATABASE`.
    Template,
}

/// A database a statement needs free of other connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeedsFree {
    /// As PostgreSQL names it: unquoted words lower-cased (ASCII), quotes removed.
    pub name: String,
    pub kind: FreeingKind,
}

/// The databases the statements of `sql` need free, in order (none for most texts).
pub fn databases_needing_free(sql: &[u8]) -> Vec<NeedsFree> {
    if !mentions_database(sql) {
        return Vec::new();
    }
    let mut out = Vec::new();
    for range in split_statements(sql) {
        let Some(piece) = sql.get(range) else {
            continue;
        };
        if let Some(need) = statement(piece) {
            out.push(need);
            if out.len() >= MAX_NAMED {
                break;
            }
        }
    }
    out
}

/// Whether `DATABASE` appears anywhere, in any case (no allocation).
fn mentions_database(sql: &[u8]) -> bool {
    memchr::memchr2_iter(b'd', b'D', sql).any(|at| {
        sql.get(at..at + 8)
            .is_some_and(|w| w.eq_ignore_ascii_case(b"database"))
    })
}

fn statement(src: &[u8]) -> Option<NeedsFree> {
    let toks = significant(src);
    let word = |i: usize, kw: &str| toks.get(i).is_some_and(|t| t.is_word(src, kw));
    if !word(1, "database") {
        return None;
    }
    if word(0, "drop") {
        let at = if word(2, "if") && word(3, "exists") {
            4
        } else {
            2
        };
        return Some(NeedsFree {
            name: ident(src, toks.get(at)?)?,
            kind: FreeingKind::Drop,
        });
    }
    if word(0, "alter") {
        let name = ident(src, toks.get(2)?)?;
        let kind = if word(3, "rename") && word(4, "to") {
            FreeingKind::Rename
        } else if word(3, "set") && word(4, "tablespace") {
            FreeingKind::SetTablespace
        } else {
            return None;
        };
        return Some(NeedsFree { name, kind });
    }
    if word(0, "create") {
        // The options after the new name: `TEMPLATE [=] name`, anywhere among them.
        let mut i = 3;
        while let Some(t) = toks.get(i) {
            if t.is_word(src, "template") {
                let mut v = i + 1;
                if toks.get(v).is_some_and(|t| t.is_punct(src, b'=')) {
                    v += 1;
                }
                let value = toks.get(v)?;
                let name = if value.is_word(src, "default") {
                    "template1".to_owned()
                } else {
                    ident(src, value)?
                };
                return Some(NeedsFree {
                    name,
                    kind: FreeingKind::Template,
                });
            }
            i += 1;
        }
        return Some(NeedsFree {
            name: "template1".to_owned(),
            kind: FreeingKind::Template,
        });
    }
    None
}

/// The identifier `t` names, as PostgreSQL reads it; `None` for anything else (a
/// `U&"..."` identifier is not decoded: its database is not released).
fn ident(src: &[u8], t: &Token) -> Option<String> {
    let bytes = t.bytes(src);
    let name = match t.kind {
        Kind::Word => bytes.to_ascii_lowercase(),
        Kind::QuotedIdent => {
            let inner = bytes.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
            let mut out = Vec::with_capacity(inner.len());
            let mut rest = inner;
            while let Some((&b, tail)) = rest.split_first() {
                out.push(b);
                rest = if b == b'"' {
                    tail.strip_prefix(b"\"").unwrap_or(tail)
                } else {
                    tail
                };
            }
            out
        }
        // A string literal is accepted where a name is in `CREATE DATABASE ... TEMPLATE`.
        Kind::String if bytes.first() == Some(&b'\'') => {
            let inner = bytes.strip_prefix(b"'")?.strip_suffix(b"'")?;
            inner.to_vec()
        }
        _ => return None,
    };
    let mut name = String::from_utf8(name).ok()?;
    if name.len() > MAX_IDENT {
        let mut cut = MAX_IDENT;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name.truncate(cut);
    }
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(sql: &str) -> Vec<(String, FreeingKind)> {
        databases_needing_free(sql.as_bytes())
            .into_iter()
            .map(|n| (n.name, n.kind))
            .collect()
    }

    fn one(name: &str, kind: FreeingKind) -> Vec<(String, FreeingKind)> {
        vec![(name.to_owned(), kind)]
    }

    #[test]
    fn drop_in_every_form() {
        use FreeingKind::Drop;
        assert_eq!(names("DROP DATABASE x"), one("x", Drop));
        assert_eq!(names("drop database if exists X;"), one("x", Drop));
        assert_eq!(names("DROP DATABASE \"My\"\"Db\""), one("My\"Db", Drop));
        assert_eq!(names("DROP DATABASE x WITH (FORCE)"), one("x", Drop));
        assert_eq!(
            names("/* c */ DROP -- c\n DATABASE x (force)"),
            one("x", Drop)
        );
        assert!(
            names("DROP DATABASE IF EXISTS").is_empty(),
            "a syntax error"
        );
    }

    #[test]
    fn alter_rename_and_tablespace_but_not_settings() {
        assert_eq!(
            names("ALTER DATABASE x RENAME TO y"),
            one("x", FreeingKind::Rename)
        );
        assert_eq!(
            names("alter database x set tablespace t"),
            one("x", FreeingKind::SetTablespace)
        );
        assert!(names("ALTER DATABASE x SET work_mem = '1MB'").is_empty());
        assert!(names("ALTER DATABASE x OWNER TO bob").is_empty());
    }

    #[test]
    fn create_names_its_template() {
        use FreeingKind::Template;
        assert_eq!(names("CREATE DATABASE y TEMPLATE x"), one("x", Template));
        assert_eq!(
            names("CREATE DATABASE y WITH OWNER = a TEMPLATE = \"X\" ENCODING 'UTF8'"),
            one("X", Template)
        );
        assert_eq!(names("CREATE DATABASE y"), one("template1", Template));
        assert_eq!(
            names("CREATE DATABASE y TEMPLATE DEFAULT"),
            one("template1", Template)
        );
    }

    #[test]
    fn other_statements_and_mentions_need_nothing() {
        for sql in [
            "SELECT 'DROP DATABASE x'",
            "SELECT * FROM database",
            "DROP TABLE database",
            "COMMENT ON DATABASE x IS 'y'",
            "GRANT CONNECT ON DATABASE x TO bob",
            "",
            "DROP DATABASE",
        ] {
            assert!(names(sql).is_empty(), "{sql}");
        }
    }

    #[test]
    fn several_statements_and_the_bound() {
        assert_eq!(
            names("SELECT 1; DROP DATABASE a; DROP DATABASE b"),
            vec![
                ("a".to_owned(), FreeingKind::Drop),
                ("b".to_owned(), FreeingKind::Drop)
            ]
        );
        let many = "DROP DATABASE a;".repeat(100);
        assert_eq!(names(&many).len(), MAX_NAMED);
    }

    #[test]
    fn long_names_are_truncated_like_postgresql() {
        let long = "a".repeat(100);
        let got = names(&format!("DROP DATABASE {long}"));
        assert_eq!(got.first().map(|(n, _)| n.len()), Some(MAX_IDENT));
    }
}
