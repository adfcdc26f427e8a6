//! The session's prepared statements by name, mirroring what the upstream holds: a Parse is
//! recorded when its ParseComplete arrives, a Close when its CloseComplete arrives, and a
//! simple Query destroys the unnamed statement. Bounded: past `MAX_STATEMENTS` the registry
//! stops tracking and says so (`overflowed`), and callers must not rely on it.

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
    /// Parameter type OIDs from the Parse message (0 = unspecified).
    pub param_types: Vec<u32>,
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
            param_types: vec![],
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
                    param_types: vec![],
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
