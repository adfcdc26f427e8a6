//! pgmemo's own side connections to a database (the catalog's pool and its poller, the
//! change stream and its lag monitor) must not outlive that database's client sessions: a
//! side connection left in a database makes `DROP DATABASE`, `ALTER DATABASE ... RENAME`,
//! `... SET TABLESPACE` and `CREATE DATABASE ... TEMPLATE` fail with "is being accessed by
//! other users" (issue 16 item 2). [`Presence`] counts the client sessions of each database
//! on this instance; a database is *active* while it has one, and for [`IDLE_GRACE`] after
//! its last one ended. The owners of side connections ask it: the catalog closes the pool
//! of an inactive database and stops polling it (and re-polls it before its cache is used
//! again), the change stream stops when so configured. [`release`] ends the grace at once,
//! before a client statement that needs the database free is forwarded.
//!
//! Nothing here does I/O or spawns; waiting is on a [`Notify`] that every change wakes.

pub mod release;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// How long side connections to a database stay open after its last client session ended:
/// long enough that a client reconnecting at once (a pool cycling its connections, a test
/// suite's next test) keeps them, short enough that a `DROP DATABASE` issued right after
/// the last session of that database (asyncpg's tests, an application's clean-up, by hand)
/// finds the database free: PostgreSQL waits up to 5 s for other sessions to leave.
pub const IDLE_GRACE: Duration = Duration::from_secs(1);

/// How long a released database stays inactive whatever the configuration says about
/// idle streams (the statement that needed it free runs meanwhile); a client session of
/// that database ends it sooner.
pub const RELEASE_HOLD: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct Entry {
    /// Client sessions of this database on this instance.
    sessions: usize,
    /// When the last one ended (`None` while there are sessions, or before the first).
    idle_since: Option<Instant>,
    /// Until when another instance's sessions use it (the CDC lease holder learns this
    /// from Redis; see `cdc::elect`).
    remote_until: Option<Instant>,
    /// Released for a statement that needs it free: inactive until then, unless a
    /// session of the database starts.
    released_until: Option<Instant>,
}

impl Entry {
    fn active(&self, now: Instant, grace: Duration) -> bool {
        if self.sessions > 0 {
            return true;
        }
        if self.released_until.is_some_and(|t| now < t) {
            return false;
        }
        self.idle_since.is_some_and(|t| now < t + grace)
            || self.remote_until.is_some_and(|t| now < t)
    }

    /// When `active` may turn false without another change (the next time to look).
    fn deadline(&self, grace: Duration) -> Option<Instant> {
        if self.sessions > 0 {
            return None;
        }
        let grace = self.idle_since.map(|t| t + grace);
        match (grace, self.remote_until) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    fn forgettable(&self, now: Instant, grace: Duration) -> bool {
        self.sessions == 0
            && !self.active(now, grace)
            && self.released_until.is_none_or(|t| now >= t)
    }
}

/// Client sessions per database on this instance (share it in an `Arc`).
#[derive(Debug)]
pub struct Presence {
    grace: Duration,
    /// Bounded by the live sessions' databases plus those that left within the grace or
    /// hold: entries that are neither are removed whenever the map changes.
    dbs: Mutex<HashMap<String, Entry>>,
    changed: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Presence {
    pub fn new() -> Arc<Self> {
        Self::with_grace(IDLE_GRACE)
    }

    /// With another grace than [`IDLE_GRACE`] (tests).
    pub fn with_grace(grace: Duration) -> Arc<Self> {
        Arc::new(Self {
            grace,
            dbs: Mutex::new(HashMap::new()),
            changed: Notify::new(),
        })
    }

    /// A client session of `db` starts; it counts until the guard drops.
    pub fn enter(self: &Arc<Self>, db: &str) -> SessionGuard {
        {
            let mut dbs = lock(&self.dbs);
            let entry = dbs.entry(db.to_owned()).or_default();
            entry.sessions += 1;
            entry.idle_since = None;
            entry.released_until = None;
        }
        self.changed.notify_waiters();
        SessionGuard {
            presence: Arc::clone(self),
            db: db.to_owned(),
        }
    }

    fn leave(&self, db: &str) {
        {
            let mut dbs = lock(&self.dbs);
            if let Some(entry) = dbs.get_mut(db) {
                entry.sessions = entry.sessions.saturating_sub(1);
                if entry.sessions == 0 {
                    entry.idle_since = Some(Instant::now());
                }
            }
            let now = Instant::now();
            dbs.retain(|_, e| !e.forgettable(now, self.grace));
        }
        self.changed.notify_waiters();
    }

    /// Whether side connections to `db` may be open now.
    pub fn active(&self, db: &str) -> bool {
        lock(&self.dbs)
            .get(db)
            .is_some_and(|e| e.active(Instant::now(), self.grace))
    }

    /// Client sessions of `db` on this instance now.
    pub fn sessions(&self, db: &str) -> usize {
        lock(&self.dbs).get(db).map_or(0, |e| e.sessions)
    }

    /// Whether `db` was released and the hold has not ended (no session since).
    pub fn released(&self, db: &str) -> bool {
        let now = Instant::now();
        lock(&self.dbs)
            .get(db)
            .is_some_and(|e| e.sessions == 0 && e.released_until.is_some_and(|t| now < t))
    }

    /// Databases with client sessions on this instance (what it tells the CDC holder).
    pub fn with_sessions(&self) -> Vec<String> {
        lock(&self.dbs)
            .iter()
            .filter(|(_, e)| e.sessions > 0)
            .map(|(db, _)| db.clone())
            .collect()
    }

    /// Another instance's sessions use `db` (for `for_at_least` from now); also warming,
    /// whose results wait for this instance's first client of `db`. Ended at once by
    /// [`Presence::release`].
    pub fn touch_remote(&self, db: &str, for_at_least: Duration) {
        let until = Instant::now() + for_at_least;
        let mut dbs = lock(&self.dbs);
        let entry = dbs.entry(db.to_owned()).or_default();
        if entry.released_until.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let was = entry.active(Instant::now(), self.grace);
        entry.remote_until = Some(entry.remote_until.map_or(until, |t| t.max(until)));
        drop(dbs);
        if !was {
            self.changed.notify_waiters();
        }
    }

    /// Ends `db`'s grace at once (a statement that needs it free is about to run): its side
    /// connections are to close now and stay closed for [`RELEASE_HOLD`] unless a session
    /// of `db` starts. Returns false (and changes nothing) while `db` has sessions here: the
    /// statement fails on them anyway.
    pub fn release(&self, db: &str) -> bool {
        {
            let mut dbs = lock(&self.dbs);
            let entry = dbs.entry(db.to_owned()).or_default();
            if entry.sessions > 0 {
                return false;
            }
            entry.released_until = Some(Instant::now() + RELEASE_HOLD);
            entry.remote_until = None;
        }
        self.changed.notify_waiters();
        true
    }

    /// Resolves at the next change of any database's presence, or when a grace may have
    /// ended (at most `max` from now).
    pub async fn changed(&self, max: Duration) {
        let notified = self.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let next = {
            let now = Instant::now();
            lock(&self.dbs)
                .values()
                .filter_map(|e| e.deadline(self.grace))
                .filter(|t| *t > now)
                .min()
        };
        let wait = next.map_or(max, |t| {
            t.saturating_duration_since(Instant::now())
                .min(max)
                .max(Duration::from_millis(1))
        });
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }

    /// Waits until `active(db)` is `want`.
    pub async fn until(&self, db: &str, want: bool) {
        loop {
            if self.active(db) == want {
                return;
            }
            self.changed(Duration::from_millis(250)).await;
        }
    }
}

/// One client session's presence in its database; dropping it ends it.
#[derive(Debug)]
pub struct SessionGuard {
    presence: Arc<Presence>,
    db: String,
}

impl SessionGuard {
    pub fn database(&self) -> &str {
        &self.db
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.presence.leave(&self.db);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_millis(100);

    #[tokio::test]
    async fn a_database_stays_active_for_the_grace_after_its_last_session() {
        let p = Presence::with_grace(GRACE);
        assert!(!p.active("x"), "never used: inactive");
        let a = p.enter("x");
        let b = p.enter("x");
        assert!(p.active("x") && p.sessions("x") == 2);
        drop(a);
        assert!(p.active("x"));
        drop(b);
        assert!(p.active("x"), "within the grace");
        tokio::time::sleep(GRACE + Duration::from_millis(20)).await;
        assert!(!p.active("x"));
        assert!(lock(&p.dbs).contains_key("x"), "kept until a change");
        drop(p.enter("y"));
        assert!(!lock(&p.dbs).contains_key("x"), "then forgotten");
    }

    #[tokio::test]
    async fn release_ends_the_grace_unless_a_session_is_there() {
        let p = Presence::with_grace(Duration::from_secs(60));
        let a = p.enter("x");
        assert!(!p.release("x"), "a session of x: nothing released");
        drop(a);
        assert!(p.active("x"));
        assert!(p.release("x"));
        assert!(!p.active("x") && p.released("x"));
        p.touch_remote("x", Duration::from_secs(5));
        assert!(!p.active("x"), "a remote want does not undo a release");
        let b = p.enter("x");
        assert!(p.active("x") && !p.released("x"), "a session ends the hold");
        drop(b);
    }

    #[tokio::test]
    async fn a_remote_want_keeps_a_database_active_for_its_period() {
        let p = Presence::with_grace(GRACE);
        p.touch_remote("x", GRACE);
        assert!(p.active("x") && p.with_sessions().is_empty());
        tokio::time::sleep(GRACE + Duration::from_millis(20)).await;
        assert!(!p.active("x"));
    }

    #[tokio::test]
    async fn waiters_wake_when_the_grace_ends() {
        let p = Presence::with_grace(GRACE);
        drop(p.enter("x"));
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), p.until("x", false))
            .await
            .unwrap_or_else(|_| panic!("never woke"));
        let waited = started.elapsed();
        assert!(waited >= GRACE - Duration::from_millis(5), "{waited:?}");
    }
}
