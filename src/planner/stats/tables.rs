//! The relations statements were planned against, by tag, with their names and the database
//! and role of the first session that read them: what `/api/tables` and the statistics name a
//! tag by (the cache and the version table know relations by OID only). Filled by the planner
//! as it resolves a read's names, never on the hit path; bounded in bytes (past the bound, new relations are not named).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use crate::cache::Tag;

/// Bytes the directory may hold.
pub const MAX_BYTES: usize = 1 << 20;
/// A map slot and the boxes' headers, per relation.
const OVERHEAD: usize = 96;

/// One relation, as the catalog named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    pub database: Box<str>,
    /// The role of the first session that read it (rules are matched for it).
    pub role: Box<str>,
    pub schema: Box<str>,
    pub name: Box<str>,
}

impl TableInfo {
    fn weight(&self) -> usize {
        OVERHEAD + self.database.len() + self.role.len() + self.schema.len() + self.name.len()
    }
}

#[derive(Default)]
struct Inner {
    map: HashMap<Tag, TableInfo>,
    bytes: usize,
}

#[derive(Default)]
pub struct TableDirectory {
    inner: Mutex<Inner>,
}

impl TableDirectory {
    /// Names `tag`, unless it is named already or the directory is full.
    pub fn record(&self, tag: Tag, info: impl FnOnce() -> TableInfo) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if inner.map.contains_key(&tag) {
            return;
        }
        let info = info();
        let w = info.weight();
        if inner.bytes + w > MAX_BYTES {
            return;
        }
        inner.bytes += w;
        inner.map.insert(tag, info);
    }

    /// `schema.name` of `tag`, if named.
    pub fn name(&self, tag: Tag) -> Option<String> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner
            .map
            .get(&tag)
            .map(|i| format!("{}.{}", i.schema, i.name))
    }

    /// Every relation named, sorted by database, schema and name.
    pub fn list(&self) -> Vec<(Tag, TableInfo)> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<(Tag, TableInfo)> =
            inner.map.iter().map(|(t, i)| (*t, i.clone())).collect();
        drop(inner);
        out.sort_by(|a, b| {
            (&a.1.database, &a.1.schema, &a.1.name).cmp(&(&b.1.database, &b.1.schema, &b.1.name))
        });
        out
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_in_bytes_and_first_name_kept() {
        let d = TableDirectory::default();
        let info = |name: &str| TableInfo {
            database: "app".into(),
            role: "r".into(),
            schema: "public".into(),
            name: name.into(),
        };
        d.record(Tag { db: 1, rel: 1 }, || info("a"));
        d.record(Tag { db: 1, rel: 1 }, || info("renamed"));
        assert_eq!(d.list().first().map(|t| &*t.1.name), Some("a"));
        for rel in 2..100_000 {
            d.record(Tag { db: 1, rel }, || info(&"x".repeat(100)));
        }
        assert!(d.bytes() <= MAX_BYTES);
        assert!(d.list().len() > 1000, "filled up to the bound");
    }
}
