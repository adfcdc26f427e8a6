//! Tests of `track.rs` (kept apart so the module stays readable).

use super::*;

fn rel(name: &str, cols: u8) -> RelPrint {
    let mut aspects = [Some([1; 16]); 8];
    aspects[2] = Some([cols; 16]);
    RelPrint {
        name: Some(name.to_owned()),
        aspects,
    }
}

fn limits(n: usize) -> Limits {
    Limits {
        relations: n,
        functions: n,
    }
}

#[test]
fn baseline_kept_and_changes_reported_once() {
    let mut t = Tracked::new(limits(10));
    let mut base = Prints::default();
    base.relations.insert(1, rel("t", 1));
    base.rel_names.insert("t".into(), Some([5; 16]));
    base.namespaces = Some(HashMap::from([(2200, Some([7; 16]))]));
    t.insert("db", base).unwrap();
    // A second baseline never overwrites the first.
    let mut again = Prints::default();
    again.relations.insert(1, rel("t", 2));
    t.insert("db", again).unwrap();

    let mut poll = Prints::default();
    poll.relations.insert(1, rel("t", 2));
    poll.rel_names.insert("t".into(), Some([5; 16]));
    // A new schema alone changes nothing.
    poll.namespaces = Some(HashMap::from([(2200, Some([7; 16])), (9, Some([1; 16]))]));
    let changes = t.apply("db", poll);
    assert_eq!(
        changes,
        vec![Change::Relation {
            db: "db".into(),
            oid: 1,
            aspects: vec![Aspect::Columns]
        }]
    );
    let mut same = Prints::default();
    same.relations.insert(1, rel("t", 2));
    assert!(t.apply("db", same).is_empty());
    // A schema renamed or re-granted does.
    let schemas = Prints {
        namespaces: Some(HashMap::from([(2200, Some([8; 16])), (9, Some([1; 16]))])),
        ..Prints::default()
    };
    let changes = t.apply("db", schemas);
    assert_eq!(
        changes,
        vec![Change::Epoch {
            db: Some("db".into()),
            cause: EpochCause::Schemas
        }]
    );

    let mut dropped = Prints::default();
    dropped.relations.insert(
        1,
        RelPrint {
            name: None,
            aspects: [None; 8],
        },
    );
    dropped.rel_names.insert("t".into(), None);
    let changes = t.apply("db", dropped);
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert_eq!(t.counts(), (0, 0));
    t.forget_unused_names();
    assert!(t.snapshot()[0].1.rel_names.is_empty());
}

#[test]
fn a_name_is_signalled_when_it_changes_within_a_generation() {
    let mut t = Tracked::new(limits(10));
    let mut base = Prints::default();
    base.rel_names.insert("t".into(), Some([1; 16]));
    t.insert("db", base).unwrap();
    let at = |d: Option<Digest>| HashMap::from([("t".to_owned(), d)]);
    // First met in this generation: recorded.
    assert!(!t.moved_names("db", at(Some([1; 16]))));
    assert!(!t.moved_names("db", at(Some([1; 16]))));
    // Dropped and re-created: another OID under the name, signalled once.
    assert!(t.moved_names("db", at(Some([2; 16]))));
    assert!(!t.moved_names("db", at(Some([2; 16]))));
    // Dropped: signalled too (answers name a relation that is gone).
    assert!(t.moved_names("db", at(None)));
    // Created again.
    assert!(t.moved_names("db", at(Some([3; 16]))));
    // A new generation (a DDL through pgmemo, a poll's changes): nothing memoised
    // before is used again, so whatever the name carries now is only recorded.
    t.new_generation();
    assert!(!t.moved_names("db", at(Some([4; 16]))));
    assert!(t.moved_names("db", at(Some([5; 16]))));
    // The stored print is the poller's: it still reports the change.
    let poll = Prints {
        rel_names: at(Some([5; 16])),
        ..Prints::default()
    };
    assert_eq!(t.apply("db", poll).len(), 1);
}

#[test]
fn a_name_first_met_absent_is_signalled_when_it_appears_in_the_same_generation() {
    let mut t = Tracked::new(limits(10));
    let mut base = Prints::default();
    base.rel_names.insert("t".into(), None);
    t.insert("db", base).unwrap();
    let at = |d: Option<Digest>| HashMap::from([("t".to_owned(), d)]);
    assert!(!t.moved_names("db", at(None)));
    // An answer of this generation said "no such relation": plans made from it (a write
    // that could not be resolved) must not outlive its creation.
    assert!(t.moved_names("db", at(Some([1; 16]))));
    t.new_generation();
    assert!(!t.moved_names("db", at(Some([1; 16]))));
}

#[test]
fn bounded() {
    let t = Tracked::new(limits(2));
    let want = Want {
        relations: vec![1, 2, 3],
        ..Want::default()
    };
    assert!(matches!(
        t.missing("db", &want),
        Err(CatalogError::TrackingFull { .. })
    ));
    let want = Want {
        relations: vec![1, 1, 2],
        ..Want::default()
    };
    assert_eq!(t.missing("db", &want).unwrap().relations, vec![1, 2]);
}
