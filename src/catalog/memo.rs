//! A bounded memo of catalog answers for one catalog generation. A lookup under a newer
//! generation empties it (everything in it may be stale); an answer computed under an
//! older generation than the memo's is dropped, never stored. Bounded by entries and by
//! bytes (keys hold names cut from client SQL, so a client naming thousands of relations
//! must not grow it past its budget): full = the oldest entries go; an answer weighing more
//! than a quarter of the budget is not memoised.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// Bookkeeping of one entry (map and order slots, allocator overhead).
const ENTRY_OVERHEAD: usize = 64;
/// An entry weighing more than this fraction of the budget is not memoised.
const ENTRY_SHARE: usize = 4;

/// How much a key and a value weigh (approximate heap bytes).
pub(crate) struct Weights<K, V> {
    pub(crate) key: fn(&K) -> usize,
    pub(crate) value: fn(&V) -> usize,
}

pub(crate) struct Memo<K, V> {
    generation: u64,
    capacity: usize,
    max_bytes: usize,
    bytes: usize,
    weights: Weights<K, V>,
    map: HashMap<K, (V, usize)>,
    order: VecDeque<K>,
}

impl<K: Hash + Eq + Clone, V: Clone> Memo<K, V> {
    pub(crate) fn new(capacity: usize, max_bytes: usize, weights: Weights<K, V>) -> Self {
        Self {
            generation: 0,
            capacity: capacity.max(1),
            max_bytes,
            bytes: 0,
            weights,
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn advance(&mut self, generation: u64) {
        if generation > self.generation {
            self.generation = generation;
            self.map.clear();
            self.order.clear();
            self.bytes = 0;
        }
    }

    pub(crate) fn get(&mut self, generation: u64, key: &K) -> Option<V> {
        self.advance(generation);
        if generation < self.generation {
            return None;
        }
        self.map.get(key).map(|(v, _)| v.clone())
    }

    /// What an entry costs: its key twice (map and order), its value, the bookkeeping.
    fn weigh(&self, key: &K, value: &V) -> usize {
        2 * (self.weights.key)(key) + (self.weights.value)(value) + ENTRY_OVERHEAD
    }

    /// Stores `value`, computed while the catalog was at `generation`; `current` is the
    /// catalog's generation now. A change seen in between makes the answer suspect.
    pub(crate) fn insert(&mut self, generation: u64, current: u64, key: K, value: V) {
        self.advance(current);
        if generation != current || current != self.generation {
            return;
        }
        let weight = self.weigh(&key, &value);
        if weight > self.max_bytes / ENTRY_SHARE {
            return;
        }
        if let Some((slot, old)) = self.map.get_mut(&key) {
            self.bytes = self.bytes - *old + weight;
            *slot = value;
            *old = weight;
            return;
        }
        while self.map.len() >= self.capacity || self.bytes + weight > self.max_bytes {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some((_, w)) = self.map.remove(&oldest) {
                self.bytes = self.bytes.saturating_sub(w);
            }
        }
        self.order.push_back(key.clone());
        self.map.insert(key, (value, weight));
        self.bytes += weight;
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counted() -> Weights<&'static str, usize> {
        Weights {
            key: |k| k.len(),
            value: |v| *v,
        }
    }

    #[test]
    fn bounded_and_generation_scoped() {
        let mut memo = Memo::new(2, 1 << 20, counted());
        memo.insert(1, 1, "a", 1);
        memo.insert(1, 1, "b", 2);
        memo.insert(1, 1, "c", 3);
        assert_eq!(memo.len(), 2);
        assert_eq!(memo.get(1, &"a"), None);
        assert_eq!(memo.get(1, &"c"), Some(3));
        // A newer generation empties it.
        assert_eq!(memo.get(2, &"c"), None);
        assert_eq!(memo.len(), 0);
        // An answer computed before a change is not stored.
        memo.insert(2, 3, "d", 4);
        assert_eq!(memo.get(3, &"d"), None);
        // Nor one from a generation older than the memo's.
        memo.insert(2, 2, "e", 5);
        assert_eq!(memo.get(3, &"e"), None);
    }

    #[test]
    fn bounded_in_bytes_and_heavy_answers_are_not_memoised() {
        // Each entry below weighs 2 + 300 + overhead = 366: five fit in 2,000 bytes, not six.
        let mut memo = Memo::new(100, 2_000, counted());
        for key in ["a", "b", "c", "d", "e", "f"] {
            memo.insert(1, 1, key, 300);
        }
        assert_eq!(memo.len(), 5);
        assert!(memo.bytes <= 2_000);
        assert_eq!(memo.get(1, &"a"), None, "the oldest went");
        assert_eq!(memo.get(1, &"f"), Some(300));
        // More than a quarter of the budget: answered, never held, nothing evicted for it.
        memo.insert(1, 1, "huge", 600);
        assert_eq!(memo.get(1, &"huge"), None);
        assert_eq!(memo.len(), 5);
        // Replacing a value re-weighs it.
        memo.insert(1, 1, "f", 10);
        assert_eq!(memo.bytes, 4 * 366 + 2 + 10 + ENTRY_OVERHEAD);
    }
}
