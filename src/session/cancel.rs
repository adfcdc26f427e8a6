//! Cancel keys of live sessions. pgmemo relays the upstream's BackendKeyData unchanged, so a
//! client's CancelRequest carries the upstream backend's own key: pgmemo forwards it only when
//! it belongs to a session it is relaying (it is not an open cancel relay). The entry is
//! removed when the session ends (guard on Drop).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

/// Most keys held; a session past it still works, its cancels are just not forwarded.
const MAX_KEYS: usize = 1 << 20;

#[derive(Debug, Default)]
pub struct CancelRegistry {
    keys: Mutex<HashMap<Bytes, u64>>,
}

impl CancelRegistry {
    /// Registers `key` (pid followed by secret) for session `session_id`.
    pub fn register(self: &Arc<Self>, key: Bytes, session_id: u64) -> Option<CancelKeyGuard> {
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        if keys.len() >= MAX_KEYS {
            return None;
        }
        keys.insert(key.clone(), session_id);
        Some(CancelKeyGuard {
            registry: Arc::clone(self),
            key,
            session_id,
        })
    }

    /// Whether a live session owns `key`.
    pub fn contains(&self, key: &[u8]) -> bool {
        self.keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(key)
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
}

impl Drop for CancelKeyGuard {
    fn drop(&mut self) {
        let mut keys = self
            .registry
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Only remove our own entry: a reused key may already belong to a newer session.
        if keys.get(&self.key) == Some(&self.session_id) {
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
}
