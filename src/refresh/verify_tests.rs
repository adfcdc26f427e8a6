//! Unit tests of verify mode's sampling, bounds and verdict.

use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::cache::{Dep, KeyCheck, Tag};

const T: Tag = Tag { db: 1, rel: 10 };
const OTHER: Tag = Tag { db: 1, rel: 11 };

fn entry() -> Arc<Entry> {
    Arc::new(Entry::new(
        KeyCheck(1),
        Bytes::from_static(b"C\0\0\0\x0dSELECT 0\0"),
        Duration::ZERO,
        Box::new([T]),
    ))
}

#[test]
fn a_difference_is_a_mismatch_only_while_the_served_result_is_current() {
    let versions = Versions::new(16);
    let served = entry();
    let weak = Arc::downgrade(&served);
    let snapshot = versions.snapshot_deps(&[Dep::Table(T)]);
    assert_eq!(judge(true, &snapshot, &versions, &weak), Verdict::Matched);
    assert_eq!(
        judge(false, &snapshot, &versions, &weak),
        Verdict::Mismatched
    );
    // A write to another table does not excuse it.
    versions.bump(&[OTHER]);
    assert_eq!(
        judge(false, &snapshot, &versions, &weak),
        Verdict::Mismatched
    );
    // A write to its table (through pgmemo, or streamed) committed since the hit: raced.
    versions.bump(&[T]);
    assert_eq!(judge(false, &snapshot, &versions, &weak), Verdict::Raced);
    // An equal answer is a match whatever moved.
    assert_eq!(judge(true, &snapshot, &versions, &weak), Verdict::Matched);
}

#[test]
fn an_epoch_bump_or_the_entry_leaving_the_cache_is_a_race() {
    let versions = Versions::new(16);
    let served = entry();
    let weak = Arc::downgrade(&served);
    let snapshot = versions.snapshot_deps(&[Dep::Table(T)]);
    versions.bump_epoch(crate::cache::EpochCause::Admin);
    assert_eq!(judge(false, &snapshot, &versions, &weak), Verdict::Raced);

    let snapshot = versions.snapshot_deps(&[Dep::Table(T)]);
    assert_eq!(
        judge(false, &snapshot, &versions, &weak),
        Verdict::Mismatched
    );
    // Replaced (refresh-ahead), expired or evicted: what is served now is another entry.
    served.mark_evicted();
    assert_eq!(judge(false, &snapshot, &versions, &weak), Verdict::Raced);
    let gone = Arc::downgrade(&entry());
    assert_eq!(judge(false, &snapshot, &versions, &gone), Verdict::Raced);
}

#[test]
fn sampling_follows_the_fraction_and_zero_samples_nothing() {
    let verify = Verify::new(0.0, 50);
    let mut rng = Rng::new(7);
    assert!((0..100_000).all(|_| !verify.sampled(&mut rng)));
    verify.set_sample(1.0);
    assert!((0..100_000).all(|_| verify.sampled(&mut rng)));
    verify.set_sample(0.01);
    let n = (0..100_000).filter(|_| verify.sampled(&mut rng)).count();
    assert!((700..1300).contains(&n), "{n} of 100,000 at 1 %");
    for off in [-1.0, f64::NAN] {
        verify.set_sample(off);
        assert!((0..1000).all(|_| !verify.sampled(&mut rng)));
    }
}

#[test]
fn checks_in_flight_are_bounded_in_count_and_bytes() {
    let verify = Verify::new(1.0, 50);
    let held: Vec<Permit> = (0..MAX_IN_FLIGHT)
        .map(|_| verify.permit(0).expect("room"))
        .collect();
    assert!(verify.permit(0).is_none(), "count bound");
    assert_eq!(verify.in_flight(), MAX_IN_FLIGHT);
    drop(held);
    assert_eq!(verify.in_flight(), 0);
    let big = verify.permit(MAX_BYTES / 2).expect("half");
    assert!(verify.permit(MAX_BYTES / 2).is_none(), "byte bound");
    assert_eq!(verify.in_flight(), 1, "a refusal leaves nothing taken");
    drop(big);
    assert!(verify.permit(MAX_BYTES / 2).is_some());
}

#[test]
fn checks_are_refused_until_the_checker_runs_and_give_their_permit_back() {
    let verify = Verify::new(1.0, 50);
    let recipe = || Recipe::for_tests("SELECT 1", &[]);
    let versions = Versions::new(16);
    let snapshot = versions.snapshot_deps(&[]);
    let permit = verify.permit(8).expect("room");
    assert!(!verify.submit(recipe(), Weak::new(), snapshot.clone(), permit));
    assert_eq!(verify.in_flight(), 0);
    let mut rx = verify.open().expect("first open");
    let permit = verify.permit(8).expect("room");
    assert!(verify.submit(recipe(), Weak::new(), snapshot, permit));
    assert_eq!(verify.in_flight(), 1);
    drop(rx.try_recv().expect("queued"));
    assert_eq!(verify.in_flight(), 0);
}

#[test]
fn checks_are_capped_per_second_and_the_cap_restarts_each_second() {
    let cap = RateCap::new(3);
    let t0 = cap.origin;
    assert_eq!(
        (0..10).filter(|_| cap.admit(t0)).count(),
        3,
        "3 in the first second"
    );
    let later = t0 + Duration::from_millis(999);
    assert!(!cap.admit(later), "still the first second");
    let next = t0 + Duration::from_millis(1000);
    assert_eq!(
        (0..10).filter(|_| cap.admit(next)).count(),
        3,
        "a new second"
    );
    // A reload lowers the cap mid-second: nothing more this second.
    cap.per_second.store(1, Ordering::Relaxed);
    assert!(!cap.admit(next));
    let far = t0 + Duration::from_secs(7);
    assert!(cap.admit(far));
    assert!(!cap.admit(far));
    cap.per_second.store(0, Ordering::Relaxed);
    assert!(!cap.admit(t0 + Duration::from_secs(9)), "0 admits nothing");
}

#[test]
fn the_cap_holds_under_concurrent_admissions() {
    let verify = Arc::new(Verify::new(1.0, 100));
    let now = Instant::now();
    let admitted: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| (0..1000).filter(|_| verify.rate.admit(now)).count()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    assert_eq!(admitted, 100);
}
