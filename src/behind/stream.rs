//! The write-behind queue on a Redis Stream (`behind.queue = "redis"`): one stream per
//! namespace and database, shared by every pgmemo instance on that Redis, so a write
//! acknowledged by one instance is applied by whichever holds the database's lease.
//!
//! Keys (`{…}` is a cluster hash tag: a database's keys share a slot, as its scripts need;
//! `<login>` is the hex of pgmemo's `upstream.url` user, so instances logged in as different
//! users, as during a credential rotation, have separate queues, each applied by an
//! instance that logs in as the user its writes were queued under):
//! - `pgmemo:<ns>:behind:<login>:{<hex db>}:meta`: a hash with `id` (random, made with the first
//!   append: the progress row in PostgreSQL is keyed by it, so a Redis that lost its data
//!   starts a new queue instead of inheriting the old one's progress and skipping writes),
//!   `seq` (the last number given) and `applied` (published by the flusher after a commit,
//!   read by the other instances for their barriers and bounds).
//! - `pgmemo:<ns>:behind:<login>:{<hex db>}:stream`: entry `<n>-1` holds write number `n`, field
//!   `e` its encoded [`super::Entry`], field `s` its signature (see [`QueueKey`]): an entry
//!   that does not verify is never applied (a dead letter), so whoever can write to Redis
//!   cannot make the flusher run a statement as pgmemo's role.
//! - `pgmemo:<ns>:behind:<login>:dbs`: the databases that have a stream (read at start and every
//!   lease period, so what an instance acknowledged is applied even if no write to that
//!   database comes again, by any instance; added again at each new queue incarnation).
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
use hmac::{Hmac, Mac};
use redis::{ErrorKind, RedisError, Value};
use sha2::Sha256;

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

/// Adds a group of writes: KEYS = meta, stream; ARGV = the queue id the records are signed
/// for (used as the id when the queue has none yet), the number the first must get, the
/// appender's floor (see below), `1` when the id is a fresh one the caller made because it
/// saw no queue (else `0`), then each record and its tag. Numbers are signed before
/// they are given, so the caller predicts them: when the queue's id or next number is not
/// the predicted one nothing is appended and the reply is `{0, id, seq}` (the caller signs
/// again; an empty id: there is no queue, the caller makes one); otherwise
/// `{1, id, first}`. Only a fresh id starts a queue: the id a caller knew from before Redis
/// lost its data must not name the new queue (its progress row would skip the new numbers). The next number is `max(seq, floor) + 1`: the floor is
/// the applied number the appender knows for this id, so a counter Redis rolled back (a
/// restart with `appendfsync everysec`, a failover) never numbers new writes below what
/// was already applied (they would be skipped). The XADDs are the first writes, so an
/// error before or in the first leaves Redis unchanged (after a write, Redis no longer
/// refuses a script's writes for OOM; HSET of an existing hash cannot fail otherwise).
const APPEND: &str = "\
local id = redis.call('HGET', KEYS[1], 'id')
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq')) or 0
if not id then
  if redis.call('EXISTS', KEYS[2]) == 1 then
    return redis.error_reply('PGMEMOQUEUE the write-behind stream exists without its counter: refusing to number writes anew')
  end
  if ARGV[4] ~= '1' then
    return {0, '', 0}
  end
  id = ARGV[1]
end
local n = seq
if id == ARGV[1] and tonumber(ARGV[3]) > n then
  n = tonumber(ARGV[3])
end
if id ~= ARGV[1] or n + 1 ~= tonumber(ARGV[2]) then
  return {0, id, n}
end
for i = 5, #ARGV - 1, 2 do
  n = n + 1
  redis.call('XADD', KEYS[2], string.format('%d-1', n), 'e', ARGV[i], 's', ARGV[i + 1])
end
redis.call('HSET', KEYS[1], 'id', id, 'seq', n)
return {1, id, tonumber(ARGV[2])}";

/// Reads entries from a number on (KEYS = stream; ARGV = first id, count, byte budget,
/// record bound) as a flat array `id, record, tag, size` per entry. The budget bounds the
/// reply (the first entry always comes, later ones only within it), and an entry larger
/// than the record bound comes without its bytes (its size says why): one reply is at
/// most about budget + record bound, whatever was written to the stream.
const READ: &str = "\
local items = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])
local budget = tonumber(ARGV[3])
local bound = tonumber(ARGV[4])
local out = {}
local used = 0
for _, item in ipairs(items) do
  local fields = item[2]
  local e, s, size = '', '', 0
  for i = 1, #fields - 1, 2 do
    size = size + #fields[i + 1]
    if fields[i] == 'e' then e = fields[i + 1] elseif fields[i] == 's' then s = fields[i + 1] end
  end
  if size > bound then
    e, s = '', ''
  end
  if #out > 0 and used + #e + #s > budget then
    break
  end
  used = used + #e + #s
  out[#out + 1] = item[1]
  out[#out + 1] = e
  out[#out + 1] = s
  out[#out + 1] = size
end
return out";

/// Bytes a stream entry's fields may take beyond the record itself (its tag).
const ENTRY_OVERHEAD: usize = 256;
/// Writes appended in one script call, at most (and about this many bytes, past the first).
const GROUP_MAX_RECORDS: usize = 256;
const GROUP_MAX_BYTES: usize = 16 << 20;
/// Times a group is signed again because other instances' appends moved the counter.
const APPEND_ATTEMPTS: usize = 16;

type HmacSha256 = Hmac<Sha256>;

/// The key queued records are signed with (derived from `cache.secret`, see
/// `KeySecret::behind_queue_key`): whoever can write to Redis but does not know the secret
/// cannot make the flusher run a statement (as pgmemo's role) that no pgmemo queued.
#[derive(Clone)]
pub struct QueueKey([u8; 32]);

impl QueueKey {
    pub fn new(bytes: [u8; 32]) -> QueueKey {
        QueueKey(bytes)
    }

    /// HMAC-SHA256 over the stream key, the queue id, the number and the record (each
    /// length-prefixed): an entry cannot be moved to another database, queue incarnation
    /// or number (replayed) without failing verification.
    fn mac(&self, stream: &str, id: &str, n: u64, record: &[u8]) -> HmacSha256 {
        // HMAC takes keys of any length; this cannot fail.
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        for part in [stream.as_bytes(), id.as_bytes()] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.update(&n.to_be_bytes());
        mac.update(&(record.len() as u64).to_be_bytes());
        mac.update(record);
        mac
    }

    pub fn sign(&self, stream: &str, id: &str, n: u64, record: &[u8]) -> Vec<u8> {
        self.mac(stream, id, n, record)
            .finalize()
            .into_bytes()
            .to_vec()
    }

    /// Constant-time comparison (`verify_slice`).
    pub fn verify(&self, stream: &str, id: &str, n: u64, record: &[u8], tag: &[u8]) -> bool {
        self.mac(stream, id, n, record).verify_slice(tag).is_ok()
    }
}

impl std::fmt::Debug for QueueKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueueKey(<redacted>)")
    }
}

/// One entry read from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Signed by a pgmemo with this deployment's secret, for this place in this queue.
    Verified(Bytes),
    /// Never to be applied (a dead letter): the raw bytes (empty when too large to keep)
    /// and why.
    Rejected { raw: Bytes, why: &'static str },
}

/// Why an entry is rejected (the dead letter's message).
pub const BAD_SIGNATURE: &str = "the queued record's signature does not verify";
pub const TOO_LARGE: &str = "the queued record is larger than the record bound";

/// One write waiting to be appended, and where its outcome goes.
type Waiting = (
    Bytes,
    tokio::sync::oneshot::Sender<Result<(u64, String), StreamError>>,
);

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

/// Raises the counter of queue `id` to what the holder applied, after Redis went back
/// (KEYS = meta; ARGV = id, applied): new writes then get numbers above what is applied
/// instead of numbers the flusher considers done. Guarded by the id, so a queue that is
/// another one meanwhile is left alone. Returns the counter before.
const FENCE: &str = "\
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then
  return -1
end
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq')) or 0
if seq < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'seq', ARGV[2])
end
return seq";

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
    /// Signs and verifies the queued records.
    pub key: QueueKey,
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
    /// The login's set of databases (see [`StreamQueue::dbs_key`]).
    dbs: String,
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
    /// Writes waiting for the next group append (see [`StreamQueue::append`]).
    waiting: Mutex<Vec<Waiting>>,
    /// Held by the one call appending a group: the queue id and number it predicts for the
    /// next write (`None`: read them from Redis first).
    next: tokio::sync::Mutex<Option<(String, u64)>>,
    /// A release Redis has not confirmed yet (queue id, applied number).
    owed: Arc<Mutex<Option<(String, u64)>>>,
    /// A release is in flight.
    releasing: Arc<AtomicBool>,
    /// The applied number this instance knows, and the queue id it is of: the floor of
    /// the numbers its appends get (see [`APPEND`]).
    floor: Mutex<Option<(String, u64)>>,
}

impl StreamQueue {
    /// The queue of `db` for writes queued under the login `login` (pgmemo's
    /// `upstream.url` user): each login has its own queue, applied by an instance of that
    /// login (an instance logged in as another user could only refuse them).
    pub fn new(link: StreamLink, login: &str, db: &str, holder: &str) -> StreamQueue {
        let base = format!(
            "pgmemo:{}:behind:{}:{{{}}}",
            link.namespace,
            super::hex(login),
            super::hex(db)
        );
        let lease = Lease::new(
            &link.namespace,
            &format!("behind:{}:{}", super::hex(login), super::hex(db)),
            holder,
            LEASE_PERIOD,
        );
        StreamQueue {
            meta: format!("{base}:meta"),
            dbs: Self::dbs_key(&link.namespace, login),
            stream: format!("{base}:stream"),
            db: db.to_owned(),
            lease,
            link,
            registered: AtomicBool::new(false),
            runtime: tokio::runtime::Handle::current(),
            id: Mutex::new(None),
            failing_until: AtomicU64::new(0),
            waiting: Mutex::new(Vec::new()),
            next: tokio::sync::Mutex::new(None),
            floor: Mutex::new(None),
            owed: Arc::new(Mutex::new(None)),
            releasing: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Records that the queue `id` is applied up to `applied` (the floor of later appends).
    pub fn set_floor(&self, id: &str, applied: u64) {
        let mut floor = lock(&self.floor);
        match floor.as_mut() {
            Some((known, n)) if known == id => *n = (*n).max(applied),
            _ => *floor = Some((id.to_owned(), applied)),
        }
    }

    fn floor_for(&self, id: &str) -> u64 {
        match lock(&self.floor).as_ref() {
            Some((known, n)) if known == id => *n,
            _ => 0,
        }
    }

    /// A recent append got no reply: new writes should not be offered now.
    pub fn is_failing(&self) -> bool {
        super::dead::now_ms() < self.failing_until.load(Ordering::Acquire)
    }

    /// The key of the set of databases that have a stream of the login `login`.
    pub fn dbs_key(namespace: &str, login: &str) -> String {
        format!("pgmemo:{namespace}:behind:{}:dbs", super::hex(login))
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
    /// Appends are grouped: whoever gets to send takes every write waiting, signs them for
    /// the numbers they will get and appends them in one script call (its number prediction
    /// must be right, and one call per write would wait one round trip each).
    pub fn append(
        self: &Arc<Self>,
        record: Bytes,
    ) -> impl std::future::Future<Output = Result<(u64, String), StreamError>> + Send + 'static
    {
        use tokio::sync::oneshot::error::TryRecvError;
        let me = Arc::clone(self);
        async move {
            if record.len() > super::journal::MAX_RECORD {
                return Err(StreamError::TooLarge(record.len()));
            }
            if !me.registered.load(Ordering::Acquire) {
                me.register().await?;
            }
            let (tx, mut rx) = tokio::sync::oneshot::channel();
            lock(&me.waiting).push((record, tx));
            loop {
                match rx.try_recv() {
                    Ok(r) => return r,
                    Err(TryRecvError::Closed) => {
                        return Err(StreamError::Indeterminate(
                            "the append sending this write was cancelled".to_owned(),
                        ));
                    }
                    Err(TryRecvError::Empty) => {}
                }
                let mut next = me.next.lock().await;
                let group = {
                    let mut waiting = lock(&me.waiting);
                    let mut bytes = 0usize;
                    let mut take = 0usize;
                    for (r, _) in waiting.iter() {
                        if take > 0
                            && (take >= GROUP_MAX_RECORDS || bytes + r.len() > GROUP_MAX_BYTES)
                        {
                            break;
                        }
                        bytes += r.len();
                        take += 1;
                    }
                    waiting.drain(..take).collect::<Vec<_>>()
                };
                if !group.is_empty() {
                    me.append_group(&mut next, group).await;
                }
            }
        }
    }

    /// Adds the database to the `dbs` set (before its first append here and at each new
    /// queue incarnation), so every instance finds and applies its stream.
    async fn register(&self) -> Result<(), StreamError> {
        let mut conn = self.link.conn.clone();
        let mut cmd = redis::cmd("SADD");
        cmd.arg(&self.dbs).arg(&self.db);
        match tokio::time::timeout(self.link.timeout, cmd.query_async::<i64>(&mut conn)).await {
            Ok(Ok(_)) => {
                self.registered.store(true, Ordering::Release);
                Ok(())
            }
            Ok(Err(e)) => Err(StreamError::Refused(e.to_string())),
            Err(_) => Err(StreamError::Refused("SADD timed out".to_owned())),
        }
    }

    /// Appends `group` in one script call (see [`APPEND`]) and answers each write.
    async fn append_group(&self, next: &mut Option<(String, u64)>, group: Vec<Waiting>) {
        let outcome = self.append_signed(next, &group).await;
        if let Err(StreamError::Indeterminate(_)) = &outcome {
            let until = super::dead::now_ms() + FAILING_FOR.as_millis() as u64;
            self.failing_until.store(until, Ordering::Release);
        }
        if let Ok((_, id)) = &outcome {
            let mut known = lock(&self.id);
            if known.as_ref().is_some_and(|k| k != id) {
                // A new incarnation: listed again (Redis may have lost the set with it).
                self.registered.store(false, Ordering::Release);
            }
            *known = Some(id.clone());
        }
        for (i, (_, tx)) in group.into_iter().enumerate() {
            let answer = match &outcome {
                Ok((first, id)) => Ok((first + i as u64, id.clone())),
                Err(e) => Err(e.clone()),
            };
            let _ = tx.send(answer);
        }
    }

    /// The group's first number and the queue id, once Redis stored it.
    async fn append_signed(
        &self,
        next: &mut Option<(String, u64)>,
        group: &[Waiting],
    ) -> Result<(u64, String), StreamError> {
        let mut conn = self.link.conn.clone();
        for _ in 0..APPEND_ATTEMPTS {
            let (id, first, fresh) = match next.take() {
                Some((id, first)) => (id, first, false),
                None => {
                    let st = self
                        .status()
                        .await
                        .map_err(|e| StreamError::Refused(e.to_string()))?;
                    match st.id {
                        Some(id) => {
                            let first = st.seq.max(self.floor_for(&id)).saturating_add(1);
                            (id, first, false)
                        }
                        None => (fresh_id(), 1, true),
                    }
                }
            };
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(APPEND)
                .arg(2)
                .arg(&self.meta)
                .arg(&self.stream)
                .arg(&id)
                .arg(first)
                .arg(self.floor_for(&id))
                .arg(if fresh { "1" } else { "0" });
            for (i, (record, _)) in group.iter().enumerate() {
                let n = first + i as u64;
                cmd.arg(record.as_ref())
                    .arg(self.link.key.sign(&self.stream, &id, n, record));
            }
            let reply =
                tokio::time::timeout(self.link.timeout, cmd.query_async::<Value>(&mut conn))
                    .await
                    .map_err(|_| StreamError::Indeterminate("no reply in time".to_owned()))
                    .and_then(|r| r.map_err(classify));
            // A reply came: the group is in the stream, or not at all (one script).
            match parse_append(&reply?) {
                Some(AppendReply::Stored { id: got, first: at }) if got == id && at == first => {
                    *next = Some((id.clone(), first + group.len() as u64));
                    return Ok((first, id));
                }
                Some(AppendReply::Moved { id, .. }) if id.is_empty() => {
                    // Redis has no queue (it lost its data): start one under a fresh id.
                    *next = None;
                }
                Some(AppendReply::Moved { id, seq }) => {
                    // Another instance appended meanwhile (or the queue is another one now):
                    // sign again for the numbers the group gets now.
                    let first = seq.max(self.floor_for(&id)).saturating_add(1);
                    *next = Some((id, first));
                }
                // A reply of the wrong shape cannot say the numbers: unknown outcome.
                _ => {
                    return Err(StreamError::Indeterminate(
                        "unexpected reply to the append".to_owned(),
                    ));
                }
            }
        }
        Err(StreamError::Refused(
            "the queue's counter kept moving under concurrent appends".to_owned(),
        ))
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

    /// Entries of queue `id` numbered `from` and on, in order, at most `count` and (past
    /// the first) about `max_bytes` of records, each verified against its signature.
    /// Undecodable replies are an error (peer input).
    pub async fn read(
        &self,
        id: &str,
        from: u64,
        count: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Record)>, StreamError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut next = from;
        const PAGE: usize = 64;
        let bound = super::journal::MAX_RECORD + ENTRY_OVERHEAD;
        while out.len() < count && bytes < max_bytes {
            let want = PAGE.min(count - out.len());
            let mut conn = self.link.conn.clone();
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(READ)
                .arg(1)
                .arg(&self.stream)
                .arg(format!("{next}-0"))
                .arg(want)
                .arg(max_bytes - bytes)
                .arg(bound);
            let reply: Value = tokio::time::timeout(self.link.timeout, cmd.query_async(&mut conn))
                .await
                .map_err(|_| StreamError::Redis("stream read timed out".to_owned()))?
                .map_err(|e| StreamError::Redis(e.to_string()))?;
            let Value::Array(items) = reply else {
                return Err(StreamError::Reply("stream read"));
            };
            let got = items.len() / 4;
            for item in items.chunks(4) {
                let [Value::BulkString(eid), e, tag, Value::Int(size)] = item else {
                    return Err(StreamError::Reply("stream entry"));
                };
                let n = std::str::from_utf8(eid)
                    .ok()
                    .and_then(parse_id)
                    .ok_or(StreamError::Reply("entry id"))?;
                let blob = |v: &Value| match v {
                    Value::BulkString(b) => Bytes::from(b.clone()),
                    _ => Bytes::new(),
                };
                let (record, tag) = (blob(e), blob(tag));
                let record = if usize::try_from(*size).map_or(true, |s| s > bound) {
                    Record::Rejected {
                        raw: Bytes::new(),
                        why: TOO_LARGE,
                    }
                } else if self.link.key.verify(&self.stream, id, n, &record, &tag) {
                    Record::Verified(record)
                } else {
                    Record::Rejected {
                        raw: record,
                        why: BAD_SIGNATURE,
                    }
                };
                bytes += match &record {
                    Record::Verified(r) | Record::Rejected { raw: r, .. } => r.len(),
                };
                next = n.saturating_add(1);
                out.push((n, record));
            }
            if got < want {
                break;
            }
        }
        Ok(out)
    }

    /// Redis's counter of queue `id` went below `applied` (Redis restarted from an older
    /// state, or a replica that had not everything took over): raises it to `applied`.
    pub async fn fence(&self, id: &str, applied: u64) -> Result<(), StreamError> {
        let mut conn = self.link.conn.clone();
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(FENCE).arg(1).arg(&self.meta).arg(id).arg(applied);
        tokio::time::timeout(self.link.timeout, cmd.query_async::<i64>(&mut conn))
            .await
            .map_err(|_| StreamError::Redis("fence timed out".to_owned()))?
            .map_err(|e| StreamError::Redis(e.to_string()))?;
        Ok(())
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
        {
            // Owed until Redis confirms: the other instances' barriers and bounds wait on
            // the published number, so a failed release must not wait for the next batch.
            let mut owed = lock(&self.owed);
            if !matches!(owed.as_ref(), Some((known, n)) if known == id && *n > upto) {
                *owed = Some((id.to_owned(), upto));
            }
        }
        self.releasing.store(true, Ordering::Release);
        let owed = Arc::clone(&self.owed);
        let releasing = Arc::clone(&self.releasing);
        let id = id.to_owned();
        self.runtime.spawn(async move {
            match tokio::time::timeout(timeout, cmd.query_async::<i64>(&mut conn)).await {
                Ok(Ok(_)) => {
                    let mut owed = lock(&owed);
                    if matches!(owed.as_ref(), Some((known, n)) if *known == id && *n <= upto) {
                        *owed = None;
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "write-behind: cannot publish the applied number or trim the Redis stream; retrying")
                }
                Err(_) => tracing::warn!(
                    "write-behind: publishing the applied number timed out; retrying"
                ),
            }
            releasing.store(false, Ordering::Release);
        });
    }

    /// Sends a release again that Redis has not confirmed (see [`StreamQueue::release`]),
    /// unless one is in flight: called by an idle holder until it succeeds.
    pub fn retry_release(&self) {
        if self.releasing.load(Ordering::Acquire) {
            return;
        }
        let owed = lock(&self.owed).clone();
        if let Some((id, upto)) = owed {
            self.release(&id, upto);
        }
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

/// The append script's answer.
#[derive(Debug, PartialEq, Eq)]
enum AppendReply {
    /// Stored, numbered from `first`.
    Stored { id: String, first: u64 },
    /// Nothing stored: the queue is `id` with `seq` as its last number (floor included).
    Moved { id: String, seq: u64 },
}

fn parse_append(v: &Value) -> Option<AppendReply> {
    let Value::Array(items) = v else {
        return None;
    };
    let [Value::Int(stored), id, Value::Int(n)] = items.as_slice() else {
        return None;
    };
    let id = match id {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok()?,
        Value::SimpleString(s) => s.clone(),
        _ => return None,
    };
    let n = u64::try_from(*n).ok()?;
    match stored {
        1 if n > 0 => Some(AppendReply::Stored { id, first: n }),
        0 => Some(AppendReply::Moved { id, seq: n }),
        _ => None,
    }
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
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let ok = Value::Array(vec![Value::Int(1), b("abc"), Value::Int(7)]);
        assert_eq!(
            parse_append(&ok),
            Some(AppendReply::Stored {
                id: "abc".to_owned(),
                first: 7
            })
        );
        let moved = Value::Array(vec![Value::Int(0), b("abc"), Value::Int(9)]);
        assert_eq!(
            parse_append(&moved),
            Some(AppendReply::Moved {
                id: "abc".to_owned(),
                seq: 9
            })
        );
        assert_eq!(parse_append(&Value::Array(vec![Value::Int(7)])), None);
        assert_eq!(
            parse_append(&Value::Array(vec![Value::Int(1), b("a"), Value::Int(-1)])),
            None
        );
        assert_eq!(
            parse_append(&Value::Array(vec![Value::Int(2), b("a"), Value::Int(3)])),
            None
        );
        assert_eq!(parse_append(&Value::Int(3)), None);
        assert_eq!(parse_id("42-1"), Some(42));
        assert_eq!(parse_id("x-1"), None);
        assert_eq!(parse_id("42"), None);
    }

    #[test]
    fn a_signature_binds_the_stream_the_queue_the_number_and_the_record() {
        let key = QueueKey::new([7; 32]);
        let tag = key.sign("s", "id", 3, b"rec");
        assert!(key.verify("s", "id", 3, b"rec", &tag));
        assert!(
            !key.verify("s", "id", 4, b"rec", &tag),
            "replayed at another number"
        );
        assert!(
            !key.verify("t", "id", 3, b"rec", &tag),
            "another database's stream"
        );
        assert!(
            !key.verify("s", "id2", 3, b"rec", &tag),
            "another incarnation"
        );
        assert!(!key.verify("s", "id", 3, b"reC", &tag), "another record");
        assert!(!key.verify("s", "id", 3, b"rec", b""), "no signature");
        assert!(
            !QueueKey::new([8; 32]).verify("s", "id", 3, b"rec", &tag),
            "another secret"
        );
    }

    #[test]
    fn only_an_answered_error_counts_as_not_appended() {
        let server = RedisError::from((ErrorKind::Extension, "PGMEMOQUEUE", "x".to_owned()));
        assert!(matches!(classify(server), StreamError::Refused(_)));
        let io = RedisError::from(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "gone"));
        assert!(matches!(classify(io), StreamError::Indeterminate(_)));
    }
}
