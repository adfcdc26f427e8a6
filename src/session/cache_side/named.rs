//! A session's names (protocol statements and portals, SQL `PREPARE` names) mapped to what
//! pgmemo knows of them, bounded by entries and by bytes: names and statement texts are the
//! client's, and a plan of a statement too large to memoise is held only here. A name that
//! does not fit is simply not followed: a statement or portal pgmemo does not know is
//! treated conservatively (an execution bumps the epoch), exactly as past the entry bound.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

use crate::planner::plan::StmtPlan;

/// Entries per map and session.
pub const MAX_NAMED: usize = 10_000;
/// Bytes per map and session (names plus what they map to), like the prepared-statement
/// registry's bound.
pub const MAX_NAMED_BYTES: usize = 32 << 20;
/// Bookkeeping of one entry (the map slot, allocator overhead).
const ENTRY_OVERHEAD: usize = 64;

/// Approximate heap bytes a mapped value holds.
pub trait Weigh {
    fn weight(&self) -> usize;
}

/// A portal's plan is its statement's (shared): only the reference and its rows count.
impl Weigh for Option<super::tracker::Portal> {
    fn weight(&self) -> usize {
        std::mem::size_of::<Self>()
            + self
                .as_ref()
                .and_then(|p| p.rows.as_ref())
                .map_or(0, |r| std::mem::size_of_val(r.as_ref()))
    }
}

impl Weigh for (StmtPlan, u64) {
    fn weight(&self) -> usize {
        self.0.weight() + std::mem::size_of::<u64>()
    }
}

impl Weigh for StmtPlan {
    fn weight(&self) -> usize {
        std::mem::size_of::<StmtPlan>() + std::mem::size_of_val(self.written.tags.as_slice())
    }
}

#[derive(Debug)]
pub struct Named<K, V> {
    map: HashMap<K, (V, usize)>,
    bytes: usize,
}

impl<K, V> Default for Named<K, V> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            bytes: 0,
        }
    }
}

impl<K: Hash + Eq + AsRef<[u8]>, V: Weigh> Named<K, V> {
    pub fn get<Q: Hash + Eq + ?Sized>(&self, name: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.map.get(name).map(|(v, _)| v)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.map.keys()
    }

    /// Maps `name` to `value` if both bounds allow (the unnamed statement or portal always
    /// fits the entry bound: it replaces itself). Returns whether it is followed; when not,
    /// any older value of that name is forgotten too (it would be stale).
    pub fn insert(&mut self, name: K, value: V) -> bool {
        self.remove(&name);
        let weight = name.as_ref().len() + value.weight() + ENTRY_OVERHEAD;
        let room = self.map.len() < MAX_NAMED || name.as_ref().is_empty();
        if !room || self.bytes + weight > MAX_NAMED_BYTES {
            return false;
        }
        self.bytes += weight;
        self.map.insert(name, (value, weight));
        true
    }

    pub fn remove<Q: Hash + Eq + ?Sized>(&mut self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let (value, weight) = self.map.remove(name)?;
        self.bytes = self.bytes.saturating_sub(weight);
        Some(value)
    }

    pub fn clear(&mut self) {
        self.map.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Blob(usize);

    impl Weigh for Blob {
        fn weight(&self) -> usize {
            self.0
        }
    }

    #[test]
    fn bounded_in_bytes_and_a_name_that_does_not_fit_is_forgotten() {
        let mut named: Named<String, Blob> = Named::default();
        let big = MAX_NAMED_BYTES / 3;
        assert!(named.insert("a".into(), Blob(big)));
        assert!(named.insert("b".into(), Blob(big)));
        assert!(!named.insert("c".into(), Blob(big)), "over the byte bound");
        assert!(named.get("c").is_none());
        // Re-mapping a followed name to something that does not fit forgets the old value.
        assert!(!named.insert("b".into(), Blob(2 * big)));
        assert!(named.get("b").is_none());
        assert!(named.insert("c".into(), Blob(big)), "room again");
        named.clear();
        assert!(named.is_empty());
        assert!(named.insert("d".into(), Blob(big)));
    }

    #[test]
    fn bounded_in_entries_but_the_unnamed_always_fits() {
        let mut named: Named<String, Blob> = Named::default();
        for i in 0..MAX_NAMED {
            assert!(named.insert(i.to_string(), Blob(1)));
        }
        assert!(!named.insert("one more".into(), Blob(1)));
        assert!(named.insert(String::new(), Blob(1)));
        assert_eq!(named.len(), MAX_NAMED + 1);
    }
}
