//! Pinning decisions: statements with their verdict (the rows they are pinned to, or why
//! not), from the SQL analysis through the planner's check against a primary key to the
//! canonical keys of one execution.

use super::*;
use crate::cache::rows::oid;
use crate::sql::RowScope;

const T: Tag = Tag { db: 1, rel: 100 };

fn identity(key: &[(&str, u32)]) -> RowIdentity {
    RowIdentity {
        key: key.iter().map(|(n, t)| ((*n).to_owned(), *t)).collect(),
        read_blocker: None,
        write_blocker: None,
        replica_default: true,
    }
}

const ID: &[(&str, u32)] = &[("id", oid::INT4)];

/// The pin of relation `rel` in `sql` under a primary key `key`.
fn pin_of(sql: &str, rel: &str, key: &[(&str, u32)]) -> Result<RowPin, &'static str> {
    let analysis = crate::sql::analyze(sql.as_bytes());
    let info = analysis.statements.first().ok_or("no statement")?;
    let identity = identity(key);
    let target = Target {
        tag: T,
        identity: &identity,
        sql: sql.as_bytes(),
    };
    match info.rows.as_deref() {
        Some(RowScope::Read(filters)) => {
            let f = filters
                .iter()
                .find(|f| f.relation.name == rel)
                .ok_or("relation_not_pinned")?;
            target.from_filter(f)
        }
        Some(RowScope::Change { filter, assigns }) if filter.relation.name == rel => {
            target.from_change(filter, assigns)
        }
        Some(RowScope::Insert {
            relation,
            columns,
            rows,
        }) if relation.name == rel => target.from_insert(columns, rows),
        _ => Err("no_key_equality"),
    }
}

/// The canonical keys of a statement with literals only.
fn keys(sql: &str, key: &[(&str, u32)]) -> Result<Vec<RowKey>, &'static str> {
    pin_of(sql, "t", key)?.keys(None, true).ok_or("unresolved")
}

fn key_of_int(v: i64) -> RowKey {
    let mut k = RowKey::new();
    assert!(k.push_text(
        KeyType::of_column(oid::INT4).unwrap(),
        v.to_string().as_bytes()
    ));
    k
}

/// A Bind tail with these (format, value) parameters and no result formats.
fn bind_tail(params: &[(i16, Option<&[u8]>)]) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for (f, _) in params {
        t.extend_from_slice(&f.to_be_bytes());
    }
    t.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for (_, v) in params {
        match v {
            None => t.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                t.extend_from_slice(&(v.len() as i32).to_be_bytes());
                t.extend_from_slice(v);
            }
        }
    }
    t.extend_from_slice(&0i16.to_be_bytes());
    t
}

fn types(oids: &[u32]) -> Vec<u8> {
    oids.iter().flat_map(|o| o.to_be_bytes()).collect()
}

fn bound_keys(
    sql: &str,
    key: &[(&str, u32)],
    declared: &[u32],
    params: &[(i16, Option<&[u8]>)],
) -> Option<Vec<RowKey>> {
    let pin = pin_of(sql, "t", key).ok()?;
    let (types, tail) = (types(declared), bind_tail(params));
    pin.keys(
        Some(Bound {
            types: &types,
            tail: &tail,
        }),
        true,
    )
}

#[test]
fn point_reads_by_the_primary_key_are_pinned() {
    assert_eq!(
        keys("SELECT v FROM t WHERE id = 5", ID),
        Ok(vec![key_of_int(5)])
    );
    assert_eq!(
        keys("SELECT v FROM t WHERE 5 = id", ID),
        Ok(vec![key_of_int(5)])
    );
    assert_eq!(
        keys("SELECT * FROM t WHERE t.id = 5", ID),
        Ok(vec![key_of_int(5)])
    );
    assert_eq!(
        keys("SELECT a.v FROM t AS a WHERE a.id = 5 AND a.v > 0", ID),
        Ok(vec![key_of_int(5)]),
        "other conjuncts only narrow the row"
    );
    assert_eq!(
        keys("SELECT sum(v), count(*) FROM t WHERE id = 5", ID),
        Ok(vec![key_of_int(5)]),
        "an aggregate over one row"
    );
    assert_eq!(
        keys("SELECT v FROM t WHERE id IN (1, 2, 3)", ID),
        Ok(vec![key_of_int(1), key_of_int(2), key_of_int(3)])
    );
}

#[test]
fn one_row_in_every_form_is_one_key() {
    let seven = Ok(vec![key_of_int(7)]);
    assert_eq!(keys("SELECT v FROM t WHERE id = 7", ID), seven);
    assert_eq!(keys("SELECT v FROM t WHERE id = 007", ID), seven);
    assert_eq!(keys("SELECT v FROM t WHERE id = '007'", ID), seven);
    assert_eq!(keys("SELECT v FROM t WHERE id = ' 7'", ID), seven);
    let sql = "SELECT v FROM t WHERE id = $1";
    let seven = Some(vec![key_of_int(7)]);
    assert_eq!(bound_keys(sql, ID, &[], &[(0, Some(b"7"))]), seven, "text");
    assert_eq!(bound_keys(sql, ID, &[0], &[(0, Some(b"007"))]), seven);
    assert_eq!(
        bound_keys(sql, ID, &[oid::INT4], &[(1, Some(&7i32.to_be_bytes()))]),
        seven,
        "binary int4"
    );
    assert_eq!(
        bound_keys(sql, ID, &[oid::INT8], &[(1, Some(&7i64.to_be_bytes()))]),
        seven,
        "binary int8 against an int4 key"
    );
    assert_eq!(
        bound_keys(sql, ID, &[0], &[(1, Some(&7i32.to_be_bytes()))]),
        seven,
        "binary, type left to the server (the column's)"
    );
}

#[test]
fn parameters_the_server_would_read_otherwise_are_not_pinned() {
    let sql = "SELECT v FROM t WHERE id = $1";
    assert_eq!(
        bound_keys(sql, ID, &[701], &[(1, Some(&7f64.to_be_bytes()))]),
        None,
        "float8"
    );
    assert_eq!(
        bound_keys(sql, ID, &[1700], &[(0, Some(b"7"))]),
        None,
        "numeric"
    );
    assert_eq!(bound_keys(sql, ID, &[], &[(0, None)]), None, "NULL");
    assert_eq!(bound_keys(sql, ID, &[], &[]), None, "missing");
    assert_eq!(bound_keys(sql, ID, &[], &[(0, Some(b"7.0"))]), None);
    // `$1` also elsewhere: its type may come from there, not from the key column.
    let twice = "SELECT v, $1 FROM t WHERE id = $1";
    assert_eq!(bound_keys(twice, ID, &[0], &[(0, Some(b"7"))]), None);
    assert_eq!(
        bound_keys(twice, ID, &[oid::INT4], &[(0, Some(b"7"))]),
        Some(vec![key_of_int(7)]),
        "declared by the Parse: no inference"
    );
}

#[test]
fn reads_not_pinned_to_rows_keep_table_granularity() {
    for sql in [
        "SELECT v FROM t WHERE id > 5",
        "SELECT v FROM t WHERE id BETWEEN 1 AND 3",
        "SELECT v FROM t WHERE id = 5 OR id = 6",
        "SELECT v FROM t WHERE v = 5",
        "SELECT count(*) FROM t",
        "SELECT v FROM t",
        "SELECT v FROM t WHERE id = -5",
        "SELECT v FROM t WHERE id = 5.0",
        "SELECT v FROM t WHERE id = $1::int8",
        "SELECT v FROM t WHERE id NOT IN (1, 2)",
        "SELECT a.v FROM t a JOIN t b ON a.id = b.id WHERE a.id = 1",
        "SELECT v FROM t WHERE id = 1 AND v > (SELECT min(v) FROM t)",
        "WITH x AS (SELECT 1) SELECT v FROM t WHERE id = 1",
        "SELECT v FROM t WHERE id = 1 UNION SELECT v FROM t WHERE id = 2",
    ] {
        assert!(pin_of(sql, "t", ID).is_err(), "{sql}");
    }
    let long: Vec<String> = (0..65).map(|i| i.to_string()).collect();
    let sql = format!("SELECT v FROM t WHERE id IN ({})", long.join(", "));
    assert!(pin_of(&sql, "t", ID).is_err(), "more rows than the bound");
}

#[test]
fn composite_keys_need_every_column() {
    let ab: &[(&str, u32)] = &[("a", oid::INT4), ("b", oid::TEXT)];
    let k = keys("SELECT v FROM t WHERE a = 1 AND b = 'x'", ab).unwrap();
    assert_eq!(k.len(), 1);
    assert_eq!(
        keys("SELECT v FROM t WHERE b = 'x' AND a = 1", ab),
        Ok(k.clone()),
        "order of the conjuncts"
    );
    assert_eq!(
        keys("SELECT v FROM t WHERE (b, a) = ('x', 1)", ab),
        Ok(k.clone()),
        "a row comparison, in key order"
    );
    assert_eq!(
        keys("SELECT v FROM t WHERE a IN (1, 2) AND b = 'x'", ab).map(|k| k.len()),
        Ok(2)
    );
    assert!(
        keys("SELECT v FROM t WHERE a = 1", ab).is_err(),
        "half a key"
    );
    assert!(
        keys("SELECT v FROM t WHERE a = 1 AND b > 'x'", ab).is_err(),
        "a range on a key column"
    );
}

#[test]
fn joins_pin_each_side_on_its_own() {
    let sql = "SELECT * FROM t JOIN u ON u.tid = t.id WHERE t.id = 1 AND u.id = 2";
    assert!(pin_of(sql, "t", ID).is_ok());
    assert!(pin_of(sql, "u", ID).is_ok());
    let one_side = "SELECT * FROM t JOIN u ON u.tid = t.id WHERE t.id = 1";
    assert!(pin_of(one_side, "t", ID).is_ok());
    assert!(pin_of(one_side, "u", ID).is_err(), "u's rows follow t's");
    assert!(
        pin_of(
            "SELECT * FROM t JOIN u ON u.tid = t.id WHERE id = 1",
            "t",
            ID
        )
        .is_err(),
        "an unqualified column of a join names no relation for sure"
    );
}

#[test]
fn text_and_uuid_keys() {
    let name: &[(&str, u32)] = &[("name", oid::VARCHAR)];
    let pin = pin_of("SELECT v FROM t WHERE name = 'abc'", "t", name).unwrap();
    assert!(pin.keys(None, true).is_some());
    assert_eq!(
        pin.keys(None, false),
        None,
        "a text key needs a UTF-8 session"
    );
    assert_eq!(
        pin_of("SELECT v FROM t WHERE name = 5", "t", name).err(),
        Some("key_literal")
    );
    let u: &[(&str, u32)] = &[("u", oid::UUID)];
    assert_eq!(
        keys(
            "SELECT v FROM t WHERE u = 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'",
            u
        ),
        keys(
            "SELECT v FROM t WHERE u = '{a0eebc999c0b4ef8bb6d6bb9bd380a11}'",
            u
        )
    );
    assert_eq!(
        pin_of("SELECT v FROM t WHERE u = 'nope'", "t", u).err(),
        Some("key_literal")
    );
    let float: &[(&str, u32)] = &[("f", 701)];
    assert_eq!(
        pin_of("SELECT v FROM t WHERE f = 1", "t", float).err(),
        Some("key_type")
    );
}

#[test]
fn writes_with_known_rows() {
    assert_eq!(
        keys("UPDATE t SET v = v + 1 WHERE id = 1234", ID),
        Ok(vec![key_of_int(1234)])
    );
    assert_eq!(
        keys("DELETE FROM t WHERE id IN (1, 2)", ID),
        Ok(vec![key_of_int(1), key_of_int(2)])
    );
    assert_eq!(
        keys("INSERT INTO t (v, id) VALUES (10, 1), (20, 2)", ID),
        Ok(vec![key_of_int(1), key_of_int(2)])
    );
    assert_eq!(
        keys("UPDATE t SET id = 6 WHERE id = 5", ID),
        Err("assigns_primary_key")
    );
    assert_eq!(
        keys("INSERT INTO t (v) VALUES (1)", ID),
        Err("primary_key_not_inserted"),
        "a key from a default pgmemo cannot know"
    );
    assert_eq!(
        keys("INSERT INTO t (id, v) VALUES (DEFAULT, 1)", ID),
        Err("primary_key_not_a_value")
    );
    for sql in [
        "UPDATE t SET v = 0 WHERE id > 5",
        "UPDATE t SET v = 0",
        "DELETE FROM t",
        "INSERT INTO t (id, v) SELECT id + 1, v FROM t",
        "INSERT INTO t (id, v) VALUES (1, 2) ON CONFLICT (id) DO UPDATE SET v = 3",
        "INSERT INTO t VALUES (1, 2)",
        "UPDATE t SET v = 1 FROM u WHERE t.id = 1",
        "DELETE FROM t USING u WHERE t.id = 1",
    ] {
        assert!(keys(sql, ID).is_err(), "{sql}");
    }
}

#[test]
fn another_text_of_the_same_shape_reads_its_own_digits() {
    let first = "UPDATE t SET v = v + 1 WHERE id = 1234";
    let pin = pin_of(first, "t", ID).unwrap();
    let other = "UPDATE t SET v = v + 1 WHERE id = 99";
    let moved = pin.with_numbers(other.as_bytes()).unwrap();
    assert_eq!(moved.keys(None, true), Some(vec![key_of_int(99)]));
    // The same digits as the other literal: position, not value, decides.
    let same = "UPDATE t SET v = v + 1 WHERE id = 1";
    let moved = pin.with_numbers(same.as_bytes()).unwrap();
    assert_eq!(moved.keys(None, true), Some(vec![key_of_int(1)]));
}

/// A read of `t` pinned as `sql` says (`ReadPlan::deps` under test).
fn read_plan(sql: &str, key: &[(&str, u32)]) -> super::super::plan::ReadPlan {
    let pin = pin_of(sql, "t", key).unwrap();
    super::super::plan::ReadPlan::new(
        Box::new([T]),
        bytes::Bytes::copy_from_slice(sql.as_bytes()),
        std::time::Duration::from_secs(60),
        std::sync::Arc::default(),
        std::sync::Arc::from(vec![pin]),
        None,
        false,
    )
}

#[test]
fn another_text_of_the_shape_keeps_the_write_through_flag() {
    for through in [false, true] {
        let mut plan = super::super::plan::Plan::for_tests("SELECT v FROM t WHERE id = 1");
        let mut read = read_plan("SELECT v FROM t WHERE id = 1", ID);
        read.through = through;
        plan.read = Ok(read);
        let other = plan.with_text(bytes::Bytes::from_static(b"SELECT v FROM t WHERE id = 2"));
        assert_eq!(other.read.map(|r| r.through), Ok(through));
    }
}

fn deps_of(
    plan: &super::super::plan::ReadPlan,
    bound: Option<Bound<'_>>,
    utf8: bool,
    secret: &crate::cache::KeySecret,
) -> (Vec<crate::cache::Dep>, bool) {
    let mut out = vec![crate::cache::Dep::Table(T)]; // stale content must be cleared
    let pinned = plan.deps(bound, utf8, secret, &mut out);
    (out, pinned)
}

#[test]
fn literal_key_dependencies_are_memoised_under_their_secret_only() {
    use crate::cache::{Dep, KeySecret};
    let (a, b) = (
        KeySecret::from_bytes([1; 16]),
        KeySecret::from_bytes([2; 16]),
    );
    let sql = "SELECT v FROM t WHERE id = 7";
    let plan = read_plan(sql, ID);
    let first = deps_of(&plan, None, true, &a);
    let row = Dep::Row(a.stripe(T, &key_of_int(7)));
    assert_eq!(first, (vec![Dep::Wide(T), row], true));
    assert_eq!(deps_of(&plan, None, true, &a), first, "memoised copy");
    // Another secret hashes to other stripes: the memo of the first must not answer.
    let fresh = deps_of(&read_plan(sql, ID), None, true, &b);
    assert_eq!(deps_of(&plan, None, true, &b), fresh);
    assert_ne!(fresh.0, first.0);
}

#[test]
fn parameter_keys_are_read_at_every_execution() {
    let secret = crate::cache::KeySecret::from_bytes([3; 16]);
    let plan = read_plan("SELECT v FROM t WHERE id = $1", ID);
    let types = types(&[oid::INT4]);
    let run = |v: &[u8]| {
        let tail = bind_tail(&[(0, Some(v))]);
        let bound = Bound {
            types: &types,
            tail: &tail,
        };
        deps_of(&plan, Some(bound), true, &secret)
    };
    let (one, two) = (run(b"1"), run(b"2"));
    assert_ne!(
        one, two,
        "a memo of the first execution would answer the second"
    );
    assert_eq!(run(b"1"), one);
    let literal = read_plan("SELECT v FROM t WHERE id = 2", ID);
    assert_eq!(deps_of(&literal, None, true, &secret), two);
}

#[test]
fn a_text_key_outside_utf8_is_table_wide_before_and_after_the_memo() {
    use crate::cache::Dep;
    let secret = crate::cache::KeySecret::from_bytes([4; 16]);
    let key = &[("code", oid::TEXT)];
    let plan = read_plan("SELECT v FROM t WHERE code = 'abc'", key);
    let table = (vec![Dep::Table(T)], false);
    assert_eq!(deps_of(&plan, None, false, &secret), table);
    let pinned = deps_of(&plan, None, true, &secret);
    assert!(pinned.1, "{pinned:?}");
    assert_eq!(deps_of(&plan, None, false, &secret), table);
    assert_eq!(deps_of(&plan, None, true, &secret), pinned);
}

#[test]
fn many_parameters_resolve_by_position() {
    // More parameters than the lookup keeps on its stack: the rest must still be found.
    let sql = "SELECT v FROM t WHERE id IN ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";
    let values: Vec<Vec<u8>> = (1..=11).map(|v: i64| (v * 10).to_string().into()).collect();
    let params: Vec<(i16, Option<&[u8]>)> = values.iter().map(|v| (0, Some(&v[..]))).collect();
    let keys = bound_keys(sql, ID, &[oid::INT4; 11], &params).unwrap();
    let expected: Vec<RowKey> = (1..=11).map(|v| key_of_int(v * 10)).collect();
    assert_eq!(keys, expected);
}

#[test]
fn another_text_of_the_shape_keeps_refresh_ahead() {
    let mut plan = super::super::plan::Plan::for_tests("SELECT v FROM t WHERE id = 1");
    let read = read_plan("SELECT v FROM t WHERE id = 1", ID);
    assert_eq!((read.refresh_ahead, read.refresh_adaptive), (0.0, false));
    plan.read = Ok(read.with_refresh(0.75, true));
    let other = plan.with_text(bytes::Bytes::from_static(b"SELECT v FROM t WHERE id = 2"));
    assert_eq!(
        other.read.map(|r| (r.refresh_ahead, r.refresh_adaptive)),
        Ok((0.75, true))
    );
    // Adaptive only qualifies a refresh-ahead.
    let read = read_plan("SELECT v FROM t WHERE id = 1", ID).with_refresh(0.0, true);
    assert_eq!((read.refresh_ahead, read.refresh_adaptive), (0.0, false));
}
