use super::*;

fn plan(sql: &str) -> Option<Arc<Plan>> {
    Some(Arc::new(Plan::for_tests(sql)))
}

fn stmt(q: &'static str) -> Statement {
    Statement::new(q.as_bytes(), &[], plan(q))
}

fn sql_of(r: &Registry, name: &[u8]) -> Option<Bytes> {
    r.plan(name).map(|p| p.sql.clone())
}

#[test]
fn a_parse_is_the_clients_at_once_and_confirmed_by_its_reply() {
    let mut r = Registry::default();
    let seq = r.sent(b"s1", stmt("select 1"));
    assert_eq!(sql_of(&r, b"s1").as_deref(), Some(&b"select 1"[..]));
    r.confirmed(Bytes::from_static(b"s1"), seq, stmt("select 1"));
    r.closing(b"s1");
    assert!(
        r.get(b"s1").is_none(),
        "a Bind behind the Close has no plan"
    );
    r.closed(b"s1");
    assert!(r.is_empty());
}

#[test]
fn a_duplicate_parse_keeps_the_statement_postgres_keeps() {
    let mut r = Registry::default();
    let seq = r.sent(b"s1", stmt("update t set v = 1"));
    r.confirmed(Bytes::from_static(b"s1"), seq, stmt("update t set v = 1"));
    // PostgreSQL rejects the second Parse: an Execute of s1 still runs the update.
    let dup = r.sent(b"s1", stmt("select 1"));
    assert_eq!(
        sql_of(&r, b"s1").as_deref(),
        Some(&b"update t set v = 1"[..])
    );
    r.failed(b"s1", dup);
    assert_eq!(
        sql_of(&r, b"s1").as_deref(),
        Some(&b"update t set v = 1"[..])
    );
}

#[test]
fn a_name_whose_parse_is_unanswered_has_no_plan_when_parsed_again() {
    let mut r = Registry::default();
    let first = r.sent(b"s1", stmt("select 1"));
    let second = r.sent(b"s1", stmt("update t set v = 1"));
    assert!(r.get(b"s1").is_some());
    assert!(
        r.plan(b"s1").is_none(),
        "either Parse may be the one that holds"
    );
    // The first failed; the second, after a Sync, succeeded.
    r.failed(b"s1", first);
    r.confirmed(
        Bytes::from_static(b"s1"),
        second,
        stmt("update t set v = 1"),
    );
    assert_eq!(
        sql_of(&r, b"s1").as_deref(),
        Some(&b"update t set v = 1"[..])
    );
}

#[test]
fn a_failed_parse_removes_what_it_created_and_a_failed_replay_is_local_again() {
    let mut r = Registry::default();
    let seq = r.sent(b"", stmt("selec"));
    r.failed(b"", seq);
    assert!(r.get(b"").is_none());

    let frame = Bytes::from_static(b"P...frame");
    r.answered(b"", stmt("select 1"), frame.clone(), false);
    let (_, replay, seq) = r.replay(b"").expect("only pgmemo holds it");
    assert_eq!(replay, frame);
    assert!(r.replay(b"").is_none(), "on its way already");
    r.failed(b"", seq);
    assert!(
        r.replay(b"").is_some(),
        "local again: replayed before the next Bind"
    );
}

#[test]
fn a_parse_after_a_close_of_the_same_name_survives_the_close_complete() {
    let mut r = Registry::default();
    let seq = r.sent(b"s1", stmt("select 1"));
    r.confirmed(Bytes::from_static(b"s1"), seq, stmt("select 1"));
    r.closing(b"s1");
    let again = r.sent(b"s1", stmt("select 2"));
    r.closed(b"s1");
    r.confirmed(Bytes::from_static(b"s1"), again, stmt("select 2"));
    assert_eq!(sql_of(&r, b"s1").as_deref(), Some(&b"select 2"[..]));
}

#[test]
fn a_skipped_close_leaves_the_statement() {
    let mut r = Registry::default();
    let seq = r.sent(b"s1", stmt("select 1"));
    r.confirmed(Bytes::from_static(b"s1"), seq, stmt("select 1"));
    r.closing(b"s1");
    r.close_skipped(b"s1");
    assert!(r.get(b"s1").is_some());
    // A local statement's Close forgets it: it never was upstream.
    r.answered(b"", stmt("select 2"), Bytes::from_static(b"P"), false);
    r.closing(b"");
    assert!(r.get(b"").is_none());
    assert_eq!(r.len(), 1);
}

#[test]
fn deallocate_all_leaves_the_unnamed_statement() {
    let mut r = Registry::default();
    for name in [&b"a"[..], b"b", b""] {
        let seq = r.sent(name, stmt("select 1"));
        r.confirmed(Bytes::copy_from_slice(name), seq, stmt("select 1"));
    }
    r.deallocated(b"a");
    assert!(r.get(b"a").is_none());
    r.deallocated_all();
    assert!(r.get(b"b").is_none());
    assert!(r.get(b"").is_some());
    assert_eq!(r.len(), 1);
}

#[test]
fn a_new_plan_keeps_the_entry_and_its_weight_right() {
    let mut r = Registry::default();
    let seq = r.sent(b"s1", stmt("select 1"));
    r.closing(b"s1");
    r.set_plan(b"s1", Arc::new(Plan::for_tests("select 1 -- again")));
    assert!(r.get(b"s1").is_none(), "still being closed");
    r.close_skipped(b"s1");
    assert_eq!(
        sql_of(&r, b"s1").as_deref(),
        Some(&b"select 1 -- again"[..])
    );
    r.confirmed(Bytes::from_static(b"s1"), seq, stmt("select 1"));
    let weight: usize = r.map.values().map(|e| e.weight).sum();
    assert_eq!(r.bytes, weight);
}

#[test]
fn bounded_in_entries_and_bytes_but_the_unnamed_always_fits() {
    let mut r = Registry::default();
    for i in 0..MAX_STATEMENTS + 5 {
        r.sent(
            format!("s{i}").as_bytes(),
            Statement::new(b"select 1", &[], None),
        );
    }
    assert_eq!(r.len(), MAX_STATEMENTS);
    assert!(r.overflowed());
    r.sent(b"", Statement::new(b"select 1", &[], None));
    assert_eq!(r.len(), MAX_STATEMENTS + 1);

    let mut r = Registry::default();
    let big = vec![b'x'; 1024 * 1024];
    for i in 0..40 {
        r.sent(format!("s{i}").as_bytes(), Statement::new(&big, &[], None));
    }
    assert!(r.len() < 32);
    assert!(r.bytes <= MAX_STATEMENT_BYTES);
    assert!(r.overflowed());
}
