//! The write-behind queue on a Redis Stream (`behind.queue = "redis"`): one stream per
//! namespace and database, shared by every pgmemo instance on that Redis, so a write
//! acknowledged by one instance is applied by whichever holds the database's lease.
//!
//! Keys (`{…}` is a cluster hash tag: a database's keys share a slot, as its scripts need):
//! - `pgmemo:<ns>:behind:{<hex db>}:meta`: a hash with `id` (random, made with the first
//!   append: the progress row in PostgreSQL is keyed by it, so a Redis that lost its data
//!   starts a new queue instead of inheriting the old one's progress and skipping writes),
//!   `seq` (the last number given) and `applied` (published by the flusher after a commit,
//!   read by the other instances for their barriers and bounds).
//! - `pgmemo:<ns>:behind:{<hex db>}:stream`: entry `<n>-1` holds write number `n`, field
//!   `e` its encoded [`super::Entry`].
//! - `pgmemo:<ns>:behind:dbs`: the databases that have a stream (read at start, so what an
//!   instance acknowledged is applied even if no write to that database comes again).
//!
//! Numbers are dense (1, 2, 3, ...) because one script gives the number and adds the entry
//! atomically; the flusher's "unbroken run after the last applied" rule and the bigint
//! progress row work as with the journal. The script adds the entry before it writes
//! anything else, so a script Redis refuses (OOM, READONLY, a stream that exists without
//! its counter) appended nothing and the write may run synchronously; a reply that never
//! came (timeout, connection lost after sending) is of unknown outcome and must not.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use redis::streams::StreamRangeReply;
use redis::{ErrorKind, RedisError, Value};

use super::lock;
use crate::redis_link::conn::RedisConn;
use crate::redis_link::lease::Lease;

/// How long a database's flusher lease lasts without renewal: a dead holder's queue is
/// taken over by another instance within this.
pub const LEASE_PERIOD: Duration = Duration::from_secs(3);

/// After an append of unknown outcome, further writes are not offered to Redis for this
/// long (they run synchronously): a Redis that stopped answering would otherwise fail every
/// write with an error after the full timeout, instead of only the ones in flight.
const FAILING_FOR: Duration = Duration::from_secs(1);

/// Adds one write: KEYS = meta, stream; ARGV = record, a fresh queue id (used only when
/// the queue has none yet). Returns `{n, id}`. The XADD is the first write, so an error
/// before or in it leaves Redis unchanged (after a write, Redis no longer refuses a
/// script's writes for OOM; HSET of an existing hash cannot fail otherwise).
const APPEND: &str = "\
local id = redis.call('HGET', KEYS[1], 'id')
if not id then
  if redis.call('EXISTS', KEYS[2]) == 1 then
    return redis.error_reply('PGMEMOQUEUE the write-behind stream exists without its counter: refusing to number writes anew')
  end
  id = ARGV[2]
end
local n = (tonumber(redis.call('HGET', KEYS[1], 'seq')) or 0) + 1
redis.call('XADD', KEYS[2], string.format('%d-1', n), 'e', ARGV[1])
redis.call('HSET', KEYS[1], 'id', id, 'seq', n)
return {n, id}";

/// After a commit: publishes `applied` (never backwards) and trims what it covers, only
/// while the queue is still the one applied (KEYS = meta, stream; ARGV = id, applied).
const RELEASE: &str = "\
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then
  return 0
end
local upto = tonumber(ARGV[2])
if upto > (tonumber(redis.call('HGET', KEYS[1], 'applied')) or 0) then
  redis.call('HSET', KEYS[1], 'applied', ARGV[2])
end
redis.call('XTRIM', KEYS[2], 'MINID', string.format('%d-0', upto + 1))
return 1";

/// Why the stream could not take or give writes.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StreamError {
    /// Redis answered with an error: nothing was appended.
    #[error("redis refused the write-behind append: {0}")]
    Refused(String),
    /// The append may or may not have been stored (no reply).
    #[error("redis write-behind append of unknown outcome: {0}")]
    Indeterminate(String),
    /// A read or bookkeeping call failed.
    #[error("redis write-behind queue: {0}")]
    Redis(String),
    #[error("redis write-behind queue: unexpected reply ({0})")]
    Reply(&'static str),
    #[error("redis write-behind queue: a record of {0} bytes is too large")]
    TooLarge(usize),
}

/// How the queue reaches Redis.
#[derive(Clone)]
pub struct StreamLink {
    /// A connection of its own (not the cache's): its reply timeout is the queue's.
    pub conn: RedisConn,
    pub namespace: String,
    /// Bound on one call.
    pub timeout: Duration,
    /// Some rule queues writes (at start): Redis's persistence is checked and logged. Without
    /// one, a deployment that merely shares a cache is not warned about persistence it does
    /// not need.
    pub check_persistence: bool,
}

/// The queue's state in Redis.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub id: Option<String>,
    pub seq: u64,
    pub applied: u64,
}

/// One database's stream as this instance sees it.
pub struct StreamQueue {
    link: StreamLink,
    db: String,
    meta: String,
    stream: String,
    lease: Lease,
    /// The database is in the `dbs` set (added before its first append here).
    registered: AtomicBool,
    runtime: tokio::runtime::Handle,
    /// The id this instance last appended under (for [`StreamQueue::release`]).
    id: Mutex<Option<String>>,
    /// Until when (ms since the epoch) appends are not tried (see [`FAILING_FOR`]).
    failing_until: AtomicU64,
}

impl StreamQueue {
    pub fn new(link: StreamLink, db: &str, holder: &str) -> StreamQueue {
        let base = format!("pgmemo:{}:behind:{{{}}}", link.namespace, super::hex(db));
        let lease = Lease::new(
            &link.namespace,
            &format!("behind:{}", super::hex(db)),
            holder,
            LEASE_PERIOD,
        );
        StreamQueue {
            meta: format!("{base}:meta"),
            stream: format!("{base}:stream"),
            db: db.to_owned(),
            lease,
            link,
            registered: AtomicBool::new(false),
            runtime: tokio::runtime::Handle::current(),
            id: Mutex::new(None),
            failing_until: AtomicU64::new(0),
        }
    }

    /// A recent append got no reply: new writes should not be offered now.
    pub fn is_failing(&self) -> bool {
        super::dead::now_ms() < self.failing_until.load(Ordering::Acquire)
    }

    /// The key of the set of databases that have a stream.
    pub fn dbs_key(namespace: &str) -> String {
        format!("pgmemo:{namespace}:behind:dbs")
    }

    /// The progress row key of the queue `id` (see the module header).
    pub fn progress_key(&self, id: &str) -> String {
        format!(
            "redis:{}:{}:{id}",
            self.link.namespace,
            super::hex(&self.db)
        )
    }

    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    pub fn conn(&self) -> RedisConn {
        self.link.conn.clone()
    }

    pub fn timeout(&self) -> Duration {
        self.link.timeout
    }

    /// Appends one record; resolves to its number and the queue's id once Redis replied.
    pub fn append(
        self: &Arc<Self>,
        record: Bytes,
    ) -> impl std::future::Future<Output = Result<(u64, String), StreamError>> + Send + 'static
    {
        let me = Arc::clone(self);
        async move {
            if record.len() > super::journal::MAX_RECORD {
                return Err(StreamError::TooLarge(record.len()));
            }
            let mut conn = me.link.conn.clone();
            if !me.registered.load(Ordering::Acquire) {
                // Before the first append, so a restart finds this database's stream.
                let mut cmd = redis::cmd("SADD");
                cmd.arg(Self::dbs_key(&me.link.namespace)).arg(&me.db);
                match tokio::time::timeout(me.link.timeout, cmd.query_async::<i64>(&mut conn)).await
                {
                    Ok(Ok(_)) => me.registered.store(true, Ordering::Release),
                    Ok(Err(e)) => return Err(StreamError::Refused(e.to_string())),
                    Err(_) => return Err(StreamError::Refused("SADD timed out".to_owned())),
                }
            }
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(APPEND)
                .arg(2)
                .arg(&me.meta)
                .arg(&me.stream)
                .arg(record.as_ref())
                .arg(fresh_id());
            let reply = tokio::time::timeout(me.link.timeout, cmd.query_async::<Value>(&mut conn))
                .await
                .map_err(|_| StreamError::Indeterminate("no reply in time".to_owned()))
                .and_then(|r| r.map_err(classify));
            let reply = match reply {
                Err(e @ StreamError::Indeterminate(_)) => {
                    let until = super::dead::now_ms() + FAILING_FOR.as_millis() as u64;
                    me.failing_until.store(until, Ordering::Release);
                    return Err(e);
                }
                other => other?,
            };
            // A reply came: the entry is in the stream. A reply of the wrong shape cannot
            // say its number, so it is of unknown outcome for the client.
            let (n, id) = parse_append(&reply).ok_or_else(|| {
                StreamError::Indeterminate("unexpected reply to the append".to_owned())
            })?;
            *lock(&me.id) = Some(id.clone());
            Ok((n, id))
        }
    }

    /// Reads the queue's id, last number and published applied number.
    pub async fn status(&self) -> Result<Status, StreamError> {
        let mut conn = self.link.conn.clone();
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(&self.meta).arg("id").arg("seq").arg("applied");
        let (id, seq, applied): (Option<String>, Option<u64>, Option<u64>) =
            tokio::time::timeout(self.link.timeout, cmd.query_async(&mut conn))
                .await
                .map_err(|_| StreamError::Redis("HMGET timed out".to_owned()))?
                .map_err(|e| StreamError::Redis(e.to_string()))?;
        Ok(Status {
            id,
            seq: seq.unwrap_or(0),
            applied: applied.unwrap_or(0),
        })
    }

    /// Entries numbered `from` and on, in order, at most `count` and (past the first)
    /// about `max_bytes` of records. Undecodable ids are an error (peer input).
    pub async fn read(
        &self,
        from: u64,
        count: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Bytes)>, StreamError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut next = from;
        // Small pages: one reply stays small whatever the records' sizes.
        const PAGE: usize = 64;
        while out.len() < count && bytes < max_bytes {
            let want = PAGE.min(count - out.len());
            let mut conn = self.link.conn.clone();
            let mut cmd = redis::cmd("XRANGE");
            cmd.arg(&self.stream)
                .arg(format!("{next}-0"))
                .arg("+")
                .arg("COUNT")
                .arg(want);
            let reply: StreamRangeReply =
                tokio::time::timeout(self.link.timeout, cmd.query_async(&mut conn))
                    .await
                    .map_err(|_| StreamError::Redis("XRANGE timed out".to_owned()))?
                    .map_err(|e| StreamError::Redis(e.to_string()))?;
            let got = reply.ids.len();
            for item in reply.ids {
                let n = parse_id(&item.id).ok_or(StreamError::Reply("entry id"))?;
                let record = match item.map.get("e") {
                    Some(Value::BulkString(b)) => Bytes::from(b.clone()),
                    _ => Bytes::new(),
                };
                bytes += record.len();
                next = n.saturating_add(1);
                out.push((n, record));
            }
            if got < want {
                break;
            }
        }
        Ok(out)
    }

    /// After a commit that applied up to `upto` of queue `id`: publishes it and trims the
    /// stream (the progress row is the authority, so trimming after the commit is safe).
    /// In the background; a failure leaves entries that the next release trims.
    pub fn release(&self, id: &str, upto: u64) {
        let mut conn = self.link.conn.clone();
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(RELEASE)
            .arg(2)
            .arg(&self.meta)
            .arg(&self.stream)
            .arg(id)
            .arg(upto);
        let timeout = self.link.timeout;
        self.runtime.spawn(async move {
            if let Ok(Err(e)) = tokio::time::timeout(timeout, cmd.query_async::<i64>(&mut conn)).await
            {
                tracing::warn!(error = %e, "write-behind: cannot trim the Redis stream; retried after the next batch");
            }
        });
    }
}

/// A Redis error on the append: refused (certainly not appended) or of unknown outcome.
fn classify(e: RedisError) -> StreamError {
    let answered = matches!(e.kind(), ErrorKind::Server(_) | ErrorKind::Extension);
    if answered || e.is_connection_refusal() {
        StreamError::Refused(e.to_string())
    } else {
        StreamError::Indeterminate(e.to_string())
    }
}

fn parse_append(v: &Value) -> Option<(u64, String)> {
    let Value::Array(items) = v else {
        return None;
    };
    let mut items = items.iter();
    let n = match items.next()? {
        Value::Int(n) => u64::try_from(*n).ok()?,
        _ => return None,
    };
    let id = match items.next()? {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok()?,
        Value::SimpleString(s) => s.clone(),
        _ => return None,
    };
    (n > 0).then_some((n, id))
}

/// `<n>-1` → n.
fn parse_id(id: &str) -> Option<u64> {
    let (ms, _) = id.split_once('-')?;
    ms.parse().ok()
}

fn fresh_id() -> String {
    let mut id = [0u8; 16];
    match getrandom::fill(&mut id) {
        Ok(()) => id.iter().map(|b| format!("{b:02x}")).collect(),
        // No randomness: the time still differs between a lost queue and its successor.
        Err(_) => format!("t{}", super::dead::now_ms()),
    }
}

/// What Redis's persistence means for acknowledged writes (from `CONFIG GET`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// AOF with `appendfsync always`: an acknowledged write survives a Redis crash.
    Always,
    /// AOF with `everysec`: up to about a second of acknowledged writes can be lost if
    /// Redis (or its machine) crashes.
    EverySecond,
    /// AOF with `appendfsync no`: the OS decides when; a machine crash loses more.
    OsFlush,
    /// No AOF, RDB snapshots only: a crash loses what came since the last snapshot.
    SnapshotsOnly,
    /// Nothing persisted: a Redis restart loses every queued write.
    None,
    /// CONFIG is refused (managed Redis) or answered oddly: cannot be checked.
    Unknown,
}

impl Persistence {
    /// From the replies to `CONFIG GET appendonly`, `appendfsync` and `save` (`None`: not
    /// answered).
    pub fn judge(
        appendonly: Option<&str>,
        appendfsync: Option<&str>,
        save: Option<&str>,
    ) -> Persistence {
        match appendonly.map(str::to_ascii_lowercase).as_deref() {
            Some("yes") => match appendfsync.map(str::to_ascii_lowercase).as_deref() {
                Some("always") => Persistence::Always,
                Some("everysec") => Persistence::EverySecond,
                Some("no") => Persistence::OsFlush,
                _ => Persistence::Unknown,
            },
            Some("no") => match save {
                Some(s) if !s.trim().is_empty() => Persistence::SnapshotsOnly,
                Some(_) => Persistence::None,
                None => Persistence::Unknown,
            },
            _ => Persistence::Unknown,
        }
    }

    /// Logs what it means, loudly when acknowledged writes can be lost.
    pub fn log(self) {
        use tracing::{error, info, warn};
        match self {
            Persistence::Always => info!(
                "write-behind on Redis: appendonly yes, appendfsync always (acknowledged writes survive a Redis crash)"
            ),
            Persistence::EverySecond => warn!(
                "write-behind on Redis: appendfsync everysec; a Redis crash can lose up to about one second of acknowledged writes (use appendfsync always to lose none)"
            ),
            Persistence::OsFlush => error!(
                "write-behind on Redis: appendfsync no; a crash of Redis's machine can lose acknowledged writes (use appendfsync always)"
            ),
            Persistence::SnapshotsOnly => error!(
                "write-behind on Redis: appendonly is off (RDB snapshots only); a Redis crash loses the acknowledged writes queued since the last snapshot (set appendonly yes, appendfsync always)"
            ),
            Persistence::None => error!(
                "write-behind on Redis: Redis persists nothing; a Redis restart loses every acknowledged write not yet applied (set appendonly yes, appendfsync always)"
            ),
            Persistence::Unknown => warn!(
                "write-behind on Redis: cannot check Redis persistence (CONFIG GET refused); acknowledged writes are only as durable as its AOF settings (appendonly yes, appendfsync always)"
            ),
        }
    }
}

/// Asks Redis for its persistence settings.
pub async fn check_persistence(link: &StreamLink) -> Persistence {
    let mut conn = link.conn.clone();
    let mut get = async |name: &str| -> Option<String> {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("GET").arg(name);
        let reply = tokio::time::timeout(link.timeout, cmd.query_async::<Value>(&mut conn))
            .await
            .ok()?
            .ok()?;
        config_value(&reply, name)
    };
    let appendonly = get("appendonly").await;
    let appendfsync = get("appendfsync").await;
    let save = get("save").await;
    Persistence::judge(
        appendonly.as_deref(),
        appendfsync.as_deref(),
        save.as_deref(),
    )
}

/// The value of `name` in a `CONFIG GET` reply (an array `[name, value]` or, in RESP3, a
/// map).
fn config_value(reply: &Value, name: &str) -> Option<String> {
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    match reply {
        Value::Array(items) => items
            .chunks(2)
            .find(|p| p.first().and_then(text).as_deref() == Some(name))
            .and_then(|p| p.get(1).and_then(text)),
        Value::Map(pairs) => pairs
            .iter()
            .find(|(k, _)| text(k).as_deref() == Some(name))
            .and_then(|(_, v)| text(v)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persistence_is_judged_from_the_config_replies() {
        use Persistence as P;
        assert_eq!(P::judge(Some("yes"), Some("always"), Some("")), P::Always);
        assert_eq!(
            P::judge(Some("yes"), Some("everysec"), None),
            P::EverySecond
        );
        assert_eq!(P::judge(Some("yes"), Some("no"), None), P::OsFlush);
        assert_eq!(
            P::judge(Some("no"), Some("everysec"), Some("3600 1 300 100")),
            P::SnapshotsOnly
        );
        assert_eq!(P::judge(Some("no"), Some("always"), Some("")), P::None);
        // CONFIG refused (managed Redis): nothing answered.
        assert_eq!(P::judge(None, None, None), P::Unknown);
        assert_eq!(P::judge(Some("no"), None, None), P::Unknown);
        assert_eq!(P::judge(Some("yes"), None, None), P::Unknown);
    }

    #[test]
    fn config_values_are_read_from_arrays_and_maps() {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let array = Value::Array(vec![b("appendonly"), b("yes")]);
        assert_eq!(config_value(&array, "appendonly").as_deref(), Some("yes"));
        assert_eq!(config_value(&array, "save"), None);
        let map = Value::Map(vec![(b("save"), b(""))]);
        assert_eq!(config_value(&map, "save").as_deref(), Some(""));
        assert_eq!(config_value(&Value::Nil, "save"), None);
        assert_eq!(
            config_value(&Value::Array(vec![b("appendonly")]), "appendonly"),
            None
        );
    }

    #[test]
    fn append_replies_and_entry_ids_are_parsed_without_trusting_them() {
        let ok = Value::Array(vec![Value::Int(7), Value::BulkString(b"abc".to_vec())]);
        assert_eq!(parse_append(&ok), Some((7, "abc".to_owned())));
        assert_eq!(parse_append(&Value::Array(vec![Value::Int(7)])), None);
        assert_eq!(
            parse_append(&Value::Array(vec![
                Value::Int(-1),
                Value::BulkString(b"a".to_vec())
            ])),
            None
        );
        assert_eq!(parse_append(&Value::Int(3)), None);
        assert_eq!(parse_id("42-1"), Some(42));
        assert_eq!(parse_id("x-1"), None);
        assert_eq!(parse_id("42"), None);
    }

    #[test]
    fn only_an_answered_error_counts_as_not_appended() {
        let server = RedisError::from((ErrorKind::Extension, "PGMEMOQUEUE", "x".to_owned()));
        assert!(matches!(classify(server), StreamError::Refused(_)));
        let io = RedisError::from(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "gone"));
        assert!(matches!(classify(io), StreamError::Indeterminate(_)));
    }
}
