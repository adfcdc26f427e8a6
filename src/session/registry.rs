//! The session's prepared statements by name, mirroring what PostgreSQL would hold for the
//! client: a Parse is recorded when its ParseComplete arrives (or when pgmemo answers it from
//! the cache), a Close when its CloseComplete arrives, and a simple Query destroys the unnamed
//! statement. A statement answered locally and not yet sent upstream carries its Parse frame
//! (`local`), to be replayed before the first forwarded message that names it. Bounded: past
//! `MAX_STATEMENTS` the registry stops tracking and says so (`overflowed`), and callers must
//! not rely on it.

use std::collections::HashMap;

use bytes::Bytes;

/// Most statements tracked per session.
pub const MAX_STATEMENTS: usize = 10_000;
/// Most SQL text held per session.
pub const MAX_STATEMENT_BYTES: usize = 32 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// SQL text as sent in the Parse message (raw bytes).
    pub query: Bytes,
    /// Parameter type OIDs from the Parse message as sent (big-endian, 4 bytes each; 0 =
    /// unspecified): fed to cache keys as they are.
    pub param_types: Bytes,
    /// The Parse frame, while only pgmemo has answered it (the upstream does not hold it).
    pub local: Option<Bytes>,
}

impl Statement {
    /// A statement as a Parse message gave it (held by the upstream, not local).
    pub fn new(query: &[u8], param_types: &[u8]) -> Self {
        Self {
            query: Bytes::copy_from_slice(query),
            param_types: Bytes::copy_from_slice(param_types),
            local: None,
        }
    }

    /// The parameter type OIDs.
    pub fn param_oids(&self) -> impl Iterator<Item = u32> + '_ {
        self.param_types
            .chunks_exact(4)
            .filter_map(|c| <[u8; 4]>::try_from(c).ok())
            .map(u32::from_be_bytes)
    }
}

#[derive(Debug, Default)]
pub struct Registry {
    statements: HashMap<Bytes, Statement>,
    bytes: usize,
    overflowed: bool,
}

impl Registry {
    pub fn get(&self, name: &[u8]) -> Option<&Statement> {
        self.statements.get(name)
    }

    pub fn len(&self) -> usize {
        self.statements.len()
    }

    pub fn is_empty(&self) -> bool {
        self.statements.is_empty()
    }

    /// True once a bound was exceeded or a response could not be matched: entries may be
    /// missing, so the registry is advisory only for the rest of the session.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    pub fn mark_untracked(&mut self) {
        self.overflowed = true;
    }

    pub fn insert(&mut self, name: Bytes, stmt: Statement) {
        self.remove(&name);
        let size = name.len() + stmt.query.len();
        if self.statements.len() >= MAX_STATEMENTS || self.bytes + size > MAX_STATEMENT_BYTES {
            self.overflowed = true;
            return;
        }
        self.bytes += size;
        self.statements.insert(name, stmt);
    }

    /// The upstream now holds `name` (its replayed Parse completed).
    pub fn mark_upstream(&mut self, name: &[u8]) {
        if let Some(stmt) = self.statements.get_mut(name) {
            stmt.local = None;
        }
    }

    /// Drops `name` if only pgmemo holds it (a forwarded Parse, Close or Query is about to
    /// replace or destroy it upstream, where it never was).
    pub fn forget_local(&mut self, name: &[u8]) {
        if self.get(name).is_some_and(|s| s.local.is_some()) {
            self.remove(name);
        }
    }

    pub fn remove(&mut self, name: &[u8]) {
        if let Some((k, v)) = self.statements.remove_entry(name) {
            self.bytes = self.bytes.saturating_sub(k.len() + v.query.len());
        }
    }

    pub fn clear(&mut self) {
        self.statements.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stmt(q: &'static str) -> Statement {
        Statement {
            query: Bytes::from_static(q.as_bytes()),
            param_types: Bytes::new(),
            local: None,
        }
    }

    #[test]
    fn insert_replace_remove() {
        let mut r = Registry::default();
        r.insert(Bytes::from_static(b"s1"), stmt("select 1"));
        r.insert(Bytes::from_static(b""), stmt("select 2"));
        assert_eq!(r.len(), 2);
        r.insert(Bytes::from_static(b""), stmt("select 3"));
        assert_eq!(r.get(b"").unwrap().query, Bytes::from_static(b"select 3"));
        r.remove(b"s1");
        assert!(r.get(b"s1").is_none());
    }

    #[test]
    fn bounded_by_bytes() {
        let mut r = Registry::default();
        let big = Bytes::from(vec![b'x'; 1024 * 1024]);
        for i in 0..40 {
            r.insert(
                Bytes::from(format!("s{i}")),
                Statement {
                    query: big.clone(),
                    param_types: Bytes::new(),
                    local: None,
                },
            );
        }
        assert!(r.len() < 32);
        assert!(r.overflowed());
    }

    #[test]
    fn bounded() {
        let mut r = Registry::default();
        for i in 0..MAX_STATEMENTS + 5 {
            r.insert(Bytes::from(format!("s{i}")), stmt("select 1"));
        }
        assert_eq!(r.len(), MAX_STATEMENTS);
        assert!(r.overflowed());
    }
}
