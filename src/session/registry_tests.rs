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

fn name(n: &'static str) -> Bytes {
    Bytes::from_static(n.as_bytes())
}

/// `s1` as PostgreSQL holds it, parsed and confirmed.
fn held(r: &mut Registry, q: &'static str) {
    let seq = r.sent(Bytes::from_static(b"s1"), stmt(q), true);
    r.confirmed(name("s1"), seq, stmt(q));
}

fn bytes_add_up(r: &Registry) {
    let weight: usize = r.map.values().map(|e| e.weight).sum();
    assert_eq!(r.bytes, weight);
    for (n, e) in &r.map {
        assert_eq!(e.weight, weight_of(n, e));
    }
}

fn weight_of(name: &[u8], e: &Entry) -> usize {
    weight(name, &e.stmt, &e.held)
}

#[test]
fn a_parse_is_the_clients_at_once_and_confirmed_by_its_reply() {
    let mut r = Registry::default();
    let seq = r.sent(Bytes::from_static(b"s1"), stmt("select 1"), true);
    assert_eq!(sql_of(&r, b"s1").as_deref(), Some(&b"select 1"[..]));
    r.confirmed(name("s1"), seq, stmt("select 1"));
    r.closing(b"s1");
    assert!(
        r.get(b"s1").is_none(),
        "a Bind behind the Close has no plan"
    );
    r.closed(b"s1");
    assert!(r.is_empty());
    bytes_add_up(&r);
}

#[test]
fn a_duplicate_parse_keeps_the_statement_postgres_keeps() {
    let mut r = Registry::default();
    held(&mut r, "update t set v = 1");
    // PostgreSQL rejects the second Parse: an Execute of s1 still runs the update.
    let dup = r.sent(Bytes::from_static(b"s1"), stmt("select 1"), true);
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
fn a_parse_behind_unanswered_messages_leaves_the_name_without_a_plan_until_its_reply() {
    // A DEALLOCATE (or DISCARD, or an unanswered Parse) ahead may free the name.
    let mut r = Registry::default();
    held(&mut r, "select 1");
    let again = r.sent(Bytes::from_static(b"s1"), stmt("update t set v = 1"), false);
    assert!(r.get(b"s1").is_some());
    assert!(
        r.plan(b"s1").is_none(),
        "either statement may be the one a Bind runs"
    );
    r.deallocated(b"s1");
    r.confirmed(name("s1"), again, stmt("update t set v = 1"));
    assert_eq!(
        sql_of(&r, b"s1").as_deref(),
        Some(&b"update t set v = 1"[..])
    );

    // Two Parses of one name in flight: the first failed, the second (after a Sync) holds.
    let mut r = Registry::default();
    let first = r.sent(Bytes::from_static(b"s1"), stmt("select 1"), true);
    let second = r.sent(Bytes::from_static(b"s1"), stmt("update t set v = 1"), false);
    assert!(r.plan(b"s1").is_none());
    r.failed(b"s1", first);
    r.confirmed(name("s1"), second, stmt("update t set v = 1"));
    assert_eq!(
        sql_of(&r, b"s1").as_deref(),
        Some(&b"update t set v = 1"[..])
    );
    bytes_add_up(&r);
}

#[test]
fn an_older_parse_complete_does_not_undo_a_newer_unnamed_parse() {
    let mut r = Registry::default();
    let a = r.sent(Bytes::from_static(b""), stmt("select * from big"), true);
    let b = r.sent(Bytes::from_static(b""), stmt("update t set v = 1"), false);
    // A's reply arrives while B is still on its way: a Bind behind B runs B.
    r.confirmed(Bytes::new(), a, stmt("select * from big"));
    assert_eq!(sql_of(&r, b"").as_deref(), Some(&b"update t set v = 1"[..]));
    r.confirmed(Bytes::new(), b, stmt("update t set v = 1"));
    assert_eq!(sql_of(&r, b"").as_deref(), Some(&b"update t set v = 1"[..]));
}

#[test]
fn a_failed_parse_removes_what_it_created_and_a_failed_replay_is_local_again() {
    let mut r = Registry::default();
    let seq = r.sent(Bytes::from_static(b""), stmt("selec"), true);
    r.failed(b"", seq);
    assert!(r.get(b"").is_none());

    let frame = Bytes::from_static(b"P...frame");
    r.answered(
        Bytes::from_static(b""),
        stmt("select 1"),
        frame.clone(),
        false,
    );
    bytes_add_up(&r);
    let (_, replay, seq) = r.replay(b"").expect("only pgmemo holds it");
    assert_eq!(replay, frame);
    assert!(r.replay(b"").is_none(), "on its way already");
    r.failed(b"", seq);
    assert!(
        r.replay(b"").is_some(),
        "local again: replayed before the next Bind"
    );
    bytes_add_up(&r);
}

#[test]
fn a_parse_of_a_name_being_closed_has_its_plan_only_once_confirmed() {
    let mut r = Registry::default();
    held(&mut r, "update t set v = 1");
    r.closing(b"s1");
    // An error may yet skip the Close, and PostgreSQL would then reject this Parse.
    let again = r.sent(Bytes::from_static(b"s1"), stmt("select 2"), false);
    assert!(r.get(b"s1").is_some());
    assert!(r.plan(b"s1").is_none());
    r.closed(b"s1");
    assert!(
        r.get(b"s1").is_some(),
        "the new Parse replaced the closed one"
    );
    r.confirmed(name("s1"), again, stmt("select 2"));
    assert_eq!(sql_of(&r, b"s1").as_deref(), Some(&b"select 2"[..]));

    // The Close skipped by an error, the Parse rejected: the old statement, planless.
    let mut r = Registry::default();
    held(&mut r, "update t set v = 1");
    r.closing(b"s1");
    let again = r.sent(Bytes::from_static(b"s1"), stmt("select 2"), false);
    r.failed(b"s1", again);
    assert!(
        r.get(b"s1").is_none(),
        "unknown: executing it is an unknown write"
    );
}

#[test]
fn a_skipped_close_leaves_the_statement() {
    let mut r = Registry::default();
    held(&mut r, "select 1");
    r.closing(b"s1");
    r.close_skipped(b"s1");
    assert!(r.get(b"s1").is_some());
    // A local statement's Close forgets it: it never was upstream.
    r.answered(
        Bytes::from_static(b""),
        stmt("select 2"),
        Bytes::from_static(b"P"),
        false,
    );
    r.closing(b"");
    assert!(r.get(b"").is_none());
    assert_eq!(r.len(), 1);
}

#[test]
fn a_parse_of_a_name_only_pgmemo_holds_replaces_it() {
    // (Its replay is skipped while tracking is lost: PostgreSQL does not hold it.)
    let mut r = Registry::default();
    r.answered(
        Bytes::from_static(b"s1"),
        stmt("select 1"),
        Bytes::from_static(b"P"),
        false,
    );
    r.sent(Bytes::from_static(b"s1"), stmt("update t set v = 1"), false);
    assert_eq!(
        sql_of(&r, b"s1").as_deref(),
        Some(&b"update t set v = 1"[..])
    );
}

#[test]
fn deallocate_all_leaves_the_unnamed_statement() {
    let mut r = Registry::default();
    for n in [&b"a"[..], b"b", b""] {
        let seq = r.sent(Bytes::copy_from_slice(n), stmt("select 1"), true);
        r.confirmed(Bytes::copy_from_slice(n), seq, stmt("select 1"));
    }
    r.deallocated(b"a");
    assert!(r.get(b"a").is_none());
    r.deallocated_all();
    assert!(r.get(b"b").is_none());
    assert!(r.get(b"").is_some());
    assert_eq!(r.len(), 1);
    bytes_add_up(&r);
}

#[test]
fn a_loss_forgets_every_plan() {
    let mut r = Registry::default();
    held(&mut r, "update t set v = 1");
    r.answered(
        Bytes::from_static(b""),
        stmt("select 1"),
        Bytes::from_static(b"P"),
        false,
    );
    r.lost();
    assert!(r.overflowed());
    assert!(r.get(b"s1").is_some());
    assert!(r.plan(b"s1").is_none());
    assert!(r.plan(b"").is_none());
    bytes_add_up(&r);
}

#[test]
fn a_new_plan_is_set_in_place_and_the_bytes_follow() {
    let mut r = Registry::default();
    let seq = r.sent(Bytes::from_static(b"s1"), stmt("select 1"), true);
    r.closing(b"s1");
    r.set_plan(b"s1", Arc::new(Plan::for_tests("select 1 -- again")));
    assert!(r.get(b"s1").is_none(), "still being closed");
    r.close_skipped(b"s1");
    assert_eq!(
        sql_of(&r, b"s1").as_deref(),
        Some(&b"select 1 -- again"[..])
    );
    r.confirmed(name("s1"), seq, stmt("select 1"));
    bytes_add_up(&r);

    // No room for a plan: the statement stays (PostgreSQL holds it), planless.
    let mut r = Registry::default();
    let big = Bytes::from(vec![b'x'; MAX_STATEMENT_BYTES - 4096]);
    let seq = r.sent(
        Bytes::from_static(b""),
        Statement::new(&big, &[], None),
        true,
    );
    r.confirmed(Bytes::new(), seq, Statement::new(&big, &[], None));
    r.set_plan(b"", Arc::new(Plan::for_tests(&"y".repeat(8192))));
    assert!(r.get(b"").is_some());
    assert!(r.plan(b"").is_none());
    assert!(r.bytes <= MAX_STATEMENT_BYTES);
    bytes_add_up(&r);
}

#[test]
fn bounded_in_entries_and_bytes_but_the_unnamed_always_fits() {
    let mut r = Registry::default();
    for i in 0..MAX_STATEMENTS + 5 {
        r.sent(
            Bytes::from(format!("s{i}")),
            Statement::new(b"select 1", &[], None),
            true,
        );
    }
    assert_eq!(r.len(), MAX_STATEMENTS);
    assert!(r.overflowed());
    r.sent(
        Bytes::from_static(b""),
        Statement::new(b"select 1", &[], None),
        true,
    );
    assert_eq!(r.len(), MAX_STATEMENTS + 1);

    let mut r = Registry::default();
    let big = vec![b'x'; 1024 * 1024];
    for i in 0..40 {
        r.sent(
            Bytes::from(format!("s{i}")),
            Statement::new(&big, &[], None),
            true,
        );
    }
    assert!(r.len() < 32);
    assert!(r.bytes <= MAX_STATEMENT_BYTES);
    assert!(r.overflowed());
    // A frame kept for a replay counts too.
    let mut r = Registry::default();
    let frame = Bytes::from(vec![b'P'; 20 * 1024 * 1024]);
    r.answered(
        Bytes::from_static(b"a"),
        Statement::new(&big, &[], None),
        frame.clone(),
        false,
    );
    r.answered(
        Bytes::from_static(b"b"),
        Statement::new(&big, &[], None),
        frame,
        false,
    );
    assert_eq!(r.len(), 1);
    bytes_add_up(&r);
}
