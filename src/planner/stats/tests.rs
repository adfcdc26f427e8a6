use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::planner::bypass::BypassReason;

fn cx(database: &str) -> Context {
    Context {
        database: database.into(),
        db_oid: 1,
        current_user: "app".into(),
        search_path: "public".into(),
        has_temp: false,
    }
}

/// The statistics `plan` records into once attached.
fn handle(t: &QueryStats, cx: &Context, mut plan: Plan) -> Option<Arc<ShapeStats>> {
    t.attach(cx, &mut plan);
    plan.shape_stats().cloned()
}

fn plan(sql: &str) -> Plan {
    Plan::without_context(
        Bytes::copy_from_slice(sql.as_bytes()),
        BypassReason::NotSelect,
    )
}

#[test]
fn texts_of_one_shape_share_one_entry_per_database() {
    let t = QueryStats::new(true, 1 << 20);
    let a = handle(&t, &cx("app"), plan("SELECT * FROM t WHERE id = 1"));
    let b = handle(
        &t,
        &cx("app"),
        plan("SELECT *\n  FROM t WHERE id = 22 -- note"),
    );
    let c = handle(&t, &cx("other"), plan("SELECT * FROM t WHERE id = 1"));
    let (Some(a), Some(b), Some(c)) = (a, b, c) else {
        panic!("reads are tracked");
    };
    assert!(Arc::ptr_eq(&a, &b), "one shape");
    assert!(!Arc::ptr_eq(&a, &c), "another database");
    a.hit(None);
    b.bypass(BypassReason::NotIdle);
    let r = t.report();
    assert_eq!(r.len(), 2);
    let app = r.iter().find(|s| s.database == "app").expect("app shape");
    assert_eq!(app.calls, 2);
    assert!(app.query.contains('?'), "{}", app.query);
    assert_eq!(app.tables, ["t"]);
}

#[test]
fn writes_and_multi_statement_texts_are_not_tracked_nor_anything_when_off() {
    let t = QueryStats::new(true, 1 << 20);
    assert!(handle(&t, &cx("app"), plan("UPDATE t SET a = 1")).is_none());
    assert!(handle(&t, &cx("app"), plan("SELECT 1; SELECT 2")).is_none());
    let off = QueryStats::new(false, 1 << 20);
    assert!(handle(&off, &cx("app"), plan("SELECT 1")).is_none());
    assert_eq!(off.usage(), (0, 0));
}

#[test]
fn long_texts_are_cut_at_a_character_boundary() {
    let t = QueryStats::new(true, 1 << 20);
    // A quoted identifier (a literal would be shown as `?`).
    let sql = format!("SELECT \"é{}\" FROM t", "é".repeat(4000));
    let s = handle(&t, &cx("app"), plan(&sql)).expect("tracked");
    let text = s.report().query;
    assert!(
        text.len() <= MAX_TEXT_BYTES && text.ends_with("..."),
        "{}",
        text.len()
    );
}

/// Filled far past its bound with one-off shapes, the table stays within it and keeps the
/// shapes that stand for the most PostgreSQL time.
#[test]
fn bounded_in_bytes_keeping_the_most_valuable() {
    let max = 256 << 10;
    let t = QueryStats::new(true, max);
    let valuable: Vec<Arc<ShapeStats>> = (0..10)
        .map(|i| {
            let s =
                handle(&t, &cx("app"), plan(&format!("SELECT a{i} FROM hot"))).expect("tracked");
            s.miss();
            s.upstream(Duration::from_millis(5));
            for _ in 0..1000 {
                s.hit(None);
            }
            s
        })
        .collect();
    let mut created = 0usize;
    for i in 0..20_000 {
        let s = handle(&t, &cx("app"), plan(&format!("SELECT c{i} FROM cold"))).expect("tracked");
        s.bypass(BypassReason::ValueFunction);
        created += weight(&s);
        let (_, bytes) = t.usage();
        assert!(bytes <= max, "{bytes} bytes held");
    }
    assert!(created > 10 * max, "the load is well over the bound");
    let (entries, _) = t.usage();
    assert!(entries > 50, "the table is used ({entries} shapes)");
    let kept = t.report();
    for s in &valuable {
        assert!(!s.evicted(), "a valuable shape was evicted");
    }
    assert_eq!(
        kept.iter().filter(|r| r.query.contains("FROM hot")).count(),
        10
    );
}

/// An evicted shape that becomes valuable is admitted again, with the counts it gathered.
#[test]
fn an_evicted_shape_comes_back_with_its_counts() {
    let max = 64 << 10;
    let t = QueryStats::new(true, max);
    let late = handle(&t, &cx("app"), plan("SELECT late FROM t")).expect("tracked");
    for i in 0..5_000 {
        let s = handle(&t, &cx("app"), plan(&format!("SELECT c{i} FROM t"))).expect("tracked");
        // Later shapes run more often: each is worth more than those before it.
        for _ in 0..=i / 100 {
            s.hit(None);
        }
        // As a sampled hit does: a shape refused at first asks again once it is worth more.
        t.readopt(&s);
    }
    assert!(late.evicted(), "the idle shape was evicted");
    late.upstream(Duration::from_millis(50));
    for _ in 0..100 {
        late.hit(None);
    }
    t.readopt(&late);
    assert!(!late.evicted());
    let r = t.report();
    let back = r
        .iter()
        .find(|s| s.query.contains("late"))
        .expect("re-admitted");
    assert_eq!(back.hits, 100);
}
