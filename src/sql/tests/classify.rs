//! Statements sqlparser parses: classes, reads, writes, functions and reasons.

use super::*;
use crate::sql::{Class, NotCacheable, SessionChange};

fn cacheable_reads(sql: &str, reads: &[&str]) {
    let s = one(sql);
    assert_eq!(s.class, Class::CacheableRead, "{sql}: {s:#?}");
    assert_eq!(s.reason, None, "{sql}");
    assert_eq!(s.reads, rels(reads), "{sql}");
    assert!(
        s.writes.is_empty() && !s.epoch_bump && !s.taints_session,
        "{sql}: {s:#?}"
    );
}

fn read_not_cacheable(sql: &str, reason: NotCacheable) -> crate::sql::StatementInfo {
    let s = one(sql);
    assert_eq!(
        (s.class.clone(), s.reason),
        (Class::Read, Some(reason)),
        "{sql}: {s:#?}"
    );
    assert!(s.writes.is_empty() && !s.epoch_bump, "{sql}: {s:#?}");
    s
}

fn write(sql: &str, writes: &[&str], reads: &[&str]) -> crate::sql::StatementInfo {
    let s = one(sql);
    assert_eq!(s.class, Class::Write, "{sql}: {s:#?}");
    assert_eq!(s.writes, rels(writes), "{sql}");
    assert_eq!(s.reads, rels(reads), "{sql}");
    assert!(!s.epoch_bump, "{sql}: {s:#?}");
    s
}

fn ddl(sql: &str, writes: &[&str], epoch_bump: bool) -> crate::sql::StatementInfo {
    let s = one(sql);
    assert_eq!(s.class, Class::Ddl, "{sql}: {s:#?}");
    assert_eq!(s.writes, rels(writes), "{sql}");
    assert_eq!(s.epoch_bump, epoch_bump, "{sql}: {s:#?}");
    s
}

#[test]
fn plain_reads_are_cacheable_with_their_relations() {
    cacheable_reads("SELECT a FROM t WHERE id = $1", &["t"]);
    cacheable_reads("SELECT 1", &[]);
    cacheable_reads("VALUES (1), (2)", &[]);
    cacheable_reads("(SELECT a FROM t)", &["t"]);
    cacheable_reads("SELECT * FROM t JOIN s.u ON true, v", &["t", "s.u", "v"]);
    cacheable_reads(
        "SELECT a FROM t WHERE EXISTS (SELECT 1 FROM u) AND b IN (SELECT c FROM v)",
        &["t", "u", "v"],
    );
    cacheable_reads(
        "SELECT * FROM t, LATERAL (SELECT * FROM u WHERE u.id = t.id) x",
        &["t", "u"],
    );
    cacheable_reads(
        "SELECT 1 UNION SELECT a FROM t EXCEPT SELECT a FROM u",
        &["t", "u"],
    );
    cacheable_reads("SELECT * FROM t FETCH FIRST 3 ROWS ONLY", &["t"]);
    cacheable_reads("SELECT (SELECT max(a) FROM u) FROM t", &["u", "t"]);
}

#[test]
fn identifiers_are_normalised_like_postgres() {
    let s = one("SELECT * FROM S.\"T\" JOIN \"Sch\".Tab ON true");
    assert_eq!(
        s.reads,
        vec![
            RelName {
                schema: Some("s".into()),
                name: "T".into()
            },
            RelName {
                schema: Some("Sch".into()),
                name: "tab".into()
            },
        ]
    );
    // A database prefix is dropped; identifiers are truncated to 63 bytes.
    let long = "x".repeat(70);
    let s = one(&format!("SELECT * FROM mydb.public.{long}"));
    assert_eq!(
        s.reads,
        vec![RelName {
            schema: Some("public".into()),
            name: "x".repeat(63)
        }]
    );
    assert_eq!(s.reads[0].to_string(), format!("public.{}", "x".repeat(63)));
    // Four parts cannot name a relation: not cacheable.
    read_not_cacheable("SELECT * FROM a.b.c.d", NotCacheable::UnsupportedSyntax);
}

#[test]
fn table_statement_is_select_star() {
    cacheable_reads("TABLE t", &["t"]);
    cacheable_reads("TABLE ONLY s.t", &["s.t"]);
    cacheable_reads("SELECT 1 UNION TABLE t", &["t"]);
    cacheable_reads("WITH x AS (TABLE t) SELECT * FROM x", &["t"]);
    cacheable_reads("SELECT * FROM (TABLE u) z", &["u"]);
}

#[test]
fn only_is_not_a_table_name() {
    // sqlparser alone reads `FROM ONLY t` as table "only" aliased t.
    cacheable_reads("SELECT * FROM ONLY t", &["t"]);
    cacheable_reads(
        "SELECT * FROM ONLY (s.t) x JOIN ONLY u ON true",
        &["s.t", "u"],
    );
    cacheable_reads("SELECT * FROM \"ONLY\"", &["ONLY"]);
    write(
        "UPDATE ONLY t AS x SET a = u.b FROM u WHERE x.id = u.id",
        &["t"],
        &["u"],
    );
    write(
        "DELETE FROM ONLY t WHERE a IN (SELECT a FROM v)",
        &["t"],
        &["v"],
    );
    ddl("ALTER TABLE ONLY t ADD COLUMN b int", &["t"], false);
}

#[test]
fn cte_names_are_not_relations_within_their_scope() {
    cacheable_reads("WITH x AS (SELECT * FROM t) SELECT * FROM x", &["t"]);
    // A non-recursive entry does not see itself: the inner `t` is the real table.
    cacheable_reads("WITH t AS (SELECT * FROM t) SELECT * FROM t", &["t"]);
    cacheable_reads(
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) \
         SELECT * FROM r",
        &[],
    );
    // Later entries see earlier ones, not the other way round.
    cacheable_reads(
        "WITH a AS (SELECT 1), b AS (SELECT * FROM a) SELECT * FROM b",
        &[],
    );
    cacheable_reads(
        "WITH a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a",
        &["b"],
    );
    // A WITH inside a subquery does not bind names outside it.
    cacheable_reads(
        "SELECT * FROM (WITH x AS (SELECT 1) SELECT * FROM x) s, x",
        &["x"],
    );
    // ... but does bind them in nested subqueries.
    cacheable_reads(
        "WITH x AS (SELECT 1) SELECT * FROM t WHERE EXISTS (SELECT 1 FROM x)",
        &["t"],
    );
    // Qualified names and differently quoted names are never the CTE.
    cacheable_reads("WITH t AS (SELECT 1) SELECT * FROM public.t", &["public.t"]);
    cacheable_reads("WITH \"X\" AS (SELECT 1) SELECT * FROM x", &["x"]);
    cacheable_reads("WITH x AS (SELECT 1) SELECT * FROM \"x\"", &[]);
}

#[test]
fn table_functions_are_functions_not_relations() {
    let s = one("SELECT * FROM generate_series(1, 3) g");
    assert_eq!(
        (s.class.clone(), s.reads.clone()),
        (Class::CacheableRead, vec![])
    );
    assert_eq!(s.functions, vec![func("generate_series")]);
    let s = one("SELECT * FROM t, LATERAL s.f(t.a) AS z, unnest(ARRAY[1]) WITH ORDINALITY u");
    assert_eq!(s.reads, rels(&["t"]));
    assert_eq!(s.functions, vec![func("s.f")]);
    let s = one("SELECT lower(a), count(*) FROM t GROUP BY 1");
    assert_eq!(s.functions, vec![func("lower"), func("count")]);
    // Grammar that looks like a call is not a catalog function; its arguments still count.
    let s = one(
        "SELECT coalesce(a, 1), nullif(b, 2), greatest(1, 2), ARRAY(SELECT f(c) FROM u) FROM t",
    );
    assert_eq!(
        (s.class.clone(), s.functions.clone()),
        (Class::CacheableRead, vec![func("f")])
    );
    assert_eq!(s.reads, rels(&["u", "t"]));
    assert_eq!(
        one("SELECT app.coalesce(a) FROM t").functions,
        vec![func("app.coalesce")]
    );
}

#[test]
fn locking_clauses_are_reads_that_are_not_cacheable() {
    for clause in [
        "FOR UPDATE",
        "FOR NO KEY UPDATE",
        "FOR SHARE",
        "FOR KEY SHARE",
        "FOR UPDATE OF t NOWAIT",
        "FOR SHARE SKIP LOCKED",
    ] {
        let s = read_not_cacheable(
            &format!("SELECT * FROM t {clause}"),
            NotCacheable::LockingClause,
        );
        assert_eq!(s.reads, rels(&["t"]));
    }
    read_not_cacheable(
        "SELECT * FROM (SELECT * FROM t FOR UPDATE) x",
        NotCacheable::LockingClause,
    );
}

#[test]
fn tablesample_is_not_cacheable() {
    read_not_cacheable(
        "SELECT * FROM t TABLESAMPLE SYSTEM (10)",
        NotCacheable::TableSample,
    );
    read_not_cacheable(
        "SELECT * FROM t x TABLESAMPLE BERNOULLI (5) REPEATABLE (1)",
        NotCacheable::TableSample,
    );
}

#[test]
fn value_functions_and_special_literals_are_not_cacheable() {
    for expr in [
        "CURRENT_TIMESTAMP",
        "current_date",
        "LOCALTIME(3)",
        "current_user",
        "session_user",
        "current_role",
        "current_schema",
        "current_catalog",
        "user",
        "localtimestamp",
        "now()",
        "pg_catalog.now()",
        "clock_timestamp()",
        "current_setting('application_name')",
        "pg_backend_pid()",
    ] {
        let s = read_not_cacheable(
            &format!("SELECT {expr} FROM t"),
            NotCacheable::ValueFunction,
        );
        assert!(s.uses_value_functions, "{expr}");
    }
    // The keyword forms are syntax, not catalog functions.
    assert!(one("SELECT CURRENT_TIMESTAMP").functions.is_empty());
    assert_eq!(one("SELECT now()").functions, vec![func("now")]);
    for lit in [
        "'now'::timestamptz",
        "'today'::date",
        "timestamp 'tomorrow'",
        "CAST('yesterday' AS date)",
        "'tomorrow 10:00'::timestamp",
        "E'NOW'::timestamptz",
        "$$now$$::timestamptz",
    ] {
        let s = read_not_cacheable(
            &format!("SELECT * FROM t WHERE d > {lit}"),
            NotCacheable::SpecialDateLiteral,
        );
        assert!(s.uses_value_functions, "{lit}");
    }
    // Look-alikes stay cacheable; a user function that happens to be called now is the
    // catalog's to judge.
    cacheable_reads(
        "SELECT * FROM t WHERE name = 'nowhere' AND d > 'epoch'::timestamp",
        &["t"],
    );
    let s = one("SELECT app.now() FROM t");
    assert_eq!(
        (s.class.clone(), s.functions.clone()),
        (Class::CacheableRead, vec![func("app.now")])
    );
}

#[test]
fn reg_type_casts_depend_on_the_catalog() {
    read_not_cacheable("SELECT 't'::regclass", NotCacheable::RegTypeCast);
    read_not_cacheable("SELECT CAST('int4' AS regtype)", NotCacheable::RegTypeCast);
    read_not_cacheable("SELECT 'f'::pg_catalog.regproc", NotCacheable::RegTypeCast);
    cacheable_reads("SELECT '1'::int, a::text FROM t", &["t"]);
}

#[test]
fn data_modifying_ctes_are_writes() {
    let s = write(
        "WITH x AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM x",
        &["t"],
        &[],
    );
    assert_eq!(s.reason, Some(NotCacheable::DataModifyingCte));
    write(
        "WITH x AS (INSERT INTO t VALUES (1) RETURNING id) SELECT * FROM x, u",
        &["t"],
        &["u"],
    );
    let s = write(
        "WITH d AS (DELETE FROM a WHERE id IN (SELECT id FROM c) RETURNING *) \
         INSERT INTO b SELECT * FROM d",
        &["a", "b"],
        &["c"],
    );
    assert_eq!(s.reason, Some(NotCacheable::NotSelect));
    write(
        "WITH x AS (SELECT * FROM u) UPDATE t SET a = 1 FROM x",
        &["t"],
        &["u"],
    );
}

#[test]
fn select_into_and_create_table_as_create_tables() {
    let s = ddl("SELECT a INTO b FROM t", &["b"], false);
    assert_eq!(
        (s.reason, s.reads.clone()),
        (Some(NotCacheable::SelectInto), rels(&["t"]))
    );
    assert!(!s.taints_session);
    let s = ddl("SELECT * INTO TEMP b FROM t", &["b"], false);
    assert!(
        s.taints_session,
        "a temp table shadows permanent ones for this session"
    );
    let s = ddl(
        "CREATE TABLE x AS SELECT * FROM t JOIN u USING (id)",
        &["x"],
        false,
    );
    assert_eq!(s.reads, rels(&["t", "u"]));
    let s = ddl("CREATE TEMP TABLE x AS SELECT * FROM t", &["x"], false);
    assert!(s.taints_session);
    let s = ddl(
        "CREATE MATERIALIZED VIEW m AS SELECT * FROM t",
        &["m"],
        false,
    );
    assert_eq!(s.reads, rels(&["t"]));
}

#[test]
fn explain_runs_the_statement_only_with_analyze() {
    let s = read_not_cacheable("EXPLAIN SELECT * FROM t", NotCacheable::Explain);
    assert_eq!(s.reads, rels(&["t"]));
    let s = read_not_cacheable("EXPLAIN VERBOSE TABLE t", NotCacheable::Explain);
    assert_eq!(s.reads, rels(&["t"]));
    read_not_cacheable("EXPLAIN UPDATE t SET a = 1", NotCacheable::Explain);
    read_not_cacheable(
        "EXPLAIN (ANALYZE false) DELETE FROM t",
        NotCacheable::Explain,
    );
    read_not_cacheable(
        "EXPLAIN (ANALYZE off, COSTS on) DELETE FROM t",
        NotCacheable::Explain,
    );
    read_not_cacheable("EXPLAIN ANALYZE SELECT * FROM t", NotCacheable::Explain);
    for sql in [
        "EXPLAIN ANALYZE UPDATE t SET a = 1",
        "EXPLAIN (ANALYZE, BUFFERS) DELETE FROM t",
        "EXPLAIN (FORMAT JSON, ANALYZE on) INSERT INTO t VALUES (1)",
        "EXPLAIN (ANALYZE 1) DELETE FROM t",
    ] {
        let s = write(sql, &["t"], &[]);
        assert_eq!(s.reason, Some(NotCacheable::Explain), "{sql}");
    }
    let s = one("EXPLAIN ANALYZE EXECUTE p(1)");
    assert_eq!(
        (s.class, s.reason),
        (
            Class::Execute { name: "p".into() },
            Some(NotCacheable::Explain)
        )
    );
}

#[test]
fn prepare_execute_deallocate() {
    let s = one("PREPARE p(int) AS SELECT * FROM t WHERE a = $1");
    let Class::SessionChange(SessionChange::Prepare { name, inner }) = &s.class else {
        panic!("{s:#?}")
    };
    assert_eq!(
        (name.as_str(), &inner.class, &inner.reads),
        ("p", &Class::CacheableRead, &rels(&["t"]))
    );
    assert!(
        s.writes.is_empty() && !s.epoch_bump,
        "PREPARE itself changes no data"
    );
    let s = one("PREPARE Q AS UPDATE t SET a = 1");
    let Class::SessionChange(SessionChange::Prepare { name, inner }) = &s.class else {
        panic!("{s:#?}")
    };
    assert_eq!(
        (name.as_str(), &inner.class, &inner.writes),
        ("q", &Class::Write, &rels(&["t"]))
    );
    let s = one("EXECUTE p(1)");
    assert_eq!(
        (s.class, s.reason),
        (
            Class::Execute { name: "p".into() },
            Some(NotCacheable::Execute)
        )
    );
    let s = one("EXECUTE \"P\"((SELECT max(a) FROM u))");
    assert_eq!(s.class, Class::Execute { name: "P".into() });
    assert_eq!(s.reads, rels(&["u"]));
}

#[test]
fn copy_from_writes_and_copy_to_reads() {
    let s = write("COPY t FROM STDIN", &["t"], &[]);
    assert!(s.functions.is_empty());
    write(
        "COPY s.t (a, b) FROM STDIN WITH (FORMAT csv, HEADER true)",
        &["s.t"],
        &[],
    );
    let s = read_not_cacheable("COPY t (a, b) TO STDOUT", NotCacheable::CopyTo);
    assert_eq!(
        s.reads,
        rels(&["t"]),
        "sqlparser does not visit COPY's table"
    );
    let s = read_not_cacheable(
        "COPY (SELECT * FROM t JOIN u ON true) TO STDOUT",
        NotCacheable::CopyTo,
    );
    assert_eq!(s.reads, rels(&["t", "u"]));
}

#[test]
fn call_runs_invisible_code() {
    let s = one("CALL app.transfer(1, (SELECT max(id) FROM t))");
    assert_eq!(s.class, Class::Other);
    assert!(s.epoch_bump && s.taints_session, "{s:#?}");
    assert!(s.functions.contains(&func("app.transfer")));
    assert_eq!(s.reads, rels(&["t"]));
}

#[test]
fn dml_targets_are_writes_and_the_rest_are_reads() {
    write(
        "INSERT INTO s.t AS z (a) SELECT b FROM u ON CONFLICT (a) DO UPDATE SET a = excluded.a \
         RETURNING *",
        &["s.t"],
        &["u"],
    );
    write("INSERT INTO t DEFAULT VALUES", &["t"], &[]);
    write(
        "UPDATE t AS x SET a = u.b FROM u WHERE x.id = u.id",
        &["t"],
        &["u"],
    );
    write("UPDATE t SET a = (SELECT max(b) FROM v)", &["t"], &["v"]);
    write("DELETE FROM t x USING u WHERE x.id = u.id", &["t"], &["u"]);
    write(
        "MERGE INTO t USING (SELECT * FROM u) s ON t.id = s.id \
         WHEN MATCHED THEN UPDATE SET a = s.a WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.a)",
        &["t"],
        &["u"],
    );
    let s = write(
        "INSERT INTO t VALUES (nextval('seq'), app.f())",
        &["t"],
        &[],
    );
    assert_eq!(s.functions, vec![func("nextval"), func("app.f")]);
}

#[test]
fn truncate_writes_every_named_table() {
    write("TRUNCATE a, ONLY b RESTART IDENTITY", &["a", "b"], &[]);
    write("TRUNCATE TABLE s.a", &["s.a"], &[]);
    let s = one("TRUNCATE a CASCADE");
    assert_eq!(
        (s.class.clone(), s.writes.clone()),
        (Class::Write, rels(&["a"]))
    );
    assert!(s.epoch_bump, "CASCADE empties referencing tables too");
}

#[test]
fn ddl_reports_affected_relations() {
    ddl("CREATE TABLE t (a int)", &["t"], false);
    assert!(ddl("CREATE TEMP TABLE t (a int)", &["t"], false).taints_session);
    ddl("CREATE TABLE c () INHERITS (p)", &["c", "p"], false);
    ddl(
        "CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (1) TO (10)",
        &["p1", "p"],
        false,
    );
    let s = ddl("CREATE VIEW v AS SELECT * FROM t", &["v"], false);
    assert_eq!(s.reads, rels(&["t"]));
    assert!(ddl("CREATE OR REPLACE TEMP VIEW v AS SELECT 1", &["v"], false).taints_session);
    let s = ddl("CREATE INDEX i ON t (a)", &["t"], false);
    assert!(s.reads.is_empty(), "an index name is not a read: {s:#?}");
    ddl("ALTER TABLE t RENAME TO u", &["t"], false);
    ddl("DROP TABLE IF EXISTS a, s.b", &["a", "s.b"], false);
    ddl("DROP TABLE a CASCADE", &["a"], true);
    ddl("DROP VIEW v", &["v"], false);
    ddl("DROP INDEX i", &[], false);
    ddl("DROP SCHEMA s CASCADE", &[], true);
    ddl("DROP FUNCTION f(int)", &[], true);
    ddl(
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$",
        &[],
        true,
    );
    ddl("GRANT SELECT ON t, u TO r", &["t", "u"], false);
    ddl("REVOKE ALL ON TABLE t FROM PUBLIC", &["t"], false);
    ddl(
        "GRANT SELECT ON ALL TABLES IN SCHEMA public TO r",
        &[],
        true,
    );
    ddl("GRANT USAGE ON SCHEMA s TO r", &[], true);
    ddl("COMMENT ON TABLE t IS 'x'", &[], false);
    ddl("CREATE POLICY p ON t USING (true)", &["t"], false);
    ddl(
        "CREATE TRIGGER tr AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()",
        &["t"],
        false,
    );
    ddl("ALTER ROLE r SET search_path = x", &[], true);
    ddl("CREATE EXTENSION hstore", &[], true);
    ddl("CREATE SEQUENCE s", &["s"], false);
    ddl("CREATE SCHEMA s", &[], false);
}

#[test]
fn multiple_statements_are_analysed_one_by_one() {
    let a = analyze(b"BEGIN; UPDATE t SET a = 1; SELECT * FROM u; COMMIT");
    let classes: Vec<Class> = a.statements.iter().map(|s| s.class.clone()).collect();
    assert_eq!(
        classes,
        vec![
            Class::TransactionControl(crate::sql::TxnControl::Begin),
            Class::Write,
            Class::CacheableRead,
            Class::TransactionControl(crate::sql::TxnControl::Commit),
        ]
    );
    assert_eq!(a.reason(), Some(NotCacheable::MultipleStatements));
    assert!(a.cacheable().is_none());
    assert_eq!(a.writes().cloned().collect::<Vec<_>>(), rels(&["t"]));
    let a = analyze(b" SELECT 1 ;; -- trailing\n");
    assert_eq!(a.statements.len(), 1);
    assert_eq!(a.reason(), None);
    assert!(a.cacheable().is_some());
    for empty in ["", "  ", ";", " -- only a comment\n ; /* and another */"] {
        let a = analyze(empty.as_bytes());
        assert_eq!(
            (a.statements.len(), a.reason()),
            (0, Some(NotCacheable::Empty)),
            "{empty:?}"
        );
    }
}

#[test]
fn nocache_hint_makes_a_read_uncacheable() {
    let a = analyze(b"/* pgmemo:nocache */ SELECT * FROM t");
    assert!(a.hints.nocache);
    assert_eq!(a.reason(), Some(NotCacheable::NocacheHint));
    assert_eq!(a.statements[0].class, Class::Read);
    assert_eq!(a.statements[0].reads, rels(&["t"]));
    // In a string literal it is data, not a hint.
    assert_eq!(analyze(b"SELECT '/* pgmemo:nocache */'").reason(), None);
}

#[test]
fn reasons_have_stable_labels() {
    assert_eq!(NotCacheable::LockingClause.to_string(), "locking_clause");
    assert_eq!(NotCacheable::DataModifyingCte.label(), "data_modifying_cte");
    assert_eq!(NotCacheable::NocacheHint.label(), "nocache_hint");
    assert_eq!(
        RelName {
            schema: Some("S".into()),
            name: "a\"b".into()
        }
        .to_string(),
        "\"S\".\"a\"\"b\""
    );
}

/// `CREATE TABLE ... AS EXECUTE` runs a prepared statement whose settings changes pgmemo
/// cannot see (issue 15 item 1): it taints the session like EXECUTE itself.
#[test]
fn create_table_as_execute_taints_the_session() {
    for sql in [
        "CREATE TABLE x AS EXECUTE p(1)",
        "CREATE TEMP TABLE x AS EXECUTE p",
        "CREATE UNLOGGED TABLE IF NOT EXISTS x AS EXECUTE p('a') WITH NO DATA",
    ] {
        let s = one(sql);
        assert!(s.taints_session, "{sql}: {s:#?}");
        assert!(s.epoch_bump || s.class == Class::Ddl, "{sql}: {s:#?}");
    }
}
