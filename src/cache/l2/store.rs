//! Results on Redis: reads bounded by a short timeout and the circuit breaker, writes handed
//! to a bounded queue drained by a background task, so a slow Redis never sits on a client's
//! critical path (a full queue drops the write and counts it). Every value is a sealed
//! [`envelope`](super::envelope); one that does not open (another secret, tampering,
//! expiry, an unknown format) is a miss.
//!
//! Entry keys are `pgmemo:NS:e:KEY` with the 128-bit cache key in hex, no hash tag, so a
//! Redis Cluster spreads them over its slots. An entry cached "until invalidated" (TTL 0)
//! still gets a Redis expiry of [`MAX_L2_TTL`], so a `volatile-*` eviction policy can
//! reclaim it and nothing lives in Redis forever.

use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::Counter;
use redis::aio::ConnectionLike;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::envelope::{self, EnvelopeKey, Sealed, now_unix_ms};
use crate::cache::key::CacheKey;
use crate::redis_link::breaker::Breaker;
use crate::tasks::InFlight;
use crate::telemetry::names;

/// Writes sent in one pipeline at most.
const WRITE_BATCH: usize = 64;

/// Redis expiry of entries cached until invalidated.
pub const MAX_L2_TTL: Duration = Duration::from_secs(24 * 3600);

/// How the L2 behaves.
#[derive(Debug, Clone)]
pub struct L2Settings {
    pub namespace: String,
    /// Bound on every Redis call on a client's path.
    pub timeout: Duration,
    /// Results at least this large are LZ4-compressed (when that makes them smaller).
    pub compress_min: usize,
    /// Largest result accepted from Redis (the L1's entry limit).
    pub max_entry: usize,
    /// Writes waiting for the background writer at most.
    pub write_queue: usize,
    pub breaker_threshold: u32,
    pub breaker_cooldown: Duration,
    /// A Redis Cluster: a pipeline may not span slots, so batched reads and writes go as
    /// concurrent single commands instead.
    pub cluster: bool,
}

impl Default for L2Settings {
    fn default() -> Self {
        Self {
            namespace: "default".into(),
            timeout: Duration::from_millis(50),
            compress_min: 1024,
            max_entry: 1 << 20,
            write_queue: 1024,
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(1),
            cluster: false,
        }
    }
}

struct Write {
    key: String,
    bytes: Vec<u8>,
    ttl: Duration,
    /// Dropped once the write was sent and answered, or dropped unsent (see
    /// [`L2Store::put_then`]).
    done: Option<InFlight>,
}

struct Metrics {
    hits: Counter,
    misses: Counter,
    errors: Counter,
    refused: Counter,
    skipped: Counter,
    dropped: Counter,
    written: Counter,
    raw_bytes: Counter,
    stored_bytes: Counter,
}

impl Metrics {
    fn new() -> Metrics {
        let c = |result: &'static str| metrics::counter!(names::L2_LOOKUPS, "result" => result);
        Metrics {
            hits: c("hit"),
            misses: c("miss"),
            errors: c("error"),
            refused: c("refused"),
            skipped: c("breaker_open"),
            dropped: metrics::counter!(names::L2_WRITES, "result" => "dropped"),
            written: metrics::counter!(names::L2_WRITES, "result" => "written"),
            raw_bytes: metrics::counter!(names::L2_BYTES, "stage" => "raw"),
            stored_bytes: metrics::counter!(names::L2_BYTES, "stage" => "stored"),
        }
    }
}

/// The L2 of one deployment: `C` is the Redis connection (multiplexed, managed or cluster).
pub struct L2Store<C> {
    conn: C,
    key: EnvelopeKey,
    breaker: Arc<Breaker>,
    settings: L2Settings,
    prefix: String,
    queue: mpsc::Sender<Write>,
    metrics: Arc<Metrics>,
}

/// Drains the write queue; run it as a background task until `stop`.
pub struct L2Writer<C> {
    conn: C,
    rx: mpsc::Receiver<Write>,
    breaker: Arc<Breaker>,
    timeout: Duration,
    cluster: bool,
    metrics: Arc<Metrics>,
}

impl<C: ConnectionLike + Clone + Send + Sync + 'static> L2Store<C> {
    pub fn new(conn: C, key: EnvelopeKey, settings: L2Settings) -> (L2Store<C>, L2Writer<C>) {
        let (tx, rx) = mpsc::channel(settings.write_queue.max(1));
        let breaker = Arc::new(Breaker::new(
            settings.breaker_threshold,
            settings.breaker_cooldown,
        ));
        let metrics = Arc::new(Metrics::new());
        let writer = L2Writer {
            conn: conn.clone(),
            rx,
            breaker: Arc::clone(&breaker),
            timeout: settings.timeout,
            cluster: settings.cluster,
            metrics: Arc::clone(&metrics),
        };
        let store = L2Store {
            prefix: format!("pgmemo:{}:e:", settings.namespace),
            conn,
            key,
            breaker,
            settings,
            queue: tx,
            metrics,
        };
        (store, writer)
    }

    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// The Redis key of a cache key.
    pub fn redis_key(&self, key: CacheKey) -> String {
        format!("{}{:032x}", self.prefix, key.0)
    }

    /// Looks `key` up. Any failure is a miss (and feeds the breaker); never waits longer
    /// than the timeout.
    pub async fn get(&self, key: CacheKey) -> Option<Sealed> {
        self.get_many(&[key]).await.into_iter().next().flatten()
    }

    /// Looks several keys up in one round trip (a pipeline of GETs; a cluster routes each to
    /// its node). Any failure is a miss for all of them.
    pub async fn get_many(&self, keys: &[CacheKey]) -> Vec<Option<Sealed>> {
        let mut conn = self.conn.clone();
        self.get_many_on(&mut conn, keys).await
    }

    /// As [`get_many`](Self::get_many), on a connection of the caller's (a per-thread one).
    pub async fn get_many_on(&self, conn: &mut C, keys: &[CacheKey]) -> Vec<Option<Sealed>> {
        let misses = || keys.iter().map(|_| None).collect();
        if keys.is_empty() {
            return Vec::new();
        }
        if !self.breaker.allow(Instant::now()) {
            self.metrics.skipped.increment(keys.len() as u64);
            return misses();
        }
        let redis_keys: Vec<String> = keys.iter().map(|k| self.redis_key(*k)).collect();
        let found = match self.fetch(conn, &redis_keys).await {
            Some(b) => {
                self.breaker.success();
                b
            }
            None => {
                self.breaker.failure(Instant::now());
                self.metrics.errors.increment(keys.len() as u64);
                return misses();
            }
        };
        let now = now_unix_ms();
        found
            .into_iter()
            .zip(&redis_keys)
            .map(|(bytes, redis_key)| self.open_found(redis_key, bytes, now))
            .collect()
    }

    /// `GET`s `redis_keys` in one round trip (a pipeline; on a cluster, where a pipeline may
    /// not span slots, concurrent commands), bounded by the timeout; `None` on any failure.
    /// Neither the breaker nor the metrics are touched: the caller accounts for the call.
    pub async fn fetch(&self, conn: &mut C, redis_keys: &[String]) -> Option<Vec<Option<Vec<u8>>>> {
        let call = async {
            if self.settings.cluster {
                let gets = redis_keys.iter().map(|k| {
                    let mut conn = conn.clone();
                    async move { redis::cmd("GET").arg(k).query_async(&mut conn).await }
                });
                futures_util::future::try_join_all(gets).await
            } else {
                let mut pipe = redis::pipe();
                for k in redis_keys {
                    pipe.cmd("GET").arg(k);
                }
                pipe.query_async::<Vec<Option<Vec<u8>>>>(conn).await
            }
        };
        match tokio::time::timeout(self.settings.timeout, call).await {
            Ok(Ok(b)) if b.len() == redis_keys.len() => Some(b),
            _ => None,
        }
    }

    /// `n` lookups were not sent: the breaker is open.
    pub fn count_skipped(&self, n: usize) {
        self.metrics.skipped.increment(n as u64);
    }

    /// What a `GET` of `redis_key` returned, opened: `None` when it held nothing (a miss) or
    /// an envelope that does not open here (refused: another secret, tampering, expired, an
    /// unknown format). A found entry is not counted yet: only its reader can tell whether
    /// its check matches (see [`count_lookup`](Self::count_lookup)).
    pub fn open_found(&self, redis_key: &str, bytes: Option<Vec<u8>>, now: u64) -> Option<Sealed> {
        let Some(bytes) = bytes else {
            self.metrics.misses.increment(1);
            return None;
        };
        match envelope::open(
            &self.key,
            redis_key.as_bytes(),
            &bytes,
            now,
            self.settings.max_entry,
        ) {
            Ok(sealed) => Some(sealed),
            Err(e) => {
                tracing::debug!(error = %e, "redis: entry refused");
                self.metrics.refused.increment(1);
                None
            }
        }
    }

    /// A found entry was used (`hit`) or was stored under other counters (a miss).
    pub fn count_lookup(&self, hit: bool) {
        if hit {
            self.metrics.hits.increment(1);
        } else {
            self.metrics.misses.increment(1);
        }
    }

    /// `n` lookups failed with the round trip that carried them.
    pub fn count_errors(&self, n: usize) {
        self.metrics.errors.increment(n as u64);
    }

    /// Queues `entry` for storage under `key`; `false` when the queue was full (dropped).
    pub fn put(&self, key: CacheKey, entry: &Sealed) -> bool {
        self.put_then(key, entry, None)
    }

    /// As [`L2Store::put`], holding `done` until Redis answered the write (or it was
    /// dropped): a write-through's acknowledgement waits for it, so a reader through
    /// another instance right after finds the entry.
    pub fn put_then(&self, key: CacheKey, entry: &Sealed, done: Option<InFlight>) -> bool {
        let redis_key = self.redis_key(key);
        let Some(sealed) = envelope::seal(
            &self.key,
            redis_key.as_bytes(),
            entry,
            self.settings.compress_min,
        ) else {
            return false;
        };
        let ttl = match entry.ttl_ms {
            0 => MAX_L2_TTL,
            ms => Duration::from_millis(ms).min(MAX_L2_TTL),
        };
        self.metrics.raw_bytes.increment(sealed.raw_len as u64);
        self.metrics
            .stored_bytes
            .increment(sealed.stored_len as u64);
        match self.queue.try_send(Write {
            key: redis_key,
            bytes: sealed.bytes,
            ttl,
            done,
        }) {
            Ok(()) => true,
            Err(_) => {
                self.metrics.dropped.increment(1);
                false
            }
        }
    }
}

impl<C: ConnectionLike + Clone + Send + 'static> L2Writer<C> {
    /// Writes queued entries until `stop` or until every store is gone. A write while the
    /// breaker is open is dropped (counted): the entry stays in L1 only.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut batch: Vec<Write> = Vec::with_capacity(WRITE_BATCH);
        loop {
            let write = tokio::select! {
                _ = stop.cancelled() => return,
                w = self.rx.recv() => match w {
                    Some(w) => w,
                    None => return,
                },
            };
            batch.push(write);
            // Whatever queued meanwhile goes in the same round trip.
            while batch.len() < WRITE_BATCH {
                match self.rx.try_recv() {
                    Ok(w) => batch.push(w),
                    Err(_) => break,
                }
            }
            let n = batch.len() as u64;
            // Held until the round trip ended, then dropped: the writes' tokens end.
            let _done: Vec<InFlight> = batch.iter_mut().filter_map(|w| w.done.take()).collect();
            if !self.breaker.allow(Instant::now()) {
                self.metrics.dropped.increment(n);
                batch.clear();
                continue;
            }
            let cmds: Vec<redis::Cmd> = batch
                .drain(..)
                .map(|w| {
                    let ms = u64::try_from(w.ttl.as_millis()).unwrap_or(u64::MAX).max(1);
                    let mut cmd = redis::cmd("SET");
                    cmd.arg(w.key).arg(w.bytes).arg("PX").arg(ms);
                    cmd
                })
                .collect();
            let conn = &self.conn;
            let cluster = self.cluster;
            let call = async move {
                if cluster {
                    let sets = cmds.iter().map(|cmd| {
                        let mut conn = conn.clone();
                        async move { cmd.query_async::<()>(&mut conn).await }
                    });
                    futures_util::future::try_join_all(sets).await.map(|_| ())
                } else {
                    let mut pipe = redis::pipe();
                    for cmd in cmds {
                        pipe.add_command(cmd).ignore();
                    }
                    let mut conn = conn.clone();
                    pipe.query_async::<()>(&mut conn).await
                }
            };
            match tokio::time::timeout(self.timeout, call).await {
                Ok(Ok(())) => {
                    self.breaker.success();
                    self.metrics.written.increment(n);
                }
                Ok(Err(_)) | Err(_) => {
                    self.breaker.failure(Instant::now());
                    self.metrics.dropped.increment(n);
                }
            }
        }
    }
}
