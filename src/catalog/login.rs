//! What a settings probe found at login, remembered per (database, user, startup
//! parameters), so a new session starts with its settings known instead of paying a probe
//! on its first statement (34 ms median with the old probe; short-lived connections paid it
//! every time).
//!
//! Why this is exact: at login a session's settings come only from the server (its files,
//! command line, environment: a change needs a reload), from `ALTER ROLE/DATABASE ... SET`
//! (`pg_db_role_setting`) and from the startup packet (part of the key). The session's
//! facts (current user, database OID, no temporary schema) depend on the key and the
//! catalog. Every change to the first two, and every catalog change pgmemo learns of, moves
//! the cache epoch (catalog poller: roles, settings, configuration reloads; DDL through
//! pgmemo), so an entry is used only while the epoch and the configuration generation are
//! those of the probe that made it: the same bound as for any DDL made directly
//! (DESIGN §1.3, the catalog poll interval). Entries store their whole key and are compared
//! in full (no hash collision can hand one user's settings to another), and the memo is
//! bounded in bytes.

use std::sync::Arc;

use moka::sync::Cache as Moka;

/// What a session's settings probe found (the session side runs the probe).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeResult {
    /// Non-default settings, plus `current_user`, `session_user`, `current_database` (as the
    /// fingerprint's re-establishing expects).
    pub settings: Vec<(String, String)>,
    pub current_user: String,
    pub database: String,
    pub db_oid: u32,
    pub search_path: String,
    /// `pgmemo.cache` is set to a false value in the session.
    pub opted_out: bool,
    pub has_temp: bool,
    pub client_encoding: String,
    pub standard_conforming_strings: bool,
}

/// Most bytes the memo holds (keys and settings).
const MAX_BYTES: u64 = 8 << 20;

/// Per-entry bookkeeping outside its strings.
const ENTRY_OVERHEAD: usize = 128;

/// One login probe's result and the state it was valid under.
#[derive(Debug)]
pub struct LoginEntry {
    pub result: ProbeResult,
    /// The cache epoch when the probe was sent.
    pub epoch: u64,
    /// The server configuration generation when the probe was sent.
    pub config: u64,
}

/// Login probe results by exact login key.
pub struct LoginMemo {
    entries: Moka<Arc<[u8]>, Arc<LoginEntry>>,
}

impl std::fmt::Debug for LoginMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginMemo")
            .field("entries", &self.entries.entry_count())
            .finish()
    }
}

impl Default for LoginMemo {
    fn default() -> Self {
        Self::new(MAX_BYTES)
    }
}

impl LoginMemo {
    pub fn new(max_bytes: u64) -> Self {
        Self {
            entries: Moka::builder()
                .max_capacity(max_bytes)
                .weigher(|k: &Arc<[u8]>, v: &Arc<LoginEntry>| {
                    u32::try_from(k.len() + weight(&v.result) + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
                })
                .build(),
        }
    }

    /// The remembered result for `key` if the epoch and configuration generation have not
    /// moved since its probe was sent.
    pub fn get(&self, key: &[u8], epoch: u64, config: u64) -> Option<ProbeResult> {
        let entry = self.entries.get(key)?;
        if entry.epoch == epoch && entry.config == config {
            return Some(entry.result.clone());
        }
        self.entries.invalidate(key);
        None
    }

    /// Remembers a login probe's result (the epoch and generation read when it was sent).
    pub fn insert(&self, key: Arc<[u8]>, result: ProbeResult, epoch: u64, config: u64) {
        self.entries.insert(
            key,
            Arc::new(LoginEntry {
                result,
                epoch,
                config,
            }),
        );
    }

    #[cfg(test)]
    fn sync(&self) {
        self.entries.run_pending_tasks();
    }
}

fn weight(r: &ProbeResult) -> usize {
    r.settings
        .iter()
        .map(|(n, v)| n.len() + v.len() + 48)
        .sum::<usize>()
        + r.current_user.len()
        + r.database.len()
        + r.search_path.len()
        + r.client_encoding.len()
}

/// The login key: database, user and every startup parameter, length-prefixed so no two
/// different logins encode alike. Parameters are sorted (their order changes nothing).
pub fn key(database: &str, user: &str, params: &[(String, String)]) -> Arc<[u8]> {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut out = Vec::with_capacity(64 + params.len() * 32);
    let mut put = |s: &str| {
        out.extend_from_slice(&(s.len() as u64).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    };
    put(database);
    put(user);
    for (n, v) in sorted {
        put(n);
        put(v);
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(user: &str) -> ProbeResult {
        ProbeResult {
            settings: vec![("search_path".into(), "s1".into())],
            current_user: user.into(),
            database: "app".into(),
            db_oid: 5,
            search_path: "s1".into(),
            ..ProbeResult::default()
        }
    }

    #[test]
    fn an_entry_is_used_only_under_the_epoch_and_generation_of_its_probe() {
        let memo = LoginMemo::default();
        let k = key("app", "alice", &[]);
        memo.insert(Arc::clone(&k), result("alice"), 3, 1);
        assert_eq!(memo.get(&k, 3, 1), Some(result("alice")));
        assert_eq!(memo.get(&k, 4, 1), None, "the epoch moved");
        assert_eq!(memo.get(&k, 3, 1), None, "a stale entry is dropped");
        memo.insert(Arc::clone(&k), result("alice"), 3, 1);
        assert_eq!(
            memo.get(&k, 3, 2),
            None,
            "the server reloaded its configuration"
        );
    }

    #[test]
    fn keys_differ_by_user_database_and_every_parameter() {
        let p = |v: &str| vec![("options".to_owned(), v.to_owned())];
        let base = key("app", "alice", &p("-c search_path=s1"));
        assert_ne!(base, key("app", "bob", &p("-c search_path=s1")));
        assert_ne!(base, key("app2", "alice", &p("-c search_path=s1")));
        assert_ne!(base, key("app", "alice", &p("-c search_path=s2")));
        assert_ne!(base, key("app", "alice", &[]));
        // Length prefixes: moving bytes between fields changes the key.
        assert_ne!(key("ab", "c", &[]), key("a", "bc", &[]));
        let two = vec![
            ("a".to_owned(), "1".to_owned()),
            ("b".to_owned(), "2".to_owned()),
        ];
        let swapped: Vec<_> = two.iter().rev().cloned().collect();
        assert_eq!(key("app", "u", &two), key("app", "u", &swapped));
    }

    #[test]
    fn the_memo_is_bounded_in_bytes() {
        let memo = LoginMemo::new(64 << 10);
        for i in 0..10_000 {
            let k = key("app", &format!("user{i}"), &[]);
            memo.insert(k, result("u"), 0, 0);
        }
        memo.sync();
        let held = memo.entries.weighted_size();
        assert!(held <= 64 << 10, "{held} bytes held");
        assert!(memo.entries.entry_count() > 10, "it still remembers some");
    }
}
