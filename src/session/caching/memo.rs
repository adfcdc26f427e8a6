//! The plan memo: plans by (session context, text or shape), shared by every session, with a
//! per-thread front so that the hit path of a session worker takes no lock and touches no
//! cache line another core writes.
//!
//! The shared memo is sharded and bounded (a full shard is cleared). The front holds each
//! worker thread's own copy of the plans it used (a copy, not a shared `Arc`, so reference
//! counting stays on this core), bounded per thread and emptied when full. Both are checked
//! against the catalog and rules generations on every use, like the plans themselves.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

use super::plan::Plan;
use crate::cache::key::KeyBuildHasher;

/// Plans held per thread in the front (of all memos together).
const FRONT_MAX: usize = 16_384;
const MEMO_SHARDS: usize = 16;

type Shard = Mutex<HashMap<u64, (Bytes, Arc<Plan>), KeyBuildHasher>>;

static NEXT_MEMO_ID: AtomicU64 = AtomicU64::new(1);

/// One thread's copies: by slot hash, with the memo they belong to.
struct FrontSlot {
    memo: u64,
    key: Bytes,
    plan: Arc<Plan>,
}

thread_local! {
    static FRONT: RefCell<HashMap<u64, FrontSlot, KeyBuildHasher>> =
        const { RefCell::new(HashMap::with_hasher(KeyBuildHasher)) };
}

pub struct PlanMemo {
    id: u64,
    shards: Box<[Shard]>,
    per_shard: usize,
    /// Seeded per process (a hash of client-chosen text; collisions only cost a replan,
    /// since a hit also compares the text). foldhash: this runs on every cacheable query.
    hasher: foldhash::fast::RandomState,
}

impl PlanMemo {
    pub fn new(capacity: usize) -> Self {
        Self {
            id: NEXT_MEMO_ID.fetch_add(1, Ordering::Relaxed),
            shards: (0..MEMO_SHARDS)
                .map(|_| Mutex::new(HashMap::with_hasher(KeyBuildHasher)))
                .collect(),
            per_shard: (capacity / MEMO_SHARDS).max(1),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    fn slot(&self, context_id: u64, key: &[u8]) -> (u64, &Shard) {
        let mut h = self.hasher.build_hasher();
        context_id.hash(&mut h);
        key.hash(&mut h);
        let k = h.finish();
        let shard = &self.shards[(k as usize) % self.shards.len()];
        (k, shard)
    }

    /// The plan memoised for this context under `key` (the text, or its shape), if current.
    pub fn get(
        &self,
        context_id: u64,
        key: &[u8],
        catalog_generation: u64,
        rules_generation: u64,
    ) -> Option<Arc<Plan>> {
        let valid = |stored: &[u8], plan: &Plan| {
            plan.context_id == context_id
                && stored == key
                && plan.is_current(catalog_generation, rules_generation)
        };
        let (k, shard) = self.slot(context_id, key);
        let local = FRONT
            .try_with(|front| {
                let front = front.borrow();
                let slot = front.get(&k)?;
                (slot.memo == self.id && valid(&slot.key, &slot.plan))
                    .then(|| Arc::clone(&slot.plan))
            })
            .ok()
            .flatten();
        if local.is_some() {
            return local;
        }
        let shared = {
            let map = shard.lock().unwrap_or_else(PoisonError::into_inner);
            let (stored, plan) = map.get(&k)?;
            if !valid(stored, plan) {
                return None;
            }
            (stored.clone(), Arc::clone(plan))
        };
        Some(self.hold(k, shared.0, &shared.1))
    }

    /// Memoises `plan` under `key` (its text, or its shape).
    pub fn insert(&self, key: Bytes, plan: Arc<Plan>) {
        let (k, shard) = self.slot(plan.context_id, &key);
        self.hold(k, key.clone(), &plan);
        let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= self.per_shard && !map.contains_key(&k) {
            map.clear();
        }
        map.insert(k, (key, plan));
    }

    /// Puts this thread's own copy of `plan` in the front and returns it.
    fn hold(&self, k: u64, key: Bytes, plan: &Plan) -> Arc<Plan> {
        let copy = Arc::new(plan.clone());
        let _ = FRONT.try_with(|front| {
            let mut front = front.borrow_mut();
            if front.len() >= FRONT_MAX {
                front.clear();
            }
            front.insert(
                k,
                FrontSlot {
                    memo: self.id,
                    key,
                    plan: Arc::clone(&copy),
                },
            );
        });
        copy
    }
}
