//! Relation versions and the epoch shared through Redis (issue 6), so that every pgmemo
//! instance keys its results on the same counters. Counters must never go backwards: a
//! Redis restart, `FLUSHALL` or an eviction that lost them would otherwise make an old key
//! valid again and revive a stale result. So the counters live in one hash together with a
//! **generation** (a random 128-bit id), and a separate marker key holds the same id. If
//! the marker or the hash is missing, or they disagree, the state is a new generation: one
//! atomic script starts it (fresh id, empty counters) unless another instance already has.
//! The generation is part of every key built from the counters, so nothing stored under an
//! older generation can ever match again.
//!
//! Keys, all with the hash tag `{pgmemo:NS}` so a Redis Cluster keeps them in one slot:
//! `{pgmemo:NS}:gen` (string, the generation id) and `{pgmemo:NS}:versions` (hash: `gen`,
//! `epoch`, and per counter `DB:REL`, `w:DB:REL` or `s:STRIPE`, see `field`). None has a TTL, and pgmemo refuses the shared tier
//! on a server whose `maxmemory-policy` could evict them.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionLike;

use crate::cache::{Dep, Tag};

/// `maxmemory-policy` values under which keys without a TTL are never evicted.
pub const SAFE_POLICIES: [&str; 5] = [
    "noeviction",
    "volatile-lru",
    "volatile-lfu",
    "volatile-random",
    "volatile-ttl",
];

/// Starts a new generation unless the marker and the hash agree (atomic), and announces it
/// (ARGV[2] is the channel) so mirrors following the old one empty themselves.
const ESTABLISH: &str = "\
local cur = redis.call('GET', KEYS[1])
if cur and redis.call('HGET', KEYS[2], 'gen') == cur then return cur end
redis.call('DEL', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], 'gen', ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[1])
return ARGV[1]";

#[derive(Debug, thiserror::Error)]
pub enum VersionsError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error(
        "redis maxmemory-policy is {0:?}, which may evict pgmemo's version counters (they have \
         no TTL); set it to noeviction or a volatile-* policy"
    )]
    EvictionPolicy(String),
    #[error("unexpected reply from redis: {0}")]
    Reply(&'static str),
    #[error("no randomness for a generation id: {0}")]
    Random(getrandom::Error),
}

/// The counters of a set of tags, read in one round trip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedSnapshot {
    pub generation: Arc<str>,
    pub epoch: u64,
    /// One per tag, in the order asked (0 for a relation never bumped).
    pub versions: Vec<u64>,
}

/// The shared counters of one namespace.
#[derive(Debug, Clone)]
pub struct SharedVersions {
    gen_key: String,
    hash_key: String,
    timeout: Duration,
}

impl SharedVersions {
    pub fn new(namespace: &str, timeout: Duration) -> SharedVersions {
        let tag = format!("{{pgmemo:{namespace}}}");
        SharedVersions {
            gen_key: format!("{tag}:gen"),
            hash_key: format!("{tag}:versions"),
            timeout,
        }
    }

    /// Pub/sub channel the bumps are announced on.
    pub fn channel(&self) -> String {
        self.gen_key.replace(":gen", ":bumps")
    }

    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, redis::RedisError>>,
    ) -> Result<T, VersionsError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(VersionsError::Timeout(self.timeout)),
        }
    }

    /// Refuses a server whose eviction policy could drop the counters.
    pub async fn check_policy<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
    ) -> Result<(), VersionsError> {
        let reply: Vec<String> = self
            .bounded(
                redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("maxmemory-policy")
                    .query_async(conn),
            )
            .await?;
        let policy = reply
            .get(1)
            .cloned()
            .ok_or(VersionsError::Reply("CONFIG GET maxmemory-policy"))?;
        if SAFE_POLICIES.contains(&policy.as_str()) {
            Ok(())
        } else {
            Err(VersionsError::EvictionPolicy(policy))
        }
    }

    /// The current generation, starting a new one if the stored state is incomplete.
    pub async fn establish<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
    ) -> Result<String, VersionsError> {
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).map_err(VersionsError::Random)?;
        let fresh: String = id.iter().map(|b| format!("{b:02x}")).collect();
        self.bounded(
            redis::cmd("EVAL")
                .arg(ESTABLISH)
                .arg(2)
                .arg(&self.gen_key)
                .arg(&self.hash_key)
                .arg(&fresh)
                .arg(self.channel())
                .query_async(conn),
        )
        .await
    }

    /// Reads the generation, the epoch and `tags`' versions in one round trip. A state that
    /// is not whole (after a flush or a restart) is re-established first, so the snapshot
    /// always names a consistent generation.
    pub async fn snapshot<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        deps: &[Dep],
    ) -> Result<SharedSnapshot, VersionsError> {
        Ok(self.snapshot_and_get(conn, deps, &[]).await?.0)
    }

    /// As [`snapshot`](Self::snapshot), and `GET`s `keys` in the same pipeline (same node:
    /// not for a cluster). When the state had to be re-established, the values read with
    /// the old one are dropped (`None`): whatever they held was keyed on a generation that
    /// is gone.
    pub async fn snapshot_and_get<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        deps: &[Dep],
        keys: &[String],
    ) -> Result<(SharedSnapshot, Vec<Option<Vec<u8>>>), VersionsError> {
        let mut gets = keys;
        for _ in 0..2 {
            let mut hmget = redis::cmd("HMGET");
            hmget.arg(&self.hash_key).arg("gen").arg("epoch");
            for d in deps {
                hmget.arg(field(*d));
            }
            let mut pipe = redis::pipe();
            pipe.cmd("GET").arg(&self.gen_key).add_command(hmget);
            for k in gets {
                pipe.cmd("GET").arg(k);
            }
            let mut replies: Vec<redis::Value> = self.bounded(pipe.query_async(conn)).await?;
            if replies.len() != 2 + gets.len() {
                return Err(VersionsError::Reply("pipeline arity"));
            }
            let found = replies
                .split_off(2)
                .into_iter()
                .map(redis::from_redis_value::<Option<Vec<u8>>>)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| VersionsError::Reply("GET"))?;
            let mut head = replies.into_iter();
            let marker: Option<String> = head
                .next()
                .map(redis::from_redis_value)
                .transpose()
                .map_err(|_| VersionsError::Reply("GET marker"))?
                .flatten();
            let values: Vec<Option<String>> = head
                .next()
                .map(redis::from_redis_value)
                .transpose()
                .map_err(|_| VersionsError::Reply("HMGET"))?
                .unwrap_or_default();
            let mut values = values.into_iter();
            let in_hash = values.next().flatten();
            match (marker, in_hash) {
                (Some(m), Some(h)) if m == h => {
                    let epoch = parse(values.next().flatten())?;
                    let versions = values.map(parse).collect::<Result<Vec<_>, _>>()?;
                    if versions.len() != deps.len() {
                        return Err(VersionsError::Reply("HMGET arity"));
                    }
                    let mut found = found;
                    found.resize(keys.len(), None);
                    return Ok((
                        SharedSnapshot {
                            generation: m.into(),
                            epoch,
                            versions,
                        },
                        found,
                    ));
                }
                _ => {
                    self.establish(conn).await?;
                    gets = &[];
                }
            }
        }
        Err(VersionsError::Reply("generation kept changing"))
    }

    /// Increments `tags`' versions (and the epoch with `epoch`) in one atomic script and
    /// announces the new values on [`channel`](Self::channel). If the generation was not
    /// whole (a restart, a flush, an eviction), the script starts a new one first: that alone
    /// invalidates everything, and the announcement carries the new generation so mirrors
    /// reset. Returns what was announced, for the writer's own mirror.
    pub async fn bump<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        deps: &[Dep],
        epoch: bool,
    ) -> Result<Bump, VersionsError> {
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).map_err(VersionsError::Random)?;
        let fresh: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(BUMP)
            .arg(2)
            .arg(&self.gen_key)
            .arg(&self.hash_key)
            .arg(self.channel())
            .arg(fresh)
            .arg(if epoch { "1" } else { "0" });
        for d in deps {
            cmd.arg(field(*d));
        }
        let message: String = self.bounded(cmd.query_async(conn)).await?;
        parse_bump_message(&message).ok_or(VersionsError::Reply("bump announcement"))
    }
}

/// Bumps and announces (atomic). KEYS: marker, hash. ARGV: channel, a fresh generation id
/// (used only when the state is not whole), "1" to bump the epoch, then the tag fields.
/// Returns the announcement: `GEN [e=EPOCH] [DB:REL=VERSION]...`.
const BUMP: &str = "\
local gen = redis.call('GET', KEYS[1])
if (not gen) or redis.call('HGET', KEYS[2], 'gen') ~= gen then
  redis.call('DEL', KEYS[2])
  redis.call('SET', KEYS[1], ARGV[2])
  redis.call('HSET', KEYS[2], 'gen', ARGV[2])
  gen = ARGV[2]
end
local msg = {gen}
if ARGV[3] == '1' then
  msg[#msg + 1] = 'e=' .. redis.call('HINCRBY', KEYS[2], 'epoch', 1)
end
for i = 4, #ARGV do
  msg[#msg + 1] = ARGV[i] .. '=' .. redis.call('HINCRBY', KEYS[2], ARGV[i], 1)
end
local text = table.concat(msg, ' ')
redis.call('PUBLISH', ARGV[1], text)
return text";

/// The hash field of a counter: `DB:REL` (a relation's table counter), `w:DB:REL` (its
/// table-wide-write counter), `s:STRIPE` (a row stripe).
fn field(d: Dep) -> String {
    match d {
        Dep::Table(t) => format!("{}:{}", t.db, t.rel),
        Dep::Wide(t) => format!("w:{}:{}", t.db, t.rel),
        Dep::Row(s) => format!("s:{s}"),
    }
}

/// The counter of a hash field (see [`field`]).
fn parse_field(name: &str) -> Option<Dep> {
    let tag = |s: &str| -> Option<Tag> {
        let (db, rel) = s.split_once(':')?;
        Some(Tag {
            db: db.parse().ok()?,
            rel: rel.parse().ok()?,
        })
    };
    if let Some(rest) = name.strip_prefix("w:") {
        return Some(Dep::Wide(tag(rest)?));
    }
    if let Some(rest) = name.strip_prefix("s:") {
        let stripe: u32 = rest.parse().ok()?;
        return (stripe < crate::cache::rows::ROW_STRIPES).then_some(Dep::Row(stripe));
    }
    Some(Dep::Table(tag(name)?))
}

fn parse(v: Option<String>) -> Result<u64, VersionsError> {
    match v {
        None => Ok(0),
        Some(s) => s.parse().map_err(|_| VersionsError::Reply("counter")),
    }
}

/// A bump as announced: the generation it landed in and the new values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bump {
    pub generation: Arc<str>,
    /// The new epoch, when the bump moved it.
    pub epoch: Option<u64>,
    pub deps: Vec<(Dep, u64)>,
}

/// Parses an announcement (`GEN [e=EPOCH] [DB:REL=VERSION]...`). `None` when anything is
/// malformed: a mirror then resynchronises rather than guess.
pub fn parse_bump_message(msg: &str) -> Option<Bump> {
    let mut parts = msg.split(' ').filter(|p| !p.is_empty());
    let generation: Arc<str> = parts.next()?.into();
    let mut bump = Bump {
        generation,
        epoch: None,
        deps: Vec::new(),
    };
    for part in parts {
        let (name, value) = part.split_once('=')?;
        let value: u64 = value.parse().ok()?;
        if name == "e" {
            bump.epoch = Some(value);
            continue;
        }
        bump.deps.push((parse_field(name)?, value));
    }
    Some(bump)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_parse_and_garbage_is_refused() {
        let t1 = Tag { db: 5, rel: 16384 };
        let t2 = Tag { db: 5, rel: 16390 };
        assert_eq!(
            parse_bump_message("abc e=3 5:16384=7 5:16390=1 w:5:16384=2 s:77=4"),
            Some(Bump {
                generation: "abc".into(),
                epoch: Some(3),
                deps: vec![
                    (Dep::Table(t1), 7),
                    (Dep::Table(t2), 1),
                    (Dep::Wide(t1), 2),
                    (Dep::Row(77), 4)
                ],
            })
        );
        assert_eq!(
            parse_bump_message("abc"),
            Some(Bump {
                generation: "abc".into(),
                epoch: None,
                deps: vec![],
            })
        );
        for bad in [
            "",
            "abc 5:x=1",
            "abc 5:1",
            "abc e=x",
            "abc 5:1=-1",
            "abc s:x=1",
            "abc s:262144=1",
            "abc w:5=1",
        ] {
            assert_eq!(parse_bump_message(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn every_key_shares_one_cluster_hash_tag() {
        let v = SharedVersions::new("prod", Duration::from_millis(50));
        for key in [&v.gen_key, &v.hash_key, &v.channel()] {
            assert!(key.starts_with("{pgmemo:prod}:"), "{key}");
        }
    }
}
