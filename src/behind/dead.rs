//! Dead letters: queued writes the database refused (a constraint, a type, a missing
//! privilege of the writer's role) or increments that matched no row. Each was
//! acknowledged to its client, so it is never dropped silently: it is kept here with its
//! statement, role, error and time, in a file next to the journals (rewritten atomically on
//! every change), until an operator retries or drops it through the admin API. A letter is
//! recorded before the batch that skips its write commits, so a crash between the two at
//! worst records it twice (same database and sequence number: kept once).

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine;
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::entry::{Entry, Op};
use super::lock;
use crate::telemetry::names;

/// The longest statement shape a log line shows.
const LOGGED_SHAPE: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum DeadError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0}: not a dead-letter file: {1}")]
    Parse(PathBuf, serde_json::Error),
    #[error("a dead letter's write cannot be decoded")]
    Corrupt,
    #[error("the write could not be queued again ({0})")]
    Refused(&'static str),
}

/// One refused write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub id: u64,
    pub database: String,
    /// Its sequence number in its queue.
    pub seq: u64,
    /// Its queue (the progress row's key: the journal's or the Redis queue incarnation's
    /// id): numbers start again in a new queue, so a letter is known by both.
    #[serde(default)]
    pub queue: String,
    pub role: String,
    /// The statement as queued (an increment as the flusher runs it).
    pub statement: String,
    /// SQLSTATE of the error (`P0002` for an increment that matched no row).
    pub code: String,
    pub error: String,
    /// When it was refused, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The queued write, encoded (base64), for a retry.
    pub entry: String,
}

impl DeadLetter {
    /// A journal record that does not decode (`XX001`, data corrupted): kept with its raw
    /// bytes; a retry cannot decode it either, so it can only be read and dropped.
    pub fn unreadable(database: &str, seq: u64, raw: &[u8], why: &str) -> DeadLetter {
        DeadLetter {
            id: 0,
            database: database.to_owned(),
            seq,
            queue: String::new(),
            role: String::new(),
            statement: "(a journal record that cannot be decoded)".to_owned(),
            code: "XX001".to_owned(),
            error: format!("the queued write cannot be decoded: {why}"),
            at_ms: now_ms(),
            entry: base64::engine::general_purpose::STANDARD.encode(raw),
        }
    }

    pub fn new(seq: u64, entry: &Entry, code: &str, error: &str) -> DeadLetter {
        let statement = match &entry.op {
            Op::Statement { sql, .. } => String::from_utf8_lossy(sql).into_owned(),
            Op::Increment {
                table,
                column,
                key_column,
                key,
                delta,
                ..
            } => format!(
                "UPDATE {table} SET {column} = {column} + {delta} WHERE {key_column} = '{key}'"
            ),
        };
        DeadLetter {
            id: 0,
            database: entry.database.clone(),
            seq,
            queue: String::new(),
            role: entry.role.clone(),
            statement,
            code: code.to_owned(),
            error: error.to_owned(),
            at_ms: now_ms(),
            entry: base64::engine::general_purpose::STANDARD.encode(entry.encode()),
        }
    }

    /// The queued write.
    pub fn entry(&self) -> Option<Vec<u8>> {
        base64::engine::general_purpose::STANDARD
            .decode(&self.entry)
            .ok()
    }
}

#[derive(Default, Serialize, Deserialize)]
struct File {
    next_id: u64,
    letters: VecDeque<DeadLetter>,
}

/// The dead letters, bounded by count (oldest dropped beyond, logged and counted).
pub struct DeadLetters {
    /// `None`: kept in memory only (the Redis queue kind without `behind.journal_dir`; each
    /// letter is also logged in full when recorded).
    path: Option<PathBuf>,
    max: usize,
    state: Mutex<File>,
}

impl DeadLetters {
    pub fn open(path: &Path, max: usize) -> Result<DeadLetters, DeadError> {
        let state = match std::fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| DeadError::Parse(path.to_owned(), e))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => File::default(),
            Err(e) => return Err(DeadError::Io(path.to_owned(), e)),
        };
        metrics::gauge!(names::BEHIND_DEAD_LETTERS_KEPT).set(state.letters.len() as f64);
        Ok(DeadLetters {
            path: Some(path.to_owned()),
            max: max.max(1),
            state: Mutex::new(state),
        })
    }

    /// Dead letters kept in this process only (lost at exit: the log has each of them).
    pub fn in_memory(max: usize) -> DeadLetters {
        metrics::gauge!(names::BEHIND_DEAD_LETTERS_KEPT).set(0.0);
        DeadLetters {
            path: None,
            max: max.max(1),
            state: Mutex::new(File::default()),
        }
    }

    /// Records letters (durably, before returning) of `queue` (`None`: they name theirs
    /// already); one already kept for the same database, queue and number is not added
    /// again.
    pub fn add(
        &self,
        letters: Vec<DeadLetter>,
        kind: &'static str,
        queue: Option<&str>,
    ) -> Result<(), DeadError> {
        let mut state = lock(&self.state);
        for mut letter in letters {
            if let Some(q) = queue {
                letter.queue = q.to_owned();
            }
            if state.letters.iter().any(|l| {
                l.database == letter.database && l.queue == letter.queue && l.seq == letter.seq
            }) {
                continue;
            }
            // The statement's shape only: its values are clients' data (the full letter is
            // in the dead-letter list, behind the admin API).
            let shape = crate::sql::log_shape(letter.statement.as_bytes(), LOGGED_SHAPE);
            warn!(database = %letter.database, role = %letter.role, code = %letter.code, error = %letter.error, statement = %shape, "queued write refused; kept as a dead letter");
            metrics::counter!(names::BEHIND_DEAD_LETTERS, "kind" => kind).increment(1);
            state.next_id += 1;
            letter.id = state.next_id;
            state.letters.push_back(letter);
            while state.letters.len() > self.max {
                if let Some(old) = state.letters.pop_front() {
                    let shape = crate::sql::log_shape(old.statement.as_bytes(), LOGGED_SHAPE);
                    warn!(id = old.id, database = %old.database, statement = %shape, "dead letters full: the oldest is dropped");
                    metrics::counter!(names::BEHIND_DEAD_LETTERS, "kind" => "dropped").increment(1);
                }
            }
        }
        self.save(&state)
    }

    pub fn list(&self) -> Vec<DeadLetter> {
        lock(&self.state).letters.iter().cloned().collect()
    }

    pub fn get(&self, id: u64) -> Option<DeadLetter> {
        lock(&self.state)
            .letters
            .iter()
            .find(|l| l.id == id)
            .cloned()
    }

    /// Drops one; `false` when there is no such letter.
    pub fn remove(&self, id: u64) -> Result<bool, DeadError> {
        let mut state = lock(&self.state);
        let before = state.letters.len();
        state.letters.retain(|l| l.id != id);
        if state.letters.len() == before {
            return Ok(false);
        }
        self.save(&state)?;
        Ok(true)
    }

    /// Writes the file atomically (temporary file, fsync, rename, directory fsync).
    fn save(&self, state: &File) -> Result<(), DeadError> {
        metrics::gauge!(names::BEHIND_DEAD_LETTERS_KEPT).set(state.letters.len() as f64);
        let Some(path) = &self.path else {
            return Ok(());
        };
        let io = |e| DeadError::Io(path.clone(), e);
        let tmp = path.with_extension("json.tmp");
        let bytes =
            serde_json::to_vec_pretty(state).map_err(|e| DeadError::Parse(path.clone(), e))?;
        let mut f = {
            use std::os::unix::fs::OpenOptionsExt;
            // The letters hold the values clients wrote: readable by pgmemo's user only.
            std::fs::File::options()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(super::journal::PRIVATE_FILE)
                .open(&tmp)
                .map_err(io)?
        };
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        Ok(())
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn entry() -> Entry {
        Entry {
            database: "d".into(),
            role: "r".into(),
            search_path: "public".into(),
            settings: Vec::new(),
            db_oid: 1,
            tags: vec![2],
            acked_ms: 0,
            op: Op::Statement {
                sql: Bytes::from_static(b"INSERT INTO t VALUES (1)"),
                types: Bytes::new(),
                bind: Bytes::new(),
                rows: 1,
            },
        }
    }

    #[test]
    fn the_letters_file_is_private_to_pgmemo_s_user() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead.json");
        let d = DeadLetters::open(&path, 2).unwrap();
        d.add(
            vec![DeadLetter::new(1, &entry(), "23505", "dup")],
            "rejected",
            Some("q"),
        )
        .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn letters_survive_reopen_once_each_and_stay_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead.json");
        let d = DeadLetters::open(&path, 2).unwrap();
        let e = entry();
        d.add(
            vec![DeadLetter::new(1, &e, "23505", "dup")],
            "rejected",
            Some("q"),
        )
        .unwrap();
        d.add(
            vec![DeadLetter::new(1, &e, "23505", "dup")],
            "rejected",
            Some("q"),
        )
        .unwrap();
        assert_eq!(d.list().len(), 1, "the same write is kept once");
        d.add(
            vec![
                DeadLetter::new(2, &e, "23505", "dup"),
                DeadLetter::new(3, &e, "42501", "denied"),
            ],
            "rejected",
            Some("q"),
        )
        .unwrap();
        let again = DeadLetters::open(&path, 2).unwrap();
        let seqs: Vec<u64> = again.list().iter().map(|l| l.seq).collect();
        assert_eq!(
            seqs,
            vec![2, 3],
            "bounded, oldest dropped, kept across reopen"
        );
        let id = again.list()[0].id;
        assert!(again.remove(id).unwrap());
        assert!(!again.remove(id).unwrap());
        assert_eq!(Entry::decode(&again.list()[0].entry().unwrap()).unwrap(), e);
    }

    #[test]
    fn the_same_number_in_another_queue_is_another_letter() {
        let d = DeadLetters::in_memory(10);
        let e = entry();
        d.add(
            vec![DeadLetter::new(5, &e, "23505", "a")],
            "rejected",
            Some("q1"),
        )
        .unwrap();
        d.add(
            vec![DeadLetter::new(5, &e, "23505", "b")],
            "rejected",
            Some("q2"),
        )
        .unwrap();
        let queues: Vec<String> = d.list().into_iter().map(|l| l.queue).collect();
        assert_eq!(queues, vec!["q1".to_owned(), "q2".to_owned()]);
    }
}
