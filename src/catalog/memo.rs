//! A bounded memo of catalog answers for one catalog generation. A lookup under a newer
//! generation empties it (everything in it may be stale); an answer computed under an
//! older generation than the memo's is dropped, never stored. Full = the oldest entry goes.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

pub(crate) struct Memo<K, V> {
    generation: u64,
    capacity: usize,
    map: HashMap<K, V>,
    order: VecDeque<K>,
}

impl<K: Hash + Eq + Clone, V: Clone> Memo<K, V> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            generation: 0,
            capacity: capacity.max(1),
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn advance(&mut self, generation: u64) {
        if generation > self.generation {
            self.generation = generation;
            self.map.clear();
            self.order.clear();
        }
    }

    pub(crate) fn get(&mut self, generation: u64, key: &K) -> Option<V> {
        self.advance(generation);
        if generation < self.generation {
            return None;
        }
        self.map.get(key).cloned()
    }

    /// Stores `value`, computed while the catalog was at `generation`; `current` is the
    /// catalog's generation now. A change seen in between makes the answer suspect.
    pub(crate) fn insert(&mut self, generation: u64, current: u64, key: K, value: V) {
        self.advance(current);
        if generation != current || current != self.generation {
            return;
        }
        if let Some(slot) = self.map.get_mut(&key) {
            *slot = value;
            return;
        }
        while self.map.len() >= self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
        self.order.push_back(key.clone());
        self.map.insert(key, value);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_generation_scoped() {
        let mut memo = Memo::new(2);
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
}
