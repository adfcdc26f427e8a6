//! The recipe registry: filing by dependency, selection of a write's dependents (rows,
//! tables, table-wide), recency, replacement, and the byte bound.

use super::*;
use crate::cache::Tag;

const T: Tag = Tag { db: 1, rel: 100 };
const U: Tag = Tag { db: 1, rel: 200 };

fn recipe(sql: &str, deps: &[Dep]) -> Recipe {
    Recipe::for_tests(sql, deps)
}

fn sqls(found: &[Arc<Recipe>]) -> Vec<String> {
    found
        .iter()
        .map(|r| match &r.request {
            Request::Simple { sql } | Request::Extended { sql, .. } => {
                String::from_utf8_lossy(sql).into_owned()
            }
        })
        .collect()
}

/// A write to row 5 of T bumps `Table(T)` and its stripe; a table-wide write `Table(T)` and
/// `Wide(T)`. What each invalidated is what `dependents` returns.
fn filed() -> Recipes {
    let r = Recipes::new(1 << 20);
    r.insert(recipe("row 5", &[Dep::Wide(T), Dep::Row(5)]));
    r.insert(recipe("row 6", &[Dep::Wide(T), Dep::Row(6)]));
    r.insert(recipe("sum of T", &[Dep::Table(T)]));
    r.insert(recipe("join T U", &[Dep::Table(T), Dep::Table(U)]));
    r.insert(recipe("only U", &[Dep::Table(U)]));
    r
}

#[test]
fn a_row_write_selects_that_row_and_the_table_readers_newest_first() {
    let r = filed();
    let found = r.dependents(&[Dep::Table(T), Dep::Row(5)], 10);
    assert_eq!(sqls(&found), ["join T U", "sum of T", "row 5"]);
}

#[test]
fn a_table_wide_write_selects_every_reader_of_the_table() {
    let r = filed();
    let found = r.dependents(&[Dep::Table(T), Dep::Wide(T)], 10);
    assert_eq!(sqls(&found), ["join T U", "sum of T", "row 6", "row 5"]);
    let found = r.dependents(&[Dep::Table(U), Dep::Wide(U)], 10);
    assert_eq!(sqls(&found), ["only U", "join T U"]);
}

#[test]
fn at_most_max_are_selected_and_each_once() {
    let r = filed();
    // "join T U" is filed under both tables: selected once.
    let found = r.dependents(&[Dep::Table(T), Dep::Table(U)], 10);
    assert_eq!(sqls(&found), ["only U", "join T U", "sum of T"]);
    let found = r.dependents(&[Dep::Table(T), Dep::Wide(T)], 2);
    assert_eq!(sqls(&found), ["join T U", "sum of T"]);
    assert!(r.dependents(&[Dep::Row(99)], 10).is_empty());
}

#[test]
fn storing_the_same_request_again_replaces_it_and_makes_it_newest() {
    let r = filed();
    r.insert(recipe("row 5", &[Dep::Wide(T), Dep::Row(5)]));
    assert_eq!(r.len(), 5);
    let found = r.dependents(&[Dep::Table(T), Dep::Wide(T)], 10);
    assert_eq!(sqls(&found), ["row 5", "join T U", "sum of T", "row 6"]);
    // Re-filed under other dependencies: the old ones no longer select it.
    r.insert(recipe("row 5", &[Dep::Wide(T), Dep::Row(7)]));
    assert!(r.dependents(&[Dep::Row(5)], 10).is_empty());
    assert_eq!(sqls(&r.dependents(&[Dep::Row(7)], 10)), ["row 5"]);
}

#[test]
fn another_fingerprint_or_database_is_another_recipe() {
    let r = Recipes::new(1 << 20);
    let mut other = recipe("row 5", &[Dep::Row(5)]);
    other.fingerprint = [8; 16];
    r.insert(recipe("row 5", &[Dep::Row(5)]));
    r.insert(other);
    let mut elsewhere = recipe("row 5", &[Dep::Row(5)]);
    elsewhere.database = Arc::from("other");
    r.insert(elsewhere);
    assert_eq!(r.dependents(&[Dep::Row(5)], 10).len(), 3);
}

#[test]
fn the_byte_bound_evicts_the_least_recently_stored() {
    // Each of these recipes has a plan of its own, weighed with it.
    let q0 = recipe("q0", &[Dep::Table(T)]);
    let one = q0.weight() + SLOT_BYTES + q0.plan.weight();
    let r = Recipes::new(one * 10 + one / 2);
    for i in 0..100 {
        r.insert(recipe(&format!("q{i}"), &[Dep::Table(T)]));
        assert!(r.bytes() <= one * 10 + one / 2, "over the bound at {i}");
    }
    // Names grow from 2 to 3 bytes: nine or ten fit.
    assert!((9..=10).contains(&r.len()), "{}", r.len());
    let found = r.dependents(&[Dep::Table(T)], 100);
    assert_eq!(sqls(&found).first().map(String::as_str), Some("q99"));
    assert!(!sqls(&found).contains(&"q0".to_owned()));
}

#[test]
fn lists_keep_the_newest_and_evicted_recipes_leave_no_slot() {
    let r = Recipes::new(1 << 22);
    for i in 0..(ROW_LIST + 3) {
        r.insert(recipe(&format!("reader {i}"), &[Dep::Row(1)]));
    }
    let found = r.dependents(&[Dep::Row(1)], 100);
    assert_eq!(found.len(), ROW_LIST);
    assert_eq!(sqls(&found).first().map(String::as_str), Some("reader 6"));
    // A recipe too heavy for the bound is not kept, and replaces nothing else.
    let small = Recipes::new(64);
    small.insert(recipe("too heavy", &[Dep::Row(1)]));
    assert!(small.is_empty());
    assert_eq!(small.bytes(), 0);
    r.clear();
    assert!(r.is_empty());
    assert_eq!(r.bytes(), 0);
    assert!(r.dependents(&[Dep::Row(1)], 100).is_empty());
}

#[test]
fn a_plan_and_a_login_shared_by_many_recipes_are_weighed_once() {
    let plan = Arc::new(Plan::for_tests("SELECT v FROM t WHERE id = $1"));
    // One session's login, held by every recipe it stored.
    let login = Arc::clone(&recipe("", &[]).login);
    let with_plan = |i: u32| Recipe {
        request: Request::Extended {
            sql: Bytes::from_static(b"SELECT v FROM t WHERE id = $1"),
            param_types: Bytes::new(),
            bind_tail: Bytes::from(i.to_be_bytes().to_vec()),
        },
        plan: Arc::clone(&plan),
        login: Arc::clone(&login),
        ..recipe("", &[Dep::Row(i)])
    };
    let held = plan.weight() + login.bytes();
    let own = with_plan(0).weight() + SLOT_BYTES;
    let r = Recipes::new(held + 100 * own);
    for i in 0..100 {
        r.insert(with_plan(i));
    }
    // A hundred executions of one statement by one session fit where a hundred plans (or
    // logins) would not.
    assert_eq!(r.len(), 100);
    assert_eq!(r.bytes(), held + 100 * own);
    // Evicting all but the newest keeps both counted while one recipe holds them.
    let small = Recipes::new(held + own);
    for i in 0..10 {
        small.insert(with_plan(i));
    }
    assert_eq!(small.len(), 1);
    assert_eq!(small.bytes(), held + own);
    small.clear();
    assert_eq!(small.bytes(), 0);
}
