//! The cache-key normal form, hint extraction and statement splitting.

use std::time::Duration;

use crate::sql::normalize::split_statements;
use crate::sql::{hints, normalize_for_key};

fn norm(sql: &[u8]) -> Vec<u8> {
    normalize_for_key(sql)
}

fn same_key(a: &str, b: &str) {
    assert_eq!(norm(a.as_bytes()), norm(b.as_bytes()), "{a:?} vs {b:?}");
}

fn different_key(a: &str, b: &str) {
    assert_ne!(norm(a.as_bytes()), norm(b.as_bytes()), "{a:?} vs {b:?}");
}

#[test]
fn comments_and_whitespace_collapse() {
    assert_eq!(
        norm(b"  SELECT  /* c */ a,\n\t b -- x\n FROM t  "),
        b"SELECT a, b FROM t"
    );
    assert_eq!(
        norm(b"SELECT/**/1"),
        b"SELECT 1",
        "a comment separates tokens: never merged"
    );
    assert_eq!(
        norm(b"SELECT /* a /* nested */ still comment */ 1"),
        b"SELECT 1"
    );
    assert_eq!(norm(b"SELECT 1 -- to the end"), b"SELECT 1");
    assert_eq!(norm(b"a\r\n\x0cb"), b"a b");
    same_key(
        "SELECT a FROM t WHERE id = 1",
        "SELECT  a\nFROM t /* c */ WHERE\tid = 1 -- x",
    );
    different_key("SELECT a FROM t", "select a from t");
    different_key("SELECT 1", "SELECT 2");
    different_key("SELECT a - -b", "SELECT a --b");
}

#[test]
fn literals_and_quoted_identifiers_are_untouched() {
    for lit in [
        &b"SELECT '  a  --  b /* */ '"[..],
        b"SELECT \"a  b\" FROM \"t  -- u\"",
        b"SELECT $$ x  -- y $$, $q$ /* $$ */ $q$",
        b"SELECT E'it\\'s  -- x'",
        b"SELECT U&'d  \\0061', B'0  1', X'f  f', N'n  n'",
    ] {
        assert_eq!(norm(lit), lit, "{}", String::from_utf8_lossy(lit));
    }
    different_key("SELECT 'a  b'", "SELECT 'a b'");
    different_key("SELECT E'\\'  --'", "SELECT E'\\' --'");
}

#[test]
fn hint_comments_are_kept() {
    assert_eq!(
        norm(b"SELECT /* pgmemo:nocache */ 1"),
        b"SELECT /* pgmemo:nocache */ 1"
    );
    assert_eq!(
        norm(b"-- pgmemo:ttl=5s\nSELECT  1"),
        b"-- pgmemo:ttl=5s\nSELECT 1"
    );
    different_key("SELECT 1", "SELECT /* pgmemo:nocache */ 1");
}

#[test]
fn string_continuation_is_preserved() {
    // 'a'<newline>'b' is 'ab'; 'a' 'b' is a syntax error: they must not share a key.
    different_key("SELECT 'a'\n'b'", "SELECT 'a' 'b'");
    assert_eq!(norm(b"SELECT 'a' -- c\n 'b'"), b"SELECT 'a' -- c\n 'b'");
    assert_eq!(norm(b"SELECT 'a'  FROM t"), b"SELECT 'a' FROM t");
}

#[test]
fn errors_keep_their_own_keys() {
    // An unterminated comment or literal is an error: never the key of a valid statement.
    different_key("SELECT 1 /* open", "SELECT 1");
    different_key("SELECT 'open", "SELECT 'open'");
    // PostgreSQL 15 does not treat a vertical tab as whitespace.
    different_key("SELECT\x0b1", "SELECT 1");
}

#[test]
fn bytes_that_are_not_utf8_survive() {
    assert_eq!(norm(b"SELECT '\xff'  ,\xfe  x"), b"SELECT '\xff' ,\xfe x");
}

#[test]
fn hints_are_read_from_comments_only() {
    let h = hints(b"/* pgmemo:nocache */ SELECT 1");
    assert!(
        h.nocache && h.ttl.is_none() && h.unknown.is_empty(),
        "{h:?}"
    );
    let h = hints(b"SELECT 1 -- PGMEMO:TTL=30s");
    assert_eq!((h.nocache, h.ttl), (false, Some(Duration::from_secs(30))));
    let h = hints(b"SELECT /* pgmemo:ttl=10, pgmemo:nocache */ 1");
    assert_eq!((h.nocache, h.ttl), (true, Some(Duration::from_secs(10))));
    let h = hints(b"SELECT /* pgmemo:ttl=2m*/ 1");
    assert_eq!(h.ttl, Some(Duration::from_secs(120)));
    let h = hints(b"SELECT 'pgmemo:nocache', $$ /* pgmemo:nocache */ $$");
    assert!(!h.nocache, "string literals are data");
    let h = hints(b"SELECT /* pgmemo:no-cache pgmemo:ttl=soon */ 1");
    assert_eq!(
        h.unknown,
        vec!["no-cache".to_owned(), "ttl=soon".to_owned()]
    );
    assert!(!h.nocache && h.ttl.is_none());
    let many = format!("/* {} */ SELECT 1", "pgmemo:x ".repeat(100));
    assert_eq!(
        hints(many.as_bytes()).unknown.len(),
        crate::sql::MAX_UNKNOWN_HINTS
    );
}

#[test]
fn statements_split_at_top_level_semicolons() {
    let pieces = |sql: &[u8]| -> Vec<Vec<u8>> {
        split_statements(sql)
            .into_iter()
            .map(|r| sql[r].to_vec())
            .collect()
    };
    assert_eq!(
        pieces(b"SELECT 1; SELECT 2"),
        vec![b"SELECT 1".to_vec(), b" SELECT 2".to_vec()]
    );
    assert_eq!(pieces(b"SELECT ';'; SELECT $$;$$ -- ;\n").len(), 2);
    assert_eq!(pieces(b"SELECT \"a;b\", E'\\';' /* ; */").len(), 1);
    assert_eq!(
        pieces(b"SELECT (1; 2)").len(),
        1,
        "psql does not split inside parentheses"
    );
    assert_eq!(pieces(b";;; -- nothing\n;").len(), 0);
    assert_eq!(pieces(b"SELECT 1 AS begin; SELECT 2").len(), 2);
}

#[test]
fn normal_form_is_idempotent() {
    for sql in [
        &b"  SELECT /* pgmemo:nocache */  'a'\n 'b' , $$ x $$ -- c\n"[..],
        b"-- pgmemo:ttl=1s\n SELECT 1 /* open",
        b"\n\nSELECT\t1\n",
    ] {
        let once = norm(sql);
        assert_eq!(norm(&once), once, "{}", String::from_utf8_lossy(sql));
    }
}

#[test]
fn shapes_replace_plain_numbers_only() {
    use crate::sql::shape_key;
    assert_eq!(
        shape_key(b"SELECT v FROM t WHERE id = 42 AND x > 1.5 -- 7").as_deref(),
        Some(&b"SELECT v FROM t WHERE id = ? AND x > ? -- 7"[..])
    );
    // Strings, identifiers, parameters and hints keep their numbers.
    assert_eq!(shape_key(b"SELECT '42', t1.c FROM t1 WHERE a = $1"), None);
    assert_eq!(
        shape_key(b"/* pgmemo:ttl=30 */ SELECT 1").as_deref(),
        Some(&b"/* pgmemo:ttl=30 */ SELECT ?"[..])
    );
    // Two texts that differ only in numbers share a shape; others do not.
    assert_eq!(shape_key(b"SELECT 1"), shape_key(b"SELECT 22"));
    assert_ne!(shape_key(b"SELECT 1"), shape_key(b"SELECT -1"));
}

#[test]
fn log_shapes_carry_no_literal_and_stay_short() {
    use crate::sql::log_shape;
    assert_eq!(
        log_shape(
            b"SELECT v  FROM t /* secret 7 */ WHERE name = 'alice' AND id = 42\n AND x = $$pw$$ AND y = E'\\x'",
            200
        ),
        "SELECT v FROM t WHERE name = ? AND id = ? AND x = ? AND y = ?"
    );
    // Parameters and identifiers stay: they are the shape, not values.
    assert_eq!(
        log_shape(b"SELECT \"a b\", t1.c FROM t1 WHERE a = $1", 200),
        "SELECT \"a b\", t1.c FROM t1 WHERE a = $1"
    );
    assert_eq!(log_shape(b"SELECT 1 /* open 'x", 200), "SELECT ? ?");
    let long = log_shape("SELECT ééééé FROM t".as_bytes(), 9);
    assert_eq!(long, "SELECT é…");
    assert!(log_shape(&b"x ".repeat(10_000), 64).len() <= 64 + '…'.len_utf8());
}
