//! The write-behind journal: a local, append-only, durable queue of opaque records. pgmemo
//! acknowledges a write-behind INSERT only once [`Journal::append`] has resolved, that is once
//! the record is on disk; another part of pgmemo replays the records to PostgreSQL and then
//! calls [`Journal::release`] for those it no longer needs.
//!
//! # Files (all in the journal's directory)
//! - `journal.id`: 32 lowercase hexadecimal digits and a newline, random, written once when
//!   the journal is created. PostgreSQL's progress rows are keyed by it, so a wiped directory
//!   (a new id) never inherits another journal's progress and skips records it never applied.
//! - `seg-<first sequence, 20 digits>.log`: the segments, e.g. `seg-00000000000000000001.log`.
//!   Each holds records back to back:
//!
//!   ```text
//!   length    u32 LE   payload bytes, at most MAX_RECORD
//!   checksum  u64 LE   SipHash-1-3 (fixed key) of sequence u64 LE, length u32 LE, payload
//!   payload   length bytes
//!   ```
//!
//!   A record's sequence number is its segment's first sequence plus its position, so it is
//!   not stored; it is hashed into the checksum instead, with the length, so that a record read
//!   at the wrong place or a damaged length fails the check. Records are never empty, so the
//!   records end where only zero bytes remain (a header of zeros is never a record). The last
//!   segment is the one being written; a segment is closed and the next one (named after the
//!   next sequence) started once it holds at least `segment_bytes`.
//! - `spare.tmp`: the next segment, made ahead of time (below); ignored and rebuilt by `open`.
//!
//! # Preallocation
//! A segment is born full of zeros: a helper thread writes `segment_bytes` of zeros into
//! `spare.tmp` and fsyncs it, and rotation renames it to the new segment's name (then fsyncs
//! the directory). A group's `fdatasync` then flushes data only: appending to a file that
//! grows also commits its new size through the file system's journal, which is shared with
//! every other writer on that file system (measured here: a loaded disk made each group's
//! sync wait for other processes' metadata; see `bench/durable`). When no spare is ready yet
//! (the first segment, or the helper is behind), the segment is created empty and grows as
//! before; correctness never depends on the spare.
//!
//! # Durability
//! One thread (`pgmemo-journal`) owns the files. Appends reach it through a channel; it takes
//! everything queued (up to 4 MiB or 4096 records), writes it with one `pwrite` after the
//! last durable byte, calls `fdatasync` once, and only then answers every waiter of the group
//! (group commit: concurrent appends share one fsync). A new segment is
//! created, and the directory fsync'd, before any record goes into it, so an acknowledged
//! record never lives in a file whose directory entry could vanish in a crash. The journal's
//! directory is fsync'd into its parent when `open` creates it.
//!
//! # Recovery (`open`)
//! Segments are read in sequence order. A crash can only tear the group being written, which
//! is at the end of the last segment and was never acknowledged: a bad tail there (short
//! header, short payload, bad checksum, anything but zeros after the last record) is
//! truncated away, with a warning, and the file fsync'd (its preallocated zeros go with it:
//! the segment then grows until the next rotation). Zeros after the last record are the
//! preallocated space (or a group whose size was made durable but not its data: never
//! acknowledged either) and stay. The same damage in any other segment cannot come from a crash (those segments
//! were complete and fsync'd before the next one was started), and dropping it would silently
//! lose acknowledged writes, so `open` refuses with the file and the offset. Segments must
//! follow one another without a gap: only the front ones may be missing (released).
//!
//! The next sequence number is the last segment's first sequence plus its record count. The
//! last segment is never released, even when empty, so that number is always derivable from
//! the directory and a sequence number is never used twice, restarts included. For the same
//! reason a directory with `journal.id` but no segment is refused (its segments were removed
//! by hand: starting again at 1 would reuse numbers PostgreSQL already counts as applied),
//! and so is one with segments but no `journal.id` (their progress is keyed by the lost id).
//! Creation writes `seg-00000000000000000001.log` before `journal.id`, so the only state a
//! crash during creation leaves without an id is that one empty segment, which `open`
//! completes.
//!
//! # Failures
//! If a group's write or fdatasync fails, the file is truncated back to the end of the last
//! durable group and fsync'd *before* the waiters are told, so a record whose client heard
//! "failed" can never be replayed later (a crash before the truncation is durable leaves the
//! clients without any answer, like a crash during a commit). Their sequence numbers are then
//! given to the next records: callers never saw them. If the truncation fails too, the group's
//! outcome is unknown ([`JournalError::Indeterminate`]) and the journal is poisoned: every
//! later append fails with [`JournalError::Poisoned`] until pgmemo restarts (`open` then
//! treats the remains as a torn tail, or keeps them if they are intact).
//!
//! Releases delete whole closed segments, oldest first, with a directory fsync after each
//! deletion: were a later deletion durable before an earlier one, a crash would leave a gap
//! in the middle of the sequence, which `open` refuses. The directory is locked (`flock`)
//! while a journal has it open, so two processes never append to the same files.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::future::Future;
use std::hash::Hasher;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};

use bytes::Bytes;
use siphasher::sip::SipHasher13;
use tokio::sync::oneshot;

use crate::telemetry::names;

/// The largest record [`Journal::append`] accepts (16 MiB).
pub const MAX_RECORD: usize = 16 << 20;

/// Mode of the files pgmemo writes (records hold the values clients wrote): owner only.
pub const PRIVATE_FILE: u32 = 0o600;
/// Mode of the directories pgmemo creates for them.
pub const PRIVATE_DIR: u32 = 0o700;

/// A group stops taking queued records once it holds this many bytes (so one group may exceed
/// it by one record) ...
const GROUP_MAX_BYTES: usize = 4 << 20;
/// ... or this many records: bounds the writer's buffer and the latency of the first waiter.
const GROUP_MAX_RECORDS: usize = 4096;

/// Length (4) and checksum (8) before each payload.
const HEADER: usize = 12;
/// The checksum's SipHash key ("pgmemo/journal/v1"): fixed, since the checksum guards
/// against damage, not against an attacker who can write the directory.
const CHECKSUM_KEY: (u64, u64) = (0x7067_6d65_6d6f_2f6a, 0x6f75_726e_616c_2f76);

const ID_FILE: &str = "journal.id";
const SPARE_FILE: &str = "spare.tmp";
/// Zeros written per call while preparing a spare.
const ZERO_CHUNK: usize = 1 << 20;
const ID_TEMP: &str = "journal.id.tmp";
const SEGMENT_PREFIX: &str = "seg-";
const SEGMENT_SUFFIX: &str = ".log";

/// Why the journal could not open, or could not store a record. Cloneable (I/O causes are
/// shared) because one failed group answers all its waiters with the same error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    #[error("journal: cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    #[error(
        "journal: {} is locked by another open journal (another pgmemo process?)",
        path.display()
    )]
    Locked { path: PathBuf },
    #[error("journal: {} is corrupt: {reason}", path.display())]
    BadId { path: PathBuf, reason: &'static str },
    #[error(
        "journal: {} is corrupt at byte {offset} ({reason}) and is not the last segment: \
         refusing to open, since dropping it would lose acknowledged writes",
        path.display()
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: &'static str,
    },
    #[error("journal: {} is inconsistent: {reason}", dir.display())]
    Inconsistent { dir: PathBuf, reason: String },
    #[error("journal: cannot create an id (OS random source): {0}")]
    Random(getrandom::Error),
    #[error("journal: a record of {len} bytes is over the limit of {MAX_RECORD} bytes")]
    TooLarge { len: usize },
    /// Zero bytes are where the records end (see the module header).
    #[error("journal: an empty record cannot be stored")]
    Empty,
    /// The record was not stored (the partial write was undone): report the write as failed.
    #[error("journal: writing {} failed, the record was not stored: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    /// The write failed and undoing it failed too: the record may still be replayed after a
    /// restart. Its client must not be told that the write failed (end the session instead).
    #[error(
        "journal: writing {} failed ({write}) and so did undoing it ({truncate}): the record \
         may or may not be applied",
        path.display()
    )]
    Indeterminate {
        path: PathBuf,
        #[source]
        write: Arc<io::Error>,
        truncate: Arc<io::Error>,
    },
    /// An earlier failure could not be undone: nothing is appended until pgmemo restarts.
    #[error(
        "journal: refusing appends since a failed write to {} could not be undone ({cause}); \
         restart pgmemo to recover",
        path.display()
    )]
    Poisoned {
        path: PathBuf,
        cause: Arc<io::Error>,
    },
    #[error("journal: the writer thread has stopped")]
    Closed,
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> JournalError {
    let path = path.to_path_buf();
    move |e| JournalError::Io {
        op,
        path,
        source: Arc::new(e),
    }
}

/// What `open` found on disk.
#[derive(Debug)]
pub struct Recovered {
    /// Every intact record still on disk, in sequence order (released ones included until
    /// their segment is deleted: the replayer skips what PostgreSQL already has).
    pub records: Vec<(u64, Bytes)>,
}

/// The handle shared by the sessions and the replayer. Appending and releasing only queue a
/// message for the writer thread, so neither blocks the caller; `open` does blocking I/O.
pub struct Journal {
    id: String,
    queue: mpsc::Sender<Msg>,
    disk_bytes: Arc<AtomicU64>,
    #[cfg(test)]
    hooks: Arc<tests::Hooks>,
    #[cfg(test)]
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("id", &self.id)
            .field("disk_bytes", &self.disk_bytes())
            .finish_non_exhaustive()
    }
}

// Shared as Arc<Journal> across tokio tasks.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Journal>();
};

enum Msg {
    Append(Pending),
    Release(u64),
}

/// What the writer thread calls with a record's outcome, once its group is durable (or
/// failed). It runs on that thread, between groups: it must be quick and must not block.
pub type Done = Box<dyn FnOnce(Result<u64, JournalError>) + Send>;

struct Pending {
    record: Bytes,
    /// Taken when called; a record dropped unanswered (the writer thread gone) is answered
    /// `Closed` by `Drop`, so no caller waits forever.
    done: Option<Done>,
}

impl Pending {
    fn finish(mut self, result: Result<u64, JournalError>) {
        if let Some(done) = self.done.take() {
            call(done, result);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            call(done, Err(JournalError::Closed));
        }
    }
}

/// Calls a record's callback on the writer thread. A callback that panics must not take the
/// thread down with the rest of its group unanswered and every later append refused.
fn call(done: Done, result: Result<u64, JournalError>) {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || done(result)));
    if outcome.is_err() {
        tracing::error!("journal: a write's completion panicked; the journal carries on");
    }
}

impl Journal {
    /// Opens (creating `dir` and its files if missing) the journal in `dir`. `segment_bytes`:
    /// a segment file is closed and a new one started once it holds at least this many bytes.
    /// Reads every segment (see the module header for what is repaired and what is refused);
    /// blocking: call it before serving or from a blocking thread.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<(Arc<Journal>, Recovered), JournalError> {
        let dir_handle = lock_directory(dir)?;
        let mut firsts = list_segments(dir)?;
        let id = load_or_create_id(dir, &dir_handle, &mut firsts)?;
        let recovery = recover(dir, &firsts)?;
        let path = segment_path(dir, recovery.current.first);
        let file = File::options()
            .write(true)
            .open(&path)
            .map_err(io_error("open", &path))?;

        let disk_bytes = Arc::new(AtomicU64::new(0));
        #[cfg(test)]
        let hooks = Arc::new(tests::Hooks::default());
        let mut writer = Writer {
            dir: dir.to_path_buf(),
            dir_handle,
            segment_bytes,
            older_bytes: recovery.older.iter().map(|s| s.bytes).sum(),
            older: recovery.older,
            current: recovery.current,
            file,
            next_seq: recovery.next_seq,
            buf: Vec::new(),
            poisoned: None,
            unsynced_unlink: false,
            spare: None,
            disk_bytes: disk_bytes.clone(),
            #[cfg(test)]
            hooks: hooks.clone(),
        };
        writer.publish_size();
        // A spare left by an earlier run may be half written: made again.
        match fs::remove_file(spare_path(dir)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_error("remove", &spare_path(dir))(e));
            }
            _ => {}
        }
        writer.rotate_if_full_or_warn();
        writer.prepare_next();

        let (queue, inbox) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("pgmemo-journal".into())
            .spawn(move || writer.run(inbox))
            .map_err(io_error("start the writer thread of", dir))?;
        // Detached: the thread ends by itself once the last Journal is dropped and what was
        // queued is written.
        #[cfg(not(test))]
        drop(thread);
        let journal = Journal {
            id,
            queue,
            disk_bytes,
            #[cfg(test)]
            hooks,
            #[cfg(test)]
            thread: std::sync::Mutex::new(Some(thread)),
        };
        let recovered = Recovered {
            records: recovery.records,
        };
        Ok((Arc::new(journal), recovered))
    }

    /// A random identifier created with the journal (hex, 32 chars, stored in
    /// `dir/journal.id`, fsync'd with its directory) and kept for its life: progress rows in
    /// PostgreSQL are keyed by it, so a wiped directory never inherits another journal's
    /// progress.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Appends one record (opaque bytes, not empty, at most [`MAX_RECORD`]) and resolves once it and
    /// everything before it is on disk (written and fdatasync'd; after a new segment file is
    /// created, the directory is fsync'd too). Concurrent appends are written together and
    /// share one fdatasync. Resolves to the record's sequence number: strictly increasing
    /// across the journal's whole life, restarts included (first record = 1).
    ///
    /// The record is queued by this call, not when the future is first polled, so records
    /// appended one after another by one caller get increasing numbers. Dropping the future
    /// does not withdraw the record: it is written all the same.
    pub fn append(
        &self,
        record: Bytes,
    ) -> impl Future<Output = Result<u64, JournalError>> + Send + 'static + use<> {
        let (done, answer) = oneshot::channel();
        self.append_then(
            record,
            Box::new(move |result| {
                let _ = done.send(result);
            }),
        );
        // A dropped answer means the writer thread is gone.
        async move { answer.await.unwrap_or(Err(JournalError::Closed)) }
    }

    /// [`Journal::append`] with the outcome handed to `done` on the writer thread instead of
    /// to a future: a caller that has more to do once the record is durable does it there,
    /// without waking a task for it (one thread hop less per write). `done` is called exactly
    /// once, at once when the record is refused.
    pub fn append_then(&self, record: Bytes, done: Done) {
        if record.len() > MAX_RECORD {
            return done(Err(JournalError::TooLarge { len: record.len() }));
        }
        if record.is_empty() {
            return done(Err(JournalError::Empty));
        }
        // Refused by a stopped writer: the message is dropped, and `Pending` answers Closed.
        let _ = self.queue.send(Msg::Append(Pending {
            record,
            done: Some(done),
        }));
    }

    /// Every record with sequence <= `upto` is no longer needed: segment files holding only
    /// such records are deleted (the segment currently written is never deleted, so the next
    /// sequence number is always recoverable from the directory). Done by the writer thread
    /// after the group it is writing.
    pub fn release(&self, upto: u64) {
        // A stopped writer deletes nothing; the next open reads those segments again and the
        // replayer skips what PostgreSQL already has.
        let _ = self.queue.send(Msg::Release(upto));
    }

    /// Bytes of the segment files on disk (for a metric).
    pub fn disk_bytes(&self) -> u64 {
        self.disk_bytes.load(Ordering::Relaxed)
    }
}

/// One segment file: the sequence of its first record, and its length up to the end of the
/// last durable group.
#[derive(Debug, Clone, Copy)]
struct Segment {
    first: u64,
    bytes: u64,
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{SEGMENT_PREFIX}{first:020}{SEGMENT_SUFFIX}"))
}

/// Creates `dir` if missing, and opens and locks it for the journal's life: the lock goes
/// with the handle, which the writer thread keeps (and fsyncs after changing the directory).
fn lock_directory(dir: &Path) -> Result<File, JournalError> {
    create_dir_durably(dir).map_err(io_error("create directory", dir))?;
    let handle = File::open(dir).map_err(io_error("open directory", dir))?;
    match handle.try_lock() {
        Ok(()) => Ok(handle),
        Err(fs::TryLockError::WouldBlock) => Err(JournalError::Locked {
            path: dir.to_path_buf(),
        }),
        Err(fs::TryLockError::Error(e)) => Err(io_error("lock", dir)(e)),
    }
}

/// The first sequences of the segment files in `dir`, in order. Other files are ignored; a
/// file that looks like a segment but whose number does not parse is refused, rather than
/// skipped, since skipping a segment would skip its records.
fn list_segments(dir: &Path) -> Result<Vec<u64>, JournalError> {
    let mut firsts = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error("list", dir))? {
        let entry = entry.map_err(io_error("list", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(number) = name
            .strip_prefix(SEGMENT_PREFIX)
            .and_then(|n| n.strip_suffix(SEGMENT_SUFFIX))
        else {
            continue;
        };
        match number.parse::<u64>() {
            Ok(first) if number.len() == 20 && first > 0 => firsts.push(first),
            _ => {
                return Err(JournalError::Inconsistent {
                    dir: dir.to_path_buf(),
                    reason: format!(
                        "{name} looks like a segment but is not named seg-<20 digits>.log"
                    ),
                });
            }
        }
    }
    firsts.sort_unstable();
    Ok(firsts)
}

/// Creates `dir` and any missing parents, fsyncing each new directory into its parent: a
/// journal whose directory entry is lost in a crash loses every record in it.
fn create_dir_durably(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    create_dir_durably(parent)?;
    match fs::DirBuilder::new().mode(PRIVATE_DIR).create(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    File::open(parent)?.sync_all()
}

/// Creates the (empty) segment file at `path` and fsyncs the directory, so that records
/// written into it survive a crash with the file. A file already there is accepted only if
/// it holds no record (empty or zeros): the leftover of an earlier attempt whose directory
/// fsync failed.
fn create_segment(path: &Path, dir_handle: &File) -> io::Result<File> {
    let file = File::options()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(PRIVATE_FILE)
        .open(path)?;
    if file.metadata()?.len() != 0 && !only_zeros(path)? {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "a segment with this name already holds data",
        ));
    }
    dir_handle.sync_all()?;
    Ok(file)
}

/// Reads `journal.id`, or creates the journal's id and first segment (see the module header
/// for why a directory with only one of the two is refused).
fn load_or_create_id(
    dir: &Path,
    dir_handle: &File,
    firsts: &mut Vec<u64>,
) -> Result<String, JournalError> {
    let path = dir.join(ID_FILE);
    let inconsistent = |reason: &str| JournalError::Inconsistent {
        dir: dir.to_path_buf(),
        reason: reason.to_string(),
    };
    match fs::read(&path) {
        Ok(bytes) => {
            let id = parse_id(&bytes).map_err(|reason| JournalError::BadId {
                path: path.clone(),
                reason,
            })?;
            if firsts.is_empty() {
                return Err(inconsistent(
                    "journal.id exists but no segment file does: the next sequence number \
                     cannot be recovered (starting again at 1 would reuse numbers PostgreSQL \
                     counts as applied); remove the whole directory to start a new journal",
                ));
            }
            Ok(id)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let first = segment_path(dir, 1);
            if firsts.is_empty() {
                create_segment(&first, dir_handle).map_err(io_error("create", &first))?;
                firsts.push(1);
            } else {
                // A crash between creating the first segment and the id leaves exactly that
                // segment, empty; anything else lost its id.
                let len = fs::metadata(&first).map_err(io_error("stat", &first));
                if firsts.as_slice() != [1] || len?.len() != 0 {
                    return Err(inconsistent(
                        "segment files exist but journal.id does not: their records' progress \
                         in PostgreSQL is keyed by the lost id, so replaying them under a new \
                         one could apply them twice; restore journal.id, or remove the \
                         directory once its records are known to be applied",
                    ));
                }
            }
            let id = new_id()?;
            write_id(dir, dir_handle, &id)?;
            Ok(id)
        }
        Err(e) => Err(io_error("read", &path)(e)),
    }
}

fn parse_id(bytes: &[u8]) -> Result<String, &'static str> {
    let hex = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if hex.len() != 32 {
        return Err("not 32 hexadecimal digits");
    }
    if !hex.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err("not lowercase hexadecimal");
    }
    String::from_utf8(hex.to_vec()).map_err(|_| "not lowercase hexadecimal")
}

fn new_id() -> Result<String, JournalError> {
    let mut bits = [0u8; 16];
    getrandom::fill(&mut bits).map_err(JournalError::Random)?;
    Ok(format!("{:032x}", u128::from_be_bytes(bits)))
}

/// Writes `journal.id` so that it is either absent or complete: a temporary file, fsync'd,
/// renamed, and the directory fsync'd.
fn write_id(dir: &Path, dir_handle: &File, id: &str) -> Result<(), JournalError> {
    let temp = dir.join(ID_TEMP);
    let path = dir.join(ID_FILE);
    let mut file = File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(PRIVATE_FILE)
        .open(&temp)
        .map_err(io_error("create", &temp))?;
    file.write_all(format!("{id}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error("write", &temp))?;
    fs::rename(&temp, &path).map_err(io_error("rename into", &path))?;
    dir_handle.sync_all().map_err(io_error("fsync", dir))
}

fn checksum(seq: u64, payload: &[u8]) -> u64 {
    // Bytes only (not `write_u64`, whose encoding is the platform's), so files move between
    // machines.
    let mut h = SipHasher13::new_with_keys(CHECKSUM_KEY.0, CHECKSUM_KEY.1);
    h.write(&seq.to_le_bytes());
    h.write(&record_len(payload).to_le_bytes());
    h.write(payload);
    h.finish()
}

/// The length field of a payload ([`Journal::append`] refused anything over MAX_RECORD, so
/// this always fits).
fn record_len(payload: &[u8]) -> u32 {
    u32::try_from(payload.len()).unwrap_or(u32::MAX)
}

fn encode(buf: &mut Vec<u8>, seq: u64, payload: &[u8]) {
    buf.extend_from_slice(&record_len(payload).to_le_bytes());
    buf.extend_from_slice(&checksum(seq, payload).to_le_bytes());
    buf.extend_from_slice(payload);
}

/// What reading one segment found.
struct Scan {
    records: Vec<(u64, Bytes)>,
    /// Bytes of intact records from the start of the file.
    valid: u64,
    /// Why the bytes after `valid` are not a record, if there are any.
    damage: Option<&'static str>,
}

/// Reads the records of a segment whose first sequence is `first`, up to the end of the
/// file or the first bad record.
fn scan(data: &Bytes, first: u64) -> Scan {
    let mut records = Vec::new();
    let mut rest: &[u8] = data;
    let damage = loop {
        if rest.iter().all(|&b| b == 0) {
            // The end, or the preallocated zeros after it.
            break None;
        }
        let Some((len, sum, after)) = split_header(rest) else {
            break Some("torn record header");
        };
        if len > MAX_RECORD {
            break Some("record length over the limit");
        }
        if len == 0 {
            break Some("data after the end of the records");
        }
        let Some((payload, after)) = after.split_at_checked(len) else {
            break Some("torn record payload");
        };
        let seq = first + records.len() as u64;
        if checksum(seq, payload) != sum {
            break Some("checksum mismatch");
        }
        records.push((seq, data.slice_ref(payload)));
        rest = after;
    };
    Scan {
        records,
        valid: (data.len() - rest.len()) as u64,
        damage,
    }
}

/// Where the spare segment is prepared.
fn spare_path(dir: &Path) -> PathBuf {
    dir.join(SPARE_FILE)
}

/// Writes `bytes` zeros into a new `spare.tmp` and makes them durable (its size included):
/// the next segment, ready to be renamed into place. Runs on a helper thread.
fn prepare_spare(dir: &Path, bytes: u64) -> io::Result<()> {
    let path = spare_path(dir);
    let file = File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(PRIVATE_FILE)
        .open(&path)?;
    let zeros = vec![0u8; ZERO_CHUNK];
    let mut at = 0u64;
    while at < bytes {
        let n = usize::try_from(bytes - at).map_or(ZERO_CHUNK, |left| left.min(ZERO_CHUNK));
        file.write_all_at(zeros.get(..n).unwrap_or(&zeros), at)?;
        at += n as u64;
    }
    file.sync_all()
}

/// Whether the file at `path` holds nothing but zeros (a leftover segment no record reached).
fn only_zeros(path: &Path) -> io::Result<bool> {
    Ok(fs::read(path)?.iter().all(|&b| b == 0))
}

/// A record's length and checksum, and what follows them.
fn split_header(bytes: &[u8]) -> Option<(usize, u64, &[u8])> {
    let (len, rest) = bytes.split_first_chunk::<4>()?;
    let (sum, rest) = rest.split_first_chunk::<8>()?;
    let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
    Some((len, u64::from_le_bytes(*sum), rest))
}

/// The state `open` rebuilds from the segments.
struct Recovery {
    older: VecDeque<Segment>,
    current: Segment,
    next_seq: u64,
    records: Vec<(u64, Bytes)>,
}

/// Reads the segments `firsts` (sorted, at least one), checks that they follow one another,
/// and drops a torn tail of the last one.
fn recover(dir: &Path, firsts: &[u64]) -> Result<Recovery, JournalError> {
    let mut segments = VecDeque::new();
    let mut records = Vec::new();
    let mut next_seq: Option<u64> = None;
    for (i, &first) in firsts.iter().enumerate() {
        let path = segment_path(dir, first);
        if let Some(expected) = next_seq
            && first != expected
        {
            return Err(JournalError::Inconsistent {
                dir: dir.to_path_buf(),
                reason: format!(
                    "{} starts at sequence {first} but the segment before it ends before \
                     {expected}: a segment in the middle is missing or damaged",
                    path.display()
                ),
            });
        }
        let data = Bytes::from(fs::read(&path).map_err(io_error("read", &path))?);
        let scan = scan(&data, first);
        if let Some(reason) = scan.damage {
            if i + 1 < firsts.len() {
                return Err(JournalError::Corrupt {
                    path,
                    offset: scan.valid,
                    reason,
                });
            }
            drop_torn_tail(&path, scan.valid, data.len() as u64, reason)?;
        }
        next_seq = Some(first + scan.records.len() as u64);
        records.extend(scan.records);
        segments.push_back(Segment {
            first,
            bytes: scan.valid,
        });
    }
    let (Some(current), Some(next_seq)) = (segments.pop_back(), next_seq) else {
        return Err(JournalError::Inconsistent {
            dir: dir.to_path_buf(),
            reason: "no segment file".to_string(),
        });
    };
    Ok(Recovery {
        older: segments,
        current,
        next_seq,
        records,
    })
}

/// Truncates the last segment to its intact records. The bytes dropped are the group a crash
/// (or an undo that failed) interrupted: never acknowledged.
fn drop_torn_tail(path: &Path, valid: u64, len: u64, reason: &str) -> Result<(), JournalError> {
    tracing::warn!(
        file = %path.display(),
        offset = valid,
        dropped_bytes = len - valid,
        reason,
        "journal: dropping the torn tail of the last segment (an unacknowledged write \
         interrupted by a crash)"
    );
    let file = File::options()
        .write(true)
        .open(path)
        .map_err(io_error("open", path))?;
    file.set_len(valid)
        .and_then(|()| file.sync_all())
        .map_err(io_error("truncate", path))
}

/// The writer thread's state: it alone touches the segment files after `open`.
struct Writer {
    dir: PathBuf,
    /// Locked for the journal's life; fsync'd after segments are created or deleted.
    dir_handle: File,
    segment_bytes: u64,
    /// Closed segments, oldest first, and the sum of their sizes.
    older: VecDeque<Segment>,
    older_bytes: u64,
    /// The segment being written (`file`); `bytes` is where the next group goes.
    current: Segment,
    file: File,
    next_seq: u64,
    /// Reused between groups.
    buf: Vec<u8>,
    /// Set when a failed group could not be undone (see [`JournalError::Poisoned`]).
    poisoned: Option<JournalError>,
    /// A segment was deleted but the directory fsync after it failed.
    unsynced_unlink: bool,
    /// The helper thread preparing `spare.tmp` (see Preallocation in the module header).
    spare: Option<std::thread::JoinHandle<io::Result<()>>>,
    disk_bytes: Arc<AtomicU64>,
    #[cfg(test)]
    hooks: Arc<tests::Hooks>,
}

impl Writer {
    /// Serves the queue until every sender is gone (the last `Journal` dropped) and what
    /// they queued is done.
    fn run(mut self, inbox: mpsc::Receiver<Msg>) {
        while let Ok(first) = inbox.recv() {
            let (group, release) = take_group(first, &inbox);
            if !group.is_empty() {
                self.commit(group);
            }
            if let Some(upto) = release {
                self.release(upto);
            }
        }
    }

    /// Stores the group and answers its waiters: each its sequence, or all the same error.
    fn commit(&mut self, group: Vec<Pending>) {
        match self.store(&group) {
            Ok(first) => {
                for (seq, pending) in (first..).zip(group) {
                    // A waiter that went away does not unwrite its record.
                    pending.finish(Ok(seq));
                }
                self.rotate_if_full_or_warn();
            }
            Err(e) => {
                for pending in group {
                    pending.finish(Err(e.clone()));
                }
            }
        }
    }

    /// Writes the group after the last durable byte and fdatasyncs it; the first record's
    /// sequence once all of it is durable.
    fn store(&mut self, group: &[Pending]) -> Result<u64, JournalError> {
        if let Some(poisoned) = &self.poisoned {
            return Err(poisoned.clone());
        }
        // Still full if the rotation after the previous group failed: retry it, or fail this
        // group (nothing written) rather than grow the segment without bound.
        if self.is_full() {
            self.rotate()?;
        }
        self.adopt_spare_if_empty();
        let first = self.next_seq;
        let started = std::time::Instant::now();
        self.buf.clear();
        for (seq, pending) in (first..).zip(group) {
            encode(&mut self.buf, seq, &pending.record);
        }
        let written = self.write_and_sync();
        let len = self.buf.len() as u64;
        // One huge record must not pin its buffer for the journal's life.
        if self.buf.capacity() > 2 * GROUP_MAX_BYTES {
            self.buf = Vec::new();
        }
        if let Err(e) = written {
            return Err(self.undo(Arc::new(e)));
        }
        metrics::histogram!(names::BEHIND_JOURNAL_SYNC_SECONDS)
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!(names::BEHIND_JOURNAL_GROUP_RECORDS).record(group.len() as f64);
        self.current.bytes += len;
        self.next_seq += group.len() as u64;
        self.publish_size();
        Ok(first)
    }

    fn write_and_sync(&self) -> io::Result<()> {
        #[cfg(test)]
        self.hooks
            .before_write(&self.file, self.current.bytes, &self.buf)?;
        self.file.write_all_at(&self.buf, self.current.bytes)?;
        self.file.sync_data()
    }

    /// Removes whatever a failed group left past the last durable byte, durably, so none of
    /// it can be replayed after its waiters were told it failed.
    fn undo(&mut self, write: Arc<io::Error>) -> JournalError {
        let path = segment_path(&self.dir, self.current.first);
        match self.truncate_to_durable() {
            Ok(()) => JournalError::Write {
                path,
                source: write,
            },
            Err(e) => {
                let truncate = Arc::new(e);
                tracing::error!(
                    file = %path.display(),
                    write = %write,
                    truncate = %truncate,
                    "journal: a failed write could not be undone; refusing appends until restart"
                );
                self.poisoned = Some(JournalError::Poisoned {
                    path: path.clone(),
                    cause: truncate.clone(),
                });
                JournalError::Indeterminate {
                    path,
                    write,
                    truncate,
                }
            }
        }
    }

    fn truncate_to_durable(&self) -> io::Result<()> {
        #[cfg(test)]
        self.hooks.before_truncate()?;
        self.file.set_len(self.current.bytes)?;
        // sync_all, not sync_data: the new length is the point.
        self.file.sync_all()
    }

    /// An empty segment is never full: rotating it would create a second file with its name.
    fn is_full(&self) -> bool {
        self.current.bytes > 0 && self.current.bytes >= self.segment_bytes
    }

    /// Closes the current segment and starts the next, named after the next sequence. Done
    /// after the group that filled it, so that a fully released segment can be deleted
    /// without waiting for another append.
    fn rotate_if_full_or_warn(&mut self) {
        if self.is_full()
            && let Err(e) = self.rotate()
        {
            tracing::warn!(
                error = %e,
                "journal: cannot start a new segment (retried before the next write)"
            );
        }
    }

    fn rotate(&mut self) -> Result<(), JournalError> {
        let path = segment_path(&self.dir, self.next_seq);
        let file = match self.take_spare(&path) {
            Some(file) => file,
            None => create_segment(&path, &self.dir_handle),
        }
        .map_err(|e| JournalError::Write {
            path,
            source: Arc::new(e),
        })?;
        self.prepare_next();
        let next = Segment {
            first: self.next_seq,
            bytes: 0,
        };
        let closed = std::mem::replace(&mut self.current, next);
        self.older_bytes += closed.bytes;
        self.older.push_back(closed);
        self.file = file;
        Ok(())
    }

    /// A current segment without records that was created empty (a new journal, or no spare
    /// was ready at the rotation) is replaced by the spare once that is ready: same name,
    /// nothing in it to lose, and the groups after it flush data only.
    fn adopt_spare_if_empty(&mut self) {
        if self.current.bytes != 0
            || self
                .file
                .metadata()
                .map_or(true, |m| m.len() >= self.segment_bytes)
        {
            return;
        }
        let path = segment_path(&self.dir, self.current.first);
        match self.take_spare(&path) {
            Some(Ok(file)) => {
                self.file = file;
                self.prepare_next();
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "journal: cannot put a preallocated segment in place")
            }
            None => {}
        }
    }

    /// Starts preparing the next segment's zeros, unless that is already under way.
    fn prepare_next(&mut self) {
        if self.spare.is_some() {
            return;
        }
        let (dir, bytes) = (self.dir.clone(), self.segment_bytes);
        #[cfg(test)]
        let hooks = self.hooks.clone();
        let started = std::thread::Builder::new()
            .name("pgmemo-journal-spare".into())
            .spawn(move || {
                let prepared = prepare_spare(&dir, bytes);
                #[cfg(test)]
                hooks.spares.fetch_add(1, Ordering::SeqCst);
                prepared
            });
        match started {
            Ok(handle) => self.spare = Some(handle),
            // Segments are then created empty and grow: slower groups, nothing lost.
            Err(e) => tracing::warn!(error = %e, "journal: cannot start preallocating segments"),
        }
    }

    /// The spare renamed to `path`, made durable in the directory; `None` when no spare is
    /// ready (still being written, or it failed: then the next one is started).
    fn take_spare(&mut self, path: &Path) -> Option<io::Result<File>> {
        if !self.spare.as_ref()?.is_finished() {
            return None;
        }
        match self.spare.take()?.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "journal: preallocating a segment failed; creating it empty");
                return None;
            }
            Err(_) => {
                tracing::error!("journal: the thread preallocating segments panicked");
                return None;
            }
        }
        // A file already at `path` is the leftover of a rotation whose directory fsync
        // failed; renaming over it is only safe if no record ever reached it.
        match only_zeros(path) {
            Ok(false) => {
                return Some(Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "a segment with this name already holds data",
                )));
            }
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Some(Err(e)),
            _ => {}
        }
        Some(
            fs::rename(spare_path(&self.dir), path)
                .and_then(|()| self.dir_handle.sync_all())
                .and_then(|()| File::options().write(true).open(path)),
        )
    }

    /// Deletes the closed segments whose records are all <= `upto`, oldest first.
    fn release(&mut self, upto: u64) {
        while let Some(front) = self.older.front() {
            // The front segment ends just before the next segment's first record.
            let next_first = self.older.get(1).map_or(self.current.first, |s| s.first);
            if next_first > upto.saturating_add(1) {
                break;
            }
            let path = segment_path(&self.dir, front.first);
            if let Err(e) = self.delete_front(&path) {
                tracing::warn!(
                    file = %path.display(),
                    error = %e,
                    "journal: cannot delete a released segment (retried at the next release)"
                );
                break;
            }
        }
    }

    fn delete_front(&mut self, path: &Path) -> io::Result<()> {
        // Each deletion is durable before the next: otherwise a crash could keep an older
        // segment but not a newer one, a gap `open` refuses.
        if self.unsynced_unlink {
            self.dir_handle.sync_all()?;
            self.unsynced_unlink = false;
        }
        match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        if let Some(deleted) = self.older.pop_front() {
            self.older_bytes -= deleted.bytes;
        }
        self.publish_size();
        self.unsynced_unlink = true;
        self.dir_handle.sync_all()?;
        self.unsynced_unlink = false;
        Ok(())
    }

    fn publish_size(&self) {
        self.disk_bytes
            .store(self.older_bytes + self.current.bytes, Ordering::Relaxed);
    }
}

/// `first` and whatever else is queued, up to the group bounds: the appends to write
/// together, and the highest release among the messages taken.
fn take_group(first: Msg, inbox: &mpsc::Receiver<Msg>) -> (Vec<Pending>, Option<u64>) {
    let mut group = Vec::new();
    let mut bytes = 0;
    let mut release = None;
    let mut next = Some(first);
    while let Some(msg) = next {
        match msg {
            Msg::Append(pending) => {
                bytes += HEADER + pending.record.len();
                group.push(pending);
            }
            Msg::Release(upto) => release = release.max(Some(upto)),
        }
        next = if bytes < GROUP_MAX_BYTES && group.len() < GROUP_MAX_RECORDS {
            inbox.try_recv().ok()
        } else {
            None
        };
    }
    (group, release)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicU32;

    /// Test-only controls of the writer thread.
    #[derive(Default)]
    pub(super) struct Hooks {
        /// Groups that reached the write (one fdatasync each).
        syncs: AtomicU64,
        /// The next this-many writes write half their bytes and then fail.
        fail_writes: AtomicU32,
        /// The next this-many undos fail.
        fail_truncates: AtomicU32,
        /// Held by a test to keep the writer from writing (as a slow disk would).
        gate: Mutex<()>,
        /// Spare segments prepared (or failed).
        pub(super) spares: AtomicU64,
    }

    fn take_one(counter: &AtomicU32) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    impl Hooks {
        pub(super) fn before_write(&self, file: &File, at: u64, buf: &[u8]) -> io::Result<()> {
            drop(self.gate.lock().unwrap());
            if take_one(&self.fail_writes) {
                file.write_all_at(&buf[..buf.len() / 2], at)?;
                return Err(io::Error::other("injected write failure"));
            }
            self.syncs.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }

        pub(super) fn before_truncate(&self) -> io::Result<()> {
            if take_one(&self.fail_truncates) {
                return Err(io::Error::other("injected truncate failure"));
            }
            Ok(())
        }
    }

    fn open(dir: &Path, segment_bytes: u64) -> (Arc<Journal>, Vec<(u64, Bytes)>) {
        let (journal, recovered) = Journal::open(dir, segment_bytes).unwrap();
        (journal, recovered.records)
    }

    /// Drops the journal and waits for its writer to finish what is queued and exit (so the
    /// directory is unlocked and every queued release is done).
    fn close(journal: Arc<Journal>) {
        let thread = journal.thread.lock().unwrap().take().unwrap();
        assert_eq!(Arc::strong_count(&journal), 1);
        drop(journal);
        thread.join().unwrap();
    }

    fn record(i: u64) -> Bytes {
        Bytes::from(format!("record {i:04} {}", "x".repeat(80)))
    }

    async fn append_all(journal: &Journal, range: std::ops::RangeInclusive<u64>) -> Vec<u64> {
        let mut seqs = Vec::new();
        for i in range {
            seqs.push(journal.append(record(i)).await.unwrap());
        }
        seqs
    }

    fn segment_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(SEGMENT_PREFIX))
            .collect();
        names.sort();
        names
    }

    fn seg(first: u64) -> String {
        format!("seg-{first:020}.log")
    }

    /// Records hold the values clients wrote: the directory pgmemo creates, the segments
    /// and the id file are its user's only, whatever the umask.
    #[tokio::test]
    async fn journal_files_are_private_to_pgmemo_s_user() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("nested").join("journal");
        let (journal, _) = open(&dir, 1 << 20);
        append_all(&journal, 1..=2).await;
        close(journal);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&base.path().join("nested")), 0o700);
        assert_eq!(mode(&dir.join(seg(1))), 0o600);
        assert_eq!(mode(&dir.join(ID_FILE)), 0o600);
    }

    #[tokio::test]
    async fn sequences_start_at_one_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, records) = open(dir.path(), 1 << 20);
        assert!(records.is_empty());
        assert_eq!(append_all(&journal, 1..=5).await, vec![1, 2, 3, 4, 5]);
        assert_eq!(journal.disk_bytes(), 5 * (HEADER as u64 + 92));
        close(journal);

        let (journal, records) = open(dir.path(), 1 << 20);
        let expected: Vec<_> = (1..=5).map(|i| (i, record(i))).collect();
        assert_eq!(records, expected);
        assert_eq!(append_all(&journal, 6..=7).await, vec![6, 7]);
        close(journal);
        let (_journal, records) = open(dir.path(), 1 << 20);
        assert_eq!(records.len(), 7);
        assert_eq!(records.last().unwrap(), &(7, record(7)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    // The gate is a std mutex held by the test's own (block_on) future on purpose.
    #[allow(clippy::await_holding_lock)]
    async fn concurrent_appends_share_fsyncs() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = open(dir.path(), 1 << 20);
        // Hold the writer at its next write, as a slow disk would, until all 200 are queued.
        let gate = journal.hooks.gate.lock().unwrap();
        let queued = Arc::new(AtomicU32::new(0));
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let journal = journal.clone();
                let queued = queued.clone();
                tokio::spawn(async move {
                    let append = journal.append(record(i));
                    queued.fetch_add(1, Ordering::SeqCst);
                    (i, append.await.unwrap())
                })
            })
            .collect();
        while queued.load(Ordering::SeqCst) < 200 {
            tokio::task::yield_now().await;
        }
        drop(gate);
        let mut seqs = Vec::new();
        for task in tasks {
            seqs.push(task.await.unwrap());
        }
        let syncs = journal.hooks.syncs.load(Ordering::SeqCst);
        // The group the writer held at the gate (the first one or few), then all the rest.
        assert!(syncs <= 2, "200 appends took {syncs} fdatasyncs");
        let mut numbers: Vec<u64> = seqs.iter().map(|(_, s)| *s).collect();
        numbers.sort_unstable();
        assert_eq!(numbers, (1..=200).collect::<Vec<_>>());
        close(journal);

        let (_journal, records) = open(dir.path(), 1 << 20);
        for (i, seq) in seqs {
            assert_eq!(records[seq as usize - 1], (seq, record(i)));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_appends_are_numbered_in_each_callers_order() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = open(dir.path(), 1 << 20);
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let journal = journal.clone();
                tokio::spawn(async move {
                    let mut last = 0;
                    for _ in 0..50 {
                        let seq = journal.append(record(t)).await.unwrap();
                        // One caller's records are numbered in the order it appended them.
                        assert!(seq > last);
                        last = seq;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        close(journal);
        let (_journal, records) = open(dir.path(), 1 << 20);
        let seqs: Vec<u64> = records.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (1..=400).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_record_cut_short_at_the_tail_is_dropped_and_its_number_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = open(dir.path(), 1 << 20);
        append_all(&journal, 1..=3).await;
        close(journal);
        let path = dir.path().join(seg(1));
        let len = fs::metadata(&path).unwrap().len();
        let one = HEADER as u64 + 92;
        for cut in [len - 1, len - 50, len - one + 5] {
            let file = File::options().write(true).open(&path).unwrap();
            file.set_len(cut).unwrap();
            drop(file);
            let (journal, records) = open(dir.path(), 1 << 20);
            assert_eq!(records, vec![(1, record(1)), (2, record(2))]);
            assert_eq!(fs::metadata(&path).unwrap().len(), 2 * one);
            assert_eq!(journal.append(record(30)).await.unwrap(), 3);
            close(journal);
            let (journal, records) = open(dir.path(), 1 << 20);
            assert_eq!(records.last().unwrap(), &(3, record(30)));
            close(journal);
        }
    }

    #[tokio::test]
    async fn a_flipped_byte_in_the_last_record_drops_it() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = open(dir.path(), 1 << 20);
        append_all(&journal, 1..=3).await;
        close(journal);
        let path = dir.path().join(seg(1));
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 10;
        bytes[last] ^= 0x01;
        fs::write(&path, &bytes).unwrap();

        let (journal, records) = open(dir.path(), 1 << 20);
        assert_eq!(records.len(), 2);
        assert_eq!(journal.append(record(4)).await.unwrap(), 3);
        close(journal);
        let (_journal, records) = open(dir.path(), 1 << 20);
        assert_eq!(records.last().unwrap(), &(3, record(4)));
    }

    #[tokio::test]
    async fn a_zero_filled_tail_is_free_space() {
        // What a crash can leave after the file's size was made durable but not its data
        // (never acknowledged), and what a preallocated segment holds after its records.
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = open(dir.path(), 1 << 20);
        append_all(&journal, 1..=2).await;
        close(journal);
        let path = dir.path().join(seg(1));
        let len = fs::metadata(&path).unwrap().len();
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len + 4096)
            .unwrap();
        let (journal, records) = open(dir.path(), 1 << 20);
        assert_eq!(records.len(), 2);
        assert_eq!(fs::metadata(&path).unwrap().len(), len + 4096);
        assert_eq!(journal.append(record(3)).await.unwrap(), 3);
        close(journal);
        let (_journal, records) = open(dir.path(), 1 << 20);
        assert_eq!(records.last().unwrap(), &(3, record(3)));
        assert_eq!(fs::metadata(&path).unwrap().len(), len + 4096);
    }

    /// Waits (at most 30 s) until the journal's `n`th spare segment is prepared.
    fn wait_for_spare(journal: &Journal, n: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while journal.hooks.spares.load(Ordering::SeqCst) < n {
            assert!(std::time::Instant::now() < deadline, "no spare segment");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // Its thread ends right after counting.
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    #[tokio::test]
    async fn new_segments_are_preallocated_zeros_and_records_continue_across_them() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = 16 << 10;
        let (journal, _) = open(dir.path(), bytes);
        wait_for_spare(&journal, 1);
        // The first segment was created empty with the journal; the spare replaces it before
        // the first record goes in.
        append_all(&journal, 1..=1).await;
        assert_eq!(fs::metadata(dir.path().join(seg(1))).unwrap().len(), bytes);
        wait_for_spare(&journal, 2);
        // 104 bytes a record: the first segment closes after 158 (the rotation runs after
        // that group's waiters were answered, at the latest before the next group).
        append_all(&journal, 2..=159).await;
        let files = segment_files(dir.path());
        assert_eq!(files, vec![seg(1), seg(159)]);
        // The new segment is the spare renamed: full size with one record in it.
        assert_eq!(
            fs::metadata(dir.path().join(seg(159))).unwrap().len(),
            bytes
        );
        wait_for_spare(&journal, 3);
        append_all(&journal, 160..=400).await;
        close(journal);
        let (journal, records) = open(dir.path(), bytes);
        let seqs: Vec<u64> = records.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (1..=400).collect::<Vec<_>>());
        assert_eq!(records.get(199), Some(&(200, record(200))));
        assert_eq!(journal.append(record(401)).await.unwrap(), 401);
    }

    #[tokio::test]
    async fn a_torn_group_in_a_preallocated_segment_is_dropped_with_the_zeros_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = 16 << 10;
        let (journal, _) = open(dir.path(), bytes);
        wait_for_spare(&journal, 1);
        append_all(&journal, 1..=1).await;
        wait_for_spare(&journal, 2);
        append_all(&journal, 2..=160).await;
        close(journal);
        // Records 159 and 160 are in the preallocated segment; a torn group after them: a
        // few bytes of a record, then the zeros the crash did not overwrite.
        let path = dir.path().join(seg(159));
        assert_eq!(fs::metadata(&path).unwrap().len(), bytes);
        let valid = 2 * (HEADER as u64 + 92);
        let file = File::options().write(true).open(&path).unwrap();
        file.write_all_at(&[0x5c, 0, 0, 0, 1, 2, 3], valid + 40)
            .unwrap();
        drop(file);
        let (journal, records) = open(dir.path(), bytes);
        assert_eq!(records.last().unwrap(), &(160, record(160)));
        assert_eq!(fs::metadata(&path).unwrap().len(), valid);
        assert_eq!(journal.append(record(161)).await.unwrap(), 161);
        close(journal);
        let (_journal, records) = open(dir.path(), bytes);
        assert_eq!(records.last().unwrap(), &(161, record(161)));
        assert_eq!(records.len(), 161);
    }

    #[tokio::test]
    async fn damage_in_a_segment_that_is_not_the_last_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        // One record per segment.
        let (journal, _) = open(dir.path(), 1);
        append_all(&journal, 1..=3).await;
        close(journal);
        assert_eq!(
            segment_files(dir.path()),
            vec![seg(1), seg(2), seg(3), seg(4)]
        );
        let path = dir.path().join(seg(2));
        let mut bytes = fs::read(&path).unwrap();
        bytes[HEADER + 3] ^= 0x40;
        fs::write(&path, &bytes).unwrap();

        let err = Journal::open(dir.path(), 1).err().unwrap();
        assert!(
            matches!(&err, JournalError::Corrupt { path: p, offset: 0, .. } if *p == path),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains(&seg(2)) && message.contains("at byte 0"),
            "{message}"
        );
        // Nothing was repaired behind the refusal.
        assert_eq!(fs::read(&path).unwrap(), bytes);
    }

    #[tokio::test]
    async fn a_missing_segment_in_the_middle_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = open(dir.path(), 1);
        append_all(&journal, 1..=3).await;
        close(journal);
        fs::remove_file(dir.path().join(seg(2))).unwrap();
        let err = Journal::open(dir.path(), 1).err().unwrap();
        assert!(matches!(err, JournalError::Inconsistent { .. }), "{err:?}");
        assert!(err.to_string().contains(&seg(3)), "{err}");
    }

    #[tokio::test]
    async fn release_deletes_only_fully_released_closed_segments() {
        let dir = tempfile::tempdir().unwrap();
        // Records are 104 bytes on disk: two per segment.
        let (journal, _) = open(dir.path(), 200);
        append_all(&journal, 1..=7).await;
        assert_eq!(
            segment_files(dir.path()),
            vec![seg(1), seg(3), seg(5), seg(7)]
        );
        journal.release(3);
        close(journal);
        // 1-2 released; 3-4 only in part.
        assert_eq!(segment_files(dir.path()), vec![seg(3), seg(5), seg(7)]);

        let (journal, records) = open(dir.path(), 200);
        assert_eq!(records.first().unwrap().0, 3);
        assert_eq!(journal.disk_bytes(), 5 * 104);
        // Past everything: all closed segments go, the current one (holding 7) stays.
        journal.release(u64::MAX);
        close(journal);
        assert_eq!(segment_files(dir.path()), vec![seg(7)]);

        let (journal, records) = open(dir.path(), 200);
        assert_eq!(records, vec![(7, record(7))]);
        assert_eq!(append_all(&journal, 8..=9).await, vec![8, 9]);
        journal.release(9);
        close(journal);
        // 8 filled seg 7 (closed, then released); 9 is in the current segment.
        assert_eq!(segment_files(dir.path()), vec![seg(9)]);
    }

    #[tokio::test]
    async fn after_everything_is_released_numbering_continues_from_the_empty_current_segment() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = open(dir.path(), 200);
        append_all(&journal, 1..=4).await;
        journal.release(4);
        close(journal);
        // The segment after 3-4 was started as soon as 4 filled it: it is all that is left,
        // empty, and its name carries the next sequence.
        assert_eq!(segment_files(dir.path()), vec![seg(5)]);

        let (journal, records) = open(dir.path(), 200);
        assert!(records.is_empty());
        assert_eq!(journal.disk_bytes(), 0);
        assert_eq!(journal.append(record(5)).await.unwrap(), 5);
    }

    #[tokio::test]
    async fn the_id_survives_reopen_and_differs_between_directories() {
        let one = tempfile::tempdir().unwrap();
        let two = tempfile::tempdir().unwrap();
        let (journal, _) = open(one.path(), 1 << 20);
        let id = journal.id().to_string();
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        close(journal);
        let (journal, _) = open(one.path(), 1 << 20);
        assert_eq!(journal.id(), id);
        let (other, _) = open(two.path(), 1 << 20);
        assert_ne!(other.id(), id);
        assert_eq!(
            fs::read_to_string(one.path().join(ID_FILE)).unwrap(),
            format!("{id}\n")
        );
    }

    #[tokio::test]
    async fn a_damaged_id_or_a_half_missing_directory_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = open(dir.path(), 1 << 20);
        append_all(&journal, 1..=2).await;
        close(journal);
        let id_path = dir.path().join(ID_FILE);
        let id = fs::read(&id_path).unwrap();

        fs::write(&id_path, b"not an id\n").unwrap();
        let err = Journal::open(dir.path(), 1 << 20).err().unwrap();
        assert!(matches!(err, JournalError::BadId { .. }), "{err:?}");

        // Segments without their id: replaying them under a new id could apply them twice.
        fs::remove_file(&id_path).unwrap();
        let err = Journal::open(dir.path(), 1 << 20).err().unwrap();
        assert!(matches!(err, JournalError::Inconsistent { .. }), "{err:?}");

        // An id without segments: the next sequence number is unknown.
        fs::write(&id_path, &id).unwrap();
        fs::remove_file(dir.path().join(seg(1))).unwrap();
        let err = Journal::open(dir.path(), 1 << 20).err().unwrap();
        assert!(matches!(err, JournalError::Inconsistent { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_crash_between_the_first_segment_and_the_id_is_completed() {
        let dir = tempfile::tempdir().unwrap();
        File::create(dir.path().join(seg(1))).unwrap();
        let (journal, records) = open(dir.path(), 1 << 20);
        assert!(records.is_empty());
        assert_eq!(journal.append(record(1)).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_missing_directory_is_created() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b/journal");
        let (journal, _) = open(&dir, 1 << 20);
        assert_eq!(journal.append(record(1)).await.unwrap(), 1);
        assert!(dir.join(ID_FILE).is_file());
    }

    #[tokio::test]
    async fn a_second_open_of_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = open(dir.path(), 1 << 20);
        let err = Journal::open(dir.path(), 1 << 20).err().unwrap();
        assert!(matches!(err, JournalError::Locked { .. }), "{err:?}");
        close(journal);
        let (_journal, _) = open(dir.path(), 1 << 20);
    }

    #[tokio::test]
    async fn a_record_over_max_record_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = open(dir.path(), 1 << 20);
        let err = journal
            .append(Bytes::from(vec![7u8; MAX_RECORD + 1]))
            .await
            .unwrap_err();
        assert!(matches!(err, JournalError::TooLarge { len } if len == MAX_RECORD + 1));
        // The limit itself is accepted, and numbering is unaffected by the refusal.
        let max = Bytes::from(vec![7u8; MAX_RECORD]);
        assert_eq!(journal.append(max.clone()).await.unwrap(), 1);
        // Zeros mark the end of the records: an empty one could not be told from them.
        let err = journal.append(Bytes::new()).await.unwrap_err();
        assert!(matches!(err, JournalError::Empty), "{err:?}");
        assert_eq!(journal.append(Bytes::from_static(b"\0")).await.unwrap(), 2);
        close(journal);
        let (_journal, records) = open(dir.path(), 1 << 20);
        assert_eq!(records, vec![(1, max), (2, Bytes::from_static(b"\0"))]);
    }

    #[tokio::test]
    async fn a_failed_write_is_undone_and_never_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = open(dir.path(), 1 << 20);
        append_all(&journal, 1..=2).await;
        journal.hooks.fail_writes.store(1, Ordering::SeqCst);
        let err = journal.append(record(3)).await.unwrap_err();
        assert!(matches!(err, JournalError::Write { .. }), "{err:?}");
        assert_eq!(
            fs::metadata(dir.path().join(seg(1))).unwrap().len(),
            2 * 104
        );
        // The failed record's number was never given out: the next one takes it.
        assert_eq!(journal.append(record(4)).await.unwrap(), 3);
        close(journal);
        let (_journal, records) = open(dir.path(), 1 << 20);
        assert_eq!(
            records,
            vec![(1, record(1)), (2, record(2)), (3, record(4))]
        );
    }

    #[tokio::test]
    async fn a_failed_undo_poisons_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = open(dir.path(), 1 << 20);
        append_all(&journal, 1..=1).await;
        journal.hooks.fail_writes.store(1, Ordering::SeqCst);
        journal.hooks.fail_truncates.store(1, Ordering::SeqCst);
        let err = journal.append(record(2)).await.unwrap_err();
        assert!(matches!(err, JournalError::Indeterminate { .. }), "{err:?}");
        for i in 3..=4 {
            let err = journal.append(record(i)).await.unwrap_err();
            assert!(matches!(err, JournalError::Poisoned { .. }), "{err:?}");
            assert!(err.to_string().contains("restart"), "{err}");
        }
        close(journal);
        // The half-written record is a torn tail at the next open.
        let (journal, records) = open(dir.path(), 1 << 20);
        assert_eq!(records, vec![(1, record(1))]);
        assert_eq!(journal.append(record(5)).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn dropping_the_journal_finishes_what_is_queued() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = open(dir.path(), 1 << 20);
        let pending: Vec<_> = (1..=20).map(|i| journal.append(record(i))).collect();
        let thread = journal.thread.lock().unwrap().take().unwrap();
        drop(journal);
        for (i, append) in (1..).zip(pending) {
            assert_eq!(append.await.unwrap(), i);
        }
        thread.join().unwrap();
        let (_journal, records) = open(dir.path(), 1 << 20);
        assert_eq!(records.len(), 20);
    }

    #[test]
    fn a_record_dropped_unwritten_is_answered_closed() {
        // What a writer thread that died with records queued leaves: their callers must
        // hear about it rather than wait forever.
        let heard = Arc::new(Mutex::new(None));
        let into = Arc::clone(&heard);
        drop(Pending {
            record: record(1),
            done: Some(Box::new(move |r| *into.lock().unwrap() = Some(r))),
        });
        let heard = heard.lock().unwrap().take();
        assert!(
            matches!(heard, Some(Err(JournalError::Closed))),
            "{heard:?}"
        );
    }

    #[tokio::test]
    async fn append_then_calls_back_once_with_the_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = open(dir.path(), 1 << 20);
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 1..=3 {
            let tx = tx.clone();
            journal.append_then(record(i), Box::new(move |r| tx.send(r).unwrap()));
        }
        drop(tx);
        let seqs: Vec<u64> = rx.iter().map(|r| r.unwrap()).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        let (tx, rx) = std::sync::mpsc::channel();
        let huge = Bytes::from(vec![0u8; MAX_RECORD + 1]);
        journal.append_then(huge, Box::new(move |r| tx.send(r).unwrap()));
        assert!(matches!(
            rx.recv().unwrap(),
            Err(JournalError::TooLarge { .. })
        ));
        close(journal);
    }
}
