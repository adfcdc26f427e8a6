//! One task per database applying its write-behind queue (see [`super::batch`] for one
//! batch). The loop: wait for writes (then `behind_flush_interval`, so a batch gathers
//! what arrives meanwhile; at once again while writes remain, and continuously while
//! draining), take the unbroken run of sequence numbers after the last applied one (at most
//! `behind_max_batch`), apply it as one transaction with the progress row, and then
//! invalidate what it wrote, release the journal, wake barriers.
//!
//! Stream kind (`behind.queue = "redis"`): every instance runs this task for a database it
//! knows, but only the holder of the database's lease applies its queue, reading the
//! entries from Redis (other instances append too); the others follow the applied number
//! the holder publishes (for their barriers and bounds). A holder that dies is replaced
//! within the lease period and the new one reads the progress row: exactly once holds
//! across the change (two flushers racing are safe anyway: a batch locks and checks the
//! progress row; the lease only avoids the wasted work).
//!
//! Failures: a write the database refuses is recorded as a dead letter and the batch is
//! sent again without it; anything else (connection lost, server restarting, timeout) drops
//! the connection and retries with backoff. On every new connection the progress row is
//! read again, so a batch whose COMMIT was sent but whose answer was lost is recognised as
//! applied (exactly once) rather than applied twice.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::batch::{self, Outcome, Step, Unit};
use super::dead::{DeadLetter, now_ms};
use super::entry::{Entry, Op, RECORDED_SETTINGS};
use super::prepared::Prepared;
use super::queue::Queue;
use super::stream::{LEASE_PERIOD, Record, StreamQueue};
use super::{Behind, Db, lock};
use crate::cache::Tag;
use crate::invalidation::{Source, Written};
use crate::protocol::response::put_frame;
use crate::protocol::tags::backend;
use crate::refresh::pool::run as run_request;
use crate::telemetry::names;
use crate::upstream::login::{BackendConn, login};

/// Bytes a batch's replies may take (they are command tags, not rows).
const MAX_REPLY_BYTES: usize = 16 << 20;
/// Bytes of records one stream read gathers (past its first page).
const MAX_READ_BYTES: usize = 16 << 20;
/// Stream kind: how often an instance that does not apply the queue reads the applied
/// number, and how often an idle holder looks for writes other instances appended.
const STREAM_TICK: Duration = Duration::from_millis(100);
/// Longest wait between retries of a failing batch.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The SQL creating pgmemo's progress table (documented in the README).
pub const PROGRESS_DDL: &str = "CREATE TABLE IF NOT EXISTS pgmemo.behind_progress (\
queue text PRIMARY KEY, applied bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT pg_catalog.now())";

#[derive(Debug, thiserror::Error)]
enum FlushError {
    #[error("write-behind flusher: {0}")]
    Login(#[from] crate::upstream::login::LoginError),
    #[error("write-behind flusher: {0}")]
    Run(#[from] crate::refresh::pool::RunError),
    #[error("write-behind flusher: the server answered {0}")]
    Server(batch::ServerError),
    #[error("write-behind flusher: unexpected reply to the progress read")]
    Progress,
}

/// A connection with what was read when it was opened.
struct Conn {
    conn: BackendConn,
    /// The server's defaults of the recorded settings.
    defaults: Vec<(String, String)>,
    /// The named statements of queued INSERTs on this connection.
    prepared: Prepared,
}

/// Waits `backoff`, then doubles it (up to [`MAX_BACKOFF`]) for the next failure.
async fn back_off(backoff: &mut Duration) {
    tokio::time::sleep(*backoff).await;
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
}

/// Runs the flusher of one database until the process ends.
pub(crate) async fn run(behind: Arc<Behind>, state: Arc<Mutex<Db>>) {
    let (name, kind, wake) = {
        let db = lock(&state);
        (db.name.clone(), db.queue.clone(), Arc::clone(&db.wake))
    };
    let stream = kind.stream().cloned();
    // The progress row's key (stream kind: set per connection, from Redis's queue id).
    let mut queue = match &kind {
        Queue::Journal(j) => format!("journal:{}", j.id()),
        Queue::Stream(_) => String::new(),
    };
    // Stream kind: the last lease renewal, and whether the last read found nothing.
    let mut renewed_at: Option<Instant> = None;
    let mut idle = false;
    let mut conn: Option<Conn> = None;
    // Stream kind: the queue incarnation the connection's progress row (`queue`) is of.
    // Every batch and settlement on the connection is of it: when Redis's queue becomes
    // another one meanwhile (it lost its data), the numbers in `Db` are the new queue's and
    // must be neither applied under the old row nor settled by the old queue's commits.
    let mut conn_id: Option<String> = None;
    let mut backoff = Duration::from_millis(50);
    // Writes refused in the batch being retried: skipped, their numbers still applied.
    let mut dead: HashSet<u64> = HashSet::new();
    // Increments of a merged update the database refused: applied one by one from then on,
    // so that only the ones it refuses alone become dead letters.
    let mut alone: HashSet<u64> = HashSet::new();
    let mut known = false;
    // What the progress row holds (the batch moves it from this value).
    let mut row = 0u64;
    // Batches start at most once per interval, unless the last one was full (a backlog).
    let mut last_start = Instant::now();
    let mut full = false;
    loop {
        if let Some(s) = &stream {
            if lead(&behind, &state, s, &mut renewed_at).await.is_break() {
                return;
            }
            if !lock(&state).holds {
                // Another instance applies the queue: follow what it applied.
                conn = None;
                known = false;
                follow(&behind, &state, s).await;
                tokio::time::sleep(STREAM_TICK).await;
                continue;
            }
        }
        let (interval, empty) = {
            let db = lock(&state);
            let interval = db
                .flush_interval
                .unwrap_or(crate::config::behind::DEFAULT_FLUSH_INTERVAL);
            (interval, db.pending.is_empty())
        };
        if let Some(s) = &stream {
            if idle && !behind.is_draining() {
                // A publish of the applied number that failed is not left for the next
                // batch (which may never come): the other instances wait on it.
                s.retry_release();
                // Other instances' writes wake nobody here: look again after a tick.
                tokio::select! {
                    () = wake.notified() => {}
                    () = tokio::time::sleep(STREAM_TICK) => {}
                    () = behind.draining.notified() => {}
                }
            }
        } else if empty && known {
            wake.notified().await;
        }
        if !full && !behind.is_draining() {
            let due = last_start + interval;
            tokio::select! {
                () = tokio::time::sleep_until(due.into()) => {}
                () = behind.draining.notified() => {}
            }
        }
        if conn.is_none()
            && let Some(s) = &stream
        {
            // The progress row is keyed by the queue's incarnation in Redis.
            match s.status().await {
                Ok(st) => match st.id {
                    Some(id) => {
                        queue = s.progress_key(&id);
                        conn_id = Some(id.clone());
                        let mut db = lock(&state);
                        if db.stream_id.as_deref() != Some(id.as_str()) {
                            behind.new_incarnation(&mut db, Some(id));
                        }
                    }
                    None => {
                        // Nothing was ever appended (or Redis lost it all).
                        idle = true;
                        continue;
                    }
                },
                Err(e) => {
                    warn!(database = %name, error = %e, "write-behind flusher cannot read the Redis queue; retrying");
                    back_off(&mut backoff).await;
                    continue;
                }
            }
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match connect(&behind, &name, &queue).await {
                Ok((c, applied)) => {
                    known = true;
                    row = applied;
                    let ours = lock(&state).applied;
                    if applied < ours {
                        // PostgreSQL lost commits it had acknowledged (run with fsync or
                        // synchronous_commit off, and crashed): the writes of those batches
                        // are gone with them. Carry on from what this queue applied.
                        tracing::error!(database = %name, progress = applied, applied = ours, "the write-behind progress row went back: PostgreSQL lost committed batches (fsync or synchronous_commit off?); their writes are lost");
                    }
                    if !settle(
                        &behind,
                        &state,
                        conn_id.as_deref(),
                        applied.max(ours),
                        &mut dead,
                        true,
                    ) {
                        // Redis's queue changed while connecting: this row is not its own.
                        continue;
                    }
                    if !bury_unreadable(&behind, &state, &queue, &mut dead) {
                        // Not recorded: nothing after them may be applied yet.
                        conn = None;
                        back_off(&mut backoff).await;
                        continue;
                    }
                    backoff = Duration::from_millis(50);
                    conn.insert(c)
                }
                Err(e) => {
                    warn!(database = %name, error = %e, "write-behind flusher cannot connect; retrying");
                    back_off(&mut backoff).await;
                    continue;
                }
            },
        };
        let entries = match &stream {
            None => take(&state, &dead),
            Some(s) => match take_stream(&state, s, conn_id.as_deref(), &dead).await {
                Ok(Some(entries)) => entries,
                Ok(None) => {
                    // The queue in Redis is another incarnation now: reconnect for its row.
                    conn = None;
                    continue;
                }
                Err(e) => {
                    warn!(database = %name, error = %e, "write-behind flusher cannot read the Redis queue; retrying");
                    back_off(&mut backoff).await;
                    continue;
                }
            },
        };
        idle = entries.is_empty();
        let Some(&(to, _)) = entries.last() else {
            continue;
        };
        if stream.is_some() && !bury_unreadable(&behind, &state, &queue, &mut dead) {
            // Entries read from Redis that do not decode: not recorded, so nothing after
            // them may be applied yet.
            back_off(&mut backoff).await;
            continue;
        }
        if !refuse_foreign(&behind, &queue, &entries, &mut dead) {
            back_off(&mut backoff).await;
            continue;
        }
        let live: Vec<(u64, Arc<Entry>)> = entries
            .iter()
            .filter(|(s, _)| !dead.contains(s))
            .cloned()
            .collect();
        let refs: Vec<Arc<Entry>> = live.iter().map(|(_, e)| Arc::clone(e)).collect();
        let units = batch::units(&refs, &|i| {
            live.get(i).is_some_and(|(seq, _)| alone.contains(seq))
        });
        let target = batch::Target {
            queue: &queue,
            from: row,
            to,
        };
        let built = batch::build(&refs, units, &target, &c.defaults, &mut c.prepared);
        let started = Instant::now();
        last_start = started;
        full = live.len() >= max_batch(&state);
        let outcome = apply(&mut c.conn, &built, behind.link().batch_timeout).await;
        if matches!(outcome, Ok(Outcome::Committed(_))) {
            c.prepared.committed();
        } else {
            c.prepared.failed();
        }
        match outcome {
            Ok(Outcome::Committed(tags)) => {
                let elapsed = started.elapsed();
                metrics::histogram!(names::BEHIND_FLUSH_SECONDS).record(elapsed.as_secs_f64());
                metrics::histogram!(names::BEHIND_BATCH_ENTRIES).record(live.len() as f64);
                missed_rows(&behind, &queue, &built.units, &tags, &live);
                if !committed(&behind, &state, conn_id.as_deref(), to, &live) {
                    // The batch applied the old queue's writes under its own row, but Redis's
                    // queue is another one now: reconnect for the new queue's row.
                    conn = None;
                }
                row = to;
                dead.retain(|&s| s > to);
                alone.retain(|&s| s > to);
                backoff = Duration::from_millis(50);
                debug!(database = %name, applied = live.len(), to, "write-behind batch committed");
            }
            Ok(Outcome::Failed { step, error }) => {
                if split(step, &error, &built, &live, &mut alone) {
                    debug!(database = %name, error = %error, "a merged increment was refused; its members are applied one by one");
                    continue;
                }
                if refuse(&behind, &queue, (step, &error), &built, &live, &mut dead) {
                    continue;
                }
                metrics::counter!(names::BEHIND_RETRIES).increment(1);
                warn!(database = %name, step = ?step, error = %error, "write-behind batch failed; retrying");
                if error.code == "22012" {
                    // The progress row moved under us: read it again on a new connection.
                    conn = None;
                } else {
                    back_off(&mut backoff).await;
                }
            }
            Err(e) => {
                metrics::counter!(names::BEHIND_RETRIES).increment(1);
                warn!(database = %name, error = %e, "write-behind batch interrupted; retrying on a new connection");
                conn = None;
                back_off(&mut backoff).await;
            }
        }
    }
}

/// The unbroken run of sequence numbers after the last applied one (at most the database's
/// batch size, dead ones included: they are skipped but their numbers applied).
fn take(state: &Mutex<Db>, dead: &HashSet<u64>) -> Vec<(u64, Arc<Entry>)> {
    let db = lock(state);
    let max_batch = db
        .max_batch
        .unwrap_or(crate::config::behind::DEFAULT_MAX_BATCH);
    let first = db.applied + 1;
    let mut out = Vec::new();
    let mut live = 0;
    for (expected, (&seq, e)) in (first..).zip(db.pending.range(first..)) {
        if seq != expected || live >= max_batch {
            break;
        }
        if !dead.contains(&seq) {
            live += 1;
        }
        out.push((seq, Arc::clone(e)));
    }
    out
}

/// Stream kind: the holder takes, renews or loses the lease (not taken while draining: a
/// stopping instance leaves the queue to the others). `Break` once the task must end.
async fn lead(
    behind: &Behind,
    state: &Mutex<Db>,
    s: &StreamQueue,
    renewed_at: &mut Option<Instant>,
) -> ControlFlow<()> {
    let (stopped, holds) = {
        let db = lock(state);
        (db.stopped, db.holds)
    };
    if stopped {
        return ControlFlow::Break(());
    }
    let fresh = renewed_at.is_some_and(|t| t.elapsed() < LEASE_PERIOD / 3);
    let held = if fresh {
        true
    } else if behind.is_draining() && !holds {
        false
    } else {
        let mut conn = s.conn();
        match tokio::time::timeout(s.timeout(), s.lease().acquire_or_renew(&mut conn)).await {
            Ok(Ok(true)) => {
                *renewed_at = Some(Instant::now());
                true
            }
            Ok(Ok(false)) => {
                *renewed_at = None;
                false
            }
            // Unknown: keep applying while the lease surely has not passed to another.
            _ => renewed_at.is_some_and(|t| t.elapsed() < LEASE_PERIOD * 2 / 3),
        }
    };
    if lock(state).stopped {
        // Shutdown released the lease while this renewal was in flight: give it up again,
        // or the next instance would wait out its period.
        if held {
            let mut conn = s.conn();
            let _ = tokio::time::timeout(s.timeout(), s.lease().release(&mut conn)).await;
        }
        return ControlFlow::Break(());
    }
    let mut db = lock(state);
    if held != db.holds {
        if held {
            tracing::info!(database = %db.name, "write-behind: this instance holds the lease; applying the Redis queue");
        } else {
            warn!(database = %db.name, "write-behind: lease lost or held elsewhere; another instance applies the Redis queue");
        }
        db.holds = held;
    }
    ControlFlow::Continue(())
}

/// Stream kind, not holding the lease: what the holder published as applied leaves this
/// instance's share of the queue (its bounds and barriers).
async fn follow(behind: &Behind, state: &Mutex<Db>, s: &StreamQueue) {
    let Ok(st) = s.status().await else {
        return;
    };
    let Some(id) = st.id else {
        return;
    };
    let behind_by = {
        let mut db = lock(state);
        if db.stream_id.as_deref() != Some(id.as_str()) {
            behind.new_incarnation(&mut db, Some(id.clone()));
        }
        st.applied > db.applied
    };
    if behind_by {
        settle(
            behind,
            state,
            Some(id.as_str()),
            st.applied,
            &mut HashSet::new(),
            false,
        );
    }
}

/// Stream kind: the unbroken run of numbers after the last applied one, read from Redis
/// (at most the batch size of live writes). `None` when Redis's queue is no longer the
/// incarnation the connection's progress row is for.
async fn take_stream(
    state: &Mutex<Db>,
    s: &StreamQueue,
    conn_id: Option<&str>,
    dead: &HashSet<u64>,
) -> Result<Option<Vec<(u64, Arc<Entry>)>>, super::stream::StreamError> {
    let (first, max_batch, id, name) = {
        let db = lock(state);
        let max_batch = db
            .max_batch
            .unwrap_or(crate::config::behind::DEFAULT_MAX_BATCH);
        (
            db.applied + 1,
            max_batch,
            db.stream_id.clone(),
            db.name.clone(),
        )
    };
    let status = s.status().await?;
    // Redis's queue, the one the connection's progress row is of and the one `Db`'s numbers
    // are of must all be the same incarnation.
    if status.id.is_none() || status.id != id || id.as_deref() != conn_id {
        return Ok(None);
    }
    let Some(id) = id else {
        return Ok(None);
    };
    if status.seq + 1 < first {
        // Redis went back (a restart that lost its last writes under `appendfsync
        // everysec`, a failover to a replica that had not everything) under the same id:
        // it would number new writes at or below what is applied, and this flusher would
        // never read them. Raise its counter above what is applied.
        tracing::error!(
            database = %name,
            seq = status.seq,
            applied = first - 1,
            "write-behind: the Redis queue's counter went back below the applied number (Redis lost acknowledged writes); raising it (writes numbered meanwhile by instances that did not know the applied number are lost)"
        );
        s.fence(&id, first - 1).await?;
        return Ok(Some(Vec::new()));
    }
    if status.seq < first {
        return Ok(Some(Vec::new()));
    }
    let rows = s
        .read(
            &id,
            first,
            max_batch.saturating_add(dead.len()),
            MAX_READ_BYTES,
        )
        .await?;
    let mut out = Vec::new();
    let mut expected = first;
    let mut live = 0;
    for (seq, record) in rows {
        if seq != expected {
            // Numbers below the first entry were trimmed, which happens only after a commit
            // published them as applied: the progress row went back (PostgreSQL lost those
            // commits, logged at connect). Carry on after them; otherwise wait.
            if out.is_empty() && seq > expected && status.applied >= seq - 1 {
                tracing::error!(
                    from = expected,
                    to = seq - 1,
                    "write-behind: queued writes were applied by commits PostgreSQL lost; they are gone from the Redis queue"
                );
            } else {
                break;
            }
        }
        if live >= max_batch {
            break;
        }
        expected = seq + 1;
        // Not signed with this deployment's secret for this place in this queue (written
        // to Redis by someone else), too large, or not written by a pgmemo that reads this
        // format: a placeholder keeps the run unbroken, never runs, and becomes a dead
        // letter with the raw bytes before the batch (see `bury_unreadable`).
        let decoded = match record {
            Record::Verified(record) => Entry::decode(&record).map_err(|e| (record, e.to_string())),
            Record::Rejected { raw, why } => Err((raw, why.to_owned())),
        };
        let e = decoded.unwrap_or_else(|(raw, why)| {
            lock(state).unreadable.insert(seq, (raw, why));
            Entry::placeholder(&name)
        });
        if !dead.contains(&seq) {
            live += 1;
        }
        out.push((seq, Arc::new(e)));
    }
    Ok(Some(out))
}

fn max_batch(state: &Mutex<Db>) -> usize {
    lock(state)
        .max_batch
        .unwrap_or(crate::config::behind::DEFAULT_MAX_BATCH)
}

/// After (re)connecting: what the progress row says is applied leaves the queue. `release`:
/// this instance applies the queue (the journal's segments or the stream's entries it
/// covers go, and the stream kind publishes the number to the other instances). `id`
/// (stream kind): the queue incarnation `applied` is of; when `Db`'s is another one now
/// nothing is settled (its numbers mean other writes) and the answer is false.
fn settle(
    behind: &Behind,
    state: &Mutex<Db>,
    id: Option<&str>,
    applied: u64,
    dead: &mut HashSet<u64>,
    release: bool,
) -> bool {
    let mut db = lock(state);
    if !same_queue(db.stream_id.as_deref(), id) {
        return false;
    }
    let gone: Vec<u64> = db.pending.range(..=applied).map(|(&s, _)| s).collect();
    let mut bytes = 0u64;
    let mut written = Written::default();
    for s in &gone {
        if let Some(e) = db.pending.remove(s) {
            bytes += e.weight() as u64;
            written.merge(&tags_of(&e), None);
        }
    }
    // Applied by a batch whose reply was lost (or by this queue before a restart): what
    // they wrote is invalidated now, as a committed batch's is.
    if !written.is_empty() {
        behind.invalidator().bump(&written, Source::Write);
    }
    behind.release_room(gone.len(), bytes);
    db.applied = applied;
    if release {
        match &db.queue {
            Queue::Journal(j) => j.release(applied),
            Queue::Stream(s) => {
                // The batch's queue (checked equal to `Db`'s above, under the same lock).
                if let Some(id) = id {
                    s.release(id, applied);
                }
            }
        }
    }
    if let (Queue::Stream(s), Some(id)) = (&db.queue, id) {
        // The floor of this instance's appends: never numbered at or below it.
        s.set_floor(id, applied);
    }
    db.applied_tx.send_replace(applied);
    dead.retain(|&s| s > applied);
    drop(db);
    behind.publish_gauges();
    true
}

/// Whether numbers of queue `batch` may be settled in a `Db` whose queue is `db` (the
/// journal kind has no ids: always).
fn same_queue(db: Option<&str>, batch: Option<&str>) -> bool {
    db == batch
}

/// Writes queued under another role than the one this flusher logs in as (the journal of
/// an instance whose `upstream.url` user changed since) are not applied under this one:
/// they become dead letters (42501). False when they could not be recorded.
fn refuse_foreign(
    behind: &Behind,
    queue: &str,
    entries: &[(u64, Arc<Entry>)],
    dead: &mut HashSet<u64>,
) -> bool {
    let login = behind.link().login.user.as_str();
    let foreign: Vec<&(u64, Arc<Entry>)> = entries
        .iter()
        .filter(|(s, e)| !dead.contains(s) && e.role != login && !e.is_placeholder())
        .collect();
    if foreign.is_empty() {
        return true;
    }
    let letters = foreign
        .iter()
        .map(|(seq, e)| {
            let why = format!(
                "queued by role {:?}; the write-behind flusher logs in as {login:?} and never applies another role's writes",
                e.role
            );
            DeadLetter::new(*seq, e, "42501", &why)
        })
        .collect();
    if let Err(e) = behind.dead.add(letters, "rejected", Some(queue)) {
        warn!(error = %e, "cannot record a dead letter; the batch waits");
        return false;
    }
    dead.extend(foreign.iter().map(|(s, _)| *s));
    true
}

/// Records that did not decode and are not applied yet become dead letters (persisted
/// first) and their numbers are skipped like a refused write's. False when they could not
/// be recorded.
fn bury_unreadable(
    behind: &Behind,
    state: &Mutex<Db>,
    queue: &str,
    dead: &mut HashSet<u64>,
) -> bool {
    let (name, letters, seqs) = {
        let mut db = lock(state);
        let applied = db.applied;
        db.unreadable.retain(|&s, _| s > applied);
        let letters: Vec<DeadLetter> = db
            .unreadable
            .iter()
            .map(|(&seq, (raw, why))| DeadLetter::unreadable(&db.name, seq, raw, why))
            .collect();
        let seqs: Vec<u64> = db.unreadable.keys().copied().collect();
        (db.name.clone(), letters, seqs)
    };
    if letters.is_empty() {
        return true;
    }
    if let Err(e) = behind.dead.add(letters, "unreadable", Some(queue)) {
        warn!(database = %name, error = %e, "cannot record undecodable journal records as dead letters; the queue waits");
        return false;
    }
    // In the flusher's skipped set from now on (which outlives reconnections).
    lock(state).unreadable.clear();
    dead.extend(seqs);
    true
}

/// A committed batch of queue `id`: invalidate what it wrote, leave the queue, wake
/// barriers. False when `Db`'s queue is another incarnation now (nothing settled).
fn committed(
    behind: &Behind,
    state: &Mutex<Db>,
    id: Option<&str>,
    to: u64,
    live: &[(u64, Arc<Entry>)],
) -> bool {
    let mut written = Written::default();
    let now = now_ms();
    for (_, e) in live {
        let tags: Vec<Tag> = e
            .tags
            .iter()
            .map(|&rel| Tag { db: e.db_oid, rel })
            .collect();
        written.merge(&tags, None);
        let lag = now.saturating_sub(e.acked_ms) as f64 / 1000.0;
        metrics::histogram!(names::BEHIND_LAG_SECONDS).record(lag);
    }
    if !written.is_empty() {
        behind.invalidator().bump(&written, Source::Write);
    }
    metrics::counter!(names::BEHIND_APPLIED).increment(live.len() as u64);
    let mut dead = HashSet::new();
    if !settle(behind, state, id, to, &mut dead, true) {
        return false;
    }
    let oldest = lock(state)
        .pending
        .values()
        .next()
        .map_or(0.0, |e| now.saturating_sub(e.acked_ms) as f64 / 1000.0);
    metrics::gauge!(names::BEHIND_OLDEST_SECONDS).set(oldest);
    true
}

/// The counters a write bumps once applied.
fn tags_of(e: &Entry) -> Vec<Tag> {
    e.tags
        .iter()
        .map(|&rel| Tag { db: e.db_oid, rel })
        .collect()
}

/// A failed batch whose failure names writes: they become dead letters (before the batch
/// is sent again without them). `false` when the failure is not a write's.
fn refuse(
    behind: &Behind,
    queue: &str,
    (step, error): (Step, &batch::ServerError),
    built: &batch::Built,
    live: &[(u64, Arc<Entry>)],
    dead: &mut HashSet<u64>,
) -> bool {
    let members: Vec<usize> = match step {
        Step::Unit(u) => built
            .units
            .get(u)
            .map(|u| u.members.clone())
            .unwrap_or_default(),
        // The role or a setting was refused: every write of that role and settings.
        Step::Session(i) => match live.get(i) {
            Some((_, first)) => (0..live.len())
                .filter(|&j| live.get(j).is_some_and(|(_, e)| e.same_session(first)))
                .collect(),
            None => Vec::new(),
        },
        _ => return false,
    };
    if members.is_empty() || transient(&error.code) {
        return false;
    }
    let letters: Vec<DeadLetter> = members
        .iter()
        .filter_map(|&m| live.get(m))
        .map(|(seq, e)| DeadLetter::new(*seq, e, &error.code, &error.message))
        .collect();
    if let Err(e) = behind.dead.add(letters, "rejected", Some(queue)) {
        // Not recorded: the write must not be skipped. Retried (and refused) again.
        warn!(error = %e, "cannot record a dead letter; the batch is retried");
        return false;
    }
    for &m in &members {
        if let Some((seq, _)) = live.get(m) {
            dead.insert(*seq);
        }
    }
    true
}

/// A refused unit that merged several increments: its members stand alone in the next
/// attempt (the sum may overflow, or cross a CHECK, where each increment would not).
/// False when the failing step is not such a unit.
fn split(
    step: Step,
    error: &batch::ServerError,
    built: &batch::Built,
    live: &[(u64, Arc<Entry>)],
    alone: &mut HashSet<u64>,
) -> bool {
    let Step::Unit(u) = step else { return false };
    let Some(unit) = built.units.get(u) else {
        return false;
    };
    if unit.members.len() < 2 || transient(&error.code) {
        return false;
    }
    alone.extend(
        unit.members
            .iter()
            .filter_map(|&m| live.get(m))
            .map(|(s, _)| *s),
    );
    true
}

/// Errors that say nothing about the write itself: the batch is retried as it is. Narrow
/// on purpose: anything else a write's statement causes (08P01 for a Bind that does not fit
/// its statement, an internal error in its defaults, ...) would otherwise be retried
/// forever and stall every later write of the database; it becomes a dead letter.
fn transient(code: &str) -> bool {
    matches!(
        code,
        "40001" // serialization failure
            | "40P01" // deadlock
            | "57P01" // admin shutdown
            | "57P02" // crash shutdown
            | "57P03" // cannot connect now
            | "08000"
            | "08003"
            | "08006"
    ) || code.starts_with("53") // insufficient resources
}

/// Increments that matched no row (`UPDATE 0`): their writes had no effect, which their
/// `UPDATE 1` did not say. Kept as dead letters for an operator.
fn missed_rows(
    behind: &Behind,
    queue: &str,
    units: &[Unit],
    tags: &[String],
    live: &[(u64, Arc<Entry>)],
) {
    let mut letters = Vec::new();
    for (unit, tag) in units.iter().zip(tags) {
        if tag != "UPDATE 0" {
            continue;
        }
        for &m in &unit.members {
            if let Some((seq, e)) = live.get(m)
                && matches!(e.op, Op::Increment { .. })
            {
                letters.push(DeadLetter::new(
                    *seq,
                    e,
                    "P0002",
                    "the increment matched no row",
                ));
            }
        }
    }
    if !letters.is_empty()
        && let Err(e) = behind.dead.add(letters, "no_row", Some(queue))
    {
        warn!(error = %e, "cannot record dead letters of increments that matched no row");
    }
}

/// Sends one built batch and reads how it ended.
async fn apply(
    conn: &mut BackendConn,
    built: &batch::Built,
    timeout: Duration,
) -> Result<Outcome, FlushError> {
    let frames = run_request(conn, &built.bytes, MAX_REPLY_BYTES, timeout).await?;
    let mut replies = batch::Replies::new(&built.steps);
    let outcome = frames
        .iter()
        .find_map(|f| replies.frame(f.first().copied()?, f))
        .ok_or(FlushError::Progress)?;
    if matches!(outcome, Outcome::Failed { .. }) {
        // The explicit block is aborted (or may be): end it before the next batch.
        let mut rollback = Vec::new();
        batch::run(&mut rollback, "ROLLBACK", &[]);
        put_frame(&mut rollback, b'S', &[]);
        run_request(conn, &rollback, MAX_REPLY_BYTES, timeout).await?;
    }
    Ok(outcome)
}

/// Logs in as pgmemo's own role, creates the progress table if needed, and reads this
/// queue's progress and the server's defaults of the recorded settings.
async fn connect(behind: &Behind, db: &str, queue: &str) -> Result<(Conn, u64), FlushError> {
    let link = behind.link();
    let password = link.login.password.as_ref().map(|p| p.expose().to_owned());
    let mut conn = login(
        &link.upstream,
        &link.login.user,
        password.as_deref(),
        db,
        &[(
            "application_name".to_owned(),
            "pgmemo write-behind".to_owned(),
        )],
        link.connect_timeout,
    )
    .await?;
    let names: Vec<String> = RECORDED_SETTINGS.iter().map(|n| format!("'{n}'")).collect();
    let mut req = Vec::new();
    // Created only when missing: CREATE ... IF NOT EXISTS checks the CREATE privilege
    // first, and a role given the table by an administrator need not have it. Then used
    // only if pgmemo's role owns the schema and the table (or, not being a superuser, for
    // whom membership is implied, is a member of their owners) and the table runs no code: another role that created them first could otherwise run a
    // trigger as pgmemo on every batch, or move the progress row to skip or repeat writes.
    let create = format!(
        "DO $pgmemo$ BEGIN \
         IF pg_catalog.to_regnamespace('pgmemo') IS NULL THEN CREATE SCHEMA pgmemo; END IF; \
         IF pg_catalog.to_regclass('pgmemo.behind_progress') IS NULL THEN {PROGRESS_DDL}; END IF; \
         IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c \
           JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
           JOIN pg_catalog.pg_roles me ON me.rolname OPERATOR(pg_catalog.=) current_user \
           WHERE c.oid OPERATOR(pg_catalog.=) 'pgmemo.behind_progress'::pg_catalog.regclass \
           AND c.relkind OPERATOR(pg_catalog.=) 'r' \
           AND (c.relowner OPERATOR(pg_catalog.=) me.oid OR (NOT me.rolsuper \
             AND pg_catalog.pg_has_role(c.relowner, 'MEMBER'))) \
           AND (n.nspowner OPERATOR(pg_catalog.=) me.oid OR (NOT me.rolsuper \
             AND pg_catalog.pg_has_role(n.nspowner, 'MEMBER'))) \
           AND NOT c.relhastriggers AND NOT c.relhasrules AND NOT c.relrowsecurity) THEN \
           RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = 'pgmemo.behind_progress (or its \
           schema) is not owned by this role, or has triggers, rules or row security: \
           write-behind will not use it'; \
         END IF; \
         END $pgmemo$"
    );
    batch::run(&mut req, &create, &[]);
    batch::run(
        &mut req,
        "INSERT INTO pgmemo.behind_progress (queue, applied) VALUES ($1, 0) ON CONFLICT (queue) DO NOTHING",
        &[queue.as_bytes()],
    );
    batch::run(
        &mut req,
        "SELECT applied::text FROM pgmemo.behind_progress WHERE queue = $1",
        &[queue.as_bytes()],
    );
    let settings = format!(
        "SELECT pg_catalog.lower(name), boot_val FROM pg_catalog.pg_settings WHERE pg_catalog.lower(name) IN ({}) AND boot_val IS NOT NULL",
        names.join(", ")
    );
    batch::run(&mut req, &settings, &[]);
    put_frame(&mut req, b'S', &[]);
    let frames = run_request(&mut conn, &req, MAX_REPLY_BYTES, link.batch_timeout).await?;
    let mut rows: Vec<Vec<String>> = Vec::new();
    for f in &frames {
        match f.first().copied() {
            Some(backend::ERROR_RESPONSE) => {
                return Err(FlushError::Server(batch::server_error(
                    f.get(5..).unwrap_or_default(),
                )));
            }
            Some(backend::DATA_ROW) => rows.push(data_row(f.get(5..).unwrap_or_default())),
            _ => {}
        }
    }
    let mut rows = rows.into_iter();
    let applied = rows
        .next()
        .and_then(|r| r.into_iter().next())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or(FlushError::Progress)?;
    let defaults = rows
        .filter_map(|r| {
            let mut r = r.into_iter();
            Some((r.next()?, r.next()?))
        })
        .collect();
    Ok((
        Conn {
            conn,
            defaults,
            prepared: Prepared::default(),
        },
        applied,
    ))
}

/// The text columns of a DataRow body (NULL as empty).
fn data_row(body: &[u8]) -> Vec<String> {
    let mut r = crate::protocol::fields::Reader::new(body);
    let n = r.i16().unwrap_or(0).max(0);
    let mut out = Vec::new();
    for _ in 0..n {
        let Some(len) = r.i32() else { break };
        let value = usize::try_from(len)
            .ok()
            .and_then(|l| r.bytes(l))
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default();
        out.push(value);
    }
    out
}
