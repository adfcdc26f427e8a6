//! Statements the keyword parser reads: transaction control, session changes, utility verbs,
//! DO, LOAD, REFRESH MATERIALIZED VIEW.

use super::*;
use crate::sql::{Class, DiscardKind, NotCacheable, SessionChange, TxnControl};

fn class(sql: &str) -> Class {
    let s = one(sql);
    assert_eq!(s.reason, Some(NotCacheable::NotSelect), "{sql}: {s:#?}");
    assert!(
        s.writes.is_empty() && !s.epoch_bump && !s.taints_session,
        "{sql}: {s:#?}"
    );
    s.class
}

fn txn(sql: &str) -> TxnControl {
    match class(sql) {
        Class::TransactionControl(t) => t,
        other => panic!("{sql}: {other:?}"),
    }
}

fn session(sql: &str) -> SessionChange {
    match class(sql) {
        Class::SessionChange(c) => c,
        other => panic!("{sql}: {other:?}"),
    }
}

fn set(name: &str, value: Option<&str>, local: bool) -> SessionChange {
    SessionChange::Set {
        name: name.into(),
        value: value.map(Into::into),
        local,
    }
}

#[test]
fn transaction_control() {
    use TxnControl::*;
    for (sql, want) in [
        ("BEGIN", Begin),
        ("begin work", Begin),
        ("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY", Begin),
        ("START TRANSACTION READ WRITE", Begin),
        ("COMMIT", Commit),
        ("COMMIT WORK", Commit),
        ("END TRANSACTION", Commit),
        ("COMMIT AND CHAIN", CommitAndChain),
        ("END AND CHAIN", CommitAndChain),
        ("COMMIT AND NO CHAIN", Commit),
        ("ROLLBACK", Rollback),
        ("ABORT", Rollback),
        ("ROLLBACK AND CHAIN", RollbackAndChain),
        ("ABORT WORK AND CHAIN", RollbackAndChain),
        ("SAVEPOINT s1", Savepoint("s1".into())),
        ("SAVEPOINT \"S1\"", Savepoint("S1".into())),
        ("ROLLBACK TO SAVEPOINT S1", RollbackToSavepoint("s1".into())),
        ("ROLLBACK WORK TO s1", RollbackToSavepoint("s1".into())),
        ("RELEASE SAVEPOINT s1", ReleaseSavepoint("s1".into())),
        ("RELEASE s1", ReleaseSavepoint("s1".into())),
        (
            "PREPARE TRANSACTION 'g''1'",
            PrepareTransaction("g'1".into()),
        ),
        ("COMMIT PREPARED 'g1'", CommitPrepared("g1".into())),
        ("ROLLBACK PREPARED $$g1$$", RollbackPrepared("g1".into())),
        // A literal form we do not decode keeps its spelling, marked so it cannot collide.
        ("COMMIT PREPARED E'g1'", CommitPrepared("\0E'g1'".into())),
    ] {
        assert_eq!(txn(sql), want, "{sql}");
    }
}

#[test]
fn malformed_transaction_control_is_unknown() {
    for sql in [
        "COMMIT PREPARED",
        "ROLLBACK TO",
        "COMMIT AND",
        "START",
        "COMMIT garbage",
    ] {
        let s = one(sql);
        assert_eq!(s.class, Class::Write, "{sql}: {s:#?}");
        assert!(s.epoch_bump && s.taints_session, "{sql}");
    }
}

#[test]
fn set_reset_and_friends() {
    for (sql, want) in [
        (
            "SET search_path TO a, \"B\"",
            set("search_path", Some("a , \"B\""), false),
        ),
        (
            "SET search_path = \"$user\", public",
            set("search_path", Some("\"$user\" , public"), false),
        ),
        (
            "SET LOCAL statement_timeout = 5",
            set("statement_timeout", Some("5"), true),
        ),
        (
            "SET SESSION DateStyle TO 'ISO, MDY'",
            set("datestyle", Some("'ISO, MDY'"), false),
        ),
        (
            "SET \"Search_Path\" = a",
            set("search_path", Some("a"), false),
        ),
        (
            "SET pgmemo.cache = off",
            set("pgmemo.cache", Some("off"), false),
        ),
        (
            "SET search_path TO DEFAULT",
            set("search_path", None, false),
        ),
        ("SET TIME ZONE 'UTC'", set("timezone", Some("'UTC'"), false)),
        ("SET TIME ZONE LOCAL", set("timezone", None, false)),
        (
            "SET LOCAL TIME ZONE INTERVAL '+02:00' HOUR TO MINUTE",
            set("timezone", Some("INTERVAL '+02:00' HOUR TO MINUTE"), true),
        ),
        ("SET SCHEMA 'app'", set("search_path", Some("'app'"), false)),
        (
            "SET NAMES 'UTF8'",
            set("client_encoding", Some("'UTF8'"), false),
        ),
        (
            "SET XML OPTION DOCUMENT",
            set("xmloption", Some("DOCUMENT"), false),
        ),
        (
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            set("transaction", Some("ISOLATION LEVEL SERIALIZABLE"), true),
        ),
        (
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
            set("session_characteristics", Some("READ ONLY"), false),
        ),
        (
            "SET ROLE app",
            SessionChange::SetRole {
                role: Some("app".into()),
                local: false,
            },
        ),
    ] {
        assert_eq!(session(sql), want, "{sql}");
    }
}

#[test]
fn roles_authorization_and_prepared_statements() {
    for (sql, want) in [
        (
            "SET ROLE 'App'",
            SessionChange::SetRole {
                role: Some("App".into()),
                local: false,
            },
        ),
        (
            "SET LOCAL ROLE \"App\"",
            SessionChange::SetRole {
                role: Some("App".into()),
                local: true,
            },
        ),
        (
            "SET ROLE NONE",
            SessionChange::SetRole {
                role: None,
                local: false,
            },
        ),
        ("RESET ROLE", SessionChange::ResetRole),
        (
            "SET SESSION AUTHORIZATION bob",
            SessionChange::SetSessionAuthorization {
                user: Some("bob".into()),
                local: false,
            },
        ),
        (
            "SET LOCAL SESSION AUTHORIZATION 'Bob'",
            SessionChange::SetSessionAuthorization {
                user: Some("Bob".into()),
                local: true,
            },
        ),
        (
            "SET SESSION AUTHORIZATION DEFAULT",
            SessionChange::SetSessionAuthorization {
                user: None,
                local: false,
            },
        ),
        (
            "RESET SESSION AUTHORIZATION",
            SessionChange::SetSessionAuthorization {
                user: None,
                local: false,
            },
        ),
        (
            "RESET search_path",
            SessionChange::Reset {
                name: Some("search_path".into()),
            },
        ),
        (
            "RESET TIME ZONE",
            SessionChange::Reset {
                name: Some("timezone".into()),
            },
        ),
        ("RESET ALL", SessionChange::Reset { name: None }),
        ("DISCARD ALL", SessionChange::Discard(DiscardKind::All)),
        ("DISCARD PLANS", SessionChange::Discard(DiscardKind::Plans)),
        (
            "DISCARD SEQUENCES",
            SessionChange::Discard(DiscardKind::Sequences),
        ),
        ("DISCARD TEMP", SessionChange::Discard(DiscardKind::Temp)),
        (
            "DISCARD TEMPORARY",
            SessionChange::Discard(DiscardKind::Temp),
        ),
        (
            "DEALLOCATE p",
            SessionChange::Deallocate {
                name: Some("p".into()),
            },
        ),
        (
            "DEALLOCATE PREPARE \"P\"",
            SessionChange::Deallocate {
                name: Some("P".into()),
            },
        ),
        (
            "DEALLOCATE \"ALL\"",
            SessionChange::Deallocate {
                name: Some("ALL".into()),
            },
        ),
        ("DEALLOCATE ALL", SessionChange::Deallocate { name: None }),
    ] {
        assert_eq!(session(sql), want, "{sql}");
    }
}

#[test]
fn set_values_keep_their_spelling_apart() {
    // Two different values never share a text: the fingerprint depends on it.
    let value = |sql: &str| match session(sql) {
        SessionChange::Set { value, .. } => value,
        other => panic!("{other:?}"),
    };
    assert_ne!(
        value("SET search_path = a"),
        value("SET search_path = \"A\"")
    );
    assert_ne!(value("SET x = 'a b'"), value("SET x = 'a  b'"));
    assert_eq!(value("SET x = a,b"), value("SET x TO a , b"));
}

#[test]
fn unmodelled_set_taints_the_session() {
    for sql in [
        "SET",
        "SET x",
        "SET x FROM CURRENT",
        "RESET",
        "DISCARD everything",
        "SET ROLE",
    ] {
        let s = one(sql);
        assert_eq!(
            s.class,
            Class::SessionChange(SessionChange::Unrecognized),
            "{sql}"
        );
        assert!(s.taints_session && !s.epoch_bump, "{sql}: {s:#?}");
    }
    let non_utf8 = analyze(b"SET application_name = '\xff'");
    assert_eq!(
        non_utf8.statements[0].class,
        Class::SessionChange(SessionChange::Unrecognized)
    );
}

#[test]
fn utility_verbs_never_write() {
    for sql in [
        "SHOW search_path",
        "SHOW ALL",
        "FETCH 10 FROM c",
        "FETCH NEXT c",
        "MOVE NEXT FROM c",
        "CLOSE c",
        "CLOSE ALL",
        "LISTEN foo",
        "UNLISTEN *",
        "NOTIFY foo, 'payload'",
        "VACUUM t",
        "VACUUM (FULL, ANALYZE) t",
        "ANALYZE t",
        "ANALYSE VERBOSE",
        "CHECKPOINT",
        "REINDEX TABLE t",
        "CLUSTER t USING i",
        "LOCK TABLE t IN ACCESS EXCLUSIVE MODE",
        "LOCK ONLY t",
        "SET CONSTRAINTS ALL DEFERRED",
    ] {
        assert_eq!(class(sql), Class::Utility, "{sql}");
    }
}

#[test]
fn do_and_load_run_invisible_code() {
    for sql in [
        "DO $$ BEGIN UPDATE t SET a = 1; END $$",
        "DO LANGUAGE plpgsql 'BEGIN END'",
        "LOAD 'auto_explain'",
    ] {
        let s = one(sql);
        assert_eq!(s.class, Class::Other, "{sql}");
        assert!(s.epoch_bump && s.taints_session, "{sql}: {s:#?}");
    }
}

#[test]
fn refresh_materialized_view_writes_the_view() {
    for (sql, view) in [
        ("REFRESH MATERIALIZED VIEW m", "m"),
        ("REFRESH MATERIALIZED VIEW CONCURRENTLY s.m", "s.m"),
        ("refresh materialized view M with no data", "m"),
        ("REFRESH MATERIALIZED VIEW s.m WITH DATA", "s.m"),
    ] {
        let s = one(sql);
        assert_eq!(
            (s.class.clone(), s.writes.clone()),
            (Class::Write, rels(&[view])),
            "{sql}"
        );
        assert!(!s.epoch_bump, "{sql}");
    }
    let s = one("REFRESH MATERIALIZED VIEW");
    assert!(s.epoch_bump && s.class == Class::Write, "{s:#?}");
}
