//! The shared tier as sessions and invalidation sources use it: the counters (read from
//! Redis per lookup in `strict`, from the [`Mirror`] in `fast`), the result store, and bumps
//! applied in Redis before a write is acknowledged, with the ones that fail recorded and
//! retried. Background work ([`SharedTier::run`]): the eviction-policy check (the tier is
//! unusable until it passed), the bump subscription that keeps the mirror (`fast`), the
//! retries, and the store's writer.
//!
//! Failure never reaches a client: every call is bounded by the timeout and the breaker;
//! a failed counter read means "no shared counters" and the session then does not use the
//! cache for that statement (or uses L1 only, see the session side).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use metrics::Counter;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::batch::Batcher;
use super::envelope::{EnvelopeKey, Sealed, now_unix_ms};
use super::mirror::{Mirror, Mirrored};
use super::store::{L2Settings, L2Store, L2Writer};
use super::versions::{SharedSnapshot, SharedVersions, VersionsError, parse_bump_message};
use crate::cache::{CacheKey, Dep};
use crate::redis_link::conn::RedisConn;
use crate::tasks::{InFlight, Tasks};
use crate::telemetry::names;

mod background;

/// How lookups learn the shared counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Read from Redis for every lookup: nothing invalidated by an acknowledged write is
    /// served anywhere while Redis is reachable; unreachable, the cache is bypassed.
    Strict,
    /// From the local mirror: stale across instances by at most the announcement's delivery;
    /// with Redis unreachable, by the TTL.
    Fast,
}

/// Everything the tier is built from (from `[cache.redis]`; the cache does not read config).
#[derive(Debug, Clone)]
pub struct TierSettings {
    pub store: L2Settings,
    pub consistency: Consistency,
    /// `url` first, then further cluster seeds.
    pub seeds: Vec<String>,
    pub cluster: bool,
    /// Bound on the tags the mirror holds.
    pub max_tags: usize,
    /// Bound on the tags of bumps awaiting a retry (beyond: the retry is an epoch bump).
    pub max_pending: usize,
}

/// Bumps that did not reach Redis, to retry.
#[derive(Debug, Default)]
struct Pending {
    tags: BTreeSet<Dep>,
    /// Too many tags to remember, or an epoch bump among them.
    epoch: bool,
}

struct Metrics {
    applied: Counter,
    failed: Counter,
    retried: Counter,
    reads_ok: Counter,
    reads_error: Counter,
    reads_skipped: Counter,
}

/// The shared tier of one instance.
pub struct SharedTier {
    /// Where its background work is spawned (named, waited for at shutdown).
    tasks: Tasks,
    conn: RedisConn,
    versions: SharedVersions,
    store: Arc<L2Store<RedisConn>>,
    /// Tells this tier's per-thread lookup connections apart from another tier's.
    id: u64,
    mirror: Option<Mirror>,
    settings: TierSettings,
    /// The eviction policy was checked and is safe.
    usable: AtomicBool,
    pending: Mutex<Pending>,
    has_pending: AtomicBool,
    metrics: Metrics,
}

impl std::fmt::Debug for SharedTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTier")
            .field("consistency", &self.settings.consistency)
            .field("usable", &self.is_usable())
            .finish()
    }
}

/// Why the tier could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TierError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

impl SharedTier {
    /// The tier and its store's writer (hand both to [`run`](Self::run)). Connects lazily.
    pub fn new(
        settings: TierSettings,
        key: EnvelopeKey,
        tasks: Tasks,
    ) -> Result<(Arc<SharedTier>, L2Writer<RedisConn>), TierError> {
        let conn = RedisConn::new(&settings.seeds, settings.cluster, settings.store.timeout)?;
        let mut store_settings = settings.store.clone();
        store_settings.cluster = settings.cluster;
        let (store, writer) = L2Store::new(conn.clone(), key, store_settings);
        let store = Arc::new(store);
        let versions = SharedVersions::new(&settings.store.namespace, settings.store.timeout);
        let c = |r: &'static str| metrics::counter!(names::L2_BUMPS, "result" => r);
        let r = |r: &'static str| metrics::counter!(names::L2_COUNTER_READS, "result" => r);
        metrics::gauge!(names::L2_USABLE).set(0.0);
        let tier = SharedTier {
            tasks,
            versions,
            id: NEXT_TIER_ID.fetch_add(1, Ordering::Relaxed),
            mirror: (settings.consistency == Consistency::Fast)
                .then(|| Mirror::new(settings.max_tags)),
            conn,
            store,
            usable: AtomicBool::new(false),
            pending: Mutex::new(Pending::default()),
            has_pending: AtomicBool::new(false),
            metrics: Metrics {
                applied: c("applied"),
                failed: c("failed"),
                retried: c("retried"),
                reads_ok: r("ok"),
                reads_error: r("error"),
                reads_skipped: r("breaker_open"),
            },
            settings,
        };
        Ok((Arc::new(tier), writer))
    }

    pub fn consistency(&self) -> Consistency {
        self.settings.consistency
    }

    /// Checked (eviction policy) and the breaker is not open: worth asking.
    pub fn is_usable(&self) -> bool {
        self.usable.load(Ordering::Acquire)
            && self.store.breaker().state() == crate::redis_link::breaker::BreakerState::Closed
    }

    /// This thread's lookup connection and batchers (made on first use). Sessions run on
    /// per-core runtimes: a connection of their own thread keeps a lookup's round trip off
    /// other threads (no cross-thread wake-ups per lookup, which cost more than the call).
    fn lookups(&self) -> Lookups {
        LOOKUPS.with(|cell| {
            let mut all = cell.borrow_mut();
            if let Some((_, l)) = all.iter().find(|(id, _)| *id == self.id) {
                return l.clone();
            }
            let l = self.new_lookups();
            all.push((self.id, l.clone()));
            l
        })
    }

    fn new_lookups(&self) -> Lookups {
        let conn = RedisConn::new(
            &self.settings.seeds,
            self.settings.cluster,
            self.settings.store.timeout,
        )
        // The same settings already made the tier's connection: this cannot fail; if it
        // did, the tier's own connection serves (shared, slower).
        .unwrap_or_else(|_| self.conn.clone());
        // A lookup waits for a place in a batch at most this long, then for the batch.
        let timeout = self.settings.store.timeout;
        let counters = {
            let (store, versions, conn) =
                (Arc::clone(&self.store), self.versions.clone(), conn.clone());
            Batcher::spawn(
                &self.tasks,
                BATCH_QUEUE,
                MAX_BATCH,
                timeout,
                move |reqs: Vec<CounterRead>| {
                    let (store, versions, mut conn) =
                        (Arc::clone(&store), versions.clone(), conn.clone());
                    async move { read_batch(&store, &versions, &mut conn, &reqs).await }
                },
            )
        };
        let gets = {
            let store = Arc::clone(&self.store);
            Batcher::spawn(
                &self.tasks,
                BATCH_QUEUE,
                MAX_BATCH,
                timeout,
                move |keys: Vec<CacheKey>| {
                    let (store, mut conn) = (Arc::clone(&store), conn.clone());
                    async move { store.get_many_on(&mut conn, &keys).await }
                },
            )
        };
        Lookups { counters, gets }
    }

    /// Where the tier's background work runs.
    pub fn tasks(&self) -> &Tasks {
        &self.tasks
    }

    /// Worth asking Redis for counters now: usable, and the breaker is closed or due a trial.
    pub fn may_ask(&self) -> bool {
        self.usable.load(Ordering::Acquire) && self.store.breaker().would_allow(Instant::now())
    }

    /// L2 reads are allowed: usable, and no bump of this instance is still unapplied in
    /// Redis (an L2 entry under the old counters could be older than this instance's own
    /// acknowledged write).
    pub fn l2_reads_allowed(&self) -> bool {
        self.is_usable() && !self.has_pending.load(Ordering::Acquire)
    }

    /// A connection to the tier's Redis (for other jobs on it: the CDC lease).
    pub fn conn(&self) -> RedisConn {
        self.conn.clone()
    }

    pub fn namespace(&self) -> &str {
        &self.settings.store.namespace
    }

    /// Bound on every Redis call on a client's path.
    pub fn timeout(&self) -> Duration {
        self.settings.store.timeout
    }

    /// Some bump of this instance has not reached Redis yet (it is being retried).
    pub fn has_pending(&self) -> bool {
        self.has_pending.load(Ordering::Acquire)
    }

    /// `fast`: the mirror's counters for `tags` (sorted), if it holds them all.
    pub fn mirrored(&self, tags: &[Dep]) -> Option<Mirrored> {
        self.mirror.as_ref()?.snapshot(tags)
    }

    /// Reads the counters of `tags` (sorted) from Redis; `None` when Redis is unusable,
    /// down, slow or the breaker is open. `fast`: what was read joins the mirror. The tags
    /// are shared with the batch rather than copied into it.
    pub async fn read_counters(&self, tags: Arc<[Dep]>) -> Option<SharedSnapshot> {
        Some(self.read(tags, None).await?.0)
    }

    /// As [`read_counters`](Self::read_counters), and the L2 entry at `slot` in the same
    /// round trip (for a lookup that has no L1 to try first). The entry is only good if its
    /// check matches the key computed with the counters read.
    pub async fn read_counters_and_entry(
        &self,
        tags: Arc<[Dep]>,
        slot: CacheKey,
    ) -> Option<(SharedSnapshot, Option<Sealed>)> {
        self.read(tags, Some(slot)).await
    }

    async fn read(
        &self,
        tags: Arc<[Dep]>,
        slot: Option<CacheKey>,
    ) -> Option<(SharedSnapshot, Option<Sealed>)> {
        if !self.usable.load(Ordering::Acquire) {
            return None;
        }
        if !self.store.breaker().would_allow(Instant::now()) {
            self.metrics.reads_skipped.increment(1);
            return None;
        }
        let token = self.mirror.as_ref().map(Mirror::sync_token);
        let lookups = self.lookups();
        let call = lookups.counters.call(CounterRead {
            tags: Arc::clone(&tags),
            entry: slot,
        });
        // Bounded without a timer of its own: the batch by the timeout, the wait for a place
        // in one by the batcher (see `batch`).
        match call.await {
            Some(Some((snap, entry))) => {
                self.metrics.reads_ok.increment(1);
                if let (Some(m), Some(t)) = (self.mirror.as_ref(), token) {
                    m.absorb(t, &tags, &snap);
                }
                Some((snap, entry))
            }
            Some(None) => {
                // The batch failed (counted there).
                self.metrics.reads_error.increment(1);
                None
            }
            None => {
                // Refused by a full queue, or queued too long: never sent.
                self.metrics.reads_error.increment(1);
                if slot.is_some() {
                    self.store.count_errors(1);
                }
                None
            }
        }
    }

    /// A found L2 entry was used, or was stored under other counters (a miss), for the
    /// lookup metrics.
    pub fn count_l2_lookup(&self, hit: bool) {
        self.store.count_lookup(hit);
    }

    /// An L2 lookup (any failure is a miss).
    pub async fn get(&self, key: CacheKey) -> Option<Sealed> {
        let lookups = self.lookups();
        // Bounded like a counter read (see `read`).
        match lookups.gets.call(key).await {
            Some(found) => found,
            None => {
                // Refused by a full queue, or queued too long: never sent.
                self.store.count_errors(1);
                None
            }
        }
    }

    /// Queues an L2 store (off the client's path; dropped when the queue is full). `done`
    /// is held until Redis answered it (see `L2Store::put_then`).
    pub fn put(&self, key: CacheKey, entry: &Sealed, done: Option<InFlight>) {
        if self.is_usable() {
            self.store.put_then(key, entry, done);
        }
    }

    /// Applies a bump in Redis (bounded by the timeout); on failure records it for retry.
    /// Await it before relaying the acknowledgement of the write it is for.
    pub async fn bump(&self, tags: &[Dep], epoch: bool) {
        if tags.is_empty() && !epoch {
            return;
        }
        // A failure that comes back at once (a connection being re-made after Redis came
        // back) is tried again within the timeout: other instances may already read from
        // Redis, and would serve what this write changed until the retry lands.
        let deadline = Instant::now() + self.settings.store.timeout;
        let mut applied = self.try_bump(tags, epoch).await;
        while !applied && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
            applied = self.try_bump(tags, epoch).await;
        }
        if applied {
            self.metrics.applied.increment(1);
        } else {
            self.metrics.failed.increment(1);
            if !self.has_pending.load(Ordering::Acquire) {
                warn!(
                    "redis: a bump could not be applied; recorded and retried (other instances may serve what it changed until then, at most for the TTL)"
                );
            }
            self.record(tags, epoch);
        }
    }

    /// Bumps are tried even while the breaker is open (they feed it, but it does not stop
    /// them): a bump skipped while Redis is back for the other instances would let them
    /// serve what this write changed. The cost is at most the timeout per write while Redis
    /// is away.
    async fn try_bump(&self, tags: &[Dep], epoch: bool) -> bool {
        let breaker = self.store.breaker();
        if !self.usable.load(Ordering::Acquire) {
            return false;
        }
        let mut conn = self.conn.clone();
        match self.versions.bump(&mut conn, tags, epoch).await {
            Ok(announced) => {
                breaker.success();
                if let Some(m) = &self.mirror {
                    m.apply(&announced, false);
                }
                true
            }
            Err(e) => {
                breaker.failure(Instant::now());
                tracing::debug!(error = %e, "redis: bump failed");
                false
            }
        }
    }

    /// Records a bump that could not be applied, for the background retry.
    pub fn record(&self, tags: &[Dep], epoch: bool) {
        let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        p.epoch |= epoch;
        for t in tags {
            if p.tags.len() >= self.settings.max_pending {
                // Too many to name: the retry bumps the epoch (it does anyway).
                p.tags.clear();
                p.epoch = true;
                break;
            }
            p.tags.insert(*t);
        }
        self.has_pending.store(true, Ordering::Release);
    }
}

/// One lookup's counter read: its tags (sorted) and, for a lookup without an L1, the L2
/// entry to fetch in the same round trip.
struct CounterRead {
    tags: Arc<[Dep]>,
    entry: Option<CacheKey>,
}

/// What a counter read found: `None` when Redis could not be read.
type CountersRead = Option<(SharedSnapshot, Option<Sealed>)>;

/// One thread's batchers for lookups.
#[derive(Clone)]
struct Lookups {
    /// Counter reads (and entries fetched with them) of concurrent lookups, one round trip
    /// per batch.
    counters: Batcher<CounterRead, CountersRead>,
    /// L2 reads of concurrent lookups, likewise.
    gets: Batcher<CacheKey, Option<Sealed>>,
}

thread_local! {
    /// Per thread: the lookup batchers of each tier (one in a process, several in tests).
    static LOOKUPS: std::cell::RefCell<Vec<(u64, Lookups)>> = const { std::cell::RefCell::new(Vec::new()) };
}

static NEXT_TIER_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Lookups waiting for a batch at most (beyond: treated as Redis unavailable).
const BATCH_QUEUE: usize = 4096;
/// Requests in one batch at most.
const MAX_BATCH: usize = 128;

/// Reads the counters for a batch of lookups in one round trip: the union of their tags,
/// then each request's own (sorted) tags picked out of it, and the entries some of them
/// asked for (in the same pipeline; on a cluster, where they live on other nodes, as
/// concurrent commands). Any failure fails all of them.
async fn read_batch(
    store: &L2Store<RedisConn>,
    versions: &SharedVersions,
    conn: &mut RedisConn,
    reqs: &[CounterRead],
) -> Vec<CountersRead> {
    let asked = reqs.iter().filter(|r| r.entry.is_some()).count();
    let none = || reqs.iter().map(|_| None).collect();
    let breaker = store.breaker();
    if !breaker.allow(Instant::now()) {
        store.count_skipped(asked);
        return none();
    }
    let mut union: Vec<Dep> = reqs.iter().flat_map(|r| r.tags.iter()).copied().collect();
    union.sort_unstable();
    union.dedup();
    let keys: Vec<String> = reqs
        .iter()
        .filter_map(|r| r.entry)
        .map(|k| store.redis_key(k))
        .collect();
    // The breaker sees one call per batch, whatever it is made of.
    let read = if keys.is_empty() {
        versions
            .snapshot(conn, &union)
            .await
            .map(|s| (s, Vec::new()))
    } else if conn.is_cluster() {
        let mut other = conn.clone();
        let (counters, found) = tokio::join!(
            versions.snapshot(conn, &union),
            store.fetch(&mut other, &keys)
        );
        match (counters, found) {
            (Ok(s), Some(found)) => Ok((s, found)),
            (Err(e), _) => Err(e),
            (Ok(_), None) => Err(VersionsError::Reply("entries")),
        }
    } else {
        versions.snapshot_and_get(conn, &union, &keys).await
    };
    match read {
        Ok((all, found)) => {
            breaker.success();
            let now = now_unix_ms();
            let mut entries = found
                .into_iter()
                .zip(&keys)
                .map(|(bytes, key)| store.open_found(key, bytes, now));
            reqs.iter()
                .map(|req| {
                    let entry = req.entry.and_then(|_| entries.next().flatten());
                    let picked = req
                        .tags
                        .iter()
                        .map(|t| {
                            let i = union.binary_search(t).ok()?;
                            all.versions.get(i).copied()
                        })
                        .collect::<Option<Vec<u64>>>()?;
                    let snapshot = SharedSnapshot {
                        generation: Arc::clone(&all.generation),
                        epoch: all.epoch,
                        versions: picked,
                    };
                    Some((snapshot, entry))
                })
                .collect()
        }
        Err(e) => {
            breaker.failure(Instant::now());
            store.count_errors(asked);
            tracing::debug!(error = %e, "redis: counter read failed");
            none()
        }
    }
}

/// How often the background loop runs (retries; policy checks while unusable).
const MAINTENANCE_TICK: Duration = Duration::from_millis(100);
/// The eviction policy is re-read this often while usable (an operator may change it).
const POLICY_RECHECK: Duration = Duration::from_secs(10);
/// A silent subscription is checked this often (a dead TCP peer shows no error otherwise).
const PING_EVERY: Duration = Duration::from_secs(1);
const RESUBSCRIBE_AFTER: Duration = Duration::from_millis(200);

fn io_timeout() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "redis did not answer in time",
    ))
}
