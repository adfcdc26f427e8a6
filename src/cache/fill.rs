//! Stampede protection: concurrent misses on one key wait for one upstream execution.
//!
//! The first miss on a key becomes the leader and holds a [`FillGuard`]; later misses get a
//! [`FillWaiter`] that waits, with a timeout, for the leader's result. The guard either
//! publishes the result (waking every waiter with it) or, when dropped without publishing —
//! the query failed, the client disconnected, the task was aborted — releases every waiter
//! with [`WaitOutcome::LeaderGaveUp`] so each runs its own query. A waiter that stops waiting
//! (dropped: its client cancelled) affects nobody else.
//!
//! moka's `get_with` coalesces too, but a waiter there cannot time out or be cancelled
//! separately from the leader, hence this module. The in-flight table is bounded: beyond
//! `max_in_flight` keys a miss proceeds alone (counted) instead of coalescing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use super::entry::Entry;
use super::key::{CacheKey, KeyBuildHasher, KeyCheck};
use super::stats::{Stats, WaitEnd};

/// Default bound on keys being filled at once.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 16_384;

/// The state a fill's waiters observe.
#[derive(Clone, Debug)]
enum FillState {
    Pending,
    Filled(Arc<Entry>),
    GaveUp,
}

/// One in-flight fill: the receiver waiters clone, and an id so that a guard only ever removes
/// its own slot (a later leader may have registered the same key after it).
struct Slot {
    id: u64,
    rx: watch::Receiver<FillState>,
}

/// The in-flight table.
pub(crate) struct Fills {
    slots: Mutex<HashMap<CacheKey, Slot, KeyBuildHasher>>,
    max_in_flight: usize,
    next_id: AtomicU64,
    stats: Arc<Stats>,
}

/// The first miss leads, later ones wait.
pub(crate) enum Begin {
    Leader(FillGuard),
    Waiter(FillWaiter),
}

impl Fills {
    pub(crate) fn new(max_in_flight: usize, stats: Arc<Stats>) -> Arc<Self> {
        Arc::new(Self {
            slots: Mutex::new(HashMap::with_hasher(KeyBuildHasher)),
            max_in_flight,
            next_id: AtomicU64::new(0),
            stats,
        })
    }

    /// Registers a miss on `key`: the caller leads the fill, or waits for the one under way.
    /// When the table is full the caller leads an unregistered fill that nobody can join.
    pub(crate) fn begin(self: &Arc<Self>, key: CacheKey, check: KeyCheck) -> Begin {
        let mut slots = self.lock();
        if let Some(slot) = slots.get(&key) {
            return Begin::Waiter(FillWaiter {
                rx: slot.rx.clone(),
                check,
                stats: Arc::clone(&self.stats),
                finished: false,
            });
        }
        if slots.len() >= self.max_in_flight {
            drop(slots);
            self.stats.uncoalesced.inc();
            return Begin::Leader(FillGuard {
                key,
                registration: None,
            });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(FillState::Pending);
        slots.insert(key, Slot { id, rx });
        Begin::Leader(FillGuard {
            key,
            registration: Some(Registration {
                fills: Arc::clone(self),
                id,
                tx,
            }),
        })
    }

    /// Keys being filled right now.
    pub(crate) fn in_flight(&self) -> usize {
        self.lock().len()
    }

    /// The table holds only receivers and ids, and every operation on it is a single insert or
    /// remove, so a panic elsewhere while it was locked cannot leave it inconsistent.
    fn lock(&self) -> MutexGuard<'_, HashMap<CacheKey, Slot, KeyBuildHasher>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A registered fill's link to its slot.
struct Registration {
    fills: Arc<Fills>,
    id: u64,
    tx: watch::Sender<FillState>,
}

/// Held by the session leading a fill. Publish the result with
/// [`Cache::complete`](super::Cache::complete); dropping the guard without publishing releases
/// every waiter.
pub struct FillGuard {
    key: CacheKey,
    /// `None` when the in-flight table was full: nobody can be waiting.
    registration: Option<Registration>,
}

impl std::fmt::Debug for FillGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FillGuard")
            .field("key", &self.key)
            .field("coalescing", &self.is_coalescing())
            .finish()
    }
}

impl FillGuard {
    /// The key being filled.
    pub fn key(&self) -> CacheKey {
        self.key
    }

    /// Whether other misses can join this fill (false when the in-flight table was full).
    pub fn is_coalescing(&self) -> bool {
        self.registration.is_some()
    }

    /// Wakes every waiter with `entry` and retires the fill.
    pub(crate) fn publish(mut self, entry: Arc<Entry>) {
        self.finish(FillState::Filled(entry));
    }

    /// Retires the fill: removes the slot (if still ours), then tells the waiters. Removing
    /// first means a miss arriving after the waiters wake leads a new fill instead of joining
    /// a finished one.
    fn finish(&mut self, state: FillState) {
        let Some(reg) = self.registration.take() else {
            return;
        };
        {
            let mut slots = reg.fills.lock();
            if slots.get(&self.key).is_some_and(|slot| slot.id == reg.id) {
                slots.remove(&self.key);
            }
        }
        // Waiters that already left dropped their receivers; nobody listening is fine.
        reg.tx.send_replace(state);
    }
}

impl Drop for FillGuard {
    /// A leader that did not publish (error, disconnect, cancellation, task aborted) releases
    /// its waiters so they run their own queries. Runs on every path that drops the guard,
    /// including a panic unwinding through the leader's task.
    fn drop(&mut self) {
        self.finish(FillState::GaveUp);
    }
}

/// How a wait for another session's fill ended.
#[derive(Clone, Debug)]
pub enum WaitOutcome {
    /// The leader's result: answer the client with it.
    Filled(Arc<Entry>),
    /// The leader failed or went away: run the query yourself.
    LeaderGaveUp,
    /// The wait took too long: run the query yourself.
    TimedOut,
}

/// Held by a session waiting for another session's fill. Dropping it (the client cancelled)
/// stops waiting and affects nobody else.
pub struct FillWaiter {
    rx: watch::Receiver<FillState>,
    check: KeyCheck,
    stats: Arc<Stats>,
    finished: bool,
}

impl std::fmt::Debug for FillWaiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FillWaiter")
            .field("check", &self.check)
            .finish()
    }
}

impl FillWaiter {
    /// Waits up to `timeout` for the leader. Cancel-safe: dropping the future is a clean
    /// cancellation (counted as such). No lock is held across the await.
    pub async fn wait(mut self, timeout: Duration) -> WaitOutcome {
        let waited = tokio::time::timeout(timeout, async {
            match self.rx.wait_for(|s| !matches!(s, FillState::Pending)).await {
                Ok(state) => state.clone(),
                // The sender is gone without a final state: only possible if the guard was
                // leaked mid-drop; treat it as the leader giving up.
                Err(_) => FillState::GaveUp,
            }
        })
        .await;
        self.finished = true;
        let (outcome, end) = match waited {
            Ok(FillState::Filled(entry)) if entry.check == self.check => {
                (WaitOutcome::Filled(entry), WaitEnd::Filled)
            }
            Ok(FillState::Filled(_)) => {
                // Same 128-bit key, different check: a collision, not our result.
                self.stats.collisions.inc();
                (WaitOutcome::LeaderGaveUp, WaitEnd::LeaderGaveUp)
            }
            Ok(FillState::GaveUp | FillState::Pending) => {
                (WaitOutcome::LeaderGaveUp, WaitEnd::LeaderGaveUp)
            }
            Err(_) => (WaitOutcome::TimedOut, WaitEnd::TimedOut),
        };
        self.stats.wait_ended(end).inc();
        outcome
    }
}

impl Drop for FillWaiter {
    fn drop(&mut self) {
        if !self.finished {
            self.stats.wait_ended(WaitEnd::Cancelled).inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    const KEY: CacheKey = CacheKey(7);
    const CHECK: KeyCheck = KeyCheck(70);
    const LONG: Duration = Duration::from_secs(10);

    fn fills(max: usize) -> (Arc<Fills>, Arc<Stats>) {
        let stats = Arc::new(Stats::new());
        (Fills::new(max, Arc::clone(&stats)), stats)
    }

    fn entry(check: KeyCheck) -> Arc<Entry> {
        Arc::new(Entry::new(
            check,
            Bytes::from_static(b"rows"),
            Duration::ZERO,
            Box::new([]),
        ))
    }

    fn leader(b: Begin) -> FillGuard {
        match b {
            Begin::Leader(g) => g,
            Begin::Waiter(_) => panic!("expected to lead"),
        }
    }

    fn waiter(b: Begin) -> FillWaiter {
        match b {
            Begin::Waiter(w) => w,
            Begin::Leader(_) => panic!("expected to wait"),
        }
    }

    #[tokio::test]
    async fn waiters_get_the_leaders_result() {
        let (f, stats) = fills(16);
        let guard = leader(f.begin(KEY, CHECK));
        assert!(guard.is_coalescing());
        let tasks: Vec<_> = (0..5)
            .map(|_| tokio::spawn(waiter(f.begin(KEY, CHECK)).wait(LONG)))
            .collect();
        // Another key is independent.
        let other = leader(f.begin(CacheKey(8), CHECK));
        assert_eq!(f.in_flight(), 2);
        tokio::task::yield_now().await;
        let e = entry(CHECK);
        guard.publish(Arc::clone(&e));
        for t in tasks {
            match t.await.unwrap() {
                WaitOutcome::Filled(got) => assert!(Arc::ptr_eq(&got, &e)),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(f.in_flight(), 1);
        drop(other);
        assert_eq!(f.in_flight(), 0);
        // After the fill, the next miss leads again.
        let _again = leader(f.begin(KEY, CHECK));
        assert_eq!(stats.snapshot().waits_filled, 5);
    }

    #[tokio::test]
    async fn a_waiter_arriving_after_publication_is_a_new_leader() {
        let (f, _) = fills(16);
        leader(f.begin(KEY, CHECK)).publish(entry(CHECK));
        let _g = leader(f.begin(KEY, CHECK));
    }

    #[tokio::test]
    async fn dropping_the_guard_releases_waiters() {
        let (f, stats) = fills(16);
        let guard = leader(f.begin(KEY, CHECK));
        let w1 = tokio::spawn(waiter(f.begin(KEY, CHECK)).wait(LONG));
        let w2 = waiter(f.begin(KEY, CHECK));
        drop(guard); // the upstream query failed
        assert!(matches!(w1.await.unwrap(), WaitOutcome::LeaderGaveUp));
        // A waiter that starts waiting after the leader gave up returns at once.
        assert!(matches!(w2.wait(LONG).await, WaitOutcome::LeaderGaveUp));
        assert_eq!(f.in_flight(), 0);
        assert_eq!(stats.snapshot().waits_leader_gave_up, 2);
    }

    #[tokio::test]
    async fn aborting_the_leaders_task_releases_waiters() {
        let (f, _) = fills(16);
        let guard = leader(f.begin(KEY, CHECK));
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let leader_task = tokio::spawn(async move {
            let _guard = guard;
            let _ = started_tx.send(());
            // The upstream query that never answers.
            std::future::pending::<()>().await;
        });
        started_rx.await.unwrap();
        let w = tokio::spawn(waiter(f.begin(KEY, CHECK)).wait(LONG));
        leader_task.abort();
        assert!(leader_task.await.unwrap_err().is_cancelled());
        let outcome = tokio::time::timeout(Duration::from_secs(2), w)
            .await
            .expect("waiter released promptly")
            .unwrap();
        assert!(matches!(outcome, WaitOutcome::LeaderGaveUp));
        assert_eq!(f.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_panicking_leader_releases_waiters() {
        let (f, _) = fills(16);
        let guard = leader(f.begin(KEY, CHECK));
        let w = tokio::spawn(waiter(f.begin(KEY, CHECK)).wait(LONG));
        let leader_task = tokio::spawn(async move {
            let _guard = guard;
            panic!("leader failed mid-fill");
        });
        assert!(leader_task.await.unwrap_err().is_panic());
        assert!(matches!(w.await.unwrap(), WaitOutcome::LeaderGaveUp));
    }

    #[tokio::test]
    async fn waiters_time_out_and_the_fill_goes_on() {
        let (f, stats) = fills(16);
        let guard = leader(f.begin(KEY, CHECK));
        let outcome = waiter(f.begin(KEY, CHECK))
            .wait(Duration::from_millis(100))
            .await;
        assert!(matches!(outcome, WaitOutcome::TimedOut));
        // The fill is still registered; a later waiter still gets the result.
        let late = tokio::spawn(waiter(f.begin(KEY, CHECK)).wait(LONG));
        tokio::task::yield_now().await;
        guard.publish(entry(CHECK));
        assert!(matches!(late.await.unwrap(), WaitOutcome::Filled(_)));
        let s = stats.snapshot();
        assert_eq!((s.waits_timed_out, s.waits_filled), (1, 1));
    }

    #[tokio::test]
    async fn a_cancelled_waiter_affects_nobody() {
        let (f, stats) = fills(16);
        let guard = leader(f.begin(KEY, CHECK));
        let cancelled = tokio::spawn(waiter(f.begin(KEY, CHECK)).wait(LONG));
        let patient = tokio::spawn(waiter(f.begin(KEY, CHECK)).wait(LONG));
        tokio::task::yield_now().await;
        cancelled.abort();
        assert!(cancelled.await.unwrap_err().is_cancelled());
        // Dropping a waiter that never started waiting counts as a cancellation too.
        drop(waiter(f.begin(KEY, CHECK)));
        assert_eq!(f.in_flight(), 1, "the fill is still under way");
        guard.publish(entry(CHECK));
        assert!(matches!(patient.await.unwrap(), WaitOutcome::Filled(_)));
        let s = stats.snapshot();
        assert_eq!((s.waits_cancelled, s.waits_filled), (2, 1), "{s:?}");
    }

    #[tokio::test]
    async fn a_colliding_result_is_not_handed_out() {
        let (f, stats) = fills(16);
        let guard = leader(f.begin(KEY, KeyCheck(1)));
        let w = tokio::spawn(waiter(f.begin(KEY, KeyCheck(2))).wait(LONG));
        tokio::task::yield_now().await;
        guard.publish(entry(KeyCheck(1)));
        assert!(matches!(w.await.unwrap(), WaitOutcome::LeaderGaveUp));
        assert_eq!(stats.snapshot().collisions, 1);
    }

    #[tokio::test]
    async fn a_full_table_does_not_coalesce() {
        let (f, stats) = fills(2);
        let _a = leader(f.begin(CacheKey(1), CHECK));
        let _b = leader(f.begin(CacheKey(2), CHECK));
        let c1 = leader(f.begin(CacheKey(3), CHECK));
        let c2 = leader(f.begin(CacheKey(3), CHECK));
        assert!(!c1.is_coalescing() && !c2.is_coalescing());
        assert_eq!(f.in_flight(), 2);
        c1.publish(entry(CHECK));
        drop(c2);
        assert_eq!(f.in_flight(), 2, "unregistered guards touch no slot");
        // Joining a registered fill still works while the table is full.
        let _w = waiter(f.begin(CacheKey(1), CHECK));
        assert_eq!(stats.snapshot().uncoalesced, 2);
    }

    #[tokio::test]
    async fn an_old_guard_never_removes_a_newer_slot() {
        let (f, _) = fills(16);
        let old = leader(f.begin(KEY, CHECK));
        // The id check is defence in depth: simulate the old slot being replaced behind the
        // old guard's back by a new leader of the same key.
        f.lock().remove(&KEY);
        let new = leader(f.begin(KEY, CHECK));
        let w = waiter(f.begin(KEY, CHECK));
        drop(old);
        assert_eq!(f.in_flight(), 1, "the new leader's slot survives");
        new.publish(entry(CHECK));
        assert!(matches!(w.wait(LONG).await, WaitOutcome::Filled(_)));
    }
}
