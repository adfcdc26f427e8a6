//! Unit tests of the session fingerprint: transaction semantics, resets, roles, exclusions,
//! taint and its clearing, bounds. Statements go through the real `sql::analyze`.

use super::*;
use crate::sql::{TxnControl, analyze};

fn params(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

/// A session past its startup (baseline reports seen, first ReadyForQuery).
fn session() -> Fingerprint {
    session_with(&[("user", "alice"), ("database", "app")])
}

fn session_with(startup: &[(&str, &str)]) -> Fingerprint {
    let mut fp = Fingerprint::new("app", "alice", &params(startup));
    fp.on_parameter_status("DateStyle", "ISO, MDY");
    fp.on_parameter_status("TimeZone", "UTC");
    fp.on_parameter_status("application_name", "psql");
    fp.on_ready_for_query();
    fp
}

/// Runs `sql` the way the session will: transaction control through the dedicated methods,
/// everything else through `on_statement`, then a ReadyForQuery.
fn run(fp: &mut Fingerprint, sql: &str) {
    for info in analyze(sql.as_bytes()).statements {
        match &info.class {
            Class::TransactionControl(t) => match t {
                TxnControl::Begin => fp.on_begin(),
                TxnControl::Commit => fp.on_transaction_end(true),
                TxnControl::Rollback => fp.on_transaction_end(false),
                TxnControl::Savepoint(n) => fp.on_savepoint(n),
                TxnControl::RollbackToSavepoint(n) => fp.on_rollback_to(n),
                TxnControl::ReleaseSavepoint(n) => fp.on_release(n),
                other => panic!("not used in these tests: {other:?}"),
            },
            _ => fp.on_statement(&info),
        }
    }
    fp.on_ready_for_query();
}

fn bytes(fp: &Fingerprint) -> Vec<u8> {
    fp.bytes().expect("cacheable").to_vec()
}

#[test]
fn set_outside_a_block_applies_at_once() {
    let mut fp = session();
    let before = bytes(&fp);
    run(&mut fp, "SET search_path = a, b");
    assert_ne!(bytes(&fp), before);
    let mut other = session();
    run(&mut other, "set SEARCH_PATH = a, b");
    assert_eq!(
        bytes(&fp),
        bytes(&other),
        "name lower-cased, same value text"
    );
}

#[test]
fn set_in_a_block_kept_by_commit_undone_by_rollback() {
    let mut committed = session();
    run(&mut committed, "BEGIN; SET search_path = a; COMMIT");
    let mut direct = session();
    run(&mut direct, "SET search_path = a");
    assert_eq!(bytes(&committed), bytes(&direct));

    let mut rolled_back = session();
    let before = bytes(&rolled_back);
    run(&mut rolled_back, "BEGIN; SET search_path = a");
    assert_ne!(
        bytes(&rolled_back),
        before,
        "tentative change is visible in the block"
    );
    run(&mut rolled_back, "ROLLBACK");
    assert_eq!(bytes(&rolled_back), before);
}

#[test]
fn set_local_ends_with_the_block() {
    for end in ["COMMIT", "ROLLBACK"] {
        let mut fp = session();
        let before = bytes(&fp);
        run(&mut fp, "BEGIN; SET LOCAL search_path = a");
        assert_ne!(bytes(&fp), before);
        run(&mut fp, end);
        assert_eq!(bytes(&fp), before, "after {end}");
    }
    // SET then SET LOCAL: the commit keeps the SET value.
    let mut fp = session();
    run(
        &mut fp,
        "BEGIN; SET search_path = a; SET LOCAL search_path = b; COMMIT",
    );
    let mut direct = session();
    run(&mut direct, "SET search_path = a");
    assert_eq!(bytes(&fp), bytes(&direct));
    // SET LOCAL outside a block does nothing (PostgreSQL only warns).
    let mut fp = session();
    let before = bytes(&fp);
    run(&mut fp, "SET LOCAL search_path = a");
    assert_eq!(bytes(&fp), before);
}

#[test]
fn rollback_to_savepoint_undoes_only_later_sets() {
    let mut fp = session();
    run(
        &mut fp,
        "BEGIN; SET search_path = a; SAVEPOINT s; SET search_path = b; SET timezone = 'x'",
    );
    run(&mut fp, "ROLLBACK TO SAVEPOINT s");
    let mut expected = session();
    run(&mut expected, "BEGIN; SET search_path = a");
    assert_eq!(bytes(&fp), bytes(&expected));
    // The savepoint survives ROLLBACK TO; RELEASE keeps the changes.
    run(
        &mut fp,
        "SET search_path = c; ROLLBACK TO s; SET search_path = d; RELEASE s; COMMIT",
    );
    let mut direct = session();
    run(&mut direct, "SET search_path = d");
    assert_eq!(bytes(&fp), bytes(&direct));
    // An unknown savepoint taints.
    let mut fp = session();
    run(&mut fp, "BEGIN; ROLLBACK TO nope");
    assert!(!fp.cacheable());
}

#[test]
fn reset_all_and_discard_all_restore_startup_values() {
    for reset in [
        "RESET ALL",
        "DISCARD ALL",
        "RESET search_path; RESET extra_float_digits",
    ] {
        let mut fp = session();
        let before = bytes(&fp);
        run(&mut fp, "SET search_path = a; SET extra_float_digits = 0");
        assert_ne!(bytes(&fp), before);
        run(&mut fp, reset);
        assert_eq!(bytes(&fp), before, "after {reset}");
    }
    // RESET ALL leaves the role alone.
    let mut fp = session();
    run(&mut fp, "SET ROLE bob");
    let with_role = bytes(&fp);
    run(&mut fp, "SET search_path = a; RESET ALL");
    assert_eq!(bytes(&fp), with_role);
    // DISCARD ALL in a block fails in PostgreSQL: not modelled, taints.
    let mut fp = session();
    run(&mut fp, "BEGIN; DISCARD ALL");
    assert!(!fp.cacheable());
}

#[test]
fn set_role_changes_the_fingerprint_and_reset_role_restores_it() {
    let mut fp = session();
    let before = bytes(&fp);
    run(&mut fp, "SET ROLE bob");
    let bob = bytes(&fp);
    assert_ne!(bob, before);
    let mut carol = session();
    run(&mut carol, "SET ROLE carol");
    assert_ne!(bytes(&carol), bob);
    run(&mut fp, "RESET ROLE");
    assert_eq!(bytes(&fp), before);
    // A role called "none" is not SET ROLE NONE.
    let mut named = session();
    run(&mut named, "SET ROLE \"none\"");
    let mut none = session();
    run(&mut none, "SET ROLE NONE");
    assert_ne!(bytes(&named), bytes(&none));
}

#[test]
fn session_authorization_modelled_only_where_safe() {
    let mut fp = session();
    let before = bytes(&fp);
    run(&mut fp, "SET SESSION AUTHORIZATION bob");
    assert_ne!(bytes(&fp), before);
    run(&mut fp, "RESET SESSION AUTHORIZATION");
    assert_eq!(bytes(&fp), before);
    // With a role set, older servers drop the role: taint instead of guessing.
    let mut fp = session();
    run(&mut fp, "SET ROLE bob; SET SESSION AUTHORIZATION carol");
    assert!(!fp.cacheable());
    // A role possibly set at startup makes DISCARD ALL unmodellable too.
    let mut fp = session_with(&[("user", "alice"), ("options", "-c role=bob")]);
    run(&mut fp, "DISCARD ALL");
    assert!(!fp.cacheable());
}

#[test]
fn startup_options_are_part_of_the_fingerprint() {
    let a = session_with(&[("user", "alice"), ("options", "-c search_path=a")]);
    let b = session_with(&[("user", "alice"), ("options", "-c search_path=b")]);
    assert_ne!(bytes(&a), bytes(&b));
    let a2 = session_with(&[("options", "-c search_path=a"), ("user", "alice")]);
    assert_eq!(
        bytes(&a),
        bytes(&a2),
        "order of startup parameters is irrelevant"
    );
    // Database and user count.
    let other_db = Fingerprint::new("other", "alice", &params(&[]));
    let other_user = Fingerprint::new("app", "bob", &params(&[]));
    let base = Fingerprint::new("app", "alice", &params(&[]));
    assert_ne!(bytes(&other_db), bytes(&base));
    assert_ne!(bytes(&other_user), bytes(&base));
}

#[test]
fn excluded_settings_do_not_change_the_bytes() {
    let mut fp = session();
    let before = bytes(&fp);
    run(
        &mut fp,
        "SET application_name = 'x'; SET statement_timeout = 5; SET log_statement = all",
    );
    fp.on_parameter_status("application_name", "x");
    assert!(fp.cacheable());
    assert_eq!(bytes(&fp), before);
    let with_name = session_with(&[("user", "alice"), ("application_name", "other")]);
    assert_eq!(
        bytes(&with_name),
        bytes(&session_with(&[("user", "alice")]))
    );
}

#[test]
fn extra_float_digits_does_change_the_bytes() {
    let mut fp = session();
    let before = bytes(&fp);
    run(&mut fp, "SET extra_float_digits = 0");
    assert_ne!(bytes(&fp), before);
    let a = session_with(&[("extra_float_digits", "3")]);
    let b = session_with(&[("extra_float_digits", "0")]);
    assert_ne!(bytes(&a), bytes(&b));
}

#[test]
fn parameter_status_expected_after_set_but_not_out_of_the_blue() {
    let mut fp = session();
    let before = bytes(&fp);
    // Expected: the statement since the last ReadyForQuery changed it.
    for info in analyze(b"SET TimeZone = 'Europe/Paris'").statements {
        fp.on_statement(&info);
    }
    fp.on_parameter_status("TimeZone", "Europe/Paris");
    fp.on_ready_for_query();
    assert!(fp.cacheable());
    assert_ne!(bytes(&fp), before);
    // Unexpected: nothing this model saw changed it.
    fp.on_parameter_status("TimeZone", "UTC");
    fp.on_ready_for_query();
    assert!(!fp.cacheable());
    assert_eq!(fp.bytes(), None);
    assert!(fp.taint_reason().is_some_and(|r| r.contains("timezone")));
}

#[test]
fn parameter_status_before_the_statement_is_judged_at_ready_for_query() {
    // Servers before 14 report during the SET, before its CommandComplete.
    let mut fp = session();
    fp.on_parameter_status("DateStyle", "SQL, DMY");
    for info in analyze(b"SET datestyle = 'SQL, DMY'").statements {
        fp.on_statement(&info);
    }
    fp.on_ready_for_query();
    assert!(fp.cacheable());
}

#[test]
fn parameter_status_expected_when_the_block_end_reverts() {
    let mut fp = session();
    run(&mut fp, "BEGIN; SET LOCAL TimeZone = 'x'");
    fp.on_transaction_end(true);
    fp.on_parameter_status("TimeZone", "UTC");
    fp.on_ready_for_query();
    assert!(fp.cacheable());
}

#[test]
fn tainting_statements_and_reestablish() {
    for sql in [
        "DO $$ BEGIN PERFORM 1; END $$",
        "CALL p()",
        "SELECT set_config('search_path', 'x', false)",
        "SET search_path FROM CURRENT",
        "LOAD 'x'",
    ] {
        let mut fp = session();
        run(&mut fp, sql);
        assert!(!fp.cacheable(), "{sql} must taint");
        assert_eq!(fp.bytes(), None);
        run(&mut fp, "SET search_path = a");
        assert!(
            !fp.cacheable(),
            "{sql}: a later SET does not clear the taint"
        );
        let snapshot = params(&[("search_path", "x"), ("current_user", "alice")]);
        assert!(fp.reestablished(&snapshot));
        assert!(fp.cacheable());
        let probed = bytes(&fp);
        assert_ne!(
            probed,
            bytes(&session()),
            "the probe is part of the fingerprint"
        );
        // After a probe a RESET cannot simply drop the override: it is marked.
        run(&mut fp, "RESET search_path");
        assert_ne!(bytes(&fp), probed);
    }
    let mut fp = session();
    fp.taint("volatile function f()");
    assert_eq!(fp.taint_reason(), Some("volatile function f()"));
    run(&mut fp, "BEGIN");
    assert!(!fp.reestablished(&[]), "refused inside a block");
    assert!(!fp.cacheable());
}

#[test]
fn transaction_modes_are_mapped() {
    let mut a = session();
    run(
        &mut a,
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
    );
    let mut b = session();
    run(&mut b, "SET default_transaction_read_only = on");
    assert_eq!(bytes(&a), bytes(&b));
    // Order matters to the server and is kept by mapping onto the real names.
    let mut c = session();
    run(
        &mut c,
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY; SET default_transaction_read_only = off",
    );
    assert_ne!(bytes(&c), bytes(&a));
    let mut bad = session();
    run(&mut bad, "SET SESSION CHARACTERISTICS AS TRANSACTION BOGUS");
    assert!(!bad.cacheable());
}

#[test]
fn bounded_settings_taint() {
    let mut fp = session();
    for i in 0..MAX_SETTINGS {
        run(&mut fp, &format!("SET my.s{i} = {i}"));
    }
    assert!(!fp.cacheable());
    assert!(fp.taint_reason().is_some_and(|r| r.contains("too many")));
    let mut fp = session();
    run(
        &mut fp,
        &format!("SET search_path = '{}'", "a".repeat(MAX_STATE_BYTES)),
    );
    assert!(!fp.cacheable());
    let mut fp = session();
    run(&mut fp, "BEGIN");
    for i in 0..=MAX_SAVEPOINTS {
        fp.on_savepoint(&format!("s{i}"));
    }
    assert!(!fp.cacheable());
}

#[test]
fn encoding_is_cached_and_refreshed() {
    let mut fp = session();
    let first = fp.bytes().map(<[u8]>::as_ptr);
    assert_eq!(
        fp.bytes().map(<[u8]>::as_ptr),
        first,
        "second call reuses the encoding"
    );
    run(&mut fp, "SET search_path = a");
    let a = bytes(&fp);
    run(&mut fp, "SET search_path = b");
    assert_ne!(bytes(&fp), a, "a change invalidates the cached encoding");
}
