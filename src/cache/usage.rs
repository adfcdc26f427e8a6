//! Entries and bytes held in the L1 per relation (an entry counts once for each relation it
//! read), for `/api/tables`. Updated when an entry is stored and when moka lets it go, never
//! on the hit path; sharded so concurrent stores of different relations rarely meet on one
//! lock. Bounded: at most [`MAX_TAGS`] relations are tracked (beyond, new relations are not,
//! and the omission is counted); a relation whose entries are all gone is forgotten.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use super::versions::Tag;

/// Relations tracked at most (about 40 bytes each: 2.5 MiB).
pub const MAX_TAGS: usize = 65_536;
const SHARDS: usize = 16;

#[derive(Default)]
struct Shard {
    map: HashMap<Tag, (i64, i64)>,
}

pub(crate) struct TableUsage {
    shards: [Mutex<Shard>; SHARDS],
    /// Stores of relations not tracked because the bound was reached.
    untracked: AtomicU64,
}

impl Default for TableUsage {
    fn default() -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::default()),
            untracked: AtomicU64::new(0),
        }
    }
}

impl TableUsage {
    // The index is reduced modulo the array's length.
    #[allow(clippy::indexing_slicing)]
    fn shard(&self, tag: Tag) -> &Mutex<Shard> {
        &self.shards[(tag.rel as usize ^ (tag.db as usize).rotate_left(7)) % SHARDS]
    }

    /// An entry of `bytes` reading `tags` was stored (`sign` 1) or left (`sign` -1).
    pub(crate) fn change(&self, tags: &[Tag], bytes: i64, sign: i64) {
        for &tag in tags {
            let mut shard = self
                .shard(tag)
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let len = shard.map.len();
            let Some(slot) = (match shard.map.get_mut(&tag) {
                Some(slot) => Some(slot),
                None if sign > 0 && len < MAX_TAGS / SHARDS => {
                    Some(shard.map.entry(tag).or_default())
                }
                None => {
                    if sign > 0 {
                        self.untracked.fetch_add(1, Ordering::Relaxed);
                    }
                    None
                }
            }) else {
                continue;
            };
            slot.0 += sign;
            slot.1 += sign * bytes;
            if slot.0 <= 0 {
                shard.map.remove(&tag);
            }
        }
    }

    /// Every tracked relation: (tag, entries, bytes).
    pub(crate) fn list(&self) -> Vec<(Tag, i64, i64)> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            out.extend(shard.map.iter().map(|(t, (e, b))| (*t, *e, *b)));
        }
        out
    }

    pub(crate) fn untracked(&self) -> u64 {
        self.untracked.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_relation_and_forgets_emptied_ones() {
        let u = TableUsage::default();
        let a = Tag { db: 1, rel: 10 };
        let b = Tag { db: 1, rel: 11 };
        u.change(&[a, b], 100, 1);
        u.change(&[a], 50, 1);
        let mut l = u.list();
        l.sort();
        assert_eq!(l, [(a, 2, 150), (b, 1, 100)]);
        u.change(&[a, b], 100, -1);
        assert_eq!(u.list(), [(a, 1, 50)]);
        // A departure of something never tracked changes nothing.
        u.change(&[b], 100, -1);
        assert_eq!(u.list(), [(a, 1, 50)]);
    }

    #[test]
    fn bounded_in_relations() {
        let u = TableUsage::default();
        for rel in 0..(MAX_TAGS as u32 * 2) {
            u.change(&[Tag { db: 1, rel }], 1, 1);
        }
        assert!(u.list().len() <= MAX_TAGS);
        assert!(u.untracked() >= MAX_TAGS as u64);
    }
}
