//! Cancel keys of live sessions. pgmemo relays the upstream's BackendKeyData unchanged, so a
//! client's CancelRequest carries the upstream backend's own key: pgmemo forwards it only when
//! it belongs to a session it is relaying (it is not an open cancel relay). The entry is
//! removed when the session ends (guard on Drop).
//!
//! Each key also has a [`CancelSignal`]: a statement that pgmemo holds back (waiting for
//! another session's identical query) is cancelled through it, since the upstream backend has
//! nothing running to cancel; and while the session's relay runs, a request is held there for
//! the session to route (see `session::deferred`): the relay reads what the client sent
//! before it first, so a request is forwarded only once the statement it follows is upstream
//! (however long pgmemo took to read that statement), and never to pgmemo's own work.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Waker;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use tokio::sync::{Notify, oneshot};

use crate::telemetry::names;

/// Client cancel connections kept open per session while their request is held (more are
/// still held, their connections just close at once).
const MAX_HELD_ACKS: usize = 16;

/// What became of a cancel request.
#[derive(Debug)]
pub enum Disposition {
    /// No live session has this key: ignored.
    Unknown,
    /// A statement pgmemo holds back took it; nothing goes upstream.
    Taken,
    /// The session routes it: forwarded once the client's statement is upstream (not while
    /// pgmemo's own work is there), or to the idle backend if the client has nothing
    /// running. The receiver resolves (or fails) when that is done.
    Held(oneshot::Receiver<()>),
    /// Forward it to PostgreSQL now (no relay runs for the session at this moment).
    Forward,
}

/// Cancel requests held for a session while its own work ran. Counted in the
/// `pgmemo_cancel_requests_held` gauge from [`Held::add`] until the value is dropped (routed,
/// delivered or discarded), so an operator sees requests waiting on pgmemo's own work.
#[derive(Debug, Default)]
pub struct Held {
    /// Requests held (counted even past [`MAX_HELD_ACKS`]).
    requests: u64,
    /// The client connections waiting for the outcome: send when delivered, drop otherwise.
    acks: Vec<oneshot::Sender<()>>,
}

impl Held {
    /// Holds one more request; its client connection waits on the receiver.
    fn add(&mut self) -> oneshot::Receiver<()> {
        self.requests += 1;
        metrics::gauge!(names::CANCEL_REQUESTS_HELD).increment(1.0);
        let (tx, rx) = oneshot::channel();
        if self.acks.len() < MAX_HELD_ACKS {
            self.acks.push(tx);
        }
        rx
    }

    /// Requests held.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// Adds the requests of `other` (held again while these waited).
    pub fn merge(&mut self, mut other: Held) {
        self.requests += std::mem::take(&mut other.requests);
        for ack in other.acks.drain(..) {
            if self.acks.len() < MAX_HELD_ACKS {
                self.acks.push(ack);
            }
        }
    }

    /// Tells every waiting client connection that the request was delivered.
    pub fn delivered(mut self) {
        for ack in self.acks.drain(..) {
            let _ = ack.send(());
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.requests > 0 {
            metrics::gauge!(names::CANCEL_REQUESTS_HELD).decrement(self.requests as f64);
        }
    }
}

/// pgmemo's own work on the session's upstream connection, whether a relay routes the
/// session's requests, and what arrived meanwhile.
#[derive(Debug, Default)]
struct Own {
    busy: bool,
    routed: bool,
    held: Option<Held>,
}

/// Cancel requests a session received, for waits pgmemo runs on its behalf.
#[derive(Debug, Default)]
pub struct CancelSignal {
    received: AtomicU64,
    notify: Notify,
    /// Waits under way (at most one per session; a counter so a guard is simple).
    waiting: AtomicU64,
    /// Set while pgmemo's own work occupies the upstream connection (one lock taken per
    /// start and end of that work, and per cancel request).
    own: Mutex<Own>,
    /// Requests wait in `own.held` for the relay (read without the lock on every step).
    pending: AtomicBool,
    /// The relay's task, woken when a request is held for it.
    relay: AtomicWaker,
}

/// Marks the session as holding a statement back; the mark goes on Drop.
pub struct Waiting(Arc<CancelSignal>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

impl CancelSignal {
    /// Cancel requests received so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Acquire)
    }

    /// Records a cancel request and says where it goes: to a held statement's wait (then the
    /// upstream, which has nothing running for this session, must not get it: it could
    /// cancel the client's next statement instead), held while pgmemo's own work runs
    /// upstream (forwarded then, it would cancel that work and not the client's), or
    /// upstream.
    fn raise(&self) -> Disposition {
        self.received.fetch_add(1, Ordering::AcqRel);
        self.notify.notify_waiters();
        if self.waiting.load(Ordering::Acquire) > 0 {
            return Disposition::Taken;
        }
        let rx = {
            let mut own = self.own.lock().unwrap_or_else(PoisonError::into_inner);
            if !own.busy && !own.routed {
                return Disposition::Forward;
            }
            self.pending.store(true, Ordering::Release);
            own.held.get_or_insert_with(Held::default).add()
        };
        self.relay.wake();
        Disposition::Held(rx)
    }

    /// Marks whether a relay routes this session's requests (it takes them with
    /// [`Self::take_held`], woken through [`Self::register`] when one arrives). Requests
    /// still held when it stops stay for the next relay (after a move to another worker).
    pub fn set_routed(&self, routed: bool) {
        let mut own = self.own.lock().unwrap_or_else(PoisonError::into_inner);
        own.routed = routed;
    }

    /// Registers the relay's task to be woken when a request is held for it.
    pub fn register(&self, waker: &Waker) {
        self.relay.register(waker);
    }

    /// The requests held for the relay, unless pgmemo's own work is under way (they are
    /// handed over when it ends, by [`Self::set_own_work`]). Lock-free when there are none.
    pub fn take_held(&self) -> Option<Held> {
        if !self.pending.load(Ordering::Acquire) {
            return None;
        }
        let mut own = self.own.lock().unwrap_or_else(PoisonError::into_inner);
        if own.busy {
            return None;
        }
        self.pending.store(false, Ordering::Release);
        own.held.take()
    }

    /// Marks pgmemo's own work on the upstream connection as under way (`true`) or over.
    /// Ending it returns the requests held meanwhile, for the session to route.
    pub fn set_own_work(&self, busy: bool) -> Option<Held> {
        let mut own = self.own.lock().unwrap_or_else(PoisonError::into_inner);
        own.busy = busy;
        if busy { None } else { own.held.take() }
    }

    /// Ends a held statement's wait as a cancel request arriving now would: a request held
    /// during pgmemo's own work, handed to the statement the client is waiting for.
    pub fn raise_local(&self) {
        self.received.fetch_add(1, Ordering::AcqRel);
        self.notify.notify_waiters();
    }

    /// Marks a wait under way until the guard drops.
    pub fn waiting(self: &Arc<Self>) -> Waiting {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        Waiting(Arc::clone(self))
    }

    /// Resolves once a cancel request arrives after `seen` were counted.
    pub async fn after(&self, seen: u64) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the check, so a cancel between the two is not missed.
            notified.as_mut().enable();
            if self.received() != seen {
                return;
            }
            notified.await;
        }
    }
}

/// Most keys held; a session past it still works, its cancels are just not forwarded.
const MAX_KEYS: usize = 1 << 20;

#[derive(Debug, Default)]
pub struct CancelRegistry {
    keys: Mutex<HashMap<Bytes, (u64, Arc<CancelSignal>)>>,
}

impl CancelRegistry {
    /// Registers `key` (pid followed by secret) for session `session_id`.
    pub fn register(self: &Arc<Self>, key: Bytes, session_id: u64) -> Option<CancelKeyGuard> {
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        if keys.len() >= MAX_KEYS {
            return None;
        }
        let signal = Arc::new(CancelSignal::default());
        keys.insert(key.clone(), (session_id, Arc::clone(&signal)));
        Some(CancelKeyGuard {
            registry: Arc::clone(self),
            key,
            session_id,
            signal,
        })
    }

    /// Whether a live session owns `key`.
    pub fn contains(&self, key: &[u8]) -> bool {
        self.keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(key)
    }

    /// Tells the session owning `key`, if any, that a cancel request arrived for it, and
    /// says what to do with the request (see [`Disposition`]).
    pub fn signal(&self, key: &[u8]) -> Disposition {
        let signal = self
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .map(|(_, s)| Arc::clone(s));
        signal.map_or(Disposition::Unknown, |s| s.raise())
    }

    pub fn len(&self) -> usize {
        self.keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Removes its key when the session ends.
#[derive(Debug)]
pub struct CancelKeyGuard {
    registry: Arc<CancelRegistry>,
    key: Bytes,
    session_id: u64,
    signal: Arc<CancelSignal>,
}

impl CancelKeyGuard {
    /// The session's cancel signal.
    pub fn signal(&self) -> Arc<CancelSignal> {
        Arc::clone(&self.signal)
    }

    /// The key (the upstream backend's pid and secret, as its BackendKeyData gave them).
    pub fn key(&self) -> &[u8] {
        &self.key
    }
}

impl Drop for CancelKeyGuard {
    fn drop(&mut self) {
        let mut keys = self
            .registry
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Only remove our own entry: a reused key may already belong to a newer session.
        if keys.get(&self.key).map(|(id, _)| *id) == Some(self.session_id) {
            keys.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_removes_only_its_own_entry() {
        let reg = Arc::new(CancelRegistry::default());
        let k = Bytes::from_static(b"\0\0\0\x01secr");
        let g1 = reg.register(k.clone(), 1).unwrap();
        assert!(reg.contains(&k));
        let g2 = reg.register(k.clone(), 2).unwrap();
        drop(g1);
        assert!(reg.contains(&k));
        drop(g2);
        assert!(!reg.contains(&k));
    }

    #[tokio::test]
    async fn a_cancel_after_the_count_wakes_the_waiter() {
        let reg = Arc::new(CancelRegistry::default());
        let k = Bytes::from_static(b"\0\0\0\x02secr");
        let guard = reg.register(k.clone(), 1).unwrap();
        let signal = guard.signal();
        assert!(
            matches!(reg.signal(&k), Disposition::Forward),
            "no wait under way: forward it"
        );
        let seen = signal.received();
        assert_eq!(seen, 1);
        let waiting = tokio::spawn({
            let signal = Arc::clone(&signal);
            async move { signal.after(seen).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "an earlier cancel does not count");
        let _waiting = signal.waiting();
        assert!(matches!(reg.signal(b"unknown key"), Disposition::Unknown));
        assert!(
            matches!(reg.signal(&k), Disposition::Taken),
            "a wait takes it"
        );
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_cancel_during_own_work_is_held_for_the_session() {
        let reg = Arc::new(CancelRegistry::default());
        let k = Bytes::from_static(b"\0\0\0\x03secr");
        let guard = reg.register(k.clone(), 1).unwrap();
        let signal = guard.signal();
        assert!(signal.set_own_work(true).is_none());
        let Disposition::Held(first) = reg.signal(&k) else {
            panic!("own work under way: the request must be held");
        };
        let Disposition::Held(second) = reg.signal(&k) else {
            panic!("a second request is held too");
        };
        let held = signal
            .set_own_work(false)
            .expect("the held requests go to the session");
        assert_eq!(held.requests(), 2);
        assert!(signal.set_own_work(false).is_none(), "handed over once");
        assert!(
            matches!(reg.signal(&k), Disposition::Forward),
            "after the own work, requests go upstream"
        );
        held.delivered();
        first
            .await
            .expect("the client connection is told once delivered");
        second.await.expect("every waiting connection is told");
    }

    #[test]
    fn held_acks_are_bounded() {
        let signal = CancelSignal::default();
        signal.set_own_work(true);
        let receivers: Vec<_> = (0..MAX_HELD_ACKS + 4).map(|_| signal.raise()).collect();
        let held = signal.set_own_work(false).unwrap();
        assert_eq!(held.requests(), (MAX_HELD_ACKS + 4) as u64);
        assert_eq!(held.acks.len(), MAX_HELD_ACKS);
        drop(receivers);
    }
}
