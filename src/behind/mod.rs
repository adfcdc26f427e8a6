//! Write-behind (issue 20): eligible writes to `write = "behind"` tables are acknowledged
//! once they are durably queued, and applied to PostgreSQL in the background, in batches,
//! exactly once.
//!
//! - [`entry`]: what is queued for one write, and its encoding.
//! - [`journal`]: the local durable queue (one per database, group commit).
//! - [`stream`]: the shared durable queue on a Redis Stream (one per namespace and
//!   database), applied by the instance holding the database's lease.
//! - [`queue`]: either of the two, as the flusher and `submit` use them.
//! - [`batch`]: one batch as one transaction pipeline, with the progress row that makes it
//!   exactly-once.
//! - [`flusher`]: one task per database applying its queue.
//! - [`dead`]: writes the database refused, kept for an operator.
//!
//! Ordering: each database's queue is applied in the order its journal numbered the writes.
//! The flusher takes only an unbroken run of numbers after the last applied one, so a write
//! acknowledged later is never applied before one acknowledged earlier. A write to a
//! behind table that is not queued (another shape, in a transaction, ...) waits first until
//! what was queued before it is applied ([`Behind::barrier`]), at most
//! `behind.barrier_timeout`.

pub mod batch;
pub mod dead;
pub mod entry;
pub mod flusher;
pub mod journal;
mod prepared;
pub mod queue;
pub mod stream;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

use crate::config::{BehindConfig, BehindRule, Login, QueueKind};
use crate::invalidation::Invalidator;
use crate::telemetry::names;
use crate::upstream::Upstream;
pub use entry::{Entry, Op};
use journal::Journal;
use queue::{Queue, QueueError};
pub use stream::StreamLink;
use stream::{StreamError, StreamQueue};

/// Segment size of the journals.
const SEGMENT_BYTES: u64 = 64 << 20;

/// Why a write could not be queued (it is forwarded synchronously instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The queue is at `behind.max_queue_bytes` or `max_queue_entries`.
    Full,
    /// The journal cannot be opened or has failed.
    Unavailable,
}

impl BehindError {
    /// The write may have been stored although its append failed: it must be neither
    /// acknowledged nor run again synchronously (it could then be applied twice).
    pub fn is_indeterminate(&self) -> bool {
        matches!(
            self,
            BehindError::Journal(
                journal::JournalError::Indeterminate { .. } | journal::JournalError::Closed
            ) | BehindError::Stream(StreamError::Indeterminate(_))
        )
    }
}

impl Refused {
    pub fn reason(self) -> &'static str {
        match self {
            Refused::Full => "queue_full",
            Refused::Unavailable => "queue_failed",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BehindError {
    #[error("write-behind journal: {0}")]
    Journal(#[from] journal::JournalError),
    #[error("write-behind journal directory {0}: {1}")]
    Dir(PathBuf, std::io::Error),
    #[error("write-behind dead letters: {0}")]
    Dead(#[from] dead::DeadError),
    #[error("write-behind: {0}")]
    Stream(#[from] StreamError),
    #[error("write-behind: redis connection: {0}")]
    Redis(redis::RedisError),
}

impl From<QueueError> for BehindError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::Journal(e) => BehindError::Journal(e),
            QueueError::Stream(e) => BehindError::Stream(e),
        }
    }
}

/// How the flushers reach PostgreSQL.
#[derive(Clone)]
pub struct Link {
    pub upstream: Upstream,
    /// pgmemo's own login (`upstream.url`): the flusher applies writes as it, and only writes
    /// of sessions logged in as it are queued.
    pub login: Login,
    pub connect_timeout: Duration,
    /// Bound on one batch.
    pub batch_timeout: Duration,
}

/// One database's queue.
pub(crate) struct Db {
    pub(crate) name: String,
    pub(crate) queue: Queue,
    /// Stream kind: the queue incarnation (Redis's `id`) the numbers in `pending` belong to.
    pub(crate) stream_id: Option<String>,
    /// Stream kind: this instance holds the database's lease (applies its queue).
    pub(crate) holds: bool,
    /// Stream kind, at shutdown: the flusher stops and gives the lease up.
    pub(crate) stopped: bool,
    /// Durable writes not yet applied, by sequence number (stream kind: the ones this
    /// instance appended; the holder applies what it reads from Redis).
    pub(crate) pending: BTreeMap<u64, Arc<Entry>>,
    /// Sequence numbers after which nothing is applied yet (0 = unknown until the
    /// flusher has read the progress row).
    pub(crate) applied: u64,
    /// Recovered records that do not decode (raw bytes and why), by sequence number: in
    /// `pending` as placeholders, never run; dead letters once the flusher knows which of
    /// them are not applied yet.
    pub(crate) unreadable: BTreeMap<u64, (Bytes, String)>,
    /// The shortest `behind_flush_interval` and smallest `behind_max_batch` of the rules
    /// its writes came under (the defaults until one came).
    pub(crate) flush_interval: Option<Duration>,
    pub(crate) max_batch: Option<usize>,
    pub(crate) wake: Arc<Notify>,
    /// The last applied sequence number, for barriers.
    pub(crate) applied_tx: watch::Sender<u64>,
}

impl Db {
    /// Folds in the flush interval and batch size of a rule a write came under.
    fn fold(&mut self, rule: &BehindRule) {
        self.flush_interval = Some(
            self.flush_interval
                .map_or(rule.flush_interval, |d| d.min(rule.flush_interval)),
        );
        self.max_batch = Some(
            self.max_batch
                .map_or(rule.max_batch, |b| b.min(rule.max_batch)),
        );
    }
}

/// The write-behind service: one per process.
pub struct Behind {
    config: BehindConfig,
    /// The journal directory (journal kind; with the stream kind only the dead letters'
    /// file, if set).
    dir: Option<PathBuf>,
    /// The Redis link (stream kind).
    stream: Option<StreamLink>,
    /// This instance's name in the stream kind's leases (random per process).
    holder: String,
    link: Link,
    invalidator: Arc<Invalidator>,
    dbs: Mutex<HashMap<String, Arc<Mutex<Db>>>>,
    entries: AtomicUsize,
    bytes: AtomicU64,
    pub(crate) dead: dead::DeadLetters,
    /// Raised at shutdown: flush at once, continuously, until empty.
    pub(crate) draining: Arc<Notify>,
    drain_flag: std::sync::atomic::AtomicBool,
    /// The main runtime: flushers must not live on a session worker's loop (it stops with
    /// the workers, before the queue is drained at shutdown).
    runtime: tokio::runtime::Handle,
}

impl Behind {
    /// Opens the queue of `config`'s kind: the journals found under `config.journal_dir`,
    /// or (stream kind, with `stream`) the streams Redis lists; their writes are applied by
    /// the flushers this starts. `None` when there is no queue.
    pub fn open(
        config: &BehindConfig,
        link: Link,
        invalidator: Arc<Invalidator>,
        stream: Option<StreamLink>,
    ) -> Result<Option<Arc<Behind>>, BehindError> {
        let kind = config.kind(stream.is_some());
        let dir = config.journal_dir.clone();
        let stream = match (kind, stream) {
            (QueueKind::Redis, Some(s)) => Some(s),
            (QueueKind::Redis, None) => return Ok(None),
            (QueueKind::Journal, _) if dir.is_none() => return Ok(None),
            (QueueKind::Journal, _) => None,
        };
        let dead = match &dir {
            Some(dir) => {
                {
                    use std::os::unix::fs::DirBuilderExt;
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(journal::PRIVATE_DIR)
                        .create(dir)
                        .map_err(|e| BehindError::Dir(dir.clone(), e))?;
                }
                dead::DeadLetters::open(&dir.join("dead-letters.json"), config.max_dead_letters)?
            }
            None => {
                warn!(
                    "write-behind on Redis without behind.journal_dir: dead letters are kept in memory only (and logged); set journal_dir to keep them across restarts"
                );
                dead::DeadLetters::in_memory(config.max_dead_letters)
            }
        };
        let mut id = [0u8; 8];
        let holder = match getrandom::fill(&mut id) {
            Ok(()) => id.iter().map(|b| format!("{b:02x}")).collect(),
            Err(_) => format!("pid-{}", std::process::id()),
        };
        let behind = Arc::new(Behind {
            config: config.clone(),
            dir: dir.clone(),
            stream,
            holder,
            link,
            invalidator,
            dbs: Mutex::new(HashMap::new()),
            entries: AtomicUsize::new(0),
            bytes: AtomicU64::new(0),
            dead,
            draining: Arc::new(Notify::new()),
            drain_flag: std::sync::atomic::AtomicBool::new(false),
            runtime: tokio::runtime::Handle::current(),
        });
        if let Some(link) = behind.stream.clone() {
            behind.runtime.spawn(Behind::recover_streams(
                Arc::downgrade(&behind),
                link,
                behind.link.login.user.clone(),
            ));
            return Ok(Some(behind));
        }
        let Some(dir) = dir else {
            return Ok(None);
        };
        let entries = std::fs::read_dir(&dir).map_err(|e| BehindError::Dir(dir.clone(), e))?;
        for item in entries.flatten() {
            let name = item.file_name();
            let Some(db) = name
                .to_str()
                .and_then(|n| n.strip_prefix("db-"))
                .and_then(unhex)
            else {
                continue;
            };
            let recovered = behind.database(&db, None)?;
            info!(database = %db, pending = recovered, "write-behind journal recovered");
        }
        Ok(Some(behind))
    }

    /// Stream kind: checks Redis's persistence (logged, at start), then opens every
    /// database Redis has a stream of, so what any instance acknowledged is applied (by
    /// whichever holds its lease) even if no write to that database comes here. The list is
    /// read again every lease period, not only at start: a database whose only writing
    /// instance died after this one started would otherwise never be applied by this one.
    /// Until the process ends (or shutdown begins).
    async fn recover_streams(me: std::sync::Weak<Behind>, link: StreamLink, login: String) {
        if link.check_persistence {
            stream::check_persistence(&link).await.log();
        }
        let mut conn = link.conn.clone();
        loop {
            let mut cmd = redis::cmd("SMEMBERS");
            cmd.arg(StreamQueue::dbs_key(&link.namespace, &login));
            let read =
                tokio::time::timeout(link.timeout, cmd.query_async::<Vec<String>>(&mut conn)).await;
            let Some(behind) = me.upgrade() else { return };
            if behind.is_draining() {
                return;
            }
            let wait = match read {
                Ok(Ok(dbs)) => {
                    for db in dbs {
                        if let Err(e) = behind.database(&db, None) {
                            warn!(database = %db, error = %e, "write-behind stream cannot be opened");
                        }
                    }
                    stream::LEASE_PERIOD
                }
                Ok(Err(e)) => {
                    warn!(error = %e, "write-behind: cannot list the Redis streams; retrying");
                    Duration::from_secs(1)
                }
                Err(_) => {
                    warn!("write-behind: listing the Redis streams timed out; retrying");
                    Duration::from_secs(1)
                }
            };
            drop(behind);
            tokio::time::sleep(wait).await;
        }
    }

    /// The queue of `db`, opened (and its flusher started) on first use, with `rule`'s
    /// flush interval and batch size folded in before the flusher first reads them (it
    /// would otherwise start on the defaults). Returns how many writes it recovered.
    fn database(
        self: &Arc<Self>,
        db: &str,
        rule: Option<&BehindRule>,
    ) -> Result<usize, BehindError> {
        let mut dbs = lock(&self.dbs);
        if let Some(state) = dbs.get(db) {
            if let Some(rule) = rule {
                lock(state).fold(rule);
            }
            return Ok(0);
        }
        let mut pending = BTreeMap::new();
        let mut unreadable = BTreeMap::new();
        let queue = if let Some(link) = &self.stream {
            Queue::Stream(Arc::new(StreamQueue::new(
                link.clone(),
                &self.link.login.user,
                db,
                &self.holder,
            )))
        } else {
            let Some(dir) = &self.dir else {
                return Err(BehindError::Dir(
                    PathBuf::new(),
                    std::io::ErrorKind::NotFound.into(),
                ));
            };
            let path = dir.join(format!("db-{}", hex(db)));
            let (journal, recovered) = Journal::open(&path, SEGMENT_BYTES)?;
            for (seq, bytes) in recovered.records {
                // A record that passed its checksum but does not decode (written by another
                // version): a placeholder keeps the sequence unbroken (a gap would stall the
                // queue behind it for good) and the flusher turns it into a dead letter.
                let e = Entry::decode(&bytes).unwrap_or_else(|e| {
                    unreadable.insert(seq, (bytes, e.to_string()));
                    Entry::placeholder(db)
                });
                self.entries.fetch_add(1, Ordering::Relaxed);
                self.bytes.fetch_add(e.weight() as u64, Ordering::Relaxed);
                pending.insert(seq, Arc::new(e));
            }
            if !unreadable.is_empty() {
                warn!(database = %db, unreadable = unreadable.len(), "write-behind journal records that cannot be decoded are kept as dead letters");
            }
            Queue::Journal(journal)
        };
        let count = pending.len();
        let (applied_tx, _) = watch::channel(0);
        let state = Arc::new(Mutex::new(Db {
            name: db.to_owned(),
            queue,
            stream_id: None,
            holds: false,
            stopped: false,
            pending,
            applied: 0,
            unreadable,
            flush_interval: None,
            max_batch: None,
            wake: Arc::new(Notify::new()),
            applied_tx,
        }));
        if let Some(rule) = rule {
            lock(&state).fold(rule);
        }
        dbs.insert(db.to_owned(), Arc::clone(&state));
        drop(dbs);
        self.runtime.spawn(flusher::run(Arc::clone(self), state));
        self.publish_gauges();
        Ok(count)
    }

    /// Queues `entry` under `rule`: `Err` when it cannot be (the caller forwards the write
    /// synchronously); otherwise the future resolves once the write is durable (then it may
    /// be acknowledged) or failed (then it was not queued and will never be applied).
    pub fn submit(
        self: &Arc<Self>,
        entry: Entry,
        rule: BehindRule,
    ) -> Result<impl Future<Output = Result<(), BehindError>> + Send + 'static, Refused> {
        let weight = entry.weight() as u64;
        let entries = self.entries.fetch_add(1, Ordering::AcqRel);
        let bytes = self.bytes.fetch_add(weight, Ordering::AcqRel);
        if entries >= self.config.max_queue_entries
            || bytes + weight > self.config.max_queue_bytes.0
        {
            self.release_room(1, weight);
            return Err(Refused::Full);
        }
        if self.drain_flag.load(Ordering::Acquire) {
            self.release_room(1, weight);
            return Err(Refused::Unavailable);
        }
        let state = match self.database(&entry.database, Some(&rule)) {
            Ok(_) => lock(&self.dbs).get(&entry.database).cloned(),
            Err(e) => {
                warn!(error = %e, "write-behind queue unavailable");
                None
            }
        };
        let Some(state) = state else {
            self.release_room(1, weight);
            return Err(Refused::Unavailable);
        };
        let queue = lock(&state).queue.clone();
        if queue.stream().is_some_and(|s| s.is_failing()) {
            // Redis just left an append unanswered: this write runs synchronously rather
            // than risk the same (an error to its client).
            self.release_room(1, weight);
            return Err(Refused::Unavailable);
        }
        let entry = Arc::new(entry);
        let record = entry.encode();
        let me = Arc::clone(self);
        let (done, answer) = tokio::sync::oneshot::channel();
        // Once durable, the write joins the queue whether or not its session is still there
        // to hear about it: a session that ends meanwhile (its client or its upstream
        // connection gone) must not leave a hole in the numbers the flusher applies in order.
        // So the completion does not run in the session's task.
        let complete = move |appended: Result<queue::Appended, QueueError>| {
            let result = match appended {
                Ok(queue::Appended { seq, id }) => {
                    me.enqueued(&state, seq, id, entry);
                    Ok(())
                }
                Err(e) => {
                    me.release_room(1, weight);
                    Err(BehindError::from(e))
                }
            };
            let _ = done.send(result);
        };
        match &queue {
            // On the journal's writer thread, right after the fdatasync: no task to wake.
            Queue::Journal(j) => j.append_then(
                record,
                Box::new(move |r| {
                    complete(
                        r.map(|seq| queue::Appended { seq, id: None })
                            .map_err(QueueError::from),
                    )
                }),
            ),
            Queue::Stream(_) => {
                let append = queue.append(record);
                self.runtime.spawn(async move { complete(append.await) });
            }
        }
        Ok(async move {
            answer
                .await
                .unwrap_or(Err(BehindError::Journal(journal::JournalError::Closed)))
        })
    }

    /// A write is durable in the queue as number `seq` (stream: of incarnation `id`): the
    /// flusher may apply it.
    fn enqueued(&self, state: &Mutex<Db>, seq: u64, id: Option<String>, entry: Arc<Entry>) {
        let wake = {
            let mut db = lock(state);
            if id.is_some() && db.stream_id != id {
                self.new_incarnation(&mut db, id);
            }
            db.pending.insert(seq, entry);
            Arc::clone(&db.wake)
        };
        wake.notify_one();
        self.publish_gauges();
    }

    /// Stream kind: Redis numbers this database's writes in a new queue (it lost its data,
    /// or this is the first append seen): numbers of the old one mean nothing now. Writes
    /// this instance appended there and that were not seen applied are lost with Redis's
    /// data (its persistence: see the README).
    pub(crate) fn new_incarnation(&self, db: &mut Db, id: Option<String>) {
        if db.stream_id.is_some() && !db.pending.is_empty() {
            tracing::error!(database = %db.name, lost = db.pending.len(), "write-behind: the Redis queue was lost (Redis restarted without persistence?); acknowledged writes queued here and not yet applied are lost");
        }
        let bytes: u64 = db.pending.values().map(|e| e.weight() as u64).sum();
        self.release_room(db.pending.len(), bytes);
        db.pending.clear();
        db.unreadable.clear();
        db.applied = 0;
        db.applied_tx.send_replace(0);
        db.stream_id = id;
    }

    pub(crate) fn release_room(&self, entries: usize, bytes: u64) {
        self.entries.fetch_sub(entries, Ordering::AcqRel);
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// For a write to a behind table of `db` that is not queued: waits until every write
    /// queued there so far is applied, at most `behind.barrier_timeout`. `None` when nothing
    /// is queued (no wait).
    /// Resolves to whether they were applied in time (`false`: the statement must not run,
    /// or it could overtake them).
    pub fn barrier(&self, db: &str) -> Option<impl Future<Output = bool> + Send + 'static> {
        let state = lock(&self.dbs).get(db).cloned()?;
        let (target, mut applied) = {
            let db = lock(&state);
            let target = *db.pending.keys().next_back()?;
            (target, db.applied_tx.subscribe())
        };
        let timeout = self.config.barrier_timeout;
        Some(async move {
            let reached = tokio::time::timeout(timeout, applied.wait_for(|&a| a >= target)).await;
            let result = if matches!(reached, Ok(Ok(_))) {
                "applied"
            } else {
                "timeout"
            };
            metrics::counter!(names::BEHIND_BARRIER, "result" => result).increment(1);
            result == "applied"
        })
    }

    /// After a configuration reload: the flush intervals and batch sizes folded in so far
    /// are forgotten (they only ever shrink), so the rules as they are now decide from the
    /// next write on, a raised interval included.
    pub fn rules_reloaded(&self) {
        for state in lock(&self.dbs).values() {
            let mut db = lock(state);
            db.flush_interval = None;
            db.max_batch = None;
        }
    }

    /// At shutdown (after the sessions ended): flushes every queue at once and waits until
    /// they are empty, at most `deadline`. What remains is applied at the next start.
    pub async fn drain(&self, deadline: Duration) {
        self.drain_flag.store(true, Ordering::Release);
        let states: Vec<Arc<Mutex<Db>>> = lock(&self.dbs).values().cloned().collect();
        let wait = async {
            for state in &states {
                let (mut applied, last, wake) = {
                    let db = lock(state);
                    // Stream kind: an instance that does not apply the queue just stops;
                    // the holder (or the next start) applies its writes.
                    if db.queue.stream().is_some() && !db.holds {
                        continue;
                    }
                    let Some(&last) = db.pending.keys().next_back() else {
                        continue;
                    };
                    (db.applied_tx.subscribe(), last, Arc::clone(&db.wake))
                };
                wake.notify_one();
                let _ = applied.wait_for(|&a| a >= last).await;
            }
        };
        self.draining.notify_waiters();
        if tokio::time::timeout(deadline, wait).await.is_err() {
            let left = self.entries.load(Ordering::Acquire);
            warn!(
                left,
                "write-behind queue not drained by the shutdown deadline; it is applied at the next start"
            );
        } else {
            info!("write-behind queue drained");
        }
        // Stream kind: stop the flushers and give the leases up, so another instance takes
        // over at once instead of after the lease period.
        for state in &states {
            let stream = {
                let mut db = lock(state);
                db.stopped = true;
                let held = std::mem::take(&mut db.holds);
                db.queue.stream().filter(|_| held).cloned()
            };
            if let Some(s) = stream {
                let mut conn = s.conn();
                let _ = tokio::time::timeout(s.timeout(), s.lease().release(&mut conn)).await;
            }
        }
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.drain_flag.load(Ordering::Acquire)
    }

    pub(crate) fn link(&self) -> &Link {
        &self.link
    }

    pub(crate) fn invalidator(&self) -> &Invalidator {
        &self.invalidator
    }

    /// Updates the queue gauges.
    pub(crate) fn publish_gauges(&self) {
        metrics::gauge!(names::BEHIND_QUEUE_ENTRIES)
            .set(self.entries.load(Ordering::Acquire) as f64);
        metrics::gauge!(names::BEHIND_QUEUE_BYTES).set(self.bytes.load(Ordering::Acquire) as f64);
    }

    /// Queued writes not yet applied, over every database.
    pub fn queued(&self) -> usize {
        self.entries.load(Ordering::Acquire)
    }

    /// Puts a dead letter's write back in its queue (a new sequence number: it is applied
    /// after what is queued now). `false` when there is no such dead letter.
    pub async fn retry_dead(self: &Arc<Self>, id: u64) -> Result<bool, BehindError> {
        let Some(letter) = self.dead.get(id) else {
            return Ok(false);
        };
        let bytes = letter.entry().ok_or(dead::DeadError::Corrupt)?;
        let entry = Entry::decode(&bytes).map_err(|_| dead::DeadError::Corrupt)?;
        let rule = BehindRule {
            flush_interval: crate::config::behind::DEFAULT_FLUSH_INTERVAL,
            max_batch: crate::config::behind::DEFAULT_MAX_BATCH,
            increments: true,
            coalesce: false,
        };
        // Removed first: two retries of one letter (or a crash between the two steps) must
        // not queue it twice. Put back if it cannot be queued.
        if !self.dead.remove(id)? {
            return Ok(false);
        }
        let queued = match self.submit(entry, rule) {
            Ok(done) => done.await,
            Err(r) => Err(BehindError::Dead(dead::DeadError::Refused(r.reason()))),
        };
        if let Err(e) = queued {
            if !e.is_indeterminate() {
                self.dead.add(vec![letter], "requeue_failed", None)?;
            }
            return Err(e);
        }
        Ok(true)
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect();
    String::from_utf8(bytes?).ok()
}

/// The directory a journal of `db` lives in (for tests and tools).
pub fn journal_path(dir: &Path, db: &str) -> PathBuf {
    dir.join(format!("db-{}", hex(db)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn database_names_round_trip_through_directory_names() {
        for db in ["app", "Ünïcode db", "with/slash", ""] {
            assert_eq!(super::unhex(&super::hex(db)).as_deref(), Some(db));
        }
        assert_eq!(super::unhex("zz"), None);
    }
}
