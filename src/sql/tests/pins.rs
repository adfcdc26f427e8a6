//! Row filters for row-level invalidation: which equalities a statement's top-level WHERE (or
//! VALUES) reports, and where it must report nothing.

use sqlparser::tokenizer::Span;

use super::{one, rel};
use crate::sql::pins::Numbers;
use crate::sql::{ColumnEq, KeyValue, RowFilter, RowScope, analyze, number_at};

/// The row scope of `sql` (one statement); every number in it must be the digits
/// `number_at` reads at its ordinal.
fn scope(sql: &str) -> Option<RowScope> {
    let scope = one(sql).rows.map(|b| *b);
    for value in numbers_in(scope.as_ref()) {
        if let KeyValue::Number { digits, ordinal } = value {
            assert_eq!(
                number_at(sql.as_bytes(), *ordinal),
                Some(digits.as_bytes()),
                "{sql}: ordinal {ordinal}"
            );
        }
    }
    scope
}

fn filter_values(f: &RowFilter) -> Vec<&KeyValue> {
    f.eqs
        .iter()
        .flat_map(|e| e.tuples.iter().flatten())
        .collect()
}

fn numbers_in(scope: Option<&RowScope>) -> Vec<&KeyValue> {
    let eqs = filter_values;
    match scope {
        None => Vec::new(),
        Some(RowScope::Read(filters)) => filters.iter().flat_map(eqs).collect(),
        Some(RowScope::Change { filter, .. }) => eqs(filter),
        Some(RowScope::Insert { rows, .. }) => rows.iter().flatten().flatten().collect(),
    }
}

fn n(digits: &str, ordinal: usize) -> KeyValue {
    KeyValue::Number {
        digits: digits.into(),
        ordinal,
    }
}

fn s(v: &str) -> KeyValue {
    KeyValue::String(v.into())
}

fn p(n: u16) -> KeyValue {
    KeyValue::Param(n)
}

/// One column equal to any of `values`.
fn eq(column: &str, values: Vec<KeyValue>) -> ColumnEq {
    ColumnEq {
        columns: vec![column.into()],
        tuples: values.into_iter().map(|v| vec![v]).collect(),
    }
}

fn row_eq(columns: &[&str], tuples: Vec<Vec<KeyValue>>) -> ColumnEq {
    ColumnEq {
        columns: columns.iter().map(|c| (*c).into()).collect(),
        tuples,
    }
}

fn filter(relation: &str, eqs: Vec<ColumnEq>) -> RowFilter {
    RowFilter {
        relation: rel(relation),
        eqs,
    }
}

fn read(filters: Vec<RowFilter>) -> Option<RowScope> {
    Some(RowScope::Read(filters))
}

fn read_one(relation: &str, eqs: Vec<ColumnEq>) -> Option<RowScope> {
    read(vec![filter(relation, eqs)])
}

fn change(relation: &str, eqs: Vec<ColumnEq>, assigns: &[&str]) -> Option<RowScope> {
    Some(RowScope::Change {
        filter: filter(relation, eqs),
        assigns: assigns.iter().map(|a| (*a).into()).collect(),
    })
}

#[test]
fn single_column_equalities() {
    assert_eq!(
        scope("SELECT * FROM accounts WHERE id = 5"),
        read_one("accounts", vec![eq("id", vec![n("5", 0)])])
    );
    assert_eq!(
        scope("SELECT name FROM Users WHERE Email = 'a@b.c'"),
        read_one("users", vec![eq("email", vec![s("a@b.c")])])
    );
    assert_eq!(
        scope("SELECT * FROM t WHERE id = $1"),
        read_one("t", vec![eq("id", vec![p(1)])])
    );
    assert_eq!(
        scope("SELECT * FROM t WHERE 5 = id"),
        read_one("t", vec![eq("id", vec![n("5", 0)])]),
        "reversed"
    );
    assert_eq!(
        scope("SELECT * FROM t WHERE (id) = ((42))"),
        read_one("t", vec![eq("id", vec![n("42", 0)])]),
        "parentheses"
    );
    assert_eq!(
        scope(r#"SELECT * FROM "T" WHERE "Id" = $65535"#),
        read_one("T", vec![eq("Id", vec![p(65535)])]),
        "quoted names keep their case"
    );
}

#[test]
fn the_ordinal_counts_every_plain_number_of_the_text() {
    assert_eq!(
        scope("SELECT 1, 2.5, 1e3, 0x1F FROM t WHERE k = 'a' AND id = 7 LIMIT 10"),
        read_one("t", vec![eq("k", vec![s("a")]), eq("id", vec![n("7", 2)])]),
        "1 and 2.5 count, 1e3 and 0x1F are not plain"
    );
    assert_eq!(
        scope("SELECT 'é', 1 -- 7\nFROM t /* 7 */\r\nWHERE\tid = 7"),
        read_one("t", vec![eq("id", vec![n("7", 1)])]),
        "comments hold no tokens; positions survive multi-byte characters and newlines"
    );
    assert_eq!(
        scope("SELECT * FROM ONLY t WHERE id = 00012"),
        read_one("t", vec![eq("id", vec![n("00012", 0)])]),
        "the ONLY rewrite keeps numbers in place; digits as written"
    );
}

#[test]
fn in_lists() {
    assert_eq!(
        scope("SELECT * FROM t WHERE id IN (1, 2, 3)"),
        read_one("t", vec![eq("id", vec![n("1", 0), n("2", 1), n("3", 2)])])
    );
    assert_eq!(
        scope("SELECT * FROM t WHERE id IN ($1, $2)"),
        read_one("t", vec![eq("id", vec![p(1), p(2)])])
    );
    assert_eq!(
        scope("SELECT * FROM t WHERE id IN (7, 7)"),
        read_one("t", vec![eq("id", vec![n("7", 0), n("7", 1)])]),
        "repeated digits are told apart by position"
    );
    let list = |k: usize| {
        (1..=k)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let sixty_four = scope(&format!("SELECT * FROM t WHERE id IN ({})", list(64)));
    let expected: Vec<KeyValue> = (1..=64).map(|i| n(&i.to_string(), i - 1)).collect();
    assert_eq!(sixty_four, read_one("t", vec![eq("id", expected)]));
    assert_eq!(
        scope(&format!("SELECT * FROM t WHERE id IN ({})", list(65))),
        None,
        "over 64 items"
    );
    assert_eq!(scope("SELECT * FROM t WHERE id NOT IN (1, 2)"), None);
    assert_eq!(scope("SELECT * FROM t WHERE id IN (1, NULL)"), None);
    assert_eq!(scope("SELECT * FROM t WHERE id IN (SELECT 1)"), None);
    assert_eq!(scope("SELECT * FROM t WHERE id = ANY($1)"), None);
}

#[test]
fn row_comparisons() {
    assert_eq!(
        scope("SELECT * FROM t WHERE (a, b) = ($1, $2)"),
        read_one("t", vec![row_eq(&["a", "b"], vec![vec![p(1), p(2)]])])
    );
    assert_eq!(
        scope("SELECT * FROM t WHERE ($2, 'x') = (b, a)"),
        read_one("t", vec![row_eq(&["b", "a"], vec![vec![p(2), s("x")]])])
    );
    assert_eq!(
        scope("SELECT * FROM t WHERE (a, b) IN ((1, 'x'), (2, 'y'))"),
        read_one(
            "t",
            vec![row_eq(
                &["a", "b"],
                vec![vec![n("1", 0), s("x")], vec![n("2", 1), s("y")]]
            )]
        )
    );
    assert_eq!(scope("SELECT * FROM t WHERE (a, a) = (1, 2)"), None);
    assert_eq!(scope("SELECT * FROM t WHERE (a, b) = (1, 2, 3)"), None);
    assert_eq!(scope("SELECT * FROM t WHERE (a, b) IN ((1, 2), (3))"), None);
    assert_eq!(scope("SELECT * FROM t WHERE ROW(a, b) = ROW(1, 2)"), None);
    assert_eq!(
        scope("SELECT * FROM t JOIN u ON true WHERE (t.a, u.b) = (1, 2)"),
        None,
        "one relation per comparison"
    );
}

#[test]
fn qualified_columns() {
    assert_eq!(
        scope("SELECT * FROM t AS x WHERE x.id = 7"),
        read_one("t", vec![eq("id", vec![n("7", 0)])])
    );
    assert_eq!(
        scope("SELECT * FROM public.t WHERE t.id = 7 AND T.k = 'a'"),
        read_one(
            "public.t",
            vec![eq("id", vec![n("7", 0)]), eq("k", vec![s("a")])]
        )
    );
    assert_eq!(
        scope("SELECT * FROM t x WHERE t.id = 7"),
        None,
        "an alias hides the table's name"
    );
    assert_eq!(
        scope("SELECT * FROM public.t WHERE public.t.id = 7"),
        None,
        "schema-qualified columns"
    );
    assert_eq!(
        scope("SELECT * FROM t AS x(a, b) WHERE x.a = 1"),
        None,
        "column aliases rename the columns"
    );
}

#[test]
fn unqualified_columns_need_a_single_table() {
    assert_eq!(
        scope("SELECT * FROM a JOIN b ON a.id = b.a_id WHERE id = 1"),
        None
    );
    assert_eq!(scope("SELECT * FROM a, b WHERE id = 1"), None);
    assert_eq!(
        scope("SELECT * FROM t, (SELECT 1 AS one) s WHERE id = 1"),
        None
    );
    assert_eq!(scope("SELECT * FROM t WHERE current_user = 'x'"), None);
}

#[test]
fn joins_pin_each_side_by_qualified_equalities() {
    assert_eq!(
        scope("SELECT * FROM a JOIN b ON b.a_id = a.id WHERE a.id = 1 AND b.id = $1"),
        read(vec![
            filter("a", vec![eq("id", vec![n("1", 0)])]),
            filter("b", vec![eq("id", vec![p(1)])]),
        ])
    );
    assert_eq!(
        scope("SELECT * FROM a LEFT JOIN b ON b.a_id = a.id WHERE b.id = 2"),
        read_one("b", vec![eq("id", vec![n("2", 0)])]),
        "any join type"
    );
    assert_eq!(
        scope("SELECT * FROM t, LATERAL (SELECT t.id) s WHERE t.id = 3"),
        read_one("t", vec![eq("id", vec![n("3", 0)])]),
        "a LATERAL subquery is not a relation"
    );
}

#[test]
fn a_relation_named_twice_is_not_pinned() {
    assert_eq!(
        scope(
            "SELECT * FROM t t1 JOIN t t2 ON t1.parent = t2.id JOIN u ON u.id = t1.u \
             WHERE t1.id = 1 AND u.id = 3"
        ),
        read_one("u", vec![eq("id", vec![n("3", 1)])]),
        "self-join"
    );
    assert_eq!(
        scope("SELECT * FROM t WHERE id = 1 AND x IN (SELECT x FROM t WHERE y = 2)"),
        None
    );
    assert_eq!(
        scope("SELECT (SELECT count(*) FROM t), * FROM t WHERE id = 1"),
        None
    );
    assert_eq!(
        scope("SELECT * FROM t JOIN public.t u ON u.id = t.id WHERE t.id = 1"),
        None,
        "t and public.t may be one table"
    );
}

#[test]
fn only_a_plain_select_reads_rows() {
    assert_eq!(
        scope("WITH c AS (SELECT 1) SELECT * FROM t WHERE id = 1"),
        None
    );
    assert_eq!(
        scope("SELECT * FROM t WHERE id = 1 UNION SELECT * FROM u WHERE id = 2"),
        None
    );
    assert_eq!(scope("VALUES (1)"), None);
    assert_eq!(scope("SELECT * FROM t"), None);
    assert_eq!(scope("SELECT 1 WHERE 1 = 1"), None);
    assert_eq!(
        scope("SELECT * FROM generate_series(1, 3) g WHERE g = 1"),
        None
    );
    assert_eq!(
        scope("SELECT * FROM t WHERE id = 1 FOR UPDATE"),
        read_one("t", vec![eq("id", vec![n("1", 0)])]),
        "a read that is not cacheable still says which rows"
    );
    assert_eq!(scope("SELECT * INTO t2 FROM t WHERE id = 1"), None);
    assert_eq!(one("EXPLAIN SELECT * FROM t WHERE id = 1").rows, None);
    assert_eq!(one("PREPARE p AS SELECT * FROM t WHERE id = 1").rows, None);
    assert_eq!(one("SHOW work_mem").rows, None);
}

#[test]
fn only_plain_conjuncts_count() {
    assert_eq!(scope("SELECT * FROM t WHERE id = 1 OR id = 2"), None);
    assert_eq!(
        scope("SELECT * FROM t WHERE (id = 1 OR id = 2) AND (k = 3 AND (j = 4))"),
        read_one(
            "t",
            vec![eq("k", vec![n("3", 2)]), eq("j", vec![n("4", 3)])]
        )
    );
    assert_eq!(scope("SELECT * FROM t WHERE NOT id = 1"), None);
    assert_eq!(scope("SELECT * FROM t WHERE id <> 1"), None);
    assert_eq!(scope("SELECT * FROM t WHERE id = $1::int"), None);
    assert_eq!(scope("SELECT * FROM t WHERE id = CAST($1 AS int)"), None);
    assert_eq!(scope("SELECT * FROM t WHERE id = -5"), None);
    assert_eq!(scope("SELECT * FROM t WHERE id = 5.0"), None);
    assert_eq!(scope("SELECT * FROM t WHERE id = 1e3"), None);
    assert_eq!(scope("SELECT * FROM t WHERE id = 1_000"), None);
    assert_eq!(scope("SELECT * FROM t WHERE id = NULL"), None);
    assert_eq!(scope("SELECT * FROM t WHERE id = other"), None);
    assert_eq!(scope("SELECT * FROM t WHERE id = 1 + 1"), None);
    assert_eq!(scope("SELECT * FROM t WHERE id = $0"), None);
    assert_eq!(scope("SELECT * FROM t WHERE id = $65536"), None);
    assert_eq!(scope("SELECT * FROM t WHERE k = 'a' COLLATE \"C\""), None);
    assert_eq!(
        scope("SELECT * FROM t WHERE id = 1 AND id = 2"),
        read_one(
            "t",
            vec![eq("id", vec![n("1", 0)]), eq("id", vec![n("2", 1)])]
        ),
        "both are reported; the planner intersects"
    );
}

#[test]
fn string_literals() {
    assert_eq!(
        scope(r"SELECT * FROM t WHERE k = 'it''s' AND j = 'a\b'"),
        read_one(
            "t",
            vec![eq("k", vec![s("it's")]), eq("j", vec![s(r"a\b")])]
        ),
        "'' unescaped, backslash literal (standard_conforming_strings)"
    );
    assert_eq!(
        scope(r"SELECT * FROM t WHERE k = E'a\nb' AND id = 1"),
        read_one("t", vec![eq("id", vec![n("1", 0)])]),
        "no E'' string"
    );
    assert_eq!(
        scope("SELECT * FROM t WHERE k = U&'a' AND j = N'b' AND i = $$c$$"),
        None
    );
    assert_eq!(scope("SELECT * FROM t WHERE k = text 'a'"), None);
}

#[test]
fn updates() {
    assert_eq!(
        scope("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 1234"),
        change(
            "pgbench_accounts",
            vec![eq("aid", vec![n("1234", 1)])],
            &["abalance"]
        )
    );
    assert_eq!(
        scope("UPDATE t SET x = 1 WHERE id = 1"),
        change("t", vec![eq("id", vec![n("1", 1)])], &["x"]),
        "equal digits told apart by position"
    );
    assert_eq!(
        scope("UPDATE t SET id = 2, (a, B) = (1, 2), x = 3 WHERE id = 1 RETURNING *"),
        change("t", vec![eq("id", vec![n("1", 4)])], &["id", "a", "b", "x"]),
        "the key column among the assigned ones"
    );
    assert_eq!(
        scope("UPDATE ONLY s.t AS a SET x = $1 WHERE a.id = $2 AND (a.k, j) = ('q', 9)"),
        change(
            "s.t",
            vec![
                eq("id", vec![p(2)]),
                row_eq(&["k", "j"], vec![vec![s("q"), n("9", 0)]])
            ],
            &["x"]
        )
    );
    assert_eq!(
        scope("UPDATE t SET x = 1"),
        change("t", vec![], &["x"]),
        "no WHERE: every row"
    );
    assert_eq!(
        scope("UPDATE t SET x = 1 WHERE id = 1 OR id = 2"),
        change("t", vec![], &["x"])
    );
    assert_eq!(
        scope("UPDATE t SET x.y = 1 WHERE id = 2"),
        change("t", vec![eq("id", vec![n("2", 1)])], &["x", "y"]),
        "a field of composite column x: every part listed"
    );
    assert_eq!(
        scope("UPDATE t SET x = u.x FROM u WHERE t.id = u.id AND t.id = 1"),
        None
    );
    assert_eq!(
        scope("WITH c AS (SELECT 1) UPDATE t SET x = 1 WHERE id = 1"),
        None
    );
}

#[test]
fn deletes() {
    assert_eq!(
        scope("DELETE FROM t WHERE id = 9 RETURNING id"),
        change("t", vec![eq("id", vec![n("9", 0)])], &[])
    );
    assert_eq!(
        scope("DELETE FROM t AS x WHERE x.id IN ($1, $2)"),
        change("t", vec![eq("id", vec![p(1), p(2)])], &[])
    );
    assert_eq!(scope("DELETE FROM t"), change("t", vec![], &[]));
    assert_eq!(
        scope("DELETE FROM t USING u WHERE t.id = u.id AND t.id = 1"),
        None
    );
    assert_eq!(
        scope("WITH c AS (SELECT 1) DELETE FROM t WHERE id = 1"),
        None
    );
}

#[test]
fn where_current_of_pins_nothing() {
    let info = one("DELETE FROM t WHERE CURRENT OF c");
    assert!(
        info.rows.as_deref().is_none_or(|r| *r
            == RowScope::Change {
                filter: filter("t", vec![]),
                assigns: vec![]
            }),
        "{info:?}"
    );
    let info = one("UPDATE t SET x = 1 WHERE CURRENT OF c");
    assert!(
        info.rows.as_deref().is_none_or(|r| *r
            == RowScope::Change {
                filter: filter("t", vec![]),
                assigns: vec!["x".into()]
            }),
        "{info:?}"
    );
}

#[test]
fn inserts() {
    assert_eq!(
        scope("INSERT INTO t (id, Name) VALUES (1, 'a'), (2, $1) RETURNING id"),
        Some(RowScope::Insert {
            relation: rel("t"),
            columns: vec!["id".into(), "name".into()],
            rows: vec![
                vec![Some(n("1", 0)), Some(s("a"))],
                vec![Some(n("2", 1)), Some(p(1))]
            ],
        })
    );
    assert_eq!(
        scope("INSERT INTO s.t AS x (id, a, b, c, d) VALUES (DEFAULT, 1 + 1, $1::int, now(), -3)"),
        Some(RowScope::Insert {
            relation: rel("s.t"),
            columns: ["id", "a", "b", "c", "d"].map(String::from).to_vec(),
            rows: vec![vec![None, None, None, None, None]],
        })
    );
    assert_eq!(scope("INSERT INTO t VALUES (1, 'a')"), None);
    assert_eq!(scope("INSERT INTO t (id) SELECT 1"), None);
    assert_eq!(scope("INSERT INTO t (id) SELECT id FROM u"), None);
    assert_eq!(scope("INSERT INTO t DEFAULT VALUES"), None);
    assert_eq!(
        scope("INSERT INTO t (id) VALUES (1) ON CONFLICT DO NOTHING"),
        None
    );
    assert_eq!(
        scope("INSERT INTO t (id, x) VALUES (1, 2) ON CONFLICT (id) DO UPDATE SET x = 3"),
        None
    );
    assert_eq!(scope("INSERT INTO t (id, x) VALUES (1, 2), (3)"), None);
    assert_eq!(
        scope("WITH c AS (SELECT 1) INSERT INTO t (id) VALUES (1)"),
        None
    );
}

#[test]
fn each_statement_numbers_its_own_piece() {
    let a = analyze(b"SELECT * FROM t WHERE id = 1; DELETE FROM u WHERE id = 22");
    let rows: Vec<Option<RowScope>> = a
        .statements
        .into_iter()
        .map(|s| s.rows.map(|b| *b))
        .collect();
    assert_eq!(
        rows,
        vec![
            read_one("t", vec![eq("id", vec![n("1", 0)])]),
            change("u", vec![eq("id", vec![n("22", 0)])], &[]),
        ]
    );
}

#[test]
fn number_at_reads_the_same_tokens() {
    let a = "SELECT 1, 2.5 FROM t WHERE id = 42 AND k = 0x1F AND j IN (7, 1e3, 8)";
    assert_eq!(number_at(a.as_bytes(), 0), Some(&b"1"[..]));
    assert_eq!(number_at(a.as_bytes(), 1), None, "2.5 counts, is no key");
    assert_eq!(number_at(a.as_bytes(), 2), Some(&b"42"[..]));
    assert_eq!(number_at(a.as_bytes(), 3), Some(&b"7"[..]));
    assert_eq!(number_at(a.as_bytes(), 4), Some(&b"8"[..]));
    assert_eq!(number_at(a.as_bytes(), 5), None);
    assert_eq!(scope(a), read_one("t", vec![eq("id", vec![n("42", 2)])]));
    // Another text of the same shape supplies its own digits at the same ordinal.
    let b = "SELECT 1, 2.5 FROM t WHERE id = 99 AND k = 0x1F AND j IN (7, 1e3, 8)";
    assert_eq!(
        crate::sql::shape_key(a.as_bytes()),
        crate::sql::shape_key(b.as_bytes())
    );
    assert_eq!(number_at(b.as_bytes(), 2), Some(&b"99"[..]));
    let c = "SELECT 1, 2.5 FROM t WHERE id = 9.5 AND k = 0x1F AND j IN (7, 1e3, 8)";
    assert_eq!(
        number_at(c.as_bytes(), 2),
        None,
        "same shape, not a key value"
    );
}

#[test]
fn without_a_position_only_a_unique_value_has_an_ordinal() {
    let text = "UPDATE t SET x = 1 WHERE id = 1 AND k = 2";
    let numbers = Numbers::new(text.as_bytes(), text);
    assert_eq!(numbers.ordinal("1", Span::empty()), None, "ambiguous");
    assert_eq!(numbers.ordinal("2", Span::empty()), Some(2));
    assert_eq!(numbers.ordinal("3", Span::empty()), None);
}

#[test]
fn the_scope_counts_in_the_weight() {
    let with = analyze(b"SELECT * FROM t WHERE id IN (1, 2, 3, 4, 5, 6, 7, 8)");
    let without = analyze(b"SELECT * FROM t WHERE id IN (1, 2, 3, 4, 5, 6, 7, 8) OR true");
    assert!(with.statements.iter().all(|s| s.rows.is_some()));
    assert!(without.statements.iter().all(|s| s.rows.is_none()));
    assert!(with.weight(50) > without.weight(50) + 8 * std::mem::size_of::<KeyValue>());
}
