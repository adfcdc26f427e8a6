//! Cancel keys of live sessions. pgmemo relays the upstream's BackendKeyData unchanged, so a
//! client's CancelRequest carries the upstream backend's own key: pgmemo forwards it only when
//! it belongs to a session it is relaying (it is not an open cancel relay). The entry is
//! removed when the session ends (guard on Drop).
//!
//! Each key also has a [`CancelSignal`]: a statement that pgmemo holds back (waiting for
//! another session's identical query) is cancelled through it, since the upstream backend has
//! nothing running to cancel.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use tokio::sync::Notify;

/// Cancel requests a session received, for waits pgmemo runs on its behalf.
#[derive(Debug, Default)]
pub struct CancelSignal {
    received: AtomicU64,
    notify: Notify,
    /// Waits under way (at most one per session; a counter so a guard is simple).
    waiting: AtomicU64,
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

    /// Records a cancel request; true when a held statement's wait takes it (then the
    /// upstream, which has nothing running for this session, must not get it: it could
    /// cancel the client's next statement instead).
    fn raise(&self) -> bool {
        self.received.fetch_add(1, Ordering::AcqRel);
        self.notify.notify_waiters();
        self.waiting.load(Ordering::Acquire) > 0
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

    /// Tells the session owning `key`, if any, that a cancel request arrived for it. True
    /// when the request ended a statement pgmemo was holding back: it must not also go
    /// upstream.
    pub fn signal(&self, key: &[u8]) -> bool {
        let signal = self
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .map(|(_, s)| Arc::clone(s));
        signal.is_some_and(|s| s.raise())
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
        assert!(!reg.signal(&k), "no wait under way: forward it");
        let seen = signal.received();
        assert_eq!(seen, 1);
        let waiting = tokio::spawn({
            let signal = Arc::clone(&signal);
            async move { signal.after(seen).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "an earlier cancel does not count");
        let _waiting = signal.waiting();
        assert!(!reg.signal(b"unknown key"));
        assert!(reg.signal(&k), "a wait takes it");
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
    }
}
