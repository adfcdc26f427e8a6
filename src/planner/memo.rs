//! The plan memo: plans by (session context, text or shape), shared by every session, with a
//! per-thread front so that the hit path of a session worker takes no lock and touches no
//! cache line another core writes.
//!
//! The shared memo is sharded and bounded by entries and by bytes (a full shard is cleared):
//! the texts are the client's, so a client sending many distinct large statements must not
//! grow it past its budget. A plan heavier than a share of a shard is not memoised here (it
//! is planned again at each execution, at that size the parse dwarfs the lookup; only its
//! session keeps the last such plan, see `planning`). The
//! front holds each worker thread's own copy of the plans it used (a copy, not a shared
//! `Arc`, so reference counting stays on this core), bounded per thread in entries and bytes
//! and emptied when full. Both are checked against the catalog and rules generations on every
//! use, like the plans themselves.

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
/// A thread's front holds at most this fraction of the bytes of the memo inserting into it.
const FRONT_SHARE: usize = 8;
const MEMO_SHARDS: usize = 16;
/// A plan weighing more than this fraction of a shard's bytes is not memoised: one entry must
/// not empty a shard on its own.
const ENTRY_SHARE: usize = 4;

/// One shard: entries by slot hash (the key text with its plan) and their total weight.
#[derive(Default)]
struct ShardMap {
    map: HashMap<u64, (Bytes, Arc<Plan>, usize), KeyBuildHasher>,
    bytes: usize,
}

type Shard = Mutex<ShardMap>;

static NEXT_MEMO_ID: AtomicU64 = AtomicU64::new(1);

/// One thread's copies: by slot hash, with the memo they belong to.
struct FrontSlot {
    memo: u64,
    key: Bytes,
    plan: Arc<Plan>,
    weight: usize,
}

/// One thread's front and the weight of what it holds.
struct Front {
    map: HashMap<u64, FrontSlot, KeyBuildHasher>,
    bytes: usize,
}

thread_local! {
    static FRONT: RefCell<Front> = const {
        RefCell::new(Front {
            map: HashMap::with_hasher(KeyBuildHasher),
            bytes: 0,
        })
    };
}

/// What a memo entry costs: its key text and its plan.
fn weight(key: &[u8], plan: &Plan) -> usize {
    key.len() + plan.weight()
}

pub struct PlanMemo {
    id: u64,
    shards: Box<[Shard]>,
    per_shard: usize,
    per_shard_bytes: usize,
    /// Heaviest entry memoised.
    max_entry_bytes: usize,
    /// Bytes a thread's front may hold when this memo inserts into it.
    front_bytes: usize,
    /// Seeded per process (a hash of client-chosen text; collisions only cost a replan,
    /// since a hit also compares the text). foldhash: this runs on every cacheable query.
    hasher: foldhash::fast::RandomState,
}

impl PlanMemo {
    /// A memo of at most `capacity` plans weighing `max_bytes` together (see
    /// [`Plan::weight`]); each thread's front may hold another `max_bytes / 8` of copies.
    pub fn new(capacity: usize, max_bytes: usize) -> Self {
        let per_shard_bytes = (max_bytes / MEMO_SHARDS).max(1);
        Self {
            id: NEXT_MEMO_ID.fetch_add(1, Ordering::Relaxed),
            shards: (0..MEMO_SHARDS).map(|_| Mutex::default()).collect(),
            per_shard: (capacity / MEMO_SHARDS).max(1),
            per_shard_bytes,
            max_entry_bytes: per_shard_bytes / ENTRY_SHARE,
            front_bytes: max_bytes / FRONT_SHARE,
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    // `shards` holds MEMO_SHARDS (> 0) shards and the index is reduced modulo its length.
    #[allow(clippy::indexing_slicing)]
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
                let slot = front.map.get(&k)?;
                (slot.memo == self.id && valid(&slot.key, &slot.plan))
                    .then(|| Arc::clone(&slot.plan))
            })
            .ok()
            .flatten();
        if local.is_some() {
            return local;
        }
        let shared = {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            let (stored, plan, weight) = shard.map.get(&k)?;
            if !valid(stored, plan) {
                return None;
            }
            (stored.clone(), Arc::clone(plan), *weight)
        };
        Some(self.hold(k, shared.0, &shared.1, shared.2))
    }

    /// Whether this memo would hold `plan` under its own text (not too heavy).
    pub fn holds(&self, plan: &Plan) -> bool {
        weight(&plan.sql, plan) <= self.max_entry_bytes
    }

    /// Memoises `plan` under `key` (its text, or its shape), unless it is too heavy.
    pub fn insert(&self, key: Bytes, plan: Arc<Plan>) {
        let weight = weight(&key, &plan);
        if weight > self.max_entry_bytes {
            return;
        }
        let (k, shard) = self.slot(plan.context_id, &key);
        self.hold(k, key.clone(), &plan, weight);
        let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, _, old)) = shard.map.remove(&k) {
            shard.bytes = shard.bytes.saturating_sub(old);
        }
        if shard.map.len() >= self.per_shard || shard.bytes + weight > self.per_shard_bytes {
            shard.map.clear();
            shard.bytes = 0;
        }
        shard.map.insert(k, (key, plan, weight));
        shard.bytes += weight;
    }

    /// Puts this thread's own copy of `plan` in the front and returns it.
    fn hold(&self, k: u64, key: Bytes, plan: &Plan, weight: usize) -> Arc<Plan> {
        let copy = Arc::new(plan.clone());
        if weight > self.front_bytes {
            return copy;
        }
        let _ = FRONT.try_with(|front| {
            let mut front = front.borrow_mut();
            if let Some(old) = front.map.remove(&k) {
                front.bytes = front.bytes.saturating_sub(old.weight);
            }
            if front.map.len() >= FRONT_MAX || front.bytes + weight > self.front_bytes {
                front.map.clear();
                front.bytes = 0;
            }
            let slot = FrontSlot {
                memo: self.id,
                key,
                plan: Arc::clone(&copy),
                weight,
            };
            front.map.insert(k, slot);
            front.bytes += weight;
        });
        copy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(i: usize, len: usize) -> Arc<Plan> {
        let sql = format!("SELECT '{}{i}'", "x".repeat(len));
        Arc::new(Plan::without_context(
            Bytes::from(sql),
            super::super::bypass::BypassReason::NotSelect,
        ))
    }

    fn held(memo: &PlanMemo) -> usize {
        memo.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).bytes)
            .sum()
    }

    #[test]
    fn bounded_in_bytes_however_many_distinct_texts() {
        let max = 1 << 20;
        let memo = PlanMemo::new(65_536, max);
        let mut inserted = 0;
        for i in 0..4_000 {
            let p = plan(i, 2_000);
            inserted += weight(&p.sql, &p);
            memo.insert(p.sql.clone(), p);
            assert!(held(&memo) <= max);
        }
        assert!(inserted > 4 * max, "the load is well over the bound");
        let front = FRONT.with(|f| f.borrow().bytes);
        assert!(
            front <= memo.front_bytes,
            "{front} bytes in this thread's front"
        );
        // The newest is still served.
        let last = plan(3_999, 2_000);
        assert!(memo.get(0, &last.sql, 0, 0).is_some());
    }

    #[test]
    fn plans_heavier_than_a_share_of_a_shard_are_not_memoised() {
        let memo = PlanMemo::new(65_536, 1 << 20);
        let light = plan(1, 100);
        memo.insert(light.sql.clone(), Arc::clone(&light));
        let heavy = plan(2, memo.max_entry_bytes);
        memo.insert(heavy.sql.clone(), Arc::clone(&heavy));
        assert!(memo.get(0, &heavy.sql, 0, 0).is_none());
        assert!(
            memo.get(0, &light.sql, 0, 0).is_some(),
            "nothing evicted for it"
        );
    }
}
