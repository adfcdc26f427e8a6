//! No input takes the analysis down: thousands of generated garbage byte strings, every
//! truncation of real statements, and ASTs deep enough to overflow a task's stack if dropped
//! naively — with the module's invariants checked on each.

use crate::sql::lexer::significant;
use crate::sql::{
    Analysis, Class, SessionChange, StatementInfo, analyze, hints, normalize_for_key,
};

use crate::rng::Rng;

const CORPUS: &[&str] = &[
    "SELECT a, b FROM s.t WHERE id = $1 AND name = 'x''y' ORDER BY 1 LIMIT 10",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT * FROM r, ONLY (t)",
    "WITH x AS (UPDATE t SET a = now() RETURNING *) SELECT * FROM x FOR NO KEY UPDATE",
    "INSERT INTO t (a) SELECT b FROM u ON CONFLICT (a) DO UPDATE SET a = excluded.a RETURNING *",
    "UPDATE ONLY t AS x SET a = u.b FROM u WHERE x.id = u.id",
    "DELETE FROM t USING u WHERE t.id = u.id; TRUNCATE a, ONLY b CASCADE",
    "MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE",
    "COPY (SELECT * FROM t) TO STDOUT WITH (FORMAT csv); COPY t FROM STDIN",
    "EXPLAIN (ANALYZE, BUFFERS) DELETE FROM t WHERE a IN (SELECT a FROM v)",
    "PREPARE p(int) AS SELECT * FROM t WHERE a = $1; EXECUTE p(1); DEALLOCATE ALL",
    "BEGIN; SAVEPOINT s; ROLLBACK TO s; PREPARE TRANSACTION 'g'; COMMIT PREPARED 'g'",
    "SET LOCAL search_path TO \"$user\", public; RESET ALL; DISCARD TEMP; SET ROLE NONE",
    "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END",
    "DO $body$ BEGIN PERFORM 1; END $body$; CALL p(E'\\'x', U&'\\0061')",
    "SELECT /* pgmemo:nocache */ 'now'::timestamptz, x::regclass FROM t TABLESAMPLE SYSTEM (1)",
    "TABLE t UNION TABLE ONLY u; REFRESH MATERIALIZED VIEW CONCURRENTLY m WITH NO DATA",
    "CREATE TEMP TABLE x AS SELECT * FROM generate_series(1, 3) g -- trailing",
    "GRANT SELECT ON t TO r; REVOKE ALL ON SCHEMA s FROM PUBLIC; DROP TABLE a CASCADE",
];

const ALPHABET: &[u8] =
    b"'\"$-/*();,.:=+<>[]{}|&^%!?~@#\\ \t\n\rabcdeflnoptuxyzABEILNSTUX0123456789_\x80\xc3\xa9\xff";

const WORDS: &[&str] = &[
    "SELECT", "FROM", "ONLY", "TABLE", "WITH", "AS", "(", ")", ";", "UPDATE", "SET", "INSERT",
    "INTO", "DELETE", "FOR", "NO", "KEY", "SHARE", "EXPLAIN", "ANALYZE", "PREPARE", "EXECUTE", "t",
    "u", "s.t", "$1", "'x'", "$$y$$", "\"Q\"", "E'\\''", ",", "*", "UNION", "ALL", "COPY", "TO",
    "BEGIN", "ATOMIC", "END", "CREATE", "FUNCTION", "TEMP", "now()", "/*", "*/", "--", "\n",
];

fn check_statement(s: &StatementInfo, input: &[u8]) {
    assert_eq!(
        s.class == Class::CacheableRead,
        s.reason.is_none(),
        "cacheable exactly when there is no reason: {:?} {s:#?}",
        String::from_utf8_lossy(input)
    );
    if s.class == Class::CacheableRead {
        assert!(
            s.writes.is_empty() && !s.epoch_bump && !s.taints_session && !s.uses_value_functions
        );
    }
    if let Class::SessionChange(SessionChange::Prepare { inner, .. }) = &s.class {
        check_statement(inner, input);
    }
}

fn check(input: &[u8]) {
    let a: Analysis = analyze(input);
    for s in &a.statements {
        check_statement(s, input);
    }
    assert_eq!(a.cacheable().is_some(), a.reason().is_none());
    let _ = hints(input);
    let key = normalize_for_key(input);
    assert_eq!(
        normalize_for_key(&key),
        key,
        "idempotent: {:?}",
        String::from_utf8_lossy(input)
    );
    // Never lossy: the tokens that carry meaning are exactly the input's.
    let tokens = |src: &[u8]| -> Vec<Vec<u8>> {
        significant(src)
            .iter()
            .map(|t| t.bytes(src).to_vec())
            .collect()
    };
    assert_eq!(
        tokens(&key),
        tokens(input),
        "{:?}",
        String::from_utf8_lossy(input)
    );
}

#[test]
fn garbage_and_truncations_never_panic() {
    let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15);
    let mut inputs = 0usize;
    for stmt in CORPUS {
        let bytes = stmt.as_bytes();
        for cut in 0..=bytes.len() {
            check(&bytes[..cut]);
            check(&bytes[cut..]);
            inputs += 2;
        }
    }
    for _ in 0..3000 {
        let len = rng.below(120);
        let input: Vec<u8> = (0..len)
            .map(|_| ALPHABET[rng.below(ALPHABET.len())])
            .collect();
        check(&input);
        let words: Vec<&str> = (0..rng.below(24))
            .map(|_| WORDS[rng.below(WORDS.len())])
            .collect();
        check(words.join(" ").as_bytes());
        let mut spliced = CORPUS[rng.below(CORPUS.len())].as_bytes().to_vec();
        let at = rng.below(spliced.len());
        spliced.insert(at, ALPHABET[rng.below(ALPHABET.len())]);
        check(&spliced);
        inputs += 3;
    }
    assert!(inputs > 10_000, "{inputs}");
}

/// Runs `f` on a thread with a 2 MiB stack, like a tokio worker, and reports whether it
/// finished (a stack overflow would abort the whole test binary instead).
fn on_small_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn deep_asts_do_not_overflow_the_stack() {
    on_small_stack(|| {
        let sum = format!("SELECT 1{}", "+1".repeat(100_000));
        assert_eq!(
            analyze(sum.as_bytes()).statements[0].class,
            Class::CacheableRead
        );
        let ands = format!(
            "SELECT * FROM t WHERE {}",
            vec!["a = 1"; 30_000].join(" AND ")
        );
        assert_eq!(
            analyze(ands.as_bytes()).statements[0].class,
            Class::CacheableRead
        );
        let unions = vec!["SELECT a FROM t"; 20_000].join(" UNION ");
        assert_eq!(analyze(unions.as_bytes()).statements[0].reads.len(), 1);
        // An error after a deep expression drops the partial AST inside the parser.
        let broken = format!("UPDATE t SET a = 1{} FROM ((", "+1".repeat(100_000));
        assert!(analyze(broken.as_bytes()).statements[0].epoch_bump);
        // Deep parentheses hit sqlparser's recursion limit: the fallback decides.
        let parens = format!("SELECT {}1{}", "(".repeat(5_000), ")".repeat(5_000));
        assert_eq!(analyze(parens.as_bytes()).statements[0].class, Class::Read);
    });
}

#[test]
fn many_relations_and_ctes_stay_linear() {
    // Thousands of names must not turn the analysis quadratic (a hostile client sends them).
    let names: Vec<String> = (0..5_000).map(|i| format!("t{i}")).collect();
    let sql = format!("SELECT * FROM {}", names.join(", "));
    let start = std::time::Instant::now();
    let a = analyze(sql.as_bytes());
    assert_eq!(a.statements[0].reads.len(), 5_000);
    let ctes: Vec<String> = (0..2_000).map(|i| format!("c{i} AS (SELECT 1)")).collect();
    let refs: Vec<String> = (0..2_000).map(|i| format!("c{i}")).collect();
    let sql = format!("WITH {} SELECT * FROM {}", ctes.join(", "), refs.join(", "));
    assert!(analyze(sql.as_bytes()).statements[0].reads.is_empty());
    assert!(
        start.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
}
